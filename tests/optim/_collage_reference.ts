// Host emulation of Collage's kernels (optim/collage.ts): each f32 operation of the kernel
// in its order (Math.fround), each fl() a rounding of the f32 value to bf16 (RNE).
import { dtype } from "../../mod.ts";

const f = Math.fround;
const F = new Float32Array(1);
const U = new Uint32Array(F.buffer);

/** fl(x): the f32 value `x` rounded to bf16 (RNE), NaN quieted, as f32. */
export function fl(x: number): number {
  F[0] = x;
  const b = U[0];
  if ((b & 0x7f800000) === 0x7f800000) {
    U[0] = (b & 0x7fffff) !== 0 ? 0x7fc00000 : b;
    return F[0];
  }
  U[0] = (((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) << 16) >>> 0;
  return F[0];
}

/** The bf16 bits of a bf16 value held in a number. */
export function bits(x: number): number {
  F[0] = x;
  return U[0] >>> 16;
}

/** The value of bf16 bits. */
export function fromBits(b: number): number {
  U[0] = (b << 16) >>> 0;
  return F[0];
}

/** fl() agrees with the bf16 codec of dtypes/ on `xs`. */
export function flMatchesCodec(xs: Float32Array): boolean {
  const codec = dtype("bf16");
  const ref = codec.decode(codec.encode(xs));
  return xs.every((x, i) =>
    Object.is(fl(x), ref[i]) || (Number.isNaN(ref[i]) && Number.isNaN(fl(x)))
  );
}

/** TwoSum's first error term inside Grow, then Grow((x, dx), y) -> [hi, lo]. */
export function grow(x: number, dx: number, y: number): [number, number] {
  const s = fl(f(x + y));
  const bb = fl(f(s - x));
  const e = fl(f(fl(f(x - fl(f(s - bb)))) + fl(f(y - bb))));
  const d = fl(f(dx + e));
  const hi = fl(f(s + d));
  return [hi, fl(f(d - fl(f(hi - s))))];
}

/** Mul((v, dv), (bh, bl)) -> [hi, lo], the intended form. */
export function mul(v: number, dv: number, bh: number, bl: number): [number, number] {
  const pv = f(v * bh);
  const p = fl(pv);
  const err = fl(f(pv - p));
  const d = fl(f(fl(f(fl(f(dv * bh)) + fl(f(v * bl)))) + err));
  const hi = fl(f(p + d));
  return [hi, fl(f(d - fl(f(hi - p))))];
}

/** Hyperparameters of one Collage AdamW step, as the kernel receives them (f32). */
export interface CollageHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** The update number (1-based), for the bias corrections. */
  step: number;
  maximize?: boolean;
}

/** One element's Collage state. */
export interface CollageElem {
  x: number;
  dx: number;
  m: number;
  v: number;
  dv: number;
}

/**
 * One Collage AdamW step of one element. `uAlt` lets a caller replace the f32 intended
 * update (to model a division or sqrt one ulp off); returns the new state and u.
 */
export function collageAdamW(
  s: CollageElem,
  grad: number,
  h: CollageHyper,
  variant: "light" | "plus",
  uAlt?: (u: number) => number,
): CollageElem & { u: number } {
  const w1 = f(1 - h.beta1), b2 = f(h.beta2), c2 = f(1 - h.beta2), eps = f(h.eps);
  const bh = fl(b2), bl = fl(f(b2 - bh));
  const lrwd = f(h.lr * h.weightDecay);
  const stepSize = f(h.lr / (1 - h.beta1 ** h.step));
  const bc2Sqrt = f(Math.sqrt(1 - h.beta2 ** h.step));
  const g = h.maximize ? -grad : grad;
  const m = fl(f(s.m + f(f(w1 * f(g - s.m)))));
  const g2 = f(f(c2 * g) * g);
  let v: number, dv: number;
  if (variant === "light") {
    v = fl(f(fl(f(s.v * b2)) + g2));
    dv = s.dv;
  } else {
    const [mh, ml] = mul(s.v, s.dv, bh, bl);
    [v, dv] = grow(mh, ml, fl(g2));
  }
  const denom = f(f(f(Math.sqrt(v)) / bc2Sqrt) + eps);
  let u = f(f(-f(stepSize * f(m / denom))) - f(lrwd * s.x));
  if (uAlt) u = uAlt(u);
  const [x, dx] = grow(s.x, s.dx, fl(u));
  return { x, dx, m, v, dv, u };
}

/** The f32 numbers within `k` ulps of `u` (to model WGSL's division and sqrt). */
export function near(u: number, k: number): number[] {
  const out: number[] = [];
  F[0] = u;
  const b = U[0];
  for (let d = -k; d <= k; d++) {
    U[0] = (b + d) >>> 0;
    out.push(F[0]);
  }
  return out;
}
