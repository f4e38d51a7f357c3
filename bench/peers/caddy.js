// Caddy peer: GOMAXPROCS=1, admin endpoint and automatic HTTPS off, config
// rendered from Caddyfile.template. HOME and XDG dirs point into the run's temp
// dir so Caddy writes nothing outside it.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { findExecutable, renderTemplate, spawnGroup, waitForPort } from './process.js';

const here = path.dirname(new URL(import.meta.url).pathname);

export default {
  name: 'caddy',
  describe: 'Caddy, GOMAXPROCS=1',
  check() {
    return findExecutable('caddy') ? null : 'caddy not installed: run scripts/install-peers.sh';
  },
  version() {
    try {
      return 'caddy ' + execFileSync(findExecutable('caddy'), ['version'], { encoding: 'utf8' }).trim();
    } catch {
      return null;
    }
  },
  /** Runs the wss workload: `tls <cert> <key>` with TLS 1.3 only, certificates from the run. */
  tls: true,
  async start({ dir, port, echoPort, tls }) {
    const conf = renderTemplate(fs.readFileSync(path.join(here, 'Caddyfile.template'), 'utf8'), {
      PORT: port,
      ECHO_PORT: echoPort,
      TLS: tls ? `\ttls ${tls.certFile} ${tls.keyFile} {\n\t\tprotocols tls1.3\n\t}` : '',
    });
    const file = path.join(dir, 'Caddyfile');
    fs.writeFileSync(file, conf);
    const logFile = path.join(dir, 'stderr.log');
    const child = spawnGroup(findExecutable('caddy'), ['run', '--config', file, '--adapter', 'caddyfile'], {
      logFile,
      cwd: dir,
      env: { GOMAXPROCS: '1', HOME: dir, XDG_DATA_HOME: dir, XDG_CONFIG_HOME: dir },
    });
    await waitForPort(port, { child, logFile });
    return { child, pid: child.pid, port };
  },
};
