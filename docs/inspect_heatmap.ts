// The README's inspector heat map: the gradients' share that underflows in e4m3 at its own
// amax scale, per layer and step, from a train_gpt run with --inspect.
//   deno run --allow-read=. --allow-write=.test-tmp examples/train_gpt.ts --precision fp8 \
//     --steps 60 --inspect 5 --eval-every 30 --sample-tokens 0 --out .test-tmp/insp_demo
//   deno run --allow-read=. --allow-write=docs docs/inspect_heatmap.ts .test-tmp/insp_demo
//   deno fmt docs/inspect_heatmap.svg
import { inspectHeatmap, type InspectRecord } from "../nn/inspect.ts";

const dir = Deno.args[0] ?? "out/train_gpt";
const stat = Deno.args[1] ?? "e4m3.underflow";
const records: InspectRecord[] = (await Deno.readTextFile(`${dir}/inspect.jsonl`)).trim()
  .split("\n").map((l) => JSON.parse(l));
const svg = inspectHeatmap(records, stat, {
  title: `${stat} of the gradients (fp8 run of train_gpt's default GPT, amax scaling)`,
  filter: (t) => t.phase === "backward" && t.tensor !== "grad_input",
});
await Deno.writeTextFile("docs/inspect_heatmap.svg", svg + "\n");
console.log(`docs/inspect_heatmap.svg: ${records.length} steps`);
