// Codec micro-benchmarks: native addon vs TypeScript twins vs ws vs the dispatcher, with
// memcpy (Buffer.copy of the same bytes) as the physical limit.
//
//   npx tsc -p tsconfig.json && node bench/codec.js [--quick] [--json] [--only=op,op]
//
// --json prints only a JSON array of { op, impl, size, opsPerSec, bytesPerSec }.
// Inputs are built outside the timed functions. Every case runs in a fresh process (so no
// case's JIT feedback or garbage leaks into another's: with shared call sites the
// dispatcher measured 4x slower than the very function it calls), and the cases of one
// (op, size) run back to back, interleaved over rounds, best round kept, so the
// implementations being compared see the same machine state. The table also shows each
// case's CPU time / wall time: well below 1 means the shared machine took the core away.
// `parse` figures are per call on an unmasked frame: a view, so its bytes/s is notional.
// parse-batch and parse-mixed figures are per frame; parse-mixed's `size` is the largest
// payload (sizes are uniform in 0..size), its bytes/s counts `size` per frame (notional).
//
// ws rows: ws 8's lib/ (Receiver, Sender.frame, buffer-util) with WS_NO_BUFFER_UTIL=1,
// i.e. ws as it runs without its optional native helper; the `bufferutil` row is that
// helper (ws's native mask) where it is installed.
import Benchmark from 'benchmark';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import os from 'node:os';
import path from 'node:path';
import * as codec from '../dist/codec/index.js';

const args = new Set(process.argv.slice(2));
const json = args.has('--json');
const quick = args.has('--quick');
const onlyArg = process.argv.find((a) => a.startsWith('--only='));
const only = onlyArg ? new Set(onlyArg.slice(7).split(',')) : null;
const caseArg = process.argv.find((a) => a.startsWith('--case='));

process.env.WS_NO_BUFFER_UTIL = '1';
const require = createRequire(import.meta.url);
const wsLib = path.join(path.dirname(require.resolve('ws')), 'lib');
const Receiver = require(path.join(wsLib, 'receiver.js'));
const Sender = require(path.join(wsLib, 'sender.js'));
const wsBufferUtil = require(path.join(wsLib, 'buffer-util.js'));
let bufferutil = null;
try {
  bufferutil = require('bufferutil');
} catch {
  // not installed: no bufferutil row
}

const sizesArg = process.argv.find((a) => a.startsWith('--sizes='));
/** Payload sizes; --sizes=32,64,128 narrows a run (used to place the dispatcher's cut-offs). */
const SIZES = sizesArg ? sizesArg.slice(8).split(',').map(Number) : [16, 125, 4096, 65536, 1048576];
/** Bytes per chunk for parse-batch (the typical socket read). */
const BATCH_CHUNK_BYTES = 65536;
const KEY = Buffer.from([0x37, 0xfa, 0x21, 0x3d]);

const impls = { ts: codec.tsCodec };
if (codec.nativeCodec) impls.native = codec.nativeCodec;

const options = quick
  ? { maxTime: 0.05, minTime: 0.01, minSamples: 2, initCount: 1 }
  : { maxTime: 0.4, minSamples: 5, initCount: 1 };

function payloadOf(size) {
  const b = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
}

/** Unmasked binary frames (the upstream leg receives from a server). */
function framesOf(size, count) {
  const enc = new codec.tsCodec.FrameEncoder(1, 1024);
  const payload = payloadOf(size);
  for (let i = 0; i < count; i++) enc.frame(2, payload);
  return enc.take();
}

/** A sink that keeps results observable so nothing is optimised away. */
let sink = 0;

