/**
 * Plain HTTP on the WebSocket port: 404 without a route, 426 on WebSocket-only routes, and
 * on `http: true` routes the request proxied as HTTP/1.1 to the route's upstream (real Node
 * http servers and clients on loopback, sluice in this process). Runs with the native
 * addon and with SLUICE_NO_NATIVE=1.
 */
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { SignJWT } from 'jose';
import { WebSocketServer, type RawData } from 'ws';
import { createProxy, type Proxy } from '../src/index.js';
import type { ProxyConfigInput } from '../src/config/index.js';
import { closed, connect, deadPort, nextMessage, until, upgradeStatus } from './fixtures/peers.js';
import { makeTestPki } from './fixtures/tls.js';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
}

interface Upstream {
  port: number;
  /** ws:// URL of this server (sluice's upstream URLs are ws:// or wss://). */
  url: string;
  requests: Seen[];
  /** Open TCP connections to this server. */
  connections: Set<net.Socket>;
  /** WebSocket connections (the same server takes upgrades: an echo). */
  wsConnections: number;
  close(): Promise<void>;
}

type Handler = (req: IncomingMessage, res: ServerResponse, seen: Seen) => void;

/** Default answer: 200 with a JSON description of the request as the upstream saw it. */
const describe: Handler = (req, res, seen) => {
  req.on('end', () => {
    res.setHeader('Content-Type', 'application/json');
    res.setHeader('X-Upstream', 'yes');
    res.end(JSON.stringify({ method: seen.method, url: seen.url, bytes: seen.body.length, sha256: sha256(seen.body) }));
  });
};

/** A Node http server on 127.0.0.1:0 that also echoes WebSocket messages (ws on the same server). */
async function startUpstream(t: Test, handler: Handler = describe, server: http.Server = http.createServer()): Promise<Upstream> {
  const requests: Seen[] = [];
  const connections = new Set<net.Socket>();
  const up = { wsConnections: 0 };
  server.on('connection', (s: net.Socket) => {
    connections.add(s);
    s.on('close', () => connections.delete(s));
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const seen: Seen = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, body: Buffer.alloc(0) };
    requests.push(seen);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      chunks.push(c);
      seen.body = Buffer.concat(chunks);
    });
    handler(req, res, seen);
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => {
    up.wsConnections++;
    ws.on('error', () => {});
    ws.on('message', (d: RawData, isBinary: boolean) => ws.send(d as Buffer, { binary: isBinary }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const secure = server instanceof https.Server;
  const close = () => new Promise<void>((resolve) => {
    for (const c of wss.clients) c.terminate();
    wss.close();
    for (const s of connections) s.destroy();
    server.close(() => resolve());
  });
  t.teardown(close);
  return {
    port,
    url: `${secure ? 'wss' : 'ws'}://${secure ? 'localhost' : '127.0.0.1'}:${port}`,
    requests,
    connections,
    get wsConnections() { return up.wsConnections; },
    close,
  };
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

async function proxyFor(t: Test, config: ProxyConfigInput): Promise<{ proxy: Proxy; port: number; base: string }> {
  const proxy = createProxy({ listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, ...config });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 200 }));
  return { proxy, port, base: `http://127.0.0.1:${port}` };
}

interface Reply {
  status: number;
  statusMessage: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
  localPort: number;
  reused: boolean;
}

/** One request; `body` is written in pieces (chunked unless a Content-Length header is given). */
function request(url: string, opts: {
  method?: string; headers?: http.OutgoingHttpHeaders; body?: Buffer[]; agent?: http.Agent | false; timeoutMs?: number;
} = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers, agent: opts.agent ?? false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolve({
          status: res.statusCode ?? 0, statusMessage: res.statusMessage ?? '', headers: res.headers, rawHeaders: res.rawHeaders,
          body: Buffer.concat(chunks), localPort: res.socket?.localPort ?? req.socket?.localPort ?? -1, reused: req.reusedSocket,
        });
      });
      res.on('error', reject);
    });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error('no answer within timeout'));
    }, opts.timeoutMs ?? 8000);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    for (const b of opts.body ?? []) req.write(b);
    req.end();
  });
}

