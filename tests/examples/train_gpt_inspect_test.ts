// examples/train_gpt.ts --inspect: a tiny run writes inspect.jsonl (one line per inspected
// step, numbered as the log numbers steps), one heat map per statistic, and links the maps
// from report.md; its losses are those of the same run without the inspector.
import assert from "node:assert/strict";
import { main } from "../../examples/train_gpt.ts";
import type { CliIO } from "../../examples/_cli.ts";

const DIR = "./.test-tmp/train_gpt_inspect_test";
await Deno.remove(DIR, { recursive: true }).catch(() => {});
await Deno.mkdir(DIR, { recursive: true });
const DATA = `${DIR}/text.txt`;
const words = ["tensor", "grad", "step", "loss", "bf16", "scale", "update", "round"];
await Deno.writeTextFile(
  DATA,
  Array.from({ length: 600 }, (_, i) => words[(i * i + 3 * i) % words.length]).join(" "),
);
const TINY = ["--data", DATA, "--layers", "1", "--heads", "2", "--width", "16", "--block", "8"]
  .concat(["--batch", "4", "--steps", "4", "--warmup", "1", "--eval-every", "4"])
  .concat(["--sample-tokens", "0", "--precision", "fp8"]);

async function run(args: string[]): Promise<{ code: number; out: string }> {
  let out = "";
  const io: CliIO = { log: (t) => (out += t + "\n"), error: (l) => (out += l + "\n") };
  return { code: await main(args, io), out };
}

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
