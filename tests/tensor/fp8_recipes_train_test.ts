// Every FP8 recipe trains: a tiny GPT on a Markov chain of 16 tokens, 16 steps under each
// recipe of FP8_RECIPES, ends within a few percent of the same run under amp-bf16, finite all
// the way (the attention GEMMs, the tied LM head and the weight gradients included).
import assert from "node:assert/strict";
import { AdamW, autocast, GPT, type Tensor, tensor, tidy } from "../../mod.ts";
import { FP8_RECIPES, fp8Recipe, type FP8RecipeName } from "../../tensor/mod.ts";
import { markovBatches, TINY_GPT } from "./_reference.ts";

const CFG = TINY_GPT;
const STEPS = 16;
const BATCHES = markovBatches(STEPS);

/** The losses of a run under `recipe` (null: amp-bf16). */
async function train(recipe: FP8RecipeName | null): Promise<number[]> {
  const model = new GPT(CFG);
  const opt = new AdamW(model.parameters(), { lr: 1e-2, weightDecay: 0 });
  const r = recipe === null ? null : fp8Recipe(recipe);
  const losses: Tensor[] = [];
  for (const [xs, ys] of BATCHES) {
    losses.push(tidy(() => {
      const x = tensor(xs, { shape: [8, 16] }), y = tensor(ys, { shape: [8, 16] });
      using _ = autocast(r ? { recipe: r } : { dtype: "bf16" });
      const loss = model.forward(x, y).loss!;
      loss.backward();
      opt.step();
      opt.zeroGrad();
      return loss.detach();
    }));
  }
  const v = await Promise.all(losses.map((l) => l.item()));
  for (const l of losses) l.dispose();
  opt.dispose();
  for (const p of model.parameters()) p.dispose();
  r?.dispose();
  return v;
}

Deno.test("every FP8 recipe trains a tiny GPT to within a few percent of amp-bf16", async () => {
  const tail = (v: number[]) => v.slice(-4).reduce((a, b) => a + b, 0) / 4;
  const ref = await train(null);
  assert.ok(tail(ref) < 0.75 * ref[0], `amp-bf16 learns: ${ref[0]} -> ${tail(ref)}`);
  const rows: string[] = [];
  for (const name of FP8_RECIPES) {
    const v = await train(name);
    rows.push(`${name} ${tail(v).toFixed(4)}`);
    assert.ok(v.every(Number.isFinite), `${name}: finite losses`);
    assert.ok(
      Math.abs(tail(v) - tail(ref)) <= 0.05 * tail(ref),
      `${name}: ${tail(v)} vs amp-bf16 ${tail(ref)}`,
    );
  }
  console.log(
    `mean loss of the last 4 of ${STEPS} steps: amp-bf16 ${tail(ref).toFixed(4)}, ${
      rows.join(", ")
    }`,
  );
});
