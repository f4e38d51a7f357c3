/**
 * Issue #13, "Backpressure both ways, real TCP": a real `sluice` process (dist/cli.js) between
 * a raw client and an upstream on loopback, one side flooding 64 KiB binary messages while the
 * other stops reading. The route leaves `backpressure` at its default, which is `pause`:
 * when the socket being written holds more than limits.highWaterMark unsent bytes, the proxy
 * stops reading its partner, and reads again once it drains. Being slow is never a reason to
 * lose or refuse a message.
 *
 * Each direction shows that
 *   (a) the sender is held back within seconds: its socket.write() returned false and no
 *       'drain' came for >= 2 s, and the bytes its socket flushed to the kernel stopped growing;
 *   (b) the proxy's RSS stays bounded: it grows less than 64 MiB above its baseline while the
 *       sender has 128 MiB to offer (a proxy that read everything would hold ~100 MiB or more);
 *   (c) nothing is closed: no close frame either way, both sockets open, the proxy alive;
 *   (d) once the reader reads again, every one of the 2048 messages arrives in order and
 *       intact (sequence number + a pattern that depends on it), then a 1000 close goes cleanly.
 *
 * dist/cli.js is used as built (`npm test` compiles first; run `npm run build:ts` before this
 * file alone): the sources may be mid-edit, so this file does not build them itself.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import type { WebSocket } from 'ws';
import { startRawWsUpstream, startWsBackend } from './fixtures/peers.js';
import { clientFrame, takeFrame } from './fixtures/raw-client.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'dist', 'cli.js');

const MiB = 1024 * 1024;
/** Payload of every flood message. */
const MSG = 64 * 1024;
/** What a sender has to offer: 2048 messages, 128 MiB. */
const BUDGET = 2048;
const HIGH_WATER_MARK = 262_144;
const MAX_FRAME_BYTES = 131_072;
/** The proxy's RSS may grow this much above its baseline while held back. */
const RSS_BOUND = 64 * MiB;
/** Held back: no 'drain' and no flushed byte for this long. */
const QUIET_MS = 2000;
/** ... reached within this long of the first write. */
const STALL_WITHIN_MS = 10_000;
/** Everything delivered after the reader resumes, within this long. */
const DELIVER_WITHIN_MS = 12_000;

function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}
if (!existsSync(cli)) {
  t.fail(`${cli} is missing: run npm run build:ts`);
  process.exit(1);
}
if (statSync(cli).mtimeMs < newestMtime(join(root, 'src'))) {
  t.comment('warning: dist/ is older than src/; this run tests the last build (npm run build:ts)');
}

// ---- messages ------------------------------------------------------------------------------

