// Gradients of every elementwise op and cast against central finite differences in f32.
import assert from "node:assert/strict";
import { noGrad, type Tensor, tensor, tidy, where } from "../../mod.ts";
import { rng } from "./_reference.ts";

/** Checks d(sum(w * f(inputs)))/d(input) by central differences on every coordinate. */
async function checkGrad(
  name: string,
  f: (xs: Tensor[]) => Tensor,
  inputs: { values: number[]; shape: number[] }[],
  opts: { eps?: number; tol?: number } = {},
) {
  const eps = opts.eps ?? 1e-2, tol = opts.tol ?? 2e-2;
  const r = rng(name.length);
  const xs = inputs.map((i) => tensor(i.values, { shape: i.shape, requiresGrad: true }));
  const out = f(xs);
  const w = Array.from({ length: out.size }, () => r() * 2 - 1);
  const wt = tensor(w, { shape: out.shape as number[] });
  out.backward(wt);
  const objective = (vals: number[][]): Promise<number> => {
    const y = noGrad(() =>
      tidy(() => f(vals.map((v, k) => tensor(v, { shape: inputs[k].shape }))).mul(wt).sum())
    );
    return y.item().finally(() => y.dispose());
  };
  for (let k = 0; k < inputs.length; k++) {
    // every coordinate's two objectives asked for in one task: one wait, not two a coordinate
    const [g, ...pairs] = await Promise.all([
      xs[k].grad!.toArray(),
      ...inputs[k].values.map((_, j) => {
        const plus = inputs.map((i) => [...i.values]), minus = inputs.map((i) => [...i.values]);
        plus[k][j] += eps;
        minus[k][j] -= eps;
        return Promise.all([objective(plus), objective(minus)]);
      }),
    ]) as [Float32Array, ...[number, number][]];
    for (let j = 0; j < inputs[k].values.length; j++) {
      const fd = (pairs[j][0] - pairs[j][1]) / (2 * eps);
      assert.ok(
        Math.abs(g[j] - fd) <= tol * (1 + Math.abs(fd)),
        `${name}: d/dx${k}[${j}] autograd ${g[j]} vs finite difference ${fd}`,
      );
    }
  }
}

const A = { values: [0.7, -1.3, 2.1, 0.4, -0.2, 1.6], shape: [2, 3] };
const B = { values: [1.1, 0.5, -0.9], shape: [3] }; // broadcast along the first axis
const POS = { values: [0.7, 1.3, 2.1, 0.4, 0.9, 1.6], shape: [2, 3] };

Deno.test("binary op gradients, broadcast operands included, match finite differences", async () => {
  await checkGrad("add", ([a, b]) => a.add(b), [A, B]);
  await checkGrad("sub", ([a, b]) => a.sub(b), [A, B]);
  await checkGrad("mul", ([a, b]) => a.mul(b), [A, B]);
  await checkGrad("div", ([a, b]) => a.div(b), [A, { values: [1.1, 0.5, 1.9], shape: [3] }]);
  await checkGrad("pow", ([a, b]) => a.pow(b), [POS, { values: [1.5, 2, 0.5], shape: [3] }]);
  await checkGrad("maximum", ([a, b]) => a.maximum(b), [A, B]);
  await checkGrad("minimum", ([a, b]) => a.minimum(b), [A, B]);
  await checkGrad("scalar operands", ([a]) => a.mul(3).sub(1).div(2), [A]);
});

Deno.test("unary op gradients match finite differences", async () => {
  await checkGrad("neg", ([a]) => a.neg(), [A]);
  await checkGrad("abs", ([a]) => a.abs(), [A]);
  await checkGrad("exp", ([a]) => a.exp(), [A]);
  await checkGrad("log", ([a]) => a.log(), [POS]);
  await checkGrad("sqrt", ([a]) => a.sqrt(), [POS]);
  await checkGrad("rsqrt", ([a]) => a.rsqrt(), [POS]);
  await checkGrad("tanh", ([a]) => a.tanh(), [A]);
  await checkGrad("sigmoid", ([a]) => a.sigmoid(), [A]);
  await checkGrad("softplus", ([a]) => a.softplus(), [A]);
  await checkGrad("relu", ([a]) => a.relu(), [A]);
  await checkGrad("gelu", ([a]) => a.gelu(), [A]);
  await checkGrad("gelu tanh", ([a]) => a.gelu("tanh"), [A]);
});

Deno.test("where and cast pass gradients to the right places", async () => {
  await checkGrad("where", ([a, b]) => where(a.gt(0), a, b), [A, B]);
  await checkGrad("cast to f16 and back", ([a]) => a.cast("f16").cast("f32").mul(a), [A], {
    tol: 5e-2,
  });
  const x = tensor([1, 2], { requiresGrad: true });
  x.cast("bf16").mul(3).backward(tensor([1, 1], { dtype: "bf16" }));
  assert.equal(
    x.grad!.dtype,
    "f32",
    "the gradient flows back in the dtype of the tensor that was cast",
  );
  assert.deepEqual(Array.from(await x.grad!.toArray()), [3, 3]);
});
