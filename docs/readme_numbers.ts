// Regenerates the README's measured numbers: runs the demo, the default train_gpt run and
// the precision comparison of the FP8 recipes and later strategies (precision_compare at its
// defaults, the issue-5 configuration) on the default corpus (the fixed snapshot
// data/corpus.txt), then rewrites the README's paragraphs between
// `<!-- readme_numbers: NAME -->` and `<!-- /readme_numbers -->` from what the runs wrote, and
// copies the demo's chart to docs/demo_loss.svg and the comparison's results and chart to
// docs/precision_compare_fp8.json and .svg. Nothing in those paragraphs is typed by hand, so
// they say what a user's run gives (times aside: they depend on the machine, which `--machine`
// describes).
//
//   deno run --allow-read=. --allow-write=out,README.md,docs docs/readme_numbers.ts
//   deno run --allow-read=. --allow-write=out,README.md,docs docs/readme_numbers.ts --only demo
//   deno run --allow-read=. --allow-write=out,README.md,docs docs/readme_numbers.ts --only compare
//   deno run --allow-read=. --allow-write=README.md,docs docs/readme_numbers.ts --reuse
//
// --reuse rewrites the README from the outputs of an earlier run (out/readme/) without
// training again; --compare a,b,... compares those strategies (amp-bf16 among them) instead of
// the default list. The comparison is one cell per strategy in out/readme/compare (13 to 25
// minutes each on lavapipe, 2 shared cores): cells already there are kept, and cells run elsewhere
// (`precision_compare.ts --strategies <one> --out out/readme/compare`, two at a time, or on a
// cluster) are merged.
import { parseArgs } from "node:util";
import { GPT, ready } from "../mod.ts";
import { main as demoMain } from "../examples/demo.ts";
import { DEFAULT_CORPUS, loadCorpus, unigramEntropy } from "../examples/_text.ts";
import { DEFAULT_RUN } from "../examples/_train.ts";
import { main as compareMain } from "../examples/precision_compare.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string", default: "out/readme" },
    only: { type: "string", default: "demo,train,compare" },
    reuse: { type: "boolean", default: false },
    machine: { type: "string", default: "a 2-core machine shared with other jobs" },
    compare: { type: "string", default: "" },
  },
  strict: true,
});
const out = `${ROOT}${v.out}`;
const only = new Set(String(v.only).split(","));

const int = (n: number) => n.toLocaleString("en-US");
/** The default corpus, described: what both paragraphs train on. */
const corpusText = (characters: number, distinct: number) =>
  `a snapshot of ulp's own source (\`${DEFAULT_CORPUS}\`, ${int(characters)} characters, ` +
  `${distinct} distinct)`;
const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** The number of parameters of the default-size character GPT on the default corpus. */
async function parameters(nLayer: number, nHead: number, nEmbd: number, block: number) {
  await ready();
  const corpus = await loadCorpus();
  const model = new GPT({
    vocabSize: corpus.tokenizer.vocabSize,
    blockSize: block,
    nLayer,
    nHead,
    nEmbd,
    seed: 0,
  });
  const n = model.parameters().reduce((a, p) => a + p.size, 0);
  for (const p of model.parameters()) p.dispose();
  return n;
}

interface DemoResults {
  corpus: { source: string; characters: number; distinct: number; unigramEntropy: number };
  config: { steps: number; nLayer: number; nHead: number; nEmbd: number; block: number };
  gpu: string;
  seconds: number;
  /** Which curve of the chart lies under another, in words ("" when none). */
  hidden: string;
  results: {
    strategy: string;
    valLoss: number;
    imprecision: number;
    lostAtEnd: number;
    bytesPerParam: number;
  }[];
}

async function demoParagraph(): Promise<string> {
  if (!v.reuse) {
    const code = await demoMain(["--out", `${v.out}/demo`]);
    if (code !== 0) throw new Error(`the demo failed (exit code ${code})`);
  }
  const r: DemoResults = JSON.parse(await Deno.readTextFile(`${out}/demo/results.json`));
  const get = (n: string) => r.results.find((x) => x.strategy === n)!;
  const [bf16, collage, amp] = [get("bf16"), get("collage-light"), get("amp-bf16")];
  const c = r.config;
  const params = await parameters(c.nLayer, c.nHead, c.nEmbd, c.block);
  await Deno.copyFile(`${out}/demo/loss.svg`, `${ROOT}docs/demo_loss.svg`);
  const hidden = r.hidden;
  return `_The demo's chart (\`deno task demo\`, ${c.steps} steps per strategy, ` +
    `${Math.round(r.seconds / 60)} minutes on ${v.machine}, through Mesa's software GPU): a ` +
    `${c.nLayer}-layer GPT of ${int(params)} parameters trained three times on the same ` +
    `batches of ${
      corpusText(r.corpus.characters, r.corpus.distinct)
    }. Pure bf16 (8 bytes per parameter with AdamW) rounds away ` +
    `${pct(bf16.imprecision)} of its weight updates, ${pct(bf16.lostAtEnd)} by the end as the ` +
    `learning rate decays, and ends at validation loss ${bf16.valLoss.toFixed(3)} against ` +
    `${amp.valLoss.toFixed(3)} for the run with f32 master weights (amp-bf16, 16 bytes). ` +
    `Collage-light keeps what rounding drops in a second bf16 number (10 bytes), loses ` +
    `${pct(collage.imprecision)} of its updates and reaches ${collage.valLoss.toFixed(3)}` +
    `${hidden ? `; in the chart, ${hidden}` : ""}. (These numbers come from ` +
    "`docs/readme_numbers.ts`.)_";
}

