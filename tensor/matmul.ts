/**
 * Matrix products: `matmul(a, b)` with PyTorch's semantics (2-D, batched with broadcast
 * batch dimensions, 1-D vectors), operands of any float dtype, optionally transposed without
 * materialising the transpose, accumulation in f32 and one rounding to the output dtype.
 *
 * The kernel (a small program: `matmulSource()` returns WGSL for given layouts and tile
 * sizes) computes a 64x64 output tile per workgroup of 16x16 invocations, each a 4x4 block
 * of registers. Operands are decoded to f32 once, while a K-slice of each is copied into
 * workgroup memory; the inner loop then only multiplies f32. Each output element is
 * `sum over r, k of A[r][m,k] B[r][k,n]`, where `r` runs over batch dimensions that are
 * *reduced*: the forward pass has none, and the backward pass uses them to sum a gradient
 * over broadcast batch dimensions inside the same f32 accumulator (no temporary, no second
 * rounding, no separate reduction).
 *
 * Packed outputs: an invocation owns 4 consecutive columns of a row, which are whole u32
 * words (one word of four 8-bit lanes, two words of 16-bit lanes) when the row length N is
 * a multiple of the lanes per word. Then the kernel encodes and writes the words itself.
 * Otherwise a word could straddle two rows owned by different invocations, so the kernel
 * writes an f32 temporary and `cast()` rounds it once to the output dtype.
 *
 * Reference: the register-blocked tiling of Volkov & Demmel, "Benchmarking GPUs to tune
 * dense linear algebra" (SC 2008), as in most WebGPU matmul kernels.
 *
 * @module
 */

import {
  type DType,
  dtype as toDType,
  type DTypeLike,
  float32,
  isFloat,
  promoteTypes,
  wgslChunks,
} from "../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../errors.ts";
import { currentRuntime, type Kernel, type Runtime } from "../gpu/mod.ts";
import { attach } from "../autograd/graph.ts";
import { type Layout, layoutOf, needsF16, wgslBinding, wgslEncoder, wgslLoad } from "./layout.ts";
import { fmtShape, Tensor } from "./tensor.ts";
import { cast } from "./elementwise.ts";

/** Options of `matmul`: transposed operands and the output dtype. */
export interface MatmulOptions {
  /** Use the transpose of `a`'s last two dimensions (`a` holds `[..., K, M]`). */
  transA?: boolean;
  /** Use the transpose of `b`'s last two dimensions (`b` holds `[..., N, K]`). */
  transB?: boolean;
  /** The output dtype (a float dtype); default `promoteTypes(a.dtype, b.dtype)`. */
  outDtype?: DTypeLike;
}

// Tile sizes: BM x BN outputs per workgroup of (BN/4) x (BM/4) invocations, K in slices of BK.
const BM = 64, BN = 64, BK = 16;
const WG_X = BN / 4, WG_Y = BM / 4, THREADS = WG_X * WG_Y;
/** Batch dimensions the kernel handles (kept and reduced together). */
const MAX_BATCH_DIMS = 8;

/** A matrix operand: a tensor read as `batch x rows x cols` (row-major), maybe transposed. */
interface View {
  readonly t: Tensor;
  /** The stored batch dimensions. */
  readonly batch: readonly number[];
  /** Stored rows and columns. */
  readonly rows: number;
  readonly cols: number;
  /** Whether the logical matrix is the transpose of the stored one. */
  readonly trans: boolean;
}

const logicalRows = (v: View) => (v.trans ? v.cols : v.rows);
const logicalCols = (v: View) => (v.trans ? v.rows : v.cols);
const flip = (v: View): View => ({ ...v, trans: !v.trans });
const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** What the WGSL of one kernel depends on. */
interface Config {
  readonly a: Layout;
  readonly b: Layout;
  readonly out: Layout;
  /** Whether logical A's k (B's k) runs along the stored rows: the load pattern to use. */
  readonly transA: boolean;
  readonly transB: boolean;
  /** Encode and write packed words directly (else the output is f32 for a later cast). */
  readonly saturate: boolean;
}

