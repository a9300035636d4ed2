// GPT-2 weights in the examples, end to end on the small fixture (tests/fixtures/gpt2_tiny,
// written by PyTorch; its vocabulary is GPT-2's first 1024 tokens, so the text below, made of
// common English words, stays in range): examples/finetune.ts fine-tunes it under several
// strategies from the same weights and writes the report and Hugging Face exports;
// train_gpt --init-from / --model / --tokenizer and sample.ts read GPT-2 checkpoints and
// tokens. A few steps each, a few seconds.
import assert from "node:assert/strict";
import { main as finetune } from "../../examples/finetune.ts";
import { main as trainGpt } from "../../examples/train_gpt.ts";
import { main as sampleMain } from "../../examples/sample.ts";
import type { CliIO } from "../../examples/_cli.ts";
import { Batches, evaluate, GPT2Tokenizer, loadCorpus } from "../../examples/_text.ts";
import { fromPretrained, noGrad, readCheckpoint, tidy } from "../../mod.ts";

const FIXTURE = new URL("../fixtures/gpt2_tiny", import.meta.url).pathname;
const DIR = "./.test-tmp/finetune_test";
await Deno.remove(DIR, { recursive: true }).catch(() => {});
await Deno.mkdir(DIR, { recursive: true });
const DATA = `${DIR}/text.txt`;
const SENTENCES = [
  "we can see that it is not the same.",
  "they will go to the new one.",
  "it was not for you and we have all of this.",
  "what do you see?",
  "the one that is on the first of them.",
  "we will have to be there.",
  "he said that this is a good one.",
  "you can do it all.",
  "there is more to see.",
  "it will be the last one.",
];
let text = "";
for (let i = 0; i < 300; i++) {
  text += " " + SENTENCES[(i * 7 + (i >> 2)) % SENTENCES.length] + (i % 5 === 4 ? "\n" : "");
}
await Deno.writeTextFile(DATA, text);

/** Runs a command's main, capturing its output. */
async function run(
  main: (args: string[], io: CliIO) => Promise<number>,
  args: string[],
): Promise<{ code: number; out: string; err: string }> {
  let out = "", err = "";
  const io: CliIO = { log: (t) => (out += t + "\n"), error: (t) => (err += t + "\n") };
  const code = await main(args, io);
  return { code, out, err };
}

const SMALL = ["--steps", "4", "--batch", "4", "--block", "16", "--lr", "1e-3", "--warmup", "1"];

Deno.test("the test text is GPT-2 tokens within the fixture's vocabulary", () => {
  const ids = new GPT2Tokenizer().encode(text);
  assert.ok(Math.max(...ids) < 1024, `largest id ${Math.max(...ids)}`);
});

