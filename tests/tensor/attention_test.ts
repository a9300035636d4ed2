// Fused attention against an f64 host reference: the forward pass, and the backward pass from
// the closed forms dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dP P)), dQ = s dS K,
// dK = s dS^T Q; and causalSelfAttention against the unfused GPT attention written with ops.
import assert from "node:assert/strict";
import {
  causalSelfAttention,
  DTypeError,
  matmul,
  scaledDotProductAttention,
  ShapeError,
  type Tensor,
  tensor,
  where,
} from "../../mod.ts";
import { getRuntime, type Runtime } from "../../gpu/mod.ts";
import { roundTo, values } from "./_reference.ts";

/** Host attention for one (b, h): returns y and the gradients for an upstream gradient gy. */
function hostAttention(
  q: number[][],
  k: number[][],
  v: number[][],
  gy: number[][],
  causal: boolean,
  scale: number,
) {
  const Tq = q.length, Tk = k.length, D = q[0].length;
  const dot = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i], 0);
  const P = q.map((qi, i) => {
    const s = k.map((kj, j) => (causal && j > i ? -Infinity : scale * dot(qi, kj)));
    const m = Math.max(...s);
    const e = s.map((x) => Math.exp(x - m));
    const z = e.reduce((a, b) => a + b, 0);
    return e.map((x) => x / z);
  });
  const y = P.map((p) =>
    Array.from({ length: D }, (_, d) => p.reduce((s, pj, j) => s + pj * v[j][d], 0))
  );
  const dV = Array.from(
    { length: Tk },
    (_, j) => Array.from({ length: D }, (_, d) => P.reduce((s, p, i) => s + p[j] * gy[i][d], 0)),
  );
  const dP = gy.map((g) => v.map((vj) => dot(g, vj)));
  const dS = P.map((p, i) => {
    const r = p.reduce((s, pj, j) => s + pj * dP[i][j], 0);
    return p.map((pj, j) => pj * (dP[i][j] - r));
  });
  const dQ = dS.map((ds) =>
    Array.from({ length: D }, (_, d) => scale * ds.reduce((s, x, j) => s + x * k[j][d], 0))
  );
  const dK = Array.from(
    { length: Tk },
    (_, j) =>
      Array.from({ length: D }, (_, d) => scale * dS.reduce((s, ds, i) => s + ds[j] * q[i][d], 0)),
  );
  void Tq;
  return { y, dQ, dK, dV };
}

/** (B, H, T, D) flat values -> [b][h][t][d]. */
function nest(x: Float32Array, B: number, H: number, T: number, D: number): number[][][][] {
  return Array.from(
    { length: B },
    (_, b) =>
      Array.from(
        { length: H },
        (_, h) =>
          Array.from({ length: T }, (_, t) =>
            Array.from({ length: D }, (_, d) => x[((b * H + h) * T + t) * D + d])),
      ),
  );
}

function close(got: Float32Array, ref: number[], tol: number, label: string): void {
  assert.equal(got.length, ref.length, label);
  let worst = 0;
  for (let i = 0; i < ref.length; i++) {
    const err = Math.abs(got[i] - ref[i]) / (Math.abs(ref[i]) + 1);
    worst = Math.max(worst, err);
  }
  assert.ok(worst <= tol, `${label}: worst relative error ${worst} > ${tol}`);
}

async function checkSdpa(
  dt: string,
  [B, H, Tq, Tk, D]: number[],
  causal: boolean,
  tol: number,
): Promise<void> {
  const qv = values(dt, B * H * Tq * D, 1, -1, 1), kv = values(dt, B * H * Tk * D, 2, -1, 1);
  const vv = values(dt, B * H * Tk * D, 3, -2, 2), gv = values(dt, B * H * Tq * D, 4, -1, 1);
  const mk = (x: Float32Array, T: number) =>
    tensor(x, { shape: [B, H, T, D], dtype: dt, requiresGrad: true });
  const q = mk(qv, Tq), k = mk(kv, Tk), v = mk(vv, Tk);
  const y = scaledDotProductAttention(q, k, v, { causal });
  assert.deepEqual(y.shape, [B, H, Tq, D]);
  assert.equal(y.dtype, dt);
  y.backward(tensor(gv, { shape: [B, H, Tq, D], dtype: dt }));
  const ref = { y: [] as number[], dQ: [] as number[], dK: [] as number[], dV: [] as number[] };
  const [Q, K, V, G] = [
    nest(qv, B, H, Tq, D),
    nest(kv, B, H, Tk, D),
    nest(vv, B, H, Tk, D),
    nest(gv, B, H, Tq, D),
  ];
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const r = hostAttention(Q[b][h], K[b][h], V[b][h], G[b][h], causal, 1 / Math.sqrt(D));
      for (const key of ["y", "dQ", "dK", "dV"] as const) ref[key].push(...r[key].flat());
    }
  }
  const label = `${dt} B${B} H${H} Tq${Tq} Tk${Tk} D${D} causal ${causal}`;
  close(await y.toArray() as Float32Array, ref.y, tol, `${label} y`);
  close(await q.grad!.toArray() as Float32Array, ref.dQ, tol, `${label} dq`);
  close(await k.grad!.toArray() as Float32Array, ref.dK, tol, `${label} dk`);
  close(await v.grad!.toArray() as Float32Array, ref.dV, tol, `${label} dv`);
  for (const t of [q, k, v, y]) t.dispose();
}

