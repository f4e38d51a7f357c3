#!/usr/bin/env node
// `npm run bench`: sluice against nginx, HAProxy, Caddy, node-http-proxy and a
// direct connection, on the same traffic, in one run.
//
//   npm run bench                         full run (~15 min with every peer)
//   npm run bench -- --quick              the same method, short windows (< 2 min)
//   npm run bench -- --quick --json out.json
//   options: --rounds N  --peers a,b  --workloads a,b  --out-dir DIR  --no-chart
//
// Method (bench/README.md explains why): one echo backend for the whole run;
// for each workload every peer gets a fresh process (idle: fresh per round too),
// then rounds interleave the peers (A B C, A B C, ...). Each measurement has an
// unmeasured warm-up; the proxy's CPU time (utime+stime of its process tree, from
// /proc) is read at the load generator's measure-start and measure-end events only.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { renderChart } from './chart.js';
import { PEERS } from './peers/index.js';
import {
  freePort,
  killAllGroupsNow,
  liveGroups,
  logTail,
  processTree,
  stopGroup,
  treeCpuSeconds,
  treeRssBytes,
  waitForPort,
  spawnGroup,
  trackGroup,
  recordGroupsIn,
} from './peers/process.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const loadgenDir = path.join(here, 'loadgen');
const loadgenBin = path.join(loadgenDir, 'loadgen');

// ---------------------------------------------------------------- options

const { values: opts } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
    rounds: { type: 'string' },
    peers: { type: 'string' },
    workloads: { type: 'string' },
    'out-dir': { type: 'string' },
    'no-chart': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
  allowPositionals: false,
});

if (opts.help) {
  console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 9).join('\n'));
  process.exit(0);
}

const nofile = hardNofileLimit();
// Each idle proxied connection costs the proxy two descriptors and the backend one.
const idleCeiling = Math.max(100, Math.floor((nofile - 200) / 2));

/**
 * Durations in seconds. Quick keeps the method (rounds, interleaving, warm-up) and shortens
 * windows; its idle workload runs one round (a fresh process per peer and round is most of
 * that workload's time, and quick is a check that everything runs, not a memory figure).
 */
const PLAN = opts.quick
  ? { warmup: 0.1, duration: 0.3, openDuration: 0.5, idleConns: 1000, idleSettle: 0.2, rounds: 3, idleRounds: 1 }
  : { warmup: 2, duration: 5, openDuration: 10, idleConns: 10000, idleSettle: 1.5, rounds: 3, idleRounds: 3 };
if (opts.rounds) PLAN.rounds = PLAN.idleRounds = Math.max(1, Number.parseInt(opts.rounds, 10) || 3);
const idleCapped = PLAN.idleConns > idleCeiling;
PLAN.idleConns = Math.min(PLAN.idleConns, idleCeiling);

/** The workloads, in run order (latency needs echo-64B's nginx capacity first). */
const WORKLOADS = [
  { name: 'echo-64B', kind: 'closed', size: 64, connections: 50, inflight: 10 },
  { name: 'echo-4KiB', kind: 'closed', size: 4096, connections: 50, inflight: 10 },
  // echo-4KiB over wss: the peer terminates TLS (self-signed certificate made per run), the
  // leg to the echo backend stays plain ws. Only peers with `tls: true` run it.
  { name: 'wss-4KiB', kind: 'closed', size: 4096, connections: 50, inflight: 10, tls: true },
  { name: 'echo-64KiB', kind: 'closed', size: 65536, connections: 50, inflight: 10 },
  { name: 'latency-64B', kind: 'open', size: 64, connections: 50, loadShare: 0.5 },
  { name: 'idle', kind: 'idle', size: 64 },
  { name: 'churn', kind: 'churn', size: 64, connections: 20 },
  // Tunnels (issue #14): TCP through a sluice gateway + agent against direct and ssh -N -L.
  // Its own peers and table (bench/tunnel.js); run only when named.
  { name: 'tunnel-tcp', kind: 'tunnel', optional: true },
];

const selectedPeers = pick(PEERS, opts.peers, 'peer');
const selectedWorkloads = pick(WORKLOADS, opts.workloads, 'workload');

function pick(list, csv, what) {
  // Optional entries (design comparisons) run only when named.
  if (!csv) return list.filter((x) => !x.optional);
  const names = csv.split(',').map((s) => s.trim()).filter(Boolean);
  for (const n of names) {
    if (!list.some((x) => x.name === n)) {
      console.error(`bench: unknown ${what} '${n}' (known: ${list.map((x) => x.name).join(', ')})`);
      process.exit(2);
    }
  }
  return list.filter((x) => names.includes(x.name));
}

