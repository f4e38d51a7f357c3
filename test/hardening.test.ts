/**
 * Hardening end to end: bad clients written as raw bytes after a real handshake, upstream
 * faults, access control before any dial, connection and message limits, handshake
 * timeout and header limits. In every case the one connection at fault is closed and the
 * process and every other session carry on (a healthy session echoes after each case).
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { createHash } from 'node:crypto';
import { SignJWT } from 'jose';
import { WebSocket } from 'ws';
import { createProxy, type Proxy } from '../src/index.js';
import type { ProxyConfigInput } from '../src/config/index.js';
import { closed, connect, deadPort, nextMessage, startRawServer, startRawWsUpstream, startWsBackend, until, upgradeStatus } from './fixtures/peers.js';
import { clientFrame, rawConnect } from './fixtures/raw-client.js';

async function proxyFor(t: Test, config: ProxyConfigInput): Promise<{ proxy: Proxy; port: number; base: string }> {
  const proxy = createProxy({ listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, ...config });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 200 }));
  return { proxy, port, base: `ws://127.0.0.1:${port}` };
}

const status = upgradeStatus;

/** Writes `request` on a raw socket; resolves with the status line (or '' when none) and how long until the socket closed. */
function rawRequest(port: number, request: string | string[], opts: { gapMs?: number; waitMs?: number } = {}): Promise<{ statusLine: string; closedAfterMs: number }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    let trickle: NodeJS.Timeout | null = null;
    s.on('error', () => {});
    s.on('data', (d) => (got += d.toString('latin1')));
    const parts = Array.isArray(request) ? [...request] : [request];
    s.on('connect', () => {
      s.write(parts.shift()!);
      if (parts.length > 0) {
        trickle = setInterval(() => {
          if (parts.length > 0 && !s.destroyed) s.write(parts.shift()!);
        }, opts.gapMs ?? 500);
      }
    });
    const timer = setTimeout(() => s.destroy(), opts.waitMs ?? 15_000);
    s.on('close', () => {
      clearTimeout(timer);
      if (trickle) clearInterval(trickle);
      resolve({ statusLine: got.split('\r\n')[0], closedAfterMs: Date.now() - t0 });
    });
  });
}