Deno.test("finetune: fp32, bf16 and collage-light from the same GPT-2 weights, a report, and exports PyTorch's layout reads back", async () => {
  const out = `${DIR}/run`;
  const r = await run(finetune, [
    "--init-from",
    FIXTURE,
    "--data",
    DATA,
    "--strategies",
    "fp32,bf16,collage-light",
    ...SMALL,
    "--diag-every",
    "2",
    "--eval-batches",
    "2",
    "--sample-tokens",
    "8",
    "--export",
    "--out",
    out,
  ]);
  assert.equal(r.code, 0, r.err);
  const records = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  const evals = new Map(
    records.filter((x) => x.type === "eval").map((x) => [x.strategy, x.valLoss as number]),
  );
  assert.deepEqual([...evals.keys()], ["pretrained", "fp32", "bf16", "collage-light"]);

  // "before": the pretrained model's loss on the validation batches, recomputed here
  const corpus = await loadCorpus(DATA, undefined, { tokenizer: "gpt2" });
  const model = await fromPretrained(FIXTURE);
  const before = await evaluate(model, corpus.val, 4, 16, 2, 1234);
  assert.equal(evals.get("pretrained"), before);
  // the same weights and the same first batch: fp32's first loss is the f32 model's
  const { x, y } = new Batches(corpus.train, 4, 16, 1).next();
  const first = await noGrad(() => tidy(() => model.forward(x, y).loss!)).item();
  const steps = (s: string) => records.filter((x) => x.type === "step" && x.strategy === s);
  assert.equal(steps("fp32")[0].loss, first);
  assert.ok(Math.abs(steps("bf16")[0].loss - first) < 0.05 * first);
  for (const p of model.parameters()) p.dispose();
  for (const s of ["fp32", "bf16", "collage-light"]) {
    assert.deepEqual(steps(s).map((x) => x.step), [1, 2, 3, 4]);
    assert.ok(evals.get(s)! < before - 0.5, `${s}: ${evals.get(s)} after, ${before} before`);
  }
  // what each precision lost: fp32 and Collage almost nothing (a few weights whose update is
  // below their own ulp), pure bf16 a part of its updates
  const lost = (s: string) => steps(s).filter((x) => x.imprecision !== undefined);
  assert.equal(lost("bf16").length, 2);
  assert.ok(lost("fp32").every((x) => x.imprecision < 1e-4));
  assert.ok(lost("collage-light").every((x) => x.imprecision < 0.01));
  assert.ok(lost("bf16").every((x) => x.imprecision > 0.05));

  const report = await Deno.readTextFile(`${out}/report.md`);
  assert.match(
    report,
    new RegExp(
      `\\| pretrained \\(f32\\) \\| ${before.toFixed(4)} \\| ${Math.exp(before).toFixed(2)} \\|`,
    ),
  );
  for (const [s, bytes] of [["fp32", 16], ["bf16", 8], ["collage-light", 10]] as const) {
    const v = evals.get(s)!;
    assert.match(
      report,
      new RegExp(`\\| ${s} \\| ${v.toFixed(4)} \\| ${Math.exp(v).toFixed(2)} \\|`),
    );
    assert.match(report, new RegExp(`\\| ${s} \\| ${v.toFixed(4)} \\|[^\\n]*\\| ${bytes} \\|`));
  }
  assert.match(await Deno.readTextFile(`${out}/loss.svg`), /^<svg/);
  const samples = await Deno.readTextFile(`${out}/sample.txt`);
  assert.deepEqual([...samples.matchAll(/^--- (.+) ---$/gm)].map((m) => m[1]), [
    "fp32",
    "bf16",
    "collage-light",
  ]);

  // the fp32 export is the trained model: reloaded, it scores the reported validation loss
  const back = await fromPretrained(`${out}/fp32`);
  assert.equal(await evaluate(back, corpus.val, 4, 16, 2, 1234), evals.get("fp32"));
  for (const p of back.parameters()) p.dispose();
  for (const s of ["bf16", "collage-light"]) {
    const cfg = JSON.parse(await Deno.readTextFile(`${out}/${s}/config.json`));
    assert.equal(cfg.n_embd, 64);
  }
  const sampled = await run(sampleMain, [
    "--ckpt",
    `${out}/collage-light`,
    "--prompt",
    " we can",
    "--tokens",
    "5",
  ]);
  assert.equal(sampled.code, 0, sampled.err);
  assert.ok(sampled.out.startsWith(" we can"));
});

Deno.test("finetune refuses bad usage with one line naming the flag", async () => {
  const cases: [string[], RegExp][] = [
    [["--data", DATA], /--init-from is required/],
    [["--init-from", FIXTURE, "--data", DATA, "--strategies", "bf16"], /two or more/],
    [["--init-from", FIXTURE, "--data", DATA, "--block", "65"], /--block 65 exceeds .* 64/],
  ];
  for (const [args, msg] of cases) {
    const r = await run(finetune, [...args, "--out", `${DIR}/bad`]);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, msg);
  }
  // text beyond the checkpoint's vocabulary is named by its token
  const wide = `${DIR}/wide.txt`;
  await Deno.writeTextFile(wide, text + " photosynthesis");
  const r = await run(finetune, [
    "--init-from",
    FIXTURE,
    "--data",
    wide,
    "--block",
    "16",
    "--out",
    `${DIR}/bad`,
  ]);
  assert.equal(r.code, 2);
  assert.match(r.err, /the GPT-2 token \d+ \(".*"\), beyond the checkpoint's vocabulary of 1024/);
});

