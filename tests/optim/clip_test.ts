import assert from "node:assert/strict";
import { clipGradNorm, type Tensor, tensor, ValueError } from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { bf16, closeUlps, ulp32, ulpBf16, uniform } from "./_reference.ts";

const SIZES = [1, 3, 17, 1000];

function withGrads(sizes: number[], dt: string[] = sizes.map(() => "f32"), seed = 5) {
  const grads = sizes.map((n, i) => {
    const g = uniform(n, seed + i, -1, 1);
    return dt[i] === "bf16" ? bf16(g) : g;
  });
  const ps = sizes.map((n) => tensor(new Float32Array(n), { requiresGrad: true }));
  ps.forEach((p, i) => (p.grad = tensor(grads[i], { dtype: dt[i] })));
  return { ps, grads };
}

function hostNorm(grads: Float32Array[], p: number): number {
  const all = grads.flatMap((g) => Array.from(g));
  if (p === Infinity) return Math.max(...all.map(Math.abs));
  return all.reduce((a, x) => a + Math.abs(x) ** p, 0) ** (1 / p);
}

Deno.test("clipGradNorm() scales all gradients by maxNorm / (norm + 1e-6) and returns the total norm, no readback", async () => {
  const rt = await getRuntime();
  const { ps, grads } = withGrads(SIZES);
  const norm = hostNorm(grads, 2);
  const reads = rt.counters.readbacks;
  const total = clipGradNorm(ps, 1.5);
  assert.equal(rt.counters.readbacks, reads);
  assert.deepEqual(total.shape, []);
  assert.equal(total.dtype, "f32");
  assert.ok(
    Math.abs((await total.item()) - norm) / norm < 1e-6,
    `${await total.item()} vs ${norm}`,
  );
  const coef = 1.5 / (norm + 1e-6);
  for (let i = 0; i < ps.length; i++) {
    const got = await ps[i].grad!.toArray();
    closeUlps(`grad ${i}`, got, grads[i].map((g) => g * coef), 8, ulp32);
  }
});

Deno.test("clipGradNorm() leaves gradients unchanged below maxNorm, skips parameters without one", async () => {
  const { ps, grads } = withGrads(SIZES);
  const extra = tensor([1, 2, 3], { requiresGrad: true }); // no gradient
  const total = clipGradNorm([...ps, extra], 1e6);
  assert.ok(Math.abs((await total.item()) - hostNorm(grads, 2)) < 1e-4);
  for (let i = 0; i < ps.length; i++) {
    assert.deepEqual(Array.from(await ps[i].grad!.toArray()), Array.from(grads[i]));
  }
  assert.equal(extra.grad, null);
  assert.equal(await clipGradNorm([extra], 1).item(), 0, "no gradients: norm 0");
});

Deno.test("clipGradNorm() takes other norms (1, 3, Infinity) and gradients of several dtypes", async () => {
  for (const p of [1, 3, Infinity]) {
    const dts = ["f32", "bf16", "f32", "bf16"];
    const { ps, grads } = withGrads(SIZES, dts, 9);
    const norm = hostNorm(grads, p);
    const total = await clipGradNorm(ps, 0.5, p).item();
    assert.ok(Math.abs(total - norm) / norm < 1e-5, `p=${p}: ${total} vs ${norm}`);
    const coef = Math.fround(0.5 / (total + 1e-6));
    for (let i = 0; i < ps.length; i++) {
      const want = grads[i].map((g) => g * coef);
      const got = await ps[i].grad!.toArray();
      assert.equal(ps[i].grad!.dtype, dts[i]);
      // bf16: the f32 product is rounded once more, so one bf16 ulp (double rounding)
      closeUlps(
        `p=${p}, grad ${i}`,
        got,
        want,
        dts[i] === "bf16" ? 1 : 2,
        dts[i] === "bf16" ? ulpBf16 : ulp32,
      );
    }
  }
});

Deno.test("clipGradNorm() works in place: two dispatches per gradient and one final, no staging copy", async () => {
  const rt = await getRuntime();
  const count = (n: number) => {
    const { ps } = withGrads(Array.from({ length: n }, (_, i) => SIZES[i % 4]));
    const d = rt.counters.dispatches;
    clipGradNorm(ps, 0.1).dispose();
    return rt.counters.dispatches - d;
  };
  assert.equal(count(2), 5);
  assert.equal(count(20), 41);
  // no staging copy: during the call, live bytes grow by the partials, the coefficient and
  // the norm only (14 partials of 4 bytes, 16, 4), not by a copy of the gradients (406 KB)
  const { ps } = withGrads([100_000, 3000], ["f32", "bf16"]);
  rt.resetPeak();
  const live0 = rt.memory().liveBytes;
  const norm = clipGradNorm(ps, 0.1);
  assert.equal(rt.memory().peakBytes - live0, 14 * 4 + 16 + 4);
  norm.dispose();
});

Deno.test("clipGradNorm() validates maxNorm and normType", () => {
  const { ps } = withGrads([2]);
  assert.throws(() => clipGradNorm(ps, -1), /maxNorm must be a number in \[0, inf\], got -1/);
  assert.throws(() => clipGradNorm(ps, 1, 0), /normType must be a number in \(0, inf\]/);
  assert.throws(() => clipGradNorm([1 as unknown as Tensor], 1), ValueError);
});
