/**
 * Creating tensors: from host values (`tensor`), filled (`zeros`, `ones`, `full`), ranges
 * (`arange`) and random (`rand`, `randn`) from a seeded counter-based generator that runs on
 * the GPU and gives the same uniform bits for the same seed on every adapter.
 *
 * @module
 */

import { dtype as toDType, type DTypeLike, float32, int32 } from "../../dtypes/mod.ts";
import { ShapeError, ValueError } from "../../errors.ts";
import { currentRuntime, type Purpose } from "../../gpu/mod.ts";
import { storageBytes } from "../../gpu/layout.ts";
import { fmtShape, provideTensorHooks, Tensor } from "../core/tensor.ts";
import { launch } from "../kernels/fusion.ts";

/** Options of the creation functions. */
export interface CreateOptions {
  /** Storage dtype (default f32; `tensor()` of an Int32Array defaults to i32). */
  dtype?: DTypeLike;
  /** Whether gradients are computed for the new tensor (a leaf). */
  requiresGrad?: boolean;
  /** What the bytes count as in `memory()` (default activations). */
  purpose?: Purpose;
}

/** Nested arrays of numbers, as `tensor()` accepts them. */
export type NestedNumbers = number | boolean | readonly NestedNumbers[];

/**
 * Checks a shape: non-negative integer sizes whose product (the element count) is an exact
 * integer. Returns a copy.
 *
 * @example
 * ```ts
 * import { ShapeError } from "../../mod.ts";
 * import { checkShape } from "../mod.ts";
 * console.log(checkShape("zeros", [2, 3])); // [2, 3]
 * try { checkShape("zeros", [2, -1]); } catch (e) { console.log(e instanceof ShapeError); } // true
 * ```
 */
export function checkShape(op: string, shape: readonly number[]): number[] {
  if (!Array.isArray(shape)) {
    throw new ShapeError(`${op}(): shape must be an array of sizes, got ${typeof shape}`);
  }
  let n = 1;
  for (const s of shape) {
    if (!Number.isSafeInteger(s) || s < 0) {
      throw new ShapeError(
        `${op}(): shape ${fmtShape(shape)} has a size that is not a non-negative integer (${s})`,
      );
    }
    n *= s;
  }
  if (!Number.isSafeInteger(n)) {
    throw new ShapeError(
      `${op}(): shape ${fmtShape(shape)} has ${n} elements, more than 2^53 (no tensor can ` +
        `hold that many); check the sizes`,
    );
  }
  return [...shape];
}

function flatten(v: NestedNumbers, shape: number[], out: number[], depth: number): void {
  if (Array.isArray(v)) {
    if (shape.length <= depth) shape.push(v.length);
    else if (shape[depth] !== v.length) {
      throw new ShapeError(
        `tensor(): ragged nested array: a list of length ${v.length} where ${
          shape[depth]
        } was expected at depth ${depth}`,
      );
    }
    for (const x of v) flatten(x as NestedNumbers, shape, out, depth + 1);
  } else {
    if (depth !== shape.length) {
      throw new ShapeError(
        `tensor(): ragged nested array: a number at depth ${depth}, lists at depth ${shape.length}`,
      );
    }
    out.push(typeof v === "boolean" ? (v ? 1 : 0) : Number(v));
  }
}

function finish(t: Tensor, opts: CreateOptions): Tensor {
  if (opts.requiresGrad) t.requiresGrad = true;
  if (opts.purpose) t.setPurpose(opts.purpose);
  return t;
}

/**
 * A tensor from numbers, nested arrays or a typed array. `shape` reshapes flat data.
 * Values are encoded to `dtype` on the host (RNE) and uploaded.
 *
 * @example
 * ```ts
 * import { tensor } from "../../mod.ts";
 * const x = tensor([[1, 2, 3], [4, 5, 6]], { dtype: "e4m3" });
 * console.log(x.shape, x.dtype); // [2, 3] "e4m3"
 * const y = tensor(new Float32Array([1, 2, 3, 4]), { shape: [2, 2] });
 * console.log(Array.from(await y.toArray())); // [1, 2, 3, 4]
 * ```
 */
