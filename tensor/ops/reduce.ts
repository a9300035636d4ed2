/**
 * Reductions as data: `sum`, `mean`, `max`, `min`, `argmax` and `logsumexp` over any set of
 * axes are rows of one table (identity, WGSL combine, accumulator type) run by one kernel
 * generator; `softmax` and `logSoftmax` (and their backward passes) are fused row kernels.
 *
 * The generic kernel runs one workgroup per output element. The input's dimensions are
 * first merged (adjacent kept dims, adjacent reduced dims, size-1 dims dropped), so most
 * reductions index with one multiply; the threads stride over the reduced elements,
 * accumulate in f32 (i32/u32 for integer sums, max and min), and combine in a tree in
 * workgroup memory. A packed output (bf16, FP8, f16 without `shader-f16`) is written a whole
 * word per workgroup: the workgroup reduces the 2 or 4 outputs of its word in turn. Long
 * reductions into few outputs run in two passes (partials, then the partials reduced).
 *
 * Every kernel is a program of `gpu/program.ts`. An input larger than one storage binding is
 * bound as windows: a piece of workgroups binds the input elements its outputs read (offsets
 * grow with both the kept and the reduced index, so the ends come from its first and last
 * outputs). When one output reads more than a window holds (a reduction over a non-last axis
 * or over everything), the reduced range is split into parts whose reads fit, aligned on the
 * reduced dimension they split, and the partial results are reduced again (argmax: partial
 * maxima and their indices, then the first part with the maximum). Softmax rows are bound by
 * windows of rows; a row longer than a window is a `DeviceError`. On a CPU adapter, contiguous
 * rows of whole quads take the lane-row family (`laneRowsFor`, `setRowFamily`): one row an
 * invocation, its passes vec4 loops in registers, no workgroup memory and no barriers.
 *
 * The result is rounded once to the output dtype (fl(x)). Gradients are recorded with
 * `attach()` when an input requires one.
 *
 * @module
 */

import { type DType, float32, int32, isFloat, uint32 } from "../../dtypes/mod.ts";
import { ShapeError, ValueError } from "../../errors.ts";
import {
  currentRuntime,
  type Layout,
  layoutOf,
  type PooledBuffer,
  program,
  type Runtime,
  stageable,
  storageBytes,
} from "../../gpu/mod.ts";
import { attach } from "../../autograd/graph.ts";
import { fmtShape, installMethods, sameShape, Tensor } from "../core/tensor.ts";
import { autocastInputs } from "./cast.ts";
import type { CastPolicy } from "../core/context.ts";
import { launch, wgslRadixOffset } from "../kernels/fusion.ts";

/** Threads per workgroup of every reduction kernel. */
const WG = 64;

/**
 * Inputs from this size on that the column kernel of four quads an invocation reads through a
 * staged texture on CPU adapters (`stageable`): strided quads cost about three times as much
 * through a storage binding as texels do, and from about 4 MiB the copy (about 75 us a MiB on
 * lavapipe) pays for itself (16 MiB: 1.4x). Smaller inputs, few columns (one quad an
 * invocation) and the lane family (contiguous runs) gained nothing (BENCHMARKS.md).
 */
const STAGE_MIN_BYTES = 4 << 20;
/**
 * Estimated work per element read, in nanoseconds of a CPU adapter (the unit of a run's
 * `cost`; matmul counts 0.2 ns per multiply-add), measured on lavapipe: a reduction, a
 * logsumexp (two passes and an exp), softmax forward and backward (three and two passes).
 */
const COST = { reduce: 3, lse: 8, softmax: 20, softmaxBwd: 25 };
/** Most merged kept (or reduced) dimensions a kernel indexes (the uniform block holds 8). */
const MAX_DIMS = 8;

/**
 * Iterations one invocation may run through a loop. llvmpipe (Mesa's software rasteriser
 * behind lavapipe and GL) ends any loop after 65,535 iterations without a word (nested loops
 * count more; measured: a loop of 100,000 additions gives 65,535), so kernels whose loops
 * grow with the data cut the work (parts of a reduction, chunks of rows) to stay well under
 * it. @internal
 */
/** Autocast's policy for the reductions: they accumulate and need range, so they run in f32. */
export const REDUCE_POLICY = {
  sum: "f32",
  mean: "f32",
  logsumexp: "f32",
  softmax: "f32",
  logSoftmax: "f32",
} as const satisfies Record<string, CastPolicy>;
const POLICY = REDUCE_POLICY;

export const MAX_LOOP = 16384;

/**
 * How many consecutive elements of layout `l` one window of a buffer larger than one binding
 * surely holds, wherever they start: the binding limit less the offset alignment lost in front
 * and the partial words at the ends. Kernels size their pieces (rows, parts) by it. @internal
 *
 * @example
 * ```ts
 * import { getRuntime, layoutOf } from "../../gpu/mod.ts";
 * import { dtype } from "../../dtypes/mod.ts";
 * import { windowElems } from "./reduce.ts";
 * const rt = await getRuntime();
 * // 128 MiB bindings, 256-byte offsets: 33,554,367 f32 or twice as many bf16
 * console.log(windowElems(rt, layoutOf(dtype("bf16"), rt)) === 2 * windowElems(rt, layoutOf(dtype("f32"), rt))); // true
 * ```
 */
export function windowElems(rt: Runtime, l: Layout): number {
  const align = rt.info.limits.minStorageBufferOffsetAlignment ?? 256;
  const unit = l.elem === "f16" ? 2 : 4;
  return Math.max(1, Math.floor((rt.maxBindingBytes - align) / unit - 1) * l.lanes);
}

// ---- the table ---------------------------------------------------------------------------------

/** The kernel's reduction: a combine over the reduced elements. */
type Kind = "sum" | "max" | "min" | "argmax" | "lse";
/** The WGSL type the values are accumulated in. */
type Acc = "f32" | "i32" | "u32";

/** One reduction: its identity and combine for each accumulator type. */
interface ReduceRow {
  readonly ident: Record<Acc, string>;
  readonly comb: (acc: Acc, a: string, b: string) => string;
}

const NEG_INF = "bitcast<f32>(0xff800000u)";
const POS_INF = "bitcast<f32>(0x7f800000u)";

/** The reductions that are one combine over the elements (a row of `ROWS`). */
type RowReduce = Exclude<Kind, "argmax" | "lse">;

const ROWS: Record<RowReduce, ReduceRow> = {
  sum: { ident: { f32: "0.0", i32: "0i", u32: "0u" }, comb: (_t, a, b) => `${a} + ${b}` },
  max: {
    ident: { f32: NEG_INF, i32: "bitcast<i32>(0x80000000u)", u32: "0u" },
    comb: (t, a, b) => (t === "f32" ? `ulp_max(${a}, ${b})` : `max(${a}, ${b})`),
  },
  min: {
    ident: { f32: POS_INF, i32: "2147483647i", u32: "0xffffffffu" },
    comb: (t, a, b) => (t === "f32" ? `ulp_min(${a}, ${b})` : `min(${a}, ${b})`),
  },
};

/** WGSL beyond the builder's prelude (which has `ulp_isnan`, `ulp_max` and `ulp_min`). */
const WGSL_FINITE =
  `fn ulp_finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }\n`;

/**
 * Uniform fields of every reduction kernel: outputs of this pass, reduced count, merged kept
 * and reduced dims, the split of the reduced range into parts, a scale for sums (mean), then
 * sizes and strides.
 */
const UNIFORMS = [
  { name: "n", type: "u32" },
  { name: "R", type: "u32" },
  { name: "nk", type: "u32" },
  { name: "nr", type: "u32" },
  { name: "parts", type: "u32" },
  { name: "chunk", type: "u32" },
  { name: "scale", type: "f32" },
  { name: "ks", type: "u32", length: MAX_DIMS },
  { name: "kst", type: "u32", length: MAX_DIMS },
  { name: "rs", type: "u32", length: MAX_DIMS },
  { name: "rst", type: "u32", length: MAX_DIMS },
] as const;

const WGSL_INDEX = `
${wgslRadixOffset("kbase(q: u32)", "q", "u.nk", "u_ks(u32(d))", "u_kst(u32(d))")}${
  wgslRadixOffset(
    "roff(r: u32)",
    "r",
    "u.nr",
    "u_rs(u32(d))",
    "u_rst(u32(d))",
    "  if (u.nr == 1u) { return r * u_rst(0u); }\n",
  )
}`;

/** The tree combine of `sv[0..WG)` into `sv[0]`, with the barriers around it. */
function tree(step: string): string {
  return `  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (li < s) { ${step} }
    workgroupBarrier();
  }\n`;
}

/** WGSL `fn ld(i: u32) -> <acc>`: element `i` of the input `inp` in the accumulator type. */
function loader(l: Layout, acc: Acc): string {
  const e = acc === "f32"
    ? "ld_inp(i)"
    : l.dtype.kind === "bool"
    ? `${acc}(get_inp(i) != 0u)`
    : acc === "i32"
    ? "bitcast<i32>(get_inp(i))"
    : "get_inp(i)";
  return `fn ld(i: u32) -> ${acc} { return ${e}; }\n`;
}

