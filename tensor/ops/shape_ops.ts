/**
 * Shape ops: reshape, transpose, permute, slice, concat, indexSelect (embedding lookup) and
 * gather, with their gradients.
 *
 * Tensors are always contiguous (row-major), so every op makes a new tensor that owns its
 * buffer. `reshape` is a buffer-to-buffer copy (the bytes do not change). The others are
 * gathers that move CODES, never values: one kernel invocation per output u32 word computes,
 * for each of the word's lanes (2 for bf16, 4 for e4m3, ...), the index of the source element
 * and copies its code. Every dtype is read and written as `array<u32>` (memory is the same
 * on every adapter, see `layout.ts`), so one generic kernel serves all of them, the result is
 * bit-exact, and no two invocations write the same word.
 *
 * Gradients: reshape, transpose and permute move the gradient back; slice pads it with zeros
 * (a gather, no atomics); concat slices it; indexSelect and gather scatter-add it, in f32 and
 * in a fixed order (deterministic: duplicates in the index accumulate, as embedding
 * gradients need), encoded once to the input's dtype.
 *
 * Index VALUES out of range cannot be seen before the kernel runs: indexSelect and gather
 * clamp them to `[0, size - 1]` on the GPU (the gradient uses the same clamped index).
 *
 * Tensors larger than one storage binding (kernels are programs of `gpu/program.ts`): the
 * output, the index and the gradient sums' outputs are bound as windows of the elements each
 * piece of the grid writes or reads. A source read anywhere (an embedding table, a tensor
 * transposed or sliced) that is too large is read one window at a time: one run per window,
 * each writing the lanes whose source lies in it and keeping the codes other runs wrote. A
 * gradient too large is summed one window at a time in element order, the partial sums kept
 * in f32 between runs, so every sum adds the same terms in the same order (bit-identical).
 *
 * @module
 */

import { type DType, dtype, float32, isFloat } from "../../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../../errors.ts";
import {
  currentRuntime,
  type PooledBuffer,
  program,
  type Runtime,
  stridedRange,
  type UniformSpec,
} from "../../gpu/mod.ts";
import { attach } from "../../autograd/graph.ts";
import { type Layout, layoutOf, storageBytes } from "../../gpu/layout.ts";
import { fmtShape, installMethods, Tensor } from "../core/tensor.ts";
import { sumTo, windowElems } from "./reduce.ts";
import { zeros } from "./creation.ts";

/** Largest rank of permute, slice and gather (the uniform block holds 8 sizes per vector). */
const MAX_RANK = 8;
/** Inputs one concat kernel binds (8 storage buffers per stage is WebGPU's default limit). */
const CONCAT_INPUTS = 7;
const WG = 256;
const NONE = 0xffffffff;

// ---- helpers ---------------------------------------------------------------------------------

const prod = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

function stridesOf(shape: readonly number[]): number[] {
  const st = new Array(shape.length).fill(1);
  for (let d = shape.length - 2; d >= 0; d--) st[d] = st[d + 1] * shape[d + 1];
  return st;
}

function checkTensor(op: string, x: unknown, what = "x"): Tensor {
  if (!(x instanceof Tensor)) {
    throw new ValueError(
      `${op}(): ${what} must be a Tensor, got ${x === null ? "null" : typeof x}`,
    );
  }
  x.buffer(`${op}()`); // disposed or lost: throw now
  return x;
}

/** `axis` in `[-rank, rank)` made non-negative; a 0-d tensor accepts -1 and 0 (as PyTorch). */
function normAxis(op: string, axis: number, x: Tensor, what = "dimension"): number {
  const r = Math.max(x.ndim, 1);
  if (!Number.isInteger(axis) || axis < -r || axis >= r) {
    throw new ShapeError(
      `${op}(): ${what} ${axis} is out of range for a tensor of shape ${fmtShape(x.shape)} ` +
        `(rank ${x.ndim}; expected an integer in [${-r}, ${r - 1}])`,
    );
  }
  return axis < 0 ? axis + r : axis;
}

function checkRank(op: string, x: Tensor): void {
  if (x.ndim > MAX_RANK) {
    throw new ShapeError(
      `${op}(): rank ${x.ndim} (shape ${fmtShape(x.shape)}, ${x.dtype}) exceeds the maximum of ` +
        `${MAX_RANK}; reshape to fewer dimensions first`,
    );
  }
}

function checkIndex(op: string, x: Tensor, index: unknown): Tensor {
  const ix = checkTensor(op, index, "index");
  if (ix.dt.kind !== "int") {
    throw new DTypeError(
      `${op}(): index must be an integer tensor (i32 or u32), got ${ix.dtype} of shape ` +
        `${fmtShape(ix.shape)} (x: ${fmtShape(x.shape)} ${x.dtype}); cast it with .cast("i32")`,
    );
  }
  return ix;
}

/**
 * WGSL setting the lanes of word `w` (elements `i0 + l`, `i0 = w * lanes`) with `set(c, i)`,
 * unrolled: constant vector indices keep the word's vector in registers.
 */
function lanesOf(lanes: number, set: (c: string, i: string) => string, declare = true): string {
  let out = declare ? `  let i0 = w * ${lanes}u;\n` : "";
  for (let l = 0; l < lanes; l++) {
    const i = l === 0 ? "i0" : `i0 + ${l}u`;
    out += l === 0 ? `  ${set("xyzw"[l], i)}\n` : `  if (${i} < u.n) { ${set("xyzw"[l], i)} }\n`;
  }
  return out;
}

/** Whether a buffer is larger than one storage binding (it is then bound as windows). */
function isBig(rt: Runtime, b: PooledBuffer): boolean {
  return Math.ceil(b.bytes / 4) * 4 > rt.maxBindingBytes;
}

/**
 * Windows `[s0, s1)` of `n` elements, in order, that fit one storage binding for every layout
 * in `ls` (tensors indexed alike): whole words, so that a window's offset and end need no
 * more than the alignment's slack.
 */
function windows(rt: Runtime, n: number, ls: readonly Layout[]): [number, number][] {
  const align = rt.info.limits.minStorageBufferOffsetAlignment ?? 256;
  const cap = Math.min(...ls.map((l) => {
    const bytes = l.elem === "f16" ? 2 : 4;
    return Math.floor((rt.maxBindingBytes - align - 4) / bytes) * l.lanes;
  }));
  const out: [number, number][] = [];
  for (let s0 = 0; s0 < n; s0 += cap) out.push([s0, Math.min(n, s0 + cap)]);
  return out;
}

/** The index binding of a gather: the tensor and the elements output elements [e0, e1) read. */
interface IndexInput {
  readonly t: Tensor;
  readonly range: (e0: number, e1: number) => [number, number];
}

