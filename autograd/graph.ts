/**
 * The autograd graph: grad mode (`noGrad`) and the recording of op nodes. Ops call
 * `attach()` after computing their output; it records a node only when grad mode is on and
 * some input requires a gradient.
 *
 * Reference: micrograd and PyTorch's autograd (reverse mode over the recorded graph).
 *
 * @module
 */

/** What the graph needs of a tensor (the Tensor class satisfies it). */
export interface GraphTensor {
  requiresGrad: boolean;
  node: {
    readonly op: string;
    readonly inputs: readonly GraphTensor[];
    readonly backward: (grad: never) => unknown[];
  } | null;
}

let gradDepth = 0; // > 0 inside noGrad

/**
 * Whether ops record the autograd graph now.
 *
 * @example
 * ```ts
 * import { isGradEnabled, noGrad } from "./graph.ts";
 * console.log(isGradEnabled(), noGrad(() => isGradEnabled())); // true false
 * ```
 */
export function isGradEnabled(): boolean {
  return gradDepth === 0;
}

/** The handle `noGrad()` returns: disposing it turns grad mode back on. */
export interface GradModeGuard extends Disposable {
  /** Ends the no-grad region (what `using` calls). */
  [Symbol.dispose](): void;
}

/**
 * Turns graph recording off: `noGrad(fn)` runs `fn` without it; `using _ = noGrad()` turns
 * it off until the end of the block.
 *
 * @example
 * ```ts
 * import { isGradEnabled, noGrad } from "./graph.ts";
 * {
 *   using _ = noGrad();
 *   console.log(isGradEnabled()); // false
 * }
 * console.log(isGradEnabled()); // true
 * ```
 */
export function noGrad(): GradModeGuard;
/**
 * Runs `fn` with graph recording off and returns its result.
 *
 * @example
 * ```ts
 * import { isGradEnabled, noGrad } from "./graph.ts";
 * console.log(noGrad(() => isGradEnabled())); // false
 * ```
 */
export function noGrad<T>(fn: () => T): T;
export function noGrad<T>(fn?: () => T): T | GradModeGuard {
  gradDepth++;
  if (fn === undefined) {
    let done = false;
    return {
      [Symbol.dispose]() {
        if (!done) {
          done = true;
          gradDepth--;
        }
      },
    };
  }
  try {
    return fn();
  } finally {
    gradDepth--;
  }
}

/**
 * Records `out` as made by `op` from `inputs` when grad mode is on and an input requires a
 * gradient. `backward` maps the output's gradient to one gradient per input (null for none).
 *
 * @example
 * ```ts
 * import { attach } from "./graph.ts";
 * const a = { requiresGrad: true, node: null }, out = { requiresGrad: false, node: null };
 * attach(out, "identity", [a], (g) => [g]);
 * console.log(out.requiresGrad, out.node !== null); // true true
 * ```
 */
export function attach<T extends GraphTensor>(
  out: T,
  op: string,
  inputs: readonly T[],
  backward: (grad: T) => (T | null)[],
): T {
  if (gradDepth === 0 && inputs.some((t) => t.requiresGrad)) {
    out.requiresGrad = true;
    out.node = { op, inputs, backward: backward as (g: never) => unknown[] };
  }
  return out;
}
