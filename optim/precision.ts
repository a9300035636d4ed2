/**
 * Precision strategies of the optimizers: which dtype the parameters, the gradients and
 * each optimizer state are stored in, extra per-element buffers, and (for strategies whose
 * arithmetic differs from "compute in f32, round each stored value once") the WGSL of the
 * update itself. DESIGN.md section 4's table, bytes per parameter with AdamW:
 *
 * | name            | params | grads | m    | v                | extra              | bytes |
 * |-----------------|--------|-------|------|------------------|--------------------|-------|
 * | `fp32`          | f32    | f32   | f32  | f32              |                    | 16    |
 * | `bf16`          | bf16   | bf16  | bf16 | bf16             | (pure bf16)        | 8     |
 * | `bf16-sr`       | bf16   | bf16  | bf16 | bf16             | SR of the weights  | 8     |
 * | `amp-bf16`      | f32    | f32   | f32  | f32              | bf16 casts / fwd   | 16    |
 * | `amp-f16`       | f32    | f32   | f32  | f32              | f16 casts, scaler  | 16    |
 * | `collage-light` | bf16   | bf16  | bf16 | bf16             | `paramLo` bf16     | 10    |
 * | `collage-plus`  | bf16   | bf16  | bf16 | bf16 + `expAvgSqLo` | `paramLo` bf16  | 12    |
 * | `fp8`           | f32    | f32   | f32  | f32              | e4m3/e5m2 GEMM inputs, scales | 16 |
 * | `fp8-<recipe>`  | f32    | f32   | f32  | f32              | as `fp8`, the named recipe's scales | 16 |
 * | `msamp-o2`      | f16    | f16   | e4m3 | f16              | a scale per tensor of m and v; fp8 GEMMs | 7 |
 * | `eXmY` (any)    | eXmY   | eXmY  | eXmY | eXmY             | (pure simulated format) | 4 x its lane bytes |
 *
 * `amp-*` and `fp8` store what `fp32` stores (f32 master weights); the forward runs under
 * `autocast(strategy.autocastOptions)` (`{ dtype: "bf16" }`, `{ dtype: "f16" }`,
 * `{ dtype: "fp8" }`), whose casts of the weights are transient and counted as "casts" in
 * `memory()`, and `amp-f16` wants a `GradScaler` (`strategy.gradScaler`). `fp8` quantises
 * the GEMM inputs with an FP8 recipe (e4m3 forward, e5m2 gradients, delayed scaling; the
 * recipe's amax histories and scales are its extra state, outside the optimizer).
 * `fp8-<recipe>` (`fp8-current`, `fp8-block`, `fp8-nvfp4`, ...: one for each name of
 * `FP8_RECIPES` but `delayed`, which is `fp8`) is `fp8` with that recipe: its
 * `autocastOptions` are `{ dtype: "fp8", recipe: "<recipe>" }` (`fp8Recipe(name)` makes a
 * run's own instance; `autocast` alone takes `namedFP8Recipe(name)`), storage as `fp8`. The
 * Collage rows replace the update bodies (`collage.ts`). `bf16-sr` keeps the rules' own
 * bodies and rounds the stored weight stochastically (`stochastic`; Zamirai et al. 2020,
 * arXiv 2010.06192): its random stream's seed and counter per parameter are in the state
 * dict, so a resumed run draws the same bits. `msamp-o2` is MS-AMP's O2 level (`msamp.ts`): m
 * and v `scaled` per tensor, MS-AMP's two-stage AdamW body; SGD is refused (no body). Any float format name (`e8m5`,
 * `e5m6`, `f16`) is a pure strategy in that format: weights, gradients and optimizer states
 * stored in it, each rounded once (RNE) per update, for simulated formats beyond the GEMM
 * inputs that autocast covers. `applyPrecision(model, name)` puts a model's parameters into
 * the strategy's dtype.
 *
 * To add a strategy, add a row to `STRATEGIES` below: the dtypes; `extraStates`, buffers
 * the optimizer allocates, zero-initialises, passes to the kernel and saves in its state
 * dict (Collage's `paramLo`, `expAvgSqLo`); `updates.adamw` / `updates.sgd`, replacement
 * kernel bodies (see `UpdateBodyContext`), keyed by the update rule's name (`rule.ts`): a
 * strategy with bodies or extra states and no body for an optimizer refuses that optimizer.
 *
 * @module
 */

