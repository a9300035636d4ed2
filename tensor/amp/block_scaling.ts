/**
 * Block-scaled quantisation for the FP8 recipes of `fp8.ts` beyond one scale per tensor:
 * rowwise scaling (torchao's `ROWWISE`: one scale per row of A and per column of B, rounded
 * down to a power of two), block scaling (Transformer Engine's `Float8BlockScaling` and
 * DeepSeek-V3: 1x128 tiles for activations and gradients, 128x128 blocks for weights) and
 * NVFP4 (E2M1 elements, an E4M3 scale per 16 values and an f32 per-tensor scale).
 *
 * A matrix `[rows, cols]` (a tensor's last two dimensions; the leading ones are a batch) is
 * cut into blocks of `[br, bc]` elements from its first element. One invocation owns a block
 * (a workgroup of 64, with the amax reduced in workgroup memory, for blocks of more than 1024
 * elements): it finds the block's amax, then quantises and dequantises its elements. What a GEMM
 * on such operands computes, `A_q B_q / (s_A s_B)` with the scales of the blocks each
 * product touches, is simulated exactly by a GEMM of the dequantised operands (`q / s`, or
 * `q * d` for NVFP4's decode scale), accumulated in f32: that is what `autocast` multiplies.
 *
 * FP8 blocks (`blockQuantize`): `s = fmax / max(amax, eps)`, 1 when that is 0, Inf or NaN,
 * f32's max when it overflows, with `powerOfTwo` its mantissa cleared (Transformer Engine's
 * `compute_scale_from_amax`; the power of two is computed exactly on the bits, so it does
 * not depend on the device's division); codes `cast_sat(x * s)` with RNE; values
 * `code * (1 / s)`.
 *
 * NVFP4 (`nvfp4Quantize`): the tensor's decode scale `S = amax(tensor) / (448 * 6)` (1 for
 * an all-zero tensor), per block the E4M3 decode scale `sb = roundUp_e4m3((amax(block) / 6)
 * / S)` (rounded up, so no element exceeds 6), `d = sb * S` in f32, codes
 * `e2m1_sat(x / d)` with RNE, or stochastic rounding from the counter-based stream
 * (`randomU32(seed, element index)`) for gradients; values `code * d`. A tensor whose amax is
 * Inf or NaN gives NaN values.
 *
 * References: NVIDIA Transformer Engine, `Float8BlockScaling`, `NVFP4BlockScaling` and
 * `compute_scale_from_amax`; torchao `Float8LinearRecipeName.ROWWISE`; DeepSeek-AI,
 * "DeepSeek-V3 Technical Report" (arXiv:2412.19437, 2024), section 3.3; NVIDIA cuDNN, block
 * scale quantize.
 *
 * @module
 */

import { type DType, dtype, e4m3, finfo, float32, WGSL_RNG, wgslCodec } from "../../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../../errors.ts";
import { currentRuntime, program } from "../../gpu/mod.ts";
import { noGrad } from "../../autograd/graph.ts";
import { layoutOf } from "../../gpu/layout.ts";
import { fmtShape, isTensor, sameShape, Tensor } from "../core/tensor.ts";
import { cast } from "../ops/cast.ts";
import { tensorAmax } from "./scaling.ts";
import { itemKernel } from "./mx.ts";

/** Elements of an NVFP4 block (1x16; 16x16 for weights). */
export const NVFP4_BLOCK = 16;

/** Invocations per workgroup. */
const WG = 64;

/** The most iterations a loop may run (llvmpipe stops longer loops without a word). */
const LOOP_CAP = 65535;

/** The largest E2M1 magnitude times the largest E4M3 one: NVFP4's per-tensor range. */
const NVFP4_RANGE = 6 * 448;

/** A block-scaled tensor: codes, the scale of each block, and the values they stand for. */
export interface BlockQuantized {
  /** The codes (`e4m3` or `e5m2`), in `x`'s shape. */
  readonly data: Tensor;
  /** `[...batch, ceil(rows / br), ceil(cols / bc)]` f32: each block's scale `s` (x ~ data / s). */
  readonly scale: Tensor;
  /** `data / scale` in f32, in `x`'s shape: what a GEMM on the codes multiplies. */
  readonly values: Tensor;
}

