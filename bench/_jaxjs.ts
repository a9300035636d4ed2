/**
 * The second peer of the benchmarks: jax-js (`@jax-js/jax`, pinned in bench/deno.json) on its
 * WebGPU backend, in the same process as ulp and TF.js, on a device of its own. jax-js asks
 * `navigator.gpu` for an adapter itself (`init("webgpu")`); the report compares the adapter's
 * description with ulp's to show that the three run on the same one.
 *
 * Everything here is written as a jax-js user would write it: `jit` around each computation
 * (jax-js fuses elementwise chains into one kernel only under `jit`), `valueAndGrad` for the
 * GPT's gradients, AdamW in jax-js ops, and jax-js's ownership rules (a function consumes its
 * arguments; `.ref` keeps a value alive for one more use).
 *
 * jax-js is lazy: an op returns an array whose kernels are dispatched only when something
 * waits for it. A contestant therefore keeps what its runs produced and waits for all of it
 * (`blockUntilReady`) in `sync`, which is when the GPU work is submitted and done.
 *
 * @module
 */

import {
  blockUntilReady,
  defaultDevice,
  getWebGPUDevice,
  init,
  jit,
  type JsTree,
  nn,
  numpy as np,
  tree,
  valueAndGrad,
} from "@jax-js/jax";
import type { Contestant } from "./_timing.ts";

export { jit, nn, np, tree };

/**
 * The version that loaded (jax-js exports none): read from the path the import map gave
 * ("unknown" in a bundle, bench/device/pack.sh, where there is no import map to ask).
 */
export const JAXJS_VERSION: string = (() => {
  try {
    return /@jax-js[/+]jax[@/](\d[^/_]*)/.exec(import.meta.resolve("@jax-js/jax"))?.[1];
  } catch {
    return undefined;
  }
})() ?? "unknown";

/** A ready jax-js WebGPU backend (the default device from now on). */
export interface JaxPeer {
  /** The adapter's description, as jax-js's device got it. */
  readonly adapter: string;
  /** Whether jax-js's device runs f16 (WebGPU's "shader-f16", which jax-js asks for). */
  readonly f16: boolean;
}

/**
 * Starts jax-js's WebGPU backend and makes it the default device. Returns the peer, or a
 * string that says why it is unavailable.
 */
export async function setupJaxjs(): Promise<JaxPeer | string> {
  try {
    const devices = await init("webgpu");
    if (!devices.includes("webgpu")) {
      return "jax-js's init('webgpu') found no WebGPU adapter";
    }
    defaultDevice("webgpu");
    const device = getWebGPUDevice() as GPUDevice & {
      adapterInfo?: GPUAdapterInfo;
    };
    const info = device.adapterInfo;
    return {
      adapter: info?.description || info?.device || "unknown",
      f16: device.features.has("shader-f16"),
    };
  } catch (e) {
    return `jax-js WebGPU setup failed: ${(e as Error).message}`;
  }
}

/**
 * Starts jax-js's Wasm backend (its CPU device: WebAssembly, multi-threaded through workers
 * when SharedArrayBuffer is available, as in Deno) beside the WebGPU one, which stays the
 * default device: arrays for it are made with `{ device: "wasm" }`. Returns true, or a
 * string that says why it is unavailable. Its workers keep the process alive: the benchmark
 * exits explicitly.
 */
export async function setupJaxWasm(): Promise<true | string> {
  try {
    const devices = await init("wasm");
    return devices.includes("wasm") ? true : "jax-js's init('wasm') did not start it";
  } catch (e) {
    return `jax-js Wasm setup failed: ${(e as Error).message}`;
  }
}

/** The arrays of a tree, as a flat list. */
function leavesOf(t: JsTree<np.Array>): np.Array[] {
  return tree.leaves(t).filter((x): x is np.Array => x instanceof np.Array);
}

/**
 * A contestant whose run returns fresh arrays: they are kept until `sync`, which dispatches
 * their kernels, waits for them and frees them.
 */
export function jaxContestant(
  label: string,
  run: () => JsTree<np.Array>,
): Contestant {
  const outs: np.Array[] = [];
  return {
    label,
    run: () => void outs.push(...leavesOf(run())),
    sync: async () => {
      await blockUntilReady(outs);
      for (const o of outs.splice(0)) o.dispose();
    },
  };
}

/**
 * A contestant that carries a state from run to run (an optimizer step, a training step):
 * `step` consumes the state and returns the next one; `sync` waits for the current state.
 */
export function jaxStateContestant<S extends JsTree<np.Array>>(
  label: string,
  state: { current: S },
  step: (s: S) => S,
): Contestant {
  return {
    label,
    run: () => void (state.current = step(state.current)),
    sync: async () => void await blockUntilReady(state.current),
  };
}

