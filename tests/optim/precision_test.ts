// DESIGN.md section 4, "what pure bf16 loses", reproduced on the adapter, and the
// precision option.
import assert from "node:assert/strict";
import { AdamW, memory, precisionStrategy, SGD, type Tensor, tensor } from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { bf16, normal } from "./_reference.ts";

Deno.test("pure bf16: 10,000 updates of -1e-4 leave a weight of 1.0 at exactly 1.0 (f32 moves)", async () => {
  const rt = await getRuntime();
  const w = tensor([1], { dtype: "bf16", requiresGrad: true });
  const w32 = tensor([1], { requiresGrad: true });
  const opt = new SGD([w], { lr: 1e-4 });
  const opt32 = new SGD([w32], { lr: 1e-4 });
  w.grad = tensor([1], { dtype: "bf16" });
  w32.grad = tensor([1]);
  const reads = rt.counters.readbacks;
  for (let i = 0; i < 10_000; i++) {
    opt.step();
    if (i < 100) opt32.step();
  }
  assert.equal(rt.counters.readbacks, reads);
  assert.deepEqual(Array.from(await w.codes()), [0x3f80]); // bf16 1.0
  assert.ok(Math.abs((await w32.item()) - 0.99) < 1e-5, "the f32 weight moved by 100 * 1e-4");
});

Deno.test("pure bf16: AdamW's updates of about -1e-4 are lost on a weight of 1.0", async () => {
  const w = tensor([1, 1], { dtype: "bf16", requiresGrad: true });
  const opt = new AdamW([w], { lr: 1e-4, weightDecay: 0 });
  w.grad = tensor([0.5, 3], { dtype: "bf16" }); // m/sqrt(v) ~ 1 for a constant gradient
  for (let i = 0; i < 50; i++) opt.step();
  assert.deepEqual(Array.from(await w.codes()), [0x3f80, 0x3f80]);
});

Deno.test("pure bf16: bf16(0.999) == 1.0, so v does not decay once the gradient stops", async () => {
  const run = async (dt: "f32" | "bf16") => {
    const w = tensor([1], { dtype: dt, requiresGrad: true });
    const opt = new AdamW([w], { weightDecay: 0 });
    w.grad = tensor([1], { dtype: dt });
    opt.step();
    const v1 = await (opt.stateDict().state[0].expAvgSq as Tensor).item();
    w.grad = tensor([0], { dtype: dt });
    for (let i = 0; i < 20; i++) opt.step();
    return [v1, await (opt.stateDict().state[0].expAvgSq as Tensor).item()];
  };
  assert.equal(bf16([0.999])[0], 1);
  const [b1, b21] = await run("bf16");
  assert.equal(b1, bf16([0.001])[0]);
  assert.equal(b21, b1, "bf16 v stalls");
  const [f1, f21] = await run("f32");
  assert.ok(Math.abs(f21 / f1 - 0.999 ** 20) < 1e-5, "f32 v decays by beta2 per step");
});

Deno.test("pure bf16: with weights of size 0.02 and lr 1e-4, about 12% of updates are lost", async () => {
  const n = 10_000;
  const w0 = bf16(normal(n, 3, 0.02));
  const w = tensor(w0, { dtype: "bf16", requiresGrad: true });
  const opt = new SGD([w], { lr: 1e-4 });
  w.grad = tensor(new Float32Array(n).fill(1), { dtype: "bf16" });
  opt.step();
  const w1 = await w.toArray();
  let lost = 0, expected = 0;
  for (let i = 0; i < n; i++) {
    if (w1[i] === w0[i]) lost++;
    if (bf16([Math.fround(w0[i] - Math.fround(1e-4))])[0] === w0[i]) expected++;
  }
  assert.equal(lost, expected, "the lost updates are those the host rounding predicts");
  // lost where |w| >= 2^-5: half a bf16 ulp (1.2e-4) exceeds the update; P(|z| > 1.5625) = 11.8%
  assert.ok(lost / n > 0.1 && lost / n < 0.14, `${lost / n}`);
});

// the list of names itself: strategies_test.ts
Deno.test("precision strategies by name; unknown ones are refused with the list", () => {
  const s = precisionStrategy("bf16");
  assert.deepEqual([s.param.name, s.grad.name, s.stateDtype("expAvg").name], [
    "bf16",
    "bf16",
    "bf16",
  ]);
  assert.throws(
    () => precisionStrategy("fp16"),
    /unknown precision 'fp16'; supported: 'fp32', 'bf16', 'bf16-sr', 'amp-bf16', 'amp-f16', 'fp8', 'msamp-o2', 'collage-light', 'collage-plus'/,
  );
});

Deno.test("bf16 optimizer states take half the bytes of fp32 ones (m and v: 4 vs 8 bytes per parameter)", async () => {
  await getRuntime();
  const bytes = (dt: "f32" | "bf16") => {
    const w = tensor(new Float32Array(1000), { dtype: dt, purpose: "params" });
    const o = new AdamW([w]);
    w.grad = tensor(new Float32Array(1000), { dtype: dt, purpose: "grads" });
    const before = memory().byPurpose;
    o.step();
    const after = memory().byPurpose;
    const sd = o.stateDict().state[0];
    const d = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
    const out = [d("optimizer"), (sd.expAvg as Tensor).dtype, (sd.expAvgSq as Tensor).dtype];
    o.dispose();
    return out;
  };
  assert.deepEqual(bytes("f32"), [8000, "f32", "f32"]);
  assert.deepEqual(bytes("bf16"), [4000, "bf16", "bf16"]);
});
