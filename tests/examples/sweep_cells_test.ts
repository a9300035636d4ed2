// Index-addressed cells (examples/_cells.ts) and the sweeps that use them: the choice of cells
// (--cell, --shard, Slurm's and Kubernetes' index variables), the cell files, and, on the real
// adapter, a tiny stability sweep and a tiny precision comparison run as separate processes
// (as a Slurm array or an Indexed Job runs them: two at once, a shard, a retried task) and
// merged, against the same grid run by one process.
//
// Needs --allow-run=deno (the test task has it) to start the children.
import assert from "node:assert/strict";
import {
  CellDir,
  checkUnique,
  describeMissing,
  listLines,
  parseShard,
  plural,
  selectCells,
  settingsHash,
} from "../../examples/_cells.ts";
import { CellProgress } from "../../examples/_progress.ts";
import { main as sweepMain } from "../../examples/stability_sweep.ts";
import { main as compareMain } from "../../examples/precision_compare.ts";
import type { CliIO } from "../../examples/_cli.ts";

const DIR = "./.test-tmp/sweep_cells";
const ENV = "--allow-env=SLURM_ARRAY_TASK_ID,JOB_COMPLETION_INDEX";

function capture(): CliIO & { out: string[]; err: string[] } {
  const out: string[] = [], err: string[] = [];
  return { out, err, log: (s) => out.push(s), error: (s) => err.push(s) };
}

/** The message of the UsageError `f` throws. */
function usageError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert.equal((e as Error).name, "UsageError");
    return (e as Error).message;
  }
  assert.fail("no UsageError");
}

