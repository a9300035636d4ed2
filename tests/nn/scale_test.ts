// Models beyond one binding: a GPT whose embedding, LM head, logits, activations, gradients and
// optimizer states are all larger than one storage binding trains under every precision
// strategy as it does with whole bindings. The binding limit is lowered (rt.maxBindingBytes)
// so that a GPT small enough for CI has GPT-2's proportions to the limit: GPT-2 small's token
// embedding is 154 MB against lavapipe's 128 MiB.
import assert from "node:assert/strict";
import {
  AdamW,
  applyPrecision,
  autocast,
  fp8Recipe,
  GPT,
  GradScaler,
  memory,
  precisionNames,
  precisionStrategy,
  type Tensor,
  tensor,
  tidy,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";

// A binding of 768 KiB against wte (1024 x 256 f32 = 1 MiB), the MLP's weights (1 MiB each),
// the logits and their gradient (256 tokens x 1024 = 1 MiB), and every gradient and optimizer
// state of those; a workgroup's share (128 rows of the logits: 512 KiB) still fits, as GPT-2
// small's 25 MiB share fits 128 MiB.
const CFG = { vocabSize: 1024, blockSize: 128, nLayer: 1, nHead: 4, nEmbd: 256, seed: 7 };
const LIMIT = 768 * 1024;

function batch(): [Tensor, Tensor] {
  const ids = Array.from({ length: 256 }, (_, i) => (i * 37 + 11) % CFG.vocabSize);
  const idx = tensor(new Int32Array(ids), { shape: [2, 128] });
  const tgt = tensor(new Int32Array(ids.map((v) => (v * 5 + 1) % CFG.vocabSize)), {
    shape: [2, 128],
  });
  return [idx, tgt];
}

/** `steps` AdamW steps of a fresh GPT under `name`; the losses and the live bytes after. */
async function train(name: string, steps: number): Promise<{ losses: number[]; live: number }> {
  const s = precisionStrategy(name);
  // fp8-<recipe>: a fresh recipe each run (the named one's state, NVFP4's step, would carry over)
  const given = s.autocastOptions?.recipe;
  const ac = typeof given === "string" ? { ...s.autocastOptions, recipe: fp8Recipe(given) } : null;
  const live0 = memory().liveBytes;
  const model = applyPrecision(new GPT(CFG), name);
  const opt = new AdamW(model.parameters(), { lr: 3e-3, weightDecay: 0, precision: name });
  const scaler = new GradScaler({ enabled: s.gradScaler, initScale: 2 ** 8 });
  const [idx, tgt] = batch();
  const losses: Tensor[] = [];
  for (let t = 0; t < steps; t++) {
    opt.zeroGrad();
    tidy(() => {
      using _ = autocast(ac ?? s.autocastOptions ?? { enabled: false });
      const { loss } = model.forward(idx, tgt);
      scaler.scale(loss!).backward();
      losses.push(loss!.detach());
      return losses[losses.length - 1];
    });
    scaler.step(opt);
    scaler.update();
  }
  const out = { losses: await Promise.all(losses.map((l) => l.item())), live: 0 };
  out.live = memory().liveBytes - live0;
  opt.zeroGrad();
  for (const t of [...losses, idx, tgt, ...model.parameters()]) t.dispose();
  opt.dispose?.();
  return out;
}

for (const name of precisionNames()) {
  Deno.test({
    name: `a GPT larger than one binding trains under ${name} as with whole bindings`,
  }, async () => {
    const rt = await getRuntime();
    const whole = await train(name, 3);
    const before = rt.maxBindingBytes;
    const w0 = rt.counters.windows;
    rt.maxBindingBytes = LIMIT;
    let windowed: { losses: number[]; live: number };
    try {
      windowed = await train(name, 3);
    } finally {
      rt.maxBindingBytes = before;
    }
    // f32 storage: wte, the MLP's weights, the logits and all their gradients and states are
    // windowed; 16-bit storage halves those, and then the f32 logits and their gradient are
    const bits = precisionStrategy(name).param.bits;
    const windows = rt.counters.windows - w0;
    assert.ok(windows > (bits === 32 ? 100 : 10), `${name}: ${windows} windows bound`);
    // the loss falls, and the windows change no value beyond the splits of K of the LM head's
    // backward (f32 sums of 512 products in pieces)
    assert.ok(windowed.losses[2] < windowed.losses[0], `${name}: ${windowed.losses}`);
    windowed.losses.forEach((l, i) =>
      assert.ok(
        Math.abs(l - whole.losses[i]) <= 2e-3 * Math.abs(whole.losses[i]),
        `${name} step ${i}: ${l} windowed, ${whole.losses[i]} whole`,
      )
    );
  });
}
