/**
 * Exactness tests of the host codec (`dtype(name).encode/decode`), against an independent
 * reference written here with exact BigInt arithmetic. The reference never calls the
 * library's codec: it enumerates a format's representable values from the format's numbers
 * (exponent bits, mantissa bits, bias 2^(e-1)-1, Inf/NaN rules), converts each f32 input to
 * an exact scaled integer from its bits, and finds the neighbouring representable values by
 * binary search over the (monotone) codes.
 *
 * Every value here is scaled by 2^149, so that every f32 and every value of every format
 * (whose quantum is at least 2^(emin - m) >= 2^-149) is an integer.
 */

import assert from "node:assert/strict";
import { type DType, dtype } from "../../dtypes/mod.ts";

// ---------------------------------------------------------------------------------------
// The independent reference
// ---------------------------------------------------------------------------------------

type RefNan = "ieee" | "fn" | "none";

/** A format as the reference sees it: only its defining numbers. */
interface RefFormat {
  readonly name: string;
  readonly e: number;
  readonly m: number;
  readonly bias: number;
  readonly hasInf: boolean;
  readonly nan: RefNan;
  /** Largest positive finite code. */
  readonly maxCode: number;
  /** Code of +Inf, or -1. */
  readonly infCode: number;
  /** Position of the sign bit. */
  readonly signBit: number;
  /** Value (scaled by 2^149) of positive code k, for k in 0..maxCode+1 (table or function). */
  readonly value: (k: number) => bigint;
}

const SCALE = 149n;

/** Exact value of a format code's magnitude bits, scaled by 2^149, for the unbounded range. */
function rawValue(m: number, bias: number, k: number): bigint {
  const expField = Math.floor(k / 2 ** m);
  const mant = k % 2 ** m;
  const emin = 1 - bias;
  if (expField === 0) return BigInt(mant) << BigInt(emin - m + 149);
  // expField may be 2^e (one past the field) for the code just after max: that is the
  // value the unbounded exponent range has there.
  return (BigInt(2 ** m + mant)) << BigInt(expField - bias - m + 149);
}

/** Builds the reference description of the format `eXmY` (fn: the finite variant). */
function refFormat(name: string, e: number, m: number, fn: boolean): RefFormat {
  const bias = 2 ** (e - 1) - 1;
  const bits = 1 + e + m;
  const hasInf = !fn;
  const nan: RefNan = fn ? (bits >= 8 ? "fn" : "none") : "ieee";
  const allOnesExp = 2 ** e - 1;
  let maxCode: number;
  if (nan === "ieee") maxCode = allOnesExp * 2 ** m - 1; // just below Inf
  else if (nan === "fn") maxCode = 2 ** (e + m) - 2; // just below the all-ones NaN
  else maxCode = 2 ** (e + m) - 1; // every code is finite
  const infCode = hasInf ? allOnesExp * 2 ** m : -1;
  let value: (k: number) => bigint;
  if (maxCode < 70000) {
    const table: bigint[] = [];
    for (let k = 0; k <= maxCode + 1; k++) table.push(rawValue(m, bias, k));
    value = (k) => table[k];
  } else {
    value = (k) => rawValue(m, bias, k);
  }
  return { name, e, m, bias, hasInf, nan, maxCode, infCode, signBit: e + m, value };
}

const f32v = new Float32Array(1);
const u32v = new Uint32Array(f32v.buffer);
function bitsOf(x: number): number {
  f32v[0] = x;
  return u32v[0];
}
function fromBits(b: number): number {
  u32v[0] = b >>> 0;
  return f32v[0];
}

/** The exact magnitude of a finite f32 given by its bits, scaled by 2^149. */
function f32Scaled(bits: number): bigint {
  const E = (bits >>> 23) & 0xff;
  const M = bits & 0x7fffff;
  if (E === 0) return BigInt(M);
  return BigInt(M + 0x800000) << BigInt(E - 1);
}

/** Whether the scaled value x * 2^-149 is exactly an f32. */
function isF32Exact(x: bigint): boolean {
  const d = Number(x);
  if (BigInt(d) !== x) return false;
  const v = d * 2 ** -149;
  return Math.fround(v) === v;
}

/** The exact signed value of a finite f32 given by its bits, scaled by 2^149. */
function signedScaled(bits: number): bigint {
  return bits >>> 31 ? -f32Scaled(bits) : f32Scaled(bits);
}

/** The f32 equal to a scaled exact value (which must be exactly an f32). */
function scaledToF32(x: bigint, negative: boolean): number {
  // x < 2^278: an f64 holds it exactly when it has at most 53 significant bits, and the
  // scaling by 2^-149 is then exact too.
  assert.ok(isF32Exact(x), `scaledToF32: ${x} * 2^-149 is not an f32`);
  const v = Number(x) * 2 ** -149;
  return negative ? -v : v;
}

