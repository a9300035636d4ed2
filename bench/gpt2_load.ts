/**
 * What the README says of GPT-2 small on the adapter at hand: the time to load its Hugging Face
 * checkpoint (`fromPretrained`), the time of one forward pass of 8 tokens without gradients
 * (median of `--reps`, after one warm-up), and of generating `--tokens` tokens after those 8
 * (greedy, as examples/sample.ts with `--top-k 1`: the last position's logits only), per token. The
 * checkpoint is a GPT-2-small-sized model with random weights that the script exports first
 * into a temporary folder (no download), f32.
 *
 * Run: deno run --allow-read --allow-write --allow-env=DENO_WEBGPU_BACKEND bench/gpt2_load.ts
 *   [--reps 3] [--tokens 16]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { exportPretrained, fromPretrained, GPT, noGrad, ready, tensor, tidy } from "../mod.ts";
import { getRuntime } from "../gpu/mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { reps: { type: "string", default: "3" }, tokens: { type: "string", default: "16" } },
});
const REPS = Number(values.reps), TOKENS = Number(values.tokens);
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
  const prompt = new Int32Array([464, 3616, 286, 1204, 318, 257, 1332, 13]);
  const ids = tensor(prompt, { shape: [1, 8] });
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
  // greedy generation: the next token is the argmax of the last position's logits (the loop of
  // examples/_text.ts's sample() with top-k 1, written here: that module imports js-tiktoken,
  // which bench/deno.json, the benchmarks' import map, does not have)
  const generate = async (n: number) => {
    const out = Array.from(prompt);
    for (let i = 0; i < n; i++) {
      const ctx = tensor(Int32Array.from(out), { shape: [1, out.length] });
      const last = noGrad(() =>
        tidy(() => model.forward(ctx, undefined, { logitsToKeep: 1 }).logits)
      );
      const z = await last.toArray();
      last.dispose();
      ctx.dispose();
      out.push(z.indexOf(Math.max(...z)));
    }
  };
  await generate(2); // compiles the kernels of the one-row head
  const g = performance.now();
  await generate(TOKENS);
  const perToken = (performance.now() - g) / TOKENS;
  console.log(
    `GPT-2 small on ${rt.info.description}: load ${(load / 1000).toFixed(1)} s, forward of 8 ` +
      `tokens ${(times[times.length >> 1] / 1000).toFixed(2)} s (median of ${REPS}; all ${
        times.map((t) => (t / 1000).toFixed(2)).join(", ")
      }), generating ${TOKENS} tokens after 8: ${(perToken / 1000).toFixed(2)} s a token`,
  );
} finally {
  await Deno.remove(dir, { recursive: true });
}
