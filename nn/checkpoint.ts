/**
 * Training checkpoints: everything a run needs to continue as if it had never stopped (the
 * model, the optimizer state with Collage's low parts, the GradScaler, any extra scaling
 * state such as FP8's, the random stream, the data position and the step), as a safetensors
 * file of every tensor plus a small JSON file that describes the rest and names the
 * safetensors file.
 *
 * Crash safety: the tensors go to a new file (temporary file, then rename), and only then is
 * the JSON replaced (temporary file, then rename), and only then are older tensor files
 * removed. A process killed at any moment leaves a JSON that points to a complete tensor
 * file: the new checkpoint or the previous one.
 *
 * Anything with `stateDict()` and `loadStateDict()` can be saved: state dicts may hold
 * numbers, strings, booleans, null, arrays, plain objects and tensors (tensors go to the
 * safetensors file bit for bit, in their own dtype; the rest to the JSON). As with the
 * optimizers, tensors that `stateDict()` returns are copies the checkpoint frees after
 * writing, and `loadStateDict()` copies the tensors it is given (they are freed after it
 * returns). The model's state dict holds its live parameters; they are never freed.
 *
 * @module
 */

import { FormatError, ValueError } from "../errors.ts";
import { fmtShape, getRngState, isTensor, setRngState, type Tensor } from "../tensor/mod.ts";
import type { Module } from "./module.ts";
import { load, save, writeAtomic } from "./safetensors.ts";

/**
 * What a checkpoint can hold besides the model: anything with a `stateDict()` (its result may
 * be a promise, as `GradScaler`'s is) and a `loadStateDict()`.
 *
 * @example
 * ```ts
 * import type { Stateful } from "../mod.ts";
 * let calls = 0;
 * const counter: Stateful = { stateDict: () => ({ calls }), loadStateDict: (s) => { calls = (s as { calls: number }).calls; } };
 * console.log(counter.stateDict()); // { calls: 0 }
 * ```
 */
export interface Stateful {
  /** The state: numbers, strings, booleans, null, arrays, plain objects and tensors. */
  stateDict(): unknown;
  /** Restores a state that `stateDict()` returned (tensors are copied, then freed). */
  loadStateDict(state: unknown): unknown;
}

/**
 * The objects whose state a checkpoint saves or restores.
 *
 * @example
 * ```ts
 * import { AdamW, type CheckpointTargets, Linear } from "../mod.ts";
 * const model = new Linear(2, 2);
 * const targets: CheckpointTargets = { model, optimizer: new AdamW(model.parameters()) };
 * console.log(Object.keys(targets)); // ["model", "optimizer"]
 * ```
 */
export interface CheckpointTargets {
  /** The model (its parameters by name). */
  model: Module;
  /** The optimizer (state tensors, step counts, hyperparameters). */
  optimizer?: Stateful | null;
  /** The GradScaler, when one is used. */
  scaler?: Stateful | null;
  /** Other state by name, such as FP8 scaling state (amax histories and scales). */
  extra?: Record<string, Stateful>;
}

/**
 * The state of the default random stream (`getRngState()`).
 *
 * @example
 * ```ts
 * import { getRngState, type RngState } from "../mod.ts";
 * const s: RngState = getRngState();
 * console.log(typeof s.seed, typeof s.counter); // "number" "number"
 * ```
 */
export interface RngState {
  /** The seed of `manualSeed`. */
  seed: number;
  /** Draws made since. */
  counter: number;
}

/**
 * What `saveCheckpoint` writes: the targets and the run's position.
 *
 * @example
 * ```ts
 * import { type CheckpointOptions, Linear } from "../mod.ts";
 * const opts: CheckpointOptions = { model: new Linear(2, 2), step: 10, data: { position: 10 } };
 * console.log(opts.step); // 10
 * ```
 */
