/**
 * The native engine accepting connections itself (plain listeners on Linux): its own
 * request-head parser and limits (400, 431, 408), the one decision JavaScript makes per
 * head, the upstream handshake the engine runs (101 checks, refusals passed through, 502,
 * 504, fail-over), bytes that come with either handshake, clients that leave mid-handshake,
 * hand-over to Node's HTTP server (plain HTTP, envelope routes), and no leaks.
 *
 * Real sockets only. The file runs in the three modes of the data plane and asserts what
 * each must do:
 *   - default (native engine, it accepts);
 *   - SLUICE_ACCEPT=node: Node's HTTP server accepts and parses, the upstream handshake runs
 *     in TypeScript, then the engine adopts both sockets;
 *   - SLUICE_NO_NATIVE=1: everything in TypeScript.
 * Where they legitimately differ (Node's HTTP parser versus the engine's), the expectation
 * is per mode and the comment says why.
 */
import t, { type Test } from 'tap';
import http from 'node:http';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { createProxy, type Proxy } from '../src/index.js';
import type { ProxyConfigInput } from '../src/config/index.js';
import { closed, connect, deadPort, nextMessage, startRawServer, startWsBackend, until, upgradeStatus } from './fixtures/peers.js';
import { Op, WirePeer, acceptFor, cf, closeBody, onRequestHead, sf, startRawUpstream } from './fixtures/raw-upstream.js';
import { rawAnswer, writeChunks } from './fixtures/raw-client.js';

// ------------------------------------------------------------------------------ modes

const NO_NATIVE = process.env.SLUICE_NO_NATIVE === '1';
const NODE_ACCEPT = process.env.SLUICE_ACCEPT === 'node';
/** The native engine holds transparent sessions (the addon is built for this Linux box). */
const NATIVE_ENGINE = !NO_NATIVE && process.env.SLUICE_ENGINE !== 'typescript' && process.platform === 'linux';
/** The native engine accepts and parses request heads itself (else Node's HTTP server does). */
const ENGINE_ACCEPTS = NATIVE_ENGINE && !NODE_ACCEPT;
const MODE = ENGINE_ACCEPTS ? 'engine accepts' : NATIVE_ENGINE ? 'Node accepts, native engine' : 'TypeScript';
t.comment(`mode: ${MODE}`);

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const fdCount = () => readdirSync('/proc/self/fd').length;

async function proxyFor(t: Test, config: ProxyConfigInput): Promise<{ proxy: Proxy; port: number; base: string }> {
  const proxy = createProxy({ listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, ...config });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 200 }));
  return { proxy, port, base: `ws://127.0.0.1:${port}` };
}

/** An upgrade request head with a fresh key (returned, to check the accept). */
function upgradeHead(path: string, extra = '', opts: { version?: string; host?: string } = {}): { head: string; key: string } {
  const key = randomBytes(16).toString('base64');
  const head = `GET ${path} ${opts.version ?? 'HTTP/1.1'}\r\nHost: ${opts.host ?? '127.0.0.1'}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`;
  return { head, key };
}

/** Writes `bytes` in chunks of `chunk` (all at once by default), `gapMs` apart. */
interface Opened {
  status: number;
  head: string;
  /** A client-role peer on the socket: frames after the answer head (those that came with it included). */
  peer: WirePeer;
  socket: net.Socket;
}

/** A raw client: writes `bytes` (chunked as told), resolves once the answer head is complete. */
function rawOpen(port: number, bytes: Buffer, opts: { chunk?: number; gapMs?: number; timeoutMs?: number } = {}): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('no answer head in time'));
    }, opts.timeoutMs ?? 5000);
    socket.on('error', () => {});
    socket.on('connect', () => void writeChunks(socket, bytes, opts.chunk, opts.gapMs));
    const onClose = () => {
      clearTimeout(timer);
      reject(new Error(`closed before an answer head; got ${JSON.stringify(buf.toString('latin1'))}`));
    };
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      const head = buf.subarray(0, end).toString('latin1');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? -1);
      resolve({ status, head, peer: new WirePeer(socket, 'client', buf.subarray(end + 4)), socket });
    };
    socket.on('data', onData);
    socket.on('close', onClose);
  });
}

