/**
 * Shape ops (placeholder being replaced in this change).
 * @module
 */
import type { Tensor } from "./tensor.ts";
import { UlpError } from "../errors.ts";
const todo = (op: string): never => {
  throw new UlpError(`${op}(): not implemented yet`);
};
/** Reshape. */
export function reshape(_x: Tensor, _shape: readonly number[]): Tensor {
  return todo("reshape");
}
/** Transpose. */
export function transpose(_x: Tensor, _d0 = -2, _d1 = -1): Tensor {
  return todo("transpose");
}
/** Permute. */
export function permute(_x: Tensor, _dims: readonly number[]): Tensor {
  return todo("permute");
}
/** Slice. */
export function slice(_x: Tensor, _ranges: readonly (readonly [number, number] | null)[]): Tensor {
  return todo("slice");
}
/** Concat. */
export function concat(_xs: readonly Tensor[], _axis = 0): Tensor {
  return todo("concat");
}
/** indexSelect. */
export function indexSelect(_x: Tensor, _axis: number, _index: Tensor): Tensor {
  return todo("indexSelect");
}
/** gather. */
export function gather(_x: Tensor, _axis: number, _index: Tensor): Tensor {
  return todo("gather");
}
