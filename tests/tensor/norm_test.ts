// Fused layer norm and RMS norm (tensor/ops/norm.ts, through nn's layerNorm and rmsNorm) against an
// f64 host reference rounded once to the output dtype, on the real adapter: f32, bf16, f16 and
// e4m3 inputs, odd row lengths, many rows, weight and bias present or not, gradients against
// the host's analytic ones and against central finite differences, and dispatch counts.
import assert from "node:assert/strict";
import { autocast, layerNorm, rmsNorm, ShapeError, type Tensor, tensor, tidy } from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { normRef as reference, roundTo, ulpsOff, values } from "./_reference.ts";

const rt = await getRuntime();

/**
 * `got` is the reference rounded to `dt`, give or take one unit in the last place (WGSL's
 * inverseSqrt and f32 sums are not correctly rounded), or within `abs` (cancellation).
 */
function assertClose(
  what: string,
  dt: string,
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  abs: number,
): void {
  assert.equal(got.length, ref.length, what);
  for (let i = 0; i < ref.length; i++) {
    const r = dt === "f32" ? ref[i] : roundTo(dt, [ref[i]])[0];
    const ok = dt === "f32"
      ? Math.abs(got[i] - ref[i]) <= abs + 2e-6 * Math.abs(ref[i])
      : ulpsOff(dt, got[i], r) <= 1 || Math.abs(got[i] - ref[i]) <= abs;
    assert.ok(ok, `${what}[${i}]: got ${got[i]}, reference ${ref[i]} (${dt})`);
  }
}

const tol = (dt: string) => (dt === "f32" ? 2e-6 : 0);

Deno.test("layerNorm and rmsNorm over 1, 3, 17, 768 and 1000 columns match the reference rounded once in f32, bf16, f16 and e4m3", async () => {
  let seed = 1;
  for (const dt of ["f32", "bf16", "f16", "e4m3"]) {
    for (const C of [1, 3, 17, 768, 1000]) {
      const rows = C >= 768 ? 2 : 5;
      const xv = values(dt, rows * C, seed++, -3, 3);
      const wv = values(dt, C, seed++, 0.5, 1.5), bv = values(dt, C, seed++, -1, 1);
      const x = tensor(xv, { shape: [rows, C], dtype: dt });
      const w = tensor(wv, { dtype: dt }), b = tensor(bv, { dtype: dt });
      const ln = layerNorm(x, [C], w, b), rms = rmsNorm(x, w);
      assert.equal(ln.dtype, dt);
      assert.equal(rms.dtype, dt);
      const [lg, rg] = await Promise.all([ln.toArray(), rms.toArray()]);
      assertClose(
        `layerNorm ${dt} C=${C}`,
        dt,
        lg,
        reference("ln", xv, C, wv, bv, 1e-5).y,
        tol(dt),
      );
      assertClose(
        `rmsNorm ${dt} C=${C}`,
        dt,
        rg,
        reference("rms", xv, C, wv, null, 1e-6).y,
        tol(dt),
      );
      for (const t of [x, w, b, ln, rms]) t.dispose();
    }
  }
});

Deno.test("weight and bias may be null, inputs of rank 1 and 3 normalise their last dimension, and the dtypes promote", async () => {
  const xv = values("f32", 2 * 3 * 5, 40, -2, 2);
  const wv = values("f32", 5, 41, 0.5, 2), bv = values("f32", 5, 42);
  const x = tensor(xv, { shape: [2, 3, 5] });
  const w = tensor(wv), b = tensor(bv);
  const cases: [Tensor, Float64Array][] = [
    [layerNorm(x, [5]), reference("ln", xv, 5, null, null, 1e-5).y],
    [layerNorm(x, [5], w), reference("ln", xv, 5, wv, null, 1e-5).y],
    [layerNorm(x, [5], null, b), reference("ln", xv, 5, null, bv, 1e-5).y],
    [layerNorm(x, [5], w, b, 0.5), reference("ln", xv, 5, wv, bv, 0.5).y],
    [rmsNorm(x), reference("rms", xv, 5, null, null, 1e-6).y],
    [rmsNorm(x, w, 0.25), reference("rms", xv, 5, wv, null, 0.25).y],
  ];
  for (const [y, ref] of cases) {
    assert.deepEqual(y.shape, [2, 3, 5]);
    assertClose("rank 3", "f32", await y.toArray(), ref, 2e-6);
  }
  const v = tensor(xv.slice(0, 5));
  const y1 = layerNorm(v, [5], w, b);
  assert.deepEqual(y1.shape, [5]);
  assertClose(
    "rank 1",
    "f32",
    await y1.toArray(),
    reference("ln", xv.slice(0, 5), 5, wv, bv, 1e-5).y,
    2e-6,
  );
  // bf16 input with f32 weight: the output is f32 (as x * w would be), computed from bf16 x
  const xb = tensor(xv, { shape: [6, 5], dtype: "bf16" });
  const yb = layerNorm(xb, [5], w);
  assert.equal(yb.dtype, "f32");
  const xr = roundTo("bf16", xv);
  assertClose(
    "promoted",
    "f32",
    await yb.toArray(),
    reference("ln", xr, 5, wv, null, 1e-5).y,
    2e-6,
  );
  // a normalizedShape of several dimensions keeps the composite path
  const y2 = layerNorm(x, [3, 5]);
  assertClose(
    "[3, 5]",
    "f32",
    await y2.toArray(),
    reference("ln", xv, 15, null, null, 1e-5).y,
    1e-5,
  );
});

