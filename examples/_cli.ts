// Command-line options for the examples: one table gives the parser, the defaults, the checks
// of the values and --help. `parseOptions` throws a `UsageError` (testable); `parseCli` prints
// it and exits (for scripts).
import { parseArgs } from "node:util";
import { UlpError } from "../errors.ts";
import { jsonProblem } from "../nn/_excerpt.ts";

/** One option: its kind, help text, default and (optionally) a check of its value. */
export interface Option {
  type: "string" | "boolean";
  help: string;
  default: string | boolean;
  /** Checks a string value: null when valid, else what is wrong and which values are valid. */
  check?: (value: string) => string | null;
}

/** Bad usage (exit code 2) or a request for help (code 0, the message is the help text). */
export class UsageError extends Error {
  constructor(message: string, readonly code: number = 2) {
    super(message);
    this.name = "UsageError";
  }
}

/** Checks for `Option.check`. */
export const checks = {
  /** An integer >= min. */
  int: (min = 1) => (v: string): string | null =>
    /^-?\d+$/.test(v.trim()) && Number.isSafeInteger(Number(v)) && Number(v) >= min
      ? null
      : `must be an integer >= ${min}, got '${v}'`,
  /** A finite number > 0. */
  positive: () => (v: string): string | null =>
    v.trim() !== "" && Number(v) > 0 && Number.isFinite(Number(v))
      ? null
      : `must be a positive number, got '${v}'`,
  /** One of `names` (a function, so that the list is read when the check runs). */
  oneOf: (names: () => readonly string[]) => (v: string): string | null =>
    names().includes(v) ? null : `unknown value '${v}'; valid: ${names().join(", ")}`,
};

/** Edit distance (insertions, deletions, substitutions) between two short strings. */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

/**
 * For a parser message about an unknown flag (`Unknown option '--step'`), a suggestion of the
 * closest flag of `names` (`; did you mean --steps?`): one that the unknown flag begins, or
 * that begins with it, or is at most 2 edits away. Empty when none is close.
 */
export function didYouMean(message: string, names: readonly string[]): string {
  const m = /Unknown option '-{1,2}([^'=]+)/.exec(message);
  if (!m) return "";
  const given = m[1];
  let best = "", bestD = Infinity;
  for (const n of names) {
    const d = n.startsWith(given) || given.startsWith(n) ? 0.5 : distance(given, n);
    if (d < bestD) [best, bestD] = [n, d];
  }
  return bestD <= Math.min(2, Math.max(1, given.length / 3)) ? `; did you mean --${best}?` : "";
}

/** The usage text generated from the table. */
export function helpText(usage: string, table: Record<string, Option>): string {
  const lines = Object.entries(table).map(([k, o]) =>
    `  --${k.padEnd(17)} ${o.help}${
      o.type === "string" && o.default !== "" ? ` (default ${o.default})` : ""
    }`
  );
  return `Usage: ${usage}\n\n${lines.join("\n")}`;
}

/** What `parseOptions` returns: the values (defaults filled in) and the flags given. */
export interface Parsed {
  values: Record<string, string | boolean>;
  given: Set<string>;
}

/**
 * Parses `args` by the table and checks every value. `--help` throws a UsageError of code 0
 * whose message is the help text; an unknown flag, a missing or a bad value throws one of
 * code 2 with one line naming the flag (and the valid values).
 */
export function parseOptions(
  program: string,
  usage: string,
  table: Record<string, Option>,
  args: readonly string[],
): Parsed {
  let raw: Record<string, unknown>;
  try {
    raw = parseArgs({
      args: [...args],
      options: Object.fromEntries(Object.entries(table).map(([k, o]) => [k, { type: o.type }])),
      strict: true,
    }).values as Record<string, unknown>;
  } catch (e) {
    const msg = (e as Error).message.split("\n").map((l) => l.trim()).filter(Boolean)
      .map((l) => (/[.?!]$/.test(l) ? l : `${l}.`)).join(" ").replace(/\.$/, "");
    throw new UsageError(`${program}: ${msg}${didYouMean(msg, Object.keys(table))}; see --help`);
  }
  if (raw.help) throw new UsageError(helpText(usage, table), 0);
  const values: Record<string, string | boolean> = {};
  for (const [k, o] of Object.entries(table)) {
    const v = (raw[k] ?? o.default) as string | boolean;
    if (typeof v === "string" && o.check && (raw[k] !== undefined || v !== "")) {
      const problem = o.check(v);
      if (problem) throw new UsageError(`${program}: --${k} ${problem}`);
    }
    values[k] = v;
  }
  return { values, given: new Set(Object.keys(raw)) };
}

/**
 * Parses `args` by the table (as `parseOptions`) for a script: `--help` prints the usage and
 * exits 0; bad usage prints one line naming the flag and exits 2.
 */
export function parseCli(
  program: string,
  usage: string,
  table: Record<string, Option>,
  args: string[] = Deno.args,
): Record<string, string | boolean> {
  try {
    return parseOptions(program, usage, table, args).values;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    (e.code === 0 ? console.log : console.error)(e.message);
    Deno.exit(e.code);
  }
}

