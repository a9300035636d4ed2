/**
 * FP8 training recipes: what `autocast({ dtype: "fp8", recipe })` does to the inputs of
 * every GEMM (linear layers, attention's q k^T and p v, the LM head), forward and backward.
 *
 * Formats: `hybrid` (default) quantises the forward GEMM inputs (activations, weights) to
 * e4m3 and the gradients of the backward pass to e5m2; `e4m3` uses e4m3 for both. The GEMM
 * multiplies the codes, accumulates in f32 and rounds once to the output dtype (the recipe's
 * `outDtype`, bf16 by default, which the other low-precision ops of the context use too).
 *
 * Scaling (DESIGN.md section 4):
 * - `delayed` (Transformer Engine's DelayedScaling, the default): each quantised tensor has a
 *   slot (per GEMM call site and role: `a`, `b` (for a linear layer: input and weight),
 *   `grad`) with a scale, the amax of the current step and a history of `amaxHistoryLen`
 *   (1024) amaxes, all on the device. A tensor is stored as `cast_sat(x * scale)` and the
 *   GEMM multiplies its f32 result by `1 / (scale_a scale_b)`; the quantise kernel records
 *   the amax as it goes (an atomic max on the bits of |x|). `update()`, one dispatch for all
 *   slots, writes each slot's amax into its history, then computes
 *   `scale = (fp8_max / amax) / 2^margin` from the history's maximum (so the newest amax
 *   counts: the scale is computed before the window moves on), keeps the old scale when
 *   that amax is not finite and positive, and clamps an overflowing scale to f32's max.
 *   autocast calls `update()` when it enters a context with the recipe from outside any
 *   other context with it (the next step's forward), so a training step reads nothing back.
 *   `amaxComputeAlgo: "most_recent"` takes the newest amax instead of the history's maximum.
 * - `current` (Float8CurrentScaling): the scale of this tensor's own amax (an extra pass over
 *   it), `fmax / max(amax, amaxEpsilon)`: 1 when that is 0, Inf or NaN; rounded down to a
 *   power of two with `powerOfTwoScales`.
 * - `mx`: OCP MX block scaling (`mx.ts`) along each GEMM's reduction dimension, elements in
 *   `mxFormat` forward (e4m3 by default; e5m2, e3m2, e2m3, e2m1) and e5m2 (hybrid) for
 *   gradients; the backward GEMMs quantise their operands along their own reduction axes.
 *   MXFP8 (Transformer Engine's MXFP8BlockScaling) is `fp8Recipe("mxfp8")`: e4m3 in both.
 * - `rowwise` (torchao's ROWWISE): one scale per row of A (token) and column of B (output
 *   feature), that is per line along the GEMM's reduction axis, `fmax / max(amax, 1e-12)`
 *   rounded down to a power of two; the backward GEMMs scale along their own reduction axes.
 * - `block` (Float8BlockScaling, DeepSeek-V3): f32 scales per 1x128 tile along the reduction
 *   axis for activations and gradients and per 128x128 block for weights (the same blocks
 *   in both passes), powers of two by default, e4m3 in both passes by default.
 * - `nvfp4` (NVFP4BlockScaling, simulated): E2M1 elements, an E4M3 decode scale per 1x16
 *   values (16x16 for weights) and an f32 one per tensor; gradients rounded stochastically
 *   from a counter-based stream keyed by (seed, step, GEMM call, element); a linear layer's
 *   weight-gradient GEMM takes both inputs through TE's 16-point random Hadamard transform
 *   first (along the tokens, when their count is a multiple of 16; `hadamard: false` to skip).
 * The block recipes (`block_scaling.ts`) give the GEMM the dequantised operands in f32, which
 * is exactly `A_q B_q / (s_A s_B)` per block pair, accumulated in f32.
 *
 * Slots are keyed by the parameter a GEMM multiplies (`p<id>`: a linear layer keeps its
 * slots across steps), and a GEMM without one (attention) by its place after the last GEMM
 * with a parameter (`p<id>+1`, `p<id>+2`). `stateDict()` returns the histories and scales
 * in the order the slots were created, and `loadStateDict()` restores them in that order.
 *
 * References: Micikevicius et al., "FP8 Formats for Deep Learning" (arXiv:2209.05433, 2022);
 * NVIDIA Transformer Engine, `DelayedScaling` and `amax_and_scale_update`.
 *
 * @module
 */

