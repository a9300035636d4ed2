// The records, the divergence rule, the summary table and the loss chart of
// examples/stability_sweep.ts (a grid of formats x learning rates x seeds; Lee et al., "To FP8
// and Back Again", 2025). Not part of the library's public API.
import type { Rounding } from "../mod.ts";
import { lineChart } from "./_chart.ts";

/** Steps between readbacks of the loss; also the averaging window of the chart. */
export const READ_EVERY = 10;

/** The settings every cell of a sweep shares; cells are only reused under equal settings. */
export interface SweepConfig {
  /** The --data path ("" for the default corpus). */
  data: string;
  /** Length and checksum of the token ids: a cell trained on other data is not reused. */
  dataChecksum: string;
  steps: number;
  batch: number;
  block: number;
  layers: number;
  heads: number;
  width: number;
  warmup: number;
  rounding: Rounding;
  divergeFactor: number;
  sharpnessEvery: number;
  sharpnessEps: number;
  evalBatches: number;
}

/** One finished run: one format, learning rate and seed. */
export interface CellRecord {
  format: string;
  lr: number;
  seed: number;
  config: SweepConfig;
  /** Step (1-based) at which the run diverged, or null. */
  divergedAt: number | null;
  /** Validation loss at the end (NaN for a diverged run). */
  finalLoss: number;
  /** Largest batch-mean sharpness measured (NaN when none was). */
  maxSharpness: number;
  /** Training loss of every step run. */
  loss: number[];
  /** [step, batch-mean sharpness] pairs. */
  sharpness: [number, number][];
  msPerStep: number;
}

/** One row of the results table: a format and learning rate over its seeds. */
export interface ResultRow {
  format: string;
  lr: number;
  runs: number;
  diverged: number;
  /** Mean, sample standard deviation, min and max of the final loss of the runs that did not diverge. */
  finalLoss: { mean: number; std: number; min: number; max: number; n: number };
  maxSharpness: number;
}

/**
 * The divergence rule: the 1-based step of the first loss that is not finite or exceeds
 * `factor` times the running minimum of the losses up to it, or null when there is none.
 */
export function divergenceStep(losses: readonly number[], factor: number): number | null {
  let min = Infinity;
  for (let i = 0; i < losses.length; i++) {
    const l = losses[i];
    if (!Number.isFinite(l)) return i + 1;
    min = Math.min(min, l);
    if (l > factor * min) return i + 1;
  }
  return null;
}

/** Short learning-rate label: 3e-4, 1e-3, 1.5e-3. */
export const fmtLr = (lr: number): string => lr.toExponential().replace("e+", "e");

export const finite = (xs: readonly number[]) => xs.filter(Number.isFinite);

/** Per format and learning rate (in grid order), the summary of the cells. */
export function summarize(
  cells: readonly CellRecord[],
  formats: readonly string[],
  lrs: readonly number[],
): ResultRow[] {
  return formats.flatMap((format) =>
    lrs.map((lr) => {
      const mine = cells.filter((c) => c.format === format && c.lr === lr);
      const ok = finite(mine.filter((c) => c.divergedAt === null).map((c) => c.finalLoss));
      const mean = ok.length ? ok.reduce((a, b) => a + b, 0) / ok.length : NaN;
      const std = ok.length > 1
        ? Math.sqrt(ok.reduce((a, b) => a + (b - mean) ** 2, 0) / (ok.length - 1))
        : ok.length
        ? 0
        : NaN;
      const sharp = finite(mine.map((c) => c.maxSharpness));
      return {
        format,
        lr,
        runs: mine.length,
        diverged: mine.filter((c) => c.divergedAt !== null).length,
        finalLoss: {
          mean,
          std,
          min: ok.length ? Math.min(...ok) : NaN,
          max: ok.length ? Math.max(...ok) : NaN,
          n: ok.length,
        },
        maxSharpness: sharp.length ? Math.max(...sharp) : NaN,
      };
    })
  );
}

export const num = (x: number, d: number) => (Number.isFinite(x) ? x.toFixed(d) : "n/a");

