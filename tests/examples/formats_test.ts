/**
 * Tests of examples/formats.ts: its tables against values computed independently (the
 * formats' numbers from their bit fields, IEEE rounding by Math.fround and Math.f16round, a
 * bit-level bf16 RNE), its command line, and its SVG chart.
 */

import assert from "node:assert/strict";
import { DTYPE_FORMS, finfo } from "../../dtypes/mod.ts";
import {
  DEFAULT_FORMATS,
  formatSvg,
  type FormatTable,
  formatTable,
  LOSS_NOTE,
  main,
  type MainIO,
  renderTable,
} from "../../examples/formats.ts";

/** Every positive finite value of a small format, from its bit fields (no codec involved). */
function positiveValues(
  e: number,
  m: number,
  style: "ieee" | "fn" | "none",
): number[] {
  const bias = 2 ** (e - 1) - 1;
  const out: number[] = [];
  for (let E = 0; E < 2 ** e; E++) {
    for (let M = 0; M < 2 ** m; M++) {
      if (E === 2 ** e - 1 && style === "ieee") continue; // Inf and NaN
      if (E === 2 ** e - 1 && M === 2 ** m - 1 && style === "fn") continue; // NaN
      if (E === 0 && M === 0) continue;
      out.push(E === 0 ? (M / 2 ** m) * 2 ** (1 - bias) : (1 + M / 2 ** m) * 2 ** (E - bias));
    }
  }
  return out.sort((a, b) => a - b);
}

/** Binade k -> [gaps to the next value of every value in it, count], by brute force. */
function bruteBinades(values: number[]): Map<number, { gaps: Set<number>; count: number }> {
  const out = new Map<number, { gaps: Set<number>; count: number }>();
  for (let i = 0; i < values.length; i++) {
    const k = Math.floor(Math.log2(values[i]));
    const b = out.get(k) ?? { gaps: new Set<number>(), count: 0 };
    b.count++;
    // The top value has no next one: the gap below it belongs to the same binade.
    b.gaps.add(i + 1 < values.length ? values[i + 1] - values[i] : values[i] - values[i - 1]);
    out.set(k, b);
  }
  return out;
}

Deno.test("formatTable('e4m3'): max 448, spacing 32 in [256, 448], subnormal spacing 2^-9", () => {
  const t = formatTable("e4m3");
  assert.deepEqual(t.problems, []);
  assert.equal(t.info.max, 448);
  assert.equal(t.info.hasInf, false);
  assert.equal(t.info.hasNaN, true);
  assert.equal(t.binades.length, 18); // 2^-9 .. 2^8
  const top = t.binades.at(-1)!;
  assert.deepEqual(
    [top.k, top.lo, top.hi, top.hiIncluded, top.spacing, top.count],
    [8, 256, 448, true, 32, 7], // 256, 288, ..., 448
  );
  const first = t.binades[0];
  assert.deepEqual([first.k, first.lo, first.subnormal, first.spacing], [
    -9,
    2 ** -9,
    true,
    2 ** -9,
  ]);
  for (const b of t.binades.filter((b) => b.subnormal)) assert.equal(b.spacing, 2 ** -9);
  assert.deepEqual(t.binades.filter((b) => b.subnormal).map((b) => b.k), [-9, -8, -7]);
  const one = t.binades.find((b) => b.k === 0)!;
  assert.deepEqual([one.lo, one.hi, one.hiIncluded, one.spacing, one.count], [
    1,
    2,
    false,
    0.125,
    8,
  ]);
  assert.equal(t.lossRatioLog2, 4);
  assert.deepEqual(t.nanCodes, [0x7f, 0x7f]);
  assert.equal(t.infCode, null);
});

