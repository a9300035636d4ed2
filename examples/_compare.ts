// Precision strategies side by side (precision_compare and the demo): the same GPT, seed and
// batches under each strategy, then a table of what each costs and loses (final validation
// loss, updates lost, EDQ ratio, bytes per parameter, step time) and a chart of the losses
// (Collage, Yu et al. ICML 2024; DESIGN.md section 4).

import type { GPT } from "../mod.ts";
import type { Corpus } from "./_text.ts";
import { sample } from "./_text.ts";
import { type RunConfig, runTraining, Trainer } from "./_train.ts";
import { type JsonlLog, Progress } from "./_progress.ts";
import { lineChart, stackCharts } from "./_chart.ts";

/** What one strategy did. */
export interface StrategyResult {
  strategy: string;
  valLoss: number;
  /** Mean fraction of updates lost over the steps with diagnostics (NaN: none). */
  imprecision: number;
  /** Mean <e,u>/||u||^2 over the steps with diagnostics (NaN: none). */
  edqRatio: number;
  bytesPerParam: number;
  msPerStep: number;
  /** (step, training loss) of every step. */
  losses: [number, number][];
  /** (step, fraction of updates lost) of the steps with diagnostics. */
  lost: [number, number][];
  /** Text the model wrote after training (when asked). */
  sample?: string;
}

/** Options of `compareStrategies`. */
export interface CompareOptions {
  /** Every step of every strategy goes here, with a `strategy` field. */
  log?: JsonlLog | null;
  /** Diagnostics every N steps (0: never). */
  diagEvery: number;
  /** Batches of the final validation loss. */
  evalBatches?: number;
  /** Characters to sample after training each strategy (0: none). */
  sampleTokens?: number;
  /** The prompt of the samples. */
  prompt?: string;
  /** Progress output (default: stdout) and whether it is a terminal. */
  write?: (text: string) => void;
  live?: boolean;
  /** The model each strategy starts from (a pretrained one: finetune.ts); default: fresh. */
  init?: () => Promise<GPT>;
  /** Called with each trained strategy's trainer before it is freed (finetune's export). */
  after?: (name: string, trainer: Trainer) => Promise<void>;
}

/** Trains `base` under each strategy of `names` in turn, freeing each model after it. */
export async function compareStrategies(
  corpus: Corpus,
  names: readonly string[],
  base: RunConfig,
  o: CompareOptions,
): Promise<StrategyResult[]> {
  const results: StrategyResult[] = [];
  const width = Math.max(...names.map((n) => n.length));
  for (const name of names) results.push(await runStrategy(corpus, name, base, o, width));
  return results;
}

/**
 * Trains `base` under strategy `name` (one cell of a comparison) and frees the model; `width`
 * pads the strategy's name in the progress lines.
 */
export async function runStrategy(
  corpus: Corpus,
  name: string,
  base: RunConfig,
  o: CompareOptions,
  width = name.length,
): Promise<StrategyResult> {
  const trainer = new Trainer({ ...base, precision: name }, corpus, await o.init?.());
  try {
    const progress = new Progress({
      total: base.steps,
      label: name.padEnd(width),
      live: o.live,
      write: o.write,
      every: 50,
    });
    const run = await runTraining(trainer, {
      progress,
      log: o.log,
      fields: { strategy: name },
      diagEvery: o.diagEvery,
    });
    const valLoss = await trainer.evaluate(o.evalBatches ?? 16);
    o.log?.append({ strategy: name, type: "eval", step: trainer.step, valLoss });
    const diag = run.records.filter((r) => r.imprecision !== undefined);
    const mean = (f: (r: (typeof diag)[number]) => number) =>
      diag.length ? diag.reduce((a, r) => a + f(r), 0) / diag.length : NaN;
    const r: StrategyResult = {
      strategy: name,
      valLoss,
      imprecision: mean((r) => r.imprecision!),
      edqRatio: mean((r) => r.edqRatio!),
      bytesPerParam: trainer.bytesPerParam,
      msPerStep: run.ms / Math.max(1, run.records.length),
      losses: run.records.map((r) => [r.step, r.loss]),
      lost: diag.map((r) => [r.step, r.imprecision!]),
    };
    if (o.sampleTokens) {
      const { tokenizer } = corpus;
      const prompt = o.prompt ?? "export function ";
      const ids = await sample(trainer.model, tokenizer.encode(prompt), o.sampleTokens, {
        temperature: 0.8,
        topK: 20,
        seed: base.seed,
      });
      r.sample = prompt + tokenizer.decode(ids);
    }
    progress.note(
      `${name.padEnd(width)} validation loss ${valLoss.toFixed(4)}, ` +
        `${r.msPerStep.toFixed(0)} ms/step`,
    );
    await o.after?.(name, trainer);
    return r;
  } finally {
    trainer.dispose();
  }
}

/** A result as JSON text, NaN and Infinity as null (read back by `resultFromJson`). */
export function resultToJson(r: StrategyResult, extra: Record<string, unknown> = {}): string {
  return JSON.stringify(
    { ...extra, result: r },
    (_k, x) => typeof x === "number" && !Number.isFinite(x) ? null : x,
  );
}

