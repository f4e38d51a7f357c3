/**
 * The door to the native engine (native/engine/): per proxy, one `Engine` on this
 * thread's libuv loop. After the handshake, a transparent session's two sockets are handed
 * over by descriptor (the engine duplicates them; Node's handles are then closed), and the
 * data phase runs natively: no message crosses into JavaScript. JavaScript gets one event
 * per session end and per sustained backpressure, batched per loop turn, and the counters
 * at scrape time.
 *
 * Used where it can hold a session: the addon loaded, on Linux. Envelope routes run in
 * messages mode: each whole data message comes to JavaScript in the engine's batch (one
 * call per loop turn) and goes back through send(). `SLUICE_ENGINE=typescript` keeps every
 * session on the TypeScript engine.
 */
import type net from 'node:net';
import nodeTls from 'node:tls';
import { nativeAddon } from '../codec/native.js';
import { NATIVE_SLOTS } from '../metrics/counters.js';

/**
 * A session ended (type 1), sustained backpressure began (type 2) or cleared (type 7,
 * messages mode only); and of the handshakes
 * the engine runs when it accepts: a request head (3), a failed dial (4), a session opened
 * (5, the client got its 101), a client gone during its handshake (6).
 */
export interface EngineEvent {
  type: 1 | 2 | 3 | 4 | 5 | 6 | 7;
  id: number;
  /** 3: the request line and header names and values (latin1, as sent), the client's address. */
  method?: string;
  target?: string;
  headers?: string[];
  remote?: string;
  /** 4: 1 unreachable, 2 bad handshake, 3 refused (status, statusText and body of the upstream's answer). */
  kind?: number;
  message?: string;
  status?: number;
  statusText?: string;
  body?: Buffer;
  /** 5: the subprotocol answered to the client. */
  protocol?: string;
  /** 5: the extensions agreed (the upstream's permessage-deflate answer), or ''. */
  extensions?: string;
  clientCode?: number;
  clientReason?: string;
  upstreamCode?: number;
  upstreamReason?: string;
  /** 0 none, 1 client, 2 upstream, 3 proxy. */
  closedFirst?: number;
  messagesIn?: number;
  messagesOut?: number;
  bytesIn?: number;
  bytesOut?: number;
  fill?: number;
  queuedMessages?: number;
  queuedBytes?: number;
}

interface AddonEngine {
  adopt(clientFd: number, upstreamFd: number, clientHead: Uint8Array, upstreamHead: Uint8Array, params: Float64Array): number;
  shutdown(id: number, code: number, reason: string, upstreamCode?: number, upstreamReason?: string, byClient?: boolean): boolean;
  fail(id: number, client: boolean, code: number, reason: string, partnerCode: number, partnerReason: string): boolean;
  send(id: number, toClient: boolean, opcode: number, data: Uint8Array): boolean;
  destroy(id: number): boolean;
  flow(id: number): number[] | null;
  close(): void;
  sync(): void;
  listen(fd: number, headTimeoutMs: number, maxHeadBytes: number, maxFields: number, certPem?: string, keyPem?: string, ciphers?: string,
    ticketKeys?: Uint8Array): void;
  stopListening(): void;
  refuse(id: number, answer: Uint8Array): boolean;
  release(id: number): [number, Buffer] | null;
  dial(id: number, ip: string, port: number, request: Uint8Array, offered: string, fallbackProtocol: string, params: Float64Array,
    tls: number, servername: string, verify: boolean, deflate: boolean): boolean;
  tlsClient(caPem: string, verify: boolean, ciphers?: string): number;
  abortDial(id: number): boolean;
  readonly sessions: number;
}
type AddonEngineClass = new (
  onEvents: (events: EngineEvent[]) => void, counters: Float64Array, onMessages?: MessagesCallback,
) => AddonEngine;

/**
 * Messages mode: the whole data messages of one loop turn, in one call. `desc` holds 5
 * numbers per message: engine session id, 1 from the client (0 from the upstream), opcode
 * (1 text, 2 binary), offset and length in `bytes`. Sends made during the call are written
 * when it returns, one write per side.
 */
export type MessagesCallback = (bytes: Buffer, desc: Float64Array) => void;

const EngineClass = (nativeAddon?.Engine as AddonEngineClass | undefined) ?? null;

