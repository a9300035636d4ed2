import assert from "node:assert/strict";
import {
  AdamW,
  applyPrecision,
  autocast,
  AUTOCAST_POLICY,
  dtype,
  DTypeError,
  Linear,
  matmul,
  mseLoss,
  precisionStrategy,
  type Rounding,
  SGD,
  type Tensor,
  tensor,
  tidy,
} from "../../mod.ts";
import { autocastState } from "../../tensor/mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { rng, ulpsOff } from "./_reference.ts";

Deno.test("autocast runs matmul in the lower dtype, f32-list ops in f32, the rest at the widest input", () => {
  const a = tensor([[1, 2], [3, 4]]), b = tensor([[0.5], [0.25]]);
  const h = tensor([1, 2], { dtype: "bf16" });
  using _ = autocast({ dtype: "bf16" });
  assert.equal(a.matmul(b).dtype, "bf16");
  assert.equal(h.exp().dtype, "f32");
  assert.equal(h.softmax().dtype, "f32");
  assert.equal(h.sum().dtype, "f32");
  assert.equal(h.add(h).dtype, "bf16");
  assert.equal(h.add(a.slice([[0, 1]]).reshape([2])).dtype, "f32");
});

Deno.test("every op consults its own policy: mseLoss squares bf16 inputs in f32 under autocast", async () => {
  // inputs whose bf16 squares would round: (1 + 2^-7)^2 = 1 + 2^-6 + 2^-14 is not a bf16
  const x = tensor([1 + 2 ** -7, 3], { dtype: "bf16" }), y = tensor([0, 0], { dtype: "bf16" });
  const want = ((1 + 2 ** -7) ** 2 + 9) / 2; // f64, exact in f32
  const got = autocast({ dtype: "bf16" }, () => mseLoss(x, y));
  assert.equal(got.dtype, "f32");
  assert.equal(await got.item(), Math.fround(want));
  // outside autocast: bf16 arithmetic, the square rounded to bf16 (as PyTorch without autocast)
  assert.equal(mseLoss(x, y).dtype, "bf16");
  // the table that gathers the rows names every op's policy (none of them a free string)
  assert.equal(AUTOCAST_POLICY.mseLoss, "f32");
  assert.equal(AUTOCAST_POLICY.softplus, "widest");
  assert.equal(AUTOCAST_POLICY.exp, "f32");
  assert.equal(AUTOCAST_POLICY.bmm, undefined, "no row names no op");
});

Deno.test("autocast contexts nest, enabled: false turns them off, and the function form restores state", () => {
  const a = tensor([[1, 2]]), b = tensor([[3], [4]]);
  assert.equal(autocastState(), null);
  autocast({ dtype: "f16" }, () => {
    assert.equal(a.matmul(b).dtype, "f16");
    autocast({ dtype: "bf16" }, () => assert.equal(a.matmul(b).dtype, "bf16"));
    autocast({ enabled: false }, () => assert.equal(a.matmul(b).dtype, "f32"));
    assert.equal(a.matmul(b).dtype, "f16");
  });
  assert.equal(autocastState(), null);
  assert.throws(() => autocast({ dtype: "i32" }), DTypeError);
  assert.throws(() =>
    autocast({ dtype: "f16" }, () => {
      throw new Error("boom");
    }), /boom/);
  assert.equal(autocastState(), null, "a throwing body leaves the context");
});

Deno.test("a parameter used twice in one context is cast once; gradients reach the f32 master in f32", async () => {
  const fc = new Linear(3, 2, { seed: 1 });
  const x = tensor([[1, 2, 3]]);
  const rt = await getRuntime();
  tidy(() => {
    using _ = autocast({ dtype: "bf16" });
    const d0 = rt.counters.dispatches;
    fc.forward(x);
    const first = rt.counters.dispatches - d0;
    const d1 = rt.counters.dispatches;
    const y = fc.forward(x);
    const second = rt.counters.dispatches - d1;
    assert.ok(
      second < first,
      `the second forward reuses the cast weight (${second} vs ${first} dispatches)`,
    );
    assert.equal(y.dtype, "bf16");
    y.sum().backward();
  });
  assert.equal(fc.weight.grad!.dtype, "f32");
  const g = Array.from(await fc.weight.grad!.toArray());
  // d(sum(y))/dW[o, k] = x[k] (only the second forward was backpropagated)
  assert.deepEqual(g, [1, 2, 3, 1, 2, 3]);
});

