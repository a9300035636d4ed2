/**
 * Fused attention: `softmax(scale * q k^T + mask) v` in one kernel forward and one backward,
 * as `torch.nn.functional.scaled_dot_product_attention`. Each invocation owns two neighbouring
 * query rows (i, i + 1), reading each key and value row once for both: it streams over the
 * keys with an online softmax (running max and sum, FlashAttention's recurrence: Dao et al.
 * 2022, Milakov & Gimelshein 2018), so the T x T scores are never stored; the log-sum-exp of
 * each row is kept for the backward pass, which recomputes the probabilities: dQ by pairs of
 * query rows, dK and dV by pairs of key rows, in the same dispatch.
 *
 * Operands are read through strides, so the attention of a GPT reads q, k and v straight
 * from the fused (B, T, 3C) projection and writes (B, T, C), without the head split and
 * transposes around an unfused attention (about a dozen kernels per layer and pass).
 * Scores, softmax and the products accumulate in f32; outputs are rounded once to the
 * operands' dtype.
 *
 * @module
 */

import { type DType, float32, isFloat } from "../../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../../errors.ts";
import {
  type BindingSpec,
  type Box,
  currentRuntime,
  program,
  type Runtime,
  type UniformSpec,
} from "../../gpu/mod.ts";
import { attach } from "../../autograd/graph.ts";
import { type Layout, layoutOf, storageBytes } from "../../gpu/layout.ts";
import { fmtShape, Tensor } from "../core/tensor.ts";
import { autocastInputs } from "./cast.ts";
import { vec4View } from "./reduce.ts";

/** Largest head size the kernels hold in registers. */
/** Autocast's policy for attention: its two GEMMs run in the context's lower dtype. */
export const ATTENTION_POLICY = { attention: "lower" } as const;

export const MAX_HEAD_SIZE = 256;
const WG = 64;

/** Where one operand's rows lie: element offset and strides of batch, head and position. */
interface RowMap {
  off: number;
  sb: number;
  sh: number;
  st: number;
}

/** One attention problem: sizes, masking and where every operand lives. */
interface Geometry {
  B: number;
  nh: number;
  Tq: number;
  Tk: number;
  hs: number;
  causal: boolean;
  scale: number;
  q: RowMap;
  k: RowMap;
  v: RowMap;
  y: RowMap;
}

/** Options of `scaledDotProductAttention`. */
export interface AttentionOptions {
  /** Mask key j from query i when j > i (a decoder's causal mask), as PyTorch's `is_causal`. */
  causal?: boolean;
  /** The factor of the scores; default `1 / sqrt(headSize)`. */
  scale?: number;
}

/** The uniforms of both passes, by name: sizes, scale, and where each operand's rows lie. */
function uniforms(g: Geometry, dq?: RowMap, dk?: RowMap, dv?: RowMap) {
  const m = (r?: RowMap) => (r ? [r.off, r.sb, r.sh, r.st] : [0, 0, 0, 0]);
  return {
    nh: g.nh,
    tq: g.Tq,
    tk: g.Tk,
    causal: g.causal ? 1 : 0,
    sc: g.scale,
    mq: m(g.q),
    mk: m(g.k),
    mv: m(g.v),
    my: m(g.y),
    mdq: m(dq),
    mdk: m(dk),
    mdv: m(dv),
  };
}

const UNIFORMS = [
  { name: "nh", type: "u32" },
  { name: "tq", type: "u32" },
  { name: "tk", type: "u32" },
  { name: "causal", type: "u32" },
  { name: "sc", type: "f32" },
  // the slice of the loop over keys (forward, dQ) or queries (dK, dV) this dispatch runs, and
  // whether it is the first (no state to load) or last (write the result, no state to keep)
  { name: "c0", type: "u32" },
  { name: "c1", type: "u32" },
  { name: "first", type: "u32" },
  { name: "last", type: "u32" },
  // where the rows of q, k, v, y, dq, dk, dv lie: offset, batch, head and time strides
  ...(["mq", "mk", "mv", "my", "mdq", "mdk", "mdv"] as const).map((name) => ({
    name,
    type: "u32" as const,
    length: 4,
  })),
] as const satisfies readonly UniformSpec[];

/** Head sizes up to this have their loops over d unrolled (`unrolled`). */
const UNROLL_MAX = 64;

/**
 * `src` with each loop `for (var x = 0u; x < Nu; x++) { ... }` over at most `UNROLL_MAX`
 * iterations (a body without braces) written out, `x` replaced by each constant (a scope per
 * copy where the body declares names): the rows an invocation keeps in private arrays are then
 * indexed by constants and live in registers. Indexed by a loop variable, llvmpipe and
 * lavapipe keep them in memory; a GPU's compiler unrolls such loops itself. With `quads`, a
 * loop that only loads a row of those operands (`r[d] = ld_x(off + d);`, offsets on quads)
 * loads it in 16-byte quads (`lq_x`: vec4 bindings): on lavapipe a quad costs about what two
 * single loads do. (Rows of packed dtypes keep their single loads: reading them four elements
 * at a time through `ld4_x` was slower for bf16.) The same values and operations in the same
 * order: the bits do not change.
 */
