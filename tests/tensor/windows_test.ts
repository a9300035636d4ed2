// Tensors larger than one storage binding (issue 14, item 1): the binding limit is lowered
// so that small tensors need several windows, and each op must give the host reference's
// values and the same codes, bit for bit, as with the adapter's own limit. Packed dtypes at
// odd sizes put partial words at the windows' edges.
import assert from "node:assert/strict";
import { DeviceError, type Tensor, tensor, tidy } from "../../mod.ts";
import { getRuntime, type Runtime } from "../../gpu/mod.ts";
import { roundTo, values } from "./_reference.ts";

const rt = await getRuntime();

/** Runs `fn` with the runtime's binding limit lowered to `bytes`, restoring it after. */
async function lowered<T>(bytes: number, fn: (rt: Runtime) => Promise<T> | T): Promise<T> {
  const before = rt.maxBindingBytes;
  rt.maxBindingBytes = bytes;
  try {
    return await fn(rt);
  } finally {
    rt.maxBindingBytes = before;
  }
}

/** `f()`'s codes with the binding limit lowered to `bytes`, and the kernels it recorded. */
async function windowed(
  bytes: number,
  f: () => Tensor,
): Promise<{ codes: Uint8Array | Uint16Array | Uint32Array; values: Float32Array; n: number }> {
  return await lowered(bytes, async () => {
    const d0 = rt.counters.dispatches;
    const t = tidy(f);
    t.realize();
    const n = rt.counters.dispatches - d0;
    const out = { codes: await t.codes(), values: await t.toArray() as Float32Array, n };
    t.dispose();
    return out;
  });
}

/** `f()`'s codes with the adapter's own binding limit. */
async function whole(f: () => Tensor): Promise<Uint8Array | Uint16Array | Uint32Array> {
  const t = tidy(f);
  const c = await t.codes();
  t.dispose();
  return c;
}

const LIMIT = 65536;

// ---- fusion --------------------------------------------------------------------------------

for (const dt of ["f32", "bf16", "e4m3"]) {
  Deno.test(`a fused chain over ${dt} windows equals the host chain and the whole run`, async () => {
    const n = 300_001; // 1.2 MB of f32, 300 KB of e4m3: many windows; partial last words
    const xv = values(dt, n, 11, -3, 3);
    const x = tensor(xv, { dtype: dt });
    const f = () => x.mul(2).add(1).relu();
    const got = await windowed(LIMIT, f);
    const bytes = Math.ceil(n / (4 / (dt === "f32" ? 4 : dt === "bf16" ? 2 : 1))) * 4;
    assert.ok(got.n >= Math.ceil(bytes / LIMIT), `${got.n} dispatches for ${bytes} bytes`);
    const r = (v: ArrayLike<number>) => roundTo(dt, Array.from(v, Math.fround));
    const want = r(r(r(Array.from(xv, (v) => 2 * v)).map((v) => v + 1)).map((v) => Math.max(v, 0)));
    assert.deepEqual(got.values, want);
    assert.deepEqual(got.codes, await whole(f));
    x.dispose();
  });
}

Deno.test("broadcast operands larger than one window are read through their windows", async () => {
  // w (120 KB of f32) is broadcast along rows; c along columns (one per row)
  const R = 4, C = 30 * 1024; // rows of whole workgroups (1,024 f32): none straddles two rows
  const xv = values("bf16", R * C, 3), wv = values("f32", C, 4), cv = values("e4m3", R, 5);
  const x = tensor(xv, { dtype: "bf16", shape: [R, C] });
  const w = tensor(wv, { shape: [C] });
  const c = tensor(cv, { dtype: "e4m3", shape: [R, 1] });
  const f = () => x.mul(w).add(c);
  const got = await windowed(LIMIT, f);
  const want = new Float32Array(R * C);
  for (let i = 0; i < R; i++) {
    for (let j = 0; j < C; j++) {
      want[i * C + j] = Math.fround(Math.fround(xv[i * C + j] * wv[j]) + cv[i]);
    }
  }
  assert.deepEqual(got.values, want);
  assert.deepEqual(got.codes, await whole(f));
  // stochastic rounding draws the same bits per element in every window
  const s = () => x.mul(w).cast("bf16", { rounding: "stochastic", seed: 77 });
  assert.deepEqual((await windowed(LIMIT, s)).codes, await whole(s));
  for (const t of [x, w, c]) t.dispose();
});

Deno.test("a broadcast operand that no window of one workgroup holds is a DeviceError", async () => {
  // rows of 20,000 f32: the workgroup across a row's end reads both ends of w (80 KB)
  const x = tensor(values("f32", 2 * 20_000, 6), { shape: [2, 20_000] });
  const w = tensor(values("f32", 20_000, 7), { shape: [20_000] });
  await lowered(LIMIT, () => {
    const y = x.add(w);
    assert.throws(
      () => y.realize(),
      (e: unknown) =>
        e instanceof DeviceError && /\[20000\] f32/.test(e.message) &&
        /65536 bytes/.test(e.message),
    );
    y.dispose();
  });
  x.dispose();
  w.dispose();
});
