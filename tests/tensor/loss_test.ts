// Fused cross-entropy (tensor/ops/loss.ts, through nn's crossEntropy) against an f64 host reference
// rounded once to the loss dtype, on the real adapter: f32, bf16, f16 and e4m3 logits, odd
// class counts, many rows, ignoreIndex, large logits, out-of-range targets, gradients against
// the analytic softmax - onehot and central finite differences, and dispatch counts.
import assert from "node:assert/strict";
import {
  autocast,
  crossEntropy,
  DTypeError,
  ShapeError,
  type Tensor,
  tensor,
  tidy,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { rng, roundTo, ulpsOff, values } from "./_reference.ts";

const rt = await getRuntime();

/** Host cross-entropy in f64: the mean loss and d(loss)/d(logits) for a seed gradient `g`. */
function reference(
  z: ArrayLike<number>,
  C: number,
  t: readonly number[],
  ignore?: number,
  g = 1,
) {
  const N = t.length;
  let sum = 0, count = 0;
  const grad = new Float64Array(N * C);
  const lse: number[] = [];
  for (let r = 0; r < N; r++) {
    const row = Array.from({ length: C }, (_, j) => z[r * C + j]);
    const m = Math.max(...row);
    lse.push(m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0)));
    if (t[r] === ignore) continue;
    const c = Math.min(Math.max(t[r], 0), C - 1);
    sum += lse[r] - row[c];
    count++;
  }
  for (let r = 0; r < N; r++) {
    if (t[r] === ignore) continue;
    const c = Math.min(Math.max(t[r], 0), C - 1);
    for (let j = 0; j < C; j++) {
      grad[r * C + j] = (Math.exp(z[r * C + j] - lse[r]) - (j === c ? 1 : 0)) * g / count;
    }
  }
  return { loss: count === 0 ? 0 : sum / count, grad, count };
}

/** The reference rounded to `dt` within one unit in the last place, or within `abs`. */
function assertClose(what: string, dt: string, got: number, ref: number, abs = 0): void {
  const ok = dt === "f32"
    ? Math.abs(got - ref) <= abs + 2e-6 * Math.abs(ref)
    : ulpsOff(dt, got, roundTo(dt, [ref])[0]) <= 1 || Math.abs(got - ref) <= abs;
  assert.ok(ok, `${what}: got ${got}, reference ${ref} (${dt})`);
}

function targetsFor(N: number, C: number, seed: number): number[] {
  const r = rng(seed);
  return Array.from({ length: N }, () => Math.floor(r() * C));
}

Deno.test("the loss over 1, 3, 17 and 1000 classes matches the reference rounded once in f32, bf16, f16 and e4m3", async () => {
  let seed = 1;
  for (const dt of ["f32", "bf16", "f16", "e4m3"]) {
    for (const [N, C] of [[4, 1], [5, 3], [67, 17], [3, 1000]]) {
      const zv = values(dt, N * C, seed++, -4, 4);
      const t = targetsFor(N, C, seed++);
      const loss = crossEntropy(
        tensor(zv, { shape: [N, C], dtype: dt }),
        tensor(Int32Array.from(t)),
      );
      assert.equal(loss.dtype, dt);
      assert.deepEqual(loss.shape, []);
      assertClose(`${dt} [${N}, ${C}]`, dt, await loss.item(), reference(zv, C, t).loss, 1e-6);
    }
  }
});

Deno.test("gradients are (softmax - onehot) * g / count, rounded once, in f32, bf16 and f16", async () => {
  let seed = 20;
  for (const dt of ["f32", "bf16", "f16"]) {
    for (const [N, C] of [[3, 1], [5, 3], [7, 17], [2, 1000]]) {
      const zv = values(dt, N * C, seed++, -3, 3);
      const t = targetsFor(N, C, seed++);
      t[0] = -100;
      const z = tensor(zv, { shape: [N, C], dtype: dt, requiresGrad: true });
      const loss = crossEntropy(z, tensor(Int32Array.from(t)), { ignoreIndex: -100 });
      loss.mul(2.5).backward();
      assert.equal(z.grad!.dtype, dt);
      const ref = reference(zv, C, t, -100, 2.5);
      const g = await z.grad!.toArray();
      ref.grad.forEach((v, i) => assertClose(`${dt} [${N}, ${C}] grad[${i}]`, dt, g[i], v, 1e-7));
    }
  }
});

