/**
 * AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) with
 * PyTorch's semantics and defaults (`torch.optim.AdamW`): lr 1e-3, betas (0.9, 0.999),
 * eps 1e-8, weight decay 1e-2, amsgrad and maximize off. Per parameter, update t:
 *
 * ```
 * p = p * (1 - lr * wd)                           // decoupled weight decay, first
 * m = lerp(m, g, 1 - beta1)                       // m + (1 - beta1) (g - m)
 * v = beta2 v + (1 - beta2) g^2                   // amsgrad: vmax = max(vmax, v), used below
 * p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * ```
 *
 * t counts the updates of that parameter (a parameter without a gradient is skipped and
 * its t does not advance). AdamW is an update rule (`ADAMW_RULE`, `rule.ts`): its states,
 * named hyperparameters, bias corrections and WGSL body; each parameter tensor is updated
 * in place by one kernel (`_update_kernel.ts`).
 *
 * The bias corrections are defined once (`perStep`); they are evaluated on the host in f64
 * and passed as uniforms, except once the optimizer has stepped under a GradScaler: then the
 * step counts live on the device and the same definition is computed by the kernel in f32,
 * so skipped steps do not count.
 *
 * Storage follows `precision` (see `precision.ts`; "fp32", "bf16", "amp-bf16", "amp-f16",
 * "collage-light", "collage-plus", the last two with Collage's MCF update of `collage.ts`;
 * "bf16-sr", the weights rounded stochastically; "msamp-o2", MS-AMP's body of `msamp.ts`):
 * with "bf16", parameters, gradients, m and v are bf16; the kernel computes in f32 and rounds each stored value once (RNE), and
 * the update uses the stored (rounded) m and v, as PyTorch's does. PyTorch itself rounds
 * after each op of a bf16 update (p after the decay, v after `mul_` and after `addcmul_`);
 * ulp rounds once per stored value, as DESIGN.md section 4 defines "computing in bf16".
 *
 * @module
 */

import { ValueError } from "../errors.ts";
import { splitBf16 } from "./collage.ts";
import {
  checkBool,
  checkRange,
  Optimizer,
  type ParamGroup,
  type Params,
  ruleOptions,
} from "./optimizer.ts";
import type { UpdateRule } from "./rule.ts";

/**
 * AdamW's hyperparameters (each optional; PyTorch's defaults), for the constructor and for
 * each parameter group.
 *
 * @example
 * ```ts
 * import { AdamW, type AdamWOptions, zeros } from "../mod.ts";
 * const opts: AdamWOptions = { lr: 3e-4, betas: [0.9, 0.95], weightDecay: 0.1 };
 * console.log(new AdamW([zeros([2])], opts).paramGroups[0].betas); // [0.9, 0.95]
 * ```
 */
export interface AdamWOptions {
  /** Learning rate (default 1e-3), >= 0. */
  lr?: number;
  /** Coefficients of the running averages of the gradient and its square (default [0.9, 0.999]), each in [0, 1). */
  betas?: readonly [number, number];
  /** Added to the denominator (default 1e-8), > 0. */
  eps?: number;
  /** Decoupled weight decay (default 1e-2), >= 0. */
  weightDecay?: number;
  /** Use the maximum of past second moments (AMSGrad; default false). */
  amsgrad?: boolean;
  /** Maximise the objective instead of minimising it (default false). */
  maximize?: boolean;
}

/**
 * A parameter group of AdamW: its parameters and hyperparameters (change them between
 * steps; a scheduler changes `lr`).
 *
 * @example
 * ```ts
 * import { AdamW, zeros } from "../mod.ts";
 * const [w, b] = [zeros([4, 4]), zeros([4])];
 * const opt = new AdamW([{ params: [w] }, { params: [b], weightDecay: 0 }]);
 * console.log(opt.paramGroups.map((g) => g.weightDecay)); // [0.01, 0]
 * ```
 */
export interface AdamWParamGroup extends ParamGroup {
  /** Running-average coefficients. */
  betas: [number, number];
  /** Denominator term. */
  eps: number;
  /** Decoupled weight decay. */
  weightDecay: number;
  /** AMSGrad. */
  amsgrad: boolean;
  /** Maximise instead of minimise. */
  maximize: boolean;
}

/**
 * AdamW with decoupled weight decay, PyTorch's semantics and defaults.
 * `precision` (a strategy name of `precisionNames()`; "fp32" or "bf16" inferred from the
 * parameters' dtype when omitted) chooses the dtypes of parameters, gradients and the
 * states `expAvg` (m) and `expAvgSq` (v), and for Collage the MCF update with the extra
 * states `paramLo` (and `expAvgSqLo` for "collage-plus").
 *
 * @example
 * ```ts
 * import { AdamW, tensor } from "../mod.ts";
 * const w = tensor([1, -1], { requiresGrad: true });
 * const opt = new AdamW([w], { lr: 0.1, weightDecay: 0 });
 * w.mul(w).sum().backward(); // grad 2w
 * opt.step();
 * console.log(Array.from(await w.toArray()).map((x) => x.toFixed(4))); // ["0.9000", "-0.9000"]
 * opt.zeroGrad();
 * ```
 */