function unrolled(src: string, quads: readonly string[]): string {
  return src.replace(
    /for \(var (\w+) = 0u; \1 < (\d+)u; \1\+\+\) \{([^{}]*)\}/g,
    (all, x: string, n: string, body: string) => {
      const N = Number(n);
      if (N > UNROLL_MAX) return all;
      const load = body.trim().match(
        new RegExp(`^(\\w+)\\[${x}\\] = ld_(\\w+)\\((.+) \\+ ${x}\\);$`),
      );
      if (load !== null && quads.includes(load[2]) && N % 4 === 0) {
        const [, r, op, off] = load;
        return Array.from(
          { length: N / 4 },
          (_, w) =>
            `{ let t = lq_${op}((${off}) / 4u + ${w}u); ` +
            [0, 1, 2, 3].map((c) => `${r}[${4 * w + c}u] = t.${"xyzw"[c]};`).join(" ") + " }",
        ).join("\n");
      }
      const re = new RegExp(`\\b${x}\\b`, "g");
      const scope = /\b(let|var)\b/.test(body);
      return Array.from({ length: N }, (_, k) => {
        const copy = body.replace(re, `${k}u`).trim();
        return scope ? `{ ${copy} }` : copy;
      }).join("\n");
    },
  );
}

const ROW =
  `fn row(m: vec4<u32>, b: u32, h: u32, t: u32) -> u32 { return m.x + b * m.y + h * m.z + t * m.w; }
`;

/** WGSL that writes the private row `r` (HS values) at element offset `off` of `out`. */
function putRow(l: Layout, hs: number): string {
  const z4 = "vec4<u32>(0u)";
  let body: string;
  if (l.lanes === 1) {
    body = `for (var d = 0u; d < ${hs}u; d++) { st_out(off + d, vec4<f32>((*r)[d]), ${z4}); }`;
  } else if (l.lanes === 2) {
    body = `for (var w = 0u; w < ${hs / 2}u; w++) {
    st_out(off / 2u + w, vec4<f32>((*r)[2u * w], (*r)[2u * w + 1u], 0.0, 0.0), ${z4});
  }`;
  } else {
    body = `for (var w = 0u; w < ${hs / 4}u; w++) {
    let j = 4u * w;
    st_out(off / 4u + w, vec4<f32>((*r)[j], (*r)[j + 1u], (*r)[j + 2u], (*r)[j + 3u]), ${z4});
  }`;
  }
  return `fn put_row(off: u32, r: ptr<function, array<f32, ${hs}>>) {
  ${body}
}
`;
}

function forwardSource(outL: Layout, hs: number): string {
  // Two query rows an invocation (i, i + 1), each key and value row read once for both; each
  // row's recurrence runs as with one row an invocation, so the bits do not change.
  // st: between slices of the keys, each query row's running max, sum and output (hs + 2)
  const start = (n: string) =>
    `var q${n}: array<f32, ${hs}>;
  var o${n}: array<f32, ${hs}>;
  let qo${n} = row(u.mq[0], b, h, i${n});
  for (var d = 0u; d < ${hs}u; d++) { q${n}[d] = ld_q(qo${n} + d); }
  for (var d = 0u; d < ${hs}u; d++) { o${n}[d] = 0.0; }
  var m${n} = -3.0e38;
  var l${n} = 0.0;
  if (u.first == 0u) {
    m${n} = bitcast<f32>(get_st(sb${n}));
    l${n} = bitcast<f32>(get_st(sb${n} + 1u));
    for (var d = 0u; d < ${hs}u; d++) { o${n}[d] = bitcast<f32>(get_st(sb${n} + 2u + d)); }
  }
  let jn${n} = min(select(Tk, min(i${n} + 1u, Tk), u.causal == 1u), u.c1);`;
  const pair = (n: string) =>
    `if (j < jn${n}) {
      var s = 0.0;
      for (var d = 0u; d < ${hs}u; d++) { s = fma(q${n}[d], kv[d], s); }
      s = s * u.sc;
      let mn = max(m${n}, s);
      let c = exp(m${n} - mn);
      let p = exp(s - mn);
      l${n} = l${n} * c + p;
      for (var d = 0u; d < ${hs}u; d++) { o${n}[d] = fma(p, vv[d], o${n}[d] * c); }
      m${n} = mn;
    }`;
  const end = (n: string) =>
    `if (u.last == 0u) {
    put_st(sb${n}, bitcast<u32>(m${n}));
    put_st(sb${n} + 1u, bitcast<u32>(l${n}));
    for (var d = 0u; d < ${hs}u; d++) { put_st(sb${n} + 2u + d, bitcast<u32>(o${n}[d])); }
  } else {
    let inv = select(0.0, 1.0 / l${n}, l${n} > 0.0);
    for (var d = 0u; d < ${hs}u; d++) { o${n}[d] = o${n}[d] * inv; }
    put_row(row(u.my[0], b, h, i${n}), &o${n});
    lse[bh * Tq + i${n}] = select(-3.0e38, m${n} + log(l${n}), l${n} > 0.0);
  }`;
  return `${ROW}${putRow(outL, hs)}
fn kernel(wg: vec3u, lid: vec3u, li: u32) {
  let nh = u.nh; let Tq = u.tq; let Tk = u.tk;
  let i0 = 2u * (wg.x * ${WG}u + li);
  if (i0 >= Tq) { return; }
  let two = i0 + 1u < Tq; // a second row
  let i1 = select(i0, i0 + 1u, two); // one row: the second repeats the first, unused
  let bh = wg.y; let b = bh / nh; let h = bh % nh;
  let sb0 = (bh * Tq + i0) * ${hs + 2}u;
  let sb1 = (bh * Tq + i1) * ${hs + 2}u;
  ${start("0")}
  ${start("1")}
  for (var j = u.c0; j < max(jn0, jn1); j++) {
    let ko = row(u.mk[0], b, h, j);
    let vo = row(u.mv[0], b, h, j);
    var kv: array<f32, ${hs}>;
    var vv: array<f32, ${hs}>;
    for (var d = 0u; d < ${hs}u; d++) { kv[d] = ld_k(ko + d); }
    for (var d = 0u; d < ${hs}u; d++) { vv[d] = ld_v(vo + d); }
    ${pair("0")}
    if (two) {
      ${pair("1")}
    }
  }
  ${end("0")}
  if (two) {
    ${end("1")}
  }
}
`;
}

