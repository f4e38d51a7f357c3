/**
 * The tunnel link on the native data plane (native/tunnel/mux.h): the WebSocket framing,
 * the yamux session and, for streams joined to a TCP socket, the bytes both ways all run
 * in the addon, on this thread's loop. JavaScript keeps the control: the hello, opening
 * and answering streams, UDP, routes through agents, heartbeats. Its twin is
 * linkOverWebSocket (link.ts) over yamux.ts, used without the addon and for wss://.
 */
import type net from 'node:net';
import { Duplex } from 'node:stream';
import { nativeAddon } from '../codec/native.js';
import { socketFd, stopAndDrain } from '../engine/native.js';
import type { Link, LinkOptions, TunnelSession, TunnelStream } from './link.js';
import { DEFAULT_MAX_STREAMS } from './yamux.js';

interface MuxEvent {
  type: number;
  stream: number;
  text?: string;
  data?: Buffer;
  code?: number;
  reason?: string;
  error?: string;
  bytesIn?: number;
  bytesOut?: number;
}

interface AddonMux {
  start(fd: number, head: Uint8Array, greeting: Uint8Array): void;
  open(line?: Uint8Array): number;
  deliver(id: number): void;
  dial(id: number, ip: string, port: number, timeoutMs: number, ok: Uint8Array): boolean;
  write(id: number, bytes: Uint8Array): boolean;
  end(id: number): void;
  reset(id: number): void;
  consume(id: number, n: number): void;
  bind(id: number, fd: number, head: Uint8Array, owned?: boolean): boolean;
  sendText(text: string): void;
  ping(): void;
  goAway(code: number): void;
  close(code: number, reason: string): void;
  terminate(): void;
  dispose(): void;
  stats(): Float64Array;
}
type AddonMuxClass = new (onEvents: (events: MuxEvent[]) => void, options: Record<string, number | boolean>) => AddonMux;

const MuxClass = (nativeAddon?.Mux as AddonMuxClass | undefined) ?? null;
const EMPTY = Buffer.alloc(0);

/** Why the native link is not used ('' when it is). */
export const nativeLinkUnavailable: string = process.env.SLUICE_TUNNEL === 'typescript'
  ? 'SLUICE_TUNNEL=typescript'
  : process.platform !== 'linux'
    ? `the native tunnel link runs on Linux; this is ${process.platform}`
    : MuxClass === null
      ? (nativeAddon === null ? 'the native addon is not loaded' : 'the addon has no Mux (built from an older native/?)')
      : '';

// Event types of mux.h.
const EV_TEXT = 1;
const EV_STREAM = 2;
const EV_DATA = 3;
const EV_FIN = 4;
const EV_RESET = 5;
const EV_DRAIN = 6;
const EV_CLOSED = 7;
const EV_BOUND_END = 8;
const EV_GO_AWAY = 9;
const EV_LINE = 10;
const EV_DIAL_FAILED = 11;

interface AddonAcceptor {
  close(): void;
}
type AddonAcceptorClass = new (fd: number, onConnections: (fds: number[]) => void) => AddonAcceptor;
const AcceptorClass = (nativeAddon?.Acceptor as AddonAcceptorClass | undefined) ?? null;
const closeFdNative = (nativeAddon?.closeFd as ((fd: number) => void) | undefined) ?? null;

/**
 * Accepts on a listening descriptor (owned from now on) in the addon: each connection is a
 * descriptor, with no Node socket made for it. null without the addon.
 */
export function nativeAcceptor(fd: number, onConnections: (fds: number[]) => void): AddonAcceptor | null {
  return AcceptorClass === null || MuxClass === null ? null : new AcceptorClass(fd, onConnections);
}

/** Close a descriptor an acceptor handed over. */
export function closeFd(fd: number): void {
  closeFdNative?.(fd);
}

/** A stream whose bytes pass through JavaScript (until it is joined to a socket). */
export class NativeStream extends Duplex implements TunnelStream {
  readonly id: number;
  readonly openedAt = performance.now();
  bytesIn = 0;
  bytesOut = 0;
  private readonly link: NativeLink;
  private delivered = 0;
  private reported = 0;
  private consumeQueued = false;
  private drainCallback: ((error?: Error | null) => void) | null = null;
  private finReceived = false;
  /** Joined to a socket: the addon carries it; this object is done. */
  handedOver = false;

  constructor(link: NativeLink, id: number) {
    super({ allowHalfOpen: true, readableHighWaterMark: 64 * 1024, writableHighWaterMark: 64 * 1024 });
    this.link = link;
    this.id = id;
  }

