/**
 * GPT-2 checkpoints in Hugging Face's layout, in and out: `fromPretrained` builds a `GPT` from
 * a `model.safetensors` (and the `config.json` beside it), `exportPretrained` writes a `GPT`
 * back as one, so `transformers.GPT2LMHeadModel.from_pretrained(dir)` (and nanoGPT's loader,
 * which goes through it) reads it.
 *
 * The layout (transformers' modeling_gpt2.py): tensors `wte.weight` [vocab, C], `wpe.weight`
 * [positions, C], per block `h.N.ln_1`, `h.N.attn.c_attn` (q, k, v side by side in the
 * output), `h.N.attn.c_proj`, `h.N.ln_2`, `h.N.mlp.c_fc`, `h.N.mlp.c_proj`, and `ln_f`, each
 * with `.weight` and `.bias`. The four projections are `Conv1D` layers whose weights are
 * stored [in, out] (y = x W + b), the transpose of `Linear`'s [out, in]; everything else has
 * ulp's shape and name. The LM head is tied to `wte`. Names may carry the `transformer.`
 * prefix (files written by `GPT2LMHeadModel.save_pretrained` in older versions), a file may
 * hold `lm_head.weight` (it must equal `wte.weight`: ulp's head is tied) and the causal-mask
 * buffers `h.N.attn.bias` [1, 1, P, P] and `h.N.attn.masked_bias` [] (the hub's `gpt2` has
 * them); those are checked by shape and skipped. Any other name, a missing tensor, a shape
 * that does not fit the configuration or a dtype other than F32, F16 and BF16 is a
 * `FormatError` naming the tensor, raised before the model is built: never a partial load.
 *
 * `config.json` gives the size (`n_layer`, `n_head`, `n_embd`, `n_positions`, `vocab_size`),
 * `layer_norm_epsilon` and `activation_function` (`gelu_new`, `gelu_pytorch_tanh` and
 * `gelu_fast` are the tanh approximation, `gelu` the exact form); options that change
 * GPT-2's computation in ways ulp does not implement (`n_inner` other than 4 C,
 * `scale_attn_by_inverse_layer_idx`, `reorder_and_upcast_attn`, no `scale_attn_weights`) are
 * refused. Without it the size comes from the shapes and the head count is `n_embd / 64`,
 * as in all four GPT-2 sizes (`nHead` overrides it).
 *
 * @module
 */

import { type DType, dtype, type DTypeLike } from "../dtypes/mod.ts";
import { FormatError, ValueError } from "../errors.ts";
import { fmtShape, fromCodes, type Tensor, tidy } from "../tensor/mod.ts";
import { noGrad } from "../autograd/mod.ts";
import { ready } from "../gpu/mod.ts";
import { type Entry, headerLength, parseHeader } from "./_safetensors_header.ts";
import { writeAtomic } from "./safetensors.ts";
import { jsonProblem } from "./_excerpt.ts";
import { GPT, type GPTConfig, provideGPTLoader } from "./gpt.ts";

/** Options of `fromPretrained` (`GPT.fromPretrained`). */
export interface PretrainedOptions {
  /** Storage dtype of the parameters (default f32; apply a strategy with `applyPrecision`). */
  dtype?: DTypeLike;
  /** Dropout of the model (default 0: `config.json`'s `*_pdrop` values are not used). */
  dropout?: number;
  /** Attention heads, when the checkpoint has no `config.json` (default `n_embd / 64`). */
  nHead?: number;
  /** The MLP's GELU, instead of `config.json`'s `activation_function` (default "tanh"). */
  gelu?: "none" | "tanh";
  /** Fused attention kernels where they apply (default true; see `GPTConfig`). */
  fusedAttention?: boolean;
}

