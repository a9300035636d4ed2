/**
 * Elementwise ops as data: each op is a row of a table (WGSL expression over f32 operands,
 * output dtype rule, gradient in tensor ops), and one kernel generator turns any row into a
 * WGSL kernel for any input and output dtypes, broadcasting, scalar operands and rounding.
 *
 * A kernel invocation owns one word of the output: for packed outputs (bf16, FP8, ...) it
 * computes 2 or 4 elements and writes the whole u32. Operands are decoded to f32, the
 * expression runs in f32, and the result is encoded once to the output dtype (fl(x)).
 * Kernels are generated and recorded by `launch()` in fusion.ts, which fuses chains of these
 * ops into one kernel.
 *
 * @module
 */

import {
  boolean as boolDType,
  type DType,
  float32,
  isFloat,
  promoteTypes,
  type Rounding,
} from "../../dtypes/mod.ts";
import { ValueError } from "../../errors.ts";
import { attach } from "../../autograd/graph.ts";
import { type Expr, launch } from "../kernels/fusion.ts";
import { type Operand, Tensor } from "../core/tensor.ts";
import { sumTo } from "./reduce.ts";
import { AUTOCAST_POLICY, autocastState, autocastTarget, cachedCast } from "../amp/autocast.ts";

// ---- the op table ----------------------------------------------------------------------------

/** Which dtype an op's result has. */
type OutRule = "promote" | "float" | "bool" | "same";

/** One elementwise op: expression, output dtype rule, and gradient. */
interface EwOp {
  readonly name: string;
  readonly arity: 1 | 2;
  readonly expr: Expr;
  readonly out: OutRule;
  /** Gradients w.r.t. each operand, given inputs, output and output gradient. */
  readonly grad?: (x: Operand[], out: Tensor, g: Tensor) => (Tensor | null)[];
}

function outDtype(op: string, rule: OutRule, operands: readonly Operand[]): DType {
  const ts = operands.filter((o): o is Tensor => o instanceof Tensor);
  if (ts.length === 0) throw new ValueError(`${op}(): needs at least one tensor operand`);
  if (rule === "bool") return boolDType;
  let d = ts[0].dt;
  for (const t of ts.slice(1)) d = promoteTypes(d, t.dt);
  if (rule === "float" && !isFloat(d)) return float32;
  if (
    rule === "promote" && !isFloat(d) &&
    operands.some((o) => typeof o === "number" && !Number.isInteger(o))
  ) {
    return float32;
  }
  return d;
}

function checkOperand(op: string, o: unknown): Operand {
  if (o instanceof Tensor || typeof o === "number") return o;
  throw new ValueError(
    `${op}(): operands must be tensors or numbers, got ${o === null ? "null" : typeof o}`,
  );
}

/**
 * The inputs of `op` as the current autocast context wants them: cast to the op's target
 * dtype (the lower dtype, or f32), parameters through the per-context cache. Without a
 * context, or for ops of the widest-input policy, the inputs unchanged. @internal
 */
export function autocastInputs<T extends Operand>(op: string, inputs: readonly T[]): T[] {
  const target = autocastTarget(op);
  if (target === null) return [...inputs];
  const st = autocastState()!;
  const lowering = AUTOCAST_POLICY[op] === "lower";
  return inputs.map((o) => {
    if (!(o instanceof Tensor) || !isFloat(o.dt) || o.dt === target) return o;
    if (!lowering && o.dt === float32) return o;
    const make = () =>
      cast(
        o,
        target,
        lowering
          ? { rounding: st.rounding, seed: (st.seed + Math.imul(o.id, 0x9e3779b1)) >>> 0 }
          : {},
      ).setPurpose("casts"); // transient: counted as "casts" in memory()
    return (o.node === null && o.requiresGrad ? cachedCast(o, target, make) : make()) as T;
  });
}

