// examples/stability_sweep.ts (and its _sweep.ts): the divergence rule on synthetic curves, the
// summary against hand-computed values, and main() on a tiny grid (a tiny GPT, a few steps) on
// the real adapter: its table, JSON and chart against its own cell files, resuming without
// re-running finished cells, taking over an older version's cells.jsonl, and one-line errors
// for bad values. Cells run as separate processes and merged: tests/examples/sweep_cells_test.ts.
import assert from "node:assert/strict";
import { main } from "../../examples/stability_sweep.ts";
import type { CliIO } from "../../examples/_cli.ts";
import {
  type CellRecord,
  divergenceStep,
  resultsTable,
  summarize,
  type SweepConfig,
} from "../../examples/_sweep.ts";

const DIR = "./.test-tmp/stability_sweep";

function capture(): CliIO & { out: string[]; err: string[] } {
  const out: string[] = [], err: string[] = [];
  return { out, err, log: (s) => out.push(s), error: (s) => err.push(s) };
}

Deno.test("divergenceStep() flags NaN/Inf and losses above factor x the running minimum", () => {
  assert.equal(divergenceStep([4.6, 3.1, 2.5, 2.7, 2.4], 2), null);
  assert.equal(divergenceStep([4.6, 3.0, 2.0, 3.9, 4.01, 9], 2), 5); // 4.01 > 2 x 2.0
  assert.equal(divergenceStep([4.6, 3.0, 2.0, 3.9], 1.5), 4); // 3.9 > 1.5 x 2.0
  assert.equal(divergenceStep([4.6, 3.0, NaN, 2.0], 2), 3);
  assert.equal(divergenceStep([4.6, Infinity], 2), 2);
  assert.equal(divergenceStep([1, 1.9, 2.1], 2), 3); // the minimum includes the first loss
  assert.equal(divergenceStep([], 2), null);
});

const CFG: SweepConfig = {
  data: "",
  dataChecksum: "0:0",
  steps: 3,
  batch: 1,
  block: 1,
  layers: 1,
  heads: 1,
  width: 1,
  warmup: 0,
  rounding: "rne",
  divergeFactor: 2,
  sharpnessEvery: 1,
  sharpnessEps: 1e-3,
  evalBatches: 1,
};

function cell(format: string, lr: number, seed: number, finalLoss: number, div: number | null) {
  return {
    format,
    lr,
    seed,
    config: CFG,
    divergedAt: div,
    finalLoss,
    maxSharpness: seed / 10,
    loss: [],
    sharpness: [],
    msPerStep: 1,
  } satisfies CellRecord;
}

Deno.test("summarize() counts diverged runs and takes mean and spread over the others", () => {
  const cells = [
    cell("bf16", 1e-3, 1, 2.0, null),
    cell("bf16", 1e-3, 2, 2.2, null),
    cell("bf16", 1e-3, 3, NaN, 40),
    cell("e8m3", 1e-3, 1, NaN, 10),
    cell("e8m3", 1e-2, 1, 2.5, null),
  ];
  const [a, a2, b, b2] = summarize(cells, ["bf16", "e8m3"], [1e-3, 1e-2]);
  assert.deepEqual([a.format, a.runs, a.diverged, a.finalLoss.n], ["bf16", 3, 1, 2]);
  assert.ok(Math.abs(a.finalLoss.mean - 2.1) < 1e-12);
  assert.ok(Math.abs(a.finalLoss.std - Math.sqrt(0.02)) < 1e-12); // sample std of 2.0, 2.2
  assert.equal(a.maxSharpness, 0.3);
  assert.deepEqual([a2.format, a2.lr, a2.runs], ["bf16", 1e-2, 0]);
  assert.deepEqual([b.runs, b.diverged, b.finalLoss.n], [1, 1, 0]);
  assert.ok(Number.isNaN(b.finalLoss.mean));
  assert.deepEqual([b2.runs, b2.diverged, b2.finalLoss.mean, b2.finalLoss.std], [1, 0, 2.5, 0]);
  const md = resultsTable([a, a2, b, b2]);
  assert.match(md, /\| bf16 \| 1e-3 \| 1 \/ 3 \| 2\.100 ± 0\.141 \| 0\.300 \|/);
  assert.match(md, /\| bf16 \| 1e-2 \| 0 \/ 0 \| n\/a \| n\/a \|/);
  assert.match(md, /\| e8m3 \| 1e-2 \| 0 \/ 1 \| 2\.500 \(1 run\) \| 0\.100 \|/);
  assert.match(md, /\| e8m3 \| 1e-3 \| 1 \/ 1 \| n\/a \| 0\.100 \|/);
});