const upgradeHead = (path: string, extra = '') =>
  `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
  `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`;

t.test('bad client input closes that one connection; the process and other sessions carry on', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { proxy, port, base } = await proxyFor(t, {
    // 2 000 messages/s: far above the healthy session's use, far below a flood.
    limits: { maxFrameBytes: 1000, messagesPerSecond: 2000 },
    routes: [{ path: '/*', upstreams: [{ url: backend.url }] }],
  });
  const healthy = await connect(`${base}/healthy`);
  t.teardown(() => healthy.terminate());
  let round = 0;
  const stillEchoes = async (what: string) => {
    const text = `ping ${round++}`;
    healthy.send(text);
    t.equal((await nextMessage(healthy)).data.toString(), text, `${what}: the healthy session still echoes`);
    await until(() => proxy.sessions.size === 1, 5000, `${what}: the bad session ended`);
  };

  // Every violation gets a close frame with its code (never a bare drop), the TCP connection
  // ends promptly, and the upstream is told: 1001 for a protocol error, 1009 for size.
  const violations: Array<[string, Buffer, number, number]> = [
    ['garbage after the handshake', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), 1002, 1001],
    ['reserved opcode', clientFrame(0x3, Buffer.from('x')), 1002, 1001],
    ['RSV1 without an extension', clientFrame(0x1, Buffer.from('x'), { rsv: 4 }), 1002, 1001],
    ['unmasked frame', clientFrame(0x2, Buffer.alloc(8, 0x41), { masked: false }), 1002, 1001],
    ['64-bit length of 2^40', clientFrame(0x2, Buffer.alloc(16), { len: 1n << 40n }), 1009, 1009],
    ['64-bit length with the top bit set', clientFrame(0x2, Buffer.alloc(16), { len: 1n << 63n }), 1002, 1001],
    ['message over 2 × maxFrameBytes', clientFrame(0x2, Buffer.alloc(2500)), 1009, 1009],
    ['continuation with no message', clientFrame(0x0, Buffer.from('x')), 1002, 1001],
    ['new message inside a fragmented one', Buffer.concat([clientFrame(0x1, Buffer.from('a'), { fin: false }), clientFrame(0x1, Buffer.from('b'))]), 1002, 1001],
    ['control frame over 125 bytes', clientFrame(0x9, Buffer.alloc(126)), 1002, 1001],
    ['fragmented control frame', clientFrame(0x9, Buffer.alloc(1), { fin: false }), 1002, 1001],
    ['invalid UTF-8 in a text message', clientFrame(0x1, Buffer.from([0x63, 0xc3, 0x28])), 1007, 1001],
    ['fragment flood (3 000 one-byte fragments)', Buffer.concat([
      clientFrame(0x2, Buffer.alloc(1), { fin: false }),
      ...Array.from({ length: 3000 }, () => clientFrame(0x0, Buffer.alloc(1), { fin: false })),
    ]), 1009, 1009],
  ];
  for (const [what, bytes, clientCode, upstreamCode] of violations) {
    const before = backend.sockets.size;
    const c = await rawConnect(port, '/bad');
    await until(() => backend.sockets.size === before + 1, 3000, `${what}: upstream leg open`);
    const upstreamWs = [...backend.sockets].at(-1)!;
    const upstreamSaw = closed(upstreamWs);
    const t0 = Date.now();
    c.write(bytes);
    const o = await c.outcome(5000);
    t.same({ closeCode: o.closeCode, ended: o.ended }, { closeCode: clientCode, ended: true }, `${what}: close frame ${clientCode}, then the TCP end`);
    t.ok(Date.now() - t0 < 3000, `${what}: closed within ${Date.now() - t0} ms`);
    t.equal((await upstreamSaw).code, upstreamCode, `${what}: upstream told ${upstreamCode}`);
    await stillEchoes(what);
  }

  {
    const c = await rawConnect(port, '/bad');
    c.write(clientFrame(0x2, Buffer.alloc(1500, 1)));
    const o = await c.outcome();
    t.equal(o.closeCode, 1009, 'a message over maxFrameBytes → 1009');
    await stillEchoes('1009');
  }
  {
    const c = await rawConnect(port, '/bad');
    c.write(clientFrame(0x2, Buffer.alloc(0)));
    c.write(clientFrame(0x1, Buffer.alloc(0)));
    c.write(clientFrame(0x9, Buffer.alloc(0)));
    await until(() => c.frames.length >= 3, 5000, 'the echoes and the pong'); // then close
    c.write(clientFrame(0x8, Buffer.alloc(0)));
    const o = await c.outcome();
    t.ok(o.frames.some((f) => f.opcode === 0x2 && f.payload.length === 0), 'a zero-length binary message is echoed');
    t.ok(o.frames.some((f) => f.opcode === 0x1 && f.payload.length === 0), 'a zero-length text message is echoed');
    t.ok(o.frames.some((f) => f.opcode === 0xa && f.payload.length === 0), 'a zero-length ping gets a pong');
    t.equal(o.closeCode, 1005, 'a zero-length close is answered with a close without a code');
    await stillEchoes('zero-length frames');
  }
  {
    const c = await rawConnect(port, '/bad');
    c.write(Buffer.concat(Array.from({ length: 5000 }, () => clientFrame(0x9, Buffer.alloc(125)))));
    const o = await c.outcome(5000);
    t.equal(o.closeCode, 1008, 'ping flood (5 000 pings at once) over limits.messagesPerSecond → 1008');
    await stillEchoes('ping flood');
  }
  healthy.close();
  await closed(healthy);
});

t.test('upstream faults: refused → 502, silent → 504, wrong accept → 502, garbage → 1014, vanishes mid-message → 1014', async (t) => {
  const dead = await deadPort();
  const silent = await startRawServer(() => {}); // accepts, never answers
  t.teardown(silent.close);
  const wrongAccept = await startRawServer((s) => {
    s.once('data', () => s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n'));
  });
  t.teardown(wrongAccept.close);
  // A masked frame from a server (RFC 6455 §5.1: a client must refuse it).
  const garbage = await startRawWsUpstream((s) => setTimeout(() => s.write(Buffer.from([0x81, 0x81, 1, 2, 3, 4, 0x41])), 50));
  t.teardown(garbage.close);
  // Announces a 1000-byte binary frame, sends 100 bytes of it, then the connection is gone.
  const vanish = await startRawWsUpstream((s) => setTimeout(() => {
    s.write(Buffer.concat([Buffer.from([0x82, 126, 0x03, 0xe8]), Buffer.alloc(100, 7)]));
    setTimeout(() => s.destroy(), 50);
  }, 50));
  t.teardown(vanish.close);
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { base, proxy } = await proxyFor(t, {
    limits: { upstreamTimeoutMs: 400 },
    routes: [
      { path: '/dead', upstreams: [{ url: `ws://127.0.0.1:${dead}/` }] },
      { path: '/silent', upstreams: [{ url: silent.url }] },
      { path: '/accept', upstreams: [{ url: wrongAccept.url }] },
      { path: '/garbage', upstreams: [{ url: garbage.url }] },
      { path: '/vanish', upstreams: [{ url: vanish.url }] },
      { path: '/ok', upstreams: [{ url: backend.url }] },
    ],
  });
  const healthy = await connect(`${base}/ok`);
  t.equal(await status(connect(`${base}/dead`)), 502, 'refused → 502');
  const t0 = Date.now();
  t.equal(await status(connect(`${base}/silent`)), 504, 'accepts and never answers → 504');
  t.ok(Date.now() - t0 >= 350 && Date.now() - t0 < 3000, `504 after upstreamTimeoutMs (${Date.now() - t0} ms)`);
  t.equal(await status(connect(`${base}/accept`)), 502, '101 with a wrong Sec-WebSocket-Accept → 502');
  const g = await connect(`${base}/garbage`);
  t.equal((await closed(g)).code, 1014, 'invalid frames from the upstream → 1014');
  const v = await connect(`${base}/vanish`);
  const got: Buffer[] = [];
  v.on('message', (d) => got.push(d as Buffer));
  const vc = await closed(v);
  t.equal(vc.code, 1014, 'upstream vanishes mid-message → 1014');
  t.equal(got.length, 0, 'the partial message is not delivered');
  healthy.send('still here');
  t.equal((await nextMessage(healthy)).data.toString(), 'still here', 'other sessions carry on');
  healthy.close();
  await closed(healthy);
  await until(() => proxy.sessions.size === 0, 5000, 'all sessions end');
});

