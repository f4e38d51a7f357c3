#!/usr/bin/env node
// Starts the processes of one cluster peer of `npm run bench` (bench/peers/index.js) as
// children of this process, so that the harness's CPU figure (the process tree's) counts
// all of them: Redis, the sluice instances, the tunnel agent. Writes <dir>/ready when the
// peer can carry traffic on <port>; SIGTERM stops the children.
//
//   node cluster-launch.mjs <mode> <dir> <port> <echoPort> <maxconn>
//   cluster  redis + one sluice with `cluster` on; route /* to the echo backend
//   cluster-rate  the same with limits.connectionRatePerIp (high enough never to refuse):
//            one Redis script call per upgrade
//   agent    one sluice (no cluster) with an agent route, and route /* through agent `bench`
//            (the agent exposes the echo backend): an agent stream on the same instance
//   relay    redis; instance A with the agent route and the agent; instance B on <port>
//            with route /* through agent `bench`: every session relayed B -> A
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

const [mode, dir, portText, echoPortText, maxconnText] = process.argv.slice(2);
const port = Number(portText);
const echoPort = Number(echoPortText);
const maxconn = Number(maxconnText);
const here = path.dirname(new URL(import.meta.url).pathname);
const root = path.resolve(here, '..', '..');
const cli = path.join(root, 'dist', 'cli.js');
const KEY = 'bench-agent-key-0123456789abcdef';
const SECRET = 'bench-cluster-secret-0123456789abcdef';
const children = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

function run(name, command, args) {
  const out = fs.openSync(path.join(dir, `${name}.log`), 'a');
  const child = spawn(command, args, { cwd: root, stdio: ['ignore', out, out] });
  children.push(child);
  return child;
}

async function ready(adminPort) {
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${adminPort}/readyz`)).ok) return;
    } catch { /* not up yet */ }
    await sleep(100);
  }
  throw new Error(`instance with admin port ${adminPort} not ready`);
}

async function instance(name, listenPort, routes, cluster) {
  const admin = await freePort();
  const file = path.join(dir, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify({
    listen: { host: '127.0.0.1', port: listenPort },
    admin: { host: '127.0.0.1', port: admin },
    limits: { maxConnections: maxconn, upstreamTimeoutMs: 10000, ...(mode === 'cluster-rate' ? { connectionRatePerIp: 1_000_000 } : {}) },
    log: { level: 'warn' },
    ...(cluster ? { cluster: { ...cluster, instanceId: name, advertise: `ws://127.0.0.1:${listenPort}` } } : {}),
    routes,
  }));
  run(name, process.execPath, [cli, '--config', file]);
  return admin;
}

const agentRoute = { path: '/agent', mode: 'agent', auth: { apiKeys: { header: 'authorization', sha256: [createHash('sha256').update(KEY).digest('hex')] } } };
const viaAgent = { path: '/*', upstreams: [{ agent: 'bench', service: 'echo' }] };
const startAgent = (gatewayPort) => run('agent', process.execPath,
  [cli, 'agent', '--server', `ws://127.0.0.1:${gatewayPort}/agent`, '--token', KEY, '--name', 'bench', '--expose', `echo=127.0.0.1:${echoPort}`, '--log-level', 'warn']);

async function startRedis() {
  const redisPort = await freePort();
  run('redis', 'redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
  return { redis: { url: `redis://127.0.0.1:${redisPort}` }, secret: SECRET, leaseSeconds: 10 };
}

process.on('SIGTERM', () => {
  for (const c of children) c.kill('SIGTERM');
  setTimeout(() => {
    for (const c of children) c.kill('SIGKILL');
    process.exit(0);
  }, 3000).unref();
  Promise.all(children.map((c) => (c.exitCode !== null ? null : new Promise((r) => c.once('exit', r))))).then(() => process.exit(0));
});

try {
  if (mode === 'cluster' || mode === 'cluster-rate') {
    const cluster = await startRedis();
    await sleep(200);
    await ready(await instance('sluice', port, [{ path: '/*', upstreams: [{ url: `ws://127.0.0.1:${echoPort}/` }] }], cluster));
  } else if (mode === 'agent') {
    const admin = await instance('sluice', port, [agentRoute, viaAgent], null);
    startAgent(port);
    await ready(admin);
  } else if (mode === 'relay') {
    const cluster = await startRedis();
    await sleep(200);
    const aPort = await freePort();
    const aAdmin = await instance('a', aPort, [agentRoute, { path: '/local/*', upstreams: [{ agent: 'bench', service: 'echo' }] }], cluster);
    startAgent(aPort);
    await ready(aAdmin);
    await ready(await instance('b', port, [agentRoute, viaAgent], cluster));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  fs.writeFileSync(path.join(dir, 'ready'), 'ok');
} catch (err) {
  console.error(`cluster-launch ${mode}: ${err.message}`);
  for (const c of children) c.kill('SIGKILL');
  process.exit(1);
}
