// Optimizer steps, clipping and unscaling on tensors larger than one storage binding (issue
// 14, items 1 and 4): with the runtime's binding limit lowered, the kernels bind windows and
// give the same bits as one whole binding, and a step keeps no staging copy.
import assert from "node:assert/strict";
import {
  AdamW,
  clipGradNorm,
  GradScaler,
  memory,
  type Optimizer,
  SGD,
  type Tensor,
  tensor,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { bf16, stateCodes, uniform } from "./_reference.ts";
import { withBindingLimit } from "../_binding_limit.ts";

const LIMIT = 65536;

/** Every stored code of the parameters, gradients and optimizer states, and the diagnostics. */
async function snapshot(ps: Tensor[], opt: Optimizer) {
  const out: number[][] = [];
  for (const p of ps) {
    out.push(Array.from(await p.codes()));
    if (p.grad) out.push(Array.from(await p.grad.codes()));
  }
  out.push(...await stateCodes(opt, true));
  const d = await opt.diagnostics();
  return { out, d };
}

type Make = (ps: Tensor[]) => Optimizer;

/**
 * Four steps of `make`'s optimizer on parameters of `sizes` (dtype `dt`): clipping, a
 * GradScaler from step 2 on (unscale, a skipped step with an Inf), diagnostics on the last.
 * Returns the codes and the number of dispatches.
 */
async function run(make: Make, sizes: number[], dt: string, scaler: boolean) {
  const rt = await getRuntime();
  const ps = sizes.map((n, i) => tensor(uniform(n, 3 + i, -1, 1), { dtype: dt }));
  const opt = make(ps);
  const sc = scaler ? new GradScaler({ initScale: 256 }) : null;
  const d0 = rt.counters.dispatches;
  const s0 = memory().byPurpose.scratch ?? 0;
  for (let t = 0; t < 4; t++) {
    ps.forEach((p, i) => {
      p.grad?.dispose();
      const g = uniform(p.size, 50 * t + i, -2, 2);
      if (sc && t === 2 && i === 0) g[p.size - 1] = Infinity; // the last window
      p.grad = tensor(dt === "bf16" ? bf16(g) : g, { dtype: dt });
    });
    clipGradNorm(ps, 50).dispose();
    if (sc) {
      sc.unscale(opt);
      sc.step(opt);
      sc.update();
    } else opt.step({ diagnostics: t === 3 });
  }
  const dispatches = rt.counters.dispatches - d0;
  assert.equal((memory().byPurpose.scratch ?? 0) - s0, 0, "no scratch left after the steps");
  const snap = await snapshot(ps, opt);
  const scale = sc ? await sc.getScale() : 1;
  opt.dispose();
  sc?.dispose();
  ps.forEach((p) => (p.zeroGrad(), p.dispose()));
  return { ...snap, scale, dispatches };
}

const CASES: { name: string; dt: string; make: Make; scaler?: boolean }[] = [
  {
    name: "AdamW fp32 (two groups, amsgrad)",
    dt: "f32",
    make: (ps) =>
      new AdamW([{ params: ps.slice(0, 1) }, { params: ps.slice(1), amsgrad: true, lr: 3e-3 }], {
        lr: 1e-2,
      }),
  },
  {
    name: "AdamW amp-f16 under a GradScaler (device step counts)",
    dt: "f32",
    scaler: true,
    make: (
      ps,
    ) => new AdamW(ps, { lr: 1e-2, precision: "amp-f16" }),
  },
  { name: "AdamW bf16", dt: "bf16", make: (ps) => new AdamW(ps, { lr: 1e-2 }) },
  {
    name: "AdamW collage-plus",
    dt: "bf16",
    make: (ps) => new AdamW(ps, { lr: 1e-2, precision: "collage-plus" }),
  },
  {
    name: "SGD fp32 (Nesterov)",
    dt: "f32",
    make: (ps) => new SGD(ps, { lr: 1e-2, momentum: 0.9, nesterov: true, weightDecay: 0.01 }),
  },
  {
    name: "SGD collage-light",
    dt: "bf16",
    make: (ps) => new SGD(ps, { lr: 1e-2, momentum: 0.9, precision: "collage-light" }),
  },
];

for (const c of CASES) {
  Deno.test(`${c.name}: windows of ${LIMIT} bytes give the same bits as whole bindings`, async () => {
    // 50,001 elements: 200 KB in f32 (four windows), 100 KB in bf16; and a small tensor
    const sizes = [50_001, 37];
    const whole = await withBindingLimit(null, () => run(c.make, sizes, c.dt, c.scaler ?? false));
    const windowed = await withBindingLimit(
      LIMIT,
      () => run(c.make, sizes, c.dt, c.scaler ?? false),
    );
    assert.ok(
      windowed.dispatches > whole.dispatches,
      `windows split the dispatches (${windowed.dispatches} vs ${whole.dispatches})`,
    );
    assert.equal(windowed.out.length, whole.out.length);
    windowed.out.forEach((codes, k) => assert.deepEqual(codes, whole.out[k], `buffer ${k}`));
    assert.deepEqual(windowed.d, whole.d, "the diagnostics");
    assert.equal(windowed.scale, whole.scale);
    if (c.scaler) assert.equal(whole.scale, 256 * 0.5, "the Inf in the last window was found");
    else assert.equal(whole.d!.elements, 50_038, "every element counted");
  });
}
