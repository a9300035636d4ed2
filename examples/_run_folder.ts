// A training run's output folder: one writer at a time, checked before anything is built.
// Not part of the library's public API.
//
// - `lockRunFolder` takes an exclusive lock on `<dir>/.lock` (an OS file lock, `flock`): the
//   OS releases it when the process ends, however it ends, so a lock file left by a killed
//   run is recognised as stale (and reported) rather than blocking the folder forever. While
//   one run holds it, a second is refused with a message naming the holder (program, pid,
//   start time), which the holder wrote into the file.
// - `prepareRunFolder` checks what `--out` names: a folder or nothing (a file is refused), a
//   folder it can create.
// - `copyRun` copies a run (its checkpoint, tensor file and log) into an empty folder, for
//   `--resume A --out B`, under both folders' locks.

import { readCheckpoint, writeAtomic } from "../mod.ts";
import { excerpt } from "../nn/_excerpt.ts";
import { UsageError } from "./_cli.ts";

/** Who holds (or held) a run folder's lock, as the holder wrote it. */
export interface Holder {
  program: string;
  pid: number;
  started: string;
}

/** A held lock: release it when the run ends (also released by the OS if the process dies). */
export interface RunLock {
  /** The lock file. */
  readonly path: string;
  /** The holder a previous run left in the lock file without holding it (a stale lock). */
  readonly stale: Holder | null;
  /** Removes the lock file and releases the lock. */
  release(): Promise<void>;
}

const LOCK = ".lock";
/** Largest lock file read back (ulp writes about 100 bytes). */
const MAX_LOCK_BYTES = 4096;

/** The holder recorded in a lock file, or null when it holds nothing ulp wrote. */
async function readHolder(file: Deno.FsFile): Promise<Holder | null> {
  const buf = new Uint8Array(MAX_LOCK_BYTES);
  await file.seek(0, Deno.SeekMode.Start);
  let n = 0;
  while (n < buf.length) {
    const r = await file.read(buf.subarray(n));
    if (r === null) break;
    n += r;
  }
  try {
    const h = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(buf.subarray(0, n)));
    if (
      h && typeof h.program === "string" && Number.isSafeInteger(h.pid) &&
      typeof h.started === "string"
    ) {
      return { program: h.program, pid: h.pid, started: h.started };
    }
  } catch {
    // not a holder ulp wrote (empty, or changed by hand)
  }
  return null;
}

/** "train_gpt (pid 1234, started 2026-01-01T10:00:00.000Z)", quoting the file's text short. */
export function describeHolder(h: Holder | null): string {
  if (!h) return "a process that left no record of itself";
  const quote = (s: string) => (/^[\w.:+-]{1,40}$/.test(s) ? s : excerpt(s));
  return `${quote(h.program)} (pid ${h.pid}, started ${quote(h.started)})`;
}

/**
 * Takes the exclusive lock of run folder `dir` (which must exist) for `program`, or throws a
 * UsageError (exit code 1) naming the run that holds it. A lock file whose holder is gone is
 * taken over; `stale` then says who left it.
 */
export async function lockRunFolder(program: string, dir: string): Promise<RunLock> {
  const path = `${dir.replace(/\/+$/, "")}/${LOCK}`;
  for (let attempt = 0; attempt < 5; attempt++) {
    const file = await Deno.open(path, { read: true, write: true, create: true });
    let held = false;
    try {
      if (!(await file.tryLock(true))) {
        const holder = await readHolder(file);
        throw new UsageError(
          `${program}: the folder '${dir}' is in use by another run: ${describeHolder(holder)} ` +
            `holds its lock (${path}). Wait for that run to finish, or choose another --out`,
          1,
        );
      }
      // the file may have been removed (a holder that just released it) after we opened it:
      // then our lock is on a file no one else will see; open the path again
      const [mine, now] = await Promise.all([file.stat(), Deno.stat(path).catch(() => null)]);
      if (now === null || mine.ino !== now.ino || mine.dev !== now.dev) continue;
      const stale = await readHolder(file);
      const me: Holder = { program, pid: Deno.pid, started: new Date().toISOString() };
      await file.truncate(0);
      await file.seek(0, Deno.SeekMode.Start);
      await file.write(new TextEncoder().encode(JSON.stringify(me) + "\n"));
      held = true;
      return {
        path,
        stale,
        release: async () => {
          await Deno.remove(path).catch(() => {});
          file.close();
        },
      };
    } finally {
      if (!held) file.close();
    }
  }
  throw new UsageError(`${program}: could not take the lock ${path}: it keeps changing`, 1);
}

/**
 * Checks what `--out` names and creates the folder: a path that is a file, or a folder that
 * cannot be created, is a UsageError naming it (never an uncaught file-system error).
 */
