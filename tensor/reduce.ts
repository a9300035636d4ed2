/**
 * Reductions (placeholder being replaced in this change).
 * @module
 */
import type { Tensor } from "./tensor.ts";
import { UlpError } from "../errors.ts";

const todo = (op: string): never => {
  throw new UlpError(`${op}(): not implemented yet`);
};
/** Sum. */
export function sum(_x: Tensor, _axis?: number | readonly number[], _keepDims = false): Tensor {
  return todo("sum");
}
/** Mean. */
export function mean(_x: Tensor, _axis?: number | readonly number[], _keepDims = false): Tensor {
  return todo("mean");
}
/** Max. */
export function max(_x: Tensor, _axis?: number | readonly number[], _keepDims = false): Tensor {
  return todo("max");
}
/** Min. */
export function min(_x: Tensor, _axis?: number | readonly number[], _keepDims = false): Tensor {
  return todo("min");
}
/** Argmax. */
export function argmax(_x: Tensor, _axis?: number, _keepDims = false): Tensor {
  return todo("argmax");
}
/** Logsumexp. */
export function logsumexp(
  _x: Tensor,
  _axis: number | readonly number[] = -1,
  _keepDims = false,
): Tensor {
  return todo("logsumexp");
}
/** Softmax. */
export function softmax(_x: Tensor, _axis = -1): Tensor {
  return todo("softmax");
}
/** LogSoftmax. */
export function logSoftmax(_x: Tensor, _axis = -1): Tensor {
  return todo("logSoftmax");
}
/** Sums a broadcast gradient back to `shape`; returns `g` itself when the shapes match. */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.length === shape.length && g.shape.every((v, i) => v === shape[i])) return g;
  return todo("sumTo");
}
