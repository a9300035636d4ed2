/**
 * Tests of the counter-based rng: known answers from an independent BigInt re-implementation
 * of the mixing (mod 2^32), bijectivity through the inverse, determinism and uniformity.
 */

import assert from "node:assert/strict";
import { hash32, randomU32, WGSL_RNG } from "../../dtypes/mod.ts";

const MASK = 0xffffffffn;

/** The three-round xor-shift-multiply hash, in BigInt arithmetic mod 2^32. */
function refHash(x: bigint): bigint {
  let h = x & MASK;
  h ^= h >> 16n;
  h = (h * 0x7feb352dn) & MASK;
  h ^= h >> 15n;
  h = (h * 0x846ca68bn) & MASK;
  h ^= h >> 16n;
  return h;
}

/** randomU32(seed, index) as documented: hash(hash(index ^ hash(seed)) + seed), mod 2^32. */
function refRandom(seed: bigint, index: bigint): bigint {
  const s = refHash(seed & MASK);
  return refHash((refHash((index & MASK) ^ s) + (seed & MASK)) & MASK);
}

/** The inverse of a in the odd residues mod 2^32 (extended Euclid). */
function inverseMod32(a: bigint): bigint {
  const mod = 1n << 32n;
  let [r0, r1] = [a, mod];
  let [s0, s1] = [1n, 0n];
  while (r1 !== 0n) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1];
  }
  assert.equal(r0, 1n);
  return ((s0 % mod) + mod) % mod;
}

/** Undoes h ^= h >> k on 32 bits. */
function unXorShift(h: bigint, k: bigint): bigint {
  let x = h;
  for (let i = 0; i < 32; i += Number(k)) x = h ^ (x >> k);
  return x & MASK;
}

/** The inverse of the hash, so that refUnhash(hash32(x)) === x shows it is a bijection. */
function refUnhash(h: bigint): bigint {
  let x = unXorShift(h, 16n);
  x = (x * inverseMod32(0x846ca68bn)) & MASK;
  x = unXorShift(x, 15n);
  x = (x * inverseMod32(0x7feb352dn)) & MASK;
  return unXorShift(x, 16n);
}

/** A seeded source of test inputs (xorshift32), independent of the code under test. */
function inputs(n: number, seed: number): number[] {
  let s = seed >>> 0 || 1;
  const out = [0, 1, 2, 0x7fffffff, 0x80000000, 0xffffffff];
  while (out.length < n) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out.push(s);
  }
  return out;
}

Deno.test("hash32() equals an independent BigInt implementation of the mixing on 1,000 inputs", () => {
  for (const x of inputs(1000, 99)) {
    assert.equal(hash32(x), Number(refHash(BigInt(x))), `hash32(${x})`);
  }
  assert.equal(hash32(0), 0);
});

Deno.test("hash32() is a bijection on u32: its BigInt inverse gives back 1,000 inputs", () => {
  for (const x of inputs(1000, 5)) {
    assert.equal(refUnhash(BigInt(hash32(x))), BigInt(x), `unhash(hash32(${x}))`);
  }
  // And no collisions on 100,000 consecutive inputs.
  const seen = new Set<number>();
  for (let i = 0; i < 100_000; i++) seen.add(hash32(i));
  assert.equal(seen.size, 100_000);
});

Deno.test("hash32() returns an unsigned 32-bit integer and reads its input modulo 2^32", () => {
  for (const x of inputs(200, 3)) {
    const h = hash32(x);
    assert.ok(Number.isInteger(h) && h >= 0 && h <= 0xffffffff);
    assert.equal(hash32(x - 2 ** 32), h);
    assert.equal(hash32(x | 0), h);
  }
});

Deno.test("randomU32() equals an independent BigInt implementation on 1,000 (seed, index) pairs", () => {
  const seeds = inputs(1000, 17), idx = inputs(1000, 23);
  for (let i = 0; i < 1000; i++) {
    assert.equal(
      randomU32(seeds[i], idx[i]),
      Number(refRandom(BigInt(seeds[i]), BigInt(idx[i]))),
      `randomU32(${seeds[i]}, ${idx[i]})`,
    );
  }
  for (let i = 0; i < 100; i++) assert.equal(randomU32(0, i), Number(refRandom(0n, BigInt(i))));
});

Deno.test("randomU32() is a pure function of (seed, index), and different seeds give different streams", () => {
  const a = Array.from({ length: 1000 }, (_, i) => randomU32(42, i));
  const b = Array.from({ length: 1000 }, (_, i) => randomU32(42, i));
  const c = Array.from({ length: 1000 }, (_, i) => randomU32(43, i));
  assert.deepEqual(a, b);
  const same = a.filter((v, i) => v === c[i]).length;
  assert.ok(same <= 1, `${same} equal values in two streams`);
  assert.equal(new Set(a).size, 1000);
  // Seeds and indices are read modulo 2^32.
  assert.equal(randomU32(-1, 5), randomU32(0xffffffff, 5));
  assert.equal(randomU32(7, -1), randomU32(7, 0xffffffff));
  assert.equal(randomU32(7 + 2 ** 32, 3), randomU32(7, 3));
});

/** Mean of `n` values / 2^32 and its distance from 1/2 in standard errors. */
function zScore(values: (i: number) => number, n: number): number {
  let sum = 0;
  for (let i = 0; i < n; i++) sum += values(i) / 2 ** 32;
  const se = Math.sqrt(1 / 12 / n); // a uniform [0, 1) value has variance 1/12
  return (sum / n - 0.5) / se;
}

Deno.test("randomU32() is roughly uniform: the mean of 100,000 values / 2^32 is within 4 standard errors of 0.5", () => {
  const n = 100_000;
  for (const seed of [0, 1, 12345, 0xffffffff]) {
    const z = zScore((i) => randomU32(seed, i), n);
    assert.ok(Math.abs(z) < 4, `seed ${seed}: z = ${z}`);
  }
  // Across seeds at a fixed index as well.
  const z = zScore((i) => randomU32(i, 0), n);
  assert.ok(Math.abs(z) < 4, `across seeds: z = ${z}`);
  // Every bit is set about half the time.
  const ones = new Array(32).fill(0);
  for (let i = 0; i < n; i++) {
    const v = randomU32(9, i);
    for (let b = 0; b < 32; b++) ones[b] += (v >>> b) & 1;
  }
  const se = Math.sqrt(n / 4);
  for (let b = 0; b < 32; b++) {
    assert.ok(Math.abs(ones[b] - n / 2) < 5 * se, `bit ${b}: ${ones[b]} of ${n}`);
  }
});

Deno.test("WGSL_RNG defines ulp_hash32 and ulp_rand with the host's constants and shifts", () => {
  assert.match(WGSL_RNG, /fn ulp_hash32\(x: u32\) -> u32/);
  assert.match(WGSL_RNG, /fn ulp_rand\(seed: u32, index: u32\) -> u32/);
  assert.match(WGSL_RNG, /0x7feb352du/);
  assert.match(WGSL_RNG, /0x846ca68bu/);
  assert.match(WGSL_RNG, /h >> 16u[\s\S]*h >> 15u[\s\S]*h >> 16u/);
  assert.match(WGSL_RNG, /ulp_hash32\(ulp_hash32\(index \^ s\) \+ seed\)/);
});
