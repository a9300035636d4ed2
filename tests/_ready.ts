// Preloaded by `deno task test` (deno.json) before every test module and doc example:
// acquires the device once, as a user's script does with `await ready()` before its first
// tensor (importing ulp acquires nothing). Without an adapter the tests that need one fail
// with the DeviceError that says how to get one; host-only tests still run.
import { ready } from "../mod.ts";

await ready().catch(() => {});
