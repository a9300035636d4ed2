/**
 * Fine-tunes a pretrained GPT-2 on your text under two or more precision strategies, each
 * from the same weights and on the same batches, and writes a report folder as the demo
 * does: `report.md` (validation loss and perplexity before and after, updates lost to
 * rounding, EDQ, bytes per parameter, step time, what each model wrote), `loss.svg`,
 * `log.jsonl` (every step of every strategy) and `sample.txt`; with `--export`, each
 * fine-tuned model in Hugging Face's layout (`<out>/<strategy>/model.safetensors` and
 * `config.json`) for `transformers.GPT2LMHeadModel.from_pretrained` or `sample.ts`.
 *
 * The checkpoint is Hugging Face's: `model.safetensors` and `config.json` of
 * https://huggingface.co/gpt2 (or gpt2-medium, -large, -xl) in one folder. The text is
 * tokenized with GPT-2's BPE, once: the token stream is cached in the output folder.
 *
 * Run (read the project, the checkpoint and the text; write only the output folder):
 *   deno run --allow-read=.,gpt2,input.txt --allow-write=out examples/finetune.ts --init-from gpt2 --data input.txt
 *   deno run --allow-read=.,gpt2,input.txt --allow-write=out examples/finetune.ts --init-from gpt2 --data input.txt --strategies fp32,bf16,collage-light --steps 200 --lr 1e-4 --export
 *   deno run --allow-read=. examples/finetune.ts --help
 *
 * @module
 */
import { deviceInfo, exportPretrained, fromPretrained, type GPT, ready } from "../mod.ts";
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
import { type Corpus, evaluate, loadCorpus, ROOT, tokenizeProgress } from "./_text.ts";
import { DEFAULT_RUN, type RunConfig } from "./_train.ts";
import { comparisonOptions, runConfig } from "./_run_flags.ts";
import { duration, JsonlLog } from "./_progress.ts";
import {
  compareStrategies,
  comparisonTable,
  type StrategyResult,
  writeSamplesAndChart,
} from "./_compare.ts";

const PROGRAM = "finetune";
const USAGE = "deno run --allow-read=.,<checkpoint>,<text> --allow-write=out " +
  "examples/finetune.ts --init-from <checkpoint> [options]";

/** The fine-tuning run: short, at a learning rate of fine-tuning (nanoGPT's is 3e-5). */
export const FINETUNE_RUN: RunConfig = {
  ...DEFAULT_RUN,
  steps: 100,
  batch: 4,
  block: 128,
  lr: 3e-5,
  warmup: 10,
};

/** The strategies compared by default. */
export const FINETUNE_STRATEGIES: readonly string[] = ["bf16", "collage-light", "amp-bf16"];

/** The options; `--help` is generated from them. */
export const OPTIONS: Record<string, Option> = {
  "init-from": {
    type: "string",
    help: "Hugging Face GPT-2 checkpoint: a folder with model.safetensors and config.json " +
      "(required)",
    default: "",
  },
  data: {
    type: "string",
    help: "text file to fine-tune on (.gz allowed); default: ulp's own source",
    default: "",
  },
  ...comparisonOptions(
    FINETUNE_STRATEGIES,
    FINETUNE_RUN,
    ["precision", "rounding", "layers", "heads", "width"],
    true,
  ),
  "eval-batches": {
    type: "string",
    help: "batches of the validation loss (before and after)",
    default: "16",
    check: checks.int(1),
  },
  "sample-tokens": {
    type: "string",
    help: "tokens each model writes",
    default: "60",
    check: checks.int(0),
  },
  prompt: {
    type: "string",
    help: "prompt of the samples (default: the first 16 tokens of the validation text)",
    default: "",
  },
  export: {
    type: "boolean",
    help: "write each fine-tuned model in Hugging Face's layout to <out>/<strategy>/",
    default: false,
  },
  out: { type: "string", help: "report folder", default: "out/finetune" },
  help: { type: "boolean", help: "show this help", default: false },
};

/** Runs the command line; returns the exit code (0 done, 1 bad checkpoint, 2 bad usage). */
export function main(args: readonly string[], io: CliIO = consoleIO): Promise<number> {
  return runCli(PROGRAM, () => run(args, io), io);
}

