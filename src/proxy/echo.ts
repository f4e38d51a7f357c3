/**
 * The built-in echo upstream (`builtin:echo`): what the default config routes `/echo`
 * to, so that `npm start` shows a working proxy on a fresh machine with no backend.
 * A `ws` server on an ephemeral loopback port that echoes every message with its type.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { RawData, WebSocket } from 'ws';

export interface EchoServer {
  port: number;
  close(): void;
}

export async function startEchoServer(maxPayload: number): Promise<EchoServer> {
  // Loaded only when a route uses it.
  const { WebSocketServer } = await import('ws');
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload, perMessageDeflate: false });
  const open = new Set<WebSocket>();
  server.on('connection', (ws) => {
    open.add(ws);
    ws.on('error', () => {});
    ws.on('close', () => open.delete(ws));
    ws.on('message', (data: RawData, isBinary: boolean) => ws.send(data as Buffer, { binary: isBinary }));
  });
  try {
    await Promise.race([once(server, 'listening'), once(server, 'error').then(([err]) => { throw err; })]);
  } catch (err) {
    throw new Error(`built-in echo server could not listen on 127.0.0.1: ${(err as Error).message}`);
  }
  return {
    port: (server.address() as AddressInfo).port,
    close() {
      for (const ws of open) ws.terminate();
      open.clear();
      server.close();
    },
  };
}
