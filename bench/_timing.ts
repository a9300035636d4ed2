/**
 * Timing for the benchmarks: contestants of one case are timed side by side, round robin
 * (ulp, then the peer, then ulp again...), so that the load of a shared, noisy machine falls
 * on all of them alike and their ratio means something even when absolute times drift.
 *
 * A repetition runs an op `inner` times and then waits for the GPU (`sync`), so GPU time is
 * included; `inner` is chosen per contestant so that a repetition lasts about `targetMs`
 * (from its fastest warm-up run after the first), which spreads the cost of the wait thinly
 * over fast ops: in Deno 2.9 on lavapipe a wait (`onSubmittedWorkDone`, `mapAsync`) resolves
 * 11.3 ms after it is asked for even with no work submitted (Deno polls the device), and it
 * is counted once per repetition for every contestant alike. The time of an op is the
 * median repetition divided by `inner`. Each contestant's warm-up ends with one
 * unmeasured repetition at its `inner` (its buffer pools grow to what `inner` ops in flight
 * need there).
 *
 * @module
 */

/** One side of a comparison: records an op (without waiting) and waits for the GPU. */
export interface Contestant {
  /** A short label ("ulp bf16", "tfjs"), for progress lines. */
  readonly label: string;
  /** Records (enqueues) one op; frees its outputs. Must not wait for the GPU. */
  readonly run: () => void;
  /** Waits until the GPU has finished everything recorded so far. */
  readonly sync: () => Promise<void>;
}

/** How much to measure. */
export interface TimingOptions {
  /**
   * Single runs before measuring (the first compiles pipelines; the fastest of the others
   * sets `inner`); 0 for contestants that are warm already, which then run `maxInner` ops
   * per repetition.
   */
  readonly warmup: number;
  /** Measured repetitions; the median is reported. */
  readonly reps: number;
  /** Wanted length of one repetition in ms (sets `inner`). */
  readonly targetMs: number;
  /** Upper bound of `inner`. */
  readonly maxInner: number;
}

/** What was measured of one contestant. */
export interface Timing {
  /** Median time of one op, ms. */
  readonly ms: number;
  /** Ops per repetition. */
  readonly inner: number;
  /** Every repetition's time per op, ms. */
  readonly samples: readonly number[];
}

/** The median of a non-empty list. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function once(c: Contestant, n: number): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) c.run();
  await c.sync();
  return performance.now() - t0;
}

/**
 * Times each contestant (median of `reps` repetitions after `warmup` single runs), round
 * robin. A contestant whose run throws is reported as `null` with the error in `errors`.
 */
export async function timeSideBySide(
  contestants: readonly Contestant[],
  o: TimingOptions,
  log: (msg: string) => void,
): Promise<{ timings: (Timing | null)[]; errors: (string | null)[] }> {
  const errors: (string | null)[] = contestants.map(() => null);
  const inner: number[] = contestants.map(() => 1);
  for (const [i, c] of contestants.entries()) {
    try {
      if (o.warmup === 0) {
        inner[i] = Math.max(1, o.maxInner); // already warm: no probe run
        continue;
      }
      // `inner` from the fastest warm-up run after the first (which compiles): a later one
      // may still pay a one-time cost (on lavapipe the second run after a 64 MB upload took
      // 55-62 ms in its submit against 22), and an `inner` set from it would leave the wait's
      // ~11 ms spread over too few ops, for that contestant only
      let fastest = Infinity;
      for (let w = 0; w < o.warmup; w++) {
        const t = await once(c, 1);
        if (w > 0 || o.warmup === 1) fastest = Math.min(fastest, t);
      }
      inner[i] = Math.max(
        1,
        Math.min(o.maxInner, Math.round(o.targetMs / Math.max(fastest, 0.01))),
      );
      // one repetition at `inner`, not measured: `inner` ops in flight before a wait need
      // as many outputs alive at once, and a library that pools its buffers (ulp, TF.js and
      // jax-js all do) grows its pool to that size here, not in the first measured repetition
      if (inner[i] > 1) await once(c, inner[i]);
    } catch (e) {
      errors[i] = (e as Error).message ?? String(e);
      log(`  ${c.label}: failed in warm-up: ${errors[i]}`);
    }
  }
  const samples: number[][] = contestants.map(() => []);
  for (let r = 0; r < o.reps; r++) {
    for (const [i, c] of contestants.entries()) {
      if (errors[i] !== null) continue;
      try {
        samples[i].push((await once(c, inner[i])) / inner[i]);
      } catch (e) {
        errors[i] = (e as Error).message ?? String(e);
        log(`  ${c.label}: failed: ${errors[i]}`);
      }
    }
  }
  const timings = contestants.map((_, i) =>
    errors[i] === null && samples[i].length > 0
      ? { ms: median(samples[i]), inner: inner[i], samples: samples[i] }
      : null
  );
  return { timings, errors };
}
