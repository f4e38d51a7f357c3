/**
 * The client SDK (src/client) against real servers on loopback: an envelope server built
 * on src/protocol (test/fixtures/envelope-server.ts) and a real sluice envelope route.
 * Restarts are real: servers closed and started again on the same port, and SDK processes
 * killed with SIGKILL.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { connect, type SluiceClient, type SluiceClientEvents, type ConnectOptions } from '../src/client/index.js';
import { startEnvelopeServer, type EnvelopeServer } from './fixtures/envelope-server.js';
import { startWsBackend, until } from './fixtures/peers.js';
import { createProxy, type Proxy } from '../src/index.js';
import { encodeEnvelope, EnvelopeType } from '../src/protocol/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const fast: ConnectOptions = { reconnect: { initialDelayMs: 20, maxDelayMs: 100 } };

function client(t: Test, url: string, opts: ConnectOptions = {}): SluiceClient {
  const c = connect(url, { ...fast, ...opts });
  t.teardown(() => c.close());
  return c;
}

async function server(t: Test, opts: Parameters<typeof startEnvelopeServer>[0] = {}): Promise<EnvelopeServer> {
  const s = await startEnvelopeServer(opts);
  t.teardown(() => s.close());
  return s;
}

/** The next `event` of a client (events.once would reject on the client's 'error' events). */
function next<E extends keyof SluiceClientEvents>(c: SluiceClient, event: E): Promise<SluiceClientEvents[E]> {
  return new Promise((resolve) => c.once(event, ((...args: SluiceClientEvents[E]) => resolve(args)) as never));
}

const texts = (bufs: Buffer[]) => bufs.map((b) => b.toString());
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => `m${from + i}`);

