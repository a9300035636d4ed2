/**
 * The report of the benchmarks: a text table (or one JSON document with `--json`) of the
 * cases, the training-step statistics and the targets.
 *
 * @module
 */

import type { Gpt2Row } from "./gpt2.ts";

/** The peers ulp is compared with, in the order the report shows them. */
export const PEERS = ["tfjs", "jaxjs"] as const;
/** A peer's key in rows and JSON (`tfjs_ms`, `vs_jaxjs`...). */
export type PeerName = typeof PEERS[number];
/** How the report names a peer. */
export const PEER_LABEL: Record<PeerName, string> = { tfjs: "TF.js", jaxjs: "jax-js" };

/** A peer's time for one case. */
export interface PeerTime {
  /** Median time of one op, ms. */
  ms: number;
  /** Every repetition's time per op (ms), for judging the noise. */
  samples: readonly number[];
}

/** One case: ulp's time and each peer's (null: not measured or no such op), in ms. */
export interface Row {
  case: string;
  ulp_ms: number | null;
  peers: Record<PeerName, PeerTime | null>;
  /** What was compared, GFLOP/s, the agreement checks (text report and `details` in JSON). */
  note: string;
  /** Every repetition's time per op (ms), for judging the noise. */
  ulp_samples: readonly number[];
}

/** peer_ms / ulp_ms for one peer (above 1: ulp is faster), or null. */
export function speedup(r: Row, p: PeerName): number | null {
  const t = r.peers[p];
  return r.ulp_ms !== null && t ? t.ms / r.ulp_ms : null;
}

/** The speedup against the fastest peer measured in this row, with that peer; or null. */
export function speedupVsFastest(r: Row): { peer: PeerName; value: number } | null {
  let best: { peer: PeerName; value: number } | null = null;
  for (const p of PEERS) {
    const v = speedup(r, p);
    if (v !== null && (best === null || v < best.value)) best = { peer: p, value: v };
  }
  return best;
}

/** (max - min) / median of a row's samples, in percent: the run-to-run spread. */
export function spreadPct(xs: readonly number[]): number | null {
  if (xs.length < 2) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  return ((s[s.length - 1] - s[0]) / m) * 100;
}

/** A number measured besides the times (GFLOP/s, kernels per step). */
export interface Metric {
  case: string;
  metric: string;
  value: number;
  unit: string;
}

/** What one training step of a precision strategy costs. */
export interface StepStats {
  strategy: string;
  /** Median step time (side by side with the others), ms. */
  step_ms?: number;
  /** Time of the single measured step (not side by side), ms. */
  single_step_ms: number;
  /** Peak live bytes of the step above what was live before the model was made. */
  peak_bytes: number;
  /** Live bytes between steps (parameters, optimizer states, staging copies). */
  resident_bytes: number;
  dispatches: number;
  submits: number;
  readbacks: number;
  /** Pipelines compiled during the measured step (0 once warm). */
  compiles: number;
}

/** A target of the issue and whether it is met. */
export interface Target {
  target: string;
  value: number | null;
  op: "<=" | ">=";
  limit: number;
  unit: string;
  /** null when it could not be measured (a case not available). */
  pass: boolean | null;
  /** Signed distance to the limit in percent of it: positive passes by that much. */
  margin_pct: number | null;
  detail: string;
}

/** A peer as the report's header shows it. */
export interface PeerInfo {
  name: PeerName;
  /** "TF.js 4.22.0 webgpu on <adapter>", or "not run: <why>". */
  what: string;
  /** Whether it runs on ulp's adapter (null: not run). */
  sameAdapter: boolean | null;
}

/** Everything a run produced. */
export interface Report {
  json: boolean;
  mode: "quick" | "full";
  device: Record<string, unknown> & { peers: PeerInfo[] };
  rows: Row[];
  metrics: Metric[];
  steps: StepStats[];
  targets: Target[];
  unavailable: { case: string; reason: string }[];
  /** GPT-2-sized training steps per strategy (bench/gpt2.ts). */
  gpt2: Gpt2Row[];
  elapsedS: number;
}

/** Three significant digits, or "-". */
export function fmt(x: number | null | undefined, digits = 3): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return "-";
  if (x === 0) return "0";
  const mag = Math.floor(Math.log10(Math.abs(x)));
  return x.toFixed(Math.max(0, digits - 1 - mag));
}

const MiB = 1024 * 1024;

function table(head: string[], body: string[][], right: boolean[]): string {
  const w = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r.map((c, i) => (right[i] ? c.padStart(w[i]) : c.padEnd(w[i]))).join("  ").trimEnd();
  return [line(head), line(w.map((n) => "-".repeat(n))), ...body.map(line)].join("\n");
}