/** The body of the generic kernel: workgroup `w` writes word `w` of `out`. */
function reduceBody(kind: Kind, acc: Acc, inL: Layout, outL: Layout): string {
  let fns = WGSL_FINITE + loader(inL, acc);
  const floatOut = kind !== "argmax" && acc === "f32";
  const head = `  var acc = IDENT;
  var r0 = 0u;
  var r1 = 0u;
  var base = 0u;
  if (o < u.n) {
    let q = o / u.parts;
    let p = o - q * u.parts;
    base = kbase(q);
    r0 = p * u.chunk;
    r1 = min(u.R, r0 + u.chunk);
  }\n`;
  let red: string;
  let ret: string;
  if (kind === "argmax") {
    const ident = ROWS.max.ident[acc];
    const nan = acc === "f32"
      ? `  let na = ulp_isnan(va);
  let nb = ulp_isnan(vb);
  if (na != nb) { return nb; }
  if (na) { return ib < ia; }\n`
      : "";
    fns += `fn better(va: ${acc}, ia: u32, vb: ${acc}, ib: u32) -> bool {
${nan}  return vb > va || (vb == va && ib < ia);
}\n`;
    ret = "u32";
    red = head.replace("IDENT", ident) + `  var idx = 0xffffffffu;
  for (var r = r0 + li; r < r1; r = r + ${WG}u) {
    let v = ld(base + roff(r));
    if (better(acc, idx, v, r)) { acc = v; idx = r; }
  }
  sv[li] = acc;
  si[li] = idx;
${
      tree(
        "if (better(sv[li], si[li], sv[li + s], si[li + s])) { sv[li] = sv[li + s]; si[li] = si[li + s]; }",
      )
    }  let res = si[0];
  workgroupBarrier();
  return res;\n`;
  } else if (kind === "lse") {
    ret = "f32";
    red = head.replace("IDENT", NEG_INF) + `  for (var r = r0 + li; r < r1; r = r + ${WG}u) {
    acc = ulp_max(acc, ld(base + roff(r)));
  }
  sv[li] = acc;
${tree("sv[li] = ulp_max(sv[li], sv[li + s]);")}  let m = sv[0];
  workgroupBarrier();
  var t = 0.0;
  if (ulp_finite(m)) {
    for (var r = r0 + li; r < r1; r = r + ${WG}u) { t = t + exp(ld(base + roff(r)) - m); }
  }
  sv[li] = t;
${tree("sv[li] = sv[li] + sv[li + s];")}  let res = select(m, m + log(sv[0]), ulp_finite(m));
  workgroupBarrier();
  return res;\n`;
  } else {
    const row = ROWS[kind];
    ret = acc;
    red = head.replace("IDENT", row.ident[acc]) +
      `  for (var r = r0 + li; r < r1; r = r + ${WG}u) {
    acc = ${row.comb(acc, "acc", "ld(base + roff(r))")};
  }
  sv[li] = acc;
${tree(`sv[li] = ${row.comb(acc, "sv[li]", "sv[li + s]")};`)}  let res = sv[0]${
        kind === "sum" && acc === "f32" ? " * u.scale" : ""
      };
  workgroupBarrier();
  return res;\n`;
  }
  const lanes = outL.lanes;
  let store: string;
  if (lanes === 1) {
    const code = floatOut
      ? "st_out(w, vec4<f32>(v), vec4<u32>(0u));"
      : `put_out(w, ${ret === "u32" ? "v" : "bitcast<u32>(v)"});`;
    store = `  let v = red(w, li);
  if (li == 0u) { ${code} }`;
  } else {
    // a packed output: the workgroup reduces the outputs of its word in turn
    store = `  var vs = vec4<f32>(0.0);
  for (var l = 0u; l < ${lanes}u; l = l + 1u) {
    let o = w * ${lanes}u + l;
    let v = red(o, li);
    if (o < u.n) { vs[l] = v; }
  }
  if (li == 0u) { st_out(w, vs, vec4<u32>(0u)); }`;
  }
  return `var<workgroup> sv: array<${acc}, ${WG}>;
${kind === "argmax" ? `var<workgroup> si: array<u32, ${WG}>;\n` : ""}${fns}${WGSL_INDEX}
fn red(o: u32, li: u32) -> ${ret} {
${red}}
fn kernel(w: u32, lid: vec3u, li: u32) {
${store}
}
`;
}

/**
 * The body of the column kernel: invocation `w` (not a workgroup) writes word `w` of `out`,
 * reducing each of its outputs alone, with no workgroup memory or barriers. It runs the
 * generic kernel's operations in the generic kernel's order, so the bits are the same: 64
 * strided chains (chain `l` takes r = l, l + 64, ...), combined as the generic kernel's tree
 * combines its lanes' values (`sv[i] + sv[i + s]` for s = 32, 16, ..., 1), the tree walked in
 * order (leaves in bit-reversed order, a stack of partial results in a private array: a loop of
 * 64 chains, not 64 loops written out, which llvmpipe took up to 14 s to compile for four
 * quads). On a CPU adapter a workgroup's barriers cost more than a short
 * reduction: a sum over the batch of a (16, 64, 128) gradient took 8192 workgroups of 16
 * loads and seven barriers each.
 */
function columnBody(
  kind: RowReduce,
  acc: Acc,
  inL: Layout,
  outL: Layout,
  quad: boolean,
  flat: boolean,
  qs = 1,
  wgSize = WG,
): string {
  const row = ROWS[kind];
  // a quad: four neighbouring outputs in the lanes of a vec4, one 16-byte load a row (f32 sums),
  // `qs` neighbouring quads an invocation (stack slot qs * depth + c for quad c); flat (at most
  // one merged reduced dim): each chain steps its offset instead of computing it
  const ident = quad ? "vec4<f32>(0.0)" : row.ident[acc];
  const at = flat ? "at" : "base + roff(r)";
  const load = (c: number) => (quad ? `lq_inp((${at}) / 4u + ${c}u)` : `ld(${at})`);
  const cs = Array.from({ length: quad ? qs : 1 }, (_, c) => c);
  const slot = (d: string, c: number) =>
    `stk[${cs.length === 1 ? d : `${cs.length}u * (${d})`}${c ? ` + ${c}u` : ""}]`;
  // chain k of the walk is chain l = bit-reverse(k) of the generic kernel; after it, the stack
  // combines while k + 1 has trailing zero bits (the tree's order, one level a bit)
  // the stack holds at most one partial result a level of the tree, and the leaf
  const walk = `  var stk: array<${quad ? "vec4<f32>" : acc}, ${(Math.log2(WG) + 1) * cs.length}>;
  var depth = 0u;
  for (var k = 0u; k < ${WG}u; k++) {
    let l = reverseBits(k) >> ${32 - Math.log2(WG)}u;
${cs.map((c) => `    var s${c} = ${ident};`).join("\n")}${
    flat ? "\n    at = base + (r0 + l) * st;" : ""
  }
    for (var r = r0 + l; r < r1; r = r + ${WG}u) { ${
    cs.map((c) => `s${c} = ${row.comb(acc, `s${c}`, load(c))};`).join(" ")
  }${flat ? ` at = at + st${WG};` : ""} }
${cs.map((c) => `    ${slot("depth", c)} = s${c};`).join("\n")}
    depth++;
    for (var m = k + 1u; (m & 1u) == 0u; m = m >> 1u) {
      depth--;
${
    cs.map((c) =>
      `      ${slot("depth - 1u", c)} = ${row.comb(acc, slot("depth - 1u", c), slot("depth", c))};`
    ).join("\n")
  }
    }
  }`;
  const scale = kind === "sum" && acc === "f32" ? " * u.scale" : "";
  const steps = flat
    ? `  let st = select(0u, u_rst(0u), u.nr == 1u);
  let st${WG} = ${WG}u * st;
  var at = 0u;
`
    : "";
  if (quad) {
    // output k of part pt is word k * parts + pt (the generic kernel's order of outputs)
    const stores = cs.map((c) =>
      [..."xyzw"].map((e, k) =>
        `  st_out((o + ${
          4 * c + k
        }u) * u.parts + pt, vec4<f32>(stk[${c}].${e}${scale}), vec4<u32>(0u));`
      ).join("\n")
    ).join("\n");
    // invocation i takes the quads of kept group i % G and part i / G: neighbouring lanes read
    // neighbouring quads of the same rows (parts: one pass of a long reduction into few outputs,
    // each part the generic kernel's rows r0..r1, its partial results combined by the next pass)
    return `${WGSL_INDEX}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let i = wg * ${wgSize}u + li;
  let G = (u.n / u.parts + ${4 * qs - 1}u) / ${4 * qs}u;
  let pt = i / G;
  if (pt >= u.parts) { return; }
  let o = ${4 * qs}u * (i - pt * G);
  let base = kbase(o);
  let r0 = pt * u.chunk;
  let r1 = min(u.R, r0 + u.chunk);
${steps}${walk}
${stores}
}
`;
  }
  return `${WGSL_FINITE}${loader(inL, acc)}${WGSL_INDEX}
fn red(o: u32) -> ${acc} {
  let base = kbase(o);
  let r0 = 0u;
  let r1 = u.R;
${steps}${walk}
  return stk[0]${scale};
}
${wordKernel(wgSize, outL.lanes, acc)}`;
}

/**
 * WGSL `fn kernel` of an invocation-per-word reduction (the column and lane families):
 * invocation `w` of workgroups of `wgSize` writes word `w` of `out`, each of the word's
 * `lanes` outputs `o` from `red(o)`.
 */
function wordKernel(wgSize: number, lanes: number, acc: Acc): string {
  const store = lanes === 1
    ? acc === "f32"
      ? "st_out(w, vec4<f32>(red(w)), vec4<u32>(0u));"
      : `put_out(w, ${acc === "u32" ? "red(w)" : "bitcast<u32>(red(w))"});`
    : `var vs = vec4<f32>(0.0);
  for (var l = 0u; l < ${lanes}u; l = l + 1u) {
    let o = w * ${lanes}u + l;
    if (o < u.n) { vs[l] = red(o); }
  }
  st_out(w, vs, vec4<u32>(0u));`;
  return `fn kernel(wg: u32, lid: vec3u, li: u32) {
  let w = wg * ${wgSize}u + li;
  if (w * ${lanes}u >= u.n) { return; }
  ${store}
}
`;
}

/** Chains of the generic kernel: invocation `li` of its workgroup of `WG` takes r = li, li + WG... */
const CHAIN_QUADS = WG / 4;

/**
 * The body of the lane family of the generic reduction (CPU adapters): invocation `w` writes
 * word `w` of `out`, each output (or part of one) a contiguous run of whole quads it reads
 * itself, 16 bytes a load, with no workgroup memory or barriers. Its operations are the
 * generic kernel's in the generic kernel's order, so the bits are the same: the generic
 * kernel's 64 strided chains (chain `l` takes r = r0 + l, r0 + l + 64, ...) are the lanes of
 * 16 vec4 accumulators (quad `j` of the run feeds accumulator `j % 16`), combined as its tree
 * combines `sv[i]` and `sv[i + s]` for s = 32, 16, ..., 1. A logsumexp runs two such passes
 * (the maximum, then the sum of `exp(x - max)`) as the generic kernel does; an argmax keeps
 * each chain's value and index and picks with the generic kernel's `better` (NaN first, then
 * the larger value, then the smaller index), four lanes at a time.
 */