/** Cases: [op, impl, size, fn, unitsPerCall (frames per call for parse-batch, else 1)]. */
function casesFor(size, wantOp = null, wantImpl = null) {
  const cases = [];
  const add = (op, impl, fn, units = 1) => {
    if ((!only || only.has(op)) && (wantOp === null || (op === wantOp && impl === wantImpl))) cases.push({ op, impl, size, fn, units });
  };

  // parse: one frame per call.
  {
    const chunk = framesOf(size, 1);
    const parsers = {};
    for (const [name, impl] of Object.entries(impls)) parsers[name] = new impl.FrameParser(0, 1 << 21, 1 << 21, 1024, false, 1024);
    parsers.dispatch = codec.createFrameParser({ maxFrameBytes: 1 << 21, maxMessageBytes: 1 << 21 });
    for (const [name, p] of Object.entries(parsers)) {
      const d = p.descriptors;
      add('parse', name, () => {
        const n = p.parse(chunk, 0);
        sink += n + d[2];
      });
    }
    const receiver = new Receiver({ isServer: false, maxPayload: 0 });
    receiver.on('message', (data) => { sink += data.length; });
    add('parse', 'ws', () => { receiver.write(chunk); });
  }

  // Batched parsing: every frame of a 64 KiB chunk per call, figures per frame, for each
  // parser and ws's Receiver.
  const addBatch = (op, chunk, count) => {
    const parsers = {};
    for (const [name, impl] of Object.entries(impls)) parsers[name] = new impl.FrameParser(0, 1 << 21, 1 << 21, 1024, false, 1024);
    parsers.dispatch = codec.createFrameParser({ maxFrameBytes: 1 << 21, maxMessageBytes: 1 << 21 });
    for (const [name, p] of Object.entries(parsers)) {
      const d = p.descriptors;
      const state = p.state;
      add(op, name, () => {
        let offset = 0;
        for (;;) {
          const n = p.parse(chunk, offset);
          // Read every descriptor, as the upstream leg does, into a local: adding each one
          // to the module-level `sink` stored a boxed double per frame (a HeapNumber
          // allocation in Node 20's V8), a cost of this loop rather than of the parser.
          let lengths = 0;
          for (let i = 0, w = 0; i < n; i++, w += 4) lengths += d[w + 2];
          sink += lengths;
          if (state[1] < 0) break;
          offset = state[1];
        }
      }, count);
    }
    const receiver = new Receiver({ isServer: false, maxPayload: 0 });
    receiver.on('message', (data) => { sink += data.length; });
    add(op, 'ws', () => { receiver.write(chunk); }, count);
  };

  // parse-batch: frames of `size` bytes.
  if (size <= 4096) {
    const count = Math.max(1, Math.floor(BATCH_CHUNK_BYTES / (size + (size < 126 ? 2 : 4))));
    addBatch('parse-batch', framesOf(size, count), count);
  }

  // parse-mixed: as parse-batch, but payload sizes drawn uniformly from 0..size (a fixed
  // seed), so consecutive headers differ: the parser's loop for identical headers never
  // applies, and this row shows the fast path's cost on uneven traffic.
  if (size <= 4096) {
    let seed = 12345;
    const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296);
    const enc = new codec.tsCodec.FrameEncoder(1, 1024);
    const payload = payloadOf(size);
    let count = 0;
    for (let bytes = 0; bytes < BATCH_CHUNK_BYTES - size - 4;) {
      const n = Math.floor(rnd() * (size + 1));
      enc.frame(2, payload.subarray(0, n));
      bytes += n + (n < 126 ? 2 : 4);
      count++;
    }
    addBatch('parse-mixed', enc.take(), count);
  }

  // encode: one masked frame (client role, the upstream leg) appended and taken per call.
  {
    const payload = payloadOf(size);
    const encoders = {};
    for (const [name, impl] of Object.entries(impls)) encoders[name] = new impl.FrameEncoder(0, 16384);
    encoders.dispatch = codec.createFrameEncoder('client');
    for (const [name, e] of Object.entries(encoders)) {
      add('encode', name, () => {
        e.frame(2, payload, true, false);
        sink += e.take().length;
      });
    }
    const opts = { fin: true, opcode: 2, mask: true, readOnly: true, rsv1: false };
    add('encode', 'ws', () => { sink += Sender.frame(payload, opts)[0].length; });
  }

  // mask: source → output; unmask: in place.
  {
    const source = payloadOf(size);
    const output = Buffer.allocUnsafe(size);
    const inPlace = payloadOf(size);
    const maskers = { ...Object.fromEntries(Object.entries(impls).map(([n, i]) => [n, i])), dispatch: codec, ws: wsBufferUtil };
    if (bufferutil) maskers.bufferutil = bufferutil;
    // Functions are looked up once, as an importer binds them (a call through the module
    // namespace object costs more than through a plain object, which favoured the rest).
    for (const [name, m] of Object.entries(maskers)) {
      const maskFn = m.mask;
      const unmaskFn = m.unmask;
      add('mask', name, () => { maskFn(source, KEY, output, 0, size); });
      add('unmask', name, () => { unmaskFn(inPlace, KEY); });
    }
    add('memcpy', 'memcpy', () => { sink += source.copy(output, 0, 0, size); });
  }

  // v2-decode: one envelope per call.
  {
    const message = codec.envelopeEncode(1, 4, payloadOf(size));
    const out = new Uint32Array(4);
    for (const [name, impl] of [...Object.entries(impls), ['dispatch', codec]]) {
      const decode = impl.envelopeDecode;
      add('v2-decode', name, () => { sink += decode(message, 1 << 21, out) + out[3]; });
    }
  }
  return cases;
}