/**
 * The WGSL of a matmul kernel for the given operand and output layouts. Bindings: `a`, `b`,
 * `out`, then the uniform block `U`. Launch with `(ceil(N/64), ceil(M/64), batches)`
 * workgroups. @internal
 *
 * @example
 * ```ts
 * import { dtype, layoutOf, matmulSource } from "../mod.ts";
 * const l = (n: string) => layoutOf(dtype(n), null);
 * const src = matmulSource({ a: l("e4m3"), b: l("bf16"), out: l("f32"), transA: false, transB: true, saturate: false });
 * console.log(src.includes("var<workgroup> As")); // true
 * ```
 */
export function matmulSource(cfg: Config): string {
  const { a, b, out } = cfg;
  const chunks: string[][] = [wgslLoad(a, "a", "ld_a"), wgslLoad(b, "b", "ld_b")];
  const enc = wgslEncoder(out, { rounding: "rne", saturate: cfg.saturate });
  chunks.push([...enc.chunks]);
  const KQ = BK / 4; // k-quads per row of a K-slice
  // A slice: BM x BK values into As[k * BM/4 + m/4][m % 4]; B slice: BK x BN into Bs[k * BN/4 + n/4][n % 4].
  const unitsA = (BM * BK) / 4 / THREADS, unitsB = (BN * BK) / 4 / THREADS;
  const loadA = cfg.transA
    // stored [K, M]: consecutive m are contiguous; a unit is 4 consecutive m at one k.
    ? `    let k = u / ${BM / 4}u; let mq = u % ${BM / 4}u;
    var v = vec4<f32>(0.0);
    let kg = k0 + k;
    for (var j = 0u; j < 4u; j = j + 1u) {
      let m = m0 + mq * 4u + j;
      if (m < U_.m && kg < U_.k) { v[j] = ld_a(offA + m * U_.sam + kg * U_.sak); }
    }
    As[k * ${BM / 4}u + mq] = v;`
    // stored [M, K]: consecutive k are contiguous; a unit is 4 consecutive k of one row.
    : `    let row = u / ${KQ}u; let kq = u % ${KQ}u;
    let m = m0 + row;
    for (var j = 0u; j < 4u; j = j + 1u) {
      let kg = k0 + kq * 4u + j;
      var v = 0.0;
      if (m < U_.m && kg < U_.k) { v = ld_a(offA + m * U_.sam + kg * U_.sak); }
      As[(kq * 4u + j) * ${BM / 4}u + row / 4u][row % 4u] = v;
    }`;
  const loadB = cfg.transB
    // stored [N, K]: a unit is 4 consecutive k of one column n.
    ? `    let col = u / ${KQ}u; let kq = u % ${KQ}u;
    let n = n0 + col;
    for (var j = 0u; j < 4u; j = j + 1u) {
      let kg = k0 + kq * 4u + j;
      var v = 0.0;
      if (n < U_.n && kg < U_.k) { v = ld_b(offB + kg * U_.sbk + n * U_.sbn); }
      Bs[(kq * 4u + j) * ${BN / 4}u + col / 4u][col % 4u] = v;
    }`
    // stored [K, N]: a unit is 4 consecutive n at one k.
    : `    let k = u / ${BN / 4}u; let nq = u % ${BN / 4}u;
    var v = vec4<f32>(0.0);
    let kg = k0 + k;
    for (var j = 0u; j < 4u; j = j + 1u) {
      let n = n0 + nq * 4u + j;
      if (n < U_.n && kg < U_.k) { v[j] = ld_b(offB + kg * U_.sbk + n * U_.sbn); }
    }
    Bs[k * ${BN / 4}u + nq] = v;`;
  // The store of one row of 4 values at columns n..n+3 (n a multiple of 4).
  let store: string;
  const lanes = out.lanes, laneBits = out.laneBits;
  if (out.elem === "f16") {
    store = `  for (var j = 0u; j < 4u; j = j + 1u) {
    if (n + j < U_.n) { out[e + j] = f16(unpack2x16float(${enc.name}(v[j], 0u)).x); } // exact: already rounded
  }`;
  } else if (lanes === 1) {
    store = `  for (var j = 0u; j < 4u; j = j + 1u) {
    if (n + j < U_.n) { out[e + j] = ${enc.name}(v[j], 0u); }
  }`;
  } else {
    // N is a multiple of the lanes (checked on the host): each word is whole and ours.
    const mask = (2 ** laneBits - 1) >>> 0;
    store = `  for (var w = 0u; w < ${4 / lanes}u; w = w + 1u) {
    if (n + w * ${lanes}u < U_.n) {
      var word = 0u;
      for (var l = 0u; l < ${lanes}u; l = l + 1u) {
        word = word | ((${enc.name}(v[w * ${lanes}u + l], 0u) & ${mask}u) << (l * ${laneBits}u));
      }
      out[(e + w * ${lanes}u) / ${lanes}u] = word;
    }
  }`;
  }
  const f16 = needsF16([a, b, out]) ? "enable f16;\n" : "";
  return `${f16}${wgslChunks(...chunks)}
struct Uniforms {
  m: u32, n: u32, k: u32, nb: u32,
  nd: u32, r: u32, pad0: u32, pad1: u32,
  sam: u32, sak: u32, sbk: u32, sbn: u32,
  x0: u32, y0: u32, z0: u32, pad2: u32,
  dims: array<vec4<u32>, 2>,
  sa: array<vec4<u32>, 2>,
  sb: array<vec4<u32>, 2>,
}
${wgslBinding(a, 0, 0, "a", "read")}${wgslBinding(b, 0, 1, "b", "read")}${
    wgslBinding(out, 0, 2, "out", "read_write")
  }@group(0) @binding(3) var<uniform> U_: Uniforms;
var<workgroup> As: array<vec4<f32>, ${(BK * BM) / 4}>;
var<workgroup> Bs: array<vec4<f32>, ${(BK * BN) / 4}>;

fn store_row(m: u32, n: u32, v: vec4<f32>, zoff: u32) {
  if (m >= U_.m) { return; }
  let e = zoff + m * U_.n + n;
${store}
}

@compute @workgroup_size(${WG_X}, ${WG_Y})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let n0 = (wid.x + U_.x0) * ${BN}u;
  let m0 = (wid.y + U_.y0) * ${BM}u;
  let z = wid.z + U_.z0;
  // offsets of this output batch in a and b (kept batch dimensions 0..nb-1)
  var rem = z;
  var baseA = 0u;
  var baseB = 0u;
  for (var d = i32(U_.nb) - 1; d >= 0; d = d - 1) {
    let size = U_.dims[d / 4][d % 4];
    let i = rem % size;
    rem = rem / size;
    baseA = baseA + i * U_.sa[d / 4][d % 4];
    baseB = baseB + i * U_.sb[d / 4][d % 4];
  }
  var acc0 = vec4<f32>(0.0);
  var acc1 = vec4<f32>(0.0);
  var acc2 = vec4<f32>(0.0);
  var acc3 = vec4<f32>(0.0);
  for (var r = 0u; r < U_.r; r = r + 1u) {
    // offsets of reduced batch r (dimensions nb..nd-1), summed into the same accumulators
    var rr = r;
    var offA = baseA;
    var offB = baseB;
    for (var d = i32(U_.nd) - 1; d >= i32(U_.nb); d = d - 1) {
      let size = U_.dims[d / 4][d % 4];
      let i = rr % size;
      rr = rr / size;
      offA = offA + i * U_.sa[d / 4][d % 4];
      offB = offB + i * U_.sb[d / 4][d % 4];
    }
    for (var k0 = 0u; k0 < U_.k; k0 = k0 + ${BK}u) {
      for (var p = 0u; p < ${unitsA}u; p = p + 1u) {
        let u = li + p * ${THREADS}u;
${loadA}
      }
      for (var p = 0u; p < ${unitsB}u; p = p + 1u) {
        let u = li + p * ${THREADS}u;
${loadB}
      }
      workgroupBarrier();
      for (var kk = 0u; kk < ${BK}u; kk = kk + 1u) {
        let av = As[kk * ${BM / 4}u + lid.y];
        let bv = Bs[kk * ${BN / 4}u + lid.x];
        acc0 = fma(vec4<f32>(av.x), bv, acc0);
        acc1 = fma(vec4<f32>(av.y), bv, acc1);
        acc2 = fma(vec4<f32>(av.z), bv, acc2);
        acc3 = fma(vec4<f32>(av.w), bv, acc3);
      }
      workgroupBarrier();
    }
  }
  let zoff = z * U_.m * U_.n;
  let m = m0 + lid.y * 4u;
  let n = n0 + lid.x * 4u;
  if (n >= U_.n) { return; }
  store_row(m, n, acc0, zoff);
  store_row(m + 1u, n, acc1, zoff);
  store_row(m + 2u, n, acc2, zoff);
  store_row(m + 3u, n, acc3, zoff);
}
`;
}

