/**
 * Precision strategies of the optimizers: which dtype the parameters, the gradients and
 * each optimizer state are stored in, and (for strategies whose arithmetic differs from
 * "compute in f32, round each stored value once") the WGSL of the update itself.
 *
 * The optimizers never name a dtype themselves: their multi-tensor kernel reads every
 * buffer through the decoder of its dtype and writes through the encoder, so a strategy is
 * a table row. Implemented now (DESIGN.md section 4):
 *
 * | name   | params | grads | states (m, v, momentum) |
 * |--------|--------|-------|-------------------------|
 * | `fp32` | f32    | f32   | f32                     |
 * | `bf16` | bf16   | bf16  | bf16 (pure bf16)        |
 *
 * **Extension point** (for `amp-bf16`, `amp-f16`, `collage-light`, `collage-plus`): add a
 * row to `STRATEGIES` below. A row names the dtypes; `extraStates` adds per-element buffers
 * that the optimizer allocates, zero-initialises, passes to the kernel and saves in its
 * state dict (Collage's low parts `paramLo`, `expAvgSqLo`); `updates.adamw` / `updates.sgd`
 * replace the kernel body (the MCF arithmetic of Collage). `amp-*` are `fp32` rows (f32
 * master weights; the casts happen in `autocast`) plus the GradScaler's `found_inf` skip.
 *
 * @module
 */

import { bfloat16, type DType, float32 } from "../dtypes/mod.ts";
import { ValueError } from "../errors.ts";

/**
 * One per-element buffer of the multi-tensor kernel: its name (a WGSL identifier) and dtype.
 *
 * @example
 * ```ts
 * import { bfloat16, type StateSpec } from "../mod.ts";
 * const lo: StateSpec = { name: "paramLo", dtype: bfloat16 }; // Collage's low part of the weights
 * console.log(lo.dtype.name); // bf16
 * ```
 */
export interface StateSpec {
  /** Name in the kernel (`x.<name>`) and in the state dict (`expAvg`, `paramLo`, ...). */
  readonly name: string;
  /** Storage dtype. */
  readonly dtype: DType;
}

/**
 * What an update body may use. The body is WGSL statements inside
 * `fn update(x: St, kv: vec4<f32>) -> St` that assign the new values to `y.<name>` (y starts
 * as a copy of x). In scope: `x.param`, `x.grad` and `x.<state>` decoded to f32; the
 * optimizer's hyperparameters by name (`lr`, `beta2`, ...); the per-step values by name
 * (`stepSize`, `bc2Sqrt`, ...); `q_<name>(v)` which rounds v to the dtype `<name>` is stored
 * in (once: store what q_ returns); `u.one`, a uniform 1.0 that keeps the shader compiler
 * from reassociating error-free transforms (DESIGN.md's numerics pitfalls); `ulp_isnan(v)`,
 * `ulp_max(a, b)` (NaN-propagating) and `ulp_nan()`.
 *
 * @example
 * ```ts
 * import { precisionStrategy, type UpdateBodyContext } from "../mod.ts";
 * const s = precisionStrategy("bf16");
 * const ctx: UpdateBodyContext = {
 *   flags: { amsgrad: false },
 *   buffers: [{ name: "param", dtype: s.param }, { name: "grad", dtype: s.grad }],
 * };
 * console.log(ctx.buffers.map((b) => b.name)); // ["param", "grad"]
 * ```
 */
export interface UpdateBodyContext {
  /** Compile-time flags of the optimizer (amsgrad, maximize, nesterov, momentum, ...). */
  readonly flags: Readonly<Record<string, boolean>>;
  /** The buffers bound, in order (param, grad, states, extra states). */
  readonly buffers: readonly StateSpec[];
}

/**
 * A replacement update body for one optimizer: WGSL statements (see `UpdateBodyContext`),
 * what a strategy's `updates.adamw` or `updates.sgd` gives.
 *
 * @example
 * ```ts
 * import type { UpdateBody } from "../mod.ts";
 * // plain SGD written as a body: the new parameter, rounded once to its dtype
 * const body: UpdateBody = () => "  y.param = q_param(x.param - lr * x.grad);";
 * console.log(body({ flags: {}, buffers: [] }).includes("q_param")); // true
 * ```
 */
export type UpdateBody = (ctx: UpdateBodyContext) => string;

/**
 * A precision strategy: the dtypes of parameters, gradients and optimizer states, extra
 * per-element buffers, and optional replacement kernel bodies.
 *
 * @example
 * ```ts
 * import { precisionStrategy } from "../mod.ts";
 * const s = precisionStrategy("bf16");
 * console.log(s.param.name, s.grad.name, s.stateDtype("expAvgSq").name); // bf16 bf16 bf16
 * ```
 */
export interface PrecisionStrategy {
  /** The name users pass as `precision`. */
  readonly name: string;
  /** One line for docs and errors. */
  readonly description: string;
  /** Dtype the model's parameters must have. */
  readonly param: DType;
  /** Dtype gradients are read in (a gradient of another dtype is cast first, one dispatch). */
  readonly grad: DType;
  /** Dtype of an optimizer state by name (`expAvg`, `expAvgSq`, `maxExpAvgSq`, `momentumBuffer`). */
  stateDtype(state: string): DType;
  /** Per-element buffers kept besides the optimizer's own states (zero-initialised). */
  readonly extraStates: readonly StateSpec[];
  /** Replacement update bodies by optimizer (`adamw`, `sgd`); default: the f32 body. */
  readonly updates: Readonly<Partial<Record<"adamw" | "sgd", UpdateBody>>>;
}

function uniform(name: string, description: string, d: DType): PrecisionStrategy {
  return Object.freeze({
    name,
    description,
    param: d,
    grad: d,
    stateDtype: () => d,
    extraStates: [],
    updates: {},
  });
}

/** The registered strategies, by name. Add a row here to add a strategy. */
const STRATEGIES: Record<string, PrecisionStrategy> = {
  fp32: uniform("fp32", "f32 parameters, gradients and optimizer states", float32),
  bf16: uniform(
    "bf16",
    "pure bf16: parameters, gradients and states in bf16, arithmetic in f32, each stored value " +
      "rounded once (RNE)",
    bfloat16,
  ),
};

/**
 * The names of the precision strategies the optimizers accept.
 *
 * @example
 * ```ts
 * import { precisionNames } from "../mod.ts";
 * console.log(precisionNames()); // ["fp32", "bf16"]
 * ```
 */
export function precisionNames(): string[] {
  return Object.keys(STRATEGIES);
}

/**
 * The strategy named `name`; a ValueError that lists the supported names otherwise.
 *
 * @example
 * ```ts
 * import { precisionStrategy } from "../mod.ts";
 * console.log(precisionStrategy("fp32").stateDtype("expAvg").name); // f32
 * try { precisionStrategy("fp64"); } catch (e) { console.log((e as Error).name); } // ValueError
 * ```
 */
export function precisionStrategy(name: string, op = "optimizer"): PrecisionStrategy {
  const s = Object.hasOwn(STRATEGIES, name) ? STRATEGIES[name] : undefined;
  if (s === undefined) {
    throw new ValueError(
      `${op}: unknown precision '${String(name)}'; supported: ${
        precisionNames().map((n) => `'${n}'`).join(", ")
      }`,
    );
  }
  return s;
}