import { bfloat16, type DType, dtype, e4m3, float16, float32 } from "../dtypes/mod.ts";
import { ValueError } from "../errors.ts";
import {
  type AutocastOptions,
  FP8_RECIPES,
  type FP8RecipeName,
  type Tensor,
} from "../tensor/mod.ts";
import { noGrad } from "../autograd/mod.ts";
import { Module, Parameter } from "../nn/module.ts";
import { collageAdamWBody, collageSGDBody } from "./collage.ts";
import { msampAdamWBody } from "./msamp.ts";
import type { StateSpec, UpdateBody } from "./rule.ts";

export type { StateSpec, UpdateBody, UpdateBodyContext } from "./rule.ts";

/**
 * A precision strategy: the dtypes of parameters, gradients and optimizer states, extra
 * per-element buffers, and optional replacement kernel bodies.
 *
 * @example
 * ```ts
 * import { precisionStrategy } from "../mod.ts";
 * const s = precisionStrategy("bf16");
 * console.log(s.param.name, s.grad.name, s.stateDtype("expAvgSq").name); // bf16 bf16 bf16
 * ```
 */
export interface PrecisionStrategy {
  /** The name users pass as `precision`. */
  readonly name: string;
  /** One line for docs and errors. */
  readonly description: string;
  /** Dtype the model's parameters must have. */
  readonly param: DType;
  /** Dtype gradients are read in (a gradient of another dtype is cast first, one dispatch). */
  readonly grad: DType;
  /** Dtype of an optimizer state by name (`expAvg`, `expAvgSq`, `maxExpAvgSq`, `momentumBuffer`). */
  stateDtype(state: string): DType;
  /** Per-element buffers kept besides the optimizer's own states (zero-initialised). */
  readonly extraStates: readonly StateSpec[];
  /**
   * Replacement update bodies by update rule name (`adamw`, `sgd`); empty: every rule's own
   * f32 body. A strategy with bodies must have one for every optimizer it is used with (an
   * error when the optimizer is built, never a silent fallback to the f32 body).
   */
  readonly updates: Readonly<Record<string, UpdateBody>>;
  /**
   * The dtype the forward's low-precision ops run in under `autocast` (amp strategies, and
   * `fp8`'s GEMM outputs), or null (no autocast).
   */
  readonly autocast: DType | null;
  /**
   * What to pass to `autocast()` for the forward (`{ dtype: "bf16" }`, `{ dtype: "fp8" }`),
   * or null (no autocast).
   */
  readonly autocastOptions: Readonly<AutocastOptions> | null;
  /** Whether the strategy wants a `GradScaler` (f16 gradients underflow without one). */
  readonly gradScaler: boolean;
  /**
   * The low-precision dtype the strategy computes in (the diagnostics count gradient
   * underflow and overflow against it): bf16, f16, or f32 for `fp32`.
   */
  readonly computeDtype: DType;
  /**
   * WGSL of the effective update of the stored weight for the diagnostics, from `x` (old)
   * and `y` (new); null: `y.param - x.param`.
   */
  readonly effective: string | null;
  /**
   * Buffers (`param`, or a state's name) whose `q_<name>` rounds stochastically instead of to
   * nearest (`bf16-sr`): the f32 value plus uniform random bits below the stored mantissa,
   * truncated, so E[q(v)] = v. The bits come from the optimizer's counter-based stream
   * (`ulp_rand`, keyed by the parameter's seed, its update counter and the element), saved
   * in the state dict as `rngSeed` and `rngCounter`. Only dtypes with f32's 8-bit exponent
   * (bf16, `e8mY`). Empty: every rounding is RNE.
   */
  readonly stochastic: readonly string[];
  /**
   * States stored with a per-tensor power-of-two scale (MS-AMP's `ScalingTensor`): the
   * stored code is `q(x * s)` and the body reads `x.<name>` = stored / s; at each write
   * `s = 2^floor(log2(fmax / amax))` of the values written (fmax the format's largest finite
   * value; 1 when amax is 0 or not finite), computed just in time: the update runs twice
   * per tensor, first for the amax, then to store (`_update_kernel.ts`). Each parameter keeps
   * the scales as state `<name>Scale` (f32, one element). Empty: no scaled state.
   */
  readonly scaled: readonly string[];
}

