/**
 * The kernel program builder: the one way a kernel of ulp declares what it binds.
 *
 * A kernel states, once, its storage bindings (name, a dtype layout or a raw WGSL type,
 * access) and its named uniform fields; the builder generates from that the WGSL
 * declarations, the uniform struct and its typed packer, accessor functions for uniform
 * arrays, one load and one store helper per layout, the shared prelude, the entry point, the
 * cache key and the bind group signature. At dispatch it packs the uniforms by name, binds
 * each buffer whole or, when the buffer is larger than `maxStorageBufferBindingSize`, as
 * windows of at most that size (offsets on `minStorageBufferOffsetAlignment`), splitting the
 * work into pieces whose windows fit, and folds grids larger than
 * `maxComputeWorkgroupsPerDimension` into 2-D/3-D grids or several dispatches.
 *
 * What a kernel's WGSL (its `kernel` function) may use, for a binding named `x`:
 *
 * | helper | for | what it does |
 * | --- | --- | --- |
 * | `ld_x(i) -> f32` | layouts | element `i` (logical index), decoded |
 * | `ld4_x(at, n_ok) -> vec4<f32>` | layouts | elements at..at+3, zero from `n_ok` on |
 * | `lq_x(q) -> vec4<f32>` | `vec4` bindings | elements 4q..4q+3 decoded, one 16-byte load with no alignment test or mask |
 * | `code_x(i) -> u32` | packed layouts | the stored code of element `i` |
 * | `st_x(w, v: vec4<f32>, r: vec4<u32>)` | layouts | encodes the lanes of word `w` from `v` (random bits `r` for stochastic rounding) and stores the word |
 * | `enc_x(v, r) -> u32` | layouts | the code of `v` in the binding's dtype |
 * | `stc_x(w, c: vec4<u32>)` | layouts | stores the codes `c` as the lanes of word `w`, unchanged (ops that move codes, not values) |
 * | `st4_x(q, v: vec4<f32>, r: vec4<u32>)` | `vec4` bindings | encodes and stores elements 4q..4q+3 as one 16-byte store |
 * | `get4_x(q) -> vec4<u32>` | `vec4` bindings | words 4q..4q+3 as they are stored, one 16-byte load |
 * | `put4_x(q, w: vec4<u32>)` | `vec4` bindings | stores the words `w` as words 4q..4q+3, unchanged, as one 16-byte store |
 * | `get_x(j)`, `put_x(j, v)` | all | raw array element `j` of the buffer (windowed) |
 * | `x[j]` | raw, whole | direct access (raw bindings are always bound whole) |
 * | `u.name`, `u_name(k)` | uniforms | a scalar field; element `k` of an array field |
 * | `tl_t(c, r) -> vec4<f32>` | read textures | the texel at column `c`, row `r` (`textureLoad`) |
 * | `ts_t(c, r, v: vec4<f32>)` | write textures | stores the texel at column `c`, row `r` |
 * | `get4_x`, `get_x`, `lq_x`, `ld4_x`, `ld_x`, `code_x` | staged `vec4` bindings | as above, reading the run's texture copy of the buffer (`BindingSpec.staged`) |
 *
 * A 1-D program's `kernel(wg: u32, lid: vec3u, li: u32)` receives the linear workgroup index
 * (the builder returns early past the end, uniformly for the whole workgroup, so barriers
 * stay legal); a 3-D program's `kernel(wg: vec3u, lid: vec3u, li: u32)` the workgroup id.
 * Windowing is invisible to a kernel that goes through the helpers: they subtract the window's
 * base, and a split piece sees the same global workgroup indices as one whole dispatch.
 *
 * @example
 * ```ts
 * import { getRuntime, layoutOf, runProgram } from "./mod.ts";
 * import { dtype } from "../dtypes/mod.ts";
 * const rt = await getRuntime();
 * const f32 = layoutOf(dtype("f32"), rt);
 * const x = rt.alloc(16, { dtype: "f32", purpose: "scratch" });
 * const y = rt.alloc(16, { dtype: "f32", purpose: "scratch" });
 * rt.write(x, new Float32Array([1, 2, 3, 4]));
 * runProgram(rt, "doc|axpb", {
 *   label: "axpb",
 *   bindings: [{ name: "x", type: f32, access: "read" }, { name: "y", type: f32, access: "read_write" }],
 *   uniforms: [{ name: "n", type: "u32" }, { name: "ab", type: "f32", length: 2 }],
 *   workgroupSize: 64,
 * }, () => `
 * fn kernel(wg: u32, lid: vec3u, li: u32) {
 *   let i = wg * 64u + li;
 *   if (i < u.n) { st_y(i, vec4<f32>(u_ab(0u) * ld_x(i) + u_ab(1u)), vec4<u32>(0u)); }
 * }`, {
 *   buffers: { x, y },
 *   uniforms: { n: 4, ab: [2, 1] },
 *   groups: 1,
 * });
 * console.log(Array.from(new Float32Array(await rt.read(y)))); // [3, 5, 7, 9]
 * rt.free(x);
 * rt.free(y);
 * ```
 * @module
 */

import { uint32, WGSL_RNG, wgslChunks, wgslCodec, type WgslCodecOptions } from "../dtypes/mod.ts";
import { DeviceError, ValueError } from "../errors.ts";
import { type Layout, layoutOf } from "./layout.ts";
import { onNewDevice } from "./device.ts";
import {
  type Binding,
  type BufferWindow,
  type Kernel,
  type PooledBuffer,
  type Runtime,
  WINDOWS_CONST,
  WINDOWS_DECL,
} from "./runtime.ts";

/** A box of workgroups, per grid dimension x, y, z (first, or one past the last). */
export type Box = [number, number, number];

/** WGSL element types of raw (non-tensor) storage bindings. */
export type RawType = "u32" | "i32" | "f32" | "atomic<u32>" | "atomic<i32>";

/** One storage binding of a program. */
export interface BindingSpec {
  /** WGSL-safe name; the helpers are named after it (`ld_<name>`, `st_<name>`, ...). */
  readonly name: string;
  /**
   * A dtype's layout (tensors: load/store helpers, windows) or a raw element type. The buffer
   * given at dispatch is not checked against it: a kernel may bind a buffer through another
   * layout of the same storage (the optimizers' quad kernel binds packed bf16/fp8 state
   * through the u32 layout and packs its words itself).
   */
  readonly type: Layout | RawType;
  /** Read-only or read-write. */
  readonly access: "read" | "read_write";
  /** How `st_`/`enc_` round into the dtype (default: round to nearest even, the dtype's saturation). */
  readonly encode?: WgslCodecOptions;
  /**
   * A one-word-per-element layout (f32, i32, u32, bool) bound as `array<vec4<u32>>`: `ld4_x`
   * at a multiple of 4 is one 16-byte load, and `st4_x(q, v, r)` stores elements 4q..4q+3 as
   * one, and `lq_x(q)` loads elements 4q..4q+3 as one with no runtime test (a kernel whose
   * element offsets are multiples of 4 by construction); `get4_x(q)` and `put4_x(q, w)` load
   * and store words 4q..4q+3 as they are (a kernel that packs or unpacks the words itself).
   * The buffer's bound bytes must hold whole quads (a tensor of a multiple of 4 elements);
   * single-element stores (`st_x`, `put_x`) are not offered (they would write the whole quad).
   */
  readonly vec4?: boolean;
  /**
   * A read-only `vec4` binding read through a texture: each run copies the buffer's bytes into
   * a scratch `rgba32uint` texture (`copyBufferToTexture`, 16 bytes a texel, `STAGE_WIDTH`
   * texels a row; a copy, not a dispatch) and `get4_x`, with every helper built on it (`lq_x`,
   * `ld4_x`, `ld_x`, `get_x`), reads texels: the same words, so the same results. On llvmpipe a
   * texel load costs about a third of a storage load (both run lane by lane), so a kernel bound
   * by its loads gains more than the copy costs (a column sum of 16 MiB: 1.4 to 1.7x). Bound
   * whole, without windows; `stageable` says whether a buffer may be staged on a device.
   */
  readonly staged?: boolean;
}

