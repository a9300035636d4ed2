/** Tests of dtype descriptors: name parsing, errors, fields, and the int and bool codecs. */

import assert from "node:assert/strict";
import { DTypeError, UlpError, ValueError } from "../../errors.ts";
import {
  bf16x2,
  bfloat16,
  boolean,
  type DType,
  dtype,
  DTYPE_FORMS,
  e4m3,
  e5m2,
  float16,
  float32,
  int32,
  isFloat,
  uint32,
} from "../../dtypes/mod.ts";

Deno.test("dtype() returns the built-in descriptors for their canonical names", () => {
  assert.equal(dtype("f32"), float32);
  assert.equal(dtype("f16"), float16);
  assert.equal(dtype("bf16"), bfloat16);
  assert.equal(dtype("e4m3"), e4m3);
  assert.equal(dtype("e5m2"), e5m2);
  assert.equal(dtype("i32"), int32);
  assert.equal(dtype("u32"), uint32);
  assert.equal(dtype("bool"), boolean);
  assert.equal(dtype("bf16x2"), bf16x2);
  for (const name of ["f32", "f16", "bf16", "e4m3", "e5m2", "i32", "u32", "bool", "bf16x2"]) {
    assert.equal(dtype(name).name, name);
  }
});

Deno.test("dtype() resolves the aliases e5m10, e8m7, e8m23 and e4m3fn to f16, bf16, f32 and e4m3", () => {
  assert.equal(dtype("e5m10"), float16);
  assert.equal(dtype("e8m7"), bfloat16);
  assert.equal(dtype("e8m23"), float32);
  assert.equal(dtype("e4m3fn"), e4m3);
  assert.equal(dtype("float32"), float32);
  assert.equal(dtype("float16"), float16);
  assert.equal(dtype("bfloat16"), bfloat16);
  assert.equal(dtype("int32"), int32);
  assert.equal(dtype("uint32"), uint32);
  assert.equal(dtype("e5m10").name, "f16");
  assert.equal(dtype("e4m3fn").name, "e4m3");
});

Deno.test("dtype() of a descriptor returns the same descriptor", () => {
  for (const d of [float32, bfloat16, e4m3, int32, boolean, bf16x2, dtype("e3m2")]) {
    assert.equal(dtype(d), d);
  }
});

Deno.test("dtype() of a simulated eXmY name builds one descriptor and returns it again", () => {
  const a = dtype("e8m3");
  assert.equal(dtype("e8m3"), a);
  assert.equal(a.name, "e8m3");
  assert.equal(dtype("e5m6").name, "e5m6");
  assert.equal(dtype("e2m1fn").name, "e2m1fn");
  assert.notEqual(dtype("e2m1fn"), dtype("e2m1"));
  assert.notEqual(dtype("e5m2fn"), e5m2);
});

Deno.test("dtype() throws a DTypeError listing the valid forms for unknown names and out-of-range eXmY", () => {
  const bad: unknown[] = [
    "e9m2",
    "e1m3",
    "e0m3",
    "e4m0",
    "e4m24",
    "e2m0fn",
    "foo",
    "",
    "F32",
    "f64",
    "e4m3fnuz",
    "e4",
    42,
    null,
    undefined,
    { name: "f32" },
  ];
  for (const name of bad) {
    assert.throws(
      () => dtype(name as string),
      (err: unknown) => {
        assert.ok(err instanceof DTypeError, `${String(name)}: ${err}`);
        assert.ok(err instanceof UlpError);
        assert.equal(err.name, "DTypeError");
        assert.ok(err.message.includes(DTYPE_FORMS), `${String(name)}: ${err.message}`);
        for (const form of ["f32", "f16", "bf16", "e4m3", "e5m2", "i32", "u32", "bool", "eXmY"]) {
          assert.ok(err.message.includes(form), `message lists ${form}: ${err.message}`);
        }
        return true;
      },
    );
  }
});

Deno.test("dtype() says which bound an out-of-range eXmY breaks", () => {
  assert.throws(
    () => dtype("e9m2"),
    /exponent bits must be 2\.\.8 and mantissa bits 1\.\.23 \(got 9 and 2\)/,
  );
  assert.throws(() => dtype("e4m24"), /got 4 and 24/);
  assert.throws(() => dtype("foo"), /dtype\('foo'\): unknown dtype/);
  assert.throws(() => dtype(42 as unknown as string), /expected a dtype name, got number/);
});