t.test('auth: 401 before any upstream is dialled; good credentials pass; expiry closes with 1008', async (t) => {
  const secret = 'hardening-test-secret-0123456789abcdef';
  const key = new TextEncoder().encode(secret);
  const sign = (claims: Record<string, unknown>) => new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(key);
  const apiKey = 'svc-key-42';
  const backend = await startWsBackend({ handleProtocols: (p) => (p.has('chat.v1') ? 'chat.v1' : false) });
  t.teardown(backend.close);
  const { base, proxy } = await proxyFor(t, {
    routes: [
      { path: '/jwt', auth: { jwt: { secret } }, upstreams: [{ url: backend.url }] },
      { path: '/proto', auth: { jwt: { secret, from: 'protocol', clockToleranceSeconds: 0 } }, upstreams: [{ url: backend.url }] },
      { path: '/key', auth: { apiKeys: { sha256: [createHash('sha256').update(apiKey).digest('hex')] } }, upstreams: [{ url: backend.url }] },
      { path: '/q', auth: { jwt: { secret, from: 'query' } }, upstreams: [{ url: backend.url }] },
    ],
  });
  const refusedWith = async (p: Promise<WebSocket>) => {
    try {
      (await p).terminate();
      return { status: 101, body: '' };
    } catch (err) {
      return { status: (err as { status: number }).status, body: String((err as { body?: string }).body ?? '') };
    }
  };
  t.same(await refusedWith(connect(`${base}/jwt`)), { status: 401, body: 'sluice: missing credentials\n' });
  t.same(await refusedWith(connect(`${base}/jwt`, { headers: { Authorization: `Bearer ${await sign({ exp: 1 })}` } })),
    { status: 401, body: 'sluice: token expired\n' });
  t.equal(await status(connect(`${base}/jwt`, { headers: { Authorization: 'Bearer x.y.z' } })), 401);
  t.equal(await status(connect(`${base}/key`, { headers: { 'x-api-key': 'wrong' } })), 401);
  t.equal(backend.requests.length, 0, 'no upstream connection for any refused client');

  const ws = await connect(`${base}/jwt`, { headers: { Authorization: `Bearer ${await sign({ sub: 'alice' })}` } });
  ws.send('authorised');
  t.equal((await nextMessage(ws)).data.toString(), 'authorised');
  ws.close();
  const k = await connect(`${base}/key`, { headers: { 'x-api-key': apiKey } });
  k.close();
  t.equal(backend.requests.length, 2);

  // Token in the query string: accepted, and not passed on to the upstream.
  const q = await connect(`${base}/q?room=7&access_token=${await sign({ sub: 'carol' })}`);
  t.equal(backend.requests.at(-1)!.url, '/?room=7', 'the credential parameter is stripped from the upstream URL');
  q.close();
  // A token as the only subprotocol entry: the upstream picks none, so sluice answers the
  // entry back (a browser fails a handshake that picks none of its offers).
  const only = await connect(`${base}/proto`, { protocols: [`bearer.${await sign({ sub: 'dave' })}`] });
  t.match(only.protocol, /^bearer\./, 'the token entry is answered back');
  t.notOk(backend.requests.at(-1)!.headers['sec-websocket-protocol'], 'and still not forwarded');
  only.close();
  await closed(only);

  // Token in a subprotocol entry: not forwarded; the real subprotocol is.
  const exp = Math.floor(Date.now() / 1000) + 2;
  const token = await sign({ sub: 'bob', exp });
  const p = await connect(`${base}/proto`, { protocols: ['chat.v1', `bearer.${token}`] });
  t.equal(p.protocol, 'chat.v1');
  t.equal(backend.requests.at(-1)!.headers['sec-websocket-protocol'], 'chat.v1', 'the token entry is not forwarded upstream');
  const upstreamWs = await until(() => backend.sockets.size > 0).then(() => [...backend.sockets].at(-1)!);
  const upstreamSaw = closed(upstreamWs, 8000);
  const seen = await closed(p, 8000);
  t.equal(seen.code, 1008, 'token expiry mid-session → 1008');
  t.ok(Date.now() >= exp * 1000, 'not before exp');
  t.equal((await upstreamSaw).code, 1001, 'the upstream is told (1001)');
  await until(() => proxy.sessions.size === 0, 5000);
});

