// sharpness() (nn/sharpness.ts) on the real adapter against an f64 host reference that
// evaluates the definition directly (CE at the corner minus CE at z), and against random
// points of the box |delta_j| <= eps (|z_j| + 1): none of them may exceed the corner, and
// neither may the corner's neighbours (one coordinate moved to the other face).
import assert from "node:assert/strict";
import {
  DTypeError,
  memory,
  ShapeError,
  sharpness,
  type Tensor,
  tensor,
  ValueError,
} from "../../mod.ts";
import { rng, roundTo } from "../tensor/_reference.ts";

/**
 * Cross-entropy of one row of logits against class y, in f64, as log1p(sum_{j != y}
 * exp(z_j - z_y)): no cancellation against z_y when the row is confident.
 */
function ce(z: ArrayLike<number>, y: number): number {
  let s = 0;
  for (let j = 0; j < z.length; j++) if (j !== y) s += Math.exp(z[j] - z[y]);
  return Math.log1p(s);
}

/** phi = 100 (CE(z + delta) - CE(z)) / (1 + CE(z)) for a perturbation delta, in f64. */
function phiAt(z: ArrayLike<number>, y: number, delta: ArrayLike<number>): number {
  const moved = Array.from(z, (v, j) => v + delta[j]);
  const c = ce(z, y);
  return (100 * (ce(moved, y) - c)) / (1 + c);
}

/** The corner of the box: +eps(|z_j|+1) for j != y, -eps(|z_y|+1) for the target. */
function corner(z: ArrayLike<number>, y: number, eps: number): number[] {
  return Array.from(z, (v, j) => (j === y ? -1 : 1) * eps * (Math.abs(v) + 1));
}

/** Per-row closed form (the reference) for rows of width V. */
function reference(z: Float32Array, t: readonly number[], V: number, eps = 1e-3): number[] {
  return t.map((y, r) => {
    const row = z.subarray(r * V, (r + 1) * V);
    return phiAt(row, y, corner(row, y, eps));
  });
}

/** Logits (B, T, V) uniform in [-scale, scale), rounded to `dt`, and targets (B, T). */
function inputs(B: number, T: number, V: number, seed: number, scale = 4, dt = "f32") {
  const r = rng(seed);
  const z = roundTo(dt, Float32Array.from({ length: B * T * V }, () => scale * (2 * r() - 1)));
  const t = Int32Array.from({ length: B * T }, () => Math.floor(r() * V));
  return { z, t };
}

/** The last position of each sequence: (B, V) logits and (B) targets on the host. */
function lastToken(z: Float32Array, t: Int32Array, B: number, T: number, V: number) {
  const zl = new Float32Array(B * V), tl: number[] = [];
  for (let b = 0; b < B; b++) {
    zl.set(z.subarray((b * T + T - 1) * V, (b * T + T) * V), b * V);
    tl.push(t[b * T + T - 1]);
  }
  return { zl, tl };
}

const relErr = (got: number, ref: number) => Math.abs(got - ref) / Math.abs(ref);

async function read(x: Tensor): Promise<number[]> {
  const v = Array.from(await x.toArray());
  x.dispose();
  return v;
}

Deno.test("sharpness() of (B, T, V) logits matches the f64 closed form on the last token", async () => {
  const B = 6, T = 5, V = 67;
  const { z, t } = inputs(B, T, V, 11);
  const { zl, tl } = lastToken(z, t, B, T, V);
  const ref = reference(zl, tl, V);
  const logits = tensor(z, { shape: [B, T, V] }), targets = tensor(t, { shape: [B, T] });
  const rows = await read(sharpness(logits, targets, { reduction: "none" }));
  assert.equal(rows.length, B);
  for (let b = 0; b < B; b++) assert.ok(relErr(rows[b], ref[b]) < 1e-5, `${rows[b]} vs ${ref[b]}`);
  const [mean] = await read(sharpness(logits, targets));
  const [max] = await read(sharpness(logits, targets, { reduction: "max" }));
  assert.ok(relErr(mean, ref.reduce((a, b) => a + b, 0) / B) < 1e-5);
  assert.ok(relErr(max, Math.max(...ref)) < 1e-5);
  // The same rows given as (B, V) logits and (B) targets.
  const [flat] = await read(
    sharpness(tensor(zl, { shape: [B, V] }), tensor(Int32Array.from(tl))),
  );
  assert.ok(relErr(flat, mean) < 1e-6);
  logits.dispose();
  targets.dispose();
});

