/**
 * How each dtype lies in GPU memory: moved to `gpu/layout.ts`, where the kernel program
 * builder (`gpu/program.ts`) generates one load and one store helper per layout. This file
 * re-exports it for the code that still imports it from here.
 *
 * @module
 */

export * from "../gpu/layout.ts";