/** Options of `blockQuantize`. */
export interface BlockQuantizeOptions {
  /** The FP8 format of the codes, `e4m3` (default) or `e5m2`. */
  dtype?: "e4m3" | "e5m2";
  /** Block size `[rows, cols]` over the last two dimensions, e.g. `[1, 128]` or `[128, 128]`. */
  block: readonly [number, number];
  /** Round each scale down to a power of two (default true, as Transformer Engine). */
  powerOfTwo?: boolean;
  /** Floor of the amax (default 0; torchao's rowwise scaling uses 1e-12). */
  amaxEpsilon?: number;
}

/**
 * Quantises `x` to FP8 with one f32 scale per block of its last two dimensions
 * (`s = fmax / max(amax, eps)`, 1 for an amax of 0, Inf or NaN, f32's max on overflow,
 * rounded down to a power of two unless `powerOfTwo` is false), outside the autograd graph.
 * `block: [1, n]` scales rows (`n` their length: rowwise), `[1, 128]` 1x128 tiles,
 * `[128, 128]` weight blocks.
 *
 * @example
 * ```ts
 * import { tensor } from "../../mod.ts";
 * import { blockQuantize } from "../mod.ts";
 * // two rows, one scale each: 448 / 3 -> 128 and 448 / 0.5 -> 512 (powers of two)
 * const q = blockQuantize(tensor([[3, -1], [0.5, 0.25]]), { block: [1, 2] });
 * console.log(Array.from(await q.scale.toArray())); // [128, 512]
 * console.log(Array.from(await q.values.toArray())); // [3, -1, 0.5, 0.25]
 * ```
 */
export function blockQuantize(x: Tensor, opts: BlockQuantizeOptions): BlockQuantized {
  const op = "blockQuantize()";
  checkInput(x, op);
  const fmt = dtype(opts?.dtype ?? "e4m3");
  if (fmt.name !== "e4m3" && fmt.name !== "e5m2") {
    throw new DTypeError(`${op}: dtype must be 'e4m3' or 'e5m2', got '${fmt.name}'`);
  }
  const eps = opts.amaxEpsilon ?? 0;
  if (typeof eps !== "number" || !(eps >= 0) || !Number.isFinite(eps)) {
    throw new ValueError(`${op}: amaxEpsilon must be a finite number >= 0, got ${eps}`);
  }
  const m = matrixOf(x, opts?.block, op);
  const r = groupQuantize(x, m, {
    kind: "fp8",
    fmt,
    pow2: opts.powerOfTwo ?? true,
    eps,
  }, true);
  const data = cast(r.codes!, fmt);
  r.codes!.dispose();
  return { data, scale: r.scales!, values: r.values };
}

/** An NVFP4 tensor: E2M1 codes, an E4M3 decode scale per block and an f32 per tensor. */
export interface NVFP4Quantized {
  /** The E2M1 codes (`e2m1fn`), in `x`'s shape. */
  readonly data: Tensor;
  /** `[...batch, ceil(rows / br), ceil(cols / bc)]` e4m3: each block's decode scale `sb`. */
  readonly blockScale: Tensor;
  /** One f32: the tensor's decode scale `S = amax / (448 * 6)` (x ~ data * sb * S). */
  readonly tensorScale: Tensor;
  /** `data * (sb * S)` in f32, in `x`'s shape: what a GEMM on the codes multiplies. */
  readonly values: Tensor;
}

/** Options of `nvfp4Quantize`. */
export interface NVFP4QuantizeOptions {
  /** Block size over the last two dimensions: `[1, 16]` (default), `[16, 1]` or `[16, 16]`. */
  block?: readonly [number, number];
  /** Round the elements stochastically (gradients) instead of to nearest even. */
  stochastic?: boolean;
  /** Stream of the stochastic rounding: element i draws `randomU32(seed, i)` (default 0). */
  seed?: number;
}

/**
 * Quantises `x` to simulated NVFP4 (E2M1 elements, an E4M3 decode scale per block of its
 * last two dimensions, an f32 decode scale for the tensor), outside the autograd graph.
 *
 * @example
 * ```ts
 * import { tensor } from "../../mod.ts";
 * import { nvfp4Quantize } from "../mod.ts";
 * // amax 6: S = 6 / 2688 (in f32); the block's scale (6 / 6) / S rounds up to 448; d ~ 1
 * const q = nvfp4Quantize(tensor([6, 2.4, -0.7, 0]));
 * console.log(Array.from(await q.blockScale.toArray())); // [448]
 * console.log(Array.from(await q.values.toArray())); // [6, 2, -0.5, 0]
 * ```
 */