/** Why the native engine is not used, or '' when it is. */
export const nativeEngineUnavailable: string = process.env.SLUICE_ENGINE === 'typescript'
  ? 'SLUICE_ENGINE=typescript'
  : process.platform !== 'linux'
    ? `the native engine runs on Linux (epoll); this is ${process.platform}`
    : EngineClass === null
      ? (nativeAddon === null ? 'the native addon is not loaded' : 'the addon has no Engine (built from an older native/?)')
      : '';

/** Per-session settings, in the order of native/engine/engine.h `Params`. */
export interface EngineParams {
  maxFrameBytes: number;
  maxFragments: number;
  highWaterMark: number;
  /** 0 pause, 1 close, 2 drop. */
  policy: number;
  channelBytes: number;
  channelCapacity: number;
  pingMs: number;
  timeoutMs: number;
  messagesPerSecond: number;
  bytesPerSecond: number;
  /** 0: the credentials do not expire. */
  expiresInMs: number;
  /** 0 transparent; 1 messages: each data message goes to JavaScript (MessagesCallback). */
  mode?: 0 | 1;
  /** Envelope routes (messages mode): 1 v1, 2 v2; a close to the client is preceded by the envelope's own. */
  envelope?: 0 | 1 | 2;
}

/** The descriptor of a plain TCP socket, or -1 (TLS, closed, or no descriptor on this platform). */
export function socketFd(socket: net.Socket | import('node:stream').Duplex): number {
  const handle = (socket as unknown as { _handle?: { fd?: number } | null })._handle;
  if (!handle || typeof handle.fd !== 'number' || handle.fd < 0) return -1;
  if ((socket as { encrypted?: boolean }).encrypted) return -1;
  return handle.fd;
}

/**
 * Stop Node reading `socket` and take what it already read but nobody consumed (a paused
 * socket may hold a few chunks), so that no byte is lost when the descriptor changes hands.
 */
export function stopAndDrain(socket: net.Socket): Buffer[] {
  const handle = (socket as unknown as { _handle?: { readStop?: () => number } | null })._handle;
  handle?.readStop?.();
  const chunks: Buffer[] = [];
  for (let c = socket.read() as Buffer | null; c !== null; c = socket.read() as Buffer | null) chunks.push(c);
  return chunks;
}

export class NativeEngine {
  /** The engine's counters (slots of engine.h), filled by `sync()`. */
  readonly counters = new Float64Array(NATIVE_SLOTS);
  private readonly engine: AddonEngine;
  private readonly params = new Float64Array(13);

  constructor(onEvents: (events: EngineEvent[]) => void, onMessages?: MessagesCallback) {
    if (EngineClass === null) throw new Error(`native engine unavailable: ${nativeEngineUnavailable}`);
    this.engine = new EngineClass(onEvents, this.counters, onMessages);
  }

  /**
   * Hands both sockets to the engine. `clientHead`/`upstreamHead`: bytes that came with
   * the two handshakes. Node's sockets are closed here (the engine holds duplicates).
   * Returns the engine's session id.
   */
  adopt(client: net.Socket, clientHead: Buffer, upstream: net.Socket, upstreamHead: Buffer, p: EngineParams): number {
    const cfd = socketFd(client);
    const ufd = socketFd(upstream);
    if (cfd < 0 || ufd < 0) throw new Error('adopt: a socket without a descriptor');
    const extra = stopAndDrain(client);
    const upstreamExtra = stopAndDrain(upstream);
    const head = extra.length > 0 ? Buffer.concat([clientHead, ...extra]) : clientHead;
    const uhead = upstreamExtra.length > 0 ? Buffer.concat([upstreamHead, ...upstreamExtra]) : upstreamHead;
    this.fillParams(p);
    try {
      return this.engine.adopt(cfd, ufd, head, uhead, this.params);
    } finally {
      // The engine holds its own descriptors (or refused them): Node's handles go (no
      // shutdown, just close).
      client.destroy();
      upstream.destroy();
    }
  }

