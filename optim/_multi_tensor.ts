/**
 * The multi-tensor update behind every optimizer step: all parameters of a parameter group
 * are updated by ONE dispatch (a few more only if the group's parameters have more than 12
 * distinct step counts), whatever the number of parameters.
 *
 * Why flat buffers: WebGPU limits the storage buffers a kernel binds
 * (`maxStorageBuffersPerShaderStage`: 16 on GL, 32 on Vulkan here), so a kernel cannot bind
 * each parameter, gradient and state separately. Per group, the optimizer therefore keeps:
 *
 * - one flat buffer per optimizer state (m, v, momentum, and a strategy's extra states such
 *   as Collage's low parts), purpose "optimizer": the states live there permanently;
 * - one flat staging buffer for the parameters and one for the gradients, purpose
 *   "scratch" (they cost the bytes of one copy of the params and of the grads). A tensor
 *   cannot be a view into another buffer, and the model owns its parameters, so each step
 *   copies every gradient and parameter into its segment (`copyBufferToBuffer`, outside the
 *   compute pass, no shader), runs the update, and copies the parameters back: 3 copies per
 *   parameter, 1 dispatch per group. Parameters are copied in every step (not only once)
 *   so that writes to them between steps (a model `loadStateDict`, `copy_`) are seen.
 *
 * Segments start on a multiple of 4 elements (`ALIGN`), so each segment begins on a whole
 * u32 word for every lane width (f32, bf16/f16, FP8). An invocation handles `E` consecutive
 * elements, E = the largest lanes-per-word among the bound buffers (1 for fp32, 2 for
 * bf16), and writes whole words of every buffer (DESIGN.md: a thread owns whole words).
 * Elements past a parameter's end (segment padding) are written as 0 and never read back.
 *
 * Workgroups are assigned by a chunk table (as apex's multi_tensor_apply): entry c =
 * (first element, end element, step class, parameter index) covers up to `WG * E * 4`
 * elements of one parameter. The table is rebuilt on the host and written only when the set
 * of parameters with a gradient or their step classes change (never in steady state).
 * Per-step values that depend on a parameter's step count (Adam's bias corrections, SGD's
 * "first step" flag) go in the uniform block, one vec4 per distinct class, at most 12 per
 * dispatch; the hyperparameters (lr, betas, ...) are uniforms too. A step reads nothing back.
 *
 * The kernel decodes each buffer with its dtype's decoder, runs the update body in f32 and
 * encodes each stored value once (`q_<name>` rounds to the stored dtype), so the dtypes
 * come from the precision strategy and a strategy may replace the body (Collage's MCF).
 *
 * Reference: NVIDIA apex `multi_tensor_apply`; PyTorch `_foreach` optimizers.
 *
 * @module
 */

import { type DType, wgslChunks, wgslCodec } from "../dtypes/mod.ts";
import { ShapeError, ValueError } from "../errors.ts";
import { currentRuntime, type Kernel, type Runtime } from "../gpu/mod.ts";
import { noGrad } from "../autograd/mod.ts";
import { fmtShape, keep, Tensor, tensor, zeros } from "../tensor/mod.ts";
import {
  type Layout,
  layoutOf,
  needsF16,
  storageBytes,
  wgslBinding,
  wgslEncoder,
  wgslLoad,
} from "../tensor/layout.ts";
import type { StateSpec } from "./precision.ts";

/** Invocations per workgroup. */
export const WG = 256;
/** Segments of flat buffers start on a multiple of this many elements. */
export const ALIGN = 4;
/** Element groups per invocation in one chunk. */
const ITEMS = 4;
/** Hyperparameters (f32) an update program may name. */
export const MAX_HYPER = 12;
/** Distinct step classes one dispatch can hold (one vec4 each). */
export const MAX_CLASSES = 12;

/** A bound buffer of an update program. */
export interface BufferSpec extends StateSpec {
  /** Whether the kernel writes it. */
  readonly access: "read" | "read_write";
}

