/**
 * The elementwise launcher, with fusion: every elementwise op, cast and fill goes through
 * `launch()`, which does not record a kernel. It gives back a tensor whose buffer is
 * allocated and whose definition (the op's WGSL expression over its operands) is kept
 * instead: the tensor is pending. An elementwise op that reads a pending tensor takes its
 * definition into its own expression, so a chain like `x.mul(w).add(b).relu()` becomes one
 * kernel that reads `x`, `w` and `b` once and writes the result once.
 *
 * A pending tensor is computed (its kernel recorded, what is pending below it inline, except
 * tensors of the autograd graph, which backward reads again: those are computed on their own
 * first and read from their buffers) when something needs its values: another op binds its buffer (`buffer()`), it is read to
 * the host, or `realize()` is called. One that is disposed first is never computed. Deferred
 * work must see its operands as they were when the op was called, so it is recorded before
 * a command writes a buffer it reads (the runtime's `beforeWrite` hook: an optimizer step or
 * `copy_` into an operand), and the buffer of an operand disposed meanwhile is kept (not
 * reused) until no pending work reads it.
 *
 * Values are those of the unfused ops bit for bit: an inlined intermediate is rounded to its
 * own dtype (encoded and decoded with its codec, saturating as it would have been stored), and
 * an intermediate with stochastic rounding or its own random stream (`rand`, `randn`) is not
 * inlined but recorded at once. What a kernel may bind bounds a fused expression (6 tensors,
 * 4 of them broadcast, 16 scalars, 16 ops); past that the inputs are computed on their own.
 * `setFusion(false)` records every op at the call (one kernel per op).
 *
 * The kernel is a program of `gpu/program.ts`: a tensor larger than one storage binding is
 * bound as windows, the output and same-shape operands by the elements each piece of the
 * grid writes, a broadcast operand by the elements those read (`stridedRange`). A broadcast
 * operand so large that one workgroup's share passes the limit is a `DeviceError` naming the
 * operands. A one-word or f16 result of whole quads (a multiple of 4 elements) is computed a
 * quad per invocation: operands of its shape are loaded as one vec4 each (a vec4 view of
 * one-word dtypes, whole words of packed ones), one-element operands once, and a one-word
 * result is stored as one vec4; the expression still runs per element, so the bits are those
 * of one element per invocation. Packed results keep a word per step. On a CPU adapter a result
 * of at least 256K elements takes runs of 256 consecutive quads an invocation (`runLayout`).
 *
 * @module
 */

import { type DType, type Rounding, wgslCodec } from "../../dtypes/mod.ts";
import { DeviceError, ShapeError, ValueError } from "../../errors.ts";
import {
  currentRuntime,
  type PooledBuffer,
  program,
  RUN_QUADS,
  RUN_WG,
  runLayout,
  stridedRange,
} from "../../gpu/mod.ts";
import { layoutOf } from "../../gpu/layout.ts";
import { fmtShape, type Operand, provideTensorHooks, sameShape, Tensor } from "../core/tensor.ts";

/** Largest rank a kernel handles (the uniform block holds 8 sizes and strides per input). */
export const MAX_RANK = 8;
const WG = 256;
/**
 * Output words each invocation writes, strided by the workgroup size so that neighbouring
 * invocations touch neighbouring words (coalesced on a GPU, SIMD-friendly on llvmpipe). More
 * than one amortises the per-invocation cost, which dominates these memory-bound kernels.
 */
const PER_THREAD = 4;
/**
 * Quads (4 consecutive elements) each invocation computes when the result has whole quads:
 * a workgroup covers as many elements as with single f32 words, which keeps the share of a
 * broadcast operand one workgroup reads (its window) as small.
 */
const QUADS = 1;

/**
 * An f32 intermediate as the f32 codec's `decode(encode(x))` leaves it: x, a NaN made the
 * canonical quiet NaN of its sign; the one test of both (each of which canonicalises the same
 * way), the same bits. Its bit operations also keep a compiler from contracting across ops.
 */
const WGSL_KEEP32 = `fn ulp_keep32(x: f32) -> f32 {
  let b = bitcast<u32>(x);
  return select(x, bitcast<f32>((b & 0x80000000u) | 0x7fc00000u), (b & 0x7fffffffu) > 0x7f800000u);
}
`;
/** `ulp_keep32` of each component of a quad. */
const WGSL_KEEP4 = `fn ulp_keep4(x: vec4<f32>) -> vec4<f32> {
  let b = bitcast<vec4<u32>>(x);
  let nan = bitcast<vec4<f32>>((b & vec4<u32>(0x80000000u)) | vec4<u32>(0x7fc00000u));
  return select(x, nan, (b & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u));
}
`;

