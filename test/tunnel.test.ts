/**
 * Tunnels end to end (issue #14), with real processes on loopback: a gateway (`sluice
 * --config`) with an agent route and L4 tunnels, an agent (`sluice agent`) exposing TCP and
 * UDP services run by this test. What travels is checked byte for byte (SHA-256).
 */
import { createHash, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import { SignJWT } from 'jose';
import t from 'tap';
import { WebSocket, WebSocketServer } from 'ws';
import { connectAgent } from '../src/tunnel/agent.js';
import { spawnSync } from 'node:child_process';
import { buildCli, cleanEnv, cli, freePort, startCli, type CliProcess } from './fixtures/cli-process.js';

const note = buildCli();
if (note !== null) t.comment(note);

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const KEY_ANY = 'agent-key-any-name-0123456789abcdef';
const KEY_B = 'agent-key-only-site-b-0123456789abc';
const JWT_SECRET = 'a-jwt-secret-of-at-least-32-bytes!!';

// ---- services the agent exposes (run here: real sockets) -----------------------------------

/** Echoes every byte, half-closes after its client did. */
const echo = net.createServer({ allowHalfOpen: true }, (s) => {
  s.on('error', () => {}); // reset when an agent is killed under it
  s.pipe(s);
});
/** Hashes what it reads; at the client's end (its half-close), answers the digest and the length. */
const hasher = net.createServer({ allowHalfOpen: true }, (s) => {
  const h = createHash('sha256');
  let n = 0;
  s.on('data', (d: Buffer) => { h.update(d); n += d.length; });
  s.on('end', () => s.end(`${h.digest('hex')} ${n}\n`));
  s.on('error', () => {});
});
/** A WebSocket service behind the agent: echoes, and remembers the path and the close it got. */
const wsSeen: { url: string; close: [number, string] | null } = { url: '', close: null };
const wsEcho = new WebSocketServer({ host: '127.0.0.1', port: 0 });
wsEcho.on('connection', (ws, req) => {
  wsSeen.url = req.url ?? '';
  ws.on('message', (data, isBinary) => ws.send(data as Buffer, { binary: isBinary }));
  ws.on('close', (code, reason) => { wsSeen.close = [code, reason.toString()]; });
});
/** An HTTP service behind the agent: answers with what it got. */
const web = http.createServer((req, res) => {
  const parts: Buffer[] = [];
  req.on('data', (d: Buffer) => parts.push(d));
  req.on('end', () => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ method: req.method, url: req.url, host: req.headers.host, body: Buffer.concat(parts).toString() }));
  });
});
/** Accepts and never reads: a stream to it stalls once its window and the buffers are full. */
const stalls: net.Socket[] = [];
const staller = net.createServer((s) => {
  s.pause();
  s.on('error', () => {});
  stalls.push(s);
});
const udpEcho = dgram.createSocket('udp4');
udpEcho.on('message', (m, r) => udpEcho.send(m, r.port, r.address));

const dir = mkdtempSync(join(tmpdir(), 'sluice-tunnel-'));
let gwPort = 0;
let adminPort = 0;
let agentAdminPort = 0;
const tunnelPorts = { echo: 0, hash: 0, missing: 0, udp: 0, offline: 0, down: 0, named: 0, stall: 0 };
/** A port nothing listens on (a service that is down). */
let downPort = 0;