async function run(args: readonly string[], io: CliIO): Promise<number> {
  const { values: v } = parseOptions(PROGRAM, USAGE, OPTIONS, args);
  const ckpt = String(v["init-from"]).replace(/\/+$/, "");
  if (!ckpt) {
    throw new UsageError(
      `${PROGRAM}: --init-from is required: a folder with GPT-2's model.safetensors and ` +
        `config.json (from https://huggingface.co/gpt2)`,
    );
  }
  const names = String(v.strategies).split(",").map((s) => s.trim()).filter(Boolean);
  const dataPath = String(v.data), out = String(v.out).replace(/\/+$/, "");
  await requirePermission(PROGRAM, "read", ckpt, "the checkpoint (--init-from)");
  await requirePermission(PROGRAM, "read", dataPath || ROOT, "the text (--data)");
  await requirePermission(PROGRAM, "write", out, "the report folder (--out)");
  const t0 = performance.now();
  await ready();
  const info = await deviceInfo();

  // the pretrained model: its size, and its validation loss before any fine-tuning
  const pretrained = await fromPretrained(ckpt);
  const m = pretrained.config;
  let config = runConfig(PROGRAM, v, FINETUNE_RUN);
  config = { ...config, nLayer: m.nLayer, nHead: m.nHead, nEmbd: m.nEmbd };
  const evalBatches = Number(v["eval-batches"]);
  let corpus: Corpus, before: number, prompt: string;
  try {
    if (config.block > m.blockSize) {
      throw new UsageError(
        `${PROGRAM}: --block ${config.block} exceeds the model's context of ${m.blockSize}`,
      );
    }
    await Deno.mkdir(out, { recursive: true });
    const po = progressOutput(io);
    corpus = await loadCorpus(dataPath, undefined, {
      tokenizer: "gpt2",
      cacheDir: out,
      progress: tokenizeProgress(po.write, po.live),
    }).catch((e) => {
      if (permissionMessage(PROGRAM, e)) throw e;
      throw new UsageError(`${PROGRAM}: --data: cannot read '${dataPath}': ${e.message}`);
    });
    const beyond = [...corpus.train, ...corpus.val].find((i) => i >= m.vocabSize);
    if (beyond !== undefined) {
      throw new UsageError(
        `${PROGRAM}: --data: the text has the GPT-2 token ${beyond} (${
          JSON.stringify(corpus.tokenizer.decode([beyond]))
        }), beyond the checkpoint's vocabulary of ${m.vocabSize}`,
      );
    }
    if (corpus.val.length < config.block + 2 || corpus.train.length < config.block + 2) {
      throw new UsageError(
        `${PROGRAM}: --data: the text is too short (${corpus.train.length} training and ` +
          `${corpus.val.length} validation tokens) for --block ${config.block}`,
      );
    }
    prompt = String(v.prompt) || corpus.tokenizer.decode(corpus.val.subarray(0, 16));
    const ids = corpus.tokenizer.encode(prompt);
    if (ids.some((i) => i >= m.vocabSize)) {
      throw new UsageError(`${PROGRAM}: --prompt has tokens beyond the model's vocabulary`);
    }
    before = await evaluate(pretrained, corpus.val, config.batch, config.block, evalBatches, 1234);
  } finally {
    for (const p of pretrained.parameters()) p.dispose();
  }

  const tokens = corpus.train.length + corpus.val.length;
  io.log(`ulp finetune: a pretrained GPT-2 in ${names.join(", ")} (GPU: ${info.description})`);
  io.log(
    `Model: ${ckpt} (${m.nLayer} layers, ${m.nHead} heads, width ${m.nEmbd}, vocabulary ` +
      `${m.vocabSize}); text: ${corpus.source}, ${tokens} GPT-2 tokens; before fine-tuning ` +
      `its validation loss is ${before.toFixed(4)} (perplexity ${Math.exp(before).toFixed(2)}).` +
      ` ${config.steps} steps of ${config.batch} x ${config.block} tokens under each strategy.\n`,
  );
  const log = await JsonlLog.open(`${out}/log.jsonl`);
  log.append({ type: "eval", strategy: "pretrained", step: 0, valLoss: before });
  const exported: string[] = [];
  const results = await compareStrategies(corpus, names, config, {
    log,
    diagEvery: Number(v["diag-every"]),
    evalBatches,
    sampleTokens: Number(v["sample-tokens"]),
    prompt,
    init: () => fromPretrained(ckpt),
    after: v.export
      ? async (name, trainer) => {
        const dir = `${out}/${name}`;
        await exportPretrained(trainer.model, dir, {
          optimizer: trainer.optimizer,
          metadata: { "ulp.finetuned_from": ckpt, "ulp.steps": String(trainer.step) },
        });
        exported.push(dir);
      }
      : undefined,
    ...progressOutput(io),
  });
  const table = perplexityTable(before, results) + "\n\n" + comparisonTable(results);
  const samples = await writeSamplesAndChart(
    out,
    results,
    `Fine-tuning ${ckpt}: ${names.join(" vs ")}`,
  );
  await Deno.writeTextFile(
    `${out}/report.md`,
    reportText({
      ckpt,
      m,
      config,
      corpus,
      gpu: info.description,
      before,
      table,
      samples,
      exported,
      names,
    }),
  );
  io.log(`\n${table}\n`);
  if (exported.length) io.log(`Fine-tuned models (Hugging Face layout): ${exported.join(", ")}`);
  io.log(
    `Report: ${out}/report.md (with loss.svg, log.jsonl and sample.txt), ` +
      `in ${duration((performance.now() - t0) / 1000)}.`,
  );
  return 0;
}

