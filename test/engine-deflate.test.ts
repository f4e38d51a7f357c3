/**
 * permessage-deflate (RFC 7692) carried by the data plane on `compression: true` routes:
 * the client's offer goes to the upstream, the upstream's answer to the client, compressed
 * frames (RSV1) pass through unchanged both ways, and each side's compressed messages are
 * inflated only to check them (size over limits.maxFrameBytes → 1009, invalid UTF-8 in a
 * text message → 1007, data that does not inflate → 1002), context takeover honoured.
 *
 * Real peers on 127.0.0.1: `ws` WebSocketServers and clients with perMessageDeflate (with
 * `threshold: 0`, so that every message, 0 B included, goes compressed), and raw sockets
 * where a frame has to be crafted (deflateRawSync with a sync flush, the trailing
 * 00 00 ff ff stripped as RFC 7692 §7.2.1 says).
 *
 * The file runs in the three modes of the data plane:
 *   - default: the native engine accepts, dials and carries deflate sessions itself
 *     (stats().engine.native counts them);
 *   - SLUICE_ACCEPT=node: Node accepts and the TypeScript side runs the handshake; a session
 *     with an extension agreed stays on the TypeScript engine;
 *   - SLUICE_NO_NATIVE=1: everything on the TypeScript engine (src/codec/inflate-meter.ts).
 * Native counts are asserted only where the engine must hold the session.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import vm from 'node:vm';
import v8 from 'node:v8';
import zlib from 'node:zlib';
import type { IncomingMessage } from 'node:http';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { WebSocket, WebSocketServer, type PerMessageDeflateOptions, type RawData } from 'ws';
import { createProxy, type Proxy } from '../src/index.js';
import type { ProxyConfigInput } from '../src/config/index.js';
import { closed, connect, nextMessage, startRawServer, until, type RawServer } from './fixtures/peers.js';
import { rawConnect, type RawClient } from './fixtures/raw-client.js';
import { Op, WirePeer, acceptFor, cf, encodeFrame, onRequestHead, parseFrame, wireHandshake } from './fixtures/raw-upstream.js';

// ------------------------------------------------------------------------------ modes

const NODE_ACCEPT = process.env.SLUICE_ACCEPT === 'node';
/** Whether deflate sessions of `proxy` must be in the native engine in this mode. */
const nativeCarries = (proxy: Proxy) => proxy.stats().engine.kind === 'native' && !NODE_ACCEPT;
const modeName = (proxy: Proxy) => `${proxy.stats().engine.kind}${NODE_ACCEPT ? ', SLUICE_ACCEPT=node' : ''}`;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 16);
const KiB = 1024;
const MiB = 1024 * 1024;

async function proxyFor(t: Test, config: ProxyConfigInput): Promise<{ proxy: Proxy; port: number; base: string }> {
  const proxy = createProxy({ listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, ...config });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 100 }));
  return { proxy, port, base: `ws://127.0.0.1:${port}` };
}

/** The session count back at 0 (and nothing left in the native engine). */
async function drained(t: Test, proxy: Proxy, what: string): Promise<void> {
  await until(() => proxy.stats().sessions === 0 && proxy.stats().engine.native === 0, 5000, `${what}: sessions end`);
  t.same([proxy.stats().sessions, proxy.stats().engine.native], [0, 0], `${what}: no session left`);
}

// ------------------------------------------------------------------------------ deflate

const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);

