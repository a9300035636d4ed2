/**
 * Host codecs: one generic ExMy encoder and decoder, driven by the format's numbers, that
 * covers every float format ulp knows (f32, f16, bf16, the FP8 formats, every simulated
 * eXmY and the finite `fn` variants). The algorithm works on the integer bits of the f32
 * input, so it is exact, handles subnormals on both sides, and is the same algorithm the
 * WGSL codec (`wgsl.ts`) runs on the GPU.
 *
 * Rounding happens first, in an unbounded exponent range; overflow is handled after it:
 * saturating mode clamps to +-max (Inf too), non-saturating mode gives Inf where the format
 * has one, else NaN where it has one, else +-max.
 *
 * @module
 */

import { randomU32 } from "./rng.ts";

/** How a value is rounded to a format with fewer bits. */
export type Rounding = "rne" | "stochastic" | "truncate";

/** How a float format spells NaN: IEEE (all-ones exponent, mantissa non-zero), `fn` (only
 * the all-ones code, as OCP e4m3), or `none` (no NaN at all, as OCP MX FP6/FP4). */
export type NanStyle = "ieee" | "fn" | "none";

/** The numbers that define a binary float format: what the generic codec needs. */
export interface FloatFormat {
  /** Exponent field width, 2..8. */
  readonly exponentBits: number;
  /** Mantissa (fraction) field width, 1..23. */
  readonly mantissaBits: number;
  /** Exponent bias: the stored exponent minus the bias is the binade of a normal value. */
  readonly bias: number;
  /** Whether the format has +-Inf (at the all-ones exponent, zero mantissa). */
  readonly hasInf: boolean;
  /** How NaN is encoded, if at all. */
  readonly nan: NanStyle;
}

/** Options of `encode`. */
export interface EncodeOptions {
  /** Rounding mode: `rne` (default), `stochastic` or `truncate`. */
  rounding?: Rounding;
  /** Clamp values beyond the largest finite value to +-max (Inf included). */
  saturate?: boolean;
  /** Seed of the counter-based stream used by stochastic rounding (default 0). */
  seed?: number;
  /** Offset of the first value's counter in the stream (default 0). */
  offset?: number;
}

/** The derived constants of a format, computed once per descriptor. */
export interface FormatConstants {
  /** Exponent field width. */
  readonly e: number;
  /** Mantissa field width. */
  readonly m: number;
  /** Exponent bias. */
  readonly bias: number;
  /** Smallest normal exponent, 1 - bias. */
  readonly emin: number;
  /** Largest exponent field holding finite values. */
  readonly maxExpField: number;
  /** Largest mantissa field at `maxExpField`. */
  readonly maxMant: number;
  /** Code of +max (sign bit clear). */
  readonly maxCode: number;
  /** Code of +Inf, or -1 when the format has none. */
  readonly infCode: number;
  /** Code of the canonical positive NaN, or -1 when the format has none. */
  readonly nanCode: number;
  /** Position of the sign bit (e + m). */
  readonly signShift: number;
  /** Whether the format has +-Inf. */
  readonly hasInf: boolean;
  /** How NaN is encoded, if at all. */
  readonly nan: NanStyle;
}

/**
 * Derives the constants of a format: where max, Inf and NaN are.
 *
 * @example
 * ```ts
 * import { formatConstants } from "./codec.ts";
 * const c = formatConstants({ exponentBits: 4, mantissaBits: 3, bias: 7, hasInf: false, nan: "fn" });
 * console.log(c.maxCode.toString(16)); // "7e" (448)
 * ```
 */
export function formatConstants(f: FloatFormat): FormatConstants {
  const e = f.exponentBits, m = f.mantissaBits;
  const allOnesExp = (1 << e) - 1;
  const allOnesMant = (1 << m) - 1;
  let maxExpField: number, maxMant: number, infCode = -1, nanCode = -1;
  if (f.hasInf || f.nan === "ieee") {
    // IEEE style: the all-ones exponent is reserved for Inf and NaN.
    maxExpField = allOnesExp - 1;
    maxMant = allOnesMant;
    if (f.hasInf) infCode = allOnesExp << m;
    if (f.nan === "ieee") nanCode = (allOnesExp << m) | (1 << (m - 1));
  } else if (f.nan === "fn") {
    // Finite with one NaN code per sign: all-ones exponent and mantissa.
    maxExpField = allOnesExp;
    maxMant = allOnesMant - 1;
    nanCode = (allOnesExp << m) | allOnesMant;
  } else {
    maxExpField = allOnesExp;
    maxMant = allOnesMant;
  }
  return {
    e,
    m,
    bias: f.bias,
    emin: 1 - f.bias,
    maxExpField,
    maxMant,
    maxCode: (maxExpField << m) | maxMant,
    infCode,
    nanCode,
    signShift: e + m,
    hasInf: f.hasInf,
    nan: f.nan,
  };
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The bits of `x` rounded to f32. */
export function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0];
}

