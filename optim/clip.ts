/**
 * `clipGradNorm`: PyTorch's `torch.nn.utils.clip_grad_norm_`, computed on the GPU without a
 * readback. The total norm over all gradients is reduced in f32, the scale
 * `min(maxNorm / (norm + 1e-6), 1)` is computed by a one-workgroup kernel into a GPU
 * buffer, and the gradients are scaled in place by a kernel that reads it.
 *
 * Like the optimizers' step, the work does not grow in dispatches with the number of
 * gradients: the gradients of each dtype are copied into one flat scratch buffer (segments
 * aligned to whole words), then one partial-reduction dispatch per dtype, one final
 * dispatch, one scaling dispatch per dtype, and a copy back per gradient.
 *
 * @module
 */

import { WGSL_MATH } from "../gpu/mod.ts";
import { type DType, float32, wgslChunks } from "../dtypes/mod.ts";
import { ValueError } from "../errors.ts";
import { currentRuntime, type Kernel, type Runtime } from "../gpu/mod.ts";
import { isTensor, Tensor, tensor, zeros } from "../tensor/mod.ts";
import { layoutOf, needsF16, wgslBinding, wgslLoad } from "../tensor/layout.ts";
import { ALIGN, byDtype, flatInPlaceSource, groupElems, stage, WG } from "./_multi_tensor.ts";

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

/** Partial sums (or maxima) of |x|^p per chunk of a flat buffer. */
function partialKernel(rt: Runtime, dt: DType, kind: NormKind): Kernel {
  return rt.kernelFor(`clip|partial|${dt.name}|${kind}`, "clipGradNorm", {
    buffers: ["read", "read", "read_write"],
    uniform: true,
  }, () => {
    const l = layoutOf(dt, rt);
    const src = `${needsF16([l]) ? "enable f16;\n" : ""}${wgslChunks(wgslLoad(l, "x", "ld"))}
${WGSL_MATH}struct U { n: u32, base: u32, p: f32, pad: u32 }
${
      wgslBinding(l, 0, 0, "x", "read")
    }@group(0) @binding(1) var<storage, read> chunks: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<uniform> u: U;
var<workgroup> sh: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let c = wid.x + wid.y * nwg.x;
  var acc = 0.0;
  if (c < u.n) {
    let e = chunks[c];
    for (var i = e.x + li; i < e.y; i = i + ${WG}u) {
      let a = abs(ld(i));
      acc = ${combine(kind, "acc", term(kind, "a"))};
    }
  }
  sh[li] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (li < s) { sh[li] = ${combine(kind, "sh[li]", "sh[li + s]")}; }
    workgroupBarrier();
  }
  if (li == 0u && c < u.n) { partials[u.base + c] = sh[0]; }
}
`;
    return src;
  });
}

/** Total norm from the partials, and the clip coefficient. */
function finalKernel(rt: Runtime, kind: NormKind): Kernel {
  return rt.kernelFor(`clip|final|${kind}`, "clipGradNorm", {
    buffers: ["read", "read_write", "read_write"],
    uniform: true,
  }, () => {
    const root = kind === "l2" ? "sqrt(sh[0])" : kind === "p" ? "pow(sh[0], 1.0 / u.p)" : "sh[0]";
    const src = `${WGSL_MATH}struct U { n: u32, maxNorm: f32, p: f32, pad: u32 }
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> total: array<f32>;
@group(0) @binding(2) var<storage, read_write> coef: array<f32>;
@group(0) @binding(3) var<uniform> u: U;
var<workgroup> sh: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32) {
  var acc = 0.0;
  for (var i = li; i < u.n; i = i + ${WG}u) { acc = ${combine(kind, "acc", "partials[i]")}; }
  sh[li] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (li < s) { sh[li] = ${combine(kind, "sh[li]", "sh[li + s]")}; }
    workgroupBarrier();
  }
  if (li == 0u) {
    let t = ${root};
    total[0] = t;
    let c = u.maxNorm / (t + 1e-6);
    coef[0] = select(min(c, 1.0), c, ulp_isnan(c));
  }
}
`;
    return src;
  });
}

/** Scales a flat buffer by coef[0], whole words per invocation. */
function scaleKernel(rt: Runtime, dt: DType): Kernel {
  return rt.kernelFor(`clip|scale|${dt.name}`, "clipGradNorm", {
    buffers: ["read_write", "read", "read"],
    uniform: true,
  }, () =>
    flatInPlaceSource(layoutOf(dt, rt), {
      bindings: ["var<storage, read> coef: array<f32>"],
      lane: (a, v) => `${v} = ${a} * coef[0];`,
    }));
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
  // gradients by dtype: one flat buffer each
  const groups = byDtype(op, grads);
  const scratch: Tensor[] = [];
  try {
    const buckets = [...groups].map(([dt, gs]) => {
      const l = layoutOf(dt, rt);
      const chunk = WG * groupElems([l]) * CLIP_ITEMS;
      const { flat, rows, unstage } = stage(op, dt, gs, chunk);
      scratch.push(flat);
      const table = tensor(new Uint32Array(rows.length ? rows : [0, 0, 0, 0]), {
        dtype: "u32",
        purpose: "scratch",
      });
      scratch.push(table);
      return { dt, flat, table, n: rows.length / 4, unstage };
    });
    const nPartials = buckets.reduce((a, b) => a + b.n, 0);
    const partials = Tensor.empty([Math.max(1, nPartials)], float32, "scratch");
    const coef = Tensor.empty([ALIGN], float32, "scratch");
    scratch.push(partials, coef);
    const total = Tensor.empty([], float32);
    const u = new Uint32Array(4);
    const uf = new Float32Array(u.buffer);
    let base = 0;
    for (const b of buckets) {
      u[0] = b.n;
      u[1] = base;
      uf[2] = normType;
      rt.dispatch(
        partialKernel(rt, b.dt, kind),
        [b.flat.buffer(op), b.table.buffer(op), partials.buffer(op)],
        rt.grid(b.n),
        u,
      );
      base += b.n;
    }
    u[0] = nPartials;
    uf[1] = maxNorm;
    uf[2] = normType;
    rt.dispatch(
      finalKernel(rt, kind),
      [partials.buffer(op), total.buffer(op), coef.buffer(op)],
      [1],
      u,
    );
    for (const b of buckets) {
      rt.dispatch(
        scaleKernel(rt, b.dt),
        [b.flat.buffer(op), b.table.buffer(op), coef.buffer(op)],
        rt.grid(b.n),
        new Uint32Array([b.n, 0, 0, 0]),
      );
      b.unstage();
    }
    return total;
  } finally {
    for (const t of scratch) t.dispose();
  }
}
