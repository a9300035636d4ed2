import assert from "node:assert/strict";
import {
  add,
  autocast,
  dtype,
  DTypeError,
  memory,
  promoteTypes,
  ShapeError,
  softplus,
  sub,
  type Tensor,
  tensor,
  tidy,
  ValueError,
  where,
} from "../../mod.ts";
import { rng, roundTo, ulpsOff, values } from "./_reference.ts";

const FLOATS = ["f32", "f16", "bf16", "e4m3", "e5m2", "e8m3", "e3m2fn", "bf16x2"];
const SIZES = [1, 3, 17, 1000];

/** Host reference of each unary op in f64, its input domain, and the ulps it may be off. */
const UNARY: Record<
  string,
  { f: (x: number) => number; lo: number; hi: number; ulps: number; f32Ulps?: number; abs?: number }
> = {
  neg: { f: (x) => -x, lo: -4, hi: 4, ulps: 0 },
  abs: { f: Math.abs, lo: -4, hi: 4, ulps: 0 },
  relu: { f: (x) => Math.max(x, 0), lo: -4, hi: 4, ulps: 0 },
  exp: { f: Math.exp, lo: -4, hi: 4, ulps: 1, f32Ulps: 16 },
  log: { f: Math.log, lo: 0.05, hi: 8, ulps: 1, f32Ulps: 16, abs: 2 ** -21 },
  sqrt: { f: Math.sqrt, lo: 0, hi: 8, ulps: 1, f32Ulps: 3 },
  rsqrt: { f: (x) => 1 / Math.sqrt(x), lo: 0.05, hi: 8, ulps: 1, f32Ulps: 4 },
  tanh: { f: Math.tanh, lo: -4, hi: 4, ulps: 1, f32Ulps: 16 },
  sigmoid: { f: (x) => 1 / (1 + Math.exp(-x)), lo: -6, hi: 6, ulps: 1, f32Ulps: 16 },
  softplus: {
    f: (x) => Math.max(x, 0) + Math.log1p(Math.exp(-Math.abs(x))),
    lo: -30,
    hi: 30,
    ulps: 1,
    f32Ulps: 64, // for x << 0 the value is e^x: exp's own error (WGSL allows 3 + 2|x| ulps)
  },
  gelu: {
    f: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
    lo: -4,
    hi: 4,
    ulps: 1,
    f32Ulps: 64,
    abs: 2 ** -21,
  },
};

/** erf to ~1e-15 by its Maclaurin series / continued fraction, for the reference. */
function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax > 6) return Math.sign(x);
  let sum = 0, term = ax;
  for (let n = 0; n < 200; n++) {
    sum += term / (2 * n + 1);
    term *= -ax * ax / (n + 1);
    if (Math.abs(term) < 1e-17) break;
  }
  return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
}

const BINARY: Record<
  string,
  { f: (a: number, b: number) => number; ulps: number; positiveB?: boolean }
> = {
  add: { f: (a, b) => a + b, ulps: 0 },
  sub: { f: (a, b) => a - b, ulps: 0 },
  mul: { f: (a, b) => a * b, ulps: 0 },
  div: { f: (a, b) => a / b, ulps: 1, positiveB: true },
  maximum: { f: Math.max, ulps: 0 },
  minimum: { f: Math.min, ulps: 0 },
  pow: { f: (a, b) => Math.pow(Math.abs(a), b), ulps: 1, positiveB: true },
};

function check(
  op: string,
  outName: string,
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  allowed: number,
  inputs: string,
  abs = 0,
) {
  for (let i = 0; i < ref.length; i++) {
    const off = ulpsOff(outName, got[i], ref[i]);
    if (off > allowed && !(Math.abs(got[i] - ref[i]) <= abs)) {
      assert.fail(
        `${op} (${inputs} -> ${outName}) at ${i}: got ${got[i]}, reference ${
          ref[i]
        }, ${off} ulps off (allowed ${allowed})`,
      );
    }
  }
}

