// GPT-2 checkpoints in Hugging Face's layout, against PyTorch: the fixture in
// tests/fixtures/gpt2_tiny (2 layers, width 64, 4 heads, vocabulary 1024, random weights)
// was written by make_fixture.py beside it, a plain-torch GPT2LMHeadModel forward, with
// PyTorch's logits and loss for a fixed token sequence. ulp's logits must match them within
// 1e-4 of the largest logit in f32 and within a few roundings of the format in bf16 / f16; a
// load, export, load round trip is bit-identical; a checkpoint that does not fit is refused
// with the tensor's name.
import assert from "node:assert/strict";
import {
  AdamW,
  applyPrecision,
  autocast,
  deserialize,
  exportPretrained,
  FormatError,
  fromPretrained,
  GPT,
  GPT_PRESETS,
  noGrad,
  ready,
  serialize,
  type Tensor,
  tensor,
  tidy,
  ValueError,
} from "../../mod.ts";

const FIXTURE = new URL("../fixtures/gpt2_tiny", import.meta.url).pathname;
const DIR = "./.test-tmp/pretrained_test";
await ready();
await Deno.remove(DIR, { recursive: true }).catch(() => {});
await Deno.mkdir(DIR, { recursive: true });

/** Asserts each pair's codes equal, all read together (one wait, not one per tensor). */
async function sameCodes(pairs: readonly (readonly [Tensor, Tensor, string])[]): Promise<void> {
  const codes = await Promise.all(pairs.map(([a, b]) => Promise.all([a.codes(), b.codes()])));
  codes.forEach(([a, b], i) => assert.deepEqual(a, b, pairs[i][2]));
}

/** The tensors of a safetensors file (parsed by ulp's reader), with its metadata. */
async function read(path: string) {
  return deserialize(await Deno.readFile(path));
}

/** max |a - b| / max |b|: the error relative to the largest expected value. */
async function relErr(a: Tensor, b: Tensor): Promise<number> {
  const x = await a.toArray(), y = await b.toArray();
  assert.equal(x.length, y.length);
  let d = 0, m = 0;
  for (let i = 0; i < y.length; i++) {
    d = Math.max(d, Math.abs(x[i] - y[i]));
    m = Math.max(m, Math.abs(y[i]));
  }
  return d / m;
}

/** Logits and loss of `model` on the fixture's tokens, in eval mode, maybe under autocast. */
async function run(model: GPT, exp: Record<string, Tensor>, ac?: string) {
  const { logits, loss } = noGrad(() => {
    const f = () => model.eval().forward(exp.idx, exp.targets);
    return ac ? autocast({ dtype: ac as "bf16" }, f) : f();
  });
  const r = { logits, loss: await loss!.item(), err: await relErr(logits, exp.logits) };
  return r;
}

function free(model: GPT): void {
  for (const p of model.parameters()) p.dispose();
}

for (
  const [variant, what] of [
    ["", "F32, the hub's layout with its causal-mask buffers"],
    ["/bf16", "BF16, 'transformer.' names and a tied lm_head.weight"],
    ["/f16", "F16, the hub's layout"],
  ]
) {
  Deno.test(`fromPretrained() of ${what}: logits and loss within 1e-4 of PyTorch's`, async () => {
    const model = await fromPretrained(FIXTURE + variant);
    const exp = (await read(`${FIXTURE}${variant}/expected.safetensors`)).tensors;
    const c = model.config;
    assert.deepEqual(
      [c.nLayer, c.nHead, c.nEmbd, c.vocabSize, c.blockSize, c.gelu, c.layerNormEps, c.bias],
      [2, 4, 64, 1024, 64, "tanh", 1e-5, true],
    );
    assert.ok(model.parameters().every((p) => p.dtype === "f32"));
    const r = await run(model, exp);
    assert.ok(r.err < 1e-4, `logits differ by ${r.err} of the largest`);
    const want = await exp.loss.item();
    assert.ok(Math.abs(r.loss - want) / want < 1e-4, `loss ${r.loss} vs PyTorch's ${want}`);
    free(model);
  });
}

