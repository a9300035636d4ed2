/**
 * Memory ownership: `tidy(fn)` frees every tensor made inside `fn` that `fn` does not return,
 * and `keep(t)` lets a tensor outlive its scope. Tensors also support `dispose()` and
 * `using` declarations (see `Tensor`).
 *
 * @module
 */

import { ValueError } from "../../errors.ts";

/** What the scope stack needs of a tensor. */
export interface Owned {
  /** Frees the storage (idempotent). */
  dispose(): void;
  /** Whether `dispose()` was called. */
  readonly disposed: boolean;
}

const scopes: Set<Owned>[] = [];
const kept = new WeakSet<Owned>();

/** Registers a new tensor with the innermost `tidy` scope, if any. @internal */
export function track(t: Owned): void {
  if (scopes.length > 0 && !kept.has(t)) scopes[scopes.length - 1].add(t);
}

/**
 * Marks a tensor so that no enclosing `tidy` frees it. Returns the tensor.
 *
 * @example
 * ```ts
 * import { keep, tidy, tensor } from "../../mod.ts";
 * let saved;
 * tidy(() => { saved = keep(tensor([1, 2]).mul(2)); });
 * console.log(Array.from(await saved!.toArray())); // [2, 4]
 * ```
 */
export function keep<T extends { dispose(): void; readonly disposed: boolean }>(t: T): T {
  kept.add(t);
  for (const s of scopes) s.delete(t);
  return t;
}

function collect(v: unknown, out: Set<Owned>, depth = 0): void {
  if (v === null || typeof v !== "object" || depth > 4) return;
  if ("dispose" in v && "disposed" in v) {
    out.add(v as Owned);
    return;
  }
  if (Array.isArray(v)) {
    for (const x of v) collect(x, out, depth + 1);
  } else if (v instanceof Map) {
    for (const x of v.values()) collect(x, out, depth + 1);
  } else if (Object.getPrototypeOf(v) === Object.prototype) {
    for (const x of Object.values(v)) collect(x, out, depth + 1);
  }
}

/**
 * Runs `fn` and frees every tensor created inside it except those it returns (a tensor, or
 * tensors in an array, Map or plain object) and those passed to `keep`. Returned tensors
 * belong to the enclosing scope. `fn` must be synchronous: do the reads after `tidy`.
 *
 * @example
 * ```ts
 * import { memory, tensor, tidy } from "../../mod.ts";
 * const x = tensor([1, 2, 3]);
 * const before = memory().liveBytes;
 * const y = tidy(() => x.mul(2).add(1).exp()); // x.mul(2) and .add(1) are freed
 * console.log(memory().liveBytes - before); // 12 (only y)
 * y.dispose();
 * x.dispose();
 * ```
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Owned>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    for (const t of scope) t.dispose();
    throw e;
  }
  scopes.pop();
  if (result instanceof Promise) {
    for (const t of scope) t.dispose();
    throw new ValueError(
      "tidy(fn): fn returned a Promise; tidy needs a synchronous function. Await reads " +
        "(toArray, item) after tidy returns.",
    );
  }
  const keepSet = new Set<Owned>();
  collect(result, keepSet);
  for (const t of scope) {
    if (keepSet.has(t)) {
      if (scopes.length > 0) scopes[scopes.length - 1].add(t);
    } else {
      t.dispose();
    }
  }
  return result;
}