/** A `ws` client through the proxy echoes one message and closes cleanly. */
async function echoes(t: Test, url: string, what: string): Promise<void> {
  const ws = await connect(url);
  const text = `echo ${what}`;
  ws.send(text);
  t.equal((await nextMessage(ws)).data.toString(), text, `${what}: a following session echoes`);
  ws.close(1000);
  t.equal((await closed(ws)).code, 1000, `${what}: and closes with 1000`);
}

/**
 * A hand-written upstream: once the request head is complete, `answer(key, head, socket)`
 * writes whatever it likes (a 101 right or wrong, a refusal, garbage, nothing).
 */
function startScripted(answer: (key: string, head: string, s: net.Socket, leftover: Buffer) => void) {
  return startRawServer((s) => onRequestHead(s, (key, head, leftover) => answer(key, head, s, leftover)));
}

const ok101 = (key: string, extra = '') =>
  `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(key)}\r\n${extra}\r\n`;

/** Close the raw session from the client side; the proxy must answer and end the connection. */
async function closeRaw(t: Test, peer: WirePeer, what: string): Promise<void> {
  await peer.sendClose(1000, 'bye');
  const o = await peer.outcome(5000);
  t.equal(o.code, 1000, `${what}: the close is answered with 1000`);
  t.ok(o.ended, `${what}: the TCP connection ends`);
}

// ------------------------------------------------------------------------------ tests

t.test('the engine in use is the one this mode asks for', async (t) => {
  const { proxy } = await proxyFor(t, { routes: [{ path: '/x', upstreams: [{ url: 'ws://127.0.0.1:9/' }] }] });
  t.equal(proxy.stats().engine.kind, NATIVE_ENGINE ? 'native' : 'typescript', `${MODE}: stats().engine.kind`);
  t.equal(proxy.stats().engine.native, 0, 'no session yet');
});

t.test('bytes that come with the client\'s head are not lost; a head split in pieces still works', async (t) => {
  const up = await startRawUpstream({ echo: true });
  t.teardown(up.close);
  const { proxy, port } = await proxyFor(t, { routes: [{ path: '/raw', upstreams: [{ url: up.url }] }] });

  // 1. Head and two masked frames in ONE write.
  {
    const { head, key } = upgradeHead('/raw');
    const bytes = Buffer.concat([Buffer.from(head, 'latin1'), cf(Op.Text, 'early bird'), cf(Op.Binary, Buffer.from([9, 8, 7]))]);
    const c = await rawOpen(port, bytes);
    t.equal(c.status, 101, 'one write: 101');
    t.equal(/\r\nsec-websocket-accept:\s*(\S+)/i.exec(c.head)?.[1], acceptFor(key), 'one write: the accept matches our key');
    const u = await up.conn(0);
    t.ok(await u.waitFor(() => u.frames.length >= 2, 5000), 'one write: both frames reached the upstream');
    t.same(u.frames.map((f) => [f.opcode, f.payload.toString('hex')]),
      [[Op.Text, Buffer.from('early bird').toString('hex')], [Op.Binary, '090807']], 'one write: upstream got exactly those frames, in order');
    t.ok(u.frames.every((f) => f.masked), 'one write: the proxy masks towards the upstream');
    t.ok(await c.peer.waitFor(() => c.peer.frames.length >= 2, 5000), 'one write: both echoes came back');
    t.same(c.peer.frames.slice(0, 2).map((f) => [f.opcode, f.payload.toString('hex'), f.masked]),
      [[Op.Text, Buffer.from('early bird').toString('hex'), false], [Op.Binary, '090807', false]], 'one write: the echoes, unmasked, in order');
    await closeRaw(t, c.peer, 'one write');
  }

  // 2. Head byte by byte (a timer between bytes), then a frame once the 101 is in.
  {
    const { head } = upgradeHead('/raw?split=bytes');
    const c = await rawOpen(port, Buffer.from(head, 'latin1'), { chunk: 1, gapMs: 1, timeoutMs: 10_000 });
    t.equal(c.status, 101, 'byte by byte: 101');
    await c.peer.send(cf(Op.Text, 'after the split head'));
    t.ok(await c.peer.waitFor(() => c.peer.frames.length >= 1, 5000), 'byte by byte: an echo came back');
    t.equal(c.peer.frames[0].payload.toString(), 'after the split head', 'byte by byte: the echo is intact');
    const u = await up.conn(1);
    t.equal(u.frames[0]?.payload.toString(), 'after the split head', 'byte by byte: the upstream got the frame');
    await closeRaw(t, c.peer, 'byte by byte');
  }

  // 3. Head and frames in 7-byte pieces: a piece holds the end of the head and the start of
  //    a frame, the rest of which comes while the proxy decides and dials.
  {
    const { head } = upgradeHead('/raw?split=7');
    const frames = [cf(Op.Text, 'across the boundary'), cf(Op.Binary, Buffer.alloc(300, 0x5a))];
    const c = await rawOpen(port, Buffer.concat([Buffer.from(head, 'latin1'), ...frames]), { chunk: 7, gapMs: 2 });
    t.equal(c.status, 101, '7-byte pieces: 101');
    t.ok(await c.peer.waitFor(() => c.peer.frames.length >= 2, 5000), '7-byte pieces: both echoes came back');
    t.equal(c.peer.frames[0].payload.toString(), 'across the boundary', '7-byte pieces: first frame intact');
    t.ok(c.peer.frames[1].payload.equals(Buffer.alloc(300, 0x5a)), '7-byte pieces: second frame intact (300 bytes)');
    const u = await up.conn(2);
    t.equal(u.frames.length, 2, '7-byte pieces: the upstream got exactly two frames');
    await closeRaw(t, c.peer, '7-byte pieces');
  }
  await until(() => proxy.stats().sessions === 0, 5000, 'sessions end');
  t.equal(proxy.stats().sessions, 0, 'no session left');
});

