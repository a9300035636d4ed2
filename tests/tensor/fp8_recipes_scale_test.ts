// The block recipes on a GPT larger than one binding (as tests/nn/scale_test.ts for the
// strategies): with the binding limit lowered below the embedding, the MLP's weights and the
// logits, training under `block` and `nvfp4` gives the losses of whole bindings (up to the
// f32 splits of the LM head's backward), the quantisers reading and writing through windows.
import assert from "node:assert/strict";
import { AdamW, autocast, GPT, type Tensor, tensor, tidy } from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { fp8Recipe } from "../../tensor/mod.ts";

const CFG = { vocabSize: 1024, blockSize: 128, nLayer: 1, nHead: 4, nEmbd: 256, seed: 7 };
const LIMIT = 768 * 1024;

/** Two AdamW steps of a fresh GPT under the recipe `name`; the losses. */
async function train(name: "block" | "nvfp4"): Promise<number[]> {
  const model = new GPT(CFG);
  const opt = new AdamW(model.parameters(), { lr: 3e-3, weightDecay: 0 });
  const recipe = fp8Recipe(name);
  const ids = Array.from({ length: 256 }, (_, i) => (i * 37 + 11) % CFG.vocabSize);
  const idx = tensor(new Int32Array(ids), { shape: [2, 128] });
  const tgt = tensor(new Int32Array(ids.map((v) => (v * 5 + 1) % CFG.vocabSize)), {
    shape: [2, 128],
  });
  const losses: Tensor[] = [];
  for (let t = 0; t < 2; t++) {
    losses.push(tidy(() => {
      using _ = autocast({ recipe });
      const loss = model.forward(idx, tgt).loss!;
      loss.backward();
      opt.step();
      opt.zeroGrad();
      return loss.detach();
    }));
  }
  const out = await Promise.all(losses.map((l) => l.item()));
  for (const t of [...losses, idx, tgt, ...model.parameters()]) t.dispose();
  opt.dispose();
  recipe.dispose();
  return out;
}

for (const name of ["block", "nvfp4"] as const) {
  Deno.test(`a GPT larger than one binding trains under the ${name} recipe as with whole bindings`, async () => {
    const rt = await getRuntime();
    const whole = await train(name);
    const before = rt.maxBindingBytes, w0 = rt.counters.windows;
    rt.maxBindingBytes = LIMIT;
    let windowed: number[];
    try {
      windowed = await train(name);
    } finally {
      rt.maxBindingBytes = before;
    }
    assert.ok(rt.counters.windows - w0 > 100, `${rt.counters.windows - w0} windows bound`);
    assert.ok(windowed.every(Number.isFinite));
    windowed.forEach((l, i) =>
      assert.ok(
        Math.abs(l - whole[i]) <= 2e-3 * Math.abs(whole[i]),
        `${name} step ${i}: ${l} windowed, ${whole[i]} whole`,
      )
    );
  });
}
