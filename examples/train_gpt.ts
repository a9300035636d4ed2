/**
 * Trains a character-level GPT on a text file (or, by default, on ulp's own source code),
 * printing the loss as it goes and a sample of generated text at the end.
 *
 * Run (narrow permissions: read the project and the data, nothing else):
 *   deno run --allow-read=. examples/train_gpt.ts --steps 300
 *   deno run --allow-read=. examples/train_gpt.ts --data input.txt.gz --layers 4 --width 128
 *   deno run --allow-read=. examples/train_gpt.ts --help
 */
import { AdamW, cosineWithWarmup, deviceInfo, GPT, manualSeed, tidy } from "../mod.ts";
import { fail as failWith, intFlag, type Option, parseCli } from "./_cli.ts";
import { Batches, CharTokenizer, evaluate, loadText, sample, unigramEntropy } from "./_text.ts";

/** The options, with their help text and defaults: `--help` is generated from this table. */
const OPTIONS: Record<string, Option> = {
  data: {
    type: "string",
    help: "text file to train on (.gz allowed); default: ulp's own source",
    default: "",
  },
  steps: { type: "string", help: "optimizer steps", default: "300" },
  batch: { type: "string", help: "sequences per batch", default: "16" },
  block: { type: "string", help: "context length", default: "64" },
  layers: { type: "string", help: "transformer blocks", default: "2" },
  heads: { type: "string", help: "attention heads", default: "4" },
  width: { type: "string", help: "embedding width", default: "128" },
  lr: { type: "string", help: "peak learning rate", default: "3e-3" },
  warmup: { type: "string", help: "warmup steps", default: "30" },
  seed: { type: "string", help: "random seed", default: "1" },
  "eval-every": { type: "string", help: "evaluate every N steps", default: "100" },
  "sample-tokens": { type: "string", help: "tokens to sample at the end", default: "300" },
  help: { type: "boolean", help: "show this help", default: false },
};

const PROGRAM = "train_gpt";
const fail = (msg: string): never => failWith(PROGRAM, msg);
const v = parseCli(PROGRAM, "deno run --allow-read=. examples/train_gpt.ts [options]", OPTIONS);
const int = (name: string, min = 1) => intFlag(PROGRAM, v, name, min);
const steps = int("steps"), batch = int("batch"), block = int("block");
const nLayer = int("layers"), nHead = int("heads"), nEmbd = int("width");
const warmup = int("warmup", 0),
  seed = int("seed", 0),
  evalEvery = int("eval-every");
const sampleTokens = int("sample-tokens", 0);
const lr = Number(v.lr);
if (!(lr > 0 && Number.isFinite(lr))) fail(`--lr must be a positive number, got '${v.lr}'`);
if (nEmbd % nHead !== 0) fail(`--width (${nEmbd}) must be divisible by --heads (${nHead})`);

const { text, source } = await loadText((v.data as string) || undefined).catch((e) =>
  fail(`cannot read the data: ${e.message}`)
);
const tok = new CharTokenizer(text);
const data = tok.encode(text);
const split = Math.floor(data.length * 0.9);
const train = data.subarray(0, split), val = data.subarray(split);
if (val.length < block + 2) {
  fail(`the text is too short (${data.length} characters) for --block ${block}`);
}
const h0 = unigramEntropy(train, val, tok.vocabSize);

const info = await deviceInfo();
console.log(`GPU: ${info.description}`);
console.log(`data: ${source}, ${data.length} characters, vocabulary ${tok.vocabSize}`);
console.log(`unigram entropy of the validation text: ${h0.toFixed(3)} nats`);

manualSeed(seed);
const model = new GPT({ vocabSize: tok.vocabSize, blockSize: block, nLayer, nHead, nEmbd, seed });
const params = model.parameters();
console.log(
  `model: ${nLayer} layers, ${nHead} heads, width ${nEmbd}, ${
    params.reduce((a, p) => a + p.size, 0)
  } parameters`,
);
const opt = new AdamW(params, { lr, betas: [0.9, 0.95], weightDecay: 0.1 });
const schedule = cosineWithWarmup({ warmupSteps: warmup, totalSteps: steps, minLr: lr / 10 });
const batches = new Batches(train, batch, block, seed);

const t0 = performance.now();
let last = t0;
for (let step = 1; step <= steps; step++) {
  for (const g of opt.paramGroups) g.lr = lr * schedule(step - 1);
  const loss = tidy(() => {
    const { x, y } = batches.next();
    const { loss } = model.forward(x, y);
    loss!.backward();
    opt.step();
    opt.zeroGrad();
    return loss!.detach();
  });
  if (step % 10 === 0 || step === 1 || step === steps) {
    const value = await loss.item();
    const now = performance.now();
    const tps = (batch * block * (step === 1 ? 1 : 10)) / ((now - last) / 1000);
    last = now;
    console.log(
      `step ${String(step).padStart(5)}  loss ${value.toFixed(4)}  ${tps.toFixed(0)} tok/s`,
    );
  }
  loss.dispose();
  if (step % evalEvery === 0 || step === steps) {
    const vl = await evaluate(model, val, batch, block, 8, 1234);
    console.log(
      `step ${String(step).padStart(5)}  val loss ${vl.toFixed(4)}  (unigram ${h0.toFixed(3)})`,
    );
  }
}
console.log(`trained ${steps} steps in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
if (sampleTokens > 0) {
  const prompt = tok.encode("export function ");
  const out = await sample(model, prompt, sampleTokens, { temperature: 0.8, topK: 20, seed });
  console.log(`\n--- sample ---\nexport function ${tok.decode(out)}\n---`);
}
