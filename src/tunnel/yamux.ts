/**
 * yamux (hashicorp/yamux, protocol version 0): many byte streams over one ordered byte
 * transport, with flow control per stream. The tunnel's wire (issue #14): the gateway is
 * the yamux client (odd stream ids), the agent the server (even ids); the transport is the
 * binary messages of one WebSocket, and a message may carry several frames or part of one.
 *
 * A frame is a 12-byte header (version 0, type, flags u16, stream id u32, length u32, all
 * big-endian) and, for data frames, `length` bytes of payload:
 *   type 0 data (length: payload bytes), 1 window update (length: window delta),
 *   2 ping (stream 0; length: opaque value), 3 go away (stream 0; length: error code);
 *   flags SYN 1 (opens a stream / asks a ping), ACK 2 (accepts / answers), FIN 4 (half
 *   close), RST 8 (reset). Flags ride on data and window-update frames alike.
 *
 * Every stream starts with a 256 KiB receive window each way: a sender sends at most what
 * the receiver granted, and the receiver grants more as its reader takes bytes, so one slow
 * stream holds at most its window in memory and never stalls the others. The receive side
 * takes frames split and packed anyhow (payload is passed on piece by piece, never
 * gathered), and data carried by SYN, FIN and RST frames.
 */
import { Duplex } from 'node:stream';

export const YAMUX_VERSION = 0;
export const HEADER_BYTES = 12;
/** The protocol's initial window, each way, per stream. */
export const INITIAL_WINDOW = 256 * 1024;
/** Largest receive window a stream grows to, unless configured. */
export const MAX_WINDOW = 4 * 1024 * 1024;
/** Streams open at once, each way, unless configured. */
export const DEFAULT_MAX_STREAMS = 65536;

export const enum FrameType {
  Data = 0,
  WindowUpdate = 1,
  Ping = 2,
  GoAway = 3,
}

export const enum Flag {
  SYN = 1,
  ACK = 2,
  FIN = 4,
  RST = 8,
}

export const enum GoAwayCode {
  Normal = 0,
  ProtocolError = 1,
  InternalError = 2,
}

export interface YamuxOptions {
  /** The client opens odd stream ids, the server even ones. */
  client: boolean;
  /**
   * Write wire bytes (one or more whole or partial frames, in order). Return false when
   * the transport is full: the session sends no more data frames until `resume()`
   * (window updates, acknowledgements and pings still go: they are small and bounded).
   */
  send(chunks: Buffer[]): boolean;
  /** A stream the peer opened (already accepted). */
  onStream?(stream: YamuxStream): void;
  /** The session ended: `error` is set for a protocol error or a failed transport. */
  onClose?(error: Error | null): void;
  /** Streams open at once, each way (default DEFAULT_MAX_STREAMS); a SYN past it is reset. */
  maxStreams?: number;
  /** Largest data frame this side sends (default 64 KiB). */
  maxFrameBytes?: number;
  /** Receive window per stream at first (default and least: 256 KiB, the protocol's initial window). */
  window?: number;
  /**
   * Largest receive window per stream (default 4 MiB): each top-up doubles the window
   * while the stream's reader keeps up (nothing waits unread), so that one stream gets what
   * the path needs; a reader that falls behind stops the growth.
   */
  maxWindow?: number;
}

/** A protocol violation by the peer (the session sends go-away 1 and ends). */
export class YamuxProtocolError extends Error {
  readonly code = 'SLUICE_ERR_YAMUX';
}

function header(type: number, flags: number, id: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(HEADER_BYTES);
  h[0] = YAMUX_VERSION;
  h[1] = type;
  h.writeUInt16BE(flags, 2);
  h.writeUInt32BE(id >>> 0, 4);
  h.writeUInt32BE(length >>> 0, 8);
  return h;
}

interface PendingWrite {
  chunk: Buffer;
  callback: (error?: Error | null) => void;
}

/**
 * One yamux stream, as a Node duplex: write to send, read what the peer sent, `end()` to
 * half-close (FIN), `destroy()` before both directions closed resets it (RST). Reading
 * grants the peer more window, so a reader that stops holds the peer back.
 */
