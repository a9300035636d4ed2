// Elementwise fusion (tensor/kernels/fusion.ts): chains of elementwise ops run as one kernel, with the
// values of the unfused ops bit for bit (host references rounded op by op, and the same chain
// with fusion off), and deferred work never reads a buffer after it was freed or overwritten.
import assert from "node:assert/strict";
import { rand, setFusion, type Tensor, tensor, tidy } from "../../mod.ts";
import { getRuntime, setRunLayout } from "../../gpu/mod.ts";
import { withBindingLimit } from "../_binding_limit.ts";
import { roundTo, values } from "./_reference.ts";

const rt = await getRuntime();

/** Runs `f`, computes what it returns, and counts the kernels recorded. */
function counted<T extends Tensor | Tensor[] | void>(f: () => T): { out: T; dispatches: number } {
  const d0 = rt.counters.dispatches;
  const out = f();
  for (const t of [out].flat()) t?.realize();
  return { out, dispatches: rt.counters.dispatches - d0 };
}

/** The same computation with fusion off: the reference the fused codes must equal. */
async function unfusedCodes(f: () => Tensor): Promise<Uint8Array | Uint16Array | Uint32Array> {
  const prev = setFusion(false);
  try {
    const t = tidy(f);
    const c = await t.codes();
    t.dispose();
    return c;
  } finally {
    setFusion(prev);
  }
}

/** Host f32 arithmetic, each result rounded to dtype `d` as a stored tensor is. */
function hostChain(d: string, x: Float32Array, w: Float32Array, b: number): Float32Array {
  const r = (v: number[]) => Array.from(roundTo(d, v.map(Math.fround)));
  const m = r(Array.from(x, (v, i) => v * w[i]));
  const a = r(m.map((v) => v + Math.fround(b))); // scalars are f32 uniforms
  return Float32Array.from(r(a.map((v) => Math.max(v, 0))));
}

Deno.test("a chain of elementwise ops is one kernel, with each op's rounding (every float dtype)", async () => {
  for (const d of ["f32", "f16", "bf16", "e4m3", "e5m2", "e3m2fn", "bf16x2"]) {
    const xs = values(d, 1001, 1), ws = values(d, 1001, 2, -2, 2);
    const x = tensor(xs, { dtype: d }), w = tensor(ws, { dtype: d });
    const chain = () => x.mul(w).add(0.3).relu();
    const { out, dispatches } = counted(() => tidy(chain));
    assert.equal(dispatches, 1, `${d}: mul, add and relu in one kernel`);
    if (d !== "bf16x2") { // a pair's rounding is not a single RNE step: compared unfused below
      const ref = hostChain(d, xs, ws, 0.3);
      assert.deepEqual(Array.from(await out.toArray()), Array.from(ref), d);
    }
    assert.deepEqual(await out.codes(), await unfusedCodes(chain), `${d}: fused == unfused`);
    out.dispose();
    x.dispose();
    w.dispose();
  }
});

Deno.test("fusion reads broadcast and scalar-shaped operands with their own strides", async () => {
  const xs = values("f32", 24, 3), rows = values("f32", 6, 4), cols = values("f32", 4, 5);
  const x = tensor(xs, { shape: [4, 6] });
  const row = tensor(rows, { shape: [6] }), col = tensor(cols, { shape: [4, 1] });
  const one = tensor([2], { shape: [1, 1] });
  const { out, dispatches } = counted(() => tidy(() => x.mul(row).sub(col).mul(one).tanh()));
  assert.equal(dispatches, 1);
  const got = await out.toArray();
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 6; j++) {
      const v = Math.fround(Math.fround(Math.fround(xs[i * 6 + j] * rows[j]) - cols[i]) * 2);
      assert.ok(Math.abs(got[i * 6 + j] - Math.tanh(v)) <= 4e-7 * Math.max(1, Math.abs(v)));
    }
  }
  assert.deepEqual(
    await out.codes(),
    await unfusedCodes(() => x.mul(row).sub(col).mul(one).tanh()),
  );
  for (const t of [x, row, col, one, out]) t.dispose();
});

