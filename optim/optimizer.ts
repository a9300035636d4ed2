/**
 * The optimizers: parameter groups (each with its own hyperparameters and `lr`, the value
 * learning-rate schedules change), validation, `zeroGrad`, `step` and state dicts in
 * PyTorch's shape: `{ state: { [paramIndex]: { step, expAvg, ... } }, paramGroups: [...] }`,
 * for any update rule (`rule.ts`: an optimizer is data; `AdamW` and `SGD` are rules).
 *
 * `step()` updates each parameter tensor in place, one kernel per tensor (`_update_kernel.ts`;
 * per window of a tensor larger than one storage binding), with no staging copy.
 * Optimizer state lives on the GPU, per parameter, in tensors counted as "optimizer" in
 * `memory()` and never freed by `tidy`; `dispose()` frees it. `step()` never waits for the GPU.
 *
 * @module
 */

import { type DType, dtype as toDType, type DTypeLike, randomU32 } from "../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../errors.ts";
import { fmtShape, isTensor, keep, type Tensor, zeros } from "../tensor/mod.ts";
import { DIAG_COUNTERS } from "./_diagnostics.ts";
import { GroupState } from "./_group_state.ts";
import { checkStrategy, resolveProgram, type UpdateProgram } from "./_update_kernel.ts";
import { type PrecisionStrategy, precisionStrategy } from "./precision.ts";
import { hostStepMath, type UpdateRule } from "./rule.ts";

/**
 * The hyperparameters every parameter group has. Optimizers extend it (`AdamWParamGroup`,
 * `SGDParamGroup`); change `lr` (or any other hyperparameter) between steps freely.
 *
 * @example
 * ```ts
 * import { AdamW, zeros } from "../mod.ts";
 * const opt = new AdamW([zeros([3])], { lr: 0.1 });
 * opt.paramGroups[0].lr = 0.05;
 * console.log(opt.paramGroups[0].lr); // 0.05
 * ```
 */
export interface ParamGroup {
  /** The group's parameters (fixed at construction). */
  readonly params: readonly Tensor[];
  /** Learning rate; what the schedules set. */
  lr: number;
  /** The learning rate a scheduler starts from (set when the first scheduler is attached). */
  initialLr?: number;
}

/**
 * A parameter group as passed to a constructor: its parameters and optional overrides of
 * the optimizer's defaults.
 *
 * @example
 * ```ts
 * import { AdamW, type AdamWOptions, type ParamGroupInput, zeros } from "../mod.ts";
 * const g: ParamGroupInput<AdamWOptions> = { params: [zeros([3])], lr: 0.1 };
 * console.log(new AdamW([g]).paramGroups[0].lr); // 0.1
 * ```
 */
export type ParamGroupInput<O> = { params: readonly Tensor[] } & O;

/**
 * What optimizers accept as parameters: tensors (one group) or parameter groups.
 *
 * @example
 * ```ts
 * import { type Params, SGD, type SGDOptions, zeros } from "../mod.ts";
 * const ps: Params<SGDOptions> = [zeros([2]), zeros([3])];
 * console.log(new SGD(ps).paramGroups[0].params.length); // 2
 * ```
 */
export type Params<O> = readonly Tensor[] | readonly ParamGroupInput<O>[];

/**
 * One parameter's saved state: tensors (GPU copies the caller owns) and numbers (`step`).
 *
 * @example
 * ```ts
 * import { SGD, tensor } from "../mod.ts";
 * const w = tensor([1]);
 * const opt = new SGD([w], { momentum: 0.9 });
 * w.grad = tensor([2]);
 * opt.step();
 * console.log(Object.keys(opt.stateDict().state[0])); // ["momentumBuffer"]
 * ```
 */
export type ParamState = Record<string, Tensor | number | null>;

