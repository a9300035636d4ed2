import assert from "node:assert/strict";
import {
  configureDevice,
  DeviceError,
  disposeDevice,
  memory,
  profile,
  resetDevice,
  SGD,
  sync,
  tensor,
  tidy,
} from "../../mod.ts";
import { currentRuntime, getRuntime, sizeClass } from "../../gpu/mod.ts";

const DOUBLE = `
@group(0) @binding(0) var<storage, read_write> x: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) { if (g.x < arrayLength(&x)) { x[g.x] = x[g.x] * 2u; } }`;

Deno.test("sizeClass() rounds up to four classes per power of two", () => {
  assert.equal(sizeClass(1), 16);
  assert.equal(sizeClass(17), 20);
  for (const n of [17, 100, 1000, 4097, 123_457, 10_000_000]) {
    const c = sizeClass(n);
    assert.ok(c >= n && c <= n * 1.25 + 4, `${n} -> ${c}`);
    assert.equal(c % 4, 0);
  }
});

Deno.test("the device is acquired once with the adapter's limits and features", async () => {
  const [a, b] = await Promise.all([getRuntime(), getRuntime()]);
  assert.equal(a, b);
  assert.equal(currentRuntime(), a);
  const lim = a.device.limits;
  assert.equal(a.info.limits.maxStorageBufferBindingSize, lim.maxStorageBufferBindingSize);
  assert.ok(
    lim.maxStorageBufferBindingSize >= 128 * 2 ** 20,
    "the adapter's own limit, not the 128 MiB default minimum only",
  );
  assert.equal(a.info.shaderF16, a.device.features.has("shader-f16"));
  assert.equal(a.info.f16Storage, a.info.shaderF16 ? "native" : "packed");
});

Deno.test("memory() counts live and peak bytes by dtype and purpose, and releases return them", async () => {
  const rt = await getRuntime();
  const m0 = memory();
  const a = rt.alloc(1000, { dtype: "bf16", purpose: "params" });
  const b = rt.alloc(24, { dtype: "f32", purpose: "grads" });
  const m1 = memory();
  assert.equal(m1.liveBytes - m0.liveBytes, 1024);
  assert.equal((m1.byDtype.bf16 ?? 0) - (m0.byDtype.bf16 ?? 0), 1000);
  assert.equal((m1.byPurpose.grads ?? 0) - (m0.byPurpose.grads ?? 0), 24);
  assert.ok(m1.peakBytes >= m1.liveBytes);
  rt.free(a);
  rt.free(b);
  rt.free(b); // twice is harmless
  const m2 = memory();
  assert.equal(m2.liveBytes, m0.liveBytes);
  assert.equal(m2.peakBytes, m1.peakBytes);
});

Deno.test("a released buffer is reused only after the submit that last used it", async () => {
  const rt = await getRuntime();
  const k = rt.kernel("double", DOUBLE, { buffers: ["read_write"], uniform: false });
  const a = rt.alloc(4096, { dtype: "u32", purpose: "scratch" });
  rt.write(a, new Uint32Array(1024).fill(3));
  rt.dispatch(k, [a], [16]);
  const gpuA = a.buffer;
  rt.free(a); // still used by the open batch
  const b = rt.alloc(4096, { dtype: "u32", purpose: "scratch" });
  assert.notEqual(b.buffer, gpuA, "reused a buffer that an unsubmitted command still uses");
  rt.flush();
  const c = rt.alloc(4096, { dtype: "u32", purpose: "scratch" });
  assert.equal(c.buffer, gpuA, "after the submit, the pool hands the buffer out again");
  rt.free(b);
  rt.free(c);
});

Deno.test("a write after recorded work on the same buffer lands after that work", async () => {
  const rt = await getRuntime();
  const k = rt.kernel("double", DOUBLE, { buffers: ["read_write"], uniform: false });
  const a = rt.alloc(16, { dtype: "u32", purpose: "scratch" });
  rt.write(a, new Uint32Array([1, 2, 3, 4]));
  rt.dispatch(k, [a], [1]);
  rt.write(a, new Uint32Array([10, 20]), 8); // must not be overtaken by the dispatch
  rt.dispatch(k, [a], [1]);
  assert.deepEqual(Array.from(new Uint32Array(await rt.read(a))), [4, 8, 20, 40]);
  rt.free(a);
});