/** Deterministic bytes (xorshift32); message `seq` carries a window of them shifted by seq % 251. */
const PATTERN = (() => {
  const b = Buffer.allocUnsafe(MSG + 256);
  let x = 0x9e3779b9;
  for (let i = 0; i < b.length; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
})();

/** Payload of message `seq`: the sequence number (u32 BE), then the pattern from seq % 251. */
function payloadOf(seq: number): Buffer {
  const p = Buffer.allocUnsafe(MSG);
  p.writeUInt32BE(seq, 0);
  const from = seq % 251;
  PATTERN.copy(p, 4, from, from + MSG - 4);
  return p;
}

/** Why `payload` is not message `seq`, or null when it is. */
function mismatch(seq: number, payload: Buffer): string | null {
  if (payload.length !== MSG) return `message ${seq}: ${payload.length} bytes, expected ${MSG}`;
  const got = payload.readUInt32BE(0);
  if (got !== seq) return `message ${seq}: carries sequence number ${got} (out of order, lost or duplicated)`;
  const from = seq % 251;
  if (payload.compare(PATTERN, from, from + MSG - 4, 4, MSG) !== 0) return `message ${seq}: payload corrupted`;
  return null;
}

/** A masked binary frame of `payload` (64-bit length form), masked word by word. */
function maskedBinary(payload: Buffer): Buffer {
  const n = payload.length;
  // Header at 2..16 (2 + 8 length + 4 key) so that the payload starts 4-aligned at 16.
  const buf = Buffer.allocUnsafeSlow(16 + n);
  buf[2] = 0x82;
  buf[3] = 0x80 | 127;
  buf.writeBigUInt64BE(BigInt(n), 4);
  randomBytes(4).copy(buf, 12);
  if (buf.readUInt32BE(12) === 0) buf[12] = 1; // a mask that changes the bytes
  payload.copy(buf, 16);
  const words = n >>> 2;
  const w = new Uint32Array(buf.buffer, buf.byteOffset + 16, words);
  const k = new Uint32Array(buf.buffer, buf.byteOffset + 12, 1)[0];
  for (let i = 0; i < words; i++) w[i] ^= k;
  for (let i = words * 4; i < n; i++) buf[16 + i] ^= buf[12 + (i & 3)];
  return buf.subarray(2);
}

/** An unmasked (server) frame. */
function serverFrame(opcode: number, payload: Buffer): Buffer {
  const n = payload.length;
  const hdr = n < 126 ? Buffer.from([0x80 | opcode, n]) : n < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
  if (n >= 126) {
    hdr[0] = 0x80 | opcode;
    hdr[1] = n < 65536 ? 126 : 127;
    if (n < 65536) hdr.writeUInt16BE(n, 2);
    else hdr.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([hdr, payload]);
}

/** A masked close frame with `code`. */
function clientClose(code: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(code, 0);
  return clientFrame(0x8, b);
}

/** Bytes the whole first frame of `buf` needs (or the header needs, while it is incomplete). */
function frameNeed(buf: Buffer): number {
  if (buf.length < 2) return 2;
  const key = buf[1] & 0x80 ? 4 : 0;
  const len7 = buf[1] & 0x7f;
  if (len7 < 126) return 2 + key + len7;
  const off = len7 === 126 ? 4 : 10;
  if (buf.length < off) return off;
  const len = len7 === 126 ? buf.readUInt16BE(2) : Number(buf.readBigUInt64BE(2));
  return off + key + len;
}

/**
 * Incremental frame reader: chunks are joined once a whole frame is there (no quadratic
 * concatenation), fragments are reassembled; data messages and control frames are handed on
 * and not kept.
 */
class FrameReader {
  private chunks: Buffer[] = [];
  private total = 0;
  private need = 2;
  private fragments: Buffer[] | null = null;
  private fragmentOp = 0;
  constructor(
    private readonly onMessage: (opcode: number, payload: Buffer) => void,
    private readonly onControl: (opcode: number, payload: Buffer) => void,
  ) {}

  push(d: Buffer): void {
    if (d.length === 0) return;
    this.chunks.push(d);
    this.total += d.length;
    while (this.total >= this.need) {
      const buf = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.total);
      this.chunks = [buf];
      const fin = (buf[0] & 0x80) !== 0;
      const f = takeFrame(buf);
      if (f === null) {
        this.need = frameNeed(buf);
        continue;
      }
      this.chunks = f.rest.length > 0 ? [f.rest] : [];
      this.total = f.rest.length;
      this.need = 2;
      if (f.opcode >= 0x8) this.onControl(f.opcode, f.payload);
      else if (f.opcode === 0) {
        this.fragments?.push(f.payload);
        if (fin && this.fragments) {
          const whole = Buffer.concat(this.fragments);
          this.fragments = null;
          this.onMessage(this.fragmentOp, whole);
        }
      } else if (fin) this.onMessage(f.opcode, f.payload);
      else {
        this.fragments = [f.payload];
        this.fragmentOp = f.opcode;
      }
    }
  }
}

// ---- the proxy process ---------------------------------------------------------------------

/** Environment without the overrides a developer may have set (as cli.test.ts). */
function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (/^(AGENT_|PIPEOPS_|SLUICE_CONFIG$|SLUICE_LOG_LEVEL$)/.test(k)) delete env[k];
  return env;
}

interface Sluice {
  child: ChildProcess;
  pid: number;
  port: number;
  alive(): boolean;
  stderr(): string;
  logs: Array<Record<string, unknown>>;
}

