/**
 * The demo: finds a GPU (or Mesa's software one), then round-trips numbers through every
 * format ulp knows, on the host and on the GPU, and says whether each one is exact.
 *
 * Run: npx -y deno@2.9.6 task demo     (or: deno run examples/demo.ts)
 *
 * The training demo of issue 7 (a small GPT under several precision strategies) replaces
 * this once it lands.
 */
import { deviceInfo, dtype, finfo, getRuntime, wgslChunks, wgslCodec } from "../mod.ts";

const info = await deviceInfo();
console.log(`GPU: ${info.description}${info.isFallbackAdapter ? " (software)" : ""}`);
console.log(`  f16 storage: ${info.f16Storage}, timestamp queries: ${info.timestampQuery}`);
console.log(
  `  max storage binding: ${(info.limits.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB\n`,
);

const rt = await getRuntime();
const formats = [
  "f32",
  "f16",
  "bf16",
  "e4m3",
  "e5m2",
  "e8m3",
  "e5m6",
  "e3m2fn",
  "e2m1fn",
  "bf16x2",
];
const values = new Float32Array([0.1, 1, Math.PI, -2.5e-5, 300, 65504, 1e5, -7e-8]);
console.log(`values: ${Array.from(values).map((v) => v.toPrecision(5)).join(", ")}\n`);
console.log(
  "format   max          decoded on the host (rne, saturating)               GPU == host",
);
for (const name of formats) {
  const d = dtype(name);
  const codes = d.encode(values, { saturate: true });
  const back = d.decode(codes);
  // The same values through the generated WGSL codec on the GPU.
  const c = wgslCodec(name, { saturate: true });
  const k = rt.kernel(
    `demo ${name}`,
    wgslChunks(c.chunks) + `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;
@compute @workgroup_size(8) fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x < arrayLength(&x)) { y[g.x] = ${c.encode}(x[g.x], 0u); }
}`,
    { buffers: ["read", "read_write"], uniform: false },
  );
  const bx = rt.alloc(values.byteLength, { dtype: "f32", purpose: "scratch" });
  const by = rt.alloc(values.byteLength, { dtype: "u32", purpose: "scratch" });
  rt.write(bx, values);
  rt.dispatch(k, [bx, by], [1]);
  const gpu = new Uint32Array(await rt.read(by));
  rt.free(bx);
  rt.free(by);
  const same = Array.from(codes).every((code, i) => code === gpu[i]);
  const shown = Array.from(back).map((v) => Number(v.toPrecision(4)).toString()).join(", ");
  console.log(
    `${name.padEnd(8)} ${finfo(name).max.toPrecision(5).padEnd(12)} ${shown.padEnd(52)} ${
      same ? "yes" : "NO"
    }`,
  );
}