/** The results table in Markdown. */
export function resultsTable(rows: readonly ResultRow[]): string {
  return [
    "| format | lr | diverged / runs | final val loss (mean ± std) | max sharpness |",
    "|---|---|---|---|---|",
    ...rows.map((r) =>
      `| ${r.format} | ${fmtLr(r.lr)} | ${r.diverged} / ${r.runs} | ${
        r.finalLoss.n > 1
          ? `${num(r.finalLoss.mean, 3)} ± ${num(r.finalLoss.std, 3)}`
          : r.finalLoss.n
          ? `${num(r.finalLoss.mean, 3)} (1 run)`
          : "n/a"
      } | ${num(r.maxSharpness, 3)} |`
    ),
  ].join("\n");
}

/** One panel per format, one line per learning rate: mean over seeds of the windowed loss. */
export function lossSvg(
  cells: readonly CellRecord[],
  formats: readonly string[],
  lrs: readonly number[],
): string {
  const W = 620, H = 340, cols = Math.min(2, formats.length);
  const panels = formats.map((format, i) => {
    const series = lrs.map((lr) => {
      const runs = cells.filter((c) => c.format === format && c.lr === lr);
      const points: [number, number][] = [];
      for (let s = 0;; s += READ_EVERY) {
        const windows = runs.filter((c) => c.loss.length > s).map((c) =>
          c.loss.slice(s, s + READ_EVERY)
        );
        if (!windows.length) break;
        const end = s + Math.max(...windows.map((w) => w.length)); // the window's last step
        points.push([end, mean(windows.map(mean))]);
      }
      const div = runs.filter((c) => c.divergedAt !== null).length;
      return { name: `lr ${fmtLr(lr)}${div ? ` (${div}/${runs.length} div.)` : ""}`, points };
    });
    const svg = lineChart(series, {
      title: `${format}: training loss`,
      xLabel: "step",
      yLabel: "loss (nats)",
      width: W,
      height: H,
    });
    return svg.replace("<svg ", `<svg x="${(i % cols) * W}" y="${Math.floor(i / cols) * H}" `);
  });
  const rows = Math.ceil(formats.length / cols);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${cols * W}" height="${
      rows * H
    }" viewBox="0 0 ${cols * W} ${rows * H}">`,
    ...panels,
    "</svg>",
  ].join("\n");
}

function mean(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** JSON with NaN and Infinity as null; numbers to 6 significant digits. */
export function toJson(v: unknown, indent?: number): string {
  return JSON.stringify(
    v,
    (_k, x) => typeof x === "number" ? (Number.isFinite(x) ? Number(x.toPrecision(6)) : null) : x,
    indent,
  );
}

/** A cell record read back from JSON (null -> NaN where numbers are expected). */
export function fromJson(line: string): CellRecord {
  const c = JSON.parse(line) as CellRecord;
  // a record is ulp's own output: anything else (a hand-edited "finalLoss": "x") is refused,
  // never counted as a divergence
  const num = (x: unknown) => x === null || typeof x === "number";
  const bad = !c || typeof c !== "object"
    ? "not an object"
    : !num(c.finalLoss)
    ? "finalLoss is not a number"
    : !num(c.maxSharpness)
    ? "maxSharpness is not a number"
    : !Array.isArray(c.loss) || !c.loss.every(num)
    ? "loss is not a list of numbers"
    : !Array.isArray(c.sharpness) ||
        !c.sharpness.every((p) => Array.isArray(p) && p.length === 2 && p.every(num))
    ? "sharpness is not a list of [step, value] pairs"
    : c.divergedAt !== null && typeof c.divergedAt !== "number"
    ? "divergedAt is not a step"
    : null;
  if (bad !== null) {
    throw new Error(`a cell record is malformed (${bad}); delete it to rerun the cell`);
  }
  const n = (x: number | null) => (x === null ? NaN : x);
  return {
    ...c,
    finalLoss: n(c.finalLoss),
    maxSharpness: n(c.maxSharpness),
    loss: c.loss.map(n),
    sharpness: c.sharpness.map(([s, p]) => [s, n(p)]),
  };
}