/** Options of `exportPretrained`. */
export interface ExportOptions {
  /** Dtype of the tensors in the file: "f32" (default), "f16" or "bf16", rounded RNE. */
  dtype?: "f32" | "f16" | "bf16";
  /**
   * The model's optimizer, for state that belongs to the weights: Collage's low parts
   * (`paramLo`): a Collage weight is exported as hi + lo, rounded once to `dtype`. Required
   * when `precision` names a Collage strategy.
   */
  optimizer?: PretrainedOptimizer;
  /** The strategy the model was trained in (default: the optimizer's), noted in metadata. */
  precision?: string;
  /** More string metadata for the file's `__metadata__` (beside `format: "pt"`). */
  metadata?: Record<string, string>;
}

/**
 * What `exportPretrained` reads from an optimizer (any of ulp's: `AdamW`, `SGD`): its
 * parameter groups, its precision strategy's name and its state dict.
 *
 * @example
 * ```ts
 * import { AdamW, GPT, type PretrainedOptimizer, ready } from "../mod.ts";
 * await ready();
 * const model = new GPT({ vocabSize: 8, blockSize: 4, nLayer: 1, nHead: 1, nEmbd: 4 });
 * const opt: PretrainedOptimizer = new AdamW(model.parameters());
 * console.log(opt.precision.name); // "fp32"
 * ```
 */
export interface PretrainedOptimizer {
  /** The parameter groups, whose parameters are the model's (in the model's order). */
  readonly paramGroups: readonly { readonly params: readonly Tensor[] }[];
  /** The precision strategy the optimizer keeps its state in. */
  readonly precision: { readonly name: string };
  /** The optimizer's state (Collage's low parts among it). */
  stateDict(): { state: Record<number, Record<string, unknown>> };
}

/** The Conv1D weights of GPT-2, stored [in, out] in Hugging Face's files. */
const CONV1D = /^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$/;
/** Buffers of GPT-2's attention (the causal mask and its fill value), not parameters. */
const MASK = /^h\.(\d+)\.attn\.(bias|masked_bias)$/;
const FILE_DTYPES = ["f32", "f16", "bf16"];
const TANH_NAMES = ["gelu_new", "gelu_pytorch_tanh", "gelu_fast"];

/** A checkpoint's file and its config.json (or null), from a file or folder path. */
async function locate(path: string): Promise<{ file: string; config: string | null }> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ValueError(
        `fromPretrained(): nothing at '${path}'; give a model.safetensors file or the folder ` +
          `that holds it (from the Hugging Face hub, e.g. the 'gpt2' repository)`,
      );
    }
    throw e;
  }
  const dir = stat.isDirectory ? path.replace(/\/+$/, "") : path.replace(/\/?[^/]*$/, "") || ".";
  const file = stat.isDirectory ? `${dir}/model.safetensors` : path;
  if (stat.isDirectory && !(await exists(file))) {
    throw new ValueError(
      `fromPretrained(): the folder '${path}' has no model.safetensors (sharded and .bin ` +
        `checkpoints are not read; convert them to one model.safetensors)`,
    );
  }
  const config = `${dir}/config.json`;
  return { file, config: (await exists(config)) ? config : null };
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Reads exactly `n` bytes at `pos`. */
async function readAt(f: Deno.FsFile, pos: number, n: number, path: string): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  await f.seek(pos, Deno.SeekMode.Start);
  for (let at = 0; at < n;) {
    const got = await f.read(out.subarray(at));
    if (got === null) throw new FormatError(`fromPretrained(): '${path}' ends early`);
    at += got;
  }
  return out;
}

