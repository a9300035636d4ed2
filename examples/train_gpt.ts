/**
 * Trains a character-level GPT on a text file (or, by default, on ulp's own source code) in a
 * chosen precision, and writes the run to its output folder: `log.jsonl` (one JSON object per
 * optimizer step, with `step` and `loss`, and one per evaluation), checkpoints
 * (`checkpoint.json` and a safetensors file, every --checkpoint-every steps and at the end),
 * and at the end `report.md`, `loss.svg` and `sample.txt`. A run stopped at any moment
 * continues with --resume and logs the same losses an uninterrupted run would.
 *
 * Run (narrow permissions: read the project and the data, write only the output folder):
 *   deno run --allow-read=. --allow-write=out examples/train_gpt.ts --steps 300 --out out/run
 *   deno run --allow-read=. --allow-write=out examples/train_gpt.ts --precision collage-light --lr 1e-3
 *   deno run --allow-read=.,input.txt.gz --allow-write=out examples/train_gpt.ts --data input.txt.gz
 *   deno run --allow-read=. --allow-write=out examples/train_gpt.ts --resume out/run
 *   deno run --allow-read=. examples/train_gpt.ts --help
 *
 * @module
 */
import { deviceInfo, readCheckpoint } from "../mod.ts";
import {
  checks,
  type CliIO,
  consoleIO,
  type Option,
  parseOptions,
  permissionMessage,
  progressOutput,
  requirePermission,
  runCli,
  UsageError,
} from "./_cli.ts";
import { type Corpus, loadCorpus, ROOT, sample, unigramEntropy } from "./_text.ts";
import { DEFAULT_RUN, type RunConfig, runTraining, Trainer } from "./_train.ts";
import { runConfig, runOptions } from "./_run_flags.ts";
import { JsonlLog, Progress, readLog } from "./_progress.ts";
import { lineChart } from "./_chart.ts";

const PROGRAM = "train_gpt";
const USAGE = "deno run --allow-read=. --allow-write=out examples/train_gpt.ts [options]";

/** The options, with their help text, defaults and checks: `--help` is generated from them. */
export const OPTIONS: Record<string, Option> = {
  data: {
    type: "string",
    help: "text file to train on (.gz allowed); default: ulp's own source",
    default: "",
  },
  ...runOptions(DEFAULT_RUN),
  "eval-every": {
    type: "string",
    help: "evaluate every N steps",
    default: "100",
    check: checks.int(1),
  },
  "log-precision": {
    type: "string",
    help:
      "log what low precision lost (imprecision, EDQ, gradient underflow) every N steps; 0: off",
    default: "0",
    check: checks.int(0),
  },
  "log-sharpness": {
    type: "string",
    help: "log the last-token logit sharpness of the batch every N steps (Lee et al. 2024); 0: off",
    default: "0",
    check: checks.int(0),
  },
  out: {
    type: "string",
    help: "output folder (log, checkpoints, report)",
    default: "out/train_gpt",
  },
  "checkpoint-every": {
    type: "string",
    help: "write a checkpoint every N steps (and always at the end)",
    default: "100",
    check: checks.int(1),
  },
  resume: {
    type: "string",
    help: "continue the run of this checkpoint (its .json, or its output folder)",
    default: "",
  },
  "stop-after": {
    type: "string",
    help: "stop after this step with a checkpoint (continue later with --resume)",
    default: "",
    check: checks.int(1),
  },
  "stop-on-nan": {
    type: "boolean",
    help: "stop at the first NaN/Inf loss, naming the step (runs without a GradScaler)",
    default: false,
  },
  "sample-tokens": {
    type: "string",
    help: "characters to sample at the end",
    default: "300",
    check: checks.int(0),
  },
  help: { type: "boolean", help: "show this help", default: false },
};

/** The options a resumed run keeps from its checkpoint unless given again. */
const RUN_SETTINGS = [
  "eval-every",
  "log-precision",
  "log-sharpness",
  "checkpoint-every",
  "stop-on-nan",
  "sample-tokens",
];

/** Runs the command line; returns the exit code (0 done, 1 failed, 2 bad usage or permission). */
export function main(args: readonly string[], io: CliIO = consoleIO): Promise<number> {
  return runCli(PROGRAM, () => run(args, io), io);
}