Deno.test("sharpness() keeps its relative accuracy for confident rows, large logits, other eps and bf16", async () => {
  const V = 33;
  const cases: { name: string; z: Float32Array; t: number[]; eps: number; dt: string }[] = [];
  // Confident: the target's logit far above the rest (p_y ~ 1 - 1e-7, CE(z*) - CE(z) ~ 1e-9).
  const conf = inputs(4, 1, V, 3, 1).z, confT = [0, 5, 17, 32];
  confT.forEach((y, r) => conf[r * V + y] = 20);
  cases.push({ name: "confident", z: conf, t: confT, eps: 1e-3, dt: "f32" });
  const big = inputs(4, 1, V, 4, 60);
  cases.push({ name: "large logits", z: big.z, t: Array.from(big.t), eps: 1e-3, dt: "f32" });
  const wide = inputs(4, 1, V, 5);
  cases.push({ name: "eps 0.05", z: wide.z, t: Array.from(wide.t), eps: 0.05, dt: "f32" });
  const b = inputs(4, 1, V, 6, 4, "bf16");
  cases.push({ name: "bf16", z: b.z, t: Array.from(b.t), eps: 1e-3, dt: "bf16" });
  for (const c of cases) {
    const ref = reference(c.z, c.t, V, c.eps);
    const logits = tensor(c.z, { shape: [c.t.length, V], dtype: c.dt });
    const targets = tensor(Int32Array.from(c.t));
    const got = await read(sharpness(logits, targets, { eps: c.eps, reduction: "none" }));
    for (let r = 0; r < c.t.length; r++) {
      assert.ok(ref[r] > 0, `${c.name}: reference ${ref[r]}`);
      assert.ok(relErr(got[r], ref[r]) < 2e-5, `${c.name} row ${r}: ${got[r]} vs ${ref[r]}`);
    }
    logits.dispose();
    targets.dispose();
  }
});

Deno.test("the corner dominates: no random point of the box and no neighbour of the corner exceeds it", async () => {
  const B = 5, V = 12, eps = 1e-3;
  const { z, t } = inputs(B, 1, V, 21, 3);
  const logits = tensor(z, { shape: [B, V] }), targets = tensor(t);
  const got = await read(sharpness(logits, targets, { eps, reduction: "none" }));
  const r = rng(99);
  for (let b = 0; b < B; b++) {
    const row = z.subarray(b * V, (b + 1) * V), y = t[b];
    const c = corner(row, y, eps);
    const half = row.map((v) => eps * (Math.abs(v) + 1)); // the box's half-widths
    let best = -Infinity;
    for (let k = 0; k < 2000; k++) {
      // uniform inside the box, and every 4th point on a random vertex of it
      const d = Array.from(half, (h) => (k % 4 === 3 ? (r() < 0.5 ? -h : h) : h * (2 * r() - 1)));
      best = Math.max(best, phiAt(row, y, d));
    }
    for (let j = 0; j < V; j++) { // the corner with one coordinate on the other face
      const d = c.slice();
      d[j] = -d[j];
      const p = phiAt(row, y, d);
      assert.ok(p < got[b], `row ${b}: neighbour ${j} gives ${p} > corner ${got[b]}`);
      best = Math.max(best, p);
    }
    assert.ok(best < got[b], `row ${b}: ${best} >= ${got[b]}`);
    assert.ok(best > 0.5 * got[b], `row ${b}: the search should come near the corner`);
  }
  logits.dispose();
  targets.dispose();
});

Deno.test("sharpness() records no graph, frees its intermediates and rejects bad inputs", async () => {
  const logits = tensor([[1, 2, 3], [0, 1, 0]], { requiresGrad: true });
  const targets = tensor(new Int32Array([2, 0]));
  const before = memory().liveBytes;
  const phi = sharpness(logits, targets);
  assert.equal(phi.requiresGrad, false);
  assert.equal(phi.node, null);
  assert.equal(memory().liveBytes - before, 4); // only the scalar result
  const [v] = await read(phi);
  const ref = reference(Float32Array.from([1, 2, 3, 0, 1, 0]), [2, 0], 3);
  assert.ok(relErr(v, (ref[0] + ref[1]) / 2) < 1e-5);
  assert.throws(() => sharpness(logits, tensor(new Int32Array([1, 2, 0]))), ShapeError);
  assert.throws(() => sharpness(logits.reshape([6]), tensor(new Int32Array([1]))), ShapeError);
  assert.throws(() => sharpness(logits, tensor([2, 0])), DTypeError);
  assert.throws(
    () => sharpness(tensor(new Int32Array([1, 2]), { shape: [1, 2] }), tensor(new Int32Array([0]))),
    DTypeError,
  );
  assert.throws(() => sharpness(logits, targets, { eps: 0 }), ValueError);
  // deno-lint-ignore no-explicit-any
  assert.throws(() => sharpness(logits, targets, { reduction: "sum" as any }), /reduction/);
  logits.dispose();
  targets.dispose();
});
