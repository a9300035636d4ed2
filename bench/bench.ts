/**
 * Benchmarks (issues 8 and 20): matmul in every storage dtype, an elementwise chain, softmax,
 * layer norm, optimizer steps over 10M parameters and a GPT training step per precision
 * strategy, each timed side by side with two peers where they have the same operation:
 * TensorFlow.js's WebGPU backend and jax-js's (`jit`-compiled, as a jax-js user writes it), in
 * the same process, on the same adapter. Then the issues' targets, each with pass or miss and
 * by how much.
 *
 * Run: deno task bench [--quick] [--json] [--peers tfjs,jaxjs] [--no-peer] [--only matmul,...]
 *   [--matmul-family auto|workgroup] [--row-family auto|workgroup]
 *   (deno run --config bench/deno.json --allow-env=DENO_WEBGPU_BACKEND bench/bench.ts; the
 *   peers are imported through bench/deno.json only, so the library's own install stays
 *   small; no other permission: npm modules load from Deno's cache, and the env variable is
 *   only read to name the backend)
 *
 * Speedups are peer_ms / ulp_ms: above 1, ulp is faster. On a shared machine absolute times
 * drift; the contestants of a case run round robin so that their ratios hold.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  AdamW,
  autocast,
  GPT,
  layerNorm,
  matmul,
  memory,
  precisionNames,
  precisionStrategy,
  type Tensor,
  tensor,
  tidy,
} from "../mod.ts";
// internals (the runtime's counters, the matmul tuner): the folders' own entry points
import { getRuntime, type Runtime } from "../gpu/mod.ts";
import { tuneMatmul } from "../tensor/mod.ts";
import { setMatmulFamily } from "../tensor/ops/matmul.ts";
import { setRowFamily } from "../tensor/ops/reduce.ts";
import { setupTfjs, tf, TfGPT, TFJS_VERSION, tfLayerNorm, type TfPeer } from "./_tfjs.ts";
import {
  gptParamNames,
  type JaxAdamWState,
  jaxAdamWState,
  jaxAdamWUpdate,
  jaxContestant,
  jaxGptLoss,
  type JaxGPTParams,
  type JaxGPTState,
  jaxGptState,
  jaxGptTrainStep,
  JAXJS_VERSION,
  jaxLayerNorm,
  type JaxPeer,
  jaxStateContestant,
  jaxValues,
  jit,
  nn as jnn,
  np,
  setupJaxjs,
  setupJaxWasm,
  tree,
} from "./_jaxjs.ts";
import { type Contestant, timeSideBySide, type Timing } from "./_timing.ts";
import { type Gpt2Row, gpt2Step } from "./gpt2.ts";
import {
  fmt,
  type Metric,
  PEER_LABEL,
  type PeerInfo,
  type PeerName,
  PEERS,
  printReport,
  type Row,
  speedup,
  speedupVsFastest,
  spreadPct,
  type StepStats,
  type Target,
} from "./_report.ts";

// ---------------------------------------------------------------------------------------
// options

const { values: flags } = (() => {
  try {
    return parseArgs({
      args: Deno.args,
      options: {
        quick: { type: "boolean", default: false },
        json: { type: "boolean", default: false },
        peers: { type: "string", default: PEERS.join(",") },
        "no-peer": { type: "boolean", default: false },
        gpt2: { type: "string" },
        "matmul-family": { type: "string", default: "auto" },
        "row-family": { type: "string", default: "auto" },
        only: { type: "string" },
        help: { type: "boolean", default: false },
      },
      strict: true,
    });
  } catch (e) {
    console.error(`bench: ${(e as Error).message}; see --help`);
    Deno.exit(2);
  }
})();
if (flags.help) {
  console.log(`Usage: deno task bench [--quick] [--json] [--peers tfjs,jaxjs] [--no-peer]
       [--only sections] [--matmul-family auto|workgroup] [--row-family auto|workgroup]

  --quick    sizes up to 1024, fewer repetitions (about 5 minutes on 2 shared CPU cores)
  --json     print one JSON document on stdout (progress and the text report go to stderr)
  --peers    the peers to run, comma-separated (default ${PEERS.join(",")}):
             tfjs   TensorFlow.js ${TFJS_VERSION}, WebGPU backend
             jaxjs  jax-js ${JAXJS_VERSION}, WebGPU backend, jit
  --no-peer  no peer (ulp only; the same as --peers "")
  --gpt2     strategies of the GPT-2 small step (batch 1, context 64), comma-separated, or
             "none" (default: every strategy; with --quick, amp-bf16); bench/gpt2.ts runs
             more (other sizes, contexts)
  --only     run only these sections, comma-separated: matmul, elementwise, reduce, softmax,
             norm, optimizer, gpt (the small GPT step), gpt2 (default: all; targets whose rows
             did not run say so)
  --matmul-family  auto (default: the kernel family the tiles choose per adapter; on a CPU
             adapter the f32 matmul rows also time the workgroup-memory kernel and jax-js's
             Wasm backend beside it) or workgroup (the workgroup-memory kernel everywhere, as
             before the texture family)
  --row-family  auto (default: softmax, the norms and reductions over contiguous runs take
             the lane kernels on a CPU adapter, and those rows also time the workgroup-memory
             kernels beside them) or workgroup (the workgroup-memory kernels everywhere)

Speedups are peer_ms / ulp_ms (above 1: ulp is faster).`);
  Deno.exit(0);
}
const wanted = flags["no-peer"] ? [] : flags.peers.split(",").map((p) => p.trim()).filter(Boolean);
for (const p of wanted) {
  if (!(PEERS as readonly string[]).includes(p)) {
    console.error(`bench: unknown peer '${p}' in --peers; the peers are ${PEERS.join(", ")}`);
    Deno.exit(2);
  }
}

if (!["auto", "workgroup"].includes(flags["matmul-family"])) {
  console.error(
    `bench: --matmul-family must be auto or workgroup, got '${flags["matmul-family"]}'`,
  );
  Deno.exit(2);
}
const FAMILY = flags["matmul-family"] as "auto" | "workgroup";
if (!["auto", "workgroup"].includes(flags["row-family"])) {
  console.error(`bench: --row-family must be auto or workgroup, got '${flags["row-family"]}'`);
  Deno.exit(2);
}
const ROW_FAMILY = flags["row-family"] as "auto" | "workgroup";
const SECTIONS = ["matmul", "elementwise", "reduce", "softmax", "norm", "optimizer", "gpt", "gpt2"];
const ONLY = flags.only === undefined
  ? null
  : new Set(flags.only.split(",").map((x) => x.trim()).filter(Boolean));
for (const x of ONLY ?? []) {
  if (!SECTIONS.includes(x)) {
    console.error(
      `bench: unknown section '${x}' in --only; the sections are ${SECTIONS.join(", ")}`,
    );
    Deno.exit(2);
  }
}
/** Whether a section runs (--only). */
const runs = (section: string) => ONLY === null || ONLY.has(section);

