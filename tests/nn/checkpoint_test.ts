// Checkpoints (nn/checkpoint.ts): every strategy's whole training state survives a save and a
// load bit for bit (parameters, AdamW states with Collage's low parts, step counts, the
// GradScaler), the next step after loading equals the next step without a checkpoint, the
// files are written so that an interrupted save leaves the previous checkpoint readable, and
// malformed checkpoints are refused with a FormatError naming the problem.
import assert from "node:assert/strict";
import {
  AdamW,
  applyPrecision,
  autocast,
  FormatError,
  FP8Recipe,
  getRngState,
  GPT,
  GradScaler,
  LayerNorm,
  Linear,
  loadCheckpoint,
  manualSeed,
  Module,
  mseLoss,
  type OptimizerStateDict,
  precisionNames,
  precisionStrategy,
  rand,
  readCheckpoint,
  saveCheckpoint,
  type Stateful,
  type Tensor,
  tensor,
  tidy,
} from "../../mod.ts";
import { snapshot } from "../tensor/_reference.ts";

const DIR = "./.test-tmp/checkpoint_test";
const CFG = { vocabSize: 16, blockSize: 4, nLayer: 1, nHead: 2, nEmbd: 8 };
await Deno.mkdir(DIR, { recursive: true });

/** A small model: what matters here is the state of its optimizer. */
class Tiny extends Module {
  fc1: Linear;
  ln = new LayerNorm(8);
  fc2: Linear;
  constructor(seed: number) {
    super();
    this.fc1 = new Linear(4, 8, { seed });
    this.fc2 = new Linear(8, 3, { seed: seed + 1 });
  }
  forward(x: Tensor): Tensor {
    return this.fc2.forward(this.ln.forward(this.fc1.forward(x)).relu());
  }
}

/** A model, optimizer and scaler under strategy `name`, fresh (seeded). */
function setup(name: string, seed = 5) {
  const s = precisionStrategy(name);
  const model = applyPrecision(new Tiny(seed), name);
  const optimizer = new AdamW(model.parameters(), {
    lr: 1e-2,
    betas: [0.9, 0.95],
    weightDecay: 0.1,
    precision: name,
  });
  const scaler = s.gradScaler ? new GradScaler({ initScale: 2 ** 10, growthInterval: 2 }) : null;
  // fp8: the run's own recipe, whose amax histories and scales are extra state
  const recipe = s.autocastOptions?.dtype === "fp8" ? new FP8Recipe({ amaxHistoryLen: 4 }) : null;
  const ac = s.autocastOptions ? { ...s.autocastOptions, ...(recipe ? { recipe } : {}) } : null;
  const extra: { fp8?: FP8Recipe } = recipe ? { fp8: recipe } : {};
  return { s, model, optimizer, scaler, ac, extra: extra as Record<string, FP8Recipe> };
}

function step(t: ReturnType<typeof setup>, k: number): void {
  const x = tensor(Array.from({ length: 8 }, (_, i) => Math.sin(i + k)), { shape: [2, 4] });
  const y = tensor([0.5, -1, 2, k, 0, 1], { shape: [2, 3] });
  tidy(() => {
    const fwd = () => mseLoss(t.model.forward(x), y);
    const loss = t.ac ? autocast(t.ac, fwd) : fwd();
    (t.scaler ? t.scaler.scale(loss) as Tensor : loss).backward();
    if (t.scaler) {
      t.scaler.step(t.optimizer);
      t.scaler.update();
    } else t.optimizer.step();
    t.optimizer.zeroGrad();
  });
  x.dispose();
  y.dispose();
}

async function fullState(t: ReturnType<typeof setup>) {
  const opt: OptimizerStateDict = t.optimizer.stateDict();
  const fp8 = t.extra.fp8 ? t.extra.fp8.stateDict() : null;
  const snap = {
    model: await snapshot(t.model.stateDict()),
    optimizer: await snapshot(opt),
    scaler: t.scaler ? await snapshot(t.scaler.stateDict()) : null,
    // slots are named by parameter ids (of this process), restored by position on first use
    fp8: fp8 ? await snapshot({ ...fp8, slots: null }) : null,
  };
  if (fp8) { for (const k of ["amaxHistory", "scale", "amax"] as const) fp8[k].dispose(); }
  for (const s of Object.values(opt.state)) {
    for (const v of Object.values(s)) if (v && typeof v === "object") v.dispose();
  }
  return snap;
}