import { type DType, dtype, type DTypeLike, e4m3, e5m2, isFloat } from "../../dtypes/mod.ts";
import { DTypeError, ValueError } from "../../errors.ts";
import { isTensor, type Tensor } from "../core/tensor.ts";
import { mxElementDtype, mxQuantizeBlocks } from "./mx.ts";
import { quantizeCurrent, ScalingSlots } from "./scaling.ts";
import {
  blockMatrix,
  type BlockSpec,
  groupQuantize,
  NVFP4_BLOCK,
  randomHadamard16,
} from "./block_scaling.ts";
import { randomU32 } from "../../dtypes/mod.ts";
import type { GemmOperand, GemmSite } from "../core/context.ts";

/** Which FP8 formats a recipe uses: e4m3 forward and e5m2 backward (`hybrid`), or e4m3 only. */
export type FP8Format = "hybrid" | "e4m3";

/**
 * How a recipe scales: per tensor from an amax history or the current amax, MX blocks, per
 * row, per 1x128 / 128x128 block, or NVFP4's two levels.
 */
export type FP8Scaling = "delayed" | "current" | "mx" | "rowwise" | "block" | "nvfp4";

/** How delayed scaling reduces the amax history: its maximum, or the newest amax. */
export type AmaxComputeAlgo = "max" | "most_recent";

/** Elements per block side of the `block` recipe (1x128 tiles, 128x128 weight blocks). */
export const FP8_BLOCK = 128;

/** Options of an FP8 recipe (Transformer Engine's names in camelCase, its defaults). */
export interface FP8RecipeOptions {
  /** `hybrid` (default; `e4m3` for `block`): e4m3 forward, e5m2 gradients; `e4m3`: both. */
  format?: FP8Format;
  /** `delayed` (default), `current`, `mx`, `rowwise`, `block` or `nvfp4`. */
  scaling?: FP8Scaling;
  /** Amaxes kept per slot for delayed scaling (default 1024). */
  amaxHistoryLen?: number;
  /** Delayed scaling: the scale from the history's `max` (default) or its `most_recent`. */
  amaxComputeAlgo?: AmaxComputeAlgo;
  /** Floor of the amax of current and block scaling (default 0; rowwise 1e-12). */
  amaxEpsilon?: number;
  /** Round scales down to powers of two (current: false, rowwise and block: true). */
  powerOfTwoScales?: boolean;
  /** Stream of NVFP4's stochastic rounding of gradients (default 0). */
  seed?: number;
  /**
   * NVFP4: a 16-point random Hadamard transform of both inputs of a linear layer's
   * weight-gradient GEMM along its reduction (token) axis, when that is a multiple of 16
   * (default true, as Transformer Engine).
   */
  hadamard?: boolean;
  /** Scales are divided by 2^margin (default 0). */
  margin?: number;
  /** MX element format of the forward pass (default `e4m3`; `e5m2`, `e3m2`, `e2m3`, `e2m1`). */
  mxFormat?: string;
  /** Output dtype of the GEMMs and dtype of the context's other low-precision ops (bf16). */
  outDtype?: DTypeLike;
}

/**
 * An FP8 tensor with a per-tensor scale: `data` holds `cast_sat(x * scale)`, so `x` is about
 * `data / scale`. `scale` is a one-element f32 tensor on the device.
 *
 * @example
 * ```ts
 * import { FP8Recipe, tensor } from "../../mod.ts";
 * const r = new FP8Recipe({ scaling: "current" });
 * const q = r.quantize(tensor([0.5, -2]), { key: "x" });
 * console.log(q.data.dtype, await q.scale.item()); // "e4m3" 224
 * ```
 */
