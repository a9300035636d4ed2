/**
 * Trains the same character GPT with the same seed under every precision strategy of
 * `precisionNames()` (`fp8-<recipe>` for each FP8 recipe among them), or under those of
 * `--strategies` (any subset, simulated formats such as e8m3 too), and writes what each one costs and loses: final validation loss, imprecision (fraction of
 * updates lost), EDQ ratio, bytes per parameter, step time, as a Markdown table, JSON, an
 * SVG chart of the loss curves and the JSONL log of every step (Collage, Yu et al. ICML 2024;
 * DESIGN.md section 4).
 *
 * Cells, for one machine or a cluster: each strategy is a cell (numbered in `--strategies`
 * order; `--list` prints them). With no `--cell K` or `--shard I/N`, a process runs every
 * strategy, or, given `--allow-env=SLURM_ARRAY_TASK_ID,JOB_COMPLETION_INDEX`, the one a Slurm
 * array task or a Kubernetes Indexed Job pod is given. Each finished strategy is a file
 * `<out>/cells/<strategy>.<settings hash>.json` (with its log beside it), written atomically; a
 * strategy whose file exists is skipped. The process that finds every cell done (or `--merge`)
 * writes `report.md`, `results.json`, `loss.svg` and `log.jsonl`; `--merge` names missing cells.
 *
 * Run (reads the project, writes only the output folder):
 *   deno run --allow-read=. --allow-write=out examples/precision_compare.ts --steps 600 --out out/compare
 *   deno run --allow-read=. --allow-write=out examples/precision_compare.ts --strategies bf16,collage-light,e8m3
 *   deno run --allow-read=. --allow-write=out examples/precision_compare.ts --strategies amp-bf16,fp8,fp8-block,fp8-nvfp4
 *   deno run --allow-read=. --allow-write=out examples/precision_compare.ts --list
 *   deno run --allow-read=. --allow-write=out examples/precision_compare.ts --help
 * On a cluster: deploy/slurm/sweep.sbatch, deploy/k8s/sweep-job.yaml (README, "Run a sweep on
 * a cluster").
 *
 * @module
 */
import { deviceInfo, precisionNames } from "../mod.ts";
import { FormatError } from "../errors.ts";
import { writeAtomic } from "../nn/safetensors.ts";
import {
  checks,
  type CliIO,
  consoleIO,
  type Option,
  parseOptions,
  progressOutput,
  requirePermission,
  runCli,
} from "./_cli.ts";
import {
  type Corpus,
  loadCorpus,
  ROOT,
  type TokenizerName,
  tokenizerOption,
  unigramEntropy,
} from "./_text.ts";
import { DEFAULT_RUN, precisionChoices, type RunConfig } from "./_train.ts";
import { checkPrecisionList, runConfig, runOptions } from "./_run_flags.ts";
import { CellProgress, JsonlLog } from "./_progress.ts";
import {
  comparisonChart,
  comparisonTable,
  resultFromJson,
  resultToJson,
  runStrategy,
  type StrategyResult,
} from "./_compare.ts";
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

const PROGRAM = "precision_compare";
const USAGE = `deno run --allow-read=. --allow-write=out [${ALLOW_ENV}] ` +
  "examples/precision_compare.ts [options]";

/** The defaults: a learning rate small enough that pure bf16 loses updates. */
const BASE = { ...DEFAULT_RUN, steps: 600, lr: 3e-4, warmup: 50 };

/** Batches of the final validation loss. */
const EVAL_BATCHES = 16;

/** The options; `--help` is generated from them. */
export const OPTIONS: Record<string, Option> = {
  strategies: {
    type: "string",
    help: `comma-separated: ${precisionChoices().join(", ")}`,
    default: precisionNames().join(","),
    check: checkPrecisionList,
  },
  data: { type: "string", help: "text file (.gz allowed); default: ulp's own source", default: "" },
  tokenizer: tokenizerOption(),
  ...runOptions(BASE, ["precision"]),
  "diag-every": {
    type: "string",
    help: "measure what low precision lost every N steps",
    default: "10",
    check: checks.int(1),
  },
  out: {
    type: "string",
    help: "output folder (shared by the tasks on a cluster)",
    default: "out/compare",
  },
  ...CELL_OPTIONS,
  help: { type: "boolean", help: "show this help", default: false },
};

