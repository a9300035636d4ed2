/**
 * Learning-rate schedules: a functional form (`cosineWithWarmup` gives step -> lr) and
 * schedulers that set each parameter group's `lr`, as PyTorch's `LambdaLR`: built after the
 * optimizer, they set the lr of step 0 at once, and `scheduler.step()` after each
 * `optimizer.step()` moves to the next step.
 *
 * Linear warmup then cosine decay (as nanoGPT and Hugging Face's
 * `get_cosine_schedule_with_warmup`, with a floor):
 *
 * ```
 * step < warmupSteps:   lr = baseLr * (step + 1) / warmupSteps
 * step < totalSteps:    lr = minLr + (baseLr - minLr) * (1 + cos(pi * q)) / 2,
 *                       q = (step - warmupSteps) / (totalSteps - warmupSteps)
 * step >= totalSteps:   lr = minLr
 * ```
 *
 * Warmup counts from `(step + 1) / warmupSteps`, not from 0, so that the first update is
 * not wasted: step 0 uses baseLr / warmupSteps and step warmupSteps - 1 the full baseLr.
 *
 * @module
 */

import { ValueError } from "../errors.ts";
import type { Optimizer, ParamGroup } from "./optimizer.ts";

/**
 * Options of the warmup + cosine schedule.
 *
 * @example
 * ```ts
 * import { cosineWithWarmup, type CosineWithWarmupOptions } from "../mod.ts";
 * const o: CosineWithWarmupOptions = { warmupSteps: 10, totalSteps: 100, minLr: 0.1 };
 * console.log(cosineWithWarmup(o)(100)); // 0.1
 * ```
 */
export interface CosineWithWarmupOptions {
  /** Steps of linear warmup (>= 0). */
  warmupSteps: number;
  /** Step at which the cosine reaches `minLr` (>= warmupSteps). */
  totalSteps: number;
  /** Final learning rate (default 0); in `cosineWithWarmup`, in units of `baseLr`. */
  minLr?: number;
}

function checkSchedule(op: string, o: CosineWithWarmupOptions): void {
  if (o === null || typeof o !== "object") {
    throw new ValueError(`${op}: expects { warmupSteps, totalSteps, minLr? }`);
  }
  const { warmupSteps: w, totalSteps: t, minLr = 0 } = o;
  if (!Number.isInteger(w) || w < 0) {
    throw new ValueError(`${op}: warmupSteps must be an integer >= 0, got ${String(w)}`);
  }
  if (!Number.isInteger(t) || t < w) {
    throw new ValueError(
      `${op}: totalSteps must be an integer >= warmupSteps (${w}), got ${String(t)}`,
    );
  }
  if (typeof minLr !== "number" || !Number.isFinite(minLr) || minLr < 0) {
    throw new ValueError(`${op}: minLr must be a finite number >= 0, got ${String(minLr)}`);
  }
}

function cosineAt(step: number, base: number, o: CosineWithWarmupOptions): number {
  const min = o.minLr ?? 0;
  if (step < o.warmupSteps) return (base * (step + 1)) / o.warmupSteps;
  if (step >= o.totalSteps) return min;
  const q = (step - o.warmupSteps) / (o.totalSteps - o.warmupSteps);
  return min + ((base - min) * (1 + Math.cos(Math.PI * q))) / 2;
}

/**
 * Linear warmup then cosine decay, as a function of the step (0-based): the learning rate
 * for a base rate of `baseLr` (default 1, so that the value is a multiplier as `LambdaLR`
 * expects and `minLr` is a fraction of the base).
 *
 * @example
 * ```ts
 * import { cosineWithWarmup } from "../mod.ts";
 * const f = cosineWithWarmup({ warmupSteps: 2, totalSteps: 6, minLr: 0.1 });
 * console.log([0, 1, 2, 4, 6].map((s) => f(s).toFixed(2))); // ["0.50", "1.00", "1.00", "0.55", "0.10"]
 * ```
 */
export function cosineWithWarmup(
  opts: CosineWithWarmupOptions & { baseLr?: number },
): (step: number) => number {
  checkSchedule("cosineWithWarmup()", opts);
  const base = opts.baseLr ?? 1;
  if (typeof base !== "number" || !Number.isFinite(base) || base < 0) {
    throw new ValueError(`cosineWithWarmup(): baseLr must be a finite number >= 0, got ${base}`);
  }
  const o = { ...opts };
  return (step: number) => cosineAt(step, base, o);
}

/**
 * A scheduler's state dict.
 *
 * @example
 * ```ts
 * import { LambdaLR, SGD, zeros } from "../mod.ts";
 * const s = new LambdaLR(new SGD([zeros([1])], { lr: 1 }), (t) => 1 / (t + 1));
 * s.step();
 * console.log(s.stateDict()); // { lastStep: 1, baseLrs: [ 1 ] }
 * ```
 */
export interface LRSchedulerState {
  /** Steps taken (`last_epoch` in PyTorch). */
  lastStep: number;
  /** The base learning rate of each group. */
  baseLrs: number[];
}

/**
 * The base of the schedulers: remembers each group's base lr (`initialLr`), sets the lr of
 * step 0 when built, and the lr of the next step on each `step()`.
 *
 * @example
 * ```ts
 * import { LambdaLR, LRScheduler, SGD, zeros } from "../mod.ts";
 * const s = new LambdaLR(new SGD([zeros([1])], { lr: 1 }), (step) => 0.5 ** step);
 * console.log(s instanceof LRScheduler, s.getLastLr()); // true [1]
 * ```
 */
