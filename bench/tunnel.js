#!/usr/bin/env node
// `npm run bench:tunnel`: TCP through a sluice gateway and agent (issue #14) against a
// direct loopback connection and an OpenSSH `ssh -N -L` tunnel, on the same traffic, in
// one run.
//
//   npm run bench:tunnel                   full run (1 GiB per stream test, 3 rounds)
//   npm run bench:tunnel -- --quick        the same method, small volumes (< 1 min)
//   options: --rounds N  --idle N (idle streams, default 4000; quick 2000)  --peers direct,sluice,ssh  --json FILE
//
// Method: one service process (bench/tunnel-sink.js: a sink that answers the byte count
// after the client's half-close, and an echo). Each peer is started once; rounds
// interleave the peers. Per round and peer: one stream (bytes to the sink, MB/s until its
// answer), 100 streams at once (the same bytes in total), and stream opens (connect, one
// byte echoed, close; p50/p99). CPU is the peer's processes' (sluice: gateway + agent;
// ssh: the client and sshd with its session children), from /proc, per GB carried. Last,
// memory per idle stream: the RSS growth of the peer's processes from N/2 to N idle streams,
// over N/2.
// The ssh peer needs sshd (Debian: openssh-server); it runs its own on a loopback port
// with a throwaway host key and user key, and is reported as skipped when sshd is missing.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { findExecutable, freePort, spawnGroup, stopGroup, treeCpuSeconds, treeRssBytes, waitForPort } from './peers/process.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.join(here, '..');
const cli = path.join(root, 'dist', 'cli.js');

const { values: opts } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
    rounds: { type: 'string' },
    idle: { type: 'string' },
    peers: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opts.help) {
  console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 9).join('\n'));
  process.exit(0);
}

const MiB = 1024 * 1024;
const PLAN = opts.quick
  ? { oneBytes: 64 * MiB, manyBytes: 64 * MiB, streams: 100, opens: 100, idle: 2000, rounds: 3 }
  : { oneBytes: 1024 * MiB, manyBytes: 1024 * MiB, streams: 100, opens: 500, idle: 4000, rounds: 3 };
if (opts.rounds) PLAN.rounds = Math.max(1, Number.parseInt(opts.rounds, 10) || 3);
if (opts.idle) PLAN.idle = Math.max(2, Number.parseInt(opts.idle, 10) || PLAN.idle);
const ALL_PEERS = ['direct', 'sluice', 'ssh'];
const selected = opts.peers ? opts.peers.split(',').map((s) => s.trim()) : ALL_PEERS;
for (const p of selected) if (!ALL_PEERS.includes(p)) { console.error(`bench: unknown peer '${p}' (known: ${ALL_PEERS.join(', ')})`); process.exit(2); }

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-tunnel-'));
const groups = [];
const log = (s) => console.log(s);

