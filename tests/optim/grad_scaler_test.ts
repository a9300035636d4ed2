// GradScaler (optim/grad_scaler.ts) against a host re-implementation of PyTorch's algorithm
// (torch.amp.GradScaler, _amp_update_scale_) over scripted sequences of forced overflows.
import assert from "node:assert/strict";
import {
  AdamW,
  GradScaler,
  type GradScalerState,
  SGD,
  Tensor,
  tensor,
  tidy,
  ValueError,
} from "../../mod.ts";
import { getRuntime } from "../../gpu/mod.ts";
import { adamwF64, closeUlps, refState, stateCodes, ulp32, uniform } from "./_reference.ts";

/** A scaler's state with the scale and the tracker read back as numbers (copies freed). */
async function numbers(scaler: GradScaler): Promise<GradScalerState> {
  const sd = scaler.stateDict() as Record<string, unknown>;
  const out: Record<string, unknown> = { ...sd };
  for (const k of ["scale", "growthTracker"]) {
    const v = sd[k];
    if (v instanceof Tensor) {
      out[k] = await v.item();
      v.dispose();
    }
  }
  return out as unknown as GradScalerState;
}

const f = Math.fround;

/** PyTorch's GradScaler state update (torch._amp_update_scale_), on the host. */
class TorchScaler {
  scale: number;
  tracker = 0;
  constructor(
    init: number,
    readonly growth: number,
    readonly backoff: number,
    readonly interval: number,
  ) {
    this.scale = f(init);
  }
  update(foundInf: boolean): void {
    if (foundInf) {
      this.scale = f(this.scale * this.backoff);
      this.tracker = 0;
    } else {
      const successful = this.tracker + 1;
      if (successful === this.interval) {
        const grown = f(this.scale * this.growth);
        if (Number.isFinite(grown)) this.scale = grown;
        this.tracker = 0;
      } else {
        this.tracker = successful;
      }
    }
  }
}

/** Every stored number of an optimizer's state and its parameters, as raw bits. */
async function snapshot(ps: Tensor[], opt: AdamW | SGD): Promise<number[][]> {
  const out = await Promise.all(ps.map((p) => p.codes().then((c) => Array.from(c))));
  return [...out, ...await stateCodes(opt, false)];
}

// overflow at these steps: Inf at 3, NaN at 10, Inf at 11, then 16
const SCRIPT = [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0];
const SIZES = [37, 5];

Deno.test("GradScaler follows PyTorch's algorithm over forced overflows; skipped steps change nothing; no readback", async () => {
  const rt = await getRuntime();
  const opts = { initScale: 2 ** 10, growthFactor: 2, backoffFactor: 0.5, growthInterval: 3 };
  const scaler = new GradScaler(opts);
  const torch = new TorchScaler(2 ** 10, 2, 0.5, 3);
  const init = SIZES.map((n, i) => uniform(n, 30 + i));
  const ps = init.map((x) => tensor(x, { requiresGrad: true }));
  const hyper = { lr: 1e-2, betas: [0.9, 0.99] as [number, number], eps: 1e-8, weightDecay: 0.1 };
  const opt = new AdamW(ps, hyper);
  // the same AdamW stepped only on the clean steps, with its counts on the device too
  const qs = init.map((x) => tensor(x, { requiresGrad: true }));
  const ref = new AdamW(qs, hyper);
  const noInf = tensor(new Uint32Array(1), { dtype: "u32" });
  const f64 = init.map((x) => refState(x));
  let readbacks = 0, skipped = 0;
  for (let t = 0; t < SCRIPT.length; t++) {
    const cs = SIZES.map((n, i) => uniform(n, 1000 + 10 * t + i, -1, 1));
    if (SCRIPT[t]) cs[t % 2][t % SIZES[t % 2]] = t === 10 ? NaN : Infinity;
    const before = SCRIPT[t] ? await snapshot(ps, opt) : null;
    const r0 = rt.counters.readbacks;
    tidy(() => {
      // loss = sum_i <p_i, c_i>: gradients c_i * scale
      const loss = ps.map((p, i) => p.mul(tensor(cs[i])).sum()).reduce((a, b) => a.add(b));
      scaler.scale(loss).backward();
    });
    scaler.step(opt);
    scaler.update();
    opt.zeroGrad();
    readbacks += rt.counters.readbacks - r0;
    torch.update(SCRIPT[t] === 1);
    if (SCRIPT[t]) {
      skipped++;
      assert.deepEqual(
        await snapshot(ps, opt),
        before,
        `step ${t}: parameters and state unchanged`,
      );
    } else {
      qs.forEach((q, i) => (q.grad = tensor(cs[i])));
      ref.step({ foundInf: noInf });
      ref.zeroGrad();
      f64.forEach((s, i) => adamwF64(s, cs[i], hyper));
      assert.deepEqual(
        await snapshot(ps, opt),
        await snapshot(qs, ref),
        `step ${t}: as never skipped`,
      );
    }
    assert.deepEqual(await numbers(scaler), {
      scale: torch.scale,
      growthFactor: 2,
      backoffFactor: 0.5,
      growthInterval: 3,
      growthTracker: torch.tracker,
    }, `step ${t}`);
  }
  assert.equal(readbacks, 0, "scale, backward, step, update and zeroGrad read nothing back");
  assert.equal(skipped, 4);
  // the bias corrections counted only the 16 clean steps: PyTorch's AdamW over those
  const got = await Promise.all(ps.map((p) => p.toArray()));
  got.forEach((g, i) => closeUlps(`param ${i}`, g, f64[i].p, 16, ulp32, f64[i].scaleP));
  const step = opt.stateDict().state[0].step as Tensor;
  assert.equal(await step.item(), SCRIPT.length - skipped, "the device step count skipped too");
  assert.equal(f64[0].step, 16);
  opt.dispose();
  ref.dispose();
  scaler.dispose();
});

