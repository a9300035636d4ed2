/**
 * The numerics inspector's overhead (issue 19): training steps of a GPT (the char-small size
 * of train_gpt by default) without the inspector, then with it on every step (`every: 1`,
 * formats e4m3, e5m2, bf16, the optimizer hooked), and the cost of `read()` for those steps.
 * Each step is synced (`sync()`) so that the device time of the step is inside its time.
 *
 * Run: deno run --allow-env=DENO_WEBGPU_BACKEND bench/inspect.ts [--steps 4] [--batch 8]
 *      [--layers 2] [--width 128] [--block 64] [--rounds 3]
 * Runs with and without the inspector alternate (`--rounds`); each reports the median step,
 * and the fastest median of each kind is printed.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { AdamW, GPT, ready, type Tensor, tensor, tidy } from "../mod.ts";
import { getRuntime, sync } from "../gpu/mod.ts";
import { inspect } from "../nn/inspect.ts";

const { values } = parseArgs({
  options: {
    steps: { type: "string", default: "4" },
    batch: { type: "string", default: "8" },
    layers: { type: "string", default: "2" },
    width: { type: "string", default: "128" },
    block: { type: "string", default: "64" },
    rounds: { type: "string", default: "3" },
  },
});
const steps = Number(values.steps), B = Number(values.batch), T = Number(values.block);
await ready();
const rt = await getRuntime();

async function run(inspected: boolean) {
  const model = new GPT({
    vocabSize: 104,
    blockSize: T,
    nLayer: Number(values.layers),
    nHead: 4,
    nEmbd: Number(values.width),
    seed: 1,
  });
  const opt = new AdamW(model.parameters(), { lr: 1e-3 });
  const ins = inspected
    ? inspect(model, { formats: ["e4m3", "e5m2", "bf16"], every: 1, optimizer: opt })
    : null;
  const ids = new Int32Array(B * T).map((_, i) => (i * 7 + 3) % 104);
  const x = tensor(ids, { shape: [B, T] });
  const times: number[] = [];
  const dispatches: number[] = [];
  for (let s = 0; s <= steps; s++) {
    const d0 = rt.counters.dispatches;
    const t0 = performance.now();
    tidy(() => {
      const { loss } = model.forward(x, x);
      (loss as Tensor).backward();
      opt.step();
      opt.zeroGrad();
    });
    await sync();
    if (s > 0) times.push(performance.now() - t0), dispatches.push(rt.counters.dispatches - d0);
  }
  const r0 = performance.now();
  const recs = ins ? await ins.read() : [];
  const readMs = performance.now() - r0;
  const tensors = recs[0]?.tensors.length ?? 0;
  ins?.remove();
  opt.dispose();
  for (const p of model.parameters()) p.dispose();
  x.dispose();
  times.sort((a, b) => a - b);
  return {
    ms: times[Math.floor(times.length / 2)],
    dispatches: dispatches[0],
    readMs: recs.length ? readMs / recs.length : 0,
    tensors,
  };
}

await run(false); // warm-up: compiles
await run(true); // compiles the inspector's kernels
// alternated rounds (a shared machine drifts): the fastest median of each
const rounds = Number(values.rounds);
const plains: Awaited<ReturnType<typeof run>>[] = [], seens: typeof plains = [];
for (let r = 0; r < rounds; r++) plains.push(await run(false)), seens.push(await run(true));
const best = (xs: typeof plains) => xs.reduce((a, b) => (b.ms < a.ms ? b : a));
const plain = best(plains), seen = best(seens);
console.log(
  `${rt.info.description}: GPT ${values.layers} layers, width ${values.width}, batch ${B} x ${T}`,
);
console.log(`step without inspector: ${plain.ms.toFixed(1)} ms (${plain.dispatches} dispatches)`);
console.log(
  `inspected step: ${seen.ms.toFixed(1)} ms (${seen.dispatches} dispatches, ${seen.tensors} ` +
    `tensors recorded): +${(seen.ms - plain.ms).toFixed(1)} ms, ` +
    `+${((seen.ms / plain.ms - 1) * 100).toFixed(0)}%`,
);
console.log(`read(): ${seen.readMs.toFixed(1)} ms per inspected step`);