export abstract class LRScheduler {
  /** The optimizer whose groups' `lr` this sets. */
  readonly optimizer: Optimizer<ParamGroup, unknown>;
  /** Each group's base learning rate. */
  baseLrs: number[];
  /** Steps taken so far (0 after construction). */
  lastStep = 0;

  /** Attaches to `optimizer` and sets the learning rate of step 0. */
  constructor(optimizer: Optimizer<ParamGroup, unknown>) {
    this.optimizer = optimizer;
    for (const g of optimizer.paramGroups) g.initialLr ??= g.lr;
    this.baseLrs = optimizer.paramGroups.map((g) => g.initialLr!);
  }

  /** The learning rate of group `k` at `step`. */
  protected abstract lrAt(step: number, baseLr: number, k: number): number;

  /** Sets every group's lr for the current step. */
  protected apply(): void {
    this.optimizer.paramGroups.forEach((g, k) => {
      const lr = this.lrAt(this.lastStep, this.baseLrs[k], k);
      if (typeof lr !== "number" || !Number.isFinite(lr) || lr < 0) {
        throw new ValueError(
          `${this.constructor.name}: the schedule gave lr ${lr} for group ${k} at step ` +
            `${this.lastStep}; a learning rate must be a finite number >= 0`,
        );
      }
      g.lr = lr;
    });
  }

  /** Moves to the next step (call after `optimizer.step()`). */
  step(): void {
    this.lastStep++;
    this.apply();
  }

  /** The learning rate of each group now. */
  getLastLr(): number[] {
    return this.optimizer.paramGroups.map((g) => g.lr);
  }

  /** The scheduler's state: step count and base learning rates. */
  stateDict(): LRSchedulerState {
    return { lastStep: this.lastStep, baseLrs: [...this.baseLrs] };
  }

  /** Restores a state saved by `stateDict()` and sets the lr of that step. */
  loadStateDict(s: LRSchedulerState): void {
    if (
      !s || !Number.isInteger(s.lastStep) || s.lastStep < 0 || !Array.isArray(s.baseLrs) ||
      s.baseLrs.length !== this.baseLrs.length
    ) {
      throw new ValueError(
        `${this.constructor.name}.loadStateDict(): expects { lastStep, baseLrs } with ` +
          `${this.baseLrs.length} base learning rates`,
      );
    }
    this.lastStep = s.lastStep;
    this.baseLrs = [...s.baseLrs];
    this.apply();
  }
}

/**
 * Sets each group's lr to its base lr times `lrLambda(step)` (PyTorch's `LambdaLR`); one
 * function for all groups or one per group.
 *
 * @example
 * ```ts
 * import { cosineWithWarmup, LambdaLR, SGD, zeros } from "../mod.ts";
 * const opt = new SGD([zeros([1])], { lr: 0.1 });
 * const sched = new LambdaLR(opt, cosineWithWarmup({ warmupSteps: 10, totalSteps: 100 }));
 * console.log(opt.paramGroups[0].lr.toFixed(3)); // "0.010"
 * sched.step();
 * console.log(opt.paramGroups[0].lr.toFixed(3)); // "0.020"
 * ```
 */
export class LambdaLR extends LRScheduler {
  #fns: ((step: number) => number)[];

  /** Attaches to `optimizer`; sets the lr of step 0. */
  constructor(
    optimizer: Optimizer<ParamGroup, unknown>,
    lrLambda: ((step: number) => number) | readonly ((step: number) => number)[],
  ) {
    super(optimizer);
    const n = optimizer.paramGroups.length;
    const fns = Array.isArray(lrLambda) ? [...lrLambda] : Array.from({ length: n }, () => lrLambda);
    if (fns.length !== n || fns.some((f) => typeof f !== "function")) {
      throw new ValueError(
        `LambdaLR: lrLambda must be a function or an array of ${n} functions (one per group)`,
      );
    }
    this.#fns = fns as ((step: number) => number)[];
    this.apply();
  }

  /** The learning rate of group `k` at `step` (see `LRScheduler`). */
  protected lrAt(step: number, base: number, k: number): number {
    return base * this.#fns[k](step);
  }
}

/**
 * Linear warmup then cosine decay of every group's lr from its base lr to `minLr` (an
 * absolute learning rate, as PyTorch's `eta_min`).
 *
 * @example
 * ```ts
 * import { AdamW, CosineWithWarmupLR, zeros } from "../mod.ts";
 * const opt = new AdamW([zeros([4])], { lr: 1e-3 });
 * const sched = new CosineWithWarmupLR(opt, { warmupSteps: 100, totalSteps: 1000, minLr: 1e-4 });
 * console.log(sched.getLastLr()[0]); // 0.00001
 * for (let i = 0; i < 1000; i++) sched.step();
 * console.log(sched.getLastLr()[0]); // 0.0001
 * ```
 */
export class CosineWithWarmupLR extends LRScheduler {
  #opts: CosineWithWarmupOptions;

  /** Attaches to `optimizer`; sets the lr of step 0. */
  constructor(optimizer: Optimizer<ParamGroup, unknown>, opts: CosineWithWarmupOptions) {
    super(optimizer);
    checkSchedule("CosineWithWarmupLR", opts);
    this.#opts = { ...opts };
    this.apply();
  }

  /** The learning rate at `step` (see `LRScheduler`). */
  protected lrAt(step: number, base: number): number {
    return cosineAt(step, base, this.#opts);
  }
}
