// FP8 training (tensor/amp/fp8.ts, and its hook in matmul): per-tensor delayed and current
// scaling, MX block scaling of GEMM operands, the backward in e5m2, state dicts, per-module
// overrides, and a short training run against amp-bf16. References: _fp8_reference.ts.
import assert from "node:assert/strict";
import {
  AdamW,
  applyPrecision,
  autocast,
  FP8Recipe,
  type FP8StateDict,
  GPT,
  Linear,
  matmul,
  Module,
  precisionStrategy,
  ShapeError,
  type Tensor,
  tensor,
  tidy,
  ValueError,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { markovBatches, rng, TINY_GPT } from "./_reference.ts";
import {
  assertClose,
  delayedScales,
  fp8Values,
  matmulRef,
  mxReference,
  quant,
  scaleFromAmax,
  transpose,
} from "./_fp8_reference.ts";

const uniform = (n: number, seed: number, scale: number) => {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => (2 * r() - 1) * scale);
};
const amaxOf = (x: ArrayLike<number>) => Math.max(...Array.from(x, Math.abs));
const f64 = async (t: Tensor) => Float64Array.from(await t.toArray());

Deno.test("delayed scaling follows a host implementation over a scripted amax history: margin, bad amaxes, the window", async () => {
  const len = 3, margin = 1;
  const recipe = new FP8Recipe({ amaxHistoryLen: len, margin });
  // amax per step: zero (keep), NaN and Inf (kept for a whole window), powers of two (exact)
  // and others (f32 division), a subnormal one (the scale overflows: f32's max)
  const amaxes = [
    2,
    0,
    8,
    NaN,
    0.5,
    0.25,
    0.25,
    0.25,
    Infinity,
    3,
    3,
    3,
    7,
    1e-39,
    1e-39,
    1e-39,
    5,
  ];
  const inputs = amaxes.map((a) =>
    Number.isNaN(a) ? [NaN, 1, -2] : a === Infinity ? [1, -Infinity, 0] : [a / 2, -a, a / 3]
  );
  const used: Tensor[] = [], data: Tensor[] = [];
  for (const x of inputs) {
    const q = recipe.quantize(tensor(x), { key: "x" });
    used.push(q.scale);
    data.push(q.data);
    recipe.update();
  }
  const want = delayedScales(amaxes, len, margin);
  const got = await Promise.all(used.map((t) => t.item()));
  // the scale used at step t is the one computed at the update after step t - 1
  const expected = [1, ...want.slice(0, -1)];
  got.forEach((s, t) => {
    assert.ok(
      s === expected[t] || Math.abs(s - expected[t]) <= expected[t] * 2 ** -23,
      `step ${t} (amax ${amaxes[t]}): scale ${s}, want ${expected[t]}`,
    );
  });
  // NaN stays in the window for len updates (the old scale is kept), then the window's max
  // returns; the window forgets an amax after len updates; a subnormal amax overflows
  assert.equal(expected[4], expected[3], "NaN amax: the old scale is kept");
  assert.equal(expected[6], expected[3], "NaN still in the window");
  assert.equal(expected[7], 448 / 0.5 / 2, "NaN left the window: (448 / 0.5) / 2^1");
  assert.equal(expected[8], 448 / 0.25 / 2, "0.5 left the window");
  assert.equal(expected[16], 3.4028234663852886e38, "a subnormal amax: f32's max");
  // the codes are cast_sat(x * scale) with the scale used
  for (let t = 0; t < inputs.length; t++) {
    const want = fp8Values("e4m3", inputs[t], got[t]);
    const have = await data[t].toArray();
    want.forEach((v, i) =>
      assert.ok(Object.is(have[i], v) || (Number.isNaN(v) && Number.isNaN(have[i])), `${t}:${i}`)
    );
  }
  // the saved history: the last len amaxes, newest at position - 1
  const sd = recipe.stateDict();
  assert.deepEqual(sd.slots, ["x"]);
  assert.deepEqual(sd.formats, ["e4m3"]);
  assert.equal(sd.position, amaxes.length % len);
  const hist = await sd.amaxHistory.toArray();
  for (let k = 0; k < len; k++) {
    const a = amaxes[amaxes.length - 1 - k];
    assert.equal(hist[(sd.position - 1 - k + 2 * len) % len], Math.fround(a), `${k} updates old`);
  }
  assert.deepEqual(Array.from(await sd.amax.toArray()), [0], "committed: nothing pending");
  recipe.dispose();
});