  /**
   * The engine accepts on `fd` (it owns the descriptor from now on) and reads request
   * heads itself: each becomes a type 3 event, answered with refuse(), release() or dial().
   * With `tls` (PEM texts), connections are TLS, terminated in the engine; a released one
   * reaches Node as one end of a socket pair carrying its plaintext.
   */
  listen(
    fd: number, headTimeoutMs: number, maxHeadBytes: number, maxFields: number,
    tls?: { cert: string; key: string; ticketKeys?: Uint8Array },
  ): void {
    // Node's TLS 1.2 cipher list (tls.DEFAULT_CIPHERS, which --tls-cipher-list sets); the
    // session ticket keys the shards share (80 bytes), or OpenSSL's own.
    if (tls) this.engine.listen(fd, headTimeoutMs, maxHeadBytes, maxFields, tls.cert, tls.key, nodeTls.DEFAULT_CIPHERS, tls.ticketKeys);
    else this.engine.listen(fd, headTimeoutMs, maxHeadBytes, maxFields);
  }

  /**
   * A client context for wss:// dials: trusted roots (PEM) and whether the upstream's
   * certificate and name must verify. Returns its id for dial().
   */
  tlsClient(caPem: string, verify: boolean): number {
    return this.engine.tlsClient(caPem, verify, nodeTls.DEFAULT_CIPHERS);
  }

  stopListening(): void {
    this.engine.stopListening();
  }

  /** The client gets `answer` (an HTTP response), then its connection ends. */
  refuse(id: number, answer: string | Uint8Array): boolean {
    return this.engine.refuse(id, typeof answer === 'string' ? Buffer.from(answer, 'latin1') : answer);
  }

  /** The connection, for Node's HTTP server: its descriptor and the bytes read so far. */
  release(id: number): [number, Buffer] | null {
    return this.engine.release(id);
  }

  /**
   * Dial `ip`:`port` and send `request` (our upgrade request without Sec-WebSocket-Key and
   * the final CRLF). Ends in a type 5 event (the session runs) or a type 4 (failed).
   */
  dial(
    id: number, ip: string, port: number, request: string, offered: string, fallbackProtocol: string, p: EngineParams,
    tls: { context: number; servername: string; verify: boolean } | undefined, deflate: boolean,
  ): boolean {
    this.fillParams(p);
    return this.engine.dial(id, ip, port, Buffer.from(request, 'latin1'), offered, fallbackProtocol, this.params,
      tls?.context ?? -1, tls?.servername ?? '', tls?.verify ?? true, deflate);
  }

  abortDial(id: number): boolean {
    return this.engine.abortDial(id);
  }

  private fillParams(p: EngineParams): void {
    const v = this.params;
    v[0] = p.maxFrameBytes;
    v[1] = p.maxFragments;
    v[2] = p.highWaterMark;
    v[3] = p.policy;
    v[4] = p.channelBytes;
    v[5] = p.channelCapacity;
    v[6] = p.pingMs;
    v[7] = p.timeoutMs;
    v[8] = p.messagesPerSecond;
    v[9] = p.bytesPerSecond;
    v[10] = p.expiresInMs;
    v[11] = p.mode ?? 0;
    v[12] = p.envelope ?? 0;
  }

  /** Close frames to both: the client gets `code`, the upstream 1001 (or `upstream`), both `reason`. */
  shutdown(id: number, code: number, reason: string, upstream?: { code: number; reason: string; byClient: boolean }): void {
    if (upstream === undefined) this.engine.shutdown(id, code, reason);
    else this.engine.shutdown(id, code, reason, upstream.code, upstream.reason, upstream.byClient);
  }

  /** Messages mode: that side broke a rule JavaScript checks; it gets `code`, its partner `partnerCode`. */
  fail(id: number, client: boolean, code: number, reason: string, partnerCode: number, partnerReason: string): void {
    this.engine.fail(id, client, code, reason, partnerCode, partnerReason);
  }

  /** Messages mode: one message (opcode 1 text, 2 binary) to a side; false when it cannot take it. */
  send(id: number, toClient: boolean, opcode: number, data: Uint8Array): boolean {
    return this.engine.send(id, toClient, opcode, data);
  }

  destroy(id: number): void {
    this.engine.destroy(id);
  }

  flow(id: number): number[] | null {
    return this.engine.flow(id);
  }

  /** Copy the counters out of the engine (at scrape time). */
  sync(): Float64Array {
    this.engine.sync();
    return this.counters;
  }

  get sessions(): number {
    return this.engine.sessions;
  }

  /** Cut what is left and free the engine (after a drain). */
  close(): void {
    this.engine.close();
  }
}
