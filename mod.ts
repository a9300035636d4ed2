/**
 * ulp: a WebGPU tensor framework for low-precision training, where every number format is
 * a first-class dtype.
 *
 * Importing ulp touches no GPU and prints nothing. Ops record GPU work synchronously, so a
 * script acquires the device once, asynchronously, with `await ready()` before its first
 * tensor (an op before that throws a `DeviceError` that says so). Dtypes and their codecs
 * work on the host without a device.
 *
 * The exports, grouped: tensors and ops; autograd; nn (modules, layers, GPT, losses);
 * optimizers, precision strategies and mixed precision (`autocast`, `GradScaler`, FP8);
 * dtypes; files (safetensors, checkpoints); the device and the errors. The folders' own
 * `mod.ts` files (`tensor/mod.ts`, `gpu/mod.ts`, ...) also export the internals that ulp's
 * examples, tests and kernels use (the runtime, kernel binding, layouts, WGSL codecs); they
 * may change between versions.
 *
 * @example
 * ```ts
 * import { dtype, finfo, ready, tensor } from "./mod.ts";
 * const bf16 = dtype("bf16"); // host-only: no device needed
 * console.log(Array.from(bf16.decode(bf16.encode(new Float32Array([1 / 3]))))); // [0.333984375]
 * console.log(finfo("e4m3").max); // 448
 * await ready(); // acquires the GPU (Mesa's software drivers are enough)
 * const x = tensor([[1, 2], [3, 4]], { dtype: "bf16" });
 * console.log(await x.matmul(x).sum().item()); // 54
 * ```
 * @module
 */

// ---- tensors and ops ----------------------------------------------------------------------
export { isTensor, type Operand, Tensor } from "./tensor/core/tensor.ts";
export {
  arange,
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
} from "./tensor/ops/creation.ts";
export { cast, type CastMethods } from "./tensor/ops/cast.ts";
export {
  abs,
  add,
  type BinaryOp,
  broadcastShapes,
  div,
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
} from "./tensor/ops/elementwise.ts";
export {
  argmax,
  logSoftmax,
  logsumexp,
  max,
  mean,
  min,
  type ReduceMethods,
  softmax,
  sum,
} from "./tensor/ops/reduce.ts";
export {
  matmul,
  type MatmulMethods,
  type MatmulOptions,
  type MatmulShapeClass,
  type MatmulTuning,
  type Tiles,
  tuneMatmul,
} from "./tensor/ops/matmul.ts";
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
} from "./tensor/ops/shape_ops.ts";
export {
  type AttentionOptions,
  causalSelfAttention,
  scaledDotProductAttention,
} from "./tensor/ops/attention.ts";
export { keep, tidy } from "./tensor/core/scope.ts";
export { setLeakWarning } from "./tensor/core/_leaks.ts";
export { setFusion } from "./tensor/kernels/fusion.ts";

// ---- autograd -----------------------------------------------------------------------------
export { type BackwardOptions } from "./autograd/backward.ts";
export { type GradModeGuard, isGradEnabled, noGrad } from "./autograd/graph.ts";

// ---- nn ---------------------------------------------------------------------------------------
export { Module, Parameter, type StateDict } from "./nn/module.ts";
export {
  Dropout,
  Embedding,
  GELU,
  LayerNorm,
  type LayerOptions,
  Linear,
  RMSNorm,
} from "./nn/layers.ts";
export { crossEntropy, dropout, layerNorm, linear, mseLoss, rmsNorm } from "./nn/functional.ts";
export {
  Block,
  type BlockConfig,
  CausalSelfAttention,
  GPT,
  GPT_PRESETS,
  type GPTConfig,
  type GPTOutput,
  LMHead,
  MLP,
} from "./nn/gpt.ts";
export { sharpness, type SharpnessOptions } from "./nn/sharpness.ts";
export {
  type ExportOptions,
  exportPretrained,
  fromPretrained,
  pretrainedConfig,
  type PretrainedOptimizer,
  type PretrainedOptions,
} from "./nn/pretrained.ts";
export {
  type FirstNonFinite,
  type FormatStats,
  HEATMAP_STATS,
  inspect,
  type InspectFormat,
  inspectHeatmap,
  inspectJsonl,
  type InspectOptions,
  Inspector,
  type InspectRecord,
  type TensorStats,
  type UpdateLoss,
} from "./nn/inspect.ts";

