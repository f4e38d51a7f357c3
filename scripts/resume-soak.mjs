#!/usr/bin/env node
// Resume soak (issue #17): sluice (node dist/cli.js) and a numbering upstream in child
// processes; N SDK clients with `resume: true` reach sluice through a TCP relay in this
// process that cuts connections at random (abruptly, or in the middle of a chunk) while
// both sides stream numbered messages. At the end: every message was delivered exactly
// once and in order both ways, the upstream saw one session per client, no client lost
// continuity, and sluice's memory stayed within what its replay buffers allow. Every 15 s
// the relay is down for 2 s (every client parked at once, their buffers filling past
// bufferBytes, the upstream held back). Prints a JSON summary; exits 1 on any failure.
//
//   node scripts/resume-soak.mjs                 60 s, 200 clients, bufferBytes 16 KiB
//   options: --duration S  --clients N  --buffer-bytes B  --cut-rate R (cuts per client per second)
// Needs the TypeScript build (npm run build:ts).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { freePort, procStats, sleep, stopSluice, waitHealthy } from './soak-kit.mjs';

const root = new URL('..', import.meta.url).pathname;
const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '60' },
    clients: { type: 'string', default: '200' },
    'buffer-bytes': { type: 'string', default: String(16 * 1024) },
    'cut-rate': { type: 'string', default: '0.1' },
  },
});
const DURATION_S = Number(values.duration);
const CLIENTS = Number(values.clients);
const BUFFER_BYTES = Number(values['buffer-bytes']);
const CUT_RATE = Number(values['cut-rate']);
/** Each side sends one message per client per tick. */
const TICK_MS = 100;
const PAYLOAD = 'x'.repeat(1000);
/** Every OUTAGE_EVERY_MS the relay cuts everything and refuses connections for OUTAGE_MS. */
const OUTAGE_EVERY_MS = 15_000;
const OUTAGE_MS = 2000;

const cli = join(root, 'dist', 'cli.js');
if (!existsSync(cli)) {
  console.error('resume-soak: dist/cli.js is missing; run `npm run build:ts` first');
  process.exit(2);
}
const { connect } = await import(join(root, 'dist', 'client', 'index.js'));

const failures = [];
const rssMiB = (pid) => procStats(pid).rssMiB;

// ---- the upstream: numbers what it sends to each client, checks what it receives

const UPSTREAM_SRC = `
import { WebSocketServer } from 'ws';
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
const byId = new Map();
let sessions = 0;
let sending = true;
wss.on('connection', (ws) => {
  sessions++;
  const s = { id: null, lastIn: 0, problems: 0, sent: 0, ws };
  ws.on('error', () => {});
  ws.on('message', (d) => {
    const text = d.toString();
    const colon = text.indexOf(':');
    const id = text.slice(1, colon);
    const n = Number(text.slice(colon + 1, text.indexOf(' ')));
    if (s.id === null) {
      s.id = id;
      if (byId.has(id)) byId.get(id).extraSessions++;
      else byId.set(id, s);
      s.extraSessions = 0;
    }
    if (n !== s.lastIn + 1) s.problems++;
    s.lastIn = n;
  });
});
setInterval(() => {
  if (!sending) return;
  for (const s of byId.values()) {
    if (s.ws.readyState === 1 && s.ws.bufferedAmount < 256 * 1024) s.ws.send('u' + s.id + ':' + (++s.sent) + ' ${PAYLOAD}');
  }
}, ${TICK_MS});
process.stdin.setEncoding('utf8').on('data', (cmd) => {
  if (cmd.includes('stop')) sending = false;
  if (cmd.includes('report')) {
    const out = {};
    for (const [id, s] of byId) out[id] = { lastIn: s.lastIn, problems: s.problems, sent: s.sent, extraSessions: s.extraSessions, closed: s.ws.readyState !== 1 };
    console.log(JSON.stringify({ sessions, byId: out }));
  }
});
wss.on('listening', () => console.log('port ' + wss.address().port));
`;
const upstream = spawn(process.execPath, ['--input-type=module', '-e', UPSTREAM_SRC], { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] });
const upLines = [];
upstream.stdout.setEncoding('utf8').on('data', (d) => upLines.push(...d.trim().split('\n')));
while (upLines.length === 0) await sleep(20);
const upstreamPort = Number(upLines.shift().split(' ')[1]);
async function upstreamReport() {
  const had = upLines.length;
  upstream.stdin.write('report\n');
  while (upLines.length === had) await sleep(20);
  return JSON.parse(upLines.pop());
}

// ---- sluice in its own process