/** WGSL `fn ix(l: u32) -> u32`: index value `l` clamped to `[0, u.A - 1]`. */
function indexReader(ix: Tensor): string {
  return ix.dt.signed
    ? `fn ix(l: u32) -> u32 { return u32(clamp(bitcast<i32>(get_idx(l)), 0i, i32(u.A) - 1i)); }\n`
    : `fn ix(l: u32) -> u32 { return min(get_idx(l), u.A - 1u); }\n`;
}

/** A kernel that moves codes: see `moveCodes`. */
interface Move {
  readonly op: string;
  /** What `at` depends on beyond the bindings and uniforms (for the program cache). */
  readonly key: string;
  readonly out: Tensor;
  /** Tensors of out's dtype whose codes are moved (bindings `s0`, `s1`, ...). */
  readonly sources: readonly Tensor[];
  readonly index?: IndexInput;
  /** The op's uniforms (besides `n`) and their values. */
  readonly uniforms: readonly UniformSpec[];
  readonly values: Readonly<Record<string, number | readonly number[]>>;
  /**
   * WGSL defining `fn at(i: u32) -> vec2<u32>`: the source (`k` of `s<k>`, or NONE for a
   * zero) and the element whose code output element `i` takes.
   */
  readonly at: string;
}

/**
 * Records the kernel that writes `out` one word per invocation, each lane the code of the
 * source element `at(i)` names (bit-exact for every dtype: codes move, values are never
 * decoded). Sources are viewed as u32 words whatever the adapter. The output is bound in
 * windows of the elements each piece writes; a source larger than one binding (an embedding
 * table, a large tensor sliced or transposed) is read one window at a time, one run per
 * window, each run writing the lanes whose source element lies in its window and keeping the
 * codes the other runs wrote.
 */
function moveCodes(m: Move): void {
  const n = m.out.size;
  if (n === 0) return;
  const rt = currentRuntime();
  const l = layoutOf(m.out.dt, null);
  const bufs = m.sources.map((t) => t.buffer(m.op));
  const big = bufs.map((b) => isBig(rt, b));
  const merge = big.some((b) => b);
  const S = m.sources.length;
  let pick = "";
  m.sources.forEach((_, k) => {
    const inWin = merge ? ` && a.y >= u_wlo(${k}u) && a.y < u_whi(${k}u)` : "";
    pick += `  if (a.x == ${k}u${inWin}) { return code_s${k}(a.y); }\n`;
  });
  pick += merge
    ? `  if (a.x == ${NONE}u) { return 0u; }\n  return code_out(i);\n`
    : "  return 0u;\n";
  const p = program(rt, `shape|${m.op}|${m.key}|${merge}`, {
    label: m.op,
    bindings: [
      ...m.sources.map((t, k) => ({
        name: `s${k}`,
        type: layoutOf(t.dt, null),
        access: "read" as const,
      })),
      ...(m.index
        ? [{ name: "idx", type: layoutOf(m.index.t.dt, null), access: "read" as const }]
        : []),
      { name: "out", type: l, access: "read_write" as const },
    ],
    uniforms: [
      { name: "n", type: "u32" },
      ...m.uniforms,
      ...(merge
        ? [{ name: "wlo", type: "u32", length: S }, {
          name: "whi",
          type: "u32",
          length: S,
        }] as const
        : []),
    ],
    workgroupSize: WG,
  }, () =>
    `${m.index ? indexReader(m.index.t) : ""}${m.at}
fn pick(i: u32) -> u32 {
  let a = at(i);
${pick}}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let w = wg * ${WG}u + li;
  if (w * ${l.lanes}u >= u.n) { return; }
  var c = vec4<u32>(0u);
${lanesOf(l.lanes, (c, i) => `c.${c} = pick(${i});`)}  stc_out(w, c);
}`);
  const per = WG * l.lanes;
  const own = (g0: number, g1: number): [number, number] => [g0 * per, Math.min(n, g1 * per)];
  const buffers: Record<string, PooledBuffer> = { out: m.out.buffer(m.op) };
  bufs.forEach((b, k) => (buffers[`s${k}`] = b));
  const ranges: Record<string, (g0: number, g1: number) => readonly [number, number]> = {
    out: own,
  };
  if (m.index) {
    const r = m.index.range;
    buffers.idx = m.index.t.buffer(m.op);
    ranges.idx = (g0, g1) => r(...own(g0, g1));
  }
  const groups = Math.ceil(Math.ceil(n / l.lanes) / WG);
  if (!merge) {
    p.run({ buffers, uniforms: { n, ...m.values }, groups, ranges });
    return;
  }
  m.sources.forEach((t, k) => {
    if (!big[k]) return;
    for (const [s0, s1] of windows(rt, t.size, [layoutOf(t.dt, null)])) {
      const wlo = m.sources.map((_, j) => (j === k ? s0 : 0));
      const whi = m.sources.map((x, j) => (j === k ? s1 : big[j] ? 0 : x.size));
      m.sources.forEach((_, j) => {
        if (big[j]) ranges[`s${j}`] = () => [wlo[j], whi[j]];
      });
      p.run({ buffers, uniforms: { n, ...m.values, wlo, whi }, groups, ranges });
    }
  });
}

/** A kernel that sums gradient values: see `sumValues`. */
interface Sum {
  readonly op: string;
  readonly key: string;
  readonly out: Tensor;
  /** The gradient read (binding `g`), in element order within each output element's sum. */
  readonly g: Tensor;
  /** The index tensor, read at the same elements as `g` (gather) or not at all. */
  readonly index?: Tensor;
  /** Raw u32 buffers the sum walks (bound whole), by binding name. */
  readonly raw?: Readonly<Record<string, PooledBuffer>>;
  /** Elements of `g` (and the index) that output elements [e0, e1) read. */
  readonly range: (e0: number, e1: number) => [number, number];
  /** Other layout bindings read at output-aligned elements, with their ranges. */
  readonly aligned?: Readonly<
    Record<
      string,
      { t: PooledBuffer; l: Layout; range: (e0: number, e1: number) => [number, number] }
    >
  >;
  readonly uniforms: readonly UniformSpec[];
  readonly values: Readonly<Record<string, number | readonly number[]>>;
  /**
   * WGSL defining `fn value(i: u32) -> f32`: the sum for output element `i`, started at
   * `start(i)`, adding `ldg(e)` in increasing `e` for the `e` with `take(e)`.
   */
  readonly value: string;
}

/**
 * Records the kernel that writes the f32 sums `value(i)` of gradient elements into `out`,
 * encoded once (RNE) to its dtype, one word per invocation. A gradient larger than one
 * binding is read one window at a time in increasing element order, the partial sums kept
 * in f32 between runs: each sum adds the same terms in the same order, so the result is the
 * same bit for bit.
 */
