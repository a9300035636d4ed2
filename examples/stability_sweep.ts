/**
 * A training-stability study in simulated low-precision formats (Lee et al., "To FP8 and Back
 * Again: Quantifying Reduced Precision Effects on LLM Training Stability", 2025): trains the
 * same character GPT for every format x learning rate x seed, with the GEMM inputs of every
 * linear layer cast to the format under `autocast` (forward, and the gradients that flow back
 * through the casts), and reports per format and learning rate how many runs diverged, the
 * final validation loss (mean and spread over the runs that did not) and the largest
 * last-token sharpness seen (`sharpness()`, Keskar et al. 2017; DESIGN.md section 4).
 *
 * Divergence: a run diverges at the first step whose training loss is NaN/Inf or exceeds
 * `--diverge-factor` (default 2) times the lowest loss the run has seen so far; it stops
 * there. The loss is read every 10 steps (one shared readback), so a run may go on for up
 * to 9 steps past the step it diverged at.
 *
 * Resumable: each finished run (a cell of the grid) appends one JSON line to
 * `<out>/cells.jsonl`; a rerun with the same settings skips the cells already there (a line
 * made with other settings, such as another --steps or other data, is ignored, and the first
 * line printed says which settings differ). Then it writes `results.md`, `results.json` and
 * `loss.svg` (one panel per format, one line per learning rate: the mean over seeds of the
 * training loss, averaged over 10 steps) into `<out>`.
 *
 * Run (reads the project, writes only the output folder):
 *   deno run --allow-read=. --allow-write=out examples/stability_sweep.ts \
 *     --formats bf16,e8m5,e8m4,e8m3 --lrs 3e-4,1e-3,3e-3 --seeds 3 --steps 300
 *   deno run --allow-read=. --allow-write=out examples/stability_sweep.ts --help
 *
 * @module
 */
import {
  AdamW,
  autocast,
  type AutocastOptions,
  cosineWithWarmup,
  dtype,
  GPT,
  isFloat,
  manualSeed,
  type Rounding,
  sharpness,
  type Tensor,
  tidy,
  writeAtomic,
} from "../mod.ts";
import {
  checks,
  type CliIO,
  consoleIO,
  type Option,
  parseOptions,
  requirePermission,
  runCli,
  UsageError,
} from "./_cli.ts";
import { Batches, evaluate, loadCorpus } from "./_text.ts";
import {
  cellKey,
  type CellRecord,
  divergenceStep,
  finite,
  fmtLr,
  fromJson,
  lossSvg,
  num,
  READ_EVERY,
  resultsTable,
  summarize,
  type SweepConfig,
  toJson,
} from "./_sweep.ts";

const PROGRAM = "stability_sweep";
const ROUNDINGS: readonly Rounding[] = ["rne", "truncate", "stochastic"];

/** A check of a comma-separated list: each item must pass `ok`. */
const listOf = (ok: (item: string) => boolean, valid: string) => (v: string): string | null => {
  const items = v.split(",").map((x) => x.trim());
  const bad = items.find((x) => !ok(x));
  return bad === undefined ? null : `has a bad value '${bad}'; valid: ${valid}`;
};

/** Whether `name` is a float format autocast can cast GEMM inputs to. */
function isFormat(name: string): boolean {
  try {
    const d = dtype(name);
    return isFloat(d) && d.kind !== "mcf";
  } catch {
    return false;
  }
}

/** The options, with their help text, defaults and checks: `--help` is generated from this table. */
export const OPTIONS: Record<string, Option> = {
  formats: {
    type: "string",
    help: "comma-separated float formats for the GEMM inputs (bf16, f16, any eXmY; f32: none)",
    default: "bf16,e8m5,e8m4,e8m3",
    check: listOf(isFormat, "float formats such as bf16, f16, f32, e8m3, e5m2"),
  },
  lrs: {
    type: "string",
    help: "comma-separated peak learning rates",
    default: "3e-4,1e-3,3e-3",
    check: listOf((x) => checks.positive()(x) === null, "positive numbers such as 3e-4,1e-3"),
  },
  seeds: { type: "string", help: "runs per cell, seeds 1..N", default: "3", check: checks.int(1) },
  steps: { type: "string", help: "optimizer steps per run", default: "300", check: checks.int(1) },
  rounding: {
    type: "string",
    help: "rounding of the casts: rne|truncate|stochastic",
    default: "rne",
    check: checks.oneOf(() => ROUNDINGS),
  },
  "diverge-factor": {
    type: "string",
    help: "a run diverges when its loss exceeds this times its running minimum",
    default: "2",
    check: (
      v,
    ) => (Number(v) > 1 && Number.isFinite(Number(v)) ? null : `must be a number > 1, got '${v}'`),
  },
  "sharpness-every": {
    type: "string",
    help: "sharpness every N steps (0: never)",
    default: "10",
    check: checks.int(0),
  },
  "sharpness-eps": {
    type: "string",
    help: "eps of the sharpness box",
    default: "1e-3",
    check: checks.positive(),
  },
  data: { type: "string", help: "text file (.gz allowed); default: ulp's own source", default: "" },
  batch: { type: "string", help: "sequences per batch", default: "16", check: checks.int(1) },
  block: { type: "string", help: "context length", default: "64", check: checks.int(1) },
  layers: { type: "string", help: "transformer blocks", default: "2", check: checks.int(1) },
  heads: { type: "string", help: "attention heads", default: "4", check: checks.int(1) },
  width: { type: "string", help: "embedding width", default: "128", check: checks.int(1) },
  warmup: {
    type: "string",
    help: "warmup steps (then cosine decay to lr/10)",
    default: "20",
    check: checks.int(0),
  },
  "eval-batches": {
    type: "string",
    help: "validation batches for the final loss",
    default: "8",
    check: checks.int(1),
  },
  out: { type: "string", help: "output folder", default: "out/sweep" },
  help: { type: "boolean", help: "show this help", default: false },
};