async function cleanup() {
  await Promise.all(groups.map((c) => stopGroup(c, 1000)));
  fs.rmSync(tmp, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { void cleanup().then(() => process.exit(130)); });

function start(command, args, name) {
  const child = spawnGroup(command, args, { logFile: path.join(tmp, `${name}.log`) });
  groups.push(child);
  return child;
}

/** The first line of a process's log that matches, within `ms`. */
async function waitForLog(name, re, ms = 10_000) {
  const file = path.join(tmp, `${name}.log`);
  const deadline = Date.now() + ms;
  for (;;) {
    const m = fs.existsSync(file) ? re.exec(fs.readFileSync(file, 'utf8')) : null;
    if (m) return m;
    if (Date.now() > deadline) throw new Error(`${name}: no ${re} in its log: ${fs.existsSync(file) ? fs.readFileSync(file, 'utf8').slice(-800) : '(none)'}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One byte through `port` and back (the echo), or an error. */
function probe(port, timeoutMs = 3000) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const c = net.connect({ port, host: '127.0.0.1', noDelay: true });
    const timer = setTimeout(() => { c.destroy(); reject(new Error('no echo')); }, timeoutMs);
    c.once('connect', () => c.write('x'));
    c.once('data', () => { clearTimeout(timer); c.destroy(); resolve(performance.now() - started); });
    c.once('error', (e) => { clearTimeout(timer); reject(e); });
    c.once('close', () => { clearTimeout(timer); reject(new Error('closed')); });
  });
}

async function untilEcho(port, what, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    try { await probe(port); return; } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: no echo through port ${port}: ${err.message}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

// ---------------------------------------------------------------- peers

async function startSink() {
  start(process.execPath, [path.join(here, 'tunnel-sink.js')], 'sink');
  const m = await waitForLog('sink', /ports (\d+) (\d+)/);
  return { sink: Number(m[1]), echo: Number(m[2]) };
}

async function startDirect(svc) {
  return { name: 'direct', sink: svc.sink, echo: svc.echo, pids: [] };
}

async function startSluice(svc) {
  if (!fs.existsSync(cli)) throw new Error('dist/cli.js missing: run npm run build');
  const [gw, sinkT, echoT] = [await freePort(), await freePort(), await freePort()];
  const key = 'bench-agent-key-0123456789abcdef0123';
  const digest = (await import('node:crypto')).createHash('sha256').update(key).digest('hex');
  const conf = path.join(tmp, 'gateway.yaml');
  fs.writeFileSync(conf, `listen: { host: 127.0.0.1, port: ${gw} }
log: { level: warn }
limits: { maxConnections: 100000 }
routes:
  - { path: /agent, mode: agent, auth: { apiKeys: { header: authorization, sha256: [ "${digest}" ] } } }
tunnels:
  - { listen: "127.0.0.1:${sinkT}", agent: bench, service: sink }
  - { listen: "127.0.0.1:${echoT}", agent: bench, service: echo }
`);
  const g = start(process.execPath, [cli, '--config', conf], 'sluice-gateway');
  await waitForPort(gw, { child: g });
  const a = start(process.execPath, [cli, 'agent', '--server', `ws://127.0.0.1:${gw}/agent`, '--token', key, '--name', 'bench',
    '--expose', `sink=127.0.0.1:${svc.sink}`, '--expose', `echo=127.0.0.1:${svc.echo}`, '--log-level', 'warn'], 'sluice-agent');
  await untilEcho(echoT, 'sluice');
  return { name: 'sluice', sink: sinkT, echo: echoT, pids: [g.pid, a.pid] };
}

async function startSsh(svc) {
  const sshd = findExecutable('sshd') ?? (fs.existsSync('/usr/sbin/sshd') ? '/usr/sbin/sshd' : null);
  if (!sshd) throw new Error('sshd not installed (Debian: apt-get install openssh-server)');
  const dir = path.join(tmp, 'ssh');
  fs.mkdirSync(dir, { mode: 0o700 });
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, 'host')]);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, 'user')]);
  fs.copyFileSync(path.join(dir, 'user.pub'), path.join(dir, 'authorized_keys'));
  fs.mkdirSync('/run/sshd', { recursive: true }); // privilege separation directory
  const port = await freePort();
  const user = os.userInfo().username;
  fs.writeFileSync(path.join(dir, 'sshd_config'), `ListenAddress 127.0.0.1
Port ${port}
HostKey ${path.join(dir, 'host')}
AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
PidFile none
`);
  const d = start(sshd, ['-D', '-e', '-f', path.join(dir, 'sshd_config')], 'sshd');
  await waitForPort(port, { child: d });
  const [sinkT, echoT] = [await freePort(), await freePort()];
  // The client's default cipher choice (chacha20-poly1305 or AES-GCM), as a user gets it.
  const c = start('ssh', ['-N', '-i', path.join(dir, 'user'), '-p', String(port),
    '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'ExitOnForwardFailure=yes', '-o', 'LogLevel=ERROR',
    '-L', `127.0.0.1:${sinkT}:127.0.0.1:${svc.sink}`, '-L', `127.0.0.1:${echoT}:127.0.0.1:${svc.echo}`, `${user}@127.0.0.1`], 'ssh');
  await untilEcho(echoT, 'ssh');
  return { name: 'ssh', sink: sinkT, echo: echoT, pids: [c.pid, d.pid] };
}

