/**
 * MS-AMP's O2 optimizer (Peng et al., "FP8-LM: Training FP8 Large Language Models", 2023;
 * `msamp.optim.LBAdamW` with its CUDA kernels `adamw_fp8_stage1/2`): AdamW whose first
 * moment is stored in FP8 E4M3 and second moment in f16, each with a per-tensor
 * power-of-two scale (the `msamp-o2` strategy; `scaled` states of `precision.ts`).
 *
 * Per element, update t (x.expAvg and x.expAvgSq are the stored values divided by their
 * tensor's scale; MS-AMP's `value * inv_factor`):
 *
 * ```
 * p = p * (1 - lr * wd)                            // decoupled weight decay, first
 * m = beta1 * m + (1 - beta1) * g                  // in f32, MS-AMP's order
 * v = beta2 * v + (1 - beta2) * (g * g)
 * p = p - stepSize * (m / (sqrt(v) / bc2Sqrt + eps))   // with the f32 m and v (stage 1)
 * m_stored = e4m3(m * s_m), v_stored = f16(v * s_v)    // new scales from this step (stage 2)
 * ```
 *
 * with `s = 2^floor(log2(fmax / amax))` over the tensor's new values (448 for e4m3, 65504
 * for f16; 1 when amax is 0 or not finite: `ScalingMeta.compute_scaling_factor(amax, 1,
 * fmax, 0)`). As MS-AMP, the parameter moves with the unquantised m and v of this step;
 * the stored moments are what the next step reads. The kernel machinery runs the body once
 * for the amaxes and once to store (`_update_kernel.ts`), as MS-AMP's two stages.
 *
 * Every product that feeds a sum is multiplied by the uniform `one`, so a compiler that
 * contracts into fused multiply-adds computes the same bits as a host emulation.
 *
 * @module
 */

import type { UpdateBody } from "./rule.ts";

/**
 * The MS-AMP O2 AdamW body (`updates.adamw` of the `msamp-o2` strategy). Hyperparameters:
 * `decay` (1 - lr wd), `beta1`, `beta2`, `eps`, `lrwd`; per-step: `stepSize`, `bc2Sqrt`.
 *
 * @example
 * ```ts
 * import { msampAdamWBody } from "./msamp.ts";
 * const wgsl = msampAdamWBody({ flags: { amsgrad: false, maximize: false }, buffers: [] });
 * console.log(wgsl.includes("q_expAvg(m)")); // true
 * ```
 */
export const msampAdamWBody: UpdateBody = ({ flags }) =>
  `  let g = ${flags.maximize ? "-x.grad" : "x.grad"};
  let p = x.param * decay;
  let m = (beta1 * x.expAvg) * u.one + ((1.0 - beta1) * g) * u.one;
  let v = (beta2 * x.expAvgSq) * u.one + ((1.0 - beta2) * (g * g)) * u.one;
  y.expAvg = q_expAvg(m);
  y.expAvgSq = q_expAvgSq(v);
  let d = stepSize * (m / (sqrt(v) / bc2Sqrt + eps));
  y.param = q_param(p - d * u.one);
  y.intended = -(lrwd * x.param) - d;`;
