// The numerics inspector (nn/inspect.ts) on the real adapter: its statistics against a host
// computation on the same values (exact counts, with the host codec of each format), windows
// of a tensor larger than one binding, a layer made to overflow named as the first non-finite
// (forward and backward), no readback before read(), and values unchanged by the hooks.
import assert from "node:assert/strict";
import {
  AdamW,
  dtype,
  finfo,
  GPT,
  Linear,
  Module,
  type Tensor,
  tensor,
  ValueError,
} from "../../mod.ts";
import { currentRuntime } from "../../gpu/mod.ts";
import {
  inspect,
  inspectHeatmap,
  inspectJsonl,
  type InspectRecord,
  type TensorStats,
} from "../../nn/inspect.ts";

const bits = (v: number) => new Uint32Array(new Float32Array([v]).buffer)[0];

/** The host reference of one tensor's statistics: every count from the definition. */
function hostStats(values: Float32Array, formats: { name: string; scale: number }[]) {
  let amax = 0, min = Infinity, zeros = 0, nonFinite = 0;
  for (const v of values) {
    const a = Math.abs(v);
    if (!Number.isFinite(a)) nonFinite++;
    else if (a === 0) zeros++;
    else amax = Math.max(amax, a), min = Math.min(min, a);
  }
  const per: Record<string, number[]> = {};
  for (const { name, scale } of formats) {
    const d = dtype(name), fi = finfo(name);
    const c = [0, 0, 0, 0];
    const kept = Array.from(values).map(Math.abs).filter((a) => a !== 0 && Number.isFinite(a));
    const scaled = new Float32Array(kept.map((a) => (scale === 1 ? a : a * scale)));
    const q = d.decode(d.encode(scaled, { saturate: false })).map(Math.abs);
    for (const v of q) {
      if (v === 0) c[0]++;
      else if (!Number.isFinite(v)) c[3]++;
      else if (v === fi.max) c[2]++;
      else if (v < fi.smallestNormal) c[1]++;
    }
    per[name] = c;
  }
  return { amax, min: min === Infinity ? 0 : min, zeros, nonFinite, per };
}

/** Values spread over 2^-40 .. 2^20, with zeros, both signs, Inf and NaN. */
function spread(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const r = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = r();
    out[i] = u < 0.05 ? 0 : (r() < 0.5 ? -1 : 1) * 2 ** (-40 + 60 * r()) * (1 + r());
  }
  out[7] = 3.4e38; // beyond bf16's and f16's largest finite value
  return out;
}

function checkAgainstHost(
  t: TensorStats,
  values: Float32Array,
  names: string[],
  scaled = (name: string) => dtype(name).bits <= 8,
) {
  const formats = names.map((name) => ({ name, scale: t.formats[name].scale }));
  const h = hostStats(values, formats);
  const n = values.length;
  assert.equal(t.elements, n);
  assert.equal(t.amax, h.amax);
  assert.equal(t.minNonZero, h.min);
  assert.equal(t.zeros, h.zeros / n);
  assert.equal(t.nonFinite, h.nonFinite / n);
  assert.equal(t.binades, Math.log2(h.amax / h.min));
  for (const name of names) {
    const f = t.formats[name];
    const fi = finfo(name);
    if (scaled(name)) {
      // the recipe's per-tensor scale fmax / amax (WGSL division: within one ulp)
      assert.ok(Math.abs(f.scale - fi.max / h.amax) <= (fi.max / h.amax) * 2 ** -23, name);
    } else assert.equal(f.scale, 1);
    const [u, s, sat, o] = h.per[name];
    assert.deepEqual(
      [f.underflow, f.subnormal, f.saturate, f.overflow],
      [u / n, s / n, sat / n, o / n],
      `${name}: ${JSON.stringify(f)} vs counts ${h.per[name]}`,
    );
  }
}

Deno.test("inspector statistics equal a host computation on the same values (f32, bf16)", async () => {
  const names = ["e4m3", "e5m2", "bf16", "f16", "e3m2"];
  const fc = new Linear(4, 4, { seed: 0 });
  using ins = inspect(fc, { formats: names });
  const x = tensor([[1, 2, 3, 4]]).requiresGrad_();
  fc.forward(x); // starts step 0
  const raw = spread(5000, 1);
  raw[11] = Infinity;
  raw[12] = NaN;
  const a = tensor(raw);
  const b = tensor(raw, { dtype: "bf16" });
  ins.record(a, "custom", "f32 values");
  ins.record(b, "custom", "bf16 values");
  const [rec] = await ins.read();
  const ta = rec.tensors.find((t) => t.tensor === "f32 values")!;
  const tb = rec.tensors.find((t) => t.tensor === "bf16 values")!;
  checkAgainstHost(ta, await a.toArray() as Float32Array, names);
  checkAgainstHost(tb, await b.toArray() as Float32Array, names);
  // the outlier 3.4e38 sets the f32 tensor's scale: nearly all the rest underflows in e4m3;
  // in bf16 the outlier is Inf, and the scale follows the other values
  assert.ok(ta.formats.e4m3.underflow > 0.9);
  assert.ok(tb.formats.e4m3.underflow > 0 && tb.formats.e4m3.subnormal > 0);
  assert.ok(ta.formats.bf16.overflow > 0 && ta.formats.f16.underflow > 0);
  // a tensor with Inf/NaN: first non-finite names it
  assert.deepEqual(rec.firstNonFinite, {
    phase: "forward",
    layer: "custom",
    tensor: "f32 values",
    op: "user",
  });
  a.dispose();
  b.dispose();
});

