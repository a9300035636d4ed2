// examples/train_gpt.ts as a user meets it: a run stopped half way and resumed (with a
// GradScaler, Collage's low parts, FP8 scaling state) logs the same losses, bit for bit, as an
// uninterrupted one; bad flags get one line naming the flag and exit code 2; a missing write
// permission is named with the flag to add; --stop-on-nan names the step of the first
// non-finite loss. Tiny models on a small text, a few seconds each.
import assert from "node:assert/strict";
import { main } from "../../examples/train_gpt.ts";
import { runMain, tinyArgs, tinyText } from "./_fixtures.ts";
import { readCheckpoint } from "../../mod.ts";
import { Progress } from "../../examples/_progress.ts";

const DIR = "./.test-tmp/train_gpt_test";
const DATA = await tinyText(DIR);
const TINY = tinyArgs({
  data: DATA,
  batch: 4,
  steps: 8,
  warmup: 2,
  "eval-every": 4,
  "checkpoint-every": 3,
  "sample-tokens": 0,
});

/** Runs main, capturing its output. */
const run = (args: string[]) => runMain(main, args);

async function log(dir: string): Promise<Record<string, unknown>[]> {
  const text = await Deno.readTextFile(`${dir}/log.jsonl`);
  return text.trim().split("\n").map((l) => JSON.parse(l));
}