/**
 * An optimizer's state dict, as PyTorch's: per-parameter state keyed by the parameter's
 * index (counted over the groups in order; only parameters that were updated), and each
 * group's hyperparameters with the indices of its parameters.
 *
 * @example
 * ```ts
 * import { AdamW, tensor } from "../mod.ts";
 * const w = tensor([1, 2]);
 * const opt = new AdamW([w]);
 * w.grad = tensor([0.5, -0.5]);
 * opt.step();
 * const sd = opt.stateDict();
 * console.log(sd.state[0].step, sd.paramGroups[0].params); // 1 [0]
 * ```
 */
export interface OptimizerStateDict {
  /** Per-parameter state by parameter index. */
  state: Record<number, ParamState>;
  /** Hyperparameters of each group, with `params`: the indices of its parameters. */
  paramGroups: Record<string, unknown>[];
}

/**
 * Options of `Optimizer.step()`.
 *
 * @example
 * ```ts
 * import { AdamW, type StepOptions, tensor } from "../mod.ts";
 * const w = tensor([1]);
 * w.grad = tensor([1]);
 * const opts: StepOptions = { diagnostics: true };
 * new AdamW([w]).step(opts);
 * ```
 */
export interface StepOptions {
  /** Called first; its result is returned. */
  closure?: () => Tensor;
  /**
   * A u32 tensor (a GradScaler's `found_inf`): when its first word is non-zero, the step
   * changes nothing on the device (parameters, states, step counts).
   */
  foundInf?: Tensor | null;
  /**
   * Accumulate diagnostics during this step (read them with `diagnostics()`). `castDtype`:
   * the dtype gradients are checked against for underflow and overflow (default: the
   * strategy's `computeDtype`).
   */
  diagnostics?: boolean | { castDtype?: DTypeLike };
}

/**
 * What low precision lost in one optimizer step (DESIGN.md section 4, diagnostics). u is the
 * intended update of a stored weight (in f32, before rounding), e the effective one (new
 * stored value minus old; for a Collage weight, of hi + lo).
 *
 * @example
 * ```ts
 * import type { Diagnostics } from "../mod.ts";
 * const lossless = (d: Diagnostics) => d.lost === 0 && Math.abs(d.edqRatio - 1) < 1e-3;
 * console.log(typeof lossless); // "function"
 * ```
 */
export interface Diagnostics {
  /** Parameter elements updated (with a gradient). */
  elements: number;
  /** Elements whose intended update u was non-zero. */
  updated: number;
  /** Of those, elements whose stored value did not change (value + update == value). */
  lost: number;
  /** lost / updated: the imprecision fraction. */
  imprecision: number;
  /** <e, u>, summed in f32 on the device. */
  dotEU: number;
  /** ||u||^2, summed in f32 on the device. */
  normU2: number;
  /** Effective descent quality <e, u> / ||u||. */
  edq: number;
  /** <e, u> / ||u||^2: 1 when nothing is lost. */
  edqRatio: number;
  /** Gradient elements that are Inf or NaN. */
  gradNonFinite: number;
  /** Gradient elements that are non-zero but zero when cast to `castDtype`. */
  gradUnderflow: number;
  /** Finite gradient elements that are Inf or NaN when cast to `castDtype`. */
  gradOverflow: number;
  /** The dtype of the underflow and overflow counts. */
  castDtype: string;
}

/** Checks that `v` is a finite number within a range; a ValueError naming the option. @internal */
export function checkRange(
  op: string,
  name: string,
  v: unknown,
  lo: number,
  hi: number,
  opts: { loOpen?: boolean; hiOpen?: boolean } = {},
): void {
  const ok = typeof v === "number" && !Number.isNaN(v) &&
    (opts.loOpen ? v > lo : v >= lo) && (opts.hiOpen ? v < hi : v <= hi) &&
    (Number.isFinite(v) || hi === Infinity && v === Infinity && !opts.hiOpen);
  if (!ok) {
    const range = `${opts.loOpen ? "(" : "["}${lo}, ${hi === Infinity ? "inf" : hi}${
      opts.hiOpen || hi === Infinity ? ")" : "]"
    }`;
    throw new ValueError(`${op}: ${name} must be a number in ${range}, got ${String(v)}`);
  }
}

