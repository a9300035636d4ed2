// bench/peak.ts's table of published peaks (issue 20, item 4): the adapter descriptions Vulkan
// gives NVIDIA's data-center cards map to the right row (an H100 PCIe or an NVL card also says
// "H100" or "H200"), and a card not in the table gets none rather than another card's numbers.
import assert from "node:assert/strict";
import { peakOf } from "../../bench/peak.ts";

Deno.test("peakOf() maps each card's description to its own published peaks", () => {
  const cases: [string, string | null, number | null][] = [
    ["NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5", 66.9],
    ["NVIDIA H100 PCIe", "NVIDIA H100 PCIe", 51.2],
    ["NVIDIA H100 NVL", "NVIDIA H100 NVL / H200 NVL", 60],
    ["NVIDIA H200", "NVIDIA H200 (H100 SXM5 compute)", 66.9],
    ["NVIDIA H200 NVL", "NVIDIA H100 NVL / H200 NVL", 60],
    ["NVIDIA A100-SXM4-80GB", "NVIDIA A100 SXM4", 19.5],
    ["llvmpipe (LLVM 15.0.6, 256 bits)", null, null],
    ["NVIDIA GeForce RTX 4090", null, null],
  ];
  for (const [description, name, f32] of cases) {
    const p = peakOf(description);
    assert.equal(p?.name ?? null, name, description);
    assert.equal(p?.f32 ?? null, f32, description);
    // Hopper and Ampere data-center cards: vector f16 is twice (Hopper) or four times (A100) f32
    if (p) assert.ok(p.f16 >= 2 * p.f32 && p.tensorF16 > p.f16, description);
  }
});
