// Shape ops move codes, so every result is compared bit for bit (codes) with a host reference
// that applies the same index map to the input's codes, for every storage dtype. Gradients are
// checked by calling the recorded node directly.
import assert from "node:assert/strict";
import {
  arange,
  concat,
  dtype,
  DTypeError,
  expand,
  flatten,
  gather,
  indexSelect,
  memory,
  permute,
  reshape,
  ShapeError,
  slice,
  squeeze,
  type Tensor,
  tensor,
  transpose,
  unsqueeze,
  ValueError,
} from "../../mod.ts";
import { currentRuntime } from "../../gpu/mod.ts";
import { mapRef, prod, rng, roundTo, strides, unravel, values } from "./_reference.ts";

const DTYPES = ["f32", "f16", "bf16", "e4m3", "e5m2", "e8m3", "bf16x2", "i32", "bool"];

const ravel = (c: readonly number[], shape: readonly number[]) =>
  c.reduce((a, v, d) => a + v * strides(shape)[d], 0);

/** A tensor of `shape` with varied values of dtype `name` (all codes distinct where possible). */
function make(name: string, shape: readonly number[], seed: number, requiresGrad = false): Tensor {
  const n = prod(shape), r = rng(seed);
  const v = name === "bool"
    ? Float32Array.from({ length: n }, () => (r() < 0.5 ? 0 : 1))
    : name === "i32"
    ? Float32Array.from({ length: n }, () => Math.floor((r() - 0.5) * 2e6))
    : values(name, n, seed);
  return tensor(v, { dtype: name, shape, requiresGrad });
}

type Case = { label: string; y: Tensor; shape: readonly number[]; ref: number[] };

/** Reads all results in one batch, compares shapes and codes, and disposes them. */
async function expectCodes(cases: Case[]): Promise<void> {
  const got = await Promise.all(cases.map((c) => c.y.codes()));
  cases.forEach((c, k) => {
    assert.deepEqual(c.y.shape, c.shape, `${c.label}: shape`);
    const g = Array.from(got[k]);
    for (let i = 0; i < c.ref.length; i++) {
      if (g[i] !== c.ref[i]) {
        assert.fail(`${c.label}: element ${i} has code ${g[i]}, the reference ${c.ref[i]}`);
      }
    }
    assert.equal(g.length, c.ref.length, `${c.label}: size`);
    c.y.dispose();
  });
}

const ints = (v: number[], shape?: number[]) => tensor(new Int32Array(v), shape ? { shape } : {});

// ---- forward: exact codes for every dtype ----------------------------------------------------

Deno.test("reshape() keeps every code for every dtype, infers -1, and owns a new buffer", async () => {
  for (const name of DTYPES) {
    const cases: Case[] = [];
    for (const n of [1, 3, 17, 1000]) {
      using x = make(name, [n], n);
      const xc = Array.from(await x.codes());
      const target = n === 1000 ? [8, -1, 5] : n === 17 ? [17, 1] : [-1];
      const shape = n === 1000 ? [8, 25, 5] : n === 17 ? [17, 1] : [n];
      cases.push({ label: `${name} [${n}] -> ${target}`, y: reshape(x, target), shape, ref: xc });
    }
    await expectCodes(cases);
  }
  const x = tensor([1, 2, 3, 4, 5, 6], { dtype: "bf16" });
  const y = x.reshape([3, 2]);
  x.dispose();
  assert.deepEqual(await y.toNested(), [[1, 2], [3, 4], [5, 6]]);
  assert.deepEqual(flatten(y).shape, [6]);
  assert.deepEqual(unsqueeze(y, 1).shape, [3, 1, 2]);
  assert.deepEqual(squeeze(unsqueeze(y, -1)).shape, [3, 2]);
  assert.deepEqual(await flatten(unsqueeze(y, 0), 0, 1).toNested(), [[1, 2], [3, 4], [5, 6]]);
  y.dispose();
});

