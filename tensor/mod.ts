/**
 * Tensors on the GPU: creation, elementwise ops with broadcasting, reductions, matmul, shape
 * ops and casts between any dtypes, plus memory ownership (`dispose`, `using`, `tidy`).
 *
 * @example
 * ```ts
 * import { randn, tensor, tidy } from "../mod.ts";
 * const w = randn([4, 3], { seed: 1, dtype: "bf16" });
 * const y = tidy(() => tensor([[1, 2, 3, 4]]).matmul(w).relu().sum());
 * console.log(y.shape, typeof (await y.item())); // [] "number"
 * ```
 * @module
 */

export { fmtShape, type GradNode, isTensor, type Operand, Tensor } from "./core/tensor.ts";
export {
  arange,
  checkShape,
  type CreateOptions,
  fromCodes,
  full,
  getRngState,
  manualSeed,
  type NestedNumbers,
  ones,
  rand,
  randn,
  type RandomOptions,
  setRngState,
  tensor,
  tensorBytes,
  zeros,
} from "./ops/creation.ts";
export { autocastInputs, cast, type CastMethods } from "./ops/cast.ts";
export {
  abs,
  add,
  type BinaryOp,
  broadcastShapes,
  div,
  ELEMENTWISE_POLICY,
  type ElementwiseMethods,
  eq,
  exp,
  ge,
  gelu,
  gt,
  le,
  log,
  lt,
  maximum,
  minimum,
  mul,
  ne,
  neg,
  pow,
  relu,
  rsqrt,
  sigmoid,
  softplus,
  sqrt,
  square,
  sub,
  tanh,
  type UnaryOp,
  where,
} from "./ops/elementwise.ts";
export { setFusion } from "./kernels/fusion.ts";
export {
  argmax,
  logSoftmax,
  logsumexp,
  max,
  mean,
  min,
  REDUCE_POLICY,
  type ReduceMethods,
  softmax,
  sum,
  sumTo,
} from "./ops/reduce.ts";
export { layerNormLast, NORM_POLICY, rmsNormLast } from "./ops/norm.ts";
export { crossEntropyLast, LOSS_POLICY } from "./ops/loss.ts";
export { checkIds, ID_OPS, idFlag, WGSL_BAD_ID } from "./core/_id_check.ts";
export {
  matmul,
  type MatmulMethods,
  type MatmulOptions,
  type MatmulShapeClass,
  type MatmulTuning,
  type Tiles,
  tuneMatmul,
} from "./ops/matmul.ts";
export {
  concat,
  expand,
  flatten,
  gather,
  indexSelect,
  permute,
  reshape,
  type ShapeMethods,
  slice,
  squeeze,
  transpose,
  unsqueeze,
} from "./ops/shape_ops.ts";
export { keep, tidy } from "./core/scope.ts";
export { setLeakWarning } from "./core/_leaks.ts";
export {
  autocast,
  AUTOCAST_POLICY,
  type AutocastGuard,
  type AutocastOptions,
  type AutocastState,
  autocastState,
  autocastStateOf,
  autocastTarget,
  type CastPolicy,
} from "./amp/autocast.ts";
export {
  type AmaxComputeAlgo,
  defaultFP8Recipe,
  FP8_BLOCK,
  FP8_RECIPES,
  type FP8Format,
  FP8Recipe,
  fp8Recipe,
  type FP8RecipeName,
  type FP8RecipeOptions,
  type FP8Scaling,
  type FP8StateDict,
  type FP8Tensor,
  namedFP8Recipe,
} from "./amp/fp8.ts";
export {
  blockQuantize,
  type BlockQuantized,
  type BlockQuantizeOptions,
  NVFP4_BLOCK,
  nvfp4Quantize,
  type NVFP4Quantized,
  type NVFP4QuantizeOptions,
} from "./amp/block_scaling.ts";
export { MX_BLOCK, mxElementDtype, mxEmax, mxQuantize, type MXQuantizeOptions } from "./amp/mx.ts";
export {
  type AttentionOptions,
  causalSelfAttention,
  fusedAttentionFits,
  MAX_HEAD_SIZE,
  scaledDotProductAttention,
} from "./ops/attention.ts";
