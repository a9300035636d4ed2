// The precision strategies by name (DESIGN.md section 4's table): each trains a small GPT
// with exactly the storage of the table, read from memory() by purpose.
import assert from "node:assert/strict";
import {
  AdamW,
  applyPrecision,
  autocast,
  type AutocastOptions,
  FP8_RECIPES,
  fp8Recipe,
  GPT,
  GradScaler,
  matmul,
  memory,
  precisionNames,
  type PrecisionStrategy,
  precisionStrategy,
  type Tensor,
  tensor,
  tidy,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";

const CFG = { vocabSize: 32, blockSize: 8, nLayer: 1, nHead: 2, nEmbd: 16, seed: 3 };

function batch(): [Tensor, Tensor] {
  const ids = Array.from({ length: 16 }, (_, i) => (i * 7 + 3) % CFG.vocabSize);
  const idx = tensor(new Int32Array(ids), { shape: [2, 8] });
  const tgt = tensor(new Int32Array(ids.map((v) => (v + 1) % CFG.vocabSize)), { shape: [2, 8] });
  return [idx, tgt];
}

const purposes = () => memory().byPurpose;

/**
 * One strategy: a fresh GPT put into the strategy's storage, `steps` AdamW steps (under
 * autocast and with a GradScaler where the strategy says so). Returns the bytes by purpose
 * that the model and optimizer hold after the last step (gradients kept), the bytes of the
 * transient casts during a forward, the losses, and the readbacks of the steps.
 */
async function train(name: string, steps: number) {
  const s = precisionStrategy(name);
  const base = purposes();
  const live0 = memory().liveBytes;
  const model = applyPrecision(new GPT(CFG), name);
  const params = model.parameters();
  const opt = new AdamW(params, { lr: 3e-3, weightDecay: 0, precision: name });
  const scaler = new GradScaler({ enabled: s.gradScaler, initScale: 2 ** 8 });
  const [idx, tgt] = batch();
  const rt = await getRuntime();
  const losses: Tensor[] = [];
  let casts = 0, readbacks = 0;
  for (let t = 0; t < steps; t++) {
    opt.zeroGrad();
    const r0 = rt.counters.readbacks;
    tidy(() => {
      using _ = autocast(s.autocastOptions ?? { enabled: false });
      const { loss } = model.forward(idx, tgt);
      casts = Math.max(casts, purposes().casts ?? 0);
      scaler.scale(loss!).backward();
      losses.push(loss!.detach());
      return losses[losses.length - 1];
    });
    scaler.step(opt);
    scaler.update();
    readbacks += rt.counters.readbacks - r0;
  }
  const now = purposes();
  const live = memory().liveBytes - live0;
  const d = (k: string) => (now[k] ?? 0) - (base[k] ?? 0);
  const out = {
    n: params.reduce((a, p) => a + p.size, 0),
    tensors: params.length,
    dtypes: [...new Set(params.map((p) => p.dtype))],
    params: d("params"),
    grads: d("grads"),
    optimizer: d("optimizer"),
    scratch: d("scratch"),
    other: d("other"),
    live,
    casts,
    losses: await Promise.all(losses.map((l) => l.item())),
    readbacks,
  };
  opt.zeroGrad();
  opt.dispose();
  scaler.dispose();
  for (const p of params) p.dispose();
  for (const l of losses) l.dispose();
  return out;
}

Deno.test("precision names the strategies of DESIGN.md's table and fp8-<recipe> for each FP8 recipe; unknown ones list them", () => {
  const recipes = FP8_RECIPES.filter((r) => r !== "delayed").map((r) => `fp8-${r}`);
  assert.deepEqual(precisionNames(), [
    "fp32",
    "bf16",
    "bf16-sr",
    "amp-bf16",
    "amp-f16",
    "fp8",
    "msamp-o2",
    "collage-light",
    "collage-plus",
    ...recipes,
  ]);
  assert.deepEqual(recipes, [
    "fp8-most_recent",
    "fp8-current",
    "fp8-rowwise",
    "fp8-block",
    "fp8-mxfp8",
    "fp8-nvfp4",
  ]);
  const rows = precisionNames().map((n) => {
    const s = precisionStrategy(n);
    return [
      n,
      s.param.name,
      s.grad.name,
      s.stateDtype("expAvgSq").name,
      s.autocast?.name ?? null,
      s.gradScaler,
      s.extraStates.map((e) => e.name),
    ];
  });
  assert.deepEqual(rows, [
    ["fp32", "f32", "f32", "f32", null, false, []],
    ["bf16", "bf16", "bf16", "bf16", null, false, []],
    ["bf16-sr", "bf16", "bf16", "bf16", null, false, []],
    ["amp-bf16", "f32", "f32", "f32", "bf16", false, []],
    ["amp-f16", "f32", "f32", "f32", "f16", true, []],
    ["fp8", "f32", "f32", "f32", "bf16", false, []],
    ["msamp-o2", "f16", "f16", "f16", "bf16", false, []],
    ["collage-light", "bf16", "bf16", "bf16", null, false, ["paramLo"]],
    ["collage-plus", "bf16", "bf16", "bf16", null, false, ["paramLo", "expAvgSqLo"]],
    ...recipes.map((n) => [n, "f32", "f32", "f32", "bf16", false, []]),
  ]);
  assert.throws(
    () => precisionStrategy("fp64"),
    /unknown precision 'fp64'; supported: 'fp32', 'bf16', 'bf16-sr', 'amp-bf16'/,
  );
});

Deno.test("fp8-<recipe> is fp8 with that recipe: its autocastOptions name the recipe, the GEMMs under them are the recipe's, storage as fp8", async () => {
  const fp8 = precisionStrategy("fp8");
  const storage = (s: PrecisionStrategy) => [
    s.param.name,
    s.grad.name,
    ["expAvg", "expAvgSq"].map((n) => s.stateDtype(n).name),
    s.extraStates,
    Object.keys(s.updates),
    s.stochastic,
    s.scaled,
    s.gradScaler,
    s.computeDtype.name,
    s.autocast?.name,
  ];
  const a = tensor(Array.from({ length: 64 }, (_, i) => Math.sin(i) * 3), { shape: [4, 16] });
  const b = tensor(Array.from({ length: 128 }, (_, i) => Math.cos(i * 0.7)), { shape: [16, 8] });
  const under = (opts: AutocastOptions) => tidy(() => autocast(opts, () => matmul(a, b)));
  for (const r of FP8_RECIPES.filter((x) => x !== "delayed")) {
    const s = precisionStrategy(`fp8-${r}`);
    assert.equal(s.name, `fp8-${r}`);
    assert.deepEqual(s.autocastOptions, { dtype: "fp8", recipe: r });
    assert.ok(Object.isFrozen(s.autocastOptions), `fp8-${r}: autocastOptions frozen`);
    assert.deepEqual(storage(s), storage(fp8), `fp8-${r} stores what fp8 stores`);
    assert.match(s.description, new RegExp(`'${r}' recipe`));
    if (r === "most_recent") continue; // delayed scaling: its scale depends on earlier steps
    // the recipe's GEMM: the same values as under a fresh recipe of that name
    const [got, want] = [under(s.autocastOptions!), under({ recipe: fp8Recipe(r) })];
    assert.deepEqual(await got.toArray(), await want.toArray(), `fp8-${r}`);
    got.dispose();
    want.dispose();
  }
  a.dispose();
  b.dispose();
});

Deno.test("bytes per parameter of a GPT read from memory(): fp32 16, bf16 8, bf16-sr 8, msamp-o2 7, collage-light 10, collage-plus 12, amp, fp8 and fp8-<recipe> 16", async () => {
  const want: Record<string, number> = {
    fp32: 16,
    bf16: 8,
    "bf16-sr": 8,
    "amp-bf16": 16,
    "amp-f16": 16,
    fp8: 16,
    "msamp-o2": 7,
    "collage-light": 10,
    "collage-plus": 12,
    // fp8-<recipe>: as fp8, f32 weights, gradients, m and v
    ...Object.fromEntries(
      FP8_RECIPES.filter((r) => r !== "delayed").map((r) => [`fp8-${r}`, 4 * 4]),
    ),
  };
  const report: string[] = [];
  for (const name of precisionNames()) {
    const r = await train(name, 2);
    const s = precisionStrategy(name);
    assert.deepEqual(r.dtypes, [s.param.name], `${name}: parameters stored as ${s.param.name}`);
    // amp-f16 steps through a GradScaler: the optimizer then keeps its step counts on the
    // device, one u32 per parameter tensor
    // (and a strategy with per-tensor scaled states keeps 2 words per such state and tensor)
    const stepCounts = (s.gradScaler ? 4 * r.tensors : 0) + 8 * s.scaled.length * r.tensors;
    const held = r.params + r.grads + r.optimizer - stepCounts;
    assert.equal(held, want[name] * r.n, `${name}: ${held / r.n} bytes per parameter`);
    assert.equal(r.params, s.param.laneBits / 8 * r.n, `${name}: parameters`);
    assert.equal(r.grads, s.grad.laneBits / 8 * r.n, `${name}: gradients`);
    // the step updates in place: no staging copy of the parameters or gradients remains
    assert.equal(r.scratch, 0, `${name}: scratch ${r.scratch}`);
    // everything live after the step (the scaler's and FP8 recipes' small state, "other",
    // aside): bytes/param x params within 2%
    const rel = (r.live - r.other) / (want[name] * r.n) - 1;
    assert.ok(Math.abs(rel) <= 0.02, `${name}: live ${r.live - r.other} vs ${want[name] * r.n}`);
    if (s.autocast) {
      assert.ok(r.casts > 0, `${name}: the weights' casts are counted as casts`);
    } else {
      assert.equal(r.casts, 0, `${name}: no casts`);
    }
    assert.equal(r.readbacks, 0, `${name}: a training step reads nothing back`);
    assert.ok(r.losses.every(Number.isFinite), `${name}: ${r.losses}`);
    report.push(
      `${name}: ${(held / r.n).toFixed(2)} B/param (params ${r.params}, grads ${r.grads}, ` +
        `optimizer ${r.optimizer}${
          stepCounts ? ` incl. ${stepCounts} of step counts and scales` : ""
        }), ` +
        `casts ${r.casts}, scratch ${r.scratch}, other ${r.other}, live ${r.live}, n ${r.n}`,
    );
  }
  console.log(report.join("\n"));
});

Deno.test("every strategy trains the GPT: the loss goes down", async () => {
  for (const name of precisionNames()) {
    const r = await train(name, 6);
    assert.ok(r.losses[5] < r.losses[0] - 0.05, `${name}: ${r.losses.map((l) => l.toFixed(3))}`);
  }
});

Deno.test("applyPrecision() replaces every parameter of a GPT, into bf16 and back to f32", async () => {
  const model = applyPrecision(new GPT(CFG), "bf16");
  assert.equal(model.parameters().length, new GPT(CFG).parameters().length);
  assert.ok(model.parameters().every((p) => p.dtype === "bf16" && p.requiresGrad));
  const [idx, tgt] = batch();
  const { loss } = model.forward(idx, tgt);
  assert.ok(Number.isFinite(await loss!.item()));
  // back to f32 (amp master weights)
  applyPrecision(model, "amp-bf16");
  assert.ok(model.parameters().every((p) => p.dtype === "f32"));
});
