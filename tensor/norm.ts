/**
 * Fused layer and RMS normalisation over the last dimension, forward and backward.
 *
 * Forward: one workgroup per row reduces the row in f32 in workgroup memory (layer norm in two
 * passes: the mean, then the mean squared deviation), saves the row's statistics (mean and
 * `rstd = 1/sqrt(var + eps)`, f32, one per row) for the backward pass, and writes
 * `y = (x - mean) * rstd * w + b` (RMS norm: `y = x * rstd * w`) rounded once to the output
 * dtype. An invocation owns whole output words; when a packed output's rows do not start on
 * word boundaries (bf16 rows of odd length, say), the row kernel only saves the statistics and
 * a second, word-owning kernel writes `y` from them.
 *
 * Backward, with `xhat = (x - mean) * rstd` and `gw = g * w`:
 * - layer norm: `dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat))`;
 * - RMS norm (`xhat = x * rstd`): `dx = rstd * (gw - xhat * mean(gw * xhat))`;
 * - `dw = sum over rows of g * xhat`, `db = sum over rows of g`: one invocation per word of
 *   columns loops over the rows in order, so the sums are deterministic.
 *
 * References: Ba, Kiros & Hinton, "Layer Normalization" (2016); Zhang & Sennrich, "Root Mean
 * Square Layer Normalization" (2019).
 *
 * @module
 */

import { type DType, float32, isFloat, promoteTypes, wgslChunks } from "../dtypes/mod.ts";
import { ShapeError, ValueError } from "../errors.ts";
import { currentRuntime, type Kernel, type Runtime } from "../gpu/mod.ts";
import { attach } from "../autograd/graph.ts";
import { type Layout, layoutOf, needsF16, wgslBinding, wgslEncoder, wgslLoad } from "./layout.ts";
import { fmtShape, Tensor } from "./tensor.ts";
import { zeros } from "./creation.ts";

/** Threads per workgroup (row kernels) and per workgroup of the word-owning kernels. */
/** Workgroup size of the row kernels (norms and losses). @internal */
export const WG = 64;

/** Which normalisation. */
type Norm = "ln" | "rms";

/** The WGSL of one row kernel: stats code, value expression, saved statistics. */
interface Spec {
  /** Tensor inputs, decoded with `wgslLoad` as `ld_<name>(i)`. */
  readonly ins: readonly string[];
  /** f32 arrays read by row (`mu`, `rs` saved by the forward pass). */
  readonly saved: readonly string[];
  /** WGSL in `main` that sets the private `c0`, `c1` of the row (`base`, `li`, `cf` in scope). */
  readonly stats: string;
  /** Body of `fn val(i: u32, row: u32, col: u32) -> f32`, using `c0`, `c1`. */
  readonly val: string;
}

// ---- WGSL --------------------------------------------------------------------------------------