Deno.test("GradScaler's scale backs off on every overflow and grows after growthInterval clean steps, exactly", async () => {
  // a longer random script, a growth factor that is not a power of two, an interval of 2
  const scaler = new GradScaler({
    initScale: 3,
    growthFactor: 1.5,
    backoffFactor: 0.25,
    growthInterval: 2,
  });
  const torch = new TorchScaler(3, 1.5, 0.25, 2);
  const w = tensor([0.5, -0.25], { requiresGrad: true });
  const opt = new SGD([w], { lr: 0.125 });
  const flips = uniform(40, 77, 0, 1);
  const seen: string[] = [];
  for (let t = 0; t < flips.length; t++) {
    const inf = flips[t] < 0.3;
    w.grad = tensor(inf ? [1, -Infinity] : [1, 2]);
    scaler.step(opt);
    scaler.update();
    torch.update(inf);
    const sd = await numbers(scaler);
    assert.deepEqual([sd.scale, sd.growthTracker], [torch.scale, torch.tracker], `step ${t}`);
    seen.push(`${sd.scale}`);
  }
  assert.ok(new Set(seen).size > 5, "the scale moved both ways");
});

Deno.test("GradScaler does not grow the scale past f32's range", async () => {
  const scaler = new GradScaler({ initScale: 2 ** 127, growthInterval: 1 });
  const w = tensor([1], { requiresGrad: true });
  const opt = new SGD([w]);
  for (let i = 0; i < 2; i++) {
    w.grad = tensor([1]);
    scaler.step(opt);
    scaler.update();
  }
  assert.deepEqual(await numbers(scaler), {
    scale: 2 ** 127,
    growthFactor: 2,
    backoffFactor: 0.5,
    growthInterval: 1,
    growthTracker: 0,
  });
});

Deno.test("GradScaler.unscale() divides every gradient by the scale, bf16 and f32, and flags Inf/NaN", async () => {
  const scaler = new GradScaler({ initScale: 2 ** 12 });
  const a = tensor([1, 2, 3], { requiresGrad: true });
  const b = tensor([1, 2, 3, 4, 5], { requiresGrad: true });
  const opt = new SGD([a, b]);
  // mixed gradient dtypes: the optimizer casts; the scaler unscales each in its own dtype
  a.grad = tensor([4096, -8192, 1]);
  b.grad = tensor([4096, 2048, 1024, 512, 2 ** 20], { dtype: "bf16" });
  scaler.unscale(opt);
  assert.deepEqual(Array.from(await a.grad.toArray()), [1, -2, 2 ** -12]);
  assert.deepEqual(Array.from(await b.grad!.toArray()), [1, 0.5, 0.25, 0.125, 256]);
  assert.throws(() => scaler.unscale(opt), /unscale\(\) has already been called/);
  scaler.update();
  assert.equal(await scaler.getScale(), 2 ** 12, "no overflow, tracker 1 of 2000");
  // an f32 NaN hidden among ordinary values
  a.grad = tensor([1, NaN, 1]);
  b.grad = tensor([1, 1, 1, 1, 1], { dtype: "bf16" });
  scaler.step(opt);
  assert.throws(
    () => scaler.step(opt),
    /step\(\) has already been called since the last update\(\)/,
  );
  assert.throws(() => scaler.unscale(opt), /unscale\(\) is being called after step\(\)/);
  scaler.update();
  assert.equal(await scaler.getScale(), 2 ** 11);
  assert.throws(() => scaler.update(), /no inf checks were recorded prior to update/);
  opt.dispose();
});

