/**
 * One adapter and device per process, acquired lazily with the adapter's own limits and the
 * optional features ulp uses (`shader-f16`, `timestamp-query`). Importing ulp touches no GPU
 * and prints nothing; `await ready()` (or any async call that needs the device, such as
 * `loadFile()` or `getRuntime()`) acquires it. Ops record work synchronously, so a script
 * awaits `ready()` once before its first tensor; an op before that throws a `DeviceError`
 * that says so.
 *
 * On Linux, Mesa's Vulkan drivers print `error: XDG_RUNTIME_DIR is invalid or not set in
 * the environment.` (twice) when the adapter is requested without that variable: their
 * device-selection layer looks for a Wayland display. It is harmless; ulp does not set the
 * variable behind your back. Set it to a private folder (`export
 * XDG_RUNTIME_DIR=$(mktemp -d)`), or turn the layer off with `NODEVICE_SELECT=1`.
 *
 * A lost device (or one destroyed by anything but `disposeDevice()`) is reported once with
 * `console.warn`, and a new one is acquired at once, so that the next synchronous op runs on
 * it; tensors made on the old device are gone and using one throws a `DeviceError` that
 * says so. Until the new device is ready, ops throw a `DeviceError` that says to
 * `await ready()`.
 *
 * @module
 */

import { DeviceError } from "../errors.ts";
import { type DeviceInfo, type DispatchTime, type MemoryInfo, Runtime } from "./runtime.ts";

/** Options for acquiring the device. */
export interface DeviceOptions {
  /**
   * How f16 tensors are stored: `auto` (native `array<f16>` when the adapter has
   * `shader-f16`, else packed two per u32), `native` (fail without the feature) or
   * `packed` (never use the feature, to test the packed path on any adapter).
   */
  f16?: "auto" | "native" | "packed";
  /** Passed to `requestAdapter`. */
  powerPreference?: GPUPowerPreference;
}

let current: Runtime | null = null;
let pending: Promise<Runtime> | null = null;
let options: DeviceOptions = {};
let lastError: Error | null = null; // why the last acquisition failed
let lostBefore: string | null = null; // why the previous device was lost, until a new one works

/** A device was lost under `rt`: say so and acquire a new one for the next call. */
function onLost(rt: Runtime, reason: string): void {
  if (current !== rt) return;
  lostBefore = reason;
  console.warn(
    `ulp: the GPU device was lost (${reason}). Tensors made on it are gone: using one throws ` +
      `a DeviceError; recreate them. Acquiring a new device for the next call.`,
  );
  getRuntime().catch(() => {/* kept in lastError; currentRuntime() throws it */});
}

const HOW_TO_GET_ONE =
  "ulp needs a WebGPU adapter. On a machine without a GPU, install Mesa's software " +
  "drivers (Debian/Ubuntu: apt-get install mesa-vulkan-drivers for lavapipe; llvmpipe comes with " +
  "libgl1-mesa-dri) and choose one with DENO_WEBGPU_BACKEND=vulkan or gl.";
/** Mesa's message, explained where a missing adapter is reported (it often comes before). */
const MESA_NOTE = "(A line 'error: XDG_RUNTIME_DIR is invalid or not set in the environment.' " +
  "above comes from Mesa's Vulkan device-selection layer looking for a Wayland display, not " +
  "from ulp; it is harmless. Silence it with export XDG_RUNTIME_DIR=$(mktemp -d), or " +
  "NODEVICE_SELECT=1.)";