/**
 * One texture of a program: a 2-D texture of `rgba32float` texels (four f32 values each),
 * read with `tl_<name>(c, r)` (`textureLoad` of a sampled `texture_2d<f32>`, or of a
 * read-only storage texture) or written with `ts_<name>(c, r, v)` (a write-only storage
 * texture). Textures are bound whole, after the storage bindings and the uniform block;
 * `Runtime.scratchTexture` gives them.
 */
export interface TextureSpec {
  /** WGSL-safe name; the helpers are named after it (`tl_<name>`, `ts_<name>`). */
  readonly name: string;
  /**
   * `"read"`: a sampled texture; `"read-storage"`: a read-only storage texture (WGSL's
   * `readonly_and_readwrite_storage_textures` language feature; on llvmpipe its loads cost
   * less than texel fetches); `"write"`: a write-only storage texture.
   */
  readonly access: "read" | "read-storage" | "write";
}

/** Scalar types of uniform fields. */
export type UniformType = "u32" | "i32" | "f32";

/** One named uniform field: a scalar, or an array of `length` scalars. */
export interface UniformSpec {
  /** WGSL-safe name (`u.<name>`; arrays are read with `u_<name>(k)`). */
  readonly name: string;
  /** Scalar type. */
  readonly type: UniformType;
  /** Array length (omit for a scalar). */
  readonly length?: number;
}

/** What a program declares: everything but the body of its kernel. */
export interface ProgramSpec {
  /** The op's name, for errors and profiles. */
  readonly label: string;
  /** Storage bindings, in binding order. */
  readonly bindings: readonly BindingSpec[];
  /** Uniform fields. */
  readonly uniforms?: readonly UniformSpec[];
  /** Textures of `rgba32float` texels, in binding order after the uniform block. */
  readonly textures?: readonly TextureSpec[];
  /** Workgroup size: x, or [x, y] / [x, y, z]. */
  readonly workgroupSize: number | readonly number[];
  /** A 1-D grid (linear workgroup index, default) or a 3-D one. */
  readonly grid?: "1d" | "3d";
}

/** The body of a kernel: WGSL defining `fn kernel(...)`, and chunks it needs (codecs, math). */
export type ProgramBody = string | {
  readonly source: string;
  readonly chunks?: readonly (readonly string[])[];
};

type BindingNames<S extends ProgramSpec> = S["bindings"][number]["name"];
type UniformNames<S extends ProgramSpec> = NonNullable<S["uniforms"]>[number]["name"];
type TextureNames<S extends ProgramSpec> = S extends
  { readonly textures: readonly { readonly name: infer N extends string }[] } ? N : never;

/** Arguments of one run of a program. */
export interface RunArgs<B extends string, U extends string, T extends string = never> {
  /** The buffer of each binding, by name. */
  readonly buffers: { readonly [K in B]: PooledBuffer };
  /** The texture of each texture binding, by name (bound whole). */
  readonly textures?: { readonly [K in T]: GPUTexture };
  /** The value of each uniform field, by name (arrays: up to `length` numbers). */
  readonly uniforms?: { readonly [K in U]: number | ArrayLike<number> };
  /** Workgroups: a count (1-D programs) or [x, y, z] (3-D programs). */
  readonly groups: number | readonly [number, number, number];
  /**
   * For each binding that may be larger than one binding: the range [lo, hi) of elements
   * (logical elements for layouts, array elements for raw types) that workgroups g0..g1-1
   * (along the first of `splitDim`; `lo`..`hi` is the whole box of a 3-D piece) read or write. A buffer too large to bind whole and without a range
   * is a `DeviceError`. Ranges must not shrink as a piece grows.
   */
  readonly ranges?: {
    readonly [K in B]?: (
      g0: number,
      g1: number,
      lo: Readonly<Box>,
      hi: Readonly<Box>,
    ) => readonly [number, number];
  };
  /**
   * Estimated work of the whole run, in nanoseconds of a CPU adapter (for example 0.2 ns per
   * multiply-add); default 2 ns per invocation. A run whose work passes the runtime's
   * `maxBatchCost` is cut into several dispatches, so that no submission runs for long.
   */
  readonly cost?: number;
  /**
   * 3-D programs: the grid dimensions pieces may be cut along (default 0; `g0, g1` of a range
   * are along the first, and `lo`, `hi` give the piece's whole box of workgroups).
   */
  readonly splitDim?: 0 | 1 | 2 | readonly (0 | 1 | 2)[];
}

/** A compiled program: run it with buffers and uniforms by name. */
export interface Program<
  B extends string = string,
  U extends string = string,
  T extends string = string,
> {
  /** The compiled kernel. */
  readonly kernel: Kernel;
  /** Words of the uniform block. */
  readonly uniformWords: number;
  /** Records the program's dispatches (several when windows or the grid split it). */
  run(args: RunArgs<B, U, T>): void;
}

interface Field {
  readonly name: string;
  readonly type: UniformType;
  readonly length: number; // 0 for a scalar
  readonly word: number;
}

/** Bytes of one WGSL array element of a binding, and values per element. */
function unit(t: Layout | RawType, vec4 = false): { bytes: number; lanes: number } {
  if (typeof t === "string") return { bytes: 4, lanes: 1 };
  if (vec4) return { bytes: 16, lanes: 4 };
  return t.elem === "f16" ? { bytes: 2, lanes: 1 } : { bytes: 4, lanes: t.lanes };
}

function checkName(label: string, what: string, name: string): void {
  if (!/^[a-z][a-z0-9]*$/i.test(name)) {
    throw new Error(`internal: program ${label}: ${what} name '${name}' must be alphanumeric`);
  }
}

