/**
 * Prints what each number format can represent: its range, smallest normal and subnormal,
 * eps, whether Inf and NaN exist, and the resolution per binade, from the smallest
 * subnormal binade to the largest finite value: the spacing of the representable values in
 * [2^k, 2^(k+1)) and the value-to-update ratio above which an update to a value of that
 * binade is lost under round-to-nearest-even. Optionally draws spacing against magnitude
 * (log-log) as an SVG chart.
 *
 * Everything comes from the dtype descriptor and `finfo()`, and every spacing and loss
 * threshold is then checked with the host codec (decode(code + 1) - decode(code), uniform
 * across the binade; x + u encoded just below and just above half the spacing).
 *
 * Run (no GPU, no permission; --svg needs write access to where the chart goes):
 *   deno run examples/formats.ts e4m3 bf16
 *   deno run examples/formats.ts e8m3 e5m6 --all
 *   deno run --allow-write=. examples/formats.ts --svg formats.svg
 *   deno run examples/formats.ts --help
 *
 * @module
 */
import { BASE_COLORS, esc } from "./_chart.ts";
import { didYouMean } from "./_cli.ts";
import { parseArgs } from "node:util";
import { type DType, dtype, DTYPE_FORMS, type FInfo, finfo } from "../dtypes/mod.ts";

/** The formats shown when none is named. */
export const DEFAULT_FORMATS: readonly string[] = [
  "f32",
  "bf16",
  "f16",
  "e5m2",
  "e4m3",
  "e3m2fn",
  "e2m1fn",
];

/** One binade [2^k, 2^(k+1)) of a format, clipped to its range. */
export interface Binade {
  /** The binade's exponent: its values lie in [2^k, 2^(k+1)). */
  readonly k: number;
  /** Lower bound, 2^k (always representable). */
  readonly lo: number;
  /** Upper bound: 2^(k+1) (excluded), or the largest finite value (included) in the top binade. */
  readonly hi: number;
  /** Whether `hi` belongs to the binade (only in the top binade, where it is max finite). */
  readonly hiIncluded: boolean;
  /** Whether the binade lies below the smallest normal (constant spacing). */
  readonly subnormal: boolean;
  /** Spacing of adjacent representable values in the binade, measured with the codec. */
  readonly spacing: number;
  /** How many representable values the binade holds (measured: codes from lo to the top). */
  readonly count: number;
  /**
   * log2 of the value-to-update ratio above which an update is lost: with x = lo, x + u
   * rounds back to x under RNE when |x| / |u| > 2^lossRatioLog2 (|u| < spacing / 2).
   */
  readonly lossRatioLog2: number;
}

/** Everything the script prints about one format. */
export interface FormatTable {
  /** The name as typed. */
  readonly requested: string;
  /** The canonical name. */
  readonly name: string;
  /** The descriptor. */
  readonly dtype: DType;
  /** Its limits. */
  readonly info: FInfo;
  /** Exponent of the top binade: max finite lies in [2^emax, 2^(emax+1)). */
  readonly emax: number;
  /** Exponent of the smallest normal binade, 1 - bias. */
  readonly emin: number;
  /** Code of +Inf, or null. */
  readonly infCode: number | null;
  /** Smallest and largest positive NaN code, or null when the format has no NaN. */
  readonly nanCodes: readonly [number, number] | null;
  /**
   * log2 of the ratio above which an update is lost in every normal binade, mantissaBits + 1:
   * at x = 2^k the spacing is 2^(k - m), so u is lost when |u| < 2^(k - m - 1).
   */
  readonly lossRatioLog2: number;
  /** The binades, from the smallest subnormal one to the one holding max finite. */
  readonly binades: readonly Binade[];
  /** What the codec check found wrong; empty when it agrees with the descriptor everywhere. */
  readonly problems: readonly string[];
}