Deno.test("permute() and transpose() of [3,5,7] match the reference for every dtype", async () => {
  const shape = [3, 5, 7];
  const perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
  for (const name of DTYPES) {
    using x = make(name, shape, 5);
    const xc = await x.codes();
    const cases: Case[] = perms.map((p) => {
      const out = p.map((d) => shape[d]);
      const ref = mapRef(xc, out, (c) => {
        const s = new Array(3);
        p.forEach((d, k) => (s[d] = c[k]));
        return ravel(s, shape);
      });
      return { label: `${name} permute ${p}`, y: permute(x, p), shape: out, ref };
    });
    const t = transpose(x, 0, -1);
    cases.push({
      label: `${name} transpose(0, -1)`,
      y: t,
      shape: [7, 5, 3],
      ref: mapRef(xc, [7, 5, 3], (c) => ravel([c[2], c[1], c[0]], shape)),
    });
    using m = make(name, [17, 3], 9);
    const mc = await m.codes();
    cases.push({
      label: `${name} transpose [17,3]`,
      y: m.transpose(),
      shape: [3, 17],
      ref: mapRef(mc, [3, 17], (c) => c[1] * 3 + c[0]),
    });
    await expectCodes(cases);
  }
});

Deno.test("slice() with odd offsets splits packed words exactly for every dtype", async () => {
  for (const name of DTYPES) {
    using x = make(name, [3, 5, 7], 21);
    using v = make(name, [1000], 22);
    const xc = await x.codes(), vc = await v.codes();
    const cases: Case[] = [];
    const r3: [number, number][] = [[1, 3], [-4, 5], [1, 6]];
    cases.push({
      label: `${name} [3,5,7][1:3, -4:5, 1:6]`,
      y: slice(x, r3),
      shape: [2, 4, 5],
      ref: mapRef(xc, [2, 4, 5], (c) => ravel([c[0] + 1, c[1] + 1, c[2] + 1], [3, 5, 7])),
    });
    cases.push({
      label: `${name} [3,5,7][null, 3:4] (trailing dims whole)`,
      y: x.slice([null, [3, 4]]),
      shape: [3, 1, 7],
      ref: mapRef(xc, [3, 1, 7], (c) => ravel([c[0], 3, c[2]], [3, 5, 7])),
    });
    for (
      const [s, e, start, len] of [
        [1, 998, 1, 997],
        [3, 20, 3, 17],
        [-17, -1, 983, 16],
        [
          5,
          2000,
          5,
          995,
        ],
        [-2000, 3, 0, 3],
        [5, 3, 5, 0],
      ]
    ) {
      cases.push({
        label: `${name} [1000][${s}:${e}]`,
        y: slice(v, [[s, e]]),
        shape: [len],
        ref: mapRef(vc, [len], (c) => start + c[0]),
      });
    }
    await expectCodes(cases);
  }
});

Deno.test("concat() along each axis matches the reference for every dtype", async () => {
  for (const name of DTYPES) {
    const cases: Case[] = [];
    for (const axis of [0, 1, 2, -1]) {
      const a = axis < 0 ? axis + 3 : axis;
      const sizes = [1, 3, 2];
      const xs = sizes.map((s, k) => {
        const shape = [3, 5, 7];
        shape[a] = s;
        return make(name, shape, 100 + k);
      });
      const codes = await Promise.all(xs.map((x) => x.codes()));
      const out = [3, 5, 7];
      out[a] = 6;
      const offs = [0, 1, 4, 6];
      const ref = Array.from({ length: prod(out) }, (_, i) => {
        const c = unravel(i, out);
        const k = offs.findIndex((o, j) => c[a] >= o && c[a] < offs[j + 1]);
        const cc = [...c];
        cc[a] -= offs[k];
        return codes[k][ravel(cc, xs[k].shape)];
      });
      cases.push({ label: `${name} concat axis ${axis}`, y: concat(xs, axis), shape: out, ref });
      xs.forEach((x) => x.dispose());
    }
    await expectCodes(cases);
  }
  // more inputs than one kernel binds, with an empty one, on a packed dtype with odd sizes
  const xs = Array.from({ length: 11 }, (_, k) => make("e4m3", [k % 4], 200 + k));
  const all = (await Promise.all(xs.map((x) => x.codes()))).flatMap((c) => Array.from(c));
  await expectCodes([{ label: "e4m3 concat of 11", y: concat(xs), shape: [all.length], ref: all }]);
  xs.forEach((x) => x.dispose());
});

