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
 * Skipping on the device (GradScaler): from the first step given a `found_inf` flag on, a
 * group keeps its step counts in a u32 buffer ("optimizer" state, 4 bytes per parameter
 * tensor). The kernel binds that buffer and the flag; when the flag is set no invocation
 * writes anything, so a skipped step leaves parameters and states bit-identical; otherwise
 * each chunk computes its per-step values from `t = steps[param] + 1` (Adam's bias
 * corrections with `beta^t` by repeated squaring in f32, as PyTorch's capturable Adam does
 * on the device), and a one-thread-per-parameter dispatch then adds 1 to the counts unless
 * the flag is set. The host count stays an upper bound (it says which parameters have
 * state). A group never moves its counts back to the host.
 *
 * Diagnostics (`KernelMode.diag`): the same kernel with `account()` per element: counters
 * (atomics on u32) and the sums <e, u> and ||u||^2 as per-workgroup partials in f32, which a
 * one-workgroup dispatch reduces; the update itself is the same function, so it is unchanged.
 *
 * Reference: NVIDIA apex `multi_tensor_apply`; PyTorch `_foreach` optimizers.
 *
 * @module
 */

import { type DType, float32, wgslChunks, wgslCodec } from "../dtypes/mod.ts";
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
  /**
   * WGSL statements that set `kv` (the per-class vec4, `classVals` order) from the update
   * number `t: u32` (1-based) with the hyperparameters in scope: the per-step values computed
   * on the device, for groups whose step counts live there (`KernelMode.device`).
   */
  readonly deviceClass: string;
  /**
   * WGSL expression of the effective update of the stored value, from `x` (old) and `y`
   * (new), for the diagnostics. Default `y.param - x.param`; an MCF weight adds its low part.
   */
  readonly effective?: string;
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
 * Copies tensors of one dtype into a new flat scratch tensor at word-aligned offsets and
 * builds the chunk table rows (start, end, 0, tensor index) of `chunk` elements each, as the
 * flat kernels of clipping and unscaling read them. `unstage` copies the values back. @internal
 */
export function stage(op: string, dt: DType, ts: readonly Tensor[], chunk: number): {
  flat: Tensor;
  offsets: number[];
  rows: number[];
  unstage(): void;
} {
  const rt = currentRuntime();
  const { offsets, total } = segments(ts.map((t) => t.size));
  const flat = Tensor.empty([total], dt, "scratch");
  const rows: number[] = [];
  ts.forEach((t, i) => {
    rt.copy(t.buffer(op), 0, flat.buffer(op), byteOffset(dt, offsets[i]), storageBytes(dt, t.size));
    for (let s = offsets[i]; s < offsets[i] + t.size; s += chunk) {
      rows.push(s, Math.min(offsets[i] + t.size, s + chunk), 0, i);
    }
  });
  const unstage = () =>
    ts.forEach((t, i) =>
      rt.copy(
        flat.buffer(op),
        byteOffset(dt, offsets[i]),
        t.buffer(op),
        0,
        storageBytes(dt, t.size),
      )
    );
  return { flat, offsets, rows, unstage };
}

/**
 * WGSL statements that store E values (expressions) of elements `s .. s+E-1` (s a multiple
 * of E) into buffer `v` of layout `l`, whole words at a time.
 */
/** Tensors grouped by dtype, in first-seen order, each checked for use after dispose. @internal */
export function byDtype(op: string, ts: readonly Tensor[]): Map<DType, Tensor[]> {
  const out = new Map<DType, Tensor[]>();
  for (const t of ts) {
    t.buffer(op);
    const list = out.get(t.dt);
    if (list) list.push(t);
    else out.set(t.dt, [t]);
  }
  return out;
}

/** What a flat in-place kernel adds to the shared skeleton (see `flatInPlaceSource`). */
export interface FlatInPlace {
  /** Storage declarations after `x` and `chunks` (bindings 2, 3, ...), without `@binding`. */
  bindings: readonly string[];
  /** WGSL functions the body calls. */
  helpers?: string;
  /** Statements at the start of each workgroup's chunk (after `e = chunks[c]`). */
  prelude?: string;
  /** Statements that set `v` (an f32 var) from the loaded value `a`. */
  lane: (a: string, v: string) => string;
  /** Statements after the chunk's loop. */
  epilogue?: string;
}

