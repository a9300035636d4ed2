// Shared by the examples: the default corpus, the tokenizers (characters, or GPT-2's BPE
// through js-tiktoken's ranks, with token streams cached as .bin files of u16/u32 ids as
// nanoGPT's prepare step writes them), seeded batches and sampling. Not part of the
// library's public API.

import { Tiktoken } from "js-tiktoken/lite";
import gpt2Ranks from "js-tiktoken/ranks/gpt2";
import { type GPT, type GPTConfig, noGrad, type Tensor, tensor, tidy } from "../mod.ts";
import { type Option, UsageError } from "./_cli.ts";

/** The path of the project root (this file lives in examples/). */
export const ROOT = new URL("..", import.meta.url).pathname;

/** The default corpus: a snapshot of ulp's own source and README (see data/make_corpus.ts). */
export const DEFAULT_CORPUS = "data/corpus.txt";

/**
 * Reads a text file (gzip-compressed when it ends in .gz), or, without a path, the default
 * corpus: a fixed snapshot of the project's own TypeScript sources and README
 * (`data/corpus.txt`, made once by `data/make_corpus.ts`), so that results do not change
 * with every commit.
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
  const text = await Deno.readTextFile(`${ROOT}${DEFAULT_CORPUS}`);
  return { text, source: `a snapshot of ulp's own source (${DEFAULT_CORPUS})` };
}

/** The tokenizers of `--tokenizer`. */
export const TOKENIZERS = ["char", "gpt2"] as const;
/** A name of `TOKENIZERS` (how checkpoints record the tokenizer). */
export type TokenizerName = (typeof TOKENIZERS)[number];

/** The `--tokenizer` option row (default `char`). */
export function tokenizerOption(def: TokenizerName = "char"): Option {
  return {
    type: "string",
    help: "char (the text's characters) or gpt2 (GPT-2's BPE, 50257 tokens; the token " +
      "stream of a --data file is cached as a .bin of u16 ids in the output folder)",
    default: def,
    check: (v) =>
      (TOKENIZERS as readonly string[]).includes(v)
        ? null
        : `unknown value '${v}'; valid: ${TOKENIZERS.join(", ")}`,
  };
}

/** What the examples need of a tokenizer. */
export interface Tokenizer {
  readonly name: TokenizerName;
  readonly vocabSize: number;
  /** The vocabulary of a character tokenizer (saved in checkpoints); undefined for BPE. */
  readonly chars?: string[];
  encode(text: string): Int32Array;
  decode(ids: ArrayLike<number>): string;
}

/** A character-level tokenizer over the characters of a text. */
export class CharTokenizer implements Tokenizer {
  readonly name = "char" as const;
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

/** GPT-2's id of `<|endoftext|>`. */
export const GPT2_EOT = 50256;

let gpt2Encoder: Tiktoken | null = null;

/**
 * GPT-2's byte-level BPE (the 50257 tokens of OpenAI's `gpt2` encoding: 50000 merges, 256
 * bytes, `<|endoftext|>`), by js-tiktoken from its bundled ranks: offline, no download.
 * `<|endoftext|>` in a text is the end-of-text token.
 */
export class GPT2Tokenizer implements Tokenizer {
  readonly name = "gpt2" as const;
  readonly vocabSize = 50257;
  readonly #enc: Tiktoken;

  constructor() {
    this.#enc = gpt2Encoder ??= new Tiktoken(gpt2Ranks);
  }

