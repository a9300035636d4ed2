/**
 * The numerics inspector: where in a model precision is lost. `inspect(model, opts)` hooks
 * the forward of the model's layers (Linear, the LM head, embeddings, norms, GELU, the GPT
 * blocks and the model itself), taps the gradients that flow back through them, and wraps an
 * optimizer's `step`; on every `every`-th step it records on the device, without changing
 * any value, for each named tensor of each layer (GEMM inputs and outputs, weights,
 * gradients, weight updates; inside an unfused attention also q, k, the scores, the
 * probabilities, v and the context, found in the autograd graph):
 *
 * - amax (largest finite magnitude), the smallest non-zero magnitude, the share of zeros and
 *   of non-finite values, and the dynamic range in binades (log2 amax / min);
 * - for each listed format, the share of the non-zero finite values that would underflow to
 *   zero, become subnormal, land on the largest finite value (saturate) or overflow, once
 *   scaled as the format's recipe would scale them: per-tensor amax scaling (`fmax / amax`,
 *   current scaling) for formats of 8 bits or fewer, none for bf16/f16 and wider;
 * - per parameter, the updates lost in the optimizer step: elements with a non-zero
 *   gradient whose stored value did not change;
 * - the first non-finite: the first recorded tensor (in the order the forward, the backward
 *   and the step produced them) that holds an Inf or NaN names the layer and op.
 *
 * Under a GradScaler the gradients recorded in the backward carry the loss scale (they are
 * the tensors the kernels see); `weight.grad` is recorded after unscaling, in the step.
 *
 * Statistics are counted by two kernels per tensor (atomics into a u32 record buffer of the
 * step); nothing is read back until `await inspector.read()`, which reads each recorded
 * step's buffer once. Steps that are not inspected run exactly as without the inspector.
 *
 * @example
 * ```ts
 * import { AdamW, GPT, tensor } from "../mod.ts";
 * import { inspect } from "./inspect.ts";
 * const model = new GPT({ vocabSize: 16, blockSize: 8, nLayer: 1, nHead: 2, nEmbd: 8, seed: 0 });
 * const opt = new AdamW(model.parameters(), { lr: 1e-3 });
 * using ins = inspect(model, { formats: ["e4m3", "bf16"], every: 1, optimizer: opt });
 * const idx = tensor(new Int32Array([1, 2, 3, 4]), { shape: [1, 4] });
 * const { loss } = model.forward(idx, idx);
 * loss!.backward();
 * opt.step();
 * const [rec] = await ins.read();
 * const fc = rec.tensors.find((t) => t.layer === "h.0.mlp.c_fc" && t.tensor === "input")!;
 * console.log(rec.step, fc.formats.e4m3.saturate > 0, rec.firstNonFinite); // 0 true null
 * ```
 * @module
 */

import { type DType, dtype, type DTypeLike, finfo, wgslCodec } from "../dtypes/mod.ts";
import { ValueError } from "../errors.ts";
import { currentRuntime, layoutOf, program, type ProgramBody, type Runtime } from "../gpu/mod.ts";
import { isGradEnabled, noGrad } from "../autograd/mod.ts";
import { isTensor, keep, Tensor, tensor, tidy } from "../tensor/mod.ts";
import { Module } from "./module.ts";
import { Embedding, GELU, LayerNorm, Linear, RMSNorm } from "./layers.ts";
import { Block, CausalSelfAttention, LMHead } from "./gpt.ts";

/** A format the inspector checks tensors against, and how its recipe scales them. */
export interface InspectFormat {
  /** The format (`e4m3`, `e5m2`, `bf16`, `f16`, any `eXmY`). */
  dtype: DTypeLike;
  /**
   * `amax`: values are multiplied by `fmax / amax` of the tensor first (per-tensor current
   * scaling, as FP8 recipes do); `none`: checked as they are. Default: `amax` for formats
   * of 8 bits or fewer, `none` for wider ones.
   */
  scaling?: "amax" | "none";
}

/** Options of `inspect`. */
export interface InspectOptions {
  /** The formats to check (default `["e4m3", "e5m2", "bf16"]`). */
  formats?: readonly (DTypeLike | InspectFormat)[];
  /** Inspect every N-th step: steps 0, N, 2N, ... (default 1). */
  every?: number;
  /**
   * The number of the first step (default 0): a resumed run passes the step it resumes at,
   * so that records and `every` follow the run's own numbering.
   */
  startStep?: number;
  /**
   * An optimizer whose `step` the inspector wraps: on inspected steps it records each
   * parameter's gradient before the step, and its update (new minus old) and the updates
   * lost after it.
   */
  optimizer?: { step: (...args: never[]) => unknown };
}

/** The statistics of one format for one tensor: shares of the tensor's elements. */
export interface FormatStats {
  /** The scale values were multiplied by before the check (1 without scaling). */
  scale: number;
  /** Non-zero finite values that round to zero. */
  underflow: number;
  /** Values that round to a non-zero subnormal. */
  subnormal: number;
  /** Values that round to the largest finite magnitude (clamped there, or exactly on it). */
  saturate: number;
  /** Values that round beyond the largest finite magnitude (Inf/NaN without saturation). */
  overflow: number;
}