/**
 * WGSL of a kernel that rewrites a flat buffer `x` of layout `l` in place, chunk by chunk of
 * the chunk table (one workgroup a chunk, whole words per invocation): the skeleton that
 * clipping and unscaling share. The uniform block is `U { n: chunk count, ... }`. @internal
 */
export function flatInPlaceSource(l: Layout, spec: FlatInPlace): string {
  const E = groupElems([l]);
  const enc = wgslEncoder(l);
  let lanes = "";
  for (let j = 0; j < E; j++) {
    lanes += j === 0
      ? `    let a0 = ld(s);\n    var v0 = 0.0;\n    ${spec.lane("a0", "v0")}\n`
      : `    var v${j} = 0.0;\n    if (s + ${j}u < e.y) { let a = ld(s + ${j}u); ${
        spec.lane("a", `v${j}`)
      } }\n`;
  }
  const store = wgslStore(l, "x", enc.name, Array.from({ length: E }, (_, j) => `v${j}`));
  const extra = spec.bindings.map((b, k) => `@group(0) @binding(${k + 2}) ${b};\n`).join("");
  return `${needsF16([l]) ? "enable f16;\n" : ""}${wgslChunks(wgslLoad(l, "x", "ld"), enc.chunks)}
struct U { n: u32, p0: u32, p1: u32, p2: u32 }
${
    wgslBinding(l, 0, 0, "x", "read_write")
  }@group(0) @binding(1) var<storage, read> chunks: array<vec4<u32>>;
${extra}@group(0) @binding(${spec.bindings.length + 2}) var<uniform> u: U;
${spec.helpers ?? ""}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let c = wid.x + wid.y * nwg.x;
  if (c >= u.n) { return; }
  let e = chunks[c];
${spec.prelude ?? ""}
  for (var s = e.x + li * ${E}u; s < e.y; s = s + ${WG * E}u) {
${lanes}${store.replace(/^ {2}/gm, "    ")}  }
${spec.epilogue ?? ""}
}
`;
}

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

/**
 * How a dispatch of an update program runs, besides the program itself.
 *
 * - `device`: the group keeps its step counts on the device (`FlatGroup.deviceSteps`) and a
 *   skip flag is bound (a GradScaler's `found_inf`): the per-step values (Adam's bias
 *   corrections) are computed in the kernel from the device count (`UpdateProgram.deviceClass`),
 *   and when the flag is non-zero the kernel writes nothing, so parameters, states and
 *   step counts stay as they were (PyTorch's skipped `optimizer.step()`).
 * - `diag`: the kernel also accumulates the diagnostics (see `Diagnostics` in
 *   `optimizer.ts`); the dtype is the one gradients are checked against for underflow and
 *   overflow. null: off.
 */
export interface KernelMode {
  /** Device step counts and a skip flag are bound. */
  readonly device: boolean;
  /** The dtype of the gradient under/overflow counts when diagnostics are on, else null. */
  readonly diag: DType | null;
}

/** The plain mode: host step counts, no skip flag, no diagnostics. */
export const PLAIN: KernelMode = { device: false, diag: null };

/** Counters of the diagnostics, in the order of the counter buffer. */
export const DIAG_COUNTERS = [
  "elements",
  "updated",
  "lost",
  "gradNonFinite",
  "gradUnderflow",
  "gradOverflow",
] as const;

const NDIAG = DIAG_COUNTERS.length;

