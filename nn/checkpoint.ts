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
 * Nothing is trusted before it is verified: the JSON records every tensor's dtype, shape and
 * SHA-256 digest, and a load checks the tensor file's header and every tensor's bytes against
 * them (a changed dtype, a flipped bit or a NaN written into a weight is a `FormatError`
 * naming the tensor) before any tensor is uploaded; then each tensor's dtype and shape must be
 * what the model and the optimizer expect (no silent conversion: `{ cast: true }` converts
 * on purpose).
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
import { deserialize, serialize, writeAtomic } from "./safetensors.ts";
import { parseHeader } from "./_safetensors_header.ts";
import { excerpt, jsonProblem } from "./_excerpt.ts";

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
  /**
   * Restores a state that `stateDict()` returned (tensors are copied, then freed). With
   * `{ cast: true }` it may convert tensors of another dtype; without, it should refuse them.
   */
  loadStateDict(state: unknown, opts?: { cast?: boolean }): unknown;
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
  /** What the JSON records of each tensor of the tensor file: dtype, shape and SHA-256. */
  checksums: Record<string, TensorRecord>;
}

/**
 * What a checkpoint's JSON records of one tensor of its tensor file, checked at load before
 * the tensor is trusted.
 *
 * @example
 * ```ts
 * import type { TensorRecord } from "../mod.ts";
 * const r: TensorRecord = { dtype: "f32", shape: [2], sha256: "ab".repeat(32) };
 * console.log(r.sha256.length); // 64
 * ```
 */
export interface TensorRecord {
  /** ulp's dtype name (`f32`, `bf16`, `e4m3`, ...). */
  dtype: string;
  /** The shape. */
  shape: number[];
  /** The SHA-256 of the tensor's bytes in the file, lowercase hex. */
  sha256: string;
}

/**
 * Options of `loadCheckpoint` besides the targets.
 *
 * @example
 * ```ts
 * import type { LoadCheckpointOptions } from "../mod.ts";
 * const o: LoadCheckpointOptions = { restoreRng: false, cast: false };
 * console.log(o.cast); // false
 * ```
 */
export interface LoadCheckpointOptions {
  /** Restore the random stream (default true). */
  restoreRng?: boolean;
  /**
   * Convert tensors whose dtype differs from the target's (default false: such a tensor is a
   * `FormatError`, since a changed dtype means a changed file or a model built otherwise).
   */
  cast?: boolean;
}

const FORMAT = "ulp.checkpoint";
const VERSION = 2;
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

/**
 * The value `encode` wrote: `where` names the place for errors, `name` the tensor key that
 * `encode` gave a tensor found there (its path), which a reference must name: a reference
 * changed to another tensor of the file (a flipped bit in "state.1" -> "state.0") is refused.
 */
function decode(
  v: unknown,
  tensors: Record<string, Tensor>,
  op: string,
  where: string,
  name = "",
): unknown {
  const sub = (k: string | number) => (name ? `${name}.${k}` : `${k}`);
  if (Array.isArray(v)) {
    return v.map((x, i) => decode(x, tensors, op, `${where}[${i}]`, sub(i)));
  }
  if (v === null || typeof v !== "object") return v;
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length === 1 && keys[0] === "$tensor") {
    const ref = o.$tensor;
    const t = typeof ref === "string" && Object.hasOwn(tensors, ref) ? tensors[ref] : undefined;
    if (!t) {
      throw new FormatError(
        `${op}: ${where} refers to tensor ${excerpt(ref)}, which the tensor file ` +
          `does not hold; the checkpoint is incomplete or its files come from different saves`,
      );
    }
    if (ref !== name && !(ref as string).startsWith(`${name}#`)) {
      throw new FormatError(
        `${op}: ${where} refers to tensor ${excerpt(ref)}, saved from another place ` +
          `(${excerpt(name)}); the checkpoint's JSON was changed after it was written`,
      );
    }
    return t;
  }
  if (keys.length === 1 && keys[0] === "$number") {
    const n = o.$number === "-0" ? -0 : Number(o.$number);
    if (typeof o.$number !== "string" || (Number.isNaN(n) && o.$number !== "NaN")) {
      throw new FormatError(`${op}: ${where} is not a number (${excerpt(o.$number)})`);
    }
    return n;
  }
  return Object.fromEntries(
    keys.map((k) => [k, decode(o[k], tensors, op, `${where}.${k}`, sub(k))]),
  );
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
    const bytes = await serialize(Object.fromEntries(tensors));
    const json = {
      format: FORMAT,
      version: VERSION,
      tensors: file,
      step: opts.step,
      rng: opts.rng ?? getRngState(),
      data: plain(opts.data ?? null, op, "data"),
      meta: plain(opts.meta ?? {}, op, "meta"),
      state,
      checksums: await records(bytes, op),
    };
    await Deno.mkdir(dir, { recursive: true });
    await writeAtomic(`${dir}/${file}`, bytes);
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

