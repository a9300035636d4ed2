// The generated WGSL codecs agree bit for bit with the host codec, on the real adapter.
import assert from "node:assert/strict";
import { dtype, type Rounding, WGSL_RNG, wgslChunks, wgslCodec } from "../../dtypes/mod.ts";
import { randomU32 } from "../../dtypes/rng.ts";
import { getRuntime } from "../../gpu/mod.ts";

/** f32 inputs that exercise every path of an encoder: edges of the format and random bits. */
function inputs(name: string, n: number): Float32Array {
  const d = dtype(name);
  const c = d.constants!;
  const vals: number[] = [
    0,
    -0,
    NaN,
    Infinity,
    -Infinity,
    1,
    -1,
    1.5,
    3.4028234663852886e38,
    1e-45,
    -1e-45,
    1e-40,
  ];
  // every code of the format and the midpoints between neighbours (ties)
  const codes = d.bits <= 16 ? 2 ** d.bits : 0;
  const dec = d.decode(Uint32Array.from({ length: codes }, (_, i) => i));
  for (let i = 0; i < codes; i++) {
    vals.push(dec[i]);
    if (i + 1 < codes && Number.isFinite(dec[i]) && Number.isFinite(dec[i + 1])) {
      vals.push((dec[i] + dec[i + 1]) / 2);
    }
  }
  // values spread over the format's binades, and a few binades past each end
  const bits = new Uint32Array(1);
  const f = new Float32Array(bits.buffer);
  let k = 0;
  while (vals.length < n) {
    const r = randomU32(1234, k++);
    if (k % 2 === 0) {
      bits[0] = r; // any f32, NaN payloads and subnormals included
      vals.push(f[0]);
    } else {
      const e = c.emin - c.m - 3 + (r % (c.maxExpField - c.bias - (c.emin - c.m) + 6));
      vals.push((r & 1 ? -1 : 1) * (1 + (randomU32(99, k) >>> 8) / 2 ** 24) * 2 ** e);
    }
  }
  return Float32Array.from(vals.slice(0, n));
}

async function runCodec(
  name: string,
  rounding: Rounding,
  saturate: boolean,
  x: Float32Array,
  seed: number,
) {
  const rt = await getRuntime();
  const c = wgslCodec(name, { rounding, saturate });
  const src = wgslChunks([WGSL_RNG], c.chunks) + `
@group(0) @binding(0) var<storage, read> xin: array<u32>;
@group(0) @binding(1) var<storage, read_write> enc: array<u32>;
@group(0) @binding(2) var<storage, read_write> dec: array<u32>;
struct P { n: u32, seed: u32 }
@group(0) @binding(3) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * nwg.x) * 64u + li;
  if (i >= p.n) { return; }
  let code = ${c.encode}(bitcast<f32>(xin[i]), ulp_rand(p.seed, i));
  enc[i] = code;
  dec[i] = ${c.decodeBits}(code);
}`;
  const k = rt.kernel(`codec ${name}`, src, {
    buffers: ["read", "read_write", "read_write"],
    uniform: true,
  });
  const tag = { dtype: "u32", purpose: "scratch" } as const;
  const bx = rt.alloc(x.byteLength, tag),
    be = rt.alloc(x.byteLength, tag),
    bd = rt.alloc(x.byteLength, tag);
  rt.write(bx, x);
  rt.dispatch(
    k,
    [bx, be, bd],
    rt.grid(Math.ceil(x.length / 64)),
    new Uint32Array([x.length, seed]),
  );
  const [e, dd] = await Promise.all([rt.read(be), rt.read(bd)]);
  for (const b of [bx, be, bd]) rt.free(b);
  return { enc: new Uint32Array(e), dec: new Uint32Array(dd) };
}

const FORMATS = [
  "f32",
  "f16",
  "bf16",
  "e4m3",
  "e5m2",
  "e8m3",
  "e5m6",
  "e3m2",
  "e2m1fn",
  "e3m2fn",
  "e2m3fn",
  "e6m9",
];
const MODES: [Rounding, boolean][] = [["rne", false], ["rne", true], ["truncate", false], [
  "stochastic",
  false,
], ["stochastic", true]];