const kernelCache = new WeakMap<Runtime, Map<string, Kernel>>();

function getKernel(rt: Runtime, cfg: Config): Kernel {
  const key = [cfg.a, cfg.b, cfg.out].map((l) => `${l.dtype.name}:${l.elem}`).join(",") +
    `|${cfg.transA}|${cfg.transB}|${cfg.saturate}`;
  let cache = kernelCache.get(rt);
  if (!cache) kernelCache.set(rt, cache = new Map());
  let k = cache.get(key);
  if (!k) {
    k = rt.kernel("matmul", matmulSource(cfg), {
      buffers: ["read", "read", "read_write"],
      uniform: true,
    });
    cache.set(key, k);
  }
  return k;
}

/** Strides (in elements) of a view's batch dimensions aligned to `full`, 0 where broadcast. */
function batchStrides(v: View, full: readonly number[]): number[] {
  const st = new Array(full.length).fill(0);
  let s = v.rows * v.cols;
  for (let d = v.batch.length - 1; d >= 0; d--) {
    const fd = full.length - v.batch.length + d;
    st[fd] = v.batch[d] === 1 ? 0 : s;
    s *= v.batch[d];
  }
  return st;
}

/**
 * `out[kept] = sum over reduced batch dims of op(A) @ op(B)`: the one launcher behind the
 * forward and backward passes. `full` is the broadcast batch shape of A and B; `keep[d]` says
 * whether batch dimension d is one of the output's (in order) or summed over.
 */
