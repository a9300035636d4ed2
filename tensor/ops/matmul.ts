/**
 * Matrix products: `matmul(a, b)` with PyTorch's semantics (2-D, batched with broadcast
 * batch dimensions, 1-D vectors), operands of any float dtype, optionally transposed without
 * materialising the transpose, accumulation in f32 and one rounding to the output dtype.
 *
 * The kernel (a small program: `matmulSource()` returns WGSL for given layouts and tile
 * sizes) computes an output tile per workgroup, each invocation a block of registers: 64x64
 * per 16x16 invocations of 4x4 on GPUs; on CPU adapters (llvmpipe, where an invocation is a
 * SIMD lane and a larger block amortises the workgroup-memory gathers) 128x128 per 8x8 of
 * 16x16, with narrow tiles for skinny products so that a matrix-vector product does not pay
 * for 127 padding rows. Operands are decoded to f32 once, while a K-slice of each is copied
 * into workgroup memory, reading a packed operand a whole word at a time where its quads are
 * word-aligned; the inner loop then only multiplies f32. Each output element is
 * `sum over r, k of A[r][m,k] B[r][k,n]`, where `r` runs over batch dimensions that are
 * *reduced*: the forward pass has none, and the backward pass uses them to sum a gradient
 * over broadcast batch dimensions inside the same f32 accumulator (no temporary, no second
 * rounding, no separate reduction).
 *
 * CPU adapters get a second kernel family for the products of a Linear layer (no batch, the
 * medium and large shape classes by default): A and B copied (f32 and bf16 rows of whole
 * 256-byte units) or packed into textures and read without workgroup memory or barriers
 * (`matmulRawSource`), since every load there runs lane by lane; the same products in the
 * same order, so the same bits. Products whose textures would be too long run in pieces of
 * the output (`texturePlan`).
 * `tuneMatmul()` times both families' tiles.
 *
 * Packed outputs: an invocation owns 4 consecutive columns of a row, which are whole u32
 * words (one word of four 8-bit lanes, two words of 16-bit lanes) when the row length N is
 * a multiple of the lanes per word. Then the kernel encodes and writes the words itself.
 * Otherwise a word could straddle two rows owned by different invocations, so the kernel
 * writes an f32 temporary and `cast()` rounds it once to the output dtype.
 *
 * Reference: the register-blocked tiling of Volkov & Demmel, "Benchmarking GPUs to tune
 * dense linear algebra" (SC 2008), as in most WebGPU matmul kernels.
 *
 * @module
 */

import {
  type DType,
  dtype as toDType,
  type DTypeLike,
  float32,
  isFloat,
  promoteTypes,
} from "../../dtypes/mod.ts";
import { DTypeError, ShapeError, ValueError } from "../../errors.ts";
import {
  type BindingSpec,
  type Box,
  currentRuntime,
  onNewDevice,
  type PooledBuffer,
  program,
  type Runtime,
  textureReads,
} from "../../gpu/mod.ts";
import { attach } from "../../autograd/graph.ts";
import { type Layout, layoutOf } from "../../gpu/layout.ts";
import { fmtShape, installMethods, Tensor } from "../core/tensor.ts";
import { cast } from "./cast.ts";
import { contextState, type GemmSite } from "../core/context.ts";
import { rand, tensor } from "./creation.ts";

/** Options of `matmul`: transposed operands and the output dtype. */
export interface MatmulOptions {
  /** Use the transpose of `a`'s last two dimensions (`a` holds `[..., K, M]`). */
  transA?: boolean;
  /** Use the transpose of `b`'s last two dimensions (`b` holds `[..., N, K]`). */
  transB?: boolean;
  /** The output dtype (a float dtype); default `promoteTypes(a.dtype, b.dtype)`. */
  outDtype?: DTypeLike;
}

/**
 * Tile sizes: a workgroup of wgx x wgy invocations computes (wgy tm) x (wgx tn) outputs, each
 * invocation a tm x tn register block (tm and tn multiples of 4), K in slices of bk.
 */
export interface Tiles {
  /** Rows of an invocation's register block (a multiple of 4). */
  readonly tm: number;
  /** Columns of an invocation's register block (a multiple of 4). */
  readonly tn: number;
  /** Invocations of a workgroup along N. */
  readonly wgx: number;
  /** Invocations of a workgroup along M. */
  readonly wgy: number;
  /** Depth of the K slice held in workgroup memory (a multiple of 4; 4 for textures). */
  readonly bk: number;
  /**
   * The kernel family: `"texture"` copies or packs A and B into textures and reads them
   * without workgroup memory or barriers (CPU adapters: see `matmulRawSource`); absent, the
   * workgroup-memory tiling.
   */
  readonly family?: "texture";
}

/** The classic GPU tiling: 64x64 outputs per 16x16 invocations of 4x4. */
const GPU_TILES: Tiles = { tm: 4, tn: 4, wgx: 16, wgy: 16, bk: 16 };

/**
 * Shape classes, by the sizes of M and N: each has its default tiles and is tuned on its own
 * (a 16 x 512 GEMM wants a different tile than a 1024 x 1024 one).
 */
export type MatmulShapeClass = "small" | "short" | "narrow" | "medium" | "large";

/** The class of an M x N product. */
function shapeClass(M: number, N: number): MatmulShapeClass {
  if (M <= 32 && N <= 32) return "small";
  if (M <= 32) return "short";
  if (N <= 32) return "narrow";
  if (M <= 64 || N <= 64) return "medium";
  return "large";
}

/**
 * The workgroup-memory family's tiles of each class on CPU adapters (the defaults of the
 * classes the texture family does not take), measured on llvmpipe (1024^3 f32): 4x4
 * register blocks give about 4.5 GFLOP/s, 16x16 blocks about 12. K slices stay at 4 there:
 * compiling through the GL backend costs time quadratic in the size of workgroup arrays (512
 * vec4 take 1.7 s, 1024 take 15 s), for no measured speed.
 */
const CPU_TILES: Readonly<Record<MatmulShapeClass, Tiles>> = {
  small: { tm: 4, tn: 4, wgx: 8, wgy: 8, bk: 4 }, // 32 x 32
  short: { tm: 4, tn: 8, wgx: 16, wgy: 4, bk: 4 }, // 16 x 128
  narrow: { tm: 8, tn: 4, wgx: 4, wgy: 16, bk: 4 }, // 128 x 16
  medium: { tm: 8, tn: 8, wgx: 8, wgy: 8, bk: 4 }, // 64 x 64: 2.3x the 4x4 blocks at 1024x64x64
  large: { tm: 16, tn: 16, wgx: 8, wgy: 8, bk: 4 }, // 128 x 128
};

/**
 * The texture family's tiles per class on CPU adapters (8 invocations along x: llvmpipe runs
 * a workgroup 8 lanes at a time, so a narrower x leaves lanes idle). An invocation loads tm
 * + tn texels per 4 steps of K for 4 tm tn multiply-adds, so larger blocks read less per
 * product, up to where the accumulators spill (about 32 x 32).
 */
const CPU_TEXTURE_TILES: Readonly<Record<MatmulShapeClass, readonly Tiles[]>> = {
  small: [{ tm: 4, tn: 4, wgx: 8, wgy: 2, bk: 4, family: "texture" }], // 8 x 32
  short: [
    { tm: 8, tn: 16, wgx: 8, wgy: 2, bk: 4, family: "texture" }, // 16 x 128
    { tm: 4, tn: 16, wgx: 8, wgy: 2, bk: 4, family: "texture" }, // 8 x 128
  ],
  narrow: [{ tm: 16, tn: 4, wgx: 8, wgy: 2, bk: 4, family: "texture" }], // 32 x 32
  medium: [
    { tm: 16, tn: 8, wgx: 8, wgy: 2, bk: 4, family: "texture" }, // 32 x 64
    { tm: 16, tn: 16, wgx: 8, wgy: 2, bk: 4, family: "texture" }, // 32 x 128
  ],
  large: [
    { tm: 32, tn: 16, wgx: 8, wgy: 2, bk: 4, family: "texture" }, // 64 x 128
    { tm: 48, tn: 16, wgx: 8, wgy: 2, bk: 4, family: "texture" }, // 96 x 128
    { tm: 64, tn: 16, wgx: 8, wgy: 2, bk: 4, family: "texture" }, // 128 x 128
    { tm: 32, tn: 32, wgx: 8, wgy: 2, bk: 4, family: "texture" }, // 64 x 256
  ],
};

/**
 * The default tiles per class on CPU adapters (tuneMatmul() may choose others). The texture
 * family's from a few rows or columns up: on lavapipe, 4 x 16 blocks took 0.16 to 0.31x the
 * workgroup-memory kernel's time on GPT-2's products of 1 to 32 rows (8 x 768 x 2304 4.2
 * against 13.1 ms; the LM head of 8 rows, 8 x 768 x 50257, 37 against 227), 16 x 4 blocks
 * 0.39 to 0.69x on 8 and 16 columns; the same bits. The small class stays where it was: its
 * products take about what a wait for the GPU does in either family.
 */
const CPU_DEFAULT: Readonly<Record<MatmulShapeClass, Tiles>> = {
  small: CPU_TILES.small,
  short: CPU_TEXTURE_TILES.short[1],
  narrow: CPU_TEXTURE_TILES.narrow[0],
  medium: CPU_TEXTURE_TILES.medium[0],
  large: CPU_TEXTURE_TILES.large[0],
};