for (const [op, spec] of Object.entries(UNARY)) {
  Deno.test(`${op}() matches the f64 reference rounded to every float storage dtype`, async () => {
    // every dtype and size recorded, then read together (one wait, not one per case)
    const cases = FLOATS.flatMap((name) =>
      SIZES.map((n) => {
        const xv = values(name, n, n * 7 + op.length, spec.lo, spec.hi);
        using x = tensor(xv, { dtype: name });
        using y = (x as unknown as Record<string, () => Tensor>)[op]();
        assert.equal(y.dtype, name);
        assert.deepEqual(y.shape, [n]);
        return { name, ref: Array.from(xv, spec.f), got: y.toArray() };
      })
    );
    for (const { name, ref, got } of cases) {
      const allowed = name === "f32"
        ? spec.f32Ulps ?? spec.ulps
        : name === "bf16x2"
        ? Math.max(spec.f32Ulps ?? 0, 2) * 256
        : spec.ulps;
      check(op, name, await got, ref, allowed, name, name === "f32" ? spec.abs ?? 0 : 0);
    }
  });
}

for (const [op, spec] of Object.entries(BINARY)) {
  Deno.test(`${op}() matches the f64 reference for every float storage dtype, with broadcasting`, async () => {
    // every dtype and size recorded, then read together (one wait, not one per case)
    const cases = FLOATS.flatMap((name) =>
      SIZES.map((n) => {
        const av = spec.positiveB && op === "pow"
          ? values(name, n, n + 1, 0.1, 3)
          : values(name, n, n + 1);
        const bv = spec.positiveB ? values(name, n, n + 2, 0.5, 3) : values(name, n, n + 2);
        using a = tensor(av, { dtype: name });
        using b = tensor(bv, { dtype: name });
        using y = (a as unknown as Record<string, (o: Tensor) => Tensor>)[op](b);
        return { name, ref: Array.from(av, (v, i) => spec.f(v, bv[i])), got: y.toArray() };
      })
    );
    for (const { name, ref, got } of cases) {
      const allowed = name === "f32"
        ? (op === "pow" ? 16 : spec.ulps === 0 ? 0 : 3)
        : name === "bf16x2"
        ? 4096
        : spec.ulps;
      check(op, name, await got, ref, allowed, `${name},${name}`);
    }
    // broadcasting [3,1] with [4] and [2,3,4] with [3,1]
    for (
      const [sa, sb] of [[[3, 1], [4]], [[2, 3, 4], [3, 1]], [[1], [5, 2]], [[], [2, 2]]] as const
    ) {
      const na = sa.reduce((p: number, q) => p * q, 1), nb = sb.reduce((p: number, q) => p * q, 1);
      const av = spec.positiveB && op === "pow"
        ? values("f32", na, 3, 0.1, 3)
        : values("f32", na, 3);
      const bv = spec.positiveB ? values("f32", nb, 4, 0.5, 3) : values("f32", nb, 4);
      using a = tensor(av, { shape: sa });
      using b = tensor(bv, { shape: sb });
      using y = (a as unknown as Record<string, (o: Tensor) => Tensor>)[op](b);
      const shape = refBroadcast(sa, sb);
      assert.deepEqual(y.shape, shape);
      const ref = mapBroadcast(shape, sa, sb, av, bv, spec.f);
      check(
        op,
        "f32",
        await y.toArray(),
        ref,
        op === "pow" ? 16 : spec.ulps === 0 ? 0 : 3,
        `${sa} with ${sb}`,
      );
    }
  });
}

function refBroadcast(a: readonly number[], b: readonly number[]): number[] {
  const r = Math.max(a.length, b.length);
  return Array.from({ length: r }, (_, d) => {
    const x = a[a.length - r + d] ?? 1, y = b[b.length - r + d] ?? 1;
    return x === 1 ? y : x;
  });
}