// ---- optimizers, precision strategies, mixed precision ------------------------------------
export {
  type Diagnostics,
  Optimizer,
  type OptimizerStateDict,
  type ParamGroup,
  type ParamGroupInput,
  type Params,
  type ParamState,
  type StepOptions,
} from "./optim/optimizer.ts";
export { SGD, type SGDOptions, type SGDParamGroup } from "./optim/sgd.ts";
export { AdamW, type AdamWOptions, type AdamWParamGroup } from "./optim/adamw.ts";
export { clipGradNorm } from "./optim/clip.ts";
export {
  cosineWithWarmup,
  CosineWithWarmupLR,
  type CosineWithWarmupOptions,
  LambdaLR,
  LRScheduler,
  type LRSchedulerState,
} from "./optim/schedule.ts";
export {
  applyPrecision,
  precisionNames,
  type PrecisionStrategy,
  precisionStrategy,
  type StateSpec,
  type UpdateBody,
  type UpdateBodyContext,
} from "./optim/precision.ts";
export { type HyperParameter, type PerStep, type StepMath, type UpdateRule } from "./optim/rule.ts";
export {
  autocast,
  AUTOCAST_POLICY,
  type AutocastGuard,
  type AutocastOptions,
  type CastPolicy,
} from "./tensor/amp/autocast.ts";
export {
  GradScaler,
  type GradScalerOptions,
  type GradScalerState,
  type GradScalerStatus,
} from "./optim/grad_scaler.ts";
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
} from "./tensor/amp/fp8.ts";
export {
  blockQuantize,
  type BlockQuantized,
  type BlockQuantizeOptions,
  NVFP4_BLOCK,
  nvfp4Quantize,
  type NVFP4Quantized,
  type NVFP4QuantizeOptions,
} from "./tensor/amp/block_scaling.ts";
export { MX_BLOCK, mxQuantize, type MXQuantizeOptions } from "./tensor/amp/mx.ts";

// ---- dtypes -------------------------------------------------------------------------------
export {
  bf16x2,
  bfloat16,
  boolean,
  type DType,
  dtype,
  DTYPE_FORMS,
  type DTypeKind,
  type DTypeLike,
  e4m3,
  e5m2,
  float16,
  float32,
  int32,
  isFloat,
  promoteTypes,
  uint32,
} from "./dtypes/dtype.ts";
export {
  type CodeArray,
  type EncodeOptions,
  type FloatFormat,
  type FormatConstants,
  type NanStyle,
  type Rounding,
} from "./dtypes/codec.ts";
export { type FInfo, finfo, type IInfo, iinfo } from "./dtypes/finfo.ts";

// ---- files: safetensors and checkpoints ---------------------------------------------------
export {
  deserialize,
  type Loaded,
  loadFile,
  type LoadOptions,
  MAX_HEADER_BYTES,
  saveFile,
  type SaveOptions,
  serialize,
  writeAtomic,
} from "./nn/safetensors.ts";
export {
  type CheckpointInfo,
  type CheckpointOptions,
  type CheckpointTargets,
  loadCheckpoint,
  type LoadCheckpointOptions,
  readCheckpoint,
  type RngState,
  saveCheckpoint,
  type Stateful,
  type TensorRecord,
} from "./nn/checkpoint.ts";

// ---- device and errors --------------------------------------------------------------------
export {
  configureDevice,
  deviceInfo,
  type DeviceOptions,
  disposeDevice,
  memory,
  type Profile,
  profile,
  type ProfileEntry,
  ready,
  resetDevice,
  sync,
} from "./gpu/device.ts";
export { type DeviceInfo, type DispatchTime, type MemoryInfo } from "./gpu/runtime.ts";
export {
  DEFAULT_MEMORY_LIMIT,
  getMemoryLimit,
  type MemoryLimit,
  type Purpose,
  setMemoryLimit,
} from "./gpu/pool.ts";
export {
  DeviceError,
  DTypeError,
  FormatError,
  ShapeError,
  UlpError,
  ValueError,
} from "./errors.ts";