/** The size a checkpoint describes, from config.json (when given) or its tensors' shapes. */
function configOf(
  raw: Record<string, unknown> | null,
  shapes: Map<string, number[]>,
  opts: PretrainedOptions,
  where: string,
): GPTConfig {
  const bad = (msg: string): never => {
    throw new FormatError(`fromPretrained(): ${where}: ${msg}`);
  };
  if (raw) {
    const int = (k: string, v: unknown = raw[k]): number =>
      Number.isSafeInteger(v) && (v as number) > 0
        ? v as number
        : bad(`config.json's ${k} must be a positive integer, got ${JSON.stringify(v)}`);
    if (raw.model_type !== undefined && raw.model_type !== "gpt2") {
      bad(`config.json's model_type is ${JSON.stringify(raw.model_type)}, not "gpt2"`);
    }
    const nEmbd = int("n_embd");
    if (raw.n_inner !== undefined && raw.n_inner !== null && raw.n_inner !== 4 * nEmbd) {
      bad(`n_inner ${raw.n_inner} is not 4 * n_embd (${4 * nEmbd}), which ulp's MLP has`);
    }
    for (
      const [k, want] of [
        ["scale_attn_weights", true],
        ["scale_attn_by_inverse_layer_idx", false],
        ["reorder_and_upcast_attn", false],
      ] as const
    ) {
      if (raw[k] !== undefined && raw[k] !== want) {
        bad(`${k} is ${JSON.stringify(raw[k])}; ulp's attention implements only ${want}`);
      }
    }
    const act = raw.activation_function ?? "gelu_new";
    const gelu = TANH_NAMES.includes(act as string) ? "tanh" : act === "gelu" ? "none" : bad(
      `activation_function ${JSON.stringify(act)} is not one ulp has (gelu_new, ` +
        `gelu_pytorch_tanh, gelu_fast: tanh GELU; gelu: exact)`,
    );
    const eps = raw.layer_norm_epsilon ?? 1e-5;
    if (typeof eps !== "number" || !(eps >= 0 && eps < 1)) {
      bad(`layer_norm_epsilon must be a number in [0, 1), got ${JSON.stringify(eps)}`);
    }
    return {
      vocabSize: int("vocab_size"),
      blockSize: int("n_positions", raw.n_positions ?? raw.n_ctx),
      nLayer: int("n_layer"),
      nHead: opts.nHead ?? int("n_head"),
      nEmbd,
      gelu: opts.gelu ?? gelu,
      layerNormEps: eps as number,
    };
  }
  const wte = shapes.get("wte.weight"), wpe = shapes.get("wpe.weight");
  if (!wte || wte.length !== 2) bad("it has no 2-D tensor 'wte.weight' (the token embedding)");
  if (!wpe || wpe.length !== 2) bad("it has no 2-D tensor 'wpe.weight' (the position embedding)");
  let nLayer = 0;
  for (const k of shapes.keys()) {
    const m = /^h\.(\d+)\./.exec(k);
    if (m) nLayer = Math.max(nLayer, Number(m[1]) + 1);
  }
  if (nLayer === 0) bad("it has no block tensors ('h.0.ln_1.weight', ...)");
  const nEmbd = wte![1];
  const nHead = opts.nHead ?? (nEmbd % 64 === 0 ? nEmbd / 64 : 0);
  if (!nHead) {
    bad(`without config.json the heads are n_embd / 64, and n_embd is ${nEmbd}; pass nHead`);
  }
  return {
    vocabSize: wte![0],
    blockSize: wpe![0],
    nLayer,
    nHead,
    nEmbd,
    gelu: opts.gelu ?? "tanh",
    layerNormEps: 1e-5,
  };
}

/** The parameter names and shapes (ulp's [out, in] for Conv1D) of a GPT of size `c`. */
function expectedShapes(c: GPTConfig): Map<string, number[]> {
  const C = c.nEmbd;
  const m = new Map<string, number[]>([["wte.weight", [c.vocabSize, C]], [
    "wpe.weight",
    [c.blockSize, C],
  ]]);
  for (let i = 0; i < c.nLayer; i++) {
    const p = `h.${i}.`;
    for (
      const [k, s] of [
        ["ln_1.weight", [C]],
        ["ln_1.bias", [C]],
        ["attn.c_attn.weight", [3 * C, C]],
        ["attn.c_attn.bias", [3 * C]],
        ["attn.c_proj.weight", [C, C]],
        ["attn.c_proj.bias", [C]],
        ["ln_2.weight", [C]],
        ["ln_2.bias", [C]],
        ["mlp.c_fc.weight", [4 * C, C]],
        ["mlp.c_fc.bias", [4 * C]],
        ["mlp.c_proj.weight", [C, 4 * C]],
        ["mlp.c_proj.bias", [C]],
      ] as const
    ) m.set(p + k, [...s]);
  }
  m.set("ln_f.weight", [C]);
  m.set("ln_f.bias", [C]);
  return m;
}

