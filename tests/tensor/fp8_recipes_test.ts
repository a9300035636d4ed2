// The FP8 recipes beside delayed scaling (tensor/amp/fp8.ts, tensor/amp/block_scaling.ts): scales and
// codes against host computations of their published formulas (_recipes_reference.ts), and
// each recipe in the GEMMs of autocast, forward and backward.
import assert from "node:assert/strict";
import {
  autocast,
  FP8Recipe,
  matmul,
  memory,
  type Tensor,
  tensor,
  tidy,
  ValueError,
} from "../../mod.ts";
import {
  blockQuantize,
  FP8_RECIPES,
  fp8Recipe,
  namedFP8Recipe,
  nvfp4Quantize,
} from "../../tensor/mod.ts";
import { randomHadamard16 } from "../../tensor/amp/block_scaling.ts";
import { rng } from "./_reference.ts";
import {
  blocksOf,
  f32BitsOf,
  fp8BlocksRef,
  nvfp4Ref,
  rht16,
  teScale,
  torchaoRowwiseScale,
  wideValues,
} from "./_recipes_reference.ts";

const arr = async (t: Tensor) => Array.from(await t.toArray());
const bitsEq = async (t: Tensor, ref: ArrayLike<number>, what: string) =>
  assert.deepEqual(f32BitsOf(await arr(t)), f32BitsOf(ref), what);

Deno.test("block scaling: 1x128 tiles and 128x128 blocks, power-of-two and f32 scales, e4m3 and e5m2, match TE's formula bit for bit", async () => {
  const r = rng(7);
  const cases = [
    { shape: [3, 300], block: [1, 128], fmt: "e4m3", pow2: true, eps: 0 },
    { shape: [130, 140], block: [128, 128], fmt: "e4m3", pow2: true, eps: 0 },
    { shape: [2, 200, 3], block: [128, 1], fmt: "e5m2", pow2: true, eps: 0 },
    { shape: [5, 40], block: [1, 16], fmt: "e4m3", pow2: false, eps: 0 },
    { shape: [4, 33], block: [2, 8], fmt: "e5m2", pow2: false, eps: 1e-3 },
  ] as const;
  for (const c of cases) {
    const n = c.shape.reduce((a, b) => a * b, 1);
    const x = wideValues(n, r, -30, 10);
    // a whole zero tile and a tiny one (the epsilon floor, f32's max / 2^127 on overflow)
    for (let i = 0; i < Math.min(n, c.block[0] * c.block[1]); i++) x[i] = 0;
    const [rows, cols] = c.shape.length === 3 ? [c.shape[1], c.shape[2]] : c.shape;
    const batch = n / (rows * cols);
    const q = tidy(() =>
      blockQuantize(tensor(x, { shape: [...c.shape] }), {
        dtype: c.fmt,
        block: [c.block[0], c.block[1]],
        powerOfTwo: c.pow2,
        amaxEpsilon: c.eps,
      })
    );
    const fmax = c.fmt === "e4m3" ? 448 : 57344;
    const ref = fp8BlocksRef(
      x,
      blocksOf(batch, rows, cols, c.block[0], c.block[1]),
      c.fmt,
      (a) => teScale(a, fmax, c.eps, c.pow2),
    );
    const what = JSON.stringify(c);
    assert.equal(q.data.dtype, c.fmt);
    assert.deepEqual(q.scale.shape, [
      ...(batch > 1 ? [batch] : []),
      Math.ceil(rows / c.block[0]),
      Math.ceil(cols / c.block[1]),
    ]);
    await bitsEq(q.scale, ref.scales, `scales ${what}`);
    await bitsEq(q.data, ref.codes, `codes ${what}`);
    await bitsEq(q.values, ref.values, `values ${what}`);
    if (c.pow2) {
      for (const s of await arr(q.scale)) {
        assert.ok(Number.isInteger(Math.log2(s)), `${s} is a power of two`);
      }
    }
    for (const t of [q.data, q.scale, q.values]) t.dispose();
  }
  assert.throws(() => blockQuantize(tensor([1]), { block: [0, 4] }), /two positive integers/);
  // a line longer than one workgroup's 64 x 65,535 loop iterations (llvmpipe's cap) is refused
  const n = 64 * 65535 + 1;
  const long = tensor(new Float32Array(n), { shape: [1, n] });
  assert.throws(() => blockQuantize(long, { block: [1, n] }), /more than 4194240/);
  long.dispose();
});

