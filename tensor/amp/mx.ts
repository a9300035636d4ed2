/**
 * OCP Microscaling (MX) block quantisation: each block of 32 consecutive elements along one
 * axis shares a power-of-two scale X = 2^(floor(log2 amax) - emax_elem) (an E8M0 code,
 * 2^-127 ... 2^127), and each element is quantised to the element format with RNE, clamped to
 * its largest finite value. emax_elem is the exponent of that largest value: 8 for e4m3, 15
 * for e5m2, 4 for e3m2 (e3m2fn), 2 for e2m3 (e2m3fn) and e2m1 (e2m1fn).
 *
 * `mxQuantize` returns the dequantised values (element times its block's scale) in f32:
 * exactly what a GEMM on MX operands multiplies, so an MX GEMM is simulated by a matmul of
 * two operands quantised along their reduction dimension (what `autocast` does with an `mx`
 * FP8 recipe). Blocks whose largest magnitude is Inf or NaN decode to NaN (the E8M0 NaN
 * scale); an all-zero block stays zero. Scaling is done on the bits (exact for subnormal
 * inputs and outputs), since GPUs may flush f32 subnormals in arithmetic.
 *
 * References: OCP Microscaling Formats (MX) Specification v1.0 (2023), section 6.3;
 * Rouhani et al., "Microscaling Data Formats for Deep Learning" (arXiv:2310.10537, 2023).
 *
 * @module
 */

import { type DType, dtype, type DTypeLike, finfo, float32, wgslCodec } from "../../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../../errors.ts";
import { currentRuntime, type Program, program, type UniformSpec } from "../../gpu/mod.ts";
import { attach } from "../../autograd/graph.ts";
import { layoutOf } from "../../gpu/layout.ts";
import { fmtShape, Tensor } from "../core/tensor.ts";
import { cast } from "../ops/cast.ts";

/** Elements per MX block (OCP MX v1.0: k = 32 for every concrete format). */
export const MX_BLOCK = 32;

/** The OCP MX element formats by the names users type, as ulp dtypes. */
const MX_ELEMENTS: Readonly<Record<string, string>> = Object.freeze({
  e4m3: "e4m3",
  e4m3fn: "e4m3",
  e5m2: "e5m2",
  e3m2: "e3m2fn",
  e3m2fn: "e3m2fn",
  e2m3: "e2m3fn",
  e2m3fn: "e2m3fn",
  e2m1: "e2m1fn",
  e2m1fn: "e2m1fn",
});

/**
 * The element dtype of an MX format name: `e4m3`, `e5m2`, `e3m2`, `e2m3` or `e2m1` (FP6 and
 * FP4 are OCP's finite variants `e3m2fn`, `e2m3fn`, `e2m1fn`; those names work too).
 *
 * @example
 * ```ts
 * import { mxElementDtype } from "../mod.ts";
 * console.log(mxElementDtype("e2m1").name, mxElementDtype("e4m3").name); // e2m1fn e4m3
 * ```
 */
export function mxElementDtype(format: DTypeLike): DType {
  const name = typeof format === "string" ? format : format?.name;
  const canonical = typeof name === "string" && Object.hasOwn(MX_ELEMENTS, name)
    ? MX_ELEMENTS[name]
    : undefined;
  if (canonical === undefined) {
    throw new DTypeError(
      `mxQuantize(): '${String(name)}' is not an MX element format; use e4m3, e5m2 (FP8), ` +
        `e3m2, e2m3 (FP6) or e2m1 (FP4)`,
    );
  }
  return dtype(canonical);
}

/**
 * emax_elem of an element format: the exponent of its largest finite value (8 for e4m3).
 *
 * @example
 * ```ts
 * import { mxElementDtype, mxEmax } from "../mod.ts";
 * console.log(["e4m3", "e5m2", "e3m2", "e2m3", "e2m1"].map((f) => mxEmax(mxElementDtype(f)))); // [8, 15, 4, 2, 2]
 * ```
 */
export function mxEmax(element: DType): number {
  return Math.floor(Math.log2(finfo(element).max));
}

/** Options of `mxQuantize`. */
export interface MXQuantizeOptions {
  /** The axis the blocks run along (default -1, the last). */
  axis?: number;
}

/**
 * Quantises `x` to the MX format whose elements are `format` (`e4m3`, `e5m2`, `e3m2`,
 * `e2m3`, `e2m1`), in blocks of 32 consecutive elements along `axis` (a shorter last block
 * where the axis length is not a multiple of 32), and returns the dequantised values in f32.
 * The gradient passes through unchanged (straight-through), in `x`'s dtype.
 *
 * @example
 * ```ts
 * import { mxQuantize, tensor } from "../../mod.ts";
 * // amax 3: scale 2^(1 - 8) = 2^-7, so 0.01 becomes the e4m3 code nearest 0.01 * 128 = 1.28
 * const y = mxQuantize(tensor([3, 0.01, -1.1, 0]), "e4m3");
 * console.log(Array.from(await y.toArray())); // [3, 0.009765625, -1.125, 0]
 * // FP4 (e2m1): amax 3, scale 2^(1 - 2) = 0.5: elements of 2 * x rounded to {0, 0.5, ..., 6}
 * console.log(Array.from(await mxQuantize(tensor([3, 0.3, -1.1, 0]), "e2m1").toArray())); // [3, 0.25, -1, 0]
 * ```
 */
