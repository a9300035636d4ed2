/**
 * The matmul lab of issue 20, item 3 (CPU adapters): raw WGSL measurements behind the texture
 * family's design, in CPU time of this process (`/proc/self/stat`, 10 ms ticks; what the shared
 * machine's other work does not change the way it changes wall time).
 *
 * - `loads`: the cost of one load of a SIMD row (8 invocations on llvmpipe) by kind: storage
 *   buffer, uniform buffer, storage texture (per format), sampled texture, workgroup memory, each
 *   at an address the same for the 8 lanes (from loop counters and the workgroup id only) and at
 *   one that differs per lane. On Mesa 22.3 a lane-uniform address costs what a per-lane one does
 *   (no scalar load and broadcast), and an `rgba32float` storage texel is the cheapest per value.
 * - `kernels`: 1024^3 f32 (or `--shape M,K,N`) products of the texture family's kernel on
 *   textures holding A and B as stored, in several orders of its loads and multiply-adds and
 *   block sizes (`order,tm,tn/4[;...]`: `all` loads every texel first, `rows` B's texels first
 *   then row by row, `cols` column quad by column quad), plus `syn` (texels computed, not
 *   loaded) and `lo` (loads only) to split the time.
 * - `cpu`: ulp's f32 matmul (whatever family the adapter takes) against jax-js's Wasm backend at
 *   1024^3, interleaved, with each thread's CPU time (llvmpipe's worker threads against
 *   jax-js's Wasm workers).
 *
 * Run: deno run -A --config bench/deno.json bench/matmul_lab.ts loads|kernels|cpu
 *   [--variants "rows,32,4;all,32,4"] [--shape 1024,1024,1024] [--rounds 3]
 *
 * @module
 */

import { parseArgs } from "node:util";

const { values: flags, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    variants: { type: "string", default: "all,32,4;rows,32,4;cols,32,4;syn,32,4;lo,32,4" },
    shape: { type: "string", default: "1024,1024,1024" },
    rounds: { type: "string", default: "3" },
  },
});
const mode = positionals[0] ?? "loads";
const rounds = Number(flags.rounds);

/** CPU milliseconds of this process so far (user + system). */
function cpuMs(): number {
  const f = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
}

/** CPU milliseconds per thread (name#tid). */
function threadMs(): Map<string, number> {
  const out = new Map<string, number>();
  for (const e of Deno.readDirSync("/proc/self/task")) {
    try {
      const st = Deno.readTextFileSync(`/proc/self/task/${e.name}/stat`);
      const name = st.slice(st.indexOf("(") + 1, st.lastIndexOf(")"));
      const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
      out.set(`${name}#${e.name}`, (Number(f[11]) + Number(f[12])) * 10);
    } catch { /* the thread ended */ }
  }
  return out;
}

async function device(): Promise<GPUDevice> {
  const ad = await navigator.gpu.requestAdapter();
  if (ad === null) throw new Error("matmul_lab: no WebGPU adapter");
  console.log(`adapter: ${ad.info.description}`);
  return await ad.requestDevice();
}

/** A compute pipeline of `code` (entry `main`) with its bind group of `resources` in order. */
function pipeline(dev: GPUDevice, code: string, resources: GPUBindingResource[]) {
  const p = dev.createComputePipeline({
    layout: "auto",
    compute: { module: dev.createShaderModule({ code }), entryPoint: "main" },
  });
  const bg = dev.createBindGroup({
    layout: p.getBindGroupLayout(0),
    entries: resources.map((resource, binding) => ({ binding, resource })),
  });
  return async (groups: [number, number]) => {
    const e = dev.createCommandEncoder();
    const c = e.beginComputePass();
    c.setPipeline(p);
    c.setBindGroup(0, bg);
    c.dispatchWorkgroups(groups[0], groups[1]);
    c.end();
    dev.queue.submit([e.finish()]);
    await dev.queue.onSubmittedWorkDone();
  };
}

/** The fewest CPU ms of `reps` runs of `go`, over `rounds` rounds. */
async function cpuOf(go: () => Promise<void>, reps: number): Promise<number> {
  await go();
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const c0 = cpuMs();
    for (let i = 0; i < reps; i++) await go();
    best = Math.min(best, (cpuMs() - c0) / reps);
  }
  return best;
}