Deno.test("rowwise scaling matches torchao's amax_to_scale rounded down to a power of two (EPS 1e-12 for a zero row)", async () => {
  const r = rng(11);
  const [rows, cols] = [6, 50];
  const x = wideValues(rows * cols, r, -20, 12);
  for (let c = 0; c < cols; c++) x[2 * cols + c] = 0; // a zero row
  const recipe = fp8Recipe("rowwise");
  assert.equal(recipe.amaxEpsilon, 1e-12);
  assert.equal(recipe.powerOfTwoScales, true);
  const q = tidy(() =>
    blockQuantize(tensor(x, { shape: [rows, cols] }), {
      block: [1, cols],
      amaxEpsilon: recipe.amaxEpsilon,
    })
  );
  const ref = fp8BlocksRef(
    x,
    blocksOf(1, rows, cols, 1, cols),
    "e4m3",
    (a) => torchaoRowwiseScale(a, 448),
  );
  await bitsEq(q.scale, ref.scales, "scales");
  await bitsEq(q.data, ref.codes, "codes");
  await bitsEq(q.values, ref.values, "values");
  for (const t of [q.data, q.scale, q.values]) t.dispose();
});

Deno.test("NVFP4: f32 tensor scale, E4M3 block scales rounded up, E2M1 codes (RNE, and stochastic from the seeded stream) match the formula", async () => {
  const r = rng(3);
  const cases = [
    { shape: [3, 40], block: [1, 16], sr: false },
    { shape: [20, 24], block: [16, 16], sr: false },
    { shape: [4, 48], block: [1, 16], sr: true },
    { shape: [40, 3], block: [16, 1], sr: true },
  ] as const;
  for (const c of cases) {
    const n = c.shape[0] * c.shape[1];
    const x = wideValues(n, r, -14, 4);
    x[5] = 0;
    const seed = 1234;
    const q = tidy(() =>
      nvfp4Quantize(tensor(x, { shape: [...c.shape] }), {
        block: [c.block[0], c.block[1]],
        stochastic: c.sr,
        seed,
      })
    );
    const ref = nvfp4Ref(
      x,
      blocksOf(1, c.shape[0], c.shape[1], c.block[0], c.block[1]),
      c.sr,
      seed,
    );
    const what = JSON.stringify(c);
    assert.equal(q.data.dtype, "e2m1fn");
    assert.equal(q.blockScale.dtype, "e4m3");
    await bitsEq(q.tensorScale.reshape([1]), [ref.tensorScale], `tensor scale ${what}`);
    await bitsEq(q.blockScale, ref.blockScales, `block scales ${what}`);
    await bitsEq(q.data, ref.codes, `codes ${what}`);
    await bitsEq(q.values, ref.values, `values ${what}`);
    const codes = await arr(q.data);
    assert.ok(codes.every((v) => Math.abs(v) <= 6), "no element beyond 6");
    for (const t of [q.data, q.blockScale, q.tensorScale, q.values]) t.dispose();
  }
  // stochastic rounding is unbiased: 0.3 in blocks whose d makes it 5.6 (between e2m1's 4
  // and 6), while round-to-nearest always gives 6 d
  const many = new Float32Array(4096).fill(0.3);
  many[0] = 6;
  const mean = async (stochastic: boolean) => {
    const q = tidy(() => nvfp4Quantize(tensor(many), { stochastic, seed: 9 }));
    const v = (await arr(q.values)).slice(16);
    for (const t of [q.data, q.blockScale, q.tensorScale, q.values]) t.dispose();
    return v.reduce((a, b) => a + b, 0) / v.length;
  };
  const [sr, rne] = [await mean(true), await mean(false)];
  assert.ok(Math.abs(sr - 0.3) < 0.003, `mean of stochastic rounding ${sr}`);
  assert.ok(rne - 0.3 > 0.02, `round-to-nearest is biased: ${rne}`);
});