/**
 * How an operand is indexed: its own index (same shape), index 0 (one element), its index
 * modulo its size (`tail`: the operand is the result's trailing dimensions, as a bias or a
 * position embedding is: one remainder instead of a radix loop), or broadcast.
 */
type Mode = "same" | "one" | "tail" | "bcast";

/** Options of the generic elementwise launcher. @internal */
export interface LaunchOptions {
  /** Rounding of the result into its dtype (default `rne`). */
  rounding?: Rounding;
  /** Whether overflow clamps to +-max (default: the dtype's own). */
  saturate?: boolean;
  /** Seed of stochastic rounding and of `ulp_rand(u.seed, i)` in the expression. */
  seed?: number;
  /** WGSL functions the expression calls (an op row's `wgsl`). */
  wgsl?: string;
  /**
   * Whether the expression is also valid WGSL with `vec4<f32>` operands (scalars splatted)
   * and computes each component as it computes one f32 (`+`, `*`, `exp`: no `select` on a
   * scalar test, no literal-typed builtin arguments, no `i`). A quad kernel whose ops all say
   * so computes a quad as one vec4 expression (default false).
   */
  vec4?: boolean;
}

/**
 * The expression of an op: a function of the operand expressions (tensor values, scalar
 * uniforms) returning a WGSL f32 expression. `i` (u32 element index) and `u.seed` are in
 * scope. @internal
 */
export type Expr = (x: string[]) => string;

/** What a kernel computing a tensor binds at most if every deferred input is inlined. */
interface Cost {
  /** Tensor bindings (each operand counted, no sharing assumed). */
  tensors: number;
  /** Of those, broadcast ones (they need strides in the uniform block). */
  bcast: number;
  /** Scalar uniforms. */
  scalars: number;
  /** Ops (expressions) in the kernel. */
  nodes: number;
}

/** The bounds of one fused kernel: bindings, uniform words and source size. */
const LIMIT: Cost = { tensors: 6, bcast: 4, scalars: 16, nodes: 16 };

/**
 * The definition of a tensor whose kernel is not recorded yet: the op, its operands, the
 * expression and how the result is rounded. @internal
 */
export interface LazyDef {
  readonly op: string;
  /** Tensors its kernel may read: operands, and what pending operands may read. */
  readonly leaves: readonly Tensor[];
  readonly operands: readonly Operand[];
  readonly expr: Expr;
  readonly rounding: Rounding;
  readonly saturate: boolean;
  readonly seed: number;
  /** WGSL functions the expression calls, or "". */
  readonly wgsl: string;
  /** Whether a consumer may compute it inline (round to nearest, no random stream). */
  readonly inlinable: boolean;
  /** Whether the expression computes a vec4 as four f32s (`LaunchOptions.vec4`). */
  readonly vec4: boolean;
  readonly cost: Cost;
}

/** Tensors with a deferred kernel, alive, in the order they were made. */
const pending = new Set<Tensor>();
/** Set while deferred work records itself (so that the runtime's hook does not recurse). */
let recording = false;
let fusionEnabled = true;
/** Pending tensors beyond which the oldest are computed (bounds the hook's scans). */
const MAX_PENDING = 1024;
/** Buffers of disposed tensors that pending work still reads, freed when none does. */
const held = new Map<Tensor, PooledBuffer>();

/**
 * WGSL of `fn <sig> -> u32`: the offset of the linear index `i` in mixed radix over `rank`
 * dims (WGSL expressions; the last dim varies fastest), dim `d` of size `size` and stride
 * `stride` (expressions of `d`, e.g. `u_ks(u32(d))`); `fast` statements run first (a shortcut
 * return). The one index loop of the fused, reduction and row kernels. @internal
 *
 * @example
 * ```ts
 * import { wgslRadixOffset } from "./fusion.ts";
 * const f = wgslRadixOffset("kbase(q: u32)", "q", "u.nk", "u_ks(u32(d))", "u_kst(u32(d))");
 * console.log(f.split("\n")[0]); // fn kbase(q: u32) -> u32 {
 * ```
 */