/** Checks that every key of `given` is a known option; a ValueError naming the stray one. @internal */
export function checkOptionNames(op: string, given: object, known: readonly string[]): void {
  for (const key of Object.keys(given)) {
    if (!known.includes(key)) {
      throw new ValueError(`${op}: unknown option '${key}'; it takes ${known.join(", ")}`);
    }
  }
}

/**
 * A rule's constructor options resolved: `opts` less `precision` and `seed`, checked against
 * the option names of `defaults` (a ValueError naming a stray one), laid over a copy of
 * `defaults` (undefined values skipped, arrays copied) and validated by `rule.validate` under
 * the rule's label; returns the arguments after `params` of the `Optimizer` constructor.
 * `SGD` and `AdamW` build their base with it. @internal
 *
 * @example
 * ```ts
 * import { SGD_RULE } from "./sgd.ts";
 * import { ruleOptions } from "./optimizer.ts";
 * const base = { lr: 1e-3, momentum: 0, dampening: 0, weightDecay: 0, nesterov: false, maximize: false };
 * const [defaults, precision, seed] = ruleOptions(SGD_RULE, base, { lr: 0.1, precision: "bf16" });
 * console.log(defaults.lr, precision, seed); // 0.1 bf16 undefined
 * ```
 */
export function ruleOptions<G extends ParamGroup, O extends object>(
  rule: UpdateRule<G>,
  defaults: Omit<G, "params">,
  opts: O & { precision?: string; seed?: number },
): [Omit<G, "params">, string | undefined, number | undefined] {
  const { precision, seed, ...rest } = opts;
  checkOptionNames(rule.label, rest, [...Object.keys(defaults), "precision", "seed"]);
  const merged = copyArrays(defaults) as Record<string, unknown>;
  for (const [k, v] of Object.entries(rest)) {
    if (v !== undefined) merged[k] = Array.isArray(v) ? [...v] : v;
  }
  rule.validate(merged as unknown as G, rule.label, null);
  return [merged as unknown as Omit<G, "params">, precision, seed];
}

/** Checks a boolean option; a ValueError naming it. @internal */
export function checkBool(op: string, name: string, v: unknown): void {
  if (typeof v !== "boolean") {
    throw new ValueError(`${op}: ${name} must be true or false, got ${String(v)}`);
  }
}

/**
 * An optimizer running an update rule (`UpdateRule`, `rule.ts`): the base of `SGD` and
 * `AdamW`, which only give their rule, options and defaults. The rule declares its states,
 * named hyperparameters, per-step values and WGSL body; this class holds the groups, checks
 * that the precision strategy has a body for the rule (at construction), packs the
 * hyperparameters by name and runs the update kernels.
 *
 * @example
 * ```ts
 * import { AdamW, Optimizer, zeros } from "../mod.ts";
 * const opt = new AdamW([zeros([2])]);
 * console.log(opt instanceof Optimizer, opt.paramGroups.length, opt.rule.name); // true 1 adamw
 * ```
 */
export class Optimizer<G extends ParamGroup = ParamGroup, O = Record<string, unknown>> {
  /** The parameter groups, in order; each group's hyperparameters may be changed. */
  readonly paramGroups: G[] = [];
  /** The precision strategy (dtypes of params, grads and states). */
  readonly precision: PrecisionStrategy;
  /** The defaults a new group's missing hyperparameters are taken from. */
  readonly defaults: Readonly<Omit<G, "params">>;
  /** The optimizer's name, for errors (the rule's label). */
  readonly name: string;
  /** The update rule: states, hyperparameters, per-step values and body. */
  readonly rule: UpdateRule<G>;
  /**
   * The seed of the random streams of strategies that round stochastically (`bf16-sr`): the
   * parameter with index k (counted over the groups in order) draws from the stream seeded
   * `randomU32(seed, k)`, saved per parameter in the state dict as `rngSeed` with its
   * counter `rngCounter`.
   */
  readonly seed: number;
  #groups: GroupState[] = [];
  #programs = new Map<string, UpdateProgram>();
  #device = false;
  #diagDtype: DType | null = null;