Deno.test("more rows than one grid dimension holds (70,000) are all normalised", async () => {
  const rows = 70000, C = 2;
  const xv = new Float32Array(rows * C);
  for (let r = 0; r < rows; r++) {
    xv[2 * r] = r % 7;
    xv[2 * r + 1] = (r % 7) + 2;
  }
  const x = tensor(xv, { shape: [rows, C] });
  const [ln, rms] = await Promise.all([
    layerNorm(x, [C], null, null, 0).toArray(),
    rmsNorm(x, null, 0).toArray(),
  ]);
  for (let r = 0; r < rows; r += 997) {
    assert.ok(Math.abs(ln[2 * r] + 1) < 1e-6 && Math.abs(ln[2 * r + 1] - 1) < 1e-6, `row ${r}`);
  }
  const last = rows - 1, a = last % 7, ms = Math.sqrt((a * a + (a + 2) ** 2) / 2);
  assert.ok(Math.abs(rms[2 * last + 1] - (a + 2) / ms) < 1e-6);
  assert.ok(Math.abs(ln[2 * last] + 1) < 1e-6);
});

Deno.test("gradients of x, weight and bias match the host's analytic gradients in f32, bf16 and f16", async () => {
  let seed = 50;
  for (const dt of ["f32", "bf16", "f16"]) {
    for (const C of [1, 3, 17, 768]) {
      for (const norm of ["ln", "rms"] as const) {
        const rows = C === 768 ? 3 : 4;
        const xv = values(dt, rows * C, seed++, -2, 2), gv = values(dt, rows * C, seed++);
        const wv = values(dt, C, seed++, 0.5, 1.5), bv = values(dt, C, seed++);
        const x = tensor(xv, { shape: [rows, C], dtype: dt, requiresGrad: true });
        const w = tensor(wv, { dtype: dt, requiresGrad: true });
        const b = tensor(bv, { dtype: dt, requiresGrad: true });
        const y = norm === "ln" ? layerNorm(x, [C], w, b) : rmsNorm(x, w);
        y.backward(tensor(gv, { shape: [rows, C], dtype: dt }));
        const eps = norm === "ln" ? 1e-5 : 1e-6;
        const ref = reference(norm, xv, C, wv, norm === "ln" ? bv : null, eps, gv);
        const [gx, gw] = await Promise.all([x.grad!.toArray(), w.grad!.toArray()]);
        assert.equal(x.grad!.dtype, dt);
        const what = `${norm} ${dt} C=${C}`;
        // dx is a difference of O(1) terms: allow f32 cancellation error on small entries
        assertClose(`${what} dx`, dt, gx, ref.dx, 2e-5);
        assertClose(`${what} dw`, dt, gw, ref.dw, 1e-5 * rows);
        if (norm === "ln") assertClose(`${what} db`, dt, await b.grad!.toArray(), ref.db, 1e-5);
        else assert.equal(b.grad, null);
      }
    }
  }
});

