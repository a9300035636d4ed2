/**
 * GPT-2 at scale (issue 14): one training step per precision strategy of a GPT-2-sized model
 * at batch 1 (`--batch` for more), on whatever adapter Deno finds: ms per step, tokens per
 * second, the live bytes after the step against the strategy's bytes per parameter, and the
 * peak bytes of the step (activations included); then, for one strategy, the peak at several
 * contexts (activation memory grows linearly: fused attention keeps no T x T buffer).
 *
 * Run: deno task bench:gpt2 [--model gpt2] [--context 64] [--batch 1] [--steps 2]
 *      [--strategies a,b] [--contexts 256,512,1024] [--json]
 * `deno task bench` runs a short version of it (GPT-2 small, context 64, one step after a warm-up).
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  AdamW,
  applyPrecision,
  autocast,
  GPT,
  GradScaler,
  memory,
  precisionNames,
  precisionStrategy,
  ready,
  type Tensor,
  tensor,
  tidy,
} from "../mod.ts";
import { getRuntime } from "../gpu/mod.ts";

/** One strategy's step at one shape. */
export interface Gpt2Row {
  model: string;
  strategy: string;
  params: number;
  context: number;
  /** Sequences per step. */
  batch: number;
  msPerStep: number;
  tokensPerS: number;
  /** Live bytes after the step (gradients kept), and per parameter. */
  liveMiB: number;
  bytesPerParam: number;
  /** Peak live bytes during the measured steps. */
  peakMiB: number;
  losses: number[];
}

const MiB = 2 ** 20;

/**
 * Trains `steps` steps (at least 1, after one warm-up step) of `model` under `strategy` at
 * batch `B` (default 1) and context `T`, and frees everything after.
 */
export async function gpt2Step(
  model: string,
  strategy: string,
  T: number,
  steps: number,
  B = 1,
): Promise<Gpt2Row> {
  if (!Number.isInteger(steps) || steps < 1) {
    throw new RangeError(`gpt2Step(): steps must be a positive integer, got ${steps}`);
  }
  const rt = await getRuntime();
  const s = precisionStrategy(strategy);
  const live0 = memory().liveBytes;
  const preset = GPT.config(model);
  const cfg = GPT.config(model, { blockSize: Math.max(T, preset.blockSize), seed: 1 });
  const net = applyPrecision(new GPT(cfg), strategy);
  const params = net.parameters();
  const n = params.reduce((a, p) => a + p.size, 0);
  const opt = new AdamW(params, { lr: 1e-4, precision: strategy });
  const scaler = new GradScaler({ enabled: s.gradScaler });
  // token i of row b (row b is the same sequence shifted by b tokens); targets one token on
  const ids = (shift: number) =>
    Int32Array.from(
      { length: B * T },
      (_, k) => (((k % T) + Math.floor(k / T) + shift) * 7919 + 13) % cfg.vocabSize,
    );
  const x = tensor(ids(0), { shape: [B, T] });
  const y = tensor(ids(1), { shape: [B, T] });
  const losses: number[] = [];
  let peak = 0;
  // Step 0 compiles and warms up, alone. The timed steps each read their loss, awaited after
  // the next step is recorded, as a trainer that logs every step without stalling does (a read
  // waits about 10 ms in Deno, which the next step's work then overlaps; the last step's wait
  // is counted): ms per step is the time from the first timed step's start to the last loss.
  let reading: { loss: Tensor; value: Promise<number> } | null = null;
  const finish = async (r: typeof reading) => {
    if (r === null) return;
    losses.push(await r.value);
    r.loss.dispose();
  };
  let t1 = 0;
  try {
    for (let t = 0; t <= steps; t++) {
      if (t <= 1) {
        await finish(reading);
        reading = null;
        await rt.sync();
        rt.resetPeak();
        t1 = performance.now();
      }
      opt.zeroGrad();
      const loss = tidy(() => {
        using _ = autocast(s.autocastOptions ?? { enabled: false });
        const { loss } = net.forward(x, y);
        scaler.scale(loss!).backward();
        return loss!.detach();
      });
      scaler.step(opt);
      scaler.update();
      const previous = reading;
      reading = { loss, value: loss.item() };
      await finish(previous);
      peak = Math.max(peak, memory().peakBytes - live0);
    }
    await finish(reading);
    const ms = (performance.now() - t1) / steps;
    const live = memory().liveBytes - live0;
    return {
      model,
      strategy,
      params: n,
      context: T,
      batch: B,
      msPerStep: Math.round(ms),
      tokensPerS: Math.round(((B * T) / ms) * 1000 * 10) / 10,
      liveMiB: Math.round((live / MiB) * 10) / 10,
      bytesPerParam: Math.round((live / n) * 100) / 100,
      peakMiB: Math.round((peak / MiB) * 10) / 10,
      losses: losses.map((l) => Math.round(l * 1e4) / 1e4),
    };
  } finally {
    opt.zeroGrad();
    for (const t of [x, y, ...params] as Tensor[]) t.dispose();
    opt.dispose?.();
    await rt.sync();
  }
}

/** The rows as a Markdown table. */
export function gpt2Table(rows: readonly Gpt2Row[]): string {
  const head = "| model | strategy | batch x context | ms/step | tokens/s | live MiB | " +
    "bytes/param | peak MiB | losses |\n|---|---|---|---|---|---|---|---|---|\n";
  return head +
    rows.map((r) =>
      `| ${r.model} (${
        (r.params / 1e6).toFixed(1)
      }M) | ${r.strategy} | ${r.batch} x ${r.context} | ` +
      `${r.msPerStep} | ${r.tokensPerS} | ${r.liveMiB} | ${r.bytesPerParam} | ${r.peakMiB} | ` +
      `${r.losses.map((l) => l.toFixed(3)).join(" -> ")} |`
    ).join("\n");
}

if (import.meta.main) {
  const { values: a } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string", default: "gpt2" },
      context: { type: "string", default: "64" },
      batch: { type: "string", default: "1" },
      steps: { type: "string", default: "2" },
      strategies: { type: "string" },
      contexts: { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  for (const k of ["context", "batch", "steps"] as const) {
    const v = Number(a[k]);
    if (!Number.isInteger(v) || v < 1) {
      console.error(`gpt2: --${k} must be a positive integer, got '${a[k]}'`);
      Deno.exit(2);
    }
  }
  const info = await ready();
  const strategies = a.strategies?.split(",") ?? precisionNames();
  const rows: Gpt2Row[] = [];
  // a strategy that cannot run at this size (a limit: DeviceError with the sizes) is reported
  // and the others still run
  const unavailable: { strategy: string; reason: string }[] = [];
  for (const s of strategies) {
    try {
      const row = await gpt2Step(a.model!, s, Number(a.context), Number(a.steps), Number(a.batch));
      rows.push(row);
      if (!a.json) console.log(JSON.stringify(row));
    } catch (e) {
      unavailable.push({ strategy: s, reason: (e as Error).message });
      console.error(`${s}: not run: ${(e as Error).message}`);
    }
  }
  const ctx: Gpt2Row[] = [];
  for (const T of a.contexts?.split(",").map(Number) ?? []) {
    const row = await gpt2Step(a.model!, strategies[0], T, 1, Number(a.batch));
    ctx.push(row);
    if (!a.json) console.log(JSON.stringify(row));
  }
  if (a.json) {
    console.log(JSON.stringify({ adapter: info.description, rows, contexts: ctx, unavailable }));
  } else {
    console.log(`\n${info.description}\n\n${gpt2Table([...rows, ...ctx])}`);
  }
}