/** The largest code k in 0..maxCode with value(k) <= x, for 0 <= x < value(maxCode + 1). */
function floorCode(f: RefFormat, x: bigint): number {
  let lo = 0, hi = f.maxCode + 1; // value(lo) <= x < value(hi)
  while (hi - lo > 1) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (f.value(mid) <= x) lo = mid;
    else hi = mid;
  }
  return lo;
}

/** What refEncode returns when the result must be a NaN code (any NaN code will do). */
const REF_NAN = -1;

/** What an out-of-range magnitude becomes, as the design says (sign not applied). */
function overflowMagnitude(f: RefFormat, saturate: boolean): number {
  if (saturate) return f.maxCode;
  if (f.hasInf) return f.infCode;
  if (f.nan !== "none") return REF_NAN;
  return f.maxCode;
}

/**
 * The reference encoder: round `bits` (an f32) to the format, to nearest with ties to even
 * (`rne`) or toward zero (`truncate`), in an unbounded exponent range, then handle overflow.
 * Returns the code, or REF_NAN when the result must be a NaN code.
 */
function refEncode(
  f: RefFormat,
  bits: number,
  rounding: "rne" | "truncate",
  saturate: boolean,
): number {
  const negative = bits >>> 31 === 1;
  const sign = negative ? 2 ** f.signBit : 0;
  const E = (bits >>> 23) & 0xff;
  const M = bits & 0x7fffff;
  if (E === 255 && M !== 0) return f.nan === "none" ? sign + f.maxCode : REF_NAN;
  let mag: number;
  if (E === 255) {
    mag = overflowMagnitude(f, saturate);
  } else {
    const x = f32Scaled(bits);
    const next = f.value(f.maxCode + 1); // first value past max, in the unbounded range
    if (x >= next) {
      mag = overflowMagnitude(f, saturate);
    } else {
      let k = floorCode(f, x);
      if (rounding === "rne" && f.value(k) !== x) {
        // Compare x with the midpoint: 2x vs value(k) + value(k+1).
        const twice = 2n * x, sum = f.value(k) + f.value(k + 1);
        if (twice > sum || (twice === sum && k % 2 === 1)) k += 1;
      }
      mag = k > f.maxCode ? overflowMagnitude(f, saturate) : k;
    }
  }
  return mag === REF_NAN ? REF_NAN : sign + mag;
}

/** Whether `code` is a NaN code of the format, judged on its bits. */
function isNanCode(f: RefFormat, code: number): boolean {
  const mag = code % 2 ** f.signBit;
  const expField = Math.floor(mag / 2 ** f.m);
  const mant = mag % 2 ** f.m;
  const allOnesExp = 2 ** f.e - 1;
  if (f.nan === "ieee") return expField === allOnesExp && mant !== 0;
  if (f.nan === "fn") return expField === allOnesExp && mant === 2 ** f.m - 1;
  return false;
}

/** Whether `code` is +-Inf. */
function isInfCode(f: RefFormat, code: number): boolean {
  return f.hasInf && code % 2 ** f.signBit === f.infCode;
}

/** The reference decoder: NaN, +-Inf, or the exact value of a finite code. */
function refDecode(f: RefFormat, code: number): number {
  if (isNanCode(f, code)) return NaN;
  const negative = Math.floor(code / 2 ** f.signBit) === 1;
  if (isInfCode(f, code)) return negative ? -Infinity : Infinity;
  return scaledToF32(f.value(code % 2 ** f.signBit), negative);
}

// ---------------------------------------------------------------------------------------
// Test inputs
// ---------------------------------------------------------------------------------------

/** A small, fast, seeded PRNG (mulberry32) for test inputs; independent of ulp's rng. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/**
 * At least `n` distinct f32 inputs (as bits, both signs of each) aimed at the format:
 * +-0, NaNs, +-Inf; the smallest subnormal, half and three quarters of it, the largest
 * subnormal, the min normal, max, the overflow tie past max and the first value past max,
 * each with its 40 f32 neighbours on either side; exact ties between adjacent codes with
 * their f32 neighbours (every tie for formats up to 12 bits, a sample otherwise); random
 * f32 bit patterns; random mantissas times 2^k across the format's exponent range +- 4
 * binades; random f32 subnormals; values near the format's subnormal boundary and near max.
 */