export function nvfp4Quantize(x: Tensor, opts: NVFP4QuantizeOptions = {}): NVFP4Quantized {
  const op = "nvfp4Quantize()";
  checkInput(x, op);
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed)) throw new ValueError(`${op}: seed must be an integer, got ${seed}`);
  const m = matrixOf(x, opts.block ?? [1, NVFP4_BLOCK], op);
  const r = groupQuantize(x, m, {
    kind: "nvfp4",
    stochastic: opts.stochastic === true,
    seed,
  }, true);
  const data = cast(r.codes!, dtype("e2m1fn")), blockScale = cast(r.scales!, e4m3);
  r.codes!.dispose();
  r.scales!.dispose();
  return { data, blockScale, tensorScale: r.tensorScale!, values: r.values };
}

// ---- shared by the recipes and autocast's GEMM hook ----------------------------------------

/** A tensor read as `[batch, rows, cols]`, cut into `[br, bc]` blocks. @internal */
export interface BlockMatrix {
  /** Matrices (the leading dimensions' product). */
  readonly batch: number;
  /** Rows of each matrix. */
  readonly rows: number;
  /** Columns of each matrix. */
  readonly cols: number;
  /** Block rows. */
  readonly br: number;
  /** Block columns. */
  readonly bc: number;
  /** The shape of the per-block scales. */
  readonly scaleShape: number[];
}

/** How a block's scale and codes are made. @internal */
export type BlockSpec =
  | { kind: "fp8"; fmt: DType; pow2: boolean; eps: number }
  | { kind: "nvfp4"; stochastic: boolean; seed: number };

/** The outputs of one block quantisation. @internal */
export interface GroupResult {
  /** The dequantised values, f32. */
  values: Tensor;
  /** The codes' values (f32), when asked for. */
  codes?: Tensor;
  /** Per block: the FP8 scale `s`, or NVFP4's decode scale `sb` (f32), when asked for. */
  scales?: Tensor;
  /** NVFP4: the tensor's decode scale, when asked for. */
  tensorScale?: Tensor;
}

function checkInput(x: Tensor, op: string): void {
  if (!isTensor(x)) throw new ValueError(`${op}: expects a tensor`);
  if (x.dt.kind !== "float") {
    throw new DTypeError(`${op}: x must have a float dtype (f32, bf16, f16, ...), got ${x.dtype}`);
  }
}

/** `x`'s last two dimensions as the matrix, blocks `block` (checked). */
function matrixOf(x: Tensor, block: readonly [number, number] | undefined, op: string) {
  const rows = x.ndim >= 2 ? x.shape[x.ndim - 2] : 1;
  const cols = x.ndim >= 1 ? x.shape[x.ndim - 1] : 1;
  if (
    !Array.isArray(block) || block.length !== 2 ||
    !block.every((b) => Number.isSafeInteger(b) && b >= 1)
  ) {
    throw new ShapeError(
      `${op}: block must be two positive integers [rows, cols], such as [1, 128], got ${
        JSON.stringify(block)
      } (x has shape ${fmtShape(x.shape)})`,
    );
  }
  return blockMatrix(x.size, rows, cols, block[0], block[1], x.shape.slice(0, -2));
}

/**
 * `groupQuantize` of the transpose of the block matrix `m` of `x` (blocks `[bc, br]`), its
 * results transposed back to `x`'s layout and `m`'s scale shape. Outside the autograd graph.
 */
