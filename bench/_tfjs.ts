/**
 * The peer of the benchmarks: TensorFlow.js's WebGPU backend (npm, pinned in deno.json),
 * on a device of its own from the same adapter as ulp's, in the same process, and a GPT
 * written with its public ops that computes what `nn/gpt.ts` computes.
 *
 * TF.js registers its WebGPU backend at import when `navigator.gpu` exists; we replace that
 * factory with one that requests the same limits from an adapter we can name, so the report
 * can show that both frameworks run on the same adapter.
 *
 * @module
 */

// The union package: tfjs-core's own entry point registers no gradients (its ES modules that
// do cannot be loaded outside a bundler); @tensorflow/tfjs re-exports tfjs-core and registers
// them, and its CPU backend, which TF.js's WebGPU backend may hand tiny ops to.
import * as tf from "@tensorflow/tfjs";
import { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";

export { tf };

/** The pinned version (deno.json's import map says the same). */
export const TFJS_VERSION: string = tf.version_core;

/** A ready TF.js WebGPU backend. */
export interface TfPeer {
  /** The adapter's description, as TF.js's device got it. */
  readonly adapter: string;
  /** Waits until TF.js's device has finished everything recorded so far. */
  sync(): Promise<void>;
}

/** The internals of TF.js's WebGPU backend that flush its open command encoder. */
interface BackendInternals {
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
}

/**
 * Sets up TF.js on WebGPU. Returns the peer, or a string that says why it is unavailable.
 */
export async function setupTfjs(): Promise<TfPeer | string> {
  try {
    const adapter = await navigator.gpu?.requestAdapter();
    if (!adapter) return "navigator.gpu has no adapter";
    const l = adapter.limits;
    // the same features and limits as TF.js's own factory (tfjs-backend-webgpu's base.ts)
    const device = await adapter.requestDevice({
      requiredFeatures: adapter.features.has("timestamp-query") ? ["timestamp-query"] : [],
      requiredLimits: {
        maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
        maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      },
    });
    let gpuError: string | null = null;
    device.addEventListener("uncapturederror", (ev) => {
      gpuError ??= (ev as GPUUncapturedErrorEvent).error.message;
    });
    if (tf.findBackendFactory("webgpu")) tf.removeBackend("webgpu");
    // deno-lint-ignore no-explicit-any
    tf.registerBackend("webgpu", () => new WebGPUBackend(device as any, adapter.info as any), 10);
    if (!(await tf.setBackend("webgpu"))) return "tf.setBackend('webgpu') failed";
    await tf.ready();
    const backend = tf.backend() as unknown as BackendInternals;
    return {
      adapter: adapter.info.description || adapter.info.device || "unknown",
      async sync() {
        // what TF.js's own read path does before it maps a buffer (getBufferData)
        backend.ensureCommandEncoderReady();
        backend.endComputePassEncoder();
        backend.submitQueue();
        await device.queue.onSubmittedWorkDone();
        if (gpuError !== null) {
          const e = gpuError;
          gpuError = null;
          throw new Error(`TF.js's WebGPU device reported: ${e}`);
        }
      },
    };
  } catch (e) {
    return `TF.js WebGPU setup failed: ${(e as Error).message}`;
  }
}

/** The size of a GPT (as `GPTConfig`). */
export interface TfGPTConfig {
  vocabSize: number;
  blockSize: number;
  nLayer: number;
  nHead: number;
  nEmbd: number;
}

/** TF.js's layer norm over the last axis, from its ops (TF.js has no fused one). */
export function tfLayerNorm(x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, eps = 1e-5): tf.Tensor {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), w), b);
}

/** GELU with erf (PyTorch's default, as ulp's `gelu`), from TF.js ops. */
function tfGelu(x: tf.Tensor): tf.Tensor {
  return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
}

interface BlockVars {
  ln1w: tf.Variable;
  ln1b: tf.Variable;
  attnW: tf.Variable; // (C, 3C), [in, out] as TF.js's dense layers keep it
  attnB: tf.Variable;
  projW: tf.Variable;
  projB: tf.Variable;
  ln2w: tf.Variable;
  ln2b: tf.Variable;
  fcW: tf.Variable;
  fcB: tf.Variable;
  fc2W: tf.Variable;
  fc2B: tf.Variable;
}

/**
 * nanoGPT in TF.js ops, as `nn/gpt.ts`: token and position embeddings, pre-norm blocks of
 * causal multi-head attention and a GELU MLP, final layer norm, LM head tied to the token
 * embedding, mean cross-entropy. Initialised as GPT-2 (std 0.02, residual projections
 * scaled by 1/sqrt(2 nLayer)). Dropout 0, biases on.
 */
