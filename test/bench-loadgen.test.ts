// The benchmark's load generator must notice a proxy that echoes wrongly: a
// benchmark row for a corrupting proxy would otherwise look like a fast one.
// A small WebSocket echo server in this process plays the backend, optionally
// breaking one message; the real loadgen binary is run against it.
import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { takeFrame } from './fixtures/raw-client.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const loadgenDir = path.join(root, 'bench', 'loadgen');
const loadgen = path.join(loadgenDir, 'loadgen');

function ensureBuilt() {
  const newest = Math.max(
    ...['loadgen.cc', 'handshake.h', 'build.sh'].map((f) => fs.statSync(path.join(loadgenDir, f)).mtimeMs),
  );
  if (!fs.existsSync(loadgen) || fs.statSync(loadgen).mtimeMs < newest) {
    execFileSync('bash', [path.join(loadgenDir, 'build.sh')], { stdio: 'inherit' });
  }
}

interface EchoOptions {
  /** Flip one payload byte of the n-th message echoed (1-based). */
  corruptMessage?: number;
  /** Swallow the n-th message instead of echoing it. */
  dropMessage?: number;
  /** Answer the handshake with a wrong Sec-WebSocket-Accept. */
  badAccept?: boolean;
}

interface EchoServer {
  port: number;
  requests: Record<string, string | string[] | undefined>[];
  close(): Promise<void>;
}

/** A minimal RFC 6455 echo server: unmasks client frames, echoes them unmasked. */
function startEcho(opts: EchoOptions = {}): Promise<EchoServer> {
  const requests: EchoServer['requests'] = [];
  let count = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buf: Buffer = Buffer.alloc(0);
    let open = false;
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (!open) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString('latin1').split('\r\n');
        buf = buf.subarray(end + 4);
        const headers: Record<string, string> = {};
        for (const line of head.slice(1)) {
          const i = line.indexOf(':');
          headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
        }
        requests.push(headers);
        const accept = createHash('sha1')
          .update(headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
          .digest('base64');
        const protocol = headers['sec-websocket-protocol']?.split(',')[0].trim();
        socket.write(
          'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
            `Sec-WebSocket-Accept: ${opts.badAccept ? 'AAAA' + accept.slice(4) : accept}\r\n` +
            (protocol ? `Sec-WebSocket-Protocol: ${protocol}\r\n` : '') +
            '\r\n',
        );
        open = true;
      }
      for (;;) {
        const f = takeFrame(buf);
        if (f === null) return;
        const { opcode, payload } = f;
        buf = f.rest;
        if (opcode === 0x8) {
          socket.end(frame(0x8, payload));
          return;
        }
        if (opcode !== 0x1 && opcode !== 0x2) continue;
        count++;
        if (count === opts.dropMessage) continue;
        if (count === opts.corruptMessage) payload[payload.length - 1] ^= 0x01;
        socket.write(frame(opcode, payload));
      }
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      resolve({
        port,
        requests,
        close: () =>
          new Promise<void>((r) => {
            for (const s of sockets) s.destroy();
            server.close(() => r());
          }),
      });
    });
  });
}

function frame(opcode: number, payload: Buffer): Buffer {
  const len = payload.length;
  const head =
    len < 126
      ? Buffer.from([0x80 | opcode, len])
      : len < 65536
        ? Buffer.from([0x80 | opcode, 126, len >> 8, len & 0xff])
        : Buffer.concat([Buffer.from([0x80 | opcode, 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(len)); return b; })()]);
  return Buffer.concat([head, payload]);
}

interface LoadgenResult {
  valid: boolean;
  sent: number;
  received: number;
  lost: number;
  mismatches: number;
  handshakeFailures: number;
  messages: number;
  msgsPerSec: number | null;
  protocol: string | null;
  errorMessages: string[];
  latency?: { count: number; p50Ms: number; p99Ms: number };
}

/** Runs the loadgen to completion (the test server lives in this process, so no execFileSync). */
function run(args: string[]): Promise<LoadgenResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(loadgen, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20000);
    child.on('close', (code) => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(out) as LoadgenResult);
      } catch {
        reject(new Error(`loadgen exited ${code}: ${err}`));
      }
    });
  });
}

const short = ['--warmup', '0.1', '--duration', '0.3', '--connections', '4', '--inflight', '2'];

t.before(ensureBuilt);

