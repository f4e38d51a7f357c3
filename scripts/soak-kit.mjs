// What the soaks (soak.mjs, resume-soak.mjs) share: ports, /proc figures, sluice's start
// and stop as a child process.
import { once } from 'node:events';
import net from 'node:net';
import { readdirSync, readFileSync } from 'node:fs';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A port the kernel says is free on loopback (closed again before it is used). */
export async function freePort() {
  const s = net.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/** RSS (MiB) and open descriptors of a process. */
export function procStats(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return { rssMiB: Math.round(rssKb / 1024), fds: readdirSync(`/proc/${pid}/fd`).length };
}

/** Waits for sluice's /healthz; false when it exited or did not answer within 10 s. */
export async function waitHealthy(adminPort, exited) {
  for (let i = 0; i <= 100; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${adminPort}/healthz`)).ok) return true;
    } catch { /* not up yet */ }
    if (exited()) return false;
    await sleep(100);
  }
  return false;
}

/** SIGTERM (a drain), SIGKILL after 15 s; returns what went wrong, or null. */
export async function stopSluice(child, exitOf) {
  child.kill('SIGTERM');
  const stopped = await Promise.race([once(child, 'exit').then(() => true), sleep(15_000).then(() => false)]);
  if (!stopped) {
    child.kill('SIGKILL');
    return 'sluice did not exit within 15 s of SIGTERM';
  }
  const exit = exitOf();
  return exit && exit.code !== 0 ? `sluice exited with ${JSON.stringify(exit)} on SIGTERM` : null;
}
