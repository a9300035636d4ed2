/**
 * Matrix products (placeholder being replaced in this change).
 * @module
 */
import type { Tensor } from "./tensor.ts";
import { UlpError } from "../errors.ts";
/** Matmul. */
export function matmul(_a: Tensor, _b: Tensor): Tensor {
  throw new UlpError("matmul(): not implemented yet");
}