function laneBody(kind: Kind, outL: Layout, f32: boolean): string {
  const S = CHAIN_QUADS;
  const ks = Array.from({ length: S }, (_, k) => k);
  const comb = (k: RowReduce, a: string, b: string) => `(${ROWS[k].comb("f32", a, b)})`;
  /** The combine of two vec4s of chains, lane by lane. */
  const c4 = (k: RowReduce) =>
    `fn c4${k}(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> { return ${
      k === "sum"
        ? "a + b"
        : `vec4<f32>(${[..."xyzw"].map((e) => comb(k, `a.${e}`, `b.${e}`)).join(", ")})`
    }; }\n`;
  /** A chain's state: one vec4 per accumulator (`<name><j>`, four chains each). */
  type State = { name: string; type: string; ident: string };
  /**
   * `fn <sig>`: one pass over the run of `nq` quads from `b` (quad `j` feeds accumulator
   * `j % 16` through `step(j)`, its quad at `at + 4j`), then the generic kernel's tree,
   * `treeStep(j, w)` combining entry `j + w` of the state's arrays (`t<name>`) into entry `j`,
   * then `tail`. The tree sits in arrays at constant indices: as separate variables, OpenGL's
   * compiler (llvmpipe through GL) re-associates the adds of the straight-line tree, which
   * gives other bits.
   */
  const lanePass = (
    sig: string,
    state: readonly State[],
    step: (j: number) => string,
    treeStep: (j: number, w: number) => string,
    tail: string,
  ) => {
    let tree = state.map((v) =>
      `  var t${v.name} = array<${v.type}, ${S}>(${ks.map((j) => `${v.name}${j}`).join(", ")});\n`
    ).join("");
    for (let w = S / 2; w >= 1; w /= 2) {
      for (let j = 0; j < w; j++) tree += `  ${treeStep(j, w)}\n`;
    }
    return `fn ${sig} {
${ks.map((j) => state.map((v) => `  var ${v.name}${j} = ${v.ident};`).join("\n")).join("\n")}
  var j = 0u;
  for (; j + ${S}u <= nq; j = j + ${S}u) {
    let at = b + 4u * j;
    ${ks.map((j) => `{ ${step(j)} }`).join("\n    ")}
  }
  let at = b + 4u * j;
${ks.map((j) => `  if (j + ${j}u < nq) { ${step(j)} }`).join("\n")}
${tree}${tail}
}
`;
  };
  /** A pass of `k`'s combine over `term` of the values: its result, one f32. */
  const combPass = (sig: string, k: RowReduce, term: (v: string) => string) =>
    lanePass(
      sig,
      [{ name: "s", type: "vec4<f32>", ident: `vec4<f32>(${ROWS[k].ident.f32})` }],
      (j) => `s${j} = c4${k}(s${j}, ${term(`ld4_inp(at + ${4 * j}u, 4u)`)});`,
      (j, w) => `ts[${j}] = c4${k}(ts[${j}], ts[${j + w}]);`,
      `  return ${comb(k, comb(k, "ts[0].x", "ts[0].z"), comb(k, "ts[0].y", "ts[0].w"))};`,
    );
  let passes: string, result: string, ret = "f32";
  if (kind === "argmax") {
    // chains of (value, index) as the generic kernel's `better` picks them, lane by lane; the
    // run's element at `at` is reduced index r0 + at - b
    passes = `fn better(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
  let na = ulp_isnan(va);
  let nb = ulp_isnan(vb);
  if (na != nb) { return nb; }
  if (na) { return ib < ia; }
  return vb > va || (vb == va && ib < ia);
}
fn better4(va: vec4<f32>, ia: vec4<u32>, vb: vec4<f32>, ib: vec4<u32>) -> vec4<bool> {
  let na = (bitcast<vec4<u32>>(va) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
  let nb = (bitcast<vec4<u32>>(vb) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
  let lt = ib < ia;
  return select(select((vb > va) | ((vb == va) & lt), lt, na), nb, na != nb);
}
${
      lanePass(
        "parg(b: u32, nq: u32, r0: u32) -> u32",
        [
          { name: "s", type: "vec4<f32>", ident: `vec4<f32>(${ROWS.max.ident.f32})` },
          { name: "i", type: "vec4<u32>", ident: "vec4<u32>(0xffffffffu)" },
        ],
        (j) =>
          `let v = ld4_inp(at + ${4 * j}u, 4u); ` +
          `let x = vec4<u32>(r0 + at - b + ${4 * j}u) + vec4<u32>(0u, 1u, 2u, 3u); ` +
          `let c = better4(s${j}, i${j}, v, x); s${j} = select(s${j}, v, c); i${j} = select(i${j}, x, c);`,
        (j, w) =>
          `{ let c = better4(ts[${j}], ti[${j}], ts[${j + w}], ti[${j + w}]); ` +
          `ts[${j}] = select(ts[${j}], ts[${j + w}], c); ti[${j}] = select(ti[${j}], ti[${
            j + w
          }], c); }`,
        `  var va = ts[0].x;
  var ia = ti[0].x;
  var vb = ts[0].y;
  var ib = ti[0].y;
  if (better(va, ia, ts[0].z, ti[0].z)) { va = ts[0].z; ia = ti[0].z; }
  if (better(vb, ib, ts[0].w, ti[0].w)) { vb = ts[0].w; ib = ti[0].w; }
  if (better(va, ia, vb, ib)) { ia = ib; }
  return ia;`,
      )
    }`;
    result = "  return parg(b, nq, r0);";
    ret = "u32";
  } else if (kind === "lse") {
    passes = c4("max") + c4("sum") + combPass("pmax(b: u32, nq: u32) -> f32", "max", (v) => v) +
      combPass("pexp(b: u32, nq: u32, m: f32) -> f32", "sum", (v) => `exp(${v} - vec4<f32>(m))`);
    result = `  let m = pmax(b, nq);
  var t = 0.0;
  if (ulp_finite(m)) { t = pexp(b, nq, m); }
  return select(m, m + log(t), ulp_finite(m));`;
  } else {
    passes = c4(kind) + combPass("prun(b: u32, nq: u32) -> f32", kind, (v) => v);
    result = `  return prun(b, nq)${kind === "sum" ? " * u.scale" : ""};`;
  }
  const q = quadLoads([{ name: "inp", f32 }], passes);
  return `${WGSL_FINITE}${WGSL_INDEX}
${q.helpers}${q.body}fn red(o: u32) -> ${ret} {
  let q = o / u.parts;
  let p = o - q * u.parts;
  let r0 = p * u.chunk;
  let nq = (min(u.R, r0 + u.chunk) - r0) / 4u;
  let b = kbase(q) + r0;
${result}
}
${wordKernel(LANE_ROWS, outL.lanes, kind === "argmax" ? "u32" : "f32")}`;
}

/**
 * Whether a pass of plan `p` in parts of `chunk` reduced elements takes the lane family on
 * `rt`: any reduction accumulated in f32 (sum, max, min, logsumexp, argmax) over the innermost
 * dimension (contiguous runs), every run starting on a quad and holding whole quads, on an
 * adapter where `laneRowsFor` takes the lane-row family, and a workgroup's runs within half a
 * window of the input.
 */
function lanesFit(
  rt: Runtime,
  acc: Acc,
  inL: Layout,
  p: Plan,
  chunk: number,
  per: number,
): boolean {
  return acc === "f32" && p.rs.length === 1 && p.rst[0] === 1 && p.R % 4 === 0 &&
    chunk % 4 === 0 && p.kst.every((st) => st % 4 === 0) && laneRowsFor(rt, chunk) &&
    LANE_ROWS * per * chunk <= windowElems(rt, inL) / 2;
}

/**
 * Whether a reduction of plan `p` in one pass takes the column kernel on `rt`: a sum, max or
 * min with the innermost dimension kept (neighbouring invocations read neighbouring elements),
 * at least a workgroup of outputs and a reduced range each invocation reads all of: at most 4096
 * elements, or on a CPU adapter (the lane families) as many as its chains' loops may run (a
 * workgroup per output and a barrier tree cost more there than few invocations with long loops:
 * 4x at 16384 x 256).
 */
function columnsFit(rt: Runtime, kind: Kind, p: Plan): boolean {
  return (kind === "sum" || kind === "max" || kind === "min") && p.kst.at(-1) === 1 &&
    p.nOut >= WG &&
    (p.R <= 4096 || (laneFamily(rt) && p.R / WG < rt.maxLoopIterations));
}

/**
 * WGSL storing `v` (a vec4<f32>, the quad at element `at`) into `out` of `lanes` per word
 * (`vec4Out`: bound as vec4 words): one store, two half-words or four elements. Shared by the
 * row kernels here and in `norm.ts`. @internal
 *
 * @example
 * ```ts
 * import { quadStore } from "./reduce.ts";
 * console.log(quadStore(false, 4)); // st_out(at / 4u, v, vec4<u32>(0u));
 * ```
 */
export function quadStore(vec4Out: boolean, lanes: number): string {
  if (vec4Out) return "st4_out(at / 4u, v, vec4<u32>(0u));";
  if (lanes === 4) return "st_out(at / 4u, v, vec4<u32>(0u));";
  if (lanes === 2) {
    return "st_out(at / 2u, v.xyxy, vec4<u32>(0u)); st_out(at / 2u + 1u, v.zwzw, vec4<u32>(0u));";
  }
  return [0, 1, 2, 3].map((l) => `st_out(at + ${l}u, vec4<f32>(v.${"xyzw"[l]}), vec4<u32>(0u));`)
    .join(" ");
}

// ---- fused row kernels: softmax, logSoftmax and their backward passes -----------------------

/** A row kernel: forward (`x`) or backward (`y`, `g`). */
type RowKind = "softmax" | "logsoftmax" | "softmax_bwd" | "logsoftmax_bwd";

/** The body of a row kernel over inputs `x0` (and `x1`): workgroup `row` writes its row. */
function rowBody(kind: RowKind, outL: Layout, words: boolean): string {
  const loop = (body: string) =>
    `  for (var j = li; j < u.R; j = j + ${WG}u) { let i = base + j * st; ${body} }\n`;
  let stats: string;
  let val: string;
  if (kind === "softmax" || kind === "logsoftmax") {
    stats = `  var m = ${NEG_INF};
${loop("m = ulp_max(m, ld_x0(i));")}  sv[li] = m;
${tree("sv[li] = ulp_max(sv[li], sv[li + s]);")}  c0 = sv[0];
  workgroupBarrier();
  var t = 0.0;
${loop("t = t + exp(ld_x0(i) - c0);")}  sv[li] = t;
${tree("sv[li] = sv[li] + sv[li + s];")}  c1 = sv[0];
  c2 = log(c1);\n`;
    val = kind === "softmax" ? "exp(ld_x0(i) - c0) / c1" : "(ld_x0(i) - c0) - c2";
  } else {
    // x0 = y (the forward output), x1 = g
    const term = kind === "softmax_bwd" ? "ld_x1(i) * ld_x0(i)" : "ld_x1(i)";
    stats = `  var t = 0.0;
${loop(`t = t + ${term};`)}  sv[li] = t;
${tree("sv[li] = sv[li] + sv[li + s];")}  c0 = sv[0];\n`;
    val = kind === "softmax_bwd" ? "ld_x0(i) * (ld_x1(i) - c0)" : "ld_x1(i) - exp(ld_x0(i)) * c0";
  }
  let store: string;
  if (words) {
    const lanes = outL.lanes;
    // the lanes of a word unrolled (constant indices: a loop over dynamic vector indices costs
    // lavapipe about a fifth more)
    const v = [0, 1, 2, 3].map((k) => (k < lanes ? `val(e + ${k}u)` : "0.0")).join(", ");
    store = `  let nw = u.R / ${lanes}u;
  for (var j = li; j < nw; j = j + ${WG}u) {
    let e = base + j * ${lanes}u;
    st_out(base / ${lanes}u + j, vec4<f32>(${v}), vec4<u32>(0u));
  }`;
  } else {
    store = loop("st_out(i, vec4<f32>(val(i)), vec4<u32>(0u));");
  }
  return `var<workgroup> sv: array<f32, ${WG}>;
var<private> c0: f32;
var<private> c1: f32;
var<private> c2: f32;
${WGSL_INDEX}
fn val(i: u32) -> f32 { return ${val}; }
fn kernel(row: u32, lid: vec3u, li: u32) {
  let base = kbase(row);
  let st = u_rst(0u);
${stats}${store}
}
`;
}