const STARTERS = { direct: startDirect, sluice: startSluice, ssh: startSsh };

// ---------------------------------------------------------------- measurements

const cpuOf = (inst) => inst.pids.reduce((n, pid) => n + treeCpuSeconds(pid), 0);
const rssOf = (inst) => inst.pids.reduce((n, pid) => n + treeRssBytes(pid), 0);
const CHUNK = Buffer.alloc(MiB, 0x5a);

/** `bytes` to the sink through one connection; resolves when its count came back. */
function send(port, bytes) {
  return new Promise((resolve, reject) => {
    const c = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let answer = '';
    c.on('data', (d) => { answer += d; });
    c.on('end', () => {
      c.destroy();
      if (Number(answer.trim()) === bytes) resolve();
      else reject(new Error(`the sink counted ${answer.trim() || 'nothing'} of ${bytes} bytes`));
    });
    c.on('error', reject);
    c.once('connect', async () => {
      let left = bytes;
      while (left > 0) {
        const n = Math.min(left, CHUNK.length);
        left -= n;
        if (!c.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) await new Promise((r) => c.once('drain', r));
      }
      c.end();
    });
  });
}

async function transfer(inst, total, streams) {
  const cpu0 = cpuOf(inst);
  const t0 = performance.now();
  const each = Math.floor(total / streams);
  await Promise.all(Array.from({ length: streams }, () => send(inst.sink, each)));
  const seconds = (performance.now() - t0) / 1000;
  const bytes = each * streams;
  const cpu = cpuOf(inst) - cpu0;
  return { mbPerSec: bytes / 1e6 / seconds, cpuSecondsPerGB: inst.pids.length > 0 ? cpu / (bytes / 1e9) : null };
}

async function opens(inst, n) {
  const times = [];
  for (let i = 0; i < n; i++) times.push(await probe(inst.echo));
  times.sort((a, b) => a - b);
  const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))];
  return { p50Ms: q(0.5), p99Ms: q(0.99) };
}

/**
 * RSS of the peer's processes per idle stream: connections, each echoed once, held open;
 * the RSS growth from n/2 to n of them, over n/2. That is what each further idle stream
 * costs once the processes are warm (JavaScript's garbage included: no GC is forced),
 * without the one-off growth of the first ones (heaps, tables, buffers).
 */
async function idle(inst, n) {
  if (inst.pids.length === 0) return null;
  const socks = [];
  const openUntil = async (count) => {
    while (socks.length < count) {
      const c = net.connect({ port: inst.echo, host: '127.0.0.1' });
      c.on('error', () => {});
      await new Promise((resolve, reject) => {
        c.once('connect', () => c.write('x'));
        c.once('data', resolve);
        c.once('close', () => reject(new Error('an idle stream closed')));
      });
      socks.push(c);
    }
    await new Promise((r) => setTimeout(r, 500));
    return rssOf(inst);
  };
  try {
    const half = await openUntil(Math.floor(n / 2));
    const full = await openUntil(n);
    return (full - half) / (n - Math.floor(n / 2));
  } finally {
    for (const c of socks) c.destroy();
  }
}

// ---------------------------------------------------------------- run

const median = (xs) => { const v = xs.filter((x) => x !== null && Number.isFinite(x)).sort((a, b) => a - b); return v.length ? v[Math.floor(v.length / 2)] : null; };
const fmt = (v, d = 0) => (v === null || v === undefined ? '–' : v.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }));

