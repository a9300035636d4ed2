/**
 * Dtype descriptors: every number format is a plain, frozen description (exponent and
 * mantissa bits, bias, Inf/NaN rules, storage lanes) plus the host codec that the numbers
 * imply. `dtype(name)` parses the names users type.
 *
 * Names: `f32 f16 bf16 e4m3 e5m2 i32 u32 bool`, any `eXmY` with X in 2..8 and Y in 1..23
 * (an IEEE-style format: bias 2^(X-1)-1, Inf and NaN at the all-ones exponent), the finite
 * variants `eXmYfn` with X in 2..7 (no Inf; at 8 bits and more the all-ones code is NaN,
 * below 8 bits there is no NaN, as in OCP MX FP6/FP4; at X = 8 the top binade would exceed
 * f32), and the multi-component pair `bf16x2`. `e4m3` is OCP's
 * e4m3fn (max 448); `e5m10`, `e8m7` and `e8m23` are the same formats as `f16`, `bf16`, `f32`
 * and resolve to them.
 *
 * @module
 */

import { DTypeError, ValueError } from "../errors.ts";
import { hash32, randomU32 } from "./rng.ts";
import {
  bitsF32,
  type CodeArray,
  decodeBits,
  decodeFloats,
  encodeBits,
  encodeFloats,
  type EncodeOptions,
  f32Bits,
  type FloatFormat,
  type FormatConstants,
  formatConstants,
  type NanStyle,
} from "./codec.ts";

/** What sort of values a dtype holds. `mcf`: a multi-component float (hi + lo). */
export type DTypeKind = "float" | "int" | "bool" | "mcf";

/**
 * A number format. Float formats carry the ExMy numbers; integer and bool dtypes carry
 * zeros there. `bits` is the width of one code; `lanesPerWord` how many codes share one u32
 * word of GPU storage (4 for 8-bit codes, 2 for 16-bit codes, 1 otherwise).
 */
export interface DType extends FloatFormat {
  /** The canonical name, as `dtype()` accepts it. */
  readonly name: string;
  /** float, int, bool or mcf (multi-component float). */
  readonly kind: DTypeKind;
  /** Whether overflow clamps to +-max by default when encoding. */
  readonly saturate: boolean;
  /** Bits of one value's code (sign, exponent, mantissa; 32 for an MCF pair). */
  readonly bits: number;
  /** Width of one lane of GPU storage: 8, 16 or 32. */
  readonly laneBits: number;
  /** Codes per u32 word of GPU storage. */
  readonly lanesPerWord: number;
  /** Bytes one value takes in GPU storage. */
  readonly bytesPerElement: number;
  /** For integers: whether the values are signed. */
  readonly signed: boolean;
  /** For an MCF pair: the format of each component. */
  readonly component: DType | null;
  /** Constants of the float format (max, Inf and NaN codes); null for int and bool. */
  readonly constants: FormatConstants | null;
  /**
   * Encodes f32 values to codes, one per value (an unsigned integer array as wide as the
   * code). For `bf16x2`, a code is `hi << 16 | lo`.
   */
  encode(values: Float32Array, opts?: EncodeOptions): CodeArray;
  /** Decodes codes to their f32 values. For `bf16x2`, the f32 nearest to hi + lo. */
  decode(codes: ArrayLike<number>): Float32Array;
}

/** A dtype or its name: what every ulp function that takes a dtype accepts. */
export type DTypeLike = string | DType;

const registry = new Map<string, DType>();

function laneBitsOf(bits: number): number {
  return bits <= 8 ? 8 : bits <= 16 ? 16 : 32;
}

function floatDType(
  name: string,
  exponentBits: number,
  mantissaBits: number,
  hasInf: boolean,
  nan: NanStyle,
): DType {
  const bias = 2 ** (exponentBits - 1) - 1;
  const fmt: FloatFormat = { exponentBits, mantissaBits, bias, hasInf, nan };
  const constants = formatConstants(fmt);
  const bits = 1 + exponentBits + mantissaBits;
  const laneBits = laneBitsOf(bits);
  const d: DType = {
    name,
    kind: "float",
    ...fmt,
    saturate: false,
    bits,
    laneBits,
    lanesPerWord: 32 / laneBits,
    bytesPerElement: laneBits / 8,
    signed: true,
    component: null,
    constants,
    encode: (values, opts) => encodeFloats(constants, bits, checkValues(name, values), opts),
    decode: (codes) => decodeFloats(constants, codes),
  };
  return Object.freeze(d);
}

function checkValues(name: string, values: Float32Array): Float32Array {
  if (!(values instanceof Float32Array)) {
    throw new ValueError(
      `dtype('${name}').encode(): values must be a Float32Array, got ${typeName(values)}; ` +
        `wrap them with new Float32Array(...)`,
    );
  }
  return values;
}

function typeName(v: unknown): string {
  return v === null ? "null" : typeof v === "object" ? v.constructor?.name ?? "object" : typeof v;
}

