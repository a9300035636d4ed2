/**
 * Side-by-side A/B of two checkouts of ulp in one process: the bench's ulp rows (matmul in each
 * storage dtype, the elementwise chain, softmax, layer norm, AdamW over 10M parameters per
 * strategy, the GPT step per strategy), each library on its own device of the same adapter,
 * timed alternately (best of `--rounds`), so that a row's ratio does not depend on what else the
 * machine did meanwhile. Used for the "no slower" checks of refactors (BENCHMARKS.md).
 *
 * Run: deno run -A bench/ab.ts <before checkout> <after checkout> [--rounds 5] [--quick]
 *   [--only <text>] (only the rows whose name contains it) [--inner 1] (ops a timed round: more
 *   than one spreads the wait for the GPU, about 11 ms on llvmpipe, over short ops)
 *   (for example: git worktree add /tmp/before <rev>; deno run -A bench/ab.ts /tmp/before .)
 *
 * @module
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    rounds: { type: "string", default: "5" },
    quick: { type: "boolean", default: false },
    only: { type: "string", default: "" },
    inner: { type: "string", default: "1" },
  },
});
const inner = Number(values.inner);
if (positionals.length !== 2) {
  console.error("usage: deno run -A bench/ab.ts <before checkout> <after checkout> [--rounds N]");
  Deno.exit(2);
}
const rounds = Number(values.rounds);
// deno-lint-ignore no-explicit-any
type Lib = { name: string; L: any; sync: () => Promise<void> };
const libs: Lib[] = [];
for (const [i, dir] of positionals.entries()) {
  const root = new URL(`file://${resolve(dir)}/`);
  const L = await import(new URL("mod.ts", root).href);
  const G = await import(new URL("gpu/mod.ts", root).href);
  await L.ready();
  const rt = await G.getRuntime();
  libs.push({ name: i === 0 ? "before" : "after", L, sync: () => rt.sync() });
}

/** Deterministic host data in [-scale, scale). */
function data(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 * 2 - 1) * scale;
  });
}

const rows: { case: string; before: number; after: number }[] = [];
/** Times `make(lib)()` alternately on both libraries; `make` builds the inputs once. */
async function row(name: string, make: (l: Lib) => { run: () => void; dispose: () => void }) {
  if (!name.includes(values.only!)) return;
  const made = libs.map((l) => ({ l, ...make(l), best: Infinity }));
  for (const m of made) {
    m.run();
    await m.l.sync();
  } // warm-up: compiles, tuning
  for (let r = 0; r < rounds; r++) {
    for (const m of r % 2 ? [...made].reverse() : made) {
      const t0 = performance.now();
      for (let i = 0; i < inner; i++) m.run();
      await m.l.sync();
      m.best = Math.min(m.best, (performance.now() - t0) / inner);
    }
  }
  for (const m of made) m.dispose();
  rows.push({ case: name, before: made[0].best, after: made[1].best });
  const x = rows[rows.length - 1];
  console.log(
    `${name.padEnd(34)} ${x.before.toFixed(1).padStart(9)} ${x.after.toFixed(1).padStart(9)} ` +
      `${(x.after / x.before).toFixed(2).padStart(8)}`,
  );
}