// ---- simulated formats on the inputs of every GEMM, forward and backward ----------------------

const seeded = (n: number, seed: number, scale: number) => {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => (2 * r() - 1) * scale);
};

/** `x` rounded to dtype `name` with `rounding`, as f64 values. */
function rounded(name: string, x: ArrayLike<number>, rounding: Rounding = "rne"): Float64Array {
  const d = dtype(name);
  return Float64Array.from(d.decode(d.encode(Float32Array.from(x), { rounding })));
}

Deno.test("a simulated format rounds the backward GEMM inputs (the incoming gradient) with its format and rounding", async () => {
  const M = 5, K = 12, N = 7;
  const av = seeded(M * K, 1, 2), bv = seeded(K * N, 2, 2), gv = seeded(M * N, 3, 1);
  for (const [fmt, rounding] of [["e8m3", "truncate"], ["e5m6", "rne"]] as const) {
    const a = tensor(av, { shape: [M, K], requiresGrad: true });
    const b = tensor(bv, { shape: [K, N], requiresGrad: true });
    const g = tensor(gv, { shape: [M, N] });
    const y = tidy(() => {
      using _ = autocast({ dtype: fmt, rounding });
      const y = matmul(a, b);
      y.mul(g).sum().backward(); // y's gradient arrives in f32: g
      return y;
    });
    assert.equal(y.dtype, fmt);
    const at = rounded(fmt, av, rounding), bt = rounded(fmt, bv, rounding);
    const gt = rounded(fmt, gv, rounding);
    // products accumulated in f32, rounded once (RNE) to the dtype of the cast operands
    const mm = (x: ArrayLike<number>, y: ArrayLike<number>, m: number, k: number, n: number) =>
      Float64Array.from({ length: m * n }, (_, ij) => {
        let s = 0;
        for (let q = 0; q < k; q++) s += x[Math.floor(ij / n) * k + q] * y[q * n + (ij % n)];
        return s;
      });
    const tr = (x: ArrayLike<number>, r: number, c: number) =>
      Float64Array.from({ length: r * c }, (_, ji) => x[(ji % r) * c + Math.floor(ji / r)]);
    const check = (got: ArrayLike<number>, want: Float64Array, what: string) => {
      const w = rounded(fmt, want);
      for (let i = 0; i < w.length; i++) {
        assert.ok(ulpsOff(fmt, got[i], w[i]) <= 1, `${fmt} ${what}[${i}]: ${got[i]} vs ${w[i]}`);
      }
      return w;
    };
    check(await y.toArray(), mm(at, bt, M, K, N), "y");
    const da = check(await a.grad!.toArray(), mm(gt, tr(bt, K, N), M, N, K), "dA");
    check(await b.grad!.toArray(), mm(tr(at, M, K), gt, K, M, N), "dB");
    // with the gradient unrounded, dA would differ: the rounding is really applied
    const plain = rounded(fmt, mm(gv, tr(bt, K, N), M, N, K));
    assert.ok(plain.some((v, i) => v !== da[i]), `${fmt}: the gradient's rounding shows`);
  }
});

