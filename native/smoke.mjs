// Quick self-check of the native codec, independent of the TypeScript sources: used by
// scripts/test-asan.sh (under ASan/UBSan) and by hand after a build.
//   node native/smoke.mjs            (SLUICE_NATIVE_PATH=... selects another build)
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const addonPath = process.env.SLUICE_NATIVE_PATH ? path.resolve(process.env.SLUICE_NATIVE_PATH) : path.join(here, '..', 'build', 'Release', 'sluice.node');
const require = createRequire(import.meta.url);
const codec = require(addonPath);

const CLIENT = 0, SERVER = 1, MiB = 1 << 20;
// SLUICE_SMOKE_SCALE (0..1, default 1): a share of the randomised and exhaustive loops,
// for slow runs (scripts/cross-arm64.sh under qemu, ~50x slower than the host).
const SCALE = Math.min(1, Math.max(0.01, Number(process.env.SLUICE_SMOKE_SCALE ?? '1') || 1));
const FIN = 1 << 4, RSV1 = 1 << 5, MASKED = 1 << 8, CARRY = 1 << 9;

// Frames of a parse run, payloads copied out, CARRY bit dropped so runs with different
// chunkings compare equal.
function parseAll(parser, chunks) {
  const frames = [];
  let err = 0;
  for (const chunk of chunks) {
    let offset = 0;
    for (;;) {
      const rc = parser.parse(chunk, offset);
      const n = rc >= 0 ? rc : parser.state[0];
      for (let i = 0; i < n; i++) {
        const info = parser.descriptors[i * 4], off = parser.descriptors[i * 4 + 1], len = parser.descriptors[i * 4 + 2];
        const src = info & CARRY ? parser.carry : chunk;
        if (info & CARRY) assert.equal(i, 0, 'only the first descriptor carries');
        assert.ok(off + len <= src.length, 'descriptor in bounds');
        frames.push({ info: info & ~CARRY, key: parser.descriptors[i * 4 + 3], payload: Buffer.from(src.subarray(off, off + len)) });
      }
      if (rc < 0) { err = -rc; break; }
      if (parser.state[1] < 0) break;
      offset = parser.state[1];
    }
    if (err) break;
  }
  return { frames, err, pending: parser.pendingBytes };
}

function encode(role, frames) {
  const enc = new codec.FrameEncoder(role, 64);
  for (const [op, payload, fin = true, rsv1 = false] of frames) enc.frame(op, payload, fin, rsv1);
  return enc.take();
}

function cut(buf, sizes) {
  const out = [];
  let p = 0, i = 0;
  while (p < buf.length) {
    const n = Math.max(1, sizes[i++ % sizes.length]);
    out.push(Buffer.from(buf.subarray(p, p + n)));
    p += n;
  }
  return out;
}

function testRoundTrip() {
  const sizes = [0, 1, 5, 125, 126, 127, 65535, 65536, 70000, MiB];
  for (const role of [CLIENT, SERVER]) {
    const payloads = sizes.map((n) => randomBytes(n));
    const wire = encode(role, payloads.map((p) => [2, p]));
    const parserRole = role === CLIENT ? SERVER : CLIENT;
    const mk = () => new codec.FrameParser(parserRole, MiB, MiB, 16, false, 4);
    const whole = parseAll(mk(), [Buffer.from(wire)]);
    assert.equal(whole.err, 0);
    assert.equal(whole.frames.length, sizes.length);
    whole.frames.forEach((f, i) => {
      assert.ok(f.payload.equals(payloads[i]), `payload ${sizes[i]}`);
      assert.equal(f.info & 0xf, 2);
      assert.ok(f.info & FIN);
      assert.equal(Boolean(f.info & MASKED), role === CLIENT);
    });
    // Scaled down, the byte-sized cuts skip the 1 MiB frame (the 16 KiB cuts still carry it).
    // The last frame is the 1 MiB one: its header is 10 bytes, 14 with a mask key.
    const small = wire.subarray(0, wire.length - MiB - (role === CLIENT ? 14 : 10));
    const wholeSmall = { ...whole, frames: whole.frames.slice(0, -1) };
    for (const chunking of [[1], [2, 3], [7], [16384], [13, 16384, 1]]) {
      const short = SCALE < 1 && chunking[0] < 16;
      const split = parseAll(mk(), cut(short ? small : wire, chunking));
      assert.deepEqual(split, short ? wholeSmall : whole, `chunking ${chunking}`);
    }
  }
}

