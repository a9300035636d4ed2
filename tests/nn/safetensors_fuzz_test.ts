// Hostile safetensors files (issue #9, item 2): seeded mutations of valid files. Every case
// must end in a clean FormatError or in a correct load: the tensors the header describes,
// read back from the GPU bit for bit, never more bytes than the file holds. Nothing may crash,
// hang, leak GPU memory or allocate a huge buffer.
//
// 10,000 cases by default (a few seconds: the decode path is host code). For more, or another
// seed:
//   FUZZ_CASES=200000 FUZZ_SEED=7 deno test --allow-read=. --allow-write=./.test-tmp \
//     --allow-env=FUZZ_CASES,FUZZ_SEED tests/nn/safetensors_fuzz_test.ts
import assert from "node:assert/strict";
import {
  AdamW,
  deserialize,
  dtype,
  FormatError,
  fromCodes,
  type Loaded,
  loadFile,
  memory,
  serialize,
  type Tensor,
  tensor,
} from "../../mod.ts";
import {
  GPT,
  GradScaler,
  loadCheckpoint,
  readCheckpoint,
  saveCheckpoint,
  tidy,
} from "../../mod.ts";
import { rng } from "../tensor/_reference.ts";

function envInt(name: string, fallback: number): number {
  if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
    return fallback;
  }
  const v = Deno.env.get(name);
  return v === undefined ? fallback : Number.parseInt(v, 10);
}

const CASES = envInt("FUZZ_CASES", 10_000);
const SEED = envInt("FUZZ_SEED", 1);

// ---- an independent reference reader ---------------------------------------------------------

/** Bytes per element in the file, by safetensors dtype name (the names ulp reads). */
const WIDTH: Record<string, number> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I32: 4,
  U32: 4,
  BOOL: 1,
  U8: 1,
  U16: 2,
  I8: 1,
  I16: 2,
  I64: 8,
};
const ULP_NAME: Record<string, string> = {
  F32: "f32",
  F16: "f16",
  BF16: "bf16",
  F8_E4M3: "e4m3",
  F8_E5M2: "e5m2",
  I32: "i32",
  U32: "u32",
  BOOL: "bool",
  U8: "u32", // integers of other widths load as ulp's 32-bit ones
  U16: "u32",
  I8: "i32",
  I16: "i32",
  I64: "i32", // when every value fits (else a FormatError)
};

interface Expected {
  dtype: string;
  shape: number[];
  codes: number[];
  bytes: number;
}

/** What a file that loads must hold, read the simplest way: JSON.parse and the byte ranges. */
function reference(file: Uint8Array): Map<string, Expected> {
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + n)));
  const meta = header.__metadata__ ?? {};
  const out = new Map<string, Expected>();
  for (const [name, e] of Object.entries(header) as [string, Record<string, unknown>][]) {
    if (name === "__metadata__") continue;
    const st = e.dtype as string;
    const w = WIDTH[st];
    const [begin] = e.data_offsets as number[];
    const shape = e.shape as number[];
    const count = shape.reduce((a, b) => a * b, 1);
    const codes: number[] = [];
    for (let i = 0; i < count; i++) {
      const at = 8 + n + begin + i * w;
      const v = w === 1
        ? file[at]
        : w === 2
        ? dv.getUint16(at, true)
        : w === 8
        ? Number(dv.getBigInt64(at, true)) >>> 0
        : dv.getUint32(at, true);
      const signed = st === "I8" ? (v << 24) >> 24 : st === "I16" ? (v << 16) >> 16 : v;
      codes.push(st === "BOOL" ? (v ? 1 : 0) : (st === "I8" || st === "I16") ? signed >>> 0 : v);
    }
    const ulp = meta[`ulp.dtype.${name}`] ?? ULP_NAME[st];
    out.set(name, { dtype: dtype(ulp).name, shape, codes, bytes: count * w });
  }
  return out;
}

// ---- valid files to start from ---------------------------------------------------------------

