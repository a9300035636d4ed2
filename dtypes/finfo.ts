/**
 * Machine limits of float formats, as `torch.finfo` reports them, and of integer dtypes,
 * as `torch.iinfo` does.
 *
 * @module
 */

import { DTypeError } from "../errors.ts";
import { dtype, type DTypeLike } from "./dtype.ts";

/** The limits of a float format. */
export interface FInfo {
  /** The dtype's canonical name. */
  readonly dtype: string;
  /** Bits of one value. */
  readonly bits: number;
  /** Distance from 1.0 to the next larger value. */
  readonly eps: number;
  /** Largest finite value. */
  readonly max: number;
  /** Most negative finite value (-max). */
  readonly min: number;
  /** Smallest positive normal value (torch's `smallest_normal`, alias `tiny`). */
  readonly smallestNormal: number;
  /** Smallest positive subnormal value. */
  readonly smallestSubnormal: number;
  /** Approximate decimal resolution: 10^-floor(m * log10(2)). */
  readonly resolution: number;
  /** Whether +-Inf exist. */
  readonly hasInf: boolean;
  /** Whether NaN exists. */
  readonly hasNaN: boolean;
}

/**
 * The limits of a float dtype. For `bf16x2` the values are those of its components, except
 * `eps`, which is that of the pair's 16-bit significand (2^-15), and `bits` (32).
 *
 * @example
 * ```ts
 * import { finfo } from "./finfo.ts";
 * const f = finfo("e4m3");
 * console.log(f.max, f.smallestNormal, f.smallestSubnormal, f.eps, f.hasInf); // 448 0.015625 0.001953125 0.125 false
 * ```
 */
export function finfo(name: DTypeLike): FInfo {
  const d = dtype(name);
  if (d.kind !== "float" && d.kind !== "mcf") {
    throw new DTypeError(
      `finfo('${d.name}'): ${d.name} is not a float dtype; use iinfo() for integers`,
    );
  }
  const c = d.constants!;
  const m = d.mantissaBits;
  const max = (1 + c.maxMant / 2 ** m) * 2 ** (c.maxExpField - d.bias);
  const precisionBits = d.kind === "mcf" ? 2 * (m + 1) - 1 : m;
  return Object.freeze({
    dtype: d.name,
    bits: d.bits,
    eps: 2 ** -precisionBits,
    max,
    min: -max,
    smallestNormal: 2 ** c.emin,
    smallestSubnormal: 2 ** (c.emin - m),
    resolution: 10 ** -Math.floor(precisionBits * Math.log10(2)),
    hasInf: d.hasInf,
    hasNaN: d.nan !== "none",
  });
}

/** The limits of an integer dtype. */
export interface IInfo {
  /** The dtype's canonical name. */
  readonly dtype: string;
  /** Bits of one value. */
  readonly bits: number;
  /** Smallest value. */
  readonly min: number;
  /** Largest value. */
  readonly max: number;
}

/**
 * The limits of an integer dtype, as `torch.iinfo`.
 *
 * @example
 * ```ts
 * import { iinfo } from "./finfo.ts";
 * console.log(iinfo("i32").min, iinfo("u32").max); // -2147483648 4294967295
 * ```
 */
export function iinfo(name: DTypeLike): IInfo {
  const d = dtype(name);
  if (d.kind !== "int") {
    throw new DTypeError(
      `iinfo('${d.name}'): ${d.name} is not an integer dtype; use finfo() for floats`,
    );
  }
  return Object.freeze({
    dtype: d.name,
    bits: d.bits,
    min: d.signed ? -(2 ** 31) : 0,
    max: d.signed ? 2 ** 31 - 1 : 2 ** 32 - 1,
  });
}
