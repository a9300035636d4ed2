/** Tests of finfo() and iinfo() against DESIGN.md's table, torch.finfo and the formats' numbers. */

import assert from "node:assert/strict";
import { DTypeError } from "../../errors.ts";
import { bfloat16, dtype, finfo, iinfo } from "../../dtypes/mod.ts";

Deno.test("finfo() of e4m3, e5m2, f16 and bf16 matches DESIGN.md's table", () => {
  const table: [string, number, number, number][] = [
    ["e4m3", 448, 2 ** -6, 2 ** -9],
    ["e5m2", 57344, 2 ** -14, 2 ** -16],
    ["f16", 65504, 2 ** -14, 2 ** -24],
    ["bf16", 3.3895313892515355e38, 2 ** -126, 2 ** -133],
  ];
  for (const [name, max, minNormal, minSub] of table) {
    const f = finfo(name);
    assert.equal(f.dtype, name);
    assert.equal(f.max, max, `${name} max`);
    assert.equal(f.min, -max, `${name} min`);
    assert.equal(f.smallestNormal, minNormal, `${name} smallest normal`);
    assert.equal(f.smallestSubnormal, minSub, `${name} smallest subnormal`);
  }
  assert.equal(finfo("e4m3").hasInf, false);
  assert.equal(finfo("e4m3").hasNaN, true);
  assert.equal(finfo("e5m2").hasInf, true);
  assert.equal(finfo("e5m2").hasNaN, true);
});

Deno.test("finfo() gives the eps and resolution torch.finfo gives", () => {
  // torch.finfo: float32 eps 1.1920928955078125e-07 resolution 1e-06; float16 eps 0.0009765625
  // resolution 0.001; bfloat16 eps 0.0078125 resolution 0.01; float8_e4m3fn eps 0.125
  // resolution 1.0; float8_e5m2 eps 0.25 resolution 1.0.
  const torch: [string, number, number, number, number][] = [
    ["f32", 2 ** -23, 1e-6, 3.4028234663852886e38, 1.1754943508222875e-38],
    ["f16", 2 ** -10, 0.001, 65504, 6.103515625e-5],
    ["bf16", 2 ** -7, 0.01, 3.3895313892515355e38, 1.1754943508222875e-38],
    ["e4m3", 0.125, 1, 448, 0.015625],
    ["e5m2", 0.25, 1, 57344, 6.103515625e-5],
  ];
  for (const [name, eps, resolution, max, tiny] of torch) {
    const f = finfo(name);
    assert.equal(f.eps, eps, `${name} eps`);
    assert.equal(f.resolution, resolution, `${name} resolution`);
    assert.equal(f.max, max, `${name} max`);
    assert.equal(f.smallestNormal, tiny, `${name} tiny`);
  }
  assert.equal(finfo("f32").smallestSubnormal, 2 ** -149);
  assert.equal(finfo("f32").bits, 32);
  assert.equal(finfo("f16").bits, 16);
  assert.equal(finfo("e4m3").bits, 8);
});

Deno.test("finfo() of the OCP MX formats: e2m1fn max 6, e3m2fn max 28, e2m3fn max 7.5, no Inf and no NaN", () => {
  const mx: [string, number, number, number, number][] = [
    ["e2m1fn", 6, 1, 0.5, 4],
    ["e3m2fn", 28, 0.25, 0.0625, 6],
    ["e2m3fn", 7.5, 1, 0.125, 6],
  ];
  for (const [name, max, minNormal, minSub, bits] of mx) {
    const f = finfo(name);
    assert.equal(f.max, max, `${name} max`);
    assert.equal(f.smallestNormal, minNormal, `${name} smallest normal`);
    assert.equal(f.smallestSubnormal, minSub, `${name} smallest subnormal`);
    assert.equal(f.bits, bits);
    assert.equal(f.hasInf, false);
    assert.equal(f.hasNaN, false);
  }
});