/** The WGSL of an update program on the runtime's device, in a mode. */
export function updateSource(rt: Runtime, prog: UpdateProgram, mode: KernelMode = PLAIN): string {
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
    loadArgs += `ld_${b.name}(i), `;
    if (b.access === "read_write") {
      const vals = Array.from({ length: E }, (_, j) => `r${j}.${b.name}`);
      stores += wgslStore(l, `b_${b.name}`, enc.name, vals);
    }
  });
  let bind = nb;
  decl += `@group(0) @binding(${bind++}) var<storage, read> chunks: array<vec4<u32>>;\n`;
  if (mode.device) {
    decl += `@group(0) @binding(${bind++}) var<storage, read> steps: array<u32>;\n`;
    decl += `@group(0) @binding(${bind++}) var<storage, read> finf: array<u32>;\n`;
  }
  let diagDecl = "";
  if (mode.diag) {
    decl += `@group(0) @binding(${bind++}) var<storage, read_write> partials: array<f32>;\n`;
    decl +=
      `@group(0) @binding(${bind++}) var<storage, read_write> counters: array<atomic<u32>>;\n`;
    const dl = layoutOf(mode.diag, rt);
    const codec = wgslCodec(mode.diag);
    const enc = wgslEncoder(dl);
    chunks.push([...codec.chunks], [...enc.chunks]);
    diagDecl = diagSource(
      `fn q_diagcast(v: f32) -> f32 { return ${codec.decode}(${enc.name}(v, 0u)); }\n`,
      prog.effective ?? "y.param - x.param",
    );
  }
  decl += `@group(0) @binding(${bind}) var<uniform> u: U;\n`;
  const hyperAliases = prog.hyper.map((h, k) => `  let ${h} = u.h[${k >> 2}][${k & 3}];\n`)
    .join("");
  const aliases = hyperAliases +
    prog.classVals.map((c, k) => `  let ${c} = kv[${k}];\n`).join("");
  let lanes = "";
  const acct = (j: number) => (mode.diag ? ` account(x${j}, r${j});` : "");
  for (let j = 0; j < E; j++) {
    lanes += j === 0
      ? `      let x0 = load(s);\n      let r0 = update(x0, kv);${acct(0)}\n`
      : `      var r${j}: St;\n      if (s + ${j}u < e.y) { let x${j} = load(s + ${j}u); r${j} = update(x${j}, kv);${
        acct(j)
      } }\n`;
  }
  const f16 = needsF16(layouts) || (mode.diag !== null && needsF16([layoutOf(mode.diag, rt)]))
    ? "enable f16;\n"
    : "";
  const classFn = mode.device
    ? `fn ulp_powu(b: f32, t: u32) -> f32 {
  var r = 1.0;
  var x = b;
  var k = t;
  loop {
    if (k == 0u) { break; }
    if ((k & 1u) == 1u) { r = r * x; }
    x = x * x;
    k = k >> 1u;
  }
  return r;
}
fn classVals(t: u32) -> vec4<f32> {
${hyperAliases}  var kv = vec4<f32>(0.0);
${prog.deviceClass}
  return kv;
}
`
    : "";
  const guard = mode.device ? "c < u.n && finf[0] == 0u" : "c < u.n";
  const kvExpr = mode.device ? "classVals(steps[e.w] + 1u)" : "u.k[e.z]";
  return `${f16}${wgslChunks(...chunks)}
struct U { n: u32, base: u32, seed: u32, one: f32, h: array<vec4<f32>, 3>, k: array<vec4<f32>, ${MAX_CLASSES}> }
${decl}${quant}
fn ulp_nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
fn ulp_isnan(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }
fn ulp_max(a: f32, b: f32) -> f32 { return select(max(a, b), a + b, ulp_isnan(a) || ulp_isnan(b)); }
struct St {
${fields}  intended: f32,
}
fn load(i: u32) -> St { return St(${loadArgs}0.0); }
fn update(x: St, kv: vec4<f32>) -> St {
${aliases}  var y = x;
${prog.body}
  return y;
}
${classFn}${diagDecl}@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let c = wid.x + wid.y * nwg.x;
  if (${guard}) {
    let e = chunks[u.base + c];
    let kv = ${kvExpr};
    for (var s = e.x + li * ${E}u; s < e.y; s = s + ${WG * E}u) {
${lanes}${stores.replace(/^ {2}/gm, "      ")}    }
  }
${mode.diag ? diagReduce() : ""}}
`;
}

/** Private accumulators and `account()`, which adds one element's diagnostics to them. */
function diagSource(qcast: string, effective: string): string {
  return `${qcast}var<private> d_dot: f32;
var<private> d_nrm: f32;
var<private> d_n: array<u32, ${NDIAG}>;
var<workgroup> w_sum: array<vec2<f32>, ${WG}>;
var<workgroup> w_cnt: array<atomic<u32>, ${NDIAG}>;
fn ulp_nonfinite(v: f32) -> bool { return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u; }
fn account(x: St, y: St) {
  let uu = y.intended;
  let ee = ${effective};
  d_n[0] += 1u;
  if (uu != 0.0) {
    d_n[1] += 1u;
    if (ee == 0.0) { d_n[2] += 1u; }
  }
  d_dot += ee * uu;
  d_nrm += uu * uu;
  let g = x.grad;
  let nonfin = ulp_nonfinite(g);
  let q = q_diagcast(g);
  if (nonfin) { d_n[3] += 1u; }
  if (g != 0.0 && q == 0.0) { d_n[4] += 1u; }
  if (!nonfin && ulp_nonfinite(q)) { d_n[5] += 1u; }
}
`;
}

