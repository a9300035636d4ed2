/**
 * Automatic mixed precision, as `torch.autocast`: inside a context, each op runs in the
 * dtype its policy names: lower precision for matmul-like ops, f32 for ops that need range
 * or accuracy, the widest input dtype for the rest. Each op declares its policy where it is
 * defined; `AUTOCAST_POLICY` gathers them. Casts of parameters are cached for the context (one forward), so a weight used by
 * several ops is cast once. Gradients flow back through the casts in the dtype of the
 * tensor that was cast.
 *
 * GEMM inputs, forward and backward, are one object per context, its GEMM precision
 * (`GemmPrecision` in `../core/context.ts`), which `matmul()` consults: a context rounds the
 * inputs of every matmul to its
 * dtype with its rounding (`rne`, `truncate`, `stochastic`), the gradient that comes into
 * the backward GEMMs included, so a simulated format such as `e8m3` or `e5m6` applies to
 * both passes (as PyTorch's autocast, where a GEMM's gradient has the dtype of its output).
 * Fewer exponent bits clip the range as the format's descriptor says (Inf beyond its
 * largest value, or its largest value for saturating formats). `dtype: "fp8"` (or a
 * `recipe`) quantises the GEMM inputs with an FP8 recipe instead (`fp8.ts`: e4m3 forward,
 * e5m2 gradients, per-tensor, block or MX scaling), each operand once from the tensor matmul
 * was given, and runs the context's other low-precision ops in the recipe's `outDtype` (bf16).
 *
 * Reference: Lee et al., "To FP8 and Back Again: Quantifying Reduced Precision Effects on
 * LLM Training Stability" (2024), for simulated formats on the inputs of every GEMM.
 *
 * @module
 */

import { type DType, dtype, type DTypeLike, isFloat, type Rounding } from "../../dtypes/mod.ts";
import { DTypeError, ValueError } from "../../errors.ts";
import type { Tensor } from "../core/tensor.ts";
import {
  type CastPolicy,
  contextActive,
  type ContextState,
  contextState,
  type GemmPrecision,
  type GemmSite,
  policyTarget,
  pushContext,
} from "../core/context.ts";
import { autocastInputs, castForContext } from "../ops/cast.ts";
import { ELEMENTWISE_POLICY } from "../ops/elementwise.ts";
import { REDUCE_POLICY } from "../ops/reduce.ts";
import { ATTENTION_POLICY } from "../ops/attention.ts";
import { NORM_POLICY } from "../ops/norm.ts";
import { LOSS_POLICY } from "../ops/loss.ts";
import {
  defaultFP8Recipe,
  FP8_RECIPES,
  FP8Recipe,
  type FP8RecipeName,
  namedFP8Recipe,
} from "./fp8.ts";

export type { CastPolicy };

/** The policy of a GEMM's inputs under autocast: the context's lower dtype. */
const GEMM_POLICY: CastPolicy = "lower";

/**
 * The per-op policy (PyTorch's lists), as each op's definition declares it: GEMM-like ops
 * (matmul, linear, attention) run in the autocast dtype; ops that need range or accuracy
 * (softmax, norms, exp/log/pow/rsqrt, reductions, losses) in f32; every other op in the
 * widest input dtype (ordinary promotion). This table gathers the rows for reading; the ops
 * consult their own.
 *
 * @example
 * ```ts
 * import { AUTOCAST_POLICY } from "../../mod.ts";
 * console.log(AUTOCAST_POLICY.matmul, AUTOCAST_POLICY.softmax, AUTOCAST_POLICY.add); // lower f32 widest
 * ```
 */
export const AUTOCAST_POLICY: Readonly<Record<string, CastPolicy>> = Object.freeze({
  matmul: GEMM_POLICY,
  linear: GEMM_POLICY,
  ...ATTENTION_POLICY,
  ...ELEMENTWISE_POLICY,
  ...REDUCE_POLICY,
  ...NORM_POLICY,
  ...LOSS_POLICY,
});

/** Options of an autocast context. */
export interface AutocastOptions {
  /**
   * The lower-precision dtype (`bf16`, `f16`, or any float dtype such as `e8m3`), or `fp8`:
   * GEMM inputs quantised by an FP8 recipe (`recipe`, default `defaultFP8Recipe()`).
   */
  dtype?: DTypeLike;
  /** Whether the context is active (false turns autocast off inside an outer context). */
  enabled?: boolean;
  /** Rounding of the casts into the lower dtype (default `rne`). */
  rounding?: Rounding;
  /** Seed for stochastic rounding of the casts. */
  seed?: number;
  /**
   * The FP8 recipe of an `fp8` context (giving one implies `dtype: "fp8"`), or a recipe's
   * name (`"block"`, `"nvfp4"`, ...: `namedFP8Recipe(name)`, one recipe per name).
   */
  recipe?: FP8Recipe | FP8RecipeName;
}

/** The state of one active context. */
export interface AutocastState extends ContextState {
  /** The FP8 recipe that quantises GEMM inputs, or null. */
  readonly fp8: FP8Recipe | null;
}

/**
 * The GEMM precision of a context with a float dtype: the inputs cast to it with the
 * context's rounding (parameters once per context), the incoming gradient rounded to it.
 */
class RoundedGemm implements GemmPrecision {
  constructor(readonly dtype: DType, readonly rounding: Rounding, readonly seed: number) {}
  site(): GemmSite {
    return {
      perTensor: true,
      outDtype: null,
      inputs: (a, b) => autocastInputs(GEMM_POLICY, [a, b]) as [Tensor, Tensor],
      operand: (_w, t) => ({ t, scale: null }),
      grad: (g) => ({
        t: g.dt === this.dtype ? g : castForContext(g, this.dtype, this),
        scale: null,
      }),
    };
  }
}