function free(t: ReturnType<typeof setup>): void {
  for (const p of t.model.parameters()) p.dispose();
  t.optimizer.dispose();
  t.scaler?.dispose();
}

// fp8-<recipe> stores what fp8 stores; each recipe's own state is restored bit for bit in
// tests/tensor/fp8_resume_test.ts and fp8_resume_more_test.ts, and through train_gpt's
// checkpoints in tests/examples/train_gpt_test.ts (fp8-nvfp4)
for (const name of precisionNames().filter((n) => !n.startsWith("fp8-"))) {
  Deno.test(`saveCheckpoint() and loadCheckpoint() restore a ${name} run bit for bit`, async () => {
    const a = setup(name);
    step(a, 0);
    step(a, 1);
    const path = `${DIR}/${name}.json`;
    await saveCheckpoint(path, { ...a, step: 2, data: { position: 2 }, meta: { name } });
    const before = await fullState(a);
    if (name.startsWith("collage")) {
      const keys = Object.keys((before.optimizer as OptimizerStateDict).state[0]);
      assert.ok(keys.includes("paramLo"), `${name} saves paramLo: ${keys}`);
      if (name === "collage-plus") assert.ok(keys.includes("expAvgSqLo"));
    }
    if (a.scaler) assert.ok((before.scaler as { scale: { codes: number[] } }).scale.codes[0] > 0);
    if (a.extra.fp8) {
      const h = (before.fp8 as { amaxHistory: { codes: number[] } }).amaxHistory.codes;
      assert.ok(h.some((c) => c !== 0), "fp8 saves amax histories");
    }

    const b = setup(name, 99); // other weights, no state yet
    const info = await loadCheckpoint(path, b);
    assert.deepEqual([info.step, info.data, info.meta], [2, { position: 2 }, { name }]);
    assert.deepEqual(await fullState(b), before);

    // the next step from the restored state equals the next step of the original (each read
    // right after its step: entering autocast commits every FP8 recipe's pending amaxes)
    step(a, 2);
    const after = await fullState(a);
    step(b, 2);
    assert.deepEqual(await fullState(b), after);
    free(a);
    free(b);
  });
}

Deno.test("loadCheckpoint() restores the random stream, and extra state with NaN, -0 and tensors", async () => {
  let restored: unknown = null;
  const extra: Stateful = {
    stateDict: () =>
      Promise.resolve({
        history: tensor([1.5, -2, 448], { dtype: "e4m3" }),
        scales: [NaN, -0, Infinity, -Infinity, 0.1],
        note: "fp8",
      }),
    loadStateDict: async (s) => (restored = await snapshot(s)),
  };
  const model = new GPT({ ...CFG, seed: 1 });
  manualSeed(7);
  rand([3]).dispose();
  const rng = getRngState();
  const path = `${DIR}/extra.json`;
  await saveCheckpoint(path, { model, extra: { fp8: extra }, step: 0 });
  manualSeed(100);
  await loadCheckpoint(path, { model, extra: { fp8: extra } });
  assert.deepEqual(getRngState(), rng);
  const r = restored as { history: { codes: number[] }; scales: number[]; note: string };
  assert.deepEqual(r.history.codes, [0x3c, 0xc0, 0x7e]); // e4m3 codes of 1.5, -2, 448
  assert.ok(Number.isNaN(r.scales[0]) && Object.is(r.scales[1], -0));
  assert.deepEqual(r.scales.slice(2), [Infinity, -Infinity, 0.1]);
  assert.equal(r.note, "fp8");
  for (const p of model.parameters()) p.dispose();
});

Deno.test("a save interrupted before its JSON leaves the previous checkpoint readable, and the next save cleans up", async () => {
  const dir = `${DIR}/atomic`;
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  const model = new GPT({ ...CFG, seed: 2 });
  const w0 = Array.from(await model.parameters()[0].toArray());
  await saveCheckpoint(`${dir}/ckpt.json`, { model, step: 1 });
  // what a kill leaves: a new tensor file and a temporary JSON, the old JSON in place
  await Deno.writeFile(`${dir}/ckpt-2.safetensors`, new Uint8Array([1, 2, 3]));
  await Deno.writeTextFile(`${dir}/ckpt.json.tmp-123`, "{ half");
  const info = await loadCheckpoint(`${dir}/ckpt.json`, { model });
  assert.equal(info.step, 1);
  assert.deepEqual(Array.from(await model.parameters()[0].toArray()), w0);
  await saveCheckpoint(`${dir}/ckpt.json`, { model, step: 2 });
  await saveCheckpoint(`${dir}/ckpt.json`, { model, step: 2 }); // same step twice
  const files = [];
  for await (const e of Deno.readDir(dir)) files.push(e.name);
  assert.deepEqual(files.sort(), ["ckpt-2.1.safetensors", "ckpt.json"]);
  assert.equal((await readCheckpoint(`${dir}/ckpt.json`)).tensors, "ckpt-2.1.safetensors");
  for (const p of model.parameters()) p.dispose();
});

