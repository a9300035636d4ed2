/**
 * The runtime of one GPU device: buffer pool, pipeline cache, one command encoder that
 * batches dispatches into a shared compute pass, pooled uniforms, async readback and
 * memory statistics.
 *
 * Nothing waits for the GPU until a value is read: `dispatch` records into the open pass;
 * the batch is submitted when a read needs it, when it reaches `maxBatch` dispatches or
 * `maxBatchCost` of estimated work (so that no submission runs long enough to trip a driver's
 * or wgpu's timeouts on a software GPU), or on `flush()`. Uniforms of a batch live in one buffer at 256-byte dynamic offsets, written once
 * just before the submit.
 *
 * Faults become `DeviceError`s that name the request: a size beyond the adapter's limits at
 * the call; an out-of-memory error, which WebGPU reports asynchronously, at the next call
 * (the pool then releases its cached buffers); a lost device (or one destroyed by anything
 * but `destroy()` here) at every later call, after the `onLost` callback heard of it.
 *
 * @module
 */

import { DeviceError } from "../errors.ts";
import {
  BufferPool,
  type BufferTag,
  createBufferScoped,
  getMemoryLimit,
  gpuBufferKey,
  type OutOfMemory,
  type PooledBuffer,
  type Purpose,
} from "./pool.ts";

/** Facts about the adapter and device in use. */
export interface DeviceInfo {
  /** The adapter's description (for example "llvmpipe (LLVM 15.0.6, 256 bits)"). */
  readonly description: string;
  /** The adapter's vendor id or name. */
  readonly vendor: string;
  /** The adapter's architecture, where reported. */
  readonly architecture: string;
  /** Whether the adapter is a software fallback (llvmpipe, lavapipe, WARP). */
  readonly isFallbackAdapter: boolean;
  /** Whether WGSL `f16` is enabled (the `shader-f16` feature, unless turned off). */
  readonly shaderF16: boolean;
  /** Whether timestamp queries are enabled. */
  readonly timestampQuery: boolean;
  /** How f16 tensors are stored: `array<f16>` (native) or two per u32 (packed). */
  readonly f16Storage: "native" | "packed";
  /** The device's limits that ulp reads. */
  readonly limits: {
    readonly maxStorageBufferBindingSize: number;
    readonly maxBufferSize: number;
    readonly maxComputeWorkgroupStorageSize: number;
    readonly maxComputeInvocationsPerWorkgroup: number;
    readonly maxComputeWorkgroupsPerDimension: number;
    readonly maxStorageBuffersPerShaderStage: number;
    /** Storage bindings start on a multiple of this many bytes (256 on most adapters). */
    readonly minStorageBufferOffsetAlignment: number;
  };
}

/**
 * A window of a buffer bound to one storage binding: `size` bytes from `offset` (a multiple
 * of `minStorageBufferOffsetAlignment`), at most `maxStorageBufferBindingSize`. Kernels built
 * with `gpu/program.ts` bind windows of buffers larger than one binding.
 */
export interface BufferWindow {
  /** The pooled buffer. */
  readonly buffer: PooledBuffer;
  /** First byte of the window. */
  readonly offset: number;
  /** Bytes in the window (a multiple of 4). */
  readonly size: number;
}

/** What one storage binding of a dispatch binds: a whole buffer or a window of it. */
export type Binding = PooledBuffer | BufferWindow;

function isWindow(b: Binding): b is BufferWindow {
  return (b as BufferWindow).offset !== undefined;
}

/** The pooled buffer of a binding. */
export function bufferOf(b: Binding): PooledBuffer {
  return isWindow(b) ? b.buffer : b;
}

/** How a kernel binds its buffers: storage buffers in binding order, then the uniform. */
export interface KernelSignature {
  /** Access of each storage binding, in binding order (0, 1, ...). */
  readonly buffers: readonly ("read" | "read_write")[];
  /** Whether binding `buffers.length` is a uniform block (up to 256 bytes). */
  readonly uniform: boolean;
  /**
   * Textures, bound after the buffers and the uniform, in order: `"read"` a sampled
   * `texture_2d<f32>` of `rgba32float` texels (read with `textureLoad`), `"read-storage"` a
   * `texture_storage_2d<rgba32float, read>`, `"write"` a
   * `texture_storage_2d<rgba32float, write>`; `"read-u32"` and `"read-storage-u32"` the two
   * reads of `rgba32uint` texels (`texture_2d<u32>`, `texture_storage_2d<rgba32uint, read>`:
   * words as they are, for staged bindings).
   */
  readonly textures?: readonly TextureAccess[];
}

/** How a kernel binds a texture (`KernelSignature.textures`). */
export type TextureAccess = "read" | "read-storage" | "write" | "read-u32" | "read-storage-u32";

/** Texel formats of scratch textures: four f32 values, or four words as they are. */
export type ScratchFormat = "rgba32float" | "rgba32uint";

/**
 * The constant a kernel's source may declare (the line `const ULP_WINDOWS = WINDOWS;`,
 * `WINDOWS_DECL`) to read window bases only where its storage bindings may be windows that
 * start past their buffer's first byte. The runtime compiles such a kernel with it `false` (a
 * window base is then the constant 0, with no uniform load per access, which llvmpipe makes
 * lane by lane) and compiles it with `true` on the first dispatch that binds such a window.
 * (A WGSL `override` would serve, but wgpu's override pass rejects some valid kernels.)
 * @internal
 */
export const WINDOWS_CONST = "ULP_WINDOWS";
/** The placeholder line of `WINDOWS_CONST` in a kernel's source. @internal */
export const WINDOWS_DECL = `const ${WINDOWS_CONST} = WINDOWS;\n`;

/** A compiled kernel: its pipeline and bind group layout. */
export interface Kernel {
  /** The WGSL source it was compiled from (the cache key). */
  readonly source: string;
  /** Storage and uniform bindings. */
  readonly signature: KernelSignature;
  /** A label for errors and profiles (the op's name). */
  readonly label: string;
  /** The pipeline (for a source that declares `WINDOWS_CONST`: with it false). @internal */
  readonly pipeline: GPUComputePipeline;
  /**
   * For a source that declares `WINDOWS_CONST`: the pipeline with it true, compiled on first
   * use. @internal
   */
  readonly windowed?: () => GPUComputePipeline;
  /** @internal */
  readonly layout: GPUBindGroupLayout;
}