Deno.test("indexSelect() with repeated and out-of-range indices matches the reference", async () => {
  const shape = [3, 5, 7];
  for (const name of DTYPES) {
    using x = make(name, shape, 31);
    const xc = await x.codes();
    const cases: Case[] = [];
    for (const axis of [0, 1, 2]) {
      const A = shape[axis];
      const idx = [A - 1, 0, 1, A - 1, 1, 1, 0];
      const out = [...shape];
      out[axis] = idx.length;
      using ix = ints(idx);
      cases.push({
        label: `${name} indexSelect axis ${axis}`,
        y: x.indexSelect(axis, ix),
        shape: out,
        ref: mapRef(xc, out, (c) => {
          const s = [...c];
          s[axis] = idx[c[axis]];
          return ravel(s, shape);
        }),
      });
    }
    // u32 index, clamped values (documented: out-of-range values clamp to [0, size-1])
    using iu = tensor(new Uint32Array([4, 100, 0]));
    using ineg = ints([-5, 2, 99]);
    cases.push({
      label: `${name} indexSelect u32 clamped`,
      y: indexSelect(x, 1, iu),
      shape: [3, 3, 7],
      ref: mapRef(xc, [3, 3, 7], (c) => ravel([c[0], [4, 4, 0][c[1]], c[2]], shape)),
    });
    cases.push({
      label: `${name} indexSelect i32 clamped`,
      y: indexSelect(x, -1, ineg),
      shape: [3, 5, 3],
      ref: mapRef(xc, [3, 5, 3], (c) => ravel([c[0], c[1], [0, 2, 6][c[2]]], shape)),
    });
    await expectCodes(cases);
  }
  // an embedding lookup of odd width
  using w = make("bf16", [11, 3], 7);
  const wc = await w.codes();
  const ids = [3, 3, 10, 0, 7];
  using ix = ints(ids);
  await expectCodes([{
    label: "embedding",
    y: indexSelect(w, 0, ix),
    shape: [5, 3],
    ref: mapRef(wc, [5, 3], (c) => ids[c[0]] * 3 + c[1]),
  }]);
});

Deno.test("gather() along each axis matches torch.gather for every dtype", async () => {
  const shape = [3, 5, 7];
  const r = rng(41);
  for (const name of DTYPES) {
    using x = make(name, shape, 51);
    const xc = await x.codes();
    const cases: Case[] = [];
    for (const axis of [0, 1, 2]) {
      const ishape = [2, 4, 5];
      ishape[axis] = 6; // larger than x along the axis is allowed
      const iv = Array.from(
        { length: prod(ishape) },
        () => Math.floor(r() * (shape[axis] + 2)) - 1,
      ); // includes -1 and size: clamped
      using ix = ints(iv, ishape);
      cases.push({
        label: `${name} gather axis ${axis}`,
        y: gather(x, axis, ix),
        shape: ishape,
        ref: mapRef(xc, ishape, (c, i) => {
          const s = [...c];
          s[axis] = Math.min(Math.max(iv[i], 0), shape[axis] - 1);
          return ravel(s, shape);
        }),
      });
    }
    await expectCodes(cases);
  }
  using x = tensor([[1, 2, 3], [4, 5, 6]]);
  using ix = ints([2, 0, 1, 1], [2, 2]);
  using y = x.gather(1, ix);
  assert.deepEqual(await y.toNested(), [[3, 1], [5, 5]]);
});

Deno.test("expand() repeats size-1 dimensions and sums its gradient back", async () => {
  for (const name of DTYPES) {
    using x = make(name, [3, 1, 5], 111);
    const xc = await x.codes();
    await expectCodes([{
      label: `${name} expand [3,1,5] -> [2,3,7,5]`,
      y: expand(x, [2, -1, 7, 5]),
      shape: [2, 3, 7, 5],
      ref: mapRef(xc, [2, 3, 7, 5], (c) => c[1] * 5 + c[3]),
    }]);
  }
  using x = tensor([[1], [2]], { requiresGrad: true });
  using y = expand(x, [3, 2, 4]);
  using g = arange(24, undefined, 1, { dtype: "f32" }).reshape([3, 2, 4]);
  const [gx] = await grads(y, g);
  // x[0] collects g[k][0][:], x[1] collects g[k][1][:], k = 0..2
  const sumOf = (r: number) =>
    [0, 1, 2].reduce((s, k) => s + [0, 1, 2, 3].reduce((t, j) => t + k * 8 + r * 4 + j, 0), 0);
  assert.deepEqual(gx, [sumOf(0), sumOf(1)]);
  using z = expand(x, [2, 3]);
  assert.deepEqual(await z.toNested(), [[1, 1, 1], [2, 2, 2]]);
  assert.throws(() => expand(x, [4]), ShapeError);
  assert.throws(
    () => expand(x, [3, 2]),
    (e: unknown) =>
      e instanceof ShapeError && e.message.includes("[2,1]") && e.message.includes("[3,2]"),
  );
});

