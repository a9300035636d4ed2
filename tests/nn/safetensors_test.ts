import assert from "node:assert/strict";
import {
  deserialize,
  dtype,
  FormatError,
  fromCodes,
  load,
  save,
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

Deno.test("save() and load() round-trip every dtype exactly, gzip included, MCF pairs as raw codes", async () => {
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
      await save(`${dir}/${file}`, ts, { metadata: { note: "x" } });
      const { tensors, metadata } = await load(`${dir}/${file}`);
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
