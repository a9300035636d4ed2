/**
 * Fused layer and RMS normalisation over the last dimension, forward and backward.
 *
 * Forward: one workgroup per row reduces the row in f32 in workgroup memory (layer norm in two
 * passes: the mean, then the mean squared deviation), saves the row's statistics (mean and
 * `rstd = 1/sqrt(var + eps)`, f32, one per row) for the backward pass, and writes
 * `y = (x - mean) * rstd * w + b` (RMS norm: `y = x * rstd * w`) rounded once to the output
 * dtype. An invocation owns whole output words; when a packed output's rows do not start on
 * word boundaries (bf16 rows of odd length, say), the row kernel only saves the statistics and
 * a second, word-owning kernel writes `y` from them. On a CPU adapter rows of whole quads take
 * the lane-row family instead (`laneRowsFor` in reduce.ts): one row an invocation, the passes
 * over the row vec4 loops in registers, no workgroup memory and no barriers (another order of
 * the f32 sums than the workgroup kernels).
 *
 * Backward, with `xhat = (x - mean) * rstd` and `gw = g * w`:
 * - layer norm: `dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat))`;
 * - RMS norm (`xhat = x * rstd`): `dx = rstd * (gw - xhat * mean(gw * xhat))`;
 * - `dw = sum over rows of g * xhat`, `db = sum over rows of g`: one invocation per word of
 *   columns loops over the rows in order, so the sums are deterministic.
 *
 * The kernels are programs of `gpu/program.ts`; `x`, `g`, `y` and the statistics larger than
 * one storage binding are bound as windows of whole rows (`w`, `b` and the `[C]` gradients
 * whole). The column sums take the rows in chunks that fit a window and one submission's
 * budget, in order, carrying the sums in f32 between dispatches: the same bits as one pass.
 *
 * References: Ba, Kiros & Hinton, "Layer Normalization" (2016); Zhang & Sennrich, "Root Mean
 * Square Layer Normalization" (2019).
 *
 * @module
 */

import { type DType, float32, isFloat, promoteTypes } from "../../dtypes/mod.ts";
import { ShapeError, ValueError } from "../../errors.ts";
import {
  currentRuntime,
  type Layout,
  layoutOf,
  type PooledBuffer,
  program,
} from "../../gpu/mod.ts";
import { attach } from "../../autograd/graph.ts";
import { fmtShape, Tensor } from "../core/tensor.ts";
import { zeros } from "./creation.ts";
import {
  LANE_ROWS,
  laneRowsFor,
  MAX_LOOP,
  quadLoads,
  quadStore,
  type RowProgram,
  vec4View,
  windowElems,
} from "./reduce.ts";
import type { CastPolicy } from "../core/context.ts";

/** Workgroup size of the row kernels (norms and losses). @internal */
/** Autocast's policy for the normalisations: mean and variance need range, so f32. */
export const NORM_POLICY = { layerNorm: "f32", rmsNorm: "f32" } as const satisfies Record<
  string,
  CastPolicy
>;

export const WG = 64;

/**
 * Estimated work per element, in nanoseconds of a CPU adapter (a run's `cost`), measured on
 * lavapipe: a row pass (statistics and output), the word-owning output pass, and the column
 * sums of `dw`, `db` (which the rows are chunked by, as the builder cannot cut a column).
 */
const COST = { rows: 15, apply: 5, cols: 10 };

/** Which normalisation. */
type Norm = "ln" | "rms";

/** The WGSL of one row kernel: stats code, value expression, saved statistics. */
interface Spec {
  /** Tensor inputs (bindings), read with the builder's `ld_<name>(i)`. */
  readonly ins: readonly string[];
  /** f32 bindings read by row with `ld_<name>(row)` (`mu`, `rs` saved by the forward pass). */
  readonly saved: readonly string[];
  /** WGSL in `main` that sets the private `c0`, `c1` of the row (`base`, `li`, `cf` in scope). */
  readonly stats: string;
  /** Body of `fn val(i: u32, row: u32, col: u32) -> f32`, using `c0`, `c1`. */
  readonly val: string;
  /** The same over quads (`quadSpec`): contiguous rows of whole quads take it. */
  readonly quad?: { readonly stats: string; readonly val: string };
  /** The same for the lane-row family (`laneBody`): one row an invocation. */
  readonly lane?: { readonly stats: string; readonly val: string };
}

// ---- WGSL --------------------------------------------------------------------------------------

/** Workgroup tree sum of vec2<f32> over WG lanes (needs `var<workgroup> sv: array<vec2<f32>, WG>`). @internal */
export const WGSL_SUM = `
fn wsum(li: u32, v: vec2<f32>) -> vec2<f32> {
  sv[li] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (li < s) { sv[li] = sv[li] + sv[li + s]; }
    workgroupBarrier();
  }
  let r = sv[0];
  workgroupBarrier();
  return r;
}
`;

/** `for` over the row's columns `j` strided by the workgroup, `i` the flat index. */
function rowLoop(body: string): string {
  return `  for (var j = li; j < u.C; j = j + ${WG}u) { let i = base + j; ${body} }\n`;
}

function spec(norm: Norm, pass: "fwd" | "bwd", hasW: boolean, hasB: boolean): Spec {
  return {
    ...spec1(norm, pass, hasW, hasB),
    quad: quadSpec(norm, pass, hasW, hasB),
    lane: quadSpec(norm, pass, hasW, hasB, true),
  };
}

