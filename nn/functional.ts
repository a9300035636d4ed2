/**
 * Functional forms of the layers (`linear`, `layerNorm`, `rmsNorm`, `dropout`, `softmax`,
 * `crossEntropy`, ...), as `torch.nn.functional`. Layers in `layers.ts` call these, so each
 * computation is written once.
 *
 * @module
 */

import { DTypeError, ShapeError, ValueError } from "../errors.ts";
import {
  AUTOCAST_POLICY,
  autocastInputs,
  crossEntropyLast,
  fmtShape,
  layerNormLast,
  LOSS_POLICY,
  matmul,
  NORM_POLICY,
  rand,
  rmsNormLast,
  type Tensor,
  where,
} from "../tensor/mod.ts";

// The tensor layer defines these ops once; they are part of the functional API too.
export { gelu, logSoftmax, softmax } from "../tensor/mod.ts";

/**
 * `x @ weight^T + bias` with `weight` of shape [out, in] (PyTorch's layout).
 *
 * @example
 * ```ts
 * import { linear, tensor } from "../mod.ts";
 * const y = linear(tensor([[1, 2]]), tensor([[1, 0], [0, 1], [1, 1]]), tensor([0, 0, 1]));
 * console.log(Array.from(await y.toArray())); // [1, 2, 4]
 * ```
 */
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null = null): Tensor {
  const inF = weight.shape[1];
  if (weight.ndim !== 2 || x.shape[x.ndim - 1] !== inF) {
    throw new ShapeError(
      `linear(): input ${fmtShape(x.shape)} (${x.dtype}) does not fit weight ${
        fmtShape(weight.shape)
      } ` +
        `(${weight.dtype}); the weight is [out_features, in_features] and the input's last dimension must be in_features`,
    );
  }
  // Under autocast all three run in the lower dtype (PyTorch's linear): matmul's GEMM
  // precision prepares x and the weight (a weight's cast is cached for the context; an FP8
  // recipe quantises it from the weight itself), the bias is cast here. W^T is read without a
  // copy. Intermediates stay alive for the backward pass; tidy() frees them.
  const y = matmul(x, weight, { transB: true });
  if (bias !== null) [bias] = autocastInputs(AUTOCAST_POLICY.linear, [bias]);
  return bias === null ? y : y.add(bias);
}

/**
 * Layer normalisation over the trailing dimensions in `normalizedShape` (usually the last),
 * with optional elementwise weight and bias. Mean and variance are computed in f32 and the
 * result is rounded once to the inputs' dtype. Over the last dimension alone it runs fused
 * kernels (one dispatch forward, two backward); over several trailing dimensions, a
 * composite of tensor ops. Under autocast the inputs are cast to f32 (policy `layerNorm`).
 *
 * @example
 * ```ts
 * import { layerNorm, tensor } from "../mod.ts";
 * const y = layerNorm(tensor([[1, 2, 3]]), [3]);
 * console.log(Array.from(await y.toArray()).map((v) => v.toFixed(3))); // ["-1.225", "0.000", "1.225"]
 * ```
 */
export function layerNorm(
  x: Tensor,
  normalizedShape: readonly number[],
  weight: Tensor | null = null,
  bias: Tensor | null = null,
  eps = 1e-5,
): Tensor {
  const k = normalizedShape.length;
  const tail = x.shape.slice(x.ndim - k);
  if (k === 0 || k > x.ndim || tail.some((v, i) => v !== normalizedShape[i])) {
    throw new ShapeError(
      `layerNorm(): input ${fmtShape(x.shape)} does not end in normalizedShape ${
        fmtShape(normalizedShape)
      }`,
    );
  }
  [x, weight, bias] = castParams("layerNorm", x, weight, bias);
  if (k === 1) return layerNormLast(x, weight, bias, eps);
  const axes = Array.from({ length: k }, (_, i) => x.ndim - k + i);
  const mu = x.mean(axes, true);
  const xc = x.sub(mu);
  const v = xc.mul(xc).mean(axes, true);
  const inv = v.add(eps).rsqrt();
  let y = xc.mul(inv);
  if (weight) y = y.mul(weight);
  if (bias) y = y.add(bias);
  return y;
}

/** `x` and the optional `weight` and `bias` as autocast wants them for `op`. */
function castParams(
  op: keyof typeof NORM_POLICY,
  x: Tensor,
  weight: Tensor | null,
  bias: Tensor | null,
): [Tensor, Tensor | null, Tensor | null] {
  const present = [x, weight, bias].filter((t): t is Tensor => t !== null);
  const cast = autocastInputs(NORM_POLICY[op], present);
  let k = 1;
  return [cast[0], weight ? cast[k++] : null, bias ? cast[k++] : null];
}

