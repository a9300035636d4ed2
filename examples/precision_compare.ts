/**
 * Trains the same character GPT with the same seed under every precision strategy and
 * writes what each one costs and loses: final validation loss, imprecision (fraction of
 * updates lost), EDQ ratio, bytes per parameter, step time, as a Markdown table, JSON and an
 * SVG chart of the loss curves (Collage, Yu et al. ICML 2024; DESIGN.md section 4).
 *
 * Run (reads the project, writes only the output folder):
 *   deno run --allow-read=. --allow-write=out examples/precision_compare.ts --steps 600 --out out/compare
 *   deno run --allow-read=. --allow-write=out examples/precision_compare.ts --help
 */
import {
  AdamW,
  applyPrecision,
  autocast,
  cosineWithWarmup,
  type Diagnostics,
  getRuntime,
  GPT,
  GradScaler,
  manualSeed,
  memory,
  precisionNames,
  precisionStrategy,
  tidy,
} from "../mod.ts";
import { fail as failWith, intFlag, type Option, parseCli } from "./_cli.ts";
import { Batches, CharTokenizer, evaluate, loadText, unigramEntropy } from "./_text.ts";
import { lineChart } from "./_chart.ts";

const OPTIONS: Record<string, Option> = {
  strategies: {
    type: "string",
    help: `comma-separated strategies (${precisionNames().join(", ")})`,
    default: precisionNames().join(","),
  },
  data: { type: "string", help: "text file (.gz allowed); default: ulp's own source", default: "" },
  steps: { type: "string", help: "optimizer steps per strategy", default: "600" },
  batch: { type: "string", help: "sequences per batch", default: "16" },
  block: { type: "string", help: "context length", default: "64" },
  layers: { type: "string", help: "transformer blocks", default: "2" },
  heads: { type: "string", help: "attention heads", default: "4" },
  width: { type: "string", help: "embedding width", default: "128" },
  lr: {
    type: "string",
    help: "peak learning rate (small enough that pure bf16 loses updates)",
    default: "3e-4",
  },
  warmup: { type: "string", help: "warmup steps", default: "50" },
  seed: { type: "string", help: "random seed", default: "1" },
  "diag-every": { type: "string", help: "collect diagnostics every N steps", default: "10" },
  out: { type: "string", help: "output folder", default: "out/compare" },
  help: { type: "boolean", help: "show this help", default: false },
};

const PROGRAM = "precision_compare";
const fail = (msg: string): never => failWith(PROGRAM, msg);
const v = parseCli(
  PROGRAM,
  "deno run --allow-read=. --allow-write=out examples/precision_compare.ts [options]",
  OPTIONS,
);
const int = (name: string, min = 1) => intFlag(PROGRAM, v, name, min);
const steps = int("steps"), batch = int("batch"), block = int("block"), nLayer = int("layers");
const nHead = int("heads"), nEmbd = int("width"), warmup = int("warmup", 0), seed = int("seed", 0);
const diagEvery = int("diag-every");
const lr = Number(v.lr);
if (!(lr > 0)) fail(`--lr must be a positive number, got '${v.lr}'`);
const names = String(v.strategies).split(",").map((s) => s.trim()).filter(Boolean);
for (const n of names) {
  if (!precisionNames().includes(n)) {
    fail(`--strategies: unknown strategy '${n}'; valid: ${precisionNames().join(", ")}`);
  }
}
const out = String(v.out);

const { text, source } = await loadText(String(v.data) || undefined).catch((e) =>
  fail(`cannot read the data: ${e.message}`)
);
const tok = new CharTokenizer(text);
const data = tok.encode(text);
const split = Math.floor(data.length * 0.9);
const train = data.subarray(0, split), val = data.subarray(split);
const rt = await getRuntime();
console.log(
  `GPU: ${rt.info.description}; data: ${source}; unigram entropy ${
    unigramEntropy(train, val, tok.vocabSize).toFixed(3)
  } nats`,
);

interface Result {
  strategy: string;
  valLoss: number;
  imprecision: number;
  edqRatio: number;
  bytesPerParam: number;
  castBytes: number;
  msPerStep: number;
  losses: [number, number][];
}
const results: Result[] = [];