Deno.test("tail operands (a bias, a position embedding) are read at the index modulo their size", async () => {
  // [result shape, operand shape, operand dtype, result dtype]: rows of whole quads (vec4 loads),
  // quads across rows, results not of whole quads, a packed operand, a packed result
  const cases: [number[], number[], string, string][] = [
    [[3, 5, 8], [8], "f32", "f32"],
    [[3, 5, 8], [5, 8], "f32", "f32"],
    [[3, 5, 8], [1, 5, 8], "f32", "f32"],
    [[2, 3, 6], [6], "f32", "f32"],
    [[3, 7], [7], "f32", "f32"],
    [[4, 8], [8], "bf16", "f32"],
    [[4, 8], [8], "bf16", "bf16"],
    [[2, 4, 12], [4, 12], "f32", "bf16"],
  ];
  for (const [shape, bshape, bd, xd] of cases) {
    const n = shape.reduce((p, q) => p * q, 1), m = bshape.reduce((p, q) => p * q, 1);
    const xs = roundTo(xd, values("f32", n, 7)), bs = roundTo(bd, values("f32", m, 8));
    const cs = values("f32", shape[0], 9);
    const x = tensor(xs, { shape, dtype: xd }), b = tensor(bs, { shape: bshape, dtype: bd });
    // a broadcast operand that is not a tail beside it: one per leading index
    const c = tensor(cs, { shape: [shape[0], ...shape.slice(1).map(() => 1)] });
    const { out, dispatches } = counted(() => tidy(() => x.add(b).mul(c)));
    assert.equal(dispatches, 1);
    // the sum in the promoted dtype of x and b (bf16 only when both are), then times c (f32)
    const sumD = xd === bd ? xd : "f32", outD = out.dtype, inner = n / shape[0];
    const ref = roundTo(
      outD,
      Array.from(xs, (v, i) => {
        const s = roundTo(sumD, [Math.fround(v + bs[i % m])])[0];
        return Math.fround(s * cs[Math.floor(i / inner)]);
      }),
    );
    const what = `${shape} ${xd} + ${bshape} ${bd} -> ${outD}`;
    assert.deepEqual(Array.from(await out.toArray()), Array.from(ref), what);
    for (const t of [x, b, c, out]) t.dispose();
  }
});

Deno.test("more tail operands than one kernel's broadcast slots split into several kernels", async () => {
  // each tail operand takes a slot of strides: six biases are more than one kernel holds
  const xs = values("f32", 8 * 16, 11), bs = [1, 2, 3, 4, 5, 6].map((s) => values("f32", 16, s));
  const x = tensor(xs, { shape: [8, 16] }), b = bs.map((v) => tensor(v));
  const out = tidy(() => b.reduce((y: Tensor, t) => y.add(t), x).realize());
  const ref = Array.from(xs, (v, i) => bs.reduce((y, t) => Math.fround(y + t[i % 16]), v));
  assert.deepEqual(Array.from(await out.toArray()), ref);
  for (const t of [x, ...b, out]) t.dispose();
});

Deno.test("an intermediate that stays alive is computed once and read by its consumers", async () => {
  const xs = values("f32", 300, 6, -3, 3);
  const x = tensor(xs);
  const { out, dispatches } = counted(() => {
    const p = x.exp(); // kept: both consumers read its buffer
    const q = p.add(1), r = p.mul(2);
    return [p, q, r];
  });
  assert.equal(dispatches, 3, "exp, add and mul: none computed twice");
  const [p, q, r] = await Promise.all(out.map((t) => t.toArray()));
  for (let i = 0; i < xs.length; i++) {
    assert.equal(q[i], Math.fround(p[i] + 1));
    assert.equal(r[i], Math.fround(p[i] * 2));
  }
  for (const t of [x, ...out]) t.dispose();
});

Deno.test("a pending tensor disposed before it is needed is never computed", () => {
  const x = tensor(values("f32", 100, 7));
  const { dispatches } = counted(() => {
    tidy(() => void x.mul(3).add(1));
  });
  assert.equal(dispatches, 0);
  x.dispose();
});

Deno.test("deferred work reads its operands as they were: dispose and in-place writes after it", async () => {
  // disposing an operand records the work that reads it first
  const x = tensor([1, 2, 3]);
  const y = x.mul(2);
  x.dispose();
  const z = tensor([7, 7, 7]); // may reuse x's buffer
  assert.deepEqual(Array.from(await y.toArray()), [2, 4, 6]);
  // an in-place write to an operand comes after the deferred read
  const p = tensor([1, 2, 3]);
  const q = p.add(10);
  p.copy_(z);
  assert.deepEqual(Array.from(await q.toArray()), [11, 12, 13]);
  assert.deepEqual(Array.from(await p.toArray()), [7, 7, 7]);
  // an inlined intermediate whose operand is then overwritten
  const s = tensor([1, 2, 3]);
  const r = tidy(() => s.mul(2).add(1));
  s.copy_(z);
  assert.deepEqual(Array.from(await r.toArray()), [3, 5, 7]);
  for (const t of [y, z, p, q, s, r]) t.dispose();
});

