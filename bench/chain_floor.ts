/**
 * Where the elementwise chain's time goes on a CPU adapter (issue 20, item 2): the chain
 * `exp(x * a + b) * c` over 4M f32 run three ways on ulp's device, side by side:
 *
 * - `ulp`: through the library (`tidy(() => x.mul(a).add(b).exp().mul(c).realize())`), as
 *   `deno task bench` times it;
 * - `ulp kernel, replayed`: the very pipeline and bind group the library dispatched for it,
 *   recorded from the WebGPU calls and dispatched again without the library;
 * - `jax-js's kernel`: the WGSL jax-js 0.1.25 compiles for the same chain under `jit` (one f32
 *   an invocation; copied from its generated source), on the same buffers;
 * - the sum of the four operands read as vec4s and as f32s: what a 16-byte load costs against
 *   four 4-byte ones on this adapter;
 * - the same sum with the operands' words read as texels of `rgba32uint` textures (copied there
 *   beforehand, untimed), and that copy of the four operands on its own: Mesa 22.3's llvmpipe
 *   loads a storage buffer lane by lane (a loop over the SIMD lanes with a bounds test per
 *   component) and fetches texels as vector gathers, so the texels cost less, and the copy more
 *   than they save.
 *
 * Each repetition records `--inner` dispatches and waits; the median and minimum per dispatch
 * over `--reps` repetitions are printed, with ratios to the replayed kernel. The replay's output
 * is checked against the library's bit for bit.
 *
 * Run: deno run --allow-env=DENO_WEBGPU_BACKEND bench/chain_floor.ts [--inner 8] [--reps 12]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ready, type Tensor, tensor, tidy } from "../mod.ts";
import { getRuntime } from "../gpu/mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { inner: { type: "string", default: "8" }, reps: { type: "string", default: "12" } },
});
const INNER = Number(values.inner), REPS = Number(values.reps);

// record the last fused dispatch: its pipeline, bind group and grid
type Rec = { p: GPUComputePipeline; bg: GPUBindGroup; offsets: number[]; grid: number[] };
let last: Rec | null = null;
let curP: GPUComputePipeline | null = null, curBg: GPUBindGroup | null = null;
let curOff: number[] = [];
const pass = GPUComputePassEncoder.prototype;
const setP = pass.setPipeline, disp = pass.dispatchWorkgroups;
pass.setPipeline = function (p: GPUComputePipeline) {
  curP = p;
  return setP.call(this, p);
};
// ulp passes its uniforms' dynamic offsets as an array
type SetBindGroup = (
  this: GPUComputePassEncoder,
  index: number,
  bg: GPUBindGroup | null,
  offsets?: number[],
) => undefined;
const setBg = pass.setBindGroup as SetBindGroup;
pass.setBindGroup = function (
  this: GPUComputePassEncoder,
  i: number,
  bg: GPUBindGroup | null,
  offsets?: number[],
) {
  if (i === 0) {
    curBg = bg;
    curOff = Array.isArray(offsets) ? [...offsets] : [];
  }
  return setBg.call(this, i, bg, offsets);
} as typeof pass.setBindGroup;
pass.dispatchWorkgroups = function (x: number, y?: number, z?: number) {
  if (curP?.label.startsWith("fused(")) {
    last = { p: curP, bg: curBg!, offsets: curOff, grid: [x, y ?? 1, z ?? 1] };
  }
  return disp.call(this, x, y, z);
};

await ready();
const rt = await getRuntime();
const device = rt.device;
const n = 4 * 2 ** 20;
const data = (s: number) => Float32Array.from({ length: n }, (_, k) => Math.sin(k * s) * 0.5);
const [x, a, b, c] = [1, 2, 3, 4].map((s) => tensor(data(s)));
const chain = () => tidy(() => x.mul(a).add(b).exp().mul(c).realize());
const ref = chain();
const refVals = new Uint32Array((await ref.toArray()).buffer);
const rec = last as Rec | null;
if (rec === null) throw new Error("chain_floor: no fused dispatch was recorded");

// jax-js 0.1.25's kernel for jit(exp(x * a + b) * c), as it compiles it
const jaxCode = `
@group(0) @binding(0) var<storage, read> in0 : array<f32>;
@group(0) @binding(1) var<storage, read> in1 : array<f32>;
@group(0) @binding(2) var<storage, read> in2 : array<f32>;
@group(0) @binding(3) var<storage, read> in3 : array<f32>;
@group(0) @binding(4) var<storage, read_write> result : array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id : vec3<u32>) {
  if (id.x >= ${n}) { return; }
  let gidx: i32 = i32(id.x);
  result[gidx] = exp((in0[gidx] * in1[gidx]) + in2[gidx]) * in3[gidx];
}`;
const pipeline = (code: string) =>
  device.createComputePipeline({
    layout: "auto",
    compute: { module: device.createShaderModule({ code }), entryPoint: "main" },
  });
const out = device.createBuffer({
  size: n * 4,
  usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
});
// what a load costs: the sum of the four operands, read as vec4s (a quad an invocation) and as
// f32s (one element an invocation)
const sumCode = (v4: boolean) => {
  const t = v4 ? "vec4<f32>" : "f32";
  return [0, 1, 2, 3].map((i) =>
    `@group(0) @binding(${i}) var<storage, read> in${i}: array<${t}>;\n`
  )
    .join("") + `@group(0) @binding(4) var<storage, read_write> result: array<${t}>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let i = id.x;
  if (i >= ${v4 ? n / 4 : n}u) { return; }
  result[i] = in0[i] + in1[i] + in2[i] + in3[i];
}`;
};
// the sum of four from texels: quad q is texel (q % 4096, q / 4096) of each operand's copy
const W = 4096, H = n / 4 / W;
const texCode = [0, 1, 2, 3].map((i) => `@group(0) @binding(${i}) var in${i}: texture_2d<u32>;\n`)
  .join("") + `@group(0) @binding(4) var<storage, read_write> result: array<vec4<f32>>;
fn t(v: vec4<u32>) -> vec4<f32> { return bitcast<vec4<f32>>(v); }
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let i = id.x;
  if (i >= ${n / 4}u) { return; }
  let p = vec2<u32>(i % ${W}u, i / ${W}u);
  result[i] = t(textureLoad(in0, p, 0)) + t(textureLoad(in1, p, 0)) + t(textureLoad(in2, p, 0)) +
    t(textureLoad(in3, p, 0));
}`;
const textures = [x, a, b, c].map(() =>
  device.createTexture({
    size: [W, H],
    format: "rgba32uint",
    usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST,
  })
);
const copyIntoTextures = () => {
  const cmds: GPUCommandBuffer[] = [];
  for (let i = 0; i < INNER; i++) {
    const e = device.createCommandEncoder();
    [x, a, b, c].forEach((t: Tensor, k) =>
      e.copyBufferToTexture({ buffer: t.buffer("chain_floor").buffer, bytesPerRow: W * 16 }, {
        texture: textures[k],
      }, [W, H])
    );
    cmds.push(e.finish());
  }
  device.queue.submit(cmds);
};
copyIntoTextures();
const texP = pipeline(texCode);
const texBg = device.createBindGroup({
  layout: texP.getBindGroupLayout(0),
  entries: textures.map((tx, i): GPUBindGroupEntry => ({ binding: i, resource: tx.createView() }))
    .concat([{ binding: 4, resource: { buffer: out } }]),
});
const jaxP = pipeline(jaxCode), sum4P = pipeline(sumCode(true)), sum1P = pipeline(sumCode(false));
const bindOperands = (p: GPUComputePipeline) =>
  device.createBindGroup({
    layout: p.getBindGroupLayout(0),
    entries: [x, a, b, c].map((t: Tensor, i) => ({
      binding: i,
      resource: { buffer: t.buffer("chain_floor").buffer },
    })).concat([{ binding: 4, resource: { buffer: out } }]),
  });

const dispatch =
  (p: GPUComputePipeline, bg: GPUBindGroup, offsets: number[], grid: number[]) => () => {
    const cmds: GPUCommandBuffer[] = [];
    for (let i = 0; i < INNER; i++) {
      const e = device.createCommandEncoder();
      const cp = e.beginComputePass();
      setP.call(cp, p);
      setBg.call(cp, 0, bg, offsets);
      disp.call(cp, grid[0], grid[1], grid[2]);
      cp.end();
      cmds.push(e.finish());
    }
    device.queue.submit(cmds);
  };
const cases: [string, () => void][] = [
  ["ulp", () => {
    for (let i = 0; i < INNER; i++) chain().dispose();
  }],
  ["ulp kernel, replayed", dispatch(rec.p, rec.bg, rec.offsets, rec.grid)],
  ["jax-js's kernel", dispatch(jaxP, bindOperands(jaxP), [], [n / 256, 1, 1])],
  ["sum of 4, vec4 loads", dispatch(sum4P, bindOperands(sum4P), [], [n / 1024, 1, 1])],
  ["sum of 4, f32 loads", dispatch(sum1P, bindOperands(sum1P), [], [n / 256, 1, 1])],
  ["sum of 4, texel loads", dispatch(texP, texBg, [], [n / 1024, 1, 1])],
  ["4 copies into textures", copyIntoTextures],
];
const times: number[][] = cases.map(() => []);
for (let r = 0; r < REPS + 1; r++) {
  for (const [k, [, run]] of cases.entries()) {
    const t0 = performance.now();
    run();
    await rt.sync();
    await device.queue.onSubmittedWorkDone();
    if (r > 0) times[k].push((performance.now() - t0) / INNER); // the first round warms up
  }
}
// the replay wrote the library's result buffer again: the same bits
const again = new Uint32Array((await ref.toArray()).buffer);
const same = again.every((v, i) => v === refVals[i]);
// the texel sum reads the same words as the vec4 sum: the same bits
const outWords = async (run: () => void) => {
  run();
  const rb = device.createBuffer({
    size: n * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const e = device.createCommandEncoder();
  e.copyBufferToBuffer(out, 0, rb, 0, n * 4);
  device.queue.submit([e.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const w = new Uint32Array(rb.getMappedRange().slice(0));
  rb.destroy();
  return w;
};
const vecSum = await outWords(cases[3][1]), texSum = await outWords(cases[5][1]);
const sameSum = vecSum.every((v, i) => v === texSum[i]);
const med = (t: number[]) => [...t].sort((p, q) => p - q)[t.length >> 1];
const base = med(times[1]);
console.log(`elementwise chain exp(x * a + b) * c, 4M f32, ${rt.info.description}`);
for (const [k, [name]] of cases.entries()) {
  const m = med(times[k]);
  console.log(
    `${name.padEnd(24)} median ${m.toFixed(2).padStart(6)} ms  min ${
      Math.min(...times[k]).toFixed(2).padStart(6)
    } ms  ${(m / base).toFixed(2)}x the replayed kernel`,
  );
}
console.log(`replayed output equals the library's: ${same}`);
console.log(`texel sum equals the vec4 sum: ${sameSum}`);
ref.dispose();
for (const t of [x, a, b, c]) t.dispose();
