// The command-line flags of a training run's configuration (`RunConfig`), shared by
// train_gpt, precision_compare and the demo: option-table rows with checks and help, and the
// configuration they give (checked against a resumed run's). A configuration read from a
// checkpoint goes through the same checks as the flags (`checkRunConfig`) before anything is
// built: a hand-edited checkpoint.json can ask for nothing the command line could not.

import { dtype, precisionNames } from "../mod.ts";
import { checks, type Option, UsageError } from "./_cli.ts";
import { excerpt } from "../nn/_excerpt.ts";
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

/** The command-line flags of a run's configuration, by flag name (integers within min..max). */
const RUN_FLAGS: Record<
  string,
  { key: keyof RunConfig; help: string; min?: number; max?: number }
> = {
  precision: {
    key: "precision",
    help: `precision strategy: ${precisionNames().join(", ")}, or a simulated format eXmY ` +
      `(autocast over f32 master weights, e.g. e8m3)`,
  },
  rounding: {
    key: "rounding",
    help: "rounding of a simulated format's casts: rne, truncate, stochastic",
  },
  layers: { key: "nLayer", help: "transformer blocks", min: 1, max: 1024 },
  heads: { key: "nHead", help: "attention heads", min: 1, max: 4096 },
  width: { key: "nEmbd", help: "embedding width (a multiple of --heads)", min: 1, max: 65536 },
  block: { key: "block", help: "context length", min: 2, max: 65536 },
  steps: { key: "steps", help: "optimizer steps (the schedule spans them)", min: 1, max: 1e9 },
  batch: { key: "batch", help: "sequences per batch", min: 1, max: 65536 },
  lr: { key: "lr", help: "peak learning rate (cosine decay to a tenth)" },
  warmup: { key: "warmup", help: "warmup steps", min: 0, max: 1e9 },
  "weight-decay": { key: "weightDecay", help: "AdamW weight decay" },
  seed: { key: "seed", help: "random seed (initialisation and batches)", min: 0, max: 2 ** 31 - 1 },
};

/** `Option.check` of an integer in [min, max]. */
function intIn(min: number, max: number): (v: string) => string | null {
  return (v) => {
    const below = checks.int(min)(v);
    if (below) return below;
    return Number(v) <= max ? null : `must be an integer <= ${max}, got '${v}'`;
  };
}

/** The check of a flag's value (a string, as on the command line). */
function flagCheck(f: { key: keyof RunConfig; min?: number; max?: number }) {
  return f.key === "precision"
    ? (v: string) => (v.includes(",") ? `takes one value, got '${v}'` : checkPrecisionList(v))
    : f.key === "rounding"
    ? checks.oneOf(() => ["rne", "truncate", "stochastic"])
    : f.min !== undefined
    ? (f.max !== undefined ? intIn(f.min, f.max) : checks.int(f.min))
    : f.key === "weightDecay"
    ? (v: string) =>
      Number(v) >= 0 && Number.isFinite(Number(v)) && v.trim() !== ""
        ? null
        : `must be a finite number >= 0, got '${v}'`
    : checks.positive();
}

/** The option-table rows of a run's configuration, with `base`'s values as defaults. */
export function runOptions(base: RunConfig, skip: string[] = []): Record<string, Option> {
  const out: Record<string, Option> = {};
  for (const [flag, f] of Object.entries(RUN_FLAGS)) {
    if (skip.includes(flag)) continue;
    out[flag] = { type: "string", help: f.help, default: String(base[f.key]), check: flagCheck(f) };
  }
  return out;
}

/**
 * The option-table rows of a comparison of strategies (the demo, finetune): `--strategies`
 * (default `strategies`; with `twoOrMore`, fewer than two is a usage error), the run's options
 * with `base`'s values (less `skip`), `--diag-every`.
 */
export function comparisonOptions(
  strategies: readonly string[],
  base: RunConfig,
  skip: string[],
  twoOrMore = false,
): Record<string, Option> {
  return {
    strategies: {
      type: "string",
      help: `comma-separated precision strategies${
        twoOrMore ? ", two or more" : ""
      } (see train_gpt --help)`,
      default: strategies.join(","),
      check: twoOrMore
        ? (v) =>
          checkPrecisionList(v) ??
            (v.split(",").filter((s) => s.trim()).length < 2
              ? "needs two or more strategies"
              : null)
        : checkPrecisionList,
    },
    ...runOptions(base, skip),
    "diag-every": {
      type: "string",
      help: "measure what low precision lost every N steps",
      default: "10",
      check: checks.int(1),
    },
  };
}

/**
 * Checks a configuration read from a file (a checkpoint's `meta.config`) with the checks of
 * the flags: every field present, of the flag's type, and valid as the flag would be; no
 * unknown fields; the width a multiple of the heads. Throws one UsageError naming every
 * problem (by flag), before anything is built.
 */