function sumValues(s: Sum): void {
  const n = s.out.size;
  if (n === 0) return;
  const rt = currentRuntime();
  const outL = layoutOf(s.out.dt, rt);
  const gL = layoutOf(s.g.dt, rt);
  const iL = s.index ? layoutOf(s.index.dt, null) : null;
  const gb = s.g.buffer(s.op), ib = s.index?.buffer(s.op);
  const split = isBig(rt, gb) || (ib !== undefined && isBig(rt, ib));
  const raw = Object.entries(s.raw ?? {});
  const aligned = Object.entries(s.aligned ?? {});
  const p = program(rt, `shape|${s.op}|${s.key}|${split}`, {
    label: s.op,
    bindings: [
      { name: "g", type: gL, access: "read" as const },
      ...(iL ? [{ name: "idx", type: iL, access: "read" as const }] : []),
      ...aligned.map(([name, a]) => ({ name, type: a.l, access: "read" as const })),
      ...raw.map(([name]) => ({ name, type: "u32" as const, access: "read" as const })),
      ...(split
        ? [{ name: "acc", type: layoutOf(float32, rt), access: "read_write" as const }]
        : []),
      { name: "out", type: outL, access: "read_write" as const },
    ],
    uniforms: [
      { name: "n", type: "u32" },
      ...s.uniforms,
      ...(split
        ? [
          { name: "glo", type: "u32" },
          { name: "ghi", type: "u32" },
          { name: "cont", type: "u32" },
          { name: "last", type: "u32" },
        ] as const
        : []),
    ],
    workgroupSize: WG,
  }, () => {
    const store = split
      ? `  if (u.last != 0u) { st_out(w, v, vec4<u32>(0u)); return; }
${lanesOf(outL.lanes, (c, i) => `put_acc(${i}, bitcast<u32>(v.${c}));`, false)}`
      : "  st_out(w, v, vec4<u32>(0u));";
    return `${s.index ? indexReader(s.index) : ""}
fn ldg(e: u32) -> f32 { return ld_g(e); }
fn take(e: u32) -> bool { return ${split ? "e >= u.glo && e < u.ghi" : "true"}; }
fn start(i: u32) -> f32 { return ${split ? "select(0.0, ld_acc(i), u.cont != 0u)" : "0.0"}; }
${s.value}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let w = wg * ${WG}u + li;
  if (w * ${outL.lanes}u >= u.n) { return; }
  var v = vec4<f32>(0.0);
${lanesOf(outL.lanes, (c, i) => `v.${c} = value(${i});`)}${store}
}`;
  });
  const per = WG * outL.lanes;
  const own = (g0: number, g1: number): [number, number] => [g0 * per, Math.min(n, g1 * per)];
  const buffers: Record<string, PooledBuffer> = { g: gb, out: s.out.buffer(s.op) };
  const ranges: Record<string, (g0: number, g1: number) => readonly [number, number]> = {
    out: own,
  };
  for (const [name, b] of raw) buffers[name] = b;
  for (const [name, a] of aligned) {
    buffers[name] = a.t;
    ranges[name] = (g0, g1) => a.range(...own(g0, g1));
  }
  if (ib !== undefined) buffers.idx = ib;
  const groups = Math.ceil(Math.ceil(n / outL.lanes) / WG);
  if (!split) {
    ranges.g = ranges.idx = (g0, g1) => s.range(...own(g0, g1));
    p.run({ buffers, uniforms: { n, ...s.values }, groups, ranges });
    return;
  }
  const acc = rt.alloc(4 * n, { dtype: "f32", purpose: "scratch" });
  buffers.acc = acc;
  ranges.acc = own;
  const ws = windows(rt, s.g.size, iL ? [gL, iL] : [gL]);
  ws.forEach(([s0, s1], k) => {
    ranges.g = ranges.idx = () => [s0, s1];
    const split = { glo: s0, ghi: s1, cont: k > 0 ? 1 : 0, last: k === ws.length - 1 ? 1 : 0 };
    p.run({ buffers, uniforms: { n, ...s.values, ...split }, groups, ranges });
  });
  rt.free(acc);
}

/**
 * out[c] = src[base + sum_d (c_d - lo_d) * st_d] where lo_d <= c_d < hi_d in every dim, else
 * code 0 (+0 in every dtype). Permute, slice and the zero padding of slice's gradient.
 */
function strided(
  op: string,
  src: Tensor,
  shape: readonly number[],
  st: readonly number[],
  base = 0,
  lo?: readonly number[],
  hi?: readonly number[],
): Tensor {
  const out = Tensor.empty(shape, src.dt);
  const vec = (name: string) => ({ name, type: "u32" as const, length: MAX_RANK });
  moveCodes({
    op,
    key: "strided",
    out,
    sources: [src],
    uniforms: [
      { name: "rank", type: "u32" },
      { name: "base", type: "u32" },
      vec("shape"),
      vec("st"),
      vec("lo"),
      vec("hi"),
    ],
    values: { rank: shape.length, base, shape, st, lo: lo ?? shape.map(() => 0), hi: hi ?? shape },
    at: `fn at(i: u32) -> vec2<u32> {
  var rem = i;
  var off = u.base;
  for (var d = i32(u.rank) - 1; d >= 0; d = d - 1) {
    let size = u_shape(u32(d));
    let c = rem % size;
    rem = rem / size;
    let lo = u_lo(u32(d));
    if (c < lo || c >= u_hi(u32(d))) { return vec2<u32>(${NONE}u, 0u); }
    off = off + (c - lo) * u_st(u32(d));
  }
  return vec2<u32>(0u, off);
}`,
  });
  return out;
}

/** A copy of `x`'s bytes under another shape. */
function copyAs(op: string, x: Tensor, shape: readonly number[]): Tensor {
  const rt: Runtime = currentRuntime();
  const out = Tensor.empty(shape, x.dt);
  rt.copy(x.buffer(op), 0, out.buffer(op), 0, storageBytes(x.dt, x.size));
  return out;
}

/** The dtype of a scatter-add gradient: the input's float dtype, else f32. */
const gradDtype = (x: Tensor): DType => (isFloat(x.dt) ? x.dt : float32);

// ---- reshape and friends ---------------------------------------------------------------------