Deno.test("outputs past 65,535 workgroups fold into a 2-D grid (16.8M elements)", async () => {
  const n = 2 ** 24; // 65,536 workgroups of 256 words
  using x = arange(n).reshape([2, n / 2]);
  using y = x.transpose();
  const v = await y.toArray();
  for (let i = 0; i < n; i++) {
    if (v[i] !== (i % 2) * (n / 2) + (i >> 1)) assert.fail(`element ${i}: ${v[i]}`);
  }
});

// ---- errors ------------------------------------------------------------------------------------

Deno.test("shape and dtype errors are thrown before any dispatch and name the shapes", () => {
  using x = tensor(new Float32Array(30), { shape: [2, 3, 5], dtype: "bf16" });
  using y = tensor(new Float32Array(12), { shape: [2, 2, 3] });
  using i1 = ints([0, 1]);
  using i2 = ints([0, 1, 1, 0], [2, 2]);
  using fidx = tensor([0, 1]);
  using xt = tensor(new Float32Array(30), { shape: [2, 5, 3], dtype: "bf16" });
  using xf = tensor(new Float32Array(30), { shape: [2, 3, 5] });
  using i214 = ints([0, 0, 0, 0, 0, 0, 0, 0], [2, 1, 4]);
  using f111 = tensor([[[0]]]);
  using i111 = ints([0], [1, 1, 1]);
  const rt = currentRuntime();
  const d0 = rt.counters.dispatches, live = memory().liveBytes;
  const shapeErr = (...parts: string[]) => (e: unknown) =>
    e instanceof ShapeError && parts.every((p) => e.message.includes(p));
  const dtypeErr = (...parts: string[]) => (e: unknown) =>
    e instanceof DTypeError && parts.every((p) => e.message.includes(p));
  assert.throws(() => reshape(x, [4, 4]), shapeErr("reshape()", "[2,3,5]", "[4,4]"));
  assert.throws(() => reshape(x, [-1, 7]), shapeErr("reshape()", "[2,3,5]", "-1"));
  assert.throws(() => reshape(x, [-1, -1, 30]), shapeErr("reshape()", "[-1,-1,30]"));
  assert.throws(() => reshape(x, [2.5, 12]), shapeErr("reshape()"));
  assert.throws(() => permute(x, [0, 1]), shapeErr("permute()", "[2,3,5]"));
  assert.throws(() => permute(x, [0, 1, 1]), shapeErr("permute()", "[0,1,1]", "repeats"));
  assert.throws(() => permute(x, [0, 1, 3]), shapeErr("permute()", "out of range"));
  assert.throws(() => transpose(x, 0, 3), shapeErr("transpose()", "[2,3,5]", "3"));
  assert.throws(() => transpose(i1), shapeErr("transpose()", "[2]", "-2"));
  assert.throws(() => slice(x, [null, null, null, [0, 1]]), shapeErr("slice()", "[2,3,5]"));
  assert.throws(() => slice(x, [[0, 1.5]]), ValueError);
  assert.throws(() => concat([x, xt], 0), shapeErr("concat()", "[2,3,5]", "[2,5,3]"));
  assert.throws(() => concat([x, y], 1), shapeErr("concat()", "[2,3,5]", "[2,2,3]"));
  assert.throws(() => concat([y, y], 3), shapeErr("concat()", "[2,2,3]", "3"));
  assert.throws(() => concat([x, xf], 0), dtypeErr("concat()", "bf16", "f32"));
  assert.throws(() => concat([]), ValueError);
  assert.throws(() => indexSelect(x, 0, fidx), dtypeErr("indexSelect()", "f32", "[2]"));
  assert.throws(() => indexSelect(x, 0, i2), shapeErr("indexSelect()", "[2,2]", "[2,3,5]"));
  assert.throws(() => indexSelect(x, 3, i1), shapeErr("indexSelect()", "[2,3,5]"));
  assert.throws(() => gather(x, 0, i1), shapeErr("gather()", "[2]", "[2,3,5]"));
  assert.throws(() => gather(y, 0, i214), shapeErr("gather()", "[2,1,4]", "[2,2,3]"));
  assert.throws(() => gather(x, 0, f111), dtypeErr("gather()", "f32"));
  assert.throws(() => gather(x, -4, i111), shapeErr("gather()", "-4"));
  assert.equal(rt.counters.dispatches, d0, "no kernel was dispatched");
  assert.equal(memory().liveBytes, live, "no output was allocated by a failed call");
  x.dispose();
  assert.throws(
    () => x.reshape([30]),
    (e: unknown) => e instanceof ValueError && /dispose/.test(e.message),
  );
});