/** Counters of the work done, for benchmarks and tests of dispatch counts. */
export interface RuntimeCounters {
  /** Dispatches recorded. */
  dispatches: number;
  /** Command buffers submitted. */
  submits: number;
  /** Reads from the GPU (each `mapAsync`). */
  readbacks: number;
  /** Pipelines compiled (cache misses). */
  compiles: number;
  /** Storage bindings bound as windows of a buffer larger than one binding. */
  windows: number;
}

/**
 * The GPU time of one dispatch, as `Runtime.stopProfile()` reports it (`end - start` is the
 * dispatch's compute pass, in nanoseconds).
 *
 * @example
 * ```ts
 * import { type DispatchTime, getRuntime } from "./mod.ts";
 * const rt = await getRuntime();
 * const times: DispatchTime[] = rt.info.timestampQuery
 *   ? (rt.startProfile(), await rt.stopProfile())
 *   : [];
 * for (const t of times) console.log(t.label, t.groups.join("x"), (t.end - t.start) / 1e3, "us");
 * ```
 */
export interface DispatchTime {
  /** The kernel's label (the op's name). */
  readonly label: string;
  /** The workgroup grid. */
  readonly groups: readonly [number, number, number];
  /** When its compute pass began, in nanoseconds of the GPU's timestamp clock. */
  readonly start: number;
  /** When its compute pass ended, in the same clock. */
  readonly end: number;
}

/** Memory statistics, as `memory()` reports them. */
export interface MemoryInfo {
  /** Logical bytes of live buffers (what tensors and states use, no padding). */
  liveBytes: number;
  /** The largest `liveBytes` seen since the device was acquired or `resetPeak()`. */
  peakBytes: number;
  /** Number of live buffers. */
  liveBuffers: number;
  /** Live bytes by dtype name. */
  byDtype: Record<string, number>;
  /** Live bytes by purpose (params, grads, optimizer, activations, casts, scratch, other). */
  byPurpose: Record<string, number>;
  /** Bytes of free buffers kept by the pool for reuse. */
  pooledBytes: number;
  /** Bytes of all GPU buffers the pool holds (live, free and deferred, with padding). */
  allocatedBytes: number;
}

/** Bytes of uniforms one dispatch may have (128 u32 words). */
export const UNIFORM_SLOT = 512;

/** Describes a request for messages: "1048576 bytes (f32, activations)". */
function what(bytes: number, tag: BufferTag): string {
  return `${bytes} bytes (${tag.dtype}, ${tag.purpose})`;
}

const TEXTURE_KEYS: Record<TextureAccess, string> = {
  "read": "t",
  "read-storage": "o",
  "write": "s",
  "read-u32": "T",
  "read-storage-u32": "O",
};

function layoutKey(sig: KernelSignature): string {
  return sig.buffers.map((a) => (a === "read" ? "r" : "w")).join("") + (sig.uniform ? "u" : "") +
    (sig.textures ?? []).map((a) => TEXTURE_KEYS[a]).join("");
}

/** Ids of textures, for bind group keys. */
const textureIds = new WeakMap<GPUTexture, number>();
let nextTextureId = 1;
function textureKey(t: GPUTexture): number {
  let id = textureIds.get(t);
  if (id === undefined) textureIds.set(t, id = nextTextureId++);
  return id;
}

let guardInstalled = false;
let guardedRuntime: Runtime | null = null;

/**
 * The exit guard: an uncaught error ends a Deno process at once, and wgpu then waits at most
 * 5 s for submitted GPU work before it panics ("We timed out while waiting on the last
 * successful submission to complete!"), which hides the error under a Deno bug report. When
 * work is in flight, the guard prints the error as Deno would, waits for the GPU, and exits
 * with status 1. It does nothing when no work is in flight, or when another listener has
 * handled the error.
 */
function guardExit(rt: Runtime): void {
  guardedRuntime = rt;
  if (guardInstalled || typeof addEventListener !== "function") return;
  guardInstalled = true;
  const handle = (ev: Event, err: unknown, kind: string) => {
    const r = guardedRuntime;
    if (ev.defaultPrevented || r === null || r.lost || r.inFlight === 0) return;
    ev.preventDefault();
    const text = err instanceof Error ? (err.stack ?? String(err)) : String(err);
    console.error(`error: Uncaught ${kind}${text}`);
    console.error("(ulp: waiting for the GPU to finish submitted work before exiting)");
    r.device.queue.onSubmittedWorkDone().finally(() => Deno.exit(1));
  };
  addEventListener("error", (ev) => handle(ev, (ev as ErrorEvent).error, ""));
  addEventListener(
    "unhandledrejection",
    (ev) => handle(ev, (ev as PromiseRejectionEvent).reason, "(in promise) "),
  );
}

/** The runtime of one GPU device. Get it with `getRuntime()` (see `device.ts`). */
export class Runtime {
  /** The WebGPU device. */
  readonly device: GPUDevice;
  /** Facts about the adapter and device. */
  readonly info: DeviceInfo;
  /** Counters of dispatches, submits, readbacks and compiles. */
  readonly counters: RuntimeCounters = {
    dispatches: 0,
    submits: 0,
    readbacks: 0,
    compiles: 0,
    windows: 0,
  };
  /** Dispatches per batch before it is submitted on its own. */
  maxBatch = 512;
  /**
   * Estimated work (nanoseconds of a CPU adapter, as `dispatch`'s `cost`) per batch before
   * it is submitted on its own: about half a second on a software GPU. wgpu waits at most
   * 5 s for submitted work when a process exits (and panics past that), so no submission
   * may take long.
   */
  maxBatchCost: number;
  /**
   * The most loop iterations one invocation may run: llvmpipe and lavapipe stop every loop of
   * an invocation after 65,535 iterations in all, silently (measured: a matmul with K = 60,000
   * summed only 52,428 products). Kernels whose loops grow with the data split their work to
   * stay below this; unlimited on other adapters.
   */
  maxLoopIterations: number;
  #batchCost = 0;
  #inFlight = 0;
  #maxBinding = 0;

