/**
 * Weights on disk in the safetensors format (an 8-byte little-endian header length, a JSON
 * header of `{ name: { dtype, shape, data_offsets } }`, then the raw bytes), so files open
 * in other tools. The names follow the reference library's `save_file(tensors, path)` and
 * `load_file(path)`: `saveFile` and `loadFile`. ulp's storage codes are the bytes: F32, F16,
 * BF16, F8_E4M3, F8_E5M2, I32, U32 and BOOL use the standard names; formats safetensors does
 * not know (simulated eXmY, bf16x2) are stored as U8/U16/U32 codes with their ulp dtype in
 * `__metadata__` under `ulp.dtype.<name>`. Integers of other frameworks load into ulp's
 * 32-bit integers: I64, I16 and I8 as i32, U64, U16 and U8 as u32 (a 64-bit value outside
 * the 32-bit range is a `FormatError` that names it; `skip` leaves such entries out). Files
 * ending in `.gz` are gzip-compressed (CompressionStream).
 *
 * The reader treats every file as hostile and validates it before it allocates anything for
 * a tensor, with the rules of the reference implementation (huggingface/safetensors): the
 * header length is at most `MAX_HEADER_BYTES` and within the file; the header is UTF-8 JSON
 * that begins with `{`, an object of entries with no name twice; dtype names are known;
 * shapes are non-negative integers (rank <= 8) whose element count times the element size
 * equals the byte range; the byte ranges tile the data exactly (no gaps, no overlap, nothing
 * past the end, nothing after the last tensor). So the tensors of a file that loads never
 * hold more than 4 bytes on the GPU per byte of the file (bool, I8 and U8: 4; I16 and U16:
 * 2; every other dtype at most 1). A gzip file
 * is decompressed as a stream that stops as soon as the output passes what its header
 * declares.
 *
 * @module
 */

import { FormatError, ValueError } from "../errors.ts";
import { fromCodes, isTensor, type Tensor, tensor } from "../tensor/mod.ts";
import { getRuntime } from "../gpu/device.ts";
import {
  type Entry,
  fail,
  HEADER_BOUND,
  headerLength,
  parseHeader,
  RAW,
  ST_NAMES,
  ULP_DTYPE,
} from "./_safetensors_header.ts";

/** Largest header accepted: far above any real model's, far below a hostile length's. */
export const MAX_HEADER_BYTES: number = HEADER_BOUND;

/** Options of `serialize` and `saveFile`. */
export interface SaveOptions {
  /** String metadata stored in the header's `__metadata__`. */
  metadata?: Record<string, string>;
}

/**
 * The bytes of a safetensors file holding `tensors` (reads them from the GPU).
 *
 * @example
 * ```ts
 * import { deserialize, serialize, tensor } from "../mod.ts";
 * const bytes = await serialize({ w: tensor([1, 2, 3], { dtype: "bf16" }) });
 * const back = deserialize(bytes);
 * console.log(back.tensors.w.dtype, Array.from(await back.tensors.w.toArray())); // "bf16" [1, 2, 3]
 * ```
 */
