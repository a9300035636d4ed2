/**
 * The Tensor: a shape, a dtype and a pooled GPU buffer, its lifetime and autograd entry
 * points. The op methods a PyTorch user looks for (`add`, `sum`, `matmul`, `reshape`, ...)
 * are added by the modules that define the ops (`ops/elementwise.ts`, `ops/reduce.ts`,
 * `ops/matmul.ts`, `ops/shape_ops.ts`, `ops/cast.ts`) through `installMethods`, so this
 * layer imports none of them at run time.
 *
 * @module
 */

import type { DType } from "../../dtypes/mod.ts";
import { DeviceError, DTypeError, ValueError } from "../../errors.ts";
import { currentRuntime, type PooledBuffer, type Purpose, type Runtime } from "../../gpu/mod.ts";
import { storageBytes } from "../../gpu/layout.ts";
import { keep, track } from "./scope.ts";
import { forget, noteBirth, noteStep, watch } from "./_leaks.ts";
import { readChecked } from "./_id_check.ts";
import { noGrad } from "../../autograd/graph.ts";
import { type BackwardOptions, runBackward } from "../../autograd/backward.ts";
// The layers above add Tensor's op methods when they load (installMethods); these type-only
// imports declare them on the class (JSR forbids module augmentation). Nothing runs up.
import type { LazyDef } from "../kernels/fusion.ts";
import type { CastMethods } from "../ops/cast.ts";
import type { ElementwiseMethods } from "../ops/elementwise.ts";
import type { ReduceMethods } from "../ops/reduce.ts";
import type { MatmulMethods } from "../ops/matmul.ts";
import type { ShapeMethods } from "../ops/shape_ops.ts";

/** A node of the autograd graph: the op's inputs and how to push a gradient back to them. */
export interface GradNode {
  /** The op's name, for errors. */
  readonly op: string;
  /** The inputs the gradient flows to. */
  readonly inputs: readonly Tensor[];
  /** Given the output's gradient, the gradient of each input (null where none flows). */
  readonly backward: (grad: Tensor) => (Tensor | null)[];
}

/** A number, a tensor, or something `tensor()` accepts: an operand of binary ops. */
export type Operand = Tensor | number;

let nextId = 1;

/** Formats a shape as `[2,3]`. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}

/** Whether two shapes are equal, size by size. @internal */
export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, d) => v === b[d]);
}

/** The op methods of a Tensor, added by the op modules (see `installMethods`). */
export interface Tensor
  extends ElementwiseMethods, CastMethods, ReduceMethods, MatmulMethods, ShapeMethods {}

/**
 * An n-dimensional array on the GPU. Create one with `tensor()`, `zeros()`, `randn()` and
 * the other creation functions; read it with `await t.toArray()`.
 *
 * @example
 * ```ts
 * import { tensor } from "../../mod.ts";
 * const x = tensor([[1, 2], [3, 4]], { dtype: "bf16" });
 * console.log(x.shape, x.dtype, x.size); // [2, 2] "bf16" 4
 * console.log(Array.from(await x.mul(x).sum().toArray())); // [30]
 * ```
 */
export class Tensor {
  /** The sizes of the dimensions. */
  readonly shape: readonly number[];
  /** The dtype descriptor. */
  readonly dt: DType;
  /** The number of elements. */
  readonly size: number;
  /** A serial number, unique in the process. */
  readonly id: number;
  /** Whether gradients are computed for this tensor. */
  requiresGrad = false;
  /** The gradient accumulated by `backward()`, or null. */
  grad: Tensor | null = null;
  /**
   * The autograd node that made this tensor, or null for leaves.
   *
   * @ignore
   */
  node: GradNode | null = null;
  /**
   * Whether a backward pass released this tensor's node (see `backward()`).
   *
   * @ignore
   */
  graphReleased = false;
  /** Whether this tensor is a model parameter (see `Parameter` in nn/). */
  isParameter = false;
  /** The dtype `.grad` is stored in; null: this tensor's own dtype. */
  gradDtype: DType | null = null;
  /**
   * The deferred elementwise kernel that computes this tensor, while it is not recorded yet
   * (see fusion.ts); null once its values are (or will be) in the buffer.
   *
   * @ignore
   */
  lazy: LazyDef | null = null;
  #buf: PooledBuffer | null;
  #rt: Runtime;
  /** Values known on the host (all of a small tensor, else the ends), for inspect; or null. */
  #preview: Preview | null = null;
  /** Bumped whenever the storage is handed out (it may be written): older previews are void. */
  #version = 0;