export function wgslRadixOffset(
  sig: string,
  i: string,
  rank: string,
  size: string,
  stride: string,
  fast = "",
): string {
  return `fn ${sig} -> u32 {
${fast}  var rem = ${i};
  var off = 0u;
  for (var d = i32(${rank}) - 1; d >= 0; d = d - 1) {
    let size = ${size};
    off = off + (rem % size) * ${stride};
    rem = rem / size;
  }
  return off;
}
`;
}

/** `bidx(i, k)`: the offset of output index `i` in broadcast operand slot `k`. */
const WGSL_BIDX = wgslRadixOffset(
  "bidx(i: u32, k: u32)",
  "i",
  "u.rank",
  "u_shape(u32(d))",
  `u_st(${MAX_RANK}u * k + u32(d))`,
);

/**
 * Turns elementwise fusion on or off for the process and returns the previous setting.
 * Off, every elementwise op records its kernel at the call (one kernel per op), which helps
 * when profiling single ops; results are the same bit for bit either way. Pending work is
 * recorded when fusion is turned off.
 *
 * @example
 * ```ts
 * import { setFusion, tensor } from "../../mod.ts";
 * const before = setFusion(false);
 * const y = tensor([1, -2]).mul(2).relu(); // two kernels
 * console.log(Array.from(await y.toArray())); // [2, 0]
 * setFusion(before);
 * ```
 */
export function setFusion(enabled: boolean): boolean {
  const prev = fusionEnabled;
  fusionEnabled = enabled;
  if (!enabled) { for (const t of pending) materialize(t); }
  return prev;
}

/**
 * The shape two or more shapes broadcast to, as NumPy and PyTorch broadcast.
 *
 * @example
 * ```ts
 * import { broadcastShapes } from "./fusion.ts";
 * console.log(broadcastShapes("add", [3, 1], [4])); // [3, 4]
 * ```
 */
export function broadcastShapes(op: string, ...shapes: (readonly number[])[]): number[] {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out: number[] = [];
  for (let d = 0; d < rank; d++) {
    let size = 1;
    for (const s of shapes) {
      const v = s[s.length - rank + d] ?? 1;
      if (v !== 1) {
        if (size !== 1 && size !== v) {
          throw new ShapeError(
            `${op}(): shapes ${shapes.map(fmtShape).join(" and ")} cannot be broadcast together ` +
              `(dimension ${d} from the left of the broadcast shape: ${size} vs ${v})`,
          );
        }
        size = v;
      }
    }
    out.push(size);
  }
  return out;
}

/** Row-major strides of `shape` aligned to `outShape`'s rank, 0 where broadcast. */
function bcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const rank = outShape.length;
  const strides = new Array(rank).fill(0);
  let s = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    const od = rank - shape.length + d;
    strides[od] = shape[d] === 1 ? 0 : s;
    s *= shape[d];
  }
  return strides;
}

function modeOf(t: Tensor, shape: readonly number[]): Mode {
  if (t.size === 1) return "one";
  if (t.shape.length === shape.length && t.shape.every((v, d) => v === shape[d])) return "same";
  // the operand without its leading 1s is the result's trailing dimensions
  let lead = 0;
  while (t.shape[lead] === 1) lead++;
  const own = t.shape.slice(lead), off = shape.length - own.length;
  return off >= 0 && own.every((v, d) => v === shape[off + d]) ? "tail" : "bcast";
}

/**
 * Runs an elementwise expression over tensors and scalars into a new tensor of `outDt`:
 * the generic launcher behind every elementwise op, cast and fill. The kernel is deferred
 * (see the module's text); the result can be used like any tensor. @internal
 */