function testSplitsEverywhere() {
  const wire = encode(CLIENT, [[1, Buffer.from('hello')], [9, Buffer.from('p')], [2, randomBytes(300), false], [0, randomBytes(3), false],
    [10, Buffer.alloc(0)], [0, randomBytes(70000), true]]);
  const mk = () => new codec.FrameParser(SERVER, MiB, MiB, 4, false, 2);
  const whole = parseAll(mk(), [Buffer.from(wire)]);
  assert.equal(whole.err, 0);
  assert.equal(whole.frames.length, 6);
  for (let a = 1; a < 400; a += Math.max(3, Math.round(3 / SCALE))) {
    for (const b of [a + 1, a + 9, a + 200, wire.length - 5]) {
      if (b <= a || b >= wire.length) continue;
      const chunks = [wire.subarray(0, a), wire.subarray(a, b), wire.subarray(b)].map((c) => Buffer.from(c));
      assert.deepEqual(parseAll(mk(), chunks), whole);
    }
  }
}

function frameBytes(b0, payloadLen, maskKey, ext) {
  const h = [b0];
  const m = maskKey ? 0x80 : 0;
  if (ext === 64 || payloadLen > 0xffff) {
    h.push(m | 127);
    const hi = Math.floor(payloadLen / 2 ** 32);
    h.push(hi >>> 24, (hi >>> 16) & 255, (hi >>> 8) & 255, hi & 255, payloadLen >>> 24, (payloadLen >>> 16) & 255, (payloadLen >>> 8) & 255, payloadLen & 255);
  } else if (ext === 16 || payloadLen > 125) h.push(m | 126, payloadLen >> 8, payloadLen & 255);
  else h.push(m | payloadLen);
  if (maskKey) h.push(...maskKey);
  return Buffer.from(h);
}

function testErrors() {
  const key = [1, 2, 3, 4];
  const client = () => new codec.FrameParser(CLIENT, 1000, 2000, 3, false, 8);
  const server = () => new codec.FrameParser(SERVER, 1000, 2000, 3, false, 8);
  const cases = [
    [client, frameBytes(0x83, 0), 1],
    [client, frameBytes(0x89, 126, null, 16), 2],
    [client, frameBytes(0x09, 0), 3],
    [client, frameBytes(0xc1, 0), 4],
    [client, frameBytes(0xa1, 0), 4],
    [server, frameBytes(0x81, 0), 5],
    [client, frameBytes(0x81, 0, key), 6],
    [client, Buffer.from([0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]), 7],
    [client, frameBytes(0x80, 0), 8],
    [client, Buffer.concat([frameBytes(0x01, 0), frameBytes(0x81, 0)]), 9],
    [client, frameBytes(0x82, 1001), 10],
    [client, Buffer.concat([frameBytes(0x02, 1000), Buffer.alloc(1000), frameBytes(0x00, 1000), Buffer.alloc(1000), frameBytes(0x80, 1)]), 11],
    [client, Buffer.concat([frameBytes(0x02, 0), frameBytes(0x00, 0), frameBytes(0x00, 0), frameBytes(0x80, 0)]), 12],
  ];
  for (const [mk, bytes, errno] of cases) {
    const p = mk();
    const rc = p.parse(bytes);
    assert.equal(rc, -errno, `errno ${errno} for ${bytes.subarray(0, 4).toString('hex')}`);
    assert.equal(p.state[2], errno);
    assert.equal(p.parse(Buffer.from([0x82, 0])), -errno, 'dead after error');
    p.reset();
    assert.equal(p.parse(mk === client ? frameBytes(0x82, 0) : frameBytes(0x82, 0, key)), 1, 'alive after reset');
  }
  // Frames before the bad one are described; errorOffset points at the bad header.
  const p = client();
  const rc = p.parse(Buffer.concat([frameBytes(0x82, 1), Buffer.from([7]), frameBytes(0x83, 0)]));
  assert.equal(rc, -1);
  assert.deepEqual([...p.state], [1, -1, 1, 3]);
  // Limits refuse a frame from its header alone.
  const q = client();
  assert.equal(q.parse(frameBytes(0x82, 5000)), -10);
  // Interleaved control frames inside a fragmented message, RSV1 on the first frame only.
  const r = new codec.FrameParser(CLIENT, 100, 100, 3, true, 8);
  const ok = Buffer.concat([frameBytes(0x41, 1), Buffer.from('a'), frameBytes(0x89, 0), frameBytes(0x80, 1), Buffer.from('b')]);
  assert.equal(r.parse(ok), 3);
  assert.equal(r.descriptors[0] & RSV1, RSV1);
  assert.equal(r.parse(Buffer.concat([frameBytes(0x01, 0), frameBytes(0xc0, 0)])), -4);
}