export function mxQuantize(x: Tensor, format: DTypeLike, opts: MXQuantizeOptions = {}): Tensor {
  if (!(x instanceof Tensor)) throw new ValueError("mxQuantize(): expects a tensor");
  const el = mxElementDtype(format);
  if (x.dt.kind !== "float") {
    throw new DTypeError(
      `mxQuantize(): x must have a float dtype (f32, bf16, f16, ...), got ${x.dtype}`,
    );
  }
  const rank = x.ndim;
  const axis = opts.axis ?? -1;
  const ax = rank === 0 ? 0 : axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(axis) || ax < 0 || ax >= Math.max(rank, 1)) {
    throw new ShapeError(
      `mxQuantize(): axis ${axis} is out of range for shape ${fmtShape(x.shape)}`,
    );
  }
  const len = rank === 0 ? 1 : x.shape[ax];
  const inner = x.shape.slice(ax + 1).reduce((a, b) => a * b, 1);
  const outer = len * inner === 0 ? 0 : x.size / (len * inner);
  const out = mxQuantizeBlocks(x, el, outer, len, inner);
  return attach(out, "mxQuantize", [x], (g) => [g.dt === x.dt ? g : cast(g, x.dt)]);
}

/**
 * The MX quantisation of `x` read as `[outer, len, inner]` with blocks along `len`, in f32,
 * outside the autograd graph (matmul's FP8 hook calls it along a GEMM's reduction axis).
 * @internal
 */
export function mxQuantizeBlocks(
  x: Tensor,
  element: DType,
  outer: number,
  len: number,
  inner: number,
): Tensor {
  const op = "mxQuantize()";
  x.buffer(op);
  const out = Tensor.empty(x.shape, float32);
  if (x.size === 0) return out;
  const perLine = Math.ceil(len / MX_BLOCK);
  const blocks = outer * perLine * inner;
  if (blocks === 0) return out;
  const emax = mxEmax(element);
  const enc = wgslCodec(element, { rounding: "rne", saturate: true });
  itemKernel(x, out, op, {
    key: `mx|${element.name}`,
    label: "mxQuantize",
    uniforms: [
      { name: "len", type: "u32" },
      { name: "inner", type: "u32" },
      { name: "perLine", type: "u32" },
      { name: "emax", type: "i32" },
    ],
    values: { len, inner, perLine, emax },
    items: blocks,
    chunks: [enc.chunks, [WGSL_LDEXP]],
    body: `  let c = k % u.inner;
  let r = k / u.inner;
  let start = (r % u.perLine) * ${MX_BLOCK}u;
  let cnt = min(${MX_BLOCK}u, u.len - start);
  let base = ((r / u.perLine) * u.len + start) * u.inner + c;
  var m = 0u;
  for (var j = 0u; j < cnt; j = j + 1u) {
    m = max(m, bitcast<u32>(ld_x(base + j * u.inner)) & 0x7fffffffu);
  }
  if (m >= 0x7f800000u) {
    for (var j = 0u; j < cnt; j = j + 1u) { put_out(base + j * u.inner, 0x7fc00000u); }
    return;
  }
  // the shared exponent: floor(log2 amax) - emax_elem, within E8M0's -127..127
  var se = -127i;
  if (m != 0u) {
    var fl = i32(m >> 23u) - 127i;
    if ((m >> 23u) == 0u) { fl = (31i - i32(countLeadingZeros(m))) - 149i; }
    se = clamp(fl - u.emax, -127i, 127i);
  }
  for (var j = 0u; j < cnt; j = j + 1u) {
    let i = base + j * u.inner;
    let y = bitcast<f32>(ulp_ldexp(bitcast<u32>(ld_x(i)), -se));
    let p = ${enc.decodeBits}(${enc.encode}(y, 0u));
    put_out(i, ulp_ldexp(p, se));
  }`,
    // blocks k0..k1 read and write elements from block k0's first to block k1's last
    range: (k0, k1) => {
      const first = (b: number) => {
        const r = Math.floor(b / inner), start = (r % perLine) * MX_BLOCK;
        return { at: (Math.floor(r / perLine) * len + start) * inner + (b % inner), start };
      };
      const lo = first(k0), hi = first(k1);
      return [lo.at, hi.at + (Math.min(MX_BLOCK, len - hi.start) - 1) * inner + 1];
    },
  });
  return out;
}