function viaTranspose(x: Tensor, m: BlockMatrix, spec: BlockSpec, full: boolean): GroupResult {
  return noGrad(() => {
    const { batch, rows: R, cols: C } = m;
    // t read as [batch, rows, cols] and transposed, in `shape` if given: one copy (the
    // transpose) where t's last two dimensions are rows and cols and the transpose has that
    // shape (blockQuantize's x and results), else reshaping copies around it (each freed)
    const swap = (t: Tensor, rows: number, cols: number, shape?: readonly number[]): Tensor => {
      const a = sameShape(t.shape.slice(-2), [rows, cols]) ? t : t.reshape([batch, rows, cols]);
      const b = a.transpose(-2, -1);
      if (a !== t) a.dispose();
      if (shape === undefined || sameShape(b.shape, shape)) return b;
      const c = b.reshape(shape);
      b.dispose();
      return c;
    };
    const xt = swap(x, R, C); // (groupQuantize reads it as mt, whatever its shape)
    const mt = blockMatrix(x.size, C, R, m.bc, m.br, [batch]);
    const r = groupQuantize(xt, mt, spec, full, true);
    xt.dispose();
    const back = (t: Tensor | undefined, rows: number, cols: number, shape: readonly number[]) => {
      if (t === undefined) return undefined;
      const b = swap(t, rows, cols, shape);
      t.dispose();
      return b;
    };
    const out: GroupResult = { values: back(r.values, C, R, x.shape)! };
    const codes = back(r.codes, C, R, x.shape);
    if (codes) out.codes = codes;
    const scales = back(r.scales, Math.ceil(C / m.bc), Math.ceil(R / m.br), m.scaleShape);
    if (scales) out.scales = scales;
    return out;
  });
}

/** The block matrix of `size` elements read as `[size / (rows cols), rows, cols]`. @internal */
export function blockMatrix(
  size: number,
  rows: number,
  cols: number,
  br: number,
  bc: number,
  lead?: number[],
): BlockMatrix {
  const batch = rows * cols === 0 ? 0 : size / (rows * cols);
  const nbr = Math.ceil(rows / br), nbc = Math.ceil(cols / bc);
  return {
    batch,
    rows,
    cols,
    br,
    bc,
    scaleShape: [...(lead ?? (batch === 1 ? [] : [batch])), nbr, nbc],
  };
}

/**
 * Quantises `x` read as the block matrix `m` by `spec`; `full` also returns the codes and
 * scales (the GEMM hook needs only the values). One dispatch (two for NVFP4: the tensor's
 * amax first). @internal
 */
