/**
 * The short soak (scripts/soak.mjs --short): sluice and a ws echo backend in child
 * processes, constant load, the backend SIGKILLed and restarted, clients dropping at
 * random; no crash, no leak, every session accounted for in /metrics.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;

t.test('short soak with faults', { timeout: 90_000 }, async (t) => {
  if (!existsSync(join(root, 'dist', 'cli.js'))) {
    t.fail('dist/cli.js is missing: run `npm run build:ts` (npm test does) before this test');
    return;
  }
  // SLUICE_SOAK_SECONDS: scripts/test.sh gives the second (TypeScript twins) run less time.
  const child = spawn(process.execPath, [join(root, 'scripts', 'soak.mjs'), '--short', '--duration', process.env.SLUICE_SOAK_SECONDS ?? '20'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.equal(code, 0, `soak exit code (stderr: ${err.slice(-500)})`);
  const summary = JSON.parse(out.slice(out.indexOf('{'))) as {
    ok: boolean; failures: string[]; messagesPerSecond: number; connectionsOpened: number;
    faultsInjected: { backendKills: number; randomClientDrops: number };
    sessions: { total: number; closed: number; active: number; closeCodes: Record<string, number> };
    sluice: { exit: { code: number | null } };
  };
  t.same(summary.failures, [], 'no failure reported');
  t.ok(summary.faultsInjected.backendKills >= 3, `backend killed ${summary.faultsInjected.backendKills} times`);
  t.ok(summary.faultsInjected.randomClientDrops > 0, `${summary.faultsInjected.randomClientDrops} random client drops`);
  t.equal(summary.sessions.total, summary.sessions.closed + summary.sessions.active, 'sessions_total = closed + active');
  t.equal(summary.sessions.active, 0);
  t.ok(summary.sessions.closeCodes['1014'] > 0, 'backend kills reached clients as 1014');
  t.ok(summary.connectionsOpened >= 40, `${summary.connectionsOpened} connections opened`);
  t.ok(summary.messagesPerSecond > 0, `${summary.messagesPerSecond} messages/s sustained`);
  t.equal(summary.sluice.exit.code, 0, 'sluice drained and exited 0 on SIGTERM');
  t.comment(`soak: ${JSON.stringify({ mps: summary.messagesPerSecond, connections: summary.connectionsOpened, faults: summary.faultsInjected, sessions: summary.sessions.total })}`);
});
