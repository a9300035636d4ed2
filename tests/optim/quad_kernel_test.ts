// The optimizers' quad kernels (optim/_update_kernel.ts, issue 20 item 2): a tensor of whole
// groups (8 elements for f32 buffers, 16 for bf16 or f16 in u32 words, 32 with an 8-bit
// buffer) is updated a group per step of an invocation, each buffer read and written as
// 16-byte quads of words. They must store the bits the per-element kernel stores (the
// stochastic roundings drawing at the same element), skip as it does under a GradScaler, keep
// the dispatch count, and bind windows of a tensor larger than one binding; NaN (with payloads),
// Inf, overflowing and subnormal gradients included.
import assert from "node:assert/strict";
import {
  AdamW,
  type DType,
  dtype,
  fromCodes,
  GradScaler,
  Optimizer,
  type ParamGroup,
  precisionStrategy,
  SGD,
  type Tensor,
  tensor,
  zeros,
} from "../../mod.ts";
import { getRuntime, setRunLayout } from "../../gpu/mod.ts";
import type { UpdateRule } from "../../optim/mod.ts";
import {
  quadGroup,
  quadKernel,
  resolveProgram,
  setQuadKernels,
  updateChunk,
  updateRuns,
} from "../../optim/_update_kernel.ts";
import { normal, stateCodes, uniform } from "./_reference.ts";
import { withBindingLimit } from "../_binding_limit.ts";

type Make = (ps: Tensor[]) => Optimizer;

/** A code array of `d`'s lane width holding `codes`. */
function codeArray(d: DType, codes: number[]) {
  return d.laneBits <= 8
    ? Uint8Array.from(codes)
    : d.laneBits <= 16
    ? Uint16Array.from(codes)
    : Uint32Array.from(codes);
}

/**
 * A gradient of dtype `dt` from `g`; with `special`, every 97th element from the 5th is NaN,
 * +-Inf, +-1e30 (overflows g^2), 1e-40 or -0 in turn, and for bf16 and f32 also a NaN with a
 * payload (quiet and signalling, both signs), so the kernels meet them in every lane.
 */
function gradient(g: Float32Array, dt: string, special: boolean): Tensor {
  const d = dtype(dt);
  const codes = d.encode(g);
  if (special) {
    const all = [
      ...d.encode(Float32Array.from([NaN, Infinity, -Infinity, 1e30, -1e30, 1e-40, -0])),
      ...(dt === "bf16"
        ? [0x7f81, 0xffff, 0x7fbf]
        : dt === "f32"
        ? [0x7f800001, 0xffffffff, 0x7fbfffff]
        : []),
    ];
    for (let k = 5, j = 0; k < codes.length; k += 97, j++) codes[k] = all[j % all.length];
  }
  return fromCodes(codes, [g.length], d);
}

/**
 * Five steps of `make`'s optimizer on parameters of `sizes` in dtype `dt`: three plain, then
 * two under a GradScaler (device step counts), the first of them skipped (an Inf gradient).
 * Returns every stored code and the update dispatches.
 */
async function run(
  make: Make,
  sizes: number[],
  dt: string,
  quad: boolean,
  scaler: boolean,
  layout: "auto" | "strided" | "runs" = "auto",
) {
  const rt = await getRuntime();
  const was = setQuadKernels(quad), layoutWas = setRunLayout(layout);
  try {
    const ps = sizes.map((n, i) => tensor(normal(n, 7 + i, 0.5), { dtype: dt }));
    const opt = make(ps);
    const sc = scaler ? new GradScaler({ initScale: 4 }) : null;
    const d0 = rt.counters.dispatches;
    for (let t = 0; t < 5; t++) {
      ps.forEach((p, i) => {
        p.grad?.dispose();
        const g = uniform(p.size, 40 * t + i, -2, 2);
        if (t >= 3 && scaler) g.forEach((v, k) => (g[k] = v * 4));
        if (t === 3 && i === 0 && scaler) g[p.size - 1] = Infinity;
        p.grad = gradient(g, dt, t === 1);
      });
      if (t < 3 || sc === null) opt.step();
      else {
        sc.unscale(opt);
        sc.step(opt);
        sc.update();
      }
    }
    const dispatches = rt.counters.dispatches - d0;
    const out: number[][] = [];
    const [params, states] = await Promise.all([
      Promise.all(ps.map(async (p) => Array.from(await p.codes()))),
      stateCodes(opt, true),
    ]);
    out.push(...params, ...states);
    opt.dispose();
    sc?.dispose();
    ps.forEach((p) => (p.zeroGrad(), p.dispose()));
    return { out, dispatches };
  } finally {
    setQuadKernels(was);
    setRunLayout(layoutWas);
  }
}