Deno.test("GradScaler with two optimizers skips only the one that overflowed and backs off once", async () => {
  const scaler = new GradScaler({ initScale: 8 });
  const a = tensor([1], { requiresGrad: true }), b = tensor([1], { requiresGrad: true });
  const oa = new SGD([a], { lr: 0.5 }), ob = new SGD([b], { lr: 0.5 });
  a.grad = tensor([Infinity]);
  b.grad = tensor([8]);
  scaler.step(oa);
  scaler.step(ob);
  scaler.update();
  assert.deepEqual([await a.item(), await b.item()], [1, 0.5]);
  assert.equal(await scaler.getScale(), 4);
});

Deno.test("GradScaler has PyTorch's defaults, validates options, round-trips its state, and passes through when disabled", async () => {
  const s = new GradScaler();
  assert.deepEqual(await numbers(s), {
    scale: 65536,
    growthFactor: 2,
    backoffFactor: 0.5,
    growthInterval: 2000,
    growthTracker: 0,
  });
  assert.equal(s.isEnabled(), true);
  const w = tensor([1], { requiresGrad: true });
  const opt = new SGD([w], { lr: 1 });
  w.grad = tensor([65536]);
  s.step(opt);
  s.update();
  const sd = await numbers(s);
  assert.equal(sd.growthTracker, 1);
  const t = new GradScaler({ initScale: 1 });
  t.loadStateDict(sd); // numbers, as PyTorch's state dicts hold them
  assert.deepEqual(await numbers(t), sd);
  const dev = s.stateDict() as GradScalerState; // tensors, taken without waiting
  assert.ok(dev.scale instanceof Tensor && dev.growthTracker instanceof Tensor);
  const u = new GradScaler({ initScale: 8 });
  u.loadStateDict(dev);
  (dev.scale as Tensor).dispose();
  (dev.growthTracker as Tensor).dispose();
  assert.deepEqual(await numbers(u), sd);
  u.dispose();
  s.update(1024);
  assert.equal(await s.getScale(), 1024);
  s.update(tensor([512]));
  assert.equal(await s.getScale(), 512);
  assert.equal(await s.scale(tensor(3)).item(), 1536);
  assert.throws(() => new GradScaler({ growthFactor: 1 }), ValueError);
  assert.throws(
    () => new GradScaler({ backoffFactor: 1 }),
    /backoffFactor must be a number in \(0, 1\)/,
  );
  assert.throws(() => new GradScaler({ growthInterval: 0.5 }), /growthInterval/);
  assert.throws(() => new GradScaler({ initScale: -1 }), /initScale/);
  assert.throws(() => new GradScaler({ grow: 2 } as never), /unknown option 'grow'/);
  assert.throws(() => t.loadStateDict({}), /state dict is empty/);
  const off = new GradScaler({ enabled: false });
  const loss = tensor(2);
  assert.equal(off.scale(loss), loss);
  assert.equal(await off.getScale(), 1);
  assert.deepEqual(await numbers(off), {});
  w.grad = tensor([1]);
  off.step(opt);
  off.update();
  assert.equal(await w.item(), 1 - 1 - 1, "disabled: a plain step");
  opt.dispose();
});

