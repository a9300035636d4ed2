// Host references shared by the tensor tests: seeded inputs, rounding to a storage dtype,
// and distances counted in units in the last place of a dtype.
import { type DType, dtype } from "../../mod.ts";

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
