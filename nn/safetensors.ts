/**
 * Weights on disk in the safetensors format (an 8-byte little-endian header length, a JSON
 * header of `{ name: { dtype, shape, data_offsets } }`, then the raw bytes), so files open
 * in other tools. ulp's storage codes are the bytes: F32, F16, BF16, F8_E4M3, F8_E5M2, I32,
 * U32 and BOOL use the standard names; formats safetensors does not know (simulated eXmY,
 * bf16x2) are stored as U8/U16/U32 codes with their ulp dtype in `__metadata__` under
 * `ulp.dtype.<name>`. Files ending in `.gz` are gzip-compressed (CompressionStream).
 *
 * The reader treats every file as hostile and validates it before it allocates anything for
 * a tensor, with the rules of the reference implementation (huggingface/safetensors): the
 * header length is at most `MAX_HEADER_BYTES` and within the file; the header is UTF-8 JSON
 * that begins with `{`, an object of entries with no name twice; dtype names are known;
 * shapes are non-negative integers (rank <= 8) whose element count times the element size
 * equals the byte range; the byte ranges tile the data exactly (no gaps, no overlap, nothing
 * past the end, nothing after the last tensor). So the tensors of a file that loads never
 * hold more bytes than the file (bool: 4 bytes on the GPU per byte of the file). A gzip file
 * is decompressed as a stream that stops as soon as the output passes what its header
 * declares.
 *
 * @module
 */

import { FormatError, ValueError } from "../errors.ts";
import { fromCodes, isTensor, type Tensor, tensor } from "../tensor/mod.ts";
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

/** Options of `serialize` and `save`. */
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

/** What `deserialize` and `load` return. */
export interface Loaded {
  /** The tensors by name, on the GPU. */
  tensors: Record<string, Tensor>;
  /** The header's `__metadata__` (ulp's own dtype entries removed). */
  metadata: Record<string, string>;
}

function upload(e: Entry, bytes: Uint8Array): Tensor {
  const d = e.dt;
  const size = e.shape.reduce((a, b) => a * b, 1);
  const copy = bytes.slice(); // aligned, and owned by us
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
 * made; if the GPU refuses a tensor (a `DeviceError`), the ones made before are freed.
 *
 * @example
 * ```ts
 * import { deserialize, FormatError } from "../mod.ts";
 * try { deserialize(new Uint8Array([255, 255, 255, 255, 255, 255, 255, 255])); } catch (e) { console.log(e instanceof FormatError); } // true
 * ```
 */
export function deserialize(bytes: Uint8Array): Loaded {
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
 * Writes tensors to `path` as safetensors (gzip-compressed when the path ends in `.gz`),
 * atomically: a temporary file in the same folder, then a rename, so a crash never leaves a
 * half-written file under `path`. Needs `--allow-write` for the folder.
 *
 * @example
 * ```ts ignore
 * import { save, tensor } from "../mod.ts";
 * await save("model.safetensors", { w: tensor([1, 2]) });
 * ```
 */
export async function save(
  path: string,
  tensors: Record<string, Tensor>,
  opts: SaveOptions = {},
): Promise<void> {
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
 * tensors. Throws a `FormatError` for a malformed file. Needs `--allow-read` for the path.
 *
 * @example
 * ```ts ignore
 * import { load } from "../mod.ts";
 * const { tensors } = await load("model.safetensors");
 * ```
 */
export async function load(path: string): Promise<Loaded> {
  let bytes: Uint8Array = await Deno.readFile(path);
  if (path.endsWith(".gz")) bytes = await gunzipSafetensors(bytes, path);
  return deserialize(bytes);
}
