/**
 * How each dtype lies in GPU memory and the WGSL that reads and writes it.
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

import { type DType, wgslCodec, type WgslCodecOptions } from "../dtypes/mod.ts";
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

/** Whether any of the layouts needs `enable f16;`. */
export function needsF16(layouts: readonly Layout[]): boolean {
  return layouts.some((l) => l.elem === "f16");
}

/**
 * WGSL that defines `fn <fname>(i: u32) -> f32`, reading element `i` of the array variable
 * `v` with the given layout; returns the chunks (codec functions first).
 */
export function wgslLoad(l: Layout, v: string, fname: string): string[] {
  const d = l.dtype;
  if (l.elem === "f16") return [`fn ${fname}(i: u32) -> f32 { return f32(${v}[i]); }\n`];
  if (d.name === "f32") return [`fn ${fname}(i: u32) -> f32 { return bitcast<f32>(${v}[i]); }\n`];
  if (d.kind === "int") {
    const conv = d.signed ? `f32(bitcast<i32>(${v}[i]))` : `f32(${v}[i])`;
    return [`fn ${fname}(i: u32) -> f32 { return ${conv}; }\n`];
  }
  if (d.kind === "bool") return [`fn ${fname}(i: u32) -> f32 { return f32(${v}[i] != 0u); }\n`];
  const c = wgslCodec(d);
  if (l.lanes === 1) {
    return [...c.chunks, `fn ${fname}(i: u32) -> f32 { return ${c.decode}(${v}[i]); }\n`];
  }
  const mask = (2 ** l.laneBits - 1) >>> 0;
  return [
    ...c.chunks,
    `fn ${fname}(i: u32) -> f32 {
  let w = ${v}[i / ${l.lanes}u];
  return ${c.decode}((w >> ((i % ${l.lanes}u) * ${l.laneBits}u)) & ${mask}u);
}\n`,
  ];
}

/**
 * The encoder used when writing values of layout `l`: `fn(x: f32, rand: u32) -> u32` giving
 * the code (for ints and bool, the u32 bits). Returns its name and chunks.
 */
export function wgslEncoder(
  l: Layout,
  opts: WgslCodecOptions = {},
): { name: string; chunks: readonly string[] } {
  const c = wgslCodec(l.dtype, opts);
  return { name: c.encode, chunks: c.chunks };
}

/** The WGSL declaration of a storage binding with this layout. */
export function wgslBinding(
  l: Layout,
  group: number,
  binding: number,
  v: string,
  access: "read" | "read_write",
): string {
  return `@group(${group}) @binding(${binding}) var<storage, ${access}> ${v}: array<${l.elem}>;\n`;
}
