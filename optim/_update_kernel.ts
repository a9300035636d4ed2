/**
 * The update kernel of the optimizers: one program of the builder (`gpu/program.ts`) per
 * update rule, precision strategy, flags and mode, run once per parameter tensor, IN PLACE:
 * it binds the parameter, its gradient and the parameter's own state tensors, so a step
 * copies nothing (no staging buffer) and a tensor larger than one storage binding is updated
 * window by window (the builder splits the dispatch into pieces whose windows fit).
 *
 * Each workgroup covers `chunk = WG * E * ITEMS` consecutive elements of the tensor; an
 * invocation handles E consecutive elements (E = the largest lanes-per-word among the bound
 * dtypes: 1 for fp32, 2 for bf16) and writes whole words of every buffer, never a word past
 * the tensor's end (DESIGN.md: a thread owns whole words). The kernel decodes each buffer
 * with its dtype's decoder, runs the update body in f32 and encodes each stored value once
 * (`q_<name>` rounds to the stored dtype).
 *
 * The hyperparameters are uniforms packed by name (`u.h<name>`, aliased to `<name>` in the
 * body); the per-step values are uniforms (`u.s<name>`) computed on the host in f64 from the
 * parameter's step count, or, in device mode, computed in the kernel in f32 from the
 * device step count of the parameter (`steps[u.pidx] + 1`), both from the rule's one
 * `perStep` definition (`rule.ts`).
 *
 * The quad kernel (`KernelMode.quad`, for tensors of whole groups, `quadKernel`): an
 * invocation updates G = 8 x (the largest lanes-per-word) consecutive elements a step (8 for
 * f32 buffers, 16 with bf16 or packed f16, 32 with 8-bit formats), every buffer read and
 * written as G / (4 x its lanes) 16-byte quads of words (two for the most packed buffer:
 * on lavapipe 0.85x the CPU time of one for AdamW fp32, 0.93x for Collage light; four gain
 * nothing more): one-word buffers through their vec4 view (`lq_`, `st4_`), packed ones bound
 * as raw u32 words (`get4_`, `put4_`), each lane decoded and encoded with the dtype's codec
 * as the per-element kernel's `ld_`/`st_` do. The same update per element (stochastic
 * roundings drawing at the same element index), so the same bits, but for the sign of a NaN
 * result, which WGSL leaves open and llvmpipe takes from the instructions its compiler picked
 * for each kernel (`a - b` as `a + (-b)`): NaN gradients give NaNs of either sign
 * (tests/optim/quad_kernel_test.ts compares codes with that exception).
 *
 * Modes (`KernelMode`): `device` binds the group's device step counts and a skip flag (a
 * GradScaler's `found_inf`): when the flag is set no invocation writes anything, so a
 * skipped step leaves parameters and states bit-identical. `diag` adds the diagnostics
 * (`_diagnostics.ts`).
 *
 * Reference: NVIDIA apex `multi_tensor_apply`; PyTorch `_foreach` and capturable optimizers.
 *
 * @module
 */

import { type DType, finfo, uint32, wgslCodec } from "../dtypes/mod.ts";
import { ValueError } from "../errors.ts";
import {
  layoutOf,
  type Program,
  program,
  RUN_QUADS,
  RUN_WG,
  runLayout,
  type Runtime,
} from "../gpu/mod.ts";
import { diagAccountSource, diagReduceSource } from "./_diagnostics.ts";
import { WG } from "./_inplace.ts";
import type { PrecisionStrategy } from "./precision.ts";
import { type StateSpec, type UpdateRule, wgslStepMath } from "./rule.ts";

/** Element groups per invocation in one workgroup's chunk. */
const ITEMS = 4;
/** Groups (`quadGroup`) per invocation in one workgroup's chunk of a quad kernel. */
const QUAD_ITEMS = 4;
/** Words of the most packed buffer one step of a quad kernel updates (two 16-byte quads). */
const QUAD_WORDS = 8;

/** A bound buffer of an update program. */
export interface BufferSpec extends StateSpec {
  /** Whether the kernel writes it. */
  readonly access: "read" | "read_write";
}

