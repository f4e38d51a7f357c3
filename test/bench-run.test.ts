// `npm run bench -- --quick --json out.json`: the rows have the documented schema,
// and an interrupted run leaves no process behind (peers run in their own process
// groups, so only the harness can stop them).
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const runJs = path.join(root, 'bench', 'run.js');

function runBench(args: string[], onStderrLine?: (line: string, pid: number) => void) {
  return new Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [runJs, ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let pending = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => {
      stderr += d;
      pending += d;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        onStderrLine?.(line, child.pid!);
      }
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 90000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** pid → start time (so a reused pid is not mistaken for a survivor) of `pid`'s descendants. */
function descendants(pid: number): Map<number, string> {
  const byParent = new Map<number, number[]>();
  const start = new Map<number, string>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const text = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
      const ppid = Number(f[1]);
      start.set(Number(name), f[19]);
      byParent.set(ppid, [...(byParent.get(ppid) ?? []), Number(name)]);
    } catch {
      // gone
    }
  }
  const out = new Map<number, string>();
  const queue = [...(byParent.get(pid) ?? [])];
  while (queue.length) {
    const p = queue.shift()!;
    out.set(p, start.get(p)!);
    queue.push(...(byParent.get(p) ?? []));
  }
  return out;
}

function stillAlive(procs: Map<number, string>): number[] {
  const alive: number[] = [];
  for (const [pid, startTime] of procs) {
    try {
      const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
      if (f[19] === startTime && f[0] !== 'Z') alive.push(pid);
    } catch {
      // gone, as it should be
    }
  }
  return alive;
}

const ROW_KEYS = ['peer', 'workload', 'round', 'valid', 'msgsPerSec', 'mbPerSec', 'cpuSecondsPerMillion', 'rssBytes', 'p50Ms', 'p99Ms'];

t.test('--quick --json writes rows with the documented schema', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-run-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'out.json');
  const res = await runBench([
    '--quick', '--rounds', '1', '--peers', 'direct,node-http-proxy', '--workloads', 'echo-64B,latency-64B,idle',
    '--json', out, '--out-dir', dir, '--no-chart',
  ]);
  t.equal(res.code, 0, res.stderr.slice(-2000));
  const rows = JSON.parse(fs.readFileSync(out, 'utf8'));
  t.equal(rows.length, 2 * 3, 'one row per peer, workload and round');
  for (const row of rows) {
    for (const k of ROW_KEYS) t.ok(k in row, `${row.peer}/${row.workload} has ${k}`);
    t.type(row.valid, 'boolean');
    for (const k of ROW_KEYS.slice(4)) t.ok(row[k] === null || typeof row[k] === 'number', `${k} is a number or null`);
  }
  const find = (peer: string, workload: string) => rows.find((r: any) => r.peer === peer && r.workload === workload);
  const echo = find('node-http-proxy', 'echo-64B');
  t.equal(echo.valid, true, echo.reason ?? '');
  t.ok(echo.msgsPerSec > 0 && echo.mbPerSec > 0, 'throughput measured');
  t.ok(echo.cpuSecondsPerMillion > 0, 'proxy CPU measured');
  t.ok(echo.rssBytes > 1e6, 'proxy RSS measured');
  t.equal(echo.p50Ms, null, 'no latency percentiles in a closed-loop row');
  t.equal(find('direct', 'echo-64B').cpuSecondsPerMillion, null, 'direct has no proxy process');
  const lat = find('node-http-proxy', 'latency-64B');
  t.ok(lat.p50Ms > 0 && lat.p99Ms >= lat.p50Ms, 'open-loop percentiles');
  t.type(lat.p50AddedMs, 'number', 'latency added over direct');
  const idle = find('node-http-proxy', 'idle');
  t.ok(idle.idleBytesPerConn > 0, 'memory per idle connection');
  t.match(res.stdout, /\| node-http-proxy \|/, 'markdown table on stdout');
});