async function run(args: readonly string[], io: CliIO): Promise<number> {
  const { values: v, given } = parseOptions(PROGRAM, USAGE, OPTIONS, args);
  const log = (line: string) => io.log(line);
  let resume = String(v.resume);
  let saved: { config: RunConfig; given: Set<string> } | undefined;
  let dataPath = String(v.data), vocab: string[] | undefined, checksum: string | undefined;
  let out = String(v.out);
  if (resume) {
    if (!resume.endsWith(".json")) resume = `${resume.replace(/\/$/, "")}/checkpoint.json`;
    await requirePermission(PROGRAM, "read", resume, "the checkpoint (--resume)");
    const info = await readCheckpoint(resume).catch((e) => {
      if (e instanceof Deno.errors.NotFound) {
        throw new UsageError(`${PROGRAM}: --resume: no checkpoint at '${resume}'`);
      }
      throw e;
    });
    const meta = info.meta as {
      config?: RunConfig;
      vocab?: string[];
      data?: { path: string; checksum: string };
      options?: Record<string, string | boolean>;
    };
    if (!meta.config || !meta.vocab || !meta.data) {
      throw new UsageError(`${PROGRAM}: --resume: '${resume}' was not written by train_gpt`);
    }
    saved = { config: meta.config, given };
    // the run's other options (evaluation, logging, checkpoints) continue too, unless given
    for (const k of RUN_SETTINGS) {
      if (!given.has(k) && meta.options?.[k] !== undefined) v[k] = meta.options[k];
    }
    if (given.has("data") && dataPath !== meta.data.path) {
      throw new UsageError(
        `${PROGRAM}: --data '${dataPath}' differs from the checkpoint's '${meta.data.path}'`,
      );
    }
    dataPath = meta.data.path;
    vocab = meta.vocab;
    checksum = meta.data.checksum;
    if (!given.has("out")) {
      out = resume.includes("/") ? resume.slice(0, resume.lastIndexOf("/")) : ".";
    }
  }
  const config = runConfig(PROGRAM, v, DEFAULT_RUN, saved);
  const int = (name: string) => Number(v[name]);
  const stopAfter = v["stop-after"] ? int("stop-after") : undefined;
  await requirePermission(PROGRAM, "read", dataPath || ROOT, "the data (--data)");
  await requirePermission(PROGRAM, "write", out, "the output folder (--out)");

  const corpus: Corpus = await loadCorpus(dataPath, vocab).catch((e) => {
    if (permissionMessage(PROGRAM, e)) throw e;
    throw new UsageError(`${PROGRAM}: --data: cannot read '${dataPath}': ${e.message}`);
  });
  if (checksum && corpus.checksum !== checksum) {
    throw new UsageError(
      `${PROGRAM}: --resume: the data '${dataPath || "(default corpus)"}' changed since the ` +
        `checkpoint (${corpus.checksum} != ${checksum}); resume with the same text`,
    );
  }
  if (corpus.val.length < config.block + 2) {
    throw new UsageError(
      `${PROGRAM}: --data: the text is too short (${corpus.val.length} validation characters) ` +
        `for --block ${config.block}`,
    );
  }
  const h0 = unigramEntropy(corpus.train, corpus.val, corpus.tokenizer.vocabSize);
  log(`GPU: ${(await deviceInfo()).description}`);
  log(
    `data: ${corpus.source}, ${corpus.train.length + corpus.val.length} characters, ` +
      `vocabulary ${corpus.tokenizer.vocabSize}; unigram entropy ${h0.toFixed(3)} nats`,
  );
  const trainer = new Trainer(config, corpus);
  try {
    log(
      `model: ${config.nLayer} layers, ${config.nHead} heads, width ${config.nEmbd}, ` +
        `context ${config.block}, ${trainer.nParams} parameters; precision ${config.precision}`,
    );
    await Deno.mkdir(out, { recursive: true });
    if (resume) {
      await trainer.resume(resume);
      log(`resumed from ${resume} at step ${trainer.step}`);
    }
    const jsonl = await JsonlLog.open(`${out}/log.jsonl`, resume ? trainer.step : undefined);
    const progress = new Progress({ total: config.steps, ...progressOutput(io) });
    const result = await runTraining(trainer, {
      progress,
      log: jsonl,
      meta: { options: Object.fromEntries(RUN_SETTINGS.map((k) => [k, v[k]])) },
      evalEvery: int("eval-every"),
      diagEvery: int("log-precision"),
      sharpnessEvery: int("log-sharpness"),
      checkpoint: `${out}/checkpoint.json`,
      checkpointEvery: int("checkpoint-every"),
      stopAfter,
      stopOnNan: !!v["stop-on-nan"],
    });
    if (result.stopped) {
      io.error(
        `${PROGRAM}: stopped: ${result.stopped.reason} (--stop-on-nan); the last good ` +
          `checkpoint is in ${out}/checkpoint.json`,
      );
      return 1;
    }
    const secs = (result.ms / 1000).toFixed(1);
    if (trainer.step < config.steps) {
      log(`stopped after step ${trainer.step} (${secs} s); continue with --resume ${out}`);
      return 0;
    }
    log(`trained to step ${trainer.step} in ${secs} s; log, checkpoint and report in ${out}/`);
    await report(out, trainer, h0, int("sample-tokens"), log);
    return 0;
  } finally {
    trainer.dispose();
  }
}

