// Cell records of the stability sweep read back: ulp's own output loads, a tampered one is
// refused (it was once counted as a divergence).
import assert from "node:assert/strict";
import { fromJson, toJson } from "../../examples/_sweep.ts";

const record = {
  format: "e8m3",
  lr: 3e-3,
  seed: 1,
  finalLoss: 2.5,
  maxSharpness: 0.25,
  divergedAt: null,
  loss: [3, 2.75, null],
  sharpness: [[10, 0.25]],
};

Deno.test("fromJson() reads a record toJson() wrote, null as NaN", () => {
  const c = fromJson(toJson(record));
  assert.equal(c.finalLoss, 2.5);
  assert.ok(Number.isNaN(c.loss[2]));
  assert.deepEqual(c.sharpness, [[10, 0.25]]);
});

Deno.test("fromJson() refuses a tampered record instead of counting it as a divergence", () => {
  for (
    const [field, value, why] of [
      ["finalLoss", "x", /finalLoss is not a number/],
      ["maxSharpness", {}, /maxSharpness is not a number/],
      ["loss", [1, "2"], /loss is not a list of numbers/],
      ["sharpness", [[1]], /sharpness is not a list/],
      ["divergedAt", "soon", /divergedAt is not a step/],
    ] as const
  ) {
    assert.throws(
      () => fromJson(JSON.stringify({ ...record, [field]: value })),
      (e: Error) => why.test(e.message) && /malformed/.test(e.message),
      field,
    );
  }
});