export interface CheckpointOptions extends CheckpointTargets {
  /** Optimizer steps completed. */
  step: number;
  /** The random stream's state (default: `getRngState()` now). */
  rng?: RngState;
  /** Where the data stream stands (JSON), such as the number of batches drawn. */
  data?: unknown;
  /** Anything else about the run (JSON): its configuration, the tokenizer's vocabulary. */
  meta?: Record<string, unknown>;
}

/**
 * What a checkpoint's JSON says (`readCheckpoint`, `loadCheckpoint`).
 *
 * @example
 * ```ts
 * import type { CheckpointInfo } from "../mod.ts";
 * const describe = (c: CheckpointInfo) => `step ${c.step}, tensors in ${c.tensors}`;
 * console.log(typeof describe); // "function"
 * ```
 */
export interface CheckpointInfo {
  /** Optimizer steps completed. */
  step: number;
  /** The random stream's state at the save. */
  rng: RngState;
  /** Where the data stream stood. */
  data: unknown;
  /** What the run stored about itself. */
  meta: Record<string, unknown>;
  /** The file name of the tensors (in the JSON's folder). */
  tensors: string;
  /** Which states the checkpoint holds besides the model. */
  holds: { optimizer: boolean; scaler: boolean; extra: string[] };
}

const FORMAT = "ulp.checkpoint";
const VERSION = 1;
/** Largest checkpoint JSON accepted (the JSON holds no tensor data). */
const MAX_JSON_BYTES = 64 * 2 ** 20;

function split(path: string): { dir: string; stem: string } {
  const cut = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
  const dir = cut < 0 ? "." : path.slice(0, cut) || "/";
  const name = path.slice(cut + 1);
  return { dir, stem: name.replace(/\.json$/, "") };
}

function encode(v: unknown, name: string, out: Map<string, Tensor>, where: string): unknown {
  const sub = (k: string | number) => (name ? `${name}.${k}` : `${k}`);
  if (isTensor(v)) {
    let key = name;
    for (let k = 2; out.has(key); k++) key = `${name}#${k}`;
    out.set(key, v);
    return { $tensor: key };
  }
  if (v === null || typeof v === "string" || typeof v === "boolean") return v;
  if (typeof v === "number") {
    return Number.isFinite(v) && !Object.is(v, -0)
      ? v
      : { $number: Object.is(v, -0) ? "-0" : `${v}` };
  }
  if (Array.isArray(v)) return v.map((x, i) => encode(x, sub(i), out, `${where}[${i}]`));
  const proto = typeof v === "object" ? Object.getPrototypeOf(v) : undefined;
  if (proto === Object.prototype || proto === null) {
    return Object.fromEntries(
      Object.entries(v as object).map((
        [k, x],
      ) => [k, encode(x, sub(k), out, `${where}.${k}`)]),
    );
  }
  throw new ValueError(
    `saveCheckpoint(): ${where} is a ${
      typeof v === "object" ? proto?.constructor?.name : typeof v
    }; ` +
      `a checkpoint stores numbers, strings, booleans, null, arrays, plain objects and tensors`,
  );
}

function decode(v: unknown, tensors: Record<string, Tensor>, op: string, where: string): unknown {
  if (Array.isArray(v)) return v.map((x, i) => decode(x, tensors, op, `${where}[${i}]`));
  if (v === null || typeof v !== "object") return v;
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length === 1 && keys[0] === "$tensor") {
    const t = typeof o.$tensor === "string" && Object.hasOwn(tensors, o.$tensor)
      ? tensors[o.$tensor]
      : undefined;
    if (!t) {
      throw new FormatError(
        `${op}: ${where} refers to tensor ${JSON.stringify(o.$tensor)}, which the tensor file ` +
          `does not hold; the checkpoint is incomplete or its files come from different saves`,
      );
    }
    return t;
  }
  if (keys.length === 1 && keys[0] === "$number") {
    const n = o.$number === "-0" ? -0 : Number(o.$number);
    if (typeof o.$number !== "string" || (Number.isNaN(n) && o.$number !== "NaN")) {
      throw new FormatError(`${op}: ${where} is not a number (${JSON.stringify(o.$number)})`);
    }
    return n;
  }
  return Object.fromEntries(keys.map((k) => [k, decode(o[k], tensors, op, `${where}.${k}`)]));
}