/** Validation loss and perplexity of the pretrained model and of each fine-tuned one. */
export function perplexityTable(before: number, results: StrategyResult[]): string {
  const row = (name: string, loss: number) =>
    `| ${name} | ${loss.toFixed(4)} | ${Math.exp(loss).toFixed(2)} | ${
      name === "pretrained (f32)"
        ? ""
        : (loss - before >= 0 ? "+" : "") + (loss - before).toFixed(4)
    } |`;
  return [
    "| model | validation loss | perplexity | change |",
    "|---|---|---|---|",
    row("pretrained (f32)", before),
    ...results.map((r) => row(r.strategy, r.valLoss)),
  ].join("\n");
}

function reportText(o: {
  ckpt: string;
  m: GPT["config"];
  config: RunConfig;
  corpus: Corpus;
  gpu: string;
  before: number;
  table: string;
  samples: string;
  exported: string[];
  names: string[];
}): string {
  const { m, config: c } = o;
  return `# ulp finetune: ${o.ckpt} in ${o.names.join(", ")}

A pretrained GPT-2 (${o.ckpt}: ${m.nLayer} layers, ${m.nHead} heads, width ${m.nEmbd}, vocabulary
${m.vocabSize}, context ${m.blockSize}) fine-tuned on ${o.corpus.source}
(${o.corpus.train.length + o.corpus.val.length} GPT-2 tokens, the last 10% for validation),
${c.steps} steps of batch ${c.batch} x ${c.block} tokens with AdamW (lr ${c.lr}, ${c.warmup} warmup
steps, cosine decay, betas 0.9/0.95, weight decay ${c.weightDecay}), seed ${c.seed}: the same
weights and batches for every strategy. GPU: ${o.gpu}.

${o.table}

- **validation loss**: cross-entropy (nats per token) on the same validation batches before and
  after; **perplexity** = e^loss; **change**: against the pretrained model in f32.
- **updates lost**: the fraction of weight updates that did not change the stored weight (value +
  update == value after rounding), measured on the device every few steps (DESIGN.md section 4).
- **EDQ ratio**: <effective update, intended update> / ||intended update||^2; 1 when nothing is lost.
- **bytes/param**: weight + gradient + optimizer state, measured from \`memory()\`.

![training loss](loss.svg)

Every step of every run is in \`log.jsonl\`.${
    o.exported.length
      ? `\n\nThe fine-tuned models, in Hugging Face's GPT-2 layout (Collage weights as hi + lo in f32):
${o.exported.map((d) => `\`${d}\``).join(", ")}.`
      : ""
  }

## What each model wrote (temperature 0.8, top-k 20)

\`\`\`
${o.samples}\`\`\`
`;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