export interface FP8Tensor {
  /** The codes (e4m3 or e5m2). */
  readonly data: Tensor;
  /** The scale it was quantised with, one f32. */
  readonly scale: Tensor;
}

/**
 * The state of a delayed-scaling recipe (`FP8Recipe.stateDict()`): its settings, and per
 * slot (in creation order) the amax history, the scale and the amax recorded since the last
 * `update()`. The tensors are copies owned by the caller.
 *
 * @example
 * ```ts
 * import { FP8Recipe, tensor } from "../../mod.ts";
 * const r = new FP8Recipe({ amaxHistoryLen: 4 });
 * r.quantize(tensor([3.5, -1]), { key: "x" });
 * r.update(); // scale = 448 / 3.5
 * const sd = r.stateDict();
 * console.log(sd.slots, sd.amaxHistory.shape, Array.from(await sd.scale.toArray())); // ["x"] [1, 4] [128]
 * ```
 */
export interface FP8StateDict {
  /** The recipe's format. */
  format: FP8Format;
  /** The recipe's scaling. */
  scaling: FP8Scaling;
  /** History length. */
  amaxHistoryLen: number;
  /** How the history is reduced (absent in older state dicts: `max`). */
  amaxComputeAlgo?: AmaxComputeAlgo;
  /** Steps begun so far (keys NVFP4's stochastic rounding; absent in older ones: 0). */
  step?: number;
  /** Margin. */
  margin: number;
  /** Where the next `update()` writes in each history (updates so far, modulo the length). */
  position: number;
  /** The slot names in creation order (restored by position, not by name). */
  slots: string[];
  /** Each slot's FP8 format (`e4m3`, `e5m2`), in the same order. */
  formats: string[];
  /** [slots, amaxHistoryLen] f32: `amaxHistory[s][(position - 1 - k) mod len]` is k updates old. */
  amaxHistory: Tensor;
  /** [slots] f32: the scales. */
  scale: Tensor;
  /** [slots] f32: the amaxes recorded since the last update (not yet in the history). */
  amax: Tensor;
}

/**
 * An FP8 training recipe and its scaling state: which formats the GEMM inputs take, how they
 * are scaled, and (delayed scaling) the amax histories and scales of every GEMM it has
 * quantised, on the device. Pass it to `autocast({ dtype: "fp8", recipe })`; without one,
 * autocast uses `defaultFP8Recipe()`. Save its state with a checkpoint (`stateDict()`).
 *
 * @example
 * ```ts
 * import { autocast, FP8Recipe, Linear, tensor, tidy } from "../../mod.ts";
 * const fc = new Linear(4, 2, { seed: 0 });
 * const recipe = new FP8Recipe({ margin: 0, amaxHistoryLen: 16 });
 * for (let step = 0; step < 3; step++) {
 *   tidy(() => {
 *     using _ = autocast({ dtype: "fp8", recipe }); // commits the previous step's amaxes
 *     fc.forward(tensor([[1, 2, 3, 4]])).sum().backward();
 *   });
 * }
 * // one slot per role of the layer's GEMM, keyed by its weight: p<id>:a (input), :b, :grad
 * console.log(recipe.slots.map((s) => s.split(":")[1])); // ["a", "b", "grad"]
 * ```
 */
