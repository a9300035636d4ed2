// Memory that forgives (tensor/core/_leaks.ts): the FinalizationRegistry behind tidy/using/dispose
// frees the buffers of tensors that became unreachable, and a loop whose live buffers grow
// gets one warning naming where the tensors were made.
import assert from "node:assert/strict";
import { noteBirth, noteStep, resetLeakWatch, setLeakWarning } from "../../tensor/core/_leaks.ts";

/** `deno` as this process may run it: its own binary if allowed, else the one on PATH. */
function denoCommand(): string {
  const self = Deno.execPath();
  return Deno.permissions.querySync({ name: "run", command: self }).state === "granted"
    ? self
    : "deno";
}

/** Runs the README's loop (tests/tensor/_leak_loop.ts) in a process of its own. */
async function loop(mode: "gc" | "tidy" | "") {
  const r = await new Deno.Command(denoCommand(), {
    args: [
      "run",
      "--v8-flags=--expose-gc",
      "--allow-read=.",
      "tests/tensor/_leak_loop.ts",
      ...(mode ? [mode] : []),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  const err = dec.decode(r.stderr);
  assert.equal(r.code, 0, err);
  const steps = dec.decode(r.stdout).trim().split("\n").map((l) =>
    JSON.parse(l) as { step: number; liveBytes: number; liveBuffers: number }
  );
  return { steps, err };
}

Deno.test("200 steps of the README's loop without tidy keep live bytes flat: the registry frees what tidy would", async () => {
  const [free, scoped] = await Promise.all([loop("gc"), loop("tidy")]);
  assert.equal(free.steps.length, 200);
  const at = (r: typeof free, s: number) => r.steps[s - 1];
  // after each collection the same live bytes, step 10 to step 200: flat
  const base = at(free, 10);
  for (let s = 10; s <= 200; s += 10) {
    assert.equal(at(free, s).liveBytes, base.liveBytes, `step ${s}`);
    assert.equal(at(free, s).liveBuffers, base.liveBuffers, `step ${s}`);
    // and what the loop with tidy holds, no more (more were the tensors of the calls that
    // built programs, which the program cache kept alive through their body closures)
    assert.equal(at(scoped, s).liveBytes, at(scoped, 10).liveBytes, `tidy, step ${s}`);
  }
  const extra = base.liveBytes - at(scoped, 10).liveBytes;
  assert.equal(extra, 0, `${extra} bytes more than tidy`);
  assert.doesNotMatch(free.err + scoped.err, /live GPU buffers grew/, "nothing grew: no warning");
});

Deno.test("a loop that grows live buffers gets one warning naming the lines that made them", async () => {
  const { steps, err } = await loop(""); // as a user runs it: the collector runs when V8 wants
  const warnings = err.split("\n").filter((l) => l.startsWith("ulp: live GPU buffers grew"));
  assert.equal(warnings.length, 1, err);
  assert.match(warnings[0], /tests\/tensor\/_leak_loop\.ts:\d+:\d+/);
  assert.match(warnings[0], /tidy\(\(\) => \.\.\.\)/);
  // the safety net still bounds it: fewer live bytes at the end than 200 steps would hold
  // tensors of each step stay until a collection: live bytes rise from step to step between
  // collections (whose timing is V8's: the largest rise over ten steps, not a fixed window)
  const rises = steps.slice(10).map((s, i) => (s.liveBytes - steps[i].liveBytes) / 10);
  const perStep = Math.max(...rises);
  assert.ok(perStep > 0, "tensors of each step stay until a collection");
  const worst = Math.max(...steps.map((s) => s.liveBytes));
  console.log(
    `without tidy or gc(): live bytes ${steps[0].liveBytes} at step 1, at most ${worst}, ` +
      `${steps[199].liveBytes} at step 200 (${perStep.toFixed(0)} bytes per step between ` +
      `collections)`,
  );
});

Deno.test("nothing is kept alive or left to the safety net: the program cache, row ops, bad_input's warm-up", async () => {
  const r = await new Deno.Command(denoCommand(), {
    args: ["run", "--v8-flags=--expose-gc", "--allow-read=.", "tests/tensor/_unreachable.ts"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  assert.equal(r.code, 0, dec.decode(r.stderr));
  const got = JSON.parse(dec.decode(r.stdout).trim());
  // the control: a tensor dropped on purpose ([3] f32) is collected and freed by the net
  assert.deepEqual(got.control, { tensors: 1, bytes: 12 }, "collections reach the registry");
  // bad_input counts each row's live bytes; a tensor its warm-up left unreachable was freed at
  // whatever collection V8 chose, and showed as -4 bytes at a varying row (GL)
  assert.deepEqual(got.constants, { tensors: 0, bytes: 0 }, "tensors left unreachable");
  // a cached program kept its body closure, and with it the tensors of the op call that built
  // it (the row ops' first output and statistics): never freed, not even by the safety net
  assert.equal(got.kept, 0, "live bytes kept after the tensors were dropped and collected");
});

Deno.test("noteStep() warns once, after live buffers rise block after block, with the birth places", () => {
  resetLeakWatch();
  const said: string[] = [];
  const warn = (m: string) => said.push(m);
  // 40 steps that grow by 5 buffers each: four blocks of 10 whose minimum rises
  for (let i = 0; i < 40; i++) noteStep(100 + 5 * i, warn);
  assert.deepEqual(said, []);
  // the next step records where tensors are made: one kept, one freed
  const kept = { disposed: false }, freed = { disposed: false };
  noteBirth(kept); // this line is where they were made
  noteBirth(freed);
  freed.disposed = true;
  noteStep(300, warn); // the recorded step ends
  noteBirth({ disposed: false }); // not recorded: the step is over
  noteStep(305, warn); // a step later: judged
  assert.equal(said.length, 1);
  assert.match(said[0], /grew from 100 to 250 over 30 training steps/);
  assert.match(said[0], /1 were still not freed a step later: 1 made at .*leak_test\.ts:\d+:\d+/);
  for (let i = 0; i < 100; i++) noteStep(400 + 10 * i, warn);
  assert.equal(said.length, 1, "one warning per process");
  // a loop whose buffers stay flat is never warned about, and the warning can be turned off
  resetLeakWatch();
  for (let i = 0; i < 200; i++) noteStep(100 + (i % 7), warn);
  assert.equal(said.length, 1);
  const was = setLeakWarning(false);
  resetLeakWatch();
  for (let i = 0; i < 100; i++) noteStep(100 + 5 * i, warn);
  assert.equal(said.length, 1);
  setLeakWarning(was);
  resetLeakWatch();
});