export function launch(
  op: string,
  operands: readonly Operand[],
  expr: Expr,
  outDt: DType,
  opts: LaunchOptions = {},
  outShape?: readonly number[],
): Tensor {
  const tensors = operands.filter((o): o is Tensor => o instanceof Tensor);
  const nScalars = operands.length - tensors.length;
  if (nScalars > 4) throw new ValueError(`${op}(): at most 4 scalar operands`);
  const shape = outShape ?? broadcastShapes(op, ...tensors.map((t) => t.shape));
  if (shape.length > MAX_RANK) {
    throw new ShapeError(
      `${op}(): rank ${shape.length} (shape ${fmtShape(shape)}) exceeds the maximum of ${MAX_RANK}`,
    );
  }
  for (const t of tensors) t.checkUsable(`${op}()`);
  const rt = currentRuntime();
  const out = Tensor.empty(shape, outDt);
  if (out.size === 0) return out;
  // pending inputs that cannot be computed inline are computed now
  for (const t of tensors) {
    if (t.lazy !== null && !(t.lazy.inlinable && sameShape(t.shape, shape))) materialize(t);
  }
  let cost = costOf(operands, shape);
  if (exceeds(cost)) {
    for (const t of tensors) materialize(t);
    cost = costOf(operands, shape);
  }
  const leaves = new Set<Tensor>();
  for (const t of tensors) {
    leaves.add(t);
    if (t.lazy !== null) { for (const l of t.lazy.leaves) leaves.add(l); }
  }
  const rounding = opts.rounding ?? "rne";
  const probe = expr(operands.map((_, k) => `x${k}`));
  out.lazy = {
    op,
    leaves: [...leaves],
    operands: [...operands],
    expr,
    rounding,
    saturate: opts.saturate ?? outDt.saturate,
    seed: (opts.seed ?? 0) >>> 0,
    wgsl: opts.wgsl ?? "",
    inlinable: rounding === "rne" && !probe.includes("u.seed"),
    vec4: (opts.vec4 ?? false) && !/\bi\b/.test(probe),
    cost,
  };
  pending.add(out);
  rt.beforeWrite = beforeWrite;
  if (!fusionEnabled) materialize(out);
  else if (pending.size > MAX_PENDING) materialize(pending.values().next().value!);
  return out;
}

function costOf(operands: readonly Operand[], shape: readonly number[]): Cost {
  const c: Cost = { tensors: 0, bcast: 0, scalars: 0, nodes: 1 };
  for (const o of operands) {
    if (!(o instanceof Tensor)) {
      c.scalars++;
    } else if (o.lazy !== null) { // inlinable, same shape (see launch)
      c.tensors += Math.max(1, o.lazy.cost.tensors); // recorded on its own: one binding
      c.bcast += o.lazy.cost.bcast;
      c.scalars += o.lazy.cost.scalars;
      c.nodes += o.lazy.cost.nodes;
    } else {
      c.tensors++;
      const mode = modeOf(o, shape);
      if (mode === "bcast" || mode === "tail") c.bcast++; // both take a slot of strides
    }
  }
  return c;
}

function exceeds(c: Cost): boolean {
  return c.tensors > LIMIT.tensors || c.bcast > LIMIT.bcast || c.scalars > LIMIT.scalars ||
    c.nodes > LIMIT.nodes;
}

/**
 * Records the kernel of a pending tensor now, with everything pending below it inline. No-op
 * for a tensor that is not pending. @internal
 */
export function materialize(t: Tensor): void {
  const def = t.lazy;
  if (def === null) return;
  recordGraphInputs(def);
  t.lazy = null;
  pending.delete(t);
  if (t.runtime.lost) return; // nothing to compute on; buffer() reports the loss
  const prev = recording;
  recording = true;
  try {
    record(t, def);
  } finally {
    recording = prev;
    freeHeld(def.leaves);
  }
}

/**
 * Records first the pending inputs of `def` (searched through those it computes inline) that
 * are nodes of the autograd graph: backward reads them again, so computing them inline too
 * would compute them twice; they are read from their buffers instead.
 */
function recordGraphInputs(def: LazyDef): void {
  for (const o of def.operands) {
    if (!(o instanceof Tensor) || o.lazy === null) continue;
    if (!o.disposed && o.node !== null) materialize(o);
    else recordGraphInputs(o.lazy);
  }
}

/** Whether pending `p`'s kernel reads `t` (directly or through what it computes inline). */
function reads(p: Tensor, t: Tensor): boolean {
  return p.lazy !== null && p.lazy.leaves.includes(t);
}

/** The runtime's hook: pending work that reads a buffer about to be written is recorded first. */
function beforeWrite(
  buffers: readonly PooledBuffer[],
  access?: readonly ("read" | "read_write")[],
): void {
  if (recording || pending.size === 0) return;
  const written = access ? buffers.filter((_, i) => access[i] === "read_write") : buffers;
  for (const p of pending) {
    if (p.lazy!.leaves.some((l) => !l.disposed && written.includes(l.checkUsable("fusion")))) {
      materialize(p);
    }
  }
}