/** Candidates the tuner times per class: the default and neighbours of it. */
function candidates(rt: Runtime, c: MatmulShapeClass): Tiles[] {
  if (!rt.info.isFallbackAdapter) {
    const gpu: Tiles[] = [
      GPU_TILES,
      { tm: 8, tn: 8, wgx: 16, wgy: 16, bk: 8 }, // 128 x 128
      { tm: 8, tn: 4, wgx: 16, wgy: 16, bk: 16 }, // 128 x 64
      { tm: 4, tn: 8, wgx: 16, wgy: 16, bk: 16 }, // 64 x 128
    ];
    return c === "small" || c === "short" || c === "narrow"
      ? [GPU_TILES, { tm: 4, tn: 4, wgx: 8, wgy: 8, bk: 16 }]
      : gpu;
  }
  const base = CPU_TILES[c];
  const extra: Record<MatmulShapeClass, Tiles[]> = {
    small: [{ tm: 4, tn: 4, wgx: 4, wgy: 4, bk: 4 }],
    short: [{ tm: 4, tn: 16, wgx: 8, wgy: 4, bk: 4 }, { tm: 4, tn: 4, wgx: 16, wgy: 4, bk: 4 }],
    narrow: [{ tm: 16, tn: 4, wgx: 4, wgy: 8, bk: 4 }, { tm: 4, tn: 4, wgx: 4, wgy: 16, bk: 4 }],
    medium: [{ tm: 4, tn: 4, wgx: 16, wgy: 16, bk: 4 }, { tm: 8, tn: 8, wgx: 4, wgy: 4, bk: 4 }],
    large: [{ tm: 8, tn: 8, wgx: 8, wgy: 8, bk: 4 }, { tm: 8, tn: 16, wgx: 8, wgy: 8, bk: 4 }],
  };
  return [base, ...extra[c], ...CPU_TEXTURE_TILES[c]];
}

/**
 * A representative M x K x N of each class (shapes of a small GPT's layers; the medium class's
 * is GPT-2's attention projection at 64 tokens), for tuning. It was 1024 x 64 x 64 for the
 * medium class: a product that took less time than the wait for it, so that on lavapipe the
 * wait's noise chose between tiles 3 to 4x apart on GPT-2's 64-row products.
 */
const TUNE_SHAPES: Readonly<Record<MatmulShapeClass, readonly [number, number, number]>> = {
  small: [32, 256, 32],
  short: [16, 512, 512],
  narrow: [512, 512, 16],
  medium: [64, 768, 768],
  large: [384, 384, 384],
};

/** Products per wait when tuning: the wait for the GPU (about 11 ms on lavapipe) is shared. */
const TUNE_BATCH = 4;

/** Tiles the tuner chose, per runtime (a new device is tuned anew). */
const tuned = new WeakMap<Runtime, Map<MatmulShapeClass, Tiles>>();

/** Kernel families matmul may use: every one the tiles choose, or the workgroup-memory one. */
let family: "auto" | "workgroup" = "auto";

/**
 * Makes matmul use only the workgroup-memory kernel (`"workgroup"`: the texture family's
 * tiles give way to the class's workgroup-memory tiles), or every family again (`"auto"`);
 * returns the previous setting. For benchmarks that time both families side by side. Set to
 * `"workgroup"` before a device is acquired, it also skips the texture family's check on that
 * device, which then never runs the texture family (the doc examples' preload does this: the
 * check costs every new device about 0.3 s on lavapipe). @internal
 */
export function setMatmulFamily(f: "auto" | "workgroup"): "auto" | "workgroup" {
  const before = family;
  family = f;
  return before;
}

/**
 * The texture family's check per device: running, passed, or failed (its bits differ from the
 * workgroup-memory kernel's on a probe product: measured on llvmpipe through OpenGL while the
 * epilogue picked each of a block's accumulators with one switch over all of them, values up to
 * 256 off at 256x1024x256; since it picks by row, then by quad, GL passes it and gives the
 * workgroup kernel's bits at 256x1024x256, 1024^3 and 96x512x300, as lavapipe (Vulkan) always
 * did). A device that failed it, or was never checked (a GPU, or acquired under
 * `setMatmulFamily("workgroup")`), runs the workgroup-memory family only.
 */
const textureCheck = new WeakMap<Runtime, "probing" | "passed" | "failed">();

/** Whether the texture family may run on `rt` now. */
function texturesOn(rt: Runtime): boolean {
  const c = textureCheck.get(rt);
  return family === "auto" && (c === "passed" || c === "probing");
}

/**
 * Whether the texture family passed its check on the current device (CPU adapters; false on
 * GPUs, which never use it, where its bits differed from the workgroup-memory kernel's, and
 * where it was not checked). @internal
 */
export function matmulTexturesPassed(): boolean {
  return textureCheck.get(currentRuntime()) === "passed";
}

// On a new CPU adapter, probe products per family: the texture family stays only where it
// gives the workgroup-memory kernel's bits in each of its variants: 128 x 64 by 64 x 256 in
// f32 (both operands copied, large class), a K of 252 (not copyable: both packed) and a
// transposed f32 A by a transposed bf16 B with infinities and a subnormal (copies'
// raw bits and bf16 decode; medium class, small kernels). Small on purpose: every new device
// pays for them (`deno test` makes one per test module and doc example, 328 a run), and
// through OpenGL, where llvmpipe broke the family under the one-switch epilogue, every
// large-class product measured from 96 x 64 x 256 to 256 x 256 x 1024 differed in about 38% of
// its values (the probes were
// 256 x 256 x 1024 and N = 1024 before: 0.13 s more per device on lavapipe).
onNewDevice(async (rt) => {
  if (!rt.info.isFallbackAdapter || family === "workgroup") return;
  textureCheck.set(rt, "probing");
  const val = (n: number, s: number) => {
    const v = Float32Array.from({ length: n }, (_, i) => Math.sin(i * s));
    v.set([Infinity, -Infinity, 1e-40], 5);
    return v;
  };
  const probes: [number, number, number, boolean, boolean, "f32" | "bf16"][] = [
    [128, 64, 256, false, false, "f32"],
    [64, 252, 128, false, false, "f32"],
    [64, 256, 128, true, true, "bf16"],
  ];
  const prev = family;
  let same = false; // a probe that throws leaves the family off, as one that differs
  const made: Tensor[] = [];
  const keep = (t: Tensor) => (made.push(t), t);
  try {
    // every probe recorded first (no read pending if one throws), then read back together:
    // one wait, not one per product
    const pairs = probes.map(([M, K, N, ta, tb, bdt]) => {
      const a = keep(tensor(val(M * K, 0.37), { shape: ta ? [K, M] : [M, K] }));
      const b = keep(tensor(val(K * N, 0.11), { shape: tb ? [N, K] : [K, N], dtype: bdt }));
      family = "workgroup";
      const w = keep(matmul(a, b, { transA: ta, transB: tb }));
      family = "auto";
      return [w, keep(matmul(a, b, { transA: ta, transB: tb }))];
    });
    const values = await Promise.all(pairs.flat().map((t) => t.toArray()));
    same = pairs.every((_, k) => {
      const [wv, tv] = [values[2 * k], values[2 * k + 1]];
      return wv.length === tv.length && wv.every((v, i) => Object.is(v, tv[i]));
    });
  } finally {
    family = prev;
    for (const t of made) t.dispose();
    textureCheck.set(rt, same ? "passed" : "failed");
  }
});

/** The tiles of an M x N product's class on the runtime's adapter: tuned, else the default. */
function classTiles(rt: Runtime, M: number, N: number): Tiles {
  const c = shapeClass(M, N);
  return tuned.get(rt)?.get(c) ?? (rt.info.isFallbackAdapter ? CPU_DEFAULT[c] : GPU_TILES);
}

/** The tiles for an M x N product: the class's, unless the texture family may not run. */
function tilesFor(rt: Runtime, M: number, N: number): Tiles {
  const t = classTiles(rt, M, N);
  return t.family === "texture" && !texturesOn(rt) ? storageTiles(rt, M, N) : t;
}

/**
 * The workgroup-memory tiles for a product the texture family cannot run: the tuned ones when
 * they are, else the class's measured default.
 */
function storageTiles(rt: Runtime, M: number, N: number): Tiles {
  const t = tuned.get(rt)?.get(shapeClass(M, N));
  if (t !== undefined && t.family === undefined) return t;
  return rt.info.isFallbackAdapter ? CPU_TILES[shapeClass(M, N)] : GPU_TILES;
}

/**
 * Sets (or, with null, clears) the tiles of a shape class for the current device, as a tuning run
 * would; for tests that check every candidate. @internal
 */
export function setMatmulTiles(c: MatmulShapeClass, tiles: Tiles | null): void {
  const rt = currentRuntime();
  const choice = tuned.get(rt) ?? new Map<MatmulShapeClass, Tiles>();
  tuned.set(rt, choice);
  if (tiles === null) choice.delete(c);
  else choice.set(c, tiles);
}

/** The tiles a tuning run may choose for a class on the current adapter. @internal */
export function matmulTileCandidates(c: MatmulShapeClass): Tiles[] {
  return candidates(currentRuntime(), c);
}

/** What `tuneMatmul()` measured for one shape class. */
export interface MatmulTuning {
  /** The shape class. */
  readonly shapeClass: MatmulShapeClass;
  /** The M x K x N it was timed on. */
  readonly shape: readonly [number, number, number];
  /** The tiles chosen (the fastest candidate). */
  readonly tiles: Tiles;
  /** Every candidate with its fastest time in milliseconds (of `repeats` runs). */
  readonly candidates: readonly { readonly tiles: Tiles; readonly ms: number }[];
}

/**
 * Times a few tile shapes per shape class of matmul on the current adapter and keeps the
 * fastest for the rest of the process (for this device). A short run: about a second on a
 * GPU, a few seconds on llvmpipe. Without it, matmul uses measured defaults per class.
 *
 * @example
 * ```ts
 * import { tuneMatmul } from "../../mod.ts";
 * const result = await tuneMatmul({ classes: ["small"], repeats: 1 });
 * console.log(result[0].shapeClass, result[0].candidates.length > 0); // "small" true
 * ```
 */
