// Sanity figures for the native codec (not the benchmark suite: see bench/codec.js).
//   node native/bench-sanity.mjs
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const codec = createRequire(import.meta.url)(process.env.SLUICE_NATIVE_PATH ? path.resolve(process.env.SLUICE_NATIVE_PATH) : path.join(here, '..', 'build', 'Release', 'sluice.node'));

function time(label, iters, fn, unitsPerIter = 1, unit = 'op') {
  for (let i = 0; i < Math.min(iters, 1000); i++) fn();
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iters; i++) fn();
  const ns = Number(process.hrtime.bigint() - t0);
  const cpu = process.cpuUsage(cpu0);
  // CPU time is the figure to trust on a shared machine; wall time is shown beside it.
  const per = ((cpu.user + cpu.system) * 1000) / (iters * unitsPerIter);
  const wall = ns / (iters * unitsPerIter);
  console.log(`${label.padEnd(48)} ${per.toFixed(1).padStart(9)} ns/${unit} cpu  (${wall.toFixed(1)} wall)`);
  return per;
}

const src = Buffer.alloc(65536, 7);
const out = Buffer.alloc(65536);
const key = Buffer.from([1, 2, 3, 4]);
const copy = time('Buffer.copy 64 KiB', 20000, () => src.copy(out));
const mask = time('mask 64 KiB', 20000, () => codec.mask(src, key, out, 0, 65536));
time('unmask 64 KiB (in place)', 20000, () => codec.unmask(out, key));
console.log(`mask / copy time: ${(mask / copy).toFixed(2)} (${(65536 / mask).toFixed(1)} GB/s vs ${(65536 / copy).toFixed(1)} GB/s)`);
time('mask 16 B', 1e6, () => codec.mask(src, key, out, 0, 16));

for (const [role, label] of [[0, 'client parser, unmasked'], [1, 'server parser, masked']]) {
  const enc = new codec.FrameEncoder(role === 0 ? 1 : 0, 1 << 20);
  const payload = Buffer.alloc(125, 0x61);
  for (let i = 0; i < 1000; i++) enc.frame(2, payload);
  const chunk = enc.take();
  const p = new codec.FrameParser(role, 1 << 20, 1 << 20, 1024, false, 1024);
  time(`parse 1000 x 125 B frames, ${label}`, 2000, () => {
    if (p.parse(chunk, 0) !== 1000) throw new Error('parse');
  }, 1000, 'frame');
}

const enc = new codec.FrameEncoder(0, 1 << 20);
const big = Buffer.alloc(1 << 20, 1);
enc.frame(2, big);
const wire = enc.take();
const chunks = [];
for (let o = 0; o < wire.length; o += 16384) chunks.push(wire.subarray(o, o + 16384));
const p = new codec.FrameParser(1, 1 << 20, 1 << 20, 1024, false, 64);
time('1 MiB masked frame in 16 KiB chunks', 300, () => {
  let n = 0;
  for (const c of chunks) n += p.parse(c, 0);
  if (n !== 1) throw new Error('carry');
}, 1, 'frame');

const small = Buffer.alloc(100, 0x62);
const e2 = new codec.FrameEncoder(0, 4096);
time('encode 10 x 100 B client frames + take()', 100000, () => {
  for (let i = 0; i < 10; i++) e2.frame(2, small);
  e2.take();
}, 10, 'frame');
const json = Buffer.from(JSON.stringify({ a: 'x'.repeat(1000), b: [1, 2, 3], c: 'héllo' }));
time(`isUtf8 ${json.length} B mostly ASCII`, 200000, () => codec.isUtf8(json));
