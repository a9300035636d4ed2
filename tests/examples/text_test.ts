// The examples' tokenizers (examples/_text.ts): GPT-2's BPE gives GPT-2's ids (the values
// below are those of OpenAI's gpt2 encoding as tiktoken and Hugging Face's GPT2Tokenizer
// give them), a long text encoded in pieces gives the ids of the whole, and a token stream is
// cached once as a raw little-endian u16 file that later runs read back.
import assert from "node:assert/strict";
import {
  cachedTokens,
  CharTokenizer,
  GPT2_EOT,
  GPT2Tokenizer,
  loadCorpus,
  tokenCachePath,
  tokenizeProgress,
} from "../../examples/_text.ts";

const DIR = "./.test-tmp/text_test";
await Deno.remove(DIR, { recursive: true }).catch(() => {});
await Deno.mkdir(DIR, { recursive: true });

Deno.test("GPT2Tokenizer gives GPT-2's ids and decodes them back", () => {
  const t = new GPT2Tokenizer();
  assert.equal(t.vocabSize, 50257);
  assert.deepEqual(Array.from(t.encode("Hello world")), [15496, 995]);
  assert.deepEqual(Array.from(t.encode("Hello, world!")), [15496, 11, 995, 0]);
  assert.deepEqual(Array.from(t.encode(" the")), [262]);
  assert.deepEqual(Array.from(t.encode("<|endoftext|>")), [GPT2_EOT]);
  const text = "naïve café — 東京 🚀\n\n  indented 'quotes' don't";
  assert.equal(t.decode(t.encode(text)), text);
});

Deno.test("GPT2Tokenizer.encodeChunked() gives the ids of the whole text, with progress", () => {
  const t = new GPT2Tokenizer();
  const words = ["the", "model's", "bf16", "   ", "\n\n", "update", "isn't", "12.5%", "é", "\t"];
  let text = "";
  for (let i = 0; i < 3000; i++) text += words[(i * 7 + (i >> 3)) % words.length] + " ";
  const seen: number[] = [];
  const chunked = t.encodeChunked(text, (done, total) => {
    assert.equal(total, text.length);
    seen.push(done);
  }, 500);
  assert.deepEqual(Array.from(chunked), Array.from(t.encode(text)));
  assert.ok(seen.length > 10, `${seen.length} pieces`);
  assert.equal(seen.at(-1), text.length);
  assert.ok(seen.every((d, i) => i === 0 || d > seen[i - 1]));
});

Deno.test("cachedTokens() writes a raw u16 stream once and reads it back", async () => {
  const t = new GPT2Tokenizer();
  const text = "Low precision training rounds updates away. ".repeat(50);
  const a = await cachedTokens(t, text, DIR);
  assert.equal(a.cached, false);
  assert.equal(a.path, tokenCachePath(DIR, t, text));
  assert.match(a.path, /tokens\.gpt2\.\d+-[0-9a-f]{8}\.u16\.bin$/);
  const raw = await Deno.readFile(a.path);
  assert.equal(raw.byteLength, 2 * a.ids.length);
  const dv = new DataView(raw.buffer);
  assert.deepEqual(
    Array.from({ length: a.ids.length }, (_, i) => dv.getUint16(2 * i, true)),
    Array.from(t.encode(text)),
  );
  const b = await cachedTokens(t, text, DIR);
  assert.equal(b.cached, true);
  assert.deepEqual(b.ids, a.ids);
  // another text has another file
  assert.notEqual(tokenCachePath(DIR, t, text + "!"), a.path);
});

Deno.test("loadCorpus({ tokenizer: 'gpt2' }) splits GPT-2 ids 90/10; 'char' is unchanged", async () => {
  const path = `${DIR}/corpus.txt`;
  const text = "We can see that it is not the same. ".repeat(40);
  await Deno.writeTextFile(path, text);
  const c = await loadCorpus(path, undefined, { tokenizer: "gpt2", cacheDir: DIR });
  const ids = new GPT2Tokenizer().encode(text);
  assert.equal(c.tokenizer.name, "gpt2");
  assert.equal(c.train.length + c.val.length, ids.length);
  assert.deepEqual(Array.from(c.train), Array.from(ids.subarray(0, Math.floor(ids.length * 0.9))));
  const ch = await loadCorpus(path);
  assert.ok(ch.tokenizer instanceof CharTokenizer);
  assert.equal(ch.train.length + ch.val.length, text.length);
});

Deno.test("tokenizeProgress() writes a line at most every 10% of a long text", () => {
  const lines: string[] = [];
  const p = tokenizeProgress((t) => lines.push(t));
  const total = 5_000_000;
  for (let d = 250_000; d <= total; d += 250_000) p(d, total);
  assert.deepEqual(lines.map((l) => l.match(/(\d+)%/)![1]), [
    "5",
    "10",
    "20",
    "30",
    "40",
    "50",
    "60",
    "70",
    "80",
    "90",
    "100",
  ]);
  assert.match(lines[1], /^tokenizing: 10% \(0\.5 of 5\.0 M characters\)\n$/);
  const quiet: string[] = [];
  tokenizeProgress((t) => quiet.push(t))(1000, 1000); // a short text: nothing
  assert.deepEqual(quiet, []);
});