/**
 * The table of one float format: limits from `finfo()`, binades from the descriptor, each
 * binade's spacing measured with the host codec and checked against the descriptor, and the
 * update-loss threshold checked by encoding x + u on both sides of half the spacing.
 * Throws a `DTypeError` (listing the valid forms) for an unknown name, and an `Error` for a
 * dtype that is not a plain float format (integers, bool, the bf16x2 pair).
 *
 * @example
 * ```ts
 * import { formatTable } from "./formats.ts";
 * const t = formatTable("e4m3");
 * const top = t.binades.at(-1)!;
 * console.log(t.info.max, top.lo, top.hi, top.spacing, t.lossRatioLog2); // 448 256 448 32 4
 * ```
 */
export function formatTable(requested: string): FormatTable {
  const d = dtype(requested);
  if (d.kind !== "float") {
    const what = d.kind === "mcf"
      ? "a pair hi + lo of two bf16, whose values lie on no single grid"
      : `an ${d.kind === "bool" ? "boolean" : "integer"} dtype`;
    throw new Error(`formatTable('${requested}'): ${what}, not a plain float format`);
  }
  const info = finfo(d);
  const c = d.constants!;
  const m = d.mantissaBits;
  const emin = c.emin;
  const emax = c.maxExpField - d.bias;
  const one = 2 ** m;
  const allOnesExp = 2 ** d.exponentBits - 1;
  const problems: string[] = [];
  const enc = (x: number) => d.encode(Float32Array.of(x))[0];
  const dec = (code: number) => d.decode([code])[0];
  const kSub = Math.log2(info.smallestSubnormal);
  if (kSub !== emin - m) {
    problems.push(`smallest subnormal ${info.smallestSubnormal} is not 2^${emin - m}`);
  }
  if (info.max !== (1 + c.maxMant / one) * 2 ** emax) problems.push(`max ${info.max} disagrees`);
  if (dec(c.maxCode) !== info.max) problems.push(`decode(maxCode) = ${dec(c.maxCode)} != max`);

  const binades: Binade[] = [];
  for (let k = kSub; k <= emax; k++) {
    const subnormal = k < emin;
    const lo = 2 ** k;
    const top = k === emax;
    const hi = top ? info.max : 2 ** (k + 1);
    const expected = 2 ** ((subnormal ? emin : k) - m); // what the descriptor says
    // Measure: codes are consecutive and increasing within a binade, so the binade's values
    // are decode(codeLo) .. decode(codeTop); the spacing is decode(codeLo + 1) - decode(codeLo)
    // and must be the same across the whole binade.
    const codeLo = enc(lo);
    const codeTop = top ? c.maxCode : enc(hi) - 1;
    const first = dec(codeLo), last = dec(codeTop);
    const count = codeTop - codeLo + 1;
    // The smallest subnormal binade holds one value, and its gap reaches into the next one.
    // A top binade may hold one value too (e6m1fn: the next code is NaN); its spacing is then
    // that of the rounding grid there, which the loss check below measures.
    const spacing = count > 1 || !top ? dec(codeLo + 1) - first : expected;
    const where = `binade 2^${k}`;
    if (first !== lo) problems.push(`${where}: decode(encode(2^${k})) = ${first}`);
    if (spacing !== expected) {
      problems.push(`${where}: codec spacing ${spacing}, descriptor says ${expected}`);
    }
    if (last - first !== (count - 1) * spacing) {
      problems.push(`${where}: spacing not uniform (${count} values from ${first} to ${last})`);
    }
    if (count !== (top ? (hi - lo) / spacing + 1 : (hi - lo) / spacing)) {
      problems.push(`${where}: ${count} values, expected ${(hi - lo) / spacing}`);
    }
    // The loss threshold: x = lo, u just below half the spacing is lost, just above is kept.
    // delta is f32's own spacing at lo; when the format is coarser, lo + half +- delta are f32
    // values that the codec rounds once; when it is as fine as f32 here, the conversion of
    // the (exact, double) sum to f32 is the rounding.
    const half = spacing / 2;
    const delta = 2 ** (Math.max(k, -126) - 23);
    const [below, above] = half > delta ? [half - delta, half + delta] : [half / 2, 1.5 * half];
    if (enc(lo + below) !== codeLo) problems.push(`${where}: x + ${below} was not lost`);
    if (enc(lo + above) === codeLo) problems.push(`${where}: x + ${above} was lost`);
    const lossRatioLog2 = Math.log2(lo / half);
    if (!subnormal && lossRatioLog2 !== m + 1) {
      problems.push(`${where}: loss ratio 2^${lossRatioLog2}, expected 2^${m + 1}`);
    }
    binades.push({ k, lo, hi, hiIncluded: top, subnormal, spacing, count, lossRatioLog2 });
  }
  const nanCodes: [number, number] | null = d.nan === "ieee"
    ? [allOnesExp * one + 1, allOnesExp * one + one - 1]
    : d.nan === "fn"
    ? [c.nanCode, c.nanCode]
    : null;
  return Object.freeze({
    requested,
    name: d.name,
    dtype: d,
    info,
    emax,
    emin,
    infCode: c.infCode >= 0 ? c.infCode : null,
    nanCodes,
    lossRatioLog2: m + 1,
    binades: Object.freeze(binades),
    problems: Object.freeze(problems),
  });
}