  /**
   * The most bytes one storage binding may bind: the adapter's `maxStorageBufferBindingSize`
   * unless lowered (to see how ulp behaves on an adapter with smaller bindings, or to test
   * windowed kernels on small tensors). Kernels bind larger buffers as windows of this size.
   */
  get maxBindingBytes(): number {
    return this.#maxBinding || this.info.limits.maxStorageBufferBindingSize;
  }
  set maxBindingBytes(bytes: number) {
    const lim = this.info.limits;
    const align = lim.minStorageBufferOffsetAlignment;
    if (!Number.isInteger(bytes) || bytes < 4 * align || bytes > lim.maxStorageBufferBindingSize) {
      throw new DeviceError(
        `maxBindingBytes must be an integer from ${4 * align} to the adapter's ` +
          `maxStorageBufferBindingSize (${lim.maxStorageBufferBindingSize}), got ${bytes}`,
      );
    }
    this.#maxBinding = Math.floor(bytes / 4) * 4;
  }
  #maxTexture = 0;

  /**
   * The widest and tallest scratch texture (`scratchTexture`) in texels: the adapter's
   * `maxTextureDimension2D` unless lowered (to test the kernels that cut their work into
   * pieces whose textures fit, on small tensors). @internal
   *
   * @example
   * ```ts
   * import { getRuntime } from "./mod.ts";
   * const rt = await getRuntime();
   * console.log(rt.maxTextureSize === rt.device.limits.maxTextureDimension2D); // true
   * ```
   */
  get maxTextureSize(): number {
    return this.#maxTexture || this.device.limits.maxTextureDimension2D;
  }
  set maxTextureSize(texels: number) {
    const max = this.device.limits.maxTextureDimension2D;
    if (!Number.isInteger(texels) || texels < 64 || texels > max) {
      throw new DeviceError(
        `maxTextureSize must be an integer from 64 to the adapter's maxTextureDimension2D ` +
          `(${max}), got ${texels}`,
      );
    }
    this.#maxTexture = texels === max ? 0 : texels;
  }
  /**
   * Called before a command that writes buffers is recorded, with its buffers and, for a
   * dispatch, the access of each (only `read_write` ones are written; without `access`,
   * all are: a copy's destination, a host write). Deferred work that reads them (elementwise
   * fusion, tensor/kernels/fusion.ts) records itself here first, so that it sees the values it was
   * given. @internal
   */
  beforeWrite:
    | ((buffers: readonly PooledBuffer[], access?: KernelSignature["buffers"]) => void)
    | null = null;