/** One message compressed as RFC 7692 §7.2.1 says: a sync flush, its 00 00 ff ff removed. */
function deflate(data: Buffer | string): Buffer {
  const out = zlib.deflateRawSync(Buffer.isBuffer(data) ? data : Buffer.from(data), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  if (!out.subarray(-4).equals(TAIL)) throw new Error('a sync flush ends in 00 00 ff ff');
  return out.subarray(0, out.length - 4);
}

/** A compressed message as a receiver reads it (RFC 7692 §7.2.2): the tail put back, inflated. */
function inflate(data: Buffer): Buffer {
  return zlib.inflateRawSync(Buffer.concat([data, TAIL]), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
}

/** Every message compressed, 0 B included (ws skips messages under 1 KiB by default). */
const PMD: PerMessageDeflateOptions = { threshold: 0 };

// ------------------------------------------------------------------------------ peers

interface DeflateBackend {
  port: number;
  url: string;
  server: WebSocketServer;
  requests: IncomingMessage[];
  sockets: Set<WebSocket>;
  /** Messages the upstream received, oldest first. */
  received: Array<{ data: Buffer; isBinary: boolean }>;
  /** Close codes the upstream's connections got (from their peer, the proxy). */
  closes: number[];
  /** The Sec-WebSocket-Extensions value of each 101 the upstream answered ('' when none). */
  answers: string[];
  close(): Promise<void>;
}

/** A `ws` upstream with `perMessageDeflate` as given; echoes unless `onConnection` says otherwise. */
async function startDeflateBackend(
  perMessageDeflate: boolean | PerMessageDeflateOptions,
  onConnection?: (ws: WebSocket) => void,
): Promise<DeflateBackend> {
  const requests: IncomingMessage[] = [];
  const sockets = new Set<WebSocket>();
  const received: DeflateBackend['received'] = [];
  const closes: number[] = [];
  const answers: string[] = [];
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 64 * MiB, perMessageDeflate });
  server.on('headers', (headers: string[]) => {
    answers.push(headers.find((h) => /^sec-websocket-extensions:/i.test(h))?.replace(/^[^:]*:\s*/, '') ?? '');
  });
  server.on('connection', (ws, req) => {
    requests.push(req);
    sockets.add(ws);
    ws.on('close', (code: number) => {
      closes.push(code);
      sockets.delete(ws);
    });
    ws.on('error', () => {});
    ws.on('message', (data: RawData, isBinary: boolean) => {
      received.push({ data: Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as Buffer), isBinary });
    });
    if (onConnection) onConnection(ws);
    else ws.on('message', (data: RawData, isBinary: boolean) => ws.send(data as Buffer, { binary: isBinary }));
  });
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    url: `ws://127.0.0.1:${port}/`,
    server,
    requests,
    sockets,
    received,
    closes,
    answers,
    close: () =>
      new Promise<void>((resolve) => {
        for (const ws of sockets) ws.terminate();
        server.close(() => resolve());
      }),
  };
}

/**
 * A raw upstream that agrees to permessage-deflate when it is offered (a bare
 * `permessage-deflate` answer) and echoes every data frame as it came, RSV1 kept: a
 * compressed message goes back compressed, with no zlib state in this process.
 */
async function startRawDeflateEcho(): Promise<RawServer> {
  return startRawServer((s) => {
    s.setNoDelay(true);
    onRequestHead(s, (key, head, leftover) => {
      const offered = /\r\nsec-websocket-extensions:[^\r]*permessage-deflate/i.test(head);
      s.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(key)}\r\n` +
        `${offered ? 'Sec-WebSocket-Extensions: permessage-deflate\r\n' : ''}\r\n`);
      let buf: Buffer = Buffer.alloc(0);
      const onData = (d: Buffer) => {
        buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
        for (let p = parseFrame(buf); p !== null; p = parseFrame(buf)) {
          buf = p.rest;
          const f = p.frame;
          if (f.opcode === Op.Close) {
            s.end(encodeFrame(Op.Close, f.payload.subarray(0, 2)));
            return;
          }
          if (f.opcode <= Op.Binary) s.write(encodeFrame(f.opcode, f.payload, { fin: f.fin, rsv: f.rsv }));
        }
      };
      s.on('data', onData);
      if (leftover.length > 0) onData(leftover);
    });
  });
}

/** A raw client that offers `extensions`; the answer's head and a client-role WirePeer (it sees RSV bits). */
function rawDeflateClient(port: number, path: string, extensions = 'permessage-deflate'): Promise<{ head: string; peer: WirePeer }> {
  return wireHandshake(port, path, { extensions });
}

const extensionsOf = (head: string) => /\r\nsec-websocket-extensions:\s*([^\r]*)/i.exec(head)?.[1] ?? '';

/** The compressed messages a raw peer got (frames joined per message; RSV1 of each first frame). */
function messagesOf(peer: WirePeer): Array<{ opcode: number; rsv1: boolean; payload: Buffer }> {
  const out: Array<{ opcode: number; rsv1: boolean; payload: Buffer }> = [];
  let cur: { opcode: number; rsv1: boolean; parts: Buffer[] } | null = null;
  for (const f of peer.frames) {
    if (f.opcode >= 0x8) continue;
    if (f.opcode !== Op.Cont) cur = { opcode: f.opcode, rsv1: (f.rsv & 4) !== 0, parts: [] };
    cur?.parts.push(f.payload);
    if (f.fin && cur !== null) {
      out.push({ opcode: cur.opcode, rsv1: cur.rsv1, payload: Buffer.concat(cur.parts) });
      cur = null;
    }
  }
  return out;
}

/** A `ws` client and the Sec-WebSocket-Extensions of the 101 it got (ws.extensions names the extensions only). */
function connectAnswer(url: string, perMessageDeflate: PerMessageDeflateOptions): Promise<{ ws: WebSocket; answer: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate });
    let answer = '';
    ws.once('upgrade', (res: IncomingMessage) => (answer = String(res.headers['sec-websocket-extensions'] ?? '')));
    ws.once('open', () => resolve({ ws, answer }));
    ws.once('error', reject);
  });
}

/** The wire bytes a `ws` WebSocket's socket read so far. */
const bytesRead = (ws: WebSocket) => (ws as unknown as { _socket: net.Socket })._socket.bytesRead;

/** Send `data` and check that the same message (type and bytes) comes back. */
async function echoes(t: Test, ws: WebSocket, data: Buffer | string, binary: boolean, what: string): Promise<void> {
  const want = Buffer.isBuffer(data) ? data : Buffer.from(data, 'utf8');
  const got = nextMessage(ws, 15000);
  ws.send(data, { binary });
  const m = await got;
  t.equal(m.isBinary, binary, `${what}: ${binary ? 'binary' : 'text'} stays ${binary ? 'binary' : 'text'}`);
  t.ok(m.data.length === want.length && m.data.equals(want), `${what}: ${want.length} B echo intact (${sha(m.data)} vs ${sha(want)})`);
}

/** `n` messages in a burst; all must come back, in order. */
async function echoesBurst(t: Test, ws: WebSocket, msgs: string[], what: string): Promise<void> {
  const got: string[] = [];
  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: ${got.length}/${msgs.length} echoed`)), 10000);
    const on = (d: RawData) => {
      got.push((d as Buffer).toString());
      if (got.length === msgs.length) {
        clearTimeout(timer);
        ws.off('message', on);
        resolve();
      }
    };
    ws.on('message', on);
  });
  for (const m of msgs) ws.send(m);
  await done;
  t.same(got, msgs, `${what}: ${msgs.length} messages echoed intact and in order`);
}