const WGSL_UNIFORMS = `struct U { rows: u32, C: u32, eps: f32, n: u32 }\n`;

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
  const xh = norm === "ln" ? "(ld_x(i) - mu[row]) * rs[row]" : "ld_x(i) * rs[row]";
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
  return rs[row] * (gw${norm === "ln" ? " - c0" : ""} - xh * c1);`,
  };
}

/** The store of f32 `v` at element `idx` of a one-lane output `arr`. */
function storeOne(l: Layout, enc: string, arr: string, idx: string, v: string): string {
  if (l.elem === "f16") return `${arr}[${idx}] = f16(unpack2x16float(${enc}(${v}, 0u)).x);`;
  return `${arr}[${idx}] = ${enc}(${v}, 0u);`;
}

/** Masked code of lane `l` of a packed word. */
function laneBits(l: Layout, enc: string, v: string, lane: string): string {
  const mask = (2 ** l.laneBits - 1) >>> 0;
  return `((${enc}(${v}, 0u) & ${mask}u) << (${lane} * ${l.laneBits}u))`;
}

/**
 * How a row kernel runs: `fused` computes the statistics and writes the output (a packed
 * output a whole word at a time, which needs rows of whole words), `stats` only saves the
 * statistics, `apply` writes a packed output a word per invocation from saved statistics.
 */
type Mode = "fused" | "stats" | "apply";

function rowSource(
  s: Spec,
  ls: readonly Layout[],
  outL: Layout,
  mode: Mode,
  statOut: readonly string[],
  statIn: readonly string[],
): string {
  const chunks: (readonly string[])[] = [];
  let decl = "";
  let b = 0;
  s.ins.forEach((name, k) => {
    chunks.push(wgslLoad(ls[k], `in_${name}`, `ld_${name}`));
    decl += wgslBinding(ls[k], 0, b++, `in_${name}`, "read");
  });
  for (const name of [...s.saved, ...statIn]) {
    decl += `@group(0) @binding(${b++}) var<storage, read> ${name}: array<f32>;\n`;
  }
  const enc = wgslEncoder(outL);
  if (mode !== "stats") {
    chunks.push(enc.chunks);
    decl += wgslBinding(outL, 0, b++, "out", "read_write");
  }
  for (const name of statOut) {
    decl += `@group(0) @binding(${b++}) var<storage, read_write> ${name}: array<f32>;\n`;
  }
  decl += `@group(0) @binding(${b}) var<uniform> u: U;\n`;
  const lanes = outL.lanes;
  let body: string;
  if (mode === "apply") {
    const load = statIn.map((n, k) => `c${k + 2 - statIn.length} = ${n}[row];`).join(" ");
    const elem = (v: string) => `let row = i / u.C; let col = i - row * u.C; ${load} ${v}`;
    // only packed outputs take this path (a one-lane output is always written fused)
    body = `  let w = (wid.x + wid.y * nwg.x) * ${WG}u + li;
  if (w * ${lanes}u >= u.n) { return; }
  var word = 0u;
  for (var l = 0u; l < ${lanes}u; l = l + 1u) {
    let i = w * ${lanes}u + l;
    if (i >= u.n) { break; }
    ${elem(`word = word | ${laneBits(outL, enc.name, "val(i, row, col)", "l")};`)}
  }
  out[w] = word;\n`;
  } else {
    let store = "";
    if (mode === "fused") {
      store = lanes === 1
        ? rowLoop(storeOne(outL, enc.name, "out", "i", "val(i, row, j)"))
        : `  for (var j = li; j < u.C / ${lanes}u; j = j + ${WG}u) {
    var word = 0u;
    for (var l = 0u; l < ${lanes}u; l = l + 1u) {
      let col = j * ${lanes}u + l;
      word = word | ${laneBits(outL, enc.name, "val(base + col, row, col)", "l")};
    }
    out[base / ${lanes}u + j] = word;
  }\n`;
    }
    const save = statOut.map((n, k) => `${n}[row] = c${k + 2 - statOut.length};`).join(" ");
    body = `  let row = wid.x + wid.y * nwg.x;
  if (row >= u.rows) { return; }
  let base = row * u.C;
  let cf = f32(u.C);
${s.stats}${save ? `  if (li == 0u) { ${save} }\n` : ""}${store}`;
  }
  const f16 = needsF16([...ls, ...(mode === "stats" ? [] : [outL])]) ? "enable f16;\n" : "";
  return `${f16}${wgslChunks(...chunks)}
