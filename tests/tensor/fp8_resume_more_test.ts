// Resume under the other FP8 recipes (issue 19, item 5; delayed scaling and NVFP4 are in
// fp8_resume_test.ts): stopped after 2 steps, saved, loaded into fresh objects and continued,
// each equals its uninterrupted run bit for bit (most_recent's amax histories included).
import { resumeMatches } from "./_fp8_resume.ts";

for (const name of ["most_recent", "current", "rowwise", "block", "mxfp8"] as const) {
  Deno.test(`resume under the ${name} recipe is bit-identical to the uninterrupted run`, async () => {
    await resumeMatches(name, 3, 2);
  });
}
