/**
 * Layers: `Linear`, `Embedding`, `LayerNorm`, `RMSNorm`, `Dropout`, `GELU`. Each holds its
 * parameters and calls the functional form in `functional.ts`. Initialisation follows
 * PyTorch's defaults unless an `init` option says otherwise.
 *
 * @module
 */

import { dtype, type DTypeLike } from "../dtypes/mod.ts";
import { ShapeError, ValueError } from "../errors.ts";
import { checkIds, fmtShape, full, rand, randn, type Tensor, tidy, zeros } from "../tensor/mod.ts";
import { dropout, layerNorm, linear, rmsNorm } from "./functional.ts";
import { gelu } from "../tensor/mod.ts";
import { Module, Parameter } from "./module.ts";
import { currentRuntime } from "../gpu/mod.ts";

/** Options shared by layers with weights. */
export interface LayerOptions {
  /** Storage dtype of the parameters (default f32). */
  dtype?: DTypeLike;
}

function checkPositive(layer: string, names: Record<string, number>): void {
  for (const [k, v] of Object.entries(names)) {
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw new ValueError(`${layer}: ${k} must be a positive integer, got ${v}`);
    }
  }
}

/**
 * `y = x W^T + b`, W of shape [out, in], initialised as PyTorch (uniform in ±1/sqrt(in)),
 * or normal with a given std (`initStd`, as GPT-2 uses 0.02).
 *
 * @example
 * ```ts
 * import { Linear, ones } from "../mod.ts";
 * const fc = new Linear(4, 2, { bias: false, initStd: 0.02 });
 * console.log(fc.forward(ones([3, 4])).shape); // [3, 2]
 * ```
 */
export class Linear extends Module {
  /** The weight, [outFeatures, inFeatures]. */
  weight: Tensor;
  /** The bias, [outFeatures], or null. */
  bias: Tensor | null;

  /** A linear layer from `inFeatures` to `outFeatures`. */
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: LayerOptions & { bias?: boolean; initStd?: number; seed?: number } = {},
  ) {
    super();
    checkPositive("Linear", { inFeatures, outFeatures });
    const dt = dtype(opts.dtype ?? "f32");
    const shape = [outFeatures, inFeatures];
    // tidy frees the initialisation's intermediates (they are not parameters)
    const w = tidy(() => {
      if (opts.initStd !== undefined) {
        return randn(shape, { seed: opts.seed }).mul(opts.initStd).cast(dt);
      }
      const bound = 1 / Math.sqrt(inFeatures);
      return rand(shape, { seed: opts.seed }).mul(2 * bound).sub(bound).cast(dt);
    });
    this.weight = Parameter(w);
    this.bias = opts.bias === false ? null : Parameter(zeros([outFeatures], { dtype: dt }));
  }

  /** Applies the layer to `x` [..., inFeatures]. */
  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }
}

/**
 * A lookup table of `numEmbeddings` vectors of size `embeddingDim` (normal init, std 1 as
 * PyTorch, or `initStd`).
 *
 * @example
 * ```ts
 * import { Embedding, tensor } from "../mod.ts";
 * const emb = new Embedding(10, 4);
 * console.log(emb.forward(tensor(new Int32Array([1, 2, 1]), { shape: [1, 3] })).shape); // [1, 3, 4]
 * ```
 */
export class Embedding extends Module {
  /** The table, [numEmbeddings, embeddingDim]. */
  weight: Tensor;

  /** An embedding table. */
  constructor(
    readonly numEmbeddings: number,
    readonly embeddingDim: number,
    opts: LayerOptions & { initStd?: number; seed?: number } = {},
  ) {
    super();
    checkPositive("Embedding", { numEmbeddings, embeddingDim });
    this.weight = Parameter(
      tidy(() =>
        randn([numEmbeddings, embeddingDim], { seed: opts.seed }).mul(opts.initStd ?? 1)
          .cast(dtype(opts.dtype ?? "f32"))
      ),
    );
  }

