// Reductions and softmax against an f64 host reference rounded to the storage dtype, on the
// real adapter: every float storage dtype, sizes that are not multiples of the workgroup,
// any axes, NaN, ties, large values, and gradients against central finite differences.
import assert from "node:assert/strict";
import {
  argmax,
  type DType,
  dtype,
  logSoftmax,
  logsumexp,
  max,
  mean,
  min,
  ShapeError,
  softmax,
  sum,
  type Tensor,
  tensor,
  ValueError,
} from "../../mod.ts";
import { currentRuntime } from "../../gpu/mod.ts";
import { sumTo } from "../../tensor/mod.ts";
import { prod, reduceRef, rng } from "./_reference.ts";

const FLOATS = ["f32", "f16", "bf16", "e4m3", "e5m2", "e8m3", "bf16x2"];

/** `v` rounded to the dtype (through f32, as the kernels round). */
function rnd(dt: DType, v: number): number {
  if (dt.name === "f32") return Math.fround(v);
  return dt.decode(dt.encode(new Float32Array([v])))[0];
}

/** `n` random values in [-amp, amp], representable in the dtype. */
function values(dt: DType, n: number, r: () => number, amp = 2): Float32Array {
  const v = Float32Array.from({ length: n }, () => (2 * r() - 1) * amp);
  return dt.name === "f32" ? v : dt.decode(dt.encode(v));
}

