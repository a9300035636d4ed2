/**
 * A GPT (decoder-only transformer) as nanoGPT builds it: token and position embeddings,
 * pre-norm blocks of causal multi-head self-attention and a GELU MLP, a final layer norm
 * and a language-model head tied to the token embedding.
 *
 * References: Radford et al. 2019 (GPT-2); Karpathy's nanoGPT.
 *
 * @module
 */

import { ValueError } from "../errors.ts";
import {
  arange,
  autocastState,
  causalSelfAttention,
  fmtShape,
  fusedAttentionFits,
  matmul,
  type Tensor,
  tensor,
  where,
} from "../tensor/mod.ts";
import { crossEntropy } from "./functional.ts";
import { Dropout, Embedding, GELU, LayerNorm, type LayerOptions, Linear } from "./layers.ts";
import { Module } from "./module.ts";
import type { PretrainedOptions } from "./pretrained.ts";

/** The size of a GPT. */
export interface GPTConfig {
  /** Number of distinct tokens. */
  vocabSize: number;
  /** Longest context. */
  blockSize: number;
  /** Number of transformer blocks. */
  nLayer: number;
  /** Attention heads per block. */
  nHead: number;
  /** Width of the residual stream. */
  nEmbd: number;
  /** Dropout probability (default 0). */
  dropout?: number;
  /** Whether linear layers and layer norms have biases (default true). */
  bias?: boolean;
  /** Seed of the initialisation (default: the default random stream). */
  seed?: number;
  /** Fused attention kernels where they apply (default true; see `BlockConfig`). */
  fusedAttention?: boolean;
  /**
   * The MLP's GELU: exact (`"none"`, the default, as nanoGPT) or GPT-2's tanh approximation
   * (`"tanh"`, Hugging Face's `gelu_new`), which the GPT-2 presets and `fromPretrained` use.
   */
  gelu?: "none" | "tanh";
  /** Epsilon of every layer norm (default 1e-5, GPT-2's). */
  layerNormEps?: number;
}

/** The size of one transformer block (and of its attention). */
export interface BlockConfig {
  /** Width of the residual stream. */
  nEmbd: number;
  /** Attention heads. */
  nHead: number;
  /** Longest context. */
  blockSize: number;
  /** Dropout probability (default 0). */
  dropout?: number;
  /** Whether linear layers and layer norms have biases (default true). */
  bias?: boolean;
  /** Blocks in the model, for GPT-2's residual init scaling (default 1). */
  nLayer?: number;
  /** Seed of the initialisation. */
  seed?: number;
  /**
   * Run attention as one fused kernel per pass (`causalSelfAttention`) where it applies: no
   * active attention dropout, and no autocast context that quantises GEMM inputs (FP8,
   * simulated formats, non-RNE rounding), whose attention GEMMs must stay visible to it.
   * Default true; false keeps the unfused ops (q k^T, mask, softmax, p v) always.
   */
  fusedAttention?: boolean;
  /** The MLP's GELU: exact (`"none"`, default) or the tanh approximation (`"tanh"`). */
  gelu?: "none" | "tanh";
  /** Epsilon of the layer norms (default 1e-5). */
  layerNormEps?: number;
}

function seedFor(base: number | undefined, k: number): number | undefined {
  return base === undefined ? undefined : (base * 1000 + k) >>> 0;
}

/**
 * Causal multi-head self-attention: `softmax(q k^T / sqrt(hs) + causal mask) v`.
 *
 * @example
 * ```ts
 * import { CausalSelfAttention, randn } from "../mod.ts";
 * const attn = new CausalSelfAttention({ nEmbd: 8, nHead: 2, blockSize: 4 });
 * console.log(attn.forward(randn([1, 4, 8], { seed: 0 })).shape); // [1, 4, 8]
 * ```
 */
export class CausalSelfAttention extends Module {
  /** The q, k, v projection, [3 nEmbd, nEmbd]. */
  c_attn: Linear;
  /** The output projection. */
  c_proj: Linear;
  /** Dropout on the attention weights. */
  attn_dropout: Dropout;
  /** Dropout on the output projection. */
  resid_dropout: Dropout;
  /** The number of heads. */
  readonly nHead: number;
  /** The embedding width. */
  readonly nEmbd: number;
  /** Whether the fused attention kernels may run (see `BlockConfig.fusedAttention`). */
  fused: boolean;