/**
 * The same values in another shape (row-major order is kept). One size may be -1: it is
 * inferred from the others. The result is a new tensor (a GPU copy of the same bytes).
 * Gradient: reshaped back.
 *
 * @example
 * ```ts
 * import { arange, reshape } from "../../mod.ts";
 * const x = reshape(arange(6), [2, -1]);
 * console.log(x.shape, await x.toNested()); // [2, 3] [[0, 1, 2], [3, 4, 5]]
 * ```
 */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  checkTensor("reshape", x);
  if (!Array.isArray(shape)) {
    throw new ShapeError(`reshape(): shape must be an array of sizes, got ${typeof shape}`);
  }
  const s = [...shape];
  let infer = -1;
  s.forEach((v, d) => {
    if (v === -1 && infer === -1) infer = d;
    else if (!Number.isSafeInteger(v) || v < 0) {
      throw new ShapeError(
        `reshape(): target shape ${fmtShape(shape)} for ${fmtShape(x.shape)} (${x.dtype}) has ` +
          `an invalid size ${v} at dimension ${d}; sizes are non-negative integers, one may be -1`,
      );
    }
  });
  if (infer >= 0) {
    const known = prod(s.filter((_, d) => d !== infer));
    if (known === 0 || x.size % known !== 0) {
      throw new ShapeError(
        `reshape(): cannot reshape ${fmtShape(x.shape)} (${x.size} elements, ${x.dtype}) to ` +
          `${fmtShape(shape)}: the -1 size cannot be inferred`,
      );
    }
    s[infer] = x.size / known;
  }
  if (prod(s) !== x.size) {
    throw new ShapeError(
      `reshape(): cannot reshape ${fmtShape(x.shape)} (${x.size} elements, ${x.dtype}) to ` +
        `${fmtShape(shape)} (${prod(s)} elements)`,
    );
  }
  const out = copyAs("reshape", x, s);
  return attach(out, "reshape", [x], (g) => [reshape(g, x.shape)]);
}

/**
 * Flattens dimensions `startDim..endDim` (inclusive) into one (all of them by default).
 *
 * @example
 * ```ts
 * import { flatten, zeros } from "../../mod.ts";
 * console.log(flatten(zeros([2, 3, 4]), 1).shape); // [2, 12]
 * ```
 */
export function flatten(x: Tensor, startDim = 0, endDim = -1): Tensor {
  checkTensor("flatten", x);
  if (x.ndim === 0) return reshape(x, [1]);
  const a = normAxis("flatten", startDim, x, "startDim");
  const b = normAxis("flatten", endDim, x, "endDim");
  if (a > b) {
    throw new ShapeError(
      `flatten(): startDim ${startDim} comes after endDim ${endDim} for shape ${fmtShape(x.shape)}`,
    );
  }
  const s = x.shape;
  return reshape(x, [...s.slice(0, a), prod(s.slice(a, b + 1)), ...s.slice(b + 1)]);
}

/**
 * Removes dimensions of size 1: all of them, or only `axis` (left as is when its size is not 1,
 * as PyTorch does).
 *
 * @example
 * ```ts
 * import { squeeze, zeros } from "../../mod.ts";
 * console.log(squeeze(zeros([1, 3, 1])).shape, squeeze(zeros([1, 3, 1]), 0).shape); // [3] [3, 1]
 * ```
 */
export function squeeze(x: Tensor, axis?: number): Tensor {
  checkTensor("squeeze", x);
  if (axis === undefined) return reshape(x, x.shape.filter((v) => v !== 1));
  const a = normAxis("squeeze", axis, x);
  if (x.ndim === 0 || x.shape[a] !== 1) return reshape(x, x.shape);
  return reshape(x, x.shape.filter((_, d) => d !== a));
}

/**
 * Inserts a dimension of size 1 at `axis` (in `[-rank-1, rank]`).
 *
 * @example
 * ```ts
 * import { unsqueeze, zeros } from "../../mod.ts";
 * console.log(unsqueeze(zeros([3]), 0).shape, unsqueeze(zeros([3]), -1).shape); // [1, 3] [3, 1]
 * ```
 */
export function unsqueeze(x: Tensor, axis: number): Tensor {
  checkTensor("unsqueeze", x);
  const r = x.ndim + 1;
  if (!Number.isInteger(axis) || axis < -r || axis >= r) {
    throw new ShapeError(
      `unsqueeze(): dimension ${axis} is out of range for shape ${fmtShape(x.shape)} ` +
        `(expected an integer in [${-r}, ${r - 1}])`,
    );
  }
  const a = axis < 0 ? axis + r : axis;
  return reshape(x, [...x.shape.slice(0, a), 1, ...x.shape.slice(a)]);
}

// ---- permute, transpose ----------------------------------------------------------------------

/**
 * Reorders the dimensions: output dimension `d` is input dimension `dims[d]` (negative dims
 * count from the end). Gradient: the inverse permutation.
 *
 * @example
 * ```ts
 * import { permute, zeros } from "../../mod.ts";
 * console.log(permute(zeros([2, 3, 4]), [2, 0, 1]).shape); // [4, 2, 3]
 * ```
 */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  checkTensor("permute", x);
  const bad = (why: string) =>
    new ShapeError(
      `permute(): dims ${Array.isArray(dims) ? fmtShape(dims) : String(dims)} are not a ` +
        `permutation of the ${x.ndim} dimensions of ${fmtShape(x.shape)} (${x.dtype}): ${why}`,
    );
  if (!Array.isArray(dims)) throw bad("expected an array");
  if (dims.length !== x.ndim) throw bad(`${dims.length} dims given`);
  const p = dims.map((d) => {
    if (!Number.isInteger(d) || d < -x.ndim || d >= x.ndim) throw bad(`${d} is out of range`);
    return d < 0 ? d + x.ndim : d;
  });
  if (new Set(p).size !== p.length) throw bad("a dimension repeats");
  checkRank("permute", x);
  const shape = p.map((d) => x.shape[d]);
  const xst = stridesOf(x.shape);
  const out = p.every((d, k) => d === k)
    ? copyAs("permute", x, shape)
    : strided("permute", x, shape, p.map((d) => xst[d]));
  const inv = new Array(p.length);
  p.forEach((d, k) => (inv[d] = k));
  return attach(out, "permute", [x], (g) => [permute(g, inv)]);
}

/**
 * Swaps dimensions `dim0` and `dim1` (the last two by default). Gradient: swapped back.
 *
 * @example
 * ```ts
 * import { tensor, transpose } from "../../mod.ts";
 * console.log(await transpose(tensor([[1, 2, 3], [4, 5, 6]])).toNested()); // [[1, 4], [2, 5], [3, 6]]
 * ```
 */
export function transpose(x: Tensor, dim0 = -2, dim1 = -1): Tensor {
  checkTensor("transpose", x);
  const a = normAxis("transpose", dim0, x), b = normAxis("transpose", dim1, x);
  const p = x.shape.map((_, d) => d);
  if (x.ndim > 0) [p[a], p[b]] = [p[b], p[a]];
  return permute(x, p);
}