t.test('no route → 404; a WebSocket-only route → 426; an upgrade without Connection: upgrade → 400', async (t) => {
  const up = await startUpstream(t);
  const { base, proxy } = await proxyFor(t, {
    routes: [
      { path: '/ws', upstreams: [{ url: up.url }] },
      { path: '/h', http: true, upstreams: [{ url: up.url }] },
    ],
  });
  const none = await request(`${base}/nope?x=1`);
  t.equal(none.status, 404);
  t.equal(none.body.toString(), 'sluice: no route for /nope\n');
  t.equal(none.headers['content-type'], 'text/plain; charset=utf-8');
  const wsOnly = await request(`${base}/ws`, { method: 'POST', body: [Buffer.from('ignored')] });
  t.equal(wsOnly.status, 426);
  t.equal(wsOnly.headers.upgrade, 'websocket', 'the 426 names the protocol to upgrade to');
  t.equal(wsOnly.body.toString(), 'sluice: this endpoint speaks WebSocket\n');
  // On an http route too: a request that means to upgrade is not proxied as plain HTTP.
  const bad = await request(`${base}/h`, { headers: { Upgrade: 'websocket', Connection: 'keep-alive' } });
  t.equal(bad.status, 400);
  t.equal(bad.body.toString(), 'sluice: the Connection header lacks "upgrade"\n');
  t.equal(up.requests.length, 0, 'the upstream saw none of these');
  await until(() => proxy.counters.httpRequests['']?.['400'] === 1, 2000, 'the last one counted');
  t.same(proxy.counters.httpRequests, { '': { 404: 1, 400: 1 }, '/ws': { 426: 1 } }, 'counted by route and status');
});

t.test('GET through an http route: status, headers and body intact; hop-by-hop dropped; X-Forwarded-* added', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    req.resume();
    res.writeHead(201, 'Made It', [
      'Content-Type', 'text/plain',
      'Set-Cookie', 'a=1',
      'Set-Cookie', 'b=2',
      'X-Upstream', 'yes',
      'X-Hop', 'secret',
      'Connection', 'keep-alive, X-Hop',
      'Keep-Alive', 'timeout=7, max=77',
    ]);
    res.end('hello from upstream');
  });
  const { base, port, proxy } = await proxyFor(t, { routes: [{ path: '/h', http: true, upstreams: [{ url: `${up.url}/` }] }] });
  const r = await request(`${base}/h?q=1`, {
    headers: {
      Host: `app.example:${port}`,
      'User-Agent': 'sluice-test',
      Cookie: 'sid=42',
      Authorization: 'Bearer tok',
      'X-Custom': 'yes',
      'X-Forwarded-For': '10.1.2.3',
      'X-Real-IP': '6.6.6.6',
      'Keep-Alive': 'timeout=9',
      'Proxy-Connection': 'keep-alive',
      TE: 'trailers',
      'X-Drop-Me': 'named in Connection',
      Connection: 'keep-alive, X-Drop-Me',
    },
  });
  t.equal(r.status, 201);
  t.equal(r.statusMessage, 'Made It', 'the upstream’s reason phrase');
  t.equal(r.body.toString(), 'hello from upstream');
  t.equal(r.headers['x-upstream'], 'yes');
  t.equal(r.headers['content-type'], 'text/plain');
  t.same(r.headers['set-cookie'], ['a=1', 'b=2'], 'repeated response headers kept apart');
  t.equal(r.headers['x-hop'], undefined, 'a response header named in the upstream’s Connection is dropped');
  t.not(r.headers['keep-alive'], 'timeout=7, max=77', 'the upstream’s Keep-Alive is not passed on');

  t.equal(up.requests.length, 1);
  const seen = up.requests[0];
  t.equal(seen.method, 'GET');
  t.equal(seen.url, '/?q=1', 'exact route: the upstream URL’s path, the client’s query');
  t.equal(seen.headers.host, `127.0.0.1:${up.port}`, 'Host is the upstream’s, as for upgrades');
  t.equal(seen.headers['user-agent'], 'sluice-test');
  t.equal(seen.headers.cookie, 'sid=42');
  t.equal(seen.headers.authorization, 'Bearer tok');
  t.equal(seen.headers['x-custom'], 'yes');
  t.equal(seen.headers['x-forwarded-for'], '10.1.2.3, 127.0.0.1', 'X-Forwarded-For appended');
  t.equal(seen.headers['x-forwarded-proto'], 'http');
  t.equal(seen.headers['x-forwarded-host'], `app.example:${port}`);
  t.equal(seen.headers['x-real-ip'], '127.0.0.1', 'X-Real-IP replaced, not passed on');
  t.equal(seen.headers['proxy-connection'], undefined, 'Proxy-Connection dropped');
  t.equal(seen.headers.te, undefined, 'TE dropped');
  t.equal(seen.headers['x-drop-me'], undefined, 'a header named in Connection dropped');
  t.equal(seen.headers['keep-alive'], undefined, 'the client’s Keep-Alive dropped');
  t.equal(seen.rawHeaders.filter((h) => h.toLowerCase() === 'x-forwarded-for').length, 1, 'one X-Forwarded-For');

  const head = await request(`${base}/h`, { method: 'HEAD' });
  t.equal(head.status, 201);
  t.equal(head.body.length, 0, 'HEAD: no body');
  t.equal(up.requests.at(-1)!.method, 'HEAD');
  await until(() => (proxy.counters.httpRequests['/h']?.['201'] ?? 0) === 2, 2000, 'both counted');
  const text = await proxy.registry.metrics();
  t.match(text, /^sluice_http_requests_total\{route="\/h",status="201"\} 2$/m, 'exported as sluice_http_requests_total');
});