/** Invocations per workgroup of an `itemKernel`. */
const ITEM_WG = 64;

/**
 * What an `itemKernel` runs: its program key and label, uniforms (besides `items`) with their
 * values, WGSL chunks, the body and the elements an item range touches.
 */
interface ItemKernelSpec<U extends readonly UniformSpec[]> {
  /** Program cache key. */
  readonly key: string;
  /** The op's name in the program. */
  readonly label: string;
  /** Uniform fields besides `items`. */
  readonly uniforms: U;
  /** Their values. */
  readonly values: { readonly [K in U[number]["name"]]: number };
  /** Items: one an invocation. */
  readonly items: number;
  /** WGSL chunks the body needs (codecs, math). */
  readonly chunks?: readonly (readonly string[])[];
  /** Statements of item `k` (`k < u.items` checked): read `ld_x`, write `put_out`. */
  readonly body: string;
  /** The elements [lo, hi) of `x` and `out` that items `k0..k1` (inclusive) touch. */
  readonly range: (k0: number, k1: number) => [number, number];
}

/**
 * Runs a kernel of one item (an MX block, an RHT group) per invocation, 64 a workgroup, that
 * reads `x` and writes the f32 tensor `out` of its shape: the one launch of the block-wise
 * quantisers here and in `block_scaling.ts` (bindings, the item index and its bound, the
 * windows of both buffers). @internal
 *
 * @example
 * ```ts
 * import { float32 } from "../../dtypes/mod.ts";
 * import { Tensor } from "../core/tensor.ts";
 * import { tensor } from "../ops/creation.ts";
 * import { itemKernel } from "./mx.ts";
 * const x = tensor([1, 2, 3, 4]);
 * const out = Tensor.empty([4], float32);
 * itemKernel(x, out, "double", {
 *   key: "example|double",
 *   label: "double",
 *   uniforms: [],
 *   values: {},
 *   items: 4,
 *   body: "  put_out(k, bitcast<u32>(2.0 * ld_x(k)));",
 *   range: (k0, k1) => [k0, k1 + 1],
 * });
 * console.log(Array.from(await out.toArray())); // [2, 4, 6, 8]
 * ```
 */
export function itemKernel<const U extends readonly UniformSpec[]>(
  x: Tensor,
  out: Tensor,
  op: string,
  spec: ItemKernelSpec<U>,
): void {
  const rt = currentRuntime();
  // uniform names checked by ItemKernelSpec's `values`
  const p: Program<"x" | "out", string> = program(rt, spec.key, {
    label: spec.label,
    bindings: [
      { name: "x", type: layoutOf(x.dt, rt), access: "read" },
      { name: "out", type: layoutOf(float32, rt), access: "read_write" },
    ],
    uniforms: [...spec.uniforms, { name: "items", type: "u32" }],
    workgroupSize: ITEM_WG,
  }, () => ({
    chunks: spec.chunks ?? [],
    source: `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let k = wg * ${ITEM_WG}u + li;
  if (k >= u.items) { return; }
${spec.body}
}`,
  }));
  const range = (g0: number, g1: number) =>
    spec.range(g0 * ITEM_WG, Math.min(spec.items, g1 * ITEM_WG) - 1);
  p.run({
    buffers: { x: x.buffer(op), out: out.buffer(op) },
    uniforms: { ...spec.values, items: spec.items },
    groups: Math.ceil(spec.items / ITEM_WG),
    ranges: { x: range, out: range },
  });
}

/**
 * `ulp_ldexp(bits, k)`: the f32 with bits `bits` times 2^k, on the bits: exact where the
 * result is normal, rounded to nearest even where it is subnormal, Inf on overflow; zero,
 * Inf and NaN pass through.
 */
const WGSL_LDEXP = `fn ulp_ldexp(b: u32, k: i32) -> u32 {
  let sgn = b & 0x80000000u;
  let mag = b & 0x7fffffffu;
  if (mag == 0u || mag >= 0x7f800000u) { return b; }
  // mag = sig * 2^(e - 23) with sig in [2^23, 2^24)
  var sig: u32;
  var e: i32;
  if ((mag >> 23u) == 0u) {
    let top = 31i - i32(countLeadingZeros(mag));
    sig = mag << u32(23i - top);
    e = top - 149i;
  } else {
    sig = (mag & 0x7fffffu) | 0x800000u;
    e = i32(mag >> 23u) - 127i;
  }
  let ne = e + k;
  if (ne > 127i) { return sgn | 0x7f800000u; }
  if (ne >= -126i) { return sgn | (u32(ne + 127i) << 23u) | (sig & 0x7fffffu); }
  let sh = u32(-126i - ne);
  if (sh > 24u) { return sgn; }
  var q = sig >> sh;
  let rem = sig - (q << sh);
  let half = 1u << (sh - 1u);
  if (rem > half || (rem == half && (q & 1u) == 1u)) { q = q + 1u; }
  return sgn | q;
}
`;