/** The f32 whose bits are `b`. */
export function bitsF32(b: number): number {
  u32[0] = b >>> 0;
  return f32[0];
}

const enum Mode {
  Rne = 0,
  Stochastic = 1,
  Truncate = 2,
}

function modeOf(r: Rounding | undefined): Mode {
  return r === "stochastic" ? Mode.Stochastic : r === "truncate" ? Mode.Truncate : Mode.Rne;
}

/** What an out-of-range magnitude becomes (sign not applied). */
function overflowCode(c: FormatConstants, saturate: boolean): number {
  if (saturate) return c.maxCode;
  if (c.infCode >= 0) return c.infCode;
  if (c.nanCode >= 0) return c.nanCode;
  return c.maxCode;
}

/**
 * Encodes one f32, given as its bits, to a code of the format. `rand` is the uniform u32
 * used by stochastic rounding. This is the reference algorithm; `wgsl.ts` emits the same.
 *
 * @example
 * ```ts
 * import { encodeBits, f32Bits, formatConstants } from "./codec.ts";
 * const bf16 = formatConstants({ exponentBits: 8, mantissaBits: 7, bias: 127, hasInf: true, nan: "ieee" });
 * console.log(encodeBits(bf16, f32Bits(1.0), "rne", false, 0).toString(16)); // "3f80"
 * ```
 */
export function encodeBits(
  c: FormatConstants,
  bits: number,
  rounding: Rounding,
  saturate: boolean,
  rand: number,
): number {
  return encodeBitsMode(c, bits >>> 0, modeOf(rounding), saturate, rand >>> 0);
}

function encodeBitsMode(
  c: FormatConstants,
  bits: number,
  mode: Mode,
  saturate: boolean,
  rand: number,
): number {
  const sign = bits >>> 31;
  const signOut = sign ? 2 ** c.signShift : 0;
  const E = (bits >>> 23) & 0xff;
  const M = bits & 0x7fffff;
  if (E === 255) {
    if (M !== 0) return signOut + (c.nanCode >= 0 ? c.nanCode : c.maxCode);
    return signOut + overflowCode(c, saturate); // +-Inf
  }
  if (E === 0 && M === 0) return signOut;
  // value = S * 2^es, with floor(log2 value) = lg
  const S = E === 0 ? M : M | 0x800000;
  const es = E === 0 ? -149 : E - 150;
  const lg = E === 0 ? 31 - Math.clz32(M) - 149 : E - 127;
  const qe = Math.max(lg, c.emin) - c.m; // exponent of the target's quantum here
  const shift = qe - es; // bits dropped; >= 0 for every format with m <= 23, emin >= -126
  let R: number;
  if (shift === 0) {
    R = S;
  } else {
    let D: number, half: number, frac32: number;
    if (shift < 32) {
      R = S >>> shift;
      D = S - R * 2 ** shift;
      half = 2 ** (shift - 1);
      frac32 = D * 2 ** (32 - shift);
    } else {
      R = 0;
      D = S;
      half = 2 ** (shift - 1);
      frac32 = Math.floor(S / 2 ** (shift - 32));
    }
    if (mode === Mode.Rne) {
      if (D > half || (D === half && (R & 1) === 1)) R += 1;
    } else if (mode === Mode.Stochastic) {
      if (rand < frac32) R += 1;
    }
  }
  if (R === 0) return signOut;
  const one = 2 ** c.m;
  let expField: number, mant: number;
  if (R < one) {
    expField = 0;
    mant = R;
  } else if (R < 2 * one) {
    expField = qe + c.m + c.bias;
    mant = R - one;
  } else {
    expField = qe + c.m + 1 + c.bias;
    mant = 0;
  }
  if (expField > c.maxExpField || (expField === c.maxExpField && mant > c.maxMant)) {
    return signOut + overflowCode(c, saturate);
  }
  return signOut + expField * one + mant;
}

