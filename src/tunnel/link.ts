/**
 * A yamux session over one `ws` WebSocket: binary messages carry yamux frames (packed into
 * messages of at most MESSAGE_BYTES, a frame may straddle two), text messages carry JSON
 * control messages. The socket's send buffer is the session's transport backpressure: past
 * HIGH_WATER bytes buffered the session holds data frames back, and resumes below LOW_WATER.
 */
import type { RawData, WebSocket } from 'ws';
import { YamuxSession, type YamuxStream } from './yamux.js';

/** Largest binary message the link sends (the gateway's maxFrameBytes must allow it). */
export const MESSAGE_BYTES = 256 * 1024;
const HIGH_WATER = 1024 * 1024;
const LOW_WATER = 256 * 1024;

export interface LinkOptions {
  client: boolean;
  onStream?(stream: YamuxStream): void;
  /** A text message (JSON control), already decoded. */
  onControl?(text: string): void;
  /** The session ended (the socket closed, or the peer broke the yamux protocol). */
  onClose?(error: Error | null): void;
  maxStreams?: number;
}

export interface Link {
  readonly session: YamuxSession;
  /** Bytes sent and received in binary messages. */
  readonly bytes: { in: number; out: number };
  sendControl(text: string): void;
}

export function linkOverWebSocket(ws: WebSocket, options: LinkOptions): Link {
  const bytes = { in: 0, out: 0 };
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
  });
  return {
    session,
    bytes,
    sendControl(text: string) {
      if (ws.readyState === ws.OPEN) ws.send(text, { binary: false });
    },
  };
}
