// Shared fixtures of the examples' tests: a fresh folder with a small text to train on, the
// flags of a tiny GPT run, and a main run with its output captured.
import type { CliIO } from "../../examples/_cli.ts";

/** What a captured run of an example's main gave: exit code, the log (a line each), errors. */
export interface Run {
  code: number;
  out: string;
  err: string[];
}

/**
 * Empties (or makes) `dir` and writes `<dir>/text.txt`, 600 words drawn from eight in a fixed
 * order; returns its path.
 */
export async function tinyText(dir: string): Promise<string> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });
  const path = `${dir}/text.txt`;
  const words = ["tensor", "grad", "step", "loss", "bf16", "scale", "update", "round"];
  await Deno.writeTextFile(
    path,
    Array.from({ length: 600 }, (_, i) => words[(i * i + 3 * i) % words.length]).join(" "),
  );
  return path;
}

/**
 * The flags of a tiny GPT (1 layer, 2 heads, width 16, block 8) and `flags` after them, in
 * order, as command-line arguments (`--name value`).
 */
export function tinyArgs(flags: Record<string, string | number>): string[] {
  return Object.entries({ layers: 1, heads: 2, width: 16, block: 8, ...flags })
    .flatMap(([k, v]) => [`--${k}`, String(v)]);
}

/** Runs an example's `main` on `args`, capturing its log (each line ended by "\n") and errors. */
export async function runMain(
  main: (args: readonly string[], io: CliIO) => Promise<number>,
  args: readonly string[],
): Promise<Run> {
  let out = "";
  const err: string[] = [];
  const code = await main(args, { log: (t) => (out += t + "\n"), error: (l) => err.push(l) });
  return { code, out, err };
}