export async function tuneMatmul(
  opts: { classes?: readonly MatmulShapeClass[]; repeats?: number } = {},
): Promise<MatmulTuning[]> {
  const rt = currentRuntime();
  const repeats = opts.repeats ?? 2;
  if (!Number.isInteger(repeats) || repeats < 1) {
    throw new ValueError(`tuneMatmul(): repeats must be a positive integer, got ${repeats}`);
  }
  const classes = opts.classes ?? (Object.keys(TUNE_SHAPES) as MatmulShapeClass[]);
  const out: MatmulTuning[] = [];
  const choice = tuned.get(rt) ?? new Map<MatmulShapeClass, Tiles>();
  tuned.set(rt, choice);
  for (const c of classes) {
    if (!(c in TUNE_SHAPES)) {
      throw new ValueError(
        `tuneMatmul(): unknown shape class '${c}'; valid: ${Object.keys(TUNE_SHAPES).join(", ")}`,
      );
    }
    const [M, K, N] = TUNE_SHAPES[c];
    const a = rand([M, K], { seed: 1 }), b = rand([K, N], { seed: 2 });
    const timed: { tiles: Tiles; ms: number }[] = [];
    try {
      for (const tiles of candidates(rt, c)) {
        if (tiles.family === "texture" && !texturesOn(rt)) continue;
        choice.set(c, tiles);
        matmul(a, b).dispose(); // compile and warm up
        await rt.sync();
        const times: number[] = [];
        for (let r = 0; r < repeats; r++) {
          const t0 = performance.now();
          for (let k = 0; k < TUNE_BATCH; k++) matmul(a, b).dispose();
          await rt.sync();
          times.push((performance.now() - t0) / TUNE_BATCH);
        }
        // the fastest run: on a shared machine other work only ever slows a run down
        timed.push({ tiles, ms: Math.min(...times) });
      }
    } finally {
      a.dispose();
      b.dispose();
    }
    const best = timed.reduce((p, q) => (q.ms < p.ms ? q : p));
    choice.set(c, best.tiles);
    out.push({ shapeClass: c, shape: [M, K, N], tiles: best.tiles, candidates: timed });
  }
  return out;
}

/** Batch dimensions the kernel handles (kept and reduced together). */
const MAX_BATCH_DIMS = 8;

/** A matrix operand: a tensor read as `batch x rows x cols` (row-major), maybe transposed. */
interface View {
  readonly t: Tensor;
  /** The stored batch dimensions. */
  readonly batch: readonly number[];
  /** Stored rows and columns. */
  readonly rows: number;
  readonly cols: number;
  /** Whether the logical matrix is the transpose of the stored one. */
  readonly trans: boolean;
}

const logicalRows = (v: View) => (v.trans ? v.cols : v.rows);
const logicalCols = (v: View) => (v.trans ? v.rows : v.cols);
const flip = (v: View): View => ({ ...v, trans: !v.trans });
const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** What the WGSL of one matmul kernel depends on. */
export interface MatmulKernelConfig {
  /** Layout of the left operand. */
  readonly a: Layout;
  /** Layout of the right operand. */
  readonly b: Layout;
  /** Layout of the output (f32 when a packed output is rounded by a later cast). */
  readonly out: Layout;
  /** Whether A is stored transposed (`[K,M]`). */
  readonly transA: boolean;
  /** Whether B is stored transposed (`[N,K]`). */
  readonly transB: boolean;
  /** Whether the output encoder clamps overflow to +-max. */
  readonly saturate: boolean;
  /** The tiling. */
  readonly tiles: Tiles;
  /**
   * Per-tensor scaled operands (FP8): bindings `scalea`, `scaleb` (one f32 each) follow `out`, and
   * the f32 result is multiplied by `1 / sa`, then by `1 / sb`, before the output rounding.
   */
  readonly scaled?: boolean;
  /**
   * An f32 output of whole quads (N a multiple of 4) bound whole as `vec4` words: each row of 4
   * values is one 16-byte store (`st4_out`) instead of 4 (the texture family; on llvmpipe a store
   * runs lane by lane like a load).
   */
  readonly quadOut?: boolean;
}

/**
 * The WGSL body (`fn kernel`, for the program builder of `gpu/program.ts`) of a matmul kernel
 * for the given operand and output layouts and tiles. Bindings `a`, `b`, `out` (and the
 * scales) and the uniforms are declared by `matmul()`'s program, which launches it with
 * `(ceil(N / (wgx tn)), ceil(M / (wgy tm)), batches)` workgroups.
 */
function matmulSource(cfg: MatmulKernelConfig): string {
  const { tm, tn, wgx, wgy, bk } = cfg.tiles;
  if (tm % 4 || tn % 4 || bk % 4) {
    throw new ValueError(`matmulSource(): tm, tn and bk must be multiples of 4`);
  }
  const bm = wgy * tm, bn = wgx * tn, threads = wgx * wgy;
  const four = (f: (c: number) => string, sep = "") => [0, 1, 2, 3].map(f).join(sep);
  const X = "xyzw";
  // Each operand's K-slice goes to workgroup memory as it is stored: a unit of work is 4
  // consecutive stored columns (contiguous in memory: one word of four 8-bit lanes) of one
  // stored row, and lands in one vec4. Tile extents along stored rows x stored columns:
  //   A [M,K]: bm x bk, A^T ([K,M] stored): bk x bm, B [K,N]: bk x bn, B^T ([N,K]): bn x bk.
  const slice = (
    x: "a" | "b",
    scatter: boolean,
    [r0, c0]: [string, string],
    [rLim, cLim]: [string, string],
    [sr, sc]: [number, number],
    width: number,
  ) => {
    const name = x === "a" ? "As" : "Bs", off = x === "a" ? "offA" : "offB";
    const ld = x === "a" ? "u.lda" : "u.ldb";
    const total = (sr * sc) / 4, per = Math.ceil(total / threads);
    // scatter: the quad runs along k; element j goes to k-row (col0 + j), column sr-index
    const put = scatter
      ? four((j) =>
        `        ${name}[(cq * 4u + ${j}u) * ${width / 4}u + rl / 4u][rl % 4u] = v.${X[j]};\n`
      )
      : `        ${name}[q] = v;\n`;
    return `      for (var p = 0u; p < ${per}u; p = p + 1u) {
        let q = li + p * ${threads}u;
${total % threads === 0 ? "" : `        if (q >= ${total}u) { break; }\n`}\
        let rl = q / ${sc / 4}u;
        let cq = q % ${sc / 4}u;
        let row = ${r0} + rl;
        let col = ${c0} + cq * 4u;
        let n_ok = select(0u, ${cLim} - col, row < ${rLim} && col < ${cLim});
        let v = ld4_${x}(${off} + row * ${ld} + col, n_ok);
${put}      }`;
  };
  const loadA = cfg.transA
    ? slice("a", false, ["k0", "m0"], ["u.k", "u.m"], [bk, bm], bm)
    : slice("a", true, ["m0", "k0"], ["u.m", "u.k"], [bm, bk], bm);
  const loadB = cfg.transB
    ? slice("b", true, ["n0", "k0"], ["u.n", "u.k"], [bn, bk], bn)
    : slice("b", false, ["k0", "n0"], ["u.k", "u.n"], [bk, bn], bn);
  const rows = [...Array(tm).keys()], quads = [...Array(tn / 4).keys()];
  // the inner loop over k: As[k * bm/4 + m/4] and Bs[k * bn/4 + n/4] hold vec4 over m and n
  const inner =
    [...Array(tm / 4).keys()].map((q) =>
      `        let a${q} = As[kk * ${bm / 4}u + lid.y * ${tm / 4}u + ${q}u];\n`
    ).join("") +
    quads.map((j) => `        let b${j} = Bs[kk * ${bn / 4}u + lid.x * ${tn / 4}u + ${j}u];\n`)
      .join("") +
    rows.map((i) =>
      quads.map((j) =>
        `        acc${i}_${j} = fma(vec4<f32>(a${i >> 2}.${X[i & 3]}), b${j}, acc${i}_${j});\n`
      ).join("")
    ).join("");
  const { accDecl, storeRow, stores } = epilogue(cfg);
  return `var<workgroup> As: array<vec4<f32>, ${(bk * bm) / 4}>;
var<workgroup> Bs: array<vec4<f32>, ${(bk * bn) / 4}>;

${storeRow}
fn kernel(wg: vec3u, lid: vec3u, li: u32) {
  let n0 = wg.x * ${bn}u;
  let m0 = wg.y * ${bm}u;
  let z = wg.z;
  // offsets of this output batch in a and b (kept batch dimensions 0..nb-1)
  var rem = z;
  var baseA = 0u;
  var baseB = 0u;
  for (var d = i32(u.nb) - 1; d >= 0; d = d - 1) {
    let size = u_dims(u32(d));
    let i = rem % size;
    rem = rem / size;
    baseA = baseA + i * u_sta(u32(d));
    baseB = baseB + i * u_stb(u32(d));
  }
${accDecl}  for (var r = 0u; r < u.r; r = r + 1u) {
    // offsets of reduced batch r (dimensions nb..nd-1), summed into the same accumulators
    var rr = r;
    var offA = baseA + u.oa;
    var offB = baseB + u.ob;
    for (var d = i32(u.nd) - 1; d >= i32(u.nb); d = d - 1) {
      let size = u_dims(u32(d));
      let i = rr % size;
      rr = rr / size;
      offA = offA + i * u_sta(u32(d));
      offB = offB + i * u_stb(u32(d));
    }
    for (var k0 = 0u; k0 < u.k; k0 = k0 + ${bk}u) {
${loadA}
${loadB}
      workgroupBarrier();
      for (var kk = 0u; kk < ${bk}u; kk = kk + 1u) {
${inner}      }
      workgroupBarrier();
    }
  }
  let zoff = z * u.m * u.n;
  let m = m0 + lid.y * ${tm}u;
  let n = n0 + lid.x * ${tn}u;
${stores}}
`;
}

/**
 * The output side of a matmul kernel, shared by both families: the accumulators of a tm x tn
 * block (vec4s `acc<i>_<j>` over columns), `store_row` (encodes and stores 4 values of a row,
 * adding to an f32 output after the first split of K) and the loop that stores the block at
 * rows `m`.., columns `n`.. (with the FP8 scales, when the kernel has them).
 */