// ---------------------------------------------------------------------------------------
// Text output

/** "2^k" for an exact power of two, else null. */
function pow2(x: number): string | null {
  const k = Math.log2(x);
  return Number.isInteger(k) ? `2^${k}` : null;
}

/** A short, exact-where-possible decimal. */
export function fmtNum(x: number): string {
  if (x === 0 || !Number.isFinite(x)) return String(x);
  const s = String(x);
  if (Number.isSafeInteger(x) && s.length <= 9) return s;
  if (!s.includes("e") && s.length <= 12) return s;
  return x.toExponential(4).replace(/\.?0+e/, "e").replace("e+", "e");
}

/** "448 = 1.75 × 2^8", "0.015625 = 2^-6". */
function fmtBoth(x: number): string {
  const p = pow2(x);
  if (p) return `${fmtNum(x)} = ${p}`;
  const k = Math.floor(Math.log2(x));
  return `${fmtNum(x)} = ${x / 2 ** k} × 2^${k}`;
}

function hex(code: number, bits: number): string {
  return "0x" + code.toString(16).toUpperCase().padStart(Math.ceil(bits / 4), "0");
}

/** Pads columns: each row an array of cells; `right` marks right-aligned columns. */
function columns(rows: string[][], right: boolean[], gap = "  "): string[] {
  const widths = rows[0].map((_, j) => Math.max(...rows.map((r) => r[j]?.length ?? 0)));
  return rows.map((r) =>
    r.map((cell, j) => (right[j] ? cell.padStart(widths[j]) : cell.padEnd(widths[j])))
      .join(gap).trimEnd()
  );
}

/** One line per format: the limits side by side. */
export function summaryTable(tables: readonly FormatTable[]): string {
  const rows = [[
    "format",
    "bits",
    "s/e/m",
    "bias",
    "max finite",
    "min normal",
    "min subnormal",
    "eps",
    "Inf",
    "NaN",
    "lost if |x|/|u| >",
  ]];
  for (const t of tables) {
    const d = t.dtype, f = t.info;
    rows.push([
      t.name,
      String(d.bits),
      `1/${d.exponentBits}/${d.mantissaBits}`,
      String(d.bias),
      fmtNum(f.max),
      pow2(f.smallestNormal)!,
      pow2(f.smallestSubnormal)!,
      pow2(f.eps)!,
      f.hasInf ? "yes" : "no",
      f.hasNaN ? "yes" : "no",
      `2^${t.lossRatioLog2}`,
    ]);
  }
  return columns(rows, [false, true, false, true, true, true, true, true, false, false, true])
    .join("\n");
}

/** Options of `renderTable`. */
export interface RenderOptions {
  /** Print every binade (default: all when there are at most 48, else a compact table). */
  all?: boolean;
  /** In a compact table, also show every binade whose k is a multiple of this (default 32). */
  every?: number;
}

/** Which binades a compact table shows: the ends, both sides of the normal boundary, k = 0
 * and every multiple of `every`. */
