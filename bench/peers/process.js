// What every peer shares: spawning a process in its own process group, waiting
// until its port accepts connections, stopping the whole group, and reading the
// CPU time and resident memory of a process tree from /proc.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';

/** Every process group the harness started and has not stopped yet (pid → ChildProcess). */
export const liveGroups = new Map();

let groupsFile = null;

/**
 * Keep the list of live process groups in `file` (one pgid a line) for the
 * watchdog that cleans up if the harness itself is killed with SIGKILL.
 */
export function recordGroupsIn(file) {
  groupsFile = file;
  writeGroups();
}

function writeGroups() {
  if (!groupsFile) return;
  try {
    fs.writeFileSync(groupsFile, [...liveGroups.keys()].join('\n') + '\n');
  } catch {
    // the run's temp dir is gone: nothing left to record
  }
}

/** Registers a detached child (its pid is its process group) until it exits. */
export function trackGroup(child) {
  if (!child.pid) return;
  liveGroups.set(child.pid, child);
  writeGroups();
  child.once('exit', () => {
    liveGroups.delete(child.pid);
    writeGroups();
  });
}

/**
 * Starts `command` detached (its own process group, so a forking peer such as
 * nginx is stopped as a whole) with stdout and stderr appended to `logFile`.
 */
export function spawnGroup(command, args, { env = {}, cwd, logFile, stdin = 'ignore' } = {}) {
  const log = fs.openSync(logFile, 'a');
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, ...env },
    detached: true,
    stdio: [stdin, log, log],
  });
  fs.closeSync(log);
  trackGroup(child);
  return child;
}

/** The last `bytes` of a log file, for error messages. */
export function logTail(logFile, bytes = 600) {
  try {
    const text = fs.readFileSync(logFile, 'utf8');
    return text.slice(-bytes).trim();
  } catch {
    return '';
  }
}

function tryConnect(port, host) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host });
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
    socket.setTimeout(500, () => done(false));
  });
}

/**
 * Resolves once `host:port` accepts a TCP connection; rejects when `child` exits
 * first or `timeoutMs` passes, with the tail of the peer's log in the message.
 * On rejection `child`'s process group has been stopped.
 */
export async function waitForPort(port, options = {}) {
  try {
    await pollPort(port, options);
  } catch (err) {
    if (options.child) await stopGroup(options.child, 500);
    throw err;
  }
}

async function pollPort(port, { host = '127.0.0.1', child, logFile, timeoutMs = 10000 } = {}) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) {
      throw new Error(`exited with code ${child.exitCode}: ${logTail(logFile)}`);
    }
    if (child && child.signalCode !== null) {
      throw new Error(`killed by ${child.signalCode}: ${logTail(logFile)}`);
    }
    if (await tryConnect(port, host)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`port ${port} not accepting connections after ${timeoutMs} ms: ${logTail(logFile)}`);
}

/** SIGTERM to the whole group, SIGKILL after `graceMs`; resolves when the leader is gone. */
export async function stopGroup(child, graceMs = 1500) {
  if (!child || !child.pid) return;
  const pid = child.pid;
  const exited = child.exitCode !== null || child.signalCode !== null;
  const gone = exited ? Promise.resolve() : new Promise((r) => child.once('exit', r));
  signalGroup(pid, 'SIGTERM');
  const timer = new Promise((r) => setTimeout(r, graceMs, 'timeout'));
  if ((await Promise.race([gone, timer])) === 'timeout') {
    signalGroup(pid, 'SIGKILL');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 1000))]);
  }
  // The leader may be gone while a forked worker still runs: sweep the group.
  signalGroup(pid, 'SIGKILL');
  liveGroups.delete(pid);
  writeGroups();
}

function signalGroup(pid, signal) {
  try {
    process.kill(-pid, signal);
  } catch {
    // the group is already empty
  }
}

/** Synchronous last resort (process 'exit' handler): SIGKILL every group still alive. */
export function killAllGroupsNow() {
  for (const pid of liveGroups.keys()) signalGroup(pid, 'SIGKILL');
  liveGroups.clear();
}

function readStat(pid) {
  try {
    const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may hold spaces.
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return {
      ppid: Number(f[1]),
      pgrp: Number(f[2]),
      ticks: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]),
    };
  } catch {
    return null;
  }
}

/** `pid` and all its descendants, found through each process's parent in /proc. */
export function processTree(pid) {
  const children = new Map();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = readStat(name);
    if (!st) continue;
    const list = children.get(st.ppid) ?? [];
    list.push(Number(name));
    children.set(st.ppid, list);
  }
  const out = [];
  const queue = [pid];
  while (queue.length) {
    const p = queue.shift();
    out.push(p);
    for (const c of children.get(p) ?? []) queue.push(c);
  }
  return out;
}

/** Members of process group `pgid` still alive (used by the stray-process test). */
export function groupMembers(pgid) {
  const out = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = readStat(name);
    if (st && st.pgrp === pgid) out.push(Number(name));
  }
  return out;
}

const TICKS_PER_SECOND = 100; // USER_HZ: /proc reports CPU time in these units on Linux

/**
 * CPU seconds (user + system, all threads; reaped children included through
 * cutime/cstime) of the tree rooted at `pid`.
 */
export function treeCpuSeconds(pid) {
  let ticks = 0;
  for (const p of processTree(pid)) ticks += readStat(p)?.ticks ?? 0;
  return ticks / TICKS_PER_SECOND;
}

/** Sum of VmRSS over the tree rooted at `pid`, in bytes. */
export function treeRssBytes(pid) {
  let kib = 0;
  for (const p of processTree(pid)) {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${p}/status`, 'utf8'));
      if (m) kib += Number(m[1]);
    } catch {
      // exited between listing and reading
    }
  }
  return kib * 1024;
}

/** A free TCP port on 127.0.0.1 (the kernel picks one; it is released before use). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Fills `{{NAME}}` placeholders; a placeholder without a value is an error, not an empty string. */
export function renderTemplate(text, values) {
  return text.replace(/\{\{(\w+)\}\}/g, (_, key) => {
    if (!(key in values)) throw new Error(`template value ${key} missing`);
    return String(values[key]);
  });
}

/** Absolute path of `name` on PATH or in the sbin directories Debian uses, or null. */
export function findExecutable(name) {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin', '/sbin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const p = `${dir}/${name}`;
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}
