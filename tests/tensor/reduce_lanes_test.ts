// The lane family of the generic reduction (issue 20; tensor/ops/reduce.ts `laneBody`): on a CPU
// adapter a sum, mean, max or min over contiguous runs of whole quads takes one invocation an
// output word, reading 16 bytes a load, no workgroup memory. It must give the generic kernel's
// bits: checked against an f32 host emulation of the generic kernel's order (64 strided chains
// and their tree, parts then partials), against the workgroup family (setRowFamily("workgroup"))
// bit for bit, with windows, and the dispatch grids show which kernel ran.
import assert from "node:assert/strict";
import { argmax, logsumexp, max, mean, min, sum, type Tensor, tensor } from "../../mod.ts";
import { getRuntime, setStaging } from "../../gpu/mod.ts";
import { reduceRef, roundTo, values } from "./_reference.ts";
import { withBindingLimit } from "../_binding_limit.ts";
import { withFamily } from "../_row_family.ts";
import { textureCopies } from "../_copies.ts";

await getRuntime();
const f = Math.fround;

/** The workgroup counts of the dispatches `fn` records. */
async function grids<T>(fn: () => Promise<T>): Promise<{ value: T; grids: number[] }> {
  const pass = GPUComputePassEncoder.prototype;
  const orig = pass.dispatchWorkgroups;
  const seen: number[] = [];
  pass.dispatchWorkgroups = function (
    this: GPUComputePassEncoder,
    x: number,
    y?: number,
    z?: number,
  ) {
    seen.push(x * (y ?? 1) * (z ?? 1));
    return orig.call(this, x, y, z);
  };
  try {
    return { value: await fn(), grids: seen };
  } finally {
    pass.dispatchWorkgroups = orig;
  }
}

/** f32 sum of `v` in the generic kernel's order: 64 strided chains from +0, then their tree. */
function chainTreeSum(v: ArrayLike<number>): number {
  const sv = new Array<number>(64).fill(0);
  for (let r = 0; r < v.length; r++) sv[r % 64] = f(sv[r % 64] + v[r]);
  for (let s = 32; s > 0; s >>= 1) for (let i = 0; i < s; i++) sv[i] = f(sv[i] + sv[i + s]);
  return sv[0];
}

/**
 * The generic kernel's f32 sum of one output's `v` in `parts` of `chunk` (the library's rule:
 * R >= 8192 with few outputs), then the partials the same way; `scale` (mean) once, at the end.
 */
function genericSum(v: ArrayLike<number>, nOut: number, scale: number): number {
  const R = v.length;
  const parts = R >= 8192 && nOut < 256
    ? Math.min(Math.ceil(R / 4096), Math.floor(1024 / nOut))
    : 1;
  if (parts < 2) return f(chainTreeSum(v) * scale);
  const chunk = Math.ceil(R / parts);
  const partials: number[] = [];
  for (let p = 0; p * chunk < R; p++) {
    partials.push(chainTreeSum(Array.from(v).slice(p * chunk, Math.min(R, (p + 1) * chunk))));
  }
  return f(chainTreeSum(partials) * scale);
}

/** The bits of a tensor's values, as f32 words. */
async function bits(t: Tensor): Promise<Uint32Array> {
  const a = await t.toArray();
  t.dispose();
  return new Uint32Array(Float32Array.from(a).buffer);
}

type Op = "sum" | "mean" | "max" | "min";
const OPS: Record<Op, (x: Tensor, axis?: number | number[]) => Tensor> = {
  sum: (x, a) => sum(x, a),
  mean: (x, a) => mean(x, a),
  max: (x, a) => max(x, a),
  min: (x, a) => min(x, a),
};

/** The shapes: rows of whole chains, of partial chains (R % 64 != 0), odd row counts, a 3-D
 * input, everything into parts (R >= 8192), rows of 4. */
const CASES: [number[], number | undefined][] = [
  [[37, 64], 1],
  [[5, 1028], -1],
  [[3, 4, 100], 2],
  [[33, 4], 1],
  [[20_480], undefined],
  [[2, 9_000], 1],
];

/**
 * `run()` under the lane family, after checking it gives what it gives under the workgroup
 * family (bits or indices alike).
 */
