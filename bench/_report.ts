/**
 * The report of the benchmarks: a text table (or one JSON document with `--json`) of the
 * cases, the training-step statistics and the targets.
 *
 * @module
 */

/** One case: ulp's time and the peer's, in ms, and their ratio peer_ms / ulp_ms. */
export interface Row {
  case: string;
  ulp_ms: number | null;
  peer_ms: number | null;
  /** peer_ms / ulp_ms: above 1, ulp is faster. */
  ratio: number | null;
  /** What was compared, GFLOP/s, the agreement check (text report and `details` in JSON). */
  note: string;
  /** Every repetition's time per op (ms), for judging the noise. */
  ulp_samples: readonly number[];
  peer_samples: readonly number[];
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

/** Everything a run produced. */
export interface Report {
  json: boolean;
  mode: "quick" | "full";
  device: Record<string, unknown>;
  rows: Row[];
  metrics: Metric[];
  steps: StepStats[];
  targets: Target[];
  unavailable: { case: string; reason: string }[];
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

/** Prints the report: JSON on stdout with `json`, else text tables. */
export function printReport(r: Report): void {
  if (r.json) {
    const out = {
      mode: r.mode,
      device: r.device,
      ratio: "peer_ms / ulp_ms (above 1: ulp is faster)",
      results: r.rows.map(({ case: c, ulp_ms, peer_ms, ratio }) => ({
        case: c,
        ulp_ms,
        peer_ms,
        ratio,
      })),
      details: Object.fromEntries(
        r.rows.map((x) => [x.case, {
          note: x.note,
          ulp_samples_ms: x.ulp_samples,
          peer_samples_ms: x.peer_samples,
        }]),
      ),
      metrics: r.metrics,
      steps: r.steps,
      targets: r.targets,
      unavailable: r.unavailable,
      elapsed_s: r.elapsedS,
    };
    console.log(JSON.stringify(out, null, 2));
    return;
  }
  const d = r.device;
  console.log(
    `ulp benchmarks (${r.mode}) on ${d.adapter} [${d.backend}, f16 ${d.f16Storage}], ` +
      `${d.cpus} CPUs, Deno ${d.deno}\npeer: ${d.peer}` +
      (d.sameAdapter === null ? "" : d.sameAdapter ? " (same adapter)" : " (ANOTHER adapter)"),
  );
  console.log(`ratio = peer ms / ulp ms (above 1: ulp is faster)\n`);
  console.log(table(
    ["case", "ulp ms", "peer ms", "ratio", "notes"],
    r.rows.map((x) => [
      x.case,
      fmt(x.ulp_ms),
      fmt(x.peer_ms),
      x.ratio === null ? "-" : `${fmt(x.ratio)}x`,
      x.note,
    ]),
    [false, true, true, true, false],
  ));
  if (r.steps.length) {
    console.log(`\nGPT training step (4 layers, 4 heads, width 128, context 64, batch 16):`);
    console.log(table(
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
    const k = r.metrics.find((m) => m.metric === "peer_kernels_per_step");
    if (k) console.log(`TF.js: ${k.value} kernels per fp32 step (tf.profile)`);
  }
  if (r.unavailable.length) {
    console.log(`\nnot measured:`);
    for (const u of r.unavailable) console.log(`  ${u.case}: ${u.reason}`);
  }
  console.log(`\ntargets:`);
  for (const t of r.targets) console.log(targetText(t));
  console.log(`\n${r.elapsedS.toFixed(0)} s`);
}
