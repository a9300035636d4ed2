/**
 * `Module` and `Parameter`: the containers of a model's weights, as PyTorch's `nn.Module`
 * and `nn.Parameter`: named parameters and submodules, train/eval mode, and state dicts
 * with clear errors on missing, unexpected or mis-shaped keys.
 *
 * @module
 */

import { DTypeError, ShapeError, ValueError } from "../errors.ts";
import {
  autocast,
  type AutocastOptions,
  autocastStateOf,
  fmtShape,
  isTensor,
  keep,
  type Tensor,
} from "../tensor/mod.ts";

/**
 * Marks a tensor as a model parameter: a leaf that requires a gradient, counted as `params`
 * in `memory()`, and never freed by `tidy`. Returns the same tensor.
 *
 * @example
 * ```ts
 * import { Parameter, randn } from "../mod.ts";
 * const w = Parameter(randn([3, 3], { seed: 0 }));
 * console.log(w.requiresGrad); // true
 * ```
 */
export function Parameter(t: Tensor): Tensor {
  t.requiresGrad = true;
  t.isParameter = true;
  t.setPurpose("params");
  return keep(t);
}

/** A state dict: parameter (and buffer) names mapped to tensors, in registration order. */
export type StateDict = Record<string, Tensor>;

/**
 * Base class of layers and models. Subclasses register parameters and submodules as fields
 * (found by walking own enumerable properties, like PyTorch's `__setattr__`) and implement
 * `forward`.
 *
 * @example
 * ```ts
 * import { Linear, Module, type Tensor } from "../mod.ts";
 * class TwoLayer extends Module {
 *   fc1 = new Linear(4, 8);
 *   fc2 = new Linear(8, 2);
 *   forward(x: Tensor): Tensor {
 *     return this.fc2.forward(this.fc1.forward(x).relu());
 *   }
 * }
 * const m = new TwoLayer();
 * console.log(m.namedParameters().map(([n]) => n)); // ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
 * ```
 */
export class Module {
  /** Whether the module is in training mode (dropout active). */
  training = true;
  #autocast: AutocastOptions | null = null;
  #wrapped = false;

