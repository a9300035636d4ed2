// The memory budget (issue #18, item 4): ulp counts the bytes it hands out and refuses a
// request that would pass the budget with a DeviceError at the call, naming the request, the
// live bytes and the budget, instead of letting a software GPU take host memory until the
// process is killed. The default is half of the host's memory where Deno may read it
// (--allow-sys=systemMemoryInfo), else 4 GiB.
import assert from "node:assert/strict";
import {
  DEFAULT_MEMORY_LIMIT,
  DeviceError,
  getMemoryLimit,
  memory,
  ready,
  setMemoryLimit,
  type Tensor,
  tensor,
  ValueError,
  zeros,
} from "../../mod.ts";

const MiB = 2 ** 20;
await ready();

Deno.test("allocations past the budget are a catchable DeviceError naming the request, the live bytes and the budget", async () => {
  const keepme = tensor([1.5, -2, 3]);
  const live0 = memory().liveBytes;
  const budget = live0 + 8 * MiB + 1000;
  setMemoryLimit(budget);
  const made: Tensor[] = [];
  let refused: unknown = null;
  try {
    for (let i = 0; i < 100; i++) made.push(zeros([MiB / 4])); // 1 MiB each
  } catch (e) {
    refused = e;
  }
  try {
    // exactly as many as fit: 8 (the ninth would pass the budget by less than 1 MiB)
    assert.equal(made.length, 8);
    assert.ok(refused instanceof DeviceError, String(refused));
    assert.equal(
      (refused as Error).message,
      `alloc(): 1048576 bytes (f32, activations) would pass the memory budget: ` +
        `${live0 + 8 * MiB} bytes are live and the budget is ${budget} bytes (set by ` +
        `setMemoryLimit(${budget})). Free tensors you no longer need (dispose(), tidy()), use ` +
        `smaller batches or narrower dtypes, or set the budget with setMemoryLimit() ` +
        `(--memory-limit in the examples)`,
    );
    // nothing was lost or leaked by the refusal; freeing makes room again
    assert.equal(memory().liveBytes, live0 + 8 * MiB);
    assert.deepEqual(Array.from(await keepme.toArray()), [1.5, -2, 3]);
    for (const t of made.splice(0)) t.dispose();
    const again = zeros([MiB / 4]).add(2);
    assert.equal(await again.sum().item(), 2 * (MiB / 4));
    again.dispose();
    // the pool's cached buffers are released rather than held past the budget
    assert.ok(memory().allocatedBytes <= budget + MiB, `${memory().allocatedBytes} allocated`);
  } finally {
    for (const t of made) t.dispose();
    setMemoryLimit(null);
    keepme.dispose();
  }
});

Deno.test("the issue's case: many 128 MiB tensors stop at the budget with an error, not an OOM kill", () => {
  // the default budget, scaled down so that the test takes 512 MiB at most
  setMemoryLimit(512 * MiB);
  const made: Tensor[] = [];
  let err: unknown = null;
  try {
    for (let i = 0; i < 300; i++) made.push(zeros([32 * MiB])); // 128 MiB of f32
  } catch (e) {
    err = e;
  } finally {
    for (const t of made) t.dispose();
    setMemoryLimit(null);
  }
  assert.ok(err instanceof DeviceError);
  assert.equal(made.length, 3); // 3 x 128 MiB plus the live bytes of earlier tests < 512 MiB
  assert.match((err as Error).message, /134217728 bytes \(f32, activations\) would pass/);
});

Deno.test("setMemoryLimit() validates its argument; the default is documented and named", async () => {
  for (const bad of [0, -1, NaN, 1.5, Infinity]) {
    assert.throws(
      () => setMemoryLimit(bad),
      (e: unknown) =>
        e instanceof ValueError &&
        /setMemoryLimit\(\): bytes must be a positive integer \(or null for the default\)/.test(
          e.message,
        ),
    );
  }
  // this test runs without --allow-sys: the documented default
  assert.deepEqual(getMemoryLimit(), {
    bytes: DEFAULT_MEMORY_LIMIT,
    source: "the default of 4.0 GiB; with --allow-sys=systemMemoryInfo it is half of the " +
      "host's memory",
  });
  assert.equal(DEFAULT_MEMORY_LIMIT, 4 * 2 ** 30);
  // with the permission, half of what Deno.systemMemoryInfo() says (in a child process)
  const code = `import { getMemoryLimit } from "./gpu/pool.ts";
    console.log(JSON.stringify({ limit: getMemoryLimit(), total: Deno.systemMemoryInfo().total }));`;
  const out = await new Deno.Command("deno", {
    args: ["eval", "--allow-read=.", "--allow-sys=systemMemoryInfo", code],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const { limit, total } = JSON.parse(new TextDecoder().decode(out.stdout));
  assert.equal(limit.bytes, Math.floor(total / 2));
  assert.match(limit.source, /^half of the host's \d+\.\d GiB \(Deno\.systemMemoryInfo\)$/);
});