/** The uniform fields of a program: the builder's own first, then the program's. */
function layoutFields(spec: ProgramSpec): { fields: Field[]; words: number; struct: string } {
  const own: UniformSpec[] = [
    { name: "pg0", type: "u32" }, // first workgroup of this piece (1-D) ...
    { name: "pg1", type: "u32" }, // ... and one past its last
    { name: "pox", type: "u32" }, // 3-D: workgroup offsets of this dispatch
    { name: "poy", type: "u32" },
    { name: "poz", type: "u32" },
    ...spec.bindings.filter((b) => typeof b.type !== "string").map((b) => ({
      name: `wb${b.name}`, // window base of a layout binding, in array elements
      type: "u32" as const,
    })),
    ...(spec.uniforms ?? []),
  ];
  const fields: Field[] = [];
  let word = 0;
  const lines: string[] = [];
  for (const f of own.filter((f) => f.length === undefined)) {
    fields.push({ name: f.name, type: f.type, length: 0, word });
    lines.push(`  ${f.name}: ${f.type},`);
    word++;
  }
  let pad = 0;
  while (word % 4 !== 0) lines.push(`  pad${pad++}: u32,`), word++;
  for (const f of own.filter((f) => f.length !== undefined)) {
    const vecs = Math.max(1, Math.ceil(f.length! / 4));
    fields.push({ name: f.name, type: f.type, length: f.length!, word });
    lines.push(`  ${f.name}: array<vec4<${f.type}>, ${vecs}>,`);
    word += 4 * vecs;
  }
  return { fields, words: word, struct: `struct U {\n${lines.join("\n")}\n}\n` };
}

/** WGSL of the helpers of layout binding `b` that `src` calls. */
function layoutHelpers(b: BindingSpec, l: Layout, src: string): string[] {
  // the window base: 0 where the runtime knows every window starts at its buffer's start
  const x = b.name, v = `b_${x}`, base = `wb_${x}()`;
  const out: string[] = [
    `fn wb_${x}() -> u32 { if (${WINDOWS_CONST}) { return u.wb${x}; } return 0u; }\n`,
  ];
  const uses = (f: string) => src.includes(`${f}_${x}(`);
  const d = l.dtype;
  const c = wgslCodec(d);
  // lq_ (vec4 bindings) decodes like ld_/ld4_ and is written from the same pieces
  const quadLoad = b.vec4 === true && uses("lq");
  const needCodec = uses("ld") || uses("ld4") || uses("code") || quadLoad;
  if (needCodec) out.push(...c.chunks);
  const mask = `${(2 ** l.laneBits - 1) >>> 0}u`;
  // the raw array element j of the buffer, through the window
  if (b.staged) {
    // quad q is texel (q % STAGE_WIDTH, q / STAGE_WIDTH) of the staged copy
    const lod = stageAccess() === "read-u32" ? ", 0" : "";
    out.push(
      `fn get4_${x}(q: u32) -> vec4<u32> { return textureLoad(s_${x}, ` +
        `vec2<u32>(q & ${STAGE_WIDTH - 1}u, q >> ${Math.log2(STAGE_WIDTH)}u)${lod}); }\n`,
    );
    out.push(`fn get_${x}(j: u32) -> u32 { return get4_${x}(j / 4u)[j % 4u]; }\n`);
  } else if (b.vec4) {
    // the window base counts quads
    out.push(`fn get4_${x}(q: u32) -> vec4<u32> { return ${v}[q - ${base}]; }\n`);
    out.push(`fn get_${x}(j: u32) -> u32 { return get4_${x}(j / 4u)[j % 4u]; }\n`);
  } else out.push(`fn get_${x}(j: u32) -> ${l.elem} { return ${v}[j - ${base}]; }\n`);
  if (b.access === "read_write" && !b.vec4) {
    out.push(`fn put_${x}(j: u32, w: ${l.elem}) { ${v}[j - ${base}] = w; }\n`);
  }
  // words 4q..4q+3 stored as they are (a vec4 binding's raw quad; the window base counts quads)
  if (b.access === "read_write" && b.vec4 && uses("put4")) {
    out.push(`fn put4_${x}(q: u32, w: vec4<u32>) { ${v}[q - ${base}] = w; }\n`);
  }
  if (uses("code") || uses("ld") || uses("ld4") || quadLoad) {
    out.push(
      l.lanes === 1
        ? `fn code_${x}(i: u32) -> u32 { return ${
          l.elem === "f16" ? `pack2x16float(vec2<f32>(f32(get_${x}(i)), 0.0))` : `get_${x}(i)`
        }; }\n`
        : `fn code_${x}(i: u32) -> u32 { return (get_${x}(i / ${l.lanes}u) >> ((i % ${l.lanes}u) * ${l.laneBits}u)) & ${mask}; }\n`,
    );
  }
  let value = "";
  if (uses("ld") || uses("ld4") || quadLoad) {
    if (l.elem === "f16") value = `f32(get_${x}(i))`;
    else if (d.name === "f32") value = `bitcast<f32>(get_${x}(i))`;
    else if (d.kind === "int") {
      value = d.signed ? `f32(bitcast<i32>(get_${x}(i)))` : `f32(get_${x}(i))`;
    } else if (d.kind === "bool") value = `f32(get_${x}(i) != 0u)`;
    else value = `${c.decode}(code_${x}(i))`;
    out.push(`fn ld_${x}(i: u32) -> f32 { return ${value}; }\n`);
  }
  // a vec4 binding's element word is its code (one lane per word)
  const dec = (k: string) =>
    value.includes(`get_${x}(i)`)
      ? value.replaceAll(`get_${x}(i)`, `q.${k}`)
      : `${c.decode}(q.${k})`;
  if (quadLoad) {
    out.push(
      d.name === "f32"
        ? `fn lq_${x}(q: u32) -> vec4<f32> { return bitcast<vec4<f32>>(get4_${x}(q)); }\n`
        : `fn lq_${x}(i: u32) -> vec4<f32> {\n  let q = get4_${x}(i);\n  return vec4<f32>(${
          dec("x")
        }, ${dec("y")}, ${dec("z")}, ${dec("w")});\n}\n`,
    );
  }
  if (uses("ld4")) {
    if (b.vec4) {
      out.push(`fn ld4_${x}(at: u32, n_ok: u32) -> vec4<f32> {
  var v: vec4<f32>;
  if (at % 4u == 0u) {
    let q = get4_${x}(at / 4u);
    v = vec4<f32>(${dec("x")}, ${dec("y")}, ${dec("z")}, ${dec("w")});
  } else {
    v = vec4<f32>(ld_${x}(at), ld_${x}(at + 1u), ld_${x}(at + 2u), ld_${x}(at + 3u));
  }
  return select(vec4<f32>(0.0), v, vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n_ok));
}\n`);
    } else if (l.lanes === 1) {
      out.push(`fn ld4_${x}(at: u32, n_ok: u32) -> vec4<f32> {
  let v = vec4<f32>(ld_${x}(at), ld_${x}(at + 1u), ld_${x}(at + 2u), ld_${x}(at + 3u));
  return select(vec4<f32>(0.0), v, vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n_ok));
}\n`);
    } else {
      // a word-aligned quad is read as whole words and each lane decoded once
      const words = l.lanes === 4
        ? `let w = get_${x}(at / 4u);
    q = vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u);`
        : `let w0 = get_${x}(at / 2u);
    let w1 = get_${x}(at / 2u + 1u);
    q = vec4<u32>(w0, w0 >> 16u, w1, w1 >> 16u);`;
      out.push(`fn ld4_${x}(at: u32, n_ok: u32) -> vec4<f32> {
  var q: vec4<u32>;
  if (at % ${l.lanes}u == 0u) {
    ${words}
  } else {
    q = vec4<u32>(code_${x}(at), code_${x}(at + 1u), code_${x}(at + 2u), code_${x}(at + 3u));
  }
  q = q & vec4<u32>(${mask});
  let v = vec4<f32>(${c.decode}(q.x), ${c.decode}(q.y), ${c.decode}(q.z), ${c.decode}(q.w));
  return select(vec4<f32>(0.0), v, vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n_ok));
}\n`);
    }
  }
  if (uses("st") || uses("st4") || uses("enc")) {
    const e = wgslCodec(d, b.encode ?? {});
    out.push(...e.chunks);
    out.push(`fn enc_${x}(v: f32, r: u32) -> u32 { return ${e.encode}(v, r); }\n`);
    if (b.access === "read_write") {
      let word: string;
      if (l.elem === "f16") {
        word = `f16(unpack2x16float(enc_${x}(v.x, r.x)).x)`; // exact: already rounded
      } else if (l.lanes === 1) word = `enc_${x}(v.x, r.x)`;
      else if (l.lanes === 2) {
        word = `(enc_${x}(v.x, r.x) & ${mask}) | ((enc_${x}(v.y, r.y) & ${mask}) << 16u)`;
      } else {
        word = `(enc_${x}(v.x, r.x) & ${mask}) | ((enc_${x}(v.y, r.y) & ${mask}) << 8u) | ` +
          `((enc_${x}(v.z, r.z) & ${mask}) << 16u) | ((enc_${x}(v.w, r.w) & ${mask}) << 24u)`;
      }
      if (b.vec4) {
        out.push(`fn st4_${x}(q: u32, v: vec4<f32>, r: vec4<u32>) {
  ${v}[q - ${base}] = vec4<u32>(enc_${x}(v.x, r.x), enc_${x}(v.y, r.y), enc_${x}(v.z, r.z), enc_${x}(v.w, r.w));
}\n`);
      } else {
        out.push(`fn st_${x}(w: u32, v: vec4<f32>, r: vec4<u32>) { put_${x}(w, ${word}); }\n`);
      }
    }
  }
  if (uses("stc") && b.access === "read_write" && !b.vec4) {
    let word: string;
    if (l.elem === "f16") word = "f16(unpack2x16float(c.x).x)";
    else if (l.lanes === 1) word = "c.x";
    else if (l.lanes === 2) word = `(c.x & ${mask}) | ((c.y & ${mask}) << 16u)`;
    else {
      word = `(c.x & ${mask}) | ((c.y & ${mask}) << 8u) | ((c.z & ${mask}) << 16u) | ` +
        `((c.w & ${mask}) << 24u)`;
    }
    out.push(`fn stc_${x}(w: u32, c: vec4<u32>) { put_${x}(w, ${word}); }\n`);
  }
  return out;
}