/**
 * Called by `dispose()` with the tensor's buffer; true: fusion keeps the buffer, because
 * pending work still reads it, and frees it when no pending work does. A pending tensor
 * leaves the pending set (what reads it computes it inline). @internal
 */
export function released(t: Tensor, buf: PooledBuffer): boolean {
  if (t.lazy !== null) {
    pending.delete(t);
    freeHeld(t.lazy.leaves);
    return false;
  }
  if (pending.size === 0) return false;
  for (const p of pending) {
    if (reads(p, t)) {
      held.set(t, buf);
      return true;
    }
  }
  return false;
}

/** Frees the kept buffers among `leaves` that no pending work reads any more. */
function freeHeld(leaves: readonly Tensor[]): void {
  if (held.size === 0) return;
  for (const l of leaves) {
    const b = held.get(l);
    if (b === undefined) continue;
    let read = false;
    for (const p of pending) if ((read = reads(p, l))) break;
    if (!read) {
      held.delete(l);
      if (!l.runtime.lost) l.runtime.free(b);
    }
  }
}

/** Whether an intermediate of `d` in `dt` is kept as f32 (`ulp_keep32`: no codec call). */
function keeps32(d: LazyDef, dt: DType): boolean {
  return dt.name === "f32" && !(d.saturate ?? dt.saturate);
}

/**
 * Whether `def` and what it computes inline are vec4-componentwise ops whose inline
 * intermediates are f32 (what `value4` can compute as one vec4 expression).
 */
function vecTree(def: LazyDef): boolean {
  return def.vec4 &&
    def.operands.every((o) =>
      !(o instanceof Tensor) || o.lazy === null || (keeps32(o.lazy, o.dt) && vecTree(o.lazy))
    );
}