export function groupQuantize(
  x: Tensor,
  m: BlockMatrix,
  spec: BlockSpec,
  full: boolean,
  transposed = false,
): GroupResult {
  const rt = currentRuntime();
  const op = spec.kind === "fp8" ? "blockQuantize()" : "nvfp4Quantize()";
  x.buffer(op);
  const { rows: R, cols: C, br, bc } = m;
  // Blocks taller than a row (rowwise scaling along a reduction axis that is the matrix's
  // rows: whole columns) span min(R, br) rows of the matrix, which can be more than one
  // binding holds: such an fp8 matrix is quantised through its transpose, whose blocks are
  // along its rows, and the results are transposed back (the same amax per block, the same
  // scales and codes: rounding to nearest does not depend on where an element is; NVFP4's
  // stochastic draws do, and its blocks are at most 16 rows tall)
  if (
    !transposed && spec.kind === "fp8" && R > 1 && br > 1 && m.batch > 0 &&
    Math.min(R, br) * C * 4 > rt.maxBindingBytes
  ) {
    return viaTranspose(x, m, spec, full);
  }
  const nbr = Math.ceil(R / br), nbc = Math.ceil(C / bc);
  const blocks = m.batch * nbr * nbc;
  // a block of more than 1024 elements is a workgroup's (64 invocations share it: 128x128
  // weight blocks, long rows), a smaller one an invocation's (on lavapipe a workgroup per 1x128
  // tile took 3x the time of an invocation per tile)
  const per = Math.min(R, br) * Math.min(C, bc);
  const wide = per > 1024;
  if (Math.ceil(per / WG) > LOOP_CAP) {
    throw new ValueError(
      `${op}: a block of ${Math.min(R, br)} x ${Math.min(C, bc)} elements is more than ` +
        `${WG * LOOP_CAP} (${WG} invocations loop over a block, and llvmpipe ends loops after ` +
        `${LOOP_CAP} iterations); use smaller blocks or fewer rows per line`,
    );
  }
  const values = Tensor.empty(x.shape, float32);
  const codes = full ? Tensor.empty(x.shape, float32) : null;
  const scales = full ? Tensor.empty(m.scaleShape, float32) : null;
  const nv = spec.kind === "nvfp4";
  const tam = nv ? tensorAmax(x, op) : null;
  const out: GroupResult = { values };
  if (codes) out.codes = codes;
  if (scales) out.scales = scales;
  if (nv && full) {
    out.tensorScale = nvfp4TensorScale(tam!);
  }
  if (blocks === 0 || x.size === 0) {
    tam?.dispose();
    return out;
  }
  const el = nv ? dtype("e2m1fn") : spec.fmt;
  const sr = nv && spec.stochastic;
  const enc = wgslCodec(el, { rounding: sr ? "stochastic" : "rne", saturate: true });
  const f32L = layoutOf(float32, rt);
  const key = `blockq|${spec.kind}|${el.name}|${sr ? "sr" : "rne"}|${full ? 1 : 0}|${+wide}`;
  const p = program(rt, key, {
    label: spec.kind === "fp8" ? "blockQuantize" : "nvfp4Quantize",
    bindings: [
      { name: "x", type: layoutOf(x.dt, rt), access: "read" },
      { name: "out", type: f32L, access: "read_write" },
      ...(full
        ? [
          { name: "codes", type: f32L, access: "read_write" as const },
          { name: "scales", type: f32L, access: "read_write" as const },
        ]
        : []),
      ...(nv ? [{ name: "tam", type: "u32" as const, access: "read" as const }] : []),
    ],
    uniforms: [
      { name: "R", type: "u32" },
      { name: "C", type: "u32" },
      { name: "br", type: "u32" },
      { name: "bc", type: "u32" },
      { name: "nbr", type: "u32" },
      { name: "nbc", type: "u32" },
      { name: "blocks", type: "u32" },
      { name: "fmax", type: "f32" },
      { name: "eps", type: "u32" },
      { name: "pow2", type: "u32" },
      { name: "seed", type: "u32" },
    ],
    workgroupSize: 64,
  }, () => {
    const keepCode = full ? "put_codes(i, qv);" : "";
    // each element i of the block (the invocation's share of it when wide)
    const each = (body: string) =>
      wide
        ? `for (var e = li; e < n; e = e + ${WG}u) {
    let i = base + (r0 + e / w) * u.C + c0 + e % w;
    ${body}
  }`
        : `for (var r = r0; r < r1; r = r + 1u) {
    for (var c = c0; c < c1; c = c + 1u) {
      let i = base + r * u.C + c;
      ${body}
    }
  }`;
    const first = wide ? "li == 0u" : "true";
    const body = nv
      ? `
  let tb = tam[0] & 0x7fffffffu;
  if (tb >= 0x7f800000u) {
    ${each("put_out(i, 0x7fc00000u);")}
    ${full ? `if (${first}) { put_scales(k, 0x7fc00000u); }` : ""}
    return;
  }
  let S = select(bitcast<f32>(tb) / ${NVFP4_RANGE}.0, 1.0, tb == 0u);
  let sb = e4m3_up((bitcast<f32>(m) / 6.0) / S);
  let d = sb * S;
  ${full ? `if (${first}) { put_scales(k, bitcast<u32>(sb)); }` : ""}
  ${
        each(`var qv = 0u;
    if (d > 0.0) {
      qv = ${enc.decodeBits}(${enc.encode}(ld_x(i) / d, ${sr ? "ulp_rand(u.seed, i)" : "0u"}));
    }
    ${keepCode}
    put_out(i, bitcast<u32>(bitcast<f32>(qv) * d));`)
      }`
      : `
  let s = scale_of(m);
  let inv = 1.0 / s;
  ${full ? `if (${first}) { put_scales(k, bitcast<u32>(s)); }` : ""}
  ${
        each(`let qv = ${enc.decodeBits}(${enc.encode}(ld_x(i) * s, 0u));
    ${keepCode}
    put_out(i, bitcast<u32>(bitcast<f32>(qv) * inv));`)
      }`;
    return {
      chunks: [enc.chunks, [...(sr ? [WGSL_RNG] : []), nv ? WGSL_E4M3_UP : WGSL_SCALE]],
      source: `${wide ? "var<workgroup> bmax: atomic<u32>;\n" : ""}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let k = ${wide ? "wg" : `wg * ${WG}u + li`};
  if (k >= u.blocks) { return; }
  let bj = k % u.nbc;
  let t = k / u.nbc;
  let bi = t % u.nbr;
  let base = (t / u.nbr) * u.R * u.C;
  let r0 = bi * u.br;
  let r1 = min(u.R, r0 + u.br);
  let c0 = bj * u.bc;
  let c1 = min(u.C, c0 + u.bc);
  let w = c1 - c0;
  let n = (r1 - r0) * w;
  var m0 = 0u;
  ${each("m0 = max(m0, bitcast<u32>(ld_x(i)) & 0x7fffffffu);")}
${
        wide
          ? `  atomicMax(&bmax, m0);
  workgroupBarrier();
  let m = atomicLoad(&bmax);`
          : "  let m = m0;"
      }
${body}
}`,
    };
  });
  // blocks k0 .. k1-1 (a workgroup's when wide, else 64 per workgroup) touch elements from the
  // first one's first to the last one's last
  const per1 = wide ? 1 : WG;
  const first = (k: number) => {
    const bj = k % nbc, t = Math.floor(k / nbc), bi = t % nbr, b = Math.floor(t / nbr);
    return b * R * C + bi * br * C + bj * bc;
  };
  const last = (k: number) => {
    const bj = k % nbc, t = Math.floor(k / nbc), bi = t % nbr, b = Math.floor(t / nbr);
    return b * R * C + (Math.min(R, (bi + 1) * br) - 1) * C + Math.min(C, (bj + 1) * bc) - 1;
  };
  const range = (g0: number, g1: number): [number, number] => [
    first(g0 * per1),
    last(Math.min(blocks, g1 * per1) - 1) + 1,
  ];
  const fmax = finfo(el).max;
  p.run({
    buffers: {
      x: x.buffer(op),
      out: values.buffer(op),
      ...(full ? { codes: codes!.buffer(op), scales: scales!.buffer(op) } : {}),
      ...(nv ? { tam: tam!.buffer(op) } : {}),
    },
    uniforms: {
      R,
      C,
      br,
      bc,
      nbr,
      nbc,
      blocks,
      fmax,
      eps: spec.kind === "fp8" ? f32Bits(spec.eps) : 0,
      pow2: spec.kind === "fp8" && spec.pow2 ? 1 : 0,
      seed: spec.kind === "nvfp4" ? spec.seed >>> 0 : 0,
    },
    groups: Math.ceil(blocks / per1),
    ranges: full
      ? {
        x: range,
        out: range,
        codes: range,
        scales: (g0, g1) => [g0 * per1, Math.min(blocks, g1 * per1)],
      }
      : { x: range, out: range },
  });
  tam?.dispose();
  return out;
}

