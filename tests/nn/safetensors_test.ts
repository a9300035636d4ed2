import assert from "node:assert/strict";
import {
  deserialize,
  dtype,
  FormatError,
  fromCodes,
  loadFile,
  saveFile,
  serialize,
  tensor,
} from "../../mod.ts";
import { rng } from "../tensor/_reference.ts";

/** A minimal independent safetensors reader: header length, JSON, raw bytes. */
function parse(bytes: Uint8Array) {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  return { header, data: bytes.subarray(8 + n) };
}

Deno.test("serialize() writes standard safetensors: names, shapes, offsets and little-endian codes", async () => {
  const bytes = await serialize({
    w: tensor([[1, 2], [3, 4]]),
    b: tensor([0.5, -1, 2], { dtype: "bf16" }),
    q: tensor([1, 448, -0.25], { dtype: "e4m3" }),
    i: tensor(new Int32Array([-7, 9])),
    m: tensor([true, false, true], { dtype: "bool" }),
  }, { metadata: { format: "pt" } });
  const { header, data } = parse(bytes);
  assert.equal(
    new DataView(bytes.buffer).getBigUint64(0, true) % 8n,
    0n,
    "data aligned to 8 bytes",
  );
  assert.deepEqual(header.w, { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] });
  assert.deepEqual(header.b, { dtype: "BF16", shape: [3], data_offsets: [16, 22] });
  assert.deepEqual(header.q.dtype, "F8_E4M3");
  assert.deepEqual(header.i.dtype, "I32");
  assert.deepEqual(header.m, { dtype: "BOOL", shape: [3], data_offsets: [33, 36] });
  assert.equal(header.__metadata__.format, "pt");
  assert.deepEqual(Array.from(new Float32Array(data.slice(0, 16).buffer)), [1, 2, 3, 4]);
  assert.deepEqual(Array.from(new Uint16Array(data.slice(16, 22).buffer)), [
    0x3f00,
    0xbf80,
    0x4000,
  ]);
  assert.deepEqual(Array.from(data.slice(22, 25)), [0x38, 0x7e, 0xa8]);
  assert.deepEqual(Array.from(new Int32Array(data.slice(25, 33).buffer)), [-7, 9]);
  assert.deepEqual(Array.from(data.slice(33, 36)), [1, 0, 1]);
});