/** An update rule resolved for one strategy and one set of flags: what the kernel binds and runs. */
export interface UpdateProgram {
  /** The rule's name, for the pipeline label. */
  readonly label: string;
  /** A cache key of everything the WGSL depends on (rule, strategy, flags). */
  readonly key: string;
  /** Bound buffers: `param` and `grad` first, then the states. */
  readonly buffers: readonly BufferSpec[];
  /** The states (the buffers after `param` and `grad`). */
  readonly states: readonly StateSpec[];
  /** Names of the f32 hyperparameters. */
  readonly hyper: readonly string[];
  /** Names of the per-step values. */
  readonly perStep: readonly string[];
  /** WGSL statements assigning `y.<name>` from `x.<name>` (see `UpdateBodyContext`). */
  readonly body: string;
  /** WGSL expressions of the per-step values from `t: u32` (hyperparameters in scope). */
  readonly deviceStep: readonly string[];
  /** WGSL of the effective update of the stored value, for the diagnostics. */
  readonly effective: string;
  /** Buffers whose `q_<name>` rounds stochastically (the strategy's `stochastic`). */
  readonly stochastic: readonly string[];
  /**
   * States stored with a per-tensor scale (the strategy's `scaled`), with the largest finite
   * value of their dtype; state k's scale and amax are words 2k and 2k + 1 of the
   * parameter's `scales` buffer.
   */
  readonly scaled: readonly { readonly name: string; readonly fmax: number }[];
}

/** A strategy's states for rule `name` besides the rule's own (Collage's low parts). */
export function extraStates(s: PrecisionStrategy, name: string): StateSpec[] {
  return s.extraStates.filter((e) => !e.optimizers || e.optimizers.includes(name));
}

/**
 * Checks that strategy `s` can run rule `rule`: a strategy that replaces the update bodies
 * of some optimizers, or keeps extra states for this one, must have a body for it (else its
 * states would be allocated and ignored). A ValueError at construction.
 */
export function checkStrategy<G>(rule: UpdateRule<G>, s: PrecisionStrategy): void {
  if (s.updates[rule.name]) return;
  const bodies = Object.keys(s.updates);
  const extra = extraStates(s, rule.name);
  if (bodies.length > 0 || extra.length > 0) {
    throw new ValueError(
      `${rule.label}: precision '${s.name}' has no update body for ${rule.label} (it has ` +
        `bodies for ${bodies.join(", ") || "no optimizer"}${
          extra.length ? ` and keeps ${extra.map((e) => e.name).join(", ")}` : ""
        }), and the plain f32 body would ignore its arithmetic; use ${
          bodies.map((b) => `'${b}'`).join(" or ") || "another optimizer"
        } with this precision, or a precision without replacement bodies`,
    );
  }
}