Deno.test("gradients agree with central finite differences in f32", async () => {
  const N = 4, C = 9;
  const zv = values("f32", N * C, 40, -2, 2);
  const t = [3, -1, 8, 0];
  const tg = tensor(Int32Array.from(t));
  const z = tensor(zv, { shape: [N, C], requiresGrad: true });
  crossEntropy(z, tg, { ignoreIndex: -1 }).backward();
  const g = await z.grad!.toArray();
  const h = 1e-2;
  const ks = [0, 3, 5, 10, 20, 26, 27, 35];
  const at = (k: number, d: number) =>
    tidy(() => {
      const a = Float32Array.from(zv);
      a[k] += d;
      return crossEntropy(tensor(a, { shape: [N, C] }), tg, { ignoreIndex: -1 });
    });
  const pairs = ks.map((k) => [at(k, h), at(k, -h)]);
  const vals = await Promise.all(pairs.flat().map((l) => l.item()));
  ks.forEach((k, i) => {
    const fd = (vals[2 * i] - vals[2 * i + 1]) / (2 * h);
    assert.ok(Math.abs(g[k] - fd) <= 2e-4 + 0.01 * Math.abs(fd), `[${k}]: ${g[k]} vs ${fd}`);
  });
  // the ignored row (row 1) gets no gradient at all
  assert.ok(g.slice(C, 2 * C).every((v) => v === 0));
});

Deno.test("ignoreIndex rows neither add to the loss nor count; all ignored gives 0 and zero gradients", async () => {
  const zv = values("f32", 4 * 5, 50);
  const z = tensor(zv, { shape: [4, 5], requiresGrad: true });
  const t = [1, 7, 7, 4];
  const loss = crossEntropy(z, tensor(Int32Array.from(t)), { ignoreIndex: 7 });
  assertClose("two counted", "f32", await loss.item(), reference(zv, 5, t, 7).loss);
  assert.equal(reference(zv, 5, t, 7).count, 2);
  const all = crossEntropy(z, tensor(new Int32Array([7, 7, 7, 7])), { ignoreIndex: 7 });
  assert.equal(await all.item(), 0);
  all.backward();
  assert.ok((await z.grad!.toArray()).every((v) => v === 0));
  // without ignoreIndex a target of -100 is an ordinary target, out of range: an error at the
  // next readback (tests/tensor/id_check_test.ts)
  const l2 = crossEntropy(z, tensor(new Int32Array([-100, 0, 0, 0])));
  await assert.rejects(l2.item(), /a target outside \[0, 5\) .*out-of-range ids -100\)/);
});

Deno.test("logits of 1000 and -1000 give a finite loss and finite gradients", async () => {
  const zv = [1000, 1000, -1000, 0, 1000, 999, -1000, -1000, -999.5];
  for (const dt of ["f32", "bf16"]) {
    const z = tensor(zv, { shape: [3, 3], dtype: dt, requiresGrad: true });
    const t = [0, 1, 2];
    const loss = crossEntropy(z, tensor(Int32Array.from(t)));
    const v = await loss.item();
    assert.ok(Number.isFinite(v));
    assertClose(`large ${dt}`, dt, v, reference(roundTo(dt, zv), 3, t).loss, 1e-5);
    loss.backward();
    const g = await z.grad!.toArray();
    assert.ok(g.every(Number.isFinite));
    assert.ok(Math.abs(g[0] - (0.5 - 1) / 3) < 1e-3 && Math.abs(g[1] - 0.5 / 3) < 1e-3);
  }
});

