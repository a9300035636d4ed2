import assert from "node:assert/strict";
import {
  AdamW,
  cosineWithWarmup,
  CosineWithWarmupLR,
  LambdaLR,
  SGD,
  tensor,
  ValueError,
} from "../../mod.ts";

const close = (a: number, b: number) => Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b));

Deno.test("cosineWithWarmup() warms up linearly from baseLr / warmupSteps, then decays by a cosine to minLr", () => {
  const f = cosineWithWarmup({ warmupSteps: 4, totalSteps: 14, minLr: 0.1 });
  assert.deepEqual([0, 1, 2, 3].map(f), [0.25, 0.5, 0.75, 1]);
  assert.equal(f(4), 1);
  for (let s = 4; s <= 14; s++) {
    const q = (s - 4) / 10;
    assert.ok(close(f(s), 0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * q))), `step ${s}`);
  }
  assert.ok(close(f(9), 0.55));
  assert.equal(f(14), 0.1);
  assert.equal(f(1000), 0.1);
  const g = cosineWithWarmup({ warmupSteps: 0, totalSteps: 10, baseLr: 3e-4 });
  assert.equal(g(0), 3e-4);
  assert.ok(close(g(5), 1.5e-4));
});

Deno.test("LambdaLR sets each group's lr to its base times the lambda, from construction on", () => {
  const opt = new SGD([{ params: [tensor([1])], lr: 1 }, { params: [tensor([2])], lr: 0.1 }]);
  const s = new LambdaLR(opt, [(t) => 0.5 ** t, (t) => t + 1]);
  assert.deepEqual(s.getLastLr(), [1, 0.1]);
  s.step();
  s.step();
  assert.deepEqual(s.getLastLr(), [0.25, 0.30000000000000004]);
  assert.equal(opt.paramGroups[0].initialLr, 1);
  assert.deepEqual(s.stateDict(), { lastStep: 2, baseLrs: [1, 0.1] });
  const opt2 = new SGD([{ params: [tensor([1])], lr: 1 }, { params: [tensor([2])], lr: 0.1 }]);
  const s2 = new LambdaLR(opt2, [(t) => 0.5 ** t, (t) => t + 1]);
  s2.loadStateDict(s.stateDict());
  assert.deepEqual(s2.getLastLr(), s.getLastLr());
  assert.throws(() => new LambdaLR(opt, [(t) => t]), /one per group/);
});

Deno.test("CosineWithWarmupLR drives an optimizer's lr over training, down to an absolute minLr", async () => {
  const w = tensor([1], { requiresGrad: true });
  const opt = new AdamW([w], { lr: 1e-2 });
  const sched = new CosineWithWarmupLR(opt, { warmupSteps: 2, totalSteps: 6, minLr: 1e-3 });
  const lrs: number[] = [];
  for (let i = 0; i < 8; i++) {
    lrs.push(opt.paramGroups[0].lr);
    w.grad = tensor([1]);
    opt.step();
    sched.step();
  }
  const f = cosineWithWarmup({ warmupSteps: 2, totalSteps: 6, minLr: 1e-3, baseLr: 1e-2 });
  assert.deepEqual(lrs, [0, 1, 2, 3, 4, 5, 6, 7].map(f));
  assert.equal(lrs[7], 1e-3);
  assert.ok((await w.item()) < 1);
});

Deno.test("schedules validate their options", () => {
  assert.throws(
    () => cosineWithWarmup({ warmupSteps: -1, totalSteps: 10 }),
    /warmupSteps must be an integer >= 0/,
  );
  assert.throws(
    () => cosineWithWarmup({ warmupSteps: 5, totalSteps: 2 }),
    /totalSteps must be an integer >= warmupSteps \(5\)/,
  );
  assert.throws(() => cosineWithWarmup({ warmupSteps: 0, totalSteps: 2, minLr: -1 }), ValueError);
  const opt = new SGD([tensor([1])]);
  assert.throws(
    () => new LambdaLR(opt, () => NaN),
    /the schedule gave lr NaN for group 0 at step 0/,
  );
});