/** Similar small messages: each refers back to the ones before under context takeover. */
const similar = (n: number, tag: string) =>
  Array.from({ length: n }, (_, i) => JSON.stringify({ type: 'tick', tag, seq: i, user: 'alice', body: `hello world, message ${i % 7}` }));

/** Text that compresses poorly: base64 of random bytes (`n` chars). */
const randomText = (n: number) => randomBytes(Math.ceil((n * 3) / 4)).toString('base64').slice(0, n);

// ------------------------------------------------------------------------------ 1. negotiated, carried, echoed

t.test('negotiated and carried: text and binary, 0 B to 1 MiB, both ways; 200 similar messages (context takeover)', async (t) => {
  const backend = await startDeflateBackend(PMD);
  t.teardown(backend.close);
  const { proxy, base } = await proxyFor(t, {
    limits: { maxFrameBytes: 4 * MiB },
    routes: [{ path: '/z', compression: true, upstreams: [{ url: backend.url }] }],
  });
  t.comment(`mode: ${modeName(proxy)}`);
  const { ws, answer } = await connectAnswer(`${base}/z`, PMD);
  t.match(answer, /^permessage-deflate/, `agreed end to end: '${answer}'`);
  t.equal(answer, backend.answers.at(-1), 'the client got the upstream’s answer');
  t.match(String(backend.requests.at(-1)!.headers['sec-websocket-extensions'] ?? ''), /permessage-deflate/,
    'the client’s offer reached the upstream');
  t.equal(proxy.stats().sessions, 1);
  if (nativeCarries(proxy)) t.equal(proxy.stats().engine.native, 1, 'the native engine carries the deflate session');
  else t.comment(`${modeName(proxy)}: stats().engine.native = ${proxy.stats().engine.native} (not asserted in this mode)`);

  // Compressed on the wire both ways: 100 000 'a' is a few hundred bytes compressed; the
  // upstream's socket and the client's socket read only that (nothing inflated on the way).
  const upstreamWs = [...backend.sockets][0];
  const [cBefore, uBefore] = [bytesRead(ws), bytesRead(upstreamWs)];
  await echoes(t, ws, 'a'.repeat(100_000), false, 'compressible text');
  const [cWire, uWire] = [bytesRead(ws) - cBefore, bytesRead(upstreamWs) - uBefore];
  t.ok(uWire < 2000, `the upstream read ${uWire} B for a 100 000 B message: it came compressed`);
  t.ok(cWire < 2000, `the client read ${cWire} B for the echo: it came back compressed`);

  for (const binary of [false, true]) {
    const kind = binary ? 'binary' : 'text';
    await echoes(t, ws, Buffer.alloc(0), binary, `${kind} 0 B`);
    await echoes(t, ws, binary ? Buffer.from([0, 1, 2, 0xff, 0xfe]) : 'hello', binary, `${kind} small`);
    await echoes(t, ws, binary ? randomBytes(70 * KiB) : randomText(70 * KiB), binary, `${kind} 70 KiB`);
  }
  // 1 MiB of random bytes compresses to about 1 MiB: frames past 256 KiB stream through.
  const big = randomBytes(MiB);
  const upBefore = backend.received.length;
  await echoes(t, ws, big, true, 'binary 1 MiB random (compressed frame > 256 KiB: streamed)');
  t.ok(backend.received[upBefore]?.data.equals(big), 'the upstream got the 1 MiB message intact');
  await echoes(t, ws, randomText(MiB), false, 'text 1 MiB (base64 of random bytes, compressed > 256 KiB: streamed)');

  // Context takeover: each message refers to the ones before; the inflaters on the way must
  // keep their windows or these fail (1002) instead of echoing.
  await echoesBurst(t, ws, similar(200, 'a'), 'context takeover');
  if (nativeCarries(proxy)) t.equal(proxy.stats().engine.native, 1, 'still in the native engine');
  ws.close(1000);
  t.equal((await closed(ws)).code, 1000, 'a normal close');
  await drained(t, proxy, 'after the echo');
});

