// The kernel program builder: windows of buffers larger than one binding, grids larger than
// one dimension, uniforms by name, and the errors of what cannot be split.
import assert from "node:assert/strict";
import { dtype } from "../../dtypes/mod.ts";
import { DeviceError } from "../../errors.ts";
import {
  type BindingSpec,
  getRuntime,
  layoutOf,
  type PooledBuffer,
  type Program,
  program,
  type Runtime,
  setStaging,
  STAGE_WIDTH,
  stageable,
  type TextureSpec,
} from "../../gpu/mod.ts";
import { withBindingLimit } from "../_binding_limit.ts";
import { textureCopies } from "../_copies.ts";

const WG = 64;

/**
 * Runs a kernel of quads (WG invocations a workgroup, one quad each) from x into y over n
 * words, and checks that the small binding limit split it into at least ten windows.
 */
function runQuadsInWindows(
  rt: Runtime,
  p: Program,
  x: PooledBuffer,
  y: PooledBuffer,
  n: number,
): void {
  const per = WG * 4;
  const before = rt.counters.dispatches;
  p.run({
    buffers: { x, y },
    uniforms: { n },
    groups: Math.ceil(n / per),
    ranges: {
      x: (g0, g1) => [g0 * per, Math.min(n, g1 * per)],
      y: (g0, g1) => [g0 * per, Math.min(n, g1 * per)],
    },
  });
  assert.ok(rt.counters.dispatches - before >= 10);
}

/** Codes packed little-endian into u32 words, as tensors store them. */
function pack(codes: ArrayLike<number>, bits: number): Uint32Array {
  const lanes = 32 / Math.min(32, bits);
  const out = new Uint32Array(Math.ceil(codes.length / lanes));
  for (let i = 0; i < codes.length; i++) {
    out[Math.floor(i / lanes)] |= (codes[i] >>> 0) << ((i % lanes) * bits);
  }
  return out;
}

function unpack(words: Uint32Array, bits: number, n: number): number[] {
  const lanes = 32 / Math.min(32, bits);
  const mask = bits >= 32 ? 0xffffffff : (1 << bits) - 1;
  return Array.from(
    { length: n },
    (_, i) => ((words[Math.floor(i / lanes)] >>> ((i % lanes) * bits)) & mask) >>> 0,
  );
}

/** y = a * x + b over n elements of dtype `dt`, one word of y per invocation. */
function axpb(rt: Runtime, dt: string) {
  const l = layoutOf(dtype(dt), rt);
  return program(rt, "test|axpb", {
    label: "axpb",
    bindings: [
      { name: "x", type: l, access: "read" },
      { name: "y", type: l, access: "read_write" },
    ],
    uniforms: [{ name: "n", type: "u32" }, { name: "ab", type: "f32", length: 2 }],
    workgroupSize: WG,
  }, () => `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let w = wg * ${WG}u + li;
  var v = vec4<f32>(0.0);
  for (var l = 0u; l < ${l.lanes}u; l = l + 1u) {
    let i = w * ${l.lanes}u + l;
    if (i < u.n) { v[l] = u_ab(0u) * ld_x(i) + u_ab(1u); }
  }
  if (w * ${l.lanes}u < u.n) { st_y(w, v, vec4<u32>(0u)); }
}`);
}

for (const dt of ["f32", "bf16", "e4m3"]) {
  Deno.test(`a program binds windows of ${dt} buffers larger than one binding`, async () => {
    await withBindingLimit(4096, async (rt) => {
      const d = dtype(dt);
      const n = 10_000; // 40,000 bytes of f32: ten windows of 4 KiB
      const host = new Float32Array(n).map((_, i) => ((i * 37) % 101) / 8 - 6);
      const x = rt.alloc(Math.ceil(n / d.lanesPerWord) * 4, { dtype: dt, purpose: "scratch" });
      const y = rt.alloc(Math.ceil(n / d.lanesPerWord) * 4, { dtype: dt, purpose: "scratch" });
      rt.write(x, pack(d.encode(host), d.bits));
      const lanes = layoutOf(d, rt).lanes;
      const perGroup = WG * lanes; // elements one workgroup reads and writes
      const before = rt.counters.dispatches;
      axpb(rt, dt).run({
        buffers: { x, y },
        uniforms: { n, ab: [2, 1] },
        groups: Math.ceil(n / perGroup),
        ranges: {
          x: (g0, g1) => [g0 * perGroup, Math.min(n, g1 * perGroup)],
          y: (g0, g1) => [g0 * perGroup, Math.min(n, g1 * perGroup)],
        },
      });
      assert.ok(rt.counters.dispatches - before >= Math.ceil((n * d.bits) / 8 / 4096));
      const got = unpack(new Uint32Array(await rt.read(y)), d.bits, n);
      // the host twin: decode x, compute in f32, round once into the dtype
      const xs = d.decode(d.encode(host));
      const want = d.encode(xs.map((v) => Math.fround(Math.fround(2 * v) + 1)));
      assert.deepEqual(got, Array.from(want));
      rt.free(x);
      rt.free(y);
    });
  });
}

