import assert from "node:assert/strict";
import {
  dtype,
  isGradEnabled,
  memory,
  noGrad,
  setFusion,
  tensor,
  tidy,
  ValueError,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";

Deno.test("backward() accumulates .grad across calls and zeroGrad() clears it", async () => {
  const x = tensor([1, 2, 3], { requiresGrad: true });
  x.mul(x).backward(tensor([1, 1, 1])); // d(x^2) = 2x
  assert.deepEqual(Array.from(await x.grad!.toArray()), [2, 4, 6]);
  x.mul(3).backward(tensor([1, 1, 1]));
  assert.deepEqual(Array.from(await x.grad!.toArray()), [5, 7, 9]);
  x.zeroGrad();
  assert.equal(x.grad, null);
  x.dispose();
});

Deno.test("a seed gradient weights the outputs; scalar outputs need none", async () => {
  const x = tensor([1, 2], { requiresGrad: true });
  x.mul(x).backward(tensor([10, 100]));
  assert.deepEqual(Array.from(await x.grad!.toArray()), [20, 400]);
  assert.throws(
    () => x.mul(2).backward(),
    (e: unknown) => e instanceof ValueError && /one-element/.test(e.message),
  );
  assert.throws(() => x.mul(2).backward(tensor([1, 2, 3])), ValueError);
  assert.throws(
    () => tensor([1]).backward(),
    (e: unknown) => e instanceof ValueError && /requiresGrad/.test(e.message),
  );
});

Deno.test("gradients flow through shared subexpressions (diamonds) exactly once per path", async () => {
  const x = tensor([3], { requiresGrad: true });
  const y = x.mul(2); // y = 2x
  const z = y.mul(y).add(y); // z = 4x^2 + 2x -> dz/dx = 8x + 2 = 26
  z.backward();
  assert.deepEqual(Array.from(await x.grad!.toArray()), [26]);
});

Deno.test("noGrad() records nothing, as a function and with using; detach() cuts the graph", () => {
  const x = tensor([1], { requiresGrad: true });
  const a = noGrad(() => x.mul(2));
  assert.equal(a.requiresGrad, false);
  assert.equal(isGradEnabled(), true);
  {
    using _ = noGrad();
    assert.equal(isGradEnabled(), false);
    assert.equal(x.exp().node, null);
  }
  assert.equal(isGradEnabled(), true);
  const d = x.detach();
  assert.equal(d.requiresGrad, false);
  assert.equal(x.add(1).requiresGrad, true);
});

Deno.test("the gradient of a low-precision leaf is stored in its dtype, or in the dtype named", async () => {
  const w = tensor([1, 2, 3], { dtype: "bf16", requiresGrad: true });
  w.mul(tensor([0.1, 0.2, 0.3])).backward(tensor([1, 1, 1]));
  assert.equal(w.grad!.dtype, "bf16");
  assert.deepEqual(Array.from(await w.grad!.toArray()), [0.10009765625, 0.2001953125, 0.30078125]);
  const v = tensor([1, 2, 3], { dtype: "bf16", requiresGrad: true });
  v.gradDtype = dtype("f32");
  v.mul(tensor([0.1, 0.2, 0.3])).backward(tensor([1, 1, 1]));
  assert.equal(v.grad!.dtype, "f32");
  assert.deepEqual(
    Array.from(await v.grad!.toArray()),
    Array.from(new Float32Array([0.1, 0.2, 0.3])),
  );
});

Deno.test("a long chain of 3,000 ops backpropagates without overflowing the stack", async () => {
  const x = tensor([1], { requiresGrad: true });
  const y = tidy(() => {
    let t = x;
    for (let i = 0; i < 3000; i++) t = t.mul(1.0001);
    t.backward();
    return t.detach();
  });
  const want = Math.pow(Math.fround(1.0001), 3000);
  assert.ok(Math.abs((await x.grad!.item()) - want) / want < 1e-4);
  y.dispose();
});

Deno.test("backward frees its intermediate gradients: only the leaf gradients remain", () => {
  const x = tensor(new Float32Array(1000).fill(0.5), { requiresGrad: true });
  const start = memory().liveBytes;
  tidy(() => {
    x.exp().mul(x).add(x.sigmoid()).tanh().backward(tensor(new Float32Array(1000).fill(1)));
  });
  assert.equal(memory().liveBytes - start, 4000, "x.grad alone");
  x.zeroGrad();
  assert.equal(memory().liveBytes, start);
});

Deno.test("backward() through intermediates that tidy() already freed says what happened", () => {
  const x = tensor([1, 2], { requiresGrad: true });
  const y = tidy(() => x.mul(2).exp().sum());
  assert.throws(
    () => y.backward(),
    (e: unknown) => e instanceof ValueError && /same tidy/.test(e.message),
  );
  assert.equal(x.grad, null);
});

Deno.test("add and sub pass their gradient on shared, and leaves still get gradients of their own", async () => {
  const rt = await getRuntime();
  const x = tensor([1, 2, 3], { requiresGrad: true });
  const y = tensor([10, 20, 30], { requiresGrad: true });
  const h = x.mul(2); // an intermediate, so the shared gradient also flows into a node
  const out = h.add(y).sub(x).add(h); // d/dx = 2 - 1 + 2 = 3, d/dy = 1
  const seed = tensor([1, 10, 100]);
  const prev = setFusion(false); // count the kernels of the ops themselves
  const before = rt.counters.dispatches;
  try {
    out.backward(seed);
  } finally {
    setFusion(prev);
  }
  // mul's backward (g*2) twice, sub's neg, and one add accumulating h's two gradients; no copies
  assert.equal(rt.counters.dispatches - before, 4);
  assert.deepEqual(Array.from(await x.grad!.toArray()), [3, 30, 300]);
  assert.deepEqual(Array.from(await y.grad!.toArray()), [1, 10, 100]);
  // y.grad must not alias a gradient that flowed on to x (or anything else): overwrite it
  y.grad!.copy_(tensor([7, 7, 7]));
  assert.deepEqual(Array.from(await x.grad!.toArray()), [3, 30, 300]);
  for (const t of [x, y, h, out]) t.dispose();
});

Deno.test("a gradient shared by two leaves is cloned for the second, not aliased", async () => {
  const a = tensor([1, 2], { requiresGrad: true }), b = tensor([3, 4], { requiresGrad: true });
  a.add(b).backward(tensor([5, 6]));
  assert.notEqual(a.grad, b.grad);
  a.grad!.copy_(tensor([0, 0]));
  assert.deepEqual(Array.from(await b.grad!.toArray()), [5, 6]);
  const c = tensor([1, 2], { requiresGrad: true });
  c.add(c).backward(tensor([1, 1])); // both slots of add are the same leaf
  assert.deepEqual(Array.from(await c.grad!.toArray()), [2, 2]);
});

Deno.test("backward() through a released graph raises with PyTorch's retainGraph advice", async () => {
  const x = tensor([1, 2, 3], { requiresGrad: true });
  const y = x.mul(x).sum();
  y.backward();
  assert.deepEqual(Array.from(await x.grad!.toArray()), [2, 4, 6]);
  assert.throws(
    () => y.backward(),
    (e: unknown) =>
      e instanceof ValueError && /second time/.test(e.message) && /retainGraph/.test(e.message),
  );
  // a new graph that reuses a released intermediate also raises, before touching any .grad
  const h = x.mul(2);
  h.sum().backward();
  const before = Array.from(await x.grad!.toArray());
  assert.throws(() => h.exp().add(x).sum().backward(), /second time/);
  assert.deepEqual(Array.from(await x.grad!.toArray()), before);
  x.dispose();
});

Deno.test("backward(g, { retainGraph: true }) keeps the graph for a second pass", async () => {
  const x = tensor([1, -2, 0.5], { requiresGrad: true });
  const y = x.square().mul(x.exp()).sum(); // dy/dx = (2x + x^2) e^x
  y.backward(undefined, { retainGraph: true });
  y.backward();
  const want = [1, -2, 0.5].map((v) => 2 * (2 * v + v * v) * Math.exp(v));
  const got = Array.from(await x.grad!.toArray());
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]) < 1e-5 * Math.abs(want[i]) + 1e-6));
  assert.throws(() => y.backward(), /second time/); // the second pass released it
  x.dispose();
});

Deno.test("square() equals x * x in the tensor's dtype and has gradient 2x", async () => {
  const v = [1.5, -3, 0.1, 300];
  const x = tensor(v, { dtype: "bf16", requiresGrad: true });
  const s = x.square();
  assert.equal(s.dtype, "bf16");
  const bf = dtype("bf16");
  const xs = bf.decode(bf.encode(new Float32Array(v)));
  const want = bf.decode(bf.encode(xs.map((a) => a * a)));
  assert.deepEqual(Array.from(await s.toArray()), Array.from(want));
  s.sum().backward();
  const g = Array.from(await x.grad!.toArray());
  assert.deepEqual(g, Array.from(bf.decode(bf.encode(xs.map((a) => 2 * a)))));
  x.dispose();
});