t.test('the upstream\'s 101 and its first frames in one write reach the client in order', async (t) => {
  const peers: WirePeer[] = [];
  const up = await startScripted((key, _head, s, leftover) => {
    s.write(Buffer.concat([
      Buffer.from(ok101(key), 'latin1'),
      sf(Op.Text, 'hello from upstream'),
      sf(Op.Binary, Buffer.from([1, 2, 3])),
    ]));
    const p = new WirePeer(s, 'server', leftover);
    p.echo = true;
    peers.push(p);
  });
  t.teardown(up.close);
  const { proxy, port } = await proxyFor(t, { routes: [{ path: '/first', upstreams: [{ url: up.url }] }] });
  const { head, key } = upgradeHead('/first');
  const c = await rawOpen(port, Buffer.from(head, 'latin1'));
  t.equal(c.status, 101, 'the client gets its 101');
  t.equal(/\r\nsec-websocket-accept:\s*(\S+)/i.exec(c.head)?.[1], acceptFor(key), 'with the accept for its own key (not the upstream\'s)');
  t.ok(await c.peer.waitFor(() => c.peer.frames.length >= 2, 5000), 'then the frames that came with the upstream\'s 101');
  t.same(c.peer.frames.slice(0, 2).map((f) => [f.opcode, f.payload.toString('hex')]),
    [[Op.Text, Buffer.from('hello from upstream').toString('hex')], [Op.Binary, '010203']], 'both, intact, in order');
  await c.peer.send(cf(Op.Text, 'and back'));
  t.ok(await c.peer.waitFor(() => c.peer.frames.length >= 3, 5000), 'the session carries on');
  t.equal(c.peer.frames[2].payload.toString(), 'and back');
  t.equal(peers.length, 1, 'one upstream connection');
  await closeRaw(t, c.peer, 'upstream first frame');
  await until(() => proxy.stats().sessions === 0, 5000, 'session end');
});