const QUICK = flags.quick;
const MODE = {
  sizes: QUICK ? [256, 512, 1024] : [256, 512, 1024, 2048],
  timing: QUICK
    ? { warmup: 3, reps: 3, targetMs: 400, maxInner: 32 }
    : { warmup: 3, reps: 5, targetMs: 400, maxInner: 32 },
  // the GPT step: warm-up steps (the second one is also measured for memory and counters)
  gpt: QUICK ? { warmup: 2, reps: 3 } : { warmup: 2, reps: 5 },
  optParams: 10_000_000,
  strategies: QUICK
    ? ["fp32", "amp-bf16", "collage-light"]
    : ["fp32", "amp-bf16", "bf16", "collage-light", "collage-plus"],
};
/** The reference GPT: 4 layers, 4 heads, width 128, context 64, batch 16, vocab 100. */
const GPT_CFG = { vocabSize: 100, blockSize: 64, nLayer: 4, nHead: 4, nEmbd: 128 };
const BATCH = 16;
/** "A few hundred" dispatches per step, read as at most 300. */
const MAX_DISPATCHES = 300;

const log = (msg: string) => console.error(msg);
const t0 = performance.now();

// ---------------------------------------------------------------------------------------
// setup: ulp's device, then TF.js on its own device from the same adapter

const rt: Runtime = await getRuntime();
const ulpSync = () => rt.sync();
const backendName = (() => {
  try {
    const ok = Deno.permissions.querySync({ name: "env", variable: "DENO_WEBGPU_BACKEND" });
    return ok.state === "granted" ? Deno.env.get("DENO_WEBGPU_BACKEND") ?? "default" : "unknown";
  } catch {
    return "unknown";
  }
})();
const notRun = flags["no-peer"] ? "skipped (--no-peer)" : "skipped (not in --peers)";
let peer: TfPeer | null = null;
let peerWhy = notRun;
if (wanted.includes("tfjs")) {
  const p = await setupTfjs();
  if (typeof p === "string") peerWhy = p;
  else peer = p;
}
let jax: JaxPeer | null = null;
let jaxWhy = notRun;
if (wanted.includes("jaxjs")) {
  const p = await setupJaxjs();
  if (typeof p === "string") jaxWhy = p;
  else jax = p;
}
const peerInfo: PeerInfo[] = [
  {
    name: "tfjs",
    what: peer ? `TF.js ${TFJS_VERSION} webgpu on ${peer.adapter}` : `not run: ${peerWhy}`,
    sameAdapter: peer ? peer.adapter === rt.info.description : null,
  },
  {
    name: "jaxjs",
    what: jax ? `jax-js ${JAXJS_VERSION} webgpu (jit) on ${jax.adapter}` : `not run: ${jaxWhy}`,
    sameAdapter: jax ? jax.adapter === rt.info.description : null,
  },
];
log(
  `ulp on ${rt.info.description} (${backendName}, f16 ${rt.info.f16Storage}); ` +
    peerInfo.map((p) => p.what).join("; "),
);

// matmul tiles per shape class: a short tuning run on this adapter, kept for the process
setMatmulFamily(FAMILY);
setRowFamily(ROW_FAMILY);
const tuning = await tuneMatmul();
const tileName = (t: { tm: number; tn: number; wgx: number; wgy: number; family?: string }) =>
  `${t.tm}x${t.tn}/${t.wgx}x${t.wgy}${t.family ? ` ${t.family}` : ""}`;
log(
  `matmul tiles (tuned, family ${FAMILY}): ` +
    tuning.map((t) => `${t.shapeClass} ${tileName(t.tiles)}`).join(", "),
);
// On a CPU adapter, the f32 rows also time the workgroup-memory kernel (the family before the
// texture one, issue 20 item 3) and jax-js's Wasm backend (a CPU peer on the same cores)
const cpuSideBySide = FAMILY === "auto" && rt.info.isFallbackAdapter;
const rowSideBySide = ROW_FAMILY === "auto" && rt.info.isFallbackAdapter;
let jaxWasm = false;
if (cpuSideBySide && wanted.includes("jaxjs")) {
  const w = await setupJaxWasm();
  if (w === true) jaxWasm = true;
  else log(`jax-js Wasm: not run: ${w}`);
}

const rows: Row[] = [];
const metrics: Metric[] = [];
const unavailable: { case: string; reason: string }[] = [];
const steps: StepStats[] = [];

/** A timing as a row's peer time. */
const asPeer = (t: Timing | null | undefined) => (t ? { ms: t.ms, samples: t.samples } : null);

function addRow(
  name: string,
  ulp: Timing | null,
  peerTimes: Partial<Record<PeerName, Timing | null>>,
  note = "",
): void {
  rows.push({
    case: name,
    ulp_ms: ulp?.ms ?? null,
    peers: { tfjs: asPeer(peerTimes.tfjs), jaxjs: asPeer(peerTimes.jaxjs) },
    note,
    ulp_samples: ulp?.samples ?? [],
  });
}

function tfContestant(label: string, run: () => unknown): Contestant[] {
  if (!peer) return [];
  const p = peer;
  return [{ label, run: () => tf.tidy(() => void run()), sync: () => p.sync() }];
}

/** The largest |a - b| of two arrays of values. */
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(Number(a[i]) - Number(b[i])));
  return m;
}

/** The agreement checks of a case: "max |ulp-tfjs| ..., max |ulp-jaxjs| ..." ("" if none). */
async function agreement(u: Tensor, t: tf.Tensor | null, j: np.Array | null): Promise<string> {
  const ulpVals = await u.toArray();
  const parts: string[] = [];
  if (t) parts.push(`max |ulp-tfjs| ${fmtE(maxDiff(ulpVals, await t.data()))}`);
  if (j) parts.push(`max |ulp-jaxjs| ${fmtE(maxDiff(ulpVals, await jaxValues(j)))}`);
  return parts.join(", ");
}

