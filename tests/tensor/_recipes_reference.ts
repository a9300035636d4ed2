// Host references for the FP8 recipes beyond delayed scaling (tensor/amp/block_scaling.ts),
// written from ../shared/RECIPES.md and the published sources it names (Transformer Engine's
// compute_scale_from_amax, torchao's amax_to_scale with round_scales_to_power_of_2, TE's
// NVFP4 / cuDNN block scale quantize), with the host codec and f64 arithmetic rounded to f32
// where the formula keeps an f32.
import { dtype } from "../../mod.ts";

const F32_MAX = 3.4028234663852886e38;
const bitsOf = (v: number) => new Uint32Array(Float32Array.of(v).buffer)[0];
const fromBits = (b: number) => new Float32Array(Uint32Array.of(b >>> 0).buffer)[0];

/** Transformer Engine's compute_scale_from_amax (epsilon, 1 for 0/Inf/NaN, f32 max, pow2). */
export function teScale(amax: number, fmax: number, eps: number, pow2: boolean): number {
  let a = Math.fround(amax);
  const e = Math.fround(eps);
  if (a < e) a = e;
  if (a === 0 || !Number.isFinite(a)) return 1;
  let s = Math.fround(fmax / a);
  if (!Number.isFinite(s)) s = F32_MAX;
  return pow2 ? fromBits(bitsOf(s) & 0xff800000) : s;
}

/** torchao's amax_to_scale (f64, clamp at EPS = 1e-12, to f32) then exp2(floor(log2 s)). */
export function torchaoRowwiseScale(amax: number, fmax: number): number {
  const s = Math.fround(fmax / Math.max(amax, 1e-12));
  let p = 2 ** Math.floor(Math.log2(s));
  while (p > s) p /= 2; // guard Math.log2's last bit
  while (p * 2 <= s) p *= 2;
  return p;
}

/** A [batch, rows, cols] matrix cut in [br, bc] blocks: each block's flat element indices. */
export function blocksOf(
  batch: number,
  rows: number,
  cols: number,
  br: number,
  bc: number,
): number[][] {
  const out: number[][] = [];
  for (let b = 0; b < batch; b++) {
    for (let r0 = 0; r0 < rows; r0 += br) {
      for (let c0 = 0; c0 < cols; c0 += bc) {
        const idx: number[] = [];
        for (let r = r0; r < Math.min(rows, r0 + br); r++) {
          for (let c = c0; c < Math.min(cols, c0 + bc); c++) {
            idx.push(b * rows * cols + r * cols + c);
          }
        }
        out.push(idx);
      }
    }
  }
  return out;
}

/** One element of `name` from an f32 value: RNE (or stochastic with `rand` bits), saturating. */
function code(name: string, y: number, seed?: number, index?: number): number {
  const d = dtype(name);
  const opts = seed === undefined
    ? { saturate: true }
    : { saturate: true, rounding: "stochastic" as const, seed, offset: index };
  return d.decode(d.encode(Float32Array.of(y), opts))[0];
}

/** FP8 block scaling on the host: per block `s = scaleOf(amax)`, codes, values = code * (1/s). */
export function fp8BlocksRef(
  x: Float32Array,
  blocks: number[][],
  fmt: "e4m3" | "e5m2",
  scaleOf: (amax: number) => number,
): { scales: number[]; codes: Float32Array; values: Float32Array } {
  const codes = new Float32Array(x.length), values = new Float32Array(x.length);
  const scales = blocks.map((idx) => {
    const amax = Math.max(0, ...idx.map((i) => Math.abs(x[i])));
    const s = scaleOf(amax);
    const inv = Math.fround(1 / s);
    for (const i of idx) {
      codes[i] = code(fmt, Math.fround(x[i] * s));
      values[i] = Math.fround(codes[i] * inv);
    }
    return s;
  });
  return { scales, codes, values };
}

/** All non-negative E4M3 values, ascending. */
const E4M3_VALUES = (() => {
  const d = dtype("e4m3");
  const all = Array.from(d.decode(Uint8Array.from({ length: 128 }, (_, i) => i)));
  return all.filter(Number.isFinite).sort((a, b) => a - b);
})();

/** The smallest E4M3 value >= t (t <= 448), by search over the code table. */
export function e4m3RoundUp(t: number): number {
  return E4M3_VALUES.find((v) => v >= t) ?? 448;
}

/**
 * NVFP4 on the host: S = amax / (448 * 6) in f32 (1 for 0), per block
 * sb = roundUp_e4m3(f32(f32(amax_b / 6) / S)), d = f32(sb * S), codes e2m1_sat(f32(x / d))
 * (stochastic: element i draws randomU32(seed, i)), values = f32(code * d).
 */
export function nvfp4Ref(
  x: Float32Array,
  blocks: number[][],
  stochastic: boolean,
  seed = 0,
): { tensorScale: number; blockScales: number[]; codes: Float32Array; values: Float32Array } {
  const amax = Math.max(0, ...Array.from(x, Math.abs));
  const S = amax === 0 ? 1 : Math.fround(amax / 2688);
  const codes = new Float32Array(x.length), values = new Float32Array(x.length);
  const blockScales = blocks.map((idx) => {
    const ab = Math.max(0, ...idx.map((i) => Math.abs(x[i])));
    const sb = e4m3RoundUp(Math.fround(Math.fround(ab / 6) / S));
    const d = Math.fround(sb * S);
    for (const i of idx) {
      const c = d > 0 ? code("e2m1fn", Math.fround(x[i] / d), stochastic ? seed : undefined, i) : 0;
      codes[i] = c;
      values[i] = Math.fround(c * d);
    }
    return sb;
  });
  return { tensorScale: S, blockScales, codes, values };
}

/** Values over many binades: uniform mantissas times 2^[lo, hi), random signs, some zeros. */
export function wideValues(n: number, r: () => number, lo = -12, hi = 6): Float32Array {
  return Float32Array.from({ length: n }, () => {
    const u = r();
    if (u < 0.03) return 0;
    return (r() < 0.5 ? -1 : 1) * (1 + r()) * 2 ** Math.floor(lo + (hi - lo) * r());
  });
}

/** Bits of f32 values (so that -0 and 0, NaN payloads compare exactly). */
export function f32BitsOf(x: ArrayLike<number>): number[] {
  return Array.from(new Uint32Array(Float32Array.from(x).buffer));
}

/** TE's sign vector of NVFP4's random Hadamard transform (get_wgrad_sign_vector). */
const RHT_SIGNS = [1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1];

/**
 * The 16-point random Hadamard transform along the rows of [batch, rows, cols]: each group
 * of 16 rows of a column times diag(signs) H16 / 4 (H16 by Sylvester's construction), the sum
 * in f32 in order.
 */
export function rht16(x: ArrayLike<number>, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  const h = (i: number, j: number) => {
    let b = i & j, p = 0;
    while (b) {
      p ^= b & 1;
      b >>= 1;
    }
    return p ? -1 : 1;
  };
  for (let base = 0; base < x.length; base += rows * cols) {
    for (let r0 = 0; r0 < rows; r0 += 16) {
      for (let c = 0; c < cols; c++) {
        const at = (j: number) => base + (r0 + j) * cols + c;
        for (let i = 0; i < 16; i++) {
          let acc = 0;
          for (let j = 0; j < 16; j++) acc = Math.fround(acc + h(i, j) * RHT_SIGNS[j] * x[at(j)]);
          out[at(i)] = Math.fround(acc * 0.25);
        }
      }
    }
  }
  return out;
}