function testCarryChunks() {
  // A 1 MiB masked frame in 16 KiB chunks: one carried descriptor, payload intact.
  const payload = randomBytes(MiB);
  const wire = encode(CLIENT, [[2, payload]]);
  const p = new codec.FrameParser(SERVER, MiB, MiB, 4, false, 8);
  const before = codec.poolStats();
  const t0 = process.hrtime.bigint();
  let got = null;
  for (let o = 0; o < wire.length; o += 16384) {
    const rc = p.parse(wire.subarray(o, o + 16384));
    assert.ok(rc >= 0);
    if (rc === 1) {
      assert.ok(p.descriptors[0] & CARRY);
      got = Buffer.from(p.carry.subarray(p.descriptors[1], p.descriptors[1] + p.descriptors[2]));
    } else assert.equal(p.pendingBytes, Math.min(o + 16384, wire.length));
  }
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  assert.ok(got && got.equals(payload));
  assert.equal(p.pendingBytes, 0);
  p.parse(Buffer.alloc(0));
  const after = codec.poolStats();
  assert.equal(after.inUse, before.inUse, 'carry returned to the pool');
  return ms;
}

function testMask() {
  const ref = (src, key, n, phase = 0) => { const o = Buffer.alloc(n); for (let i = 0; i < n; i++) o[i] = src[i] ^ key[(i + phase) & 3]; return o; };
  const key = randomBytes(4);
  const big = randomBytes(5000);
  for (const n of [0, 1, 3, 4, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 1000, 4097]) {
    for (const so of [0, 1, 3, 7]) {
      const src = big.subarray(so, so + n);
      const out = Buffer.alloc(n + 16);
      codec.mask(src, key, out, 5, n);
      assert.ok(out.subarray(5, 5 + n).equals(ref(src, key, n)), `mask ${n}/${so}`);
      const inplace = Buffer.from(src);
      codec.unmask(inplace, key);
      assert.ok(inplace.equals(ref(src, key, n)), `unmask ${n}`);
    }
  }
  assert.throws(() => codec.mask(big, key, Buffer.alloc(10), 5, 6), RangeError);
  assert.throws(() => codec.unmask(big, Buffer.alloc(3)), RangeError);
  assert.throws(() => codec.unmask('x', key), TypeError);
}