for (const name of FORMATS) {
  Deno.test(`WGSL codec of ${name} agrees bit for bit with the host codec in every rounding mode`, async () => {
    const x = inputs(name, 40_000);
    for (const [rounding, saturate] of MODES) {
      const seed = 7;
      const host = dtype(name).encode(x, { rounding, saturate, seed });
      const gpu = await runCodec(name, rounding, saturate, x, seed);
      const hostDec = new Uint32Array(dtype(name).decode(host).buffer);
      for (let i = 0; i < x.length; i++) {
        if (gpu.enc[i] !== host[i]) {
          assert.fail(
            `${name} ${rounding}${saturate ? " sat" : ""}: x=${x[i]} (0x${
              new Uint32Array(x.buffer)[i].toString(16)
            }) ` +
              `gpu 0x${gpu.enc[i].toString(16)} host 0x${host[i].toString(16)}`,
          );
        }
        const hd = hostDec[i], gd = gpu.dec[i];
        const isNaN32 = (b: number) => (b & 0x7fffffff) > 0x7f800000;
        if (gd !== hd && !(isNaN32(gd) && isNaN32(hd))) {
          assert.fail(
            `${name}: decode of 0x${host[i].toString(16)}: gpu 0x${gd.toString(16)} host 0x${
              hd.toString(16)
            }`,
          );
        }
      }
    }
  });
}

Deno.test("WGSL fast paths of f32, bf16 and f16 agree with the generic ExMy codec", async () => {
  const rt = await getRuntime();
  for (const name of ["f32", "bf16", "f16"]) {
    const fast = wgslCodec(name), gen = wgslCodec(name, { generic: true });
    assert.notEqual(fast.encode, gen.encode);
    const x = inputs(name, 30_000);
    const src = wgslChunks(fast.chunks, gen.chunks) + `
@group(0) @binding(0) var<storage, read> xin: array<u32>;
@group(0) @binding(1) var<storage, read_write> bad: array<atomic<u32>>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * nwg.x) * 64u + li;
  if (i >= arrayLength(&xin)) { return; }
  let x = bitcast<f32>(xin[i]);
  let a = ${fast.encode}(x, 0u);
  let b = ${gen.encode}(x, 0u);
  let da = ${fast.decodeBits}(a);
  let db = ${gen.decodeBits}(a);
  let nan = (da & 0x7fffffffu) > 0x7f800000u && (db & 0x7fffffffu) > 0x7f800000u;
  if (a != b || (da != db && !nan)) { atomicAdd(&bad[0], 1u); }
}`;
    const k = rt.kernel(`fastpath ${name}`, src, {
      buffers: ["read", "read_write"],
      uniform: false,
    });
    const bx = rt.alloc(x.byteLength, { dtype: "f32", purpose: "scratch" });
    const bb = rt.alloc(4, { dtype: "u32", purpose: "scratch" });
    rt.write(bx, x);
    rt.write(bb, new Uint32Array([0]));
    rt.dispatch(k, [bx, bb], rt.grid(Math.ceil(x.length / 64)));
    const bad = new Uint32Array(await rt.read(bb))[0];
    rt.free(bx);
    rt.free(bb);
    assert.equal(
      bad,
      0,
      `${name}: ${bad} values differ between the fast path and the generic codec`,
    );
  }
});

Deno.test("the fast f16 decode gives the generic decode's bits for all 65536 codes", async () => {
  const rt = await getRuntime();
  const fast = wgslCodec("f16"), gen = wgslCodec("f16", { generic: true });
  assert.notEqual(fast.decodeBits, gen.decodeBits);
  const src = wgslChunks(fast.chunks, gen.chunks) + `
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let c = (wid.x + wid.y * nwg.x) * 64u + li;
  if (c >= 65536u) { return; }
  out[2u * c] = ${fast.decodeBits}(c);
  out[2u * c + 1u] = ${gen.decodeBits}(c);
}`;
  const k = rt.kernel("fastpath f16 decode", src, { buffers: ["read_write"], uniform: false });
  const b = rt.alloc(65536 * 8, { dtype: "u32", purpose: "scratch" });
  rt.dispatch(k, [b], rt.grid(65536 / 64));
  const got = new Uint32Array(await rt.read(b));
  rt.free(b);
  // and both against the host codec (its NaNs may carry other payloads)
  const host = new Uint32Array(dtype("f16").decode(new Uint32Array(65536).map((_, i) => i)).buffer);
  for (let c = 0; c < 65536; c++) {
    const [f, g] = [got[2 * c], got[2 * c + 1]];
    assert.equal(
      f,
      g,
      `code 0x${c.toString(16)}: fast 0x${f.toString(16)} generic 0x${g.toString(16)}`,
    );
    const nan = (f & 0x7fffffff) > 0x7f800000 && (host[c] & 0x7fffffff) > 0x7f800000;
    assert.ok(
      nan || f === host[c],
      `code 0x${c.toString(16)}: 0x${f.toString(16)} host 0x${host[c].toString(16)}`,
    );
  }
});
