/**
 * Trains the same character GPT with the same seed under every precision strategy and
 * writes what each one costs and loses: final validation loss, imprecision (fraction of
 * updates lost), EDQ ratio, bytes per parameter, step time, as a Markdown table, JSON, an
 * SVG chart of the loss curves and the JSONL log of every step (Collage, Yu et al. ICML 2024;
 * DESIGN.md section 4).
 *
 * Run (reads the project, writes only the output folder):
 *   deno run --allow-read=. --allow-write=out examples/precision_compare.ts --steps 600 --out out/compare
 *   deno run --allow-read=. --allow-write=out examples/precision_compare.ts --strategies bf16,collage-light,e8m3
 *   deno run --allow-read=. --allow-write=out examples/precision_compare.ts --help
 *
 * @module
 */
import { deviceInfo, precisionNames } from "../mod.ts";
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
import { loadCorpus, ROOT, unigramEntropy } from "./_text.ts";
import { DEFAULT_RUN, precisionChoices } from "./_train.ts";
import { checkPrecisionList, runConfig, runOptions } from "./_run_flags.ts";
import { JsonlLog } from "./_progress.ts";
import { compareStrategies, comparisonChart, comparisonTable } from "./_compare.ts";

const PROGRAM = "precision_compare";
const USAGE = "deno run --allow-read=. --allow-write=out examples/precision_compare.ts [options]";

/** The defaults: a learning rate small enough that pure bf16 loses updates. */
const BASE = { ...DEFAULT_RUN, steps: 600, lr: 3e-4, warmup: 50 };

/** The options; `--help` is generated from them. */
export const OPTIONS: Record<string, Option> = {
  strategies: {
    type: "string",
    help: `comma-separated: ${precisionChoices().join(", ")}`,
    default: precisionNames().join(","),
    check: checkPrecisionList,
  },
  data: { type: "string", help: "text file (.gz allowed); default: ulp's own source", default: "" },
  ...runOptions(BASE, ["precision"]),
  "diag-every": {
    type: "string",
    help: "measure what low precision lost every N steps",
    default: "10",
    check: checks.int(1),
  },
  out: { type: "string", help: "output folder", default: "out/compare" },
  help: { type: "boolean", help: "show this help", default: false },
};

/** Runs the command line; returns the exit code (0 done, 2 bad usage or permission). */
export function main(args: readonly string[], io: CliIO = consoleIO): Promise<number> {
  return runCli(PROGRAM, async () => {
    const { values: v } = parseOptions(PROGRAM, USAGE, OPTIONS, args);
    const config = runConfig(PROGRAM, v, BASE);
    const names = String(v.strategies).split(",").map((s) => s.trim()).filter(Boolean);
    const out = String(v.out), data = String(v.data);
    await requirePermission(PROGRAM, "read", data || ROOT, "the data (--data)");
    await requirePermission(PROGRAM, "write", out, "the output folder (--out)");
    const corpus = await loadCorpus(data);
    const h0 = unigramEntropy(corpus.train, corpus.val, corpus.tokenizer.vocabSize);
    const gpu = (await deviceInfo()).description;
    io.log(`GPU: ${gpu}; data: ${corpus.source}; unigram entropy ${h0.toFixed(3)} nats`);
    await Deno.mkdir(out, { recursive: true });
    const log = await JsonlLog.open(`${out}/log.jsonl`);
    const results = await compareStrategies(corpus, names, config, {
      log,
      diagEvery: Number(v["diag-every"]),
      ...progressOutput(io),
    });
    const table = comparisonTable(results);
    const c = config;
    const cfg = `${c.nLayer} layers, ${c.nHead} heads, width ${c.nEmbd}, context ${c.block}, ` +
      `batch ${c.batch}, AdamW betas 0.9/0.95, lr ${c.lr} (${c.warmup} warmup, cosine), ` +
      `${c.steps} steps, seed ${c.seed}`;
    await Deno.writeTextFile(
      `${out}/report.md`,
      `# Precision strategies compared\n\n${cfg}; data: ${corpus.source}; GPU: ${gpu}.\n\n` +
        `${table}\n\n![loss](loss.svg)\n\nUpdates lost and EDQ are measured every ` +
        `${v["diag-every"]} steps on the device (a run with a GradScaler steps through it and ` +
        `has none). Validation loss: 16 batches of the last 10% of the text.\n`,
    );
    await Deno.writeTextFile(
      `${out}/results.json`,
      JSON.stringify({ config: cfg, results }, null, 2),
    );
    await Deno.writeTextFile(
      `${out}/loss.svg`,
      comparisonChart(results, "Training loss by precision strategy"),
    );
    io.log(`\n${table}\n\nwrote ${out}/report.md, results.json, loss.svg and log.jsonl`);
    return 0;
  }, io);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
