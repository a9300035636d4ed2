/**
 * Where the time of one GPT training step goes (issue 20): the bench's GPT (4 layers, 4 heads,
 * width 128, context 64, batch 16), one step of forward, backward and AdamW, each dispatch
 * stamped by the GPU (`Runtime.startProfile`: a compute pass of its own per dispatch with
 * timestamp queries), summed per kernel label, sorted, with each label's share of the step's
 * dispatch time and the phase (forward, backward, AdamW) it was recorded in.
 *
 * Run: deno run --allow-env=DENO_WEBGPU_BACKEND bench/profile_step.ts [--strategy fp32]
 *   [--steps 3] [--top 25] [--shapes] (--shapes: one row per label and workgroup grid, to see
 *   which shapes of a kernel are slow) [--model gpt2] (GPT-2 small instead, random weights,
 *   batch 1, context 64, as `deno task bench` times its step)
 *
 * Times are the median over `--steps` profiled steps of each row's sum. One pass per dispatch
 * costs a little time of its own, so the sum of dispatch times is compared with the step's
 * wall time without profiling (`unprofiled step`); the rest is recording on the CPU, copies
 * outside the passes and pass overhead.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { AdamW, autocast, GPT, precisionStrategy, tensor, tidy } from "../mod.ts";
import { type DispatchTime, getRuntime } from "../gpu/mod.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    strategy: { type: "string", default: "fp32" },
    steps: { type: "string", default: "3" },
    top: { type: "string", default: "25" },
    shapes: { type: "boolean", default: false },
    model: { type: "string", default: "small" },
  },
});
const STEPS = Number(flags.steps), TOP = Number(flags.top);
if (flags.model !== "small" && flags.model !== "gpt2") {
  console.error(`profile_step: --model takes small or gpt2, got '${flags.model}'`);
  Deno.exit(2);
}
const GPT2 = flags.model === "gpt2";
const CFG = GPT2
  ? GPT.config("gpt2", { blockSize: 64 })
  : { vocabSize: 100, blockSize: 64, nLayer: 4, nHead: 4, nEmbd: 128 };
const BATCH = GPT2 ? 1 : 16;

const rt = await getRuntime();
if (!rt.info.timestampQuery) {
  console.error(`the adapter '${rt.info.description}' has no timestamp-query feature`);
  Deno.exit(1);
}

/** Deterministic token ids in [0, vocab). */
function ids(n: number, seed: number): Int32Array {
  let s = seed >>> 0;
  return Int32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % CFG.vocabSize;
  });
}

const strategy = flags.strategy!;
const amp = strategy.startsWith("amp-") ? strategy.slice(4) : null;
const s = precisionStrategy(amp ? "fp32" : strategy);
const model = new GPT({ ...CFG, seed: 1 }, { dtype: s.param.name });
const opt = new AdamW(model.parameters(), {
  lr: 3e-3,
  betas: [0.9, 0.95],
  weightDecay: 0.1,
  precision: amp ? "fp32" : strategy,
});
const T = CFG.blockSize;
const x = tensor(ids(BATCH * T, 7), { shape: [BATCH, T] });
const y = tensor(ids(BATCH * T, 8), { shape: [BATCH, T] });
const autocastOpts = amp ? { dtype: amp } : s.autocastOptions ?? null;

/** One step; `mark` is called between the phases with the phase that ends. */
function step(mark: (phase: string) => void = () => {}): void {
  tidy(() => {
    const fwd = () => model.forward(x, y).loss!;
    const loss = autocastOpts ? autocast(autocastOpts, fwd) : fwd();
    mark("forward");
    loss.backward();
    mark("backward");
    opt.step();
    opt.zeroGrad();
    mark("adamw");
  });
}

for (let i = 0; i < 3; i++) step(); // compiles, tuning, pool
await rt.sync();
const walls: number[] = [], records: number[] = [];
for (let i = 0; i < 3; i++) {
  const t0 = performance.now();
  step();
  records.push(performance.now() - t0);
  await rt.sync();
  walls.push(performance.now() - t0);
}