/** The f32 neighbours of v: the value below, v, the value above. */
function around(v: number): number[] {
  const b = new Uint32Array(new Float32Array([v]).buffer)[0];
  return [b - 1, b, b + 1].map((x) => new Float32Array(new Uint32Array([x]).buffer)[0]);
}

Deno.test("inspector classes at every rounding midpoint of each format (ties included)", async () => {
  const names = ["e4m3", "e5m2", "bf16", "f16", "e3m2", "e8m3"];
  const vals: number[] = [];
  for (const name of names) {
    const fi = finfo(name), m = dtype(name).mantissaBits;
    const e = Math.floor(Math.log2(fi.max)), ulp = 2 ** (e - m);
    for (
      const mid of [
        fi.smallestSubnormal / 2,
        fi.smallestSubnormal,
        fi.smallestNormal - fi.smallestSubnormal / 2,
        fi.smallestNormal,
        fi.max - ulp / 2,
        fi.max,
        fi.max + ulp / 2,
      ]
    ) vals.push(...around(mid), ...around(-mid));
  }
  const raw = new Float32Array(vals);
  const fc = new Linear(2, 2, { seed: 0 });
  using ins = inspect(fc, { formats: names.map((dtype) => ({ dtype, scaling: "none" as const })) });
  fc.forward(tensor([[1, 2]]).requiresGrad_());
  const a = tensor(raw);
  ins.record(a, "edges", "f32");
  const [rec] = await ins.read();
  checkAgainstHost(rec.tensors.find((t) => t.layer === "edges")!, raw, names, () => false);
  a.dispose();
});

Deno.test("inspector statistics of a tensor larger than one binding go through windows", async () => {
  const rt = currentRuntime();
  const before = rt.maxBindingBytes;
  const windowsBefore = rt.counters.windows;
  const fc = new Linear(2, 2, { seed: 0 });
  const raw = spread(100_000, 2);
  const a = tensor(raw);
  const b = tensor(raw, { dtype: "e5m2" });
  try {
    rt.maxBindingBytes = 64 * 1024; // the f32 tensor takes 400 KB, the e5m2 one 100 KB
    using ins = inspect(fc, { formats: ["e4m3", "bf16"] });
    fc.forward(tensor([[1, 2]]).requiresGrad_());
    ins.record(a, "big", "f32");
    ins.record(b, "big", "e5m2");
    const [rec] = await ins.read();
    assert.ok(rt.counters.windows > windowsBefore, "the statistics were windowed");
    checkAgainstHost(rec.tensors.find((t) => t.tensor === "f32")!, raw, ["e4m3", "bf16"]);
    checkAgainstHost(
      rec.tensors.find((t) => t.tensor === "e5m2")!,
      await b.toArray() as Float32Array,
      ["e4m3", "bf16"],
    );
  } finally {
    rt.maxBindingBytes = before;
    a.dispose();
    b.dispose();
  }
});

/** Two layers; fc2 can be made to overflow in the forward or in the backward pass. */
class Two extends Module {
  fc1 = new Linear(4, 4, { bias: false, seed: 1 });
  fc2 = new Linear(4, 4, { bias: false, seed: 2 });
  forward(x: Tensor): Tensor {
    return this.fc2.forward(this.fc1.forward(x).relu());
  }
}