export class FP8Recipe {
  /** `hybrid` or `e4m3`. */
  readonly format: FP8Format;
  /** `delayed`, `current`, `mx`, `rowwise`, `block` or `nvfp4`. */
  readonly scaling: FP8Scaling;
  /** Amaxes kept per slot (delayed scaling). */
  readonly amaxHistoryLen: number;
  /** How delayed scaling reduces the history (`max` or `most_recent`). */
  readonly amaxComputeAlgo: AmaxComputeAlgo;
  /** Floor of the amax (current, rowwise and block scaling). */
  readonly amaxEpsilon: number;
  /** Whether scales are rounded down to powers of two (current, rowwise, block). */
  readonly powerOfTwoScales: boolean;
  /** Stream of NVFP4's stochastic rounding of gradients. */
  readonly seed: number;
  /** NVFP4: random Hadamard transform of the weight-gradient GEMM's inputs. */
  readonly hadamard: boolean;
  /** Scales are divided by 2^margin. */
  readonly margin: number;
  /** MX element format of the forward pass. */
  readonly mxFormat: DType;
  /** Output dtype of the GEMMs (and the context's other low-precision ops). */
  readonly outDtype: DType;
  /** Delayed scaling's slots (null for current and MX scaling). */
  #slots: ScalingSlots | null;
  /** Whether amaxes were recorded (or loaded) since the last update. */
  #pending = false;
  #last = "";
  #since = 0;
  /** Steps begun (beginStep), and block quantisations of gradients in this step (NVFP4). */
  #step = 0;
  #calls = 0;

  /** A recipe with Transformer Engine's defaults (hybrid, delayed, history 1024, margin 0). */
  constructor(opts: FP8RecipeOptions = {}) {
    const known = [
      "format",
      "scaling",
      "amaxHistoryLen",
      "amaxComputeAlgo",
      "amaxEpsilon",
      "powerOfTwoScales",
      "seed",
      "hadamard",
      "margin",
      "mxFormat",
      "outDtype",
    ];
    for (const k of Object.keys(opts)) {
      if (!known.includes(k)) {
        throw new ValueError(`FP8Recipe: unknown option '${k}'; it takes ${known.join(", ")}`);
      }
    }
    const { scaling = "delayed", amaxHistoryLen = 1024, margin = 0 } = opts;
    const format = opts.format ?? (scaling === "block" ? "e4m3" : "hybrid");
    if (format !== "hybrid" && format !== "e4m3") {
      throw new ValueError(`FP8Recipe: format must be 'hybrid' or 'e4m3', got '${format}'`);
    }
    const scalings = ["delayed", "current", "mx", "rowwise", "block", "nvfp4"];
    if (!scalings.includes(scaling)) {
      throw new ValueError(
        `FP8Recipe: scaling must be one of ${scalings.join(", ")}, got '${scaling}'`,
      );
    }
    const algo = opts.amaxComputeAlgo ?? "max";
    if (algo !== "max" && algo !== "most_recent") {
      throw new ValueError(
        `FP8Recipe: amaxComputeAlgo must be 'max' or 'most_recent', got '${algo}'`,
      );
    }
    const eps = opts.amaxEpsilon ?? (scaling === "rowwise" ? 1e-12 : 0);
    if (typeof eps !== "number" || !(eps >= 0) || !Number.isFinite(eps)) {
      throw new ValueError(`FP8Recipe: amaxEpsilon must be a finite number >= 0, got ${eps}`);
    }
    const seed = opts.seed ?? 0;
    if (!Number.isInteger(seed)) {
      throw new ValueError(`FP8Recipe: seed must be an integer, got ${seed}`);
    }
    if (!Number.isSafeInteger(amaxHistoryLen) || amaxHistoryLen < 1) {
      throw new ValueError(
        `FP8Recipe: amaxHistoryLen must be a positive integer, got ${amaxHistoryLen}`,
      );
    }
    if (typeof margin !== "number" || !Number.isFinite(margin)) {
      throw new ValueError(`FP8Recipe: margin must be a finite number, got ${margin}`);
    }
    const out = dtype(opts.outDtype ?? "bf16");
    if (!isFloat(out) || out.kind === "mcf") {
      throw new DTypeError(
        `FP8Recipe: outDtype must be a float format such as bf16, f16 or f32, got ${out.name}`,
      );
    }
    this.format = format;
    this.scaling = scaling;
    this.amaxHistoryLen = amaxHistoryLen;
    this.amaxComputeAlgo = algo;
    this.amaxEpsilon = eps;
    this.powerOfTwoScales = opts.powerOfTwoScales ??
      (scaling === "rowwise" || scaling === "block");
    this.seed = seed;
    this.hadamard = opts.hadamard ?? scaling === "nvfp4";
    this.margin = margin;
    this.mxFormat = mxElementDtype(opts.mxFormat ?? "e4m3");
    this.outDtype = out;
    this.#slots = scaling === "delayed"
      ? new ScalingSlots(amaxHistoryLen, margin, algo === "most_recent")
      : null;
  }

