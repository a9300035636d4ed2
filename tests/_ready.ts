// Preloaded by `deno task test` (deno.json) before every test module and doc example:
// acquires the device once, as a user's script does with `await ready()` before its first
// tensor (importing ulp acquires nothing). Without an adapter the tests that need one fail
// with the DeviceError that says how to get one; host-only tests still run.
//
// `deno test --doc` also runs every library file as a module of its own (with no tests in it):
// those acquire nothing. A doc example (a module named "<file>#<lines>.ts") skips the matmul
// texture family's check on its device and runs the workgroup-memory kernel (the same bits):
// the check costs each new device about 0.3 s on lavapipe and a run makes 250 such modules;
// tests/ keep it. They skip the staged reads' check too (no example reads 4 MiB).
import { ready } from "../mod.ts";
import { setMatmulFamily } from "../tensor/ops/matmul.ts";
import { setStaging } from "../gpu/program.ts";

const main = Deno.mainModule;
const docExample = /#\d+-\d+\.\w+$/.test(main);
if (docExample) {
  setMatmulFamily("workgroup");
  setStaging("never");
}
if (docExample || main.includes("/tests/")) await ready().catch(() => {});