/** Applies a table row: checks, launches, records the gradient. */
function apply(row: EwOp, operands: Operand[]): Tensor {
  operands = autocastInputs(row.name, operands.map((o) => checkOperand(row.name, o)));
  const outDt = outDtype(row.name, row.out, operands);
  const out = launch(row.name, operands, row.expr, outDt);
  const grad = row.grad;
  if (grad) {
    const ts = operands.filter((o): o is Tensor => o instanceof Tensor);
    attach(out, row.name, ts, (g) => {
      const gs = grad(operands, out, g);
      // keep only tensor operands, reduced to their shapes (broadcast gradients summed)
      const res: (Tensor | null)[] = [];
      operands.forEach((o, k) => {
        if (o instanceof Tensor) {
          const gk = gs[k];
          res.push(gk === null ? null : sumTo(gk, o.shape));
          // a rule may return g itself (shared); backward() owns g, so only free what it made
          if (gk !== null && gk !== g && gk !== res[res.length - 1]) gk.dispose();
        }
      });
      return res;
    });
  }
  return out;
}

const T = (o: Operand): Tensor => o as Tensor;
const isT = (o: Operand) => o instanceof Tensor;
const need = (
  o: Operand,
  f: () => Tensor,
): Tensor | null => (isT(o) && T(o).requiresGrad ? f() : null);

