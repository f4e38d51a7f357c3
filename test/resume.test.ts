/**
 * Resume on envelope routes (README "Resume"): a TCP relay between client and proxy cuts
 * the connection (mid-frame too) while both sides stream numbered messages; grace expiry;
 * the replay buffer's bound; credentials; the wire protocol as another client would speak it.
 */
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { WebSocket, WebSocketServer } from 'ws';
import { createProxy, createShardedProxy, type Proxy } from '../src/index.js';
import type { Session } from '../src/proxy/session.js';
import { connect as sluiceConnect } from '../src/client/index.js';
import { decodeEnvelope, encodeEnvelope, EnvelopeType } from '../src/protocol/index.js';
import { nodeHasReusePort } from '../src/proxy/listen.js';
import { startCutter } from './fixtures/cutter.js';
import { until } from './fixtures/peers.js';

const HOST = '127.0.0.1';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** An upstream that counts its sessions, records the numbers it receives, and can stream its own. */
async function numberedUpstream() {
  const wss = new WebSocketServer({ host: HOST, port: 0 });
  await once(wss, 'listening');
  const state = {
    url: `ws://${HOST}:${(wss.address() as { port: number }).port}/`,
    sessions: 0,
    got: [] as number[],
    closes: [] as Array<{ code: number; reason: string }>,
    ws: null as WebSocket | null,
    close: () => new Promise<void>((resolve) => {
      for (const c of wss.clients) c.terminate();
      wss.close(() => resolve());
    }),
  };
  wss.on('connection', (ws) => {
    state.sessions++;
    state.ws = ws;
    ws.on('message', (d: Buffer) => state.got.push(Number(d.toString().slice(2))));
    ws.on('close', (code, reason) => state.closes.push({ code, reason: reason.toString() }));
  });
  return state;
}

function resumeRoute(url: string, resume: { graceSeconds?: number; bufferBytes?: number } = {}, extra: Record<string, unknown> = {}) {
  return { path: '/r', mode: 'envelope' as const, resume, upstreams: [{ url }], ...extra };
}

/** Envelope v2 allowed (the default is v1). */
const V2 = { protocol: 'v2' as const };

/** What a stream of numbers looks like when it is not 1..n: the first few problems. */
function gaps(got: number[], n: number): string {
  const bad: string[] = [];
  for (let i = 0; i < Math.max(got.length, n) && bad.length < 5; i++) if (got[i] !== i + 1) bad.push(`[${i}]=${got[i]}`);
  return bad.length === 0 ? 'none' : bad.join(' ');
}

/** A message's number: `u:12` or `u:12 <filler>`. */
function numberOf(d: Buffer): number {
  const space = d.indexOf(0x20);
  return Number(d.subarray(2, space < 0 ? d.length : space).toString());
}

/**
 * An upstream, a proxy in front of it (`sharded`: two shards), a cutting relay in front of
 * that, and an SDK client with resume through the relay, connected; torn down with the test.
 */
async function throughCutter(t: Test, resume: { graceSeconds?: number; bufferBytes?: number }, sharded = false) {
  const up = await numberedUpstream();
  const config = { listen: { host: HOST, port: 0 }, log: { level: (process.env.RESUME_LOG ?? 'silent') as 'silent' }, routes: [resumeRoute(up.url, resume)] };
  const proxy = sharded ? createShardedProxy({ ...config, workers: 2 }) : createProxy(config);
  const { port } = await proxy.listen();
  const cutter = await startCutter(port);
  const client = sluiceConnect(`ws://${HOST}:${cutter.port}/r`, { resume: true, reconnect: { initialDelayMs: 20, maxDelayMs: 100 } });
  t.teardown(async () => {
    await client.close();
    await proxy.close({ drainMs: 200 });
    await cutter.close();
    await up.close();
  });
  const got: number[] = [];
  client.on('message', (d) => got.push(numberOf(d)));
  await once(client, 'open');
  await until(() => up.ws !== null, 3000, 'upstream session');
  return { up, proxy, cutter, client, got };
}

