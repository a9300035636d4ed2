// bf16-sr (optim/precision.ts `stochastic`, optim/_update_kernel.ts `ulp_sr`): the weight
// update rounded stochastically from a counter-based stream. Checked against a host
// computation of RECIPES.md's definition bit for bit, unbiased in the mean where RNE bf16
// loses the update entirely, reproducible for a seed, and bit-identical after a resume.
import assert from "node:assert/strict";
import {
  AdamW,
  type OptimizerStateDict,
  precisionStrategy,
  SGD,
  type Tensor,
  tensor,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { randomU32 } from "../../dtypes/mod.ts";
import { bf16, uniform } from "./_reference.ts";

const bitsOf = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0];
const fromBits = (b: number) => new Float32Array(new Uint32Array([b >>> 0]).buffer)[0];

/** RECIPES.md: 16 uniform random bits added below the bf16 mantissa of the f32 value, truncated. */
function srBf16(v: number, r: number): number {
  const b = bitsOf(v);
  if ((b & 0x7f800000) === 0x7f800000) return v;
  return fromBits(((b + (r >>> 16)) & 0xffff0000) >>> 0);
}

async function values(t: Tensor): Promise<number[]> {
  return Array.from(await t.toArray());
}

async function codes(t: Tensor): Promise<number[]> {
  return Array.from(await t.codes());
}

Deno.test("bf16-sr: the strategy row (bf16 storage, the weights rounded stochastically)", () => {
  const s = precisionStrategy("bf16-sr");
  assert.deepEqual(
    [s.param.name, s.grad.name, s.stateDtype("expAvg").name, s.stateDtype("expAvgSq").name],
    ["bf16", "bf16", "bf16", "bf16"],
  );
  assert.deepEqual(s.stochastic, ["param"]);
  assert.deepEqual(s.extraStates, []);
  assert.deepEqual(precisionStrategy("bf16").stochastic, []);
});

Deno.test("bf16-sr: an SGD step equals the host's SR_bf16(w - lr g) with the stream's bits, bit for bit", async () => {
  await getRuntime();
  const n = 1000, lr = 2 ** -6; // lr * g exact in f32: one rounding, fused or not
  const w0 = bf16(uniform(n, 1, -2, 2)), g = bf16(uniform(n, 2, -1, 1));
  const seed = 1234;
  const w = tensor(w0, { dtype: "bf16" });
  const other = tensor([0.5, 0.25], { dtype: "bf16" }); // parameter 0: w is parameter 1
  const opt = new SGD([other, w], { lr, precision: "bf16-sr", seed });
  w.grad = tensor(g, { dtype: "bf16" });
  let host = Array.from(w0);
  const pseed = randomU32(seed, 1);
  for (let c = 0; c < 2; c++) {
    opt.step();
    const key = randomU32(pseed, c);
    host = host.map((x, i) => srBf16(Math.fround(x - lr * g[i]), randomU32(key ^ 0, i)));
    assert.deepEqual(await values(w), host, `step ${c + 1}`);
  }
  // both directions are taken: the rounding is not RNE
  const rne = Array.from(w0).map((x, i) => bf16([Math.fround(x - lr * g[i])])[0]);
  const once = Array.from(w0).map((x, i) =>
    srBf16(Math.fround(x - lr * g[i]), randomU32(randomU32(pseed, 0), i))
  );
  const differ = once.filter((x, i) => x !== rne[i]).length;
  assert.ok(differ > n / 20 && differ < n / 2, `${differ} of ${n} differ from RNE`);
  const sd = opt.stateDict();
  assert.deepEqual([sd.state[1].rngSeed, sd.state[1].rngCounter], [pseed, 2]);
  assert.equal(sd.state[0], undefined, "parameter 0 had no gradient: no state");
  opt.dispose();
});