function epilogue(cfg: MatmulKernelConfig): { accDecl: string; storeRow: string; stores: string } {
  // The store of one row of 4 values at columns n..n+3 (n a multiple of 4), element e.
  const { out } = cfg;
  const { tm, tn } = cfg.tiles;
  const rows = [...Array(tm).keys()], quads = [...Array(tn / 4).keys()];
  const lanes = out.lanes;
  const z4 = "vec4<u32>(0u)";
  // f32 outputs may add to what a previous split of K wrote (u.acc)
  const add = out.dtype.name === "f32" ? "\n    if (u.acc != 0u) { x = x + ld_out(e + j); }" : "";
  const store = cfg.quadOut // N a multiple of 4: the 4 values are whole and ours (e % 4 == 0)
    ? `  var x = v;
  if (u.acc != 0u) { x = x + lq_out(e / 4u); }
  st4_out(e / 4u, x, ${z4});`
    : lanes === 1
    ? `  for (var j = 0u; j < 4u; j = j + 1u) {
    if (n + j >= u.n) { break; }
    var x = v[j];${add}
    st_out(e + j, vec4<f32>(x), ${z4});
  }`
    : lanes === 2 // N is a multiple of the lanes (checked on the host): each word is whole and ours
    ? `  st_out(e / 2u, vec4<f32>(v.xy, 0.0, 0.0), ${z4});
  if (n + 2u < u.n) { st_out(e / 2u + 1u, vec4<f32>(v.zw, 0.0, 0.0), ${z4}); }`
    : `  st_out(e / 4u, v, ${z4});`;
  const accDecl = rows.map((i) =>
    quads.map((j) => `  var acc${i}_${j} = vec4<f32>(0.0);\n`).join("")
  )
    .join("");
  // one store site (a loop over the rows, and in it over the row's quads) keeps the encoder
  // inlined once: shader compilers on CPUs take seconds for tm x tn/4 inlined copies of a
  // generic encoder. A switch picks the row's accumulators, another the quad: llvmpipe runs
  // every case of a switch under a mask, so one switch over all tm x tn/4 accumulators in a
  // loop over them cost 8-33% of a 48 x 16 block's kernel (bench/matmul_lab.ts, BENCHMARKS.md)
  const q = tn / 4;
  const vs = quads.map((j) => `v${j}`);
  const rowCases = rows.map((i) =>
    `      ${i === tm - 1 ? "default" : `case ${i}u`}: { ${
      quads.map((j) => `v${j} = acc${i}_${j};`).join(" ")
    } }\n`
  ).join("");
  const quadCases = quads.map((j) =>
    `        ${j === q - 1 ? "default" : `case ${j}u`}: { v = v${j}; }\n`
  ).join("");
  const scaled = cfg.scaled ?? false;
  // the FP8 epilogue: one reciprocal per scale, applied one after the other (their product
  // could underflow where a tiny gradient's scale is huge)
  const stores = `${scaled ? "  let ia = 1.0 / scalea[0];\n  let ib = 1.0 / scaleb[0];\n" : ""}\
  for (var t = 0u; t < ${tm}u; t = t + 1u) {
${vs.map((v) => `    var ${v}: vec4<f32>;\n`).join("")}    switch t {
${rowCases}    }
    for (var j = 0u; j < ${q}u; j = j + 1u) {
      var v: vec4<f32>;
      switch j {
${quadCases}      }
      store_row(m + t, n + j * 4u, ${scaled ? "v * ia * ib" : "v"}, zoff);
    }
  }
`;
  const storeRow = `fn store_row(m: u32, n: u32, v: vec4<f32>, zoff: u32) {
  if (m >= u.m || n >= u.n) { return; }
  let e = zoff + m * u.n + n;
${store}
}
`;
  return { accDecl, storeRow, stores };
}

/**
 * How the texture family's kernel reads an operand's texture: 16 bytes a texel of a stored
 * row, 8 bf16 values (`bf16`, two a word) or 4 f32, along K or, for an operand stored
 * transposed (`trans`), along M / N. An operand copied as it is stored (`copyBufferToTexture`)
 * keeps its dtype and transpose; a packed one (any dtype, decoded to f32 by the packing
 * dispatch) reads as f32 not transposed: four values along K per texel of A, along N per
 * texel of B.
 */
interface TexelLayout {
  readonly bf16: boolean;
  readonly trans: boolean;
}

/** The layout of a packed operand's texture. */
const PACKED: TexelLayout = { bf16: false, trans: false };

/** Values of an operand's stored row in one texel: 8 bf16 or 4 f32. */
const perTexel = (o: TexelLayout) => (o.bf16 ? 8 : 4);

/**
 * The WGSL body of the texture family's kernel (CPU adapters): A and B are read from textures
 * (copied or packed, `TexelLayout`), without workgroup memory or barriers. On llvmpipe an
 * invocation is a SIMD lane: every load runs lane by lane (a texel costs about a quarter of a
 * storage `vec4` there), the multiply-adds 8 lanes at once; the workgroup-memory tiling pays
 * per-lane loads twice (into workgroup memory, then out of it) plus its barriers, this family
 * once. Invocation (x, y) of a piece computes rows `y tm`.. and columns `4 x tn/4`.. of the
 * piece, whose origin in the output is (`u.pm`, `u.pn`). Each iteration covers `ks` steps of
 * K (8 when a copied operand is bf16, else 4): B's values first (decoded once), then row by
 * row (a group of 4 or 8 rows for a transposed A, whose texels run along M) A's and the row's
 * accumulators, each a chain of `ks` fmas in ascending k: the same products in the same order
 * as the workgroup-memory kernel, so the same bits (the decode gives the values its decoder
 * gives; a NaN's payload may differ before the output encoder, which makes every NaN the
 * canonical one of its sign). Rows and columns past the piece read what the scratch texture
 * held (or a pack's zeros); only outputs that are not stored see them.
 */
function matmulRawSource(cfg: MatmulKernelConfig, ra: TexelLayout, rb: TexelLayout): string {
  const { tm, tn, wgx, wgy } = cfg.tiles;
  const q = tn / 4, X = "xyzw";
  const ks = ra.bf16 || rb.bf16 ? 8 : 4;
  const pa = perTexel(ra), pb = perTexel(rb);
  const ga = ra.trans ? pa : 1; // rows of A a group of loads covers
  if (tm % ga || (!rb.trans && tn % pb) || tn % 4) {
    throw new ValueError(
      `matmulRawSource(): tiles ${tm}x${tn} do not fit the operands' texels (A ` +
        `${ra.bf16 ? "bf16" : "f32"}${ra.trans ? " transposed" : ""}: ${pa} a texel, B ` +
        `${rb.bf16 ? "bf16" : "f32"}${rb.trans ? " transposed" : ""}: ${pb}; tm must be a ` +
        `multiple of ${ga}, tn of 4${rb.trans ? "" : ` and ${pb}`}): texturePlan() should ` +
        `have packed the operand; a bug in matmul, please report it`,
    );
  }
  // element e of texel variable t: f32 texels as they are, bf16 ones two a word
  const el = (t: string, e: number, bf: boolean) =>
    bf
      ? `bitcast<f32>(${
        e % 2
          ? `bitcast<u32>(${t}.${X[e >> 1]}) & 0xffff0000u`
          : `bitcast<u32>(${t}.${X[e >> 1]}) << 16u`
      })`
      : `${t}.${X[e]}`;
  let body = "";
  // B: vec4 bv<kk>_<j> of columns 4j..4j+3 at step kk
  if (!rb.trans) {
    for (let kk = 0; kk < ks; kk++) {
      for (let u = 0; u < tn / pb; u++) {
        body += `    let bt${kk}_${u} = tl_b(nb + ${u}u, kb + ${kk}u);\n`;
      }
      for (let j = 0; j < q; j++) {
        const u = Math.floor((4 * j) / pb), e0 = (4 * j) % pb;
        body += rb.bf16
          ? `    let bv${kk}_${j} = vec4<f32>(${
            [0, 1, 2, 3].map((c) => el(`bt${kk}_${u}`, e0 + c, true)).join(", ")
          });\n`
          : `    let bv${kk}_${j} = bt${kk}_${u};\n`;
      }
    }
  } else {
    for (let n = 0; n < tn; n++) {
      for (let t = 0; t < ks / pb; t++) {
        body += `    let bt${n}_${t} = tl_b(kt * ${ks / pb}u + ${t}u, n0 + ${n}u);\n`;
      }
    }
    for (let kk = 0; kk < ks; kk++) {
      for (let j = 0; j < q; j++) {
        const parts = [0, 1, 2, 3].map((c) =>
          el(`bt${4 * j + c}_${Math.floor(kk / pb)}`, kk % pb, rb.bf16)
        );
        body += `    let bv${kk}_${j} = vec4<f32>(${parts.join(", ")});\n`;
      }
    }
  }
  // A, a group of rows at a time: their values, then their accumulators
  for (let g = 0; g < tm / ga; g++) {
    if (!ra.trans) {
      for (let t = 0; t < ks / pa; t++) {
        body += `    let at${g}_${t} = tl_a(kt * ${ks / pa}u + ${t}u, r0 + ${g}u);\n`;
      }
    } else {
      for (let kk = 0; kk < ks; kk++) {
        body += `    let at${g}_${kk} = tl_a(r0 / ${pa}u + ${g}u, kb + ${kk}u);\n`;
      }
    }
    for (let r = 0; r < ga; r++) {
      const i = g * ga + r;
      for (let kk = 0; kk < ks; kk++) {
        const v = ra.trans
          ? el(`at${g}_${kk}`, r, ra.bf16)
          : el(`at${g}_${Math.floor(kk / pa)}`, kk % pa, ra.bf16);
        body += `    let a${i}_${kk} = ${v};\n`;
      }
      for (let j = 0; j < q; j++) {
        let e = `acc${i}_${j}`;
        for (let kk = 0; kk < ks; kk++) e = `fma(vec4<f32>(a${i}_${kk}), bv${kk}_${j}, ${e})`;
        body += `    acc${i}_${j} = ${e};\n`;
      }
    }
  }
  const { accDecl, storeRow, stores } = epilogue(cfg);
  return `${storeRow}
fn kernel(wg: vec3u, lid: vec3u, li: u32) {
  let c0 = (wg.x * ${wgx}u + lid.x) * ${q}u;
  let r0 = (wg.y * ${wgy}u + lid.y) * ${tm}u;
  let n0 = c0 * 4u;
  let nb = n0 / ${pb}u;
${accDecl}  for (var kt = 0u; kt < u.kit; kt = kt + 1u) {
    let kb = kt * ${ks}u;
${body}  }
  let zoff = 0u;
  let m = u.pm + r0;
  let n = u.pn + n0;
${stores}}
`;
}