Deno.test("loadCheckpoint() refuses malformed checkpoints and models that do not match with a FormatError", async () => {
  const dir = `${DIR}/bad`;
  const model = new GPT({ ...CFG, seed: 3 });
  const path = `${dir}/ok.json`;
  await saveCheckpoint(path, { model, step: 4 });
  const json = JSON.parse(await Deno.readTextFile(path));
  const variant = async (name: string, edit: (j: Record<string, unknown>) => void) => {
    const j = structuredClone(json);
    edit(j);
    await Deno.writeTextFile(`${dir}/${name}.json`, JSON.stringify(j));
    return `${dir}/${name}.json`;
  };
  const cases: [string, RegExp][] = [
    [await variant("format", (j) => (j.format = "other")), /'format' is "other"/],
    [await variant("step", (j) => (j.step = -1)), /'step' is not a count/],
    [
      await variant("escape", (j) => (j.tensors = "../x.safetensors")),
      /file name in the same folder/,
    ],
    [
      await variant("missing", (j) => (j.tensors = "gone.safetensors")),
      /gone.safetensors is missing/,
    ],
    [
      await variant("ref", (j) => {
        const m = (j.state as { model: Record<string, unknown> }).model;
        m["wte.weight"] = { $tensor: "nope" };
      }),
      /state.model.wte.weight refers to tensor "nope"/,
    ],
  ];
  await Deno.writeTextFile(`${dir}/garbage.json`, "{ not json");
  cases.push([`${dir}/garbage.json`, /not valid JSON/]);
  for (const [p, re] of cases) {
    await assert.rejects(loadCheckpoint(p, { model }), (e: Error) => {
      assert.ok(e instanceof FormatError, `${p}: ${e}`);
      assert.match(e.message, re);
      return true;
    });
  }
  const wide = new GPT({ ...CFG, nEmbd: 16, seed: 3 });
  await assert.rejects(
    loadCheckpoint(path, { model: wide }),
    (e: Error) =>
      e instanceof FormatError &&
      /'wte.weight' has shape \[16,8\] in the checkpoint, \[16,16\]/.test(e.message),
  );
  const opt = new AdamW(model.parameters());
  await assert.rejects(
    loadCheckpoint(path, { model, optimizer: opt }),
    (e: Error) => e instanceof FormatError && /holds no optimizer state/.test(e.message),
  );
  opt.dispose();
  for (const p of [...model.parameters(), ...wide.parameters()]) p.dispose();
});

// ---- tampered checkpoints (issue #18, item 1) ------------------------------------------------

/** The header of a safetensors file as an object, and a way to write an edited one back. */
async function editHeader(
  file: string,
  edit: (h: Record<string, { dtype: string; shape: number[] }>) => void,
): Promise<void> {
  const bytes = await Deno.readFile(file);
  const hlen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const h = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + hlen)));
  edit(h);
  const text = new TextEncoder().encode(JSON.stringify(h));
  assert.ok(text.byteLength <= hlen, "the edit keeps the header's length");
  bytes.fill(0x20, 8, 8 + hlen);
  bytes.set(text, 8);
  await Deno.writeFile(file, bytes);
}

/** A saved run (model and AdamW after one step) in its own folder; returns its paths. */
async function savedRun(name: string) {
  const dir = `${DIR}/tamper-${name}`;
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  const t = setup("fp32");
  step(t, 0);
  const path = `${dir}/ckpt.json`;
  await saveCheckpoint(path, { ...t, step: 1, data: { position: 1 } });
  free(t);
  const json = JSON.parse(await Deno.readTextFile(path));
  return { path, file: `${dir}/${json.tensors}`, json };
}