Deno.test("bf16-sr: many tiny updates land on the exact sum in the mean; RNE bf16 loses them all", async () => {
  await getRuntime();
  const n = 1024, steps = 200, lr = 1e-4; // u = -1e-4, a fortieth of bf16's ulp below 1
  const run = async (precision: string) => {
    const w = tensor(new Float32Array(n).fill(1), { dtype: "bf16" });
    const opt = new SGD([w], { lr, precision, seed: 7 });
    w.grad = tensor(new Float32Array(n).fill(1), { dtype: "bf16" });
    for (let k = 0; k < steps; k++) opt.step();
    const out = await values(w);
    opt.dispose();
    return out;
  };
  const exact = 1 - steps * Math.fround(lr); // the f64 sum of the intended f32 updates
  const sr = await run("bf16-sr");
  const mean = sr.reduce((a, b) => a + b, 0) / n;
  // each element is a random walk on the grid of 2^-8: per step variance <= u (ulp - u)
  const sdMean = Math.sqrt((steps * lr * 2 ** -8) / n);
  assert.ok(
    Math.abs(mean - exact) < 5 * sdMean,
    `mean ${mean} vs exact ${exact} (5 sd = ${5 * sdMean})`,
  );
  // the first weight alone, within 5 of its standard deviations
  assert.ok(Math.abs(sr[0] - exact) < 5 * Math.sqrt(steps * lr * 2 ** -8), `w[0] = ${sr[0]}`);
  const rne = await run("bf16");
  assert.ok(rne.every((x) => x === 1), "pure bf16 (RNE) loses every update");
});

Deno.test("bf16-sr: a seed gives the same weights; another seed other ones", async () => {
  await getRuntime();
  const n = 512;
  const w0 = bf16(uniform(n, 3)), g = bf16(uniform(n, 4));
  const run = async (seed: number) => {
    const w = tensor(w0, { dtype: "bf16" });
    const opt = new AdamW([w], { lr: 1e-3, precision: "bf16-sr", seed });
    for (let k = 0; k < 3; k++) {
      w.grad?.dispose();
      w.grad = tensor(g.map((x) => x * (k + 1)), { dtype: "bf16" });
      opt.step();
    }
    const out = await codes(w);
    opt.dispose();
    return out;
  };
  const a = await run(5), b = await run(5), c = await run(6);
  assert.deepEqual(a, b);
  const differ = a.filter((x, i) => x !== c[i]).length;
  assert.ok(differ > n / 20, `seeds 5 and 6 differ in ${differ} of ${n} weights`);
});

Deno.test("bf16-sr: the state dict holds the stream; a resumed AdamW run is bit-identical", async () => {
  await getRuntime();
  const n = 300;
  const w0 = bf16(uniform(n, 8)), grads = [9, 10, 11, 12].map((s) => bf16(uniform(n, s)));
  const grad = (w: Tensor, k: number) => {
    w.grad?.dispose();
    w.grad = tensor(grads[k], { dtype: "bf16" });
  };
  // the original: 4 steps, its state saved after 2
  const w = tensor(w0, { dtype: "bf16" });
  const opt = new AdamW([w], { lr: 1e-3, precision: "bf16-sr", seed: 21 });
  grad(w, 0);
  opt.step();
  grad(w, 1);
  opt.step();
  const sd: OptimizerStateDict = opt.stateDict();
  const saved = await values(w);
  assert.deepEqual([sd.state[0].step, sd.state[0].rngCounter], [2, 2]);
  assert.equal(sd.state[0].rngSeed, randomU32(21, 0));
  for (const k of [2, 3]) {
    grad(w, k);
    opt.step();
  }
  const want = await codes(w);
  // the resumed one: built with another seed; the state dict's stream wins
  const r = tensor(saved, { dtype: "bf16" });
  assert.deepEqual(await values(r), saved);
  const opt2 = new AdamW([r], { lr: 1e-3, precision: "bf16-sr", seed: 99 });
  opt2.loadStateDict(sd);
  for (const k of [2, 3]) {
    grad(r, k);
    opt2.step();
  }
  assert.deepEqual(await codes(r), want);
  // a stream that is not a u32 is refused, before anything changes
  assert.throws(
    () => opt2.loadStateDict({ ...sd, state: { 0: { ...sd.state[0], rngCounter: -1 } } }),
    /rngCounter must be an integer in \[0, 2\^32\), got -1/,
  );
  assert.throws(
    () => new AdamW([r], { precision: "bf16-sr", seed: 1.5 }),
    /AdamW: seed must be an integer in \[0, 2\^32\), got 1.5/,
  );
  for (const s of Object.values(sd.state)) {
    for (const v of Object.values(s)) if (typeof v === "object" && v) v.dispose();
  }
  opt.dispose();
  opt2.dispose();
});