  /**
   * The rows of `ids` (an integer tensor of any shape): shape [...ids.shape, embeddingDim].
   * Ids are checked on the device: one outside `[0, numEmbeddings)` makes the next readback
   * throw a `ValueError` naming it (tensor/core/_id_check.ts). No ids (an empty batch) is a
   * `ValueError` at the call.
   */
  forward(ids: Tensor): Tensor {
    if (ids.dt.kind !== "int") {
      throw new ShapeError(
        `Embedding: ids must be an integer tensor (i32/u32), got ${ids.dtype} of shape ${
          fmtShape(ids.shape)
        }`,
      );
    }
    if (ids.size === 0) {
      throw new ValueError(
        `Embedding.forward(): ids of shape ${fmtShape(ids.shape)} hold no ids (an empty ` +
          `batch); skip empty batches`,
      );
    }
    const flat = ids.reshape([ids.size]);
    const rt = currentRuntime();
    checkIds(
      rt,
      "embedding",
      flat.buffer("Embedding.forward()"),
      flat.size,
      this.numEmbeddings,
      ids.dt.signed === true,
    );
    return this.weight.indexSelect(0, flat).reshape([...ids.shape, this.embeddingDim]);
  }
}

/**
 * Layer normalisation over the last dimension(s), with learnable weight (ones) and bias
 * (zeros).
 *
 * @example
 * ```ts
 * import { LayerNorm, tensor } from "../mod.ts";
 * const ln = new LayerNorm(3);
 * console.log((await ln.forward(tensor([[1, 2, 3]])).toArray())[1]); // 0
 * ```
 */
export class LayerNorm extends Module {
  /** Scale, [normalizedShape]. */
  weight: Tensor | null;
  /** Shift, [normalizedShape], or null. */
  bias: Tensor | null;
  /** The sizes of the trailing dimensions it normalizes over. */
  readonly normalizedShape: number[];

  /** A layer norm over `normalizedShape` (a size or sizes of the trailing dimensions). */
  constructor(
    normalizedShape: number | number[],
    opts: LayerOptions & { eps?: number; bias?: boolean; elementwiseAffine?: boolean } = {},
  ) {
    super();
    this.normalizedShape = typeof normalizedShape === "number"
      ? [normalizedShape]
      : [...normalizedShape];
    checkPositive(
      "LayerNorm",
      Object.fromEntries(this.normalizedShape.map((v, i) => [`normalizedShape[${i}]`, v])),
    );
    this.eps = opts.eps ?? 1e-5;
    const dt = dtype(opts.dtype ?? "f32");
    const affine = opts.elementwiseAffine ?? true;
    this.weight = affine ? Parameter(full(this.normalizedShape, 1, { dtype: dt })) : null;
    this.bias = affine && opts.bias !== false
      ? Parameter(zeros(this.normalizedShape, { dtype: dt }))
      : null;
  }
  /** Added to the variance. */
  readonly eps: number;

  /** Normalises `x`. */
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.normalizedShape, this.weight, this.bias, this.eps);
  }
}

/**
 * RMS normalisation over the last dimension with a learnable scale (ones).
 *
 * @example
 * ```ts
 * import { RMSNorm, tensor } from "../mod.ts";
 * console.log(new RMSNorm(2).forward(tensor([[3, 4]])).shape); // [1, 2]
 * ```
 */
export class RMSNorm extends Module {
  /** Scale, [dim]. */
  weight: Tensor;
  /** Added to the mean square. */
  readonly eps: number;

  /** An RMS norm over a last dimension of size `dim`. */
  constructor(dim: number, opts: LayerOptions & { eps?: number } = {}) {
    super();
    checkPositive("RMSNorm", { dim });
    this.eps = opts.eps ?? 1e-6;
    this.weight = Parameter(full([dim], 1, { dtype: dtype(opts.dtype ?? "f32") }));
  }

  /** Normalises `x`. */
  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }
}

/**
 * Dropout with probability `p`, active in training mode only.
 *
 * @example
 * ```ts
 * import { Dropout, ones } from "../mod.ts";
 * const d = new Dropout(0.1).eval();
 * console.log(Array.from(await d.forward(ones([2])).toArray())); // [1, 1]
 * ```
 */
export class Dropout extends Module {
  /** A dropout layer. */
  constructor(readonly p = 0.5) {
    super();
    if (!(p >= 0 && p < 1)) throw new ValueError(`Dropout: p must be in [0, 1), got ${p}`);
  }

  /** Applies dropout in training mode. */
  forward(x: Tensor): Tensor {
    return dropout(x, this.p, this.training);
  }
}

/**
 * The GELU activation as a layer.
 *
 * @example
 * ```ts
 * import { GELU, tensor } from "../mod.ts";
 * console.log(await new GELU().forward(tensor([0])).item()); // 0
 * ```
 */
export class GELU extends Module {
  /** GELU, exact (`none`) or with the tanh approximation. */
  constructor(readonly approximate: "none" | "tanh" = "none") {
    super();
  }

  /** Applies GELU. */
  forward(x: Tensor): Tensor {
    return gelu(x, this.approximate);
  }
}