Deno.test("scaledDotProductAttention() matches an f64 reference forward and backward in f32", async () => {
  await checkSdpa("f32", [2, 3, 5, 5, 4], true, 1e-5);
  await checkSdpa("f32", [1, 2, 7, 70, 8], false, 1e-5); // more keys than a workgroup
  await checkSdpa("f32", [1, 1, 130, 130, 3], true, 1e-5); // several workgroups of queries
  // head sizes of the kernels' forms: rows in quads (32, 64), in single loads (6), in loops (72)
  await checkSdpa("f32", [1, 2, 9, 9, 32], true, 1e-5);
  await checkSdpa("f32", [1, 1, 9, 11, 64], false, 1e-5);
  await checkSdpa("f32", [1, 2, 5, 5, 6], true, 1e-5);
  await checkSdpa("f32", [1, 1, 5, 5, 72], true, 1e-5);
});

Deno.test("scaledDotProductAttention() rounds once to bf16, f16 and e4m3 storage", async () => {
  // the kernels compute in f32 from the stored inputs; the only error is the final rounding
  await checkSdpa("bf16", [2, 2, 9, 9, 8], true, 2 ** -8);
  await checkSdpa("f16", [1, 2, 6, 6, 4], true, 2 ** -11);
  await checkSdpa("bf16", [1, 2, 6, 6, 32], true, 2 ** -8);
  await checkSdpa("e4m3", [1, 2, 6, 6, 8], true, 2 ** -4); // four to a word
});

Deno.test("causalSelfAttention() equals the unfused GPT attention and its gradient", async () => {
  const rt = await getRuntime();
  const B = 2, T = 11, C = 12, nh = 3, hs = C / nh;
  const x = values("f32", B * T * 3 * C, 7, -1, 1), gv = values("f32", B * T * C, 8, -1, 1);
  const qkv1 = tensor(x, { shape: [B, T, 3 * C], requiresGrad: true });
  const qkv2 = tensor(x, { shape: [B, T, 3 * C], requiresGrad: true });
  const before = rt.counters.dispatches;
  const y1 = causalSelfAttention(qkv1, nh);
  assert.equal(rt.counters.dispatches - before, 1); // one kernel forward
  // the unfused form (nanoGPT)
  const heads = (k: number) =>
    qkv2.slice([null, null, [k * C, (k + 1) * C]]).reshape([B, T, nh, hs]).transpose(1, 2);
  const mask = tensor(
    Uint32Array.from({ length: T * T }, (_, i) => (i % T <= Math.floor(i / T) ? 1 : 0)),
    {
      shape: [T, T],
      dtype: "bool",
    },
  );
  const att = matmul(heads(0), heads(1), { transB: true }).mul(1 / Math.sqrt(hs));
  const y2 = where(mask, att, -Infinity).softmax(-1).matmul(heads(2)).transpose(1, 2).reshape([
    B,
    T,
    C,
  ]);
  close(await y1.toArray() as Float32Array, Array.from(await y2.toArray()), 1e-5, "forward");
  const g = tensor(gv, { shape: [B, T, C] });
  const b0 = rt.counters.dispatches;
  y1.backward(g);
  assert.equal(rt.counters.dispatches - b0, 1); // one kernel backward
  y2.backward(g);
  close(
    await qkv1.grad!.toArray() as Float32Array,
    Array.from(await qkv2.grad!.toArray()),
    1e-5,
    "gradient",
  );
});

Deno.test("causalSelfAttention() in bf16 agrees with the f32 result to bf16 rounding", async () => {
  const B = 1, T = 8, C = 16, nh = 2;
  const x = values("bf16", B * T * 3 * C, 9, -1, 1);
  const yb = causalSelfAttention(tensor(x, { shape: [B, T, 3 * C], dtype: "bf16" }), nh);
  const yf = causalSelfAttention(tensor(x, { shape: [B, T, 3 * C] }), nh);
  assert.equal(yb.dtype, "bf16");
  const ref = roundTo("bf16", await yf.toArray() as Float32Array);
  assert.deepEqual(Array.from(await yb.toArray()), Array.from(ref));
});

