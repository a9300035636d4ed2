/**
 * WGSL codecs generated from the same descriptor as the host codec: the generic ExMy
 * encoder and decoder of `codec.ts`, written with integer bit operations so that GPUs that
 * flush f32 subnormals still give exact results, plus fast paths for f32 and bf16 that the
 * tests check against the generic ones.
 *
 * Each generator returns the names of the WGSL functions and a list of source chunks;
 * `wgslChunks()` joins chunks from several codecs without defining a function twice.
 *
 * @module
 */

import type { Rounding } from "./codec.ts";
import { WGSL_RNG } from "./rng.ts";
import { type DType, dtype, type DTypeLike } from "./dtype.ts";
import { DTypeError } from "../errors.ts";

/** The WGSL functions of one dtype's codec. */
export interface WgslCodec {
  /** `fn(code: u32) -> f32`: the decoded value. */
  readonly decode: string;
  /** `fn(code: u32) -> u32`: the bits of the decoded f32 (exact, NaN payload canonical). */
  readonly decodeBits: string;
  /** `fn(x: f32, rand: u32) -> u32`: the code of `x`; `rand` is used by stochastic rounding. */
  readonly encode: string;
  /** Source chunks that define the functions above. */
  readonly chunks: readonly string[];
}

/** Options of `wgslCodec`: the rounding and overflow behaviour of the encoder. */
export interface WgslCodecOptions {
  /** Rounding of the encoder (default `rne`). */
  rounding?: Rounding;
  /** Whether the encoder clamps overflow to +-max (default: the dtype's own default). */
  saturate?: boolean;
}

/** A WGSL identifier fragment for a dtype name. */
function ident(name: string): string {
  return name.replace(/[^A-Za-z0-9]/g, "_");
}

function u(n: number): string {
  return `${n >>> 0}u`;
}

function i(n: number): string {
  return `${n | 0}i`;
}

function genericDecode(d: DType, fname: string): string {
  const c = d.constants!;
  const expMask = (1 << c.e) - 1, mantMask = (1 << c.m) - 1;
  let specials = "";
  if (c.hasInf || c.nan === "ieee") {
    specials = `  if (ef == ${u(expMask)}) {
    ${c.hasInf ? "if (mant == 0u) { return sgn | 0x7f800000u; }" : ""}
    return sgn | 0x7fc00000u;
  }\n`;
  } else if (c.nan === "fn") {
    specials = `  if (ef == ${u(expMask)} && mant == ${
      u(mantMask)
    }) { return sgn | 0x7fc00000u; }\n`;
  }
  return `fn ${fname}(c: u32) -> u32 {
  let sgn = ((c >> ${u(c.signShift)}) & 1u) << 31u;
  let ef = (c >> ${u(c.m)}) & ${u(expMask)};
  let mant = c & ${u(mantMask)};
${specials}  var r: u32;
  var qe: i32;
  if (ef == 0u) {
    r = mant;
    qe = ${i(c.emin - c.m)};
  } else {
    r = ${u(1 << c.m)} + mant;
    qe = i32(ef) - ${i(c.bias + c.m)};
  }
  if (r == 0u) { return sgn; }
  let top = 31i - i32(countLeadingZeros(r));
  let lg = top + qe;
  if (lg >= -126i) {
    return sgn | (u32(lg + 127i) << 23u) | ((r << u32(23i - top)) & 0x7fffffu);
  }
  return sgn | (r << u32(qe + 149i));
}
`;
}

