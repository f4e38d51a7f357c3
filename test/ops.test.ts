// The monitoring artefacts of ops/ against real things (issue #16): promtool checks the
// alert rules and runs their unit tests; Debian's prometheus scrapes a running sluice
// gateway (with an agent and a tunnel) while traffic flows, and every query of every
// panel of the Grafana dashboard returns a series with a number. Without prometheus
// installed (Debian: apt-get install prometheus; .ci/run installs it) the file says so
// and skips.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { WebSocket } from 'ws';
import { freePort, startCli, type CliProcess } from './fixtures/cli-process.js';

const root = join(import.meta.dirname, '..');
const have = (cmd: string) => ['/usr/bin', '/usr/local/bin', '/bin'].some((d) => existsSync(join(d, cmd)));
const skip = have('promtool') && have('prometheus') ? false : 'prometheus and promtool are not installed (Debian: apt-get install prometheus)';

t.test('promtool: the alert rules check, and their unit tests pass', { skip }, async (t) => {
  const check = execFileSync('promtool', ['check', 'rules', join(root, 'ops/prometheus/alerts.yml')], { encoding: 'utf8' });
  t.match(check, /SUCCESS: 8 rules found/, 'promtool check rules: 8 rules');
  const tests = execFileSync('promtool', ['test', 'rules', join(root, 'ops/prometheus/alerts.test.yml')], { encoding: 'utf8' });
  t.match(tests, /SUCCESS/, 'promtool test rules: every alert fires where it should and stays quiet where it should not');
});

interface Panel { title: string; targets: Array<{ expr: string }> }

t.test('a real Prometheus scrapes sluice; every panel query of ops/grafana/sluice.json returns a series while traffic flows', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-ops-'));
  const children: Array<CliProcess | ChildProcess> = [];
  t.teardown(async () => {
    for (const c of children) {
      if ('stop' in c) await c.stop();
      else if (c.exitCode === null) {
        c.kill('SIGTERM'); // timeout passes it on to prometheus
        await once(c, 'exit');
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });
  // The service behind the agent: an echo.
  const echo = net.createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.pipe(s); });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  t.teardown(() => echo.close());
  const [gwPort, adminPort, tunnelPort, promPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const key = 'ops-test-agent-key-0123456789abcdef';
  const digest = createHash('sha256').update(key).digest('hex');
  const config = join(dir, 'gateway.yaml');
  writeFileSync(config, `
listen: { host: 127.0.0.1, port: ${gwPort} }
admin: { host: 127.0.0.1, port: ${adminPort} }
log: { level: warn }
limits: { maxFrameBytes: 1024 }
routes:
  - { path: /echo, upstreams: [ { url: "builtin:echo" } ] }
  - { path: /agent, mode: agent, auth: { apiKeys: { header: authorization, sha256: [ "${digest}" ] } } }
tunnels:
  - { listen: "127.0.0.1:${tunnelPort}", agent: site-a, service: echo }
`);
  const gw = startCli(['--config', config]);
  children.push(gw);
  const agent = startCli(['agent', '--server', `ws://127.0.0.1:${gwPort}/agent`, '--token', key, '--name', 'site-a',
    '--expose', `echo=127.0.0.1:${(echo.address() as net.AddressInfo).port}`, '--log-level', 'info']);
  children.push(agent);
  await agent.waitFor((l) => l.event === 'agent_connected', 0, 20_000);

  writeFileSync(join(dir, 'prometheus.yml'), `
global: { scrape_interval: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: sluice
    static_configs: [ { targets: [ "127.0.0.1:${adminPort}" ] } ]
`);
  // Under coreutils' timeout: it stops by itself even if this process is killed first.
  const prom = spawn('timeout', ['-s', 'KILL', '120', 'prometheus', `--config.file=${join(dir, 'prometheus.yml')}`,
    `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'],
  { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(prom);
  let promLog = '';
  prom.stderr!.on('data', (d: Buffer) => { promLog += d.toString(); });

  const query = async (expr: string) => {
    const res = await fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = await res.json() as { status: string; data?: { result: Array<{ metric: Record<string, string>; value: [number, string] }> }; error?: string };
    return body;
  };
  // Prometheus scraping before the traffic starts (its start can take seconds on a busy
  // machine; rates over samples taken only after the traffic would be NaN).
  for (const deadline = Date.now() + 30_000; Date.now() < deadline;) {
    const r = await query('up{job="sluice"}').catch(() => null);
    if (r?.data?.result[0]?.value[1] === '1') break;
    await new Promise((r2) => setTimeout(r2, 250));
  }
  // Traffic while Prometheus scrapes: echo sessions that open, exchange and close (1000),
  // one message over maxFrameBytes (1009), and tunnel streams, one of them held open.
  const held = net.connect(tunnelPort, '127.0.0.1');
  held.on('error', () => {});
  t.teardown(() => held.destroy());
  const until = Date.now() + 6000;
  let sessions = 0;
  while (Date.now() < until) {
    const ws = new WebSocket(`ws://127.0.0.1:${gwPort}/echo`);
    await once(ws, 'open');
    ws.send('hello');
    await once(ws, 'message');
    if (sessions % 5 === 4) {
      ws.send(Buffer.alloc(4096));
      await once(ws, 'close');
    } else {
      ws.close(1000);
      await once(ws, 'close');
    }
    sessions++;
    const c = net.connect(tunnelPort, '127.0.0.1');
    c.on('error', () => {});
    c.resume(); // the echoed byte is read, so the end comes
    c.end('x');
    await once(c, 'close');
    await new Promise((r) => setTimeout(r, 100));
  }
  t.ok(sessions > 10, `${sessions} sessions and tunnel streams during the scrapes`);
  // One session stays open for the gauges.
  const open = new WebSocket(`ws://127.0.0.1:${gwPort}/echo`);
  await once(open, 'open');
  t.teardown(() => open.terminate());
  await new Promise((r) => setTimeout(r, 2500));

  const up = await query('up{job="sluice"}');
  t.equal(up.data?.result[0]?.value[1], '1', 'Prometheus scrapes sluice\'s /metrics', { prometheusLog: promLog.slice(-2000) });

  const dashboard = JSON.parse(readFileSync(join(root, 'ops/grafana/sluice.json'), 'utf8')) as { panels: Panel[] };
  let queries = 0;
  for (const panel of dashboard.panels) {
    for (const target of panel.targets) {
      const expr = target.expr.replaceAll('$job', 'sluice.*');
      const r = await query(expr);
      const values = (r.data?.result ?? []).map((s) => Number(s.value[1]));
      t.ok(r.status === 'success' && values.length > 0 && values.every((v) => Number.isFinite(v)),
        `${panel.title}: ${expr} → ${r.error ?? JSON.stringify(r.data?.result.map((s) => [s.metric, s.value[1]]))}`);
      queries++;
    }
  }
  t.ok(queries >= 20, `${queries} queries in ${dashboard.panels.length} panels`);
  const tooBig = await query('sum(agent_websocket_session_close_total{code="1009"})');
  t.ok(Number(tooBig.data?.result[0]?.value[1]) >= 1, 'the 1009s the test caused are there');
});
