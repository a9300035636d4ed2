// Command-line options for the examples: one table gives the parser, the defaults and --help.
import { parseArgs } from "node:util";

/** One option: its kind, help text and default. */
export interface Option {
  type: "string" | "boolean";
  help: string;
  default: string | boolean;
}

/**
 * Parses `args` by the table. `--help` prints the usage generated from the table and exits 0;
 * an unknown flag or a missing value prints one line naming it and exits 2.
 */
export function parseCli(
  program: string,
  usage: string,
  table: Record<string, Option>,
  args: string[] = Deno.args,
): Record<string, string | boolean> {
  let values: Record<string, unknown>;
  try {
    values = parseArgs({
      args,
      options: Object.fromEntries(
        Object.entries(table).map(([k, o]) => [k, { type: o.type, default: o.default }]),
      ),
      strict: true,
    }).values as Record<string, unknown>;
  } catch (e) {
    fail(program, `${(e as Error).message}; see --help`);
  }
  if (values.help) {
    const lines = Object.entries(table).map(([k, o]) =>
      `  --${k.padEnd(15)} ${o.help}${
        o.type === "string" && o.default !== "" ? ` (default ${o.default})` : ""
      }`
    );
    console.log(`Usage: ${usage}\n\n${lines.join("\n")}`);
    Deno.exit(0);
  }
  return values as Record<string, string | boolean>;
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
