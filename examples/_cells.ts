// Index-addressed cells of a sweep (stability_sweep, precision_compare), for one machine or a
// cluster whose scheduler does the distribution (Slurm job arrays, Kubernetes Indexed Jobs):
// the grid is a numbered list of cells; a process runs every cell, one (`--cell K`, or the index
// in SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX) or every N-th (`--shard I/N`). Each finished
// cell is one file, `<out>/cells/<name>.<settings hash>.json`, written atomically (temporary
// file, fsync, rename), so tasks on a shared file system never append to one file and a killed
// task leaves no half file; a cell whose file exists is skipped. The merge reads the cell files
// of the grid and writes the outputs; with cells missing it names them. Not part of the
// library's public API.
//
//   const dir = await CellDir.open("out/sweep", settingsHash(toJson(config)));
//   const pick = selectCells("my_sweep", cells.length, values);
//   for (const k of pick.indices) if (!dir.has(cells[k].name)) await dir.write(cells[k].name, run(k));

import { writeAtomic } from "../nn/safetensors.ts";
import { checks, type Option, UsageError } from "./_cli.ts";

/** The environment variables that give a task its cell index: Slurm's, then Kubernetes'. */
export const INDEX_VARS: readonly string[] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

/** `--allow-env` for the index variables. */
export const ALLOW_ENV = `--allow-env=${INDEX_VARS.join(",")}`;

/** The options every sweep takes to pick its cells; `--help` shows them. */
export const CELL_OPTIONS: Record<string, Option> = {
  list: {
    type: "boolean",
    help: "print the numbered cells (index, cell, done or to run), one a line, and exit",
    default: false,
  },
  cell: {
    type: "string",
    help: `run only cell K (0-based); default with ${ALLOW_ENV}: the index in ` +
      `${INDEX_VARS.join(" or ")} when set`,
    default: "",
    check: checks.int(0),
  },
  shard: {
    type: "string",
    help: "run every N-th cell from cell I (I/N, 0 <= I < N)",
    default: "",
    check: (v) => (parseShard(v) ? null : `must be I/N with 0 <= I < N, got '${v}'`),
  },
  merge: {
    type: "boolean",
    help: "write the table, results.json and chart from the cell files (names missing cells)",
    default: false,
  },
};

/** One cell of a grid: its index, its file name (settings excluded) and a label for people. */
export interface Cell {
  index: number;
  /** Safe as a file name: letters, digits, `.`, `-`, `_`. */
  name: string;
  label: string;
}

/** `I/N` as numbers, or null when it is not a valid shard. */
export function parseShard(v: string): { i: number; n: number } | null {
  const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(v);
  if (!m) return null;
  const i = Number(m[1]), n = Number(m[2]);
  return Number.isSafeInteger(n) && n >= 1 && i < n ? { i, n } : null;
}

/**
 * The index variables that are set and that the process may read (an env permission that is
 * not granted reads as unset, without a prompt).
 */
export function indexEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of INDEX_VARS) {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") continue;
    const v = Deno.env.get(name);
    if (v !== undefined && v.trim() !== "") out[name] = v.trim();
  }
  return out;
}

/** The cells a process runs and where that choice came from (for its first line). */
export interface Selection {
  indices: number[];
  /** "all cells", "--cell 3", "SLURM_ARRAY_TASK_ID=3", "--shard 1/4". */
  by: string;
}

/**
 * The cells to run out of `count`: `--cell K`, else `--shard I/N`, else the first index
 * variable of `env` that is set, else all. An index outside the grid is a UsageError naming
 * where it came from and the grid's size.
 */
export function selectCells(
  program: string,
  count: number,
  values: Record<string, string | boolean>,
  env: Record<string, string> = indexEnv(),
): Selection {
  const one = (k: number, by: string): Selection => {
    if (!(k < count)) {
      throw new UsageError(
        `${program}: ${by} is outside the grid of ${count} cells (0..${count - 1}); ` +
          `size the array or the job's completions as --list counts them`,
      );
    }
    return { indices: [k], by };
  };
  if (values.cell !== "" && values.cell !== undefined) {
    return one(Number(values.cell), `--cell ${values.cell}`);
  }
  if (values.shard !== "" && values.shard !== undefined) {
    const { i, n } = parseShard(String(values.shard))!;
    const indices = Array.from({ length: count }, (_, k) => k).filter((k) => k % n === i);
    return { indices, by: `--shard ${i}/${n}` };
  }
  for (const name of INDEX_VARS) {
    const v = env[name];
    if (v === undefined) continue;
    if (!/^\d+$/.test(v)) {
      throw new UsageError(`${program}: ${name}=${v} is not a cell index (an integer >= 0)`);
    }
    return one(Number(v), `${name}=${v}`);
  }
  return { indices: Array.from({ length: count }, (_, k) => k), by: "all cells" };
}