/** The rows. Gradients are written with the ops themselves (they are differentiable too). */
const OPS = {
  add: {
    name: "add",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `${a} + ${b}`,
    grad: ([a, b], _o, g) => [need(a, () => g), need(b, () => g)], // shared, see backward.ts
  },
  sub: {
    name: "sub",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `${a} - ${b}`,
    grad: ([a, b], _o, g) => [need(a, () => g), need(b, () => g.neg())],
  },
  mul: {
    name: "mul",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `${a} * ${b}`,
    grad: ([a, b], _o, g) => [need(a, () => g.mul(b)), need(b, () => g.mul(a))],
  },
  div: {
    name: "div",
    arity: 2,
    out: "float",
    expr: ([a, b]) => `${a} / ${b}`,
    grad: (
      [a, b],
      o,
      g,
    ) => [
      need(a, () => g.div(b)),
      need(b, () => mul3(g, o, b, (x, y, z) => `-(${x} * ${y}) / ${z}`)),
    ],
  },
  pow: {
    name: "pow",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `ulp_pow(${a}, ${b})`,
    grad: ([a, b], o, g) => [
      need(
        a,
        () =>
          fused(
            "pow_grad_a",
            [g, a, b],
            ([gg, x, y]) => `${gg} * ${y} * ulp_pow(${x}, ${y} - 1.0)`,
          ),
      ),
      need(
        b,
        () =>
          fused(
            "pow_grad_b",
            [g, o, a],
            ([gg, oo, x]) => `select(${gg} * ${oo} * log(${x}), 0.0, ${x} <= 0.0)`,
          ),
      ),
    ],
  },
  maximum: {
    name: "maximum",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `ulp_max(${a}, ${b})`,
    grad: ([a, b], _o, g) => [
      need(
        a,
        () =>
          fused(
            "maximum_grad",
            [g, a, b],
            ([gg, x, y]) => `select(select(0.0, ${gg}, ${x} > ${y}), 0.5 * ${gg}, ${x} == ${y})`,
          ),
      ),
      need(
        b,
        () =>
          fused(
            "maximum_grad",
            [g, b, a],
            ([gg, x, y]) => `select(select(0.0, ${gg}, ${x} > ${y}), 0.5 * ${gg}, ${x} == ${y})`,
          ),
      ),
    ],
  },
  minimum: {
    name: "minimum",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `ulp_min(${a}, ${b})`,
    grad: ([a, b], _o, g) => [
      need(
        a,
        () =>
          fused(
            "minimum_grad",
            [g, a, b],
            ([gg, x, y]) => `select(select(0.0, ${gg}, ${x} < ${y}), 0.5 * ${gg}, ${x} == ${y})`,
          ),
      ),
      need(
        b,
        () =>
          fused(
            "minimum_grad",
            [g, b, a],
            ([gg, x, y]) => `select(select(0.0, ${gg}, ${x} < ${y}), 0.5 * ${gg}, ${x} == ${y})`,
          ),
      ),
    ],
  },
  neg: {
    name: "neg",
    arity: 1,
    out: "same",
    expr: ([a]) => `-${a}`,
    grad: (_x, _o, g) => [g.neg()],
  },
  abs: {
    name: "abs",
    arity: 1,
    out: "same",
    expr: ([a]) => `abs(${a})`,
    grad: ([a], _o, g) => [fused("abs_grad", [g, a], ([gg, x]) => `${gg} * sign(${x})`)],
  },
  exp: {
    name: "exp",
    arity: 1,
    out: "float",
    expr: ([a]) => `exp(${a})`,
    grad: (_x, o, g) => [g.mul(o)],
  },
  log: {
    name: "log",
    arity: 1,
    out: "float",
    expr: ([a]) => `log(${a})`,
    grad: ([a], _o, g) => [g.div(a)],
  },
  sqrt: {
    name: "sqrt",
    arity: 1,
    out: "float",
    expr: ([a]) => `sqrt(${a})`,
    grad: (_x, o, g) => [fused("sqrt_grad", [g, o], ([gg, y]) => `${gg} / (2.0 * ${y})`)],
  },
  rsqrt: {
    name: "rsqrt",
    arity: 1,
    out: "float",
    expr: ([a]) => `inverseSqrt(${a})`,
    grad: (
      _x,
      o,
      g,
    ) => [fused("rsqrt_grad", [g, o], ([gg, y]) => `-0.5 * ${gg} * ${y} * ${y} * ${y}`)],
  },
  tanh: {
    name: "tanh",
    arity: 1,
    out: "float",
    expr: ([a]) => `ulp_tanh(${a})`,
    grad: (_x, o, g) => [fused("tanh_grad", [g, o], ([gg, y]) => `${gg} * (1.0 - ${y} * ${y})`)],
  },
  sigmoid: {
    name: "sigmoid",
    arity: 1,
    out: "float",
    expr: ([a]) => `1.0 / (1.0 + exp(-${a}))`,
    grad: (_x, o, g) => [fused("sigmoid_grad", [g, o], ([gg, y]) => `${gg} * ${y} * (1.0 - ${y})`)],
  },
  relu: {
    name: "relu",
    arity: 1,
    out: "same",
    expr: ([a]) => `select(${a}, 0.0, bitcast<i32>(${a}) < 0i && !ulp_isnan(${a}))`,
    grad: (
      [a],
      _o,
      g,
    ) => [fused("relu_grad", [g, a], ([gg, x]) => `select(0.0, ${gg}, ${x} > 0.0)`)],
  },
  gelu: {
    name: "gelu",
    arity: 1,
    out: "float",
    expr: ([a]) => `0.5 * ${a} * (1.0 + ulp_erf(${a} * 0.7071067811865476))`,
    grad: ([a], _o, g) => [
      fused(
        "gelu_grad",
        [g, a],
        ([gg, x]) =>
          `${gg} * (0.5 * (1.0 + ulp_erf(${x} * 0.7071067811865476)) + ${x} * 0.3989422804014327 * exp(-0.5 * ${x} * ${x}))`,
      ),
    ],
  },
  gelu_tanh: {
    name: "gelu_tanh",
    arity: 1,
    out: "float",
    expr: ([a]) =>
      `0.5 * ${a} * (1.0 + ulp_tanh(0.7978845608028654 * (${a} + 0.044715 * ${a} * ${a} * ${a})))`,
    grad: ([a], _o, g) => [
      fused(
        "gelu_tanh_grad",
        [g, a],
        ([gg, x]) =>
          `${gg} * (0.5 * (1.0 + ulp_tanh(0.7978845608028654 * (${x} + 0.044715 * ${x} * ${x} * ${x}))) + 0.5 * ${x} * (1.0 - ulp_tanh(0.7978845608028654 * (${x} + 0.044715 * ${x} * ${x} * ${x})) * ulp_tanh(0.7978845608028654 * (${x} + 0.044715 * ${x} * ${x} * ${x}))) * 0.7978845608028654 * (1.0 + 0.134145 * ${x} * ${x}))`,
      ),
    ],
  },
  eq: { name: "eq", arity: 2, out: "bool", expr: ([a, b]) => `f32(${a} == ${b})` },
  ne: {
    name: "ne",
    arity: 2,
    out: "bool",
    expr: ([a, b]) => `f32(${a} != ${b} || ulp_isnan(${a}) || ulp_isnan(${b}))`,
  },
  lt: { name: "lt", arity: 2, out: "bool", expr: ([a, b]) => `f32(${a} < ${b})` },
  le: { name: "le", arity: 2, out: "bool", expr: ([a, b]) => `f32(${a} <= ${b})` },
  gt: { name: "gt", arity: 2, out: "bool", expr: ([a, b]) => `f32(${a} > ${b})` },
  ge: { name: "ge", arity: 2, out: "bool", expr: ([a, b]) => `f32(${a} >= ${b})` },
} satisfies Record<string, EwOp>;

