/**
 * A pool of GPU storage buffers with size classes. A released buffer goes back to its free
 * list only after the submit that last used it, because `queue.writeBuffer` on a reused
 * buffer runs before commands that are recorded but not yet submitted.
 *
 * Out of memory: WebGPU reports a failed `createBuffer` asynchronously, through an error
 * scope. Each new buffer is created inside an `out-of-memory` scope; when the scope reports
 * an error, the pool's `onOutOfMemory` callback hears which request failed, and the invalid
 * buffer is never handed out again (it is destroyed when released). A `createBuffer` that
 * throws at once is retried after the free buffers are destroyed.
 *
 * The memory budget: before a buffer is created, the bytes requested plus the live bytes are
 * checked against a budget (`getMemoryLimit()`), and a request that would pass it is a
 * `DeviceError` naming the request, the live bytes and the budget, thrown at the call (a
 * software GPU would otherwise take host memory until the process is killed). The budget is
 * `setMemoryLimit(bytes)` when set; else half of the host's memory when Deno may read it
 * (`--allow-sys=systemMemoryInfo`; WebGPU does not say how much memory an adapter has, and a
 * CPU adapter's memory is the host's); else `DEFAULT_MEMORY_LIMIT` (4 GiB).
 *
 * @module
 */

import { DeviceError, ValueError } from "../errors.ts";

/** What a buffer holds, for `memory()` by purpose. */
export type Purpose =
  | "params"
  | "grads"
  | "optimizer"
  | "activations"
  | "casts"
  | "scratch"
  | "other";

/** The tag of a live allocation: its dtype name and purpose. */
export interface BufferTag {
  /** Name of the dtype stored, or "raw". */
  dtype: string;
  /** What the bytes are for. */
  purpose: Purpose;
}

/** A live allocation: a pooled GPU buffer and the logical bytes asked for. */
export interface PooledBuffer {
  /** The GPU buffer; its size is the size class, at least `bytes`. */
  readonly buffer: GPUBuffer;
  /** Bytes requested (the logical size, never the padding). */
  readonly bytes: number;
  /** Dtype and purpose, for the statistics. */
  tag: BufferTag;
  /** Id of the last batch whose commands use the buffer. */
  lastBatch: number;
  /** Whether `release` was called. */
  released: boolean;
  /** A small serial id, used as a cache key. */
  readonly id: number;
}

/**
 * The size class of a request: sizes are rounded up to 4 classes per power of two
 * (at most 25% padding), at least 16 bytes.
 *
 * @example
 * ```ts
 * import { sizeClass } from "./pool.ts";
 * console.log(sizeClass(1), sizeClass(1000), sizeClass(1024), sizeClass(1025)); // 16 1024 1024 1280
 * ```
 */
export function sizeClass(bytes: number): number {
  if (bytes <= 16) return 16;
  const p = 2 ** Math.floor(Math.log2(bytes));
  if (p === bytes) return bytes;
  const step = Math.max(4, p / 4);
  return Math.ceil(bytes / step) * step;
}

/** Statistics kept by the pool. */
export interface PoolStats {
  liveBytes: number;
  peakBytes: number;
  liveBuffers: number;
  pooledBytes: number;
  allocatedBytes: number;
  byDtype: Map<string, number>;
  byPurpose: Map<string, number>;
}

/** A failed allocation, as the pool's `onOutOfMemory` callback hears of it. */
export interface OutOfMemory {
  /** Logical bytes requested. */
  bytes: number;
  /** Bytes of the GPU buffer the pool asked for (the size class). */
  size: number;
  /** Dtype and purpose of the request. */
  tag: BufferTag;
  /** The implementation's message. */
  message: string;
}

/**
 * Creates a buffer inside an `out-of-memory` error scope, the one way ulp creates buffers
 * that may be large. A synchronous failure is retried once after `beforeRetry()` (when
 * given), then thrown; the device's verdict on the memory comes later, as `outOfMemory`.
 */