// ---------------------------------------------------------------- cleanup

let tmpRoot = null;
let stopping = false;

/** Stops every process the run started; called on normal end, errors and signals. */
async function cleanup() {
  await Promise.all([...liveGroups.values()].map((child) => stopGroup(child, 1000)));
  if (tmpRoot) fs.rmSync(tmpRoot, { recursive: true, force: true });
  tmpRoot = null;
  stopWatchdog();
}

function onFatal(code, message) {
  if (stopping) return;
  stopping = true;
  if (message) console.error(message);
  cleanup().finally(() => process.exit(code));
}

process.on('SIGINT', () => onFatal(130, '\nbench: interrupted, stopping every peer'));
process.on('SIGTERM', () => onFatal(143, 'bench: terminated, stopping every peer'));
process.on('SIGHUP', () => onFatal(129));
process.on('uncaughtException', (err) => onFatal(1, `bench: ${err.stack ?? err}`));
process.on('unhandledRejection', (err) => onFatal(1, `bench: ${err?.stack ?? err}`));
// Last resort if the loop is gone: nothing the run started may outlive it.
process.on('exit', () => {
  killAllGroupsNow();
  stopWatchdog();
});

// ---------------------------------------------------------------- helpers

function log(line) {
  process.stderr.write(line + '\n');
}

function hardNofileLimit() {
  try {
    return Number.parseInt(execFileSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim(), 10) || 1024;
  } catch {
    return 1024;
  }
}

function ensureLoadgen() {
  const sources = ['loadgen.cc', 'handshake.h', 'build.sh'].map((f) => path.join(loadgenDir, f));
  const newest = Math.max(...sources.map((f) => fs.statSync(f).mtimeMs));
  const built = fs.existsSync(loadgenBin) ? fs.statSync(loadgenBin).mtimeMs : 0;
  if (built >= newest) return;
  log('bench: building bench/loadgen (g++ -O2) ...');
  execFileSync('bash', [path.join(loadgenDir, 'build.sh')], { stdio: ['ignore', 'inherit', 'inherit'] });
}

/**
 * Signals reach the harness, not its detached peers; if the harness is killed
 * outright (SIGKILL, OOM) a watchdog shell stops every group it had started.
 * It is not tracked itself, and exits a second after the harness does.
 */
function startWatchdog(dir) {
  const file = path.join(dir, 'groups');
  recordGroupsIn(file);
  const script =
    // Alive = /proc entry present and not a zombie (an unreaped harness still answers kill -0).
    `alive() { s=$(sed 's/.*) //' /proc/${process.pid}/stat 2>/dev/null | cut -d' ' -f1); [ -n "$s" ] && [ "$s" != Z ]; }; ` +
    'while alive; do sleep 1; done; ' +
    `for g in $(cat '${file}' 2>/dev/null); do kill -s KILL -- -$g 2>/dev/null; done; rm -rf '${dir}'`;
  watchdog = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' });
  watchdog.unref();
}

let watchdog = null;