const CASES: { name: string; dt: string; make: Make; noScaler?: boolean }[] = [
  { name: "AdamW fp32", dt: "f32", make: (ps) => new AdamW(ps, { lr: 1e-2, weightDecay: 0.1 }) },
  {
    name: "AdamW bf16 (amsgrad, maximize)",
    dt: "bf16",
    make: (ps) => new AdamW(ps, { lr: 1e-2, amsgrad: true, maximize: true }),
  },
  {
    name: "AdamW bf16-sr",
    dt: "bf16",
    make: (ps) => new AdamW(ps, { lr: 1e-2, precision: "bf16-sr", seed: 5 }),
  },
  {
    name: "AdamW collage-light",
    dt: "bf16",
    make: (ps) => new AdamW(ps, { lr: 1e-2, weightDecay: 0.1, precision: "collage-light" }),
  },
  {
    name: "AdamW collage-plus",
    dt: "bf16",
    make: (ps) => new AdamW(ps, { lr: 1e-2, weightDecay: 0.1, precision: "collage-plus" }),
  },
  {
    name: "SGD collage-light (momentum)",
    dt: "bf16",
    make: (ps) => new SGD(ps, { lr: 1e-2, momentum: 0.9, precision: "collage-light" }),
  },
  {
    name: "SGD collage-plus (Nesterov)",
    dt: "bf16",
    make: (ps) =>
      new SGD(ps, { lr: 1e-2, momentum: 0.9, nesterov: true, precision: "collage-plus" }),
  },
  {
    name: "AdamW e5m2 (8-bit words)",
    dt: "e5m2",
    make: (ps) => new AdamW(ps, { lr: 1e-2, precision: "e5m2" }),
  },
  {
    name: "AdamW msamp-o2 (scaled states)",
    dt: "f16",
    make: (ps) => new AdamW(ps, { lr: 1e-2, precision: "msamp-o2" }),
    noScaler: true, // a GradScaler takes f32 gradients only
  },
  {
    name: "AdamW f16",
    dt: "f16",
    make: (ps) => new AdamW(ps, { lr: 1e-2, precision: "f16" }),
    noScaler: true,
  },
];

/**
 * Asserts the same codes, or NaNs of opposite signs where they differ: WGSL leaves a NaN
 * result's sign open, and two compilations of an update may pick different instructions.
 */
function sameButNanSigns(
  dt: string,
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  what: string,
  than: string,
): void {
  const d = dtype(dt);
  const sign = 2 ** (d.laneBits - 1);
  const isNan = (code: number) => Number.isNaN(d.decode(codeArray(d, [code]))[0]);
  const i = Array.from(got).findIndex((c, i) =>
    c !== want[i] && !(c === (want[i] ^ sign) && isNan(c))
  );
  assert.equal(
    i,
    -1,
    `${what} 0x${got[i]?.toString(16)} at element ${i}, ${than} 0x${want[i]?.toString(16)}`,
  );
}

// whole groups (chunks and a part, one group), and sizes that are not: odd, a multiple of 8
// but not of 16, a multiple of 4, below one group
const SIZES = [16384 + 96, 32, 1003, 24, 12, 6];

for (const c of CASES) {
  Deno.test(`quad kernels: ${c.name} stores the per-element kernel's bits, same dispatches`, async () => {
    const element = await run(c.make, SIZES, c.dt, false, !c.noScaler);
    const quad = await run(c.make, SIZES, c.dt, true, !c.noScaler);
    assert.equal(quad.out.length, element.out.length);
    // on llvmpipe a NaN's sign follows the instructions the compiler picked (a - b as
    // a + (-b)), which differ between the two kernels
    quad.out.forEach((codes, k) =>
      sameButNanSigns(c.dt, codes, element.out[k], `buffer ${k}: quad`, "element kernel")
    );
    assert.equal(quad.dispatches, element.dispatches);
  });
}

