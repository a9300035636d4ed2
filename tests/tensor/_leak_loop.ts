// The README's training loop without tidy, run by tests/tensor/leak_test.ts in a process of
// its own (deno run --v8-flags=--expose-gc): prints the live GPU bytes after each of 200
// steps, as JSON lines; with "gc" it collects garbage every 10 steps first, with "tidy" it
// runs each step in tidy() instead (the explicit ownership the safety net stands behind).
//   deno run --v8-flags=--expose-gc --allow-read=. tests/tensor/_leak_loop.ts [gc|tidy]
import { AdamW, applyPrecision, GPT, memory, ready, tensor, tidy } from "../../mod.ts";

await ready();
const collect = Deno.args[0] === "gc", scoped = Deno.args[0] === "tidy";
const gc = (globalThis as { gc?: () => void }).gc;
const text = await Deno.readTextFile("README.md");
const chars = [...new Set(text)].sort(), ids = Int32Array.from(text, (c) => chars.indexOf(c));
const T = 32,
  model = applyPrecision(
    new GPT({ vocabSize: chars.length, blockSize: T, nLayer: 2, nHead: 4, nEmbd: 64, seed: 0 }),
    "collage-light",
  );
const opt = new AdamW(model.parameters(), { lr: 1e-3, precision: "collage-light" });
for (let step = 1; step <= 200; step++) {
  const at = (step * 7919) % (ids.length - T - 1);
  const run = () => {
    const x = tensor(ids.subarray(at, at + T), { shape: [1, T] });
    const y = tensor(ids.subarray(at + 1, at + T + 1), { shape: [1, T] });
    const { loss } = model.forward(x, y); // without tidy nothing of the step is freed explicitly
    loss!.backward();
    opt.step();
    opt.zeroGrad();
    return loss!.detach();
  };
  const loss = scoped ? tidy(run) : run();
  if (collect && step % 10 === 0 && gc) {
    await loss.item(); // the step's work is done
    gc();
    await new Promise((r) => setTimeout(r, 0)); // the registry's callbacks run as tasks
  }
  await loss.item();
  loss.dispose();
  const m = memory();
  console.log(JSON.stringify({ step, liveBytes: m.liveBytes, liveBuffers: m.liveBuffers }));
}