async function main() {
  const started = Date.now();
  log(`bench:tunnel: ${os.cpus()[0]?.model ?? 'cpu'}, ${os.cpus().length} cores, Linux ${os.release()}, node ${process.version}; ${PLAN.rounds} rounds, one stream ${PLAN.oneBytes / MiB} MiB, ${PLAN.streams} streams ${PLAN.manyBytes / MiB} MiB`);
  const svc = await startSink();
  const peers = [];
  const skipped = {};
  for (const name of selected) {
    try {
      peers.push(await STARTERS[name](svc));
    } catch (err) {
      skipped[name] = err.message;
      log(`bench:tunnel: ${name} skipped: ${err.message}`);
    }
  }
  const rows = [];
  for (let round = 1; round <= PLAN.rounds; round++) {
    for (const inst of peers) {
      const one = await transfer(inst, PLAN.oneBytes, 1);
      const many = await transfer(inst, PLAN.manyBytes, PLAN.streams);
      const open = await opens(inst, PLAN.opens);
      const row = { round, peer: inst.name, one, many, open };
      rows.push(row);
      log(`[r${round}] ${inst.name}: 1 stream ${fmt(one.mbPerSec)} MB/s (${fmt(one.cpuSecondsPerGB, 2)} cpu-s/GB), ${PLAN.streams} streams ${fmt(many.mbPerSec)} MB/s (${fmt(many.cpuSecondsPerGB, 2)} cpu-s/GB), open p50 ${fmt(open.p50Ms, 3)} ms p99 ${fmt(open.p99Ms, 3)} ms`);
    }
  }
  const memory = {};
  for (const inst of peers) memory[inst.name] = await idle(inst, PLAN.idle);

  const summary = {};
  for (const inst of peers) {
    const mine = rows.filter((r) => r.peer === inst.name);
    summary[inst.name] = {
      oneMBps: median(mine.map((r) => r.one.mbPerSec)),
      oneCpuPerGB: median(mine.map((r) => r.one.cpuSecondsPerGB)),
      manyMBps: median(mine.map((r) => r.many.mbPerSec)),
      manyCpuPerGB: median(mine.map((r) => r.many.cpuSecondsPerGB)),
      openP50Ms: median(mine.map((r) => r.open.p50Ms)),
      openP99Ms: median(mine.map((r) => r.open.p99Ms)),
      idleBytesPerStream: memory[inst.name],
    };
  }
  const ratio = (a, b) => (a !== null && b !== null && b !== undefined && b > 0 ? a / b : null);
  const lines = [
    '', `### tunnel-tcp (medians of ${PLAN.rounds} rounds)`, '',
    '| peer | 1 stream MB/s | vs direct | vs ssh | CPU-s/GB | 100 streams MB/s | vs direct | vs ssh | CPU-s/GB | open p50 | open p99 | RSS per idle stream |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const [name, s] of Object.entries(summary)) {
    const d = summary.direct;
    const h = summary.ssh;
    lines.push(`| ${name} | ${fmt(s.oneMBps)} | ${fmt(ratio(s.oneMBps, d?.oneMBps), 2)}× | ${fmt(ratio(s.oneMBps, h?.oneMBps), 2)}× | ${fmt(s.oneCpuPerGB, 2)} | ${fmt(s.manyMBps)} | ${fmt(ratio(s.manyMBps, d?.manyMBps), 2)}× | ${fmt(ratio(s.manyMBps, h?.manyMBps), 2)}× | ${fmt(s.manyCpuPerGB, 2)} | ${fmt(s.openP50Ms, 3)} ms | ${fmt(s.openP99Ms, 3)} ms | ${s.idleBytesPerStream === null ? '–' : `${fmt(s.idleBytesPerStream / 1024, 1)} KiB`} |`);
  }
  for (const [name, why] of Object.entries(skipped)) lines.push(`| ${name} | skipped: ${why} |||||||||||`);
  log(lines.join('\n'));
  log(`bench:tunnel: done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ plan: PLAN, rows, summary, skipped }, null, 2));
}

main().then(cleanup, async (err) => {
  console.error(`bench:tunnel: ${err.stack ?? err}`);
  await cleanup();
  process.exit(1);
});