  /**
   * An optimizer of `rule` over `params` (tensors or groups), with `defaults` for the missing
   * hyperparameters, and resolves `precision` (inferred from the parameters' dtype when
   * undefined: all f32 gives "fp32", all bf16 gives "bf16"). A precision strategy that
   * replaces update bodies but has none for `rule` is a ValueError here. `seed` (an integer
   * in [0, 2^32), default 0) seeds the random streams of stochastic rounding.
   */
  constructor(
    rule: UpdateRule<G>,
    params: Params<O>,
    defaults: Omit<G, "params">,
    precision?: string,
    seed = 0,
  ) {
    const name = rule.label;
    this.name = name;
    this.rule = rule;
    checkSeed(name, seed);
    this.seed = seed;
    const list = checkParamList(name, params);
    const groups: readonly ParamGroupInput<O>[] = isTensor(list[0])
      ? [{ params: list as readonly Tensor[] } as ParamGroupInput<O>]
      : (list as readonly ParamGroupInput<O>[]);
    const all = groups.flatMap((g, k) => {
      if (g === null || typeof g !== "object" || !Array.isArray(g.params)) {
        throw new ValueError(
          `${name}: params[${k}] must be a Tensor or a parameter group { params: Tensor[], ... }`,
        );
      }
      return g.params;
    });
    this.precision = precisionStrategy(precision ?? inferPrecision(name, all), name);
    checkStrategy(rule, this.precision);
    this.defaults = defaults;
    for (const g of groups) this.addParamGroup(g);
  }