/**
 * Rows of a row kernel's workgroup on rows of whole quads (16 invocations per row): 16, the
 * most a workgroup of 256 holds (lavapipe, softmax over rows of 128: 2.2x one row per
 * workgroup; rows of 1024: 1.1x).
 */
const QROWS = 16;

/**
 * The body of a row kernel over contiguous rows of whole quads (4 elements), `QROWS` rows per
 * workgroup: invocation `k` of a row holds the partial results of lanes `4k..4k+3` of the
 * one-row kernel (`rowBody`) in a vec4, loading those four elements with one vec4 load, and
 * combines the 64 partials in the same tree, so every sum is taken in the same order and the
 * results are the same bits; one workgroup and its barriers serve several rows.
 */
function rowBodyQuads(kind: RowKind, outL: Layout, vec4Out: boolean): string {
  const fwd = kind === "softmax" || kind === "logsoftmax";
  const loop = (body: string) =>
    `  for (var j = k; j < nq; j = j + 16u) { if (ok) { let at = base + 4u * j; ${body} } }\n`;
  // the tree of rowBody over this row's 64 partials: 16 vec4s, then within the first
  const tree4 = (v: string, z: string, op: (a: string, b: string) => string) =>
    `  sv[li] = ${v};
  workgroupBarrier();
  for (var s = 8u; s > 0u; s = s >> 1u) {
    if (k < s) { sv[li] = ${op("sv[li]", "sv[li + s]")}; }
    workgroupBarrier();
  }
  let ${z} = sv[li - k];
  workgroupBarrier();\n`;
  const max4 = (a: string, b: string) =>
    `vec4<f32>(ulp_max(${a}.x, ${b}.x), ulp_max(${a}.y, ${b}.y), ulp_max(${a}.z, ${b}.z), ulp_max(${a}.w, ${b}.w))`;
  const add4 = (a: string, b: string) => `${a} + ${b}`;
  const x = "ld4_x0(at, 4u)", g = "ld4_x1(at, 4u)";
  let stats: string;
  let val: string;
  if (fwd) {
    stats = `  var m = vec4<f32>(${NEG_INF});
${loop(`m = ${max4("m", x)};`)}${
      tree4("m", "zm", max4)
    }  c0 = ulp_max(ulp_max(zm.x, zm.z), ulp_max(zm.y, zm.w));
  var t = vec4<f32>(0.0);
${
      loop(
        `let v = ${x}; t = t + vec4<f32>(exp(v.x - c0), exp(v.y - c0), exp(v.z - c0), exp(v.w - c0));`,
      )
    }${tree4("t", "z", add4)}  c1 = (z.x + z.z) + (z.y + z.w);
  c2 = log(c1);\n`;
    val = kind === "softmax" ? "exp(y - c0) / c1" : "(y - c0) - c2";
  } else {
    const term = kind === "softmax_bwd" ? `${g} * ${x}` : g;
    stats = `  var t = vec4<f32>(0.0);
${loop(`t = t + ${term};`)}${tree4("t", "z", add4)}  c0 = (z.x + z.z) + (z.y + z.w);\n`;
    val = kind === "softmax_bwd" ? "y * (h - c0)" : "h - exp(y) * c0";
  }
  const lanes = outL.lanes;
  const v = `let y = ${x};${fwd ? "" : ` let h = ${g};`}
      let v = vec4<f32>(val(y.x${fwd ? "" : ", h.x"}), val(y.y${fwd ? "" : ", h.y"}), val(y.z${
    fwd ? "" : ", h.z"
  }), val(y.w${fwd ? "" : ", h.w"}));`;
  const store = quadStore(vec4Out, lanes);
  return `var<workgroup> sv: array<vec4<f32>, ${QROWS * 16}>;
var<private> c0: f32;
var<private> c1: f32;
var<private> c2: f32;
${WGSL_INDEX}
fn val(y: f32${fwd ? "" : ", h: f32"}) -> f32 { return ${val}; }
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let k = li % 16u;
  let row = wg * ${QROWS}u + li / 16u;
  let ok = row < u.n;
  let base = kbase(min(row, u.n - 1u));
  let nq = u.R / 4u;
${stats}${
    loop(`${v}
      ${store}`)
  }}
`;
}

/**
 * Which family of row kernels softmax, logSoftmax and the norms use. `"auto"`: on a CPU
 * adapter (llvmpipe, lavapipe, WARP) rows of whole quads take the lane-row family (one row an
 * invocation, its loops in registers, no workgroup memory, no barriers), elsewhere the
 * workgroup-tree kernels; `"workgroup"`: the workgroup-tree kernels everywhere; `"lanes"`: the
 * lane-row family wherever it applies (for tests on any adapter).
 */
let rowFamily: "auto" | "workgroup" | "lanes" = "auto";

/**
 * Sets the family of the row kernels (softmax, logSoftmax, layer and RMS norm): `"auto"` (the
 * default: the lane-row family on CPU adapters), `"workgroup"` (the workgroup-memory kernels
 * everywhere) or `"lanes"` (the lane-row family on any adapter); returns the previous setting.
 * For benchmarks and tests that compare the families side by side. @internal
 *
 * @example
 * ```ts
 * import { setRowFamily } from "./reduce.ts";
 * const before = setRowFamily("workgroup");
 * // ... time softmax with the workgroup-memory kernels ...
 * setRowFamily(before);
 * ```
 */
export function setRowFamily(
  f: "auto" | "workgroup" | "lanes",
): "auto" | "workgroup" | "lanes" {
  if (!["auto", "workgroup", "lanes"].includes(f)) {
    throw new ValueError(`setRowFamily: the family must be auto, workgroup or lanes, got '${f}'`);
  }
  const before = rowFamily;
  rowFamily = f;
  return before;
}

/**
 * Rows per workgroup of the lane-row family, one an invocation: 16 (a workgroup narrower than
 * 8 leaves llvmpipe's 8 SIMD lanes idle; see BENCHMARKS.md, issue 20 item 2).
 */
export const LANE_ROWS = 16;

/**
 * Runs the program of a row family (lane-row, quad) of an op's row kernels: `tag` in its key,
 * `rowsPer` rows a workgroup of `wgSize` invocations, one-word bindings viewed as vec4, the
 * WGSL from `body` (told whether the output is a vec4 view); returns the op's results.
 * @internal
 */
export type RowProgram<R> = (
  tag: string,
  rowsPer: number,
  wgSize: number,
  body: (vec4Out: boolean) => string,
) => R;

/**
 * Whether the row kernels view a binding of layout `l` as `array<vec4<u32>>`: one-word
 * elements (f32, i32, u32: one u32 lane each), so a quad of them is one vec4 load or store.
 * @internal
 *
 * @example
 * ```ts
 * import { getRuntime, layoutOf } from "../../gpu/mod.ts";
 * import { float32 } from "../../dtypes/mod.ts";
 * import { vec4View } from "./reduce.ts";
 * const rt = await getRuntime();
 * console.log(vec4View(layoutOf(float32, rt))); // true
 * ```
 */
export function vec4View(l: Layout): boolean {
  return l.lanes === 1 && l.elem === "u32";
}

/**
 * Whether the lane-row family takes rows of `R` contiguous elements on `rt`: the family is
 * chosen (`setRowFamily`), the rows have whole quads, and a row's loop over its quads stays
 * under the adapter's cap on loop iterations (`rt.maxLoopIterations`). @internal
 *
 * @example
 * ```ts
 * import { getRuntime } from "../../gpu/mod.ts";
 * import { laneRowsFor } from "./reduce.ts";
 * const rt = await getRuntime();
 * console.log(laneRowsFor(rt, 6)); // false: rows of 6 are not whole quads
 * ```
 */
export function laneRowsFor(rt: Runtime, R: number): boolean {
  return laneFamily(rt) && R % 4 === 0 && R / 4 < rt.maxLoopIterations;
}

/** Whether the lane families run on `rt` (`setRowFamily`; by default on CPU adapters). */
function laneFamily(rt: Runtime): boolean {
  return rowFamily === "lanes" || (rowFamily === "auto" && rt.info.isFallbackAdapter);
}

/**
 * WGSL `fn q4_<name>(at: u32) -> vec4<f32>` for each binding: elements `at..at+3` (`at` a
 * multiple of 4) of an f32 binding bound as vec4s as one 16-byte load with no alignment test,
 * of any other binding through `ld4_<name>`; and `src` with its `ld4_<name>(at, 4u)` calls
 * turned into `q4_<name>(at)`. The lane-row family's rows start on quads, and windows of vec4
 * bindings start on quads too. @internal
 *
 * @example
 * ```ts
 * import { quadLoads } from "./reduce.ts";
 * const { helpers, body } = quadLoads([{ name: "x", f32: true }], "let v = ld4_x(at, 4u);");
 * console.log(body); // let v = q4_x(at);
 * console.log(helpers.includes("bitcast<vec4<f32>>(get4_x(at / 4u))")); // true
 * ```
 */
export function quadLoads(
  bindings: readonly { readonly name: string; readonly f32: boolean }[],
  src: string,
): { helpers: string; body: string } {
  let body = src, helpers = "";
  for (const { name, f32 } of bindings) {
    if (!src.includes(`ld4_${name}(`)) continue;
    body = body.replace(new RegExp(`\\bld4_${name}\\(([^,()]+), 4u\\)`, "g"), `q4_${name}($1)`);
    helpers += `fn q4_${name}(at: u32) -> vec4<f32> { return ${
      f32 ? `bitcast<vec4<f32>>(get4_${name}(at / 4u))` : `ld4_${name}(at, 4u)`
    }; }\n`;
  }
  return { helpers, body };
}