Deno.test("forward(idx, undefined, { logitsToKeep }): the last positions' logits, PyTorch's, from a head run on those rows", async () => {
  const model = (await fromPretrained(FIXTURE)).eval();
  const exp = (await read(`${FIXTURE}/expected.safetensors`)).tensors;
  const [B, T] = exp.idx.shape, V = model.config.vocabSize;
  const all = noGrad(() => model.forward(exp.idx).logits);
  for (const k of [1, 3]) {
    const { logits, loss } = noGrad(() => model.forward(exp.idx, undefined, { logitsToKeep: k }));
    assert.deepEqual(logits.shape, [B, k, V]);
    assert.equal(loss, null);
    const want = exp.logits.slice([null, [T - k, T], null]);
    const err = await relErr(logits, want);
    assert.ok(err < 1e-4, `logitsToKeep ${k}: logits differ from PyTorch's by ${err}`);
    // the rows of the full forward, within f32 roundings (the head's product has fewer rows)
    const rows = all.slice([null, [T - k, T], null]);
    assert.ok(await relErr(logits, rows) < 1e-6);
    for (const t of [logits, want, rows]) t.dispose();
  }
  // 0, T and more keep every position
  for (const k of [0, T, T + 5]) {
    const { logits } = noGrad(() => model.forward(exp.idx, undefined, { logitsToKeep: k }));
    assert.deepEqual(logits.shape, [B, T, V]);
    logits.dispose();
  }
  assert.throws(
    () => model.forward(exp.idx, exp.targets, { logitsToKeep: 1 }),
    (e) =>
      e instanceof ValueError && /logitsToKeep 1 of \d+ positions with targets/.test(e.message),
  );
  for (const bad of [-1, 1.5, NaN]) {
    assert.throws(
      () => model.forward(exp.idx, undefined, { logitsToKeep: bad }),
      (e) =>
        e instanceof ValueError && /logitsToKeep must be a non-negative integer/.test(e.message),
    );
  }
  all.dispose();
  free(model);
});

Deno.test("fromPretrained(): the activation matters, and gelu: 'none' gives PyTorch's exact-GELU logits", async () => {
  const exp = (await read(`${FIXTURE}/expected.safetensors`)).tensors;
  const tanh = await fromPretrained(FIXTURE);
  const exact = await fromPretrained(FIXTURE, { gelu: "none" });
  assert.equal(exact.config.gelu, "none");
  // the two forms differ by 2.4e-4 of the largest logit here: more than the tolerance
  assert.ok((await relErr((await run(tanh, exp)).logits, exp.logits_exact_gelu)) > 1e-4);
  const r = await run(exact, exp);
  assert.ok((await relErr(r.logits, exp.logits_exact_gelu)) < 1e-5);
  assert.ok(r.err > 1e-4);
  free(tanh);
  free(exact);
});

for (
  const [strategy, ac, bound] of [
    ["bf16", undefined, 8 * 2 ** -8],
    ["amp-bf16", "bf16", 8 * 2 ** -8],
    ["collage-light", undefined, 8 * 2 ** -8],
    ["amp-f16", "f16", 8 * 2 ** -11],
  ] as const
) {
  Deno.test(`fromPretrained() then applyPrecision('${strategy}'): logits within 8 ulps of the format of PyTorch's f32 ones`, async () => {
    const exp = (await read(`${FIXTURE}/expected.safetensors`)).tensors;
    const model = applyPrecision(await fromPretrained(FIXTURE), strategy);
    const r = await run(model, exp, ac);
    // bf16 (8 bits of precision) is off by about 1e-2 of the largest logit, f16 by 1e-3
    assert.ok(r.err < bound, `logits differ by ${r.err} of the largest (bound ${bound})`);
    assert.ok(r.err > 2 ** -12, `${r.err}: the forward did not run in ${strategy}'s precision`);
    const want = await exp.loss.item();
    assert.ok(Math.abs(r.loss - want) / want < 4 * bound, `loss ${r.loss} vs ${want}`);
    free(model);
  });
}