function spec1(norm: Norm, pass: "fwd" | "bwd", hasW: boolean, hasB: boolean): Spec {
  const w = hasW ? " * ld_w(col)" : "";
  if (pass === "fwd") {
    if (norm === "ln") {
      return {
        ins: ["x", ...(hasW ? ["w"] : []), ...(hasB ? ["b"] : [])],
        saved: [],
        stats: `  var t = 0.0;
${rowLoop("t = t + ld_x(i);")}  c0 = wsum(li, vec2<f32>(t, 0.0)).x / cf;
  var q = 0.0;
${rowLoop("let d = ld_x(i) - c0; q = q + d * d;")}  c1 = inverseSqrt(wsum(li, vec2<f32>(q, 0.0)).x / cf + u.eps);\n`,
        val: `  return (ld_x(i) - c0) * c1${w}${hasB ? " + ld_b(col)" : ""};`,
      };
    }
    return {
      ins: ["x", ...(hasW ? ["w"] : [])],
      saved: [],
      stats: `  var q = 0.0;
${
        rowLoop("let v = ld_x(i); q = q + v * v;")
      }  c1 = inverseSqrt(wsum(li, vec2<f32>(q, 0.0)).x / cf + u.eps);\n`,
      val: `  return ld_x(i) * c1${w};`,
    };
  }
  const saved = norm === "ln" ? ["mu", "rs"] : ["rs"];
  const xh = norm === "ln" ? "(ld_x(i) - ld_mu(row)) * ld_rs(row)" : "ld_x(i) * ld_rs(row)";
  return {
    ins: ["x", "g", ...(hasW ? ["w"] : [])],
    saved,
    stats: `  var t = vec2<f32>(0.0, 0.0);
${
      rowLoop(`let col = j; let xh = ${xh}; let gw = ld_g(i)${w}; t = t + vec2<f32>(gw, gw * xh);`)
    }  let m = wsum(li, t) / cf;
  c0 = m.x;
  c1 = m.y;\n`,
    val: `  let xh = ${xh};
  let gw = ld_g(i)${w};
  return ld_rs(row) * (gw${norm === "ln" ? " - c0" : ""} - xh * c1);`,
  };
}

/**
 * How a row kernel runs: `fused` computes the statistics and writes the output (a packed
 * output a whole word at a time, which needs rows of whole words), `stats` only saves the
 * statistics, `apply` writes a packed output a word per invocation from saved statistics.
 */
type Mode = "fused" | "stats" | "apply";

/**
 * The body of a row kernel. Bindings: the inputs `s.ins`, the saved statistics `s.saved` and
 * `statIn` (f32, by row), the output `out` (not in `stats` mode), the statistics `statOut` it
 * saves (f32, by row).
 */
function rowBody(
  s: Spec,
  outL: Layout,
  mode: Mode,
  statOut: readonly string[],
  statIn: readonly string[],
): string {
  const lanes = outL.lanes;
  let body: string;
  if (mode === "apply") {
    const load = statIn.map((n, k) => `c${k + 2 - statIn.length} = ld_${n}(row);`).join(" ");
    // only packed outputs take this path (a one-lane output is always written fused)
    // the lanes of the word unrolled (constant vector indices), each while inside the output
    const lane = (k: number) => {
      const e = `{ let i = i0 + ${k}u; let row = i / u.C; let col = i - row * u.C; ${load} ` +
        `v.${"xyzw"[k]} = val(i, row, col); }`;
      return k === 0 ? `  ${e}\n` : `  if (i0 + ${k}u < u.n) ${e}\n`;
    };
    body = `  let w = wg * ${WG}u + li;
  let i0 = w * ${lanes}u;
  if (i0 >= u.n) { return; }
  var v = vec4<f32>(0.0);
${Array.from({ length: lanes }, (_, k) => lane(k)).join("")}  st_out(w, v, vec4<u32>(0u));\n`;
  } else {
    let store = "";
    if (mode === "fused") {
      store = lanes === 1
        ? rowLoop("st_out(i, vec4<f32>(val(i, row, j)), vec4<u32>(0u));")
        : `  for (var j = li; j < u.C / ${lanes}u; j = j + ${WG}u) {
    let col = j * ${lanes}u;
    st_out(base / ${lanes}u + j, vec4<f32>(${
          [0, 1, 2, 3].map((k) => (k < lanes ? `val(base + col + ${k}u, row, col + ${k}u)` : "0.0"))
            .join(", ")
        }), vec4<u32>(0u));
  }\n`;
    }
    const save = statOut.map((n, k) => `put_${n}(row, bitcast<u32>(c${k + 2 - statOut.length}));`)
      .join(" ");
    body = `  let row = wg;
  let base = row * u.C;
  let cf = f32(u.C);
${s.stats}${save ? `  if (li == 0u) { ${save} }\n` : ""}${store}`;
  }
  return `var<workgroup> sv: array<vec2<f32>, ${WG}>;
var<private> c0: f32;
var<private> c1: f32;
${WGSL_SUM}
fn val(i: u32, row: u32, col: u32) -> f32 {
${s.val}
}
fn kernel(wg: u32, lid: vec3u, li: u32) {
${body}}
`;
}

