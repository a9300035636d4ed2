/**
 * Collage (Yu et al., "Collage: Light-Weight Low-Precision Strategy for LLM Training",
 * ICML 2024): AdamW on bf16 storage with multi-component floats (MCF). A weight is kept as
 * an unevaluated sum hi + lo of two bf16 numbers; the updates that bf16 rounding would lose
 * (`1.0 + 1e-4 == 1.0` in bf16) accumulate in lo and carry into hi.
 *
 * fl(x): compute in f32, round once to bf16 (RNE). The primitives (DESIGN.md section 4):
 *
 * ```
 * TwoSum(a, b):   s = fl(a+b); bb = fl(s-a); e = fl(fl(a - fl(s-bb)) + fl(b-bb))
 * Grow((x,dx), y): s, e = TwoSum(x, y); d = fl(dx + e); x' = fl(s+d); dx' = fl(d - fl(x'-s))
 * Mul((v,dv), (bh,bl)): p = fl(v*bh); err = fl(v*bh - p)   (v*bh is exact in f32)
 *                       d = fl(fl(fl(dv*bh) + fl(v*bl)) + err); v' = fl(p+d); dv' = fl(d - fl(v'-p))
 * ```
 *
 * Grow takes its first error term from TwoSum, not Fast2Sum (`fl(y - fl(s-x))`), because
 * |y| may exceed |x| (zero-initialised biases, v in its first steps); where |x| >= |y| both are
 * exact and give the same bits (DESIGN.md's test vectors). Mul is the intended form: the
 * authors' code scales v in place before computing err, which decays v by about bh * beta2.
 *
 * One AdamW step per element (gradient g in bf16; maximize negates it):
 *
 * ```
 * m = fl(m + (1-beta1) (g - m))                  // plain bf16 in both variants
 * light: v = fl(fl(v*beta2) + (1-beta2) g g)
 * plus:  (v,dv) = Grow(Mul((v,dv), (bf16(beta2), bf16(beta2 - bf16(beta2)))), fl((1-beta2) g g))
 * u = fl(-stepSize * m / (sqrt(v)/sqrt(bc2) + eps) - lr*wd*x)    (x, v: the hi parts)
 * (x, dx) = Grow((x, dx), u)
 * ```
 *
 * Inside each fl(...) the f32 operations run left to right as written ((1-beta2) g g is
 * `(c2 * g) * g`), each rounded to f32, so a host emulation can reproduce every bit; only
 * division and sqrt may differ from a correctly rounded host result (WGSL allows it).
 *
 * stepSize = lr / bc1 and bc2Sqrt = sqrt(bc2) (bias corrections) come from the host, or are
 * computed in the kernel for groups whose step counts live on the device (`_update_kernel.ts`).
 *
 * Every f32 product that feeds a sum is multiplied by the uniform `one` first, so that a
 * compiler that contracts `a*b + c` into a fused multiply-add computes the same bits as
 * the host emulation; every rounding to bf16 is integer bit arithmetic (`q_*`), which the
 * compiler cannot reassociate across, so the error terms survive (DESIGN.md's pitfall:
 * `b - ((a+b) - a)` in plain f32 was folded to 0). The tests check both on the adapter.
 * The fl() that never round (five per Grow, one per Mul) are left out (`grow`: exact for
 * every pair of finite bf16 operands, tests/optim/_collage_exact.ts); the f32 terms between
 * the kept ones are kept apart by `one` where a value is used twice. `y` (an expression) is
 * computed once.
 *
 * @module
 */

import type { UpdateBody } from "./rule.ts";

/**
 * WGSL of Grow((x, dx), y) into `<tag>_hi`, `<tag>_lo`; fl is `q`. Local names get `tag`.
 *
 * Five of Grow's ten fl() are left out because they never round: TwoSum's `fl(s - bb)`,
 * `fl(x - ...)`, `fl(y - bb)` and their sum `e`, and the outer fl of `lo`, are exact for every
 * pair of finite bf16 operands (2Sum's and Fast2Sum's error terms; checked over all 2^32
 * pairs of bf16 codes with f32 arithmetic and RNE to bf16, DESIGN.md section 4), so `e` and
 * `lo` have the bits the full form gives and each costs one f32 operation instead of a
 * rounding (the rounding was most of Collage's update on CPU adapters). `fl(hi - s)` stays:
 * it rounds when |d| > |s|. A NaN stays a NaN (later fl()s quiet it; its sign is the hardware's). The
 * product by `u.one` keeps `bb`'s two uses apart, so that no compiler cancels them.
 */
function grow(q: string, x: string, dx: string, y: string, tag: string): string {
  return `  let ${tag}_y = ${y};
  let ${tag}_s = ${q}(${x} + ${tag}_y);
  let ${tag}_bb = ${q}(${tag}_s - ${x});
  let ${tag}_e = (${x} - (${tag}_s - ${tag}_bb) * u.one) + (${tag}_y - ${tag}_bb);
  let ${tag}_d = ${q}(${dx} + ${tag}_e);
  let ${tag}_hi = ${q}(${tag}_s + ${tag}_d);
  let ${tag}_lo = ${tag}_d - ${q}(${tag}_hi - ${tag}_s);
`;
}

