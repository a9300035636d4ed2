// Shared by the tests of staged reads: how many texel copies (`copyBufferToTexture`) a call
// records.

/** `fn()`'s value and the texel copies it recorded. */
export async function textureCopies<T>(
  fn: () => Promise<T>,
): Promise<{ value: T; copies: number }> {
  const enc = GPUCommandEncoder.prototype;
  const orig = enc.copyBufferToTexture;
  let copies = 0;
  enc.copyBufferToTexture = function (this: GPUCommandEncoder, ...a) {
    copies++;
    return orig.apply(this, a);
  };
  try {
    return { value: await fn(), copies };
  } finally {
    enc.copyBufferToTexture = orig;
  }
}
