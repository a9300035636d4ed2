// Host references of the optimizers: PyTorch's AdamW and SGD in f64, and emulations of the
// pure-bf16 kernels (compute in f32 with Math.fround in the kernel's order, round each
// stored value once to bf16 RNE with the dtype's own codec).
import { dtype, type Optimizer } from "../../mod.ts";

const BF16 = dtype("bf16");
const f = Math.fround;

import { rng } from "../tensor/_reference.ts";
export { rng };

/** `n` values uniform in [lo, hi), as f32. */
export function uniform(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * r());
}

/** `n` standard normal values times `std` (Box-Muller), as f32. */
export function normal(n: number, seed: number, std = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => {
    const u1 = 1 - r(), u2 = r();
    return std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  });
}

/** The values rounded to bf16 (RNE), as f32. */
export function bf16(x: ArrayLike<number>): Float32Array {
  return BF16.decode(BF16.encode(Float32Array.from(x)));
}

/** One unit in the last place of |x| in a format with `mant` mantissa bits (normals). */
export function ulp(x: number, mant: number, minExp: number): number {
  const a = Math.abs(x);
  const e = a === 0 ? minExp : Math.max(minExp, Math.floor(Math.log2(a)));
  return 2 ** (e - mant);
}

/** f32 ulp of |x|. */
export const ulp32 = (x: number): number => ulp(x, 23, -126);
/** bf16 ulp of |x|. */
export const ulpBf16 = (x: number): number => ulp(x, 7, -126);

/** AdamW hyperparameters of a reference group. */
export interface AdamWRef {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  amsgrad?: boolean;
  maximize?: boolean;
}

/** Per-parameter state of a reference optimizer. */
export interface RefState {
  p: Float64Array;
  m: Float64Array;
  v: Float64Array;
  vmax: Float64Array;
  step: number;
  /** Largest magnitude seen per element (for tolerances): of p and of the updates, of g, of g^2. */
  scaleP: Float64Array;
  scaleM: Float64Array;
  scaleV: Float64Array;
}

/** A fresh reference state for initial values `p0`. */
export function refState(p0: ArrayLike<number>): RefState {
  const n = p0.length;
  return {
    p: Float64Array.from(p0),
    m: new Float64Array(n),
    v: new Float64Array(n),
    vmax: new Float64Array(n),
    step: 0,
    scaleP: Float64Array.from(p0, Math.abs),
    scaleM: new Float64Array(n),
    scaleV: new Float64Array(n),
  };
}

/** PyTorch's AdamW (torch.optim.AdamW, single-tensor) in f64. */
export function adamwF64(s: RefState, grad: ArrayLike<number>, o: AdamWRef): void {
  const [b1, b2] = o.betas;
  s.step++;
  const bc1 = 1 - b1 ** s.step, bc2 = 1 - b2 ** s.step;
  for (let i = 0; i < s.p.length; i++) {
    const g = o.maximize ? -grad[i] : grad[i];
    let p = s.p[i] * (1 - o.lr * o.weightDecay);
    s.m[i] = s.m[i] + (1 - b1) * (g - s.m[i]);
    s.v[i] = b2 * s.v[i] + (1 - b2) * g * g;
    s.vmax[i] = Math.max(s.vmax[i], s.v[i]);
    const v = o.amsgrad ? s.vmax[i] : s.v[i];
    const u = (o.lr / bc1) * s.m[i] / (Math.sqrt(v) / Math.sqrt(bc2) + o.eps);
    p -= u;
    s.scaleP[i] = Math.max(s.scaleP[i], Math.abs(p), Math.abs(u) * 4, o.lr);
    s.scaleM[i] = Math.max(s.scaleM[i], Math.abs(g), Math.abs(s.m[i]));
    s.scaleV[i] = Math.max(s.scaleV[i], g * g, s.v[i]);
    s.p[i] = p;
  }
}

/** The pure-bf16 AdamW kernel emulated: f32 arithmetic in the kernel's order, each stored value rounded once to bf16. */
export function adamwBf16(s: RefState, grad: ArrayLike<number>, o: AdamWRef): void {
  const [b1, b2] = o.betas;
  s.step++;
  const bc1 = 1 - b1 ** s.step, bc2 = 1 - b2 ** s.step;
  const decay = f(1 - o.lr * o.weightDecay), w1 = f(1 - b1), b2f = f(b2), c2 = f(1 - b2);
  const stepSize = f(o.lr / bc1), bc2Sqrt = f(Math.sqrt(bc2)), eps = f(o.eps);
  const n = s.p.length;
  const g = Float64Array.from(grad, (x) => (o.maximize ? -x : x));
  const m = bf16(Array.from({ length: n }, (_, i) => f(s.m[i] + f(w1 * f(g[i] - s.m[i])))));
  const v = bf16(Array.from({ length: n }, (_, i) => f(f(s.v[i] * b2f) + f(f(c2 * g[i]) * g[i]))));
  const vmax = bf16(Array.from({ length: n }, (_, i) => Math.max(s.vmax[i], v[i])));
  const p = bf16(Array.from({ length: n }, (_, i) => {
    const vv = o.amsgrad ? vmax[i] : v[i];
    const denom = f(f(f(Math.sqrt(vv)) / bc2Sqrt) + eps);
    return f(f(s.p[i] * decay) - f(stepSize * f(m[i] / denom)));
  }));
  s.m.set(m);
  s.v.set(v);
  s.vmax.set(vmax);
  s.p.set(p);
}