async function sameAcrossFamilies<T>(what: string, run: () => Promise<T>): Promise<T> {
  const lanes = await withFamily("lanes", run);
  const wg = await withFamily("workgroup", run);
  assert.deepEqual(lanes, wg, `${what}: the families' results differ`);
  return lanes;
}

/** The reduced axis of a CASES entry, non-negative (the one axis of a 1-D shape when none). */
const axisOf = (shape: readonly number[], axis: number | undefined) =>
  axis === undefined ? 0 : (axis + shape.length) % shape.length;

Deno.test("the lane family of sum, mean, max and min gives the generic kernel's bits: host emulation and the workgroup family", async () => {
  let seed = 900;
  for (const dt of ["f32", "bf16"]) {
    for (const [shape, axis] of CASES) {
      const n = shape.reduce((a, b) => a * b, 1);
      const xv = values(dt, n, seed++, -4, 4);
      // specials where they meet other values in a chain: -0, an infinity
      xv[3] = -0;
      if (n > 200) xv[150] = Infinity;
      const x = tensor(xv, { shape, dtype: dt });
      const R = axis === undefined ? n : shape.at(axis)!;
      const nOut = n / R;
      for (const op of ["sum", "mean", "max", "min"] as Op[]) {
        const what = `${op} ${dt} ${shape.join("x")} axis ${axis}`;
        const lanes = await sameAcrossFamilies(what, () => bits(OPS[op](x, axis)));
        // an independent reference: the generic order emulated on the host (sums), the exact
        // extremum (max, min); rounded to the output dtype
        const ref = reduceRef(
          xv,
          shape,
          [axisOf(shape, axis)],
          (v) =>
            op === "sum" || op === "mean"
              ? genericSum(v, nOut, op === "mean" ? f(1 / R) : 1)
              : op === "max"
              ? Math.max(...v)
              : Math.min(...v),
        );
        const want = new Uint32Array(roundTo(dt, axis === undefined ? [ref[0]] : ref).buffer);
        const got = new Float32Array(lanes.buffer);
        for (let i = 0; i < want.length; i++) {
          // max/min of +0 and -0 may give either zero
          const zeros = got[i] === 0 && new Float32Array(want.buffer)[i] === 0;
          assert.ok(
            lanes[i] === want[i] || zeros,
            `${what}[${i}]: got ${got[i]}, want ${new Float32Array(want.buffer)[i]}`,
          );
        }
      }
      x.dispose();
    }
  }
});

Deno.test("logsumexp of the lane family gives the workgroup family's bits and the f64 value", async () => {
  let seed = 930;
  for (const dt of ["f32", "bf16"]) {
    for (const [shape, axis] of CASES) {
      const n = shape.reduce((a, b) => a * b, 1);
      const xv = values(dt, n, seed++, -6, 6);
      // a row of -inf (its logsumexp is -inf) and an infinity
      if (shape.length === 2 && shape[0] > 2) xv.fill(-Infinity, shape[1], 2 * shape[1]);
      if (n > 200) xv[150] = Infinity;
      const x = tensor(xv, { shape, dtype: dt });
      const what = `logsumexp ${dt} ${shape.join("x")} axis ${axis}`;
      const go = () => bits(logsumexp(x, axis));
      const lanes = await sameAcrossFamilies(what, go);
      const ax = axisOf(shape, axis);
      const ref = reduceRef(xv, shape, [ax], (v) => {
        const m = Math.max(...v);
        return Number.isFinite(m) ? m + Math.log(v.reduce((t, y) => t + Math.exp(y - m), 0)) : m;
      });
      const got = new Float32Array(lanes.buffer);
      ref.forEach((r, i) => {
        const ok = Number.isFinite(r)
          ? Math.abs(got[i] - r) <= (dt === "f32" ? 1e-5 : 2e-2) * Math.max(1, Math.abs(r))
          : got[i] === r;
        assert.ok(ok, `${what}[${i}]: got ${got[i]}, reference ${r}`);
      });
      x.dispose();
    }
  }
});