/** The update program of `rule` under strategy `s` for `flags`. */
export function resolveProgram<G>(
  rule: UpdateRule<G>,
  s: PrecisionStrategy,
  flags: Readonly<Record<string, boolean>>,
): UpdateProgram {
  checkStrategy(rule, s);
  const states: StateSpec[] = [
    ...rule.states(flags).map((name) => ({ name, dtype: s.stateDtype(name) })),
    ...extraStates(s, rule.name).map((e) => ({ name: e.name, dtype: e.dtype })),
  ];
  const buffers: BufferSpec[] = [
    { name: "param", dtype: s.param, access: "read_write" },
    { name: "grad", dtype: s.grad, access: "read" },
    ...states.map((b) => ({ ...b, access: "read_write" as const })),
  ];
  const custom = s.updates[rule.name];
  const stochastic = s.stochastic.filter((n) => buffers.some((b) => b.name === n));
  for (const n of stochastic) {
    const d = buffers.find((b) => b.name === n)!.dtype;
    const c = d.constants;
    if (d.kind !== "float" || c === null || c.e !== 8 || c.m >= 23) {
      throw new ValueError(
        `${rule.label}: precision '${s.name}' rounds '${n}' stochastically, which needs a ` +
          `float format with f32's 8-bit exponent and fewer mantissa bits (bf16, e8m5), but ` +
          `'${n}' is stored in ${d.name}; store it in such a format or round it to nearest`,
      );
    }
  }
  const scaled = s.scaled.filter((n) => states.some((b) => b.name === n)).map((n) => {
    const d = states.find((b) => b.name === n)!.dtype;
    if (d.kind !== "float") {
      throw new ValueError(
        `${rule.label}: precision '${s.name}' scales state '${n}' per tensor, which needs a ` +
          `float format, but it is stored in ${d.name}`,
      );
    }
    return { name: n, fmax: finfo(d).max };
  });
  const hyper = Object.keys(rule.hyper);
  const names = Object.fromEntries(hyper.map((h) => [h, h]));
  const device = rule.perStep(names, wgslStepMath());
  const flagKey = Object.entries(flags).map(([k, v]) => `${k}=${v}`).join(",");
  return {
    label: rule.name,
    key: `${rule.name}#${ruleKey(rule)}|${s.name}|${flagKey}`,
    buffers,
    states,
    hyper,
    perStep: Object.keys(device),
    body: custom ? custom({ flags, buffers }) : rule.body(flags),
    deviceStep: Object.values(device),
    effective: s.effective ?? "y.param - x.param",
    stochastic,
    scaled,
  };
}

let nextRule = 1;
const ruleKeys = new WeakMap<object, number>();

/** A number unique to each rule object (two rules may share a name). */
function ruleKey(rule: object): number {
  let k = ruleKeys.get(rule);
  if (k === undefined) ruleKeys.set(rule, k = nextRule++);
  return k;
}

/**
 * How a dispatch of an update program runs, besides the program itself.
 *
 * - `device`: the group keeps its step counts on the device and a skip flag is bound (a
 *   GradScaler's `found_inf`): the per-step values are computed in the kernel from the
 *   device count, and when the flag is non-zero the kernel writes nothing, so parameters,
 *   states and step counts stay as they were (PyTorch's skipped `optimizer.step()`).
 * - `diag`: the kernel also accumulates the diagnostics; the dtype is the one gradients are
 *   checked against for underflow and overflow. null: off.
 */
export interface KernelMode {
  /** Device step counts and a skip flag are bound. */
  readonly device: boolean;
  /** The dtype of the gradient under/overflow counts when diagnostics are on, else null. */
  readonly diag: DType | null;
  /**
   * The first pass of a program with scaled states: the body runs, nothing is stored, and
   * the amax of each scaled state's new values is accumulated into its `scales` word.
   */
  readonly amax?: boolean;
  /**
   * The quad kernel (`quadKernel` says when it applies): each invocation updates a group of
   * `quadGroup` consecutive elements a step, every buffer read and written as 16-byte quads
   * of words; the same update per element, so the same bits.
   */
  readonly quad?: boolean;
  /**
   * With `quad`: the run layout (`runLayout`, CPU adapters): each invocation walks a run of
   * consecutive groups (RUN_QUADS quads of words of the most packed buffer), in workgroups of
   * RUN_WG invocations; the same update per element, so the same bits.
   */
  readonly runs?: boolean;
}

/** What the host asks of a program's layouts at each dispatch, worked out once per runtime. */
interface LayoutFacts {
  readonly rt: Runtime;
  /** The largest lanes-per-word of the buffers. */
  readonly lanes: number;
  /** Whether every buffer is bound as u32 words (no native f16). */
  readonly words: boolean;
}

const layoutFacts = new WeakMap<UpdateProgram, LayoutFacts>();

function factsOf(rt: Runtime, prog: UpdateProgram): LayoutFacts {
  let f = layoutFacts.get(prog);
  if (f === undefined || f.rt !== rt) {
    const ls = prog.buffers.map((b) => layoutOf(b.dtype, rt));
    f = {
      rt,
      lanes: Math.max(1, ...ls.map((l) => l.lanes)),
      words: ls.every((l) => l.elem === "u32"),
    };
    layoutFacts.set(prog, f);
  }
  return f;
}