function inputsFor(f: RefFormat, n: number, seed: number): Uint32Array {
  const rnd = prng(seed);
  const seen = new Set<number>();
  const push = (b: number) => {
    seen.add(b >>> 0);
    seen.add((b ^ 0x80000000) >>> 0); // both signs
  };
  for (const b of [0, 0x7f800000, 0x7fc00000, 0x7f800001, 0x7fffffff, 0x7fa00000, 1, 0x7fffff]) {
    push(b);
  }
  const emin = 1 - f.bias;
  const minSub = f.value(1);
  const poi: bigint[] = [
    minSub,
    minSub / 2n,
    (minSub * 3n) / 4n,
    f.value(2 ** f.m), // min normal
    f.value(2 ** f.m - 1), // largest subnormal
    f.value(f.maxCode - 1),
    f.value(f.maxCode),
    (f.value(f.maxCode) + f.value(f.maxCode + 1)) / 2n, // the overflow tie
    f.value(f.maxCode + 1), // the first value past max (unbounded range)
  ];
  for (const x of poi) {
    if (!isF32Exact(x)) continue;
    const p = bitsOf(scaledToF32(x, false));
    for (let d = -40; d <= 40; d++) if (p + d >= 0 && p + d < 0x7f800000) push(p + d);
  }
  // Exact ties between adjacent codes, and their f32 neighbours.
  const tie = (k: number) => {
    const mid = f.value(k) + f.value(k + 1);
    if (mid % 2n !== 0n || !isF32Exact(mid / 2n)) return; // not an f32 (e8m23's ties)
    const b = bitsOf(scaledToF32(mid / 2n, false));
    push(b);
    if (b > 0) push(b - 1);
    if (b < 0x7f7fffff) push(b + 1);
  };
  if (f.maxCode < 4096) { for (let k = 0; k <= f.maxCode; k++) tie(k); }
  else for (let i = 0; i < 4000; i++) tie(rnd() % (f.maxCode + 1));
  const kLo = Math.max(-149, emin - f.m - 4), kHi = Math.min(127, 2 ** (f.e - 1) + 4);
  const scaled = (k: number, M: number) => {
    // M * 2^-23 * 2^k with M < 2^23 as a fraction, k the binade: an f32 bit pattern.
    const E = k + 127;
    if (E >= 1 && E <= 254) return (E << 23) | M;
    if (E < 1) return (M | 0x800000) >>> (1 - E); // an f32 subnormal
    return 0x7f7fffff - (M & 0xff);
  };
  const maxBits = bitsOf(scaledToF32(f.value(f.maxCode), false));
  for (let i = 0; seen.size < n; i++) {
    switch (i % 6) {
      case 0: // random f32 bit patterns (NaN, Inf and subnormals included)
        push(rnd());
        break;
      case 1: // random mantissas across the format's range
      case 2:
        push(scaled(kLo + (rnd() % (kHi - kLo + 1)), rnd() & 0x7fffff));
        break;
      case 3: // random f32 subnormals
        push(rnd() & 0x7fffff);
        break;
      case 4: // around the format's subnormal boundary
        push(scaled(emin - f.m - 2 + (rnd() % (f.m + 4)), rnd() & 0x7fffff));
        break;
      default: { // near max finite, and above
        const b = maxBits + (rnd() % 0x2000000) - 0x1000000;
        push(b > 0 && b < 0x7f800000 ? b : rnd());
      }
    }
  }
  return Uint32Array.from(seen);
}

// ---------------------------------------------------------------------------------------
// Comparison helpers
// ---------------------------------------------------------------------------------------

function hex(x: number): string {
  return "0x" + (x >>> 0).toString(16);
}

function describe(bits: number): string {
  return `${fromBits(bits)} (${hex(bits)})`;
}

/** Compares the library's encode with the reference on `inputs` and returns the count. */
function compareEncode(
  d: DType,
  f: RefFormat,
  inputs: Uint32Array,
  rounding: "rne" | "truncate",
  saturate: boolean,
): number {
  const values = new Float32Array(inputs.buffer, inputs.byteOffset, inputs.length);
  const codes = d.encode(values, { rounding, saturate });
  assert.equal(codes.length, inputs.length);
  const mismatches: string[] = [];
  for (let i = 0; i < inputs.length; i++) {
    const want = refEncode(f, inputs[i], rounding, saturate);
    const got = codes[i];
    const ok = want === REF_NAN ? isNanCode(f, got) : got === want;
    if (!ok && mismatches.length < 10) {
      mismatches.push(
        `${describe(inputs[i])}: got ${hex(got)}, want ${
          want === REF_NAN ? "a NaN code" : hex(want)
        }`,
      );
    }
  }
  assert.deepEqual(
    mismatches,
    [],
    `${f.name} ${rounding} saturate=${saturate}:\n  ${mismatches.join("\n  ")}`,
  );
  return inputs.length;
}