export async function prepareRunFolder(program: string, dir: string): Promise<void> {
  const cannot = (e: unknown): never => {
    throw new UsageError(
      `${program}: --out: cannot create the folder '${dir}': ${
        (e as Error).message.split("\n")[0]
      }`,
    );
  };
  const st = await Deno.stat(dir).catch((e) => {
    if (e instanceof Deno.errors.NotFound) return null;
    return cannot(e); // a path through a file, a loop of links
  });
  if (st && !st.isDirectory) {
    throw new UsageError(`${program}: --out '${dir}' is a file, not a folder; choose a folder`);
  }
  if (!st) {
    await Deno.mkdir(dir, { recursive: true }).catch(cannot);
  }
}

/** The names in `dir`, but the lock file. */
async function entries(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.name !== LOCK) out.push(e.name);
  return out.sort();
}

/** Whether two paths name the same folder (both exist). */
export async function sameFolder(a: string, b: string): Promise<boolean> {
  if (a.replace(/\/+$/, "") === b.replace(/\/+$/, "")) return true;
  const [ra, rb] = await Promise.all([
    Deno.realPath(a).catch(() => a),
    Deno.realPath(b).catch(() => b),
  ]);
  return ra === rb;
}

/**
 * Copies the run of checkpoint `json` (its JSON, its tensor file, and its folder's
 * `log.jsonl`) into `toDir`, which must be empty but for its lock (held by the caller), under
 * the lock of the source folder. Returns the copy's checkpoint path (`<toDir>/checkpoint.json`).
 */
export async function copyRun(program: string, json: string, toDir: string): Promise<string> {
  const present = await entries(toDir);
  if (present.length > 0) {
    throw new UsageError(
      `${program}: --resume with --out '${toDir}': the folder is not empty (it holds ${
        present.slice(0, 3).map((n) => excerpt(n)).join(", ")
      }${present.length > 3 ? ", ..." : ""}); a resumed run is copied into an empty or new ` +
        `folder. Choose one, or leave --out out to continue in the checkpoint's folder`,
    );
  }
  const cut = json.lastIndexOf("/");
  const fromDir = cut < 0 ? "." : json.slice(0, cut) || "/";
  const lock = await lockRunFolder(program, fromDir);
  try {
    const info = await readCheckpoint(json);
    const copy = async (from: string, to: string) =>
      await writeAtomic(`${toDir}/${to}`, await Deno.readFile(`${fromDir}/${from}`));
    await copy(info.tensors, info.tensors);
    await copy("log.jsonl", "log.jsonl").catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
    await copy(json.slice(cut + 1), "checkpoint.json");
  } finally {
    await lock.release();
  }
  return `${toDir}/checkpoint.json`;
}

/**
 * What `openRunFolder` gives a run: its lock, where to resume from, and notes to print.
 * `await using` it: leaving the scope releases the lock.
 */
export interface OpenedRun extends AsyncDisposable {
  lock: RunLock;
  /** The checkpoint to resume from (a copy in `out` for `--resume A --out B`), or null. */
  resume: string | null;
  /** Lines to print (a stale lock taken over, a run copied). */
  notes: string[];
}

/**
 * Opens `out` for one run, before anything is built: creates it (a file there is refused),
 * takes its lock (a folder in use by another run is refused, naming it; a stale lock is
 * taken over and reported). A new run is refused in a folder that holds a run's checkpoint
 * (nothing of a run is overwritten by another); `resume` in another folder is copied into
 * `out`, which must then be empty.
 */
export async function openRunFolder(
  program: string,
  out: string,
  resume: string | null,
): Promise<OpenedRun> {
  await prepareRunFolder(program, out);
  const lock = await lockRunFolder(program, out);
  const notes: string[] = [];
  try {
    if (lock.stale) {
      notes.push(
        `note: ${lock.path} was left by ${describeHolder(lock.stale)}, which no longer holds ` +
          `it (it ended without removing it); this run takes the folder over`,
      );
    }
    if (resume === null) {
      const ckpt = `${out.replace(/\/+$/, "")}/checkpoint.json`;
      const found = await Deno.stat(ckpt).then(() => true, () => false);
      if (found) {
        const step = await readCheckpoint(ckpt).then((c) => ` at step ${c.step}`, () => "");
        throw new UsageError(
          `${program}: --out '${out}' already holds a run (checkpoint.json${step}); continue ` +
            `it with --resume ${out}, or choose another --out (or remove that folder)`,
        );
      }
      return opened(lock, null, notes);
    }
    const cut = resume.lastIndexOf("/");
    const from = cut < 0 ? "." : resume.slice(0, cut) || "/";
    if (await sameFolder(from, out)) return opened(lock, resume, notes);
    const copy = await copyRun(program, resume, out);
    notes.push(`copied the run of ${resume} into ${out}/ (the original is left as it was)`);
    return opened(lock, copy, notes);
  } catch (e) {
    await lock.release();
    throw e;
  }
}

function opened(lock: RunLock, resume: string | null, notes: string[]): OpenedRun {
  return { lock, resume, notes, [Symbol.asyncDispose]: () => lock.release() };
}