t.test('cuts at random points, mid-frame too: each side gets every message once, in order; the upstream sees one session', async (t) => {
  const { up, proxy, cutter, client, got } = await throughCutter(t, { graceSeconds: 10 });
  const outcomes: unknown[] = [];
  client.on('resumed', (info) => outcomes.push(info));

  const N = 3000;
  let sentC = 0;
  let sentU = 0;
  // 3000 each way over about 3 s: traffic flows through every cut.
  const pump = setInterval(() => {
    for (let k = 0; k < 5 && sentC < N; k++) client.send(`c:${++sentC}`);
    const ws = up.ws!;
    for (let k = 0; k < 5 && sentU < N && ws.readyState === WebSocket.OPEN; k++) ws.send(`u:${++sentU}`);
  }, 5);
  t.teardown(() => clearInterval(pump));
  const CUTS = 6;
  // A session in progress: the token came before the upstream's first message.
  await until(() => got.length > 0, 3000, 'first message');
  for (let i = 0; i < CUTS; i++) {
    await sleep(60 + Math.random() * 120);
    if (i % 2 === 0) cutter.cut();
    else cutter.cutMidChunk();
    await until(() => client.stats().resumes === i + 1, 5000, `resume ${i + 1}`);
  }
  await until(() => got.length >= N && up.got.length >= N, 10_000, 'every message delivered');
  clearInterval(pump);
  await sleep(100); // nothing more may come
  t.equal(gaps(got, N), 'none', `the client got u:1..u:${N} once each, in order (${got.length} messages)`);
  t.equal(gaps(up.got, N), 'none', `the upstream got c:1..c:${N} once each, in order (${up.got.length} messages)`);
  t.equal(up.sessions, 1, 'the upstream saw one session');
  t.same(up.closes, [], 'and it was never closed');
  const st = client.stats();
  t.equal(st.resumes, CUTS, `${CUTS} cuts, ${CUTS} resumes`);
  t.equal(st.lostContinuity, 0, 'continuity never lost');
  t.ok(cutter.accepted >= CUTS + 1, `${cutter.accepted} connections through the relay`);
  t.ok(outcomes.every((o) => (o as { resumed: boolean }).resumed === true), 'every resumed event said resumed: true');
  const text = await proxy.registry.metrics();
  t.match(text, /sluice_resumes_total\{outcome="resumed"\} 6/, 'sluice_resumes_total{outcome="resumed"} counts them');
  t.match(text, /sluice_sessions_parked 0/, 'no session parked now');
  t.match(text, /sluice_parked_seconds_count 6/, 'six parks measured');
});

t.test('the grace runs out: the upstream gets 1001 "client gone", the client hears continuity was lost', async (t) => {
  const { up, proxy, cutter, client } = await throughCutter(t, { graceSeconds: 1 });
  client.send('c:1');
  up.ws!.send('u:1');
  await until(() => up.got.length === 1 && client.stats().received === 1, 3000, 'first messages (the token came before)');
  cutter.down();
  cutter.cut();
  await until(() => up.closes.length === 1, 5000, 'the upstream closed');
  t.same(up.closes[0], { code: 1001, reason: 'client gone' }, 'upstream closed with 1001 "client gone" after the grace');
  // Not events.once: it would reject on the 'error' events of the redials the relay refuses.
  const resumed = new Promise<{ resumed: boolean; reason?: string }>((resolve) => client.once('resumed', resolve));
  cutter.heal();
  const info = await resumed;
  t.equal(info.resumed, false, 'the client was told continuity is lost');
  t.match(info.reason, /ended/, `with the reason (${info.reason})`);
  t.equal(client.stats().lostContinuity, 1, 'stats().lostContinuity counts it');
  await until(() => up.sessions === 2, 3000, 'a new upstream session');
  client.send('c:2');
  await until(() => up.got.length === 2, 3000, 'the new session carries messages');
  t.match(await proxy.registry.metrics(), /sluice_resumes_total\{outcome="expired"\} 1/, 'counted as outcome="expired"');
});