function row(
  name: string,
  description: string,
  d: DType,
  extra: Partial<PrecisionStrategy> = {},
): PrecisionStrategy {
  const autocast = extra.autocast ?? null;
  return Object.freeze({
    name,
    description,
    param: d,
    grad: d,
    stateDtype: () => d,
    extraStates: [],
    updates: {},
    autocast,
    autocastOptions: autocast === null ? null : Object.freeze({ dtype: autocast.name }),
    gradScaler: false,
    computeDtype: d,
    effective: null,
    stochastic: [],
    scaled: [],
    ...extra,
  });
}

const MCF_EFFECTIVE = "(y.param - x.param) + (y.paramLo - x.paramLo)";

/** What each FP8 recipe other than `delayed` (the `fp8` row) scales, for the descriptions. */
const RECIPE_WORDS: Readonly<Record<Exclude<FP8RecipeName, "delayed">, string>> = {
  most_recent: "delayed scaling from the newest amax instead of the history's max (Transformer " +
    "Engine's amax_compute_algo 'most_recent'), e4m3 forward, e5m2 backward",
  current: "current scaling: each tensor's own amax (Transformer Engine's " +
    "Float8CurrentScaling), e4m3 forward, e5m2 backward",
  rowwise: "a power-of-two scale per row of A and column of B (torchao's ROWWISE), e4m3 " +
    "forward, e5m2 backward",
  block: "1x128 tiles and 128x128 weight blocks with power-of-two scales, e4m3 in both passes " +
    "(Transformer Engine's Float8BlockScaling, DeepSeek-V3)",
  mxfp8: "an E8M0 scale per 32 values, e4m3 in both passes (Transformer Engine's " +
    "MXFP8BlockScaling)",
  nvfp4: "simulated NVFP4: E2M1 values, an E4M3 scale per 16 and an f32 one per tensor, " +
    "gradients rounded stochastically (Transformer Engine's NVFP4BlockScaling)",
};

/**
 * `fp8-<recipe>` for each recipe of `FP8_RECIPES` but `delayed` (which `fp8` is): storage as
 * `fp8` (f32 master weights, gradients and states), the forward under
 * `autocast({ dtype: "fp8", recipe })`. A recipe added to `FP8_RECIPES` needs its words in
 * `RECIPE_WORDS` (a type error otherwise).
 */
function fp8RecipeRows(): Record<string, PrecisionStrategy> {
  const rows: Record<string, PrecisionStrategy> = {};
  for (const recipe of FP8_RECIPES) {
    if (recipe === "delayed") continue;
    const name = `fp8-${recipe}`;
    const words = RECIPE_WORDS[recipe];
    rows[name] = row(
      name,
      `FP8 training as 'fp8' with the '${recipe}' recipe, ${words}; f32 master weights, ` +
        `gradients and states; the forward under autocast({ dtype: 'fp8', recipe: '${recipe}' })`,
      float32,
      {
        autocast: bfloat16,
        autocastOptions: Object.freeze({ dtype: "fp8", recipe }),
        computeDtype: bfloat16,
      },
    );
  }
  return rows;
}