Deno.test("gradients agree with central finite differences in f32, for weight and bias too", async () => {
  for (const norm of ["ln", "rms"] as const) {
    const rows = 3, C = 7;
    const xv = values("f32", rows * C, 70, -2, 2), rv = values("f32", rows * C, 71);
    const wv = values("f32", C, 72, 0.5, 1.5), bv = values("f32", C, 73);
    const r = tensor(rv, { shape: [rows, C] });
    const f = (xa: Float32Array, wa: Float32Array, ba: Float32Array) =>
      tidy(() => {
        const xt = tensor(xa, { shape: [rows, C] }), wt = tensor(wa), bt = tensor(ba);
        const y = norm === "ln" ? layerNorm(xt, [C], wt, bt) : rmsNorm(xt, wt);
        return y.mul(r).sum();
      });
    const x = tensor(xv, { shape: [rows, C], requiresGrad: true });
    const w = tensor(wv, { requiresGrad: true }), b = tensor(bv, { requiresGrad: true });
    const y = norm === "ln" ? layerNorm(x, [C], w, b) : rmsNorm(x, w);
    y.mul(r).sum().backward();
    const grads = [await x.grad!.toArray(), await w.grad!.toArray()];
    if (norm === "ln") grads.push(await b.grad!.toArray());
    const h = 1e-2;
    const checks: { which: number; k: number; lp: Tensor; lm: Tensor }[] = [];
    grads.forEach((_, which) => {
      const n = which === 0 ? rows * C : C;
      for (const k of [0, Math.floor(n / 2), n - 1]) {
        const at = (d: number) => {
          const a = [xv, wv, bv].map((v) => Float32Array.from(v));
          a[which][k] += d;
          return f(a[0], a[1], a[2]);
        };
        checks.push({ which, k, lp: at(h), lm: at(-h) });
      }
    });
    const vals = await Promise.all(checks.flatMap((c) => [c.lp.item(), c.lm.item()]));
    checks.forEach((c, i) => {
      const fd = (vals[2 * i] - vals[2 * i + 1]) / (2 * h);
      const g = grads[c.which][c.k];
      assert.ok(
        Math.abs(g - fd) <= 2e-3 + 0.02 * Math.abs(fd),
        `${norm} input ${c.which}[${c.k}]: autograd ${g}, finite difference ${fd}`,
      );
    });
  }
});

Deno.test("the fused forward is one dispatch (two for packed rows that are not whole words), the backward two", () => {
  const count = (f: () => void) => {
    const d0 = rt.counters.dispatches;
    f();
    return rt.counters.dispatches - d0;
  };
  const cases = [["f32", 768, 1], ["bf16", 768, 1], ["e4m3", 768, 1], ["bf16", 3, 2], [
    "e4m3",
    17,
    2,
  ]] as const;
  for (const [dt, C, fwd] of cases) {
    for (const norm of ["ln", "rms"] as const) {
      tidy(() => {
        const x = tensor(values(dt, 4 * C, 90), { shape: [4, C], dtype: dt, requiresGrad: true });
        const w = tensor(values(dt, C, 91), { dtype: dt, requiresGrad: true });
        const b = tensor(values(dt, C, 92), { dtype: dt, requiresGrad: true });
        const g = tensor(values(dt, 4 * C, 93), { shape: [4, C], dtype: dt });
        let y: Tensor | null = null;
        const nf = count(() => (y = norm === "ln" ? layerNorm(x, [C], w, b) : rmsNorm(x, w)));
        assert.equal(nf, fwd, `${norm} ${dt} C=${C}`);
        // backward: dx (as many dispatches as the forward), then dw and db in one (backward()
        // copies its seed with a buffer copy, not a kernel)
        assert.equal(count(() => y!.backward(g)), fwd + 1, `${norm} backward ${dt} C=${C}`);
      });
    }
  }
});

Deno.test("under autocast bf16, layerNorm and rmsNorm run in f32 and their gradients flow back in bf16", async () => {
  const xv = values("bf16", 2 * 8, 100, -2, 2);
  const x = tensor(xv, { shape: [2, 8], dtype: "bf16", requiresGrad: true });
  const w = tensor(values("f32", 8, 101, 0.5, 1.5), { requiresGrad: true });
  const y = autocast({ dtype: "bf16" }, () => layerNorm(x, [8], w));
  const z = autocast({ dtype: "bf16" }, () => rmsNorm(x));
  assert.equal(y.dtype, "f32");
  assert.equal(z.dtype, "f32");
  assertClose(
    "autocast",
    "f32",
    await y.toArray(),
    reference("ln", xv, 8, await w.toArray(), null, 1e-5).y,
    2e-6,
  );
  y.add(z).sum().backward();
  assert.equal(x.grad!.dtype, "bf16");
  assert.equal(w.grad!.dtype, "f32");
});

Deno.test("a weight that does not fit the last dimension throws a ShapeError naming the shapes", () => {
  const x = tensor(new Float32Array(6), { shape: [2, 3] });
  assert.throws(
    () => layerNorm(x, [3], tensor([1, 2])),
    (e: unknown) =>
      e instanceof ShapeError && /\[2\]/.test(e.message) && /\[2,3\]|\[2, 3\]/.test(e.message),
  );
  assert.throws(() => rmsNorm(x, tensor([[1, 2, 3]])), ShapeError);
  assert.throws(() => layerNorm(x, [2]), ShapeError);
});