Deno.test("fewer exponent bits clip the range as the format says: Inf for e3m4, NaN for e4m3 (fn), forward and backward", async () => {
  const b = tensor([[1], [1]]);
  const run = async (fmt: string, big: number) => {
    const a = tensor([[big, 1]], { requiresGrad: true });
    const y = tidy(() => {
      using _ = autocast({ dtype: fmt });
      const y = matmul(a, b);
      y.mul(big).sum().backward(); // a gradient beyond the range too
      return y;
    });
    return [...await y.toArray(), ...await a.grad!.toArray()];
  };
  // e3m4: max 15.5, Inf beyond; e4m3 (e4m3fn): max 448, no Inf, NaN beyond; in range: finite
  assert.deepEqual(await run("e3m4", 100), [Infinity, Infinity, Infinity]);
  assert.ok((await run("e4m3", 1000)).every(Number.isNaN));
  assert.deepEqual(await run("e4m3", 100), [96, 96, 96]); // 96 + 1 rounds to 96
});

Deno.test("stochastic rounding of the incoming gradient lands on a neighbour in the format, unbiased", async () => {
  // b = I: dA = rounded(g) @ I = the gradient as the backward GEMM received it
  const n = 16, rows = 64;
  const gv = seeded(rows * n, 7, 1);
  const a = tensor(new Float32Array(rows * n), { shape: [rows, n], requiresGrad: true });
  const eye = tensor(Float32Array.from({ length: n * n }, (_, i) => (i % (n + 1) === 0 ? 1 : 0)), {
    shape: [n, n],
  });
  const g = tensor(gv, { shape: [rows, n] });
  tidy(() => {
    using _ = autocast({ dtype: "e8m2", rounding: "stochastic", seed: 3 });
    matmul(a, eye).mul(g).sum().backward();
  });
  const got = await a.grad!.toArray();
  const down = rounded("e8m2", gv, "truncate");
  let ups = 0, bias = 0;
  for (let i = 0; i < gv.length; i++) {
    // the value truncated toward zero, or the next one away from zero
    const away = Math.abs(got[i]) > Math.abs(down[i]) && Math.abs(got[i]) >= Math.abs(gv[i]);
    assert.ok(
      got[i] === down[i] || (away && ulpsOff("e8m2", got[i], down[i]) === 1),
      `${i}: ${gv[i]} became ${got[i]}`,
    );
    if (got[i] !== down[i]) ups++;
    bias += got[i] - gv[i];
  }
  assert.ok(
    ups > gv.length / 8 && ups < (7 * gv.length) / 8,
    `${ups} of ${gv.length} rounded away`,
  );
  assert.ok(Math.abs(bias / gv.length) < 0.02, `mean error ${bias / gv.length}`);
});

Deno.test("a pure simulated-format strategy stores weights, gradients and optimizer state in that format", async () => {
  const fc = applyPrecision(new Linear(4, 3, { seed: 2, bias: false }), "e8m5");
  assert.equal(fc.weight.dtype, "e8m5");
  const s = precisionStrategy("e8m5");
  assert.deepEqual([s.param.name, s.grad.name, s.stateDtype("expAvgSq").name], [
    "e8m5",
    "e8m5",
    "e8m5",
  ]);
  assert.equal(precisionStrategy("e8m7"), precisionStrategy("bf16"), "e8m7 is bf16");
  const w0 = Array.from(await fc.weight.toArray());
  const opt = new SGD(fc.parameters(), { lr: 0.1, precision: "e8m5" });
  const x = tensor([[1, -2, 0.5, 3]]);
  fc.forward(x).sum().backward();
  assert.equal(fc.weight.grad!.dtype, "e8m5");
  const g = Array.from(await fc.weight.grad!.toArray());
  opt.step();
  // w' = e8m5(w - lr g), computed in f32 and rounded once
  const want = rounded("e8m5", w0.map((w, i) => Math.fround(w - Math.fround(0.1 * g[i]))));
  assert.deepEqual(Array.from(await fc.weight.toArray()), Array.from(want));
  const adam = new AdamW(fc.parameters(), { lr: 0.1, precision: "e8m5" });
  fc.forward(x).sum().backward();
  adam.step();
  assert.equal((adam.stateDict().state[0].expAvg as Tensor).dtype, "e8m5");
  opt.dispose();
  adam.dispose();
});