/** A file's shape of a tensor of ulp shape `s` (Conv1D weights transposed). */
function fileShape(name: string, s: number[]): number[] {
  return CONV1D.test(name) ? [s[1], s[0]] : s;
}

/** Codes of a row-major [rows, cols] matrix, transposed. */
function transposeCodes<A extends Uint16Array | Uint32Array>(
  src: A,
  rows: number,
  cols: number,
): A {
  const out = new (src.constructor as new (n: number) => A)(src.length);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = src[row + c];
  }
  return out;
}

function codesOf(bytes: Uint8Array, d: DType): Uint16Array | Uint32Array {
  const copy = bytes.slice(); // aligned and owned
  return d.laneBits === 16
    ? new Uint16Array(copy.buffer, 0, copy.byteLength / 2)
    : new Uint32Array(copy.buffer, 0, copy.byteLength / 4);
}

function same(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * A GPT-2 from a Hugging Face checkpoint: `path` is a `model.safetensors` file or the folder
 * that holds it, with `config.json` beside it when present (see the module's notes for the
 * names, shapes and options it reads). The file is validated entirely (names, shapes,
 * dtypes, `config.json`) before the model is built, and any mismatch is a `FormatError`
 * naming the tensor; then the weights are read one tensor at a time (F32, F16 or BF16;
 * Conv1D weights transposed to `Linear`'s [out, in]) into a model whose parameters have
 * `opts.dtype` (default f32). Put it into a precision strategy with `applyPrecision`. Needs
 * `--allow-read` for the folder.
 *
 * @example
 * ```ts ignore
 * import { applyPrecision, fromPretrained } from "../mod.ts";
 * // model.safetensors and config.json of https://huggingface.co/gpt2 in ./gpt2/
 * const model = applyPrecision(await fromPretrained("gpt2"), "bf16");
 * console.log(model.config.nLayer, model.config.gelu); // 12 "tanh"
 * ```
 */
export async function fromPretrained(path: string, opts: PretrainedOptions = {}): Promise<GPT> {
  if (typeof path !== "string" || path === "") {
    throw new ValueError(`fromPretrained(): expects a path, got ${JSON.stringify(path)}`);
  }
  const { file, config } = await locate(path);
  await ready(); // the device, before any tensor is made
  using f = await Deno.open(file, { read: true });
  const size = (await f.stat()).size;
  const head = await readAt(f, 0, Math.min(8, size), file);
  const hlen = headerLength(head, size);
  const header = parseHeader(await readAt(f, 0, 8 + hlen, file), size - 8 - hlen);
  const base = 8 + hlen;

  // the file's tensors by ulp name (prefix stripped), and the ones to skip
  const byName = new Map<string, Entry>();
  let lmHead: Entry | null = null;
  const masks: Entry[] = [];
  for (const e of header.entries) {
    const name = e.name.startsWith("transformer.") ? e.name.slice(12) : e.name;
    if (e.name === "lm_head.weight") lmHead = e;
    else if (MASK.test(name)) masks.push(e);
    else if (byName.has(name)) {
      throw new FormatError(
        `fromPretrained(): '${file}' holds '${name}' twice (with and without 'transformer.')`,
      );
    } else byName.set(name, e);
  }
  let raw: Record<string, unknown> | null = null;
  if (config) {
    try {
      raw = JSON.parse(await Deno.readTextFile(config));
    } catch (e) {
      // V8's message quotes the file: say where, not what
      throw new FormatError(`fromPretrained(): '${config}' is not JSON (${jsonProblem(e)})`);
    }
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      throw new FormatError(`fromPretrained(): '${config}' is not a JSON object`);
    }
  }
  const shapes = new Map([...byName].map(([k, e]) => [k, e.shape]));
  const cfg = configOf(raw, shapes, opts, config ?? file);
  if (cfg.nEmbd % cfg.nHead !== 0) {
    throw new FormatError(
      `fromPretrained(): ${config ?? file}: n_embd ${cfg.nEmbd} is not a multiple of n_head ` +
        `${cfg.nHead}`,
    );
  }

  // every name, shape and dtype, before anything is built
  const want = expectedShapes(cfg);
  const size_ = `GPT-2 of ${cfg.nLayer} layers, width ${cfg.nEmbd}, vocabulary ${cfg.vocabSize}, ` +
    `${cfg.blockSize} positions`;
  for (const [name, e] of byName) {
    const s = want.get(name);
    if (!s) {
      throw new FormatError(
        `fromPretrained(): '${file}' holds '${e.name}', which is not a tensor of a ${size_} ` +
          `(a different architecture, or more layers than config.json says?)`,
      );
    }
    const fs = fileShape(name, s);
    if (!same(e.shape, fs)) {
      throw new FormatError(
        `fromPretrained(): '${e.name}' has shape ${fmtShape(e.shape)} in '${file}', but a ` +
          `${size_} has ${fmtShape(fs)}${CONV1D.test(name) ? " (Conv1D: [in, out])" : ""}`,
      );
    }
    if (!FILE_DTYPES.includes(e.dt.name)) {
      throw new FormatError(
        `fromPretrained(): '${e.name}' in '${file}' is ${e.dt.name}; GPT-2 weights are read ` +
          `from F32, F16 or BF16`,
      );
    }
  }
  const missing = [...want.keys()].filter((k) => !byName.has(k));
  if (missing.length) {
    throw new FormatError(
      `fromPretrained(): '${file}' has no '${missing[0]}'${
        missing.length > 1 ? ` (and ${missing.length - 1} more tensors)` : ""
      }, which a ${size_} needs: not a complete GPT-2 checkpoint`,
    );
  }
  for (const e of masks) {
    const P = cfg.blockSize;
    const ok = e.name.endsWith("masked_bias") ? e.shape.length === 0 : same(e.shape, [1, 1, P, P]);
    if (!ok) {
      throw new FormatError(
        `fromPretrained(): the attention buffer '${e.name}' has shape ${
          fmtShape(e.shape)
        } in '${file}', not ${e.name.endsWith("masked_bias") ? "[]" : fmtShape([1, 1, P, P])}`,
      );
    }
  }
  if (lmHead) {
    const wte = byName.get("wte.weight")!;
    const equal = lmHead.dt.name === wte.dt.name && same(lmHead.shape, wte.shape) &&
      same(
        await readAt(f, base + lmHead.begin, lmHead.end - lmHead.begin, file),
        await readAt(f, base + wte.begin, wte.end - wte.begin, file),
      );
    if (!equal) {
      throw new FormatError(
        `fromPretrained(): 'lm_head.weight' in '${file}' differs from 'wte.weight'; ulp's GPT ` +
          `ties its LM head to the token embedding, so an untied head cannot be loaded`,
      );
    }
  }

  // build, then fill one tensor at a time (the model plus one tensor at the peak)
  const model = new GPT({
    ...cfg,
    dropout: opts.dropout ?? 0,
    fusedAttention: opts.fusedAttention ?? true,
  }, { dtype: opts.dtype ?? "f32" });
  try {
    const params = new Map(model.namedParameters());
    for (const [name, e] of byName) {
      const p = params.get(name)!;
      let codes = codesOf(await readAt(f, base + e.begin, e.end - e.begin, file), e.dt);
      if (CONV1D.test(name)) codes = transposeCodes(codes, e.shape[0], e.shape[1]);
      noGrad(() =>
        tidy(() => {
          p.copy_(fromCodes(codes, p.shape, e.dt), { cast: true });
        })
      );
    }
  } catch (err) {
    for (const p of model.parameters()) p.dispose();
    throw err;
  }
  return model;
}

/**
 * The `config.json` of a GPT in Hugging Face's GPT-2 layout (`GPT2Config` fields).
 *
 * @example
 * ```ts
 * import { GPT, pretrainedConfig } from "../mod.ts";
 * const c = pretrainedConfig({ ...GPT.config("char-tiny"), gelu: "tanh" });
 * console.log(c.n_layer, c.n_embd, c.activation_function); // 2 64 "gelu_new"
 * ```
 */
export function pretrainedConfig(c: GPTConfig): Record<string, unknown> {
  return {
    activation_function: (c.gelu ?? "none") === "tanh" ? "gelu_new" : "gelu",
    architectures: ["GPT2LMHeadModel"],
    attn_pdrop: c.dropout ?? 0,
    bos_token_id: 50256,
    embd_pdrop: c.dropout ?? 0,
    eos_token_id: 50256,
    initializer_range: 0.02,
    layer_norm_epsilon: c.layerNormEps ?? 1e-5,
    model_type: "gpt2",
    n_ctx: c.blockSize,
    n_embd: c.nEmbd,
    n_head: c.nHead,
    n_inner: null,
    n_layer: c.nLayer,
    n_positions: c.blockSize,
    resid_pdrop: c.dropout ?? 0,
    scale_attn_weights: true,
    vocab_size: c.vocabSize,
  };
}

/** The low part of each parameter an optimizer keeps (Collage's `paramLo`), by parameter. */
function lowParts(opt: PretrainedOptimizer): { lo: Map<Tensor, Tensor>; all: Tensor[] } {
  const sd = opt.stateDict();
  const all: Tensor[] = [];
  for (const s of Object.values(sd.state)) {
    for (const v of Object.values(s)) if (v && typeof v === "object") all.push(v as Tensor);
  }
  const lo = new Map<Tensor, Tensor>();
  let i = 0;
  for (const g of opt.paramGroups) {
    for (const p of g.params) {
      const t = sd.state[i++]?.paramLo;
      if (t) lo.set(p, t as Tensor);
    }
  }
  return { lo, all };
}

/**
 * Writes `model` to the folder `dir` in Hugging Face's GPT-2 layout: `model.safetensors`
 * (metadata `format: "pt"`, which transformers requires; names without a prefix, Conv1D
 * weights [in, out], no `lm_head.weight`: it is tied) and `config.json`, so that
 * `GPT2LMHeadModel.from_pretrained(dir)` and `fromPretrained(dir)` read it. From any
 * strategy: weights are rounded once (RNE) to `opts.dtype` (default f32); a Collage weight
 * is exported as hi + lo (pass the `optimizer`, which holds lo); an FP8 run's scaling state
 * (amax histories, scales) has no place in the layout and is dropped, with a note in the
 * metadata (`ulp.note`), as is a model without biases (its biases are written as zeros: the
 * same function). The tensors are streamed to a temporary file that is renamed when
 * complete. Needs `--allow-write` for `dir`.
 *
 * @example
 * ```ts ignore
 * import { exportPretrained, fromPretrained } from "../mod.ts";
 * const model = await fromPretrained("gpt2");
 * await exportPretrained(model, "out/gpt2-copy"); // model.safetensors + config.json
 * ```
 */
export async function exportPretrained(
  model: GPT,
  dir: string,
  opts: ExportOptions = {},
): Promise<void> {
  if (!(model instanceof GPT)) {
    throw new ValueError("exportPretrained(): expects a GPT (the GPT-2 layout is a GPT's)");
  }
  await ready();
  const target = dtype(opts.dtype ?? "f32");
  if (!FILE_DTYPES.includes(target.name)) {
    throw new ValueError(
      `exportPretrained(): dtype must be "f32", "f16" or "bf16", got '${opts.dtype}'`,
    );
  }
  const precision = opts.precision ?? opts.optimizer?.precision.name ?? "";
  if (precision.startsWith("collage") && !opts.optimizer) {
    throw new ValueError(
      `exportPretrained(): a ${precision} model keeps the low part of its weights in the ` +
        `optimizer; pass { optimizer } so that hi + lo is exported`,
    );
  }
  const c = model.config;
  const notes: string[] = [];
  if (precision === "fp8") {
    notes.push("the FP8 scaling state (amax histories and scales) is not part of the layout");
  }
  if (!c.bias) notes.push("the model has no biases; they are written as zeros");
  const meta: Record<string, string> = { ...opts.metadata, format: "pt" };
  if (precision) meta["ulp.precision"] = precision;
  if (notes.length) meta["ulp.note"] = notes.join("; ");
  const params = new Map(model.namedParameters());
  const names = [...expectedShapes(c).keys()];

  // the header first (shapes and dtypes are known), then each tensor's bytes in order
  const width = target.laneBits / 8;
  const header: Record<string, unknown> = {};
  let offset = 0;
  const shapes = expectedShapes(c);
  for (const n of names) {
    const s = fileShape(n, shapes.get(n)!);
    const bytes = s.reduce((a, b) => a * b, 1) * width;
    header[n] = {
      dtype: target.name.toUpperCase(),
      shape: s,
      data_offsets: [offset, offset + bytes],
    };
    offset += bytes;
  }
  header.__metadata__ = meta;
  let json = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - (json.byteLength % 8)) % 8;
  if (pad) {
    const p = new Uint8Array(json.byteLength + pad).fill(0x20);
    p.set(json);
    json = p;
  }
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(json.byteLength), true);

  await Deno.mkdir(dir, { recursive: true });
  const path = `${dir.replace(/\/+$/, "")}/model.safetensors`;
  const tmp = `${path}.tmp-${Date.now()}-${Math.floor(Math.random() * 1e9)}`;
  const lows = opts.optimizer ? lowParts(opts.optimizer) : null;
  try {
    using file = await Deno.open(tmp, { write: true, createNew: true });
    const write = async (b: Uint8Array) => {
      for (let at = 0; at < b.byteLength;) at += await file.write(b.subarray(at));
    };
    await write(prefix);
    await write(json);
    for (const n of names) {
      const s = shapes.get(n)!;
      const p = params.get(n);
      const lo = p ? lows?.lo.get(p) : undefined;
      const t = noGrad(() =>
        tidy(() => {
          if (!p) return fromCodes(new (width === 2 ? Uint16Array : Uint32Array)(s[0]), s, target);
          const full = lo ? p.cast("f32").add(lo.cast("f32")) : p;
          return full.cast(target);
        })
      );
      let codes = (await t.codes()) as Uint16Array | Uint32Array;
      if (t !== p) t.dispose();
      if (CONV1D.test(n)) codes = transposeCodes(codes, s[0], s[1]);
      await write(new Uint8Array(codes.buffer, codes.byteOffset, codes.byteLength));
    }
    await file.syncData();
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  } finally {
    for (const t of lows?.all ?? []) t.dispose();
  }
  await Deno.rename(tmp, path);
  const cfg = JSON.stringify(pretrainedConfig(c), null, 2) + "\n";
  await writeAtomic(`${dir.replace(/\/+$/, "")}/config.json`, new TextEncoder().encode(cfg));
}

provideGPTLoader(fromPretrained);