/** What the inspector recorded for one tensor in one step. */
export interface TensorStats {
  /** The layer's dotted name (`h.0.mlp.c_fc`; `model` for the model's own outputs). */
  layer: string;
  /** The tensor: `input`, `output`, `grad_output`, `grad_input`, `weight`, `weight.grad`, `weight.update`, `logits`, `loss`, ... */
  tensor: string;
  /** When it was made: `forward`, `backward` or `step`. */
  phase: "forward" | "backward" | "step";
  /** The op that made it (the autograd op of a forward output, the layer's backward, ...). */
  op: string;
  /** Its dtype. */
  dtype: string;
  /** Its shape. */
  shape: number[];
  /** Its number of elements. */
  elements: number;
  /** Largest finite magnitude (0 when none). */
  amax: number;
  /** Smallest non-zero finite magnitude (0 when none). */
  minNonZero: number;
  /** log2(amax / minNonZero): the binades the values span (0 without non-zero values). */
  binades: number;
  /** Share of exact zeros. */
  zeros: number;
  /** Share of Inf and NaN. */
  nonFinite: number;
  /** Per format name. */
  formats: Record<string, FormatStats>;
}

/**
 * The updates lost in one optimizer step, for one parameter: elements with a non-zero
 * gradient whose stored model weight did not change. Under Collage the model weight is the
 * bf16 high part (its low part keeps what hi loses: the optimizer's `diagnostics()` count
 * hi + lo); under AdamW an element may also move without a gradient (momentum, decay).
 */
export interface UpdateLoss {
  /** The layer's dotted name. */
  layer: string;
  /** The parameter's full name. */
  param: string;
  /** Elements with a non-zero gradient. */
  updated: number;
  /** Of those, elements whose stored value did not change. */
  lost: number;
  /** lost / updated (0 when nothing was updated). */
  share: number;
}

/** The first recorded tensor that held an Inf or NaN. */
export interface FirstNonFinite {
  /** `forward`, `backward` or `step`. */
  phase: "forward" | "backward" | "step";
  /** The layer. */
  layer: string;
  /** The tensor. */
  tensor: string;
  /** The op that made it. */
  op: string;
}

/** One inspected step. */
export interface InspectRecord {
  /** The step (`startStep` plus the count of the model's forwards with grad on before it). */
  step: number;
  /** Every recorded tensor, in recording order. */
  tensors: TensorStats[];
  /** Updates lost per parameter (with an optimizer). */
  updates: UpdateLoss[];
  /** The first non-finite tensor, or null. */
  firstNonFinite: FirstNonFinite | null;
}

interface Fmt {
  name: string;
  dt: DType;
  scaled: boolean;
}

interface SlotMeta
  extends Pick<TensorStats, "layer" | "tensor" | "phase" | "op" | "dtype" | "shape"> {
  n: number;
  lostOf?: { param: string; grad: number }; // a lost-update mask: the grad's slot
}

interface StepRec {
  step: number;
  slots: SlotMeta[];
  chunks: Tensor[];
}

const WG = 256;
const PER = 16; // elements per invocation
const E = WG * PER; // elements per workgroup
const CAP = 128; // slots per record buffer
const HEAD = 4; // amax bits, min non-zero bits, zeros, non-finite
const PER_FMT = 5; // scale bits, underflow, subnormal, saturate, overflow
const INF_BITS = 0x7f800000;

const f32bits = (v: number) => new Uint32Array(new Float32Array([v]).buffer)[0];
const bitsf32 = (b: number) => new Float32Array(new Uint32Array([b]).buffer)[0];

/**
 * A program of the inspector (`inspect|<key>`): WG invocations a workgroup read `u.n`
 * elements of `x` (dtype `dt`) and add to the record `rec` at `u.slot`.
 */
function inspectProgram(rt: Runtime, key: string, dt: DType, body: () => ProgramBody) {
  return program(rt, `inspect|${key}`, {
    label: "inspect",
    bindings: [
      { name: "x", type: layoutOf(dt, rt), access: "read" },
      { name: "rec", type: "atomic<u32>", access: "read_write" },
    ],
    uniforms: [{ name: "n", type: "u32" }, { name: "slot", type: "u32" }],
    workgroupSize: WG,
  }, body);
}

/** Amax, min non-zero, zeros and non-finite of a tensor, into its slot. */
function statsProgram(rt: Runtime, dt: DType) {
  return inspectProgram(rt, "stats", dt, () =>
    `var<workgroup> w_c: array<atomic<u32>, 4>;
fn kernel(wg: u32, lid: vec3u, li: u32) {
  if (li == 0u) {
    atomicStore(&w_c[0], 0u);
    atomicStore(&w_c[1], ${INF_BITS}u);
    atomicStore(&w_c[2], 0u);
    atomicStore(&w_c[3], 0u);
  }
  workgroupBarrier();
  var amax = 0u;
  var mn = ${INF_BITS}u;
  var z = 0u;
  var nf = 0u;
  for (var k = 0u; k < ${PER}u; k = k + 1u) {
    let i = wg * ${E}u + k * ${WG}u + li;
    if (i < u.n) {
      let b = bitcast<u32>(ld_x(i)) & 0x7fffffffu;
      if (b >= ${INF_BITS}u) { nf += 1u; }
      else if (b == 0u) { z += 1u; }
      else { amax = max(amax, b); mn = min(mn, b); }
    }
  }
  if (amax != 0u) { atomicMax(&w_c[0], amax); atomicMin(&w_c[1], mn); }
  if (z != 0u) { atomicAdd(&w_c[2], z); }
  if (nf != 0u) { atomicAdd(&w_c[3], nf); }
  workgroupBarrier();
  if (li == 0u) {
    let s = u.slot;
    let a = atomicLoad(&w_c[0]);
    if (a != 0u) { atomicMax(&rec[s], a); atomicMin(&rec[s + 1u], atomicLoad(&w_c[1])); }
    let zz = atomicLoad(&w_c[2]);
    if (zz != 0u) { atomicAdd(&rec[s + 2u], zz); }
    let ff = atomicLoad(&w_c[3]);
    if (ff != 0u) { atomicAdd(&rec[s + 3u], ff); }
  }
}`);
}