/**
 * `x` broadcast to `shape` (as `torch.expand`): dimensions of size 1 repeat, new leading
 * dimensions may be added, and -1 keeps a size. The result is a new contiguous tensor (ulp has
 * no strided views). Gradient: summed back over the broadcast dimensions (`sumTo`).
 *
 * @example
 * ```ts
 * import { expand, tensor } from "../../mod.ts";
 * console.log(await expand(tensor([[1], [2]]), [2, 3]).toNested()); // [[1, 1, 1], [2, 2, 2]]
 * ```
 */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  checkTensor("expand", x);
  const lead = Array.isArray(shape) ? shape.length - x.ndim : -1;
  const out = Array.isArray(shape) ? [...shape] : [];
  const ok = lead >= 0 && out.every((v, d) => {
    const own = d < lead ? -2 : x.shape[d - lead];
    if (v === -1 && own >= 0) out[d] = own;
    else if (!Number.isSafeInteger(v) || v < 0 || (own >= 0 && own !== 1 && own !== v)) {
      return false;
    }
    return true;
  });
  if (!ok) {
    throw new ShapeError(
      `expand(): ${fmtShape(x.shape)} (${x.dtype}) cannot be expanded to ` +
        `${Array.isArray(shape) ? fmtShape(shape) : String(shape)}; only sizes of 1 repeat, ` +
        `new dimensions go in front, and -1 keeps a size`,
    );
  }
  if (out.length > MAX_RANK) {
    throw new ShapeError(
      `expand(): rank ${out.length} (shape ${fmtShape(out)}) exceeds the maximum of ${MAX_RANK}`,
    );
  }
  const xst = stridesOf(x.shape);
  const st = out.map((v, d) => (d < lead || x.shape[d - lead] !== v ? 0 : xst[d - lead]));
  const y = strided("expand", x, out, st);
  return attach(y, "expand", [x], (g) => [sumTo(g, x.shape)]);
}

// ---- slice ---------------------------------------------------------------------------------

/**
 * The sub-tensor `start <= i < end` along each leading dimension: `ranges[d]` is `[start, end]`
 * or null for the whole dimension; dimensions past `ranges.length` are kept whole. Indices
 * follow Python slicing: negative ones count from the end, and out-of-range bounds are
 * clamped to the dimension (an empty range gives size 0), as `x[start:end]` in PyTorch.
 * Gradient: zero-padded back to `x`'s shape.
 *
 * @example
 * ```ts
 * import { arange, slice } from "../../mod.ts";
 * const x = arange(12).reshape([3, 4]);
 * console.log(await slice(x, [[1, 3], [-3, 100]]).toNested()); // [[5, 6, 7], [9, 10, 11]]
 * ```
 */
export function slice(x: Tensor, ranges: readonly (readonly [number, number] | null)[]): Tensor {
  checkTensor("slice", x);
  if (!Array.isArray(ranges) || ranges.length > x.ndim) {
    throw new ShapeError(
      `slice(): ${
        Array.isArray(ranges) ? `${ranges.length} ranges` : "ranges (not an array)"
      } given for a tensor of shape ${fmtShape(x.shape)} (${x.dtype}); give at most one ` +
        `[start, end] or null per dimension`,
    );
  }
  checkRank("slice", x);
  const start: number[] = [], shape: number[] = [];
  x.shape.forEach((size, d) => {
    const r = ranges[d] ?? null;
    if (r === null) {
      start.push(0);
      shape.push(size);
      return;
    }
    if (!Array.isArray(r) || r.length !== 2 || !r.every(Number.isInteger)) {
      throw new ValueError(
        `slice(): range ${JSON.stringify(r)} for dimension ${d} of ${fmtShape(x.shape)} must ` +
          `be [start, end] with integers, or null`,
      );
    }
    const clampIdx = (v: number) => Math.min(Math.max(v < 0 ? v + size : v, 0), size);
    const s = clampIdx(r[0]), e = clampIdx(r[1]);
    start.push(s);
    shape.push(Math.max(e - s, 0));
  });
  const st = stridesOf(x.shape);
  const base = start.reduce((a, s, d) => a + s * st[d], 0);
  const out = strided("slice", x, shape, st, base);
  return attach(out, "slice", [x], (g) => [pad("slice_grad", g, x.shape, start)]);
}

/** `g` placed at offset `start` in a zero tensor of `shape` (the gradient of a slice). */
function pad(op: string, g: Tensor, shape: readonly number[], start: readonly number[]): Tensor {
  const end = start.map((s, d) => s + g.shape[d]);
  const st = stridesOf(g.shape);
  return strided(op, g, shape, st, 0, start, end);
}

// ---- concat ----------------------------------------------------------------------------------

/**
 * Joins tensors of the same dtype along `axis`; all other sizes must agree. Gradient: the
 * matching slice of the output's gradient to each input.
 *
 * @example
 * ```ts
 * import { concat, tensor } from "../../mod.ts";
 * const a = tensor([[1, 2]]), b = tensor([[3, 4], [5, 6]]);
 * console.log(await concat([a, b], 0).toNested()); // [[1, 2], [3, 4], [5, 6]]
 * ```
 */
export function concat(tensors: readonly Tensor[], axis = 0): Tensor {
  const xs: readonly Tensor[] = tensors;
  if (!Array.isArray(tensors) || xs.length === 0) {
    throw new ValueError("concat(): needs a non-empty array of tensors");
  }
  xs.forEach((x, k) => checkTensor("concat", x, `xs[${k}]`));
  const x0 = xs[0];
  const shapes = xs.map((x) => fmtShape(x.shape)).join(", ");
  if (x0.ndim === 0) {
    throw new ShapeError(
      `concat(): 0-d tensors cannot be joined (shapes ${shapes}); unsqueeze them`,
    );
  }
  const a = normAxis("concat", axis, x0, "axis");
  for (const x of xs) {
    if (x.ndim !== x0.ndim || x.shape.some((v, d) => d !== a && v !== x0.shape[d])) {
      throw new ShapeError(
        `concat(): shapes ${shapes} differ outside axis ${a}; every size but the one along ` +
          `the axis must agree`,
      );
    }
  }
  if (xs.some((x) => x.dt !== x0.dt)) {
    throw new DTypeError(
      `concat(): dtypes ${xs.map((x) => x.dtype).join(", ")} (shapes ${shapes}) differ; ` +
        `cast them to one dtype first`,
    );
  }
  const out = concatRaw(xs, a);
  const offs = [0];
  for (const x of xs) offs.push(offs[offs.length - 1] + x.shape[a]);
  return attach(out, "concat", xs, (g) =>
    xs.map((x, k) => {
      if (!x.requiresGrad) return null;
      const r: ([number, number] | null)[] = x.shape.map(() => null);
      r[a] = [offs[k], offs[k + 1]];
      return slice(g, r);
    }));
}