/**
 * The body of a row kernel of the lane-row family: invocation `li` of workgroup `wg` owns row
 * `wg * LANE_ROWS + li` (contiguous, whole quads) and runs its passes over the row's quads in
 * registers, each a vec4 load, the partials in a vec4 combined at the end; no workgroup
 * memory and no barriers (on llvmpipe an invocation is a SIMD lane, and a workgroup tree a
 * per-lane loop between barriers). The sums are taken in another order than `rowBodyQuads`'s.
 */
function rowBodyLanes(
  kind: RowKind,
  outL: Layout,
  vec4Out: boolean,
  f32q: readonly boolean[],
): string {
  const fwd = kind === "softmax" || kind === "logsoftmax";
  const loop = (body: string) =>
    `  for (var j = 0u; j < nq; j = j + 1u) { let at = base + 4u * j; ${body} }\n`;
  const x = "ld4_x0(at, 4u)", g = "ld4_x1(at, 4u)";
  let stats: string;
  let val: string;
  if (fwd) {
    stats = `  var m = vec4<f32>(${NEG_INF});
${
      loop(
        `let v = ${x}; m = vec4<f32>(ulp_max(m.x, v.x), ulp_max(m.y, v.y), ulp_max(m.z, v.z), ulp_max(m.w, v.w));`,
      )
    }  c0 = ulp_max(ulp_max(m.x, m.z), ulp_max(m.y, m.w));
  var t = vec4<f32>(0.0);
${loop(`let v = ${x}; t = t + exp(v - vec4<f32>(c0));`)}  c1 = (t.x + t.z) + (t.y + t.w);
  c2 = log(c1);\n`;
    val = kind === "softmax" ? "exp(y - c0) / c1" : "(y - c0) - c2";
  } else {
    const term = kind === "softmax_bwd" ? `${g} * ${x}` : g;
    stats = `  var t = vec4<f32>(0.0);
${loop(`t = t + ${term};`)}  c0 = (t.x + t.z) + (t.y + t.w);\n`;
    val = kind === "softmax_bwd" ? "y * (h - c0)" : "h - exp(y) * c0";
  }
  const h = (c: string) => (fwd ? "" : `, h.${c}`);
  const v = `let y = ${x};${fwd ? "" : ` let h = ${g};`} let v = vec4<f32>(val(y.x${
    h("x")
  }), val(y.y${h("y")}), val(y.z${h("z")}), val(y.w${h("w")})); ${quadStore(vec4Out, outL.lanes)}`;
  const q = quadLoads(f32q.map((f32, k) => ({ name: `x${k}`, f32 })), `${stats}${loop(v)}`);
  return `var<private> c0: f32;
var<private> c1: f32;
var<private> c2: f32;
${WGSL_INDEX}
${q.helpers}fn val(y: f32${fwd ? "" : ", h: f32"}) -> f32 { return ${val}; }
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let row = wg * ${LANE_ROWS}u + li;
  if (row >= u.n) { return; }
  let base = kbase(row);
  let nq = u.R / 4u;
${q.body}}
`;
}

// ---- plans and dispatch ------------------------------------------------------------------------

/** The merged dimensions of a reduction: kept and reduced sizes and input strides. */
interface Plan {
  ks: number[];
  kst: number[];
  rs: number[];
  rst: number[];
  /** Number of reduced elements per output. */
  R: number;
  /** Number of outputs. */
  nOut: number;
}

function plan(op: string, shape: readonly number[], axes: readonly number[]): Plan {
  const p: Plan = { ks: [], kst: [], rs: [], rst: [], R: 1, nOut: 1 };
  let lastRed: boolean | null = null;
  let stride = shape.reduce((a, b) => a * b, 1);
  for (let d = 0; d < shape.length; d++) {
    stride /= shape[d] || 1;
    const red = axes.includes(d);
    if (red) p.R *= shape[d];
    else p.nOut *= shape[d];
    if (shape[d] === 1) continue;
    const [s, st] = red ? [p.rs, p.rst] : [p.ks, p.kst];
    if (lastRed === red) {
      s[s.length - 1] *= shape[d];
      st[st.length - 1] = stride;
    } else {
      s.push(shape[d]);
      st.push(stride);
    }
    lastRed = red;
  }
  if (p.ks.length > MAX_DIMS || p.rs.length > MAX_DIMS) {
    throw new ShapeError(
      `${op}(): shape ${fmtShape(shape)} alternates kept and reduced dimensions more than ` +
        `${MAX_DIMS} times; reshape or permute it first`,
    );
  }
  return p;
}

/** The input offset of index `i` in mixed radix `sizes` with `strides` (kbase/roff on the host). */
function offsetOf(sizes: readonly number[], strides: readonly number[], i: number): number {
  let rem = i, off = 0;
  for (let d = sizes.length - 1; d >= 0; d--) {
    off += (rem % sizes[d]) * strides[d];
    rem = Math.floor(rem / sizes[d]);
  }
  return off;
}

/**
 * The input elements [lo, hi) that outputs [o0, o1) of a pass read. Offsets grow with the kept
 * index and with the reduced index (row-major), so the ends of the range come from the first
 * and last outputs and their neighbours.
 */
function inputRange(
  p: Plan,
  parts: number,
  chunk: number,
  o0: number,
  o1: number,
): [number, number] {
  if (o1 <= o0 || p.R === 0) return [0, 0];
  const kb = (q: number) => offsetOf(p.ks, p.kst, q);
  const ro = (r: number) => offsetOf(p.rs, p.rst, Math.min(r, p.R - 1));
  const q0 = Math.floor(o0 / parts), q1 = Math.floor((o1 - 1) / parts);
  const first = ro((o0 - q0 * parts) * chunk);
  const last = ro(Math.min(p.R, ((o1 - 1 - q1 * parts) + 1) * chunk) - 1);
  if (q0 === q1) return [kb(q0) + first, kb(q0) + last + 1];
  return [
    Math.min(kb(q0) + first, kb(q0 + 1)),
    Math.max(kb(q1) + last, kb(q1 - 1) + ro(p.R - 1)) + 1,
  ];
}

/**
 * How many reduced elements one part may take, or null when one workgroup may reduce all of
 * an output: a part's reads must fit one window of an input larger than one binding, and a
 * part may not take more than `WG * MAX_LOOP` elements (each invocation's loop stays under
 * llvmpipe's cap). Parts start on a boundary of the reduced dimension they split (all of it
 * for the outermost), so a part never straddles an outer reduced index.
 */
function partChunk(rt: Runtime, inBuf: PooledBuffer, inL: Layout, p: Plan): number | null {
  if (p.R === 0) return null;
  const M = WG * MAX_LOOP;
  const L = Math.ceil(inBuf.bytes / 4) * 4 > rt.maxBindingBytes ? windowElems(rt, inL) : Infinity;
  if (p.R <= M && offsetOf(p.rs, p.rst, p.R - 1) + 1 <= L) return null;
  const nr = p.rs.length;
  for (let k = 0; k < nr; k++) {
    let inner = 1, P = 1;
    for (let d = k + 1; d < nr; d++) {
      inner += (p.rs[d] - 1) * p.rst[d];
      P *= p.rs[d];
    }
    if (inner > L || P > M) continue;
    let m = Math.min(p.rs[k], Math.floor((L - inner) / p.rst[k]) + 1, Math.floor(M / P));
    if (k > 0) { while (p.rs[k] % m !== 0) m--; }
    return m * P;
  }
  return 1; // not reached: the innermost dimension's parts of one element always fit
}

function planUniforms(n: number, p: Plan, parts: number, chunk: number, scale: number) {
  return {
    n,
    R: p.R,
    nk: p.ks.length,
    nr: p.rs.length,
    parts,
    chunk,
    scale,
    ks: p.ks,
    kst: p.kst,
    rs: p.rs,
    rst: p.rst,
  };
}