  /**
   * Wraps a buffer that holds `shape` elements of `dt`. Use the creation functions instead.
   *
   * @ignore
   */
  constructor(rt: Runtime, buf: PooledBuffer, shape: readonly number[], dt: DType) {
    this.#rt = rt;
    this.#buf = buf;
    this.shape = Object.freeze([...shape]);
    this.dt = dt;
    this.size = shape.reduce((a, b) => a * b, 1);
    this.id = nextId++;
    track(this);
    watch(this, rt, buf); // freed if it becomes unreachable without dispose()
    noteBirth(this);
  }

  /**
   * Allocates an uninitialised tensor.
   *
   * @ignore
   */
  static empty(shape: readonly number[], dt: DType, purpose: Purpose = "activations"): Tensor {
    const rt = currentRuntime();
    const size = shape.reduce((a, b) => a * b, 1);
    const buf = rt.alloc(storageBytes(dt, size), { dtype: dt.name, purpose });
    return new Tensor(rt, buf, shape, dt);
  }

  /** The dtype's name (`"f32"`, `"bf16"`, `"e4m3"`, ...). */
  get dtype(): string {
    return this.dt.name;
  }

  /** The number of dimensions. */
  get ndim(): number {
    return this.shape.length;
  }

  /** Whether `dispose()` was called. */
  get disposed(): boolean {
    return this.#buf === null;
  }

  /**
   * The runtime that owns the buffer.
   *
   * @ignore
   */
  get runtime(): Runtime {
    return this.#rt;
  }

  /**
   * The storage, checked for use after dispose; deferred work that computes it is recorded
   * first.
   *
   * @ignore
   */
  buffer(op: string): PooledBuffer {
    const buf = this.checkUsable(op);
    if (this.lazy !== null) hooks.materialize(this);
    return buf;
  }

  /**
   * Records the work that computes this tensor now and returns it. Elementwise ops are
   * deferred so that chains of them fuse into one kernel; they run when something needs
   * their values (another op, a read, this call). Values are the same either way; call it
   * before timing GPU work (then `await getRuntime()` and `sync()`).
   *
   * @example
   * ```ts
   * import { tensor } from "../../mod.ts";
   * const y = tensor([1, 2]).mul(3).add(1).realize(); // one kernel, recorded now
   * console.log(Array.from(await y.toArray())); // [4, 7]
   * ```
   */
  realize(): this {
    this.buffer("realize()");
    return this;
  }

  /**
   * Throws the error `buffer()` would throw (use after dispose, lost device) without
   * recording deferred work; the storage.
   *
   * @ignore
   */
  checkUsable(op: string): PooledBuffer {
    this.#version++;
    this.#preview = null; // whoever takes the storage may write it
    if (this.#buf === null) {
      throw new ValueError(
        `${op}: tensor of shape ${fmtShape(this.shape)} and dtype ${this.dtype} was used after ` +
          `dispose(); keep it (keep(t), or return it from tidy) while you still need it`,
      );
    }
    if (this.#rt.lost) {
      throw new DeviceError(
        `${op}: tensor of shape ${fmtShape(this.shape)} and dtype ${this.dtype} lives on a GPU ` +
          `device that was lost or disposed (${this.#rt.lostReason}); its values are gone: ` +
          `recreate it on the current device (await ready() first)`,
      );
    }
    return this.#buf;
  }

