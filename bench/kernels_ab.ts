/**
 * Which kernels two checkouts of ulp compile for the same work (an elementwise chain; softmax,
 * logSoftmax, layer and RMS norm forward and backward in both families of row kernels; and two
 * training steps of a small GPT under fp32, amp-bf16, bf16, collage-light and collage-plus), in
 * one process: a refactor that leaves every WGSL source byte-identical
 * cannot change the GPU's work, whatever the timings of a shared machine say. Prints the counts
 * and the first line of each differing source's kernel.
 *
 * Run: deno run -A bench/kernels_ab.ts <before checkout (absolute path)> <after checkout>
 *
 * @module
 */
const codes = new Map<GPUDevice, string[]>();
const orig = GPUDevice.prototype.createShaderModule;
GPUDevice.prototype.createShaderModule = function (d: GPUShaderModuleDescriptor) {
  if (!codes.has(this)) codes.set(this, []);
  codes.get(this)!.push(d.code);
  return orig.call(this, d);
};
const dirs = Deno.args.slice(0, 2);
const out: Record<string, Set<string>> = {};
for (const dir of dirs) {
  // (taken before ready(): ready() makes the device and may compile on it, e.g. the matmul probe)
  const before = new Set(codes.keys());
  const L = await import(`file://${dir}/mod.ts`);
  const G = await import(`file://${dir}/gpu/mod.ts`);
  const R = await import(`file://${dir}/tensor/ops/reduce.ts`);
  await L.ready();
  const rt = await G.getRuntime();
  const data = (n: number, s: number) =>
    Float32Array.from({ length: n }, (_, k) => Math.sin(k * s) * 0.5);
  // both families of row kernels (softmax, norms) where the checkout has them; else its one
  for (const fam of R.setRowFamily ? ["lanes", "workgroup"] : [null]) {
    if (fam) R.setRowFamily(fam);
    rowWork(L, data);
  }
  if (R.setRowFamily) R.setRowFamily("auto");
  L.tidy(() => {
    const [x, a, b, c] = [1, 2, 3, 4].map((s) => L.tensor(data(4096, s)));
    x.mul(a).add(b).exp().mul(c).realize();
  });
  for (const strategy of ["fp32", "amp-bf16", "bf16", "collage-light", "collage-plus"]) {
    const s = L.precisionStrategy(strategy);
    const model = new L.GPT({
      vocabSize: 100,
      blockSize: 16,
      nLayer: 1,
      nHead: 2,
      nEmbd: 32,
      seed: 1,
    }, { dtype: s.param.name });
    const opt = new L.AdamW(model.parameters(), {
      lr: 3e-3,
      weightDecay: 0.1,
      precision: strategy,
    });
    const ids = Int32Array.from({ length: 64 }, (_, k) => (k * 7) % 100);
    const x = L.tensor(ids, { shape: [4, 16] }),
      y = L.tensor(ids.map((v) => (v + 1) % 100), { shape: [4, 16] });
    const amp = strategy.startsWith("amp-") ? { dtype: strategy.slice(4) } : null;
    for (let k = 0; k < 2; k++) {
      L.tidy(() => {
        const f = () => model.forward(x, y).loss.backward();
        if (amp) L.autocast(amp, f);
        else f();
        opt.step();
        opt.zeroGrad();
      });
    }
  }
  await rt.sync();
  const dev = [...codes.keys()].find((d) => !before.has(d));
  if (!dev) throw new Error(`${dir}: no kernels compiled on a new device; nothing to compare`);
  out[dir] = new Set(codes.get(dev));
}
/**
 * Softmax, logSoftmax, layer and RMS norm, forward and backward, in f32 and bf16, rows of 128:
 * the row kernels (quad, or lane-row under `setRowFamily("lanes")`).
 */
// deno-lint-ignore no-explicit-any
function rowWork(L: any, data: (n: number, s: number) => Float32Array) {
  L.tidy(() => {
    for (const dtype of ["float32", "bfloat16"]) {
      const x = () => L.tensor(data(64 * 128, 5), { shape: [64, 128], dtype, requiresGrad: true });
      const g = () => L.tensor(data(64 * 128, 3), { shape: [64, 128], dtype });
      const w = () => L.tensor(data(128, 7), { dtype, requiresGrad: true });
      x().softmax(-1).backward(g());
      x().logSoftmax(-1).backward(g());
      L.layerNorm(x(), [128], w(), L.tensor(data(128, 8), { dtype, requiresGrad: true }))
        .backward(g());
      L.rmsNorm(x(), w()).backward(g());
    }
  });
}

const [A, B] = dirs.map((d) => out[d]);
const onlyA = [...A].filter((c) => !B.has(c)), onlyB = [...B].filter((c) => !A.has(c));
console.log(
  `${dirs[0]}: ${A.size} sources, ${
    dirs[1]
  }: ${B.size} sources; only in the first ${onlyA.length}, only in the second ${onlyB.length}`,
);
const head = (c: string) => c.split("\n").find((l) => l.startsWith("fn kernel")) ?? "";
for (const c of onlyA) console.log(`only in the first (${c.length} chars): ${head(c)}`);
for (const c of onlyB) console.log(`only in the second (${c.length} chars): ${head(c)}`);