export function tensor(
  values:
    | NestedNumbers
    | Float32Array
    | Float64Array
    | Int32Array
    | Uint32Array
    | Uint8Array
    | readonly number[],
  opts: CreateOptions & { shape?: readonly number[] } = {},
): Tensor {
  let flat: Float32Array;
  let shape: number[];
  let defaultDt = float32;
  if (ArrayBuffer.isView(values)) {
    const arr = values as Float32Array | Float64Array | Int32Array | Uint32Array | Uint8Array;
    if (arr instanceof Int32Array) defaultDt = int32;
    shape = [arr.length];
    flat = arr instanceof Float32Array ? arr : Float32Array.from(arr as ArrayLike<number>);
    if (arr instanceof Int32Array || arr instanceof Uint32Array) {
      return fromInts(
        arr,
        opts.shape ? checkShape("tensor", opts.shape) : shape,
        opts,
        arr instanceof Int32Array,
      );
    }
  } else {
    const out: number[] = [];
    shape = [];
    flatten(values as NestedNumbers, shape, out, 0);
    flat = Float32Array.from(out);
  }
  if (opts.shape) {
    const s = checkShape("tensor", opts.shape);
    const n = s.reduce((a, b) => a * b, 1);
    if (n !== flat.length) {
      throw new ShapeError(
        `tensor(): ${flat.length} values cannot have shape ${fmtShape(s)} (${n} elements)`,
      );
    }
    shape = s;
  }
  const dt = toDType(opts.dtype ?? defaultDt);
  const rt = currentRuntime();
  const t = Tensor.empty(shape, dt, opts.purpose);
  if (flat.length > 0) {
    const data = dt.name === "f32" ? flat : dt.encode(flat);
    rt.write(t.buffer("tensor()"), data);
    t.noteWritten(data); // inspecting it shows its values
  }
  return finish(t, opts);
}

function fromInts(
  arr: Int32Array | Uint32Array,
  shape: number[],
  opts: CreateOptions,
  signed: boolean,
): Tensor {
  const dt = toDType(opts.dtype ?? (signed ? "i32" : "u32"));
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== arr.length) {
    throw new ShapeError(`tensor(): ${arr.length} values cannot have shape ${fmtShape(shape)}`);
  }
  const t = Tensor.empty(shape, dt, opts.purpose);
  if (arr.length > 0) {
    const data = dt.kind === "int" ? arr : dt.encode(Float32Array.from(arr));
    currentRuntime().write(t.buffer("tensor()"), data);
    t.noteWritten(data);
  }
  return finish(t, opts);
}

/**
 * A tensor made from raw codes (bit patterns) of `dtype`, one per element, as `t.codes()`
 * returns them: exact for every dtype, MCF pairs included.
 *
 * @example
 * ```ts
 * import { fromCodes } from "../../mod.ts";
 * const t = fromCodes(new Uint16Array([0x3f80, 0xc000]), [2], "bf16");
 * console.log(Array.from(await t.toArray())); // [1, -2]
 * ```
 */
export function fromCodes(
  codes: Uint8Array | Uint16Array | Uint32Array,
  shape: readonly number[],
  dt: DTypeLike,
  opts: CreateOptions = {},
): Tensor {
  const d = toDType(dt);
  const s = checkShape("fromCodes", shape);
  const n = s.reduce((a, b) => a * b, 1);
  const width = codes.BYTES_PER_ELEMENT * 8;
  if (codes.length !== n || width !== d.laneBits) {
    throw new ShapeError(
      `fromCodes(): ${codes.length} codes of ${width} bits for shape ${
        fmtShape(s)
      } and dtype ${d.name} ` +
        `(needs ${n} codes of ${d.laneBits} bits)`,
    );
  }
  const t = Tensor.empty(s, d);
  if (n > 0) {
    currentRuntime().write(t.buffer("fromCodes()"), codes);
    t.noteWritten(codes);
  }
  return finish(t, opts);
}

/**
 * A tensor of `shape` filled with `value` (encoded once to the dtype).
 *
 * @example
 * ```ts
 * import { full } from "../../mod.ts";
 * console.log(Array.from(await full([2, 2], 0.1, { dtype: "bf16" }).toArray())); // [0.10009765625, ...x4]
 * ```
 */
export function full(shape: readonly number[], value: number, opts: CreateOptions = {}): Tensor {
  if (typeof value !== "number") {
    throw new ValueError(`full(): value must be a number, got ${typeof value}`);
  }
  const s = checkShape("full", shape);
  return finish(launch("full", [value], ([v]) => v, toDType(opts.dtype ?? float32), {}, s), opts);
}

/**
 * A tensor of zeros.
 *
 * @example
 * ```ts
 * import { zeros } from "../../mod.ts";
 * console.log(Array.from(await zeros([3]).toArray())); // [0, 0, 0]
 * ```
 */
export function zeros(shape: readonly number[], opts: CreateOptions = {}): Tensor {
  return full(shape, 0, opts);
}

/**
 * A tensor of ones.
 *
 * @example
 * ```ts
 * import { ones } from "../../mod.ts";
 * console.log(Array.from(await ones([2], { dtype: "e5m2" }).toArray())); // [1, 1]
 * ```
 */
export function ones(shape: readonly number[], opts: CreateOptions = {}): Tensor {
  return full(shape, 1, opts);
}

/**
 * Values `start, start + step, ...` below `end` (as `torch.arange`); `arange(n)` is 0..n-1.
 * Integer arguments give i32 unless a dtype is named.
 *
 * @example
 * ```ts
 * import { arange } from "../../mod.ts";
 * console.log(Array.from(await arange(5).toArray())); // [0, 1, 2, 3, 4]
 * console.log(Array.from(await arange(0, 1, 0.25).toArray())); // [0, 0.25, 0.5, 0.75]
 * ```
 */
