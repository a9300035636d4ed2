/**
 * The GPU runtime: one lazily acquired WebGPU device per process, a buffer pool with size
 * classes, a pipeline cache keyed by WGSL source, command batching into a shared compute
 * pass, async readback and memory statistics.
 *
 * @example
 * ```ts
 * import { getRuntime, memory } from "./mod.ts";
 * const rt = await getRuntime();
 * const buf = rt.alloc(16, { dtype: "u32", purpose: "scratch" });
 * rt.write(buf, new Uint32Array([1, 2, 3, 4]));
 * const k = rt.kernel("double", `
 *   @group(0) @binding(0) var<storage, read_write> x: array<u32>;
 *   @compute @workgroup_size(4) fn main(@builtin(global_invocation_id) g: vec3u) { x[g.x] = x[g.x] * 2u; }
 * `, { buffers: ["read_write"], uniform: false });
 * rt.dispatch(k, [buf], [1]);
 * console.log(Array.from(new Uint32Array(await rt.read(buf)))); // [2, 4, 6, 8]
 * rt.free(buf);
 * console.log(memory().liveBytes); // 0
 * ```
 * @module
 */

export {
  configureDevice,
  currentRuntime,
  deviceInfo,
  type DeviceOptions,
  disposeDevice,
  getRuntime,
  memory,
  onNewDevice,
  type Profile,
  profile,
  type ProfileEntry,
  ready,
  resetDevice,
  sync,
} from "./device.ts";
export {
  type Binding,
  bufferOf,
  type BufferWindow,
  type DeviceInfo,
  type DispatchTime,
  type Kernel,
  type KernelSignature,
  type MemoryInfo,
  Runtime,
  type RuntimeCounters,
  type ScratchFormat,
  type TextureAccess,
  UNIFORM_SLOT,
} from "./runtime.ts";
export {
  type BufferTag,
  DEFAULT_MEMORY_LIMIT,
  getMemoryLimit,
  type MemoryLimit,
  type PooledBuffer,
  type Purpose,
  setMemoryLimit,
  sizeClass,
} from "./pool.ts";
export { type Layout, layoutOf, storageBytes } from "./layout.ts";
export {
  type BindingSpec,
  type Box,
  type Program,
  program,
  type ProgramBody,
  type ProgramSpec,
  type RawType,
  RUN_QUADS,
  RUN_WG,
  type RunArgs,
  runLayout,
  runProgram,
  setRunLayout,
  setStaging,
  STAGE_WIDTH,
  stageable,
  type StridedDim,
  stridedRange,
  textureReads,
  type TextureSpec,
  type UniformSpec,
  type UniformType,
  WGSL_MATH,
} from "./program.ts";