/** The registered strategies, by name. Add a row here to add a strategy. */
const STRATEGIES: Record<string, PrecisionStrategy> = {
  fp32: row("fp32", "f32 parameters, gradients and optimizer states", float32),
  bf16: row(
    "bf16",
    "pure bf16: parameters, gradients and states in bf16, arithmetic in f32, each stored value " +
      "rounded once (RNE)",
    bfloat16,
  ),
  "bf16-sr": row(
    "bf16-sr",
    "pure bf16 as 'bf16', the weight update rounded stochastically (seeded, counter-based, " +
      "unbiased: E[w_new] = w + u), m and v rounded once (RNE)",
    bfloat16,
    { stochastic: ["param"] },
  ),
  "amp-bf16": row(
    "amp-bf16",
    "mixed precision: f32 master weights, gradients and states; the forward runs under " +
      "autocast({ dtype: 'bf16' }), which casts the weights per forward",
    float32,
    { autocast: bfloat16, computeDtype: bfloat16 },
  ),
  "amp-f16": row(
    "amp-f16",
    "mixed precision: f32 master weights, gradients and states; the forward runs under " +
      "autocast({ dtype: 'f16' }) and a GradScaler scales the loss",
    float32,
    { autocast: float16, computeDtype: float16, gradScaler: true },
  ),
  fp8: row(
    "fp8",
    "FP8 training: f32 master weights, gradients and states as amp-bf16; the forward runs " +
      "under autocast({ dtype: 'fp8' }): GEMM inputs in e4m3 forward and e5m2 backward with " +
      "delayed scaling, outputs and other low-precision ops in bf16",
    float32,
    {
      autocast: bfloat16,
      autocastOptions: Object.freeze({ dtype: "fp8" }),
      computeDtype: bfloat16,
    },
  ),
  "msamp-o2": row(
    "msamp-o2",
    "MS-AMP O2: f16 master weights and gradients, AdamW's m in e4m3 and v in f16, each " +
      "with a per-tensor power-of-two scale; the forward under autocast({ dtype: 'fp8' })",
    float16,
    {
      stateDtype: (name: string) => (name === "expAvg" ? e4m3 : float16),
      scaled: ["expAvg", "expAvgSq"],
      updates: { adamw: msampAdamWBody },
      autocast: bfloat16,
      autocastOptions: Object.freeze({ dtype: "fp8" }),
      computeDtype: float16,
    },
  ),
  "collage-light": row(
    "collage-light",
    "Collage light: bf16 weights as hi + lo (multi-component floats), bf16 gradients, m and v",
    bfloat16,
    {
      extraStates: [{ name: "paramLo", dtype: bfloat16 }],
      updates: {
        adamw: collageAdamWBody("light"),
        sgd: ({ flags }) => collageSGDBody(flags),
      },
      effective: MCF_EFFECTIVE,
    },
  ),
  "collage-plus": row(
    "collage-plus",
    "Collage plus: as collage-light, and v kept as hi + lo too",
    bfloat16,
    {
      extraStates: [
        { name: "paramLo", dtype: bfloat16 },
        { name: "expAvgSqLo", dtype: bfloat16, optimizers: ["adamw"] },
      ],
      updates: {
        adamw: collageAdamWBody("plus"),
        sgd: ({ flags }) => collageSGDBody(flags),
      },
      effective: MCF_EFFECTIVE,
    },
  ),
  ...fp8RecipeRows(),
};

/**
 * The names of the registered precision strategies (any float format name, such as `e8m5`,
 * is accepted too: a pure strategy in that format).
 *
 * @example
 * ```ts
 * import { precisionNames } from "../mod.ts";
 * console.log(precisionNames());
 * // ["fp32", "bf16", "bf16-sr", "amp-bf16", "amp-f16", "fp8", "msamp-o2", "collage-light",
 * //  "collage-plus", "fp8-most_recent", "fp8-current", "fp8-rowwise", "fp8-block", "fp8-mxfp8",
 * //  "fp8-nvfp4"]
 * ```
 */
export function precisionNames(): string[] {
  return Object.keys(STRATEGIES);
}

/** Pure strategies in simulated formats, made on first request. */
const SIMULATED = new Map<string, PrecisionStrategy>();

