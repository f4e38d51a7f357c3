/**
 * Several instances as one proxy (README "Scaling out"): a real redis-server and three
 * sluice processes on loopback. The cluster-wide connection limit holds whichever
 * instance the clients reach; a SIGKILLed instance frees its places within its lease;
 * per-IP rates hold across instances; Redis stopped and started again mid-test: sessions
 * stay up, new connections are served under local limits, then the instances reconcile.
 */
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { connectAgent } from '../src/tunnel/agent.js';
import { connect as sluiceConnect } from '../src/client/index.js';
import { startCutter } from './fixtures/cutter.js';
import { createProxy } from '../src/index.js';
import { spawnSync } from 'node:child_process';
import { buildCli, cleanEnv, cli, startCli, type CliProcess } from './fixtures/cli-process.js';
import { redisMissing, startRedis, type RedisServer } from './fixtures/redis.js';
import { until } from './fixtures/peers.js';

const skip = redisMissing() ?? false;
const SECRET = 'a-cluster-secret-of-at-least-32-bytes!';
const LEASE_SECONDS = 2;

interface Instance { id: string; port: number; admin: number; cli: CliProcess; extra: number }

/** `n` distinct free loopback ports: held open together while they are picked, so none is handed out twice. */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(Array.from({ length: n }, () => new Promise<net.Server>((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => resolve(s));
  })));
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

async function startInstances(
  t: Test, redis: RedisServer, n: number, limits: Record<string, number>, routeExtra: Record<string, unknown> = {},
  more: (i: number, port: number, extra: number) => { routes?: unknown[]; tunnels?: unknown[] } = () => ({}),
  cliArgs: string[] = [],
): Promise<Instance[]> {
  const problem = buildCli();
  if (problem !== null) throw new Error(problem);
  const dir = mkdtempSync(join(tmpdir(), 'sluice-cluster-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const out: Instance[] = [];
  // Every port at once (listen, admin, one spare for a tunnel per instance): none twice.
  const ports = await freePorts(3 * n);
  for (let i = 0; i < n; i++) {
    const id = `gw-${i + 1}`;
    const [port, admin, spare] = ports.slice(3 * i, 3 * i + 3);
    const file = join(dir, `${id}.json`);
    const extra = more(i, port, spare);
    writeFileSync(file, JSON.stringify({
      tunnels: extra.tunnels ?? [],
      listen: { host: '127.0.0.1', port },
      admin: { host: '127.0.0.1', port: admin },
      log: { level: 'info' },
      limits,
      cluster: {
        redis: { url: redis.url, keyPrefix: `t${process.pid}:` }, instanceId: id, leaseSeconds: LEASE_SECONDS, secret: SECRET,
        advertise: `ws://127.0.0.1:${port}`,
      },
      routes: [
        { path: '/echo', upstreams: [{ url: 'builtin:echo' }] },
        { path: '/small', upstreams: [{ url: 'builtin:echo' }], maxConnections: 4, ...routeExtra },
        ...(extra.routes ?? []),
      ],
    }));
    const cli = startCli(['--config', file, ...cliArgs], {}, 120_000);
    t.teardown(() => cli.stop());
    out.push({ id, port, admin, cli, extra: spare });
  }
  for (const inst of out) await inst.cli.waitFor((l) => l.event === 'listening' || /listening/.test(String(l.msg ?? '')), 0, 15_000);
  return out;
}

/** Open a WebSocket; resolves with it, or with the HTTP status that refused it. */
function open(port: number, path = '/echo'): Promise<WebSocket | number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`);
    ws.on('open', () => resolve(ws));
    ws.on('unexpected-response', (_req, res) => { res.resume(); resolve(res.statusCode ?? 0); });
    ws.on('error', () => resolve(0));
  });
}

async function json(port: number, path: string): Promise<Record<string, unknown>> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: r.status, ...(await r.json() as Record<string, unknown>) };
}

function closeAll(list: Array<WebSocket | number>): void {
  for (const w of list) if (typeof w !== 'number') w.terminate();
}

t.test('the cluster-wide connection limit holds whichever instance the clients reach', { skip }, async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const inst = await startInstances(t, redis, 3, { maxConnections: 10 });
  // One at a time, round robin: exactly the bound.
  const seq: Array<WebSocket | number> = [];
  for (let i = 0; i < 13; i++) seq.push(await open(inst[i % 3].port));
  t.equal(seq.filter((w) => typeof w !== 'number').length, 10, 'one at a time over three instances: exactly 10 of 13 get in');
  t.same(seq.slice(10), [503, 503, 503], 'then 503 on every instance');
  // A made-up resume token naming another instance is no way around the bound.
  const forged = await new Promise<number>((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${inst[0].port}/echo`, {
      headers: { 'Sluice-Resume': `0.${'A'.repeat(22)}.${Buffer.from('gw-2').toString('base64url')}; received=0` },
    });
    ws.on('open', () => { ws.terminate(); resolve(101); });
    ws.on('unexpected-response', (_req, res) => { res.resume(); resolve(res.statusCode ?? 0); });
    ws.on('error', () => resolve(0));
  });
  t.equal(forged, 503, 'a forged Sluice-Resume header does not skip the cluster bound');
  // The view is read at each lease renewal (every leaseSeconds / 3).
  let ids: string[] = [];
  for (const deadline = Date.now() + LEASE_SECONDS * 1000; ids.length < 3 && Date.now() < deadline;) {
    ids = ((await json(inst[0].admin, '/stats?cluster=1')).instances as Array<{ id: string }>).map((i) => i.id).sort();
    await new Promise((r) => setTimeout(r, 100));
  }
  t.same(ids, ['gw-1', 'gw-2', 'gw-3'], '/stats?cluster=1 lists the three instances');
  closeAll(seq);
  // Places come back as sessions end (the lease renewal and the releases give them back).
  await new Promise((r) => setTimeout(r, 500));
  // 30 at once, spread over the instances: never above the bound, and at most one place per instance short of it.
  const burst = await Promise.all(Array.from({ length: 30 }, (_, i) => open(inst[i % 3].port)));
  const inside = burst.filter((w) => typeof w !== 'number').length;
  t.ok(inside <= 10 && inside >= 10 - 3, `30 at once: ${inside} got in (bound 10, documented slack: one place per instance)`);
  closeAll(burst);
  await new Promise((r) => setTimeout(r, 500));
  // A route's own bound is cluster-wide too.
  const route: Array<WebSocket | number> = [];
  for (let i = 0; i < 6; i++) route.push(await open(inst[i % 3].port, '/small'));
  t.equal(route.filter((w) => typeof w !== 'number').length, 4, 'routes[].maxConnections: 4 across the cluster');
  closeAll(route);
});