async function refused(path: string, targets: Parameters<typeof loadCheckpoint>[1], re: RegExp) {
  await assert.rejects(loadCheckpoint(path, targets), (e: Error) => {
    assert.ok(e instanceof FormatError, `${e.name}: ${e.message}`);
    assert.match(e.message, re);
    return true;
  });
}

Deno.test("the JSON records each tensor's dtype, shape and SHA-256, as an independent digest gives them", async () => {
  const { file, json } = await savedRun("records");
  const bytes = await Deno.readFile(file);
  const hlen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + hlen)));
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  assert.deepEqual(Object.keys(json.checksums).sort(), names.sort());
  for (const n of names) {
    const [b, e] = header[n].data_offsets;
    const d = await crypto.subtle.digest("SHA-256", bytes.slice(8 + hlen + b, 8 + hlen + e));
    const hex = Array.from(new Uint8Array(d), (x) => x.toString(16).padStart(2, "0")).join("");
    assert.deepEqual(json.checksums[n], {
      dtype: header[n].dtype.toLowerCase(),
      shape: header[n].shape,
      sha256: hex,
    });
  }
  assert.ok(names.includes("model.fc1.weight") && names.includes("optimizer.state.0.expAvg"));
});

Deno.test("a tampered tensor file is refused before anything is loaded, naming the tensor", async () => {
  const fresh = () => setup("fp32", 42);
  // the dtype F32 -> I32 in the header (same byte size), for a weight and an optimizer state
  for (const name of ["model.fc1.weight", "optimizer.state.0.expAvg"]) {
    const { path, file } = await savedRun(`dtype-${name}`);
    await editHeader(file, (h) => (h[name].dtype = "I32"));
    const t = fresh();
    const w0 = Array.from(await t.model.parameters()[0].toArray());
    await refused(
      path,
      t,
      new RegExp(`tensor "${name}" has dtype i32 in the file, f32 in the JSON; the tensor file`),
    );
    // nothing changed
    assert.deepEqual(Array.from(await t.model.parameters()[0].toArray()), w0);
    free(t);
  }
  // a NaN written into a weight, a flipped bit in an optimizer state, a shape changed
  const edits: [string, (bytes: Uint8Array, at: (n: string) => number) => void, RegExp][] = [
    [
      "nan",
      (b, at) => new DataView(b.buffer).setFloat32(at("model.fc2.bias"), NaN, true),
      /the bytes of tensor "model\.fc2\.bias" do not match their SHA-256 checksum/,
    ],
    [
      "bit",
      (b, at) => (b[at("optimizer.state.1.expAvgSq") + 2] ^= 0x10),
      /the bytes of tensor "optimizer\.state\.1\.expAvgSq" do not match their SHA-256/,
    ],
  ];
  for (const [label, edit, re] of edits) {
    const { path, file } = await savedRun(label);
    const bytes = await Deno.readFile(file);
    const hlen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + hlen)));
    edit(bytes, (n) => 8 + hlen + header[n].data_offsets[0]);
    await Deno.writeFile(file, bytes);
    const t = fresh();
    await refused(path, t, re);
    free(t);
  }
  const { path, file } = await savedRun("shape");
  await editHeader(file, (h) => (h["model.fc1.weight"].shape = [4, 8]));
  const t = fresh();
  await refused(path, t, /tensor "model\.fc1\.weight" has shape \[4,8\] in the file, \[8,4\]/);
  free(t);
});

Deno.test("a dtype changed in both files is refused by the model and the optimizer (no conversion)", async () => {
  for (const name of ["model.fc1.weight", "optimizer.state.0.expAvg"]) {
    const { path, file, json } = await savedRun(`both-${name}`);
    await editHeader(file, (h) => (h[name].dtype = "I32"));
    json.checksums[name].dtype = "i32";
    await Deno.writeTextFile(path, JSON.stringify(json));
    const t = setup("fp32", 42);
    await refused(
      path,
      t,
      name.startsWith("model")
        ? /'fc1\.weight' has dtype i32 in the checkpoint, f32 in the model; build the model in the precision/
        : /the optimizer state does not fit: AdamW\.loadStateDict\(\): state 0\.expAvg has dtype i32, this optimizer keeps f32/,
    );
    free(t);
  }
});