  encode(text: string): Int32Array {
    return Int32Array.from(this.#enc.encode(text, "all"));
  }

  decode(ids: ArrayLike<number>): string {
    return this.#enc.decode(Array.from(ids));
  }

  /**
   * Encodes a long text in pieces of about `chunk` characters, calling `progress` after each
   * with the characters done. Pieces end before a space that follows a non-space and precedes
   * one: GPT-2's pre-tokenizer always splits there (a token holds a space only at its start
   * or in a run of whitespace), so the ids equal those of `encode(text)`.
   */
  encodeChunked(
    text: string,
    progress?: (done: number, total: number) => void,
    chunk = 1 << 20,
  ): Int32Array {
    if (text.length <= chunk) {
      const ids = this.encode(text);
      progress?.(text.length, text.length);
      return ids;
    }
    const parts: Int32Array[] = [];
    let start = 0, total = 0;
    const safe = /\S \S/g;
    while (start < text.length) {
      let end = text.length;
      if (start + chunk < text.length) {
        safe.lastIndex = start + chunk;
        const m = safe.exec(text);
        end = m ? m.index + 1 : text.length;
      }
      const ids = this.encode(text.slice(start, end));
      parts.push(ids);
      total += ids.length;
      start = end;
      progress?.(start, text.length);
    }
    const out = new Int32Array(total);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

/** The tokenizer of a name (a character tokenizer over `text`, or with `chars`). */
export function makeTokenizer(name: TokenizerName, text: string, chars?: string[]): Tokenizer {
  return name === "gpt2" ? new GPT2Tokenizer() : new CharTokenizer(text, chars);
}

/** FNV-1a of bytes, as 8 hex digits. */
function fnv1a(bytes: Uint8Array): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

/**
 * The path of the cached token stream of `text` under `tokenizer` in `dir`: named by the
 * tokenizer, the text's length and hash, and the id width (`u16` when the vocabulary fits).
 */
export function tokenCachePath(dir: string, tokenizer: Tokenizer, text: string): string {
  const bytes = new TextEncoder().encode(text);
  const width = tokenizer.vocabSize <= 65536 ? "u16" : "u32";
  return `${dir.replace(/\/+$/, "")}/tokens.${tokenizer.name}.${bytes.length}-${
    fnv1a(bytes)
  }.${width}.bin`;
}

/**
 * The ids of `text`, from the cache in `dir` when it holds them (a raw little-endian file of
 * u16 or u32 ids, as nanoGPT's `train.bin`: `np.fromfile(path, dtype=np.uint16)` reads it),
 * else encoded (in pieces, with `progress`) and written there.
 */
export async function cachedTokens(
  tokenizer: Tokenizer,
  text: string,
  dir: string,
  progress?: (done: number, total: number) => void,
): Promise<{ ids: Int32Array; path: string; cached: boolean }> {
  const path = tokenCachePath(dir, tokenizer, text);
  const wide = path.endsWith(".u32.bin");
  try {
    const bytes = await Deno.readFile(path);
    const n = bytes.byteLength / (wide ? 4 : 2);
    if (Number.isInteger(n)) {
      const copy = bytes.slice();
      const ids = wide ? new Uint32Array(copy.buffer, 0, n) : new Uint16Array(copy.buffer, 0, n);
      if (ids.every((i) => i < tokenizer.vocabSize)) {
        return { ids: Int32Array.from(ids), path, cached: true };
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const ids = tokenizer instanceof GPT2Tokenizer
    ? tokenizer.encodeChunked(text, progress)
    : tokenizer.encode(text);
  const out = wide ? Uint32Array.from(ids) : Uint16Array.from(ids);
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${path}.tmp-${Date.now()}`;
  await Deno.writeFile(tmp, new Uint8Array(out.buffer));
  await Deno.rename(tmp, path);
  return { ids, path, cached: false };
}

/**
 * A progress callback for `cachedTokens` that writes `tokenizing: 40% (4.0 of 10.0 MB)` at
 * most every 10% (or as one live line), for texts of more than one piece.
 */
export function tokenizeProgress(
  write: (text: string) => void,
  live = false,
): (done: number, total: number) => void {
  let shown = -1;
  return (done, total) => {
    const pct = Math.floor((100 * done) / total);
    if (total <= 1 << 20 || (!live && Math.floor(pct / 10) === shown)) return;
    shown = Math.floor(pct / 10);
    const mb = (n: number) => (n / 1e6).toFixed(1);
    const text = `tokenizing: ${pct}% (${mb(done)} of ${mb(total)} M characters)`;
    write(live ? `\r${text}\x1b[K${done === total ? "\n" : ""}` : `${text}\n`);
  };
}

/** A text split for training: tokenizer, train and validation ids (the last 10%). */
export interface Corpus {
  /** Where the text came from (a path or a description of the default corpus). */
  source: string;
  /** The path given, or "" for the default corpus. */
  path: string;
  tokenizer: Tokenizer;
  train: Int32Array;
  val: Int32Array;
  /** A checksum of the ids (FNV-1a), to check that a resumed run reads the same data. */
  checksum: string;
}

/** Options of `loadCorpus`. */
export interface CorpusOptions {
  /** The tokenizer (default "char"). */
  tokenizer?: TokenizerName;
  /** Where a BPE token stream is cached (see `cachedTokens`); none: encoded each time. */
  cacheDir?: string;
  /** Called as a long text is encoded (characters done, total). */
  progress?: (done: number, total: number) => void;
}

/**
 * Loads a text (see `loadText`) and splits it 90/10; with `chars`, tokenizes it with that
 * vocabulary (a resumed run's) and fails when the text has characters outside it. With
 * `{ tokenizer: "gpt2" }`, GPT-2's BPE, its token stream cached in `cacheDir`.
 */
export async function loadCorpus(
  path = "",
  chars?: string[],
  opts: CorpusOptions = {},
): Promise<Corpus> {
  const { text, source } = await loadText(path || undefined);
  const tokenizer = makeTokenizer(opts.tokenizer ?? "char", text, chars);
  if (chars && tokenizer.name === "char") {
    const unknown = [...new Set(text)].filter((c) => !chars.includes(c));
    if (unknown.length) {
      // how many, not which: an error never quotes a file ulp did not write
      throw new Error(
        `the text has ${unknown.length} distinct characters outside the saved vocabulary ` +
          `(it is not the text the run was trained on)`,
      );
    }
  }
  const data = tokenizer.name === "gpt2" && opts.cacheDir
    ? (await cachedTokens(tokenizer, text, opts.cacheDir, opts.progress)).ids
    : tokenizer instanceof GPT2Tokenizer
    ? tokenizer.encodeChunked(text, opts.progress)
    : tokenizer.encode(text);
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

/**
 * A model configuration read from a checkpoint's JSON, checked before anything is built
 * (a hand-edited file can ask for nothing a preset could not): sizes are positive integers
 * within GPT-2 XL's order of magnitude, and the options have their types. Throws a
 * `UsageError` naming the field, prefixed by `where`.
 */
export function checkModelConfig(raw: unknown, where: string): GPTConfig {
  const bad = (msg: string): never => {
    throw new UsageError(`${where}: the model configuration ${msg}`);
  };
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) bad("is not an object");
  const c = raw as Record<string, unknown>;
  const limits = {
    vocabSize: 1 << 20,
    blockSize: 1 << 16,
    nLayer: 1024,
    nHead: 4096,
    nEmbd: 1 << 16,
  };
  for (const [k, max] of Object.entries(limits)) {
    const v = c[k];
    if (!Number.isSafeInteger(v) || (v as number) < 1 || (v as number) > max) {
      bad(`has ${k} ${excerptValue(v)}; it must be an integer in [1, ${max}]`);
    }
  }
  const kinds: Record<string, (v: unknown) => boolean> = {
    dropout: (v) => typeof v === "number" && v >= 0 && v < 1,
    bias: (v) => typeof v === "boolean",
    fusedAttention: (v) => typeof v === "boolean",
    gelu: (v) => v === "none" || v === "tanh",
    layerNormEps: (v) => typeof v === "number" && v >= 0 && v < 1,
    seed: (v) => Number.isSafeInteger(v) && (v as number) >= 0,
  };
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(limits)) out[k] = c[k];
  for (const [k, ok] of Object.entries(kinds)) {
    if (c[k] === undefined || c[k] === null) continue;
    if (!ok(c[k])) bad(`has ${k} ${excerptValue(c[k])}, which is not valid`);
    out[k] = c[k];
  }
  return out as unknown as GPTConfig;
}

/** A value of a file, quoted short for a message. */
function excerptValue(v: unknown): string {
  const t = JSON.stringify(v) ?? String(v);
  return t.length > 40 ? `${t.slice(0, 40)}...` : t;
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
        // the last position's logits only: the LM head runs on one row, not the context's
        const ids = tensor(ctx, { shape: [1, ctx.length] });
        const { logits } = model.forward(ids, undefined, { logitsToKeep: 1 });
        return logits.reshape([model.config.vocabSize]).cast("f32");
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