Deno.test("current scaling uses each tensor's own amax: 1 for zero, Inf or NaN, f32's max on overflow", async () => {
  const recipe = new FP8Recipe({ scaling: "current", margin: 2 });
  const cases = [[3, -1.5, 0.01], [0, 0], [NaN, 1], [Infinity, 2], [1e-37, -5e-38], [1000, 0.1]];
  for (const x of cases) {
    for (const backward of [false, true]) {
      const fmax = backward ? 57344 : 448;
      const q = recipe.quantize(tensor(x), { key: "x", backward });
      const s = await q.scale.item();
      const amax = x.some(Number.isNaN) ? NaN : amaxOf(x);
      const want = scaleFromAmax(fmax, amax, 2) ?? 1;
      assert.ok(Math.abs(s - want) <= want * 2 ** -23, `${x}: scale ${s}, want ${want}`);
      assert.equal(q.data.dtype, backward ? "e5m2" : "e4m3");
      const codes = await q.data.toArray();
      fp8Values(q.data.dtype, x, s).forEach((v, i) =>
        assert.ok(Object.is(codes[i], v) || (Number.isNaN(v) && Number.isNaN(codes[i])), `${x}`)
      );
    }
  }
  // any input dtype: f16 (native on Vulkan, packed on GL) and bf16 hold these values exactly
  for (const dt of ["f16", "bf16"]) {
    const q = recipe.quantize(tensor([3.5, -1.5, 0.25], { dtype: dt }), { key: "x" });
    assert.equal(await q.scale.item(), 448 / 3.5 / 4); // margin 2
    assert.deepEqual(Array.from(await q.data.toArray()), [112, -48, 8]);
  }
  assert.deepEqual(recipe.slots, [], "current scaling keeps no slots");
  assert.throws(
    () => new FP8Recipe({ scaling: "mx" }).quantize(tensor([1]), { key: "x" }),
    /mxQuantize/,
  );
  assert.throws(() => new FP8Recipe({ amaxHistoryLen: 0 }), ValueError);
  assert.throws(() => new FP8Recipe({ format: "e5m2" as "e4m3" }), ValueError);
});

/**
 * Two steps of a bias-free Linear under fp8 with loss sum(y * g): returns the second step's
 * output and gradients, and the recipe's scales then (a: input, b: weight, grad).
 */
async function fp8LinearStep(M: number, K: number, N: number) {
  const xv = uniform(M * K, 1, 3), gv = uniform(M * N, 2, 0.01);
  const fc = new Linear(K, N, { seed: 4, bias: false });
  const x = tensor(xv, { shape: [M, K], requiresGrad: true });
  const g = tensor(gv, { shape: [M, N] });
  const recipe = new FP8Recipe({ amaxHistoryLen: 8 });
  let y!: Tensor;
  for (let step = 0; step < 2; step++) {
    fc.zeroGrad();
    x.zeroGrad();
    y = tidy(() => {
      using _ = autocast({ dtype: "fp8", recipe }); // step 2: commits step 1's amaxes
      const out = fc.forward(x);
      out.mul(g).sum().backward();
      return out;
    });
  }
  const sd = recipe.stateDict();
  const scales = Array.from(await sd.scale.toArray());
  return {
    xv,
    gv,
    wv: await fc.weight.toArray(),
    y: await f64(y),
    dy: y.dtype,
    dx: await f64(x.grad!),
    dw: await f64(fc.weight.grad!),
    slots: sd.slots,
    formats: sd.formats,
    scales,
  };
}