async function loads(): Promise<void> {
  const dev = await device();
  const usage = GPUBufferUsage.STORAGE;
  const sbuf = dev.createBuffer({ size: 1 << 24, usage });
  const ubuf = dev.createBuffer({ size: 65536, usage: GPUBufferUsage.UNIFORM });
  const out = dev.createBuffer({ size: 1 << 20, usage });
  const tex = (format: GPUTextureFormat) =>
    dev.createTexture({
      size: [1024, 1024],
      format,
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.TEXTURE_BINDING,
    }).createView();
  const ITERS = 1024, GROUPS = 2048; // a workgroup of 8 x 2: two SIMD rows
  const kinds: [string, string, GPUBindingResource | null, (k: string, lane: boolean) => string][] =
    [
      ["none (the loop alone)", "", null, (k) => `vec4<f32>(f32(${k}))`],
      [
        "storage buffer vec4",
        "var<storage, read> b: array<vec4<f32>>;",
        { buffer: sbuf },
        (k, lane) => `b[(${lane ? "li * 4096u" : "wg.x * 64u"} + ${k}) & 1048575u]`,
      ],
      [
        "uniform buffer vec4",
        "var<uniform> b: array<vec4<f32>, 4096>;",
        { buffer: ubuf },
        (k, lane) => `b[(${lane ? "li * 64u" : "wg.x"} + ${k}) & 4095u]`,
      ],
      ...(["rgba32float", "rg32float", "r32float"] as const).map((f) =>
        [
          `storage texture ${f}`,
          `var t: texture_storage_2d<${f}, read>;`,
          tex(f),
          (k: string, lane: boolean) =>
            `vec4<f32>(textureLoad(t, vec2<u32>(${k}, ${lane ? "li" : "wg.x"} & 1023u)))`,
        ] as [string, string, GPUBindingResource, (k: string, lane: boolean) => string]
      ),
      [
        "sampled texture rgba32float",
        "var t: texture_2d<f32>;",
        tex("rgba32float"),
        (k, lane) => `textureLoad(t, vec2<u32>(${k}, ${lane ? "li" : "wg.x"} & 1023u), 0)`,
      ],
      [
        "workgroup memory vec4",
        "",
        null,
        (k, lane) => `w[(${k} + ${lane ? "li * 64u" : "0u"}) & 1023u]`,
      ],
    ];
  console.log("CPU ns per load of a SIMD row (8 lanes), 4 independent sums; uniform | per lane");
  for (const [name, decl, res, ld] of kinds) {
    const line: string[] = [];
    for (const lane of [false, true]) {
      const sums = [0, 1, 2, 3].map((j) => `    s${j} = s${j} + ${ld(`(k + ${j}u)`, lane)};\n`);
      const code = `${decl ? `@group(0) @binding(1) ${decl}` : ""}
@group(0) @binding(0) var<storage, read_write> o: array<vec4<f32>>;
var<workgroup> w: array<vec4<f32>, 1024>;
@compute @workgroup_size(8, 2, 1)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  var s0 = vec4<f32>(0.0); var s1 = s0; var s2 = s0; var s3 = s0;
  for (var k = 0u; k < ${ITERS}u; k = k + 4u) {
${sums.join("")}  }
  o[(wg.x * 16u + li) & 65535u] = s0 + s1 + s2 + s3;
}`;
      const go = pipeline(dev, code, res === null ? [{ buffer: out }] : [{ buffer: out }, res]);
      const ms = await cpuOf(() => go([GROUPS, 1]), 3);
      line.push((ms * 1e6 / (GROUPS * 2 * ITERS)).toFixed(2));
      if (res === null && name.startsWith("none")) break;
    }
    console.log(`${name.padEnd(30)} ${line.join(" | ")}`);
  }
}

/** One variant of the texture kernel: the order of its body, its block, and what it loads. */
interface Variant {
  readonly order: string;
  /** "switch": the library's store loop; else direct stores. */
  readonly epilogue?: string;
  readonly tm: number;
  readonly q: number;
}