Deno.test("vec4 views: ld4_ and st4_ move four f32 elements at once, through windows", async () => {
  await withBindingLimit(4096, async (rt) => {
    const l = layoutOf(dtype("f32"), rt);
    const p = program(rt, "test|axpb4", {
      label: "axpb4",
      bindings: [
        { name: "x", type: l, access: "read", vec4: true },
        { name: "y", type: l, access: "read_write", vec4: true },
      ],
      uniforms: [{ name: "n", type: "u32" }, { name: "ab", type: "f32", length: 2 }],
      workgroupSize: WG,
    }, () => `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let q = wg * ${WG}u + li;
  if (q * 4u >= u.n) { return; }
  // an unaligned quad (read element by element) beside the aligned one
  let odd = ld4_x(select(q * 4u + 1u, q * 4u, q * 4u + 4u >= u.n), 4u);
  let v = u_ab(0u) * ld4_x(q * 4u, 4u) + u_ab(1u) + 0.0 * odd + ld_x(q * 4u) * 0.0;
  st4_y(q, v, vec4<u32>(0u));
}`);
    const n = 10_000; // 40,000 bytes: ten windows of 4 KiB
    const host = new Float32Array(n).map((_, i) => ((i * 37) % 101) / 8 - 6);
    const x = rt.alloc(n * 4, { dtype: "f32", purpose: "scratch" });
    const y = rt.alloc(n * 4, { dtype: "f32", purpose: "scratch" });
    rt.write(x, host);
    const per = WG * 4;
    const before = rt.counters.dispatches;
    p.run({
      buffers: { x, y },
      uniforms: { n, ab: [2, 1] },
      groups: Math.ceil(n / per),
      ranges: {
        x: (g0, g1) => [g0 * per, Math.min(n, g1 * per + 4)],
        y: (g0, g1) => [g0 * per, Math.min(n, g1 * per)],
      },
    });
    assert.ok(rt.counters.dispatches - before >= 10);
    const got = new Float32Array(await rt.read(y));
    assert.deepEqual(Array.from(got), Array.from(host, (v) => Math.fround(Math.fround(2 * v) + 1)));
    rt.free(x);
    rt.free(y);
  });
});

for (const name of ["f32", "i32"] as const) {
  Deno.test(`vec4 views: lq_ loads quad q of ${name} as one 16-byte load, through windows`, async () => {
    await withBindingLimit(4096, async (rt) => {
      const l = layoutOf(dtype(name), rt);
      const f = layoutOf(dtype("f32"), rt);
      const p = program(rt, `test|lq|${name}`, {
        label: "lq",
        bindings: [
          { name: "x", type: l, access: "read", vec4: true },
          { name: "y", type: f, access: "read_write", vec4: true },
        ],
        uniforms: [{ name: "n", type: "u32" }],
        workgroupSize: WG,
      }, () => `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let q = wg * ${WG}u + li;
  if (q * 4u >= u.n) { return; }
  st4_y(q, 2.0 * lq_x(q) - 1.0, vec4<u32>(0u));
}`);
      const n = 10_000; // 40,000 bytes: ten windows of 4 KiB
      const host = name === "f32"
        ? new Float32Array(n).map((_, i) => ((i * 37) % 101) / 8 - 6)
        : new Int32Array(n).map((_, i) => ((i * 37) % 101) - 50);
      const x = rt.alloc(n * 4, { dtype: name, purpose: "scratch" });
      const y = rt.alloc(n * 4, { dtype: "f32", purpose: "scratch" });
      rt.write(x, host);
      runQuadsInWindows(rt, p, x, y, n);
      const got = new Float32Array(await rt.read(y));
      assert.deepEqual(
        Array.from(got),
        Array.from(host, (v) => Math.fround(Math.fround(2 * v) - 1)),
      );
      rt.free(x);
      rt.free(y);
    });
  });
}

