// Host references shared by the tensor tests: seeded inputs, rounding to a storage dtype,
// and distances counted in units in the last place of a dtype.
import { type DType, dtype, type Tensor } from "../../mod.ts";

/** A seeded generator of uniform numbers in [0, 1) (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` values uniform in [lo, hi), rounded to the storage dtype `name`. */
export function values(name: string, n: number, seed: number, lo = -4, hi = 4): Float32Array {
  const r = rng(seed);
  const x = Float32Array.from({ length: n }, () => lo + (hi - lo) * r());
  return roundTo(name, x);
}

/** The values rounded (RNE) to dtype `name`, as f32. */
export function roundTo(name: string, x: ArrayLike<number>): Float32Array {
  const d = dtype(name);
  const f = Float32Array.from(x);
  if (d.kind === "int" || d.kind === "bool") return d.decode(d.encode(f));
  return d.decode(d.encode(f));
}

/** The position of `v` on the ordered line of dtype `d`'s values (its code, sign-magnitude). */
export function ordinal(d: DType, v: number): number {
  const c = d.encode(new Float32Array([v]))[0];
  const s = d.exponentBits + d.mantissaBits;
  const sign = Math.floor(c / 2 ** s) & 1;
  const mag = c % 2 ** s;
  return sign ? -mag : mag;
}

/**
 * How many values of dtype `name` lie between `got` and the exact `ref` rounded to the
 * dtype: 0 when `got` is the correctly rounded result. NaN matches NaN only.
 */
export function ulpsOff(name: string, got: number, ref: number): number {
  const d = dtype(name);
  if (Number.isNaN(ref) || Number.isNaN(got)) {
    return Number.isNaN(ref) && Number.isNaN(got) ? 0 : Infinity;
  }
  if (d.kind === "mcf") {
    // a pair holds ~16 bits: count in units of 2^-16 relative
    const scale = Math.max(Math.abs(ref), 2 ** -126) * 2 ** -16;
    return Math.abs(got - ref) / scale;
  }
  return Math.abs(ordinal(d, got) - ordinal(d, ref));
}

/** The number of elements of `shape`. */
export const prod = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/**
 * Host reduction of `x` (row-major, `shape`) over `axes` (sorted, non-negative): `f` of each
 * output's values, the outputs in row-major order of the kept dims.
 */
export function reduceRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  axes: readonly number[],
  f: (v: number[]) => number,
): number[] {
  const strides = shape.map((_, d) => prod(shape.slice(d + 1)));
  const kept = shape.map((_, d) => d).filter((d) => !axes.includes(d));
  // the offset of index i of the dims `dims` (mixed radix, the last fastest) from `base`
  const offset = (i: number, dims: readonly number[], base: number) => {
    let rem = i, off = base;
    for (let k = dims.length - 1; k >= 0; k--) {
      off += (rem % shape[dims[k]]) * strides[dims[k]];
      rem = Math.floor(rem / shape[dims[k]]);
    }
    return off;
  };
  const out: number[] = [];
  for (let o = 0; o < prod(kept.map((d) => shape[d])); o++) {
    const base = offset(o, kept, 0);
    const vals: number[] = [];
    for (let r = 0; r < prod(axes.map((d) => shape[d])); r++) vals.push(x[offset(r, axes, base)]);
    out.push(f(vals));
  }
  return out;
}

/** Row-major strides of `shape`. */
export function strides(shape: readonly number[]): number[] {
  const st = new Array(shape.length).fill(1);
  for (let d = shape.length - 2; d >= 0; d--) st[d] = st[d + 1] * shape[d + 1];
  return st;
}

/** The coordinates of row-major index `i` in `shape`. */
export function unravel(i: number, shape: readonly number[]): number[] {
  const c = new Array(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    c[d] = i % shape[d];
    i = Math.floor(i / shape[d]);
  }
  return c;
}

/**
 * Host reference of an op that moves codes: output element i (coordinates c in `outShape`)
 * takes `codes[src(c, i)]`, or 0 where `src` gives -1.
 */