/**
 * Rows of one side an invocation of the backward kernel owns: two up to head size 32, one from
 * 33 to `UNROLL_MAX`, two past it (loops, not unrolled). Two rows read each row of the other
 * side once per pair; at head size 64 written out they are about 700 live f32 values an
 * invocation, which llvmpipe took 15 to 36 s to compile per variant (one row: 5 to 8 s).
 */
function bwdRows(hs: number): 1 | 2 {
  return hs > 32 && hs <= UNROLL_MAX ? 1 : 2;
}

function backwardSource(outL: Layout, hs: number): string {
  // Each invocation owns `bwdRows(hs)` rows of one side (queries i, i + 1 or keys j, j + 1)
  // and keeps them in registers; it reads each row of the other side once per pair of its
  // rows, each element once: on a CPU adapter every load in a loop is a per-lane gather, so
  // loads, not multiply-adds, set the time. Each row's sums run in the same order as with one
  // row per invocation (dot products over d, pairs in order), so the bits do not change.
  const R = bwdRows(hs);
  // the second row's code, or none
  const second = (code: string) => (R === 2 ? code : "");
  const rowTerms = (n: string) =>
    `for (var d = 0u; d < ${hs}u; d++) { a${n}[d] = 0.0; c${n}[d] = 0.0; }
  if (u.first == 0u) {
    for (var d = 0u; d < ${hs}u; d++) { a${n}[d] = bitcast<f32>(get_st(sb${n} + d)); c${n}[d] = bitcast<f32>(get_st(sb${n} + ${hs}u + d)); }
  }`;
  // dQ_i = scale * sum_j P_ij (dP_ij - D_i) k_j, with dP_ij = dO_i . v_j, D_i = dO_i . O_i
  const queryRow = (n: string) =>
    `var q${n}: array<f32, ${hs}>;
    var g${n}: array<f32, ${hs}>;
    var y${n}: array<f32, ${hs}>;
    let qo${n} = row(u.mq[0], b, h, i${n});
    let go${n} = row(u.my[0], b, h, i${n});
    for (var d = 0u; d < ${hs}u; d++) { q${n}[d] = ld_q(qo${n} + d); }
    for (var d = 0u; d < ${hs}u; d++) { g${n}[d] = ld_g(go${n} + d); }
    for (var d = 0u; d < ${hs}u; d++) { y${n}[d] = ld_y(go${n} + d); }
    var D${n} = 0.0;
    for (var d = 0u; d < ${hs}u; d++) { D${n} = fma(g${n}[d], y${n}[d], D${n}); }
    let L${n} = lse[bh * Tq + i${n}];
    let jn${n} = min(select(Tk, min(i${n} + 1u, Tk), causal), u.c1);`;
  const queryPair = (n: string) =>
    `if (j < jn${n}) {
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < ${hs}u; d++) {
          s = fma(q${n}[d], kv[d], s);
          dp = fma(g${n}[d], vv[d], dp);
        }
        let ds = exp(s * sc - L${n}) * (dp - D${n});
        for (var d = 0u; d < ${hs}u; d++) { a${n}[d] = fma(ds, kv[d], a${n}[d]); }
      }`;
  const queryEnd = (n: string) =>
    `if (u.last == 0u) {
      for (var d = 0u; d < ${hs}u; d++) { put_st(sb${n} + d, bitcast<u32>(a${n}[d])); }
    } else {
      for (var d = 0u; d < ${hs}u; d++) { a${n}[d] = a${n}[d] * sc; }
      put_row(row(u.mdq[0], b, h, i${n}), &a${n});
    }`;
  // dV_j = sum_i P_ij dO_i; dK_j = scale * sum_i P_ij (dP_ij - D_i) q_i
  const keyRow = (n: string) =>
    `var k${n}: array<f32, ${hs}>;
    var v${n}: array<f32, ${hs}>;
    let ko${n} = row(u.mk[0], b, h, j${n});
    let vo${n} = row(u.mv[0], b, h, j${n});
    for (var d = 0u; d < ${hs}u; d++) { k${n}[d] = ld_k(ko${n} + d); }
    for (var d = 0u; d < ${hs}u; d++) { v${n}[d] = ld_v(vo${n} + d); }
    let ia${n} = max(select(0u, j${n}, causal), u.c0);`;
  const keyPair = (n: string) =>
    `if (i >= ia${n}) {
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < ${hs}u; d++) {
          s = fma(qv[d], k${n}[d], s);
          dp = fma(gv[d], v${n}[d], dp);
        }
        let p = exp(s * sc - L);
        let ds = p * (dp - D);
        for (var d = 0u; d < ${hs}u; d++) {
          c${n}[d] = fma(p, gv[d], c${n}[d]);
          a${n}[d] = fma(ds, qv[d], a${n}[d]);
        }
      }`;
  const keyEnd = (n: string) =>
    `if (u.last == 0u) {
      for (var d = 0u; d < ${hs}u; d++) { put_st(sb${n} + d, bitcast<u32>(a${n}[d])); put_st(sb${n} + ${hs}u + d, bitcast<u32>(c${n}[d])); }
    } else {
      for (var d = 0u; d < ${hs}u; d++) { a${n}[d] = a${n}[d] * sc; }
      put_row(row(u.mdk[0], b, h, j${n}), &a${n});
      put_row(row(u.mdv[0], b, h, j${n}), &c${n});
    }`;
  return `${ROW}${putRow(outL, hs)}
fn kernel(wg: vec3u, lid: vec3u, li: u32) {
  let nh = u.nh; let Tq = u.tq; let Tk = u.tk; let causal = u.causal == 1u;
  // invocations [0, nq) take query rows ${R === 2 ? "2p, 2p + 1" : "p"}; the rest key rows ${
    R === 2 ? "2p', 2p' + 1" : "p'"
  }
  let nq = (Tq + ${R - 1}u) / ${R}u;
  let p = wg.x * ${WG}u + li;
  if (p >= nq + (Tk + ${R - 1}u) / ${R}u) { return; }
  let bh = wg.y; let b = bh / nh; let h = bh % nh;
  let sc = u.sc;
  // st: between slices, each row's sums a (and c for key rows), 2 hs values a row
  let r0 = select(Tq + ${R}u * (p - nq), ${R}u * p, p < nq);
  let sb0 = (bh * (Tq + Tk) + r0) * ${2 * hs}u;
  var a0: array<f32, ${hs}>;
  var c0: array<f32, ${hs}>;
  ${rowTerms("0")}${
    second(`
  let two = select(r0 + 1u < Tq + Tk, r0 + 1u < Tq, p < nq); // a second row
  let sb1 = sb0 + ${2 * hs}u;
  var a1: array<f32, ${hs}>;
  var c1: array<f32, ${hs}>;
  if (two) {
    ${rowTerms("1")}
  }`)
  }
  if (p < nq) {
    let i0 = r0;
    ${queryRow("0")}${
    second(`
    let i1 = select(i0, i0 + 1u, two); // one row: the second repeats the first, unused
    ${queryRow("1")}`)
  }
    for (var j = u.c0; j < ${R === 2 ? "max(jn0, jn1)" : "jn0"}; j++) {
      let ko = row(u.mk[0], b, h, j);
      let vo = row(u.mv[0], b, h, j);
      var kv: array<f32, ${hs}>;
      var vv: array<f32, ${hs}>;
      for (var d = 0u; d < ${hs}u; d++) { kv[d] = ld_k(ko + d); }
      for (var d = 0u; d < ${hs}u; d++) { vv[d] = ld_v(vo + d); }
      ${queryPair("0")}${
    second(`
      if (two) {
        ${queryPair("1")}
      }`)
  }
    }
    ${queryEnd("0")}${
    second(`
    if (two) {
      ${queryEnd("1")}
    }`)
  }
  } else {
    let j0 = r0 - Tq;
    ${keyRow("0")}${
    second(`
    let j1 = select(j0, j0 + 1u, two);
    ${keyRow("1")}`)
  }
    let ie = min(Tq, u.c1);
    for (var i = ${R === 2 ? "min(ia0, ia1)" : "ia0"}; i < ie; i++) {
      let qo = row(u.mq[0], b, h, i);
      let go = row(u.my[0], b, h, i);
      var qv: array<f32, ${hs}>;
      var gv: array<f32, ${hs}>;
      var yv: array<f32, ${hs}>;
      for (var d = 0u; d < ${hs}u; d++) { qv[d] = ld_q(qo + d); }
      for (var d = 0u; d < ${hs}u; d++) { gv[d] = ld_g(go + d); }
      for (var d = 0u; d < ${hs}u; d++) { yv[d] = ld_y(go + d); }
      var D = 0.0;
      for (var d = 0u; d < ${hs}u; d++) { D = fma(gv[d], yv[d], D); }
      let L = lse[bh * Tq + i];
      ${keyPair("0")}${
    second(`
      if (two) {
        ${keyPair("1")}
      }`)
  }
    }
    ${keyEnd("0")}${
    second(`
    if (two) {
      ${keyEnd("1")}
    }`)
  }
  }
}
`;
}

