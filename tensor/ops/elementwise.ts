/**
 * Elementwise ops as data: each op is one row of a table (arity, WGSL expression over f32
 * operands with any helper functions it calls, output dtype rule, autocast policy, gradient
 * in tensor ops); the Tensor method, the free function and the policy come from the row, and
 * one kernel generator turns any row into a WGSL kernel for any input and output dtypes,
 * broadcasting, scalar operands and rounding.
 *
 * A kernel invocation owns one word of the output: for packed outputs (bf16, FP8, ...) it
 * computes 2 or 4 elements and writes the whole u32. Operands are decoded to f32, the
 * expression runs in f32, and the result is encoded once to the output dtype (fl(x)).
 * Kernels are generated and recorded by `launch()` in `../kernels/fusion.ts`, which fuses chains of these
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
} from "../../dtypes/mod.ts";
import { ValueError } from "../../errors.ts";
import { attach } from "../../autograd/graph.ts";
import { type Expr, launch } from "../kernels/fusion.ts";
import { installMethods, type Operand, Tensor } from "../core/tensor.ts";
import type { CastPolicy } from "../core/context.ts";
import { sumTo } from "./reduce.ts";
import { autocastInputs } from "./cast.ts";

// ---- the op table ----------------------------------------------------------------------------

/** Which dtype an op's result has. */
type OutRule = "promote" | "float" | "bool" | "same";

/**
 * One elementwise op: arity, WGSL expression (with any helper functions it calls), output
 * dtype rule, autocast policy and gradient. Its name is its key in `OPS`; the Tensor method
 * of that name comes from the row (unless `method: false`).
 */