export class YamuxStream extends Duplex {
  readonly id: number;
  /** When the stream was opened here, or its SYN arrived (ms, performance.now()). */
  readonly openedAt: number;
  /** When the peer's ACK arrived (outbound streams; 0 until then). */
  acknowledgedAt = 0;
  private readonly session: YamuxSession;
  /** What the peer may still send us. */
  private recvWindow: number;
  /** Our receive window now (grows up to the session's maxWindow). */
  private window: number;
  /** Bytes of data frames already admitted (their headers read) that have not arrived yet. */
  private inflight = 0;
  /** What we may still send the peer. */
  private sendWindow = INITIAL_WINDOW;
  /** The flags our next frame carries: SYN (opening) or ACK (accepting), once. */
  private openFlags: number;
  private pending: PendingWrite | null = null;
  private finalCallback: ((error?: Error | null) => void) | null = null;
  finSent = false;
  finReceived = false;
  private resetSeen = false;
  private grantQueued = false;
  /** Data bytes received and written, for statistics. */
  bytesIn = 0;
  bytesOut = 0;

  constructor(session: YamuxSession, id: number, openFlags: number) {
    super({ allowHalfOpen: true, readableHighWaterMark: 64 * 1024, writableHighWaterMark: 64 * 1024 });
    this.session = session;
    this.id = id;
    this.openFlags = openFlags;
    this.recvWindow = INITIAL_WINDOW;
    this.window = session.window;
    this.openedAt = performance.now();
  }

  // ---------------------------------------------------------------- from the peer

  /** @internal A data frame's payload (or a piece of it). */
  receive(piece: Buffer): void {
    this.bytesIn += piece.length;
    this.inflight -= piece.length;
    if (this.finReceived || this.destroyed) return;
    this.push(piece);
    this.grant(false);
  }

  /** @internal Checks a data frame's length against the window (false: the peer overran it). */
  admit(length: number): boolean {
    if (length > this.recvWindow) return false;
    this.recvWindow -= length;
    this.inflight += length;
    return true;
  }

  /** @internal */
  remoteWindow(delta: number): void {
    this.sendWindow += delta;
    if (this.pending !== null) this.flushPending();
  }

  /** @internal The peer half-closed. */
  remoteFin(): void {
    if (this.finReceived) return;
    this.finReceived = true;
    this.push(null);
    this.session.maybeForget(this);
  }

  /** @internal The peer reset the stream. */
  remoteReset(): void {
    this.resetSeen = true;
    this.finReceived = true;
    this.finSent = true;
    const err = new Error(`yamux stream ${this.id} was reset by the peer`) as NodeJS.ErrnoException;
    err.code = 'ECONNRESET';
    this.destroy(err);
  }

  /** @internal The session ended under the stream. */
  abort(error: Error): void {
    this.resetSeen = true;
    this.finReceived = true;
    this.finSent = true;
    this.destroy(error);
  }

  // ---------------------------------------------------------------- Duplex

