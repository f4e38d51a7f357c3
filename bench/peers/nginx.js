// nginx peer: one worker, master process on (so CPU and memory are summed over
// master + worker), config rendered from nginx.conf.template.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { findExecutable, renderTemplate, spawnGroup, waitForPort } from './process.js';

const here = path.dirname(new URL(import.meta.url).pathname);

/**
 * The server block's TLS settings for the wss workload: the run's certificate, TLS 1.3
 * only (as the other peers), no session cache or tickets (the load generator never
 * resumes), nginx's default ciphers.
 */
function tlsLines({ certFile, keyFile }) {
  return [
    `        ssl_certificate ${certFile};`,
    `        ssl_certificate_key ${keyFile};`,
    '        ssl_protocols TLSv1.3;',
    '        ssl_session_tickets off;',
  ].join('\n');
}

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
  /** Runs the wss workload: `listen ... ssl`, TLS 1.3 (see tlsLines). */
  tls: true,
  async start({ dir, port, echoPort, nofile, tls }) {
    const conf = renderTemplate(fs.readFileSync(path.join(here, 'nginx.conf.template'), 'utf8'), {
      DIR: dir,
      PORT: port,
      ECHO_PORT: echoPort,
      NOFILE: nofile,
      // Above the descriptor limit on purpose: nginx starts reclaiming connections
      // once fewer than 1/16 of worker_connections are free, which would refuse
      // proxied connections well before the descriptors run out.
      WORKER_CONNECTIONS: Math.max(1024, Math.ceil(nofile * 1.1)),
      LISTEN_SSL: tls ? ' ssl' : '',
      TLS: tls ? tlsLines(tls) : '',
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
