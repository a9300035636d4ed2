/**
 * Fused cross-entropy over logits `[N, C]` and integer class targets `[N]`, forward and
 * backward.
 *
 * Forward, two dispatches: one workgroup per row finds the row's maximum and `lse =
 * max + log(sum(exp(z - max)))` in f32 (saved for the backward pass) and the row's loss
 * `lse - z[target]`; then one workgroup sums the losses of the rows whose target is not
 * `ignoreIndex` and counts them, and writes the mean, rounded once to the loss dtype. The
 * count stays on the GPU (no readback).
 *
 * The kernels are programs of `gpu/program.ts`: logits, targets and row statistics larger
 * than one storage binding (GPT-2's logits `[1024, 50257]` f32 are 206 MB) are bound as
 * windows of rows; the mean then takes the rows in chunks of whole workgroup strides, each
 * lane's sums carried in f32 between dispatches (the same bits as one pass).
 *
 * Backward, one word-owning dispatch: `dz = (softmax(z) - onehot(target)) * g / count`, zero
 * on ignored rows, rounded once to the logits' dtype.
 *
 * A target outside `[0, C)` that is not `ignoreIndex` is clamped to the nearest class in the
 * kernel and recorded in the device's id flag (`_id_check.ts`): the next readback of any
 * tensor throws a `ValueError` naming it (PyTorch raises a device-side assert at its next
 * synchronization). An empty batch (N = 0) is a `ValueError` at the call (PyTorch's mean
 * over no rows is NaN).
 *
 * @module
 */

import { WG, WGSL_SUM } from "./norm.ts";
import { MAX_LOOP, windowElems } from "./reduce.ts";
import { type DType, float32, isFloat } from "../../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../../errors.ts";
import {
  currentRuntime,
  type Layout,
  layoutOf,
  type PooledBuffer,
  program,
} from "../../gpu/mod.ts";
import { attach } from "../../autograd/graph.ts";
import { fmtShape, Tensor } from "../core/tensor.ts";
import { ID_OPS, idFlag, WGSL_BAD_ID } from "../core/_id_check.ts";
import type { CastPolicy } from "../core/context.ts";

// N rows, C classes, the ignored target's bits and whether there is one.
const UNIFORMS = [
  { name: "N", type: "u32" },
  { name: "C", type: "u32" },
  { name: "ign", type: "u32" },
  { name: "hasIgn", type: "u32" },
] as const;

/** WGSL: whether row `r`'s target counts, and its class clamped into [0, C). */
function targetFns(signed: boolean): string {
  const clamp = signed ? "u32(clamp(bitcast<i32>(t), 0i, i32(u.C) - 1i))" : "min(t, u.C - 1u)";
  return `
fn counted(r: u32) -> bool { return u.hasIgn == 0u || get_tgt(r) != u.ign; }
fn cls(r: u32) -> u32 { let t = get_tgt(r); return ${clamp}; }
`;
}

const WGSL_TREE = `var<workgroup> sv: array<vec2<f32>, ${WG}>;
${WGSL_SUM}
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
fn ulp_finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }
`;

/**
 * Pass 1, a workgroup per row: the row's `lse` and its loss `lse - z[target]` (used when the
 * row counts), and a counted target outside [0, C) recorded in the id flag `bad`
 * (`_id_check.ts`). Bindings: logits, targets, lse, rl, bad.
 */
function lseBody(signed: boolean): string {
  const outside = signed ? "bitcast<i32>(t) < 0i || bitcast<i32>(t) >= i32(u.C)" : "t >= u.C";
  return `${WGSL_TREE}${targetFns(signed)}
${WGSL_BAD_ID}fn kernel(row: u32, lid: vec3u, li: u32) {
  let base = row * u.C;
  var m = bitcast<f32>(0xff800000u);
  for (var j = li; j < u.C; j = j + ${WG}u) { m = ulp_max(m, ld_z(base + j)); }
  m = wmax(li, m);
  var t = 0.0;
  if (ulp_finite(m)) {
    for (var j = li; j < u.C; j = j + ${WG}u) { t = t + exp(ld_z(base + j) - m); }
  }
  t = wsum(li, vec2<f32>(t, 0.0)).x;
  if (li == 0u) {
    let l = select(m, m + log(t), ulp_finite(m));
    put_lse(row, bitcast<u32>(l));
    put_rl(row, bitcast<u32>(l - ld_z(base + cls(row))));
    let t = get_tgt(row);
    if (counted(row) && (${outside})) { ulp_bad_id(bitcast<i32>(t), ${ID_OPS.crossEntropy.bit}u); }
  }
}
`;
}