Deno.test("attention checks shapes, head sizes and dtypes at the call", () => {
  const q = tensor(new Float32Array(2 * 3 * 4), { shape: [1, 2, 3, 4] });
  assert.throws(
    () => scaledDotProductAttention(q, q.reshape([1, 2, 4, 3]), q),
    (e: unknown) => e instanceof ShapeError && /q \(B, H, Tq, D\)/.test(e.message),
  );
  assert.throws(
    () => scaledDotProductAttention(q, q, q.cast("bf16")),
    (e: unknown) => e instanceof DTypeError && /share one float dtype/.test(e.message),
  );
  assert.throws(
    () => causalSelfAttention(tensor(new Float32Array(10), { shape: [1, 2, 5] }), 1),
    (e: unknown) => e instanceof ShapeError && /\(B, T, 3C\)/.test(e.message),
  );
  const odd: Tensor = tensor(new Float32Array(9), { shape: [1, 1, 9] }).cast("e4m3");
  assert.throws(
    () => causalSelfAttention(odd, 1),
    (e: unknown) => e instanceof ShapeError && /storage words/.test(e.message),
  );
});

/**
 * causalSelfAttention forward and backward on [B, T, 3C] in f32 and bf16, once as is and once
 * with a runtime limit changed by `limit` (restored after): the bits must be the same, and the
 * limited pass must run at least `minDispatches` more dispatches than one per pass.
 */
async function sameBitsUnder(
  [B, T, C, nh]: number[],
  seed: number,
  limit: (rt: Runtime) => () => void,
  minDispatches: number,
): Promise<void> {
  const rt = await getRuntime();
  const x = values("f32", B * T * 3 * C, seed, -1, 1),
    gv = values("f32", B * T * C, seed + 1, -1, 1);
  for (const dt of ["f32", "bf16"] as const) {
    const pass = async () => {
      const qkv = tensor(x, { shape: [B, T, 3 * C], dtype: dt, requiresGrad: true });
      const y = causalSelfAttention(qkv, nh);
      y.backward(tensor(gv, { shape: [B, T, C], dtype: dt }));
      const out = [Array.from(await y.toArray()), Array.from(await qkv.grad!.toArray())];
      qkv.dispose();
      y.dispose();
      return out;
    };
    const whole = await pass();
    const restore = limit(rt);
    let limited: number[][];
    try {
      const d0 = rt.counters.dispatches;
      limited = await pass();
      const n = rt.counters.dispatches - d0;
      assert.ok(n >= minDispatches, `${dt}: ${n} dispatches`);
    } finally {
      restore();
    }
    assert.deepEqual(limited[0], whole[0], `${dt} forward`);
    assert.deepEqual(limited[1], whole[1], `${dt} gradient`);
  }
}

Deno.test("causalSelfAttention() binds windows of operands larger than one binding, bit for bit", async () => {
  // B = 4 sequences of T = 24, C = 32 (4 heads): qkv holds 36 KiB, y and dqkv 12 and 36 KiB;
  // a binding of 16 KiB holds one sequence's rows (9 KiB), not all four
  await sameBitsUnder([4, 24, 32, 4], 11, (rt) => {
    const before = rt.maxBindingBytes;
    rt.maxBindingBytes = 16384;
    return () => (rt.maxBindingBytes = before);
  }, 3);
});

Deno.test("causalSelfAttention() in slices of keys and queries (capped loops) gives the one pass's bits", async () => {
  // llvmpipe stops an invocation's loops after 65,535 iterations (a context of about 400 at head
  // size 64): the kernels then run the loops in slices and carry their state in f32; a cap of
  // 200 makes slices of about 8 keys and 4 queries at head size 8
  await sameBitsUnder([2, 37, 16, 2], 13, (rt) => {
    const before = rt.maxLoopIterations;
    rt.maxLoopIterations = 200;
    return () => (rt.maxLoopIterations = before);
  }, 10);
});

Deno.test("causalSelfAttention() at a context of 1024 matches the host on this adapter", async () => {
  const T = 1024, C = 64;
  const x = Float32Array.from({ length: T * 3 * C }, (_, i) => Math.sin(i * 0.37) * 0.5);
  const y = causalSelfAttention(tensor(x, { shape: [1, T, 3 * C] }), 1);
  const got = await y.toArray();
  y.dispose();
  const at = (t: number, d: number) => x[t * 3 * C + d];
  for (const i of [0, 511, T - 1]) { // softmax(q k^T / 8) v for query row i, in f64
    const s: number[] = [];
    for (let j = 0; j <= i; j++) {
      let a = 0;
      for (let d = 0; d < C; d++) a += at(i, d) * at(j, C + d);
      s.push(a / 8);
    }
    const m = Math.max(...s), p = s.map((a) => Math.exp(a - m)), l = p.reduce((a, b) => a + b);
    for (let d = 0; d < C; d++) {
      let o = 0;
      for (let j = 0; j <= i; j++) o += p[j] * at(j, 2 * C + d);
      assert.ok(
        Math.abs(o / l - got[i * C + d]) < 1e-5,
        `row ${i}, ${d}: ${got[i * C + d]} vs ${o / l}`,
      );
    }
  }
});