  /** The module's own parameters and submodules, by field name, in declaration order. */
  #children(): [string, Tensor | Module | (Tensor | Module)[]][] {
    const out: [string, Tensor | Module | (Tensor | Module)[]][] = [];
    for (const [k, v] of Object.entries(this)) {
      if (k === "training") continue;
      if (v instanceof Module || isParam(v)) out.push([k, v]);
      else if (
        Array.isArray(v) && v.length > 0 && v.every((x) => x instanceof Module || isParam(x))
      ) out.push([k, v]);
    }
    return out;
  }

  /**
   * Every parameter with its dotted name (`h.0.attn.c_attn.weight`), each tensor once (a
   * tied weight appears under its first name).
   */
  namedParameters(prefix = "", seen: Set<Tensor> = new Set()): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [k, v] of this.#children()) {
      const items = Array.isArray(v)
        ? v.map((x, i) => [`${k}.${i}`, x] as const)
        : [[k, v] as const];
      for (const [name, x] of items) {
        const full = prefix ? `${prefix}.${name}` : name;
        if (x instanceof Module) out.push(...x.namedParameters(full, seen));
        else if (!seen.has(x)) {
          seen.add(x);
          out.push([full, x]);
        }
      }
    }
    return out;
  }

  /** Every parameter, each once. */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** The submodules, recursively, with dotted names (this module first, as ""). */
  namedModules(prefix = ""): [string, Module][] {
    const out: [string, Module][] = [[prefix, this]];
    for (const [k, v] of this.#children()) {
      const items = Array.isArray(v)
        ? v.map((x, i) => [`${k}.${i}`, x] as const)
        : [[k, v] as const];
      for (const [name, x] of items) {
        if (x instanceof Module) out.push(...x.namedModules(prefix ? `${prefix}.${name}` : name));
      }
    }
    return out;
  }

  /** Sets training mode on this module and every submodule. Returns this. */
  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  /** Sets evaluation mode (dropout off). Returns this. */
  eval(): this {
    return this.train(false);
  }

  /**
   * Runs this module's `forward` under its own autocast options, whatever context encloses
   * it: `{ dtype: "bf16" }` keeps it in bf16 inside an `fp8` context, `{ enabled: false }`
   * in f32 (where low precision is applied decides stability: keep the LM head, the first
   * and the last block in higher precision). `null` removes the override. Returns this.
   * Prefer an `fp8` context around the whole forward with overrides that raise precision:
   * each entry of an FP8 recipe's context from outside another one with it starts that
   * recipe's step (delayed scaling commits its amaxes).
   *
   * @example
   * ```ts
   * import { autocast, GPT, tensor } from "../mod.ts";
   * const model = new GPT({ vocabSize: 16, blockSize: 8, nLayer: 2, nHead: 2, nEmbd: 8, seed: 0 });
   * model.lm_head.setAutocast({ dtype: "bf16" }); // the tied LM head: bf16 GEMM, not FP8
   * model.h[0].setAutocast({ dtype: "bf16" }); // the first block too
   * const idx = tensor(new Int32Array([1, 2, 3]), { shape: [1, 3] });
   * const { logits } = autocast({ dtype: "fp8" }, () => model.forward(idx));
   * console.log(logits.dtype, model.lm_head.autocastOptions); // "bf16" { dtype: "bf16" }
   * ```
   */
  setAutocast(opts: AutocastOptions | null): this {
    if (opts !== null) autocastStateOf(opts); // throws now on invalid options
    const self = this as unknown as Record<string, unknown>;
    if (opts !== null && !this.#wrapped) {
      const inner = self.forward;
      if (typeof inner !== "function") {
        throw new ValueError(
          `setAutocast(): ${this.constructor.name} has no forward() method to run under autocast`,
        );
      }
      // an own, non-enumerable forward that enters the module's context around the class's
      Object.defineProperty(this, "forward", {
        value: (...args: unknown[]) => {
          const o = this.#autocast;
          return o === null ? inner.apply(this, args) : autocast(o, () => inner.apply(this, args));
        },
        enumerable: false,
        writable: true,
        configurable: true,
      });
      this.#wrapped = true;
    }
    this.#autocast = opts === null ? null : Object.freeze({ ...opts });
    return this;
  }

  /** The autocast options `setAutocast` gave this module, or null. */
  get autocastOptions(): AutocastOptions | null {
    return this.#autocast;
  }

  /** Frees every parameter's gradient (as `optimizer.zeroGrad()` does for its own). */
  zeroGrad(): void {
    for (const p of this.parameters()) p.zeroGrad();
  }

  /**
   * The parameters by dotted name. The tensors are the live parameters, not copies: save
   * or copy them before changing the model if you need a snapshot.
   */
  stateDict(): StateDict {
    return Object.fromEntries(this.namedParameters());
  }

  /**
   * Copies values from `sd` into the parameters. With `strict` (default), missing and
   * unexpected keys are errors; shapes must always match, and so must dtypes unless `cast`
   * is true (then values are cast to each parameter's dtype with RNE). Returns the missing
   * and unexpected keys.
   */
  loadStateDict(
    sd: StateDict,
    opts: { strict?: boolean; cast?: boolean } = {},
  ): { missing: string[]; unexpected: string[] } {
    const strict = opts.strict ?? true;
    const cast = opts.cast ?? false;
    const own = new Map(this.namedParameters());
    const missing = [...own.keys()].filter((k) => !(k in sd));
    const unexpected = Object.keys(sd).filter((k) => !own.has(k));
    if (strict && (missing.length > 0 || unexpected.length > 0)) {
      throw new ValueError(
        `loadStateDict(): ${missing.length ? `missing keys: ${missing.join(", ")}` : ""}` +
          `${missing.length && unexpected.length ? "; " : ""}` +
          `${unexpected.length ? `unexpected keys: ${unexpected.join(", ")}` : ""}. ` +
          `Pass { strict: false } to load the keys that match.`,
      );
    }
    for (const [k, p] of own) {
      const src = sd[k];
      if (!src) continue;
      if (src.shape.length !== p.shape.length || src.shape.some((v, i) => v !== p.shape[i])) {
        throw new ShapeError(
          `loadStateDict(): '${k}' has shape ${fmtShape(src.shape)} in the state dict but ` +
            `${fmtShape(p.shape)} in the model`,
        );
      }
      if (src.dtype !== p.dtype && !cast) {
        throw new DTypeError(
          `loadStateDict(): '${k}' has dtype ${src.dtype} in the state dict but ${p.dtype} in ` +
            `the model; pass { cast: true } to convert it`,
        );
      }
    }
    for (const [k, p] of own) if (sd[k]) p.copy_(sd[k], { cast });
    return { missing, unexpected };
  }
}

function isParam(v: unknown): v is Tensor {
  return isTensor(v) && v.isParameter;
}