/** The texture family's bindings (both variants): the output, and the scales if scaled. */
function textureFamilyBindings(cfg: MatmulKernelConfig): BindingSpec[] {
  const bindings: BindingSpec[] = [
    {
      name: "out",
      type: cfg.out,
      access: "read_write",
      encode: { saturate: cfg.saturate },
      vec4: cfg.quadOut,
    },
  ];
  if (cfg.scaled) {
    bindings.push({ name: "scalea", type: "f32", access: "read" });
    bindings.push({ name: "scaleb", type: "f32", access: "read" });
  }
  return bindings;
}

/** The texture family's program: the output (and scales) bound, A and B as textures. */
function textureProgram(rt: Runtime, cfg: MatmulKernelConfig, la: TexelLayout, lb: TexelLayout) {
  const t = cfg.tiles;
  const access = textureReads();
  const op = (o: TexelLayout) => `${o.bf16 ? "bf16" : "f32"}${o.trans ? "T" : ""}`;
  return program(
    rt,
    `matmul-tex|${t.tm},${t.tn},${t.wgx},${t.wgy}|${op(la)}|${op(lb)}|${access}|${
      cfg.quadOut ? "q4" : ""
    }`,
    {
      label: "matmul",
      bindings: textureFamilyBindings(cfg),
      uniforms: [
        { name: "m", type: "u32" },
        { name: "n", type: "u32" },
        { name: "kit", type: "u32" }, // iterations of the K loop (this split's K / ks, rounded up)
        { name: "acc", type: "u32" }, // 1: add to the f32 output (splits of K after the first)
        { name: "pm", type: "u32" }, // the piece's first row of the output
        { name: "pn", type: "u32" }, // the piece's first column
      ],
      textures: [{ name: "a", access }, { name: "b", access }],
      workgroupSize: [t.wgx, t.wgy],
      grid: "3d",
    },
    () => matmulRawSource(cfg, la, lb),
  );
}

/** An operand of the packing dispatch: `a` or `b`, and its layout. */
interface PackOperand {
  readonly x: "a" | "b";
  readonly layout: Layout;
}

/**
 * The program that packs operands into their textures in one dispatch (one invocation per
 * texel, A's before B's, of the operands it packs): for operand x (`a`, `b`), a logical
 * `rows x cols` matrix (element (r, c) stored at `off + r ld + c`, or `off + c ld + r` when
 * transposed) goes into a `w x h` texture, texel (c4, r) holding elements (r, 4 c4..4 c4+3)
 * decoded to f32, zero outside the matrix.
 */
function packProgram(rt: Runtime, ops: readonly PackOperand[]) {
  const fields = ["rows", "cols", "ld", "off", "tr", "w", "h"];
  const texel = (x: string) =>
    `fn texel_${x}(c: u32, r: u32) -> vec4<f32> {
  let col = c * 4u;
  var v = vec4<f32>(0.0);
  if (r < u.rows${x} && col < u.cols${x}) {
    let n_ok = min(4u, u.cols${x} - col);
    if (u.tr${x} == 0u) {
      v = ld4_${x}(u.off${x} + r * u.ld${x} + col, n_ok);
    } else {
      for (var j = 0u; j < n_ok; j = j + 1u) { v[j] = ld_${x}(u.off${x} + (col + j) * u.ld${x} + r); }
    }
  }
  return v;
}
`;
  // each operand's texels in turn: s counts from the first texel of the operand at hand
  const steps = ops.map(({ x }, i) =>
    `${
      i > 0 ? `  s = s - u.w${ops[i - 1].x} * u.h${ops[i - 1].x};\n` : ""
    }  if (s < u.w${x} * u.h${x}) {
    ts_t${x}(s % u.w${x}, s / u.w${x}, texel_${x}(s % u.w${x}, s / u.w${x}));
    return;
  }
`
  ).join("");
  return program(rt, `matmul-pack|${ops.map((o) => o.x).join("")}`, {
    label: "matmul_pack",
    bindings: ops.map((o) => ({ name: o.x, type: o.layout, access: "read" as const })),
    uniforms: ops.flatMap((o) => fields.map((f) => ({ name: `${f}${o.x}`, type: "u32" as const }))),
    textures: ops.map((o) => ({ name: `t${o.x}`, access: "write" as const })),
    workgroupSize: 64,
  }, () =>
    `${ops.map((o) => texel(o.x)).join("")}
fn kernel(wg: u32, lid: vec3u, li: u32) {
  var s = wg * 64u + li;
${steps}}`);
}

/** One split of K in the texture family's plan: how each operand reaches its texture. */
interface TextureSplit {
  /** The split's range of K. */
  readonly k0: number;
  readonly k1: number;
  /** How the kernel reads each operand's texture. */
  readonly la: TexelLayout;
  readonly lb: TexelLayout;
  /** Whether each operand is copied as it is stored (else packed). */
  readonly copyA: boolean;
  readonly copyB: boolean;
  /** Iterations of the kernel's K loop (K steps of 8 with a copied bf16 operand, else 4). */
  readonly kit: number;
  /** The K the loop covers: `kit` steps (past `k1 - k0`, zeros). */
  readonly kp: number;
  /** The scratch textures (the same for every piece). */
  readonly ta: GPUTexture;
  readonly tb: GPUTexture;
}

/** How the texture family runs a product: pieces of the output, splits of K. */
interface TexturePlan {
  /** Rows and columns of the output a piece covers (whole tiles; the last piece fewer). */
  readonly mp: number;
  readonly np: number;
  readonly splits: readonly TextureSplit[];
}

/**
 * The texture family's plan for a product, where it can run it; null sends the product to the
 * workgroup-memory kernel. One GEMM without batches (a Linear layer's: the batch folds into
 * M). Each operand is copied into its texture as it is stored (`copyBufferToTexture`, no
 * dispatch) where it can be: f32 or bf16 with stored rows of whole 256-byte units, tiles whose
 * blocks are whole texels, and a split of K of whole steps of the K loop (a copied operand has
 * no zeros past K); else it is packed (any dtype, decoded to f32, in one dispatch with the other
 * operand if that is packed too), which binds it whole, so it must fit one binding. Textures
 * longer than `rt.maxTextureSize` are cut into pieces of the output (GPT-2's tied LM head:
 * 50257 rows of the embedding; its gradient's 50257 rows of output), each filling the textures
 * with its rows of A and columns of B; an output past one binding is written through windows.
 */
function texturePlan(
  rt: Runtime,
  A: View,
  B: View,
  full: readonly number[],
  M: number,
  N: number,
  tiles: Tiles,
  kSplits: readonly [number, number][],
): TexturePlan | null {
  if (prod(full) !== 1 || M * N === 0) return null;
  const T = rt.maxTextureSize, max = rt.maxBindingBytes;
  const { tm, tn, wgx, wgy } = tiles;
  const bm = wgy * tm, bn = wgx * tn;
  const copyable = (v: View, texelsAlongOuter: boolean, block: number): TexelLayout | null => {
    const name = v.t.dt.name;
    if (name !== "f32" && name !== "bf16") return null;
    const l = { bf16: name === "bf16", trans: v.trans };
    if ((v.cols * (l.bf16 ? 2 : 4)) % 256 !== 0) return null;
    // texels along M (a transposed A) or N (B): the tile's block must be whole texels
    return texelsAlongOuter && block % perTexel(l) !== 0 ? null : l;
  };
  const ca = copyable(A, A.trans, tm), cb = copyable(B, !B.trans, tn);
  const fits = (v: View) => v.t.buffer("matmul").bytes <= max;
  // the K loop's step: 8 values with a copied bf16 operand (8 a texel), else 4
  const loopStep = (copyA: boolean, copyB: boolean) =>
    (copyA && ca!.bf16) || (copyB && cb!.bf16) ? 8 : 4;
  const plans = kSplits.map(([k0, k1]) => {
    const kc = k1 - k0;
    // an operand whose texels run along K (A as stored, B transposed) is copied from a whole
    // texel on, and only for whole steps of the K loop: its last texel holds no zeros past K
    let copyA = ca !== null && (ca.trans || k0 % perTexel(ca) === 0);
    let copyB = cb !== null && (!cb.trans || k0 % perTexel(cb) === 0);
    for (let pass = 0; pass < 2; pass++) {
      const ks = loopStep(copyA, copyB);
      if (copyA && !ca!.trans && kc % ks !== 0) copyA = false;
      if (copyB && cb!.trans && kc % ks !== 0) copyB = false;
    }
    // one whose rows run along K gets rows of zeros past K (runTexturePlan)
    const ks = loopStep(copyA, copyB);
    return {
      k0,
      k1,
      la: copyA ? ca! : PACKED,
      lb: copyB ? cb! : PACKED,
      copyA,
      copyB,
      kit: Math.ceil(kc / ks),
      kp: Math.ceil(kc / ks) * ks,
    };
  });
  if (plans.some((p) => (!p.copyA && !fits(A)) || (!p.copyB && !fits(B)))) return null;
  // the longest pieces whose textures fit: M runs along A's texture rows, or its texels when
  // A is copied transposed; N along B's texels, or its rows when B is copied transposed
  const alongM = Math.min(...plans.map((p) => (p.la.trans ? T * perTexel(p.la) : T)));
  const alongN = Math.min(...plans.map((p) => (p.lb.trans ? T : T * perTexel(p.lb))));
  const mp = Math.min(Math.ceil(M / bm) * bm, Math.floor(alongM / bm) * bm);
  const np = Math.min(Math.ceil(N / bn) * bn, Math.floor(alongN / bn) * bn);
  if (mp === 0 || np === 0) return null;
  const splits: TextureSplit[] = [];
  for (const p of plans) {
    const pa = perTexel(p.la), pb = perTexel(p.lb);
    const ta = p.la.trans
      ? rt.scratchTexture("matmul.a", mp / pa, p.kp)
      : rt.scratchTexture("matmul.a", p.kp / pa, mp);
    const tb = p.lb.trans
      ? rt.scratchTexture("matmul.b", p.kp / pb, np)
      : rt.scratchTexture("matmul.b", np / pb, p.kp);
    if (ta === null || tb === null) return null;
    splits.push({ ...p, ta, tb });
  }
  return { mp, np, splits };
}