/** An elementwise expression over 2-3 operands in f32 (used for gradients), no graph. */
function fused(name: string, operands: Operand[], expr: Expr): Tensor {
  const ts = operands.filter((o): o is Tensor => o instanceof Tensor);
  return launch(name, operands, expr, ts[0].dt);
}

function mul3(
  a: Tensor,
  b: Tensor,
  c: Operand,
  expr: (x: string, y: string, z: string) => string,
): Tensor {
  return fused("div_grad", [a, b, c], ([x, y, z]) => expr(x, y, z));
}

/**
 * `a + b` with broadcasting; either may be a number.
 *
 * @example
 * ```ts
 * import { add, tensor } from "../../mod.ts";
 * console.log(Array.from(await add(tensor([1, 2]), 1).toArray())); // [2, 3]
 * ```
 */
export function add(a: Operand, b: Operand): Tensor {
  return apply(OPS.add, [a, b]);
}
/**
 * `a - b` with broadcasting.
 *
 * @example
 * ```ts
 * import { sub, tensor } from "../../mod.ts";
 * console.log(Array.from(await sub(tensor([1, 2]), tensor([[1], [2]])).toArray())); // [0, 1, -1, 0]
 * ```
 */
export function sub(a: Operand, b: Operand): Tensor {
  return apply(OPS.sub, [a, b]);
}
/**
 * `a * b` with broadcasting.
 *
 * @example
 * ```ts
 * import { mul, tensor } from "../../mod.ts";
 * console.log(Array.from(await mul(tensor([1, 2], { dtype: "bf16" }), 3).toArray())); // [3, 6]
 * ```
 */
export function mul(a: Operand, b: Operand): Tensor {
  return apply(OPS.mul, [a, b]);
}
/**
 * `a * a` (as `torch.square`): the product rounded once to `a`'s dtype; its gradient is
 * `2 a g`.
 *
 * @example
 * ```ts
 * import { square, tensor } from "../../mod.ts";
 * console.log(Array.from(await square(tensor([-3, 0.5])).toArray())); // [9, 0.25]
 * ```
 */
export function square(a: Tensor): Tensor {
  return apply(OPS.mul, [a, a]);
}
/**
 * `a / b` with broadcasting (true division: integers give f32).
 *
 * @example
 * ```ts
 * import { div, tensor } from "../../mod.ts";
 * console.log(Array.from(await div(tensor([1, 3]), 2).toArray())); // [0.5, 1.5]
 * ```
 */
export function div(a: Operand, b: Operand): Tensor {
  return apply(OPS.div, [a, b]);
}
/**
 * `a ** b` with broadcasting.
 *
 * @example
 * ```ts
 * import { pow, tensor } from "../../mod.ts";
 * console.log(Array.from(await pow(tensor([-2, 3]), 2).toArray())); // [4, 9]
 * ```
 */
export function pow(a: Operand, b: Operand): Tensor {
  return apply(OPS.pow, [a, b]);
}
/**
 * Elementwise maximum; NaN propagates.
 *
 * @example
 * ```ts
 * import { maximum, tensor } from "../../mod.ts";
 * console.log(Array.from(await maximum(tensor([1, 5]), 3).toArray())); // [3, 5]
 * ```
 */
export function maximum(a: Operand, b: Operand): Tensor {
  return apply(OPS.maximum, [a, b]);
}
/**
 * Elementwise minimum; NaN propagates.
 *
 * @example
 * ```ts
 * import { minimum, tensor } from "../../mod.ts";
 * console.log(Array.from(await minimum(tensor([1, 5]), 3).toArray())); // [1, 3]
 * ```
 */
export function minimum(a: Operand, b: Operand): Tensor {
  return apply(OPS.minimum, [a, b]);
}
/**
 * `-a`.
 *
 * @example
 * ```ts
 * import { neg, tensor } from "../../mod.ts";
 * console.log(Array.from(await neg(tensor([1, -2])).toArray())); // [-1, 2]
 * ```
 */
