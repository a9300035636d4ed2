// Per-device constants that ulp makes on first use and keeps (GradScaler's zero flag, the id
// flag that crossEntropy and Embedding check their ids into): tests that count live bytes make
// them first, so that a row that makes them is not taken for a leak. Everything else this
// makes is disposed (tests/tensor/leak_test.ts checks that nothing is left unreachable).
import { Embedding, GradScaler, SGD, tensor, tidy } from "../mod.ts";

/** Makes the per-device constants on the current device; frees everything else it made. */
export async function makeDeviceConstants(): Promise<void> {
  const p = tensor([1, 2], { requiresGrad: true });
  const opt = new SGD([p], { lr: 0.1 });
  const scaler = new GradScaler();
  tidy(() => scaler.scale(p.mul(p).sum()).backward());
  scaler.step(opt);
  scaler.update();
  opt.dispose();
  scaler.dispose();
  p.zeroGrad();
  p.dispose();
  const e = new Embedding(2, 2);
  // the ids named, to be disposed (made inline they were left to the safety net), and the
  // forward in tidy, which frees its intermediates (the graph's reshape and gather)
  const ids = tensor(new Int32Array([1]));
  const out = tidy(() => e.forward(ids));
  await out.toArray();
  out.dispose();
  ids.dispose();
  for (const q of e.parameters()) q.dispose();
}
