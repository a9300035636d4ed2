/**
 * Optimizers for low-precision training: `SGD` and `AdamW` with PyTorch's semantics,
 * parameter groups, state dicts, optimizers as data (`UpdateRule`: states, named
 * hyperparameters, per-step values and a WGSL body), an in-place update (one kernel per
 * parameter tensor, windowed for tensors larger than one storage binding),
 * precision strategies ("fp32", pure "bf16", "amp-bf16", "amp-f16", "collage-light",
 * "collage-plus") with `applyPrecision`, a device-side `GradScaler`, diagnostics of what
 * low precision lost, `clipGradNorm` and learning-rate schedules.
 *
 * @example
 * ```ts
 * import { AdamW, CosineWithWarmupLR, clipGradNorm, tensor } from "../mod.ts";
 * const w = tensor([0.5, -0.5], { requiresGrad: true });
 * const opt = new AdamW([w], { lr: 0.01 });
 * const sched = new CosineWithWarmupLR(opt, { warmupSteps: 2, totalSteps: 10 });
 * for (let i = 0; i < 3; i++) {
 *   w.mul(w).sum().backward();
 *   clipGradNorm([w], 1.0);
 *   opt.step();
 *   opt.zeroGrad();
 *   sched.step();
 * }
 * console.log(Math.abs((await w.toArray())[0]) < 0.5); // true
 * ```
 * @module
 */

export {
  type Diagnostics,
  Optimizer,
  type OptimizerStateDict,
  type ParamGroup,
  type ParamGroupInput,
  type Params,
  type ParamState,
  type StepOptions,
} from "./optimizer.ts";
export {
  GradScaler,
  type GradScalerOptions,
  type GradScalerState,
  type GradScalerStatus,
} from "./grad_scaler.ts";
export { AdamW, ADAMW_RULE, type AdamWOptions, type AdamWParamGroup } from "./adamw.ts";
export { SGD, SGD_RULE, type SGDOptions, type SGDParamGroup } from "./sgd.ts";
export {
  hostStepMath,
  type HyperParameter,
  type PerStep,
  type StepMath,
  type UpdateRule,
  wgslStepMath,
} from "./rule.ts";
export {
  applyPrecision,
  precisionNames,
  type PrecisionStrategy,
  precisionStrategy,
  type StateSpec,
  type UpdateBody,
  type UpdateBodyContext,
} from "./precision.ts";
export { clipGradNorm } from "./clip.ts";
export {
  cosineWithWarmup,
  CosineWithWarmupLR,
  type CosineWithWarmupOptions,
  LambdaLR,
  LRScheduler,
  type LRSchedulerState,
} from "./schedule.ts";