Deno.test("selectCells() takes --cell, then --shard, then SLURM's, then Kubernetes' index", () => {
  const none = { cell: "", shard: "" };
  assert.deepEqual(selectCells("p", 4, none, {}), { indices: [0, 1, 2, 3], by: "all cells" });
  assert.deepEqual(selectCells("p", 4, { ...none, cell: "2" }, { SLURM_ARRAY_TASK_ID: "1" }), {
    indices: [2],
    by: "--cell 2",
  });
  assert.deepEqual(selectCells("p", 7, { ...none, shard: "1/3" }, { JOB_COMPLETION_INDEX: "0" }), {
    indices: [1, 4],
    by: "--shard 1/3",
  });
  const both = { SLURM_ARRAY_TASK_ID: "3", JOB_COMPLETION_INDEX: "0" };
  assert.deepEqual(selectCells("p", 4, none, both), { indices: [3], by: "SLURM_ARRAY_TASK_ID=3" });
  assert.deepEqual(selectCells("p", 4, none, { JOB_COMPLETION_INDEX: "0" }), {
    indices: [0],
    by: "JOB_COMPLETION_INDEX=0",
  });
  assert.match(
    usageError(() => selectCells("p", 4, none, { SLURM_ARRAY_TASK_ID: "4" })),
    /^p: SLURM_ARRAY_TASK_ID=4 is outside the grid of 4 cells \(0\.\.3\); size the array/,
  );
  assert.match(
    usageError(() => selectCells("p", 3, { ...none, cell: "3" }, {})),
    /^p: --cell 3 is outside the grid of 3 cells \(0\.\.2\)/,
  );
  assert.match(
    usageError(() => selectCells("p", 3, none, { JOB_COMPLETION_INDEX: "x1" })),
    /^p: JOB_COMPLETION_INDEX=x1 is not a cell index/,
  );
  // every cell in exactly one shard
  const shards = [0, 1, 2].flatMap((i) =>
    selectCells("p", 8, { ...none, shard: `${i}/3` }).indices
  );
  assert.deepEqual(shards.sort(), [0, 1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(parseShard(" 2 / 5 "), { i: 2, n: 5 });
  for (const bad of ["5/5", "1/0", "-1/2", "1", "a/b", "1/2/3"]) {
    assert.equal(parseShard(bad), null);
  }
});

Deno.test("settingsHash() is FNV-1a 32 (published vectors)", () => {
  assert.equal(settingsHash(""), "811c9dc5");
  assert.equal(settingsHash("a"), "e40c292c");
  assert.equal(settingsHash("foobar"), "bf9cf968");
});

Deno.test("CellDir keeps one file per cell and tells done, other settings and missing apart", async () => {
  const out = `${DIR}/dir`;
  await Deno.remove(out, { recursive: true }).catch(() => {});
  const dir = await CellDir.open(out, "0000abcd");
  const cells = ["a", "b", "c"].map((name, index) => ({ index, name, label: `cell ${name}` }));
  await dir.write("a", '{"x":1}');
  await Deno.writeTextFile(`${out}/cells/b.1234abcd.json`, "{}"); // other settings
  await Deno.writeTextFile(`${out}/cells/c.0000abcd.json.tmp-1-2`, "{"); // a writer killed
  await Deno.writeTextFile(`${out}/cells/c.0000abcd.log.jsonl`, ""); // a companion
  const again = await CellDir.open(out, "0000abcd");
  assert.deepEqual([...again.done], ["a"]);
  assert.deepEqual(again.others, [`${out}/cells/b.1234abcd.json`]);
  assert.equal(await again.read("a"), '{"x":1}');
  assert.equal(await again.read("b"), null);
  assert.equal(describeMissing(cells, again), "1 (cell b), 2 (cell c)");
  assert.equal(describeMissing(cells, again, 1), "1 (cell b) and 1 more");
  assert.deepEqual(listLines(cells, again), [
    "0  cell a  done",
    "1  cell b  to run",
    "2  cell c  to run",
  ]);
  const names: string[] = [];
  for await (const e of Deno.readDir(`${out}/cells`)) names.push(e.name);
  assert.equal(names.filter((n) => n.includes(".tmp-")).length, 1); // only the planted one
  assert.match(
    usageError(() => checkUnique("p", [...cells, { index: 3, name: "a", label: "cell a" }])),
    /^p: cells 0 and 3 are both 'cell a'; a value is given twice/,
  );
  assert.equal(plural(1, "cell") + ", " + plural(2, "cell"), "1 cell, 2 cells");
});

Deno.test("CellProgress ends each cell's line with the count, the time spent and an ETA", () => {
  const lines: string[] = [];
  const p = new CellProgress(3, (t) => lines.push(t));
  p.cellDone("cell 0");
  p.cellDone("cell 4");
  p.cellDone("cell 8");
  assert.match(lines[0], /^\[1\/3\] cell 0 \(elapsed \d+s, ETA \d+s\)$/);
  assert.match(lines[1], /^\[2\/3\] cell 4 \(elapsed \d+s, ETA \d+s\)$/);
  assert.match(lines[2], /^\[3\/3\] cell 8 \(elapsed \d+s\)$/);
});

/** `deno` as this process may run it: its own binary if allowed, else the one on PATH. */
function denoCommand(): string {
  const self = Deno.execPath();
  return Deno.permissions.querySync({ name: "run", command: self }).state === "granted"
    ? self
    : "deno";
}

/**
 * Runs an example in a child process as a scheduler's task would: `index` sets one index
 * variable (the other is set empty, so that one inherited from a scheduler running these tests
 * does not count).
 */
async function task(
  script: string,
  args: string[],
  index: Record<string, string> = {},
): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(denoCommand(), {
    args: ["run", "--allow-read=.", "--allow-write=./.test-tmp", ENV, script, ...args],
    env: { SLURM_ARRAY_TASK_ID: "", JOB_COMPLETION_INDEX: "", ...index },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

async function writeData(): Promise<string> {
  await Deno.mkdir(DIR, { recursive: true });
  const words = ["the", "loss", "of", "a", "tiny", "model", "falls", "slowly", "and", "then"];
  const path = `${DIR}/data.txt`;
  await Deno.writeTextFile(
    path,
    Array.from({ length: 400 }, (_, i) => words[(i * 7) % words.length]).join(" "),
  );
  return path;
}

Deno.test("a stability sweep run as array tasks and merged equals the one-process run", async () => {
  const data = await writeData();
  const grid = (out: string) => [
    ...["--formats", "bf16,e8m3", "--lrs", "3e-3", "--seeds", "2", "--steps", "6"],
    ...["--warmup", "2", "--layers", "1", "--heads", "1", "--width", "8", "--block", "4"],
    ...["--batch", "2", "--eval-batches", "2", "--sharpness-every", "2", "--data", data],
    ...["--out", out],
  ];
  const out = `${DIR}/array`, one = `${DIR}/one`;
  await Deno.remove(out, { recursive: true }).catch(() => {});
  await Deno.remove(one, { recursive: true }).catch(() => {});
  const script = "examples/stability_sweep.ts";

  const list = await task(script, [...grid(out), "--list"], { SLURM_ARRAY_TASK_ID: "2" });
  assert.equal(list.code, 0, list.err);
  assert.equal(
    list.out,
    "0  bf16 lr 3e-3 seed 1  to run\n1  bf16 lr 3e-3 seed 2  to run\n" +
      "2  e8m3 lr 3e-3 seed 1  to run\n3  e8m3 lr 3e-3 seed 2  to run\n",
  );
  const outside = await task(script, grid(out), { SLURM_ARRAY_TASK_ID: "4" });
  assert.equal(outside.code, 2);
  assert.match(outside.err, /SLURM_ARRAY_TASK_ID=4 is outside the grid of 4 cells \(0\.\.3\)/);

  // Two tasks at once, one from Slurm, one from Kubernetes.
  const [t0, t3] = await Promise.all([
    task(script, grid(out), { SLURM_ARRAY_TASK_ID: "0" }),
    task(script, grid(out), { JOB_COMPLETION_INDEX: "3" }),
  ]);
  assert.equal(t0.code, 0, t0.err);
  assert.equal(t3.code, 0, t3.err);
  assert.match(t0.out, /^4 cells: \d done, 1 to run \(SLURM_ARRAY_TASK_ID=0\)\n/);
  assert.match(t0.out, /\[1\/1\] cell 0 bf16 lr 3e-3 seed 1: /);
  assert.match(t3.out, /^4 cells: \d done, 1 to run \(JOB_COMPLETION_INDEX=3\)\n/);
  assert.match(t3.out, /\[1\/1\] cell 3 e8m3 lr 3e-3 seed 2: /);
  const merge1 = await task(script, [...grid(out), "--merge"]);
  assert.equal(merge1.code, 1);
  assert.match(
    merge1.err,
    /2 of 4 cells have no result in .*: 1 \(bf16 lr 3e-3 seed 2\), 2 \(e8m3 lr 3e-3 seed 1\); run them/,
  );
  await assert.rejects(Deno.stat(`${out}/report.md`), Deno.errors.NotFound);

  // A shard: every 2nd cell from 1 (1 and 3; 3 is done).
  const s1 = await task(script, [...grid(out), "--shard", "1/2"]);
  assert.equal(s1.code, 0, s1.err);
  assert.match(s1.out, /^4 cells: 2 done, 1 to run \(--shard 1\/2\)\n/);
  assert.match(s1.out, /still to run: 2 \(e8m3 lr 3e-3 seed 1\)\. /);

  // The last cell: its task merges.
  const last = await task(script, [...grid(out), "--cell", "2"], { SLURM_ARRAY_TASK_ID: "0" });
  assert.equal(last.code, 0, last.err);
  assert.match(last.out, /wrote .*report\.md, results\.json and loss\.svg/);

  // A retried task does nothing twice.
  const cellFile = (await Array.fromAsync(Deno.readDir(`${out}/cells`)))
    .map((e) => e.name).find((n) => n.startsWith("bf16-lr3e-3-seed1."))!;
  const before = await Deno.stat(`${out}/cells/${cellFile}`);
  const retry = await task(script, grid(out), { SLURM_ARRAY_TASK_ID: "0" });
  assert.equal(retry.code, 0, retry.err);
  assert.match(retry.out, /^4 cells: 4 done, 0 to run \(SLURM_ARRAY_TASK_ID=0\)\n/);
  assert.deepEqual((await Deno.stat(`${out}/cells/${cellFile}`)).mtime, before.mtime);

  // One process, the whole grid: the same table, rows, cells and chart.
  const io = capture();
  assert.equal(await sweepMain(grid(one), io), 0);
  assert.match(io.out[0], /^4 cells: 0 done, 4 to run$/);
  assert.match(io.out[1], /^\[1\/4\] cell 0 bf16 lr 3e-3 seed 1: .*\(elapsed \d+s, ETA \d+s\)$/);
  const read = (dir: string, f: string) => Deno.readTextFile(`${dir}/${f}`);
  assert.equal(await read(out, "report.md"), await read(one, "report.md"));
  assert.equal(await read(out, "loss.svg"), await read(one, "loss.svg"));
  const [a, b] = [
    JSON.parse(await read(out, "results.json")),
    JSON.parse(await read(one, "results.json")),
  ];
  assert.deepEqual(a.rows, b.rows);
  const noTime = (cells: { msPerStep: number }[]) => cells.map((c) => ({ ...c, msPerStep: 0 }));
  assert.deepEqual(noTime(a.cells), noTime(b.cells));
  assert.equal(a.rows.length, 2);
  assert.ok(a.rows.every((r: { runs: number }) => r.runs === 2));
});

Deno.test("a precision comparison run as array tasks and merged equals the one-process run", async () => {
  const data = await writeData();
  const grid = (out: string) => [
    ...["--strategies", "fp32,bf16", "--steps", "4", "--warmup", "1", "--layers", "1"],
    ...["--heads", "1", "--width", "8", "--block", "4", "--batch", "2", "--diag-every", "2"],
    ...["--data", data, "--out", out],
  ];
  const out = `${DIR}/compare_array`, one = `${DIR}/compare_one`;
  await Deno.remove(out, { recursive: true }).catch(() => {});
  await Deno.remove(one, { recursive: true }).catch(() => {});
  const script = "examples/precision_compare.ts";

  const t1 = await task(script, grid(out), { SLURM_ARRAY_TASK_ID: "1" });
  assert.equal(t1.code, 0, t1.err);
  assert.match(t1.out, /^2 cells: 0 done, 1 to run \(SLURM_ARRAY_TASK_ID=1\)\n/);
  assert.match(t1.out, /still to run: 0 \(fp32\)\. /);
  const merge1 = await task(script, [...grid(out), "--merge"]);
  assert.equal(merge1.code, 1);
  assert.match(merge1.err, /1 of 2 cells have no result in .*: 0 \(fp32\); run them/);
  const t0 = await task(script, grid(out), { JOB_COMPLETION_INDEX: "0" });
  assert.equal(t0.code, 0, t0.err);
  assert.match(t0.out, /wrote .*report\.md, results\.json, loss\.svg and log\.jsonl/);
  const io = capture();
  assert.equal(await compareMain(grid(one), io), 0);

  const read = (dir: string, f: string) => Deno.readTextFile(`${dir}/${f}`);
  const noMs = (md: string) =>
    md.replace(/\| [\d.]+ \|\n/g, "| ms |\n").replace(/\| [\d.]+ \|$/, "| ms |");
  const [ra, rb] = [await read(out, "report.md"), await read(one, "report.md")];
  assert.equal(noMs(ra), noMs(rb));
  assert.match(ra, /^# Precision strategies compared\n\n1 layer, 1 head, width 8, .* 4 steps, /);
  assert.match(ra, /\| fp32 \| \d\.\d{4} \| /);
  const [a, b] = [
    JSON.parse(await read(out, "results.json")),
    JSON.parse(await read(one, "results.json")),
  ];
  type R = { strategy: string; msPerStep: number; losses: number[][] };
  const noTime = (rs: R[]) => rs.map((r) => ({ ...r, msPerStep: 0 }));
  assert.deepEqual(noTime(a.results), noTime(b.results));
  assert.deepEqual(a.results.map((r: R) => [r.strategy, r.losses.length]), [["fp32", 4], [
    "bf16",
    4,
  ]]);
  const steps = (log: string) =>
    log.trim().split("\n").map((l) => JSON.parse(l)).map(({ strategy, step, type, loss }) => ({
      strategy,
      step,
      type,
      loss,
    }));
  const [la, lb] = [steps(await read(out, "log.jsonl")), steps(await read(one, "log.jsonl"))];
  assert.deepEqual(la, lb);
  assert.deepEqual(la.map((r) => r.strategy).filter((s, i, all) => all.indexOf(s) === i), [
    "fp32",
    "bf16",
  ]);
});

Deno.test("deploy/k8s/sweep-job.yaml sizes its Indexed Job to the grid of its arguments", async () => {
  const yaml = await Deno.readTextFile("deploy/k8s/sweep-job.yaml");
  const completions = Number(/^\s*completions: (\d+)/m.exec(yaml)?.[1]);
  const parallelism = Number(/^\s*parallelism: (\d+)/m.exec(yaml)?.[1]);
  assert.match(yaml, /^\s*completionMode: Indexed$/m);
  assert.match(yaml, /^\s*backoffLimitPerIndex: \d+/m);
  assert.match(yaml, /^\s*restartPolicy: Never/m); // what backoffLimitPerIndex requires
  assert.ok(parallelism >= 1 && parallelism <= completions);
  const block = /^(\s*)args:\n((?:\1\s+- .*\n)+)/m.exec(yaml)!;
  const args = block[2].trim().split("\n").map((l) => l.trim().replace(/^- /, ""));
  assert.equal(args[0], "examples/stability_sweep.ts");
  const out = args.find((a) => a.startsWith("--out="));
  assert.equal(out, "--out=/out/sweep");
  const io = capture();
  const local = args.slice(1).map((a) => (a === out ? `--out=${DIR}/k8s` : a));
  assert.equal(await sweepMain([...local, "--list"], io), 0, io.err.join("\n"));
  assert.equal(io.out.length, completions);
  assert.match(io.out.at(-1)!, new RegExp(`^${completions - 1}  e8m3 lr 1e-1 seed 2 +to run$`));
});