/** The fields of the dtypes that are not floats (ints, bool): one 32-bit word per element. */
const WORD_VALUES = {
  exponentBits: 0,
  mantissaBits: 0,
  bias: 0,
  hasInf: false,
  nan: "none",
  saturate: true,
  laneBits: 32,
  lanesPerWord: 1,
  bytesPerElement: 4,
  component: null,
  constants: null,
} as const;

function intDType(name: string, signed: boolean): DType {
  const d: DType = {
    name,
    kind: "int",
    ...WORD_VALUES,
    bits: 32,
    signed,
    encode: (values) => {
      // As torch's float -> int conversion: truncate toward zero; NaN -> 0; clamp the range.
      const out = new Uint32Array(checkValues(name, values).length);
      const lo = signed ? -(2 ** 31) : 0, hi = signed ? 2 ** 31 - 1 : 2 ** 32 - 1;
      for (let i = 0; i < values.length; i++) {
        const v = values[i];
        const t = Number.isNaN(v) ? 0 : Math.min(hi, Math.max(lo, Math.trunc(v)));
        out[i] = t >>> 0;
      }
      return out;
    },
    decode: (codes) => {
      const out = new Float32Array(codes.length);
      for (let i = 0; i < codes.length; i++) out[i] = signed ? codes[i] | 0 : codes[i] >>> 0;
      return out;
    },
  };
  return Object.freeze(d);
}

function boolDType(): DType {
  const d: DType = {
    name: "bool",
    kind: "bool",
    ...WORD_VALUES,
    bits: 1,
    signed: false,
    encode: (values) => {
      const out = new Uint32Array(checkValues("bool", values).length);
      for (let i = 0; i < values.length; i++) out[i] = values[i] !== 0 ? 1 : 0; // NaN is true
      return out;
    },
    decode: (codes) => Float32Array.from(codes, (c) => (c !== 0 ? 1 : 0)),
  };
  return Object.freeze(d);
}

function mcfDType(name: string, comp: DType): DType {
  const c = comp.constants!;
  const d: DType = {
    name,
    kind: "mcf",
    exponentBits: comp.exponentBits,
    mantissaBits: comp.mantissaBits,
    bias: comp.bias,
    hasInf: comp.hasInf,
    nan: comp.nan,
    saturate: false,
    bits: 2 * comp.bits,
    laneBits: 32,
    lanesPerWord: 1,
    bytesPerElement: 4,
    signed: true,
    component: comp,
    constants: c,
    encode: (values, opts = {}) => {
      // hi = round(x); lo = round(x - hi) (x - hi is exact in f32 when hi is finite). The
      // low part's random bits are hash32 of the high part's, as in the WGSL codec.
      checkValues(name, values);
      const rounding = opts.rounding ?? "rne", saturate = opts.saturate ?? false;
      const seed = opts.seed ?? 0, offset = opts.offset ?? 0;
      const out = new Uint32Array(values.length);
      const shift = 2 ** comp.laneBits;
      for (let i = 0; i < values.length; i++) {
        const rand = rounding === "stochastic" ? randomU32(seed, offset + i) : 0;
        const hi = encodeBits(c, f32Bits(values[i]), rounding, saturate, rand);
        const hv = bitsF32(decodeBits(c, hi));
        const rest = Number.isFinite(hv) ? Math.fround(values[i] - hv) : 0;
        const lo = encodeBits(c, f32Bits(rest), rounding, saturate, hash32(rand));
        out[i] = hi * shift + lo;
      }
      return out;
    },
    decode: (codes) => {
      const out = new Float32Array(codes.length);
      const shift = 2 ** comp.laneBits;
      const tmp = new Float32Array(2);
      const tb = new Uint32Array(tmp.buffer);
      for (let i = 0; i < codes.length; i++) {
        tb[0] = decodeBits(c, Math.floor(codes[i] / shift));
        tb[1] = decodeBits(c, codes[i] % shift);
        out[i] = tmp[0] + tmp[1];
      }
      return out;
    },
  };
  return Object.freeze(d);
}

function register(d: DType, ...aliases: string[]): DType {
  registry.set(d.name, d);
  for (const a of aliases) registry.set(a, d);
  return d;
}

/** f32: IEEE binary32. */
export const float32: DType = register(floatDType("f32", 8, 23, true, "ieee"), "e8m23", "float32");
/** f16: IEEE binary16. */
export const float16: DType = register(floatDType("f16", 5, 10, true, "ieee"), "e5m10", "float16");
/** bf16: bfloat16, f32's range with 7 mantissa bits. */
export const bfloat16: DType = register(floatDType("bf16", 8, 7, true, "ieee"), "e8m7", "bfloat16");
/** e4m3: OCP FP8 E4M3 (e4m3fn): max 448, no Inf, NaN at 0x7F/0xFF. */
export const e4m3: DType = register(floatDType("e4m3", 4, 3, false, "fn"), "e4m3fn");
/** e5m2: OCP FP8 E5M2, IEEE-like: max 57344, Inf 0x7C, NaN 0x7D-0x7F. */
export const e5m2: DType = register(floatDType("e5m2", 5, 2, true, "ieee"));
/** i32: 32-bit signed integers. */
export const int32: DType = register(intDType("i32", true), "int32");
/** u32: 32-bit unsigned integers. */
export const uint32: DType = register(intDType("u32", false), "uint32");
/** bool: stored as one u32 per value, 0 or 1. */
export const boolean: DType = register(boolDType());
/** bf16x2: a value stored as the unevaluated sum hi + lo of two bf16 (Collage's MCF). */
export const bf16x2: DType = register(mcfDType("bf16x2", bfloat16));