/** The fields DESIGN.md section 2 lists, checked for one descriptor. */
function checkFields(
  d: DType,
  want: {
    name: string;
    kind: string;
    e: number;
    m: number;
    bias: number;
    hasInf: boolean;
    nan: string;
    bits: number;
    lanesPerWord: number;
  },
) {
  const label = want.name;
  assert.equal(d.name, want.name, label);
  assert.equal(d.kind, want.kind, label);
  assert.equal(d.exponentBits, want.e, label);
  assert.equal(d.mantissaBits, want.m, label);
  assert.equal(d.bias, want.bias, label);
  assert.equal(d.hasInf, want.hasInf, label);
  assert.equal(d.nan, want.nan, label);
  assert.equal(typeof d.saturate, "boolean", label);
  assert.equal(d.bits, want.bits, label);
  assert.equal(d.lanesPerWord, want.lanesPerWord, label);
  assert.equal(d.laneBits * d.lanesPerWord, 32, label);
  assert.equal(d.bytesPerElement, d.laneBits / 8, label);
  assert.ok(d.bits <= d.laneBits, label);
  assert.ok(Object.isFrozen(d), `${label} is frozen`);
}

Deno.test("descriptors carry the fields DESIGN.md lists, with 4 lanes for 8-bit and smaller codes, 2 for 16-bit", () => {
  const f = (name: string, e: number, m: number, hasInf: boolean, nan: string, lanes: number) =>
    checkFields(dtype(name), {
      name,
      kind: "float",
      e,
      m,
      bias: 2 ** (e - 1) - 1,
      hasInf,
      nan,
      bits: 1 + e + m,
      lanesPerWord: lanes,
    });
  f("f32", 8, 23, true, "ieee", 1);
  f("f16", 5, 10, true, "ieee", 2);
  f("bf16", 8, 7, true, "ieee", 2);
  f("e4m3", 4, 3, false, "fn", 4);
  f("e5m2", 5, 2, true, "ieee", 4);
  f("e8m3", 8, 3, true, "ieee", 2); // 12 bits: a 16-bit lane
  f("e5m6", 5, 6, true, "ieee", 2);
  f("e3m2", 3, 2, true, "ieee", 4);
  f("e3m4", 3, 4, true, "ieee", 4);
  f("e2m1fn", 2, 1, false, "none", 4);
  f("e3m2fn", 3, 2, false, "none", 4);
  f("e2m3fn", 2, 3, false, "none", 4);
  f("e5m2fn", 5, 2, false, "fn", 4);
  f("e8m15", 8, 15, true, "ieee", 1); // 24 bits: a 32-bit lane
  f("e7m16fn", 7, 16, false, "fn", 1);
  checkFields(int32, {
    name: "i32",
    kind: "int",
    e: 0,
    m: 0,
    bias: 0,
    hasInf: false,
    nan: "none",
    bits: 32,
    lanesPerWord: 1,
  });
  assert.equal(int32.signed, true);
  assert.equal(uint32.signed, false);
  assert.equal(uint32.kind, "int");
  assert.equal(uint32.lanesPerWord, 1);
  assert.equal(boolean.kind, "bool");
  assert.equal(boolean.lanesPerWord, 1);
  assert.equal(boolean.bytesPerElement, 4);
  assert.equal(bf16x2.kind, "mcf");
  assert.equal(bf16x2.bits, 32);
  assert.equal(bf16x2.lanesPerWord, 1);
  assert.equal(bf16x2.component, bfloat16);
  assert.equal(bfloat16.component, null);
});

Deno.test("every eXmY with X in 2..8 and Y in 1..23 parses, with bias 2^(X-1)-1 and lanes by width", () => {
  for (let e = 2; e <= 8; e++) {
    for (let m = 1; m <= 23; m++) {
      for (const suffix of ["", "fn"]) {
        // "e4m3" is OCP's e4m3fn, not an IEEE-style e4m3; every other eXmY is IEEE-style.
        const fn = suffix === "fn" || (e === 4 && m === 3);
        if (suffix === "fn" && e === 8) continue; // rejected: see the next test
        const d = dtype(`e${e}m${m}${suffix}`);
        assert.equal(d.exponentBits, e);
        assert.equal(d.mantissaBits, m);
        assert.equal(d.bias, 2 ** (e - 1) - 1);
        assert.equal(d.bits, 1 + e + m);
        assert.equal(d.hasInf, !fn);
        assert.equal(d.nan, fn ? (d.bits >= 8 ? "fn" : "none") : "ieee");
        const bits = 1 + e + m;
        assert.equal(d.lanesPerWord, bits <= 8 ? 4 : bits <= 16 ? 2 : 1, d.name);
        assert.ok(isFloat(d));
      }
    }
  }
});

Deno.test("dtype() rejects the finite e8 formats eXmYfn with X = 8, whose top binade exceeds f32", () => {
  for (let m = 1; m <= 23; m++) {
    assert.throws(
      () => dtype(`e8m${m}fn`),
      (err: unknown) =>
        err instanceof DTypeError && err.message.includes(`use e8m${m} instead`) &&
        err.message.includes(DTYPE_FORMS),
    );
  }
});

Deno.test("isFloat() is true for float and mcf dtypes and false for i32, u32 and bool", () => {
  for (const n of ["f32", "f16", "bf16", "e4m3", "e5m2", "e3m2", "e2m1fn", "bf16x2"]) {
    assert.equal(isFloat(n), true, n);
  }
  for (const n of ["i32", "u32", "bool"]) assert.equal(isFloat(n), false, n);
  assert.throws(() => isFloat("f13"), DTypeError);
});

