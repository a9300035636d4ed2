/**
 * `GradScaler`: PyTorch's dynamic loss scaling (`torch.amp.GradScaler`) with its defaults,
 * methods and misuse errors, kept entirely on the device. The scale (f32), the growth
 * tracker (i32) and each optimizer's `found_inf` flag (u32) are small GPU buffers:
 *
 * - `scale(loss)` multiplies by the scale tensor (a kernel);
 * - `unscale(opt)` checks every gradient for Inf/NaN on the exponent bits and multiplies it
 *   by 1/scale, in place (one kernel per gradient, windowed for one larger than a storage
 *   binding; no staging copy);
 * - `step(opt)` runs `opt.step({ foundInf })`: the update kernel reads the flag and changes
 *   nothing when it is set, and the optimizer's step counts (bias corrections) live on the
 *   device so a skipped step does not advance them;
 * - `update()` is a one-thread kernel implementing `torch._amp_update_scale_`:
 *
 * ```
 * if found_inf: scale *= backoffFactor; tracker = 0
 * else: t = tracker + 1
 *       if t == growthInterval: (scale *= growthFactor unless that overflows); tracker = 0
 *       else tracker = t
 * ```
 *
 * So a training step with the scaler reads nothing back; only `getScale()` waits for the GPU
 * (`stateDict()` returns device copies of the scale and the tracker, as the optimizers return
 * their state tensors). The factors are applied as f32 products (`scale * f32(factor)`): the same
 * bits as PyTorch's double product whenever the factor is an f32 number (2, 0.5, 1.5, ...).
 *
 * Reference: Micikevicius et al., "Mixed Precision Training", ICLR 2018; PyTorch
 * `torch/amp/grad_scaler.py` and `aten/src/ATen/native/cuda/AmpKernels.cu`.
 *
 * @module
 */

import type { DType } from "../dtypes/mod.ts";
import { ValueError } from "../errors.ts";
import {
  type BindingSpec,
  currentRuntime,
  type Program,
  program,
  type Runtime,
  type UniformSpec,
} from "../gpu/mod.ts";
import { full, isTensor, keep, Tensor, tensor } from "../tensor/mod.ts";
import { byDtype, inPlaceProgram, runInPlace, zeroFlag } from "./_inplace.ts";
import type { Optimizer } from "./optimizer.ts";

/**
 * Options of `GradScaler`, PyTorch's names in camelCase and its defaults.
 *
 * @example
 * ```ts
 * import { GradScaler, type GradScalerOptions } from "../mod.ts";
 * const opts: GradScalerOptions = { initScale: 1024, growthInterval: 100 };
 * console.log(await new GradScaler(opts).getScale()); // 1024
 * ```
 */
export interface GradScalerOptions {
  /** Initial scale (default 2^16). */
  initScale?: number;
  /** Factor the scale grows by after `growthInterval` steps without Inf/NaN (default 2), > 1. */
  growthFactor?: number;
  /** Factor the scale shrinks by after a step with Inf/NaN (default 0.5), in (0, 1). */
  backoffFactor?: number;
  /** Consecutive steps without Inf/NaN before the scale grows (default 2000). */
  growthInterval?: number;
  /** When false, every method is a pass-through (default true). */
  enabled?: boolean;
  /**
   * `status()` reports a blow-up when the scale falls below this (default 1: a scale below 1
   * shrinks the gradients, so they overflow f16 even unscaled). Not in PyTorch (#99640).
   */
  minScale?: number;
  /**
   * `status()` reports a blow-up after this many consecutive skipped steps (steps whose
   * gradients held Inf/NaN; default 10, a 1024-fold backoff). Not in PyTorch (#99640).
   */
  maxConsecutiveSkips?: number;
}

/**
 * What `GradScaler.status()` reads: the scale, the skipped steps, and whether the run blew up.
 *
 * @example
 * ```ts
 * import { GradScaler, type GradScalerStatus } from "../mod.ts";
 * const s: GradScalerStatus = await new GradScaler().status();
 * console.log(s.scale, s.consecutiveSkips, s.problem); // 65536 0 null
 * ```
 */
