// Shared by the examples: the default corpus, a character tokenizer, seeded batches and
// sampling. Not part of the library's public API.

import { type GPT, noGrad, type Tensor, tensor, tidy } from "../mod.ts";

/** Folders whose source text makes the default corpus (the project's own code and docs). */
const CORPUS_FOLDERS = ["dtypes", "gpu", "tensor", "autograd", "nn", "optim"];

/** The path of the project root (this file lives in examples/). */
export const ROOT = new URL("..", import.meta.url).pathname;

/**
 * Reads a text file (gzip-compressed when it ends in .gz), or, without a path, the default
 * corpus: the project's own TypeScript sources and README, in a fixed order.
 */
export async function loadText(path?: string): Promise<{ text: string; source: string }> {
  if (path) {
    let bytes: Uint8Array = await Deno.readFile(path);
    if (path.endsWith(".gz")) {
      const stream = new Blob([bytes as BlobPart]).stream().pipeThrough(
        new DecompressionStream("gzip"),
      );
      bytes = new Uint8Array(await new Response(stream).arrayBuffer());
    }
    return { text: new TextDecoder().decode(bytes), source: path };
  }
  const files: string[] = [];
  for (const folder of CORPUS_FOLDERS) {
    for await (const e of Deno.readDir(`${ROOT}${folder}`)) {
      if (e.isFile && e.name.endsWith(".ts")) files.push(`${folder}/${e.name}`);
    }
  }
  files.sort();
  files.push("README.md");
  const parts = await Promise.all(files.map((f) => Deno.readTextFile(`${ROOT}${f}`)));
  return { text: parts.join("\n"), source: `the project's own source (${files.length} files)` };
}

/** A character-level tokenizer over the characters of a text. */
export class CharTokenizer {
  readonly chars: string[];
  readonly #index: Map<string, number>;

  constructor(text: string, chars?: string[]) {
    this.chars = chars ?? [...new Set(text)].sort();
    this.#index = new Map(this.chars.map((c, i) => [c, i]));
  }

  get vocabSize(): number {
    return this.chars.length;
  }

  encode(text: string): Int32Array {
    return Int32Array.from(text, (c) => this.#index.get(c) ?? 0);
  }

  decode(ids: ArrayLike<number>): string {
    return Array.from(ids, (i) => this.chars[i] ?? "?").join("");
  }
}

/** A text split for training: tokenizer, train and validation ids (the last 10%). */
export interface Corpus {
  /** Where the text came from (a path or a description of the default corpus). */
  source: string;
  /** The path given, or "" for the default corpus. */
  path: string;
  tokenizer: CharTokenizer;
  train: Int32Array;
  val: Int32Array;
  /** A checksum of the ids (FNV-1a), to check that a resumed run reads the same data. */
  checksum: string;
}

/**
 * Loads a text (see `loadText`) and splits it 90/10; with `chars`, tokenizes it with that
 * vocabulary (a resumed run's) and fails when the text has characters outside it.
 */
export async function loadCorpus(path = "", chars?: string[]): Promise<Corpus> {
  const { text, source } = await loadText(path || undefined);
  const tokenizer = new CharTokenizer(text, chars);
  if (chars) {
    const unknown = [...new Set(text)].filter((c) => !chars.includes(c));
    if (unknown.length) {
      throw new Error(
        `the text has characters outside the saved vocabulary: ${
          JSON.stringify(unknown.slice(0, 5).join(""))
        }`,
      );
    }
  }
  const data = tokenizer.encode(text);
  const split = Math.floor(data.length * 0.9);
  let h = 0x811c9dc5;
  for (const t of data) h = Math.imul(h ^ t, 0x01000193) >>> 0;
  return {
    source,
    path,
    tokenizer,
    train: data.subarray(0, split),
    val: data.subarray(split),
    checksum: `${data.length}:${h.toString(16)}`,
  };
}

/** The unigram entropy (nats) of `val` under the character frequencies of `train`. */
export function unigramEntropy(train: Int32Array, val: Int32Array, vocab: number): number {
  const counts = new Float64Array(vocab).fill(1); // add-one smoothing
  for (const t of train) counts[t]++;
  const total = counts.reduce((a, b) => a + b, 0);
  let h = 0;
  for (const t of val) h -= Math.log(counts[t] / total);
  return h / val.length;
}

/** A seeded stream of random (x, y) batches of windows of `data`. */
export class Batches {
  #state: number;
  /** How many batches were drawn (the data position, for checkpoints). */
  position = 0;

