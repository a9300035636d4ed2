import assert from "node:assert/strict";
import { SGD, type Tensor, tensor, ValueError } from "../../mod.ts";
import {
  bf16,
  closeUlps,
  type RefState,
  refState,
  sgdBf16,
  sgdF64,
  type SGDRef,
  ulp32,
  ulpBf16,
  uniform,
} from "./_reference.ts";

const SIZES = [1, 3, 17, 1000];
const STEPS = 5;

const GROUPS: { idx: number[]; opts: SGDRef }[] = [
  // momentum with dampening and L2 weight decay
  {
    idx: [0, 3],
    opts: { lr: 0.05, momentum: 0.9, dampening: 0.1, weightDecay: 0.01, nesterov: false },
  },
  // Nesterov
  {
    idx: [1, 2],
    opts: { lr: 0.02, momentum: 0.8, dampening: 0, weightDecay: 0.05, nesterov: true },
  },
];

async function run(dt: "f32" | "bf16", groups = GROUPS, skip: Record<number, number> = { 1: 3 }) {
  const init = SIZES.map((n, i) => {
    const x = uniform(n, 11 + i, -1, 1);
    return dt === "bf16" ? bf16(x) : x;
  });
  const params = init.map((x) => tensor(x, { dtype: dt, requiresGrad: true }));
  const opt = new SGD(groups.map((g) => ({ params: g.idx.map((i) => params[i]), ...g.opts })));
  const refs: RefState[] = init.map((x) => refState(x));
  const optsOf = (i: number) => groups.find((g) => g.idx.includes(i))!.opts;
  for (let t = 0; t < STEPS; t++) {
    params.forEach((p, i) => {
      p.grad?.dispose();
      p.grad = null;
      if (skip[t] === i) return;
      const g = uniform(SIZES[i], 100 * t + i, -1, 1);
      const gv = dt === "bf16" ? bf16(g) : g;
      p.grad = tensor(gv, { dtype: dt });
      (dt === "bf16" ? sgdBf16 : sgdF64)(refs[i], gv, optsOf(i));
    });
    opt.step();
  }
  const got = await Promise.all(params.map((p) => p.toArray()));
  const sd = opt.stateDict();
  const order = groups.flatMap((g) => g.idx);
  const bufs = await Promise.all(
    order.map((_, k) => {
      const b = sd.state[k].momentumBuffer;
      return b === null ? null : (b as Tensor).toArray();
    }),
  );
  return { got, refs, bufs, order, sd };
}

Deno.test("SGD with momentum, dampening, Nesterov and weight decay matches PyTorch's SGD in f64", async () => {
  const { got, refs, bufs, order } = await run("f32");
  got.forEach((g, i) => closeUlps(`param ${i}`, g, refs[i].p, 8, ulp32, refs[i].scaleP));
  order.forEach((i, k) => closeUlps(`buffer ${i}`, bufs[k]!, refs[i].m, 8, ulp32, refs[i].scaleM));
});

Deno.test("SGD starts the momentum buffer as the first gradient (PyTorch's rule)", async () => {
  const w = tensor([0, 0], { requiresGrad: true });
  const opt = new SGD([w], { lr: 1, momentum: 0.5, dampening: 0.5 });
  w.grad = tensor([2, -4]);
  opt.step(); // buffer = g (no dampening on the first step)
  const b = opt.stateDict().state[0].momentumBuffer as Tensor;
  assert.deepEqual(Array.from(await b.toArray()), [2, -4]);
  assert.deepEqual(Array.from(await w.toArray()), [-2, 4]);
  opt.step(); // buffer = 0.5 * g + 0.5 * g = g
  assert.deepEqual(Array.from(await w.toArray()), [-4, 8]);
});

Deno.test("SGD without momentum keeps no buffer and maximize ascends", async () => {
  const w = tensor([1, 2], { requiresGrad: true });
  const opt = new SGD([w], { lr: 0.5, maximize: true });
  w.grad = tensor([1, -1]);
  opt.step();
  assert.deepEqual(Array.from(await w.toArray()), [1.5, 1.5]);
  const sd = opt.stateDict();
  assert.deepEqual(sd.state[0], { momentumBuffer: null });
  assert.deepEqual(
    { ...sd.paramGroups[0] },
    {
      lr: 0.5,
      momentum: 0,
      dampening: 0,
      weightDecay: 0,
      nesterov: false,
      maximize: true,
      params: [0],
    },
  );
});

Deno.test("SGD in pure bf16 matches the f32-then-round-once emulation within one bf16 ulp", async () => {
  const { got, refs, bufs, order } = await run("bf16");
  got.forEach((g, i) => closeUlps(`param ${i}`, g, refs[i].p, 1, ulpBf16));
  order.forEach((i, k) => closeUlps(`buffer ${i}`, bufs[k]!, refs[i].m, 1, ulpBf16));
});

Deno.test("SGD rejects Nesterov without momentum or with dampening, and bad values", () => {
  const w = tensor([1]);
  assert.throws(() => new SGD([w], { nesterov: true }), /nesterov momentum requires momentum > 0/);
  assert.throws(() => new SGD([w], { nesterov: true, momentum: 0.9, dampening: 0.1 }), ValueError);
  assert.throws(() => new SGD([w], { momentum: -0.1 }), /momentum must be a number in \[0, inf\)/);
  assert.throws(() => new SGD([w], { weightDecay: -1 }), /weightDecay/);
  assert.throws(() => new SGD([w], { lr: NaN }), /lr must be a number in \[0, inf\), got NaN/);
});