function shown(t: FormatTable, opts: RenderOptions): boolean[] {
  const n = t.binades.length;
  if (opts.all || n <= 48) return t.binades.map(() => true);
  const every = opts.every ?? 32;
  return t.binades.map((b, i) =>
    i < 3 || i >= n - 3 || b.k === t.emin - 1 || b.k === t.emin || b.k === t.emin + 1 ||
    b.k === 0 || b.k % every === 0
  );
}

/** The detailed text of one format: limits, codes, and the binade table. */
export function renderTable(t: FormatTable, opts: RenderOptions = {}): string {
  const d = t.dtype, f = t.info, m = d.mantissaBits;
  const out: string[] = [];
  const alias = t.requested !== t.name ? ` (as '${t.requested}')` : "";
  out.push(
    `${t.name}${alias}: ${d.bits} bits = 1 sign + ${d.exponentBits} exponent + ${m} mantissa, ` +
      `bias ${d.bias}`,
  );
  const nan = t.nanCodes === null
    ? "no"
    : t.nanCodes[0] === t.nanCodes[1]
    ? `yes (${hex(t.nanCodes[0], d.bits)} and its negative)`
    : `yes (${hex(t.nanCodes[0], d.bits)}..${hex(t.nanCodes[1], d.bits)} and negatives)`;
  const lines: [string, string][] = [
    ["max finite", `${fmtBoth(f.max)}  (code ${hex(t.dtype.constants!.maxCode, d.bits)})`],
    ["smallest normal", fmtBoth(f.smallestNormal)],
    ["smallest subnormal", fmtBoth(f.smallestSubnormal)],
    ["eps", `${fmtBoth(f.eps)}  (spacing at 1)`],
    ["Inf", t.infCode === null ? "no" : `yes (${hex(t.infCode, d.bits)})`],
    ["NaN", nan],
    [
      "update lost",
      `if |x|/|u| > 2^${t.lossRatioLog2} = ${2 ** t.lossRatioLog2}  ` +
      `(x at the lower bound 2^k of a normal binade)`,
    ],
  ];
  for (const [k, v] of lines) out.push(`  ${k.padEnd(19)} ${v}`);
  out.push("");

  const rows: string[][] = [[
    "binade",
    "",
    "interval",
    "spacing",
    "",
    "values",
    "lost if |x|/|u| >",
  ]];
  const show = shown(t, opts);
  const b = t.binades;
  for (let i = 0; i < b.length; i++) {
    if (!show[i]) {
      let j = i;
      while (j + 1 < b.length && !show[j + 1]) j++;
      const run = b.slice(i, j + 1);
      const sub = run.every((x) => x.subnormal);
      const what = sub
        ? `subnormal, spacing ${pow2(run[0].spacing)} throughout`
        : `spacing 2^(k-${m}), doubling with each`;
      rows.push([
        "⋮",
        "",
        `${run.length} binade${run.length > 1 ? "s" : ""}, 2^${run[0].k} .. 2^${run.at(-1)!.k}`,
        what,
        "",
        "",
        "",
      ]);
      i = j;
      continue;
    }
    const x = b[i];
    rows.push([
      `2^${x.k}`,
      x.subnormal ? "sub" : "",
      `[${fmtNum(x.lo)}, ${fmtNum(x.hi)}${x.hiIncluded ? "]" : ")"}`,
      pow2(x.spacing)!,
      `= ${fmtNum(x.spacing)}`,
      String(x.count),
      `2^${x.lossRatioLog2}`,
    ]);
  }
  // Continuation rows ("⋮") span the columns after the interval; print them unaligned.
  const aligned = columns(
    rows.map((r) => (r[0] === "⋮" ? r.map((c, j) => (j < 3 ? c : "")) : r)),
    [true, false, false, true, false, true, true],
  );
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    out.push("  " + (r[0] === "⋮" ? `${aligned[i]}: ${r[3]}` : aligned[i]));
  }
  const omitted = show.filter((s) => !s).length;
  out.push("");
  out.push(
    t.problems.length === 0
      ? `  checked with the codec in all ${b.length} binades: the spacing, uniform from end to ` +
        `end;\n  x + u lost just below half the spacing, kept just above`
      : `  CODEC CHECK FAILED:\n${t.problems.map((p) => `    ${p}`).join("\n")}`,
  );
  if (omitted > 0) out.push(`  (${omitted} binades not shown; --all shows every binade)`);
  return out.join("\n");
}

