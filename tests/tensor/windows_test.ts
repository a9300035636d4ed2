// Tensors larger than one storage binding (issue 14, item 1): the binding limit is lowered
// so that small tensors need several windows, and each op must give the host reference's
// values and the same codes, bit for bit, as with the adapter's own limit. Packed dtypes at
// odd sizes put partial words at the windows' edges.
import assert from "node:assert/strict";
import {
  concat,
  DeviceError,
  expand,
  FP8Recipe,
  gather,
  indexSelect,
  mxQuantize,
  type Tensor,
  tensor,
  tidy,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { mapRef, prod, roundTo, strides, unravel, values } from "./_reference.ts";
import { fp8Values, mxReference, scaleFromAmax, transpose } from "./_fp8_reference.ts";
import { withBindingLimit } from "../_binding_limit.ts";

const rt = await getRuntime();

/** `f()`'s codes with the binding limit lowered to `bytes`, and the kernels it recorded. */
async function windowed(
  bytes: number,
  f: () => Tensor,
): Promise<{ codes: Uint8Array | Uint16Array | Uint32Array; values: Float32Array; n: number }> {
  return await withBindingLimit(bytes, async () => {
    const d0 = rt.counters.dispatches;
    const t = tidy(f);
    t.realize();
    const n = rt.counters.dispatches - d0;
    const out = { codes: await t.codes(), values: await t.toArray() as Float32Array, n };
    t.dispose();
    return out;
  });
}

/** `f()`'s codes with the adapter's own binding limit. */
async function whole(f: () => Tensor): Promise<Uint8Array | Uint16Array | Uint32Array> {
  const t = tidy(f);
  const c = await t.codes();
  t.dispose();
  return c;
}

const LIMIT = 65536;

// ---- fusion --------------------------------------------------------------------------------

// 300,001: partial last words; 300,000: whole quads (the kernel that loads and stores vec4s)
for (
  const [dt, n] of ["f32", "bf16", "e4m3"].flatMap((d) => [[d, 300_001], [d, 300_000]] as const)
) {
  Deno.test(`a fused chain over ${dt} windows (${n} elements) equals the host chain and the whole run`, async () => {
    // 1.2 MB of f32, 300 KB of e4m3: many windows
    const xv = values(dt, n, 11, -3, 3);
    const x = tensor(xv, { dtype: dt });
    const f = () => x.mul(2).add(1).relu();
    const got = await windowed(LIMIT, f);
    const bytes = Math.ceil(n / (4 / (dt === "f32" ? 4 : dt === "bf16" ? 2 : 1))) * 4;
    assert.ok(got.n >= Math.ceil(bytes / LIMIT), `${got.n} dispatches for ${bytes} bytes`);
    const r = (v: ArrayLike<number>) => roundTo(dt, Array.from(v, Math.fround));
    const want = r(r(r(Array.from(xv, (v) => 2 * v)).map((v) => v + 1)).map((v) => Math.max(v, 0)));
    assert.deepEqual(got.values, want);
    assert.deepEqual(got.codes, await whole(f));
    x.dispose();
  });
}

Deno.test("broadcast operands larger than one window are read through their windows", async () => {
  // w (120 KB of f32) is broadcast along rows; c along columns (one per row)
  const R = 4, C = 30 * 1024; // rows of whole workgroups (1,024 f32): none straddles two rows
  const xv = values("bf16", R * C, 3), wv = values("f32", C, 4), cv = values("e4m3", R, 5);
  const x = tensor(xv, { dtype: "bf16", shape: [R, C] });
  const w = tensor(wv, { shape: [C] });
  const c = tensor(cv, { dtype: "e4m3", shape: [R, 1] });
  const f = () => x.mul(w).add(c);
  const got = await windowed(LIMIT, f);
  const want = new Float32Array(R * C);
  for (let i = 0; i < R; i++) {
    for (let j = 0; j < C; j++) {
      want[i * C + j] = Math.fround(Math.fround(xv[i * C + j] * wv[j]) + cv[i]);
    }
  }
  assert.deepEqual(got.values, want);
  assert.deepEqual(got.codes, await whole(f));
  // stochastic rounding draws the same bits per element in every window
  const s = () => x.mul(w).cast("bf16", { rounding: "stochastic", seed: 77 });
  assert.deepEqual((await windowed(LIMIT, s)).codes, await whole(s));
  for (const t of [x, w, c]) t.dispose();
});

Deno.test("a broadcast operand that no window of one workgroup holds is a DeviceError", async () => {
  // rows of 20,000 f32: the workgroup across a row's end reads both ends of w (80 KB)
  const x = tensor(values("f32", 2 * 20_000, 6), { shape: [2, 20_000] });
  const w = tensor(values("f32", 20_000, 7), { shape: [20_000] });
  await withBindingLimit(LIMIT, () => {
    const y = x.add(w);
    assert.throws(
      () => y.realize(),
      (e: unknown) =>
        e instanceof DeviceError && /\[20000\] f32/.test(e.message) &&
        /65536 bytes/.test(e.message),
    );
    y.dispose();
  });
  x.dispose();
  w.dispose();
});

// ---- shape ops -----------------------------------------------------------------------------

const SHAPE_LIMIT = 16384;
/** Checks `f()` (windowed) against the host codes and against the whole run. */
async function checkMove(label: string, f: () => Tensor, ref: number[]) {
  const got = await windowed(SHAPE_LIMIT, f);
  assert.ok(got.n > 1, `${label}: ${got.n} dispatches`);
  assert.deepEqual(Array.from(got.codes), ref, label);
  assert.deepEqual(got.codes, await whole(f), `${label}: whole run`);
}

function ints(v: number[], shape = [v.length]): Tensor {
  return tensor(new Int32Array(v), { shape });
}

for (const dt of ["f32", "bf16", "e4m3"]) {
  Deno.test(`permute, slice, expand and concat of ${dt} sources larger than one binding`, async () => {
    const shape = [37, 41, 29]; // 43,993 elements: 176 KB of f32, 44 KB of e4m3
    const x = tensor(values(dt, prod(shape), 21), { dtype: dt, shape });
    const xc = Array.from(await x.codes());
    const xs = strides(shape);
    // permute [2, 0, 1]: output [29, 37, 41] reads x[c1, c2, c0]
    await checkMove(
      `${dt} permute`,
      () => x.permute([2, 0, 1]),
      mapRef(xc, [29, 37, 41], (c) => c[1] * xs[0] + c[2] * xs[1] + c[0]),
    );
    // slice with odd starts: partial words at both ends of every row
    await checkMove(
      `${dt} slice`,
      () => x.slice([[3, 36], [1, 40], [5, 28]]),
      mapRef(xc, [33, 39, 23], (c) => (c[0] + 3) * xs[0] + (c[1] + 1) * xs[1] + c[2] + 5),
    );
    // concat of a large and a small source along the middle axis
    const y = tensor(values(dt, 37 * 3 * 29, 22), { dtype: dt, shape: [37, 3, 29] });
    const yc = Array.from(await y.codes());
    await checkMove(
      `${dt} concat`,
      () => concat([y, x], 1),
      mapRef(
        [...yc, ...xc],
        [37, 44, 29],
        (c) =>
          c[1] < 3
            ? (c[0] * 3 + c[1]) * 29 + c[2]
            : yc.length + c[0] * xs[0] + (c[1] - 3) * 29 + c[2],
      ),
    );
    // expand of a small source to a large output
    const z = tensor(values(dt, 5003, 23), { dtype: dt, shape: [1, 5003] });
    const zc = Array.from(await z.codes());
    await checkMove(`${dt} expand`, () => expand(z, [7, 5003]), mapRef(zc, [7, 5003], (c) => c[1]));
    for (const t of [x, y, z]) t.dispose();
  });
}

/** The embedding backward's reference: rows of g summed in f32, in index order, per row. */
function scatterRef(gv: ArrayLike<number>, idx: number[], A: number, inner: number) {
  const out = new Float32Array(A * inner);
  idx.forEach((id, l) => {
    const a = Math.min(Math.max(id, 0), A - 1);
    for (let r = 0; r < inner; r++) {
      out[a * inner + r] = Math.fround(out[a * inner + r] + gv[l * inner + r]);
    }
  });
  return out;
}

for (const dt of ["f32", "bf16", "e4m3"]) {
  Deno.test(`an embedding table of ${dt} larger than one binding: rows and their gradient`, async () => {
    const A = 2003, C = 33; // odd rows: packed words straddle rows
    const w = tensor(values(dt, A * C, 31), { dtype: dt, shape: [A, C], requiresGrad: true });
    const wc = Array.from(await w.codes());
    // ids all over the table, repeated, and out of range (clamped)
    const ids = Array.from({ length: 517 }, (_, l) => ((l * 7919) % (A + 40)) - 20);
    ids[5] = ids[100] = ids[300] = 1999;
    const ix = ints(ids);
    const clamp = (v: number) => Math.min(Math.max(v, 0), A - 1);
    await checkMove(
      `${dt} indexSelect`,
      () => indexSelect(w, 0, ix),
      mapRef(wc, [ids.length, C], (c) => clamp(ids[c[0]]) * C + c[1]),
    );
    // the backward: g [517, 33] and the table's gradient both span several windows
    const y = indexSelect(w, 0, ix);
    const g = tensor(values(dt, ids.length * C, 32), { dtype: dt, shape: [ids.length, C] });
    const gv = await g.toArray();
    const back = () => y.node!.backward(g)[0]!;
    const got = await windowed(SHAPE_LIMIT, back);
    assert.ok(got.n > 2, `${got.n} dispatches`);
    assert.deepEqual(got.values, roundTo(dt, scatterRef(gv, ids, A, C)));
    assert.deepEqual(got.codes, await whole(back));
    for (const t of [w, ix, y, g]) t.dispose();
  });
}

for (const dt of ["f32", "bf16", "e4m3", "f16"]) {
  Deno.test(`an embedding gradient of ${dt} rows of whole words: zeros and the selected rows, the table in windows`, async () => {
    // rows of 32 (whole words in every dtype): the gradient is zeros plus a sum written per
    // selected row; g (20 x 32) fits one binding, the table's gradient (2003 rows) does not
    const A = 2003, C = 32;
    const w = tensor(values(dt, A * C, 35), { dtype: dt, shape: [A, C], requiresGrad: true });
    const ids = [
      5,
      1999,
      5,
      -7,
      2002,
      3000,
      640,
      5,
      1999,
      0,
      17,
      640,
      1000,
      1001,
      2,
      3,
      5,
      0,
      9,
      1999,
    ];
    const ix = ints(ids);
    const y = indexSelect(w, 0, ix);
    const gh = values(dt, ids.length * C, 36);
    gh[C + 3] = -0; // a -0 term alone in its row's sum: +0 + -0 is +0, as the dense sum gives
    const g = tensor(gh, { dtype: dt, shape: [ids.length, C] });
    const gv = await g.toArray();
    const back = () => y.node!.backward(g)[0]!;
    const got = await windowed(SHAPE_LIMIT, back);
    assert.ok(got.n > 8, `${got.n} dispatches: the table's gradient in windows of rows`);
    // (the first difference, not a diff of 64,096 values)
    const want = roundTo(dt, scatterRef(gv, ids, A, C));
    const bad = got.values.findIndex((v, i) => !Object.is(v, want[i]));
    assert.equal(bad, -1, `element ${bad}: ${got.values[bad]}, want ${want[bad]}`);
    const all = await whole(back);
    const badCode = got.codes.findIndex((c, i) => c !== all[i]);
    assert.equal(badCode, -1, `code ${badCode} differs from the whole binding's`);
    for (const t of [w, ix, y, g]) t.dispose();
  });
}

Deno.test("gather and its gradient along each axis, with sources larger than one binding", async () => {
  const shape = [211, 67]; // 56 KB of f32, 28 KB of bf16
  for (const dt of ["f32", "bf16"]) {
    for (const axis of [0, 1]) {
      const x = tensor(values(dt, prod(shape), 41 + axis), {
        dtype: dt,
        shape,
        requiresGrad: true,
      });
      const xc = Array.from(await x.codes());
      const ishape = [209, 65];
      const iv = Array.from({ length: prod(ishape) }, (_, i) => (i * 31 + axis) % shape[axis]);
      const ix = ints(iv, ishape);
      const at = (c: number[]) => {
        const s = [...c];
        s[axis] = iv[c[0] * ishape[1] + c[1]];
        return s[0] * shape[1] + s[1];
      };
      await checkMove(
        `${dt} gather axis ${axis}`,
        () => gather(x, axis, ix),
        mapRef(xc, ishape, at),
      );
      const y = gather(x, axis, ix);
      const g = tensor(values(dt, prod(ishape), 43), { dtype: dt, shape: ishape });
      const gv = await g.toArray();
      const ref = new Float32Array(prod(shape));
      for (let i = 0; i < gv.length; i++) {
        const o = at(unravel(i, ishape));
        ref[o] = Math.fround(ref[o] + gv[i]);
      }
      const back = () => y.node!.backward(g)[0]!;
      const got = await windowed(SHAPE_LIMIT, back);
      assert.deepEqual(got.values, roundTo(dt, ref), `${dt} axis ${axis}`);
      assert.deepEqual(got.codes, await whole(back));
      for (const t of [x, ix, y, g]) t.dispose();
    }
  }
});

// ---- FP8 scaling and MX --------------------------------------------------------------------

/** Equal as values, NaN matching NaN and -0 told from +0. */
function assertSame(got: ArrayLike<number>, want: ArrayLike<number>, what: string) {
  assert.equal(got.length, want.length, what);
  for (let i = 0; i < want.length; i++) {
    if (Number.isNaN(want[i]) && Number.isNaN(got[i])) continue;
    assert.ok(Object.is(got[i], want[i]), `${what}[${i}]: got ${got[i]}, want ${want[i]}`);
  }
}

for (const dt of ["f32", "bf16"]) {
  Deno.test(`FP8 current and delayed scaling of ${dt} tensors larger than one binding`, async () => {
    const n = 100_003; // 400 KB of f32; e4m3 codes: 100 KB, a partial last word
    const xv = values(dt, n, 51, -2, 2);
    xv[77_777] = -37.5; // the amax, far from the first window
    const x = tensor(xv, { dtype: dt });
    // current scaling: the amax of every window, then the codes with its scale
    const current = new FP8Recipe({ scaling: "current", margin: 1 });
    const q = await withBindingLimit(SHAPE_LIMIT, () => current.quantize(x, { key: "x" }));
    const scale = await q.scale.item();
    assert.equal(scale, scaleFromAmax(448, 37.5, 1));
    assertSame(await q.data.toArray(), fp8Values("e4m3", xv, scale), "current");
    const whole = current.quantize(x, { key: "x" });
    assert.deepEqual(await q.data.codes(), await whole.data.codes());
    // delayed scaling: the amax recorded through windows sets the next step's scale
    const delayed = new FP8Recipe({ amaxHistoryLen: 4, margin: 0 });
    const first = await withBindingLimit(SHAPE_LIMIT, () => {
      const a = delayed.quantize(x, { key: "x" });
      delayed.update();
      return a;
    });
    const second = await withBindingLimit(SHAPE_LIMIT, () => delayed.quantize(x, { key: "x" }));
    assert.equal(await first.scale.item(), 1);
    assert.equal(await second.scale.item(), scaleFromAmax(448, 37.5, 0));
    assertSame(await first.data.toArray(), fp8Values("e4m3", xv, 1), "delayed, scale 1");
    assertSame(
      await second.data.toArray(),
      fp8Values("e4m3", xv, await second.scale.item()),
      "delayed",
    );
    for (const t of [x, q.data, q.scale, whole.data, whole.scale]) t.dispose();
    for (const t of [first.data, first.scale, second.data, second.scale]) t.dispose();
    current.dispose();
    delayed.dispose();
  });
}

Deno.test("mxQuantize() of tensors larger than one binding, along either axis", async () => {
  const rows = 401, len = 41; // 66 KB of f32; blocks of 32 and 9 along rows, 32 x 12 + 17 down
  const r = values("f32", rows * len, 61, -1, 1);
  const xv = r.map((v, i) => v * 2 ** ((i % 37) - 18)); // blocks of many scales
  for (const dt of ["f32", "bf16"]) {
    const x = tensor(xv, { dtype: dt, shape: [rows, len] });
    const held = await x.toArray();
    const last = await windowed(SHAPE_LIMIT, () => mxQuantize(x, "e4m3"));
    assertSame(last.values, mxReference("e4m3", held, len), `${dt} last axis`);
    assert.ok(last.n > 1);
    const first = await windowed(SHAPE_LIMIT, () => mxQuantize(x, "e2m1", { axis: 0 }));
    const want = transpose(mxReference("e2m1", transpose(held, rows, len), rows), len, rows);
    assertSame(first.values, want, `${dt} axis 0`);
    assert.deepEqual(first.codes, await whole(() => mxQuantize(x, "e2m1", { axis: 0 })));
    x.dispose();
  }
});
