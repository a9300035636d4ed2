/**
 * `clipGradNorm`: PyTorch's `torch.nn.utils.clip_grad_norm_`, computed on the GPU without a
 * readback. The total norm over all gradients is reduced in f32, the scale
 * `min(maxNorm / (norm + 1e-6), 1)` is computed by a one-workgroup kernel into a GPU
 * buffer, and the gradients are scaled in place by a kernel that reads it.
 *
 * Each gradient is read and scaled in place, with no staging copy: one partial-reduction
 * dispatch per gradient (each workgroup writes the partial of its chunk, at an offset that
 * counts the chunks of the gradients before), one final dispatch, one scaling dispatch per
 * gradient (per window of a gradient larger than one storage binding). The partials are
 * ordered by dtype (first seen first), then by gradient, so the norm's f32 sums do not
 * depend on how the gradients are interleaved.
 *
 * @module
 */

import { type DType, float32 } from "../dtypes/mod.ts";
import { ValueError } from "../errors.ts";
import type { BindingSpec, Program, Runtime } from "../gpu/mod.ts";
import { currentRuntime, layoutOf, program } from "../gpu/mod.ts";
import { isTensor, Tensor, zeros } from "../tensor/mod.ts";
import { byDtype, chunkRange, inPlaceProgram, runInPlace, WG } from "./_inplace.ts";

type NormKind = "l2" | "l1" | "inf" | "p";

/** Element groups per invocation in one chunk (larger than the step's: fewer barriers). */
const CLIP_ITEMS = 32;

function combine(kind: NormKind, a: string, b: string): string {
  return kind === "inf" ? `ulp_max(${a}, ${b})` : `${a} + ${b}`;
}

function term(kind: NormKind, a: string): string {
  switch (kind) {
    case "l2":
      return `${a} * ${a}`;
    case "l1":
    case "inf":
      return a;
    case "p":
      return `select(pow(${a}, u.p), 0.0, ${a} == 0.0)`;
  }
}

/**
 * A clipGradNorm program of WG lanes that reduces (`clip|<key>|<kind>`): uniforms `n`,
 * `extra` (an f32 when named "maxNorm", else a u32) and `p`; `accumulate` leaves each lane's
 * `acc`, the workgroup combines them (sum, or max for "inf") into `sh[0]`, then `finish` runs.
 */
function reduceProgram<const B extends readonly BindingSpec[]>(
  rt: Runtime,
  key: string,
  kind: NormKind,
  bindings: B,
  extra: "base" | "maxNorm",
  accumulate: string,
  finish: string,
): Program<B[number]["name"], "n" | "base" | "maxNorm" | "p"> {
  return program(rt, `clip|${key}|${kind}`, {
    label: "clipGradNorm",
    bindings,
    uniforms: [
      { name: "n", type: "u32" },
      { name: extra, type: extra === "maxNorm" ? "f32" : "u32" },
      { name: "p", type: "f32" },
    ],
    workgroupSize: WG,
  }, () =>
    `var<workgroup> sh: array<f32, ${WG}>;
fn kernel(wg: u32, lid: vec3u, li: u32) {
${accumulate}
  sh[li] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (li < s) { sh[li] = ${combine(kind, "sh[li]", "sh[li + s]")}; }
    workgroupBarrier();
  }
${finish}
}`);
}

/** Elements one workgroup of the partial kernel over dtype `dt` covers. */
function clipChunk(rt: Runtime, dt: DType): number {
  return WG * layoutOf(dt, rt).lanes * CLIP_ITEMS;
}

/** Partial sums (or maxima) of |x|^p per chunk of one tensor, at `partials[u.base + wg]`. */
function partialProgram(rt: Runtime, dt: DType, kind: NormKind): Program {
  const chunk = clipChunk(rt, dt);
  return reduceProgram(
    rt,
    "partial",
    kind,
    [
      { name: "x", type: layoutOf(dt, rt), access: "read" },
      { name: "partials", type: "f32", access: "read_write" },
    ],
    "base",
    `  let e0 = wg * ${chunk}u;
  let e1 = min(u.n, e0 + ${chunk}u);
  var acc = 0.0;
  for (var i = e0 + li; i < e1; i = i + ${WG}u) {
    let a = abs(ld_x(i));
    acc = ${combine(kind, "acc", term(kind, "a"))};
  }`,
    "  if (li == 0u) { partials[u.base + wg] = sh[0]; }",
  );
}