Deno.test("saveFile() and loadFile() round-trip every dtype exactly, gzip included, MCF pairs as raw codes", async () => {
  await Deno.mkdir(".test-tmp", { recursive: true });
  const dir = await Deno.makeTempDir({ dir: ".test-tmp" });
  try {
    const r = rng(4);
    const vals = Float32Array.from({ length: 37 }, () => (r() - 0.5) * 10);
    const ts = Object.fromEntries(
      ["f32", "f16", "bf16", "e4m3", "e5m2", "e8m3", "e3m2fn", "i32", "u32", "bool"].map((
        n,
      ) => [n, tensor(vals.map(Math.abs), { dtype: n, shape: [37] })]),
    );
    // a pair whose low part is not the rounding error of the high part must survive as is
    ts.pair = fromCodes(new Uint32Array([0x3f80_3c00, 0x4000_b800]), [2], "bf16x2");
    for (const file of ["a.safetensors", "a.safetensors.gz"]) {
      await saveFile(ts, `${dir}/${file}`, { metadata: { note: "x" } });
      const { tensors, metadata } = await loadFile(`${dir}/${file}`);
      assert.deepEqual(metadata, { note: "x" });
      for (const [k, t] of Object.entries(ts)) {
        assert.equal(tensors[k].dtype, dtype(t.dtype).name, k);
        assert.deepEqual(tensors[k].shape, t.shape);
        assert.deepEqual(Array.from(await tensors[k].codes()), Array.from(await t.codes()), k);
      }
    }
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(
      names,
      ["a.safetensors", "a.safetensors.gz"],
      "no temporary files left behind",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function file(header: unknown, data = new Uint8Array(0), lengthOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

Deno.test("deserialize() rejects malformed and hostile files with a FormatError before allocating", () => {
  const ok = { a: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  const cases: [string, Uint8Array, RegExp][] = [
    ["too short", new Uint8Array(3), /shorter/],
    ["huge header length", file(ok, new Uint8Array(8), 2n ** 40n), /header length/],
    [
      "not JSON",
      (() => {
        const f = file(ok, new Uint8Array(8));
        f[8] = 0x7b;
        f[9] = 0x7b;
        return f;
      })(),
      /JSON/,
    ],
    ["array header", file([1, 2]), /object/],
    [
      "unknown dtype",
      file({ a: { dtype: "F64", shape: [1], data_offsets: [0, 8] } }, new Uint8Array(8)),
      /F64/,
    ],
    [
      "negative shape",
      file({ a: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4)),
      /shape/,
    ],
    [
      "shape vs bytes",
      file({ a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)),
      /needs 12 bytes/,
    ],
    [
      "past the end",
      file({ a: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, new Uint8Array(4)),
      /past/,
    ],
    [
      "overlap",
      file({
        a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
        b: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
      }, new Uint8Array(8)),
      /overlaps/,
    ],
    [
      "reversed offsets",
      file({ a: { dtype: "F32", shape: [0], data_offsets: [8, 0] } }, new Uint8Array(8)),
      /data_offsets/,
    ],
    [
      "huge shape",
      file(
        { a: { dtype: "F32", shape: [2 ** 30, 2 ** 30], data_offsets: [0, 8] } },
        new Uint8Array(8),
      ),
      /needs/,
    ],
    ["bad metadata", file({ __metadata__: { a: 1 } }), /metadata/],
  ];
  for (const [name, bytes, re] of cases) {
    assert.throws(
      () => deserialize(bytes),
      (e: unknown) => e instanceof FormatError && re.test(e.message),
      name,
    );
  }
});

Deno.test("integers of other frameworks load as i32/u32: I64 in range, I16, I8, U16 and U8", async () => {
  const i64 = new BigInt64Array([-(2n ** 31n), -1n, 0n, 7n, 2n ** 31n - 1n]);
  const i16 = new Int16Array([-32768, -1, 300]);
  const i8 = new Int8Array([-128, -1, 127]);
  const u16 = new Uint16Array([0, 65535]);
  const u8 = new Uint8Array([0, 200, 255]);
  const parts: [string, string, ArrayBufferView][] = [
    ["a", "I64", i64],
    ["b", "I16", i16],
    ["c", "I8", i8],
    ["d", "U16", u16],
    ["e", "U8", u8],
  ];
  let at = 0;
  const header: Record<string, unknown> = {};
  const data = new Uint8Array(parts.reduce((n, [, , v]) => n + v.byteLength, 0));
  for (const [name, st, v] of parts) {
    const len = v.byteLength / (v as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT;
    header[name] = { dtype: st, shape: [len], data_offsets: [at, at + v.byteLength] };
    data.set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), at);
    at += v.byteLength;
  }
  const { tensors } = deserialize(file(header, data));
  const want: [string, string, number[]][] = [
    ["a", "i32", Array.from(i64, Number)],
    ["b", "i32", Array.from(i16)],
    ["c", "i32", Array.from(i8)],
    ["d", "u32", Array.from(u16)],
    ["e", "u32", Array.from(u8)],
  ];
  for (const [name, dt, values] of want) {
    assert.equal(tensors[name].dtype, dt, name);
    assert.deepEqual(Array.from(await tensors[name].toArray()), values, name);
    tensors[name].dispose();
  }
});

Deno.test("an I64 value outside the i32 range is a FormatError naming it; skip leaves entries out", async () => {
  const big = new BigInt64Array([1n, 2n ** 31n]);
  const w = new Float32Array([0.5, -2]);
  const data = new Uint8Array(24);
  data.set(new Uint8Array(w.buffer), 0);
  data.set(new Uint8Array(big.buffer), 8);
  const f = file({
    w: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
    step: { dtype: "I64", shape: [2], data_offsets: [8, 24] },
  }, data);
  assert.throws(
    () => deserialize(f),
    (e: unknown) =>
      e instanceof FormatError && /"step" \(I64, shape \[2\]\) holds 2147483648 at index 1/.test(
        e.message,
      ) && /skip/.test(e.message),
  );
  const { tensors } = deserialize(f, { skip: (_, dt) => dt === "I64" });
  assert.deepEqual(Object.keys(tensors), ["w"]);
  assert.deepEqual(Array.from(await tensors.w.toArray()), [0.5, -2]);
  tensors.w.dispose();
});
