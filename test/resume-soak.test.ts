/**
 * The resume soak (scripts/resume-soak.mjs): 200 resumable sessions through a relay that
 * cuts them at random, mid-frame too, and takes them all down at once every 15 s, for 60 s
 * (SLUICE_RESUME_SOAK_SECONDS); every message accounted for, both ways; sluice's memory
 * bounded by its replay buffers.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const seconds = process.env.SLUICE_RESUME_SOAK_SECONDS ?? '60';

t.test(`resume soak: 200 sessions, random cuts for ${seconds} s`, { timeout: (Number(seconds) + 90) * 1000 }, async (t) => {
  if (!existsSync(join(root, 'dist', 'cli.js'))) {
    t.fail('dist/cli.js is missing: run `npm run build:ts` (npm test does) before this test');
    return;
  }
  const child = spawn(process.execPath, [join(root, 'scripts', 'resume-soak.mjs'), '--duration', seconds, '--clients', '200'],
    { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => child.kill('SIGKILL'));
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  const summary = JSON.parse(out.slice(out.indexOf('{'))) as {
    ok: boolean; failures: string[]; cuts: number; midChunkCuts: number; outages: number; resumes: number; lostContinuity: number;
    messages: { clientToUpstream: number; upstreamToClient: number }; upstreamSessions: number;
    sluice: { rssMiB: { baseline: number; max: number; bound: number }; maxBufferedBytes: number; bufferBound: number; maxParked: number };
  };
  t.same(summary.failures, [], 'every message once and in order both ways, one upstream session per client, memory in bounds');
  t.equal(code, 0, `exit code (stderr: ${err.slice(-500)})`);
  t.equal(summary.upstreamSessions, 200, 'the upstream saw 200 sessions');
  t.equal(summary.lostContinuity, 0, 'no client lost continuity');
  t.ok(summary.cuts > 0 && summary.midChunkCuts > 0, `${summary.cuts} cuts, ${summary.midChunkCuts} of them mid-chunk`);
  t.ok(summary.outages > 0 && summary.sluice.maxParked >= 150, `${summary.outages} outages, up to ${summary.sluice.maxParked} sessions parked at once`);
  t.ok(summary.sluice.maxBufferedBytes <= summary.sluice.bufferBound, `replay buffers at most ${summary.sluice.maxBufferedBytes} bytes (bound ${summary.sluice.bufferBound})`);
  t.ok(summary.sluice.rssMiB.max <= summary.sluice.rssMiB.bound, `sluice RSS ${summary.sluice.rssMiB.baseline} → at most ${summary.sluice.rssMiB.max} MiB (bound ${summary.sluice.rssMiB.bound})`);
  t.comment(`resume-soak: ${JSON.stringify({ cuts: summary.cuts, resumes: summary.resumes, messages: summary.messages, rss: summary.sluice.rssMiB })}`);
});