function gatewayConfig(): string {
  const digest = (k: string) => createHash('sha256').update(k).digest('hex');
  const file = join(dir, 'gateway.yaml');
  writeFileSync(file, `
listen: { host: 127.0.0.1, port: ${gwPort} }
admin: { host: 127.0.0.1, port: ${adminPort} }
log: { level: info }
heartbeat: { pingIntervalSeconds: 1, pongTimeoutSeconds: 3 }
routes:
  - path: /agent
    mode: agent
    auth:
      apiKeys:
        header: authorization
        sha256: [ "${digest(KEY_ANY)}", { sha256: "${digest(KEY_B)}", agents: [ site-b ] } ]
  - path: /ws-via/*
    upstreams: [ { agent: site-a, service: wsecho, path: /echo } ]
  - path: /web/*
    http: true
    upstreams: [ { agent: site-a, service: web } ]
  - path: /offline
    upstreams: [ { agent: nobody, service: web } ]
  - path: /agent-jwt
    mode: agent
    duplicate: refuse
    auth:
      jwt: { secret: "${JWT_SECRET}" }
tunnels:
  - { listen: "127.0.0.1:${tunnelPorts.echo}", agent: site-a, service: echo }
  - { listen: "127.0.0.1:${tunnelPorts.hash}", agent: site-a, service: hash }
  - { listen: "127.0.0.1:${tunnelPorts.missing}", agent: site-a, service: notexposed }
  - { listen: "127.0.0.1:${tunnelPorts.udp}", agent: site-a, service: udp, protocol: udp, udpIdleMs: 2000 }
  - { listen: "127.0.0.1:${tunnelPorts.offline}", agent: nobody, service: echo }
  - { listen: "127.0.0.1:${tunnelPorts.down}", agent: site-a, service: down }
  - { listen: "127.0.0.1:${tunnelPorts.named}", agent: site-a, service: named }
  - { listen: "127.0.0.1:${tunnelPorts.stall}", agent: site-a, service: stall }
`);
  return file;
}

function startAgent(name = 'site-a', token = KEY_ANY, path = '/agent'): CliProcess {
  const a = (s: net.Server) => (s.address() as net.AddressInfo).port;
  return startCli(['agent', '--admin-port', String(agentAdminPort), '--server', `ws://127.0.0.1:${gwPort}${path}`, '--token', token, '--name', name,
    '--expose', `echo=127.0.0.1:${a(echo)}`, '--expose', `hash=127.0.0.1:${a(hasher)}`,
    '--expose', `udp=127.0.0.1:${udpEcho.address().port}`, '--expose', `wsecho=127.0.0.1:${(wsEcho.address() as net.AddressInfo).port}`,
    '--expose', `web=127.0.0.1:${a(web)}`, '--expose', `down=127.0.0.1:${downPort}`, '--expose', `named=localhost:${a(echo)}`,
    '--expose', `stall=127.0.0.1:${a(staller)}`], {}, 120_000);
}

/** Resolves once the gateway logged the agent `name` connected (from log index `from`). */
function agentUp(gw: CliProcess, name: string, from = 0) {
  return gw.waitFor((l) => l.event === 'agent_connected' && l.agent === name, from, 20_000);
}

/** Sends `data` through a TCP tunnel, half-closes, and returns everything that came back. */
async function roundTrip(port: number, data: Buffer): Promise<Buffer> {
  const c = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const parts: Buffer[] = [];
  c.on('data', (d: Buffer) => parts.push(d));
  c.end(data);
  await once(c, 'end');
  c.destroy();
  return Buffer.concat(parts);
}

/** Whether a TCP tunnel connection is closed by the gateway with nothing sent back. */
async function closedAtOnce(port: number): Promise<boolean> {
  const c = net.connect({ port, host: '127.0.0.1' });
  c.on('error', () => {});
  let got = 0;
  c.on('data', (d: Buffer) => { got += d.length; });
  c.write('hello?');
  // (not events.once: it rejects on the reset that may come before the close)
  const closed = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 5000);
    c.once('close', () => { clearTimeout(timer); resolve(true); });
  });
  c.destroy();
  return closed && got === 0;
}

t.before(async () => {
  for (const s of [echo, hasher, web, staller]) await new Promise<void>((r) => (s as net.Server).listen(0, '127.0.0.1', r));
  if (wsEcho.address() === null) await once(wsEcho, 'listening');
  await new Promise<void>((r) => udpEcho.bind(0, '127.0.0.1', r));
  gwPort = await freePort();
  adminPort = await freePort();
  agentAdminPort = await freePort();
  downPort = await freePort();
  for (const k of Object.keys(tunnelPorts) as Array<keyof typeof tunnelPorts>) tunnelPorts[k] = await freePort();
});
t.teardown(() => {
  rmSync(dir, { recursive: true, force: true });
  wsEcho.close();
  web.close();
  echo.close();
  hasher.close();
  for (const s of stalls) s.destroy();
  staller.close();
  udpEcho.close();
});