Deno.test("train_gpt --init-from fine-tunes GPT-2 weights, records the model and tokenizer, and resumes bit for bit", async () => {
  const base = ["--init-from", FIXTURE, "--data", DATA, ...SMALL, "--precision", "bf16"];
  const opts = ["--eval-every", "2", "--sample-tokens", "4"];
  const full = `${DIR}/tg-full`, half = `${DIR}/tg-half`;
  const a = await run(trainGpt, [...base, ...opts, "--out", full]);
  assert.equal(a.code, 0, a.err);
  assert.match(a.out, /gpt2 tokens, vocabulary 50257/);
  assert.match(a.out, /model: 2 layers, 4 heads, width 64, context 16, 169728 parameters/);
  const b = await run(trainGpt, [...base, ...opts, "--out", half, "--stop-after", "2"]);
  assert.equal(b.code, 0, b.err);
  const info = await readCheckpoint(`${half}/checkpoint.json`);
  const meta = info.meta as Record<string, Record<string, unknown>>;
  assert.equal(meta.tokenizer as unknown, "gpt2");
  assert.equal(meta.model.gelu, "tanh");
  assert.equal(meta.model.vocabSize, 1024);
  assert.equal(meta.model.blockSize, 64);
  const c = await run(trainGpt, ["--resume", half]);
  assert.equal(c.code, 0, c.err);
  const losses = async (d: string) =>
    (await Deno.readTextFile(`${d}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l))
      .map((r) => [r.type, r.step, r.loss ?? r.valLoss]);
  assert.deepEqual(await losses(half), await losses(full));
  // the first loss is the pretrained model's on the first batch (in bf16: within its rounding)
  const corpus = await loadCorpus(DATA, undefined, { tokenizer: "gpt2" });
  const model = await fromPretrained(FIXTURE);
  const { x, y } = new Batches(corpus.train, 4, 16, 1).next();
  const want = await noGrad(() => tidy(() => model.forward(x, y).loss!)).item();
  for (const p of model.parameters()) p.dispose();
  const first = (await losses(full))[0][2] as number;
  assert.ok(Math.abs(first - want) < 0.02 * want, `first loss ${first}, f32 ${want}`);
  // the token stream was cached beside the output, as raw u16 GPT-2 ids
  const bins = [...Deno.readDirSync(full)].filter((e) => e.name.endsWith(".u16.bin"));
  assert.equal(bins.length, 1);
  const ids = new GPT2Tokenizer().encode(text);
  assert.equal(Deno.statSync(`${full}/${bins[0].name}`).size, 2 * ids.length);
  // sample.ts decodes with the checkpoint's tokenizer
  const s = await run(sampleMain, ["--ckpt", full, "--prompt", " we can", "--tokens", "4"]);
  assert.equal(s.code, 0, s.err);
  assert.ok(s.out.startsWith(" we can"));
});

Deno.test("train_gpt --model and --tokenizer: a preset's size on GPT-2 tokens, and bad combinations named", async () => {
  const out = `${DIR}/tg-preset`;
  const r = await run(trainGpt, [
    "--model",
    "char-tiny",
    "--tokenizer",
    "gpt2",
    "--data",
    DATA,
    ...SMALL,
    "--steps",
    "2",
    "--sample-tokens",
    "0",
    "--out",
    out,
  ]);
  assert.equal(r.code, 0, r.err);
  // char-tiny: 2 layers, width 64, over GPT-2's 50257 tokens, context 32 (its own, > --block)
  const n = 50257 * 64 + 32 * 64 + 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64;
  assert.match(
    r.out,
    new RegExp(`model: 2 layers, 4 heads, width 64, context 16, ${n} parameters`),
  );
  const bad: [string[], RegExp][] = [
    [["--model", "gpt2", "--layers", "2"], /--model sets the model's size; leave out --layers/],
    [["--model", "gpt5"], /--model unknown value 'gpt5'; valid: gpt2, gpt2-medium/],
    [["--init-from", FIXTURE, "--tokenizer", "char"], /reads GPT-2's tokens; use --tokenizer gpt2/],
    [["--init-from", FIXTURE, "--model", "gpt2"], /leave out --model/],
    [["--tokenizer", "bpe"], /--tokenizer unknown value 'bpe'; valid: char, gpt2/],
    [["--init-from", FIXTURE, "--block", "128"], /--block 128 exceeds the model's context of 64/],
  ];
  for (const [args, msg] of bad) {
    const b = await run(trainGpt, [...args, "--data", DATA, "--out", `${DIR}/bad`]);
    assert.equal(b.code, 2, `${args.join(" ")}: ${b.err}`);
    assert.match(b.err, msg);
  }
});