t.test('malformed, oversized and slow request heads: 400, 431, 408; nothing opens; the next upgrade works', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { proxy, port, base } = await proxyFor(t, {
    limits: { maxHeaderBytes: 1024, handshakeTimeoutMs: 1000 },
    routes: [{ path: '/*', upstreams: [{ url: backend.url }] }],
  });
  const afterEach = async (what: string) => {
    t.equal(proxy.stats().sessions, 0, `${what}: no session`);
    await echoes(t, `${base}/after`, what);
    await until(() => proxy.stats().sessions === 0, 3000, `${what}: the good session ended`);
  };
  const refused = async (what: string, request: string, status: number) => {
    const a = await rawAnswer(port, request);
    t.equal(a.status, status, `${what}: ${status}`);
    t.ok(a.closedByProxy, `${what}: the proxy closes the connection (${a.ms} ms)`);
    t.notMatch(a.response, /^HTTP\/1\.1 101/, `${what}: never a 101`);
    await afterEach(what);
  };

  const good = upgradeHead('/bad').head;
  // Node's parser and the engine's refuse these alike (llhttp, Node 20 to 26).
  await refused('bare LF line endings', good.replace(/\r\n/g, '\n'), 400);
  await refused('bare LF in the header lines only', good.replace(/\r\n/g, '\n').replace(/^([^\n]*)\n/, '$1\r\n'), 400);
  await refused('NUL in a header value', upgradeHead('/bad', 'X-Note: a\u0000b\r\n').head, 400);
  await refused('obs-fold line', upgradeHead('/bad', 'X-Note: a\r\n  folded\r\n').head, 400);
  await refused('whitespace before the colon', upgradeHead('/bad', 'X-Note : a\r\n').head, 400);

  // `GET / HTTP/2.0`: the engine's parser takes HTTP/1.0 and HTTP/1.1 only (400); Node's
  // llhttp accepts "HTTP/2.0" on a request line, and onUpgrade refuses it (400) there.
  await refused('GET / HTTP/2.0', upgradeHead('/', '', { version: 'HTTP/2.0' }).head, 400);

  // Over maxHeaderBytes + 8 KiB: the engine's own limit (431); Node's maxHeaderSize (431).
  await refused('a 12 KiB head', upgradeHead('/bad', `X-Big: ${'a'.repeat(12 * 1024)}\r\n`).head, 431);
  // Between maxHeaderBytes and maxHeaderBytes + 8 KiB: the engine reads it, JavaScript
  // counts the header bytes as for Node (431); Node's parser refuses it itself (431).
  await refused('a 3 KiB head', upgradeHead('/bad', `X-Big: ${'a'.repeat(3 * 1024)}\r\n`).head, 431);

  // Half a head, then nothing: 408 after handshakeTimeoutMs (1 s), checked once a second.
  {
    const a = await rawAnswer(port, 'GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr', { waitMs: 6000 });
    t.equal(a.status, 408, 'half a head: 408');
    t.ok(a.closedByProxy, 'half a head: the proxy closes the connection');
    t.ok(a.ms >= 900 && a.ms <= 2500, `half a head: answered within handshakeTimeoutMs + 1.5 s (${a.ms} ms)`);
    await afterEach('half a head');
  }
  // A head trickled in over longer than handshakeTimeoutMs is cut too (each piece is on time).
  {
    const pieces = upgradeHead('/slow').head;
    const a = await rawAnswer(port, pieces, { chunk: 8, gapMs: 150, waitMs: 6000 });
    t.equal(a.status, 408, 'trickled head: 408');
    t.ok(a.ms >= 900 && a.ms <= 2500, `trickled head: after handshakeTimeoutMs, within + 1.5 s (${a.ms} ms)`);
    await afterEach('trickled head');
  }
  t.same(backend.requests.map((r) => r.url).filter((u) => u !== '/after'), [], 'the backend saw only the good upgrades');
});

t.test('header count: 100 fields pass, 101 and 300 get 431', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { proxy, port, base } = await proxyFor(t, { routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });
  // upgradeHead has 5 fields; n - 5 more make n.
  const withFields = (n: number) => upgradeHead('/count', Array.from({ length: n - 5 }, (_, i) => `X-F${i}: v\r\n`).join('')).head;
  const c = await rawOpen(port, Buffer.from(withFields(100), 'latin1'));
  t.equal(c.status, 101, '100 fields (limits.maxHeaderCount): 101');
  await closeRaw(t, c.peer, '100 fields');
  for (const n of [101, 300]) {
    const a = await rawAnswer(port, withFields(n));
    t.equal(a.status, 431, `${n} fields: 431`);
    t.ok(a.closedByProxy, `${n} fields: the connection closes`);
  }
  await until(() => proxy.stats().sessions === 0, 3000, 'sessions end');
  t.equal(proxy.stats().sessions, 0, 'no session left');
  await echoes(t, `${base}/count`, 'after the header counts');
});