/** Generates, compiles (cached) and dispatches the kernel that computes `root`. */
function record(root: Tensor, def: LazyDef): void {
  const rt = root.runtime;
  const shape = root.shape;
  const leaves: Tensor[] = [];
  const leafName = new Map<Tensor, string>();
  const bcastSlot: number[] = [];
  const scalars: number[] = [];
  const lines: string[] = [];
  const chunks: (readonly string[])[] = [];
  const inlined = new Map<LazyDef, string>();
  const ops: string[] = [];
  // each operand's indexing mode, computed once (the cost, the loads, the vec4 views and the
  // ranges all ask)
  const modes = new Map<Tensor, Mode>();
  const modeIn = (t: Tensor): Mode => {
    let m = modes.get(t);
    if (m === undefined) modes.set(t, m = modeOf(t, shape));
    return m;
  };

  // Quads: each invocation computes groups of 4 consecutive elements, the operands of the
  // result's shape loaded 4 at a time (one 16-byte load of a one-word-per-element dtype, whole
  // words of a packed one) and passed to value() as parameters; needs whole quads.
  // (packed results keep a word per step: a quad of them measured no faster on lavapipe)
  const quad = root.size % 4 === 0 && layoutOf(root.dt, rt).lanes === 1;
  // rows (the last dimension) of whole quads: a quad never crosses a row, so a broadcast
  // operand's 4 elements lie one last-dimension stride apart from the first (one bidx a quad)
  const rowQuads = quad && shape[shape.length - 1] % 4 === 0;
  // runs of consecutive quads an invocation (`runLayout`: CPU adapters, from 256K elements); a
  // workgroup's share of an operand is RUN_WG * RUN_QUADS quads of at most 16 bytes
  const runs = quad &&
    runLayout(rt, root.size / 4 / (RUN_WG * RUN_QUADS), RUN_WG * RUN_QUADS * 16);
  // a quad as one vec4 expression (value4): every op computes vec4s componentwise, every
  // intermediate is f32 (rounded by ulp_keep4), and every operand is a parameter of value4
  const vec = quad && vecTree(def) &&
    def.leaves.every((t) => {
      const m = modeIn(t);
      return m === "same" || m === "one" || rowQuads;
    });
  const params: { k: number; mode: Mode; slot?: number }[] = [];
  const leaf = (t: Tensor): string => {
    let name = leafName.get(t);
    if (name === undefined) {
      const k = leaves.push(t) - 1;
      const mode = modeIn(t);
      let idx = "i";
      if (mode === "one") idx = "0u";
      const slot = mode === "bcast" || mode === "tail" ? bcastSlot.push(k) - 1 : -1;
      if (mode === "bcast") idx = `bidx(i, ${slot}u)`;
      if (mode === "tail") idx = `(i % u_tl(${slot}u))`;
      name = `a${k}`;
      leafName.set(t, name);
      if (quad && (mode === "same" || mode === "one")) params.push({ k, mode });
      else if (rowQuads) params.push({ k, mode, slot });
      else lines.push(`  let ${name} = ld_in${k}(${idx});`);
    }
    return name;
  };
  // the value of `d` as f32; `dt` given: an intermediate, rounded to its dtype
  const node = (d: LazyDef, dt: DType | null): string => {
    const args = d.operands.map((o) => {
      if (!(o instanceof Tensor)) {
        const k = scalars.push(o) - 1;
        return vec ? `vec4<f32>(u_s(${k}u))` : `u_s(${k}u)`;
      }
      if (o.lazy === null) return leaf(o);
      // a pending input: computed inline (if alive, it stays pending for its own readers)
      let v = inlined.get(o.lazy);
      if (v === undefined) {
        v = node(o.lazy, o.dt);
        inlined.set(o.lazy, v);
      }
      return v;
    });
    ops.push(d.op);
    if (d.wgsl !== "") chunks.push([d.wgsl]);
    const name = `v${ops.length - 1}`;
    let value = d.expr(args);
    if (dt !== null) {
      // also for f32: the bit operations of its codec keep a compiler from contracting the
      // multiply of one op and the add of the next into one fma, which would round once
      // f32 round to nearest: decode(encode(v)) is v with NaN canonicalised, checked once
      if (vec) { // (vecTree: an f32 without saturation)
        chunks.push([WGSL_KEEP4]);
        value = `ulp_keep4(${value})`;
      } else if (keeps32(d, dt)) {
        chunks.push([WGSL_KEEP32]);
        value = `ulp_keep32(${value})`;
      } else {
        const c = wgslCodec(dt, { saturate: d.saturate });
        chunks.push(c.chunks);
        value = `${c.decode}(${c.encode}(${value}, 0u))`;
      }
    }
    lines.push(`  let ${name} = ${value};`);
    return name;
  };
  const result = node(def, null);
  if (leaves.length > LIMIT.tensors || bcastSlot.length > LIMIT.bcast) {
    throw new Error(`internal: fused kernel ${ops.join("+")} exceeds its binding bounds`);
  }

  const outDt = root.dt;
  const outL = layoutOf(outDt, rt);
  const body = `${lines.join("\n")}\n  return ${result};`;
  const nB = bcastSlot.length;
  const tail = bcastSlot.map((k) => modeIn(leaves[k]) === "tail" ? leaves[k].size : 0);
  const key = `ew|${
    quad ? params.map((p) => p.mode).join(",") + (rowQuads ? `|rank${shape.length}` : "") : "-"
  }|${runs ? "runs|" : ""}${vec ? "v4|" : ""}${body}|${def.rounding}|${def.saturate}|${nB}`;
  // one-word-per-element operands of the result's shape, and such a result, are read and
  // written as vec4s in quads
  const v4 = (t: Tensor | null): boolean => {
    const l = t === null ? outL : layoutOf(t.dt, rt);
    // (a tail operand of rows of whole quads: its quads start at multiples of 4 too)
    const m = t === null ? "same" : modeIn(t);
    return quad && l.lanes === 1 && l.elem === "u32" &&
      (m === "same" || (m === "tail" && rowQuads));
  };
  const label = ops.length === 1 ? def.op : `fused(${ops.join("+")})`;
  const p = program(rt, key, {
    label,
    bindings: [
      ...leaves.map((t, k) => ({
        name: `in${k}`,
        type: layoutOf(t.dt, rt),
        access: "read" as const,
        vec4: v4(t),
      })),
      {
        name: "out",
        type: outL,
        access: "read_write" as const,
        encode: { rounding: def.rounding, saturate: def.saturate },
        vec4: v4(null),
      },
    ],
    uniforms: [
      { name: "n", type: "u32" },
      { name: "rank", type: "u32" },
      { name: "seed", type: "u32" },
      { name: "s", type: "f32", length: LIMIT.scalars },
      { name: "shape", type: "u32", length: MAX_RANK },
      { name: "st", type: "u32", length: MAX_RANK * Math.max(1, nB) },
      // each tail operand's size (its slot's)
      ...(tail.some((v) => v > 0) ? [{ name: "tl", type: "u32" as const, length: nB }] : []),
    ],
    workgroupSize: runs ? RUN_WG : WG,
  }, () => ({
    source: quad
      ? quadSource(
        v4(null),
        params.map((p) => ({ ...p, v4: v4(leaves[p.k]) })),
        body,
        def.rounding,
        shape.length,
        vec,
        runs,
      )
      : source(outL.lanes, body, def.rounding),
    chunks,
  }));
  // strides of the broadcast leaves, MAX_RANK per slot
  const st = new Array(MAX_RANK * Math.max(1, nB)).fill(0);
  bcastSlot.forEach((k, slot) => {
    bcastStrides(leaves[k].shape, shape).forEach((v, d) => (st[MAX_RANK * slot + d] = v));
  });
  // each workgroup writes PER_THREAD * WG words (QUADS * WG quads, or RUN_WG runs of RUN_QUADS
  // quads): the elements [g0, g1) of a piece
  const n = root.size;
  const per = runs ? RUN_WG * RUN_QUADS * 4 : WG * (quad ? 4 * QUADS : PER_THREAD * outL.lanes);
  const own = (g0: number, g1: number): [number, number] => [g0 * per, Math.min(n, g1 * per)];
  const buffers: Record<string, PooledBuffer> = { out: root.checkUsable(label) };
  const ranges: Record<string, (g0: number, g1: number) => readonly [number, number]> = {
    out: own,
  };
  leaves.forEach((t, k) => {
    buffers[`in${k}`] = held.get(t) ?? t.buffer(label);
    const mode = modeIn(t);
    if (mode === "same") ranges[`in${k}`] = own;
    else if (mode === "one") ranges[`in${k}`] = () => [0, 1];
    else {
      const s = bcastStrides(t.shape, shape);
      const r = stridedRange(shape.map((size, d) => ({ size, stride: s[d] })));
      ranges[`in${k}`] = (g0, g1) => r(...own(g0, g1));
    }
  });
  try {
    p.run({
      buffers,
      uniforms: {
        n,
        rank: shape.length,
        seed: def.seed,
        s: scalars,
        shape,
        st,
        ...(tail.some((v) => v > 0) ? { tl: tail } : {}),
      },
      groups: Math.ceil(n / per),
      ranges,
    });
  } catch (e) {
    if (!(e instanceof DeviceError)) throw e;
    // name the operands as the user knows them (the kernel calls them in0, in1, ...)
    const ins = leaves.map((t, k) => `in${k}: ${fmtShape(t.shape)} ${t.dtype}`).join(", ");
    throw new DeviceError(
      `${e.message} (operands ${ins}; result ${fmtShape(shape)} ${outDt.name}; a broadcast ` +
        `operand that large can be expanded to the result's shape first)`,
      { cause: e },
    );
  }
}