/** The formats compared with the reference (name, e, m, fn). */
const EXACT_FORMATS: [string, number, number, boolean][] = [
  ["f16", 5, 10, false],
  ["bf16", 8, 7, false],
  ["e4m3", 4, 3, true],
  ["e5m2", 5, 2, false],
  ["e8m3", 8, 3, false],
  ["e5m6", 5, 6, false],
  ["e3m2", 3, 2, false],
  ["e2m1fn", 2, 1, true],
  ["e3m2fn", 3, 2, true],
  ["e2m3fn", 2, 3, true],
  ["e5m2fn", 5, 2, true],
  ["e6m1", 6, 1, false],
  ["e7m16fn", 7, 16, true],
  ["e8m23", 8, 23, false],
];

const N_VALUES = 100_000;

const inputCache = new Map<string, Uint32Array>();
function cachedInputs(f: RefFormat, seed: number): Uint32Array {
  const key = `${f.name}/${seed}`;
  let v = inputCache.get(key);
  if (!v) {
    v = inputsFor(f, N_VALUES, seed);
    inputCache.set(key, v);
  }
  return v;
}

// ---------------------------------------------------------------------------------------
// Self-checks of the reference (so that a wrong reference cannot hide a wrong library)
// ---------------------------------------------------------------------------------------

Deno.test("the reference enumerates the well-known values of e4m3, e5m2, f16 and bf16", () => {
  const e4m3 = refFormat("e4m3", 4, 3, true);
  assert.equal(refDecode(e4m3, 0x7e), 448);
  assert.equal(refDecode(e4m3, 0x01), 2 ** -9);
  assert.equal(refDecode(e4m3, 0x08), 2 ** -6);
  assert.equal(refDecode(e4m3, 0x38), 1);
  assert.equal(refDecode(e4m3, 0xfe), -448);
  assert.ok(Number.isNaN(refDecode(e4m3, 0x7f)) && Number.isNaN(refDecode(e4m3, 0xff)));
  assert.equal(e4m3.value(0x7f), 480n << SCALE); // the first value past max
  const e5m2 = refFormat("e5m2", 5, 2, false);
  assert.equal(refDecode(e5m2, 0x7b), 57344);
  assert.equal(refDecode(e5m2, 0x7c), Infinity);
  assert.equal(refDecode(e5m2, 0x01), 2 ** -16);
  for (const c of [0x7d, 0x7e, 0x7f]) assert.ok(Number.isNaN(refDecode(e5m2, c)));
  const f16 = refFormat("f16", 5, 10, false);
  assert.equal(refDecode(f16, 0x7bff), 65504);
  assert.equal(refDecode(f16, 0x0001), 2 ** -24);
  assert.equal(refDecode(f16, 0x3c00), 1);
  const bf16 = refFormat("bf16", 8, 7, false);
  assert.equal(refDecode(bf16, 0x7f7f), 3.3895313892515355e38);
  assert.equal(refDecode(bf16, 0x0001), 2 ** -133);
  assert.equal(refDecode(bf16, 0xc000), -2);
  const fp4 = refFormat("e2m1fn", 2, 1, true);
  assert.deepEqual(
    Array.from({ length: 8 }, (_, k) => refDecode(fp4, k)),
    [0, 0.5, 1, 1.5, 2, 3, 4, 6],
  );
  // Rounding: ties to even, overflow after rounding.
  assert.equal(refEncode(e4m3, bitsOf(464), "rne", false), 0x7e); // tie 448|480 -> 448
  assert.equal(refEncode(e4m3, bitsOf(465), "rne", false), REF_NAN);
  assert.equal(refEncode(e5m2, bitsOf(61440), "rne", false), 0x7c); // tie -> 65536 -> Inf
  assert.equal(refEncode(e5m2, bitsOf(61439), "rne", false), 0x7b);
  assert.equal(refEncode(e5m2, bitsOf(2 ** -17), "rne", false), 0); // half min sub -> 0
  assert.equal(refEncode(e5m2, bitsOf(-(2 ** -17)), "rne", false), 0x80);
  assert.equal(refEncode(bf16, bitsOf(1 + 2 ** -8), "rne", false), 0x3f80);
  assert.equal(refEncode(bf16, bitsOf(1 + 3 * 2 ** -8), "rne", false), 0x3f82);
  assert.equal(refEncode(bf16, bitsOf(1.999), "truncate", false), 0x3fff);
});

Deno.test("the reference agrees with V8's Math.f16round on every f16 test input", () => {
  const f16 = refFormat("f16", 5, 10, false);
  const inputs = cachedInputs(f16, 1);
  let bad = 0;
  for (let i = 0; i < inputs.length; i++) {
    const code = refEncode(f16, inputs[i], "rne", false);
    const want = Math.f16round(fromBits(inputs[i]));
    const got = code === REF_NAN ? NaN : refDecode(f16, code);
    if (!Object.is(got, want)) bad++;
  }
  assert.equal(bad, 0);
});

// ---------------------------------------------------------------------------------------
// Round trips over every code
// ---------------------------------------------------------------------------------------