t.test('POST: request and response bodies stream both ways (chunked and with a length)', async (t) => {
  let firstChunkAt = 0;
  let release: (() => void) | undefined;
  const up = await startUpstream(t, (req, res, seen) => {
    if (req.url === '/echo') {
      // Echo the body back as it comes.
      res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
      req.pipe(res);
      return;
    }
    if (req.url === '/hold') {
      // The response's first part, then the rest only when the test says so.
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.write('first part;');
      release = () => res.end('second part');
      req.resume();
      return;
    }
    req.once('data', () => (firstChunkAt = Date.now()));
    describe(req, res, seen);
  });
  const { base } = await proxyFor(t, { routes: [{ path: '/*', http: true, upstreams: [{ url: up.url }] }] });

  // 2 MiB, chunked, in 32 pieces.
  const pieces = Array.from({ length: 32 }, (_, i) => Buffer.alloc(64 * 1024, i));
  const whole = Buffer.concat(pieces);
  const r = await request(`${base}/upload`, { method: 'POST', body: pieces, headers: { 'Content-Type': 'application/octet-stream' } });
  t.equal(r.status, 200);
  const d = JSON.parse(r.body.toString());
  t.same(d, { method: 'POST', url: '/upload', bytes: whole.length, sha256: sha256(whole) }, 'a chunked body arrives whole');
  t.equal(up.requests.at(-1)!.headers['transfer-encoding'], 'chunked', 'sent on chunked, as it came');

  const fixed = Buffer.from('x'.repeat(100_000));
  const r2 = await request(`${base}/fixed`, { method: 'PUT', body: [fixed], headers: { 'Content-Length': String(fixed.length) } });
  t.same(JSON.parse(r2.body.toString()), { method: 'PUT', url: '/fixed', bytes: fixed.length, sha256: sha256(fixed) });
  t.equal(up.requests.at(-1)!.headers['content-length'], String(fixed.length), 'Content-Length kept');
  t.equal(up.requests.at(-1)!.headers['transfer-encoding'], undefined);

  // The request body streams: the upstream has the first piece while the client still holds the rest.
  firstChunkAt = 0;
  const streaming = await new Promise<{ sawFirstBeforeEnd: boolean; reply: Reply }>((resolve, reject) => {
    const req = http.request(`${base}/stream`, { method: 'POST', agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ sawFirstBeforeEnd, reply: { status: res.statusCode ?? 0, body: Buffer.concat(chunks) } as Reply }));
    });
    req.on('error', reject);
    let sawFirstBeforeEnd = false;
    req.write('piece one;');
    until(() => firstChunkAt !== 0, 3000, 'the first piece upstream').then(() => {
      sawFirstBeforeEnd = true;
      req.end('piece two');
    }, (err) => {
      req.end('piece two');
      reject(err);
    });
  });
  t.ok(streaming.sawFirstBeforeEnd, 'the upstream got the first piece before the request ended');
  t.equal(JSON.parse(streaming.reply.body.toString()).bytes, 'piece one;piece two'.length);

  // The response body streams: the client has the first part while the upstream holds the rest.
  const first = await new Promise<{ firstPart: string; rest: Promise<string> }>((resolve, reject) => {
    http.get(`${base}/hold`, { agent: false }, (res) => {
      let all = '';
      const done = new Promise<string>((r) => res.on('end', () => r(all)));
      res.on('data', (c: Buffer) => {
        all += c.toString();
        if (all === 'first part;') resolve({ firstPart: all, rest: done });
      });
    }).on('error', reject);
  });
  t.equal(first.firstPart, 'first part;', 'the first part arrives before the upstream ends its response');
  release!();
  t.equal(await first.rest, 'first part;second part');

  // An echo of 1 MiB: both bodies streamed at once.
  const big = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
  const echoed = await request(`${base}/echo`, { method: 'POST', body: [big.subarray(0, 300_000), big.subarray(300_000)] });
  t.equal(echoed.body.length, big.length);
  t.ok(echoed.body.equals(big), 'echoed intact');

  // Expect: 100-continue is answered by sluice and not passed on.
  const cont = await new Promise<Reply>((resolve, reject) => {
    const req = http.request(`${base}/continue`, { method: 'POST', agent: false, headers: { Expect: '100-continue', 'Content-Length': '5' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) } as Reply));
    });
    req.on('continue', () => req.end('hello'));
    req.on('error', reject);
  });
  t.equal(JSON.parse(cont.body.toString()).bytes, 5);
  t.equal(up.requests.at(-1)!.headers.expect, undefined, 'Expect is not forwarded');
});