t.test('sluice agent: bad flags and a bad file are one line each, exit 2', async (t) => {
  const run = (args: string[], env: Record<string, string> = {}) =>
    spawnSync(process.execPath, [cli, 'agent', ...args], { env: cleanEnv(env), encoding: 'utf8', timeout: 20_000 });
  const r = run(['--server', 'http://x', '--name', 'bad name', '--expose', 'db', '--admin-port', '70000']);
  t.equal(r.status, 2);
  t.same(r.stderr.trim().split('\n'), [
    '--server: expected a ws:// or wss:// URL, got "http://x"',
    '--token: expected a JWT or an API key (or SLUICE_AGENT_TOKEN)',
    '--name: expected a name: letters, digits, ".", "_", "-" (at most 63, starting with a letter or digit), got "bad name"',
    '--expose: expected name=host:port, got "db"',
    '--expose: expected at least one service (name=host:port)',
    '--admin-port: expected a port number 0..65535, got "70000"',
  ]);
  const file = join(dir, 'agent.yaml');
  writeFileSync(file, 'agent:\n  server: ws://127.0.0.1:1/agent\n  name: site-z\n  expose: { db: "127.0.0.1:99999" }\n  colour: blue\n');
  const f = run(['--config', file], { SLUICE_AGENT_TOKEN: 'from-env' });
  t.equal(f.status, 2);
  t.same(f.stderr.trim().split('\n'), [`${file}: agent.colour: unknown key`], 'an unknown key in the agent: section is named');
  writeFileSync(file, 'agent:\n  server: ws://127.0.0.1:1/agent\n  name: site-z\n  expose: { db: "127.0.0.1:99999" }\n');
  const g = run(['--config', file], { SLUICE_AGENT_TOKEN: 'from-env' });
  t.same(g.stderr.trim().split('\n'), ['--expose db: expected host:port, got "127.0.0.1:99999"'], 'the file\'s services are checked as the flags\' are');
  t.notMatch(r.stderr + f.stderr + g.stderr, /at .*\.js:\d+/, 'no stack trace');
});