/** Generates the whole WGSL of a program. */
function generate(spec: ProgramSpec, body: ProgramBody, struct: string): string {
  const src = typeof body === "string" ? body : body.source;
  const extra = typeof body === "string" ? [] : body.chunks ?? [];
  const chunks: (readonly string[])[] = [[WGSL_RNG, WGSL_MATH], ...extra];
  let decl = "";
  spec.bindings.forEach((b, i) => {
    if (typeof b.type === "string") {
      decl += `@group(0) @binding(${i}) var<storage, ${b.access}> ${b.name}: array<${b.type}>;\n`;
    } else {
      // a staged binding stays in the layout (the buffer is bound, unread) and reads its texture
      const elem = b.vec4 ? "vec4<u32>" : b.type.elem;
      if (!b.staged) {
        decl += `@group(0) @binding(${i}) var<storage, ${b.access}> b_${b.name}: array<${elem}>;\n`;
      }
      chunks.push(layoutHelpers(b, b.type, src));
    }
  });
  decl += `@group(0) @binding(${spec.bindings.length}) var<uniform> u: U;\n`;
  if (spec.bindings.some((b) => typeof b.type !== "string")) {
    decl += WINDOWS_DECL;
  }
  (spec.textures ?? []).forEach((t, i) => {
    const at = `@group(0) @binding(${spec.bindings.length + 1 + i})`;
    if (t.access === "read") {
      decl += `${at} var t_${t.name}: texture_2d<f32>;\n`;
      decl += `fn tl_${t.name}(c: u32, r: u32) -> vec4<f32> { ` +
        `return textureLoad(t_${t.name}, vec2<u32>(c, r), 0); }\n`;
    } else if (t.access === "read-storage") {
      decl += `${at} var t_${t.name}: texture_storage_2d<rgba32float, read>;\n`;
      decl += `fn tl_${t.name}(c: u32, r: u32) -> vec4<f32> { ` +
        `return textureLoad(t_${t.name}, vec2<u32>(c, r)); }\n`;
    } else {
      decl += `${at} var t_${t.name}: texture_storage_2d<rgba32float, write>;\n`;
      decl += `fn ts_${t.name}(c: u32, r: u32, v: vec4<f32>) { ` +
        `textureStore(t_${t.name}, vec2<u32>(c, r), v); }\n`;
    }
  });
  const t0 = spec.bindings.length + 1 + (spec.textures?.length ?? 0);
  spec.bindings.filter((b) => b.staged).forEach((b, k) => {
    decl += `@group(0) @binding(${t0 + k}) var s_${b.name}: ${
      stageAccess() === "read-u32" ? "texture_2d<u32>" : "texture_storage_2d<rgba32uint, read>"
    };\n`;
  });
  let access = "";
  for (const f of spec.uniforms ?? []) {
    if (f.length !== undefined && src.includes(`u_${f.name}(`)) {
      access += `fn u_${f.name}(k: u32) -> ${f.type} { return u.${f.name}[k / 4u][k % 4u]; }\n`;
    }
  }
  const f16 = spec.bindings.some((b) => typeof b.type !== "string" && b.type.elem === "f16") ||
    /\bf16\b/.test(src);
  const ws = typeof spec.workgroupSize === "number" ? [spec.workgroupSize] : spec.workgroupSize;
  const entry = spec.grid === "3d"
    ? `  kernel(wid + vec3<u32>(u.pox, u.poy, u.poz), lid, li);`
    : `  let wg = u.pg0 + wid.x + (wid.y + wid.z * nwg.y) * nwg.x;
  if (wg >= u.pg1) { return; }
  kernel(wg, lid, li);`;
  return `${f16 ? "enable f16;\n" : ""}${struct}${decl}${access}${wgslChunks(...chunks)}
${src}
@compute @workgroup_size(${ws.join(", ")})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u, @builtin(local_invocation_index) li: u32) {
${entry}
}
`;
}