export function checkRunConfig(program: string, where: string, cfg: unknown): RunConfig {
  const fail = (what: string): never => {
    throw new UsageError(`${program}: ${where}: ${what}; it was changed after it was written`);
  };
  if (cfg === null || typeof cfg !== "object" || Array.isArray(cfg)) {
    fail("the run's configuration is not an object");
  }
  const c = cfg as Record<string, unknown>;
  const problems: string[] = [];
  const keys = new Set(Object.values(RUN_FLAGS).map((f) => f.key as string));
  for (const k of Object.keys(c)) {
    if (!keys.has(k)) problems.push(`unknown field ${excerpt(k)}`);
  }
  for (const [flag, f] of Object.entries(RUN_FLAGS)) {
    const v = c[f.key];
    const type = typeof DEFAULT_RUN_TYPES[f.key];
    if (typeof v !== type || (type === "number" && !Number.isFinite(v))) {
      problems.push(`${f.key} (--${flag}) must be a ${type}, got ${excerpt(v)}`);
      continue;
    }
    if (type === "string" && !/^[\x20-\x7e]{1,40}$/.test(v as string)) {
      problems.push(`${f.key} (--${flag}) is not a valid value: ${excerpt(v)}`);
      continue;
    }
    const problem = flagCheck(f)(String(v));
    if (problem) problems.push(`${f.key} (--${flag}) ${problem}`);
  }
  if (problems.length) fail(`the run's configuration is invalid: ${problems.join("; ")}`);
  const config = c as unknown as RunConfig;
  if (config.nEmbd % config.nHead !== 0) {
    fail(`nEmbd (${config.nEmbd}) must be a multiple of nHead (${config.nHead})`);
  }
  return config;
}

/** The type of each field (from the defaults' shape: numbers and strings). */
const DEFAULT_RUN_TYPES: Record<keyof RunConfig, number | string> = {
  precision: "",
  rounding: "",
  nLayer: 0,
  nHead: 0,
  nEmbd: 0,
  block: 0,
  steps: 0,
  batch: 0,
  lr: 0,
  warmup: 0,
  weightDecay: 0,
  seed: 0,
};

/**
 * The configuration the flags give (`base` for flags not in the table). With `saved` (a
 * resumed run's, checked with `checkRunConfig` first), flags that were not given keep the
 * saved values and a given flag that differs is an error naming it.
 */
export function runConfig(
  program: string,
  values: Record<string, string | boolean>,
  base: RunConfig,
  saved?: { config: RunConfig; given: Set<string> },
): RunConfig {
  const c = {
    ...(saved ? checkRunConfig(program, "--resume", saved.config) : base),
  } as Record<string, unknown>;
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

/** Bytes of a size such as `512MiB`, `2GiB`, `1.5GB` or `1048576` (null when not one). */
export function parseBytes(v: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$/i.exec(v);
  if (!m) return null;
  const units: Record<string, number> = {
    b: 1,
    kb: 1e3,
    mb: 1e6,
    gb: 1e9,
    tb: 1e12,
    kib: 2 ** 10,
    mib: 2 ** 20,
    gib: 2 ** 30,
    tib: 2 ** 40,
  };
  const bytes = Math.floor(Number(m[1]) * units[(m[2] ?? "b").toLowerCase()]);
  return Number.isSafeInteger(bytes) && bytes > 0 ? bytes : null;
}

/** The `--memory-limit` option row: the memory budget of ulp's GPU buffers (`setMemoryLimit`). */
export function memoryLimitOption(): Option {
  return {
    type: "string",
    help: "the most GPU memory ulp may hand out, e.g. 2GiB or 512MiB (default: half of the " +
      "host's memory with --allow-sys=systemMemoryInfo, else 4GiB)",
    default: "",
    check: (v) =>
      parseBytes(v) === null ? `must be a size such as 2GiB, 512MiB or 1000000, got '${v}'` : null,
  };
}

/**
 * Restores the run settings `keys` (evaluation, logging, checkpoints) a resumed run saved in
 * its checkpoint into `values`, unless given again on the command line; each saved value goes
 * through its flag's check first (a UsageError names every bad one).
 */
export function restoreSettings(
  program: string,
  table: Record<string, Option>,
  keys: readonly string[],
  saved: unknown,
  given: Set<string>,
  values: Record<string, string | boolean>,
): void {
  if (saved === undefined || saved === null) return;
  if (typeof saved !== "object" || Array.isArray(saved)) {
    throw new UsageError(`${program}: --resume: the checkpoint's options are not an object`);
  }
  const s = saved as Record<string, unknown>;
  const problems: string[] = [];
  for (const k of keys) {
    const v = s[k];
    if (given.has(k) || v === undefined) continue;
    const o = table[k];
    const ok = typeof v === o.type &&
      (typeof v !== "string" || (v.length <= 40 && !o.check?.(v)));
    if (ok) values[k] = v as string | boolean;
    else problems.push(`--${k} ${excerpt(v)}`);
  }
  if (problems.length) {
    throw new UsageError(
      `${program}: --resume: the checkpoint's options are invalid (${problems.join(", ")}); it ` +
        `was changed after it was written`,
    );
  }
}