/** What an optimizer gives the multi-tensor kernel generator. */
export interface UpdateProgram {
  /** The optimizer's name, for errors and the pipeline label. */
  readonly label: string;
  /** Bound buffers: `param` and `grad` first, then states. */
  readonly buffers: readonly BufferSpec[];
  /** Names of the f32 hyperparameters, in uniform order (at most 12). */
  readonly hyper: readonly string[];
  /** Names of the per-class values (at most 4: one vec4). */
  readonly classVals: readonly string[];
  /** WGSL statements assigning `y.<name>` from `x.<name>` (see `UpdateBodyContext`). */
  readonly body: string;
}

/** Element offsets of segments aligned to `ALIGN`, and the total length. */
export function segments(sizes: readonly number[]): { offsets: number[]; total: number } {
  const offsets: number[] = [];
  let total = 0;
  for (const n of sizes) {
    offsets.push(total);
    total += Math.ceil(n / ALIGN) * ALIGN;
  }
  return { offsets, total: Math.max(total, ALIGN) };
}

/** Elements per invocation: the largest lanes-per-word of the layouts. */
export function groupElems(layouts: readonly Layout[]): number {
  return Math.max(1, ...layouts.map((l) => l.lanes));
}

/** Byte offset of element `elem` (a multiple of ALIGN) in a flat buffer of dtype `d`. */
export function byteOffset(d: DType, elem: number): number {
  return (elem * d.laneBits) / 8;
}

/**
 * WGSL statements that store E values (expressions) of elements `s .. s+E-1` (s a multiple
 * of E) into buffer `v` of layout `l`, whole words at a time.
 */
export function wgslStore(l: Layout, v: string, enc: string, vals: readonly string[]): string {
  const E = vals.length;
  if (l.elem === "f16") {
    return vals.map((x, k) => `  ${v}[s + ${k}u] = f16(unpack2x16float(${enc}(${x}, 0u)).x);\n`)
      .join("");
  }
  if (l.lanes === 1) return vals.map((x, k) => `  ${v}[s + ${k}u] = ${enc}(${x}, 0u);\n`).join("");
  const mask = (2 ** l.laneBits - 1) >>> 0;
  let out = "";
  for (let w = 0; w < E / l.lanes; w++) {
    const parts: string[] = [];
    for (let k = 0; k < l.lanes; k++) {
      parts.push(`((${enc}(${vals[w * l.lanes + k]}, 0u) & ${mask}u) << ${k * l.laneBits}u)`);
    }
    out += `  ${v}[s / ${l.lanes}u + ${w}u] = ${parts.join(" | ")};\n`;
  }
  return out;
}

