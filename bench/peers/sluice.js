// sluice peer: `node dist/cli.js --config <yaml>` with a config rendered from
// sluice.yaml.template. Variants (pure-TypeScript codec, shards, envelope route)
// are the same module started with other `env` / template values; see index.js.
import fs from 'node:fs';
import path from 'node:path';
import { freePort, renderTemplate, spawnGroup, waitForPort } from './process.js';

const here = path.dirname(new URL(import.meta.url).pathname);
const root = path.resolve(here, '..', '..');
const cli = path.join(root, 'dist', 'cli.js');

/**
 * A sluice peer; `env` is added to its environment (e.g. SLUICE_NO_NATIVE=1). `admin`:
 * the template has {{ADMIN_PORT}}; `attach({ child, adminPort })`, when given, runs once
 * it listens (outside its process tree, so not in its CPU: a dashboard reader).
 */
export function sluicePeer({ name, describe, env = {}, template = 'sluice.yaml.template', loadgenArgs = [], optional = false, tls = false, admin = false, attach = null }) {
  return {
    name,
    describe,
    /** Not in the default set (run it with --peers). */
    optional,
    /** Extra load generator flags for this peer (the envelope routes speak v1/v2). */
    loadgenArgs,
    /** Runs the wss workload: `listen.tls` (the template must have {{LISTEN_TLS}}). */
    tls,
    check() {
      return fs.existsSync(cli) ? null : 'dist/cli.js not built: run npm run build';
    },
    version() {
      try {
        return 'sluice ' + JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version;
      } catch {
        return null;
      }
    },
    async start({ dir, port, echoPort, nofile, tls: files }) {
      const adminPort = admin ? await freePort() : 0;
      const conf = renderTemplate(fs.readFileSync(path.join(here, template), 'utf8'), {
        ...(admin ? { ADMIN_PORT: adminPort } : {}),
        PORT: port,
        ECHO_PORT: echoPort,
        MAXCONN: Math.max(1000, Math.floor((nofile - 100) / 2)),
        LISTEN_TLS: files ? `, tls: { certFile: ${JSON.stringify(files.certFile)}, keyFile: ${JSON.stringify(files.keyFile)} }` : '',
      });
      const file = path.join(dir, 'sluice.yaml');
      fs.writeFileSync(file, conf);
      const logFile = path.join(dir, 'stderr.log');
      const child = spawnGroup(process.execPath, [cli, '--config', file], { logFile, cwd: root, env });
      await waitForPort(port, { child, logFile, timeoutMs: 15000 });
      if (admin) await waitForPort(adminPort, { child, logFile, timeoutMs: 15000 });
      if (attach) await attach({ child, adminPort });
      return { child, pid: child.pid, port };
    },
  };
}