Deno.test("a read gives the values its buffer had when it was asked for, not those of later writes", async () => {
  const rt = await getRuntime();
  const k = rt.kernel("double", DOUBLE, { buffers: ["read_write"], uniform: false });
  const a = rt.alloc(16, { dtype: "u32", purpose: "scratch" });
  const b = rt.alloc(16, { dtype: "u32", purpose: "scratch" });
  rt.write(a, new Uint32Array([1, 2, 3, 4]));
  rt.write(b, new Uint32Array([9, 9, 9, 9]));
  const u32 = async (p: Promise<ArrayBuffer>) => Array.from(new Uint32Array(await p));
  // all in one task, each read before a command that writes the buffer
  const beforeDispatch = u32(rt.read(a));
  rt.dispatch(k, [a], [1]);
  const beforeWrite = u32(rt.read(a));
  rt.write(a, new Uint32Array([7, 7, 7, 7]));
  const beforeCopy = u32(rt.read(a));
  rt.copy(b, 0, a, 0, 16);
  const after = u32(rt.read(a));
  assert.deepEqual(
    await Promise.all([beforeDispatch, beforeWrite, beforeCopy, after]),
    [[1, 2, 3, 4], [2, 4, 6, 8], [7, 7, 7, 7], [9, 9, 9, 9]],
  );
  // a buffer freed after a read and handed out again (after a submit) is written only after
  // the read's copy
  const c = rt.alloc(16, { dtype: "u32", purpose: "scratch" });
  rt.write(c, new Uint32Array([5, 6, 7, 8]));
  const kept = u32(rt.read(c));
  rt.free(c);
  const e = rt.alloc(16, { dtype: "u32", purpose: "scratch" });
  rt.dispatch(k, [e], [1]); // a batch to submit
  rt.flush();
  const d = rt.alloc(16, { dtype: "u32", purpose: "scratch" });
  assert.equal(d.buffer, c.buffer, "the pool hands the buffer out again");
  rt.write(d, new Uint32Array([0, 0, 0, 0]));
  assert.deepEqual(await kept, [5, 6, 7, 8]);
  // through the library: the weights read before an optimizer step are the weights before it
  const p = tensor([1, 2, 3], { requiresGrad: true });
  p.grad = tensor([1, 1, 1]);
  const opt = new SGD([p], { lr: 0.5 });
  const w = p.toArray();
  opt.step();
  assert.deepEqual(Array.from(await w), [1, 2, 3]);
  assert.deepEqual(Array.from(await p.toArray()), [0.5, 1.5, 2.5]);
  // a kernel that only reads a buffer leaves the task's reads to share one mapAsync
  const readbacks = rt.counters.readbacks;
  const r1 = rt.read(a);
  const addOne = rt.kernel(
    "add one",
    `
@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;
@compute @workgroup_size(4)
fn main(@builtin(global_invocation_id) g: vec3u) { y[g.x] = x[g.x] + 1u; }`,
    {
      buffers: ["read", "read_write"],
      uniform: false,
    },
  );
  rt.dispatch(addOne, [a, b], [1]);
  const r2 = rt.read(b);
  assert.deepEqual([await u32(r1), await u32(r2)], [[9, 9, 9, 9], [10, 10, 10, 10]]);
  assert.equal(rt.counters.readbacks, readbacks + 1);
  opt.zeroGrad();
  p.dispose();
  for (const x of [a, b, d, e]) rt.free(x);
});

Deno.test("pipelines are cached by WGSL source and dispatches batch into few submits", async () => {
  const rt = await getRuntime();
  const k1 = rt.kernel("double", DOUBLE, { buffers: ["read_write"], uniform: false });
  const compiles = rt.counters.compiles;
  const k2 = rt.kernel("double again", DOUBLE, { buffers: ["read_write"], uniform: false });
  assert.equal(k1, k2);
  assert.equal(rt.counters.compiles, compiles);
  const inc = rt.kernel("increment", DOUBLE.replace("x[g.x] * 2u", "x[g.x] + 1u"), {
    buffers: ["read_write"],
    uniform: false,
  });
  const a = rt.alloc(4, { dtype: "u32", purpose: "scratch" });
  rt.write(a, new Uint32Array([1]));
  rt.flush();
  const submits = rt.counters.submits;
  const n = rt.maxBatch + 10;
  for (let i = 0; i < 20; i++) rt.dispatch(inc, [a], [1]);
  assert.equal(rt.counters.submits, submits, "dispatches wait in the open batch");
  for (let i = 20; i < n; i++) rt.dispatch(inc, [a], [1]);
  assert.equal(rt.counters.submits, submits + 1, "the batch is submitted at the cap");
  const readbacks = rt.counters.readbacks;
  const v = new Uint32Array(await rt.read(a))[0];
  assert.equal(v, 1 + n, "every dispatch ran, in order");
  assert.equal(rt.counters.readbacks, readbacks + 1);
  rt.free(a);
});

