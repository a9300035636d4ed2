/**
 * Reading a safetensors header as a hostile input: the length field, the JSON, dtype names,
 * shapes against byte ranges and the tiling of the data, with the rules of the reference
 * implementation (huggingface/safetensors). Private to `safetensors.ts`.
 *
 * @module
 */

import { type DType, dtype } from "../dtypes/mod.ts";
import { FormatError } from "../errors.ts";
import { excerpt, jsonProblem } from "./_excerpt.ts";

/** Safetensors' names of the dtypes that have one. */
export const ST_NAMES: Readonly<Record<string, string>> = {
  f32: "F32",
  f16: "F16",
  bf16: "BF16",
  e4m3: "F8_E4M3",
  e5m2: "F8_E5M2",
  i32: "I32",
  u32: "U32",
  bool: "BOOL",
};
const FROM_ST = new Map(Object.entries(ST_NAMES).map(([k, v]) => [v, k]));
/**
 * Integer dtypes of other frameworks (PyTorch's int64 indices, uint8 masks) that load into
 * ulp's 32-bit integers: signed ones as i32, unsigned ones as u32 (64-bit values checked to
 * fit). U8/U16 with a ulp dtype in `__metadata__` are raw codes of that dtype instead.
 */
const INT_LOADS: ReadonlyMap<string, string> = new Map([
  ["I64", "i32"],
  ["I16", "i32"],
  ["I8", "i32"],
  ["U64", "u32"],
  ["U16", "u32"],
  ["U8", "u32"],
]);
/** Raw code widths, for dtypes without a safetensors name (their ulp name is in __metadata__). */
export const RAW = new Map([[8, "U8"], [16, "U16"], [32, "U32"]]);
/** Bytes per element in the file, for every dtype name the reader accepts. */
const FILE_BYTES = new Map([
  ["F32", 4],
  ["F16", 2],
  ["BF16", 2],
  ["F8_E4M3", 1],
  ["F8_E5M2", 1],
  ["I32", 4],
  ["U32", 4],
  ["BOOL", 1],
  ["U8", 1],
  ["U16", 2],
  ["I64", 8],
  ["U64", 8],
  ["I16", 2],
  ["I8", 1],
]);
const MAX_RANK = 8;
/** Prefix of the __metadata__ keys that hold ulp dtype names. */
export const ULP_DTYPE = "ulp.dtype.";
/** Largest header accepted (published as `MAX_HEADER_BYTES`). */
export const HEADER_BOUND = 100 * 2 ** 20;

/** One tensor of a validated header. */
export interface Entry {
  name: string;
  /** The dtype name in the file (`F32`, `I64`, ...). */
  st: string;
  /** The ulp dtype it loads as. */
  dt: DType;
  shape: number[];
  begin: number;
  end: number;
}

/** A validated header. */
export interface Header {
  /** Bytes of the JSON header. */
  hlen: number;
  /** Entries sorted by offset; they tile `[0, dataEnd)`. */
  entries: Entry[];
  meta: Record<string, string>;
  /** Bytes of data the header declares. */
  dataEnd: number;
}

/** Throws a FormatError that says `safetensors: <msg>`. */
export function fail(msg: string): never {
  throw new FormatError(`safetensors: ${msg}`);
}

/** The header length field, checked against the bound and the bytes after it. */
export function headerLength(bytes: Uint8Array, fileBytes: number | null): number {
  if (bytes.byteLength < 8) {
    fail(`file of ${bytes.byteLength} bytes is shorter than the 8-byte header length`);
  }
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(HEADER_BOUND)) {
    fail(`header length ${n} exceeds the ${HEADER_BOUND}-byte bound (MAX_HEADER_BYTES)`);
  }
  if (fileBytes !== null && n > BigInt(fileBytes - 8)) {
    fail(`header length ${n} exceeds the ${fileBytes - 8} bytes after it`);
  }
  if (n < 2n) fail(`header length ${n} is too small for a JSON object`);
  return Number(n);
}

/**
 * Parses and validates the header of `bytes` (which hold at least the header). With
 * `dataBytes`, entries are also checked against the data the file holds.
 */