/** The program of one pass; operands named as the kernels read them. */
function attentionProgram(
  rt: Runtime,
  kind: "fwd" | "bwd",
  ts: readonly Tensor[],
  hs: number,
  aligned: boolean,
) {
  const l = ts.map((t) => layoutOf(t.dt, rt));
  // operands whose rows start on quads of one-word elements are read in quads
  const quads: string[] = [];
  const read = (name: string, i: number): BindingSpec => {
    const vec4 = aligned && hs % 4 === 0 && hs <= UNROLL_MAX && vec4View(l[i]);
    if (vec4) quads.push(name);
    return { name, type: l[i], access: "read", vec4 };
  };
  const bindings: BindingSpec[] = kind === "fwd"
    ? [
      read("q", 0),
      read("k", 1),
      read("v", 2),
      { name: "out", type: l[3], access: "read_write" },
      { name: "lse", type: "f32", access: "read_write" },
      // f32 words through the f32 layout: windowed where the state passes one binding
      { name: "st", type: layoutOf(float32, rt), access: "read_write" },
    ]
    : [
      read("q", 0),
      read("k", 1),
      read("v", 2),
      read("y", 3),
      { name: "lse", type: "f32", access: "read" },
      read("g", 4),
      { name: "out", type: l[5], access: "read_write" },
      { name: "st", type: layoutOf(float32, rt), access: "read_write" },
    ];
  return program(
    rt,
    `attention_${kind}|${hs}`,
    {
      label: kind === "fwd" ? "attention" : "attention_bwd",
      bindings,
      uniforms: UNIFORMS,
      workgroupSize: WG,
      grid: "3d",
    },
    () => unrolled(kind === "fwd" ? forwardSource(l[3], hs) : backwardSource(l[5], hs), quads),
  );
}

