// The builder's strided ranges (what a piece of a gather reads) and its code store `stc_`.
import assert from "node:assert/strict";
import { dtype } from "../../dtypes/mod.ts";
import { layoutOf, program, type StridedDim, stridedRange } from "../../gpu/mod.ts";
import { withBindingLimit } from "../_binding_limit.ts";

/** A tiny deterministic generator (tests must not depend on Math.random). */
function lcg(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % n;
  };
}

/** Every source element output elements [e0, e1) read, by enumeration. */
function reads(dims: readonly StridedDim[], base: number, e0: number, e1: number): number[] {
  const out: number[] = [];
  for (let e = e0; e < e1; e++) {
    let rem = e;
    const c: number[] = new Array(dims.length);
    for (let d = dims.length - 1; d >= 0; d--) {
      c[d] = rem % dims[d].size;
      rem = Math.floor(rem / dims[d].size);
    }
    let offs = [base];
    let none = false;
    dims.forEach((dim, d) => {
      if (dim.any !== undefined) {
        offs = offs.flatMap((o) => Array.from({ length: dim.any! }, (_, k) => o + k * dim.stride));
      } else {
        const lo = dim.lo ?? 0, hi = dim.hi ?? dim.size;
        if (c[d] < lo || c[d] >= hi) none = true;
        offs = offs.map((o) => o + (c[d] - lo) * dim.stride);
      }
    });
    if (!none) out.push(...offs);
  }
  return out;
}

Deno.test("stridedRange holds every element a piece reads, exactly within one row", () => {
  const rnd = lcg(7);
  for (let t = 0; t < 400; t++) {
    const rank = 1 + rnd(4);
    const dims: StridedDim[] = [];
    for (let d = 0; d < rank; d++) {
      const size = 1 + rnd(5);
      const stride = rnd(4) === 0 ? 0 : 1 + rnd(30);
      const kind = rnd(4);
      if (kind === 0) dims.push({ size, stride, any: 1 + rnd(4) });
      else if (kind === 1) {
        const lo = rnd(size + 1);
        dims.push({ size, stride, lo, hi: lo + rnd(size - lo + 1) });
      } else dims.push({ size, stride });
    }
    const base = rnd(10);
    const total = dims.reduce((a, d) => a * d.size, 1);
    const e0 = rnd(total), e1 = e0 + 1 + rnd(total - e0);
    const [lo, hi] = stridedRange(dims, base)(e0, e1);
    const got = reads(dims, base, e0, e1);
    for (const o of got) assert.ok(o >= lo && o < hi, `${o} outside [${lo}, ${hi})`);
    if (got.length === 0) continue;
    // a piece within one run of the last dimension (no choice, no bounds): exact
    const last = dims[rank - 1];
    const oneRow = Math.floor(e0 / last.size) === Math.floor((e1 - 1) / last.size);
    if (oneRow && dims.every((d) => d.any === undefined && d.lo === undefined)) {
      assert.deepEqual([lo, hi], [Math.min(...got), Math.max(...got) + 1]);
    }
    // a larger piece never gets a smaller range
    const [lo2, hi2] = stridedRange(dims, base)(Math.max(0, e0 - 1), Math.min(total, e1 + 1));
    assert.ok(lo2 <= lo && hi2 >= hi);
  }
});

for (const dt of ["f32", "bf16", "e4m3", "f16"]) {
  Deno.test(`stc_ moves ${dt} codes unchanged: a windowed, shifted copy`, async () => {
    await withBindingLimit(4096, async (rt) => {
      const d = dtype(dt);
      const n = 20_001, shift = 3; // y[i] = x[i + 3]: every word of y takes lanes of two of x
      const codes = Array.from(
        { length: n + shift },
        (_, i) => ((i * 2654435761) >>> 0) % (dt === "f16" ? 0x7c00 : 2 ** d.bits), // f16: finite
      );
      const pack = (c: readonly number[]) => {
        const lanes = d.lanesPerWord, words = new Uint32Array(Math.ceil(c.length / lanes));
        c.forEach((v, i) => (words[Math.floor(i / lanes)] |= v << ((i % lanes) * d.laneBits)));
        return words;
      };
      const bytes = (k: number) => Math.ceil(k / d.lanesPerWord) * 4;
      const x = rt.alloc(bytes(n + shift), { dtype: dt, purpose: "scratch" });
      const y = rt.alloc(bytes(n), { dtype: dt, purpose: "scratch" });
      rt.write(x, pack(codes));
      const l = layoutOf(d, rt);
      const per = 64 * l.lanes;
      const before = rt.counters.dispatches;
      program(rt, "test|stc", {
        label: "shift",
        bindings: [{ name: "x", type: l, access: "read" }, {
          name: "y",
          type: l,
          access: "read_write",
        }],
        uniforms: [{ name: "n", type: "u32" }, { name: "k", type: "u32" }],
        workgroupSize: 64,
      }, () => `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let w = wg * 64u + li;
  if (w * ${l.lanes}u >= u.n) { return; }
  var c = vec4<u32>(0u);
  for (var j = 0u; j < ${l.lanes}u; j = j + 1u) {
    let i = w * ${l.lanes}u + j;
    if (i < u.n) { c[j] = code_x(i + u.k); }
  }
  stc_y(w, c);
}`).run({
        buffers: { x, y },
        uniforms: { n, k: shift },
        groups: Math.ceil(n / per),
        ranges: {
          x: (g0, g1) => [g0 * per + shift, Math.min(n, g1 * per) + shift],
          y: (g0, g1) => [g0 * per, Math.min(n, g1 * per)],
        },
      });
      assert.ok(rt.counters.dispatches - before >= Math.ceil(bytes(n) / 4096));
      // element codes (native f16 writes elements: the lane past n of the last word is not ours)
      const words = new Uint32Array(await rt.read(y));
      const mask = 2 ** d.laneBits - 1;
      const got = Array.from(
        { length: n },
        (_, i) =>
          ((words[Math.floor(i / d.lanesPerWord)] >>> ((i % d.lanesPerWord) * d.laneBits)) &
            mask) >>>
          0,
      );
      assert.deepEqual(got, codes.slice(shift));
      rt.free(x);
      rt.free(y);
    });
  });
}