function kernelSource(v: Variant, M: number, K: number, N: number): string {
  const { tm, q } = v, X = "xyzw";
  const syn = v.order === "syn";
  const tl = syn
    ? `fn tl_a(c: u32, r: u32) -> vec4<f32> { return vec4<f32>(f32(c), f32(r), 0.5, 0.25); }
fn tl_b(c: u32, r: u32) -> vec4<f32> { return vec4<f32>(f32(r), f32(c), 0.5, 0.25); }`
    : `@group(0) @binding(1) var ta: texture_storage_2d<rgba32float, read>;
@group(0) @binding(2) var tb: texture_storage_2d<rgba32float, read>;
fn tl_a(c: u32, r: u32) -> vec4<f32> { return textureLoad(ta, vec2<u32>(c, r)); }
fn tl_b(c: u32, r: u32) -> vec4<f32> { return textureLoad(tb, vec2<u32>(c, r)); }`;
  const a = (i: number) => `    let a${i} = tl_a(k4, r0 + ${i}u);\n`;
  const b = (j: number) =>
    [0, 1, 2, 3].map((kk) => `    let b${kk}_${j} = tl_b(c0 + ${j}u, kb + ${kk}u);\n`).join("");
  const chain = (i: number, j: number) => {
    let e = `acc${i}_${j}`;
    for (let kk = 0; kk < 4; kk++) e = `fma(vec4<f32>(a${i}.${X[kk]}), b${kk}_${j}, ${e})`;
    return `    acc${i}_${j} = ${e};\n`;
  };
  const rows = [...Array(tm).keys()], cols = [...Array(q).keys()];
  let body = "";
  if (v.order === "lo") {
    body = rows.map(a).join("") + cols.map(b).join("") + "    acc0_0 = acc0_0 + " +
      rows.map((i) => `a${i}`).concat(cols.flatMap((j) => [0, 1, 2, 3].map((k) => `b${k}_${j}`)))
        .join(" + ") +
      ";\n";
  } else if (v.order === "all") {
    body = rows.map(a).join("") + cols.map(b).join("") +
      rows.map((i) => cols.map((j) => chain(i, j)).join("")).join("");
  } else if (v.order === "cols") {
    body = rows.map(a).join("") + cols.map((j) => b(j) + rows.map((i) => chain(i, j)).join(""))
      .join("");
  } else { // rows (what the library does), syn
    body = cols.map(b).join("") + rows.map((i) => a(i) + cols.map((j) => chain(i, j)).join(""))
      .join("");
  }
  const acc = rows.flatMap((i) => cols.map((j) => `  var acc${i}_${j} = vec4<f32>(0.0);\n`));
  // the stores: direct, or as the library's epilogue does them (one store site in a loop over
  // the accumulators, a switch choosing each, bounds-checked)
  const st = v.epilogue === "switch"
    ? [
      `  for (var t = 0u; t < ${tm * q}u; t = t + 1u) {\n    var v: vec4<f32>;\n    switch t {\n`,
      ...rows.flatMap((i) =>
        cols.map((j) => {
          const t = i * q + j;
          return `      ${t === tm * q - 1 ? "default" : `case ${t}u`}: { v = acc${i}_${j}; }\n`;
        })
      ),
      `    }\n    store_row(r0 + t / ${q}u, c0 * 4u + (t % ${q}u) * 4u, v);\n  }\n`,
    ]
    : rows.flatMap((i) =>
      cols.map((j) => `  o[(r0 + ${i}u) * ${N / 4}u + c0 + ${j}u] = acc${i}_${j};\n`)
    );
  const storeRow = `fn store_row(m: u32, n: u32, v: vec4<f32>) {
  if (m >= ${M}u || n >= ${N}u) { return; }
  for (var j = 0u; j < 4u; j = j + 1u) {
    if (n + j >= ${N}u) { break; }
    o[(m * ${N}u + n + j) / 4u][(n + j) % 4u] = v[j];
  }
}
`;
  return `@group(0) @binding(0) var<storage, read_write> o: array<vec4<f32>>;
${tl}
${storeRow}
@compute @workgroup_size(8, 2, 1)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let c0 = (wg.x * 8u + lid.x) * ${q}u;
  let r0 = (wg.y * 2u + lid.y) * ${tm}u;
${acc.join("")}  for (var k4 = 0u; k4 < ${K / 4}u; k4 = k4 + 1u) {
    let kb = k4 * 4u;
${body}  }
${st.join("")}}`;
}

