// A checkpoint written while the process is killed leaves the previous one readable (issue #9,
// item 3): a child process saves a large file over and over with saveFile() (temporary file,
// fsync, rename); we SIGKILL it at a random moment, several times, and the file under the
// path must always load, whole, as one of the versions the child wrote.
//
// Needs --allow-run=deno (the test task has it) to start the child.
import assert from "node:assert/strict";
import { loadFile } from "../../mod.ts";
import { rng } from "../tensor/_reference.ts";

const ELEMENTS = 2 ** 21; // 8 MiB of f32 per file
const KILLS = 4;

/** `deno` as this process may run it: its own binary if allowed, else the one on PATH. */
function denoCommand(): string {
  const self = Deno.execPath();
  return Deno.permissions.querySync({ name: "run", command: self }).state === "granted"
    ? self
    : "deno";
}

/** Reads the child's stdout lines (the versions it saved) as they come. */
async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buf = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let at;
    while ((at = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, at);
      buf = buf.slice(at + 1);
    }
  }
}

Deno.test("saveFile() killed at random moments always leaves a whole file under its path", async () => {
  await Deno.mkdir(".test-tmp", { recursive: true });
  const dir = await Deno.makeTempDir({ dir: ".test-tmp" });
  const path = `${dir}/model.safetensors`;
  const child = new URL("./_safetensors_kill_child.ts", import.meta.url).pathname;
  const r = rng(9);
  let previous = 0;
  try {
    for (let k = 0; k < KILLS; k++) {
      const proc = new Deno.Command(denoCommand(), {
        args: [
          "run",
          "--allow-read=.",
          "--allow-write=./.test-tmp",
          child,
          path,
          `${ELEMENTS}`,
          `${previous + 1}`,
        ],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      // wait for a first save of this child, time one save, then kill it somewhere in the next
      let saved = 0;
      const times: number[] = [];
      const it = lines(proc.stdout);
      const stderr = new Response(proc.stderr).text();
      while (times.length < 2) { // not for-await: leaving it would close the child's stdout
        const line = await it.next();
        if (line.done) break;
        saved = Number(line.value);
        times.push(performance.now());
      }
      if (saved === 0) assert.fail(`the child saved nothing: ${await stderr}`);
      const period = times[1] - times[0];
      await new Promise((res) => setTimeout(res, r() * period));
      proc.kill("SIGKILL");
      const status = await proc.status;
      for await (const line of it) saved = Math.max(saved, Number(line)); // reported meanwhile
      await stderr;
      assert.equal(status.signal, "SIGKILL");

      const { tensors, metadata } = await loadFile(path);
      const v = Number(metadata.version);
      assert.ok(v >= saved && v <= saved + 1, `version ${v} after the child reported ${saved}`);
      assert.ok(v > previous, "the versions of the children that were killed before are gone");
      assert.equal(await tensors.version.item(), v);
      const w = await tensors.w.toArray();
      assert.equal(w.length, ELEMENTS);
      assert.ok(w.every((x) => x === v), `every value of w is ${v}`);
      for (const t of Object.values(tensors)) t.dispose();
      previous = v;
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
