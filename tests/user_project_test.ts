// ulp used as a user's project uses it: a separate folder with its own deno.json that maps
// "@ulp/ulp" to this checkout's mod.ts (the path import the README shows; the same specifier
// as the JSR package once it is published), a script that type-checks against it and runs a
// PyTorch-style AMP loop (autocast to f16, GradScaler, AdamW) with no Deno permission at all.
import assert from "node:assert/strict";

/** `deno` as this process may run it: its own binary if allowed, else the one on PATH. */
function denoCommand(): string {
  const self = Deno.execPath();
  return Deno.permissions.querySync({ name: "run", command: self }).state === "granted"
    ? self
    : "deno";
}

const MAIN = `import {
  AdamW,
  autocast,
  GradScaler,
  Linear,
  mseLoss,
  ready,
  tensor,
  tidy,
} from "@ulp/ulp";

await ready();
// y = x w^T + b with w = [0.5, -1, 2, 0.25], b = 0.1, learned from 64 points
const W = [0.5, -1, 2, 0.25], B = 0.1;
const xs: number[][] = [], ys: number[][] = [];
let s = 1;
const rand = () => ((s = (s * 48271) % 2147483647) / 2147483647) * 2 - 1;
for (let i = 0; i < 64; i++) {
  const x = [rand(), rand(), rand(), rand()];
  xs.push(x);
  ys.push([x.reduce((a, v, j) => a + v * W[j], B)]);
}
const x = tensor(xs), y = tensor(ys);
const model = new Linear(4, 1, { seed: 0 });
const opt = new AdamW(model.parameters(), { lr: 0.05, weightDecay: 0 });
const scaler = new GradScaler();
const losses: number[] = [];
for (let step = 0; step < 150; step++) {
  const loss = tidy(() => {
    const out = autocast({ dtype: "f16" }, () => model.forward(x)); // f16 matmul
    const l = mseLoss(out.cast("f32"), y);
    scaler.scale(l).backward();
    scaler.step(opt); // unscales, skips the step on Inf/NaN
    scaler.update();
    opt.zeroGrad();
    return l.detach();
  });
  losses.push(await loss.item());
  loss.dispose();
}
const w = Array.from(await model.weight.toArray());
const b = Array.from(await model.bias!.toArray());
console.log(JSON.stringify({ first: losses[0], last: losses.at(-1), w, b, dtype: model.forward(x).dtype }));
`;

Deno.test("a separate project imports ulp by path, type-checks, and trains with autocast and GradScaler", async () => {
  await Deno.mkdir(".test-tmp", { recursive: true });
  const dir = await Deno.makeTempDir({ dir: ".test-tmp", prefix: "user-project-" });
  try {
    const mod = `${Deno.cwd()}/mod.ts`;
    await Deno.writeTextFile(
      `${dir}/deno.json`,
      JSON.stringify({ imports: { "@ulp/ulp": mod } }, null, 2),
    );
    await Deno.writeTextFile(`${dir}/main.ts`, MAIN);
    const run = async (args: string[]) => {
      const r = await new Deno.Command(denoCommand(), {
        args,
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
    };
    const check = await run(["check", "main.ts"]);
    assert.equal(check.code, 0, `deno check failed:\n${check.err}`);
    const r = await run(["run", "main.ts"]); // no permission flags: the library needs none
    assert.equal(r.code, 0, `the user's script failed:\n${r.err}`);
    const got = JSON.parse(r.out.trim().split("\n").at(-1)!);
    assert.ok(got.last < got.first / 100, `the loss fell from ${got.first} to ${got.last}`);
    [0.5, -1, 2, 0.25].forEach((want, j) =>
      assert.ok(Math.abs(got.w[j] - want) < 0.02, `w[${j}] = ${got.w[j]}, want ${want}`)
    );
    assert.ok(Math.abs(got.b[0] - 0.1) < 0.02, `b = ${got.b[0]}, want 0.1`);
    assert.equal(got.dtype, "f32", "outside autocast the layer computes in f32");
    assert.doesNotMatch(r.err, /Uncaught|Error/, "nothing but Mesa's own notes on stderr");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
