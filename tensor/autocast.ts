/**
 * Automatic mixed precision, as `torch.autocast`: inside a context, each op runs in the
 * dtype its policy names: lower precision for matmul-like ops, f32 for ops that need range
 * or accuracy, the widest input dtype for the rest. One flat table holds the policy.
 * Casts of parameters are cached for the context (one forward), so a weight used by
 * several ops is cast once. Gradients flow back through the casts in the dtype of the
 * tensor that was cast.
 *
 * @module
 */

import { type DType, dtype, type DTypeLike, isFloat, type Rounding } from "../dtypes/mod.ts";
import { DTypeError } from "../errors.ts";

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
  /** The lower-precision dtype (`bf16`, `f16`, or any float dtype such as `e8m3`). */
  dtype?: DTypeLike;
  /** Whether the context is active (false turns autocast off inside an outer context). */
  enabled?: boolean;
  /** Rounding of the casts into the lower dtype (default `rne`). */
  rounding?: Rounding;
  /** Seed for stochastic rounding of the casts. */
  seed?: number;
}

/** The state of one active context. */
export interface AutocastState {
  /** The lower dtype. */
  readonly dtype: DType;
  /** Rounding of the casts into it. */
  readonly rounding: Rounding;
  /** Seed of stochastic casts. */
  readonly seed: number;
}

const stack: (AutocastState | null)[] = [];
/** Cast cache of the outermost context: tensor id -> cast, per target dtype. */
let cache = new Map<string, { dispose(): void; disposed: boolean }>();

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
  return c;
}

/** The handle of a context entered with `using _ = autocast(...)`. */
export interface AutocastGuard extends Disposable {
  /** Leaves the context. */
  [Symbol.dispose](): void;
}

function enter(opts: AutocastOptions): AutocastGuard {
  let state: AutocastState | null = null;
  if (opts.enabled !== false) {
    const d = dtype(opts.dtype ?? "bf16");
    if (!isFloat(d) || d.kind === "mcf") {
      throw new DTypeError(
        `autocast(): dtype must be a float format such as bf16, f16 or e8m3, got ${d.name}`,
      );
    }
    state = { dtype: d, rounding: opts.rounding ?? "rne", seed: opts.seed ?? 0 };
  }
  const depth = stack.length;
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
 * turns autocast off inside an outer one.
 *
 * @example
 * ```ts
 * import { autocast, tensor } from "../mod.ts";
 * const a = tensor([[1, 2]]), b = tensor([[3], [4]]);
 * const y = autocast({ dtype: "bf16" }, () => a.matmul(b));
 * console.log(y.dtype); // "bf16"
 * {
 *   using _ = autocast({ dtype: "bf16" });
 *   console.log(a.exp().dtype, a.add(1).dtype); // "f32" "f32"
 * }
 * ```
 */
export function autocast(opts?: AutocastOptions): AutocastGuard;
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