  override _read(): void {
    // Node calls _read before it takes the bytes being read out of the buffer: count them
    // as read once this read is over.
    if (this.grantQueued) return;
    this.grantQueued = true;
    process.nextTick(() => {
      this.grantQueued = false;
      this.grant(false);
    });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.pending = { chunk, callback };
    this.flushPending();
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.pending !== null) {
      this.finalCallback = callback;
      return;
    }
    this.sendFin();
    callback();
  }

  override _destroy(error: Error | null, callback: (error: Error | null) => void): void {
    if (!this.resetSeen && !(this.finSent && this.finReceived)) {
      // Closed here before both directions ended: the peer must stop too.
      this.session.sendFrame(FrameType.WindowUpdate, this.takeFlags() | Flag.RST, this.id, 0);
      this.finSent = true;
      this.finReceived = true;
    }
    const p = this.pending;
    this.pending = null;
    if (p !== null) p.callback(error ?? new Error('stream destroyed'));
    this.session.forget(this);
    callback(error);
  }

  // ---------------------------------------------------------------- internals

  /** @internal Send what waits, as far as the window and the transport allow. */
  flushPending(): void {
    const p = this.pending;
    if (p === null || this.destroyed) return;
    const session = this.session;
    let chunk = p.chunk;
    while (chunk.length > 0 && this.sendWindow > 0 && !session.blocked) {
      const n = Math.min(chunk.length, this.sendWindow, session.maxFrameBytes);
      session.sendData(this.takeFlags(), this.id, n === chunk.length ? chunk : chunk.subarray(0, n));
      this.sendWindow -= n;
      this.bytesOut += n;
      chunk = chunk.subarray(n);
    }
    if (chunk.length > 0) {
      p.chunk = chunk;
      if (session.blocked) session.waitForTransport(this);
      return;
    }
    this.pending = null;
    p.callback();
    if (this.finalCallback !== null) {
      const cb = this.finalCallback;
      this.finalCallback = null;
      this.sendFin();
      cb();
    }
  }

  /**
   * The peer's window, topped up once half of it has been read (or at once when `force`);
   * doubled on the way while the reader keeps up (native/tunnel/mux.cc Grant does the same).
   */
  private grant(force: boolean): void {
    if (this.finReceived || this.destroyed) return;
    const window = this.window;
    // Granted and not yet taken by the reader: the window, less what waits in our buffer,
    // what the peer may still send, and what it sent that is still arriving.
    let delta = window - this.readableLength - this.recvWindow - this.inflight;
    if (delta <= 0 || (delta < window / 2 && !force)) return;
    if (this.readableLength === 0 && window < this.session.maxWindow) {
      const grow = Math.min(window, this.session.maxWindow - window);
      this.window += grow;
      delta += grow;
    }
    this.recvWindow += delta;
    this.session.sendFrame(FrameType.WindowUpdate, this.takeFlags(), this.id, delta);
  }

  private sendFin(): void {
    if (this.finSent) return;
    this.finSent = true;
    this.session.sendFrame(FrameType.WindowUpdate, this.takeFlags() | Flag.FIN, this.id, 0);
    this.session.maybeForget(this);
  }

  /** @internal The SYN or ACK owed on this stream's first frame (then nothing). */
  takeFlags(): number {
    const f = this.openFlags;
    this.openFlags = 0;
    return f;
  }

  /**
   * @internal Open (SYN) or accept (ACK) the stream now: a window update carrying the flag
   * it was made with, and the window beyond the protocol's initial one.
   */
  announce(): void {
    const extra = this.session.window - INITIAL_WINDOW;
    this.recvWindow += extra;
    this.session.sendFrame(FrameType.WindowUpdate, this.takeFlags(), this.id, extra);
  }
}

// Receive states.
const READ_HEADER = 0;
const READ_DATA = 1;

export class YamuxSession {
  readonly client: boolean;
  readonly window: number;
  readonly maxWindow: number;
  readonly maxFrameBytes: number;
  private readonly maxStreams: number;
  private readonly transport: (chunks: Buffer[]) => boolean;
  private readonly onStream: ((stream: YamuxStream) => void) | null;
  private readonly onClose: ((error: Error | null) => void) | null;
  private readonly streams = new Map<number, YamuxStream>();
  private nextId: number;
  private inbound = 0;
  private outbound = 0;
  /** The transport said it is full: data waits (streams in `waiting`). */
  blocked = false;
  private readonly waiting = new Set<YamuxStream>();
  /** Frames built in this tick, sent together. */
  private out: Buffer[] = [];
  private flushScheduled = false;
  private closed = false;
  /** The peer said go away: no new streams either way. */
  remoteGoAway = false;
  localGoAway = false;
  private nextPing = 1;
  private readonly pings = new Map<number, { start: number; resolve(ms: number): void; reject(e: Error): void }>();
  // Receive state: a header, then (data frames) its payload piece by piece.
  private state = READ_HEADER;
  private readonly head = Buffer.alloc(HEADER_BYTES);
  private headHeld = 0;
  private dataLeft = 0;
  private dataStream: YamuxStream | null = null;
  private dataFlags = 0;

