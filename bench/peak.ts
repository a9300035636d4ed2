/**
 * Matmul throughput against the card's peak (issue 20, item 4): square products of each size
 * in each dtype through the library (`a.matmul(b)`, realized; timed as the benchmarks time,
 * `timeSideBySide`: `inner` products a repetition, a sync after each), TFLOP/s by the median
 * repetition, and the fraction of the adapter's vector (non-tensor) peak
 * where the adapter is in `PEAKS` (WGSL has no tensor-core instruction, so the vector peak is
 * the ceiling a WebGPU kernel can reach; the tensor-core peak is printed beside it for scale).
 * A product that cannot run at a size (a limit, a DeviceError) is reported and the rest still
 * run.
 *
 * Run: deno run --allow-env=DENO_WEBGPU_BACKEND bench/peak.ts [--sizes 1024,2048,4096]
 *   [--dtypes f32,f16,bf16,e4m3] [--reps 5] [--target-ms 300] [--json]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ready, type Tensor, tensor, tidy } from "../mod.ts";
import { getRuntime } from "../gpu/mod.ts";
import { timeSideBySide } from "./_timing.ts";

/** A card's published peaks, TFLOP/s (dense). */
export interface Peak {
  /** A substring of the adapter's description that names the card. */
  readonly match: RegExp;
  readonly name: string;
  /** f32 on the vector units (FMA). */
  readonly f32: number;
  /** f16 on the vector units (packed FMA). */
  readonly f16: number;
  /** f16/bf16 on the tensor cores with f32 accumulation, dense. */
  readonly tensorF16: number;
  readonly source: string;
}

/**
 * Published peaks, most specific first (an H100 PCIe or an NVL card also says "H100" or
 * "H200"). NVIDIA H100 whitepaper (Table "H100 SXM5 / PCIe", final clocks): SXM5 f32 66.9, f16
 * 133.8, f16 tensor 989.4; PCIe 51.2, 102.4, 756.5. The H200 has the H100 SXM5's SMs and clocks
 * with more and faster memory; the NVL cards run lower clocks (datasheets: f32 60).
 *
 * @example
 * ```ts
 * import { peakOf } from "./peak.ts";
 * const cpu = peakOf("llvmpipe (LLVM 15.0.6, 256 bits)");
 * console.log(peakOf("NVIDIA H100 PCIe")?.f32, cpu); // 51.2 null
 * ```
 */
export const PEAKS: readonly Peak[] = [
  {
    match: /H[12]00.*NVL/i,
    name: "NVIDIA H100 NVL / H200 NVL",
    f32: 60,
    f16: 120,
    tensorF16: 835.5,
    source: "NVIDIA H100 NVL and H200 NVL datasheets (f32 60, f16 tensor 1671 with sparsity); " +
      "vector f16 twice f32 on Hopper",
  },
  {
    match: /H100.*PCIe/i,
    name: "NVIDIA H100 PCIe",
    f32: 51.2,
    f16: 102.4,
    tensorF16: 756.5,
    source: "NVIDIA H100 Tensor Core GPU Architecture whitepaper",
  },
  {
    match: /H200/i,
    name: "NVIDIA H200 (H100 SXM5 compute)",
    f32: 66.9,
    f16: 133.8,
    tensorF16: 989.4,
    source: "NVIDIA H100 whitepaper; H200 datasheet (same compute as H100 SXM5)",
  },
  {
    match: /H100/i,
    name: "NVIDIA H100 SXM5",
    f32: 66.9,
    f16: 133.8,
    tensorF16: 989.4,
    source: "NVIDIA H100 Tensor Core GPU Architecture whitepaper",
  },
  {
    match: /A100/i,
    name: "NVIDIA A100 SXM4",
    f32: 19.5,
    f16: 78,
    tensorF16: 312,
    source: "NVIDIA A100 Tensor Core GPU Architecture whitepaper",
  },
];

/**
 * The entry of `PEAKS` whose pattern the adapter's description matches, or null.
 *
 * @example
 * ```ts
 * import { peakOf } from "./peak.ts";
 * console.log(peakOf("NVIDIA H100 80GB HBM3")?.name); // "NVIDIA H100 SXM5"
 * ```
 */
