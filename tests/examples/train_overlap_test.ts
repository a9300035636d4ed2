// runTraining records the next step before it reads the current one's loss (each read waits
// about 11 ms in Deno, which the next step's work then overlaps), except where something
// depends on the state after the step: an evaluation, a checkpoint, a stop. The reference is
// the same run one step at a time (`stopOnNan` turns the overlap off): the same records, the
// same evaluations, the same weights, bit for bit.
import assert from "node:assert/strict";
import {
  DEFAULT_RUN,
  type PendingStep,
  type RunConfig,
  runTraining,
  type StepRecord,
  Trainer,
} from "../../examples/_train.ts";
import { loadCorpus } from "../../examples/_text.ts";
import { Progress } from "../../examples/_progress.ts";

const corpus = await loadCorpus();
const STEPS = 8;
const config = (precision: string): RunConfig => ({
  ...DEFAULT_RUN,
  precision,
  nLayer: 1,
  nHead: 2,
  nEmbd: 16,
  block: 8,
  batch: 4,
  steps: STEPS,
  warmup: 2,
});
const quiet = () => new Progress({ total: STEPS, live: false, write: () => {} });
const withoutMs = ({ ms: _, ...r }: StepRecord) => r;

/** Runs `trainer` and logs the order of its step beginnings and finishings. */
async function logged(trainer: Trainer, o: Partial<Parameters<typeof runTraining>[1]>) {
  const order: string[] = [];
  const begin = trainer.beginStep.bind(trainer), finish = trainer.finishStep.bind(trainer);
  trainer.beginStep = (opts) => {
    const p = begin(opts);
    order.push(`b${p.step}`);
    return p;
  };
  trainer.finishStep = (p: PendingStep) => {
    order.push(`f${p.step}`);
    return finish(p);
  };
  const result = await runTraining(trainer, { progress: quiet(), ...o });
  return { result, order };
}

for (
  const [precision, o] of [
    ["bf16", { diagEvery: 1, sharpnessEvery: 3 }], // every step rewrites the diagnostics
    ["amp-f16", { evalEvery: 3, evalBatches: 2 }], // a GradScaler: its status read each step
  ] as const
) {
  Deno.test(`runTraining under ${precision} overlaps steps and gives the records and weights of one step at a time`, async () => {
    const trainers = [0, 1].map(() => new Trainer(config(precision), corpus));
    const overlapped = await logged(trainers[0], o);
    const sequential = await logged(trainers[1], { ...o, stopOnNan: true });
    // the overlap: step s + 1 begins before step s finishes, but where an evaluation reads
    // the weights after step s (and after the last step)
    const evals = "evalEvery" in o ? o.evalEvery : 0;
    for (let s = 1; s < STEPS; s++) {
      const b = overlapped.order.indexOf(`b${s + 1}`), f = overlapped.order.indexOf(`f${s}`);
      const barrier = evals > 0 && s % evals === 0;
      assert.ok(barrier ? f < b : b < f, `step ${s}: ${overlapped.order.join(" ")}`);
      const sb = sequential.order.indexOf(`b${s + 1}`), sf = sequential.order.indexOf(`f${s}`);
      assert.ok(sf < sb, "one step at a time");
    }
    assert.equal(overlapped.result.records.length, STEPS);
    assert.deepEqual(
      overlapped.result.records.map(withoutMs),
      sequential.result.records.map(withoutMs),
    );
    assert.ok(overlapped.result.records.every((r) => r.ms > 0));
    assert.deepEqual(overlapped.result.evals, sequential.result.evals);
    if (evals > 0) assert.equal(overlapped.result.evals.length, Math.floor(STEPS / evals) + 1);
    for (const t of trainers) t.dispose();
  });
}

Deno.test("runTraining's overlapped steps leave the weights of one step at a time", async () => {
  const a = new Trainer(config("collage-light"), corpus);
  const b = new Trainer(config("collage-light"), corpus);
  await runTraining(a, { progress: quiet() });
  await runTraining(b, { progress: quiet(), stopOnNan: true });
  assert.equal(a.step, STEPS);
  const pa = a.model.parameters(), pb = b.model.parameters();
  assert.equal(pa.length, pb.length);
  const [ca, cb] = await Promise.all([pa, pb].map((ps) => Promise.all(ps.map((p) => p.codes()))));
  ca.forEach((c, i) => assert.deepEqual(c, cb[i], `parameter ${i}`));
  for (const t of [a, b]) t.dispose();
});