Deno.test("long chains and many operands split into kernels within the binding limits", async () => {
  const x = tensor([0.5, -1, 2]);
  const long = counted(() =>
    tidy(() => {
      let t = x;
      for (let k = 0; k < 40; k++) t = t.add(1);
      return t;
    })
  );
  assert.equal(long.dispatches, 3, "40 ops at most 16 a kernel");
  assert.deepEqual(Array.from(await long.out.toArray()), [40.5, 39, 42]);
  const ts = Array.from({ length: 9 }, (_, k) => tensor([k, 2 * k, 3 * k]));
  const wide = counted(() => tidy(() => ts.reduce((a, b) => a.add(b))));
  assert.ok(wide.dispatches >= 2 && wide.dispatches <= 3, `${wide.dispatches} kernels`);
  assert.deepEqual(Array.from(await wide.out.toArray()), [36, 72, 108]);
  for (const t of [x, long.out, wide.out, ...ts]) t.dispose();
});

Deno.test("stochastic rounding and random streams are never inlined (their own seeds)", async () => {
  const xs = values("f32", 1000, 8);
  const x = tensor(xs);
  const sr = () => x.cast("bf16", { rounding: "stochastic", seed: 11 }).mul(3);
  const a = tidy(sr);
  assert.deepEqual(await a.codes(), await unfusedCodes(sr));
  const rnd = () => rand([1000], { seed: 5 }).mul(2).add(rand([1000], { seed: 6 }));
  const b = tidy(rnd);
  assert.deepEqual(await b.codes(), await unfusedCodes(rnd));
  for (const t of [x, a, b]) t.dispose();
});

Deno.test("gradients flow through fused chains", async () => {
  const xs = [-1.5, -0.25, 0.5, 2], ws = [2, 3, -1, 0.5];
  const x = tensor(xs), w = tensor(ws);
  x.requiresGrad = true;
  w.requiresGrad = true;
  const loss = x.mul(w).add(0.5).relu().sum();
  loss.backward();
  const pre = xs.map((v, i) => v * ws[i] + 0.5);
  // relu's gradient (1 or 0) times the other factor, as PyTorch computes it (0 * -1 is -0)
  assert.deepEqual(Array.from(await x.grad!.toArray()), pre.map((p, i) => (p > 0 ? 1 : 0) * ws[i]));
  assert.deepEqual(Array.from(await w.grad!.toArray()), pre.map((p, i) => (p > 0 ? 1 : 0) * xs[i]));
  for (const t of [x, w, loss]) t.dispose();
});

Deno.test("setFusion(false) records each op at the call; it returns the previous setting", () => {
  const x = tensor([1, 2, 3]);
  const prev = setFusion(false);
  try {
    assert.equal(prev, true);
    const d0 = rt.counters.dispatches;
    const y = tidy(() => x.mul(2).add(1));
    assert.equal(rt.counters.dispatches - d0, 2);
    y.dispose();
  } finally {
    assert.equal(setFusion(prev), false);
  }
  x.dispose();
});

Deno.test("tensors of the autograd graph are computed on their own, not again inline", () => {
  const x = tensor([1, 2, 3], { requiresGrad: true });
  const { out, dispatches } = counted(() => {
    const h = x.mul(2); // saved by the graph: backward reads it
    return [h, h.add(1).exp()];
  });
  // mul, add and exp once each: all three are graph nodes, none is computed twice
  assert.equal(dispatches, 3);
  const noGraph = counted(() => tidy(() => x.detach().mul(2).add(1).exp()));
  assert.equal(noGraph.dispatches, 1, "without a graph the chain is one kernel");
  for (const t of [x, ...out, noGraph.out]) t.dispose();
});