/**
 * Saves a training checkpoint: `path` (ending in `.json`) gets the JSON, and the tensors go to
 * `<stem>-<step>.safetensors` beside it; both are written atomically, the JSON last, and the
 * previous checkpoint's tensor file is removed after. Creates the folder if needed. Needs
 * `--allow-write` (and `--allow-read`) for the folder.
 *
 * @example
 * ```ts
 * import { AdamW, Linear, loadCheckpoint, saveCheckpoint, tensor } from "../mod.ts";
 * const model = new Linear(2, 1);
 * const optimizer = new AdamW(model.parameters(), { lr: 0.1 });
 * model.forward(tensor([[1, 2]])).sum().backward();
 * optimizer.step();
 * await saveCheckpoint(".test-tmp/doc/ckpt.json", { model, optimizer, step: 1, data: { position: 1 } });
 * const info = await loadCheckpoint(".test-tmp/doc/ckpt.json", { model, optimizer });
 * console.log(info.step, info.data, info.tensors); // 1 { position: 1 } "ckpt-1.safetensors"
 * ```
 */
export async function saveCheckpoint(path: string, opts: CheckpointOptions): Promise<void> {
  const op = `saveCheckpoint('${path}')`;
  if (!path.endsWith(".json")) {
    throw new ValueError(`${op}: the path must end in .json (the tensors go beside it)`);
  }
  if (!Number.isSafeInteger(opts.step) || opts.step < 0) {
    throw new ValueError(`${op}: step must be a non-negative integer, got ${opts.step}`);
  }
  const { dir, stem } = split(path);
  const modelSd = opts.model.stateDict();
  const owned: Tensor[] = []; // copies made by stateDict() calls, freed after writing
  const states: Record<string, unknown> = {};
  const take = async (s: Stateful) => {
    const sd = await s.stateDict();
    collect(sd, owned);
    return sd;
  };
  const tensors = new Map<string, Tensor>();
  try {
    if (opts.optimizer) states.optimizer = await take(opts.optimizer);
    if (opts.scaler) states.scaler = await take(opts.scaler);
    const extra: Record<string, unknown> = {};
    for (const [k, s] of Object.entries(opts.extra ?? {})) extra[k] = await take(s);
    const state = encode({ model: modelSd, ...states, extra }, "", tensors, "state");
    const names = [`${stem}-${opts.step}.safetensors`, `${stem}-${opts.step}.1.safetensors`];
    const previous = await readCheckpoint(path).then((c) => c.tensors, () => null);
    const file = names.find((n) => n !== previous)!;
    const json = {
      format: FORMAT,
      version: VERSION,
      tensors: file,
      step: opts.step,
      rng: opts.rng ?? getRngState(),
      data: plain(opts.data ?? null, op, "data"),
      meta: plain(opts.meta ?? {}, op, "meta"),
      state,
    };
    await Deno.mkdir(dir, { recursive: true });
    await save(`${dir}/${file}`, Object.fromEntries(tensors));
    const text = `{\n${
      Object.entries(json).map(([k, v]) => ` ${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(
        ",\n",
      )
    }\n}\n`;
    await writeAtomic(path, new TextEncoder().encode(text));
    await removeStale(dir, stem, file);
  } finally {
    const live = new Set(Object.values(modelSd));
    for (const t of owned) if (!live.has(t) && !t.isParameter && !t.disposed) t.dispose();
  }
}

/** JSON of a value that must hold no tensors (`data`, `meta`). */
function plain(v: unknown, op: string, where: string): unknown {
  const found: Tensor[] = [];
  collect(v, found);
  if (found.length > 0) {
    throw new ValueError(`${op}: ${where} holds a tensor; put tensors in a state dict (extra)`);
  }
  return encode(v, where, new Map(), where);
}

function collect(v: unknown, out: Tensor[]): void {
  if (isTensor(v)) out.push(v);
  else if (Array.isArray(v)) { for (const x of v) collect(x, out); }
  else if (v !== null && typeof v === "object") {
    for (const x of Object.values(v)) {
      collect(x, out);
    }
  }
}

/** Removes the tensor files and temporary files of earlier saves of this checkpoint. */
async function removeStale(dir: string, stem: string, keep: string): Promise<void> {
  const esc = stem.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const stale = new RegExp(`^(${esc}-\\d+(\\.1)?\\.safetensors|${esc}\\.json)(\\.tmp-.*)?$`);
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && e.name !== keep && e.name !== `${stem}.json` && stale.test(e.name)) {
        await Deno.remove(`${dir}/${e.name}`).catch(() => {});
      }
    }
  } catch {
    // best effort: a folder that cannot be listed keeps its old files
  }
}

/**
 * Reads a checkpoint's JSON (not its tensors) and validates it: what to build before
 * loading (the model's configuration is in `meta` when the run stored it there). Throws a
 * `FormatError` naming the problem for a malformed file.
 *
 * @example
 * ```ts
 * import { Linear, readCheckpoint, saveCheckpoint } from "../mod.ts";
 * await saveCheckpoint(".test-tmp/doc/read.json", { model: new Linear(2, 2), step: 3, meta: { width: 2 } });
 * const info = await readCheckpoint(".test-tmp/doc/read.json");
 * console.log(info.step, info.meta, info.holds.optimizer); // 3 { width: 2 } false
 * ```
 */
export async function readCheckpoint(path: string): Promise<CheckpointInfo> {
  return (await parse(path, `readCheckpoint('${path}')`)).info;
}

async function parse(
  path: string,
  op: string,
): Promise<{ info: CheckpointInfo; state: Record<string, unknown> }> {
  const stat = await Deno.stat(path);
  if (stat.size > MAX_JSON_BYTES) {
    throw new FormatError(`${op}: ${stat.size} bytes is more than a checkpoint's JSON can be`);
  }
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new FormatError(`${op}: not valid JSON (${(e as Error).message})`);
  }
  const bad = (what: string): never => {
    throw new FormatError(`${op}: ${what}; is this a checkpoint written by saveCheckpoint()?`);
  };
  if (j === null || typeof j !== "object" || Array.isArray(j)) bad("the JSON is not an object");
  if (j.format !== FORMAT) bad(`'format' is ${JSON.stringify(j.format)}, not "${FORMAT}"`);
  if (j.version !== VERSION) bad(`version ${JSON.stringify(j.version)} is not ${VERSION}`);
  const { tensors, step, rng, state, meta } = j;
  if (
    typeof tensors !== "string" || !/^[\w.-]+\.safetensors$/.test(tensors) ||
    tensors.startsWith(".")
  ) {
    bad(`'tensors' must be a file name in the same folder, got ${JSON.stringify(tensors)}`);
  }
  if (!Number.isSafeInteger(step) || (step as number) < 0) bad(`'step' is not a count: ${step}`);
  const r = rng as RngState;
  if (!r || !Number.isSafeInteger(r.seed) || !Number.isSafeInteger(r.counter)) {
    bad(`'rng' must be { seed, counter } integers`);
  }
  const s = state as Record<string, unknown>;
  if (!s || typeof s !== "object" || !s.model || typeof s.model !== "object") {
    bad("'state.model' is missing");
  }
  if (meta === null || typeof meta !== "object" || Array.isArray(meta)) {
    bad("'meta' is not an object");
  }
  const extra = s.extra && typeof s.extra === "object" ? Object.keys(s.extra) : [];
  const info = {
    step: step as number,
    rng: { seed: r.seed, counter: r.counter },
    data: decode(j.data ?? null, {}, op, "data"),
    meta: decode(meta, {}, op, "meta") as Record<string, unknown>,
    tensors: tensors as string,
    holds: { optimizer: "optimizer" in s, scaler: "scaler" in s, extra },
  };
  return { info, state: s };
}

