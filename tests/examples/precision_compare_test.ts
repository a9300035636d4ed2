// examples/precision_compare.ts takes any subset of the strategies, the FP8 recipes
// (fp8-<recipe>) among them: --list numbers them, and a tiny comparison of two recipes writes
// their rows with the bytes per parameter their strategy stores. A few steps of a tiny model.
import assert from "node:assert/strict";
import { main } from "../../examples/precision_compare.ts";
import type { CliIO } from "../../examples/_cli.ts";
import { FP8_RECIPES, precisionStrategy } from "../../mod.ts";

const DIR = "./.test-tmp/precision_compare_test";
await Deno.remove(DIR, { recursive: true }).catch(() => {});
await Deno.mkdir(DIR, { recursive: true });
const DATA = `${DIR}/text.txt`;
const words = ["the", "loss", "of", "a", "tiny", "model", "falls", "slowly", "and", "then"];
await Deno.writeTextFile(
  DATA,
  Array.from({ length: 400 }, (_, i) => words[(i * 7) % words.length]).join(" "),
);
const TINY = [
  ...["--steps", "4", "--warmup", "1", "--layers", "1", "--heads", "1", "--width", "8"],
  ...["--block", "4", "--batch", "2", "--diag-every", "2", "--data", DATA],
];

async function run(args: string[]): Promise<{ code: number; out: string[]; err: string[] }> {
  const out: string[] = [], err: string[] = [];
  const io: CliIO = { log: (t) => out.push(t), error: (l) => err.push(l) };
  return { code: await main(args, io), out, err };
}

Deno.test("precision_compare --list numbers any subset of strategies and FP8 recipes", async () => {
  const names = [
    "fp8",
    "fp8-current",
    "fp8-block",
    "fp8-mxfp8",
    "fp8-nvfp4",
    "bf16-sr",
    "msamp-o2",
  ];
  const r = await run([...TINY, "--strategies", names.join(","), "--out", `${DIR}/list`, "--list"]);
  assert.equal(r.code, 0, r.err.join("\n"));
  assert.deepEqual(r.out, names.map((n, i) => `${i}  ${n.padEnd(11)}  to run`));
  // every recipe but delayed (which is fp8) has its strategy
  const all = FP8_RECIPES.filter((x) => x !== "delayed").map((x) => `fp8-${x}`).join(",");
  const every = await run([...TINY, "--strategies", all, "--out", `${DIR}/list`, "--list"]);
  assert.equal(every.code, 0, every.err.join("\n"));
  assert.equal(every.out.length, FP8_RECIPES.length - 1);
  const bad = await run([...TINY, "--strategies", "fp8-block,fp8-bogus", "--out", `${DIR}/list`]);
  assert.equal(bad.code, 2);
  assert.match(
    bad.err[0],
    /--strategies unknown value 'fp8-bogus'; valid: .*fp8-block, .*fp8-nvfp4/,
  );
});

Deno.test("precision_compare --strategies fp8-block,fp8-nvfp4 trains both and reports their bytes per parameter", async () => {
  const out = `${DIR}/run`;
  const names = ["fp8-block", "fp8-nvfp4"];
  const r = await run([...TINY, "--strategies", names.join(","), "--out", out]);
  assert.equal(r.code, 0, r.err.join("\n"));
  const { results } = JSON.parse(await Deno.readTextFile(`${out}/results.json`));
  assert.deepEqual(results.map((x: { strategy: string }) => x.strategy), names);
  for (const x of results) {
    // weight + gradient + AdamW's m and v, in the dtypes the strategy stores them in
    const s = precisionStrategy(x.strategy);
    const bytes = (s.param.bits + s.grad.bits + s.stateDtype("expAvg").bits +
      s.stateDtype("expAvgSq").bits) / 8;
    assert.equal(bytes, 16);
    assert.equal(x.bytesPerParam, bytes, x.strategy);
    assert.ok(Number.isFinite(x.valLoss) && x.valLoss > 0, `${x.strategy}: ${x.valLoss}`);
    assert.equal(x.losses.length, 4);
  }
  const report = await Deno.readTextFile(`${out}/report.md`);
  for (const n of names) assert.match(report, new RegExp(`\\| ${n} +\\| \\d\\.\\d{4} \\|`));
});
