// Checks that the roundings Collage's kernels leave out (optim/collage.ts `grow`, `mul`) never
// round: over pairs of finite bf16 values (x, y), with f32 arithmetic and fl() = RNE to bf16
// (tests/optim/_collage_reference.ts), TwoSum's error terms `fl(s - bb)`, `fl(x - av)`,
// `fl(y - bb)` and their sum `e` are exact. Grow's and Mul's `lo = fl(d - fl(hi - s))` with
// hi = fl(s + d) is TwoSum's `fl(y - bb)` for (x, y) = (s, d), so it is covered too.
//
// Every pair (2^32 less the Inf and NaN codes, about three minutes here):
//   deno run tests/optim/_collage_exact.ts
// The test (tests/optim/collage_test.ts) runs every x against a spread of y.

const F = new Float32Array(1);
const U = new Uint32Array(F.buffer);
const f = Math.fround;

/** The f32 bits of `x` (an f32 value held in a number). */
function bitsOf(x: number): number {
  F[0] = x;
  return U[0];
}

/** fl(x) as f32 bits: RNE to bf16, a NaN quieted with its sign. */
function flBits(x: number): number {
  F[0] = x;
  const b = U[0];
  if ((b & 0x7fffffff) >>> 0 > 0x7f800000) return ((b & 0x80000000) | 0x7fc00000) >>> 0;
  return ((b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000) >>> 0;
}

/** The value of f32 bits. */
function val(b: number): number {
  U[0] = b;
  return F[0];
}

/**
 * Over x in `xs` and y in `ys` (bf16 codes, finite): the number of pairs, of pairs where a
 * left-out rounding would have rounded (0 expected), and of pairs where the kept `fl(s - x)`
 * rounds (some: the check sees a rounding where there is one).
 */
export function countInexact(
  xs: Iterable<number>,
  ys: readonly number[],
): [number, number, number] {
  let n = 0, bad = 0, kept = 0;
  const yv = ys.map((c) => val(c << 16));
  for (const cx of xs) {
    const x = val(cx << 16);
    for (const y of yv) {
      n++;
      const s = val(flBits(f(x + y)));
      const sx = f(s - x);
      const bb = val(flBits(sx));
      if (Number.isFinite(s) && flBits(sx) !== bitsOf(sx)) kept++;
      const avr = f(s - bb);
      const dxr = f(x - avr);
      const dyr = f(y - bb);
      const er = f(dxr + dyr);
      if (
        flBits(avr) !== bitsOf(avr) || flBits(dxr) !== bitsOf(dxr) ||
        flBits(dyr) !== bitsOf(dyr) || flBits(er) !== bitsOf(er)
      ) {
        if (!Number.isNaN(er)) bad++; // NaN: an overflowed s (Inf - Inf), quieted later
      }
    }
  }
  return [n, bad, kept];
}

/** The finite bf16 codes. */
export function finiteCodes(): number[] {
  const out: number[] = [];
  for (let c = 0; c < 65536; c++) if ((c & 0x7f80) !== 0x7f80) out.push(c);
  return out;
}

if (import.meta.main) {
  const all = finiteCodes();
  let n = 0, bad = 0, kept = 0;
  for (let k = 0; k < all.length; k += 4096) {
    const [a, b, c] = countInexact(all.slice(k, k + 4096), all);
    n += a, bad += b, kept += c;
    console.log(`${n} pairs: ${bad} left-out roundings round; fl(s - x) rounds in ${kept}`);
  }
  if (bad > 0) Deno.exit(1);
}