/** The kernel: `value(i)` (the expression) for each lane of PER_THREAD words per invocation. */
function source(lanes: number, body: string, rounding: Rounding): string {
  const rand = (i: string) => rounding === "stochastic" ? `ulp_rand(u.seed, ${i})` : "0u";
  // the lanes of word w, unrolled (constant vector indices keep v and r in registers)
  let word = "";
  for (let l = 0; l < lanes; l++) {
    const i = l === 0 ? "i0" : `i0 + ${l}u`, c = "xyzw"[l];
    const set = `v.${c} = value(${i}); r.${c} = ${rand(i)};`;
    word += l === 0 ? `    ${set}\n` : `    if (${i} < u.n) { ${set} }\n`;
  }
  return `
${WGSL_BIDX}fn value(i: u32) -> f32 {
${body}
}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let base = wg * ${WG * PER_THREAD}u + li;
  // past the end: skip, not return (llvmpipe runs a loop with a return inside ~30% slower)
  for (var e = 0u; e < ${PER_THREAD}u; e = e + 1u) {
    let w = base + e * ${WG}u;
    if (w * ${lanes}u < u.n) {
    let i0 = w * ${lanes}u;
    var v = vec4<f32>(0.0);
    var r = vec4<u32>(0u);
${word}    st_out(w, v, r);
    }
  }
}
`;
}

/**
 * The kernel over quads: QUADS groups of 4 consecutive elements per invocation, strided
 * by the workgroup size (with `runs`, RUN_QUADS consecutive quads per invocation); operands
 * of the result's shape loaded as one vec4 each (one-word dtypes through their vec4 view,
 * `lq_`: no alignment test), one-element operands once; the result stored as one vec4
 * (`vec4Out`) or element by element (f16).
 */
