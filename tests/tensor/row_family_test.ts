// The lane-row family of row kernels (issue 20 item 2; tensor/ops/reduce.ts `setRowFamily`): one
// row an invocation, no workgroup memory. On any adapter it is forced with setRowFamily("lanes")
// and checked against the f64 host references and against the workgroup-memory family
// (setRowFamily("workgroup")): softmax and logSoftmax forward and backward, layer norm and RMS
// norm forward and backward, in f32 and bf16; rows longer than the loop cap and rows that are not
// whole quads fall back to the workgroup kernels; windows of rows give the bits of whole bindings.
import assert from "node:assert/strict";
import { logSoftmax, softmax, type Tensor, tensor } from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { laneRowsFor, setRowFamily } from "../../tensor/ops/reduce.ts";
import { layerNormLast, rmsNormLast } from "../../tensor/ops/norm.ts";
import { normRef, roundTo, ulpsOff, values } from "./_reference.ts";
import { withBindingLimit } from "../_binding_limit.ts";
import { withFamily } from "../_row_family.ts";

const rt = await getRuntime();

/** Host softmax and logSoftmax of rows of `C`, in f64. */
function softmaxRef(x: ArrayLike<number>, C: number): [Float64Array, Float64Array] {
  const p = new Float64Array(x.length), lp = new Float64Array(x.length);
  for (let r = 0; r < x.length / C; r++) {
    let m = -Infinity;
    for (let j = 0; j < C; j++) m = Math.max(m, x[r * C + j]);
    let s = 0;
    for (let j = 0; j < C; j++) s += Math.exp(x[r * C + j] - m);
    for (let j = 0; j < C; j++) {
      p[r * C + j] = Math.exp(x[r * C + j] - m) / s;
      lp[r * C + j] = x[r * C + j] - m - Math.log(s);
    }
  }
  return [p, lp];
}

/** Host input gradients of softmax (`y` its output) and logSoftmax (`y` its output) for `g`. */
function softmaxGradRef(
  y: ArrayLike<number>,
  g: ArrayLike<number>,
  C: number,
  log: boolean,
): Float64Array {
  const dx = new Float64Array(y.length);
  for (let r = 0; r < y.length / C; r++) {
    let s = 0;
    for (let j = 0; j < C; j++) s += log ? g[r * C + j] : g[r * C + j] * y[r * C + j];
    for (let j = 0; j < C; j++) {
      const i = r * C + j;
      dx[i] = log ? g[i] - Math.exp(y[i]) * s : y[i] * (g[i] - s);
    }
  }
  return dx;
}

/** `got` within `abs + rel * |ref|` of `ref` (f32), or one unit in the last place of `dt`. */
function assertClose(
  what: string,
  dt: string,
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  abs: number,
  rel = 2e-6,
): void {
  assert.equal(got.length, ref.length, what);
  for (let i = 0; i < ref.length; i++) {
    const ok = dt === "f32"
      ? Math.abs(got[i] - ref[i]) <= abs + rel * Math.abs(ref[i])
      : ulpsOff(dt, got[i], roundTo(dt, [ref[i]])[0]) <= 1 || Math.abs(got[i] - ref[i]) <= abs;
    assert.ok(ok, `${what}[${i}]: got ${got[i]}, reference ${ref[i]} (${dt})`);
  }
}

/** The largest difference between two arrays. */
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Softmax and logSoftmax rows and their input gradients under one family. */
async function softmaxRun(xv: Float32Array, gv: Float32Array, C: number, dt: string) {
  const rows = xv.length / C;
  const out: ArrayLike<number>[] = [];
  for (const f of [softmax, logSoftmax]) {
    const x = tensor(xv, { shape: [rows, C], dtype: dt, requiresGrad: true });
    const y = f(x, -1);
    y.backward(tensor(gv, { shape: [rows, C], dtype: dt }));
    out.push(await y.toArray(), await x.grad!.toArray());
    for (const t of [x.grad!, x, y]) t.dispose();
  }
  return out;
}