  /** Attention over `nEmbd` channels in `nHead` heads. */
  constructor(
    cfg: BlockConfig,
    opts: LayerOptions = {},
  ) {
    super();
    if (cfg.nEmbd % cfg.nHead !== 0) {
      throw new ValueError(
        `CausalSelfAttention: nEmbd (${cfg.nEmbd}) must be divisible by nHead (${cfg.nHead})`,
      );
    }
    this.nHead = cfg.nHead;
    this.nEmbd = cfg.nEmbd;
    this.fused = cfg.fusedAttention ?? true;
    const bias = cfg.bias ?? true;
    this.c_attn = new Linear(cfg.nEmbd, 3 * cfg.nEmbd, {
      ...opts,
      bias,
      initStd: 0.02,
      seed: seedFor(cfg.seed, 1),
    });
    // GPT-2: residual projections scaled by 1/sqrt(2 nLayer)
    const projStd = 0.02 / Math.sqrt(2 * (cfg.nLayer ?? 1));
    this.c_proj = new Linear(cfg.nEmbd, cfg.nEmbd, {
      ...opts,
      bias,
      initStd: projStd,
      seed: seedFor(cfg.seed, 2),
    });
    this.attn_dropout = new Dropout(cfg.dropout ?? 0);
    this.resid_dropout = new Dropout(cfg.dropout ?? 0);
  }

  /** Whether this forward runs the fused kernels. @internal */
  fusesNow(qkv: Tensor): boolean {
    return fusable(this, qkv);
  }

  /** x: (B, T, C) -> (B, T, C). */
  forward(x: Tensor): Tensor {
    const [B, T, C] = x.shape;
    const nh = this.nHead, hs = C / nh;
    const qkv = this.c_attn.forward(x); // (B, T, 3C)
    if (this.fusesNow(qkv)) {
      // one kernel: q, k, v read in place, heads written side by side, (B, T, C)
      return this.resid_dropout.forward(this.c_proj.forward(causalSelfAttention(qkv, nh)));
    }
    const heads = (k: number) =>
      qkv.slice([null, null, [k * C, (k + 1) * C]]).reshape([B, T, nh, hs]).transpose(1, 2); // (B, nh, T, hs)
    const q = heads(0), k = heads(1), v = heads(2);
    const att = matmul(q, k, { transB: true }).mul(1 / Math.sqrt(hs)); // (B, nh, T, T)
    const masked = where(causalMask(T), att, -Infinity);
    const p = this.attn_dropout.forward(masked.softmax(-1));
    const y = p.matmul(v).transpose(1, 2).reshape([B, T, C]); // (B, T, C)
    return this.resid_dropout.forward(this.c_proj.forward(y));
  }
}

/** Whether attention over this projection runs fused now (see `BlockConfig.fusedAttention`). */
function fusable(attn: CausalSelfAttention, qkv: Tensor): boolean {
  if (!attn.fused || (attn.attn_dropout.p > 0 && attn.attn_dropout.training)) return false;
  const s = autocastState();
  if (
    s !== null &&
    (s.fp8 !== null || s.rounding !== "rne" || !["bf16", "f16"].includes(s.dtype.name))
  ) {
    return false;
  }
  const dt = s?.dtype ?? qkv.dt;
  return (qkv.dt === dt || s !== null) && fusedAttentionFits(dt, attn.nEmbd, attn.nHead);
}

/** A (T, T) bool tensor, true on and below the diagonal. */
function causalMask(T: number): Tensor {
  const m = new Uint32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = 0; j <= i; j++) m[i * T + j] = 1;
  return tensor(m, { shape: [T, T], dtype: "bool" });
}

/**
 * The MLP of a block: Linear(C, 4C), GELU, Linear(4C, C), dropout.
 *
 * @example
 * ```ts
 * import { MLP, randn } from "../mod.ts";
 * console.log(new MLP({ nEmbd: 8 }).forward(randn([2, 3, 8], { seed: 0 })).shape); // [2, 3, 8]
 * ```
 */
export class MLP extends Module {
  /** The up projection, [4 nEmbd, nEmbd]. */
  c_fc: Linear;
  /** The activation. */
  gelu: GELU;
  /** The down projection, [nEmbd, 4 nEmbd]. */
  c_proj: Linear;
  /** Dropout on the output. */
  dropout: Dropout;

  /** An MLP on `nEmbd` channels. */
  constructor(
    cfg: {
      nEmbd: number;
      dropout?: number;
      bias?: boolean;
      nLayer?: number;
      seed?: number;
      gelu?: "none" | "tanh";
    },
    opts: LayerOptions = {},
  ) {
    super();
    const bias = cfg.bias ?? true;
    this.c_fc = new Linear(cfg.nEmbd, 4 * cfg.nEmbd, {
      ...opts,
      bias,
      initStd: 0.02,
      seed: seedFor(cfg.seed, 3),
    });
    this.gelu = new GELU(cfg.gelu ?? "none");
    this.c_proj = new Linear(4 * cfg.nEmbd, cfg.nEmbd, {
      ...opts,
      bias,
      initStd: 0.02 / Math.sqrt(2 * (cfg.nLayer ?? 1)),
      seed: seedFor(cfg.seed, 4),
    });
    this.dropout = new Dropout(cfg.dropout ?? 0);
  }