/** Starts `node dist/cli.js --config <file>` for a `/*` route to `upstreamUrl`; resolves once it logs `listening`. */
async function startSluice(t: Test, upstreamUrl: string): Promise<Sluice> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-flood-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'flood.yaml');
  writeFileSync(file, [
    'listen:', '  host: 127.0.0.1', '  port: 0',
    'limits:', `  highWaterMark: ${HIGH_WATER_MARK}`, `  maxFrameBytes: ${MAX_FRAME_BYTES}`,
    'routes:', '  - path: /*', '    upstreams:', `      - url: ${upstreamUrl}`, '',
  ].join('\n'));
  const child = spawn(process.execPath, [cli, '--config', file], { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let exited = false;
  child.on('exit', () => { exited = true; });
  t.teardown(() => { if (!exited) child.kill('SIGKILL'); });
  const killer = setTimeout(() => child.kill('SIGKILL'), 90_000);
  killer.unref();
  const logs: Array<Record<string, unknown>> = [];
  let stderr = '';
  let pending = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    pending += d;
    let nl: number;
    while ((nl = pending.indexOf('\n')) !== -1) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      try { logs.push(JSON.parse(line) as Record<string, unknown>); } catch { logs.push({ msg: line }); }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const listening = logs.find((l) => l.event === 'listening');
    if (listening) {
      return { child, pid: child.pid!, port: Number(listening.port), alive: () => !exited, stderr: () => stderr, logs };
    }
    if (exited || Date.now() > deadline) throw new Error(`sluice did not start; logs: ${JSON.stringify(logs)} stderr: ${stderr}`);
    await delay(50);
  }
}

/** A /proc/<pid>/status value in bytes (VmRSS, VmHWM), or null where there is no /proc. */
function procBytes(pid: number, field: 'VmRSS' | 'VmHWM'): number | null {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/**
 * The proxy's peak RSS from now on: VmRSS sampled every 50 ms, and VmHWM (the kernel's peak,
 * which sees between samples) after resetting it here through clear_refs.
 */
function rssWatch(pid: number) {
  let hwmReset = false;
  try { writeFileSync(`/proc/${pid}/clear_refs`, '5'); hwmReset = true; } catch { /* older kernel: samples only */ }
  let peak = procBytes(pid, 'VmRSS') ?? 0;
  const timer = setInterval(() => { peak = Math.max(peak, procBytes(pid, 'VmRSS') ?? 0); }, 50);
  return {
    peak(): number {
      const now = Math.max(peak, procBytes(pid, 'VmRSS') ?? 0);
      return hwmReset ? Math.max(now, procBytes(pid, 'VmHWM') ?? 0) : now;
    },
    stop: () => clearInterval(timer),
  };
}

// ---- peers ---------------------------------------------------------------------------------

/** A raw client: a real upgrade on a plain net.Socket; resolves with the bytes after the 101 head. */
function openClient(port: number, path: string): Promise<{ socket: net.Socket; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const onError = (err: Error) => reject(err);
    socket.once('error', onError);
    socket.on('connect', () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    });
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      socket.off('error', onError);
      socket.on('error', () => {});
      socket.pause();
      const head = buf.subarray(0, end).toString('latin1');
      if (!head.startsWith('HTTP/1.1 101')) {
        socket.destroy();
        reject(new Error(`upgrade refused: ${head.split('\r\n')[0]}`));
        return;
      }
      resolve({ socket, rest: buf.subarray(end + 4) });
    };
    socket.on('data', onData);
  });
}

/**
 * Writes frames 0..budget-1 as fast as `socket` takes them, honouring write()'s return value:
 * after a false it waits for 'drain' (or the socket's close). `flushed` counts the bytes whose
 * write completed (handed to the kernel).
 */
class Pump {
  sent = 0;
  flushed = 0;
  /** When the pending write() returned false; null while not waiting for 'drain'. */
  waitingSince: number | null = null;
  done = false;
  broken = false;
  readonly finished: Promise<void>;
  constructor(private readonly socket: net.Socket, private readonly budget: number, private readonly frameOf: (seq: number) => Buffer) {
    this.finished = this.run();
  }

  private async run(): Promise<void> {
    const s = this.socket;
    while (this.sent < this.budget) {
      if (s.destroyed || !s.writable) {
        this.broken = true;
        return;
      }
      const frame = this.frameOf(this.sent++);
      const ok = s.write(frame, (err) => { if (!err) this.flushed += frame.length; });
      if (ok) {
        if (this.sent % 16 === 0) await new Promise<void>((r) => setImmediate(r));
        continue;
      }
      this.waitingSince = Date.now();
      const drained = await new Promise<boolean>((resolve) => {
        const onDrain = () => { s.off('close', onClose); resolve(true); };
        const onClose = () => { s.off('drain', onDrain); resolve(false); };
        s.once('drain', onDrain);
        s.once('close', onClose);
      });
      this.waitingSince = null;
      if (!drained) {
        this.broken = true;
        return;
      }
    }
    this.done = true;
  }
}