Deno.test("an FP8 linear layer matches a host reference that quantises x, W to e4m3 and dY to e5m2 with the same scales", async () => {
  const M = 6, K = 40, N = 12;
  const r = await fp8LinearStep(M, K, N);
  assert.deepEqual(r.slots.map((s) => s.split(":")[1]), ["a", "b", "grad"]);
  assert.deepEqual(r.formats, ["e4m3", "e4m3", "e5m2"]);
  // each of x and W is quantised once, from its f32 values, with its slot's scale (as
  // Transformer Engine does; no bf16 copy in between)
  const xb = r.xv, wb = Float64Array.from(r.wv);
  const [sa, sb, sg] = r.scales;
  const close = (s: number, want: number) => Math.abs(s - want) <= want * 2 ** -23;
  assert.ok(close(sa, 448 / amaxOf(xb)), `input scale ${sa}`);
  assert.ok(close(sb, 448 / amaxOf(wb)), `weight scale ${sb}`);
  assert.ok(close(sg, 57344 / amaxOf(r.gv)), `gradient scale ${sg}`);
  const qx = fp8Values("e4m3", xb, sa), qw = fp8Values("e4m3", wb, sb);
  const qg = fp8Values("e5m2", r.gv, sg);
  // y = (qx @ qw^T) / (sa sb), rounded once to bf16
  assert.equal(r.dy, "bf16");
  assertClose("bf16", r.y, matmulRef(qx, transpose(qw, N, K), M, K, N, 1 / (sa * sb)), {
    what: "y",
  });
  // dX = (qg @ qw) / (sg sb) and dW = (qg^T @ qx) / (sg sa), in the dtype of x and W (f32)
  const dx = matmulRef(qg, qw, M, N, K, 1 / (sg * sb));
  const dw = matmulRef(transpose(qg, M, N), qx, N, M, K, 1 / (sg * sa));
  // (f32 sums of 6 to 40 products in another order: a few ulps)
  assertClose("f32", r.dx, dx, { what: "dX", ulps: 8 });
  assertClose("f32", r.dw, dw, { what: "dW", ulps: 8 });
  // the e5m2 rounding of dY matters: an unquantised dY gives other gradients
  const plain = matmulRef(r.gv, qw, M, N, K, 1 / sb);
  assert.ok(r.dx.some((v, i) => Math.abs(v - plain[i]) > 1e-3 * Math.abs(v)));
});

Deno.test("a batched GEMM with a transposed operand (attention's q k^T) under fp8 matches the host reference, keyed by position", async () => {
  const B = 2, T = 5, hs = 8;
  const qv = uniform(B * T * hs, 5, 2), kv = uniform(B * T * hs, 6, 1);
  const q0 = tensor(qv, { shape: [B, T, hs], requiresGrad: true });
  const k0 = tensor(kv, { shape: [B, T, hs], requiresGrad: true });
  const recipe = new FP8Recipe({ format: "e4m3" });
  const { att, dq } = tidy(() => {
    using _ = autocast({ dtype: "fp8", recipe });
    // non-leaf operands (as in attention): keyed by position, "+1"
    const att = matmul(q0.mul(1), k0.mul(1), { transB: true }); // (B, T, T)
    att.sum().backward();
    return { att, dq: q0.grad! };
  });
  assert.deepEqual(recipe.slots, ["+1:a", "+1:b", "+1:grad"]);
  // first step: scales 1; format "e4m3": the gradient in e4m3 too
  const qq = quant("e4m3", qv, true), kq = quant("e4m3", kv, true); // from f32, once
  const attWant = new Float64Array(B * T * T), dqWant = new Float64Array(B * T * hs);
  for (let b = 0; b < B; b++) {
    const Q = qq.slice(b * T * hs, (b + 1) * T * hs),
      Kt = transpose(kq.slice(b * T * hs, (b + 1) * T * hs), T, hs);
    attWant.set(matmulRef(Q, Kt, T, hs, T), b * T * T);
    // d(sum att)/dq = ones(T, T) @ k
    dqWant.set(
      matmulRef(new Float64Array(T * T).fill(1), kq.slice(b * T * hs, (b + 1) * T * hs), T, T, hs),
      b * T * hs,
    );
  }
  assertClose("bf16", await att.toArray(), attWant, { what: "att" });
  assertClose("f32", await dq.toArray(), dqWant, { what: "dq", ulps: 8 });
});