t.test('an instance SIGKILLed frees its places within leaseSeconds + 1 s', { skip }, async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const inst = await startInstances(t, redis, 3, { maxConnections: 6 });
  const held: Array<WebSocket | number> = [];
  for (let i = 0; i < 4; i++) held.push(await open(inst[0].port));
  for (let i = 0; i < 2; i++) held.push(await open(inst[1].port));
  t.equal(held.filter((w) => typeof w !== 'number').length, 6, 'the cluster is full: 4 on gw-1, 2 on gw-2');
  t.equal(await open(inst[2].port), 503, 'gw-3 refuses');
  inst[0].cli.child.kill('SIGKILL');
  const killedAt = Date.now();
  let admitted: WebSocket | number = 503;
  while (typeof admitted === 'number' && Date.now() - killedAt < (LEASE_SECONDS + 3) * 1000) {
    await new Promise((r) => setTimeout(r, 100));
    admitted = await open(inst[2].port);
  }
  const after = Date.now() - killedAt;
  t.ok(typeof admitted !== 'number', 'gw-3 admits again');
  t.ok(after <= (LEASE_SECONDS + 1) * 1000, `within ${after} ms of the SIGKILL (lease ${LEASE_SECONDS} s + 1 s)`);
  closeAll([...held, admitted]);
});

t.test('per-IP connection rates hold across instances', { skip }, async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const inst = await startInstances(t, redis, 3, { maxConnections: 100, connectionRatePerIp: 2, connectionBurstPerIp: 3 });
  const got = await Promise.all(Array.from({ length: 9 }, (_, i) => open(inst[i % 3].port)));
  const inside = got.filter((w) => typeof w !== 'number').length;
  t.equal(inside, 3, `9 connections from one address over three instances at once: the burst of 3 gets in (${inside})`);
  t.equal(got.filter((w) => w === 429).length, 6, 'the rest get 429');
  closeAll(got);
});