/** Elements per invocation: the largest lanes-per-word of the program's buffers. */
function elemsPerInvocation(rt: Runtime, prog: UpdateProgram): number {
  return factsOf(rt, prog).lanes;
}

/** Whether the quad kernels are on (`setQuadKernels`). */
let quadKernels = true;

/**
 * Turns the quad kernels off (every tensor takes the per-element kernel) or back on, and
 * returns the previous setting: for tests that compare the two, and for A/B timings.
 * @internal
 */
export function setQuadKernels(on: boolean): boolean {
  const was = quadKernels;
  quadKernels = on;
  return was;
}

/**
 * Elements of one step of a quad kernel: 8 words of the most packed buffer (8 for f32
 * buffers, 16 when one is bf16 or f16 in u32 words, 32 with an 8-bit one).
 */
export function quadGroup(rt: Runtime, prog: UpdateProgram): number {
  return QUAD_WORDS * elemsPerInvocation(rt, prog);
}

/**
 * Elements one workgroup of the update kernel covers (`quad`: of the quad kernel; `runs`: of
 * its run layout, RUN_WG runs of RUN_QUADS quads of the most packed buffer's words).
 */
export function updateChunk(rt: Runtime, prog: UpdateProgram, quad = false, runs = false): number {
  if (quad && runs) return RUN_WG * RUN_QUADS * 4 * elemsPerInvocation(rt, prog);
  return quad ? WG * quadGroup(rt, prog) * QUAD_ITEMS : WG * elemsPerInvocation(rt, prog) * ITEMS;
}

/**
 * Whether a tensor of `n` elements that takes the quad kernel takes its run layout
 * (`runLayout`: on CPU adapters from 16 workgroups; a workgroup reads at most 4 bytes an
 * element of each buffer).
 */
export function updateRuns(rt: Runtime, prog: UpdateProgram, n: number): boolean {
  const chunk = updateChunk(rt, prog, true, true);
  return runLayout(rt, n / chunk, chunk * 4);
}

/**
 * Whether a tensor of `n` elements can take the quad kernel of `prog` in `mode`: every
 * buffer in u32 words (not native f16), whole groups (`quadGroup`: a multiple of 8
 * elements for f32 buffers, of 16 for bf16), and no diagnostics (their per-invocation sums
 * would run in another order). Stochastic rounding draws at the same element index.
 */
export function quadKernel(rt: Runtime, prog: UpdateProgram, mode: KernelMode, n: number): boolean {
  return quadKernels && mode.diag === null && n % quadGroup(rt, prog) === 0 &&
    factsOf(rt, prog).words;
}

/**
 * The `ranges` of an update dispatch over a tensor of `n` elements (`chunk` elements a
 * workgroup): elements of each buffer, or, in the quad kernel, words of the buffers bound
 * as raw u32 words (whole groups: the element range divided by the lanes per word).
 */
export function updateRanges(
  rt: Runtime,
  prog: UpdateProgram,
  quad: boolean,
  n: number,
  chunk: number,
): Record<string, (g0: number, g1: number) => [number, number]> {
  const out: Record<string, (g0: number, g1: number) => [number, number]> = {};
  for (const b of prog.buffers) {
    const L = quad ? layoutOf(b.dtype, rt).lanes : 1;
    out[b.name] = (g0, g1) => [g0 * chunk / L, Math.min(n, g1 * chunk) / L];
  }
  return out;
}

/** The u32 layout a packed buffer of a quad kernel is bound through (its raw words). */
function wordLayout(rt: Runtime) {
  return layoutOf(uint32, rt);
}

/**
 * `q_<name>` of a bf16 buffer rounding to nearest: `ulp_dec_bf16(ulp_enc_bf16_rne(v))` in
 * one step, the same bits (a NaN gives the quiet NaN of its sign; otherwise the RNE
 * rounding of the bits with the low half cleared, which the decoder would return as it is:
 * the rounded code is never a NaN) and one NaN test instead of two.
 */