export function arange(start: number, end?: number, step = 1, opts: CreateOptions = {}): Tensor {
  if (end === undefined) [start, end] = [0, start];
  if (![start, end, step].every(Number.isFinite) || step === 0) {
    throw new ValueError(
      `arange(): start, end and step must be finite and step non-zero (got ${start}, ${end}, ${step})`,
    );
  }
  const n = Math.max(0, Math.ceil((end - start) / step));
  const ints = [start, end, step].every(Number.isInteger);
  const dt = toDType(opts.dtype ?? (ints ? int32 : float32));
  // i is exact in f32 up to 2^24; larger ranges would round.
  if (n > 2 ** 24) {
    throw new ValueError(`arange(): ${n} elements exceed 2^24, the exact range of the f32 index`);
  }
  return finish(
    launch("arange", [start, step], ([s, d]) => `${s} + f32(i) * ${d}`, dt, {}, [n]),
    opts,
  );
}

let globalSeed = 0x5eed;
let globalCounter = 0;

/**
 * Sets the seed of the default random stream (as `torch.manual_seed`).
 *
 * @example
 * ```ts
 * import { manualSeed, randn } from "../../mod.ts";
 * manualSeed(1);
 * const a = await randn([3]).toArray();
 * manualSeed(1);
 * console.log(Array.from(await randn([3]).toArray()).every((v, i) => v === a[i])); // true
 * ```
 */
export function manualSeed(seed: number): void {
  if (!Number.isInteger(seed)) {
    throw new ValueError(`manualSeed(): seed must be an integer, got ${seed}`);
  }
  globalSeed = seed >>> 0;
  globalCounter = 0;
}

/** The default random stream's state (for checkpoints): its seed and how many draws were made. */
export function getRngState(): { seed: number; counter: number } {
  return { seed: globalSeed, counter: globalCounter };
}

/** Restores the default random stream's state saved by `getRngState()`. */
export function setRngState(state: { seed: number; counter: number }): void {
  globalSeed = state.seed >>> 0;
  globalCounter = state.counter;
}

/** Options of `rand` and `randn`: a seed makes the call independent of the default stream. */
export interface RandomOptions extends CreateOptions {
  /** Seed of this call's own stream; without it the default stream advances. */
  seed?: number;
}

function streamSeed(op: string, opts: RandomOptions): number {
  if (opts.seed !== undefined) {
    if (!Number.isInteger(opts.seed)) {
      throw new ValueError(`${op}(): seed must be an integer, got ${opts.seed}`);
    }
    return opts.seed >>> 0;
  }
  // each call without a seed draws a fresh sub-stream of the default stream
  return (globalSeed * 0x9e3779b1 + ++globalCounter * 0x85ebca6b) >>> 0;
}

/**
 * Uniform random values in [0, 1) with 24 random bits each.
 *
 * @example
 * ```ts
 * import { rand } from "../../mod.ts";
 * const x = Array.from(await rand([1000], { seed: 3 }).toArray());
 * console.log(Math.min(...x) >= 0 && Math.max(...x) < 1); // true
 * ```
 */
export function rand(shape: readonly number[], opts: RandomOptions = {}): Tensor {
  const s = checkShape("rand", shape);
  const seed = streamSeed("rand", opts);
  return finish(
    launch(
      "rand",
      [],
      () => `f32(ulp_rand(u.seed, i) >> 8u) * 5.9604644775390625e-8`,
      toDType(opts.dtype ?? float32),
      { seed },
      s,
    ),
    opts,
  );
}

/**
 * Standard normal random values (Box-Muller on two uniform streams).
 *
 * @example
 * ```ts
 * import { randn } from "../../mod.ts";
 * const x = Array.from(await randn([10000], { seed: 3 }).toArray());
 * const mean = x.reduce((a, b) => a + b, 0) / x.length;
 * console.log(Math.abs(mean) < 0.05); // true
 * ```
 */
export function randn(shape: readonly number[], opts: RandomOptions = {}): Tensor {
  const s = checkShape("randn", shape);
  const seed = streamSeed("randn", opts);
  const u1 = `(f32(ulp_rand(u.seed, 2u * i) >> 8u) + 1.0) * 5.9604644775390625e-8`; // (0, 1]
  const u2 = `f32(ulp_rand(u.seed, 2u * i + 1u) >> 8u) * 5.9604644775390625e-8`;
  return finish(
    launch(
      "randn",
      [],
      () => `sqrt(-2.0 * log(${u1})) * cos(6.283185307179586 * ${u2})`,
      toDType(opts.dtype ?? float32),
      { seed },
      s,
    ),
    opts,
  );
}

/** Bytes a tensor of `shape` and dtype takes on the GPU (whole words). */
export function tensorBytes(shape: readonly number[], dt: DTypeLike): number {
  return storageBytes(toDType(dt), shape.reduce((a, b) => a * b, 1));
}

provideTensorHooks({ ones: (shape, dt) => ones(shape, { dtype: dt }) });