/** The innermost active autocast state, or null when autocast is off. */
export function autocastState(): AutocastState | null {
  return contextState() as AutocastState | null; // every context is entered by autocast()
}

/** The dtype an op of policy `policy` computes in under the current context, or null. */
export function autocastTarget(policy: CastPolicy): DType | null {
  return policyTarget(policy);
}

/** The handle of a context entered with `using _ = autocast(...)`. */
export interface AutocastGuard extends Disposable {
  /** Leaves the context. */
  [Symbol.dispose](): void;
}

/** The state a context with `opts` has (null: disabled); throws on invalid options. @internal */
export function autocastStateOf(opts: AutocastOptions): AutocastState | null {
  if (opts === null || typeof opts !== "object") {
    throw new ValueError(`autocast(): options must be an object such as { dtype: "bf16" }`);
  }
  if (opts.enabled === false) return null;
  const rounding = opts.rounding ?? "rne";
  if (rounding !== "rne" && rounding !== "truncate" && rounding !== "stochastic") {
    throw new ValueError(
      `autocast(): rounding must be 'rne', 'truncate' or 'stochastic', got '${rounding}'`,
    );
  }
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed)) {
    throw new ValueError(`autocast(): seed must be an integer, got ${seed}`);
  }
  if (opts.dtype === "fp8" || opts.recipe !== undefined) {
    if (opts.dtype !== undefined && opts.dtype !== "fp8") {
      throw new DTypeError(
        `autocast(): a recipe goes with dtype 'fp8', got dtype '${
          String(
            typeof opts.dtype === "string" ? opts.dtype : opts.dtype.name,
          )
        }'; drop the recipe or the dtype`,
      );
    }
    const given = opts.recipe;
    if (typeof given === "string" && !FP8_RECIPES.includes(given)) {
      throw new ValueError(
        `autocast(): unknown FP8 recipe '${given}'; use one of ${FP8_RECIPES.join(", ")} or an ` +
          `FP8Recipe`,
      );
    }
    const recipe = typeof given === "string" ? namedFP8Recipe(given) : given ?? defaultFP8Recipe();
    if (!(recipe instanceof FP8Recipe)) {
      throw new ValueError(
        "autocast(): recipe must be an FP8Recipe (new FP8Recipe({...})) or a recipe's name",
      );
    }
    return { dtype: recipe.outDtype, rounding, seed, fp8: recipe, gemm: recipe };
  }
  const d = dtype(opts.dtype ?? "bf16");
  if (!isFloat(d) || d.kind === "mcf") {
    throw new DTypeError(
      `autocast(): dtype must be a float format such as bf16, f16, e8m3, or 'fp8', got ${d.name}`,
    );
  }
  return { dtype: d, rounding, seed, fp8: null, gemm: new RoundedGemm(d, rounding, seed) };
}

function enter(opts: AutocastOptions): AutocastGuard {
  const state = autocastStateOf(opts);
  // a recipe's outermost context starts its step: delayed scaling commits the last amaxes
  if (state !== null && !contextActive(state.gemm)) state.gemm.beginStep?.();
  const pop = pushContext(state);
  let open = true;
  return {
    [Symbol.dispose]() {
      if (!open) return;
      open = false;
      pop();
    },
  };
}

/**
 * Enters an autocast context: `using _ = autocast({ dtype: "bf16" })`, or runs `fn` inside
 * one: `autocast({ dtype: "f16" }, () => model.forward(x))`. Contexts nest; `enabled: false`
 * turns autocast off inside an outer one (a module's own options: `Module.setAutocast`).
 * Any float format works as a simulated one (`{ dtype: "e8m3", rounding: "truncate" }`),
 * applied to the inputs of every GEMM in both passes. `{ dtype: "fp8" }` trains with FP8
 * GEMMs (an `FP8Recipe`; its delayed scaling commits a step's amaxes when a context with
 * the recipe is next entered from outside any other context with it).
 *
 * @example
 * ```ts
 * import { autocast, FP8Recipe, tensor } from "../../mod.ts";
 * const a = tensor([[1, 2]]), b = tensor([[3], [4]]);
 * const y = autocast({ dtype: "bf16" }, () => a.matmul(b));
 * console.log(y.dtype); // "bf16"
 * {
 *   using _ = autocast({ dtype: "bf16" });
 *   console.log(a.exp().dtype, a.add(1).dtype); // "f32" "f32"
 * }
 * // FP8: e4m3 GEMM inputs (a new recipe's scales are 1), f32 accumulation, bf16 output
 * const recipe = new FP8Recipe();
 * const z = autocast({ dtype: "fp8", recipe }, () => tensor([[0.3, 2]]).matmul(b));
 * console.log(z.dtype, await z.item()); // "bf16" 8.9375 (0.3 became the e4m3 value 0.3125)
 * ```
 */
export function autocast(opts?: AutocastOptions): AutocastGuard;
/**
 * Runs `fn` under the autocast context `opts` and returns its result.
 *
 * @example
 * ```ts
 * import { autocast, tensor } from "../../mod.ts";
 * const y = autocast({ dtype: "bf16" }, () => tensor([[1, 2]]).matmul(tensor([[3], [4]])));
 * console.log(y.dtype, await y.item()); // "bf16" 11
 * ```
 */
export function autocast<T>(opts: AutocastOptions, fn: () => T): T;
export function autocast<T>(opts: AutocastOptions = {}, fn?: () => T): T | AutocastGuard {
  const guard = enter(opts);
  if (fn === undefined) return guard;
  try {
    return fn();
  } finally {
    guard[Symbol.dispose]();
  }
}