t.test('backpressure: a client that does not read holds the upstream back', async (t) => {
  let written = 0;
  let finished = false;
  const total = 256 * 1024 * 1024;
  const up = await startUpstream(t, (req, res) => {
    req.resume();
    res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
    const chunk = Buffer.alloc(64 * 1024, 1);
    const pump = () => {
      while (written < total) {
        written += chunk.length;
        if (!res.write(chunk)) {
          res.once('drain', pump);
          return;
        }
      }
      finished = true;
      res.end();
    };
    pump();
    res.on('close', () => (finished = true));
  });
  const { base } = await proxyFor(t, { routes: [{ path: '/big', http: true, upstreams: [{ url: up.url }] }] });
  const client = await new Promise<{ res: IncomingMessage; req: http.ClientRequest }>((resolve, reject) => {
    const req = http.get(`${base}/big`, { agent: false }, (res) => resolve({ res, req }));
    req.on('error', reject);
  });
  client.res.pause();
  // Give the upstream time to write what the buffers along the way take.
  let last = -1;
  const end = Date.now() + 5000;
  while (written !== last && Date.now() < end) {
    last = written;
    await new Promise((r) => setTimeout(r, 300));
  }
  t.notOk(finished, 'the upstream could not finish its 256 MiB');
  t.ok(written < 64 * 1024 * 1024, `the upstream is held back (${(written / 1048576).toFixed(1)} MiB written while the client reads nothing)`);
  // Reading again lets it go on.
  const before = written;
  let got = 0;
  client.res.on('data', (c: Buffer) => (got += c.length));
  client.res.resume();
  await until(() => written > before + 8 * 1024 * 1024, 10_000, 'the upstream writes again');
  t.ok(got > 0, 'the client receives');
  client.req.destroy();
  await until(() => up.connections.size === 0, 5000, 'the client’s abort ends the upstream connection');
});

t.test('path mapping: prefix and exact routes, as for upgrades', async (t) => {
  const up = await startUpstream(t);
  const { base } = await proxyFor(t, {
    routes: [
      { path: '/chat', http: true, upstreams: [{ url: `${up.url}/ws?k=v` }] },
      { path: '/api/*', http: true, upstreams: [{ url: `${up.url}/base` }] },
      { path: '/root/*', http: true, upstreams: [{ url: `${up.url}/` }] },
    ],
  });
  for (const [from, to] of [
    ['/chat?x=1', '/ws?k=v&x=1'],
    ['/api/a/b', '/base/a/b'],
    ['/api', '/base'],
    ['/api/a?q=2&r=3', '/base/a?q=2&r=3'],
    ['/root/x/y', '/x/y'],
  ]) {
    const r = await request(base + from);
    t.equal(r.status, 200, from);
    t.equal(JSON.parse(r.body.toString()).url, to, `${from} → ${to}`);
  }
  t.equal((await request(`${base}/apix`)).status, 404, 'prefix matches whole segments only');
});