  constructor(options: YamuxOptions) {
    this.client = options.client;
    this.transport = options.send;
    this.onStream = options.onStream ?? null;
    this.onClose = options.onClose ?? null;
    this.maxStreams = options.maxStreams ?? DEFAULT_MAX_STREAMS;
    this.maxFrameBytes = Math.max(1024, options.maxFrameBytes ?? 64 * 1024);
    this.window = Math.max(INITIAL_WINDOW, options.window ?? INITIAL_WINDOW);
    this.maxWindow = Math.max(this.window, options.maxWindow ?? MAX_WINDOW);
    this.nextId = this.client ? 1 : 2;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Streams open now. */
  get size(): number {
    return this.streams.size;
  }

  streamList(): YamuxStream[] {
    return [...this.streams.values()];
  }

  /** Open a stream (its SYN goes at once; data may follow before the peer's ACK). */
  open(): YamuxStream {
    if (this.closed) throw new Error('the yamux session is closed');
    if (this.remoteGoAway || this.localGoAway) throw new Error('the yamux session is going away');
    if (this.outbound >= this.maxStreams) throw new Error(`too many open yamux streams (${this.maxStreams})`);
    const id = this.nextId;
    if (id > 0xffffffff) throw new Error('yamux stream ids exhausted');
    this.nextId += 2;
    const s = new YamuxStream(this, id, Flag.SYN);
    this.streams.set(id, s);
    this.outbound++;
    s.announce();
    return s;
  }

  /** Round-trip time to the peer, in ms. */
  ping(timeoutMs = 10000): Promise<number> {
    if (this.closed) return Promise.reject(new Error('the yamux session is closed'));
    const id = this.nextPing++ >>> 0;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pings.delete(id);
        reject(new Error('yamux ping timed out'));
      }, timeoutMs);
      timer.unref();
      this.pings.set(id, {
        start: performance.now(),
        resolve: (ms) => { clearTimeout(timer); resolve(ms); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.sendFrame(FrameType.Ping, Flag.SYN, 0, id);
    });
  }

  /** Tell the peer no new streams will be taken; the open ones go on. */
  goAway(code: GoAwayCode = GoAwayCode.Normal): void {
    if (this.closed || this.localGoAway) return;
    this.localGoAway = true;
    this.sendFrame(FrameType.GoAway, 0, 0, code);
  }

  /** The transport has room again. */
  resume(): void {
    if (!this.blocked) return;
    this.blocked = false;
    const list = [...this.waiting];
    this.waiting.clear();
    for (const s of list) {
      s.flushPending();
      if (this.blocked) break;
    }
  }

  /**
   * End the session: every stream still open fails with `error` (or a plain "session
   * closed"), and `onClose` runs once. The transport is the caller's to close.
   */
  destroy(error: Error | null = null): void {
    if (this.closed) return;
    this.closed = true;
    const streamError = error ?? new Error('the yamux session closed');
    for (const s of [...this.streams.values()]) s.abort(streamError);
    this.streams.clear();
    this.waiting.clear();
    for (const p of this.pings.values()) p.reject(streamError);
    this.pings.clear();
    this.out = [];
    this.onClose?.(error);
  }

  // ---------------------------------------------------------------- receiving

  /** Wire bytes from the transport, cut anyhow. */
  push(chunk: Buffer): void {
    let pos = 0;
    const end = chunk.length;
    while (pos < end && !this.closed) {
      if (this.state === READ_DATA) {
        const n = Math.min(this.dataLeft, end - pos);
        const s = this.dataStream;
        if (s !== null && n > 0) s.receive(pos === 0 && n === end ? chunk : chunk.subarray(pos, pos + n));
        pos += n;
        this.dataLeft -= n;
        if (this.dataLeft === 0) this.endData();
        continue;
      }
      // A header, maybe in pieces.
      let h: Buffer;
      if (this.headHeld === 0 && end - pos >= HEADER_BYTES) {
        h = chunk.subarray(pos, pos + HEADER_BYTES);
        pos += HEADER_BYTES;
      } else {
        const n = Math.min(HEADER_BYTES - this.headHeld, end - pos);
        chunk.copy(this.head, this.headHeld, pos, pos + n);
        this.headHeld += n;
        pos += n;
        if (this.headHeld < HEADER_BYTES) break;
        this.headHeld = 0;
        h = this.head;
      }
      this.onHeader(h[0], h[1], h.readUInt16BE(2), h.readUInt32BE(4), h.readUInt32BE(8));
    }
  }