export function peakOf(description: string): Peak | null {
  return PEAKS.find((p) => p.match.test(description)) ?? null;
}

/** One product's measurement. */
export interface PeakRow {
  dtype: string;
  size: number;
  ms: number | null;
  tflops: number | null;
  /** TFLOP/s / the vector peak of the dtype's arithmetic (f32 for f32 and bf16, f16 for f16). */
  ofPeak: number | null;
  error?: string;
}

if (import.meta.main) {
  const { values: a } = parseArgs({
    args: Deno.args,
    options: {
      sizes: { type: "string", default: "1024,2048,4096" },
      dtypes: { type: "string", default: "f32,f16,bf16" },
      reps: { type: "string", default: "5" },
      "target-ms": { type: "string", default: "300" },
      json: { type: "boolean", default: false },
    },
  });
  const sizes = a.sizes!.split(",").map(Number);
  const reps = Number(a.reps), targetMs = Number(a["target-ms"]);
  if (sizes.some((n) => !Number.isInteger(n) || n < 1) || !(reps >= 1) || !(targetMs > 0)) {
    console.error(
      `peak: --sizes must be positive integers, --reps and --target-ms positive; got ` +
        `'${a.sizes}', '${a.reps}', '${a["target-ms"]}'`,
    );
    Deno.exit(2);
  }
  const info = await ready();
  const rt = await getRuntime();
  const peak = peakOf(info.description);
  const rows: PeakRow[] = [];
  for (const dtype of a.dtypes!.split(",")) {
    // bf16 and FP8 products compute in f32; f16 with native shader-f16 computes in f16
    const ref = /^(f16|float16)$/.test(dtype) && info.shaderF16 ? peak?.f16 : peak?.f32;
    for (const n of sizes) {
      let x: Tensor | null = null, y: Tensor | null = null;
      try {
        const vals = (s: number) =>
          Float32Array.from({ length: n * n }, (_, i) => ((i * s) % 7) / 7);
        x = tensor(vals(3), { shape: [n, n], dtype });
        y = tensor(vals(5), { shape: [n, n], dtype });
        const [xt, yt] = [x, y];
        const { timings, errors } = await timeSideBySide(
          [{
            label: `${dtype} ${n}`,
            run: () => tidy(() => xt.matmul(yt).realize()).dispose(),
            sync: () => rt.sync(),
          }],
          { warmup: 2, reps, targetMs, maxInner: 64 },
          () => {},
        );
        if (timings[0] === null) throw new Error(errors[0] ?? "not timed");
        const ms = timings[0].ms, tflops = (2 * n ** 3) / (ms * 1e9);
        rows.push({ dtype, size: n, ms, tflops, ofPeak: ref ? tflops / ref : null });
      } catch (e) {
        rows.push({
          dtype,
          size: n,
          ms: null,
          tflops: null,
          ofPeak: null,
          error: (e as Error).message,
        });
      } finally {
        x?.dispose();
        y?.dispose();
        await rt.sync();
      }
      if (!a.json) {
        const r = rows[rows.length - 1];
        console.log(
          `${dtype.padEnd(9)} ${String(n).padStart(5)}  ` +
            (r.error
              ? `not run: ${r.error}`
              : `${r.ms!.toFixed(3).padStart(9)} ms  ${r.tflops!.toFixed(2).padStart(7)} TFLOP/s${
                r.ofPeak === null ? "" : `  ${(100 * r.ofPeak).toFixed(1)}% of the vector peak`
              }`),
        );
      }
    }
  }
  const head = {
    adapter: info.description,
    vendor: info.vendor,
    architecture: info.architecture,
    shaderF16: info.shaderF16,
    peak: peak && { ...peak, match: String(peak.match) },
  };
  if (a.json) console.log(JSON.stringify({ ...head, rows }));
  else {
    console.log(
      peak
        ? `peaks (${peak.name}, ${peak.source}): f32 ${peak.f32}, f16 ${peak.f16} TFLOP/s on ` +
          `the vector units; f16 tensor cores ${peak.tensorF16} (no WGSL instruction reaches them)`
        : `no published peak known for '${info.description}' (bench/peak.ts PEAKS)`,
    );
  }
}