  constructor(
    readonly data: Int32Array,
    readonly batch: number,
    readonly block: number,
    readonly seed: number,
  ) {
    this.#state = (seed * 2654435761) >>> 0 || 1;
  }

  #starts(): number[] {
    return Array.from({ length: this.batch }, () => {
      let x = this.#state; // xorshift32
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      this.#state = x >>> 0;
      return this.#state % (this.data.length - this.block - 1);
    });
  }

  /** Advances to `position` without making tensors (to resume a run). */
  skipTo(position: number): this {
    while (this.position < position) {
      this.#starts();
      this.position++;
    }
    return this;
  }

  /** The next batch: x and y of shape (batch, block), y shifted by one. */
  next(): { x: Tensor; y: Tensor } {
    const { batch: B, block: T, data } = this;
    const xs = new Int32Array(B * T), ys = new Int32Array(B * T);
    this.#starts().forEach((start, b) => {
      xs.set(data.subarray(start, start + T), b * T);
      ys.set(data.subarray(start + 1, start + T + 1), b * T);
    });
    this.position++;
    return { x: tensor(xs, { shape: [B, T] }), y: tensor(ys, { shape: [B, T] }) };
  }
}

/** Mean loss of `model` over `n` batches of `data` (no gradients). */
export async function evaluate(
  model: GPT,
  data: Int32Array,
  batch: number,
  block: number,
  n: number,
  seed: number,
): Promise<number> {
  const wasTraining = model.training;
  model.eval();
  const batches = new Batches(data, batch, block, seed);
  const losses = noGrad(() =>
    Array.from({ length: n }, () =>
      tidy(() => {
        const { x, y } = batches.next();
        return model.forward(x, y).loss!;
      }))
  );
  const values = await Promise.all(losses.map((l) => l.item()));
  for (const l of losses) l.dispose();
  model.train(wasTraining);
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** Samples `n` tokens after `prompt` with temperature and top-k (one readback per token). */
export async function sample(
  model: GPT,
  prompt: Int32Array,
  n: number,
  opts: { temperature?: number; topK?: number; seed?: number } = {},
): Promise<Int32Array> {
  const temperature = opts.temperature ?? 1, topK = opts.topK ?? 0;
  let state = (opts.seed ?? 1) >>> 0 || 1;
  const uniform = () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 4294967296;
  };
  const out = Array.from(prompt.length ? prompt : [0]);
  const wasTraining = model.training;
  model.eval();
  const block = model.config.blockSize;
  for (let i = 0; i < n; i++) {
    const ctx = Int32Array.from(out.slice(-block));
    const logits = noGrad(() =>
      tidy(() => {
        const { logits } = model.forward(tensor(ctx, { shape: [1, ctx.length] }));
        return logits.slice([null, [ctx.length - 1, ctx.length], null]).reshape([
          model.config.vocabSize,
        ]).cast("f32");
      })
    );
    const z = Array.from(await logits.toArray()) as number[];
    logits.dispose();
    let idx = z.map((_, j) => j);
    if (topK > 0) idx = idx.sort((a, b) => z[b] - z[a]).slice(0, topK);
    const m = Math.max(...idx.map((j) => z[j]));
    const w = idx.map((j) => Math.exp((z[j] - m) / Math.max(temperature, 1e-6)));
    const total = w.reduce((a, b) => a + b, 0);
    let r = uniform() * total, pick = idx[idx.length - 1];
    for (let k = 0; k < idx.length; k++) {
      r -= w[k];
      if (r <= 0) {
        pick = idx[k];
        break;
      }
    }
    out.push(pick);
  }
  model.train(wasTraining);
  return Int32Array.from(out.slice(prompt.length ? prompt.length : 1));
}