/** Shared WGSL helpers (NaN tests on the bits, NaN-propagating max/min, pow, erf, tanh). */
export const WGSL_MATH = `
fn ulp_isnan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn ulp_max(a: f32, b: f32) -> f32 { return select(max(a, b), a + b, ulp_isnan(a) || ulp_isnan(b)); }
fn ulp_min(a: f32, b: f32) -> f32 { return select(min(a, b), a + b, ulp_isnan(a) || ulp_isnan(b)); }
fn ulp_pow(a: f32, b: f32) -> f32 {
  if (b == 0.0) { return 1.0; }
  if (a == 0.0) { return select(0.0, bitcast<f32>(0x7f800000u), b < 0.0); }
  if (a < 0.0) {
    if (floor(b) != b) { return bitcast<f32>(0x7fc00000u); }
    let m = pow(-a, b);
    return select(m, -m, fract(b * 0.5) != 0.0);
  }
  return pow(a, b);
}
fn ulp_erf(x: f32) -> f32 {
  // Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7)
  let t = 1.0 / (1.0 + 0.3275911 * abs(x));
  let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-x * x);
  return select(-y, y, x >= 0.0);
}
fn ulp_tanh(x: f32) -> f32 {
  // builtin tanh loses relative accuracy near 0: use its odd series there (|x| < 0.125)
  let x2 = x * x;
  let small = x * (1.0 + x2 * (-0.3333333333 + x2 * (0.1333333333 + x2 * (-0.0539682540 + x2 * 0.0218694885))));
  let c = clamp(x, -15.0, 15.0);
  return select(select(tanh(c), small, abs(x) < 0.125), x, ulp_isnan(x));
}
`;

/** One dimension of a strided read, for `stridedRange`. */
export interface StridedDim {
  /** Size of the dimension in the shape the kernel runs over (its output). */
  readonly size: number;
  /** Source elements per step along it (0: broadcast). */
  readonly stride: number;
  /** Coordinates `c` with `lo <= c < hi` read source element `(c - lo) * stride` (default 0, size); others read nothing. */
  readonly lo?: number;
  /** See `lo`. */
  readonly hi?: number;
  /** Set: the coordinate does not choose (an index tensor does); any of `any` steps may be read. */
  readonly any?: number;
}

/**
 * The `ranges` entry of a source read through strides: for output elements [e0, e1) of a
 * row-major `dims` shape, a range [lo, hi) of source elements holding every element they
 * read, `base + sum (c_d - lo_d) * stride_d` (empty, hi <= lo, when they read none). Exact
 * for one row of dimensions; a bound (never short) across rows. Grows with the piece.
 *
 * @example
 * ```ts
 * import { stridedRange } from "./program.ts";
 * // a transpose of a [3, 4] source: output [4, 3] reads source column c of row r at 4r + c
 * const r = stridedRange([{ size: 4, stride: 1 }, { size: 3, stride: 4 }]);
 * console.log(r(0, 3), r(3, 5)); // [0, 9] [1, 6]
 * ```
 */
export function stridedRange(
  dims: readonly StridedDim[],
  base = 0,
): (e0: number, e1: number) => [number, number] {
  const n = dims.length;
  return (e0, e1) => {
    if (e1 <= e0) return [0, 0];
    const c0: number[] = new Array(n), c1: number[] = new Array(n);
    let r0 = e0, r1 = e1 - 1;
    for (let d = n - 1; d >= 0; d--) {
      const s = Math.max(1, dims[d].size);
      c0[d] = r0 % s, c1[d] = r1 % s;
      r0 = Math.floor(r0 / s), r1 = Math.floor(r1 / s);
    }
    let lo = base, hi = base, split = false;
    for (let d = 0; d < n; d++) {
      const { size, stride, any } = dims[d];
      // coordinates [a, b] this piece takes along d: one until the first that differs
      let a = split ? 0 : c0[d], b = split ? size - 1 : c1[d];
      if (a !== b) split = true;
      if (any !== undefined) {
        if (any <= 0) return [0, 0];
        hi += (any - 1) * stride;
        continue;
      }
      const l0 = dims[d].lo ?? 0, l1 = dims[d].hi ?? size;
      a = Math.max(a, l0), b = Math.min(b, l1 - 1);
      if (a > b) return [0, 0];
      lo += (a - l0) * stride, hi += (b - l0) * stride;
    }
    return [lo, hi + 1];
  };
}

/**
 * Texels a row of a staged binding's texture: quad `q` of the buffer is texel
 * `(q % STAGE_WIDTH, q / STAGE_WIDTH)` (a power of two: a mask and a shift).
 */
export const STAGE_WIDTH = 4096;

/**
 * How kernels read textures of `rgba32float` texels (matmul's texture family): as read-only
 * storage textures where WGSL has them (the `readonly_and_readwrite_storage_textures`
 * language feature; on llvmpipe their loads cost less than texel fetches), else sampled.
 *
 * @example
 * ```ts
 * import { textureReads } from "./program.ts";
 * console.log(["read", "read-storage"].includes(textureReads())); // true
 * ```
 */
export function textureReads(): "read" | "read-storage" {
  const features = (navigator.gpu as { wgslLanguageFeatures?: ReadonlySet<string> })
    ?.wgslLanguageFeatures;
  return features?.has("readonly_and_readwrite_storage_textures") ? "read-storage" : "read";
}

/** How staged bindings read their `rgba32uint` textures (`textureReads`, for words). */
function stageAccess(): "read-u32" | "read-storage-u32" {
  return textureReads() === "read" ? "read-u32" : "read-storage-u32";
}

/** The texture of a staged buffer: quads, width and height. */
function stageShape(pb: PooledBuffer): { quads: number; width: number; height: number } {
  const quads = Math.max(1, Math.ceil(pb.bytes / 16));
  const width = Math.min(quads, STAGE_WIDTH);
  return { quads, width, height: Math.ceil(quads / width) };
}

/**
 * The run layout of elementwise work on CPU adapters: each invocation walks RUN_QUADS
 * consecutive quads (of words of its most packed buffer) one after another, in workgroups of
 * RUN_WG invocations, instead of neighbouring invocations taking neighbouring quads (a fused
 * elementwise kernel's quads, the optimizers' quad kernel's groups of two quads). llvmpipe
 * loads a storage buffer lane by lane, and a lane walking a contiguous run of its own is what
 * these CPUs read fastest: the chain `exp(x * a + b) * c` over 4M f32 in 0.68-0.79x the time
 * (lavapipe and OpenGL), AdamW fp32 over 10M parameters in 0.65x; runs of 16 to 64 quads were
 * 1.1-1.4x slower than one quad an invocation, and loops strided by the workgroup 2-3x slower
 * (BENCHMARKS.md, 2026-12-07).
 * Each element's computation is the same in either layout, so the bits are too.
 */
export const RUN_QUADS = 256;
/** Invocations a workgroup in the run layout. */
export const RUN_WG = 16;
/** Which layout elementwise kernels take: `"auto"` (runs on CPU adapters where they pay). */
let runMode: "auto" | "strided" | "runs" = "auto";