  /** (B, T, C) -> (B, T, C). */
  forward(x: Tensor): Tensor {
    return this.dropout.forward(this.c_proj.forward(this.gelu.forward(this.c_fc.forward(x))));
  }
}

/**
 * A pre-norm transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
 *
 * @example
 * ```ts
 * import { Block, randn } from "../mod.ts";
 * const b = new Block({ nEmbd: 8, nHead: 2, blockSize: 4 });
 * console.log(b.forward(randn([1, 4, 8], { seed: 1 })).shape); // [1, 4, 8]
 * ```
 */
export class Block extends Module {
  /** The norm before attention. */
  ln_1: LayerNorm;
  /** Causal self-attention. */
  attn: CausalSelfAttention;
  /** The norm before the MLP. */
  ln_2: LayerNorm;
  /** The MLP. */
  mlp: MLP;

  /** A block of the given size. */
  constructor(
    cfg: BlockConfig,
    opts: LayerOptions = {},
  ) {
    super();
    const ln = { ...opts, bias: cfg.bias ?? true, eps: cfg.layerNormEps ?? 1e-5 };
    this.ln_1 = new LayerNorm(cfg.nEmbd, ln);
    this.attn = new CausalSelfAttention(cfg, opts);
    this.ln_2 = new LayerNorm(cfg.nEmbd, ln);
    this.mlp = new MLP(cfg, opts);
  }

  /** (B, T, C) -> (B, T, C). */
  forward(x: Tensor): Tensor {
    const a = x.add(this.attn.forward(this.ln_1.forward(x)));
    return a.add(this.mlp.forward(this.ln_2.forward(a)));
  }
}

/**
 * The language-model head of a GPT: logits `x @ wte^T`, with the weight tied to the token
 * embedding (it holds the embedding, not a weight of its own, so the state dict is
 * unchanged). A module of its own so that `setAutocast` can keep it in higher precision.
 *
 * @example
 * ```ts
 * import { Embedding, LMHead, randn } from "../mod.ts";
 * const head = new LMHead(new Embedding(10, 4));
 * console.log(head.forward(randn([2, 3, 4], { seed: 0 })).shape, head.parameters().length); // [2, 3, 10] 0
 * ```
 */
export class LMHead extends Module {
  readonly #emb: Embedding;

  /** A head whose weight is `emb.weight` (read at each forward). */
  constructor(emb: Embedding) {
    super();
    this.#emb = emb;
  }

  /** (B, T, C) -> (B, T, vocab). */
  forward(x: Tensor): Tensor {
    return matmul(x, this.#emb.weight, { transB: true });
  }
}

/** What `GPT.forward` returns. */
export interface GPTOutput {
  /** (B, T, vocabSize) logits; (B, k, vocabSize) with `logitsToKeep` k < T. */
  logits: Tensor;
  /** Mean cross-entropy against the targets, when targets were given. */
  loss: Tensor | null;
}

/**
 * The named sizes of `GPT.config`: the four GPT-2 models (Radford et al. 2019; Hugging
 * Face's `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`: vocabulary 50257, context 1024,
 * biases, tanh GELU, head size 64) and the small character models of the examples
 * (`char-tiny`: the demo's; `char-small`: train_gpt's default; their vocabulary is a
 * placeholder that the text's tokenizer replaces).
 *
 * @example
 * ```ts
 * import { GPT_PRESETS } from "../mod.ts";
 * console.log(GPT_PRESETS["gpt2-medium"].nLayer, GPT_PRESETS["gpt2-medium"].nEmbd); // 24 1024
 * ```
 */
export const GPT_PRESETS: Readonly<Record<string, Readonly<GPTConfig>>> = Object.freeze({
  "gpt2": gpt2Preset(12, 12, 768),
  "gpt2-medium": gpt2Preset(24, 16, 1024),
  "gpt2-large": gpt2Preset(36, 20, 1280),
  "gpt2-xl": gpt2Preset(48, 25, 1600),
  "char-tiny": Object.freeze({ vocabSize: 256, blockSize: 32, nLayer: 2, nHead: 4, nEmbd: 64 }),
  "char-small": Object.freeze({ vocabSize: 256, blockSize: 64, nLayer: 2, nHead: 4, nEmbd: 128 }),
});

function gpt2Preset(nLayer: number, nHead: number, nEmbd: number): Readonly<GPTConfig> {
  return Object.freeze({
    vocabSize: 50257,
    blockSize: 1024,
    nLayer,
    nHead,
    nEmbd,
    bias: true,
    gelu: "tanh",
    layerNormEps: 1e-5,
  });
}

/**
 * A GPT language model.
 *
 * @example
 * ```ts
 * import { GPT, tensor } from "../mod.ts";
 * const model = new GPT({ vocabSize: 16, blockSize: 8, nLayer: 1, nHead: 2, nEmbd: 8, seed: 0 });
 * const idx = tensor(new Int32Array([1, 2, 3, 4]), { shape: [1, 4] });
 * const { logits, loss } = model.forward(idx, idx);
 * console.log(logits.shape, loss!.shape); // [1, 4, 16] []
 * ```
 */
export class GPT extends Module {
  /** The configuration, defaults filled in. */
  readonly config: Required<Omit<GPTConfig, "seed">>;
  /** Token embeddings, [vocabSize, nEmbd] (tied to the LM head). */
  wte: Embedding;
  /** Position embeddings, [blockSize, nEmbd]. */
  wpe: Embedding;
  /** Dropout on the embeddings. */
  drop: Dropout;
  /** The transformer blocks. */
  h: Block[];
  /** The final norm. */
  ln_f: LayerNorm;
  /** The LM head, tied to `wte` (keep it in higher precision with `setAutocast`). */
  lm_head: LMHead;