/** The pure strategy of the float format `name` (`e8m5`, `f16`), or undefined. */
function simulated(name: string): PrecisionStrategy | undefined {
  let d: DType;
  try {
    d = dtype(name);
  } catch {
    return undefined;
  }
  if (d.kind !== "float") return undefined;
  const known = d.name === "f32" ? "fp32" : d.name; // e8m23 and f32 are fp32, e8m7 is bf16
  if (Object.hasOwn(STRATEGIES, known)) return STRATEGIES[known];
  let s = SIMULATED.get(d.name);
  if (s === undefined) {
    s = row(
      d.name,
      `pure ${d.name}: parameters, gradients and states stored in ${d.name}, arithmetic in ` +
        `f32, each stored value rounded once (RNE)`,
      d,
    );
    SIMULATED.set(d.name, s);
  }
  return s;
}

/**
 * The strategy named `name`: a registered one, or a pure strategy in a float format named
 * by its dtype (`e8m5`); a ValueError that lists the supported names otherwise.
 *
 * @example
 * ```ts
 * import { precisionStrategy } from "../mod.ts";
 * console.log(precisionStrategy("fp32").stateDtype("expAvg").name); // f32
 * console.log(precisionStrategy("fp8").autocastOptions); // { dtype: "fp8" }
 * console.log(precisionStrategy("fp8-block").autocastOptions); // { dtype: "fp8", recipe: "block" }
 * console.log(precisionStrategy("e8m5").param.name, precisionStrategy("e8m5").grad.name); // e8m5 e8m5
 * try { precisionStrategy("fp64"); } catch (e) { console.log((e as Error).name); } // ValueError
 * ```
 */
export function precisionStrategy(name: string, op = "optimizer"): PrecisionStrategy {
  const s = Object.hasOwn(STRATEGIES, name)
    ? STRATEGIES[name]
    : typeof name === "string"
    ? simulated(name)
    : undefined;
  if (s === undefined) {
    throw new ValueError(
      `${op}: unknown precision '${String(name)}'; supported: ${
        precisionNames().map((n) => `'${n}'`).join(", ")
      }, or a float format such as 'e8m5' (a pure strategy in that format)`,
    );
  }
  return s;
}

/**
 * Puts a model's parameters into the storage dtype of strategy `name` (`precision` of the
 * optimizers): each parameter whose dtype differs is replaced by a new parameter holding
 * its values cast once (RNE), and the module fields that held it (tied weights included)
 * point to the new one; the old tensor and its gradient are freed. Call it before creating
 * the optimizer (which holds the parameters it was given). Returns the model.
 *
 * @example
 * ```ts
 * import { AdamW, applyPrecision, Linear } from "../mod.ts";
 * const model = applyPrecision(new Linear(4, 2), "collage-light");
 * console.log(model.weight.dtype); // "bf16"
 * const opt = new AdamW(model.parameters(), { lr: 1e-3, precision: "collage-light" });
 * console.log(opt.precision.extraStates.map((s) => s.name)); // ["paramLo"]
 * ```
 */
export function applyPrecision<M extends Module>(model: M, name: string): M {
  const s = precisionStrategy(name, "applyPrecision()");
  if (!(model instanceof Module)) {
    throw new ValueError("applyPrecision(): expects a Module (a layer or a model)");
  }
  const swapped = new Map<Tensor, Tensor>();
  for (const [, p] of model.namedParameters()) {
    if (p.dt === s.param) continue;
    const q = noGrad(() => p.cast(s.param));
    swapped.set(p, Parameter(q));
  }
  if (swapped.size === 0) return model;
  for (const [, m] of model.namedModules()) {
    const fields = m as unknown as Record<string, unknown>;
    for (const [k, v] of Object.entries(fields)) {
      if (Array.isArray(v)) {
        v.forEach((x, i) => {
          const n = swapped.get(x as Tensor);
          if (n) v[i] = n;
        });
      } else {
        const n = swapped.get(v as Tensor);
        if (n) fields[k] = n;
      }
    }
  }
  for (const old of swapped.keys()) {
    old.zeroGrad();
    old.dispose();
  }
  return model;
}
