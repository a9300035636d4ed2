/**
 * Benchmarks (issue 8): matmul in every storage dtype, fused kernels, optimizer steps and
 * a GPT training step, side by side with TensorFlow.js's WebGPU backend.
 *
 * Run: npx -y deno@2.9.6 task bench
 */
console.log("not yet: the benchmarks arrive with the speed work (issue 8); see BENCHMARKS.md");