Deno.test("argmax of the lane family gives the workgroup family's indices and the first maximum", async () => {
  let seed = 940;
  for (const dt of ["f32", "bf16", "e4m3"]) {
    for (const [shape, axis] of CASES) {
      const n = shape.reduce((a, b) => a * b, 1);
      // few distinct values (ties), a NaN in some rows (it wins), infinities
      const xv = values(dt, n, seed++, -3, 3);
      if (n > 300) {
        xv[7] = NaN;
        xv[250] = Infinity;
        xv[n - 5] = NaN;
      }
      const x = tensor(xv, { shape, dtype: dt });
      const what = `argmax ${dt} ${shape.join("x")} axis ${axis}`;
      const go = async () => {
        const y = argmax(x, axis);
        const a = Int32Array.from(await y.toArray());
        y.dispose();
        return a;
      };
      const lanes = await sameAcrossFamilies(what, go);
      const ax = axisOf(shape, axis);
      const ref = reduceRef(xv, shape, [ax], (v) => {
        const nan = v.findIndex((y) => Number.isNaN(y));
        return nan >= 0 ? nan : v.indexOf(Math.max(...v));
      });
      assert.deepEqual(Array.from(lanes), ref, what);
      x.dispose();
    }
  }
});

Deno.test("the lane family runs where it applies (an invocation an output word) and not where it does not", async () => {
  const x = tensor(values("f32", 37 * 64, 950), { shape: [37, 64] });
  const lanes = await withFamily("lanes", () => grids(() => bits(sum(x, 1))));
  const wg = await withFamily("workgroup", () => grids(() => bits(sum(x, 1))));
  assert.deepEqual(lanes.grids, [3]); // 37 outputs, 16 a workgroup
  assert.deepEqual(wg.grids, [37]); // a workgroup an output
  assert.deepEqual(lanes.value, wg.value);
  const lse = await withFamily("lanes", () => grids(() => bits(logsumexp(x, 1))));
  assert.deepEqual(lse.grids, [3]);
  const am = await withFamily("lanes", () => grids(() => argmax(x, 1).toArray()));
  assert.deepEqual(am.grids, [3]);
  x.dispose();
  // rows that are not whole quads, and a reduction over a non-last axis: not the lane family
  const y = tensor(values("f32", 6 * 10, 951), { shape: [6, 10] });
  const odd = await withFamily("lanes", () => grids(() => bits(sum(y, 1))));
  assert.deepEqual(odd.grids, [6]);
  const cols = await withFamily("lanes", () => grids(() => bits(sum(y, 0))));
  assert.deepEqual(cols.grids, [10]);
  y.dispose();
});

Deno.test("the lane family over windows gives the bits of whole bindings", async () => {
  const xv = values("f32", 40 * 32, 960, -3, 3);
  await withFamily("lanes", async () => {
    const run = async () => {
      const x = tensor(xv, { shape: [40, 32] });
      const out = [await bits(sum(x, 1)), await bits(max(x, 1)), await bits(mean(x))];
      x.dispose();
      return out;
    };
    const whole = await run();
    // 4 KiB bindings: 1,280 elements in several windows
    const windowed = await withBindingLimit(4096, () => grids(run));
    windowed.value.forEach((a, k) => assert.deepEqual(a, whole[k], `output ${k}`));
    assert.ok(windowed.grids.length > 3, `windows: ${windowed.grids.length} dispatches`);
  });
});

Deno.test("column reductions on CPU adapters (four quads an invocation, workgroups of 16, long columns) give the generic kernel's bits", async () => {
  let seed = 970;
  const cases: [number[], number[]][] = [
    [[100, 64], [0]],
    [[37, 128], [0]],
    [[130, 3, 64], [0]],
    [[3, 70, 2, 48], [0, 2]],
    [[4, 1000, 16], [1]],
    [[40, 528], [0]], // 528 outputs: four quads an invocation
    [[5000, 64], [0]], // past 4096 rows: the column kernel on a CPU adapter, the generic elsewhere
    [[4099, 528], [0]],
  ];
  for (const [shape, axes] of cases) {
    const n = shape.reduce((a, b) => a * b, 1);
    const R = axes.reduce((a, d) => a * shape[d], 1);
    for (const dt of ["f32", "bf16"]) {
      const xv = values(dt, n, seed++, -4, 4);
      xv[5] = -0;
      xv[n - 3] = Infinity;
      const x = tensor(xv, { shape, dtype: dt });
      for (const op of ["sum", "mean", "max"] as const) {
        const what = `${op} ${dt} ${shape.join("x")} over ${axes}`;
        const lanes = await sameAcrossFamilies(what, () => bits(OPS[op](x, axes)));
        const ref = reduceRef(
          xv,
          shape,
          axes,
          (v) =>
            op === "max" ? Math.max(...v) : f(chainTreeSum(v) * (op === "mean" ? f(1 / R) : 1)),
        );
        const want = new Uint32Array(roundTo(dt, ref).buffer);
        assert.deepEqual(lanes, want, what);
      }
      x.dispose();
    }
  }
});