t.test('Redis stopped and started again: sessions stay up, local limits meanwhile, then reconciled', { skip }, async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const inst = await startInstances(t, redis, 3, { maxConnections: 9 });
  const before: WebSocket[] = [];
  for (let i = 0; i < 3; i++) before.push(await open(inst[i].port) as WebSocket);
  await redis.stop();
  // The instances notice at their next call or renewal.
  await until(() => inst.every((i) => i.cli.logs.some((l) => l.event === 'cluster_degraded')), (LEASE_SECONDS + 2) * 1000, 'degraded');
  const ready = await json(inst[0].admin, '/readyz') as { status: number; ready: boolean; reasons: string[] };
  t.equal(ready.status, 200, '/readyz still 200 (it serves)');
  t.match(ready.reasons.join(' '), /cluster degraded/, `with the reason: ${ready.reasons.join('; ')}`);
  t.match(await (await fetch(`http://127.0.0.1:${inst[0].admin}/metrics`)).text(), /sluice_cluster_degraded 1/, 'sluice_cluster_degraded 1');
  // Sessions opened before carry on.
  for (const ws of before) {
    const echoed = new Promise<string>((resolve) => ws.once('message', (d) => resolve(String(d))));
    ws.send('still here');
    t.equal(await echoed, 'still here', 'a session opened before the outage still echoes');
  }
  // New connections: each instance its share, ceil(9 / 3) = 3, counting its own sessions (1 each).
  const during: Array<WebSocket | number> = [];
  for (let i = 0; i < 4; i++) during.push(await open(inst[0].port));
  t.equal(during.filter((w) => typeof w !== 'number').length, 2, 'gw-1 admits up to its share (3, one already held) while Redis is away');
  await redis.start();
  await until(() => inst.every((i) => i.cli.logs.some((l) => l.event === 'cluster_reconciled')), 15_000, 'reconciled');
  const again = await json(inst[0].admin, '/readyz') as { reasons: string[] };
  t.same(again.reasons, [], 'reconciled: no degraded reason');
  const stats = await json(inst[0].admin, '/stats?cluster=1') as { places: { global: { reserved: number; used: number } } };
  t.equal(stats.places.global.used, 3, 'gw-1 counts its 3 sessions');
  // 3 + 1 + 1 sessions live: 4 more places in the cluster.
  const more: Array<WebSocket | number> = [];
  for (let i = 0; i < 6; i++) more.push(await open(inst[(i % 2) + 1].port));
  t.equal(more.filter((w) => typeof w !== 'number').length, 4, 'after reconciling, the cluster bound again (9 - 5 live = 4)');
  closeAll([...before, ...during, ...more]);
});