/** A bound of a class of |x| s: the f32 bits of a midpoint, and whether the tie is inside. */
interface Bound {
  bits: number;
  tie: boolean;
}

/**
 * The midpoints where round-to-nearest-even into `d` changes class, as f32 bits: at or below
 * `uf` a value rounds to zero; below `sub` (above `uf`) to a subnormal; beyond `of` past the
 * largest finite value; beyond `sat` (below `of`) onto it. A tie goes to the neighbour whose
 * last mantissa bit is even (zero; the smallest normal; the top: even for e4m3fn's 448, odd for
 * IEEE-like formats). Null for a format these do not describe exactly (no mantissa bits, a
 * midpoint that f32 cannot hold): the codec decides there.
 */
function roundingThresholds(
  d: DType,
): { uf: Bound; sub: Bound; sat: Bound; of: Bound } | null {
  const fi = finfo(d), m = d.mantissaBits;
  if (m < 1) return null;
  const e = Math.floor(Math.log2(fi.max));
  const ulp = 2 ** (e - m);
  const topOdd = Math.round((fi.max / 2 ** e - 1) * 2 ** m) % 2 === 1;
  const mids = [
    fi.smallestSubnormal / 2,
    fi.smallestNormal - fi.smallestSubnormal / 2,
    fi.max - ulp / 2,
    fi.max + ulp / 2,
  ];
  if (mids.some((v) => Math.fround(v) !== v || !Number.isFinite(Math.fround(v)))) return null;
  const [uf, sub, sat, of] = mids.map(f32bits);
  return {
    uf: { bits: uf, tie: true }, // 0 is even
    sub: { bits: sub, tie: false }, // the smallest normal is even
    sat: { bits: sat, tie: !topOdd }, // the top's neighbour below is even when the top is odd
    of: { bits: of, tie: topOdd },
  };
}

/** The per-format counts of a tensor, at the scale of each format's recipe, into its slot. */
function formatProgram(rt: Runtime, dt: DType, fmts: readonly Fmt[]) {
  const key = fmts.map((f) => `${f.name}:${f.scaled ? "a" : "n"}`).join(",");
  const F = fmts.length;
  return inspectProgram(rt, `formats|${key}`, dt, () => {
    const chunks: (readonly string[])[] = [];
    let scales = "", body = "", flush = "";
    fmts.forEach((f, j) => {
      const fi = finfo(f.dt);
      const at = `u.slot + ${HEAD + PER_FMT * j}u`;
      scales += `  var s${j} = 1.0;\n`;
      if (f.scaled) {
        scales += `  if (amaxb != 0u) {
    let q = ${fi.max.toExponential()} / bitcast<f32>(amaxb);
    if ((bitcast<u32>(q) & 0x7f800000u) != 0x7f800000u) { s${j} = q; }
  }\n`;
      }
      scales += `  if (wg == 0u && li == 0u) { atomicStore(&rec[${at}], bitcast<u32>(s${j})); }\n`;
      const t = roundingThresholds(f.dt);
      if (t !== null) {
        // round-to-nearest-even decided by comparing the bits of |x| s with the midpoints
        // (non-negative floats order as their bits, subnormals included)
        body += `      {
        let v = bitcast<u32>(select(a * s${j}, a, s${j} == 1.0));
        if (v ${t.uf.tie ? "<=" : "<"} ${t.uf.bits}u) { c[${4 * j}] += 1u; }
        else if (v ${t.sub.tie ? "<=" : "<"} ${t.sub.bits}u) { c[${4 * j + 1}] += 1u; }
        else if (v ${t.of.tie ? ">=" : ">"} ${t.of.bits}u) { c[${4 * j + 3}] += 1u; }
        else if (v ${t.sat.tie ? ">=" : ">"} ${t.sat.bits}u) { c[${4 * j + 2}] += 1u; }
      }\n`;
      } else {
        const c = wgslCodec(f.dt, { saturate: false });
        chunks.push(c.chunks);
        body += `      {
        let v = select(a * s${j}, a, s${j} == 1.0);
        let q = ${c.decodeBits}(${c.encode}(v, 0u)) & 0x7fffffffu;
        if (q == 0u) { c[${4 * j}] += 1u; }
        else if (q >= ${INF_BITS}u) { c[${4 * j + 3}] += 1u; }
        else if (q == ${f32bits(fi.max)}u) { c[${4 * j + 2}] += 1u; }
        else if (q < ${f32bits(fi.smallestNormal)}u) { c[${4 * j + 1}] += 1u; }
      }\n`;
      }
      flush += `    for (var k = 0u; k < 4u; k = k + 1u) {
      let v = atomicLoad(&w_c[${4 * j}u + k]);
      if (v != 0u) { atomicAdd(&rec[${at} + 1u + k], v); }
    }\n`;
    });
    return {
      chunks,
      source: `var<workgroup> w_c: array<atomic<u32>, ${4 * F}>;
fn kernel(wg: u32, lid: vec3u, li: u32) {
  if (li < ${4 * F}u) { atomicStore(&w_c[li], 0u); }
  let amaxb = atomicLoad(&rec[u.slot]);
${scales}  workgroupBarrier();
  var c: array<u32, ${4 * F}>;
  for (var k = 0u; k < ${PER}u; k = k + 1u) {
    let i = wg * ${E}u + k * ${WG}u + li;
    if (i < u.n) {
      let b = bitcast<u32>(ld_x(i)) & 0x7fffffffu;
      if (b != 0u && b < ${INF_BITS}u) {
        let a = bitcast<f32>(b);
${body}      }
    }
  }
  for (var k = 0u; k < ${4 * F}u; k = k + 1u) {
    if (c[k] != 0u) { atomicAdd(&w_c[k], c[k]); }
  }
  workgroupBarrier();
  if (li == 0u) {
${flush}  }
}`,
    };
  });
}

