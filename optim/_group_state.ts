/**
 * The state of one parameter group and its step: per parameter its own state tensors
 * (purpose "optimizer", allocated zero-filled on the parameter's first update), its step
 * count (on the host, or on the device once a skip flag was bound), and the dispatches of a
 * step: one update kernel per parameter tensor with a gradient, in place (`_update_kernel.ts`).
 *
 * Device step counts (GradScaler): from the first step given a `found_inf` flag on, a group
 * keeps its step counts in a u32 tensor (purpose "optimizer", 4 bytes per parameter tensor).
 * The update kernels read the count of their parameter and the flag; after them, one small
 * program adds 1 to the counts of the parameters updated unless the flag is set. The host
 * count stays an upper bound (it says which parameters have state). A group never moves its
 * counts back to the host.
 *
 * @module
 */

import { ShapeError, ValueError } from "../errors.ts";
import { currentRuntime, type Program, program, type Runtime, storageBytes } from "../gpu/mod.ts";
import { noGrad } from "../autograd/mod.ts";
import { randomU32 } from "../dtypes/mod.ts";
import { float32 } from "../dtypes/mod.ts";
import { fmtShape, keep, Tensor, tensor, zeros } from "../tensor/mod.ts";
import { DiagBuffers } from "./_diagnostics.ts";
import { zeroFlag } from "./_inplace.ts";
import {
  type KernelMode,
  quadKernel,
  scaleCommitKernel,
  updateChunk,
  updateKernel,
  type UpdateProgram,
  updateRanges,
  updateRuns,
} from "./_update_kernel.ts";
import type { StateSpec } from "./rule.ts";

/** What one `GroupState.step` does besides the update (see `KernelMode`). */
export interface StepRun {
  /** A u32 tensor whose first word, when non-zero, makes the step a no-op on the device. */
  readonly foundInf?: Tensor | null;
  /** Diagnostics on: the dtype gradients are checked against; null or absent: off. */
  readonly diag?: KernelMode["diag"];
}

/** Adds 1 to the device step count of each listed parameter unless the skip flag is set. */
function advanceProgram(rt: Runtime) {
  return program(rt, "optim|advanceSteps", {
    label: "advanceSteps",
    bindings: [
      { name: "steps", type: "u32", access: "read_write" },
      { name: "ids", type: "u32", access: "read" },
      { name: "finf", type: "u32", access: "read" },
    ],
    uniforms: [{ name: "n", type: "u32" }],
    workgroupSize: 64,
  }, () =>
    `fn kernel(wg: u32, lid: vec3u, li: u32) {
  let i = wg * 64u + li;
  if (i < u.n && finf[0] == 0u) { steps[ids[i]] = steps[ids[i]] + 1u; }
}`);
}

/**
 * The storage and the step of one parameter group: per-parameter states and step counts,
 * and the diagnostics of its last step.
 */
export class GroupState {
  /** The group's parameters, in order. */
  readonly params: readonly Tensor[];
  /**
   * Number of updates each parameter has had (Adam's `step`), counted on the host. Once the
   * counts live on the device (`deviceSteps`), the number of steps the parameter took part in,
   * skipped ones included (an upper bound; > 0 means the parameter has state).
   */
  readonly steps: number[];
  /**
   * The random stream of each parameter for strategies that round stochastically: its seed
   * (u32, from the optimizer's seed and the parameter's index) ...
   */
  readonly rngSeeds: number[];
  /**
   * ... and its counter: the updates that drew from it (one per step the parameter had a
   * gradient in, skipped ones included). Update c of parameter i draws its bits at
   * `ulp_rand(randomU32(rngSeeds[i], c) ^ stream, element)`.
   */
  readonly rngCounters: number[];
  #label: string;
  #specs: StateSpec[] | null = null;
  #states: (Map<string, Tensor> | null)[];
  /** Per parameter, the scales of its scaled states (u32 words: scale bits, amax bits). */
  #scales: (Tensor | null)[];
  #devSteps: Tensor | null = null;
  #ids: Tensor | null = null;
  #idsKey = "";
  #diag = new DiagBuffers();