t.test('gateway and agent as processes: TCP (100 MiB by hash, 100 concurrent streams, half-close), UDP, refusals, restarts', async (t) => {
  let gw = startCli(['--config', gatewayConfig()], {}, 150_000);
  t.teardown(() => gw.stop());
  await gw.waitFor((l) => l.event === 'listening' || l.msg === 'listening' || typeof l.port === 'number', 0, 15_000).catch(() => null);
  let agent = startAgent();
  t.teardown(() => agent.stop());
  const up = await agentUp(gw, 'site-a');
  const native = process.env.SLUICE_NO_NATIVE !== '1';
  t.equal(up.native, native, `the gateway's side of the link runs ${native ? 'in the addon' : 'in TypeScript (ws + yamux.ts)'}`);
  const agentUpLog = await agent.waitFor((l) => l.event === 'agent_connected', 0, 20_000);
  t.equal(agentUpLog.native, native, `the agent's side too`);

  await t.test('100 MiB through one stream, checked by hash; the answer after the half-close', async (t) => {
    const data = randomBytes(100 << 20);
    const started = Date.now();
    const answer = (await roundTrip(tunnelPorts.hash, data)).toString().trim();
    t.equal(answer, `${sha(data)} ${data.length}`, `the service read every byte in order (${((data.length / 1048576) / ((Date.now() - started) / 1000)).toFixed(0)} MiB/s)`);
  });

  await t.test('100 streams at once, 256 KiB each, echoed intact', async (t) => {
    const inputs = Array.from({ length: 100 }, () => randomBytes(256 * 1024));
    const outputs = await Promise.all(inputs.map((d) => roundTrip(tunnelPorts.echo, d)));
    t.equal(outputs.filter((o, i) => sha(o) === sha(inputs[i])).length, 100, 'all 100 came back whole');
  });

  await t.test('/stats, /metrics and /readyz show agents, their streams and the tunnels', async (t) => {
    const get = async (path: string) => {
      const r = await fetch(`http://127.0.0.1:${adminPort}${path}`);
      return { status: r.status, text: await r.text() };
    };
    const stats = JSON.parse((await get('/stats')).text) as { agents: Array<{ name: string; services: string[]; streamsTotal: number }>; tunnels: unknown[] };
    const a = stats.agents.find((x) => x.name === 'site-a');
    t.same(a?.services, ['echo', 'hash', 'udp', 'wsecho', 'web', 'down', 'named', 'stall'], '/stats lists the agent and its services');
    t.ok((a?.streamsTotal ?? 0) >= 101, `and the streams it carried (${a?.streamsTotal})`);
    t.equal(stats.tunnels.length, 8, 'and the eight tunnels');
    const metrics = (await get('/metrics')).text;
    t.match(metrics, /^agent_websocket_agents_connected 1$/m, 'agents connected: 1');
    t.match(metrics, /^sluice_agent_streams_total\{agent="site-a"\} (\d+)$/m);
    t.match(metrics, /^sluice_agent_bytes_total\{agent="site-a",direction="in"\} \d{8,}$/m, 'bytes from the agent: the 100 MiB run\'s answers and echoes');
    t.match(metrics, /^sluice_agent_stream_open_seconds_count \d+$/m, 'stream open times are a histogram');
    t.match(metrics, /^sluice_tunnel_connections_total\{listen="127\.0\.0\.1:\d+",protocol="tcp",agent="site-a",service="echo",result="opened"\} 100$/m,
      '100 connections opened through the echo tunnel');
    const agentMetrics = await (await fetch(`http://127.0.0.1:${agentAdminPort}/metrics`)).text();
    t.match(agentMetrics, /^sluice_agent_connected 1$/m, 'the agent\'s own metrics: connected');
    t.match(agentMetrics, /^sluice_agent_streams_total (\d{3,})$/m, 'the streams it served');
    t.match(agentMetrics, /^sluice_agent_bytes_total\{direction="in"\} \d{9,}$/m, 'the bytes it got (the 100 MiB run)');
    t.equal((await fetch(`http://127.0.0.1:${agentAdminPort}/readyz`)).status, 200, 'the agent is ready while connected');
    const ready = await get('/readyz');
    t.equal(ready.status, 503, 'not ready: a tunnel names an agent that is not connected');
    const reasons = (JSON.parse(ready.text) as { reasons: string[] }).reasons;
    t.same(reasons, ['route /offline: no healthy upstream', 'agent nobody: not connected'], '/readyz names that agent, and only it');
  });

  await t.test('a WebSocket route and an HTTP route through the agent; an agent that is not connected: 502', async (t) => {
    const ws = new WebSocket(`ws://127.0.0.1:${gwPort}/ws-via/room/7?x=1`);
    await once(ws, 'open');
    ws.send('hello through the tunnel');
    const [msg] = await once(ws, 'message') as [Buffer];
    t.equal(msg.toString(), 'hello through the tunnel', 'echoed by the service behind the agent');
    t.equal(wsSeen.url, '/echo/room/7?x=1', 'the path maps onto the upstream\'s path as for any route');
    ws.close(4001, 'bye from the client');
    await once(ws, 'close');
    const deadline = Date.now() + 3000;
    while (wsSeen.close === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    t.same(wsSeen.close, [4001, 'bye from the client'], 'the close code and reason reach the service unchanged');

    const get = await fetch(`http://127.0.0.1:${gwPort}/web/hello?q=1`);
    t.equal(get.status, 200);
    t.same(await get.json(), { method: 'GET', url: '/hello?q=1', host: 'web', body: '' }, 'GET through the agent (Host: the service name)');
    const post = await fetch(`http://127.0.0.1:${gwPort}/web/form`, { method: 'POST', body: 'a=1&b=2' });
    t.match(await post.json(), { method: 'POST', url: '/form', body: 'a=1&b=2' }, 'POST with its body');

    const off = new WebSocket(`ws://127.0.0.1:${gwPort}/offline`);
    off.on('error', () => {});
    const [, res] = await once(off, 'unexpected-response') as [unknown, http.IncomingMessage];
    t.equal(res.statusCode, 502, 'an upstream through an agent that is not connected: 502');
    off.terminate();
  });

  await t.test('flow control per stream: a stream whose service never reads stalls alone; 20 MiB go through another meanwhile', async (t) => {
    const stuck = net.connect({ port: tunnelPorts.stall, host: '127.0.0.1' });
    stuck.on('error', () => {});
    await once(stuck, 'connect');
    const block = Buffer.alloc(256 * 1024, 9);
    let written = 0;
    // Write until the whole path pushes back (the stream's window, and the sockets' buffers):
    // no drain within 300 ms.
    let stalled = false;
    while (!stalled && written < 256 << 20) {
      written += block.length;
      if (stuck.write(block)) continue;
      stalled = await Promise.race([once(stuck, 'drain').then(() => false), new Promise<boolean>((r) => setTimeout(() => r(true), 300))]);
    }
    const stuckQueued = stuck.writableLength;
    t.ok(stalled && stuckQueued > 0, `the stalled stream pushes back (${(written / 1048576).toFixed(1)} MiB written, ${(stuckQueued / 1048576).toFixed(1)} MiB still waiting in the client)`);
    const data = randomBytes(20 << 20);
    const answer = (await roundTrip(tunnelPorts.hash, data)).toString().trim();
    t.equal(answer, `${sha(data)} ${data.length}`, 'another stream carries 20 MiB meanwhile');
    t.equal(stuck.writableLength, stuckQueued, 'and the stalled one took nothing more');
    stuck.destroy();
  });

  await t.test('a service the agent does not expose, and an agent that is not connected: closed at once', async (t) => {
    t.ok(await closedAtOnce(tunnelPorts.missing), 'unexposed service: the connection is closed, nothing sent back');
    await agent.waitFor((l) => l.event === 'agent_stream_refused' && /not exposed/.test(String(l.error)));
    t.ok(await closedAtOnce(tunnelPorts.offline), 'agent "nobody" is not connected: closed at once');
    t.ok(await closedAtOnce(tunnelPorts.down), 'a service that is down: closed at once');
    await agent.waitFor((l) => l.event === 'agent_stream_refused' && /^down: ECONNREFUSED$/.test(String(l.error)));
    const back = await roundTrip(tunnelPorts.named, Buffer.from('by name'));
    t.equal(back.toString(), 'by name', 'a service given by host name (localhost) is looked up, then dialled');
  });

  await t.test('UDP: datagrams go through and come back, one stream per client address', async (t) => {
    const sock = dgram.createSocket('udp4');
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
    const got: string[] = [];
    sock.on('message', (m) => got.push(m.toString()));
    for (let i = 0; i < 20; i++) sock.send(`datagram ${i}`, tunnelPorts.udp, '127.0.0.1');
    const deadline = Date.now() + 5000;
    while (got.length < 20 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    t.same(got.sort(), Array.from({ length: 20 }, (_, i) => `datagram ${i}`).sort(), 'all 20 datagrams echoed (loopback: none lost)');
    // The flow idles out (udpIdleMs 2000): the gateway resets its stream; the agent lives on.
    await new Promise((r) => setTimeout(r, 2600));
    t.equal(agent.child.exitCode, null, 'the agent survives its UDP stream being reset');
    got.length = 0;
    sock.send('after idle', tunnelPorts.udp, '127.0.0.1');
    const again = Date.now() + 5000;
    while (got.length < 1 && Date.now() < again) await new Promise((r) => setTimeout(r, 20));
    sock.close();
    t.same(got, ['after idle'], 'and a new flow from the same address works');
  });

  await t.test('refusals: a bad token gets 401; a name the key may not register gets 1008; a JWT registers its sub', async (t) => {
    const url = `ws://127.0.0.1:${gwPort}`;
    const bad = connectAgent({ server: `${url}/agent`, token: 'wrong-key', name: 'site-x', expose: { echo: '127.0.0.1:1' } });
    const [refused] = await once(bad, 'refused') as [{ status: number }];
    t.equal(refused.status, 401, 'bad token: 401 before any upgrade');
    await bad.close();

    const b = connectAgent({ server: `${url}/agent`, token: KEY_B, name: 'site-a', expose: { echo: '127.0.0.1:1' } });
    const [gone] = await once(b, 'disconnected') as [{ code: number; reason: string }];
    t.equal(gone.code, 1008, 'key limited to site-b asking for site-a: 1008');
    t.match(gone.reason, /not allowed/);
    await b.close();
    t.equal(await roundTrip(tunnelPorts.echo, Buffer.from('still me')).then(String), 'still me', 'the real site-a still serves');

    const token = await new SignJWT({ agents: ['site-j2'] }).setProtectedHeader({ alg: 'HS256' }).setSubject('site-j')
      .setExpirationTime('5m').sign(Buffer.from(JWT_SECRET));
    const from = gw.logs.length;
    const j = connectAgent({ server: `${url}/agent-jwt`, token, name: 'site-j2', expose: { echo: '127.0.0.1:1' } });
    await agentUp(gw, 'site-j2', from);
    t.pass('a JWT may register a name of its agents claim');
    const dup = connectAgent({ server: `${url}/agent-jwt`, token, name: 'site-j2', expose: { echo: '127.0.0.1:1' } });
    const [dupGone] = await once(dup, 'disconnected') as [{ code: number; reason: string }];
    t.equal(dupGone.code, 1008, 'duplicate: refuse: a second site-j2 is refused while the first is connected');
    t.match(dupGone.reason, /already connected/);
    await dup.close();
    await j.close();
  });

  await t.test('the agent killed: its streams fail, new ones are closed at once; restarted: they work again', async (t) => {
    const c = net.connect(tunnelPorts.echo, '127.0.0.1');
    c.on('error', () => {});
    c.write('before');
    await once(c, 'data');
    const from = gw.logs.length;
    agent.child.kill('SIGKILL');
    await new Promise((r) => c.once('close', r));
    t.pass('an open tunnel connection is closed when its agent dies');
    await gw.waitFor((l) => l.event === 'agent_disconnected' || l.event === 'agent_silent', from, 10_000);
    t.ok(await closedAtOnce(tunnelPorts.echo), 'no agent: a new connection is closed at once');
    const again = gw.logs.length;
    agent = startAgent();
    await agentUp(gw, 'site-a', again);
    t.equal((await roundTrip(tunnelPorts.echo, Buffer.from('after restart'))).toString(), 'after restart', 'the restarted agent serves');
  });

  await t.test('the gateway restarted: the agent comes back by itself', async (t) => {
    const agentLogs = agent.logs.length;
    await gw.stop();
    await agent.waitFor((l) => l.event === 'agent_disconnected', agentLogs, 10_000);
    gw = startCli(['--config', gatewayConfig()], {}, 120_000);
    await agentUp(gw, 'site-a');
    t.equal((await roundTrip(tunnelPorts.echo, Buffer.from('new gateway'))).toString(), 'new gateway', 'streams work through the new gateway');
  });
});

t.test('SLUICE_TUNNEL=typescript runs the TypeScript link on both ends, with the addon loaded', {
  skip: process.env.SLUICE_NO_NATIVE === '1' ? 'the TypeScript link runs anyway under SLUICE_NO_NATIVE=1' : false,
}, async (t) => {
  const [gw2, admin2, tunnel2, agentAdmin2] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const file = join(dir, 'gateway-ts-link.yaml');
  writeFileSync(file, `
listen: { host: 127.0.0.1, port: ${gw2} }
admin: { host: 127.0.0.1, port: ${admin2} }
log: { level: info }
routes:
  - { path: /agent, mode: agent, auth: { apiKeys: { header: authorization, sha256: [ "${createHash('sha256').update(KEY_ANY).digest('hex')}" ] } } }
tunnels:
  - { listen: "127.0.0.1:${tunnel2}", agent: ts-link, service: echo }
`);
  const env = { SLUICE_TUNNEL: 'typescript' };
  const gw = startCli(['--config', file], env, 60_000);
  t.teardown(() => gw.stop());
  await gw.waitFor((l) => /listening/.test(String(l.msg)), 0, 15_000).catch(() => undefined);
  const agent = startCli(['agent', '--admin-port', String(agentAdmin2), '--server', `ws://127.0.0.1:${gw2}/agent`, '--token', KEY_ANY,
    '--name', 'ts-link', '--expose', `echo=127.0.0.1:${(echo.address() as net.AddressInfo).port}`], env, 60_000);
  t.teardown(() => agent.stop());
  const up = await agentUp(gw, 'ts-link');
  t.equal(up.native, false, 'the gateway runs the TypeScript link');
  t.equal((await roundTrip(tunnel2, Buffer.from('through the twin'))).toString(), 'through the twin', 'a TCP tunnel works through it');
});