/** The end of a diagnostics kernel: workgroup sums into `partials`, counts into `counters`. */
function diagReduce(): string {
  return `  w_sum[li] = vec2<f32>(d_dot, d_nrm);
  for (var k = 0u; k < ${NDIAG}u; k = k + 1u) {
    if (d_n[k] != 0u) { atomicAdd(&w_cnt[k], d_n[k]); }
  }
  workgroupBarrier();
  for (var h = ${WG / 2}u; h > 0u; h = h >> 1u) {
    if (li < h) { w_sum[li] = w_sum[li] + w_sum[li + h]; }
    workgroupBarrier();
  }
  if (c < u.n) {
    if (li == 0u) {
      partials[2u * (u.base + c)] = w_sum[0].x;
      partials[2u * (u.base + c) + 1u] = w_sum[0].y;
    }
    if (li < ${NDIAG}u) {
      let v = atomicLoad(&w_cnt[li]);
      if (v != 0u) { atomicAdd(&counters[li], v); }
    }
  }
`;
}

/** Sums the partials of one group's diagnostics (pairs) into `sums[0..1]`, in one workgroup. */
function diagFinalSource(): string {
  return `struct U { n: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> sums: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
var<workgroup> sh: array<vec2<f32>, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32) {
  var acc = vec2<f32>(0.0);
  for (var i = li; i < u.n; i = i + ${WG}u) { acc = acc + vec2<f32>(partials[2u * i], partials[2u * i + 1u]); }
  sh[li] = acc;
  workgroupBarrier();
  for (var h = ${WG / 2}u; h > 0u; h = h >> 1u) {
    if (li < h) { sh[li] = sh[li] + sh[li + h]; }
    workgroupBarrier();
  }
  if (li == 0u) {
    sums[0] = sh[0].x;
    sums[1] = sh[0].y;
  }
}
`;
}

/** Adds 1 to the device step count of each active parameter unless the skip flag is set. */
function advanceSource(): string {
  return `struct U { n: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(0) var<storage, read_write> steps: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> finf: array<u32>;
@group(0) @binding(3) var<uniform> u: U;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x;
  if (i < u.n && finf[0] == 0u) { steps[ids[i]] = steps[ids[i]] + 1u; }
}
`;
}

/** A u32 zero on the device: the skip flag of a step that has none. @internal */
const zeroFlags = new WeakMap<Runtime, Tensor>();
export function zeroFlag(rt: Runtime): Tensor {
  let t = zeroFlags.get(rt);
  if (!t || t.disposed) {
    t = keep(tensor(new Uint32Array(1), { dtype: "u32", purpose: "other" }));
    zeroFlags.set(rt, t);
  }
  return t;
}

/** What one `FlatGroup.step` does besides the update (see `KernelMode`). */
export interface StepRun {
  /** A u32 tensor whose first word, when non-zero, makes the step a no-op on the device. */
  readonly foundInf?: Tensor | null;
  /** Diagnostics on: the dtype gradients are checked against; null or absent: off. */
  readonly diag?: DType | null;
}

/**
 * The flat storage and the step of one parameter group: segments, staging buffers, state
 * buffers, per-parameter step counts (on the host, or on the device once a skip flag was
 * bound), the chunk table, and the diagnostics buffers.
 */
export class FlatGroup {
  /** The group's parameters, in order. */
  readonly params: readonly Tensor[];
  /** Element offset of each parameter's segment. */
  readonly offsets: readonly number[];
  /** Elements of every flat buffer (segments with padding). */
  readonly total: number;
  /**
   * Number of updates each parameter has had (Adam's `step`), counted on the host. Once the
   * counts live on the device (`deviceSteps`), the number of steps the parameter took part in,
   * skipped ones included (an upper bound; > 0 means the parameter has state).
   */
  readonly steps: number[];
  #param: DType;
  #grad: DType;
  #states: StateSpec[] = [];
  #bufs = new Map<string, Tensor>();
  #table: Tensor | null = null;
  #tableKey = "";
  #active: Tensor | null = null;
  #nActive = 0;
  #kernels = new Map<string, Kernel>();
  #E = 1;
  #label: string;
  #devSteps: Tensor | null = null;
  #diag: { partials: Tensor; counters: Tensor; sums: Tensor } | null = null;
  #diagValid = false;

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