  /** Validates a group's hyperparameters (the rule's checks); a ValueError naming the option. */
  #validate(g: G, where: string): void {
    const s = this.precision;
    this.rule.validate(g, where, s.updates[this.rule.name] !== undefined ? s.name : null);
  }

  /**
   * Adds a parameter group (as PyTorch's `add_param_group`): missing hyperparameters come
   * from the defaults. Its parameters must not be in another group.
   */
  addParamGroup(input: ParamGroupInput<O>): void {
    const k = this.paramGroups.length;
    const where = `${this.name}: parameter group ${k}`;
    const params = checkParamList(where, input.params) as readonly Tensor[];
    const seen = new Map<Tensor, number>();
    this.paramGroups.forEach((g, gi) => g.params.forEach((p) => seen.set(p, gi)));
    params.forEach((p, i) => {
      if (!isTensor(p)) {
        throw new ValueError(
          `${where}: params[${i}] is not a Tensor (got ${p === null ? "null" : typeof p})`,
        );
      }
      if (p.disposed) throw new ValueError(`${where}: params[${i}] was disposed`);
      const prev = seen.get(p);
      if (prev !== undefined) {
        throw new ValueError(
          prev === k
            ? `${where}: params[${i}] appears twice in the group; pass each parameter once`
            : `${where}: params[${i}] is also in parameter group ${prev}; some parameters ` +
              `appear in more than one parameter group`,
        );
      }
      seen.set(p, k);
      if (p.dt !== this.precision.param) {
        throw new DTypeError(
          `${where}: params[${i}] has dtype ${p.dtype}, but precision '${this.precision.name}' ` +
            `keeps ${this.precision.param.name} parameters; cast the model or choose the ` +
            `precision that matches it`,
        );
      }
    });
    const given = Object.entries(input).filter(([, v]) => v !== undefined);
    const g = copyArrays({
      ...this.defaults,
      ...Object.fromEntries(given),
      params: [...params],
    } as unknown as Record<string, unknown>);
    checkOptionNames(where, g, ["params", "initialLr", ...Object.keys(this.defaults)]);
    const group = g as unknown as G;
    this.#validate(group, where);
    const base = this.paramGroups.reduce((a, g) => a + g.params.length, 0);
    const seeds = group.params.map((_, i) => randomU32(this.seed, base + i));
    this.paramGroups.push(group);
    this.#groups.push(new GroupState(this.name, group.params, seeds));
  }

  /** The update program of a group (the rule resolved for its flags and the strategy). */
  #program(g: G): UpdateProgram {
    const flags = this.rule.flags(g);
    const key = Object.entries(flags).map(([k, v]) => `${k}=${v}`).join(",");
    let p = this.#programs.get(key);
    if (!p) {
      p = resolveProgram(this.rule, this.precision, flags);
      this.#programs.set(key, p);
    }
    return p;
  }

  /**
   * Updates every parameter that has a gradient (those whose `.grad` is null are skipped,
   * as in PyTorch), in place: one kernel per parameter tensor (per window of one larger than a
   * storage binding), no staging copy, no readback. With a `closure` (or
   * `{ closure }`), it is called first and its result returned.
   *
   * Options: `foundInf`, a u32 tensor whose first word, when non-zero, turns the step into a
   * no-op on the device (what `GradScaler.step` passes; from the first such step on, the
   * step counts and bias corrections of the optimizer live on the device, so skipped steps
   * do not advance them); `diagnostics`, to accumulate what low precision lost during this
   * step (read with `diagnostics()`), with no effect on the update.
   */
  step(arg?: (() => Tensor) | StepOptions): Tensor | undefined {
    const opts: StepOptions = typeof arg === "function" ? { closure: arg } : arg ?? {};
    const loss = opts.closure?.();
    const d = opts.diagnostics;
    const diag = d
      ? (typeof d === "object" && d.castDtype !== undefined
        ? toDType(d.castDtype)
        : this.precision.computeDtype)
      : null;
    if (opts.foundInf !== undefined && !isTensor(opts.foundInf)) {
      throw new ValueError(`${this.name}.step(): foundInf must be a u32 tensor`);
    }
    if (opts.foundInf) this.#device = true;
    this.#diagDtype = diag;
    this.paramGroups.forEach((g, k) => {
      this.#validate(g, `${this.name}: parameter group ${k}`);
      const prog = this.#program(g);
      // the hyperparameters by name, in f64 (the uniforms round them to f32)
      const hyper: Record<string, number> = {};
      for (const [name, f] of Object.entries(this.rule.hyper)) hyper[name] = f(g);
      this.#groups[k].step(
        `${this.name}.step()`,
        prog,
        hyper,
        (t) => this.rule.perStep(hyper, hostStepMath(t)),
        { foundInf: this.#device ? opts.foundInf ?? null : null, diag },
      );
      if (this.#device) this.#groups[k].toDeviceSteps();
    });
    return loss;
  }

  /**
   * What low precision lost in the last step taken with `{ diagnostics: true }` (DESIGN.md
   * section 4), over all parameters updated in it; the counts and sums were accumulated on
   * the device by the update kernel, this reads them (one readback). Null when no step
   * with diagnostics has run since the last step without.
   *
   * @example
   * ```ts
   * import { SGD, tensor } from "../mod.ts";
   * const w = tensor([1, 0.001], { dtype: "bf16" });
   * const opt = new SGD([w], { lr: 1e-4 });
   * w.grad = tensor([1, 1], { dtype: "bf16" });
   * opt.step({ diagnostics: true });
   * const d = (await opt.diagnostics())!;
   * console.log(d.updated, d.lost, d.imprecision); // 2 1 0.5
   * ```
   */
  async diagnostics(): Promise<Diagnostics | null> {
    // what the last step recorded, taken now: a step recorded before the reads resolve (a
    // trainer that reads a step late) changes neither
    const parts = this.#groups.map((f) => f.diagnostics).filter((d) => d !== null);
    const cast = this.#diagDtype;
    if (cast === null || parts.length === 0) return null;
    const reads = await Promise.all(
      parts.flatMap((p) => [p.counters.toArray(), p.sums.toArray()]),
    );
    const c = new Array(DIAG_COUNTERS.length).fill(0);
    let dot = 0, nrm = 0;
    for (let k = 0; k < parts.length; k++) {
      const cnt = reads[2 * k], sums = reads[2 * k + 1];
      DIAG_COUNTERS.forEach((_, j) => (c[j] += cnt[j]));
      dot += sums[0];
      nrm += sums[1];
    }
    const [elements, updated, lost, gradNonFinite, gradUnderflow, gradOverflow] = c;
    return {
      elements,
      updated,
      lost,
      imprecision: updated === 0 ? 0 : lost / updated,
      dotEU: dot,
      normU2: nrm,
      edq: nrm === 0 ? 0 : dot / Math.sqrt(nrm),
      edqRatio: nrm === 0 ? 1 : dot / nrm,
      gradNonFinite,
      gradUnderflow,
      gradOverflow,
      castDtype: cast.name,
    };
  }

  /**
   * Clears the gradients of every parameter: sets them to null and frees them (PyTorch's
   * default), or with `setToNone = false` replaces them with zeros.
   */
  zeroGrad(setToNone = true): void {
    for (const g of this.paramGroups) {
      for (const p of g.params) {
        if (p.grad === null) continue;
        if (setToNone) {
          p.zeroGrad();
        } else {
          const z = keep(zeros(p.grad.shape, { dtype: p.grad.dt, purpose: "grads" }));
          p.grad.dispose();
          p.grad = z;
        }
      }
    }
  }

  /**
   * The state: per updated parameter a copy of each state tensor (GPU tensors the caller
   * owns) and `step` (and `rngSeed`, `rngCounter` under a strategy that rounds
   * stochastically; `<state>Scale`, a one-element f32 tensor, per state a strategy scales
   * per tensor); per group its hyperparameters and parameter indices.
   */
  stateDict(): OptimizerStateDict {
    const state: Record<number, ParamState> = {};
    const paramGroups: Record<string, unknown>[] = [];
    let index = 0;
    this.paramGroups.forEach((g, k) => {
      const gs = this.#groups[k];
      const nulls = this.rule.nullStates?.(this.rule.flags(g)) ?? [];
      const ids: number[] = [];
      g.params.forEach((_, i) => {
        ids.push(index);
        if (gs.steps[i] > 0) {
          const s: ParamState = {};
          if (this.rule.savesStep) s.step = gs.deviceSteps ? gs.readStep(i) : gs.steps[i];
          for (const spec of gs.states) s[spec.name] = gs.readState(i, spec.name);
          for (const n of nulls) s[n] = null;
          if (this.precision.stochastic.length > 0) {
            s.rngSeed = gs.rngSeeds[i];
            s.rngCounter = gs.rngCounters[i];
          }
          const scaled = this.#program(g).scaled;
          scaled.forEach((e, k) => (s[`${e.name}Scale`] = gs.readScale(i, k, scaled.length)));
          state[index] = s;
        }
        index++;
      });
      const { params: _, ...hyper } = g;
      paramGroups.push({ ...copyArrays(hyper), params: ids });
    });
    return { state, paramGroups };
  }

  /**
   * Restores a state dict made by `stateDict()` of an optimizer with the same groups:
   * hyperparameters, step counts and state tensors. Each state tensor must have this
   * optimizer's state dtype (a step tensor f32), unless `cast` is true: then they are cast.
   * Everything is checked before anything changes.
   */
  loadStateDict(sd: OptimizerStateDict, opts: { cast?: boolean } = {}): void {
    const op = `${this.name}.loadStateDict()`;
    if (!sd || typeof sd !== "object" || !Array.isArray(sd.paramGroups) || !sd.state) {
      throw new ValueError(`${op}: expects { state, paramGroups } as stateDict() returns`);
    }
    if (sd.paramGroups.length !== this.paramGroups.length) {
      throw new ValueError(
        `${op}: the state dict has ${sd.paramGroups.length} parameter groups, this optimizer ` +
          `${this.paramGroups.length}`,
      );
    }
    // where each saved index goes
    const where: [number, number][] = [];
    const next: G[] = [];
    sd.paramGroups.forEach((saved, k) => {
      const g = this.paramGroups[k];
      const ids = saved.params;
      if (!Array.isArray(ids) || ids.length !== g.params.length) {
        throw new ValueError(
          `${op}: parameter group ${k} has ${
            Array.isArray(ids) ? ids.length : "no"
          } parameters in the state dict, ${g.params.length} in this optimizer`,
        );
      }
      ids.forEach((id, i) => (where[id as number] = [k, i]));
      const merged = { ...g } as unknown as Record<string, unknown>;
      for (const [key, v] of Object.entries(saved)) {
        if (key === "params") continue;
        if (!(key in this.defaults) && key !== "initialLr") {
          throw new ValueError(`${op}: parameter group ${k} has unknown option '${key}'`);
        }
        merged[key] = Array.isArray(v) ? [...v] : v;
      }
      this.#validate(merged as unknown as G, `${op}: parameter group ${k}`);
      next.push(merged as unknown as G);
    });
    const entries = Object.entries(sd.state).map(([id, s]) => {
      const w = where[Number(id)];
      if (!w) throw new ValueError(`${op}: state for parameter ${id}, which no group holds`);
      if (s === null || typeof s !== "object") {
        throw new ValueError(`${op}: state ${id} must be an object of tensors and numbers`);
      }
      return { id, k: w[0], i: w[1], s };
    });
    const programs = next.map((g) => this.#program(g));
    for (const { id, k, i, s } of entries) {
      const specs = programs[k].states;
      const names = specs.map((b) => b.name);
      const scaleKeys = programs[k].scaled.map((e) => `${e.name}Scale`);
      const p = this.paramGroups[k].params[i];
      for (const [key, v] of Object.entries(s)) {
        if (key === "step") {
          const okNumber = typeof v === "number" && Number.isInteger(v) && v >= 0;
          if (!okNumber && !(isTensor(v) && v.size === 1)) {
            throw new ValueError(
              `${op}: state ${id}.step must be a non-negative integer or a one-element tensor`,
            );
          }
          if (isTensor(v) && v.dtype !== "f32" && !opts.cast) {
            throw new DTypeError(
              `${op}: state ${id}.step is a ${v.dtype} tensor, stateDict() saves f32; pass ` +
                `{ cast: true } to convert it`,
            );
          }
        } else if (scaleKeys.includes(key)) {
          if (!isTensor(v) || v.size !== 1) {
            throw new ValueError(`${op}: state ${id}.${key} must be a one-element tensor`);
          }
          if (v.dtype !== "f32" && !opts.cast) {
            throw new DTypeError(
              `${op}: state ${id}.${key} is a ${v.dtype} tensor, stateDict() saves f32; pass ` +
                `{ cast: true } to convert it`,
            );
          }
        } else if (key === "rngSeed" || key === "rngCounter") {
          if (!(typeof v === "number" && Number.isInteger(v) && v >= 0 && v < 2 ** 32)) {
            throw new ValueError(
              `${op}: state ${id}.${key} must be an integer in [0, 2^32), got ${String(v)}`,
            );
          }
        } else if (v !== null && !names.includes(key)) {
          throw new ValueError(
            `${op}: state ${id} has '${key}', which ${this.name} with these options does not ` +
              `keep (it keeps ${names.join(", ") || "no tensors"})`,
          );
        } else if (v !== null && !isTensor(v)) {
          throw new ValueError(`${op}: state ${id}.${key} must be a tensor, got ${typeof v}`);
        } else if (
          v !== null && (v.ndim !== p.ndim || v.shape.some((d, j) => d !== p.shape[j]))
        ) {
          throw new ShapeError(
            `${op}: state ${id}.${key} has shape ${fmtShape(v.shape)}, the parameter ${
              fmtShape(p.shape)
            }`,
          );
        } else if (v !== null && !opts.cast) {
          const want = specs.find((b) => b.name === key)!.dtype.name;
          if (v.dtype !== want) {
            throw new DTypeError(
              `${op}: state ${id}.${key} has dtype ${v.dtype}, this optimizer keeps ${want}; ` +
                `pass { cast: true } to convert it (states saved in another precision)`,
            );
          }
        }
      }
      for (const n of names) {
        if (!isTensor(s[n])) throw new ValueError(`${op}: state ${id} has no tensor '${n}'`);
      }
      if (this.rule.savesStep && typeof s.step !== "number" && !isTensor(s.step)) {
        throw new ValueError(`${op}: state ${id} has no 'step'`);
      }
    }
    // apply
    next.forEach((g, k) => {
      Object.assign(this.paramGroups[k], g);
      const gs = this.#groups[k];
      gs.prepare(programs[k].states);
      gs.resetStates();
    });
    if (entries.some(({ s }) => isTensor(s.step))) this.#device = true;
    if (this.#device) { for (const f of this.#groups) f.toDeviceSteps(); }
    for (const { id, k, i, s } of entries) {
      const gs = this.#groups[k];
      // a tensor step (device counts) is not known on the host: 1 marks "has state"
      gs.steps[i] = typeof s.step === "number" ? s.step : 1;
      if (gs.deviceSteps) gs.writeStep(i, isTensor(s.step) ? s.step : gs.steps[i]);
      // the random stream (saved by a strategy that rounds stochastically; else kept, from 0)
      if (typeof s.rngSeed === "number") gs.rngSeeds[i] = s.rngSeed;
      if (typeof s.rngCounter === "number") gs.rngCounters[i] = s.rngCounter;
      // per-tensor scales (absent: 1, as a fresh state)
      const scaled = programs[k].scaled;
      scaled.forEach((e, j) => {
        const v = s[`${e.name}Scale`];
        if (isTensor(v)) gs.writeScale(i, j, scaled.length, v);
      });
      for (const spec of gs.states) {
        gs.writeState(i, spec.name, s[spec.name] as Tensor, `state ${id}`);
      }
    }
  }

  /** Frees the optimizer's GPU tensors (states, step counts, diagnostics). */
  dispose(): void {
    for (const f of this.#groups) f.dispose();
  }

  /** `using opt = new AdamW(...)` frees the state at the end of the block. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Checks an optimizer's `seed`: an integer in [0, 2^32). @internal */
function checkSeed(op: string, seed: unknown): void {
  if (!(typeof seed === "number" && Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32)) {
    throw new ValueError(`${op}: seed must be an integer in [0, 2^32), got ${String(seed)}`);
  }
}

function checkParamList(op: string, params: unknown): readonly unknown[] {
  if (params === null || typeof params !== "object" || !(Symbol.iterator in params)) {
    throw new ValueError(
      `${op}: params must be an array of tensors or of parameter groups, got ${
        params === null ? "null" : typeof params
      }`,
    );
  }
  const list = Array.from(params as Iterable<unknown>);
  if (list.length === 0) {
    throw new ValueError(
      `${op}: params is empty; pass at least one parameter (model.parameters())`,
    );
  }
  return list;
}

function inferPrecision(op: string, params: readonly unknown[]): string {
  const names = new Set(params.filter(isTensor).map((p) => p.dtype));
  if (names.size === 0 || names.size === 1 && names.has("f32")) return "fp32";
  if (names.size === 1 && names.has("bf16")) return "bf16";
  throw new ValueError(
    `${op}: cannot infer the precision from parameters of dtype ${[...names].join(", ")}; ` +
      `pass { precision: "fp32" } (f32 parameters) or { precision: "bf16" } (bf16)`,
  );
}

function copyArrays<T>(o: T): T {
  const out = { ...o } as Record<string, unknown>;
  for (const [k, v] of Object.entries(out)) if (Array.isArray(v)) out[k] = [...v];
  return out as T;
}