const ROUND_TRIP_FORMATS: [string, number, number, boolean][] = [
  ["e4m3", 4, 3, true],
  ["e5m2", 5, 2, false],
  ["e3m4", 3, 4, false],
  ["e2m5", 2, 5, false],
  ["e6m1", 6, 1, false],
  ["e4m3fn", 4, 3, true],
  ["e5m2fn", 5, 2, true],
  ["e2m1fn", 2, 1, true],
  ["e3m2fn", 3, 2, true],
  ["e2m3fn", 2, 3, true],
  ["e2m1", 2, 1, false],
  ["e3m2", 3, 2, false],
  ["f16", 5, 10, false],
  ["bf16", 8, 7, false],
  ["e5m6", 5, 6, false],
  ["e8m3", 8, 3, false],
];

for (const [name, e, m, fn] of ROUND_TRIP_FORMATS) {
  const n = 2 ** (1 + e + m);
  Deno.test(`decode() of all ${n} ${name} codes matches the exact reference value and re-encodes to the same code`, () => {
    const d = dtype(name);
    const f = refFormat(name, e, m, fn);
    const codes = Array.from({ length: n }, (_, i) => i);
    const decoded = d.decode(codes);
    for (const saturate of [false, true]) {
      const again = d.encode(decoded, { rounding: "rne", saturate });
      for (let c = 0; c < n; c++) {
        const want = refDecode(f, c);
        const got = decoded[c];
        if (Number.isNaN(want)) {
          // NaN codes decode to NaN (judged on the f32 bits) and re-encode to a NaN code.
          const gb = bitsOf(got);
          assert.ok(
            (gb & 0x7f800000) === 0x7f800000 && (gb & 0x7fffff) !== 0,
            `${name} ${hex(c)} -> ${describe(gb)} is not NaN`,
          );
          assert.ok(isNanCode(f, again[c]), `${name} NaN ${hex(c)} -> ${hex(again[c])}`);
        } else {
          assert.ok(Object.is(got, want), `${name} ${hex(c)}: decode ${got}, want ${want}`);
          if (saturate && isInfCode(f, c)) {
            assert.equal(again[c], c - f.infCode + f.maxCode, `${name} Inf saturates to max`);
          } else {
            assert.equal(again[c], c, `${name} ${hex(c)} (${want}) re-encodes to ${hex(again[c])}`);
          }
        }
      }
    }
    // The NaN codes are exactly those of the format's rules.
    const nanCodes = codes.filter((c) => isNanCode(f, c)).length;
    const infCodes = codes.filter((c) => isInfCode(f, c)).length;
    if (f.nan === "ieee") assert.equal(nanCodes, 2 * (2 ** m - 1));
    if (f.nan === "fn") assert.equal(nanCodes, 2);
    if (f.nan === "none") assert.equal(nanCodes, 0);
    assert.equal(infCodes, f.hasInf ? 2 : 0);
  });
}

Deno.test("e4m3 NaN is exactly 0x7F and 0xFF, e5m2 NaN is 0x7D-0x7F and 0xFD-0xFF, Inf 0x7C/0xFC", () => {
  const all = Array.from({ length: 256 }, (_, i) => i);
  const e4 = dtype("e4m3").decode(all);
  assert.deepEqual(all.filter((c) => Number.isNaN(e4[c])), [0x7f, 0xff]);
  assert.ok(all.every((c) => Number.isFinite(e4[c]) || c === 0x7f || c === 0xff));
  const e5 = dtype("e5m2").decode(all);
  assert.deepEqual(all.filter((c) => Number.isNaN(e5[c])), [0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff]);
  assert.deepEqual(all.filter((c) => !Number.isFinite(e5[c]) && !Number.isNaN(e5[c])), [
    0x7c,
    0xfc,
  ]);
  assert.equal(e5[0x7c], Infinity);
  assert.equal(e5[0xfc], -Infinity);
  for (const name of ["e2m1fn", "e3m2fn", "e2m3fn"]) {
    const d = dtype(name);
    const vals = d.decode(Array.from({ length: 2 ** d.bits }, (_, i) => i));
    assert.ok(vals.every(Number.isFinite), `${name} has only finite values`);
  }
  // Signed zeros.
  assert.ok(Object.is(dtype("e4m3").decode([0x80])[0], -0));
  assert.ok(Object.is(dtype("bf16").decode([0x8000])[0], -0));
});

// ---------------------------------------------------------------------------------------
// encode() against the exact reference
// ---------------------------------------------------------------------------------------

for (const [name, e, m, fn] of EXACT_FORMATS) {
  Deno.test(`encode() of ${name} with rne matches the exact rational reference on 100,000 values, both saturate modes`, () => {
    const f = refFormat(name, e, m, fn);
    const inputs = cachedInputs(f, 1);
    assert.ok(inputs.length >= N_VALUES);
    for (const saturate of [false, true]) compareEncode(dtype(name), f, inputs, "rne", saturate);
  });
}

