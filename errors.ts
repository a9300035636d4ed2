/**
 * The error classes every part of ulp throws. Each message names the op, the shapes and
 * dtypes involved, and what to do about it.
 *
 * This file imports nothing, so every layer (dtypes/ and gpu/ included) may use it.
 *
 * @example
 * ```ts
 * import { DTypeError, UlpError } from "./errors.ts";
 * const e = new DTypeError("cast(): unknown dtype 'f13'");
 * console.log(e instanceof UlpError, e.name); // true "DTypeError"
 * ```
 * @module
 */

/**
 * Base class of all errors ulp throws on purpose.
 *
 * @example
 * ```ts
 * import { UlpError } from "./errors.ts";
 * try { throw new UlpError("boom"); } catch (e) { console.log(e instanceof UlpError); }
 * ```
 */
export class UlpError extends Error {
  /** Creates the error with a message that says what went wrong and what to do. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * Shapes that do not fit the op: mismatched matmul dimensions, non-broadcastable
 * operands, a reshape that changes the number of elements.
 *
 * @example
 * ```ts
 * import { ShapeError } from "./errors.ts";
 * const e = new ShapeError("matmul(): inner dimensions differ: [2,3] @ [4,5]");
 * console.log(e.name); // "ShapeError"
 * ```
 */
export class ShapeError extends UlpError {}

/**
 * A dtype that is unknown, or that the op cannot take (an integer where a float is
 * needed, two dtypes that cannot be combined).
 *
 * @example
 * ```ts
 * import { DTypeError } from "./errors.ts";
 * const e = new DTypeError("dtype('e9m2'): exponent bits must be 1..8");
 * console.log(e.name); // "DTypeError"
 * ```
 */
export class DTypeError extends UlpError {}

/**
 * No GPU adapter, a lost device, out-of-memory, or a validation error from the WebGPU
 * implementation.
 *
 * @example
 * ```ts
 * import { DeviceError } from "./errors.ts";
 * const e = new DeviceError("no WebGPU adapter");
 * console.log(e.name); // "DeviceError"
 * ```
 */
export class DeviceError extends UlpError {}

/**
 * A file (safetensors, checkpoint) whose contents are malformed or unsafe to load.
 *
 * @example
 * ```ts
 * import { FormatError } from "./errors.ts";
 * const e = new FormatError("safetensors header length 2^40 exceeds the file size");
 * console.log(e.name); // "FormatError"
 * ```
 */
export class FormatError extends UlpError {}

/**
 * A value outside what an option or argument accepts (a negative size, a learning rate
 * that is not finite, a tensor used after `dispose()`).
 *
 * @example
 * ```ts
 * import { ValueError } from "./errors.ts";
 * const e = new ValueError("encode(): seed must be an integer, got 0.5");
 * console.log(e.name); // "ValueError"
 * ```
 */
export class ValueError extends UlpError {}