  /**
   * The state of `params`, for errors named after optimizer `label`; `rngSeeds` the seeds
   * of their random streams (default 0).
   */
  constructor(label: string, params: readonly Tensor[], rngSeeds?: readonly number[]) {
    this.#label = label;
    this.params = params;
    this.steps = params.map(() => 0);
    this.rngSeeds = params.map((_, i) => (rngSeeds?.[i] ?? 0) >>> 0);
    this.rngCounters = params.map(() => 0);
    this.#states = params.map(() => null);
    this.#scales = params.map(() => null);
  }

  /** The state specs every parameter with state keeps (empty before the first step or load). */
  get states(): readonly StateSpec[] {
    return this.#specs ?? [];
  }

  /** The device step counts (u32, one per parameter), or null while they live on the host. */
  get deviceSteps(): Tensor | null {
    return this.#devSteps;
  }

  /**
   * Moves the step counts to the device (once; a group stays there): a u32 tensor initialised
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

  /**
   * Sets the states every parameter keeps: a parameter with state keeps the tensors of the
   * same name and dtype, gets zero-filled tensors for new ones, and frees those no longer
   * named.
   */
  prepare(specs: readonly StateSpec[]): void {
    const same = this.#specs !== null && specs.length === this.#specs.length &&
      specs.every((s, k) => s.name === this.#specs![k].name && s.dtype === this.#specs![k].dtype);
    if (same) return;
    this.#specs = specs.map((s) => ({ name: s.name, dtype: s.dtype }));
    this.#states.forEach((m, i) => {
      if (m) this.#states[i] = this.#reconcile(i, m);
    });
  }

  #reconcile(i: number, old: Map<string, Tensor>): Map<string, Tensor> {
    const p = this.params[i];
    const next = new Map<string, Tensor>();
    for (const s of this.#specs!) {
      const t = old.get(s.name);
      if (t && t.dt === s.dtype) {
        next.set(s.name, t);
        old.delete(s.name);
      } else {
        next.set(s.name, keep(zeros(p.shape, { dtype: s.dtype, purpose: "optimizer" })));
      }
    }
    for (const t of old.values()) t.dispose();
    return next;
  }

  /** Parameter `i`'s state tensors, allocated (zero-filled) on first use. */
  #stateOf(i: number): Map<string, Tensor> {
    let m = this.#states[i];
    if (!m) this.#states[i] = m = this.#reconcile(i, new Map());
    return m;
  }

  /**
   * Parameter `i`'s scales buffer for `k` scaled states: word 2j the scale of state j (f32
   * bits, 1.0 at first), word 2j + 1 the amax of the pass in progress (0 between steps).
   */
  #scalesOf(i: number, k: number): Tensor {
    let t = this.#scales[i];
    if (t && t.size !== 2 * k) {
      t.dispose();
      t = null;
    }
    if (!t) {
      const init = new Uint32Array(2 * k);
      for (let j = 0; j < k; j++) init[2 * j] = 0x3f800000; // 1.0
      t = this.#scales[i] = keep(tensor(init, { dtype: "u32", purpose: "optimizer" }));
    }
    return t;
  }

  /** Parameter `i`'s scale of scaled state `k` (of `count`), as a one-element f32 tensor. */
  readScale(i: number, k: number, count: number): Tensor {
    const src = this.#scalesOf(i, count);
    const out = Tensor.empty([1], float32, "optimizer");
    currentRuntime().copy(src.buffer("stateDict()"), 8 * k, out.buffer("stateDict()"), 0, 4);
    return out;
  }

  /** Sets parameter `i`'s scale of scaled state `k` (of `count`) from a one-element tensor. */
  writeScale(i: number, k: number, count: number, v: Tensor): void {
    const dst = this.#scalesOf(i, count);
    const c = v.dt === float32 ? v : noGrad(() => v.cast(float32));
    currentRuntime().copy(c.buffer("loadStateDict()"), 0, dst.buffer("loadStateDict()"), 8 * k, 4);
    if (c !== v) c.dispose();
  }

  /** Frees every parameter's states and scales (their slots empty). */
  #freeStates(): void {
    this.#scales.forEach((t, i) => {
      t?.dispose();
      this.#scales[i] = null;
    });
    this.#states.forEach((m, i) => {
      if (m) { for (const t of m.values()) t.dispose(); }
      this.#states[i] = null;
    });
  }

  /** Frees every state and zeroes every step count (before loading a state dict). */
  resetStates(): void {
    this.#freeStates();
    this.steps.fill(0);
    this.rngCounters.fill(0);
    if (this.#devSteps) {
      currentRuntime().write(
        this.#devSteps.buffer("loadStateDict()"),
        new Uint32Array(this.params.length),
      );
    }
  }

  /** A copy of parameter `i`'s state `name` (a tensor the caller owns). */
  readState(i: number, name: string): Tensor {
    const t = this.#stateOf(i).get(name);
    if (!t) throw new ValueError(`${this.#label}: no optimizer state '${name}'`);
    const out = Tensor.empty(t.shape, t.dt, "optimizer");
    currentRuntime().copy(
      t.buffer("stateDict()"),
      0,
      out.buffer("stateDict()"),
      0,
      storageBytes(t.dt, t.size),
    );
    return out;
  }

  /** Writes `src` (cast to the state's dtype) into parameter `i`'s state `name`. */
  writeState(i: number, name: string, src: Tensor, where: string): void {
    const t = this.#stateOf(i).get(name);
    if (!t) throw new ValueError(`${this.#label}: no optimizer state '${name}'`);
    const p = this.params[i];
    if (src.size !== p.size || src.shape.some((v, d) => v !== p.shape[d])) {
      throw new ShapeError(
        `${this.#label}.loadStateDict(): ${where}.${name} has shape ${
          fmtShape(src.shape)
        } but the parameter has shape ${fmtShape(p.shape)}`,
      );
    }
    const c = src.dt === t.dt ? src : noGrad(() => src.cast(t.dt));
    currentRuntime().copy(
      c.buffer("loadStateDict()"),
      0,
      t.buffer("loadStateDict()"),
      0,
      storageBytes(t.dt, p.size),
    );
    if (c !== src) c.dispose();
  }

  /**
   * The diagnostics of this group's last step with diagnostics on: the counter buffer (u32,
   * `DIAG_COUNTERS` order) and the sums [<e,u>, ||u||^2] (f32), or null when that step
   * updated nothing here or a step without diagnostics ran since.
   */
  get diagnostics(): { counters: Tensor; sums: Tensor } | null {
    return this.#diag.result;
  }

  /** Frees every tensor. */
  dispose(): void {
    this.#freeStates();
    for (const t of [this.#devSteps, this.#ids]) t?.dispose();
    this.#devSteps = this.#ids = null;
    this.#idsKey = "";
    this.#diag.dispose();
  }

  /**
   * One update of every parameter that has a gradient, in place: one update kernel per
   * parameter tensor (more when a tensor is larger than one binding). `hyper` holds the
   * hyperparameter uniforms by name; `perStepOf(t)` the per-step values of update number t
   * (host step counts). With `run.foundInf` (or once the group's counts live on the device),
   * the step counts and per-step values are on the device and the kernels skip when the
   * flag is set; with `run.diag`, the diagnostics are accumulated. Returns the number of
   * update dispatches recorded (casts of mismatched gradients and the small bookkeeping
   * dispatches excluded).
   */
  step(
    op: string,
    prog: UpdateProgram,
    hyper: Readonly<Record<string, number>>,
    perStepOf: (t: number) => Readonly<Record<string, number>>,
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
    this.#diag.clear();
    if (active.length === 0) return 0;
    const rt = currentRuntime();
    this.prepare(prog.states);
    const kernel = updateKernel(rt, prog, mode);
    // scaled states: an amax pass first, and the scales committed after the update
    const K = prog.scaled.length;
    const amaxKernel = K > 0 ? updateKernel(rt, prog, { device, diag: null, amax: true }) : null;
    const commit = K > 0 ? scaleCommitKernel(rt, prog, device) : null;
    // tensors of whole groups (u32-word buffers, no diagnostics) take the quad kernel
    // (large ones, on CPU adapters, in runs of consecutive groups an invocation)
    const quadOf = (n: number) => quadKernel(rt, prog, mode, n);
    const runsOf = (n: number) => quadOf(n) && updateRuns(rt, prog, n);
    // each quad kernel (strided or in runs; update or amax pass) resolved once a step, when a
    // tensor first needs it
    const quadKernels = new Map<string, Program>();
    const quadKernelOf = (n: number, amax: boolean): Program => {
      const runs = runsOf(n), k = `${runs}|${amax}`;
      let q = quadKernels.get(k);
      if (q === undefined) {
        q = amax
          ? updateKernel(rt, prog, { device, diag: null, amax: true, quad: true, runs })
          : updateKernel(rt, prog, { ...mode, quad: true, runs });
        quadKernels.set(k, q);
      }
      return q;
    };
    const chunkOf = (n: number) => updateChunk(rt, prog, quadOf(n), runsOf(n));
    const flag = device ? (run.foundInf ?? zeroFlag(rt)) : null;
    const workgroups = active.reduce(
      (a, i) => a + Math.ceil(this.params[i].size / chunkOf(this.params[i].size)),
      0,
    );
    const diag = mode.diag ? this.#diag.begin(workgroups, op) : null;
    const uniforms: Record<string, number> = { one: 1 };
    for (const [k, v] of Object.entries(hyper)) uniforms[`h${k}`] = v;
    const gradDt = prog.buffers[1].dtype;
    let pbase = 0, dispatches = 0;
    for (const i of active) {
      const p = this.params[i];
      const g = p.grad!;
      const gc = g.dt === gradDt ? g : noGrad(() => g.cast(gradDt));
      const t = ++this.steps[i];
      if (!device) {
        for (const [k, v] of Object.entries(perStepOf(t))) uniforms[`s${k}`] = v;
      }
      uniforms.n = p.size;
      uniforms.pidx = i;
      uniforms.pbase = pbase;
      if (prog.stochastic.length > 0) {
        uniforms.rkey = randomU32(this.rngSeeds[i], this.rngCounters[i]++);
      }
      const states = this.#stateOf(i);
      const buffers: Record<string, ReturnType<Tensor["buffer"]>> = {
        param: p.buffer(op),
        grad: gc.buffer(op),
      };
      for (const s of prog.states) buffers[s.name] = states.get(s.name)!.buffer(op);
      if (flag) {
        buffers.steps = this.#devSteps!.buffer(op);
        buffers.finf = flag.buffer(op);
      }
      if (diag) {
        buffers.partials = diag.partials.buffer(op);
        buffers.counters = diag.counters.buffer(op);
      }
      const isQuad = quadOf(p.size);
      const chunk = chunkOf(p.size);
      const ranges = updateRanges(rt, prog, isQuad, p.size, chunk);
      const before = rt.counters.dispatches;
      if (K > 0) {
        const scales = this.#scalesOf(i, K).buffer(op);
        const { partials: _p, counters: _c, ...plain } = buffers;
        (isQuad ? quadKernelOf(p.size, true) : amaxKernel!).run({
          buffers: { ...plain, scales },
          uniforms,
          groups: Math.ceil(p.size / chunk),
          ranges,
        });
        buffers.scales = scales;
      }
      (isQuad ? quadKernelOf(p.size, false) : kernel).run({
        buffers,
        uniforms,
        groups: Math.ceil(p.size / chunk),
        ranges,
      });
      dispatches += rt.counters.dispatches - before;
      if (commit) {
        commit.run({
          buffers: { scales: buffers.scales, ...(flag ? { finf: buffers.finf } : {}) },
          uniforms: { one: 1 },
          groups: 1,
        });
      }
      pbase += Math.ceil(p.size / chunk);
      if (gc !== g) gc.dispose();
    }
    if (diag) this.#diag.end(workgroups, op);
    if (device) {
      const key = active.join(",");
      if (key !== this.#idsKey || this.#ids === null) {
        this.#ids?.dispose();
        this.#ids = keep(tensor(Uint32Array.from(active), { dtype: "u32", purpose: "other" }));
        this.#idsKey = key;
      }
      advanceProgram(rt).run({
        buffers: {
          steps: this.#devSteps!.buffer(op),
          ids: this.#ids.buffer(op),
          finf: flag!.buffer(op),
        },
        uniforms: { n: active.length },
        groups: Math.ceil(active.length / 64),
      });
    }
    return dispatches;
  }
}
