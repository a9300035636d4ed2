// examples/sample.ts: text from a train_gpt checkpoint. Greedy sampling (top-k 1) equals the
// argmax continuation computed here from the model's logits; top-k k only ever picks one of
// the k likeliest characters; the same seed gives the same text; bad flags exit 2.
import assert from "node:assert/strict";
import { main } from "../../examples/sample.ts";
import { loadCorpus } from "../../examples/_text.ts";
import { DEFAULT_RUN, Trainer } from "../../examples/_train.ts";
import { applyPrecision, GPT, loadCheckpoint, noGrad, tensor } from "../../mod.ts";

const DIR = "./.test-tmp/sample_test";
await Deno.mkdir(DIR, { recursive: true });
await Deno.writeTextFile(
  `${DIR}/text.txt`,
  Array.from({ length: 300 }, (_, i) => ["ab", "cab", "bca d", "dd"][(i * 7) % 4]).join(" "),
);
const corpus = await loadCorpus(`${DIR}/text.txt`);
const CONFIG = {
  ...DEFAULT_RUN,
  precision: "bf16",
  nLayer: 1,
  nHead: 2,
  nEmbd: 16,
  block: 8,
  batch: 4,
  steps: 3,
  warmup: 1,
  lr: 1e-2,
};
const CKPT = `${DIR}/run/checkpoint.json`;
{
  const trainer = new Trainer(CONFIG, corpus);
  for (let i = 0; i < 3; i++) await trainer.trainStep();
  await trainer.save(CKPT);
  trainer.dispose();
}

async function run(args: string[]): Promise<{ code: number; out: string[]; err: string[] }> {
  const out: string[] = [], err: string[] = [];
  const code = await main(args, { log: (t) => out.push(t), error: (t) => err.push(t) });
  return { code, out, err };
}

/** The model of the checkpoint, loaded here without sample.ts. */
async function reference(): Promise<GPT> {
  const model = applyPrecision(
    new GPT({
      vocabSize: corpus.tokenizer.vocabSize,
      blockSize: 8,
      nLayer: 1,
      nHead: 2,
      nEmbd: 16,
    }),
    "bf16",
  );
  await loadCheckpoint(CKPT, { model, restoreRng: false });
  return model.eval();
}

/** The logits of the next character after `ids` (last `block` of them). */
async function nextLogits(model: GPT, ids: number[]): Promise<number[]> {
  const ctx = ids.slice(-8);
  const logits = noGrad(() =>
    model.forward(tensor(Int32Array.from(ctx), { shape: [1, ctx.length] })).logits
  );
  const all = Array.from(await logits.cast("f32").toArray());
  logits.dispose();
  return all.slice((ctx.length - 1) * corpus.tokenizer.vocabSize);
}

Deno.test("sample --top-k 1 continues the prompt with the argmax character at every step", async () => {
  const r = await run([
    "--ckpt",
    `${DIR}/run`,
    "--prompt",
    "ab c",
    "--tokens",
    "12",
    "--top-k",
    "1",
  ]);
  assert.equal(r.code, 0, r.err.join("\n"));
  const model = await reference();
  const ids = Array.from(corpus.tokenizer.encode("ab c"));
  for (let i = 0; i < 12; i++) {
    const z = await nextLogits(model, ids);
    ids.push(z.indexOf(Math.max(...z)));
  }
  assert.deepEqual(r.out, [corpus.tokenizer.decode(ids)]);
  for (const p of model.parameters()) p.dispose();
});

Deno.test("sample --top-k 2 picks one of the two likeliest characters, and a seed fixes the text", async () => {
  const args = [
    "--ckpt",
    CKPT,
    "--prompt",
    "d",
    "--tokens",
    "10",
    "--top-k",
    "2",
    "--temperature",
    "1",
  ];
  const a = await run([...args, "--seed", "3"]), b = await run([...args, "--seed", "3"]);
  assert.equal(a.code, 0, a.err.join("\n"));
  assert.deepEqual(a.out, b.out);
  const model = await reference();
  const ids = Array.from(corpus.tokenizer.encode(a.out[0]));
  for (let i = 1; i < ids.length; i++) {
    const z = await nextLogits(model, ids.slice(0, i));
    const rank = z.filter((v) => v > z[ids[i]]).length;
    assert.ok(rank < 2, `character ${i} has rank ${rank}`);
  }
  for (const p of model.parameters()) p.dispose();
  const seeds = await Promise.all(
    [4, 5, 6].map((s) => run([...args, "--tokens", "30", "--top-k", "0", "--seed", `${s}`])),
  );
  assert.ok(new Set(seeds.map((s) => s.out[0])).size > 1, "other seeds give other text");
});

Deno.test("sample refuses bad flags with one line naming the flag, exit code 2", async () => {
  const cases: [string[], RegExp][] = [
    [[], /--ckpt is required/],
    [["--ckpt", CKPT, "--temperature", "0"], /--temperature must be a positive number, got '0'/],
    [["--ckpt", CKPT, "--top-k=-1"], /--top-k must be an integer >= 0/],
    [["--ckpt", CKPT, "--top-k", "-1"], /'--top-k' argument is ambiguous. Did you forget/],
    [["--ckpt", `${DIR}/nothing`], /--ckpt: no checkpoint at '.*nothing\/checkpoint.json'/],
    [["--ckpt", CKPT, "--prompt", "xyz"], /--prompt has characters the model never saw: "xyz"/],
  ];
  for (const [args, re] of cases) {
    const r = await run(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.err}`);
    assert.equal(r.err.length, 1);
    assert.ok(!r.err[0].includes("\n"), r.err[0]);
    assert.match(r.err[0], /^sample: /);
    assert.match(r.err[0], re);
  }
});