  /** @internal The peer's first line: read like any bytes (readLine takes it), then the rest. */
  onLine(line: string): void {
    const data = Buffer.from(`${line}\n`);
    this.delivered += data.length;
    this.reported += data.length; // the addon counted it as taken already
    this.bytesIn += data.length;
    if (!this.destroyed) this.push(data);
    this.link.mux.deliver(this.id);
  }

  /** @internal */
  onData(data: Buffer): void {
    this.delivered += data.length;
    this.bytesIn += data.length;
    if (!this.destroyed) this.push(data);
  }

  /** @internal */
  onFin(): void {
    this.finReceived = true;
    if (!this.destroyed) this.push(null);
  }

  /** @internal */
  onReset(error: Error): void {
    this.finReceived = true;
    this.handedOver = true; // nothing to tell the addon: the stream is gone there
    this.destroy(error);
  }

  /** @internal */
  onDrain(): void {
    const cb = this.drainCallback;
    this.drainCallback = null;
    cb?.();
  }

  override _read(): void {
    // Node calls _read before it takes the bytes being read out of its buffer: what the
    // reader took is counted once this read is over.
    if (this.consumeQueued) return;
    this.consumeQueued = true;
    process.nextTick(() => {
      this.consumeQueued = false;
      if (this.handedOver) return;
      const taken = this.delivered - this.readableLength - this.reported;
      if (taken > 0) {
        this.reported += taken;
        this.link.mux.consume(this.id, taken);
      }
    });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.bytesOut += chunk.length;
    if (this.link.mux.write(this.id, chunk)) callback();
    else this.drainCallback = callback;
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.link.mux.end(this.id);
    callback();
  }

  override _destroy(error: Error | null, callback: (error: Error | null) => void): void {
    // Closed here before both ways ended: the peer is told (a reset).
    if (!this.handedOver && !(this.finReceived && this.writableFinished)) this.link.mux.reset(this.id);
    this.link.forget(this);
    const cb = this.drainCallback;
    this.drainCallback = null;
    cb?.(error ?? new Error('stream destroyed'));
    callback(error);
  }

  /**
   * Join this stream and a TCP socket in the addon: from now on bytes go between them
   * there, both ways, and a half-close either way is passed on. `onEnd` runs once both
   * are done (or either failed). Returns a function that cuts both.
   */
  joinSocket(socket: net.Socket, onEnd: () => void): (() => void) | null {
    const fd = socketFd(socket);
    // Writes still queued in the duplex would be lost: those are piped (rare).
    if (fd < 0 || this.destroyed || this.link.closed || this.writableLength > 0 || this.writableEnded) return null;
    // What Node read from the socket goes first, then what the stream holds for it.
    for (const c of stopAndDrain(socket)) {
      this.bytesOut += c.length;
      this.link.mux.write(this.id, c);
    }
    const held: Buffer[] = [];
    for (let c = this.read() as Buffer | null; c !== null; c = this.read() as Buffer | null) held.push(c);
    const ok = this.link.bind(this, fd, held.length === 1 ? held[0] : Buffer.concat(held), onEnd);
    socket.destroy();
    this.handedOver = true;
    this.destroy();
    if (!ok) {
      onEnd();
      return () => {};
    }
    return cutter(this.link, this.id);
  }
}

/** Resets a bound stream (made here: the closure holds the link and the id, nothing else). */
function cutter(link: NativeLink, id: number): () => void {
  return () => link.mux.reset(id);
}

class NativeSession implements TunnelSession {
  constructor(private readonly link: NativeLink) {}
  get size(): number {
    return this.link.closed ? 0 : this.link.mux.stats()[0];
  }
  get isClosed(): boolean {
    return this.link.closed;
  }
  open(): TunnelStream {
    return this.link.openStream();
  }
  destroy(): void {
    this.link.terminate();
  }
}

/**
 * A stream the peer opened, once its first line came, for a caller that wants it handled
 * in the addon (NativeLinkOptions.onStreamLine): dial a service for it, take it as a
 * NativeStream, or refuse it.
 */
export interface NativeLinkOptions extends LinkOptions {
  wsClient: boolean;
  /** Without it, each stream the peer opens is a NativeStream given to onStream (its line first). */
  onStreamLine?(id: number, line: string): void;
}

