// Every command line against hostile file-system states (issue #18, item 5): an output path
// that is a file or lies under one, an input that is a folder, binary garbage, a symlink to
// someone else's file, a safetensors file where a checkpoint's JSON belongs. Each ends in
// short lines that begin with the program's name and an exit code, never a stack trace, and
// no error quotes the content of a file ulp did not write.
import assert from "node:assert/strict";
import { type CliIO, runCli } from "../../examples/_cli.ts";
import { main as demo } from "../../examples/demo.ts";
import { main as precisionCompare } from "../../examples/precision_compare.ts";
import { main as sample } from "../../examples/sample.ts";
import { main as stabilitySweep } from "../../examples/stability_sweep.ts";
import { main as trainGpt } from "../../examples/train_gpt.ts";
import { main as formats } from "../../examples/formats.ts";
import { Linear, saveCheckpoint } from "../../mod.ts";

const DIR = "./.test-tmp/cli_fs";
await Deno.remove(DIR, { recursive: true }).catch(() => {});
await Deno.mkdir(`${DIR}/empty`, { recursive: true });
const FILE = `${DIR}/a-file`;
await Deno.writeTextFile(FILE, "x");
// someone else's file, read through a link inside the folder the command may read
const SECRET = `${DIR}/secret.txt`;
await Deno.writeTextFile(SECRET, "root:x:0:0:root:/root:/bin/bash\nhunter2\n");
await Deno.mkdir(`${DIR}/linked`);
// (Deno.symlink needs unscoped permissions: a child process with them makes the link)
const made = await new Deno.Command("deno", {
  args: [
    "eval",
    "-A",
    `await Deno.symlink(${JSON.stringify(await Deno.realPath(SECRET))}, ${
      JSON.stringify(`${DIR}/linked/checkpoint.json`)
    })`,
  ],
}).output();
assert.equal(made.code, 0, new TextDecoder().decode(made.stderr));
// binary garbage named like a checkpoint
await Deno.mkdir(`${DIR}/garbage`);
await Deno.writeFile(
  `${DIR}/garbage/checkpoint.json`,
  Uint8Array.from({ length: 300 }, (_, i) => (i * 97 + 13) % 256),
);
// a safetensors file where the JSON belongs (the two files swapped)
await saveCheckpoint(`${DIR}/real/checkpoint.json`, { model: new Linear(2, 2), step: 0 });
const tensorsFile =
  [...Deno.readDirSync(`${DIR}/real`)].find((e) => e.name.endsWith(".safetensors"))!.name;
await Deno.mkdir(`${DIR}/swapped`);
await Deno.copyFile(`${DIR}/real/${tensorsFile}`, `${DIR}/swapped/checkpoint.json`);

type Main = (args: string[], io: CliIO) => Promise<number> | number;

async function run(m: Main, args: string[]) {
  const err: string[] = [];
  let out = "";
  const io = {
    log: (t: string) => (out += t + "\n"),
    error: (l: string) => err.push(l),
    canWrite: () => true,
    writeTextFile: (p: string, t: string) => Deno.writeTextFileSync(p, t),
  } as CliIO;
  const code = await m(args, io);
  return { code, err, out };
}

const TINY = ["--steps", "1", "--layers", "1", "--heads", "1", "--width", "8", "--block", "8"];

const cases: [string, Main, string[]][] = [
  ["sample", sample as Main, ["--ckpt", `${DIR}/empty`]],
  ["sample", sample as Main, ["--ckpt", `${DIR}/linked`]],
  ["sample", sample as Main, ["--ckpt", `${DIR}/garbage`]],
  ["sample", sample as Main, ["--ckpt", `${DIR}/swapped`]],
  ["sample", sample as Main, ["--ckpt", FILE]],
  ["train_gpt", trainGpt as Main, ["--resume", `${DIR}/linked`]],
  ["train_gpt", trainGpt as Main, ["--resume", `${DIR}/garbage`]],
  ["train_gpt", trainGpt as Main, ["--resume", `${DIR}/swapped`]],
  ["train_gpt", trainGpt as Main, [...TINY, "--out", FILE]],
  ["train_gpt", trainGpt as Main, [
    ...TINY,
    "--data",
    SECRET,
    "--out",
    `${DIR}/t2`,
    "--resume",
    `${DIR}/real`,
  ]],
  ["demo", demo as Main, [...TINY, "--strategies", "fp32", "--out", FILE]],
  ["demo", demo as Main, [...TINY, "--strategies", "fp32", "--out", `${FILE}/sub`]],
  ["precision_compare", precisionCompare as Main, [...TINY, "--strategies", "fp32", "--out", FILE]],
  ["precision_compare", precisionCompare as Main, [
    ...TINY,
    "--data",
    `${DIR}/empty`,
    "--out",
    `${DIR}/pc`,
  ]],
  ["stability_sweep", stabilitySweep as Main, [
    "--out",
    FILE,
    "--formats",
    "bf16",
    "--lrs",
    "1e-3",
  ]],
  ["formats", formats as unknown as Main, ["bf16", "--svg", `${FILE}/chart.svg`]],
];

Deno.test("every command line ends a hostile file-system state in short lines and an exit code, quoting no file", async () => {
  const failures: string[] = [];
  for (const [program, m, args] of cases) {
    const what = `${program} ${args.join(" ")}`;
    let r;
    try {
      r = await run(m, args);
    } catch (e) {
      failures.push(`${what}: threw ${(e as Error).name}: ${(e as Error).message}`);
      continue;
    }
    if (r.code !== 1 && r.code !== 2) failures.push(`${what}: exit code ${r.code}`);
    if (r.err.length === 0 || r.err.length > 2) failures.push(`${what}: ${r.err.length} lines`);
    for (const line of r.err) {
      if (!line.startsWith(`${program}: `)) failures.push(`${what}: '${line}'`);
      if (/\n|^\s+at /.test(line)) failures.push(`${what}: a stack trace: '${line}'`);
      if (/root:x|hunter2|bash/.test(line.replaceAll(DIR, ""))) {
        failures.push(`${what}: quotes the file: '${line}'`);
      }
      if (line.length > 600) failures.push(`${what}: ${line.length} characters`);
    }
  }
  assert.deepEqual(failures, [], failures.join("\n"));
});

Deno.test("runCli() turns any error into one line: file-system errors by Deno's message, JSON errors without the file's text", async () => {
  const lines: string[] = [];
  const io: CliIO = { log: () => {}, error: (l) => lines.push(l) };
  const codes = [
    await runCli("prog", () => Promise.reject(new Deno.errors.NotFound("open 'x/y.json'")), io),
    await runCli("prog", () => Promise.resolve().then(() => JSON.parse("root:x:0:0:root")), io),
    await runCli("prog", () => Promise.reject(new TypeError("boom\n    at somewhere")), io),
  ];
  assert.deepEqual(codes, [1, 1, 1]);
  assert.deepEqual(lines, [
    "prog: open 'x/y.json'",
    "prog: a file it read is not valid JSON (a syntax error)",
    "prog: internal error (TypeError: boom); please report it",
  ]);
});