/** An array's values on the host (the array stays alive). */
export async function jaxValues(x: np.Array): Promise<Float32Array> {
  return new Float32Array(await x.ref.data());
}

// ---------------------------------------------------------------------------------------
// AdamW in jax-js ops

/** AdamW's settings (PyTorch's semantics, as ulp's `AdamW`). */
export interface JaxAdamWOptions {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

/** AdamW's state for a list of parameters (the tree jitted steps take and return). */
export type JaxAdamWState = {
  params: np.Array[];
  m: np.Array[];
  v: np.Array[];
  /** Steps taken so far, a float32 scalar on the device. */
  t: np.Array;
};

/** A fresh AdamW state for `params` (consumed: the state owns them). */
export function jaxAdamWState(params: np.Array[]): JaxAdamWState {
  return {
    m: params.map((p) => np.zerosLike(p.ref)),
    v: params.map((p) => np.zerosLike(p.ref)),
    params,
    t: np.array(0),
  };
}

/**
 * One AdamW update of every parameter, as ulp's `AdamW` (and `torch.optim.AdamW`) does it:
 * `p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
 * p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`. Consumes `s` and `grads`.
 * Meant to be called inside `jit`.
 */
export function jaxAdamWUpdate(
  s: JaxAdamWState,
  grads: np.Array[],
  o: JaxAdamWOptions,
): JaxAdamWState {
  const [b1, b2] = o.betas;
  const t = s.t.add(1);
  const stepSize = np.divide(o.lr, np.subtract(1, np.power(b1, t.ref)));
  const bc2Sqrt = np.sqrt(np.subtract(1, np.power(b2, t.ref)));
  const params: np.Array[] = [], m: np.Array[] = [], v: np.Array[] = [];
  s.params.forEach((p, i) => {
    const g = grads[i];
    const mi = s.m[i].mul(b1).add(g.ref.mul(1 - b1));
    const vi = s.v[i].mul(b2).add(g.ref.mul(g).mul(1 - b2));
    const denom = np.sqrt(vi.ref).div(bc2Sqrt.ref).add(o.eps);
    params.push(
      p.mul(1 - o.lr * o.weightDecay).sub(stepSize.ref.mul(mi.ref).div(denom)),
    );
    m.push(mi);
    v.push(vi);
  });
  stepSize.dispose();
  bc2Sqrt.dispose();
  return { params, m, v, t };
}

// ---------------------------------------------------------------------------------------
// the same GPT as nn/gpt.ts, in jax-js ops

/** The size of a GPT (as `GPTConfig`). */
export interface JaxGPTConfig {
  vocabSize: number;
  blockSize: number;
  nLayer: number;
  nHead: number;
  nEmbd: number;
}

/**
 * A GPT's parameters by ulp's names (`namedParameters()`: "wte.weight", "h.0.attn.c_attn.weight",
 * ...). Linear weights are kept as jax-js users keep them, [in, out] (ulp's are [out, in]).
 */
export type JaxGPTParams = Record<string, np.Array>;

/** The names of a GPT's parameters, in ulp's order. */
export function gptParamNames(cfg: JaxGPTConfig): string[] {
  const names = ["wte.weight", "wpe.weight"];
  for (let l = 0; l < cfg.nLayer; l++) {
    for (
      const n of [
        "ln_1.weight",
        "ln_1.bias",
        "attn.c_attn.weight",
        "attn.c_attn.bias",
        "attn.c_proj.weight",
        "attn.c_proj.bias",
        "ln_2.weight",
        "ln_2.bias",
        "mlp.c_fc.weight",
        "mlp.c_fc.bias",
        "mlp.c_proj.weight",
        "mlp.c_proj.bias",
      ]
    ) names.push(`h.${l}.${n}`);
  }
  names.push("ln_f.weight", "ln_f.bias");
  return names;
}

/** Layer norm over the last axis, eps 1e-5 (consumes its arguments). */
export function jaxLayerNorm(x: np.Array, w: np.Array, b: np.Array): np.Array {
  return nn.standardize(x, -1, { epsilon: 1e-5 }).mul(w).add(b);
}

/**
 * Mean cross-entropy of a GPT's next-token logits (as `GPT.forward(idx, targets).loss`):
 * token and position embeddings, pre-norm blocks of causal multi-head attention
 * (`nn.dotProductAttention`) and an exact-GELU MLP, final layer norm, LM head tied to the
 * token embedding. idx and targets (B, T) int32 with T = blockSize. Consumes its arguments.
 */
export function jaxGptLoss(
  cfg: JaxGPTConfig,
  p: JaxGPTParams,
  idx: np.Array,
  targets: np.Array,
): np.Array {
  const [B, T] = idx.shape;
  if (T !== cfg.blockSize) {
    throw new Error(
      `jaxGptLoss: sequence length ${T} must equal blockSize ${cfg.blockSize}`,
    );
  }
  const { nLayer, nHead: nh, nEmbd: C, vocabSize: V } = cfg;
  const hs = C / nh;
  const linear = (x: np.Array, name: string) =>
    np.matmul(x, p[`${name}.weight`]).add(p[`${name}.bias`]);
  // the embedding lookup as a one-hot matmul: jax-js 0.1.25 cannot differentiate np.take on
  // Deno's WebGPU (its gradient is a scatter: under jit "routine primitive scatter input is not
  // imm", eagerly a WGSL shader that Deno's validator rejects)
  let x = np.matmul(nn.oneHot(idx, V), p["wte.weight"].ref).add(
    p["wpe.weight"],
  ); // (B, T, C)
  for (let l = 0; l < nLayer; l++) {
    const h = `h.${l}`;
    const a = jaxLayerNorm(x.ref, p[`${h}.ln_1.weight`], p[`${h}.ln_1.bias`]);
    const [q, k, v] = np.split(linear(a, `${h}.attn.c_attn`), 3, -1).map((t) =>
      t.reshape([B, T, nh, hs])
    );
    const y = nn.dotProductAttention(q, k, v, { isCausal: true }).reshape([
      B,
      T,
      C,
    ]);
    x = x.add(linear(y, `${h}.attn.c_proj`));
    const m = jaxLayerNorm(x.ref, p[`${h}.ln_2.weight`], p[`${h}.ln_2.bias`]);
    const f = nn.gelu(linear(m, `${h}.mlp.c_fc`), { approximate: false });
    x = x.add(linear(f, `${h}.mlp.c_proj`));
  }
  x = jaxLayerNorm(x, p["ln_f.weight"], p["ln_f.bias"]);
  const logits = np.matmul(x, np.matrixTranspose(p["wte.weight"])); // (B, T, V), tied head
  const logp = nn.logSoftmax(logits, -1);
  // the target's log-probability through a one-hot mask (np.takeAlongAxis: the same scatter)
  return np.negative(np.mean(np.sum(logp.mul(nn.oneHot(targets, V)), -1)));
}

/** A GPT training step's state: parameters and AdamW's moments (the tree the step carries). */
export type JaxGPTState = {
  params: JaxGPTParams;
  m: JaxGPTParams;
  v: JaxGPTParams;
  t: np.Array;
  /** The loss of the step that made this state (before its update). */
  loss: np.Array;
};

/**
 * A jitted GPT training step: loss and gradients by `valueAndGrad`, then AdamW (in jax-js ops)
 * on every parameter. Consumes the state and the batch; returns the next state.
 */
export function jaxGptTrainStep(
  cfg: JaxGPTConfig,
  o: JaxAdamWOptions,
): (s: JaxGPTState, idx: np.Array, targets: np.Array) => JaxGPTState {
  const names = gptParamNames(cfg);
  const lossOf = (p: JaxGPTParams, idx: np.Array, tgt: np.Array) => jaxGptLoss(cfg, p, idx, tgt);
  const step = jit(
    (s: Omit<JaxGPTState, "loss">, idx: np.Array, tgt: np.Array) => {
      const [loss, grads] = valueAndGrad(lossOf)(tree.ref(s.params), idx, tgt);
      const pick = (t: JaxGPTParams) => names.map((n) => t[n]);
      const next = jaxAdamWUpdate(
        { params: pick(s.params), m: pick(s.m), v: pick(s.v), t: s.t },
        pick(grads),
        o,
      );
      const byName = (xs: np.Array[]) => Object.fromEntries(names.map((n, i) => [n, xs[i]]));
      return {
        params: byName(next.params),
        m: byName(next.m),
        v: byName(next.v),
        t: next.t,
        loss,
      };
    },
  );
  return ({ loss, ...rest }, idx, tgt) => {
    loss.dispose();
    return step(rest, idx, tgt);
  };
}

/** A fresh training state from parameters (consumed); its loss is NaN until a step ran. */
export function jaxGptState(params: JaxGPTParams): JaxGPTState {
  const zeros = () =>
    Object.fromEntries(
      Object.entries(params).map(([n, p]) => [n, np.zerosLike(p.ref)]),
    );
  return {
    m: zeros(),
    v: zeros(),
    params,
    t: np.array(0),
    loss: np.array(NaN),
  };
}