// ---- gradients ---------------------------------------------------------------------------------

/** The recorded node's gradients for `g`, read back as plain numbers (null stays null). */
async function grads(y: Tensor, g: Tensor): Promise<(number[] | null)[]> {
  assert.ok(y.node, "a graph node was recorded");
  const gs = y.node.backward(g);
  const out = await Promise.all(gs.map(async (t) => (t ? Array.from(await t.toArray()) : null)));
  gs.forEach((t) => t?.dispose());
  return out;
}

Deno.test("reshape, permute, transpose and slice send the gradient back exactly", async () => {
  using x = make("bf16", [3, 5, 7], 61, true);
  using g = make("bf16", [5, 7, 3], 62);
  const gv = await g.toArray();
  {
    using y = x.permute([1, 2, 0]);
    const [gx] = await grads(y, g);
    const ref = Array.from(
      { length: 105 },
      (_, i) => {
        const [a, b, c] = unravel(i, [3, 5, 7]);
        return gv[ravel([b, c, a], [5, 7, 3])];
      },
    );
    assert.deepEqual(gx, ref);
  }
  {
    using g2 = make("bf16", [7, 5, 3], 63);
    const g2v = await g2.toArray();
    using y = transpose(x, 0, 2);
    const [gx] = await grads(y, g2);
    assert.deepEqual(
      gx,
      Array.from({ length: 105 }, (_, i) => {
        const [a, b, c] = unravel(i, [3, 5, 7]);
        return g2v[ravel([c, b, a], [7, 5, 3])];
      }),
    );
  }
  {
    using y = x.reshape([15, 7]);
    using g3 = g.reshape([15, 7]);
    const [gx] = await grads(y, g3);
    assert.deepEqual(gx, Array.from(gv));
    assert.deepEqual(y.node!.inputs[0], x);
  }
  {
    using y = slice(x, [[1, 3], [-4, 5], [3, 4]]); // [2, 4, 1]
    using g4 = make("bf16", [2, 4, 1], 64);
    const g4v = await g4.toArray();
    const gs = y.node!.backward(g4);
    assert.deepEqual(gs[0]!.shape, [3, 5, 7]);
    assert.equal(gs[0]!.dtype, "bf16");
    const gx = Array.from(await gs[0]!.toArray());
    gs[0]!.dispose();
    assert.deepEqual(
      gx,
      Array.from({ length: 105 }, (_, i) => {
        const [a, b, c] = unravel(i, [3, 5, 7]);
        return a >= 1 && b >= 1 && c === 3 ? g4v[ravel([a - 1, b - 1, 0], [2, 4, 1])] : 0;
      }),
    );
  }
});

Deno.test("concat() gives each input its slice of the gradient, null where none is needed", async () => {
  using a = make("e4m3", [2, 3], 71, true);
  using b = make("e4m3", [2, 5], 72, false);
  using c = make("e4m3", [2, 1], 73, true);
  using y = concat([a, b, c], 1);
  using g = make("e4m3", [2, 9], 74);
  const gv = Array.from(await g.toArray());
  const [ga, gb, gc] = await grads(y, g);
  assert.deepEqual(ga, [...gv.slice(0, 3), ...gv.slice(9, 12)]);
  assert.equal(gb, null);
  assert.deepEqual(gc, [gv[8], gv[17]]);
});

