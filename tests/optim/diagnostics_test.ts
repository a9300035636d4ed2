// Diagnostics (DESIGN.md section 4) accumulated on the device by the update kernel,
// against host computations, and without effect on the update.
import assert from "node:assert/strict";
import { AdamW, dtype, SGD, type Tensor, tensor } from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { bf16, normal, uniform } from "./_reference.ts";

const f = Math.fround;

/** Host diagnostics from the intended updates u and the effective ones e. */
function host(u: ArrayLike<number>, e: ArrayLike<number>) {
  let updated = 0, lost = 0, dot = 0, nrm = 0;
  for (let i = 0; i < u.length; i++) {
    if (u[i] !== 0) {
      updated++;
      if (e[i] === 0) lost++;
    }
    dot += e[i] * u[i];
    nrm += u[i] * u[i];
  }
  return { updated, lost, dot, nrm };
}

const close = (a: number, b: number, rel: number) => Math.abs(a - b) <= rel * Math.abs(b);

Deno.test("diagnostics of pure bf16 SGD: about 12% of updates lost (weights 0.02, lr 1e-4), EDQ from the host", async () => {
  const rt = await getRuntime();
  const n = 10_000, lr = 1e-4;
  const w0 = bf16(normal(n, 3, 0.02));
  const g = bf16(uniform(n, 4, 0.5, 1.5));
  const w = tensor(w0, { dtype: "bf16" });
  const opt = new SGD([w], { lr });
  w.grad = tensor(g, { dtype: "bf16" });
  const r0 = rt.counters.readbacks;
  opt.step({ diagnostics: true });
  assert.equal(rt.counters.readbacks, r0, "the step itself reads nothing back");
  const d = (await opt.diagnostics())!;
  const w1 = await w.toArray();
  const u = Array.from(g, (x) => f(-f(f(lr) * x)));
  const e = Array.from(w1, (x, i) => x - w0[i]);
  const h = host(u, e);
  assert.equal(d.elements, n);
  assert.equal(d.updated, h.updated);
  assert.equal(d.lost, h.lost);
  assert.ok(d.imprecision > 0.1 && d.imprecision < 0.14, `imprecision ${d.imprecision}`);
  assert.ok(close(d.dotEU, h.dot, 1e-4), `${d.dotEU} vs ${h.dot}`);
  assert.ok(close(d.normU2, h.nrm, 1e-4), `${d.normU2} vs ${h.nrm}`);
  assert.ok(close(d.edq, h.dot / Math.sqrt(h.nrm), 1e-4));
  assert.ok(d.edqRatio > 0.5 && d.edqRatio < 1.2, `${d.edqRatio}`);
  assert.deepEqual([d.gradNonFinite, d.gradUnderflow, d.gradOverflow, d.castDtype], [
    0,
    0,
    0,
    "bf16",
  ]);
  opt.dispose();
});

Deno.test("diagnostics of collage-light: the stored value hi + lo keeps every update (imprecision 0, EDQ ratio ~1)", async () => {
  const n = 4000, lr = 1e-4;
  const w0 = bf16(normal(n, 5, 0.02));
  const g = bf16(uniform(n, 6, 0.5, 1.5));
  const w = tensor(w0, { dtype: "bf16" });
  const opt = new SGD([w], { lr, precision: "collage-light" });
  w.grad = tensor(g, { dtype: "bf16" });
  opt.step({ diagnostics: true });
  const d = (await opt.diagnostics())!;
  const hi = await w.toArray();
  const lo = await (opt.stateDict().state[0].paramLo as Tensor).toArray();
  const u = Array.from(g, (x) => f(-f(f(lr) * x)));
  const e = Array.from(hi, (x, i) => f(f(x - w0[i]) + lo[i]));
  const h = host(u, e);
  assert.deepEqual([d.updated, d.lost], [h.updated, h.lost]);
  assert.equal(d.lost, 0);
  assert.ok(close(d.dotEU, h.dot, 1e-4) && close(d.normU2, h.nrm, 1e-4));
  assert.ok(Math.abs(d.edqRatio - 1) < 0.01, `${d.edqRatio}`);
  opt.dispose();
});

Deno.test("diagnostics count gradient Inf/NaN, and underflow and overflow against the cast dtype", async () => {
  const w = tensor(new Float32Array(8).fill(1));
  const opt = new SGD([w], { lr: 0 });
  const g = [1e-9, -2e-8, 1e6, -7e4, Infinity, NaN, 0, 0.5];
  w.grad = tensor(g);
  opt.step({ diagnostics: { castDtype: "f16" } });
  const d = (await opt.diagnostics())!;
  const f16 = dtype("f16");
  const q = f16.decode(f16.encode(Float32Array.from(g)));
  const under = g.filter((x, i) => x !== 0 && q[i] === 0).length;
  const over = g.filter((x, i) => Number.isFinite(x) && !Number.isFinite(q[i])).length;
  assert.deepEqual([under, over], [2, 2]);
  assert.deepEqual(
    [d.gradNonFinite, d.gradUnderflow, d.gradOverflow, d.castDtype],
    [2, under, over, "f16"],
  );
  // the default cast dtype of amp-f16 is f16
  const v = tensor([1, 1]);
  const o2 = new AdamW([v], { precision: "amp-f16" });
  v.grad = tensor([1e-9, 1]);
  o2.step({ diagnostics: true });
  const d2 = (await o2.diagnostics())!;
  assert.deepEqual([d2.castDtype, d2.gradUnderflow, d2.updated], ["f16", 1, 2]);
  o2.step();
  assert.equal(await o2.diagnostics(), null, "a step without diagnostics clears them");
  opt.dispose();
  o2.dispose();
});

Deno.test("diagnostics have no effect on the update (every strategy, two groups, device step counts too)", async () => {
  for (const precision of ["fp32", "bf16", "amp-bf16", "collage-light", "collage-plus"]) {
    const dt = precision === "fp32" || precision.startsWith("amp") ? "f32" : "bf16";
    const run = async (diag: boolean) => {
      const ps = [37, 300, 5].map((n, i) => tensor(uniform(n, 20 + i), { dtype: dt }));
      const opt = new AdamW([{ params: ps.slice(0, 2) }, { params: ps.slice(2), lr: 3e-3 }], {
        lr: 1e-2,
        precision,
      });
      const flag = tensor(new Uint32Array(1), { dtype: "u32" });
      for (let t = 0; t < 4; t++) {
        ps.forEach((p, i) => {
          p.grad?.dispose();
          p.grad = tensor(uniform(p.size, 100 * t + i), { dtype: dt });
        });
        opt.step({ diagnostics: diag, foundInf: t >= 2 ? flag : undefined });
      }
      const d = diag ? await opt.diagnostics() : null;
      const out = await Promise.all(ps.map((p) => p.codes().then((c) => Array.from(c))));
      const sd = opt.stateDict();
      for (const s of Object.values(sd.state)) {
        for (const v of Object.values(s)) {
          if (v !== null && typeof v === "object") out.push(Array.from(await v.codes()));
        }
      }
      opt.dispose();
      return { out, d };
    };
    const on = await run(true), off = await run(false);
    assert.deepEqual(on.out, off.out, `${precision}: identical parameters and states`);
    assert.equal(on.d!.elements, 342, `${precision}: both groups counted`);
  }
});
