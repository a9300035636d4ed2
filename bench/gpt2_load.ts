/**
 * What the README says of GPT-2 small on the adapter at hand: the time to load its Hugging Face
 * checkpoint (`fromPretrained`) and the time of one forward pass of 8 tokens without gradients
 * (median of `--reps`, after one warm-up). The checkpoint is a GPT-2-small-sized model with
 * random weights that the script exports first into a temporary folder (no download), f32.
 *
 * Run: deno run --allow-read --allow-write --allow-env=DENO_WEBGPU_BACKEND bench/gpt2_load.ts
 *   [--reps 3]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { exportPretrained, fromPretrained, GPT, noGrad, ready, tensor, tidy } from "../mod.ts";
import { getRuntime } from "../gpu/mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { reps: { type: "string", default: "3" } },
});
const REPS = Number(values.reps);
await ready();
const rt = await getRuntime();
const dir = await Deno.makeTempDir({ prefix: "ulp-gpt2-" });
try {
  const src = new GPT({ ...GPT.config("gpt2"), seed: 1 });
  await exportPretrained(src, dir);
  for (const p of src.parameters()) p.dispose();
  const t0 = performance.now();
  const model = await fromPretrained(dir);
  await rt.sync();
  const load = performance.now() - t0;
  model.eval();
  const ids = tensor(new Int32Array([464, 3616, 286, 1204, 318, 257, 1332, 13]), { shape: [1, 8] });
  const forward = async () => {
    const t = performance.now();
    const logits = noGrad(() => tidy(() => model.forward(ids).logits));
    await logits.toArray();
    logits.dispose();
    return performance.now() - t;
  };
  await forward(); // compiles the kernels
  const times: number[] = [];
  for (let r = 0; r < REPS; r++) times.push(await forward());
  times.sort((a, b) => a - b);
  console.log(
    `GPT-2 small on ${rt.info.description}: load ${(load / 1000).toFixed(1)} s, forward of 8 ` +
      `tokens ${(times[times.length >> 1] / 1000).toFixed(2)} s (median of ${REPS}; all ${
        times.map((t) => (t / 1000).toFixed(2)).join(", ")
      })`,
  );
} finally {
  await Deno.remove(dir, { recursive: true });
}
