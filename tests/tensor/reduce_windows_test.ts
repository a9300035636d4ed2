// Reductions, softmax, the norms and cross-entropy on tensors larger than one storage binding
// (issue 14, item 1): the binding limit is lowered to 4 KiB so that small tensors take many
// windows, and every op, forward and backward, is checked against the same f64 host references
// as reduce_test, norm_test and loss_test. Rows that are not whole words of a packed dtype
// (bf16, e4m3) test the alignment of windows that start inside a word. Reductions whose one
// output reads more than a window (over a non-last axis, over everything) take partial
// results; the row ops (softmax, norms, loss) give the same bits as with whole bindings.
import assert from "node:assert/strict";
import {
  argmax,
  DeviceError,
  type DType,
  dtype,
  logSoftmax,
  logsumexp,
  max,
  mean,
  min,
  softmax,
  sum,
  type Tensor,
  tensor,
} from "../../mod.ts";
import { getRuntime, type Runtime } from "../../gpu/mod.ts";
import { layerNormLast, rmsNormLast } from "../../tensor/ops/norm.ts";
import { crossEntropyLast } from "../../tensor/ops/loss.ts";
import { normRef, prod, reduceRef, rng, roundTo, ulpsOff, values } from "./_reference.ts";
import { withBindingLimit } from "../_binding_limit.ts";

const rt = await getRuntime();
const LIMIT = 4096;

/** Runs `fn` with the runtime's binding limit lowered to `limit` bytes, restoring it after. */
function windowed<T>(fn: (rt: Runtime) => Promise<T> | T, limit = LIMIT): Promise<T> {
  return withBindingLimit(limit, fn);
}

/** `f()`'s values and the dispatches it recorded, with the binding limit lowered. */
async function run(
  f: () => Tensor,
  limit = LIMIT,
): Promise<{ v: number[]; dispatches: number; t: Tensor }> {
  return await windowed(async () => {
    const d0 = rt.counters.dispatches;
    const t = f();
    const dispatches = rt.counters.dispatches - d0;
    return { v: Array.from(await t.toArray()), dispatches, t };
  }, limit);
}

// ---- reductions ---------------------------------------------------------------------------------