// ------------------------------------------------------------------------------ 2. no context takeover

t.test('client_no_context_takeover / server_no_context_takeover, from the upstream and from the client', async (t) => {
  const variants: Array<{ name: string; server: PerMessageDeflateOptions; client: PerMessageDeflateOptions; want: RegExp[] }> = [
    { name: 'upstream: both no_context_takeover', server: { ...PMD, serverNoContextTakeover: true, clientNoContextTakeover: true }, client: PMD,
      want: [/server_no_context_takeover/, /client_no_context_takeover/] },
    { name: 'client asks both', server: PMD, client: { ...PMD, serverNoContextTakeover: true, clientNoContextTakeover: true },
      want: [/server_no_context_takeover/, /client_no_context_takeover/] },
    { name: 'upstream: client_no_context_takeover only', server: { ...PMD, clientNoContextTakeover: true }, client: PMD,
      want: [/client_no_context_takeover/] },
    { name: 'upstream: server_no_context_takeover only', server: { ...PMD, serverNoContextTakeover: true }, client: PMD,
      want: [/server_no_context_takeover/] },
  ];
  for (const v of variants) {
    const backend = await startDeflateBackend(v.server);
    t.teardown(backend.close);
    const { proxy, base } = await proxyFor(t, {
      limits: { maxFrameBytes: 4 * MiB },
      routes: [{ path: '/z', compression: true, upstreams: [{ url: backend.url }] }],
    });
    const { ws, answer } = await connectAnswer(`${base}/z`, v.client);
    t.match(answer, /^permessage-deflate/, `${v.name}: agreed ('${answer}')`);
    for (const re of v.want) t.match(answer, re, `${v.name}: the answer carries ${re.source}`);
    t.equal(answer, backend.answers.at(-1), `${v.name}: the client got the upstream’s answer`);
    t.match(String(backend.requests.at(-1)!.headers['sec-websocket-extensions'] ?? ''), /permessage-deflate/, `${v.name}: the offer reached the upstream`);
    if (nativeCarries(proxy)) t.equal(proxy.stats().engine.native, 1, `${v.name}: in the native engine`);
    await echoes(t, ws, 'hello', false, `${v.name}: small text`);
    await echoes(t, ws, randomBytes(70 * KiB), true, `${v.name}: binary 70 KiB`);
    await echoes(t, ws, randomBytes(MiB), true, `${v.name}: binary 1 MiB random`);
    await echoesBurst(t, ws, similar(100, v.name), v.name);
    ws.close(1000);
    t.equal((await closed(ws)).code, 1000, `${v.name}: a normal close`);
    await drained(t, proxy, v.name);
  }
});

// ------------------------------------------------------------------------------ 3. fragmented