  /** The device step counts (u32, one per parameter), or null while they live on the host. */
  get deviceSteps(): Tensor | null {
    return this.#devSteps;
  }

  /**
   * Moves the step counts to the device (once; a group stays there): a u32 buffer initialised
   * from the host counts, counted as "optimizer" state.
   */
  toDeviceSteps(): Tensor {
    if (this.#devSteps === null) {
      this.#devSteps = keep(
        tensor(Uint32Array.from(this.steps), { dtype: "u32", purpose: "optimizer" }),
      );
    }
    return this.#devSteps;
  }

  /** Parameter `i`'s device step count as a 0-d f32 tensor (as PyTorch keeps `step`). */
  readStep(i: number): Tensor {
    const dev = this.toDeviceSteps();
    const one = Tensor.empty([], dev.dt, "optimizer");
    currentRuntime().copy(dev.buffer("stateDict()"), 4 * i, one.buffer("stateDict()"), 0, 4);
    const out = noGrad(() => one.cast("f32"));
    one.dispose();
    return out.setPurpose("optimizer");
  }

  /** Sets parameter `i`'s device step count from a number or a one-element tensor. */
  writeStep(i: number, step: number | Tensor): void {
    const dev = this.toDeviceSteps();
    const rt = currentRuntime();
    if (typeof step === "number") {
      rt.write(dev.buffer("loadStateDict()"), new Uint32Array([step]), 4 * i);
      return;
    }
    const c = noGrad(() => step.cast("u32"));
    rt.copy(c.buffer("loadStateDict()"), 0, dev.buffer("loadStateDict()"), 4 * i, 4);
    c.dispose();
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
    if (this.#devSteps) {
      currentRuntime().write(
        this.#devSteps.buffer("loadStateDict()"),
        new Uint32Array(this.params.length),
      );
    }
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
    for (const t of [this.#table, this.#active, this.#devSteps]) t?.dispose();
    if (this.#diag) { for (const t of Object.values(this.#diag)) t.dispose(); }
    this.#table =
      this.#active =
      this.#devSteps =
      this.#diag =
        null;
    this.#tableKey = "";
    this.#diagValid = false;
  }

  /** The kernel of a program in a mode, compiled once per key. */
  #kernel(rt: Runtime, key: string, p: UpdateProgram, mode: KernelMode): Kernel {
    const full = `${key}|${mode.device}|${mode.diag?.name ?? ""}`;
    let k = this.#kernels.get(full);
    if (!k) {
      k = rt.kernel(p.label, updateSource(rt, p, mode), {
        buffers: [
          ...p.buffers.map((b) => b.access),
          "read",
          ...(mode.device ? ["read" as const, "read" as const] : []),
          ...(mode.diag ? ["read_write" as const, "read_write" as const] : []),
        ],
        uniform: true,
      });
      this.#kernels.set(full, k);
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
   * The diagnostics of this group's last step with diagnostics on (see `KernelMode.diag`):
   * the counter buffer (u32, `DIAG_COUNTERS` order) and the sums [<e,u>, ||u||^2] (f32), or
   * null when that step updated nothing here.
   */
  get diagnostics(): { counters: Tensor; sums: Tensor } | null {
    return this.#diagValid && this.#diag ? this.#diag : null;
  }

  /** Marks the diagnostics stale (a step without diagnostics ran). */
  clearDiagnostics(): void {
    this.#diagValid = false;
  }

  /**
   * One update of every parameter that has a gradient: stage, dispatch, unstage. `prog`
   * (compiled once per `programKey` and mode) names the buffers; `keyOf` maps a parameter's
   * step count (already incremented) to its class; `valuesOf` gives a class's vec4. With
   * `run.foundInf` (or once the group's counts live on the device), the step counts and the
   * per-step values are on the device and the kernel skips when the flag is set; with
   * `run.diag`, the diagnostics are accumulated. Returns the number of update dispatches
   * recorded (casts of mismatched gradients and the small bookkeeping dispatches excluded).
   */
  step(
    op: string,
    programKey: string,
    prog: UpdateProgram,
    hyper: readonly number[],
    keyOf: (step: number) => number,
    valuesOf: (key: number) => readonly number[],
    run: StepRun = {},
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
    if (run.foundInf) this.toDeviceSteps();
    const device = this.#devSteps !== null;
    const mode: KernelMode = { device, diag: run.diag ?? null };
    this.#diagValid = false;
    if (active.length === 0) return 0;
    const rt = currentRuntime();
    this.prepare(prog);
    const kernel = this.#kernel(rt, programKey, prog, mode);
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
    // step classes, in order of first appearance; entries sorted by class. With device step
    // counts, one class: the kernel computes the per-step values itself.
    const classOf = new Map<number, number>();
    const keys: number[] = [];
    const cls = active.map((i) => {
      const s = ++this.steps[i];
      const key = device ? 0 : keyOf(s);
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
    const cap = this.params.reduce((a, p) => a + Math.max(1, Math.ceil(p.size / chunk)), 0);
    if (tableKey !== this.#tableKey || this.#table === null) {
      if (this.#table === null || this.#table.size < 4 * cap) {
        this.#table?.dispose();
        this.#table = keep(
          tensor(new Uint32Array(4 * cap), { dtype: "u32", purpose: "scratch" }),
        );
      }
      rt.write(this.#table.buffer(op), new Uint32Array(rows));
      this.#active?.dispose();
      this.#active = keep(tensor(Uint32Array.from(active), { dtype: "u32", purpose: "scratch" }));
      this.#nActive = active.length;
      this.#tableKey = tableKey;
    }
    const bufs = prog.buffers.map((b) => this.flat(b.name).buffer(op));
    bufs.push(this.#table!.buffer(op));
    const flag = device ? (run.foundInf ?? zeroFlag(rt)) : null;
    if (device) bufs.push(this.#devSteps!.buffer(op), flag!.buffer(op));
    if (mode.diag) {
      const d = this.#diagBuffers(cap);
      rt.write(d.counters.buffer(op), new Uint32Array(d.counters.size));
      bufs.push(d.partials.buffer(op), d.counters.buffer(op));
    }
    let base = 0, dispatches = 0;
    counts.forEach((n, d) => {
      const u = new Uint32Array(64);
      const f = new Float32Array(u.buffer);
      u[0] = n;
      u[1] = base;
      f[3] = 1;
      hyper.forEach((h, k) => (f[4 + k] = h));
      for (let c = 0; c < MAX_CLASSES && d * MAX_CLASSES + c < keys.length; c++) {
        if (!device) valuesOf(keys[d * MAX_CLASSES + c]).forEach((v, k) => (f[16 + 4 * c + k] = v));
      }
      if (n > 0) {
        rt.dispatch(kernel, bufs, rt.grid(n), u);
        dispatches++;
      }
      base += n;
    });
    if (mode.diag) {
      const d = this.#diag!;
      rt.dispatch(
        cachedKernel(rt, "diagFinal", diagFinalSource(), ["read", "read_write"]),
        [d.partials.buffer(op), d.sums.buffer(op)],
        [1],
        new Uint32Array([rows.length / 4, 0, 0, 0]),
      );
      this.#diagValid = true;
    }
    if (device) {
      rt.dispatch(
        cachedKernel(rt, "advanceSteps", advanceSource(), ["read_write", "read", "read"]),
        [this.#devSteps!.buffer(op), this.#active!.buffer(op), flag!.buffer(op)],
        [Math.ceil(this.#nActive / 64)],
        new Uint32Array([this.#nActive, 0, 0, 0]),
      );
    }
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

  #diagBuffers(cap: number): { partials: Tensor; counters: Tensor; sums: Tensor } {
    if (this.#diag === null || this.#diag.partials.size < 2 * cap) {
      if (this.#diag) { for (const t of Object.values(this.#diag)) t.dispose(); }
      this.#diag = {
        partials: keep(Tensor.empty([2 * cap], float32, "scratch")),
        counters: keep(tensor(new Uint32Array(8), { dtype: "u32", purpose: "scratch" })),
        sums: keep(zeros([2], { purpose: "scratch" })),
      };
    }
    return this.#diag;
  }
}

/** A small bookkeeping kernel (its uniform: 4 words), compiled once per runtime. @internal */
export function cachedKernel(
  rt: Runtime,
  label: string,
  source: string,
  buffers: ("read" | "read_write")[],
): Kernel {
  return rt.kernelFor(`optim|${label}`, label, { buffers, uniform: true }, () => source);
}