/**
 * Slices [c0, c1) of a loop over `n` items whose iterations each run `perItem` loop iterations,
 * beside `fixed` ones, within `maxLoop` iterations per invocation: one slice unless the adapter
 * caps loops (`rt.maxLoopIterations`).
 */
function slices(n: number, maxLoop: number, perItem: number, fixed: number): [number, number][] {
  const per = Number.isFinite(maxLoop) ? Math.max(1, Math.floor((maxLoop - fixed) / perItem)) : n;
  const out: [number, number][] = [];
  for (let c0 = 0; c0 < n || out.length === 0; c0 += per) out.push([c0, Math.min(n, c0 + per)]);
  return out;
}

/** The uniforms of slice `n` of `all`. */
function slice(n: number, all: readonly [number, number][]) {
  return {
    c0: all[n][0],
    c1: all[n][1],
    first: n === 0 ? 1 : 0,
    last: n === all.length - 1 ? 1 : 0,
  };
}

/**
 * The element range rows of `maps` take for batch-heads bh0..bh1-1 (the grid's y): the
 * smallest and largest row start over those (b, h), plus T rows of `hs` elements.
 */
function rowsRange(
  g: Geometry,
  maps: readonly [RowMap, number][],
): (x0: number, x1: number, lo: Readonly<Box>, hi: Readonly<Box>) => [number, number] {
  return (_x0, _x1, lo, hi) => {
    let first = Infinity, last = -Infinity;
    for (const [m, T] of maps) {
      for (let bh = lo[1]; bh < hi[1]; bh++) {
        const at = m.off + Math.floor(bh / g.nh) * m.sb + (bh % g.nh) * m.sh;
        first = Math.min(first, at);
        last = Math.max(last, at + (T - 1) * m.st + g.hs);
      }
    }
    return [first, last];
  };
}