Deno.test("the binades of every small format match a brute-force enumeration of its values", () => {
  const formats: [string, number, number, "ieee" | "fn" | "none"][] = [
    ["e4m3", 4, 3, "fn"],
    ["e5m2", 5, 2, "ieee"],
    ["f16", 5, 10, "ieee"],
    ["bf16", 8, 7, "ieee"],
    ["e8m3", 8, 3, "ieee"],
    ["e5m6", 5, 6, "ieee"],
    ["e3m2fn", 3, 2, "none"],
    ["e2m1fn", 2, 1, "none"],
    ["e6m1fn", 6, 1, "fn"], // the top binade holds a single value
  ];
  for (const [name, e, m, style] of formats) {
    const t = formatTable(name);
    assert.deepEqual(t.problems, [], name);
    const values = positiveValues(e, m, style);
    const brute = bruteBinades(values);
    assert.equal(t.info.max, values.at(-1), `${name} max`);
    assert.equal(t.info.smallestSubnormal, values[0], `${name} smallest subnormal`);
    assert.deepEqual(t.binades.map((b) => b.k), [...brute.keys()], `${name} binades`);
    for (const b of t.binades) {
      const want = brute.get(b.k)!;
      assert.equal(want.gaps.size, 1, `${name} 2^${b.k}: one spacing per binade`);
      // A binade holding a single value (e6m1fn's top) has no gap of its own: its spacing is
      // the grid's, 2^(k-m).
      const gap = want.count > 1 || b.k === t.binades[0].k ? [...want.gaps][0] : 2 ** (b.k - m);
      assert.equal(b.spacing, gap, `${name} 2^${b.k} spacing`);
      assert.equal(b.count, want.count, `${name} 2^${b.k} count`);
      assert.equal(b.lo, 2 ** b.k);
      const inBinade = values.filter((v) => v >= 2 ** b.k && v < 2 ** (b.k + 1));
      if (b.hiIncluded) assert.equal(b.hi, inBinade.at(-1), `${name} top binade ends at max`);
      else assert.equal(b.hi, 2 ** (b.k + 1));
      // Loss ratio at the binade's lower bound: lo / (spacing / 2).
      assert.equal(2 ** b.lossRatioLog2, (2 * b.lo) / b.spacing, `${name} 2^${b.k} ratio`);
    }
  }
});

Deno.test("the loss ratio is 2^(m+1): bf16 2^8, f16 2^11, f32 2^24, e4m3 2^4, e5m2 2^3", () => {
  const want: Record<string, number> = { bf16: 8, f16: 11, f32: 24, e4m3: 4, e5m2: 3, e8m3: 4 };
  for (const [name, log2] of Object.entries(want)) {
    const t = formatTable(name);
    assert.equal(t.lossRatioLog2, log2, name);
    assert.equal(2 ** t.lossRatioLog2, 2 / finfo(name).eps, `${name}: 2/eps`);
    for (const b of t.binades.filter((b) => !b.subnormal)) assert.equal(b.lossRatioLog2, log2);
    // Subnormal binades: 2^(k+1) / smallest subnormal, below 2^(m+1).
    for (const b of t.binades.filter((b) => b.subnormal)) {
      assert.equal(2 ** b.lossRatioLog2, 2 ** (b.k + 1) / t.info.smallestSubnormal);
      assert.ok(b.lossRatioLog2 < log2);
    }
  }
  assert.match(LOSS_NOTE, /bf16 \(m = 7\) above 2\^8/);
  assert.match(LOSS_NOTE, /f16 \(m = 10\) above 2\^11/);
});