export interface GradScalerStatus {
  /** The current scale. */
  scale: number;
  /** Skipped steps (Inf/NaN gradients) in a row, up to the last `update()`. */
  consecutiveSkips: number;
  /** Skipped steps since the scaler was made (or its state loaded). */
  skippedSteps: number;
  /**
   * Null while training is healthy; else what went wrong: the scale fell below `minScale`, or
   * `maxConsecutiveSkips` steps in a row were skipped.
   */
  problem: string | null;
}

/**
 * The state of a `GradScaler` (`stateDict()`): PyTorch's keys in camelCase. `stateDict()`
 * gives the scale and the tracker as device tensors (copies the caller owns), so taking it
 * waits for nothing; `loadStateDict()` also takes plain numbers, as PyTorch's state dicts
 * hold them.
 *
 * @example
 * ```ts
 * import { GradScaler, type GradScalerState, type Tensor } from "../mod.ts";
 * const sd = new GradScaler().stateDict() as GradScalerState;
 * const [scale, tracker] = [sd.scale as Tensor, sd.growthTracker as Tensor];
 * console.log(await scale.item(), sd.growthInterval, await tracker.item()); // 65536 2000 0
 * const numbers = { ...sd, scale: 1024, growthTracker: 3 };
 * const s = new GradScaler();
 * s.loadStateDict(numbers);
 * console.log(await s.getScale()); // 1024
 * ```
 */
export interface GradScalerState {
  /** The current scale (an f32 tensor of one element; a number is accepted on load). */
  scale: Tensor | number;
  /** Growth factor. */
  growthFactor: number;
  /** Backoff factor. */
  backoffFactor: number;
  /** Growth interval. */
  growthInterval: number;
  /**
   * Consecutive steps without Inf/NaN since the scale last changed (an i32 tensor of one
   * element; a number is accepted on load).
   */
  growthTracker: Tensor | number;
}

type Stage = "ready" | "unscaled" | "stepped";

/**
 * Dynamic loss scaling for f16 training, as `torch.amp.GradScaler`: scale the loss, unscale
 * the gradients (checking them for Inf/NaN), step (skipped on the device when a gradient
 * overflowed), update the scale. Refuses misuse as PyTorch does (`unscale` twice, `step`
 * twice without `update`).
 *
 * @example
 * ```ts
 * import { AdamW, GradScaler, tensor } from "../mod.ts";
 * const w = tensor([1, 2], { requiresGrad: true });
 * const opt = new AdamW([w], { lr: 0.1, weightDecay: 0 });
 * const scaler = new GradScaler({ initScale: 1024 });
 * scaler.scale(w.mul(w).sum()).backward(); // gradients 1024 * 2w
 * scaler.step(opt); // unscales (2w), finds no Inf/NaN, steps
 * scaler.update();
 * console.log(Array.from(await w.toArray()).map((x) => x.toFixed(2))); // ["0.90", "1.90"]
 * // an overflow: the step is skipped on the device and the scale backs off
 * opt.zeroGrad();
 * w.grad = tensor([Infinity, 1]);
 * scaler.step(opt);
 * scaler.update();
 * console.log(await scaler.getScale(), Array.from(await w.toArray()).map((x) => x.toFixed(2)));
 * // 512 ["0.90", "1.90"]
 * ```
 */
export class GradScaler {
  #enabled: boolean;
  #initScale: number;
  #growthFactor: number;
  #backoffFactor: number;
  #growthInterval: number;
  #minScale: number;
  #maxSkips: number;
  /** i32 [consecutive skipped steps, skipped steps], updated on the device by `update()`. */
  #skips: Tensor | null = null;
  #scale: Tensor | null = null;
  #tracker: Tensor | null = null;
  #combined: Tensor | null = null;
  #found = new Map<Optimizer, Tensor>();
  #stages = new Map<Optimizer, Stage>();