function concatRaw(xs: readonly Tensor[], a: number): Tensor {
  if (xs.length > CONCAT_INPUTS) {
    // a tree of kernels that bind at most CONCAT_INPUTS inputs each
    const head = concatRaw(xs.slice(0, CONCAT_INPUTS), a);
    const out = concatRaw([head, ...xs.slice(CONCAT_INPUTS)], a);
    head.dispose();
    return out;
  }
  const x0 = xs[0];
  const shape = [...x0.shape];
  shape[a] = xs.reduce((s, x) => s + x.shape[a], 0);
  const out = Tensor.empty(shape, x0.dt);
  const inner = prod(shape.slice(a + 1));
  const live = xs.filter((x) => x.size > 0);
  const offs = [0];
  for (const x of live) offs.push(offs[offs.length - 1] + x.shape[a]);
  const O = (j: number) => `u_off(${j}u)`;
  let sel = "";
  live.forEach((_, j) => {
    sel += `  if (c < ${O(j + 1)}) { return vec2<u32>(${j}u, (q * (${O(j + 1)} - ${O(j)}) + c - ${
      O(j)
    }) * u.inner + r); }\n`;
  });
  moveCodes({
    op: "concat",
    key: `concat${live.length}`,
    out,
    sources: live,
    uniforms: [
      { name: "inner", type: "u32" },
      { name: "total", type: "u32" },
      { name: "off", type: "u32", length: CONCAT_INPUTS + 1 },
    ],
    values: { inner, total: shape[a], off: offs },
    at: `fn at(i: u32) -> vec2<u32> {
  let r = i % u.inner;
  let t = i / u.inner;
  let c = t % u.total;
  let q = t / u.total;
${sel}  return vec2<u32>(${NONE}u, 0u);
}`,
  });
  return out;
}

// ---- indexSelect -----------------------------------------------------------------------------

/**
 * The entries of `x` at positions `index` along `axis` (as `torch.index_select`): the output
 * has `x`'s shape with `index.size` in place of `x.shape[axis]`. `index` is a 1-D i32 or u32
 * tensor; its values are clamped to `[0, x.shape[axis] - 1]` on the GPU (out-of-range values
 * are not detected). An embedding lookup is `indexSelect(weight, 0, ids)`.
 * Gradient: the output gradient's rows scatter-added into zeros of `x`'s shape, summed in
 * f32 in index order (repeated indices accumulate; deterministic), then encoded to `x`'s
 * dtype (f32 for non-float `x`).
 *
 * @example
 * ```ts
 * import { indexSelect, tensor } from "../../mod.ts";
 * const weight = tensor([[0, 0], [1, 1], [2, 2]], { dtype: "bf16" });
 * const ids = tensor(new Int32Array([2, 0, 2]));
 * console.log(await indexSelect(weight, 0, ids).toNested()); // [[2, 2], [0, 0], [2, 2]]
 * ```
 */
export function indexSelect(x: Tensor, axis: number, index: Tensor): Tensor {
  checkTensor("indexSelect", x);
  const ix = checkIndex("indexSelect", x, index);
  if (x.ndim === 0) {
    throw new ShapeError(`indexSelect(): x of shape [] (${x.dtype}) has no dimension to select on`);
  }
  const a = normAxis("indexSelect", axis, x, "axis");
  if (ix.ndim !== 1) {
    throw new ShapeError(
      `indexSelect(): index must be 1-D, got shape ${fmtShape(ix.shape)} (x: ` +
        `${fmtShape(x.shape)} ${x.dtype}); flatten it with reshape([-1]) and reshape the result`,
    );
  }
  const A = x.shape[a], L = ix.size;
  const shape = [...x.shape];
  shape[a] = L;
  if (A === 0 && prod(shape) > 0) {
    throw new ShapeError(
      `indexSelect(): cannot select ${L} entries along axis ${a} of size 0 (x: ${
        fmtShape(x.shape)
      })`,
    );
  }
  const inner = prod(x.shape.slice(a + 1));
  const out = Tensor.empty(shape, x.dt);
  const Q = prod(x.shape.slice(0, a));
  moveCodes({
    op: "indexSelect",
    key: "indexSelect",
    out,
    sources: [x],
    // output element (q, l, r) reads index l
    index: {
      t: ix,
      range: stridedRange([{ size: Q, stride: 0 }, { size: L, stride: 1 }, {
        size: inner,
        stride: 0,
      }]),
    },
    uniforms: [{ name: "inner", type: "u32" }, { name: "A", type: "u32" }, {
      name: "L",
      type: "u32",
    }],
    values: { inner, A, L },
    at: `fn at(i: u32) -> vec2<u32> {
  let r = i % u.inner;
  let t = i / u.inner;
  let l = t % u.L;
  let q = t / u.L;
  return vec2<u32>(0u, (q * u.A + ix(l)) * u.inner + r);
}`,
  });
  return attach(out, "indexSelect", [x], (g) => [indexSelectGrad(g, x, a, ix)]);
}

/**
 * Scatter-add of `g` (shape of the indexSelect output) into zeros of `x`'s shape. Pass 1, one
 * invocation per destination row `a`: the chain of index positions `l` that hit `a`, in
 * increasing order (`first[a]`, `next[l]`; O(A*L)). Pass 2, one invocation per output word:
 * each element walks its row's chain and sums in f32 (O(L*inner) in all).
 */