async function acquire(opts: DeviceOptions): Promise<Runtime> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new DeviceError(`navigator.gpu is not available in this runtime. ${HOW_TO_GET_ONE}`);
  }
  let adapter: GPUAdapter | null;
  try {
    adapter = await navigator.gpu.requestAdapter({ powerPreference: opts.powerPreference });
  } catch (e) {
    throw new DeviceError(
      `requestAdapter() failed: ${(e as Error).message}. ${HOW_TO_GET_ONE} ${MESA_NOTE}`,
      { cause: e },
    );
  }
  if (!adapter) {
    throw new DeviceError(`No WebGPU adapter was found. ${HOW_TO_GET_ONE} ${MESA_NOTE}`);
  }
  const hasF16 = adapter.features.has("shader-f16");
  const f16Mode = opts.f16 ?? "auto";
  if (f16Mode === "native" && !hasF16) {
    throw new DeviceError(
      `configureDevice({ f16: "native" }): the adapter '${adapter.info.description}' has no ` +
        `shader-f16 feature; use f16: "auto" or "packed" (on Mesa, the vulkan backend has it)`,
    );
  }
  const useF16 = hasF16 && f16Mode !== "packed";
  const features: GPUFeatureName[] = [];
  if (useF16) features.push("shader-f16");
  const timestamp = adapter.features.has("timestamp-query");
  if (timestamp) features.push("timestamp-query");
  const l = adapter.limits;
  const requiredLimits: Record<string, number> = {
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxBufferSize: l.maxBufferSize,
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
    maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
    maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
    maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    maxTextureDimension2D: l.maxTextureDimension2D, // texture family, staged reads: fewer pieces
  };
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ requiredFeatures: features, requiredLimits });
  } catch (e) {
    throw new DeviceError(`requestDevice() failed: ${(e as Error).message}`, { cause: e });
  }
  const info: DeviceInfo = {
    description: adapter.info.description || adapter.info.device || "unknown adapter",
    vendor: adapter.info.vendor,
    architecture: adapter.info.architecture,
    isFallbackAdapter: (adapter.info as { isFallbackAdapter?: boolean }).isFallbackAdapter ?? false,
    shaderF16: useF16,
    timestampQuery: timestamp,
    f16Storage: useF16 ? "native" : "packed",
    limits: {
      maxStorageBufferBindingSize: device.limits.maxStorageBufferBindingSize,
      maxBufferSize: device.limits.maxBufferSize,
      maxComputeWorkgroupStorageSize: device.limits.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: device.limits.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupsPerDimension: device.limits.maxComputeWorkgroupsPerDimension,
      maxStorageBuffersPerShaderStage: device.limits.maxStorageBuffersPerShaderStage,
      minStorageBufferOffsetAlignment: device.limits.minStorageBufferOffsetAlignment,
    },
  };
  return new Runtime(device, info, onLost);
}

/**
 * Sets how the device will be acquired. Takes effect at the next acquisition: call it before
 * `ready()`, or follow it with `resetDevice()`.
 *
 * @example
 * ```ts
 * import { configureDevice, getRuntime, resetDevice } from "./device.ts";
 * configureDevice({ f16: "packed" });
 * await resetDevice();
 * console.log((await getRuntime()).info.f16Storage); // "packed"
 * configureDevice({});
 * await resetDevice();
 * ```
 */
export function configureDevice(opts: DeviceOptions): void {
  options = { ...opts };
}

/**
 * The runtime of the process's device, acquired on the first call. Concurrent first calls
 * share one acquisition. Throws a `DeviceError` that says how to get an adapter when there
 * is none.
 *
 * @example
 * ```ts
 * import { getRuntime } from "./device.ts";
 * const rt = await getRuntime();
 * console.log(typeof rt.info.description, rt.info.limits.maxBufferSize > 0); // "string" true
 * ```
 */
export function getRuntime(): Promise<Runtime> {
  if (current && !current.lost) return Promise.resolve(current);
  if (!pending) {
    pending = acquire(options).then(
      async (rt) => {
        current = rt;
        lastError = null;
        lostBefore = null;
        for (const check of deviceChecks) await check(rt);
        pending = null;
        return rt;
      },
      (e) => {
        pending = null;
        lastError = e;
        throw e;
      },
    );
  }
  return pending;
}

const deviceChecks: ((rt: Runtime) => Promise<void>)[] = [];

/**
 * Registers a check that runs on every new device before `getRuntime()` hands it out: a kernel
 * family that verifies itself on the adapter (the matmul texture family compares its bits with
 * the workgroup-memory kernel's, and stands down where they differ). @internal
 */
