import assert from "node:assert/strict";
import { AdamW, type Tensor, tensor } from "../../mod.ts";
import {
  adamwBf16,
  adamwF64,
  type AdamWRef,
  bf16,
  closeUlps,
  type RefState,
  refState,
  ulp32,
  ulpBf16,
  uniform,
} from "./_reference.ts";

const SIZES = [1, 3, 17, 1000];
const STEPS = 5;

/** Two groups: sizes 1 and 17 in group 0, 3 and 1000 in group 1. */
const GROUPS: { idx: number[]; opts: AdamWRef }[] = [
  { idx: [0, 2], opts: { lr: 1e-2, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.1 } },
  { idx: [1, 3], opts: { lr: 3e-3, betas: [0.8, 0.99], eps: 1e-6, weightDecay: 0, amsgrad: true } },
];

/** Which parameter has no gradient at which step (skipped, as PyTorch). */
const SKIP: Record<number, number> = { 2: 2 }; // at step 2, parameter 2 (17 elements)

function grads(step: number, dt: string): (Float32Array | null)[] {
  return SIZES.map((n, i) => {
    if (SKIP[step] === i) return null;
    const g = uniform(n, 1000 * step + i, -2, 2);
    return dt === "bf16" ? bf16(g) : g;
  });
}

async function run(dt: "f32" | "bf16") {
  const init = SIZES.map((n, i) => {
    const x = uniform(n, 7 + i, -1.5, 1.5);
    return dt === "bf16" ? bf16(x) : x;
  });
  const params = init.map((x) => tensor(x, { dtype: dt, requiresGrad: true }));
  const opt = new AdamW(
    GROUPS.map((g) => ({ params: g.idx.map((i) => params[i]), ...g.opts })),
    { precision: dt === "bf16" ? "bf16" : "fp32" },
  );
  const refs: RefState[] = init.map((x) => refState(x));
  const optsOf = (i: number) => GROUPS.find((g) => g.idx.includes(i))!.opts;
  for (let t = 0; t < STEPS; t++) {
    const gs = grads(t, dt);
    params.forEach((p, i) => {
      p.grad?.dispose();
      p.grad = gs[i] === null ? null : tensor(gs[i]!, { dtype: dt });
    });
    opt.step();
    gs.forEach((g, i) => {
      if (g !== null) (dt === "bf16" ? adamwBf16 : adamwF64)(refs[i], g, optsOf(i));
    });
  }
  const sd = opt.stateDict();
  const got = await Promise.all(params.map((p) => p.toArray()));
  // stateDict() numbers parameters over the groups in order: 0, 2 | 1, 3
  const order = GROUPS.flatMap((g) => g.idx);
  const states = await Promise.all(order.map(async (i, k) => {
    const s = sd.state[k];
    return {
      i,
      step: s.step,
      m: await (s.expAvg as Tensor).toArray(),
      v: await (s.expAvgSq as Tensor).toArray(),
    };
  }));
  return { got, refs, states };
}

Deno.test("AdamW matches PyTorch's AdamW in f64 within a few f32 ulps (two groups, odd sizes, a skipped step)", async () => {
  const { got, refs, states } = await run("f32");
  got.forEach((g, i) => closeUlps(`param ${i}`, g, refs[i].p, 8, ulp32, refs[i].scaleP));
  for (const s of states) {
    const r = refs[s.i];
    assert.equal(s.step, r.step, `step count of parameter ${s.i}`);
    closeUlps(`m ${s.i}`, s.m, r.m, 8, ulp32, r.scaleM);
    closeUlps(`v ${s.i}`, s.v, r.v, 8, ulp32, r.scaleV);
  }
  assert.equal(refs[2].step, STEPS - 1, "the skipped parameter's step count lags by one");
});

Deno.test("AdamW in pure bf16 matches the f32-then-round-once emulation within one bf16 ulp", async () => {
  const { got, refs, states } = await run("bf16");
  let exact = 0, total = 0;
  got.forEach((g, i) => {
    closeUlps(`param ${i}`, g, refs[i].p, 1, ulpBf16);
    for (let k = 0; k < g.length; k++) exact += g[k] === refs[i].p[k] ? 1 : 0;
    total += g.length;
  });
  for (const s of states) {
    closeUlps(`m ${s.i}`, s.m, refs[s.i].m, 1, ulpBf16);
    closeUlps(`v ${s.i}`, s.v, refs[s.i].v, 1, ulpBf16);
  }
  assert.ok(exact / total > 0.99, `bit-identical for ${exact} of ${total} parameters`);
});

Deno.test("AdamW's defaults are PyTorch's", () => {
  const opt = new AdamW([tensor([1])]);
  const g = opt.paramGroups[0];
  assert.deepEqual(
    [g.lr, g.betas, g.eps, g.weightDecay, g.amsgrad, g.maximize],
    [1e-3, [0.9, 0.999], 1e-8, 1e-2, false, false],
  );
  assert.equal(opt.precision.name, "fp32");
  assert.equal(new AdamW([tensor([1], { dtype: "bf16" })]).precision.name, "bf16");
});

Deno.test("AdamW decays weights before the update (decoupled) and maximize ascends", async () => {
  // With a zero gradient only the decay acts: p * (1 - lr * wd).
  const w = tensor([2, -4], { requiresGrad: true });
  const opt = new AdamW([w], { lr: 0.1, weightDecay: 0.5 });
  w.grad = tensor([0, 0]);
  opt.step();
  assert.deepEqual(Array.from(await w.toArray()), [Math.fround(2 * 0.95), Math.fround(-4 * 0.95)]);
  const x = tensor([1], { requiresGrad: true });
  const up = new AdamW([x], { lr: 0.1, weightDecay: 0, maximize: true });
  x.grad = tensor([3]);
  up.step();
  assert.ok(Math.abs((await x.item()) - 1.1) < 1e-6, "moves along the gradient");
});