/**
 * RMS normalisation over the last dimension: `x / sqrt(mean(x^2) + eps) * weight`, in fused
 * kernels (the mean in f32, the result rounded once to the inputs' dtype). Under autocast the
 * inputs are cast to f32 (policy `rmsNorm`).
 *
 * @example
 * ```ts
 * import { rmsNorm, tensor } from "../mod.ts";
 * const y = rmsNorm(tensor([[3, 4]]));
 * console.log(Array.from(await y.toArray()).map((v) => v.toFixed(3))); // ["0.849", "1.131"]
 * ```
 */
export function rmsNorm(x: Tensor, weight: Tensor | null = null, eps = 1e-6): Tensor {
  [x, weight] = castParams("rmsNorm", x, weight, null);
  return rmsNormLast(x, weight, eps);
}

/**
 * Dropout: in training, zeroes each element with probability `p` and scales the rest by
 * 1/(1-p); the identity otherwise. Random numbers come from the default stream (`manualSeed`).
 *
 * @example
 * ```ts
 * import { dropout, ones } from "../mod.ts";
 * const y = await dropout(ones([1000]), 0.5, true).toArray();
 * console.log(y.every((v) => v === 0 || v === 2)); // true
 * ```
 */
export function dropout(x: Tensor, p = 0.5, training = true): Tensor {
  if (!(p >= 0 && p < 1)) throw new ValueError(`dropout(): p must be in [0, 1), got ${p}`);
  if (!training || p === 0) return x;
  const r = rand(x.shape as number[]);
  const keepMask = r.ge(p);
  r.dispose(); // the mask (kept for where's backward) is all that is needed
  return where(keepMask, x.mul(1 / (1 - p)), 0);
}

/**
 * Mean cross-entropy of `logits` [N, C] (or [..., C]) against integer class `targets` [N]
 * (or [...]), in fused kernels: the per-row logsumexp in f32, the mean over the rows whose
 * target is not `ignoreIndex` (counted on the GPU), and a fused backward pass
 * `(softmax - onehot) * g / count`. The loss has the logits' dtype; under autocast the logits
 * are cast to f32 (policy `crossEntropy`). When every target is ignored the loss is 0
 * (PyTorch gives NaN). A target outside [0, C) that is not ignored is clamped to the nearest
 * class: validate targets on the host when they may be out of range.
 *
 * @example
 * ```ts
 * import { crossEntropy, tensor } from "../mod.ts";
 * const loss = crossEntropy(tensor([[0, 0], [0, 0]]), tensor(new Int32Array([0, 1])));
 * console.log((await loss.item()).toFixed(4)); // "0.6931"
 * ```
 */
export function crossEntropy(
  logits: Tensor,
  targets: Tensor,
  opts: { ignoreIndex?: number } = {},
): Tensor {
  if (targets.dt.kind !== "int") {
    throw new DTypeError(
      `crossEntropy(): targets must be an integer tensor (i32/u32), got ${targets.dtype}`,
    );
  }
  const c = logits.shape[logits.ndim - 1];
  const n = c === 0 ? 0 : logits.size / c;
  if (
    logits.ndim < 1 || targets.size !== n || logits.ndim !== targets.ndim + 1 ||
    targets.shape.some((v, i) => v !== logits.shape[i])
  ) {
    throw new ShapeError(
      `crossEntropy(): logits ${fmtShape(logits.shape)} need targets of shape ${
        fmtShape(logits.shape.slice(0, -1))
      }, ` +
        `got ${fmtShape(targets.shape)}`,
    );
  }
  [logits] = autocastInputs(LOSS_POLICY.crossEntropy, [logits]);
  const z = logits.ndim === 2 ? logits : logits.reshape([n, c]);
  const t = targets.ndim === 1 ? targets : targets.reshape([n]);
  return crossEntropyLast(z, t, opts);
}

/**
 * Mean squared error.
 *
 * @example
 * ```ts
 * import { mseLoss, tensor } from "../mod.ts";
 * console.log(await mseLoss(tensor([1, 2]), tensor([1, 4])).item()); // 2
 * ```
 */
export function mseLoss(input: Tensor, target: Tensor): Tensor {
  [input, target] = autocastInputs(LOSS_POLICY.mseLoss, [input, target]);
  const d = input.sub(target);
  return d.mul(d).mean();
}
