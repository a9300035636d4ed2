/**
 * Where a column sum's time goes on a CPU adapter (issue 20, item 2): the sum over the rows of
 * a 4096 x 1024 f32 matrix (the bench's "sum columns 4096x1024") run several ways on ulp's
 * device, side by side:
 *
 * - `ulp`: through the library (`x.sum(0)`), as `deno task bench` times it (on a CPU adapter
 *   its input read through a staged texture copy, `BindingSpec.staged`);
 * - `ulp, binding`: the same with staging off (`setStaging("never")`: the storage binding);
 * - `copy to texture`: the staged copy alone (16 MiB into an `rgba32uint` texture);
 * - `ulp's order, raw`: the column kernel's operations in raw WGSL (four quads an invocation,
 *   the generic kernel's 64 strided chains walked in its tree's order), checked bit for bit
 *   against the library's result;
 * - `one chain, 4 quads` and `one chain, 16 quads`: each column summed down its rows in one
 *   chain, 4 or 16 quads an invocation, no chains or tree (other bits: the access pattern's
 *   floor, whatever the order of the adds);
 * - `jax-js's kernel`: the WGSL jax-js 0.1.25 compiles for `jit(x => np.sum(x, 0))` (one column
 *   an invocation, four rows an iteration; copied from its generated source).
 *
 * Each repetition records `--inner` dispatches and waits; the median and minimum per dispatch
 * over `--reps` interleaved repetitions are printed, with ratios to jax-js's kernel.
 *
 * With `--sizes`, instead: the library's column sum over several shapes, its input staged and
 * bound (`setStaging`) in turn, `--inner` sums a repetition (where staging starts to pay).
 *
 * Run: deno run --allow-env=DENO_WEBGPU_BACKEND bench/reduce_floor.ts [--inner 5] [--reps 9]
 *   [--sizes]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { tensor } from "../mod.ts";
import { getRuntime, setStaging, STAGE_WIDTH } from "../gpu/mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    inner: { type: "string", default: "5" },
    reps: { type: "string", default: "9" },
    sizes: { type: "boolean", default: false },
  },
});
const INNER = Number(values.inner), REPS = Number(values.reps);
if (!(INNER >= 1 && REPS >= 1)) {
  console.error(`reduce_floor: --inner and --reps must be positive, got ${INNER} and ${REPS}`);
  Deno.exit(2);
}
const R = 4096, C = 1024, Q = C / 4;

/** Median and minimum of a list of times. */
const stat = (t: number[]) => {
  const s = [...t].sort((a, b) => a - b);
  return { min: s[0], med: s[s.length >> 1] };
};

if (values.sizes) {
  await getRuntime();
  const shapes = [[256, 1024], [1024, 1024], [2048, 1024], [2048, 2048], [4096, 1024], [8192, 768]];
  console.log(
    `shape        MiB   staged ms (median, min)   bound ms (median, min)   bound / staged`,
  );
  for (const [r, c] of shapes) {
    const x = tensor(Float32Array.from({ length: r * c }, (_, i) => Math.sin(i)), {
      shape: [r, c],
    });
    const t: Record<string, number[]> = { auto: [], never: [] };
    for (let k = 0; k < REPS; k++) {
      for (const mode of ["auto", "never"] as const) {
        const prev = setStaging(mode);
        try {
          x.sum(0).realize().dispose();
          await x.sum(0).toArray();
          const t0 = performance.now();
          for (let i = 0; i < INNER; i++) x.sum(0).realize().dispose();
          await (await getRuntime()).sync();
          t[mode].push((performance.now() - t0) / INNER);
        } finally {
          setStaging(prev);
        }
      }
    }
    x.dispose();
    const a = stat(t.auto), n = stat(t.never);
    console.log(
      `${`${r}x${c}`.padEnd(11)} ${((r * c * 4) / 2 ** 20).toFixed(0).padStart(4)}   ` +
        `${a.med.toFixed(2).padStart(8)} ${a.min.toFixed(2).padStart(7)}            ` +
        `${n.med.toFixed(2).padStart(8)} ${n.min.toFixed(2).padStart(7)}           ` +
        `${(n.med / a.med).toFixed(2)}x`,
    );
  }
  Deno.exit(0);
}