t.test('past bufferBytes the upstream is held back, nothing dropped; the client gets it all when it comes back', async (t) => {
  const bufferBytes = 64 * 1024;
  const { up, proxy, cutter, got } = await throughCutter(t, { graceSeconds: 20, bufferBytes });
  up.ws!.send('u:0');
  await until(() => got.length === 1, 3000, 'first message (the token came before it)');
  got.length = 0;
  cutter.down();
  cutter.cut();
  const session = [...(proxy as Proxy).sessions][0] as Session;
  await until(() => session.resume!.parkedAt !== 0, 3000, 'parked');
  // 24 MiB offered while the client is away: far past the buffer and the kernel's socket buffers.
  const N = 6000;
  const filler = ' '.repeat(4096);
  let sent = 0;
  let maxHeld = 0;
  await new Promise<void>((resolve) => {
    const pump = () => {
      const ws = up.ws!;
      while (sent < N && ws.bufferedAmount < 1024 * 1024) ws.send(`u:${++sent}${filler}`);
      maxHeld = Math.max(maxHeld, session.resume!.replay.bytes);
      if (ws.bufferedAmount >= 1024 * 1024) resolve();
      else if (sent < N) setTimeout(pump, 1);
      else resolve();
    };
    pump();
  });
  await sleep(300);
  maxHeld = Math.max(maxHeld, session.resume!.replay.bytes);
  t.ok(session.resume!.held, 'the upstream is held back');
  t.ok(up.ws!.bufferedAmount >= 1024 * 1024, `the upstream feels it (${(up.ws!.bufferedAmount / 1048576).toFixed(1)} MiB waiting in its own buffer)`);
  t.ok(maxHeld <= bufferBytes + 256 * 1024, `the proxy held at most ${maxHeld} bytes for the client (bufferBytes ${bufferBytes} plus one read)`);
  cutter.heal();
  const pump2 = setInterval(() => {
    const ws = up.ws!;
    while (sent < N && ws.bufferedAmount < 1024 * 1024) ws.send(`u:${++sent}${filler}`);
  }, 5);
  t.teardown(() => clearInterval(pump2));
  await until(() => got.length >= N, 20_000, 'every message delivered');
  clearInterval(pump2);
  t.equal(gaps(got, N), 'none', `the client got all ${N} messages once each, in order`);
  t.equal(up.sessions, 1, 'one upstream session');
});

/** A raw envelope client (v2) speaking the resume protocol by hand, as a client in another language would. */
async function rawClient(url: string, headers: Record<string, string> = { 'Sluice-Resume': 'new' }) {
  const ws = new WebSocket(url, ['sluice.v2'], { headers });
  const frames: Array<{ type: number; payload: Buffer }> = [];
  ws.on('message', (d: Buffer, isBinary: boolean) => {
    const f = decodeEnvelope('v2', d, isBinary, { maxPayloadBytes: 1 << 20 });
    if (typeof f !== 'number') frames.push({ type: f.type, payload: Buffer.from(f.payload) });
  });
  await once(ws, 'open');
  const control = () => frames.filter((f) => f.type === EnvelopeType.Control).map((f) => JSON.parse(f.payload.toString()) as Record<string, unknown>);
  const data = () => frames.filter((f) => f.type === EnvelopeType.Data).map((f) => f.payload.toString());
  const send = (type: number, payload: string) => ws.send(encodeEnvelope('v2', type, 0, Buffer.from(payload)).data);
  return { ws, frames, control, data, send };
}

/**
 * An upstream and a proxy (v2 allowed) with a resume route to it, for raw clients; torn down
 * with the test (`keepOpen`: the test closes the proxy itself). `url` is the route's.
 */
