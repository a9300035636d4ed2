import assert from "node:assert/strict";
import {
  AdamW,
  DTypeError,
  Linear,
  memory,
  mseLoss,
  type OptimizerStateDict,
  SGD,
  ShapeError,
  type Tensor,
  tensor,
  tidy,
  ValueError,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { bf16, uniform } from "./_reference.ts";

const SIZES = [1, 3, 17, 1000];

function params(sizes: number[], dt = "f32", seed = 1): Tensor[] {
  return sizes.map((n, i) => tensor(uniform(n, seed + i), { dtype: dt, requiresGrad: true }));
}

function setGrads(ps: Tensor[], step: number, dt = "f32"): void {
  ps.forEach((p, i) => {
    p.grad?.dispose();
    p.grad = tensor(uniform(p.size, 50 + 10 * step + i, -1, 1), { dtype: dt });
  });
}

Deno.test("a step records one update dispatch per parameter tensor (in place, whatever the groups), and reads nothing back", async () => {
  const rt = await getRuntime();
  const perStep = (n: number, groups: number) => {
    const ps = params(Array.from({ length: n }, (_, i) => SIZES[i % 4]));
    const per = Math.ceil(n / groups);
    const opt = new AdamW(
      Array.from({ length: groups }, (_, k) => ({ params: ps.slice(k * per, (k + 1) * per) })),
    );
    setGrads(ps, 0);
    opt.step(); // allocates the state (zero fills)
    setGrads(ps, 1);
    const before = { ...rt.counters };
    opt.step();
    const d = rt.counters.dispatches - before.dispatches;
    assert.equal(rt.counters.readbacks, before.readbacks, "a step reads nothing back");
    opt.dispose();
    ps.forEach((p) => (p.zeroGrad(), p.dispose()));
    return d;
  };
  assert.equal(perStep(2, 1), 2);
  assert.equal(perStep(20, 1), 20);
  assert.equal(perStep(20, 2), 20);
  // SGD too
  const ps = params(Array.from({ length: 20 }, (_, i) => SIZES[i % 4]));
  const sgd = new SGD(ps, { momentum: 0.9 });
  setGrads(ps, 0);
  sgd.step();
  const d0 = rt.counters.dispatches, r0 = rt.counters.readbacks;
  sgd.step();
  assert.equal(rt.counters.dispatches - d0, 20);
  assert.equal(rt.counters.readbacks, r0);
  // freed here, not by the garbage collector during a later test that counts memory
  sgd.dispose();
  ps.forEach((p) => (p.zeroGrad(), p.dispose()));
});

Deno.test("optimizer states are GPU tensors counted as 'optimizer' that tidy does not free", async () => {
  const ps = params(SIZES);
  const opt = new AdamW(ps);
  const before = memory().byPurpose.optimizer ?? 0;
  setGrads(ps, 0);
  tidy(() => opt.step());
  // m and v: one f32 tensor each per parameter, 1 + 3 + 17 + 1000 elements
  assert.equal((memory().byPurpose.optimizer ?? 0) - before, 2 * 4 * 1021);
  setGrads(ps, 1);
  tidy(() => opt.step());
  const sd = opt.stateDict();
  assert.equal(sd.state[3].step, 2);
  assert.equal((await (sd.state[3].expAvg as Tensor).toArray()).length, 1000);
  opt.dispose();
  assert.equal((memory().byPurpose.optimizer ?? 0) - before, 2 * 4 * 1021, "only sd's copies");
});

/** Trains `opt` on `ps` for steps [from, to) with seeded gradients. */
function train(opt: AdamW | SGD, ps: Tensor[], from: number, to: number, dt = "f32") {
  for (let t = from; t < to; t++) {
    setGrads(ps, t, dt);
    if (t === 1) ps[1].zeroGrad(); // a skipped parameter: its step count lags
    opt.step();
  }
}

async function roundTrip(
  make: (ps: Tensor[]) => AdamW | SGD,
  dt = "f32",
): Promise<void> {
  const a = params(SIZES, dt);
  const optA = make(a);
  train(optA, a, 0, 3, dt);
  const sd = optA.stateDict();
  const b = await Promise.all(
    a.map(async (p) => tensor(await p.toArray(), { dtype: dt, requiresGrad: true })),
  );
  const optB = make(b);
  optB.loadStateDict(sd);
  train(optA, a, 3, 6, dt);
  train(optB, b, 3, 6, dt);
  for (let i = 0; i < a.length; i++) {
    assert.deepEqual(Array.from(await b[i].codes()), Array.from(await a[i].codes()), `param ${i}`);
  }
}

Deno.test("stateDict() and loadStateDict() continue training exactly as without the interruption", async () => {
  await roundTrip((ps) =>
    new AdamW([
      { params: [ps[0], ps[1]], lr: 0.01 },
      { params: [ps[2], ps[3]], amsgrad: true, betas: [0.8, 0.95] },
    ])
  );
  await roundTrip((ps) => new AdamW(ps, { lr: 0.01 }), "bf16");
  await roundTrip((ps) => new SGD(ps, { lr: 0.1, momentum: 0.9, dampening: 0.2 }));
});

Deno.test("loadStateDict() casts states saved in another precision only when asked to", async () => {
  const a = params([5]);
  const opt = new AdamW(a);
  a[0].grad = tensor([1, 2, 3, 4, 5]);
  opt.step();
  const sd = opt.stateDict();
  const b = [tensor(await a[0].toArray(), { dtype: "bf16" })];
  const optB = new AdamW(b);
  assert.throws(
    () => optB.loadStateDict(sd),
    (e: unknown) =>
      e instanceof DTypeError &&
      /state 0\.expAvg has dtype f32, this optimizer keeps bf16; pass \{ cast: true \}/.test(
        e.message,
      ),
  );
  optB.loadStateDict(sd, { cast: true });
  const m = await (optB.stateDict().state[0].expAvg as Tensor).toArray();
  const mA = await (sd.state[0].expAvg as Tensor).toArray();
  assert.equal(optB.precision.name, "bf16");
  assert.deepEqual(Array.from(m), Array.from(bf16(mA)));
});

Deno.test("stateDict() has PyTorch's shape: state by parameter index, groups with indices", async () => {
  const ps = params([3, 5]);
  const opt = new AdamW([{ params: [ps[0]] }, { params: [ps[1]], lr: 0.5 }]);
  ps[1].grad = tensor([1, 2, 3, 4, 5]);
  opt.step(); // only parameter 1 has a gradient
  const sd = opt.stateDict();
  assert.deepEqual(Object.keys(sd.state), ["1"]);
  assert.deepEqual(Object.keys(sd.state[1]).sort(), ["expAvg", "expAvgSq", "step"]);
  assert.deepEqual((sd.state[1].expAvg as Tensor).shape, [5]);
  assert.deepEqual(sd.paramGroups.map((g) => [g.lr, g.params]), [[1e-3, [0]], [0.5, [1]]]);
  assert.deepEqual(
    Array.from(await (sd.state[1].expAvg as Tensor).toArray()).map((x) => +x.toFixed(5)),
    [0.1, 0.2, 0.3, 0.4, 0.5],
  );
  // loading restores hyperparameters too
  const opt2 = new AdamW([{ params: [ps[0]] }, { params: [ps[1]] }]);
  opt2.loadStateDict(sd);
  assert.equal(opt2.paramGroups[1].lr, 0.5);
});

Deno.test("loadStateDict() rejects mismatched groups, counts, keys and shapes before changing anything", () => {
  const ps = params([3, 5]);
  const opt = new AdamW(ps);
  ps.forEach((p) => (p.grad = tensor(new Float32Array(p.size).fill(1))));
  opt.step();
  const sd = opt.stateDict();
  const other = new AdamW(params([3, 5]));
  assert.throws(
    () => other.loadStateDict({ ...sd, paramGroups: [...sd.paramGroups, sd.paramGroups[0]] }),
    /2 parameter groups, this optimizer 1/,
  );
  assert.throws(
    () => new AdamW(params([3])).loadStateDict(sd),
    /parameter group 0 has 2 parameters in the state dict, 1 in this optimizer/,
  );
  const swapped: OptimizerStateDict = { ...sd, state: { 0: sd.state[1], 1: sd.state[0] } };
  assert.throws(
    () => other.loadStateDict(swapped),
    /state 0.expAvg has shape \[5\], the parameter \[3\]/,
  );
  assert.throws(() => other.loadStateDict(swapped), ShapeError);
  const missing: OptimizerStateDict = {
    ...sd,
    state: { 0: { step: 1, expAvg: sd.state[0].expAvg } },
  };
  assert.throws(() => other.loadStateDict(missing), /state 0 has no tensor 'expAvgSq'/);
  assert.throws(
    () => new SGD(params([3, 5]), { momentum: 0.9 }).loadStateDict(sd),
    /SGD.loadStateDict\(\): parameter group 0 has unknown option 'betas'/,
  );
  assert.throws(
    () => other.loadStateDict({ ...sd, paramGroups: [{ ...sd.paramGroups[0], lr: -1 }] }),
    /lr must be a number in \[0, inf\), got -1/,
  );
  assert.equal(other.paramGroups[0].lr, 1e-3, "nothing changed");
  assert.deepEqual(other.stateDict().state, {});
});

Deno.test("optimizers validate their options and parameters with errors that name them", () => {
  const w = tensor([1, 2]);
  const cases: [() => unknown, RegExp][] = [
    [() => new AdamW([w], { lr: -1 }), /AdamW: lr must be a number in \[0, inf\), got -1/],
    [() => new AdamW([w], { betas: [1, 0.9] }), /betas\[0\] must be a number in \[0, 1\), got 1/],
    [() => new AdamW([w], { betas: [0.9, -0.1] }), /betas\[1\] must be a number in \[0, 1\)/],
    [() => new AdamW([w], { eps: 0 }), /eps must be a number in \(0, inf\), got 0/],
    [() => new AdamW([w], { weightDecay: -0.1 }), /weightDecay must be a number in \[0, inf\)/],
    [() => new AdamW([]), /params is empty/],
    [() => new AdamW([w, 3 as unknown as Tensor]), /params\[1\] is not a Tensor \(got number\)/],
    [() => new AdamW([{ params: [w] }, { params: [w] }]), /more than one parameter group/],
    [() => new AdamW([w, w]), /appears twice/],
    [
      () => new AdamW([w], { precision: "fp64" }),
      /unknown precision 'fp64'; supported: 'fp32', 'bf16'/,
    ],
    [() => new AdamW([w], { precision: "bf16" }), /dtype f32, but precision 'bf16' keeps bf16/],
    [() => new AdamW([w, tensor([1], { dtype: "bf16" })]), /cannot infer the precision/],
    [() => new AdamW([{ params: [w], momentum: 0.9 } as never]), /unknown option 'momentum'/],
    [() => new SGD([w], { lr: Infinity }), /lr must be a number in \[0, inf\), got Infinity/],
  ];
  for (const [f, re] of cases) assert.throws(f, re);
  assert.throws(() => new AdamW([w], { precision: "bf16" }), DTypeError);
  assert.throws(() => new AdamW([w], { eps: -1 }), ValueError);
});

Deno.test("a changed lr is validated and used at the next step; zeroGrad frees or zeroes grads", async () => {
  const w = tensor([1], { requiresGrad: true });
  const opt = new SGD([w], { lr: 0.1 });
  w.grad = tensor([1]);
  opt.paramGroups[0].lr = 0.25;
  opt.step();
  assert.equal(await w.item(), 0.75);
  opt.paramGroups[0].lr = -1;
  assert.throws(() => opt.step(), /SGD: parameter group 0: lr must be/);
  opt.paramGroups[0].lr = 0.25;
  opt.zeroGrad(false);
  assert.deepEqual(Array.from(await w.grad!.toArray()), [0]);
  opt.zeroGrad();
  assert.equal(w.grad, null);
  opt.step(); // no gradient: skipped
  assert.equal(await w.item(), 0.75);
});

Deno.test("addParamGroup() adds a group with the defaults and refuses parameters already held", async () => {
  const [a, b] = params([2, 3]);
  const opt = new SGD([a], { lr: 0.5 });
  opt.addParamGroup({ params: [b], momentum: 0.9 });
  assert.equal(opt.paramGroups[1].lr, 0.5);
  assert.equal(opt.paramGroups[1].momentum, 0.9);
  assert.throws(() => opt.addParamGroup({ params: [a] }), /also in parameter group 0/);
  const before = Array.from(await b.toArray());
  b.grad = tensor([1, 1, 1]);
  opt.step();
  assert.deepEqual(Array.from(await b.toArray()), before.map((x) => Math.fround(x - 0.5)));
});

Deno.test("a gradient of another dtype is cast to the strategy's gradient dtype first", async () => {
  const rt = await getRuntime();
  const g = uniform(17, 3, -1, 1);
  const [a, b] = [params([17], "f32", 4)[0], params([17], "f32", 4)[0]];
  const [oa, ob] = [new AdamW([a]), new AdamW([b])];
  a.grad = tensor(g, { dtype: "bf16" });
  b.grad = tensor(bf16(g));
  oa.step();
  ob.step();
  const d = rt.counters.dispatches;
  oa.step();
  assert.equal(rt.counters.dispatches - d, 2, "one cast and the update");
  ob.step();
  assert.deepEqual(Array.from(await a.toArray()), Array.from(await b.toArray()));
});

Deno.test("AdamW trains a Linear layer through autograd (loss goes down, in fp32 and bf16)", async () => {
  for (const dt of ["f32", "bf16"] as const) {
    const layer = new Linear(8, 4, { seed: 1, dtype: dt });
    const opt = new AdamW(layer.parameters(), { lr: 0.05 });
    const x = tensor(uniform(32, 1), { shape: [4, 8], dtype: dt });
    const y = tensor(uniform(16, 2), { shape: [4, 4], dtype: dt });
    const losses: number[] = [];
    for (let i = 0; i < 15; i++) {
      const loss = tidy(() => {
        const l = mseLoss(layer.forward(x), y);
        l.backward();
        opt.step();
        opt.zeroGrad();
        return l;
      });
      losses.push(await loss.item());
      loss.dispose();
    }
    assert.ok(losses[14] < 0.5 * losses[0], `${dt}: ${losses[0]} -> ${losses[14]}`);
  }
});
