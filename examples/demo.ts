/**
 * The demo: trains a small character GPT on ulp's own source code three times, with the same
 * seed and batches, in pure bf16, in Collage-light (bf16 weights with a bf16 low part, 10
 * bytes per parameter) and in amp-bf16 (f32 master weights, 16 bytes), at a learning rate
 * small enough that pure bf16 rounds many updates away; then writes a report folder: a
 * Markdown report with the comparison table, the loss chart (SVG), the JSONL log of every step
 * and text each model wrote. A few minutes on a laptop's CPU through Mesa's software GPU.
 *
 * Run (reads the project, writes only out/):
 *   npx -y deno@2.9.6 task demo
 *   deno run --allow-read=. --allow-write=out examples/demo.ts --steps 600 --out out/demo-long
 *   deno run --allow-read=. --allow-write=out examples/demo.ts --help
 *
 * @module
 */
import { deviceInfo } from "../mod.ts";
import {
  checks,
  type CliIO,
  consoleIO,
  type Option,
  parseOptions,
  progressOutput,
  requirePermissions,
  runCli,
} from "./_cli.ts";
import { loadCorpus, ROOT, unigramEntropy } from "./_text.ts";
import { DEFAULT_RUN, type RunConfig } from "./_train.ts";
import { comparisonOptions, runConfig } from "./_run_flags.ts";
import { duration, JsonlLog } from "./_progress.ts";
import {
  compareStrategies,
  comparisonTable,
  type StrategyResult,
  writeSamplesAndChart,
} from "./_compare.ts";

const PROGRAM = "demo";
const USAGE = "deno run --allow-read=. --allow-write=out examples/demo.ts [options]";

/** The demo's run: small enough for a software GPU, a learning rate where bf16 loses updates. */
export const DEMO_RUN: RunConfig = {
  ...DEFAULT_RUN,
  nLayer: 2,
  nHead: 4,
  nEmbd: 64,
  block: 32,
  batch: 8,
  steps: 300,
  lr: 1e-3,
  warmup: 20,
};

/** The strategies the demo compares. */
export const DEMO_STRATEGIES: readonly string[] = ["bf16", "collage-light", "amp-bf16"];

/** The options; `--help` is generated from them. */
export const OPTIONS: Record<string, Option> = {
  ...comparisonOptions(DEMO_STRATEGIES, DEMO_RUN, ["precision", "rounding"]),
  "sample-tokens": {
    type: "string",
    help: "characters each model writes",
    default: "240",
    check: checks.int(0),
  },
  out: { type: "string", help: "report folder", default: "out/demo" },
  help: { type: "boolean", help: "show this help", default: false },
};

/** Runs the demo; returns the exit code (0 done, 2 bad usage or permission). */
export function main(args: readonly string[], io: CliIO = consoleIO): Promise<number> {
  return runCli(PROGRAM, async () => {
    const { values: v } = parseOptions(PROGRAM, USAGE, OPTIONS, args);
    const config = runConfig(PROGRAM, v, DEMO_RUN);
    const names = String(v.strategies).split(",").map((s) => s.trim()).filter(Boolean);
    const out = String(v.out);
    await requirePermissions(PROGRAM, [
      { kind: "read", path: ROOT, what: "the project (the corpus, data/corpus.txt)" },
      { kind: "write", path: out, what: "the report folder (--out)" },
    ]);
    const t0 = performance.now();
    const info = await deviceInfo();
    const corpus = await loadCorpus();
    const h0 = unigramEntropy(corpus.train, corpus.val, corpus.tokenizer.vocabSize);
    io.log(`ulp demo: does the precision you train in matter? (GPU: ${info.description})`);
    io.log(
      `A ${config.nLayer}-layer GPT learns to write TypeScript from ${corpus.source} ` +
        `(${corpus.train.length + corpus.val.length} characters; a model that knows only ` +
        `character frequencies scores ${h0.toFixed(2)} nats), ${config.steps} steps under each ` +
        `of: ${names.join(", ")}.\n`,
    );
    await Deno.mkdir(out, { recursive: true });
    const log = await JsonlLog.open(`${out}/log.jsonl`);
    const results = await compareStrategies(corpus, names, config, {
      log,
      diagEvery: Number(v["diag-every"]),
      sampleTokens: Number(v["sample-tokens"]),
      ...progressOutput(io),
    });
    const table = comparisonTable(results);
    const hidden = hiddenCurves(results);
    const samples = await writeSamplesAndChart(
      out,
      results,
      `GPT training loss: ${names.join(" vs ")}${hidden ? ` (${hidden})` : ""}`,
    );
    await Deno.writeTextFile(
      `${out}/report.md`,
      reportText(config, results, table, corpus.source, info.description, h0, samples, hidden),
    );
    await Deno.writeTextFile(
      `${out}/results.json`,
      JSON.stringify(
        {
          corpus: {
            source: corpus.source,
            characters: corpus.train.length + corpus.val.length,
            distinct: corpus.tokenizer.vocabSize,
            unigramEntropy: h0,
          },
          config,
          gpu: info.description,
          seconds: (performance.now() - t0) / 1000,
          hidden,
          results: results.map(({ losses: _l, lost, sample: _s, ...r }) => ({
            ...r,
            lostAtEnd: lateLost(lost),
          })),
        },
        null,
        2,
      ) + "\n",
    );
    io.log(`\n${table}\n`);
    io.log(`${whatItShows(results)}${hidden ? ` In the chart, ${hidden}.` : ""}\n`);
    io.log(
      `Report: ${out}/report.md (with loss.svg, log.jsonl and sample.txt), ` +
        `in ${duration((performance.now() - t0) / 1000)}.`,
    );
    return 0;
  }, io);
}