interface Row {
  key: string;
  phase: string;
  ms: number[];
  count: number;
}
const rows = new Map<string, Row>();
const totals: number[] = [], spans: number[] = [], phaseMs = new Map<string, number[]>();
let dispatches = 0;
for (let r = 0; r < STEPS; r++) {
  const bounds: [string, number][] = [];
  rt.startProfile();
  const d0 = rt.counters.dispatches;
  step((phase) => bounds.push([phase, rt.counters.dispatches - d0]));
  const times: DispatchTime[] = await rt.stopProfile();
  dispatches = times.length;
  const phaseOf = (i: number) => bounds.find(([, end]) => i < end)?.[0] ?? "adamw";
  const sums = new Map<string, { phase: string; ns: number; count: number }>();
  const byPhase = new Map<string, number>();
  let total = 0;
  times.forEach((t, i) => {
    const ns = t.end - t.start;
    total += ns;
    const phase = phaseOf(i);
    byPhase.set(phase, (byPhase.get(phase) ?? 0) + ns);
    const key = flags.shapes ? `${t.label} [${t.groups.join("x")}]` : t.label;
    const k = `${phase}|${key}`;
    const e = sums.get(k) ?? { phase, ns: 0, count: 0 };
    e.ns += ns;
    e.count++;
    sums.set(k, e);
  });
  totals.push(total / 1e6);
  spans.push((times.at(-1)!.end - times[0].start) / 1e6);
  for (const [p, ns] of byPhase) phaseMs.set(p, [...(phaseMs.get(p) ?? []), ns / 1e6]);
  for (const [k, e] of sums) {
    const row = rows.get(k) ?? { key: k.split("|")[1], phase: e.phase, ms: [], count: e.count };
    row.ms.push(e.ns / 1e6);
    rows.set(k, row);
  }
}

const median = (v: number[]) => {
  const a = [...v].sort((p, q) => p - q);
  while (a.length < STEPS) a.unshift(0); // a row missing from a step took no time there
  return a[Math.floor(a.length / 2)];
};
const total = median(totals);
const pct = (ms: number) => `${(100 * ms / total).toFixed(1).padStart(5)}%`;
console.log(
  `${
    GPT2 ? "GPT-2 small" : "GPT"
  } step ${strategy} on ${rt.info.description}: ${dispatches} dispatches; ` +
    `unprofiled step ${median(walls).toFixed(0)} ms (wall, median of 3; recording it on ` +
    `the CPU until step() returns ${median(records).toFixed(0)} ms); ` +
    `profiled: dispatches ${total.toFixed(0)} ms of GPU time, first start to last end ` +
    `${median(spans).toFixed(0)} ms (median of ${STEPS})`,
);
for (const p of ["forward", "backward", "adamw"]) {
  const v = phaseMs.get(p);
  if (v) console.log(`  ${p.padEnd(9)} ${median(v).toFixed(1).padStart(8)} ms ${pct(median(v))}`);
}
const sorted = [...rows.values()].map((r) => ({ ...r, med: median(r.ms) }))
  .sort((a, b) => b.med - a.med);
console.log(`\n${"ms".padStart(8)} ${"share".padStart(6)} ${"n".padStart(4)}  phase     label`);
for (const r of sorted.slice(0, TOP)) {
  console.log(
    `${r.med.toFixed(1).padStart(8)} ${pct(r.med)} ${String(r.count).padStart(4)}  ` +
      `${r.phase.padEnd(9)} ${r.key}`,
  );
}
const rest = sorted.slice(TOP);
if (rest.length > 0) {
  const ms = rest.reduce((a, r) => a + r.med, 0);
  console.log(`${ms.toFixed(1).padStart(8)} ${pct(ms)}       (${rest.length} more rows)`);
}
opt.dispose();
for (const p of model.parameters()) (p.grad?.dispose(), p.dispose());
x.dispose();
y.dispose();