/** The modules the inspector hooks by default, and whether each is a GEMM. */
function hookKind(m: Module): "gemm" | "layer" | "attention" | null {
  if (m instanceof Linear || m instanceof LMHead) return "gemm";
  if (m instanceof CausalSelfAttention) return "attention";
  if (
    m instanceof Embedding || m instanceof LayerNorm || m instanceof RMSNorm ||
    m instanceof GELU || m instanceof Block
  ) return "layer";
  return null;
}

/** The layer of a parameter's dotted name: everything before its last part. */
function layerOf(name: string): [string, string] {
  const k = name.lastIndexOf(".");
  return k < 0 ? ["model", name] : [name.slice(0, k), name.slice(k + 1)];
}

/**
 * Records, on the device, where a model loses precision (see the module doc): hooks the
 * model's layers and `opts.optimizer`; `read()` returns the inspected steps; `remove()` (or
 * `using`) takes the hooks off.
 *
 * @example
 * ```ts
 * import { Linear, tensor } from "../mod.ts";
 * import { inspect } from "./inspect.ts";
 * const fc = new Linear(2, 2, { bias: false, seed: 0 });
 * using ins = inspect(fc, { formats: ["e4m3"] });
 * fc.forward(tensor([[1e-6, 2]], { requiresGrad: true })).sum().backward();
 * const [rec] = await ins.read();
 * console.log(rec.tensors.map((t) => t.tensor)); // ["weight", "input", "output", "grad_output", "grad_input"]
 * ```
 */
export function inspect(model: Module, opts: InspectOptions = {}): Inspector {
  return new Inspector(model, opts);
}

/**
 * The handle `inspect()` returns: the hooks, the records of the inspected steps on the
 * device, and `read()`.
 *
 * @example
 * ```ts
 * import { Linear, tensor } from "../mod.ts";
 * import { inspect } from "./inspect.ts";
 * const fc = new Linear(2, 2, { seed: 0 });
 * const ins = inspect(fc, { formats: ["bf16"], every: 2 });
 * for (let s = 0; s < 3; s++) fc.forward(tensor([[1, 2]]).requiresGrad_()).sum().backward();
 * console.log((await ins.read()).map((r) => r.step)); // [0, 2]
 * ins.remove();
 * ```
 */
export class Inspector {
  /** The formats checked, in order. */
  readonly formats: readonly string[];
  /** Inspect every N-th step. */
  readonly every: number;
  readonly #fmts: Fmt[];
  readonly #model: Module;
  readonly #undo: (() => void)[] = [];
  #step = -1;
  #rec: StepRec | null = null;
  #pending: StepRec[] = [];
  #removed = false;