Deno.test("current scaling: amaxEpsilon and power-of-two scales as TE's compute_scale_from_amax", async () => {
  const x = Float32Array.of(0.3, -1.7, 2.9, 0.01);
  for (const [eps, pow2] of [[0, false], [0, true], [5, false], [5, true]] as const) {
    const r = new FP8Recipe({ scaling: "current", amaxEpsilon: eps, powerOfTwoScales: pow2 });
    const q = tidy(() => r.quantize(tensor(x), { key: "x" }));
    const s = teScale(2.9, 448, eps, pow2);
    await bitsEq(q.scale.reshape([1]), [s], `scale eps ${eps} pow2 ${pow2}`);
    const ref = fp8BlocksRef(x, [[0, 1, 2, 3]], "e4m3", () => s);
    await bitsEq(q.data, ref.codes, `codes eps ${eps} pow2 ${pow2}`);
    q.data.dispose();
    q.scale.dispose();
  }
  const zero = new FP8Recipe({ scaling: "current", amaxEpsilon: 0.5, powerOfTwoScales: true });
  const z = tidy(() => zero.quantize(tensor([0, 0]), { key: "z" }));
  assert.equal(
    await z.scale.item(),
    512,
    "a zero tensor takes the epsilon's scale: 448 / 0.5 -> 512",
  );
});

Deno.test("delayed scaling with amaxComputeAlgo 'most_recent' takes the newest amax, not the history's max", async () => {
  const amaxes = [3, 0.5, 7, 0.25];
  const hist = new FP8Recipe({ amaxHistoryLen: 4 });
  const recent = fp8Recipe("most_recent", { amaxHistoryLen: 4 });
  assert.equal(recent.amaxComputeAlgo, "most_recent");
  const got: number[][] = [[], []];
  for (const a of amaxes) {
    for (const [k, r] of [hist, recent].entries()) {
      const q = tidy(() => r.quantize(tensor([a, -a / 3]), { key: "x" }));
      q.data.dispose();
      q.scale.dispose();
      r.update();
      const sd = r.stateDict();
      got[k].push((await arr(sd.scale))[0]);
      for (const t of [sd.amaxHistory, sd.scale, sd.amax]) t.dispose();
    }
  }
  const f = (a: number) => Math.fround(448 / a);
  assert.deepEqual(got[0], [f(3), f(3), f(7), f(7)], "max over the window");
  assert.deepEqual(got[1], amaxes.map(f), "the newest amax");
  const sd = recent.stateDict();
  assert.equal(sd.amaxComputeAlgo, "most_recent");
  for (const t of [sd.amaxHistory, sd.scale, sd.amax]) t.dispose();
  assert.throws(
    () => new FP8Recipe({ amaxComputeAlgo: "mean" as "max" }),
    /amaxComputeAlgo must be 'max' or 'most_recent'/,
  );
});

/** Host matmul of [M, K] by [K, N] in f64 (the GEMM accumulates in f32; compared with a tolerance). */
function mm(a: ArrayLike<number>, b: ArrayLike<number>, M: number, K: number, N: number) {
  const out = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let k = 0; k < K; k++) {
      const av = a[i * K + k];
      for (let j = 0; j < N; j++) out[i * N + j] += av * b[k * N + j];
    }
  }
  return out;
}
const transpose = (x: ArrayLike<number>, R: number, C: number) =>
  Float64Array.from({ length: R * C }, (_, i) => x[(i % R) * C + Math.floor(i / R)]);
function close(got: number[], ref: Float64Array, what: string) {
  const scale = Math.max(...Array.from(ref, Math.abs), 1e-30);
  got.forEach((g, i) => {
    assert.ok(Math.abs(g - ref[i]) <= 1e-5 * scale, `${what}[${i}]: ${g} vs ${ref[i]}`);
  });
}

