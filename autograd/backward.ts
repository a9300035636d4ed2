/**
 * Reverse-mode traversal of the recorded graph: topological order by an iterative depth-first
 * walk (a recursive one overflows the stack on long graphs), gradients pushed from the root to
 * the leaves, each intermediate gradient freed as soon as it has been passed on, and the
 * graph released afterwards (as PyTorch without `retain_graph`).
 *
 * Reference: micrograd (Karpathy), PyTorch autograd.
 *
 * @module
 */

import { ValueError } from "../errors.ts";
import { noGrad } from "./graph.ts";

/** What the traversal needs of a tensor. */
export interface BackwardTensor {
  readonly id: number;
  requiresGrad: boolean;
  readonly disposed: boolean;
  readonly shape: readonly number[];
  grad: BackwardTensor | null;
  /**
   * Set when a backward pass released this tensor's graph node (it had one): a second
   * backward through it raises, as PyTorch does.
   */
  graphReleased?: boolean;
  node: {
    readonly op: string;
    readonly inputs: readonly BackwardTensor[];
    readonly backward: (grad: never) => unknown[];
  } | null;
  dispose(): void;
}

/** How gradients are combined and stored; given by the tensor layer. */
export interface GradOps<T extends BackwardTensor> {
  /** `a + b` as a new tensor. */
  add(a: T, b: T): T;
  /** Stores `g` as (or adds it to) the leaf's `.grad`, in the leaf's dtype; takes ownership of `g`. */
  accumulate(leaf: T, g: T): void;
  /** A private copy of `a` (a buffer copy, not a kernel), for a leaf whose gradient is shared. */
  clone(a: T): T;
}

/** Options of `runBackward` (and `Tensor.backward`). */
export interface BackwardOptions {
  /**
   * Keep the graph after the pass so that `backward()` can run through it again (PyTorch's
   * `retain_graph`); default false: each node is released as soon as the pass leaves it.
   */
  retainGraph?: boolean;
}

/**
 * Runs the backward pass from `root` with the seed gradient `seed` (which it takes ownership
 * of), accumulating into `.grad` of every leaf that requires a gradient. Throws a
 * `ValueError` with PyTorch's advice (`retainGraph`) when the path to the leaves goes
 * through a graph that an earlier pass released.
 *
 * @example
 * ```ts
 * import { tensor } from "../mod.ts";
 * const x = tensor([1, 2, 3], { requiresGrad: true });
 * x.mul(x).sum().backward();
 * console.log(Array.from(await x.grad!.toArray())); // [2, 4, 6]
 * ```
 */
export function runBackward<T extends BackwardTensor>(
  root: T,
  seed: T,
  ops: GradOps<T>,
  opts: BackwardOptions = {},
): void {
  // topological order of the tensors that need a gradient
  const order: T[] = [];
  const visited = new Set<number>();
  const stack: [T, number][] = [[root, 0]];
  visited.add(root.id);
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const [t, k] = top;
    const inputs = (t.node?.inputs ?? []) as readonly T[];
    if (k < inputs.length) {
      top[1] = k + 1;
      const next = inputs[k];
      if (next.requiresGrad && !visited.has(next.id)) {
        visited.add(next.id);
        stack.push([next, 0]);
      }
    } else {
      stack.pop();
      order.push(t);
    }
  }
  // a pass through a released graph would treat its tensors as leaves: refuse before any work
  const gone = order.find((t) => t.node === null && t.graphReleased);
  if (gone !== undefined) {
    seed.dispose();
    throw new ValueError(
      `backward(): trying to backward through the graph a second time: the graph of the ` +
        `tensor of shape [${gone.shape.join(",")}] was released by an earlier backward() (as ` +
        `in PyTorch, intermediate results are freed after a pass). Pass { retainGraph: true } ` +
        `to the first backward() if you need to go through the graph again ` +
        `(loss.backward(undefined, { retainGraph: true })), or run the forward pass again`,
    );
  }
  // Gradients are shared, not copied: a rule may hand its incoming gradient `g` on unchanged
  // (add passes g to both inputs, a same-dtype cast passes it through), and the same tensor may
  // then wait in several slots. `holds` counts the slots (and the gradient being processed)
  // that refer to each gradient tensor; it is freed when the last one lets go. This saves one
  // copy kernel per add in the backward pass of every residual connection and bias.
  const holds = new Map<T, number>();
  const hold = (x: T) => holds.set(x, (holds.get(x) ?? 0) + 1);
  const release = (x: T) => {
    const n = (holds.get(x) ?? 1) - 1;
    if (n > 0) holds.set(x, n);
    else {
      holds.delete(x);
      x.dispose();
    }
  };
  const grads = new Map<number, T>([[root.id, seed]]);
  hold(seed);
  noGrad(() => {
    for (let i = order.length - 1; i >= 0; i--) {
      const t = order[i];
      const g = grads.get(t.id);
      grads.delete(t.id);
      if (g === undefined) continue;
      const node = t.node;
      if (t.disposed) {
        release(g);
        throw new ValueError(
          `backward(): a tensor of shape [${
            t.shape.join(",")
          }] on the path to the leaves was disposed ` +
            `before backward() reached it (for example by a tidy() around the forward pass alone); ` +
            `run the forward and backward passes inside the same tidy()`,
        );
      }
      if (node === null) {
        if (!t.requiresGrad) release(g);
        else if (holds.get(g) === 1) {
          holds.delete(g);
          ops.accumulate(t, g); // takes ownership
        } else {
          ops.accumulate(t, ops.clone(g)); // the leaf's .grad must not alias a pending gradient
          release(g);
        }
        continue;
      }
      const inputGrads = node.backward(g as never) as (T | null)[];
      node.inputs.forEach((input, j) => {
        const gi = inputGrads[j];
        if (!gi) return;
        hold(gi as T);
        if (!input.requiresGrad) {
          release(gi as T);
          return;
        }
        const prev = grads.get(input.id);
        if (prev === undefined) {
          grads.set(input.id, gi as T);
        } else {
          const sum = ops.add(prev, gi as T);
          hold(sum);
          grads.set(input.id, sum);
          release(prev);
          release(gi as T);
        }
      });
      release(g);
      if (!opts.retainGraph) {
        t.node = null; // release the graph (and the tensors its closures hold) as we go
        t.graphReleased = true;
      }
    }
  });
  for (const g of grads.values()) release(g);
}