const rt = await getRuntime();
const dev = rt.device;
console.log(
  `adapter: ${rt.info.description} (${Deno.env.get("DENO_WEBGPU_BACKEND") ?? "default"})`,
);

const host = new Float32Array(R * C);
for (let i = 0, s = 1; i < host.length; i++) {
  s = (Math.imul(s, 1103515245) + 12345) >>> 0;
  host[i] = (s / 2 ** 32) * 2 - 1;
}
const x = tensor(host, { shape: [R, C] });
const libSum = new Float32Array(await x.sum(0).toArray());

const usage = GPUBufferUsage.STORAGE;
const inp = dev.createBuffer({
  size: host.byteLength,
  usage: usage | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
});
dev.queue.writeBuffer(inp, 0, host);
const out = dev.createBuffer({ size: C * 4, usage: usage | GPUBufferUsage.COPY_SRC });
const HEAD = `@group(0) @binding(0) var<storage, read> inp: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;`;

/** The column kernel's order: `qs` quads an invocation, chains in the tree's (bit-reversed) order. */
function ulpOrder(qs: number): string {
  const cs = Array.from({ length: qs }, (_, c) => c);
  const lines: string[] = [];
  let depth = 0;
  for (let k = 0; k < 64; k++) {
    let l = 0;
    for (let b = 0; b < 6; b++) l |= ((k >> b) & 1) << (5 - b);
    lines.push(`  ${cs.map((c) => `s${depth}_${c} = vec4<f32>(0.0);`).join(" ")}
  for (var r = ${l}u; r < ${R}u; r = r + 64u) { ${
      cs.map((c) => `s${depth}_${c} = s${depth}_${c} + inp[r * ${Q}u + q + ${c}u];`).join(" ")
    } }`);
    depth++;
    for (let m = k + 1; m % 2 === 0; m /= 2) {
      depth--;
      for (const c of cs) lines.push(`  s${depth - 1}_${c} = s${depth - 1}_${c} + s${depth}_${c};`);
    }
  }
  const decl = Array.from({ length: 7 }, (_, d) => cs.map((c) => `var s${d}_${c}: vec4<f32>;`))
    .flat().join(" ");
  return `${HEAD}
@compute @workgroup_size(16) fn main(@builtin(global_invocation_id) g: vec3u) {
  let q = g.x * ${qs}u;
  if (q >= ${Q}u) { return; }
  ${decl}
${lines.join("\n")}
${cs.map((c) => `  out[q + ${c}u] = s0_${c};`).join("\n")}
}`;
}

/** One chain a column, `qs` quads an invocation, workgroups of `wg`. */
function oneChain(qs: number): string {
  const cs = Array.from({ length: qs }, (_, c) => c);
  return `${HEAD}
@compute @workgroup_size(${qs > 4 ? 8 : 16}) fn main(@builtin(global_invocation_id) g: vec3u) {
  let q = g.x * ${qs}u;
  if (q >= ${Q}u) { return; }
  ${cs.map((c) => `var a${c} = vec4<f32>(0.0);`).join(" ")}
  for (var r = 0u; r < ${R}u; r = r + 1u) {
    ${cs.map((c) => `a${c} = a${c} + inp[r * ${Q}u + q + ${c}u];`).join(" ")}
  }
${cs.map((c) => `  out[q + ${c}u] = a${c};`).join("\n")}
}`;
}

// jax-js 0.1.25's kernel for jit(x => np.sum(x, 0)) at 4096 x 1024 (its constants inlined)
const JAXJS = `@group(0) @binding(0) var<storage, read> in0 : array<f32>;
@group(0) @binding(1) var<storage, read_write> result : array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id : vec3<u32>) {
  if (id.x >= ${C}) { return; }
  let gidx: i32 = i32(id.x);
  var acc0: f32 = f32(0);
  for (var ridx: i32 = 0; ridx < ${R / 4}; ridx++) {
    let alu0: i32 = gidx + (ridx * ${4 * C});
    acc0 += in0[alu0] + in0[alu0 + ${C}] + in0[alu0 + ${2 * C}] + in0[alu0 + ${3 * C}];
  }
  result[gidx] = acc0;
}`;