/** A norm's output and its x, w (and b) gradients under one family. */
async function normRun(
  norm: "ln" | "rms",
  xv: Float32Array,
  wv: Float32Array,
  bv: Float32Array,
  gv: Float32Array,
  C: number,
  dt: string,
) {
  const rows = xv.length / C;
  const x = tensor(xv, { shape: [rows, C], dtype: dt, requiresGrad: true });
  const w = tensor(wv, { dtype: dt, requiresGrad: true });
  const b = tensor(bv, { dtype: dt, requiresGrad: true });
  const y: Tensor = norm === "ln" ? layerNormLast(x, w, b, 1e-5) : rmsNormLast(x, w, 1e-6);
  y.backward(tensor(gv, { shape: [rows, C], dtype: dt }));
  const res = [await y.toArray(), await x.grad!.toArray(), await w.grad!.toArray()];
  if (norm === "ln") res.push(await b.grad!.toArray());
  for (const t of [x.grad!, w.grad!, b.grad, x, w, b, y]) t?.dispose();
  return res;
}

Deno.test("laneRowsFor: CPU adapters by default, whole quads only, rows under the loop cap", () => {
  assert.equal(laneRowsFor(rt, 64), rt.info.isFallbackAdapter);
  const before = setRowFamily("lanes");
  try {
    assert.equal(laneRowsFor(rt, 64), true);
    assert.equal(laneRowsFor(rt, 6), false);
    const cap = rt.maxLoopIterations;
    rt.maxLoopIterations = 10;
    try {
      assert.equal(laneRowsFor(rt, 36), true); // 9 quads
      assert.equal(laneRowsFor(rt, 40), false); // 10 quads: the workgroup kernels
    } finally {
      rt.maxLoopIterations = cap;
    }
    setRowFamily("workgroup");
    assert.equal(laneRowsFor(rt, 64), false);
  } finally {
    setRowFamily(before);
  }
  assert.throws(() => setRowFamily("texture" as "lanes"), /auto, workgroup or lanes/);
});

Deno.test("softmax and logSoftmax of the lane-row family match the reference and the workgroup family, forward and backward", async () => {
  let seed = 300, differ = 0;
  for (const dt of ["f32", "bf16"]) {
    for (const [rows, C] of [[1, 4], [37, 64], [5, 1028], [17, 12]]) {
      const xv = values(dt, rows * C, seed++, -6, 6), gv = values(dt, rows * C, seed++, -1, 1);
      const lanes = await withFamily("lanes", () => softmaxRun(xv, gv, C, dt));
      const wg = await withFamily("workgroup", () => softmaxRun(xv, gv, C, dt));
      const [p, lp] = softmaxRef(xv, C);
      const what = `${dt} ${rows}x${C}`;
      assertClose(`softmax ${what}`, dt, lanes[0], p, 1e-7, 4e-6);
      assertClose(`logSoftmax ${what}`, dt, lanes[2], lp, 4e-6, 4e-6);
      // the gradients from the outputs the kernels saw
      assertClose(
        `softmax grad ${what}`,
        dt,
        lanes[1],
        softmaxGradRef(lanes[0], gv, C, false),
        1e-6,
        4e-6,
      );
      assertClose(
        `logSoftmax grad ${what}`,
        dt,
        lanes[3],
        softmaxGradRef(lanes[2], gv, C, true),
        1e-5,
        4e-6,
      );
      lanes.forEach((a, k) => {
        const d = maxDiff(a, wg[k]);
        differ = Math.max(differ, d);
        assert.ok(dt !== "f32" || d <= 1e-5, `${what} output ${k}: families differ by ${d}`);
        if (dt === "bf16") {
          for (let i = 0; i < a.length; i++) {
            assert.ok(
              ulpsOff(dt, a[i], wg[k][i]) <= 1 || Math.abs(a[i] - wg[k][i]) <= 1e-5,
              `${what} output ${k}[${i}]: ${a[i]} vs ${wg[k][i]}`,
            );
          }
        }
      });
    }
  }
  // the families sum in other orders: some bits differ (the lane-row kernels ran)
  assert.ok(differ > 0, "the lane-row family gave the workgroup family's bits everywhere");
});

