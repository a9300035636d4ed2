/**
 * Weights on disk in the safetensors format (an 8-byte little-endian header length, a JSON
 * header of `{ name: { dtype, shape, data_offsets } }`, then the raw bytes), so files open
 * in other tools. ulp's storage codes are the bytes: F32, F16, BF16, F8_E4M3, F8_E5M2, I32,
 * U32 and BOOL use the standard names; formats safetensors does not know (simulated eXmY,
 * bf16x2) are stored as U8/U16/U32 codes with their ulp dtype in `__metadata__` under
 * `ulp.dtype.<name>`. Files ending in `.gz` are gzip-compressed (CompressionStream).
 *
 * The reader validates everything before it allocates: header length against the file size
 * and a 100 MB bound, the JSON, dtype names, shapes against byte ranges, and offsets that
 * must lie in the file, in order, without overlap.
 *
 * @module
 */

import { type DType, dtype } from "../dtypes/mod.ts";
import { FormatError } from "../errors.ts";
import { fromCodes, type Tensor, tensor } from "../tensor/mod.ts";

const ST_NAMES: Record<string, string> = {
  f32: "F32",
  f16: "F16",
  bf16: "BF16",
  e4m3: "F8_E4M3",
  e5m2: "F8_E5M2",
  i32: "I32",
  u32: "U32",
  bool: "BOOL",
};
const FROM_ST: Record<string, string> = Object.fromEntries(
  Object.entries(ST_NAMES).map(([k, v]) => [v, k]),
);
const RAW: Record<number, string> = { 8: "U8", 16: "U16", 32: "U32" };
const RAW_BYTES: Record<string, number> = { U8: 1, U16: 2, U32: 4 };
/** Largest header accepted: far above any real model's, far below a hostile length's. */
export const MAX_HEADER_BYTES = 100 * 2 ** 20;

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
  const names = Object.keys(tensors);
  const codes = await Promise.all(names.map((n) => tensors[n].codes()));
  const header: Record<string, unknown> = {};
  const meta: Record<string, string> = { ...(opts.metadata ?? {}) };
  const parts: Uint8Array[] = [];
  let offset = 0;
  names.forEach((name, i) => {
    if (name === "__metadata__") {
      throw new FormatError("serialize(): '__metadata__' is reserved and cannot name a tensor");
    }
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
      st = RAW[d.laneBits];
      meta[`ulp.dtype.${name}`] = d.name;
    }
    header[name] = {
      dtype: st,
      shape: [...t.shape],
      data_offsets: [offset, offset + bytes.byteLength],
    };
    parts.push(bytes);
    offset += bytes.byteLength;
  });
  if (Object.keys(meta).length > 0) header.__metadata__ = meta;
  let json = new TextEncoder().encode(JSON.stringify(header));
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

interface Entry {
  name: string;
  dt: DType;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * Parses and validates a safetensors file's bytes and uploads its tensors. Throws a
 * `FormatError` naming the problem for any malformed or unsafe file.
 *
 * @example
 * ```ts
 * import { deserialize, FormatError } from "../mod.ts";
 * try { deserialize(new Uint8Array([255, 255, 255, 255, 255, 255, 255, 255])); } catch (e) { console.log(e instanceof FormatError); } // true
 * ```
 */
export function deserialize(bytes: Uint8Array): Loaded {
  if (bytes.byteLength < 8) {
    throw new FormatError(
      `safetensors: file of ${bytes.byteLength} bytes is shorter than the 8-byte header length`,
    );
  }
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(bytes.byteLength - 8) || n > BigInt(MAX_HEADER_BYTES)) {
    throw new FormatError(
      `safetensors: header length ${n} exceeds the ${
        bytes.byteLength - 8
      } bytes after it (or the ${MAX_HEADER_BYTES}-byte bound)`,
    );
  }
  const hlen = Number(n);
  let header: unknown;
  try {
    header = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + hlen)),
    );
  } catch (e) {
    throw new FormatError(
      `safetensors: the header is not valid UTF-8 JSON (${(e as Error).message})`,
    );
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new FormatError("safetensors: the header must be a JSON object");
  }
  const dataLen = bytes.byteLength - 8 - hlen;
  const metaRaw = (header as Record<string, unknown>).__metadata__ ?? {};
  if (
    typeof metaRaw !== "object" || metaRaw === null || Array.isArray(metaRaw) ||
    Object.values(metaRaw).some((v) => typeof v !== "string")
  ) {
    throw new FormatError("safetensors: __metadata__ must be an object of strings");
  }
  const meta = metaRaw as Record<string, string>;
  const entries: Entry[] = [];
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    entries.push(parseEntry(name, raw, meta, dataLen));
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  for (const e of entries) {
    if (e.begin < pos) {
      throw new FormatError(
        `safetensors: tensor '${e.name}' overlaps the previous tensor (offset ${e.begin} < ${pos})`,
      );
    }
    pos = e.end;
  }
  const tensors: Record<string, Tensor> = {};
  const base = 8 + hlen;
  try {
    for (const e of entries) {
      tensors[e.name] = upload(e, bytes.subarray(base + e.begin, base + e.end));
    }
  } catch (err) {
    for (const t of Object.values(tensors)) t.dispose();
    throw err;
  }
  const metadata = Object.fromEntries(
    Object.entries(meta).filter(([k]) => !k.startsWith("ulp.dtype.")),
  );
  return { tensors, metadata };
}