export class NativeLink implements Link {
  readonly mux: AddonMux;
  readonly session: TunnelSession;
  readonly native = true;
  closed = false;
  private readonly options: NativeLinkOptions;
  private readonly streams = new Map<number, NativeStream>();
  /** Streams joined to a socket here (or being dialled): what runs when they end. */
  private readonly bound = new Map<number, () => void>();
  /** Streams we opened for a socket, waiting for the peer's answer line. */
  private readonly answers = new Map<number, (line: string | null) => void>();
  private readonly dialFailures = new Map<number, (why: string) => void>();
  private finalBytes: { in: number; out: number } | null = null;

  constructor(options: NativeLinkOptions) {
    if (MuxClass === null) throw new Error(`native tunnel link unavailable: ${nativeLinkUnavailable}`);
    this.options = options;
    this.session = new NativeSession(this);
    this.mux = new MuxClass((events) => this.onEvents(events), {
      yamuxClient: options.client, wsClient: options.wsClient, maxStreams: options.maxStreams ?? DEFAULT_MAX_STREAMS,
    });
  }

  get bytes(): { in: number; out: number } {
    if (this.finalBytes !== null) return this.finalBytes;
    const s = this.mux.stats();
    return { in: s[1], out: s[2] };
  }

  idleMs(): number {
    return this.closed ? Infinity : this.mux.stats()[4];
  }

  sendControl(text: string): void {
    if (!this.closed) this.mux.sendText(text);
  }

  ping(): void {
    if (!this.closed) this.mux.ping();
  }

  close(code: number, reason: string): void {
    if (this.closed) return;
    this.mux.close(code, reason);
    // A peer that does not answer the close frame is cut.
    setTimeout(() => this.terminate(), 2000).unref();
  }

  terminate(): void {
    if (!this.closed) this.mux.terminate();
  }

  /** @internal */
  openStream(): NativeStream {
    if (this.closed) throw new Error('the tunnel is closed');
    const id = this.mux.open();
    const s = new NativeStream(this, id);
    this.streams.set(id, s);
    return s;
  }

  /**
   * Open a stream for the connection `fd` (owned from now on): `line` goes first; the
   * peer's answer line goes to `onAnswer`, which returns whether to join the connection to
   * the stream (else both are closed). `onEnd` runs when a joined pair ends. Throws when no
   * stream can be opened (the descriptor is then the caller's).
   */
  openForSocket(fd: number, line: Buffer, onAnswer: (line: string | null) => boolean, onEnd: () => void): () => void {
    if (this.closed) throw new Error('the tunnel is closed');
    const id = this.mux.open(line);
    this.answers.set(id, (answer) => {
      // null: reset, the link ended, or cut before the answer.
      if (onAnswer(answer) && answer !== null) {
        // bind closes the descriptor itself when the stream is gone by now.
        if (this.mux.bind(id, fd, EMPTY, true)) this.bound.set(id, onEnd);
        else onEnd();
        return;
      }
      if (answer !== null) this.mux.reset(id);
      closeFd(fd);
    });
    return () => {
      // Cut: before the answer, the answer callback closes the descriptor (null answer).
      const waiting = this.answers.get(id);
      this.mux.reset(id);
      if (waiting !== undefined) {
        this.answers.delete(id);
        waiting(null);
      }
    };
  }

  /** A stream the peer opened (onStreamLine), now read and written in JavaScript. */
  adoptStream(id: number): NativeStream {
    const s = new NativeStream(this, id);
    this.streams.set(id, s);
    this.mux.deliver(id);
    return s;
  }

  /**
   * Dial ip:port for a stream the peer opened (onStreamLine): once connected, `ok` goes on
   * the stream and the two are joined here; `onFail` gets why it could not connect (the
   * stream then waits for an answer: refuseStream). `onEnd` runs once either way.
   */
  dialStream(id: number, ip: string, port: number, timeoutMs: number, ok: Buffer, onFail: (why: string) => void, onEnd: () => void): boolean {
    if (this.closed || !this.mux.dial(id, ip, port, timeoutMs, ok)) return false;
    this.bound.set(id, onEnd);
    this.dialFailures.set(id, onFail);
    return true;
  }

  /** Answer a stream the peer opened with `line` and end it (what else it sends is dropped). */
  refuseStream(id: number, line: Buffer): void {
    this.mux.write(id, line);
    this.mux.end(id);
  }

  /** Reset a stream by id (one being dialled, or joined: its end runs now). */
  resetStream(id: number): void {
    this.mux.reset(id);
    const done = this.bound.get(id);
    this.bound.delete(id);
    this.dialFailures.delete(id);
    done?.();
  }

  /** @internal */
  forget(s: NativeStream): void {
    if (this.streams.get(s.id) === s) this.streams.delete(s.id);
  }

