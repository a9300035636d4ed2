/**
 * Per-tensor FP8 scaling on the device, as Transformer Engine does it: the quantise kernels
 * (`cast_sat(x * scale)`, one output word per invocation, the amax of |x| recorded as an
 * atomic max on its bits), current scaling (the scale of this tensor's own amax), and the
 * slot state of delayed scaling: per slot an amax, a history and a scale in device buffers,
 * all slots committed by one dispatch (`update`). `fp8.ts` builds the recipes on it; the
 * formulas are DESIGN.md's (section 4, FP8).
 *
 * Reference: NVIDIA Transformer Engine, `DelayedScaling`, `amax_and_scale_update` and
 * `compute_scale_from_amax`.
 *
 * @module
 */

import type { FP8StateDict } from "./fp8.ts";
import { type DType, dtype, finfo, float32, wgslChunks, wgslCodec } from "../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../errors.ts";
import { currentRuntime, type Kernel, type Runtime } from "../gpu/mod.ts";
import { type Layout, layoutOf, needsF16, wgslBinding, wgslLoad } from "./layout.ts";
import { fmtShape, isTensor, Tensor } from "./tensor.ts";
import { keep } from "./scope.ts";
import { zeros } from "./creation.ts";

const F32_MAX_BITS = 0x7f7fffff;
const WG = 256;

/** A quantised tensor: `data` = cast_sat(x * scale), `scale` one f32 on the device. @internal */
export interface Scaled {
  /** The codes. */
  readonly data: Tensor;
  /** The scale they were made with. */
  readonly scale: Tensor;
}

/** What `ScalingSlots.save()` gives and `load()` takes (the recipe adds its settings). @internal */
export type SlotState = Pick<
  FP8StateDict,
  "position" | "slots" | "formats" | "amaxHistory" | "scale" | "amax"
>;

/** The uniforms of the quantise kernels: n, slot, the format's max and 2^margin. */
function quantUniforms(n: number, slot: number, fmt: DType, margin: number): Uint32Array {
  const u = new Uint32Array([n, slot, 0, 0]);
  const f = new Float32Array(u.buffer);
  f[2] = finfo(fmt).max;
  f[3] = 2 ** margin;
  return u;
}

/**
 * Current scaling: `x` quantised to `fmt` with the scale of its own amax,
 * `(fp8_max / amax) / 2^margin` (1 when the amax is 0, Inf or NaN; f32's max when the
 * scale overflows), in three dispatches (zero, amax, quantise). @internal
 */
export function quantizeCurrent(x: Tensor, fmt: DType, margin: number): Scaled {
  const rt = currentRuntime();
  const op = "FP8Recipe.quantize()";
  const inL = layoutOf(x.dt, rt), outL = layoutOf(fmt, rt);
  const data = Tensor.empty(x.shape, fmt, "casts");
  const scale = Tensor.empty([], float32, "casts");
  const groups = rt.grid(Math.ceil(Math.ceil(x.size / outL.lanes) / WG));
  const u = quantUniforms(x.size, 0, fmt, margin);
  const amax = zeros([1], { dtype: "u32" });
  rt.dispatch(quantKernel(rt, inL, outL, "amax"), [x.buffer(op), amax.buffer(op)], groups, u);
  rt.dispatch(
    quantKernel(rt, inL, outL, "current"),
    [x.buffer(op), data.buffer(op), amax.buffer(op), scale.buffer(op)],
    groups,
    u,
  );
  amax.dispose();
  return { data, scale };
}

/**
 * The slots of delayed scaling: per slot (a name, created on first use) an amax recorded
 * since the last update, a history of `len` amaxes and a scale, in four device buffers
 * (amax, history, scale and the format's max) that grow by doubling. @internal
 */
export class ScalingSlots {
  #names: string[] = [];
  #formats: DType[] = [];
  #index = new Map<string, number>();
  #cap = 0;
  #amax: Tensor | null = null;
  #hist: Tensor | null = null;
  #scale: Tensor | null = null;
  #fmax: Tensor | null = null;
  /** Slots whose state came from `load()` before they were created. */
  #loaded = 0;
  #position = 0;

  /** Slots with histories of `len` amaxes; scales divided by 2^margin. */
  constructor(readonly len: number, readonly margin: number) {}

  /** The slot names in creation order. */
  get names(): readonly string[] {
    return this.#names;
  }

