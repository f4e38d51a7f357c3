/**
 * The client side of a handshake, whoever holds its connection: Node's HTTP server (a
 * socket: TLS listeners, the TypeScript engine) or the native engine, which accepted the
 * connection and read the request head itself (src/engine/native.ts). The proxy decides
 * the same way for both; only answering, noticing a client that leaves, and starting the
 * session differ.
 */
import type net from 'node:net';
import type { NativeEngine, EngineEvent } from '../engine/index.js';

export interface HandshakeClient {
  readonly remoteAddress: string;
  /** Node's socket, or null when the native engine holds the connection. */
  readonly socket: net.Socket | null;
  /** Answer with an HTTP response (head and body) and end the connection. */
  answer(response: string | Buffer): void;
  /** `fn` runs once if the client goes away before its session starts. */
  onGone(fn: () => void): void;
  offGone(): void;
  /** Cut the connection (the proxy is closing). */
  destroy(): void;
}

/**
 * Connections the engine handed to Node from a TLS listener are socket pairs (the engine
 * keeps the TLS): their peer address is the client's, set here when they are handed over.
 */
const peerAddresses = new WeakMap<net.Socket, string>();

export function setPeerAddress(socket: net.Socket, address: string): void {
  peerAddresses.set(socket, address);
}

/** The client's address of a socket Node's server got (directly, or from the engine). */
export function peerAddress(socket: net.Socket): string {
  return peerAddresses.get(socket) ?? socket.remoteAddress ?? '';
}

export class SocketClient implements HandshakeClient {
  readonly socket: net.Socket;
  private gone: (() => void) | null = null;

  constructor(socket: net.Socket) {
    this.socket = socket;
    // Nothing is read until a session owns the socket (or it is refused).
    socket.pause();
    socket.on('error', () => {});
  }

  get remoteAddress(): string {
    return peerAddress(this.socket);
  }

  answer(response: string | Buffer): void {
    this.socket.end(response);
    this.socket.destroySoon();
  }

  onGone(fn: () => void): void {
    // A client that ends its side before its 101 can never send a frame: gone too (Node's
    // server keeps half-open sockets, and 'close' would wait for the session to end).
    let once = false;
    this.gone = () => {
      if (once) return;
      once = true;
      fn();
    };
    this.socket.once('close', this.gone);
    this.socket.once('end', this.gone);
  }

  offGone(): void {
    if (this.gone !== null) {
      this.socket.off('close', this.gone);
      this.socket.off('end', this.gone);
    }
    this.gone = null;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** How a dial through the engine ended: the session runs (with this subprotocol), or not. */
export type DialOutcome = { ok: true; protocol: string; extensions: string } | { ok: false; event: EngineEvent | null };

export class EngineClient implements HandshakeClient {
  readonly socket = null;
  readonly id: number;
  readonly remoteAddress: string;
  private readonly engine: NativeEngine;
  private gone: (() => void) | null = null;
  /** The dial in progress: settled by the engine's type 4/5 events, or by a client gone. */
  private waiting: ((o: DialOutcome) => void) | null = null;
  private readonly forget: (id: number) => void;
  ended = false;

  /** `forget` runs once when the handshake is over (however it ended). */
  constructor(engine: NativeEngine, id: number, remoteAddress: string, forget: (id: number) => void) {
    this.engine = engine;
    this.id = id;
    this.remoteAddress = remoteAddress;
    this.forget = forget;
  }

  answer(response: string | Buffer): void {
    if (this.ended) return;
    this.end();
    this.engine.refuse(this.id, response);
    // A dial in progress is dropped with the answer: whoever waits for it hears so.
    const w = this.waiting;
    this.waiting = null;
    w?.({ ok: false, event: null });
  }

  private end(): void {
    this.ended = true;
    this.forget(this.id);
  }

  onGone(fn: () => void): void {
    this.gone = fn;
  }

  offGone(): void {
    this.gone = null;
  }

  destroy(): void {
    this.answer('');
  }

  /** Resolves when the engine says how the dial it was given ended. */
  outcome(): Promise<DialOutcome> {
    return new Promise((resolve) => {
      this.waiting = resolve;
    });
  }

  /** The engine's events for this handshake (types 4, 5, 6). */
  settle(e: EngineEvent): void {
    const w = this.waiting;
    this.waiting = null;
    if (e.type === 5) {
      this.end();
      w?.({ ok: true, protocol: e.protocol ?? '', extensions: e.extensions ?? '' });
    } else if (e.type === 4) {
      w?.({ ok: false, event: e });
    } else if (e.type === 6) {
      this.end();
      w?.({ ok: false, event: null });
      const fn = this.gone;
      this.gone = null;
      fn?.();
    }
  }

  /** Give up the dial in progress (the upstream is too slow): the engine drops that socket. */
  abandonDial(): void {
    const w = this.waiting;
    this.waiting = null;
    this.engine.abortDial(this.id);
    w?.({ ok: false, event: null });
  }
}