t.test('per-IP connection rate → 429 (before any dial)', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { base } = await proxyFor(t, {
    limits: { connectionRatePerIp: 1, connectionBurstPerIp: 3 },
    routes: [{ path: '/*', upstreams: [{ url: backend.url }] }],
  });
  const results: number[] = [];
  for (let i = 0; i < 5; i++) results.push(await status(connect(`${base}/r`)));
  t.same(results, [101, 101, 101, 429, 429], 'burst of 3, then 429');
  t.equal(backend.requests.length, 3, 'refused clients never reach the upstream');
  await new Promise((r) => setTimeout(r, 1100));
  t.equal(await status(connect(`${base}/r`)), 101, 'one more token a second later');
});

t.test('per-route maxConnections → 503, counted with upgrades in flight', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { base, proxy } = await proxyFor(t, {
    routes: [
      { path: '/two', maxConnections: 2, upstreams: [{ url: backend.url }] },
      { path: '/free', upstreams: [{ url: backend.url }] },
    ],
  });
  const a = await connect(`${base}/two`);
  const b = await connect(`${base}/two`);
  t.equal(await status(connect(`${base}/two`)), 503, 'one at a time: the third gets 503');
  a.close();
  b.close();
  await until(() => proxy.sessions.size === 0, 5000);
  // Six at once: the limit must hold while their upstream dials are still in flight.
  const results = await Promise.all(Array.from({ length: 6 }, () => status(connect(`${base}/two`))));
  t.equal(results.filter((s) => s === 101).length, 2, `two admitted (${results.join(',')})`);
  t.equal(results.filter((s) => s === 503).length, 4, 'the rest get 503');
  t.equal(await status(connect(`${base}/free`)), 101, 'other routes are not limited');
  await until(() => proxy.sessions.size === 0, 5000);
  t.equal(await status(connect(`${base}/two`)), 101, 'room again once sessions end');
});