Deno.test("finfo() of every eXmY and eXmYfn follows from the format's numbers and equals its decoded max code", () => {
  for (let e = 2; e <= 8; e++) {
    for (let m = 1; m <= 23; m++) {
      for (const suffix of ["", "fn"]) {
        const name = `e${e}m${m}${suffix}`;
        const fn = suffix === "fn" || name === "e4m3"; // e4m3 is OCP's e4m3fn
        if (suffix === "fn" && e === 8) continue; // e8mYfn exceeds f32 and is rejected
        const f = finfo(name);
        const bits = 1 + e + m;
        const emin = 2 - 2 ** (e - 1);
        let max: number;
        if (!fn) max = (2 - 2 ** -m) * 2 ** (2 ** (e - 1) - 1); // top exponent reserved
        else if (bits >= 8) max = (2 - 2 ** (1 - m)) * 2 ** (2 ** (e - 1)); // all-ones is NaN
        else max = (2 - 2 ** -m) * 2 ** (2 ** (e - 1)); // every code finite
        assert.equal(f.max, max, `${name} max`);
        assert.equal(f.min, -max);
        assert.equal(f.smallestNormal, 2 ** emin, `${name} smallest normal`);
        assert.equal(f.smallestSubnormal, 2 ** (emin - m), `${name} smallest subnormal`);
        assert.equal(f.eps, 2 ** -m, `${name} eps`);
        assert.equal(f.resolution, 10 ** -Math.floor(m * Math.log10(2)), `${name} resolution`);
        assert.equal(f.hasInf, !fn);
        assert.equal(f.hasNaN, !fn || bits >= 8);
        // The decoded largest finite code is max, and max is a fixed point of encode.
        const d = dtype(name);
        const c = d.constants!;
        assert.equal(d.decode([c.maxCode])[0], Math.fround(max), `${name} decoded max`);
        assert.equal(d.encode(new Float32Array([max]))[0], c.maxCode);
        assert.equal(d.decode([1])[0], f.smallestSubnormal);
      }
    }
  }
});

Deno.test("finfo() of bf16x2 has bf16's range and a 16-bit significand's eps of 2^-15", () => {
  const f = finfo("bf16x2");
  const b = finfo("bf16");
  assert.equal(f.eps, 2 ** -15);
  assert.equal(f.bits, 32);
  assert.equal(f.max, b.max);
  assert.equal(f.smallestNormal, b.smallestNormal);
  assert.equal(f.smallestSubnormal, b.smallestSubnormal);
  assert.equal(f.resolution, 1e-4);
});

Deno.test("finfo() accepts aliases and descriptors, and returns a frozen object", () => {
  assert.deepEqual(finfo("e8m7"), finfo("bf16"));
  assert.deepEqual(finfo(bfloat16), finfo("bf16"));
  assert.deepEqual(finfo("e4m3fn"), finfo("e4m3"));
  assert.ok(Object.isFrozen(finfo("f16")));
});

Deno.test("finfo() of i32, u32 or bool throws a DTypeError pointing to iinfo()", () => {
  for (const name of ["i32", "u32", "bool"]) {
    assert.throws(
      () => finfo(name),
      (err: unknown) => err instanceof DTypeError && /iinfo\(\)/.test(err.message),
    );
  }
  assert.throws(() => finfo("f13"), DTypeError);
});

Deno.test("iinfo() gives torch.iinfo's limits for i32 and u32 and rejects floats and bool", () => {
  assert.deepEqual({ ...iinfo("i32") }, {
    dtype: "i32",
    bits: 32,
    min: -2147483648,
    max: 2147483647,
  });
  assert.deepEqual({ ...iinfo("u32") }, { dtype: "u32", bits: 32, min: 0, max: 4294967295 });
  assert.equal(iinfo("int32").max, 2 ** 31 - 1);
  assert.ok(Object.isFrozen(iinfo("i32")));
  for (const name of ["f32", "bf16", "e4m3", "bf16x2", "bool"]) {
    assert.throws(
      () => iinfo(name),
      (err: unknown) => err instanceof DTypeError && /finfo\(\)/.test(err.message),
    );
  }
});
