/**
 * ulp: a WebGPU tensor framework for low-precision training, where every number format is
 * a first-class dtype.
 *
 * Importing ulp touches no GPU and prints nothing. Ops record GPU work synchronously, so a
 * script acquires the device once, asynchronously, with `await ready()` before its first
 * tensor (an op before that throws a `DeviceError` that says so). Dtypes and their codecs
 * work on the host without a device.
 *
 * @example
 * ```ts
 * import { dtype, finfo, ready, tensor } from "./mod.ts";
 * const bf16 = dtype("bf16"); // host-only: no device needed
 * console.log(Array.from(bf16.decode(bf16.encode(new Float32Array([1 / 3]))))); // [0.333984375]
 * console.log(finfo("e4m3").max); // 448
 * await ready(); // acquires the GPU (Mesa's software drivers are enough)
 * const x = tensor([[1, 2], [3, 4]], { dtype: "bf16" });
 * console.log(await x.matmul(x).sum().item()); // 54
 * ```
 * @module
 */

export * from "./errors.ts";
export * from "./dtypes/mod.ts";
export * from "./gpu/mod.ts";
export * from "./tensor/mod.ts";
export * from "./autograd/mod.ts";
export * from "./nn/mod.ts";
export * from "./optim/mod.ts";