/**
 * Waits until `pump` is held back: waiting for 'drain' for QUIET_MS with no byte flushed in
 * that time. Ends early when `broken()` names a reason, or the pump got its whole budget out.
 */
async function heldBack(pump: Pump, broken: () => string | null): Promise<{ ok: boolean; why: string; afterMs: number }> {
  const start = Date.now();
  let last = pump.flushed;
  let changedAt = start;
  for (;;) {
    await delay(50);
    const now = Date.now();
    if (pump.flushed !== last) {
      last = pump.flushed;
      changedAt = now;
    }
    const why = broken();
    if (why !== null) return { ok: false, why, afterMs: now - start };
    if (pump.broken) return { ok: false, why: 'the sender\'s socket closed', afterMs: now - start };
    if (pump.done) return { ok: false, why: `all ${BUDGET} messages (${BUDGET * MSG / MiB} MiB) were taken, nothing held the sender back`, afterMs: now - start };
    if (pump.waitingSince !== null && now - pump.waitingSince >= QUIET_MS && now - changedAt >= QUIET_MS) {
      return { ok: true, why: '', afterMs: now - start };
    }
    if (now - start > STALL_WITHIN_MS) return { ok: false, why: `not held back within ${STALL_WITHIN_MS} ms`, afterMs: now - start };
  }
}

async function until(pred: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) return false;
    await delay(20);
  }
  return true;
}

/** The proxy's stderr without Node's process warnings (e.g. the native codec fallback notice). */
function unexpectedStderr(text: string): string {
  return text.split('\n').filter((l) => l !== '' && !/^\(node:\d+\) (\[\w+\] )?\w*Warning: /.test(l) && !l.startsWith('(Use `node --trace-warnings')).join('\n');
}

const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

// ---- the tests -----------------------------------------------------------------------------