/** Writes `report.md`, `loss.svg` and `sample.txt` of a finished run (from its whole log). */
async function report(
  out: string,
  trainer: Trainer,
  h0: number,
  sampleTokens: number,
  log: (line: string) => void,
): Promise<void> {
  const records = await readLog(`${out}/log.jsonl`);
  const steps = records.filter((r) => r.type === "step" && typeof r.loss === "number");
  const evals = records.filter((r) => r.type === "eval");
  const c = trainer.config;
  let text = "";
  if (sampleTokens > 0) {
    const prompt = "export function ";
    const { tokenizer } = trainer.corpus;
    const ids = await sample(trainer.model, tokenizer.encode(prompt), sampleTokens, {
      temperature: 0.8,
      topK: 20,
      seed: c.seed,
    });
    text = prompt + tokenizer.decode(ids);
    await Deno.writeTextFile(`${out}/sample.txt`, text + "\n");
    log(`\n--- sample ---\n${text}\n---`);
  }
  const smooth = steps.map((r, i): [number, number] => {
    const w = steps.slice(Math.max(0, i - 9), i + 1).map((x) => x.loss as number);
    return [r.step as number, w.reduce((a, b) => a + b, 0) / w.length];
  });
  await Deno.writeTextFile(
    `${out}/loss.svg`,
    lineChart([
      { name: "train (mean of 10)", points: smooth },
      { name: "validation", points: evals.map((r) => [r.step as number, r.valLoss as number]) },
    ], { title: `GPT, ${c.precision}`, xLabel: "step", yLabel: "loss (nats)" }),
  );
  const last = evals.at(-1)?.valLoss as number | undefined;
  await Deno.writeTextFile(
    `${out}/report.md`,
    `# train_gpt: ${c.precision}\n\n` +
      `${c.nLayer} layers, ${c.nHead} heads, width ${c.nEmbd}, context ${c.block}, batch ` +
      `${c.batch}, AdamW lr ${c.lr} (${c.warmup} warmup, cosine), ${c.steps} steps, seed ` +
      `${c.seed}; data: ${trainer.corpus.source}.\n\n` +
      `| final train loss (mean of 10) | validation loss | unigram entropy | bytes/param |\n` +
      `|---|---|---|---|\n| ${smooth.at(-1)?.[1].toFixed(4)} | ${last?.toFixed(4) ?? "n/a"} | ` +
      `${h0.toFixed(3)} | ${
        trainer.bytesPerParam ? trainer.bytesPerParam.toFixed(0) : "n/a"
      } |\n\n` +
      `![loss](loss.svg)\n\n` +
      (text ? `Sample (temperature 0.8, top-k 20):\n\n\`\`\`\n${text}\n\`\`\`\n` : ""),
  );
}

if (import.meta.main) Deno.exit(await main(Deno.args));