/** Trains one cell and returns its record. */
async function runCell(
  format: string,
  lr: number,
  seed: number,
  cfg: SweepConfig,
  data: { train: Int32Array; val: Int32Array; vocab: number },
): Promise<CellRecord> {
  manualSeed(seed);
  const model = new GPT({
    vocabSize: data.vocab,
    blockSize: cfg.block,
    nLayer: cfg.layers,
    nHead: cfg.heads,
    nEmbd: cfg.width,
    seed,
  });
  const opt = new AdamW(model.parameters(), { lr, betas: [0.9, 0.95], weightDecay: 0.1 });
  const warmup = Math.min(cfg.warmup, cfg.steps);
  const schedule = cosineWithWarmup({ warmupSteps: warmup, totalSteps: cfg.steps, minLr: 0.1 });
  const batches = new Batches(data.train, cfg.batch, cfg.block, seed);
  const ac = (step: number): AutocastOptions | null =>
    format === "f32" ? null : { dtype: format, rounding: cfg.rounding, seed: seed * 1e6 + step };
  const loss: number[] = [], sharp: [number, number][] = [];
  let pending: { step: number; loss: Tensor; phi: Tensor | null }[] = [];
  let divergedAt: number | null = null;
  const t0 = performance.now();
  for (let step = 1; step <= cfg.steps && divergedAt === null; step++) {
    for (const g of opt.paramGroups) g.lr = lr * schedule(step - 1);
    const wantPhi = cfg.sharpnessEvery > 0 && step % cfg.sharpnessEvery === 0;
    pending.push(tidy(() => {
      const { x, y } = batches.next();
      const forward = () => model.forward(x, y);
      const a = ac(step);
      const out = a ? autocast(a, forward) : forward();
      out.loss!.backward();
      opt.step();
      opt.zeroGrad();
      const phi = wantPhi ? sharpness(out.logits, y, { eps: cfg.sharpnessEps }) : null;
      return { step, loss: out.loss!.detach(), phi };
    }));
    if (step % READ_EVERY === 0 || step === cfg.steps) {
      const vals = await Promise.all(pending.flatMap((p) => [p.loss, p.phi].map((t) => t?.item())));
      pending.forEach((p, i) => {
        loss.push(vals[2 * i]!);
        if (p.phi) sharp.push([p.step, vals[2 * i + 1]!]);
        p.loss.dispose();
        p.phi?.dispose();
      });
      pending = [];
      divergedAt = divergenceStep(loss, cfg.divergeFactor);
    }
  }
  const msPerStep = (performance.now() - t0) / loss.length;
  // The forwards of evaluate() run synchronously, before its first await: inside the context.
  const a = ac(0);
  const evalLoss = () => evaluate(model, data.val, cfg.batch, cfg.block, cfg.evalBatches, 1234);
  const finalLoss = divergedAt !== null ? NaN : await (a ? autocast(a, evalLoss) : evalLoss());
  for (const p of model.parameters()) p.dispose();
  opt.dispose();
  const phis = finite(sharp.map(([, p]) => p));
  return {
    format,
    lr,
    seed,
    config: cfg,
    divergedAt,
    finalLoss,
    maxSharpness: phis.length ? Math.max(...phis) : NaN,
    loss,
    sharpness: sharp,
    msPerStep,
  };
}

/**
 * Runs the sweep for the command line `args`; returns the exit code: 0 done (or --help), 2 bad
 * usage or a missing permission, with one line on `io.error` naming the flag or the path.
 */
export function main(args: readonly string[], io: CliIO = consoleIO): Promise<number> {
  return runCli(PROGRAM, () => sweep(args, io), io);
}