/**
 * Rows of a fused row kernel's workgroup on rows of whole quads (4 elements): 16, with 16
 * invocations a row (lavapipe, layer norm over rows of 512: see BENCHMARKS.md).
 */
const QROWS = 16;

/** Tree sums of this row's 64 lane partials, held 4 to an invocation (`a`, `b`), as `wsum`'s. */
const WGSL_QSUM = `
var<workgroup> sa: array<vec4<f32>, ${QROWS * 16}>;
var<workgroup> sb: array<vec4<f32>, ${QROWS * 16}>;
fn qsum2(li: u32, k: u32, a: vec4<f32>, b: vec4<f32>) -> vec2<f32> {
  sa[li] = a;
  sb[li] = b;
  workgroupBarrier();
  for (var s = 8u; s > 0u; s = s >> 1u) {
    if (k < s) {
      sa[li] = sa[li] + sa[li + s];
      sb[li] = sb[li] + sb[li + s];
    }
    workgroupBarrier();
  }
  let x = sa[li - k];
  let y = sb[li - k];
  workgroupBarrier();
  return vec2<f32>((x.x + x.z) + (x.y + x.w), (y.x + y.z) + (y.y + y.w));
}
fn qsum(li: u32, k: u32, a: vec4<f32>) -> f32 { return qsum2(li, k, a, vec4<f32>(0.0)).x; }
`;

/**
 * The statistics and value of `spec()`'s kernels over quads: invocation `k` of a row holds the
 * partials of lanes `4k..4k+3` of the one-row kernel in vec4s (the same terms in the same
 * order), `val(x, g, w, b)` the value of one element from its operands' values.
 */
function quadSpec(
  norm: Norm,
  pass: "fwd" | "bwd",
  hasW: boolean,
  hasB: boolean,
  lanes = false,
) {
  const loop = (body: string) =>
    lanes
      ? `  for (var j = 0u; j < nq; j = j + 1u) { let at = base + 4u * j; let cq = 4u * j; ${body} }\n`
      : `  for (var j = k; j < nq; j = j + 16u) { if (ok) { let at = base + 4u * j; let cq = 4u * j; ${body} } }\n`;
  // the row's sum of 4 partials: a workgroup tree (quads), or the invocation's own (lanes)
  const qsum = (a: string) => (lanes ? `hsum(${a})` : `qsum(li, k, ${a})`);
  const qsum2 = (a: string, b: string) =>
    lanes ? `vec2<f32>(hsum(${a}), hsum(${b}))` : `qsum2(li, k, ${a}, ${b})`;
  const x = "ld4_x(at, 4u)", w = hasW ? " * ld4_w(cq, 4u)" : "";
  if (pass === "fwd") {
    const ws = hasW ? " * w" : "";
    if (norm === "ln") {
      return {
        stats: `  var t = vec4<f32>(0.0);
${loop(`t = t + ${x};`)}  c0 = ${qsum("t")} / cf;
  var q = vec4<f32>(0.0);
${loop(`let d = ${x} - c0; q = q + d * d;`)}  c1 = inverseSqrt(${qsum("q")} / cf + u.eps);\n`,
        val: `(x - c0) * c1${ws}${hasB ? " + b" : ""}`,
      };
    }
    return {
      stats: `  var q = vec4<f32>(0.0);
${loop(`let v = ${x}; q = q + v * v;`)}  c1 = inverseSqrt(${qsum("q")} / cf + u.eps);\n`,
      val: `x * c1${ws}`,
    };
  }
  const xh = (v: string) => (norm === "ln" ? `(${v} - mu) * rs` : `${v} * rs`);
  return {
    stats: `  var ta = vec4<f32>(0.0);
  var tb = vec4<f32>(0.0);
${
      loop(`let xh = ${xh(x)}; let gw = ld4_g(at, 4u)${w}; ta = ta + gw; tb = tb + gw * xh;`)
    }  let m = ${qsum2("ta", "tb")} / cf;
  c0 = m.x;
  c1 = m.y;\n`,
    val: `rs * (g${hasW ? " * w" : ""}${norm === "ln" ? " - c0" : ""} - ${xh("x")} * c1)`,
  };
}

/**
 * The fused row kernel over contiguous rows of whole quads, `QROWS` rows a workgroup: the
 * statistics of `quadSpec`, the saved statistics, the output stored 4 elements at a time (one
 * vec4 for one-word outputs). Same bits as `rowBody`'s fused kernel.
 */
