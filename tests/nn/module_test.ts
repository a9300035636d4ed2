import assert from "node:assert/strict";
import {
  crossEntropy,
  Dropout,
  Embedding,
  GPT,
  LayerNorm,
  Linear,
  manualSeed,
  Module,
  noGrad,
  Parameter,
  RMSNorm,
  ShapeError,
  type Tensor,
  tensor,
  tidy,
  ValueError,
  zeros,
} from "../../mod.ts";
import { rng } from "../tensor/_reference.ts";

class Net extends Module {
  fc1 = new Linear(3, 4, { seed: 1 });
  blocks = [new Linear(4, 4, { seed: 2 }), new Linear(4, 2, { bias: false, seed: 3 })];
  scale = Parameter(zeros([2]));
  notAParam = tensor([1]);
  forward(x: Tensor): Tensor {
    let h = this.fc1.forward(x).relu();
    for (const b of this.blocks) h = b.forward(h);
    return h.add(this.scale);
  }
}

Deno.test("Module finds parameters in fields, arrays and submodules, with dotted names", () => {
  const net = new Net();
  assert.deepEqual(net.namedParameters().map(([n]) => n), [
    "fc1.weight",
    "fc1.bias",
    "blocks.0.weight",
    "blocks.0.bias",
    "blocks.1.weight",
    "scale",
  ]);
  assert.equal(net.parameters().length, 6);
  assert.deepEqual(net.namedModules().map(([n]) => n), ["", "fc1", "blocks.0", "blocks.1"]);
  net.eval();
  assert.ok(net.namedModules().every(([, m]) => !m.training));
  net.train();
  assert.ok(net.fc1.training);
});

Deno.test("loadStateDict copies values and names missing, unexpected and mis-shaped keys", async () => {
  const a = new Net(), b = new Net();
  b.fc1.weight.copy_(tensor(new Float32Array(12).fill(0.5), { shape: [4, 3] }));
  a.loadStateDict(b.stateDict());
  assert.deepEqual(Array.from(await a.fc1.weight.toArray()), new Array(12).fill(0.5));
  const sd = { ...b.stateDict() };
  delete sd["scale"];
  sd["extra.weight"] = tensor([1]);
  assert.throws(
    () => a.loadStateDict(sd),
    (e: unknown) =>
      e instanceof ValueError && /missing keys: scale/.test(e.message) &&
      /unexpected keys: extra.weight/.test(e.message),
  );
  const r = a.loadStateDict(sd, { strict: false });
  assert.deepEqual(r, { missing: ["scale"], unexpected: ["extra.weight"] });
  const bad = { ...b.stateDict(), "fc1.bias": tensor([1, 2]) };
  assert.throws(
    () => a.loadStateDict(bad),
    (e: unknown) =>
      e instanceof ShapeError && /fc1.bias/.test(e.message) && /\[2\]/.test(e.message) &&
      /\[4\]/.test(e.message),
  );
});

Deno.test("Linear, LayerNorm, RMSNorm and Embedding match a host reference", async () => {
  const fc = new Linear(3, 2, { seed: 4 });
  const w = Array.from(await fc.weight.toArray());
  using x = tensor([[1, -2, 0.5], [0, 1, 2]]);
  const y = await fc.forward(x).toArray();
  const xs = [[1, -2, 0.5], [0, 1, 2]];
  xs.forEach((row, i) => {
    for (let o = 0; o < 2; o++) {
      const ref = row.reduce((s, v, k) => s + v * w[o * 3 + k], 0);
      assert.ok(Math.abs(y[i * 2 + o] - ref) < 1e-6);
    }
  });
  const ln = new LayerNorm(3);
  const z = await ln.forward(x).toArray();
  xs.forEach((row, i) => {
    const mu = row.reduce((a, b) => a + b) / 3;
    const v = row.reduce((a, b) => a + (b - mu) ** 2, 0) / 3;
    row.forEach((t, k) =>
      assert.ok(Math.abs(z[i * 3 + k] - (t - mu) / Math.sqrt(v + 1e-5)) < 1e-5)
    );
  });
  const rms = await new RMSNorm(3).forward(x).toArray();
  xs.forEach((row, i) => {
    const ms = row.reduce((a, b) => a + b * b, 0) / 3;
    row.forEach((t, k) => assert.ok(Math.abs(rms[i * 3 + k] - t / Math.sqrt(ms + 1e-6)) < 1e-5));
  });
  const emb = new Embedding(5, 2, { seed: 3 });
  const table = Array.from(await emb.weight.toArray());
  const out = await emb.forward(tensor(new Int32Array([4, 0, 4]), { shape: [3] })).toArray();
  assert.deepEqual(Array.from(out), [
    ...table.slice(8, 10),
    ...table.slice(0, 2),
    ...table.slice(8, 10),
  ]);
});