Deno.test("fused f32 intermediates over NaN, Inf and huge values: the host's values, NaN canonical", async () => {
  const n = 64;
  const specials = [NaN, -NaN, Infinity, -Infinity, 3.4e38, -3.4e38, 1e-30, -0, 0];
  const xs = Float32Array.from(
    { length: n },
    (_, i) => i % 3 === 0 ? specials[(i / 3) % 9] : (i % 7) - 3.5,
  );
  // a NaN with a payload and the sign bit set, which the kernel must canonicalise
  new Uint32Array(xs.buffer)[3] = 0xff812345;
  const as = Float32Array.from({ length: n }, (_, i) => ((i * 5) % 11) - 5);
  const bs = Float32Array.from({ length: n }, (_, i) => ((i * 3) % 7) * 1e38);
  const x = tensor(xs), a = tensor(as), b = tensor(bs);
  const y = tidy(() => x.mul(a).add(b).mul(2).sub(a).abs());
  const got = new Uint32Array(await y.codes());
  const f = Math.fround;
  for (let i = 0; i < n; i++) {
    const want = Math.abs(f(f(f(f(xs[i] * as[i]) + bs[i]) * 2) - as[i]));
    if (Number.isNaN(want)) {
      assert.ok(
        (got[i] & 0x7fffffff) === 0x7fc00000,
        `element ${i}: ${got[i].toString(16)} is not a canonical NaN`,
      );
    } else {
      assert.equal(got[i], new Uint32Array(new Float32Array([want]).buffer)[0], `element ${i}`);
    }
  }
  [x, a, b, y].forEach((t) => t.dispose());
});

Deno.test("a quad computed as one vec4 expression equals the ops one by one, bit for bit", async () => {
  // every op here computes vec4s componentwise, so a result of whole quads is computed as
  // one vec4 expression a quad (value4); scalar-shaped, row-broadcast and tail operands and
  // scalar uniforms are splatted or gathered into quads; NaNs canonical as stored
  const n = 8 * 12;
  const specials = [NaN, -NaN, Infinity, -Infinity, 3.4e38, -3.4e38, 1e-40, -0, 0, 88.8, -104];
  const xs = Float32Array.from(
    { length: n },
    (_, i) => i % 4 === 1 ? specials[(i >> 2) % specials.length] : (i % 13) * 0.37 - 2.2,
  );
  new Uint32Array(xs.buffer)[5] = 0xff812345; // a NaN with a payload and the sign bit set
  const x = tensor(xs, { shape: [8, 12] });
  const row = tensor(values("f32", 12, 6), { shape: [12] });
  const col = tensor(values("f32", 8, 7), { shape: [8, 1] });
  const one = tensor([0.75], { shape: [1, 1] });
  const h = tensor(values("f16", n, 8), { shape: [8, 12], dtype: "f16" });
  const chains: [string, () => Tensor][] = [
    ["exp/log/sqrt", () => x.mul(row).add(1.5).exp().add(one).log().abs().sqrt()],
    ["div/neg/rsqrt/sigmoid", () => x.div(col).neg().sub(0.25).sigmoid().mul(x).rsqrt()],
    ["f16 operand, f16 result", () => h.mul(x).add(row).exp().mul(h).cast("f16")],
    ["tail row, f16 intermediate", () => x.add(row).cast("f16").exp().mul(2).div(one)],
  ];
  const sources: string[] = [];
  const create = GPUDevice.prototype.createShaderModule;
  GPUDevice.prototype.createShaderModule = function (d: GPUShaderModuleDescriptor) {
    sources.push(d.code);
    return create.call(this, d);
  };
  try {
    for (const [name, f] of chains) {
      sources.length = 0;
      const { out, dispatches } = counted(() => tidy(f));
      const vec = sources.some((s) => s.includes("ulp_keep4("));
      if (name === "exp/log/sqrt") {
        assert.equal(dispatches, 1, name);
        assert.ok(vec, `${name}: one vec4 expression a quad`);
      }
      // a cast inside the chain (an f16 intermediate): element by element
      if (name.includes("intermediate")) assert.ok(!vec, `${name}: element by element`);
      assert.deepEqual(await out.codes(), await unfusedCodes(f), `${name}: fused == unfused`);
      out.dispose();
    }
  } finally {
    GPUDevice.prototype.createShaderModule = create;
  }
  for (const t of [x, row, col, one, h]) t.dispose();
});