function testUtf8() {
  const dec = new TextDecoder('utf-8', { fatal: true });
  const refOk = (b) => { try { dec.decode(b); return true; } catch { return false; } };
  const fixed = ['', 'abc', 'héllo', '€', '𝄞', 'a'.repeat(40) + 'é' + 'b'.repeat(40)].map((s) => Buffer.from(s));
  const bad = [[0xc0, 0x80], [0xe0, 0x80, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xf8], [0xe2, 0x82], [0x80], [0xf0, 0x8f, 0xbf, 0xbf]].map((a) => Buffer.from(a));
  for (const b of fixed) assert.equal(codec.isUtf8(b), true, b.toString('hex'));
  for (const b of bad) assert.equal(codec.isUtf8(Buffer.concat([Buffer.from('x'.repeat(20)), b])), false, b.toString('hex'));
  const alphabet = [0x41, 0x7f, 0x80, 0xbf, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xa0, 0x8f, 0x90];
  for (let i = 0; i < Math.round(20000 * SCALE); i++) {
    const n = (i % 40);
    const b = Buffer.alloc(n);
    for (let j = 0; j < n; j++) b[j] = Math.random() < 0.5 ? 0x61 : alphabet[(Math.random() * alphabet.length) | 0];
    assert.equal(codec.isUtf8(b), refOk(b), b.toString('hex'));
  }
}

function testEnvelope() {
  const payload = Buffer.from('payload');
  const out = Buffer.alloc(100);
  const end = codec.envelopeEncodeInto(out, 3, 1, 0x05, payload);
  assert.equal(end, 3 + 8 + payload.length);
  const msg = out.subarray(3, end);
  assert.equal(msg.toString('hex', 0, 8), '0201050000000007');
  const d = new Uint32Array(4);
  assert.equal(codec.envelopeDecode(msg, 100, d), 0);
  assert.deepEqual([...d], [1, 5, 8, 7]);
  assert.equal(codec.envelopeDecode(msg, 6, d), -24);
  assert.equal(codec.envelopeDecode(msg.subarray(0, 12), 100, d), -23);
  assert.equal(codec.envelopeDecode(msg.subarray(0, 5), 100, d), -23);
  const bad = (i, v) => { const m = Buffer.from(msg); m[i] = v; return codec.envelopeDecode(m, 100, d); };
  assert.equal(bad(0, 1), -20);
  assert.equal(bad(3, 1), -21);
  assert.equal(bad(1, 7), -22);
  assert.equal(bad(1, 0), -22);
  assert.equal(bad(2, 0x10), -25);
  const run = Buffer.concat([msg, msg, msg]);
  const descs = new Uint32Array(12);
  assert.equal(codec.envelopeDecodeRun(run, 100, descs), 3);
  assert.deepEqual([...descs], [1, 5, 8, 7, 1, 5, 23, 7, 1, 5, 38, 7]);
  assert.equal(codec.envelopeDecodeRun(run, 100, new Uint32Array(8)), -23);
  assert.equal(codec.envelopeDecodeRun(run.subarray(0, 40), 100, descs), -23);
  assert.equal(codec.envelopeDecodeRun(Buffer.alloc(0), 100, descs), 0);
  assert.throws(() => codec.envelopeEncodeInto(Buffer.alloc(10), 0, 1, 0, payload), RangeError);
  assert.throws(() => codec.envelopeEncodeInto(out, 0, 9, 0, payload), RangeError);
}

