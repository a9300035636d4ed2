/**
 * The diagnostics of an optimizer step on the device (DESIGN.md section 4): what the update
 * kernel adds per element when they are on, and the buffers they accumulate into.
 *
 * The update kernel calls `account(x, y)` per element: counters in private u32s, then
 * workgroup atomics, then one `atomicAdd` per counter and workgroup into the step's counter
 * buffer (u32, `DIAG_COUNTERS` order); the sums <e, u> and ||u||^2 in f32 per invocation,
 * reduced per workgroup into a partials buffer at `2 * (u.pbase + wg)`, where `pbase` counts
 * the workgroups of the parameters dispatched before in the same step. After the step's
 * dispatches, a one-workgroup program sums the partials into two floats. The update itself
 * is the same function with or without them, so it is unchanged.
 *
 * @module
 */

import { float32 } from "../dtypes/mod.ts";
import { currentRuntime, program, type Runtime } from "../gpu/mod.ts";
import { keep, Tensor, tensor, zeros } from "../tensor/mod.ts";
import { WG } from "./_inplace.ts";

/** Counters of the diagnostics, in the order of the counter buffer. */
export const DIAG_COUNTERS = [
  "elements",
  "updated",
  "lost",
  "gradNonFinite",
  "gradUnderflow",
  "gradOverflow",
] as const;

const NDIAG = DIAG_COUNTERS.length;

/**
 * WGSL of the private accumulators and `account(x, y)`, which adds one element's
 * diagnostics to them. `q_diagcast` rounds a gradient to the checked dtype; `effective` is
 * the WGSL of the effective update from `x` (old) and `y` (new). @internal
 */
export function diagAccountSource(qcast: string, effective: string): string {
  return `${qcast}var<private> d_dot: f32;
var<private> d_nrm: f32;
var<private> d_n: array<u32, ${NDIAG}>;
var<workgroup> w_sum: array<vec2<f32>, ${WG}>;
var<workgroup> w_cnt: array<atomic<u32>, ${NDIAG}>;
fn ulp_nonfinite(v: f32) -> bool { return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u; }
fn account(x: St, y: St) {
  let uu = y.intended;
  let ee = ${effective};
  d_n[0] += 1u;
  if (uu != 0.0) {
    d_n[1] += 1u;
    if (ee == 0.0) { d_n[2] += 1u; }
  }
  d_dot += ee * uu;
  d_nrm += uu * uu;
  let g = x.grad;
  let nonfin = ulp_nonfinite(g);
  let q = q_diagcast(g);
  if (nonfin) { d_n[3] += 1u; }
  if (g != 0.0 && q == 0.0) { d_n[4] += 1u; }
  if (!nonfin && ulp_nonfinite(q)) { d_n[5] += 1u; }
}
`;
}

/**
 * The end of a kernel with diagnostics (every invocation of the workgroup reaches it): the
 * workgroup's sums into `partials`, its counts into `counters`. @internal
 */
export function diagReduceSource(): string {
  return `  w_sum[li] = vec2<f32>(d_dot, d_nrm);
  for (var k = 0u; k < ${NDIAG}u; k = k + 1u) {
    if (d_n[k] != 0u) { atomicAdd(&w_cnt[k], d_n[k]); }
  }
  workgroupBarrier();
  for (var h = ${WG / 2}u; h > 0u; h = h >> 1u) {
    if (li < h) { w_sum[li] = w_sum[li] + w_sum[li + h]; }
    workgroupBarrier();
  }
  if (li == 0u) {
    partials[2u * (u.pbase + wg)] = w_sum[0].x;
    partials[2u * (u.pbase + wg) + 1u] = w_sum[0].y;
  }
  if (li < ${NDIAG}u) {
    let v = atomicLoad(&w_cnt[li]);
    if (v != 0u) { atomicAdd(&counters[li], v); }
  }
`;
}

/** Sums `n` pairs of partials into `sums[0..1]`, in one workgroup. */
function finalProgram(rt: Runtime) {
  return program(rt, "optim|diagFinal", {
    label: "diagnostics",
    bindings: [
      { name: "partials", type: "f32", access: "read" },
      { name: "sums", type: "f32", access: "read_write" },
    ],
    uniforms: [{ name: "n", type: "u32" }],
    workgroupSize: WG,
  }, () =>
    `var<workgroup> sh: array<vec2<f32>, ${WG}>;
fn kernel(wg: u32, lid: vec3u, li: u32) {
  var acc = vec2<f32>(0.0);
  for (var i = li; i < u.n; i = i + ${WG}u) { acc = acc + vec2<f32>(partials[2u * i], partials[2u * i + 1u]); }
  sh[li] = acc;
  workgroupBarrier();
  for (var h = ${WG / 2}u; h > 0u; h = h >> 1u) {
    if (li < h) { sh[li] = sh[li] + sh[li + h]; }
    workgroupBarrier();
  }
  if (li == 0u) {
    sums[0] = sh[0].x;
    sums[1] = sh[0].y;
  }
}`);
}

/**
 * The diagnostics of one parameter group: the counters and sums of its last step with
 * diagnostics on (kept, purpose "other"), and the partials of the step being recorded
 * (scratch, freed when the step is recorded). @internal
 */
export class DiagBuffers {
  #counters: Tensor | null = null;
  #sums: Tensor | null = null;
  #partials: Tensor | null = null;
  #valid = false;

  /** Starts a step of `workgroups` workgroups in all: zeroes the counters. */
  begin(workgroups: number, op: string): { partials: Tensor; counters: Tensor } {
    const rt = currentRuntime();
    this.#counters ??= keep(tensor(new Uint32Array(8), { dtype: "u32", purpose: "other" }));
    this.#sums ??= keep(zeros([2], { purpose: "other" }));
    rt.write(this.#counters.buffer(op), new Uint32Array(8));
    this.#partials?.dispose();
    this.#partials = keep(Tensor.empty([Math.max(2, 2 * workgroups)], float32, "scratch"));
    this.#valid = false;
    return { partials: this.#partials, counters: this.#counters };
  }

  /** Ends the step: sums the partials of its `workgroups` workgroups, frees them. */
  end(workgroups: number, op: string): void {
    const p = this.#partials!;
    finalProgram(currentRuntime()).run({
      buffers: { partials: p.buffer(op), sums: this.#sums!.buffer(op) },
      uniforms: { n: workgroups },
      groups: 1,
    });
    p.dispose();
    this.#partials = null;
    this.#valid = true;
  }

  /** Marks the diagnostics stale (a step without diagnostics ran). */
  clear(): void {
    this.#valid = false;
  }

  /** The counters (u32, `DIAG_COUNTERS` order) and sums [<e,u>, ||u||^2] of the last step. */
  get result(): { counters: Tensor; sums: Tensor } | null {
    return this.#valid ? { counters: this.#counters!, sums: this.#sums! } : null;
  }

  /** Frees the buffers. */
  dispose(): void {
    for (const t of [this.#counters, this.#sums, this.#partials]) t?.dispose();
    this.#counters = this.#sums = this.#partials = null;
    this.#valid = false;
  }
}
