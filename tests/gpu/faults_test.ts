// Faults of the GPU (issue #9, item 3): out-of-memory becomes a catchable DeviceError that
// names the request and leaves the pool consistent; a lost device is reported, the next call
// runs on a new device, and tensors of the old one say they are gone.
//
// A real out-of-memory cannot be provoked safely on a shared machine (Mesa's drivers allocate
// lazily), so these tests inject the device's answers: an `out-of-memory` error scope that
// reports a GPUOutOfMemoryError, or a `createBuffer` that throws. A lost device is a
// `device.destroy()` that ulp did not ask for.
import assert from "node:assert/strict";
import { DeviceError, memory, ready, tensor } from "../../mod.ts";
import { currentRuntime, getRuntime, type Runtime } from "../../gpu/mod.ts";

/** Makes the device's next `popErrorScope()` report an out-of-memory error. */
function injectOutOfMemory(rt: Runtime): () => void {
  const dev = rt.device;
  const real = dev.popErrorScope.bind(dev);
  let armed = true;
  Object.defineProperty(dev, "popErrorScope", {
    configurable: true,
    value: async () => {
      const e = await real();
      if (!armed) return e;
      armed = false;
      return new GPUOutOfMemoryError("injected: not enough memory left");
    },
  });
  return () => delete (dev as unknown as Record<string, unknown>).popErrorScope;
}

/** Lets the device's promises (error scopes, lost) settle. */
const settle = () => new Promise((r) => setTimeout(r, 10));

Deno.test("an out-of-memory buffer becomes a DeviceError naming the request at the next call, and the pool stays consistent", async () => {
  const rt = await getRuntime();
  const before = tensor([1.5, 2.5, -3]); // nothing is lost: still readable afterwards
  // what earlier work left cached (the matmul check's products): no free buffer of the class
  // of the 123,457 bytes below
  rt.emptyCache();
  const scratch = rt.alloc(4096, { dtype: "u32", purpose: "scratch" });
  rt.free(scratch);
  rt.flush(); // scratch is now cached by the pool
  assert.ok(memory().pooledBytes > 0);
  const restore = injectOutOfMemory(rt);
  let failed;
  try {
    failed = rt.alloc(123_457, { dtype: "bf16", purpose: "activations" }); // a new size class
    await settle();
  } finally {
    restore();
  }
  const m = memory();
  assert.equal(m.pooledBytes, 0, "the pool gave its cached buffers back");
  assert.throws(
    () => rt.alloc(16, { dtype: "f32", purpose: "scratch" }),
    (e: unknown) =>
      e instanceof DeviceError &&
      /alloc: the GPU ran out of memory creating a \d+-byte buffer for 123457 bytes \(bf16, activations\)/
        .test(e.message) &&
      /dispose\(\), tidy\(\)/.test(e.message),
  );
  // reported once; the invalid buffer is destroyed when freed, never handed out again
  const allocated = memory().allocatedBytes;
  rt.free(failed);
  rt.flush();
  assert.equal(memory().allocatedBytes, allocated - failed.buffer.size);
  assert.equal(memory().pooledBytes, 0);
  const again = rt.alloc(123_457, { dtype: "bf16", purpose: "activations" });
  assert.notEqual(again.buffer, failed.buffer);
  rt.free(again);
  assert.deepEqual(Array.from(await before.add(1).toArray()), [2.5, 3.5, -2]);
  before.dispose();
});

