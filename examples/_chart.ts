// A small hand-written SVG line chart for the examples (loss curves). No dependencies.

/** One line of the chart. */
export interface Series {
  name: string;
  points: [number, number][];
}

/** The first colours of every chart's lines, in order (the charts add their own after them). */
export const BASE_COLORS: readonly string[] = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
];

const COLORS = [...BASE_COLORS, "#7f7f7f"];

/** Escapes text for SVG/XML. */
export function esc(s: string): string {
  return s.replace(
    /[&<>"]/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]!),
  );
}

function ticks(lo: number, hi: number, n = 5): number[] {
  const step0 = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(step0 || 1));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) ?? step0;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) {
    out.push(Number(v.toPrecision(10)));
  }
  return out;
}

/** Several SVG charts (of the same width) stacked vertically into one SVG. */
export function stackCharts(charts: string[]): string {
  const size = (svg: string) => {
    const m = /<svg [^>]*width="(\d+)" height="(\d+)"/.exec(svg);
    return m ? [Number(m[1]), Number(m[2])] : [0, 0];
  };
  let y = 0, w = 0;
  const parts = charts.map((c) => {
    const [cw, ch] = size(c);
    const part = c.replace("<svg ", `<svg x="0" y="${y}" `);
    y += ch;
    w = Math.max(w, cw);
    return part;
  });
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${y}" viewBox="0 0 ${w} ${y}">`,
    ...parts,
    "</svg>",
  ].join("\n");
}

/** An SVG line chart of the series, with axes, ticks, labels and a legend. */
export function lineChart(
  series: Series[],
  opts: { title: string; xLabel: string; yLabel: string; width?: number; height?: number },
): string {
  const W = opts.width ?? 760, H = opts.height ?? 420;
  const m = { l: 64, r: 170, t: 40, b: 50 };
  const all = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  const pad = (y1 - y0) * 0.05 || 0.5;
  y0 -= pad;
  y1 += pad;
  const px = (x: number) => m.l + ((x - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
  const py = (y: number) => H - m.b - ((y - y0) / (y1 - y0 || 1)) * (H - m.t - m.b);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l}" y="22" font-size="15" font-weight="bold">${esc(opts.title)}</text>`,
  ];
  for (const t of ticks(y0, y1)) {
    parts.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${py(t)}" y2="${py(t)}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${m.l - 6}" y="${py(t) + 4}" text-anchor="end">${t}</text>`);
  }
  for (const t of ticks(x0, x1)) {
    parts.push(
      `<line x1="${px(t)}" x2="${px(t)}" y1="${H - m.b}" y2="${H - m.b + 5}" stroke="black"/>`,
    );
    parts.push(`<text x="${px(t)}" y="${H - m.b + 18}" text-anchor="middle">${t}</text>`);
  }
  parts.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}" stroke="black"/>`);
  parts.push(`<line x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${H - m.b}" stroke="black"/>`);
  parts.push(
    `<text x="${(m.l + W - m.r) / 2}" y="${H - 12}" text-anchor="middle">${
      esc(opts.xLabel)
    }</text>`,
  );
  parts.push(
    `<text x="16" y="${(m.t + H - m.b) / 2}" text-anchor="middle" transform="rotate(-90 16 ${
      (m.t + H - m.b) / 2
    })">${esc(opts.yLabel)}</text>`,
  );
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length];
    const d = s.points.filter(([, y]) => Number.isFinite(y)).map(([x, y], k) =>
      `${k ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`
    ).join("");
    parts.push(`<path d="${d}" fill="none" stroke="${c}" stroke-width="1.6"/>`);
    const ly = m.t + 10 + i * 20;
    parts.push(
      `<line x1="${W - m.r + 14}" x2="${
        W - m.r + 38
      }" y1="${ly}" y2="${ly}" stroke="${c}" stroke-width="3"/>`,
    );
    parts.push(`<text x="${W - m.r + 44}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n");
}