function quadSource(
  vec4Out: boolean,
  params: readonly { k: number; mode: Mode; slot?: number; v4: boolean }[],
  body: string,
  rounding: Rounding,
  rank: number,
  vec: boolean,
  runs: boolean,
): string {
  const rand = (i: string) => rounding === "stochastic" ? `ulp_rand(u.seed, ${i})` : "0u";
  const decl = params.map((p) => `, a${p.k}: ${vec ? "vec4<f32>" : "f32"}`).join("");
  const ones = params.filter((p) => p.mode === "one")
    .map((p) => `  let a${p.k} = ld_in${p.k}(0u);\n`).join("");
  // a broadcast operand (rows of whole quads): the first element's offset, then its stride
  const bc = (p: { k: number; slot?: number }) => {
    const o = `o${p.k}`, st = `u_st(${MAX_RANK * p.slot! + rank - 1}u)`;
    return `    let ${o} = bidx(i0, ${p.slot}u);\n    let q${p.k} = vec4<f32>(ld_in${p.k}(${o}), ` +
      `ld_in${p.k}(${o} + ${st}), ld_in${p.k}(${o} + 2u * ${st}), ld_in${p.k}(${o} + 3u * ${st}));\n`;
  };
  // a tail operand (rows of whole quads): the quad at the index's remainder, a multiple of 4
  const tl = (p: { k: number; slot?: number; v4: boolean }) => {
    const o = `o${p.k}`;
    return `    let ${o} = i0 % u_tl(${p.slot}u);\n` +
      (p.v4
        ? `    let q${p.k} = lq_in${p.k}(${o} / 4u);\n`
        : `    let q${p.k} = ld4_in${p.k}(${o}, 4u);\n`);
  };
  const loads = params.filter((p) => p.mode !== "one")
    .map((p) =>
      p.mode === "tail" ? tl(p) : p.mode !== "same"
        ? bc(p)
        // a vec4 view: quad q is one 16-byte load, no alignment test (i0 = 4q)
        : p.v4
        ? `    let q${p.k} = lq_in${p.k}(q);\n`
        : `    let q${p.k} = ld4_in${p.k}(i0, 4u);\n`
    ).join("");
  let calls = "";
  if (vec) {
    const args = params.map((p) => p.mode === "one" ? `, vec4<f32>(a${p.k})` : `, q${p.k}`);
    calls = `    v = value(i0${args.join("")});\n`;
    if (rounding === "stochastic") {
      calls += `    r = vec4<u32>(${[0, 1, 2, 3].map((l) => rand(l ? `i0 + ${l}u` : "i0"))});\n`;
    }
  } else {
    for (let l = 0; l < 4; l++) {
      const c = "xyzw"[l], i = l === 0 ? "i0" : `i0 + ${l}u`;
      const args = params.map((p) => p.mode === "one" ? `, a${p.k}` : `, q${p.k}.${c}`).join("");
      calls += `    v.${c} = value(${i}${args}); r.${c} = ${rand(i)};\n`;
    }
  }
  // one-lane results only (an f16 one element by element)
  let store: string;
  if (vec4Out) store = "    st4_out(q, v, r);\n";
  else {
    store = [0, 1, 2, 3].map((l) => {
      const c = "xyzw"[l];
      return `    st_out(i0 + ${l}u, vec4<f32>(v.${c}), vec4<u32>(r.${c}));\n`;
    }).join("");
  }
  return `
${WGSL_BIDX}fn value(i: u32${decl}) -> ${vec ? "vec4<f32>" : "f32"} {
${body}
}
fn kernel(wg: u32, lid: vec3u, li: u32) {
${ones}${
    runs
      ? `  let base = (wg * ${RUN_WG}u + li) * ${RUN_QUADS}u;
  for (var e = 0u; e < ${RUN_QUADS}u; e = e + 1u) {
    let q = base + e;`
      : `  let base = wg * ${WG * QUADS}u + li;
  for (var e = 0u; e < ${QUADS}u; e = e + 1u) {
    let q = base + e * ${WG}u;`
  }
    let i0 = q * 4u;
    if (i0 < u.n) {
${loads}    var v = vec4<f32>(0.0);
    var r = vec4<u32>(0u);
${calls}${store}    }
  }
}
`;
}

provideTensorHooks({ materialize, released });