async function baseFiles(): Promise<Uint8Array[]> {
  const sets: Record<string, Tensor>[] = [
    {
      w: tensor([[1, 2, 3], [4, 5, 6]]),
      b: tensor([0.5, -1, 2], { dtype: "bf16" }),
      q: tensor([1, 448, -0.25, 3, 0], { dtype: "e4m3" }),
      i: tensor(new Int32Array([-7, 9])),
      m: tensor([true, false, true], { dtype: "bool" }),
    },
    {
      e: tensor([1, 2.5, -3, 1e-3], { dtype: "e8m3" }),
      p: fromCodes(new Uint32Array([0x3f80_3c00, 0x4000_b800]), [2], "bf16x2"),
      z: tensor([], { dtype: "f32", shape: [0] }),
      s: tensor(7),
      g: tensor([0.1, 0.2, 0.3], { dtype: "e3m2fn" }),
    },
    {
      h: tensor([1, -2, 3, 65504, 6e-8, 0, -0], { dtype: "f16" }),
      u: tensor(new Uint32Array([1, 2])),
    },
    {},
  ];
  const files = [];
  for (const [k, set] of sets.entries()) {
    files.push(await serialize(set, k === 0 ? { metadata: { format: "pt" } } : {}));
    for (const t of Object.values(set)) t.dispose();
  }
  return files;
}

// ---- mutations -------------------------------------------------------------------------------

type Json = Record<string, unknown>;

function split(file: Uint8Array): { header: Json; data: Uint8Array } {
  const n = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  return {
    header: JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + n))),
    data: file.subarray(8 + n),
  };
}

function assemble(json: string, data: Uint8Array, pad = true): Uint8Array {
  let text = new TextEncoder().encode(json);
  if (pad && text.length % 8) {
    const p = new Uint8Array(text.length + 8 - (text.length % 8)).fill(0x20);
    p.set(text);
    text = p;
  }
  const out = new Uint8Array(8 + text.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(text, 8);
  out.set(data, 8 + text.length);
  return out;
}

const ODD_VALUES: unknown[] = [
  -1,
  0,
  1,
  1.5,
  2 ** 31,
  2 ** 53,
  2 ** 64,
  1e308,
  -0,
  "3",
  "",
  null,
  true,
  [],
  {},
  [1, 2],
  [2 ** 30, 2 ** 30],
  [-1, 4],
];
const DTYPE_NAMES: unknown[] = [
  ...Object.keys(WIDTH),
  "F64",
  "I64",
  "I8",
  "F8_E8M0",
  "f32",
  "bf16",
  "",
  "__proto__",
  "constructor",
  "toString",
  42,
  null,
  {},
];
const ULP_DTYPES = ["e8m3", "bf16x2", "e3m2fn", "e5m6", "bool", "f32", "bf16", "i32", "e9m9", "x"];
const NAMES = ["__proto__", "constructor", "", "__metadata__", "toString", "a\u0000b", "w", "b"];

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)];
}