function indexSelectGrad(g: Tensor, x: Tensor, a: number, ix: Tensor): Tensor {
  const rt = currentRuntime();
  const op = "indexSelect_grad";
  const A = x.shape[a], L = ix.size, inner = prod(x.shape.slice(a + 1));
  const dt = gradDtype(x);
  if (prod(x.shape) === 0) return Tensor.empty(x.shape, dt);
  const first = rt.alloc(4 * Math.max(A, 1), { dtype: "u32", purpose: "scratch" });
  const next = rt.alloc(4 * Math.max(L, 1), { dtype: "u32", purpose: "scratch" });
  const u32 = layoutOf(dtype("u32"), null);
  program(rt, "shape|indexSelect_chain", {
    label: "indexSelect_chain",
    bindings: [
      { name: "idx", type: layoutOf(ix.dt, null), access: "read" },
      { name: "first", type: u32, access: "read_write" },
      { name: "next", type: "u32", access: "read_write" },
    ],
    uniforms: [{ name: "n", type: "u32" }, { name: "L", type: "u32" }, { name: "A", type: "u32" }],
    workgroupSize: WG,
  }, () =>
    `${indexReader(ix)}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let w = wg * ${WG}u + li;
  if (w >= u.n) { return; }
  var f = ${NONE}u;
  var prev = ${NONE}u;
  for (var l = 0u; l < u.L; l = l + 1u) {
    if (ix(l) == w) {
      if (prev == ${NONE}u) { f = l; } else { next[prev] = l; }
      prev = l;
    }
  }
  if (prev != ${NONE}u) { next[prev] = ${NONE}u; }
  put_first(w, f);
}`).run({
      buffers: { idx: ix.buffer(op), first, next },
      uniforms: { n: A, L, A },
      groups: Math.ceil(A / WG),
      // every row scans all the ids; row w's head is first[w]
      ranges: { idx: () => [0, L], first: (g0, g1) => [g0 * WG, Math.min(A, g1 * WG)] },
    });
  const Q = prod(x.shape.slice(0, a));
  // few rows selected of many (an embedding table): zeros and the selected rows' sums, one
  // more dispatch than the dense sums and far less work
  const sparse = Q === 1 && A >= 4 * L ? sparseRows(rt, dt, inner, [g, ix], first) : 0;
  if (sparse > 0) {
    // selection along the first axis: zeros, then each selected row's sum written once
    const res = zeros(x.shape, { dtype: dt.name });
    scatterRows(rt, res, g, ix, first, next, { A, L, inner, rowsPer: sparse });
    rt.free(first);
    rt.free(next);
    return res;
  }
  const out = Tensor.empty(x.shape, dt);
  sumValues({
    op,
    key: "indexSelect_grad",
    out,
    g,
    raw: { next },
    aligned: {
      first: {
        t: first,
        l: u32,
        range: stridedRange([{ size: Q, stride: 0 }, { size: A, stride: 1 }, {
          size: inner,
          stride: 0,
        }]),
      },
    },
    // output element (q, a, r) reads g at (q, l, r) for the ids l that hit row a
    range: stridedRange([
      { size: Q, stride: L * inner },
      { size: A, stride: inner, any: L },
      { size: inner, stride: 1 },
    ]),
    uniforms: [{ name: "inner", type: "u32" }, { name: "A", type: "u32" }, {
      name: "L",
      type: "u32",
    }],
    values: { inner, A, L },
    value: `fn value(i: u32) -> f32 {
  let r = i % u.inner;
  let t = i / u.inner;
  let a = t % u.A;
  let q = t / u.A;
  var s = start(i);
  var l = get_first(a);
  for (var k = 0u; k < u.L && l != ${NONE}u; k = k + 1u) {
    let e = (q * u.L + l) * u.inner + r;
    if (take(e)) { s = s + ldg(e); }
    l = next[l];
  }
  return s;
}`,
  });
  rt.free(first);
  rt.free(next);
  return out;
}

/**
 * Rows of `inner` elements of a `dt` gradient that one window of the output may hold, where
 * `scatterRows` may write it (0 where it may not: packed words straddling rows, or a source,
 * an index or the chain heads larger than one binding).
 */
function sparseRows(
  rt: Runtime,
  dt: DType,
  inner: number,
  reads: readonly Tensor[],
  first: PooledBuffer,
): number {
  const l = layoutOf(dt, rt);
  if (inner === 0 || inner % l.lanes !== 0) return 0;
  if (reads.some((t) => isBig(rt, t.buffer("indexSelect_grad"))) || isBig(rt, first)) return 0;
  return Math.floor(windowElems(rt, l) / inner);
}

/**
 * The gradient of a selection along the first axis into `out` (zeros of `A` rows of `inner`):
 * an invocation a word of a selected row, at the first index position `l` that selects the
 * row (`first[row] == l`), sums the row's terms along its chain (`next`, increasing `l`) from
 * +0 in f32, as `sumValues` does for every row, and stores the word; rows no id selects keep
 * their zeros (+0, the code the dense sum writes). `L` x `inner` invocations in place of `A` x
 * `inner` dense sums, each with integer divisions, which llvmpipe runs lane by lane (GPT-2's
 * token embedding: 50257 rows). Rows in windows of `rowsPer` when `out` is larger than one
 * binding.
 */
function scatterRows(
  rt: Runtime,
  out: Tensor,
  g: Tensor,
  ix: Tensor,
  first: PooledBuffer,
  next: PooledBuffer,
  d: { A: number; L: number; inner: number; rowsPer: number },
): void {
  const op = "indexSelect_grad";
  const outL = layoutOf(out.dt, rt);
  const lanes = outL.lanes, W = d.inner / lanes, n = d.L * W;
  const p = program(rt, "shape|indexSelect_rows", {
    label: op,
    bindings: [
      { name: "g", type: layoutOf(g.dt, rt), access: "read" },
      { name: "idx", type: layoutOf(ix.dt, null), access: "read" },
      { name: "first", type: layoutOf(dtype("u32"), null), access: "read" },
      { name: "next", type: "u32", access: "read" },
      { name: "out", type: outL, access: "read_write" },
    ],
    uniforms: ["n", "W", "inner", "L", "A", "alo", "ahi"].map((name) => ({
      name,
      type: "u32" as const,
    })),
    workgroupSize: WG,
  }, () =>
    `${indexReader(ix)}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let t = wg * ${WG}u + li;
  if (t >= u.n) { return; }
  let l = t / u.W;
  let k = t - l * u.W;
  let a = ix(l);
  if (a < u.alo || a >= u.ahi || get_first(a) != l) { return; }
  var v = vec4<f32>(0.0);
${
      [..."xyzw"].slice(0, lanes).map((c, e) =>
        `  {
    let r = k * ${lanes}u + ${e}u;
    var s = 0.0;
    var m = l;
    for (var j = 0u; j < u.L && m != ${NONE}u; j = j + 1u) {
      s = s + ld_g(m * u.inner + r);
      m = next[m];
    }
    v.${c} = s;
  }
`
      ).join("")
    }  st_out(a * u.W + k, v, vec4<u32>(0u));
}`);
  const buffers = {
    g: g.buffer(op),
    idx: ix.buffer(op),
    first,
    next,
    out: out.buffer(op),
  };
  const groups = Math.ceil(n / WG);
  for (let alo = 0; alo < d.A; alo += d.rowsPer) {
    const ahi = Math.min(d.A, alo + d.rowsPer);
    p.run({
      buffers,
      uniforms: { n, W, inner: d.inner, L: d.L, A: d.A, alo, ahi },
      groups,
      ranges: { out: () => [alo * d.inner, ahi * d.inner] },
    });
  }
}

// ---- gather ----------------------------------------------------------------------------------

/**
 * Values picked along `axis` by an index tensor of the same rank (as `torch.gather`):
 * `out[i][j] = x[index[i][j]][j]` for axis 0, `x[i][index[i][j]]` for axis 1. The output has
 * `index`'s shape and `x`'s dtype; `index.shape[d] <= x.shape[d]` for every other dimension.
 * Index values are clamped to `[0, x.shape[axis] - 1]` on the GPU. Gradient: scatter-added
 * into zeros of `x`'s shape in f32 (repeated indices accumulate), encoded to `x`'s dtype.
 *
 * @example
 * ```ts
 * import { gather, tensor } from "../../mod.ts";
 * const x = tensor([[1, 2, 3], [4, 5, 6]]);
 * const idx = tensor(new Int32Array([2, 0]), { shape: [2, 1] });
 * console.log(await gather(x, 1, idx).toNested()); // [[3], [4]]
 * ```
 */