async function kernels(): Promise<void> {
  const dev = await device();
  const [M, K, N] = String(flags.shape).split(",").map(Number);
  const rnd = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * s));
  const usage = GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST;
  const ta = dev.createTexture({ size: [K / 4, M], format: "rgba32float", usage });
  const tb = dev.createTexture({ size: [N / 4, K], format: "rgba32float", usage });
  dev.queue.writeTexture({ texture: ta }, rnd(M * K, 0.37), { bytesPerRow: K * 4 }, [K / 4, M]);
  dev.queue.writeTexture({ texture: tb }, rnd(K * N, 0.11), { bytesPerRow: N * 4 }, [N / 4, K]);
  const out = dev.createBuffer({ size: M * N * 4, usage: GPUBufferUsage.STORAGE });
  const variants: Variant[] = String(flags.variants).split(";").map((s) => {
    const [order, tm, q, epilogue] = s.split(",");
    return { order, tm: Number(tm), q: Number(q), epilogue };
  });
  const runs = variants.map((v) => {
    const t0 = performance.now();
    const res: GPUBindingResource[] = v.order === "syn"
      ? [{ buffer: out }]
      : [{ buffer: out }, ta.createView(), tb.createView()];
    const go = pipeline(dev, kernelSource(v, M, K, N), res);
    return { v, go, t0, best: Infinity, compile: 0 };
  });
  for (const r of runs) {
    await r.go([N / (8 * 4 * r.v.q), M / (2 * r.v.tm)]);
    r.compile = performance.now() - r.t0;
  }
  for (let round = 0; round < rounds; round++) {
    for (const r of runs) {
      const c0 = cpuMs();
      for (let i = 0; i < 4; i++) await r.go([N / (8 * 4 * r.v.q), M / (2 * r.v.tm)]);
      r.best = Math.min(r.best, (cpuMs() - c0) / 4);
    }
  }
  console.log(`${M}x${K}x${N} f32, CPU ms per product (fewest of ${rounds} rounds of 4)`);
  for (const r of runs) {
    const gf = (2 * M * N * K) / r.best / 1e6;
    console.log(
      `${r.v.order.padEnd(5)} ${r.v.tm}x${4 * r.v.q} ${r.v.epilogue ?? ""}`.padEnd(20) +
        `${r.best.toFixed(1).padStart(7)} ms  ${gf.toFixed(1).padStart(6)} GFLOP per CPU-s` +
        `  (first run with compile ${r.compile.toFixed(0)} ms)`,
    );
  }
}

async function cpu(): Promise<void> {
  const { matmul, rand, ready } = await import("../mod.ts");
  const { currentRuntime } = await import("../gpu/mod.ts");
  const { blockUntilReady, init, jit, numpy: np } = await import("@jax-js/jax");
  await ready();
  await init("wasm");
  const rt = currentRuntime();
  console.log(`ulp on ${rt.info.description}; jax-js on Wasm`);
  const n = 1024;
  const host = Float32Array.from({ length: n * n }, (_, i) => Math.sin(i));
  const a = rand([n, n], { seed: 1 }), b = rand([n, n], { seed: 2 });
  const wa = np.array(host, { device: "wasm" }).reshape([n, n]);
  const wb = np.array(host, { device: "wasm" }).reshape([n, n]);
  const jmm = jit((x: typeof wa, y: typeof wa) => np.matmul(x, y));
  const runs: Record<string, () => Promise<void>> = {
    ulp: async () => {
      matmul(a, b).dispose();
      await rt.sync();
    },
    "jax-js wasm": async () => {
      const o = jmm(wa.ref, wb.ref);
      await blockUntilReady([o]);
      o.dispose();
    },
  };
  const best: Record<string, { wall: number; cpu: number; threads: string }> = {};
  for (const [k, f] of Object.entries(runs)) {
    await f();
    best[k] = { wall: Infinity, cpu: Infinity, threads: "" };
  }
  for (let r = 0; r < rounds; r++) {
    for (const [k, f] of Object.entries(runs)) {
      const t0 = threadMs(), c0 = cpuMs(), w0 = performance.now();
      for (let i = 0; i < 4; i++) await f();
      const wall = (performance.now() - w0) / 4, used = (cpuMs() - c0) / 4, t1 = threadMs();
      if (used < best[k].cpu) {
        const busy = [...t1].map(([name, ms]) => [name, (ms - (t0.get(name) ?? 0)) / 4] as const)
          .filter(([, ms]) => ms > 2).map(([name, ms]) => `${name} ${ms.toFixed(1)}`);
        best[k] = { wall: Math.min(best[k].wall, wall), cpu: used, threads: busy.join(", ") };
      }
      best[k].wall = Math.min(best[k].wall, wall);
    }
  }
  const gf = (ms: number) => ((2 * n ** 3) / ms / 1e6).toFixed(1);
  for (const [k, v] of Object.entries(best)) {
    console.log(
      `${k.padEnd(12)} wall ${v.wall.toFixed(1)} ms (${gf(v.wall)} GFLOP/s), CPU ${
        v.cpu.toFixed(1)
      } ms (${gf(v.cpu)} GFLOP per CPU-s); threads (CPU ms): ${v.threads}`,
    );
  }
}

if (mode === "loads") await loads();
else if (mode === "kernels") await kernels();
else if (mode === "cpu") await cpu();
else throw new Error(`matmul_lab: unknown mode '${mode}' (loads, kernels, cpu)`);
Deno.exit(0);
