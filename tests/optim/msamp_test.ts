// msamp-o2 (optim/msamp.ts; `scaled` states of optim/precision.ts): AdamW with m in e4m3 and
// v in f16, each with a per-tensor power-of-two scale, against a host emulation of MS-AMP's
// two-stage kernel (adamw_fp8_stage1/2 of msamp/optim/adamw.cu) and
// ScalingMeta.compute_scaling_factor.
import assert from "node:assert/strict";
import {
  AdamW,
  dtype,
  memory,
  type OptimizerStateDict,
  precisionStrategy,
  SGD,
  type Tensor,
  tensor,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { uniform } from "./_reference.ts";

const F16 = dtype("f16"), E4M3 = dtype("e4m3");
const f = Math.fround;

/** MS-AMP's scale 2^floor(log2(fmax / amax)), exactly; 1 when amax is 0 or not finite. */
function pow2Scale(amax: number, fmax: number): number {
  if (!(amax > 0) || !Number.isFinite(amax)) return 1;
  let e = Math.floor(Math.log2(fmax / amax));
  while (2 ** (e + 1) * amax <= fmax) e++;
  while (2 ** e * amax > fmax) e--;
  return 2 ** Math.max(-126, Math.min(127, e));
}

interface HostState {
  w: Float32Array;
  mCodes: Uint8Array | Uint16Array | Uint32Array | number[];
  vCodes: Uint8Array | Uint16Array | Uint32Array | number[];
  sm: number;
  sv: number;
}

/** One MS-AMP O2 AdamW step on the host, in f32 in the kernel's order. */
function hostStep(
  st: HostState,
  g: Float32Array,
  t: number,
  o: { lr: number; b1: number; b2: number; eps: number; wd: number },
): HostState {
  const n = g.length;
  const b1 = f(o.b1), b2 = f(o.b2), eps = f(o.eps), decay = f(1 - o.lr * o.wd);
  const stepSize = f(o.lr / (1 - o.b1 ** t)), bc2Sqrt = f(Math.sqrt(1 - o.b2 ** t));
  const mOld = E4M3.decode(Uint8Array.from(st.mCodes as number[]));
  const vOld = F16.decode(Uint16Array.from(st.vCodes as number[]));
  const m = new Float32Array(n), v = new Float32Array(n), w = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const mo = f(mOld[i] * f(1 / st.sm)), vo = f(vOld[i] * f(1 / st.sv));
    m[i] = f(f(b1 * mo) + f(f(1 - b1) * g[i]));
    v[i] = f(f(b2 * vo) + f(f(1 - b2) * f(g[i] * g[i])));
    const p = f(st.w[i] * decay);
    const d = f(stepSize * f(m[i] / f(f(f(Math.sqrt(v[i])) / bc2Sqrt) + eps)));
    w[i] = f(p - d);
  }
  const amax = (a: Float32Array) => a.reduce((x, y) => Math.max(x, Math.abs(y)), 0);
  const sm = pow2Scale(amax(m), 448), sv = pow2Scale(amax(v), 65504);
  return {
    w: F16.decode(F16.encode(w)),
    mCodes: Array.from(E4M3.encode(m.map((x) => x * sm))),
    vCodes: Array.from(F16.encode(v.map((x) => x * sv))),
    sm,
    sv,
  };
}

async function codes(t: Tensor | number | null): Promise<number[]> {
  return Array.from(await (t as Tensor).codes());
}

Deno.test("msamp-o2: the strategy row (f16 weights, e4m3 m and f16 v scaled per tensor, fp8 forward)", () => {
  const s = precisionStrategy("msamp-o2");
  assert.deepEqual(
    [s.param.name, s.grad.name, s.stateDtype("expAvg").name, s.stateDtype("expAvgSq").name],
    ["f16", "f16", "e4m3", "f16"],
  );
  assert.deepEqual(s.scaled, ["expAvg", "expAvgSq"]);
  assert.deepEqual([s.autocastOptions, s.gradScaler], [{ dtype: "fp8" }, false]);
  assert.deepEqual([pow2Scale(1, 448), pow2Scale(448, 448), pow2Scale(449, 448)], [256, 1, 0.5]);
  assert.throws(
    () => new SGD([tensor([1], { dtype: "f16" })], { precision: "msamp-o2" }),
    /precision 'msamp-o2' has no update body for SGD/,
  );
});