/** A structural edit of the JSON header; returns a description. */
function editHeader(r: () => number, h: Json): string {
  const names = Object.keys(h).filter((k) => k !== "__metadata__");
  const name = names.length ? pick(r, names) : "x";
  const e = (h[name] ?? (h[name] = { dtype: "F32", shape: [1], data_offsets: [0, 4] })) as Json;
  const k = Math.floor(r() * 14);
  switch (k) {
    case 0:
      e.dtype = pick(r, DTYPE_NAMES);
      return `dtype of ${name} = ${JSON.stringify(e.dtype)}`;
    case 1: {
      const s = Array.isArray(e.shape) ? [...e.shape] : [];
      if (s.length) s[Math.floor(r() * s.length)] += r() < 0.5 ? 1 : -1;
      else s.push(2);
      e.shape = s;
      return `shape of ${name} = ${JSON.stringify(s)}`;
    }
    case 2:
      e.shape = r() < 0.5
        ? pick(r, ODD_VALUES)
        : pick(r, [[2 ** 31, 2 ** 31, 2 ** 31], [0, 2 ** 53], Array(9).fill(1), [2 ** 53 + 2]]);
      return `shape of ${name} = ${JSON.stringify(e.shape)}`;
    case 3: {
      const o = Array.isArray(e.data_offsets) ? [...e.data_offsets] : [0, 0];
      const i = Math.floor(r() * 2);
      o[i] = (o[i] as number) + Math.floor((r() - 0.5) * 16);
      e.data_offsets = o;
      return `data_offsets of ${name} = ${JSON.stringify(o)}`;
    }
    case 4:
      e.data_offsets = r() < 0.5
        ? pick(r, ODD_VALUES)
        : pick(r, [[0, 2 ** 53], [2 ** 60, 2 ** 60], [8, 0], [0, 4, 8], [1e9, 1e9 + 4]]);
      return `data_offsets of ${name} = ${JSON.stringify(e.data_offsets)}`;
    case 5: { // overlap: take another entry's offsets
      const other = h[pick(r, names)] as Json | undefined;
      e.data_offsets = other?.data_offsets;
      return `data_offsets of ${name} copied`;
    }
    case 6:
      delete e[pick(r, ["dtype", "shape", "data_offsets"])];
      return `field of ${name} deleted`;
    case 7:
      delete h[name];
      return `entry ${name} deleted`;
    case 8: {
      const to = pick(r, NAMES);
      Object.defineProperty(h, to, { value: e, enumerable: true, configurable: true });
      if (to !== name) delete h[name];
      return `entry ${name} renamed ${JSON.stringify(to)}`;
    }
    case 9:
      h[name] = pick(r, ODD_VALUES);
      return `entry ${name} = ${JSON.stringify(h[name])}`;
    case 10:
      h.__metadata__ = pick(r, [[], 5, null, { a: 1 }, { a: {} }, "x", { a: "b", c: "d" }]);
      return `__metadata__ = ${JSON.stringify(h.__metadata__)}`;
    case 11: {
      const m =
        (typeof h.__metadata__ === "object" && h.__metadata__ !== null
          ? h.__metadata__
          : (h.__metadata__ = {})) as Json;
      const ulp = pick(r, ULP_DTYPES);
      m[`ulp.dtype.${r() < 0.8 ? name : "nobody"}`] = ulp;
      return `ulp dtype of ${name} = ${ulp}`;
    }
    case 12:
      e.extra = "field";
      return `extra field in ${name}`;
    default: {
      // a new entry somewhere in (or past) the data
      const at = Math.floor(r() * 64);
      const len = pick(r, [0, 1, 2, 4, 8]);
      h[`new${at}`] = {
        dtype: pick(r, ["F32", "U8", "BF16"]),
        shape: [len],
        data_offsets: [at, at + len],
      };
      return `new entry at ${at}`;
    }
  }
}

function mutate(r: () => number, base: Uint8Array): [string, Uint8Array] {
  try {
    return mutateOnce(r, base, Math.floor(r() * 10));
  } catch { // a JSON edit of a file whose header no longer parses: flip bytes instead
    return mutateOnce(r, base, 0);
  }
}

