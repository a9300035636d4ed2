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
 * Cells, for one machine or a cluster: the grid is a numbered list of cells (formats, then
 * learning rates, then seeds; `--list` prints it). With no `--cell K` or `--shard I/N`, a
 * process runs every cell, or, given `--allow-env=SLURM_ARRAY_TASK_ID,JOB_COMPLETION_INDEX`,
 * the one a Slurm array task or a Kubernetes Indexed Job pod is given. Each finished cell is a
 * file `<out>/cells/<cell>.<settings hash>.json`, written atomically; a cell whose file exists
 * is skipped, so an interrupted sweep resumes where it stopped, a retried task does nothing
 * twice, and a run with other settings (another --steps, other data) starts its own cells.
 * The process that finds every cell done (or `--merge`) writes `report.md`, `results.json` and
 * `loss.svg` (one panel per format, one line per learning rate: the mean over seeds of the
 * training loss, averaged over 10 steps) into `<out>`; with cells missing, `--merge` names them.
 * Cells of an older version's `<out>/cells.jsonl` with equal settings are taken over.
 *
 * Run (reads the project, writes only the output folder):
 *   deno run --allow-read=. --allow-write=out examples/stability_sweep.ts \
 *     --formats bf16,e8m5,e8m4,e8m3 --lrs 3e-4,1e-3,3e-3 --seeds 3 --steps 300
 *   deno run --allow-read=. --allow-write=out examples/stability_sweep.ts --list
 *   deno run --allow-read=. --allow-write=out examples/stability_sweep.ts --cell 5
 *   deno run --allow-read=. --allow-write=out examples/stability_sweep.ts --merge
 *   deno run --allow-read=. --allow-write=out examples/stability_sweep.ts --help
 * On a cluster: deploy/slurm/sweep.sbatch, deploy/k8s/sweep-job.yaml (README, "Run a sweep on
 * a cluster").
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
  ready,
  type Rounding,
  sharpness,
  type Tensor,
  tidy,
} from "../mod.ts";
import { FormatError } from "../errors.ts";
import { writeAtomic } from "../nn/safetensors.ts";
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
import { Batches, evaluate, loadCorpus, type TokenizerName, tokenizerOption } from "./_text.ts";
import {
  ALLOW_ENV,
  type Cell,
  CELL_OPTIONS,
  CellDir,
  checkUnique,
  differingKeys,
  listLines,
  pendingLine,
  plural,
  requireAllCells,
  selectCells,
  settingsHash,
} from "./_cells.ts";
import { CellProgress } from "./_progress.ts";
import {
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
  tokenizer: tokenizerOption(),
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
  out: {
    type: "string",
    help: "output folder (shared by the tasks on a cluster)",
    default: "out/sweep",
  },
  ...CELL_OPTIONS,
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
  await ready(); // the device, acquired on the first cell (importing ulp acquires nothing)
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
 * usage or a missing permission, with one line on `io.error` naming the flag or the path; 1 for
 * `--merge` with cells missing (the line names them).
 */
export function main(args: readonly string[], io: CliIO = consoleIO): Promise<number> {
  return runCli(PROGRAM, () => sweep(args, io), io);
}

/** A cell of the grid: one format, learning rate and seed. */
interface SweepCell extends Cell {
  format: string;
  lr: number;
  seed: number;
}

/** The numbered cells of the grid: formats, then learning rates, then seeds. */
export function sweepCells(
  formats: readonly string[],
  lrs: readonly number[],
  seeds: number,
): SweepCell[] {
  const grid = formats.flatMap((format) =>
    lrs.flatMap((lr) => Array.from({ length: seeds }, (_, s) => ({ format, lr, seed: s + 1 })))
  );
  return grid.map((g, index) => ({
    ...g,
    index,
    name: `${g.format}-lr${fmtLr(g.lr)}-seed${g.seed}`,
    label: `${g.format} lr ${fmtLr(g.lr)} seed ${g.seed}`,
  }));
}

async function sweep(args: readonly string[], io: CliIO): Promise<number> {
  const usage = `deno run --allow-read=. --allow-write=out [${ALLOW_ENV}] ` +
    "examples/stability_sweep.ts [options]";
  const v = parseOptions(PROGRAM, usage, OPTIONS, args).values;
  const int = (k: string) => Number(v[k]);
  const list = (k: string) => String(v[k]).split(",").map((x) => x.trim());
  const formats = list("formats").map((f) => dtype(f).name), lrs = list("lrs").map(Number);
  const seeds = int("seeds"), out = String(v.out);
  if (int("width") % int("heads")) {
    throw new UsageError(`${PROGRAM}: --width ${v.width} must be a multiple of --heads ${v.heads}`);
  }
  await requirePermission(PROGRAM, "read", out, "the output folder");
  await requirePermission(PROGRAM, "write", out, "the output folder");
  // the tokenizer enters the cells' settings through the token ids' checksum
  const corpus = await loadCorpus(String(v.data), undefined, {
    tokenizer: String(v.tokenizer) as TokenizerName,
    cacheDir: out,
  });
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
  const data = { train: corpus.train, val: corpus.val, vocab: corpus.tokenizer.vocabSize };
  const cells = sweepCells(formats, lrs, seeds);
  checkUnique(PROGRAM, cells);
  const hash = settingsHash(toJson(cfg));
  let dir = await CellDir.open(out, hash);
  const notes = [...await importCellsJsonl(out, cfg, cells, dir), ...await otherNotes(dir, cfg)];

  if (v.list) {
    for (const line of listLines(cells, dir)) io.log(line);
    return 0;
  }
  if (v.merge) return await merge(out, dir, cells, cfg, corpus.source, formats, lrs, seeds, io);

  const pick = selectCells(PROGRAM, cells.length, v);
  const todo = pick.indices.map((k) => cells[k]).filter((c) => !dir.has(c.name));
  const done = cells.filter((c) => dir.has(c.name)).length;
  io.log(
    `${plural(cells.length, "cell")}: ${done} done, ${todo.length} to run` +
      (pick.by === "all cells" ? "" : ` (${pick.by})`) +
      (notes.length ? ` (${notes.join("; ")})` : ""),
  );
  const progress = new CellProgress(todo.length, (t) => io.log(t));
  for (const g of todo) {
    const text = toJson(await runCell(g.format, g.lr, g.seed, cfg, data));
    await dir.write(g.name, text);
    const c = fromJson(text); // as the merge will read it
    progress.cellDone(
      `cell ${g.index} ${g.label}: ${
        c.divergedAt !== null
          ? `diverged at step ${c.divergedAt}`
          : `val loss ${num(c.finalLoss, 4)}`
      }, max sharpness ${num(c.maxSharpness, 3)}, ${c.msPerStep.toFixed(0)} ms/step`,
    );
  }
  dir = await CellDir.open(out, hash); // cells other tasks finished meanwhile
  if (cells.every((c) => dir.has(c.name))) {
    return await merge(out, dir, cells, cfg, corpus.source, formats, lrs, seeds, io);
  }
  io.log(pendingLine(cells, dir, "the table"));
  return 0;
}

/**
 * Cells of an older version's `<out>/cells.jsonl` (one line per cell, appended) made with these
 * settings become cell files; returns notes on lines it could not use.
 */
async function importCellsJsonl(
  out: string,
  cfg: SweepConfig,
  cells: readonly SweepCell[],
  dir: CellDir,
): Promise<string[]> {
  const path = `${out}/cells.jsonl`;
  const lines = await Deno.readTextFile(path).catch(() => "");
  let other = 0, broken = 0, taken = 0;
  const differ = new Set<string>();
  for (const line of lines.split("\n").filter((l) => l.trim())) {
    let c: CellRecord;
    try {
      c = fromJson(line);
    } catch {
      broken++; // a line cut short by an interrupted write
      continue;
    }
    if (toJson(c.config) !== toJson(cfg)) {
      other++;
      const theirs = (c.config ?? {}) as unknown as Record<string, unknown>;
      for (const k of differingKeys(JSON.parse(toJson(cfg)), theirs)) differ.add(k);
      continue;
    }
    const cell = cells.find((g) => g.format === c.format && g.lr === c.lr && g.seed === c.seed);
    if (cell && !dir.has(cell.name)) {
      await dir.write(cell.name, toJson(c));
      taken++;
    }
  }
  return [
    taken ? `${plural(taken, "cell")} taken from ${path}` : "",
    other ? `${plural(other, "line")} of ${path} ignored: other ${[...differ].join(", ")}` : "",
    broken ? `${plural(broken, "unreadable line")} of ${path} ignored` : "",
  ].filter(Boolean);
}

/** A note on the cell files made with other settings, naming the settings that differ. */
async function otherNotes(dir: CellDir, cfg: SweepConfig): Promise<string[]> {
  if (!dir.others.length) return [];
  let differ: string[] = [];
  try {
    const theirs = JSON.parse(await Deno.readTextFile(dir.others[0])).config;
    differ = differingKeys(JSON.parse(toJson(cfg)), theirs ?? {});
  } catch {
    // unreadable: counted all the same
  }
  return [
    `${plural(dir.others.length, "cell file")} of other settings ignored` +
    (differ.length ? ` (other ${differ.join(", ")})` : ""),
  ];
}

/**
 * Reads every cell's file and writes report.md, results.json and loss.svg: what a run of the
 * whole grid writes. Throws a UsageError (exit 1) naming the cells still missing.
 */
async function merge(
  out: string,
  dir: CellDir,
  grid: readonly SweepCell[],
  cfg: SweepConfig,
  source: string,
  formats: readonly string[],
  lrs: readonly number[],
  seeds: number,
  io: CliIO,
): Promise<number> {
  requireAllCells(PROGRAM, grid, dir);
  const cells: CellRecord[] = [];
  for (const g of grid) {
    const text = await dir.read(g.name);
    try {
      cells.push(fromJson(text ?? ""));
    } catch (e) {
      throw new FormatError(
        `${PROGRAM}: the result of cell ${g.index} (${g.label}), ${dir.path(g.name)}, is not ` +
          `readable (${(e as Error).message}); delete it and run --cell ${g.index} again`,
      );
    }
  }
  const rows = summarize(cells, formats, lrs);
  const table = resultsTable(rows);
  const desc = `${plural(cfg.layers, "layer")}, ${plural(cfg.heads, "head")}, ` +
    `width ${cfg.width}, context ${cfg.block}, batch ${cfg.batch}; ` +
    `AdamW (betas 0.9/0.95, weight decay 0.1), ${
      plural(Math.min(cfg.warmup, cfg.steps), "warmup step")
    } then cosine to lr/10, ` +
    `${plural(cfg.steps, "step")}; GEMM inputs cast with ${cfg.rounding}; ` +
    `${plural(seeds, "seed")}; data: ${source}`;
  const rule =
    `A run diverges when its training loss is NaN/Inf or exceeds ${cfg.divergeFactor}x its running minimum; ` +
    `the final loss is the validation loss (${cfg.evalBatches} batches) of the runs that did not diverge; ` +
    `sharpness is the last-token epsilon-sharpness (eps ${cfg.sharpnessEps}), batch mean, every ` +
    `${cfg.sharpnessEvery} steps, max over steps and seeds.`;
  const enc = new TextEncoder();
  await writeAtomic(
    `${out}/report.md`,
    enc.encode(`# Stability sweep\n\n${desc}.\n\n${table}\n\n${rule}\n\n![loss](loss.svg)\n`),
  );
  await writeAtomic(
    `${out}/results.json`,
    enc.encode(toJson({ config: cfg, description: desc, rule, rows, cells }, 1)),
  );
  await writeAtomic(`${out}/loss.svg`, enc.encode(lossSvg(cells, formats, lrs)));
  const old = await Deno.stat(`${out}/results.md`).then(() => true, () => false);
  io.log(
    `\n${table}\n\nwrote ${out}/report.md, results.json and loss.svg` +
      (old ? ` (${out}/results.md is an older version's table, left as it was)` : ""),
  );
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