function genericEncode(d: DType, fname: string, rounding: Rounding, saturate: boolean): string {
  const c = d.constants!;
  const ovf = saturate
    ? c.maxCode
    : c.infCode >= 0
    ? c.infCode
    : c.nanCode >= 0
    ? c.nanCode
    : c.maxCode;
  const nan = c.nanCode >= 0 ? c.nanCode : c.maxCode;
  const one = 1 << c.m;
  let round: string;
  if (rounding === "rne") {
    round = `    let half = 1u << (shift - 1u);
    if (dd > half || (dd == half && (r & 1u) == 1u)) { r = r + 1u; }`;
  } else if (rounding === "stochastic") {
    round = `    if (rand < (dd << (32u - shift))) { r = r + 1u; }`;
  } else {
    round = "";
  }
  const far = rounding === "stochastic"
    ? `    let k = shift - 32u;
    if (k < 32u && rand < (s >> k)) { r = 1u; }`
    : "";
  return `fn ${fname}(x: f32, rand: u32) -> u32 {
  let bits = bitcast<u32>(x);
  let sgn = (bits >> 31u) << ${u(c.signShift)};
  let be = (bits >> 23u) & 0xffu;
  let bm = bits & 0x7fffffu;
  if (be == 255u) {
    if (bm != 0u) { return sgn | ${u(nan)}; }
    return sgn | ${u(ovf)};
  }
  if (be == 0u && bm == 0u) { return sgn; }
  var s: u32;
  var es: i32;
  var lg: i32;
  if (be == 0u) {
    s = bm;
    es = -149i;
    lg = 31i - i32(countLeadingZeros(bm)) - 149i;
  } else {
    s = bm | 0x800000u;
    es = i32(be) - 150i;
    lg = i32(be) - 127i;
  }
  let qe = max(lg, ${i(c.emin)}) - ${i(c.m)};
  let shift = u32(qe - es);
  var r: u32 = s;
  if (shift >= 32u) {
    r = 0u;
${far}
  } else if (shift > 0u) {
    r = s >> shift;
    let dd = s - (r << shift);
${round}
  }
  if (r == 0u) { return sgn; }
  var ef: i32;
  var mant: u32;
  if (r < ${u(one)}) {
    ef = 0i;
    mant = r;
  } else if (r < ${u(2 * one)}) {
    ef = qe + ${i(c.m + c.bias)};
    mant = r - ${u(one)};
  } else {
    ef = qe + ${i(c.m + 1 + c.bias)};
    mant = 0u;
  }
  if (ef > ${i(c.maxExpField)} || (ef == ${i(c.maxExpField)} && mant > ${u(c.maxMant)})) {
    return sgn | ${u(ovf)};
  }
  return sgn | (u32(ef) << ${u(c.m)}) | mant;
}
`;
}

/**
 * The WGSL codec of a dtype. `generic: true` forces the generic ExMy path even where a fast
 * path exists (the tests compare the two).
 *
 * @example
 * ```ts
 * import { wgslCodec } from "./wgsl.ts";
 * const c = wgslCodec("e4m3", { saturate: true });
 * console.log(c.encode, c.decode); // ulp_enc_e4m3_rne_sat ulp_dec_e4m3
 * console.log(c.chunks.join("").includes(`fn ${c.encode}(`)); // true
 * ```
 */
