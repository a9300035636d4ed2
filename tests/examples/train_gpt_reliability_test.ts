// train_gpt against hostile checkpoints, shared folders, blow-ups and file-system states
// (issue #18): every case ends in one line naming the problem and an exit code, never a stack
// trace; nothing of another run is overwritten; a hand-edited checkpoint is refused before
// anything is built; a blow-up is named with its step and the run's real last good
// checkpoint. Tiny models on a small text, about a second per run.
import assert from "node:assert/strict";
import { main } from "../../examples/train_gpt.ts";
import { type Run, runMain, tinyArgs, tinyText } from "./_fixtures.ts";
import { lockRunFolder } from "../../examples/_run_folder.ts";
import { readCheckpoint, setMemoryLimit } from "../../mod.ts";

const DIR = "./.test-tmp/train_gpt_reliability";
const DATA = await tinyText(DIR);
const TINY = tinyArgs({
  data: DATA,
  batch: 4,
  steps: 6,
  warmup: 2,
  "eval-every": 6,
  "checkpoint-every": 3,
  "sample-tokens": 0,
});

/** Runs main, capturing its output. */
const run = (args: string[]) => runMain(main, args);

/** A refusal: the exit code, one line that begins with the program's name, no stack trace. */
function refused(r: Run, code: number, re: RegExp): void {
  assert.equal(r.code, code, r.err.join("\n"));
  assert.equal(r.err.length, 1, r.err.join("\n"));
  assert.ok(!r.err[0].includes("\n") && !/\n\s+at /.test(r.err[0]), r.err[0]);
  assert.match(r.err[0], /^train_gpt: /);
  assert.match(r.err[0], re);
}

async function files(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile) out[e.name] = new TextDecoder().decode(await Deno.readFile(`${dir}/${e.name}`));
  }
  return out;
}

/** A finished run of TINY in `dir` (made once per name). */
const made = new Map<string, Promise<void>>();
function finished(name: string, extra: string[] = []): Promise<string> {
  const dir = `${DIR}/${name}`;
  if (!made.has(name)) {
    made.set(
      name,
      run([...TINY, ...extra, "--out", dir]).then((r) => assert.equal(r.code, 0, r.err.join())),
    );
  }
  return made.get(name)!.then(() => dir);
}

/** A copy of a finished run whose checkpoint.json is edited by `edit`. */
async function tampered(name: string, edit: (j: Record<string, unknown>) => void) {
  const src = await finished("base");
  const dir = `${DIR}/t-${name}`;
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir);
  for (const [f, text] of Object.entries(await files(src))) {
    if (f.endsWith(".safetensors")) await Deno.copyFile(`${src}/${f}`, `${dir}/${f}`);
    else await Deno.writeTextFile(`${dir}/${f}`, text);
  }
  const j = JSON.parse(await Deno.readTextFile(`${dir}/checkpoint.json`));
  edit(j);
  await Deno.writeTextFile(`${dir}/checkpoint.json`, JSON.stringify(j));
  return dir;
}

