/**
 * How each dtype lies in GPU memory (the program builder, `program.ts`, generates the WGSL
 * that reads and writes each layout).
 *
 * Memory is the same on every adapter: codes of `laneBits` packed little-endian into u32
 * words (f32, i32, u32, bool and bf16x2 use one word per element; f16 and bf16 two; FP8
 * and 8-bit-or-narrower simulated formats four). Only the WGSL view differs: with the
 * `shader-f16` feature, f16 buffers are bound as `array<f16>`, so one invocation may write
 * one element; every other packed output is written a whole word per invocation (a
 * read-modify-write of a shared word would race).
 *
 * @module
 */

import type { DType } from "../dtypes/mod.ts";
import type { Runtime } from "./runtime.ts";

/** The WGSL view of one dtype's storage on one device. */
export interface Layout {
  /** The dtype. */
  readonly dtype: DType;
  /** WGSL element type of the binding: `u32`, or `f16` for native f16. */
  readonly elem: "u32" | "f16";
  /** Elements per bound array element: lanes per word for packed u32 views, else 1. */
  readonly lanes: number;
  /** Bits of one lane within a u32 word. */
  readonly laneBits: number;
}

/**
 * The layout of `d` on the runtime's device.
 *
 * @example
 * ```ts
 * import { layoutOf } from "./layout.ts";
 * import { dtype } from "../dtypes/mod.ts";
 * console.log(layoutOf(dtype("e4m3"), null).lanes); // 4
 * ```
 */
export function layoutOf(d: DType, rt: Runtime | null): Layout {
  if (d.name === "f16" && rt?.info.shaderF16) {
    return { dtype: d, elem: "f16", lanes: 1, laneBits: 16 };
  }
  return { dtype: d, elem: "u32", lanes: d.lanesPerWord, laneBits: d.laneBits };
}

/** Bytes of GPU storage for `n` elements of `d` (whole u32 words). */
export function storageBytes(d: DType, n: number): number {
  return Math.ceil(n / d.lanesPerWord) * 4;
}