Deno.test("a layer made to overflow in the forward pass is named as the first non-finite", async () => {
  const m = new Two();
  m.fc1.weight.copy_(tensor(new Float32Array(16).fill(1), { shape: [4, 4] }));
  m.fc2.weight.copy_(tensor(new Float32Array(16).fill(3e38), { shape: [4, 4] }));
  using ins = inspect(m, { formats: ["e4m3"] });
  const y = m.forward(tensor([[1, 2, 3, 4]]));
  y.sum().backward();
  const [rec] = await ins.read();
  assert.deepEqual(
    { phase: rec.firstNonFinite?.phase, layer: rec.firstNonFinite?.layer },
    { phase: "forward", layer: "fc2" },
  );
  assert.equal(rec.firstNonFinite?.tensor, "output");
  // fc1's output and fc2's input were finite; the host agrees that fc2's output is not
  const fin = (l: string, t: string) =>
    rec.tensors.find((s) => s.layer === l && s.tensor === t)!.nonFinite;
  assert.equal(fin("fc1", "output"), 0);
  assert.equal(fin("fc2", "input"), 0);
  const host = Array.from(await y.toArray()).filter((v) => !Number.isFinite(v)).length;
  assert.equal(fin("fc2", "output"), host / 4);
});

Deno.test("a layer whose backward overflows is named as the first non-finite", async () => {
  const m = new Two();
  m.fc2.weight.copy_(tensor(new Float32Array(16).fill(1e10), { shape: [4, 4] }));
  using ins = inspect(m, { formats: ["e5m2"] });
  const x = tensor([[1e-20, 2e-20, 3e-20, 4e-20]]);
  const y = m.forward(x); // about 1e-10: finite
  y.sum().mul(1e30).backward(); // fc2's input gradient: 4e40, beyond f32
  const [rec] = await ins.read();
  assert.ok(rec.tensors.filter((t) => t.phase === "forward").every((t) => t.nonFinite === 0));
  assert.deepEqual(rec.firstNonFinite, {
    phase: "backward",
    layer: "fc2",
    tensor: "grad_input",
    op: "Linear backward",
  });
  const fc2 = rec.tensors.find((t) => t.layer === "fc2" && t.tensor === "grad_output")!;
  assert.equal(fc2.nonFinite, 0);
  assert.equal(fc2.amax, Math.fround(1e30));
});

const cfg = { vocabSize: 16, blockSize: 8, nLayer: 1, nHead: 2, nEmbd: 8, seed: 3 };

async function train(steps: number, withInspector: boolean) {
  const model = new GPT(cfg);
  const opt = new AdamW(model.parameters(), { lr: 1e-2 });
  const ins = withInspector ? inspect(model, { every: 2, optimizer: opt }) : null;
  const rt = currentRuntime();
  const idx = tensor(new Int32Array([1, 5, 3, 9, 2, 7]), { shape: [1, 6] });
  const readbacks = rt.counters.readbacks;
  const dispatches: number[] = [];
  for (let s = 0; s < steps; s++) {
    const d0 = rt.counters.dispatches;
    const { loss } = model.forward(idx, idx);
    loss!.backward();
    opt.step();
    opt.zeroGrad();
    loss!.dispose();
    dispatches.push(rt.counters.dispatches - d0);
  }
  const stepsReadbacks = rt.counters.readbacks - readbacks;
  const before = rt.counters.readbacks;
  const recs: InspectRecord[] = ins ? await ins.read() : [];
  const readReadbacks = rt.counters.readbacks - before;
  ins?.remove();
  const params = await Promise.all(model.parameters().map((p) => p.toArray()));
  opt.dispose();
  for (const p of model.parameters()) p.dispose();
  idx.dispose();
  return { stepsReadbacks, readReadbacks, recs, params, dispatches };
}

Deno.test("no readback before read(), one per inspected step at read(); values unchanged", async () => {
  const plain = await train(3, false);
  const seen = await train(3, true);
  assert.equal(seen.stepsReadbacks, 0);
  // a step that is not inspected runs the same kernels as without the inspector
  assert.equal(seen.dispatches[1], plain.dispatches[1]);
  assert.ok(seen.dispatches[0] > plain.dispatches[0]);
  assert.deepEqual(seen.recs.map((r) => r.step), [0, 2]);
  assert.equal(seen.readReadbacks, 2);
  // bit-identical parameters with and without the inspector
  seen.params.forEach((p, i) => assert.deepEqual(p, plain.params[i]));
  const r = seen.recs[0];
  assert.equal(r.firstNonFinite, null);
  // every Linear: GEMM input, output, weight, gradients, update
  for (const l of ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj"]) {
    const names = r.tensors.filter((t) => t.layer === l).map((t) => t.tensor);
    for (
      const t of [
        "weight",
        "input",
        "output",
        "grad_output",
        "grad_input",
        "weight.grad",
        "weight.update",
      ]
    ) assert.ok(names.includes(t), `${l}: ${t} in ${names}`);
  }
  // updates lost: AdamW at lr 1e-2 changes every f32 weight with a gradient
  const u = r.updates.find((x) => x.param === "h.0.mlp.c_fc.weight")!;
  assert.equal(u.updated, 8 * 32);
  assert.equal(u.lost, 0);
  const lines = inspectJsonl(seen.recs).trim().split("\n");
  assert.equal(lines.length, 2);
  assert.equal(JSON.parse(lines[1]).step, 2);
  const svg = inspectHeatmap(seen.recs, "e4m3.underflow");
  assert.equal(
    (svg.match(/<rect x=/g) ?? []).length,
    21 + 2 * new Set(r.tensors.map((t) => `${t.layer} ${t.tensor}`)).size,
  );
  assert.throws(() => inspectHeatmap(seen.recs, "e4m3.nope"), ValueError);
  // a filter keeps its rows; each cell's title holds the recorded value
  const back = (t: TensorStats) => t.phase === "backward";
  const grads = inspectHeatmap(seen.recs, "e4m3.underflow", { filter: back });
  assert.equal(
    (grads.match(/<rect x=/g) ?? []).length,
    21 + 2 * new Set(r.tensors.filter(back).map((t) => `${t.layer} ${t.tensor}`)).size,
  );
  const fc = r.tensors.find((t) => t.layer === "h.0.mlp.c_fc" && t.tensor === "grad_output")!;
  assert.ok(
    grads.includes(`<title>h.0.mlp.c_fc grad_output, step 0: ${fc.formats.e4m3.underflow}`),
  );
});