  /** The dtype of forward GEMM inputs (e4m3; the MX element format under `mx`; NVFP4's e2m1). */
  get forwardDtype(): DType {
    return this.scaling === "mx"
      ? this.mxFormat
      : this.scaling === "nvfp4"
      ? dtype("e2m1fn")
      : e4m3;
  }

  /** The dtype of gradients in backward GEMMs (e5m2 for `hybrid`, else the forward one). */
  get backwardDtype(): DType {
    return this.format === "hybrid" && this.scaling !== "nvfp4" ? e5m2 : this.forwardDtype;
  }

  /** Steps begun so far (each outermost autocast context with this recipe begins one). */
  get step(): number {
    return this.#step;
  }

  /** The slot names in creation order (`p<param id>:a`, `:b`, `:grad`, or your keys). */
  get slots(): readonly string[] {
    return [...(this.#slots?.names ?? [])];
  }

  /**
   * Quantises `x` with the slot `key` (created on first use): delayed scaling uses the slot's
   * scale and records the amax of `x` for the next `update()`; current scaling uses the amax
   * of `x`. `backward: true` gives the gradient format. Outside the autograd graph.
   */
  quantize(x: Tensor, opts: { key: string; backward?: boolean }): FP8Tensor {
    if (!isTensor(x) || !isFloat(x.dt) || x.dt.kind === "mcf") {
      throw new DTypeError("FP8Recipe.quantize(): x must be a tensor of a float dtype");
    }
    if (this.scaling !== "delayed" && this.scaling !== "current") {
      throw new ValueError(
        `FP8Recipe.quantize(): a '${this.scaling}' recipe scales blocks, not tensors; use ` +
          (this.scaling === "mx"
            ? "mxQuantize(x, recipe.mxFormat)"
            : this.scaling === "nvfp4"
            ? "nvfp4Quantize(x)"
            : "blockQuantize(x, { block })"),
      );
    }
    if (typeof opts?.key !== "string" || opts.key === "") {
      throw new ValueError("FP8Recipe.quantize(): opts.key must be a non-empty string");
    }
    const q = this.#quantize(x, opts.key, opts.backward ? this.backwardDtype : this.forwardDtype);
    return { data: q.t, scale: q.scale! };
  }

  #quantize(x: Tensor, key: string, fmt: DType): GemmOperand {
    const q = this.#slots === null
      ? quantizeCurrent(x, fmt, this.margin, this.amaxEpsilon, this.powerOfTwoScales)
      : this.#slots.quantize(x, key, fmt);
    if (this.#slots !== null) this.#pending = true;
    return { t: q.data, scale: q.scale };
  }

  /**
   * Commits the amaxes recorded since the last update (delayed scaling): one dispatch
   * writes each slot's amax into its history and computes its new scale. autocast calls it
   * when it enters a context with this recipe from outside any other context with it (the
   * next step's forward); call it yourself to mark a step elsewhere.
   */
  update(): void {
    this.#pending = false;
    this.#slots?.update();
  }

  /** The state (copies of the device buffers; no readback). */
  stateDict(): FP8StateDict {
    const slots = this.#slots ?? new ScalingSlots(this.amaxHistoryLen, this.margin);
    const sd = slots.save();
    if (slots !== this.#slots) slots.dispose();
    return {
      format: this.format,
      scaling: this.scaling,
      amaxHistoryLen: this.amaxHistoryLen,
      amaxComputeAlgo: this.amaxComputeAlgo,
      step: this.#step,
      margin: this.margin,
      ...sd,
    };
  }

  /**
   * Restores a state from `stateDict()` of a recipe with the same scaling and history length,
   * slot by slot in creation order: load it before the first forward of the same model
   * (slots created later take the saved values in order), or into the recipe that saved it.
   * Also restores the step count (NVFP4's stochastic rounding continues the same stream).
   * Copies the tensors (the caller keeps ownership); writes nothing back to the host. The
   * tensors must be f32, as `stateDict()` saves them, unless `cast` is true.
   */
  loadStateDict(sd: FP8StateDict, opts: { cast?: boolean } = {}): void {
    const op = "FP8Recipe.loadStateDict()";
    if (!sd || typeof sd !== "object") {
      throw new ValueError(`${op}: expects what stateDict() returns`);
    }
    if (sd.amaxHistoryLen !== this.amaxHistoryLen) {
      throw new ValueError(
        `${op}: the state has amaxHistoryLen ${sd.amaxHistoryLen}, this recipe ` +
          `${this.amaxHistoryLen}; create the recipe with the saved length`,
      );
    }
    if (typeof sd.scaling === "string" && sd.scaling !== this.scaling) {
      throw new ValueError(
        `${op}: the state is of a '${sd.scaling}' recipe, this one scales '${this.scaling}'; ` +
          `create the recipe with the saved scaling`,
      );
    }
    if (sd.amaxComputeAlgo !== undefined && sd.amaxComputeAlgo !== this.amaxComputeAlgo) {
      throw new ValueError(
        `${op}: the state reduces amax histories by '${sd.amaxComputeAlgo}', this recipe by ` +
          `'${this.amaxComputeAlgo}'; create the recipe with the saved amaxComputeAlgo`,
      );
    }
    const step = sd.step ?? 0;
    if (!Number.isSafeInteger(step) || step < 0) {
      throw new ValueError(`${op}: step must be a non-negative integer, got ${step}`);
    }
    if (this.#slots === null) {
      if (isTensor(sd.scale) && sd.scale.size > 0) {
        throw new ValueError(
          `${op}: the state holds ${sd.scale.size} per-tensor slots, but a '${this.scaling}' ` +
            `recipe keeps none`,
        );
      }
    } else {
      this.#slots.load(sd, op, opts.cast === true);
      if (sd.scale.size > 0) this.#pending = true;
    }
    this.#step = step;
  }

  /** Frees the state and forgets every slot (the recipe starts afresh on its next use). */
  dispose(): void {
    this.#slots?.dispose();
    this.#pending = false;
  }

  /**
   * Starts a step (autocast enters a context with this recipe from outside any other with
   * it): commits the amaxes recorded since the last update, and counts GEMMs without a
   * parameter afresh. @internal
   */
  beginStep(): void {
    if (this.#pending) this.update();
    this.#last = "";
    this.#since = 0;
    this.#step++;
    this.#calls = 0;
  }

  /**
   * The GEMM precision of an `fp8` context for one matmul of `a` and `b` (as the caller gave
   * them): each operand is quantised once, from the tensor itself (an f32 parameter, not a
   * lower-precision copy of it), as Transformer Engine does; the GEMM's result has the
   * recipe's `outDtype`. @internal
   */
  site(a: Tensor, b: Tensor): GemmSite {
    const param = (t: Tensor) => (t.node === null && t.requiresGrad ? t.id : null);
    const base = this.#site(param(a), param(b));
    return { ...base, outDtype: this.outDtype, inputs: (x, y) => [x, y] };
  }

  /** The site of a matmul whose operands are the parameters with these ids (or null). */
  #site(
    aParam: number | null,
    bParam: number | null,
  ): Pick<GemmSite, "perTensor" | "operand" | "grad"> {
    const p = bParam ?? aParam;
    let key: string;
    if (p !== null) {
      key = this.#last = `p${p}`;
      this.#since = 0;
    } else {
      key = `${this.#last}+${++this.#since}`;
    }
    if (this.scaling === "mx") {
      const mx = (t: Tensor, el: DType, rows: number, cols: number, along: "rows" | "cols") => {
        const q = along === "cols"
          ? mxQuantizeBlocks(t, el, t.size / cols, cols, 1)
          : mxQuantizeBlocks(t, el, t.size / (rows * cols), rows, cols);
        return { t: q.setPurpose("casts"), scale: null };
      };
      return {
        perTensor: false,
        operand: (_w, t, rows, cols, along) => mx(t, this.forwardDtype, rows, cols, along),
        grad: (g, rows, cols, along) => mx(g, this.backwardDtype, rows, cols, along),
      };
    }
    if (this.scaling === "rowwise" || this.scaling === "block" || this.scaling === "nvfp4") {
      const weight = { a: aParam !== null, b: bParam !== null };
      // a layer's input times its weight (x W): the backward GEMM that reduces the input and
      // the gradient over their rows (tokens) is the weight gradient's
      const wgrad = (along: string, rows: number) =>
        this.hadamard && this.scaling === "nvfp4" && aParam === null && bParam !== null &&
        along === "rows" && rows % 16 === 0;
      return {
        perTensor: false,
        operand: (w, t, rows, cols, along) =>
          this.#blocks(t, rows, cols, along, weight[w], false, !weight[w] && wgrad(along, rows)),
        grad: (g, rows, cols, along) =>
          this.#blocks(g, rows, cols, along, false, true, wgrad(along, rows)),
      };
    }
    return {
      perTensor: true,
      operand: (w, t) => this.#quantize(t, `${key}:${w}`, this.forwardDtype),
      grad: (g) => this.#quantize(g, `${key}:grad`, this.backwardDtype),
    };
  }

  /**
   * A GEMM operand stored as `[rows, cols]` matrices and reduced along `along`, quantised by
   * a block recipe into its dequantised values: rowwise per line along the reduction axis;
   * `block` and `nvfp4` 1-D tiles along it (128, 16), or square blocks for a weight.
   */
  #blocks(
    t: Tensor,
    rows: number,
    cols: number,
    along: "rows" | "cols",
    weight: boolean,
    grad: boolean,
    hadamard = false,
  ): GemmOperand {
    const nv = this.scaling === "nvfp4";
    const side = this.scaling === "rowwise"
      ? (along === "cols" ? cols : rows)
      : nv
      ? NVFP4_BLOCK
      : FP8_BLOCK;
    const [br, bc] = weight && this.scaling !== "rowwise"
      ? [side, side]
      : along === "cols"
      ? [1, side]
      : [side, 1];
    const spec: BlockSpec = nv
      ? {
        kind: "nvfp4",
        stochastic: grad,
        seed: grad ? this.gradSeed(this.#step, this.#calls++) : 0,
      }
      : {
        kind: "fp8",
        fmt: grad ? this.backwardDtype : this.forwardDtype,
        pow2: this.powerOfTwoScales,
        eps: this.amaxEpsilon,
      };
    const h = hadamard ? randomHadamard16(t, rows, cols) : t;
    const q = groupQuantize(h, blockMatrix(t.size, rows, cols, br, bc), spec, false);
    if (h !== t) h.dispose();
    return { t: q.values.setPurpose("casts"), scale: null };
  }

  /**
   * The seed of NVFP4's stochastic rounding for the `call`-th gradient quantised in step
   * `step` (elements then draw `randomU32(seed, index)`).
   *
   * @example
   * ```ts
   * import { FP8Recipe } from "../../mod.ts";
   * const r = new FP8Recipe({ scaling: "nvfp4", seed: 7 });
   * console.log(r.gradSeed(1, 0) === r.gradSeed(1, 0), r.gradSeed(1, 0) !== r.gradSeed(1, 1)); // true true
   * ```
   */
  gradSeed(step: number, call: number): number {
    return randomU32(randomU32(this.seed, step), call);
  }
}

/** The recipes by name (`fp8Recipe(name)`, `autocast({ dtype: "fp8", recipe: name })`). */
export type FP8RecipeName =
  | "delayed"
  | "most_recent"
  | "current"
  | "rowwise"
  | "block"
  | "mxfp8"
  | "nvfp4";

/** The options each named recipe stands for (its sources' defaults). */
const PRESETS: Readonly<Record<FP8RecipeName, FP8RecipeOptions>> = Object.freeze({
  delayed: { scaling: "delayed" },
  most_recent: { scaling: "delayed", amaxComputeAlgo: "most_recent" },
  current: { scaling: "current" },
  rowwise: { scaling: "rowwise" },
  block: { scaling: "block" },
  mxfp8: { scaling: "mx", format: "e4m3", mxFormat: "e4m3" },
  nvfp4: { scaling: "nvfp4" },
});

/** The recipe names `fp8Recipe` takes. */
export const FP8_RECIPES: readonly FP8RecipeName[] = Object.freeze(
  Object.keys(PRESETS) as FP8RecipeName[],
);

/**
 * A new recipe by name, with its source's defaults: `delayed` (TE DelayedScaling), `most_recent`
 * (the same with `amax_compute_algo="most_recent"`), `current` (Float8CurrentScaling),
 * `rowwise` (torchao ROWWISE), `block` (Float8BlockScaling), `mxfp8` (MXFP8BlockScaling:
 * e4m3 in both passes), `nvfp4` (NVFP4BlockScaling, simulated). `opts` override them.
 *
 * @example
 * ```ts
 * import { fp8Recipe } from "../mod.ts";
 * const r = fp8Recipe("block");
 * console.log(r.scaling, r.format, r.powerOfTwoScales, fp8Recipe("mxfp8").backwardDtype.name); // block e4m3 true e4m3
 * ```
 */
export function fp8Recipe(name: FP8RecipeName, opts: FP8RecipeOptions = {}): FP8Recipe {
  if (typeof name !== "string" || !Object.hasOwn(PRESETS, name)) {
    throw new ValueError(
      `fp8Recipe(): unknown recipe '${String(name)}'; use one of ${FP8_RECIPES.join(", ")}`,
    );
  }
  return new FP8Recipe({ ...PRESETS[name], ...opts });
}

const named = new Map<string, FP8Recipe>();

/**
 * The recipe `autocast({ dtype: "fp8", recipe: name })` uses for a name: one per name,
 * created on first use (its state lives across steps; save it with your checkpoints).
 *
 * @example
 * ```ts
 * import { namedFP8Recipe } from "../mod.ts";
 * console.log(namedFP8Recipe("nvfp4") === namedFP8Recipe("nvfp4"), namedFP8Recipe("nvfp4").scaling); // true nvfp4
 * ```
 */
export function namedFP8Recipe(name: FP8RecipeName): FP8Recipe {
  let r = named.get(name);
  if (r === undefined) {
    r = name === "delayed" ? defaultFP8Recipe() : fp8Recipe(name);
    named.set(name, r);
  }
  return r;
}

let defaultRecipe: FP8Recipe | null = null;

/**
 * The recipe `autocast({ dtype: "fp8" })` uses when given none (hybrid, delayed scaling,
 * history 1024, margin 0), created on first use; save its state with your checkpoints.
 *
 * @example
 * ```ts
 * import { defaultFP8Recipe } from "../../mod.ts";
 * const r = defaultFP8Recipe();
 * console.log(r.format, r.scaling, r.amaxHistoryLen, r === defaultFP8Recipe()); // hybrid delayed 1024 true
 * ```
 */
export function defaultFP8Recipe(): FP8Recipe {
  return defaultRecipe ??= new FP8Recipe();
}