t.test('a fragmented compressed message arrives whole (ws fragments, raw frames, upstream → client)', async (t) => {
  const part1 = similar(300, 'p1').join('\n');
  const part2 = similar(300, 'p2').join('\n');
  const whole = part1 + part2;
  const bigA = randomText(600 * KiB);
  const bigB = randomText(600 * KiB);
  // The upstream echoes, and on '!frag' answers with a message in two fragments (and on
  // '!bigfrag' with two fragments of 600 KiB each, compressed past 256 KiB each).
  const backend = await startDeflateBackend(PMD, (ws) => {
    ws.on('message', (data: RawData, isBinary: boolean) => {
      const s = (data as Buffer).toString();
      if (!isBinary && s === '!frag') {
        ws.send(part1, { fin: false });
        ws.send(part2, { fin: true });
      } else if (!isBinary && s === '!bigfrag') {
        ws.send(bigA, { fin: false });
        ws.send(bigB, { fin: true });
      } else ws.send(data as Buffer, { binary: isBinary });
    });
  });
  t.teardown(backend.close);
  const { proxy, port, base } = await proxyFor(t, {
    limits: { maxFrameBytes: 4 * MiB },
    routes: [{ path: '/z', compression: true, upstreams: [{ url: backend.url }] }],
  });

  // ws: RSV1 on the first frame, the continuation compressed on the same stream.
  const ws = await connect(`${base}/z`, { perMessageDeflate: PMD });
  let got = nextMessage(ws);
  ws.send(part1, { fin: false });
  ws.send(part2, { fin: true });
  let m = await got;
  t.equal(m.data.toString(), whole, `ws client, 2 fragments: the echo is the whole message (${whole.length} B)`);
  t.equal(backend.received.at(-1)!.data.toString(), whole, 'the upstream got it whole');
  got = nextMessage(ws, 15000);
  ws.send(bigA, { fin: false });
  ws.send(bigB, { fin: true });
  m = await got;
  t.ok(m.data.toString() === bigA + bigB, 'ws client, 2 fragments of 600 KiB (streamed): the echo is whole');

  // Upstream → client.
  got = nextMessage(ws);
  ws.send('!frag');
  m = await got;
  t.equal(m.data.toString(), whole, 'upstream, 2 fragments: the client gets the whole message');
  got = nextMessage(ws, 15000);
  ws.send('!bigfrag');
  m = await got;
  t.ok(m.data.toString() === bigA + bigB, 'upstream, 2 fragments of 600 KiB (streamed): the client gets it whole');
  ws.close(1000);
  await closed(ws);

  // Raw frames: text RSV1 FIN=0 with the first half of the compressed bytes, then a
  // continuation (no RSV1) FIN=1 with the rest, in separate writes.
  const { head, peer } = await rawDeflateClient(port, '/z');
  t.match(extensionsOf(head), /^permessage-deflate/, 'raw client: agreed');
  const comp = deflate(whole);
  const cut = comp.length >> 1;
  await peer.send([cf(Op.Text, comp.subarray(0, cut), { rsv: 4, fin: false }), cf(Op.Cont, comp.subarray(cut))], 'frames');
  t.ok(await peer.waitFor(() => messagesOf(peer).length === 1, 5000), 'raw client: the echo came');
  const echo = messagesOf(peer)[0];
  t.equal(backend.received.at(-1)!.data.toString(), whole, 'raw client, 2 frames: the upstream got the whole message');
  t.ok(echo?.rsv1, 'the echo came compressed (RSV1)');
  t.equal(echo ? inflate(echo.payload).toString() : '', whole, 'and inflates to the whole message');
  await peer.sendClose(1000);
  t.equal((await peer.outcome(3000)).code, 1000, 'raw client: a normal close');
  await drained(t, proxy, 'fragments');
});

// ------------------------------------------------------------------------------ 4. limits

t.test('limits apply to the inflated size: 1009 from the client side and from the upstream side', async (t) => {
  const backend = await startDeflateBackend(PMD, (ws) => {
    ws.on('message', (data: RawData, isBinary: boolean) => {
      if (!isBinary && (data as Buffer).toString() === '!big') ws.send('z'.repeat(150_000));
      else ws.send(data as Buffer, { binary: isBinary });
    });
  });
  t.teardown(backend.close);
  const { proxy, base } = await proxyFor(t, {
    limits: { maxFrameBytes: 100_000 },
    routes: [{ path: '/z', compression: true, upstreams: [{ url: backend.url }] }],
  });

  // Under the limit inflated (and far under it compressed): passes.
  const ws = await connect(`${base}/z`, { perMessageDeflate: PMD });
  await echoes(t, ws, 'x'.repeat(99_000), false, 'under the limit inflated');
  // 150 000 'y' compresses to a few hundred bytes and inflates past 100 000.
  const upCloses = backend.closes.length;
  const seen = closed(ws);
  ws.send('y'.repeat(150_000));
  const c = await seen;
  t.equal(c.code, 1009, `client's message inflating past maxFrameBytes → the client gets 1009 ('${c.reason}')`);
  await until(() => backend.closes.length > upCloses, 5000, 'the upstream closed');
  t.equal(backend.closes.at(-1), 1009, 'the upstream (the partner) gets 1009 too');
  t.notOk(backend.received.some((r) => r.data.length === 150_000), 'the oversized message never reached the upstream');
  await drained(t, proxy, 'client over the limit');

  // The upstream's answer inflates past the limit.
  const ws2 = await connect(`${base}/z`, { perMessageDeflate: PMD });
  const up2 = backend.closes.length;
  let gotMessage = false;
  ws2.on('message', () => (gotMessage = true));
  const seen2 = closed(ws2);
  ws2.send('!big');
  const c2 = await seen2;
  t.equal(c2.code, 1009, `upstream's message inflating past maxFrameBytes → the client gets 1009 ('${c2.reason}')`);
  t.notOk(gotMessage, 'the client got no part of it as a message');
  await until(() => backend.closes.length > up2, 5000, 'the upstream closed');
  t.equal(backend.closes.at(-1), 1009, 'the upstream (the sender) gets 1009');
  await drained(t, proxy, 'upstream over the limit');

  // Still serving.
  const ws3 = await connect(`${base}/z`, { perMessageDeflate: PMD });
  await echoes(t, ws3, 'after', false, 'a new session after the two 1009s');
  ws3.close(1000);
  await closed(ws3);
  await drained(t, proxy, 'limits');
});