t.test('a faithful echo is a valid run, text and binary', async (t) => {
  const echo = await startEcho();
  t.teardown(echo.close);
  for (const kind of ['--binary', '--text']) {
    const r = await run(['--port', String(echo.port), '--size', '300', kind, ...short]);
    t.equal(r.valid, true, `${kind}: valid (${r.errorMessages.join('; ')})`);
    t.ok(r.messages > 0, `${kind}: messages counted in the window`);
    t.equal(r.sent, r.received, `${kind}: every message came back`);
    t.equal(r.mismatches, 0);
  }
});

t.test('one flipped byte in one echoed message makes the run invalid', async (t) => {
  const echo = await startEcho({ corruptMessage: 7 });
  t.teardown(echo.close);
  const r = await run(['--port', String(echo.port), '--size', '4096', ...short]);
  t.equal(r.valid, false);
  t.equal(r.mismatches, 1, 'exactly the corrupted message is reported');
  t.match(r.errorMessages.join('\n'), /corrupted/);
});

t.test('a swallowed message makes the run invalid', async (t) => {
  const echo = await startEcho({ dropMessage: 5 });
  t.teardown(echo.close);
  const r = await run(['--port', String(echo.port), '--size', '64', '--drain', '0.3', ...short]);
  t.equal(r.valid, false);
  t.ok(r.lost > 0 || r.mismatches > 0, 'the gap is seen as a lost or out-of-sequence message');
});

t.test('a wrong Sec-WebSocket-Accept fails the handshake', async (t) => {
  const echo = await startEcho({ badAccept: true });
  t.teardown(echo.close);
  const r = await run(['--port', String(echo.port), ...short]);
  t.equal(r.valid, false);
  t.equal(r.handshakeFailures, 4);
});

t.test('handshake headers are sent as asked; open loop reports percentiles', async (t) => {
  const echo = await startEcho();
  t.teardown(echo.close);
  const r = await run([
    '--port', String(echo.port), '--mode', 'open', '--rate', '2000', '--size', '64',
    '--warmup', '0.1', '--duration', '0.3', '--connections', '2',
    '--origin', 'https://app.example', '--protocol', 'sluice.v2, sluice.v1',
    '--authorization', 'Bearer abc', '--header', 'X-Tenant: t1', '--path', '/room/1',
  ]);
  t.equal(r.valid, true, r.errorMessages.join('; '));
  t.equal(r.protocol, 'sluice.v2');
  const h = echo.requests[0];
  t.equal(h.origin, 'https://app.example');
  t.equal(h.authorization, 'Bearer abc');
  t.equal(h['x-tenant'], 't1');
  t.ok(r.latency && r.latency.count > 100, 'latency samples from the measured window');
  t.ok(r.latency && r.latency.p99Ms >= r.latency.p50Ms);
});

t.test('--envelope v1|v2: valid through a real sluice envelope route, invalid when the envelope is corrupted', async (t) => {
  ensureBuilt();
  const { createProxy } = await import('../src/index.js');
  const backend = await startEcho();
  t.teardown(() => backend.close());
  const proxy = createProxy({
    listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, protocol: 'v2',
    routes: [{ path: '/*', mode: 'envelope', upstreams: [{ url: `ws://127.0.0.1:${backend.port}/` }] }],
  });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 100 }));
  for (const v of ['v2', 'v1']) {
    for (const size of ['64', '5000']) {
      const r = await run(['--port', String(port), '--envelope', v, '--size', size, '--connections', '4', '--inflight', '4', '--warmup', '0.2', '--duration', '0.5']);
      t.equal(r.valid, true, `${v}, ${size} B: every wrapped echo checked (${r.errorMessages.join('; ')})`);
      t.equal(r.protocol, `sluice.${v}`, `${v}: the subprotocol is offered and picked`);
      t.ok(r.received > 0);
    }
  }
  // A backend that flips a byte (its 3rd echo; a fresh one per version, since it counts
  // every message it echoes): through the envelope route the wrapped echo differs → invalid.
  for (const v of ['v2', 'v1']) {
    const bad = await startEcho({ corruptMessage: 3 });
    t.teardown(() => bad.close());
    const proxy2 = createProxy({
      listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, protocol: 'v2',
      routes: [{ path: '/*', mode: 'envelope', upstreams: [{ url: `ws://127.0.0.1:${bad.port}/` }] }],
    });
    const { port: port2 } = await proxy2.listen();
    t.teardown(() => proxy2.close({ drainMs: 100 }));
    const r = await run(['--port', String(port2), '--envelope', v, '--size', '64', '--connections', '1', '--inflight', '1', '--warmup', '0', '--duration', '0.3']);
    t.equal(r.valid, false, `${v}: a corrupted payload inside the envelope makes the run invalid`);
    t.ok(r.mismatches >= 1, `${v}: counted as a mismatch`);
  }
});
