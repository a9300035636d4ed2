// Shared by the tests of the row-kernel families (tensor/ops/reduce.ts `setRowFamily`): a family
// set for the length of one call.
import { setRowFamily } from "../tensor/ops/reduce.ts";

/** Runs `fn` with the row family set to `f`, restoring the previous one after, also on a throw. */
export async function withFamily<T>(f: "workgroup" | "lanes", fn: () => Promise<T>): Promise<T> {
  const before = setRowFamily(f);
  try {
    return await fn();
  } finally {
    setRowFamily(before);
  }
}