/** A result written by `resultToJson`, with null read back as NaN; and the extra fields. */
export function resultFromJson(
  text: string,
): { result: StrategyResult; extra: Record<string, unknown> } {
  const { result, ...extra } = JSON.parse(text) as { result: StrategyResult };
  if (!result || typeof result.strategy !== "string" || !Array.isArray(result.losses)) {
    throw new SyntaxError("no strategy result in it");
  }
  const n = (x: number | null) => (x === null ? NaN : x);
  return {
    result: {
      ...result,
      valLoss: n(result.valLoss),
      imprecision: n(result.imprecision),
      edqRatio: n(result.edqRatio),
      bytesPerParam: n(result.bytesPerParam),
      msPerStep: n(result.msPerStep),
      losses: result.losses.map(([s, l]) => [s, n(l)]),
      lost: result.lost.map(([s, f]) => [s, n(f)]),
    },
    extra,
  };
}

/** The Markdown table of the results, with the loss relative to `ref` (default amp-bf16). */
export function comparisonTable(results: StrategyResult[], ref = "amp-bf16"): string {
  const base = results.find((r) => r.strategy === ref) ?? results[0];
  const fmt = (x: number, d = 4) => (Number.isFinite(x) ? x.toFixed(d) : "n/a");
  const pct = (x: number, d: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(d)}%` : "n/a");
  const rel = (x: number) => (x >= -5e-5 ? "+" + pct(Math.abs(x), 2) : pct(x, 2));
  return [
    `| strategy | val loss | vs ${base.strategy} | updates lost | EDQ ratio | bytes/param | ms/step |`,
    "|---|---|---|---|---|---|---|",
    ...results.map((r) =>
      `| ${r.strategy} | ${fmt(r.valLoss)} | ${
        r === base ? "" : rel(r.valLoss / base.valLoss - 1)
      } | ${pct(r.imprecision, 1)} | ${fmt(r.edqRatio, 3)} | ${r.bytesPerParam.toFixed(0)} | ${
        r.msPerStep.toFixed(0)
      } |`
    ),
  ].join("\n");
}

/** The running mean of the last `window` values of (step, value) points (finite ones). */
function smooth(points: [number, number][], window: number): [number, number][] {
  const ok = points.filter(([, v]) => Number.isFinite(v));
  return ok.map(([s], i) => {
    const w = ok.slice(Math.max(0, i - window + 1), i + 1);
    return [s, w.reduce((a, [, v]) => a + v, 0) / w.length];
  });
}

/**
 * Writes what every compared model wrote to `<out>/sample.txt` (each after a `--- strategy ---`
 * line) and the chart of the losses (`comparisonChart`, titled `title`) to `<out>/loss.svg`;
 * returns the samples' text (for the report).
 */
export async function writeSamplesAndChart(
  out: string,
  results: StrategyResult[],
  title: string,
): Promise<string> {
  const samples = results.filter((r) => r.sample !== undefined).map((r) =>
    `--- ${r.strategy} ---\n${r.sample}\n`
  ).join("\n");
  await Deno.writeTextFile(`${out}/sample.txt`, samples);
  await Deno.writeTextFile(`${out}/loss.svg`, comparisonChart(results, title));
  return samples;
}

/**
 * An SVG chart of the results, three panels: each strategy's training loss (running mean of
 * `window` steps); its difference to `ref`'s loss on the same batches (what the precision
 * cost); and the fraction of weight updates lost to rounding (why).
 */
export function comparisonChart(
  results: StrategyResult[],
  title: string,
  ref = "amp-bf16",
  window = 20,
): string {
  const base = results.find((r) => r.strategy === ref);
  const size = { width: 760, height: 300 };
  const panels = [
    lineChart(
      results.map((r) => ({ name: r.strategy, points: smooth(r.losses, window) })),
      { title, xLabel: "step", yLabel: `loss, mean of ${window} steps`, ...size },
    ),
  ];
  if (base && results.length > 1) {
    const at = new Map(base.losses);
    panels.push(lineChart(
      results.map((r) => ({
        name: r.strategy,
        points: smooth(r.losses.map(([s, l]) => [s, l - (at.get(s) ?? NaN)]), window),
      })),
      {
        title: `Loss minus ${ref}'s loss on the same batches (mean of ${window} steps)`,
        xLabel: "step",
        yLabel: "loss difference (nats)",
        ...size,
      },
    ));
  }
  const measured = results.filter((r) => r.lost.length > 0);
  if (measured.length) {
    panels.push(lineChart(
      measured.map((r) => ({
        name: r.strategy,
        points: r.lost.map(([s, f]): [number, number] => [s, 100 * f]),
      })),
      {
        title: "Weight updates lost to rounding (the stored weight did not change)",
        xLabel: "step",
        yLabel: "updates lost (%)",
        ...size,
      },
    ));
  }
  return stackCharts(panels);
}