Deno.test("quad kernels: which tensors take them, and the group of each strategy", async () => {
  const rt = await getRuntime();
  const rule = new AdamW([zeros([2])]).rule;
  const flags = { amsgrad: false, maximize: false };
  const plain = { device: false, diag: null };
  const f16Words = rt.info.shaderF16 ? null : 16; // native f16 buffers take the element kernel
  for (
    const [name, group] of [
      ["fp32", 8],
      ["bf16", 16],
      ["bf16-sr", 16],
      ["collage-light", 16],
      ["collage-plus", 16],
      ["e5m2", 32],
      ["f16", f16Words],
    ] as const
  ) {
    const prog = resolveProgram(rule, precisionStrategy(name), flags);
    assert.equal(quadKernel(rt, prog, plain, 1_000_000), group !== null, name);
    if (group === null) continue;
    assert.equal(quadGroup(rt, prog), group, name);
    assert.equal(quadKernel(rt, prog, { device: true, diag: null }, 2 * group), true, name);
    assert.equal(quadKernel(rt, prog, plain, group + 2), false, `${name}: not whole groups`);
    assert.equal(
      quadKernel(rt, prog, { device: false, diag: precisionStrategy(name).computeDtype }, group),
      false,
      `${name}: diagnostics`,
    );
  }
});

// windows of 64 KB: 16384 f32 or 32768 bf16 elements, a third of the large tensor in bf16
for (const c of CASES.filter((c) => c.name.includes("collage") || c.name === "AdamW fp32")) {
  Deno.test(`quad kernels: ${c.name} over windows gives the bits of whole bindings`, async () => {
    const sizes = [98_304, 64];
    const whole = await run(c.make, sizes, c.dt, true, true);
    const windowed = await withBindingLimit(65_536, () => run(c.make, sizes, c.dt, true, true));
    assert.ok(windowed.dispatches > whole.dispatches, "windows split the dispatches");
    // windows past a buffer's start run the kernel compiled to read window bases (gpu/
    // runtime.ts, WINDOWS_CONST): another compilation, so a NaN's sign may differ
    windowed.out.forEach((codes, k) =>
      sameButNanSigns(c.dt, codes, whole.out[k], `buffer ${k}: windows`, "whole bindings")
    );
  });
}

/**
 * A rule whose update rounds an arbitrary f32 bit pattern to the parameter's dtype: the high
 * half from the parameter's decoded bits, the low half from the gradient's code xor 0xff (so
 * that low halves which are NaN codes in bf16, 0x7fff and 0xffff, are reachable).
 */
const ROUND_BITS: UpdateRule<ParamGroup> = {
  name: "roundbits",
  label: "RoundBits",
  flags: () => ({}),
  states: () => [],
  hyper: {},
  perStep: () => ({}),
  body: () =>
    `  let lo = (bitcast<u32>(x.grad) >> 16u) ^ 0xffu;
  y.param = q_param(bitcast<f32>((bitcast<u32>(x.param) & 0xffff0000u) | lo));
  y.intended = 0.0;`,
  savesStep: false,
  validate: () => {},
};

class RoundBits extends Optimizer<ParamGroup, Record<never, never>> {
  constructor(ps: Tensor[]) {
    super(ROUND_BITS, ps, { lr: 0 }, "bf16");
  }
}