function mapBroadcast(
  shape: number[],
  sa: readonly number[],
  sb: readonly number[],
  av: ArrayLike<number>,
  bv: ArrayLike<number>,
  f: (a: number, b: number) => number,
): number[] {
  const n = shape.reduce((p, q) => p * q, 1);
  const idx = (s: readonly number[], coord: number[]) => {
    let off = 0;
    for (let d = 0; d < s.length; d++) {
      const c = coord[shape.length - s.length + d];
      off = off * s[d] + (s[d] === 1 ? 0 : c);
    }
    return off;
  };
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const coord: number[] = [];
    let rem = i;
    for (let d = shape.length - 1; d >= 0; d--) {
      coord[d] = rem % shape[d];
      rem = Math.floor(rem / shape[d]);
    }
    out.push(f(av[idx(sa, coord)], bv[idx(sb, coord)]));
  }
  return out;
}

Deno.test("softplus() keeps full precision where log(1 + e^x) would not: large, tiny and f32 extremes", async () => {
  // x = 100 overflows nothing; x = -30..-87: e^x is far below 1's ulp, the naive form gives 0
  const xs = [100, 88, 20, 1e-3, 0, -1e-3, -20, -30, -60, -87];
  const got = await tensor(xs).softplus().toArray();
  const want = xs.map((x) => Math.max(x, 0) + Math.log1p(Math.exp(-Math.abs(x))));
  check("softplus", "f32", got, want, 64, "f32 extremes"); // e^x's error, as exp() has
  const naive = xs.map((x) => Math.fround(Math.log(Math.fround(1 + Math.fround(Math.exp(x))))));
  assert.equal(naive[7], 0, "the naive form loses e^-30 entirely");
  assert.ok(got[8] > 0 && got[9] > 0, "e^-60 and e^-87 survive");
  // the free function and the method are the same op; bf16 in, bf16 out (policy: widest)
  const b = tensor([-2, 0.5, 3], { dtype: "bf16" });
  assert.deepEqual(
    Array.from(await softplus(b).toArray()),
    Array.from(await b.softplus().toArray()),
  );
  assert.equal(autocast({ dtype: "bf16" }, () => b.softplus()).dtype, "bf16");
  // its gradient is the logistic sigmoid (f64 reference)
  const x = tensor([-50, -3, 0, 2, 40], { requiresGrad: true });
  x.softplus().sum().backward();
  const sig = [-50, -3, 0, 2, 40].map((v) => 1 / (1 + Math.exp(-v)));
  check("softplus'", "f32", await x.grad!.toArray(), sig, 16, "f32", 2 ** -40);
});

Deno.test("scalar operands work on either side and do not promote a float tensor", async () => {
  using x = tensor([1, 2, 3], { dtype: "bf16" });
  using a = x.add(0.5), b = sub(10, x), c = x.mul(1 / 3);
  assert.equal(a.dtype, "bf16");
  assert.deepEqual(Array.from(await a.toArray()), [1.5, 2.5, 3.5]);
  assert.deepEqual(Array.from(await b.toArray()), [9, 8, 7]);
  assert.deepEqual(
    Array.from(await c.toArray()),
    Array.from(roundTo("bf16", [1 / 3, 2 / 3, 1].map(Math.fround))),
  );
  using i = tensor(new Int32Array([1, 2]));
  using j = i.add(0.5);
  assert.equal(j.dtype, "f32");
  using k = add(i, 1);
  assert.equal(k.dtype, "i32");
  assert.deepEqual(Array.from(await k.toArray()), [2, 3]);
});

Deno.test("binary ops promote dtypes as PyTorch does", async () => {
  const pairs: [string, string, string][] = [
    ["bf16", "e4m3", "bf16"],
    ["bf16", "f16", "f32"],
    ["e4m3", "e5m2", "f32"],
    ["f16", "e5m2", "f16"],
    ["i32", "bf16", "bf16"],
    ["bf16x2", "bf16", "bf16x2"],
  ];
  for (const [a, b, out] of pairs) {
    assert.equal(promoteTypes(a, b).name, out);
    using x = tensor([2, -2], { dtype: a }), y = tensor([0.25, 4], { dtype: b });
    using z = x.add(y);
    assert.equal(z.dtype, out, `${a} + ${b}`);
    assert.deepEqual(Array.from(await z.toArray()), [2.25, 2]);
  }
});