  /** Frees the GPU storage now. Safe to call twice. */
  dispose(): void {
    if (this.#buf !== null) {
      forget(this);
      let kept = false;
      try {
        kept = hooks.released(this, this.#buf); // kept while deferred work still reads it
      } finally {
        if (!kept && !this.#rt.lost) this.#rt.free(this.#buf);
        this.#buf = null;
        this.node = null;
      }
    }
  }

  /** `using t = ...` frees the tensor at the end of the block. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Counts this tensor's bytes under another purpose in `memory()` (params, grads, ...). */
  setPurpose(purpose: Purpose): this {
    const preview = this.#preview; // a new tag changes no value
    this.#rt.retag(this.checkUsable("setPurpose"), { dtype: this.dtype, purpose });
    this.#preview = preview;
    return this;
  }

  /**
   * The values, flat in row-major order: a Float32Array for float dtypes (decoded), an
   * Int32Array or Uint32Array for integers, a Uint8Array of 0/1 for bool. They are the values
   * at the call: work recorded after it (an optimizer step that updates this tensor in place)
   * does not change what the promise gives, so a read may be awaited after the next step is
   * recorded.
   */
  async toArray(): Promise<Float32Array | Int32Array | Uint32Array | Uint8Array> {
    const buf = this.buffer("toArray()");
    const version = this.#version;
    const n = this.size;
    const bytes = await readChecked(this.#rt, buf, 0, storageBytes(this.dt, n));
    const values = decodeBytes(this.dt, bytes, n);
    // the values as read, unless the storage was handed out again meanwhile
    if (this.#version === version) this.#preview = previewOf(values);
    return values;
  }

  /**
   * Records the values just written from the host (`data`, as `rt.write` got it: f32 values,
   * integers, or codes of the dtype), so that inspecting a new tensor shows them.
   *
   * @ignore
   */
  noteWritten(data: ArrayLike<number> & ArrayBufferView): void {
    const n = this.size;
    if (data.length !== n) return;
    const at = n <= PREVIEW_ALL ? [...Array(n).keys()] : [0, 1, 2, n - 3, n - 2, n - 1];
    // the same element type (f32 values, integers, or codes of the dtype), just those elements
    const Ctor = data.constructor as new (v: number[]) => ArrayLike<number> & ArrayBufferView;
    const sub = new Ctor(at.map((i) => data[i]));
    const values = Array.from(decodeBytes(this.dt, sub.buffer as ArrayBuffer, at.length));
    this.#preview = n <= PREVIEW_ALL
      ? { head: values, tail: null }
      : { head: values.slice(0, 3), tail: values.slice(3) };
  }

  /** The raw codes (bit patterns) of the values, one per element. */
  async codes(): Promise<Uint8Array | Uint16Array | Uint32Array> {
    const bytes = await readChecked(
      this.#rt,
      this.buffer("codes()"),
      0,
      storageBytes(this.dt, this.size),
    );
    const n = this.size;
    return this.dt.laneBits === 8
      ? new Uint8Array(bytes, 0, n)
      : this.dt.laneBits === 16
      ? new Uint16Array(bytes, 0, n)
      : new Uint32Array(bytes, 0, n);
  }

  /** The value of a one-element tensor, as a number. */
  async item(): Promise<number> {
    if (this.size !== 1) {
      throw new ValueError(
        `item(): tensor of shape ${
          fmtShape(this.shape)
        } has ${this.size} elements; item() needs exactly one`,
      );
    }
    return (await this.toArray())[0];
  }

  /** The values as nested arrays of numbers, shaped like the tensor. */
  async toNested(): Promise<unknown> {
    const flat = Array.from(await this.toArray());
    if (this.ndim === 0) return flat[0];
    const build = (dim: number, off: number): unknown[] => {
      const n = this.shape[dim];
      const stride = this.shape.slice(dim + 1).reduce((a, b) => a * b, 1);
      return Array.from(
        { length: n },
        (_, i) => dim === this.ndim - 1 ? flat[off + i] : build(dim + 1, off + i * stride),
      );
    };
    return build(0, 0);
  }

  /**
   * A description as PyTorch's repr gives it: the values (all of a tensor of up to 12
   * elements, nested by shape; else the first and last three), the shape, the dtype, and
   * `requiresGrad`/`gradFn` when set. The values are those known on the host (the ones it was
   * made from, or the last read); values still on the GPU only are not waited for (reading
   * is asynchronous): the text says to `await t.toArray()`. `console.log(t)` prints this.
   *
   * @example
   * ```ts
   * import { tensor } from "../../mod.ts";
   * const x = tensor([[1, 2], [3, 4]], { dtype: "bf16" });
   * console.log(String(x)); // "Tensor([[1, 2], [3, 4]], shape=[2,2], dtype=bf16)"
   * const y = x.mul(1.5);
   * console.log(String(y)); // "Tensor(shape=[2,2], dtype=bf16, values on the GPU: await t.toArray())"
   * await y.toArray();
   * console.log(String(y)); // "Tensor([[1.5, 3], [4.5, 6]], shape=[2,2], dtype=bf16)"
   * ```
   */
  toString(): string {
    const attrs = [`shape=${fmtShape(this.shape)}`, `dtype=${this.dtype}`];
    if (this.requiresGrad) attrs.push("requiresGrad=true");
    if (this.node) attrs.push(`gradFn=${this.node.op}`);
    if (this.disposed) return `Tensor(${[...attrs, "disposed"].join(", ")})`;
    const p = this.#preview;
    if (p === null) {
      return `Tensor(${attrs.join(", ")}, values on the GPU: await t.toArray())`;
    }
    const values = p.tail === null
      ? nested(p.head, this.shape)
      : `[${[...p.head.map(fmtValue), "…", ...p.tail.map(fmtValue)].join(", ")}]`;
    return `Tensor(${values}, ${attrs.join(", ")})`;
  }

  /** What `console.log(t)` and Deno's inspect print: `toString()`. */
  [Symbol.for("Deno.customInspect")](): string {
    return this.toString();
  }

  /** What Node's `util.inspect` prints: `toString()`. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  // ---- autograd ---------------------------------------------------------------------------------

  /**
   * Computes the gradient of this tensor with respect to every leaf that requires one, and
   * adds it to their `.grad` (stored in the leaf's dtype, or its `gradDtype`). A non-scalar
   * tensor needs the seed gradient `grad`, as in PyTorch. The graph is released afterwards:
   * a second `backward()` through it throws, unless the first one was given
   * `{ retainGraph: true }`.
   *
   * @example
   * ```ts
   * import { tensor } from "../../mod.ts";
   * const x = tensor([1, 2], { requiresGrad: true });
   * const y = x.square().sum();
   * y.backward(undefined, { retainGraph: true });
   * y.backward(); // through the same graph again: gradients add up
   * console.log(Array.from(await x.grad!.toArray())); // [4, 8]
   * ```
   */
  backward(grad?: Tensor, opts: BackwardOptions = {}): void {
    if (!this.requiresGrad) {
      throw new ValueError(
        `backward(): tensor of shape ${
          fmtShape(this.shape)
        } (${this.dtype}) does not require grad; ` +
          `create its leaves with requiresGrad: true and do not compute it under noGrad()`,
      );
    }
    let seed: Tensor;
    if (grad === undefined) {
      if (this.size !== 1) {
        throw new ValueError(
          `backward(): a gradient can be created implicitly only for one-element outputs, this one has ` +
            `shape ${fmtShape(this.shape)}; pass the seed gradient: t.backward(g)`,
        );
      }
      seed = noGrad(() => hooks.ones(this.shape, this.dt));
    } else {
      if (grad.size !== this.size || grad.shape.some((v, i) => v !== this.shape[i])) {
        throw new ValueError(
          `backward(): seed gradient of shape ${fmtShape(grad.shape)} does not match the output's ${
            fmtShape(this.shape)
          }`,
        );
      }
      // the traversal owns its seed: a private copy (a buffer copy when no cast is needed)
      seed = grad.dt === this.dt
        ? Tensor.empty(grad.shape, grad.dt).copy_(grad)
        : noGrad(() => grad.cast(this.dt));
    }
    runBackward<Tensor>(this, seed, {
      add: (a, b) => a.add(b),
      clone: (a) => Tensor.empty(a.shape, a.dt).copy_(a),
      accumulate: (leaf, g) => {
        const dt = leaf.gradDtype ?? leaf.dt;
        let gc = g.dt === dt ? g : g.cast(dt);
        if (gc !== g) g.dispose();
        if (leaf.grad !== null && !leaf.grad.disposed) {
          const sum = leaf.grad.add(gc).cast(dt);
          gc.dispose();
          leaf.grad.dispose();
          gc = sum;
        }
        leaf.grad = keep(gc);
        gc.setPurpose("grads");
        gc.realize(); // a gradient is final: compute it now, freeing what it was fused from
      },
    }, opts);
    noteStep(this.#rt.memory().liveBuffers); // one training step: are live buffers growing?
  }

  /** Frees `.grad` and sets it to null. */
  zeroGrad(): void {
    this.grad?.dispose();
    this.grad = null;
  }

  /** A copy of this tensor that is not part of the graph (requiresGrad false). */
  detach(): Tensor {
    return noGrad(() => this.cast(this.dt));
  }

  /**
   * Copies the values of `src` (same number of elements and the same dtype; with
   * `{ cast: true }` any dtype, cast with RNE) into this tensor's storage, in place, outside
   * the graph. Returns this.
   */
  copy_(src: Tensor, opts: { cast?: boolean } = {}): this {
    if (src.size !== this.size) {
      throw new ValueError(
        `copy_(): source of shape ${fmtShape(src.shape)} has ${src.size} elements, destination ${
          fmtShape(this.shape)
        } has ${this.size}`,
      );
    }
    if (src.dt.name !== this.dt.name && !opts.cast) {
      throw new DTypeError(
        `copy_(): source of dtype ${src.dt.name} differs from the destination's ${this.dt.name}` +
          ` (shape ${fmtShape(this.shape)}); pass { cast: true } to convert, or cast() it first`,
      );
    }
    const dst = this.buffer("copy_()");
    const cast = src.dt === this.dt ? src : noGrad(() => src.cast(this.dt));
    this.#rt.copy(cast.buffer("copy_()"), 0, dst, 0, storageBytes(this.dt, this.size));
    if (cast !== src) cast.dispose();
    return this;
  }

  /** Sets `requiresGrad` and returns this tensor (as PyTorch's `requires_grad_`). */
  requiresGrad_(flag = true): this {
    this.requiresGrad = flag;
    return this;
  }
}

/** The values a tensor shows: all when small (tail null), else the first and last three. */
interface Preview {
  head: number[];
  tail: number[] | null;
}

const PREVIEW_ALL = 12;

function previewOf(values: ArrayLike<number>): Preview {
  const n = values.length;
  if (n <= PREVIEW_ALL) return { head: Array.from(values), tail: null };
  return {
    head: [values[0], values[1], values[2]],
    tail: [values[n - 3], values[n - 2], values[n - 1]],
  };
}

/** Flat element values from the bytes of a buffer, as `toArray()` returns them. */
function decodeBytes(
  d: DType,
  bytes: ArrayBuffer,
  n: number,
): Float32Array | Int32Array | Uint32Array | Uint8Array {
  if (d.name === "f32") return new Float32Array(bytes, 0, n);
  if (d.kind === "int") {
    return d.signed ? new Int32Array(bytes, 0, n) : new Uint32Array(bytes, 0, n);
  }
  if (d.kind === "bool") return Uint8Array.from(new Uint32Array(bytes, 0, n), (v) => (v ? 1 : 0));
  const codes = d.laneBits === 8
    ? new Uint8Array(bytes, 0, n)
    : d.laneBits === 16
    ? new Uint16Array(bytes, 0, n)
    : new Uint32Array(bytes, 0, n);
  return d.decode(codes);
}

/** A value as the repr shows it: integers as they are, others with 4 significant digits. */
function fmtValue(v: number): string {
  if (Number.isInteger(v) || !Number.isFinite(v)) return Object.is(v, -0) ? "-0" : String(v);
  return String(Number(v.toPrecision(4)));
}

/** Values nested by shape: `[[1, 2], [3, 4]]`; a 0-d tensor's one value bare. */
function nested(values: number[], shape: readonly number[]): string {
  if (shape.length === 0) return fmtValue(values[0]);
  const build = (dim: number, off: number): string => {
    const stride = shape.slice(dim + 1).reduce((a, b) => a * b, 1);
    const parts = Array.from(
      { length: shape[dim] },
      (_, i) =>
        dim === shape.length - 1 ? fmtValue(values[off + i]) : build(dim + 1, off + i * stride),
    );
    return `[${parts.join(", ")}]`;
  };
  return build(0, 0);
}

/** Whether `v` is a Tensor. */
export function isTensor(v: unknown): v is Tensor {
  return v instanceof Tensor;
}

/** What the layers above provide to the Tensor class, registered when they load. @internal */
export interface TensorHooks {
  /** Records the deferred kernel of a pending tensor (`kernels/fusion.ts`). */
  materialize(t: Tensor): void;
  /** Whether deferred work keeps a disposed tensor's buffer (`kernels/fusion.ts`). */
  released(t: Tensor, buf: PooledBuffer): boolean;
  /** A tensor of ones (`ops/creation.ts`): the seed of `backward()`. */
  ones(shape: readonly number[], dt: DType): Tensor;
}

const missing = (what: string) => () => {
  throw new Error(`internal: ${what} is not registered; import the library through mod.ts`);
};
const hooks: TensorHooks = {
  materialize: () => {},
  released: () => false,
  ones: missing("ops/creation.ts"),
};

/** Registers what a layer above provides to the Tensor class. @internal */
export function provideTensorHooks(h: Partial<TensorHooks>): void {
  Object.assign(hooks, h);
}

/**
 * Adds op methods to `Tensor` (each op module calls it once when it loads, with the methods
 * its `...Methods` type declares on the class); a name defined twice is an error. @internal
 */
export function installMethods(methods: object, from: string): void {
  for (const [name, fn] of Object.entries(methods)) {
    if (Object.hasOwn(Tensor.prototype, name)) {
      throw new Error(`internal: Tensor.${name} is defined twice (again by ${from})`);
    }
    Object.defineProperty(Tensor.prototype, name, {
      value: fn,
      writable: true,
      configurable: true,
      enumerable: false,
    });
  }
}