/**
 * Copies an operand's block into its texture as it is stored (f32 or bf16, stored rows of
 * whole 256-byte units; 16 bytes a texel): `outer` of its M (A) or N (B) range and `k` of K,
 * stored along rows (`kRows`: a transposed A, a B as stored) or along columns. Where K runs
 * along rows, the rows past `k` up to `kp` (what the K loop reads) are zeros.
 */
function copyOperand(
  rt: Runtime,
  v: View,
  l: TexelLayout,
  t: GPUTexture,
  outer: readonly [number, number],
  k: readonly [number, number],
  kRows: boolean,
  kp: number,
  op: string,
): void {
  const [rows, cols] = kRows ? [k, outer] : [outer, k];
  const eb = l.bf16 ? 2 : 4, rowBytes = v.cols * eb;
  rt.copyToTexture(
    v.t.buffer(op),
    rows[0] * rowBytes + cols[0] * eb,
    rowBytes,
    t,
    ((cols[1] - cols[0]) * eb) / 16,
    rows[1] - rows[0],
  );
  if (kRows) zeroRows(rt, t, k[1] - k[0], kp);
}

/**
 * Writes zeros into rows `y0..y1` of a scratch texture (a copied operand's rows past K, which
 * the K loop reads when K is not a whole number of its steps): a copy from a zeroed buffer.
 */
function zeroRows(rt: Runtime, t: GPUTexture, y0: number, y1: number): void {
  if (y1 <= y0) return;
  const bytesPerRow = Math.ceil((16 * t.width) / 256) * 256;
  const zeros = rt.alloc(bytesPerRow * (y1 - y0), { dtype: "raw", purpose: "scratch" });
  rt.write(zeros, new Uint8Array(bytesPerRow * (y1 - y0)));
  rt.copyToTexture(zeros, 0, bytesPerRow, t, t.width, y1 - y0, y0);
  rt.free(zeros);
}

/**
 * Runs a texture plan: for each piece of the output and each split of K, the operands'
 * textures filled (copied, or packed in one dispatch; an operand whose rows and split are
 * those of the texture already is left as it is), then the product, whose splits after the
 * first add to the f32 output.
 */
function runTexturePlan(
  rt: Runtime,
  plan: TexturePlan,
  cfg: MatmulKernelConfig,
  A: View,
  B: View,
  M: number,
  N: number,
  out: PooledBuffer,
  scaleBufs: Record<string, PooledBuffer>,
  op: string,
): void {
  const { tm, tn, wgx, wgy } = cfg.tiles;
  const bm = wgy * tm, bn = wgx * tn;
  let heldA = "", heldB = "";
  for (let m0 = 0; m0 < M; m0 += plan.mp) {
    for (let n0 = 0; n0 < N; n0 += plan.np) {
      const m1 = Math.min(M, m0 + plan.mp), n1 = Math.min(N, n0 + plan.np);
      for (const [i, s] of plan.splits.entries()) {
        const { k0, k1 } = s;
        const needA = heldA !== `${m0}|${i}`, needB = heldB !== `${n0}|${i}`;
        [heldA, heldB] = [`${m0}|${i}`, `${n0}|${i}`];
        // stored rows and columns: A is [M, K] ([K, M] transposed), B [K, N] ([N, K])
        if (needA && s.copyA) copyOperand(rt, A, s.la, s.ta, [m0, m1], [k0, k1], A.trans, s.kp, op);
        if (needB && s.copyB) {
          copyOperand(rt, B, s.lb, s.tb, [n0, n1], [k0, k1], !B.trans, s.kp, op);
        }
        const packs: PackOperand[] = [];
        const buffers: Record<string, PooledBuffer> = {};
        const textures: Record<string, GPUTexture> = {};
        const uniforms: Record<string, number> = {};
        const add = (
          x: "a" | "b",
          v: View,
          t: GPUTexture,
          rows: number,
          cols: number,
          off: number,
        ) => {
          packs.push({ x, layout: x === "a" ? cfg.a : cfg.b });
          buffers[x] = v.t.buffer(op);
          textures[`t${x}`] = t;
          Object.assign(uniforms, {
            [`rows${x}`]: rows,
            [`cols${x}`]: cols,
            [`ld${x}`]: v.cols,
            [`off${x}`]: off,
            [`tr${x}`]: v.trans ? 1 : 0,
            [`w${x}`]: t.width,
            [`h${x}`]: t.height,
          });
        };
        if (needA && !s.copyA) {
          add("a", A, s.ta, m1 - m0, k1 - k0, A.trans ? k0 * A.cols + m0 : m0 * A.cols + k0);
        }
        if (needB && !s.copyB) {
          add("b", B, s.tb, k1 - k0, n1 - n0, B.trans ? n0 * B.cols + k0 : k0 * B.cols + n0);
        }
        if (packs.length > 0) {
          const texels = packs.reduce(
            (a, p) => a + textures[`t${p.x}`].width * textures[`t${p.x}`].height,
            0,
          );
          packProgram(rt, packs).run({
            buffers: buffers as Record<"a" | "b", PooledBuffer>, // the packed ones'
            textures,
            uniforms,
            groups: Math.ceil(texels / 64),
            cost: 8 * texels,
          });
        }
        const gx = Math.ceil((n1 - n0) / bn), gy = Math.ceil((m1 - m0) / bm);
        textureProgram(rt, cfg, s.la, s.lb).run({
          buffers: { out, ...scaleBufs },
          textures: { a: s.ta, b: s.tb },
          uniforms: { m: M, n: N, kit: s.kit, acc: i > 0 ? 1 : 0, pm: m0, pn: n0 },
          groups: [gx, gy, 1],
          splitDim: [0, 1],
          cost: 0.1 * gx * bn * gy * bm * (k1 - k0),
          // the output's elements a box of the piece's workgroups writes (windows past a binding)
          ranges: {
            out: (_g0: number, _g1: number, lo: Readonly<Box>, hi: Readonly<Box>) => {
              const r0 = m0 + lo[1] * bm, r1 = Math.min(M, m0 + hi[1] * bm);
              const c0 = n0 + lo[0] * bn, c1 = Math.min(N, n0 + hi[0] * bn);
              return [r0 * N + c0, (r1 - 1) * N + c1] as const;
            },
          },
        });
      }
    }
  }
}

/** The matmul program for a configuration: bindings, uniforms and body declared once. */
function matmulProgram(rt: Runtime, cfg: MatmulKernelConfig) {
  const t = cfg.tiles;
  const key = `matmul|${cfg.transA}|${cfg.transB}|${t.tm},${t.tn},${t.wgx},${t.wgy},${t.bk}`;
  const bindings: BindingSpec[] = [
    { name: "a", type: cfg.a, access: "read" },
    { name: "b", type: cfg.b, access: "read" },
    { name: "out", type: cfg.out, access: "read_write", encode: { saturate: cfg.saturate } },
  ];
  if (cfg.scaled) {
    bindings.push({ name: "scalea", type: "f32", access: "read" });
    bindings.push({ name: "scaleb", type: "f32", access: "read" });
  }
  return program(rt, key, {
    label: "matmul",
    bindings,
    uniforms: [
      { name: "m", type: "u32" },
      { name: "n", type: "u32" },
      { name: "k", type: "u32" },
      { name: "nb", type: "u32" }, // kept batch dimensions
      { name: "nd", type: "u32" }, // all batch dimensions (kept, then reduced)
      { name: "r", type: "u32" }, // reduced batches
      { name: "lda", type: "u32" }, // stored row lengths
      { name: "ldb", type: "u32" },
      { name: "oa", type: "u32" }, // element offsets of a split of K in a and b
      { name: "ob", type: "u32" },
      { name: "acc", type: "u32" }, // 1: add to the f32 output (splits of K after the first)
      { name: "dims", type: "u32", length: MAX_BATCH_DIMS },
      { name: "sta", type: "u32", length: MAX_BATCH_DIMS }, // batch strides of a and b
      { name: "stb", type: "u32", length: MAX_BATCH_DIMS },
    ],
    workgroupSize: [t.wgx, t.wgy],
    grid: "3d",
  }, () => matmulSource(cfg));
}

/**
 * The range of element offsets a batch loop reaches, for kept batches z0..z1-1 (the first
 * `nb` of `dims`) and every reduced batch: [min, max] of the summed `i_d * stride_d`.
 */
function batchSpan(
  dims: readonly number[],
  strides: readonly number[],
  nb: number,
  z0: number,
  z1: number,
): [number, number] {
  let reducedMax = 0;
  for (let d = nb; d < dims.length; d++) reducedMax += (dims[d] - 1) * strides[d];
  if (z1 - z0 > 4096) { // many batches: bound them by every kept offset
    let keptMax = 0;
    for (let d = 0; d < nb; d++) keptMax += (dims[d] - 1) * strides[d];
    return [0, keptMax + reducedMax];
  }
  let lo = Infinity, hi = 0;
  for (let z = z0; z < z1; z++) {
    let rem = z, off = 0;
    for (let d = nb - 1; d >= 0; d--) {
      off += (rem % dims[d]) * strides[d];
      rem = Math.floor(rem / dims[d]);
    }
    lo = Math.min(lo, off);
    hi = Math.max(hi, off);
  }
  return [lo, hi + reducedMax];
}

/** Strides (in elements) of a view's batch dimensions aligned to `full`, 0 where broadcast. */
function batchStrides(v: View, full: readonly number[]): number[] {
  const st = new Array(full.length).fill(0);
  let s = v.rows * v.cols;
  for (let d = v.batch.length - 1; d >= 0; d--) {
    const fd = full.length - v.batch.length + d;
    st[fd] = v.batch[d] === 1 ? 0 : s;
    s *= v.batch[d];
  }
  return st;
}