Deno.test("vec4 views: get4_ and put4_ move quads of raw words, through windows", async () => {
  await withBindingLimit(4096, async (rt) => {
    // bf16 buffers bound through the u32 layout (the builder does not check the dtype), as
    // the optimizers' quad kernel binds packed state: the words pass as they are
    const w = layoutOf(dtype("u32"), rt);
    const p = program(rt, "test|put4", {
      label: "put4",
      bindings: [
        { name: "x", type: w, access: "read", vec4: true },
        { name: "y", type: w, access: "read_write", vec4: true },
      ],
      uniforms: [{ name: "n", type: "u32" }],
      workgroupSize: WG,
    }, () => `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let q = wg * ${WG}u + li;
  if (q * 4u >= u.n) { return; }
  put4_y(q, get4_x(q).yzwx ^ vec4<u32>(q));
}`);
    const n = 10_000; // words: 40,000 bytes, ten windows of 4 KiB
    const host = new Uint32Array(n).map((_, i) => (Math.imul(i + 1, 2654435761) >>> 0));
    const x = rt.alloc(n * 4, { dtype: "bf16", purpose: "scratch" });
    const y = rt.alloc(n * 4, { dtype: "bf16", purpose: "scratch" });
    rt.write(x, host);
    runQuadsInWindows(rt, p, x, y, n);
    const got = new Uint32Array(await rt.read(y));
    // the host twin: word 4q + k of y is word 4q + (k + 1) % 4 of x, xor q
    const want = Array.from(host, (_, i) => {
      const q = Math.floor(i / 4);
      return (host[4 * q + ((i % 4) + 1) % 4] ^ q) >>> 0;
    });
    assert.deepEqual(Array.from(got), want);
    rt.free(x);
    rt.free(y);
  });
});

Deno.test("a 1-D grid beyond maxComputeWorkgroupsPerDimension folds into 2-D", async () => {
  const rt = await getRuntime();
  const maxG = rt.info.limits.maxComputeWorkgroupsPerDimension;
  const groups = maxG + 1000;
  const y = rt.alloc(groups * 4, { dtype: "u32", purpose: "scratch" });
  program(rt, "test|iota", {
    label: "iota",
    bindings: [{ name: "y", type: "u32", access: "read_write" }],
    workgroupSize: 1,
  }, () => "fn kernel(wg: u32, lid: vec3u, li: u32) { y[wg] = wg * 3u; }").run({
    buffers: { y },
    groups,
  });
  const got = new Uint32Array(await rt.read(y));
  for (const i of [0, 1, maxG - 1, maxG, maxG + 1, groups - 1]) assert.equal(got[i], i * 3);
  rt.free(y);
});

Deno.test("a 3-D program is split along its split dimension and its grid offsets", async () => {
  await withBindingLimit(1024, async (rt) => {
    // y[z][x] = z * 1000 + x for 8 x 200 u32 (6,400 bytes: unaligned windows along z)
    const X = 200, Z = 8;
    const y = rt.alloc(X * Z * 4, { dtype: "u32", purpose: "scratch" });
    const l = layoutOf(dtype("u32"), rt);
    program(rt, "test|3d", {
      label: "fill3d",
      bindings: [{ name: "y", type: l, access: "read_write" }],
      uniforms: [{ name: "nx", type: "u32" }],
      workgroupSize: 1,
      grid: "3d",
    }, () => `
fn kernel(wg: vec3u, lid: vec3u, li: u32) {
  put_y(wg.z * u.nx + wg.x, wg.z * 1000u + wg.x);
}`).run({
      buffers: { y },
      uniforms: { nx: X },
      groups: [X, 1, Z],
      splitDim: 2,
      ranges: { y: (_x0, _x1, lo, hi) => [lo[2] * X, hi[2] * X] },
    });
    const got = new Uint32Array(await rt.read(y));
    for (let z = 0; z < Z; z++) {
      for (const x of [0, 1, 63, 64, X - 1]) assert.equal(got[z * X + x], z * 1000 + x);
    }
    rt.free(y);
  });
});

Deno.test("a buffer too large for one binding, read whole, is a DeviceError naming it", async () => {
  await withBindingLimit(1024, (rt) => {
    const y = rt.alloc(4096, { dtype: "f32", purpose: "activations" });
    const p = axpb(rt, "f32");
    assert.throws(
      () => p.run({ buffers: { x: y, y }, uniforms: { n: 1024, ab: [1, 0] }, groups: 16 }),
      (e: unknown) =>
        e instanceof DeviceError && /'x' operand \(f32, activations\) holds 4096 bytes/.test(
          e.message,
        ) && /1024 bytes/.test(e.message),
    );
    rt.free(y);
  });
});