async function rawSetup(t: Test, resume: { graceSeconds?: number; bufferBytes?: number }, extra: Record<string, unknown> = {}, keepOpen = false) {
  const up = await numberedUpstream();
  const { routeExtra, ...proxyExtra } = extra as { routeExtra?: Record<string, unknown> };
  const proxy = createProxy({ ...V2, listen: { host: HOST, port: 0 }, log: { level: 'silent' }, routes: [resumeRoute(up.url, resume, routeExtra)], ...proxyExtra });
  const { port } = await proxy.listen();
  t.teardown(async () => {
    if (!keepOpen) await proxy.close({ drainMs: 200 });
    await up.close();
  });
  return { up, proxy, url: `ws://${HOST}:${port}/r` };
}

t.test('the wire: token, acks, {"resumed":true,"received":M}, the replay after N; a bad received; a clean close ends it', async (t) => {
  const { up, proxy, url } = await rawSetup(t, { graceSeconds: 10 });
  const a = await rawClient(url);
  await until(() => a.control().length >= 1 && up.ws !== null, 3000, 'token');
  const first = a.control()[0] as { resume: { token: string; graceSeconds: number } };
  t.match(first.resume.token, /^0\.[A-Za-z0-9_-]{22}$/, 'the first control frame carries a token: shard prefix and 128 bits in base64url');
  t.equal(first.resume.graceSeconds, 10, 'and the grace');
  t.equal((first.resume as { bufferBytes?: number }).bufferBytes, 1048576, 'and the replay buffer\'s size');
  for (const n of [1, 2, 3]) up.ws!.send(`u:${n}`);
  a.send(EnvelopeType.Data, 'c:1');
  a.send(EnvelopeType.Data, 'c:2');
  await until(() => a.data().length === 3 && up.got.length === 2, 3000, 'traffic');
  a.send(EnvelopeType.Ping, '');
  await until(() => a.control().some((c) => c.ack === 2), 3000, 'an ack').catch(() => {});
  t.ok(a.control().some((c) => c.ack === 2), 'a ping brings the proxy\'s {"ack":2} (the client\'s two data frames)');
  a.ws.terminate(); // gone without a close frame
  await until(() => (proxy.sessions.values().next().value as Session).resume!.parkedAt !== 0, 3000, 'parked');
  up.ws!.send('u:4');
  // Ahead of what was sent: a new session, the old one untouched.
  const bad = await rawClient(url, { 'Sluice-Resume': `${first.resume.token}; received=99` });
  await until(() => bad.control().length >= 2, 3000, 'refusal');
  t.same(bad.control()[0], { resumed: false, reason: 'received is beyond what was sent' }, 'received past what was sent: resumed false, first');
  t.ok('resume' in bad.control()[1], 'then the new session\'s token');
  bad.ws.close();
  await until(() => up.sessions === 2 && proxy.sessions.size === 1, 3000, 'the refused one ends alone');
  // Comes back having received 1 of the 4.
  const b = await rawClient(url, { 'Sluice-Resume': `${first.resume.token}; received=1` });
  await until(() => b.data().length === 3, 3000, 'replay');
  t.same(b.control()[0], { resumed: true, received: 2, replayed: 3 }, '{"resumed":true,"received":2,"replayed":3}');
  t.same(b.data(), ['u:2', 'u:3', 'u:4'], 'then the upstream\'s messages after 1, in order');
  b.send(EnvelopeType.Data, 'c:3');
  await until(() => up.got.length === 3, 3000, 'goes on');
  t.same(up.got, [1, 2, 3], 'the session goes on: c:3 reaches the same upstream session');
  // A clean close ends it for good: the token is dead.
  b.send(EnvelopeType.Close, '\u0003\u00e8bye');
  await until(() => up.closes.length >= 2, 3000, 'closed');
  const c = await rawClient(url, { 'Sluice-Resume': `${first.resume.token}; received=4` });
  await until(() => c.control().length >= 1, 3000, 'answer');
  t.match(c.control()[0], { resumed: false }, 'after a clean close the token resumes nothing');
  c.ws.close();
});

