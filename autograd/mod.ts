/**
 * Autograd: grad mode (`noGrad`) and graph recording. The backward traversal arrives with
 * the autograd issue.
 *
 * @example
 * ```ts
 * import { isGradEnabled, noGrad } from "./mod.ts";
 * console.log(noGrad(() => isGradEnabled())); // false
 * ```
 * @module
 */
export { attach, type GradModeGuard, type GraphTensor, isGradEnabled, noGrad } from "./graph.ts";