t.test('the upstream handshake: subprotocols, bad 101s, refusals with a body, garbage, silence', async (t) => {
  const backend = await startWsBackend({ handleProtocols: (p) => (p.has('b') ? 'b' : false) });
  t.teardown(backend.close);
  const picksC = await startScripted((key, _h, s) => s.write(ok101(key, 'Sec-WebSocket-Protocol: c\r\n')));
  const wrongAccept = await startScripted((_key, _h, s) => s.write(ok101('AAAAAAAAAAAAAAAAAAAAAA==')));
  const extension = await startScripted((key, _h, s) => s.write(ok101(key, 'Sec-WebSocket-Extensions: permessage-deflate\r\n')));
  // The body comes in a second write: the refusal must wait for Content-Length bytes.
  const refuses = await startScripted((_key, _h, s) => {
    s.write('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\nnot for ');
    setTimeout(() => s.write('you, sorry!!!'), 50);
  });
  const garbage = await startScripted((_key, _h, s) => s.write('SSH-2.0-OpenSSH_9.6\r\nthis is no HTTP\r\n\r\n'));
  // Data and FIN together (one edge): a refusal shorter than its Content-Length, a head cut short.
  const shortBody = await startScripted((_key, _h, s) => s.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\nshort'));
  const cutHead = await startScripted((_key, _h, s) => s.end('HTTP/1.1 101 Switching Protocols\r\nUpgr'));
  // Accepts and never answers (but reads: it sees the proxy's FIN, so its socket closes then).
  const silent = await startRawServer((s) => s.resume());
  const raws = { picksC, wrongAccept, extension, refuses, garbage, silent, shortBody, cutHead };
  for (const r of Object.values(raws)) t.teardown(r.close);
  const { proxy, base } = await proxyFor(t, {
    limits: { upstreamTimeoutMs: 500 },
    routes: [
      { path: '/pick', upstreams: [{ url: backend.url }] },
      { path: '/c', upstreams: [{ url: picksC.url }] },
      { path: '/accept', upstreams: [{ url: wrongAccept.url }] },
      { path: '/ext', upstreams: [{ url: extension.url }] },
      { path: '/403', upstreams: [{ url: refuses.url }] },
      { path: '/garbage', upstreams: [{ url: garbage.url }] },
      { path: '/silent', upstreams: [{ url: silent.url }] },
      { path: '/short', upstreams: [{ url: shortBody.url }] },
      { path: '/cut', upstreams: [{ url: cutHead.url }] },
    ],
  });

  const ws = await connect(`${base}/pick`, { protocols: ['a', 'b'] });
  t.equal(ws.protocol, 'b', 'client offers "a, b", upstream picks b: the client\'s 101 says b');
  t.equal(backend.requests.at(-1)!.headers['sec-websocket-protocol'], 'a, b', 'the upstream was offered both');
  ws.send('sub');
  t.equal((await nextMessage(ws)).data.toString(), 'sub', 'and the session runs');
  ws.close();
  await closed(ws);

  t.equal(await upgradeStatus(connect(`${base}/c`, { protocols: ['a', 'b'] })), 502, 'upstream picks "c" (not offered) → 502');
  t.equal(await upgradeStatus(connect(`${base}/accept`)), 502, 'wrong Sec-WebSocket-Accept → 502');
  t.equal(await upgradeStatus(connect(`${base}/ext`)), 502, 'an extension nobody offered → 502');
  const refusal = await connect(`${base}/403`).then(
    (w) => { w.terminate(); return { status: 101, body: '' }; },
    (err: { status?: number; body?: string }) => ({ status: err.status ?? -1, body: err.body ?? '' }));
  t.same(refusal, { status: 403, body: 'not for you, sorry!!!' }, 'the upstream\'s 403 passes through with its body');
  t.equal(await upgradeStatus(connect(`${base}/garbage`)), 502, 'garbage → 502');
  // The upstream's end behind its bytes is seen at once, not at upstreamTimeoutMs (504).
  let t1 = Date.now();
  const short = await connect(`${base}/short`).then(
    (w) => { w.terminate(); return { status: 101, body: '' }; },
    (err: { status?: number; body?: string }) => ({ status: err.status ?? -1, body: err.body ?? '' }));
  t.same([short.status, short.body, Date.now() - t1 < 450], [403, 'short', true], 'a refusal cut short by the upstream\'s end passes at once with what came');
  t1 = Date.now();
  t.equal(await upgradeStatus(connect(`${base}/cut`)), 502, 'a head cut short by the upstream\'s end → 502');
  t.ok(Date.now() - t1 < 450, `at once (${Date.now() - t1} ms), not after upstreamTimeoutMs`);
  const t0 = Date.now();
  t.equal(await upgradeStatus(connect(`${base}/silent`)), 504, 'accepts and never answers → 504');
  const ms = Date.now() - t0;
  t.ok(ms >= 450 && ms < 2500, `504 after upstreamTimeoutMs = 500 (${ms} ms)`);

  // The proxy closes every upstream connection it gave up on.
  for (const [name, r] of Object.entries(raws)) {
    await until(() => r.connections.size === 0, 3000, `${name}: upstream connection closed by the proxy`).catch(() => {});
    t.equal(r.connections.size, 0, `${name}: no upstream connection left open`);
  }
  t.equal(proxy.stats().sessions, 0, 'no session');
  for (const r of proxy.stats().routes) {
    t.equal(r.upstreams[0].sessions, 0, `${r.path}: the upstream's count is given back`);
  }
  await echoes(t, `${base}/pick`, 'after the upstream faults');
});

t.test('fail-over: the first upstream is down, the session opens through the second', async (t) => {
  const dead = await deadPort();
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { proxy, base } = await proxyFor(t, {
    routes: [{ path: '/fo', balance: 'round_robin', upstreams: [{ url: `ws://127.0.0.1:${dead}/` }, { url: backend.url }] }],
  });
  // Round robin's first pick is the first upstream (equal weights): it is tried, refused, and
  // the second carries the session.
  const ws = await connect(`${base}/fo`);
  ws.send('via the second');
  t.equal((await nextMessage(ws)).data.toString(), 'via the second', 'the session runs');
  t.equal(backend.requests.length, 1, 'the second upstream took it');
  const ups = proxy.stats().routes[0].upstreams;
  t.match(ups[0].lastError, /ECONNREFUSED/, 'the first was tried and refused');
  t.equal(ups[0].healthy, false, 'the first is held out');
  t.equal(ups[0].sessions, 0, 'the first holds no session');
  t.equal(ups[1].sessions, 1, 'the second holds it');
  ws.close();
  await closed(ws);
  await until(() => proxy.stats().sessions === 0, 3000, 'session end');
});

/**
 * A client that leaves (FIN or reset) while the upstream handshake runs: the engine sees
 * EPOLLRDHUP and drops the dial; on Node's parser path the socket's 'end' (Node's HTTP
 * server keeps half-open connections) or 'close' marks the handshake gone, and the
 * upstream's 101, when it comes, opens no session.
 */

t.test('a client that leaves while the upstream is slow: no session, the upstream connection is closed', async (t) => {
  interface Conn { gotHead: boolean; answered: boolean; closed: boolean }
  const conns: Conn[] = [];
  // Answers its 101 300 ms after our request, then is a real WebSocket endpoint (it answers
  // a close frame and ends), so that a session that does start can end promptly.
  const slow = await startRawServer((s) => {
    const c: Conn = { gotHead: false, answered: false, closed: false };
    conns.push(c);
    s.on('close', () => (c.closed = true));
    onRequestHead(s, (key) => {
      c.gotHead = true;
      setTimeout(() => {
        if (s.destroyed || c.closed) return;
        s.write(ok101(key));
        c.answered = true;
        new WirePeer(s, 'server', Buffer.alloc(0));
      }, 300);
    });
    s.resume(); // sees the proxy's FIN even before it answers
  });
  t.teardown(slow.close);
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { proxy, port, base } = await proxyFor(t, {
    routes: [{ path: '/slow', upstreams: [{ url: slow.url }] }, { path: '/ok', upstreams: [{ url: backend.url }] }],
  });
  for (const how of ['end', 'destroy'] as const) {
    const i = conns.length;
    const opened = proxy.counters.sessionsTotal;
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    let answer = '';
    s.on('data', (d: Buffer) => (answer += d.toString('latin1')));
    s.on('connect', () => s.write(upgradeHead('/slow').head));
    await until(() => conns.length > i && conns[i].gotHead, 3000, `${how}: the upstream got our request`);
    if (how === 'end') s.end(); // FIN: the client will send nothing more (it could still read)
    else s.destroy();
    // The 101 is due 300 ms after the request; a session that starts ends within ms.
    await until(() => conns[i].closed, 1500).catch(() => {});
    if (ENGINE_ACCEPTS) {
      // The engine watches the client during the dial (EPOLLRDHUP): the dial is dropped at
      // once, before the upstream answers; no session ever opens.
      t.ok(conns[i].closed && !conns[i].answered, `${how}: the proxy closed the upstream connection before its 101`);
      t.equal(proxy.counters.sessionsTotal, opened, `${how}: no session was opened`);
      if (how === 'end') t.equal(answer, '', `${how}: nothing was written to the half-closed client`);
    } else {
      // Node's parser path: the client's end ('end' or 'close') marks the handshake gone;
      // the dial in progress (TypeScript) cannot be cut short, so the upstream's connection
      // is closed as soon as its 101 arrives, and no session opens.
      t.ok(conns[i].closed, `${how}: the proxy closed the upstream connection (at the latest after its 101)`);
      t.equal(proxy.counters.sessionsTotal, opened, `${how}: no session was opened`);
      if (how === 'end') t.equal(answer, '', `${how}: nothing was written to the half-closed client`);
    }
    await until(() => proxy.stats().sessions === 0, 1500).catch(() => {});
    t.equal(proxy.stats().sessions, 0, `${how}: no session is left`);
    t.equal(proxy.stats().engine.native, 0, `${how}: none in the engine`);
    t.equal(proxy.stats().routes[0].upstreams[0].sessions, 0, `${how}: the upstream's count is given back`);
    s.destroy();
  }
  await echoes(t, `${base}/ok`, 'after the gone clients');
});

t.test('plain HTTP on the same port: 426 on a WebSocket route, 404 with no route (hand-over to Node)', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { proxy, port, base } = await proxyFor(t, { routes: [{ path: '/ws', upstreams: [{ url: backend.url }] }] });
  const get = (path: string) => new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? -1, headers: res.headers, body }));
    });
    req.on('error', reject);
  });
  const a = await get('/ws');
  t.equal(a.status, 426, 'GET on a route without http → 426');
  t.equal(a.headers.upgrade, 'websocket', '426 names the protocol to upgrade to');
  t.equal(a.headers.connection, 'close', 'keep-alive off: Connection: close');
  t.match(a.body, /speaks WebSocket/);
  const b = await get('/nothing?x=1');
  t.equal(b.status, 404, 'GET with no route → 404');
  t.equal(b.headers.connection, 'close', 'keep-alive off: Connection: close');
  t.match(b.body, /no route for \/nothing/);
  // A request that is HTTP/1.0 and has a body: handed over with all its bytes.
  const c = await rawAnswer(port, 'POST /ws HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello');
  t.equal(c.status, 426, 'HTTP/1.0 POST with a body → 426');
  t.ok(c.closedByProxy, 'and the connection closes');
  t.equal(proxy.stats().sessions, 0);
  await echoes(t, `${base}/ws`, 'after plain HTTP');
});