/** The convention of the loss threshold, printed once after the tables. */
export const LOSS_NOTE = `\
Update loss: x + u rounds back to x under round-to-nearest-even when |u| < spacing(x)/2
(at exactly half, ties go to the even neighbour). In the binade [2^k, 2^(k+1)) of a format
with m mantissa bits the spacing is 2^(k-m), so an update is lost when |u| < 2^(k-m-1).
The ratio column takes x at the binade's lower bound, x = 2^k: lost when |x|/|u| > 2^(m+1)
= 2/eps, e.g. bf16 (m = 7) above 2^8 = 256, f16 (m = 10) above 2^11 = 2048. Higher in the
binade x grows towards 2^(k+1) with the same spacing, so the ratio there rises towards
2^(m+2): above 2^(m+2) an update is lost anywhere in the binade. (An update that moves
x = 2^k towards zero meets the finer spacing below 2^k: lost above 2^(m+2).) In subnormal
binades the spacing is the smallest subnormal s, so the ratio is 2^(k+1)/s, lower.`;

// ---------------------------------------------------------------------------------------
// SVG chart

const COLORS = [...BASE_COLORS, "#17becf", "#7f7f7f", "#bcbd22"];
const DASHES = ["", "7 5", "2 4", "9 3 2 3"];

/** Lines of formats with the same mantissa bits coincide in the normal range: each later one
 * gets the next dash pattern so that both stay visible. */
function dashOf(tables: readonly FormatTable[], i: number): string {
  const m = tables[i].dtype.mantissaBits;
  const before = tables.slice(0, i).filter((t) => t.dtype.mantissaBits === m).length;
  return DASHES[(before + Math.floor(i / COLORS.length)) % DASHES.length];
}

/** A tick step (a power of two in binades) giving at most `maxTicks` ticks over `span`. */
function tickStep(span: number, maxTicks: number): number {
  let s = 1;
  while (span / s > maxTicks) s *= 2;
  return s;
}

/** `2^k` as SVG text with a raised exponent. */
function powLabel(k: number): string {
  return `2<tspan dy="-0.55em" font-size="75%">${k}</tspan>`;
}

/** A rectangle of the chart, and the log2 ranges it shows. */
interface Panel {
  x: number;
  y: number;
  w: number;
  h: number;
  xr: [number, number];
  yr: [number, number];
  title: string;
}

/** The range [lo, hi] widened to whole tick steps. */
function padRange(lo: number, hi: number, maxTicks: number): [number, number] {
  const step = tickStep(Math.max(hi - lo, 1), maxTicks);
  return [Math.floor(lo / step) * step, Math.ceil((hi + 1e-9) / step) * step];
}

/** The log2 spacings of a table's binades that overlap [x0, x1] (in log2 magnitude). */
function spacingsIn(t: FormatTable, x0: number, x1: number): number[] {
  return t.binades.filter((b) => b.k + 1 > x0 && b.k < x1).map((b) => Math.log2(b.spacing));
}

/** One format's step line: flat through the subnormals, then up one binade at a time. */
function stepPath(t: FormatTable, X: (v: number) => string, Y: (v: number) => string): string {
  let path = "";
  for (const b of t.binades) {
    path += `${path ? "L" : "M"}${X(b.k)} ${Y(Math.log2(b.spacing))}H${X(Math.log2(b.hi))}`;
  }
  return path;
}

