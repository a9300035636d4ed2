// Run by leak_test.ts in its own process: trains a tiny GPT for N steps (reading the loss back
// every step, as a trainer does) and prints, every 100 steps, the process's
// resident memory, the JS heap, the live GPU bytes and the bind groups made so far, as JSON.
// A read is awaited two steps after it starts (each read waits about 11 ms for Deno to poll
// the device, 1.7 times a step of this model on lavapipe: awaited at once, the waits were
// two thirds of the run), and its loss is disposed right after, at the same point of every
// step: a sample counts the same two losses in flight every time, and the pool hands out the
// same buffers each step (disposed whenever its read resolved, a loss's buffer went back at
// a different point of a step each time, and the steps made 2.9 new bind groups each).
import { AdamW, GPT, memory, ready, type Tensor, tensor, tidy } from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";

await ready();
const steps = Number(Deno.args[0] ?? 5000);
const every = Number(Deno.args[1] ?? 1); // read the loss every N steps
const rt = await getRuntime();
let bindGroups = 0;
const dev = rt.device;
const real = dev.createBindGroup.bind(dev);
Object.defineProperty(dev, "createBindGroup", {
  configurable: true,
  value: (d: GPUBindGroupDescriptor) => (bindGroups++, real(d)),
});
const model = new GPT({ vocabSize: 8, blockSize: 4, nLayer: 1, nHead: 1, nEmbd: 8, seed: 5 });
const opt = new AdamW(model.parameters(), { lr: 1e-2, weightDecay: 0.01 });
const ids = Array.from({ length: 8 }, (_, i) => (i * 5 + 1) % 8);
const idx = tensor(new Int32Array(ids), { shape: [2, 4] });
const tgt = tensor(new Int32Array(ids.map((v) => (v + 3) % 8)), { shape: [2, 4] });
const samples = [];
const reads: { loss: Tensor; value: Promise<number> }[] = [];
const finish = async (r: (typeof reads)[number]) => {
  await r.value;
  r.loss.dispose();
};
const t0 = performance.now();
for (let t = 0; t <= steps; t++) {
  if (t % 100 === 0) {
    // a full collection first (the parent passes --expose-gc): what is measured is what is
    // kept, not garbage that the collector has not reached yet
    (globalThis as { gc?: () => void }).gc?.();
    const m = Deno.memoryUsage();
    samples.push({ step: t, rss: m.rss, heap: m.heapTotal, live: memory().liveBytes, bindGroups });
  }
  if (t === steps) break;
  const loss = tidy(() => {
    const { loss } = model.forward(idx, tgt);
    loss!.backward();
    return loss!.detach();
  });
  opt.step();
  opt.zeroGrad();
  if (t % every === 0) {
    reads.push({ loss, value: loss.item() });
    if (reads.length > 2) await finish(reads.shift()!);
  } else loss.dispose();
}
for (const r of reads) await finish(r);
console.log(JSON.stringify({ samples, ms: performance.now() - t0 }));