for (const precision of ["amp-f16", "collage-plus", "fp8", "fp8-nvfp4"]) {
  Deno.test(`train_gpt --precision ${precision}: stopped at step 4 and resumed, it logs the losses of an uninterrupted run bit for bit`, async () => {
    const full = `${DIR}/${precision}-full`, half = `${DIR}/${precision}-half`;
    const a = await run([...TINY, "--precision", precision, "--out", full]);
    assert.equal(a.code, 0, a.err.join("\n"));
    const b = await run([...TINY, "--precision", precision, "--out", half, "--stop-after", "4"]);
    assert.equal(b.code, 0, b.err.join("\n"));
    assert.match(b.out, /stopped after step 4/);
    assert.equal((await readCheckpoint(`${half}/checkpoint.json`)).step, 4);
    const c = await run(["--resume", half]);
    assert.equal(c.code, 0, c.err.join("\n"));
    assert.match(c.out, /resumed from .* at step 4/);

    const la = await log(full), lb = await log(half);
    const steps = la.filter((r) => r.type === "step");
    assert.deepEqual(steps.map((r) => r.step), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.ok(steps.every((r) => typeof r.loss === "number" && Number.isFinite(r.loss)));
    const key = (r: Record<string, unknown>) => [r.type, r.step, r.loss ?? r.valLoss, r.scale];
    assert.deepEqual(lb.map(key), la.map(key));
    const evals = la.filter((r) => r.type === "eval").map((r) => r.step);
    assert.deepEqual(evals, [4, 8]);
    // the run's report lives in its folder
    for (const f of ["report.md", "loss.svg", "checkpoint.json"]) await Deno.stat(`${half}/${f}`);
  });
}

Deno.test("train_gpt refuses bad flags with one line naming the flag and the valid values, exit code 2", async () => {
  const cases: [string[], RegExp][] = [
    [["--steps", "0"], /--steps must be an integer >= 1, got '0'/],
    [["--lr", "fast"], /--lr must be a positive number, got 'fast'/],
    [
      ["--precision", "fp64"],
      /--precision unknown value 'fp64'; valid: fp32, bf16, .*amp-bf16, .*collage-plus, .*fp8-nvfp4, eXmY/,
    ],
    [["--rounding", "up"], /--rounding unknown value 'up'; valid: rne, truncate, stochastic/],
    [["--width", "30", "--heads", "4"], /--width \(30\) must be a multiple of --heads \(4\)/],
    [["--bogus"], /Unknown option '--bogus'/],
    [["--steps"], /--steps/],
    [["--resume", `${DIR}/nowhere`], /--resume: no checkpoint at '.*nowhere\/checkpoint.json'/],
  ];
  for (const [args, re] of cases) {
    const r = await run(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.err}`);
    assert.equal(r.err.length, 1, `${args.join(" ")}: ${r.err}`);
    assert.ok(!r.err[0].includes("\n"), r.err[0]);
    assert.match(r.err[0], /^train_gpt: /);
    assert.match(r.err[0], re);
  }
  const help = await run(["--help"]);
  assert.equal(help.code, 0);
  for (const flag of ["--precision", "--resume", "--log-precision", "--stop-on-nan", "--out"]) {
    assert.ok(help.out.includes(flag), flag);
  }
});

Deno.test("train_gpt without permission to write --out says which path and which flag, exit code 2", async () => {
  const r = await run([...TINY, "--out", "./out-nowrite"]);
  assert.equal(r.code, 2);
  assert.deepEqual(r.err, [
    "train_gpt: no permission to write the output folder (--out) './out-nowrite'; run deno " +
    "with --allow-write=./out-nowrite (or a folder that contains it)",
  ]);
  await assert.rejects(Deno.stat("./out-nowrite"));
});

Deno.test("train_gpt --resume with a flag that changes the run names the flag, exit code 2", async () => {
  const dir = `${DIR}/amp-f16-half`;
  const r = await run(["--resume", dir, "--lr", "0.5"]);
  assert.equal(r.code, 2);
  assert.match(r.err[0], /--lr 0.5 differs from the checkpoint's 0.003/);
});

Deno.test("train_gpt --stop-on-nan stops at the first non-finite loss and names its step", async () => {
  const out = `${DIR}/nan`;
  const r = await run([
    ...TINY,
    "--precision",
    "fp32",
    "--lr",
    "1e30",
    "--out",
    out,
    "--stop-on-nan",
  ]);
  assert.equal(r.code, 1);
  const steps = (await log(out)).filter((x) => x.type === "step");
  const first = steps.find((x) => typeof x.loss !== "number");
  assert.ok(first, "a non-finite loss was logged");
  assert.equal(steps.at(-1), first, "nothing after it");
  assert.match(
    r.err[0],
    new RegExp(`the loss is (NaN|Infinity) at step ${first.step} \\(--stop-on-nan\\)`),
  );
});

Deno.test("progress is one live line on a terminal, and a plain line every N steps otherwise", () => {
  let live = "";
  const p = new Progress({ total: 30, live: true, write: (t) => (live += t) });
  for (let s = 1; s <= 30; s++) p.update(s, { loss: 2.5, tokens: 100, ms: 10, scale: 1024 });
  assert.ok(!live.includes("\n"), "no new line while it runs");
  assert.equal(live.split("\r").length - 1, 30);
  assert.equal(
    live.split("\r").at(-1),
    "step 30/30  loss 2.5000  10000 tok/s  ETA 0s  scale 1024\x1b[K",
  );
  p.note("step 30: validation loss 2.4");
  assert.ok(live.endsWith("\r\x1b[Kstep 30: validation loss 2.4\n"));
  let plain = "";
  const q = new Progress({ total: 25, live: false, every: 10, write: (t) => (plain += t) });
  for (let s = 1; s <= 25; s++) q.update(s, { loss: 1, tokens: 50, ms: 100 });
  q.done();
  assert.deepEqual(plain.trim().split("\n").map((l) => l.split("  ")[0]), [
    "step 1/25",
    "step 10/25",
    "step 20/25",
    "step 25/25",
  ]);
  assert.match(plain, /step 10\/25 {2}loss 1.0000 {2}500 tok\/s {2}ETA 2s\n/);
});

Deno.test("train_gpt --log-sharpness N logs the batch's last-token sharpness every N steps", async () => {
  const dir = `${DIR}/sharpness`;
  const r = await run([...TINY, "--precision", "bf16", "--log-sharpness", "3", "--out", dir]);
  assert.equal(r.code, 0, r.err.join("\n"));
  const steps = (await log(dir)).filter((x) => x.type === "step");
  const logged = steps.filter((x) => "sharpness" in x);
  assert.deepEqual(logged.map((x) => x.step), [3, 6]);
  // phi = 100 (CE(z*) - CE(z)) / (1 + CE(z)) > 0 at eps 1e-3, and small for a near-uniform model
  for (const x of logged) assert.ok((x.sharpness as number) > 0 && (x.sharpness as number) < 10);
});
