/**
 * Optimizers as data: an `UpdateRule` declares everything an optimizer's step needs, and the
 * machinery (`optimizer.ts`, `_update_kernel.ts`) does the rest by name.
 *
 * A rule declares
 *
 * - its compile-time `flags` of a group (amsgrad, momentum, ...): one program per distinct set;
 * - its per-element `states` under those flags (`expAvg`, `momentumBuffer`): each parameter
 *   gets its own tensors, in the dtypes the precision strategy gives;
 * - its named f32 `hyper`parameters, each computed from the group (`lr`, `w1 = 1 - beta1`):
 *   the kernel reads them by name, and the machinery packs them into uniforms by name;
 * - its `perStep` values from the hyperparameters and the update number t (Adam's bias
 *   corrections): ONE definition, written against `StepMath`, evaluated on the host in f64
 *   while step counts live there, or emitted as WGSL computed in f32 on the device once they
 *   live there (under a GradScaler, where a skipped step must not advance t);
 * - its f32 WGSL `body` (see `UpdateBodyContext`), which a precision strategy may replace
 *   (Collage's MCF bodies, keyed by the rule's `name`). A strategy that replaces the bodies
 *   of some optimizers but has none for this rule is an error when the optimizer is built.
 *
 * @example
 * ```ts
 * import { Optimizer, type ParamGroup, tensor } from "../mod.ts";
 * import type { UpdateRule } from "./rule.ts";
 * // sign descent: p -= lr * sign(g), one f32 hyperparameter, no state
 * const SIGN: UpdateRule<ParamGroup> = {
 *   name: "signsgd",
 *   label: "SignSGD",
 *   flags: () => ({}),
 *   states: () => [],
 *   hyper: { lr: (g) => g.lr },
 *   perStep: () => ({}),
 *   body: () => "  y.param = q_param(x.param - lr * sign(x.grad));\n  y.intended = -lr * sign(x.grad);",
 *   savesStep: false,
 *   validate: () => {},
 * };
 * const w = tensor([1, 2]);
 * const opt = new Optimizer(SIGN, [w], { lr: 0.5 });
 * w.grad = tensor([3, -1]);
 * opt.step();
 * console.log(Array.from(await w.toArray())); // [0.5, 2.5]
 * ```
 * @module
 */

import type { DType } from "../dtypes/mod.ts";

/**
 * One per-element buffer of an update: its name (a WGSL identifier) and dtype.
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
  /** The update rules (by `UpdateRule.name`) that keep this buffer (default: all). */
  readonly optimizers?: readonly string[];
}

/**
 * What an update body may use. The body is WGSL statements inside
 * `fn update(x: St, ps: Ps) -> St` that assign the new values to `y.<name>` (y starts as a
 * copy of x). In scope: `x.param`, `x.grad` and `x.<state>` decoded to f32; the rule's
 * hyperparameters by name (`lr`, `beta2`, ...); its per-step values by name (`stepSize`,
 * `bc2Sqrt`, ...); `q_<name>(v)` which rounds v to the dtype `<name>` is stored in (once:
 * store what q_ returns; stochastically, with the element's random bits, for the buffers a
 * strategy lists in `stochastic`); `u.one`, a uniform 1.0 that keeps the shader compiler from
 * reassociating error-free transforms (DESIGN.md's numerics pitfalls); `ulp_isnan(v)`,
 * `ulp_max(a, b)` (NaN-propagating) and `ulp_nan()`. For the diagnostics a body assigns
 * `y.intended`, the intended update of the parameter in f32 (new value minus old, before any
 * rounding to storage); the effective one is read from the stored values.
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
 * The arithmetic a rule's per-step values are written in, so that one definition runs on
 * the host (numbers, f64) and on the device (WGSL expressions, f32).
 *
 * @example
 * ```ts
 * import { hostStepMath } from "./rule.ts";
 * const m = hostStepMath(3);
 * console.log(m.sub(m.num(1), m.powT(0.5))); // 0.875
 * ```
 */
export interface StepMath<N> {
  /** The update number t of the parameter (1-based), as a number. */
  readonly t: N;
  /** A constant. */
  num(v: number): N;
  /** a + b. */
  add(a: N, b: N): N;
  /** a - b. */
  sub(a: N, b: N): N;
  /** a * b. */
  mul(a: N, b: N): N;
  /** a / b. */
  div(a: N, b: N): N;
  /** The square root. */
  sqrt(a: N): N;
  /** b^t (on the device by repeated squaring in f32, as PyTorch's capturable Adam). */
  powT(b: N): N;
  /** 1 on a parameter's first update (t = 1), else 0. */
  first(): N;
}

/**
 * A rule's per-step values from its hyperparameters `h` (by name) and the step arithmetic.
 *
 * @example
 * ```ts
 * import { hostStepMath, type PerStep } from "./rule.ts";
 * const bc: PerStep = (h, m) => ({ stepSize: m.div(h.lr, m.sub(m.num(1), m.powT(h.beta1))) });
 * console.log(bc({ lr: 0.1, beta1: 0.5 }, hostStepMath(1)).stepSize); // 0.2
 * ```
 */
