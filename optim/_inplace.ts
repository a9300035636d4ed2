/**
 * The in-place kernels of the optimizers' helpers, one tensor per dispatch: the skeleton that
 * gradient clipping and the GradScaler's unscaling share (rewrite a tensor in place, element
 * by element, with a few raw bindings beside it), and the small shared pieces (the workgroup
 * size, the u32 zero flag, tensors grouped by dtype).
 *
 * Every kernel here is a program of the builder (`gpu/program.ts`): a tensor larger than one
 * storage binding is bound as windows, and a grid beyond the per-dimension limit is folded.
 * Workgroup `wg` of a tensor of `n` elements covers elements `[wg * chunk, (wg + 1) * chunk)`;
 * an invocation handles `E` consecutive elements (E = lanes per stored word), so it writes
 * whole words (DESIGN.md: a thread owns whole words) and never a word past the tensor.
 *
 * @module
 */

import type { DType } from "../dtypes/mod.ts";
import {
  type BindingSpec,
  currentRuntime,
  layoutOf,
  type Program,
  program,
  type Runtime,
  type UniformSpec,
} from "../gpu/mod.ts";
import { keep, type Tensor, tensor } from "../tensor/mod.ts";

/** Invocations per workgroup of the optimizers' kernels. */
export const WG = 256;

/** Tensors grouped by dtype, in first-seen order, each checked for use after dispose. @internal */
export function byDtype(op: string, ts: readonly Tensor[]): Map<DType, Tensor[]> {
  const out = new Map<DType, Tensor[]>();
  for (const t of ts) {
    t.buffer(op);
    const list = out.get(t.dt);
    if (list) list.push(t);
    else out.set(t.dt, [t]);
  }
  return out;
}

const zeroFlags = new WeakMap<Runtime, Tensor>();

/** A u32 zero on the device: the skip flag of a step that has none. @internal */
export function zeroFlag(rt: Runtime): Tensor {
  let t = zeroFlags.get(rt);
  if (!t || t.disposed) {
    t = keep(tensor(new Uint32Array(1), { dtype: "u32", purpose: "other" }));
    zeroFlags.set(rt, t);
  }
  return t;
}

/** Elements workgroup `wg` of a tensor covers, and the range each piece's window needs. */
export function chunkRange(n: number, chunk: number): (g0: number, g1: number) => [number, number] {
  return (g0, g1) => [g0 * chunk, Math.min(n, g1 * chunk)];
}

/** What an in-place kernel adds to the shared skeleton (see `inPlaceProgram`). */
export interface InPlace {
  /** The op's name, for errors and profiles. */
  readonly label: string;
  /** A cache key of everything the WGSL depends on besides the dtype. */
  readonly key: string;
  /** Raw bindings after `x` (flags, scales). */
  readonly bindings: readonly BindingSpec[];
  /** Uniform fields besides `n` (the element count). */
  readonly uniforms?: readonly UniformSpec[];
  /** Element groups per invocation in one workgroup's chunk. */
  readonly items: number;
  /** WGSL functions the lane statements call. */
  readonly helpers?: string;
  /** Statements at the start of each workgroup (e0, e1: its elements). */
  readonly prelude?: string;
  /** Statements that set `v` (an f32 var) from the loaded value `a`. */
  lane(a: string, v: string): string;
  /** Statements after the workgroup's loop. */
  readonly epilogue?: string;
}

/** Elements one workgroup of an in-place kernel over dtype `dt` covers. */
function inPlaceChunk(rt: Runtime, dt: DType, items: number): number {
  return WG * layoutOf(dt, rt).lanes * items;
}

/**
 * The program that rewrites a tensor `x` of dtype `dt` in place: each invocation loads `E`
 * consecutive elements, runs `lane` on each, and stores their word. @internal
 */
export function inPlaceProgram(rt: Runtime, dt: DType, spec: InPlace): Program {
  const l = layoutOf(dt, rt);
  const E = l.lanes;
  const chunk = WG * E * spec.items;
  return program(rt, `optim|inplace|${spec.key}|${spec.items}`, {
    label: spec.label,
    bindings: [{ name: "x", type: l, access: "read_write" }, ...spec.bindings],
    uniforms: [{ name: "n", type: "u32" }, ...(spec.uniforms ?? [])],
    workgroupSize: WG,
  }, () => {
    let lanes = "";
    for (let j = 0; j < E; j++) {
      lanes += j === 0
        ? `    let a0 = ld_x(s);\n    var v0 = 0.0;\n    ${spec.lane("a0", "v0")}\n`
        : `    var v${j} = 0.0;\n    if (s + ${j}u < e1) { let a = ld_x(s + ${j}u); ${
          spec.lane("a", `v${j}`)
        } }\n`;
    }
    const vals = Array.from({ length: 4 }, (_, j) => (j < E ? `v${j}` : "0.0")).join(", ");
    return `${spec.helpers ?? ""}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let e0 = wg * ${chunk}u;
  let e1 = min(u.n, e0 + ${chunk}u);
${spec.prelude ?? ""}
  for (var s = e0 + li * ${E}u; s < e1; s = s + ${WG * E}u) {
${lanes}    st_x(s / ${E}u, vec4<f32>(${vals}), vec4<u32>(0u));
  }
${spec.epilogue ?? ""}
}
`;
  });
}

/**
 * Runs an in-place program over tensor `x` (one dispatch, or one per window when `x` is
 * larger than one binding), with the other bindings and uniforms given. @internal
 */
export function runInPlace(
  p: Program,
  x: Tensor,
  op: string,
  items: number,
  buffers: Readonly<Record<string, Tensor>>,
  uniforms: Readonly<Record<string, number>> = {},
): void {
  const rt = currentRuntime();
  const chunk = inPlaceChunk(rt, x.dt, items);
  const bufs: Record<string, ReturnType<Tensor["buffer"]>> = { x: x.buffer(op) };
  for (const [k, t] of Object.entries(buffers)) bufs[k] = t.buffer(op);
  p.run({
    buffers: bufs,
    uniforms: { n: x.size, ...uniforms },
    groups: Math.ceil(x.size / chunk),
    ranges: { x: chunkRange(x.size, chunk) },
  });
}