  /** @internal */
  bind(s: NativeStream, fd: number, head: Buffer, onEnd: () => void): boolean {
    if (this.closed || !this.mux.bind(s.id, fd, head)) return false;
    this.streams.delete(s.id);
    this.bound.set(s.id, onEnd);
    return true;
  }

  private onEvents(events: MuxEvent[]): void {
    for (const e of events) {
      switch (e.type) {
        case EV_TEXT:
          this.options.onControl?.(e.text!);
          break;
        case EV_STREAM:
          // Known once its first line comes (EV_LINE).
          break;
        case EV_LINE: {
          const own = this.streams.get(e.stream);
          if (own !== undefined) {
            own.onLine(e.text!);
            break;
          }
          const answer = this.answers.get(e.stream);
          if (answer !== undefined) {
            this.answers.delete(e.stream);
            answer(e.text!);
            break;
          }
          if (this.options.onStreamLine !== undefined) {
            this.options.onStreamLine(e.stream, e.text!);
          } else {
            const s = this.adoptStream(e.stream);
            s.onLine(e.text!);
            this.options.onStream?.(s);
          }
          break;
        }
        case EV_DIAL_FAILED: {
          const fail = this.dialFailures.get(e.stream);
          this.dialFailures.delete(e.stream);
          const done = this.bound.get(e.stream);
          this.bound.delete(e.stream);
          fail?.(e.text ?? 'dial failed');
          done?.();
          break;
        }
        case EV_DATA:
          this.streams.get(e.stream)?.onData(e.data!);
          break;
        case EV_FIN:
          this.streams.get(e.stream)?.onFin();
          break;
        case EV_RESET: {
          const answer = this.answers.get(e.stream);
          if (answer !== undefined) {
            this.answers.delete(e.stream);
            answer(null);
          }
          const dialling = this.bound.get(e.stream);
          if (dialling !== undefined) {
            this.bound.delete(e.stream);
            this.dialFailures.delete(e.stream);
            dialling();
          }
          const s = this.streams.get(e.stream);
          if (s !== undefined) {
            this.streams.delete(e.stream);
            const err = new Error(`yamux stream ${e.stream} was reset`) as NodeJS.ErrnoException;
            err.code = 'ECONNRESET';
            s.onReset(err);
          }
          break;
        }
        case EV_DRAIN:
          this.streams.get(e.stream)?.onDrain();
          break;
        case EV_BOUND_END: {
          const done = this.bound.get(e.stream);
          this.bound.delete(e.stream);
          this.dialFailures.delete(e.stream);
          done?.();
          break;
        }
        case EV_GO_AWAY:
          break;
        case EV_CLOSED:
          this.ended(e.code ?? 1006, e.reason ?? '', e.error ?? '');
          break;
        default:
          break;
      }
    }
  }

  private ended(code: number, reason: string, error: string): void {
    if (this.closed) return;
    const s = this.mux.stats();
    this.finalBytes = { in: s[1], out: s[2] };
    this.closed = true;
    const err = new Error(error !== '' ? error : `the tunnel's WebSocket closed (${code}${reason !== '' ? `: ${reason}` : ''})`);
    for (const st of [...this.streams.values()]) st.onReset(err);
    this.streams.clear();
    for (const done of [...this.bound.values()]) done();
    this.bound.clear();
    this.dialFailures.clear();
    for (const answer of [...this.answers.values()]) answer(null);
    this.answers.clear();
    this.mux.dispose();
    this.options.onClose?.(error !== '' ? err : null);
    this.options.onEnd?.(code, reason);
  }
}

/**
 * A link over an upgraded connection, run by the addon; null when the addon cannot (no
 * addon, another platform, TLS, no descriptor): the caller uses the TypeScript link.
 * `greeting`: bytes to send first (the gateway's 101 answer).
 */
export function linkOverSocket(socket: net.Socket, head: Buffer, options: NativeLinkOptions, greeting?: Buffer): NativeLink | null {
  if (MuxClass === null) return null;
  const fd = socketFd(socket);
  if (fd < 0) return null;
  const extra = stopAndDrain(socket);
  const link = new NativeLink(options);
  try {
    link.mux.start(fd, extra.length > 0 ? Buffer.concat([head, ...extra]) : head, greeting ?? Buffer.alloc(0));
  } catch (err) {
    link.closed = true;
    link.mux.dispose();
    throw err;
  } finally {
    socket.destroy();
  }
  return link;
}

/** Whether the native link runs here: the addon has it, and SLUICE_TUNNEL=typescript does not turn it off. */
export function nativeLinkAvailable(): boolean {
  return nativeLinkUnavailable === '';
}
