/**
 * Casts between dtypes, and the one place autocast's per-op policy is applied to an op's
 * inputs (`autocastInputs`): every op that consults autocast passes its policy here.
 *
 * @module
 */

import {
  type DType,
  dtype as toDType,
  type DTypeLike,
  float32,
  isFloat,
  type Rounding,
} from "../../dtypes/mod.ts";
import { ValueError } from "../../errors.ts";
import { attach } from "../../autograd/graph.ts";
import { launch } from "../kernels/fusion.ts";
import { installMethods, type Operand, Tensor } from "../core/tensor.ts";
import { cachedCast, type CastPolicy, contextState, policyTarget } from "../core/context.ts";

/**
 * Converts a tensor to `dt`, rounding once (RNE, stochastic with a seed, or truncation),
 * saturating on request. The gradient flows back cast to the input's dtype.
 *
 * @example
 * ```ts
 * import { tensor } from "../../mod.ts";
 * const x = tensor([0.1, 1000]);
 * console.log(Array.from(await x.cast("e4m3", { saturate: true }).toArray())); // [0.1015625, 448]
 * ```
 */
export function cast(
  x: Tensor,
  dt: DType,
  opts: { rounding?: Rounding; seed?: number; saturate?: boolean } = {},
): Tensor {
  if (!(x instanceof Tensor)) throw new ValueError("cast(): expects a tensor");
  if (opts.seed !== undefined && !Number.isInteger(opts.seed)) {
    throw new ValueError(`cast(): seed must be an integer, got ${opts.seed}`);
  }
  const out = launch("cast", [x], ([a]) => a, dt, opts);
  return attach(out, "cast", [x], (g) => [g.dt === x.dt ? g : cast(g, x.dt)]);
}

/**
 * The inputs of an op of autocast policy `policy` as the current context wants them: cast
 * to the policy's dtype (the context's lower dtype, or f32; a `lower` cast rounds with the
 * context's rounding), parameters through the per-context cache. Without a context, or for
 * the `widest` policy, the inputs unchanged. @internal
 */
export function autocastInputs<T extends Operand>(policy: CastPolicy, inputs: readonly T[]): T[] {
  const target = policyTarget(policy);
  if (target === null) return [...inputs];
  const lowering = policy === "lower";
  return inputs.map((o) => {
    if (!(o instanceof Tensor) || !isFloat(o.dt) || o.dt === target) return o;
    if (!lowering && o.dt === float32) return o;
    return castForContext(o, target, lowering ? contextState() : null) as T;
  });
}

/**
 * `t` cast to `target` for an autocast context: with `lowering` = the context's rounding and
 * seed, rounded as it says (a stochastic cast seeded from the seed and the tensor's id), else
 * RNE; counted as "casts" in `memory()`; cached for the current context when `t` is a
 * parameter (a leaf that requires grad). @internal
 */
export function castForContext(
  t: Tensor,
  target: DType,
  lowering: { readonly rounding: Rounding; readonly seed: number } | null,
): Tensor {
  const make = () =>
    cast(
      t,
      target,
      lowering
        ? { rounding: lowering.rounding, seed: (lowering.seed + Math.imul(t.id, 0x9e3779b1)) >>> 0 }
        : {},
    ).setPurpose("casts"); // transient
  return t.node === null && t.requiresGrad ? cachedCast(t, target, make) : make();
}

const methods: CastMethods & ThisType<Tensor> = {
  /** Converts to another dtype, rounding as asked (RNE by default). */
  cast(
    this: Tensor,
    dtype: DTypeLike,
    opts: { rounding?: Rounding; seed?: number; saturate?: boolean } = {},
  ): Tensor {
    return cast(this, toDType(dtype), opts);
  },
};
/** The cast method of `Tensor`: `t.cast("bf16")`, `t.cast("e4m3", { saturate: true })`. */
export interface CastMethods {
  /** Converts to another dtype, rounding as asked (RNE by default). */
  cast(dtype: DTypeLike, opts?: { rounding?: Rounding; seed?: number; saturate?: boolean }): Tensor;
}

installMethods(methods, "ops/cast.ts");
