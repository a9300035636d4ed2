// Progress and logs of the training examples: a live line on a terminal (plain periodic
// lines otherwise) and a JSONL log with one object per step and per evaluation.

/** Options of `Progress`. */
export interface ProgressOptions {
  /** The last step of the run. */
  total: number;
  /** Shown before the step (the strategy, in the demo). */
  label?: string;
  /** One live line rewritten in place (default: whether stdout is a terminal). */
  live?: boolean;
  /** Without a live line, print every N steps (and the first and last). */
  every?: number;
  /** Where the text goes (default: stdout). */
  write?: (text: string) => void;
}

const encoder = new TextEncoder();

/** The step, loss, tokens/s, ETA and loss scale of a run, as it goes. */
export class Progress {
  readonly total: number;
  readonly live: boolean;
  readonly #label: string;
  readonly #every: number;
  readonly #write: (text: string) => void;
  #recent: number[] = [];
  #open = false;

  constructor(o: ProgressOptions) {
    this.total = o.total;
    this.live = o.live ?? Deno.stdout.isTerminal();
    this.#label = o.label ? `${o.label} ` : "";
    this.#every = o.every ?? 10;
    this.#write = o.write ?? ((t) => Deno.stdout.writeSync(encoder.encode(t)));
  }

  /** Reports a finished step: its loss, tokens and time (ms), and the loss scale if any. */
  update(step: number, r: { loss: number; tokens: number; ms: number; scale?: number }): void {
    this.#recent.push(r.ms);
    if (this.#recent.length > 20) this.#recent.shift();
    const ms = this.#recent.reduce((a, b) => a + b, 0) / this.#recent.length;
    const eta = ((this.total - step) * ms) / 1000;
    const text = `${this.#label}step ${step}/${this.total}  loss ${r.loss.toFixed(4)}  ` +
      `${Math.round((r.tokens * 1000) / ms)} tok/s  ETA ${duration(eta)}` +
      (r.scale !== undefined ? `  scale ${r.scale}` : "");
    if (this.live) {
      this.#write(`\r${text}\x1b[K`);
      this.#open = true;
    } else if (step === 1 || step === this.total || step % this.#every === 0) {
      this.#write(`${text}\n`);
    }
  }

  /** Prints a line that stays (above the live line). */
  note(text: string): void {
    this.#write(`${this.#open ? "\r\x1b[K" : ""}${text}\n`);
    this.#open = false;
  }

  /** Ends the live line. */
  done(): void {
    if (this.#open) this.#write("\n");
    this.#open = false;
  }
}

/**
 * Progress over the cells of a sweep: each finished cell's line ends with the cells done so
 * far, the time spent and an ETA of the rest (mean time of the cells this process ran so far).
 */
export class CellProgress {
  readonly #t0 = performance.now();
  #done = 0;

  /** `total`: the cells this process runs; `write`: where the lines go. */
  constructor(readonly total: number, readonly write: (line: string) => void) {}

  /** The line of a finished cell: `[2/6] <text> (elapsed 1m10s, ETA 2m20s)`. */
  cellDone(text: string): void {
    this.#done++;
    const elapsed = (performance.now() - this.#t0) / 1000;
    const eta = (elapsed / this.#done) * (this.total - this.#done);
    this.write(
      `[${this.#done}/${this.total}] ${text} (elapsed ${duration(elapsed)}` +
        (this.#done < this.total ? `, ETA ${duration(eta)})` : ")"),
    );
  }
}

/** Seconds as `1h02m`, `3m05s` or `12s`. */
export function duration(s: number): string {
  if (!Number.isFinite(s)) return "?";
  const t = Math.round(s);
  if (t >= 3600) {
    return `${Math.floor(t / 3600)}h${String(Math.floor(t / 60) % 60).padStart(2, "0")}m`;
  }
  if (t >= 60) return `${Math.floor(t / 60)}m${String(t % 60).padStart(2, "0")}s`;
  return `${t}s`;
}

/** A JSONL log: one JSON object per line, appended as the run goes. */
export class JsonlLog {
  private constructor(readonly path: string) {}

  /**
   * Opens `path` for a new run (emptied), or, with `keepThroughStep`, for a resumed one: the
   * records of later steps (logged after the checkpoint, before the run stopped) are dropped.
   */
  static async open(path: string, keepThroughStep?: number): Promise<JsonlLog> {
    const kept = keepThroughStep === undefined
      ? []
      : (await readLog(path).catch(() => [])).filter((r) => Number(r.step) <= keepThroughStep);
    const tmp = `${path}.tmp`;
    await Deno.writeTextFile(tmp, kept.map((r) => JSON.stringify(r) + "\n").join(""));
    await Deno.rename(tmp, path);
    return new JsonlLog(path);
  }

  /** Appends one record. */
  append(record: Record<string, unknown>): void {
    Deno.writeTextFileSync(this.path, JSON.stringify(record) + "\n", { append: true });
  }
}

/** The records of a JSONL log (a torn last line, from a killed run, is skipped). */
export async function readLog(path: string): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for (const line of (await Deno.readTextFile(path)).split("\n")) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // a line cut by a kill
    }
  }
  return out;
}