// ------------------------------------------------------------------------------ 5. raw violations

t.test('raw client: invalid UTF-8 inflated → 1007; not deflate data, RSV1 on a continuation, RSV1 without deflate → 1002', async (t) => {
  const backend = await startDeflateBackend(PMD);
  t.teardown(backend.close);
  const { proxy, port, base } = await proxyFor(t, {
    limits: { maxFrameBytes: 4 * MiB },
    routes: [
      { path: '/z', compression: true, upstreams: [{ url: backend.url }] },
      { path: '/plain', upstreams: [{ url: backend.url }] },
    ],
  });

  /** A raw deflate session that first echoes a valid compressed 'hello' (so the session is live). */
  const open = async (what: string) => {
    const { head, peer } = await rawDeflateClient(port, '/z');
    t.match(extensionsOf(head), /^permessage-deflate/, `${what}: agreed`);
    if (nativeCarries(proxy)) t.equal(proxy.stats().engine.native, 1, `${what}: in the native engine`);
    const before = backend.received.length;
    await peer.send(cf(Op.Text, deflate('hello'), { rsv: 4 }));
    await peer.waitFor(() => messagesOf(peer).length === 1, 5000);
    const echo = messagesOf(peer)[0];
    t.ok(echo?.rsv1 && inflate(echo.payload).toString() === 'hello', `${what}: a valid compressed 'hello' echoes (compressed)`);
    return { peer, before: before + 1 };
  };

  const cases: Array<{ name: string; frames: () => Buffer[]; code: number; reason?: RegExp; upstream: number }> = [
    { name: 'compressed text inflating to invalid UTF-8 (c3 28)', frames: () => [cf(Op.Text, deflate(Buffer.from([0xc3, 0x28])), { rsv: 4 })],
      code: 1007, upstream: 1001 },
    { name: 'RSV1 payload that is not deflate data (ff ff ff ff 00)', frames: () => [cf(Op.Binary, Buffer.from([0xff, 0xff, 0xff, 0xff, 0x00]), { rsv: 4 })],
      code: 1002, reason: /invalid compressed data/, upstream: 1001 },
    { name: 'RSV1 set on a continuation frame', frames: () => {
      const comp = deflate('fragmented message');
      return [cf(Op.Text, comp.subarray(0, 4), { rsv: 4, fin: false }), cf(Op.Cont, comp.subarray(4), { rsv: 4 })];
    }, code: 1002, upstream: 1001 },
  ];
  for (const k of cases) {
    const { peer, before } = await open(k.name);
    const ups = backend.closes.length;
    await peer.send(k.frames());
    const out = await peer.outcome(4000);
    t.equal(out.code, k.code, `${k.name} → ${k.code} ('${out.reason.toString()}')`);
    if (k.reason) t.match(out.reason.toString(), k.reason, `${k.name}: reason`);
    t.ok(out.ended, `${k.name}: the connection ended`);
    t.equal(backend.received.length, before, `${k.name}: nothing of it reached the upstream`);
    await until(() => backend.closes.length > ups, 5000, 'the upstream closed');
    t.equal(backend.closes.at(-1), k.upstream, `${k.name}: the upstream gets ${k.upstream}`);
    await drained(t, proxy, k.name);
  }

  // A route without compression: nothing is negotiated, so RSV1 is a protocol error.
  const plain = await rawConnect(port, '/plain', 'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n');
  t.notMatch(plain.head, /sec-websocket-extensions/i, 'no compression route: the offer is not answered');
  t.notMatch(String(backend.requests.at(-1)!.headers['sec-websocket-extensions'] ?? ''), /permessage-deflate/,
    'no compression route: the offer does not reach the upstream');
  plain.write(cf(Op.Text, deflate('Hello'), { rsv: 4 }));
  const po = await plain.outcome(4000);
  t.equal(po.closeCode, 1002, `no compression route: RSV1 → 1002 ('${po.closeReason}')`);
  t.equal(po.frames.length, 0, 'and nothing came back');
  await drained(t, proxy, 'RSV1 without deflate');

  // The proxy keeps serving: a ws deflate client echoes.
  const ws = await connect(`${base}/z`, { perMessageDeflate: PMD });
  t.match(ws.extensions, /permessage-deflate/);
  await echoes(t, ws, 'still serving', false, 'after the violations');
  await echoesBurst(t, ws, similar(20, 'after'), 'after the violations');
  ws.close(1000);
  await closed(ws);
  await drained(t, proxy, 'violations');
});

// ------------------------------------------------------------------------------ 6. upstream declines