function quadBody(
  q: { stats: string; val: string },
  s: Spec,
  outL: Layout,
  vec4Out: boolean,
  statOut: readonly string[],
): string {
  const has = (n: string) => s.ins.includes(n);
  const ld = (n: string, at: string) => (has(n) ? `ld4_${n}(${at}, 4u)` : "vec4<f32>(0.0)");
  // the saved statistics of the row: locals of the kernel, privates of val
  const saved = s.saved.map((n) => `  let ${n} = ld_${n}(srow);\n  p_${n} = ${n};\n`).join("");
  const save = statOut.map((n, k) => `put_${n}(row, bitcast<u32>(c${k + 2 - statOut.length}));`)
    .join(" ");
  const lanes = outL.lanes;
  const store = quadStore(vec4Out, lanes);
  const call = (c: string) => `val(x4.${c}, g4.${c}, w4.${c}, b4.${c})`;
  return `var<private> c0: f32;
var<private> c1: f32;
${WGSL_QSUM}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let k = li % 16u;
  let row = wg * ${QROWS}u + li / 16u;
  let ok = row < u.rows;
  let srow = min(row, u.rows - 1u);
  let base = row * u.C;
  let nq = u.C / 4u;
  let cf = f32(u.C);
${saved}${q.stats}${
    save ? `  if (k == 0u && ok) { ${save} }\n` : ""
  }  for (var j = k; j < nq; j = j + 16u) {
    if (ok) {
      let at = base + 4u * j;
      let cq = 4u * j;
      let x4 = ${ld("x", "at")};
      let g4 = ${ld("g", "at")};
      let w4 = ${ld("w", "cq")};
      let b4 = ${ld("b", "cq")};
      let v = vec4<f32>(${call("x")}, ${call("y")}, ${call("z")}, ${call("w")});
      ${store}
    }
  }
}
${valFn(q.val, s.saved)}`;
}

/**
 * The fused row kernel of the lane-row family (CPU adapters, `laneRowsFor`): invocation `li`
 * owns row `wg * LANE_ROWS + li` of whole quads and runs the statistics of `quadSpec(...,
 * true)` (vec4 partials of the row in registers, summed at the end) and the output, a quad at
 * a time; no workgroup memory, no barriers. The sums are taken in another order than
 * `quadBody`'s.
 */
function laneBody(
  q: { stats: string; val: string },
  s: Spec,
  outL: Layout,
  vec4Out: boolean,
  statOut: readonly string[],
  f32q: readonly boolean[],
): string {
  const has = (n: string) => s.ins.includes(n);
  const ld = (n: string, at: string) => (has(n) ? `ld4_${n}(${at}, 4u)` : "vec4<f32>(0.0)");
  const saved = s.saved.map((n) => `  let ${n} = ld_${n}(row);\n  p_${n} = ${n};\n`).join("");
  const save = statOut.map((n, k) => `put_${n}(row, bitcast<u32>(c${k + 2 - statOut.length}));`)
    .join(" ");
  const store = quadStore(vec4Out, outL.lanes);
  const call = (c: string) => `val(x4.${c}, g4.${c}, w4.${c}, b4.${c})`;
  const main = `${saved}${q.stats}${
    save ? `  ${save}\n` : ""
  }  for (var j = 0u; j < nq; j = j + 1u) {
    let at = base + 4u * j;
    let cq = 4u * j;
    let x4 = ${ld("x", "at")};
    let g4 = ${ld("g", "at")};
    let w4 = ${ld("w", "cq")};
    let b4 = ${ld("b", "cq")};
    let v = vec4<f32>(${call("x")}, ${call("y")}, ${call("z")}, ${call("w")});
    ${store}
  }\n`;
  const l = quadLoads(s.ins.map((name, k) => ({ name, f32: f32q[k] })), main);
  return `var<private> c0: f32;
var<private> c1: f32;
fn hsum(a: vec4<f32>) -> f32 { return (a.x + a.z) + (a.y + a.w); }
${l.helpers}fn kernel(wg: u32, lid: vec3u, li: u32) {
  let row = wg * ${LANE_ROWS}u + li;
  if (row >= u.rows) { return; }
  let base = row * u.C;
  let nq = u.C / 4u;
  let cf = f32(u.C);
${l.body}}
${valFn(q.val, s.saved)}`;
}

/** `fn val` of `quadBody`: the saved statistics it reads are privates the kernel sets. */
function valFn(val: string, saved: readonly string[]): string {
  const priv = saved.map((n) => `var<private> p_${n}: f32;\n`).join("");
  let v = val;
  for (const n of saved) v = v.replace(new RegExp(`\\b${n}\\b`, "g"), `p_${n}`);
  return `${priv}fn val(x: f32, g: f32, w: f32, b: f32) -> f32 { return ${v}; }\n`;
}

/**
 * `dw = sum_r g * xhat`, `db = sum_r g`: one invocation per group of `G` columns (the widest
 * packing of the two outputs), looping over rows `r0..r1` in order. `carry`: the sums go on
 * from (`first` = 0) and are left in (`last` = 0) the f32 buffers `cw` and `cb`, so that rows
 * can be taken in several dispatches with the same result.
 */
