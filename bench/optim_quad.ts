/**
 * The optimizers' two update kernels side by side (issue 20, item 2): one AdamW step over 10M
 * parameters (10 tensors of 1000 x 1000) per precision strategy, with the quad kernels
 * (`setQuadKernels(true)`) and the per-element kernel (`false`) in turn on the same device,
 * `--rounds` rounds of two steps each ended by a sync. Per row the median wall and CPU time of
 * the process (lavapipe's threads included; the machine's load moves it less than wall time),
 * and each median of the per-round ratios to AdamW fp32 with the quad kernel: the bench target
 * "collage-light optimizer step at most 1.2x AdamW f32" is the collage-light quad row.
 *
 * Run: deno run --allow-env=DENO_WEBGPU_BACKEND bench/optim_quad.ts [--rounds 11]
 *   [--precisions fp32,bf16,collage-light,collage-plus]
 *
 * @module
 */
import { parseArgs } from "node:util";
import process from "node:process";
import { AdamW, precisionStrategy, type Tensor, tensor } from "../mod.ts";
import { getRuntime } from "../gpu/mod.ts";
import { setQuadKernels } from "../optim/_update_kernel.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rounds: { type: "string", default: "11" },
    precisions: { type: "string", default: "fp32,bf16,collage-light,collage-plus" },
  },
});
const ROUNDS = Number(values.rounds);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) {
  console.error(`optim_quad: --rounds must be a positive integer, got '${values.rounds}'`);
  Deno.exit(2);
}
const precisions = values.precisions.split(",");
if (!precisions.includes("fp32")) precisions.unshift("fp32"); // the baseline
const rt = await getRuntime();
console.log(
  `adapter: ${rt.info.description} (${Deno.env.get("DENO_WEBGPU_BACKEND") ?? "default"})`,
);

/** `n` values in [-s/2, s/2) from a linear congruential generator. */
function data(n: number, seed: number, s: number): Float32Array {
  let x = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    x = (x * 1664525 + 1013904223) >>> 0;
    return s * (x / 2 ** 32 - 0.5);
  });
}

const made = precisions.map((p) => {
  const s = precisionStrategy(p);
  const params: Tensor[] = Array.from({ length: 10 }, (_, i) => {
    const t = tensor(data(1_000_000, 100 + i, 0.04), { shape: [1000, 1000], dtype: s.param });
    t.requiresGrad = true;
    t.grad = tensor(data(1_000_000, 200 + i, 2e-3), { shape: [1000, 1000], dtype: s.grad });
    return t;
  });
  return { p, opt: new AdamW(params, { lr: 1e-3, weightDecay: 0.01, precision: p }) };
});
const modes = ["quad", "element"];
const wall: Record<string, number[]> = {}, cpu: Record<string, number[]> = {};
// warm-up: every program compiled
for (const m of made) {
  for (const mode of modes) {
    setQuadKernels(mode === "quad");
    m.opt.step();
    await rt.sync();
  }
}
for (let r = 0; r < ROUNDS; r++) {
  for (const m of made) {
    for (const mode of r % 2 ? [...modes].reverse() : modes) {
      setQuadKernels(mode === "quad");
      await rt.sync();
      const t0 = performance.now(), c0 = process.cpuUsage();
      m.opt.step();
      m.opt.step();
      await rt.sync();
      const c = process.cpuUsage(c0);
      (wall[`${m.p} ${mode}`] ??= []).push((performance.now() - t0) / 2);
      (cpu[`${m.p} ${mode}`] ??= []).push((c.user + c.system) / 2000);
    }
  }
}
setQuadKernels(true);
const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1];
const base = "fp32 quad";
console.log(
  `${"row".padEnd(24)} ${"wall ms".padStart(8)} ${"/fp32".padStart(6)} ${"cpu ms".padStart(8)} ${
    "/fp32".padStart(6)
  }  (cpu ratio range)`,
);
for (const k of Object.keys(wall)) {
  const rw = wall[k].map((v, i) => v / wall[base][i]);
  const rc = cpu[k].map((v, i) => v / cpu[base][i]);
  console.log(
    `${k.padEnd(24)} ${med(wall[k]).toFixed(1).padStart(8)} ${med(rw).toFixed(2).padStart(6)} ${
      med(cpu[k]).toFixed(1).padStart(8)
    } ${med(rc).toFixed(2).padStart(6)}  (${Math.min(...rc).toFixed(2)}-${
      Math.max(...rc).toFixed(2)
    })`,
  );
}
for (const m of made) m.opt.dispose();