const port = await freePort();
const adminPort = await freePort();
const dir = mkdtempSync(join(tmpdir(), 'sluice-resume-soak-'));
const configFile = join(dir, 'sluice.json');
writeFileSync(configFile, JSON.stringify({
  listen: { host: '127.0.0.1', port },
  admin: { host: '127.0.0.1', port: adminPort },
  log: { level: 'error' },
  protocol: 'v2',
  routes: [{ path: '/soak', mode: 'envelope', resume: { graceSeconds: 30, bufferBytes: BUFFER_BYTES }, upstreams: [{ url: `ws://127.0.0.1:${upstreamPort}/` }] }],
}));
const sluice = spawn(process.execPath, [cli, '--config', configFile], { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
let sluiceExit = null;
sluice.on('exit', (code, signal) => { sluiceExit = { code, signal }; });

async function metrics() {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const value = (name) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
  const outcomes = {};
  for (const m of text.matchAll(/^sluice_resumes_total\{outcome="([^"]*)"\} (\S+)$/gm)) outcomes[m[1]] = Number(m[2]);
  return { parked: value('sluice_sessions_parked'), buffered: value('sluice_resume_buffered_bytes'), active: value('agent_websocket_active_sessions'), outcomes };
}
if (!(await waitHealthy(adminPort, () => sluiceExit))) {
  console.error('resume-soak: sluice did not start', sluiceExit);
  upstream.kill('SIGKILL');
  process.exit(1);
}

// ---- the cutting relay

const pairs = new Set();
let cuts = 0;
let midChunkCuts = 0;
let down = false;
let outages = 0;
const relay = net.createServer((inbound) => {
  if (down) {
    inbound.destroy();
    return;
  }
  const outbound = net.connect(port, '127.0.0.1');
  const pair = { inbound, outbound, cutMid: false };
  pairs.add(pair);
  const kill = () => {
    pairs.delete(pair);
    inbound.destroy();
    outbound.destroy();
  };
  for (const [from, to] of [[inbound, outbound], [outbound, inbound]]) {
    from.on('data', (chunk) => {
      if (pair.cutMid && chunk.length > 1) {
        pair.cutMid = false;
        midChunkCuts++;
        to.write(chunk.subarray(0, 1 + Math.floor(Math.random() * (chunk.length - 1))), kill);
        return;
      }
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => from.resume());
      }
    });
    from.on('error', () => {});
    from.on('close', kill);
  }
  pair.kill = kill;
});
relay.listen(0, '127.0.0.1');
await once(relay, 'listening');
const relayPort = relay.address().port;

// ---- clients

const clients = [];
for (let i = 0; i < CLIENTS; i++) {
  const id = String(i);
  const c = connect(`ws://127.0.0.1:${relayPort}/soak`, {
    resume: true, reconnect: { initialDelayMs: 20, maxDelayMs: 300 }, queue: { maxMessages: 100_000 },
  });
  const state = { id, c, sent: 0, lastIn: 0, problems: 0, refused: 0 };
  c.on('message', (d) => {
    const text = d.toString();
    const n = Number(text.slice(text.indexOf(':') + 1, text.indexOf(' ')));
    if (n !== state.lastIn + 1) state.problems++;
    state.lastIn = n;
  });
  c.on('error', () => {});
  clients.push(state);
  await sleep(5);
}
await Promise.all(clients.map((s) => (s.c.state === 'open' ? null : once(s.c, 'open'))));
await sleep(500);
const baselineRss = rssMiB(sluice.pid);

let sending = true;
const sender = setInterval(() => {
  if (!sending) return;
  for (const s of clients) if (s.c.send(`c${s.id}:${s.sent + 1} ${PAYLOAD}`)) s.sent++;
}, TICK_MS);
const cutter = setInterval(() => {
  for (const p of pairs) {
    if (Math.random() >= (CUT_RATE * 100) / 1000) continue;
    cuts++;
    if (Math.random() < 0.5) p.cutMid = true;
    else p.kill();
  }
}, 100);
const outage = setInterval(() => {
  down = true;
  outages++;
  for (const p of pairs) p.kill();
  setTimeout(() => { down = false; }, OUTAGE_MS);
}, OUTAGE_EVERY_MS);
let maxRss = baselineRss;
let maxBuffered = 0;
let maxParked = 0;
const t0 = Date.now();
while (Date.now() - t0 < DURATION_S * 1000) {
  await sleep(1000);
  maxRss = Math.max(maxRss, rssMiB(sluice.pid));
  const m = await metrics();
  maxBuffered = Math.max(maxBuffered, m.buffered);
  maxParked = Math.max(maxParked, m.parked);
  if (sluiceExit) break;
}

// ---- wind down: no more cuts or messages; wait until everything sent has arrived
clearInterval(cutter);
clearInterval(outage);
await sleep(OUTAGE_MS);
down = false;
sending = false;
clearInterval(sender);
upstream.stdin.write('stop\n');
let report = null;
const deadline = Date.now() + 30_000;
for (;;) {
  report = await upstreamReport();
  const done = clients.every((s) => s.c.stats().queued === 0 && report.byId[s.id] !== undefined &&
    report.byId[s.id].lastIn === s.sent && s.lastIn === report.byId[s.id].sent);
  if (done || Date.now() > deadline) break;
  await sleep(250);
}
// Clients acknowledge at least once a second: then nothing is left in the replay buffers.
await sleep(1500);
const end = await metrics();

// ---- checks
const sum = (f) => clients.reduce((a, s) => a + f(s), 0);
const resumes = sum((s) => s.c.stats().resumes);
const lost = sum((s) => s.c.stats().lostContinuity);
const sentUp = sum((s) => s.sent);
const sentDown = Object.values(report.byId).reduce((a, r) => a + r.sent, 0);
if (sluiceExit) failures.push(`sluice exited during the soak: ${JSON.stringify(sluiceExit)}`);
if (report.sessions !== CLIENTS) failures.push(`the upstream saw ${report.sessions} sessions for ${CLIENTS} clients`);
for (const s of clients) {
  const r = report.byId[s.id];
  if (r === undefined) { failures.push(`client ${s.id}: the upstream never heard from it`); continue; }
  if (r.lastIn !== s.sent || r.problems !== 0) failures.push(`client ${s.id} -> upstream: sent ${s.sent}, upstream has up to ${r.lastIn}, ${r.problems} out of order or twice`);
  if (s.lastIn !== r.sent || s.problems !== 0) failures.push(`upstream -> client ${s.id}: sent ${r.sent}, client has up to ${s.lastIn}, ${s.problems} out of order or twice`);
  if (r.closed) failures.push(`client ${s.id}: its upstream session was closed`);
}
if (lost !== 0) failures.push(`${lost} times a client lost continuity`);
const expectedCuts = CLIENTS * CUT_RATE * DURATION_S;
if (cuts < expectedCuts / 2) failures.push(`only ${cuts} cuts (about ${expectedCuts} expected)`);
if (resumes < cuts * 0.5) failures.push(`${resumes} resumes for ${cuts} cuts`);
// sluice may count more: a connection cut after its resume was answered, before the client read the answer.
if ((end.outcomes.resumed ?? 0) < resumes) failures.push(`sluice counted ${end.outcomes.resumed} resumes, the clients ${resumes}`);
// Memory: what the replay buffers may hold (bufferBytes per session, plus one read of at
// most 64 KiB), plus 64 MiB for sockets, parsers and the heap's own growth.
const bufferBound = CLIENTS * (BUFFER_BYTES + 64 * 1024);
if (maxBuffered > bufferBound) failures.push(`replay buffers held ${maxBuffered} bytes, over ${bufferBound}`);
const rssBound = baselineRss + Math.ceil(bufferBound / 1048576) + 64;
if (maxRss > rssBound) failures.push(`sluice RSS ${baselineRss} -> ${maxRss} MiB, over ${rssBound}`);
if (end.parked !== 0 || end.buffered !== 0) failures.push(`at the end: ${end.parked} parked, ${end.buffered} bytes buffered`);

await Promise.all(clients.map((s) => s.c.close()));
relay.close();
for (const p of pairs) p.kill();
const stopProblem = await stopSluice(sluice, () => sluiceExit);
if (stopProblem) failures.push(stopProblem);
upstream.kill('SIGKILL');
rmSync(dir, { recursive: true, force: true });

const summary = {
  ok: failures.length === 0,
  failures: failures.slice(0, 20),
  durationSeconds: DURATION_S,
  clients: CLIENTS,
  bufferBytes: BUFFER_BYTES,
  cuts, midChunkCuts, outages, resumes, lostContinuity: lost,
  messages: { clientToUpstream: sentUp, upstreamToClient: sentDown },
  upstreamSessions: report.sessions,
  sluice: { rssMiB: { baseline: baselineRss, max: maxRss, bound: rssBound }, maxBufferedBytes: maxBuffered, bufferBound, maxParked, outcomes: end.outcomes },
};
console.log(JSON.stringify(summary, null, 2));
process.exit(summary.ok ? 0 : 1);