t.test('an envelope route (messages mode) and a transparent one on one proxy, both in the engine', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { proxy, base } = await proxyFor(t, {
    routes: [
      { path: '/env', mode: 'envelope', upstreams: [{ url: backend.url }] },
      { path: '/plain', upstreams: [{ url: backend.url }] },
    ],
  });
  const env = await connect(`${base}/env`, { protocols: ['sluice.v1'] });
  t.equal(env.protocol, 'sluice.v1', 'the envelope route answers sluice.v1');
  env.send(JSON.stringify({ type: 'data', data: Buffer.from('wrapped').toString('base64') }));
  const m = await nextMessage(env);
  t.same(JSON.parse(m.data.toString()), { type: 'data', data: Buffer.from('wrapped').toString('base64'), flags: ['final'] }, 'v1 data round trip');
  t.equal(backend.requests.at(-1)!.headers['sec-websocket-protocol'], undefined, 'the upstream is not offered the envelope');
  t.equal(proxy.stats().engine.native, NATIVE_ENGINE ? 1 : 0, `${MODE}: the envelope session runs in the native engine (messages mode)`);

  const plain = await connect(`${base}/plain`);
  plain.send('transparent');
  t.equal((await nextMessage(plain)).data.toString(), 'transparent', 'the transparent session echoes');
  const st = proxy.stats();
  t.equal(st.sessions, 2, 'two sessions');
  t.same(st.routes.map((r) => [r.path, r.sessions]), [['/env', 1], ['/plain', 1]], 'one per route');
  t.same(st.routes[0].envelope, { v1: 1, v2: 0 }, 'the envelope session speaks v1');
  // Native engine (accepting, or adopting after Node's handshake): both sessions are in it.
  // TypeScript: nothing in a native engine.
  t.equal(st.engine.kind, NATIVE_ENGINE ? 'native' : 'typescript', `${MODE}: stats().engine.kind`);
  t.equal(st.engine.native, NATIVE_ENGINE ? 2 : 0, `${MODE}: stats().engine.native counts ${NATIVE_ENGINE ? 'both sessions' : 'nothing'}`);
  plain.close(1000);
  env.close(1000);
  await Promise.all([closed(plain), closed(env)]);
  await until(() => proxy.stats().sessions === 0, 3000, 'sessions end');
  t.same([proxy.stats().sessions, proxy.stats().engine.native], [0, 0], 'all gone');
});

