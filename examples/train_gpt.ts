/**
 * Trains a GPT on a text file (or, by default, on ulp's own source code) in a chosen
 * precision: a character-level model (the default), a model of a named size (--model gpt2,
 * char-tiny, ...) on GPT-2's BPE tokens (--tokenizer gpt2), or a Hugging Face GPT-2
 * checkpoint fine-tuned (--init-from); and writes the run to its output folder: `log.jsonl` (one JSON object per
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
 *   deno run --allow-read=.,gpt2 --allow-write=out examples/train_gpt.ts --init-from gpt2 --lr 3e-5 --block 128
 *   deno run --allow-read=. examples/train_gpt.ts --help
 *
 * @module
 */
import {
  deviceInfo,
  fromPretrained,
  GPT,
  GPT_PRESETS,
  type GPTConfig,
  readCheckpoint,
} from "../mod.ts";
import {
  checks,
  type CliIO,
  consoleIO,
  type Option,
  parseOptions,
  permissionMessage,
  progressOutput,
  requirePermission,
  requirePermissions,
  runCli,
  UsageError,
} from "./_cli.ts";
import { openRunFolder } from "./_run_folder.ts";
import {
  checkModelConfig,
  type Corpus,
  loadCorpus,
  ROOT,
  sample,
  tokenizeProgress,
  type TokenizerName,
  tokenizerOption,
  unigramEntropy,
} from "./_text.ts";
import {
  checkResume,
  DEFAULT_RUN,
  type GoodCheckpoint,
  type RunConfig,
  runTraining,
  Trainer,
} from "./_train.ts";
import {
  checkRunConfig,
  memoryLimitOption,
  parseBytes,
  restoreSettings,
  runConfig,
  runOptions,
} from "./_run_flags.ts";
import { JsonlLog, Progress, readLog } from "./_progress.ts";
import { lineChart } from "./_chart.ts";
import { setMemoryLimit } from "../mod.ts";
import {
  inspect,
  inspectHeatmap,
  inspectJsonl,
  type Inspector,
  type InspectRecord,
} from "../nn/inspect.ts";

const PROGRAM = "train_gpt";
const USAGE = "deno run --allow-read=. --allow-write=out examples/train_gpt.ts [options]";