/** SHA-256 of bytes, lowercase hex. */
async function sha256(bytes: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The dtype, shape and digest of every tensor of a safetensors file's bytes. */
async function records(bytes: Uint8Array, op: string): Promise<Record<string, TensorRecord>> {
  const h = parseHeader(bytes, bytes.byteLength - 8 - headerBytes(bytes, op));
  const base = 8 + h.hlen;
  const out: Record<string, TensorRecord> = {};
  for (const e of h.entries) {
    out[e.name] = {
      dtype: e.dt.name,
      shape: e.shape,
      sha256: await sha256(bytes.subarray(base + e.begin, base + e.end)),
    };
  }
  return out;
}

function headerBytes(bytes: Uint8Array, op: string): number {
  if (bytes.byteLength < 8) {
    throw new FormatError(`${op}: the tensor file is ${bytes.byteLength} bytes`);
  }
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  return n > BigInt(bytes.byteLength) ? bytes.byteLength : Number(n);
}

/**
 * Checks the tensor file's bytes against the JSON's records before anything is uploaded: the
 * same tensor names, each with the recorded dtype, shape and SHA-256 of its bytes.
 */
async function verify(
  bytes: Uint8Array,
  want: Record<string, TensorRecord>,
  file: string,
  op: string,
): Promise<void> {
  const h = parseHeader(bytes, bytes.byteLength - 8 - headerBytes(bytes, op));
  const base = 8 + h.hlen;
  const changed = (what: string): never => {
    throw new FormatError(
      `${op}: ${what}; the tensor file ${file} was changed or damaged after it was written (or ` +
        `comes from another save): restore both files from a copy, or start the run again`,
    );
  };
  const names = new Set(h.entries.map((e) => e.name));
  const lost = Object.keys(want).filter((k) => !names.has(k));
  const added = [...names].filter((k) => !Object.hasOwn(want, k));
  if (lost.length || added.length) {
    changed(
      `the tensor file holds ${
        added.length
          ? `tensors the JSON does not record (${added.slice(0, 3).map(excerpt).join(", ")})`
          : "no unrecorded tensors"
      } and ${lost.length ? `lacks ${lost.slice(0, 3).map(excerpt).join(", ")}` : "lacks none"}`,
    );
  }
  for (const e of h.entries) {
    const r = want[e.name];
    const name = excerpt(e.name);
    if (e.dt.name !== r.dtype) {
      const recorded = /^[a-z0-9]{1,16}$/.test(r.dtype) ? r.dtype : excerpt(r.dtype);
      changed(`tensor ${name} has dtype ${e.dt.name} in the file, ${recorded} in the JSON`);
    }
    if (e.shape.length !== r.shape.length || e.shape.some((d, i) => d !== r.shape[i])) {
      changed(
        `tensor ${name} has shape ${fmtShape(e.shape)} in the file, ${
          fmtShape(r.shape)
        } in the JSON`,
      );
    }
    const digest = await sha256(bytes.subarray(base + e.begin, base + e.end));
    if (digest !== r.sha256) {
      changed(`the bytes of tensor ${name} do not match their SHA-256 checksum`);
    }
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
  if (!stat.isFile) {
    throw new FormatError(`${op}: '${path}' is not a file; pass the checkpoint's .json file`);
  }
  if (stat.size > MAX_JSON_BYTES) {
    throw new FormatError(`${op}: ${stat.size} bytes is more than a checkpoint's JSON can be`);
  }
  const raw = await Deno.readFile(path);
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch (e) {
    // a safetensors file: a little-endian u64 header length (small: high bytes 0), then '{'
    const safetensors = raw.byteLength > 9 && raw[8] === 0x7b &&
      raw.subarray(5, 8).every((b) => b === 0);
    throw new FormatError(
      `${op}: not a checkpoint: ${
        safetensors
          ? "this is a safetensors file (binary); pass the checkpoint's .json, which names it"
          : `the file is not valid JSON (${jsonProblem(e)})`
      }`,
    );
  }
  const bad = (what: string): never => {
    throw new FormatError(`${op}: ${what}; is this a checkpoint written by saveCheckpoint()?`);
  };
  if (j === null || typeof j !== "object" || Array.isArray(j)) bad("the JSON is not an object");
  if (j.format !== FORMAT) bad(`'format' is ${excerpt(j.format)}, not "${FORMAT}"`);
  if (j.version !== VERSION) {
    bad(
      `version ${excerpt(j.version)} is not ${VERSION}` +
        (j.version === 1 ? " (version 1 has no checksums: save it again with this ulp)" : ""),
    );
  }
  const { tensors, step, rng, state, meta } = j;
  if (
    typeof tensors !== "string" || !/^[\w.-]+\.safetensors$/.test(tensors) ||
    tensors.startsWith(".")
  ) {
    bad(`'tensors' must be a file name in the same folder, got ${excerpt(tensors)}`);
  }
  if (!Number.isSafeInteger(step) || (step as number) < 0) {
    bad(`'step' is not a count: ${excerpt(step)}`);
  }
  const r = rng as RngState;
  if (
    !r || typeof r !== "object" || !Number.isSafeInteger(r.seed) ||
    !Number.isSafeInteger(r.counter) || r.counter < 0
  ) {
    bad(`'rng' must be { seed, counter } integers (counter >= 0)`);
  }
  const s = state as Record<string, unknown>;
  if (!s || typeof s !== "object" || !s.model || typeof s.model !== "object") {
    bad("'state.model' is missing");
  }
  if (meta === null || typeof meta !== "object" || Array.isArray(meta)) {
    bad("'meta' is not an object");
  }
  const checksums = checkRecords(j.checksums, bad);
  const extra = s.extra && typeof s.extra === "object" ? Object.keys(s.extra) : [];
  const info = {
    step: step as number,
    rng: { seed: r.seed, counter: r.counter },
    data: decode(j.data ?? null, {}, op, "data"),
    meta: decode(meta, {}, op, "meta") as Record<string, unknown>,
    tensors: tensors as string,
    holds: { optimizer: "optimizer" in s, scaler: "scaler" in s, extra },
    checksums,
  };
  return { info, state: s };
}

/** The JSON's `checksums`, checked for form (the values are checked against the file later). */
function checkRecords(v: unknown, bad: (what: string) => never): Record<string, TensorRecord> {
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    bad("'checksums' is missing (every tensor's dtype, shape and SHA-256)");
  }
  for (const [k, r] of Object.entries(v as object)) {
    const t = r as TensorRecord;
    if (
      t === null || typeof t !== "object" || typeof t.dtype !== "string" ||
      !Array.isArray(t.shape) || t.shape.some((d) => !Number.isSafeInteger(d) || d < 0) ||
      typeof t.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(t.sha256)
    ) {
      bad(`'checksums' of tensor ${excerpt(k)} must be { dtype, shape, sha256 }`);
    }
  }
  return v as Record<string, TensorRecord>;
}

/**
 * Restores a checkpoint into `targets` (the same kinds of objects that were saved; pass only
 * the model to sample from it) and, unless `restoreRng` is false, the random stream.
 * Everything is checked before anything changes: the tensor file against the JSON's records
 * (names, dtypes, shapes, SHA-256 of the bytes), then the model: a missing or unexpected
 * parameter, a shape or a dtype that differs is a `FormatError` naming it; so is a target the
 * checkpoint does not hold, or a state its target refuses. A tensor of another dtype is never
 * converted unless `cast` is true. Returns the checkpoint's step, data position and meta.
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
  targets: CheckpointTargets & LoadCheckpointOptions,
): Promise<CheckpointInfo> {
  const op = `loadCheckpoint('${path}')`;
  const { info, state: saved } = await parse(path, op);
  const { dir } = split(path);
  const file = `${dir}/${info.tensors}`;
  const bytes = await Deno.readFile(file).catch((e) => {
    if (e instanceof Deno.errors.NotFound) {
      throw new FormatError(`${op}: its tensor file ${info.tensors} is missing from ${dir}`);
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new FormatError(`${op}: its tensor file ${info.tensors} is a folder`);
    }
    throw e;
  });
  await verify(bytes, info.checksums, info.tensors, op);
  const cast = targets.cast === true;
  const { tensors } = deserialize(bytes);
  try {
    const state = decode(saved, tensors, op, "state") as Record<string, unknown>;
    const sd = state.model as Record<string, Tensor>;
    const own = new Map(targets.model.namedParameters());
    const missing = [...own.keys()].filter((k) => !isTensor(sd[k]));
    const unexpected = Object.keys(sd).filter((k) => !own.has(k));
    if (missing.length || unexpected.length) {
      const list = (ks: string[]) =>
        ks.length
          ? ks.slice(0, 8).map(excerpt).join(", ") + (ks.length > 8 ? ", ..." : "")
          : "none";
      throw new FormatError(
        `${op}: the model does not match the checkpoint (missing: ${list(missing)}; ` +
          `unexpected: ${list(unexpected)}); build the model the run saved`,
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
      if (t.dtype !== p.dtype && !cast) {
        throw new FormatError(
          `${op}: '${k}' has dtype ${t.dtype} in the checkpoint, ${p.dtype} in the model; ` +
            `build the model in the precision the run saved (or pass { cast: true } to convert)`,
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
        await s.loadStateDict(v, { cast });
      } catch (e) {
        if (e instanceof FormatError) throw e;
        throw new FormatError(`${op}: the ${name} state does not fit: ${(e as Error).message}`, {
          cause: e,
        });
      }
    }
    targets.model.loadStateDict(sd, { cast });
  } finally {
    for (const t of Object.values(tensors)) t.dispose();
  }
  if (targets.restoreRng !== false) setRngState(info.rng);
  return info;
}