const REF = {
  sum: (v: number[]) => v.reduce((a, b) => a + b, 0),
  mean: (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length,
  max: (v: number[]) => (v.some(Number.isNaN) ? NaN : Math.max(...v)),
  min: (v: number[]) => (v.some(Number.isNaN) ? NaN : Math.min(...v)),
  argmax: (v: number[]) => {
    const nan = v.findIndex(Number.isNaN);
    if (nan >= 0) return nan;
    return v.indexOf(Math.max(...v));
  },
  lse: (v: number[]) => {
    const m = REF.max(v);
    if (!Number.isFinite(m)) return m;
    return m + Math.log(v.reduce((a, b) => a + Math.exp(b - m), 0));
  },
};

/** Absolute error allowed for the f32 result before its final rounding. */
function tolerance(op: string, v: number[], ref: number): number {
  const eps = 2 ** -24;
  const sumAbs = v.reduce((a, b) => a + Math.abs(b), 0);
  const terms = Math.ceil(v.length / 64) + 12; // strided chain + tree + second pass
  if (op === "sum") return terms * eps * sumAbs;
  if (op === "mean") return (terms * eps * sumAbs) / v.length + 3 * eps * Math.abs(ref);
  if (op === "lse") {
    return 4 * eps * (Math.abs(REF.max(v)) + Math.abs(ref)) + 2e-6 * (1 + Math.log(v.length));
  }
  return 0; // max, min, argmax: exact
}

/** Whether `got` is what rounding an f32 value within `tol` of `ref` to the dtype can give. */
function within(dt: DType, got: number, ref: number, tol: number): boolean {
  if (Number.isNaN(ref)) return Number.isNaN(got);
  if (!Number.isFinite(ref)) return got === ref;
  if (tol === 0) return got === rnd(dt, ref);
  return got >= rnd(dt, ref - tol * 1.01) && got <= rnd(dt, ref + tol * 1.01);
}

type RedOp = "sum" | "mean" | "max" | "min" | "lse";
const RUN: Record<RedOp, (x: Tensor, a: number | number[] | undefined, k: boolean) => Tensor> = {
  sum: (x, a, k) => sum(x, a, k),
  mean: (x, a, k) => mean(x, a, k),
  max: (x, a, k) => max(x, a, k),
  min: (x, a, k) => min(x, a, k),
  lse: (x, a, k) => logsumexp(x, a ?? x.shape.map((_, d) => d), k),
};

function normAxes(shape: readonly number[], axis: number | number[] | undefined): number[] {
  if (axis === undefined) return shape.map((_, d) => d);
  return (typeof axis === "number" ? [axis] : axis)
    .map((a) => (a < 0 ? a + shape.length : a))
    .sort((a, b) => a - b);
}

function expectShape(shape: readonly number[], axes: number[], keepDims: boolean): number[] {
  return keepDims
    ? shape.map((v, d) => (axes.includes(d) ? 1 : v))
    : shape.filter((_, d) => !axes.includes(d));
}

interface Case {
  op: RedOp;
  dt: DType;
  x: Float32Array;
  shape: number[];
  axis: number | number[] | undefined;
  keepDims: boolean;
}

/** Runs all cases (one readback), checks values, shapes and dtypes against the reference. */
async function checkCases(cases: Case[]): Promise<void> {
  const outs = cases.map((c) => {
    const t = tensor(c.x, { shape: c.shape, dtype: c.dt });
    const y = RUN[c.op](t, c.axis, c.keepDims);
    t.dispose();
    return y;
  });
  const got = await Promise.all(outs.map((y) => y.toArray()));
  cases.forEach((c, k) => {
    const axes = normAxes(c.shape, c.axis);
    const what = `${c.op}(${c.dt.name} ${JSON.stringify(c.shape)}, axis ${
      JSON.stringify(c.axis)
    }, keepDims ${c.keepDims})`;
    assert.deepEqual(outs[k].shape, expectShape(c.shape, axes, c.keepDims), what);
    assert.equal(outs[k].dtype, c.dt.name, what);
    const refs: number[] = [], tols: number[] = [];
    reduceRef(c.x, c.shape, axes, (v) => {
      const ref = REF[c.op](v);
      refs.push(ref);
      tols.push(tolerance(c.op, v, ref));
      return ref;
    });
    assert.equal(got[k].length, refs.length, what);
    refs.forEach((ref, i) => {
      assert.ok(
        within(c.dt, got[k][i], ref, tols[i]),
        `${what}[${i}]: got ${got[k][i]}, reference ${ref} (tolerance ${tols[i]})`,
      );
    });
    outs[k].dispose();
  });
}

Deno.test("sum, mean, max, min and logsumexp of 1, 3, 17 and 1000 elements match the reference in every float dtype", async () => {
  const r = rng(1);
  for (const name of FLOATS) {
    const dt = dtype(name);
    const cases: Case[] = [];
    for (const n of [1, 3, 17, 1000]) {
      const x = values(dt, n, r);
      for (const op of ["sum", "mean", "max", "min", "lse"] as const) {
        cases.push({ op, dt, x, shape: [n], axis: undefined, keepDims: false });
      }
    }
    await checkCases(cases);
  }
});

Deno.test("reductions of [3,17,5] over axes 0, 1, 2, [0,2], negative axes and all axes keep or drop dims", async () => {
  const r = rng(2);
  const shape = [3, 17, 5];
  const axesList: (number | number[] | undefined)[] = [0, 1, 2, [0, 2], undefined, -1, [-3, -2]];
  for (const name of FLOATS) {
    const dt = dtype(name);
    const x = values(dt, prod(shape), r);
    const cases: Case[] = [];
    for (const op of ["sum", "mean", "max", "min", "lse"] as const) {
      for (const axis of axesList) {
        for (const keepDims of [false, true]) cases.push({ op, dt, x, shape, axis, keepDims });
      }
    }
    await checkCases(cases);
  }
});

Deno.test("negative axes reduce the same dimensions as their positive counterparts", async () => {
  const x = tensor(values(dtype("f32"), 60, rng(3)), { shape: [3, 4, 5] });
  const pairs: [number | number[], number | number[]][] = [[-1, 2], [-2, 1], [[-3, -1], [0, 2]]];
  for (const [neg, pos] of pairs) {
    for (const f of [sum, max, mean]) {
      const [a, b] = await Promise.all([f(x, neg).toArray(), f(x, pos).toArray()]);
      assert.deepEqual(Array.from(a), Array.from(b));
    }
  }
});

Deno.test("a property: random shapes, axes, keepDims and dtypes match the reference", async () => {
  const r = rng(42);
  const names = ["f32", "bf16", "e4m3", "f16", "bf16x2"];
  const ops: RedOp[] = ["sum", "mean", "max", "min", "lse"];
  const cases: Case[] = [];
  for (let k = 0; k < 60; k++) {
    const rank = 1 + Math.floor(r() * 4);
    const shape = Array.from({ length: rank }, () => 1 + Math.floor(r() * 7));
    const axes = shape.map((_, d) => d).filter(() => r() < 0.5);
    const axis = r() < 0.15
      ? undefined
      : axes.length === 1 && r() < 0.5
      ? axes[0] - (r() < 0.5 ? rank : 0)
      : axes.map((a) => (r() < 0.5 ? a - rank : a));
    const dt = dtype(names[Math.floor(r() * names.length)]);
    const op = ops[Math.floor(r() * ops.length)];
    cases.push({ op, dt, x: values(dt, prod(shape), r), shape, axis, keepDims: r() < 0.5 });
  }
  await checkCases(cases);
});

Deno.test("long reductions into few outputs (two passes) and more than 65535 outputs are right", async () => {
  const r = rng(5);
  const f32 = dtype("f32"), bf16 = dtype("bf16");
  await checkCases([
    { op: "sum", dt: f32, x: values(f32, 100_000, r), shape: [100_000], axis: 0, keepDims: false },
    {
      op: "mean",
      dt: bf16,
      x: values(bf16, 60_000, r),
      shape: [2, 30_000],
      axis: 1,
      keepDims: true,
    },
    {
      op: "max",
      dt: f32,
      x: values(f32, 60_000, r),
      shape: [3, 20_000],
      axis: -1,
      keepDims: false,
    },
    { op: "min", dt: f32, x: values(f32, 60_000, r), shape: [20_000, 3], axis: 0, keepDims: false },
    {
      op: "sum",
      dt: f32,
      x: values(f32, 140_000, r),
      shape: [70_000, 2],
      axis: 1,
      keepDims: false,
    },
    {
      op: "max",
      dt: bf16,
      x: values(bf16, 140_000, r),
      shape: [70_000, 2],
      axis: 1,
      keepDims: true,
    },
  ]);
  // softmax over 70000 rows of 2: one workgroup per row on a 2-D grid
  const x = tensor(values(f32, 140_000, r), { shape: [70_000, 2] });
  const p = await softmax(x).toArray();
  const xv = await x.toArray();
  for (let i = 0; i < 70_000; i += 997) {
    const e = Math.exp(xv[2 * i + 1] - xv[2 * i]);
    assert.ok(Math.abs(p[2 * i] - 1 / (1 + e)) < 1e-6, `row ${i}`);
  }
});

/** An f32 sum in the generic kernel's order: 64 strided chains, then their tree (f32 adds). */
function treeSum(v: number[]): number {
  const lanes = Array.from({ length: 64 }, (_, l) => {
    let a = 0;
    for (let r = l; r < v.length; r += 64) a = Math.fround(a + v[r]);
    return a;
  });
  for (let s = 32; s > 0; s >>= 1) {
    for (let i = 0; i < s; i++) lanes[i] = Math.fround(lanes[i] + lanes[i + s]);
  }
  return lanes[0];
}

Deno.test("reductions over outer dims into many outputs (the column kernel) match the reference and the generic kernel's order", async () => {
  const r = rng(11);
  const f32 = dtype("f32"), bf16 = dtype("bf16"), f16 = dtype("f16");
  const cases: Case[] = [];
  // a GPT's bias and position-embedding gradients; sizes past and short of the 64 chains;
  // outputs not a multiple of the workgroup; reduced dims around a kept one
  for (
    const [shape, axis] of [
      [[16, 64, 128], 0],
      [[1024, 384], 0],
      [[1000, 65], 0],
      [[3, 7, 100], [0, 1]],
      [[5, 64, 3, 70], [0, 2]],
      [[4096, 64], 0],
    ] as [number[], number | number[]][]
  ) {
    for (const op of ["sum", "mean", "max", "min"] as const) {
      for (const dt of op === "sum" ? [f32, bf16, f16] : [f32, bf16]) {
        cases.push({ op, dt, x: values(dt, prod(shape), r), shape, axis, keepDims: op === "max" });
      }
    }
  }
  await checkCases(cases);
  // f32 sums: the bits of the generic kernel's order (the host's f32 replay of it)
  for (
    const [shape, axis] of [[[16, 64, 128], 0], [[300, 5, 64], [0, 1]]] as [
      number[],
      number | number[],
    ][]
  ) {
    const x = values(f32, prod(shape), r);
    const t = tensor(x, { shape });
    const got = await sum(t, axis).toArray();
    const ref = reduceRef(x, shape, normAxes(shape, axis), treeSum);
    ref.forEach((v, i) => assert.equal(got[i], v, `sum ${JSON.stringify(shape)} [${i}]`));
    t.dispose();
  }
});

Deno.test("max and min propagate NaN, and argmax takes the first NaN or the first of tied maxima", async () => {
  for (const name of ["f32", "bf16", "e4m3", "f16"]) {
    const x = tensor([[1, NaN, 3], [2, 5, 5], [-Infinity, -Infinity, -Infinity]], {
      dtype: name === "e4m3" ? "e5m2" : name,
    });
    const [mx, mn, am, amAll] = await Promise.all([
      max(x, 1).toArray(),
      min(x, 1).toArray(),
      argmax(x, 1).toArray(),
      argmax(x).toArray(),
    ]);
    assert.ok(Number.isNaN(mx[0]) && Number.isNaN(mn[0]), name);
    assert.deepEqual(Array.from(mx.slice(1)), [5, -Infinity]);
    assert.deepEqual(Array.from(mn.slice(1)), [2, -Infinity]);
    assert.deepEqual(Array.from(am), [1, 1, 0]);
    assert.equal(amAll[0], 1);
  }
  const t = tensor([[3, 1], [3, 7], [2, 7]]);
  assert.deepEqual(Array.from(await argmax(t, 0).toArray()), [0, 1]);
  assert.deepEqual(Array.from(await argmax(t, -1, true).toArray()), [0, 1, 1]);
  assert.deepEqual(argmax(t, -1, true).shape, [3, 1]);
  assert.equal(argmax(t).dtype, "i32");
  assert.equal(await argmax(t).item(), 3);
  assert.deepEqual(argmax(t, undefined, true).shape, [1, 1]);
});

Deno.test("argmax matches the reference over every axis of random ties-heavy data", async () => {
  const r = rng(7);
  const shape = [4, 33, 3];
  const xs = Float32Array.from({ length: prod(shape) }, () => Math.floor(r() * 4)); // many ties
  const x = tensor(xs, { shape, dtype: "e4m3" });
  for (const axis of [0, 1, 2, -2, undefined]) {
    const got = Array.from(await argmax(x, axis).toArray());
    assert.deepEqual(got, reduceRef(xs, shape, normAxes(shape, axis), REF.argmax), `axis ${axis}`);
  }
});

Deno.test("integer and bool reductions: exact i32 sums, f32 means, max and min in the input dtype", async () => {
  const big = tensor(new Int32Array([2 ** 24, 1, 1, -5]));
  assert.equal(sum(big).dtype, "i32");
  assert.equal(await sum(big).item(), 2 ** 24 - 3);
  assert.equal(await max(tensor(new Int32Array([2 ** 24, 2 ** 24 + 1]))).item(), 2 ** 24 + 1);
  assert.equal(await min(tensor(new Int32Array([-(2 ** 31), 0]))).item(), -(2 ** 31));
  const u = tensor(new Uint32Array([4_000_000_001, 7, 4_000_000_000]));
  assert.equal(max(u).dtype, "u32");
  assert.equal(await max(u).item(), 4_000_000_001);
  assert.equal(await argmax(u).item(), 0);
  const b = tensor([[true, false, true], [true, true, true]], { dtype: "bool" });
  assert.deepEqual(Array.from(await sum(b, 1).toArray()), [2, 3]);
  assert.equal(max(b).dtype, "bool");
  assert.deepEqual(Array.from(await min(b, 1).toArray()), [0, 1]);
  const m = mean(tensor(new Int32Array([1, 2, 3, 5])));
  assert.equal(m.dtype, "f32");
  assert.equal(await m.item(), 2.75);
  const ones = tensor(new Int32Array(100_000).fill(3));
  assert.equal(await sum(ones).item(), 300_000); // the two-pass path in i32
});

Deno.test("empty reductions: sum gives 0, mean NaN, logsumexp -Infinity; max of nothing throws", async () => {
  const e = tensor([], { shape: [2, 0] });
  assert.deepEqual(Array.from(await sum(e, 1).toArray()), [0, 0]);
  assert.ok(Number.isNaN(await mean(e).item()));
  assert.deepEqual(Array.from(await logsumexp(e, 1).toArray()), [-Infinity, -Infinity]);
  assert.deepEqual(sum(e, 0).shape, [0]);
  assert.deepEqual(max(e, 0).shape, [0]);
  assert.throws(() => max(e, 1), ValueError);
  assert.throws(() => argmax(e), ValueError);
  const s = tensor(7);
  assert.equal(await sum(s).item(), 7);
  assert.equal(await softmax(s).item(), 1);
  assert.equal(await argmax(s).item(), 0);
});

/** Host softmax rows along `axis` of `shape`: [softmax, logSoftmax]. */
function softmaxRef(x: ArrayLike<number>, shape: number[], axis: number): [number[], number[]] {
  const a = axis < 0 ? axis + shape.length : axis;
  const st = prod(shape.slice(a + 1)), L = shape[a];
  const p = new Array(x.length).fill(0), lp = new Array(x.length).fill(0);
  for (let i = 0; i < x.length; i++) {
    if (Math.floor(i / st) % L !== 0) continue; // i is the start of a row
    const row = Array.from({ length: L }, (_, j) => x[i + j * st]);
    const lse = REF.lse(row);
    row.forEach((v, j) => {
      lp[i + j * st] = v - lse;
      p[i + j * st] = Math.exp(v - lse);
    });
  }
  return [p, lp];
}

Deno.test("softmax and logSoftmax match the reference in every float dtype, over any axis", async () => {
  const r = rng(11);
  const layouts: [number[], number][] = [[[3, 8], -1], [[3, 17], -1], [[3, 17, 5], 1], [
    [4, 6],
    0,
  ], [[1000], 0]];
  for (const name of FLOATS) {
    const dt = dtype(name);
    const outs: [Tensor, Tensor, Float32Array, number[], number][] = [];
    for (const [shape, axis] of layouts) {
      const xv = values(dt, prod(shape), r, 3);
      const x = tensor(xv, { shape, dtype: dt });
      outs.push([softmax(x, axis), logSoftmax(x, axis), xv, shape, axis]);
    }
    const got = await Promise.all(outs.flatMap(([p, lp]) => [p.toArray(), lp.toArray()]));
    outs.forEach(([p, lp, xv, shape, axis], k) => {
      assert.equal(p.dtype, name);
      assert.equal(lp.dtype, name);
      assert.deepEqual(p.shape, shape);
      const [pr, lpr] = softmaxRef(xv, shape, axis);
      for (let i = 0; i < xv.length; i++) {
        const what = `${name} ${JSON.stringify(shape)} axis ${axis} [${i}]`;
        const gp = got[2 * k][i], glp = got[2 * k + 1][i];
        assert.ok(within(dt, gp, pr[i], 4e-6 * pr[i]), `softmax ${what}: ${gp} vs ${pr[i]}`);
        assert.ok(
          within(dt, glp, lpr[i], 1e-6 * (1 + Math.abs(lpr[i]))),
          `logSoftmax ${what}: ${glp} vs ${lpr[i]}`,
        );
      }
    });
  }
});

Deno.test("softmax, logSoftmax and logsumexp stay finite for inputs of 1000 and -1000", async () => {
  for (const name of ["f32", "bf16", "f16", "e5m2"]) {
    const big = name === "f16" || name === "e5m2" ? 1000 : 1e30;
    const x = tensor([[1000, 1000, 999], [-1000, -1000, -1001], [big, 0, -big]], { dtype: name });
    const [p, lp, l] = await Promise.all([
      softmax(x).toArray(),
      logSoftmax(x).toArray(),
      logsumexp(x, 1).toArray(),
    ]);
    for (const v of [...p, ...lp, ...l]) assert.ok(Number.isFinite(v), `${name}: ${v}`);
    const dt = dtype(name);
    const xv = await x.toArray(); // 999 is 1000 in bf16
    const [pr, lpr] = softmaxRef(xv, [3, 3], 1);
    const lr = reduceRef(xv, [3, 3], [1], REF.lse);
    for (let i = 0; i < 9; i++) {
      assert.ok(within(dt, p[i], pr[i], 4e-6 * pr[i]), `${name} p[${i}] ${p[i]} vs ${pr[i]}`);
      assert.ok(within(dt, lp[i], lpr[i], 1e-6 * (1 + Math.abs(lpr[i]))), `${name} lp[${i}]`);
    }
    assert.deepEqual(Array.from(p.slice(6)), [1, 0, 0]);
    for (let i = 0; i < 2; i++) {
      assert.ok(within(dt, l[i], lr[i], 1e-4), `${name} lse[${i}] ${l[i]} vs ${lr[i]}`);
    }
  }
  const inf = await logsumexp(tensor([[Infinity, 1], [-Infinity, -Infinity], [NaN, 1]]), 1)
    .toArray();
  assert.equal(inf[0], Infinity);
  assert.equal(inf[1], -Infinity);
  assert.ok(Number.isNaN(inf[2]));
});

Deno.test("sumTo sums leading and size-1 dimensions, and returns the gradient itself when shapes match", async () => {
  const g = tensor(Float32Array.from({ length: 24 }, (_, i) => i), { shape: [2, 3, 4] });
  assert.equal(sumTo(g, [2, 3, 4]), g);
  const cases: [number[], number[]][] = [
    [[4], [0, 1]],
    [[3, 1], [0, 2]],
    [[1, 3, 1], [0, 2]],
    [
      [2, 1, 4],
      [1],
    ],
    [[], [0, 1, 2]],
    [[1, 1, 1, 1].slice(1), [0, 1, 2]],
  ];
  const gv = await g.toArray();
  for (const [shape, axes] of cases) {
    const s = sumTo(g, shape);
    assert.deepEqual(s.shape, shape);
    assert.deepEqual(Array.from(await s.toArray()), reduceRef(gv, [2, 3, 4], axes, REF.sum));
  }
  const b = tensor([[1, 2, 3]], { dtype: "bf16" });
  assert.equal(sumTo(tensor([[1, 2, 3], [4, 5, 6]], { dtype: "bf16" }), b.shape).dtype, "bf16");
  assert.throws(() => sumTo(g, [5]), ShapeError);
  assert.throws(() => sumTo(g, [1, 2, 3, 4]), ShapeError);
});

Deno.test("an axis out of range throws a ShapeError naming the op, shape and axis, before any dispatch", () => {
  const x = tensor(new Float32Array(255), { shape: [3, 17, 5] });
  const rt = currentRuntime();
  const before = rt.counters.dispatches;
  for (
    const [f, op] of [
      [() => sum(x, 3), "sum"],
      [() => mean(x, [-4]), "mean"],
      [() => max(x, [0, 5]), "max"],
      [() => min(x, 1.5), "min"],
      [() => argmax(x, -4), "argmax"],
      [() => logsumexp(x, 7), "logsumexp"],
      [() => softmax(x, 3), "softmax"],
      [() => logSoftmax(x, -9), "logSoftmax"],
    ] as const
  ) {
    assert.throws(f, (e: Error) => {
      assert.ok(e instanceof ShapeError, `${op}: ${e}`);
      assert.ok(e.message.includes(`${op}()`), e.message);
      assert.ok(e.message.includes("[3,17,5]"), e.message);
      return true;
    });
  }
  assert.throws(() => sum(x, [1, -2]), /appears more than once/);
  assert.match(
    (() => {
      try {
        sum(x, 3);
      } catch (e) {
        return (e as Error).message;
      }
      return "";
    })(),
    /axis 3 is out of range for shape \[3,17,5\]/,
  );
  assert.equal(rt.counters.dispatches, before);
  // deno-lint-ignore no-explicit-any
  assert.throws(() => sum([1, 2] as any), ValueError);
  // deno-lint-ignore no-explicit-any
  assert.throws(() => softmax(null as any), ValueError);
});

// ---- gradients -----------------------------------------------------------------------------------

/**
 * Checks `op`'s recorded gradient at `xv` against central differences of the GPU op in f32:
 * all perturbed inputs run as one batch (a leading dimension; `lead` = 1 shifts the axes).
 */
async function gradCheck(
  what: string,
  shape: number[],
  xv: Float32Array,
  op: (t: Tensor, lead: number) => Tensor,
  h = 1e-2,
): Promise<void> {
  const x = tensor(xv, { shape, requiresGrad: true });
  const y = op(x, 0);
  assert.ok(y.node !== null, `${what}: a graph node is recorded`);
  const r = rng(99);
  const gv = Float32Array.from({ length: y.size }, () => 2 * r() - 1);
  const [gx] = y.node!.backward(tensor(gv, { shape: [...y.shape] }));
  assert.ok(gx !== null);
  assert.deepEqual(gx!.shape, shape);
  const n = xv.length, m = y.size;
  const batch = new Float32Array(2 * n * n);
  for (let i = 0; i < n; i++) {
    batch.set(xv, 2 * i * n);
    batch.set(xv, (2 * i + 1) * n);
    batch[2 * i * n + i] += h;
    batch[(2 * i + 1) * n + i] -= h;
  }
  const yb = op(tensor(batch, { shape: [2 * n, ...shape] }), 1);
  const [a, b] = await Promise.all([gx!.toArray(), yb.toArray()]);
  for (let i = 0; i < n; i++) {
    let lp = 0, lm = 0;
    for (let j = 0; j < m; j++) {
      lp += gv[j] * b[2 * i * m + j];
      lm += gv[j] * b[(2 * i + 1) * m + j];
    }
    const fd = (lp - lm) / (2 * h);
    assert.ok(
      Math.abs(a[i] - fd) <= 3e-3 * (1 + Math.abs(fd)),
      `${what}: d/dx[${i}] = ${a[i]}, finite differences ${fd}`,
    );
  }
}

const shift = (axis: number, lead: number) => (axis < 0 ? axis : axis + lead);
const all = (rank: number, lead: number) =>
  lead ? Array.from({ length: rank }, (_, d) => d + 1) : undefined;

Deno.test("gradients of sum and mean match finite differences", async () => {
  const r = rng(21);
  const xv = values(dtype("f32"), 12, r);
  await gradCheck("sum axis 1", [3, 4], xv, (t, l) => sum(t, shift(1, l)));
  await gradCheck("sum all", [3, 4], xv, (t, l) => sum(t, all(2, l)));
  await gradCheck(
    "sum [0,2] keepDims",
    [2, 3, 2],
    xv,
    (t, l) => sum(t, [0, 2].map((a) => shift(a, l)), true),
  );
  await gradCheck("mean axis 0", [3, 4], xv, (t, l) => mean(t, shift(0, l)));
  await gradCheck("mean axis -1 keepDims", [2, 3, 2], xv, (t) => mean(t, -1, true));
});

Deno.test("gradients of max, min and logsumexp match finite differences", async () => {
  const r = rng(22);
  // distinct values spaced 0.1 apart, so that a step of h does not change the maximum
  const idx = Array.from({ length: 12 }, (_, i) => i).sort(() => r() - 0.5);
  const xv = Float32Array.from(idx, (i) => (i - 6) * 0.1);
  await gradCheck("max axis 1", [3, 4], xv, (t, l) => max(t, shift(1, l)), 1e-3);
  await gradCheck("min axis 0 keepDims", [3, 4], xv, (t, l) => min(t, shift(0, l), true), 1e-3);
  await gradCheck("max all", [3, 4], xv, (t, l) => max(t, all(2, l)), 1e-3);
  const yv = values(dtype("f32"), 12, r);
  await gradCheck("logsumexp axis -1", [3, 4], yv, (t) => logsumexp(t, -1));
  await gradCheck(
    "logsumexp [0,1]",
    [2, 3, 2],
    yv,
    (t, l) => logsumexp(t, [shift(0, l), shift(1, l)]),
  );
});

Deno.test("the gradient of max is split evenly among tied maxima", async () => {
  const x = tensor([[1, 3, 3], [2, 0, 1]], { requiresGrad: true });
  const y = max(x, 1);
  const [g] = y.node!.backward(tensor([1, 1]));
  assert.deepEqual(Array.from(await g!.toArray()), [0, 0.5, 0.5, 1, 0, 0]);
  const xb = tensor([[1, 3, 3]], { dtype: "bf16", requiresGrad: true });
  const [gb] = max(xb).node!.backward(tensor(6));
  assert.equal(gb!.dtype, "bf16");
  assert.deepEqual(Array.from(await gb!.toArray()), [0, 3, 3]);
});

Deno.test("gradients of softmax and logSoftmax match finite differences, fused and composite", async () => {
  const r = rng(23);
  const xv = values(dtype("f32"), 12, r);
  await gradCheck("softmax -1", [3, 4], xv, (t) => softmax(t, -1));
  await gradCheck("softmax axis 0", [3, 4], xv, (t, l) => softmax(t, shift(0, l)));
  await gradCheck("logSoftmax -1", [3, 4], xv, (t) => logSoftmax(t, -1));
  await gradCheck("logSoftmax axis 1 of 3-d", [2, 3, 2], xv, (t, l) => logSoftmax(t, shift(1, l)));
  // a gradient that itself requires grad takes the differentiable (composite) path
  for (const f of [softmax, logSoftmax]) {
    const x = tensor(xv, { shape: [3, 4], requiresGrad: true });
    const y = f(x, 0);
    const g = tensor(values(dtype("f32"), 12, r), { shape: [3, 4] });
    const [fused] = y.node!.backward(g);
    g.requiresGrad = true;
    const [composite] = y.node!.backward(g);
    assert.ok(composite!.node !== null, "the composite gradient is recorded");
    const [a, b] = await Promise.all([fused!.toArray(), composite!.toArray()]);
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]) < 1e-6, `${f.name}[${i}] ${v} vs ${b[i]}`));
  }
});

Deno.test("no graph is recorded without requiresGrad, and gradients come back in the input's dtype", async () => {
  const x = tensor([[1, 2], [3, 4]], { dtype: "bf16" });
  assert.equal(sum(x).node, null);
  assert.equal(softmax(x).node, null);
  x.requiresGrad = true;
  const y = mean(x, 0);
  const [g] = y.node!.backward(tensor([1, 2]));
  assert.equal(g!.dtype, "bf16");
  assert.deepEqual(Array.from(await g!.toArray()), [0.5, 1, 0.5, 1]);
  const s = sumTo(tensor([[1, 2], [3, 4]], { requiresGrad: true }), [2]);
  const [gs] = s.node!.backward(tensor([5, 7]));
  assert.deepEqual(Array.from(await gs!.toArray()), [5, 7, 5, 7]);
  const [gp] = softmax(x).node!.backward(tensor([[1, 0], [0, 1]]));
  assert.equal(gp!.dtype, "bf16");
});
