/**
 * Epsilon-sharpness of the last token's logits (Keskar et al., "On Large-Batch Training for
 * Deep Learning: Generalization Gap and Sharp Minima", ICLR 2017), in the closed form that
 * Lee et al. use to watch training in simulated low-precision formats ("To FP8 and Back
 * Again: Quantifying Reduced Precision Effects on LLM Training Stability", 2025).
 *
 * For logits z and target y, the cross-entropy CE(z) = logsumexp(z) - z_y grows with every
 * z_j (j != y) and shrinks with z_y, so over the box |delta_j| <= eps (|z_j| + 1) its maximum
 * lies at the corner
 *
 *   z*_j = z_j + eps (|z_j| + 1)  (j != y),   z*_y = z_y - eps (|z_y| + 1),
 *
 * and the sharpness is phi = 100 (CE(z*) - CE(z)) / (1 + CE(z)).
 *
 * The difference is not computed as CE(z*) - CE(z) (two close numbers in f32). With
 * e_j = eps (|z_j| + 1) and p = softmax(z), the identity sum_j p_j = 1 gives
 *
 *   CE(z*) - CE(z) = log1p( sum_{j != y} p_j expm1(e_j + e_y) ),
 *
 * a sum of non-negative terms, evaluated with short series for small arguments, so the
 * result keeps f32's relative accuracy even when the model is confident (p_y near 1).
 *
 * @module
 */

import { DTypeError, ShapeError, ValueError } from "../errors.ts";
import { isFloat } from "../dtypes/mod.ts";
import { noGrad } from "../autograd/mod.ts";
import { arange, fmtShape, type Tensor, tidy, where } from "../tensor/mod.ts";

/** Options of {@linkcode sharpness}. */
export interface SharpnessOptions {
  /** Relative size of the box, eps in |delta_j| <= eps (|z_j| + 1) (default 1e-3). */
  eps?: number;
  /**
   * How the per-sequence values are combined: `"mean"` (default) or `"max"` over the batch
   * give a scalar tensor; `"none"` gives one value per sequence, shape (B).
   */
  reduction?: "mean" | "max" | "none";
}

/** Below this argument, `expm1` and `log1p` use their series (error < 3e-9 relative). */
const SERIES_BELOW = 0.05;

/** Horner: c0 + x (c1 + x (c2 + ...)). */
function poly(x: Tensor, coeffs: readonly number[]): Tensor {
  let acc = x.mul(coeffs[coeffs.length - 1]).add(coeffs[coeffs.length - 2]);
  for (let k = coeffs.length - 3; k >= 0; k--) acc = acc.mul(x).add(coeffs[k]);
  return acc;
}

/** exp(x) - 1 for x >= 0, accurate for small x. */
function expm1(x: Tensor): Tensor {
  const series = x.mul(poly(x, [1, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720]));
  return where(x.lt(SERIES_BELOW), series, x.exp().sub(1));
}

/** log(1 + x) for x >= 0, accurate for small x. */
function log1p(x: Tensor): Tensor {
  const series = x.mul(poly(x, [1, -1 / 2, 1 / 3, -1 / 4, 1 / 5, -1 / 6]));
  return where(x.lt(SERIES_BELOW), series, x.add(1).log());
}

/**
 * The epsilon-sharpness of the last token's logits: for each sequence, with z its last
 * logits and y its last target, `phi = 100 (CE(z*) - CE(z)) / (1 + CE(z))` where z* is the
 * corner of the box |delta_j| <= eps (|z_j| + 1) that maximises the cross-entropy (DESIGN.md,
 * "Simulated formats and training stability"). Logits are (B, T, V) — the last position of
 * each sequence is used, with targets (B, T) — or already (B, V) with targets (B).
 *
 * Computed on the device in f32 from any float logits dtype, without gradients and without
 * a readback: the result is a Tensor (a scalar for `reduction` `"mean"`, the default, or
 * `"max"`; shape (B) for `"none"`). Targets must lie in [0, V).
 *
 * @example
 * ```ts
 * import { sharpness, tensor } from "../mod.ts";
 * const logits = tensor([[2, 0, -1], [0, 0, 0]]); // (B = 2, V = 3)
 * const targets = tensor(new Int32Array([0, 1]));
 * const phi = sharpness(logits, targets); // mean over the batch, a scalar tensor
 * console.log(phi.shape, (await phi.item()).toFixed(4)); // [] "0.0603"
 * ```
 */
export function sharpness(
  logits: Tensor,
  targets: Tensor,
  opts: SharpnessOptions = {},
): Tensor {
  const eps = opts.eps ?? 1e-3;
  const reduction = opts.reduction ?? "mean";
  if (!(Number.isFinite(eps) && eps > 0)) {
    throw new ValueError(`sharpness(): eps must be a finite number > 0, got ${eps}`);
  }
  if (!["mean", "max", "none"].includes(reduction)) {
    throw new ValueError(
      `sharpness(): reduction must be "mean", "max" or "none", got ${JSON.stringify(reduction)}`,
    );
  }
  if (!isFloat(logits.dt)) {
    throw new DTypeError(`sharpness(): logits must be a float tensor, got ${logits.dtype}`);
  }
  if (targets.dt.kind !== "int") {
    throw new DTypeError(
      `sharpness(): targets must be an integer tensor (i32/u32), got ${targets.dtype}`,
    );
  }
  const nd = logits.ndim;
  const fits = (nd === 2 || nd === 3) && targets.ndim === nd - 1 &&
    targets.shape.every((v, i) => v === logits.shape[i]) && logits.shape[nd - 1] > 0 &&
    logits.shape[nd - 2] > 0;
  if (!fits) {
    throw new ShapeError(
      `sharpness(): logits ${fmtShape(logits.shape)} and targets ${fmtShape(targets.shape)} ` +
        `do not fit: pass logits (B, T, V) with targets (B, T), or the last token's logits ` +
        `(B, V) with targets (B), with B, T and V > 0`,
    );
  }
  const B = logits.shape[0], V = logits.shape[nd - 1];
  return noGrad(() =>
    tidy(() => {
      let z = logits, y = targets;
      if (nd === 3) {
        const T = logits.shape[1];
        z = z.slice([null, [T - 1, T], null]);
        y = y.slice([null, [T - 1, T]]);
      }
      z = z.reshape([B, V]).cast("f32"); // (B, V)
      y = y.reshape([B, 1]); // (B, 1)
      const zy = z.gather(1, y); // (B, 1)
      const ey = zy.abs().add(1).mul(eps); // (B, 1)
      const ej = z.abs().add(1).mul(eps); // (B, V)
      const isTarget = arange(V).eq(y); // (B, V)
      const terms = where(isTarget, 0, z.softmax(-1).mul(expm1(ej.add(ey)))); // (B, V)
      const rise = log1p(terms.sum(-1)); // (B): CE(z*) - CE(z)
      const ce = z.logsumexp(-1).sub(zy.reshape([B])); // (B)
      const phi = rise.mul(100).div(ce.add(1)); // (B)
      return reduction === "none" ? phi : reduction === "max" ? phi.max() : phi.mean();
    })
  );
}