  private onHeader(version: number, type: number, flags: number, id: number, length: number): void {
    if (version !== YAMUX_VERSION) return this.protocolError(`unsupported yamux version ${version}`);
    switch (type) {
      case FrameType.Data:
      case FrameType.WindowUpdate:
        return this.onStreamFrame(type, flags, id, length);
      case FrameType.Ping:
        if (id !== 0) return this.protocolError('ping on a stream');
        if (flags & Flag.SYN) this.sendFrame(FrameType.Ping, Flag.ACK, 0, length);
        else if (flags & Flag.ACK) {
          const p = this.pings.get(length);
          if (p !== undefined) {
            this.pings.delete(length);
            p.resolve(performance.now() - p.start);
          }
        }
        return;
      case FrameType.GoAway:
        if (id !== 0) return this.protocolError('go away on a stream');
        this.remoteGoAway = true;
        return;
      default:
        return this.protocolError(`unknown yamux frame type ${type}`);
    }
  }

  private onStreamFrame(type: number, flags: number, id: number, length: number): void {
    if (id === 0) return this.protocolError('stream frame on stream 0');
    let s = this.streams.get(id);
    if (flags & Flag.SYN) {
      if (s !== undefined) return this.protocolError(`stream ${id} opened twice`);
      // The peer opens the ids of its role: odd for a client, even for a server.
      if ((id & 1) === (this.client ? 1 : 0)) return this.protocolError(`stream ${id} has this side's parity`);
      if (this.inbound >= this.maxStreams || this.localGoAway) {
        this.sendFrame(FrameType.WindowUpdate, Flag.RST, id, 0);
        s = undefined;
      } else {
        s = new YamuxStream(this, id, Flag.ACK);
        this.streams.set(id, s);
        this.inbound++;
        s.announce();
        this.onStream?.(s);
        if (this.closed) return;
      }
    } else if (s !== undefined && (flags & Flag.ACK) && s.acknowledgedAt === 0) {
      s.acknowledgedAt = performance.now();
    }
    if (type === FrameType.WindowUpdate) {
      if (s !== undefined && length > 0) s.remoteWindow(length);
      this.streamFlags(s, flags);
      return;
    }
    // Data: its payload follows (for an unknown or closed stream it is read and dropped).
    if (s !== undefined && !s.admit(length)) {
      return this.protocolError(`stream ${id} sent ${length} bytes past its window`);
    }
    this.dataStream = s ?? null;
    this.dataFlags = flags;
    this.dataLeft = length;
    if (length === 0) this.endData();
    else this.state = READ_DATA;
  }

  private endData(): void {
    this.state = READ_HEADER;
    const s = this.dataStream;
    this.dataStream = null;
    this.streamFlags(s ?? undefined, this.dataFlags);
  }

  /** FIN and RST, after the frame's data. */
  private streamFlags(s: YamuxStream | undefined, flags: number): void {
    if (s === undefined) return;
    if (flags & Flag.RST) s.remoteReset();
    else if (flags & Flag.FIN) s.remoteFin();
  }

  private protocolError(message: string): void {
    if (this.closed) return;
    this.sendFrame(FrameType.GoAway, 0, 0, GoAwayCode.ProtocolError);
    this.flush();
    this.destroy(new YamuxProtocolError(message));
  }

  // ---------------------------------------------------------------- sending

  /** @internal A frame with no payload. */
  sendFrame(type: number, flags: number, id: number, length: number): void {
    if (this.closed) return;
    this.out.push(header(type, flags, id, length));
    this.scheduleFlush();
  }

  /** @internal A data frame. */
  sendData(flags: number, id: number, payload: Buffer): void {
    if (this.closed) return;
    this.out.push(header(FrameType.Data, flags, id, payload.length), payload);
    this.scheduleFlush();
  }

  /** @internal */
  waitForTransport(s: YamuxStream): void {
    this.waiting.add(s);
  }

  /** @internal A stream closed both ways, or reset: it leaves the table. */
  forget(s: YamuxStream): void {
    if (this.streams.get(s.id) !== s) return;
    this.streams.delete(s.id);
    this.waiting.delete(s);
    if ((s.id & 1) === (this.client ? 1 : 0)) this.outbound--;
    else this.inbound--;
  }

  /** @internal */
  maybeForget(s: YamuxStream): void {
    if (s.finSent && s.finReceived) this.forget(s);
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    process.nextTick(() => this.flush());
  }

  /** Everything built since the last flush, to the transport in one call. */
  flush(): void {
    this.flushScheduled = false;
    if (this.out.length === 0) return;
    const chunks = this.out;
    this.out = [];
    if (!this.transport(chunks)) this.blocked = true;
  }
}