/** SGD hyperparameters of a reference group. */
export interface SGDRef {
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  nesterov: boolean;
  maximize?: boolean;
}

/** PyTorch's SGD (torch.optim.SGD, single-tensor) in f64; `s.m` is the momentum buffer. */
export function sgdF64(s: RefState, grad: ArrayLike<number>, o: SGDRef): void {
  s.step++;
  for (let i = 0; i < s.p.length; i++) {
    let d = o.maximize ? -grad[i] : grad[i];
    if (o.weightDecay !== 0) d += o.weightDecay * s.p[i];
    if (o.momentum !== 0) {
      s.m[i] = s.step === 1 ? d : o.momentum * s.m[i] + (1 - o.dampening) * d;
      d = o.nesterov ? d + o.momentum * s.m[i] : s.m[i];
    }
    const p = s.p[i] - o.lr * d;
    s.scaleP[i] = Math.max(s.scaleP[i], Math.abs(p), Math.abs(o.lr * d) * 4);
    s.scaleM[i] = Math.max(s.scaleM[i], Math.abs(s.m[i]), Math.abs(grad[i]), Math.abs(d));
    s.p[i] = p;
  }
}

/** The pure-bf16 SGD kernel emulated (f32 in the kernel's order, bf16 stores). */
export function sgdBf16(s: RefState, grad: ArrayLike<number>, o: SGDRef): void {
  s.step++;
  const n = s.p.length;
  const lr = f(o.lr), mom = f(o.momentum), damp1 = f(1 - o.dampening), wd = f(o.weightDecay);
  const d = Float64Array.from({ length: n }, (_, i) => {
    const g = o.maximize ? -grad[i] : grad[i];
    return o.weightDecay !== 0 ? f(g + f(wd * s.p[i])) : g;
  });
  if (o.momentum !== 0) {
    const b = bf16(
      Array.from(
        { length: n },
        (_, i) => s.step === 1 ? d[i] : f(f(mom * s.m[i]) + f(damp1 * d[i])),
      ),
    );
    s.m.set(b);
    for (let i = 0; i < n; i++) d[i] = o.nesterov ? f(d[i] + f(mom * b[i])) : b[i];
  }
  s.p.set(bf16(Array.from({ length: n }, (_, i) => f(s.p[i] - f(lr * d[i])))));
}

/**
 * Asserts |got - ref| <= k * ulp(scale) elementwise, with scale the larger of |ref| and the
 * given per-element scale; returns the largest error in those ulps.
 */
export function closeUlps(
  what: string,
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  k: number,
  ulpOf: (x: number) => number,
  scale?: ArrayLike<number>,
): number {
  let worst = 0;
  if (got.length !== ref.length) {
    throw new Error(`${what}: ${got.length} values, expected ${ref.length}`);
  }
  for (let i = 0; i < ref.length; i++) {
    const s = Math.max(Math.abs(ref[i]), scale ? scale[i] : 0);
    const e = Math.abs(got[i] - ref[i]) / ulpOf(s);
    if (!(e <= k)) {
      throw new Error(
        `${what}[${i}]: got ${got[i]}, expected ${ref[i]} (${
          e.toFixed(2)
        } ulps of ${s}, allowed ${k})`,
      );
    }
    worst = Math.max(worst, e);
  }
  return worst;
}

/**
 * An optimizer's state dict as raw codes, per parameter and state in order: each state
 * tensor's codes (the copy disposed after), and with `numbers` each other value as [n] (a
 * step count; a null state as [0]), else those left out.
 */
export async function stateCodes(opt: Optimizer, numbers: boolean): Promise<number[][]> {
  // every tensor's read asked for first, so that they share one wait
  const out: (number[] | Promise<number[]>)[] = [];
  for (const s of Object.values(opt.stateDict().state)) {
    for (const v of Object.values(s)) {
      if (v !== null && typeof v === "object") {
        out.push(v.codes().then((c) => Array.from(c)).finally(() => v.dispose()));
      } else if (numbers) out.push([Number(v)]);
    }
  }
  return await Promise.all(out);
}