Deno.test("an update is lost exactly when |x|/|u| > 2^(m+1) at the binade's lower bound (IEEE rounding)", () => {
  // Independent roundings: Math.fround (f32), Math.f16round (f16), and bf16 RNE on the bits.
  const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
  const bf16round = (x: number) => {
    f32[0] = x; // x + u is exact in f32 in the cases below
    const b = u32[0];
    u32[0] = (((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) << 16) >>> 0;
    return f32[0];
  };
  const rounders: [string, (x: number) => number, number][] = [
    ["bf16", bf16round, 8],
    ["f16", Math.f16round, 11],
    ["f32", Math.fround, 24],
  ];
  for (const [name, round, r] of rounders) {
    for (const k of [-10, -1, 0, 3, 10]) {
      const x = 2 ** k;
      for (const sign of [1, -1]) {
        // x + u with u just under x / 2^r is lost; just over is kept (for f32 the sum is
        // exact in double and rounded once by Math.fround).
        const under = (x / 2 ** r) * (1 - 2 ** -6), over = (x / 2 ** r) * (1 + 2 ** -6);
        assert.equal(round(sign * x + sign * under), sign * x, `${name} 2^${k} under`);
        assert.notEqual(round(sign * x + sign * over), sign * x, `${name} 2^${k} over`);
      }
      // At exactly 2^r, a tie: x = 2^k has an even mantissa, so the update is lost.
      assert.equal(round(x + x / 2 ** r), x, `${name} tie`);
      // Towards zero from 2^k the spacing below is half as large: lost only above 2^(r+1).
      assert.notEqual(round(x - (x / 2 ** (r + 1)) * (1 + 2 ** -6)), x, `${name} down`);
      assert.equal(round(x - (x / 2 ** (r + 1)) * (1 - 2 ** -6)), x, `${name} down, lost`);
    }
    assert.equal(formatTable(name).lossRatioLog2, r);
  }
});

Deno.test("f32: 277 binades; a compact table by default, every binade with all", () => {
  const t = formatTable("f32");
  assert.deepEqual(t.problems, []);
  assert.equal(t.binades.length, 277); // 2^-149 .. 2^127
  assert.equal(t.binades[0].spacing, 2 ** -149);
  assert.equal(t.binades.at(-1)!.spacing, 2 ** 104);
  assert.equal(t.binades.at(-1)!.hi, finfo("f32").max);
  const rows = (s: string) => s.split("\n").filter((l) => /^\s+2\^-?\d+\s/.test(l)).length;
  const compact = renderTable(t);
  assert.ok(rows(compact) < 30, `${rows(compact)} rows`);
  assert.match(compact, /⋮/);
  assert.match(compact, /--all shows every binade/);
  assert.equal(rows(renderTable(t, { all: true })), 277);
  assert.ok(rows(renderTable(t, { every: 8 })) > rows(compact));
  // A small format prints every binade without being asked.
  assert.equal(rows(renderTable(formatTable("e4m3"))), 18);
});

Deno.test("formatTable() rejects unknown names and non-float dtypes", () => {
  assert.throws(() => formatTable("f13"), /unknown dtype/);
  assert.throws(() => formatTable("i32"), /integer dtype, not a plain float format/);
  assert.throws(() => formatTable("bf16x2"), /not a plain float format/);
  assert.equal(formatTable("e4m3fn").name, "e4m3");
  assert.equal(formatTable("e5m10").name, "f16");
});

function capture(): MainIO & { out: string[]; err: string[]; files: Map<string, string> } {
  const out: string[] = [], err: string[] = [], files = new Map<string, string>();
  return {
    out,
    err,
    files,
    log: (s) => out.push(s),
    error: (s) => err.push(s),
    writeTextFile: (p, s) => void files.set(p, s),
  };
}

Deno.test("main(): the default set, named formats, --help and bad arguments", () => {
  let io = capture();
  assert.equal(main([], io), 0);
  const text = io.out.join("\n");
  for (const name of DEFAULT_FORMATS) assert.match(text, new RegExp(`^${name}: `, "m"));
  assert.deepEqual(DEFAULT_FORMATS, ["f32", "bf16", "f16", "e5m2", "e4m3", "e3m2fn", "e2m1fn"]);
  assert.deepEqual(io.err, []);

  io = capture();
  assert.equal(main(["e4m3", "bf16", "e8m3"], io), 0);
  const summary = io.out[0].split("\n");
  assert.equal(summary.length, 4);
  assert.match(
    summary[1],
    /^e4m3\s+8\s+1\/4\/3\s+7\s+448\s+2\^-6\s+2\^-9\s+2\^-3\s+no\s+yes\s+2\^4$/,
  );
  assert.match(summary[2], /^bf16\s+16\s.*\s2\^8$/);
  assert.match(io.out.join("\n"), /2\^8\s+\[256, 448\]\s+2\^5\s+= 32\s+7\s+2\^4/);

  io = capture();
  assert.equal(main(["--help"], io), 0);
  assert.match(io.out[0], /^Usage: deno run/);
  assert.match(io.out[0], /--svg <path>/);

  for (const bad of [["e4m3", "f13"], ["i32"], ["e9m2"], ["--nope"], ["--every", "0"]]) {
    io = capture();
    assert.equal(main(bad, io), 2, bad.join(" "));
    assert.equal(io.err.length, 1);
    assert.equal(io.err[0].split("\n").length, 1, "one line");
    assert.deepEqual(io.out, []);
  }
  io = capture();
  main(["bf16", "f13"], io);
  assert.ok(io.err[0].startsWith("formats: bad dtype 'f13': unknown dtype; valid forms: "));
  assert.ok(io.err[0].endsWith(DTYPE_FORMS));
});

/** Checks that the SVG's tags nest properly. */
function assertWellFormed(svg: string): void {
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
    const [, close, tag, selfClose] = m;
    if (selfClose) continue;
    if (close) assert.equal(stack.pop(), tag, `</${tag}> closes the open tag`);
    else stack.push(tag);
  }
  assert.deepEqual(stack, []);
  assert.doesNotMatch(svg.replace(/&(amp|lt|gt|quot);/g, ""), /&/);
}