/**
 * The range of the state kept between slices (`st`: `perBh` f32 values for each batch-head)
 * that batch-heads bh0..bh1-1 (the grid's y) use; one element when there is a single slice
 * (no state). With it a state larger than one binding is bound window by window.
 */
function stateRange(
  nSlices: number,
  perBh: number,
): (x0: number, x1: number, lo: Readonly<Box>, hi: Readonly<Box>) => [number, number] {
  return (_x0, _x1, lo, hi) => nSlices > 1 ? [lo[1] * perBh, hi[1] * perBh] : [0, 1];
}

/** Whether rows of `hs` elements at these maps fill whole storage words of `dt`. */
function wordAligned(dt: DType, hs: number, maps: RowMap[]): boolean {
  const lanes = dt.lanesPerWord; // storage words, as on every adapter (copies need them too)
  return [hs, ...maps.flatMap((m) => [m.off, m.sb, m.sh, m.st])].every((v) => v % lanes === 0);
}

/**
 * The attention of `g` over operands `q`, `k`, `v` (the same tensor for a fused projection):
 * output of `outShape` and dtype `dt` (rows at `g.y`), with its backward pass, which writes
 * the gradients of the three operands into one buffer laid out as `gradMaps` say and hands
 * them back through `split`.
 */
function run(
  op: string,
  g: Geometry,
  ins: readonly [Tensor, Tensor, Tensor],
  dt: DType,
  outShape: readonly number[],
  grad: {
    inputs: readonly Tensor[];
    shape: readonly number[];
    maps: [RowMap, RowMap, RowMap];
    split: (dx: Tensor) => (Tensor | null)[];
  },
): Tensor {
  const rt = currentRuntime();
  const [q, k, v] = ins;
  const y = Tensor.empty(outShape, dt);
  if (y.size === 0) return y;
  const lse = Tensor.empty([g.B * g.nh * g.Tq], float32);
  // rows on quads: every operand's offset and strides are multiples of 4 elements
  const aligned = [g.q, g.k, g.v, g.y].every((m) =>
    [m.off, m.sb, m.sh, m.st].every((x) => x % 4 === 0)
  );
  const groups = (rows: number): [number, number, number] => [Math.ceil(rows / WG), g.B * g.nh, 1];
  // about 0.2 ns per multiply-add on a CPU adapter: q.k and p.v for each (query, key) pair
  const work = 0.2 * 2 * g.B * g.nh * g.Tq * g.Tk * g.hs * (g.causal ? 0.5 : 1);
  // Slices of the loop over keys, so that no invocation runs more loop iterations than the
  // adapter allows (llvmpipe stops them silently after 65,535: from a context of about 400 on);
  // between slices each query row keeps its running max, sum and output in \`st\` (f32), so the
  // result is the one pass's, bit for bit.
  const fwdSlices = slices(g.Tk, rt.maxLoopIterations, 6 * g.hs + 6, 8 * g.hs);
  const fst = Tensor.empty([fwdSlices.length > 1 ? g.B * g.nh * g.Tq * (g.hs + 2) : 1], float32);
  for (const [n, [c0, c1]] of fwdSlices.entries()) {
    attentionProgram(rt, "fwd", [q, k, v, y], g.hs, aligned).run({
      buffers: {
        q: q.buffer(op),
        k: k.buffer(op),
        v: v.buffer(op),
        out: y.buffer(op),
        lse: lse.buffer(op),
        st: fst.buffer(op),
      },
      uniforms: { ...uniforms(g), ...slice(n, fwdSlices) },
      groups: groups(Math.ceil(g.Tq / 2)), // two rows an invocation
      splitDim: 1,
      cost: (work * (c1 - c0)) / g.Tk,
      ranges: {
        q: rowsRange(g, [[g.q, g.Tq]]),
        k: rowsRange(g, [[g.k, g.Tk]]),
        v: rowsRange(g, [[g.v, g.Tk]]),
        out: rowsRange(g, [[g.y, g.Tq]]),
        st: stateRange(fwdSlices.length, g.Tq * (g.hs + 2)),
      },
    });
  }
  fst.dispose();
  const out = attach(y, op, [...grad.inputs], (gy) => {
    const dx = Tensor.empty(grad.shape, dt);
    const gl = gy.dt === dt ? gy : gy.cast(dt);
    const at = `${op} backward`;
    const [dq, dk, dv] = grad.maps;
    // slices of the loops over keys (dQ) and queries (dK, dV); the sums kept in \`st\` between
    const T = Math.max(g.Tq, g.Tk);
    const bwdSlices = slices(T, rt.maxLoopIterations, 8 * g.hs + 8, 16 * g.hs);
    const R = bwdRows(g.hs);
    const bst = Tensor.empty(
      [bwdSlices.length > 1 ? g.B * g.nh * (g.Tq + g.Tk) * 2 * g.hs : 1],
      float32,
    );
    for (const [n, [c0, c1]] of bwdSlices.entries()) {
      attentionProgram(rt, "bwd", [q, k, v, y, gl, dx], g.hs, aligned).run({
        buffers: {
          q: q.buffer(at),
          k: k.buffer(at),
          v: v.buffer(at),
          y: y.buffer(at),
          lse: lse.buffer(at),
          g: gl.buffer(at),
          out: dx.buffer(at),
          st: bst.buffer(at),
        },
        uniforms: { ...uniforms(g, dq, dk, dv), ...slice(n, bwdSlices) },
        // bwdRows(hs) rows an invocation
        groups: groups(Math.ceil(g.Tq / R) + Math.ceil(g.Tk / R)),
        splitDim: 1,
        // scores recomputed, dQ by query rows, dK and dV by key rows
        cost: (3 * work * (c1 - c0)) / T,
        ranges: {
          q: rowsRange(g, [[g.q, g.Tq]]),
          k: rowsRange(g, [[g.k, g.Tk]]),
          v: rowsRange(g, [[g.v, g.Tk]]),
          y: rowsRange(g, [[g.y, g.Tq]]),
          g: rowsRange(g, [[g.y, g.Tq]]),
          out: rowsRange(g, [[dq, g.Tq], [dk, g.Tk], [dv, g.Tk]]),
          st: stateRange(bwdSlices.length, (g.Tq + g.Tk) * 2 * g.hs),
        },
      });
    }
    bst.dispose();
    if (gl !== gy) gl.dispose();
    lse.dispose(); // the graph is walked once
    return grad.split(dx);
  });
  if (out.node === null) lse.dispose();
  return out;
}