/** The options, with their help text, defaults and checks: `--help` is generated from them. */
export const OPTIONS: Record<string, Option> = {
  data: {
    type: "string",
    help: "text file to train on (.gz allowed); default: ulp's own source",
    default: "",
  },
  tokenizer: {
    ...tokenizerOption(),
    help: "char (the text's characters) or gpt2 (GPT-2's BPE; the default with --init-from " +
      "or a gpt2 --model; the token stream of --data is cached as a .bin in --out)",
  },
  model: {
    type: "string",
    help: `a named size instead of --layers/--heads/--width: ${
      Object.keys(GPT_PRESETS).join(", ")
    } (GPT-2's context of 1024, or --block if longer)`,
    default: "",
    check: checks.oneOf(() => Object.keys(GPT_PRESETS)),
  },
  "init-from": {
    type: "string",
    help: "start from a Hugging Face GPT-2 checkpoint: its model.safetensors, or the folder " +
      "with it and config.json (the size comes from it)",
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
  inspect: {
    type: "string",
    help: "record where precision is lost every N steps (per layer and tensor: amax, zeros, " +
      "underflow/saturation in e4m3, e5m2, bf16, updates lost, the first Inf/NaN): " +
      "inspect.jsonl and heat maps in the report; 0: off",
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
    help: "stop at a blow-up, naming the step and the last good checkpoint: a NaN/Inf loss, " +
      "the GradScaler's scale below 1 or 10 skipped steps in a row, weights no longer finite " +
      "(without it: a warning)",
    default: false,
  },
  "memory-limit": memoryLimitOption(),
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
  "inspect",
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
  let tokenizer: TokenizerName = given.has("tokenizer")
    ? String(v.tokenizer) as TokenizerName
    : v["init-from"] || String(v.model).startsWith("gpt2")
    ? "gpt2"
    : "char";
  /** The model of a run with --model or --init-from (or a resumed one), else null. */
  let modelConfig: GPTConfig | null = null;
  const initFrom = String(v["init-from"]);
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
      vocab?: string[] | null;
      data?: { path: string; checksum: string };
      options?: Record<string, string | boolean>;
      tokenizer?: TokenizerName;
      model?: GPTConfig;
    };
    const savedTokenizer = meta.tokenizer ?? "char";
    if (!meta.config || !meta.data || (savedTokenizer === "char" && !meta.vocab)) {
      throw new UsageError(`${PROGRAM}: --resume: '${resume}' was not written by train_gpt`);
    }
    for (const k of ["model", "init-from"]) {
      if (given.has(k)) {
        throw new UsageError(
          `${PROGRAM}: --${k}: a resumed run keeps the model of its checkpoint (leave it out)`,
        );
      }
    }
    if (given.has("tokenizer") && tokenizer !== savedTokenizer) {
      throw new UsageError(
        `${PROGRAM}: --tokenizer ${tokenizer} differs from the checkpoint's ${savedTokenizer}`,
      );
    }
    tokenizer = savedTokenizer;
    modelConfig = meta.model === undefined
      ? null
      : checkModelConfig(meta.model, `${PROGRAM}: --resume: '${resume}'`);
    saved = { config: meta.config, given };
    // the run's other options (evaluation, logging, checkpoints) continue too, unless given
    restoreSettings(PROGRAM, OPTIONS, RUN_SETTINGS, meta.options, given, v);
    // the step and data position against the run, before anything is built
    checkResume(resume, info, checkRunConfig(PROGRAM, "--resume", meta.config));
    if (given.has("data") && dataPath !== meta.data.path) {
      throw new UsageError(
        `${PROGRAM}: --data '${dataPath}' differs from the checkpoint's '${meta.data.path}'`,
      );
    }
    dataPath = meta.data.path;
    vocab = meta.vocab ?? undefined;
    checksum = meta.data.checksum;
    if (!given.has("out")) {
      out = resume.includes("/") ? resume.slice(0, resume.lastIndexOf("/")) : ".";
    }
  }
  const sized = ["layers", "heads", "width"].filter((k) => given.has(k));
  for (const k of ["model", "init-from"]) {
    if (given.has(k) && sized.length) {
      throw new UsageError(
        `${PROGRAM}: --${k} sets the model's size; leave out --${sized.join(", --")}`,
      );
    }
  }
  if (initFrom && given.has("model")) {
    throw new UsageError(
      `${PROGRAM}: --init-from takes the size of its checkpoint: leave out --model`,
    );
  }
  if (initFrom && tokenizer !== "gpt2") {
    throw new UsageError(
      `${PROGRAM}: --init-from: a GPT-2 checkpoint reads GPT-2's tokens; use --tokenizer gpt2`,
    );
  }
  let config = runConfig(PROGRAM, v, DEFAULT_RUN, saved);
  const int = (name: string) => Number(v[name]);
  const stopAfter = v["stop-after"] ? int("stop-after") : undefined;
  await requirePermissions(PROGRAM, [
    { kind: "read", path: dataPath || ROOT, what: "the data (--data)" },
    ...(initFrom
      ? [{ kind: "read" as const, path: initFrom, what: "the checkpoint (--init-from)" }]
      : []),
    { kind: "read", path: out, what: "the output folder (--out)" },
    { kind: "write", path: out, what: "the output folder (--out)" },
  ]);
  if (v["memory-limit"]) setMemoryLimit(parseBytes(String(v["memory-limit"]))!);
  // one writer per folder: refused while another run holds it; released when run() returns
  await using folder = await openRunFolder(PROGRAM, out, resume || null);
  for (const note of folder.notes) log(note);
  resume = folder.resume ?? "";

  const corpus: Corpus = await loadCorpus(dataPath, vocab, {
    tokenizer,
    cacheDir: out,
    progress: tokenizeProgress(progressOutput(io).write, progressOutput(io).live),
  }).catch((e) => {
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
  const unit = corpus.tokenizer.name === "char" ? "characters" : `${tokenizer} tokens`;
  log(
    `data: ${corpus.source}, ${corpus.train.length + corpus.val.length} ${unit}, ` +
      `vocabulary ${corpus.tokenizer.vocabSize}; unigram entropy ${h0.toFixed(3)} nats`,
  );
  let init: GPT | undefined;
  if (initFrom) {
    const loaded = await fromPretrained(initFrom);
    init = loaded;
    log(
      `init from ${initFrom}: a GPT-2 of ${loaded.config.nLayer} layers, width ${loaded.config.nEmbd}`,
    );
  } else if (modelConfig || given.has("model")) {
    const cfg = modelConfig ?? GPT.config(String(v.model), {
      vocabSize: corpus.tokenizer.vocabSize,
      seed: config.seed,
    });
    init = new GPT({ ...cfg, blockSize: Math.max(cfg.blockSize, config.block) });
  }
  if (init) {
    const m = init.config;
    config = { ...config, nLayer: m.nLayer, nHead: m.nHead, nEmbd: m.nEmbd };
    const problem = config.block > m.blockSize
      ? `--block ${config.block} exceeds the model's context of ${m.blockSize}`
      : maxId(corpus) >= m.vocabSize
      ? `the text has token id ${maxId(corpus)}, beyond the model's vocabulary of ${m.vocabSize}`
      : null;
    if (problem) {
      for (const p of init.parameters()) p.dispose();
      throw new UsageError(`${PROGRAM}: ${problem}`);
    }
  }
  const trainer = new Trainer(config, corpus, init);
  try {
    log(
      `model: ${config.nLayer} layer${config.nLayer === 1 ? "" : "s"}, ${config.nHead} ` +
        `head${config.nHead === 1 ? "" : "s"}, width ${config.nEmbd}, ` +
        `context ${config.block}, ${trainer.nParams} parameters; precision ${config.precision}`,
    );
    await Deno.mkdir(out, { recursive: true });
    let lastGood: GoodCheckpoint | null = null;
    if (resume) {
      await trainer.resume(resume);
      lastGood = { path: resume, step: trainer.step };
      log(`resumed from ${resume} at step ${trainer.step}`);
      if (trainer.step >= config.steps) {
        log(
          `that run was finished: it trained all ${config.steps} steps, so there is nothing left ` +
            `to train (--steps N with N > ${trainer.step} continues it); writing its report again`,
        );
      }
    }
    const inspectFrom = trainer.step + 1; // the log numbers steps from 1
    const inspector = int("inspect") > 0
      ? inspect(trainer.model, {
        every: int("inspect"),
        optimizer: trainer.optimizer,
        startStep: inspectFrom,
      })
      : null;
    const jsonl = await JsonlLog.open(`${out}/log.jsonl`, resume ? trainer.step : undefined);
    const progress = new Progress({ total: config.steps, ...progressOutput(io) });
    const result = await runTraining(trainer, {
      progress,
      log: jsonl,
      meta: {
        options: Object.fromEntries(RUN_SETTINGS.map((k) => [k, v[k]])),
        ...(init ? { model: modelMeta(init) } : {}),
        ...(initFrom ? { initFrom } : {}),
      },
      evalEvery: int("eval-every"),
      diagEvery: int("log-precision"),
      sharpnessEvery: int("log-sharpness"),
      checkpoint: `${out}/checkpoint.json`,
      checkpointEvery: int("checkpoint-every"),
      stopAfter,
      stopOnNan: !!v["stop-on-nan"],
      lastGood,
      warn: (text) => io.error(`${PROGRAM}: ${text}`),
    });
    const maps = inspector ? await writeInspection(out, inspector, inspectFrom, log) : [];
    if (result.stopped) {
      const good = result.lastGood;
      io.error(
        `${PROGRAM}: stopped at step ${result.stopped.step}: ${result.stopped.reason} ` +
          `(--stop-on-nan); ${
            good
              ? `the last good checkpoint of this run is ${good.path} (step ${good.step})`
              : "this run wrote no checkpoint before it"
          }`,
      );
      return 1;
    }
    const secs = (result.ms / 1000).toFixed(1);
    if (trainer.step < config.steps) {
      log(`stopped after step ${trainer.step} (${secs} s); continue with --resume ${out}`);
      return 0;
    }
    log(`trained to step ${trainer.step} in ${secs} s; log, checkpoint and report in ${out}/`);
    await report(out, trainer, h0, int("sample-tokens"), log, maps);
    return 0;
  } finally {
    trainer.dispose();
  }
}

/** The model's configuration as a checkpoint stores it (its seed only decided the init). */
function modelMeta(model: GPT): Record<string, unknown> {
  const { seed: _, ...rest } = model.config as GPTConfig;
  return { ...rest };
}

/** The largest token id of a corpus. */
function maxId(corpus: Corpus): number {
  let m = 0;
  for (const ids of [corpus.train, corpus.val]) for (const i of ids) if (i > m) m = i;
  return m;
}

/** The heat maps of an inspected run. */
const INSPECT_MAPS = [
  "amax",
  "binades",
  "zeros",
  "e4m3.underflow",
  "e4m3.saturate",
  "e5m2.underflow",
  "bf16.underflow",
  "nonFinite",
  "lost",
];

/**
 * Reads the inspector's records (one readback per inspected step), writes `inspect.jsonl`
 * (after the records of the run's steps before `first`, kept from a run this one resumes)
 * and one heat map per statistic, logs the first non-finite; returns the maps' file names.
 */
async function writeInspection(
  out: string,
  inspector: Inspector,
  first: number,
  log: (line: string) => void,
): Promise<string[]> {
  const fresh = await inspector.read();
  inspector.remove();
  const earlier = await Deno.readTextFile(`${out}/inspect.jsonl`)
    .then((text) =>
      text.split("\n").filter((l) => l.trim() !== "")
        .map((l) => JSON.parse(l) as InspectRecord).filter((r) => r.step < first)
    )
    .catch(() => [] as InspectRecord[]); // none, or unreadable: this part's records alone
  const records = [...earlier, ...fresh];
  if (records.length === 0) return [];
  await Deno.writeTextFile(`${out}/inspect.jsonl`, inspectJsonl(records));
  const files: string[] = [];
  for (const stat of INSPECT_MAPS) {
    const file = `inspect_${stat.replace(".", "_")}.svg`;
    await Deno.writeTextFile(`${out}/${file}`, inspectHeatmap(records, stat));
    files.push(file);
  }
  const bad = records.find((r) => r.firstNonFinite !== null);
  if (bad) {
    const f = bad.firstNonFinite!;
    log(
      `inspect: first Inf/NaN at step ${bad.step}, ${f.phase}: ${f.layer} ${f.tensor} (${f.op})`,
    );
  }
  log(`inspect: ${records.length} inspected steps in ${out}/inspect.jsonl, heat maps beside it`);
  return files;
}

/** Writes `report.md`, `loss.svg` and `sample.txt` of a finished run (from its whole log). */
async function report(
  out: string,
  trainer: Trainer,
  h0: number,
  sampleTokens: number,
  log: (line: string) => void,
  maps: string[] = [],
): Promise<void> {
  const records = await readLog(`${out}/log.jsonl`);
  const steps = records.filter((r) => r.type === "step" && typeof r.loss === "number");
  const evals = records.filter((r) => r.type === "eval");
  const c = trainer.config;
  let text = "";
  if (sampleTokens > 0) {
    const { tokenizer, val } = trainer.corpus;
    let prompt = "export function ";
    let start = tokenizer.encode(prompt);
    if (start.some((i) => i >= trainer.model.config.vocabSize)) {
      start = val.slice(0, 8); // a model of a reduced vocabulary: the text's own first tokens
      prompt = tokenizer.decode(start);
    }
    const ids = await sample(trainer.model, start, sampleTokens, {
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
      `${c.nLayer} layer${c.nLayer === 1 ? "" : "s"}, ${c.nHead} head${
        c.nHead === 1 ? "" : "s"
      }, ` +
      `width ${c.nEmbd}, context ${c.block}, batch ` +
      `${c.batch}, AdamW lr ${c.lr} (${c.warmup} warmup, cosine), ${c.steps} steps, seed ` +
      `${c.seed}; data: ${trainer.corpus.source} (${trainer.corpus.tokenizer.name} tokens).\n\n` +
      `| final train loss (mean of 10) | validation loss | unigram entropy | bytes/param |\n` +
      `|---|---|---|---|\n| ${smooth.at(-1)?.[1].toFixed(4)} | ${last?.toFixed(4) ?? "n/a"} | ` +
      `${h0.toFixed(3)} | ${
        trainer.bytesPerParam ? trainer.bytesPerParam.toFixed(0) : "n/a"
      } |\n\n` +
      `![loss](loss.svg)\n\n` +
      (maps.length
        ? `Where precision is lost (--inspect, inspect.jsonl):\n\n${
          maps.map((f) => `![${f}](${f})`).join("\n\n")
        }\n\n`
        : "") +
      (text ? `Sample (temperature 0.8, top-k 20):\n\n\`\`\`\n${text}\n\`\`\`\n` : ""),
  );
}

if (import.meta.main) Deno.exit(await main(Deno.args));
