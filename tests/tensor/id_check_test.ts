// Out-of-range ids are an error (issue #18, item 5): crossEntropy's targets and Embedding's
// ids are checked on the device (a kernel cannot raise), and the next readback of any tensor
// throws a ValueError naming the op, the range and the bad ids; then the flag is clear and
// work goes on. Empty batches are a ValueError at the call. The checks cost no readback of
// their own and no extra dispatch in crossEntropy.
import assert from "node:assert/strict";
import {
  crossEntropy,
  Embedding,
  ready,
  type Tensor,
  tensor,
  tidy,
  ValueError,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";

await ready();
const rt = await getRuntime();

/** The host reference of the mean cross-entropy over the rows whose target is not `ign`. */
function reference(z: number[], C: number, t: number[], ign?: number): number {
  let sum = 0, n = 0;
  t.forEach((c, r) => {
    if (c === ign) return;
    const row = z.slice(r * C, r * C + C);
    const m = Math.max(...row);
    sum += m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0)) - row[c];
    n++;
  });
  return sum / n;
}

async function rejects(p: Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error) => {
    assert.ok(e instanceof ValueError, `${e.name}: ${e.message}`);
    assert.match(e.message, re);
    return true;
  });
}

const Z = [0.5, -1, 2, 0.25, 1, 3, 0, -2, 1.5, 0.5, -0.5, 1, 0, 2, -1];

Deno.test("a crossEntropy target outside [0, C) makes the next readback throw, naming the op and the ids", async () => {
  const z = tensor(Z, { shape: [3, 5] });
  const bad = tensor(new Int32Array([0, 7, -3]));
  const r0 = rt.counters.readbacks;
  const d0 = rt.counters.dispatches;
  const loss = crossEntropy(z, bad);
  assert.equal(rt.counters.dispatches - d0, 2, "no extra dispatch: the mean kernel checks");
  await rejects(
    loss.item(),
    /^crossEntropy\(\): a target outside \[0, 5\) reached the GPU since the last readback \(out-of-range ids from -3 to 7\); the kernel clamped them/,
  );
  assert.equal(rt.counters.readbacks - r0, 1, "the flag comes with the value: one readback");
  // the flag is clear again; good targets (and an ignored one) compute the reference loss
  const good = [4, 0, -100];
  const l2 = crossEntropy(z, tensor(Int32Array.from(good)), { ignoreIndex: -100 });
  assert.ok(Math.abs((await l2.item()) - reference(Z, 5, good, -100)) < 1e-5);
  // unsigned targets: 5 is out of range
  const l3 = crossEntropy(z, tensor(new Uint32Array([1, 5, 2]), { dtype: "u32" }));
  await rejects(l3.item(), /a target outside \[0, 5\) .*out-of-range ids 5\)/);
  for (const t of [z, bad, loss, l2, l3]) t.dispose();
});

Deno.test("an Embedding id outside [0, numEmbeddings) makes the next readback of any tensor throw", async () => {
  const emb = new Embedding(4, 3, { seed: 1 });
  const ids = tensor(new Int32Array([1, 10, 3]), { shape: [1, 3] });
  const out = emb.forward(ids);
  const other = tensor([1, 2]); // a readback of something else reports it too
  await rejects(other.toArray(), /^Embedding\.forward\(\): an id outside \[0, 4\) .*ids 10\)/);
  // once reported, reads work; good ids give the table's rows
  const table = Array.from(await emb.weight.toArray());
  const ok = tidy(() => emb.forward(tensor(new Int32Array([3, 0]))));
  assert.deepEqual(Array.from(await ok.toArray()), [...table.slice(9, 12), ...table.slice(0, 3)]);
  for (const t of [ids, out, other, ok, emb.weight]) t.dispose();
});

Deno.test("empty batches are a ValueError at the call", () => {
  const z = tensor(new Float32Array(0), { shape: [0, 5] });
  const t = tensor(new Int32Array(0));
  assert.throws(
    () => crossEntropy(z, t),
    (e: unknown) =>
      e instanceof ValueError &&
      /crossEntropy\(\): the batch is empty \(logits \[0,5\], targets \[0\]\)/.test(e.message),
  );
  const emb = new Embedding(4, 3);
  const none = tensor(new Int32Array(0), { shape: [0, 8] });
  assert.throws(
    () => emb.forward(none),
    /Embedding\.forward\(\): ids of shape \[0,8\] hold no ids \(an empty batch\)/,
  );
  for (const x of [z, t, none, emb.weight] as Tensor[]) x.dispose();
});