Deno.test("an MX recipe quantises each GEMM operand along its reduction dimension, forward and backward", async () => {
  const M = 40, K = 36, N = 33; // partial blocks along every axis
  const av = uniform(M * K, 7, 2), bv = uniform(K * N, 8, 0.5), gv = uniform(M * N, 9, 1e-3);
  const a = tensor(av, { shape: [M, K], requiresGrad: true });
  const b = tensor(bv, { shape: [K, N], requiresGrad: true });
  const g = tensor(gv, { shape: [M, N] });
  const recipe = new FP8Recipe({ scaling: "mx", mxFormat: "e2m3" });
  const y = tidy(() => {
    using _ = autocast({ dtype: "fp8", recipe });
    const y = matmul(a, b);
    y.mul(g).sum().backward();
    return y;
  });
  const ab = av, bb = bv; // quantised from f32, once
  // forward: a along K (its rows), b along K (its columns), in e2m3
  const qa = mxReference("e2m3", ab, K);
  const qb = transpose(mxReference("e2m3", transpose(bb, K, N), K), N, K);
  assertClose("bf16", await y.toArray(), matmulRef(qa, qb, M, K, N), { what: "y" });
  // dA = g @ b^T reduces over N: g along its rows in e5m2 (hybrid), b along its rows
  const gA = mxReference("e5m2", gv, N), bA = mxReference("e2m3", bb, N);
  assertClose("f32", await a.grad!.toArray(), matmulRef(gA, transpose(bA, K, N), M, N, K), {
    what: "dA",
    ulps: 8,
  });
  // dB = a^T @ g reduces over M: both along their columns
  const aB = transpose(mxReference("e2m3", transpose(ab, M, K), M), K, M);
  const gB = transpose(mxReference("e5m2", transpose(gv, M, N), M), N, M);
  assertClose("f32", await b.grad!.toArray(), matmulRef(transpose(aB, M, K), gB, K, M, N), {
    what: "dB",
    ulps: 8,
  });
  assert.deepEqual(recipe.slots, [], "MX keeps no per-tensor state");
});

Deno.test("an FP8 recipe's state dict round-trips: a restored recipe continues exactly as the original", async () => {
  const fc = new Linear(16, 8, { seed: 3 });
  const x = tensor(uniform(4 * 16, 11, 2), { shape: [4, 16] });
  const step = (recipe: FP8Recipe) =>
    tidy(() => {
      using _ = autocast({ dtype: "fp8", recipe });
      const y = fc.forward(x);
      y.mul(y).sum().backward();
      fc.zeroGrad();
      return y;
    });
  const A = new FP8Recipe({ amaxHistoryLen: 5, margin: 1 });
  for (let i = 0; i < 3; i++) step(A).dispose();
  const sd = A.stateDict();
  assert.deepEqual(sd.amaxHistory.shape, [3, 5]);
  const B = new FP8Recipe({ amaxHistoryLen: 5, margin: 1 });
  B.loadStateDict(sd);
  const read = async (
    s: FP8StateDict,
  ) => [
    s.position,
    ...(await Promise.all([s.amaxHistory, s.scale, s.amax].map((t) => t.toArray())))
      .flatMap((v) => Array.from(v)),
  ];
  assert.deepEqual(await read(B.stateDict()), await read(sd), "loaded before any slot exists");
  const yA = await step(A).toArray(), yB = await step(B).toArray();
  assert.deepEqual(Array.from(yB), Array.from(yA), "the same outputs after restoring");
  // each recipe's own context committed its own amaxes: both hold the same state
  assert.deepEqual(await read(B.stateDict()), await read(A.stateDict()));
  assert.equal(B.slots.length, 3);
  // mismatches are refused before anything changes
  assert.throws(() => new FP8Recipe({ amaxHistoryLen: 4 }).loadStateDict(sd), /amaxHistoryLen 5/);
  assert.throws(() => B.loadStateDict({ ...sd, scale: tensor([1, 2]) }), ShapeError);
  for (const t of [sd.amaxHistory, sd.scale, sd.amax]) t.dispose();
});

