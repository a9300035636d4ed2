// The training run shared by the examples (train_gpt, precision_compare, demo): a character
// GPT under a precision strategy (DESIGN.md section 4) with AdamW and a cosine schedule, one
// step at a time, with evaluation, diagnostics of what low precision lost, a JSONL log,
// progress, checkpoints and resume. Not part of the library's public API.
//
//   const corpus = await loadCorpus();
//   const trainer = new Trainer({ ...DEFAULT_RUN, precision: "collage-light" }, corpus);
//   const result = await runTraining(trainer, { progress: new Progress({ total: 300 }) });

import {
  AdamW,
  applyPrecision,
  autocast,
  type AutocastOptions,
  type CheckpointInfo,
  cosineWithWarmup,
  type Diagnostics,
  dtype,
  FP8Recipe,
  fp8Recipe,
  GPT,
  GradScaler,
  type GradScalerStatus,
  isFloat,
  keep,
  loadCheckpoint,
  manualSeed,
  memory,
  precisionNames,
  precisionStrategy,
  readCheckpoint,
  type Rounding,
  saveCheckpoint,
  sharpness,
  type Stateful,
  type Tensor,
  tidy,
  ValueError,
} from "../mod.ts";
import { Batches, type Corpus, evaluate } from "./_text.ts";
import { excerpt } from "../nn/_excerpt.ts";
import type { JsonlLog, Progress } from "./_progress.ts";

/** Everything that decides a run's trajectory (saved in its checkpoints). */
export interface RunConfig {
  /** A strategy of `precisionNames()` or a simulated float format (`e8m3`). */
  precision: string;
  /** Rounding of the autocast casts of a simulated format. */
  rounding: Rounding;
  nLayer: number;
  nHead: number;
  nEmbd: number;
  /** Context length. */
  block: number;
  /** Optimizer steps the schedule spans. */
  steps: number;
  batch: number;
  /** Peak learning rate (cosine decay to a tenth of it after `warmup` steps). */
  lr: number;
  warmup: number;
  weightDecay: number;
  seed: number;
}

/** The defaults of the examples. */
export const DEFAULT_RUN: RunConfig = {
  precision: "fp32",
  rounding: "rne",
  nLayer: 2,
  nHead: 4,
  nEmbd: 128,
  block: 64,
  steps: 300,
  batch: 16,
  lr: 3e-3,
  warmup: 30,
  weightDecay: 0.1,
  seed: 1,
};

/** How a `--precision` name trains: the storage strategy, the autocast and the scaler. */
export interface Precision {
  name: string;
  /** The strategy of `applyPrecision` and the optimizer. */
  storage: string;
  autocast: AutocastOptions | null;
  gradScaler: boolean;
}

/** The valid `--precision` values, for help and errors. */
export function precisionChoices(): string[] {
  return [
    ...precisionNames(),
    "eXmY (a simulated format such as e8m3: f32 master weights)",
  ];
}

/**
 * Resolves a `--precision` name: a strategy of `precisionNames()` (`fp8-<recipe>` included:
 * its `autocastOptions` name the recipe), or a simulated float format run as autocast of
 * that dtype over f32 master weights (the `amp-bf16` storage).
 */
export function resolvePrecision(name: string, rounding: Rounding = "rne"): Precision {
  if (precisionNames().includes(name)) {
    const s = precisionStrategy(name);
    const ac = s.autocastOptions ? { ...s.autocastOptions } : null;
    return { name, storage: name, autocast: ac, gradScaler: s.gradScaler };
  }
  let ok = false;
  try {
    const d = dtype(name);
    ok = isFloat(d) && d.kind !== "mcf" && d.name !== "f32";
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new ValueError(`unknown precision '${name}'; valid: ${precisionChoices().join(", ")}`);
  }
  return { name, storage: "amp-bf16", autocast: { dtype: name, rounding }, gradScaler: false };
}

