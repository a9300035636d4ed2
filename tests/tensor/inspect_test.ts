// What console.log(tensor) shows: PyTorch's repr (values, shape, dtype, grad info) from the
// values known on the host, never stale ones.
import assert from "node:assert/strict";
import { fromCodes, Linear, ready, tensor, zeros } from "../../mod.ts";

await ready();

Deno.test("inspect shows the values a tensor was made from, nested by shape, with shape and dtype", () => {
  const x = tensor([[1, 2], [3, 4]], { dtype: "bf16" });
  assert.equal(Deno.inspect(x), "Tensor([[1, 2], [3, 4]], shape=[2,2], dtype=bf16)");
  assert.equal(String(x), Deno.inspect(x));
  // values rounded to the dtype, as stored: 1/3 in bf16 is 0.333984375
  assert.equal(
    Deno.inspect(tensor([1 / 3, -0.1, 1e6], { dtype: "bf16" })),
    "Tensor([0.334, -0.1001, 999424], shape=[3], dtype=bf16)",
  );
  assert.equal(
    Deno.inspect(tensor(new Int32Array([-7, 0, 9]))),
    "Tensor([-7, 0, 9], shape=[3], dtype=i32)",
  );
  assert.equal(Deno.inspect(tensor(2.5)), "Tensor(2.5, shape=[], dtype=f32)");
  assert.equal(
    Deno.inspect(tensor([true, false], { dtype: "bool" })),
    "Tensor([1, 0], shape=[2], dtype=bool)",
  );
  const codes = fromCodes(new Uint8Array([0x38, 0x7e, 0xb8]), [3], "e4m3");
  assert.equal(Deno.inspect(codes), "Tensor([1, 448, -1], shape=[3], dtype=e4m3)");
  assert.equal(
    Deno.inspect(tensor([1, 2, 3], { requiresGrad: true })),
    "Tensor([1, 2, 3], shape=[3], dtype=f32, requiresGrad=true)",
  );
});

Deno.test("a large tensor shows its first and last three values", () => {
  const x = tensor(Float32Array.from({ length: 1000 }, (_, i) => i / 8), { shape: [10, 100] });
  assert.equal(
    Deno.inspect(x),
    "Tensor([0, 0.125, 0.25, …, 124.6, 124.8, 124.9], shape=[10,100], dtype=f32)",
  );
});

Deno.test("results show their values once read; a write since the read voids them", async () => {
  const x = tensor([1, 2, 3], { requiresGrad: true });
  const y = x.mul(2);
  assert.equal(
    Deno.inspect(y),
    "Tensor(shape=[3], dtype=f32, requiresGrad=true, gradFn=mul, values on the GPU: " +
      "await t.toArray())",
  );
  await y.toArray();
  assert.equal(
    Deno.inspect(y),
    "Tensor([2, 4, 6], shape=[3], dtype=f32, requiresGrad=true, gradFn=mul)",
  );
  // an in-place write (copy_) voids the values seen before it
  const z = zeros([3]);
  await z.toArray();
  z.copy_(tensor([7, 8, 9]));
  assert.match(Deno.inspect(z), /values on the GPU/);
  // a read that a write overtakes does not bring back the old values
  const pending = z.toArray();
  z.copy_(tensor([1, 1, 1]));
  await pending; // (its values are the buffer's when the read is flushed)
  assert.match(Deno.inspect(z), /values on the GPU/);
  assert.deepEqual(Array.from(await z.toArray()), [1, 1, 1]);
  assert.equal(Deno.inspect(z), "Tensor([1, 1, 1], shape=[3], dtype=f32)");
  z.dispose();
  assert.equal(Deno.inspect(z), "Tensor(shape=[3], dtype=f32, disposed)");
});

Deno.test("a parameter updated by an optimizer does not show its old values", async () => {
  const layer = new Linear(2, 1, { seed: 3 });
  const w = layer.weight;
  const before = Array.from(await w.toArray());
  assert.match(Deno.inspect(w), /^Tensor\(\[\[/);
  w.copy_(tensor([[before[0] + 1, before[1]]]));
  assert.match(Deno.inspect(w), /values on the GPU/);
});