  #pool: BufferPool;
  #kernels = new Map<string, Kernel>();
  #layouts = new Map<string, GPUBindGroupLayout>();
  #bindGroups = new Map<string, GPUBindGroup>();
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #batch = 1; // id of the open batch
  #inBatch = 0;
  #uniformBuf: GPUBuffer;
  #uniformHost: ArrayBuffer;
  #uniformU32: Uint32Array;
  #lost: string | null = null;
  #destroyed = false;
  #error: string | null = null;
  #oom: string | null = null;
  #pendingReads: {
    src: PooledBuffer;
    offset: number;
    size: number;
    resolve: (b: ArrayBuffer) => void;
    reject: (e: unknown) => void;
  }[] = [];
  #readScheduled = false;
  /** The open profile (`startProfile`): the query set, the labels of the open batch, reads. */
  #prof: {
    querySet: GPUQuerySet;
    resolve: GPUBuffer;
    batch: { label: string; groups: [number, number, number] }[];
    reads: Promise<DispatchTime[]>[];
  } | null = null;

  /**
   * Wraps a device; `getRuntime()` does this once per process. `onLost` is called when the
   * device is lost, or destroyed by anything but this runtime's `destroy()`, with the reason.
   */
  constructor(device: GPUDevice, info: DeviceInfo, onLost?: (rt: Runtime, reason: string) => void) {
    this.device = device;
    this.info = info;
    const software = info.isFallbackAdapter ||
      /llvmpipe|lavapipe|swiftshader|warp/i.test(info.description);
    this.maxLoopIterations = software ? 60_000 : Infinity;
    this.maxBatchCost = software ? 5e8 : 5e10;
    this.#pool = new BufferPool(device);
    guardExit(this);
    this.#pool.onOutOfMemory = (e) => this.#outOfMemory(e);
    this.#uniformBuf = device.createBuffer({
      size: UNIFORM_SLOT * this.maxBatch,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.#uniformHost = new ArrayBuffer(UNIFORM_SLOT * this.maxBatch);
    this.#uniformU32 = new Uint32Array(this.#uniformHost);
    device.lost.then((l) => {
      if (this.#destroyed) return; // destroy() below: not a fault
      this.#lost ??= l.reason === "destroyed"
        ? `destroyed: the device was destroyed outside ulp (${l.message})`
        : `${l.reason}: ${l.message}`;
      onLost?.(this, this.#lost);
    });
    device.addEventListener("uncapturederror", (ev) => {
      const e = (ev as GPUUncapturedErrorEvent).error;
      this.#error ??= `${e.constructor.name}: ${e.message}`;
    });
  }

  /** Submitted batches whose work the GPU has not yet reported done. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Whether the device was lost or destroyed. */
  get lost(): boolean {
    return this.#lost !== null;
  }

  /** Why the device was lost or destroyed, or null while it works. */
  get lostReason(): string | null {
    return this.#lost;
  }

  #outOfMemory(e: OutOfMemory): void {
    this.#pool.emptyCache(); // what is cached is free: give it back for the next attempt
    this.#oom ??= `the GPU ran out of memory creating a ${e.size}-byte buffer for ` +
      `${what(e.bytes, e.tag)} (${e.message}); ${this.#pool.stats.liveBytes} bytes were live. ` +
      `The tensor that got it is invalid and work recorded with it was dropped. Free tensors ` +
      `you no longer need (dispose(), tidy()) or use smaller batches or narrower dtypes; the ` +
      `pool's cached buffers were released`;
  }

  #check(op: string): void {
    if (this.#lost !== null) {
      throw new DeviceError(
        `${op}: the GPU device was lost (${this.#lost}); tensors made on it are gone. ` +
          `Call await ready() (or await resetDevice()) to use a new device and recreate your ` +
          `tensors.`,
      );
    }
    if (this.#oom !== null) {
      const e = this.#oom;
      this.#oom = null;
      this.#error = null; // what follows from the invalid buffer says less than this
      throw new DeviceError(`${op}: ${e}`);
    }
    if (this.#error !== null) {
      const e = this.#error;
      this.#error = null;
      throw new DeviceError(`${op}: the GPU reported an error in earlier work: ${e}`);
    }
  }

  /**
   * Allocates a storage buffer of `bytes` logical bytes, checked against the adapter's
   * limits (a `DeviceError` naming the limit). Out of memory is reported by the next call.
   */
  alloc(bytes: number, tag: BufferTag): PooledBuffer {
    this.#check("alloc");
    if (typeof bytes !== "number" || !Number.isInteger(bytes) || bytes < 0) {
      throw new DeviceError(`alloc(): byte size must be a non-negative integer, got ${bytes}`);
    }
    const limit = this.info.limits.maxBufferSize;
    if (bytes > limit) {
      throw new DeviceError(
        `alloc(): ${what(bytes, tag)} exceed the adapter's maxBufferSize of ${limit} bytes ` +
          `(${(bytes / 2 ** 20).toFixed(1)} MiB > ${(limit / 2 ** 20).toFixed(1)} MiB; one ` +
          `tensor is one buffer): use a smaller batch, context or model, or a narrower dtype`,
      );
    }
    this.#pool.checkBudget(Math.max(bytes, 4), what(bytes, tag));
    try {
      return this.#pool.acquire(Math.max(bytes, 4), tag, this.#batch - 1);
    } catch (e) {
      throw new DeviceError(
        `alloc(): the GPU could not create a buffer for ${what(bytes, tag)}, even after ` +
          `releasing the pool's cached buffers (${(e as Error).message}); ` +
          `${this.#pool.stats.liveBytes} bytes are live. Free tensors you no longer need ` +
          `(dispose(), tidy()) or use smaller batches or narrower dtypes`,
        { cause: e },
      );
    }
  }

  /** Changes the dtype or purpose a buffer is counted under. */
  retag(pb: PooledBuffer, tag: BufferTag): void {
    this.#pool.retag(pb, tag);
  }

  /** Releases a buffer; it is reused only after the commands that use it are submitted. */
  free(pb: PooledBuffer): void {
    this.#pool.release(pb, this.#batch);
  }

  /** Writes host data into a buffer, after every recorded command that uses it. */
  write(pb: PooledBuffer, data: ArrayBufferView, byteOffset = 0): void {
    this.#beforeWriting([pb]);
    this.#check("write");
    if (pb.lastBatch >= this.#batch) this.flush();
    let bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    if (bytes.byteLength % 4 !== 0) {
      // writeBuffer needs a multiple of 4 bytes.
      const p = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      p.set(bytes);
      bytes = p;
    }
    this.device.queue.writeBuffer(pb.buffer, byteOffset, bytes);
  }

  #layout(sig: KernelSignature): GPUBindGroupLayout {
    const key = layoutKey(sig);
    let l = this.#layouts.get(key);
    if (!l) {
      const entries: GPUBindGroupLayoutEntry[] = sig.buffers.map((a, i) => ({
        binding: i,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: a === "read" ? "read-only-storage" : "storage" },
      }));
      if (sig.uniform) {
        entries.push({
          binding: sig.buffers.length,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: "uniform", hasDynamicOffset: true, minBindingSize: UNIFORM_SLOT },
        });
      }
      const t0 = sig.buffers.length + (sig.uniform ? 1 : 0);
      (sig.textures ?? []).forEach((a, i) =>
        entries.push(
          a === "read" || a === "read-u32"
            ? {
              binding: t0 + i,
              visibility: GPUShaderStage.COMPUTE,
              texture: {
                sampleType: a === "read" ? "unfilterable-float" : "uint",
                viewDimension: "2d",
              },
            }
            : {
              binding: t0 + i,
              visibility: GPUShaderStage.COMPUTE,
              storageTexture: {
                access: a === "write" ? "write-only" : "read-only",
                format: a === "read-storage-u32" ? "rgba32uint" : "rgba32float",
                viewDimension: "2d",
              },
            },
        )
      );
      l = this.device.createBindGroupLayout({ entries });
      this.#layouts.set(key, l);
    }
    return l;
  }

  #byKey = new Map<string, Kernel>();

  /**
   * The kernel cached under `key`, built from `build()` on the first request only: ops key
   * their kernels by dtypes and shape class, so a hot path neither rebuilds nor hashes the
   * WGSL text. Keys must name everything the source depends on.
   */
  kernelFor(key: string, label: string, signature: KernelSignature, build: () => string): Kernel {
    let k = this.#byKey.get(key);
    if (!k) {
      k = this.kernel(label, build(), signature);
      this.#byKey.set(key, k);
    }
    return k;
  }

  /**
   * The kernel compiled from `source` (entry point `main`), from the cache when the same
   * source was compiled before.
   */
  kernel(label: string, source: string, signature: KernelSignature): Kernel {
    const key = source;
    const hit = this.#kernels.get(key);
    if (hit) return hit;
    this.#check(label);
    const layout = this.#layout(signature);
    const pipelineLayout = this.device.createPipelineLayout({ bindGroupLayouts: [layout] });
    const hasWindows = source.includes(WINDOWS_DECL);
    const compile = (windows: boolean) => {
      this.counters.compiles++;
      const code = hasWindows
        ? source.replace(WINDOWS_DECL, `const ${WINDOWS_CONST} = ${windows};\n`)
        : source;
      const module = this.device.createShaderModule({ code, label });
      return this.device.createComputePipeline({
        label,
        layout: pipelineLayout,
        compute: { module, entryPoint: "main" },
      });
    };
    // each compiled on its first dispatch (a kernel that only ever runs on windows past
    // their buffers' starts, as at a lowered binding limit, compiles one pipeline, not two)
    let flat: GPUComputePipeline | null = null, shifted: GPUComputePipeline | null = null;
    const k: Kernel = {
      source,
      signature,
      label,
      get pipeline() {
        return flat ??= compile(false);
      },
      windowed: hasWindows ? () => (shifted ??= compile(true)) : undefined,
      layout,
    };
    this.#kernels.set(key, k);
    return k;
  }

  #bindGroup(
    k: Kernel,
    buffers: readonly Binding[],
    textures: readonly GPUTexture[],
  ): GPUBindGroup {
    let key = layoutKey(k.signature);
    for (const t of textures) key += `,t${textureKey(t)}`;
    // keyed by the GPU buffers (reused by the pool), not by the allocations (new each step):
    // a training step then finds its bind groups again instead of making new ones, whose
    // native memory only the JS garbage collector would give back (25-37 KB per step)
    for (const b of buffers) {
      key += isWindow(b)
        ? `,${gpuBufferKey(b.buffer.buffer)}@${b.offset}+${b.size}`
        : `,${gpuBufferKey(b.buffer)}:${b.buffer.size <= this.maxBindingBytes ? "" : b.bytes}`;
    }
    let bg = this.#bindGroups.get(key);
    if (!bg) {
      const max = this.maxBindingBytes;
      const entries: GPUBindGroupEntry[] = buffers.map((b, i) => {
        if (isWindow(b)) {
          return {
            binding: i,
            resource: { buffer: b.buffer.buffer, offset: b.offset, size: b.size },
          };
        }
        // a whole buffer whose size class passes the limit binds its logical bytes only
        if (b.buffer.size <= max) return { binding: i, resource: { buffer: b.buffer } };
        return { binding: i, resource: { buffer: b.buffer, size: Math.ceil(b.bytes / 4) * 4 } };
      });
      if (k.signature.uniform) {
        entries.push({
          binding: buffers.length,
          resource: { buffer: this.#uniformBuf, offset: 0, size: UNIFORM_SLOT },
        });
      }
      const t0 = buffers.length + (k.signature.uniform ? 1 : 0);
      textures.forEach((t, i) => entries.push({ binding: t0 + i, resource: t.createView() }));
      bg = this.device.createBindGroup({ layout: k.layout, entries });
      if (this.#bindGroups.size > 4096) this.#bindGroups.clear();
      this.#bindGroups.set(key, bg);
    }
    return bg;
  }

  /**
   * Records one dispatch into the open compute pass. `uniforms` (at most 128 u32 words) is
   * copied now. `groups` is the workgroup grid; see `grid()` for large 1-D launches.
   * `textures` are the kernel's textures (`signature.textures`), in order.
   */
  dispatch(
    k: Kernel,
    bindings: readonly Binding[],
    groups: readonly [number, number?, number?],
    uniforms?: Uint32Array,
    cost?: number,
    textures: readonly GPUTexture[] = [],
  ): void {
    const buffers = bindings.map(bufferOf);
    this.#beforeWriting(buffers, k.signature.buffers);
    this.#check(k.label);
    if (buffers.length !== k.signature.buffers.length) {
      throw new DeviceError(
        `dispatch(${k.label}): ${buffers.length} buffers given, the kernel binds ` +
          `${k.signature.buffers.length}`,
      );
    }
    if (textures.length !== (k.signature.textures?.length ?? 0)) {
      throw new DeviceError(
        `dispatch(${k.label}): ${textures.length} textures given, the kernel binds ` +
          `${k.signature.textures?.length ?? 0}`,
      );
    }
    const max = this.maxBindingBytes;
    for (const [i, b] of bindings.entries()) {
      if (buffers[i].released) {
        throw new DeviceError(`dispatch(${k.label}): a buffer was used after it was released`);
      }
      if (isWindow(b)) this.counters.windows++;
      const size = isWindow(b) ? b.size : Math.ceil(b.bytes / 4) * 4;
      if (size > max) {
        throw new DeviceError(
          `dispatch(${k.label}): binding ${i} would bind ${size} bytes ` +
            `(${buffers[i].tag.dtype}, ${buffers[i].tag.purpose}), more than the ` +
            `${max}-byte limit of one storage binding (maxStorageBufferBindingSize); this kernel cannot split its work ` +
            `into windows of that size: use a smaller batch, context or model`,
        );
      }
    }
    const [x, y = 1, z = 1] = groups;
    const work = cost ?? x * y * z * 128; // default: 64 invocations of about 2 ns
    if (
      this.#inBatch >= this.maxBatch ||
      (this.#inBatch > 0 && this.#batchCost + work > this.maxBatchCost)
    ) this.flush();
    this.#batchCost += work;
    if (x === 0 || y === 0 || z === 0) return;
    const maxG = this.info.limits.maxComputeWorkgroupsPerDimension;
    if (x > maxG || y > maxG || z > maxG) {
      throw new DeviceError(
        `dispatch(${k.label}): grid ${x}x${y}x${z} exceeds maxComputeWorkgroupsPerDimension ` +
          `(${maxG}); use grid() to fold a 1-D launch into 2-D`,
      );
    }
    const pass = this.#prof ? this.#profiledPass(k.label, [x, y, z]) : this.#openPass();
    // a window past its buffer's start needs the kernel that reads window bases
    const shifted = k.windowed !== undefined && bindings.some((b) => isWindow(b) && b.offset > 0);
    pass.setPipeline(shifted ? k.windowed!() : k.pipeline);
    const slot = this.#inBatch;
    if (k.signature.uniform) {
      if (uniforms) {
        if (uniforms.length > UNIFORM_SLOT / 4) {
          throw new DeviceError(
            `dispatch(${k.label}): ${uniforms.length} uniform words, more than ${UNIFORM_SLOT / 4}`,
          );
        }
        this.#uniformU32.set(uniforms, (slot * UNIFORM_SLOT) / 4);
      }
      pass.setBindGroup(0, this.#bindGroup(k, bindings, textures), [slot * UNIFORM_SLOT]);
    } else {
      pass.setBindGroup(0, this.#bindGroup(k, bindings, textures));
    }
    pass.dispatchWorkgroups(x, y, z);
    for (const b of buffers) b.lastBatch = this.#batch;
    this.#inBatch++;
    this.counters.dispatches++;
  }

  /**
   * A 2-D workgroup grid that covers `n` workgroups within the per-dimension limit. Kernels
   * recover the linear workgroup index as `wid.x + wid.y * nwg.x` (`@builtin(num_workgroups)`)
   * and must ignore indices past the end.
   */
  grid(n: number): [number, number] {
    const maxG = this.info.limits.maxComputeWorkgroupsPerDimension;
    if (n <= maxG) return [Math.max(n, 0), 1];
    const y = Math.ceil(n / maxG);
    return [Math.ceil(n / y), y];
  }

  #openPass(): GPUComputePassEncoder {
    if (!this.#encoder) this.#encoder = this.device.createCommandEncoder();
    if (!this.#pass) this.#pass = this.#encoder.beginComputePass();
    return this.#pass;
  }

  /** A compute pass of its own for one dispatch, with timestamps at its start and end. */
  #profiledPass(label: string, groups: [number, number, number]): GPUComputePassEncoder {
    const prof = this.#prof!;
    const enc = this.#closePass();
    const i = prof.batch.length;
    prof.batch.push({ label, groups });
    this.#pass = enc.beginComputePass({
      timestampWrites: {
        querySet: prof.querySet,
        beginningOfPassWriteIndex: 2 * i,
        endOfPassWriteIndex: 2 * i + 1,
      },
    });
    return this.#pass;
  }

  /**
   * Starts a profile: until `stopProfile()`, every dispatch runs in a compute pass of its own
   * whose start and end the GPU stamps (the `timestamp-query` feature; a `DeviceError` says
   * so where the adapter lacks it). One pass per dispatch costs a little time of its own, so
   * a profile shows where the time goes, not how long the batch takes without it. Off, it
   * costs nothing.
   *
   * @example
   * ```ts
   * import { getRuntime } from "./mod.ts";
   * const rt = await getRuntime();
   * if (rt.info.timestampQuery) {
   *   rt.startProfile();
   *   // ... record work ...
   *   const times = await rt.stopProfile();
   *   for (const t of times) console.log(t.label, (t.end - t.start) / 1e6, "ms");
   * }
   * ```
   */
  startProfile(): void {
    this.#check("startProfile");
    if (!this.info.timestampQuery) {
      throw new DeviceError(
        `startProfile(): the adapter '${this.info.description}' has no timestamp-query ` +
          `feature; time dispatches by syncing after each instead`,
      );
    }
    if (this.#prof) return;
    this.flush(); // the open batch's dispatches ran unstamped
    this.#prof = {
      querySet: this.device.createQuerySet({ type: "timestamp", count: 2 * this.maxBatch }),
      resolve: this.device.createBuffer({
        size: 16 * this.maxBatch,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      }),
      batch: [],
      reads: [],
    };
  }

  /**
   * Ends the profile that `startProfile()` began: submits the open batch and resolves to the
   * GPU time of every dispatch recorded meanwhile, in the order they ran. Empty without one.
   *
   * @example
   * ```ts
   * import { getRuntime } from "./mod.ts";
   * const rt = await getRuntime();
   * console.log((await rt.stopProfile()).length); // 0: no profile was open
   * ```
   */
  async stopProfile(): Promise<DispatchTime[]> {
    const prof = this.#prof;
    if (!prof) return [];
    this.flush();
    this.#prof = null;
    try {
      return (await Promise.all(prof.reads)).flat();
    } finally {
      prof.querySet.destroy();
      prof.resolve.destroy();
    }
  }

  /** Resolves the open batch's timestamps into a buffer read after the submit. */
  #resolveProfile(enc: GPUCommandEncoder): (() => void) | null {
    const prof = this.#prof;
    if (!prof || prof.batch.length === 0) return null;
    const labels = prof.batch;
    prof.batch = [];
    const bytes = 16 * labels.length;
    const staging = this.device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    enc.resolveQuerySet(prof.querySet, 0, 2 * labels.length, prof.resolve, 0);
    enc.copyBufferToBuffer(prof.resolve, 0, staging, 0, bytes);
    return () =>
      void prof.reads.push(
        staging.mapAsync(GPUMapMode.READ).then(() => {
          const t = new BigUint64Array(staging.getMappedRange().slice(0));
          staging.destroy();
          return labels.map(({ label, groups }, i) => ({
            label,
            groups,
            start: Number(t[2 * i]),
            end: Number(t[2 * i + 1]),
          }));
        }),
      );
  }

  #closePass(): GPUCommandEncoder {
    if (!this.#encoder) this.#encoder = this.device.createCommandEncoder();
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    return this.#encoder;
  }

  /** Records a buffer-to-buffer copy (outside the compute pass). */
  copy(
    src: PooledBuffer,
    srcOffset: number,
    dst: PooledBuffer,
    dstOffset: number,
    size: number,
  ): void {
    this.#beforeWriting([dst]);
    this.#check("copy");
    if (size === 0) return;
    this.#closePass().copyBufferToBuffer(src.buffer, srcOffset, dst.buffer, dstOffset, size);
    src.lastBatch = this.#batch;
    dst.lastBatch = this.#batch;
  }

  /**
   * Records a copy of `width` x `height` texels from `src` (row r at byte `offset + r
   * bytesPerRow`, `bytesPerRow` a multiple of 256) into a scratch texture, from its first
   * column and row `y` (outside the compute pass, in order with the dispatches): the bytes as
   * they are, 16 per texel, not a dispatch. For kernels that read an operand as texels
   * (matmul's texture family, staged bindings); `dst` comes from `scratchTexture()`. A
   * `DeviceError` names the sizes where the copy would not fit `src` or `dst`, or
   * `bytesPerRow` is not a multiple of 256.
   *
   * @example
   * ```ts
   * import { getRuntime } from "./mod.ts";
   * const rt = await getRuntime();
   * const src = rt.alloc(2 * 256, { dtype: "f32", purpose: "scratch" }); // 2 rows of 64 f32
   * const tex = rt.scratchTexture("doc.copy", 16, 2);
   * if (tex) rt.copyToTexture(src, 0, 256, tex, 16, 2); // 16 texels of 4 f32 a row
   * rt.free(src);
   * ```
   */
  copyToTexture(
    src: PooledBuffer,
    offset: number,
    bytesPerRow: number,
    dst: GPUTexture,
    width: number,
    height: number,
    y = 0,
  ): void {
    this.#check("copyToTexture");
    if (width * height === 0) return;
    const need = offset + (height - 1) * bytesPerRow + 16 * width;
    if (
      bytesPerRow % 256 !== 0 || bytesPerRow < 16 * width || offset % 16 !== 0 ||
      need > src.buffer.size || width > dst.width || y + height > dst.height
    ) {
      throw new DeviceError(
        `copyToTexture(): ${width} x ${height} texels from byte ${offset} with ${bytesPerRow} ` +
          `bytes a row (${need} bytes of a ${src.buffer.size}-byte buffer) into a ` +
          `${dst.width} x ${dst.height} texture from row ${y}: bytesPerRow must be a multiple of 256 and at ` +
          `least 16 x width, offset a multiple of 16, and the rows must lie inside both; ` +
          `take a path without the copy (pack the operand) for other layouts`,
      );
    }
    this.#closePass().copyBufferToTexture(
      { buffer: src.buffer, offset, bytesPerRow },
      { texture: dst, origin: [0, y] },
      [width, height],
    );
    src.lastBatch = this.#batch;
  }

  #textures = new Map<string, { texture: GPUTexture; bytes: number }>();
  #retired: GPUTexture[] = [];
  #textureBytes = 0;

  /** Bytes of the scratch textures the runtime holds (`scratchTexture`). */
  get textureBytes(): number {
    return this.#textureBytes;
  }

  /**
   * A scratch texture of `format` texels (`rgba32float` by default, or `rgba32uint`), `width`
   * x `height`, for slot `slot` (a kernel's operand: kernels that pack or copy an operand into
   * a texture and read it in the next dispatch). It
   * is the same texture for the same slot and size until evicted (the runtime keeps six
   * sizes per slot), so its contents last only until the next request for the slot: recorded
   * dispatches run in order, so a pack and the reads after it see their own texels. Null when
   * the size passes `maxTextureSize` (the adapter's `maxTextureDimension2D`) or the memory
   * budget (the caller then takes a path without textures).
   *
   * @example
   * ```ts
   * import { getRuntime } from "./mod.ts";
   * const rt = await getRuntime();
   * const t = rt.scratchTexture("doc", 4, 2);
   * console.log(t?.width, t?.height); // 4 2
   * ```
   */
  scratchTexture(
    slot: string,
    width: number,
    height: number,
    format: ScratchFormat = "rgba32float",
  ): GPUTexture | null {
    const max = this.maxTextureSize;
    if (width < 1 || height < 1 || width > max || height > max) return null;
    const key = `${slot}|${width}x${height}${format === "rgba32float" ? "" : "u"}`;
    const hit = this.#textures.get(key);
    if (hit) {
      this.#textures.delete(key); // most recently used last
      this.#textures.set(key, hit);
      return hit.texture;
    }
    const bytes = width * height * 16;
    // the slot's other sizes go first, beyond the few kept
    const same = [...this.#textures.keys()].filter((k) => k.startsWith(`${slot}|`));
    // (a training step's products come in a few shapes: forward, and both gradients)
    for (const k of same.slice(0, Math.max(0, same.length - 5))) this.#retire(k);
    if (this.memory().liveBytes + this.#textureBytes + bytes > getMemoryLimit().bytes) {
      for (const k of [...this.#textures.keys()]) this.#retire(k);
      if (this.memory().liveBytes + bytes > getMemoryLimit().bytes) return null;
    }
    let texture: GPUTexture;
    try {
      texture = this.device.createTexture({
        label: `scratch ${slot}`,
        size: [width, height],
        format,
        usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.STORAGE_BINDING |
          GPUTextureUsage.COPY_DST,
      });
    } catch {
      return null;
    }
    this.#textures.set(key, { texture, bytes });
    this.#textureBytes += bytes;
    return texture;
  }

  /** Drops a scratch texture; it is destroyed after the submit of the open batch. */
  #retire(key: string): void {
    const t = this.#textures.get(key);
    if (!t) return;
    this.#textures.delete(key);
    this.#textureBytes -= t.bytes;
    this.#retired.push(t.texture);
  }

  /** Submits the open batch, if it holds any work. */
  flush(): void {
    if (!this.#encoder) {
      for (const t of this.#retired.splice(0)) t.destroy();
      return;
    }
    const enc = this.#closePass();
    if (this.#inBatch > 0) {
      this.device.queue.writeBuffer(
        this.#uniformBuf,
        0,
        this.#uniformHost,
        0,
        this.#inBatch * UNIFORM_SLOT,
      );
    }
    const profiled = this.#resolveProfile(enc);
    this.device.queue.submit([enc.finish()]);
    profiled?.();
    this.counters.submits++;
    this.#batchCost = 0;
    this.#inFlight++;
    this.device.queue.onSubmittedWorkDone().then(
      () => this.#inFlight--,
      () => this.#inFlight--,
    );
    this.#encoder = null;
    const done = this.#batch;
    this.#batch++;
    this.#inBatch = 0;
    this.#pool.submitted(done);
    // destroyed textures wait for the work submitted before (WebGPU's destroy())
    for (const t of this.#retired.splice(0)) t.destroy();
  }

  /**
   * Reads `size` bytes at `offset` of a buffer: its contents after the work recorded so far,
   * not after commands recorded later that write it (those record the read's copy first).
   * Reads requested in the same task share one staging buffer and one `mapAsync`.
   */
  read(src: PooledBuffer, offset = 0, size = src.bytes): Promise<ArrayBuffer> {
    this.#check("read");
    if (src.released) {
      return Promise.reject(new DeviceError("read(): the buffer was released before the read"));
    }
    if (size === 0) return Promise.resolve(new ArrayBuffer(0));
    return new Promise((resolve, reject) => {
      this.#pendingReads.push({ src, offset, size, resolve, reject });
      src.lastBatch = this.#batch;
      if (!this.#readScheduled) {
        this.#readScheduled = true;
        queueMicrotask(() => this.#runReads());
      }
    });
  }

  /**
   * Before a command that writes `written` is recorded (`access`: a dispatch's, where only
   * `read_write` bindings are written), what reads them is recorded first: deferred work (the
   * `beforeWrite` hook), and the copies of the reads asked for so far if one of them reads a
   * written buffer: a read gives the values at the time it was asked for, as `tensor.tolist()`
   * does in PyTorch, not those of a later step recorded in the same task (`const w =
   * p.toArray(); opt.step()` read the stepped weights).
   */
  #beforeWriting(written: readonly PooledBuffer[], access?: KernelSignature["buffers"]): void {
    this.beforeWrite?.(written, access);
    if (this.#pendingReads.length === 0) return;
    // by GPU buffer: a read's source may be freed and handed out again meanwhile
    const hit = written.some((b, i) =>
      access?.[i] !== "read" && this.#pendingReads.some((r) => r.src.buffer === b.buffer)
    );
    if (hit) void this.#runReads(); // records and submits its copies before it first awaits
  }

  async #runReads(): Promise<void> {
    this.#readScheduled = false;
    const reads = this.#pendingReads;
    this.#pendingReads = [];
    if (reads.length === 0) return; // recorded early (#beforeWriting) before the microtask ran
    // copyBufferToBuffer needs 4-byte aligned offsets and sizes: copy the aligned range.
    const starts = reads.map((r) => Math.floor(r.offset / 4) * 4);
    const sizes = reads.map((r, i) => Math.ceil((r.offset + r.size) / 4) * 4 - starts[i]);
    const slots: number[] = [];
    let total = 0;
    for (const size of sizes) {
      slots.push(total);
      total += size;
    }
    let staging: GPUBuffer | null = null;
    try {
      this.#check("read");
      let oom: Promise<GPUError | null>;
      try {
        ({ buffer: staging, outOfMemory: oom } = createBufferScoped(this.device, {
          size: total,
          usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
        }));
      } catch (e) {
        throw new DeviceError(
          `read(): the GPU could not create a ${total}-byte staging buffer for ` +
            `${reads.length} read(s) (${(e as Error).message}); free tensors or read fewer ` +
            `values at once`,
          { cause: e },
        );
      }
      const enc = this.#closePass();
      reads.forEach((r, i) =>
        enc.copyBufferToBuffer(r.src.buffer, starts[i], staging!, slots[i], sizes[i])
      );
      this.flush();
      this.counters.readbacks++;
      const [oomErr, mapErr] = await Promise.all([
        oom.catch(() => null),
        staging.mapAsync(GPUMapMode.READ).then(() => null, (e) => e),
      ]);
      if (oomErr) {
        throw new DeviceError(
          `read(): the GPU ran out of memory creating a ${total}-byte staging buffer for ` +
            `${reads.length} read(s) (${oomErr.message}); free tensors you no longer need or ` +
            `read fewer values at once`,
        );
      }
      if (mapErr) throw mapErr;
      this.#check("read");
      const all = staging.getMappedRange().slice(0);
      staging.unmap();
      reads.forEach((r, i) => {
        const at = slots[i] + r.offset - starts[i];
        r.resolve(all.slice(at, at + r.size));
      });
    } catch (e) {
      const err = e instanceof DeviceError
        ? e
        : new DeviceError(`read(): ${(e as Error).message}`, { cause: e });
      for (const r of reads) r.reject(err);
    } finally {
      staging?.destroy();
    }
  }

  /** Waits until the GPU has finished all submitted work (flushing the open batch first). */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.#check("sync");
  }

  /** Memory statistics: live and peak logical bytes, by dtype and by purpose. */
  memory(): MemoryInfo {
    const s = this.#pool.stats;
    return {
      liveBytes: s.liveBytes,
      peakBytes: s.peakBytes,
      liveBuffers: s.liveBuffers,
      byDtype: Object.fromEntries([...s.byDtype].filter(([, v]) => v !== 0)),
      byPurpose: Object.fromEntries([...s.byPurpose].filter(([, v]) => v !== 0)),
      pooledBytes: s.pooledBytes,
      allocatedBytes: s.allocatedBytes,
    };
  }

  /** Starts peak tracking anew from the current live bytes. */
  resetPeak(): void {
    this.#pool.stats.peakBytes = this.#pool.stats.liveBytes;
  }

  /** Frees the pool's unused buffers. */
  emptyCache(): void {
    for (const k of [...this.#textures.keys()]) this.#retire(k);
    this.flush();
    this.#pool.emptyCache();
  }

  /** Destroys every buffer of the pool and the device; the runtime is lost afterwards. */
  destroy(): void {
    this.#destroyed = true;
    try {
      this.flush();
    } catch { /* a lost device cannot flush */ }
    this.#pool.destroyAll();
    this.#uniformBuf.destroy();
    for (const t of this.#textures.values()) t.texture.destroy();
    this.#textures.clear();
    this.#textureBytes = 0;
    this.#bindGroups.clear();
    this.#kernels.clear();
    this.#byKey.clear();
    this.#lost ??= "destroyed: the device was disposed";
    this.device.destroy();
  }
}

export type { BufferTag, PooledBuffer, Purpose };
