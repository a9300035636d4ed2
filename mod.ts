/**
 * ulp: a WebGPU tensor framework for low-precision training, where every number format is
 * a first-class dtype.
 *
 * @example
 * ```ts
 * import { dtype, finfo } from "./mod.ts";
 * const bf16 = dtype("bf16");
 * console.log(Array.from(bf16.decode(bf16.encode(new Float32Array([1 / 3]))))); // [0.333984375]
 * console.log(finfo("e4m3").max); // 448
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

import { ready } from "./gpu/device.ts";
// Ops record work synchronously, so the device is acquired here, once, at import. Without an
// adapter the import still succeeds (dtypes work on the host); the first tensor op then
// throws the DeviceError that says how to get one.
await ready().catch(() => {});