/** Child: run one case and print { opsPerSec, cpu } as JSON. */
function runCase(op, impl, size) {
  const [c] = casesFor(size, op, impl);
  if (!c) throw new Error(`no case ${op} ${impl} ${size}`);
  const bench = new Benchmark(`${op} ${impl} ${size}`, c.fn, options);
  const wall0 = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  bench.run();
  const cpu = process.cpuUsage(cpu0);
  const wall = Number(process.hrtime.bigint() - wall0) / 1000;
  process.stdout.write(JSON.stringify({ opsPerSec: bench.hz * c.units, cpu: (cpu.user + cpu.system) / wall, rme: bench.stats.rme }) + '\n');
}

if (caseArg) {
  const [op, impl, size] = caseArg.slice(7).split(':');
  runCase(op, impl, Number(size));
  process.exit(0);
}

const self = fileURLToPath(import.meta.url);
const roundsArg = process.argv.find((a) => a.startsWith('--rounds='));
const rounds = roundsArg ? Number(roundsArg.slice(9)) : quick ? 1 : 3;
const rows = [];
const started = Date.now();
for (const size of SIZES) {
  // Which (op, impl) cases exist at this size: build them once here, but time them in children.
  const groups = new Map();
  for (const c of casesFor(size)) {
    if (!groups.has(c.op)) groups.set(c.op, []);
    groups.get(c.op).push(c.impl);
  }
  for (const [op, names] of groups) {
    const best = new Map();
    for (let round = 0; round < rounds; round++) {
      for (const impl of names) {
        const r = spawnSync(process.execPath, [self, `--case=${op}:${impl}:${size}`, ...(quick ? ['--quick'] : []), ...(roundsArg ? [roundsArg] : [])], { encoding: 'utf8', timeout: 120_000 });
        if (r.status !== 0) throw new Error(`case ${op} ${impl} ${size} failed: ${r.stderr}`);
        const got = JSON.parse(r.stdout.trim().split('\n').pop());
        const prev = best.get(impl);
        if (!prev || got.opsPerSec > prev.opsPerSec) best.set(impl, got);
        if (!json) process.stderr.write('.');
      }
    }
    for (const impl of names) {
      const g = best.get(impl);
      rows.push({ op, impl, size, opsPerSec: Math.round(g.opsPerSec), bytesPerSec: Math.round(g.opsPerSec * size), cpu: g.cpu, rme: g.rme });
    }
  }
}

if (json) {
  process.stdout.write(JSON.stringify(rows.map(({ op, impl, size, opsPerSec, bytesPerSec }) => ({ op, impl, size, opsPerSec, bytesPerSec }))) + '\n');
} else {
  process.stderr.write('\n');
  const cpu = os.cpus()[0]?.model ?? 'unknown cpu';
  console.log(`machine: ${cpu} x${os.cpus().length}, node ${process.version}, ${os.platform()} ${os.arch()}, load ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  console.log(`codec: ${codec.native ? `native (${codec.codecInfo.path})` : `TypeScript (${codec.codecInfo.reason})`}; ` +
    `bufferutil row: ${bufferutil ? 'yes' : 'not installed'}; ${quick ? 'quick run' : `full run, best of ${rounds}`} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  const fmt = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} G` : n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : `${n}`);
  const widths = [12, 11, 9, 11, 12, 8, 7, 6];
  const line = (cells) => cells.map((v, i) => String(v).padEnd(widths[i])).join('');
  console.log(line(['op', 'impl', 'size', 'ops/s', 'bytes/s', 'vs best', '±%', 'cpu']));
  for (const r of rows) {
    const peers = rows.filter((p) => p.op === r.op && p.size === r.size && p.impl !== 'dispatch');
    const best = Math.max(...peers.map((p) => p.opsPerSec));
    console.log(line([r.op, r.impl, r.size, fmt(r.opsPerSec), `${fmt(r.bytesPerSec)}B`, (r.opsPerSec / best).toFixed(2), r.rme.toFixed(1), r.cpu.toFixed(2)]));
  }
}
if (sink === 0.5) console.log('unreachable');