Deno.test("a hand-edited checkpoint.json is refused before anything is built, in a short line", async () => {
  type J = {
    step: number;
    data: Record<string, unknown>;
    meta: { config: Record<string, unknown>; options: Record<string, unknown> };
  };
  const cases: [string, (j: J) => void, number, RegExp][] = [
    [
      "position-huge",
      (j) => (j.data.position = 1e15),
      1,
      /its data position 1000000000000000 is not its step 6 \(one batch per step\)/,
    ],
    ["position-negative", (j) => (j.data.position = -50), 1, /data position -50 is not its step/],
    [
      "step-beyond",
      (j) => {
        j.step = 500;
        j.data.position = 500;
      },
      1,
      /its step 500 is beyond the run's 6 steps/,
    ],
    [
      "batch-0",
      (j) => (j.meta.config.batch = 0),
      2,
      /the run's configuration is invalid: batch \(--batch\) must be an integer >= 1, got '0'/,
    ],
    [
      "layers-3000",
      (j) => (j.meta.config.nLayer = 3000),
      2,
      /nLayer \(--layers\) must be an integer <= 1024, got '3000'/,
    ],
    [
      "lr-string",
      (j) => (j.meta.config.lr = "fast"),
      2,
      /lr \(--lr\) must be a number, got "fast"/,
    ],
    [
      "precision-bf16",
      (j) => (j.meta.config.precision = "bf16"),
      1,
      /'wte\.weight' has dtype f32 in the checkpoint, bf16 in the model; build the model in the precision the run saved/,
    ],
    [
      "options",
      (j) => (j.meta.options["eval-every"] = "0"),
      2,
      /the checkpoint's options are invalid \(--eval-every "0"\)/,
    ],
  ];
  for (const [name, edit, code, re] of cases) {
    const dir = await tampered(name, edit as unknown as (j: Record<string, unknown>) => void);
    const t0 = performance.now();
    const r = await run(["--resume", dir]);
    refused(r, code, re);
    assert.ok(r.err[0].length < 600, `${name}: ${r.err[0].length} characters`);
    assert.ok(performance.now() - t0 < 20_000, `${name}: refused in ${performance.now() - t0} ms`);
    // nothing was trained or written
    assert.deepEqual(
      (await readCheckpoint(`${dir}/checkpoint.json`)).step,
      name === "step-beyond" ? 500 : 6,
    );
  }
});

Deno.test("one writer per run folder: a second trainer is refused naming the holder; a stale lock is taken over and reported", async () => {
  const dir = `${DIR}/shared`;
  await Deno.mkdir(dir, { recursive: true });
  const lock = await lockRunFolder("other_trainer", dir);
  const r = await run([...TINY, "--out", dir]);
  refused(
    r,
    1,
    new RegExp(
      `the folder '${dir}' is in use by another run: other_trainer \\(pid ${Deno.pid}, ` +
        `started \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z\\) holds its lock`,
    ),
  );
  assert.deepEqual(Object.keys(await files(dir)), [".lock"], "the refused run wrote nothing");
  await lock.release();
  // a lock file left by a process that is gone (killed before it could remove it)
  const stale = { program: "train_gpt", pid: 999999, started: "2026-01-01T00:00:00.000Z" };
  await Deno.writeTextFile(`${dir}/.lock`, JSON.stringify(stale));
  const ok = await run([...TINY, "--out", dir]);
  assert.equal(ok.code, 0, ok.err.join("\n"));
  assert.match(
    ok.out,
    /note: .*shared\/\.lock was left by train_gpt \(pid 999999, started 2026-01-01T00:00:00\.000Z\), which no longer holds it/,
  );
  await assert.rejects(Deno.stat(`${dir}/.lock`), "the lock is removed at the end");
});

