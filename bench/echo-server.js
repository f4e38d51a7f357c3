// The benchmark's backend: a uWS echo server in its own process.
//
//   node bench/echo-server.js <port>      (0 picks a free port)
//
// Echoes every message with its type (text stays text, binary stays binary) and
// picks the first subprotocol a client offers, so handshake headers can be tested
// end to end. Prints `listening <port>` once it accepts connections.
//
// The native uWS binary is loaded directly: the package's main module silently
// falls back to a slow JavaScript implementation, which would make the backend,
// not the proxy, the bottleneck.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const binary =
  '@trufflesuite/uws-js-unofficial/binaries/uws_' +
  process.platform + '_' + process.arch + '_' + process.versions.modules + '.node';
let uws;
try {
  uws = require(binary);
} catch (err) {
  console.error(`echo-server: cannot load the native uWS binary ${binary}: ${err.message}`);
  process.exit(1);
}

const port = Number(process.argv[2] ?? 0);
const host = process.argv[3] ?? '127.0.0.1';

const app = uws.App().ws('/*', {
  compression: uws.DISABLED,
  // 16 MiB: far above the largest benchmark message (64 KiB) so uWS never drops one.
  maxPayloadLength: 16 * 1024 * 1024,
  // Closed-loop clients bound what is in flight, so buffering is bounded by the client.
  maxBackpressure: 64 * 1024 * 1024,
  // 0 disables uWS's idle timeout: the idle-connection workload holds connections open.
  idleTimeout: 0,
  sendPingsAutomatically: false,
  upgrade: (res, req, context) => {
    const offered = req.getHeader('sec-websocket-protocol');
    const protocol = offered ? offered.split(',')[0].trim() : '';
    res.upgrade(
      {},
      req.getHeader('sec-websocket-key'),
      protocol,
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  message: (ws, message, isBinary) => {
    ws.send(message, isBinary);
  },
});

app.listen(host, port, (listenSocket) => {
  if (!listenSocket) {
    console.error(`echo-server: cannot listen on ${host}:${port}`);
    process.exit(1);
  }
  console.log(`listening ${uws.us_socket_local_port(listenSocket)}`);
});

const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