t.test('wss-4KiB: sluice terminates TLS, peers without a TLS listener are not applicable', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-run-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'out.json');
  const res = await runBench([
    '--quick', '--rounds', '1', '--peers', 'direct,sluice', '--workloads', 'wss-4KiB', '--json', out, '--out-dir', dir, '--no-chart',
  ]);
  t.equal(res.code, 0, res.stderr.slice(-2000));
  const rows = JSON.parse(fs.readFileSync(out, 'utf8'));
  const find = (peer: string) => rows.find((r: any) => r.peer === peer && r.workload === 'wss-4KiB');
  const wss = find('sluice');
  t.equal(wss.valid, true, wss.reason ?? '');
  t.match(wss.tls, /^TLSv1\.3 /, 'the load generator spoke TLS 1.3');
  t.ok(wss.msgsPerSec > 0 && wss.cpuSecondsPerMillion > 0, 'throughput and proxy CPU measured');
  t.equal(find('direct').skipped, true);
  t.match(find('direct').reason, /not applicable/);
});

t.test('Ctrl-C stops every peer, the backend and the load generator', async (t) => {
  let snapshot = new Map<number, string>();
  let interrupted = false;
  const res = await runBench(
    ['--quick', '--rounds', '3', '--peers', 'direct,nginx,node-http-proxy', '--workloads', 'echo-64B', '--out-dir', os.tmpdir(), '--no-chart'],
    (line, pid) => {
      // Interrupt mid-run: peers are up and a load generator is running.
      if (!interrupted && /^\[echo-64B r1\] direct:/.test(line)) {
        interrupted = true;
        setTimeout(() => {
          snapshot = descendants(pid);
          process.kill(pid, 'SIGINT');
        }, 250);
      }
    },
  );
  t.ok(interrupted, 'the run reached its first measurement');
  t.equal(res.code, 130, 'exit code of an interrupted run');
  t.ok(snapshot.size >= 3, `echo backend, peers and loadgen were running (${snapshot.size} processes)`);
  t.same(stillAlive(snapshot), [], 'no process outlives the run');
});

t.test('npm run bench:tunnel -- --quick: sluice, direct and (with sshd) ssh, in one run, with the documented summary', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-run-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'tunnel.json');
  const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [path.join(root, 'bench', 'tunnel.js'), '--quick', '--rounds', '1', '--idle', '400', '--json', out],
      { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
  t.equal(r.code, 0, r.stderr);
  const report = JSON.parse(fs.readFileSync(out, 'utf8')) as {
    summary: Record<string, { oneMBps: number; oneCpuPerGB: number | null; manyMBps: number; openP50Ms: number; idleBytesPerStream: number | null }>;
    skipped: Record<string, string>;
  };
  for (const peer of ['direct', 'sluice']) {
    const s = report.summary[peer];
    t.ok(s !== undefined && s.oneMBps > 0 && s.manyMBps > 0 && s.openP50Ms > 0, `${peer}: throughput and open times measured`);
  }
  t.ok((report.summary.sluice.oneCpuPerGB ?? 0) > 0, 'sluice: CPU per GB of its two processes');
  // A number (from 400 streams it may round to nothing: the growth of 200 streams can stay
  // inside pages the processes already had).
  t.ok(Number.isFinite(report.summary.sluice.idleBytesPerStream), 'sluice: memory per idle stream measured');
  // Its own sshd needs /run/sshd (made as root) besides the binary.
  if (fs.existsSync('/usr/sbin/sshd') && process.getuid?.() === 0) {
    t.ok(report.summary.ssh?.oneMBps > 0, 'ssh -N -L measured in the same run');
    t.match(r.stdout, /\| sluice \| [\d,]+ \| [\d.]+× \| [\d.]+× \|/, 'the table gives sluice against direct and ssh');
  } else {
    t.match(report.skipped.ssh, /sshd/, 'ssh skipped, with the reason (no sshd)');
  }
});
