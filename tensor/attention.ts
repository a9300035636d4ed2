/**
 * Fused attention: `softmax(scale * q k^T + mask) v` in one kernel forward and one backward,
 * as `torch.nn.functional.scaled_dot_product_attention`. Each invocation owns one query row:
 * it streams over the keys with an online softmax (running max and sum, FlashAttention's
 * recurrence: Dao et al. 2022, Milakov & Gimelshein 2018), so the T x T scores are never
 * stored; the log-sum-exp of each row is kept for the backward pass, which recomputes the
 * probabilities: dQ by query rows, dK and dV by key rows, in the same dispatch.
 *
 * Operands are read through strides, so the attention of a GPT reads q, k and v straight
 * from the fused (B, T, 3C) projection and writes (B, T, C), without the head split and
 * transposes around an unfused attention (about a dozen kernels per layer and pass).
 * Scores, softmax and the products accumulate in f32; outputs are rounded once to the
 * operands' dtype.
 *
 * @module
 */

import { type DType, float32, isFloat, wgslChunks } from "../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../errors.ts";
import { currentRuntime, type Kernel, type Runtime } from "../gpu/mod.ts";
import { attach } from "../autograd/graph.ts";
import {
  type Layout,
  layoutOf,
  needsF16,
  storageBytes,
  wgslBinding,
  wgslEncoder,
  wgslLoad,
} from "./layout.ts";
import { fmtShape, Tensor } from "./tensor.ts";
import { autocastInputs } from "./elementwise.ts";

/** Largest head size the kernels hold in registers. */
export const MAX_HEAD_SIZE = 256;
const WG = 64;

/** Where one operand's rows lie: element offset and strides of batch, head and position. */
interface RowMap {
  off: number;
  sb: number;
  sh: number;
  st: number;
}

/** One attention problem: sizes, masking and where every operand lives. */
interface Geometry {
  B: number;
  nh: number;
  Tq: number;
  Tk: number;
  hs: number;
  causal: boolean;
  scale: number;
  q: RowMap;
  k: RowMap;
  v: RowMap;
  y: RowMap;
}

/** Options of `scaledDotProductAttention`. */
export interface AttentionOptions {
  /** Mask key j from query i when j > i (a decoder's causal mask), as PyTorch's `is_causal`. */
  causal?: boolean;
  /** The factor of the scores; default `1 / sqrt(headSize)`. */
  scale?: number;
}

function uniforms(g: Geometry, dq?: RowMap, dk?: RowMap, dv?: RowMap): Uint32Array {
  const u = new Uint32Array(36);
  u.set([g.nh, g.Tq, g.Tk, g.causal ? 1 : 0]);
  new Float32Array(u.buffer, 16, 1)[0] = g.scale;
  const put = (k: number, r?: RowMap) => r && u.set([r.off, r.sb, r.sh, r.st], 8 + 4 * k);
  [g.q, g.k, g.v, g.y, dq, dk, dv].forEach((r, k) => put(k, r));
  return u;
}

const WGSL_U = `struct U { dims: vec4<u32>, sc: vec4<f32>, q: vec4<u32>, k: vec4<u32>, v: vec4<u32>,
  y: vec4<u32>, dq: vec4<u32>, dk: vec4<u32>, dv: vec4<u32> }
fn row(m: vec4<u32>, b: u32, h: u32, t: u32) -> u32 { return m.x + b * m.y + h * m.z + t * m.w; }
`;

/** WGSL that writes the private row `r` (HS values) at element offset `off` of `out`. */
function putRow(l: Layout, enc: string, hs: number): string {
  let body: string;
  if (l.elem === "f16") {
    body =
      `for (var d = 0u; d < ${hs}u; d++) { out[off + d] = f16(unpack2x16float(${enc}((*r)[d], 0u)).x); }`;
  } else if (l.lanes === 1) {
    body = `for (var d = 0u; d < ${hs}u; d++) { out[off + d] = ${enc}((*r)[d], 0u); }`;
  } else {
    const mask = (2 ** l.laneBits - 1) >>> 0;
    body = `for (var w = 0u; w < ${hs / l.lanes}u; w++) {
    var word = 0u;
    for (var j = 0u; j < ${l.lanes}u; j++) {
      word = word | ((${enc}((*r)[w * ${l.lanes}u + j], 0u) & ${mask}u) << (j * ${l.laneBits}u));
    }
    out[off / ${l.lanes}u + w] = word;
  }`;
  }
  return `fn put_row(off: u32, r: ptr<function, array<f32, ${hs}>>) {\n  ${body}\n}\n`;
}