  /**
   * The configuration of a named size (`GPT_PRESETS`: `gpt2`, `gpt2-medium`, `gpt2-large`,
   * `gpt2-xl`, `char-tiny`, `char-small`), with `overrides` on top (a text's vocabulary, a
   * shorter context, dropout, a seed). Builds nothing: pass it to `new GPT(...)`.
   *
   * @example
   * ```ts
   * import { GPT } from "../mod.ts";
   * const c = GPT.config("gpt2");
   * console.log(c.nLayer, c.nHead, c.nEmbd, c.vocabSize, c.blockSize, c.gelu); // 12 12 768 50257 1024 "tanh"
   * const tiny = new GPT(GPT.config("char-tiny", { vocabSize: 40, seed: 1 }));
   * console.log(tiny.config.nEmbd, tiny.config.vocabSize); // 64 40
   * ```
   */
  static config(name: string, overrides: Partial<GPTConfig> = {}): GPTConfig {
    const base = Object.hasOwn(GPT_PRESETS, name) ? GPT_PRESETS[name] : undefined;
    if (!base) {
      throw new ValueError(
        `GPT.config(): unknown preset '${name}'; valid: ${Object.keys(GPT_PRESETS).join(", ")}`,
      );
    }
    const given = Object.entries(overrides).filter(([, v]) => v !== undefined);
    return { ...base, ...Object.fromEntries(given) };
  }

  /**
   * A GPT-2 from a Hugging Face checkpoint on disk (`model.safetensors`, with `config.json`
   * beside it when present): see `fromPretrained` in `pretrained.ts` for the options.
   *
   * @example
   * ```ts ignore
   * import { applyPrecision, GPT } from "../mod.ts";
   * const model = applyPrecision(await GPT.fromPretrained("gpt2/"), "collage-light");
   * ```
   */
  static fromPretrained(path: string, opts: PretrainedOptions = {}): Promise<GPT> {
    return loader.fromPretrained(path, opts);
  }

