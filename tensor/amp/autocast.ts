/**
 * Automatic mixed precision, as `torch.autocast`: inside a context, each op runs in the
 * dtype its policy names: lower precision for matmul-like ops, f32 for ops that need range
 * or accuracy, the widest input dtype for the rest. One flat table holds the policy.
 * Casts of parameters are cached for the context (one forward), so a weight used by
 * several ops is cast once. Gradients flow back through the casts in the dtype of the
 * tensor that was cast.
 *
 * GEMM inputs, forward and backward: a context rounds the inputs of every matmul to its
 * dtype with its rounding (`rne`, `truncate`, `stochastic`), the gradient that comes into
 * the backward GEMMs included, so a simulated format such as `e8m3` or `e5m6` applies to
 * both passes (as PyTorch's autocast, where a GEMM's gradient has the dtype of its output).
 * Fewer exponent bits clip the range as the format's descriptor says (Inf beyond its
 * largest value, or its largest value for saturating formats). `dtype: "fp8"` (or a
 * `recipe`) quantises the GEMM inputs with an FP8 recipe instead (`fp8.ts`: e4m3 forward,
 * e5m2 gradients, per-tensor or MX scaling) and runs the context's other low-precision ops
 * in the recipe's `outDtype` (bf16). `matmul()` asks `autocastGemm()` for this hook.
 *
 * Reference: Lee et al., "To FP8 and Back Again: Quantifying Reduced Precision Effects on
 * LLM Training Stability" (2024), for simulated formats on the inputs of every GEMM.
 *
 * @module
 */

import { type DType, dtype, type DTypeLike, isFloat, type Rounding } from "../../dtypes/mod.ts";
import { DTypeError, ValueError } from "../../errors.ts";
import type { Tensor } from "../core/tensor.ts";
import { cast } from "../ops/elementwise.ts";
import {
  defaultFP8Recipe,
  FP8_RECIPES,
  FP8Recipe,
  type FP8RecipeName,
  namedFP8Recipe,
} from "./fp8.ts";

/** What autocast does with an op's float inputs. */
export type CastPolicy = "lower" | "f32" | "widest";

/**
 * The per-op policy (PyTorch's lists): matmul-like ops run in the autocast dtype; ops that
 * need range or accuracy (softmax, norms, exp/log/pow, reductions, losses) in f32; every
 * other op in the widest input dtype (ordinary promotion).
 */