/** FNV-1a of a text, as 8 hex digits: the settings part of a cell's file name. */
export function settingsHash(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

/** The cell files of one sweep's settings in `<out>/cells`. */
export class CellDir {
  /** Names of the cells with a file of these settings. */
  readonly done: Set<string>;
  /** Paths of cell files made with other settings (other hashes). */
  readonly others: string[];

  private constructor(
    readonly dir: string,
    readonly hash: string,
    done: Set<string>,
    others: string[],
  ) {
    this.done = done;
    this.others = others;
  }

  /** Creates `<out>/cells` if needed and lists it (one directory read). */
  static async open(out: string, hash: string): Promise<CellDir> {
    const dir = `${out}/cells`;
    await Deno.mkdir(dir, { recursive: true });
    const done = new Set<string>(), others: string[] = [];
    for await (const e of Deno.readDir(dir)) {
      const m = /^(.+)\.([0-9a-f]{8})\.json$/.exec(e.name);
      if (!e.isFile || !m) continue; // temporary files of writers killed mid-write, logs
      if (m[2] === hash) done.add(m[1]);
      else others.push(`${dir}/${e.name}`);
    }
    return new CellDir(dir, hash, done, others);
  }

  /** The path of cell `name`'s file (`ext` for a companion such as its log). */
  path(name: string, ext = "json"): string {
    return `${this.dir}/${name}.${this.hash}.${ext}`;
  }

  /** Whether cell `name` has its file. */
  has(name: string): boolean {
    return this.done.has(name);
  }

  /** The text of cell `name`'s file, or null when there is none. */
  async read(name: string): Promise<string | null> {
    try {
      return await Deno.readTextFile(this.path(name));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    }
  }

  /** Writes cell `name`'s file atomically; the cell counts as done from then on. */
  async write(name: string, text: string): Promise<void> {
    await writeAtomic(this.path(name), new TextEncoder().encode(text));
    this.done.add(name);
  }
}

/** The cells of `cells` without a file, as one line: `2 (bf16 lr 1e-3 seed 2), 5 (...)`. */
export function describeMissing(cells: readonly Cell[], dir: CellDir, max = 20): string {
  const missing = cells.filter((c) => !dir.has(c.name));
  const shown = missing.slice(0, max).map((c) => `${c.index} (${c.label})`).join(", ");
  return missing.length > max ? `${shown} and ${missing.length - max} more` : shown;
}

/**
 * Throws a UsageError (exit 1) naming the cells of `cells` without a file in `dir`: a merge
 * (`--merge`, or the task that finished last) of `program` before every cell has run.
 *
 * @example
 * ```ts
 * import { CellDir, requireAllCells } from "./_cells.ts";
 * const dir = await CellDir.open(await Deno.makeTempDir(), "h");
 * try {
 *   requireAllCells("demo", [{ index: 0, name: "a", label: "a" }], dir);
 * } catch (e) {
 *   console.log((e as Error).message); // demo: 1 of 1 cells have no result in ...: 0 (a); run them (--cell K) and merge again
 * }
 * ```
 */
export function requireAllCells(program: string, cells: readonly Cell[], dir: CellDir): void {
  const missing = cells.filter((c) => !dir.has(c.name));
  if (missing.length) {
    throw new UsageError(
      `${program}: ${missing.length} of ${cells.length} cells have no result in ${dir.dir}: ` +
        `${describeMissing(cells, dir)}; run them (--cell K) and merge again`,
      1,
    );
  }
}

/**
 * The line a task logs when it finished its cells but others are still to run: how many are
 * done, which are left, and that the task finishing the last cell writes `what`.
 *
 * @example
 * ```ts
 * import { CellDir, pendingLine } from "./_cells.ts";
 * const dir = await CellDir.open(await Deno.makeTempDir(), "h");
 * console.log(pendingLine([{ index: 0, name: "a", label: "a" }], dir, "the table"));
 * // 0 of 1 cells done; still to run: 0 (a). The task that finishes the last cell writes the table (or run ...
 * ```
 */
export function pendingLine(cells: readonly Cell[], dir: CellDir, what: string): string {
  const left = cells.filter((c) => !dir.has(c.name)).length;
  return `${cells.length - left} of ${cells.length} cells done; still to run: ` +
    `${describeMissing(cells, dir)}. The task that finishes the last cell writes ${what} ` +
    `(or run again with --merge when all are done).`;
}

/** The `--list` lines: index, label and whether the cell is done. */
export function listLines(cells: readonly Cell[], dir: CellDir): string[] {
  const width = Math.max(1, ...cells.map((c) => c.label.length));
  return cells.map((c) =>
    `${String(c.index).padStart(String(cells.length - 1).length)}  ${c.label.padEnd(width)}  ${
      dir.has(c.name) ? "done" : "to run"
    }`
  );
}

/** Top-level keys whose values differ between two settings objects (for "ignored" notes). */
export function differingKeys(a: Record<string, unknown>, b: Record<string, unknown>): string[] {
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])];
  return keys.filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
}

/** Throws a UsageError when two cells of a grid share a name (a value given twice). */
export function checkUnique(program: string, cells: readonly Cell[]): void {
  const seen = new Map<string, Cell>();
  for (const c of cells) {
    const twin = seen.get(c.name);
    if (twin) {
      throw new UsageError(
        `${program}: cells ${twin.index} and ${c.index} are both '${c.label}'; a value is ` +
          `given twice in the lists`,
      );
    }
    seen.set(c.name, c);
  }
}

/** `1 cell`, `2 cells`. */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}