Deno.test("two trainer processes on one folder: the second is refused, the first's log and checkpoint are its own", async () => {
  const dir = `${DIR}/two-procs`;
  const child = new Deno.Command("deno", {
    args: [
      "run",
      "--allow-read=.",
      "--allow-write=./.test-tmp",
      "--allow-env",
      "examples/train_gpt.ts",
      ...TINY.map((a) => (a === "6" ? "40" : a)), // 40 steps: long enough to meet
      "--out",
      dir,
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // wait until the child holds the folder
  for (let i = 0; i < 600; i++) {
    const text = await Deno.readTextFile(`${dir}/.lock`).catch(() => "");
    if (text.includes('"pid"')) break;
    await new Promise((res) => setTimeout(res, 50));
  }
  const r = await run([...TINY, "--out", dir]);
  const status = await child.output();
  assert.equal(status.code, 0, new TextDecoder().decode(status.stderr));
  refused(r, 1, /is in use by another run: train_gpt \(pid \d+, started/);
  const steps = (await Deno.readTextFile(`${dir}/log.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  ).filter((x) => x.type === "step").map((x) => x.step);
  assert.deepEqual(steps, Array.from({ length: 40 }, (_, i) => i + 1), "one run's steps, in order");
  assert.equal((await readCheckpoint(`${dir}/checkpoint.json`)).step, 40);
});

Deno.test("a new run never overwrites another run's folder; --resume A --out B copies into an empty B or is refused", async () => {
  const a = await finished("base");
  const before = await files(a);
  refused(
    await run([...TINY, "--out", a]),
    2,
    /--out '.*base' already holds a run \(checkpoint\.json at step 6\); continue it with --resume/,
  );
  // a non-empty B is refused and left as it was
  const busy = `${DIR}/busy`;
  await Deno.mkdir(busy, { recursive: true });
  await Deno.writeTextFile(`${busy}/notes.txt`, "mine");
  refused(
    await run(["--resume", a, "--out", busy, "--steps", "6"]),
    2,
    /--resume with --out '.*busy': the folder is not empty \(it holds "notes\.txt"\)/,
  );
  assert.deepEqual(await files(busy), { "notes.txt": "mine" });
  // an empty (or new) B gets a copy, which continues; A is untouched
  const half = await finished("half", ["--stop-after", "3"]);
  const halfBefore = await files(half);
  const b = `${DIR}/copy`;
  const r = await run(["--resume", half, "--out", b]);
  assert.equal(r.code, 0, r.err.join("\n"));
  assert.match(r.out, /copied the run of .*half\/checkpoint\.json into .*copy\//);
  assert.deepEqual(await files(half), halfBefore, "the original run is left as it was");
  assert.deepEqual(await files(a), before);
  const steps = (await Deno.readTextFile(`${b}/log.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  ).filter((x) => x.type === "step").map((x) => x.step);
  assert.deepEqual(steps, [1, 2, 3, 4, 5, 6]);
  assert.equal((await readCheckpoint(`${b}/checkpoint.json`)).step, 6);
});

Deno.test("file-system states end in one line and an exit code, never a stack trace", async () => {
  const file = `${DIR}/a-file`;
  await Deno.writeTextFile(file, "x");
  const a = await finished("base");
  const dirAsJson = `${DIR}/weird/checkpoint.json`;
  await Deno.mkdir(dirAsJson, { recursive: true });
  const st = (await Array.fromAsync(Deno.readDir(a))).find((e) => e.name.endsWith(".safetensors"))!;
  await Deno.mkdir(`${DIR}/swapped`, { recursive: true });
  await Deno.copyFile(`${a}/${st.name}`, `${DIR}/swapped/checkpoint.json`); // files swapped
  const cases: [string[], number, RegExp][] = [
    [[...TINY, "--out", file], 2, /--out '.*a-file' is a file, not a folder/],
    [[...TINY, "--out", `${file}/sub`], 2, /--out: cannot create the folder '.*a-file\/sub'/],
    [["--resume", `${DIR}/weird`], 1, /is not a file; pass the checkpoint's \.json/],
    [["--resume", `${a}/${st.name}`], 1, /Not a directory \(os error 20\): stat/],
    [["--resume", `${DIR}/swapped`], 1, /not a checkpoint: this is a safetensors file/],
    [[...TINY, "--data", DIR, "--out", `${DIR}/data-dir`], 2, /--data: cannot read/],
  ];
  for (const [args, code, re] of cases) refused(await run(args), code, re);
});

Deno.test("missing permissions are all named at once, before any work", async () => {
  const r = await run([...TINY, "--data", "/etc/hostname", "--out", "./out-nowrite"]);
  refused(
    r,
    2,
    /no permission to read the data \(--data\) '\/etc\/hostname', write the output folder \(--out\) '\.\/out-nowrite'; run deno with --allow-read=\/etc\/hostname --allow-write=\.\/out-nowrite/,
  );
  await assert.rejects(Deno.stat("./out-nowrite"));
});

Deno.test("data that changed is refused without quoting it", async () => {
  const half = `${DIR}/secret-run`;
  const data = `${DIR}/secret.txt`;
  await Deno.copyFile(DATA, data);
  const a = await run([...TINY, "--data", data, "--out", half, "--stop-after", "3"]);
  assert.equal(a.code, 0, a.err.join());
  await Deno.writeTextFile(data, "root:x:0:0:root:/root:/bin/bash\n");
  const r = await run(["--resume", half]);
  assert.equal(r.code, 2);
  assert.match(r.err[0], /distinct characters outside the saved vocabulary/);
  assert.ok(!/root|bash/.test(r.err.join("").replace(DIR, "")), r.err.join());
});

Deno.test("an amp-f16 blow-up is named: a warning, and with --stop-on-nan a stop at its step naming the real last good checkpoint", async () => {
  // every step after the first overflows (lr 1e9): the scale backs off until 10 are skipped
  const blow = [
    "--precision",
    "amp-f16",
    "--lr",
    "1e9",
    "--steps",
    "30",
    "--checkpoint-every",
    "1",
  ];
  const stop = await run([...TINY, ...blow, "--out", `${DIR}/blowup-stop`, "--stop-on-nan"]);
  assert.equal(stop.code, 1, stop.err.join("\n"));
  const line = stop.err.at(-1)!;
  const m =
    /^train_gpt: stopped at step (\d+): 10 consecutive steps were skipped \(Inf\/NaN gradients; the scale backed off to ([\d.e-]+)\) at step \1 \(--stop-on-nan\); (.*)$/
      .exec(line);
  assert.ok(m, line);
  const log = (await Deno.readTextFile(`${DIR}/blowup-stop/log.jsonl`)).trim().split("\n").map(
    (l) => JSON.parse(l),
  );
  const steps = log.filter((x) => x.type === "step");
  assert.equal(steps.at(-1).step, Number(m[1]), "nothing after the stop");
  // the scale halves on every skipped step: ten halvings from the scale before the streak
  const scales = steps.map((x) => x.scale as number);
  const k = scales.length - 10;
  assert.deepEqual(
    scales.slice(k),
    Array.from({ length: 10 }, (_, i) => scales[k - 1] / 2 ** (i + 1)),
  );
  // the last good checkpoint is the last one written at a step with a finite loss, or none
  const good = steps.filter((x) => typeof x.loss === "number").map((x) => x.step as number);
  const lastGood = good.length ? Math.max(...good) : null;
  if (lastGood === null) assert.equal(m[3], "this run wrote no checkpoint before it");
  else {
    assert.equal(
      m[3],
      `the last good checkpoint of this run is ${DIR}/blowup-stop/checkpoint.json (step ${lastGood})`,
    );
    assert.equal((await readCheckpoint(`${DIR}/blowup-stop/checkpoint.json`)).step, lastGood);
  }
  // without --stop-on-nan: one warning (printed and logged), and the run goes on to the end
  const warn = await run([...TINY, ...blow, "--out", `${DIR}/blowup-warn`]);
  assert.equal(warn.code, 0, warn.err.join("\n"));
  assert.ok(
    warn.err.some((l) =>
      /^train_gpt: warning: step \d+: 10 consecutive steps were skipped/.test(l)
    ),
    warn.err.join("\n"),
  );
  const wlog = (await Deno.readTextFile(`${DIR}/blowup-warn/log.jsonl`)).trim().split("\n").map(
    (l) => JSON.parse(l),
  );
  assert.ok(
    wlog.some((x) => x.type === "warning" && /consecutive steps were skipped/.test(x.message)),
  );
  assert.equal(wlog.filter((x) => x.type === "step").length, 30);
});

Deno.test("--memory-limit below what the model needs is a DeviceError in one line naming the budget", async () => {
  try {
    const r = await run([...TINY, "--memory-limit", "64KiB", "--out", `${DIR}/tiny-budget`]);
    refused(
      r,
      1,
      /would pass the memory budget: \d+ bytes are live and the budget is 65536 bytes \(set by setMemoryLimit\(65536\)\)/,
    );
    refused(
      await run([...TINY, "--memory-limit", "lots"]),
      2,
      /--memory-limit must be a size such as 2GiB/,
    );
  } finally {
    setMemoryLimit(null);
  }
});