Deno.test("layerNorm and rmsNorm of the lane-row family match the reference and the workgroup family, forward and backward", async () => {
  let seed = 400;
  for (const dt of ["f32", "bf16"]) {
    for (const [rows, C] of [[1, 4], [33, 64], [3, 1028], [19, 12]]) {
      const xv = values(dt, rows * C, seed++, -3, 3), gv = values(dt, rows * C, seed++, -1, 1);
      const wv = values(dt, C, seed++, 0.5, 1.5), bv = values(dt, C, seed++, -1, 1);
      for (const norm of ["ln", "rms"] as const) {
        const lanes = await withFamily("lanes", () => normRun(norm, xv, wv, bv, gv, C, dt));
        const wg = await withFamily("workgroup", () => normRun(norm, xv, wv, bv, gv, C, dt));
        const ref = normRef(
          norm,
          xv,
          C,
          wv,
          norm === "ln" ? bv : null,
          norm === "ln" ? 1e-5 : 1e-6,
          gv,
        );
        const what = `${norm} ${dt} ${rows}x${C}`;
        const tol = dt === "f32" ? 2e-6 : 0;
        assertClose(`${what} y`, dt, lanes[0], ref.y, tol);
        assertClose(`${what} dx`, dt, lanes[1], ref.dx, dt === "f32" ? 1e-5 : 1e-3);
        assertClose(`${what} dw`, dt, lanes[2], ref.dw, 1e-4);
        if (norm === "ln") assertClose(`${what} db`, dt, lanes[3], ref.db, 1e-5);
        lanes.forEach((a, k) => {
          for (let i = 0; i < a.length; i++) {
            const ok = Math.abs(a[i] - wg[k][i]) <= 1e-5 + 1e-5 * Math.abs(a[i]) ||
              (dt !== "f32" && ulpsOff(dt, a[i], wg[k][i]) <= 1);
            assert.ok(ok, `${what} output ${k}[${i}]: lanes ${a[i]}, workgroup ${wg[k][i]}`);
          }
        });
      }
    }
  }
});

Deno.test("the lane-row family over windows of rows gives the bits of whole bindings", async () => {
  const rows = 400, C = 8;
  const xv = values("f32", rows * C, 501, -3, 3), gv = values("f32", rows * C, 502, -1, 1);
  const wv = values("f32", C, 503, 0.5, 1.5), bv = values("f32", C, 504, -1, 1);
  await withFamily("lanes", async () => {
    const run = async () => [
      ...(await softmaxRun(xv, gv, C, "f32")),
      ...(await normRun("ln", xv, wv, bv, gv, C, "f32")),
    ];
    const whole = await run();
    // 4 KiB bindings: 16 rows of 8 within half a window, 3,200 elements in several windows
    const windowed = await withBindingLimit(4096, run);
    whole.forEach((a, k) => assert.deepEqual(windowed[k], a, `output ${k}`));
    const [p] = softmaxRef(xv, C);
    assertClose("softmax windowed", "f32", windowed[0], p, 1e-7, 4e-6);
    assertClose(
      "layerNorm windowed",
      "f32",
      windowed[4],
      normRef("ln", xv, C, wv, bv, 1e-5).y,
      2e-6,
    );
  });
});

Deno.test("rows past the loop cap fall back to the workgroup kernels: the same results as the workgroup family", async () => {
  const rows = 9, C = 64;
  const xv = values("f32", rows * C, 601, -3, 3), gv = values("f32", rows * C, 602, -1, 1);
  const wv = values("f32", C, 603, 0.5, 1.5), bv = values("f32", C, 604, -1, 1);
  const wg = await withFamily("workgroup", async () => [
    ...(await softmaxRun(xv, gv, C, "f32")),
    ...(await normRun("ln", xv, wv, bv, gv, C, "f32")),
  ]);
  const cap = rt.maxLoopIterations;
  rt.maxLoopIterations = 8; // 16 quads a row: more than the lane-row family's loop may run
  try {
    const lanes = await withFamily("lanes", async () => [
      ...(await softmaxRun(xv, gv, C, "f32")),
      ...(await normRun("ln", xv, wv, bv, gv, C, "f32")),
    ]);
    wg.forEach((a, k) => assert.deepEqual(lanes[k], a, `output ${k}`));
  } finally {
    rt.maxLoopIterations = cap;
  }
});