function gemm(
  op: string,
  A: View,
  B: View,
  full: readonly number[],
  keep: readonly boolean[],
  outDt: DType,
  outShape: readonly number[],
): Tensor {
  const rt = currentRuntime();
  A.t.buffer(`${op}()`);
  B.t.buffer(`${op}()`);
  const M = logicalRows(A), K = logicalCols(A), N = logicalCols(B);
  const outL = layoutOf(outDt, rt);
  const direct = outL.lanes === 1 || N % outL.lanes === 0;
  const target = direct ? outDt : float32;
  const out = Tensor.empty(outShape, target);
  const stA = batchStrides(A, full), stB = batchStrides(B, full);
  // kept dimensions first, then reduced; size-1 dimensions drop out
  const dims: number[] = [], sa: number[] = [], sb: number[] = [];
  const order = [...full.keys()].filter((d) => keep[d]).concat(
    [...full.keys()].filter((d) => !keep[d]),
  );
  let nb = 0;
  for (const d of order) {
    if (full[d] === 1) continue;
    dims.push(full[d]);
    sa.push(stA[d]);
    sb.push(stB[d]);
    if (keep[d]) nb++;
  }
  if (dims.length > MAX_BATCH_DIMS) {
    throw new ShapeError(
      `${op}(): ${dims.length} batch dimensions exceed the maximum of ${MAX_BATCH_DIMS}`,
    );
  }
  const Z = prod(dims.slice(0, nb)), R = prod(dims.slice(nb));
  if (M * N * Z > 0) {
    const kernel = getKernel(rt, {
      a: layoutOf(A.t.dt, rt),
      b: layoutOf(B.t.dt, rt),
      out: layoutOf(target, rt),
      transA: A.trans,
      transB: B.trans,
      saturate: outDt.saturate,
    });
    const u = new Uint32Array(40);
    u.set([M, N, K, nb, dims.length, R]);
    // element strides of logical (row, col): stored (i, j) is at i * cols + j
    u.set(A.trans ? [1, A.cols] : [A.cols, 1], 8);
    u.set(B.trans ? [1, B.cols] : [B.cols, 1], 10);
    u.set(dims, 16);
    u.set(sa, 24);
    u.set(sb, 32);
    const maxG = rt.info.limits.maxComputeWorkgroupsPerDimension;
    const gx = Math.ceil(N / BN), gy = Math.ceil(M / BM);
    const bufs = [A.t.buffer(op), B.t.buffer(op), out.buffer(op)];
    // launches within the per-dimension limit; the offsets x0, y0, z0 go in the uniforms
    for (let z0 = 0; z0 < Z; z0 += maxG) {
      for (let y0 = 0; y0 < gy; y0 += maxG) {
        for (let x0 = 0; x0 < gx; x0 += maxG) {
          u[12] = x0;
          u[13] = y0;
          u[14] = z0;
          rt.dispatch(
            kernel,
            bufs,
            [Math.min(maxG, gx - x0), Math.min(maxG, gy - y0), Math.min(maxG, Z - z0)],
            u,
          );
        }
      }
    }
  }
  if (direct) return out;
  const rounded = cast(out, outDt);
  out.dispose();
  return rounded;
}