async function sweep(args: readonly string[], io: CliIO): Promise<number> {
  const usage = "deno run --allow-read=. --allow-write=out examples/stability_sweep.ts [options]";
  const v = parseOptions(PROGRAM, usage, OPTIONS, args).values;
  const int = (k: string) => Number(v[k]);
  const list = (k: string) => String(v[k]).split(",").map((x) => x.trim());
  const formats = list("formats").map((f) => dtype(f).name), lrs = list("lrs").map(Number);
  const seeds = int("seeds"), out = String(v.out);
  if (int("width") % int("heads")) {
    throw new UsageError(`${PROGRAM}: --width ${v.width} must be a multiple of --heads ${v.heads}`);
  }
  await requirePermission(PROGRAM, "write", out, "the output folder");
  const corpus = await loadCorpus(String(v.data));
  const cfg: SweepConfig = {
    data: corpus.path,
    dataChecksum: corpus.checksum,
    steps: int("steps"),
    batch: int("batch"),
    block: int("block"),
    layers: int("layers"),
    heads: int("heads"),
    width: int("width"),
    warmup: int("warmup"),
    rounding: v.rounding as Rounding,
    divergeFactor: Number(v["diverge-factor"]),
    sharpnessEvery: int("sharpness-every"),
    sharpnessEps: Number(v["sharpness-eps"]),
    evalBatches: int("eval-batches"),
  };
  const source = corpus.source;
  const data = { train: corpus.train, val: corpus.val, vocab: corpus.tokenizer.vocabSize };

  await Deno.mkdir(out, { recursive: true });
  const cellsPath = `${out}/cells.jsonl`;
  const done = new Map<string, CellRecord>();
  let other = 0, broken = 0;
  const differ = new Set<string>();
  const lines = await Deno.readTextFile(cellsPath).catch(() => "");
  for (const line of lines.split("\n").filter((l) => l.trim())) {
    let c: CellRecord;
    try {
      c = fromJson(line);
    } catch {
      broken++; // a line cut short by an interrupted write
      continue;
    }
    if (toJson(c.config) === toJson(cfg)) done.set(cellKey(c.format, c.lr, c.seed, cfg), c);
    else {
      other++;
      for (const [k, x] of Object.entries(cfg)) {
        if (toJson(x) !== toJson((c.config as unknown as Record<string, unknown>)?.[k])) {
          differ.add(k);
        }
      }
    }
  }
  const grid = formats.flatMap((f) =>
    lrs.flatMap((lr) => Array.from({ length: seeds }, (_, s) => ({ f, lr, seed: s + 1 })))
  );
  const todo = grid.filter((g) => !done.has(cellKey(g.f, g.lr, g.seed, cfg)));
  const notes = [
    other ? `${other} lines of ${cellsPath} ignored: other ${[...differ].join(", ")}` : "",
    broken ? `${broken} unreadable lines of ${cellsPath} ignored` : "",
  ].filter(Boolean);
  io.log(
    `${grid.length} runs: ${grid.length - todo.length} done, ${todo.length} to run` +
      (notes.length ? ` (${notes.join("; ")})` : ""),
  );
  for (const [k, g] of todo.entries()) {
    const line = toJson(await runCell(g.f, g.lr, g.seed, cfg, data));
    await Deno.writeTextFile(cellsPath, line + "\n", { append: true });
    const c = fromJson(line); // as a rerun will read it
    done.set(cellKey(g.f, g.lr, g.seed, cfg), c);
    io.log(
      `[${k + 1}/${todo.length}] ${g.f} lr ${fmtLr(g.lr)} seed ${g.seed}: ${
        c.divergedAt !== null
          ? `diverged at step ${c.divergedAt}`
          : `val loss ${num(c.finalLoss, 4)}`
      }, max sharpness ${num(c.maxSharpness, 3)}, ${c.msPerStep.toFixed(0)} ms/step`,
    );
  }

  const cells = grid.map((g) => done.get(cellKey(g.f, g.lr, g.seed, cfg))!);
  const rows = summarize(cells, formats, lrs);
  const table = resultsTable(rows);
  const desc =
    `${cfg.layers} layers, ${cfg.heads} heads, width ${cfg.width}, context ${cfg.block}, batch ${cfg.batch}; ` +
    `AdamW (betas 0.9/0.95, weight decay 0.1), ${
      Math.min(cfg.warmup, cfg.steps)
    } warmup steps then cosine to lr/10, ` +
    `${cfg.steps} steps; GEMM inputs cast with ${cfg.rounding}; ${seeds} seeds; data: ${source}`;
  const rule =
    `A run diverges when its training loss is NaN/Inf or exceeds ${cfg.divergeFactor}x its running minimum; ` +
    `the final loss is the validation loss (${cfg.evalBatches} batches) of the runs that did not diverge; ` +
    `sharpness is the last-token epsilon-sharpness (eps ${cfg.sharpnessEps}), batch mean, every ` +
    `${cfg.sharpnessEvery} steps, max over steps and seeds.`;
  const enc = new TextEncoder();
  await writeAtomic(
    `${out}/results.md`,
    enc.encode(`# Stability sweep\n\n${desc}.\n\n${table}\n\n${rule}\n\n![loss](loss.svg)\n`),
  );
  await writeAtomic(
    `${out}/results.json`,
    enc.encode(toJson({ config: cfg, description: desc, rule, rows, cells }, 1)),
  );
  await writeAtomic(`${out}/loss.svg`, enc.encode(lossSvg(cells, formats, lrs)));
  io.log(`\n${table}\n\nwrote ${out}/results.md, results.json and loss.svg`);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