function forwardSource(inL: Layout[], outL: Layout, hs: number): string {
  const chunks: (readonly string[])[] = [];
  let decl = "";
  ["q", "k", "v"].forEach((n, k) => {
    chunks.push(wgslLoad(inL[k], `in_${n}`, `ld_${n}`));
    decl += wgslBinding(inL[k], 0, k, `in_${n}`, "read");
  });
  const enc = wgslEncoder(outL);
  chunks.push(enc.chunks);
  decl += wgslBinding(outL, 0, 3, "out", "read_write");
  decl += `@group(0) @binding(4) var<storage, read_write> lse: array<f32>;\n`;
  const f16 = needsF16([...inL, outL]) ? "enable f16;\n" : "";
  return `${f16}${wgslChunks(...chunks)}
${WGSL_U}${decl}@group(0) @binding(5) var<uniform> u: U;
${putRow(outL, enc.name, hs)}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let nh = u.dims.x; let Tq = u.dims.y; let Tk = u.dims.z;
  let i = wid.x * ${WG}u + li;
  if (i >= Tq) { return; }
  let bh = wid.y; let b = bh / nh; let h = bh % nh;
  var qv: array<f32, ${hs}>;
  var o: array<f32, ${hs}>;
  let qo = row(u.q, b, h, i);
  for (var d = 0u; d < ${hs}u; d++) { qv[d] = ld_q(qo + d); o[d] = 0.0; }
  var m = -3.0e38;
  var l = 0.0;
  let jn = select(Tk, min(i + 1u, Tk), u.dims.w == 1u);
  for (var j = 0u; j < jn; j++) {
    let ko = row(u.k, b, h, j);
    var s = 0.0;
    for (var d = 0u; d < ${hs}u; d++) { s = fma(qv[d], ld_k(ko + d), s); }
    s = s * u.sc.x;
    let mn = max(m, s);
    let c = exp(m - mn);
    let p = exp(s - mn);
    l = l * c + p;
    let vo = row(u.v, b, h, j);
    for (var d = 0u; d < ${hs}u; d++) { o[d] = fma(p, ld_v(vo + d), o[d] * c); }
    m = mn;
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  for (var d = 0u; d < ${hs}u; d++) { o[d] = o[d] * inv; }
  put_row(row(u.y, b, h, i), &o);
  lse[bh * Tq + i] = select(-3.0e38, m + log(l), l > 0.0);
}
`;
}