Deno.test("a profile stamps every dispatch across batches, in order; the work is the same", async () => {
  const rt = await getRuntime();
  if (!rt.info.timestampQuery) return; // the adapter cannot stamp passes
  const inc = rt.kernel("increment", DOUBLE.replace("x[g.x] * 2u", "x[g.x] + 1u"), {
    buffers: ["read_write"],
    uniform: false,
  });
  const dbl = rt.kernel("double", DOUBLE, { buffers: ["read_write"], uniform: false });
  const a = rt.alloc(4, { dtype: "u32", purpose: "scratch" });
  rt.write(a, new Uint32Array([1]));
  rt.dispatch(inc, [a], [1]); // before the profile: not in it
  rt.startProfile();
  const n = rt.maxBatch + 5; // past one batch: two submits
  const labels: string[] = [];
  for (let i = 0; i < n; i++) {
    const k = i % 3 === 0 ? dbl : inc;
    rt.dispatch(k, [a], [1]);
    labels.push(k.label);
  }
  const times = await rt.stopProfile();
  rt.dispatch(inc, [a], [1]); // after it: not in it either
  let want = 2; // the host's replay of the same dispatches
  for (const l of labels) want = (l === "double" ? want * 2 : want + 1) >>> 0; // u32 wraps
  assert.equal(new Uint32Array(await rt.read(a))[0], (want + 1) >>> 0);
  assert.deepEqual(times.map((t) => t.label), labels);
  for (const [i, t] of times.entries()) {
    assert.ok(t.end >= t.start, `dispatch ${i}: end ${t.end} before start ${t.start}`);
    if (i > 0) assert.ok(t.start >= times[i - 1].start, `dispatch ${i} started before ${i - 1}`);
    assert.deepEqual(t.groups, [1, 1, 1]);
  }
  assert.deepEqual(await rt.stopProfile(), [], "no profile is open");
  rt.free(a);
});

Deno.test("profile() sums each label's stamped dispatches; an error inside ends the profile", async () => {
  const rt = await getRuntime();
  const x = tensor(Float32Array.from({ length: 32 * 32 }, (_, i) => (i % 7) - 3), {
    shape: [32, 32],
  });
  await sync();
  if (!rt.info.timestampQuery) {
    await assert.rejects(() => profile(() => {}), (e) => e instanceof DeviceError);
    x.dispose();
    return;
  }
  const d0 = rt.counters.dispatches;
  const p = await profile(() => {
    for (let i = 0; i < 3; i++) tidy(() => x.matmul(x).softmax(-1).realize()).dispose();
  });
  // the runtime's own count of what was recorded meanwhile
  assert.equal(p.dispatches.length, rt.counters.dispatches - d0);
  const counts = new Map<string, number>();
  for (const d of p.dispatches) counts.set(d.label, (counts.get(d.label) ?? 0) + 1);
  assert.deepEqual(new Map(p.byLabel.map((e) => [e.label, e.count])), counts);
  const sumNs = p.dispatches.reduce((t, d) => t + (d.end - d.start), 0);
  assert.ok(Math.abs(p.totalMs - sumNs / 1e6) <= 1e-9 * Math.max(1, p.totalMs));
  assert.ok(Math.abs(p.byLabel.reduce((t, e) => t + e.share, 0) - 1) < 1e-9 || p.totalMs === 0);
  for (let i = 1; i < p.byLabel.length; i++) assert.ok(p.byLabel[i - 1].ms >= p.byLabel[i].ms);
  // three products and three softmaxes: each op's count a multiple of 3
  for (const e of p.byLabel) assert.equal(e.count % 3, 0, `${e.label}: ${e.count}`);
  // a throwing fn: the error passes through and no profile stays open
  await assert.rejects(
    () =>
      profile(() => {
        throw new RangeError("boom");
      }),
    RangeError,
  );
  assert.deepEqual(await rt.stopProfile(), []);
  x.dispose();
});

Deno.test("copyToTexture() names the sizes of a copy that WebGPU would refuse", async () => {
  const rt = await getRuntime();
  const src = rt.alloc(2 * 256, { dtype: "f32", purpose: "scratch" });
  const tex = rt.scratchTexture("test.copy", 16, 2);
  assert.ok(tex, "a 16 x 2 scratch texture fits any adapter");
  rt.copyToTexture(src, 0, 256, tex, 16, 2); // rows of 256 bytes: fine
  rt.copyToTexture(src, 0, 100, tex, 0, 2); // nothing to copy: no check, no command
  const bad: [number, number, number, number, RegExp][] = [
    [0, 100, 4, 2, /100 bytes a row.*multiple of 256/], // bytesPerRow not a multiple of 256
    [0, 256, 17, 1, /17 x 1 texels.*16 x 2 texture/], // wider than the texture (and the row)
    [8, 256, 1, 1, /from byte 8/], // offset not on a texel
    [0, 256, 16, 3, /16 x 3 texels/], // a third row past both buffer and texture
  ];
  for (const [offset, bpr, w, h, msg] of bad) {
    assert.throws(
      () => rt.copyToTexture(src, offset, bpr, tex, w, h),
      (e: unknown) => e instanceof DeviceError && msg.test(e.message),
      `offset ${offset}, ${bpr} bytes a row, ${w} x ${h}`,
    );
  }
  await rt.sync();
  rt.free(src);
});

