// nginx peer: one worker, master process on (so CPU and memory are summed over
// master + worker), config rendered from nginx.conf.template.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { findExecutable, renderTemplate, spawnGroup, waitForPort } from './process.js';

const here = path.dirname(new URL(import.meta.url).pathname);

export default {
  name: 'nginx',
  describe: 'nginx, 1 worker',
  check() {
    return findExecutable('nginx') ? null : 'nginx not installed: run scripts/install-peers.sh';
  },
  version() {
    try {
      return execFileSync(findExecutable('nginx'), ['-v'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim() || null;
    } catch (err) {
      return String(err.stderr ?? '').trim() || null;
    }
  },
  async start({ dir, port, echoPort, nofile }) {
    const conf = renderTemplate(fs.readFileSync(path.join(here, 'nginx.conf.template'), 'utf8'), {
      DIR: dir,
      PORT: port,
      ECHO_PORT: echoPort,
      NOFILE: nofile,
      // Above the descriptor limit on purpose: nginx starts reclaiming connections
      // once fewer than 1/16 of worker_connections are free, which would refuse
      // proxied connections well before the descriptors run out.
      WORKER_CONNECTIONS: Math.max(1024, Math.ceil(nofile * 1.1)),
    });
    const file = path.join(dir, 'nginx.conf');
    fs.writeFileSync(file, conf);
    const logFile = path.join(dir, 'stderr.log');
    // -e: nginx opens its error log before reading the config; keep it out of /var/log.
    const child = spawnGroup(findExecutable('nginx'), ['-p', dir + '/', '-e', path.join(dir, 'error.log'), '-c', file], { logFile });
    await waitForPort(port, { child, logFile: path.join(dir, 'error.log') });
    return { child, pid: child.pid, port };
  },
};
