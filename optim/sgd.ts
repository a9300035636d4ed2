/**
 * Stochastic gradient descent with momentum (Polyak; Nesterov as in Sutskever et al., ICML
 * 2013), PyTorch's semantics and defaults (`torch.optim.SGD`): lr 1e-3, momentum 0,
 * dampening 0, weight decay 0, nesterov and maximize off. Per parameter:
 *
 * ```
 * d = g + wd * p                                   // L2 weight decay, added to the gradient
 * b = d on the first update, else momentum * b + (1 - dampening) * d
 * d = nesterov ? d + momentum * b : b              // only when momentum != 0
 * p = p - lr * d
 * ```
 *
 * The momentum buffer starts as the first gradient (PyTorch's rule), not as zeros. SGD is an
 * update rule (`SGD_RULE`, `rule.ts`); each parameter tensor is updated in place by one
 * kernel (`_update_kernel.ts`); with `precision: "bf16"` the parameters, gradients and
 * buffer are bf16 and each stored value is rounded once from f32.
 *
 * @module
 */

import { ValueError } from "../errors.ts";
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
 * SGD's hyperparameters (each optional; PyTorch's defaults).
 *
 * @example
 * ```ts
 * import { SGD, type SGDOptions, zeros } from "../mod.ts";
 * const opts: SGDOptions = { lr: 0.1, momentum: 0.9, nesterov: true };
 * console.log(new SGD([zeros([2])], opts).paramGroups[0].nesterov); // true
 * ```
 */
export interface SGDOptions {
  /** Learning rate (default 1e-3), >= 0. */
  lr?: number;
  /** Momentum factor (default 0), >= 0. */
  momentum?: number;
  /** Dampening of the momentum (default 0). */
  dampening?: number;
  /** L2 penalty added to the gradient (default 0), >= 0. */
  weightDecay?: number;
  /** Nesterov momentum (default false); needs momentum > 0 and dampening 0. */
  nesterov?: boolean;
  /** Maximise the objective instead of minimising it (default false). */
  maximize?: boolean;
}

/**
 * A parameter group of SGD: its parameters and hyperparameters.
 *
 * @example
 * ```ts
 * import { SGD, zeros } from "../mod.ts";
 * const opt = new SGD([{ params: [zeros([2])] }, { params: [zeros([3])], lr: 0.5 }], { lr: 0.1 });
 * console.log(opt.paramGroups.map((g) => g.lr)); // [0.1, 0.5]
 * ```
 */
export interface SGDParamGroup extends ParamGroup {
  /** Momentum factor. */
  momentum: number;
  /** Dampening. */
  dampening: number;
  /** L2 penalty. */
  weightDecay: number;
  /** Nesterov momentum. */
  nesterov: boolean;
  /** Maximise instead of minimise. */
  maximize: boolean;
}

/**
 * SGD with optional momentum, Nesterov momentum and weight decay, PyTorch's semantics.
 * The state `momentumBuffer` is kept when momentum is non-zero.
 *
 * @example
 * ```ts
 * import { SGD, tensor } from "../mod.ts";
 * const w = tensor([1, 2], { requiresGrad: true });
 * const opt = new SGD([w], { lr: 0.5, momentum: 0.9 });
 * w.grad = tensor([1, 1]);
 * opt.step(); // buffer = g: w - 0.5
 * opt.step(); // buffer = 0.9 + 1: w - 0.95
 * console.log(Array.from(await w.toArray()).map((x) => x.toFixed(2))); // ["-0.45", "0.55"]
 * ```
 */
export class SGD extends Optimizer<SGDParamGroup, SGDOptions> {
  /**
   * An SGD over `params` (tensors or parameter groups); `precision` a strategy name,
   * `seed` (default 0) the seed of a stochastic-rounding strategy's streams (`bf16-sr`).
   */
  constructor(
    params: Params<SGDOptions>,
    opts: SGDOptions & { precision?: string; seed?: number } = {},
  ) {
    const [defaults, precision, seed] = ruleOptions(SGD_RULE, {
      lr: 1e-3,
      momentum: 0,
      dampening: 0,
      weightDecay: 0,
      nesterov: false,
      maximize: false,
    }, opts);
    super(SGD_RULE, params, defaults, precision, seed);
  }
}

/**
 * SGD as data: the momentum buffer (when momentum is non-zero), the hyperparameters by name,
 * `isFirst` (the buffer starts as the first gradient) as the per-step value, the f32 body.
 * Its state dict holds no `step` and a null `momentumBuffer` without momentum, as PyTorch's.
 *
 * @example
 * ```ts
 * import { SGD_RULE } from "./sgd.ts";
 * console.log(SGD_RULE.states({ momentum: true }), SGD_RULE.states({ momentum: false })); // ["momentumBuffer"] []
 * ```
 */
export const SGD_RULE: UpdateRule<SGDParamGroup> = {
  name: "sgd",
  label: "SGD",
  flags: (g) => ({ momentum: g.momentum !== 0, nesterov: g.nesterov, maximize: g.maximize }),
  states: (f) => (f.momentum ? ["momentumBuffer"] : []),
  hyper: {
    lr: (g) => g.lr,
    momentum: (g) => g.momentum,
    damp1: (g) => 1 - g.dampening,
    wd: (g) => g.weightDecay,
  },
  perStep: (_h, m) => ({ isFirst: m.first() }),
  body: (f) => sgdBody({ momentum: f.momentum, nesterov: f.nesterov, maximize: f.maximize }),
  savesStep: false,
  nullStates: (f) => (f.momentum ? [] : ["momentumBuffer"]),
  validate: (g, where) => validate(g, where),
};

/** The f32 SGD body: each stored value rounded once by q_<name>. */
function sgdBody(flags: { momentum: boolean; nesterov: boolean; maximize: boolean }): string {
  let s = `  var d = ${flags.maximize ? "-x.grad" : "x.grad"};
  d = select(d, d + wd * x.param, wd != 0.0);
`;
  if (flags.momentum) {
    s +=
      `  let b = q_momentumBuffer(select(momentum * x.momentumBuffer + damp1 * d, d, isFirst > 0.5));
  y.momentumBuffer = b;
  d = ${flags.nesterov ? "d + momentum * b" : "b"};
`;
  }
  return s + `  y.param = q_param(x.param - lr * d);
  y.intended = -(lr * d);`;
}

function validate(g: SGDParamGroup, where: string): void {
  checkRange(where, "lr", g.lr, 0, Infinity, { hiOpen: true });
  checkRange(where, "momentum", g.momentum, 0, Infinity, { hiOpen: true });
  checkRange(where, "dampening", g.dampening, -Infinity, Infinity, { hiOpen: true });
  checkRange(where, "weightDecay", g.weightDecay, 0, Infinity, { hiOpen: true });
  checkBool(where, "nesterov", g.nesterov);
  checkBool(where, "maximize", g.maximize);
  if (g.nesterov && (g.momentum <= 0 || g.dampening !== 0)) {
    throw new ValueError(
      `${where}: nesterov momentum requires momentum > 0 and dampening 0 (got momentum ` +
        `${g.momentum}, dampening ${g.dampening})`,
    );
  }
}