const Q_BF16 = (name: string) =>
  `fn q_${name}(v: f32) -> f32 {
  let b = bitcast<u32>(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return bitcast<f32>((b & 0x80000000u) | 0x7fc00000u); }
  return bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u);
}
`;

/**
 * `fn q_<name>(v) -> f32`: v rounded to the dtype `<name>` is stored in, and its chunks.
 * With `stream` (the buffer's number among the stochastic ones) the rounding is stochastic:
 * `ulp_sr` adds random bits below the stored mantissa (from `ulp_rand(u.rkey ^ stream,
 * element)`) and truncates, which lands on a value of the format (8-bit exponent), then the
 * format's own encoder stores it exactly.
 */
function quantizer(
  name: string,
  d: DType,
  stream: number | null = null,
): { fn: string; chunks: readonly string[] } {
  const c = wgslCodec(d);
  if (stream === null && d.name === "bf16") return { fn: Q_BF16(name), chunks: c.chunks };
  const v = stream === null
    ? "v"
    : `ulp_sr(v, ulp_rand(u.rkey ^ ${stream}u, ulp_elem), ${23 - d.constants!.m}u)`;
  return {
    fn: `fn q_${name}(v: f32) -> f32 { return ${c.decode}(${c.encode}(${v}, 0u)); }\n`,
    chunks: c.chunks,
  };
}

/**
 * `fn q_<name>(v) -> f32` of a state with a per-tensor scale: in the amax pass it records
 * |v| and returns v; in the update pass it returns v rounded at the new scale (exact
 * power-of-two scaling: the stored code is q(v * s), the value code / s).
 */
function scaledQuantizer(name: string, d: DType, k: number, amaxPass: boolean) {
  const c = wgslCodec(d);
  return {
    fn: amaxPass
      ? `fn q_${name}(v: f32) -> f32 { sc_am${k} = ulp_max(sc_am${k}, abs(v)); return v; }\n`
      : `fn q_${name}(v: f32) -> f32 { return ${c.decode}(${c.encode}(v * sc_new${k}, 0u)) / sc_new${k}; }\n`,
    chunks: c.chunks,
  };
}

/**
 * WGSL of MS-AMP's per-tensor scale from an amax, `2^floor(log2(fmax / amax))`, computed
 * exactly from the binary exponents and fractions (no log2 rounding), clamped to f32's
 * normal range; 1 when amax is 0 or not finite (`ScalingMeta.compute_scaling_factor(amax,
 * 1, fmax, 0)`).
 */
const WGSL_POW2_SCALE = `fn ulp_pow2scale(amax: f32, fmax: f32) -> f32 {
  if (!(amax > 0.0) || (bitcast<u32>(amax) & 0x7f800000u) == 0x7f800000u) { return 1.0; }
  let a = frexp(amax);
  let f = frexp(fmax);
  let e = f.exp - a.exp - select(0, 1, a.fract > f.fract);
  return ldexp(1.0, clamp(e, -126, 127));
}
`;

/**
 * The program that commits the scales after an update with scaled states: per state the
 * new scale from the amax of the pass, and the amax reset (nothing when the skip flag is set).
 */
export function scaleCommitKernel(rt: Runtime, prog: UpdateProgram, device: boolean): Program {
  const key = `optim|scaleCommit|${prog.scaled.map((s) => s.fmax).join(",")}|${device}`;
  return program(rt, key, {
    label: "commitScales",
    bindings: [
      { name: "scales", type: "atomic<u32>", access: "read_write" },
      ...(device ? [{ name: "finf", type: "u32" as const, access: "read" as const }] : []),
    ],
    uniforms: [{ name: "one", type: "f32" }],
    workgroupSize: 1,
  }, () => {
    const body = prog.scaled.map((s, k) =>
      `    atomicStore(&scales[${
        2 * k
      }u], bitcast<u32>(ulp_pow2scale(bitcast<f32>(atomicLoad(&scales[${2 * k + 1}u])), ${
        wgslF32(s.fmax)
      })));\n    atomicStore(&scales[${2 * k + 1}u], 0u);\n`
    ).join("");
    return `${WGSL_POW2_SCALE}fn kernel(wg: u32, lid: vec3u, li: u32) {
  if (${device ? "finf[0] == 0u" : "true"}) {
${body}  }
}
`;
  });
}