Deno.test("updates lost: a bf16 weight whose update is below half an ulp", async () => {
  const fc = new Linear(2, 2, { bias: false, dtype: "bf16", seed: 0 });
  fc.weight.copy_(tensor([[1, 1], [1, 1]], { dtype: "bf16" }));
  const opt = {
    step() {
      // a tiny update to row 0 (lost in bf16), a large one to row 1
      const w = fc.weight;
      w.copy_(w.add(tensor([[1e-5], [0.5]])).cast("bf16"));
    },
  };
  using ins = inspect(fc, { formats: ["bf16"], optimizer: opt });
  fc.forward(tensor([[1, 2]], { dtype: "bf16" })).sum().backward();
  opt.step();
  const [rec] = await ins.read();
  assert.deepEqual(rec.updates, [{
    layer: "model",
    param: "weight",
    updated: 4,
    lost: 2,
    share: 0.5,
  }]);
});

Deno.test("inspect() refuses bad options with what to do", () => {
  const fc = new Linear(2, 2);
  assert.throws(() => inspect(fc, { every: 0 }), /every must be a positive integer/);
  assert.throws(() => inspect(fc, { formats: ["i32"] }), /not a float format/);
  assert.throws(() => inspect(fc, { formats: ["e4m3", "e4m3"] }), /listed twice/);
  assert.equal(bits(1), 0x3f800000);
});

Deno.test("remove() takes the hooks off, and keeps a setAutocast made after inspect()", () => {
  const a = new Linear(2, 2, { seed: 0 });
  const opt = new AdamW(a.parameters());
  const ins = inspect(a, { optimizer: opt });
  assert.ok(Object.hasOwn(a, "forward") && Object.hasOwn(opt, "step"));
  ins.remove();
  assert.ok(!Object.hasOwn(a, "forward") && !Object.hasOwn(opt, "step"));
  const b = new Linear(2, 2, { seed: 0 });
  const ins2 = inspect(b);
  b.setAutocast({ dtype: "bf16" });
  ins2.remove();
  const y = b.forward(tensor([[1, 2]]));
  assert.equal(y.dtype, "bf16");
  y.dispose();
  opt.dispose();
});

Deno.test("the attention's own GEMMs are recorded when attention runs unfused", async () => {
  const T = 6, B = 2, nh = 2, C = 8;
  const idx = tensor(new Int32Array(B * T).map((_, i) => (i * 5 + 1) % 16), { shape: [B, T] });
  for (const fused of [false, true]) {
    const model = new GPT({ ...cfg, nHead: nh, nEmbd: C, fusedAttention: fused });
    using ins = inspect(model, { formats: ["e4m3"] });
    model.forward(idx, idx).loss!.backward();
    const [rec] = await ins.read();
    const attn = new Map(
      rec.tensors.filter((t) => t.layer === "h.0.attn").map((t) => [t.tensor, t]),
    );
    if (fused) {
      assert.ok(!attn.has("q") && !attn.has("probs"));
    } else {
      for (const n of ["q", "k", "scores", "probs", "v", "context"]) assert.ok(attn.has(n), n);
      assert.equal(attn.get("q")!.elements, B * T * C);
      assert.equal(attn.get("scores")!.elements, B * nh * T * T);
      // the causal mask zeroes T(T-1)/2 of each T x T block of probabilities
      const p = attn.get("probs")!;
      assert.equal(p.zeros, (T - 1) / (2 * T));
      assert.ok(p.amax <= 1 && p.amax > 1 / T);
    }
    for (const prm of model.parameters()) prm.dispose();
  }
  idx.dispose();
});
