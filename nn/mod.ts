/**
 * Neural-network building blocks: `Module`, `Parameter`, layers, a nanoGPT-style `GPT`,
 * functional forms and safetensors I/O.
 *
 * @example
 * ```ts
 * import { GPT, tensor, tidy } from "../mod.ts";
 * const model = new GPT({ vocabSize: 10, blockSize: 4, nLayer: 1, nHead: 1, nEmbd: 8, seed: 1 });
 * const idx = tensor(new Int32Array([1, 2, 3]), { shape: [1, 3] });
 * const loss = tidy(() => model.forward(idx, idx).loss!);
 * console.log((await loss.item()) > 0); // true
 * ```
 * @module
 */

export { Module, Parameter, type StateDict } from "./module.ts";
export {
  Dropout,
  Embedding,
  GELU,
  LayerNorm,
  type LayerOptions,
  Linear,
  RMSNorm,
} from "./layers.ts";
export { crossEntropy, dropout, layerNorm, linear, mseLoss, rmsNorm } from "./functional.ts";
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
} from "./gpt.ts";
export {
  type ExportOptions,
  exportPretrained,
  fromPretrained,
  pretrainedConfig,
  type PretrainedOptimizer,
  type PretrainedOptions,
} from "./pretrained.ts";
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
} from "./safetensors.ts";
export { sharpness, type SharpnessOptions } from "./sharpness.ts";
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
} from "./checkpoint.ts";
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
} from "./inspect.ts";