function backwardSource(inL: Layout[], gL: Layout, outL: Layout, hs: number): string {
  const chunks: (readonly string[])[] = [];
  let decl = "";
  ["q", "k", "v", "y"].forEach((n, k) => {
    chunks.push(wgslLoad(inL[k], `in_${n}`, `ld_${n}`));
    decl += wgslBinding(inL[k], 0, k, `in_${n}`, "read");
  });
  decl += `@group(0) @binding(4) var<storage, read> lse: array<f32>;\n`;
  chunks.push(wgslLoad(gL, "in_g", "ld_g"));
  decl += wgslBinding(gL, 0, 5, "in_g", "read");
  const enc = wgslEncoder(outL);
  chunks.push(enc.chunks);
  decl += wgslBinding(outL, 0, 6, "out", "read_write");
  const f16 = needsF16([...inL, gL, outL]) ? "enable f16;\n" : "";
  return `${f16}${wgslChunks(...chunks)}
${WGSL_U}${decl}@group(0) @binding(7) var<uniform> u: U;
${putRow(outL, enc.name, hs)}
// D_i = dO_i . O_i, the row term of the softmax backward
fn delta(b: u32, h: u32, i: u32) -> f32 {
  let go = row(u.y, b, h, i);
  var t = 0.0;
  for (var d = 0u; d < ${hs}u; d++) { t = fma(ld_g(go + d), ld_y(go + d), t); }
  return t;
}
// (q_i . k_j, dO_i . v_j): the score before scaling and dP_ij, for both passes below
fn score_and_dp(qo: u32, ko: u32, go: u32, vo: u32) -> vec2<f32> {
  var s = 0.0;
  var dp = 0.0;
  for (var d = 0u; d < ${hs}u; d++) {
    s = fma(ld_q(qo + d), ld_k(ko + d), s);
    dp = fma(ld_g(go + d), ld_v(vo + d), dp);
  }
  return vec2<f32>(s, dp);
}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let nh = u.dims.x; let Tq = u.dims.y; let Tk = u.dims.z; let causal = u.dims.w == 1u;
  let r = wid.x * ${WG}u + li;
  if (r >= Tq + Tk) { return; }
  let bh = wid.y; let b = bh / nh; let h = bh % nh;
  let sc = u.sc.x;
  var a: array<f32, ${hs}>;
  var c: array<f32, ${hs}>;
  for (var d = 0u; d < ${hs}u; d++) { a[d] = 0.0; c[d] = 0.0; }
  if (r < Tq) {
    // dQ_i = scale * sum_j P_ij (dP_ij - D_i) k_j, with dP_ij = dO_i . v_j
    let i = r;
    let qo = row(u.q, b, h, i);
    let go = row(u.y, b, h, i);
    let L = lse[bh * Tq + i];
    let D = delta(b, h, i);
    let jn = select(Tk, min(i + 1u, Tk), causal);
    for (var j = 0u; j < jn; j++) {
      let ko = row(u.k, b, h, j);
      let vo = row(u.v, b, h, j);
      let sd = score_and_dp(qo, ko, go, vo);
      let ds = exp(sd.x * sc - L) * (sd.y - D);
      for (var d = 0u; d < ${hs}u; d++) { a[d] = fma(ds, ld_k(ko + d), a[d]); }
    }
    for (var d = 0u; d < ${hs}u; d++) { a[d] = a[d] * sc; }
    put_row(row(u.dq, b, h, i), &a);
  } else {
    // dV_j = sum_i P_ij dO_i; dK_j = scale * sum_i P_ij (dP_ij - D_i) q_i
    let j = r - Tq;
    let ko = row(u.k, b, h, j);
    let vo = row(u.v, b, h, j);
    let i0 = select(0u, j, causal);
    for (var i = i0; i < Tq; i++) {
      let qo = row(u.q, b, h, i);
      let go = row(u.y, b, h, i);
      let sd = score_and_dp(qo, ko, go, vo);
      let p = exp(sd.x * sc - lse[bh * Tq + i]);
      let ds = p * (sd.y - delta(b, h, i));
      for (var d = 0u; d < ${hs}u; d++) {
        c[d] = fma(p, ld_g(go + d), c[d]);
        a[d] = fma(ds, ld_q(qo + d), a[d]);
      }
    }
    for (var d = 0u; d < ${hs}u; d++) { a[d] = a[d] * sc; }
    put_row(row(u.dk, b, h, j), &a);
    put_row(row(u.dv, b, h, j), &c);
  }
}
`;
}

function kernel(rt: Runtime, kind: "fwd" | "bwd", ls: Layout[], hs: number): Kernel {
  const key = `attention_${kind}|${ls.map((l) => `${l.dtype.name}:${l.elem}`).join(",")}|${hs}`;
  if (kind === "fwd") {
    return rt.kernelFor(key, "attention", {
      buffers: ["read", "read", "read", "read_write", "read_write"],
      uniform: true,
    }, () => forwardSource(ls.slice(0, 3), ls[3], hs));
  }
  return rt.kernelFor(key, "attention_bwd", {
    buffers: ["read", "read", "read", "read", "read", "read", "read_write"],
    uniform: true,
  }, () => backwardSource(ls.slice(0, 4), ls[4], ls[5], hs));
}

/** Whether rows of `hs` elements at these maps fill whole storage words of `dt`. */
function wordAligned(dt: DType, hs: number, maps: RowMap[]): boolean {
  const lanes = dt.lanesPerWord; // storage words, as on every adapter (copies need them too)
  return [hs, ...maps.flatMap((m) => [m.off, m.sb, m.sh, m.st])].every((v) => v % lanes === 0);
}

/**
 * The attention of `g` over operands `q`, `k`, `v` (the same tensor for a fused projection):
 * output of `outShape` and dtype `dt` (rows at `g.y`), with its backward pass, which writes
 * the gradients of the three operands into one buffer laid out as `gradMaps` say and hands
 * them back through `split`.
 */