/** The mean fraction of updates lost over the last 3 measurements (the end of the run). */
function lateLost(lost: [number, number][]): number {
  const last = lost.slice(-3);
  return last.reduce((a, [, f]) => a + f, 0) / Math.max(1, last.length);
}

/**
 * Which loss curves of the chart lie on top of another (their 20-step means differ by less
 * than 1% of the chart's range at every step), said in words: "collage-light's curve lies
 * under amp-bf16's (they differ by at most 0.004)"; "" when none does.
 */
export function hiddenCurves(results: StrategyResult[], window = 20): string {
  const mean = (r: StrategyResult) => {
    const ok = r.losses.filter(([, v]) => Number.isFinite(v));
    return new Map(ok.map(([s], i) => {
      const w = ok.slice(Math.max(0, i - window + 1), i + 1);
      return [s, w.reduce((a, [, v]) => a + v, 0) / w.length];
    }));
  };
  const curves = results.map((r) => ({ name: r.strategy, m: mean(r) }));
  const all = curves.flatMap((c) => [...c.m.values()]);
  const range = Math.max(...all) - Math.min(...all);
  const notes: string[] = [];
  for (let i = 0; i < curves.length; i++) {
    for (let j = i + 1; j < curves.length; j++) {
      let diff = 0;
      for (const [s, v] of curves[i].m) {
        diff = Math.max(diff, Math.abs(v - (curves[j].m.get(s) ?? Infinity)));
      }
      if (diff < 0.01 * range) {
        notes.push(
          `${curves[i].name}'s curve lies under ${curves[j].name}'s (they differ by at most ` +
            `${diff.toFixed(3)})`,
        );
      }
    }
  }
  return notes.join("; ");
}

/** One paragraph on what the numbers say, from the numbers. */
function whatItShows(results: StrategyResult[]): string {
  const get = (n: string) => results.find((r) => r.strategy === n);
  const bf16 = get("bf16"), collage = get("collage-light"), amp = get("amp-bf16");
  if (!bf16 || !collage || !amp) return "";
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  const late = lateLost(bf16.lost);
  return `Pure bf16 lost ${pct(bf16.imprecision)} of its weight updates to rounding (the ` +
    `stored weight did not change), ${pct(late)} at the end as the learning rate decayed, and ` +
    `ended at validation loss ${bf16.valLoss.toFixed(3)}. Collage-light, also bf16 but ` +
    `keeping what rounding drops in a second bf16 number, lost ${pct(collage.imprecision)} and ` +
    `reached ${collage.valLoss.toFixed(3)}, against ${amp.valLoss.toFixed(3)} for amp-bf16 ` +
    `with f32 master weights, at ${collage.bytesPerParam.toFixed(0)} instead of ` +
    `${amp.bytesPerParam.toFixed(0)} bytes per parameter.`;
}

function reportText(
  c: RunConfig,
  results: StrategyResult[],
  table: string,
  source: string,
  gpu: string,
  h0: number,
  samples: string,
  hidden: string,
): string {
  return `# ulp demo: the same GPT in ${results.map((r) => r.strategy).join(", ")}

A character-level GPT (${c.nLayer} layer${c.nLayer === 1 ? "" : "s"}, ${c.nHead} head${
    c.nHead === 1 ? "" : "s"
  }, width ${c.nEmbd}, context ${c.block})
trained on ${source}, ${c.steps} steps of batch ${c.batch} with AdamW (lr ${c.lr}, ${c.warmup}
warmup steps, cosine decay, betas 0.9/0.95, weight decay ${c.weightDecay}), seed ${c.seed}, the same
batches for every strategy. GPU: ${gpu}.

${table}

- **val loss**: cross-entropy (nats per character) on the last 10% of the text; a model that knows
  only character frequencies scores ${h0.toFixed(3)}.
- **updates lost**: the fraction of weight updates that did not change the stored weight (value +
  update == value after rounding), measured on the device every few steps (DESIGN.md section 4).
- **EDQ ratio**: <effective update, intended update> / ||intended update||^2; 1 when nothing is lost.
- **bytes/param**: weight + gradient + optimizer state, measured from \`memory()\`.

![training loss](loss.svg)
${hidden ? `\n_In the chart, ${hidden}._\n` : ""}
${whatItShows(results)}

Every step of every run is in \`log.jsonl\` (one JSON object per line with \`strategy\`, \`step\`,
\`loss\`, \`lr\`, \`ms\` and, every few steps, the diagnostics).

## What each model wrote (prompt "export function ", temperature 0.8, top-k 20)

\`\`\`
${samples}\`\`\`
`;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