/** A runner of `code` over `groups` workgroups: `n` dispatches, then a wait. */
function raw(code: string, groups: number): (n: number) => Promise<void> {
  const p = dev.createComputePipeline({
    layout: "auto",
    compute: { module: dev.createShaderModule({ code }), entryPoint: "main" },
  });
  const bg = dev.createBindGroup({
    layout: p.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer: inp } }, { binding: 1, resource: { buffer: out } }],
  });
  return async (n) => {
    const e = dev.createCommandEncoder();
    for (let i = 0; i < n; i++) {
      const c = e.beginComputePass();
      c.setPipeline(p);
      c.setBindGroup(0, bg);
      c.dispatchWorkgroups(groups);
      c.end();
    }
    dev.queue.submit([e.finish()]);
    await dev.queue.onSubmittedWorkDone();
  };
}

/** The output buffer's values. */
async function readOut(): Promise<Float32Array> {
  const rb = dev.createBuffer({
    size: C * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const e = dev.createCommandEncoder();
  e.copyBufferToBuffer(out, 0, rb, 0, C * 4);
  dev.queue.submit([e.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const v = new Float32Array(rb.getMappedRange().slice(0));
  rb.destroy();
  return v;
}

const TH = (R * Q) / STAGE_WIDTH;
const tex = dev.createTexture({
  size: [STAGE_WIDTH, TH],
  format: "rgba32uint",
  usage: GPUTextureUsage.COPY_DST | GPUTextureUsage.STORAGE_BINDING,
});
const cases: [string, (n: number) => Promise<void>][] = [
  ["ulp", async (n) => {
    for (let i = 0; i < n; i++) x.sum(0).realize().dispose();
    await rt.sync();
  }],
  ["ulp, binding", async (n) => {
    const prev = setStaging("never");
    try {
      for (let i = 0; i < n; i++) x.sum(0).realize().dispose();
      await rt.sync();
    } finally {
      setStaging(prev);
    }
  }],
  ["copy to texture", async (n) => {
    const e = dev.createCommandEncoder();
    for (let i = 0; i < n; i++) {
      e.copyBufferToTexture({ buffer: inp, bytesPerRow: STAGE_WIDTH * 16 }, { texture: tex }, [
        STAGE_WIDTH,
        TH,
      ]);
    }
    dev.queue.submit([e.finish()]);
    await dev.queue.onSubmittedWorkDone();
  }],
  ["ulp's order, raw", raw(ulpOrder(4), Q / 4 / 16)],
  ["one chain, 4 quads", raw(oneChain(4), Q / 4 / 16)],
  ["one chain, 16 quads", raw(oneChain(16), Q / 16 / 8)],
  ["jax-js's kernel", raw(JAXJS, C / 256)],
];
for (const [name, go] of cases.slice(3)) {
  await go(1);
  const got = await readOut();
  if (name === "ulp's order, raw") {
    const diff = got.findIndex((v, i) => !Object.is(v, libSum[i]));
    console.log(diff < 0 ? "ulp's order, raw: the library's bits" : `MISMATCH at column ${diff}`);
    if (diff >= 0) Deno.exit(1);
  }
}

const times = new Map<string, number[]>(cases.map(([n]) => [n, []]));
for (let r = 0; r < REPS; r++) {
  for (const [name, go] of cases) {
    const t0 = performance.now();
    await go(INNER);
    times.get(name)!.push((performance.now() - t0) / INNER);
  }
}
const jax = stat(times.get("jax-js's kernel")!);
console.log(`\n${"case".padEnd(22)} median ms   min ms   jax-js's median / median`);
for (const [name, t] of times) {
  const s = stat(t);
  console.log(
    `${name.padEnd(22)} ${s.med.toFixed(2).padStart(9)} ${s.min.toFixed(2).padStart(8)}   ${
      (jax.med / s.med).toFixed(2)
    }x`,
  );
}