/** Deterministic host data in [-scale, scale), the same for both frameworks. */
function hostData(n: number, seed: number, scale = 1): Float32Array<ArrayBuffer> {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0; // mulberry32
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

const fmtE = (x: number) => x.toExponential(1);

// ---------------------------------------------------------------------------------------
// matmul: f32 and bf16, f16, e4m3 storage; TF.js has f32 only, jax-js f32 and f16

const MM_DTYPES = ["f32", "bf16", "f16", "e4m3"] as const;
/** Times of the CPU side-by-side contestants, by metric and size ("jaxjs_wasm_gflops 1024"). */
const timesOf = new Map<string, number>();
/** Whether jax-js's device can run f16 (WebGPU's shader-f16). */
const jaxF16 = () => jax !== null && jax.f16;

/**
 * The matmul rows of one shape, (M, K) @ (K, N), in every storage dtype. `transA`: A is stored
 * as (K, M) and used transposed, as the weight gradient x^T dy of a linear layer is (each
 * contestant in its own idiom: ulp's `transA`, TF.js's `transposeA`, jax-js's transpose under
 * `jit`).
 */
async function benchMatmul(
  M: number,
  K: number,
  N: number,
  label: string,
  transA = false,
): Promise<void> {
  log(`matmul ${label}`);
  const a = hostData(M * K, 1), b = hostData(K * N, 2);
  const aShape = transA ? [K, M] : [M, K];
  const ua = MM_DTYPES.map((dt) => tensor(a, { shape: aShape, dtype: dt }));
  const ub = MM_DTYPES.map((dt) => tensor(b, { shape: [K, N], dtype: dt }));
  const ta = peer ? tf.tensor2d(a, aShape as [number, number]) : null;
  const tb = peer ? tf.tensor2d(b, [K, N]) : null;
  const jdt = jaxF16() ? [np.float32, np.float16] : [np.float32];
  const ja = jax ? jdt.map((dt) => np.array(a).astype(dt).reshape(aShape)) : [];
  const jb = jax ? jdt.map((dt) => np.array(b).astype(dt).reshape([K, N])) : [];
  const jmm = jit((x: np.Array, y: np.Array) => np.matmul(transA ? np.matrixTranspose(x) : x, y));
  const ulpMm = (x: Tensor, y: Tensor) => matmul(x, y, { transA });
  const tfMm = () => tf.matMul(ta!, tb!, transA, false);
  const contestants: Contestant[] = MM_DTYPES.map((dt, i) => ({
    label: `ulp ${dt}`,
    run: () => ulpMm(ua[i], ub[i]).dispose(),
    sync: ulpSync,
  }));
  contestants.push(...tfContestant("tfjs f32", tfMm));
  const jaxAt = contestants.length;
  ja.forEach((x, i) => {
    const name = i === 0 ? "f32" : "f16";
    contestants.push(jaxContestant(`jaxjs ${name}`, () => jmm(x.ref, jb[i].ref)));
  });
  // the CPU side-by-side: ulp f32 with the workgroup-memory kernel, jax-js on Wasm
  const wgAt = contestants.length;
  if (cpuSideBySide) {
    contestants.push({
      label: "ulp f32 workgroup-memory kernel",
      run: () => {
        const before = setMatmulFamily("workgroup");
        try {
          ulpMm(ua[0], ub[0]).dispose();
        } finally {
          setMatmulFamily(before);
        }
      },
      sync: ulpSync,
    });
  }
  const wa = jaxWasm ? np.array(a, { device: "wasm" }).reshape(aShape) : null;
  const wb = jaxWasm ? np.array(b, { device: "wasm" }).reshape([K, N]) : null;
  const wasmAt = contestants.length;
  if (wa && wb) contestants.push(jaxContestant("jaxjs-wasm f32", () => jmm(wa.ref, wb.ref)));
  // the workgroup-memory kernel runs right after ulp f32 in each round, so that the pair the
  // item-3 target compares sees the same load on a shared machine
  const order = contestants.map((_, i) => i);
  if (cpuSideBySide) order.splice(1, 0, ...order.splice(wgAt, 1));
  const timed = await timeSideBySide(order.map((i) => contestants[i]), MODE.timing, log);
  const timings: (Timing | null)[] = [], errors: (string | null)[] = [];
  order.forEach((i, k) => {
    timings[i] = timed.timings[k];
    errors[i] = timed.errors[k];
  });
  const wgT = cpuSideBySide ? timings[wgAt] : null;
  const wasmT = wa ? timings[wasmAt] : null;
  const tfT = peer ? timings[MM_DTYPES.length] : null;
  const jaxT = ja.map((_, i) => timings[jaxAt + i]);
  let check = "";
  if (timings[0] && (tfT || jaxT[0])) {
    const u = ulpMm(ua[0], ub[0]);
    const t = tfT ? tfMm() : null;
    const j = jaxT[0] ? jmm(ja[0].ref, jb[0].ref) : null;
    check = "; " + await agreement(u, t, j);
    u.dispose();
    t?.dispose();
    j?.dispose();
  }
  const flop = 2 * M * N * K;
  const gf = (x: Timing | null | undefined) => (x ? (flop / x.ms / 1e6).toFixed(1) : "-");
  MM_DTYPES.forEach((dt, i) => {
    const name = `matmul ${dt} ${label}`;
    const t = timings[i];
    if (!t) unavailable.push({ case: name, reason: errors[i] ?? "failed" });
    const jaxRowT = dt === "f16" && jaxT[1] !== undefined ? jaxT[1] : jaxT[0];
    const jaxDt = dt === "f16" && jaxT[1] !== undefined ? "f16" : "f32";
    let peerNote = "";
    if (dt !== "f32") {
      const f32Peers = [peer ? "TF.js" : "", jax && jaxDt === "f32" ? "jax-js" : ""]
        .filter(Boolean);
      if (f32Peers.length) peerNote = `; ${f32Peers.join(" and ")} in f32 (no ${dt} matmul)`;
      if (jax && jaxDt === "f16") peerNote += "; jax-js in f16";
    }
    const cpuNote = dt === "f32" && (wgT || wasmT)
      ? `; workgroup-memory kernel ${gf(wgT)}${
        wgT && t ? ` (${(wgT.ms / t.ms).toFixed(2)}x its time)` : ""
      }, jax-js Wasm ${gf(wasmT)}${wasmT && t ? ` (${(wasmT.ms / t.ms).toFixed(2)}x)` : ""}`
      : "";
    addRow(
      name,
      t,
      { tfjs: tfT, jaxjs: jaxRowT },
      `GFLOP/s ulp ${gf(t)} tfjs ${gf(tfT)} jaxjs ${gf(jaxRowT)}${peerNote}` +
        (dt === "f32" ? check + cpuNote : ""),
    );
    if (t) {
      metrics.push({ case: name, metric: "gflops", value: flop / t.ms / 1e6, unit: "GFLOP/s" });
    }
  });
  if (tfT) {
    metrics.push({
      case: `matmul f32 ${label}`,
      metric: "tfjs_gflops",
      value: flop / tfT.ms / 1e6,
      unit: "GFLOP/s",
    });
  }
  jaxT.forEach((t, i) => {
    if (!t) return;
    metrics.push({
      case: `matmul ${i === 0 ? "f32" : "f16"} ${label}`,
      metric: "jaxjs_gflops",
      value: flop / t.ms / 1e6,
      unit: "GFLOP/s",
    });
  });
  for (
    const [metric, t] of [["workgroup_kernel_gflops", wgT], ["jaxjs_wasm_gflops", wasmT]] as const
  ) {
    if (t) {
      metrics.push({
        case: `matmul f32 ${label}`,
        metric,
        value: flop / t.ms / 1e6,
        unit: "GFLOP/s",
      });
    }
    if (t) timesOf.set(`${metric} ${label}`, t.ms);
  }
  wa?.dispose();
  wb?.dispose();
  for (const t of [...ua, ...ub]) t.dispose();
  ta?.dispose();
  tb?.dispose();
  for (const x of [...ja, ...jb]) x.dispose();
  jmm.dispose();
}

// ---------------------------------------------------------------------------------------
// elementwise chain, softmax, layer norm (f32; forward only)

async function benchPair(
  name: string,
  shape: number[],
  ulpOp: (xs: Tensor[]) => Tensor,
  tfOp: (xs: tf.Tensor[]) => tf.Tensor,
  jaxOp: (xs: np.Array[]) => np.Array,
  inputs: { shape: number[]; scale: number }[],
  rowKernel = false,
): Promise<void> {
  log(name);
  const data = inputs.map((s, i) => hostData(s.shape.reduce((p, q) => p * q, 1), 10 + i, s.scale));
  const us = data.map((d, i) => tensor(d, { shape: inputs[i].shape }));
  const ts = peer ? data.map((d, i) => tf.tensor(d, inputs[i].shape)) : [];
  const js = jax ? data.map((d, i) => np.array(d).reshape(inputs[i].shape)) : [];
  // jit: jax-js fuses only what it compiles; a jax-js user writes jit around such a function
  const jf = jit((...xs: np.Array[]) => jaxOp(xs));
  const contestants: Contestant[] = [
    // realize(): elementwise work is deferred until its values are needed (fusion)
    { label: "ulp", run: () => tidy(() => ulpOp(us).realize()).dispose(), sync: ulpSync },
    ...tfContestant("tfjs", () => tfOp(ts)),
  ];
  const jaxAt = contestants.length;
  if (jax) {
    contestants.push(jaxContestant("jaxjs", () => jf(...js.map((x) => x.ref))));
  }
  // the CPU side-by-side of a row kernel: ulp with the workgroup-memory row kernels
  const wgAt = contestants.length;
  const wgSide = rowKernel && rowSideBySide;
  if (wgSide) {
    contestants.push({
      label: "ulp workgroup-memory kernel",
      run: () => {
        const before = setRowFamily("workgroup");
        try {
          tidy(() => ulpOp(us).realize()).dispose();
        } finally {
          setRowFamily(before);
        }
      },
      sync: ulpSync,
    });
  }
  const { timings, errors } = await timeSideBySide(contestants, MODE.timing, log);
  if (!timings[0]) unavailable.push({ case: name, reason: errors[0] ?? "failed" });
  const wgT = wgSide ? timings[wgAt] : null;
  const tfT = peer ? timings[1] : null, jaxT = jax ? timings[jaxAt] : null;
  let note = `${shape.length === 1 ? `${shape[0] / 2 ** 20}M` : shape.join("x")} f32`;
  if (timings[0] && (tfT || jaxT)) {
    const u = ulpOp(us);
    const t = tfT ? tfOp(ts) : null;
    const j = jaxT ? jf(...js.map((x) => x.ref)) : null;
    note += ", " + await agreement(u, t, j);
    u.dispose();
    t?.dispose();
    j?.dispose();
  }
  if (wgT) {
    note += `; workgroup-memory kernel ${fmt(wgT.ms)} ms${
      timings[0] ? ` (${(wgT.ms / timings[0].ms).toFixed(2)}x its time)` : ""
    }`;
    metrics.push({ case: name, metric: "workgroup_kernel_ms", value: wgT.ms, unit: "ms" });
  }
  addRow(name, timings[0], { tfjs: tfT, jaxjs: jaxT }, note);
  for (const t of us) t.dispose();
  for (const t of ts) t.dispose();
  for (const x of js) x.dispose();
  jf.dispose();
}

// ---------------------------------------------------------------------------------------
// optimizer step over 10M parameters (10 tensors of 1000 x 1000)

/** Whether ulp has a precision strategy; the reason it has not otherwise. */
function strategyMissing(name: string): string | null {
  try {
    precisionStrategy(name);
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}

async function benchOptimizer(): Promise<void> {
  const n = MODE.optParams, per = 1_000_000, count = n / per, shape = [1000, 1000];
  log(`optimizer step, ${n / 1e6}M parameters`);
  const precisions = ["fp32", "bf16", "collage-light", "collage-plus"];
  const made: { name: string; opt: AdamW; params: Tensor[] }[] = [];
  for (const p of precisions) {
    const missing = strategyMissing(p);
    if (missing) {
      unavailable.push({
        case: `optimizer adamw ${p} 10M`,
        reason: "not available yet: " + missing,
      });
      continue;
    }
    const dt = precisionStrategy(p).param.name;
    const gdt = precisionStrategy(p).grad.name;
    const params = Array.from({ length: count }, (_, i) => {
      const t = tensor(hostData(per, 100 + i, 0.02), { shape, dtype: dt });
      t.requiresGrad = true;
      t.grad = tensor(hostData(per, 200 + i, 1e-3), { shape, dtype: gdt });
      return t;
    });
    made.push({
      name: p,
      params,
      opt: new AdamW(params, { lr: 1e-3, weightDecay: 0.01, precision: p }),
    });
  }
  const contestants: Contestant[] = made.map((m) => ({
    label: `ulp ${m.name}`,
    run: () => m.opt.step(),
    sync: ulpSync,
  }));
  let tfVars: tf.Variable[] = [], tfGrads: { name: string; tensor: tf.Tensor }[] = [];
  if (peer) {
    tfVars = Array.from(
      { length: count },
      (_, i) => tf.variable(tf.tensor(hostData(per, 100 + i, 0.02), shape)),
    );
    tfGrads = tfVars.map((v, i) => ({
      name: v.name,
      tensor: tf.tensor(hostData(per, 200 + i, 1e-3), shape),
    }));
    const adam = tf.train.adam(1e-3, 0.9, 0.999, 1e-8);
    contestants.push(...tfContestant("tfjs adam", () => adam.applyGradients(tfGrads)));
  }
  // jax-js: AdamW in jax-js ops with ulp's fp32 settings, all 10 tensors in one jitted step
  const jaxAt = contestants.length;
  const jaxState: { current: JaxAdamWState } | null = jax
    ? {
      current: jaxAdamWState(
        Array.from({ length: count }, (_, i) =>
          np.array(hostData(per, 100 + i, 0.02)).reshape(shape)),
      ),
    }
    : null;
  const jaxGrads = jax
    ? Array.from({ length: count }, (_, i) => np.array(hostData(per, 200 + i, 1e-3)).reshape(shape))
    : [];
  const jaxStep = jit((s: JaxAdamWState, g: np.Array[]) =>
    jaxAdamWUpdate(s, g, { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 })
  );
  if (jaxState) {
    contestants.push(
      jaxStateContestant("jaxjs adamw", jaxState, (s) => jaxStep(s, jaxGrads.map((g) => g.ref))),
    );
  }
  const check = jax ? await adamwAgreement() : "";
  const { timings, errors } = await timeSideBySide(contestants, MODE.timing, log);
  const tfT = peer ? timings[made.length] : null;
  const jaxT = jax ? timings[jaxAt] : null;
  made.forEach((m, i) => {
    const name = `optimizer adamw ${m.name} 10M`;
    if (!timings[i]) unavailable.push({ case: name, reason: errors[i] ?? "failed" });
    addRow(
      name,
      timings[i],
      m.name === "fp32" ? { tfjs: tfT, jaxjs: jaxT } : {},
      m.name === "fp32"
        ? "peers: tf.train.adam (Adam without decoupled weight decay), f32; jax-js: the same " +
          "AdamW in jax-js ops, one jitted step, f32" + check
        : "no peer (neither TF.js nor jax-js has bf16 optimizer states)",
    );
  });
  for (const m of made) {
    m.opt.dispose();
    for (const p of m.params) {
      p.grad?.dispose();
      p.dispose();
    }
  }
  for (const v of tfVars) v.dispose();
  for (const g of tfGrads) g.tensor.dispose();
  if (jaxState) {
    const s = jaxState.current;
    for (const x of [...s.params, ...s.m, ...s.v, s.t]) x.dispose();
  }
  for (const g of jaxGrads) g.dispose();
  jaxStep.dispose();
}

/**
 * The check of the jax-js AdamW against ulp's (fp32, the row's settings): three steps with
 * different gradients over a few thousand parameters, then the largest difference.
 */
async function adamwAgreement(): Promise<string> {
  const n = 4096, steps = 3;
  const p0 = hostData(n, 300, 0.02);
  const gs = Array.from({ length: steps }, (_, k) => hostData(n, 301 + k, 1e-3));
  const p = tensor(p0, { shape: [n] });
  p.requiresGrad = true;
  const opt = new AdamW([p], { lr: 1e-3, weightDecay: 0.01 }); // betas (0.9, 0.999), eps 1e-8
  const step = jit((s: JaxAdamWState, g: np.Array[]) =>
    jaxAdamWUpdate(s, g, { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 })
  );
  let s = jaxAdamWState([np.array(p0)]);
  for (const g of gs) {
    p.grad?.dispose();
    p.grad = tensor(g, { shape: [n] });
    opt.step();
    s = step(s, [np.array(g)]);
  }
  const d = maxDiff(await p.toArray(), await jaxValues(s.params[0]));
  opt.dispose();
  p.grad?.dispose();
  p.dispose();
  for (const x of [...s.params, ...s.m, ...s.v, s.t]) x.dispose();
  step.dispose();
  return `; after ${steps} steps (${n} parameters) max |ulp-jaxjs| ${fmtE(d)}`;
}

// ---------------------------------------------------------------------------------------
// a GPT training step per precision strategy

interface UlpStep {
  strategy: string;
  step: () => void;
  /** The loss at the current weights (a forward pass outside the timing). */
  loss: () => Promise<number>;
  dispose: () => void;
}

function makeUlpStep(strategy: string, ids: Int32Array, tgt: Int32Array): UlpStep {
  const amp = strategy.startsWith("amp-");
  // amp-bf16: f32 master weights, fp32 AdamW, autocast around the forward (DESIGN.md 4);
  // the optimizer takes the "amp-bf16" precision when it exists, "fp32" (the same row) if not
  const optPrecision = amp && strategyMissing(strategy) ? "fp32" : strategy;
  const s = precisionStrategy(optPrecision);
  const model = new GPT({ ...GPT_CFG, seed: 1 }, { dtype: s.param.name });
  const opt = new AdamW(model.parameters(), {
    lr: 3e-3,
    betas: [0.9, 0.95],
    weightDecay: 0.1,
    precision: optPrecision,
  });
  const T = GPT_CFG.blockSize;
  const x = tensor(ids, { shape: [BATCH, T] }), y = tensor(tgt, { shape: [BATCH, T] });
  const lowDtype = strategy.slice(4);
  return {
    strategy,
    step: () =>
      tidy(() => {
        const { loss } = amp
          ? autocast({ dtype: lowDtype }, () => model.forward(x, y))
          : model.forward(x, y);
        loss!.backward();
        opt.step();
        opt.zeroGrad();
      }),
    loss: async () => {
      const l = tidy(() => model.forward(x, y).loss!);
      const v = (await l.toArray())[0];
      l.dispose();
      return v;
    },
    dispose: () => {
      opt.dispose();
      for (const p of model.parameters()) {
        p.grad?.dispose();
        p.dispose();
      }
      x.dispose();
      y.dispose();
    },
  };
}

async function benchGptStep(): Promise<void> {
  const T = GPT_CFG.blockSize, V = GPT_CFG.vocabSize;
  const ids = Int32Array.from(hostData(BATCH * T, 7), (v) => Math.floor((v + 1) * V / 2) % V);
  const tgt = Int32Array.from(hostData(BATCH * T, 8), (v) => Math.floor((v + 1) * V / 2) % V);
  const made: UlpStep[] = [];
  for (const s of MODE.strategies) {
    const name = `gpt step ${s}`;
    const missing = s.startsWith("amp-") ? null : strategyMissing(s);
    if (missing) {
      unavailable.push({ case: name, reason: "not available yet: " + missing });
      continue;
    }
    log(`${name}: warm-up, peak memory and counters`);
    try {
      const base = memory().liveBytes;
      const u = makeUlpStep(s, ids, tgt);
      for (let w = 0; w < MODE.gpt.warmup - 1; w++) {
        u.step();
        await rt.sync();
      }
      // the last warm-up step is the measured one: peak memory and the runtime's counters
      rt.resetPeak();
      const c0 = { ...rt.counters };
      const ts = performance.now();
      u.step();
      await rt.sync();
      const ms = performance.now() - ts;
      const m = memory();
      steps.push({
        strategy: s,
        peak_bytes: m.peakBytes - base,
        resident_bytes: m.liveBytes - base,
        dispatches: rt.counters.dispatches - c0.dispatches,
        submits: rt.counters.submits - c0.submits,
        readbacks: rt.counters.readbacks - c0.readbacks,
        compiles: rt.counters.compiles - c0.compiles,
        single_step_ms: ms,
      });
      made.push(u);
    } catch (e) {
      unavailable.push({ case: name, reason: `failed: ${(e as Error).message}` });
    }
  }
  const contestants: Contestant[] = made.map((u) => ({
    label: `ulp ${u.strategy}`,
    run: u.step,
    sync: ulpSync,
  }));
  let tfModel: TfGPT | null = null;
  const tfIn: tf.Tensor2D[] = [];
  if (peer) {
    const p = peer;
    tfModel = new TfGPT(GPT_CFG, 1);
    tfIn.push(tf.tensor2d(ids, [BATCH, T], "int32"), tf.tensor2d(tgt, [BATCH, T], "int32"));
    const adam = tf.train.adam(3e-3, 0.9, 0.95, 1e-8);
    const m = tfModel;
    const tfStep = () => void adam.minimize(() => m.loss(tfIn[0], tfIn[1]), false, m.vars);
    // two warm-up steps, the second one profiled: TF.js's kernels per step (tf.profile)
    try {
      tfStep();
      await p.sync();
      const prof = await tf.profile(tfStep);
      await p.sync();
      metrics.push({
        case: "gpt step fp32",
        metric: "tfjs_kernels_per_step",
        value: prof.kernels.length,
        unit: "kernels",
      });
    } catch (e) {
      log(`  tf.profile failed: ${(e as Error).message}`);
      tfStep(); // the second warm-up step the profiled one would have been
      await p.sync();
    }
    contestants.push({ label: "tfjs fp32", run: tfStep, sync: () => p.sync() });
  }
  // jax-js: the same GPT with the same initial weights as ulp's fp32 model (copied from a ulp
  // GPT of seed 1), jitted valueAndGrad + AdamW in jax-js ops
  const jaxAt = contestants.length;
  let jaxNote = "";
  let jaxState: { current: JaxGPTState } | null = null;
  const jaxIn: np.Array[] = [];
  if (jax) {
    try {
      const ref = new GPT({ ...GPT_CFG, seed: 1 });
      const params = await jaxParamsOf(ref);
      jaxIn.push(
        np.array(ids, { dtype: np.int32 }).reshape([BATCH, T]),
        np.array(tgt, { dtype: np.int32 }).reshape([BATCH, T]),
      );
      // the check: the loss of both at these weights
      const ulpLoss = tidy(() =>
        ref.forward(tensor(ids, { shape: [BATCH, T] }), tensor(tgt, { shape: [BATCH, T] })).loss!
      );
      const jaxLoss = jit((p: JaxGPTParams, x: np.Array, y: np.Array) =>
        jaxGptLoss(GPT_CFG, p, x, y)
      );
      const jl = jaxLoss(tree.ref(params), jaxIn[0].ref, jaxIn[1].ref);
      const [lu, lj] = [(await ulpLoss.toArray())[0], (await jl.data())[0]];
      jaxNote = `; loss at the same initial weights ulp ${lu.toFixed(5)} jax-js ${lj.toFixed(5)}`;
      ulpLoss.dispose();
      for (const p of ref.parameters()) p.dispose();
      // ulp's GPT step: AdamW lr 3e-3, betas (0.9, 0.95), weight decay 0.1
      const step = jaxGptTrainStep(GPT_CFG, {
        lr: 3e-3,
        betas: [0.9, 0.95],
        eps: 1e-8,
        weightDecay: 0.1,
      });
      const state = { current: jaxGptState(params) };
      const c = jaxStateContestant("jaxjs fp32", state, (s) => step(s, jaxIn[0].ref, jaxIn[1].ref));
      // warm-up steps as ulp's (the first one compiles)
      for (let w = 0; w < MODE.gpt.warmup; w++) {
        c.run();
        await c.sync();
      }
      // the check of gradients and AdamW: ulp's fp32 model took as many steps from the same
      // weights on the same batch; the loss of both now
      const ulpFp32 = made.find((u) => u.strategy === "fp32");
      if (ulpFp32) {
        const lu = await ulpFp32.loss();
        const jl2 = jaxLoss(tree.ref(state.current.params), jaxIn[0].ref, jaxIn[1].ref);
        const lj = (await jl2.data())[0];
        jaxNote += `; after ${MODE.gpt.warmup} steps ulp ${lu.toFixed(5)} jax-js ${lj.toFixed(5)}`;
      }
      jaxLoss.dispose();
      jaxState = state;
      contestants.push(c);
    } catch (e) {
      unavailable.push({
        case: "gpt step fp32 (jax-js)",
        reason: `failed: ${(e as Error).message}`,
      });
      log(`  jax-js gpt step failed: ${(e as Error).stack ?? e}`);
    }
  }
  log(`gpt step: timing ${contestants.map((c) => c.label).join(", ")}`);
  const { timings, errors } = await timeSideBySide(
    contestants,
    // every contestant is warm: ulp's and jax-js's ran warm-up steps above, TF.js its
    // profiled ones
    { warmup: 0, reps: MODE.gpt.reps, targetMs: 0, maxInner: 1 },
    log,
  );
  const tfT = peer ? timings[made.length] : null;
  const jaxT = jaxState ? timings[jaxAt] : null;
  made.forEach((u, i) => {
    const name = `gpt step ${u.strategy}`;
    if (!timings[i]) unavailable.push({ case: name, reason: errors[i] ?? "failed" });
    const st = steps.find((x) => x.strategy === u.strategy);
    if (st && timings[i]) st.step_ms = timings[i]!.ms;
    addRow(
      name,
      timings[i],
      u.strategy === "fp32" ? { tfjs: tfT, jaxjs: jaxT } : {},
      u.strategy === "fp32"
        ? "peers: the same GPT in TF.js ops + tf.train.adam; in jax-js ops, jit(valueAndGrad) " +
          "+ AdamW in jax-js ops" + jaxNote
        : "no peer (neither TF.js nor jax-js has bf16 training)",
    );
  });
  for (const u of made) u.dispose();
  tfModel?.dispose();
  for (const t of tfIn) t.dispose();
  if (jaxState) {
    const s = jaxState.current;
    for (const t of [s.params, s.m, s.v].flatMap((r) => Object.values(r))) t.dispose();
    s.t.dispose();
    s.loss.dispose();
  }
  for (const x of jaxIn) x.dispose();
}

/**
 * A ulp GPT's parameters as jax-js arrays, by name; Linear weights transposed to the [in, out]
 * layout jax-js code keeps (ulp's are [out, in], as PyTorch's).
 */
async function jaxParamsOf(model: GPT): Promise<JaxGPTParams> {
  const names = new Set(gptParamNames(GPT_CFG));
  const out: JaxGPTParams = {};
  for (const [n, t] of model.namedParameters()) {
    if (!names.has(n)) throw new Error(`jax-js GPT: unexpected parameter ${n} in ulp's GPT`);
    const v = Float32Array.from(await t.toArray());
    if (t.shape.length === 2 && !n.startsWith("wte.") && !n.startsWith("wpe.")) {
      const [o, i] = t.shape;
      const tr = new Float32Array(v.length);
      for (let r = 0; r < o; r++) for (let c = 0; c < i; c++) tr[c * o + r] = v[r * i + c];
      out[n] = np.array(tr).reshape([i, o]);
    } else {
      out[n] = np.array(v).reshape([...t.shape]);
    }
  }
  if (Object.keys(out).length !== names.size) {
    throw new Error(
      `jax-js GPT: ulp's GPT has ${Object.keys(out).length} parameters, expected ${names.size}`,
    );
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// run

const M4 = 4 * 1024 * 1024;
const safely = async (name: string, f: () => Promise<void>) => {
  try {
    await f();
  } catch (e) {
    unavailable.push({ case: name, reason: `failed: ${(e as Error).message}` });
    log(`${name} failed: ${(e as Error).stack ?? e}`);
  }
};

if (runs("matmul")) {
  for (const n of MODE.sizes) await safely(`matmul ${n}`, () => benchMatmul(n, n, n, String(n)));
  await safely("matmul 1024x128@128x512", () => benchMatmul(1024, 128, 512, "1024x128@128x512"));
  // a weight gradient of the bench GPT's fc layer: x^T dy over its 1024 rows (batch x context)
  await safely(
    "matmul 128x1024@1024x512 (A^T)",
    () => benchMatmul(128, 1024, 512, "128x1024@1024x512 (A^T)", true),
  );
}
if (runs("elementwise")) {
  await safely("elementwise chain 4M", () =>
    benchPair(
      "elementwise chain 4M",
      [M4],
      ([x, a, b, c]) => x.mul(a).add(b).exp().mul(c),
      ([x, a, b, c]) => tf.mul(tf.exp(tf.add(tf.mul(x, a), b)), c),
      ([x, a, b, c]) => np.exp(x.mul(a).add(b)).mul(c),
      [0, 1, 2, 3].map(() => ({ shape: [M4], scale: 1 })),
    ));
}
if (runs("softmax")) {
  // rows of 1024, and short rows: the attention softmax of the bench's GPT has rows of 64
  for (const [R, C] of [[4096, 1024], [16384, 64]]) {
    const name = `softmax ${R}x${C}`;
    await safely(name, () =>
      benchPair(
        name,
        [R, C],
        ([x]) => x.softmax(-1),
        ([x]) => tf.softmax(x),
        ([x]) => jnn.softmax(x, -1),
        [{ shape: [R, C], scale: 4 }],
        true,
      ));
  }
}
if (runs("reduce")) {
  // reductions: everything into one value, over rows (the last axis), over columns
  await safely(
    "sum 4M",
    () =>
      benchPair(
        "sum 4M",
        [M4],
        ([x]) => x.sum(),
        ([x]) => tf.sum(x),
        ([x]) => np.sum(x),
        [{ shape: [M4], scale: 1 }],
        true,
      ),
  );
  await safely("mean rows 4096x1024", () =>
    benchPair(
      "mean rows 4096x1024",
      [4096, 1024],
      ([x]) => x.mean(-1),
      ([x]) => tf.mean(x, -1),
      ([x]) => np.mean(x, -1),
      [{ shape: [4096, 1024], scale: 1 }],
      true,
    ));
  await safely("sum columns 4096x1024", () =>
    benchPair(
      "sum columns 4096x1024",
      [4096, 1024],
      ([x]) => x.sum(0),
      ([x]) => tf.sum(x, 0),
      ([x]) => np.sum(x, 0),
      [{ shape: [4096, 1024], scale: 1 }],
    ));
}
if (runs("norm")) {
  // rows of 512, and short rows: the bench GPT's width
  for (const [R, C] of [[8192, 512], [32768, 128]]) {
    const name = `layer norm ${R}x${C}`;
    await safely(name, () =>
      benchPair(
        name,
        [R, C],
        ([x, w, b]) => layerNorm(x, [C], w, b),
        ([x, w, b]) => tfLayerNorm(x, w, b),
        ([x, w, b]) => jaxLayerNorm(x, w, b),
        [{ shape: [R, C], scale: 2 }, { shape: [C], scale: 1 }, { shape: [C], scale: 1 }],
        true,
      ));
  }
}
if (runs("optimizer")) await safely("optimizer", benchOptimizer);
if (runs("gpt")) await safely("gpt step", benchGptStep);

// GPT-2 small, one training step per strategy after a warm-up step (issue 14)
const gpt2: Gpt2Row[] = [];
const gpt2Arg = flags.gpt2 ?? (QUICK ? "amp-bf16" : "all");
const gpt2Strategies = !runs("gpt2")
  ? []
  : gpt2Arg === "all"
  ? precisionNames()
  : gpt2Arg.split(",").map((x) => x.trim()).filter((x) => x && x !== "none");
for (const s of gpt2Strategies) {
  await safely(`gpt2 step ${s}`, async () => {
    log(`gpt2 step ${s} ...`);
    gpt2.push(await gpt2Step("gpt2", s, 64, 1));
  });
}

// ---------------------------------------------------------------------------------------
// targets

const row = (name: string) => rows.find((r) => r.case === name);
const step = (s: string) => steps.find((x) => x.strategy === s);
const targets: Target[] = [];
function target(
  name: string,
  value: number | null,
  op: "<=" | ">=",
  limit: number,
  detail: string,
  unit = "",
): void {
  const pass = value === null ? null : op === ">=" ? value >= limit : value <= limit;
  const margin = value === null || limit === 0
    ? null
    : (op === ">=" ? value / limit - 1 : 1 - value / limit) * 100;
  targets.push({ target: name, value, op, limit, unit, pass, margin_pct: margin, detail });
}
/** The run-to-run spread of the timings a target compares, as text. */
function noise(...parts: [string, "ulp" | PeerName][]): string {
  const each = parts.map(([c, side]) => {
    const r = row(c);
    if (!r) return null;
    return spreadPct(side === "ulp" ? r.ulp_samples : r.peers[side]?.samples ?? []);
  }).filter((p): p is number => p !== null);
  return each.length
    ? `; run-to-run spread of these timings up to ${Math.max(...each).toFixed(0)}%`
    : "";
}
const ratioOf = (a?: number | null, b?: number | null) =>
  a != null && b != null && b > 0 ? a / b : null;

target(
  "matmul f32 1024 at least 2x TF.js",
  (() => {
    const r = row("matmul f32 1024");
    return r ? speedup(r, "tfjs") : null;
  })(),
  ">=",
  2,
  "TF.js time / ulp time" + noise(["matmul f32 1024", "ulp"], ["matmul f32 1024", "tfjs"]),
  "x",
);
{
  const per = MODE.sizes.map((n) =>
    `${n}: ${ratioOf(row(`matmul bf16 ${n}`)?.ulp_ms, row(`matmul f32 ${n}`)?.ulp_ms)?.toFixed(2)}`
  );
  target(
    "bf16-storage matmul (1024) at least as fast as ulp f32",
    ratioOf(row("matmul bf16 1024")?.ulp_ms, row("matmul f32 1024")?.ulp_ms),
    "<=",
    1,
    `ulp bf16 time / ulp f32 time; by size ${per.join(", ")}` +
      noise(["matmul bf16 1024", "ulp"], ["matmul f32 1024", "ulp"]),
    "x",
  );
}
target(
  "gpt step fp32 at most half TF.js's time",
  ratioOf(row("gpt step fp32")?.ulp_ms, row("gpt step fp32")?.peers.tfjs?.ms),
  "<=",
  0.5,
  "ulp time / TF.js time" + noise(["gpt step fp32", "ulp"], ["gpt step fp32", "tfjs"]),
  "x",
);
target(
  "collage-light optimizer step at most 1.2x AdamW f32",
  ratioOf(
    row("optimizer adamw collage-light 10M")?.ulp_ms,
    row("optimizer adamw fp32 10M")?.ulp_ms,
  ),
  "<=",
  1.2,
  "collage-light time / fp32 time, 10M parameters" +
    noise(["optimizer adamw collage-light 10M", "ulp"], ["optimizer adamw fp32 10M", "ulp"]),
  "x",
);
target(
  "collage-light peak memory at most 0.8x amp-bf16",
  ratioOf(step("collage-light")?.peak_bytes, step("amp-bf16")?.peak_bytes),
  "<=",
  0.8,
  "peak bytes of a GPT training step (params, grads, states, activations)",
  "x",
);
{
  const worst = (k: "readbacks" | "dispatches") =>
    steps.length ? steps.reduce((w, s) => (s[k] > w[k] ? s : w)) : null;
  const r = worst("readbacks"), d = worst("dispatches");
  const each = (k: "readbacks" | "dispatches") =>
    steps.map((s) => `${s.strategy} ${s[k]}`).join(", ");
  target(
    "zero readbacks in a training step that logs nothing",
    r?.readbacks ?? null,
    "<=",
    0,
    `per step: ${each("readbacks")}`,
  );
  target(
    `at most a few hundred (${MAX_DISPATCHES}) dispatches per step`,
    d?.dispatches ?? null,
    "<=",
    MAX_DISPATCHES,
    `worst ${d?.strategy ?? "-"}; per step: ${each("dispatches")}`,
  );
}

// issue 20: ahead of the faster peer by 1.5x on every row with a peer; the GPT step at most
// 0.3x TF.js's time
{
  const vs = rows.map((r) => ({ r, v: speedupVsFastest(r) }))
    .filter((x): x is { r: Row; v: { peer: PeerName; value: number } } => x.v !== null);
  const worst = vs.length ? vs.reduce((w, x) => (x.v.value < w.v.value ? x : w)) : null;
  const below = vs.filter((x) => x.v.value < 1.5);
  target(
    "every row at least 1.5x the faster peer",
    worst?.v.value ?? null,
    ">=",
    1.5,
    worst
      ? `the faster peer's time / ulp time; worst ${worst.r.case} (vs ${
        PEER_LABEL[worst.v.peer]
      }); ${below.length} of ${vs.length} rows below 1.5x` +
        (below.length
          ? `: ${below.map((x) => `${x.r.case} ${x.v.value.toFixed(2)}x`).join(", ")}`
          : "")
      : "no row has a peer",
    "x",
  );
}
// issue 20, item 3: on a CPU adapter, the texture family against the workgroup-memory kernel
// and jax-js's Wasm backend, in the same run
if (cpuSideBySide) {
  const ulp = row("matmul f32 1024")?.ulp_ms;
  const wg = timesOf.get("workgroup_kernel_gflops 1024");
  target(
    "matmul f32 1024 at least 2.5x the workgroup-memory kernel (CPU adapter)",
    ratioOf(wg, ulp),
    ">=",
    2.5,
    "workgroup-memory kernel's time / ulp's (the texture family) in the same run",
    "x",
  );
  const wasm = timesOf.get("jaxjs_wasm_gflops 1024");
  target(
    "matmul f32 1024 faster than jax-js's Wasm backend (CPU adapter)",
    ratioOf(wasm, ulp),
    ">=",
    1,
    jaxWasm
      ? "jax-js Wasm time / ulp time, on the same cores in the same run"
      : "jax-js's Wasm backend not run",
    "x",
  );
}
target(
  "gpt step fp32 at most 0.3x TF.js's time",
  ratioOf(row("gpt step fp32")?.ulp_ms, row("gpt step fp32")?.peers.tfjs?.ms),
  "<=",
  0.3,
  "ulp time / TF.js time" + noise(["gpt step fp32", "ulp"], ["gpt step fp32", "tfjs"]),
  "x",
);

printReport({
  json: flags.json,
  mode: QUICK ? "quick" : "full",
  device: {
    adapter: rt.info.description,
    backend: backendName,
    f16Storage: rt.info.f16Storage,
    fallbackAdapter: rt.info.isFallbackAdapter,
    cpus: navigator.hardwareConcurrency,
    deno: Deno.version.deno,
    peers: peerInfo,
    matmulTiles: Object.fromEntries(tuning.map((t) => [t.shapeClass, t.tiles])),
  },
  rows,
  metrics,
  steps,
  targets,
  unavailable,
  gpt2,
  elapsedS: (performance.now() - t0) / 1000,
});
// jax-js's Wasm workers would keep the process alive
if (jaxWasm) Deno.exit(0);
