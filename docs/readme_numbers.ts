// Regenerates the README's measured numbers: runs the demo and the default train_gpt run
// on the default corpus (the fixed snapshot data/corpus.txt), then rewrites the README's
// paragraphs between `<!-- readme_numbers: NAME -->` and `<!-- /readme_numbers -->` from
// what the runs wrote, and copies the demo's chart to docs/demo_loss.svg. Nothing in those
// paragraphs is typed by hand, so they say what a user's run gives (times aside: they depend
// on the machine, which `--machine` describes).
//
//   deno run --allow-read=. --allow-write=out,README.md,docs docs/readme_numbers.ts
//   deno run --allow-read=. --allow-write=out,README.md,docs docs/readme_numbers.ts --only demo
//   deno run --allow-read=. --allow-write=README.md,docs docs/readme_numbers.ts --reuse
//
// --reuse rewrites the README from the outputs of an earlier run (out/readme/) without
// training again.
import { parseArgs } from "node:util";
import { GPT, ready } from "../mod.ts";
import { main as demoMain } from "../examples/demo.ts";
import { DEFAULT_CORPUS, loadCorpus, unigramEntropy } from "../examples/_text.ts";
import { DEFAULT_RUN } from "../examples/_train.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string", default: "out/readme" },
    only: { type: "string", default: "demo,train" },
    reuse: { type: "boolean", default: false },
    machine: { type: "string", default: "a 2-core machine shared with other jobs" },
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
await Deno.writeTextFile(`${ROOT}README.md`, readme);
console.log("README.md and docs/demo_loss.svg updated: run deno fmt README.md docs/demo_loss.svg");
