/**
 * The library's imports flow one way (docs/DESIGN.md section 1): read from the module graph
 * `deno info --json` gives, every import of a library file (code and type-only) must go to
 * its own layer or one below, no run-time import may close a cycle, nn/ and optim/ reach
 * tensor/ only through tensor/mod.ts, and every library file is reachable from mod.ts.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);

/** Layers from the bottom; a file's layer is the first whose prefix its path starts with. */
const LAYERS: readonly (readonly string[])[] = [
  ["errors.ts"],
  ["dtypes/"],
  ["gpu/"],
  ["autograd/"],
  ["tensor/core/"],
  ["tensor/kernels/"],
  ["tensor/ops/"],
  ["tensor/amp/"],
  ["tensor/mod.ts"],
  ["nn/"],
  ["optim/"],
  ["mod.ts"],
];

/**
 * Type-only imports allowed to point up: the Tensor class declares the methods the op
 * modules install on it (JSR forbids module augmentation, so the class merges their types),
 * and the deferred-kernel record fusion keeps on it.
 */
const TYPE_UP: Readonly<Record<string, readonly string[]>> = {
  "tensor/core/tensor.ts": [
    "tensor/kernels/fusion.ts",
    "tensor/ops/cast.ts",
    "tensor/ops/elementwise.ts",
    "tensor/ops/reduce.ts",
    "tensor/ops/matmul.ts",
    "tensor/ops/shape_ops.ts",
  ],
};

function layerOf(path: string): number {
  const i = LAYERS.findIndex((ps) => ps.some((p) => path === p || path.startsWith(p)));
  if (i < 0) throw new Error(`${path} belongs to no layer; add its folder to LAYERS`);
  return i;
}

interface Graph {
  code: Map<string, string[]>;
  type: Map<string, string[]>;
}

async function moduleGraph(): Promise<Graph> {
  const out = await new Deno.Command("deno", {
    args: ["info", "--json", "mod.ts"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    modules: {
      specifier: string;
      dependencies?: { code?: { specifier: string }; type?: { specifier: string } }[];
    }[];
  };
  const local = (s: string) => (s.startsWith(ROOT.href) ? s.slice(ROOT.href.length) : null);
  const g: Graph = { code: new Map(), type: new Map() };
  for (const m of info.modules) {
    const file = local(m.specifier);
    if (file === null) continue;
    const code: string[] = [], type: string[] = [];
    for (const d of m.dependencies ?? []) {
      const c = d.code ? local(d.code.specifier) : null;
      const t = d.type ? local(d.type.specifier) : null;
      if (c !== null) code.push(c);
      else if (t !== null) type.push(t);
    }
    g.code.set(file, code);
    g.type.set(file, type);
  }
  return g;
}

/** A cycle of run-time imports, as a list of files, or null. */
function findCycle(code: Map<string, string[]>): string[] | null {
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (f: string): string[] | null => {
    if (state.get(f) === "done") return null;
    if (state.get(f) === "open") return [...stack.slice(stack.indexOf(f)), f];
    state.set(f, "open");
    stack.push(f);
    for (const d of code.get(f) ?? []) {
      const c = visit(d);
      if (c) return c;
    }
    stack.pop();
    state.set(f, "done");
    return null;
  };
  for (const f of code.keys()) {
    const c = visit(f);
    if (c) return c;
  }
  return null;
}

Deno.test("library imports: no cycle among run-time imports", async () => {
  const g = await moduleGraph();
  assert.ok(g.code.size > 60, `the graph holds the library (${g.code.size} files)`);
  const cycle = findCycle(g.code);
  assert.equal(cycle, null, `import cycle: ${cycle?.join(" -> ")}`);
});

Deno.test("library imports: none runs up the layers; nn/ and optim/ use tensor/mod.ts", async () => {
  const g = await moduleGraph();
  const bad: string[] = [];
  for (const [kind, deps] of [["imports", g.code], ["type-imports", g.type]] as const) {
    for (const [file, ds] of deps) {
      for (const d of ds) {
        if (
          layerOf(d) > layerOf(file) && !(kind === "type-imports" && TYPE_UP[file]?.includes(d))
        ) {
          bad.push(`${file} ${kind} ${d} (a layer above it)`);
        }
        const outside = !file.startsWith("tensor/") && file !== "mod.ts";
        if (outside && d.startsWith("tensor/") && d !== "tensor/mod.ts") {
          bad.push(`${file} ${kind} ${d} (use tensor/mod.ts)`);
        }
      }
    }
  }
  assert.deepEqual(bad, []);
});

Deno.test("every library file is part of the library (reachable from mod.ts)", async () => {
  const g = await moduleGraph();
  const files: string[] = [];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(new URL(dir, ROOT))) {
      const p = `${dir}${e.name}`;
      if (e.isDirectory) await walk(`${p}/`);
      else if (p.endsWith(".ts")) files.push(p);
    }
  };
  for (const d of ["dtypes/", "gpu/", "autograd/", "tensor/", "nn/", "optim/"]) await walk(d);
  // a folder's mod.ts is an entry point of its own (`import ... from "ulp/nn/mod.ts"`)
  const unreached = files.filter((f) => !g.code.has(f) && !g.type.has(f) && !f.endsWith("/mod.ts"));
  assert.deepEqual(unreached, [], "files no import reaches: dead code");
});

Deno.test("the layer check itself: an upward import and a cycle are caught", () => {
  assert.ok(layerOf("tensor/ops/matmul.ts") > layerOf("tensor/core/tensor.ts"));
  assert.ok(layerOf("nn/gpt.ts") > layerOf("tensor/mod.ts"));
  assert.deepEqual(
    findCycle(new Map([["a.ts", ["b.ts"]], ["b.ts", ["c.ts"]], ["c.ts", ["a.ts"]]])),
    ["a.ts", "b.ts", "c.ts", "a.ts"],
  );
  assert.equal(findCycle(new Map([["a.ts", ["b.ts"]], ["b.ts", []]])), null);
});