for (const name of names) {
  const strat = precisionStrategy(name);
  manualSeed(seed);
  const model = applyPrecision(
    new GPT({ vocabSize: tok.vocabSize, blockSize: block, nLayer, nHead, nEmbd, seed }),
    name,
  );
  const params = model.parameters();
  const nParams = params.reduce((a, p) => a + p.size, 0);
  const opt = new AdamW(params, { lr, betas: [0.9, 0.95], weightDecay: 0.1, precision: name });
  const scaler = strat.gradScaler ? new GradScaler() : null;
  const schedule = cosineWithWarmup({
    warmupSteps: Math.min(warmup, steps),
    totalSteps: steps,
    minLr: lr / 10,
  });
  const batches = new Batches(train, batch, block, seed);
  const losses: [number, number][] = [];
  const diags: Diagnostics[] = [];
  let castBytes = 0, bytesPerParam = 0;
  const t0 = performance.now();
  for (let step = 1; step <= steps; step++) {
    for (const g of opt.paramGroups) g.lr = lr * schedule(step - 1);
    const diagnostics = step % diagEvery === 0;
    const loss = tidy(() => {
      const { x, y } = batches.next();
      const forward = () => model.forward(x, y).loss!;
      const l = strat.autocast ? autocast({ dtype: strat.autocast }, forward) : forward();
      if (step === 2) castBytes = memory().byPurpose.casts ?? 0;
      (scaler ? scaler.scale(l) : l).backward();
      if (scaler) {
        scaler.step(opt);
        scaler.update();
      } else {
        opt.step({ diagnostics });
      }
      if (step === 2) {
        const m = memory().byPurpose;
        bytesPerParam = ((m.params ?? 0) + (m.grads ?? 0) + (m.optimizer ?? 0)) / nParams;
      }
      opt.zeroGrad();
      return l.detach();
    });
    if (diagnostics && !scaler) {
      const d = await opt.diagnostics();
      if (d) diags.push(d);
    }
    if (step % 10 === 0 || step === steps) {
      losses.push([step, await loss.item()]);
      const last = losses[losses.length - 1][1];
      Deno.stdout.writeSync(
        new TextEncoder().encode(
          `\r${name.padEnd(14)} step ${step}/${steps} loss ${last.toFixed(4)}   `,
        ),
      );
    }
    loss.dispose();
  }
  const msPerStep = (performance.now() - t0) / steps;
  const valLoss = await evaluate(model, val, batch, block, 16, 1234);
  const updated = diags.reduce((a, d) => a + d.updated, 0),
    lost = diags.reduce((a, d) => a + d.lost, 0);
  const dot = diags.reduce((a, d) => a + d.dotEU, 0), nu = diags.reduce((a, d) => a + d.normU2, 0);
  results.push({
    strategy: name,
    valLoss,
    imprecision: updated ? lost / updated : NaN,
    edqRatio: nu ? dot / nu : NaN,
    bytesPerParam,
    castBytes,
    msPerStep,
    losses,
  });
  console.log(
    `\r${name.padEnd(14)} val loss ${valLoss.toFixed(4)}  ${
      msPerStep.toFixed(0)
    } ms/step              `,
  );
  for (const p of model.parameters()) p.dispose();
  opt.dispose();
  scaler?.dispose();
}

const ref = results.find((r) => r.strategy === "amp-bf16") ?? results[0];
const fmt = (x: number, d = 4) => (Number.isFinite(x) ? x.toFixed(d) : "n/a");
const pct = (x: number, d: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(d)}%` : "n/a");
const rows = results.map((r) =>
  `| ${r.strategy} | ${fmt(r.valLoss)} | ${pct(r.valLoss / ref.valLoss - 1, 2)} | ${
    pct(r.imprecision, 1)
  } | ${fmt(r.edqRatio, 3)} | ${r.bytesPerParam.toFixed(0)} | ${r.msPerStep.toFixed(0)} |`
);
const table = [
  `| strategy | val loss | vs ${ref.strategy} | updates lost | EDQ ratio | bytes/param | ms/step |`,
  "|---|---|---|---|---|---|---|",
  ...rows,
].join("\n");
await Deno.mkdir(out, { recursive: true });
const cfg =
  `${nLayer} layers, ${nHead} heads, width ${nEmbd}, context ${block}, batch ${batch}, AdamW betas 0.9/0.95, lr ${lr} (${warmup} warmup, cosine), ${steps} steps, seed ${seed}`;
await Deno.writeTextFile(
  `${out}/report.md`,
  `# Precision strategies compared\n\n${cfg}; data: ${source}; GPU: ${rt.info.description}.\n\n${table}\n\n![loss](loss.svg)\n\nUpdates lost and EDQ are measured every ${diagEvery} steps on the device (amp-f16 steps through the GradScaler and has none).\n`,
);
await Deno.writeTextFile(`${out}/results.json`, JSON.stringify({ config: cfg, results }, null, 2));
await Deno.writeTextFile(
  `${out}/loss.svg`,
  lineChart(results.map((r) => ({ name: r.strategy, points: r.losses })), {
    title: "Training loss by precision strategy",
    xLabel: "step",
    yLabel: "loss (nats)",
  }),
);
console.log(`\n${table}\n\nwrote ${out}/report.md, results.json and loss.svg`);