t.test('a token presented with other credentials is refused continuity', async (t) => {
  const keys = ['key-of-alice', 'key-of-bob'];
  const sha256 = keys.map((k) => createHash('sha256').update(k).digest('hex'));
  const { up, url } = await rawSetup(t, { graceSeconds: 10 }, { routeExtra: { auth: { apiKeys: { sha256, header: 'x-api-key' } } } });
  const alice = await rawClient(url, { 'x-api-key': keys[0], 'Sluice-Resume': 'new' });
  await until(() => alice.control().length >= 1, 3000, 'token');
  const token = (alice.control()[0] as { resume: { token: string } }).resume.token;
  alice.ws.terminate();
  const bob = await rawClient(url, { 'x-api-key': keys[1], 'Sluice-Resume': `${token}; received=0` });
  await until(() => bob.control().length >= 1, 3000, 'answer');
  t.same(bob.control()[0], { resumed: false, reason: 'the token belongs to other credentials' }, 'bob gets a new session, not alice\'s');
  bob.ws.close();
  const alice2 = await rawClient(url, { 'x-api-key': keys[0], 'Sluice-Resume': `${token}; received=0` });
  await until(() => alice2.control().length >= 1, 3000, 'answer');
  t.match(alice2.control()[0], { resumed: true }, 'alice herself still resumes it');
  t.equal(up.sessions, 2, 'one upstream session for alice (kept), one for bob');
  alice2.ws.close();
});

// Shards share their port through SO_REUSEPORT: the addon, or Node >= 22.12 (as in shard.test.ts).
const noShards = process.env.SLUICE_NO_NATIVE === '1' && !nodeHasReusePort() ? `no SO_REUSEPORT: SLUICE_NO_NATIVE=1 on Node ${process.versions.node}` : false;
t.test('resume across two shards: a resume that lands on the other shard is relayed to the session', { skip: noShards }, async (t) => {
  const { up, proxy, cutter, client, got } = await throughCutter(t, { graceSeconds: 10 }, true);
  const relays = async () => Number(/^sluice_resume_relays_total (\d+)/m.exec(await proxy.registry.metrics())?.[1] ?? 0);
  let sentC = 0;
  let sentU = 0;
  const pump = setInterval(() => {
    client.send(`c:${++sentC}`);
    if (up.ws!.readyState === WebSocket.OPEN) up.ws!.send(`u:${++sentU}`);
  }, 5);
  t.teardown(() => clearInterval(pump));
  // The kernel picks the shard of each new connection: cut until one resume went to the
  // other shard (each has even odds; 40 tries), and at least 3 resumes in all.
  await until(() => got.length > 0, 3000, 'first message'); // the token came before it
  let cuts = 0;
  while (cuts < 40 && (cuts < 3 || (await relays()) === 0)) {
    cuts++;
    cutter.cut();
    await until(() => client.stats().resumes === cuts, 5000, `resume ${cuts}`);
    await sleep(20);
  }
  clearInterval(pump);
  const relayed = await relays();
  t.ok(relayed > 0, `${relayed} of ${cuts} resumes reached the other shard and were relayed`);
  await until(() => got.length === sentU && up.got.length === sentC, 5000, 'every message delivered');
  t.equal(gaps(got, sentU), 'none', `the client got u:1..u:${sentU} once each, in order`);
  t.equal(gaps(up.got, sentC), 'none', `the upstream got c:1..c:${sentC} once each, in order`);
  t.equal(up.sessions, 1, 'one upstream session throughout');
  t.equal(client.stats().lostContinuity, 0, 'continuity never lost');
});