function drawPanel(o: string[], tables: readonly FormatTable[], p: Panel, id: string): void {
  const [x0, x1] = p.xr, [y0, y1] = p.yr;
  const X = (v: number) => (p.x + ((v - x0) / (x1 - x0)) * p.w).toFixed(2);
  const Y = (v: number) => (p.y + p.h - ((v - y0) / (y1 - y0)) * p.h).toFixed(2);
  const xStep = tickStep(x1 - x0, 10), yStep = tickStep(y1 - y0, 10);
  o.push(
    `<clipPath id="${id}"><rect x="${p.x}" y="${p.y}" width="${p.w}" height="${p.h}"/></clipPath>`,
  );
  o.push(
    `<text x="${p.x + p.w / 2}" y="${p.y - 10}" text-anchor="middle" font-size="14" ` +
      `font-weight="bold">${esc(p.title)}</text>`,
  );
  o.push(`<g stroke="#e6e6e6" stroke-width="1">`);
  for (let v = Math.ceil(x0 / xStep) * xStep; v <= x1; v += xStep) {
    o.push(`<line x1="${X(v)}" y1="${p.y}" x2="${X(v)}" y2="${p.y + p.h}"/>`);
  }
  for (let v = Math.ceil(y0 / yStep) * yStep; v <= y1; v += yStep) {
    o.push(`<line x1="${p.x}" y1="${Y(v)}" x2="${p.x + p.w}" y2="${Y(v)}"/>`);
  }
  o.push(`</g>`);
  o.push(`<g fill="#333">`);
  for (let v = Math.ceil(x0 / xStep) * xStep; v <= x1; v += xStep) {
    o.push(`<text x="${X(v)}" y="${p.y + p.h + 22}" text-anchor="middle">${powLabel(v)}</text>`);
  }
  for (let v = Math.ceil(y0 / yStep) * yStep; v <= y1; v += yStep) {
    o.push(`<text x="${p.x - 8}" y="${Number(Y(v)) + 5}" text-anchor="end">${powLabel(v)}</text>`);
  }
  o.push(`</g>`);
  o.push(
    `<text x="${p.x + p.w / 2}" y="${p.y + p.h + 50}" text-anchor="middle" font-size="14">` +
      `magnitude |x|</text>`,
  );
  o.push(
    `<text transform="translate(${p.x - 58} ${p.y + p.h / 2}) rotate(-90)" ` +
      `text-anchor="middle" font-size="14">spacing of adjacent values (ulp)</text>`,
  );
  // Lines are clipped to the panel; the markers (drawn after the frame, unclipped so that
  // one on the edge stays whole) only where their point lies inside the panel.
  const inside = (x: number, y: number) => x >= x0 && x <= x1 && y >= y0 && y <= y1;
  const marks: string[] = [];
  o.push(`<g clip-path="url(#${id})">`);
  tables.forEach((t, i) => {
    const color = COLORS[i % COLORS.length];
    const dash = dashOf(tables, i);
    const first = t.binades[0], last = t.binades.at(-1)!;
    const sub = Math.log2(first.spacing), top = Math.log2(last.spacing);
    o.push(
      `<path d="${stepPath(t, X, Y)}" fill="none" stroke="${color}" stroke-width="2.2"` +
        `${dash ? ` stroke-dasharray="${dash}"` : ""}><title>${esc(t.name)}</title></path>`,
    );
    if (inside(first.k, sub)) {
      marks.push(`<circle cx="${X(first.k)}" cy="${Y(sub)}" r="4" fill="${color}"/>`);
    }
    if (inside(Math.log2(last.hi), top)) {
      marks.push(`<circle cx="${X(Math.log2(last.hi))}" cy="${Y(top)}" r="4" fill="${color}"/>`);
    }
    if (t.emin > first.k && inside(t.emin, sub)) {
      const y = Number(Y(sub));
      marks.push(
        `<line x1="${X(t.emin)}" y1="${y - 6}" x2="${X(t.emin)}" y2="${y + 6}" ` +
          `stroke="${color}" stroke-width="2"/>`,
      );
    }
  });
  o.push(`</g>`);
  o.push(
    `<rect x="${p.x}" y="${p.y}" width="${p.w}" height="${p.h}" fill="none" stroke="#333"/>`,
  );
  o.push(...marks);
}

/**
 * An SVG chart of spacing against magnitude (log2 on both axes): one step line per format
 * from its smallest subnormal to its max finite, a legend, and axes labelled in powers of
 * two. When the formats' ranges differ widely (f32 next to FP8), a second panel zooms in on
 * the narrow formats.
 *
 * @example
 * ```ts
 * import { formatSvg, formatTable } from "./formats.ts";
 * const svg = formatSvg([formatTable("e4m3"), formatTable("e5m2")]);
 * console.log(svg.startsWith("<svg"), svg.includes("e5m2")); // true true
 * ```
 */