t.test('host routes match as for upgrades', async (t) => {
  const a = await startUpstream(t);
  const b = await startUpstream(t);
  const { base } = await proxyFor(t, {
    routes: [
      { path: '/x', host: 'a.example', http: true, upstreams: [{ url: a.url }] },
      { path: '/x', http: true, upstreams: [{ url: b.url }] },
    ],
  });
  t.equal((await request(`${base}/x`, { headers: { Host: 'A.example:8080' } })).status, 200);
  t.equal(a.requests.length, 1, 'Host (any case, port ignored) picks the host route');
  t.equal((await request(`${base}/x`, { headers: { Host: 'other.example' } })).status, 200);
  t.equal(b.requests.length, 1, 'another host falls back to the route without host');
});

t.test('502 when the upstream is unreachable; the next upstream is tried first', async (t) => {
  const dead = await deadPort();
  const up = await startUpstream(t);
  const { base, proxy } = await proxyFor(t, {
    routes: [
      { path: '/dead', http: true, upstreams: [{ url: `ws://127.0.0.1:${dead}/` }] },
      // Its own dead upstream (another URL), not the one /dead holds out already.
      { path: '/mixed', http: true, upstreams: [{ url: `ws://127.0.0.1:${dead}/other` }, { url: up.url }] },
    ],
  });
  const r = await request(`${base}/dead`, { method: 'POST', body: [Buffer.from('some body')] });
  t.equal(r.status, 502);
  t.match(r.body.toString(), /^sluice: upstream 127\.0\.0\.1:\d+: ECONNREFUSED\n$/);
  t.equal(r.headers.connection, 'close');
  const deadStats = proxy.stats().routes.find((x) => x.path === '/dead')!.upstreams[0];
  t.equal(deadStats.healthy, false, 'the refusing upstream is held out');
  t.match(deadStats.lastError, /ECONNREFUSED/);
  // Round robin starts with the dead one: the first request is retried on the live one, body and all.
  for (let i = 0; i < 2; i++) {
    const ok = await request(`${base}/mixed`, { method: 'POST', body: [Buffer.from(`body ${i}`)], headers: { 'Content-Length': '6' } });
    t.equal(ok.status, 200, `request ${i} reaches the live upstream`);
    t.equal(JSON.parse(ok.body.toString()).bytes, 6, 'with its body');
  }
  t.equal(up.requests.length, 2);
  t.equal(proxy.counters.httpRequests['/dead']['502'], 1);
});

t.test('504 when the upstream does not answer within upstreamTimeoutMs; the upstream request is aborted', async (t) => {
  const up = await startUpstream(t, (req) => req.resume()); // never answers
  const { base } = await proxyFor(t, {
    limits: { upstreamTimeoutMs: 300 },
    routes: [{ path: '/slow', http: true, upstreams: [{ url: up.url }] }],
  });
  const t0 = Date.now();
  const r = await request(`${base}/slow`);
  const took = Date.now() - t0;
  t.equal(r.status, 504);
  t.equal(r.body.toString(), `sluice: upstream 127.0.0.1:${up.port} did not answer within 300 ms\n`);
  t.ok(took >= 250 && took < 3000, `after the timeout (${took} ms)`);
  t.equal(up.requests.length, 1, 'the request had reached the upstream');
  await until(() => up.connections.size === 0, 3000, 'the upstream connection is closed');
});

