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
  /** Runs the wss workload: `bind ... ssl crt <key+cert pem> ssl-min-ver TLSv1.3`. */
  tls: true,
  async start({ dir, port, echoPort, nofile, tls }) {
    const conf = renderTemplate(fs.readFileSync(path.join(here, 'haproxy.cfg.template'), 'utf8'), {
      PORT: port,
      ECHO_PORT: echoPort,
      // Two descriptors per proxied connection, plus listeners and logs.
      MAXCONN: Math.max(1000, Math.floor((nofile - 100) / 2)),
      // TLS terminated on the frontend (the backend stays plain); no tickets, as nginx.
      BIND_TLS: tls ? ` ssl crt ${tls.pemFile} ssl-min-ver TLSv1.3 no-tls-tickets` : '',
    });
    const file = path.join(dir, 'haproxy.cfg');
    fs.writeFileSync(file, conf);
    const logFile = path.join(dir, 'stderr.log');
    const child = spawnGroup(findExecutable('haproxy'), ['-db', '-f', file], { logFile });
    await waitForPort(port, { child, logFile });
    return { child, pid: child.pid, port };
  },
};