function mutateOnce(r: () => number, base: Uint8Array, k: number): [string, Uint8Array] {
  const f = base.slice();
  const n = Number(new DataView(f.buffer).getBigUint64(0, true));
  switch (k) {
    case 0: { // flip bytes anywhere
      const count = 1 + Math.floor(r() * 4);
      for (let i = 0; i < count; i++) f[Math.floor(r() * f.length)] ^= 1 + Math.floor(r() * 255);
      return [`${count} bytes flipped`, f];
    }
    case 1: { // flip a bit of the data (a correct load with other values)
      if (f.length > 8 + n) f[8 + n + Math.floor(r() * (f.length - 8 - n))] ^= 1 << (r() * 8);
      return ["data bit flipped", f];
    }
    case 2: {
      const len = Math.floor(r() * f.length);
      return [`truncated to ${len}`, f.subarray(0, len)];
    }
    case 3: {
      const extra = Uint8Array.from({ length: 1 + Math.floor(r() * 16) }, () => r() * 256);
      const g = new Uint8Array(f.length + extra.length);
      g.set(f);
      g.set(extra, f.length);
      return [`${extra.length} bytes appended`, g];
    }
    case 4: { // the header length field
      const v = pick(r, [
        0n,
        1n,
        2n,
        BigInt(n - 1),
        BigInt(n + 1),
        BigInt(n + 8),
        BigInt(f.length - 8),
        BigInt(f.length - 7),
        2n ** 32n,
        100n * 2n ** 20n + 1n,
        2n ** 63n,
        2n ** 64n - 1n,
        2n ** 64n - BigInt(n), // "negative"
        BigInt(Math.floor(r() * 2 ** 52)),
      ]);
      new DataView(f.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
      return [`header length ${v}`, f];
    }
    case 5:
    case 6:
    case 7: { // structural JSON edits (one or two)
      const { header, data } = split(f);
      let what = editHeader(r, header);
      if (r() < 0.3) what += "; " + editHeader(r, header);
      let json = JSON.stringify(header);
      if (r() < 0.1) json = json.replace(/^\{/, "  {"); // not beginning with '{'
      return [what, assemble(json, data, r() < 0.9)];
    }
    case 8: { // duplicate names, as text (JSON.parse would keep the last)
      const { header, data } = split(f);
      const names = Object.keys(header).filter((x) => x !== "__metadata__");
      if (!names.length) return ["duplicate of nothing", f];
      const name = pick(r, names);
      const twin = JSON.stringify({
        [name]: r() < 0.5 ? header[name] : { ...header[name] as Json, shape: [0] },
      });
      const json = JSON.stringify(header).replace(/^\{/, `{${twin.slice(1, -1)},`);
      return [`${name} named twice`, assemble(json, data)];
    }
    default: { // not an object, or not JSON, or not UTF-8
      const { data } = split(f);
      const text = pick(r, ["[1,2]", "5", '"x"', "null", "true", "{", "{}}", '{"a":', "\uFEFF{}"]);
      const bytes = assemble(text, data);
      if (r() < 0.3) bytes[8 + Math.floor(r() * text.length)] = 0xff;
      return [`header ${JSON.stringify(text)}`, bytes];
    }
  }
}

// ---- the test --------------------------------------------------------------------------------

Deno.test(`deserialize() survives ${CASES} mutated files: a FormatError or a correct load, never more bytes than the file`, async () => {
  const bases = await baseFiles();
  const r = rng(SEED);
  const live0 = memory().liveBytes;
  const rss0 = Deno.memoryUsage().rss;
  const counts = { formatError: 0, loaded: 0 };
  const failures: string[] = [];
  let pending: { what: string; got: Loaded; want: Map<string, Expected> }[] = [];
  let slowest = 0;

  const verify = async () => {
    const reads = pending.map((p) =>
      Promise.all(Object.values(p.got.tensors).map((t) => t.codes()))
    );
    const codes = await Promise.all(reads);
    pending.forEach((p, i) => {
      const names = Object.keys(p.got.tensors);
      names.forEach((name, j) => {
        const want = p.want.get(name)!;
        const got = Array.from(codes[i][j]);
        if (got.join() !== want.codes.join()) {
          failures.push(`${p.what}: ${name} holds ${got} instead of ${want.codes}`);
        }
      });
      for (const t of Object.values(p.got.tensors)) t.dispose();
    });
    pending = [];
  };

  for (let c = 0; c < CASES; c++) {
    const base = bases[c % bases.length];
    let [what, file] = mutate(r, base);
    if (r() < 0.15) {
      const [w2, f2] = mutate(r, file.length >= 8 ? file : base);
      [what, file] = [`${what}; ${w2}`, f2];
    }
    what = `case ${c} (seed ${SEED}): ${what}`;
    const t0 = performance.now();
    let got: Loaded;
    try {
      got = deserialize(file);
    } catch (e) {
      if (e instanceof FormatError) counts.formatError++;
      else failures.push(`${what}: threw ${(e as Error).name}: ${(e as Error).message}`);
      continue;
    } finally {
      slowest = Math.max(slowest, performance.now() - t0);
    }
    counts.loaded++;
    let want: Map<string, Expected>;
    try {
      want = reference(file);
    } catch (e) {
      failures.push(`${what}: loaded, but the reference cannot read it (${e})`);
      for (const t of Object.values(got.tensors)) t.dispose();
      continue;
    }
    const names = Object.keys(got.tensors).sort();
    if (names.join("\n") !== [...want.keys()].sort().join("\n")) {
      failures.push(`${what}: loaded ${names} but the header names ${[...want.keys()]}`);
    }
    let bytes = 0;
    for (const [name, t] of Object.entries(got.tensors)) {
      const w = want.get(name);
      if (!w) continue;
      bytes += w.bytes;
      if (t.dtype !== w.dtype || t.shape.join() !== w.shape.join()) {
        failures.push(`${what}: ${name} is ${t.dtype}${t.shape} instead of ${w.dtype}${w.shape}`);
      }
    }
    if (bytes > file.length) {
      failures.push(`${what}: ${bytes} bytes of tensors from ${file.length}`);
    }
    pending.push({ what, got, want });
    if (pending.length >= 256) await verify();
    if (failures.length > 20) break;
  }
  await verify();

  assert.deepEqual(failures, [], failures.join("\n"));
  assert.ok(counts.loaded > CASES / 50, `too few mutations load (${counts.loaded}): weak fuzzing`);
  assert.ok(counts.formatError > CASES / 2, `${counts.formatError} FormatErrors`);
  assert.equal(memory().liveBytes, live0, "failed loads leave no tensors behind");
  assert.ok(slowest < 1000, `a case took ${slowest.toFixed(0)} ms`);
  const grown = Deno.memoryUsage().rss - rss0;
  assert.ok(grown < 512 * 2 ** 20, `the process grew by ${grown} bytes`);
});

async function gz(bytes: Uint8Array): Promise<Uint8Array> {
  const s = new Blob([bytes as BlobPart]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(s).arrayBuffer());
}

Deno.test("loadFile() of a .gz file stops decompressing where its header says the data ends", async () => {
  // count what the decompressor hands out, to see where loadFile() stops reading
  const Real = globalThis.DecompressionStream;
  let produced = 0;
  globalThis.DecompressionStream = class {
    readonly readable: ReadableStream<Uint8Array>;
    readonly writable: WritableStream<BufferSource>;
    constructor(format: CompressionFormat) {
      const d = new Real(format);
      this.writable = d.writable;
      this.readable = d.readable.pipeThrough(
        new TransformStream<Uint8Array, Uint8Array>({
          transform(chunk, c) {
            produced += chunk.byteLength;
            c.enqueue(chunk);
          },
        }),
      );
    }
  } as unknown as typeof DecompressionStream;
  await Deno.mkdir(".test-tmp", { recursive: true });
  const dir = await Deno.makeTempDir({ dir: ".test-tmp" });
  try {
    const valid = await baseFiles();
    // a bomb: a valid 8-byte tensor followed by 64 MiB of zeros (64 KiB compressed)
    const bomb = new Uint8Array(valid[2].length + 64 * 2 ** 20);
    bomb.set(valid[2]);
    const cases: [string, Uint8Array, RegExp | null][] = [
      ["bomb", await gz(bomb), /holds more than the \d+ bytes its header declares/],
      ["valid", await gz(valid[0]), null],
      ["empty", await gz(valid[3]), null],
      [
        "truncated",
        await gz(valid[0].subarray(0, valid[0].length - 3)),
        /past the \d+ data bytes of the file/,
      ],
      ["not gzip", valid[0], /is not valid gzip/],
      [
        "huge header length",
        await gz(Uint8Array.from([255, 255, 255, 255, 255, 255, 255, 127, 123, 125])),
        /header length \d+ exceeds the 104857600-byte bound/,
      ],
    ];
    // and mutated compressed bytes: a clean FormatError or a correct load
    const r = rng(SEED + 1);
    const good = await gz(valid[0]);
    for (let i = 0; i < 200; i++) {
      const f = good.slice();
      f[Math.floor(r() * f.length)] ^= 1 + Math.floor(r() * 255);
      cases.push([`flipped gzip ${i}`, f, /./]);
    }
    for (const [what, bytes, re] of cases) {
      const path = `${dir}/f.safetensors.gz`;
      await Deno.writeFile(path, bytes);
      let got: Loaded | null = null;
      produced = 0;
      try {
        got = await loadFile(path);
      } catch (e) {
        if (what === "bomb") {
          assert.ok(produced < 16 * 2 ** 20, `the bomb was decompressed to ${produced} bytes`);
        }
        assert.ok(e instanceof FormatError, `${what}: ${e}`);
        assert.ok(re !== null && re.test(e.message), `${what}: ${e.message}`);
      }
      if (got !== null) {
        assert.ok(re === null || re.source === ".", `${what}: loaded`);
        const want = reference(valid[what === "empty" ? 3 : 0]);
        for (const [name, t] of Object.entries(got.tensors)) {
          assert.deepEqual(Array.from(await t.codes()), want.get(name)!.codes, `${what}: ${name}`);
          t.dispose();
        }
      }
    }
  } finally {
    globalThis.DecompressionStream = Real;
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- hostile checkpoints (issue #18, items 1 and 6) ------------------------------------------
// Seeded mutations of a training checkpoint (a GPT with AdamW and a GradScaler): bytes of the
// tensor file or of the JSON flipped, overwritten, cut, duplicated. loadCheckpoint() must end
// in a FormatError, or load exactly the saved tensors, each into its own place (the JSON's
// numbers may differ: a changed step or learning rate is a valid checkpoint, and is checked
// for range); nothing else may be thrown, nothing hangs, nothing leaks. A changed byte of a
// tensor is always caught (per-tensor SHA-256).
const CKPT_CASES = envInt("FUZZ_CKPT_CASES", 600);

Deno.test(`loadCheckpoint() survives ${CKPT_CASES} mutated checkpoints: a FormatError or the saved tensors, each in its place`, async () => {
  const dir = ".test-tmp/checkpoint_fuzz";
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  const cfg = { vocabSize: 8, blockSize: 4, nLayer: 1, nHead: 2, nEmbd: 8, seed: 3 };
  const build = () => {
    const model = new GPT(cfg);
    return {
      model,
      optimizer: new AdamW(model.parameters(), { lr: 1e-2 }),
      scaler: new GradScaler({ initScale: 1024 }),
    };
  };
  const a = build();
  {
    const ids = tensor(new Int32Array([1, 2, 3, 4, 5, 6, 7, 0]), { shape: [2, 4] });
    const loss = tidy(() => {
      const l = a.model.forward(ids, ids).loss!;
      a.scaler.scale(l).backward();
      return l.detach();
    });
    a.scaler.step(a.optimizer);
    a.scaler.update();
    a.optimizer.zeroGrad();
    for (const t of [ids, loss]) t.dispose();
  }
  await saveCheckpoint(`${dir}/base.json`, { ...a, step: 1, data: { position: 1 } });
  const json = await Deno.readFile(`${dir}/base.json`);
  const info = await readCheckpoint(`${dir}/base.json`);
  const tensorsFile = await Deno.readFile(`${dir}/${info.tensors}`);
  // what each target holds after a faithful load: the saved codes, by place
  const snapshot = async (t: ReturnType<typeof build>) => {
    const sd = t.optimizer.stateDict();
    const places: [string, Tensor][] = [
      ...t.model.namedParameters().map(([k, p]): [string, Tensor] => [`model.${k}`, p]),
      ...Object.entries(sd.state).flatMap(([i, s]) =>
        Object.entries(s).filter(([, v]) => v && typeof v === "object").map((
          [k, v],
        ): [string, Tensor] => [`optimizer.${i}.${k}`, v as Tensor])
      ),
    ];
    const codes = await Promise.all(places.map(([, x]) => x.codes()));
    const out = Object.fromEntries(places.map(([k], i) => [k, Array.from(codes[i]).join()]));
    for (const s of Object.values(sd.state)) {
      for (const v of Object.values(s)) if (v && typeof v === "object") (v as Tensor).dispose();
    }
    return out;
  };
  const want = await snapshot(a);
  const free = (t: ReturnType<typeof build>) => {
    for (const p of t.model.parameters()) p.dispose();
    t.optimizer.dispose();
    t.scaler.dispose();
  };
  free(a);

  const r = rng(SEED + 18);
  const mutateBytes = (src: Uint8Array): [string, Uint8Array] => {
    const b = src.slice();
    const at = Math.floor(r() * b.length);
    const k = Math.floor(r() * 4);
    if (k === 0) {
      const bit = 1 << Math.floor(r() * 8);
      b[at] ^= bit;
      return [`bit ${bit} of byte ${at} flipped`, b];
    }
    if (k === 1) {
      b[at] = Math.floor(r() * 256);
      return [`byte ${at} set`, b];
    }
    if (k === 2) return [`cut at ${at}`, b.slice(0, at)];
    const n = 1 + Math.floor(r() * 16);
    const out = new Uint8Array(b.length + n);
    out.set(b.subarray(0, at));
    out.set(b.subarray(at, at + n), at);
    out.set(b.subarray(at), at + Math.min(n, b.length - at));
    return [`${n} bytes at ${at} repeated`, out.subarray(0, b.length + Math.min(n, b.length - at))];
  };
  const counts = { formatError: 0, loaded: 0 };
  const failures: string[] = [];
  const live0 = memory().liveBytes;
  let slowest = 0;
  for (let c = 0; c < CKPT_CASES && failures.length < 10; c++) {
    const inTensors = c % 2 === 0;
    const [what, bytes] = mutateBytes(inTensors ? tensorsFile : json);
    const label = `case ${c}: ${inTensors ? "tensor file" : "JSON"}: ${what}`;
    await Deno.writeFile(`${dir}/base.json`, inTensors ? json : bytes);
    await Deno.writeFile(`${dir}/${info.tensors}`, inTensors ? bytes : tensorsFile);
    const b = build();
    const t0 = performance.now();
    try {
      await loadCheckpoint(`${dir}/base.json`, { ...b, restoreRng: false });
      counts.loaded++;
      const got = await snapshot(b);
      for (const [k, v] of Object.entries(want)) {
        if (got[k] !== v) failures.push(`${label}: loaded, but ${k} differs from the save`);
      }
      if (inTensors) {
        // a tensor file that loads holds the saved bytes: a change may only be in its header's
        // JSON whitespace, never in the data
        const hlen = 8 + Number(new DataView(tensorsFile.buffer).getBigUint64(0, true));
        const changed = bytes.length !== tensorsFile.length ||
          bytes.some((x, i) => i >= hlen && x !== tensorsFile[i]);
        if (changed) failures.push(`${label}: a tensor file with changed data loaded`);
      }
    } catch (e) {
      if (e instanceof FormatError) counts.formatError++;
      else failures.push(`${label}: threw ${(e as Error).name}: ${(e as Error).message}`);
    } finally {
      slowest = Math.max(slowest, performance.now() - t0);
      free(b);
    }
  }
  assert.deepEqual(failures, [], failures.join("\n"));
  assert.equal(memory().liveBytes, live0, "live GPU bytes after every case");
  assert.ok(counts.formatError > CKPT_CASES / 2, JSON.stringify(counts));
  assert.ok(slowest < 5000, `the slowest case took ${slowest.toFixed(0)} ms`);
  console.log(`  ${JSON.stringify(counts)}, slowest ${slowest.toFixed(0)} ms`);
});