Deno.test("an optimizer whose step counts live on the device saves and restores them (stateDict step tensors)", async () => {
  const scaler = new GradScaler({ initScale: 4 });
  const mk = () => tensor([0.5, -1, 2], { requiresGrad: true });
  const w = mk();
  const opt = new AdamW([w], { lr: 0.05 });
  for (const g of [[1, 2, 3], [Infinity, 0, 0], [3, 2, 1]]) {
    w.grad = tensor(g.map((x) => x * 4));
    scaler.step(opt);
    scaler.update();
  }
  const sd = opt.stateDict();
  const step = sd.state[0].step as Tensor;
  assert.deepEqual([step.dtype, await step.item()], ["f32", 2], "the skipped step is not counted");
  const w2 = mk();
  w2.copy_(w);
  const opt2 = new AdamW([w2], { lr: 0.05 });
  opt2.loadStateDict(sd);
  const flag = tensor(new Uint32Array(1), { dtype: "u32" });
  for (const [o, p] of [[opt, w], [opt2, w2]] as const) {
    p.grad = tensor([1, 1, 1]);
    o.step({ foundInf: flag });
  }
  assert.deepEqual(Array.from(await w2.codes()), Array.from(await w.codes()));
  assert.equal(await (opt2.stateDict().state[0].step as Tensor).item(), 3);
  // f16 gradients are refused, as PyTorch refuses them
  const h = tensor([1], { requiresGrad: true });
  const oh = new SGD([h]);
  h.grad = tensor([1], { dtype: "f16" });
  assert.throws(() => scaler.unscale(oh), /attempting to unscale f16 gradients/);
});

// ---- blow-ups are named (issue #18, item 3) --------------------------------------------------

Deno.test("GradScaler.status() counts skipped steps and names a blow-up: consecutive skips, or the scale below its floor", async () => {
  const w = tensor([1, 2], { requiresGrad: true });
  const opt = new SGD([w], { lr: 0.1 });
  const run = async (scaler: GradScaler, overflows: boolean[]) => {
    for (const bad of overflows) {
      w.grad = tensor(bad ? [Infinity, 1] : [0.5, 1]);
      scaler.step(opt);
      scaler.update();
      opt.zeroGrad();
    }
    return await scaler.status();
  };
  // a host model of the counters: consecutive resets on a clean step, the total never does
  const expected = (overflows: boolean[]) => {
    let run = 0, total = 0;
    for (const bad of overflows) [run, total] = bad ? [run + 1, total + 1] : [0, total];
    return [run, total];
  };
  const a = new GradScaler({ initScale: 2 ** 10, maxConsecutiveSkips: 4, minScale: 1 });
  assert.deepEqual(await a.status(), {
    scale: 1024,
    consecutiveSkips: 0,
    skippedSteps: 0,
    problem: null,
  });
  const seq = [true, true, false, true, true, true];
  let s = await run(a, seq);
  assert.deepEqual([s.consecutiveSkips, s.skippedSteps], expected(seq));
  assert.deepEqual([s.scale, s.problem], [1024 / 2 ** 5, null]); // 3 in a row: below 4
  s = await run(a, [true]);
  assert.deepEqual([s.consecutiveSkips, s.skippedSteps, s.scale], [4, 6, 16]);
  assert.equal(
    s.problem,
    "4 consecutive steps were skipped (Inf/NaN gradients; the scale backed off to 16)",
  );
  // the floor: the scale falls below minScale before 10 skips in a row
  const b = new GradScaler({ initScale: 4 });
  s = await run(b, [true, true, true]);
  assert.deepEqual([s.scale, s.consecutiveSkips], [0.5, 3]);
  assert.match(s.problem!, /^the loss scale fell to 0\.5, below minScale 1 /);
  // loading a state starts the counts afresh; a disabled scaler never reports
  b.loadStateDict({ ...(await numbers(b)), scale: 64 });
  assert.deepEqual(await b.status(), {
    scale: 64,
    consecutiveSkips: 0,
    skippedSteps: 0,
    problem: null,
  });
  const off = new GradScaler({ enabled: false });
  assert.deepEqual((await off.status()).problem, null);
  // the options are checked
  assert.throws(
    () => new GradScaler({ minScale: -1 }),
    /minScale must be a finite number >= 0, got -1/,
  );
  assert.throws(
    () => new GradScaler({ maxConsecutiveSkips: 0 }),
    /maxConsecutiveSkips must be a positive integer, got 0/,
  );
  const bState = await numbers(b);
  assert.throws(
    () => b.loadStateDict({ ...bState, growthTracker: 5000 }),
    /growthTracker must be an integer in \[0, growthInterval 2000\), got 5000/,
  );
  for (const t of [a, b, off]) t.dispose();
  opt.dispose();
  w.dispose();
});