export class TfGPT {
  readonly vars: tf.Variable[] = [];
  readonly cfg: TfGPTConfig;
  #wte: tf.Variable;
  #wpe: tf.Variable;
  #blocks: BlockVars[] = [];
  #lnfw: tf.Variable;
  #lnfb: tf.Variable;
  #maskBias: tf.Tensor; // (T, T): 0 on and below the diagonal, -1e9 above
  #pos: tf.Tensor;

  constructor(cfg: TfGPTConfig, seed = 1) {
    this.cfg = cfg;
    const { vocabSize: V, blockSize: T, nEmbd: C, nLayer } = cfg;
    let s = seed;
    const normal = (shape: number[], std: number) =>
      this.#v(tf.randomNormal(shape, 0, std, "float32", s++));
    const ones = (n: number) => this.#v(tf.ones([n]));
    const zeros = (shape: number[]) => this.#v(tf.zeros(shape));
    const projStd = 0.02 / Math.sqrt(2 * nLayer);
    this.#wte = normal([V, C], 0.02);
    this.#wpe = normal([T, C], 0.02);
    for (let i = 0; i < nLayer; i++) {
      this.#blocks.push({
        ln1w: ones(C),
        ln1b: zeros([C]),
        attnW: normal([C, 3 * C], 0.02),
        attnB: zeros([3 * C]),
        projW: normal([C, C], projStd),
        projB: zeros([C]),
        ln2w: ones(C),
        ln2b: zeros([C]),
        fcW: normal([C, 4 * C], 0.02),
        fcB: zeros([4 * C]),
        fc2W: normal([4 * C, C], projStd),
        fc2B: zeros([C]),
      });
    }
    this.#lnfw = ones(C);
    this.#lnfb = zeros([C]);
    const m = new Float32Array(T * T);
    for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) m[i * T + j] = -1e9;
    this.#maskBias = tf.tensor2d(m, [T, T]);
    this.#pos = tf.range(0, T, 1, "int32");
  }

  #v(t: tf.Tensor): tf.Variable {
    const v = tf.variable(t);
    t.dispose();
    this.vars.push(v);
    return v;
  }

  /** The number of parameters. */
  get numParams(): number {
    return this.vars.reduce((a, v) => a + v.size, 0);
  }

  /** Mean cross-entropy of the next-token logits; idx and targets (B, T) int32. */
  loss(idx: tf.Tensor2D, targets: tf.Tensor2D): tf.Scalar {
    const [B, T] = idx.shape;
    const { nEmbd: C, nHead: nh, vocabSize: V } = this.cfg;
    const hs = C / nh;
    const tok = tf.reshape(tf.gather(this.#wte, tf.reshape(idx, [B * T])), [B, T, C]);
    const pos = tf.gather(this.#wpe, tf.slice(this.#pos, 0, T)); // (T, C)
    let x = tf.reshape(tf.add(tok, pos), [B * T, C]);
    const mask = tf.slice(this.#maskBias, [0, 0], [T, T]);
    for (const b of this.#blocks) {
      // attention: (B*T, C) -> q, k, v (B, nh, T, hs)
      const h = tfLayerNorm(x, b.ln1w, b.ln1b);
      const qkv = tf.add(tf.matMul(h, b.attnW), b.attnB); // (B*T, 3C)
      const [q, k, v] = tf.split(qkv, 3, 1).map((t) =>
        tf.transpose(tf.reshape(t, [B, T, nh, hs]), [0, 2, 1, 3])
      );
      const att = tf.add(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(hs)), mask);
      const y = tf.reshape(tf.transpose(tf.matMul(tf.softmax(att), v), [0, 2, 1, 3]), [
        B * T,
        C,
      ]);
      x = tf.add(x, tf.add(tf.matMul(y, b.projW), b.projB));
      // MLP
      const h2 = tfLayerNorm(x, b.ln2w, b.ln2b);
      const f = tfGelu(tf.add(tf.matMul(h2, b.fcW), b.fcB));
      x = tf.add(x, tf.add(tf.matMul(f, b.fc2W), b.fc2B));
    }
    x = tfLayerNorm(x, this.#lnfw, this.#lnfb);
    const logits = tf.matMul(x, this.#wte, false, true); // (B*T, V), tied head
    const labels = tf.oneHot(tf.reshape(targets, [B * T]), V);
    return tf.losses.softmaxCrossEntropy(labels, logits) as tf.Scalar;
  }

  /** Frees the variables and constants. */
  dispose(): void {
    for (const v of this.vars) v.dispose();
    this.#maskBias.dispose();
    this.#pos.dispose();
  }
}
