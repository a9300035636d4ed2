/**
 * Generates text from a checkpoint of examples/train_gpt.ts: rebuilds the model from the
 * configuration and tokenizer the run stored in the checkpoint (its characters, or GPT-2's
 * BPE), loads its weights and continues a prompt, one token at a time, with temperature and
 * top-k sampling (top-k 1 is greedy); or from a Hugging Face GPT-2 checkpoint (a folder with
 * model.safetensors and config.json, such as one exportPretrained or finetune.ts wrote), with
 * GPT-2's tokenizer. Seeded: the same seed gives the same text.
 *
 * Run (reads only the checkpoint's folder; writes nothing):
 *   deno run --allow-read=out examples/sample.ts --ckpt out/train_gpt --prompt "export function " --tokens 200
 *   deno run --allow-read=out examples/sample.ts --ckpt out/train_gpt/checkpoint.json --temperature 0.5 --top-k 10
 *   deno run --allow-read=gpt2 examples/sample.ts --ckpt gpt2 --prompt "The meaning of life is" --tokens 40
 *   deno run --allow-read=out examples/sample.ts --help
 *
 * @module
 */
import {
  applyPrecision,
  fromPretrained,
  GPT,
  loadCheckpoint,
  readCheckpoint,
  ready,
} from "../mod.ts";
import {
  checks,
  type CliIO,
  consoleIO,
  type Option,
  parseOptions,
  requirePermission,
  runCli,
  UsageError,
} from "./_cli.ts";
import {
  CharTokenizer,
  checkModelConfig,
  GPT2Tokenizer,
  sample,
  type Tokenizer,
  type TokenizerName,
} from "./_text.ts";
import { resolvePrecision, type RunConfig } from "./_train.ts";

const PROGRAM = "sample";
const USAGE = "deno run --allow-read=out examples/sample.ts --ckpt <checkpoint> [options]";

/** The options; `--help` is generated from them. */
export const OPTIONS: Record<string, Option> = {
  ckpt: {
    type: "string",
    help: "checkpoint of train_gpt (its checkpoint.json or its output folder), or a Hugging " +
      "Face GPT-2 folder with model.safetensors (required)",
    default: "",
  },
  prompt: { type: "string", help: "text to continue", default: "export function " },
  tokens: { type: "string", help: "tokens to generate", default: "200", check: checks.int(1) },
  temperature: {
    type: "string",
    help: "softmax temperature (lower: more predictable)",
    default: "0.8",
    check: checks.positive(),
  },
  "top-k": {
    type: "string",
    help: "sample among the k likeliest tokens (0: all; 1: greedy)",
    default: "20",
    check: checks.int(0),
  },
  seed: { type: "string", help: "random seed of the sampling", default: "1", check: checks.int(0) },
  help: { type: "boolean", help: "show this help", default: false },
};

/** The model and tokenizer of a train_gpt checkpoint, weights loaded (in eval mode). */
export async function loadModel(
  path: string,
): Promise<{ model: GPT; tokenizer: Tokenizer; config: RunConfig; step: number }> {
  const info = await readCheckpoint(path);
  const meta = info.meta as {
    config?: RunConfig;
    vocab?: string[];
    tokenizer?: TokenizerName;
    model?: unknown;
  };
  const c = meta.config;
  const bpe = meta.tokenizer === "gpt2";
  if (!c || (!bpe && !Array.isArray(meta.vocab))) {
    throw new UsageError(
      `${PROGRAM}: --ckpt: '${path}' has no model configuration (is it from train_gpt?)`,
    );
  }
  const tokenizer = bpe ? new GPT2Tokenizer() : new CharTokenizer("", meta.vocab);
  const gpt = meta.model !== undefined
    ? new GPT(checkModelConfig(meta.model, `${PROGRAM}: --ckpt: '${path}'`))
    : new GPT({
      vocabSize: tokenizer.vocabSize,
      blockSize: c.block,
      nLayer: c.nLayer,
      nHead: c.nHead,
      nEmbd: c.nEmbd,
    });
  const model = applyPrecision(gpt, resolvePrecision(c.precision, c.rounding).storage);
  await loadCheckpoint(path, { model, restoreRng: false });
  model.eval();
  return { model, tokenizer, config: c, step: info.step };
}

/** Runs the command line; returns the exit code (0 done, 1 bad checkpoint, 2 bad usage). */
export function main(args: readonly string[], io: CliIO = consoleIO): Promise<number> {
  return runCli(PROGRAM, async () => {
    const { values: v } = parseOptions(PROGRAM, USAGE, OPTIONS, args);
    let path = String(v.ckpt);
    if (!path) throw new UsageError(`${PROGRAM}: --ckpt is required (a train_gpt checkpoint)`);
    const hf = await isPretrained(path);
    if (!hf && !path.endsWith(".json")) path = `${path.replace(/\/$/, "")}/checkpoint.json`;
    await requirePermission(PROGRAM, "read", path, "the checkpoint (--ckpt)");
    try {
      await Deno.stat(path);
    } catch {
      throw new UsageError(`${PROGRAM}: --ckpt: no checkpoint at '${path}'`);
    }
    await ready(); // the device (importing ulp acquires nothing)
    const { model, tokenizer }: { model: GPT; tokenizer: Tokenizer } = hf
      ? { model: (await fromPretrained(path)).eval(), tokenizer: new GPT2Tokenizer() }
      : await loadModel(path);
    try {
      const prompt = String(v.prompt);
      const chars = tokenizer.chars;
      const unknown = chars ? [...new Set(prompt)].filter((ch) => !chars.includes(ch)) : [];
      if (unknown.length) {
        throw new UsageError(
          `${PROGRAM}: --prompt has characters the model never saw: ${
            JSON.stringify(unknown.join(""))
          }`,
        );
      }
      const start = tokenizer.encode(prompt);
      const beyond = start.find((i) => i >= model.config.vocabSize);
      if (beyond !== undefined) {
        throw new UsageError(
          `${PROGRAM}: --prompt has the token ${beyond} (${
            JSON.stringify(tokenizer.decode([beyond]))
          }), beyond the model's vocabulary of ${model.config.vocabSize}`,
        );
      }
      const ids = await sample(model, start, Number(v.tokens), {
        temperature: Number(v.temperature),
        topK: Number(v["top-k"]),
        seed: Number(v.seed),
      });
      io.log(prompt + tokenizer.decode(ids));
      return 0;
    } finally {
      for (const p of model.parameters()) p.dispose();
    }
  }, io);
}

/** Whether `path` is a Hugging Face checkpoint: a .safetensors file or a folder with one. */
async function isPretrained(path: string): Promise<boolean> {
  if (path.endsWith(".safetensors")) return true;
  try {
    return (await Deno.stat(`${path.replace(/\/$/, "")}/model.safetensors`)).isFile;
  } catch {
    return false;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