function checkFloat(op: string, ts: Tensor[]): DType {
  const dt = ts[0].dt;
  if (!isFloat(dt) || dt.kind === "mcf" || ts.some((t) => t.dt !== dt)) {
    throw new DTypeError(
      `${op}(): operands must share one float dtype such as f32, bf16 or f16, got ${
        ts.map((t) => t.dtype).join(", ")
      }; cast them first`,
    );
  }
  return dt;
}

/**
 * `softmax(scale * q @ k^T [+ causal mask]) @ v` over the last two dimensions, as PyTorch's
 * `scaled_dot_product_attention` (without dropout or an explicit mask): q `(B, H, Tq, D)`,
 * k and v `(B, H, Tk, D)`, result `(B, H, Tq, D)` in the operands' dtype. One fused kernel
 * forward and one backward; the T x T probabilities are never stored. Under autocast the
 * operands are cast to the context's dtype first (attention is a lower-precision op).
 *
 * @example
 * ```ts
 * import { scaledDotProductAttention, tensor } from "../../mod.ts";
 * const q = tensor([[[[1, 0], [0, 1]]]]); // (1, 1, 2, 2)
 * const y = scaledDotProductAttention(q, q, tensor([[[[1, 2], [3, 4]]]]), { causal: true });
 * console.log(Array.from(await y.toArray()).map((x) => x.toFixed(3)));
 * // ["1.000", "2.000", "2.339", "3.339"]
 * ```
 */
export function scaledDotProductAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): Tensor {
  const op = "scaledDotProductAttention";
  for (const t of [q, k, v]) {
    if (!(t instanceof Tensor)) throw new ValueError(`${op}(): q, k and v must be tensors`);
  }
  if (
    q.ndim !== 4 || k.ndim !== 4 || v.ndim !== 4 ||
    [0, 1, 3].some((d) => q.shape[d] !== k.shape[d] || q.shape[d] !== v.shape[d]) ||
    k.shape[2] !== v.shape[2]
  ) {
    throw new ShapeError(
      `${op}(): expected q (B, H, Tq, D) and k, v (B, H, Tk, D), got q ${fmtShape(q.shape)}, ` +
        `k ${fmtShape(k.shape)}, v ${fmtShape(v.shape)}`,
    );
  }
  [q, k, v] = autocastInputs(ATTENTION_POLICY.attention, [q, k, v]);
  const dt = checkFloat(op, [q, k, v]);
  const [B, nh, Tq, hs] = q.shape, Tk = k.shape[2];
  checkHead(op, hs);
  if (opts.causal && Tq !== Tk) {
    throw new ShapeError(`${op}(): causal attention needs Tq == Tk, got ${Tq} and ${Tk}`);
  }
  const map = (T: number, off = 0): RowMap => ({ off, sb: nh * T * hs, sh: T * hs, st: hs });
  const g: Geometry = {
    B,
    nh,
    Tq,
    Tk,
    hs,
    causal: opts.causal ?? false,
    scale: opts.scale ?? 1 / Math.sqrt(hs),
    q: map(Tq),
    k: map(Tk),
    v: map(Tk),
    y: map(Tq),
  };
  const nq = B * nh * Tq * hs, nk = B * nh * Tk * hs;
  const maps: [RowMap, RowMap, RowMap] = [map(Tq), map(Tk, nq), map(Tk, nq + nk)];
  if (!wordAligned(dt, hs, [...maps, g.q])) {
    throw new ShapeError(
      `${op}(): head size ${hs} and sequence lengths must fill whole ${dt.name} storage words ` +
        `(multiples of ${dt.lanesPerWord}); pad the head size or use f32`,
    );
  }
  return run(op, g, [q, k, v], dt, [B, nh, Tq, hs], {
    inputs: [q, k, v],
    shape: [nq + 2 * nk],
    maps,
    split: (dx) => {
      const parts = [[q, 0, nq], [k, nq, nk], [v, nq + nk, nk]] as const;
      const res = parts.map(([t, off, n]) =>
        t.requiresGrad ? sliceFlat(dx, off, n, t.shape) : null
      );
      dx.dispose();
      return res;
    },
  });
}

