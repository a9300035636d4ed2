import assert from "node:assert/strict";
import {
  arange,
  dtype,
  full,
  getRngState,
  keep,
  manualSeed,
  memory,
  ones,
  rand,
  randn,
  setRngState,
  ShapeError,
  tensor,
  tidy,
  ValueError,
  zeros,
} from "../../mod.ts";
import { randomU32 } from "../../dtypes/mod.ts";

Deno.test("tensor() takes numbers, nested arrays and typed arrays, and reads back decoded", async () => {
  using s = tensor(3.5);
  assert.deepEqual(s.shape, []);
  assert.equal(await s.item(), 3.5);
  using n = tensor([[1, 2, 3], [4, 5, 6]], { dtype: "bf16" });
  assert.deepEqual(n.shape, [2, 3]);
  assert.equal(n.size, 6);
  assert.deepEqual(await n.toNested(), [[1, 2, 3], [4, 5, 6]]);
  using i = tensor(new Int32Array([-1, 7]));
  assert.equal(i.dtype, "i32");
  assert.ok((await i.toArray()) instanceof Int32Array);
  using u = tensor(new Uint32Array([4000000000]));
  assert.deepEqual(Array.from(await u.toArray()), [4000000000]);
  using b = tensor([true, false, true], { dtype: "bool" });
  assert.deepEqual(Array.from(await b.toArray()), [1, 0, 1]);
  using f = tensor(new Float32Array([0.1, 0.2, 0.3, 0.4]), { shape: [2, 2], dtype: "e5m2" });
  const want = dtype("e5m2").decode(dtype("e5m2").encode(new Float32Array([0.1, 0.2, 0.3, 0.4])));
  assert.deepEqual(Array.from(await f.toArray()), Array.from(want));
  assert.throws(() => tensor([[1, 2], [3]]), ShapeError);
  assert.throws(() => tensor([1, 2, 3], { shape: [2, 2] }), ShapeError);
  assert.throws(() => zeros([2, -1]), ShapeError);
  assert.throws(() => zeros([2.5]), ShapeError);
});

Deno.test("zeros, ones, full and arange fill every dtype, odd sizes included", async () => {
  for (const name of ["f32", "f16", "bf16", "e4m3", "e5m2", "e3m2fn", "bf16x2", "i32", "bool"]) {
    for (const n of [1, 3, 17, 1000]) {
      using z = zeros([n], { dtype: name }),
        o = ones([n], { dtype: name }),
        f = full([n], 0.3, { dtype: name });
      assert.deepEqual(Array.from(await z.toArray()), new Array(n).fill(0), name);
      assert.deepEqual(Array.from(await o.toArray()), new Array(n).fill(1), name);
      const v = dtype(name).decode(dtype(name).encode(new Float32Array([0.3])))[0];
      assert.deepEqual(Array.from(await f.toArray()), new Array(n).fill(v), name);
    }
  }
  using a = arange(10);
  assert.equal(a.dtype, "i32");
  assert.deepEqual(Array.from(await a.toArray()), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  using b = arange(1, 2, 0.125, { dtype: "bf16" });
  assert.deepEqual(Array.from(await b.toArray()), [1, 1.125, 1.25, 1.375, 1.5, 1.625, 1.75, 1.875]);
  using c = arange(5, 0, -2);
  assert.deepEqual(Array.from(await c.toArray()), [5, 3, 1]);
  assert.throws(() => arange(0, 1, 0), ValueError);
});

Deno.test("rand() gives the hashed uniform bits of the host generator, on every adapter", async () => {
  using r = rand([1000], { seed: 9 });
  const got = await r.toArray();
  const want = Float32Array.from({ length: 1000 }, (_, i) => (randomU32(9, i) >>> 8) * 2 ** -24);
  assert.deepEqual(Array.from(got), Array.from(want));
});

Deno.test("randn() is standard normal: mean, variance and tails within sampling error", async () => {
  const n = 200_000;
  using r = randn([n], { seed: 5 });
  const x = await r.toArray();
  let m = 0, v = 0, tail = 0;
  for (const t of x) {
    m += t;
    v += t * t;
    if (Math.abs(t) > 1.96) tail++;
  }
  m /= n;
  v = v / n - m * m;
  assert.ok(Math.abs(m) < 4 / Math.sqrt(n), `mean ${m}`);
  assert.ok(Math.abs(v - 1) < 4 * Math.sqrt(2 / n), `variance ${v}`);
  assert.ok(Math.abs(tail / n - 0.05) < 4 * Math.sqrt(0.05 * 0.95 / n), `tail ${tail / n}`);
});

Deno.test("manualSeed() and the RNG state make the default stream reproducible", async () => {
  manualSeed(123);
  using a = randn([5]);
  const state = getRngState();
  using b = randn([5]);
  setRngState(state);
  using c = randn([5]);
  manualSeed(123);
  using d = randn([5]);
  assert.deepEqual(Array.from(await d.toArray()), Array.from(await a.toArray()));
  assert.deepEqual(Array.from(await c.toArray()), Array.from(await b.toArray()));
  assert.notDeepEqual(Array.from(await a.toArray()), Array.from(await b.toArray()));
});

Deno.test("dispose, using and tidy free GPU memory; use after dispose names shape and dtype", async () => {
  const start = memory().liveBytes;
  {
    using t = zeros([100], { dtype: "bf16" });
    assert.equal(memory().liveBytes - start, 200);
    assert.equal(t.disposed, false);
  }
  assert.equal(memory().liveBytes, start);
  const x = ones([10]);
  x.dispose();
  x.dispose();
  await assert.rejects(
    x.toArray(),
    (e: unknown) => e instanceof ValueError && /\[10\]/.test(e.message) && /f32/.test(e.message),
  );
  let saved = null as null | ReturnType<typeof zeros>;
  const out = tidy(() => {
    const a = ones([4]);
    saved = keep(a.mul(3));
    return { y: a.add(1), list: [a.neg()] };
  });
  assert.equal(memory().liveBytes - start, 3 * 16);
  assert.deepEqual(Array.from(await saved!.toArray()), [3, 3, 3, 3]);
  assert.deepEqual(Array.from(await out.y.toArray()), [2, 2, 2, 2]);
  saved!.dispose();
  out.y.dispose();
  out.list[0].dispose();
  assert.equal(memory().liveBytes, start);
  assert.throws(() => tidy(() => Promise.resolve(1)), ValueError);
  assert.throws(() =>
    tidy(() => {
      ones([3]);
      throw new Error("boom");
    }), /boom/);
  assert.equal(memory().liveBytes, start, "a throwing tidy frees its tensors");
});

Deno.test("memory() reports bytes by dtype and purpose for tensors", () => {
  const m0 = memory();
  using _p = zeros([1000], { dtype: "bf16", purpose: "params" });
  using _g = zeros([1000], { dtype: "e4m3" }).setPurpose("grads");
  const m1 = memory();
  assert.equal((m1.byPurpose.params ?? 0) - (m0.byPurpose.params ?? 0), 2000);
  assert.equal((m1.byPurpose.grads ?? 0) - (m0.byPurpose.grads ?? 0), 1000);
  assert.equal((m1.byDtype.e4m3 ?? 0) - (m0.byDtype.e4m3 ?? 0), 1000);
});
