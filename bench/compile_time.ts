/**
 * What compiling costs on this adapter: each WGSL file of a folder (from
 * `bench/compile_dump.ts`) compiled and dispatched once (one workgroup, every binding a
 * scratch buffer or texture), timed from the pipeline's creation to the dispatch's end; the sums
 * per kernel label and the slowest sources. Run it with an empty Mesa shader cache to see what a
 * fresh machine pays (`MESA_SHADER_CACHE_DIR=$(mktemp -d)`); with a warm one, llvmpipe loads
 * each shader from its cache instead.
 *
 * Run: MESA_SHADER_CACHE_DIR=$(mktemp -d) deno run --allow-read --allow-env=DENO_WEBGPU_BACKEND
 *   bench/compile_time.ts /tmp/wgsl [--top 15]
 *
 * @module
 */
import { parseArgs } from "node:util";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { top: { type: "string", default: "15" } },
});
const dir = positionals[0];
const TOP = Number(values.top);
if (!dir || !(TOP >= 1)) {
  console.error("usage: compile_time.ts <folder of .wgsl files> [--top N]");
  Deno.exit(2);
}
const ad = await navigator.gpu.requestAdapter();
if (ad === null) {
  console.error("compile_time: no WebGPU adapter");
  Deno.exit(1);
}
const lim = ad.limits;
const dev = await ad.requestDevice({
  requiredFeatures: (["shader-f16", "timestamp-query"] as const).filter((f) => ad.features.has(f)),
  requiredLimits: {
    maxStorageBuffersPerShaderStage: lim.maxStorageBuffersPerShaderStage,
    maxComputeWorkgroupStorageSize: lim.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: lim.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: lim.maxComputeWorkgroupSizeX,
  },
});
console.log(
  `adapter: ${ad.info.description} (${Deno.env.get("DENO_WEBGPU_BACKEND") ?? "default"})`,
);
// a buffer per binding slot: a storage buffer may be bound once per dispatch when written
const storage = Array.from(
  { length: lim.maxStorageBuffersPerShaderStage },
  () => dev.createBuffer({ size: 1 << 20, usage: GPUBufferUsage.STORAGE }),
);
const uniform = dev.createBuffer({ size: 4096, usage: GPUBufferUsage.UNIFORM });
const BINDING = /@binding\((\d+)\)\s*var(<[^>]*>)?\s*\w+\s*:\s*([^;]+);/g;

const times: { ms: number; file: string; chars: number }[] = [];
for (const e of [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".wgsl"))) {
  const code = Deno.readTextFileSync(`${dir}/${e.name}`);
  const entries: GPUBindGroupEntry[] = [];
  let slot = 0;
  for (const [, b, space, type] of code.matchAll(BINDING)) {
    let resource: GPUBindingResource;
    if (space?.startsWith("<uniform")) resource = { buffer: uniform };
    else if (space?.startsWith("<storage")) resource = { buffer: storage[slot++] };
    else {
      const storageTex = type.includes("texture_storage_2d");
      resource = dev.createTexture({
        size: [4, 4],
        format: storageTex ? type.match(/<(\w+),/)![1] as GPUTextureFormat : "rgba32float",
        usage: storageTex ? GPUTextureUsage.STORAGE_BINDING : GPUTextureUsage.TEXTURE_BINDING,
      }).createView();
    }
    entries.push({ binding: Number(b), resource });
  }
  dev.pushErrorScope("validation");
  const t0 = performance.now();
  const p = dev.createComputePipeline({
    layout: "auto",
    compute: { module: dev.createShaderModule({ code }), entryPoint: "main" },
  });
  const enc = dev.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(p);
  pass.setBindGroup(0, dev.createBindGroup({ layout: p.getBindGroupLayout(0), entries }));
  pass.dispatchWorkgroups(1);
  pass.end();
  dev.queue.submit([enc.finish()]);
  await dev.queue.onSubmittedWorkDone();
  const ms = performance.now() - t0;
  const err = await dev.popErrorScope();
  // a kernel whose bindings the scratch set does not fit (a few bind fewer slots than they
  // declare) is left out, and said
  if (err) console.log(`skipped ${e.name}: ${err.message.split("\n")[0].slice(0, 120)}`);
  else times.push({ ms, file: e.name, chars: code.length });
}
const byLabel = new Map<string, { ms: number; n: number }>();
for (const t of times) {
  const label = t.file.replace(/_[0-9a-f]+\.wgsl$/, "");
  const v = byLabel.get(label) ?? { ms: 0, n: 0 };
  byLabel.set(label, { ms: v.ms + t.ms, n: v.n + 1 });
}
const total = times.reduce((s, t) => s + t.ms, 0);
console.log(`\n${times.length} sources, ${(total / 1000).toFixed(1)} s in all\n`);
console.log("seconds  sources  label");
for (const [label, v] of [...byLabel].sort((a, b) => b[1].ms - a[1].ms).slice(0, TOP)) {
  console.log(`${(v.ms / 1000).toFixed(1).padStart(7)}  ${String(v.n).padStart(7)}  ${label}`);
}
console.log("\n     ms    chars  source");
for (const t of times.sort((a, b) => b.ms - a.ms).slice(0, TOP)) {
  console.log(`${t.ms.toFixed(0).padStart(7)}  ${String(t.chars).padStart(7)}  ${t.file}`);
}