function stopWatchdog() {
  if (watchdog?.exitCode === null) {
    try {
      process.kill(-watchdog.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  watchdog = null;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/**
 * Runs the load generator; `onEvent` sees its progress events (measure-start,
 * measure-end, ready). Resolves with its JSON result, or with an error object.
 */
function runLoadgen(args, { onEvent = () => {}, stdinPipe = false, timeoutMs } = {}) {
  return new Promise((resolve) => {
    const child = spawn(loadgenBin, args, { detached: true, stdio: [stdinPipe ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    trackGroup(child);
    let out = '';
    let errBuf = '';
    let errText = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => {
      errBuf += d;
      let nl;
      while ((nl = errBuf.indexOf('\n')) >= 0) {
        const line = errBuf.slice(0, nl);
        errBuf = errBuf.slice(nl + 1);
        let ev = null;
        try {
          ev = JSON.parse(line);
        } catch {
          errText += line + '\n';
        }
        if (ev && ev.event) onEvent(ev, child);
      }
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs ?? 120000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(out.trim().split('\n').pop()));
      } catch {
        resolve({ valid: false, errorMessages: [`loadgen failed (${signal ?? 'exit ' + code}): ${errText.trim().slice(-400)}`] });
      }
    });
  });
}

function trafficArgs(w, port, { duration, rate, warmup = PLAN.warmup }) {
  const args = ['--port', String(port), '--size', String(w.size), '--warmup', String(warmup), '--duration', String(duration)];
  if (w.kind === 'closed') args.push('--mode', 'closed', '--connections', String(w.connections), '--inflight', String(w.inflight));
  if (w.kind === 'open') args.push('--mode', 'open', '--connections', String(w.connections), '--rate', String(Math.round(rate)));
  if (w.kind === 'churn') args.push('--mode', 'churn', '--connections', String(w.connections));
  return args;
}

function emptyRow(peer, workload, round) {
  return {
    peer,
    workload,
    round,
    valid: false,
    msgsPerSec: null,
    mbPerSec: null,
    cpuSecondsPerMillion: null,
    rssBytes: null,
    p50Ms: null,
    p99Ms: null,
    p999Ms: null,
    maxMs: null,
    p50AddedMs: null,
    p99AddedMs: null,
    p999AddedMs: null,
    idleBytesPerConn: null,
    connections: null,
    rate: null,
    cycleP50Ms: null,
    cycleP99Ms: null,
    cpuSeconds: null,
    backendCpuSecondsPerMillion: null,
    loadgenCpuSecondsPerMillion: null,
    tls: null,
    skipped: false,
    reason: null,
  };
}

// ---------------------------------------------------------------- peers

/** Per-peer state for the whole run: skip reason (not installed) or the last start failure. */
function peerStates() {
  return selectedPeers.map((peer) => ({ peer, skip: peer.check(), startError: null }));
}

const portsHandedOut = new Set();

/** A free port not given to another peer in this run (bind(0) may hand a just-released port out again). */
async function peerPort() {
  for (;;) {
    const port = await freePort();
    if (!portsHandedOut.has(port)) {
      portsHandedOut.add(port);
      return port;
    }
  }
}

/**
 * The run's self-signed certificate (P-256, CN and SAN 127.0.0.1), made with the openssl
 * CLI on first use: { certFile, keyFile, pemFile (key + certificate, for HAProxy) }.
 * Throws when openssl is missing or fails.
 */
let tlsFiles = null;
let tlsError = null;
function benchCertificate() {
  if (tlsFiles) return tlsFiles;
  if (tlsError) throw new Error(tlsError);
  const dir = fs.mkdtempSync(path.join(tmpRoot, 'tls-'));
  const certFile = path.join(dir, 'cert.pem');
  const keyFile = path.join(dir, 'key.pem');
  const pemFile = path.join(dir, 'key+cert.pem');
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', keyFile, '-out', certFile],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    tlsError = `no certificate for the TLS workload (openssl req failed: ${String(err.stderr || err.message).trim().slice(0, 200)})`;
    throw new Error(tlsError);
  }
  fs.writeFileSync(pemFile, fs.readFileSync(keyFile, 'utf8') + fs.readFileSync(certFile, 'utf8'));
  tlsFiles = { certFile, keyFile, pemFile };
  return tlsFiles;
}

/** Why `state`'s peer does not run workload `w` (a TLS workload on a peer without a TLS listener), or null. */
function notApplicable(state, w) {
  if (w.tls && !state.peer.tls) return 'not applicable: no TLS listener configured for this peer';
  if (w.tls) {
    try {
      benchCertificate();
    } catch (err) {
      return err.message;
    }
  }
  return null;
}

async function startPeer(state, label, w) {
  let lastError = null;
  // Two attempts: a port picked free can still be taken by an outgoing connection
  // before the peer binds it.
  for (let attempt = 0; attempt < 2; attempt++) {
    const dir = fs.mkdtempSync(path.join(tmpRoot, `${state.peer.name}-`));
    const port = state.peer.direct ? null : await peerPort();
    try {
      const tls = w?.tls ? benchCertificate() : undefined;
      const inst = await state.peer.start({ dir, port, echoPort: echo.port, nofile, tls });
      if (inst.pid) log(`started ${state.peer.name} pid ${inst.pid} (${label})`);
      return { ...inst, dir };
    } catch (err) {
      lastError = err; // waitForPort has stopped the process of the failed attempt
    }
  }
  // A peer that cannot start is reported with its reason and not retried in this
  // run: a timeout per row would blow the time budget without telling more.
  state.startError = `failed to start: ${String(lastError?.message ?? lastError).replace(/\s+/g, ' ').slice(0, 500)}`;
  log(`bench: ${state.peer.name} ${state.startError}`);
  return null;
}

function alive(inst) {
  return !inst.child || (inst.child.exitCode === null && inst.child.signalCode === null);
}

// ---------------------------------------------------------------- measuring

let echo = null;

async function startEcho() {
  const dir = fs.mkdtempSync(path.join(tmpRoot, 'echo-'));
  const logFile = path.join(dir, 'stderr.log');
  const port = await freePort();
  const child = spawnGroup(process.execPath, [path.join(here, 'echo-server.js'), String(port)], { logFile });
  await waitForPort(port, { child, logFile });
  log(`started echo-server pid ${child.pid}`);
  return { child, pid: child.pid, port, logFile };
}

/** One closed-loop, open-loop or churn measurement of one peer. */
async function measureTraffic(state, inst, w, round, rate) {
  const row = emptyRow(state.peer.name, w.name, round);
  const duration = w.kind === 'open' ? PLAN.openDuration : PLAN.duration;
  let tree = [];
  let cpu0 = 0;
  let cpu1 = 0;
  let be0 = 0;
  let be1 = 0;
  let rssMax = 0;
  let sampler = null;
  const sampleRss = () => {
    if (!inst.pid) return;
    let kib = 0;
    for (const p of tree) {
      try {
        const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${p}/status`, 'utf8'));
        if (m) kib += Number(m[1]);
      } catch {
        // gone
      }
    }
    rssMax = Math.max(rssMax, kib * 1024);
  };
  const result = await runLoadgen([...trafficArgs(w, inst.port, { duration, rate }), ...(w.tls ? ['--tls'] : []), ...(state.peer.loadgenArgs ?? [])], {
    timeoutMs: (PLAN.warmup + duration + 30) * 1000,
    onEvent: (ev) => {
      if (ev.event === 'measure-start') {
        be0 = treeCpuSeconds(echo.pid);
        if (inst.pid) {
          tree = processTree(inst.pid);
          cpu0 = treeCpuSeconds(inst.pid);
          sampleRss();
          sampler = setInterval(sampleRss, 100);
        }
      } else if (ev.event === 'measure-end') {
        be1 = treeCpuSeconds(echo.pid);
        if (inst.pid) {
          cpu1 = treeCpuSeconds(inst.pid);
          clearInterval(sampler);
          sampleRss();
        }
      }
    },
  });
  clearInterval(sampler);
  row.valid = result.valid === true;
  row.connections = result.connections ?? null;
  row.msgsPerSec = result.msgsPerSec ?? null;
  row.mbPerSec = result.mbPerSec ?? null;
  row.tls = result.tls ?? null; // wss: the negotiated version and cipher, as the load generator saw them
  const units = w.kind === 'churn' ? result.cycles : result.messages;
  if (inst.pid && units > 0) {
    row.cpuSeconds = cpu1 - cpu0;
    row.cpuSecondsPerMillion = (row.cpuSeconds / units) * 1e6;
    row.rssBytes = rssMax;
  }
  if (units > 0) row.backendCpuSecondsPerMillion = ((be1 - be0) / units) * 1e6;
  // The client's own cost (it does TLS too in wss): a saturated load generator shows here.
  if (units > 0 && result.loadgenCpuSec != null) row.loadgenCpuSecondsPerMillion = (result.loadgenCpuSec / units) * 1e6;
  if (w.kind === 'open') {
    row.rate = result.rate ?? null;
    Object.assign(row, pickLatency(result.latency, ''));
  }
  if (w.kind === 'churn' && result.latency) {
    row.cycleP50Ms = result.latency.p50Ms ?? null;
    row.cycleP99Ms = result.latency.p99Ms ?? null;
  }
  if (!row.valid) row.reason = (result.errorMessages ?? []).join('; ') || 'load generator reported an invalid run';
  if (!alive(inst)) {
    row.valid = false;
    row.reason = `proxy process exited during the run: ${logTail(path.join(inst.dir, 'stderr.log'), 300)}`;
  }
  return row;
}

function pickLatency(lat) {
  if (!lat || !lat.count) return {};
  return { p50Ms: lat.p50Ms, p99Ms: lat.p99Ms, p999Ms: lat.p999Ms, maxMs: lat.maxMs };
}

/** Idle: RSS growth of the proxy while it holds N idle proxied connections. */
async function measureIdle(state, inst, w, round) {
  const row = emptyRow(state.peer.name, w.name, round);
  // Warm the proxy first (code paths, allocator arenas), so the growth measured
  // below is the connections' and not the first connection's one-time cost.
  await runLoadgen(['--port', String(inst.port), '--mode', 'closed', '--connections', '10', '--inflight', '1', '--warmup', '0', '--duration', String(Math.min(0.5, PLAN.warmup))], {
    timeoutMs: 30000,
  });
  await sleep(100);
  const base = inst.pid ? treeRssBytes(inst.pid) : null;
  let held = null;
  const result = await runLoadgen(
    ['--port', String(inst.port), '--mode', 'idle', '--connections', String(PLAN.idleConns), '--size', String(w.size), '--connect-timeout', '30',
      ...(state.peer.loadgenArgs ?? [])],
    {
      stdinPipe: true,
      timeoutMs: 120000,
      onEvent: (ev, child) => {
        if (ev.event !== 'ready') return;
        setTimeout(() => {
          held = { rss: inst.pid ? treeRssBytes(inst.pid) : null, connections: ev.connections };
          child.stdin.end();
        }, PLAN.idleSettle * 1000);
      },
    },
  );
  row.valid = result.valid === true && result.connected === PLAN.idleConns;
  row.connections = result.connected ?? null;
  if (held && inst.pid && held.connections > 0) {
    row.rssBytes = held.rss;
    row.idleBytesPerConn = (held.rss - base) / held.connections;
  }
  if (!row.valid) {
    row.reason =
      (result.errorMessages ?? []).join('; ') || `only ${result.connected ?? 0} of ${PLAN.idleConns} connections opened`;
  }
  if (!alive(inst)) {
    row.valid = false;
    row.reason = `proxy process exited during the run: ${logTail(path.join(inst.dir, 'stderr.log'), 300)}`;
  }
  return row;
}

function unavailableRow(state, w, round) {
  const row = emptyRow(state.peer.name, w.name, round);
  row.skipped = Boolean(state.skip);
  row.reason = state.skip ?? state.startError;
  return row;
}

// ---------------------------------------------------------------- workloads

/** Rate for the open-loop run: a share of nginx's measured echo-64B capacity. */
function latencyRate(rows, w, meta) {
  const cap = (peer) => median(rows.filter((r) => r.peer === peer && r.workload === 'echo-64B' && r.valid).map((r) => r.msgsPerSec));
  const nginx = cap('nginx');
  if (nginx) {
    meta.latencyRate = { msgsPerSec: Math.round(nginx * w.loadShare), source: `${w.loadShare * 100} % of nginx's median echo-64B msgs/s` };
  } else {
    meta.latencyRate = { msgsPerSec: 10000, source: 'fixed 10,000 msgs/s: no valid nginx echo-64B measurement in this run' };
  }
  return meta.latencyRate.msgsPerSec;
}

async function runWorkload(w, states, rows, meta) {
  if (w.kind === 'tunnel') {
    // bench/tunnel.js measures its own peers (direct, sluice gateway + agent, ssh); its
    // summary goes into this run's JSON, its table to the output.
    const out = path.join(tmpRoot ?? os.tmpdir(), `tunnel-${process.pid}.json`);
    const args = [path.join(here, 'tunnel.js'), '--json', out, '--rounds', String(PLAN.rounds), ...(opts.quick ? ['--quick'] : [])];
    try {
      execFileSync(process.execPath, args, { stdio: 'inherit' });
      meta.tunnel = JSON.parse(fs.readFileSync(out, 'utf8')).summary;
    } catch (err) {
      meta.tunnel = { error: String(err.message ?? err) };
      log(`bench: tunnel-tcp failed: ${meta.tunnel.error}`);
    }
    fs.rmSync(out, { force: true });
    return;
  }
  const usable = () => states.filter((s) => !s.skip && !s.startError);
  if (w.kind === 'idle') {
    for (let round = 1; round <= PLAN.idleRounds; round++) {
      for (const s of states) {
        if (s.peer.direct) {
          // No proxy process, so no memory to attribute: a row that says so.
          rows.push({ ...emptyRow(s.peer.name, w.name, round), skipped: true, reason: 'not applicable: no proxy process' });
          continue;
        }
        if (s.skip || s.startError) { rows.push(unavailableRow(s, w, round)); continue; }
        // A fresh process per round: memory a previous round freed would otherwise
        // be reused and hide the per-connection cost.
        const inst = await startPeer(s, `${w.name} r${round}`);
        if (!inst) { rows.push(unavailableRow(s, w, round)); continue; }
        const row = await measureIdle(s, inst, w, round);
        if (inst.child) await stopGroup(inst.child);
        report(row);
        rows.push(row);
      }
    }
    return;
  }
  const rate = w.kind === 'open' ? latencyRate(rows, w, meta) : undefined;
  // One fresh process per peer for this workload, all started before the first
  // round so the rounds can interleave; idle peers cost no CPU meanwhile.
  const instances = new Map();
  await Promise.all(
    usable().map(async (s) => {
      if (notApplicable(s, w)) return;
      const inst = await startPeer(s, w.name, w);
      if (inst) instances.set(s.peer.name, inst);
    }),
  );
  for (let round = 1; round <= PLAN.rounds; round++) {
    for (const s of states) {
      const na = notApplicable(s, w);
      if (na) { rows.push({ ...emptyRow(s.peer.name, w.name, round), skipped: true, reason: na }); continue; }
      let inst = instances.get(s.peer.name);
      if (!inst) { rows.push(unavailableRow(s, w, round)); continue; }
      const row = await measureTraffic(s, inst, w, round, rate);
      report(row);
      rows.push(row);
      if (!alive(inst)) {
        // Crashed: start a new one so the remaining rounds still measure something.
        inst = await startPeer(s, `${w.name} restart`, w);
        if (inst) instances.set(s.peer.name, inst);
        else instances.delete(s.peer.name);
      }
    }
  }
  await Promise.all([...instances.values()].map((inst) => inst.child && stopGroup(inst.child)));
}

function fmtNum(v, digits = 0) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  return v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function report(row) {
  const tag = `[${row.workload} r${row.round}] ${row.peer}:`;
  if (!row.valid) return log(`${tag} INVALID ${row.reason ?? ''}`);
  if (row.workload === 'idle') {
    return log(`${tag} ${fmtNum(row.connections)} conns, ${row.idleBytesPerConn === null ? '–' : fmtNum(row.idleBytesPerConn / 1024, 1) + ' KiB/conn'}`);
  }
  const lat = row.p50Ms !== null ? ` p50 ${fmtNum(row.p50Ms, 3)} ms p99 ${fmtNum(row.p99Ms, 3)} ms` : '';
  const cpu = row.cpuSecondsPerMillion !== null ? `, ${fmtNum(row.cpuSecondsPerMillion, 2)} cpu-s/M` : '';
  log(`${tag} ${fmtNum(row.msgsPerSec)} /s${cpu}${lat}`);
}

// ---------------------------------------------------------------- summary

/** Latency added over direct, per round (same traffic, same minute). */
function addLatencyOverDirect(rows) {
  for (const row of rows) {
    if (row.p50Ms === null || row.peer === 'direct') continue;
    const base = rows.find((r) => r.peer === 'direct' && r.workload === row.workload && r.round === row.round && r.valid);
    if (!base) continue;
    row.p50AddedMs = row.p50Ms - base.p50Ms;
    row.p99AddedMs = row.p99Ms - base.p99Ms;
    row.p999AddedMs = row.p999Ms - base.p999Ms;
  }
}

/** Medians (and spread) per workload and peer; ratios to nginx where it has a valid median. */
function summarize(rows) {
  const out = [];
  for (const w of selectedWorkloads) {
    if (w.kind === 'tunnel') continue; // its own summary (meta.tunnel)
    for (const peer of selectedPeers) {
      const mine = rows.filter((r) => r.workload === w.name && r.peer === peer.name);
      const ok = mine.filter((r) => r.valid);
      const vals = (k) => ok.map((r) => r[k]).filter((v) => v !== null && v !== undefined);
      const s = {
        workload: w.name,
        peer: peer.name,
        rounds: mine.length,
        validRounds: ok.length,
        skipped: mine.length > 0 && mine.every((r) => r.skipped),
        reason: mine.find((r) => !r.valid)?.reason ?? null,
      };
      for (const k of ['msgsPerSec', 'mbPerSec', 'cpuSecondsPerMillion', 'rssBytes', 'p50Ms', 'p99Ms', 'p999Ms', 'maxMs',
        'p50AddedMs', 'p99AddedMs', 'p999AddedMs', 'idleBytesPerConn', 'cycleP50Ms', 'cycleP99Ms']) {
        const v = vals(k);
        s[k] = median(v);
        if (k === 'msgsPerSec' || k === 'cpuSecondsPerMillion' || k === 'idleBytesPerConn') {
          s[k + 'Min'] = v.length ? Math.min(...v) : null;
          s[k + 'Max'] = v.length ? Math.max(...v) : null;
        }
      }
      out.push(s);
    }
  }
  for (const s of out) {
    const n = out.find((x) => x.workload === s.workload && x.peer === 'nginx');
    const ratio = (k) => (n && n[k] && s[k] !== null ? s[k] / n[k] : null);
    s.msgsVsNginx = ratio('msgsPerSec');
    s.cpuVsNginx = ratio('cpuSecondsPerMillion');
    s.idleVsNginx = ratio('idleBytesPerConn');
  }
  return out;
}

function ratio(v) {
  return v === null || v === undefined ? '–' : `${v.toFixed(2)}×`;
}
function mib(v) {
  return v === null || v === undefined ? '–' : `${(v / 1048576).toFixed(1)} MiB`;
}
function spread(s, k, digits = 0) {
  if (s[k] === null) return '–';
  return `${fmtNum(s[k], digits)} (${fmtNum(s[k + 'Min'], digits)}–${fmtNum(s[k + 'Max'], digits)})`;
}
function status(s) {
  if (s.skipped) return `skipped: ${s.reason}`;
  if (s.validRounds === s.rounds) return 'ok';
  return `**invalid ${s.rounds - s.validRounds}/${s.rounds}**: ${String(s.reason ?? '').slice(0, 160)}`;
}

function markdown(summary, meta) {
  const lines = [];
  lines.push(`## sluice benchmark${meta.quick ? ' (quick)' : ''}`);
  lines.push('');
  lines.push(`${meta.machine.cpu}, ${meta.machine.cores} cores, ${meta.machine.kernel}, node ${meta.machine.node}. ` +
    `${meta.rounds} interleaved rounds; medians with (min–max). Ratios are to nginx: ` +
    'msgs/s higher is better, CPU per message lower is better.');
  for (const w of selectedWorkloads) {
    if (w.kind === 'tunnel') continue; // printed by bench/tunnel.js
    const rows = summary.filter((s) => s.workload === w.name);
    lines.push('');
    if (w.kind === 'closed') {
      lines.push(`### ${w.name}: ${w.connections} connections × ${w.inflight} in flight, ${w.size} B binary echo${w.tls ? ' over wss (TLS 1.3 to the proxy, plain ws to the backend)' : ''}`);
      lines.push('');
      lines.push('| peer | msgs/s vs nginx | CPU/msg vs nginx | msgs/s | MB/s | CPU s / 1M msgs | peak RSS | status |');
      lines.push('|---|---:|---:|---:|---:|---:|---:|---|');
      for (const s of rows) {
        lines.push(`| ${s.peer} | ${ratio(s.msgsVsNginx)} | ${ratio(s.cpuVsNginx)} | ${spread(s, 'msgsPerSec')} | ${fmtNum(s.mbPerSec, 1)} | ${spread(s, 'cpuSecondsPerMillion', 2)} | ${mib(s.rssBytes)} | ${status(s)} |`);
      }
    } else if (w.kind === 'open') {
      lines.push(`### ${w.name}: open loop, ${fmtNum(meta.latencyRate?.msgsPerSec)} msgs/s over ${w.connections} connections (${meta.latencyRate?.source ?? ''}); latency from the intended send time`);
      lines.push('');
      lines.push('| peer | p50 added | p99 added | p99.9 added | p50 | p99 | p99.9 | max | CPU/msg vs nginx | CPU s / 1M msgs | status |');
      lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
      const ms = (v) => (v === null ? '–' : `${v.toFixed(3)} ms`);
      for (const s of rows) {
        lines.push(`| ${s.peer} | ${ms(s.p50AddedMs)} | ${ms(s.p99AddedMs)} | ${ms(s.p999AddedMs)} | ${ms(s.p50Ms)} | ${ms(s.p99Ms)} | ${ms(s.p999Ms)} | ${ms(s.maxMs)} | ${ratio(s.cpuVsNginx)} | ${spread(s, 'cpuSecondsPerMillion', 2)} | ${status(s)} |`);
      }
    } else if (w.kind === 'idle') {
      lines.push(`### idle: ${fmtNum(meta.idleConnections)} idle proxied connections held${meta.idleCapped ? ` (capped from 10,000 by RLIMIT_NOFILE ${meta.nofile}: each costs the proxy 2 descriptors)` : ''}`);
      lines.push('');
      lines.push('| peer | memory vs nginx | RSS growth per 1,000 conns | RSS holding them | status |');
      lines.push('|---|---:|---:|---:|---|');
      for (const s of rows) {
        const per1k = s.idleBytesPerConn === null ? '–' : `${fmtNum((s.idleBytesPerConn * 1000) / 1048576, 2)} MiB (${fmtNum((s.idleBytesPerConnMin * 1000) / 1048576, 2)}–${fmtNum((s.idleBytesPerConnMax * 1000) / 1048576, 2)})`;
        lines.push(`| ${s.peer} | ${ratio(s.idleVsNginx)} | ${per1k} | ${mib(s.rssBytes)} | ${status(s)} |`);
      }
    } else if (w.kind === 'churn') {
      lines.push(`### churn: ${w.connections} concurrent cycles of connect, one ${w.size} B message, close`);
      lines.push('');
      lines.push('| peer | conns/s vs nginx | CPU/conn vs nginx | conns/s | CPU s / 1M conns | cycle p50 | cycle p99 | status |');
      lines.push('|---|---:|---:|---:|---:|---:|---:|---|');
      for (const s of rows) {
        lines.push(`| ${s.peer} | ${ratio(s.msgsVsNginx)} | ${ratio(s.cpuVsNginx)} | ${spread(s, 'msgsPerSec')} | ${spread(s, 'cpuSecondsPerMillion', 1)} | ${fmtNum(s.cycleP50Ms, 2)} ms | ${fmtNum(s.cycleP99Ms, 2)} ms | ${status(s)} |`);
      }
    }
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------- main

async function main() {
  const t0 = Date.now();
  ensureLoadgen();
  tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-'));
  startWatchdog(tmpRoot);
  const states = peerStates();
  const meta = {
    date: new Date().toISOString(),
    quick: opts.quick,
    rounds: PLAN.rounds,
    plan: { ...PLAN },
    nofile,
    idleConnections: PLAN.idleConns,
    idleCapped,
    machine: {
      cpu: os.cpus()[0]?.model?.trim() ?? 'unknown cpu',
      cores: os.cpus().length,
      kernel: `${os.type()} ${os.release()}`,
      node: process.version,
      loadavg: os.loadavg().map((x) => x.toFixed(2)),
    },
    peers: states.map((s) => ({ name: s.peer.name, describe: s.peer.describe, version: s.skip ? null : s.peer.version(), skipped: s.skip })),
  };
  log(`bench: ${meta.machine.cpu}, ${meta.machine.cores} cores, load ${meta.machine.loadavg.join(' ')}, ${meta.machine.kernel}, node ${process.version}`);
  for (const p of meta.peers) log(`bench: peer ${p.name}: ${p.skipped ? 'SKIPPED, ' + p.skipped : p.version ?? p.describe}`);
  log(`bench: ${opts.quick ? 'quick' : 'full'} run, ${PLAN.rounds} rounds, warm-up ${PLAN.warmup} s, window ${PLAN.duration} s`);

  echo = await startEcho();
  const rows = [];
  meta.workloadSec = {};
  for (const w of selectedWorkloads) {
    const tw = Date.now();
    await runWorkload(w, states, rows, meta);
    meta.workloadSec[w.name] = (Date.now() - tw) / 1000;
    log(`bench: ${w.name} took ${meta.workloadSec[w.name].toFixed(1)} s`);
  }
  addLatencyOverDirect(rows);
  const summary = summarize(rows);
  meta.elapsedSec = (Date.now() - t0) / 1000;

  const outDir = opts['out-dir'] ?? path.join(here, 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const stamp = meta.date.replace(/[:.]/g, '-');
  const doc = JSON.stringify({ meta, rows, summary }, null, 2);
  fs.writeFileSync(path.join(outDir, `${stamp}.json`), doc);
  fs.writeFileSync(path.join(outDir, 'latest.json'), doc);
  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify(rows, null, 2));
  if (!opts['no-chart']) fs.writeFileSync(path.join(outDir, 'latest.svg'), renderChart(summary, meta));

  await cleanup();
  console.log(markdown(summary, meta));
  log(`bench: done in ${meta.elapsedSec.toFixed(1)} s; results in ${path.relative(process.cwd(), outDir) || '.'}/${stamp}.json` +
    (opts['no-chart'] ? '' : ', chart in latest.svg'));
}

main().catch((err) => onFatal(1, `bench: ${err.stack ?? err}`));
