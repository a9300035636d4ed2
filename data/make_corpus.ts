// Makes data/corpus.txt, the default corpus of the examples: ulp's own TypeScript sources
// (dtypes, gpu, tensor, autograd, nn, optim; sorted by path) and README.md, joined by
// newlines, as the examples read the live tree before the snapshot existed. The snapshot is
// made once and committed, so that a run's numbers (and the README's) do not change with
// every commit. It was made from commit ec97ecd; rerunning it on a later tree gives another
// corpus (and other numbers in the README: see docs/readme_numbers.ts).
//
//   deno run --allow-read=. --allow-write=data data/make_corpus.ts [project root]
const FOLDERS = ["dtypes", "gpu", "tensor", "autograd", "nn", "optim"];
const root = (Deno.args[0] ?? new URL("..", import.meta.url).pathname).replace(/\/?$/, "/");
const files: string[] = [];
for (const folder of FOLDERS) {
  for await (const e of Deno.readDir(`${root}${folder}`)) {
    if (e.isFile && e.name.endsWith(".ts")) files.push(`${folder}/${e.name}`);
  }
}
files.sort();
files.push("README.md");
const parts = await Promise.all(files.map((f) => Deno.readTextFile(`${root}${f}`)));
const text = parts.join("\n");
const out = new URL("./corpus.txt", import.meta.url).pathname;
await Deno.writeTextFile(out, text);
console.log(
  `${out}: ${files.length} files, ${text.length} characters, ${new Set(text).size} distinct`,
);