t.test('routes[].auth.connectionRatePerSubject: per credentials, on one instance and across three', async (t) => {
  const keys = ['key-a', 'key-b'];
  const sha256 = keys.map((k) => createHash('sha256').update(k).digest('hex'));
  const openWith = (port: number, key: string) => new Promise<WebSocket | number>((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/small`, { headers: { 'x-api-key': key } });
    ws.on('open', () => resolve(ws));
    ws.on('unexpected-response', (_req, res) => { res.resume(); resolve(res.statusCode ?? 0); });
    ws.on('error', () => resolve(0));
  });
  const auth = { apiKeys: { sha256 }, connectionRatePerSubject: 2 };
  const proxy = createProxy({ listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, routes: [{ path: '/small', upstreams: [{ url: 'builtin:echo' }], auth }] });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 100 }));
  const a = await Promise.all([1, 2, 3, 4].map(() => openWith(port, keys[0])));
  t.same(a.map((w) => (typeof w === 'number' ? w : 101)).sort(), [101, 101, 429, 429], 'one instance: key a gets 2 (a burst of one second\'s worth), then 429');
  const b = await openWith(port, keys[1]);
  t.ok(typeof b !== 'number', 'key b has its own allowance');
  closeAll([...a, b]);
  if (skip !== false) return;
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const inst = await startInstances(t, redis, 3, { maxConnections: 100 }, { auth });
  const across = await Promise.all([0, 1, 2, 0, 1, 2].map((i) => openWith(inst[i].port, keys[0])));
  t.equal(across.filter((w) => typeof w !== 'number').length, 2, 'three instances: key a still gets 2 of 6');
  closeAll(across);
});

t.test('an instance that starts while Redis is away serves under local limits, then joins', { skip }, async (t) => {
  const redis = await startRedis();
  await redis.stop();
  t.teardown(() => redis.stop());
  const [gw] = await startInstances(t, redis, 1, { maxConnections: 4 });
  await gw.cli.waitFor((l) => l.event === 'cluster_degraded', 0, 5000);
  const ws = await open(gw.port);
  t.ok(typeof ws !== 'number', 'it serves while Redis is away');
  await redis.start();
  await gw.cli.waitFor((l) => l.event === 'cluster_reconciled', 0, 15_000);
  const stats = await json(gw.admin, '/stats?cluster=1') as { degraded: boolean; places: { global: { reserved: number; used: number } } };
  t.equal(stats.degraded, false, 'then joins the cluster');
  t.same([stats.places.global.used, stats.places.global.reserved], [1, 1], 'with its session reserved in Redis');
  closeAll([ws]);
});

t.test('an agent on one instance serves clients of another: a WebSocket route and a TCP tunnel, relayed', { skip }, async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  // The services behind the agent: a WebSocket echo and a TCP echo, here.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  wss.on('connection', (ws) => ws.on('message', (d, binary) => ws.send(d as Buffer, { binary })));
  const tcp = net.createServer((s) => { s.on('error', () => {}); s.pipe(s); });
  await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', r));
  t.teardown(() => { wss.close(); tcp.close(); });
  const key = 'agent-key-of-the-cluster-test-0123';
  const inst = await startInstances(t, redis, 3, { maxConnections: 100 }, {}, (_i, _port, spare) => ({
    routes: [
      { path: '/agent', mode: 'agent', auth: { apiKeys: { header: 'authorization', sha256: [createHash('sha256').update(key).digest('hex')] } } },
      { path: '/svc', upstreams: [{ agent: 'site-a', service: 'ws' }] },
    ],
    tunnels: [{ listen: `127.0.0.1:${spare}`, agent: 'site-a', service: 'tcp' }],
  }));
  const expose = { ws: `127.0.0.1:${(wss.address() as net.AddressInfo).port}`, tcp: `127.0.0.1:${(tcp.address() as net.AddressInfo).port}` };
  const agent = connectAgent({ server: `ws://127.0.0.1:${inst[0].port}/agent`, token: key, name: 'site-a', expose });
  t.teardown(() => agent.close());
  await inst[0].cli.waitFor((l) => l.event === 'agent_connected', 0, 10_000);
  // A WebSocket client of gw-3, whose route's upstream is through site-a (on gw-1).
  const ws = await open(inst[2].port, '/svc');
  t.ok(typeof ws !== 'number', `gw-3 opens /svc through the agent on gw-1 (${typeof ws === 'number' ? ws : 101})`);
  if (typeof ws === 'number') return;
  const echoed = new Promise<string>((resolve) => ws.once('message', (d) => resolve(String(d))));
  ws.send('through two instances');
  t.equal(await echoed, 'through two instances', 'messages go through gw-3, gw-1, the agent and back');
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
  ws.close(4321, 'bye');
  t.equal(await closed, 4321, 'the close code survives both hops');
  // A TCP client of gw-3's tunnel listener.
  const c = net.connect(inst[2].extra, '127.0.0.1');
  const got: Buffer[] = [];
  c.on('data', (d: Buffer) => got.push(d));
  c.write('tcp through the cluster');
  await until(() => Buffer.concat(got).toString() === 'tcp through the cluster', 5000, 'tcp echo');
  t.pass('a TCP tunnel on gw-3 reaches the agent on gw-1');
  c.destroy();
  // Each instance reads which agents the cluster holds at its lease renewal.
  let ready = { status: 0, reasons: [] as string[] };
  for (const deadline = Date.now() + LEASE_SECONDS * 1000; ready.status !== 200 && Date.now() < deadline;) {
    ready = await json(inst[2].admin, '/readyz') as typeof ready;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(ready.status, 200, `gw-3 is ready: its tunnel's agent is connected to the cluster (${ready.reasons.join('; ')})`);
  // The same name on another instance: replace, cluster-wide.
  const b = connectAgent({ server: `ws://127.0.0.1:${inst[1].port}/agent`, token: key, name: 'site-a', expose });
  t.teardown(() => b.close());
  await inst[0].cli.waitFor((l) => l.event === 'agent_replaced' && l.by === 'gw-2', 0, 10_000);
  t.pass('a second site-a on gw-2 replaces the one on gw-1 (the rule of one instance, cluster-wide)');
  await b.close();
  await agent.close();
});

t.test('a reload reaches every instance: POST /reload?cluster=1, and SIGHUP with --cluster-wide', { skip }, async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const inst = await startInstances(t, redis, 3, { maxConnections: 100 }, {}, () => ({}), ['--cluster-wide']);
  const r = await fetch(`http://127.0.0.1:${inst[0].admin}/reload?cluster=1`, { method: 'POST' });
  t.same(await r.json(), { reloaded: true, broadcast: { instances: 2 } }, 'gw-1 reloads and tells the 2 others');
  for (const i of inst.slice(1)) await i.cli.waitFor((l) => l.event === 'reload' && String(l.trigger) === 'cluster (gw-1)', 0, 5000);
  t.pass('gw-2 and gw-3 re-read their configs');
  const from = inst[0].cli.logs.length;
  inst[2].cli.child.kill('SIGHUP');
  await inst[0].cli.waitFor((l) => l.event === 'reload' && String(l.trigger) === 'cluster (gw-3)', from, 5000);
  t.pass('a SIGHUP to gw-3 started with --cluster-wide reloads gw-1 too');
});

t.test('resume across instances: a client that comes back through another instance is relayed to its session', { skip }, async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  let upstreamSessions = 0;
  wss.on('connection', (ws) => {
    upstreamSessions++;
    ws.on('message', (d) => ws.send(d as Buffer));
  });
  t.teardown(() => { for (const c of wss.clients) c.terminate(); wss.close(); });
  const url = `ws://127.0.0.1:${(wss.address() as net.AddressInfo).port}/`;
  const inst = await startInstances(t, redis, 2, { maxConnections: 100 }, {}, () => ({
    routes: [{ path: '/r', mode: 'envelope', resume: { graceSeconds: 10 }, upstreams: [{ url }] }],
  }));
  const cutter = await startCutter(inst[0].port);
  t.teardown(() => cutter.close());
  const client = sluiceConnect(`ws://127.0.0.1:${cutter.port}/r`, { resume: true, reconnect: { initialDelayMs: 20, maxDelayMs: 100 } });
  t.teardown(() => client.close());
  const got: number[] = [];
  client.on('message', (d) => got.push(Number(d.toString())));
  client.on('error', () => {});
  await new Promise((r) => client.once('open', r));
  let sent = 0;
  const pump = setInterval(() => { client.send(String(++sent)); }, 5);
  t.teardown(() => clearInterval(pump));
  await until(() => got.length > 5, 5000, 'echoes');
  // Each instance reads the others' addresses at its lease renewal.
  await new Promise((r) => setTimeout(r, (LEASE_SECONDS * 1000) / 2));
  cutter.retarget(inst[1].port);
  cutter.cut();
  await until(() => client.stats().resumes === 1, 5000, 'resumed through gw-2');
  await new Promise((r) => setTimeout(r, 200));
  clearInterval(pump);
  await until(() => got.length === sent, 5000, 'every echo');
  t.equal(client.stats().lostContinuity, 0, 'continuity kept');
  t.same(got, Array.from({ length: sent }, (_, i) => i + 1), `${sent} messages echoed once each, in order`);
  t.equal(upstreamSessions, 1, 'one upstream session: the resume reached gw-1 through gw-2');
});

t.test('sluice --check hides cluster.secret and the Redis password', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-cluster-check-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'c.json');
  writeFileSync(file, JSON.stringify({ cluster: { redis: { url: 'redis://:hunter2-password@127.0.0.1:6379' }, secret: SECRET } }));
  const r = spawnSync(process.execPath, [cli, '--config', file, '--check'], { encoding: 'utf8', env: cleanEnv() });
  t.equal(r.status, 0, 'valid');
  t.notMatch(r.stdout, /hunter2|a-cluster-secret/, 'neither appears');
  t.match(r.stdout, /cluster\.redis\.url = "redis:\/\/\*\*\*@127\.0\.0\.1:6379"/, 'the URL without its password');
});
