// The writer that tests/nn/safetensors_kill_test.ts kills: saves version 1, 2, 3, ... of a
// large file to the same path with saveFile() (atomic), printing each version once it is saved.
//   deno run --allow-read=. --allow-write=./.test-tmp tests/nn/_safetensors_kill_child.ts \
//     <path> <elements> <first version>
import { full, ready, saveFile, tensor } from "../../mod.ts";

await ready();

const [path, elements, first] = [Deno.args[0], Number(Deno.args[1]), Number(Deno.args[2])];
const enc = new TextEncoder();
for (let v = first;; v++) {
  const w = full([elements], v);
  const version = tensor(new Int32Array([v]));
  await saveFile({ w, version }, path, { metadata: { version: String(v) } });
  w.dispose();
  version.dispose();
  await Deno.stdout.write(enc.encode(`${v}\n`));
}
