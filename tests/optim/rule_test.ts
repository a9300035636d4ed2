// Optimizers as data (issue 15, item 4): an update rule declares its states, named
// hyperparameters, per-step values and WGSL body, and the machinery runs it; a precision
// strategy without a body for a rule refuses it when the optimizer is built.
import assert from "node:assert/strict";
import { Optimizer, type ParamGroup, type Tensor, tensor, ValueError } from "../../mod.ts";
import {
  ADAMW_RULE,
  hostStepMath,
  SGD_RULE,
  type UpdateRule,
  wgslStepMath,
} from "../../optim/mod.ts";
import { bf16, uniform } from "./_reference.ts";

interface SignGroup extends ParamGroup {
  beta: number;
}

/**
 * Signum (sign descent with momentum, Bernstein et al. 2018): m = beta m + (1 - beta) g,
 * p -= (lr / (1 - beta^t)) sign(m). Its hyperparameters are declared in another order than
 * the body reads them, and its step size is a per-step value.
 */
const SIGNUM: UpdateRule<SignGroup> = {
  name: "signum",
  label: "Signum",
  flags: () => ({}),
  states: () => ["mom"],
  hyper: { omb: (g) => 1 - g.beta, lr: (g) => g.lr, beta: (g) => g.beta },
  perStep: (h, m) => ({ step: m.div(h.lr, m.sub(m.num(1), m.powT(h.beta))) }),
  body: () =>
    `  let mm = q_mom(beta * x.mom + omb * x.grad);
  y.mom = mm;
  y.param = q_param(x.param - step * sign(mm));
  y.intended = -step * sign(mm);`,
  savesStep: true,
  validate: (g, where) => {
    if (!(g.beta >= 0 && g.beta < 1)) throw new ValueError(`${where}: beta must be in [0, 1)`);
  },
};

class Signum extends Optimizer<SignGroup, { lr?: number; beta?: number }> {
  constructor(ps: Tensor[], opts: { lr?: number; beta?: number; precision?: string } = {}) {
    const { precision, ...rest } = opts;
    super(SIGNUM, ps, { lr: 0.1, beta: 0.5, ...rest }, precision);
  }
}

const f = Math.fround;

Deno.test("a rule defined as data runs as an optimizer: Signum matches its host emulation bit for bit (f32 and bf16)", async () => {
  for (const dt of ["f32", "bf16"] as const) {
    const round = dt === "bf16" ? (x: number) => bf16([x])[0] : f;
    const n = 300;
    const p0 = dt === "bf16" ? bf16(uniform(n, 1)) : uniform(n, 1);
    const w = tensor(p0, { dtype: dt });
    const opt = new Signum([w], { lr: 0.01, beta: 0.75 });
    const p = Array.from(p0), m = new Array(n).fill(0);
    for (let t = 1; t <= 3; t++) {
      const g = dt === "bf16" ? bf16(uniform(n, 10 + t, -1, 1)) : uniform(n, 10 + t, -1, 1);
      w.grad?.dispose();
      w.grad = tensor(g, { dtype: dt });
      opt.step();
      const step = f(0.01 / (1 - 0.75 ** t)); // the per-step value, f64 then an f32 uniform
      for (let i = 0; i < n; i++) {
        m[i] = round(f(f(f(0.75) * m[i]) + f(f(1 - 0.75) * g[i])));
        p[i] = round(f(p[i] - f(step * Math.sign(m[i]))));
      }
    }
    assert.deepEqual(Array.from(await w.toArray()), p, `${dt}: parameters`);
    const sd = opt.stateDict();
    assert.deepEqual(Object.keys(sd.state[0]), ["step", "mom"]);
    assert.equal(sd.state[0].step, 3);
    assert.deepEqual(Array.from(await (sd.state[0].mom as Tensor).toArray()), m, `${dt}: state`);
    assert.throws(() => new Signum([w], { beta: 1 }), /Signum: parameter group 0: beta/);
    opt.dispose();
  }
});

Deno.test("a precision strategy with no body for an optimizer is an error at construction, never a silent fallback", () => {
  const w = tensor([1, 2], { dtype: "bf16" });
  for (const precision of ["collage-light", "collage-plus"]) {
    assert.throws(
      () => new Signum([w], { precision }),
      (e: unknown) =>
        e instanceof ValueError &&
        e.message.includes(`precision '${precision}' has no update body for Signum`) &&
        e.message.includes("bodies for adamw, sgd") && e.message.includes("paramLo"),
    );
  }
  // the plain strategies run the rule's own body
  for (const precision of ["bf16", "e5m6"]) {
    const v = tensor([1, 2], { dtype: precision === "bf16" ? "bf16" : "e5m6" });
    new Signum([v], { precision }).dispose();
  }
});

Deno.test("one definition of the per-step values: f64 on the host, the same expression in WGSL for the device", () => {
  const h = { lr: 1e-3, beta1: 0.9, beta2: 0.999 };
  const host = ADAMW_RULE.perStep(h, hostStepMath(3));
  assert.equal(host.stepSize, 1e-3 / (1 - 0.9 ** 3));
  assert.equal(host.bc2Sqrt, Math.sqrt(1 - 0.999 ** 3));
  const names = { lr: "lr", beta1: "beta1", beta2: "beta2" };
  assert.deepEqual(ADAMW_RULE.perStep(names, wgslStepMath()), {
    stepSize: "(lr / (1.0 - ulp_powu(beta1, t)))",
    bc2Sqrt: "sqrt((1.0 - ulp_powu(beta2, t)))",
  });
  assert.deepEqual(SGD_RULE.perStep({}, hostStepMath(1)), { isFirst: 1 });
  assert.deepEqual(SGD_RULE.perStep({}, hostStepMath(2)), { isFirst: 0 });
});