function colBody(norm: Norm, outs: readonly Layout[], which: string[], carry: boolean): string {
  const G = Math.max(...outs.map((l) => l.lanes));
  let stores = "";
  outs.forEach((l, k) => {
    const out = `o${which[k]}`, acc = `s_${which[k]}`;
    // written out, as the sums (constant indices); a word past C is not stored, as the loop
    // broke there, and its lanes past C stay 0
    for (let w = 0; w < G / l.lanes; w++) {
      const c = `c0 + ${w * l.lanes}u`;
      stores += l.lanes === 1
        ? `  if (${c} < u.C) { st_${out}(${c}, vec4<f32>(${acc}[${w}]), vec4<u32>(0u)); }\n`
        : `  if (${c} < u.C) {
    var v = vec4<f32>(0.0);
${
          Array.from(
            { length: l.lanes },
            (_, j) => `    if (${c} + ${j}u < u.C) { v[${j}] = ${acc}[${w * l.lanes + j}]; }\n`,
          ).join("")
        }    st_${out}((${c}) / ${l.lanes}u, v, vec4<u32>(0u));
  }\n`;
    }
  });
  const xh = norm === "ln" ? "(ld_x(i) - ld_mu(r)) * ld_rs(r)" : "ld_x(i) * ld_rs(r)";
  // the G columns of an invocation written out (constant indices: on llvmpipe a private array
  // indexed by a loop variable lives in memory); a column past C skips, as the loop broke there
  const each = (s: string) =>
    Array.from(
      { length: G },
      (_, k) =>
        `  if (c0 + ${k}u < u.C) {\n    let c = c0 + ${k}u;\n    ${
          s.replaceAll("[k]", `[${k}]`)
        }\n  }\n`,
    ).join("");
  const resume = carry
    ? `  if (u.first == 0u) {
${each("s_w[k] = ld_cw(c); s_b[k] = ld_cb(c);")}  }\n`
    : "";
  const leave = carry
    ? `  if (u.last == 0u) {
${each("put_cw(c, bitcast<u32>(s_w[k])); put_cb(c, bitcast<u32>(s_b[k]));")}    return;
  }\n`
    : "";
  return `fn kernel(wg: u32, lid: vec3u, li: u32) {
  let c0 = (wg * ${WG}u + li) * ${G}u;
  if (c0 >= u.C) { return; }
  var s_w: array<f32, ${G}>;
  var s_b: array<f32, ${G}>;
${resume}  for (var r = u.r0; r < u.rows; r = r + 1u) {
${
    each(`let i = r * u.C + c; let g = ld_g(i); s_w[k] = s_w[k] + g * ${xh}; s_b[k] = s_b[k] + g;`)
  }  }
${leave}${stores}}
`;
}

// ---- dispatch ----------------------------------------------------------------------------------

/** Uniform fields of the row kernels: rows, columns, eps, elements. */
const ROW_UNIFORMS = [
  { name: "rows", type: "u32" },
  { name: "C", type: "u32" },
  { name: "eps", type: "f32" },
  { name: "n", type: "u32" },
] as const;

const R = "read" as const, RW = "read_write" as const;

/**
 * Runs a row op: one fused dispatch, or (a packed output whose rows do not own whole words)
 * a statistics dispatch and a word-owning dispatch. `saved` are the forward statistics the
 * backward pass reads; `save` names the statistics the forward pass writes (into new f32
 * tensors of `rows` elements, returned). Row-sized operands are bound by windows of rows.
 */