t.test('no leaks: 200 sessions (and refusals and hand-overs among them) in batches of 20', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { proxy, port } = await proxyFor(t, { routes: [{ path: '/leak', upstreams: [{ url: backend.url }] }] });

  const session = async (i: number) => {
    const c = await rawOpen(port, Buffer.concat([Buffer.from(upgradeHead('/leak').head, 'latin1'), cf(Op.Text, `m${i}`)]));
    if (c.status !== 101) throw new Error(`session ${i}: ${c.head.split('\r\n')[0]}`);
    if (!(await c.peer.waitFor(() => c.peer.frames.length >= 1, 5000))) throw new Error(`session ${i}: no echo`);
    await c.peer.send(c.peer.frame(Op.Close, closeBody(1000)));
    const o = await c.peer.outcome(5000);
    c.socket.destroy();
    return c.peer.frames[0].payload.toString() === `m${i}` && o.code === 1000;
  };
  const batch = async (from: number) => {
    const jobs: Array<Promise<boolean>> = [];
    for (let i = from; i < from + 20; i++) jobs.push(session(i));
    // Among them: a malformed head (400), a plain GET (handed over: 404), a client gone
    // before its head is complete.
    jobs.push(rawAnswer(port, 'GET /leak HTTP/1.1\nHost: x\n\n').then((a) => a.status === 400));
    jobs.push(rawAnswer(port, 'GET /none HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n').then((a) => a.status === 404));
    jobs.push(new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.write('GET /leak HTTP/1.1\r\nHost:');
        setTimeout(() => s.destroy(), 20);
      });
      s.on('error', () => {});
      s.on('close', () => resolve(true));
    }));
    return Promise.all(jobs);
  };
  await batch(0); // warm-up: lazily made descriptors (epoll, pipes) exist before the count
  await until(() => proxy.stats().sessions === 0, 5000, 'warm-up sessions end');
  await sleep(100);
  const before = fdCount();
  let good = 0;
  let all = 0;
  for (let b = 0; b < 10; b++) {
    const results = await batch(100 + b * 20);
    all += results.length;
    good += results.filter(Boolean).length;
  }
  t.equal(good, all, `every one of ${all} exchanges (200 sessions) went as expected`);
  await until(() => proxy.stats().sessions === 0, 5000, 'sessions end').catch(() => {});
  t.equal(proxy.stats().sessions, 0, 'stats().sessions back to 0');
  t.equal(proxy.stats().engine.native, 0, 'nothing left in the engine');
  await until(() => fdCount() <= before + 10, 5000).catch(() => {});
  const after = fdCount();
  t.ok(after <= before + 10, `open descriptors back to baseline: ${before} before, ${after} after`);
});