function run(
  op: string,
  g: Geometry,
  ins: readonly [Tensor, Tensor, Tensor],
  dt: DType,
  outShape: readonly number[],
  grad: {
    inputs: readonly Tensor[];
    shape: readonly number[];
    maps: [RowMap, RowMap, RowMap];
    split: (dx: Tensor) => (Tensor | null)[];
  },
): Tensor {
  const rt = currentRuntime();
  const [q, k, v] = ins;
  const y = Tensor.empty(outShape, dt);
  if (y.size === 0) return y;
  const lse = Tensor.empty([g.B * g.nh * g.Tq], float32);
  const fwd = kernel(rt, "fwd", [q, k, v, y].map((t) => layoutOf(t.dt, rt)), g.hs);
  rt.dispatch(
    fwd,
    [q.buffer(op), k.buffer(op), v.buffer(op), y.buffer(op), lse.buffer(op)],
    [Math.ceil(g.Tq / WG), g.B * g.nh, 1],
    uniforms(g),
  );
  const out = attach(y, op, [...grad.inputs], (gy) => {
    const dx = Tensor.empty(grad.shape, dt);
    const gl = gy.dt === dt ? gy : gy.cast(dt);
    const bwd = kernel(rt, "bwd", [q, k, v, y, gl, dx].map((t) => layoutOf(t.dt, rt)), g.hs);
    rt.dispatch(
      bwd,
      [q, k, v, y, lse, gl, dx].map((t) => t.buffer(`${op} backward`)),
      [Math.ceil((g.Tq + g.Tk) / WG), g.B * g.nh, 1],
      uniforms(g, ...grad.maps),
    );
    if (gl !== gy) gl.dispose();
    lse.dispose(); // the graph is walked once
    return grad.split(dx);
  });
  if (out.node === null) lse.dispose();
  return out;
}

function checkFloat(op: string, ts: Tensor[]): DType {
  const dt = ts[0].dt;
  if (!isFloat(dt) || dt.kind === "mcf" || ts.some((t) => t.dt !== dt)) {
    throw new DTypeError(
      `${op}(): operands must share one float dtype such as f32, bf16 or f16, got ${
        ts.map((t) => t.dtype).join(", ")
      }; cast them first`,
    );
  }
  return dt;
}

/**
 * `softmax(scale * q @ k^T [+ causal mask]) @ v` over the last two dimensions, as PyTorch's
 * `scaled_dot_product_attention` (without dropout or an explicit mask): q `(B, H, Tq, D)`,
 * k and v `(B, H, Tk, D)`, result `(B, H, Tq, D)` in the operands' dtype. One fused kernel
 * forward and one backward; the T x T probabilities are never stored. Under autocast the
 * operands are cast to the context's dtype first (attention is a lower-precision op).
 *
 * @example
 * ```ts
 * import { scaledDotProductAttention, tensor } from "../mod.ts";
 * const q = tensor([[[[1, 0], [0, 1]]]]); // (1, 1, 2, 2)
 * const y = scaledDotProductAttention(q, q, tensor([[[[1, 2], [3, 4]]]]), { causal: true });
 * console.log(Array.from(await y.toArray()).map((x) => x.toFixed(3)));
 * // ["1.000", "2.000", "2.339", "3.339"]
 * ```
 */
export function scaledDotProductAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): Tensor {
  const op = "scaledDotProductAttention";
  for (const t of [q, k, v]) {
    if (!(t instanceof Tensor)) throw new ValueError(`${op}(): q, k and v must be tensors`);
  }
  if (
    q.ndim !== 4 || k.ndim !== 4 || v.ndim !== 4 ||
    [0, 1, 3].some((d) => q.shape[d] !== k.shape[d] || q.shape[d] !== v.shape[d]) ||
    k.shape[2] !== v.shape[2]
  ) {
    throw new ShapeError(
      `${op}(): expected q (B, H, Tq, D) and k, v (B, H, Tk, D), got q ${fmtShape(q.shape)}, ` +
        `k ${fmtShape(k.shape)}, v ${fmtShape(v.shape)}`,
    );
  }
  [q, k, v] = autocastInputs("attention", [q, k, v]);
  const dt = checkFloat(op, [q, k, v]);
  const [B, nh, Tq, hs] = q.shape, Tk = k.shape[2];
  checkHead(op, hs);
  if (opts.causal && Tq !== Tk) {
    throw new ShapeError(`${op}(): causal attention needs Tq == Tk, got ${Tq} and ${Tk}`);
  }
  const map = (T: number, off = 0): RowMap => ({ off, sb: nh * T * hs, sh: T * hs, st: hs });
  const g: Geometry = {
    B,
    nh,
    Tq,
    Tk,
    hs,
    causal: opts.causal ?? false,
    scale: opts.scale ?? 1 / Math.sqrt(hs),
    q: map(Tq),
    k: map(Tk),
    v: map(Tk),
    y: map(Tq),
  };
  const nq = B * nh * Tq * hs, nk = B * nh * Tk * hs;
  const maps: [RowMap, RowMap, RowMap] = [map(Tq), map(Tk, nq), map(Tk, nq + nk)];
  if (!wordAligned(dt, hs, [...maps, g.q])) {
    throw new ShapeError(
      `${op}(): head size ${hs} and sequence lengths must fill whole ${dt.name} storage words ` +
        `(multiples of ${dt.lanesPerWord}); pad the head size or use f32`,
    );
  }
  return run(op, g, [q, k, v], dt, [B, nh, Tq, hs], {
    inputs: [q, k, v],
    shape: [nq + 2 * nk],
    maps,
    split: (dx) => {
      const parts = [[q, 0, nq], [k, nq, nk], [v, nq + nk, nk]] as const;
      const res = parts.map(([t, off, n]) =>
        t.requiresGrad ? sliceFlat(dx, off, n, t.shape) : null
      );
      dx.dispose();
      return res;
    },
  });
}

