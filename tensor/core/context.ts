/**
 * The state of autocast contexts, as the layers below `amp/` need it: the stack of active
 * contexts, the dtype an op of a given policy computes in, the per-context cache of
 * parameter casts, and the GEMM precision hook `matmul` consults. `amp/autocast.ts` builds
 * and enters contexts (`autocast()`); ops read them through this file only.
 *
 * @module
 */

import { type DType, float32, type Rounding } from "../../dtypes/mod.ts";
import type { Tensor } from "./tensor.ts";

/**
 * What autocast does with an op's float inputs: `lower` casts them to the context's dtype
 * (GEMM-like ops), `f32` to f32 (ops that need range or accuracy), `widest` leaves them
 * (ordinary promotion).
 */
export type CastPolicy = "lower" | "f32" | "widest";

/**
 * A GEMM operand as a context's GEMM precision prepared it: the tensor to multiply and its
 * per-tensor scale (a one-element f32 tensor: the GEMM result is multiplied by
 * 1 / (scale_a scale_b)), or null. @internal
 */
export interface GemmOperand {
  /** The operand (the input itself, a rounded copy, FP8 codes or MX-dequantised values). */
  readonly t: Tensor;
  /** Its per-tensor scale, or null. */
  readonly scale: Tensor | null;
}

/**
 * How one matmul's inputs are prepared under a context, forward and backward. `rows`, `cols`
 * are the operand's stored matrix sizes; `along` is the stored axis the GEMM reduces over.
 * @internal
 */
export interface GemmSite {
  /** Whether preparing an operand does not depend on the axis (the backward reuses them). */
  readonly perTensor: boolean;
  /** The dtype of the GEMM's result, or null for the promotion of its (prepared) inputs. */
  readonly outDtype: DType | null;
  /**
   * The forward inputs as the autograd graph sees them: casts to the context's dtype (the
   * gradient flows back through them), or the inputs themselves when the operands are
   * quantised from them directly.
   */
  inputs(a: Tensor, b: Tensor): [Tensor, Tensor];
  /** A forward operand (`a`, `b`, as `inputs` returned it) quantised or rounded for the GEMM. */
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

/**
 * The precision of every GEMM in a context, in one object: the forward cast of the inputs,
 * the rounding of the gradient that comes into the backward GEMMs, and any quantisation
 * (FP8 recipes, MX, simulated formats). `matmul` asks it for a site per call. @internal
 */
export interface GemmPrecision {
  /** The site of one matmul of `a` and `b`, the operands as the caller gave them. */
  site(a: Tensor, b: Tensor): GemmSite;
  /** Called when an outermost context with this precision is entered (a step begins). */
  beginStep?(): void;
}

/** The state of one active context, as ops see it. */
export interface ContextState {
  /** The lower dtype (an FP8 recipe's `outDtype` in an `fp8` context). */
  readonly dtype: DType;
  /** Rounding of the casts into it. */
  readonly rounding: Rounding;
  /** Seed of stochastic casts. */
  readonly seed: number;
  /** The GEMM precision of the context. */
  readonly gemm: GemmPrecision;
}

const stack: (ContextState | null)[] = [];
/** Cast cache of the outermost context: tensor id -> cast, per target dtype. */
let cache = new Map<string, { dispose(): void; disposed: boolean }>();

/** The innermost active context, or null when autocast is off. @internal */
export function contextState(): ContextState | null {
  return stack.length === 0 ? null : stack[stack.length - 1];
}

/** Whether a context with this GEMM precision is active. @internal */
export function contextActive(gemm: GemmPrecision): boolean {
  return stack.some((s) => s?.gemm === gemm);
}

/**
 * Pushes a context (null: autocast disabled inside it) and returns what pops it; the cast
 * cache ends with the outermost context, as PyTorch's does. @internal
 */
export function pushContext(state: ContextState | null): () => void {
  const depth = stack.length;
  stack.push(state);
  return () => {
    stack.length = depth;
    // The cached casts stay alive for the backward pass (their owner is the enclosing tidy or
    // the caller); the cache itself ends with the outermost context.
    if (depth === 0) cache = new Map();
  };
}

/** The dtype an op of `policy` computes in under the current context, or null to leave it. */
export function policyTarget(policy: CastPolicy): DType | null {
  const s = contextState();
  if (!s) return null;
  if (policy === "lower") return s.dtype;
  if (policy === "f32") return float32;
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