/** Total norm from the partials, and the clip coefficient. */
function finalProgram(rt: Runtime, kind: NormKind): Program {
  const root = kind === "l2" ? "sqrt(sh[0])" : kind === "p" ? "pow(sh[0], 1.0 / u.p)" : "sh[0]";
  return reduceProgram(
    rt,
    "final",
    kind,
    [
      { name: "partials", type: "f32", access: "read" },
      { name: "total", type: "f32", access: "read_write" },
      { name: "coef", type: "f32", access: "read_write" },
    ],
    "maxNorm",
    `  var acc = 0.0;
  for (var i = li; i < u.n; i = i + ${WG}u) { acc = ${combine(kind, "acc", "partials[i]")}; }`,
    `  if (li == 0u) {
    let t = ${root};
    total[0] = t;
    let c = u.maxNorm / (t + 1e-6);
    coef[0] = select(min(c, 1.0), c, ulp_isnan(c));
  }`,
  );
}

/** Scales a tensor in place by coef[0]. */
function scaleProgram(rt: Runtime, dt: DType): Program {
  return inPlaceProgram(rt, dt, {
    label: "clipGradNorm",
    key: "clip|scale",
    bindings: [{ name: "coef", type: "f32", access: "read" }],
    items: CLIP_ITEMS,
    lane: (a, v) => `${v} = ${a} * coef[0];`,
  });
}

/**
 * Clips the gradients of `params` in place so that their total norm is at most `maxNorm`,
 * as `torch.nn.utils.clip_grad_norm_`: the norm of order `normType` (2 by default; any
 * p > 0, or `Infinity` for the largest magnitude) over all gradients together, then every
 * gradient is multiplied by `min(maxNorm / (norm + 1e-6), 1)`. Parameters without a
 * gradient are ignored. Returns the total norm (before clipping) as a 0-d f32 tensor; it is
 * computed on the GPU, so nothing waits until you read it.
 *
 * @example
 * ```ts
 * import { clipGradNorm, tensor } from "../mod.ts";
 * const w = tensor([0, 0], { requiresGrad: true });
 * w.grad = tensor([3, 4]);
 * const norm = clipGradNorm([w], 1);
 * console.log(await norm.item()); // 5
 * console.log(Array.from(await w.grad.toArray()).map((x) => x.toFixed(4))); // ["0.6000", "0.8000"]
 * ```
 */
export function clipGradNorm(
  params: Tensor | Iterable<Tensor>,
  maxNorm: number,
  normType = 2,
): Tensor {
  const op = "clipGradNorm()";
  const list = isTensor(params) ? [params] : Array.from(params ?? []);
  list.forEach((p, i) => {
    if (!isTensor(p)) throw new ValueError(`${op}: params[${i}] is not a Tensor`);
  });
  if (typeof maxNorm !== "number" || Number.isNaN(maxNorm) || maxNorm < 0) {
    throw new ValueError(`${op}: maxNorm must be a number in [0, inf], got ${String(maxNorm)}`);
  }
  if (typeof normType !== "number" || !(normType > 0)) {
    throw new ValueError(
      `${op}: normType must be a number in (0, inf] (2 for the Euclidean norm, Infinity for ` +
        `the largest magnitude), got ${String(normType)}`,
    );
  }
  const kind: NormKind = normType === 2
    ? "l2"
    : normType === 1
    ? "l1"
    : normType === Infinity
    ? "inf"
    : "p";
  const grads = list.map((p) => p.grad).filter((g): g is Tensor => g !== null);
  if (grads.length === 0) return zeros([]);
  const rt = currentRuntime();
  // gradients by dtype (first seen first), each read in place
  const ordered = [...byDtype(op, grads).values()].flat();
  const bases: number[] = [];
  let nPartials = 0;
  for (const g of ordered) {
    bases.push(nPartials);
    nPartials += Math.ceil(g.size / clipChunk(rt, g.dt));
  }
  const partials = Tensor.empty([Math.max(1, nPartials)], float32, "scratch");
  const coef = Tensor.empty([4], float32, "scratch");
  try {
    const total = Tensor.empty([], float32);
    ordered.forEach((g, k) => {
      const chunk = clipChunk(rt, g.dt);
      partialProgram(rt, g.dt, kind).run({
        buffers: { x: g.buffer(op), partials: partials.buffer(op) },
        uniforms: { n: g.size, base: bases[k], p: normType },
        groups: Math.ceil(g.size / chunk),
        ranges: { x: chunkRange(g.size, chunk) },
      });
    });
    finalProgram(rt, kind).run({
      buffers: { partials: partials.buffer(op), total: total.buffer(op), coef: coef.buffer(op) },
      uniforms: { n: nPartials, maxNorm, p: normType },
      groups: 1,
    });
    for (const g of ordered) runInPlace(scaleProgram(rt, g.dt), g, op, CLIP_ITEMS, { coef });
    return total;
  } finally {
    partials.dispose();
    coef.dispose();
  }
}
