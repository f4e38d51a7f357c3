/**
 * The built-in echo upstream (`builtin:echo`): what the default config routes `/echo`
 * to, so that `npm start` shows a working proxy on a fresh machine with no backend.
 * A uWS app on an ephemeral loopback port that echoes every message with its type.
 */
import { loadUws } from '../uws.js';

export interface EchoServer {
  port: number;
  close(): void;
}

export function startEchoServer(maxPayloadLength: number): Promise<EchoServer> {
  const { uws } = loadUws();
  const open = new Set<import('../uws.js').UWS.WebSocket<unknown>>();
  return new Promise((resolve, reject) => {
    const app = uws.App().ws('/*', {
      maxPayloadLength,
      maxBackpressure: maxPayloadLength * 2,
      idleTimeout: 0,
      open: (ws) => {
        open.add(ws);
      },
      message: (ws, message, isBinary) => {
        ws.send(message, isBinary);
      },
      close: (ws) => {
        open.delete(ws);
      },
    });
    app.listen('127.0.0.1', 0, (listenSocket) => {
      if (!listenSocket) {
        reject(new Error('built-in echo server could not listen on 127.0.0.1'));
        return;
      }
      resolve({
        port: uws.us_socket_local_port(listenSocket),
        close() {
          uws.us_listen_socket_close(listenSocket);
          for (const ws of open) ws.close();
          open.clear();
        },
      });
    });
  });
}