/**
 * Restores a checkpoint into `targets` (the same kinds of objects that were saved; pass only
 * the model to sample from it) and, unless `restoreRng` is false, the random stream.
 * Everything about the model is checked before anything changes: a missing or unexpected
 * parameter, or a shape that differs, is a `FormatError` naming it; so is a target the
 * checkpoint does not hold. Returns the checkpoint's step, data position and meta.
 *
 * @example
 * ```ts
 * import { Linear, loadCheckpoint, saveCheckpoint } from "../mod.ts";
 * const a = new Linear(2, 2, { seed: 1 }), b = new Linear(2, 2, { seed: 2 });
 * await saveCheckpoint(".test-tmp/doc/copy.json", { model: a, step: 0 });
 * await loadCheckpoint(".test-tmp/doc/copy.json", { model: b });
 * console.log(Array.from(await b.weight.toArray()).join() === Array.from(await a.weight.toArray()).join()); // true
 * ```
 */
export async function loadCheckpoint(
  path: string,
  targets: CheckpointTargets & { restoreRng?: boolean },
): Promise<CheckpointInfo> {
  const op = `loadCheckpoint('${path}')`;
  const { info, state: saved } = await parse(path, op);
  const { dir } = split(path);
  const { tensors } = await load(`${dir}/${info.tensors}`).catch((e) => {
    if (e instanceof Deno.errors.NotFound) {
      throw new FormatError(`${op}: its tensor file ${info.tensors} is missing from ${dir}`);
    }
    throw e;
  });
  try {
    const state = decode(saved, tensors, op, "state") as Record<string, unknown>;
    const sd = state.model as Record<string, Tensor>;
    const own = new Map(targets.model.namedParameters());
    const missing = [...own.keys()].filter((k) => !isTensor(sd[k]));
    const unexpected = Object.keys(sd).filter((k) => !own.has(k));
    if (missing.length || unexpected.length) {
      throw new FormatError(
        `${op}: the model does not match the checkpoint (missing: ${
          missing.join(", ") || "none"
        }; ` +
          `unexpected: ${unexpected.join(", ") || "none"}); build the model the run saved`,
      );
    }
    for (const [k, p] of own) {
      const t = sd[k];
      if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) {
        throw new FormatError(
          `${op}: '${k}' has shape ${fmtShape(t.shape)} in the checkpoint, ${fmtShape(p.shape)} ` +
            `in the model; build the model with the configuration the run saved`,
        );
      }
    }
    const pairs: [string, Stateful, unknown][] = [];
    const need = (name: string, s: Stateful | null | undefined, v: unknown) => {
      if (!s) return;
      if (v === undefined) {
        throw new FormatError(
          `${op}: the checkpoint holds no ${name} state; it was saved without one`,
        );
      }
      pairs.push([name, s, v]);
    };
    need("optimizer", targets.optimizer, state.optimizer);
    need("scaler", targets.scaler, state.scaler);
    const extra = (state.extra ?? {}) as Record<string, unknown>;
    for (const [k, s] of Object.entries(targets.extra ?? {})) need(`extra '${k}'`, s, extra[k]);
    for (const [name, s, v] of pairs) {
      try {
        await s.loadStateDict(v);
      } catch (e) {
        if (e instanceof FormatError) throw e;
        throw new FormatError(`${op}: the ${name} state does not fit: ${(e as Error).message}`, {
          cause: e,
        });
      }
    }
    targets.model.loadStateDict(sd);
  } finally {
    for (const t of Object.values(tensors)) t.dispose();
  }
  if (targets.restoreRng !== false) setRngState(info.rng);
  return info;
}