/**
 * How `gemm` runs the K dimension: in one pass, or in splits whose results add into an f32
 * output. Splits are needed when an operand whose stored rows run along K (B as [K, N], A
 * transposed as [K, M]) is larger than one binding (2-D products; windows do the rest):
 * GPT-2's tied LM head, dLogits @ wte, reads all 50257 rows of the 154 MB table. And on
 * adapters that cap an invocation's loop iterations (`rt.maxLoopIterations`: llvmpipe), when
 * the K loop would pass the cap: each K-slice of `bk` runs one iteration of the slice loop,
 * the loads of both tiles and the inner products; the texture family's loop runs K / 4
 * iterations, and its textures hold K rows or texels. K is split where any of `tilings`
 * needs it.
 */
function splitsOfK(
  rt: Runtime,
  A: View,
  B: View,
  full: readonly number[],
  K: number,
  tilings: readonly Tiles[],
  R: number,
): [number, number][] {
  const max = rt.maxBindingBytes;
  const rowBytes = (v: View) => v.cols * v.t.dt.bits / 8;
  const big = (v: View, kRows: boolean) => kRows && v.t.buffer("matmul").bytes > max;
  let kc = K;
  if (prod(full) === 1 && (big(A, A.trans) || big(B, !B.trans))) {
    for (const v of [A.trans ? A : null, B.trans ? null : B]) {
      if (v !== null) kc = Math.min(kc, Math.floor(max / 2 / rowBytes(v)));
    }
  }
  for (const { tm, tn, wgx, wgy, bk, family } of tilings) {
    let loopK: number;
    if (family === "texture") {
      // B's texture holds K rows; the K loop runs K / 4 iterations, then the stores
      const rows = rt.maxTextureSize;
      kc = Math.min(kc, rows - (rows % 8));
      loopK = (Math.floor(rt.maxLoopIterations / Math.max(1, R)) - (tm * tn) / 4 * 5) * 4;
    } else {
      const threads = wgx * wgy;
      const perSlice = 2 + bk + Math.ceil((wgy * tm * bk) / 4 / threads) +
        Math.ceil((wgx * tn * bk) / 4 / threads);
      loopK = Math.floor(rt.maxLoopIterations / Math.max(1, R) / perSlice) * bk;
    }
    if (Number.isFinite(loopK)) kc = Math.min(kc, loopK);
  }
  if (kc >= K || K <= 4) return [[0, K]];
  // whole steps of 8 keep both operands of the texture family copyable (texturePlan)
  kc = kc >= 8 ? kc - (kc % 8) : Math.max(4, kc - (kc % 4));
  const out: [number, number][] = [];
  for (let k0 = 0; k0 < K; k0 += kc) out.push([k0, Math.min(K, k0 + kc)]);
  return out;
}

/**
 * The tilings whose limits split K (`splitsOfK`): the workgroup-memory tiles, and on a device
 * whose texture family passed its check, the texture tiles of the class, whichever family
 * runs the product, so that both families split a product at the same points and give the
 * same bits (a split's partial sums add in f32).
 */
function splitTilings(rt: Runtime, M: number, N: number, full: readonly number[]): Tiles[] {
  const storage = storageTiles(rt, M, N);
  const c = textureCheck.get(rt);
  if (prod(full) !== 1 || (c !== "passed" && c !== "probing")) return [storage];
  const t = classTiles(rt, M, N);
  return t.family === "texture" ? [storage, t] : [storage];
}

/**
 * `out[kept] = sum over reduced batch dims of op(A) @ op(B)`: the one launcher behind the
 * forward and backward passes. `full` is the broadcast batch shape of A and B; `keep[d]` says
 * whether batch dimension d is one of the output's (in order) or summed over. With `scales`
 * (per-tensor FP8 scales of A and B), the f32 result is multiplied by 1 / sa and 1 / sb.
 */
function gemm(
  op: string,
  A: View,
  B: View,
  full: readonly number[],
  keep: readonly boolean[],
  outDt: DType,
  outShape: readonly number[],
  scales: readonly [Tensor, Tensor] | null = null,
): Tensor {
  const rt = currentRuntime();
  A.t.buffer(`${op}()`);
  B.t.buffer(`${op}()`);
  const M = logicalRows(A), K = logicalCols(A), N = logicalCols(B);
  const outL = layoutOf(outDt, rt);
  const reduced = full.reduce((r, v, d) => (keep[d] ? r : r * v), 1);
  let tiles = tilesFor(rt, M, N);
  const kSplits = splitsOfK(rt, A, B, full, K, splitTilings(rt, M, N, full), reduced);
  // the texture family where it can run this product, else the workgroup-memory tiles
  const plan = tiles.family === "texture"
    ? texturePlan(rt, A, B, full, M, N, tiles, kSplits)
    : null;
  if (tiles.family === "texture" && plan === null) tiles = storageTiles(rt, M, N);
  const direct = kSplits.length === 1 && (outL.lanes === 1 || N % outL.lanes === 0);
  const target = direct ? outDt : float32;
  const out = Tensor.empty(outShape, target);
  const stA = batchStrides(A, full), stB = batchStrides(B, full);
  // kept dimensions first, then reduced; size-1 dimensions drop out
  const dims: number[] = [], sa: number[] = [], sb: number[] = [];
  const order = [...full.keys()].filter((d) => keep[d]).concat(
    [...full.keys()].filter((d) => !keep[d]),
  );
  let nb = 0;
  for (const d of order) {
    if (full[d] === 1) continue;
    dims.push(full[d]);
    sa.push(stA[d]);
    sb.push(stB[d]);
    if (keep[d]) nb++;
  }
  if (dims.length > MAX_BATCH_DIMS) {
    throw new ShapeError(
      `${op}(): ${dims.length} batch dimensions exceed the maximum of ${MAX_BATCH_DIMS}`,
    );
  }
  const Z = prod(dims.slice(0, nb)), R = prod(dims.slice(nb));
  const cfg: MatmulKernelConfig = {
    tiles,
    a: layoutOf(A.t.dt, rt),
    b: layoutOf(B.t.dt, rt),
    out: layoutOf(target, rt),
    transA: A.trans,
    transB: B.trans,
    saturate: outDt.saturate,
    scaled: scales !== null,
    quadOut: plan !== null && target.name === "f32" && N % 4 === 0 &&
      layoutOf(target, rt).elem === "u32",
  };
  const scaleBufs: Record<string, PooledBuffer> = scales === null
    ? {}
    : { scalea: scales[0].buffer(op), scaleb: scales[1].buffer(op) };
  if (plan !== null) {
    runTexturePlan(rt, plan, cfg, A, B, M, N, out.buffer(op), scaleBufs, op);
  } else if (M * N * Z > 0) {
    const prog = matmulProgram(rt, cfg);
    const bm = tiles.wgy * tiles.tm, bn = tiles.wgx * tiles.tn;
    const gx = Math.ceil(N / bn), gy = Math.ceil(M / bm);
    // Windows, for operands larger than one binding: the program cuts the grid into boxes of
    // output tiles (along N for a large transposed B, as GPT's tied LM head; along M for a
    // large A or output; along the kept batches), and an operand's range for a box runs from
    // its first to its last element read (row-major, stored order).
    const piece = (lo: Readonly<Box>, hi: Readonly<Box>) => ({
      m: [lo[1] * bm, Math.min(M, hi[1] * bm)],
      n: [lo[0] * bn, Math.min(N, hi[0] * bn)],
      z: [lo[2], hi[2]],
    });
    // element range of a stored [rows, cols] operand read at logical rows x logical cols
    const span = (
      v: View,
      strides: readonly number[],
      rows: number[],
      cols: number[],
      z: number[],
    ): [number, number] => {
      const [lo, hi] = batchSpan(dims, strides, nb, z[0], z[1]);
      const first = v.trans ? cols[0] * v.cols + rows[0] : rows[0] * v.cols + cols[0];
      const last = v.trans
        ? (cols[1] - 1) * v.cols + rows[1] - 1
        : (rows[1] - 1) * v.cols + cols[1] - 1;
      return [lo + first, hi + last + 1];
    };
    const bufs = { a: A.t.buffer(op), b: B.t.buffer(op), out: out.buffer(op) };
    let kRange = [0, K];
    const args = {
      uniforms: {
        m: M,
        n: N,
        k: K,
        oa: 0,
        ob: 0,
        acc: 0,
        nb,
        nd: dims.length,
        r: R,
        lda: A.cols,
        ldb: B.cols,
        dims,
        sta: sa,
        stb: sb,
      },
      groups: [gx, gy, Z] as [number, number, number],
      splitDim: [0, 1, 2] as const,
      cost: 0.2 * M * N * K * Z * R, // about 0.2 ns per multiply-add on a CPU adapter
      ranges: {
        a: (_g0: number, _g1: number, lo: Readonly<Box>, hi: Readonly<Box>) => {
          const p = piece(lo, hi);
          return span(A, sa, p.m, kRange, p.z);
        },
        b: (_g0: number, _g1: number, lo: Readonly<Box>, hi: Readonly<Box>) => {
          const p = piece(lo, hi);
          return span(B, sb, kRange, p.n, p.z);
        },
        out: (_g0: number, _g1: number, lo: Readonly<Box>, hi: Readonly<Box>): [number, number] => {
          const p = piece(lo, hi);
          return [
            p.z[0] * M * N + p.m[0] * N + p.n[0],
            (p.z[1] - 1) * M * N + (p.m[1] - 1) * N + p.n[1],
          ];
        },
      },
    };
    const buffers = { ...bufs, ...scaleBufs };
    // K in one pass, or in splits whose rows of a large operand fit one binding each; the
    // splits after the first add to the f32 output
    for (const [i, [k0, k1]] of kSplits.entries()) {
      kRange = [k0, k1];
      const u = args.uniforms;
      u.k = k1 - k0;
      u.oa = A.trans ? k0 * A.cols : k0;
      u.ob = B.trans ? k0 : k0 * B.cols;
      u.acc = i > 0 ? 1 : 0;
      prog.run({ ...args, buffers, cost: 0.2 * M * N * (k1 - k0) * Z * R });
    }
  }
  if (direct || target.name === outDt.name) return out; // f32 split into partial sums
  const rounded = cast(out, outDt);
  out.dispose();
  return rounded;
}

