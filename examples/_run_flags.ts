// The command-line flags of a training run's configuration (`RunConfig`), shared by
// train_gpt, precision_compare and the demo: option-table rows with checks and help, and the
// configuration they give (checked against a resumed run's).

import { dtype, precisionNames } from "../mod.ts";
import { checks, type Option, UsageError } from "./_cli.ts";
import { precisionChoices, resolvePrecision, type RunConfig } from "./_train.ts";

/** `Option.check` of a comma-separated list of precisions. */
export function checkPrecisionList(v: string): string | null {
  const bad = v.split(",").map((s) => s.trim()).filter((s) => {
    try {
      resolvePrecision(s);
      return false;
    } catch {
      return true;
    }
  });
  if (!bad.length) return null;
  // a name shaped as a format (e9m3) gets the reason it is not one (X <= 8, Y <= 23)
  const format = bad.find((s) => /^e\d+m\d+(fn)?$/.test(s));
  if (format) {
    try {
      dtype(format);
    } catch (e) {
      const why = (e as Error).message.replace(/^dtype\('[^']*'\): /, "").replace(/; valid.*$/, "");
      return `'${format}' is not a format ulp can simulate: ${why}`;
    }
  }
  return `unknown value '${bad.join(",")}'; valid: ${precisionChoices().join(", ")}`;
}

/** The command-line flags of a run's configuration, by flag name. */
const RUN_FLAGS: Record<string, { key: keyof RunConfig; help: string; min?: number }> = {
  precision: {
    key: "precision",
    help: `precision strategy: ${precisionNames().join(", ")}, or a simulated format eXmY ` +
      `(autocast over f32 master weights, e.g. e8m3)`,
  },
  rounding: {
    key: "rounding",
    help: "rounding of a simulated format's casts: rne, truncate, stochastic",
  },
  layers: { key: "nLayer", help: "transformer blocks", min: 1 },
  heads: { key: "nHead", help: "attention heads", min: 1 },
  width: { key: "nEmbd", help: "embedding width (a multiple of --heads)", min: 1 },
  block: { key: "block", help: "context length", min: 2 },
  steps: { key: "steps", help: "optimizer steps (the schedule spans them)", min: 1 },
  batch: { key: "batch", help: "sequences per batch", min: 1 },
  lr: { key: "lr", help: "peak learning rate (cosine decay to a tenth)" },
  warmup: { key: "warmup", help: "warmup steps", min: 0 },
  "weight-decay": { key: "weightDecay", help: "AdamW weight decay" },
  seed: { key: "seed", help: "random seed (initialisation and batches)", min: 0 },
};

/** The option-table rows of a run's configuration, with `base`'s values as defaults. */
export function runOptions(base: RunConfig, skip: string[] = []): Record<string, Option> {
  const out: Record<string, Option> = {};
  for (const [flag, f] of Object.entries(RUN_FLAGS)) {
    if (skip.includes(flag)) continue;
    const check = f.key === "precision"
      ? (v: string) => (v.includes(",") ? `takes one value, got '${v}'` : checkPrecisionList(v))
      : f.key === "rounding"
      ? checks.oneOf(() => ["rne", "truncate", "stochastic"])
      : f.min !== undefined
      ? checks.int(f.min)
      : f.key === "weightDecay"
      ? (
        v: string,
      ) => (Number(v) >= 0 && v.trim() !== "" ? null : `must be a number >= 0, got '${v}'`)
      : checks.positive();
    out[flag] = { type: "string", help: f.help, default: String(base[f.key]), check };
  }
  return out;
}

/**
 * The configuration the flags give (`base` for flags not in the table). With `saved` (a
 * resumed run's), flags that were not given keep the saved values and a given flag that
 * differs is an error naming it.
 */
export function runConfig(
  program: string,
  values: Record<string, string | boolean>,
  base: RunConfig,
  saved?: { config: RunConfig; given: Set<string> },
): RunConfig {
  const c = { ...(saved?.config ?? base) } as Record<string, unknown>;
  for (const [flag, f] of Object.entries(RUN_FLAGS)) {
    if (!(flag in values)) continue;
    const v = typeof base[f.key] === "number" ? Number(values[flag]) : values[flag];
    if (!saved) c[f.key] = v;
    else if (saved.given.has(flag) && v !== c[f.key]) {
      throw new UsageError(
        `${program}: --${flag} ${values[flag]} differs from the checkpoint's ${c[f.key]}; a ` +
          `resumed run keeps the configuration it was started with (leave the flag out)`,
      );
    }
  }
  const config = c as unknown as RunConfig;
  if (config.nEmbd % config.nHead !== 0) {
    throw new UsageError(
      `${program}: --width (${config.nEmbd}) must be a multiple of --heads (${config.nHead})`,
    );
  }
  return config;
}