function runRows(
  label: string,
  s: Spec,
  tensors: readonly Tensor[],
  saved: readonly Tensor[],
  save: readonly string[],
  outShape: readonly number[],
  outDt: DType,
  rows: number,
  C: number,
  eps: number,
): { out: Tensor; stats: Tensor[] } {
  const rt = currentRuntime();
  const bufs = tensors.map((t) => t.buffer(`${label}()`));
  const sbufs = saved.map((t) => t.buffer(`${label}()`));
  const out = Tensor.empty(outShape, outDt);
  const stats = save.map(() => Tensor.empty([rows], float32, "scratch"));
  if (rows === 0 || C === 0) return { out, stats };
  const f32 = layoutOf(float32, rt);
  const outL = layoutOf(outDt, rt);
  const u = { rows, C, eps, n: rows * C };
  // the inputs named in s.ins ([x, w, b] or [x, g, w]): x and g are [rows, C], w and b [C]
  const inputs = s.ins.map((name, k) => ({ name, type: layoutOf(tensors[k].dt, rt), access: R }));
  const byRow = new Set(["x", "g", "out"]);
  const buffers: Record<string, PooledBuffer> = { out: out.buffer(label) };
  s.ins.forEach((name, k) => (buffers[name] = bufs[k]));
  s.saved.forEach((name, k) => (buffers[name] = sbufs[k]));
  /** The ranges of `names` for workgroups that own rows `rowsOf(g0, g1)`. */
  const rangesFor = (names: readonly string[], rowsOf: (g0: number, g1: number) => number[]) => {
    const r: Record<string, (g0: number, g1: number) => [number, number]> = {};
    for (const name of names) {
      if (name === "w" || name === "b") continue; // [C]: bound whole
      r[name] = (g0, g1) => {
        const [r0, r1] = rowsOf(g0, g1);
        return byRow.has(name) ? [r0 * C, r1 * C] : [r0, r1]; // [rows, C] or f32 by row
      };
    }
    return r;
  };
  const rowOwn = (g0: number, g1: number) => [g0, g1];
  const key = `norm|${label}|${s.ins.join(",")}`;
  // contiguous rows of whole quads, QROWS of them within half a window of each row operand
  const fits = [...tensors.map((t) => t.dt), outDt].every((d) =>
    QROWS * C <= windowElems(rt, layoutOf(d, rt)) / 2
  );
  const laneFits = [...tensors.map((t) => t.dt), outDt].every((d) =>
    LANE_ROWS * C <= windowElems(rt, layoutOf(d, rt)) / 2
  );
  // the lane-row and quad families' program; one-word inputs and output viewed as vec4
  const rowProgram: RowProgram<{ out: Tensor; stats: Tensor[] }> = (tag, rowsPer, wgSize, body) => {
    for (const [k, name] of save.entries()) buffers[name] = stats[k].buffer(label);
    const names = [...s.ins, ...s.saved, "out", ...save];
    program(rt, `${key}|${tag}|${save.length}`, {
      label,
      bindings: [
        ...inputs.map((b) => ({ ...b, vec4: vec4View(b.type) })),
        ...s.saved.map((name) => ({ name, type: f32, access: R })),
        { name: "out", type: outL, access: RW, vec4: vec4View(outL) },
        ...save.map((name) => ({ name, type: f32, access: RW })),
      ],
      uniforms: ROW_UNIFORMS,
      workgroupSize: wgSize,
    }, () => body(vec4View(outL))).run({
      buffers,
      uniforms: u,
      groups: Math.ceil(rows / rowsPer),
      cost: rows * C * COST.rows,
      ranges: rangesFor(names, (g0, g1) => [g0 * rowsPer, Math.min(rows, g1 * rowsPer)]),
    });
    return { out, stats };
  };
  if (s.lane && laneFits && laneRowsFor(rt, C)) {
    // the lane-row family: LANE_ROWS rows a workgroup, one an invocation
    const f32q = tensors.map((t) => t.dt.name === "f32");
    return rowProgram(
      "lane",
      LANE_ROWS,
      LANE_ROWS,
      (v) => laneBody(s.lane!, s, outL, v, save, f32q),
    );
  }
  if (s.quad && C % 4 === 0 && fits) {
    // contiguous rows of whole quads: QROWS rows a workgroup, 4 elements an invocation
    return rowProgram("quad", QROWS, QROWS * 16, (v) => quadBody(s.quad!, s, outL, v, save));
  }
  if (outL.lanes === 1 || C % outL.lanes === 0) {
    for (const [k, name] of save.entries()) buffers[name] = stats[k].buffer(label);
    const names = [...s.ins, ...s.saved, "out", ...save];
    program(rt, `${key}|fused|${save.length}`, {
      label,
      bindings: [
        ...inputs,
        ...s.saved.map((name) => ({ name, type: f32, access: R })),
        { name: "out", type: outL, access: RW },
        ...save.map((name) => ({ name, type: f32, access: RW })),
      ],
      uniforms: ROW_UNIFORMS,
      workgroupSize: WG,
    }, () => rowBody(s, outL, "fused", save, [])).run({
      buffers,
      uniforms: u,
      groups: rows,
      cost: rows * C * COST.rows,
      ranges: rangesFor(names, rowOwn),
    });
    return { out, stats };
  }
  // statistics first (saved, or temporaries of the backward pass), then the output by words
  const tmp = save.length > 0 ? stats : [0, 1].map(() => Tensor.empty([rows], float32, "scratch"));
  const names = save.length > 0 ? save : ["t0", "t1"];
  names.forEach((name, k) => (buffers[name] = tmp[k].buffer(label)));
  program(rt, `${key}|stats|${names.length}`, {
    label,
    bindings: [
      ...inputs,
      ...s.saved.map((name) => ({ name, type: f32, access: R })),
      ...names.map((name) => ({ name, type: f32, access: RW })),
    ],
    uniforms: ROW_UNIFORMS,
    workgroupSize: WG,
  }, () => rowBody(s, outL, "stats", names, [])).run({
    buffers,
    uniforms: u,
    groups: rows,
    cost: rows * C * COST.rows,
    ranges: rangesFor([...s.ins, ...s.saved, ...names], rowOwn),
  });
  // a workgroup writes WG words of the output: elements [e0, e1), rows of those
  const n = rows * C, per = WG * outL.lanes;
  const elems = (g0: number, g1: number) => [g0 * per, Math.min(n, g1 * per)];
  const rowsOf = (g0: number, g1: number) => {
    const [e0, e1] = elems(g0, g1);
    return e1 <= e0 ? [0, 0] : [Math.floor(e0 / C), Math.floor((e1 - 1) / C) + 1];
  };
  const ranges = rangesFor([...s.ins, ...s.saved, ...names], rowsOf);
  for (const name of [...s.ins, "out"]) {
    if (byRow.has(name)) ranges[name] = (g0, g1) => elems(g0, g1) as [number, number];
  }
  program(rt, `${key}|apply|${names.length}`, {
    label,
    bindings: [
      ...inputs,
      ...[...s.saved, ...names].map((name) => ({ name, type: f32, access: R })),
      { name: "out", type: outL, access: RW },
    ],
    uniforms: ROW_UNIFORMS,
    workgroupSize: WG,
  }, () => rowBody(s, outL, "apply", [], names)).run({
    buffers,
    uniforms: u,
    groups: Math.ceil(Math.ceil(n / outL.lanes) / WG),
    cost: n * COST.apply,
    ranges,
  });
  if (tmp !== stats) { for (const t of tmp) t.dispose(); }
  return { out, stats };
}

/**
 * `dw` and `db` (either may be skipped) of a normalisation. When `x` or `g` is larger than
 * one binding, the work passes one submission's budget (`maxBatchCost`) or the loop over rows
 * passes llvmpipe's cap on loop iterations (`MAX_LOOP`), the rows are taken in chunks that
 * fit, in order, the column sums carried in f32 from one chunk to the
 * next (the same sums as one pass).
 */