/** Host scatter-add in f32, in index order, of g rows (outer, L, inner) into (outer, A, inner). */
function scatterRef(gv: ArrayLike<number>, idx: number[], outer: number, A: number, inner: number) {
  const out = new Float32Array(outer * A * inner);
  for (let q = 0; q < outer; q++) {
    for (let l = 0; l < idx.length; l++) {
      const a = Math.min(Math.max(idx[l], 0), A - 1);
      for (let r = 0; r < inner; r++) {
        const o = (q * A + a) * inner + r;
        out[o] = Math.fround(out[o] + gv[(q * idx.length + l) * inner + r]);
      }
    }
  }
  return out;
}

Deno.test("indexSelect() gradients accumulate repeated indices (embedding backward)", async () => {
  for (const name of ["f32", "bf16", "f16", "e4m3", "bf16x2"]) {
    // weight [11, 3], ids with duplicates; rows 1, 2, 4 are never picked
    using w = make(name, [11, 3], 81, true);
    const ids = [3, 3, 10, 0, 7, 3, 0, 5, 6, 8, 9, 10, 3];
    using ix = ints(ids);
    using y = indexSelect(w, 0, ix);
    using g = make(name, [ids.length, 3], 82);
    const gv = await g.toArray();
    const gs = y.node!.backward(g);
    assert.equal(gs[0]!.dtype, name);
    assert.deepEqual(gs[0]!.shape, [11, 3]);
    const got = Array.from(await gs[0]!.toArray());
    gs[0]!.dispose();
    const ref = Array.from(roundTo(name, scatterRef(gv, ids, 1, 11, 3)));
    assert.deepEqual(got, ref, name);
  }
  // along a middle axis, with clamped out-of-range indices and an integer input (f32 grads)
  using x = make("i32", [2, 4, 3], 83, true);
  const ids = [1, 9, 1, -3, 2];
  using ix = ints(ids);
  using y = indexSelect(x, 1, ix);
  using g = make("f32", [2, 5, 3], 84);
  const gv = await g.toArray();
  const gs = y.node!.backward(g);
  assert.equal(gs[0]!.dtype, "f32");
  assert.deepEqual(Array.from(await gs[0]!.toArray()), Array.from(scatterRef(gv, ids, 2, 4, 3)));
  gs[0]!.dispose();
});

Deno.test("gather() gradients scatter-add into the input's shape, duplicates accumulating", async () => {
  const shape = [3, 4, 5];
  for (const name of ["f32", "bf16"]) {
    for (const axis of [0, 1, 2]) {
      using x = make(name, shape, 91 + axis, true);
      const ishape = [2, 3, 4];
      ishape[axis] = 6;
      const r = rng(axis + 7);
      const iv = Array.from({ length: prod(ishape) }, () => Math.floor(r() * shape[axis]));
      using ix = ints(iv, ishape);
      using y = gather(x, axis, ix);
      using g = make(name, ishape, 95 + axis);
      const gv = await g.toArray();
      const ref = new Float32Array(prod(shape));
      for (let i = 0; i < gv.length; i++) {
        const c = unravel(i, ishape);
        c[axis] = iv[i];
        const o = ravel(c, shape);
        ref[o] = Math.fround(ref[o] + gv[i]);
      }
      const [gx] = await grads(y, g);
      assert.deepEqual(gx, Array.from(roundTo(name, ref)), `${name} axis ${axis}`);
    }
  }
  // cross-entropy style: pick one logit per row
  using logits = tensor([[0, 1, 2], [3, 4, 5]], { requiresGrad: true });
  using target = ints([2, 2], [2, 1]);
  using picked = logits.gather(1, target);
  assert.deepEqual(await picked.toNested(), [[2], [5]]);
  using one = tensor([[1], [1]]);
  const [gl] = await grads(picked, one);
  assert.deepEqual(gl, [0, 0, 1, 0, 0, 1]);
});

Deno.test("dtype() of results: shape ops keep the input's dtype", () => {
  for (const name of DTYPES) {
    using x = make(name, [2, 3], 1);
    using ix = ints([1, 0]);
    using ig = ints([1, 0], [1, 2]);
    for (
      const y of [
        x.reshape([3, 2]),
        x.transpose(),
        x.slice([[0, 1]]),
        concat([x, x]),
        x.indexSelect(1, ix),
        x.gather(0, ig),
      ]
    ) {
      assert.equal(y.dt, dtype(name));
      y.dispose();
    }
  }
});