/** One pass of the generic kernel: `n` outputs (`nOut * parts`) into `out`. */
function pass(
  rt: Runtime,
  kind: Kind,
  acc: Acc,
  inBuf: PooledBuffer,
  inDt: DType,
  out: Tensor,
  p: Plan,
  parts: number,
  chunk: number,
  scale: number,
): void {
  const inL = layoutOf(inDt, rt), outL = layoutOf(out.dt, rt);
  const label = kind === "lse" ? "logsumexp" : kind;
  const n = p.nOut * parts;
  const lanes = outL.lanes;
  // f32 sums whose kept rows hold whole quads (every stride and the innermost size a
  // multiple of 4) take four outputs an invocation
  const quad = kind === "sum" && inDt === float32 && out.dt === float32 &&
    p.ks.at(-1)! % 4 === 0 && [...p.kst.slice(0, -1), ...p.rst].every((v) => v % 4 === 0);
  const cpu = laneFamily(rt);
  // parts of a long reduction into few outputs take the column kernel too on a CPU adapter
  // (quads, an input bound whole): the generic kernel's workgroup a part cost 10x more there
  const parted = parts > 1 && cpu && quad && Math.ceil(inBuf.bytes / 4) * 4 <= rt.maxBindingBytes;
  if ((parts === 1 || parted) && columnsFit(rt, kind, p)) {
    // on a CPU adapter workgroups of 16 (more of them for both threads), and four quads an
    // invocation (16 outputs of kept rows of whole 16s) where that leaves two workgroups or
    // more: each pass down the rows reads 64 contiguous bytes a lane, not 16
    const qs = quad && cpu && p.ks.at(-1)! % 16 === 0 && p.nOut >= 32 * LANE_ROWS ? 4 : 1;
    const wgSize = cpu ? LANE_ROWS : WG;
    const per = quad ? 4 * qs : lanes; // outputs an invocation
    const flat = p.rs.length <= 1;
    // a large input read through a staged texture (same words, same bits)
    const staged = qs === 4 && inBuf.bytes >= STAGE_MIN_BYTES && stageable(rt, inBuf, "inp");
    const G = Math.ceil(p.nOut / per); // invocations a part
    /** The outputs [o0, o1) workgroups g0..g1-1 write (output k of part pt: k * parts + pt). */
    const columnOutputs = (g0: number, g1: number): [number, number] => {
      const i0 = g0 * wgSize, i1 = Math.min(G * parts, g1 * wgSize);
      if (i1 <= i0) return [0, 0];
      const pt0 = Math.floor(i0 / G), pt1 = Math.floor((i1 - 1) / G);
      if (pt0 !== pt1) return [pt0, (p.nOut - 1) * parts + pt1 + 1];
      const k0 = (i0 - pt0 * G) * per, k1 = Math.min(p.nOut, (i1 - pt0 * G) * per);
      return [k0 * parts + pt0, (k1 - 1) * parts + pt0 + 1];
    };
    program(rt, `reduce|columns|${kind}|${acc}|${quad}|${flat}|${qs}|${wgSize}`, {
      label,
      bindings: [
        { name: "inp", type: inL, access: "read", vec4: quad, staged },
        { name: "out", type: outL, access: "read_write" },
      ],
      uniforms: UNIFORMS,
      workgroupSize: wgSize,
    }, () => columnBody(kind as RowReduce, acc, inL, outL, quad, flat, qs, wgSize)).run(
      {
        buffers: { inp: inBuf, out: out.buffer(label) },
        uniforms: planUniforms(n, p, parts, chunk, scale),
        groups: Math.ceil((G * parts) / wgSize),
        cost: p.nOut * p.R * COST.reduce,
        ranges: {
          inp: (g0, g1) => inputRange(p, parts, chunk, ...columnOutputs(g0, g1)),
          out: (g0, g1) => columnOutputs(g0, g1),
        },
      },
    );
    return;
  }
  if (lanesFit(rt, acc, inL, p, chunk, lanes)) {
    // the lane family: an invocation a word of outputs, its runs read a quad at a time
    const f32 = inDt === float32;
    const span = LANE_ROWS * lanes; // outputs a workgroup
    program(rt, `reduce|lanes|${kind}|${f32}`, {
      label,
      bindings: [
        { name: "inp", type: inL, access: "read", vec4: vec4View(inL) },
        { name: "out", type: outL, access: "read_write" },
      ],
      uniforms: UNIFORMS,
      workgroupSize: LANE_ROWS,
    }, () => laneBody(kind, outL, f32)).run({
      buffers: { inp: inBuf, out: out.buffer(label) },
      uniforms: planUniforms(n, p, parts, chunk, scale),
      groups: Math.ceil(n / span),
      cost: p.nOut * p.R * (kind === "lse" ? COST.lse : COST.reduce),
      ranges: {
        inp: (g0, g1) => inputRange(p, parts, chunk, g0 * span, Math.min(n, g1 * span)),
        out: (g0, g1) => [g0 * span, Math.min(n, g1 * span)],
      },
    });
    return;
  }
  program(rt, `reduce|${kind}|${acc}`, {
    label,
    bindings: [
      { name: "inp", type: inL, access: "read" },
      { name: "out", type: outL, access: "read_write" },
    ],
    uniforms: UNIFORMS,
    workgroupSize: WG,
  }, () => reduceBody(kind, acc, inL, outL)).run({
    buffers: { inp: inBuf, out: out.buffer(label) },
    uniforms: planUniforms(n, p, parts, chunk, scale),
    groups: Math.ceil(n / lanes),
    cost: p.nOut * p.R * (kind === "lse" ? COST.lse : COST.reduce),
    ranges: {
      inp: (g0, g1) => inputRange(p, parts, chunk, g0 * lanes, Math.min(n, g1 * lanes)),
      out: (g0, g1) => [g0 * lanes, Math.min(n, g1 * lanes)],
    },
  });
}

/** The dtype of the partial results of accumulator type `acc`. */
function accDt(acc: Acc): DType {
  return acc === "f32" ? float32 : acc === "i32" ? int32 : uint32;
}

/**
 * Reduces the input (`inBuf` of `inDt`, merged as `p`) into `out`: one pass, or partial
 * results over parts of the reduced range first, then those reduced the same way. Parts are
 * taken for long reductions into few outputs (so that many workgroups share the work), when
 * one output's reads do not fit one window of an input larger than one binding, and when one
 * output has more elements than a workgroup's loops may take (`MAX_LOOP`).
 */
function reduceInto(
  rt: Runtime,
  kind: Kind,
  acc: Acc,
  inBuf: PooledBuffer,
  inDt: DType,
  out: Tensor,
  p: Plan,
  scale: number,
): void {
  const forced = partChunk(rt, inBuf, layoutOf(inDt, rt), p);
  // parts that let many workgroups share a long reduction into few outputs
  const many = p.R >= 8192 && p.nOut < 256
    ? Math.min(Math.ceil(p.R / 4096), Math.floor(1024 / p.nOut))
    : 1;
  let parts = 1, chunk = p.R;
  if (forced !== null) {
    // parts that fit a window; no fewer than `many` when a smaller chunk fits too (one
    // reduced dimension: the reads of a chunk grow with it), the same parts as whole bindings
    chunk = p.rs.length <= 1 && many > 1 ? Math.min(forced, Math.ceil(p.R / many)) : forced;
    parts = Math.ceil(p.R / chunk);
  } else if (kind !== "argmax" && kind !== "lse" && many > 1) {
    parts = many;
    chunk = Math.ceil(p.R / parts);
  }
  if (parts < 2) {
    pass(rt, kind, acc, inBuf, inDt, out, p, 1, p.R, scale);
    return;
  }
  const p2: Plan = {
    ks: p.nOut > 1 ? [p.nOut] : [],
    kst: p.nOut > 1 ? [parts] : [],
    rs: [parts],
    rst: [1],
    R: parts,
    nOut: p.nOut,
  };
  const tmpDt = accDt(acc);
  const tmp = Tensor.empty([p.nOut * parts], tmpDt, "scratch");
  // partial sums, extrema and logsumexps combine as the whole; argmax also keeps indices
  pass(rt, kind === "argmax" ? "max" : kind, acc, inBuf, inDt, tmp, p, parts, chunk, 1);
  if (kind !== "argmax") {
    reduceInto(rt, kind, acc, tmp.buffer(kind), tmpDt, out, p2, scale);
    tmp.dispose();
    return;
  }
  // argmax: the index of each part's maximum, the part of the first maximal partial maximum
  // (parts are in order, so ties and NaN keep the first), and that part's index
  const idx = Tensor.empty([p.nOut * parts], int32, "scratch");
  pass(rt, "argmax", acc, inBuf, inDt, idx, p, parts, chunk, 1);
  const best = Tensor.empty([p.nOut], int32, "scratch");
  reduceInto(rt, "argmax", acc, tmp.buffer(kind), tmpDt, best, p2, 1);
  const n = p.nOut;
  const l32 = layoutOf(int32, rt);
  program(rt, "reduce|argmax_pick", {
    label: "argmax",
    bindings: [
      { name: "best", type: l32, access: "read" },
      { name: "idx", type: l32, access: "read" },
      { name: "out", type: l32, access: "read_write" },
    ],
    uniforms: [{ name: "n", type: "u32" }, { name: "parts", type: "u32" }],
    workgroupSize: WG,
  }, () => `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let q = wg * ${WG}u + li;
  if (q < u.n) { put_out(q, get_idx(q * u.parts + get_best(q))); }
}`).run({
    buffers: { best: best.buffer(kind), idx: idx.buffer(kind), out: out.buffer(kind) },
    uniforms: { n, parts },
    groups: Math.ceil(n / WG),
    ranges: {
      best: (g0, g1) => [g0 * WG, Math.min(n, g1 * WG)],
      idx: (g0, g1) => [g0 * WG * parts, Math.min(n, g1 * WG) * parts],
      out: (g0, g1) => [g0 * WG, Math.min(n, g1 * WG)],
    },
  });
  for (const t of [tmp, idx, best]) t.dispose();
}

/**
 * Reduces `x` over `axes` (sorted, distinct) into a new tensor of `outShape` (any shape with
 * the kept elements in order) and `outDt`. `scale` multiplies f32 sums (mean). @internal
 */
function reduceCore(
  kind: Kind,
  x: Tensor,
  axes: readonly number[],
  outShape: readonly number[],
  outDt: DType,
  scale = 1,
): Tensor {
  const op = kind === "lse" ? "logsumexp" : kind;
  const inBuf = x.buffer(`${op}()`);
  const rt = currentRuntime();
  const p = plan(op, x.shape, axes);
  const acc = accOf(kind, x.dt, outDt);
  const out = Tensor.empty(outShape, outDt);
  if (p.nOut === 0) return out;
  reduceInto(rt, kind, acc, inBuf, x.dt, out, p, scale);
  return out;
}

function accOf(kind: Kind, inDt: DType, outDt: DType): Acc {
  if (kind === "lse" || isFloat(inDt)) return "f32";
  if (kind === "sum") return isFloat(outDt) ? "f32" : "i32";
  return inDt.kind === "int" && inDt.signed ? "i32" : "u32";
}