export function createBufferScoped(
  device: GPUDevice,
  desc: GPUBufferDescriptor,
  beforeRetry?: () => void,
): { buffer: GPUBuffer; outOfMemory: Promise<GPUError | null> } {
  const create = (): GPUBuffer | Error => {
    try {
      return device.createBuffer(desc);
    } catch (e) {
      return e instanceof Error ? e : new Error(String(e));
    }
  };
  device.pushErrorScope("out-of-memory");
  let made = create();
  if (made instanceof Error && beforeRetry) {
    beforeRetry();
    made = create();
  }
  const outOfMemory = device.popErrorScope();
  if (made instanceof Error) {
    outOfMemory.catch(() => {});
    throw made;
  }
  return { buffer: made, outOfMemory };
}

/**
 * The budget used when neither `setMemoryLimit` nor the host's memory gives one: 4 GiB.
 *
 * @example
 * ```ts
 * import { DEFAULT_MEMORY_LIMIT } from "./pool.ts";
 * console.log(DEFAULT_MEMORY_LIMIT / 2 ** 30); // 4
 * ```
 */
export const DEFAULT_MEMORY_LIMIT: number = 4 * 2 ** 30;

/** The fraction of the host's memory the default budget takes when Deno may read it. */
const HOST_MEMORY_FRACTION = 0.5;

/**
 * The memory budget in force: the most live bytes ulp hands out, and where the number came
 * from (for error messages).
 *
 * @example
 * ```ts
 * import { getMemoryLimit, type MemoryLimit } from "./pool.ts";
 * const m: MemoryLimit = getMemoryLimit();
 * console.log(m.bytes > 0, typeof m.source); // true "string"
 * ```
 */
export interface MemoryLimit {
  /** Bytes. */
  bytes: number;
  /** How it was chosen: `setMemoryLimit()`, the host's memory, or the default. */
  source: string;
}

let chosenLimit: MemoryLimit | null = null;
let defaultLimit: MemoryLimit | null = null;

const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;

function hostDefault(): MemoryLimit {
  const d = (globalThis as { Deno?: typeof Deno }).Deno;
  try {
    const q = d?.permissions.querySync?.({ name: "sys", kind: "systemMemoryInfo" });
    if (d && q?.state === "granted") {
      const total = d.systemMemoryInfo().total;
      if (Number.isFinite(total) && total > 0) {
        const bytes = Math.floor(total * HOST_MEMORY_FRACTION);
        return { bytes, source: `half of the host's ${gib(total)} (Deno.systemMemoryInfo)` };
      }
    }
  } catch {
    // no permission API or no memory information: the documented default
  }
  return {
    bytes: DEFAULT_MEMORY_LIMIT,
    source: `the default of ${gib(DEFAULT_MEMORY_LIMIT)}; with --allow-sys=systemMemoryInfo ` +
      `it is half of the host's memory`,
  };
}

/**
 * Sets the memory budget: the most bytes of live GPU buffers ulp hands out (tensors, states,
 * scratch). A request that would pass it is a `DeviceError` at the call. `null` goes back to
 * the default (half of the host's memory with `--allow-sys=systemMemoryInfo`, else 4 GiB).
 *
 * @example
 * ```ts
 * import { DeviceError, getMemoryLimit, setMemoryLimit, zeros } from "../mod.ts";
 * setMemoryLimit(2 ** 20); // 1 MiB
 * try { zeros([2 ** 19]); } catch (e) { console.log(e instanceof DeviceError); } // true (2 MiB)
 * setMemoryLimit(null);
 * console.log(getMemoryLimit().bytes >= 2 ** 30); // true
 * ```
 */
export function setMemoryLimit(bytes: number | null): void {
  if (bytes === null) {
    chosenLimit = null;
    return;
  }
  if (typeof bytes !== "number" || !Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new ValueError(
      `setMemoryLimit(): bytes must be a positive integer (or null for the default), got ` +
        `${String(bytes)}`,
    );
  }
  chosenLimit = { bytes, source: `set by setMemoryLimit(${bytes})` };
}