Deno.test("load, exportPretrained, load: the same bits, and the file has Hugging Face's layout", async () => {
  const a = await fromPretrained(FIXTURE);
  const out = `${DIR}/roundtrip`;
  await exportPretrained(a, out);
  const src = await read(`${FIXTURE}/model.safetensors`);
  const dst = await read(`${out}/model.safetensors`);
  assert.equal(dst.metadata.format, "pt"); // transformers refuses a file without it
  // every tensor of the source (its mask buffers aside) with the same dtype, shape and bits
  const names = Object.keys(src.tensors).filter((n) => !n.endsWith(".attn.bias"));
  assert.deepEqual(Object.keys(dst.tensors).sort(), names.sort());
  for (const n of names) {
    assert.equal(dst.tensors[n].dtype, "f32", n);
    assert.deepEqual(dst.tensors[n].shape, src.tensors[n].shape, n);
  }
  await sameCodes(names.map((n) => [dst.tensors[n], src.tensors[n], n]));
  const cfg = JSON.parse(await Deno.readTextFile(`${out}/config.json`));
  const ref = JSON.parse(await Deno.readTextFile(`${FIXTURE}/config.json`));
  for (const k of ["n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "model_type"]) {
    assert.equal(cfg[k], ref[k], k);
  }
  assert.equal(cfg.activation_function, "gelu_new");
  const b = await fromPretrained(out);
  const pa = a.namedParameters(), pb = b.namedParameters();
  assert.deepEqual(pb.map(([n]) => n), pa.map(([n]) => n));
  await sameCodes(pa.map(([n, t], i) => [pb[i][1], t, n]));
  for (const t of [...Object.values(src.tensors), ...Object.values(dst.tensors)]) t.dispose();
  free(a);
  free(b);
});

Deno.test("exportPretrained({ dtype: 'f16' }) of the F16 checkpoint writes its bytes back, and 'bf16' rounds RNE", async () => {
  const a = await fromPretrained(`${FIXTURE}/f16`);
  await exportPretrained(a, `${DIR}/f16`, { dtype: "f16" });
  const src = (await read(`${FIXTURE}/f16/model.safetensors`)).tensors;
  const dst = (await read(`${DIR}/f16/model.safetensors`)).tensors;
  assert.deepEqual(Object.keys(dst).sort(), Object.keys(src).sort());
  for (const n of Object.keys(src)) assert.equal(dst[n].dtype, "f16", n);
  await sameCodes(Object.keys(src).map((n) => [dst[n], src[n], n]));
  // f32 -> bf16 rounds to nearest even: the BF16 fixture is PyTorch's rounding of the F32 one
  const f32 = await fromPretrained(FIXTURE);
  await exportPretrained(f32, `${DIR}/bf16`, { dtype: "bf16" });
  const torchBf16 = (await read(`${FIXTURE}/bf16/model.safetensors`)).tensors;
  const ours = (await read(`${DIR}/bf16/model.safetensors`)).tensors;
  await sameCodes(Object.keys(ours).map((n) => [ours[n], torchBf16[`transformer.${n}`], n]));
  for (const m of [a, f32]) free(m);
});

Deno.test("fromPretrained() without config.json: the size from the shapes, heads from nHead", async () => {
  const dir = `${DIR}/noconfig`;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.copyFile(`${FIXTURE}/model.safetensors`, `${dir}/model.safetensors`);
  const exp = (await read(`${FIXTURE}/expected.safetensors`)).tensors;
  // GPT-2's head size is 64 in all four sizes: width 64 would be one head
  const guessed = await fromPretrained(`${dir}/model.safetensors`);
  assert.deepEqual(
    [guessed.config.nLayer, guessed.config.nHead, guessed.config.blockSize, guessed.config.gelu],
    [2, 1, 64, "tanh"],
  );
  const model = await fromPretrained(dir, { nHead: 4 });
  assert.ok((await run(model, exp)).err < 1e-4);
  free(guessed);
  free(model);
});

/** Writes the fixture's tensors, changed by `edit`, with its config (changed by `editCfg`). */
async function variant(
  name: string,
  edit: (t: Record<string, Tensor>) => void,
  editCfg: (c: Record<string, unknown>) => void = () => {},
): Promise<string> {
  const dir = `${DIR}/bad-${name}`;
  await Deno.mkdir(dir, { recursive: true });
  const { tensors } = await read(`${FIXTURE}/model.safetensors`);
  edit(tensors);
  await Deno.writeFile(
    `${dir}/model.safetensors`,
    await serialize(tensors, { metadata: { format: "pt" } }),
  );
  const cfg = JSON.parse(await Deno.readTextFile(`${FIXTURE}/config.json`));
  editCfg(cfg);
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(cfg));
  for (const t of Object.values(tensors)) t.dispose();
  return dir;
}

const rename = (t: Record<string, Tensor>, from: string, to: string) => {
  t[to] = t[from];
  delete t[from];
};