/** A WGSL f32 literal holding exactly fround(v). */
function wgslF32(v: number): string {
  return `bitcast<f32>(${new Uint32Array(new Float32Array([v]).buffer)[0]}u)`;
}

/**
 * WGSL of stochastic rounding to 23 - drop mantissa bits: the top drop bits of the random
 * word r added below the kept mantissa of the f32 magnitude, then truncated (Inf and NaN
 * unchanged; a carry out of the largest finite binade gives Inf, never reaches the sign).
 * Rounds |v| up with probability (|v| - down) / (up - down): E = v.
 */
const WGSL_SR = `var<private> ulp_elem: u32;
fn ulp_sr(v: f32, r: u32, drop: u32) -> f32 {
  let b = bitcast<u32>(v);
  if ((b & 0x7f800000u) == 0x7f800000u) { return v; }
  let mask = (1u << drop) - 1u;
  return bitcast<f32>((b + (r >> (32u - drop))) & ~mask);
}
`;

/** The compiled update kernel of `prog` in `mode` on the runtime (built once, cached). */
export function updateKernel(rt: Runtime, prog: UpdateProgram, mode: KernelMode): Program {
  const layouts = prog.buffers.map((b) => layoutOf(b.dtype, rt));
  const quad = mode.quad === true, runs = quad && mode.runs === true;
  const E = elemsPerInvocation(rt, prog);
  const chunk = updateChunk(rt, prog, quad, runs);
  const bindings = [
    // quad kernel: one-word buffers through their vec4 view, packed ones as raw u32 words
    // (`get4_`/`put4_`): a bf16/fp8 buffer bound through the u32 layout, which the builder
    // allows because it does not check a buffer's dtype against the layout it is bound with
    ...prog.buffers.map((b, k) => ({
      name: b.name,
      type: quad && layouts[k].lanes > 1 ? wordLayout(rt) : layouts[k],
      access: b.access,
      vec4: quad,
    })),
    ...(mode.device
      ? [
        { name: "steps", type: "u32" as const, access: "read" as const },
        { name: "finf", type: "u32" as const, access: "read" as const },
      ]
      : []),
    ...(mode.diag
      ? [
        { name: "partials", type: "f32" as const, access: "read_write" as const },
        { name: "counters", type: "atomic<u32>" as const, access: "read_write" as const },
      ]
      : []),
    ...(prog.scaled.length > 0
      ? [{ name: "scales", type: "atomic<u32>" as const, access: "read_write" as const }]
      : []),
  ];
  const uniforms = [
    { name: "n", type: "u32" as const },
    { name: "pidx", type: "u32" as const },
    { name: "pbase", type: "u32" as const },
    { name: "one", type: "f32" as const },
    ...prog.hyper.map((h) => ({ name: `h${h}`, type: "f32" as const })),
    ...(mode.device ? [] : prog.perStep.map((s) => ({ name: `s${s}`, type: "f32" as const }))),
    ...(prog.stochastic.length > 0 ? [{ name: "rkey", type: "u32" as const }] : []),
  ];
  const amaxPass = mode.amax === true;
  const key = `optim|update|${prog.key}|${mode.device}|${
    mode.diag?.name ?? ""
  }|${amaxPass}|${quad}|${runs}`;
  return program(rt, key, {
    label: prog.label,
    bindings,
    uniforms,
    workgroupSize: runs ? RUN_WG : WG,
  }, () => {
    const chunks: (readonly string[])[] = [];
    let quant = prog.stochastic.length > 0 ? WGSL_SR : "", fields = "", loadArgs = "", stores = "";
    // quad kernel: G elements a step; each buffer's G / (4 * lanes) quads of words as one
    // load each (`l_<name><t>` decoded f32 values, `w_<name><t>` packed words), element j's
    // value from its lane, and the new values stored as whole quads
    const G = quadGroup(rt, prog);
    let quadLoads = "", quadStores = "";
    const quadArgs = Array.from({ length: G }, () => "");
    prog.buffers.forEach((b, k) => {
      const stream = prog.stochastic.indexOf(b.name);
      const sk = prog.scaled.findIndex((e) => e.name === b.name);
      const q = sk >= 0
        ? scaledQuantizer(b.name, b.dtype, sk, amaxPass)
        : quantizer(b.name, b.dtype, stream < 0 ? null : stream);
      chunks.push(q.chunks);
      quant += q.fn;
      fields += `  ${b.name}: f32,\n`;
      loadArgs += sk >= 0 ? `ld_${b.name}(i) * sc_inv${sk}, ` : `ld_${b.name}(i), `;
      const L = layouts[k].lanes, bits = layouts[k].laneBits;
      const mask = `${(2 ** bits - 1) >>> 0}u`;
      const codec = wgslCodec(b.dtype);
      const inv = sk >= 0 ? ` * sc_inv${sk}` : "";
      for (let t = 0; t < G / (4 * L); t++) {
        quadLoads += L === 1
          ? `      let l_${b.name}${t} = lq_${b.name}(s / 4u + ${t}u);\n`
          : `      let w_${b.name}${t} = get4_${b.name}(s / ${4 * L}u + ${t}u);\n`;
      }
      for (let j = 0; j < G; j++) {
        if (L === 1) {
          quadArgs[j] += `l_${b.name}${j >> 2}.${"xyzw"[j & 3]}${inv}, `;
          continue;
        }
        const w = Math.floor(j / L), c = j % L;
        const word = `w_${b.name}${w >> 2}.${"xyzw"[w & 3]}`;
        const code = c === 0 ? `(${word} & ${mask})` : `((${word} >> ${c * bits}u) & ${mask})`;
        quadArgs[j] += `${codec.decode}${code}${inv}, `;
      }
      if (b.access !== "read_write" || amaxPass) return;
      const scale = sk >= 0 ? ` * sc_new${sk}` : "";
      for (let t = 0; t < G / (4 * L); t++) {
        if (L === 1) {
          quadStores += `      st4_${b.name}(s / 4u + ${t}u, vec4<f32>(${
            [0, 1, 2, 3].map((c) => `r${4 * t + c}.${b.name}${scale}`).join(", ")
          }), vec4<u32>(0u));\n`;
          continue;
        }
        // each word's lanes encoded as the per-element kernel's st_ packs them
        const words = [0, 1, 2, 3].map((i) =>
          Array.from({ length: L }, (_, c) => {
            const e = `(${codec.encode}(r${(4 * t + i) * L + c}.${b.name}${scale}, 0u) & ${mask})`;
            return c === 0 ? e : `(${e} << ${c * bits}u)`;
          }).join(" | ")
        );
        quadStores += `      put4_${b.name}(s / ${4 * L}u + ${t}u, vec4<u32>(\n        ${
          words.join(",\n        ")
        }));\n`;
      }
      for (let w = 0; w < E / L; w++) {
        const vals = Array.from(
          { length: 4 },
          (_, j) => (j < L ? `r${w * L + j}.${b.name}${scale}` : "0.0"),
        );
        const st = `st_${b.name}(s / ${L}u + ${w}u, vec4<f32>(${vals.join(", ")}), vec4<u32>(0u));`;
        stores += w === 0 ? `      ${st}\n` : `      if (s + ${w * L}u < e1) { ${st} }\n`;
      }
    });
    const hyperAliases = prog.hyper.map((h) => `  let ${h} = u.h${h};\n`).join("");
    const psFields = prog.perStep.map((s) => `  ${s}: f32,\n`).join("");
    const psAliases = prog.perStep.map((s) => `  let ${s} = ps.${s};\n`).join("");
    const perStep = mode.device
      ? `fn ulp_powu(b: f32, t: u32) -> f32 {
  var r = 1.0;
  var x = b;
  var k = t;
  loop {
    if (k == 0u) { break; }
    if ((k & 1u) == 1u) { r = r * x; }
    x = x * x;
    k = k >> 1u;
  }
  return r;
}
fn perStep() -> Ps {
  let t = steps[u.pidx] + 1u;
${hyperAliases}  return Ps(${[...prog.deviceStep, "0.0"].join(", ")});
}
`
      : `fn perStep() -> Ps { return Ps(${
        [...prog.perStep.map((s) => `u.s${s}`), "0.0"].join(", ")
      }); }\n`;
    let diag = "";
    // scaled states: the old scale's inverse (both passes), the new scale (update pass), the
    // amax of the values written (amax pass); words 2k, 2k + 1 of `scales`
    let scaleVars = "", scaleInit = "", scaleEnd = "";
    if (prog.scaled.length > 0) {
      quant += WGSL_POW2_SCALE;
      prog.scaled.forEach((e, k) => {
        scaleVars += `var<private> sc_inv${k}: f32;\nvar<private> sc_new${k}: f32;\n` +
          `var<private> sc_am${k}: f32;\n`;
        scaleInit += `  sc_inv${k} = 1.0 / bitcast<f32>(atomicLoad(&scales[${2 * k}u]));\n` +
          (amaxPass
            ? ""
            : `  sc_new${k} = ulp_pow2scale(bitcast<f32>(atomicLoad(&scales[${2 * k + 1}u])), ${
              wgslF32(e.fmax)
            });\n`);
        if (amaxPass) {
          scaleEnd += `    atomicMax(&scales[${2 * k + 1}u], bitcast<u32>(sc_am${k}));\n`;
        }
      });
    }
    if (mode.diag && !amaxPass) {
      const q = quantizer("diagcast", mode.diag);
      chunks.push(q.chunks);
      diag = diagAccountSource(q.fn, prog.effective);
    }
    const acct = (j: number) => (mode.diag && !amaxPass ? ` account(x${j}, r${j});` : "");
    // the element index the stochastic roundings draw their bits at
    const elem = (j: number) => prog.stochastic.length > 0 ? `      ulp_elem = s + ${j}u;\n` : "";
    let lanes = "";
    for (let j = 0; j < E; j++) {
      lanes += j === 0
        ? `      let x0 = load(s);\n${elem(0)}      let r0 = update(x0, ps);${acct(0)}\n`
        : `      var r${j}: St;\n      if (s + ${j}u < e1) { let x${j} = load(s + ${j}u);${
          elem(j)
        } r${j} = update(x${j}, ps);${acct(j)} }\n`;
    }
    const guard = mode.device ? "finf[0] == 0u" : "true";
    // the loop over an invocation's elements: E consecutive ones a step, or a group, strided
    // by the workgroup or, in runs, the invocation's own run of chunk / RUN_WG elements
    const run = chunk / RUN_WG;
    const head = runs
      ? `    for (var s = e0 + li * ${run}u; s < min(e1, e0 + (li + 1u) * ${run}u); s = s + ${G}u) {`
      : `    for (var s = e0 + li * ${G}u; s < e1; s = s + ${WG * G}u) {`;
    const loop = quad
      ? `${head}
${quadLoads}${
        quadArgs.map((a, j) => `${elem(j)}      let r${j} = update(St(${a}0.0), ps);\n`).join("")
      }${quadStores}    }
`
      : `    for (var s = e0 + li * ${E}u; s < e1; s = s + ${WG * E}u) {
${lanes}${stores}    }
`;
    const source = `${quant}${scaleVars}fn ulp_nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
struct St {
${fields}  intended: f32,
}
struct Ps {
${psFields}  pad: f32,
}
fn load(i: u32) -> St { return St(${loadArgs}0.0); }
fn update(x: St, ps: Ps) -> St {
${hyperAliases}${psAliases}  var y = x;
${prog.body}
  return y;
}
${perStep}${diag}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let e0 = wg * ${chunk}u;
  let e1 = min(u.n, e0 + ${chunk}u);
${scaleInit}  if (${guard}) {
    let ps = perStep();
${loop}${scaleEnd}  }
${mode.diag && !amaxPass ? diagReduceSource() : ""}}
`;
    return { source, chunks };
  });
}