${WGSL_UNIFORMS}${decl}var<workgroup> sv: array<vec2<f32>, ${WG}>;
var<private> c0: f32;
var<private> c1: f32;
${WGSL_SUM}
fn val(i: u32, row: u32, col: u32) -> f32 {
${s.val}
}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
${body}}
`;
}

/**
 * `dw = sum_r g * xhat`, `db = sum_r g`: one invocation per group of `G` columns (the widest
 * packing of the two outputs), looping over the rows in order.
 */
function colSource(norm: Norm, ls: readonly Layout[], outs: readonly Layout[], which: string[]) {
  const G = Math.max(...outs.map((l) => l.lanes));
  const chunks: (readonly string[])[] = [
    wgslLoad(ls[0], "in_x", "ld_x"),
    wgslLoad(ls[1], "in_g", "ld_g"),
  ];
  let decl = wgslBinding(ls[0], 0, 0, "in_x", "read") + wgslBinding(ls[1], 0, 1, "in_g", "read");
  const saved = norm === "ln" ? ["mu", "rs"] : ["rs"];
  let b = 2;
  for (const n of saved) {
    decl += `@group(0) @binding(${b++}) var<storage, read> ${n}: array<f32>;\n`;
  }
  let stores = "";
  outs.forEach((l, k) => {
    const enc = wgslEncoder(l);
    chunks.push(enc.chunks);
    const arr = `out_${which[k]}`, acc = `s_${which[k]}`;
    decl += wgslBinding(l, 0, b++, arr, "read_write");
    stores += l.lanes === 1
      ? `  for (var k = 0u; k < ${G}u; k = k + 1u) {
    let c = c0 + k;
    if (c >= u.C) { break; }
    ${storeOne(l, enc.name, arr, "c", `${acc}[k]`)}
  }\n`
      : `  for (var k = 0u; k < ${G / l.lanes}u; k = k + 1u) {
    let c = c0 + k * ${l.lanes}u;
    if (c >= u.C) { break; }
    var word = 0u;
    for (var l = 0u; l < ${l.lanes}u; l = l + 1u) {
      if (c + l < u.C) { word = word | ${
        laneBits(l, enc.name, `${acc}[k * ${l.lanes}u + l]`, "l")
      }; }
    }
    ${arr}[c / ${l.lanes}u] = word;
  }\n`;
  });
  decl += `@group(0) @binding(${b}) var<uniform> u: U;\n`;
  const xh = norm === "ln" ? "(ld_x(i) - mu[r]) * rs[r]" : "ld_x(i) * rs[r]";
  const f16 = needsF16([...ls, ...outs]) ? "enable f16;\n" : "";
  return `${f16}${wgslChunks(...chunks)}
${WGSL_UNIFORMS}${decl}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let c0 = ((wid.x + wid.y * nwg.x) * ${WG}u + li) * ${G}u;
  if (c0 >= u.C) { return; }
  var s_w: array<f32, ${G}>;
  var s_b: array<f32, ${G}>;
  for (var r = 0u; r < u.rows; r = r + 1u) {
    for (var k = 0u; k < ${G}u; k = k + 1u) {
      let c = c0 + k;
      if (c >= u.C) { break; }
      let i = r * u.C + c;
      let g = ld_g(i);
      s_w[k] = s_w[k] + g * ${xh};
      s_b[k] = s_b[k] + g;
    }
  }