/** A tensor as a matrix view: 1-D operands become a row (`asRow`) or a column. */
function viewOf(t: Tensor, trans: boolean, asRow: boolean): View {
  const s = t.shape;
  if (s.length === 1) {
    // a vector is its own transpose
    return asRow
      ? { t, batch: [], rows: 1, cols: s[0], trans: false }
      : { t, batch: [], rows: s[0], cols: 1, trans: false };
  }
  return { t, batch: s.slice(0, -2), rows: s[s.length - 2], cols: s[s.length - 1], trans };
}

function describe(a: Tensor, b: Tensor, o: MatmulOptions): string {
  return `${fmtShape(a.shape)} (${a.dtype}${o.transA ? ", transposed" : ""}) @ ${
    fmtShape(b.shape)
  } (${b.dtype}${o.transB ? ", transposed" : ""})`;
}

/**
 * The matrix product of `a` and `b`, as `torch.matmul`: `[M,K] @ [K,N]` gives `[M,N]`;
 * leading (batch) dimensions broadcast (`[2,1,M,K] @ [3,K,N]` gives `[2,3,M,N]`); a 1-D
 * `a` is a row vector and a 1-D `b` a column vector whose dimension is dropped from the
 * result (two vectors give their dot product, a 0-d tensor). `transA` / `transB` use the
 * transpose of the last two dimensions of an operand without copying it.
 *
 * Operands may have any float dtype, mixed; the products are accumulated in f32 and rounded
 * once to the output dtype (`promoteTypes(a.dtype, b.dtype)` unless `outDtype` is given).
 * Gradients flow to both operands, in each operand's own dtype, summed over the batch
 * dimensions that were broadcast.
 *
 * @example
 * ```ts
 * import { matmul, tensor } from "../mod.ts";
 * const a = tensor([[1, 2], [3, 4]], { dtype: "bf16" });
 * const b = tensor([[5, 6], [7, 8]], { dtype: "e4m3" });
 * const c = matmul(a, b);
 * console.log(c.dtype, Array.from(await c.toArray())); // "bf16" [19, 22, 43, 50]
 * const d = matmul(a, b, { transB: true, outDtype: "f32" }); // a @ b^T
 * console.log(d.dtype, Array.from(await d.toArray())); // "f32" [17, 23, 39, 53]
 * ```
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  if (!(a instanceof Tensor) || !(b instanceof Tensor)) {
    throw new ValueError(
      `matmul(): operands must be tensors, got ${a === null ? "null" : typeof a} and ${
        b === null ? "null" : typeof b
      }`,
    );
  }
  for (const t of [a, b]) {
    if (!isFloat(t.dt)) {
      throw new DTypeError(
        `matmul(): operands must have float dtypes: ${describe(a, b, opts)}; ` +
          `cast the ${t.dtype} operand to a float dtype first (x.cast("f32"))`,
      );
    }
    if (t.ndim === 0) {
      throw new ShapeError(
        `matmul(): operands must have at least one dimension: ${describe(a, b, opts)}; ` +
          `use mul() for a scalar`,
      );
    }
  }
  let outDt: DType;
  if (opts.outDtype !== undefined) {
    outDt = toDType(opts.outDtype);
    if (!isFloat(outDt)) {
      throw new DTypeError(
        `matmul(): outDtype must be a float dtype, got ${outDt.name}: ${describe(a, b, opts)}`,
      );
    }
  } else {
    outDt = promoteTypes(a.dt, b.dt);
  }
  const A = viewOf(a, opts.transA ?? false, true);
  const B = viewOf(b, opts.transB ?? false, false);
  const M = logicalRows(A), K = logicalCols(A), K2 = logicalRows(B), N = logicalCols(B);
  if (K !== K2) {
    throw new ShapeError(
      `matmul(): inner dimensions differ: ${describe(a, b, opts)}: ` +
        `${K} columns of the left operand, ${K2} rows of the right`,
    );
  }
  const full = broadcastBatch(A.batch, B.batch, () =>
    `matmul(): batch dimensions ${fmtShape(A.batch)} and ${
      fmtShape(B.batch)
    } cannot be broadcast together: ${describe(a, b, opts)}`);
  const outShape = [...full, ...(a.ndim > 1 ? [M] : []), ...(b.ndim > 1 ? [N] : [])];
  const out = gemm("matmul", A, B, full, full.map(() => true), outDt, outShape);
  return attach(out, "matmul", [a, b], (g) => {
    // g is the output's gradient, read as [...full, M, N] (vector dimensions restored)
    const G: View = { t: g, batch: full, rows: M, cols: N, trans: false };
    const keepFor = (v: View) =>
      full.map((size, d) => {
        const own = v.batch[v.batch.length - full.length + d];
        return own !== undefined && own === size;
      });
    const dA = a.requiresGrad
      ? (A.trans
        ? gemm("matmul_backward", B, flip(G), full, keepFor(A), a.dt, a.shape) // B g^T
        : gemm("matmul_backward", G, flip(B), full, keepFor(A), a.dt, a.shape)) // g B^T
      : null;
    const dB = b.requiresGrad
      ? (B.trans
        ? gemm("matmul_backward", flip(G), A, full, keepFor(B), b.dt, b.shape) // g^T A
        : gemm("matmul_backward", flip(A), G, full, keepFor(B), b.dt, b.shape)) // A^T g
      : null;
    return [dA, dB];
  });
}

/** The broadcast of two batch shapes. */
function broadcastBatch(
  x: readonly number[],
  y: readonly number[],
  err: () => string,
): number[] {
  const rank = Math.max(x.length, y.length);
  const out: number[] = [];
  for (let d = 0; d < rank; d++) {
    const p = x[x.length - rank + d] ?? 1, q = y[y.length - rank + d] ?? 1;
    if (p !== q && p !== 1 && q !== 1) throw new ShapeError(err());
    out.push(p === 1 ? q : p);
  }
  return out;
}