export async function serialize(
  tensors: Record<string, Tensor>,
  opts: SaveOptions = {},
): Promise<Uint8Array> {
  if (tensors === null || typeof tensors !== "object") {
    throw new ValueError(`serialize(): expects an object of tensors by name, got ${tensors}`);
  }
  const names = Object.keys(tensors);
  for (const name of names) {
    if (name === "__metadata__") {
      throw new FormatError("serialize(): '__metadata__' is reserved and cannot name a tensor");
    }
    if (!isTensor(tensors[name])) {
      throw new ValueError(`serialize(): '${name}' is not a Tensor (got ${typeof tensors[name]})`);
    }
  }
  const meta: [string, string][] = Object.entries(opts.metadata ?? {});
  for (const [k, v] of meta) {
    if (typeof v !== "string") {
      throw new ValueError(`serialize(): metadata '${k}' must be a string, got ${typeof v}`);
    }
  }
  const codes = await Promise.all(names.map((n) => tensors[n].codes()));
  const entries: [string, unknown][] = [];
  const parts: Uint8Array[] = [];
  let offset = 0;
  names.forEach((name, i) => {
    const t = tensors[name];
    const d = t.dt;
    let st = ST_NAMES[d.name];
    let bytes: Uint8Array;
    if (d.name === "bool") {
      bytes = Uint8Array.from(codes[i], (v) => (v ? 1 : 0));
    } else {
      const c = codes[i];
      bytes = new Uint8Array(c.buffer, c.byteOffset, c.byteLength).slice();
    }
    if (!st) {
      st = RAW.get(d.laneBits)!;
      meta.push([`${ULP_DTYPE}${name}`, d.name]);
    }
    const info = { dtype: st, shape: [...t.shape], data_offsets: [offset, offset + bytes.length] };
    entries.push([name, info]);
    parts.push(bytes);
    offset += bytes.byteLength;
  });
  // fromEntries makes own properties even of names such as "__proto__"
  if (meta.length > 0) entries.push(["__metadata__", Object.fromEntries(meta)]);
  let json = new TextEncoder().encode(JSON.stringify(Object.fromEntries(entries)));
  const pad = (8 - (json.byteLength % 8)) % 8; // the format aligns data to 8 bytes with spaces
  if (pad) {
    const p = new Uint8Array(json.byteLength + pad).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  let at = 8 + json.byteLength;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** What `deserialize` and `loadFile` return. */
export interface Loaded {
  /** The tensors by name, on the GPU. */
  tensors: Record<string, Tensor>;
  /** The header's `__metadata__` (ulp's own dtype entries removed). */
  metadata: Record<string, string>;
}

/** Options of `deserialize` and `loadFile`. */
export interface LoadOptions {
  /**
   * Entries to leave out, by name and safetensors dtype (`"I64"`, `"F32"`, ...): for example
   * `(name, dtype) => dtype === "I64"` skips 64-bit integers such as PyTorch's
   * `num_batches_tracked`. Skipped entries are still validated.
   */
  skip?: (name: string, dtype: string) => boolean;
}

/** The values of an integer entry of another width, as ulp's i32/u32 (range-checked). */
function widen(e: Entry, copy: Uint8Array, size: number): Int32Array | Uint32Array {
  const ab = copy.buffer;
  switch (e.st) {
    case "I8":
      return Int32Array.from(new Int8Array(ab, 0, size));
    case "I16":
      return Int32Array.from(new Int16Array(ab, 0, size));
    case "U8":
      return Uint32Array.from(new Uint8Array(ab, 0, size));
    case "U16":
      return Uint32Array.from(new Uint16Array(ab, 0, size));
  }
  const signed = e.st === "I64";
  const src = signed ? new BigInt64Array(ab, 0, size) : new BigUint64Array(ab, 0, size);
  const [lo, hi] = signed ? [-(2n ** 31n), 2n ** 31n - 1n] : [0n, 2n ** 32n - 1n];
  const out = signed ? new Int32Array(size) : new Uint32Array(size);
  for (let i = 0; i < size; i++) {
    const v = src[i];
    if (v < lo || v > hi) {
      throw new FormatError(
        `safetensors: tensor ${JSON.stringify(e.name.slice(0, 40))} (${e.st}, shape ` +
          `[${e.shape.join(",")}]) holds ${v} at index ${i}, outside the range of ulp's ` +
          `${signed ? "i32" : "u32"} [${lo}, ${hi}] that ${e.st} loads into; store it as ` +
          `${signed ? "I32" : "U32"} or leave it out with { skip: (name, dtype) => ` +
          `dtype === "${e.st}" }`,
      );
    }
    out[i] = Number(v);
  }
  return out;
}

function upload(e: Entry, bytes: Uint8Array): Tensor {
  const d = e.dt;
  const size = e.shape.reduce((a, b) => a * b, 1);
  const copy = bytes.slice(); // aligned, and owned by us
  if (d.kind === "int" && e.st !== "I32" && e.st !== "U32") {
    return tensor(widen(e, copy, size), { shape: e.shape, dtype: d });
  }
  if (d.name === "bool") {
    return tensor(Uint32Array.from(copy, (v) => (v ? 1 : 0)), { shape: e.shape, dtype: "bool" });
  }
  if (d.kind === "int") {
    return tensor(new (d.signed ? Int32Array : Uint32Array)(copy.buffer, 0, size), {
      shape: e.shape,
      dtype: d,
    });
  }
  const codes = d.laneBits === 8
    ? copy
    : d.laneBits === 16
    ? new Uint16Array(copy.buffer, 0, size)
    : new Uint32Array(copy.buffer, 0, size);
  return fromCodes(codes, e.shape, d); // raw codes: exact, MCF pairs included
}

/**
 * Parses and validates a safetensors file's bytes and uploads its tensors. Throws a
 * `FormatError` naming the problem for any malformed or unsafe file, before any tensor is
 * made; a 64-bit integer outside the 32-bit range, or a `DeviceError` from the GPU, frees
 * the tensors made before it. Needs the device (`await ready()` first).
 *
 * @example
 * ```ts
 * import { deserialize, FormatError } from "../mod.ts";
 * try { deserialize(new Uint8Array([255, 255, 255, 255, 255, 255, 255, 255])); } catch (e) { console.log(e instanceof FormatError); } // true
 * ```
 */
export function deserialize(bytes: Uint8Array, opts: LoadOptions = {}): Loaded {
  if (!((bytes as unknown) instanceof Uint8Array)) {
    const v = bytes as unknown;
    throw new ValueError(
      `deserialize(): expects the file's bytes as a Uint8Array, got ${
        v === null ? "null" : typeof v === "object" ? v.constructor?.name : typeof v
      }`,
    );
  }
  const hlen = headerLength(bytes, bytes.byteLength);
  const h = parseHeader(bytes, bytes.byteLength - 8 - hlen);
  const base = 8 + h.hlen;
  const made: [string, Tensor][] = [];
  try {
    for (const e of h.entries) {
      if (opts.skip?.(e.name, e.st)) continue;
      made.push([e.name, upload(e, bytes.subarray(base + e.begin, base + e.end))]);
    }
  } catch (err) {
    for (const [, t] of made) t.dispose();
    throw err;
  }
  const metadata = Object.fromEntries(
    Object.entries(h.meta).filter(([k]) => !k.startsWith(ULP_DTYPE)),
  );
  // fromEntries makes own properties even of names such as "__proto__"
  return { tensors: Object.fromEntries(made), metadata };
}

async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as BlobPart]).stream().pipeThrough(
    new CompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function concat(chunks: Uint8Array[], total: number): Uint8Array {
  if (chunks.length === 1 && chunks[0].byteLength === total) return chunks[0];
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

const GZIP_SLICE = 4096;

/**
 * Decompresses a gzip safetensors file, stopping as soon as the output passes the length its
 * header declares (a small hostile file cannot make it allocate more than that).
 */
async function gunzipSafetensors(bytes: Uint8Array, path: string): Promise<Uint8Array> {
  // fed in small slices, on demand: one slice decompresses to at most ~1032 times its size
  let at = 0;
  const input = new ReadableStream<BufferSource>({
    pull(c) {
      if (at >= bytes.byteLength) return c.close();
      c.enqueue(bytes.subarray(at, at += GZIP_SLICE) as Uint8Array<ArrayBuffer>);
    },
  }, { highWaterMark: 0 });
  const reader = input.pipeThrough(new DecompressionStream("gzip")).getReader();
  let chunks: Uint8Array[] = [];
  let total = 0;
  let hlen = -1; // known once 8 bytes are in
  let expected = Infinity; // known once the header is in
  try {
    while (true) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await reader.read();
      } catch (e) {
        return fail(`'${path}' is not valid gzip (${(e as Error).message})`);
      }
      if (r.done) break;
      chunks.push(r.value);
      total += r.value.byteLength;
      if (hlen < 0 && total >= 8) {
        chunks = [concat(chunks, total)];
        hlen = headerLength(chunks[0], null);
      }
      if (hlen >= 0 && expected === Infinity && total >= 8 + hlen) {
        chunks = [concat(chunks, total)];
        expected = 8 + hlen + parseHeader(chunks[0], null).dataEnd;
      }
      if (total > expected) {
        fail(`'${path}' holds more than the ${expected} bytes its header declares`);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  return concat(chunks, total);
}

/**
 * Writes tensors to `path` as safetensors (gzip-compressed when the path ends in `.gz`), as
 * the reference library's `save_file(tensors, path)`: atomically, through a temporary file in
 * the same folder and a rename, so a crash never leaves a half-written file under `path`.
 * Needs `--allow-write` for the folder.
 *
 * @example
 * ```ts ignore
 * import { loadFile, ready, saveFile, tensor } from "../mod.ts";
 * await ready();
 * await saveFile({ w: tensor([1, 2], { dtype: "bf16" }) }, "model.safetensors");
 * const { tensors } = await loadFile("model.safetensors");
 * console.log(tensors.w.dtype, Array.from(await tensors.w.toArray())); // "bf16" [1, 2]
 * ```
 */
export async function saveFile(
  tensors: Record<string, Tensor>,
  path: string,
  opts: SaveOptions = {},
): Promise<void> {
  if (typeof path !== "string") {
    throw new ValueError(
      `saveFile(tensors, path): path must be a string, got ${typeof path} (the tensors come ` +
        `first, as in safetensors' save_file)`,
    );
  }
  let bytes = await serialize(tensors, opts);
  if (path.endsWith(".gz")) bytes = await gzip(bytes);
  await writeAtomic(path, bytes);
}

/**
 * Writes bytes to `path` through a temporary file in the same folder, flushed to the disk
 * (`fsync`) and then renamed over `path`: a process killed at any moment leaves either the
 * old file or the new one under `path`, never a part of one. A killed writer may leave its
 * temporary file (`<path>.tmp-*`) behind.
 *
 * @example
 * ```ts ignore
 * import { writeAtomic } from "../mod.ts";
 * await writeAtomic("notes.txt", new TextEncoder().encode("hello"));
 * ```
 */
export async function writeAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${Date.now()}-${Math.floor(Math.random() * 1e9)}`;
  try {
    using file = await Deno.open(tmp, { write: true, createNew: true });
    for (let at = 0; at < bytes.byteLength;) at += await file.write(bytes.subarray(at));
    await file.syncData();
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  try {
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Reads a safetensors file (gzip-compressed when the path ends in `.gz`) and uploads its
 * tensors, as the reference library's `load_file(path)`; acquires the device if needed.
 * Throws a `FormatError` for a malformed file. Needs `--allow-read` for the path.
 *
 * @example
 * ```ts ignore
 * import { loadFile } from "../mod.ts";
 * // a PyTorch state dict: int64 counters load as i32; or leave them out
 * const { tensors } = await loadFile("model.safetensors", { skip: (_, dt) => dt === "I64" });
 * ```
 */
export async function loadFile(path: string, opts: LoadOptions = {}): Promise<Loaded> {
  let bytes: Uint8Array = await Deno.readFile(path);
  if (path.endsWith(".gz")) bytes = await gunzipSafetensors(bytes, path);
  await getRuntime();
  return deserialize(bytes, opts);
}