/** Prints `program: msg` and exits with code 2 (bad usage). */
export function fail(program: string, msg: string): never {
  console.error(`${program}: ${msg}`);
  Deno.exit(2);
}

/** The integer value of a flag, at least `min`; a one-line error naming the flag otherwise. */
export function intFlag(
  program: string,
  values: Record<string, unknown>,
  name: string,
  min = 1,
): number {
  const v = Number(values[name]);
  if (!Number.isSafeInteger(v) || v < min) {
    fail(program, `--${name} must be an integer >= ${min}, got '${values[name]}'`);
  }
  return v;
}

/**
 * Throws a UsageError unless the process may `kind` ("read" or "write") `path`: says which
 * flag the command needs, before any work is done.
 */
export async function requirePermission(
  program: string,
  kind: "read" | "write",
  path: string,
  what: string,
): Promise<void> {
  const { state } = await Deno.permissions.query({ name: kind, path });
  if (state !== "granted") {
    throw new UsageError(
      `${program}: no permission to ${kind} ${what} '${path}'; run deno with ` +
        `--allow-${kind}=${path} (or a folder that contains it)`,
    );
  }
}

/** One permission a command needs: `kind` of `path`, described as `what` (with its flag). */
export interface Need {
  kind: "read" | "write";
  path: string;
  what: string;
}

/**
 * Throws one UsageError that names every permission of `needs` the process lacks, with the
 * flags to add, before any work is done (`requirePermission` for several at once).
 */
export async function requirePermissions(program: string, needs: readonly Need[]): Promise<void> {
  const missing: Need[] = [];
  for (const n of needs) {
    const { state } = await Deno.permissions.query({ name: n.kind, path: n.path });
    if (state !== "granted") missing.push(n);
  }
  if (missing.length === 0) return;
  if (missing.length === 1) {
    const m = missing[0];
    return await requirePermission(program, m.kind, m.path, m.what);
  }
  const flags = (["read", "write"] as const).map((k) => {
    const paths = [...new Set(missing.filter((m) => m.kind === k).map((m) => m.path))];
    return paths.length ? `--allow-${k}=${paths.join(",")}` : "";
  }).filter(Boolean);
  throw new UsageError(
    `${program}: no permission to ${
      missing.map((m) => `${m.kind} ${m.what} '${m.path}'`).join(", ")
    }; run deno with ${flags.join(" ")} (or folders that contain them)`,
  );
}

/** A message for an error that Deno raised for a missing permission, else null. */
export function permissionMessage(program: string, e: unknown): string | null {
  if (!(e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied)) {
    return null;
  }
  return `${program}: ${(e as Error).message.split("\n")[0]}`;
}

/** Where a command's messages go (injectable so that tests capture them). */
export interface CliIO {
  /** Help and normal output (one line or several). */
  log(text: string): void;
  /** Error lines. */
  error(text: string): void;
  /** Raw text, for a live progress line (default: lines through `log`). */
  write?(text: string): void;
  /** Whether output is a terminal (a live progress line); default false. */
  isTerminal?: boolean;
}

/** Console output; progress is live when stdout is a terminal. */
export const consoleIO: CliIO = {
  log: (t) => console.log(t),
  error: (t) => console.error(t),
  write: (t) => Deno.stdout.writeSync(new TextEncoder().encode(t)),
  isTerminal: Deno.stdout.isTerminal(),
};

/** What a `Progress` writes to for `io`: raw text and whether to keep one live line. */
export function progressOutput(io: CliIO): { write: (text: string) => void; live: boolean } {
  const write = io.write ? io.write.bind(io) : (t: string) => io.log(t.replace(/\n$/, ""));
  return { write, live: !!io.write && !!io.isTerminal };
}

/**
 * Runs a command's body and turns every error into one line and an exit code, never a stack
 * trace: usage (2, or 0 for --help), a missing Deno permission (2), an error of ulp such as
 * a malformed checkpoint (1), a file-system error (1: Deno's message names the path and the
 * operation, never the file's content), anything else (1, named as an internal error).
 */
export async function runCli(
  program: string,
  body: () => Promise<number>,
  io: CliIO = consoleIO,
): Promise<number> {
  try {
    return await body();
  } catch (e) {
    if (e instanceof UsageError) {
      (e.code === 0 ? io.log : io.error)(e.message);
      return e.code;
    }
    const perm = permissionMessage(program, e);
    if (perm) {
      io.error(perm);
      return 2;
    }
    if (e instanceof UlpError) {
      io.error(`${program}: ${e.message}`);
      return 1;
    }
    const err = e instanceof Error ? e : new Error(String(e));
    const fs = Object.values(Deno.errors).some((c) => err instanceof c);
    io.error(
      fs ? `${program}: ${oneLine(err.message)}` : err instanceof SyntaxError
        // JSON.parse's message quotes the file: say what, not the content
        ? `${program}: a file it read is not valid JSON (${jsonProblem(err)})`
        : `${program}: internal error (${err.name}: ${oneLine(err.message)}); please report it`,
    );
    return 1;
  }
}

/** The first line of a message, at most 2000 characters. */
function oneLine(msg: string): string {
  const line = msg.split("\n")[0];
  return line.length > 2000 ? `${line.slice(0, 2000)}...` : line;
}