/**
 * Causal self-attention straight from a fused projection: `qkv` of shape `(B, T, 3C)` holds
 * q, k and v side by side (as GPT-2's `c_attn` output), split into `nHead` heads of size
 * `C / nHead`; the result is `(B, T, C)` with the heads side by side again, ready for the
 * output projection. The same kernels as `scaledDotProductAttention`, reading the heads
 * through strides: no split, transpose or concatenation kernels around it.
 *
 * @example
 * ```ts
 * import { causalSelfAttention, tensor } from "../mod.ts";
 * const qkv = tensor([[[1, 0, 1, 0, 1, 2], [0, 1, 0, 1, 3, 4]]]); // (1, 2, 3 * 2), one head
 * const y = causalSelfAttention(qkv, 1);
 * console.log(y.shape, Array.from(await y.toArray()).map((x) => x.toFixed(3)));
 * // [1, 2, 2] ["1.000", "2.000", "2.339", "3.339"]
 * ```
 */
export function causalSelfAttention(qkv: Tensor, nHead: number): Tensor {
  const op = "causalSelfAttention";
  if (!(qkv instanceof Tensor)) throw new ValueError(`${op}(): qkv must be a tensor`);
  if (qkv.ndim !== 3 || qkv.shape[2] % 3 !== 0) {
    throw new ShapeError(`${op}(): qkv must be (B, T, 3C), got ${fmtShape(qkv.shape)}`);
  }
  const [B, T, C3] = qkv.shape, C = C3 / 3;
  if (!Number.isInteger(nHead) || nHead < 1 || C % nHead !== 0) {
    throw new ValueError(`${op}(): nHead ${nHead} must be a positive divisor of C = ${C}`);
  }
  [qkv] = autocastInputs("attention", [qkv]);
  const dt = checkFloat(op, [qkv]);
  const hs = C / nHead;
  checkHead(op, hs);
  const at = (off: number, width: number): RowMap => ({
    off,
    sb: T * width,
    sh: hs,
    st: width,
  });
  const g: Geometry = {
    B,
    nh: nHead,
    Tq: T,
    Tk: T,
    hs,
    causal: true,
    scale: 1 / Math.sqrt(hs),
    q: at(0, C3),
    k: at(C, C3),
    v: at(2 * C, C3),
    y: at(0, C),
  };
  const maps: [RowMap, RowMap, RowMap] = [g.q, g.k, g.v];
  if (!wordAligned(dt, hs, [...maps, g.y])) {
    throw new ShapeError(
      `${op}(): head size ${hs} must fill whole ${dt.name} storage words (a multiple of ${dt.lanesPerWord}); use the unfused attention or f32`,
    );
  }
  return run(op, g, [qkv, qkv, qkv], dt, [B, T, C], {
    inputs: [qkv],
    shape: qkv.shape,
    maps,
    split: (dx) => [dx],
  });
}

/** Whether `causalSelfAttention` runs for this head size and dtype (storage words filled). */
export function fusedAttentionFits(dt: DType, C: number, nHead: number): boolean {
  const hs = C / nHead;
  return Number.isInteger(hs) && hs <= MAX_HEAD_SIZE &&
    wordAligned(dt, hs, [{ off: C, sb: 0, sh: hs, st: 3 * C }]);
}

function checkHead(op: string, hs: number): void {
  if (hs < 1 || hs > MAX_HEAD_SIZE) {
    throw new ShapeError(`${op}(): head size ${hs} must be between 1 and ${MAX_HEAD_SIZE}`);
  }
}

/** Elements [off, off + n) of a flat tensor as a new tensor of `shape` (a buffer copy). */
function sliceFlat(x: Tensor, off: number, n: number, shape: readonly number[]): Tensor {
  const rt = currentRuntime();
  const out = Tensor.empty(shape, x.dt);
  const lanes = x.dt.lanesPerWord;
  rt.copy(
    x.buffer("attention backward"),
    (off / lanes) * 4,
    out.buffer("attention backward"),
    0,
    storageBytes(x.dt, n),
  );
  return out;
}
