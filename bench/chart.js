// Hand-written SVG chart of a benchmark summary: two panels (messages per second,
// CPU per message), one small bar group per workload, one bar per peer. Each
// group has its own linear scale: 64 B and 64 KiB rates differ 20×, and on one
// shared scale the large-message bars would vanish.
//
//   node bench/chart.js bench/results/latest.json > bench/results/chart.svg
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const COLORS = ['#7f7f7f', '#009639', '#1f5fa8', '#22b8cf', '#8e6bbf', '#e8590c', '#f59f00', '#c2255c', '#5c940d'];

const PANELS = [
  { key: 'msgsPerSec', title: 'messages per second (churn: connections per second) — higher is better', format: short },
  { key: 'cpuSecondsPerMillion', title: 'proxy CPU µs per message (churn: per connection) — lower is better', format: (v) => short(v, 2) },
];

function short(v, digits = 0) {
  if (v === null || v === undefined) return 'n/a';
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e4) return `${Math.round(v / 1e3)}k`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  return v.toFixed(v >= 100 ? 0 : Math.max(digits, v >= 10 ? 1 : 2));
}

function esc(s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Renders `summary` (from bench/run.js) as an SVG document string. */
export function renderChart(summary, meta = {}) {
  const workloads = [...new Set(summary.map((s) => s.workload))].filter((w) =>
    /^echo-|^wss-|^churn$/.test(w),
  );
  const peers = [...new Set(summary.map((s) => s.peer))];
  const colW = Math.max(190, peers.length * 26 + 40);
  const cellH = 170;
  const left = 20;
  const top = 70;
  const panelGap = 30;
  const width = left * 2 + workloads.length * colW;
  const height = top + PANELS.length * cellH + (PANELS.length - 1) * panelGap + 12;
  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="11">`);
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  const subtitle = meta.machine
    ? `${meta.machine.cores} cores, ${meta.quick ? 'quick run, ' : ''}${meta.rounds} rounds, medians · ${meta.date?.slice(0, 10) ?? ''}`
    : '';
  out.push(`<text x="${left}" y="20" font-size="15" font-weight="bold">sluice vs. other WebSocket proxies</text>`);
  out.push(`<text x="${left}" y="36" fill="#555">${esc(subtitle)}</text>`);
  // Legend
  let lx = left;
  peers.forEach((p, i) => {
    out.push(`<rect x="${lx}" y="46" width="10" height="10" fill="${COLORS[i % COLORS.length]}"/>`);
    out.push(`<text x="${lx + 14}" y="55">${esc(p)}</text>`);
    lx += 22 + p.length * 6.5;
  });

  PANELS.forEach((panel, pi) => {
    const py = top + pi * (cellH + panelGap);
    out.push(`<text x="${left}" y="${py + 14}" font-size="12" font-weight="bold">${esc(panel.title)}</text>`);
    workloads.forEach((w, wi) => {
      const x0 = left + wi * colW;
      const base = py + cellH;
      const plotTop = py + 40;
      const cells = peers.map((p) => summary.find((s) => s.workload === w && s.peer === p));
      const vals = cells.map((c) => (c && c.validRounds > 0 ? c[panel.key] : null));
      const max = Math.max(0, ...vals.filter((v) => v !== null));
      out.push(`<text x="${x0 + colW / 2}" y="${py + 30}" text-anchor="middle" fill="#333">${esc(w)}</text>`);
      out.push(`<line x1="${x0 + 10}" y1="${base}" x2="${x0 + colW - 10}" y2="${base}" stroke="#999"/>`);
      const barW = Math.min(22, (colW - 30) / peers.length - 4);
      peers.forEach((p, i) => {
        const bx = x0 + 15 + i * (barW + 4);
        const v = vals[i];
        if (v === null || max <= 0) {
          out.push(`<text x="${bx + barW / 2}" y="${base - 4}" text-anchor="middle" font-size="8" fill="#aaa" transform="rotate(-90 ${bx + barW / 2} ${base - 4})" dx="14">n/a</text>`);
          return;
        }
        const h = Math.max(1, (v / max) * (base - plotTop));
        out.push(`<rect x="${bx}" y="${(base - h).toFixed(1)}" width="${barW}" height="${h.toFixed(1)}" fill="${COLORS[i % COLORS.length]}"><title>${esc(p)} ${esc(w)}: ${esc(panel.format(v))}</title></rect>`);
        out.push(`<text x="${bx + barW / 2}" y="${(base - h - 3).toFixed(1)}" text-anchor="middle" font-size="8">${esc(panel.format(v))}</text>`);
      });
    });
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node bench/chart.js <results.json> > chart.svg');
    process.exit(2);
  }
  const { summary, meta } = JSON.parse(fs.readFileSync(file, 'utf8'));
  process.stdout.write(renderChart(summary, meta));
}
