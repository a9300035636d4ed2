import assert from "node:assert/strict";
import {
  autocast,
  autocastState,
  DTypeError,
  getRuntime,
  Linear,
  tensor,
  tidy,
} from "../../mod.ts";

Deno.test("autocast runs matmul in the lower dtype, f32-list ops in f32, the rest at the widest input", () => {
  const a = tensor([[1, 2], [3, 4]]), b = tensor([[0.5], [0.25]]);
  const h = tensor([1, 2], { dtype: "bf16" });
  using _ = autocast({ dtype: "bf16" });
  assert.equal(a.matmul(b).dtype, "bf16");
  assert.equal(h.exp().dtype, "f32");
  assert.equal(h.softmax().dtype, "f32");
  assert.equal(h.sum().dtype, "f32");
  assert.equal(h.add(h).dtype, "bf16");
  assert.equal(h.add(a.slice([[0, 1]]).reshape([2])).dtype, "f32");
});

Deno.test("autocast contexts nest, enabled: false turns them off, and the function form restores state", () => {
  const a = tensor([[1, 2]]), b = tensor([[3], [4]]);
  assert.equal(autocastState(), null);
  autocast({ dtype: "f16" }, () => {
    assert.equal(a.matmul(b).dtype, "f16");
    autocast({ dtype: "bf16" }, () => assert.equal(a.matmul(b).dtype, "bf16"));
    autocast({ enabled: false }, () => assert.equal(a.matmul(b).dtype, "f32"));
    assert.equal(a.matmul(b).dtype, "f16");
  });
  assert.equal(autocastState(), null);
  assert.throws(() => autocast({ dtype: "i32" }), DTypeError);
  assert.throws(() =>
    autocast({ dtype: "f16" }, () => {
      throw new Error("boom");
    }), /boom/);
  assert.equal(autocastState(), null, "a throwing body leaves the context");
});

Deno.test("a parameter used twice in one context is cast once; gradients reach the f32 master in f32", async () => {
  const fc = new Linear(3, 2, { seed: 1 });
  const x = tensor([[1, 2, 3]]);
  const rt = await getRuntime();
  tidy(() => {
    using _ = autocast({ dtype: "bf16" });
    const d0 = rt.counters.dispatches;
    fc.forward(x);
    const first = rt.counters.dispatches - d0;
    const d1 = rt.counters.dispatches;
    const y = fc.forward(x);
    const second = rt.counters.dispatches - d1;
    assert.ok(
      second < first,
      `the second forward reuses the cast weight (${second} vs ${first} dispatches)`,
    );
    assert.equal(y.dtype, "bf16");
    y.sum().backward();
  });
  assert.equal(fc.weight.grad!.dtype, "f32");
  const g = Array.from(await fc.weight.grad!.toArray());
  // d(sum(y))/dW[o, k] = x[k] (only the second forward was backpropagated)
  assert.deepEqual(g, [1, 2, 3, 1, 2, 3]);
});