export function gather(x: Tensor, axis: number, index: Tensor): Tensor {
  checkTensor("gather", x);
  const ix = checkIndex("gather", x, index);
  const a = normAxis("gather", axis, x, "axis");
  if (
    ix.ndim !== x.ndim || ix.shape.some((v, d) => d !== a && v > x.shape[d])
  ) {
    throw new ShapeError(
      `gather(): index of shape ${fmtShape(ix.shape)} does not fit x of shape ` +
        `${fmtShape(x.shape)} (${x.dtype}) along axis ${a}: it needs the same rank and sizes no ` +
        `larger than x's in every other dimension`,
    );
  }
  checkRank("gather", x);
  const A = x.ndim === 0 ? 1 : x.shape[a];
  if (A === 0 && ix.size > 0) {
    throw new ShapeError(
      `gather(): cannot gather from axis ${a} of size 0 (x: ${fmtShape(x.shape)}, index: ` +
        `${fmtShape(ix.shape)})`,
    );
  }
  const out = Tensor.empty(ix.shape, x.dt);
  const vec = (name: string) => ({ name, type: "u32" as const, length: MAX_RANK });
  moveCodes({
    op: "gather",
    key: "gather",
    out,
    sources: [x],
    index: { t: ix, range: (e0, e1) => [e0, e1] }, // output element i reads index i
    uniforms: [
      { name: "rank", type: "u32" },
      { name: "axis", type: "u32" },
      { name: "A", type: "u32" },
      vec("shape"),
      vec("st"),
    ],
    values: { rank: x.ndim, axis: a, A, shape: ix.shape, st: stridesOf(x.shape) },
    at: `fn at(i: u32) -> vec2<u32> {
  var rem = i;
  var off = 0u;
  for (var d = i32(u.rank) - 1; d >= 0; d = d - 1) {
    let size = u_shape(u32(d));
    let c = select(rem % size, ix(i), u32(d) == u.axis);
    rem = rem / size;
    off = off + c * u_st(u32(d));
  }
  return vec2<u32>(0u, off);
}`,
  });
  return attach(out, "gather", [x], (g) => [gatherGrad(g, x, a, ix)]);
}

/**
 * Scatter-add of `g` (index's shape) into zeros of `x`'s shape: each output element sums, in
 * f32 and in order, the `index.shape[axis]` entries of its line whose index hits it.
 */
function gatherGrad(g: Tensor, x: Tensor, a: number, ix: Tensor): Tensor {
  const op = "gather_grad";
  const dt = gradDtype(x);
  const out = Tensor.empty(x.shape, dt);
  const ish = ix.shape, ist = stridesOf(ix.shape);
  const vec = (name: string) => ({ name, type: "u32" as const, length: MAX_RANK });
  sumValues({
    op,
    key: "gather_grad",
    out,
    g,
    index: ix,
    // output element c reads g and the index along its line on the axis, where c fits them
    range: stridedRange(
      x.shape.map((size, d) =>
        d === a ? { size, stride: ist[d], any: ish[d] } : { size, stride: ist[d], hi: ish[d] }
      ),
    ),
    uniforms: [
      { name: "rank", type: "u32" },
      { name: "axis", type: "u32" },
      { name: "A", type: "u32" },
      { name: "J", type: "u32" },
      vec("xs"),
      vec("ish"),
      vec("ist"),
    ],
    values: {
      rank: x.ndim,
      axis: a,
      A: x.ndim === 0 ? 1 : x.shape[a],
      J: x.ndim === 0 ? 1 : ish[a],
      xs: x.shape,
      ish,
      ist,
    },
    value: `fn value(i: u32) -> f32 {
  var rem = i;
  var base = 0u;
  var ca = 0u;
  for (var d = i32(u.rank) - 1; d >= 0; d = d - 1) {
    let c = rem % u_xs(u32(d));
    rem = rem / u_xs(u32(d));
    if (u32(d) == u.axis) {
      ca = c;
    } else {
      if (c >= u_ish(u32(d))) { return 0.0; }
      base = base + c * u_ist(u32(d));
    }
  }
  let sa = select(1u, u_ist(u.axis), u.rank > 0u);
  var s = start(i);
  for (var j = 0u; j < u.J; j = j + 1u) {
    let p = base + j * sa;
    if (take(p) && ix(p) == ca) { s = s + ldg(p); }
  }
  return s;
}`,
  });
  return out;
}

const methods: ShapeMethods & ThisType<Tensor> = {
  /** The same values in another shape (one dimension may be -1). */
  reshape(this: Tensor, shape: readonly number[]): Tensor {
    return reshape(this, shape);
  },
  /** Swaps two dimensions (the last two by default). */
  transpose(this: Tensor, dim0 = -2, dim1 = -1): Tensor {
    return transpose(this, dim0, dim1);
  },
  /** Reorders the dimensions. */
  permute(this: Tensor, dims: readonly number[]): Tensor {
    return permute(this, dims);
  },
  /** The sub-tensor `start <= i < end` along each dimension (per-dimension `[start, end]`). */
  slice(this: Tensor, ranges: readonly (readonly [number, number] | null)[]): Tensor {
    return slice(this, ranges);
  },
  /** Rows of `this` (along `axis`) picked by an integer index tensor. */
  indexSelect(this: Tensor, axis: number, index: Tensor): Tensor {
    return indexSelect(this, axis, index);
  },
  /** Values picked along `axis` by an index tensor of the same rank (as torch.gather). */
  gather(this: Tensor, axis: number, index: Tensor): Tensor {
    return gather(this, axis, index);
  },
};
/** The shape methods of `Tensor`: `reshape`, `transpose`, `permute`, `slice`, `indexSelect`, `gather`. */
export interface ShapeMethods {
  /** The same values in another shape (one dimension may be -1). */
  reshape(shape: readonly number[]): Tensor;
  /** Swaps two dimensions (the last two by default). */
  transpose(dim0?: number, dim1?: number): Tensor;
  /** Reorders the dimensions. */
  permute(dims: readonly number[]): Tensor;
  /** The sub-tensor `start <= i < end` along each dimension (per-dimension `[start, end]`). */
  slice(ranges: readonly (readonly [number, number] | null)[]): Tensor;
  /** Rows of `this` (along `axis`) picked by an integer index tensor. */
  indexSelect(axis: number, index: Tensor): Tensor;
  /** Values picked along `axis` by an index tensor of the same rank (as torch.gather). */
  gather(axis: number, index: Tensor): Tensor;
}

installMethods(methods, "ops/shape_ops.ts");