for (
  const [name, edit, message, editCfg] of [
    [
      "renamed",
      (t) => rename(t, "h.1.attn.c_attn.weight", "h.1.attn.qkv.weight"),
      /'h\.1\.attn\.qkv\.weight', which is not a tensor of a GPT-2 of 2 layers/,
    ],
    [
      "missing",
      (t) => delete t["h.0.mlp.c_fc.bias"],
      /has no 'h\.0\.mlp\.c_fc\.bias'/,
    ],
    [
      "transposed",
      (
        t,
      ) => (t["h.0.attn.c_attn.weight"] = tensor(new Float32Array(192 * 64), { shape: [192, 64] })),
      /'h\.0\.attn\.c_attn\.weight' has shape \[192,64\] .* has \[64,192\] \(Conv1D: \[in, out\]\)/,
    ],
    [
      "wrong-vocab",
      (t) => (t["wte.weight"] = tensor(new Float32Array(1000 * 64), { shape: [1000, 64] })),
      /'wte\.weight' has shape \[1000,64\] .* vocabulary 1024, .* has \[1024,64\]/,
    ],
    [
      "extra-layer",
      (t) => (t["h.2.ln_1.weight"] = tensor(new Float32Array(64), { shape: [64] })),
      /'h\.2\.ln_1\.weight', which is not a tensor/,
    ],
    [
      "int-weights",
      (t) => (t["ln_f.bias"] = tensor(new Int32Array(64), { shape: [64] })),
      /'ln_f\.bias' in .* is i32; GPT-2 weights are read from F32, F16 or BF16/,
    ],
    [
      "untied-head",
      (t) => (t["lm_head.weight"] = tensor(new Float32Array(1024 * 64), { shape: [1024, 64] })),
      /'lm_head\.weight' .* differs from 'wte\.weight'/,
    ],
    [
      "bad-mask",
      (t) => (t["h.0.attn.bias"] = tensor(new Float32Array(16), { shape: [1, 1, 4, 4] })),
      /'h\.0\.attn\.bias' has shape \[1,1,4,4\] .* not \[1,1,64,64\]/,
    ],
    [
      "activation",
      () => {},
      /activation_function "relu" is not one ulp has/,
      (c: Record<string, unknown>) => (c.activation_function = "relu"),
    ],
    [
      "inner",
      () => {},
      /n_inner 128 is not 4 \* n_embd \(256\)/,
      (c: Record<string, unknown>) => (c.n_inner = 128),
    ],
    [
      "config-layers",
      () => {},
      /has no 'h\.2\.ln_1\.weight' \(and 11 more tensors\)/,
      (c: Record<string, unknown>) => (c.n_layer = 3),
    ],
  ] as [
    string,
    (t: Record<string, Tensor>) => void,
    RegExp,
    ((c: Record<string, unknown>) => void)?,
  ][]
) {
  Deno.test(`fromPretrained() refuses a checkpoint with ${name} tensors or config, naming it`, async () => {
    const dir = await variant(name, edit, editCfg);
    await assert.rejects(() => fromPretrained(dir), (e: Error) => {
      assert.ok(e instanceof FormatError, `${e.name}: ${e.message}`);
      assert.match(e.message, message);
      return true;
    });
  });
}

Deno.test("fromPretrained() names a missing path or model file", async () => {
  await assert.rejects(() => fromPretrained(`${DIR}/nothing-here`), ValueError);
  await Deno.mkdir(`${DIR}/empty`, { recursive: true });
  await assert.rejects(() => fromPretrained(`${DIR}/empty`), /has no model\.safetensors/);
});

/** f32 value of bf16 bits. */
const bf16 = (bits: number) => new Float32Array(new Uint32Array([bits << 16]).buffer)[0];

Deno.test("exportPretrained() of a Collage model writes hi + lo rounded once to f32, and needs the optimizer", async () => {
  const model = applyPrecision(await fromPretrained(FIXTURE), "collage-light");
  const opt = new AdamW(model.parameters(), { lr: 1e-3, precision: "collage-light" });
  const exp = (await read(`${FIXTURE}/expected.safetensors`)).tensors;
  for (let i = 0; i < 3; i++) {
    tidy(() => model.forward(exp.idx, exp.targets).loss!.backward());
    opt.step();
    opt.zeroGrad();
  }
  await assert.rejects(
    () => exportPretrained(model, `${DIR}/collage-no-opt`, { precision: "collage-light" }),
    /pass \{ optimizer \}/,
  );
  await exportPretrained(model, `${DIR}/collage`, { optimizer: opt });
  const file = await read(`${DIR}/collage/model.safetensors`);
  assert.equal(file.metadata["ulp.precision"], "collage-light");
  const sd = opt.stateDict();
  let withLo = 0, total = 0;
  for (const [i, [name, p]] of model.namedParameters().entries()) {
    const hi = await p.codes(), lo = await (sd.state[i].paramLo as Tensor).codes();
    let got = await file.tensors[name].toArray();
    if (/c_attn|c_proj|c_fc/.test(name) && p.ndim === 2) {
      // the file holds [in, out]: read it back in ulp's [out, in]
      const [o, n] = p.shape, t = new Float32Array(got.length);
      for (let r = 0; r < o; r++) for (let c = 0; c < n; c++) t[r * n + c] = got[c * o + r];
      got = t;
    }
    for (let k = 0; k < hi.length; k++) {
      const want = Math.fround(bf16(hi[k]) + bf16(lo[k]));
      assert.equal(got[k], want, `${name}[${k}]`);
      if (lo[k] !== 0 && lo[k] !== 0x8000) withLo++;
      total++;
    }
  }
  // the training moved the low parts: the export is not the bf16 weights alone
  assert.ok(withLo > total / 10, `${withLo} of ${total} weights have a low part`);
  for (const s of Object.values(sd.state)) {
    for (const v of Object.values(s)) if (v && typeof v === "object") (v as Tensor).dispose();
  }
  for (const t of Object.values(file.tensors)) t.dispose();
  opt.dispose();
  free(model);
});