for (const [name, e, m, fn] of EXACT_FORMATS) {
  Deno.test(`encode() of ${name} with truncate matches an exact round-toward-zero reference`, () => {
    const f = refFormat(name, e, m, fn);
    const inputs = cachedInputs(f, 1);
    for (const saturate of [false, true]) {
      compareEncode(dtype(name), f, inputs, "truncate", saturate);
    }
  });
}

Deno.test("encode() handles the named edge cases of e4m3, e5m2, f16 and bf16 exactly", () => {
  const enc = (name: string, xs: number[], saturate = false) =>
    Array.from(dtype(name).encode(new Float32Array(xs), { saturate }));
  // e4m3: max 448 (0x7E); 464 is the tie 448|480 and rounds to 448; above it overflows.
  assert.deepEqual(enc("e4m3", [448, 464, 464.00003, 1e9, Infinity, -Infinity]), [
    0x7e,
    0x7e,
    0x7f,
    0x7f,
    0x7f,
    0xff,
  ]);
  assert.deepEqual(enc("e4m3", [448, 464, 464.00003, 1e9, Infinity, -Infinity], true), [
    0x7e,
    0x7e,
    0x7e,
    0x7e,
    0x7e,
    0xfe,
  ]);
  // e4m3 subnormals: min 2^-9, half of it rounds to +-0, just above half to min.
  assert.deepEqual(enc("e4m3", [2 ** -9, 2 ** -10, -(2 ** -10), 2 ** -10 * (1 + 2 ** -23)]), [
    0x01,
    0x00,
    0x80,
    0x01,
  ]);
  // e5m2: 57344 max; 61440 is the tie 57344|65536 and goes to Inf.
  assert.deepEqual(enc("e5m2", [57344, 61439.996, 61440, -61440, Infinity]), [
    0x7b,
    0x7b,
    0x7c,
    0xfc,
    0x7c,
  ]);
  assert.deepEqual(enc("e5m2", [61440, -Infinity], true), [0x7b, 0xfb]);
  // f16: 65520 is the overflow tie.
  assert.deepEqual(enc("f16", [65504, 65519.996, 65520, 2 ** -25, 2 ** -25 * 1.0000001]), [
    0x7bff,
    0x7bff,
    0x7c00,
    0,
    1,
  ]);
  // bf16: ties to even around 1.
  assert.deepEqual(enc("bf16", [1 + 2 ** -8, 1 + 3 * 2 ** -8, -0, NaN]).slice(0, 3), [
    0x3f80,
    0x3f82,
    0x8000,
  ]);
  // NaN stays NaN in both saturate modes.
  assert.equal(enc("e4m3", [NaN], true)[0] & 0x7f, 0x7f);
  assert.ok((enc("e5m2", [NaN], true)[0] & 0x7f) > 0x7c);
});

Deno.test("encode() of f32 (e8m23) is the identity on every non-NaN bit pattern tested", () => {
  const d = dtype("f32");
  const rnd = prng(7);
  const bits = new Uint32Array(100_000).map(() => rnd());
  const values = new Float32Array(bits.buffer);
  const codes = d.encode(values);
  for (let i = 0; i < bits.length; i++) {
    if (Number.isNaN(values[i])) assert.ok((codes[i] & 0x7fffffff) > 0x7f800000);
    else assert.equal(codes[i], bits[i]);
  }
});

Deno.test("encode() maps every NaN input to a NaN code, or to +-max in formats without NaN", () => {
  // Every NaN input (any payload, either sign) gives a NaN code for the formats with NaN,
  // and +-max for the formats without (OCP MX leaves that choice to the implementation).
  const nans = new Float32Array(
    new Uint32Array([0x7fc00000, 0xffc00000, 0x7f800001, 0xff812345]).buffer,
  );
  for (const name of ["e4m3", "e5m2", "f16", "bf16", "e3m2", "e8m3"]) {
    const d = dtype(name);
    const f = refFormat(name, d.exponentBits, d.mantissaBits, !d.hasInf);
    for (const c of d.encode(nans)) assert.ok(isNanCode(f, c), `${name}: ${hex(c)}`);
  }
  for (const name of ["e2m1fn", "e3m2fn", "e2m3fn"]) {
    const d = dtype(name);
    const f = refFormat(name, d.exponentBits, d.mantissaBits, true);
    const codes = d.encode(nans);
    for (const c of codes) assert.equal(c % 2 ** f.signBit, f.maxCode, `${name}: ${hex(c)}`);
  }
});