/**
 * Pass 2, one workgroup: the mean of the losses of the counted rows among `r0..r1`. Bindings:
 * targets, rl, out, cnt (and `carry`: each lane's running sum and count, resumed unless
 * `first` and left unless `last`, so that rows can be taken in several dispatches).
 */
function meanBody(signed: boolean, carry: boolean): string {
  return `${WGSL_TREE}${targetFns(signed)}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  var acc = vec2<f32>(0.0, 0.0);
${carry ? "  if (u.first == 0u) { acc = vec2<f32>(carry[2u * li], carry[2u * li + 1u]); }\n" : ""}\
  for (var r = u.r0 + li; r < u.r1; r = r + ${WG}u) {
    if (counted(r)) { acc = acc + vec2<f32>(ld_rl(r), 1.0); }
  }
${
    carry
      ? "  if (u.last == 0u) {\n    carry[2u * li] = acc.x;\n    carry[2u * li + 1u] = acc.y;\n    return;\n  }\n"
      : ""
  }  let s = wsum(li, acc);
  if (li == 0u) {
    cnt[0] = s.y;
    st_out(0u, vec4<f32>(s.x / max(s.y, 1.0), 0.0, 0.0, 0.0), vec4<u32>(0u));
  }
}
`;
}

/** Backward, a word of dz per invocation. Bindings: logits, targets, lse, cnt, g, out. */
function gradBody(signed: boolean, outL: Layout): string {
  const lanes = outL.lanes;
  const store = lanes === 1
    ? `  if (w >= u.N * u.C) { return; }
  st_out(w, vec4<f32>(val(w)), vec4<u32>(0u));`
    : `  let i0 = w * ${lanes}u;
  if (i0 >= u.N * u.C) { return; }
  var v = vec4<f32>(0.0);
  v.x = val(i0);
${
      // the lanes unrolled (constant vector indices), each while inside the output
      Array.from(
        { length: lanes - 1 },
        (_, k) => `  if (i0 + ${k + 1}u < u.N * u.C) { v.${"yzw"[k]} = val(i0 + ${k + 1}u); }\n`,
      ).join("")}  st_out(w, v, vec4<u32>(0u));`;
  return `${targetFns(signed)}
fn val(i: u32) -> f32 {
  let row = i / u.C;
  if (!counted(row)) { return 0.0; }
  let col = i - row * u.C;
  let p = exp(ld_z(i) - ld_lse(row));
  return (p - select(0.0, 1.0, col == cls(row))) * (ld_g(0u) / max(cnt[0], 1.0));
}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let w = wg * ${WG}u + li;
${store}
}
`;
}

const R = "read" as const, RW = "read_write" as const;

/**
 * Estimated work per element (or row, for the mean), in nanoseconds of a CPU adapter (a
 * run's `cost`), measured on lavapipe.
 */
const COST = { lse: 8, mean: 2, grad: 12 };

/** Options of `crossEntropyLast`. */
/** Autocast's policy for the losses: they run in f32. */
export const LOSS_POLICY = { crossEntropy: "f32", mseLoss: "f32" } as const satisfies Record<
  string,
  CastPolicy