Deno.test("comparisons give bool and where() selects with broadcasting", async () => {
  using x = tensor([-1, 0, 2, NaN]);
  assert.deepEqual(Array.from(await x.gt(0).toArray()), [0, 0, 1, 0]);
  assert.deepEqual(Array.from(await x.le(0).toArray()), [1, 1, 0, 0]);
  assert.deepEqual(Array.from(await x.eq(0).toArray()), [0, 1, 0, 0]);
  assert.deepEqual(Array.from(await x.ne(0).toArray()), [1, 0, 1, 1]);
  using m = x.gt(0);
  assert.equal(m.dtype, "bool");
  using w = where(m, x, tensor([[10], [20]]));
  assert.deepEqual(w.shape, [2, 4]);
  assert.deepEqual(Array.from(await w.toArray()), [10, 10, 2, 10, 20, 20, 2, 20]);
});

Deno.test("maximum and minimum propagate NaN; relu keeps NaN; pow follows PyTorch for negative bases", async () => {
  using a = tensor([NaN, 1, -2, 3]), b = tensor([0, NaN, -3, 1]);
  const mx = await a.maximum(b).toArray(), mn = await a.minimum(b).toArray();
  assert.ok(
    Number.isNaN(mx[0]) && Number.isNaN(mx[1]) && Number.isNaN(mn[0]) && Number.isNaN(mn[1]),
  );
  assert.deepEqual([mx[2], mx[3], mn[2], mn[3]], [-2, 3, -3, 1]);
  const r = await tensor([NaN, -1, 2]).relu().toArray();
  assert.ok(Number.isNaN(r[0]));
  assert.deepEqual([r[1], r[2]], [0, 2]);
  const p = await tensor([-2, -2, -8, 0, 0, 4]).pow(tensor([2, 3, 1 / 3, 0, -1, 0.5])).toArray();
  assert.deepEqual([p[0], p[1], p[3], p[4], p[5]], [4, -8, 1, Infinity, 2]);
  assert.ok(Number.isNaN(p[2]), "negative base with a fractional exponent is NaN");
});

Deno.test("cast() between every pair of dtypes matches the host codec bit for bit", async () => {
  const names = ["f32", "f16", "bf16", "e4m3", "e5m2", "e8m3", "e2m1fn", "bf16x2", "i32", "bool"];
  const r = rng(5);
  const raw = Float32Array.from(
    { length: 257 },
    (
      _,
      i,
    ) => (i < 8 ? [0, -0, 1, -1, 448, 500, 65504, 1e-7][i] : (r() - 0.5) * 2 ** (r() * 30 - 15)),
  );
  for (const from of names) {
    const src = roundTo(from, raw);
    using x = tensor(src, { dtype: from });
    for (const to of names) {
      for (const saturate of [false, true]) {
        using y = x.cast(to, { saturate });
        assert.equal(y.dtype, dtype(to).name);
        const codes = await y.codes();
        const want = dtype(to).encode(dtype(from).decode(dtype(from).encode(src)), { saturate });
        for (let i = 0; i < src.length; i++) {
          if (codes[i] !== want[i] && !(dtype(to).kind === "int" && Math.abs(src[i]) > 2 ** 31)) {
            assert.fail(
              `cast ${from} -> ${to}${saturate ? " (sat)" : ""} of ${src[i]}: gpu 0x${
                codes[i].toString(16)
              } host 0x${want[i].toString(16)}`,
            );
          }
        }
      }
    }
  }
});

