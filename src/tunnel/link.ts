/**
 * The tunnel's link: one yamux session over one WebSocket. Binary messages carry yamux
 * frames, text messages JSON control messages. Two implementations behind one interface:
 * the native link (native-link.ts: the addon runs the WebSocket, the yamux session and
 * the streams joined to sockets) and its TypeScript twin here (the `ws` library and
 * yamux.ts), for wss://, other platforms and SLUICE_NO_NATIVE=1.
 *
 * The twin packs frames into messages of at most MESSAGE_BYTES (a frame may straddle
 * two); the socket's send buffer is the session's transport backpressure: past HIGH_WATER
 * bytes buffered the session holds data frames back, and resumes below LOW_WATER.
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { RawData, WebSocket } from 'ws';
import { NativeStream } from './native-link.js';
import { YamuxSession } from './yamux.js';

/** Largest binary message the link sends (the gateway's maxFrameBytes must allow it). */
export const MESSAGE_BYTES = 256 * 1024;
const HIGH_WATER = 1024 * 1024;
const LOW_WATER = 256 * 1024;

/** One stream of a link: a Node duplex (write to send, `end()` half-closes). */
export interface TunnelStream extends Duplex {
  readonly id: number;
  /** When it was opened here, or its SYN arrived (performance.now()). */
  readonly openedAt: number;
  bytesIn: number;
  bytesOut: number;
}

export interface TunnelSession {
  /** Streams open now. */
  readonly size: number;
  readonly isClosed: boolean;
  /** A new stream (its SYN goes at once); throws when none can be opened. */
  open(): TunnelStream;
  /** End the session and its streams (the transport is cut). */
  destroy(error?: Error | null): void;
}

export interface LinkOptions {
  /** The yamux client (the gateway: odd stream ids). */
  client: boolean;
  onStream?(stream: TunnelStream): void;
  /** A text message (JSON control), already decoded. */
  onControl?(text: string): void;
  /** The session ended (the socket closed, or the peer broke the yamux protocol). */
  onClose?(error: Error | null): void;
  /** The WebSocket closed: its close code (1006 without a close frame) and reason. */
  onEnd?(code: number, reason: string): void;
  maxStreams?: number;
}

export interface Link {
  readonly session: TunnelSession;
  /** Bytes sent and received in binary messages. */
  readonly bytes: { in: number; out: number };
  /** Whether the addon runs it. */
  readonly native: boolean;
  /** Time since anything came from the peer (ms). */
  idleMs(): number;
  sendControl(text: string): void;
  /** A WebSocket ping (the answer counts as hearing from the peer). */
  ping(): void;
  /** A close frame; onEnd follows the peer's answer (or terminate()). */
  close(code: number, reason: string): void;
  /** Cut the connection now. */
  terminate(): void;
}

/**
 * A connection in a set of live ones (to close them all, and to count them): it leaves
 * the set by itself (`done`). Made outside the handler that joins the connection, so that
 * what the set keeps (this, its close and done functions) does not hold that handler's
 * variables (the sockets and streams handed to the addon) in memory.
 */
export class LiveEntry {
  close: () => void;
  readonly done = (): void => {
    this.set.delete(this);
  };
  constructor(private readonly set: Set<{ close(): void }>, close: () => void) {
    this.close = close;
    set.add(this);
  }
}

/**
 * Join a stream of a link and a TCP socket: bytes both ways until both directions ended
 * (a half-close is passed on) or either side failed (then both are cut). On the native
 * link the addon carries them from here on; else they are piped. `onEnd` runs once, when
 * it is over. Returns a function that cuts both.
 */
export function joinSocket(stream: TunnelStream, socket: net.Socket, onEnd: () => void): () => void {
  if (stream instanceof NativeStream) {
    const cut = stream.joinSocket(socket, onEnd);
    if (cut !== null) return cut;
  }
  return pipeJoin(stream, socket, onEnd);
}

function pipeJoin(stream: Duplex, socket: net.Socket, onEnd: () => void): () => void {
  stream.pipe(socket);
  socket.pipe(stream);
  socket.resume();
  stream.on('close', () => {
    // A reset (or a session that ended) under a live connection: it goes too.
    if (!stream.readableEnded || !stream.writableFinished) socket.destroy();
    else if (!socket.destroyed && socket.writableEnded && socket.readableEnded) socket.destroy();
  });
  socket.on('close', () => {
    if (!socket.readableEnded || !socket.writableFinished) stream.destroy();
    onEnd();
  });
  return () => {
    socket.destroy();
    stream.destroy();
  };
}

export function linkOverWebSocket(ws: WebSocket, options: LinkOptions): Link {
  const bytes = { in: 0, out: 0 };
  let lastHeard = Date.now();
  const heard = () => { lastHeard = Date.now(); };
  ws.on('pong', heard);
  ws.on('ping', heard);
  ws.on('error', () => {}); // a failed socket ends in 'close', handled below
  const afterSend = () => {
    if (session.blocked && ws.bufferedAmount < LOW_WATER) session.resume();
  };
  const session = new YamuxSession({
    client: options.client,
    maxStreams: options.maxStreams,
    onStream: options.onStream,
    onClose: (error) => {
      options.onClose?.(error);
      // A protocol error: the go-away went first; the socket closes with 1002.
      if (error !== null && ws.readyState === ws.OPEN) ws.close(1002, error.message.slice(0, 120));
    },
    send: (chunks) => {
      if (ws.readyState !== ws.OPEN) return true; // the close handler ends the session
      // Small pieces (headers, window updates) are packed together; a payload of its own
      // size goes as its own message, uncopied (a message may carry part of a frame).
      let small: Buffer[] = [];
      let size = 0;
      const flushSmall = () => {
        if (size === 0) return;
        const data = small.length === 1 ? small[0] : Buffer.concat(small, size);
        bytes.out += size;
        ws.send(data, { binary: true }, afterSend);
        small = [];
        size = 0;
      };
      for (const c of chunks) {
        if (c.length >= 4096) {
          // Sent with the small pieces before it in one message when they are few bytes.
          if (size > 0) flushSmall();
          bytes.out += c.length;
          ws.send(c, { binary: true }, afterSend);
          continue;
        }
        small.push(c);
        size += c.length;
        if (size >= MESSAGE_BYTES) flushSmall();
      }
      flushSmall();
      return ws.bufferedAmount < HIGH_WATER;
    },
  });
  ws.on('message', (data: RawData, isBinary: boolean) => {
    heard();
    const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
    if (isBinary) {
      bytes.in += buf.length;
      session.push(buf);
    } else {
      options.onControl?.(buf.toString('utf8'));
    }
  });
  ws.on('close', (code: number, reason: Buffer) => {
    const why = reason.length > 0 ? `: ${reason.toString('utf8')}` : '';
    session.destroy(new Error(`the tunnel's WebSocket closed (${code}${why})`));
    options.onEnd?.(code, reason.toString('utf8'));
  });
  return {
    session,
    bytes,
    native: false,
    idleMs: () => Date.now() - lastHeard,
    sendControl(text: string) {
      if (ws.readyState === ws.OPEN) ws.send(text, { binary: false });
    },
    ping() {
      if (ws.readyState === ws.OPEN) ws.ping();
    },
    close(code: number, reason: string) {
      if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(code, reason);
    },
    terminate() {
      ws.terminate();
    },
  };
}