/** bf16 RNE of the f32 bits b (NaN: the quiet NaN of its sign), computed on the bits. */
function rneBf16(b: number): number {
  if ((b & 0x7fffffff) >>> 0 > 0x7f800000) return ((b >>> 16) & 0x8000) | 0x7fc0;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

Deno.test("quad kernels: bf16's q_ rounds every high half with low halves 0, 1, 0x7fff, 0x8000, 0x8001, 0xffff as RNE on the bits", async () => {
  await getRuntime();
  const n = 65536;
  const highs = Uint16Array.from({ length: n }, (_, i) => i);
  // gradient codes (non-NaN) whose code xor 0xff is each low half
  const lows = [0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff, 0x1234];
  for (const quad of [true, false]) {
    const was = setQuadKernels(quad);
    try {
      const ps = lows.map(() => fromCodes(highs, [n], "bf16"));
      ps.forEach((
        p,
        k,
      ) => (p.grad = fromCodes(new Uint16Array(n).fill(lows[k] ^ 0xff), [n], "bf16")));
      const opt = new RoundBits(ps);
      opt.step();
      for (let k = 0; k < lows.length; k++) {
        const got = await ps[k].codes();
        for (let i = 0; i < n; i++) {
          const hi = (i & 0x7fff) > 0x7f80 ? ((i & 0x8000) | 0x7fc0) : i; // decoded NaN codes are quiet
          const want = rneBf16(((hi << 16) | lows[k]) >>> 0);
          if (got[i] !== want) {
            assert.fail(
              `${quad ? "quad" : "element"} kernel: bits 0x${
                (((hi << 16) | lows[k]) >>> 0).toString(16)
              } ` +
                `rounded to 0x${got[i].toString(16)}, want 0x${want.toString(16)}`,
            );
          }
        }
      }
      opt.dispose();
      ps.forEach((p) => (p.zeroGrad(), p.dispose()));
    } finally {
      setQuadKernels(was);
    }
  }
});

// the run layout (CPU adapters, from 16 workgroups of runs): each invocation walks its own run
// of 128 groups; 33,000 elements: two runs' workgroups of f32 (16,384 elements each) and a part,
// one of bf16 (32,768) and a part; windows of 256 KB over 393,216 elements. One case per kind
// of kernel (each is another compilation: seconds on a fresh machine)
const RUN_CASES = [
  "AdamW fp32",
  "AdamW bf16-sr",
  "AdamW collage-light",
  "SGD collage-plus (Nesterov)",
  "AdamW e5m2 (8-bit words)",
];
for (const c of CASES.filter((c) => RUN_CASES.includes(c.name))) {
  Deno.test(`quad kernels in runs: ${c.name} stores the bits of a group an invocation`, async () => {
    const sizes = [33_000 - (33_000 % 32), 32, 1003];
    const strided = await run(c.make, sizes, c.dt, true, !c.noScaler, "strided");
    const runs = await run(c.make, sizes, c.dt, true, !c.noScaler, "runs");
    runs.out.forEach((codes, k) =>
      sameButNanSigns(c.dt, codes, strided.out[k], `buffer ${k}: runs`, "strided")
    );
    assert.equal(runs.dispatches, strided.dispatches);
    if (!c.name.includes("collage") && c.name !== "AdamW fp32") return;
    const big = [393_216, 64];
    const whole = await run(c.make, big, c.dt, true, true, "strided");
    const windowed = await withBindingLimit(
      262_144,
      () => run(c.make, big, c.dt, true, true, "runs"),
    );
    assert.ok(windowed.dispatches > whole.dispatches, "windows split the dispatches");
    windowed.out.forEach((codes, k) =>
      sameButNanSigns(c.dt, codes, whole.out[k], `buffer ${k}: runs in windows`, "strided")
    );
  });
}

Deno.test("quad kernels in runs: a CPU adapter takes them from 16 workgroups of runs", async () => {
  const rt = await getRuntime();
  const rule = new AdamW([zeros([2])]).rule;
  const flags = { amsgrad: false, maximize: false };
  for (const [name, chunk] of [["fp32", 16_384], ["bf16", 32_768], ["e5m2", 65_536]] as const) {
    const prog = resolveProgram(rule, precisionStrategy(name), flags);
    assert.equal(updateChunk(rt, prog, true, true), chunk, name);
    const cpu = rt.info.isFallbackAdapter;
    assert.equal(updateRuns(rt, prog, 16 * chunk), cpu, `${name}: 16 workgroups`);
    assert.equal(updateRuns(rt, prog, 16 * chunk - 32), false, `${name}: fewer`);
  }
});
