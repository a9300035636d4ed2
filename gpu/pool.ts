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
 * @module
 */

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
