// examples/demo.ts on a tiny model: its report folder holds a table whose numbers are those of
// its own log (recomputed here from log.jsonl), a chart, the log of every step of every
// strategy, and a sample per strategy; without write permission it names the flag to add.
import assert from "node:assert/strict";
import { main } from "../../examples/demo.ts";
import { runMain, tinyArgs } from "./_fixtures.ts";

const OUT = "./.test-tmp/demo_test";
await Deno.remove(OUT, { recursive: true }).catch(() => {});
const TINY = tinyArgs({ batch: 2, steps: 4, warmup: 1, "diag-every": 2, "sample-tokens": 6 });

const run = (args: string[]) => runMain(main, args);

Deno.test("the demo writes a report whose table matches its log, a chart, the log and samples", async () => {
  const r = await run([...TINY, "--out", OUT]);
  assert.equal(r.code, 0, r.err.join("\n"));
  assert.match(r.out, /Report: \.\/\.test-tmp\/demo_test\/report\.md/);
  const log = (await Deno.readTextFile(`${OUT}/log.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  const report = await Deno.readTextFile(`${OUT}/report.md`);
  for (const s of ["bf16", "collage-light", "amp-bf16"]) {
    const steps = log.filter((x) => x.strategy === s && x.type === "step");
    assert.deepEqual(steps.map((x) => x.step), [1, 2, 3, 4]);
    const evals = log.filter((x) => x.strategy === s && x.type === "eval");
    assert.equal(evals.length, 1);
    const diag = steps.filter((x) => x.imprecision !== undefined);
    assert.deepEqual(diag.map((x) => x.step), [2, 4]);
    const lost = diag.reduce((a, x) => a + x.imprecision, 0) / diag.length;
    const row = report.split("\n").find((l) => l.startsWith(`| ${s} |`));
    assert.ok(row, `a row for ${s}`);
    const cells = row.split("|").map((c) => c.trim());
    assert.equal(cells[2], evals[0].valLoss.toFixed(4));
    assert.equal(cells[4], `${(100 * lost).toFixed(1)}%`);
  }
  const expectedBytes = { "bf16": "8", "collage-light": "10", "amp-bf16": "16" };
  for (const [s, b] of Object.entries(expectedBytes)) {
    const row = report.split("\n").find((l) => l.startsWith(`| ${s} |`))!;
    assert.equal(row.split("|")[6].trim(), b, `${s} bytes/param`);
  }
  const svg = await Deno.readTextFile(`${OUT}/loss.svg`);
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.equal(svg.match(/<path /g)?.length, 9, "three panels of three lines");
  const sample = await Deno.readTextFile(`${OUT}/sample.txt`);
  assert.deepEqual(sample.match(/^--- [\w-]+ ---$/gm), [
    "--- bf16 ---",
    "--- collage-light ---",
    "--- amp-bf16 ---",
  ]);
});

Deno.test("the demo without permission to write its folder names the flag, exit code 2", async () => {
  const r = await run([...TINY, "--out", "./out-nowrite/demo"]);
  assert.equal(r.code, 2);
  assert.match(
    r.err[0],
    /^demo: no permission to write the report folder \(--out\) '\.\/out-nowrite\/demo'; run deno with --allow-write=\.\/out-nowrite\/demo/,
  );
});
