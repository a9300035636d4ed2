/**
 * Integer ids checked on the device. An op that indexes with ids (`crossEntropy`'s targets,
 * `Embedding`'s token ids) cannot raise inside a kernel, and reading the ids back before
 * every op would stall the GPU. So a kernel that meets an id outside its range records it
 * in a small per-device flag buffer (which op, and the smallest and largest bad ids), clamps
 * it as before, and goes on; the next readback of any tensor (`toArray`, `item`, `codes`)
 * reads the flag with its own bytes (the same staging buffer, one `mapAsync`) and, when it is
 * set, throws a `ValueError` naming the op, the range and the ids, instead of returning
 * values computed from clamped ids. Like PyTorch's device-side assert, the error comes at the
 * next synchronization, not at the call.
 *
 * @module
 */

import { ValueError } from "../../errors.ts";
import { type PooledBuffer, program, type Runtime } from "../../gpu/mod.ts";

/** The ops whose ids are checked: their bit in the flag and the name errors give. */
export const ID_OPS = {
  crossEntropy: { bit: 1, name: "crossEntropy(): a target" },
  embedding: { bit: 2, name: "Embedding.forward(): an id" },
} as const;

/** Flag words: [ops mask, largest bad id, smallest bad id, unused]; i32. */
const INIT = new Int32Array([0, -2147483648, 2147483647, 0]);

interface Flag {
  buf: PooledBuffer;
  /** The range each op checked against, by bit, since the last readback. */
  armed: Map<number, number>;
}

const flags = new WeakMap<Runtime, Flag>();

/**
 * The flag buffer of `rt`, armed for `op` with ids checked against `[0, bound)`: pass it to
 * the kernel that checks (see `ID_CHECK_WGSL`).
 */
export function idFlag(rt: Runtime, op: keyof typeof ID_OPS, bound: number): PooledBuffer {
  let f = flags.get(rt);
  if (!f || f.buf.released) {
    const buf = rt.alloc(16, { dtype: "i32", purpose: "other" });
    rt.write(buf, INIT);
    f = { buf, armed: new Map() };
    flags.set(rt, f);
  }
  f.armed.set(ID_OPS[op].bit, bound);
  return f.buf;
}

/**
 * WGSL of `ulp_bad_id(v, bit)`, which records id `v` (out of range) for the op of `bit` in the
 * flag: a program declares the flag as its raw binding `bad` of type `atomic<i32>`.
 */
export const WGSL_BAD_ID = `fn ulp_bad_id(v: i32, bit: u32) {
  atomicOr(&bad[0], i32(bit));
  atomicMax(&bad[1], v);
  atomicMin(&bad[2], v);
}
`;

/**
 * `rt.read(buf, offset, size)`, and, when ops that check ids ran since the last readback, the
 * flag with it: a `ValueError` if any of them met an id out of range (the flag is cleared).
 */
export async function readChecked(
  rt: Runtime,
  buf: PooledBuffer,
  offset: number,
  size: number,
): Promise<ArrayBuffer> {
  const f = flags.get(rt);
  if (!f || f.armed.size === 0 || f.buf.released) return await rt.read(buf, offset, size);
  const armed = new Map(f.armed);
  f.armed.clear();
  const [bytes, flag] = await Promise.all([rt.read(buf, offset, size), rt.read(f.buf, 0, 16)]);
  const [mask, hi, lo] = new Int32Array(flag);
  if (mask === 0) return bytes;
  rt.write(f.buf, INIT);
  const ops = Object.values(ID_OPS).filter((o) => (mask & o.bit) !== 0).map((o) => {
    const bound = armed.get(o.bit);
    return `${o.name} outside [0, ${bound ?? "its range"})`;
  });
  const ids = lo === hi ? `${lo}` : `from ${lo} to ${hi}`;
  throw new ValueError(
    `${ops.join(" and ")} reached the GPU since the last readback (out-of-range ids ${ids}); ` +
      `the kernel clamped them, so the values computed from them are wrong. Check the ids ` +
      `(targets may also be the ignoreIndex); they are checked on the device and reported at ` +
      `the next readback`,
  );
}

/** Records a check of the ids of `idsBuf` (`n` of them) against `[0, bound)` for `op`. */
export function checkIds(
  rt: Runtime,
  op: keyof typeof ID_OPS,
  idsBuf: PooledBuffer,
  n: number,
  bound: number,
  signed: boolean,
): void {
  if (n === 0) return;
  const flag = idFlag(rt, op, bound);
  const WG = 64;
  const outside = signed ? "v < 0i || v >= i32(u.bound)" : "t >= u.bound";
  program(rt, `idCheck|${signed}`, {
    label: "idCheck",
    bindings: [
      { name: "ids", type: "u32", access: "read" },
      { name: "bad", type: "atomic<i32>", access: "read_write" },
    ],
    uniforms: [
      { name: "n", type: "u32" },
      { name: "bound", type: "u32" },
      { name: "bit", type: "u32" },
    ],
    workgroupSize: WG,
  }, () =>
    `${WGSL_BAD_ID}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  let i = wg * ${WG}u + li;
  if (i >= u.n) { return; }
  let t = ids[i];
  let v = bitcast<i32>(t);
  if (${outside}) { ulp_bad_id(v, u.bit); }
}`).run({
      buffers: { ids: idsBuf, bad: flag },
      uniforms: { n, bound, bit: ID_OPS[op].bit },
      groups: Math.ceil(n / WG),
    });
}