/**
 * Sets the layout of elementwise work (fused elementwise kernels of whole quads, the
 * optimizers' quad kernels): `"auto"` (the default: runs on a CPU adapter where the work
 * fills at least 16 workgroups of runs), `"strided"` (neighbouring invocations on neighbouring
 * steps everywhere) or `"runs"` (runs at any size, on any adapter); returns the previous
 * setting. The bits are the same in every layout. For tests and benchmarks that compare the
 * layouts side by side. @internal
 *
 * @example
 * ```ts
 * import { tensor } from "../mod.ts";
 * import { setRunLayout } from "./program.ts";
 * const before = setRunLayout("runs");
 * const y = tensor([1, -2, 3, -4]).mul(2).relu();
 * console.log(Array.from(await y.toArray())); // [2, 0, 6, 0]
 * setRunLayout(before);
 * ```
 */
export function setRunLayout(
  layout: "auto" | "strided" | "runs",
): "auto" | "strided" | "runs" {
  if (!["auto", "strided", "runs"].includes(layout)) {
    throw new ValueError(
      `setRunLayout('${layout}'): the layout must be "auto", "strided" or "runs"`,
    );
  }
  const prev = runMode;
  runMode = layout;
  return prev;
}

/**
 * Whether elementwise work of `workgroups` run-layout workgroups, each reading at most
 * `bytesPerWorkgroup` of a binding, takes the run layout on `rt` (`setRunLayout`): by default on
 * a CPU adapter from 16 workgroups (fewer measured no faster), where a workgroup's share is at
 * most a quarter of a binding (a window holds several workgroups; a process that lowers its
 * binding limit, as the tests of models beyond one binding do, keeps the kernels it compiled).
 *
 * @example
 * ```ts
 * import { getRuntime, runLayout } from "./mod.ts";
 * const rt = await getRuntime();
 * console.log(runLayout(rt, 1, 65536)); // false: one workgroup
 * ```
 */
export function runLayout(rt: Runtime, workgroups: number, bytesPerWorkgroup: number): boolean {
  if (runMode !== "auto") return runMode === "runs";
  return rt.info.isFallbackAdapter && workgroups >= 16 &&
    bytesPerWorkgroup * 4 <= rt.maxBindingBytes;
}

/** Whether staging runs on each device: "auto" where the device passed its check. */
let stagingMode: "auto" | "never" = "auto";
const stagingCheck = new WeakMap<Runtime, boolean>();

/**
 * Turns staged reads off (`"never"`: programs that would stage a binding bind the buffer; the
 * same bits) or back to `"auto"` (on CPU adapters whose device passed the staging check).
 * Set `"never"` before a device is acquired to skip that device's check. Returns the previous
 * mode. @internal
 *
 * @example
 * ```ts
 * import { setStaging } from "./program.ts";
 * const prev = setStaging("never");
 * setStaging(prev);
 * ```
 */
export function setStaging(mode: "auto" | "never"): "auto" | "never" {
  const prev = stagingMode;
  stagingMode = mode;
  return prev;
}

/**
 * Whether a read of `pb` may take a staged binding on `rt`: staging is on, the device is a
 * CPU adapter that passed its check (a staged copy read back word for word), the buffer's
 * quads fit a texture within `maxTextureDimension2D` and the memory budget, and its bytes
 * hold whole quads. Callers choose it where loads dominate (large inputs read with strides).
 *
 * @example
 * ```ts
 * import { getRuntime, stageable } from "./mod.ts";
 * const rt = await getRuntime();
 * const x = rt.alloc(64, { dtype: "f32", purpose: "scratch" });
 * console.log(typeof stageable(rt, x, "x")); // "boolean"
 * rt.free(x);
 * ```
 */
export function stageable(rt: Runtime, pb: PooledBuffer, name: string): boolean {
  if (stagingMode !== "auto" || stagingCheck.get(rt) !== true) return false;
  const { quads, width, height } = stageShape(pb);
  if (pb.bytes % 16 !== 0 || 16 * quads > pb.buffer.size) return false;
  return rt.scratchTexture(`stage.${name}`, width, height, "rgba32uint") !== null;
}

/** Records the copy of `pb` into its staged texture (binding `name`) and returns the texture. */
function stage(rt: Runtime, label: string, name: string, pb: PooledBuffer): GPUTexture {
  const { quads, width, height } = stageShape(pb);
  const t = rt.scratchTexture(`stage.${name}`, width, height, "rgba32uint");
  if (t === null) {
    throw new DeviceError(
      `${label}: no ${width} x ${height} texture for its staged '${name}' operand ` +
        `(${pb.bytes} bytes): past maxTextureDimension2D or the memory budget; a kernel ` +
        `stages only what stageable() allowed: a bug in ulp, please report it`,
    );
  }
  const full = Math.floor(quads / width), rest = quads - full * width;
  rt.copyToTexture(pb, 0, width * 16, t, width, full);
  if (rest > 0) {
    const row = Math.ceil((rest * 16) / 256) * 256;
    rt.copyToTexture(pb, full * width * 16, row, t, rest, 1, full);
  }
  return t;
}

// On a new CPU adapter, stage a buffer of two texture rows and a part (words of every kind,
// NaN patterns included) and read it back through a staged binding: staging runs only where
// every word comes back as it was.
onNewDevice(async (rt) => {
  if (!rt.info.isFallbackAdapter || stagingMode === "never") return;
  const quads = 2 * STAGE_WIDTH + 5, n = 4 * quads;
  const words = Uint32Array.from({ length: n }, (_, i) => Math.imul(i + 1, 0x9e3779b1) >>> 0);
  words.set([0x7fc00001, 0xffffffff, 0x7f800001, 0x00000001, 0x80000000], 7);
  const inp = rt.alloc(n * 4, { dtype: "u32", purpose: "scratch" });
  const out = rt.alloc(n * 4, { dtype: "u32", purpose: "scratch" });
  let same = false;
  try {
    rt.write(inp, words);
    const u32 = layoutOf(uint32, rt);
    program(rt, "stage|check", {
      label: "stage check",
      bindings: [
        { name: "inp", type: u32, access: "read", vec4: true, staged: true },
        { name: "out", type: u32, access: "read_write", vec4: true },
      ],
      workgroupSize: 64,
    }, () =>
      `fn kernel(wg: u32, lid: vec3u, li: u32) {
  let q = wg * 64u + li;
  if (q < ${quads}u) { put4_out(q, get4_inp(q)); }
}`).run({ buffers: { inp, out }, groups: Math.ceil(quads / 64) });
    const got = new Uint32Array(await rt.read(out));
    same = got.length >= n && words.every((w, i) => got[i] === w);
  } catch {
    same = false;
  } finally {
    stagingCheck.set(rt, same);
    rt.free(inp);
    rt.free(out);
  }
});

const programs = new WeakMap<Runtime, Map<string, Program>>();