function tempDir(t: Test): string {
  const d = mkdtempSync(path.join(tmpdir(), 'sluice-client-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

t.test('negotiation: the SDK offers v2 then v1 and speaks what was chosen', async (t) => {
  for (const [allowed, protocols, wantProtocol, wantVersion] of [
    ['v2', undefined, 'sluice.v2', 'v2'],
    ['v1', undefined, 'sluice.v1', 'v1'],
    ['v2', ['v1'], 'sluice.v1', 'v1'],
    ['v2', [], '', 'v1'],
  ] as const) {
    const s = await server(t, { allowed });
    const c = client(t, s.url, { protocols: protocols === undefined ? undefined : [...protocols] });
    const [info] = await next(c, 'open');
    t.same(info, { protocol: wantProtocol, version: wantVersion }, `allowed ${allowed}, offered ${JSON.stringify(protocols ?? ['v2', 'v1'])}`);
    t.equal(s.history[0].version, wantVersion, 'the server speaks the same version');
    c.send('héllo');
    c.send(new Uint8Array([0, 1, 255]));
    const got: Buffer[] = [];
    c.on('message', (d) => got.push(d));
    await until(() => got.length === 2, 3000, 'echo');
    t.same(got.map((b) => b.toString('hex')), [Buffer.from('héllo').toString('hex'), '0001ff'], `round trip on ${wantVersion}`);
    await c.drain();
    t.match(c.stats(), { accepted: 2, sent: 2, confirmed: 2, received: 2, queued: 0, version: wantVersion });
    await c.close();
    await s.close();
  }
});

t.test('a v2-only client against a v1-only server does not connect', async (t) => {
  const s = await server(t, { allowed: 'v1' });
  const c = client(t, s.url, { protocols: ['v2'], reconnect: false });
  const errors: string[] = [];
  c.on('error', (e) => errors.push(e.message));
  const [info] = await next(c, 'close');
  t.equal(c.state, 'closed');
  t.match(errors.join('\n'), /no subprotocol/i);
  t.ok(info.code >= 1000);
});

t.test('queued while the server is down, delivered once and in order after its restart', async (t) => {
  const received: Buffer[] = [];
  let s = await startEnvelopeServer({ received });
  const port = s.port;
  t.teardown(() => s.close());
  const c = client(t, s.url);
  const reconnecting: number[] = [];
  c.on('reconnecting', (i) => reconnecting.push(i.delayMs));
  await next(c, 'open');
  for (const m of range(0, 100)) c.send(m);
  await c.drain();
  await s.close();
  await until(() => c.state === 'reconnecting', 3000, 'reconnecting');
  for (const m of range(100, 300)) t.equal(c.send(m), true);
  t.equal(c.stats().queued, 200, 'held while disconnected');
  await new Promise((r) => setTimeout(r, 300)); // a few failed redials
  s = await startEnvelopeServer({ port, received });
  await c.drain();
  t.same(texts(received), range(0, 300), 'every message once, in order');
  t.ok(reconnecting.length >= 2, `redialled ${reconnecting.length} times`);
  t.ok(reconnecting.every((d) => d >= 0 && d <= 100), 'delays within the jitter ceiling');
  t.equal(c.stats().connections, 2);
});

t.test('unconfirmed messages are sent again after a drop (at least once, in order)', async (t) => {
  const s = await server(t);
  s.answerPings = false; // nothing gets confirmed
  const c = client(t, s.url);
  await next(c, 'open');
  for (const m of range(0, 10)) c.send(m);
  await until(() => s.received.length === 10, 3000, 'first delivery');
  t.equal(c.stats().unconfirmed, 10);
  s.answerPings = true;
  for (const sess of s.sessions) sess.ws.terminate();
  await c.drain();
  t.same(texts(s.received), [...range(0, 10), ...range(0, 10)], 'resent from the first unconfirmed, in order');
  t.equal(c.stats().resent, 10);
});

t.test('backpressure: sends pause while the flag is up and resume when it clears', async (t) => {
  const s = await server(t);
  const c = client(t, s.url);
  await next(c, 'open');
  const flags: boolean[] = [];
  c.on('backpressure', (on) => flags.push(on));
  s.signal(true);
  await until(() => c.backpressure, 3000, 'flag up');
  for (const m of range(0, 20)) c.send(m);
  await new Promise((r) => setTimeout(r, 200));
  t.equal(s.received.length, 0, 'nothing sent while the flag is up');
  t.equal(c.stats().queued, 20);
  s.signal(false);
  await c.drain();
  t.same(texts(s.received), range(0, 20));
  t.same(flags, [true, false]);
  t.equal(c.stats().backpressureEvents, 1);
  // A control frame from a hook (no flag, no backpressure key) is a control event, not "drained".
  const controls: unknown[] = [];
  c.on('control', (p) => controls.push(p));
  for (const sess of s.sessions) sess.ws.send(encodeEnvelope('v2', EnvelopeType.Control, 0, Buffer.from('{"op":"x"}')).data);
  await until(() => controls.length === 1, 3000, 'control');
  t.same(controls, [{ op: 'x' }]);
});

t.test('heartbeat: no pong within the timeout drops the connection and redials', async (t) => {
  const s = await server(t);
  const c = client(t, s.url, { heartbeat: { pingIntervalMs: 50, pongTimeoutMs: 150 } });
  await next(c, 'open');
  s.answerPings = false;
  const errors: string[] = [];
  c.on('error', (e) => errors.push(e.code));
  const started = Date.now();
  await next(c, 'reconnecting');
  const took = Date.now() - started;
  t.ok(took >= 140 && took < 1500, `dropped after ${took} ms`);
  t.ok(errors.includes('SLUICE_ERR_CLIENT_PONG_TIMEOUT'));
  s.answerPings = true;
  await next(c, 'open');
  t.equal(c.stats().connections, 2);
});

t.test('close frames: the server\'s code reaches the client; fatal codes end it, others redial', async (t) => {
  const s = await server(t);
  const c = client(t, s.url);
  await next(c, 'open');
  s.closeSessions(4001, 'try again');
  const [r] = await next(c, 'reconnecting');
  t.match(r, { code: 4001, reason: 'try again' });
  await next(c, 'open');
  s.closeSessions(1008, 'token expired');
  const [closed] = await next(c, 'close');
  t.same(closed, { code: 1008, reason: 'token expired' });
  t.equal(c.state, 'closed');
  t.throws(() => c.send('x'), { code: 'SLUICE_ERR_CLIENT_CLOSED' });
});

t.test('close(): an envelope close frame with the code and reason, then the socket', async (t) => {
  const s = await server(t);
  const c = client(t, s.url);
  await next(c, 'open');
  c.send('last');
  await c.close(4000, 'bye', { drainMs: 2000 });
  t.same(texts(s.received), ['last'], 'drained before closing');
  t.same(s.closes, [{ code: 4000, reason: 'bye' }]);
  t.equal(c.state, 'closed');
  await until(() => s.sessions.size === 0, 3000, 'server side closed');
});

t.test('bounded outbox and message size', async (t) => {
  const c = client(t, 'ws://127.0.0.1:9/nowhere', { queue: { maxMessages: 3, maxBytes: 10 } });
  t.equal(c.send('aaaa'), true);
  t.equal(c.send('bbbb'), true);
  t.equal(c.send('cccc'), false, 'over maxBytes');
  t.equal(c.send('d'), true);
  t.equal(c.send('e'), false, 'over maxMessages');
  t.match(c.stats(), { accepted: 3, rejected: 2, queued: 3, queuedBytes: 9 });
  const big = connect('ws://127.0.0.1:9/nowhere', { maxMessageBytes: 4, reconnect: false });
  t.teardown(() => big.close());
  t.throws(() => big.send('12345'), { code: 'SLUICE_ERR_CLIENT_MESSAGE_TOO_BIG' });
});

t.test('persistence: the log survives a restart; a torn tail is cut; one process per directory', async (t) => {
  const dir = tempDir(t);
  const a = connect('ws://127.0.0.1:9/nowhere', { persist: { dir }, reconnect: false });
  for (const m of range(0, 5)) a.send(m);
  await a.flush();
  t.throws(() => connect('ws://127.0.0.1:9/x', { persist: { dir } }), { code: 'SLUICE_ERR_CLIENT_PERSIST_LOCKED' });
  await a.close();
  // A crash in the middle of a write leaves half a record at the end.
  const log = path.join(dir, 'outbox.log');
  writeFileSync(log, Buffer.concat([readFileSync(log), Buffer.from([1, 0, 0, 0, 0, 0, 0, 9, 0, 0])]));
  const s = await server(t);
  const b = client(t, s.url, { persist: { dir } });
  t.equal(b.stats().recovered, 5);
  await b.drain();
  t.same(texts(s.received), range(0, 5));
  await b.close();
  t.equal(readFileSync(log).length, 0, 'an empty outbox leaves an empty log');
});

/** Run test/fixtures/client-child.ts; resolves with the child and a line reader. */
function child(env: Record<string, string>): { proc: ChildProcess; line: (re: RegExp) => Promise<string> } {
  const proc = spawn(process.execPath, [...process.execArgv, path.join(here, 'fixtures', 'client-child.ts')], {
    env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  const line = (re: RegExp) => new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`child: no line matching ${re} in ${JSON.stringify(out)}`)), 15_000);
    const check = () => {
      const m = out.split('\n').find((l) => re.test(l));
      if (m !== undefined) {
        clearTimeout(timer);
        proc.stdout!.off('data', check);
        resolve(m);
      }
    };
    proc.stdout!.on('data', check);
    check();
  });
  return { proc, line };
}