t.test('the upstream declines: the offer is not answered, messages flow uncompressed', async (t) => {
  const backend = await startDeflateBackend(false);
  t.teardown(backend.close);
  const { proxy, port, base } = await proxyFor(t, {
    limits: { maxFrameBytes: 4 * MiB },
    routes: [{ path: '/z', compression: true, upstreams: [{ url: backend.url }] }],
  });
  const ws = await connect(`${base}/z`, { perMessageDeflate: PMD });
  t.match(String(backend.requests.at(-1)!.headers['sec-websocket-extensions'] ?? ''), /permessage-deflate/, 'the offer reached the upstream');
  t.equal(ws.extensions, '', 'the upstream did not agree: the client’s offer is not answered');
  if (nativeCarries(proxy)) t.equal(proxy.stats().engine.native, 1, 'in the native engine');
  await echoes(t, ws, 'hello', false, 'text');
  await echoes(t, ws, randomBytes(70 * KiB), true, 'binary 70 KiB');
  const before = bytesRead(ws);
  await echoes(t, ws, 'a'.repeat(100_000), false, 'compressible text');
  t.ok(bytesRead(ws) - before >= 100_000, 'it came back uncompressed (nothing was agreed)');
  ws.close(1000);
  await closed(ws);

  // And a raw client's RSV1 frame is then a protocol error.
  const { head, peer } = await rawDeflateClient(port, '/z');
  t.equal(extensionsOf(head), '', 'raw client: no extension answered');
  await peer.send(cf(Op.Text, deflate('Hello'), { rsv: 4 }));
  t.equal((await peer.outcome(4000)).code, 1002, 'RSV1 when nothing was agreed → 1002');
  await drained(t, proxy, 'declined');
});

// ------------------------------------------------------------------------------ 7. memory

/** global.gc, or one obtained at run time (tap does not pass --expose-gc). */
function getGc(): (() => void) | null {
  const g = (globalThis as { gc?: () => void }).gc;
  if (typeof g === 'function') return g;
  try {
    v8.setFlagsFromString('--expose-gc');
    return vm.runInNewContext('gc') as () => void;
  } catch {
    return null;
  }
}

