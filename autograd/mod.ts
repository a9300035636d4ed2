/**
 * Autograd: grad mode (`noGrad`), graph recording by the ops, and the reverse-mode traversal
 * behind `Tensor.backward()`.
 *
 * @example
 * ```ts
 * import { isGradEnabled, noGrad } from "./mod.ts";
 * console.log(noGrad(() => isGradEnabled())); // false
 * ```
 * @module
 */
export {
  type BackwardOptions,
  type BackwardTensor,
  type GradOps,
  runBackward,
} from "./backward.ts";
export { attach, type GradModeGuard, type GraphTensor, isGradEnabled, noGrad } from "./graph.ts";
