/**
 * The transparent data plane end to end: real `ws` clients and backends on loopback,
 * sluice in this process. Runs with the native codec and with SLUICE_NO_NATIVE=1.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { WebSocket } from 'ws';
import { createProxy, type Proxy } from '../src/index.js';
import type { ProxyConfigInput } from '../src/config/index.js';
import { closed, connect, deadPort, nextMessage, startRawServer, startRawWsUpstream, startWsBackend, until, upgradeStatus } from './fixtures/peers.js';

async function proxyFor(t: Test, config: ProxyConfigInput): Promise<{ proxy: Proxy; base: string }> {
  const proxy = createProxy({ listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, ...config });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 200 }));
  return { proxy, base: `ws://127.0.0.1:${port}` };
}

const refusal = upgradeStatus;

t.test('echo keeps message types, through a ws backend', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { base, proxy } = await proxyFor(t, { routes: [{ path: '/echo', upstreams: [{ url: backend.url }] }] });
  const ws = await connect(`${base}/echo`);
  ws.send('hello');
  const m1 = await nextMessage(ws);
  t.equal(m1.data.toString(), 'hello');
  t.equal(m1.isBinary, false, 'text stays text');
  const bin = Buffer.from([0, 1, 2, 255, 254]);
  ws.send(bin);
  const m2 = await nextMessage(ws);
  t.same(m2.data, bin);
  t.equal(m2.isBinary, true, 'binary stays binary');
  // Sizes around the frame-length boundaries.
  for (const n of [0, 125, 126, 65535, 65536, 200_000]) {
    const payload = Buffer.alloc(n, n % 251);
    ws.send(payload);
    const m = await nextMessage(ws);
    t.equal(m.data.length, n, `${n} bytes round trip`);
    t.ok(m.data.equals(payload), `${n} bytes intact`);
  }
  // Many messages in one burst arrive in order.
  for (let i = 0; i < 500; i++) ws.send(`m${i}`);
  const got: string[] = [];
  await new Promise<void>((resolve) => {
    ws.on('message', (d) => {
      got.push(d.toString());
      if (got.length === 500) resolve();
    });
  });
  t.same(got, Array.from({ length: 500 }, (_, i) => `m${i}`), 'burst in order');
  ws.close(1000);
  await closed(ws);
  await until(() => proxy.sessions.size === 0, 3000, 'session end');
  t.equal(proxy.counters.sessionsTotal, 1);
});

t.test('path mapping and query string', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { base } = await proxyFor(t, {
    routes: [
      { path: '/chat', upstreams: [{ url: `ws://127.0.0.1:${backend.port}/ws` }] },
      { path: '/api/*', upstreams: [{ url: `ws://127.0.0.1:${backend.port}/base` }] },
    ],
  });
  for (const [from, to] of [
    ['/chat?x=1', '/ws?x=1'],
    ['/api/a/b', '/base/a/b'],
    ['/api', '/base'],
    ['/api/a?q=2&r=3', '/base/a?q=2&r=3'],
  ]) {
    const ws = await connect(base + from);
    t.equal(backend.requests.at(-1)!.url, to, `${from} → ${to}`);
    ws.close();
    await closed(ws);
  }
  t.equal(await refusal(connect(`${base}/apix`)), 404, 'prefix matches whole segments only');
  t.equal(await refusal(connect(`${base}/nope`)), 404, 'no route → 404');
});

t.test('subprotocols negotiated end to end; headers forwarded, hop-by-hop dropped', async (t) => {
  const backend = await startWsBackend({ handleProtocols: (p) => (p.has('b.v2') ? 'b.v2' : false) });
  t.teardown(backend.close);
  const { base } = await proxyFor(t, { routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });
  const ws = await connect(`${base}/x`, {
    protocols: ['a.v1', 'b.v2'],
    headers: {
      Origin: 'https://app.example',
      Cookie: 'sid=42',
      Authorization: 'Bearer tok',
      'User-Agent': 'sluice-test',
      'X-Custom': 'yes',
      'Keep-Alive': 'timeout=5',
      'X-Forwarded-For': '10.1.2.3',
    },
  });
  t.equal(ws.protocol, 'b.v2', 'the upstream’s pick reaches the client');
  const req = backend.requests.at(-1)!;
  t.equal(req.headers['sec-websocket-protocol'], 'a.v1, b.v2', 'all offered subprotocols reach the upstream');
  t.equal(req.headers.origin, 'https://app.example');
  t.equal(req.headers.cookie, 'sid=42');
  t.equal(req.headers.authorization, 'Bearer tok');
  t.equal(req.headers['user-agent'], 'sluice-test');
  t.equal(req.headers['x-custom'], 'yes');
  t.equal(req.headers['keep-alive'], undefined, 'hop-by-hop dropped');
  t.equal(req.headers['x-forwarded-for'], '10.1.2.3, 127.0.0.1', 'XFF appended');
  t.equal(req.headers['x-real-ip'], '127.0.0.1');
  t.equal(req.headers['x-forwarded-proto'], 'http');
  t.match(req.headers['x-forwarded-host'], /^127\.0\.0\.1:\d+$/);
  ws.close();
  await closed(ws);
});

t.test('handshake refusals: 403 origin, 502 unreachable, 4xx pass-through, 504 slow, 503 full, 400 bad upgrade', async (t) => {
  const dead = await deadPort();
  const refusing = await startWsBackend({ verifyClient: (_i, cb) => cb(false, 401, 'Unauthorized') });
  t.teardown(refusing.close);
  const silent = await startRawServer(() => {}); // accepts, never answers
  t.teardown(silent.close);
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { base, proxy } = await proxyFor(t, {
    origins: ['https://good.example'],
    limits: { upstreamTimeoutMs: 300, maxConnections: 2 },
    routes: [
      { path: '/dead', upstreams: [{ url: `ws://127.0.0.1:${dead}/` }] },
      { path: '/refuse', upstreams: [{ url: refusing.url }] },
      { path: '/slow', upstreams: [{ url: silent.url }] },
      { path: '/ok', upstreams: [{ url: backend.url }] },
    ],
  });
  const good = { headers: { Origin: 'https://good.example' } };
  t.equal(await refusal(connect(`${base}/ok`, { headers: { Origin: 'https://evil.example' } })), 403);
  t.equal(await refusal(connect(`${base}/ok`)), 403, 'no Origin is not an allowed origin');
  t.equal(await refusal(connect(`${base}/dead`, good)), 502);
  t.equal(await refusal(connect(`${base}/refuse`, good)), 401, 'upstream’s own 4xx passes through');
  const t0 = Date.now();
  t.equal(await refusal(connect(`${base}/slow`, good)), 504);
  t.ok(Date.now() - t0 < 3000, '504 comes after the upstream timeout');
  const a = await connect(`${base}/ok`, good);
  const b = await connect(`${base}/ok`, good);
  t.equal(await refusal(connect(`${base}/ok`, good)), 503, 'max connections → 503');
  a.close();
  b.close();
  await Promise.all([closed(a), closed(b)]);
  // Malformed upgrades → 400: a bad Sec-WebSocket-Version, and a Connection header without
  // "upgrade" (RFC 6455 §4.2.1). A Connection header with more tokens than "upgrade" is fine.
  const port = Number(new URL(base).port);
  const statusLine = (connection: string, version: string) => new Promise<string>((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.write(`GET /ok HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: ${connection}\r\nOrigin: https://good.example\r\n` +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: ${version}\r\n\r\n`);
    });
    s.once('data', (d) => {
      resolve(d.toString().split('\r\n')[0]);
      s.destroy();
    });
  });
  t.match(await statusLine('Upgrade', '8'), /^HTTP\/1\.1 400/, 'bad version');
  t.match(await statusLine('close', '13'), /^HTTP\/1\.1 400/, 'Connection: close');
  t.match(await statusLine('keep-alive', '13'), /^HTTP\/1\.1 400/, 'Connection: keep-alive');
  await until(() => proxy.stats().sessions === 0); // a and b are gone, so maxConnections allows this one
  t.match(await statusLine('keep-alive, Upgrade', '13'), /^HTTP\/1\.1 101/, 'Connection: keep-alive, Upgrade');
});

t.test('close codes and reasons pass both ways unchanged', async (t) => {
  let backendWs: WebSocket | undefined;
  const backend = await startWsBackend({ onConnection: (ws) => (backendWs = ws) });
  t.teardown(backend.close);
  const { base } = await proxyFor(t, { routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });

  // Client → upstream, and the upstream's reply back to the client.
  const codes = [[1000, 'bye'], [1001, 'away'], [1012, 'restart'], [1013, 'later'], [1014, 'bad gateway'], [3000, 'registered'],
    [3999, ''], [4001, 'custom app code'], [4999, ''], [1011, 'oops'], [1008, 'policy']] as const;
  for (const [code, reason] of codes) {
    const ws = await connect(`${base}/c`);
    await until(() => backendWs !== undefined && backendWs.readyState === WebSocket.OPEN);
    const seen = closed(backendWs!);
    const reply = closed(ws);
    ws.close(code, reason);
    t.same(await seen, { code, reason }, `client ${code} reaches the upstream`);
    t.equal((await reply).code, code, `the upstream's reply (${code}) reaches the client`);
    backendWs = undefined;
  }
  // Upstream → client.
  for (const [code, reason] of [[1000, ''], [4999, 'app says no'], [1008, 'policy'], [1012, 'restart'], [3000, 'x']] as const) {
    const ws = await connect(`${base}/c`);
    await until(() => backendWs !== undefined);
    const seen = closed(ws);
    backendWs!.close(code, reason);
    t.same(await seen, { code, reason }, `upstream ${code} reaches the client`);
    backendWs = undefined;
  }
  // No code: 1005 on both sides, never on the wire.
  const ws = await connect(`${base}/c`);
  await until(() => backendWs !== undefined);
  const seen = closed(backendWs!);
  ws.close();
  t.equal((await seen).code, 1005, 'a close without code arrives without code');
});

t.test('an upstream that vanishes mid-session → 1014; invalid frames → 1014', async (t) => {
  let backendWs: WebSocket | undefined;
  const backend = await startWsBackend({ onConnection: (ws) => (backendWs = ws) });
  t.teardown(backend.close);
  const { base } = await proxyFor(t, { routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });
  const ws = await connect(`${base}/v`);
  await until(() => backendWs !== undefined);
  const seen = closed(ws);
  backendWs!.terminate();
  t.equal((await seen).code, 1014);

  // Raw upstream that completes the handshake, then sends a good frame and a reserved
  // opcode in one packet: the good one is still delivered, then the session ends.
  const raw = await startRawWsUpstream((s) =>
    setTimeout(() => s.write(Buffer.concat([Buffer.from([0x81, 0x05]), Buffer.from('hello'), Buffer.from([0x83, 0x00])])), 50));
  t.teardown(raw.close);
  const { base: base2 } = await proxyFor(t, { routes: [{ path: '/*', upstreams: [{ url: raw.url }] }] });
  const ws2 = await connect(`${base2}/g`);
  const got: string[] = [];
  ws2.on('message', (d) => got.push(d.toString()));
  t.equal((await closed(ws2)).code, 1014, 'garbage from the upstream → 1014');
  t.same(got, ['hello'], 'the frame before the bad one is delivered');
});

t.test('messages over maxFrameBytes → 1009 to the sender, both directions', async (t) => {
  let backendWs: WebSocket | undefined;
  let backendClose: Promise<{ code: number; reason: string }> | undefined;
  const backend = await startWsBackend({
    onConnection: (ws) => {
      backendWs = ws;
      backendClose = closed(ws);
      ws.on('message', (d, isBinary) => ws.send(d as Buffer, { binary: isBinary }));
    },
  });
  t.teardown(backend.close);
  const { base, proxy } = await proxyFor(t, { limits: { maxFrameBytes: 1000 }, routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });
  // Client sends too much.
  const ws = await connect(`${base}/l`);
  ws.send(Buffer.alloc(1000, 1)); // at the limit: fine
  t.equal((await nextMessage(ws)).data.length, 1000);
  ws.send(Buffer.alloc(1001, 1));
  t.equal((await closed(ws)).code, 1009, 'client gets 1009');
  t.equal((await backendClose!).code, 1009, 'upstream is told (1009)');
  t.ok(proxy.counters.dropped.too_big >= 1);
  // Upstream sends too much.
  backendWs = undefined;
  const ws2 = await connect(`${base}/l`);
  await until(() => backendWs !== undefined);
  const c2 = closed(ws2);
  backendWs!.send(Buffer.alloc(5000, 2));
  const seen = await c2;
  t.equal(seen.code, 1009, 'client told with 1009');
  t.match(seen.reason, /upstream/);
  t.equal((await backendClose!).code, 1009, 'upstream gets 1009');
});

t.test('fragmented upstream messages reach the client whole', async (t) => {
  const backend = await startWsBackend({
    onConnection: (ws) => {
      ws.send('Hel', { fin: false });
      ws.send('lo ', { fin: false });
      ws.send('world', { fin: true });
      ws.send(Buffer.alloc(70_000, 7), { fin: false, binary: true });
      ws.ping(); // control frame inside a fragmented message
      ws.send(Buffer.alloc(30_000, 8), { fin: true, binary: true });
    },
  });
  t.teardown(backend.close);
  const { base } = await proxyFor(t, { routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });
  const ws = new WebSocket(`${base}/f`);
  const msgs: Array<{ data: Buffer; isBinary: boolean }> = [];
  ws.on('message', (d, isBinary) => msgs.push({ data: Buffer.from(d as Buffer), isBinary }));
  await until(() => msgs.length === 2, 5000, 'two messages');
  t.equal(msgs[0].data.toString(), 'Hello world');
  t.equal(msgs[0].isBinary, false);
  t.equal(msgs[1].data.length, 100_000);
  t.equal(msgs[1].data[69_999], 7);
  t.equal(msgs[1].data[70_000], 8);
  ws.close();
  await closed(ws);
});

t.test('ping/pong answered per hop', async (t) => {
  let backendWs: WebSocket | undefined;
  const backend = await startWsBackend({ onConnection: (ws) => (backendWs = ws) });
  t.teardown(backend.close);
  const { base } = await proxyFor(t, { routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });
  const ws = await connect(`${base}/p`);
  await until(() => backendWs !== undefined);
  const pong = new Promise<Buffer>((r) => ws.once('pong', r));
  ws.ping('c-ping');
  t.equal((await pong).toString(), 'c-ping', 'the proxy answers the client’s ping');
  const upPong = new Promise<Buffer>((r) => backendWs!.once('pong', r));
  backendWs!.ping('u-ping');
  t.equal((await upPong).toString(), 'u-ping', 'the proxy answers the upstream’s ping');
  ws.close();
  await closed(ws);
});

t.test('heartbeat: a silent upstream is closed after the pong timeout, the client told 1014', async (t) => {
  const raw = await startRawWsUpstream((s) => s.on('data', () => {})); // reads, never answers
  t.teardown(raw.close);
  const { base } = await proxyFor(t, { heartbeat: { pingIntervalSeconds: 1, pongTimeoutSeconds: 2 }, routes: [{ path: '/*', upstreams: [{ url: raw.url }] }] });
  const ws = await connect(`${base}/h`);
  const t0 = Date.now();
  const seen = await closed(ws, 8000);
  t.equal(seen.code, 1014);
  t.match(seen.reason, /heartbeat/);
  t.ok(Date.now() - t0 >= 1950, `not before the timeout (${Date.now() - t0} ms)`);
});

t.test('backpressure upstream → client: a client that does not read pauses the upstream', async (t) => {
  let backendWs: WebSocket | undefined;
  const backend = await startWsBackend({ onConnection: (ws) => (backendWs = ws) });
  t.teardown(backend.close);
  const { base, proxy } = await proxyFor(t, { limits: { highWaterMark: 256 * 1024 }, routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });
  const ws = await connect(`${base}/b`);
  (ws as unknown as { _socket: net.Socket })._socket.pause(); // the client stops reading
  await until(() => backendWs !== undefined);
  const chunk = Buffer.alloc(64 * 1024, 1);
  const rss = process.memoryUsage().rss;
  // Flood until the backend's own socket buffers (TCP backpressure reached it).
  let sent = 0;
  for (let i = 0; i < 2000 && backendWs!.bufferedAmount < 4 * 1024 * 1024; i++) {
    backendWs!.send(chunk);
    sent += chunk.length;
    if (i % 16 === 0) await new Promise((r) => setTimeout(r, 5));
  }
  t.ok(backendWs!.bufferedAmount >= 4 * 1024 * 1024, 'backend sees backpressure (its buffer fills)');
  const session = [...proxy.sessions][0];
  const flow = session.flow()!;
  t.ok(flow.upstreamPaused, 'the upstream socket is paused');
  // What sluice holds for this client stays near the high-water mark, not what was sent.
  const held = flow.clientPending;
  t.ok(held < 256 * 1024 + 2 * chunk.length, `sluice holds ${held} B for the client`);
  // Resume the client: every byte sent arrives, in order, nothing lost.
  let bytes = 0;
  ws.on('message', (d) => (bytes += (d as Buffer).length));
  (ws as unknown as { _socket: net.Socket })._socket.resume();
  await until(() => bytes === sent, 20000, 'every byte delivered');
  t.equal(bytes, sent, `all ${sent} bytes delivered`);
  t.ok(process.memoryUsage().rss - rss < 256 * 1024 * 1024, 'memory stayed bounded');
  ws.close();
  await closed(ws);
});

t.test('backpressure client → upstream: close policy answers 1013, drop policy counts', async (t) => {
  // An upstream that completes the handshake and then never reads.
  const raw = await startRawWsUpstream((s) => s.pause());
  t.teardown(raw.close);
  const { base, proxy } = await proxyFor(t, {
    limits: { channelCapacity: 10, channelBytes: 1024 * 1024 },
    routes: [
      { path: '/close', backpressure: 'close', upstreams: [{ url: raw.url }] },
      { path: '/drop', backpressure: 'drop', upstreams: [{ url: raw.url }] },
    ],
  });
  const payload = Buffer.alloc(64 * 1024, 3);
  const ws = await connect(`${base}/close`);
  const seen = closed(ws, 15000);
  // One bounded burst (8 MiB, well past capacity), then silence: a client still flooding
  // when the proxy closes makes the kernel reset the connection (unread data), and the
  // close frame can be lost to the reset; that is TCP, not the policy under test.
  for (let i = 0; i < 128; i++) ws.send(payload);
  t.equal((await seen).code, 1013, 'slow upstream under the close policy → 1013');

  const ws2 = await connect(`${base}/drop`);
  const flood2 = setInterval(() => {
    if (ws2.readyState === WebSocket.OPEN) for (let i = 0; i < 16; i++) ws2.send(payload);
  }, 5);
  await until(() => proxy.counters.dropped.backpressure > 0, 10000, 'drops counted');
  clearInterval(flood2);
  t.equal(ws2.readyState, WebSocket.OPEN, 'drop policy keeps the session');
  t.ok(proxy.counters.dropped.backpressure > 0);
  ws2.terminate();
});

t.test('permessage-deflate per route, passed through; the limit applies to the inflated size', async (t) => {
  // The upstream agrees to compression (ws with perMessageDeflate): compressed frames pass through.
  const backend = await startWsBackend({ perMessageDeflate: true });
  t.teardown(backend.close);
  const { base } = await proxyFor(t, {
    limits: { maxFrameBytes: 100_000 },
    routes: [
      { path: '/z', compression: true, upstreams: [{ url: backend.url }] },
      { path: '/plain', upstreams: [{ url: backend.url }] },
    ],
  });
  const ws = await connect(`${base}/z`, { perMessageDeflate: true });
  t.match(ws.extensions, /permessage-deflate/, 'negotiated on a compression route');
  ws.send('x'.repeat(50_000));
  t.equal((await nextMessage(ws)).data.length, 50_000);
  ws.send('y'.repeat(150_000)); // compresses to a few hundred bytes, inflates past the limit
  t.equal((await closed(ws)).code, 1009);
  const ws2 = await connect(`${base}/plain`, { perMessageDeflate: true });
  t.equal(ws2.extensions, '', 'not negotiated where the route does not allow it');
  ws2.close();
  await closed(ws2);
});

t.test('balancing: round robin, least_conn, ip_hash, header hash; failover to the next upstream', async (t) => {
  const a = await startWsBackend();
  const b = await startWsBackend();
  t.teardown(a.close);
  t.teardown(b.close);
  const dead = await deadPort();
  const { base } = await proxyFor(t, {
    routes: [
      { path: '/rr', balance: 'round_robin', upstreams: [{ url: a.url }, { url: b.url }] },
      { path: '/lc', balance: 'least_conn', upstreams: [{ url: a.url }, { url: b.url }] },
      { path: '/ip', balance: 'ip_hash', upstreams: [{ url: a.url }, { url: b.url }] },
      { path: '/hh', balance: 'header:x-user', upstreams: [{ url: a.url }, { url: b.url }] },
      { path: '/fo', upstreams: [{ url: `ws://127.0.0.1:${dead}/` }, { url: a.url }] },
    ],
  });
  const open: WebSocket[] = [];
  t.teardown(() => open.forEach((w) => w.terminate()));
  const count = () => [a.requests.length, b.requests.length];
  for (let i = 0; i < 4; i++) open.push(await connect(`${base}/rr`));
  t.same(count(), [2, 2], 'round robin alternates');
  // least_conn: a has 2 + the new ones; close b's sessions so b is least loaded.
  const before = count();
  for (let i = 0; i < 2; i++) open.push(await connect(`${base}/lc`));
  const after = count();
  t.equal(after[0] - before[0] + after[1] - before[1], 2);
  const start = count();
  for (let i = 0; i < 4; i++) open.push(await connect(`${base}/ip`));
  const ipDelta = [a.requests.length - start[0], b.requests.length - start[1]];
  t.ok(ipDelta[0] === 4 || ipDelta[1] === 4, 'ip_hash is sticky');
  const s2 = count();
  for (let i = 0; i < 3; i++) open.push(await connect(`${base}/hh`, { headers: { 'x-user': 'alice' } }));
  const hhDelta = [a.requests.length - s2[0], b.requests.length - s2[1]];
  t.ok(hhDelta[0] === 3 || hhDelta[1] === 3, 'header hash is sticky');
  const s3 = a.requests.length;
  const ws = await connect(`${base}/fo`);
  open.push(ws);
  t.equal(a.requests.length, s3 + 1, 'a dead upstream is skipped for the next one');
  ws.send('still works');
  t.equal((await nextMessage(ws)).data.toString(), 'still works');
});

t.test('least_conn prefers the upstream with fewer live sessions', async (t) => {
  const a = await startWsBackend();
  const b = await startWsBackend();
  t.teardown(a.close);
  t.teardown(b.close);
  const { base, proxy } = await proxyFor(t, { routes: [{ path: '/lc', balance: 'least_conn', upstreams: [{ url: a.url }, { url: b.url }] }] });
  const first = await connect(`${base}/lc`); // → a (tie → first)
  const second = await connect(`${base}/lc`); // → b
  t.same([a.requests.length, b.requests.length], [1, 1]);
  // b's session ends: b has 0, a has 1, so the next one must go to b. (Closing a's would
  // prove nothing: a tie also goes to a.)
  second.close();
  await closed(second);
  await until(() => proxy.stats().routes[0].upstreams[1].sessions === 0, 3000, 'b released');
  t.same(proxy.stats().routes[0].upstreams.map((u) => u.sessions), [1, 0]);
  const third = await connect(`${base}/lc`);
  t.same([a.requests.length, b.requests.length], [1, 2], 'the least loaded upstream gets it');
  first.terminate();
  third.terminate();
});

t.test('graceful drain: sessions get 1001, new upgrades get 503, close() resolves', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const proxy = createProxy({ listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });
  const { port } = await proxy.listen();
  const ws = await connect(`ws://127.0.0.1:${port}/d`);
  // A second session whose upstream never answers our close keeps the drain going.
  const deaf = await startRawWsUpstream((s) => s.on('data', () => {}));
  t.teardown(deaf.close);
  await proxy.reload({ listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, routes: [
    { path: '/d', upstreams: [{ url: backend.url }] }, { path: '/deaf', upstreams: [{ url: deaf.url }] }] });
  const ws2 = await connect(`ws://127.0.0.1:${port}/deaf`);
  const seen = closed(ws);
  const seen2 = closed(ws2);
  const t0 = Date.now();
  const closing = proxy.close({ drainMs: 1500 });
  t.equal((await seen).code, 1001, 'sessions get 1001');
  t.equal((await seen2).code, 1001);
  t.equal(await refusal(connect(`ws://127.0.0.1:${port}/d`)), 503, 'new upgrades get 503 while draining');
  await closing;
  t.ok(Date.now() - t0 < 4000, 'the drain ends by its timeout');
  await t.rejects(connect(`ws://127.0.0.1:${port}/d`), 'nothing listens after close');
  t.equal(proxy.sessions.size, 0);
});

t.test('the built-in default routes /echo to a built-in echo upstream', async (t) => {
  const { base } = await proxyFor(t, {});
  const ws = await connect(`${base}/echo`);
  ws.send('hi');
  t.equal((await nextMessage(ws)).data.toString(), 'hi');
  ws.close();
  await closed(ws);
});

t.test('a uWS backend works as well as a ws one', async (t) => {
  const { startEchoServer } = await import('../src/proxy/echo.js');
  const echo = await startEchoServer(1 << 20);
  t.teardown(() => echo.close());
  const { base } = await proxyFor(t, { routes: [{ path: '/*', upstreams: [{ url: `ws://127.0.0.1:${echo.port}/` }] }] });
  const ws = await connect(`${base}/u`);
  const big = Buffer.alloc(300_000, 9);
  ws.send(big);
  t.ok((await nextMessage(ws)).data.equals(big));
  ws.close();
  await closed(ws);
});