/**
 * Causal self-attention straight from a fused projection: `qkv` of shape `(B, T, 3C)` holds
 * q, k and v side by side (as GPT-2's `c_attn` output), split into `nHead` heads of size
 * `C / nHead`; the result is `(B, T, C)` with the heads side by side again, ready for the
 * output projection. The same kernels as `scaledDotProductAttention`, reading the heads
 * through strides: no split, transpose or concatenation kernels around it.
 *
 * @example
 * ```ts
 * import { causalSelfAttention, tensor } from "../../mod.ts";
 * const qkv = tensor([[[1, 0, 1, 0, 1, 2], [0, 1, 0, 1, 3, 4]]]); // (1, 2, 3 * 2), one head
 * const y = causalSelfAttention(qkv, 1);
 * console.log(y.shape, Array.from(await y.toArray()).map((x) => x.toFixed(3)));
 * // [1, 2, 2] ["1.000", "2.000", "2.339", "3.339"]
 * ```
 */
export function causalSelfAttention(qkv: Tensor, nHead: number): Tensor {
  const op = "causalSelfAttention";
  if (!(qkv instanceof Tensor)) throw new ValueError(`${op}(): qkv must be a tensor`);
  if (qkv.ndim !== 3 || qkv.shape[2] % 3 !== 0) {
    throw new ShapeError(`${op}(): qkv must be (B, T, 3C), got ${fmtShape(qkv.shape)}`);
  }
  const [B, T, C3] = qkv.shape, C = C3 / 3;
  if (!Number.isInteger(nHead) || nHead < 1 || C % nHead !== 0) {
    throw new ValueError(`${op}(): nHead ${nHead} must be a positive divisor of C = ${C}`);
  }
  [qkv] = autocastInputs(ATTENTION_POLICY.attention, [qkv]);
  const dt = checkFloat(op, [qkv]);
  const hs = C / nHead;
  checkHead(op, hs);
  const at = (off: number, width: number): RowMap => ({
    off,
    sb: T * width,
    sh: hs,
    st: width,
  });
  const g: Geometry = {
    B,
    nh: nHead,
    Tq: T,
    Tk: T,
    hs,
    causal: true,
    scale: 1 / Math.sqrt(hs),
    q: at(0, C3),
    k: at(C, C3),
    v: at(2 * C, C3),
    y: at(0, C),
  };
  const maps: [RowMap, RowMap, RowMap] = [g.q, g.k, g.v];
  if (!wordAligned(dt, hs, [...maps, g.y])) {
    throw new ShapeError(
      `${op}(): head size ${hs} must fill whole ${dt.name} storage words (a multiple of ${dt.lanesPerWord}); use the unfused attention or f32`,
    );
  }
  return run(op, g, [qkv, qkv, qkv], dt, [B, T, C], {
    inputs: [qkv],
    shape: qkv.shape,
    maps,
    split: (dx) => [dx],
  });
}

/** Whether `causalSelfAttention` runs for this head size and dtype (storage words filled). */
export function fusedAttentionFits(dt: DType, C: number, nHead: number): boolean {
  const hs = C / nHead;
  return Number.isInteger(hs) && hs <= MAX_HEAD_SIZE &&
    wordAligned(dt, hs, [{ off: C, sb: 0, sh: hs, st: 3 * C }]);
}

function checkHead(op: string, hs: number): void {
  if (hs < 1 || hs > MAX_HEAD_SIZE) {
    throw new ShapeError(`${op}(): head size ${hs} must be between 1 and ${MAX_HEAD_SIZE}`);
  }
}

/** Elements [off, off + n) of a flat tensor as a new tensor of `shape` (a buffer copy). */
function sliceFlat(x: Tensor, off: number, n: number, shape: readonly number[]): Tensor {
  const rt = currentRuntime();
  const out = Tensor.empty(shape, x.dt);
  const lanes = x.dt.lanesPerWord;
  rt.copy(
    x.buffer("attention backward"),
    (off / lanes) * 4,
    out.buffer("attention backward"),
    0,
    storageBytes(x.dt, n),
  );
  return out;
}