export const AUTOCAST_POLICY: Readonly<Record<string, CastPolicy>> = Object.freeze({
  matmul: "lower",
  linear: "lower",
  bmm: "lower",
  attention: "lower",
  softmax: "f32",
  logSoftmax: "f32",
  logsumexp: "f32",
  layerNorm: "f32",
  rmsNorm: "f32",
  exp: "f32",
  log: "f32",
  pow: "f32",
  rsqrt: "f32",
  sum: "f32",
  mean: "f32",
  crossEntropy: "f32",
  mseLoss: "f32",
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
export interface AutocastState {
  /** The lower dtype (an FP8 recipe's `outDtype` in an `fp8` context). */
  readonly dtype: DType;
  /** Rounding of the casts into it. */
  readonly rounding: Rounding;
  /** Seed of stochastic casts. */
  readonly seed: number;
  /** The FP8 recipe that quantises GEMM inputs, or null. */
  readonly fp8: FP8Recipe | null;
}

/**
 * A GEMM operand as autocast's hook prepared it: the tensor to multiply and its per-tensor
 * scale (a one-element f32 tensor: the GEMM result is multiplied by 1 / (scale_a scale_b)),
 * or null. @internal
 */
export interface GemmOperand {
  /** The operand (the input itself, a rounded copy, FP8 codes or MX-dequantised values). */
  readonly t: Tensor;
  /** Its per-tensor scale, or null. */
  readonly scale: Tensor | null;
}

/**
 * How one matmul's inputs are prepared under autocast, forward and backward. `rows`, `cols`
 * are the operand's stored matrix sizes; `along` is the stored axis the GEMM reduces over.
 * @internal
 */
export interface GemmSite {
  /** Whether preparing an operand does not depend on the axis (the backward reuses them). */
  readonly perTensor: boolean;
  /** A forward operand (`a`, `b`), already cast to the context's dtype. */
  operand(
    which: "a" | "b",
    t: Tensor,
    rows: number,
    cols: number,
    along: "rows" | "cols",
  ): GemmOperand;
  /** The gradient coming into the backward GEMMs. */
  grad(g: Tensor, rows: number, cols: number, along: "rows" | "cols"): GemmOperand;
}

const stack: (AutocastState | null)[] = [];
/** Cast cache of the outermost context: tensor id -> cast, per target dtype. */
let cache = new Map<string, { dispose(): void; disposed: boolean }>();
/** The leaf each cached cast was made from (how a GEMM recognises a weight behind its cast). */
const sources = new WeakMap<object, { id: number; requiresGrad: boolean; node: unknown }>();

/** The innermost active autocast state, or null when autocast is off. */
export function autocastState(): AutocastState | null {
  return stack.length === 0 ? null : stack[stack.length - 1];
}

/** The dtype `op` should compute in under the current context, or null to leave it as is. */
export function autocastTarget(op: string): DType | null {
  const s = autocastState();
  if (!s) return null;
  const p = AUTOCAST_POLICY[op];
  if (p === "lower") return s.dtype;
  if (p === "f32") return dtype("f32");
  return null;
}

/** A cached cast of a leaf (a parameter) for the current context. @internal */
export function cachedCast<T extends { id: number; disposed: boolean; dispose(): void }>(
  t: T,
  target: DType,
  make: () => T,
): T {
  const key = `${t.id}:${target.name}`;
  const hit = cache.get(key) as T | undefined;
  if (hit && !hit.disposed) return hit;
  const c = make();
  cache.set(key, c);
  sources.set(c, t as unknown as { id: number; requiresGrad: boolean; node: unknown });
  return c;
}

/** The id of the parameter (a leaf that requires grad) `t` is, or is a cached cast of. */
function paramId(t: Tensor): number | null {
  const src = sources.get(t) ?? t;
  return src.node === null && src.requiresGrad ? src.id : null;
}

/**
 * The GEMM hook of the current context for a matmul of `a` and `b` (as given, before their
 * casts), or null without a context: an FP8 recipe's quantiser, or else the rounding of
 * the incoming gradient to the context's dtype (the forward operands are cast by
 * `autocastInputs`). @internal
 */
export function autocastGemm(a: Tensor, b: Tensor): GemmSite | null {
  const s = autocastState();
  if (s === null) return null;
  if (s.fp8 !== null) return s.fp8.gemmSite(paramId(a), paramId(b));
  return {
    perTensor: true,
    operand: (_w, t) => ({ t, scale: null }),
    grad: (g) => {
      if (g.dt === s.dtype) return { t: g, scale: null };
      const seed = (s.seed + Math.imul(g.id, 0x9e3779b1)) >>> 0;
      return {
        t: cast(g, s.dtype, { rounding: s.rounding, seed }).setPurpose("casts"),
        scale: null,
      };
    },
  };
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
    return { dtype: recipe.outDtype, rounding, seed, fp8: recipe };
  }
  const d = dtype(opts.dtype ?? "bf16");
  if (!isFloat(d) || d.kind === "mcf") {
    throw new DTypeError(
      `autocast(): dtype must be a float format such as bf16, f16, e8m3, or 'fp8', got ${d.name}`,
    );
  }
  return { dtype: d, rounding, seed, fp8: null };
}

function enter(opts: AutocastOptions): AutocastGuard {
  const state = autocastStateOf(opts);
  const depth = stack.length;
  // a recipe's outermost context starts its step: delayed scaling commits the last amaxes
  if (state?.fp8 && !stack.some((s) => s?.fp8 === state.fp8)) state.fp8.beginStep();
  stack.push(state);
  let open = true;
  return {
    [Symbol.dispose]() {
      if (!open) return;
      open = false;
      stack.length = depth;
      // The cached casts stay alive for the backward pass (their owner is the enclosing tidy or
      // the caller); the cache itself ends with the outermost context, as PyTorch's does.
      if (depth === 0) cache = new Map();
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
