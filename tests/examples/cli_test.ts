// The examples' command-line helpers: suggestions for mistyped flags, and the reason a
// format-shaped precision is refused.
import assert from "node:assert/strict";
import { didYouMean, parseOptions, UsageError } from "../../examples/_cli.ts";
import { checkPrecisionList } from "../../examples/_run_flags.ts";

const NAMES = ["steps", "strategies", "precision", "out", "help", "lr", "warmup"];

Deno.test("didYouMean() suggests the closest flag: a prefix or at most two edits away", () => {
  assert.equal(didYouMean("Unknown option '--step'", NAMES), "; did you mean --steps?");
  assert.equal(didYouMean("Unknown option '--precisoin'", NAMES), "; did you mean --precision?");
  assert.equal(didYouMean("Unknown option '--strat'", NAMES), "; did you mean --strategies?");
  assert.equal(didYouMean("Unknown option '--warmpu'", NAMES), "; did you mean --warmup?");
  assert.equal(didYouMean("Unknown option '--zzz'", NAMES), "", "nothing close");
  assert.equal(didYouMean("Option '--out' argument missing", NAMES), "", "not an unknown flag");
});

Deno.test("parseOptions() names the flag it did not know and the one that was meant", () => {
  const table = {
    steps: { type: "string" as const, help: "", default: "1" },
    help: { type: "boolean" as const, help: "", default: false },
  };
  assert.throws(
    () => parseOptions("demo", "usage", table, ["--step", "3"]),
    (e: unknown) =>
      e instanceof UsageError && e.code === 2 &&
      e.message === "demo: Unknown option '--step'; did you mean --steps?; see --help",
  );
});

Deno.test("a precision shaped as a format that ulp cannot simulate says why (X <= 8, Y <= 23)", () => {
  assert.equal(checkPrecisionList("bf16,e8m3"), null);
  assert.equal(
    checkPrecisionList("bf16,e9m3"),
    "'e9m3' is not a format ulp can simulate: exponent bits must be 2..8 and mantissa bits " +
      "1..23 (got 9 and 3)",
  );
  assert.match(checkPrecisionList("e5m24")!, /mantissa bits 1\.\.23 \(got 5 and 24\)/);
  assert.match(checkPrecisionList("bf17")!, /^unknown value 'bf17'; valid: fp32, bf16/);
});