t.test('per-connection message rate and byte rate → 1008', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { base } = await proxyFor(t, { limits: { messagesPerSecond: 50 }, routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });
  const ws = await connect(`${base}/m`);
  const other = await connect(`${base}/m`);
  const seen = closed(ws);
  for (let i = 0; i < 200; i++) ws.send(`m${i}`);
  t.same(await seen, { code: 1008, reason: 'message rate limit' });
  other.send('calm');
  t.equal((await nextMessage(other)).data.toString(), 'calm', 'a calm session on the same proxy is untouched');
  other.close();

  const { base: base2 } = await proxyFor(t, { limits: { bytesPerSecond: 64 * 1024 }, routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });
  const b = await connect(`${base2}/b`);
  const seen2 = closed(b);
  for (let i = 0; i < 10; i++) b.send(Buffer.alloc(32 * 1024));
  t.equal((await seen2).code, 1008, 'byte rate → 1008');
});

t.test('handshake timeout: a partial request head and the rest of the handshake are bounded by handshakeTimeoutMs', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  // An upstream that accepts and never answers, with an upstream timeout far above the
  // handshake timeout: the client must get its answer when handshakeTimeoutMs runs out.
  const silent = await startRawServer(() => {});
  t.teardown(silent.close);
  const { port, base } = await proxyFor(t, {
    limits: { handshakeTimeoutMs: 1500, upstreamTimeoutMs: 30_000 },
    routes: [{ path: '/silent', upstreams: [{ url: silent.url }] }, { path: '/*', upstreams: [{ url: backend.url }] }],
  });
  const t0 = Date.now();
  const [partial, trickle, slowUpstream] = await Promise.all([
    rawRequest(port, 'GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n'),
    // Slowloris: one header line every 500 ms, never finishing.
    rawRequest(port, ['GET /x HTTP/1.1\r\n', ...Array.from({ length: 40 }, (_, i) => `X-Slow-${i}: 1\r\n`)], { gapMs: 500 }),
    status(connect(`${base}/silent`)).then((s) => ({ s, ms: Date.now() - t0 })),
  ]);
  // Node's parser holds the head: headersTimeout = handshakeTimeoutMs, checked every second.
  t.ok(partial.closedAfterMs >= 1400 && partial.closedAfterMs < 4000, `partial request closed after ${partial.closedAfterMs} ms (handshakeTimeoutMs 1500)`);
  t.ok(trickle.closedAfterMs >= 1400 && trickle.closedAfterMs < 4000, `trickled request closed after ${trickle.closedAfterMs} ms, trickling does not extend it`);
  t.equal(slowUpstream.s, 504, 'credentials + dial + upstream handshake past handshakeTimeoutMs → 504');
  t.ok(slowUpstream.ms >= 1400 && slowUpstream.ms < 5000, `answered after ${slowUpstream.ms} ms (handshakeTimeoutMs 1500, upstreamTimeoutMs 30000)`);
  t.equal(backend.requests.length, 0, 'no upstream dialled for the partial requests');
});

t.test('header limits: too many or too large → 431', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const { port, base } = await proxyFor(t, { limits: { maxHeaderBytes: 4096, maxHeaderCount: 20 }, routes: [{ path: '/*', upstreams: [{ url: backend.url }] }] });
  const big = await rawRequest(port, upgradeHead('/x', `X-Big: ${'a'.repeat(5000)}\r\n`), { waitMs: 3000 });
  t.match(big.statusLine, /^HTTP\/1\.1 431/, 'over maxHeaderBytes → 431');
  const many = await rawRequest(port, upgradeHead('/x', Array.from({ length: 30 }, (_, i) => `X-H${i}: v\r\n`).join('')), { waitMs: 3000 });
  t.match(many.statusLine, /^HTTP\/1\.1 431/, 'over maxHeaderCount → 431');
  t.equal(backend.requests.length, 0, 'no upstream dialled');
  t.equal(await status(connect(`${base}/x`, { headers: { 'X-Fine': 'a'.repeat(1000) } })), 101, 'within the limits: accepted');
});