export function neg(a: Tensor): Tensor {
  return apply(OPS.neg, [a]);
}
/**
 * `|a|`.
 *
 * @example
 * ```ts
 * import { abs, tensor } from "../../mod.ts";
 * console.log(Array.from(await abs(tensor([1, -2])).toArray())); // [1, 2]
 * ```
 */
export function abs(a: Tensor): Tensor {
  return apply(OPS.abs, [a]);
}
/**
 * `e^a`.
 *
 * @example
 * ```ts
 * import { exp, tensor } from "../../mod.ts";
 * console.log(Array.from(await exp(tensor([0])).toArray())); // [1]
 * ```
 */
export function exp(a: Tensor): Tensor {
  return apply(OPS.exp, [a]);
}
/**
 * Natural logarithm.
 *
 * @example
 * ```ts
 * import { log, tensor } from "../../mod.ts";
 * console.log(Array.from(await log(tensor([1])).toArray())); // [0]
 * ```
 */
export function log(a: Tensor): Tensor {
  return apply(OPS.log, [a]);
}
/**
 * Square root.
 *
 * @example
 * ```ts
 * import { sqrt, tensor } from "../../mod.ts";
 * console.log(Array.from(await sqrt(tensor([4, 9])).toArray())); // [2, 3]
 * ```
 */
export function sqrt(a: Tensor): Tensor {
  return apply(OPS.sqrt, [a]);
}
/**
 * `1 / sqrt(a)`.
 *
 * @example
 * ```ts
 * import { rsqrt, tensor } from "../../mod.ts";
 * console.log(Array.from(await rsqrt(tensor([4])).toArray())); // [0.5]
 * ```
 */
export function rsqrt(a: Tensor): Tensor {
  return apply(OPS.rsqrt, [a]);
}
/**
 * Hyperbolic tangent.
 *
 * @example
 * ```ts
 * import { tanh, tensor } from "../../mod.ts";
 * console.log(Array.from(await tanh(tensor([0])).toArray())); // [0]
 * ```
 */
export function tanh(a: Tensor): Tensor {
  return apply(OPS.tanh, [a]);
}
/**
 * Logistic sigmoid.
 *
 * @example
 * ```ts
 * import { sigmoid, tensor } from "../../mod.ts";
 * console.log(Array.from(await sigmoid(tensor([0])).toArray())); // [0.5]
 * ```
 */
export function sigmoid(a: Tensor): Tensor {
  return apply(OPS.sigmoid, [a]);
}
/**
 * `max(a, 0)` (NaN stays NaN).
 *
 * @example
 * ```ts
 * import { relu, tensor } from "../../mod.ts";
 * console.log(Array.from(await relu(tensor([-1, 2])).toArray())); // [0, 2]
 * ```
 */
export function relu(a: Tensor): Tensor {
  return apply(OPS.relu, [a]);
}
/**
 * GELU, exact (`0.5 x (1 + erf(x / sqrt 2))`) or with the tanh approximation.
 *
 * @example
 * ```ts
 * import { gelu, tensor } from "../../mod.ts";
 * console.log((await gelu(tensor([1])).item()).toFixed(4)); // "0.8413"
 * ```
 */
export function gelu(a: Tensor, approximate: "none" | "tanh" = "none"): Tensor {
  return apply(approximate === "tanh" ? OPS.gelu_tanh : OPS.gelu, [a]);
}
/**
 * `a == b` as bool.
 *
 * @example
 * ```ts
 * import { eq, tensor } from "../../mod.ts";
 * console.log(Array.from(await eq(tensor([1, 2]), 2).toArray())); // [0, 1]
 * ```
 */
export function eq(a: Operand, b: Operand): Tensor {
  return apply(OPS.eq, [a, b]);
}
/**
 * `a != b` as bool (true for NaN).
 *
 * @example
 * ```ts
 * import { ne, tensor } from "../../mod.ts";
 * console.log(Array.from(await ne(tensor([1, 2]), 2).toArray())); // [1, 0]
 * ```
 */