function colGrads(
  norm: Norm,
  x: Tensor,
  g: Tensor,
  saved: readonly Tensor[],
  outs: { which: "w" | "b"; dt: DType; shape: readonly number[] }[],
  rows: number,
  C: number,
): Tensor[] {
  if (rows === 0) return outs.map((o) => zeros(o.shape, { dtype: o.dt })); // empty sums
  const rt = currentRuntime();
  const res = outs.map((o) => Tensor.empty(o.shape, o.dt));
  if (outs.length === 0 || C === 0) return res;
  const f32 = layoutOf(float32, rt);
  const xL = layoutOf(x.dt, rt), gL = layoutOf(g.dt, rt);
  const ols = outs.map((o) => layoutOf(o.dt, rt));
  const which = outs.map((o) => o.which);
  const G = Math.max(...ols.map((l) => l.lanes));
  const savedNames = norm === "ln" ? ["mu", "rs"] : ["rs"];
  const label = `${norm === "ln" ? "layerNorm" : "rmsNorm"}_bwd_cols`;
  const op = "norm backward";
  const big = [x, g].some((t) => Math.ceil(t.buffer(op).bytes / 4) * 4 > rt.maxBindingBytes);
  // rows per dispatch: all, or as many as a window of x, g and the statistics surely holds
  // and one submission's budget of work allows
  // and one invocation's loop (rows times the G columns) may take (MAX_LOOP, llvmpipe's cap)
  let chunk = Math.max(1, Math.floor(rt.maxBatchCost / (C * COST.cols)));
  chunk = Math.min(chunk, Math.floor(MAX_LOOP / (G + 2)));
  if (big) {
    const fit = Math.floor(Math.min(windowElems(rt, xL), windowElems(rt, gL)) / C);
    chunk = Math.max(1, Math.min(chunk, fit, windowElems(rt, f32)));
  }
  chunk = Math.min(chunk, rows);
  const carry = chunk < rows;
  const cw = carry ? Tensor.empty([C], float32, "scratch") : null;
  const cb = carry ? Tensor.empty([C], float32, "scratch") : null;
  const buffers: Record<string, PooledBuffer> = { x: x.buffer(op), g: g.buffer(op) };
  savedNames.forEach((name, k) => (buffers[name] = saved[k].buffer(op)));
  which.forEach((w, k) => (buffers[`o${w}`] = res[k].buffer(op)));
  if (cw && cb) {
    buffers.cw = cw.buffer(op);
    buffers.cb = cb.buffer(op);
  }
  const prog = program(rt, `norm|${norm}_bwd_cols|${which}|${carry}`, {
    label,
    bindings: [
      { name: "x", type: xL, access: R },
      { name: "g", type: gL, access: R },
      ...savedNames.map((name) => ({ name, type: f32, access: R })),
      ...which.map((w, k) => ({ name: `o${w}`, type: ols[k], access: RW })),
      ...(carry ? ["cw", "cb"].map((name) => ({ name, type: f32, access: RW })) : []),
    ],
    uniforms: [
      { name: "rows", type: "u32" },
      { name: "C", type: "u32" },
      { name: "r0", type: "u32" },
      { name: "first", type: "u32" },
      { name: "last", type: "u32" },
    ],
    workgroupSize: WG,
  }, () => colBody(norm, ols, which, carry));
  const per = WG * G; // columns of one workgroup
  const cols = (g0: number, g1: number): [number, number] => [g0 * per, Math.min(C, g1 * per)];
  const groups = Math.ceil(Math.ceil(C / G) / WG);
  for (let r0 = 0; r0 < rows; r0 += chunk) {
    const r1 = Math.min(rows, r0 + chunk);
    const byRow = (g0: number, g1: number): [number, number] => {
      const [c0, c1] = cols(g0, g1);
      return [r0 * C + c0, (r1 - 1) * C + c1];
    };
    const ranges: Record<string, (g0: number, g1: number) => [number, number]> = {
      x: byRow,
      g: byRow,
      cw: cols,
      cb: cols,
    };
    for (const name of savedNames) ranges[name] = () => [r0, r1];
    for (const w of which) ranges[`o${w}`] = cols;
    prog.run({
      buffers,
      uniforms: { rows: r1, C, r0, first: r0 === 0 ? 1 : 0, last: r1 === rows ? 1 : 0 },
      groups,
      cost: (r1 - r0) * C * COST.cols,
      ranges,
    });
  }
  cw?.dispose();
  cb?.dispose();
  return res;
}

// ---- the ops -----------------------------------------------------------------------------------

function checkArgs(
  op: string,
  x: unknown,
  params: [string, unknown][],
  eps: unknown,
): number {
  if (!(x instanceof Tensor)) throw new ValueError(`${op}(): expects a Tensor input`);
  x.buffer(`${op}()`);
  if (x.ndim === 0) {
    throw new ShapeError(`${op}(): normalises the last dimension, and a 0-d tensor has none`);
  }
  const C = x.shape[x.ndim - 1];
  for (const [name, p] of params) {
    if (p === null) continue;
    if (!(p instanceof Tensor)) {
      throw new ValueError(`${op}(): ${name} must be a Tensor or null`);
    }
    p.buffer(`${op}()`);
    if (p.ndim !== 1 || p.shape[0] !== C) {
      throw new ShapeError(
        `${op}(): ${name} of shape ${fmtShape(p.shape)} (${p.dtype}) does not fit input ` +
          `${fmtShape(x.shape)} (${x.dtype}); it must have shape [${C}], the last dimension`,
      );
    }
  }
  if (typeof eps !== "number" || !(eps >= 0)) {
    throw new ValueError(`${op}(): eps must be a non-negative number, got ${String(eps)}`);
  }
  return C;
}