export function wgslCodec(
  name: DTypeLike,
  opts: WgslCodecOptions & { generic?: boolean } = {},
): WgslCodec {
  const d = dtype(name);
  const rounding = opts.rounding ?? "rne";
  const saturate = opts.saturate ?? d.saturate;
  const id = ident(d.name);
  const suffix = `${rounding === "stochastic" ? "sr" : rounding === "truncate" ? "tr" : "rne"}${
    saturate ? "_sat" : ""
  }${opts.generic ? "_g" : ""}`;
  const decBits = `ulp_decbits_${id}${opts.generic ? "_g" : ""}`;
  const dec = `ulp_dec_${id}${opts.generic ? "_g" : ""}`;
  const enc = `ulp_enc_${id}_${suffix}`;
  const decWrap = `fn ${dec}(c: u32) -> f32 { return bitcast<f32>(${decBits}(c)); }\n`;
  if (d.kind === "int" || d.kind === "bool") {
    const conv = d.kind === "bool"
      ? `select(0u, 1u, x != 0.0 || (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u)`
      : d.signed
      ? `select(bitcast<u32>(i32(x)), 0u, (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u)`
      : `select(u32(x), 0u, (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u)`;
    const back = d.kind === "bool" ? "f32(c != 0u)" : d.signed ? "f32(bitcast<i32>(c))" : "f32(c)";
    return {
      decode: dec,
      decodeBits: decBits,
      encode: enc,
      chunks: [
        `fn ${decBits}(c: u32) -> u32 { return bitcast<u32>(${back}); }\n`,
        decWrap,
        `fn ${enc}(x: f32, rand: u32) -> u32 { return ${conv}; }\n`,
      ],
    };
  }
  if (d.kind === "mcf") {
    const comp = wgslCodec(d.component!, opts);
    const lanes = d.component!.laneBits;
    const mask = (2 ** lanes - 1) >>> 0;
    return {
      decode: dec,
      decodeBits: decBits,
      encode: enc,
      chunks: [
        WGSL_RNG,
        ...comp.chunks,
        `fn ${dec}(c: u32) -> f32 {
  return ${comp.decode}(c >> ${u(lanes)}) + ${comp.decode}(c & ${u(mask)});
}\n`,
        `fn ${decBits}(c: u32) -> u32 { return bitcast<u32>(${dec}(c)); }\n`,
        `fn ${enc}(x: f32, rand: u32) -> u32 {
  let hi = ${comp.encode}(x, rand);
  let hv = ${comp.decode}(hi);
  var rest = x - hv;
  if ((bitcast<u32>(hv) & 0x7f800000u) == 0x7f800000u) { rest = 0.0; }
  return (hi << ${u(lanes)}) | ${comp.encode}(rest, ulp_hash32(rand));
}\n`,
      ],
    };
  }
  if (d.kind !== "float") {
    throw new DTypeError(`wgslCodec('${d.name}'): no WGSL codec for kind ${d.kind}`);
  }
  const fast = !opts.generic;
  let decSrc: string, encSrc: string;
  if (fast && d.name === "f32") {
    decSrc = `fn ${decBits}(c: u32) -> u32 {
  if ((c & 0x7fffffffu) > 0x7f800000u) { return (c & 0x80000000u) | 0x7fc00000u; }
  return c;
}\n`;
  } else if (fast && d.name === "bf16") {
    decSrc = `fn ${decBits}(c: u32) -> u32 {
  let b = c << 16u;
  if ((b & 0x7fffffffu) > 0x7f800000u) { return (b & 0x80000000u) | 0x7fc00000u; }
  return b;
}\n`;
  } else if (fast && d.name === "f16") {
    // branch-free: the generic decode's branches, inlined at every packed f16 load of an
    // unrolled kernel, took llvmpipe 40 s to compile for one attention backward on GL
    decSrc = `fn ${decBits}(c: u32) -> u32 {
  let sgn = (c & 0x8000u) << 16u;
  let e = (c >> 10u) & 31u;
  let m = c & 1023u;
  // a subnormal, m * 2^-24, is a normal f32: the product is exact
  let sub = bitcast<u32>(f32(m) * 5.9604644775390625e-8);
  let fin = select(((e + 112u) << 23u) | (m << 13u), sub, e == 0u);
  return sgn | select(fin, select(0x7fc00000u, 0x7f800000u, m == 0u), e == 31u);
}\n`;
  } else {
    decSrc = genericDecode(d, decBits);
  }
  if (fast && d.name === "f32" && rounding !== "stochastic" && !saturate) {
    encSrc = `fn ${enc}(x: f32, rand: u32) -> u32 {
  let b = bitcast<u32>(x);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return (b & 0x80000000u) | 0x7fc00000u; }
  return b;
}\n`;
  } else if (fast && d.name === "bf16" && rounding === "rne" && !saturate) {
    encSrc = `fn ${enc}(x: f32, rand: u32) -> u32 {
  let b = bitcast<u32>(x);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return ((b >> 16u) & 0x8000u) | 0x7fc0u; }
  return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}\n`;
  } else {
    encSrc = genericEncode(d, enc, rounding, saturate);
  }
  return { decode: dec, decodeBits: decBits, encode: enc, chunks: [decSrc, decWrap, encSrc] };
}

/**
 * Joins WGSL source chunks, keeping the first of identical chunks, so that kernels that use
 * several codecs (or one codec twice) define each function once.
 *
 * @example
 * ```ts
 * import { wgslChunks, wgslCodec } from "./wgsl.ts";
 * const a = wgslCodec("bf16"), b = wgslCodec("bf16x2");
 * const src = wgslChunks(a.chunks, b.chunks);
 * console.log(src.split(`fn ${a.decode}(`).length - 1); // 1
 * ```
 */
export function wgslChunks(...lists: (readonly string[])[]): string {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const list of lists) {
    for (const chunk of list) {
      if (!seen.has(chunk)) {
        seen.add(chunk);
        out.push(chunk);
      }
    }
  }
  return out.join("\n");
}
