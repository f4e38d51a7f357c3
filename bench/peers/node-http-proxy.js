// node-http-proxy peer (package `http-proxy`, ws: true).
//
// Run directly, this file is the proxy:  node bench/peers/node-http-proxy.js <port> <target port>
// Imported, it is the peer's start/stop descriptor for bench/run.js.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { spawnGroup, waitForPort } from './process.js';

const self = fileURLToPath(import.meta.url);
const require = createRequire(import.meta.url);

function serve(port, targetPort) {
  const httpProxy = require('http-proxy');
  const proxy = httpProxy.createProxyServer({ target: `http://127.0.0.1:${targetPort}`, ws: true, xfwd: false });
  // A client or backend that goes away mid-stream is normal under churn: drop the
  // socket instead of crashing (http-proxy throws on an unhandled 'error').
  proxy.on('error', (_err, _req, resOrSocket) => {
    if (resOrSocket && typeof resOrSocket.destroy === 'function') resOrSocket.destroy();
  });
  const server = http.createServer((req, res) => proxy.web(req, res));
  server.on('upgrade', (req, socket, head) => proxy.ws(req, socket, head));
  server.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));
  const stop = () => process.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (process.argv[1] && path.resolve(process.argv[1]) === self) {
  serve(Number(process.argv[2]), Number(process.argv[3]));
}

export default {
  name: 'node-http-proxy',
  describe: 'node-http-proxy (http-proxy, ws: true)',
  check() {
    try {
      require.resolve('http-proxy');
      return null;
    } catch {
      return 'package http-proxy not installed: run npm install';
    }
  },
  version() {
    try {
      const pkg = require.resolve('http-proxy/package.json');
      return 'http-proxy ' + JSON.parse(fs.readFileSync(pkg, 'utf8')).version;
    } catch {
      return null;
    }
  },
  async start({ dir, port, echoPort }) {
    const logFile = path.join(dir, 'stderr.log');
    const child = spawnGroup(process.execPath, [self, String(port), String(echoPort)], { logFile });
    await waitForPort(port, { child, logFile });
    return { child, pid: child.pid, port };
  },
};
