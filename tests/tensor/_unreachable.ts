// Run by tests/tensor/leak_test.ts in a process of its own (deno run --v8-flags=--expose-gc):
// what code leaves reachable or unreachable without disposing it, after forced collections.
// Prints one JSON line:
// - constants: what the safety net (tensor/core/_leaks.ts) freed after the per-device
//   constants' warm-up of tests/bad_input_test.ts (all it makes is disposed: nothing);
// - control: what it freed after a [3] f32 tensor dropped on purpose (collections do reach
//   the registry in this process);
// - kept: the live bytes that row ops on new shapes (new programs: softmax, logSoftmax, layer
//   and RMS norm, forward and backward, both row families) leave after their tensors are
//   dropped, and those that a program whose body closure shares a scope with a tensor leaves
//   (the program cache must not keep a body, nor its scope's tensors, alive).
//   deno run --v8-flags=--expose-gc --allow-read=. tests/tensor/_unreachable.ts
import { layerNorm, memory, ready, rmsNorm, tensor } from "../../mod.ts";
import { getRuntime, program } from "../../gpu/mod.ts";
import { safetyNetFreed } from "../../tensor/core/_leaks.ts";
import { setRowFamily } from "../../tensor/ops/reduce.ts";
import { makeDeviceConstants } from "../_device_constants.ts";

await ready();
const rt = await getRuntime();
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --v8-flags=--expose-gc");
/** Collects until the registry's callbacks have run (they run on later turns). */
async function collect(): Promise<{ tensors: number; bytes: number }> {
  for (let i = 0; i < 4; i++) {
    gc!();
    await new Promise((r) => setTimeout(r, 10));
    await rt.sync(); // freed buffers leave the live count after their submits
  }
  return safetyNetFreed();
}
const diff = (a: { tensors: number; bytes: number }, b: typeof a) => ({
  tensors: b.tensors - a.tensors,
  bytes: b.bytes - a.bytes,
});

const start = await collect();
await makeDeviceConstants();
const constants = await collect();
(() => tensor([1, 2, 3]))(); // made and dropped: the net must free it (12 bytes)
const control = await collect();

const live0 = memory().liveBytes;
// rows of 40 and 24 (whole quads), shapes no other code here used: every program is new
for (const [family, C] of [["lanes", 40], ["workgroup", 24]] as const) {
  const before = setRowFamily(family);
  for (const dtype of ["float32", "bfloat16"] as const) {
    const data = (n: number) => Array.from({ length: n }, (_, i) => Math.sin(i) / 2);
    const x = () => tensor(data(8 * C), { shape: [8, C], dtype, requiresGrad: true });
    const g = () => tensor(data(8 * C), { shape: [8, C], dtype });
    const w = () => tensor(data(C), { dtype, requiresGrad: true });
    x().softmax(-1).backward(g());
    x().logSoftmax(-1).backward(g());
    layerNorm(x(), [C], w(), w()).backward(g());
    await rmsNorm(x(), w()).toArray();
  }
  setRowFamily(before);
}
(() => {
  const t = tensor([1, 2, 3, 4]);
  const keep = () => t; // a closure of this scope holds t, as an op's closures hold its tensors
  void keep;
  program(rt, "test|unreachable", {
    label: "unreachable",
    bindings: [{ name: "y", type: "u32", access: "read_write" }],
    workgroupSize: 1,
  }, () => "fn kernel(wg: u32, lid: vec3u, li: u32) { y[li] = li; }");
})();
await collect();
const kept = memory().liveBytes - live0;
console.log(
  JSON.stringify({ constants: diff(start, constants), control: diff(constants, control), kept }),
);