Deno.test("block, rowwise and nvfp4 recipes in a GEMM: forward and both backward GEMMs multiply the operands quantised along their reduction axes (weights in square blocks)", async () => {
  for (const [name, M] of [["block", 20], ["rowwise", 20], ["nvfp4", 20], ["nvfp4", 32]] as const) {
    const [K, N] = [140, 24];
    const r = rng(5);
    const xv = wideValues(M * K, r, -6, 3), wv = wideValues(K * N, r, -8, 1);
    const gv = wideValues(M * N, r, -10, 0);
    // NVFP4's weight-gradient GEMM takes both inputs through the Hadamard transform when the
    // token count is a multiple of 16
    const rht = name === "nvfp4" && M % 16 === 0;
    const recipe = fp8Recipe(name, { outDtype: "f32", seed: 77 });
    const x = tensor(xv, { shape: [M, K], requiresGrad: true });
    const w = tensor(wv, { shape: [K, N], requiresGrad: true });
    const y = tidy(() => {
      using _ = autocast({ dtype: "fp8", recipe });
      const out = matmul(x.mul(1), w); // x.mul(1): an activation; w: a weight (a leaf parameter)
      out.mul(tensor(gv, { shape: [M, N] })).sum().backward();
      return out;
    });
    // the host operands: [rows, cols] matrices in blocks [br, bc]
    const deq = (v: Float32Array, R: number, C: number, br: number, bc: number, grad = 0) => {
      const bl = blocksOf(1, R, C, br, bc);
      if (name === "nvfp4") {
        return nvfp4Ref(v, bl, grad > 0, grad > 0 ? recipe.gradSeed(recipe.step, grad - 1) : 0)
          .values;
      }
      const fmt = grad > 0 && name === "rowwise" ? "e5m2" : "e4m3";
      const fmax = fmt === "e4m3" ? 448 : 57344;
      return fp8BlocksRef(
        v,
        bl,
        fmt,
        (a) => name === "rowwise" ? torchaoRowwiseScale(a, fmax) : teScale(a, fmax, 0, true),
      ).values;
    };
    const t = name === "block" ? 128 : 16;
    const W = name === "rowwise" ? null : [t, t] as const; // weight blocks, the same both passes
    const line = (len: number) => (name === "rowwise" ? len : t);
    const wq = (cols: boolean) => {
      const [br, bc] = W ?? (cols ? [1, N] : [K, 1]);
      return deq(wv, K, N, br, bc);
    };
    // forward: x along K (its columns), w along K (its rows)
    const yRef = mm(deq(xv, M, K, 1, line(K)), wq(false), M, K, N);
    close(await arr(y), yRef, `${name} forward`);
    // dX = g w^T: g along N (its columns, gradient call 0), w along N (its columns)
    const dx = mm(deq(gv, M, N, 1, line(N), 1), transpose(wq(true), K, N), M, N, K);
    close(await arr(x.grad!), dx, `${name} dX`);
    // dW = x^T g: x along M (its rows), g along M (its rows, gradient call 1)
    const dw = mm(
      transpose(deq(rht ? rht16(xv, M, K) : xv, M, K, line(M), 1), M, K),
      deq(rht ? rht16(gv, M, N) : gv, M, N, line(M), 1, 2),
      K,
      M,
      N,
    );
    close(await arr(w.grad!), dw, `${name} dW (M ${M})`);
    for (const t of [x, w, y]) t.dispose();
  }
});