Deno.test("encode() with an offset over a slice gives the same codes as over the whole array", () => {
  // Also rne and truncate codes do not depend on seed or offset.
  const rnd = prng(3);
  const xs = new Float32Array(1000).map(() => (rnd() / 2 ** 32 - 0.5) * 100);
  for (const name of ["bf16", "e4m3", "f16"]) {
    const d = dtype(name);
    const whole = d.encode(xs, { rounding: "stochastic", seed: 9 });
    const part = d.encode(xs.subarray(300, 700), { rounding: "stochastic", seed: 9, offset: 300 });
    assert.deepEqual(Array.from(part), Array.from(whole.subarray(300, 700)));
    assert.deepEqual(
      Array.from(d.encode(xs, { rounding: "rne", seed: 5, offset: 17 })),
      Array.from(d.encode(xs)),
    );
  }
});

// ---------------------------------------------------------------------------------------
// Stochastic rounding
// ---------------------------------------------------------------------------------------

/** Stochastic-rounds N copies of x and checks the two neighbours and the mean. */
function checkStochastic(name: string, x: number, n: number, seed: number) {
  const d = dtype(name);
  const f = refFormat(name, d.exponentBits, d.mantissaBits, !d.hasInf);
  const xb = bitsOf(x);
  assert.equal(fromBits(xb), x, "x must be an f32");
  // The neighbours, from the reference: truncate gives the one toward zero.
  const down = refEncode(f, xb, "truncate", false);
  const lo = refDecode(f, down);
  const hi = refDecode(f, down + 1);
  assert.ok(Math.abs(lo) < Math.abs(x) && Math.abs(x) < Math.abs(hi), "x lies strictly between");
  const codes = d.encode(new Float32Array(n).fill(x), { rounding: "stochastic", seed });
  const vals = d.decode(codes);
  let sum = 0, ups = 0;
  for (let i = 0; i < n; i++) {
    assert.ok(vals[i] === lo || vals[i] === hi, `${name}: ${vals[i]} is not ${lo} or ${hi}`);
    if (vals[i] === hi) ups++;
    sum += vals[i];
  }
  const mean = sum / n;
  const p = (x - lo) / (hi - lo); // exact probability of rounding away from zero
  const se = Math.abs(hi - lo) * Math.sqrt((p * (1 - p)) / n);
  assert.ok(
    Math.abs(mean - x) <= 4 * se,
    `${name}: mean ${mean} vs ${x} (p=${p}, ups=${ups}/${n}, se=${se})`,
  );
  return codes;
}

Deno.test("stochastic rounding is unbiased and only ever gives the two neighbouring values", () => {
  const N = 20_000;
  const bfUlp = 2 ** -7;
  const cases: [string, number][] = [
    ["bf16", Math.fround(1 + bfUlp / 3)],
    ["bf16", Math.fround(-(3 + 0.9 * 2 * bfUlp))],
    ["bf16", Math.fround(1e-39)], // bf16 and f32 subnormal
    ["e4m3", Math.fround(2 ** -9 * 2.3)], // e4m3 subnormal range
    ["e4m3", Math.fround(-0.7)],
    ["e4m3", Math.fround(2 ** -10)], // half the smallest subnormal: between 0 and 2^-9
    // Far below the smallest subnormal (32 and more bits dropped): rounds up rarely.
    ["e4m3", 3 * 2 ** -19],
    ["e2m1fn", -1.5 * 2 ** -10],
    ["e3m2", 2 ** -14 * 1.25],
    ["e5m2", Math.fround(1000.5)],
    ["f16", Math.fround(1 / 3)],
    ["e2m1fn", Math.fround(5.5)],
    ["e3m2", Math.fround(0.01)],
  ];
  for (const [name, x] of cases) checkStochastic(name, x, N, 12345);
});

Deno.test("stochastic rounding with the same seed gives the same codes, with another seed different ones", () => {
  const x = Math.fround(1 + 2 ** -7 / 3);
  const a = checkStochastic("bf16", x, 20_000, 1);
  const b = checkStochastic("bf16", x, 20_000, 1);
  const c = checkStochastic("bf16", x, 20_000, 2);
  assert.deepEqual(Array.from(a), Array.from(b));
  let differ = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== c[i]) differ++;
  // Two independent streams at p = 1/3 differ on about 2p(1-p) = 44% of elements.
  assert.ok(differ > 0.4 * a.length && differ < 0.49 * a.length, `${differ} codes differ`);
});

Deno.test("stochastic rounding keeps representable values, zeros, NaN and Inf unchanged", () => {
  const xs = new Float32Array([0, -0, 1, -2, 448, 2 ** -9, Infinity, -Infinity, NaN]);
  for (const name of ["e4m3", "bf16", "e5m2"]) {
    const d = dtype(name);
    for (let seed = 0; seed < 20; seed++) {
      const s = d.encode(xs, { rounding: "stochastic", seed });
      const r = d.encode(xs, { rounding: "rne" });
      assert.deepEqual(Array.from(s), Array.from(r), `${name} seed ${seed}`);
    }
  }
});