async function trainParagraph(): Promise<string> {
  const steps = 200, warmup = 20, every = 50;
  if (!v.reuse) {
    await Deno.remove(`${out}/train`, { recursive: true }).catch(() => {});
    const args = ["--steps", `${steps}`, "--warmup", `${warmup}`, "--eval-every", `${every}`];
    const { main: trainMain } = await import("../examples/train_gpt.ts");
    const code = await trainMain([...args, "--out", `${v.out}/train`]);
    if (code !== 0) throw new Error(`train_gpt failed (exit code ${code})`);
  }
  const lines = (await Deno.readTextFile(`${out}/train/log.jsonl`)).split("\n").filter(Boolean)
    .map((l) => JSON.parse(l));
  const stepLines = lines.filter((l) => l.type === "step" && typeof l.loss === "number");
  const evals = new Map<number, number>(
    lines.filter((l) => l.type === "eval").map((l) => [l.step, l.valLoss]),
  );
  const seconds = stepLines.reduce((a, l) => a + (l.ms ?? 0), 0) / 1000;
  const c = DEFAULT_RUN;
  const corpus = await loadCorpus();
  const h0 = unigramEntropy(corpus.train, corpus.val, corpus.tokenizer.vocabSize);
  const params = await parameters(c.nLayer, c.nHead, c.nEmbd, c.block);
  const tokens = steps * c.batch * c.block;
  return `Measured here (${v.machine}, lavapipe): the default run — a ${c.nLayer}-layer, ` +
    `${c.nHead}-head, width-${c.nEmbd} GPT (${int(params)} parameters) on ` +
    `${corpusText(corpus.train.length + corpus.val.length, corpus.tokenizer.vocabSize)}, ` +
    `batch ${c.batch}, context ${c.block}, AdamW at ${c.lr.toExponential()} with ${warmup} warmup steps, ${steps} steps — took ${
      Math.round(seconds)
    } s ` +
    `(about ${Math.round(tokens / seconds / 10) * 10} tokens/s) and brought the training loss ` +
    `from ${stepLines[0].loss.toFixed(1)} to a validation loss of ` +
    `**${evals.get(steps)?.toFixed(2)} nats**, against a unigram entropy of ` +
    `**${h0.toFixed(2)} nats** (val loss ${evals.get(every)?.toFixed(2)} after ${every} ` +
    `steps, ${evals.get(3 * every)?.toFixed(2)} after ${3 * every}):`;
}

/**
 * The strategies of the comparison block: amp-bf16 (the reference), fp8 and each FP8 recipe's
 * strategy, and the strategies added after the issue-5 table (bf16-sr, msamp-o2).
 */
const COMPARE_ALL = [
  "amp-bf16",
  "fp8",
  "fp8-current",
  "fp8-rowwise",
  "fp8-block",
  "fp8-mxfp8",
  "fp8-nvfp4",
  "bf16-sr",
  "msamp-o2",
];

/** The strategies compared: `--compare a,b,...` (amp-bf16 among them), or all of COMPARE_ALL. */
const COMPARE = v.compare ? String(v.compare).split(",") : COMPARE_ALL;

interface CompareResults {
  config: string;
  results: {
    strategy: string;
    valLoss: number;
    imprecision: number;
    edqRatio: number;
    bytesPerParam: number;
    msPerStep: number;
  }[];
}