function targetText(t: Target): string {
  const status = t.pass === null ? "n/a " : t.pass ? "PASS" : "MISS";
  const v = t.value === null ? "not measured" : `${fmt(t.value, 4)}${t.unit}`;
  let by = "";
  if (t.margin_pct !== null) {
    const a = Math.abs(t.margin_pct);
    const m = a < 10 ? a.toFixed(1) : a.toFixed(0);
    by = t.pass ? ` (passes by ${m}%)` : ` (${t.op === ">=" ? "short" : "over"} by ${m}%)`;
  }
  return `${status}  ${t.target}: ${v} ${t.op} ${t.limit}${t.unit}${by}\n        ${t.detail}`;
}

/**
 * Prints the report: with `json`, one JSON document on stdout and the text tables on stderr
 * (one run gives both); else the text tables on stdout.
 */
export function printReport(r: Report): void {
  if (r.json) {
    const out = {
      mode: r.mode,
      device: r.device,
      speedup: "vs_<peer> = <peer>_ms / ulp_ms (above 1: ulp is faster); vs_fastest: " +
        "against the faster of the peers measured in that row",
      results: r.rows.map((x) => {
        const o: Record<string, string | number | null> = { case: x.case, ulp_ms: x.ulp_ms };
        for (const p of PEERS) o[`${p}_ms`] = x.peers[p]?.ms ?? null;
        for (const p of PEERS) o[`vs_${p}`] = speedup(x, p);
        o.vs_fastest = speedupVsFastest(x)?.value ?? null;
        return o;
      }),
      details: Object.fromEntries(
        r.rows.map((x) => [x.case, {
          note: x.note,
          ulp_samples_ms: x.ulp_samples,
          ...Object.fromEntries(PEERS.map((p) => [`${p}_samples_ms`, x.peers[p]?.samples ?? []])),
        }]),
      ),
      metrics: r.metrics,
      steps: r.steps,
      targets: r.targets,
      unavailable: r.unavailable,
      gpt2: r.gpt2,
      elapsed_s: r.elapsedS,
    };
    console.log(JSON.stringify(out, null, 2));
  }
  printText(r, r.json ? console.error : console.log);
}

function printText(r: Report, out: (line: string) => void): void {
  const d = r.device;
  out(
    `ulp benchmarks (${r.mode}) on ${d.adapter} [${d.backend}, f16 ${d.f16Storage}], ` +
      `${d.cpus} CPUs, Deno ${d.deno}`,
  );
  for (const p of d.peers as PeerInfo[]) {
    out(
      `peer ${PEER_LABEL[p.name]}: ${p.what}` +
        (p.sameAdapter === null ? "" : p.sameAdapter ? " (same adapter)" : " (ANOTHER adapter)"),
    );
  }
  out(`vs <peer> = peer ms / ulp ms (above 1: ulp is faster)\n`);
  const x = (v: number | null) => (v === null ? "-" : `${fmt(v)}x`);
  out(table(
    [
      "case",
      "ulp ms",
      ...PEERS.map((p) => `${PEER_LABEL[p]} ms`),
      ...PEERS.map((p) => `vs ${PEER_LABEL[p]}`),
      "notes",
    ],
    r.rows.map((row) => [
      row.case,
      fmt(row.ulp_ms),
      ...PEERS.map((p) => fmt(row.peers[p]?.ms)),
      ...PEERS.map((p) => x(speedup(row, p))),
      row.note,
    ]),
    [false, true, ...PEERS.map(() => true), ...PEERS.map(() => true), false],
  ));
  if (r.steps.length) {
    out(`\nGPT training step (4 layers, 4 heads, width 128, context 64, batch 16):`);
    out(table(
      ["strategy", "step ms", "peak MiB", "resident MiB", "dispatches", "submits", "readbacks"],
      r.steps.map((s) => [
        s.strategy,
        fmt(s.step_ms ?? s.single_step_ms),
        fmt(s.peak_bytes / MiB),
        fmt(s.resident_bytes / MiB),
        String(s.dispatches),
        String(s.submits),
        String(s.readbacks),
      ]),
      [false, true, true, true, true, true, true],
    ));
    const k = r.metrics.find((m) => m.metric === "tfjs_kernels_per_step");
    if (k) out(`TF.js: ${k.value} kernels per fp32 step (tf.profile)`);
  }
  if (r.gpt2.length) {
    out(`\nGPT-2-sized training step, batch 1 (live: after the step, gradients kept):`);
    out(table(
      ["model", "strategy", "context", "ms/step", "tokens/s", "live MiB", "B/param", "peak MiB"],
      r.gpt2.map((g) => [
        `${g.model} (${(g.params / 1e6).toFixed(1)}M)`,
        g.strategy,
        String(g.context),
        String(g.msPerStep),
        String(g.tokensPerS),
        String(g.liveMiB),
        String(g.bytesPerParam),
        String(g.peakMiB),
      ]),
      [false, false, true, true, true, true, true, true],
    ));
  }
  if (r.unavailable.length) {
    out(`\nnot measured:`);
    for (const u of r.unavailable) out(`  ${u.case}: ${u.reason}`);
  }
  out(`\ntargets:`);
  for (const t of r.targets) out(targetText(t));
  out(`\n${r.elapsedS.toFixed(0)} s`);
}