export function ne(a: Operand, b: Operand): Tensor {
  return apply(OPS.ne, [a, b]);
}
/**
 * `a < b` as bool.
 *
 * @example
 * ```ts
 * import { lt, tensor } from "../../mod.ts";
 * console.log(Array.from(await lt(tensor([1, 2]), 2).toArray())); // [1, 0]
 * ```
 */
export function lt(a: Operand, b: Operand): Tensor {
  return apply(OPS.lt, [a, b]);
}
/**
 * `a <= b` as bool.
 *
 * @example
 * ```ts
 * import { le, tensor } from "../../mod.ts";
 * console.log(Array.from(await le(tensor([1, 3]), 2).toArray())); // [1, 0]
 * ```
 */
export function le(a: Operand, b: Operand): Tensor {
  return apply(OPS.le, [a, b]);
}
/**
 * `a > b` as bool.
 *
 * @example
 * ```ts
 * import { gt, tensor } from "../../mod.ts";
 * console.log(Array.from(await gt(tensor([1, 3]), 2).toArray())); // [0, 1]
 * ```
 */
export function gt(a: Operand, b: Operand): Tensor {
  return apply(OPS.gt, [a, b]);
}
/**
 * `a >= b` as bool.
 *
 * @example
 * ```ts
 * import { ge, tensor } from "../../mod.ts";
 * console.log(Array.from(await ge(tensor([1, 2]), 2).toArray())); // [0, 1]
 * ```
 */
export function ge(a: Operand, b: Operand): Tensor {
  return apply(OPS.ge, [a, b]);
}

/**
 * `cond ? a : b` elementwise, broadcasting all three; `a` and `b` may be numbers.
 *
 * @example
 * ```ts
 * import { tensor, where } from "../../mod.ts";
 * const x = tensor([-1, 2, -3]);
 * console.log(Array.from(await where(x.gt(0), x, 0).toArray())); // [0, 2, 0]
 * ```
 */
export function where(cond: Tensor, a: Operand, b: Operand): Tensor {
  const ops = [cond, a, b].map((o) => checkOperand("where", o));
  const outDt = outDtype(
    "where",
    "promote",
    [a, b].some((o) => o instanceof Tensor) ? [a, b] : [cond],
  );
  const out = launch(
    "where",
    ops,
    ([c, x, y]) => `select(${y}, ${x}, ${c} != 0.0)`,
    [a, b].some((o) => o instanceof Tensor) ? outDt : float32,
  );
  const ts = ops.filter((o): o is Tensor => o instanceof Tensor);
  return attach(
    out,
    "where",
    ts,
    (g) =>
      ops.filter((o): o is Tensor => o instanceof Tensor).map((o, k) => {
        if (k === 0 || !o.requiresGrad) return null;
        const which = o === a ? "x" : "y";
        const masked = launch("where_grad", [cond, g], ([c, gg]) => (which === "x"
          ? `select(0.0, ${gg}, ${c} != 0.0)`
          : `select(${gg}, 0.0, ${c} != 0.0)`), g.dt);
        const r = sumTo(masked, o.shape);
        if (r !== masked) {
          masked.dispose();
        }
        return r;
      }),
  );
}

/**
 * Converts a tensor to `dt`, rounding once (RNE, stochastic with a seed, or truncation),
 * saturating on request. The gradient flows back cast to the input's dtype.
 *
 * @example
 * ```ts
 * import { tensor } from "../../mod.ts";
 * const x = tensor([0.1, 1000]);
 * console.log(Array.from(await x.cast("e4m3", { saturate: true }).toArray())); // [0.1015625, 448]
 * ```
 */
export function cast(
  x: Tensor,
  dt: DType,
  opts: { rounding?: Rounding; seed?: number; saturate?: boolean } = {},
): Tensor {
  if (!(x instanceof Tensor)) throw new ValueError("cast(): expects a tensor");
  if (opts.seed !== undefined && !Number.isInteger(opts.seed)) {
    throw new ValueError(`cast(): seed must be an integer, got ${opts.seed}`);
  }
  const out = launch("cast", [x], ([a]) => a, dt, opts);
  return attach(out, "cast", [x], (g) => [g.dt === x.dt ? g : cast(g, x.dt)]);
}

export { OPS as ELEMENTWISE_OPS };
export { broadcastShapes } from "../kernels/fusion.ts";