/** The settings every cell of a comparison shares; a cell file is only used under equal ones. */
interface CompareSettings {
  config: RunConfig;
  diagEvery: number;
  evalBatches: number;
  /** The --data path ("" for the default corpus) and the checksum of its token ids. */
  data: string;
  dataChecksum: string;
}

/**
 * Runs the command line; returns the exit code (0 done, 2 bad usage or permission, 1 for
 * `--merge` with cells missing, named on `io.error`).
 */
export function main(args: readonly string[], io: CliIO = consoleIO): Promise<number> {
  return runCli(PROGRAM, async () => {
    const { values: v } = parseOptions(PROGRAM, USAGE, OPTIONS, args);
    const config = runConfig(PROGRAM, v, BASE);
    const names = String(v.strategies).split(",").map((s) => s.trim()).filter(Boolean);
    const out = String(v.out), data = String(v.data);
    await requirePermission(PROGRAM, "read", data || ROOT, "the data (--data)");
    await requirePermission(PROGRAM, "read", out, "the output folder (--out)");
    await requirePermission(PROGRAM, "write", out, "the output folder (--out)");
    const tokenizer = String(v.tokenizer) as TokenizerName; // in the settings via the ids' checksum
    const corpus = await loadCorpus(data, undefined, { tokenizer, cacheDir: out });
    const settings: CompareSettings = {
      config,
      diagEvery: Number(v["diag-every"]),
      evalBatches: EVAL_BATCHES,
      data: corpus.path,
      dataChecksum: corpus.checksum,
    };
    const cells: Cell[] = names.map((name, index) => ({ index, name, label: name }));
    checkUnique(PROGRAM, cells);
    const hash = settingsHash(JSON.stringify(settings));
    let dir = await CellDir.open(out, hash);
    if (v.list) {
      for (const line of listLines(cells, dir)) io.log(line);
      return 0;
    }
    if (v.merge) return await merge(out, dir, cells, settings, corpus, io);

    const pick = selectCells(PROGRAM, cells.length, v);
    const todo = pick.indices.map((k) => cells[k]).filter((c) => !dir.has(c.name));
    const h0 = unigramEntropy(corpus.train, corpus.val, corpus.tokenizer.vocabSize);
    const gpu = todo.length ? (await deviceInfo()).description : "";
    const done = cells.length - cells.filter((c) => !dir.has(c.name)).length;
    io.log(
      `${plural(cells.length, "cell")}: ${done} done, ${todo.length} to run` +
        (pick.by === "all cells" ? "" : ` (${pick.by})`) +
        (dir.others.length ? ` (${await otherNote(dir, settings)})` : "") +
        (todo.length ? `\nGPU: ${gpu}; ` : "\n") +
        `data: ${corpus.source}; unigram entropy ${h0.toFixed(3)} nats`,
    );
    const progress = new CellProgress(todo.length, (t) => io.log(t));
    const width = Math.max(...todo.map((c) => c.name.length));
    for (const c of todo) {
      // the log grows under a name of this process's own, then takes the cell's name
      const part = dir.path(c.name, `log.jsonl.${crypto.randomUUID().slice(0, 8)}.part`);
      const log = await JsonlLog.open(part);
      const r = await runStrategy(corpus, c.name, config, {
        log,
        diagEvery: settings.diagEvery,
        evalBatches: EVAL_BATCHES,
        ...progressOutput(io),
      }, width);
      await Deno.rename(part, dir.path(c.name, "log.jsonl"));
      await dir.write(c.name, resultToJson(r, { settings, gpu }));
      progress.cellDone(
        `cell ${c.index} ${c.label}: val loss ${r.valLoss.toFixed(4)}, ` +
          `${r.msPerStep.toFixed(0)} ms/step`,
      );
    }
    dir = await CellDir.open(out, hash); // cells other tasks finished meanwhile
    if (cells.every((c) => dir.has(c.name))) {
      return await merge(out, dir, cells, settings, corpus, io);
    }
    io.log(pendingLine(cells, dir, "the report"));
    return 0;
  }, io);
}

