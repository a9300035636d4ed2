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
import { type DType, dtype, finfo, float32 } from "../../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../../errors.ts";
import { currentRuntime, type PooledBuffer, program, type Runtime } from "../../gpu/mod.ts";
import { layoutOf } from "../../gpu/layout.ts";
import { fmtShape, isTensor, Tensor } from "../core/tensor.ts";
import { keep } from "../core/scope.ts";
import { zeros } from "../ops/creation.ts";

const F32_MAX_BITS = 0x7f7fffff;

/** The bits of `v` rounded to f32 (a non-negative amax floor as a u32 uniform). */
function f32BitsOf(v: number): number {
  return new Uint32Array(Float32Array.of(v).buffer)[0];
}
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

/**
 * Current scaling: `x` quantised to `fmt` with the scale of its own amax,
 * `(fp8_max / max(amax, eps)) / 2^margin` (1 when that amax is 0, Inf or NaN; f32's max when
 * the scale overflows; with `pow2`, its mantissa cleared: rounded down to a power of two, as
 * Transformer Engine's `compute_scale_from_amax` with `force_pow_2_scales`), in three
 * dispatches (zero, amax, quantise). @internal
 */
export function quantizeCurrent(
  x: Tensor,
  fmt: DType,
  margin: number,
  eps = 0,
  pow2 = false,
): Scaled {
  const rt = currentRuntime();
  const op = "FP8Recipe.quantize()";
  const data = Tensor.empty(x.shape, fmt, "casts");
  const scale = Tensor.empty([], float32, "casts");
  const amax = zeros([1], { dtype: "u32" });
  runQuant(rt, "amax", x, fmt, null, { amax: amax.buffer(op) }, 0, margin);
  runQuant(
    rt,
    "current",
    x,
    fmt,
    data,
    {
      src: amax.buffer(op),
      used: scale.buffer(op),
    },
    0,
    margin,
    eps,
    pow2,
  );
  amax.dispose();
  return { data, scale };
}

/**
 * The amax of `x` (max |x|, NaN above Inf) as the bits of an f32 in a one-element u32
 * tensor on the device, in two dispatches (zero, amax). @internal
 */