/** One optimizer step as the log records it. */
export interface StepRecord {
  step: number;
  loss: number;
  lr: number;
  ms: number;
  /** The GradScaler's scale after the step, when one is used. */
  scale?: number;
  /** What the GradScaler reported after the step (`GradScaler.status()`), when it blew up. */
  scalerProblem?: string;
  /** Last-token logit sharpness of this step's batch (Keskar's, DESIGN.md 4), when asked. */
  sharpness?: number;
  /** What low precision lost in this step (with diagnostics on). */
  imprecision?: number;
  edqRatio?: number;
  gradUnderflow?: number;
  gradOverflow?: number;
}

/** A step recorded by `Trainer.beginStep`, its values still being read. */
export interface PendingStep {
  step: number;
  lr: number;
  /** When the step began to be recorded (performance.now()). */
  t0: number;
  loss: Tensor;
  sharp: Tensor | null;
  values: Promise<
    [number, GradScalerStatus | undefined, Diagnostics | null, number | undefined]
  >;
}

/** A model, its optimizer (and scaler) and its data stream, stepped one step at a time. */
export class Trainer {
  precision: Precision;
  readonly model: GPT;
  readonly optimizer: AdamW;
  readonly scaler: GradScaler | null;
  /** Other checkpointed state by name (such as FP8 scaling state). */
  readonly extra: Record<string, Stateful> = {};
  readonly batches: Batches;
  /** Optimizer steps completed. */
  step = 0;
  /** Parameter + gradient + optimizer bytes per parameter, measured in the first step. */
  bytesPerParam = 0;
  readonly #schedule: (step: number) => number;
  /** What gradient underflow is counted against: a simulated format's dtype, else the default. */
  readonly #castDtype: { castDtype?: string };

