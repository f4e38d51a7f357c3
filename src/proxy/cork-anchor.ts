/**
 * A WebSocket that the proxy holds open to itself, so that an asynchronous upgrade can
 * run inside *another* socket's cork.
 *
 * Why. sluice upgrades a client after it has dialled the upstream, so outside uWS's
 * request handler. uWS.js asks for such writes to be corked, and `res.cork()` is where
 * uWS 20.30 goes wrong: after the handler, `HttpResponse::cork()` takes the socket that
 * the upgrade reallocated in place for the HTTP response it was, and closes it when
 * stale bytes where the response's state used to be look like "Connection: close"
 * (uWebSockets commit e3930e2, July 2026, fixes it; no registry build of uWS.js has it).
 * The client sees its connection end right after the 101, with no close frame. Measured
 * with `npm run bench -- --quick --peers nginx,sluice,sluice-ts --workloads
 * echo-64B,echo-4KiB`: with `res.cork()`, 3 of 10 runs had a round where the first
 * connection was closed after the upgrade with 0 messages sent; upgrading uncorked, 0 of
 * 12 runs (but uWS.js then prints a warning per upgrade).
 *
 * How. While another socket of the same loop is corked, `res.cork()` cannot cork the
 * response, so it just calls its callback, and its faulty epilogue never runs; and uWS.js
 * counts any cork callback as corked, so it prints no warning. The anchor is that other
 * socket: a server-side WebSocket on a private app (127.0.0.1, an ephemeral port, a
 * random path) whose client end is a socket of this thread that never sends. One per
 * proxy (per shard). When it cannot be had, upgrades fall back to `res.cork()`.
 */
import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import type { Logger } from 'pino';
import type { UWS } from '../uws.js';
import { dial } from './handshake.js';

export class CorkAnchor {
  private ws: UWS.WebSocket<unknown> | null = null;
  /** Callbacks run inside the anchor's cork (upgrades), for tests and diagnostics. */
  runs = 0;
  private client: net.Socket | null = null;
  private closed = false;

  private constructor(
    private readonly uws: typeof UWS,
    private readonly app: UWS.TemplatedApp,
    private readonly listenSocket: UWS.us_listen_socket,
  ) {}

  /** Opens the anchor; null (and a warning) when it cannot be opened. */
  static async start(uws: typeof UWS, logger: Logger): Promise<CorkAnchor | null> {
    const path = `/${randomBytes(16).toString('hex')}`;
    let anchor: CorkAnchor | null = null;
    const app = uws.App();
    app.ws(path, {
      maxPayloadLength: 16,
      idleTimeout: 0,
      sendPingsAutomatically: false,
      open: (ws) => {
        if (anchor !== null && !anchor.closed) anchor.ws = ws;
        else ws.close();
      },
      close: (ws) => {
        if (anchor === null || anchor.ws !== ws) return;
        anchor.ws = null;
        if (!anchor.closed) logger.warn({ event: 'cork_anchor_lost' }, 'the cork anchor closed: upgrades fall back to res.cork()');
      },
    });
    app.any('/*', (res) => {
      res.close();
    });
    const listenSocket = await new Promise<UWS.us_listen_socket | false>((resolve) => app.listen('127.0.0.1', 0, resolve));
    if (!listenSocket) {
      (app as unknown as { close?: () => void }).close?.();
      logger.warn({ event: 'cork_anchor_unavailable', reason: 'cannot listen on 127.0.0.1' }, 'upgrades fall back to res.cork()');
      return null;
    }
    anchor = new CorkAnchor(uws, app, listenSocket);
    const port = uws.us_socket_local_port(listenSocket);
    try {
      const dialed = await dial({ url: new URL(`ws://127.0.0.1:${port}${path}`), target: path, headers: [], protocols: [], timeoutMs: 5000 });
      dialed.setDataHandler(() => {}); // the anchor's server end never sends
      const client = dialed.socket;
      client.on('close', () => {
        if (anchor !== null && anchor.client === client) anchor.client = null;
      });
      client.on('error', () => {});
      client.unref();
      client.resume(); // to see the end of the connection, should it come
      anchor.client = client;
    } catch (err) {
      anchor.close();
      logger.warn({ event: 'cork_anchor_unavailable', reason: (err as Error).message }, 'upgrades fall back to res.cork()');
      return null;
    }
    if (anchor.ws === null) {
      anchor.close();
      logger.warn({ event: 'cork_anchor_unavailable', reason: 'no upgrade seen' }, 'upgrades fall back to res.cork()');
      return null;
    }
    return anchor;
  }

  /** True while the anchor's WebSocket is open. */
  get ready(): boolean {
    return this.ws !== null;
  }

  /** Runs `fn` inside the anchor's cork; false (fn not run) when the anchor is gone. */
  run(fn: () => void): boolean {
    const ws = this.ws;
    if (ws === null) return false;
    this.runs++;
    ws.cork(fn);
    return true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.client?.destroy();
    this.client = null;
    const ws = this.ws;
    this.ws = null;
    ws?.close();
    this.uws.us_listen_socket_close(this.listenSocket);
    (this.app as unknown as { close?: () => void }).close?.();
  }
}
