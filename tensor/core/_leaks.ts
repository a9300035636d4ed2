// Memory that forgives: the safety net behind tidy / using / dispose (which stay the fast,
// deterministic path) and the warning for a training loop whose live buffers grow.
//
// - A FinalizationRegistry frees the GPU buffer of a tensor that became unreachable without
//   being disposed. It runs when V8's garbage collector does, which is driven by the JS heap,
//   not by GPU memory: an eventual release, never a replacement for ownership.
// - `noteStep()` (called by `Tensor.backward()`, once per training step) watches the number
//   of live buffers. When its minimum over blocks of steps rises block after block, the next
//   step records where each new tensor is made (a stack trace, only then), and one step later
//   one warning names the places whose tensors are still not freed. Private to tensor/.

import type { PooledBuffer, Runtime } from "../../gpu/mod.ts";

/** What the registry needs to free an unreachable tensor's storage (never the tensor). */
interface Held {
  rt: Runtime;
  buf: PooledBuffer;
}

/** What the registry has freed in this process: tensors nothing disposed, and their bytes. */
const netFreed = { tensors: 0, bytes: 0 };

const registry = new FinalizationRegistry<Held>(({ rt, buf }) => {
  netFreed.tensors++;
  netFreed.bytes += buf.bytes;
  if (rt.lost) return;
  rt.free(buf);
});

/**
 * How many tensors the safety net has freed in this process (each one unreachable and never
 * disposed: a leak that the collector caught), and their bytes. Code that owns its tensors
 * leaves this at zero after forced collections (`--v8-flags=--expose-gc`, `gc()`, then a turn of
 * the event loop for the registry's callbacks). For tests (tests/tensor/_unreachable.ts); not
 * exported from mod.ts.
 * @internal
 *
 * @example
 * ```ts
 * import { safetyNetFreed } from "./_leaks.ts";
 * const before = safetyNetFreed().tensors;
 * // ... run the code under test, gc(), await a timer ...
 * console.log(safetyNetFreed().tensors - before); // 0: nothing was left unreachable
 * ```
 */
export function safetyNetFreed(): { tensors: number; bytes: number } {
  return { ...netFreed };
}

/** Frees `buf` when `owner` becomes unreachable, unless `forget(owner)` is called first. */
export function watch(owner: object, rt: Runtime, buf: PooledBuffer): void {
  registry.register(owner, { rt, buf }, owner);
}

/** `owner` freed its storage itself (dispose): nothing left for the registry to do. */
export function forget(owner: object): void {
  registry.unregister(owner);
}

// ---- the warning -----------------------------------------------------------------------

/** Steps per block; the warning needs `BLOCKS` blocks whose minimum rises each time. */
const BLOCK = 10;
const BLOCKS = 4;
/** Growth (buffers) over those blocks below which nothing is said. */
const MIN_GROWTH = 40;
/** At most this many tensors have their place of birth recorded while diagnosing. */
const MAX_SITES = 20_000;

let enabled = true;
let warned = false;
let steps = 0;
let blockMin = Infinity;
const mins: number[] = [];
let capture: { ref: WeakRef<{ readonly disposed: boolean }>; site: string }[] | null = null;
let recording = false;
let captureStep = -1;
let growth = { from: 0, to: 0, steps: 0 };

/**
 * Turns off (or back on) the one warning ulp prints when a training loop's live GPU buffers
 * grow step after step (tensors made and not freed: see `tidy`); returns the previous
 * setting. The safety net that frees unreachable tensors stays on.
 *
 * @example
 * ```ts
 * import { setLeakWarning } from "../../mod.ts";
 * const was = setLeakWarning(false); // this script keeps tensors on purpose
 * console.log(was); // true
 * setLeakWarning(was);
 * ```
 */
export function setLeakWarning(on: boolean): boolean {
  const was = enabled;
  enabled = on;
  return was;
}

/** Records where `t` was made, while a growth is being diagnosed. */
export function noteBirth(t: { readonly disposed: boolean }): void {
  if (!recording || capture === null || capture.length >= MAX_SITES) return;
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 64; // deep enough to reach the user's frame below ulp's own
  const site = new Error().stack ?? "";
  Error.stackTraceLimit = limit;
  capture.push({ ref: new WeakRef(t), site });
}

/** The library's own folders: frames there are not where the user made a tensor. */
const LIB = ["tensor", "autograd", "nn", "optim", "gpu", "dtypes"].map((d) =>
  new URL(`../../${d}/`, import.meta.url).href
);

/** The first frame of a stack outside the library: the user's line that made the tensor. */
function userFrame(stack: string): string {
  for (const line of stack.split("\n").slice(1)) {
    const m = /\(?((?:file|https?|jsr|npm):[^\s()]+:\d+:\d+)\)?\s*$/.exec(line.trim());
    if (m && !LIB.some((l) => m[1].startsWith(l))) return m[1];
  }
  return "(inside ulp)";
}

/**
 * One training step ended (a `backward()` call) with `live` buffers alive. Warns once, with
 * `warn`, when live buffers grow block after block, naming where the surviving tensors of a
 * step were made.
 */
export function noteStep(live: number, warn: (msg: string) => void = console.warn): void {
  if (!enabled || warned) return;
  steps++;
  if (capture !== null) {
    if (steps < captureStep) return;
    if (steps === captureStep) {
      recording = false; // the births of one whole step are in; judge them a step later
      return;
    }
    // one step after the diagnosed one: who made the tensors that are still not freed?
    const bySite = new Map<string, number>();
    let count = 0;
    for (const { ref, site } of capture) {
      const t = ref.deref();
      if (t === undefined || t.disposed) continue;
      count++;
      const at = userFrame(site);
      bySite.set(at, (bySite.get(at) ?? 0) + 1);
    }
    capture = null;
    if (count === 0) return; // the growth stopped: nothing to report, keep watching
    warned = true;
    const top = [...bySite].sort((a, b) => b[1] - a[1]).slice(0, 3)
      .map(([at, n]) => `${n} made at ${at}`).join(", ");
    warn(
      `ulp: live GPU buffers grew from ${growth.from} to ${growth.to} over ${growth.steps} ` +
        `training steps (backward() calls): tensors are made and not freed. Of those made in ` +
        `one step, ${count} were still not freed a step later: ${top}. Wrap each step in ` +
        `tidy(() => ...), or free tensors with dispose() or \`using\`; unreachable tensors ` +
        `are freed only when the garbage collector runs. (setLeakWarning(false) silences this.)`,
    );
    return;
  }
  blockMin = Math.min(blockMin, live);
  if (steps % BLOCK !== 0) return;
  mins.push(blockMin);
  blockMin = Infinity;
  if (mins.length > BLOCKS) mins.shift();
  if (mins.length < BLOCKS) return;
  const rising = mins.every((m, i) => i === 0 || m > mins[i - 1]);
  if (rising && mins[BLOCKS - 1] - mins[0] >= MIN_GROWTH) {
    growth = { from: mins[0], to: mins[BLOCKS - 1], steps: BLOCK * (BLOCKS - 1) };
    capture = [];
    recording = true;
    captureStep = steps + 1; // record the births of the next step, judge them one step later
    mins.length = 0;
  }
}

/** Forgets what was seen (for tests). */
export function resetLeakWatch(): void {
  warned = false;
  steps = 0;
  blockMin = Infinity;
  mins.length = 0;
  capture = null;
  recording = false;
  captureStep = -1;
}