/** The WGSL of an update program on the runtime's device. */
export function updateSource(rt: Runtime, prog: UpdateProgram): string {
  if (prog.hyper.length > MAX_HYPER || prog.classVals.length > 4) {
    throw new ValueError(`${prog.label}: too many hyperparameters for one uniform block`);
  }
  const layouts = prog.buffers.map((b) => layoutOf(b.dtype, rt));
  const E = groupElems(layouts);
  const chunks: string[][] = [];
  let decl = "", quant = "", fields = "", loadArgs = "", stores = "";
  const nb = prog.buffers.length;
  prog.buffers.forEach((b, k) => {
    const l = layouts[k];
    decl += wgslBinding(l, 0, k, `b_${b.name}`, b.access);
    chunks.push(wgslLoad(l, `b_${b.name}`, `ld_${b.name}`));
    const codec = wgslCodec(b.dtype);
    const enc = wgslEncoder(l);
    chunks.push([...codec.chunks], [...enc.chunks]);
    quant += `fn q_${b.name}(v: f32) -> f32 { return ${codec.decode}(${enc.name}(v, 0u)); }\n`;
    fields += `  ${b.name}: f32,\n`;
    loadArgs += `${k ? ", " : ""}ld_${b.name}(i)`;
    if (b.access === "read_write") {
      const vals = Array.from({ length: E }, (_, j) => `r${j}.${b.name}`);
      stores += wgslStore(l, `b_${b.name}`, enc.name, vals);
    }
  });
  decl += `@group(0) @binding(${nb}) var<storage, read> chunks: array<vec4<u32>>;\n`;
  decl += `@group(0) @binding(${nb + 1}) var<uniform> u: U;\n`;
  const aliases = prog.hyper.map((h, k) => `  let ${h} = u.h[${k >> 2}][${k & 3}];\n`).join("") +
    prog.classVals.map((c, k) => `  let ${c} = kv[${k}];\n`).join("");
  let lanes = "";
  for (let j = 0; j < E; j++) {
    lanes += `    var r${j}: St;\n`;
    lanes += j === 0
      ? `    r0 = update(load(s), kv);\n`
      : `    if (s + ${j}u < e.y) { r${j} = update(load(s + ${j}u), kv); }\n`;
  }
  const f16 = needsF16(layouts) ? "enable f16;\n" : "";
  return `${f16}${wgslChunks(...chunks)}
struct U { n: u32, base: u32, seed: u32, one: f32, h: array<vec4<f32>, 3>, k: array<vec4<f32>, ${MAX_CLASSES}> }
${decl}${quant}
fn ulp_nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
fn ulp_isnan(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }
fn ulp_max(a: f32, b: f32) -> f32 { return select(max(a, b), a + b, ulp_isnan(a) || ulp_isnan(b)); }
struct St {
${fields}}
fn load(i: u32) -> St { return St(${loadArgs}); }
fn update(x: St, kv: vec4<f32>) -> St {
${aliases}  var y = x;
${prog.body}
  return y;
}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let c = wid.x + wid.y * nwg.x;
  if (c >= u.n) { return; }
  let e = chunks[u.base + c];
  let kv = u.k[e.z];
  for (var s = e.x + li * ${E}u; s < e.y; s = s + ${WG * E}u) {
${lanes}${stores.replace(/^ {2}/gm, "    ")}  }
}
`;
}

/**
 * The flat storage and the step of one parameter group: segments, staging buffers, state
 * buffers, per-parameter step counts and the chunk table.
 */
export class FlatGroup {
  /** The group's parameters, in order. */
  readonly params: readonly Tensor[];
  /** Element offset of each parameter's segment. */
  readonly offsets: readonly number[];
  /** Elements of every flat buffer (segments with padding). */
  readonly total: number;
  /** Number of updates each parameter has had (Adam's `step`). */
  readonly steps: number[];
  #param: DType;
  #grad: DType;
  #states: StateSpec[] = [];
  #bufs = new Map<string, Tensor>();
  #table: Tensor | null = null;
  #tableKey = "";
  #kernels = new Map<string, Kernel>();
  #E = 1;
  #label: string;

  /** The flat layout of `params` stored as `param`, with gradients read as `grad`. */
  constructor(label: string, params: readonly Tensor[], param: DType, grad: DType) {
    this.#label = label;
    this.params = params;
    const { offsets, total } = segments(params.map((p) => p.size));
    this.offsets = offsets;
    this.total = total;
    this.steps = params.map(() => 0);
    this.#param = param;
    this.#grad = grad;
  }

  /** Whether the buffers were allocated (after the first step or a load). */
  get allocated(): boolean {
    return this.#bufs.size > 0;
  }

  /** The state specs of the allocated buffers. */
  get states(): readonly StateSpec[] {
    return this.#states;
  }

  /** The flat tensor holding buffer `name` (param, grad or a state). @internal */
  flat(name: string): Tensor {
    const t = this.#bufs.get(name);
    if (!t) throw new ValueError(`${this.#label}: no optimizer state '${name}'`);
    return t;
  }