export function onNewDevice(check: (rt: Runtime) => Promise<void>): void {
  deviceChecks.push(check);
}

/**
 * The runtime if the device is already acquired, for synchronous code (ops record work
 * synchronously). Throws a `DeviceError` naming `await ready()` otherwise (it acquires
 * nothing itself: that is asynchronous).
 *
 * @example
 * ```ts
 * import { currentRuntime, getRuntime } from "./device.ts";
 * await getRuntime();
 * console.log(currentRuntime().lost); // false
 * ```
 */
export function currentRuntime(): Runtime {
  if (current && !current.lost) return current;
  if (current?.lost) {
    const why = lostBefore ?? current.lostReason ?? "disposed";
    const next = pending
      ? "A new device is being acquired: await ready(), then recreate your tensors."
      : lastError
      ? `Acquiring a new device failed (${lastError.message}).`
      : "Call await ready() (or await resetDevice()) to acquire a new one and recreate your tensors.";
    throw new DeviceError(
      `the GPU device was lost or disposed (${why}); tensors made on it are gone. ${next}`,
    );
  }
  if (lastError) throw lastError;
  throw new DeviceError(
    "no GPU device yet: ulp acquires its WebGPU device lazily (importing ulp touches no GPU) " +
      "and acquiring one is asynchronous, so call await ready() once before the first tensor " +
      "op (import { ready } from ulp's mod.ts; getRuntime() and loadFile() acquire it too)." +
      (pending ? " An acquisition is under way: await ready() waits for it." : ""),
  );
}

/**
 * Destroys the current device (every pooled buffer with it) and acquires a new one with the
 * options of `configureDevice`; returns its facts. Tensors of the old device are gone.
 *
 * @example
 * ```ts
 * import { getRuntime, resetDevice } from "./device.ts";
 * const a = await getRuntime();
 * const info = await resetDevice();
 * console.log(a.lost, (await getRuntime()).info === info); // true true
 * ```
 */
export async function resetDevice(): Promise<DeviceInfo> {
  await disposeDevice();
  return (await getRuntime()).info;
}

/**
 * Destroys the current device and every buffer of its pool. The next use acquires a new one.
 *
 * @example
 * ```ts
 * import { disposeDevice, getRuntime } from "./device.ts";
 * const rt = await getRuntime();
 * await disposeDevice();
 * console.log(rt.lost); // true
 * ```
 */
export async function disposeDevice(): Promise<void> {
  if (pending) await pending.catch(() => {});
  if (current) {
    current.destroy();
    current = null;
  }
  lostBefore = null;
}

/**
 * Waits until the GPU has finished the work recorded so far (acquiring the device if
 * needed). For timing: elementwise ops are deferred until something needs their values, so
 * call `t.realize()` on the result first.
 *
 * @example
 * ```ts
 * import { ready, sync, tensor } from "../mod.ts";
 * await ready();
 * const y = tensor([1, 2]).mul(3).realize();
 * const t0 = performance.now();
 * await sync();
 * console.log(performance.now() - t0 >= 0, y.shape); // true [2]
 * ```
 */
export async function sync(): Promise<void> {
  await (await getRuntime()).sync();
}

/** One kernel label's part of a `profile()`. */
export interface ProfileEntry {
  /** The kernel's label: the op's name (`matmul`, `softmax`, `fused(mul+add)` for a chain). */
  readonly label: string;
  /** How many of its dispatches ran. */
  readonly count: number;
  /** Their GPU time, in milliseconds. */
  readonly ms: number;
  /** Their share of the profile's GPU time (0 to 1). */
  readonly share: number;
}

/** What `profile()` measured. */
export interface Profile {
  /** Every dispatch, in the order it ran, with its GPU start and end (nanoseconds). */
  readonly dispatches: readonly DispatchTime[];
  /** The GPU time of all dispatches, in milliseconds. */
  readonly totalMs: number;
  /** The time per kernel label, largest first. */
  readonly byLabel: readonly ProfileEntry[];
}