  /** `x` quantised to `fmt` with the scale of slot `key`, recording its amax there. */
  quantize(x: Tensor, key: string, fmt: DType): Scaled {
    const rt = currentRuntime();
    const op = "FP8Recipe.quantize()";
    const slot = this.#slot(key, fmt);
    const inL = layoutOf(x.dt, rt), outL = layoutOf(fmt, rt);
    const data = Tensor.empty(x.shape, fmt, "casts");
    const scale = Tensor.empty([], float32, "casts");
    const groups = rt.grid(Math.ceil(Math.ceil(x.size / outL.lanes) / WG));
    rt.dispatch(
      quantKernel(rt, inL, outL, "delayed"),
      [
        x.buffer(op),
        data.buffer(op),
        this.#scale!.buffer(op),
        this.#amax!.buffer(op),
        scale.buffer(op),
      ],
      groups,
      quantUniforms(x.size, slot, fmt, this.margin),
    );
    return { data, scale };
  }

  /**
   * Commits every slot's amax (one dispatch): into its history at the current position,
   * then scale = (fmax / max of the history) / 2^margin, kept when that maximum is not
   * finite and positive, f32's max when it overflows; the amax starts again from 0.
   */
  update(): void {
    const n = Math.max(this.#names.length, this.#loaded);
    if (n === 0) return;
    const rt = currentRuntime();
    const op = "FP8Recipe.update()";
    const u = new Uint32Array(8);
    u.set([n, this.len, this.#position]);
    new Float32Array(u.buffer)[4] = 2 ** this.margin;
    rt.dispatch(
      stateKernel(rt, "update"),
      [this.#amax!, this.#hist!, this.#scale!, this.#fmax!].map((t) => t.buffer(op)),
      [Math.ceil(n / 64)],
      u,
    );
    this.#position = (this.#position + 1) % this.len;
  }

  /** Copies of the state (no readback). */
  save(): SlotState {
    const n = Math.max(this.#names.length, this.#loaded), len = this.len;
    const rt = currentRuntime();
    const copy = (t: Tensor | null, shape: number[]) => {
      const c = Tensor.empty(shape, float32, "other");
      if (t !== null && c.size > 0) {
        rt.copy(t.buffer("FP8Recipe.stateDict()"), 0, c.buffer("stateDict"), 0, 4 * c.size);
      }
      return c;
    };
    return {
      position: this.#position,
      slots: [...this.#names],
      formats: this.#formats.map((d) => d.name),
      amaxHistory: copy(this.#hist, [n, len]),
      scale: copy(this.#scale, [n]),
      amax: copy(this.#amax, [n]),
    };
  }

  /**
   * Restores `sd` slot by slot in creation order (slots created later take the saved values
   * of their position), copying the tensors. Checks everything before changing anything.
   */
  load(sd: SlotState, op: string, cast = false): void {
    const n = isTensor(sd.scale) ? sd.scale.size : -1;
    const len = this.len;
    const want: [string, Tensor, number[]][] = [
      ["amaxHistory", sd.amaxHistory, [n, len]],
      ["scale", sd.scale, [n]],
      ["amax", sd.amax, [n]],
    ];
    for (const [k, t, shape] of want) {
      if (!isTensor(t) || t.ndim !== shape.length || t.shape.some((v, i) => v !== shape[i])) {
        throw new ShapeError(
          `${op}: '${k}' must be a tensor of shape ${fmtShape(shape)} (slots x history), got ${
            isTensor(t) ? fmtShape(t.shape) : typeof t
          }`,
        );
      }
      if (!cast && t.dtype !== "f32") {
        throw new DTypeError(
          `${op}: '${k}' is a ${t.dtype} tensor, stateDict() saves f32; pass { cast: true } to ` +
            `convert it`,
        );
      }
    }
    if (!Number.isSafeInteger(sd.position) || sd.position < 0 || sd.position >= len) {
      throw new ValueError(`${op}: position must be an integer in [0, ${len}), got ${sd.position}`);
    }
    const formats = Array.isArray(sd.formats) ? sd.formats : [];
    if (formats.length !== n || formats.some((f) => f !== "e4m3" && f !== "e5m2")) {
      throw new ValueError(
        `${op}: formats must name the FP8 format (e4m3 or e5m2) of each of the ${n} slots`,
      );
    }
    const rt = currentRuntime();
    this.#ensure(n);
    formats.forEach((f, s) => {
      this.#formats[s] = dtype(f);
      this.#init(s, false);
    });
    const dst = [this.#hist!, this.#scale!, this.#amax!];
    want.forEach(([, t], k) => {
      if (t.size === 0) return;
      const src = t.dt === float32 ? t : t.cast(float32);
      rt.copy(src.buffer(op), 0, dst[k].buffer(op), 0, 4 * t.size);
      if (src !== t) src.dispose();
    });
    this.#loaded = Math.max(this.#loaded, n);
    this.#position = sd.position;
  }

  /** Frees the buffers and forgets every slot. */
  dispose(): void {
    for (const t of [this.#amax, this.#hist, this.#scale, this.#fmax]) t?.dispose();
    [this.#amax, this.#hist, this.#scale, this.#fmax] = [null, null, null, null];
    this.#names = [];
    this.#formats = [];
    this.#index.clear();
    this.#cap = this.#loaded = this.#position = 0;
  }

  /**
   * The slot named `key`, created on first use: with scale 1 and an empty history, or with
   * the state `load()` gave the slot of its position.
   */
  #slot(key: string, fmt: DType): number {
    const hit = this.#index.get(key);
    if (hit !== undefined) return hit;
    const s = this.#names.length;
    this.#names.push(key);
    this.#index.set(key, s);
    this.#ensure(s + 1);
    const restored = s < this.#loaded;
    if (!restored || this.#formats[s] !== fmt) {
      this.#formats[s] = fmt;
      this.#init(s, !restored);
    }
    return s;
  }

  /** Sets slot `s`'s format maximum and, with `reset`, its scale (1), amax and history (0). */
  #init(s: number, reset: boolean): void {
    const rt = currentRuntime();
    const u = new Uint32Array([s, this.len, reset ? 1 : 0, 0]);
    new Float32Array(u.buffer)[3] = finfo(this.#formats[s]).max;
    rt.dispatch(
      stateKernel(rt, "init"),
      [this.#amax!, this.#hist!, this.#scale!, this.#fmax!].map((t) => t.buffer("FP8Recipe")),
      [1],
      u,
    );
  }

  /** Grows the state buffers to hold at least `n` slots, keeping their contents. */
  #ensure(n: number): void {
    if (n <= this.#cap) return;
    const cap = Math.max(16, 2 ** Math.ceil(Math.log2(n)));
    const rt = currentRuntime();
    const grow = (old: Tensor | null, per: number) => {
      const t = keep(Tensor.empty([cap * per], float32, "other"));
      if (old !== null) {
        rt.copy(old.buffer("FP8Recipe"), 0, t.buffer("FP8Recipe"), 0, 4 * this.#cap * per);
        old.dispose();
      }
      return t;
    };
    this.#amax = grow(this.#amax, 1);
    this.#hist = grow(this.#hist, this.len);
    this.#scale = grow(this.#scale, 1);
    this.#fmax = grow(this.#fmax, 1);
    this.#cap = cap;
  }
}

// ---- kernels -------------------------------------------------------------------------------

type QuantMode = "amax" | "delayed" | "current";

/**
 * The per-tensor kernels: `amax` records max |x| (as bits) into `amax[slot]`; `delayed`
 * quantises with `scales[slot]` and records the amax; `current` quantises with the scale of
 * the amax in `src[0]`. An invocation owns one output word; a workgroup reduces its amax in
 * workgroup memory and makes one atomic max on the device buffer.
 */
function quantKernel(rt: Runtime, inL: Layout, outL: Layout, mode: QuantMode): Kernel {
  const bufs: ("read" | "read_write")[] = mode === "amax"
    ? ["read", "read_write"]
    : mode === "delayed"
    ? ["read", "read_write", "read", "read_write", "read_write"]
    : ["read", "read_write", "read", "read_write"];
  const key = `fp8q|${mode}|${inL.dtype.name}:${inL.elem}|${outL.dtype.name}`;
  return rt.kernelFor(key, `fp8 ${mode}`, { buffers: bufs, uniform: true }, () => {
    const enc = wgslCodec(outL.dtype, { rounding: "rne", saturate: true });
    const lanes = outL.lanes, bits = outL.laneBits, mask = (2 ** bits - 1) >>> 0;
    const q = mode !== "amax";
    let decl = wgslBinding(inL, 0, 0, "x", "read");
    let scale = "";
    if (mode === "amax") {
      decl += "@group(0) @binding(1) var<storage, read_write> amax: array<atomic<u32>>;\n";
    } else {
      decl += `@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<u32>;\n`;
      decl += mode === "delayed"
        ? `@group(0) @binding(3) var<storage, read_write> amax: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> used: array<u32>;\n`
        : "@group(0) @binding(3) var<storage, read_write> used: array<u32>;\n";
      scale = mode === "delayed"
        ? "fn scale_now() -> f32 { return bitcast<f32>(src[u.slot]); }\n"
        : `fn scale_now() -> f32 {
  let m = src[0];
  if (m == 0u || m >= 0x7f800000u) { return 1.0; }
  let s = (u.fmax / bitcast<f32>(m)) / u.p2;
  return select(s, bitcast<f32>(${F32_MAX_BITS}u), (bitcast<u32>(s) & 0x7f800000u) == 0x7f800000u);
}\n`;
    }
    const nb = mode === "amax" ? 2 : mode === "delayed" ? 5 : 4;
    const record = mode === "current" ? "" : `  atomicMax(&wmax, m);
  workgroupBarrier();
  if (li == 0u) { atomicMax(&amax[u.slot], atomicLoad(&wmax)); }\n`;
    return `${needsF16([inL]) ? "enable f16;\n" : ""}${
      wgslChunks(wgslLoad(inL, "x", "ld"), q ? enc.chunks : [])
    }
struct U { n: u32, slot: u32, fmax: f32, p2: f32 }
${decl}@group(0) @binding(${nb}) var<uniform> u: U;
var<workgroup> wmax: atomic<u32>;
${scale}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let w = (wid.x + wid.y * nwg.x) * ${WG}u + li;
${q ? "  let s = scale_now();\n" : ""}  var m = 0u;
  if (w * ${lanes}u < u.n) {
    var word = 0u;
    for (var l = 0u; l < ${lanes}u; l = l + 1u) {
      let i = w * ${lanes}u + l;
      if (i >= u.n) { break; }
      let v = ld(i);
      m = max(m, bitcast<u32>(v) & 0x7fffffffu);
${q ? `      word = word | ((${enc.encode}(v * s, 0u) & ${mask}u) << (l * ${bits}u));\n` : ""}    }
${q ? "    out[w] = word;\n" : ""}  }
${record}${q ? "  if (w == 0u) { used[0] = bitcast<u32>(s); }\n" : ""}}
`;
  });
}

/**
 * The state kernels over the slot buffers (amax, history, scale, fmax): `init` resets one
 * slot (or only sets its format's max, for a slot restored by `loadStateDict`); `update`
 * commits every slot's amax, one invocation per slot.
 */
function stateKernel(rt: Runtime, which: "init" | "update"): Kernel {
  const access = which === "init" ? "read_write" : "read";
  const sig = {
    buffers: ["read_write", "read_write", "read_write", access] as const,
    uniform: true,
  };
  return rt.kernelFor(`fp8state|${which}`, `FP8Recipe.${which}`, sig, () => {
    const decl = `@group(0) @binding(0) var<storage, read_write> amax: array<u32>;
@group(0) @binding(1) var<storage, read_write> hist: array<u32>;
@group(0) @binding(2) var<storage, read_write> scale: array<u32>;
@group(0) @binding(3) var<storage, ${access}> fmax: array<u32>;\n`;
    if (which === "init") {
      return `struct U { slot: u32, len: u32, full: u32, fmax: f32 }
${decl}@group(0) @binding(4) var<uniform> u: U;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32) {
  if (u.full != 0u) {
    for (var k = li; k < u.len; k = k + 64u) { hist[u.slot * u.len + k] = 0u; }
    if (li == 0u) {
      amax[u.slot] = 0u;
      scale[u.slot] = 0x3f800000u;
    }
  }
  if (li == 0u) { fmax[u.slot] = bitcast<u32>(u.fmax); }
}
`;
    }
    return `struct U { n: u32, len: u32, pos: u32, pad: u32, p2: f32, q0: f32, q1: f32, q2: f32 }
${decl}@group(0) @binding(4) var<uniform> u: U;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let s = g.x;
  if (s >= u.n) { return; }
  let base = s * u.len;
  hist[base + u.pos] = amax[s];
  var m = 0u;
  for (var k = 0u; k < u.len; k = k + 1u) { m = max(m, hist[base + k] & 0x7fffffffu); }
  // keep the old scale unless the window's amax is finite and positive
  if (m != 0u && m < 0x7f800000u) {
    let sc = (bitcast<f32>(fmax[s]) / bitcast<f32>(m)) / u.p2;
    let inf = (bitcast<u32>(sc) & 0x7f800000u) == 0x7f800000u;
    scale[s] = select(bitcast<u32>(sc), ${F32_MAX_BITS}u, inf);
  }
  amax[s] = 0u;
}
`;
  });
}