/**
 * Decodes one code of the format to the bits of the f32 with the same value (exact: every
 * format with at most 8 exponent and 23 mantissa bits is a subset of f32). NaN codes give
 * the canonical f32 NaN with the code's sign.
 *
 * @example
 * ```ts
 * import { bitsF32, decodeBits, formatConstants } from "./codec.ts";
 * const e4m3 = formatConstants({ exponentBits: 4, mantissaBits: 3, bias: 7, hasInf: false, nan: "fn" });
 * console.log(bitsF32(decodeBits(e4m3, 0x7e))); // 448
 * ```
 */
export function decodeBits(c: FormatConstants, code: number): number {
  const signBit = Math.floor(code / 2 ** c.signShift) & 1;
  const signOut = signBit ? 0x80000000 : 0;
  const expField = Math.floor(code / 2 ** c.m) & ((1 << c.e) - 1);
  const mant = code & ((1 << c.m) - 1);
  const allOnesExp = (1 << c.e) - 1;
  if (expField === allOnesExp) {
    if (c.hasInf || c.nan === "ieee") {
      if (mant === 0 && c.hasInf) return (signOut | 0x7f800000) >>> 0;
      return (signOut | 0x7fc00000) >>> 0;
    }
    if (c.nan === "fn" && mant === (1 << c.m) - 1) return (signOut | 0x7fc00000) >>> 0;
  }
  // value = R * 2^qe
  let R: number, qe: number;
  if (expField === 0) {
    R = mant;
    qe = c.emin - c.m;
  } else {
    R = 2 ** c.m + mant;
    qe = expField - c.bias - c.m;
  }
  if (R === 0) return signOut >>> 0;
  const top = 31 - Math.clz32(R); // floor(log2 R)
  const lg = top + qe;
  if (lg >= -126) {
    const mant32 = (R * 2 ** (23 - top)) & 0x7fffff;
    return (signOut | ((lg + 127) << 23) | mant32) >>> 0;
  }
  return (signOut | (R * 2 ** (qe + 149))) >>> 0;
}

/** The typed array that holds codes of a width of `bits`. */
export type CodeArray = Uint8Array | Uint16Array | Uint32Array;

/** An empty code array wide enough for codes of `bits` bits. */
function codeArray(bits: number, n: number): CodeArray {
  return bits <= 8 ? new Uint8Array(n) : bits <= 16 ? new Uint16Array(n) : new Uint32Array(n);
}

/**
 * Encodes every value of `values` to the format: the generic host encoder.
 *
 * @example
 * ```ts
 * import { encodeFloats, formatConstants } from "./codec.ts";
 * const e5m2 = formatConstants({ exponentBits: 5, mantissaBits: 2, bias: 15, hasInf: true, nan: "ieee" });
 * console.log(Array.from(encodeFloats(e5m2, 8, new Float32Array([1, -2, 1e6])))); // [60, 192, 124]
 * ```
 */
export function encodeFloats(
  c: FormatConstants,
  bits: number,
  values: Float32Array,
  opts: EncodeOptions = {},
): CodeArray {
  const mode = modeOf(opts.rounding);
  const saturate = opts.saturate ?? false;
  const seed = opts.seed ?? 0, offset = opts.offset ?? 0;
  const out = codeArray(bits, values.length);
  const vb = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < values.length; i++) {
    const rand = mode === Mode.Stochastic ? randomU32(seed, offset + i) : 0;
    out[i] = encodeBitsMode(c, vb[i], mode, saturate, rand);
  }
  return out;
}

/**
 * Decodes every code to its f32 value: the generic host decoder.
 *
 * @example
 * ```ts
 * import { decodeFloats, formatConstants } from "./codec.ts";
 * const e4m3 = formatConstants({ exponentBits: 4, mantissaBits: 3, bias: 7, hasInf: false, nan: "fn" });
 * console.log(Array.from(decodeFloats(e4m3, new Uint8Array([0x38, 0x01, 0xfe])))); // [1, 0.001953125, -448]
 * ```
 */
export function decodeFloats(c: FormatConstants, codes: ArrayLike<number>): Float32Array {
  const out = new Float32Array(codes.length);
  const ob = new Uint32Array(out.buffer);
  for (let i = 0; i < codes.length; i++) ob[i] = decodeBits(c, codes[i]);
  return out;
}