function testPoolAndEncoder() {
  const s0 = codec.poolStats();
  const a = codec.acquire(100), b = codec.acquire(5000), c = codec.acquire(2 * MiB);
  assert.deepEqual([a.length, b.length, c.length], [4096, 65536, 2 * MiB]);
  codec.release(a); codec.release(a); codec.release(b); codec.release(c);
  const s1 = codec.poolStats();
  assert.equal(s1.inUse, s0.inUse);
  assert.equal(s1.misses + s1.hits - s0.misses - s0.hits, 3);
  assert.ok(s1.misses - s0.misses >= 1, 'over 1 MiB is a miss');
  assert.ok(s1.freeBytes >= 4096 + 65536);
  const a2 = codec.acquire(10);
  assert.equal(a2.buffer, a.buffer, 'reused');
  assert.equal(codec.poolStats().hits - s1.hits, 1);
  codec.release(a2);
  // Encoder: server frames unmasked, take() hands over exactly the bytes; big outputs too.
  const enc = new codec.FrameEncoder(SERVER, 16);
  assert.equal(enc.take(), null);
  enc.frame(1, Buffer.from('hi'));
  enc.frame(9, Buffer.alloc(0));
  assert.equal(enc.length, 6);
  assert.equal(enc.take().toString('hex'), '81026869' + '8900');
  const big = randomBytes(100000);
  enc.frame(2, big, false, true);
  const t = enc.take();
  assert.equal(t.length, 10 + big.length);
  assert.equal(t[0], 0x42);
  assert.ok(t.subarray(10).equals(big));
  assert.equal(enc.length, 0);
  assert.throws(() => enc.frame(3, big), RangeError);
  assert.throws(() => enc.frame(9, Buffer.alloc(126)), RangeError);
  assert.throws(() => enc.frame(8, Buffer.alloc(1), false), RangeError);
  assert.throws(() => new codec.FrameParser(2, 1, 1, 1, false, 1), RangeError);
  assert.throws(() => new codec.FrameParser(0, 1, 1, 1, false, 0), RangeError);
  assert.throws(() => new codec.FrameParser(0, 'x', 1, 1, false, 1), TypeError);
  // Client keys differ frame to frame.
  const cenc = new codec.FrameEncoder(CLIENT, 0);
  const keys = new Set();
  for (let i = 0; i < 2000; i++) { cenc.frame(2, Buffer.alloc(0)); const f = cenc.take(); assert.equal(f[1], 0x80); keys.add(f.readUInt32BE(2)); }
  assert.ok(keys.size > 1990, 'fresh mask keys');
}

async function testWorkers() {
  const run = () => new Promise((resolve, reject) => {
    const w = new Worker(fileURLToPath(import.meta.url), { env: { ...process.env, SLUICE_SMOKE_WORKER: '1' } });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => { if (code !== 0) reject(new Error(`worker exit ${code}`)); });
  });
  const results = await Promise.all([run(), run()]);
  for (const r of results) assert.equal(r, 'ok');
  // Teardown with live state: a worker terminated while its parsers hold carried frames
  // and pooled Buffers, and one that ends by itself the same way.
  for (const mode of ['terminate', 'exit']) {
    await new Promise((resolve, reject) => {
      const w = new Worker(fileURLToPath(import.meta.url), { env: { ...process.env, SLUICE_SMOKE_WORKER: mode } });
      w.once('error', reject);
      w.once('message', () => { if (mode === 'terminate') w.terminate(); });
      w.once('exit', resolve);
    });
  }
}

function workerHold(mode) {
  const wire = encode(CLIENT, [[2, randomBytes(200000)]]);
  const keep = [];
  for (let i = 0; i < 8; i++) {
    const p = new codec.FrameParser(SERVER, MiB, MiB, 4, false, 4);
    p.parse(Buffer.from(wire.subarray(0, 5000 * (i + 1))));
    keep.push(p, codec.acquire(100 * i), codec.acquire(70000));
  }
  codec.release(codec.acquire(10));
  parentPort.postMessage('ready');
  if (mode === 'terminate') setInterval(() => keep.length, 1000);
}

function workerBody() {
  // Each worker has its own pool, keys and classes; parse a stream of frames.
  const wire = encode(CLIENT, Array.from({ length: 2000 }, (_, i) => [2, randomBytes(i % 300)]));
  const p = new codec.FrameParser(SERVER, MiB, MiB, 4, false, 64);
  const { frames, err } = parseAll(p, cut(wire, [1000, 17, 4096]));
  assert.equal(err, 0);
  assert.equal(frames.length, 2000);
  codec.release(codec.acquire(10));
  parentPort.postMessage('ok');
}

if (!isMainThread && process.env.SLUICE_SMOKE_WORKER === '1') {
  workerBody();
} else if (!isMainThread && process.env.SLUICE_SMOKE_WORKER) {
  workerHold(process.env.SLUICE_SMOKE_WORKER);
} else {
  testRoundTrip();
  testSplitsEverywhere();
  testErrors();
  const ms = testCarryChunks();
  testMask();
  testUtf8();
  testEnvelope();
  testPoolAndEncoder();
  await testWorkers();
  console.log(`native smoke ok (${addonPath}); 1 MiB frame in 16 KiB chunks: ${ms.toFixed(2)} ms`);
}
