/**
 * Fused cross-entropy over logits `[N, C]` and integer class targets `[N]`, forward and
 * backward.
 *
 * Forward, two dispatches: one workgroup per row finds the row's maximum and `lse =
 * max + log(sum(exp(z - max)))` in f32 (saved for the backward pass); then one workgroup sums
 * `lse - z[target]` over the rows whose target is not `ignoreIndex` and counts them, and
 * writes the mean, rounded once to the loss dtype. The count stays on the GPU (no readback).
 *
 * Backward, one word-owning dispatch: `dz = (softmax(z) - onehot(target)) * g / count`, zero
 * on ignored rows, rounded once to the logits' dtype.
 *
 * A target outside `[0, C)` that is not `ignoreIndex` is clamped to the nearest class in the
 * kernel (PyTorch raises a device-side assert; a kernel here cannot): check targets on the
 * host when they may be out of range.
 *
 * @module
 */

import { WG, WGSL_SUM } from "./norm.ts";
import { type DType, float32, isFloat, wgslChunks } from "../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../errors.ts";
import { currentRuntime, type Kernel, type Runtime } from "../gpu/mod.ts";
import { attach } from "../autograd/graph.ts";
import { type Layout, layoutOf, needsF16, wgslBinding, wgslEncoder, wgslLoad } from "./layout.ts";
import { fmtShape, Tensor } from "./tensor.ts";

/** Threads per workgroup. */

const WGSL_HEAD = `
fn ulp_isnan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn ulp_max(a: f32, b: f32) -> f32 { return select(max(a, b), a + b, ulp_isnan(a) || ulp_isnan(b)); }
fn ulp_finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }
`;

// N rows, C classes, the ignored target's bits and whether there is one.
const WGSL_UNIFORMS = `struct U { N: u32, C: u32, ign: u32, hasIgn: u32 }\n`;

/** WGSL: whether row `r`'s target counts, and its class clamped into [0, C). */
function targetFns(signed: boolean): string {
  const clamp = signed ? "u32(clamp(bitcast<i32>(t), 0i, i32(u.C) - 1i))" : "min(t, u.C - 1u)";
  return `
fn counted(r: u32) -> bool { return u.hasIgn == 0u || tgt[r] != u.ign; }
fn cls(r: u32) -> u32 { let t = tgt[r]; return ${clamp}; }
`;
}

const WGSL_TREE = `${WGSL_SUM}
fn wmax(li: u32, v: f32) -> f32 {
  sv[li] = vec2<f32>(v, 0.0);
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (li < s) { sv[li].x = ulp_max(sv[li].x, sv[li + s].x); }
    workgroupBarrier();
  }
  let r = sv[0].x;
  workgroupBarrier();
  return r;
}
`;

const MAIN = `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {`;

/** Pass 1: `lse` of each row. Bindings: logits, lse. */
function lseSource(zL: Layout): string {
  return `${needsF16([zL]) ? "enable f16;\n" : ""}${
    wgslChunks([WGSL_HEAD], wgslLoad(zL, "z", "ld"))
  }
${WGSL_UNIFORMS}${
    wgslBinding(zL, 0, 0, "z", "read")
  }@group(0) @binding(1) var<storage, read_write> lse: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
var<workgroup> sv: array<vec2<f32>, ${WG}>;
${WGSL_TREE}
${MAIN}
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.N) { return; }
  let base = row * u.C;
  var m = bitcast<f32>(0xff800000u);
  for (var j = li; j < u.C; j = j + ${WG}u) { m = ulp_max(m, ld(base + j)); }
  m = wmax(li, m);
  var t = 0.0;
  if (ulp_finite(m)) {
    for (var j = li; j < u.C; j = j + ${WG}u) { t = t + exp(ld(base + j) - m); }
  }
  t = wsum(li, vec2<f32>(t, 0.0)).x;
  if (li == 0u) { lse[row] = select(m, m + log(t), ulp_finite(m)); }
}
`;
}