Deno.test("--svg writes a chart: one step line per format, legend, power-of-two axis labels", () => {
  const io = capture();
  assert.equal(main(["e4m3", "bf16", "--svg", "chart.svg"], io), 0);
  const svg = io.files.get("chart.svg")!;
  assert.ok(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'));
  assertWellFormed(svg);
  // Two panels (full range and a zoom on e4m3), each with one line per format.
  assert.equal(svg.match(/<path /g)!.length, 4);
  assert.match(svg, /zoom on e4m3/);
  assert.match(svg, /<tspan font-weight="bold">e4m3<\/tspan> max 448/);
  assert.match(svg, /<tspan font-weight="bold">bf16<\/tspan>/);
  assert.match(svg, /2<tspan dy="-0.55em" font-size="75%">-128<\/tspan>/);
  assert.match(io.out.at(-1)!, /wrote chart\.svg/);

  // Formats of similar range: one panel.
  const one = formatSvg([formatTable("e4m3"), formatTable("e5m2")]);
  assertWellFormed(one);
  assert.equal(one.match(/<path /g)!.length, 2);
  assert.doesNotMatch(one, /zoom on/);

  // The e4m3 line: flat at 2^-9 from 2^-9 to 2^-6, then one step per binade up to 448.
  const t: FormatTable = formatTable("e4m3");
  const d = one.match(/<path d="([^"]+)"/)![1];
  assert.equal(d.match(/H/g)!.length, t.binades.length);
});

Deno.test("a failed write gives exit code 1 and a message", () => {
  const io = capture();
  io.writeTextFile = () => {
    throw new Error("denied");
  };
  assert.equal(main(["e4m3", "--svg", "x.svg"], io), 1);
  assert.match(io.err[0], /cannot write x\.svg: denied/);
});

Deno.test("--svg without write permission fails before any work; mistyped flags get a suggestion", () => {
  let io = { ...capture(), canWrite: () => false };
  assert.equal(main(["e4m3", "--svg", "out/chart.svg"], io), 2);
  assert.deepEqual(io.out, [], "no table printed before the permission error");
  assert.deepEqual(io.err, [
    "formats: no permission to write the chart (--svg) 'out/chart.svg'; run deno with " +
    "--allow-write=out/chart.svg (or a folder that contains it)",
  ]);
  assert.equal(io.files.size, 0);
  io = { ...capture(), canWrite: () => true };
  assert.equal(main(["--al", "e4m3"], io), 2);
  assert.deepEqual(io.err, ["formats: Unknown option '--al'; did you mean --all?; see --help"]);
});