  /**
   * A run of `config` on `corpus`: a fresh GPT of the configured size, or `init` (a model
   * built or loaded by the caller, f32 weights: a preset, a pretrained checkpoint), put into
   * the run's precision. The trainer owns the model from then on.
   */
  constructor(readonly config: RunConfig, readonly corpus: Corpus, init?: GPT) {
    const c = config;
    this.precision = resolvePrecision(c.precision, c.rounding);
    manualSeed(c.seed);
    const gpt = init ?? new GPT({
      vocabSize: corpus.tokenizer.vocabSize,
      blockSize: c.block,
      nLayer: c.nLayer,
      nHead: c.nHead,
      nEmbd: c.nEmbd,
      seed: c.seed,
    });
    this.model = applyPrecision(gpt, this.precision.storage);
    this.optimizer = new AdamW(this.model.parameters(), {
      lr: c.lr,
      betas: [0.9, 0.95],
      weightDecay: c.weightDecay,
      precision: this.precision.storage,
      seed: c.seed, // the random stream of stochastic rounding (bf16-sr) follows --seed
    });
    this.scaler = this.precision.gradScaler ? new GradScaler() : null;
    const ac = this.precision.autocast;
    if (ac?.dtype === "fp8") {
      // this run's own FP8 scaling state (amax histories, scales), saved with its checkpoints
      const recipe = ac.recipe instanceof FP8Recipe
        ? ac.recipe
        : ac.recipe !== undefined
        ? fp8Recipe(ac.recipe)
        : new FP8Recipe();
      this.precision = { ...this.precision, autocast: { ...ac, recipe } };
      this.extra.fp8 = recipe;
    }
    this.batches = new Batches(corpus.train, c.batch, c.block, c.seed);
    const simulated = !precisionNames().includes(c.precision) &&
      this.precision.storage === "amp-bf16";
    this.#castDtype = simulated ? { castDtype: c.precision } : {};
    this.#schedule = cosineWithWarmup({
      warmupSteps: Math.min(c.warmup, c.steps),
      totalSteps: c.steps,
      baseLr: c.lr,
      minLr: c.lr / 10,
    });
  }

  /** The number of parameters. */
  get nParams(): number {
    return this.model.parameters().reduce((a, p) => a + p.size, 0);
  }

  /** One optimizer step (reads the loss, and the diagnostics when asked). */
  async trainStep(
    opts: { diagnostics?: boolean; sharpness?: boolean } = {},
  ): Promise<StepRecord> {
    return await this.finishStep(this.beginStep(opts));
  }

  /**
   * Records one optimizer step and asks for what its record needs (the loss; the scaler's
   * status; the diagnostics and the sharpness when asked); `finishStep` awaits them. A read
   * gives the values of the work recorded before it was asked for, so the next step may be
   * recorded before this one is finished: the reads' waits (about 11 ms each in Deno) then
   * overlap that step's work (`runTraining` does so wherever nothing depends on this step).
   */
  beginStep(opts: { diagnostics?: boolean; sharpness?: boolean } = {}): PendingStep {
    const t0 = performance.now();
    const step = this.step + 1;
    const lr = this.#schedule(step - 1);
    const { model, optimizer: opt, scaler } = this;
    for (const g of opt.paramGroups) g.lr = lr;
    const diagnostics = !!opts.diagnostics && !scaler; // the scaler steps without them
    let phi: Tensor | null = null;
    const loss = tidy(() => {
      const { x, y } = this.batches.next();
      const forward = () => {
        const out = model.forward(x, y);
        if (opts.sharpness) phi = keep(sharpness(out.logits, y)); // no graph, on the device
        return out.loss!;
      };
      const ac = this.precision.autocast;
      const l = ac ? autocast(ac, forward) : forward();
      (scaler ? scaler.scale(l) as typeof l : l).backward();
      if (scaler) scaler.step(opt);
      else opt.step({ diagnostics: diagnostics && this.#castDtype });
      if (this.bytesPerParam === 0) {
        const m = memory().byPurpose;
        this.bytesPerParam = ((m.params ?? 0) + (m.grads ?? 0) + (m.optimizer ?? 0)) /
          this.nParams;
      }
      scaler?.update();
      opt.zeroGrad();
      return l.detach();
    });
    const sharp = phi as Tensor | null;
    this.step = step;
    const values = Promise.all([
      loss.item(),
      scaler?.status(),
      diagnostics ? opt.diagnostics() : null,
      sharp?.item(),
    ]);
    return { step, lr, t0, loss, sharp, values };
  }

  /** Awaits what `beginStep` asked for and returns the step's record. */
  async finishStep(p: PendingStep): Promise<StepRecord> {
    let value, status, diag, phiValue;
    try {
      [value, status, diag, phiValue] = await p.values;
    } finally {
      p.loss.dispose();
      p.sharp?.dispose();
    }
    const r: StepRecord = { step: p.step, loss: value, lr: p.lr, ms: 0 };
    if (status !== undefined) r.scale = status.scale;
    if (status?.problem) r.scalerProblem = status.problem;
    if (phiValue !== undefined) r.sharpness = phiValue;
    if (diag) {
      r.imprecision = diag.imprecision;
      r.edqRatio = diag.edqRatio;
      r.gradUnderflow = diag.gradUnderflow;
      r.gradOverflow = diag.gradOverflow;
    }
    r.ms = performance.now() - p.t0;
    return r;
  }

  /** The mean validation loss over `batches` fixed batches (no autocast: the stored weights). */
  evaluate(batches = 8): Promise<number> {
    const { val } = this.corpus;
    return evaluate(this.model, val, this.config.batch, this.config.block, batches, 1234);
  }

  /** Saves a checkpoint of the whole run at `path` (a .json file; tensors beside it). */
  save(path: string, meta: Record<string, unknown> = {}): Promise<void> {
    return saveCheckpoint(path, {
      model: this.model,
      optimizer: this.optimizer,
      scaler: this.scaler,
      extra: this.extra,
      step: this.step,
      data: { position: this.batches.position },
      meta: {
        ...meta,
        config: this.config,
        vocab: this.corpus.tokenizer.chars ?? null,
        tokenizer: this.corpus.tokenizer.name,
        data: { path: this.corpus.path, checksum: this.corpus.checksum },
      },
    });
  }

  /** Continues from a checkpoint of a run with the same configuration (see `checkResume`). */
  async resume(path: string): Promise<CheckpointInfo> {
    const info = await readCheckpoint(path);
    checkResume(path, info, this.config); // before anything is loaded
    await loadCheckpoint(path, {
      model: this.model,
      optimizer: this.optimizer,
      scaler: this.scaler,
      extra: this.extra,
    });
    this.batches.skipTo(info.step);
    this.step = info.step;
    return info;
  }

  /** Whether every parameter is finite (one readback): a checkpoint keeps only such weights. */
  async finite(): Promise<boolean> {
    const worst = tidy(() =>
      this.model.parameters().map((p) => p.cast("f32").abs().max()).reduce((a, b) => a.add(b))
    );
    const v = await worst.item();
    worst.dispose();
    return Number.isFinite(v);
  }

  /** Frees the model, the optimizer state, the scaler and the extra state. */
  dispose(): void {
    for (const p of this.model.parameters()) p.dispose();
    this.optimizer.dispose();
    this.scaler?.dispose();
    for (const e of Object.values(this.extra)) (e as { dispose?: () => void }).dispose?.();
  }
}

/**
 * Checks a checkpoint's step and data position against its run's configuration before a
 * resume builds or loads anything: the step within the run's steps, and the data position
 * exactly the step (the trainer draws one batch per step), so a hand-edited position can
 * neither hang the data loader's skip nor start the data elsewhere.
 */
export function checkResume(path: string, info: CheckpointInfo, config: RunConfig): void {
  const bad = (what: string): never => {
    throw new ValueError(
      `resume: ${path}: ${what}; the checkpoint was changed after it was written, or comes ` +
        `from another program`,
    );
  };
  if (info.step > config.steps) {
    bad(`its step ${info.step} is beyond the run's ${config.steps} steps`);
  }
  const position = (info.data as { position?: unknown } | null)?.position;
  if (position !== info.step) {
    bad(
      `its data position ${
        typeof position === "number" ? position : excerpt(position)
      } is not its step ${info.step} (one batch per step)`,
    );
  }
}

/** The checkpoint of this run that is known good: written after a step with finite weights. */
export interface GoodCheckpoint {
  path: string;
  step: number;
}

/** Options of `runTraining`. */
export interface RunOptions {
  progress: Progress;
  /** Where each step and evaluation is appended (null: nowhere). */
  log?: JsonlLog | null;
  /** Fields added to every log record (the demo's `strategy`). */
  fields?: Record<string, unknown>;
  /** Evaluate every N steps and at the end (0: never). */
  evalEvery?: number;
  /** Batches per evaluation. */
  evalBatches?: number;
  /** Diagnostics every N steps (0: never). */
  diagEvery?: number;
  /** Checkpoint path (a .json file), written every `checkpointEvery` steps and at the end. */
  checkpoint?: string | null;
  checkpointEvery?: number;
  /** Meta stored in the checkpoints. */
  meta?: Record<string, unknown>;
  /** Stop after this step (a checkpoint is written); the schedule still spans all steps. */
  stopAfter?: number;
  /**
   * Stop at a blow-up: the first non-finite loss (runs without a GradScaler), the GradScaler's
   * report (`GradScaler.status()`: the scale below its floor, or too many skipped steps in a
   * row), or weights that are no longer finite when a checkpoint is due. Without it, each is
   * a warning (`warn` and a `warning` record in the log) and the run goes on; weights that are
   * not finite are never written over the last good checkpoint.
   */
  stopOnNan?: boolean;
  /** Where warnings go (default: the progress output). */
  warn?: (text: string) => void;
  /** The last good checkpoint of this run before this call (the one it resumed from). */
  lastGood?: GoodCheckpoint | null;
  /** Log the last-token sharpness every N steps (0 or absent: never). */
  sharpnessEvery?: number;
}

/** What `runTraining` did. */
export interface RunResult {
  records: StepRecord[];
  evals: { step: number; valLoss: number }[];
  /** Why the run stopped before its last step, or null. */
  stopped: { step: number; reason: string } | null;
  /** The last checkpoint of this run written with finite weights (or resumed from), if any. */
  lastGood: GoodCheckpoint | null;
  /** Wall time of the steps in this call, ms. */
  ms: number;
}

/** Runs `trainer` from its current step to the end (or `stopAfter`), logging each step. */
export async function runTraining(trainer: Trainer, o: RunOptions): Promise<RunResult> {
  const { config } = trainer;
  const last = Math.min(config.steps, o.stopAfter ?? config.steps);
  const result: RunResult = {
    records: [],
    evals: [],
    stopped: null,
    lastGood: o.lastGood ?? null,
    ms: 0,
  };
  const tokens = config.batch * config.block;
  const write = (r: Record<string, unknown>) => o.log?.append({ ...o.fields, ...r });
  const warned = new Set<string>(); // one warning per kind of blow-up
  const warn = (step: number, kind: string, message: string) => {
    if (warned.has(kind)) return;
    warned.add(kind);
    write({ type: "warning", step, message });
    (o.warn ?? ((t: string) => o.progress.note(t)))(`warning: step ${step}: ${message}`);
  };
  const begin = () => {
    const step = trainer.step + 1;
    return trainer.beginStep({
      diagnostics: !!o.diagEvery && step % o.diagEvery === 0,
      sharpness: !!o.sharpnessEvery && step % o.sharpnessEvery === 0,
    });
  };
  const t0 = performance.now();
  let done = t0;
  let pending: PendingStep | null = null;
  while (pending !== null || trainer.step < last) {
    const current: PendingStep = pending ?? begin();
    const step = current.step;
    const end = step === last;
    const evalDue = !!o.evalEvery && (step % o.evalEvery === 0 || step === config.steps);
    const saveDue = !!o.checkpoint &&
      (end || (!!o.checkpointEvery && step % o.checkpointEvery === 0));
    // The next step is recorded before this one's values are read, so that its work overlaps
    // their wait, unless something depends on the state after this step: an evaluation, a
    // checkpoint, or a stop (--stop-on-nan). The records are the same either way.
    pending = !o.stopOnNan && !evalDue && !saveDue && !end ? begin() : null;
    let r: StepRecord;
    try {
      r = await trainer.finishStep(current);
    } catch (e) {
      if (pending !== null) await trainer.finishStep(pending).catch(() => {});
      throw e;
    }
    // wall time per step: since the previous step's record (steps overlap)
    const now = performance.now();
    r.ms = now - done;
    done = now;
    result.records.push(r);
    write({ type: "step", ...r, loss: Number.isFinite(r.loss) ? r.loss : String(r.loss) });
    o.progress.update(step, { loss: r.loss, tokens, ms: r.ms, scale: r.scale });
    if (!Number.isFinite(r.loss) && !trainer.scaler) {
      if (o.stopOnNan) {
        result.stopped = { step, reason: `the loss is ${r.loss} at step ${step}` };
        break;
      }
      warn(step, "loss", `the loss is ${r.loss} (stop at the first with --stop-on-nan)`);
    }
    if (r.scalerProblem) {
      if (o.stopOnNan) {
        result.stopped = { step, reason: `${r.scalerProblem} at step ${step}` };
        break;
      }
      warn(step, "scaler", `${r.scalerProblem} (stop here with --stop-on-nan)`);
    } else warned.delete("scaler");
    if (evalDue) {
      const valLoss = await trainer.evaluate(o.evalBatches);
      result.evals.push({ step, valLoss });
      write({ type: "eval", step, valLoss });
      o.progress.note(`step ${step}: validation loss ${valLoss.toFixed(4)}`);
    }
    if (saveDue && o.checkpoint) {
      // a checkpoint is written only of a healthy state: it replaces the last good one
      const healthy = Number.isFinite(r.loss) && !r.scalerProblem;
      if (!healthy) {
        warn(
          step,
          "unhealthy",
          `no checkpoint is written at step ${step} (${
            r.scalerProblem ?? `the loss is ${r.loss}`
          }); the last good one is kept`,
        );
      } else if (await trainer.finite()) {
        await trainer.save(o.checkpoint, o.meta);
        result.lastGood = { path: o.checkpoint, step };
      } else if (o.stopOnNan) {
        result.stopped = { step, reason: `the weights hold NaN or Inf after step ${step}` };
        break;
      } else {
        warn(
          step,
          "weights",
          `the weights hold NaN or Inf: no checkpoint is written over the last good one`,
        );
      }
    }
  }
  result.ms = performance.now() - t0;
  o.progress.done();
  return result;
}