t.test('memory with deflate on: RSS per session above plain sessions', async (t) => {
  const N = 300;
  const gc = getGc();
  const settle = async () => {
    for (let i = 0; i < 2; i++) {
      gc?.();
      await sleep(100);
    }
  };
  const rss = () => process.memoryUsage.rss();
  const wsDeflate = await startDeflateBackend(PMD);
  const wsPlain = await startDeflateBackend(false);
  const raw = await startRawDeflateEcho();
  t.teardown(wsDeflate.close);
  t.teardown(wsPlain.close);
  t.teardown(raw.close);
  const { proxy, port, base } = await proxyFor(t, {
    limits: { maxFrameBytes: 4 * MiB },
    routes: [
      { path: '/wz', compression: true, upstreams: [{ url: wsDeflate.url }] },
      { path: '/wp', upstreams: [{ url: wsPlain.url }] },
      { path: '/rz', compression: true, upstreams: [{ url: raw.url }] },
      { path: '/rp', upstreams: [{ url: raw.url }] },
    ],
  });
  t.comment(`mode: ${modeName(proxy)}; gc ${gc ? 'available' : 'not available'}`);

  // A ws session: one 1 KiB text message each way (the echo), so both sides' inflaters
  // (and the peers' zlib streams) hold their state. Context takeover is on (the default).
  const openWs = async (path: string, deflateOn: boolean): Promise<() => void> => {
    const ws = await connect(`${base}${path}`, { perMessageDeflate: deflateOn ? PMD : false });
    if (deflateOn !== /permessage-deflate/.test(ws.extensions)) throw new Error(`${path}: extensions '${ws.extensions}'`);
    const msg = randomText(KiB);
    const got = nextMessage(ws, 10000);
    ws.send(msg);
    if ((await got).data.toString() !== msg) throw new Error(`${path}: bad echo`);
    return () => ws.terminate();
  };
  // A raw session: the client sends a pre-compressed text (RSV1) and the raw upstream sends
  // it back as its own compressed message; no zlib state anywhere but in the proxy.
  const rawPeers = (size: number) => {
    const msg = Buffer.from(randomText(size));
    const comp = deflate(msg);
    return async (path: string, deflateOn: boolean): Promise<() => void> => {
      const c: RawClient = await rawConnect(port, path, deflateOn ? 'Sec-WebSocket-Extensions: permessage-deflate\r\n' : '');
      if (deflateOn !== /permessage-deflate/i.test(c.head)) throw new Error(`${path}: head ${c.head}`);
      c.write(cf(Op.Text, deflateOn ? comp : msg, { rsv: deflateOn ? 4 : 0 }));
      await until(() => c.frames.length >= 1, 10000, `${path}: echo`);
      return () => c.destroy();
    };
  };
  const openMany = async (n: number, one: () => Promise<() => void>) => {
    const closers: Array<() => void> = [];
    for (let i = 0; i < n; i += 100) {
      closers.push(...(await Promise.all(Array.from({ length: Math.min(100, n - i) }, one))));
    }
    return closers;
  };
  const closeAll = async (closers: Array<() => void>, what: string) => {
    for (const c of closers) c();
    await until(() => proxy.stats().sessions === 0, 10000, `${what}: sessions end`);
  };
  /** Opens `n` plain sessions, then `n` deflate ones (both kept open): each batch's RSS growth. */
  const measure = async (open: (path: string, deflateOn: boolean) => Promise<() => void>, plainPath: string, deflatePath: string, what: string) => {
    // Warm-up: one-time costs (code, pools, first zlib use) out of the figures.
    await closeAll([...(await openMany(30, () => open(plainPath, false))), ...(await openMany(30, () => open(deflatePath, true)))], `${what} warm-up`);
    await settle();
    const r0 = rss();
    const plain = await openMany(N, () => open(plainPath, false));
    await settle();
    const r1 = rss();
    const deflated = await openMany(N, () => open(deflatePath, true));
    await settle();
    const r2 = rss();
    t.equal(proxy.stats().sessions, 2 * N, `${what}: ${N} plain and ${N} deflate sessions open`);
    if (nativeCarries(proxy)) t.equal(proxy.stats().engine.native, 2 * N, `${what}: all ${2 * N} in the native engine`);
    await closeAll([...plain, ...deflated], what);
    const plainPer = (r1 - r0) / N / KiB;
    const deflatePer = (r2 - r1) / N / KiB;
    return { plainPer, deflatePer, above: deflatePer - plainPer };
  };

  // Under SLUICE_ACCEPT=node the plain sessions are adopted by the native engine while the
  // deflate ones stay on the TypeScript engine: there the figures also compare the engines.
  if (NODE_ACCEPT) t.comment('SLUICE_ACCEPT=node: deflate sessions on the TypeScript engine, plain ones in the native engine');
  const t0 = Date.now();
  const w = await measure(openWs, '/wp', '/wz', 'ws peers');
  t.comment(`ws peers (proxy + ws client + ws upstream, all in this process): plain ${w.plainPer.toFixed(1)} KiB/session, ` +
    `deflate ${w.deflatePer.toFixed(1)} KiB/session`);
  t.comment(`deflate: ${w.above.toFixed(1)} KiB per session above plain (proxy + both ws peers' zlib streams, context takeover, ${modeName(proxy)})`);
  const r = await measure(rawPeers(KiB), '/rp', '/rz', 'raw peers');
  t.comment(`raw peers (no zlib outside the proxy): plain ${r.plainPer.toFixed(1)} KiB/session, deflate ${r.deflatePer.toFixed(1)} KiB/session`);
  t.comment(`deflate: ${r.above.toFixed(1)} KiB per session above plain (the proxy's part only: both sides' inflaters after 1 KiB each way, context takeover, ${modeName(proxy)})`);
  // RSS counts pages touched: after 1 KiB the inflaters' 32 KiB windows are mostly untouched.
  // One 48 KiB message each way fills both windows (what a long-lived session reaches).
  const f = await measure(rawPeers(48 * KiB), '/rp', '/rz', 'raw peers, 48 KiB');
  t.comment(`raw peers, 48 KiB each way: plain ${f.plainPer.toFixed(1)} KiB/session, deflate ${f.deflatePer.toFixed(1)} KiB/session`);
  t.comment(`deflate: ${f.above.toFixed(1)} KiB per session above plain (the proxy's part only, windows full: 48 KiB each way, context takeover, ${modeName(proxy)})`);
  t.comment(`memory case took ${Date.now() - t0} ms`);
  // Loose bounds: the point is the figure. The proxy's part is two inflaters (about 7 KiB
  // of zlib state and a 32 KiB window each); the ws figure adds four zlib streams of the
  // peers (two deflaters of up to about 256 KiB each with the default memLevel).
  // Under ASan (scripts/test-asan.sh) RSS also holds its quarantine of freed memory and the
  // redzones around every allocation (seen: 527 KiB for the second figure): the bounds are
  // checked in the plain runs, the ASan run checks the memory safety of the same sessions.
  if (/libasan/.test(process.env.LD_PRELOAD ?? '')) {
    t.comment('under ASan: the RSS bounds are not checked here (its allocator holds freed memory)');
  } else {
    t.ok(r.above < 400, `the proxy's part: ${r.above.toFixed(1)} KiB per deflate session above plain (< 400 KiB)`);
    t.ok(f.above < 400, `the proxy's part, windows full: ${f.above.toFixed(1)} KiB per deflate session above plain (< 400 KiB)`);
    t.ok(w.above < 2048, `with the ws peers: ${w.above.toFixed(1)} KiB per deflate session above plain (< 2 MiB)`);
  }
  await drained(t, proxy, 'memory');
});