Deno.test("recipes by name: fp8Recipe presets, autocast({ recipe: name }) uses one recipe per name, the block recipes refuse per-tensor quantize()", async () => {
  assert.deepEqual(
    [...FP8_RECIPES],
    ["delayed", "most_recent", "current", "rowwise", "block", "mxfp8", "nvfp4"],
  );
  const mx = fp8Recipe("mxfp8");
  assert.deepEqual([mx.scaling, mx.forwardDtype.name, mx.backwardDtype.name], [
    "mx",
    "e4m3",
    "e4m3",
  ]);
  const nv = fp8Recipe("nvfp4");
  assert.deepEqual([nv.forwardDtype.name, nv.backwardDtype.name], ["e2m1fn", "e2m1fn"]);
  const blk = fp8Recipe("block");
  assert.deepEqual([blk.format, blk.backwardDtype.name], ["e4m3", "e4m3"]);
  assert.equal(namedFP8Recipe("block"), namedFP8Recipe("block"));
  const a = tensor(wideValues(4 * 130, rng(2), -3, 3), { shape: [4, 130] });
  const b = tensor(wideValues(130 * 3, rng(4), -3, 3), { shape: [130, 3] });
  const byName = await arr(autocast({ dtype: "fp8", recipe: "block" }, () => matmul(a, b)));
  const byObj = await arr(autocast({ recipe: fp8Recipe("block") }, () => matmul(a, b)));
  assert.deepEqual(byName, byObj);
  assert.throws(() => autocast({ recipe: "fp6" as "block" }), /unknown FP8 recipe 'fp6'/);
  assert.throws(() => blk.quantize(a, { key: "a" }), /blockQuantize/);
  assert.throws(() => fp8Recipe("x" as "block"), ValueError);
  assert.throws(() => new FP8Recipe({ scaling: "tile" as "block" }), /scaling must be one of/);
  // every recipe's state loads into a fresh recipe of the same name (the step count with it),
  // and into no other kind
  for (const name of FP8_RECIPES) {
    const src = fp8Recipe(name);
    src.beginStep();
    src.beginStep();
    const sd = src.stateDict();
    const dst = fp8Recipe(name);
    dst.loadStateDict(sd);
    assert.equal(dst.step, 2, name);
    const other = name === "nvfp4" ? "block" : name === "delayed" ? "most_recent" : "nvfp4";
    assert.throws(() => fp8Recipe(other).loadStateDict(sd), ValueError, `${name} into ${other}`);
    for (const t of [sd.amaxHistory, sd.scale, sd.amax]) t.dispose();
  }
});

Deno.test("NVFP4's random Hadamard transform: TE's signs and Sylvester's H16 / 4 along the rows, bit for bit, and orthogonal", async () => {
  const [B, R, C] = [2, 32, 5];
  const x = wideValues(B * R * C, rng(8), -4, 4);
  const y = tidy(() => randomHadamard16(tensor(x, { shape: [B, R, C] }), R, C));
  const got = await arr(y);
  await bitsEq(y, rht16(x, R, C), "transform");
  // orthogonal: the energy of each column group is kept (up to f32 rounding)
  for (let g = 0; g < B * (R / 16) * C; g++) {
    const base = Math.floor(g / C) * 16 * C + (g % C);
    let ex = 0, ey = 0;
    for (let j = 0; j < 16; j++) {
      ex += x[base + j * C] ** 2;
      ey += got[base + j * C] ** 2;
    }
    assert.ok(Math.abs(ex - ey) <= 1e-5 * ex, `group ${g}: ${ex} vs ${ey}`);
  }
  y.dispose();
  assert.throws(
    () => randomHadamard16(tensor(x.slice(0, 15 * 2), { shape: [15, 2] }), 15, 2),
    /multiple of 16/,
  );
});

Deno.test("the block recipes leave no live buffers behind: quantisers, GEMM hooks forward and backward", async () => {
  const x = tensor(wideValues(32 * 40, rng(1), -4, 4), { shape: [32, 40], requiresGrad: true });
  const w = tensor(wideValues(40 * 24, rng(2), -4, 4), { shape: [40, 24], requiresGrad: true });
  const once = () => {
    const b = blockQuantize(x, { block: [1, 16] });
    const n = nvfp4Quantize(x, { block: [16, 16], stochastic: true });
    for (const t of [b.data, b.scale, b.values, n.data, n.blockScale, n.tensorScale, n.values]) {
      t.dispose();
    }
    for (const name of ["rowwise", "block", "nvfp4"] as const) {
      tidy(() => {
        using _ = autocast({ recipe: fp8Recipe(name) });
        matmul(x.mul(1), w).sum().backward();
      });
    }
    x.grad?.dispose();
    w.grad?.dispose();
    x.grad = null;
    w.grad = null;
  };
  once(); // compile, warm the pool
  const before = memory().liveBuffers;
  once();
  assert.equal(memory().liveBuffers, before);
  await x.toArray();
  x.dispose();
  w.dispose();
});