/** A note on the cell files made with other settings, naming the settings that differ. */
async function otherNote(dir: CellDir, settings: CompareSettings): Promise<string> {
  let differ: string[] = [];
  try {
    const theirs = JSON.parse(await Deno.readTextFile(dir.others[0])).settings ?? {};
    const mine = settings as unknown as Record<string, unknown>;
    differ = differingKeys(mine, theirs).flatMap((k) =>
      k === "config"
        ? differingKeys({ ...settings.config }, theirs.config ?? {}).map((c) => `config.${c}`)
        : [k]
    );
  } catch {
    // unreadable: counted all the same
  }
  return `${plural(dir.others.length, "cell file")} of other settings ignored` +
    (differ.length ? ` (other ${differ.join(", ")})` : "");
}

/**
 * Reads every cell's file and log and writes report.md, results.json, loss.svg and log.jsonl:
 * what a run of every strategy writes. Throws a UsageError (exit 1) naming missing cells.
 */
async function merge(
  out: string,
  dir: CellDir,
  cells: readonly Cell[],
  settings: CompareSettings,
  corpus: Corpus,
  io: CliIO,
): Promise<number> {
  requireAllCells(PROGRAM, cells, dir);
  const results: StrategyResult[] = [], gpus: string[] = [], logs: string[] = [];
  for (const c of cells) {
    try {
      const { result, extra } = resultFromJson((await dir.read(c.name)) ?? "");
      results.push(result);
      if (!gpus.includes(String(extra.gpu))) gpus.push(String(extra.gpu));
    } catch (e) {
      throw new FormatError(
        `${PROGRAM}: the result of cell ${c.index} (${c.label}), ${dir.path(c.name)}, is not ` +
          `readable (${(e as Error).message}); delete it and run --cell ${c.index} again`,
      );
    }
    logs.push(await Deno.readTextFile(dir.path(c.name, "log.jsonl")).catch(() => ""));
  }
  const table = comparisonTable(results);
  const c = settings.config;
  const cfg = `${plural(c.nLayer, "layer")}, ${plural(c.nHead, "head")}, width ${c.nEmbd}, ` +
    `context ${c.block}, batch ${c.batch}, AdamW betas 0.9/0.95, lr ${c.lr} ` +
    `(${c.warmup} warmup, cosine), ${plural(c.steps, "step")}, seed ${c.seed}`;
  const enc = new TextEncoder();
  await writeAtomic(
    `${out}/report.md`,
    enc.encode(
      `# Precision strategies compared\n\n${cfg}; data: ${corpus.source}; ` +
        `GPU: ${gpus.join(" / ")}.\n\n${table}\n\n![loss](loss.svg)\n\nUpdates lost and EDQ ` +
        `are measured every ${settings.diagEvery} steps on the device (a run with a ` +
        `GradScaler steps through it and has none). Validation loss: ${EVAL_BATCHES} batches ` +
        `of the last 10% of the text.\n`,
    ),
  );
  await writeAtomic(
    `${out}/results.json`,
    enc.encode(JSON.stringify({ config: cfg, results }, null, 2)),
  );
  await writeAtomic(
    `${out}/loss.svg`,
    enc.encode(comparisonChart(results, "Training loss by precision strategy")),
  );
  await writeAtomic(`${out}/log.jsonl`, enc.encode(logs.join("")));
  io.log(`\n${table}\n\nwrote ${out}/report.md, results.json, loss.svg and log.jsonl`);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