Deno.test("exportPretrained() of an FP8 run notes the dropped scaling state; of a bias-free GPT writes zero biases", async () => {
  const model = await fromPretrained(FIXTURE);
  await exportPretrained(model, `${DIR}/fp8`, { precision: "fp8" });
  const meta = (await read(`${DIR}/fp8/model.safetensors`)).metadata;
  assert.match(meta["ulp.note"], /FP8 scaling state .* not part of the layout/);
  free(model);

  const plain = new GPT({
    vocabSize: 32,
    blockSize: 8,
    nLayer: 1,
    nHead: 2,
    nEmbd: 8,
    bias: false,
  });
  await exportPretrained(plain, `${DIR}/nobias`);
  const back = await fromPretrained(`${DIR}/nobias`);
  assert.equal(back.config.gelu, "none"); // exact GELU is written as "gelu"
  const idx = tensor(new Int32Array([1, 5, 7, 2]), { shape: [1, 4] });
  const a = await noGrad(() => plain.forward(idx).logits).toArray();
  const b = await noGrad(() => back.forward(idx).logits).toArray();
  assert.deepEqual(b, a);
  assert.deepEqual(
    Array.from(await back.h[0].attn.c_attn.bias!.toArray()),
    new Array(24).fill(0),
  );
  free(plain);
  free(back);
});

Deno.test("GPT.config() gives the GPT-2 sizes and the examples' small models", () => {
  const sizes = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"].map((n) => {
    const c = GPT.config(n);
    return [c.nLayer, c.nHead, c.nEmbd, c.vocabSize, c.blockSize, c.gelu];
  });
  assert.deepEqual(sizes, [
    [12, 12, 768, 50257, 1024, "tanh"],
    [24, 16, 1024, 50257, 1024, "tanh"],
    [36, 20, 1280, 50257, 1024, "tanh"],
    [48, 25, 1600, 50257, 1024, "tanh"],
  ]);
  // parameter counts of the published models (tied head): 124M, 355M, 774M, 1558M
  const count = (c: ReturnType<typeof GPT.config>) => {
    const C = c.nEmbd;
    return c.vocabSize * C + c.blockSize * C + c.nLayer * (12 * C * C + 13 * C) + 2 * C;
  };
  assert.deepEqual(
    ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"].map((n) => count(GPT.config(n))),
    [124439808, 354823168, 774030080, 1557611200],
  );
  const c = GPT.config("char-small", { vocabSize: 98, blockSize: 32 });
  assert.deepEqual([c.nLayer, c.nHead, c.nEmbd, c.vocabSize, c.blockSize], [2, 4, 128, 98, 32]);
  assert.equal(GPT.config("char-tiny").nEmbd, 64);
  assert.ok(Object.isFrozen(GPT_PRESETS.gpt2));
  assert.throws(() => GPT.config("gpt3"), /unknown preset 'gpt3'; valid: gpt2, gpt2-medium/);
  assert.throws(
    () => new GPT({ ...GPT.config("char-tiny"), gelu: "fast" as "tanh" }),
    /gelu must be "none" \(exact\) or "tanh"/,
  );
});

Deno.test("a tiny GPT built from a preset counts its parameters as the formula does", () => {
  const cfg = GPT.config("char-tiny", { vocabSize: 40, seed: 3 });
  const model = new GPT(cfg);
  const n = model.parameters().reduce((a, p) => a + p.size, 0);
  const C = 64;
  assert.equal(n, 40 * C + 32 * C + 2 * (12 * C * C + 13 * C) + 2 * C);
  free(model);
});