Deno.test("a createBuffer that throws is retried once after the cache is released; twice is a DeviceError and nothing changes", async () => {
  const rt = await getRuntime();
  const dev = rt.device;
  const real = dev.createBuffer.bind(dev);
  let throws = 0;
  Object.defineProperty(dev, "createBuffer", {
    configurable: true,
    value: (d: GPUBufferDescriptor) => {
      if (throws > 0) {
        throws--;
        throw new RangeError("injected: allocation failed");
      }
      return real(d);
    },
  });
  try {
    const cached = rt.alloc(8192, { dtype: "u32", purpose: "scratch" });
    rt.free(cached);
    rt.flush();
    assert.ok(memory().pooledBytes >= 8192);
    throws = 1;
    const ok = rt.alloc(77_777, { dtype: "f32", purpose: "params" });
    assert.equal(memory().pooledBytes, 0, "the retry came after the cache was released");
    rt.free(ok);
    rt.flush();
    const m0 = memory();
    throws = 2;
    assert.throws(
      () => rt.alloc(99_999, { dtype: "e4m3", purpose: "optimizer" }),
      (e: unknown) =>
        e instanceof DeviceError &&
        /could not create a buffer for 99999 bytes \(e4m3, optimizer\).*injected/.test(e.message),
    );
    const m1 = memory();
    assert.deepEqual(
      [m1.liveBytes, m1.liveBuffers, m1.allocatedBytes],
      [m0.liveBytes, m0.liveBuffers, m0.allocatedBytes - m0.pooledBytes],
    );
  } finally {
    delete (dev as unknown as Record<string, unknown>).createBuffer;
  }
  const t = tensor([1, 2, 3]);
  assert.deepEqual(Array.from(await t.mul(2).toArray()), [2, 4, 6]);
  t.dispose();
});

Deno.test("a read whose staging buffer runs out of memory rejects with a DeviceError naming the read", async () => {
  const rt = await getRuntime();
  const t = tensor([1, 2, 3, 4]);
  const restore = injectOutOfMemory(rt);
  try {
    await assert.rejects(
      t.toArray(),
      (e: unknown) =>
        e instanceof DeviceError &&
        /read\(\): the GPU ran out of memory creating a 16-byte staging buffer/.test(e.message),
    );
  } finally {
    restore();
  }
  assert.deepEqual(Array.from(await t.toArray()), [1, 2, 3, 4]);
  t.dispose();
});

Deno.test("a lost device is reported once, the next call runs on a new device, and its old tensors throw a DeviceError", async () => {
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (...a: unknown[]) => warnings.push(a.join(" "));
  try {
    const old = tensor([1, 2, 3], { dtype: "bf16" });
    const rt = currentRuntime();
    let duringReacquire = "";
    rt.device.lost.then(() => { // runs after ulp's own handlers
      try {
        currentRuntime();
      } catch (e) {
        duringReacquire = (e as Error).message;
      }
    });
    rt.device.destroy(); // not through disposeDevice(): a fault
    for (let i = 0; i < 500 && !rt.lost; i++) await settle();
    assert.ok(rt.lost, "the runtime saw the loss");
    assert.match(
      duringReacquire,
      /the GPU device was lost or disposed \(destroyed: .*\).*being acquired: await ready\(\)/,
    );
    assert.equal(warnings.length, 1);
    assert.match(
      warnings[0],
      /the GPU device was lost \(destroyed: the device was destroyed outside ulp/,
    );
    assert.match(warnings[0], /Tensors made on it are gone/);

    await ready();
    const fresh = currentRuntime();
    assert.notEqual(fresh, rt);
    assert.equal(fresh.lost, false);
    const t = tensor([1, 2, 3], { dtype: "bf16" });
    assert.deepEqual(Array.from(await t.add(1).toArray()), [2, 3, 4]);
    assert.throws(
      () => old.add(1),
      (e: unknown) =>
        e instanceof DeviceError &&
        /add\(\): tensor of shape \[3\] and dtype bf16 lives on a GPU device that was lost or disposed \(destroyed/
          .test(e.message),
    );
    await assert.rejects(old.toArray(), DeviceError);
    assert.throws(() => t.add(old), DeviceError, "mixing devices is refused at the call");
    old.dispose(); // harmless
    t.dispose();
    assert.equal(warnings.length, 1, "reported once");
  } finally {
    console.warn = warn;
  }
});