t.test('SDK process killed with messages queued: a new process delivers them once, in order', async (t) => {
  const dir = tempDir(t);
  const received: Buffer[] = [];
  let s = await startEnvelopeServer({ received });
  const port = s.port;
  t.teardown(() => s.close());
  const first = child({ URL: s.url, DIR: dir, MODE: 'queue' });
  t.teardown(() => first.proc.kill('SIGKILL'));
  await first.line(/^confirmed$/);
  await s.close();
  t.equal(await first.line(/^queued/), 'queued 50');
  first.proc.kill('SIGKILL');
  await once(first.proc, 'exit');
  s = await startEnvelopeServer({ port, received });
  const second = child({ URL: s.url, DIR: dir, MODE: 'replay' });
  t.teardown(() => second.proc.kill('SIGKILL'));
  t.equal(await second.line(/^recovered/), 'recovered 50');
  const stats = JSON.parse(await second.line(/^\{/));
  t.match(stats, { recovered: 50, confirmed: 50, queued: 0 });
  t.same(texts(received), range(0, 100), 'm0..m99, each once, in order');
});

// ---- against a real sluice envelope route ---------------------------------------------

async function sluice(upstream: string, protocol: 'v1' | 'v2'): Promise<{ proxy: Proxy; port: number }> {
  const proxy = createProxy({
    listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, protocol,
    routes: [{ path: '/agent', mode: 'envelope', upstreams: [{ url: upstream }] }],
  });
  const { port } = await proxy.listen();
  return { proxy, port };
}

/**
 * A TCP relay with a fixed port in front of the proxy: "the proxy restarted" is then a new
 * proxy behind the same address. (A new sluice cannot listen on the old one's port at
 * once: the drained sessions leave it in TIME_WAIT and the uWS listen socket does not set
 * SO_REUSEADDR.) While `target` is null the relay drops connections, as a dead proxy would.
 */
async function relay(t: Test): Promise<{ port: number; target: number | null }> {
  const r = { port: 0, target: null as number | null };
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    if (r.target === null) return sock.destroy();
    const up = net.connect(r.target, '127.0.0.1');
    for (const s of [sock, up]) {
      sockets.add(s);
      s.on('error', () => { sock.destroy(); up.destroy(); });
      s.on('close', () => { sockets.delete(s); sock.destroy(); up.destroy(); });
    }
    sock.pipe(up);
    up.pipe(sock);
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  r.port = (srv.address() as net.AddressInfo).port;
  t.teardown(() => new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy();
    srv.close(() => resolve());
  }));
  return r;
}