export function formatSvg(tables: readonly FormatTable[]): string {
  const span = (t: FormatTable) => Math.log2(t.info.max) - t.binades[0].k;
  const lo = (ts: readonly FormatTable[]) => Math.min(...ts.map((t) => t.binades[0].k));
  const hi = (ts: readonly FormatTable[]) => Math.max(...ts.map((t) => Math.log2(t.info.max)));
  const xr = padRange(lo(tables) - 1, hi(tables), 10);
  const narrow = tables.filter((t) => span(t) <= 80);
  const zoom = narrow.length > 0 && narrow.length < tables.length &&
    hi(narrow) - lo(narrow) < (xr[1] - xr[0]) / 3;
  const size = 560, L = 100, gap = 130, T = 80, B = 80;
  const W = L + size + (zoom ? gap + size : 0) + 30, H = T + size + B + 50;
  const panels: Panel[] = [{
    x: L,
    y: T,
    w: size,
    h: size,
    xr,
    yr: padRange(
      Math.min(...tables.flatMap((t) => spacingsIn(t, xr[0], xr[1]))) - 1,
      Math.max(...tables.flatMap((t) => spacingsIn(t, xr[0], xr[1]))) + 1,
      10,
    ),
    title: zoom ? "full range" : "",
  }];
  if (zoom) {
    const zx = padRange(lo(narrow) - 1, hi(narrow) + 1, 10);
    const ys = narrow.flatMap((t) => spacingsIn(t, zx[0], zx[1]));
    panels.push({
      x: L + size + gap,
      y: T,
      w: size,
      h: size,
      xr: zx,
      yr: padRange(Math.min(...ys) - 1, Math.max(...ys) + 1, 10),
      title: `zoom on ${narrow.map((t) => t.name).join(", ")}`,
    });
  }
  const o: string[] = [];
  o.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" ` +
      `viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="13">`,
  );
  o.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  o.push(
    `<text x="${W / 2}" y="30" text-anchor="middle" font-size="18" font-weight="bold">` +
      `Spacing of representable values against magnitude (log-log)</text>`,
  );
  panels.forEach((p, i) => drawPanel(o, tables, p, `panel${i}`));
  // Legend in the first panel's top left corner, where no line goes (spacing < magnitude).
  const lx = L + 16, ly = T + 16, lh = 20;
  o.push(
    `<rect x="${lx - 8}" y="${ly - 8}" width="270" height="${tables.length * lh + 34}" ` +
      `fill="white" fill-opacity="0.92" stroke="#bbb"/>`,
  );
  tables.forEach((t, i) => {
    const color = COLORS[i % COLORS.length];
    const dash = dashOf(tables, i);
    const y = ly + i * lh + 6;
    o.push(
      `<line x1="${lx}" y1="${y}" x2="${lx + 28}" y2="${y}" stroke="${color}" stroke-width="3"` +
        `${dash ? ` stroke-dasharray="${dash}"` : ""}/>`,
    );
    o.push(
      `<text x="${lx + 36}" y="${y + 4}"><tspan font-weight="bold">${esc(t.name)}</tspan>` +
        ` max ${esc(fmtNum(t.info.max))}, eps ${powLabel(-t.dtype.mantissaBits)}</text>`,
    );
  });
  o.push(
    `<text x="${lx}" y="${ly + tables.length * lh + 14}" font-size="11" fill="#555">` +
      `dots: smallest subnormal, max finite; tick: smallest normal</text>`,
  );
  const notes = [
    "Each step is one binade [2^k, 2^(k+1)); the flat runs on the left are the subnormals.",
    "An update u to a value x is lost under round-to-nearest-even when |u| < spacing(x)/2.",
  ];
  notes.forEach((n, i) =>
    o.push(
      `<text x="${W / 2}" y="${H - 34 + i * 16}" text-anchor="middle" font-size="12" ` +
        `fill="#555">${esc(n)}</text>`,
    )
  );
  o.push(`</svg>`);
  return o.join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------
