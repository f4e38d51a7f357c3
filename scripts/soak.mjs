#!/usr/bin/env node
// Soak with faults: constant load through sluice (node dist/cli.js, a child process) while
// the ws echo backend (another child) is SIGKILLed and restarted on the same port every few
// seconds and clients drop at random (abrupt or with a close code). At the end: sluice did
// not crash, its RSS and fds are back near their baseline, and every session is accounted
// for in /metrics (sessions_total = sum of session_close_total + active, each close with a
// code). Prints a JSON summary; exits 1 on any failure.
//
//   node scripts/soak.mjs            full run: 180 s, 200 clients
//   node scripts/soak.mjs --short    CI run: 25 s, 40 clients
//   options: --duration S  --clients N  --kill-every S
// Needs the TypeScript build (npm run build:ts).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { WebSocket } from 'ws';
import { freePort, procStats, sleep, stopSluice, waitHealthy } from './soak-kit.mjs';

const root = new URL('..', import.meta.url).pathname;
const { values } = parseArgs({
  options: {
    short: { type: 'boolean', default: false },
    duration: { type: 'string' },
    clients: { type: 'string' },
    'kill-every': { type: 'string' },
  },
});
const short = values.short;
const DURATION_S = Number(values.duration ?? (short ? 25 : 180));
const CLIENTS = Number(values.clients ?? (short ? 40 : 200));
const KILL_EVERY_S = Number(values['kill-every'] ?? (short ? 4 : 6));
/** Chance per client per second of a random drop. */
const DROP_PER_SECOND = 0.05;
/** Messages each client keeps in flight. */
const IN_FLIGHT = 4;

const cli = join(root, 'dist', 'cli.js');
if (!existsSync(cli)) {
  console.error('soak: dist/cli.js is missing; run `npm run build:ts` first');
  process.exit(2);
}

const failures = [];

// ---- the backend: a ws echo server in its own process, killed and restarted on one port

const BACKEND_SRC = `
import { WebSocketServer } from 'ws';
const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[1]) });
wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.on('message', (d, binary) => ws.send(d, { binary }));
});
wss.on('listening', () => console.log('ready'));
`;

const backendPort = await freePort();
let backend = null;
let backendKills = 0;

async function startBackend() {
  for (let attempt = 0; attempt < 50; attempt++) {
    const child = spawn(process.execPath, ['--input-type=module', '-e', BACKEND_SRC, String(backendPort)], {
      cwd: root, stdio: ['ignore', 'pipe', 'pipe'],
    });
    const ready = await new Promise((resolve) => {
      child.stdout.once('data', () => resolve(true));
      child.once('exit', () => resolve(false)); // port still in TIME_WAIT/held: try again
    });
    if (ready) {
      backend = child;
      return;
    }
    await sleep(100);
  }
  throw new Error('backend cannot listen again on its port');
}

// ---- sluice in its own process

const port = await freePort();
const adminPort = await freePort();
const dir = mkdtempSync(join(tmpdir(), 'sluice-soak-'));
const configFile = join(dir, 'sluice.json');
writeFileSync(configFile, JSON.stringify({
  listen: { host: '127.0.0.1', port },
  admin: { host: '127.0.0.1', port: adminPort },
  log: { level: 'error' },
  limits: { upstreamTimeoutMs: 2000 },
  routes: [{ path: '/soak', upstreams: [{ url: `ws://127.0.0.1:${backendPort}/echo` }], health: { coolOffMs: 200 } }],
}));