/** The output dtype: the inputs' promoted dtype (as `x * w + b` gives), f32 for integers. */
function outDtype(ts: readonly Tensor[]): DType {
  let d = ts[0].dt;
  for (const t of ts.slice(1)) d = promoteTypes(d, t.dt);
  return isFloat(d) ? d : float32;
}

/** The dtype of a gradient that flows to `t`. */
function gradDt(t: Tensor): DType {
  return isFloat(t.dt) ? t.dt : float32;
}

/**
 * The gradients of a normalisation: `dx` by rows, `dw` and `db` by columns, each computed only
 * when its input requires one; null for the others.
 */
function normGrads(
  norm: Norm,
  g: Tensor,
  x: Tensor,
  weight: Tensor | null,
  bias: Tensor | null,
  saved: Tensor[],
  rows: number,
  C: number,
): (Tensor | null)[] {
  const label = norm === "ln" ? "layerNorm_bwd" : "rmsNorm_bwd";
  const dx = x.requiresGrad
    ? runRows(
      label,
      spec(norm, "bwd", weight !== null, false),
      weight ? [x, g, weight] : [x, g],
      saved,
      [],
      x.shape,
      gradDt(x),
      rows,
      C,
      0,
    ).out
    : null;
  const cols: { which: "w" | "b"; dt: DType; shape: readonly number[] }[] = [];
  if (weight?.requiresGrad) cols.push({ which: "w", dt: gradDt(weight), shape: weight.shape });
  if (bias?.requiresGrad) cols.push({ which: "b", dt: gradDt(bias), shape: bias.shape });
  const cg = colGrads(norm, x, g, saved, cols, rows, C);
  const res: (Tensor | null)[] = [dx];
  if (weight) res.push(weight.requiresGrad ? cg.shift()! : null);
  if (bias) res.push(bias.requiresGrad ? cg.shift()! : null);
  for (const t of saved) t.dispose();
  return res;
}

function normOp(
  norm: Norm,
  x: Tensor,
  weight: Tensor | null,
  bias: Tensor | null,
  eps: number,
): Tensor {
  const op = norm === "ln" ? "layerNorm" : "rmsNorm";
  const C = x.shape[x.ndim - 1];
  const rows = x.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const ins = [x, weight, bias].filter((t): t is Tensor => t !== null);
  const { out, stats } = runRows(
    op,
    spec(norm, "fwd", weight !== null, bias !== null),
    ins,
    [],
    norm === "ln" ? ["smu", "srs"] : ["srs"],
    x.shape,
    outDtype(ins),
    rows,
    C,
    eps,
  );
  attach(out, op, ins, (g) => normGrads(norm, g, x, weight, bias, stats, rows, C));
  if (out.node === null) { for (const t of stats) t.dispose(); }
  return out;
}

/**
 * Layer normalisation over the last dimension in fused kernels: the row's mean and variance
 * in f32, `y = (x - mean) / sqrt(var + eps) * weight + bias` rounded once to the inputs'
 * promoted dtype (x's dtype when they agree; f32 for integer x). `weight` and `bias` have
 * shape `[C]` (C the last dimension) or are null. The forward pass is one dispatch (two for a
 * packed output whose rows are not whole words); the backward pass one for `dx` and one for
 * `dw` and `db`. `nn`'s `layerNorm` is the public entry point. @internal
 *
 * @example
 * ```ts
 * import { tensor } from "../../mod.ts";
 * import { layerNormLast } from "./norm.ts";
 * const y = layerNormLast(tensor([[1, 2, 3], [0, 0, 4]], { dtype: "bf16" }));
 * console.log(y.dtype, Array.from(await y.toArray()).map((v) => v.toFixed(2)));
 * // "bf16" ["-1.22", "0.00", "1.22", "-0.71", "-0.71", "1.41"]
 * ```
 */
export function layerNormLast(
  x: Tensor,
  weight: Tensor | null = null,
  bias: Tensor | null = null,
  eps = 1e-5,
): Tensor {
  checkArgs("layerNorm", x, [["weight", weight], ["bias", bias]], eps);
  return normOp("ln", x, weight, bias, eps);
}

/**
 * RMS normalisation over the last dimension in fused kernels: `y = x / sqrt(mean(x^2) + eps) *
 * weight`, the mean in f32, rounded once to the inputs' promoted dtype. Dispatches as
 * `layerNormLast`. `nn`'s `rmsNorm` is the public entry point. @internal
 *
 * @example
 * ```ts
 * import { tensor } from "../../mod.ts";
 * import { rmsNormLast } from "./norm.ts";
 * const y = rmsNormLast(tensor([[3, 4]]), tensor([1, 2]), 0);
 * console.log(Array.from(await y.toArray()).map((v) => v.toFixed(3))); // ["0.849", "2.263"]
 * ```
 */
export function rmsNormLast(x: Tensor, weight: Tensor | null = null, eps = 1e-6): Tensor {
  checkArgs("rmsNorm", x, [["weight", weight]], eps);
  return normOp("rms", x, weight, null, eps);
}