// Command line

const OPTIONS = {
  svg: { type: "string", help: "also write a chart of spacing against magnitude (SVG)" },
  all: { type: "boolean", help: "print every binade (default: a compact table past 48)" },
  every: { type: "string", help: "in a compact table, also show binades with k a multiple of N" },
  help: { type: "boolean", help: "show this help" },
} as const;

/** The help text. */
export function usage(): string {
  const opts = Object.entries(OPTIONS).map(([k, o]) =>
    `  --${
      (k + (o.type === "string" ? (k === "svg" ? " <path>" : " <N>") : "")).padEnd(14)
    } ${o.help}`
  );
  return [
    "Usage: deno run [--allow-write=.] examples/formats.ts [dtype ...] [options]",
    "",
    "Prints the range, smallest normal and subnormal, eps, Inf/NaN and the resolution per",
    "binade of each float format, and where updates get lost under round-to-nearest-even.",
    `Without dtypes: ${DEFAULT_FORMATS.join(" ")}.`,
    "",
    ...opts,
    "",
    `dtypes: ${DTYPE_FORMS}`,
  ].join("\n");
}

/** Where `main` writes: injectable so that tests capture it. */
export interface MainIO {
  log(s: string): void;
  error(s: string): void;
  writeTextFile(path: string, text: string): void;
  /** Whether `path` may be written (checked before any work); absent: assumed. */
  canWrite?(path: string): boolean;
}

const denoIO: MainIO = {
  log: (s) => console.log(s),
  error: (s) => console.error(s),
  writeTextFile: (path, text) => Deno.writeTextFileSync(path, text),
  canWrite: (path) => Deno.permissions.querySync({ name: "write", path }).state === "granted",
};

/** Runs the command line; returns the exit code (0 ok, 1 write or codec failure, 2 usage). */
export function main(args: readonly string[], io: MainIO = denoIO): number {
  const fail = (msg: string) => {
    io.error(`formats: ${msg}`);
    return 2;
  };
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      options: Object.fromEntries(Object.entries(OPTIONS).map(([k, o]) => [k, { type: o.type }])),
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    const msg = (e as Error).message;
    const hint = didYouMean(msg, Object.keys(OPTIONS));
    return fail(`${hint ? msg.split(". ")[0] : msg}${hint}; see --help`);
  }
  const v = parsed.values as { svg?: string; all?: boolean; every?: string; help?: boolean };
  if (v.help) {
    io.log(usage());
    return 0;
  }
  const every = v.every === undefined ? 32 : Number(v.every);
  if (!Number.isSafeInteger(every) || every < 1) {
    return fail(`--every must be an integer >= 1, got '${v.every}'`);
  }
  if (v.svg !== undefined && io.canWrite && !io.canWrite(v.svg)) {
    return fail(
      `no permission to write the chart (--svg) '${v.svg}'; run deno with ` +
        `--allow-write=${v.svg} (or a folder that contains it)`,
    );
  }
  const names = parsed.positionals.length > 0 ? parsed.positionals : DEFAULT_FORMATS;
  const tables: FormatTable[] = [];
  for (const name of names) {
    try {
      tables.push(formatTable(name));
    } catch (e) {
      const msg = (e as Error).message;
      const reason = msg.replace(/; valid forms: .*$/, "").replace(/^\w+\('[^']*'\): /, "");
      return fail(`bad dtype '${name}': ${reason}; valid forms: ${DTYPE_FORMS}`);
    }
  }
  io.log(summaryTable(tables));
  for (const t of tables) io.log("\n" + renderTable(t, { all: v.all, every }));
  io.log("\n" + LOSS_NOTE);
  let code = tables.some((t) => t.problems.length > 0) ? 1 : 0;
  if (v.svg !== undefined) {
    try {
      io.writeTextFile(v.svg, formatSvg(tables));
      io.log(`\nwrote ${v.svg}`);
    } catch (e) {
      io.error(`formats: cannot write ${v.svg}: ${(e as Error).message}`);
      code = 1;
    }
  }
  return code;
}

if (import.meta.main) Deno.exit(main(Deno.args));