Deno.test("Dropout zeroes about p of the values in training and is the identity in eval", async () => {
  manualSeed(3);
  const d = new Dropout(0.25);
  using x = tensor(new Float32Array(20000).fill(1));
  const y = await d.forward(x).toArray();
  const zerosFrac = y.filter((v) => v === 0).length / y.length;
  assert.ok(Math.abs(zerosFrac - 0.25) < 0.02, `${zerosFrac}`);
  assert.ok(y.every((v) => v === 0 || Math.abs(v - 1 / 0.75) < 1e-6));
  d.eval();
  assert.equal(d.forward(x), x);
});

Deno.test("crossEntropy matches the host formula and its gradient is softmax - onehot", async () => {
  const r = rng(2);
  const logitsV = Array.from({ length: 12 }, () => r() * 4 - 2);
  const targets = [2, 0, 3];
  const logits = tensor(logitsV, { shape: [3, 4], requiresGrad: true });
  const loss = crossEntropy(logits, tensor(new Int32Array(targets)));
  let ref = 0;
  const grad: number[] = [];
  for (let i = 0; i < 3; i++) {
    const row = logitsV.slice(i * 4, i * 4 + 4);
    const m = Math.max(...row);
    const lse = m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
    ref += lse - row[targets[i]];
    row.forEach((v, k) => grad.push((Math.exp(v - lse) - (k === targets[i] ? 1 : 0)) / 3));
  }
  assert.ok(Math.abs((await loss.item()) - ref / 3) < 1e-5);
  loss.backward();
  const g = await logits.grad!.toArray();
  grad.forEach((v, i) => assert.ok(Math.abs(g[i] - v) < 1e-6));
  assert.throws(() => crossEntropy(logits, tensor([1, 2, 3])), /integer/);
});

Deno.test("GPT parameter gradients agree with central finite differences on sampled coordinates", async () => {
  const model = new GPT({ vocabSize: 11, blockSize: 6, nLayer: 2, nHead: 2, nEmbd: 8, seed: 7 });
  const idx = tensor(new Int32Array([1, 4, 2, 9, 3, 0, 5, 7, 7, 1, 2, 10]), { shape: [2, 6] });
  const tgt = tensor(new Int32Array([4, 2, 9, 3, 0, 5, 7, 7, 1, 2, 10, 3]), { shape: [2, 6] });
  tidy(() => model.forward(idx, tgt).loss!.backward());
  const lossAt = () => noGrad(() => tidy(() => model.forward(idx, tgt).loss!));
  const r = rng(9);
  const named = model.namedParameters();
  let checked = 0;
  for (const [name, p] of named) {
    const g = await p.grad!.toArray();
    const vals = Float32Array.from(await p.toArray());
    for (let s = 0; s < 2; s++) {
      const k = Math.floor(r() * p.size);
      const eps = 1e-2;
      const orig = vals[k];
      vals[k] = orig + eps;
      p.copy_(tensor(vals, { shape: p.shape }));
      const lp = lossAt();
      vals[k] = orig - eps;
      p.copy_(tensor(vals, { shape: p.shape }));
      const lm = lossAt();
      vals[k] = orig;
      p.copy_(tensor(vals, { shape: p.shape }));
      const fd = ((await lp.item()) - (await lm.item())) / (2 * eps);
      lp.dispose();
      lm.dispose();
      const tol = 2e-3 + 0.05 * Math.abs(fd);
      assert.ok(
        Math.abs(g[k] - fd) <= tol,
        `${name}[${k}]: autograd ${g[k]}, finite difference ${fd}`,
      );
      checked++;
    }
  }
  assert.equal(checked, named.length * 2);
});

Deno.test("GPT's fused attention gives the loss and gradients of the unfused ops", async () => {
  const cfg = { vocabSize: 11, blockSize: 9, nLayer: 2, nHead: 2, nEmbd: 8, seed: 5 };
  const ids = tensor(Int32Array.from({ length: 2 * 9 }, (_, i) => (i * 5) % 11), {
    shape: [2, 9],
  });
  const tgt = tensor(Int32Array.from({ length: 2 * 9 }, (_, i) => (i * 3 + 1) % 11), {
    shape: [2, 9],
  });
  const run = async (fusedAttention: boolean) => {
    const m = new GPT({ ...cfg, fusedAttention });
    const { loss } = m.forward(ids, tgt);
    loss!.backward();
    const grads = await Promise.all(m.parameters().map((p) => p.grad!.toArray()));
    return { loss: (await loss!.toArray())[0] as number, grads };
  };
  const a = await run(true), b = await run(false);
  assert.ok(Math.abs(a.loss - b.loss) < 1e-5, `${a.loss} vs ${b.loss}`);
  a.grads.forEach((g, k) => {
    for (let i = 0; i < g.length; i++) {
      const x = g[i] as number, y = b.grads[k][i] as number;
      assert.ok(Math.abs(x - y) <= 1e-5 + 1e-4 * Math.abs(y), `parameter ${k}[${i}]: ${x} vs ${y}`);
    }
  });
});