t.test('client abort aborts the upstream request; upstream abort ends the client connection', async (t) => {
  let upstreamClosed = false;
  const up = await startUpstream(t, (req, res) => {
    req.resume();
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.write('partial');
    if (req.url === '/cut') setTimeout(() => res.socket?.destroy(), 100);
    else res.on('close', () => (upstreamClosed = true));
  });
  const { base, proxy } = await proxyFor(t, { routes: [{ path: '/*', http: true, upstreams: [{ url: up.url }] }] });

  // The client leaves mid-response.
  await new Promise<void>((resolve, reject) => {
    const req = http.get(`${base}/hang`, { agent: false }, (res) => {
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.on('error', () => {});
    setTimeout(() => reject(new Error('no first part')), 3000);
  });
  await until(() => upstreamClosed, 3000, 'the upstream response is closed');
  await until(() => up.connections.size === 0, 3000, 'and its connection');

  // The client leaves mid-upload: the upstream's request is aborted too.
  let uploadAborted = false;
  const uploads = await startUpstream(t, (req) => {
    req.on('aborted', () => (uploadAborted = true));
  });
  await proxy.reload({
    listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' },
    routes: [{ path: '/*', http: true, upstreams: [{ url: uploads.url }] }],
  });
  const upload = http.request(`${base}/upload`, { method: 'POST', agent: false });
  upload.on('error', () => {});
  upload.write(Buffer.alloc(100_000, 1));
  await until(() => uploads.requests.length === 1 && uploads.requests[0].body.length > 0, 3000, 'the upload begins upstream');
  upload.destroy();
  await until(() => uploadAborted, 3000, 'the upstream request is aborted');
  await until(() => uploads.connections.size === 0, 3000, 'and its connection closed');
  await until(() => (proxy.counters.httpRequests['/*']?.['499'] ?? 0) === 1, 2000, 'a client gone before its answer counts as 499');
  await proxy.reload({
    listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' },
    routes: [{ path: '/*', http: true, upstreams: [{ url: up.url }] }],
  });

  // The upstream leaves mid-response: the client's response does not look complete.
  const outcome = await new Promise<{ body: string; complete: boolean | 'still open' }>((resolve) => {
    setTimeout(() => resolve({ body: '', complete: 'still open' }), 5000);
    http.get(`${base}/cut`, { agent: false }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('error', () => {});
      res.on('close', () => resolve({ body, complete: res.complete }));
    }).on('error', () => resolve({ body: '', complete: false }));
  });
  t.equal(outcome.body, 'partial');
  t.equal(outcome.complete, false, 'the truncated body is not a complete response');

  // A client that leaves before any answer (here while the upstream thinks) is counted as 499 too.
  const silent = await startUpstream(t, (req) => req.resume());
  await proxy.reload({
    listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' },
    routes: [{ path: '/*', http: true, upstreams: [{ url: silent.url }] }],
  });
  await new Promise<void>((resolve) => {
    const req = http.get(`${base}/wait`, { agent: false });
    req.on('error', () => resolve());
    until(() => silent.requests.length === 1, 3000).then(() => req.destroy(), () => req.destroy());
  });
  await until(() => silent.connections.size === 0, 3000, 'the silent upstream’s request is aborted too');
  await until(() => (proxy.counters.httpRequests['/*']?.['499'] ?? 0) === 2, 2000, 'counted as 499');
});

t.test('route auth: 401 before any upstream is dialled; good credentials pass; query credentials are not forwarded', async (t) => {
  const secret = 'http-route-test-secret-0123456789abcdef';
  const sign = (claims: Record<string, unknown>) => new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(secret));
  const apiKey = 'svc-key-7';
  const up = await startUpstream(t);
  const { base } = await proxyFor(t, {
    routes: [
      { path: '/jwt', http: true, auth: { jwt: { secret } }, upstreams: [{ url: up.url }] },
      { path: '/key', http: true, auth: { apiKeys: { sha256: [sha256(Buffer.from(apiKey))] } }, upstreams: [{ url: up.url }] },
      { path: '/q', http: true, auth: { jwt: { secret, from: 'query' } }, upstreams: [{ url: up.url }] },
    ],
  });
  const none = await request(`${base}/jwt`, { method: 'POST', body: [Buffer.from('data')] });
  t.equal(none.status, 401);
  t.equal(none.body.toString(), 'sluice: missing credentials\n');
  t.equal(none.headers['www-authenticate'], 'Bearer realm="sluice"');
  t.equal((await request(`${base}/jwt`, { headers: { Authorization: `Bearer ${await sign({ exp: 1 })}` } })).status, 401, 'expired');
  t.equal((await request(`${base}/key`, { headers: { 'x-api-key': 'wrong' } })).status, 401, 'wrong key');
  t.equal(up.requests.length, 0, 'no upstream request for any refused client');
  t.equal(up.connections.size, 0, 'nor a connection');

  const ok = await request(`${base}/jwt`, { headers: { Authorization: `Bearer ${await sign({ sub: 'alice' })}` } });
  t.equal(ok.status, 200);
  t.equal((await request(`${base}/key`, { headers: { 'x-api-key': apiKey } })).status, 200);
  const q = await request(`${base}/q?room=7&access_token=${await sign({ sub: 'carol' })}`);
  t.equal(q.status, 200);
  t.equal(up.requests.at(-1)!.url, '/?room=7', 'the credential parameter is stripped from the upstream URL');
  t.equal(up.requests.length, 3);
});