Deno.test("out-of-range targets are clamped in the kernel and reported at the next readback, for i32 and u32 targets", async () => {
  const zv = values("f32", 3 * 4, 60);
  const z = tensor(zv, { shape: [3, 4] });
  const i = crossEntropy(z, tensor(new Int32Array([-5, 99, 2])));
  await assert.rejects(i.item(), /a target outside \[0, 4\) .*out-of-range ids from -5 to 99\)/);
  // the kernel clamped them (the value, read again once the error is reported)
  assertClose("i32", "f32", await i.item(), reference(zv, 4, [0, 3, 2]).loss);
  const u = crossEntropy(z, tensor(new Uint32Array([1, 99, 3])));
  await assert.rejects(u.item(), /out-of-range ids 99\)/);
  assertClose("u32", "f32", await u.item(), reference(zv, 4, [1, 3, 3]).loss);
});

Deno.test("more rows than one grid dimension holds (70,000), and rank-3 logits through nn's crossEntropy", async () => {
  const N = 70000, C = 2;
  const zv = new Float32Array(N * C);
  const t: number[] = [];
  for (let r = 0; r < N; r++) {
    zv[2 * r] = r % 3;
    t.push(r % 2);
  }
  const loss = crossEntropy(tensor(zv, { shape: [N, C] }), tensor(Int32Array.from(t)));
  assertClose("70000 rows", "f32", await loss.item(), reference(zv, C, t).loss, 1e-5);
  const zv3 = values("f32", 2 * 3 * 5, 70);
  const t3 = [0, 4, 2, 1, 3, 3];
  const l3 = crossEntropy(
    tensor(zv3, { shape: [2, 3, 5] }),
    tensor(Int32Array.from(t3), { shape: [2, 3] }),
  );
  assertClose("rank 3", "f32", await l3.item(), reference(zv3, 5, t3).loss);
});

Deno.test("the fused forward is two dispatches and the backward one", () => {
  for (const dt of ["f32", "bf16", "e4m3"]) {
    tidy(() => {
      const z = tensor(values(dt, 6 * 11, 80), { shape: [6, 11], dtype: dt, requiresGrad: true });
      const t = tensor(new Int32Array([0, 10, 3, -100, 5, 1]));
      const d0 = rt.counters.dispatches;
      const loss = crossEntropy(z, t, { ignoreIndex: -100 });
      const d1 = rt.counters.dispatches;
      assert.equal(d1 - d0, 2, dt);
      loss.backward(); // one more: backward() fills its seed with ones
      assert.equal(rt.counters.dispatches - d1, 1 + 1, dt);
    });
  }
});

Deno.test("under autocast bf16 the loss is computed in f32 and the gradient flows back in bf16", async () => {
  const zv = values("bf16", 4 * 6, 90);
  const z = tensor(zv, { shape: [4, 6], dtype: "bf16", requiresGrad: true });
  const t = [5, 0, 2, 2];
  const loss: Tensor = autocast(
    { dtype: "bf16" },
    () => crossEntropy(z, tensor(Int32Array.from(t))),
  );
  assert.equal(loss.dtype, "f32");
  assertClose("autocast", "f32", await loss.item(), reference(zv, 6, t).loss);
  loss.backward();
  assert.equal(z.grad!.dtype, "bf16");
});

Deno.test("float targets throw a DTypeError and mismatched shapes a ShapeError", () => {
  const z = tensor(new Float32Array(6), { shape: [2, 3] });
  assert.throws(() => crossEntropy(z, tensor([0, 1])), DTypeError);
  assert.throws(() => crossEntropy(z, tensor(new Int32Array([0, 1, 2]))), ShapeError);
  assert.throws(
    () => crossEntropy(z, tensor(new Int32Array([0, 1])), { ignoreIndex: 0.5 }),
    /ignoreIndex/,
  );
});