Deno.test("maxBindingBytes refuses values outside the adapter's range", async () => {
  const rt = await getRuntime();
  assert.throws(() => (rt.maxBindingBytes = 100), DeviceError);
  assert.throws(
    () => (rt.maxBindingBytes = rt.info.limits.maxStorageBufferBindingSize + 4),
    DeviceError,
  );
});

Deno.test("maxTextureSize bounds scratch textures and refuses values outside the adapter's range", async () => {
  const rt = await getRuntime();
  const max = rt.device.limits.maxTextureDimension2D;
  assert.equal(rt.maxTextureSize, max);
  assert.throws(() => (rt.maxTextureSize = 63), DeviceError);
  assert.throws(() => (rt.maxTextureSize = max + 1), /maxTextureDimension2D \(\d+\), got/);
  rt.maxTextureSize = 64;
  try {
    assert.equal(rt.scratchTexture("test.size", 65, 1), null, "wider than the size: none");
    assert.notEqual(rt.scratchTexture("test.size", 64, 64), null);
  } finally {
    rt.maxTextureSize = max;
  }
  assert.notEqual(rt.scratchTexture("test.size", 65, 1), null);
});

Deno.test("a run whose estimated work passes maxBatchCost is cut into several submissions", async () => {
  const rt = await getRuntime();
  const d = dtype("f32");
  const n = 64 * 64;
  const host = Float32Array.from({ length: n }, (_, i) => i - 100);
  const x = rt.alloc(n * 4, { dtype: "f32", purpose: "scratch" });
  const y = rt.alloc(n * 4, { dtype: "f32", purpose: "scratch" });
  rt.write(x, host);
  const before = rt.maxBatchCost;
  rt.flush();
  const d0 = rt.counters.dispatches, s0 = rt.counters.submits;
  rt.maxBatchCost = 1000;
  try {
    // 64 workgroups costing 100 each: at most 10 per submission
    axpb(rt, "f32").run({
      buffers: { x, y },
      uniforms: { n, ab: [3, -1] },
      groups: 64,
      cost: 6400,
    });
  } finally {
    rt.maxBatchCost = before;
  }
  rt.flush();
  assert.ok(rt.counters.dispatches - d0 >= 7, `${rt.counters.dispatches - d0} dispatches`);
  assert.ok(rt.counters.submits - s0 >= 7, `${rt.counters.submits - s0} submissions`);
  const got = new Float32Array(await rt.read(y));
  assert.deepEqual(Array.from(got), Array.from(d.decode(d.encode(host.map((v) => 3 * v - 1)))));
  rt.free(x);
  rt.free(y);
});

Deno.test("textures: ts_ writes rgba32float texels, tl_ reads them in the next dispatch", async () => {
  const rt = await getRuntime();
  const l = layoutOf(dtype("f32"), rt);
  const W = 5, H = 3; // 15 texels, 60 values
  // a program over a W x H grid of texels (one invocation each): `body` runs for texel (c, r)
  const texels = (name: string, binding: BindingSpec, texture: TextureSpec, body: string) =>
    program(rt, `test|${name}`, {
      label: name,
      bindings: [binding],
      uniforms: [{ name: "w", type: "u32" }],
      textures: [texture],
      workgroupSize: [8, 8],
      grid: "3d",
    }, () => `
fn kernel(wg: vec3u, lid: vec3u, li: u32) {
  let c = lid.x;
  let r = lid.y;
  if (c >= u.w || r >= ${H}u) { return; }
${body}
}`);
  const fill = texels(
    "texfill",
    { name: "x", type: l, access: "read" },
    { name: "t", access: "write" },
    "  ts_t(c, r, ld4_x((r * u.w + c) * 4u, 4u));",
  );
  // the transpose of the texels, read back through a second texture binding
  const read = texels(
    "texread",
    { name: "y", type: l, access: "read_write" },
    { name: "s", access: "read" },
    `  let v = tl_s(c, r);
  for (var j = 0u; j < 4u; j = j + 1u) { st_y((c * ${H}u + r) * 4u + j, vec4<f32>(v[j]), vec4<u32>(0u)); }`,
  );
  const host = Float32Array.from({ length: W * H * 4 }, (_, i) => i * 0.5 - 7);
  const x = rt.alloc(host.byteLength, { dtype: "f32", purpose: "scratch" });
  const y = rt.alloc(host.byteLength, { dtype: "f32", purpose: "scratch" });
  rt.write(x, host);
  const t = rt.scratchTexture("test", W, H)!;
  assert.equal(rt.scratchTexture("test", W, H), t, "the same texture for the same slot and size");
  fill.run({ buffers: { x }, uniforms: { w: W }, textures: { t }, groups: [1, 1, 1] });
  read.run({ buffers: { y }, uniforms: { w: W }, textures: { s: t }, groups: [1, 1, 1] });
  const got = new Float32Array(await rt.read(y));
  const want = new Float32Array(host.length);
  for (let r = 0; r < H; r++) {
    for (let c = 0; c < W; c++) {
      for (let j = 0; j < 4; j++) want[(c * H + r) * 4 + j] = host[(r * W + c) * 4 + j];
    }
  }
  assert.deepEqual(Array.from(got), Array.from(want));
  // past the adapter's texture size: null (the caller takes another path)
  const max = rt.device.limits.maxTextureDimension2D;
  assert.equal(rt.scratchTexture("test", max + 1, 1), null);
  assert.ok(rt.textureBytes >= W * H * 16);
  assert.throws(
    () => read.run({ buffers: { y }, uniforms: { w: W }, groups: [1, 1, 1] } as never),
    /texture 's' not given/,
  );
  rt.free(x);
  rt.free(y);
});