/**
 * Runs `fn` and reports the GPU time of every dispatch it records, per kernel label: where a
 * training step's time goes (PyTorch's `torch.profiler` for one device). Each dispatch runs in
 * a compute pass of its own, stamped by the GPU (the `timestamp-query` feature; where the
 * adapter lacks it a `DeviceError` says so), which costs a little time itself: read the shares,
 * not the sum, as what the step costs. Elementwise ops are deferred until their values are
 * needed: `realize()` what `fn` computes last, or the chains behind it run after the profile.
 * Profiles do not nest. `deno run bench/profile_step.ts` prints one of a GPT step.
 *
 * @example
 * ```ts
 * import { deviceInfo, profile, ready, tensor, tidy } from "../mod.ts";
 * await ready();
 * const x = tensor(new Float32Array(64 * 64).fill(0.5), { shape: [64, 64] });
 * if ((await deviceInfo()).timestampQuery) {
 *   const p = await profile(() => tidy(() => x.matmul(x).softmax(-1).realize()).dispose());
 *   for (const e of p.byLabel) console.log(e.label, e.count, `${(100 * e.share).toFixed(0)}%`);
 * }
 * x.dispose();
 * ```
 */
export async function profile(fn: () => unknown): Promise<Profile> {
  const rt = await getRuntime();
  rt.startProfile();
  try {
    await fn();
  } catch (e) {
    await rt.stopProfile();
    throw e;
  }
  const dispatches = await rt.stopProfile();
  const by = new Map<string, { count: number; ns: number }>();
  let total = 0;
  for (const d of dispatches) {
    const ns = Math.max(0, d.end - d.start);
    total += ns;
    const e = by.get(d.label) ?? { count: 0, ns: 0 };
    e.count++;
    e.ns += ns;
    by.set(d.label, e);
  }
  const byLabel = [...by].map(([label, e]) => ({
    label,
    count: e.count,
    ms: e.ns / 1e6,
    share: total > 0 ? e.ns / total : 0,
  })).sort((a, b) => b.ms - a.ms);
  return { dispatches, totalMs: total / 1e6, byLabel };
}

/**
 * Facts about the adapter and device (acquiring it if needed).
 *
 * @example
 * ```ts
 * import { deviceInfo } from "./device.ts";
 * const info = await deviceInfo();
 * console.log(["native", "packed"].includes(info.f16Storage)); // true
 * ```
 */
export async function deviceInfo(): Promise<DeviceInfo> {
  return (await getRuntime()).info;
}

/**
 * GPU memory statistics of the current device: live and peak logical bytes, by dtype and by
 * purpose. Zeros when no device was acquired yet.
 *
 * @example
 * ```ts
 * import { memory } from "./device.ts";
 * const m = memory();
 * console.log(m.liveBytes >= 0, m.peakBytes >= m.liveBytes); // true true
 * ```
 */
export function memory(): MemoryInfo {
  if (!current) {
    return {
      liveBytes: 0,
      peakBytes: 0,
      liveBuffers: 0,
      byDtype: {},
      byPurpose: {},
      pooledBytes: 0,
      allocatedBytes: 0,
    };
  }
  return current.memory();
}

/**
 * Acquires the device if it is not yet acquired and returns its facts. Ops record work
 * synchronously, so a script awaits this once before making tensors; importing ulp does
 * not (it touches no GPU and prints nothing, so `--help` and host-only work such as dtypes
 * stay quiet, and `configureDevice()` applies to the first acquisition). Without an adapter
 * it throws the `DeviceError` that says how to get one.
 *
 * @example
 * ```ts
 * import { ready, tensor } from "../mod.ts";
 * const info = await ready(); // once, before the first tensor
 * console.log(info.limits.maxComputeInvocationsPerWorkgroup >= 256); // true
 * console.log(Array.from(await tensor([1, 2]).mul(2).toArray())); // [2, 4]
 * ```
 */
export async function ready(): Promise<DeviceInfo> {
  return (await getRuntime()).info;
}