/**
 * The memory budget in force and where it came from (see `setMemoryLimit`).
 *
 * @example
 * ```ts
 * import { getMemoryLimit } from "./pool.ts";
 * console.log(getMemoryLimit().source.length > 0); // true
 * ```
 */
export function getMemoryLimit(): MemoryLimit {
  return chosenLimit ?? (defaultLimit ??= hostDefault());
}

const gpuBufferKeys = new WeakMap<GPUBuffer, number>();
let nextGpuBufferKey = 1;

/**
 * A small number that names a GPU buffer for as long as it exists (a cache key): the pool
 * hands the same buffer to many allocations, and caches keyed by it (bind groups) are hit
 * again when it comes back, where a key of the allocation would miss every step.
 *
 * @example
 * ```ts
 * import { getRuntime } from "./device.ts";
 * import { gpuBufferKey } from "./pool.ts";
 * const rt = await getRuntime();
 * const a = rt.alloc(64, { dtype: "f32", purpose: "scratch" });
 * const key = gpuBufferKey(a.buffer);
 * rt.free(a);
 * rt.flush();
 * const b = rt.alloc(64, { dtype: "f32", purpose: "scratch" }); // the same buffer, reused
 * console.log(a.id !== b.id, gpuBufferKey(b.buffer) === key); // true true
 * rt.free(b);
 * ```
 */
export function gpuBufferKey(buffer: GPUBuffer): number {
  let k = gpuBufferKeys.get(buffer);
  if (k === undefined) gpuBufferKeys.set(buffer, k = nextGpuBufferKey++);
  return k;
}

/** The buffer pool of one device. */
export class BufferPool {
  #device: GPUDevice;
  #free = new Map<number, GPUBuffer[]>();
  #deferred: PooledBuffer[] = [];
  #nextId = 1;
  #live = new Set<PooledBuffer>();
  #invalid = new WeakSet<GPUBuffer>();
  /** Called when the device reports that creating a buffer ran out of memory. */
  onOutOfMemory: ((e: OutOfMemory) => void) | null = null;
  /** Statistics: live and peak logical bytes, pooled and allocated buffer bytes. */
  readonly stats: PoolStats = {
    liveBytes: 0,
    peakBytes: 0,
    liveBuffers: 0,
    pooledBytes: 0,
    allocatedBytes: 0,
    byDtype: new Map(),
    byPurpose: new Map(),
  };

  /** A pool that allocates from `device`. */
  constructor(device: GPUDevice) {
    this.#device = device;
  }

  /**
   * Throws a `DeviceError` naming the request, the live bytes and the budget when `bytes`
   * more would pass the memory budget; releases the cached buffers first when new ones would
   * pass it (what is cached counts against the budget only while it is kept).
   */
  checkBudget(bytes: number, what: string): void {
    const limit = getMemoryLimit();
    const live = this.stats.liveBytes;
    if (live + bytes > limit.bytes) {
      throw new DeviceError(
        `alloc(): ${what} would pass the memory budget: ${live} bytes are live and the ` +
          `budget is ${limit.bytes} bytes (${limit.source}). Free tensors you no longer need ` +
          `(dispose(), tidy()), use smaller batches or narrower dtypes, or set the budget with ` +
          `setMemoryLimit() (--memory-limit in the examples)`,
      );
    }
    const size = sizeClass(bytes);
    if (this.stats.allocatedBytes + size > limit.bytes && !this.#free.get(size)?.length) {
      this.emptyCache();
    }
  }

  /**
   * A buffer of at least `bytes` bytes, from the free list of its class or new. Throws what
   * `createBuffer` throws when it fails synchronously twice (the second time after the free
   * buffers were destroyed); the statistics are unchanged then.
   */
  acquire(bytes: number, tag: BufferTag, batch: number): PooledBuffer {
    const size = sizeClass(bytes);
    const list = this.#free.get(size);
    let buffer = list?.pop();
    if (buffer) {
      this.stats.pooledBytes -= size;
    } else {
      buffer = this.#create(bytes, size, tag);
      this.stats.allocatedBytes += size;
    }
    const pb: PooledBuffer = {
      buffer,
      bytes,
      tag,
      lastBatch: batch,
      released: false,
      id: this.#nextId++,
    };
    this.#live.add(pb);
    this.#count(pb, +1);
    return pb;
  }

