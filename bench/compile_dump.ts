/**
 * A preload for `deno test` that writes every distinct WGSL source the run compiles into the
 * folder `$ULP_WGSL_DUMP` (one file per source, named by its kernel label and a hash), then
 * loads the tests' own preload. With `bench/compile_time.ts` it shows what a fresh machine
 * (a CI runner with an empty Mesa shader cache) spends compiling, kernel by kernel.
 *
 * Run: mkdir -p /tmp/wgsl && ULP_WGSL_DUMP=/tmp/wgsl deno test --preload=./bench/compile_dump.ts
 *   --allow-read=. --allow-write=./.test-tmp,/tmp/wgsl --allow-env=ULP_WGSL_DUMP
 *   --allow-run=deno tests/
 *
 * @module
 */
const dir = Deno.env.get("ULP_WGSL_DUMP");
const seen = new Set<string>();
const create = GPUDevice.prototype.createShaderModule;
GPUDevice.prototype.createShaderModule = function (d: GPUShaderModuleDescriptor) {
  if (dir && !seen.has(d.code)) {
    seen.add(d.code);
    let h = 0;
    for (let i = 0; i < d.code.length; i++) h = (Math.imul(h, 31) + d.code.charCodeAt(i)) >>> 0;
    const label = (d.label ?? "unlabelled").replace(/\W/g, "_");
    Deno.writeTextFileSync(`${dir}/${label}_${h.toString(16)}.wgsl`, d.code);
  }
  return create.call(this, d);
};
await import("../tests/_ready.ts");