export function mapRef(
  codes: ArrayLike<number>,
  outShape: readonly number[],
  src: (c: number[], i: number) => number,
): number[] {
  return Array.from({ length: prod(outShape) }, (_, i) => {
    const k = src(unravel(i, outShape), i);
    return k < 0 ? 0 : codes[k];
  });
}

/** A tiny GPT's configuration for the training tests: 16 tokens, one block of 2 heads, width 32. */
export const TINY_GPT = { vocabSize: 16, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 32, seed: 5 };

/**
 * `steps` batches of 8 rows of 16 tokens [inputs, targets] from a Markov chain over 16 tokens
 * with two likely successors each (the loss approaches the chain's entropy, about 1.2 nats),
 * drawn from `rng(seed)`.
 */
export function markovBatches(steps: number, seed = 21): [Int32Array, Int32Array][] {
  const r = rng(seed);
  const chain = (n: number) => {
    const ids = [Math.floor(r() * 16)];
    for (let i = 1; i < n; i++) {
      const p = ids[i - 1], u = r();
      ids.push(u < 0.6 ? (p * 5 + 3) % 16 : u < 0.9 ? (p * 7 + 1) % 16 : Math.floor(r() * 16));
    }
    return ids;
  };
  return Array.from({ length: steps }, () => {
    const rows = Array.from({ length: 8 }, () => chain(17));
    return [
      new Int32Array(rows.flatMap((q) => q.slice(0, 16))),
      new Int32Array(rows.flatMap((q) => q.slice(1))),
    ];
  });
}

/**
 * A state (tensors, arrays, objects, numbers) with every tensor as its dtype, shape and raw
 * codes: two snapshots are deepEqual when the states are the same bit for bit.
 */
export async function snapshot(v: unknown): Promise<unknown> {
  if (v && typeof (v as Tensor).codes === "function") {
    const t = v as Tensor;
    return { dtype: t.dtype, shape: t.shape, codes: Array.from(await t.codes()) };
  }
  if (Array.isArray(v)) return Promise.all(v.map(snapshot));
  if (v && typeof v === "object") {
    // every tensor's read asked for in this task: they share one mapAsync (one wait of about
    // 10 ms in Deno, not one per tensor)
    const entries = Object.entries(v);
    const values = await Promise.all(entries.map(([, x]) => snapshot(x)));
    return Object.fromEntries(entries.map(([k], i) => [k, values[i]]));
  }
  return v;
}

/** Layer norm ("ln") or RMS norm ("rms"). */
export type Norm = "ln" | "rms";

/**
 * Host forward and backward of one normalisation over the last dimension (rows of `C`), in
 * f64: the output, and with the incoming gradient `g` the gradients of x, w and b.
 */
export function normRef(
  norm: Norm,
  x: ArrayLike<number>,
  C: number,
  w: ArrayLike<number> | null,
  b: ArrayLike<number> | null,
  eps: number,
  g?: ArrayLike<number>,
) {
  const rows = x.length / C;
  const y = new Float64Array(x.length), dx = new Float64Array(x.length);
  const dw = new Float64Array(C), db = new Float64Array(C);
  for (let r = 0; r < rows; r++) {
    const row = Array.from({ length: C }, (_, j) => x[r * C + j]);
    const mu = norm === "ln" ? row.reduce((a, v) => a + v, 0) / C : 0;
    const v = row.reduce((a, t) => a + (t - mu) ** 2, 0) / C;
    const rs = 1 / Math.sqrt(v + eps);
    const xh = row.map((t) => (t - mu) * rs);
    xh.forEach((h, j) => (y[r * C + j] = h * (w ? w[j] : 1) + (b ? b[j] : 0)));
    if (!g) continue;
    const gw = xh.map((_, j) => g[r * C + j] * (w ? w[j] : 1));
    const m1 = gw.reduce((a, t) => a + t, 0) / C;
    const m2 = gw.reduce((a, t, j) => a + t * xh[j], 0) / C;
    xh.forEach((h, j) => {
      dx[r * C + j] = rs * (gw[j] - (norm === "ln" ? m1 : 0) - h * m2);
      dw[j] += g[r * C + j] * h;
      db[j] += g[r * C + j];
    });
  }
  return { y, dx, dw, db };
}
