/**
 * Generates text from a checkpoint of examples/train_gpt.ts: rebuilds the model from the
 * configuration and vocabulary the run stored in the checkpoint, loads its weights and
 * continues a prompt, one character at a time, with temperature and top-k sampling (top-k 1
 * is greedy). Seeded: the same seed gives the same text.
 *
 * Run (reads only the checkpoint's folder; writes nothing):
 *   deno run --allow-read=out examples/sample.ts --ckpt out/train_gpt --prompt "export function " --tokens 200
 *   deno run --allow-read=out examples/sample.ts --ckpt out/train_gpt/checkpoint.json --temperature 0.5 --top-k 10
 *   deno run --allow-read=out examples/sample.ts --help
 *
 * @module
 */
import { applyPrecision, GPT, loadCheckpoint, readCheckpoint, ready } from "../mod.ts";
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
import { CharTokenizer, sample } from "./_text.ts";
import { resolvePrecision, type RunConfig } from "./_train.ts";

const PROGRAM = "sample";
const USAGE = "deno run --allow-read=out examples/sample.ts --ckpt <checkpoint> [options]";

/** The options; `--help` is generated from them. */
export const OPTIONS: Record<string, Option> = {
  ckpt: {
    type: "string",
    help: "checkpoint of train_gpt: its checkpoint.json or its output folder (required)",
    default: "",
  },
  prompt: { type: "string", help: "text to continue", default: "export function " },
  tokens: { type: "string", help: "characters to generate", default: "200", check: checks.int(1) },
  temperature: {
    type: "string",
    help: "softmax temperature (lower: more predictable)",
    default: "0.8",
    check: checks.positive(),
  },
  "top-k": {
    type: "string",
    help: "sample among the k likeliest characters (0: all; 1: greedy)",
    default: "20",
    check: checks.int(0),
  },
  seed: { type: "string", help: "random seed of the sampling", default: "1", check: checks.int(0) },
  help: { type: "boolean", help: "show this help", default: false },
};

/** The model and tokenizer of a train_gpt checkpoint, weights loaded (in eval mode). */
export async function loadModel(
  path: string,
): Promise<{ model: GPT; tokenizer: CharTokenizer; config: RunConfig; step: number }> {
  const info = await readCheckpoint(path);
  const meta = info.meta as { config?: RunConfig; vocab?: string[] };
  const c = meta.config;
  if (!c || !Array.isArray(meta.vocab)) {
    throw new UsageError(
      `${PROGRAM}: --ckpt: '${path}' has no model configuration (is it from train_gpt?)`,
    );
  }
  const tokenizer = new CharTokenizer("", meta.vocab);
  const gpt = new GPT({
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
    if (!path.endsWith(".json")) path = `${path.replace(/\/$/, "")}/checkpoint.json`;
    await requirePermission(PROGRAM, "read", path, "the checkpoint (--ckpt)");
    try {
      await Deno.stat(path);
    } catch {
      throw new UsageError(`${PROGRAM}: --ckpt: no checkpoint at '${path}'`);
    }
    await ready(); // the device (importing ulp acquires nothing)
    const { model, tokenizer } = await loadModel(path);
    try {
      const prompt = String(v.prompt);
      const unknown = [...new Set(prompt)].filter((ch) => !tokenizer.chars.includes(ch));
      if (unknown.length) {
        throw new UsageError(
          `${PROGRAM}: --prompt has characters the model never saw: ${
            JSON.stringify(unknown.join(""))
          }`,
        );
      }
      const ids = await sample(model, tokenizer.encode(prompt), Number(v.tokens), {
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

if (import.meta.main) Deno.exit(await main(Deno.args));