t.test('client -> upstream: a flooding client is held back while the upstream does not read', async (t) => {
  // The upstream: a `ws` server whose socket stops reading as soon as the connection opens.
  let upstream: WebSocket | null = null;
  let upSocket: net.Socket | null = null;
  let received = 0;
  let firstBad: string | null = null;
  let upClose: number | null = null;
  const backend = await startWsBackend({
    onConnection: (ws) => {
      upstream = ws;
      upSocket = (ws as unknown as { _socket: net.Socket })._socket;
      upSocket.pause();
      ws.on('message', (data, isBinary) => {
        const payload = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as Buffer);
        const bad = isBinary ? mismatch(received, payload) : `message ${received}: arrived as text`;
        if (bad !== null && firstBad === null) firstBad = bad;
        received++;
      });
      ws.on('close', (code) => { upClose = code; });
    },
  });
  t.teardown(() => backend.close());

  const proxy = await startSluice(t, `ws://127.0.0.1:${backend.port}`);
  const { socket, rest } = await openClient(proxy.port, '/flood');
  t.teardown(() => socket.destroy());
  let closeFrame: number | null = null;
  let dataFrames = 0;
  let ended = false;
  socket.on('close', () => { ended = true; });
  const reader = new FrameReader(
    () => { dataFrames++; },
    (op, payload) => {
      if (op === 0x8) closeFrame = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      else if (op === 0x9 && !ended) socket.write(clientFrame(0xa, payload));
    },
  );
  socket.on('data', (d: Buffer) => reader.push(d));
  reader.push(rest);
  socket.resume();
  t.ok(await until(() => upSocket !== null, 5000), 'the proxy opened the upstream leg');
  if (upSocket === null) return;
  const upSock: net.Socket = upSocket;
  await delay(300);

  const baseline = procBytes(proxy.pid, 'VmRSS');
  const rss = rssWatch(proxy.pid);
  const pump = new Pump(socket, BUDGET, (seq) => maskedBinary(payloadOf(seq)));
  const broken = () =>
    closeFrame !== null ? `the proxy sent the client a close frame (${closeFrame})`
      : ended ? 'the client connection ended'
        : upClose !== null ? `the upstream leg closed (${upClose})`
          : !proxy.alive() ? 'the proxy exited' : null;
  const stall = await heldBack(pump, broken);
  await delay(200);
  const peak = rss.peak();
  rss.stop();

  // (a) held back
  t.ok(stall.ok, `(a) the client is held back within ${STALL_WITHIN_MS / 1000} s: no 'drain' and no byte flushed for ${QUIET_MS / 1000} s` +
    (stall.ok ? ` (after ${(stall.afterMs / 1000).toFixed(1)} s)` : ` - ${stall.why}`));
  if (stall.ok) {
    t.ok(pump.flushed < BUDGET * MSG / 2,
      `(a) the client got ${mib(pump.flushed)} of its ${mib(BUDGET * MSG)} out before being held back (bound: half of it)`);
  }
  t.comment(`held back: ${pump.sent} messages written, ${mib(pump.flushed)} flushed, ${received} read by the upstream so far`);

  // (b) bounded memory
  if (baseline === null) t.comment('(b) SKIPPED: no /proc/<pid>/status here, the RSS bound is not checked');
  else {
    t.ok(peak - baseline < RSS_BOUND,
      `(b) proxy RSS grew ${mib(peak - baseline)} (baseline ${mib(baseline)}, peak ${mib(peak)}), bound ${mib(RSS_BOUND)}, ` +
      `while the client offered ${mib(BUDGET * MSG)}`);
  }

  // (c) nothing closed
  t.equal(closeFrame, null, '(c) the client got no close frame');
  t.notOk(ended, '(c) the client connection is open');
  t.equal(upClose, null, '(c) the upstream leg is open');
  t.equal(dataFrames, 0, 'the client got no data frames');
  t.ok(proxy.alive(), '(c) the proxy is running');

  // (d) the upstream reads again: everything arrives, in order, intact.
  upSock.resume();
  const intact = stall.ok && closeFrame === null && !ended;
  await until(() => (pump.done && received >= BUDGET) || broken() !== null || (pump.broken && received >= pump.sent),
    intact ? DELIVER_WITHIN_MS : 3000);
  t.ok(pump.done, `(d) the client got all ${BUDGET} messages out once the upstream read again (${pump.sent} written)`);
  t.equal(received, BUDGET, `(d) the upstream received all ${BUDGET} messages (${mib(BUDGET * MSG)})`);
  t.equal(firstBad, null, '(d) each in order and intact (sequence number and pattern)');

  // ... then a clean close from the client.
  if (!ended) socket.write(clientClose(1000));
  await until(() => closeFrame !== null && ended && upClose !== null, 3000);
  t.equal(closeFrame, 1000, 'the client\'s 1000 close is answered with 1000');
  t.equal(upClose, 1000, 'the upstream saw the 1000 close');
  t.ok(ended, 'the connection ended');
  t.equal(unexpectedStderr(proxy.stderr()), '', 'nothing unexpected on the proxy\'s stderr');
});