/**
 * The program cached under `key` on this runtime, generated and compiled from `spec` and
 * `body()` on the first request only. `key` must name everything the WGSL depends on beyond
 * the spec (the builder adds the bindings' layouts, the uniforms and the workgroup size).
 *
 * @example
 * ```ts
 * import { getRuntime, program } from "./mod.ts";
 * const rt = await getRuntime();
 * const p = program(rt, "doc|fill", {
 *   label: "fill",
 *   bindings: [{ name: "y", type: "u32", access: "read_write" }],
 *   uniforms: [{ name: "v", type: "u32" }],
 *   workgroupSize: 4,
 * }, () => "fn kernel(wg: u32, lid: vec3u, li: u32) { y[wg * 4u + li] = u.v; }");
 * const y = rt.alloc(16, { dtype: "u32", purpose: "scratch" });
 * p.run({ buffers: { y }, uniforms: { v: 7 }, groups: 1 });
 * console.log(Array.from(new Uint32Array(await rt.read(y)))); // [7, 7, 7, 7]
 * rt.free(y);
 * ```
 */
export function program<const S extends ProgramSpec>(
  rt: Runtime,
  key: string,
  spec: S,
  body: () => ProgramBody,
): Program<BindingNames<S>, UniformNames<S>, TextureNames<S>> {
  let cache = programs.get(rt);
  if (!cache) programs.set(rt, cache = new Map());
  let sig = `${key}|${spec.label}|${spec.grid ?? "1d"}|${spec.workgroupSize}`;
  for (const b of spec.bindings) {
    sig += `|${b.name}:${b.access}:${
      typeof b.type === "string" ? b.type : `${b.type.dtype.name}/${b.type.elem}`
    }${b.encode ? `:${b.encode.rounding ?? ""}${b.encode.saturate ?? ""}` : ""}${
      b.vec4 ? ":v4" : ""
    }${b.staged ? ":st" : ""}`;
  }
  for (const f of spec.uniforms ?? []) sig += `|${f.name}:${f.type}${f.length ?? ""}`;
  for (const t of spec.textures ?? []) sig += `|tex:${t.name}:${t.access}`;
  let p = cache.get(sig);
  if (!p) {
    p = build(rt, sig, spec, body);
    cache.set(sig, p);
  }
  return p as Program<BindingNames<S>, UniformNames<S>, TextureNames<S>>;
}

/**
 * Builds (from the cache when it can) and runs a program once: `program(rt, key, spec,
 * body).run(args)`.
 *
 * @example
 * ```ts
 * import { getRuntime, runProgram } from "./mod.ts";
 * const rt = await getRuntime();
 * const y = rt.alloc(8, { dtype: "u32", purpose: "scratch" });
 * runProgram(rt, "doc|iota", {
 *   label: "iota",
 *   bindings: [{ name: "y", type: "u32", access: "read_write" }],
 *   workgroupSize: 2,
 * }, () => "fn kernel(wg: u32, lid: vec3u, li: u32) { y[li] = li; }", { buffers: { y }, groups: 1 });
 * console.log(Array.from(new Uint32Array(await rt.read(y)))); // [0, 1]
 * rt.free(y);
 * ```
 */
export function runProgram<const S extends ProgramSpec>(
  rt: Runtime,
  key: string,
  spec: S,
  body: () => ProgramBody,
  args: RunArgs<BindingNames<S>, UniformNames<S>, TextureNames<S>>,
): void {
  program(rt, key, spec, body).run(args);
}

/**
 * The kernel of a program. A function of its own so that `body` stays out of the scope of
 * `build`, whose closures the cached program keeps: a body closure holds its op's scope, and
 * with it the tensors of the call that built the program (unreachable in the user's code, so
 * never freed by the safety net while the cache lives).
 */
function compile(
  rt: Runtime,
  sig: string,
  spec: ProgramSpec,
  body: () => ProgramBody,
  struct: string,
): Kernel {
  const signature = {
    buffers: spec.bindings.map((b) => b.access),
    uniform: true,
    textures: [
      ...(spec.textures ?? []).map((t) => t.access),
      ...spec.bindings.filter((b) => b.staged).map(stageAccess),
    ],
  };
  return rt.kernelFor(sig, spec.label, signature, () => generate(spec, body(), struct));
}

