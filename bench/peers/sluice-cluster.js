// Cluster peers (issue #15): sluice with `cluster` on (and its Redis), and sessions through
// a tunnel agent on the same instance or relayed from another instance. One launcher
// process (cluster-launch.mjs) starts them all as its children, so the CPU the harness
// reads from the peer's process tree is all of theirs (Redis and the agent included).
import fs from 'node:fs';
import path from 'node:path';
import { findExecutable, spawnGroup, waitForPort } from './process.js';

const here = path.dirname(new URL(import.meta.url).pathname);
const root = path.resolve(here, '..', '..');
const cli = path.join(root, 'dist', 'cli.js');

export function clusterPeer({ name, describe, mode, optional = true }) {
  return {
    name,
    describe,
    optional,
    loadgenArgs: [],
    tls: false,
    check() {
      if (!fs.existsSync(cli)) return 'dist/cli.js not built: run npm run build';
      if (mode !== 'agent' && findExecutable('redis-server') === null) return 'redis-server not installed (apt-get install redis-server)';
      return null;
    },
    version() {
      try {
        return 'sluice ' + JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version;
      } catch {
        return null;
      }
    },
    async start({ dir, port, echoPort, nofile }) {
      const logFile = path.join(dir, 'stderr.log');
      const maxconn = Math.max(1000, Math.floor((nofile - 100) / 3));
      const child = spawnGroup(process.execPath, [path.join(here, 'cluster-launch.mjs'), mode, dir, String(port), String(echoPort), String(maxconn)],
        { logFile, cwd: root });
      const readyFile = path.join(dir, 'ready');
      for (let i = 0; !fs.existsSync(readyFile); i++) {
        if (child.exitCode !== null || i > 600) throw new Error(`${name} did not start: ${fs.readFileSync(logFile, 'utf8').slice(-600)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      await waitForPort(port, { child, logFile, timeoutMs: 15000 });
      return { child, pid: child.pid, port };
    },
  };
}