const maxOf = (v: number[]) => v.reduce((a, b) => (a >= b ? a : b), -Infinity);
const REF = {
  sum: (v: number[]) => v.reduce((a, b) => a + b, 0),
  mean: (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length,
  max: maxOf,
  min: (v: number[]) => v.reduce((a, b) => (a <= b ? a : b), Infinity),
  argmax: (v: number[]) => v.indexOf(maxOf(v)),
  lse: (v: number[]) => {
    const m = maxOf(v);
    return m + Math.log(v.reduce((a, b) => a + Math.exp(b - m), 0));
  },
};
type RedOp = keyof typeof REF;

/** Absolute error allowed for the f32 result before its rounding (sums: chains, trees, passes). */
function tolerance(op: RedOp, v: number[], ref: number): number {
  const eps = 2 ** -24;
  const sumAbs = v.reduce((a, b) => a + Math.abs(b), 0);
  const terms = Math.ceil(v.length / 64) + 24;
  if (op === "sum") return terms * eps * sumAbs;
  if (op === "mean") return (terms * eps * sumAbs) / v.length + 3 * eps * Math.abs(ref);
  if (op === "lse") return 8 * eps * (maxOf(v.map(Math.abs)) + Math.abs(ref)) + 4e-6;
  return 0; // max, min, argmax: exact
}

/** Whether `got` is what rounding an f32 value within `tol` of `ref` to `dt` can give. */
function within(dt: DType, got: number, ref: number, tol: number): boolean {
  const rnd = (v: number) => roundTo(dt.name, [v])[0];
  if (tol === 0) return got === (dt.kind === "int" ? ref : rnd(ref));
  return got >= rnd(ref - tol * 1.01) && got <= rnd(ref + tol * 1.01);
}

const OPS: Record<RedOp, (x: Tensor, axis: number | number[] | undefined) => Tensor> = {
  sum: (x, a) => sum(x, a),
  mean: (x, a) => mean(x, a),
  max: (x, a) => max(x, a),
  min: (x, a) => min(x, a),
  argmax: (x, a) => argmax(x, a as number | undefined),
  lse: (x, a) => logsumexp(x, a ?? x.shape.map((_, d) => d)),
};

async function checkReduce(
  name: string,
  shape: number[],
  axis: number | number[] | undefined,
  ops: RedOp[],
  seed: number,
): Promise<void> {
  const dt = dtype(name);
  const n = prod(shape);
  const xv = dt.kind === "int"
    ? Float32Array.from({ length: n }, (_, i) => ((i * 7919 + seed) % 2001) - 1000)
    : values(name, n, seed, -3, 3);
  const x = tensor(dt.kind === "int" ? Int32Array.from(xv) : xv, { shape, dtype: name });
  const axes = axis === undefined
    ? shape.map((_, d) => d)
    : (typeof axis === "number" ? [axis] : axis).map((a) => (a < 0 ? a + shape.length : a));
  for (const op of ops) {
    const what = `${op}(${name} ${JSON.stringify(shape)}, axis ${JSON.stringify(axis)})`;
    const { v, dispatches, t } = await run(() => OPS[op](x, axis));
    assert.ok(dispatches >= 2, `${what}: windows or parts take several dispatches`);
    const outDt = op === "argmax"
      ? dtype("i32")
      : dt.kind === "int" && op !== "mean"
      ? dt
      : dt.kind === "int"
      ? dtype("f32")
      : dt;
    let i = 0;
    reduceRef(xv, shape, axes, (vals) => {
      const ref = REF[op](vals);
      const tol = tolerance(op, vals, ref);
      assert.ok(
        within(outDt, v[i], ref, tol),
        `${what}[${i}]: got ${v[i]}, reference ${ref} (tolerance ${tol})`,
      );
      i++;
      return ref;
    });
    assert.equal(i, v.length, what);
    t.dispose();
  }
  x.dispose();
}

Deno.test("reductions over the last axis read windows of rows, in f32, bf16 and e4m3 (rows inside words)", async () => {
  const all: RedOp[] = ["sum", "mean", "max", "min", "argmax", "lse"];
  await checkReduce("f32", [40, 300], -1, all, 1);
  await checkReduce("bf16", [37, 129], 1, ["sum", "max", "lse", "argmax"], 2);
  await checkReduce("e4m3", [67, 131], 1, ["sum", "mean", "min"], 3);
});

Deno.test("reductions whose one output reads more than a window take partial results: non-last axes and everything", async () => {
  const all: RedOp[] = ["sum", "mean", "max", "min", "argmax", "lse"];
  await checkReduce("f32", [300, 40], 0, all, 4); // a column spans 11,961 elements
  await checkReduce("f32", [10_000], undefined, all, 5);
  await checkReduce("bf16", [131, 37], 0, ["sum", "argmax", "max"], 6);
  // two reduced dims: parts split the outer one ([0, 2] of [30, 7, 50]) or, when one row of
  // the inner one is too long for a split of the outer, the inner one ([6, 3, 5000] of e4m3, 3,836 to a window)
  await checkReduce("f32", [30, 7, 50], [0, 2], ["sum", "mean", "max", "lse"], 7);
  await checkReduce("e4m3", [6, 3, 5000], [0, 2], ["mean", "min"], 8);
  await checkReduce("i32", [50, 100], 0, ["sum", "max", "argmax", "mean"], 9);
});

Deno.test("a long reduction into one output takes the same parts windowed as whole: the same bits", async () => {
  const x = tensor(values("f32", 40_000, 10, -3, 3)); // parts of 4,000: each fits a 64 KiB window
  for (const f of [(t: Tensor) => sum(t), (t: Tensor) => mean(t), (t: Tensor) => max(t)]) {
    const w = await run(() => f(x), 65536);
    assert.ok(w.dispatches >= 3, "parts, windows, then the parts reduced");
    const whole = f(x);
    assert.deepEqual(w.v, Array.from(await whole.toArray()));
    w.t.dispose();
    whole.dispose();
  }
  x.dispose();
});

Deno.test("argmax over partial results keeps the first of tied maxima and the first NaN", async () => {
  const n = 5000;
  const xv = new Float32Array(n);
  xv[1200] = 7, xv[3100] = 7; // tied maxima in different parts
  const { v } = await run(() => argmax(tensor(xv)));
  assert.deepEqual(v, [1200]);
  xv[4000] = NaN, xv[4500] = NaN;
  const r = await run(() => argmax(tensor(xv)));
  assert.deepEqual(r.v, [4000]);
  const m = await run(() => max(tensor(xv)));
  assert.ok(Number.isNaN(m.v[0]));
});

// ---- softmax ------------------------------------------------------------------------------------

/** Host softmax and logSoftmax along `axis` of `shape`. */
function softmaxRef(x: ArrayLike<number>, shape: number[], axis: number) {
  const p = new Float64Array(x.length), lp = new Float64Array(x.length);
  forRows(shape, axis, (idx) => {
    const lse = REF.lse(idx.map((k) => x[k]));
    idx.forEach((k) => (lp[k] = x[k] - lse, p[k] = Math.exp(x[k] - lse)));
  });
  return { p, lp };
}

/**
 * Host backward of softmax (`log` false) or logSoftmax from the forward output `y` (as the
 * kernels take it, rounded to the dtype) and the seed `g`.
 */
function softmaxGradRef(
  y: number[],
  g: ArrayLike<number>,
  shape: number[],
  axis: number,
  log: boolean,
) {
  const d = new Float64Array(y.length);
  forRows(shape, axis, (idx) => {
    if (log) {
      const sg = idx.reduce((a, k) => a + g[k], 0);
      idx.forEach((k) => (d[k] = g[k] - Math.exp(y[k]) * sg));
    } else {
      const sgy = idx.reduce((a, k) => a + g[k] * y[k], 0);
      idx.forEach((k) => (d[k] = y[k] * (g[k] - sgy)));
    }
  });
  return d;
}

/** Calls `f` with the flat indices of each row along `axis` of `shape`. */
function forRows(shape: number[], axis: number, f: (idx: number[]) => void): void {
  const st = prod(shape.slice(axis + 1)), L = shape[axis];
  for (let i = 0; i < prod(shape); i++) {
    if (Math.floor(i / st) % L === 0) f(Array.from({ length: L }, (_, j) => i + j * st));
  }
}

function assertNear(
  what: string,
  name: string,
  got: number[],
  ref: ArrayLike<number>,
  abs: number,
) {
  assert.equal(got.length, ref.length, what);
  for (let i = 0; i < ref.length; i++) {
    const r = roundTo(name, [ref[i]])[0];
    const ok = Math.abs(got[i] - ref[i]) <= abs + 4e-6 * Math.abs(ref[i]) ||
      (name !== "f32" && ulpsOff(name, got[i], r) <= 1);
    assert.ok(ok, `${what}[${i}]: got ${got[i]}, reference ${ref[i]} (${name})`);
  }
}

Deno.test("softmax and logSoftmax, forward and backward, over windows of rows give the bits of whole bindings", async () => {
  const cases: [string, number[], number, number][] = [
    ["f32", [50, 77], 1, LIMIT], // rows of 77 f32
    ["bf16", [41, 130], 1, LIMIT], // rows of whole words
    // rows inside words: computed in f32, then rounded by the elementwise cast, whose
    // workgroups read 16 KiB of f32 each
    ["e4m3", [260, 131], 1, 32768],
    ["f32", [4, 10, 100], 1, LIMIT], // strided rows along a non-last axis
    ["f32", [70, 20], 1, LIMIT], // rows of whole quads: 16 rows a workgroup, vec4 loads
    ["bf16", [120, 24], 1, LIMIT],
  ];
  let seed = 20;
  for (const [name, shape, axis, limit] of cases) {
    const n = prod(shape);
    const xv = values(name, n, seed++, -3, 3), gv = values(name, n, seed++, -1, 1);
    const x = tensor(xv, { shape, dtype: name, requiresGrad: true });
    const g = tensor(gv, { shape, dtype: name });
    const ref = softmaxRef(xv, shape, axis);
    for (const [op, f] of [["softmax", softmax], ["logSoftmax", logSoftmax]] as const) {
      const what = `${op} ${name} ${JSON.stringify(shape)} axis ${axis}`;
      const y = await run(() => f(x, axis), limit);
      assert.ok(y.dispatches >= 2, `${what}: several windows`);
      const gx = await run(() => y.t.node!.backward(g)[0]!, limit);
      assertNear(what, name, y.v, op === "softmax" ? ref.p : ref.lp, 2e-6);
      const dref = softmaxGradRef(y.v, gv, shape, axis, op === "logSoftmax");
      assertNear(`${what} backward`, name, gx.v, dref, 1e-5);
      // the same bits as one dispatch over whole bindings
      const whole = f(x, axis);
      assert.deepEqual(y.v, Array.from(await whole.toArray()), `${what}: windows change no bit`);
      const wg = whole.node!.backward(g)[0]!;
      assert.deepEqual(gx.v, Array.from(await wg.toArray()), `${what} backward: no bit`);
      for (const t of [y.t, gx.t, whole, wg]) t.dispose();
    }
    x.dispose();
    g.dispose();
  }
});

Deno.test("a row longer than one window is a DeviceError naming the op and operand", async () => {
  await windowed(() => {
    const x = tensor(new Float32Array(3000), { shape: [1, 3000] });
    assert.throws(
      () => softmax(x),
      (e: unknown) => e instanceof DeviceError && /softmax.*'x0' operand/.test(e.message),
    );
    x.dispose();
  });
});

// ---- layer norm and RMS norm -------------------------------------------------------------------

Deno.test("layerNorm and rmsNorm, forward and backward, over windows of rows give the reference and the bits of whole bindings", async () => {
  const cases: [string, number, number, boolean][] = [
    ["f32", 40, 77, true], // fused rows; dw and db over 4 chunks of rows, carried in f32
    ["bf16", 37, 129, true], // rows inside words: statistics, then the output by words
    ["f16", 33, 101, true],
    ["e4m3", 45, 131, false], // forward only: e4m3 gradients are too coarse for the reference
    ["f32", 100, 20, true], // rows of whole quads: 16 rows a workgroup, vec4 loads and stores
    ["bf16", 150, 24, true],
  ];
  let seed = 40;
  for (const [name, rows, C, grads] of cases) {
    const xv = values(name, rows * C, seed++, -2, 2), gv = values(name, rows * C, seed++);
    const wv = values(name, C, seed++, 0.5, 1.5), bv = values(name, C, seed++);
    const x = tensor(xv, { shape: [rows, C], dtype: name, requiresGrad: true });
    const w = tensor(wv, { dtype: name, requiresGrad: true });
    const b = tensor(bv, { dtype: name, requiresGrad: true });
    const g = tensor(gv, { shape: [rows, C], dtype: name });
    for (const norm of ["ln", "rms"] as const) {
      const what = `${norm} ${name} [${rows}, ${C}]`;
      const eps = norm === "ln" ? 1e-5 : 1e-6;
      const f = () => norm === "ln" ? layerNormLast(x, w, b, eps) : rmsNormLast(x, w, eps);
      const ref = normRef(norm, xv, C, wv, norm === "ln" ? bv : null, eps, gv);
      const y = await run(f);
      assert.ok(y.dispatches >= 2, `${what}: several windows`);
      assertNear(what, name, y.v, ref.y, name === "f32" ? 4e-6 : 0);
      const whole = f();
      assert.deepEqual(y.v, Array.from(await whole.toArray()), `${what}: windows change no bit`);
      if (grads) {
        const got = await windowed(async () => {
          const gs = y.t.node!.backward(g);
          const v = await Promise.all(gs.map((t) => t!.toArray()));
          gs.forEach((t) => t!.dispose());
          return v.map((a) => Array.from(a));
        });
        const gw = whole.node!.backward(g);
        const want = await Promise.all(gw.map((t) => t!.toArray()));
        gw.forEach((t) => t!.dispose());
        assertNear(`${what} dx`, name, got[0], ref.dx, 2e-5);
        assertNear(`${what} dw`, name, got[1], ref.dw, 1e-5 * rows);
        if (norm === "ln") assertNear(`${what} db`, name, got[2], ref.db, 1e-5 * rows);
        got.forEach((v, k) => assert.deepEqual(v, Array.from(want[k]), `${what} grad ${k}`));
      }
      y.t.dispose();
      whole.dispose();
    }
    for (const t of [x, w, b, g]) t.dispose();
  }
});

// ---- cross-entropy -------------------------------------------------------------------------------

/** Host cross-entropy in f64: the mean loss and d(loss)/d(logits) for a seed gradient `g`. */
function lossRef(z: ArrayLike<number>, C: number, t: readonly number[], ignore: number, g: number) {
  const N = t.length;
  let total = 0, count = 0;
  const grad = new Float64Array(N * C);
  const lse: number[] = [];
  for (let r = 0; r < N; r++) {
    const row = Array.from({ length: C }, (_, j) => z[r * C + j]);
    lse.push(REF.lse(row));
    if (t[r] === ignore) continue;
    total += lse[r] - row[t[r]];
    count++;
  }
  for (let r = 0; r < N; r++) {
    if (t[r] === ignore) continue;
    for (let j = 0; j < C; j++) {
      grad[r * C + j] = (Math.exp(z[r * C + j] - lse[r]) - (j === t[r] ? 1 : 0)) * g / count;
    }
  }
  return { loss: total / count, grad };
}

Deno.test("crossEntropy over windows of rows, its mean over chunks of rows, and its gradient give the reference and the bits of whole bindings", async () => {
  const cases: [string, number, number][] = [
    ["f32", 300, 37], // logits by windows of rows
    ["f32", 2000, 5], // targets and row losses larger than one binding: the mean in chunks
    ["bf16", 1100, 7], // odd rows of a packed dtype
    ["e4m3", 257, 33],
  ];
  let seed = 60;
  for (const [name, N, C] of cases) {
    const what = `crossEntropy ${name} [${N}, ${C}]`;
    const zv = values(name, N * C, seed++, -4, 4);
    const r = rng(seed++);
    const t = Array.from({ length: N }, (_, i) => (i % 7 === 3 ? -100 : Math.floor(r() * C)));
    const z = tensor(zv, { shape: [N, C], dtype: name, requiresGrad: true });
    const tg = tensor(Int32Array.from(t));
    const f = () => crossEntropyLast(z, tg, { ignoreIndex: -100 });
    const ref = lossRef(zv, C, t, -100, 2.5);
    const y = await run(f);
    assert.ok(y.dispatches >= 3, `${what}: several windows`);
    const seedG = tensor(2.5);
    const dz = await run(() => y.t.node!.backward(seedG)[0]!);
    assert.ok(dz.dispatches >= 2, `${what} backward: several windows`);
    assertNear(what, name, y.v, [ref.loss], 1e-5);
    assertNear(`${what} grad`, name, dz.v, ref.grad, 1e-7);
    const whole = f();
    assert.deepEqual(y.v, Array.from(await whole.toArray()), `${what}: windows change no bit`);
    const wdz = whole.node!.backward(seedG)[0]!;
    assert.deepEqual(dz.v, Array.from(await wdz.toArray()), `${what} backward: no bit`);
    for (const x of [z, tg, seedG, y.t, dz.t, whole, wdz]) x.dispose();
  }
});

Deno.test("work beyond one submission's budget is cut into more dispatches with the same bits: norm gradients by chunks of rows", async () => {
  const rows = 24, C = 50;
  const xv = values("f32", rows * C, 90, -2, 2), gv = values("f32", rows * C, 91);
  const x = tensor(xv, { shape: [rows, C], requiresGrad: true });
  const w = tensor(values("f32", C, 92, 0.5, 1.5), { requiresGrad: true });
  const b = tensor(values("f32", C, 93), { requiresGrad: true });
  const g = tensor(gv, { shape: [rows, C] });
  const grads = async (budget: number) => {
    const before = rt.maxBatchCost;
    rt.maxBatchCost = budget;
    try {
      const y = layerNormLast(x, w, b);
      const d0 = rt.counters.dispatches;
      const gs = y.node!.backward(g);
      const dispatches = rt.counters.dispatches - d0;
      const v = await Promise.all(gs.map((t) => t!.toArray()));
      for (const t of [y, ...gs]) t!.dispose();
      return { v: v.map((a) => Array.from(a)), dispatches };
    } finally {
      rt.maxBatchCost = before;
    }
  };
  const whole = await grads(rt.maxBatchCost);
  const cut = await grads(2000); // 4 rows of 50 columns per dispatch of dw and db
  assert.equal(whole.dispatches, 2, "dx, then dw and db");
  assert.ok(cut.dispatches >= 2 + rows / 4, `${cut.dispatches} dispatches`);
  assert.deepEqual(cut.v, whole.v);
  for (const t of [x, w, b, g]) t.dispose();
});

// llvmpipe (lavapipe and GL) ends a loop after 65,535 iterations without a word: a kernel whose
// one invocation loops over 64 * 65,535 elements (or rows) would silently drop the rest.
Deno.test("reductions longer than an invocation's loop may run take parts: argmax, max and logsumexp of 4.5M elements", async () => {
  const n = 4_500_000;
  const xv = values("f32", n, 100, -3, 3);
  xv[4_400_000] = 5; // beyond 64 * 65,535 elements from the start
  const x = tensor(xv);
  const [am, mx, lse] = await Promise.all([argmax(x).item(), max(x).item(), logsumexp(x).item()]);
  assert.equal(am, 4_400_000);
  assert.equal(mx, 5);
  let t = 0;
  for (let i = 0; i < n; i++) t += Math.exp(xv[i] - 5);
  const ref = 5 + Math.log(t);
  assert.ok(Math.abs(lse - ref) <= 1e-5 * Math.abs(ref), `logsumexp ${lse} vs ${ref}`);
  x.dispose();
});

Deno.test("norm gradients over more rows than an invocation's loop may run are the f32 sums of every row", async () => {
  const rows = 40_000, C = 8;
  const x = tensor(values("f32", rows * C, 101, -2, 2), { shape: [rows, C], requiresGrad: true });
  const w = tensor(new Float32Array(C).fill(1), { requiresGrad: true });
  const b = tensor(new Float32Array(C), { requiresGrad: true });
  const y = layerNormLast(x, w, b);
  const yv = await y.toArray(); // xhat, as the backward pass recomputes it
  const [, dw, db] = y.node!.backward(
    tensor(new Float32Array(rows * C).fill(1), { shape: [rows, C] }),
  );
  const [gw, gb] = await Promise.all([dw!.toArray(), db!.toArray()]);
  for (let j = 0; j < C; j++) {
    let s = 0;
    for (let r = 0; r < rows; r++) s = Math.fround(s + yv[r * C + j]); // the kernel's order
    assert.equal(gw[j], s, `dw[${j}]`);
    assert.equal(gb[j], rows, `db[${j}]`);
  }
  for (const t of [x, w, b, y, dw!, db!]) t.dispose();
});