/** Pass 2, one workgroup: the mean over counted rows. Bindings: logits, tgt, lse, out, cnt. */
function meanSource(zL: Layout, signed: boolean, outL: Layout): string {
  const enc = wgslEncoder(outL);
  const mask = (2 ** outL.laneBits - 1) >>> 0;
  const store = outL.elem === "f16"
    ? `out[0] = f16(unpack2x16float(${enc.name}(v, 0u)).x);`
    : `out[0] = ${enc.name}(v, 0u) & ${mask}u;`;
  return `${needsF16([zL, outL]) ? "enable f16;\n" : ""}${
    wgslChunks([WGSL_HEAD], wgslLoad(zL, "z", "ld"), enc.chunks)
  }
${WGSL_UNIFORMS}${
    wgslBinding(zL, 0, 0, "z", "read")
  }@group(0) @binding(1) var<storage, read> tgt: array<u32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
${
    wgslBinding(outL, 0, 3, "out", "read_write")
  }@group(0) @binding(4) var<storage, read_write> cnt: array<f32>;
@group(0) @binding(5) var<uniform> u: U;
var<workgroup> sv: array<vec2<f32>, ${WG}>;
${WGSL_TREE}${targetFns(signed)}
${MAIN}
  var acc = vec2<f32>(0.0, 0.0);
  for (var r = li; r < u.N; r = r + ${WG}u) {
    if (counted(r)) { acc = acc + vec2<f32>(lse[r] - ld(r * u.C + cls(r)), 1.0); }
  }
  let s = wsum(li, acc);
  if (li == 0u) {
    cnt[0] = s.y;
    let v = s.x / max(s.y, 1.0);
    ${store}
  }
}
`;
}

/** Backward, a word of dz per invocation. Bindings: logits, tgt, lse, cnt, g, out. */
function gradSource(zL: Layout, signed: boolean, gL: Layout, outL: Layout): string {
  const enc = wgslEncoder(outL);
  const lanes = outL.lanes, bits = outL.laneBits, mask = (2 ** bits - 1) >>> 0;
  const store = lanes === 1
    ? `  let i = w;
  if (i >= u.N * u.C) { return; }
  ${
      outL.elem === "f16"
        ? `out[i] = f16(unpack2x16float(${enc.name}(val(i), 0u)).x);`
        : `out[i] = ${enc.name}(val(i), 0u);`
    }`
    : `  if (w * ${lanes}u >= u.N * u.C) { return; }
  var word = 0u;
  for (var l = 0u; l < ${lanes}u; l = l + 1u) {
    let i = w * ${lanes}u + l;
    if (i >= u.N * u.C) { break; }
    word = word | ((${enc.name}(val(i), 0u) & ${mask}u) << (l * ${bits}u));
  }
  out[w] = word;`;
  return `${needsF16([zL, gL, outL]) ? "enable f16;\n" : ""}${
    wgslChunks([WGSL_HEAD], wgslLoad(zL, "z", "ld"), wgslLoad(gL, "gin", "ldg"), enc.chunks)
  }
${WGSL_UNIFORMS}${
    wgslBinding(zL, 0, 0, "z", "read")
  }@group(0) @binding(1) var<storage, read> tgt: array<u32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<storage, read> cnt: array<f32>;
${wgslBinding(gL, 0, 4, "gin", "read")}${
    wgslBinding(outL, 0, 5, "out", "read_write")
  }@group(0) @binding(6) var<uniform> u: U;
${targetFns(signed)}
fn val(i: u32) -> f32 {
  let row = i / u.C;
  if (!counted(row)) { return 0.0; }
  let col = i - row * u.C;
  let p = exp(ld(i) - lse[row]);
  return (p - select(0.0, 1.0, col == cls(row))) * (ldg(0u) / max(cnt[0], 1.0));
}
${MAIN}
  let w = (wid.x + wid.y * nwg.x) * ${WG}u + li;
${store}
}
`;
}

// ---- dispatch ----------------------------------------------------------------------------------

function cachedKernel(
  rt: Runtime,
  key: string,
  access: ("read" | "read_write")[],
  build: () => string,
): Kernel {
  return rt.kernelFor(`loss|${key}`, key.split("|")[0], { buffers: access, uniform: true }, build);
}

const lk = (l: Layout) => `${l.dtype.name}:${l.elem}`;
const R = "read" as const, RW = "read_write" as const;

/** Options of `crossEntropyLast`. */
export interface CrossEntropyOptions {
  /** A target value whose rows do not count (neither in the sum nor in the mean's count). */
  ignoreIndex?: number;
}