export function parseHeader(bytes: Uint8Array, dataBytes: number | null): Header {
  const fileBytes = dataBytes === null ? null : bytes.byteLength;
  const hlen = headerLength(bytes, fileBytes);
  if (bytes.byteLength < 8 + hlen) fail(`the file ends inside its ${hlen}-byte header`);
  const raw = bytes.subarray(8, 8 + hlen);
  if (raw[0] !== 0x7b) {
    fail(`the header must be a JSON object, beginning with '{' (not 0x${raw[0].toString(16)})`);
  }
  let text: string;
  let header: unknown;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
    header = JSON.parse(text);
  } catch (e) {
    return fail(`the header is not valid UTF-8 JSON (${jsonProblem(e)})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail("the header must be a JSON object");
  }
  const dup = duplicateKey(text);
  if (dup !== null) {
    fail(`the header names ${excerpt(dup)} twice; each tensor must be named once`);
  }
  const h = header as Record<string, unknown>;
  const metaRaw = Object.hasOwn(h, "__metadata__") ? h.__metadata__ : {};
  if (
    typeof metaRaw !== "object" || metaRaw === null || Array.isArray(metaRaw) ||
    Object.values(metaRaw).some((v) => typeof v !== "string")
  ) {
    fail("__metadata__ must be an object of strings");
  }
  const meta = metaRaw as Record<string, string>;
  const entries: Entry[] = [];
  for (const [name, info] of Object.entries(h)) {
    if (name !== "__metadata__") entries.push(parseEntry(name, info, meta, dataBytes));
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  for (const e of entries) {
    if (e.begin !== pos) {
      fail(
        e.begin < pos
          ? `tensor ${
            excerpt(e.name)
          } (bytes ${e.begin}..${e.end}) overlaps the previous tensor, ` +
            `which ends at ${pos}`
          : `the data has a gap: tensor ${
            excerpt(e.name)
          } begins at ${e.begin}, the previous ends ` +
            `at ${pos} (the byte buffer must be indexed entirely)`,
      );
    }
    pos = e.end;
  }
  if (dataBytes !== null && pos !== dataBytes) {
    fail(
      `the header declares ${pos} bytes of data, the file holds ${dataBytes} after the ` +
        `header (the byte buffer must be indexed entirely)`,
    );
  }
  return { hlen, entries, meta, dataEnd: pos };
}

function parseEntry(
  name: string,
  info: unknown,
  meta: Record<string, string>,
  dataBytes: number | null,
): Entry {
  const what = `entry ${excerpt(name)}`;
  if (typeof info !== "object" || info === null || Array.isArray(info)) {
    fail(`${what} is not an object`);
  }
  const { dtype: st, shape, data_offsets: off } = info as Record<string, unknown>;
  if (typeof st !== "string" || !FILE_BYTES.has(st)) {
    fail(
      `${what} has dtype ${excerpt(st)}, which ulp cannot load; supported: ` +
        `${[...FILE_BYTES.keys()].join(", ")}`,
    );
  }
  const st_ = st as string;
  const ulpKey = `${ULP_DTYPE}${name}`;
  let dt: DType;
  if (Object.hasOwn(meta, ulpKey)) {
    const ulpName = meta[ulpKey];
    try {
      dt = dtype(ulpName);
    } catch {
      return fail(
        `${what}: its ulp dtype in __metadata__ (${excerpt(ulpName)}) is not a dtype ulp knows`,
      );
    }
    if (Object.hasOwn(ST_NAMES, dt.name)) {
      fail(
        `${what}: its ulp dtype in __metadata__ names ${dt.name}, which has the standard name ` +
          ST_NAMES[dt.name],
      );
    }
    if (RAW.get(dt.laneBits) !== st_) {
      fail(`${what} is ${st_} but its ulp dtype ${dt.name} is stored as ${RAW.get(dt.laneBits)}`);
    }
  } else if (FROM_ST.has(st_)) {
    dt = dtype(FROM_ST.get(st_)!);
  } else if (INT_LOADS.has(st_)) {
    dt = dtype(INT_LOADS.get(st_)!);
  } else {
    return fail(`${what} has dtype ${st_} but no ulp dtype in __metadata__ (${excerpt(ulpKey)})`);
  }
  if (
    !Array.isArray(shape) || shape.length > MAX_RANK ||
    shape.some((s) => !Number.isSafeInteger(s) || s < 0)
  ) {
    fail(
      `${what} has an invalid shape ${excerpt(shape)} (non-negative integers, rank ` +
        `<= ${MAX_RANK})`,
    );
  }
  if (
    !Array.isArray(off) || off.length !== 2 ||
    off.some((o) => !Number.isSafeInteger(o) || o < 0) || off[0] > off[1]
  ) {
    fail(`${what} has invalid data_offsets ${excerpt(off)} ([begin, end], begin <= end)`);
  }
  const [begin, end] = off as number[];
  if (dataBytes !== null && end > dataBytes) {
    fail(`${what} ends at ${end}, past the ${dataBytes} data bytes of the file`);
  }
  // exact in BigInt: a product of sizes may pass 2^53
  const need = (shape as number[]).reduce((a, s) => a * BigInt(s), BigInt(FILE_BYTES.get(st_)!));
  if (need !== BigInt(end - begin)) {
    fail(
      `${what} of shape ${excerpt(shape)} and dtype ${st_} needs ${need} bytes, its ` +
        `data_offsets span ${end - begin}`,
    );
  }
  return { name, st: st_, dt, shape: shape as number[], begin, end };
}

/** The first name that a JSON object's top level repeats, or null. `text` is valid JSON. */
function duplicateKey(text: string): string | null {
  const seen = new Set<string>();
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) { // a string: skip to its closing quote
      let j = i + 1;
      while (text.charCodeAt(j) !== 0x22) j += text.charCodeAt(j) === 0x5c ? 2 : 1;
      if (depth === 1 && expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (seen.has(key)) return key;
        seen.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === 0x7b || c === 0x5b) { // { [
      depth++;
      expectKey = c === 0x7b && depth === 1;
    } else if (c === 0x7d || c === 0x5d) { // } ]
      depth--;
    } else if (c === 0x2c && depth === 1) { // , at the top level: a key follows
      expectKey = true;
    }
  }
  return null;
}
