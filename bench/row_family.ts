/**
 * The two families of row kernels side by side (issue 20, item 2): softmax, logSoftmax, layer
 * norm and RMS norm, forward and with the input gradient, timed with the lane-row family
 * (`setRowFamily("lanes")`: one row an invocation, no workgroup memory) and the workgroup-memory
 * kernels (`setRowFamily("workgroup")`) in turn on the same device, `--rounds` rounds of three
 * runs each ended by a sync; medians, and the workgroup family's time over the lane-row one's.
 *
 * Run: deno run --allow-env=DENO_WEBGPU_BACKEND bench/row_family.ts [--rounds 7]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { layerNorm, logSoftmax, rmsNorm, softmax, type Tensor, tensor, tidy } from "../mod.ts";
import { getRuntime } from "../gpu/mod.ts";
import { setRowFamily } from "../tensor/ops/reduce.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { rounds: { type: "string", default: "7" } },
});
const ROUNDS = Number(values.rounds);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) {
  console.error(`row_family: --rounds must be a positive integer, got '${values.rounds}'`);
  Deno.exit(2);
}
const rt = await getRuntime();
console.log(
  `adapter: ${rt.info.description} (${Deno.env.get("DENO_WEBGPU_BACKEND") ?? "default"})`,
);

/** `n` values in [-s, s) from a fixed linear congruential sequence. */
function data(n: number, s: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    a[i] = ((x / 2 ** 32) * 2 - 1) * s;
  }
  return a;
}
const mat = (r: number, c: number, s: number, grad = false) =>
  tensor(data(r * c, s, r + c), { shape: [r, c], requiresGrad: grad });
const vec = (c: number, seed: number) => tensor(data(c, 1, seed));
const sync = async () => void (await tensor([0]).add(1).toArray());

/** Runs `f` (forward, and backward of `g` into `x`) and frees what it made. */
function withGrad(x: Tensor, g: Tensor, f: (x: Tensor) => Tensor): () => void {
  return () => {
    tidy(() => f(x).backward(g));
    x.grad?.dispose();
    (x as { grad: Tensor | null }).grad = null;
  };
}

const cases: [string, () => void][] = [];
const fwd = (name: string, x: Tensor, f: (x: Tensor) => Tensor) =>
  cases.push([name, () => tidy(() => f(x).realize()).dispose()]);
fwd("softmax 4096x1024", mat(4096, 1024, 4), (x) => softmax(x, -1));
fwd("softmax 32768x128", mat(32768, 128, 4), (x) => softmax(x, -1));
fwd("logSoftmax 4096x1024", mat(4096, 1024, 4), (x) => logSoftmax(x, -1));
cases.push([
  "softmax + input gradient 4096x128",
  withGrad(mat(4096, 128, 4, true), mat(4096, 128, 1), (x) => softmax(x, -1)),
]);
const w512 = vec(512, 1), b512 = vec(512, 2), w128 = vec(128, 3), b128 = vec(128, 4);
fwd("layer norm 8192x512", mat(8192, 512, 2), (x) => layerNorm(x, [512], w512, b512));
fwd("layer norm 32768x128", mat(32768, 128, 2), (x) => layerNorm(x, [128], w128, b128));
fwd("RMS norm 8192x512", mat(8192, 512, 2), (x) => rmsNorm(x, w512));
const w256 = vec(256, 5), b256 = vec(256, 6);
cases.push([
  "layer norm + input gradient 4096x256",
  withGrad(mat(4096, 256, 2, true), mat(4096, 256, 1), (x) => layerNorm(x, [256], w256, b256)),
]);

const median = (a: number[]) => a.sort((p, q) => p - q)[a.length >> 1];
console.log(
  "case (f32)                             workgroup ms  lane-row ms  workgroup / lane-row",
);
for (const [name, f] of cases) {
  const t = { lanes: [] as number[], workgroup: [] as number[] };
  for (const fam of ["lanes", "workgroup"] as const) {
    setRowFamily(fam);
    f(); // compile and warm
    await sync();
  }
  for (let r = 0; r < ROUNDS; r++) {
    for (const fam of ["lanes", "workgroup"] as const) {
      setRowFamily(fam);
      await sync();
      const t0 = performance.now();
      f();
      f();
      f();
      await sync();
      t[fam].push((performance.now() - t0) / 3);
    }
  }
  const L = median(t.lanes), W = median(t.workgroup);
  console.log(
    `${name.padEnd(38)} ${W.toFixed(1).padStart(12)} ${L.toFixed(1).padStart(12)}  ${
      (W / L).toFixed(2)
    }x`,
  );
}
setRowFamily("auto");