Deno.test("main() rejects bad values with one line naming the flag and the valid values", async () => {
  const bad: [string[], RegExp][] = [
    [["--formats", "bf16,f13"], /--formats has a bad value 'f13'; valid: float formats/],
    [["--formats", "i32"], /--formats has a bad value 'i32'/],
    [["--lrs", "1e-3,-1"], /--lrs has a bad value '-1'; valid: positive numbers/],
    [["--rounding", "up"], /--rounding unknown value 'up'; valid: rne, truncate, stochastic/],
    [["--diverge-factor", "1"], /--diverge-factor must be a number > 1/],
    [["--seeds", "0"], /--seeds must be an integer >= 1/],
    [["--width", "10", "--heads", "4"], /--width 10 must be a multiple of --heads 4/],
    [["--colour"], /Unknown option '--colour'/],
  ];
  for (const [args, re] of bad) {
    const io = capture();
    assert.equal(await main(args, io), 2, args.join(" "));
    assert.equal(io.err.length, 1);
    assert.match(io.err[0], re);
    assert.match(io.err[0], /^stability_sweep: /);
  }
  const io = capture();
  assert.equal(await main(["--help"], io), 0);
  assert.match(io.out[0], /--diverge-factor .* \(default 2\)/);
});

Deno.test("main() on a tiny grid writes table, JSON and chart from its cell files and resumes", async () => {
  await Deno.remove(DIR, { recursive: true }).catch(() => {});
  await Deno.mkdir(DIR, { recursive: true });
  const words = ["the", "loss", "of", "a", "tiny", "model", "falls", "slowly", "and", "then"];
  await Deno.writeTextFile(
    `${DIR}/data.txt`,
    Array.from({ length: 400 }, (_, i) => words[(i * 7) % words.length]).join(" "),
  );
  const out = `${DIR}/out`;
  const args = (formats: string, steps = "6") => [
    ...["--formats", formats, "--lrs", "3e-3", "--seeds", "1", "--steps", steps, "--warmup", "2"],
    ...["--layers", "1", "--heads", "1", "--width", "8", "--block", "4", "--batch", "2"],
    ...["--eval-batches", "2", "--sharpness-every", "2", "--data", `${DIR}/data.txt`],
    ...["--out", out],
  ];
  const cellFiles = async () => {
    const names: string[] = [];
    for await (const e of Deno.readDir(`${out}/cells`)) names.push(e.name);
    return names.sort();
  };
  const io1 = capture();
  assert.equal(await main(args("bf16"), io1), 0);
  assert.match(io1.out[0], /^1 cell: 0 done, 1 to run$/);
  assert.match(
    io1.out[1],
    /^\[1\/1\] cell 0 bf16 lr 3e-3 seed 1: val loss \d\.\d{4}, .*\(elapsed /,
  );
  const [bf16File] = await cellFiles();
  assert.match(bf16File, /^bf16-lr3e-3-seed1\.[0-9a-f]{8}\.json$/);
  const first = await Deno.readTextFile(`${out}/cells/${bf16File}`);
  const firstTime = (await Deno.stat(`${out}/cells/${bf16File}`)).mtime;

  // A second format: only its cell runs; the first cell's file stays as it was.
  const io2 = capture();
  assert.equal(await main(args("bf16,e8m3"), io2), 0);
  assert.match(io2.out[0], /^2 cells: 1 done, 1 to run$/);
  const files = await cellFiles();
  assert.deepEqual(files.map((f) => f.replace(/\.[0-9a-f]{8}\./, ".H.")), [
    "bf16-lr3e-3-seed1.H.json",
    "e8m3-lr3e-3-seed1.H.json",
  ]);
  assert.equal(await Deno.readTextFile(`${out}/cells/${bf16File}`), first);
  assert.deepEqual((await Deno.stat(`${out}/cells/${bf16File}`)).mtime, firstTime);
  const cells = await Promise.all(
    files.map(async (f) => JSON.parse(await Deno.readTextFile(`${out}/cells/${f}`))),
  );
  assert.deepEqual(cells.map((c) => c.format), ["bf16", "e8m3"]);
  for (const c of cells) {
    assert.equal(c.divergedAt, divergenceStep(c.loss, 2));
    if (c.divergedAt === null) assert.equal(c.loss.length, 6);
    assert.deepEqual(c.sharpness.map((p: number[]) => p[0]), [2, 4, 6].slice(0, c.loss.length / 2));
    for (const [, phi] of c.sharpness) assert.ok(phi > 0 && phi < 10, `sharpness ${phi}`);
    assert.equal(c.maxSharpness, Math.max(...c.sharpness.map((p: number[]) => p[1])));
    assert.ok(c.loss.every((l: number) => l > 0 && l < 10));
  }

  // The table (report.md, as the other examples name it) and the JSON agree with the cells.
  const json = JSON.parse(await Deno.readTextFile(`${out}/results.json`));
  assert.deepEqual(json.cells, cells);
  const md = await Deno.readTextFile(`${out}/report.md`);
  assert.match(md, /^# Stability sweep\n\n1 layer, 1 head, width 8, .* 6 steps; .* 1 seed; /);
  for (const [i, c] of cells.entries()) {
    const row = json.rows[i];
    const div = c.divergedAt === null ? 0 : 1;
    assert.deepEqual([row.format, row.lr, row.runs, row.diverged], [c.format, 3e-3, 1, div]);
    assert.equal(row.maxSharpness, c.maxSharpness);
    const loss = div ? "n/a" : `${c.finalLoss.toFixed(3)} (1 run)`;
    if (!div) assert.equal(row.finalLoss.mean, c.finalLoss);
    const line = `| ${c.format} | 3e-3 | ${div} / 1 | ${loss} | ${c.maxSharpness.toFixed(3)} |`;
    assert.ok(md.includes(line), `${line} not in\n${md}`);
  }
  const svg = await Deno.readTextFile(`${out}/loss.svg`);
  assert.equal(svg.match(/<svg x=/g)?.length, 2); // one panel per format
  assert.ok(svg.includes("bf16: training loss") && svg.includes("e8m3: training loss"));
  assert.ok(svg.includes(">lr 3e-3"));

  // A rerun runs nothing; a cell file made with other settings, and an older version's
  // cells.jsonl with a line of other settings and a line cut short, are ignored and named.
  const moved = { ...cells[0], config: { ...cells[0].config, steps: 7 } };
  await Deno.writeTextFile(`${out}/cells/bf16-lr3e-3-seed1.0badcafe.json`, JSON.stringify(moved));
  await Deno.writeTextFile(`${out}/cells.jsonl`, JSON.stringify(moved) + '\n{"format":"bf1');
  const io3 = capture();
  assert.equal(await main(args("bf16,e8m3"), io3), 0);
  assert.equal(
    io3.out[0],
    `2 cells: 2 done, 0 to run (1 line of ${out}/cells.jsonl ignored: other steps; 1 unreadable ` +
      `line of ${out}/cells.jsonl ignored; 1 cell file of other settings ignored (other steps))`,
  );
  const again = JSON.parse(await Deno.readTextFile(`${out}/results.json`));
  assert.deepEqual(again.rows, json.rows);

  // An older version's output: cells.jsonl lines of these settings become cell files.
  await Deno.remove(`${out}/cells`, { recursive: true });
  await Deno.writeTextFile(
    `${out}/cells.jsonl`,
    cells.map((c) => JSON.stringify(c) + "\n").join(""),
  );
  await Deno.writeTextFile(`${out}/results.md`, "an older version's table");
  const io4 = capture();
  assert.equal(await main(args("bf16,e8m3"), io4), 0);
  assert.equal(io4.out[0], `2 cells: 2 done, 0 to run (2 cells taken from ${out}/cells.jsonl)`);
  assert.deepEqual(await cellFiles(), files);
  assert.equal(await Deno.readTextFile(`${out}/cells/${bf16File}`), first);
  assert.deepEqual(JSON.parse(await Deno.readTextFile(`${out}/results.json`)).rows, json.rows);
  assert.match(io4.out.at(-1)!, /results\.md is an older version's table, left as it was/);
});