/**
 * Transformer Engine's sign vector of NVFP4's random Hadamard transform (fixed, as TE's
 * `get_wgrad_sign_vector`).
 */
export const RHT_SIGNS: readonly number[] = Object.freeze([
  1,
  1,
  1,
  -1,
  1,
  -1,
  -1,
  -1,
  -1,
  -1,
  -1,
  1,
  -1,
  1,
  -1,
  -1,
]);

/**
 * NVFP4's 16-point random Hadamard transform of `x` read as `[batch, rows, cols]`, along its
 * rows (`rows` a multiple of 16), into a new f32 tensor: each group of 16 consecutive rows of
 * a column becomes `y_i = (1/4) sum_j H_ij s_j x_j` (H Sylvester's Hadamard matrix, s the
 * signs, the sum in f32 in order j = 0..15), Transformer Engine's `x @ (diag(s) H / 4)`. The
 * transform is orthogonal, so `(H x)^T (H g) = x^T g`: applied to both inputs of the
 * weight-gradient GEMM it spreads outliers over 16 values before they are quantised.
 * @internal
 */
export function randomHadamard16(x: Tensor, rows: number, cols: number): Tensor {
  const op = "nvfp4 random Hadamard transform";
  if (rows % 16 !== 0 || rows * cols === 0 || x.size % (rows * cols) !== 0) {
    throw new ShapeError(
      `${op}: needs a multiple of 16 rows, got ${rows} rows x ${cols} cols of ${fmtShape(x.shape)}`,
    );
  }
  const out = Tensor.empty(x.shape, float32);
  const groups = x.size / 16;
  if (groups === 0) return out;
  const signs = RHT_SIGNS.map((v) => (v < 0 ? 1 : 0)).reduce<number>(
    (m, b, i) => m | (b << i),
    0,
  );
  itemKernel(x, out, op, {
    key: "nvfp4|rht16",
    label: op,
    uniforms: [{ name: "C", type: "u32" }, { name: "signs", type: "u32" }],
    values: { C: cols, signs },
    items: groups,
    body:
      `  // group k: column k % C of the 16 rows starting at row 16 (k / C) (a batch's rows follow on)
  let base = (k / u.C) * 16u * u.C + k % u.C;
  var v: array<f32, 16>;
  for (var j = 0u; j < 16u; j = j + 1u) {
    let xj = ld_x(base + j * u.C);
    v[j] = select(xj, -xj, ((u.signs >> j) & 1u) == 1u);
  }
  for (var i = 0u; i < 16u; i = i + 1u) {
    var acc = 0.0;
    for (var j = 0u; j < 16u; j = j + 1u) {
      acc = acc + select(v[j], -v[j], (countOneBits(i & j) & 1u) == 1u);
    }
    put_out(base + i * u.C, bitcast<u32>(acc * 0.25));
  }`,
    // groups k0..k1: from group k0's first element to group k1's last (15 rows below its first)
    range: (k0, k1) => [
      Math.floor(k0 / cols) * 16 * cols + k0 % cols,
      Math.floor(k1 / cols) * 16 * cols + (k1 % cols) + 15 * cols + 1,
    ],
  });
  return out;
}

