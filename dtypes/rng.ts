/**
 * The counter-based random numbers ulp uses for stochastic rounding and random tensors.
 * The same integer hash runs on the host (here) and in WGSL (`WGSL_RNG`), so a seed gives
 * the same numbers on every adapter and on the CPU.
 *
 * @module
 */

/**
 * A 32-bit integer mixing function (xor-shift-multiply, three rounds). Bijective on u32.
 *
 * @example
 * ```ts
 * import { hash32 } from "./rng.ts";
 * console.log(hash32(0) === 0, hash32(1) !== 1); // true true
 * ```
 */
export function hash32(x: number): number {
  let h = x >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d) >>> 0;
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The random u32 at position `index` of the stream named by `seed`: a pure function of its
 * two arguments, identical to `ulp_rand(seed, index)` in WGSL.
 *
 * @example
 * ```ts
 * import { randomU32 } from "./rng.ts";
 * console.log(randomU32(42, 7) === randomU32(42, 7)); // true
 * ```
 */
export function randomU32(seed: number, index: number): number {
  const s = hash32(seed >>> 0);
  return hash32((hash32((index >>> 0) ^ s) + (seed >>> 0)) >>> 0);
}

/** WGSL source of `ulp_hash32` and `ulp_rand`, the device twins of `hash32` and `randomU32`. */
export const WGSL_RNG: string = `
fn ulp_hash32(x: u32) -> u32 {
  var h = x;
  h = h ^ (h >> 16u);
  h = h * 0x7feb352du;
  h = h ^ (h >> 15u);
  h = h * 0x846ca68bu;
  h = h ^ (h >> 16u);
  return h;
}
fn ulp_rand(seed: u32, index: u32) -> u32 {
  let s = ulp_hash32(seed);
  return ulp_hash32(ulp_hash32(index ^ s) + seed);
}
`;