function build(rt: Runtime, sig: string, spec: ProgramSpec, body: () => ProgramBody): Program {
  const label = spec.label;
  spec.bindings.forEach((b) => {
    checkName(label, "binding", b.name);
    if (b.vec4 && (typeof b.type === "string" || b.type.lanes !== 1 || b.type.elem !== "u32")) {
      throw new Error(`internal: program ${label}: binding '${b.name}' cannot be a vec4 view`);
    }
    if (b.staged && (!b.vec4 || b.access !== "read")) {
      throw new Error(`internal: program ${label}: staged binding '${b.name}' must be a read vec4`);
    }
  });
  (spec.uniforms ?? []).forEach((f) => checkName(label, "uniform", f.name));
  (spec.textures ?? []).forEach((t) => checkName(label, "texture", t.name));
  const { fields, words, struct } = layoutFields(spec);
  const byName = new Map(fields.map((f) => [f.name, f]));
  const kernel = compile(rt, sig, spec, body, struct);
  const units = spec.bindings.map((b) => unit(b.type, b.vec4));
  const is3d = spec.grid === "3d";
  const userFields = (spec.uniforms ?? []).map((f) => byName.get(f.name)!);
  const baseWord = spec.bindings.map((b) => byName.get(`wb${b.name}`)?.word ?? -1);
  const stagedAt = spec.bindings.flatMap((b, i) => (b.staged ? [i] : []));

  const run = (args: RunArgs<string, string, string>): void => {
    const lim = rt.info.limits;
    const maxBind = rt.maxBindingBytes;
    const align = lim.minStorageBufferOffsetAlignment ?? 256;
    const maxG = lim.maxComputeWorkgroupsPerDimension;
    const u = new Uint32Array(words);
    const uf = new Float32Array(u.buffer), ui = new Int32Array(u.buffer);
    const given = args.uniforms as Record<string, number | ArrayLike<number>> | undefined;
    for (const f of userFields) {
      const v = given?.[f.name];
      if (v === undefined) throw new Error(`internal: ${label}: uniform '${f.name}' not given`);
      const view = f.type === "f32" ? uf : f.type === "i32" ? ui : u;
      if (typeof v === "number") view[f.word] = v;
      else {
        if (v.length > Math.max(1, f.length)) {
          throw new Error(`internal: ${label}: uniform '${f.name}' takes ${f.length} values`);
        }
        for (let k = 0; k < v.length; k++) view[f.word + k] = v[k];
      }
    }
    const bufs = spec.bindings.map((b) => {
      const pb = (args.buffers as Record<string, PooledBuffer>)[b.name];
      if (pb === undefined) throw new Error(`internal: ${label}: buffer '${b.name}' not given`);
      return pb;
    });
    const texs = (spec.textures ?? []).map((t) => {
      const tx = (args.textures as Record<string, GPUTexture> | undefined)?.[t.name];
      if (tx === undefined) throw new Error(`internal: ${label}: texture '${t.name}' not given`);
      return tx;
    });
    // staged bindings: their bytes copied into their textures once, before every piece; the
    // buffer itself stays bound (whole, or its first bytes where it is too large to bind)
    const bound: Binding[] = [...bufs];
    for (const i of stagedAt) {
      const pb = bufs[i];
      texs.push(stage(rt, label, spec.bindings[i].name, pb));
      if (Math.ceil(pb.bytes / 4) * 4 > maxBind) {
        bound[i] = { buffer: pb, offset: 0, size: Math.min(256, pb.buffer.size) };
      }
    }
    const groups = args.groups;
    const dims: Box = typeof groups === "number"
      ? [groups, 1, 1]
      : [groups[0], groups[1], groups[2]];
    if (dims[0] * dims[1] * dims[2] === 0) return;
    const sds: readonly number[] = typeof groups === "number"
      ? [0]
      : typeof args.splitDim === "number"
      ? [args.splitDim]
      : args.splitDim ?? [0];
    // the bindings too large to bind whole must be windowed
    const big = spec.bindings.map((b, i) =>
      !b.staged && Math.ceil(bufs[i].bytes / 4) * 4 > maxBind
    );
    type Range = (g0: number, g1: number, lo: Box, hi: Box) => readonly [number, number];
    const ranges = (args.ranges ?? {}) as Record<string, Range>;
    big.forEach((isBig, i) => {
      const b = spec.bindings[i];
      if (isBig && (ranges[b.name] === undefined || typeof b.type === "string")) {
        throw new DeviceError(
          `${label}: its '${b.name}' operand (${bufs[i].tag.dtype}, ${bufs[i].tag.purpose}) ` +
            `holds ${bufs[i].bytes} bytes, more than one storage binding may hold ` +
            `(${maxBind} bytes, maxStorageBufferBindingSize), and this op reads it whole: ` +
            `use a smaller batch, context or model`,
        );
      }
    });
    const rangeOf = (i: number, lo: Box, hi: Box): readonly [number, number] =>
      ranges[spec.bindings[i].name](lo[sds[0]], hi[sds[0]], lo, hi);
    // the window of binding i holding its range for the box, and the bytes it needs
    const windowOf = (i: number, lo: Box, hi: Box): BufferWindow => {
      const pb = bufs[i];
      const { bytes, lanes } = units[i];
      const [e0, e1] = rangeOf(i, lo, hi);
      if (e1 <= e0) return { buffer: pb, offset: 0, size: Math.min(align, pb.buffer.size) };
      const a0 = Math.floor(e0 / lanes), a1 = Math.ceil(e1 / lanes);
      const offset = Math.floor((a0 * bytes) / align) * align;
      const end = Math.min(Math.ceil((a1 * bytes) / 4) * 4, pb.buffer.size);
      return { buffer: pb, offset, size: end - offset };
    };
    const wgSize =
      (typeof spec.workgroupSize === "number" ? [spec.workgroupSize] : spec.workgroupSize).reduce(
        (p, q) => p * q,
        1,
      );
    const total = dims[0] * dims[1] * dims[2];
    const perGroup = (args.cost ?? total * wgSize * 2) / total;
    const dispatchBox = (lo: Box, hi: Box, binds: Binding[]): void => {
      if (is3d) {
        for (let z = lo[2]; z < hi[2]; z += maxG) {
          for (let y = lo[1]; y < hi[1]; y += maxG) {
            for (let x = lo[0]; x < hi[0]; x += maxG) {
              u[2] = x, u[3] = y, u[4] = z;
              const g: Box = [
                Math.min(maxG, hi[0] - x),
                Math.min(maxG, hi[1] - y),
                Math.min(maxG, hi[2] - z),
              ];
              rt.dispatch(kernel, binds, g, u, g[0] * g[1] * g[2] * perGroup, texs);
            }
          }
        }
        return;
      }
      // a 1-D count folded into x, y, z within the per-dimension limit
      const n = hi[0] - lo[0];
      const x = Math.min(n, maxG);
      let y = Math.ceil(n / x), z = 1;
      if (y > maxG) z = Math.ceil(y / maxG), y = maxG;
      if (z > maxG) {
        throw new DeviceError(`${label}: ${n} workgroups exceed the adapter's grid of ${maxG}^3`);
      }
      u[0] = lo[0], u[1] = hi[0];
      rt.dispatch(kernel, binds, [x, y, z], u, n * perGroup, texs);
    };
    const maxCost = rt.maxBatchCost;
    if (!big.some((b) => b) && total * perGroup <= maxCost) {
      dispatchBox([0, 0, 0], dims, bound);
      return;
    }
    // Boxes of the grid whose windows all fit: a box that does not fit is halved along the
    // split dimension that shrinks its largest window most.
    // the windows of the large bindings for a box, and the largest of them
    const worst = (lo: Box, hi: Box) => {
      const wins = new Map<number, BufferWindow>();
      let w = { i: -1, size: 0 };
      big.forEach((isBig, i) => {
        if (!isBig) return;
        const win = windowOf(i, lo, hi);
        wins.set(i, win);
        if (win.size > w.size) w = { i, size: win.size };
      });
      return { ...w, wins };
    };
    const todo: [Box, Box][] = [[[0, 0, 0], dims]];
    const halve = (lo: Box, hi: Box, d: number) => {
      const m = lo[d] + Math.ceil((hi[d] - lo[d]) / 2);
      const hi1: Box = [...hi], lo2: Box = [...lo];
      hi1[d] = m;
      lo2[d] = m;
      todo.push([lo2, hi], [lo, hi1]); // the first half first
    };
    while (todo.length > 0) {
      const [lo, hi] = todo.pop()!;
      const groups = (hi[0] - lo[0]) * (hi[1] - lo[1]) * (hi[2] - lo[2]);
      if (groups > 1 && groups * perGroup > maxCost) {
        // too much work for one submission: halve along the longest dimension
        const ext = [0, 1, 2].map((d) => hi[d] - lo[d]);
        halve(lo, hi, ext.indexOf(Math.max(...ext)));
        continue;
      }
      const w = worst(lo, hi);
      if (w.size <= maxBind) {
        const binds = bound.map((pb, i): Binding => {
          const win = w.wins.get(i);
          if (win === undefined) return pb;
          u[baseWord[i]] = win.offset / units[i].bytes;
          return win;
        });
        dispatchBox(lo, hi, binds);
        continue;
      }
      let best: { d: number; size: number } | null = null;
      for (const d of sds) {
        if (hi[d] - lo[d] < 2) continue;
        const mid: Box = [...hi];
        mid[d] = lo[d] + Math.ceil((hi[d] - lo[d]) / 2);
        const size = worst(lo, mid).size;
        if (best === null || size < best.size) best = { d, size };
      }
      if (best === null) {
        const b = spec.bindings[w.i], pb = bufs[w.i];
        const [e0, e1] = rangeOf(w.i, lo, hi);
        throw new DeviceError(
          `${label}: one workgroup reads elements ${e0}..${e1} of its '${b.name}' operand ` +
            `(${pb.tag.dtype}, ${pb.tag.purpose}, ${pb.bytes} bytes), more than the ${maxBind} ` +
            `bytes one storage binding may hold (maxStorageBufferBindingSize); use a smaller ` +
            `batch, context or model`,
        );
      }
      halve(lo, hi, best.d);
    }
  };
  return { kernel, uniformWords: words, run };
}