Deno.test("column sums of inputs from 4 MiB read through a staged texture on CPU adapters, with the same bits", async () => {
  const rt = await getRuntime();
  let seed = 4242;
  // four quads an invocation: rows of partial chains (1030 % 64 != 0), two reduced
  // dimensions merged; 4 MiB or more each
  for (const shape of [[1030, 1024], [2, 520, 1024]]) {
    const n = shape[0] * shape[1] * (shape[2] ?? 1);
    const xv = values("f32", n, seed++, -4, 4);
    xv[5] = -0;
    xv[n - 3] = Infinity;
    xv[2 * shape.at(-1)! + 1] = NaN;
    const x = tensor(xv, { shape });
    const axes = shape.length === 3 ? [0, 1] : [0];
    const what = `sum f32 ${shape.join("x")} over ${axes}`;
    const staged = await textureCopies(() => bits(sum(x, axes)));
    assert.equal(staged.copies > 0, rt.info.isFallbackAdapter, `${what}: staged on CPU adapters`);
    // a smaller input of the same kind is read through the binding
    const small = tensor(xv.subarray(0, 64 * 1024), { shape: [64, 1024] });
    assert.equal((await textureCopies(() => bits(sum(small, 0)))).copies, 0, "under 4 MiB");
    small.dispose();
    const prev = setStaging("never");
    try {
      const bound = await textureCopies(() => bits(sum(x, axes)));
      assert.deepEqual(staged.value, bound.value, `${what}: staged and bound differ`);
      assert.equal(bound.copies, 0, `${what}: no copy when staging is off`);
    } finally {
      setStaging(prev);
    }
    const ref = reduceRef(xv, shape, axes, (v) => chainTreeSum(v));
    assert.deepEqual(staged.value, new Uint32Array(roundTo("f32", ref).buffer), what);
    x.dispose();
  }
});

Deno.test("column sums of long reductions into few outputs (parts) take the column kernel on CPU adapters, with the generic kernel's bits", async () => {
  let seed = 5150;
  // R >= 8192 and under 256 outputs: parts of the rows, then their partial sums
  const cases: [number[], number[]][] = [
    [[9000, 128], [0]],
    [[8192, 64], [0]],
    [[2, 5000, 96], [0, 1]],
    [[100, 2, 90, 64], [0, 2]], // two reduced dimensions apart: offsets through roff()
  ];
  for (const [shape, axes] of cases) {
    const n = shape.reduce((a, b) => a * b, 1);
    const R = axes.reduce((a, d) => a * shape[d], 1);
    const xv = values("f32", n, seed++, -4, 4);
    xv[5] = -0;
    xv[n - 3] = Infinity;
    const x = tensor(xv, { shape });
    for (const op of ["sum", "mean"] as const) {
      const what = `${op} f32 ${shape.join("x")} over ${axes}`;
      const { value, grids: g } = await grids(() =>
        sameAcrossFamilies(what, () => bits(OPS[op](x, axes)))
      );
      const nOut = n / R;
      const ref = reduceRef(
        xv,
        shape,
        axes,
        (v) => genericSum(v, nOut, op === "mean" ? f(1 / R) : 1),
      );
      assert.deepEqual(value, new Uint32Array(roundTo("f32", ref).buffer), what);
      // under the lane family the first pass is the column kernel: an invocation a quad and
      // part (workgroups of 16), not a workgroup an output and part
      const parts = Math.min(Math.ceil(R / 4096), Math.floor(1024 / nOut));
      const rt = await getRuntime();
      if (rt.info.isFallbackAdapter) {
        assert.equal(
          g[0],
          Math.ceil(((nOut / 4) * parts) / 16),
          `${what}: the column kernel's grid`,
        );
      }
    }
    x.dispose();
  }
});