await startBackend();
const sluice = spawn(process.execPath, [cli, '--config', configFile], { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
let sluiceExit = null;
sluice.on('exit', (code, signal) => {
  sluiceExit = { code, signal };
});

async function metrics() {
  const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
  const text = await res.text();
  const value = (name) => {
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) : NaN;
  };
  const closes = {};
  for (const m of text.matchAll(/^agent_websocket_session_close_total\{code="([^"]*)"\} (\S+)$/gm)) closes[m[1]] = Number(m[2]);
  return { total: value('agent_websocket_sessions_total'), active: value('agent_websocket_active_sessions'), closes };
}

if (!(await waitHealthy(adminPort, () => sluiceExit))) {
  console.error('soak: sluice did not start', sluiceExit);
  process.exit(1);
}
const baseline = procStats(sluice.pid);

// ---- clients

const stats = {
  connectionsOpened: 0, connectFailures: 0, messagesEchoed: 0, randomDrops: 0, closesSeen: {}, peakOpen: 0,
};
let open = 0;
let running = true;
const clients = new Set();
const payload = Buffer.alloc(256, 0x61);

function runClient() {
  if (!running) return;
  const ws = new WebSocket(`ws://127.0.0.1:${port}/soak`);
  let opened = false;
  clients.add(ws);
  ws.on('open', () => {
    opened = true;
    open++;
    stats.peakOpen = Math.max(stats.peakOpen, open);
    stats.connectionsOpened++;
    for (let i = 0; i < IN_FLIGHT; i++) ws.send(payload);
  });
  ws.on('message', () => {
    stats.messagesEchoed++;
    if (ws.readyState === WebSocket.OPEN) ws.send(payload);
  });
  ws.on('error', () => {});
  ws.on('unexpected-response', (_req, res) => {
    res.resume();
    ws.terminate();
  });
  ws.on('close', (code) => {
    clients.delete(ws);
    if (opened) {
      open--;
      stats.closesSeen[code] = (stats.closesSeen[code] ?? 0) + 1;
    } else {
      stats.connectFailures++;
    }
    if (running) setTimeout(runClient, opened ? 20 + Math.random() * 100 : 100 + Math.random() * 200);
  });
}

for (let i = 0; i < CLIENTS; i++) setTimeout(runClient, (i * 1000) / CLIENTS);

// Random drops: abrupt (no close frame) or a close with an application code.
const dropper = setInterval(() => {
  for (const ws of clients) {
    if (ws.readyState !== WebSocket.OPEN || Math.random() >= DROP_PER_SECOND / 10) continue;
    stats.randomDrops++;
    if (Math.random() < 0.5) ws.terminate();
    else ws.close(4000 + Math.floor(Math.random() * 100), 'soak drop');
  }
}, 100);

// Backend faults: SIGKILL, then a restart on the same port after a short outage.
let restarting = Promise.resolve();
const killer = setInterval(() => {
  if (!backend) return;
  const victim = backend;
  backend = null;
  victim.kill('SIGKILL');
  backendKills++;
  restarting = (async () => {
    await once(victim, 'exit');
    await sleep(200 + Math.random() * 600);
    await startBackend();
  })();
}, KILL_EVERY_S * 1000);

const t0 = Date.now();
let midRun = null;
await sleep((DURATION_S * 1000) / 2);
midRun = await metrics();
const echoedAtMid = stats.messagesEchoed;
const tMid = Date.now();
await sleep((DURATION_S * 1000) / 2);
const loadSeconds = (Date.now() - t0) / 1000;
const msgsPerSecond = Math.round(stats.messagesEchoed / loadSeconds);
const msgsPerSecondSecondHalf = Math.round((stats.messagesEchoed - echoedAtMid) / ((Date.now() - tMid) / 1000));

// ---- wind down: stop faults, close every client, let sessions end
running = false;
clearInterval(dropper);
clearInterval(killer);
await restarting;
for (const ws of clients) ws.close(1000, 'soak over');
const deadline = Date.now() + 10_000;
let end = await metrics();
while ((end.active > 0 || clients.size > 0) && Date.now() < deadline) {
  await sleep(200);
  end = await metrics();
}
await sleep(500); // sockets of the last sessions close
const after = procStats(sluice.pid);
end = await metrics();

// ---- checks
const closed = Object.values(end.closes).reduce((a, b) => a + b, 0);
const midClosed = Object.values(midRun.closes).reduce((a, b) => a + b, 0);
if (sluiceExit) failures.push(`sluice exited during the soak: ${JSON.stringify(sluiceExit)}`);
if (midRun.total !== midClosed + midRun.active) failures.push(`mid-run: sessions_total ${midRun.total} != closed ${midClosed} + active ${midRun.active}`);
if (end.total !== closed + end.active) failures.push(`end: sessions_total ${end.total} != closed ${closed} + active ${end.active}`);
if (end.active !== 0) failures.push(`${end.active} sessions still active after every client closed`);
for (const code of Object.keys(end.closes)) if (!/^\d{4}$/.test(code)) failures.push(`a close without a code: code="${code}"`);
if (end.total < stats.connectionsOpened) failures.push(`sessions_total ${end.total} < connections the clients saw open ${stats.connectionsOpened}`);
if (after.fds > baseline.fds + 8) failures.push(`fds ${baseline.fds} -> ${after.fds}`);
if (after.rssMiB > baseline.rssMiB + 150) failures.push(`RSS ${baseline.rssMiB} -> ${after.rssMiB} MiB`);
if (msgsPerSecondSecondHalf === 0) failures.push('no messages in the second half: load stopped');
if (backendKills === 0) failures.push('no backend kill happened');

// A clean stop: SIGTERM drains and exits 0.
const stopProblem = await stopSluice(sluice, () => sluiceExit);
if (stopProblem) failures.push(stopProblem);
backend?.kill('SIGKILL');

const summary = {
  ok: failures.length === 0,
  mode: short ? 'short' : 'full',
  durationSeconds: Math.round(loadSeconds),
  clients: CLIENTS,
  connectionsOpened: stats.connectionsOpened,
  peakConcurrentConnections: stats.peakOpen,
  connectFailuresDuringOutages: stats.connectFailures,
  messagesEchoed: stats.messagesEchoed,
  messagesPerSecond: msgsPerSecond,
  messagesPerSecondSecondHalf: msgsPerSecondSecondHalf,
  faultsInjected: { backendKills, randomClientDrops: stats.randomDrops, total: backendKills + stats.randomDrops },
  closeCodesSeenByClients: stats.closesSeen,
  sessions: { total: end.total, closed, active: end.active, closeCodes: end.closes },
  sluice: { rssMiB: [baseline.rssMiB, after.rssMiB], fds: [baseline.fds, after.fds], exit: sluiceExit },
  failures,
};
console.log(JSON.stringify(summary, null, 2));
process.exit(failures.length === 0 ? 0 : 1);