/** Runs a row kernel over `axis` of the first input's shape. */
function rowKernel(kind: RowKind, ins: Tensor[], axis: number | null, outDt: DType): Tensor {
  const op = kind.startsWith("log") ? "logSoftmax" : "softmax";
  const bufs = ins.map((t) => t.buffer(`${op}()`));
  const rt = currentRuntime();
  const shape = ins[0].shape;
  const p = plan(op, shape, axis === null ? [] : [axis]);
  const outL = layoutOf(outDt, rt);
  const words = outL.lanes > 1 && p.R % outL.lanes === 0 && p.rst[0] === 1;
  // a packed output whose rows do not own whole words: compute into f32, then round once
  const direct = outL.lanes === 1 || words;
  const out = Tensor.empty(shape, direct ? outDt : float32);
  if (p.nOut === 0 || p.R === 0) return out;
  const wL = layoutOf(out.dt, rt);
  const st = p.rst[0] ?? 0;
  // a workgroup's row: R elements from its kept offset, `st` apart (the output alike)
  const rows = (g0: number, g1: number): [number, number] => [
    offsetOf(p.ks, p.kst, g0),
    offsetOf(p.ks, p.kst, g1 - 1) + (p.R - 1) * st + 1,
  ];
  const names = ins.map((_, k) => `x${k}`);
  const buffers: Record<string, PooledBuffer> = { out: out.buffer(op) };
  names.forEach((nm, k) => (buffers[nm] = bufs[k]));
  // (its rows within half a window of every binding, so pieces stay as fine as with one row)
  const fits = [...ins.map((t) => t.dt), out.dt].every((d) =>
    QROWS * p.R <= windowElems(rt, layoutOf(d, rt)) / 2
  );
  const laneFits = [...ins.map((t) => t.dt), out.dt].every((d) =>
    LANE_ROWS * p.R <= windowElems(rt, layoutOf(d, rt)) / 2
  );
  // the lane-row and quad families' program; one-word bindings viewed as vec4
  const rowProgram: RowProgram<Tensor> = (tag, rowsPer, wgSize, body) => {
    const grows = (g0: number, g1: number) => rows(g0 * rowsPer, Math.min(p.nOut, g1 * rowsPer));
    const granges: Record<string, typeof rows> = { out: grows };
    names.forEach((nm) => (granges[nm] = grows));
    program(rt, `reduce|${tag}|${kind}`, {
      label: op,
      bindings: [
        ...ins.map((t, k) => {
          const l = layoutOf(t.dt, rt);
          return { name: names[k], type: l, access: "read" as const, vec4: vec4View(l) };
        }),
        { name: "out", type: wL, access: "read_write" as const, vec4: vec4View(wL) },
      ],
      uniforms: UNIFORMS,
      workgroupSize: wgSize,
    }, () => body(vec4View(wL))).run({
      buffers,
      uniforms: planUniforms(p.nOut, { ...p, rs: [p.R], rst: [st] }, 1, p.R, 1),
      groups: Math.ceil(p.nOut / rowsPer),
      cost: p.nOut * p.R * (kind.endsWith("bwd") ? COST.softmaxBwd : COST.softmax),
      ranges: granges,
    });
    return out;
  };
  if (st === 1 && direct && laneFits && laneRowsFor(rt, p.R)) {
    // the lane-row family: LANE_ROWS rows a workgroup, one an invocation
    const f32q = ins.map((t) => t.dt.name === "f32");
    return rowProgram("rowl", LANE_ROWS, LANE_ROWS, (v) => rowBodyLanes(kind, wL, v, f32q));
  }
  if (st === 1 && p.R % 4 === 0 && direct && fits) {
    // contiguous rows of whole quads: QROWS rows a workgroup, 4 elements an invocation
    return rowProgram("rowq", QROWS, QROWS * 16, (v) => rowBodyQuads(kind, wL, v));
  }
  const ranges: Record<string, typeof rows> = { out: rows };
  names.forEach((nm) => (ranges[nm] = rows));
  program(rt, `reduce|row|${kind}|${words}`, {
    label: op,
    bindings: [
      ...ins.map((t, k) => ({ name: names[k], type: layoutOf(t.dt, rt), access: "read" as const })),
      { name: "out", type: wL, access: "read_write" as const },
    ],
    uniforms: UNIFORMS,
    workgroupSize: WG,
  }, () => rowBody(kind, wL, words)).run({
    buffers,
    uniforms: planUniforms(p.nOut, { ...p, rs: [p.R], rst: [st] }, 1, p.R, 1),
    groups: p.nOut,
    cost: p.nOut * p.R * (kind.endsWith("bwd") ? COST.softmaxBwd : COST.softmax),
    ranges,
  });
  if (direct) return out;
  const cast = launch("cast", [out], ([a]) => a, outDt);
  out.dispose();
  return cast;
}

// ---- checks and shapes ---------------------------------------------------------------------------

function checkTensor(op: string, x: unknown): Tensor {
  if (!(x instanceof Tensor)) {
    throw new ValueError(
      `${op}(): expects a Tensor, got ${
        x === null ? "null" : typeof x === "object" ? x.constructor?.name ?? "object" : typeof x
      }`,
    );
  }
  x.buffer(`${op}()`);
  return x;
}

function axisError(op: string, shape: readonly number[], axis: unknown): ShapeError {
  const r = shape.length;
  const range = r === 0 ? "-1..0 (a 0-d tensor)" : `${-r}..${r - 1}`;
  return new ShapeError(
    `${op}(): axis ${String(axis)} is out of range for shape ${fmtShape(shape)} ` +
      `(rank ${r}); valid axes are ${range}`,
  );
}

/** One axis, normalised; null for a 0-d tensor (its only axis is implicit). */
function normAxis(op: string, shape: readonly number[], axis: number): number | null {
  const r = shape.length;
  if (typeof axis !== "number" || !Number.isInteger(axis)) throw axisError(op, shape, axis);
  if (r === 0) {
    if (axis !== 0 && axis !== -1) throw axisError(op, shape, axis);
    return null;
  }
  if (axis < -r || axis >= r) throw axisError(op, shape, axis);
  return axis < 0 ? axis + r : axis;
}

/** Axes normalised, sorted and distinct; all axes when `axis` is undefined. */
function normAxes(
  op: string,
  shape: readonly number[],
  axis: number | readonly number[] | undefined,
): number[] {
  if (axis === undefined || axis === null) return shape.map((_, d) => d);
  const list = typeof axis === "number" ? [axis] : axis;
  if (!Array.isArray(list)) {
    throw new ValueError(`${op}(): axis must be a number or an array of numbers`);
  }
  const out: number[] = [];
  for (const a of list) {
    const d = normAxis(op, shape, a);
    if (d === null) continue;
    if (out.includes(d)) {
      throw new ShapeError(
        `${op}(): axis ${a} appears more than once in [${list.join(",")}] for shape ${
          fmtShape(shape)
        }`,
      );
    }
    out.push(d);
  }
  return out.sort((a, b) => a - b);
}

function reducedShape(shape: readonly number[], axes: readonly number[], keepDims: boolean) {
  return keepDims
    ? shape.map((v, d) => (axes.includes(d) ? 1 : v))
    : shape.filter((_, d) => !axes.includes(d));
}

function checkNonEmpty(op: string, x: Tensor, axes: readonly number[]): void {
  const r = axes.reduce((a, d) => a * x.shape[d], 1);
  if (r === 0 && x.shape.reduce((a, v, d) => (axes.includes(d) ? a : a * v), 1) > 0) {
    throw new ValueError(
      `${op}(): cannot reduce over an empty dimension (shape ${fmtShape(x.shape)}, axes ` +
        `[${axes.join(",")}]); the result has no identity value`,
    );
  }
}

/** The dtype of gradients that flow to `x`. */
function gradDt(x: Tensor): DType {
  return isFloat(x.dt) ? x.dt : float32;
}

/** `t`'s values with another shape of the same size: `t` itself, or a copy to dispose. */
function asShape(t: Tensor, shape: readonly number[]): Tensor {
  if (t.size === 1 || sameShape(t.shape, shape)) return t;
  const out = Tensor.empty(shape, t.dt);
  currentRuntime().copy(
    t.buffer("backward"),
    0,
    out.buffer("backward"),
    0,
    storageBytes(t.dt, t.size),
  );
  return out;
}

function drop(t: Tensor, orig: Tensor): void {
  if (t !== orig) t.dispose();
}

/**
 * `g` (the gradient of a reduction of `x` over `axes`) broadcast back to `x`'s shape, times
 * `scale`, in `dt`. Recorded as an op whose own gradient is the sum back.
 */
function expand(
  g: Tensor,
  axes: readonly number[],
  shape: readonly number[],
  scale: number,
  dt: DType,
) {
  const gk = asShape(g, shape.map((v, d) => (axes.includes(d) ? 1 : v)));
  const out = scale === 1
    ? launch("expand", [gk], ([a]) => a, dt, {}, shape)
    : launch("expand", [gk, scale], ([a, s]) => `${a} * ${s}`, dt, {}, shape);
  drop(gk, g);
  return attach(out, "expand", [g], (h) => [
    reduceCore("sum", h, axes, g.shape, isFloat(g.dt) ? g.dt : float32, scale),
  ]);
}

// ---- the ops -------------------------------------------------------------------------------------

/**
 * Sum over `axis` (one axis, negative counting from the end, or several; all when omitted),
 * accumulated in f32 and rounded once to the input's dtype. Integer and bool inputs sum
 * exactly into i32 (wrapping on overflow).
 *
 * @example
 * ```ts
 * import { sum, tensor } from "../../mod.ts";
 * const x = tensor([[1, 2, 3], [4, 5, 6]], { dtype: "bf16" });
 * console.log(Array.from(await sum(x).toArray())); // [21]
 * console.log(Array.from(await sum(x, 1).toArray())); // [6, 15]
 * console.log(sum(x, -2, true).shape); // [1, 3]
 * ```
 */
export function sum(x: Tensor, axis?: number | readonly number[], keepDims = false): Tensor {
  checkTensor("sum", x);
  [x] = autocastInputs(POLICY.sum, [x]);
  const axes = normAxes("sum", x.shape, axis);
  const out = reduceCore(
    "sum",
    x,
    axes,
    reducedShape(x.shape, axes, keepDims),
    isFloat(x.dt) ? x.dt : int32,
  );
  return attach(out, "sum", [x], (g) => [expand(g, axes, x.shape, 1, gradDt(x))]);
}

/**
 * Mean over `axis` (all axes when omitted), accumulated in f32. Integer and bool inputs
 * give f32. The mean of no elements is NaN.
 *
 * @example
 * ```ts
 * import { mean, tensor } from "../../mod.ts";
 * const x = tensor([[1, 2], [3, 5]]);
 * console.log(Array.from(await mean(x).toArray())); // [2.75]
 * console.log(Array.from(await mean(x, 0).toArray())); // [2, 3.5]
 * ```
 */
export function mean(x: Tensor, axis?: number | readonly number[], keepDims = false): Tensor {
  checkTensor("mean", x);
  [x] = autocastInputs(POLICY.mean, [x]);
  const axes = normAxes("mean", x.shape, axis);
  const count = axes.reduce((a, d) => a * x.shape[d], 1);
  const scale = 1 / count;
  const out = reduceCore(
    "sum",
    x,
    axes,
    reducedShape(x.shape, axes, keepDims),
    isFloat(x.dt) ? x.dt : float32,
    scale,
  );
  return attach(out, "mean", [x], (g) => [expand(g, axes, x.shape, scale, gradDt(x))]);
}

function extremum(
  op: "max" | "min",
  x: Tensor,
  axis: number | readonly number[] | undefined,
  keepDims: boolean,
): Tensor {
  checkTensor(op, x);
  const axes = normAxes(op, x.shape, axis);
  checkNonEmpty(op, x, axes);
  const out = reduceCore(op, x, axes, reducedShape(x.shape, axes, keepDims), x.dt);
  return attach(out, op, [x], (g) => {
    // the gradient goes to the positions of the extremum, split evenly among ties
    const keep = reducedShape(x.shape, axes, true);
    const gk = asShape(g, keep), yk = asShape(out, keep);
    const mask = launch(
      `${op}_mask`,
      [x, yk],
      ([a, b]) => `f32(${a} == ${b})`,
      float32,
      {},
      x.shape,
    );
    const count = reduceCore("sum", mask, axes, keep, float32);
    const gx = launch(
      `${op}_grad`,
      [x, yk, gk, count],
      ([a, b, gg, c]) => `select(0.0, ${gg} / ${c}, ${a} == ${b})`,
      gradDt(x),
      {},
      x.shape,
    );
    mask.dispose();
    count.dispose();
    drop(gk, g);
    drop(yk, out);
    return [gx];
  });
}