  /** A scaler with PyTorch's defaults (`initScale` 2^16, growth 2, backoff 0.5, interval 2000). */
  constructor(opts: GradScalerOptions = {}) {
    const o = {
      initScale: 2 ** 16,
      growthFactor: 2,
      backoffFactor: 0.5,
      growthInterval: 2000,
      enabled: true,
      minScale: 1,
      maxConsecutiveSkips: 10,
      ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)),
    };
    const known = [
      "initScale",
      "growthFactor",
      "backoffFactor",
      "growthInterval",
      "enabled",
      "minScale",
      "maxConsecutiveSkips",
    ];
    for (const k of Object.keys(o)) {
      if (!known.includes(k)) {
        throw new ValueError(`GradScaler: unknown option '${k}'; it takes ${known.join(", ")}`);
      }
    }
    if (typeof o.minScale !== "number" || !(o.minScale >= 0) || !Number.isFinite(o.minScale)) {
      throw new ValueError(
        `GradScaler: minScale must be a finite number >= 0, got ${String(o.minScale)}`,
      );
    }
    const n = o.maxConsecutiveSkips;
    if (!Number.isSafeInteger(n) || n < 1 || n > 2 ** 31 - 1) {
      throw new ValueError(
        `GradScaler: maxConsecutiveSkips must be a positive integer, got ${String(n)}`,
      );
    }
    this.#minScale = o.minScale;
    this.#maxSkips = n;
    checkFactors(o.growthFactor, o.backoffFactor, o.growthInterval, "GradScaler");
    if (typeof o.initScale !== "number" || !(o.initScale > 0) || !Number.isFinite(o.initScale)) {
      throw new ValueError(
        `GradScaler: initScale must be a finite number > 0, got ${String(o.initScale)}`,
      );
    }
    if (typeof o.enabled !== "boolean") {
      throw new ValueError(`GradScaler: enabled must be true or false, got ${String(o.enabled)}`);
    }
    this.#enabled = o.enabled;
    this.#initScale = o.initScale;
    this.#growthFactor = o.growthFactor;
    this.#backoffFactor = o.backoffFactor;
    this.#growthInterval = o.growthInterval;
  }

  /** Whether the scaler is enabled. */
  isEnabled(): boolean {
    return this.#enabled;
  }

  #lazyInit(): [Tensor, Tensor] {
    if (this.#scale === null || this.#scale.disposed) {
      this.#scale = keep(full([], this.#initScale, { purpose: "other" }));
      this.#tracker = keep(tensor(new Int32Array(1), { dtype: "i32", purpose: "other" }));
    }
    return [this.#scale, this.#tracker!];
  }

  /** The scale as a 0-d f32 tensor on the device (created on first use). @internal */
  get scaleTensor(): Tensor {
    return this.#lazyInit()[0];
  }

  /**
   * `outputs` (a loss, or several) multiplied by the current scale, on the device. Call
   * `backward()` on the result. Disabled: the outputs unchanged.
   */
  scale(outputs: Tensor): Tensor;
  /** Each of `outputs` multiplied by the current scale (as the one-tensor form). */
  scale(outputs: readonly Tensor[]): Tensor[];
  scale(outputs: Tensor | readonly Tensor[]): Tensor | Tensor[] {
    if (Array.isArray(outputs)) return outputs.map((t) => this.scale(t as Tensor));
    const t = outputs as Tensor;
    if (!isTensor(t)) throw new ValueError("GradScaler.scale(): expects a tensor or tensors");
    if (!this.#enabled) return t;
    return t.mul(this.#lazyInit()[0]);
  }

  #stage(opt: Optimizer): Stage {
    return this.#stages.get(opt) ?? "ready";
  }

  /**
   * Divides the gradients of `optimizer`'s parameters by the scale in place and records
   * whether any of them holds Inf or NaN (on the device; nothing is read back). Call it
   * before clipping gradients; `step` calls it when you did not.
   */
  unscale(optimizer: Optimizer): void {
    if (!this.#enabled) return;
    const st = this.#stage(optimizer);
    if (st === "unscaled") {
      throw new ValueError(
        "GradScaler.unscale(): unscale() has already been called on this optimizer since the " +
          "last update()",
      );
    }
    if (st === "stepped") {
      throw new ValueError("GradScaler.unscale(): unscale() is being called after step()");
    }
    const rt = currentRuntime();
    const [scale] = this.#lazyInit();
    let found = this.#found.get(optimizer);
    if (!found || found.disposed) {
      found = keep(tensor(new Uint32Array(1), { dtype: "u32", purpose: "other" }));
      this.#found.set(optimizer, found);
    }
    const op = "GradScaler.unscale()";
    rt.copy(zeroFlag(rt).buffer(op), 0, found.buffer(op), 0, 4);
    const grads = optimizer.paramGroups.flatMap((g) => g.params)
      .map((p) => p.grad).filter((g): g is Tensor => g !== null);
    if (grads.some((g) => g.dtype === "f16")) {
      throw new ValueError(
        `${op}: attempting to unscale f16 gradients; keep f32 master weights (precision ` +
          `'amp-f16' with applyPrecision) so that gradients are f32`,
      );
    }
    unscaleGrads(rt, grads, scale, found, op);
    this.#stages.set(optimizer, "unscaled");
  }

  /**
   * Unscales the gradients if `unscale` was not called, then steps `optimizer` with the
   * Inf/NaN flag: on the device, the step changes nothing when a gradient overflowed.
   * Disabled: `optimizer.step()`.
   */
  step(optimizer: Optimizer): void {
    if (!this.#enabled) {
      optimizer.step();
      return;
    }
    if (this.#stage(optimizer) === "stepped") {
      throw new ValueError(
        "GradScaler.step(): step() has already been called since the last update()",
      );
    }
    if (this.#stage(optimizer) === "ready") this.unscale(optimizer);
    optimizer.step({ foundInf: this.#found.get(optimizer)! });
    this.#stages.set(optimizer, "stepped");
  }

  /**
   * Updates the scale, on the device: backs off after a step in which any optimizer's
   * gradients held Inf/NaN, grows after `growthInterval` clean steps (PyTorch's
   * `_amp_update_scale_`). With `newScale` (a number or a one-element f32 tensor), sets the
   * scale instead. Call it once per iteration, after `step`.
   */
  update(newScale?: number | Tensor): void {
    if (!this.#enabled) return;
    const op = "GradScaler.update()";
    const rt = currentRuntime();
    const [scale, tracker] = this.#lazyInit();
    if (newScale !== undefined) {
      if (typeof newScale === "number") {
        if (!(newScale > 0) || !Number.isFinite(newScale) || !isFinite(Math.fround(newScale))) {
          throw new ValueError(`${op}: newScale must be a finite number > 0, got ${newScale}`);
        }
        rt.write(scale.buffer(op), new Float32Array([newScale]));
      } else if (isTensor(newScale) && newScale.size === 1 && newScale.dtype === "f32") {
        if (newScale.requiresGrad) {
          throw new ValueError(`${op}: newScale must not require grad`);
        }
        rt.copy(newScale.buffer(op), 0, scale.buffer(op), 0, 4);
      } else {
        throw new ValueError(`${op}: newScale must be a number or a one-element f32 tensor`);
      }
    } else {
      const flags = [...this.#stages.keys()].map((o) => this.#found.get(o)!).filter(Boolean);
      if (flags.length === 0) {
        throw new ValueError(`${op}: no inf checks were recorded prior to update()`);
      }
      this.#combined ??= keep(tensor(new Uint32Array(1), { dtype: "u32", purpose: "other" }));
      const comb = this.#combined.buffer(op);
      rt.copy(flags[0].buffer(op), 0, comb, 0, 4);
      for (const f of flags.slice(1)) {
        orProgram(rt).run({ buffers: { dst: comb, src: f.buffer(op) }, groups: 1 });
      }
      updateProgram(rt).run({
        buffers: { scale: scale.buffer(op), tracker: tracker.buffer(op), found: comb },
        uniforms: {
          growth: this.#growthFactor,
          backoff: this.#backoffFactor,
          interval: this.#growthInterval,
        },
        groups: 1,
      });
      skipsProgram(rt).run({
        buffers: { skips: this.#skipCounts().buffer(op), found: comb },
        groups: 1,
      });
    }
    this.#stages.clear();
  }

  #skipCounts(): Tensor {
    if (this.#skips === null || this.#skips.disposed) {
      this.#skips = keep(tensor(new Int32Array(2), { dtype: "i32", purpose: "other" }));
    }
    return this.#skips;
  }

  /**
   * Reads the scale and the skipped-step counts (one readback) and says whether the run blew
   * up: `problem` names it when the scale fell below `minScale` or `maxConsecutiveSkips` steps
   * in a row were skipped, else it is null. A trainer calls it every step or every few steps
   * and warns or stops (PyTorch's GradScaler skips steps silently: pytorch/pytorch#99640).
   * Disabled: scale 1, no skips, no problem.
   *
   * @example
   * ```ts
   * import { AdamW, GradScaler, tensor } from "../mod.ts";
   * const w = tensor([1, 2], { requiresGrad: true });
   * const opt = new AdamW([w]);
   * const scaler = new GradScaler({ initScale: 8, maxConsecutiveSkips: 3 });
   * for (let i = 0; i < 3; i++) {
   *   w.grad = tensor([Infinity, 1]); // every step overflows: skipped
   *   scaler.step(opt);
   *   scaler.update();
   * }
   * const s = await scaler.status();
   * console.log(s.scale, s.consecutiveSkips, s.problem);
   * // 1 3 "3 consecutive steps were skipped (Inf/NaN gradients; the scale backed off to 1)"
   * ```
   */
  async status(): Promise<GradScalerStatus> {
    if (!this.#enabled) return { scale: 1, consecutiveSkips: 0, skippedSteps: 0, problem: null };
    const [s, c] = await Promise.all([this.#lazyInit()[0].item(), this.#skipCounts().toArray()]);
    const [consecutiveSkips, skippedSteps] = [c[0], c[1]];
    let problem: string | null = null;
    if (consecutiveSkips >= this.#maxSkips) {
      problem = `${consecutiveSkips} consecutive steps were skipped (Inf/NaN gradients; the ` +
        `scale backed off to ${s})`;
    } else if (s < this.#minScale) {
      problem = `the loss scale fell to ${s}, below minScale ${this.#minScale} (Inf/NaN ` +
        `gradients even at a scale that shrinks them)`;
    }
    return { scale: s, consecutiveSkips, skippedSteps, problem };
  }

  /** The current scale (reads it back); 1 when disabled. */
  async getScale(): Promise<number> {
    if (!this.#enabled) return 1;
    return await this.#lazyInit()[0].item();
  }

  /** The growth factor. */
  getGrowthFactor(): number {
    return this.#growthFactor;
  }

  /** Sets the growth factor (> 1). */
  setGrowthFactor(v: number): void {
    checkFactors(v, this.#backoffFactor, this.#growthInterval, "GradScaler.setGrowthFactor()");
    this.#growthFactor = v;
  }

  /** The backoff factor. */
  getBackoffFactor(): number {
    return this.#backoffFactor;
  }

  /** Sets the backoff factor (in (0, 1)). */
  setBackoffFactor(v: number): void {
    checkFactors(this.#growthFactor, v, this.#growthInterval, "GradScaler.setBackoffFactor()");
    this.#backoffFactor = v;
  }

  /** The growth interval. */
  getGrowthInterval(): number {
    return this.#growthInterval;
  }

  /** Sets the growth interval (a positive integer). */
  setGrowthInterval(v: number): void {
    checkFactors(this.#growthFactor, this.#backoffFactor, v, "GradScaler.setGrowthInterval()");
    this.#growthInterval = v;
  }

  /**
   * The state, without waiting for the GPU: the scale and the tracker as device copies
   * (tensors the caller owns: read them with `item()`, free them with `dispose()`), the
   * factors and the interval as numbers; `{}` when disabled, as PyTorch.
   */
  stateDict(): GradScalerState | Record<string, never> {
    if (!this.#enabled) return {};
    const [scale, tracker] = this.#lazyInit();
    const copy = (t: Tensor) => Tensor.empty(t.shape, t.dt, "other").copy_(t);
    return {
      scale: copy(scale),
      growthFactor: this.#growthFactor,
      backoffFactor: this.#backoffFactor,
      growthInterval: this.#growthInterval,
      growthTracker: copy(tracker),
    };
  }

  /**
   * Restores a state from `stateDict()` (copies its tensors on the device, or writes plain
   * numbers; no readback). The tensors stay the caller's.
   */
  loadStateDict(sd: GradScalerState | Record<string, never>): void {
    if (!this.#enabled) return;
    const op = "GradScaler.loadStateDict()";
    if (!sd || typeof sd !== "object" || Object.keys(sd).length === 0) {
      throw new ValueError(
        `${op}: the source state dict is empty, possibly because it was saved from a scaler ` +
          `that was not enabled`,
      );
    }
    const s = sd as GradScalerState;
    for (const k of ["growthFactor", "backoffFactor", "growthInterval"] as const) {
      if (typeof s[k] !== "number") throw new ValueError(`${op}: '${k}' must be a number`);
    }
    const oneOf = (k: "scale" | "growthTracker", dt: string) => {
      const v = s[k];
      if (typeof v === "number" || (k === "growthTracker" && v === undefined)) return;
      if (!isTensor(v) || v.size !== 1 || v.dtype !== dt) {
        throw new ValueError(
          `${op}: '${k}' must be a number or a one-element ${dt} tensor (as stateDict() ` +
            `gives it), got ${
              isTensor(v) ? `a tensor of shape [${v.shape}] and dtype ${v.dtype}` : typeof v
            }`,
        );
      }
    };
    oneOf("scale", "f32");
    oneOf("growthTracker", "i32");
    if (typeof s.scale === "number" && (!(s.scale > 0) || !Number.isFinite(s.scale))) {
      throw new ValueError(`${op}: scale must be a finite number > 0, got ${s.scale}`);
    }
    checkFactors(s.growthFactor, s.backoffFactor, s.growthInterval, op);
    const t = s.growthTracker;
    if (typeof t === "number" && (!Number.isSafeInteger(t) || t < 0 || t >= s.growthInterval)) {
      throw new ValueError(
        `${op}: growthTracker must be an integer in [0, growthInterval ${s.growthInterval}), ` +
          `got ${t}`,
      );
    }
    if (typeof s.scale === "number") this.#initScale = s.scale;
    this.#growthFactor = s.growthFactor;
    this.#backoffFactor = s.backoffFactor;
    this.#growthInterval = s.growthInterval;
    const [scale, tracker] = this.#lazyInit();
    const rt = currentRuntime();
    if (typeof s.scale === "number") rt.write(scale.buffer(op), new Float32Array([s.scale]));
    else rt.copy(s.scale.buffer(op), 0, scale.buffer(op), 0, 4);
    if (typeof s.growthTracker === "number") {
      rt.write(tracker.buffer(op), new Int32Array([s.growthTracker]));
    } else if (isTensor(s.growthTracker)) {
      rt.copy(s.growthTracker.buffer(op), 0, tracker.buffer(op), 0, 4);
    }
    if (this.#skips !== null && !this.#skips.disposed) {
      rt.write(this.#skips.buffer(op), new Int32Array(2)); // status() counts from here
    }
  }

  /** Frees the scaler's device buffers. */
  dispose(): void {
    for (
      const t of [this.#scale, this.#tracker, this.#combined, this.#skips, ...this.#found.values()]
    ) {
      t?.dispose();
    }
    this.#scale =
      this.#tracker =
      this.#combined =
      this.#skips =
        null;
    this.#found.clear();
    this.#stages.clear();
  }
}

function checkFactors(growth: unknown, backoff: unknown, interval: unknown, op: string): void {
  if (typeof growth !== "number" || !(growth > 1) || !Number.isFinite(growth)) {
    throw new ValueError(`${op}: growthFactor must be a finite number > 1, got ${String(growth)}`);
  }
  if (typeof backoff !== "number" || !(backoff > 0 && backoff < 1)) {
    throw new ValueError(`${op}: backoffFactor must be a number in (0, 1), got ${String(backoff)}`);
  }
  if (
    !Number.isSafeInteger(interval) || (interval as number) <= 0 ||
    (interval as number) > 2 ** 31 - 1
  ) {
    throw new ValueError(
      `${op}: growthInterval must be a positive integer, got ${String(interval)}`,
    );
  }
}

/**
 * A one-thread program of the scaler's bookkeeping (`gradScaler|<key>`, labelled
 * "GradScaler.update"): `bindings` and `uniforms` as `program` takes them, `body` the
 * statements of its kernel.
 */
function oneThread<
  const B extends readonly BindingSpec[],
  const U extends readonly UniformSpec[] = readonly [],
>(
  rt: Runtime,
  key: string,
  bindings: B,
  body: string,
  uniforms?: U,
): Program<B[number]["name"], U[number]["name"]> {
  return program(rt, `gradScaler|${key}`, {
    label: "GradScaler.update",
    bindings,
    uniforms,
    workgroupSize: 1,
  }, () => `fn kernel(wg: u32, lid: vec3u, li: u32) {\n${body}\n}`);
}

/** `_amp_update_scale_`, one thread. */
function updateProgram(rt: Runtime) {
  return oneThread(
    rt,
    "update",
    [
      { name: "scale", type: "f32", access: "read_write" },
      { name: "tracker", type: "i32", access: "read_write" },
      { name: "found", type: "u32", access: "read" },
    ],
    `  if (found[0] != 0u) {
    scale[0] = scale[0] * u.backoff;
    tracker[0] = 0;
  } else {
    let successful = tracker[0] + 1;
    if (successful == u.interval) {
      let grown = scale[0] * u.growth;
      if ((bitcast<u32>(grown) & 0x7f800000u) != 0x7f800000u) { scale[0] = grown; }
      tracker[0] = 0;
    } else {
      tracker[0] = successful;
    }
  }`,
    [
      { name: "growth", type: "f32" },
      { name: "backoff", type: "f32" },
      { name: "interval", type: "i32" },
    ],
  );
}

/** Skipped-step counts: [consecutive, total] after a step whose found_inf is `found[0]`. */
function skipsProgram(rt: Runtime) {
  return oneThread(
    rt,
    "skips",
    [
      { name: "skips", type: "i32", access: "read_write" },
      { name: "found", type: "u32", access: "read" },
    ],
    `  if (found[0] != 0u) {
    skips[0] = skips[0] + 1;
    skips[1] = skips[1] + 1;
  } else {
    skips[0] = 0;
  }`,
  );
}

/** dst[0] |= src[0], one thread (found_inf of several optimizers combined). */
function orProgram(rt: Runtime) {
  return oneThread(
    rt,
    "or",
    [
      { name: "dst", type: "u32", access: "read_write" },
      { name: "src", type: "u32", access: "read" },
    ],
    "  dst[0] = dst[0] | src[0];",
  );
}

/** Element groups per invocation in one chunk of the unscale kernel. */
const ITEMS = 16;

/** The unscale kernel of one dtype: x *= 1/scale in place, found |= any non-finite x. */
function unscaleProgram(rt: Runtime, dt: DType): Program {
  return inPlaceProgram(rt, dt, {
    label: "GradScaler.unscale",
    key: "unscale",
    bindings: [
      { name: "scale", type: "f32", access: "read" },
      { name: "found", type: "atomic<u32>", access: "read_write" },
    ],
    items: ITEMS,
    helpers:
      `fn nonfinite(v: f32) -> bool { return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u; }
// 1/scale: exact (bit arithmetic) for a normal power of two, else a division
fn recip(v: f32) -> f32 {
  let b = bitcast<u32>(v);
  let ex = (b >> 23u) & 0xffu;
  if ((b & 0x807fffffu) == 0u && ex >= 1u && ex <= 253u) { return bitcast<f32>((254u - ex) << 23u); }
  return 1.0 / v;
}`,
    prelude: "  let inv = recip(scale[0]);\n  var bad = false;",
    lane: (a, v) => `bad = bad || nonfinite(${a}); ${v} = select(${a} * inv, ${a}, inv == 1.0);`,
    epilogue: "  if (bad) { atomicOr(&found[0], 1u); }",
  });
}

/**
 * Unscales `grads` in place (one dispatch per gradient, per window of one larger than a
 * storage binding; no staging copy), flagging Inf/NaN.
 */
function unscaleGrads(
  rt: Runtime,
  grads: readonly Tensor[],
  scale: Tensor,
  found: Tensor,
  op: string,
): void {
  for (const [dt, gs] of byDtype(op, grads)) {
    const p = unscaleProgram(rt, dt);
    for (const g of gs) runInPlace(p, g, op, ITEMS, { scale, found });
  }
}