/** `f()`'s codes with quad kernels in `layout`, and the workgroups of each dispatch. */
async function inLayout(
  layout: "auto" | "strided" | "runs",
  f: () => Tensor,
): Promise<{ codes: Uint8Array | Uint16Array | Uint32Array; grids: number[] }> {
  const grids: number[] = [];
  const pass = GPUComputePassEncoder.prototype, disp = pass.dispatchWorkgroups;
  pass.dispatchWorkgroups = function (x: number, y?: number, z?: number) {
    grids.push(x * (y ?? 1) * (z ?? 1));
    return disp.call(this, x, y, z);
  };
  const prev = setRunLayout(layout);
  try {
    const t = tidy(f);
    t.realize();
    pass.dispatchWorkgroups = disp;
    const codes = await t.codes();
    t.dispose();
    return { codes, grids };
  } finally {
    pass.dispatchWorkgroups = disp;
    setRunLayout(prev);
  }
}

Deno.test("runs of consecutive quads an invocation give the bits of a quad an invocation", async () => {
  // 37 x 1000: 9250 quads, two workgroups of 16 runs of 256 quads and a part (the last run
  // partial); every operand mode, packed and f16 operands, an f16 result, stochastic rounding
  const R = 37, C = 1000, n = R * C;
  const xs = values("f32", n, 21, -3, 3);
  new Uint32Array(xs.buffer)[4099] = 0xff812345; // a NaN with a payload, in the second run
  xs[5000] = Infinity;
  const x = tensor(xs, { shape: [R, C] });
  const y = tensor(values("f32", n, 22), { shape: [R, C] });
  const b = tensor(values("bf16", n, 23), { shape: [R, C], dtype: "bf16" });
  const h = tensor(values("f16", n, 24), { shape: [R, C], dtype: "f16" });
  const row = tensor(values("f32", C, 25), { shape: [C] });
  const col = tensor(values("f32", R, 26), { shape: [R, 1] });
  const one = tensor([0.75], { shape: [1, 1] });
  const chains: [string, () => Tensor][] = [
    ["same shape, one vec4 expression", () => x.mul(y).add(1.5).exp().mul(y)],
    ["tail row, column, one element", () => x.add(row).mul(col).sub(one).tanh()],
    ["bf16 and f16 operands", () => b.mul(x).add(h).sigmoid()],
    ["f16 result", () => x.mul(h).add(row).cast("f16")],
    ["stochastic rounding to f16", () => x.mul(y).cast("f16", { rounding: "stochastic", seed: 5 })],
  ];
  for (const [name, f] of chains) {
    const runs = await inLayout("runs", f), strided = await inLayout("strided", f);
    assert.deepEqual(runs.codes, strided.codes, `${name}: runs == a quad an invocation`);
    // (packed f16, through OpenGL, keeps a word per step)
    if (name !== "bf16 and f16 operands" && name.includes("f16") && !rt.info.shaderF16) continue;
    // the fused kernel (the largest grid): 16 x 256 quads a workgroup, against 256 quads
    assert.equal(Math.max(...runs.grids), Math.ceil(n / 4 / 4096), `${name}: runs`);
    assert.equal(Math.max(...strided.grids), Math.ceil(n / 4 / 256), `${name}: strided`);
  }
  // tensors past one binding: windows of 2 workgroups' shares
  await withBindingLimit(2 * 65536, async () => {
    for (const [name, f] of chains.slice(0, 2)) {
      const runs = await inLayout("runs", f), strided = await inLayout("strided", f);
      assert.deepEqual(runs.codes, strided.codes, `${name}, windows: runs == strided`);
      assert.ok(runs.grids.length > 1, `${name}: several windows`);
    }
  });
  for (const t of [x, y, b, h, row, col, one]) t.dispose();
});

Deno.test("a CPU adapter takes runs from 256K elements; elsewhere a quad an invocation", async () => {
  const chain = (n: number) => () => {
    const x = tensor(values("f32", n, 31), { shape: [n] });
    return x.mul(x).add(0.5).exp();
  };
  for (const n of [2 ** 18, 2 ** 18 - 4096]) {
    const auto = await inLayout("auto", chain(n)), strided = await inLayout("strided", chain(n));
    const runs = rt.info.isFallbackAdapter && n >= 2 ** 18; // 16 workgroups of 16 runs
    assert.equal(Math.max(...auto.grids), Math.ceil(n / 4 / (runs ? 4096 : 256)), `${n}: ${runs}`);
    assert.deepEqual(auto.codes, strided.codes, `${n}: the same bits`);
  }
  assert.throws(
    // deno-lint-ignore no-explicit-any
    () => setRunLayout("rows" as any),
    /setRunLayout\('rows'\): the layout must be "auto", "strided" or "runs"/,
  );
});
