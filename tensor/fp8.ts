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
 * - `current`: the scale of this tensor's own amax (an extra pass over it): 1 when the amax
 *   is 0, Inf or NaN (as Transformer Engine's current scaling).
 * - `mx`: OCP MX block scaling (`mx.ts`) along each GEMM's reduction dimension, elements in
 *   `mxFormat` forward (e4m3 by default; e5m2, e3m2, e2m3, e2m1) and e5m2 (hybrid) for
 *   gradients; the backward GEMMs quantise their operands along their own reduction axes.
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

import { type DType, dtype, type DTypeLike, e4m3, e5m2, isFloat } from "../dtypes/mod.ts";
import { DTypeError, ValueError } from "../errors.ts";
import { isTensor, type Tensor } from "./tensor.ts";
import { mxElementDtype, mxQuantizeBlocks } from "./mx.ts";
import { quantizeCurrent, ScalingSlots } from "./scaling.ts";
import type { GemmOperand, GemmSite } from "./autocast.ts";

/** Which FP8 formats a recipe uses: e4m3 forward and e5m2 backward (`hybrid`), or e4m3 only. */
export type FP8Format = "hybrid" | "e4m3";

/** How a recipe scales: per tensor from an amax history or the current amax, or MX blocks. */
export type FP8Scaling = "delayed" | "current" | "mx";

/** Options of an FP8 recipe (Transformer Engine's names in camelCase, its defaults). */
export interface FP8RecipeOptions {
  /** `hybrid` (default): e4m3 forward, e5m2 gradients; `e4m3`: e4m3 for both. */
  format?: FP8Format;
  /** `delayed` (default), `current` or `mx`. */
  scaling?: FP8Scaling;
  /** Amaxes kept per slot for delayed scaling (default 1024), reduced by max. */
  amaxHistoryLen?: number;
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
 * import { FP8Recipe, tensor } from "../mod.ts";
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
 * import { FP8Recipe, tensor } from "../mod.ts";
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
 * import { autocast, FP8Recipe, Linear, tensor, tidy } from "../mod.ts";
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
  /** `delayed`, `current` or `mx`. */
  readonly scaling: FP8Scaling;
  /** Amaxes kept per slot (delayed scaling). */
  readonly amaxHistoryLen: number;
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

  /** A recipe with Transformer Engine's defaults (hybrid, delayed, history 1024, margin 0). */
  constructor(opts: FP8RecipeOptions = {}) {
    const known = ["format", "scaling", "amaxHistoryLen", "margin", "mxFormat", "outDtype"];
    for (const k of Object.keys(opts)) {
      if (!known.includes(k)) {
        throw new ValueError(`FP8Recipe: unknown option '${k}'; it takes ${known.join(", ")}`);
      }
    }
    const { format = "hybrid", scaling = "delayed", amaxHistoryLen = 1024, margin = 0 } = opts;
    if (format !== "hybrid" && format !== "e4m3") {
      throw new ValueError(`FP8Recipe: format must be 'hybrid' or 'e4m3', got '${format}'`);
    }
    if (scaling !== "delayed" && scaling !== "current" && scaling !== "mx") {
      throw new ValueError(
        `FP8Recipe: scaling must be 'delayed', 'current' or 'mx', got '${scaling}'`,
      );
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
    this.margin = margin;
    this.mxFormat = mxElementDtype(opts.mxFormat ?? "e4m3");
    this.outDtype = out;
    this.#slots = scaling === "delayed" ? new ScalingSlots(amaxHistoryLen, margin) : null;
  }

  /** The dtype of forward GEMM inputs (e4m3; the MX element format under `mx`). */
  get forwardDtype(): DType {
    return this.scaling === "mx" ? this.mxFormat : e4m3;
  }

  /** The dtype of gradients in backward GEMMs (e5m2 for `hybrid`, else the forward one). */
  get backwardDtype(): DType {
    return this.format === "hybrid" ? e5m2 : this.forwardDtype;
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
    if (this.scaling === "mx") {
      throw new ValueError(
        "FP8Recipe.quantize(): an 'mx' recipe scales blocks, not tensors; use " +
          "mxQuantize(x, recipe.mxFormat)",
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
      ? quantizeCurrent(x, fmt, this.margin)
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
      margin: this.margin,
      ...sd,
    };
  }

  /**
   * Restores a state from `stateDict()` of a recipe with the same history length, slot by
   * slot in creation order: load it before the first forward of the same model (slots
   * created later take the saved values in order), or into the recipe that saved it.
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
    if (this.#slots === null) {
      throw new ValueError(`${op}: a '${this.scaling}' recipe keeps no per-tensor state`);
    }
    this.#slots.load(sd, op, opts.cast === true);
    if (sd.scale.size > 0) this.#pending = true;
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
  }

  /**
   * The GEMM hook of autocast for one matmul whose operands multiply the parameters with
   * ids `aParam` / `bParam` (null: not a parameter). @internal
   */
  gemmSite(aParam: number | null, bParam: number | null): GemmSite {
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
    return {
      perTensor: true,
      operand: (w, t) => this.#quantize(t, `${key}:${w}`, this.forwardDtype),
      grad: (g) => this.#quantize(g, `${key}:grad`, this.backwardDtype),
    };
  }
}

let defaultRecipe: FP8Recipe | null = null;

/**
 * The recipe `autocast({ dtype: "fp8" })` uses when given none (hybrid, delayed scaling,
 * history 1024, margin 0), created on first use; save its state with your checkpoints.
 *
 * @example
 * ```ts
 * import { defaultFP8Recipe } from "../mod.ts";
 * const r = defaultFP8Recipe();
 * console.log(r.format, r.scaling, r.amaxHistoryLen, r === defaultFP8Recipe()); // hybrid delayed 1024 true
 * ```
 */
export function defaultFP8Recipe(): FP8Recipe {
  return defaultRecipe ??= new FP8Recipe();
}