  /**
   * Allocates (zero-filled) the staging buffers and the state buffers of `states`, keeping
   * existing states of the same name and dtype, freeing states no longer named.
   */
  ensure(states: readonly StateSpec[]): void {
    const want: StateSpec[] = [
      { name: "param", dtype: this.#param },
      { name: "grad", dtype: this.#grad },
      ...states,
    ];
    const next = new Map<string, Tensor>();
    for (const s of want) {
      const old = this.#bufs.get(s.name);
      if (old && old.dt === s.dtype) {
        next.set(s.name, old);
        this.#bufs.delete(s.name);
      } else {
        const purpose = s.name === "param" || s.name === "grad" ? "scratch" : "optimizer";
        next.set(s.name, keep(zeros([this.total], { dtype: s.dtype, purpose })));
      }
    }
    for (const t of this.#bufs.values()) t.dispose();
    this.#bufs = next;
    this.#states = [...states];
    this.#E = groupElems(want.map((s) => layoutOf(s.dtype, currentRuntime())));
  }

  /** Zeroes every state and step count (before loading a state dict). */
  resetStates(): void {
    const states = this.#states;
    for (const s of states) {
      this.#bufs.get(s.name)?.dispose();
      this.#bufs.delete(s.name);
    }
    this.ensure(states);
    this.steps.fill(0);
  }

  /** A copy of parameter `i`'s segment of state `name`, shaped like the parameter. */
  readState(i: number, name: string): Tensor {
    const flat = this.flat(name);
    const p = this.params[i];
    const out = Tensor.empty(p.shape, flat.dt, "optimizer");
    const rt = currentRuntime();
    rt.copy(
      flat.buffer("stateDict()"),
      byteOffset(flat.dt, this.offsets[i]),
      out.buffer("stateDict()"),
      0,
      storageBytes(flat.dt, p.size),
    );
    return out;
  }

  /** Writes `src` (cast to the state's dtype) into parameter `i`'s segment of state `name`. */
  writeState(i: number, name: string, src: Tensor, where: string): void {
    const flat = this.flat(name);
    const p = this.params[i];
    if (src.size !== p.size || src.shape.some((v, d) => v !== p.shape[d])) {
      throw new ShapeError(
        `${this.#label}.loadStateDict(): ${where}.${name} has shape ${
          fmtShape(src.shape)
        } but the parameter has shape ${fmtShape(p.shape)}`,
      );
    }
    const c = src.dt === flat.dt ? src : noGrad(() => src.cast(flat.dt));
    currentRuntime().copy(
      c.buffer("loadStateDict()"),
      0,
      flat.buffer("loadStateDict()"),
      byteOffset(flat.dt, this.offsets[i]),
      storageBytes(flat.dt, p.size),
    );
    if (c !== src) c.dispose();
  }

  /** Frees every buffer. */
  dispose(): void {
    for (const t of this.#bufs.values()) t.dispose();
    this.#bufs.clear();
    this.#table?.dispose();
    this.#table = null;
    this.#tableKey = "";
  }

  /** The kernel of a program, compiled once per key. */
  #kernel(rt: Runtime, key: string, p: UpdateProgram): Kernel {
    let k = this.#kernels.get(key);
    if (!k) {
      k = rt.kernel(p.label, updateSource(rt, p), {
        buffers: [...p.buffers.map((b) => b.access), "read"],
        uniform: true,
      });
      this.#kernels.set(key, k);
    }
    return k;
  }

  /** Allocates the buffers of `prog` if they are not (or not all) there yet. */
  prepare(prog: UpdateProgram): void {
    const states = prog.buffers.filter((b) => b.name !== "param" && b.name !== "grad");
    const same = this.allocated && states.length === this.#states.length &&
      states.every((s, k) => s.name === this.#states[k].name && s.dtype === this.#states[k].dtype);
    if (!same) this.ensure(states.map((s) => ({ name: s.name, dtype: s.dtype })));
  }

  /**
   * One update of every parameter that has a gradient: stage, dispatch, unstage. `prog`
   * (compiled once per `programKey`) names the buffers; `keyOf` maps a parameter's step
   * count (already incremented) to its class; `valuesOf` gives a class's vec4. Returns the
   * number of dispatches recorded (casts of mismatched gradients excluded).
   */
  step(
    op: string,
    programKey: string,
    prog: UpdateProgram,
    hyper: readonly number[],
    keyOf: (step: number) => number,
    valuesOf: (key: number) => readonly number[],
  ): number {
    const active: number[] = [];
    this.params.forEach((p, i) => {
      const g = p.grad;
      if (g === null) return;
      if (g.size !== p.size) {
        throw new ShapeError(
          `${op}: the gradient of parameter ${i} has shape ${fmtShape(g.shape)}, the parameter ${
            fmtShape(p.shape)
          }`,
        );
      }
      active.push(i);
    });
    if (active.length === 0) return 0;
    const rt = currentRuntime();
    this.prepare(prog);
    const kernel = this.#kernel(rt, programKey, prog);
    const P = this.flat("param"), G = this.flat("grad");
    const pBuf = P.buffer(op), gBuf = G.buffer(op);
    // stage: gradients and parameters into their segments
    for (const i of active) {
      const p = this.params[i];
      const g = p.grad!;
      const gc = g.dt === G.dt ? g : noGrad(() => g.cast(G.dt));
      const off = this.offsets[i];
      rt.copy(gc.buffer(op), 0, gBuf, byteOffset(G.dt, off), storageBytes(G.dt, p.size));
      if (gc !== g) gc.dispose();
      rt.copy(p.buffer(op), 0, pBuf, byteOffset(P.dt, off), storageBytes(P.dt, p.size));
    }
    // step classes, in order of first appearance; entries sorted by class
    const classOf = new Map<number, number>();
    const keys: number[] = [];
    const cls = active.map((i) => {
      const key = keyOf(++this.steps[i]);
      let c = classOf.get(key);
      if (c === undefined) {
        c = keys.length;
        classOf.set(key, c);
        keys.push(key);
      }
      return c;
    });
    const order = active.map((_, j) => j).sort((a, b) => cls[a] - cls[b] || a - b);
    const chunk = WG * this.#E * ITEMS;
    const tableKey = order.map((j) => `${active[j]}:${cls[j]}`).join(",");
    // entries per dispatch (each dispatch holds MAX_CLASSES classes)
    const counts: number[] = new Array(Math.ceil(keys.length / MAX_CLASSES)).fill(0);
    const rows: number[] = [];
    for (const j of order) {
      const i = active[j];
      const start = this.offsets[i], end = start + this.params[i].size;
      for (let s = start; s < end; s += chunk) {
        rows.push(s, Math.min(end, s + chunk), cls[j] % MAX_CLASSES, i);
        counts[Math.floor(cls[j] / MAX_CLASSES)]++;
      }
    }
    if (tableKey !== this.#tableKey || this.#table === null) {
      const cap = this.params.reduce((a, p) => a + Math.max(1, Math.ceil(p.size / chunk)), 0);
      if (this.#table === null || this.#table.size < 4 * cap) {
        this.#table?.dispose();
        this.#table = keep(
          tensor(new Uint32Array(4 * cap), { dtype: "u32", purpose: "scratch" }),
        );
      }
      rt.write(this.#table.buffer(op), new Uint32Array(rows));
      this.#tableKey = tableKey;
    }
    const bufs = prog.buffers.map((b) => this.flat(b.name).buffer(op));
    bufs.push(this.#table!.buffer(op));
    let base = 0, dispatches = 0;
    counts.forEach((n, d) => {
      const u = new Uint32Array(64);
      const f = new Float32Array(u.buffer);
      u[0] = n;
      u[1] = base;
      f[3] = 1;
      hyper.forEach((h, k) => (f[4 + k] = h));
      for (let c = 0; c < MAX_CLASSES && d * MAX_CLASSES + c < keys.length; c++) {
        valuesOf(keys[d * MAX_CLASSES + c]).forEach((v, k) => (f[16 + 4 * c + k] = v));
      }
      if (n > 0) {
        rt.dispatch(kernel, bufs, rt.grid(n), u);
        dispatches++;
      }
      base += n;
    });
    // unstage: the updated parameters back into the model's tensors
    for (const i of active) {
      const p = this.params[i];
      rt.copy(
        pBuf,
        byteOffset(P.dt, this.offsets[i]),
        p.buffer(op),
        0,
        storageBytes(P.dt, p.size),
      );
    }
    return dispatches;
  }
}