/**
 * WGSL of Mul((v, dv), (bh, bl)) into `<tag>_hi`, `<tag>_lo` (the outer fl of `lo` left out,
 * exact as in `grow`; `err`'s stays: it rounds when the product's error is below bf16's
 * smallest subnormal).
 */
function mul(q: string, v: string, dv: string, bh: string, bl: string, tag: string): string {
  return `  let ${tag}_pv = ${v} * ${bh};
  let ${tag}_p = ${q}(${tag}_pv);
  let ${tag}_err = ${q}(${tag}_pv * u.one - ${tag}_p);
  let ${tag}_d = ${q}(${q}(${q}(${dv} * ${bh}) + ${q}(${v} * ${bl})) + ${tag}_err);
  let ${tag}_hi = ${q}(${tag}_p + ${tag}_d);
  let ${tag}_lo = ${tag}_d - ${q}(${tag}_hi - ${tag}_p);
`;
}

/**
 * The Collage AdamW body (`updates.adamw` of the `collage-light` and `collage-plus`
 * strategies). Hyperparameters used: `w1` (1-beta1), `beta2`, `b2hi`, `b2lo`, `c2`
 * (1-beta2), `eps`, `lrwd` (lr*wd); per-step: `stepSize`, `bc2Sqrt`.
 *
 * @example
 * ```ts
 * import { collageAdamWBody } from "./collage.ts";
 * const wgsl = collageAdamWBody("plus")({ flags: { amsgrad: false, maximize: false }, buffers: [] });
 * console.log(wgsl.includes("y.expAvgSqLo")); // true
 * ```
 */
export function collageAdamWBody(variant: "light" | "plus"): UpdateBody {
  return ({ flags }) => {
    const q = "q_param";
    let s = `  let g = ${flags.maximize ? "-x.grad" : "x.grad"};
  let m = ${q}(x.expAvg + (w1 * (g - x.expAvg)) * u.one);
  y.expAvg = m;
  let g2 = ((c2 * g) * g) * u.one;
`;
    if (variant === "light") {
      s += `  let v = ${q}(${q}(x.expAvgSq * beta2) + g2);
  y.expAvgSq = v;
`;
    } else {
      s += mul(q, "x.expAvgSq", "x.expAvgSqLo", "b2hi", "b2lo", "vm");
      s += grow(q, "vm_hi", "vm_lo", `${q}(g2)`, "vg");
      s += `  let v = vg_hi;
  y.expAvgSq = vg_hi;
  y.expAvgSqLo = vg_lo;
`;
    }
    s += `  let denom = (sqrt(v) / bc2Sqrt) * u.one + eps;
  let uf = -((stepSize * (m / denom)) * u.one) - (lrwd * x.param) * u.one;
  y.intended = uf;
${grow(q, "x.param", "x.paramLo", `${q}(uf)`, "w")}  y.param = w_hi;
  y.paramLo = w_lo;`;
    return s;
  };
}

/**
 * The Collage SGD body: PyTorch's SGD direction (weight decay added to the gradient,
 * momentum buffer in plain bf16), the update `u = fl(-lr * d)` applied by Grow to the MCF
 * weight (hi, lo). Hyperparameters: `lr`, `momentum`, `damp1`, `wd`; per-step: `isFirst`.
 *
 * @example
 * ```ts
 * import { collageSGDBody } from "./collage.ts";
 * const flags = { momentum: false, nesterov: false, maximize: false };
 * console.log(collageSGDBody(flags).includes("y.paramLo")); // true
 * ```
 */
export function collageSGDBody(
  flags: { momentum?: boolean; nesterov?: boolean; maximize?: boolean },
): string {
  const q = "q_param";
  let s = `  var d = ${flags.maximize ? "-x.grad" : "x.grad"};
  d = select(d, d + (wd * x.param) * u.one, wd != 0.0);
`;
  if (flags.momentum) {
    s +=
      `  let b = ${q}(select((momentum * x.momentumBuffer) * u.one + (damp1 * d) * u.one, d, isFirst > 0.5));
  y.momentumBuffer = b;
  d = ${flags.nesterov ? "d + (momentum * b) * u.one" : "b"};
`;
  }
  return s + `  let uf = -(lr * d);
  y.intended = uf;
${grow(q, "x.param", "x.paramLo", `${q}(uf)`, "w")}  y.param = w_hi;
  y.paramLo = w_lo;`;
}

/**
 * beta split into two bf16 numbers (hi = bf16(beta), lo = bf16(beta - hi)), as Mul takes it.
 *
 * @example
 * ```ts
 * import { splitBf16 } from "./collage.ts";
 * const [hi, lo] = splitBf16(0.95);
 * console.log(hi, lo.toExponential(4)); // 0.94921875 7.8201e-4
 * ```
 */
export function splitBf16(beta: number): [number, number] {
  const hi = roundBf16(Math.fround(beta));
  return [hi, roundBf16(Math.fround(Math.fround(beta) - hi))];
}

/** f32 `x` rounded to the nearest bf16 (ties to even), NaN kept. */
function roundBf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  const b = u[0];
  if ((b & 0x7f800000) === 0x7f800000) {
    u[0] = (b & 0x7fffff) !== 0 ? 0x7fc00000 : b;
    return f[0];
  }
  u[0] = ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16 << 16) >>> 0;
  return f[0];
}
