// Shared by the tests of tensors larger than one storage binding: the runtime's binding limit
// lowered for the length of one call.
import { getRuntime, type Runtime } from "../gpu/mod.ts";

/**
 * Runs `fn` with the runtime's binding limit lowered to `bytes` (null: the adapter's own),
 * restoring the limit after, also when `fn` throws.
 */
export async function withBindingLimit<T>(
  bytes: number | null,
  fn: (rt: Runtime) => Promise<T> | T,
): Promise<T> {
  const rt = await getRuntime();
  const before = rt.maxBindingBytes;
  if (bytes !== null) rt.maxBindingBytes = bytes;
  try {
    return await fn(rt);
  } finally {
    rt.maxBindingBytes = before;
  }
}