Deno.test("staged bindings: get4_ and lq_ read the buffer's words through a texture copy, also past one binding", async () => {
  await withBindingLimit(4096, async (rt) => {
    const w = layoutOf(dtype("u32"), rt), f = layoutOf(dtype("f32"), rt);
    // two full texture rows and a part; NaN and subnormal patterns among the words
    const quads = 2 * STAGE_WIDTH + 7, n = 4 * quads;
    const host = new Uint32Array(n).map((_, i) => Math.imul(i + 3, 2654435761) >>> 0);
    host.set([0x7fc00001, 0xffffffff, 0x7f800001, 0x00000001, 0x80000000, 0xff800000], 9);
    const x = rt.alloc(n * 4, { dtype: "u32", purpose: "scratch" });
    const y = rt.alloc(n * 4, { dtype: "u32", purpose: "scratch" });
    const z = rt.alloc(n * 4, { dtype: "f32", purpose: "scratch" });
    rt.write(x, host);
    const staged = stageable(rt, x, "x");
    // a CPU adapter stages (its device passed the check); elsewhere the check never ran
    assert.equal(staged, rt.info.isFallbackAdapter, "stageable on CPU adapters only");
    const copy = program(rt, "test|staged", {
      label: "staged",
      bindings: [
        { name: "x", type: w, access: "read", vec4: true, staged },
        { name: "y", type: w, access: "read_write", vec4: true },
      ],
      workgroupSize: WG,
    }, () => `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let q = wg * ${WG}u + li;
  if (q < ${quads}u) { put4_y(q, get4_x(q).yzwx ^ vec4<u32>(get_x(4u * q))); }
}`);
    const half = program(rt, "test|staged-lq", {
      label: "stagedlq",
      bindings: [
        { name: "x", type: f, access: "read", vec4: true, staged },
        { name: "z", type: f, access: "read_write", vec4: true },
      ],
      workgroupSize: WG,
    }, () => `
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let q = wg * ${WG}u + li;
  if (q < ${quads}u) { st4_z(q, lq_x(q) * 0.5, vec4<u32>(0u)); }
}`);
    const groups = Math.ceil(quads / WG);
    const ranges = (g0: number, g1: number) => [g0 * WG * 4, Math.min(n, g1 * WG * 4)] as const;
    const { copies } = await textureCopies(async () => {
      copy.run({ buffers: { x, y }, groups, ranges: { x: ranges, y: ranges } });
      half.run({ buffers: { x, z }, groups, ranges: { x: ranges, z: ranges } });
      await rt.sync();
    });
    // one copy of the full rows and one of the last part, per run
    assert.equal(copies, staged ? 4 : 0);
    const got = new Uint32Array(await rt.read(y));
    const want = Array.from(host, (_, i) => {
      const q = Math.floor(i / 4);
      return (host[4 * q + ((i % 4) + 1) % 4] ^ host[4 * q]) >>> 0;
    });
    assert.deepEqual(Array.from(got), want);
    // lq_ decodes the f32 words: halves, on the host in f32 (NaN stays NaN)
    const hf = new Float32Array(host.buffer);
    const gz = new Float32Array(await rt.read(z));
    for (let i = 0; i < n; i++) {
      const v = Math.fround(hf[i] * 0.5);
      assert.ok(Object.is(gz[i], v) || (Number.isNaN(v) && Number.isNaN(gz[i])), `element ${i}`);
    }
    // turned off: not stageable (programs then bind the buffer)
    const prev = setStaging("never");
    try {
      assert.equal(stageable(rt, x, "x"), false);
    } finally {
      setStaging(prev);
    }
    rt.free(x);
    rt.free(y);
    rt.free(z);
  });
});
