// Shared by the resume tests (fp8_resume_test.ts, fp8_resume_more_test.ts): a tiny GPT trained
// under an FP8 recipe, saved with saveCheckpoint (model, optimizer, recipe), loaded into fresh
// objects and continued, compared bit for bit with the uninterrupted run.
import assert from "node:assert/strict";
import { AdamW, autocast, GPT, loadCheckpoint, saveCheckpoint, tensor, tidy } from "../../mod.ts";
import { fp8Recipe, type FP8RecipeName } from "../../tensor/mod.ts";
import { rng, snapshot } from "./_reference.ts";

const DIR = "./.test-tmp/fp8_resume_test";
await Deno.mkdir(DIR, { recursive: true });
const CFG = { vocabSize: 16, blockSize: 8, nLayer: 1, nHead: 2, nEmbd: 32 };

const r = rng(13);
/** The batches of steps 0..4. */
const BATCHES = Array.from(
  { length: 5 },
  () =>
    Array.from({ length: 2 }, () => Int32Array.from({ length: 4 * 8 }, () => Math.floor(r() * 16))),
);

/** A fresh run: model (seeded), AdamW, and the recipe `name` with a short history. */
export function setup(name: FP8RecipeName, seed: number) {
  const model = new GPT({ ...CFG, seed });
  const optimizer = new AdamW(model.parameters(), { lr: 1e-2, weightDecay: 0.1 });
  const recipe = fp8Recipe(name, { amaxHistoryLen: 2, seed: 5 });
  return { model, optimizer, recipe };
}
export type Run = ReturnType<typeof setup>;

/** Step `k` of a run; returns the loss's f32 bits. */
export async function step(t: Run, k: number): Promise<number> {
  const [xs, ys] = BATCHES[k];
  const loss = tidy(() => {
    const x = tensor(xs, { shape: [4, 8] }), y = tensor(ys, { shape: [4, 8] });
    const l = autocast({ dtype: "fp8", recipe: t.recipe }, () => t.model.forward(x, y).loss!);
    l.backward();
    t.optimizer.step();
    t.optimizer.zeroGrad();
    return l.detach();
  });
  const v = await loss.item();
  loss.dispose();
  return new Uint32Array(Float32Array.of(v).buffer)[0];
}

/**
 * Weights, optimizer state and recipe state, the slot names left out (they carry parameter
 * ids; a loaded recipe takes the saved slots by position and names them on first use).
 */
export async function state(t: Run) {
  const rsd = t.recipe.stateDict();
  const out = {
    model: await snapshot(t.model.stateDict()),
    optimizer: await snapshot(t.optimizer.stateDict()),
    recipe: await snapshot({ ...rsd, slots: null }),
  };
  for (const k of ["amaxHistory", "scale", "amax"] as const) rsd[k].dispose();
  return out;
}

export function free(t: Run): void {
  for (const p of t.model.parameters()) p.dispose();
  t.optimizer.dispose();
  t.recipe.dispose();
}

/**
 * Runs `steps` steps uninterrupted, and `saveAt` steps, a checkpoint, a fresh run loaded from
 * it and the rest; asserts both end the same bit for bit. Returns the uninterrupted run's end
 * state and the checkpoint's path.
 */
export async function resumeMatches(name: FP8RecipeName, steps: number, saveAt: number) {
  const a = setup(name, 1);
  const lossesA: number[] = [];
  for (let k = 0; k < steps; k++) lossesA.push(await step(a, k));
  const endA = await state(a);

  const b = setup(name, 1);
  for (let k = 0; k < saveAt; k++) assert.equal(await step(b, k), lossesA[k]);
  const path = `${DIR}/${name}.json`;
  await saveCheckpoint(path, {
    model: b.model,
    optimizer: b.optimizer,
    extra: { fp8: b.recipe },
    step: saveAt,
  });
  const saved = await state(b);
  free(b);

  const c = setup(name, 99); // other weights, a recipe that has seen nothing
  await loadCheckpoint(path, { model: c.model, optimizer: c.optimizer, extra: { fp8: c.recipe } });
  assert.deepEqual(await state(c), saved, "the loaded state is the saved one");
  const lossesC: number[] = [];
  for (let k = saveAt; k < steps; k++) lossesC.push(await step(c, k));
  assert.deepEqual(lossesC, lossesA.slice(saveAt), "the same losses after resuming");
  assert.deepEqual(await state(c), endA, "the same weights, optimizer and recipe state");
  assert.equal(c.recipe.slots.length, a.recipe.slots.length);
  free(a);
  free(c);
  return { endA, path };
}