export function tensorAmax(x: Tensor, op: string): Tensor {
  const amax = zeros([1], { dtype: "u32" });
  runQuant(currentRuntime(), "amax", x, float32, null, { amax: amax.buffer(op) }, 0, 0);
  return amax;
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

  /**
   * Slots with histories of `len` amaxes; scales divided by 2^margin, computed from the
   * history's maximum, or with `recent` from the newest amax (`most_recent`).
   */
  constructor(readonly len: number, readonly margin: number, readonly recent = false) {}

  /** The slot names in creation order. */
  get names(): readonly string[] {
    return this.#names;
  }

  /** `x` quantised to `fmt` with the scale of slot `key`, recording its amax there. */
  quantize(x: Tensor, key: string, fmt: DType): Scaled {
    const rt = currentRuntime();
    const op = "FP8Recipe.quantize()";
    const slot = this.#slot(key, fmt);
    const data = Tensor.empty(x.shape, fmt, "casts");
    const scale = Tensor.empty([], float32, "casts");
    runQuant(
      rt,
      "delayed",
      x,
      fmt,
      data,
      {
        src: this.#scale!.buffer(op),
        amax: this.#amax!.buffer(op),
        used: scale.buffer(op),
      },
      slot,
      this.margin,
    );
    return { data, scale };
  }

  /**
   * Commits every slot's amax (one dispatch): into its history at the current position,
   * then scale = (fmax / max of the history) / 2^margin (the newest amax instead of the
   * maximum under `most_recent`), kept when that amax is not
   * finite and positive, f32's max when it overflows; the amax starts again from 0.
   */
  update(): void {
    const n = Math.max(this.#names.length, this.#loaded);
    if (n === 0) return;
    const rt = currentRuntime();
    const op = "FP8Recipe.update()";
    stateProgram(rt, "update").run({
      buffers: this.#state(op),
      uniforms: {
        n,
        len: this.len,
        pos: this.#position,
        p2: 2 ** this.margin,
        recent: this.recent ? 1 : 0,
      },
      groups: Math.ceil(n / 64),
    });
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
    stateProgram(currentRuntime(), "init").run({
      buffers: this.#state("FP8Recipe"),
      uniforms: { slot: s, len: this.len, full: reset ? 1 : 0, fmax: finfo(this.#formats[s]).max },
      groups: 1,
    });
  }

  /** The state buffers by binding name. */
  #state(op: string): Record<"amax" | "hist" | "scale" | "fmax", PooledBuffer> {
    return {
      amax: this.#amax!.buffer(op),
      hist: this.#hist!.buffer(op),
      scale: this.#scale!.buffer(op),
      fmax: this.#fmax!.buffer(op),
    };
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
 * quantises `x` into `data` with `src[slot]` (the slot's scale) and records the amax;
 * `current` quantises with the scale of the amax in `src[0]`. Both write the scale they used
 * to `used[0]`. An invocation owns one output word; a workgroup reduces its amax in
 * workgroup memory and makes one atomic max on the device buffer. `x` and `data` are bound
 * as windows when larger than one binding.
 */
function runQuant(
  rt: Runtime,
  mode: QuantMode,
  x: Tensor,
  fmt: DType,
  data: Tensor | null,
  state: Readonly<Record<string, PooledBuffer>>,
  slot: number,
  margin: number,
  eps = 0,
  pow2 = false,
): void {
  const op = "FP8Recipe.quantize()";
  const outL = layoutOf(fmt, rt);
  const lanes = outL.lanes;
  const q = mode !== "amax";
  const raw = (name: string, type: "u32" | "atomic<u32>", access: "read" | "read_write") => ({
    name,
    type,
    access,
  });
  const p = program(rt, `fp8q|${mode}|${fmt.name}`, {
    label: `fp8 ${mode}`,
    bindings: [
      { name: "x", type: layoutOf(x.dt, rt), access: "read" },
      ...(q
        ? [
          {
            name: "out",
            type: outL,
            access: "read_write" as const,
            encode: { rounding: "rne" as const, saturate: true },
          },
          raw("src", "u32", "read"),
        ]
        : []),
      ...(mode !== "current" ? [raw("amax", "atomic<u32>", "read_write")] : []),
      ...(q ? [raw("used", "u32", "read_write")] : []),
    ],
    uniforms: [
      { name: "n", type: "u32" },
      { name: "slot", type: "u32" },
      { name: "fmax", type: "f32" },
      { name: "p2", type: "f32" },
      { name: "eps", type: "u32" },
      { name: "pow2", type: "u32" },
    ],
    workgroupSize: WG,
  }, () => {
    const scale = mode === "delayed"
      ? "fn scale_now() -> f32 { return bitcast<f32>(src[u.slot]); }\n"
      : mode === "current"
      ? `fn scale_now() -> f32 {
  // the amax floored at eps (both non-negative: their bits order as their values)
  let m = max(src[0], u.eps);
  if (m == 0u || m >= 0x7f800000u) { return 1.0; }
  let s = (u.fmax / bitcast<f32>(m)) / u.p2;
  let r = select(s, bitcast<f32>(${F32_MAX_BITS}u), (bitcast<u32>(s) & 0x7f800000u) == 0x7f800000u);
  return select(r, bitcast<f32>(bitcast<u32>(r) & 0xff800000u), u.pow2 != 0u);
}\n`
      : "";
    const record = mode === "current" ? "" : `  atomicMax(&wmax, m);
  workgroupBarrier();
  if (li == 0u) { atomicMax(&amax[u.slot], atomicLoad(&wmax)); }\n`;
    // the lanes of word w, unrolled (constant vector indices keep v4 in registers)
    let lanes4 = "";
    for (let l = 0; l < lanes; l++) {
      const i = `w * ${lanes}u + ${l}u`;
      lanes4 += `    if (${i} < u.n) {
      let v${l} = ld_x(${i});
      m = max(m, bitcast<u32>(v${l}) & 0x7fffffffu);
${q ? `      v4.${"xyzw"[l]} = v${l} * s;\n` : ""}    }
`;
    }
    return `var<workgroup> wmax: atomic<u32>;
${scale}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let w = wg * ${WG}u + li;
${q ? "  let s = scale_now();\n" : ""}  var m = 0u;
  if (w * ${lanes}u < u.n) {
    var v4 = vec4<f32>(0.0);
${lanes4}${q ? "    st_out(w, v4, vec4<u32>(0u));\n" : ""}  }
${record}${q ? "  if (w == 0u) { used[0] = bitcast<u32>(s); }\n" : ""}}
`;
  });
  const n = x.size, per = WG * lanes;
  const own = (g0: number, g1: number): [number, number] => [g0 * per, Math.min(n, g1 * per)];
  p.run({
    buffers: { x: x.buffer(op), ...(data ? { out: data.buffer(op) } : {}), ...state },
    uniforms: {
      n,
      slot,
      fmax: finfo(fmt).max,
      p2: 2 ** margin,
      eps: f32BitsOf(eps),
      pow2: pow2 ? 1 : 0,
    },
    groups: Math.ceil(Math.ceil(n / lanes) / WG),
    ranges: { x: own, out: own },
  });
}

/**
 * The state kernels over the slot buffers (amax, history, scale, fmax): `init` resets one
 * slot (or only sets its format's max, for a slot restored by `loadStateDict`); `update`
 * commits every slot's amax, one invocation per slot.
 */
function stateProgram(rt: Runtime, which: "init" | "update") {
  const init = which === "init";
  return program(rt, `fp8state|${which}`, {
    label: `FP8Recipe.${which}`,
    bindings: [
      { name: "amax", type: "u32", access: "read_write" },
      { name: "hist", type: "u32", access: "read_write" },
      { name: "scale", type: "u32", access: "read_write" },
      { name: "fmax", type: "u32", access: init ? "read_write" : "read" },
    ],
    uniforms: init
      ? [
        { name: "slot", type: "u32" },
        { name: "len", type: "u32" },
        { name: "full", type: "u32" },
        { name: "fmax", type: "f32" },
      ]
      : [
        { name: "n", type: "u32" },
        { name: "len", type: "u32" },
        { name: "pos", type: "u32" },
        { name: "p2", type: "f32" },
        { name: "recent", type: "u32" },
      ],
    workgroupSize: 64,
  }, () =>
    init
      ? `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  if (u.full != 0u) {
    for (var k = li; k < u.len; k = k + 64u) { hist[u.slot * u.len + k] = 0u; }
    if (li == 0u) {
      amax[u.slot] = 0u;
      scale[u.slot] = 0x3f800000u;
    }
  }
  if (li == 0u) { fmax[u.slot] = bitcast<u32>(u.fmax); }
}
`
      : `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let s = wg * 64u + li;
  if (s >= u.n) { return; }
  let base = s * u.len;
  hist[base + u.pos] = amax[s];
  var m = amax[s] & 0x7fffffffu;
  if (u.recent == 0u) {
    for (var k = 0u; k < u.len; k = k + 1u) { m = max(m, hist[base + k] & 0x7fffffffu); }
  }
  // keep the old scale unless the amax (window's or newest) is finite and positive
  if (m != 0u && m < 0x7f800000u) {
    let sc = (bitcast<f32>(fmax[s]) / bitcast<f32>(m)) / u.p2;
    let inf = (bitcast<u32>(sc) & 0x7f800000u) == 0x7f800000u;
    scale[s] = select(bitcast<u32>(sc), ${F32_MAX_BITS}u, inf);
  }
  amax[s] = 0u;
}
`);
}