Deno.test("stochastic cast() equals the host's seeded stochastic rounding and is unbiased", async () => {
  const v = 1 + 1 / 3 * 2 ** -7; // a third of the way between two bf16 values
  const n = 20000;
  using x = tensor(new Float32Array(n).fill(v));
  using y = x.cast("bf16", { rounding: "stochastic", seed: 42 });
  const codes = await y.codes();
  const want = dtype("bf16").encode(new Float32Array(n).fill(v), {
    rounding: "stochastic",
    seed: 42,
  });
  assert.deepEqual(Array.from(codes), Array.from(want));
  const vals = await y.toArray();
  const mean = Array.from(vals).reduce((a, b) => a + b, 0) / n;
  const p = 1 / 3, ulp = 2 ** -7;
  const se = ulp * Math.sqrt(p * (1 - p) / n);
  assert.ok(Math.abs(mean - Math.fround(v)) < 4 * se, `mean ${mean} vs ${v} (se ${se})`);
  using z = x.cast("bf16", { rounding: "stochastic", seed: 43 });
  assert.notDeepEqual(Array.from(await z.codes()), Array.from(codes));
});

Deno.test("ops on packed dtypes write whole words: odd sizes leave no element unwritten", async () => {
  for (const name of ["e4m3", "bf16", "f16", "e3m2fn"]) {
    for (const n of [1, 2, 3, 5, 7, 9, 1001]) {
      const v = values(name, n, n, -2, 2);
      using x = tensor(v, { dtype: name });
      using y = x.neg();
      assert.deepEqual(Array.from(await y.toArray()), Array.from(v, (t) => -t), `${name} n=${n}`);
    }
  }
});

Deno.test("property: random shapes broadcast like the reference", async () => {
  const r = rng(11);
  for (let trial = 0; trial < 25; trial++) {
    const rank = 1 + Math.floor(r() * 4);
    const shape = Array.from({ length: rank }, () => 1 + Math.floor(r() * 5));
    const sb = shape.slice(Math.floor(r() * rank)).map((s) => (r() < 0.3 ? 1 : s));
    const name = FLOATS[Math.floor(r() * FLOATS.length)];
    const na = shape.reduce((p, q) => p * q, 1), nb = sb.reduce((p, q) => p * q, 1);
    const av = values(name, na, trial), bv = values(name, nb, trial + 100);
    using a = tensor(av, { shape, dtype: name }), b = tensor(bv, { shape: sb, dtype: name });
    using y = a.mul(b);
    assert.deepEqual(y.shape, refBroadcast(shape, sb));
    const ref = mapBroadcast(y.shape as number[], shape, sb, av, bv, (p, q) => p * q);
    check(
      "mul",
      name,
      await y.toArray(),
      ref,
      name === "bf16x2" ? 4096 : 0,
      `${shape} * ${sb} in ${name}`,
    );
  }
});

Deno.test("shape and dtype errors are thrown at the call and name the op, shapes and dtypes", () => {
  using a = tensor([1, 2, 3]), b = tensor([1, 2]);
  const before = memory().liveBytes;
  assert.throws(
    () => a.add(b),
    (e: unknown) =>
      e instanceof ShapeError && /add\(\)/.test(e.message) && e.message.includes("[3]") &&
      e.message.includes("[2]"),
  );
  assert.equal(memory().liveBytes, before, "nothing was allocated");
  assert.throws(() => a.add("x" as unknown as number), ValueError);
  assert.throws(() => a.cast("f13"), DTypeError);
  a.dispose();
  assert.throws(
    () => a.exp(),
    (e: unknown) =>
      e instanceof ValueError && /\[3\]/.test(e.message) && /f32/.test(e.message) &&
      /dispose/.test(e.message),
  );
});

Deno.test("tidy() frees intermediates: 1,000 iterations leave live bytes where they started", () => {
  using x = tensor(values("f32", 1000, 1));
  const before = memory().liveBytes;
  for (let i = 0; i < 1000; i++) {
    tidy(() => {
      x.mul(2).add(1).exp().cast("bf16").neg();
    });
  }
  assert.equal(memory().liveBytes, before);
  const kept = tidy(() => x.mul(2).add(1));
  assert.equal(memory().liveBytes - before, 4000, "the returned tensor survives");
  kept.dispose();
  assert.equal(memory().liveBytes, before);
});