Deno.test("a model built in another precision is refused, and { cast: true } converts on purpose", async () => {
  const { path } = await savedRun("cast");
  const a = setup("fp32");
  step(a, 0); // the same weights and step as the saved run
  const b = setup("bf16", 42);
  await refused(path, { model: b.model }, /'fc1\.weight' has dtype f32 in the checkpoint, bf16/);
  await loadCheckpoint(path, { model: b.model, cast: true });
  const [wa, wb] = [a.model.parameters()[0], b.model.parameters()[0]];
  const want = Array.from(await wa.cast("bf16").toArray());
  assert.deepEqual(Array.from(await wb.toArray()), want);
  free(a);
  free(b);
  // the same rule for the building blocks: Module.loadStateDict and copy_
  const x = tensor([1.5, 2.25]);
  const y = tensor([0, 0], { dtype: "bf16" });
  assert.throws(
    () => y.copy_(x),
    /copy_\(\): source of dtype f32 differs from the destination's bf16/,
  );
  y.copy_(x, { cast: true });
  assert.deepEqual(Array.from(await y.toArray()), [1.5, 2.25]);
  const l32 = new Linear(2, 2, { seed: 1 }), l16 = applyPrecision(new Linear(2, 2), "bf16");
  assert.throws(
    () => l16.loadStateDict(l32.stateDict()),
    /loadStateDict\(\): 'weight' has dtype f32 in the state dict but bf16 in the model; pass \{ cast: true \}/,
  );
  for (const t of [x, y, ...l32.parameters(), ...l16.parameters()]) t.dispose();
});

Deno.test("files that are not a checkpoint's JSON are refused without echoing their content", async () => {
  const { path, file, json } = await savedRun("swap");
  const model = setup("fp32").model;
  // the safetensors file passed as the JSON
  await refused(
    file,
    { model },
    /this is a safetensors file \(binary\); pass the checkpoint's \.json/,
  );
  // a text file of someone else's (as a symlink would read it): the message quotes nothing of it
  const secret = `${DIR}/tamper-swap/secret.json`;
  await Deno.writeTextFile(secret, "root:x:0:0:root:/root:/bin/bash\n");
  await assert.rejects(loadCheckpoint(secret, { model }), (e: Error) => {
    assert.ok(e instanceof FormatError);
    assert.match(e.message, /not valid JSON \(a syntax error/);
    assert.ok(!/root|bash/.test(e.message.replace(secret, "")), e.message);
    return true;
  });
  // binary that is not UTF-8
  await Deno.writeFile(secret, new Uint8Array([0xff, 0xfe, 0x00, 0x41]));
  await refused(secret, { model }, /not valid JSON \(it is not UTF-8 text\)/);
  // a version-1 checkpoint (no checksums), and a folder instead of a file
  await Deno.writeTextFile(secret, JSON.stringify({ ...json, version: 1, checksums: undefined }));
  await refused(secret, { model }, /version 1 is not 2 \(version 1 has no checksums/);
  await refused(`${DIR}/tamper-swap`, { model }, /is not a file; pass the checkpoint's \.json/);
  // a long hostile tensor name is quoted short and escaped
  const long = `${"\u0007x".repeat(500)}`;
  await Deno.writeTextFile(
    secret,
    JSON.stringify({
      ...json,
      checksums: { ...json.checksums, [long]: json.checksums["model.fc1.weight"] },
    }),
  );
  await assert.rejects(loadCheckpoint(secret, { model }), (e: Error) => {
    assert.match(e.message, /lacks "(\\u0007x){20}\.\.\."/);
    assert.ok(e.message.length < 600, `${e.message.length} characters`);
    return true;
  });
  for (const p of model.parameters()) p.dispose();
  await Deno.stat(path);
});

Deno.test("a reference in the JSON moved to another tensor of the file is refused (each tensor in its own place)", async () => {
  const { path, json } = await savedRun("moved");
  const opt = json.state.optimizer.state;
  // parameters 0 and 1 of the Tiny model are fc1.weight [8,4] and fc1.bias [8]; 2 and 3 are
  // the layer norm's [8] and [8]: the same shape, so only the place tells them apart
  opt["3"].expAvg = { $tensor: "optimizer.state.2.expAvg" };
  await Deno.writeTextFile(path, JSON.stringify(json));
  const t = setup("fp32", 42);
  await refused(
    path,
    t,
    /state\.optimizer\.state\.3\.expAvg refers to tensor "optimizer\.state\.2\.expAvg", saved from another place \("optimizer\.state\.3\.expAvg"\)/,
  );
  free(t);
});