const EXMY = /^e([0-9]+)m([0-9]+)(fn)?$/;

/** The forms `dtype()` accepts, for error messages. */
export const DTYPE_FORMS: string =
  "f32, f16, bf16, e4m3, e5m2, i32, u32, bool, bf16x2, eXmY with X in 2..8 and Y in 1..23 " +
  "(IEEE-style, e.g. e8m3, e5m6, e3m2) or eXmYfn with X in 2..7 (finite, e.g. e2m1fn)";

/**
 * The dtype with the given name (or the descriptor itself). Throws a `DTypeError` that lists
 * the valid forms when the name is unknown.
 *
 * @example
 * ```ts
 * import { dtype } from "./dtype.ts";
 * const d = dtype("e4m3");
 * console.log(d.bits, d.lanesPerWord, Array.from(d.encode(new Float32Array([1.5, 500]), { saturate: true }))); // 8 4 [60, 126]
 * console.log(Array.from(dtype("bf16").decode([0x3f80, 0xc000]))); // [1, -2]
 * ```
 */
export function dtype(name: DTypeLike): DType {
  if (typeof name === "object" && name !== null && registry.get(name.name) === name) return name;
  if (typeof name !== "string") {
    throw new DTypeError(
      `dtype(): expected a dtype name, got ${typeName(name)}; valid forms: ${DTYPE_FORMS}`,
    );
  }
  const known = registry.get(name);
  if (known) return known;
  const m = EXMY.exec(name);
  if (m) {
    const e = Number(m[1]), mb = Number(m[2]), fn = m[3] === "fn";
    if (e < 2 || e > 8 || mb < 1 || mb > 23) {
      throw new DTypeError(
        `dtype('${name}'): exponent bits must be 2..8 and mantissa bits 1..23 ` +
          `(got ${e} and ${mb}); valid forms: ${DTYPE_FORMS}`,
      );
    }
    if (fn && e === 8) {
      // An e8 finite format's top binade (exponent field 255) lies beyond f32's range, so
      // its values could not be decoded to f32.
      throw new DTypeError(
        `dtype('${name}'): a finite eXmYfn format needs X in 2..7 (at X = 8 its largest ` +
          `values exceed f32's range); use e8m${mb} instead; valid forms: ${DTYPE_FORMS}`,
      );
    }
    const bits = 1 + e + mb;
    const canonical = fn ? `e${e}m${mb}fn` : `e${e}m${mb}`;
    const again = registry.get(canonical);
    if (again) return register(again, name);
    const d = fn
      ? floatDType(canonical, e, mb, false, bits >= 8 ? "fn" : "none")
      : floatDType(canonical, e, mb, true, "ieee");
    return register(d, name);
  }
  throw new DTypeError(`dtype('${name}'): unknown dtype; valid forms: ${DTYPE_FORMS}`);
}

/**
 * Whether the dtype holds floating-point values (plain float formats and MCF pairs).
 *
 * @example
 * ```ts
 * import { isFloat } from "./dtype.ts";
 * console.log(isFloat("bf16"), isFloat("i32")); // true false
 * ```
 */
export function isFloat(d: DTypeLike): boolean {
  const k = dtype(d).kind;
  return k === "float" || k === "mcf";
}

/**
 * The dtype of a binary op's result, as PyTorch promotes: the same dtype stays; a float
 * beats an integer or bool; of two floats the one whose range and precision both contain the
 * other's wins, and f32 otherwise (bf16 with f16 gives f32, e4m3 with e5m2 gives f32).
 * bf16x2 contains every format that bf16 contains.
 *
 * @example
 * ```ts
 * import { promoteTypes } from "./dtype.ts";
 * console.log(promoteTypes("bf16", "e4m3").name, promoteTypes("bf16", "f16").name, promoteTypes("i32", "f16").name); // bf16 f32 f16
 * ```
 */
export function promoteTypes(a: DTypeLike, b: DTypeLike): DType {
  const x = dtype(a), y = dtype(b);
  if (x === y) return x;
  const fx = isFloat(x), fy = isFloat(y);
  if (fx !== fy) return fx ? x : y;
  if (!fx) {
    // bool < u32 < i32 for integer mixes (no i64 here: u32 with i32 gives i32).
    const rank = (d: DType) => (d.kind === "bool" ? 0 : d.signed ? 2 : 1);
    return rank(x) >= rank(y) ? x : y;
  }
  const contains = (p: DType, q: DType) =>
    p.exponentBits >= q.exponentBits && p.mantissaBits >= q.mantissaBits &&
    (p.kind === "mcf" || q.kind !== "mcf");
  if (contains(x, y)) return x;
  if (contains(y, x)) return y;
  return float32;
}