t.test('through sluice: v2 and v1 echo, and a proxy restart with messages queued', async (t) => {
  const got: string[] = [];
  const backend = await startWsBackend({
    onConnection: (ws) => ws.on('message', (d: Buffer) => { got.push(d.toString()); ws.send(d); }),
  });
  t.teardown(backend.close);
  for (const protocol of ['v2', 'v1'] as const) {
    const front = await relay(t);
    let { proxy, port } = await sluice(backend.url, protocol);
    t.teardown(() => proxy.close({ drainMs: 100 }));
    front.target = port;
    got.length = 0;
    const c = client(t, `ws://127.0.0.1:${front.port}/agent`);
    const [info] = await next(c, 'open');
    t.same(info, { protocol: `sluice.${protocol}`, version: protocol });
    const echoed: string[] = [];
    c.on('message', (d) => echoed.push(d.toString()));
    for (const m of range(0, 50)) c.send(m);
    await c.drain();
    await until(() => echoed.length === 50, 3000, 'echo through sluice');
    t.same(echoed, range(0, 50), `${protocol}: echo in order`);
    front.target = null;
    const reason = next(c, 'reconnecting');
    await proxy.close({ drainMs: 100 });
    t.match((await reason)[0], { code: 1001 }, 'the drain reaches the client as 1001');
    for (const m of range(50, 150)) c.send(m);
    await new Promise((r) => setTimeout(r, 200)); // a few refused redials
    ({ proxy, port } = await sluice(backend.url, protocol));
    front.target = port;
    await c.drain();
    await until(() => got.length >= 150, 3000, 'backend got everything');
    t.same(got, range(0, 150), `${protocol}: every message once and in order across the proxy restart`);
    t.equal(c.stats().connections, 2);
    await c.close();
    await proxy.close({ drainMs: 100 });
  }
});
