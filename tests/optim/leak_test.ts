// No leaks (issue #9, item 4): a small GPT trained under each precision strategy keeps its live
// GPU bytes exactly flat after the first steps; the pool settles (it keeps what the worst
// alignment of a step with the submits needs) and gets every freed buffer back; disposing the
// device destroys every buffer the pool ever created.
//
// The normal suite runs 300 steps per strategy (about 30 s per backend on this loaded 2-core
// machine); the full check runs 2,000 (about 3 minutes per backend here):
//   LEAK_STEPS=2000 deno test --allow-read=. --allow-write=./.test-tmp --allow-env=LEAK_STEPS \
//     tests/optim/leak_test.ts
import assert from "node:assert/strict";
import {
  AdamW,
  applyPrecision,
  autocast,
  disposeDevice,
  GPT,
  GradScaler,
  memory,
  precisionNames,
  precisionStrategy,
  type Tensor,
  tensor,
  tidy,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";

const STEPS = Deno.permissions.querySync({ name: "env", variable: "LEAK_STEPS" }).state ===
    "granted"
  ? Number(Deno.env.get("LEAK_STEPS") ?? 300)
  : 300;
const WARMUP = 10; // pools, casts and optimizer states settle in the first steps
const CFG = { vocabSize: 8, blockSize: 4, nLayer: 1, nHead: 1, nEmbd: 8, seed: 5 };

function batch(): [Tensor, Tensor] {
  const ids = Array.from({ length: 8 }, (_, i) => (i * 5 + 1) % CFG.vocabSize);
  return [
    tensor(new Int32Array(ids), { shape: [2, 4] }),
    tensor(new Int32Array(ids.map((v) => (v + 3) % CFG.vocabSize)), { shape: [2, 4] }),
  ];
}

/** Trains `steps` steps; returns live and allocated bytes before each step, and two losses. */
async function train(name: string, steps: number) {
  const s = precisionStrategy(name);
  const model = applyPrecision(new GPT(CFG), name);
  const params = model.parameters();
  const opt = new AdamW(params, { lr: 1e-2, weightDecay: 0.01, precision: name });
  const scaler = new GradScaler({ enabled: s.gradScaler, initScale: 2 ** 10 });
  const [idx, tgt] = batch();
  const live: number[] = [];
  const allocated: number[] = [];
  const losses: Tensor[] = [];
  for (let t = 0; t < steps; t++) {
    // sampled before the step: the loss kept from step 0 is in every sample, the last one in none
    live.push(memory().liveBytes);
    allocated.push(memory().allocatedBytes);
    const loss = tidy(() => {
      using _ = autocast({ dtype: s.autocast?.name ?? "f32", enabled: s.autocast !== null });
      const { loss } = model.forward(idx, tgt);
      scaler.scale(loss!).backward();
      return t === 0 || t === steps - 1 ? loss!.detach() : null;
    });
    if (loss) losses.push(loss);
    scaler.step(opt);
    scaler.update();
    opt.zeroGrad();
  }
  const [first, last] = await Promise.all(losses.map((l) => l.item()));
  for (const t of [...losses, idx, tgt, ...params]) t.dispose();
  opt.dispose();
  scaler.dispose();
  return { live, allocated, first, last };
}

// fp8-<recipe> stores what fp8 stores, and this test's autocast takes only the strategy's
// autocast dtype: they would run fp8's steps again
for (const name of precisionNames().filter((n) => !n.startsWith("fp8-"))) {
  Deno.test(`${STEPS} training steps under ${name} keep live GPU bytes flat and give every buffer back`, async () => {
    const rt = await getRuntime();
    await train(name, 1); // per-device constants made on first use (GradScaler's zero flag)
    rt.flush();
    rt.emptyCache();
    const before = memory();
    const { live, allocated, first, last } = await train(name, STEPS);
    const settled = live.slice(WARMUP);
    assert.equal(
      Math.max(...settled),
      Math.min(...settled),
      `live bytes after step ${WARMUP}: ${[...new Set(settled)].slice(0, 8)}...`,
    );
    assert.equal(live[live.length - 1], live[Math.min(100, live.length - 1)]);
    // the pool keeps what the worst alignment of a step with the submits needs (it settles
    // within a few hundred steps), never a growing amount
    const at100 = allocated[Math.min(100, allocated.length - 1)];
    const end = allocated[allocated.length - 1];
    assert.ok(end <= at100 * 1.1, `the pool grew from ${at100} bytes at step 100 to ${end}`);
    assert.ok(
      Number.isFinite(first) && Number.isFinite(last) && last < first,
      `${first} -> ${last}`,
    );
    // everything freed went back to the pool: nothing is stuck between release and reuse
    rt.flush();
    rt.emptyCache();
    const after = memory();
    assert.equal(after.liveBytes, before.liveBytes, "the model, optimizer and scaler free all");
    assert.equal(after.allocatedBytes, before.allocatedBytes, "buffers stuck outside the pool");
  });
}

Deno.test("disposeDevice() destroys every buffer the pool created and reports nothing reserved", async () => {
  await disposeDevice();
  const rt = await getRuntime();
  const created = new Set<GPUBuffer>();
  const destroyed = new Set<GPUBuffer>();
  const dev = rt.device;
  const real = dev.createBuffer.bind(dev);
  Object.defineProperty(dev, "createBuffer", {
    configurable: true,
    value: (d: GPUBufferDescriptor) => {
      const b = real(d);
      created.add(b);
      const destroy = b.destroy.bind(b);
      b.destroy = () => {
        destroyed.add(b);
        destroy();
      };
      return b;
    },
  });
  // live tensors, freed ones waiting in the pool, and readback staging buffers
  await train("amp-f16", 3);
  const kept = tensor([1, 2, 3]);
  const freed = kept.mul(2);
  assert.deepEqual(Array.from(await freed.toArray()), [2, 4, 6]);
  freed.dispose();
  const m = rt.memory();
  assert.ok(m.liveBytes > 0 && m.pooledBytes > 0 && m.allocatedBytes > m.pooledBytes);
  assert.ok(created.size > 10);
  await disposeDevice();
  const undestroyed = [...created].filter((b) => !destroyed.has(b));
  assert.deepEqual(undestroyed.map((b) => b.size), [], "buffers left alive after disposeDevice()");
  assert.deepEqual(
    [rt.memory().liveBytes, rt.memory().pooledBytes, rt.memory().allocatedBytes],
    [0, 0, 0],
  );
  assert.equal(memory().allocatedBytes, 0);
  await getRuntime(); // leave a device for the next tests
});

// ---- host memory (issue #18, item 4) ----------------------------------------------------------
// Host memory grew by 25-37 KB per training step: the runtime made a new bind group for almost
// every dispatch (73 per step of this tiny GPT), keyed by the allocation (new each step)
// instead of by the GPU buffer (which the pool reuses), and WebGPU's native objects are freed
// only when the JS garbage collector gets to their wrappers, which it does late: it does not
// see their native memory. Keyed by the GPU buffers, a step finds its bind groups again (none
// made after warm-up). The test trains 5,000 steps of a tiny GPT in a child process, reading
// the loss every step as a trainer does, each read awaited two steps later (35-40 s on lavapipe,
// 7 ms a step; awaited at once, Deno's wait of about 11 ms a read made it 88 s; RSS_STEPS sets
// another count), and checks the cause (bind groups made per step), the
// resident memory kept (sampled after a full collection: flat within a few MB after warm-up)
// and the GPU's live bytes (exactly flat).
const RSS_STEPS = Deno.permissions.querySync({ name: "env", variable: "RSS_STEPS" }).state ===
    "granted"
  ? Number(Deno.env.get("RSS_STEPS") ?? 5000)
  : 5000;

Deno.test(`${RSS_STEPS} training steps keep host memory flat after warm-up, and GPU live bytes exact`, async () => {
  const out = await new Deno.Command("deno", {
    args: [
      "run",
      "--v8-flags=--expose-gc",
      "--allow-read=.",
      "tests/optim/_rss_child.ts",
      String(RSS_STEPS),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const { samples, ms } = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    samples: { step: number; rss: number; heap: number; live: number; bindGroups: number }[];
    ms: number;
  };
  // the pool and the bind-group cache settle within about 500 steps
  const warm = Math.min(1000, Math.max(500, Math.floor(RSS_STEPS / 5)), RSS_STEPS - 300);
  const settled = samples.filter((s) => s.step >= warm);
  const n = settled.length;
  // the cause: a step makes no new bind groups once its buffers are the pool's (it made 73)
  const a = settled[0], b = settled[n - 1];
  const perStep = (b.bindGroups - a.bindGroups) / (b.step - a.step);
  // GPU: exactly flat
  assert.equal(new Set(settled.map((s) => s.live)).size, 1, "GPU live bytes after warm-up");
  // host: the least-squares slope of resident memory after warm-up, and its median early and
  // late (the old growth was 25-37 KB per step)
  const mx = settled.reduce((a, s) => a + s.step, 0) / n;
  const my = settled.reduce((a, s) => a + s.rss, 0) / n;
  const slope = settled.reduce((a, s) => a + (s.step - mx) * (s.rss - my), 0) /
    settled.reduce((a, s) => a + (s.step - mx) ** 2, 0);
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const half = Math.floor(n / 2);
  const early = median(settled.slice(0, half).map((s) => s.rss));
  const late = median(settled.slice(half).map((s) => s.rss));
  const mb = (x: number) => `${(x / 2 ** 20).toFixed(1)} MB`;
  const detail = `resident ${mb(early)} -> ${mb(late)} (slope ${(slope / 1024).toFixed(2)} ` +
    `KB/step), ${perStep.toFixed(2)} bind groups made per step, ${(ms / 1000).toFixed(0)} s`;
  console.log(`  ${detail}`);
  assert.ok(perStep < 1, `bind groups are made every step: ${detail}`);
  assert.ok(slope < 1.5 * 1024, `host memory grows: ${detail}`);
  assert.ok(late - early < 6 * 2 ** 20, `host memory grows: ${detail}`);
});