console.log(
  `${"case".padEnd(34)} ${"before ms".padStart(9)} ${"after ms".padStart(9)} after/before`,
);
const sizes = values.quick ? [256, 1024] : [256, 512, 1024];
for (const n of sizes) {
  for (const dt of ["f32", "bf16", "f16", "e4m3"]) {
    await row(`matmul ${dt} ${n}`, ({ L }) => {
      const a = L.tensor(data(n * n, 1), { shape: [n, n], dtype: dt });
      const b = L.tensor(data(n * n, 2), { shape: [n, n], dtype: dt });
      return {
        run: () => L.tidy(() => void a.matmul(b).realize()),
        dispose: () => (a.dispose(), b.dispose()),
      };
    });
  }
}
const M4 = 4 * 2 ** 20;
await row("elementwise chain 4M", ({ L }) => {
  const [x, a, b, c] = [0, 1, 2, 3].map((i) => L.tensor(data(M4, 10 + i)));
  return {
    run: () => L.tidy(() => void x.mul(a).add(b).exp().mul(c).realize()),
    dispose: () => [x, a, b, c].forEach((t) => t.dispose()),
  };
});
await row("softmax 4096x1024", ({ L }) => {
  const x = L.tensor(data(4096 * 1024, 3, 4), { shape: [4096, 1024] });
  return { run: () => L.tidy(() => void x.softmax(-1).realize()), dispose: () => x.dispose() };
});
// reductions: over rows, everything, and column sums: the bench's row, and GPT-2's width at
// batch x context 8192 (a bias gradient), and a narrow model's at 16384 (parts of the rows)
await row("mean rows 4096x1024", ({ L }) => {
  const x = L.tensor(data(4096 * 1024, 8, 2), { shape: [4096, 1024] });
  return { run: () => L.tidy(() => void x.mean(-1).realize()), dispose: () => x.dispose() };
});
await row("sum 4M", ({ L }) => {
  const x = L.tensor(data(M4, 9, 2));
  return { run: () => L.tidy(() => void x.sum().realize()), dispose: () => x.dispose() };
});
for (const [R, C] of [[4096, 1024], [8192, 768], [16384, 128]]) {
  await row(`sum columns ${R}x${C}`, ({ L }) => {
    const x = L.tensor(data(R * C, 7, 2), { shape: [R, C] });
    return { run: () => L.tidy(() => void x.sum(0).realize()), dispose: () => x.dispose() };
  });
}
await row("layer norm 8192x512", ({ L }) => {
  const x = L.tensor(data(8192 * 512, 4, 2), { shape: [8192, 512] });
  const w = L.tensor(data(512, 5)), bias = L.tensor(data(512, 6));
  return {
    run: () => L.tidy(() => void L.layerNorm(x, [512], w, bias).realize()),
    dispose: () => [x, w, bias].forEach((t) => t.dispose()),
  };
});
for (const p of ["fp32", "bf16", "collage-light", "collage-plus"]) {
  await row(`optimizer adamw ${p} 10M`, ({ L }) => {
    const s = L.precisionStrategy(p);
    const params = Array.from({ length: 10 }, (_, i) => {
      const t = L.tensor(data(1e6, 100 + i, 0.02), { shape: [1000, 1000], dtype: s.param.name });
      t.requiresGrad = true;
      t.grad = L.tensor(data(1e6, 200 + i, 1e-3), { shape: [1000, 1000], dtype: s.grad.name });
      return t;
    });
    const opt = new L.AdamW(params, { lr: 1e-3, weightDecay: 0.01, precision: p });
    return {
      run: () => opt.step(),
      dispose: () => {
        opt.dispose();
        for (const t of params) (t.grad.dispose(), t.dispose());
      },
    };
  });
}
const CFG = { vocabSize: 100, blockSize: 64, nLayer: 4, nHead: 4, nEmbd: 128 };
for (const strategy of ["fp32", "amp-bf16", "collage-light", "fp8"]) {
  await row(`gpt step ${strategy}`, ({ L }) => {
    const amp = strategy.startsWith("amp-") ? strategy.slice(4) : null;
    const s = L.precisionStrategy(strategy);
    const model = new L.GPT({ ...CFG, seed: 1 }, { dtype: s.param.name });
    const opt = new L.AdamW(model.parameters(), {
      lr: 3e-3,
      weightDecay: 0.1,
      precision: strategy,
    });
    const ids = Int32Array.from(data(16 * 64, 7), (v) => Math.floor((v + 1) * 50) % 100);
    const x = L.tensor(ids, { shape: [16, 64] }),
      y = L.tensor(ids.map((v) => (v + 1) % 100), { shape: [16, 64] });
    const opts = amp ? { dtype: amp } : s.autocastOptions ?? null;
    return {
      run: () =>
        L.tidy(() => {
          const f = () => model.forward(x, y).loss.backward();
          if (opts) L.autocast(opts, f);
          else f();
          opt.step();
          opt.zeroGrad();
        }),
      dispose: () => {
        opt.dispose();
        for (const p of model.parameters()) (p.grad?.dispose(), p.dispose());
        x.dispose();
        y.dispose();
      },
    };
  });
}
if (rows.length === 0) Deno.exit(0);
const worst = rows.reduce((w, r) => (r.after / r.before > w.after / w.before ? r : w));
console.log(
  `worst row: ${worst.case} ${(worst.after / worst.before).toFixed(2)} (best of ${rounds})`,
);
