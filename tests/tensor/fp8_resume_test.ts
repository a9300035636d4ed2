// Resume under the FP8 recipes (issue 19, item 5): a tiny GPT trained a few steps, saved with
// saveCheckpoint (model, optimizer, recipe), loaded into fresh objects and continued, equals
// the uninterrupted run bit for bit: losses, weights, optimizer states, and the recipe's own
// state (delayed scaling's amax histories, scales and pending amaxes; NVFP4's step count,
// which keys the stochastic rounding of its gradients). The other recipes:
// fp8_resume_more_test.ts.
import assert from "node:assert/strict";
import { loadCheckpoint } from "../../mod.ts";
import { free, resumeMatches, setup, state, step } from "./_fp8_resume.ts";

const STEPS = 5, SAVE_AT = 3;

for (const name of ["delayed", "nvfp4"] as const) {
  Deno.test(`resume under the ${name} recipe is bit-identical to the uninterrupted run`, async () => {
    const { endA, path } = await resumeMatches(name, STEPS, SAVE_AT);
    if (name === "delayed") {
      const h = (endA.recipe as { amaxHistory: { codes: number[] } }).amaxHistory.codes;
      assert.ok(h.some((v) => v !== 0), "the amax histories are part of what matched");
    } else {
      assert.equal((endA.recipe as { step: number }).step, STEPS);
    }
    // without the recipe's state, the continuation differs (the test can see it)
    const d = setup(name, 99);
    await loadCheckpoint(path, { model: d.model, optimizer: d.optimizer });
    for (let k = SAVE_AT; k < STEPS; k++) await step(d, k);
    assert.notDeepEqual((await state(d)).model, endA.model, "a fresh recipe's weights differ");
    free(d);
  });
}
