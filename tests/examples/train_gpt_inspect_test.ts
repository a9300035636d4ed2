// examples/train_gpt.ts --inspect: a tiny run writes inspect.jsonl (one line per inspected
// step, numbered as the log numbers steps), one heat map per statistic, and links the maps
// from report.md; its losses are those of the same run without the inspector.
import assert from "node:assert/strict";
import { main } from "../../examples/train_gpt.ts";
import { runMain, tinyArgs, tinyText } from "./_fixtures.ts";

const DIR = "./.test-tmp/train_gpt_inspect_test";
const DATA = await tinyText(DIR);
const TINY = tinyArgs({ data: DATA, batch: 4, steps: 4, warmup: 1, "eval-every": 4 })
  .concat(["--sample-tokens", "0", "--precision", "fp8"]);

/** Runs main, its errors after its log in `out`. */
const run = async (args: string[]) => {
  const r = await runMain(main, args);
  return { code: r.code, out: r.out + r.err.map((l) => l + "\n").join("") };
};

const losses = async (dir: string) =>
  (await Deno.readTextFile(`${dir}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l))
    .filter((r) => r.type === "step").map((r) => r.loss);

Deno.test("train_gpt --inspect writes the records, the heat maps and the report's section", async () => {
  const a = await run([...TINY, "--out", `${DIR}/plain`]);
  assert.equal(a.code, 0, a.out);
  const b = await run([...TINY, "--inspect", "2", "--out", `${DIR}/inspect`]);
  assert.equal(b.code, 0, b.out);
  const lines = (await Deno.readTextFile(`${DIR}/inspect/inspect.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l));
  assert.deepEqual(lines.map((r) => r.step), [2, 4]);
  const layers = new Set(lines[0].tensors.map((t: { layer: string }) => t.layer));
  for (const l of ["h.0.attn.c_attn", "h.0.mlp.c_fc", "lm_head", "model"]) assert.ok(layers.has(l));
  assert.equal(lines[0].firstNonFinite, null);
  const report = await Deno.readTextFile(`${DIR}/inspect/report.md`);
  for (const f of ["inspect_e4m3_underflow.svg", "inspect_lost.svg", "inspect_amax.svg"]) {
    assert.ok(report.includes(`](${f})`), f);
    assert.ok((await Deno.readTextFile(`${DIR}/inspect/${f}`)).startsWith("<svg"));
  }
  // the inspector changes no value
  assert.deepEqual(await losses(`${DIR}/inspect`), await losses(`${DIR}/plain`));
});

Deno.test("train_gpt --inspect stopped and resumed keeps the records of the first part", async () => {
  const dir = `${DIR}/resumed`;
  const a = await run([...TINY, "--inspect", "1", "--stop-after", "2", "--out", dir]);
  assert.equal(a.code, 0, a.out);
  const b = await run(["--resume", dir, "--data", DATA]); // --inspect 1 continues
  assert.equal(b.code, 0, b.out);
  const lines = (await Deno.readTextFile(`${dir}/inspect.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l));
  assert.deepEqual(lines.map((r) => r.step), [1, 2, 3, 4]);
  const svg = await Deno.readTextFile(`${dir}/inspect_amax.svg`);
  assert.ok(svg.includes(", step 1: ") && svg.includes(", step 4: "));
});