  #create(bytes: number, size: number, tag: BufferTag): GPUBuffer {
    const { buffer, outOfMemory } = createBufferScoped(this.#device, {
      size,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    }, () => this.emptyCache());
    outOfMemory.then((err) => {
      if (err === null) return;
      this.#invalid.add(buffer);
      this.#dropFree(buffer);
      this.onOutOfMemory?.({ bytes, size, tag, message: err.message });
    }, () => {/* a lost device: reported by device.lost */});
    return buffer;
  }

  /** Removes an invalid buffer from the free lists, if it is there. */
  #dropFree(buffer: GPUBuffer): void {
    const list = this.#free.get(buffer.size);
    const at = list?.indexOf(buffer) ?? -1;
    if (at < 0) return;
    list!.splice(at, 1);
    this.stats.pooledBytes -= buffer.size;
    this.stats.allocatedBytes -= buffer.size;
    buffer.destroy();
  }

  /** Changes the tag of a live buffer (for example activations that become parameters). */
  retag(pb: PooledBuffer, tag: BufferTag): void {
    this.#count(pb, -1);
    pb.tag = tag;
    this.#count(pb, +1);
  }

  #count(pb: PooledBuffer, sign: 1 | -1): void {
    const s = this.stats;
    s.liveBytes += sign * pb.bytes;
    s.liveBuffers += sign;
    if (s.liveBytes > s.peakBytes) s.peakBytes = s.liveBytes;
    s.byDtype.set(pb.tag.dtype, (s.byDtype.get(pb.tag.dtype) ?? 0) + sign * pb.bytes);
    s.byPurpose.set(pb.tag.purpose, (s.byPurpose.get(pb.tag.purpose) ?? 0) + sign * pb.bytes);
  }

  /**
   * Gives a buffer back. If the batch that last used it is still open (`openBatch`), the
   * buffer waits in a deferred list until `submitted(openBatch)` is called.
   */
  release(pb: PooledBuffer, openBatch: number): void {
    if (pb.released) return;
    pb.released = true;
    this.#live.delete(pb);
    this.#count(pb, -1);
    if (pb.lastBatch >= openBatch) this.#deferred.push(pb);
    else this.#toFree(pb.buffer);
  }

  #toFree(buffer: GPUBuffer): void {
    const size = buffer.size;
    if (this.#invalid.has(buffer)) { // its creation ran out of memory: never hand it out
      this.stats.allocatedBytes -= size;
      buffer.destroy();
      return;
    }
    let list = this.#free.get(size);
    if (!list) this.#free.set(size, list = []);
    list.push(buffer);
    this.stats.pooledBytes += size;
  }

  /** Called after a batch is submitted: its deferred buffers become reusable. */
  submitted(batch: number): void {
    if (this.#deferred.length === 0) return;
    const keep: PooledBuffer[] = [];
    for (const pb of this.#deferred) {
      if (pb.lastBatch <= batch) this.#toFree(pb.buffer);
      else keep.push(pb);
    }
    this.#deferred = keep;
  }

  /** Destroys every free buffer (as `torch.cuda.empty_cache`). Live buffers stay. */
  emptyCache(): void {
    for (const list of this.#free.values()) {
      for (const b of list) {
        this.stats.allocatedBytes -= b.size;
        this.stats.pooledBytes -= b.size;
        b.destroy();
      }
    }
    this.#free.clear();
  }

  /** Destroys every buffer, live or free; the pool is unusable afterwards. */
  destroyAll(): void {
    this.emptyCache();
    for (const pb of [...this.#live, ...this.#deferred]) {
      pb.buffer.destroy();
      if (!pb.released) {
        pb.released = true;
        this.#count(pb, -1);
      }
    }
    this.#live.clear();
    this.#deferred = [];
    this.stats.allocatedBytes = 0;
    this.stats.pooledBytes = 0;
  }
}