/** A tensor as a matrix view: 1-D operands become a row (`asRow`) or a column. */
function viewOf(t: Tensor, trans: boolean, asRow: boolean): View {
  const s = t.shape;
  if (s.length === 1) {
    // a vector is its own transpose
    return asRow
      ? { t, batch: [], rows: 1, cols: s[0], trans: false }
      : { t, batch: [], rows: s[0], cols: 1, trans: false };
  }
  return { t, batch: s.slice(0, -2), rows: s[s.length - 2], cols: s[s.length - 1], trans };
}

function describe(a: Tensor, b: Tensor, o: MatmulOptions): string {
  return `${fmtShape(a.shape)} (${a.dtype}${o.transA ? ", transposed" : ""}) @ ${
    fmtShape(b.shape)
  } (${b.dtype}${o.transB ? ", transposed" : ""})`;
}

/**
 * The matrix product of `a` and `b`, as `torch.matmul`: `[M,K] @ [K,N]` gives `[M,N]`;
 * leading (batch) dimensions broadcast (`[2,1,M,K] @ [3,K,N]` gives `[2,3,M,N]`); a 1-D
 * `a` is a row vector and a 1-D `b` a column vector whose dimension is dropped from the
 * result (two vectors give their dot product, a 0-d tensor). `transA` / `transB` use the
 * transpose of the last two dimensions of an operand without copying it.
 *
 * Operands may have any float dtype, mixed; the products are accumulated in f32 and rounded
 * once to the output dtype (`promoteTypes(a.dtype, b.dtype)` unless `outDtype` is given).
 * Inside `autocast()`, the operands are first cast to the context's dtype. Gradients flow to
 * both operands, in each operand's own dtype, summed over the batch dimensions that were
 * broadcast (inside the f32 accumulator, rounded once).
 *
 * @example
 * ```ts
 * import { matmul, tensor } from "../../mod.ts";
 * const a = tensor([[1, 2], [3, 4]], { dtype: "bf16" });
 * const b = tensor([[5, 6], [7, 8]], { dtype: "e4m3" });
 * const c = matmul(a, b);
 * console.log(c.dtype, Array.from(await c.toArray())); // "bf16" [19, 22, 43, 50]
 * const d = matmul(a, b, { transB: true, outDtype: "f32" }); // a @ b^T
 * console.log(d.dtype, Array.from(await d.toArray())); // "f32" [17, 23, 39, 53]
 * ```
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  if (!(a instanceof Tensor) || !(b instanceof Tensor)) {
    throw new ValueError(
      `matmul(): operands must be tensors, got ${a === null ? "null" : typeof a} and ${
        b === null ? "null" : typeof b
      }`,
    );
  }
  for (const t of [a, b]) {
    if (!isFloat(t.dt)) {
      throw new DTypeError(
        `matmul(): operands must have float dtypes: ${describe(a, b, opts)}; ` +
          `cast the ${t.dtype} operand to a float dtype first (x.cast("f32"))`,
      );
    }
    if (t.ndim === 0) {
      throw new ShapeError(
        `matmul(): operands must have at least one dimension: ${describe(a, b, opts)}; ` +
          `use mul() for a scalar`,
      );
    }
  }
  const want = opts.outDtype === undefined ? null : toDType(opts.outDtype);
  if (want !== null && !isFloat(want)) {
    throw new DTypeError(
      `matmul(): outDtype must be a float dtype, got ${want.name}: ${describe(a, b, opts)}`,
    );
  }
  let A = viewOf(a, opts.transA ?? false, true);
  let B = viewOf(b, opts.transB ?? false, false);
  const M = logicalRows(A), K = logicalCols(A), K2 = logicalRows(B), N = logicalCols(B);
  if (K !== K2) {
    throw new ShapeError(
      `matmul(): inner dimensions differ: ${describe(a, b, opts)}: ` +
        `${K} columns of the left operand, ${K2} rows of the right`,
    );
  }
  const full = broadcastBatch(
    A.batch,
    B.batch,
    () =>
      `matmul(): batch dimensions ${fmtShape(A.batch)} and ${
        fmtShape(B.batch)
      } cannot be broadcast together: ${describe(a, b, opts)}`,
  );
  const outShape = [...full, ...(a.ndim > 1 ? [M] : []), ...(b.ndim > 1 ? [N] : [])];
  // under autocast, the context's GEMM precision prepares the inputs, forward and backward:
  // the operands as the graph sees them (casts to the context's dtype, through which the
  // gradient flows back, or the originals when a recipe quantises from them), each GEMM
  // operand (FP8/MX quantisation), and the incoming gradient (its rounding or quantisation)
  const site = contextState()?.gemm.site(a, b) ?? null;
  if (site !== null) {
    [a, b] = site.inputs(a, b);
    A = { ...A, t: a };
    B = { ...B, t: b };
  }
  const outDt = want ?? site?.outDtype ?? promoteTypes(a.dt, b.dt);
  // [..., M, K] @ [K, N] (a Linear layer): the batch folds into M, one large GEMM instead of
  // many small ones (measured 2.9x faster for (16, 64, 128) @ (128, 512) on llvmpipe). The
  // memory layout of a and of the output is the same either way.
  let batch: readonly number[] = full, rows = M;
  if (B.batch.length === 0 && A.batch.length > 0 && !A.trans) {
    rows = M * A.batch.reduce((p, q) => p * q, 1);
    A = { ...A, batch: [], rows };
    batch = [];
  }
  const pa = prepare(site, "a", A, true), pb = prepare(site, "b", B, false);
  const fwdTemps = [pa, pb].filter((p) => p.temp).flatMap((p) => [p.v.t, p.scale]);
  const out = gemm(
    "matmul",
    pa.v,
    pb.v,
    batch,
    batch.map(() => true),
    outDt,
    outShape,
    scalesOf(pa, pb),
  );
  attach(out, "matmul", [a, b], (g) => {
    // g is the output's gradient, read as [...batch, rows, N] (vector dimensions restored)
    const G: View = { t: g, batch, rows, cols: N, trans: false };
    const keepFor = (v: View) =>
      batch.map((size, d) => {
        const own = v.batch[v.batch.length - batch.length + d];
        return own !== undefined && own === size;
      });
    // the backward GEMMs' inputs: per-tensor preparations (FP8 scaling, rounding) are made
    // once (the forward's operands, the gradient once); MX quantises along each GEMM's own
    // reduction axis
    const temps: (Tensor | null)[] = [];
    let gOnce: Prepared | null = null;
    const use = (v: View, left: boolean, fwd: Prepared | null): Prepared => {
      if (site !== null && site.perTensor) {
        if (fwd === null) gOnce ??= prepare(site, "grad", G, true);
        const p = fwd ?? gOnce!;
        return { v: { ...v, t: p.v.t }, scale: p.scale, temp: false };
      }
      const p = prepare(site, fwd === null ? "grad" : fwd === pa ? "a" : "b", v, left);
      if (p.temp) temps.push(p.v.t, p.scale);
      return p;
    };
    const mm = (l: Prepared, r: Prepared, keep: boolean[], t: Tensor) =>
      gemm("matmul_backward", l.v, r.v, batch, keep, t.dt, t.shape, scalesOf(l, r));
    const dA = a.requiresGrad
      ? (A.trans
        ? mm(use(B, true, pb), use(flip(G), false, null), keepFor(A), a) // B g^T
        : mm(use(G, true, null), use(flip(B), false, pb), keepFor(A), a)) // g B^T
      : null;
    const dB = b.requiresGrad
      ? (B.trans
        ? mm(use(flip(G), true, null), use(A, false, pa), keepFor(B), b) // g^T A
        : mm(use(flip(A), true, pa), use(G, false, null), keepFor(B), b)) // A^T g
      : null;
    const once = gOnce as Prepared | null; // assigned inside use()
    if (once?.temp) temps.push(once.v.t, once.scale);
    for (const t of [...temps, ...fwdTemps]) t?.dispose();
    return [dA, dB];
  });
  // without a graph, nothing will read the prepared operands again
  if (out.node === null) { for (const t of fwdTemps) t?.dispose(); }
  return out;
}

/** The per-tensor scales of two prepared operands (both or neither have one). */
function scalesOf(l: Prepared, r: Prepared): [Tensor, Tensor] | null {
  if (l.scale === null && r.scale === null) return null;
  if (l.scale === null || r.scale === null) {
    throw new ValueError("matmul(): autocast's GEMM hook scaled one operand but not the other");
  }
  return [l.scale, r.scale];
}

/** A GEMM operand as autocast's hook prepared it; `temp`: made here, to be freed. */
interface Prepared {
  readonly v: View;
  readonly scale: Tensor | null;
  readonly temp: boolean;
}

/**
 * Prepares the operand `v` of a GEMM (`left`: the left operand, reduced along its logical
 * columns; else along its logical rows) with the context's hook, if any.
 */
function prepare(
  site: GemmSite | null,
  which: "a" | "b" | "grad",
  v: View,
  left: boolean,
): Prepared {
  if (site === null) return { v, scale: null, temp: false };
  const along = left === v.trans ? "rows" : "cols";
  const q = which === "grad"
    ? site.grad(v.t, v.rows, v.cols, along)
    : site.operand(which, v.t, v.rows, v.cols, along);
  return { v: { ...v, t: q.t }, scale: q.scale, temp: q.t !== v.t };
}

/** The broadcast of two batch shapes. */
function broadcastBatch(
  x: readonly number[],
  y: readonly number[],
  err: () => string,
): number[] {
  const rank = Math.max(x.length, y.length);
  const out: number[] = [];
  for (let d = 0; d < rank; d++) {
    const p = x[x.length - rank + d] ?? 1, q = y[y.length - rank + d] ?? 1;
    if (p !== q && p !== 1 && q !== 1) throw new ShapeError(err());
    out.push(p === 1 ? q : p);
  }
  return out;
}

const methods: MatmulMethods & ThisType<Tensor> = {
  /** Matrix product (2-D, or batched with broadcast batch dims), accumulated in f32. */
  matmul(this: Tensor, other: Tensor): Tensor {
    return matmul(this, other);
  },
};
/** The `matmul` method of `Tensor`. */
export interface MatmulMethods {
  /** Matrix product (2-D, or batched with broadcast batch dims), accumulated in f32. */
  matmul(other: Tensor): Tensor;
}

installMethods(methods, "ops/matmul.ts");
