// Host references for the FP8 and MX tests, written from DESIGN.md section 4 with the host
// codec (dtypes/codec.ts) and f64 arithmetic, independent of the WGSL kernels.
import { dtype, finfo } from "../../mod.ts";
import { mxElementDtype } from "../../tensor/mod.ts";

/** `x` rounded to dtype `name` (RNE), saturating on request, as f64 values. */
export function quant(name: string, x: ArrayLike<number>, saturate = false): Float64Array {
  const d = dtype(name);
  return Float64Array.from(d.decode(d.encode(Float32Array.from(x), { saturate })));
}

/** Per-tensor FP8: the codes' values of `cast_sat(x * scale)` (x * scale rounded to f32 first). */
export function fp8Values(name: string, x: ArrayLike<number>, scale: number): Float64Array {
  return quant(name, Array.from(x, (v) => Math.fround(v * scale)), true);
}

/** `(fp8_max / amax) / 2^margin` in f32 steps, as the kernels compute it (null: keep the old one). */
export function scaleFromAmax(fmax: number, amax: number, margin: number): number | null {
  if (!(amax > 0) || !Number.isFinite(amax)) return null;
  const s = Math.fround(Math.fround(fmax / Math.fround(amax)) / Math.fround(2 ** margin));
  return Number.isFinite(s) ? s : 3.4028234663852886e38;
}

/**
 * Transformer Engine's delayed scaling on the host: each update puts the step's amax in the
 * window of the last `len` amaxes, then scale = f(max of the window) (kept when not finite
 * and positive). Returns the scale after each update.
 */
export function delayedScales(
  amaxes: readonly number[],
  len: number,
  margin: number,
  fmax = 448,
): number[] {
  const window: number[] = [];
  let scale = 1;
  return amaxes.map((a) => {
    window.push(a);
    if (window.length > len) window.shift();
    const m = window.some(Number.isNaN) ? NaN : Math.max(...window);
    scale = scaleFromAmax(fmax, m, margin) ?? scale;
    return scale;
  });
}

/**
 * OCP MX (v1.0, section 6.3) on the host: blocks of 32 along the last axis of `[rows, len]`
 * values; scale 2^(floor(log2 amax) - emax) clamped to 2^-127..2^127; elements RNE,
 * saturating; a block with Inf or NaN gives NaN. Returns the dequantised values.
 */
export function mxReference(
  element: string,
  x: ArrayLike<number>,
  len: number,
  block = 32,
): Float64Array {
  const d = mxElementDtype(element); // e3m2, e2m3, e2m1: OCP's finite variants
  const emax = Math.floor(Math.log2(finfo(d).max));
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / len; r++) {
    for (let b0 = 0; b0 < len; b0 += block) {
      const idx = Array.from({ length: Math.min(block, len - b0) }, (_, j) => r * len + b0 + j);
      const vals = idx.map((i) => x[i]);
      if (vals.some((v) => !Number.isFinite(v))) {
        for (const i of idx) out[i] = NaN;
        continue;
      }
      const amax = Math.max(...vals.map(Math.abs));
      const e = amax === 0
        ? -127
        : Math.min(127, Math.max(-127, Math.floor(Math.log2(amax)) - emax));
      const X = 2 ** e;
      const q = quant(d.name, vals.map((v) => v / X), true);
      idx.forEach((i, j) => (out[i] = Math.fround(q[j] * X)));
    }
  }
  return out;
}

/** The values of `x` ([rows, cols], row-major) transposed. */
export function transpose(x: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j];
  return out;
}

/** `a [M, K] @ b [K, N]` in f64, times `factor`. */
export function matmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  M: number,
  K: number,
  N: number,
  factor = 1,
): Float64Array {
  const out = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += a[i * K + k] * b[k * N + j];
      out[i * N + j] = s * factor;
    }
  }
  return out;
}

/**
 * Asserts that `got` equals `want` rounded to dtype `name`, allowing `ulps` units in the last
 * place of that dtype (f32 accumulation order, GPU division) plus `atol`.
 */
export function assertClose(
  name: string,
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  opts: { ulps?: number; atol?: number; what?: string } = {},
): void {
  const { ulps = 1, atol = 0, what = "" } = opts;
  const d = dtype(name);
  const eps = finfo(d).eps, tiny = finfo(d).smallestNormal;
  const w = quant(name, want);
  if (got.length !== want.length) {
    throw new Error(`${what}: ${got.length} values, want ${want.length}`);
  }
  for (let i = 0; i < want.length; i++) {
    const tol = ulps * eps * Math.max(Math.abs(w[i]), tiny) + atol;
    if (Number.isNaN(w[i]) && Number.isNaN(got[i])) continue;
    if (!(Math.abs(got[i] - w[i]) <= tol)) {
      throw new Error(`${what}[${i}]: got ${got[i]}, want ${w[i]} (${want[i]}), tolerance ${tol}`);
    }
  }
}