// ---------------------------------------------------------------------------------------
// bf16x2
// ---------------------------------------------------------------------------------------

Deno.test("bf16x2 stores hi = bf16(x) and lo = bf16(x - hi) as hi << 16 | lo, far closer than bf16", () => {
  const d = dtype("bf16x2");
  const bf = refFormat("bf16", 8, 7, false);
  const rnd = prng(11);
  const xs: number[] = [Math.PI, -Math.E, 1 / 3, 0.1, 1e30, -7e-30, 65504.3, 1, 0, -0];
  for (let i = 0; i < 20_000; i++) {
    // Random normal f32 values with exponent in [-100, 100].
    const E = 27 + (rnd() % 201);
    xs.push(fromBits(((rnd() & 1) << 31) | (E << 23) | (rnd() & 0x7fffff)));
  }
  const values = new Float32Array(xs);
  const codes = d.encode(values);
  const decoded = d.decode(codes);
  let worstPair = 0, worstBf16 = 0;
  for (let i = 0; i < values.length; i++) {
    const x = values[i];
    const xb = bitsOf(x);
    const hiCode = refEncode(bf, xb, "rne", false);
    const hi = refDecode(bf, hiCode);
    // x - hi exactly, as a scaled BigInt; it is an f32.
    const diff = signedScaled(xb) - signedScaled(bitsOf(hi));
    const rest = scaledToF32(diff < 0n ? -diff : diff, diff < 0n);
    const loCode = refEncode(bf, bitsOf(rest), "rne", false);
    assert.equal(codes[i], ((hiCode << 16) | loCode) >>> 0, `bf16x2(${x})`);
    assert.equal(Math.floor(codes[i] / 65536), hiCode);
    assert.equal(codes[i] % 65536, loCode);
    assert.equal(decoded[i], Math.fround(hi + refDecode(bf, loCode)));
    if (x !== 0) {
      worstPair = Math.max(worstPair, Math.abs(decoded[i] - x) / Math.abs(x));
      worstBf16 = Math.max(worstBf16, Math.abs(hi - x) / Math.abs(x));
    }
  }
  // hi + lo carries 16 significant bits: relative error about 2^-16 against bf16's 2^-8
  // (plus at most 2^-24 from rounding hi + lo to f32 in decode()).
  assert.ok(worstPair <= 2 ** -16 + 2 ** -24, `bf16x2 worst relative error ${worstPair}`);
  assert.ok(worstBf16 > 2 ** -9, `bf16 worst relative error ${worstBf16}`);
  assert.ok(worstPair < worstBf16 / 100);
});

Deno.test("bf16x2 of pi has hi 0x4049 (3.140625), lo the bf16 of pi - 3.140625, and decodes within 2^-16", () => {
  const d = dtype("bf16x2");
  const piF32 = Math.fround(Math.PI);
  const code = d.encode(new Float32Array([Math.PI]))[0];
  assert.equal(code >>> 16, 0x4049);
  assert.equal(dtype("bf16").decode([0x4049])[0], 3.140625);
  const bf = refFormat("bf16", 8, 7, false);
  assert.equal(code & 0xffff, refEncode(bf, bitsOf(piF32 - 3.140625), "rne", false));
  const pair = d.decode([code])[0];
  const single = dtype("bf16").decode(dtype("bf16").encode(new Float32Array([Math.PI])))[0];
  assert.ok(Math.abs(pair - piF32) <= piF32 * 2 ** -16, `bf16x2(pi) = ${pair}`);
  assert.ok(Math.abs(single - piF32) > 100 * Math.abs(pair - piF32), `bf16(pi) = ${single}`);
});

Deno.test("bf16x2 with stochastic rounding is seeded, stays close to x and is unbiased", () => {
  const d = dtype("bf16x2");
  const x = Math.fround(1 + 2 ** -7 / 3 + 2 ** -20 / 3);
  const xs = new Float32Array(20_000).fill(x);
  const a = d.encode(xs, { rounding: "stochastic", seed: 4 });
  const b = d.encode(xs, { rounding: "stochastic", seed: 4 });
  const c = d.encode(xs, { rounding: "stochastic", seed: 5 });
  assert.deepEqual(Array.from(a), Array.from(b));
  assert.notDeepEqual(Array.from(a), Array.from(c));
  const vals = d.decode(a);
  let sum = 0;
  for (const v of vals) {
    assert.ok(Math.abs(v - x) <= 2 ** -14, `bf16x2 stochastic: ${v} vs ${x}`);
    sum += v;
  }
  // Each value's error is below 2^-14; the mean of 20,000 is far closer if unbiased.
  assert.ok(Math.abs(sum / vals.length - x) < 2 ** -18, `mean ${sum / vals.length} vs ${x}`);
});