>;

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
 * import { tensor } from "../../mod.ts";
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
  if (N === 0) {
    throw new ValueError(
      `${op}(): the batch is empty (logits ${fmtShape(logits.shape)}, targets ` +
        `${fmtShape(targets.shape)}): a mean over no rows has no value; skip empty batches`,
    );
  }
  if (C === 0) {
    throw new ShapeError(`${op}(): logits ${fmtShape(logits.shape)} have no classes`);
  }
  const zb = logits.buffer(`${op}()`), tb = targets.buffer(`${op}()`);
  const rt = currentRuntime();
  const outDt: DType = isFloat(logits.dt) ? logits.dt : float32;
  const out = Tensor.empty([], outDt);
  const lse = Tensor.empty([N], float32, "scratch");
  const rl = Tensor.empty([N], float32, "scratch");
  const cnt = Tensor.empty([1], float32, "scratch");
  const zL = layoutOf(logits.dt, rt), tL = layoutOf(targets.dt, rt);
  const f32 = layoutOf(float32, rt), outL = layoutOf(outDt, rt);
  const signed = targets.dt.signed === true;
  const u = { N, C, ign: (ign ?? 0) >>> 0, hasIgn: ign === undefined ? 0 : 1 };
  const byRow = (g0: number, g1: number): [number, number] => [g0, g1];
  program(rt, `loss|crossEntropy_lse|${signed}`, {
    label: "crossEntropy_lse",
    bindings: [
      { name: "z", type: zL, access: R },
      { name: "tgt", type: tL, access: R },
      { name: "lse", type: f32, access: RW },
      { name: "rl", type: f32, access: RW },
      { name: "bad", type: "atomic<i32>", access: RW },
    ],
    uniforms: UNIFORMS,
    workgroupSize: WG,
  }, () => lseBody(signed)).run({
    buffers: {
      z: zb,
      tgt: tb,
      lse: lse.buffer(op),
      rl: rl.buffer(op),
      bad: idFlag(rt, "crossEntropy", C),
    },
    uniforms: u,
    groups: N,
    cost: N * C * COST.lse,
    ranges: { z: (g0, g1) => [g0 * C, g1 * C], tgt: byRow, lse: byRow, rl: byRow },
  });
  // the mean: one workgroup, over all rows at once or (rows larger than one binding) over
  // chunks of whole strides of the workgroup, each lane's sums carried between them
  const big = [tb, rl.buffer(op)].some((b) => Math.ceil(b.bytes / 4) * 4 > rt.maxBindingBytes);
  // (and at most WG * MAX_LOOP rows: each lane's loop stays under llvmpipe's cap)
  const chunk = Math.min(
    big
      ? Math.max(WG, Math.floor(Math.min(windowElems(rt, tL), windowElems(rt, f32)) / WG) * WG)
      : N,
    WG * MAX_LOOP,
  );
  const carry = chunk < N ? Tensor.empty([2 * WG], float32, "scratch") : null;
  const mean = program(rt, `loss|crossEntropy_mean|${signed}|${carry !== null}`, {
    label: "crossEntropy_mean",
    bindings: [
      { name: "tgt", type: tL, access: R },
      { name: "rl", type: f32, access: R },
      { name: "out", type: outL, access: RW },
      { name: "cnt", type: "f32", access: RW },
      ...(carry ? [{ name: "carry", type: "f32" as const, access: RW }] : []),
    ],
    uniforms: [
      ...UNIFORMS,
      { name: "r0", type: "u32" },
      { name: "r1", type: "u32" },
      { name: "first", type: "u32" },
      { name: "last", type: "u32" },
    ],
    workgroupSize: WG,
  }, () => meanBody(signed, carry !== null));
  const buffers: Record<string, PooledBuffer> = {
    tgt: tb,
    rl: rl.buffer(op),
    out: out.buffer(op),
    cnt: cnt.buffer(op),
  };
  if (carry) buffers.carry = carry.buffer(op);
  for (let r0 = 0; r0 < N; r0 += chunk) {
    const r1 = Math.min(N, r0 + chunk);
    mean.run({
      buffers,
      uniforms: { ...u, r0, r1, first: r0 === 0 ? 1 : 0, last: r1 === N ? 1 : 0 },
      groups: 1,
      cost: (r1 - r0) * COST.mean,
      ranges: { tgt: () => [r0, r1], rl: () => [r0, r1] },
    });
  }
  carry?.dispose();
  rl.dispose();
  attach(out, op, [logits], (g) => {
    const gdt = isFloat(logits.dt) ? logits.dt : float32;
    const dz = Tensor.empty(logits.shape, gdt);
    const gL = layoutOf(g.dt, rt), dL = layoutOf(gdt, rt);
    // a workgroup writes WG words of dz: elements [e0, e1) of dz and the logits, their rows
    const n = N * C, per = WG * dL.lanes;
    const elems = (g0: number, g1: number): [number, number] => [
      g0 * per,
      Math.min(n, g1 * per),
    ];
    const rows = (g0: number, g1: number): [number, number] => {
      const [e0, e1] = elems(g0, g1);
      return e1 <= e0 ? [0, 0] : [Math.floor(e0 / C), Math.floor((e1 - 1) / C) + 1];
    };
    const bop = `${op} backward`;
    program(rt, `loss|crossEntropy_bwd|${signed}`, {
      label: "crossEntropy_bwd",
      bindings: [
        { name: "z", type: zL, access: R },
        { name: "tgt", type: tL, access: R },
        { name: "lse", type: f32, access: R },
        { name: "cnt", type: "f32", access: R },
        { name: "g", type: gL, access: R },
        { name: "out", type: dL, access: RW },
      ],
      uniforms: UNIFORMS,
      workgroupSize: WG,
    }, () => gradBody(signed, dL)).run({
      buffers: {
        z: logits.buffer(bop),
        tgt: targets.buffer(bop),
        lse: lse.buffer(bop),
        cnt: cnt.buffer(bop),
        g: g.buffer(bop),
        out: dz.buffer(bop),
      },
      uniforms: u,
      groups: Math.ceil(Math.ceil(n / dL.lanes) / WG),
      cost: n * COST.grad,
      ranges: { z: elems, out: elems, tgt: rows, lse: rows },
    });
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
