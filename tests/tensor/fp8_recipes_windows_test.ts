// The block recipes' kernels (tensor/amp/block_scaling.ts) on tensors larger than one storage
// binding: with the binding limit lowered so that small tensors need several windows, block
// and NVFP4 quantisation and the random Hadamard transform give the same bits as with the
// adapter's own limit, and as the host formulas.
import assert from "node:assert/strict";
import { type Tensor, tensor, tidy } from "../../mod.ts";
import { blockQuantize, nvfp4Quantize } from "../../tensor/mod.ts";
import { randomHadamard16 } from "../../tensor/amp/block_scaling.ts";
import { rng } from "./_reference.ts";
import {
  blocksOf,
  f32BitsOf,
  fp8BlocksRef,
  nvfp4Ref,
  rht16,
  teScale,
  wideValues,
} from "./_recipes_reference.ts";
import { withBindingLimit } from "../_binding_limit.ts";

const LIMIT = 65536;

/** The f32 bits of each tensor `f` returns, with the binding limit `bytes` (null: the adapter's). */
async function bitsOf(bytes: number | null, f: () => Tensor[]): Promise<number[][]> {
  return await withBindingLimit(bytes, async () => {
    const ts = tidy(f);
    const out = await Promise.all(ts.map(async (t) => f32BitsOf(await t.toArray())));
    for (const t of ts) t.dispose();
    return out;
  });
}

Deno.test("block scaling and NVFP4 of tensors larger than one binding: the same bits through windows, as the formulas", async () => {
  const r = rng(17);
  // [rows, cols], block and binding limit: a workgroup (64 blocks) must fit one binding, so
  // the column blocks take a stripe of 128 rows (2 x 153,600 bytes) against tensors of 460,800
  const cases = [
    { shape: [200, 256], block: [1, 128], limit: LIMIT },
    { shape: [384, 300], block: [128, 128], limit: 4 * LIMIT },
    { shape: [384, 300], block: [128, 1], limit: 5 * LIMIT },
    // whole columns (rowwise scaling along a GEMM's rows): a column block spans the whole
    // tensor, more than one binding: quantised through the transpose
    { shape: [384, 300], block: [384, 1], limit: 2 * LIMIT },
  ] as const;
  for (const c of cases) {
    const [R, C] = c.shape;
    const x = wideValues(R * C, r, -10, 6);
    const f = () => {
      const q = blockQuantize(tensor(x, { shape: [R, C] }), { block: [c.block[0], c.block[1]] });
      return [q.scale, q.data, q.values];
    };
    const win = await bitsOf(c.limit, f), whole = await bitsOf(null, f);
    assert.deepEqual(win, whole, `${JSON.stringify(c)}: windows and whole`);
    const ref = fp8BlocksRef(
      x,
      blocksOf(1, R, C, c.block[0], c.block[1]),
      "e4m3",
      (a) => teScale(a, 448, 0, true),
    );
    assert.deepEqual(win, [ref.scales, ref.codes, ref.values].map(f32BitsOf), JSON.stringify(c));
  }
  const [R, C] = [96, 400];
  const x = wideValues(R * C, r, -10, 4);
  const g = () => {
    const q = nvfp4Quantize(tensor(x, { shape: [R, C] }), {
      block: [16, 1],
      stochastic: true,
      seed: 3,
    });
    const h = randomHadamard16(tensor(x, { shape: [R, C] }), R, C);
    return [q.blockScale, q.data, q.values, h];
  };
  const win = await bitsOf(LIMIT, g), whole = await bitsOf(null, g);
  assert.deepEqual(win, whole, "nvfp4 and the Hadamard transform: windows and whole");
  const ref = nvfp4Ref(x, blocksOf(1, R, C, 16, 1), true, 3);
  assert.deepEqual(
    win,
    [ref.blockScales, ref.codes, ref.values, rht16(x, R, C)].map(f32BitsOf),
    "nvfp4 and the transform as the formulas",
  );
});