  /** A GPT with freshly initialised weights (GPT-2's scheme), storage dtype from `opts`. */
  constructor(cfg: GPTConfig, opts: LayerOptions = {}) {
    super();
    for (const k of ["vocabSize", "blockSize", "nLayer", "nHead", "nEmbd"] as const) {
      if (!Number.isSafeInteger(cfg[k]) || cfg[k] <= 0) {
        throw new ValueError(`GPT: ${k} must be a positive integer, got ${cfg[k]}`);
      }
    }
    if (cfg.gelu !== undefined && cfg.gelu !== "none" && cfg.gelu !== "tanh") {
      throw new ValueError(`GPT: gelu must be "none" (exact) or "tanh", got '${cfg.gelu}'`);
    }
    if (cfg.layerNormEps !== undefined && !(cfg.layerNormEps >= 0 && cfg.layerNormEps < 1)) {
      throw new ValueError(`GPT: layerNormEps must be in [0, 1), got ${cfg.layerNormEps}`);
    }
    this.config = {
      dropout: 0,
      bias: true,
      fusedAttention: true,
      gelu: "none",
      layerNormEps: 1e-5,
      ...Object.fromEntries(Object.entries(cfg).filter(([, v]) => v !== undefined)),
    } as Required<Omit<GPTConfig, "seed">>;
    const c = { ...this.config, seed: cfg.seed };
    this.wte = new Embedding(cfg.vocabSize, cfg.nEmbd, {
      ...opts,
      initStd: 0.02,
      seed: seedFor(cfg.seed, 10),
    });
    this.wpe = new Embedding(cfg.blockSize, cfg.nEmbd, {
      ...opts,
      initStd: 0.02,
      seed: seedFor(cfg.seed, 11),
    });
    this.drop = new Dropout(this.config.dropout);
    this.h = Array.from(
      { length: cfg.nLayer },
      (_, i) => new Block({ ...c, seed: seedFor(cfg.seed, 100 + i) }, opts),
    );
    this.ln_f = new LayerNorm(cfg.nEmbd, {
      ...opts,
      bias: this.config.bias,
      eps: this.config.layerNormEps,
    });
    this.lm_head = new LMHead(this.wte);
  }

  /**
   * idx: (B, T) token ids (i32). Returns the logits and, with targets (B, T), the mean
   * cross-entropy over all positions. `opts.logitsToKeep` (as Hugging Face's
   * `logits_to_keep`): the logits of the last that many positions only, (B, k, vocab), and
   * the LM head runs on those rows only; 0 (the default) or T or more keeps every position.
   * Generation needs only the last one: GPT-2's head is the largest product of a forward
   * (768 x 50257 a position), so keeping 1 spares it T - 1 rows.
   *
   * @example
   * ```ts
   * import { GPT, tensor } from "../mod.ts";
   * const model = new GPT({ vocabSize: 16, blockSize: 8, nLayer: 1, nHead: 2, nEmbd: 8, seed: 0 });
   * const idx = tensor(new Int32Array([1, 2, 3, 4]), { shape: [1, 4] });
   * const { logits } = model.forward(idx, undefined, { logitsToKeep: 1 });
   * console.log(logits.shape); // [1, 1, 16]
   * ```
   */
  forward(idx: Tensor, targets?: Tensor, opts: { logitsToKeep?: number } = {}): GPTOutput {
    if (idx.ndim !== 2) {
      throw new ValueError(`GPT.forward(): idx must be (B, T), got ${fmtShape(idx.shape)}`);
    }
    const [B, T] = idx.shape;
    if (T > this.config.blockSize) {
      throw new ValueError(
        `GPT.forward(): sequence length ${T} exceeds blockSize ${this.config.blockSize}`,
      );
    }
    const keep = opts.logitsToKeep ?? 0;
    if (!Number.isSafeInteger(keep) || keep < 0) {
      throw new ValueError(
        `GPT.forward(): logitsToKeep must be a non-negative integer (0 keeps every position), ` +
          `got ${keep}`,
      );
    }
    const some = keep > 0 && keep < T;
    if (some && targets) {
      throw new ValueError(
        `GPT.forward(): logitsToKeep ${keep} of ${T} positions with targets: the loss needs ` +
          `the logits of every position; pass logitsToKeep 0 (or leave it out) with targets`,
      );
    }
    const pos = arange(T);
    let x = this.drop.forward(this.wte.forward(idx).add(this.wpe.forward(pos))); // (B, T, C)
    for (const block of this.h) x = block.forward(x);
    x = this.ln_f.forward(x);
    if (some) x = x.slice([null, [T - keep, T], null]); // (B, keep, C): the head's rows only
    // the LM head shares its weight with the token embedding (weight tying)
    const logits = this.lm_head.forward(x); // (B, T or keep, vocab)
    const loss = targets
      ? crossEntropy(logits.reshape([B * T, this.config.vocabSize]), targets.reshape([B * T]))
      : null;
    return { logits, loss };
  }
}

/** The checkpoint loader `GPT.fromPretrained` calls (`pretrained.ts` registers it on load). */
const loader = {
  fromPretrained: (_path: string, _opts: PretrainedOptions): Promise<GPT> => {
    throw new Error("internal: nn/pretrained.ts is not loaded; import the library through mod.ts");
  },
};

/** Registers the loader behind `GPT.fromPretrained` (called by `pretrained.ts`). @internal */
export function provideGPTLoader(
  fromPretrained: (path: string, opts: PretrainedOptions) => Promise<GPT>,
): void {
  loader.fromPretrained = fromPretrained;
}
