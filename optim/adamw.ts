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
 * its t does not advance). All parameters of a group are updated by one dispatch
 * (`_multi_tensor.ts`).
 *
 * Bias corrections are computed on the host in f64 and passed as uniforms, except once the
 * optimizer has stepped under a GradScaler: then the step counts live on the device and the
 * kernel computes them in f32 (see `_multi_tensor.ts`), so skipped steps do not count.
 *
 * Storage follows `precision` (see `precision.ts`; "fp32", "bf16", "amp-bf16", "amp-f16",
 * "collage-light", "collage-plus", the last two with Collage's MCF update of `collage.ts`):
 * with "bf16", parameters, gradients, m and v are bf16; the kernel computes in f32 and rounds each stored value once (RNE), and
 * the update uses the stored (rounded) m and v, as PyTorch's does. PyTorch itself rounds
 * after each op of a bf16 update (p after the decay, v after `mul_` and after `addcmul_`);
 * ulp rounds once per stored value, as DESIGN.md section 4 defines "computing in bf16".
 *
 * @module
 */

import { ValueError } from "../errors.ts";
import type { UpdateProgram } from "./_multi_tensor.ts";
import { splitBf16 } from "./collage.ts";
import {
  checkBool,
  checkOptionNames,
  checkRange,
  Optimizer,
  type ParamGroup,
  type Params,
} from "./optimizer.ts";

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
  /** AdamW keeps `step` per parameter in its state dict. */
  protected readonly savesStep = true;

  /** An AdamW over `params` (tensors or parameter groups). */
  constructor(params: Params<AdamWOptions>, opts: AdamWOptions & { precision?: string } = {}) {
    const { precision, ...rest } = opts;
    const defaults = {
      lr: 1e-3,
      betas: [0.9, 0.999] as [number, number],
      eps: 1e-8,
      weightDecay: 1e-2,
      amsgrad: false,
      maximize: false,
    };
    checkOptionNames("AdamW", rest, [...Object.keys(defaults), "precision"]);
    for (const [k, v] of Object.entries(rest)) {
      if (v !== undefined) (defaults as Record<string, unknown>)[k] = Array.isArray(v) ? [...v] : v;
    }
    validate(defaults as AdamWParamGroup, "AdamW");
    super("AdamW", params, defaults, precision);
  }

  protected validateGroup(g: AdamWParamGroup, where: string): void {
    validate(g, where);
  }

  protected programKey(g: AdamWParamGroup): string {
    return `adamw|${g.amsgrad}|${g.maximize}`;
  }

  protected buildProgram(g: AdamWParamGroup): UpdateProgram {
    const s = this.precision;
    const states = [
      { name: "expAvg", dtype: s.stateDtype("expAvg") },
      { name: "expAvgSq", dtype: s.stateDtype("expAvgSq") },
      ...(g.amsgrad ? [{ name: "maxExpAvgSq", dtype: s.stateDtype("maxExpAvgSq") }] : []),
      ...s.extraStates.filter((e) => !e.optimizers || e.optimizers.includes("adamw")),
    ];
    const buffers = [
      { name: "param", dtype: s.param, access: "read_write" as const },
      { name: "grad", dtype: s.grad, access: "read" as const },
      ...states.map((b) => ({ ...b, access: "read_write" as const })),
    ];
    const flags = { amsgrad: g.amsgrad, maximize: g.maximize };
    const custom = s.updates.adamw;
    if (custom && g.amsgrad) {
      throw new ValueError(
        `AdamW: amsgrad is not supported with precision '${s.name}'; set amsgrad: false`,
      );
    }
    return {
      label: "adamw",
      buffers,
      hyper: ["lr", "decay", "w1", "beta1", "beta2", "c2", "eps", "wd", "b2hi", "b2lo", "lrwd"],
      classVals: ["stepSize", "bc2Sqrt", "stepCount"],
      body: custom ? custom({ flags, buffers }) : adamwBody(flags),
      deviceClass: `  let bc1 = 1.0 - ulp_powu(beta1, t);
  let bc2 = 1.0 - ulp_powu(beta2, t);
  kv = vec4<f32>(lr / bc1, sqrt(bc2), f32(t), 0.0);`,
      effective: s.effective ?? undefined,
    };
  }

  protected hyper(g: AdamWParamGroup): number[] {
    const [b1, b2] = g.betas;
    const [b2hi, b2lo] = splitBf16(b2);
    return [
      g.lr,
      1 - g.lr * g.weightDecay,
      1 - b1,
      b1,
      b2,
      1 - b2,
      g.eps,
      g.weightDecay,
      b2hi,
      b2lo,
      g.lr * g.weightDecay,
    ];
  }

  protected classKey(_g: AdamWParamGroup, step: number): number {
    return step;
  }

  protected classValues(g: AdamWParamGroup, step: number): number[] {
    const [b1, b2] = g.betas;
    const bc1 = 1 - b1 ** step, bc2 = 1 - b2 ** step;
    return [g.lr / bc1, Math.sqrt(bc2), step];
  }
}

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

function validate(g: AdamWParamGroup, where: string): void {
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
}