export type PerStep = <N>(
  h: Readonly<Record<string, N>>,
  m: StepMath<N>,
) => Record<string, N>;

/**
 * One named hyperparameter of a rule: its value for a parameter group (declared with method
 * syntax, so an optimizer of a derived group type is still an `Optimizer`).
 *
 * @example
 * ```ts
 * import type { HyperParameter } from "./rule.ts";
 * const w1: HyperParameter<{ betas: [number, number] }> = (g) => 1 - g.betas[0];
 * console.log(w1({ betas: [0.9, 0.999] }).toFixed(2)); // 0.10
 * ```
 */
export type HyperParameter<G> = { value(g: G): number }["value"];

/**
 * An optimizer as data (see the module doc): what `Optimizer` needs to update parameters of
 * groups `G` with one kernel per parameter tensor.
 *
 * @example
 * ```ts
 * import { AdamW, zeros } from "../mod.ts";
 * const opt = new AdamW([zeros([2])]);
 * console.log(opt.rule.name, Object.keys(opt.rule.hyper).slice(0, 3)); // adamw ["lr", "decay", "w1"]
 * ```
 */
export interface UpdateRule<G> {
  /** The key of strategies' replacement bodies and of `StateSpec.optimizers` (`adamw`). */
  readonly name: string;
  /** The optimizer's name in errors (`AdamW`). */
  readonly label: string;
  /** Compile-time switches of a group: the program is built once per distinct set. */
  flags(g: G): Readonly<Record<string, boolean>>;
  /** The rule's own per-element states under `flags` (dtypes: the strategy's `stateDtype`). */
  states(flags: Readonly<Record<string, boolean>>): readonly string[];
  /** Named f32 hyperparameters (WGSL identifiers), each from the group. */
  readonly hyper: Readonly<Record<string, HyperParameter<G>>>;
  /** Per-step values (WGSL identifiers) from the hyperparameters and t. */
  readonly perStep: PerStep;
  /** The f32 update body under `flags` (WGSL statements, see `UpdateBodyContext`). */
  body(flags: Readonly<Record<string, boolean>>): string;
  /** Whether the state dict holds `step` per parameter (AdamW: yes; SGD: no). */
  readonly savesStep: boolean;
  /** States saved as null when `flags` keep no buffer for them (SGD without momentum). */
  nullStates?(flags: Readonly<Record<string, boolean>>): readonly string[];
  /**
   * Validates a group's hyperparameters, throwing a `ValueError` that names the option;
   * `custom` names the precision strategy whose replacement body will run (for options it
   * cannot honour), null when the rule's own body runs.
   */
  validate(g: G, where: string, custom: string | null): void;
}

/**
 * The host `StepMath` at update `t`: f64 arithmetic, `powT(b) = b ** t`.
 *
 * @example
 * ```ts
 * import { hostStepMath } from "./rule.ts";
 * console.log(hostStepMath(2).powT(0.9)); // 0.81
 * ```
 */
export function hostStepMath(t: number): StepMath<number> {
  return {
    t,
    num: (v) => v,
    add: (a, b) => a + b,
    sub: (a, b) => a - b,
    mul: (a, b) => a * b,
    div: (a, b) => a / b,
    sqrt: Math.sqrt,
    powT: (b) => b ** t,
    first: () => (t === 1 ? 1 : 0),
  };
}

/** A WGSL f32 literal of `v` (exact: the bits of fround(v) unless it is an integer). */
function wgslNum(v: number): string {
  const f = Math.fround(v);
  if (Number.isInteger(f) && Math.abs(f) < 2 ** 24) return `${f}.0`;
  const bits = new Uint32Array(new Float32Array([f]).buffer)[0];
  return `bitcast<f32>(${bits}u)`;
}

/**
 * The device `StepMath`: WGSL f32 expressions of the u32 variable `t` (`ulp_powu` must be
 * in scope, as the update kernel defines it).
 *
 * @example
 * ```ts
 * import { wgslStepMath } from "./rule.ts";
 * const m = wgslStepMath();
 * console.log(m.sub(m.num(1), m.powT("beta1"))); // (1.0 - ulp_powu(beta1, t))
 * ```
 */
export function wgslStepMath(): StepMath<string> {
  return {
    t: "f32(t)",
    num: wgslNum,
    add: (a, b) => `(${a} + ${b})`,
    sub: (a, b) => `(${a} - ${b})`,
    mul: (a, b) => `(${a} * ${b})`,
    div: (a, b) => `(${a} / ${b})`,
    sqrt: (a) => `sqrt(${a})`,
    powT: (b) => `ulp_powu(${b}, t)`,
    first: () => "select(0.0, 1.0, t == 1u)",
  };
}