Deno.test("i32 encode truncates toward zero, maps NaN to 0 and clamps; decode reads the codes as signed", () => {
  const xs = new Float32Array([
    0,
    -0,
    1.9,
    -1.9,
    2.5,
    -2.5,
    1e10,
    -1e10,
    2 ** 31,
    -(2 ** 31),
    NaN,
    Infinity,
    -Infinity,
    123456,
  ]);
  const codes = int32.encode(xs);
  assert.ok(codes instanceof Uint32Array);
  const want = [
    0,
    0,
    1,
    -1,
    2,
    -2,
    2 ** 31 - 1,
    -(2 ** 31),
    2 ** 31 - 1,
    -(2 ** 31),
    0,
    2 ** 31 - 1,
    -(2 ** 31),
    123456,
  ];
  assert.deepEqual(Array.from(codes), want.map((v) => v >>> 0));
  assert.deepEqual(Array.from(int32.decode(codes)), want.map(Math.fround));
  assert.deepEqual(Array.from(int32.decode([0xffffffff, 0x80000000, 7])), [-1, -(2 ** 31), 7]);
});

Deno.test("u32 encode truncates toward zero and clamps to 0..2^32-1; decode reads the codes as unsigned", () => {
  const xs = new Float32Array([0, 1.9, -1.9, -5, 2 ** 32, 1e20, NaN, Infinity, -Infinity, 4e9]);
  const codes = uint32.encode(xs);
  assert.deepEqual(Array.from(codes), [
    0,
    1,
    0,
    0,
    2 ** 32 - 1,
    2 ** 32 - 1,
    0,
    2 ** 32 - 1,
    0,
    4e9,
  ]);
  assert.deepEqual(Array.from(uint32.decode([0xffffffff, 0x80000000, 7])), [
    Math.fround(2 ** 32 - 1),
    2 ** 31,
    7,
  ]);
});

Deno.test("bool encode maps every non-zero value (NaN included) to 1 and +-0 to 0; decode gives 0 or 1", () => {
  const codes = boolean.encode(new Float32Array([0, -0, 1, -3, 1e-45, NaN, Infinity]));
  assert.deepEqual(Array.from(codes), [0, 0, 1, 1, 1, 1, 1]);
  assert.deepEqual(Array.from(boolean.decode([0, 1, 2, 0xffffffff])), [0, 1, 1, 1]);
});

Deno.test("encode() takes only a Float32Array and says how to wrap other values", () => {
  for (const d of [float32, bfloat16, e4m3, int32, uint32, boolean, bf16x2]) {
    assert.throws(
      () => d.encode([1, 2] as unknown as Float32Array),
      (err: unknown) =>
        err instanceof ValueError && /must be a Float32Array, got Array/.test(err.message) &&
        /new Float32Array/.test(err.message),
    );
    assert.throws(() => d.encode(new Float64Array(2) as unknown as Float32Array), ValueError);
  }
});

Deno.test("encode() returns codes as wide as the format: Uint8Array, Uint16Array or Uint32Array", () => {
  const xs = new Float32Array([1, 2]);
  assert.ok(e4m3.encode(xs) instanceof Uint8Array);
  assert.ok(dtype("e2m1fn").encode(xs) instanceof Uint8Array);
  assert.ok(bfloat16.encode(xs) instanceof Uint16Array);
  assert.ok(dtype("e8m3").encode(xs) instanceof Uint16Array);
  assert.ok(float32.encode(xs) instanceof Uint32Array);
  assert.ok(bf16x2.encode(xs) instanceof Uint32Array);
  assert.ok(e4m3.decode([0x38]) instanceof Float32Array);
});

Deno.test("encode() on a subarray reads only the view's elements", () => {
  const base = new Float32Array([9, 1, 2, 3, 9]);
  const view = base.subarray(1, 4);
  assert.deepEqual(Array.from(bfloat16.encode(view)), [0x3f80, 0x4000, 0x4040]);
  assert.deepEqual(Array.from(e4m3.encode(view)), [0x38, 0x40, 0x44]);
});

Deno.test("the docs' examples hold: e4m3 encodes 1.5 and 500 (saturating) to 60 and 126, bf16 decodes 0x3f80 and 0xc000 to 1 and -2", () => {
  assert.deepEqual(Array.from(e4m3.encode(new Float32Array([1.5, 500]), { saturate: true })), [
    60,
    126,
  ]);
  assert.deepEqual(Array.from(bfloat16.decode([0x3f80, 0xc000])), [1, -2]);
  assert.deepEqual(
    Array.from(e4m3.decode(e4m3.encode(new Float32Array([0.1, 1, 300, 1000]), { saturate: true }))),
    [0.1015625, 1, 288, 448],
  );
});