Deno.test("reads of several buffers in one task share one mapAsync, at any byte offset", async () => {
  const rt = await getRuntime();
  const bufs = [1, 2, 3].map((k) => {
    const b = rt.alloc(12, { dtype: "u8", purpose: "scratch" });
    rt.write(b, Uint8Array.from({ length: 12 }, (_, i) => k * 16 + i));
    return b;
  });
  const before = rt.counters.readbacks;
  const [r0, r1, r2] = await Promise.all([
    rt.read(bufs[0], 1, 5),
    rt.read(bufs[1], 4, 4),
    rt.read(bufs[2], 7, 5),
  ]);
  assert.equal(rt.counters.readbacks, before + 1);
  assert.deepEqual(Array.from(new Uint8Array(r0)), [17, 18, 19, 20, 21]);
  assert.deepEqual(Array.from(new Uint8Array(r1)), [36, 37, 38, 39]);
  assert.deepEqual(Array.from(new Uint8Array(r2)), [55, 56, 57, 58, 59]);
  for (const b of bufs) rt.free(b);
});

Deno.test("allocations beyond maxBufferSize throw a DeviceError naming the limit; beyond one binding they work", async () => {
  const rt = await getRuntime();
  const { maxBufferSize, maxStorageBufferBindingSize } = rt.info.limits;
  assert.throws(
    () => rt.alloc(maxBufferSize + 4, { dtype: "f32", purpose: "activations" }),
    (e: unknown) =>
      e instanceof DeviceError && /maxBufferSize/.test(e.message) &&
      e.message.includes(String(maxBufferSize)) && e.message.includes("f32, activations"),
  );
  assert.throws(() => rt.alloc(-1, { dtype: "f32", purpose: "activations" }), DeviceError);
  if (maxBufferSize > maxStorageBufferBindingSize) {
    const big = rt.alloc(maxStorageBufferBindingSize + 4, { dtype: "f32", purpose: "scratch" });
    assert.equal(big.bytes, maxStorageBufferBindingSize + 4);
    rt.free(big);
    rt.emptyCache();
  }
});

Deno.test("grid() folds large 1-D launches into two dimensions within the limit", async () => {
  const rt = await getRuntime();
  const max = rt.info.limits.maxComputeWorkgroupsPerDimension;
  assert.deepEqual(rt.grid(10), [10, 1]);
  const [x, y] = rt.grid(max * 3 + 1);
  assert.ok(x <= max && y <= max && x * y >= max * 3 + 1);
});

Deno.test("disposing the device destroys every pooled buffer; the next use acquires a new one", async () => {
  const rt = await getRuntime();
  rt.alloc(256, { dtype: "f32", purpose: "params" });
  await disposeDevice();
  assert.ok(rt.lost);
  assert.equal(rt.memory().liveBytes, 0);
  assert.equal(rt.memory().allocatedBytes, 0);
  assert.throws(() => rt.alloc(4, { dtype: "f32", purpose: "params" }), DeviceError);
  const fresh = await getRuntime();
  assert.notEqual(fresh, rt);
  assert.equal(memory().liveBytes, 0);
});

Deno.test("f16: 'packed' turns native f16 off; 'native' without the feature says what to do", async () => {
  try {
    configureDevice({ f16: "packed" });
    await resetDevice();
    const rt = await getRuntime();
    assert.equal(rt.info.f16Storage, "packed");
    assert.equal(rt.device.features.has("shader-f16"), false);
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter!.features.has("shader-f16")) {
      configureDevice({ f16: "native" });
      await assert.rejects(
        resetDevice(),
        (e: unknown) => e instanceof DeviceError && /shader-f16/.test(e.message),
      );
    }
  } finally {
    configureDevice({});
    await resetDevice();
  }
});

Deno.test("without an adapter, the DeviceError says how to get one", async () => {
  const gpu = navigator.gpu;
  const original = gpu.requestAdapter;
  try {
    (gpu as { requestAdapter: unknown }).requestAdapter = () => Promise.resolve(null);
    await disposeDevice();
    await assert.rejects(
      getRuntime(),
      (e: unknown) => e instanceof DeviceError && /mesa-vulkan-drivers/.test(e.message),
    );
    assert.throws(
      () => currentRuntime(),
      (e: unknown) => e instanceof DeviceError && /mesa-vulkan-drivers/.test(e.message),
    );
  } finally {
    (gpu as { requestAdapter: unknown }).requestAdapter = original;
  }
  const rt = await getRuntime();
  assert.equal(rt.lost, false);
});