interface EwOp {
  readonly arity: 1 | 2;
  readonly expr: Expr;
  /** WGSL functions the expression calls, added to every kernel that computes the op. */
  readonly wgsl?: string;
  /** The expression computes vec4 operands componentwise (`LaunchOptions.vec4`). */
  readonly vec4?: true;
  readonly out: OutRule;
  /** What autocast does with the op's float inputs. */
  readonly policy: CastPolicy;
  /** Gradients w.r.t. each operand, given inputs, output and output gradient. */
  readonly grad?: GradRule;
  /** False: no Tensor method of this name (a variant another method picks). */
  readonly method?: false;
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

/** Applies a table row: checks, launches, records the gradient. */
function apply(name: EwName, operands: Operand[]): Tensor {
  const row: EwOp = OPS[name];
  operands = autocastInputs(row.policy, operands.map((o) => checkOperand(name, o)));
  const outDt = outDtype(name, row.out, operands);
  const out = launch(name, operands, row.expr, outDt, { wgsl: row.wgsl, vec4: row.vec4 });
  const grad = row.grad;
  if (grad) {
    const ts = operands.filter((o): o is Tensor => o instanceof Tensor);
    attach(out, name, ts, (g) => {
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

/**
 * What a gradient rule returns: a gradient per operand (null where none flows). Each rule
 * declares it, so the table's type needs no rule's body (Tensor's methods come from it).
 */
type Grads = (Tensor | null)[];
/** A row's gradient rule: inputs, output and output gradient to the inputs' gradients. */
type GradRule = (x: Operand[], out: Tensor, g: Tensor) => Grads;

/**
 * The elementwise methods of `Tensor`. Each is a row of the op table below (which must have
 * a row for each and no other: the compiler checks both ways), except `square()`, a product.
 */
export interface ElementwiseMethods {
  /** `this + other`, broadcasting. */
  add(other: Operand): Tensor;
  /** `this - other`, broadcasting. */
  sub(other: Operand): Tensor;
  /** `this * other`, broadcasting. */
  mul(other: Operand): Tensor;
  /** `this / other`, broadcasting (true division). */
  div(other: Operand): Tensor;
  /** `this ** other`, broadcasting. */
  pow(other: Operand): Tensor;
  /** Elementwise maximum; NaN propagates. */
  maximum(other: Operand): Tensor;
  /** Elementwise minimum; NaN propagates. */
  minimum(other: Operand): Tensor;
  /** `-this`. */
  neg(): Tensor;
  /** `|this|`. */
  abs(): Tensor;
  /** `e^this`. */
  exp(): Tensor;
  /** Natural logarithm. */
  log(): Tensor;
  /** Square root. */
  sqrt(): Tensor;
  /** `1 / sqrt(this)`. */
  rsqrt(): Tensor;
  /** Hyperbolic tangent. */
  tanh(): Tensor;
  /** Logistic sigmoid. */
  sigmoid(): Tensor;
  /** `log(1 + e^this)`, computed stably. */
  softplus(): Tensor;
  /** `max(this, 0)` (NaN stays NaN). */
  relu(): Tensor;
  /** GELU, exact or with the tanh approximation. */
  gelu(approximate?: "none" | "tanh"): Tensor;
  /** `this == other` as bool. */
  eq(other: Operand): Tensor;
  /** `this != other` as bool (true for NaN). */
  ne(other: Operand): Tensor;
  /** `this < other` as bool. */
  lt(other: Operand): Tensor;
  /** `this <= other` as bool. */
  le(other: Operand): Tensor;
  /** `this > other` as bool. */
  gt(other: Operand): Tensor;
  /** `this >= other` as bool. */
  ge(other: Operand): Tensor;
  /** `this * this`, rounded once. */
  square(): Tensor;
}

/**
 * The name of a row: every method but `square`, and `gelu_tanh`, the variant `gelu` picks.
 * Any other name is a compile error.
 */
type EwName = Exclude<keyof ElementwiseMethods, "square"> | "gelu_tanh";
/** A row's arity, from its method's signature. */
type Arity<K extends EwName> = K extends "gelu" | "gelu_tanh" ? 1
  : K extends keyof ElementwiseMethods ? (ElementwiseMethods[K] extends () => Tensor ? 1 : 2)
  : never;

/** The rows. Gradients are written with the ops themselves (they are differentiable too). */
const OPS: { readonly [K in EwName]: EwOp & { readonly arity: Arity<K> } } = {
  add: {
    vec4: true,
    policy: "widest",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `${a} + ${b}`,
    grad: ([a, b], _o, g): Grads => [need(a, () => g), need(b, () => g)], // shared, see backward.ts
  },
  sub: {
    vec4: true,
    policy: "widest",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `${a} - ${b}`,
    grad: ([a, b], _o, g): Grads => [need(a, () => g), need(b, () => g.neg())],
  },
  mul: {
    vec4: true,
    policy: "widest",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `${a} * ${b}`,
    grad: ([a, b], _o, g): Grads => [need(a, () => g.mul(b)), need(b, () => g.mul(a))],
  },
  div: {
    vec4: true,
    policy: "widest",
    arity: 2,
    out: "float",
    expr: ([a, b]) => `${a} / ${b}`,
    grad: (
      [a, b],
      o,
      g,
    ): Grads => [
      need(a, () => g.div(b)),
      need(b, () => mul3(g, o, b, (x, y, z) => `-(${x} * ${y}) / ${z}`)),
    ],
  },
  pow: {
    policy: "f32",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `ulp_pow(${a}, ${b})`,
    grad: ([a, b], o, g): Grads => [
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
    policy: "widest",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `ulp_max(${a}, ${b})`,
    grad: ([a, b], _o, g): Grads => [
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
    policy: "widest",
    arity: 2,
    out: "promote",
    expr: ([a, b]) => `ulp_min(${a}, ${b})`,
    grad: ([a, b], _o, g): Grads => [
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
    vec4: true,
    policy: "widest",
    arity: 1,
    out: "same",
    expr: ([a]) => `-${a}`,
    grad: (_x, _o, g): Grads => [g.neg()],
  },
  abs: {
    vec4: true,
    policy: "widest",
    arity: 1,
    out: "same",
    expr: ([a]) => `abs(${a})`,
    grad: ([a], _o, g): Grads => [fused("abs_grad", [g, a], ([gg, x]) => `${gg} * sign(${x})`)],
  },
  exp: {
    vec4: true,
    policy: "f32",
    arity: 1,
    out: "float",
    expr: ([a]) => `exp(${a})`,
    grad: (_x, o, g): Grads => [g.mul(o)],
  },
  log: {
    vec4: true,
    policy: "f32",
    arity: 1,
    out: "float",
    expr: ([a]) => `log(${a})`,
    grad: ([a], _o, g): Grads => [g.div(a)],
  },
  sqrt: {
    vec4: true,
    policy: "widest",
    arity: 1,
    out: "float",
    expr: ([a]) => `sqrt(${a})`,
    grad: (_x, o, g): Grads => [fused("sqrt_grad", [g, o], ([gg, y]) => `${gg} / (2.0 * ${y})`)],
  },
  rsqrt: {
    vec4: true,
    policy: "f32",
    arity: 1,
    out: "float",
    expr: ([a]) => `inverseSqrt(${a})`,
    grad: (
      _x,
      o,
      g,
    ): Grads => [fused("rsqrt_grad", [g, o], ([gg, y]) => `-0.5 * ${gg} * ${y} * ${y} * ${y}`)],
  },
  tanh: {
    policy: "widest",
    arity: 1,
    out: "float",
    expr: ([a]) => `ulp_tanh(${a})`,
    grad: (
      _x,
      o,
      g,
    ): Grads => [fused("tanh_grad", [g, o], ([gg, y]) => `${gg} * (1.0 - ${y} * ${y})`)],
  },
  sigmoid: {
    vec4: true,
    policy: "widest",
    arity: 1,
    out: "float",
    expr: ([a]) => `1.0 / (1.0 + exp(-${a}))`,
    grad: (
      _x,
      o,
      g,
    ): Grads => [fused("sigmoid_grad", [g, o], ([gg, y]) => `${gg} * ${y} * (1.0 - ${y})`)],
  },
  softplus: {
    arity: 1,
    out: "float",
    policy: "widest",
    // log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow, and log1p keeps e^-|x|'s digits
    // where 1 + e^-|x| would round them away (log1p(e) = 2 atanh(e / (2 + e)), series in z^2)
    expr: ([a]) => `ulp_softplus(${a})`,
    wgsl: `fn ulp_softplus(x: f32) -> f32 {
  let e = exp(-abs(x));
  let z = e / (2.0 + e);
  let z2 = z * z;
  let s = 1.0 + z2 * (1.0 / 3.0 + z2 * (1.0 / 5.0 + z2 * (1.0 / 7.0 + z2 * (1.0 / 9.0 +
    z2 * (1.0 / 11.0 + z2 * (1.0 / 13.0 + z2 * (1.0 / 15.0)))))));
  return max(x, 0.0) + 2.0 * z * s;
}
`,
    grad: ([a], _o, g): Grads => [
      fused("softplus_grad", [g, a], ([gg, x]) => `${gg} / (1.0 + exp(-${x}))`),
    ],
  },
  relu: {
    policy: "widest",
    arity: 1,
    out: "same",
    expr: ([a]) => `select(${a}, 0.0, bitcast<i32>(${a}) < 0i && !ulp_isnan(${a}))`,
    grad: (
      [a],
      _o,
      g,
    ): Grads => [fused("relu_grad", [g, a], ([gg, x]) => `select(0.0, ${gg}, ${x} > 0.0)`)],
  },
  gelu: {
    policy: "widest",
    method: false,
    arity: 1,
    out: "float",
    expr: ([a]) => `0.5 * ${a} * (1.0 + ulp_erf(${a} * 0.7071067811865476))`,
    grad: ([a], _o, g): Grads => [
      fused(
        "gelu_grad",
        [g, a],
        ([gg, x]) =>
          `${gg} * (0.5 * (1.0 + ulp_erf(${x} * 0.7071067811865476)) + ${x} * 0.3989422804014327 * exp(-0.5 * ${x} * ${x}))`,
      ),
    ],
  },
  gelu_tanh: {
    policy: "widest",
    method: false,
    arity: 1,
    out: "float",
    expr: ([a]) =>
      `0.5 * ${a} * (1.0 + ulp_tanh(0.7978845608028654 * (${a} + 0.044715 * ${a} * ${a} * ${a})))`,
    grad: ([a], _o, g): Grads => [
      fused(
        "gelu_tanh_grad",
        [g, a],
        ([gg, x]) =>
          `${gg} * (0.5 * (1.0 + ulp_tanh(0.7978845608028654 * (${x} + 0.044715 * ${x} * ${x} * ${x}))) + 0.5 * ${x} * (1.0 - ulp_tanh(0.7978845608028654 * (${x} + 0.044715 * ${x} * ${x} * ${x})) * ulp_tanh(0.7978845608028654 * (${x} + 0.044715 * ${x} * ${x} * ${x}))) * 0.7978845608028654 * (1.0 + 0.134145 * ${x} * ${x}))`,
      ),
    ],
  },
  eq: { arity: 2, policy: "widest", out: "bool", expr: ([a, b]) => `f32(${a} == ${b})` },
  ne: {
    policy: "widest",
    arity: 2,
    out: "bool",
    expr: ([a, b]) => `f32(${a} != ${b} || ulp_isnan(${a}) || ulp_isnan(${b}))`,
  },
  lt: { arity: 2, policy: "widest", out: "bool", expr: ([a, b]) => `f32(${a} < ${b})` },
  le: { arity: 2, policy: "widest", out: "bool", expr: ([a, b]) => `f32(${a} <= ${b})` },
  gt: { arity: 2, policy: "widest", out: "bool", expr: ([a, b]) => `f32(${a} > ${b})` },
  ge: { arity: 2, policy: "widest", out: "bool", expr: ([a, b]) => `f32(${a} >= ${b})` },
};

/** Rows of one arity. */
type OfArity<N> = { [K in EwName]: Arity<K> extends N ? K : never }[EwName];
/** Autocast's policy of each elementwise op, from its row. */
export const ELEMENTWISE_POLICY: Readonly<Record<EwName, CastPolicy>> = Object.freeze(
  Object.fromEntries(
    (Object.keys(OPS) as EwName[]).map((k) => [k, (OPS[k] as EwOp).policy]),
  ) as Record<EwName, CastPolicy>,
);

/** An elementwise function of one tensor (`neg`, `exp`, ...). */
export type UnaryOp = (a: Tensor) => Tensor;
/** An elementwise function of two operands with broadcasting (`add`, `mul`, `lt`, ...). */
export type BinaryOp = (a: Operand, b: Operand) => Tensor;

/** The free function of a one-operand row. */
function unary(name: OfArity<1>): UnaryOp {
  return (a) => apply(name, [a]);
}
/** The free function of a two-operand row. */
function binary(name: OfArity<2>): BinaryOp {
  return (a, b) => apply(name, [a, b]);
}

{
  const methods: Record<string, (this: Tensor, other?: Operand) => Tensor> = {};
  for (const name of Object.keys(OPS) as EwName[]) {
    const row: EwOp = OPS[name];
    if (row.method === false) continue;
    methods[name] = row.arity === 1
      ? function (this: Tensor) {
        return apply(name, [this]);
      }
      : function (this: Tensor, other?: Operand) {
        return apply(name, [this, other!]);
      };
  }
  methods.square = function (this: Tensor) {
    return square(this);
  };
  installMethods(methods, "ops/elementwise.ts");
  installMethods({
    gelu(this: Tensor, approximate: "none" | "tanh" = "none") {
      return gelu(this, approximate);
    },
  }, "ops/elementwise.ts");
}

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
export const add: BinaryOp = binary("add");
/**
 * `a - b` with broadcasting.
 *
 * @example
 * ```ts
 * import { sub, tensor } from "../../mod.ts";
 * console.log(Array.from(await sub(tensor([1, 2]), tensor([[1], [2]])).toArray())); // [0, 1, -1, 0]
 * ```
 */
export const sub: BinaryOp = binary("sub");
/**
 * `a * b` with broadcasting.
 *
 * @example
 * ```ts
 * import { mul, tensor } from "../../mod.ts";
 * console.log(Array.from(await mul(tensor([1, 2], { dtype: "bf16" }), 3).toArray())); // [3, 6]
 * ```
 */
export const mul: BinaryOp = binary("mul");
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
  return apply("mul", [a, a]);
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
export const div: BinaryOp = binary("div");
/**
 * `a ** b` with broadcasting.
 *
 * @example
 * ```ts
 * import { pow, tensor } from "../../mod.ts";
 * console.log(Array.from(await pow(tensor([-2, 3]), 2).toArray())); // [4, 9]
 * ```
 */
export const pow: BinaryOp = binary("pow");
/**
 * Elementwise maximum; NaN propagates.
 *
 * @example
 * ```ts
 * import { maximum, tensor } from "../../mod.ts";
 * console.log(Array.from(await maximum(tensor([1, 5]), 3).toArray())); // [3, 5]
 * ```
 */
export const maximum: BinaryOp = binary("maximum");
/**
 * Elementwise minimum; NaN propagates.
 *
 * @example
 * ```ts
 * import { minimum, tensor } from "../../mod.ts";
 * console.log(Array.from(await minimum(tensor([1, 5]), 3).toArray())); // [1, 3]
 * ```
 */
export const minimum: BinaryOp = binary("minimum");
/**
 * `-a`.
 *
 * @example
 * ```ts
 * import { neg, tensor } from "../../mod.ts";
 * console.log(Array.from(await neg(tensor([1, -2])).toArray())); // [-1, 2]
 * ```
 */
export const neg: UnaryOp = unary("neg");
/**
 * `|a|`.
 *
 * @example
 * ```ts
 * import { abs, tensor } from "../../mod.ts";
 * console.log(Array.from(await abs(tensor([1, -2])).toArray())); // [1, 2]
 * ```
 */
export const abs: UnaryOp = unary("abs");
/**
 * `e^a`.
 *
 * @example
 * ```ts
 * import { exp, tensor } from "../../mod.ts";
 * console.log(Array.from(await exp(tensor([0])).toArray())); // [1]
 * ```
 */
export const exp: UnaryOp = unary("exp");
/**
 * Natural logarithm.
 *
 * @example
 * ```ts
 * import { log, tensor } from "../../mod.ts";
 * console.log(Array.from(await log(tensor([1])).toArray())); // [0]
 * ```
 */
export const log: UnaryOp = unary("log");
/**
 * Square root.
 *
 * @example
 * ```ts
 * import { sqrt, tensor } from "../../mod.ts";
 * console.log(Array.from(await sqrt(tensor([4, 9])).toArray())); // [2, 3]
 * ```
 */
export const sqrt: UnaryOp = unary("sqrt");
/**
 * `1 / sqrt(a)`.
 *
 * @example
 * ```ts
 * import { rsqrt, tensor } from "../../mod.ts";
 * console.log(Array.from(await rsqrt(tensor([4])).toArray())); // [0.5]
 * ```
 */
export const rsqrt: UnaryOp = unary("rsqrt");
/**
 * Hyperbolic tangent.
 *
 * @example
 * ```ts
 * import { tanh, tensor } from "../../mod.ts";
 * console.log(Array.from(await tanh(tensor([0])).toArray())); // [0]
 * ```
 */
export const tanh: UnaryOp = unary("tanh");
/**
 * Logistic sigmoid.
 *
 * @example
 * ```ts
 * import { sigmoid, tensor } from "../../mod.ts";
 * console.log(Array.from(await sigmoid(tensor([0])).toArray())); // [0.5]
 * ```
 */
export const sigmoid: UnaryOp = unary("sigmoid");
/**
 * Softplus, `log(1 + e^a)` (as `torch.nn.functional.softplus` with beta 1), computed as
 * `max(a, 0) + log1p(e^-|a|)`: no overflow for large `a`, full precision for very negative
 * `a`; its gradient is `sigmoid(a)`.
 *
 * @example
 * ```ts
 * import { softplus, tensor } from "../../mod.ts";
 * const y = await softplus(tensor([0, 100, -20])).toArray();
 * console.log(Array.from(y, (v) => v.toPrecision(6))); // ["0.693147", "100.000", "2.06115e-9"]
 * ```
 */
export const softplus: UnaryOp = unary("softplus");
/**
 * `max(a, 0)` (NaN stays NaN).
 *
 * @example
 * ```ts
 * import { relu, tensor } from "../../mod.ts";
 * console.log(Array.from(await relu(tensor([-1, 2])).toArray())); // [0, 2]
 * ```
 */
export const relu: UnaryOp = unary("relu");
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
  return apply(approximate === "tanh" ? "gelu_tanh" : "gelu", [a]);
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
export const eq: BinaryOp = binary("eq");
/**
 * `a != b` as bool (true for NaN).
 *
 * @example
 * ```ts
 * import { ne, tensor } from "../../mod.ts";
 * console.log(Array.from(await ne(tensor([1, 2]), 2).toArray())); // [1, 0]
 * ```
 */
export const ne: BinaryOp = binary("ne");
/**
 * `a < b` as bool.
 *
 * @example
 * ```ts
 * import { lt, tensor } from "../../mod.ts";
 * console.log(Array.from(await lt(tensor([1, 2]), 2).toArray())); // [1, 0]
 * ```
 */
export const lt: BinaryOp = binary("lt");
/**
 * `a <= b` as bool.
 *
 * @example
 * ```ts
 * import { le, tensor } from "../../mod.ts";
 * console.log(Array.from(await le(tensor([1, 3]), 2).toArray())); // [1, 0]
 * ```
 */
export const le: BinaryOp = binary("le");
/**
 * `a > b` as bool.
 *
 * @example
 * ```ts
 * import { gt, tensor } from "../../mod.ts";
 * console.log(Array.from(await gt(tensor([1, 3]), 2).toArray())); // [0, 1]
 * ```
 */
export const gt: BinaryOp = binary("gt");
/**
 * `a >= b` as bool.
 *
 * @example
 * ```ts
 * import { ge, tensor } from "../../mod.ts";
 * console.log(Array.from(await ge(tensor([1, 2]), 2).toArray())); // [0, 1]
 * ```
 */
export const ge: BinaryOp = binary("ge");

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

export { broadcastShapes } from "../kernels/fusion.ts";