function parseEntry(
  name: string,
  raw: unknown,
  meta: Record<string, string>,
  dataLen: number,
): Entry {
  if (typeof raw !== "object" || raw === null) {
    throw new FormatError(`safetensors: entry '${name}' is not an object`);
  }
  const { dtype: st, shape, data_offsets: off } = raw as Record<string, unknown>;
  if (typeof st !== "string") {
    throw new FormatError(`safetensors: entry '${name}' has no dtype string`);
  }
  let dt: DType;
  const ulpName = meta[`ulp.dtype.${name}`];
  try {
    if (ulpName !== undefined) {
      dt = dtype(ulpName);
      if (RAW[dt.laneBits] !== st) {
        throw new FormatError(
          `safetensors: '${name}' is ${st} but its ulp dtype ${ulpName} needs ${RAW[dt.laneBits]}`,
        );
      }
    } else if (FROM_ST[st]) {
      dt = dtype(FROM_ST[st]);
    } else {
      throw new FormatError(
        `safetensors: entry '${name}' has dtype '${st}', which ulp cannot load; supported: ${
          Object.keys(FROM_ST).join(", ")
        }`,
      );
    }
  } catch (e) {
    if (e instanceof FormatError) throw e;
    throw new FormatError(`safetensors: entry '${name}': ${(e as Error).message}`);
  }
  if (
    !Array.isArray(shape) || shape.some((s) => !Number.isSafeInteger(s) || s < 0) ||
    shape.length > 8
  ) {
    throw new FormatError(
      `safetensors: entry '${name}' has an invalid shape ${
        JSON.stringify(shape)
      } (non-negative integers, rank <= 8)`,
    );
  }
  if (
    !Array.isArray(off) || off.length !== 2 || off.some((o) => !Number.isSafeInteger(o) || o < 0) ||
    off[0] > off[1]
  ) {
    throw new FormatError(
      `safetensors: entry '${name}' has invalid data_offsets ${JSON.stringify(off)}`,
    );
  }
  const [begin, end] = off as number[];
  if (end > dataLen) {
    throw new FormatError(
      `safetensors: entry '${name}' ends at ${end}, past the ${dataLen} data bytes of the file`,
    );
  }
  const size = (shape as number[]).reduce((a, b) => a * b, 1);
  const elemBytes = dt.name === "bool"
    ? 1
    : ulpName !== undefined
    ? RAW_BYTES[st]
    : dt.laneBits / 8;
  if (size * elemBytes !== end - begin) {
    throw new FormatError(
      `safetensors: entry '${name}' of shape ${JSON.stringify(shape)} and dtype ${st} needs ${
        size * elemBytes
      } bytes, ` +
        `its offsets span ${end - begin}`,
    );
  }
  return { name, dt, shape: shape as number[], begin, end };
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

async function gzip(bytes: Uint8Array, mode: "compress" | "decompress"): Promise<Uint8Array> {
  const stream = new Blob([bytes as BlobPart]).stream().pipeThrough(
    mode === "compress" ? new CompressionStream("gzip") : new DecompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
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
  if (path.endsWith(".gz")) bytes = await gzip(bytes, "compress");
  await writeAtomic(path, bytes);
}

/** Writes bytes to `path` through a temporary file and a rename. */
export async function writeAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${Date.now()}-${Math.floor(Math.random() * 1e9)}`;
  try {
    await Deno.writeFile(tmp, bytes);
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
  if (path.endsWith(".gz")) {
    try {
      bytes = await gzip(bytes, "decompress");
    } catch (e) {
      throw new FormatError(`safetensors: '${path}' is not valid gzip (${(e as Error).message})`);
    }
  }
  return deserialize(bytes);
}