t.test('keep-alive: several requests on one client connection; refusals keep it too', async (t) => {
  const up = await startUpstream(t);
  const { base, proxy } = await proxyFor(t, { routes: [{ path: '/k/*', http: true, upstreams: [{ url: `${up.url}/` }] }] });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const replies: Reply[] = [];
  for (const p of ['/k/1', '/k/2', '/nope', '/k/3']) replies.push(await request(base + p, { agent, method: p === '/k/2' ? 'POST' : 'GET', body: p === '/k/2' ? [Buffer.from('b')] : [] }));
  t.same(replies.map((r) => r.status), [200, 200, 404, 200]);
  t.same(replies.map((r) => r.reused), [false, true, true, true], 'every request after the first on a reused connection');
  t.equal(new Set(replies.map((r) => r.localPort)).size, 1, 'one client connection');
  t.same(up.requests.map((r) => r.url), ['/1', '/2', '/3']);
  // Nothing is left behind once the proxy closes: no upstream connection stays open.
  agent.destroy();
  await proxy.close({ drainMs: 200 });
  await until(() => up.connections.size === 0, 3000, 'upstream connections closed with the proxy');
});

t.test('WebSocket upgrades on an http route still work', async (t) => {
  const up = await startUpstream(t);
  const { base, port, proxy } = await proxyFor(t, { routes: [{ path: '/both', http: true, upstreams: [{ url: up.url }] }] });
  const ws = await connect(`ws://127.0.0.1:${port}/both`);
  ws.send('over websocket');
  t.equal((await nextMessage(ws)).data.toString(), 'over websocket');
  t.equal(up.wsConnections, 1);
  const r = await request(`${base}/both`);
  t.equal(r.status, 200, 'and plain HTTP on the same route, during the session');
  t.equal(JSON.parse(r.body.toString()).url, '/');
  ws.close(1000);
  t.equal((await closed(ws)).code, 1000);
  await until(() => proxy.sessions.size === 0, 3000, 'session end');
  t.equal(proxy.counters.sessionsTotal, 1, 'the upgrade is a session; the request is not');
  t.equal(await upgradeStatus(connect(`ws://127.0.0.1:${port}/other`)), 404, 'upgrade refusals unchanged');
});

t.test('https upstreams (wss:// URLs) use the route’s tls options', async (t) => {
  const pki = makeTestPki();
  let servername = '';
  const server = https.createServer({ cert: pki.cert, key: pki.key });
  server.on('secureConnection', (s: import('node:tls').TLSSocket) => {
    servername = (s as unknown as { servername?: string }).servername ?? '';
  });
  const up = await startUpstream(t, describe, server);
  const { base } = await proxyFor(t, {
    routes: [
      { path: '/trusted', http: true, upstreams: [{ url: `${up.url}/t` }], tls: { caFile: pki.caFile } },
      { path: '/untrusted', http: true, upstreams: [{ url: `${up.url}/u` }] },
      { path: '/insecure', http: true, upstreams: [{ url: `${up.url}/i` }], tls: { rejectUnauthorized: false } },
    ],
  });
  const r = await request(`${base}/trusted`);
  t.equal(r.status, 200);
  t.equal(JSON.parse(r.body.toString()).url, '/t');
  t.equal(servername, 'localhost', 'SNI carries the upstream host name');
  const bad = await request(`${base}/untrusted`);
  t.equal(bad.status, 502, 'an upstream certificate not signed by a trusted CA → 502');
  t.equal(up.requests.length, 1, 'and nothing was sent to it');
  t.equal((await request(`${base}/insecure`)).status, 200, 'rejectUnauthorized: false accepts it');
});