t.test('upstream -> client: a flooding upstream is held back while the client does not read', async (t) => {
  // The upstream: a raw WebSocket server that floods through a Pump and answers a close.
  let upSocket: net.Socket | null = null;
  let upClose: number | null = null;
  let upEnded = false;
  const backend = await startRawWsUpstream((s) => {
    upSocket = s;
    s.on('close', () => { upEnded = true; });
    const reader = new FrameReader(() => {}, (op, payload) => {
      if (op === 0x8 && upClose === null) {
        upClose = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        s.end(serverFrame(0x8, payload.subarray(0, 2)));
      } else if (op === 0x9 && !s.destroyed) s.write(serverFrame(0xa, payload));
    });
    s.on('data', (d: Buffer) => reader.push(d));
  });
  t.teardown(() => backend.close());

  const proxy = await startSluice(t, `ws://127.0.0.1:${backend.port}`);
  const { socket, rest } = await openClient(proxy.port, '/flood');
  t.teardown(() => socket.destroy());
  // The client does not read (openClient left the socket paused) until (d).
  let received = 0;
  let firstBad: string | null = null;
  let closeFrame: number | null = null;
  let closeAfter = -1;
  let ended = false;
  socket.on('close', () => { ended = true; });
  const reader = new FrameReader(
    (op, payload) => {
      const bad = op === 0x2 ? mismatch(received, payload) : `message ${received}: opcode ${op}`;
      if (bad !== null && firstBad === null) firstBad = bad;
      received++;
    },
    (op, payload) => {
      if (op === 0x8 && closeFrame === null) {
        closeFrame = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        closeAfter = received;
      } else if (op === 0x9 && !ended) socket.write(clientFrame(0xa, payload));
    },
  );
  socket.on('data', (d: Buffer) => reader.push(d));
  reader.push(rest);
  t.ok(await until(() => upSocket !== null, 5000), 'the proxy opened the upstream leg');
  if (upSocket === null) return;
  const upSock: net.Socket = upSocket;
  await delay(300);

  const baseline = procBytes(proxy.pid, 'VmRSS');
  const rss = rssWatch(proxy.pid);
  const pump = new Pump(upSock, BUDGET, (seq) => serverFrame(0x2, payloadOf(seq)));
  const broken = () =>
    upClose !== null ? `the proxy sent the upstream a close frame (${upClose})`
      : upEnded ? 'the upstream connection ended'
        : !proxy.alive() ? 'the proxy exited' : null;
  const stall = await heldBack(pump, broken);
  await delay(200);
  const peak = rss.peak();
  rss.stop();

  // (a) held back
  t.ok(stall.ok, `(a) the upstream is held back within ${STALL_WITHIN_MS / 1000} s: no 'drain' and no byte flushed for ${QUIET_MS / 1000} s` +
    (stall.ok ? ` (after ${(stall.afterMs / 1000).toFixed(1)} s)` : ` - ${stall.why}`));
  if (stall.ok) {
    t.ok(pump.flushed < BUDGET * MSG / 2,
      `(a) the upstream got ${mib(pump.flushed)} of its ${mib(BUDGET * MSG)} out before being held back (bound: half of it)`);
  }
  t.comment(`held back: ${pump.sent} messages written, ${mib(pump.flushed)} flushed`);

  // (b) bounded memory
  if (baseline === null) t.comment('(b) SKIPPED: no /proc/<pid>/status here, the RSS bound is not checked');
  else {
    t.ok(peak - baseline < RSS_BOUND,
      `(b) proxy RSS grew ${mib(peak - baseline)} (baseline ${mib(baseline)}, peak ${mib(peak)}), bound ${mib(RSS_BOUND)}, ` +
      `while the upstream offered ${mib(BUDGET * MSG)}`);
  }

  // (c) nothing closed (what the client was sent is checked once it reads: no close frame before the data)
  t.equal(upClose, null, '(c) the upstream got no close frame');
  t.notOk(upEnded, '(c) the upstream connection is open');
  t.notOk(socket.destroyed, '(c) the client socket is open');
  t.ok(proxy.alive(), '(c) the proxy is running');

  // (d) the client reads again: everything arrives, in order, intact.
  socket.resume();
  const intact = stall.ok && upClose === null && !upEnded;
  await until(() => received >= BUDGET || closeFrame !== null || ended || upClose !== null || upEnded,
    intact ? DELIVER_WITHIN_MS : 3000);
  t.equal(closeFrame, null, closeFrame === null ? '(c) the client got no close frame'
    : `(c) the client got no close frame (got ${closeFrame} after ${closeAfter} messages)`);
  t.ok(pump.done, `(d) the upstream got all ${BUDGET} messages out once the client read again (${pump.sent} written)`);
  t.equal(received, BUDGET, `(d) the client received all ${BUDGET} messages (${mib(BUDGET * MSG)})`);
  t.equal(firstBad, null, '(d) each in order and intact (sequence number and pattern)');

  // ... then a clean close from the client.
  if (!ended) socket.write(clientClose(1000));
  await until(() => closeFrame !== null && ended, 3000);
  t.equal(upClose, 1000, 'the upstream saw the client\'s 1000 close');
  t.equal(closeFrame, 1000, 'the client\'s 1000 close is answered with 1000');
  t.ok(ended, 'the connection ended');
  t.equal(unexpectedStderr(proxy.stderr()), '', 'nothing unexpected on the proxy\'s stderr');
});