Deno.test("setAutocast keeps a module in its own precision inside an fp8 context; GPT's tied LM head is a module", async () => {
  class Two extends Module {
    fc1 = new Linear(8, 8, { seed: 1 });
    fc2 = new Linear(8, 4, { seed: 2 });
    forward(x: Tensor): Tensor {
      return this.fc2.forward(this.fc1.forward(x).relu());
    }
  }
  const m = new Two();
  const x = tensor(uniform(3 * 8, 12, 1), { shape: [3, 8] });
  m.fc2.setAutocast({ enabled: false });
  const recipe = new FP8Recipe();
  const y = autocast({ dtype: "fp8", recipe }, () => m.forward(x));
  assert.equal(y.dtype, "f32", "fc2 ran in f32");
  assert.deepEqual(recipe.slots, [`p${m.fc1.weight.id}:a`, `p${m.fc1.weight.id}:b`]);
  // the same as fc1 alone under fp8 (a fresh recipe: scales 1) and fc2 outside autocast
  const h = autocast({ dtype: "fp8", recipe: new FP8Recipe() }, () => m.fc1.forward(x).relu());
  assert.deepEqual(Array.from(await y.toArray()), Array.from(await m.fc2.forward(h).toArray()));
  m.fc2.setAutocast(null);
  assert.equal(autocast({ dtype: "fp8", recipe }, () => m.forward(x)).dtype, "bf16");
  assert.throws(() => m.fc1.setAutocast({ dtype: "i32" }), /float format/);
  // a GPT: 6 GEMMs per block and the LM head, 3 slots each; overrides take theirs away
  const gpt = new GPT({ vocabSize: 16, blockSize: 8, nLayer: 2, nHead: 2, nEmbd: 16, seed: 1 });
  const idx = tensor(new Int32Array([1, 2, 3, 4, 5, 6]), { shape: [1, 6] });
  const train = (r: FP8Recipe) =>
    tidy(() => {
      using _ = autocast({ dtype: "fp8", recipe: r });
      gpt.forward(idx, idx).loss!.backward();
      gpt.zeroGrad();
    });
  const all = new FP8Recipe();
  train(all);
  train(all);
  assert.equal(all.slots.length, 3 * (6 * 2 + 1), "slots stay the same from step to step");
  assert.ok(all.slots.includes(`p${gpt.wte.weight.id}:b`), "the LM head's slot");
  const cAttn = `p${gpt.h[0].attn.c_attn.weight.id}`;
  assert.ok(all.slots.includes(`${cAttn}+1:a`) && all.slots.includes(`${cAttn}+2:grad`));
  gpt.lm_head.setAutocast({ dtype: "bf16" });
  gpt.h[0].setAutocast({ dtype: "bf16" });
  const some = new FP8Recipe();
  train(some);
  assert.equal(some.slots.length, 3 * 6, "only the second block in fp8");
  assert.ok(!some.slots.some((s) => s.startsWith(`p${gpt.wte.weight.id}:`) || s.startsWith(cAttn)));
  assert.ok(!Object.keys(gpt.stateDict()).some((k) => k.startsWith("lm_head")), "no new keys");
});

Deno.test("a tiny GPT trained with the fp8 strategy reaches amp-bf16's loss within a few percent, reading nothing back", async () => {
  const cfg = TINY_GPT;
  const steps = 30;
  // a new batch per step from a Markov chain (the loss approaches its entropy, about 1.2 nats)
  const batches = markovBatches(steps);
  const rt = await getRuntime();
  const train = async (name: string) => {
    const s = precisionStrategy(name);
    const model = applyPrecision(new GPT(cfg), name);
    const opt = new AdamW(model.parameters(), { lr: 1e-2, weightDecay: 0, precision: name });
    const recipe = new FP8Recipe();
    const losses: Tensor[] = [];
    const r0 = rt.counters.readbacks;
    for (let step = 0; step < steps; step++) {
      const [xs, ys] = batches[step];
      losses.push(tidy(() => {
        const x = tensor(xs, { shape: [8, 16] }), y = tensor(ys, { shape: [8, 16] });
        const opts = s.autocastOptions?.dtype === "fp8"
          ? { dtype: "fp8", recipe }
          : s.autocastOptions!;
        using _ = autocast(opts);
        const loss = model.forward(x, y).loss!;
        loss.backward();
        opt.step();
        opt.zeroGrad();
        return loss.detach();
      }));
    }
    const readbacks = rt.counters.readbacks - r0;
    const vals = await Promise.all(losses.map((l) => l.item()));
    opt.dispose();
    return {
      last: vals.slice(-10).reduce((p, q) => p + q, 0) / 10,
      first: vals[0],
      readbacks,
      slots: recipe.slots.length,
    };
  };
  const bf16 = await train("amp-bf16");
  const fp8 = await train("fp8");
  console.log(
    `mean loss of steps 21-30: amp-bf16 ${bf16.last.toFixed(4)}, fp8 ${fp8.last.toFixed(4)} (from ${
      fp8.first.toFixed(3)
    })`,
  );
  assert.equal(fp8.readbacks, 0, "an fp8 step reads nothing back");
  assert.ok(fp8.slots > 0);
  assert.ok(fp8.last < 0.6 * fp8.first, "fp8 learns");
  assert.ok(
    Math.abs(fp8.last - bf16.last) <= 0.05 * bf16.last,
    `fp8 ${fp8.last} vs amp-bf16 ${bf16.last}`,
  );
});