Deno.test("msamp-o2: two AdamW steps equal MS-AMP's two-stage update on the host (scales and codes bit for bit)", async () => {
  await getRuntime();
  const n = 700;
  const o = { lr: 1e-2, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.1 };
  const w0 = F16.decode(F16.encode(uniform(n, 31, -1, 1)));
  const gs = [32, 33].map((seed, k) =>
    F16.decode(F16.encode(uniform(n, seed, -1e-2, 1e-2).map((x) => x * (k + 1))))
  );
  const w = tensor(w0, { dtype: "f16" });
  const opt = new AdamW([w], {
    lr: o.lr,
    betas: [o.b1, o.b2],
    eps: o.eps,
    weightDecay: o.wd,
    precision: "msamp-o2",
  });
  let host: HostState = {
    w: w0,
    mCodes: new Array(n).fill(0),
    vCodes: new Array(n).fill(0),
    sm: 1,
    sv: 1,
  };
  for (let t = 1; t <= 2; t++) {
    w.grad?.dispose();
    w.grad = tensor(gs[t - 1], { dtype: "f16" });
    opt.step();
    host = hostStep(host, gs[t - 1], t, o);
    const sd: OptimizerStateDict = opt.stateDict();
    const s = sd.state[0];
    const [sm] = await (s.expAvgScale as Tensor).toArray();
    const [sv] = await (s.expAvgSqScale as Tensor).toArray();
    assert.deepEqual([sm, sv], [host.sm, host.sv], `step ${t}: scales`);
    assert.ok(sm > 1 && sv > 1, `small moments get scaled up: ${sm}, ${sv}`);
    assert.deepEqual(await codes(s.expAvg), host.mCodes, `step ${t}: m codes`);
    assert.deepEqual(await codes(s.expAvgSq), host.vCodes, `step ${t}: v codes`);
    // the weights: the same but where WGSL's sqrt or division differ from the host's in
    // the last f32 bit and the f16 rounding flips (one f16 ulp at most)
    const got = await codes(w), want = Array.from(F16.encode(host.w));
    const off = got.filter((c, i) => c !== want[i]);
    assert.ok(off.length <= n / 100, `step ${t}: ${off.length} weights differ`);
    got.forEach((c, i) => assert.ok(Math.abs(c - want[i]) <= 1, `weight ${i}: ${c} vs ${want[i]}`));
    host.w = F16.decode(Uint16Array.from(got)); // continue from the device's weights
    for (const v of Object.values(s)) if (typeof v === "object" && v) v.dispose();
  }
  opt.dispose();
});

Deno.test("msamp-o2: 1 + 2 bytes of state per parameter, the scales 16 bytes per tensor; a resume is bit-identical", async () => {
  await getRuntime();
  const n = 4000;
  const w = tensor(F16.decode(F16.encode(uniform(n, 41))), { dtype: "f16", purpose: "params" });
  const opt = new AdamW([w], { lr: 1e-3, precision: "msamp-o2" });
  const grad = (p: Tensor, k: number) => {
    p.grad?.dispose();
    p.grad = tensor(uniform(n, 50 + k, -1e-3, 1e-3), { dtype: "f16", purpose: "grads" });
  };
  const before = memory().byPurpose.optimizer ?? 0;
  grad(w, 0);
  opt.step();
  assert.equal((memory().byPurpose.optimizer ?? 0) - before, 3 * n + 16);
  const sd = opt.stateDict();
  const saved = await w.toArray();
  grad(w, 1);
  const w1 = await w.toArray();
  opt.step({ diagnostics: true });
  const want = await codes(w);
  // the diagnostics as for every strategy, against the weights read before and after
  const d = (await opt.diagnostics())!;
  const w2 = F16.decode(Uint16Array.from(want));
  const lost = w2.filter((x, i) => x === w1[i]).length;
  assert.deepEqual([d.elements, d.updated, d.lost, d.castDtype], [n, n, lost, "f16"]);
  assert.ok(d.edqRatio > 0.5 && d.edqRatio < 1.5, `EDQ ratio ${d.edqRatio}`);
  const r = tensor(saved, { dtype: "f16" });
  const opt2 = new AdamW([r], { lr: 1e-3, precision: "msamp-o2" });
  opt2.loadStateDict(sd);
  grad(r, 1);
  opt2.step();
  assert.deepEqual(await codes(r), want);
  const sd2 = opt2.stateDict(), sd1 = opt.stateDict();
  for (const key of ["expAvg", "expAvgSq", "expAvgScale", "expAvgSqScale"]) {
    assert.deepEqual(await codes(sd2.state[0][key]), await codes(sd1.state[0][key]), key);
  }
  for (const d of [sd, sd1, sd2]) {
    for (const v of Object.values(d.state[0])) if (typeof v === "object" && v) v.dispose();
  }
  opt.dispose();
  opt2.dispose();
});

Deno.test("msamp-o2: a step skipped by a found_inf flag changes no weight, moment or scale", async () => {
  await getRuntime();
  const n = 257;
  const w = tensor(F16.decode(F16.encode(uniform(n, 61))), { dtype: "f16" });
  const opt = new AdamW([w], { lr: 1e-3, precision: "msamp-o2" });
  w.grad = tensor(uniform(n, 62, -1e-2, 1e-2), { dtype: "f16" });
  opt.step({ foundInf: tensor(new Uint32Array([0]), { dtype: "u32" }) });
  const read = async () => {
    const s = opt.stateDict().state[0];
    const out: number[][] = [await codes(w)];
    for (const k of ["expAvg", "expAvgSq", "expAvgScale", "expAvgSqScale"]) {
      out.push(await codes(s[k]));
      (s[k] as Tensor).dispose();
    }
    (s.step as Tensor).dispose();
    return out;
  };
  const before = await read();
  assert.ok(before[3][0] !== 0x3f800000, "the first step set m's scale");
  opt.step({ foundInf: tensor(new Uint32Array([1]), { dtype: "u32" }) });
  assert.deepEqual(await read(), before);
  opt.dispose();
});