export class AdamW extends Optimizer<AdamWParamGroup, AdamWOptions> {
  /**
   * An AdamW over `params` (tensors or parameter groups); `precision` a strategy name,
   * `seed` (default 0) the seed of a stochastic-rounding strategy's streams (`bf16-sr`).
   */
  constructor(
    params: Params<AdamWOptions>,
    opts: AdamWOptions & { precision?: string; seed?: number } = {},
  ) {
    const [defaults, precision, seed] = ruleOptions(ADAMW_RULE, {
      lr: 1e-3,
      betas: [0.9, 0.999],
      eps: 1e-8,
      weightDecay: 1e-2,
      amsgrad: false,
      maximize: false,
    }, opts);
    super(ADAMW_RULE, params, defaults, precision, seed);
  }
}

/**
 * AdamW as data: states m and v (and vmax with amsgrad), the hyperparameters the body reads
 * by name, the bias corrections as per-step values, the f32 body.
 *
 * @example
 * ```ts
 * import { ADAMW_RULE } from "./adamw.ts";
 * console.log(ADAMW_RULE.states({ amsgrad: true })); // ["expAvg", "expAvgSq", "maxExpAvgSq"]
 * ```
 */
export const ADAMW_RULE: UpdateRule<AdamWParamGroup> = {
  name: "adamw",
  label: "AdamW",
  flags: (g) => ({ amsgrad: g.amsgrad, maximize: g.maximize }),
  states: (f) => ["expAvg", "expAvgSq", ...(f.amsgrad ? ["maxExpAvgSq"] : [])],
  hyper: {
    lr: (g) => g.lr,
    decay: (g) => 1 - g.lr * g.weightDecay,
    w1: (g) => 1 - g.betas[0],
    beta1: (g) => g.betas[0],
    beta2: (g) => g.betas[1],
    c2: (g) => 1 - g.betas[1],
    eps: (g) => g.eps,
    wd: (g) => g.weightDecay,
    b2hi: (g) => splitBf16(g.betas[1])[0],
    b2lo: (g) => splitBf16(g.betas[1])[1],
    lrwd: (g) => g.lr * g.weightDecay,
  },
  // bias corrections: stepSize = lr / (1 - beta1^t), bc2Sqrt = sqrt(1 - beta2^t)
  perStep: (h, m) => ({
    stepSize: m.div(h.lr, m.sub(m.num(1), m.powT(h.beta1))),
    bc2Sqrt: m.sqrt(m.sub(m.num(1), m.powT(h.beta2))),
  }),
  body: (f) => adamwBody({ amsgrad: f.amsgrad, maximize: f.maximize }),
  savesStep: true,
  validate,
};

/** The f32 AdamW body: each stored value rounded once by q_<name>. */
function adamwBody(flags: { amsgrad: boolean; maximize: boolean }): string {
  const vUsed = flags.amsgrad ? "vmax" : "v";
  return `  let g = ${flags.maximize ? "-x.grad" : "x.grad"};
  let p = x.param * decay;
  let m = q_expAvg(select(g - (g - x.expAvg) * (1.0 - w1), x.expAvg + w1 * (g - x.expAvg), w1 < 0.5));
  let v = q_expAvgSq(x.expAvgSq * beta2 + (c2 * g) * g);
  y.expAvg = m;
  y.expAvgSq = v;
${
    flags.amsgrad
      ? "  let vmax = q_maxExpAvgSq(ulp_max(x.maxExpAvgSq, v));\n  y.maxExpAvgSq = vmax;\n"
      : ""
  }  let denom = sqrt(${vUsed}) / bc2Sqrt + eps;
  y.param = q_param(p - stepSize * (m / denom));
  y.intended = -(lrwd * x.param) - stepSize * (m / denom);`;
}

function validate(g: AdamWParamGroup, where: string, custom: string | null): void {
  checkRange(where, "lr", g.lr, 0, Infinity, { hiOpen: true });
  if (!Array.isArray(g.betas) || g.betas.length !== 2) {
    throw new ValueError(`${where}: betas must be a pair [beta1, beta2], got ${String(g.betas)}`);
  }
  checkRange(where, "betas[0]", g.betas[0], 0, 1, { hiOpen: true });
  checkRange(where, "betas[1]", g.betas[1], 0, 1, { hiOpen: true });
  checkRange(where, "eps", g.eps, 0, Infinity, { loOpen: true, hiOpen: true });
  checkRange(where, "weightDecay", g.weightDecay, 0, Infinity, { hiOpen: true });
  checkBool(where, "amsgrad", g.amsgrad);
  checkBool(where, "maximize", g.maximize);
  if (custom !== null && g.amsgrad) {
    throw new ValueError(
      `${where}: amsgrad is not supported with precision '${custom}'; set amsgrad: false`,
    );
  }
}
