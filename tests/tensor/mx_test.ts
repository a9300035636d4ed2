// OCP MX block quantisation (tensor/amp/mx.ts) against the host reference of _fp8_reference.ts.
import assert from "node:assert/strict";
import { DTypeError, mxQuantize, ShapeError, tensor } from "../../mod.ts";
import { mxElementDtype, mxEmax } from "../../tensor/mod.ts";
import { rng } from "./_reference.ts";
import { mxReference, transpose } from "./_fp8_reference.ts";

const FORMATS = ["e4m3", "e5m2", "e3m2", "e2m3", "e2m1"];

/** Compares bit for bit (NaN matches NaN; -0 and +0 are told apart). */
function assertSame(got: ArrayLike<number>, want: ArrayLike<number>, what: string): void {
  assert.equal(got.length, want.length, what);
  for (let i = 0; i < want.length; i++) {
    if (Number.isNaN(want[i]) && Number.isNaN(got[i])) continue;
    assert.ok(Object.is(got[i], want[i]), `${what}[${i}]: got ${got[i]}, want ${want[i]}`);
  }
}

Deno.test("MX element formats map to OCP's finite FP6/FP4 variants with emax 8, 15, 4, 2, 2", () => {
  assert.deepEqual(FORMATS.map((f) => mxElementDtype(f).name), [
    "e4m3",
    "e5m2",
    "e3m2fn",
    "e2m3fn",
    "e2m1fn",
  ]);
  assert.deepEqual(FORMATS.map((f) => mxEmax(mxElementDtype(f))), [8, 15, 4, 2, 2]);
  assert.throws(() => mxQuantize(tensor([1]), "bf16"), DTypeError);
  assert.throws(() => mxQuantize(tensor([[1]]), "e4m3", { axis: 2 }), ShapeError);
});

Deno.test("mxQuantize() matches the host reference on random blocks of every format, with a short last block", async () => {
  const r = rng(7);
  const rows = 3, len = 70; // blocks of 32, 32 and 6
  // magnitudes over many binades, so blocks differ in scale and elements underflow
  const x = Float32Array.from(
    { length: rows * len },
    () => (r() - 0.5) * 2 ** Math.floor(r() * 24 - 12),
  );
  const t = tensor(x, { shape: [rows, len] });
  for (const f of FORMATS) {
    const got = await mxQuantize(t, f).toArray();
    assertSame(got, mxReference(f, x, len), f);
  }
  // along axis 0: the same as quantising the transpose along its last axis
  const got = await mxQuantize(t, "e4m3", { axis: 0 }).toArray();
  const want = transpose(mxReference("e4m3", transpose(x, rows, len), rows), len, rows);
  assertSame(got, want, "axis 0");
  // bf16 input: the values it holds
  const tb = tensor(x, { shape: [rows, len], dtype: "bf16" });
  const xb = await tb.toArray();
  assertSame(await mxQuantize(tb, "e2m1").toArray(), mxReference("e2m1", xb, len), "bf16 in");
});

Deno.test("mxQuantize() edge blocks: all zero, one huge value, NaN, Inf, subnormals, range ends", async () => {
  const block = (f: (j: number) => number) => Array.from({ length: 32 }, (_, j) => f(j));
  const cases: [string, number[]][] = [
    ["all zero", block(() => 0)],
    ["signed zeros", block((j) => (j % 2 ? -0 : 0))],
    ["one huge value", block((j) => (j === 5 ? 3e38 : 1 + j / 32))],
    ["one NaN", block((j) => (j === 9 ? NaN : j))],
    ["one Inf", block((j) => (j === 0 ? -Infinity : 1))],
    ["subnormals", block((j) => (j - 16) * 2 ** -140)],
    ["tiny normals", block((j) => (j + 1) * 2 ** -125)],
    ["f32 max", block((j) => (j === 3 ? 3.4028234663852886e38 : -j * 1e37))],
    ["powers of two", block((j) => 2 ** (j - 16))],
    ["ties", block((j) => 256 + 16 * j)],
  ];
  const x = cases.flatMap(([, v]) => v);
  const t = tensor(Float32Array.from(x), { shape: [cases.length, 32] });
  const xs = Float32Array.from(x);
  for (const f of FORMATS) {
    const got = await mxQuantize(t, f).toArray();
    const want = mxReference(f, xs, 32);
    cases.forEach(([name], k) => {
      assertSame(got.slice(32 * k, 32 * k + 32), want.slice(32 * k, 32 * k + 32), `${f} ${name}`);
    });
  }
  // spot checks written out: a NaN or Inf poisons its block; the huge value saturates the
  // scale so that the others flush to zero in e2m1
  const e2m1 = await mxQuantize(t, "e2m1").toArray();
  assert.ok(Array.from(e2m1.slice(96, 128)).every(Number.isNaN), "NaN block");
  assert.ok(Array.from(e2m1.slice(128, 160)).every(Number.isNaN), "Inf block");
  // 3e38 = 1.76 * 2^127: scale 2^(127 - 2); 3e38 / 2^125 = 7.05 saturates to 6
  assert.equal(e2m1[64 + 5], 6 * 2 ** 125);
  assert.deepEqual(Array.from(e2m1.slice(64, 69)), [0, 0, 0, 0, 0]);
  assert.deepEqual(Array.from(e2m1.slice(0, 4)), [0, 0, 0, 0]);
});

Deno.test("mxQuantize() passes the gradient straight through", async () => {
  const x = tensor([0.3, -2, 5], { requiresGrad: true });
  mxQuantize(x, "e2m1").mul(tensor([1, 2, 3])).sum().backward();
  assert.deepEqual(Array.from(await x.grad!.toArray()), [1, 2, 3]);
});
