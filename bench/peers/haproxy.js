// HAProxy peer: one thread, foreground (-db), config rendered from haproxy.cfg.template.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { findExecutable, renderTemplate, spawnGroup, waitForPort } from './process.js';

const here = path.dirname(new URL(import.meta.url).pathname);

export default {
  name: 'haproxy',
  describe: 'HAProxy, nbthread 1',
  check() {
    return findExecutable('haproxy') ? null : 'haproxy not installed: run scripts/install-peers.sh';
  },
  version() {
    try {
      return execFileSync(findExecutable('haproxy'), ['-v'], { encoding: 'utf8' }).split('\n')[0].trim();
    } catch {
      return null;
    }
  },
  async start({ dir, port, echoPort, nofile }) {
    const conf = renderTemplate(fs.readFileSync(path.join(here, 'haproxy.cfg.template'), 'utf8'), {
      PORT: port,
      ECHO_PORT: echoPort,
      // Two descriptors per proxied connection, plus listeners and logs.
      MAXCONN: Math.max(1000, Math.floor((nofile - 100) / 2)),
    });
    const file = path.join(dir, 'haproxy.cfg');
    fs.writeFileSync(file, conf);
    const logFile = path.join(dir, 'stderr.log');
    const child = spawnGroup(findExecutable('haproxy'), ['-db', '-f', file], { logFile });
    await waitForPort(port, { child, logFile });
    return { child, pid: child.pid, port };
  },
};