${stores}}
`;
}

// ---- dispatch ----------------------------------------------------------------------------------

function cachedKernel(
  rt: Runtime,
  key: string,
  label: string,
  access: ("read" | "read_write")[],
  build: () => string,
): Kernel {
  return rt.kernelFor(`norm|${key}`, label, { buffers: access, uniform: true }, build);
}

function layoutKey(l: Layout): string {
  return `${l.dtype.name}:${l.elem}`;
}

function uniforms(rows: number, C: number, eps: number): Uint32Array {
  const u = new Uint32Array(4);
  u[0] = rows;
  u[1] = C;
  new Float32Array(u.buffer, 8, 1)[0] = eps;
  u[3] = rows * C;
  return u;
}

const R = "read" as const, RW = "read_write" as const;

/**
 * Runs a row op: one fused dispatch, or (a packed output whose rows do not own whole words)
 * a statistics dispatch and a word-owning dispatch. `saved` are the forward statistics the
 * backward pass reads; `save` names the statistics the forward pass writes (into new f32
 * tensors of `rows` elements, returned).
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
  const ls = tensors.map((t) => layoutOf(t.dt, rt));
  const outL = layoutOf(outDt, rt);
  const key = `${label}|${s.ins.map((n, k) => `${n}=${layoutKey(ls[k])}`).join(",")}|${
    layoutKey(outL)
  }`;
  const u = uniforms(rows, C, eps);
  const nIn = bufs.length + sbufs.length;
  if (outL.lanes === 1 || C % outL.lanes === 0) {
    const k = cachedKernel(
      rt,
      `${key}|fused|${save.length}`,
      label,
      [...Array(nIn).fill(R), RW, ...save.map(() => RW)],
      () => rowSource(s, ls, outL, "fused", save, []),
    );
    rt.dispatch(
      k,
      [...bufs, ...sbufs, out.buffer(label), ...stats.map((t) => t.buffer(label))],
      rt.grid(rows),
      u,
    );
    return { out, stats };
  }
  // statistics first (saved, or temporaries of the backward pass), then the output by words
  const tmp = save.length > 0 ? stats : [0, 1].map(() => Tensor.empty([rows], float32, "scratch"));
  const names = save.length > 0 ? save : ["t0", "t1"];
  const ks = cachedKernel(
    rt,
    `${key}|stats|${names.length}`,
    label,
    [...Array(nIn).fill(R), ...names.map(() => RW)],
    () => rowSource(s, ls, outL, "stats", names, []),
  );
  rt.dispatch(ks, [...bufs, ...sbufs, ...tmp.map((t) => t.buffer(label))], rt.grid(rows), u);
  const ka = cachedKernel(
    rt,
    `${key}|apply|${names.length}`,
    label,
    [...Array(nIn + names.length).fill(R), RW],
    () => rowSource(s, ls, outL, "apply", [], names),
  );
  const words = Math.ceil((rows * C) / outL.lanes);
  rt.dispatch(
    ka,
    [...bufs, ...sbufs, ...tmp.map((t) => t.buffer(label)), out.buffer(label)],
    rt.grid(Math.ceil(words / WG)),
    u,
  );
  if (tmp !== stats) { for (const t of tmp) t.dispose(); }
  return { out, stats };
}

/** `dw` and `db` (either may be skipped) of a normalisation. */
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
  const ls = [x, g].map((t) => layoutOf(t.dt, rt));
  const ols = outs.map((o) => layoutOf(o.dt, rt));
  const which = outs.map((o) => o.which);
  const G = Math.max(...ols.map((l) => l.lanes));
  const k = cachedKernel(
    rt,
    `${norm}_bwd_cols|${ls.map(layoutKey).join(",")}|${ols.map(layoutKey).join(",")}|${which}`,
    `${norm === "ln" ? "layerNorm" : "rmsNorm"}_bwd_cols`,
    [R, R, ...saved.map(() => R), ...outs.map(() => RW)],
    () => colSource(norm, ls, ols, which),
  );
  const threads = Math.ceil(C / G);
  rt.dispatch(
    k,
    [x, g, ...saved, ...res].map((t) => t.buffer("norm backward")),
    rt.grid(Math.ceil(threads / WG)),
    uniforms(rows, C, 0),
  );
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
 * import { tensor } from "../mod.ts";
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
 * import { tensor } from "../mod.ts";
 * import { rmsNormLast } from "./norm.ts";
 * const y = rmsNormLast(tensor([[3, 4]]), tensor([1, 2]), 0);
 * console.log(Array.from(await y.toArray()).map((v) => v.toFixed(3))); // ["0.849", "2.263"]
 * ```
 */
export function rmsNormLast(x: Tensor, weight: Tensor | null = null, eps = 1e-6): Tensor {
  checkArgs("rmsNorm", x, [["weight", weight]], eps);
  return normOp("rms", x, weight, null, eps);
}
