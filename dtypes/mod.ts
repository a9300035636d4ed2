/**
 * Number formats as first-class dtypes: descriptors, exact host codecs, machine limits and
 * the generated WGSL codecs that run the same algorithm on the GPU.
 *
 * @example
 * ```ts
 * import { dtype, finfo } from "./mod.ts";
 * const e4m3 = dtype("e4m3");
 * const codes = e4m3.encode(new Float32Array([0.1, 1, 300, 1000]), { saturate: true });
 * console.log(Array.from(e4m3.decode(codes))); // [0.1015625, 1, 288, 448]
 * console.log(finfo("e5m2").max); // 57344
 * ```
 * @module
 */

export {
  bf16x2,
  bfloat16,
  boolean,
  type DType,
  dtype,
  DTYPE_FORMS,
  type DTypeKind,
  type DTypeLike,
  e4m3,
  e5m2,
  float16,
  float32,
  int32,
  isFloat,
  promoteTypes,
  uint32,
} from "./dtype.ts";
export {
  bitsF32,
  type CodeArray,
  decodeBits,
  encodeBits,
  type EncodeOptions,
  f32Bits,
  type FloatFormat,
  type FormatConstants,
  type NanStyle,
  type Rounding,
} from "./codec.ts";
export { type FInfo, finfo, type IInfo, iinfo } from "./finfo.ts";
export { hash32, randomU32, WGSL_RNG } from "./rng.ts";
export { wgslChunks, type WgslCodec, wgslCodec, type WgslCodecOptions } from "./wgsl.ts";