t.test('a client that does not ask for resume gets an ordinary session on a resume route', async (t) => {
  const { up, proxy, url } = await rawSetup(t, { graceSeconds: 10 });
  const plain = await rawClient(url, {});
  await until(() => up.ws !== null, 3000, 'upstream session');
  up.ws!.send('u:1');
  await until(() => plain.data().length === 1, 3000, 'a message');
  t.same(plain.control(), [], 'no token: it never acknowledges, so nothing is kept for it');
  const s = proxy.sessions.values().next().value as { resume?: unknown; constructor: { name: string } };
  t.ok(s.resume === undefined || s.resume === null, `an ordinary session (${s.constructor.name})`);
  plain.ws.terminate();
  await until(() => up.closes.length === 1, 3000, 'upstream closed');
  t.same(up.closes[0], { code: 1001, reason: 'client connection lost' }, 'its loss ends the upstream session at once, as on any route');
});

t.test('the upstream closes while its client is away: the client gets the replay, then that close; at the connection limit the resume still gets in', async (t) => {
  const { up, proxy, url } = await rawSetup(t, { graceSeconds: 10 }, { limits: { maxConnections: 1 } });
  const a = await rawClient(url);
  await until(() => a.control().length >= 1 && up.ws !== null, 3000, 'token');
  const token = (a.control()[0] as { resume: { token: string } }).resume.token;
  up.ws!.send('u:1');
  await until(() => a.data().length === 1, 3000, 'u:1');
  a.ws.terminate();
  await until(() => (proxy.sessions.values().next().value as Session).resume!.parkedAt !== 0, 3000, 'parked');
  up.ws!.send('u:2');
  up.ws!.close(4001, 'done here');
  await until(() => up.closes.length === 1, 3000, 'upstream closed');
  t.equal(proxy.sessions.size, 1, 'the session stays parked after its upstream closed');
  const other = await new Promise<number>((resolve) => {
    const ws = new WebSocket(url, ['sluice.v2'], { headers: { 'Sluice-Resume': 'new' } });
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    ws.on('open', () => { ws.close(); resolve(101); });
    ws.on('error', () => {});
  });
  t.equal(other, 503, 'a new client is refused at maxConnections: 1');
  const b = await rawClient(url, { 'Sluice-Resume': `${token}; received=1` });
  await until(() => b.frames.some((f) => f.type === EnvelopeType.Close), 3000, 'close');
  t.same(b.control()[0], { resumed: true, received: 0, replayed: 1 }, 'the resume gets in at the limit: its session holds the place');
  t.same(b.data(), ['u:2'], 'the message sent before the close');
  const close = b.frames.find((f) => f.type === EnvelopeType.Close)!.payload;
  t.same({ code: close.readUInt16BE(0), reason: close.subarray(2).toString() }, { code: 4001, reason: 'done here' }, 'then the upstream\'s close code and reason');
  await until(() => proxy.sessions.size === 0, 3000, 'the session ends');
});

t.test('a drain ends parked sessions at once, the held upstream reads its close reply', async (t) => {
  const { up, proxy, url } = await rawSetup(t, { graceSeconds: 30, bufferBytes: 1024 }, {}, true);
  const a = await rawClient(url);
  await until(() => a.control().length >= 1 && up.ws !== null, 3000, 'token');
  a.ws.terminate();
  const s = proxy.sessions.values().next().value as Session;
  await until(() => s.resume!.parkedAt !== 0, 3000, 'parked');
  for (let i = 1; i <= 20; i++) up.ws!.send(`u:${i} ${'x'.repeat(200)}`);
  await until(() => s.resume!.held, 3000, 'held');
  const t0 = Date.now();
  await proxy.close({ drainMs: 5000 });
  t.ok(Date.now() - t0 < 2000, `close() took ${Date.now() - t0} ms (not the 5 s drain)`);
  await until(() => up.closes.length === 1, 3000, 'upstream closed');
  t.same(up.closes[0], { code: 1001, reason: 'proxy shutting down' }, 'the upstream got 1001 and its close handshake completed');
  t.match(await proxy.registry.metrics(), /sluice_sessions_parked 0[\s\S]*sluice_resume_buffered_bytes 0/, 'nothing parked or buffered after');
});