/**
 * Mean cross-entropy of `logits` `[N, C]` against integer (i32/u32) `targets` `[N]` in fused
 * kernels: two dispatches forward (per-row logsumexp in f32, then the mean over the rows whose
 * target is not `ignoreIndex`, counted on the GPU), one backward. The loss has the logits'
 * dtype (f32 for integer logits), rounded once; it is 0 when every row is ignored (PyTorch
 * gives NaN). Targets outside `[0, C)` are clamped to the nearest class. `nn`'s
 * `crossEntropy` is the public entry point. @internal
 *
 * @example
 * ```ts
 * import { tensor } from "../mod.ts";
 * import { crossEntropyLast } from "./loss.ts";
 * const z = tensor([[1000, 1000], [0, 0], [5, 1]]);
 * const loss = crossEntropyLast(z, tensor(new Int32Array([0, 1, -100])), { ignoreIndex: -100 });
 * console.log((await loss.item()).toFixed(3)); // "0.693" (the ignored row does not count)
 * ```
 */
export function crossEntropyLast(
  logits: Tensor,
  targets: Tensor,
  opts: CrossEntropyOptions = {},
): Tensor {
  const op = "crossEntropy";
  if (!(logits instanceof Tensor) || !(targets instanceof Tensor)) {
    throw new ValueError(`${op}(): expects Tensor logits and targets`);
  }
  if (targets.dt.kind !== "int") {
    throw new DTypeError(
      `${op}(): targets must be an integer tensor (i32/u32), got ${targets.dtype}`,
    );
  }
  if (logits.ndim !== 2 || targets.ndim !== 1 || targets.shape[0] !== logits.shape[0]) {
    throw new ShapeError(
      `${op}(): needs logits [N, C] and targets [N], got ${fmtShape(logits.shape)} ` +
        `(${logits.dtype}) and ${fmtShape(targets.shape)} (${targets.dtype})`,
    );
  }
  const ign = opts.ignoreIndex;
  if (ign !== undefined && !Number.isInteger(ign)) {
    throw new ValueError(`${op}(): ignoreIndex must be an integer, got ${ign}`);
  }
  const [N, C] = logits.shape;
  if (C === 0 && N > 0) {
    throw new ShapeError(`${op}(): logits ${fmtShape(logits.shape)} have no classes`);
  }
  const zb = logits.buffer(`${op}()`), tb = targets.buffer(`${op}()`);
  const rt = currentRuntime();
  const outDt: DType = isFloat(logits.dt) ? logits.dt : float32;
  const out = Tensor.empty([], outDt);
  const lse = Tensor.empty([N], float32, "scratch");
  const cnt = Tensor.empty([1], float32, "scratch");
  const zL = layoutOf(logits.dt, rt), outL = layoutOf(outDt, rt);
  const signed = targets.dt.signed === true;
  const u = new Uint32Array([N, C, (ign ?? 0) >>> 0, ign === undefined ? 0 : 1]);
  if (N > 0) {
    const k1 = cachedKernel(rt, `crossEntropy_lse|${lk(zL)}`, [R, RW], () => lseSource(zL));
    rt.dispatch(k1, [zb, lse.buffer(op)], rt.grid(N), u);
  }
  const k2 = cachedKernel(
    rt,
    `crossEntropy_mean|${lk(zL)}|${signed}|${lk(outL)}`,
    [R, R, R, RW, RW],
    () => meanSource(zL, signed, outL),
  );
  rt.dispatch(k2, [zb, tb, lse.buffer(op), out.buffer(op), cnt.buffer(op)], [1], u);
  attach(out, op, [logits], (g) => {
    const gdt = isFloat(logits.dt) ? logits.dt : float32;
    const dz = Tensor.empty(logits.shape, gdt);
    const gL = layoutOf(g.dt, rt), dL = layoutOf(gdt, rt);
    const k3 = cachedKernel(
      rt,
      `crossEntropy_bwd|${lk(zL)}|${signed}|${lk(gL)}|${lk(dL)}`,
      [R, R, R, R, R, RW],
      () => gradSource(zL, signed, gL, dL),
    );
    const words = Math.ceil((N * C) / dL.lanes);
    rt.dispatch(
      k3,
      [logits, targets, lse, cnt, g, dz].map((t) => t.buffer(`${op} backward`)),
      rt.grid(Math.ceil(words / WG)),
      u,
    );
    lse.dispose();
    cnt.dispose();
    return [dz];
  });
  if (out.node === null) {
    lse.dispose();
    cnt.dispose();
  }
  return out;
}