  /** Hooks `model` (use `inspect()`). */
  constructor(model: Module, opts: InspectOptions = {}) {
    if (!(model instanceof Module)) {
      throw new ValueError(`inspect(): the model must be a Module, got ${typeof model}`);
    }
    const every = opts.every ?? 1;
    if (!Number.isSafeInteger(every) || every < 1) {
      throw new ValueError(`inspect(): every must be a positive integer, got ${every}`);
    }
    this.every = every;
    const start = opts.startStep ?? 0;
    if (!Number.isSafeInteger(start) || start < 0) {
      throw new ValueError(`inspect(): startStep must be a non-negative integer, got ${start}`);
    }
    this.#step = start - 1;
    const given = opts.formats ?? ["e4m3", "e5m2", "bf16"];
    this.#fmts = given.map((f) => {
      const spec: InspectFormat = typeof f === "object" && f !== null && "dtype" in f
        ? f
        : { dtype: f as DTypeLike };
      const dt = dtype(spec.dtype);
      if (dt.kind !== "float") {
        throw new ValueError(
          `inspect(): format '${dt.name}' is not a float format; give e4m3, e5m2, bf16, f16 ` +
            `or an eXmY format`,
        );
      }
      const scaling = spec.scaling ?? (dt.bits <= 8 ? "amax" : "none");
      if (scaling !== "amax" && scaling !== "none") {
        throw new ValueError(
          `inspect(): format '${dt.name}': scaling must be "amax" or "none", got '${scaling}'`,
        );
      }
      return { name: dt.name, dt, scaled: scaling === "amax" };
    });
    const names = this.#fmts.map((f) => f.name);
    const dup = names.find((n, i) => names.indexOf(n) !== i);
    if (dup !== undefined) throw new ValueError(`inspect(): format '${dup}' is listed twice`);
    if (this.#fmts.length === 0 || this.#fmts.length > 8) {
      throw new ValueError(`inspect(): give 1 to 8 formats, got ${this.#fmts.length}`);
    }
    this.formats = names;
    this.#model = model;
    for (const [name, m] of model.namedModules()) {
      const kind = hookKind(m);
      if (kind !== null || m === model) this.#hook(m, name || "model", kind, m === model);
    }
    if (opts.optimizer) this.#hookOptimizer(opts.optimizer);
  }

  /** The current step: `startStep` plus the model's forwards with grad on, minus one. */
  get step(): number {
    return this.#step;
  }

  /** Whether the current step is being recorded. */
  get recording(): boolean {
    return this.#rec !== null;
  }

  #wrap(obj: object, key: string, make: (inner: (...a: unknown[]) => unknown) => unknown): void {
    const o = obj as Record<string, unknown>;
    const own = Object.getOwnPropertyDescriptor(obj, key);
    const inner = o[key] as (...a: unknown[]) => unknown;
    if (typeof inner !== "function") {
      throw new ValueError(`inspect(): ${obj.constructor.name} has no ${key}() to hook`);
    }
    const wrapper = make(inner);
    Object.defineProperty(obj, key, {
      value: wrapper,
      enumerable: false,
      writable: true,
      configurable: true,
    });
    this.#undo.push(() => {
      // wrapped again since (setAutocast after inspect): that wrapper calls ours, which
      // passes through once removed; taking ours out would take the later one out too
      if (o[key] !== wrapper) return;
      if (own) Object.defineProperty(obj, key, own);
      else delete o[key];
    });
  }

  #hook(
    m: Module,
    name: string,
    kind: "gemm" | "layer" | "attention" | null,
    root: boolean,
  ): void {
    this.#wrap(m, "forward", (inner) => {
      const layer = (args: unknown[]): unknown => {
        if (kind === null || this.#rec === null || !isGradEnabled()) return inner.apply(m, args);
        const a = [...args];
        const x = a[0];
        if (isTensor(x) && x.dt.kind === "float") {
          if (kind === "gemm") this.#record(x, name, "input", "forward", `${name} (GEMM input)`);
          if (x.requiresGrad) a[0] = this.#tap(x, name, "grad_input", m.constructor.name);
        }
        const y = inner.apply(m, a);
        if (!isTensor(y)) return y;
        if (kind === "attention") this.#attentionGemms(y, a[0], name);
        this.#record(y, name, "output", "forward", y.node?.op ?? m.constructor.name);
        return y.requiresGrad ? this.#tap(y, name, "grad_output", "") : y;
      };
      return root ? (...args: unknown[]) => this.#rootForward(kind, name, layer, args) : (
        ...args: unknown[]
      ) => layer(args);
    });
  }

  #rootForward(
    kind: "gemm" | "layer" | "attention" | null,
    name: string,
    layer: (args: unknown[]) => unknown,
    args: unknown[],
  ): unknown {
    if (this.#removed) return layer(args);
    if (!isGradEnabled()) {
      const saved = this.#rec;
      this.#rec = null; // an evaluation forward records nothing and does not count
      try {
        return layer(args);
      } finally {
        this.#rec = saved;
      }
    }
    this.#step++;
    if (this.#rec !== null) this.#pending.push(this.#rec);
    this.#rec = this.#step % this.every === 0 ? { step: this.#step, slots: [], chunks: [] } : null;
    if (this.#rec !== null) {
      for (const [pname, p] of this.#model.namedParameters()) {
        const [l, t] = layerOf(pname);
        this.#record(p, l, t, "forward", "parameter");
      }
    }
    const out = layer(args);
    if (this.#rec !== null && kind === null && out !== null && typeof out === "object") {
      const fields = isTensor(out) ? [["output", out] as const] : Object.entries(out);
      for (const [k, v] of fields) {
        if (!isTensor(v)) continue;
        // a tapped output: the op of the tensor behind the tap
        const op = v.node?.op === "inspect" ? v.node.inputs[0].node?.op : v.node?.op;
        this.#record(v, name, k, "forward", op ?? "forward");
      }
    }
    return out;
  }

  /**
   * The GEMMs between activations inside an attention (q k^T and p v of the unfused path;
   * none when the fused kernel ran): found in the autograd graph from its output back to its
   * input, in the order they ran; a GEMM with a weight operand belongs to a Linear.
   */
  #attentionGemms(y: Tensor, input: unknown, name: string): void {
    const weight = (t: Tensor) =>
      t.isParameter || (t.node?.op === "cast" && t.node.inputs[0].isParameter);
    const found: Tensor[] = [];
    const seen = new Set<number>();
    const stack: Tensor[] = [y];
    while (stack.length > 0) {
      const t = stack.pop()!;
      if (t === input || t.node === null || seen.has(t.id)) continue;
      seen.add(t.id);
      const [a, b] = t.node.inputs;
      if (t.node.op === "matmul" && !weight(a) && !weight(b)) found.push(t);
      stack.push(...t.node.inputs);
    }
    found.sort((p, q) => p.id - q.id);
    const names = found.length === 2
      ? [["q", "k", "scores"], ["probs", "v", "context"]]
      : found.map((_, k) => [`gemm${k + 1}.a`, `gemm${k + 1}.b`, `gemm${k + 1}.out`]);
    found.forEach((t, k) => {
      const [a, b] = t.node!.inputs;
      const [na, nb, no] = names[k];
      this.#record(a, name, na, "forward", "attention GEMM input");
      this.#record(b, name, nb, "forward", "attention GEMM input");
      this.#record(t, name, no, "forward", "matmul");
    });
  }

  #hookOptimizer(opt: { step: (...args: never[]) => unknown }): void {
    this.#wrap(opt, "step", (inner) => (...args: unknown[]) => {
      const rec = this.#rec;
      if (rec === null) return inner.apply(opt, args);
      const before: [string, Tensor, Tensor, number][] = [];
      for (const [pname, p] of this.#model.namedParameters()) {
        if (p.grad === null || p.grad.disposed || p.dt.kind !== "float") continue;
        const [layer, t] = layerOf(pname);
        const g = rec.slots.length;
        this.#record(p.grad, layer, `${t}.grad`, "backward", "backward (accumulated)");
        if (rec.slots.length === g) continue;
        const old = keep(Tensor.empty(p.shape, p.dt, "scratch").copy_(p));
        before.push([pname, p, old, g]);
      }
      const result = inner.apply(opt, args);
      for (const [pname, p, old, g] of before) {
        const [layer, t] = layerOf(pname);
        noGrad(() =>
          tidy(() => {
            const d = p.cast("f32").sub(old.cast("f32"));
            this.#record(d, layer, `${t}.update`, "step", "optimizer step");
            if (p.grad !== null && !p.grad.disposed) {
              const lost = d.eq(0).cast("f32").mul(p.grad.ne(0).cast("f32"));
              this.#record(lost, layer, `${t}.lost`, "step", "optimizer step", {
                param: pname,
                grad: g,
              });
            }
          })
        );
        old.dispose();
      }
      return result;
    });
  }

  /** A copy of `x` whose backward records the gradient flowing through it. */
  #tap(x: Tensor, layer: string, what: string, cls: string): Tensor {
    const t = x.reshape(x.shape);
    const rec = this.#rec;
    t.node = {
      op: "inspect",
      inputs: [x],
      backward: (g: Tensor) => {
        if (this.#rec === rec) {
          this.#record(
            g,
            layer,
            what,
            "backward",
            what === "grad_input" ? `${cls} backward` : "gradient from later layers",
          );
        }
        return [g];
      },
    };
    return t;
  }

  /**
   * Records the statistics of `t` under `layer` / `name` in the current step, when it is
   * inspected (for tensors the hooks do not see: a loss computed outside the model, a
   * custom op's output). Its phase is `forward`, or `backward` under `noGrad` (as inside a
   * custom backward). Changes no value and reads nothing back.
   *
   * @example
   * ```ts
   * import { Linear, tensor } from "../mod.ts";
   * import { inspect } from "./inspect.ts";
   * const fc = new Linear(2, 1, { seed: 0 });
   * using ins = inspect(fc, { formats: ["e5m2"] });
   * const y = fc.forward(tensor([[1, 2]]).requiresGrad_());
   * ins.record(y.square(), "loss", "square");
   * console.log((await ins.read())[0].tensors.at(-1)!.layer); // "loss"
   * ```
   */
  record(t: Tensor, layer: string, name: string): void {
    this.#record(t, layer, name, isGradEnabled() ? "forward" : "backward", "user");
  }

  #record(
    t: Tensor,
    layer: string,
    name: string,
    phase: SlotMeta["phase"],
    op: string,
    lostOf?: SlotMeta["lostOf"],
  ): void {
    const s = this.#rec;
    if (s === null || t.disposed || t.dt.kind !== "float" || t.size === 0) return;
    const rt = currentRuntime();
    const k = s.slots.length;
    const words = HEAD + PER_FMT * this.#fmts.length;
    if (k % CAP === 0) {
      const init = new Uint32Array(CAP * words);
      for (let i = 0; i < CAP; i++) init[i * words + 1] = INF_BITS;
      s.chunks.push(keep(tensor(init, { dtype: "u32", purpose: "other" })));
    }
    const chunk = s.chunks[Math.floor(k / CAP)];
    const slot = (k % CAP) * words;
    const n = t.size;
    const x = t.buffer("inspect"), rec = chunk.buffer("inspect");
    const groups = Math.ceil(n / E);
    const ranges = { x: (g0: number, g1: number) => [g0 * E, Math.min(n, g1 * E)] as const };
    const cost = n * (2 + 3 * this.#fmts.length);
    statsProgram(rt, t.dt).run({
      buffers: { x, rec },
      uniforms: { n, slot },
      groups,
      ranges,
      cost,
    });
    formatProgram(rt, t.dt, this.#fmts).run({
      buffers: { x, rec },
      uniforms: { n, slot },
      groups,
      ranges,
      cost,
    });
    s.slots.push({
      layer,
      tensor: name,
      phase,
      op,
      dtype: t.dtype,
      shape: [...t.shape],
      n,
      lostOf,
    });
  }

  /**
   * The inspected steps recorded since the last read, the current one included (call it
   * after the step's optimizer step: what the current step records later is not kept).
   * One readback per step's record buffer; the buffers are freed.
   */
  async read(): Promise<InspectRecord[]> {
    const steps = [...this.#pending];
    if (this.#rec !== null) steps.push(this.#rec);
    this.#pending = [];
    this.#rec = null;
    const words = HEAD + PER_FMT * this.#fmts.length;
    const out: InspectRecord[] = [];
    for (const s of steps) {
      const data = await Promise.all(s.chunks.map((c) => c.toArray() as Promise<Uint32Array>));
      for (const c of s.chunks) c.dispose();
      const tensors: (TensorStats | null)[] = [];
      const counts: number[] = []; // zeros per slot (for the lost updates)
      const updates: UpdateLoss[] = [];
      s.slots.forEach((m, k) => {
        const w = data[Math.floor(k / CAP)], o = (k % CAP) * words;
        const amax = w[o] === 0 ? 0 : bitsf32(w[o]);
        const minNonZero = w[o + 1] >= INF_BITS ? 0 : bitsf32(w[o + 1]);
        const zeros = w[o + 2], nonFinite = w[o + 3];
        counts.push(zeros);
        if (m.lostOf) {
          const updated = m.n - counts[m.lostOf.grad];
          const lost = m.n - zeros - nonFinite;
          updates.push({
            layer: m.layer,
            param: m.lostOf.param,
            updated,
            lost,
            share: updated === 0 ? 0 : lost / updated,
          });
          tensors.push(null);
          return;
        }
        const formats: Record<string, FormatStats> = {};
        this.#fmts.forEach((f, j) => {
          const p = o + HEAD + PER_FMT * j;
          formats[f.name] = {
            scale: bitsf32(w[p]),
            underflow: w[p + 1] / m.n,
            subnormal: w[p + 2] / m.n,
            saturate: w[p + 3] / m.n,
            overflow: w[p + 4] / m.n,
          };
        });
        tensors.push({
          layer: m.layer,
          tensor: m.tensor,
          phase: m.phase,
          op: m.op,
          dtype: m.dtype,
          shape: m.shape,
          elements: m.n,
          amax,
          minNonZero,
          binades: amax > 0 && minNonZero > 0 ? Math.log2(amax / minNonZero) : 0,
          zeros: zeros / m.n,
          nonFinite: nonFinite / m.n,
          formats,
        });
      });
      const kept = tensors.filter((t) => t !== null);
      const bad = kept.find((t) => t.nonFinite > 0);
      out.push({
        step: s.step,
        tensors: kept,
        updates,
        firstNonFinite: bad
          ? { phase: bad.phase, layer: bad.layer, tensor: bad.tensor, op: bad.op }
          : null,
      });
    }
    return out;
  }

  /** Takes the hooks off (forwards and the optimizer's step as before) and frees the records. */
  remove(): void {
    if (this.#removed) return;
    this.#removed = true;
    for (const u of this.#undo.reverse()) u();
    for (const s of [...this.#pending, ...(this.#rec ? [this.#rec] : [])]) {
      for (const c of s.chunks) c.dispose();
    }
    this.#pending = [];
    this.#rec = null;
  }

  /** `using ins = inspect(...)` removes the hooks at the end of the block. */
  [Symbol.dispose](): void {
    this.remove();
  }
}

/**
 * The records as JSON Lines: one line per inspected step (`InspectRecord` as JSON).
 *
 * @example
 * ```ts
 * import { Linear, tensor } from "../mod.ts";
 * import { inspect, inspectJsonl } from "./inspect.ts";
 * const fc = new Linear(2, 2, { seed: 0 });
 * using ins = inspect(fc, { formats: ["e4m3"] });
 * fc.forward(tensor([[1, 2]]).requiresGrad_());
 * console.log(JSON.parse(inspectJsonl(await ins.read()).trim()).step); // 0
 * ```
 */
export function inspectJsonl(records: readonly InspectRecord[]): string {
  return records.map((r) => JSON.stringify(r) + "\n").join("");
}

/**
 * The statistics a heat map can show: `amax`, `minNonZero` (as log2), `binades`, `zeros`,
 * `nonFinite`, `lost` (updates lost per parameter), and `<format>.<underflow | subnormal |
 * saturate | overflow>` (for example `e4m3.underflow`).
 *
 * @example
 * ```ts
 * import { HEATMAP_STATS } from "./inspect.ts";
 * console.log(HEATMAP_STATS.includes("binades")); // true
 * ```
 */
export const HEATMAP_STATS: readonly string[] = Object.freeze([
  "amax",
  "minNonZero",
  "binades",
  "zeros",
  "nonFinite",
  "lost",
]);

/** The value a heat map shows for one tensor, or undefined. */
function statOf(t: TensorStats, stat: string): number | undefined {
  switch (stat) {
    case "amax":
      return t.amax > 0 ? Math.log2(t.amax) : undefined;
    case "minNonZero":
      return t.minNonZero > 0 ? Math.log2(t.minNonZero) : undefined;
    case "binades":
      return t.binades;
    case "zeros":
      return t.zeros;
    case "nonFinite":
      return t.nonFinite;
  }
  const [f, k] = stat.split(".");
  const s = t.formats[f] as unknown as Record<string, number> | undefined;
  return s && k !== "scale" ? s[k] : undefined;
}

/** A colour of the viridis map for `u` in [0, 1]. */
function viridis(u: number): string {
  const stops = [
    [68, 1, 84],
    [59, 82, 139],
    [33, 145, 140],
    [94, 201, 98],
    [253, 231, 37],
  ];
  const x = Math.min(1, Math.max(0, u)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c.join(",")})`;
}

const escXml = (s: string) =>
  s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]!));

/**
 * An SVG heat map of one statistic: a row per recorded tensor (`layer tensor`, in the
 * order they were recorded) or, for `lost`, per parameter; a column per inspected step;
 * the colour scale (viridis, linear between the smallest and largest value shown) in a
 * legend. `amax` and `minNonZero` are shown as log2. Cells of tensors not recorded in a
 * step are grey; `filter` keeps the rows of the tensors it accepts. A `ValueError` names the statistics for an unknown one.
 *
 * @example
 * ```ts
 * import { Linear, tensor } from "../mod.ts";
 * import { inspect, inspectHeatmap } from "./inspect.ts";
 * const fc = new Linear(2, 2, { seed: 0 });
 * using ins = inspect(fc, { formats: ["e4m3"] });
 * fc.forward(tensor([[1, 2]]).requiresGrad_());
 * console.log(inspectHeatmap(await ins.read(), "e4m3.saturate").startsWith("<svg")); // true
 * ```
 */
export function inspectHeatmap(
  records: readonly InspectRecord[],
  stat: string,
  opts: {
    /** The title (default: the statistic). */
    title?: string;
    /** Only the tensors it accepts get a row (default: all). */
    filter?: (t: TensorStats) => boolean;
  } = {},
): string {
  const fmts = new Set(records.flatMap((r) => r.tensors.flatMap((t) => Object.keys(t.formats))));
  const [f, k] = stat.split(".");
  const known = HEATMAP_STATS.includes(stat) ||
    (fmts.has(f) && ["underflow", "subnormal", "saturate", "overflow"].includes(k));
  if (!known) {
    throw new ValueError(
      `inspectHeatmap(): unknown statistic '${stat}'; valid: ${HEATMAP_STATS.join(", ")}, or ` +
        `<format>.underflow|subnormal|saturate|overflow for the formats ` +
        `${[...fmts].join(", ") || "(none recorded)"}`,
    );
  }
  const rows: string[] = [];
  const cells = new Map<string, number>(); // row \0 column -> value
  records.forEach((r, c) => {
    const seen = new Map<string, number>();
    const put = (label: string, v: number | undefined) => {
      const n = seen.get(label) ?? 0; // a layer called twice in a step: #2, #3, ...
      seen.set(label, n + 1);
      const row = n === 0 ? label : `${label} #${n + 1}`;
      if (!rows.includes(row)) rows.push(row);
      if (v !== undefined && Number.isFinite(v)) cells.set(`${row}\0${c}`, v);
    };
    if (stat === "lost") { for (const u of r.updates) put(u.param, u.share); }
    else {
      for (const t of r.tensors) {
        if (opts.filter === undefined || opts.filter(t)) {
          put(`${t.layer} ${t.tensor}`, statOf(t, stat));
        }
      }
    }
  });
  const values = [...cells.values()];
  const lo = values.length ? Math.min(...values) : 0, hi = values.length ? Math.max(...values) : 1;
  const cw = Math.max(6, Math.min(24, Math.floor(600 / Math.max(1, records.length)))), ch = 12;
  const labelW = 7 * Math.max(8, ...rows.map((r) => r.length)) + 10;
  const top = 40, W = labelW + cw * records.length + 130, H = top + ch * rows.length + 40;
  const log = stat === "amax" || stat === "minNonZero";
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="10">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="8" y="18" font-size="14" font-weight="bold">${
      escXml(opts.title ?? `${stat}${log ? " (log2)" : ""}: layers x steps`)
    }</text>`,
  ];
  rows.forEach((row, i) => {
    const y = top + i * ch;
    parts.push(`<text x="${labelW - 4}" y="${y + ch - 3}" text-anchor="end">${escXml(row)}</text>`);
    records.forEach((_, c) => {
      const v = cells.get(`${row}\0${c}`);
      const fill = v === undefined ? "#dddddd" : viridis(hi > lo ? (v - lo) / (hi - lo) : 0);
      parts.push(
        `<rect x="${labelW + c * cw}" y="${y}" width="${cw}" height="${ch}" fill="${fill}"><title>${
          escXml(`${row}, step ${records[c].step}: ${v ?? "not recorded"}`)
        }</title></rect>`,
      );
    });
  });
  const yb = top + ch * rows.length + 14;
  records.forEach((r, c) => {
    if (c % Math.max(1, Math.ceil(records.length / 10)) === 0) {
      parts.push(`<text x="${labelW + c * cw}" y="${yb}">${r.step}</text>`);
    }
  });
  parts.push(`<text x="${labelW}" y="${yb + 14}">step</text>`);
  const lx = labelW + cw * records.length + 20;
  for (let i = 0; i <= 20; i++) {
    parts.push(
      `<rect x="${lx}" y="${top + (20 - i) * 5}" width="14" height="5" fill="${viridis(i / 20)}"/>`,
    );
  }
  const fmt = (v: number) => (Math.abs(v) >= 0.01 || v === 0 ? v.toFixed(3) : v.toExponential(2));
  parts.push(`<text x="${lx + 18}" y="${top + 8}">${fmt(hi)}</text>`);
  parts.push(`<text x="${lx + 18}" y="${top + 105}">${fmt(lo)}</text>`);
  parts.push("</svg>");
  return parts.join("\n");
}