async function compareParagraph(): Promise<string> {
  const dir = `${v.out}/compare`;
  const args = ["--strategies", COMPARE.join(","), "--out", dir];
  if (!v.reuse) {
    const code = await compareMain(args);
    if (code !== 0) throw new Error(`precision_compare failed (exit code ${code})`);
  }
  const text = await Deno.readTextFile(`${out}/compare/results.json`);
  const r: CompareResults = JSON.parse(text);
  // the docs keep every 10th step's training loss (results.json has every step)
  const every10 = JSON.parse(text) as { results: { losses: [number, number][] }[] };
  for (const x of every10.results) x.losses = x.losses.filter(([step]) => step % 10 === 0);
  await Deno.writeTextFile(
    `${ROOT}docs/precision_compare_fp8.json`,
    JSON.stringify(every10, null, 2) + "\n",
  );
  await Deno.copyFile(`${out}/compare/loss.svg`, `${ROOT}docs/precision_compare_fp8.svg`);
  const base = r.results.find((x) => x.strategy === "amp-bf16")!;
  const rel = (x: number) => {
    const d = Math.round(10000 * (x / base.valLoss - 1)) / 100; // percent, 2 decimals
    return `${d > 0 ? "+" : d < 0 ? "−" : ""}${Math.abs(d).toFixed(2)}%`;
  };
  const num = (x: number, d: number) => (Number.isFinite(x) ? x.toFixed(d) : "n/a");
  const rows = r.results.map((x) => [
    x.strategy,
    x.valLoss.toFixed(4),
    x === base ? "—" : rel(x.valLoss),
    Number.isFinite(x.imprecision) ? pct(x.imprecision) : "n/a",
    num(x.edqRatio, 3),
    `${Math.round(x.bytesPerParam * 100) / 100}`,
    x.msPerStep.toFixed(0),
  ]);
  const head = ["strategy", "val loss", "vs amp-bf16", "updates lost", "EDQ ratio", "bytes/param"];
  const table = [
    `| ${[...head, "ms/step"].join(" | ")} |`,
    `|${" --- |".repeat(head.length + 1)}`,
    ...rows.map((c) => `| ${c.join(" | ")} |`),
  ].join("\n");
  const fp8 = r.results.filter((x) => x.strategy.startsWith("fp8"));
  const off = (x: { valLoss: number }) => Math.abs(x.valLoss - base.valLoss);
  const sorted = [...fp8].sort((a, b) => off(a) - off(b));
  const [best, worst] = [sorted[0], sorted[sorted.length - 1]];
  const bytes = fp8.map((x) => Math.round(x.bytesPerParam)).filter((b, i, a) => a.indexOf(b) === i);
  const get = (n: string) => r.results.find((x) => x.strategy === n);
  const [sr, ms, pure] = [get("bf16-sr"), get("msamp-o2"), get("bf16")];
  const corpus = await loadCorpus();
  const notes = [
    `Every FP8 strategy keeps f32 master weights, gradients and AdamW states ` +
    `(${bytes.join(", ")} bytes per parameter; the FP8 copies of the GEMM inputs are transient ` +
    `casts), so its distance to amp-bf16 is what quantising the GEMM inputs costs: ` +
    `${best.strategy} ends closest (${rel(best.valLoss)}), ${worst.strategy} farthest ` +
    `(${rel(worst.valLoss)}).`,
  ];
  if (sr) {
    notes.push(
      `bf16-sr (${Math.round(sr.bytesPerParam)} bytes) ends ${rel(sr.valLoss)} from amp-bf16; ` +
        `${pct(sr.imprecision)} of its weights stay unchanged in a step, yet its EDQ ratio is ` +
        `${num(sr.edqRatio, 3)}: what one step drops, the next ones make up in expectation` +
        (pure
          ? ` (pure bf16, rounding to nearest: ${rel(pure.valLoss)}, ${pct(pure.imprecision)} ` +
            `lost, EDQ ratio ${num(pure.edqRatio, 3)})`
          : "") +
        ".",
    );
  }
  if (ms) {
    notes.push(
      `msamp-o2 (${Math.round(ms.bytesPerParam)} bytes: f16 weights, e4m3 m and f16 v with a ` +
        `scale per tensor, FP8 GEMMs) ends ${rel(ms.valLoss)} from amp-bf16 and loses ` +
        `${pct(ms.imprecision)} of its updates in its f16 weights.`,
    );
  }
  return `_Measured with \`docs/readme_numbers.ts --only compare\`, which runs ` +
    `\`precision_compare.ts ${args.slice(0, 2).join(" ")}\` at its defaults (${r.config}) on ` +
    `${corpusText(corpus.train.length + corpus.val.length, corpus.tokenizer.vocabSize)}, ` +
    `one run (seed 1) per strategy, each a cell, on ${v.machine} (lavapipe), so read ms/step ` +
    `as rough. The table ` +
    `above was measured on ulp's source as it was then, this one on the fixed snapshot: ` +
    `compare rows within one table. Full results: ` +
    `[docs/precision_compare_fp8.json](docs/precision_compare_fp8.json)._\n\n${table}\n\n` +
    `![Training loss: amp-bf16, fp8 and its recipes, bf16-sr, msamp-o2]` +
    `(docs/precision_compare_fp8.svg)\n\n${notes.join(" ")}`;
}

/** Replaces the text between the markers of `name` (keeping the markers). */
function replaceBlock(readme: string, name: string, text: string): string {
  const begin = `<!-- readme_numbers: ${name} -->`, end = "<!-- /readme_numbers -->";
  const i = readme.indexOf(begin);
  const j = readme.indexOf(end, i);
  if (i < 0 || j < 0) throw new Error(`README.md has no block '${begin}' ... '${end}'`);
  return `${readme.slice(0, i + begin.length)}\n\n${text}\n\n${readme.slice(j)}`;
}

let readme = await Deno.readTextFile(`${ROOT}README.md`);
if (only.has("demo")) readme = replaceBlock(readme, "demo", await demoParagraph());
if (only.has("train")) readme = replaceBlock(readme, "train", await trainParagraph());
if (only.has("compare")) readme = replaceBlock(readme, "compare", await compareParagraph());
await Deno.writeTextFile(`${ROOT}README.md`, readme);
console.log(
  "README.md, docs/demo_loss.svg and docs/precision_compare_fp8.* updated: run deno fmt " +
    "README.md docs/",
);