/** NVFP4's per-tensor decode scale from the amax bits (a one-element f32 tensor). */
function nvfp4TensorScale(tam: Tensor): Tensor {
  const rt = currentRuntime();
  const t = Tensor.empty([], float32);
  program(rt, "nvfp4|tensorscale", {
    label: "nvfp4Quantize",
    bindings: [
      { name: "tam", type: "u32", access: "read" },
      { name: "ts", type: "u32", access: "read_write" },
    ],
    uniforms: [],
    workgroupSize: 1,
  }, () => `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let tb = tam[0] & 0x7fffffffu;
  var S = select(bitcast<f32>(tb) / ${NVFP4_RANGE}.0, 1.0, tb == 0u);
  if (tb >= 0x7f800000u) { S = bitcast<f32>(0x7fc00000u); }
  ts[0] = bitcast<u32>(S);
}`).run({
    buffers: { tam: tam.buffer("nvfp4Quantize()"), ts: t.buffer("nvfp4Quantize()") },
    uniforms: {},
    groups: 1,
  });
  return t;
}

/** The bits of `v` rounded to f32. */
function f32Bits(v: number): number {
  return new Uint32Array(Float32Array.of(v).buffer)[0];
}

/**
 * `scale_of(amax bits)`: Transformer Engine's `compute_scale_from_amax` (epsilon floor, 1 for
 * an amax of 0, Inf or NaN, f32's max on overflow); the power of two is
 * `2^floor(log2(fmax / amax))` from the exponents and mantissas (exact: the rounded quotient
 * never reaches the next power of two), 2^127 on overflow (f32's max with its mantissa
 * cleared).
 */
const WGSL_SCALE = `fn scale_of(m0: u32) -> f32 {
  let m = max(m0, u.eps);
  if (m == 0u || m >= 0x7f800000u) { return 1.0; }
  if (u.pow2 == 0u) {
    let s = u.fmax / bitcast<f32>(m);
    return select(s, bitcast<f32>(0x7f7fffffu), (bitcast<u32>(s) & 0x7f800000u) == 0x7f800000u);
  }
  var ea: i32;
  var ma: u32;
  if ((m >> 23u) == 0u) {
    let top = 31i - i32(countLeadingZeros(m));
    ea = top - 149i;
    ma = (m << u32(23i - top)) & 0x7fffffu;
  } else {
    ea = i32(m >> 23u) - 127i;
    ma = m & 0x7fffffu;
  }
  let fb = bitcast<u32>(u.fmax);
  var k = (i32(fb >> 23u) - 127i) - ea;
  if ((fb & 0x7fffffu) < ma) { k = k - 1i; }
  if (k > 127i) { return bitcast<f32>(0x7f000000u); }
  return bitcast<f32>(u32(max(k, -126i) + 127i) << 23u);
}
`;

/** `e4m3_up(t)`: the smallest E4M3 value >= t (t >= 0; 448 at most), exact. */
const WGSL_E4M3_UP = `fn e4m3_up(t: f32) -> f32 {
  if (!(t > 0.0)) { return 0.0; }
  if (t >= 448.0) { return 448.0; }
  if (t <= 0.001953125) { return 0.001953125; }
  let e = max(i32(bitcast<u32>(t) >> 23u) - 127i, -6i);
  return ldexp(ceil(t * ldexp(1.0, 3i - e)), e - 3i);
}
`;