/**
 * Maximum over `axis` (all axes when omitted), in the input's dtype. NaN propagates: a
 * reduction that meets a NaN gives NaN. The gradient goes to the maximal elements, split
 * evenly among ties.
 *
 * @example
 * ```ts
 * import { max, tensor } from "../../mod.ts";
 * const x = tensor([[1, 7, 3], [4, -5, 6]], { dtype: "e4m3" });
 * console.log(Array.from(await max(x, 1).toArray())); // [7, 6]
 * console.log(await max(tensor([1, NaN, 3])).item()); // NaN
 * ```
 */
export function max(x: Tensor, axis?: number | readonly number[], keepDims = false): Tensor {
  return extremum("max", x, axis, keepDims);
}

/**
 * Minimum over `axis` (all axes when omitted), in the input's dtype; NaN propagates.
 *
 * @example
 * ```ts
 * import { min, tensor } from "../../mod.ts";
 * const x = tensor([[1, 7, 3], [4, -5, 6]]);
 * console.log(Array.from(await min(x, 0).toArray())); // [1, -5, 3]
 * ```
 */
export function min(x: Tensor, axis?: number | readonly number[], keepDims = false): Tensor {
  return extremum("min", x, axis, keepDims);
}

/**
 * Index of the maximum along `axis`, as i32; over the flattened tensor when `axis` is
 * omitted. Ties give the first index, and a NaN counts as the maximum (as PyTorch).
 *
 * @example
 * ```ts
 * import { argmax, tensor } from "../../mod.ts";
 * const x = tensor([[1, 9, 9], [8, 2, 3]]);
 * console.log(Array.from(await argmax(x, 1).toArray())); // [1, 0]
 * console.log(await argmax(x).item()); // 1
 * ```
 */
export function argmax(x: Tensor, axis?: number, keepDims = false): Tensor {
  checkTensor("argmax", x);
  if (axis !== undefined && typeof axis !== "number") {
    throw new ValueError(`argmax(): axis must be a number or undefined, got ${typeof axis}`);
  }
  const axes = normAxes("argmax", x.shape, axis);
  checkNonEmpty("argmax", x, axes);
  return reduceCore("argmax", x, axes, reducedShape(x.shape, axes, keepDims), int32);
}

/**
 * `log(sum(exp(x)))` over `axis` (default the last), computed stably in f32 (the maximum is
 * subtracted first) and rounded once. Its gradient is `g * softmax(x)`.
 *
 * @example
 * ```ts
 * import { logsumexp, tensor } from "../../mod.ts";
 * const x = tensor([[1000, 1000], [0, Math.log(3)]]);
 * console.log(Array.from(await logsumexp(x, 1).toArray()).map((v) => v.toFixed(4))); // ["1000.6932", "1.3863"]
 * ```
 */
export function logsumexp(
  x: Tensor,
  axis: number | readonly number[] = -1,
  keepDims = false,
): Tensor {
  checkTensor("logsumexp", x);
  [x] = autocastInputs(POLICY.logsumexp, [x]);
  const axes = normAxes("logsumexp", x.shape, axis);
  const outDt = isFloat(x.dt) ? x.dt : float32;
  const out = reduceCore("lse", x, axes, reducedShape(x.shape, axes, keepDims), outDt);
  return attach(out, "logsumexp", [x], (g) => {
    const keep = reducedShape(x.shape, axes, true);
    const gk = asShape(g, keep);
    // the softmax needs the logsumexp in f32: recompute it unless the output is f32
    const lse = out.dt === float32 ? asShape(out, keep) : reduceCore("lse", x, axes, keep, float32);
    const gx = launch(
      "logsumexp_grad",
      [gk, x, lse],
      ([gg, a, l]) => `${gg} * exp(${a} - ${l})`,
      gradDt(x),
      {},
      x.shape,
    );
    drop(gk, g);
    drop(lse, out);
    return [gx];
  });
}

/**
 * Softmax over `axis` (default the last), one fused kernel: the row's maximum, the sum of
 * exponentials and the output, computed in f32 and rounded once to the input's dtype.
 * Large inputs stay finite. The backward pass is fused as well.
 *
 * @example
 * ```ts
 * import { softmax, tensor } from "../../mod.ts";
 * const p = softmax(tensor([[1000, 1000], [0, Math.log(3)]]));
 * console.log(Array.from(await p.toArray()).map((v) => v.toFixed(4))); // ["0.5000", "0.5000", "0.2500", "0.7500"]
 * ```
 */
export function softmax(x: Tensor, axis = -1): Tensor {
  checkTensor("softmax", x);
  [x] = autocastInputs(POLICY.softmax, [x]);
  const a = normAxis("softmax", x.shape, axis);
  const out = rowKernel("softmax", [x], a, isFloat(x.dt) ? x.dt : float32);
  return attach(out, "softmax", [x], (g) => {
    if (g.requiresGrad) {
      // differentiable composite: y * (g - sum(g * y))
      const gy = g.mul(out);
      const s = sum(gy, a ?? undefined, true);
      const r = out.mul(g.sub(s));
      gy.dispose();
      s.dispose();
      return [r];
    }
    return [rowKernel("softmax_bwd", [out, g], a, gradDt(x))];
  });
}

/**
 * Log-softmax over `axis` (default the last): `x - max - log(sum(exp(x - max)))` in one fused
 * kernel, computed in f32 and rounded once. The backward pass is `g - softmax * sum(g)`.
 *
 * @example
 * ```ts
 * import { logSoftmax, tensor } from "../../mod.ts";
 * const y = logSoftmax(tensor([0, Math.log(3)]));
 * console.log(Array.from(await y.exp().toArray()).map((v) => v.toFixed(4))); // ["0.2500", "0.7500"]
 * ```
 */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  checkTensor("logSoftmax", x);
  [x] = autocastInputs(POLICY.logSoftmax, [x]);
  const a = normAxis("logSoftmax", x.shape, axis);
  const out = rowKernel("logsoftmax", [x], a, isFloat(x.dt) ? x.dt : float32);
  return attach(out, "logSoftmax", [x], (g) => {
    if (g.requiresGrad) {
      const s = sum(g, a ?? undefined, true);
      const p = out.exp();
      const ps = p.mul(s);
      const r = g.sub(ps);
      for (const t of [s, p, ps]) t.dispose();
      return [r];
    }
    return [rowKernel("logsoftmax_bwd", [out, g], a, gradDt(x))];
  });
}

/**
 * Sums a broadcast gradient back to `shape`: over the leading dimensions `g` has in excess
 * and over the dimensions where `shape` has size 1. Returns `g` itself when the shapes
 * already match. Elementwise ops use it for the gradients of broadcast operands.
 *
 * @example
 * ```ts
 * import { tensor } from "../../mod.ts";
 * import { sumTo } from "../mod.ts";
 * const g = tensor([[1, 2, 3], [4, 5, 6]]);
 * const r = sumTo(g, [1, 3]);
 * console.log(r.shape, Array.from(await r.toArray())); // [1, 3] [5, 7, 9]
 * console.log(sumTo(g, [2, 3]) === g); // true
 * ```
 */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  checkTensor("sumTo", g);
  if (sameShape(g.shape, shape)) return g;
  const lead = g.ndim - shape.length;
  if (lead < 0 || shape.some((v, d) => v !== 1 && v !== g.shape[lead + d])) {
    throw new ShapeError(
      `sumTo(): a gradient of shape ${fmtShape(g.shape)} cannot be summed to shape ` +
        `${fmtShape(shape)}; that shape does not broadcast to the gradient's`,
    );
  }
  const axes = g.shape.map((_, d) => d).filter((d) => d < lead || shape[d - lead] === 1);
  const out = reduceCore("sum", g, axes, shape, isFloat(g.dt) ? g.dt : int32);
  return attach(out, "sumTo", [g], (h) => [expand(h, axes, g.shape, 1, gradDt(g))]);
}

const methods: ReduceMethods & ThisType<Tensor> = {
  /** Sum over `axis` (all axes when omitted), accumulated in f32. */
  sum(this: Tensor, axis?: number | readonly number[], keepDims = false): Tensor {
    return sum(this, axis, keepDims);
  },
  /** Mean over `axis` (all axes when omitted), accumulated in f32. */
  mean(this: Tensor, axis?: number | readonly number[], keepDims = false): Tensor {
    return mean(this, axis, keepDims);
  },
  /** Maximum over `axis` (all axes when omitted). */
  max(this: Tensor, axis?: number | readonly number[], keepDims = false): Tensor {
    return max(this, axis, keepDims);
  },
  /** Minimum over `axis` (all axes when omitted). */
  min(this: Tensor, axis?: number | readonly number[], keepDims = false): Tensor {
    return min(this, axis, keepDims);
  },
  /** Index of the maximum over `axis` (of the flattened tensor when omitted), as i32. */
  argmax(this: Tensor, axis?: number, keepDims = false): Tensor {
    return argmax(this, axis, keepDims);
  },
  /** `log(sum(exp(this)))` over `axis`, computed stably. */
  logsumexp(this: Tensor, axis: number | readonly number[] = -1, keepDims = false): Tensor {
    return logsumexp(this, axis, keepDims);
  },
  /** Softmax over `axis` (default the last). */
  softmax(this: Tensor, axis = -1): Tensor {
    return softmax(this, axis);
  },
  /** Log-softmax over `axis` (default the last). */
  logSoftmax(this: Tensor, axis = -1): Tensor {
    return logSoftmax(this, axis);
  },
};
/** The reduction methods of `Tensor`: `sum`, `mean`, `max`, `min`, `argmax`, `softmax`, ... */
export interface ReduceMethods {
  /** Sum over `axis` (all axes when omitted), accumulated in f32. */
  sum(axis?: number | readonly number[], keepDims?: boolean): Tensor;
  /** Mean over `axis` (all axes when omitted), accumulated in f32. */
  mean(axis?: number | readonly number[], keepDims?: boolean): Tensor;
  /** Maximum over `axis` (all axes when omitted). */
  max(axis?: number | readonly number[], keepDims?: boolean): Tensor;
  /** Minimum over `axis` (all axes when omitted). */
  min(axis?: number | readonly number[], keepDims?: boolean): Tensor;
  /** Index of the maximum over `axis` (of the flattened tensor when omitted), as i32. */
  argmax(axis?: number, keepDims?: boolean): Tensor;
  /** `log(sum(exp(this)))` over `axis`, computed stably. */
  logsumexp(axis?: number | readonly number[], keepDims?: boolean): Tensor;
  /** Softmax over `axis` (default the last). */
  softmax(axis?: number): Tensor;
  /** Log-softmax over `axis` (default the last). */
  logSoftmax(axis?: number): Tensor;
}

installMethods(methods, "ops/reduce.ts");
