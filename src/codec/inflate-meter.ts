/**
 * permessage-deflate (RFC 7692) as the proxy sees it: the two ends agreed on it, so
 * compressed frames pass through untouched, but the message limit and the UTF-8 rule
 * apply to what the message inflates to. An InflateMeter inflates one side's compressed
 * messages to check them (the output is checked, then dropped).
 *
 * A message is inflated whole when its last frame arrives, synchronously, before that
 * frame is forwarded: the partner never receives the end of a message that fails (earlier
 * fragments have gone on, their bytes counted against the limit as they came). The
 * sliding window of context takeover is carried as the last 32 KiB of output, handed to
 * the next message's inflater as its dictionary (that is what the window is). zlib's
 * `maxOutputLength` stops a compression bomb at the limit instead of inflating it whole.
 */
import zlib from 'node:zlib';

/** The agreed parameters that matter to an inflater, from the upstream's answer. */
export interface DeflateAgreement {
  /** The client resets its compressor after every message (client_no_context_takeover). */
  clientNoContextTakeover: boolean;
  /** The server resets its compressor after every message (server_no_context_takeover). */
  serverNoContextTakeover: boolean;
}

/** Reads a Sec-WebSocket-Extensions answer holding one permessage-deflate entry. */
export function parseDeflateAgreement(header: string): DeflateAgreement {
  const params = header.split(';').map((p) => p.trim().toLowerCase().split('=')[0]);
  return {
    clientNoContextTakeover: params.includes('client_no_context_takeover'),
    serverNoContextTakeover: params.includes('server_no_context_takeover'),
  };
}

const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
const EMPTY = Buffer.alloc(0);

/** Result codes of {@link InflateMeter.push} besides an output buffer. */
export const INFLATE_TOO_BIG = 1009;
export const INFLATE_CORRUPT = 1007;
/** A message not complete yet: nothing to check until its last frame. */
export const INFLATE_PENDING = 0;
/** The deflate window (RFC 7692 allows at most 15 bits). */
const WINDOW_BYTES = 32 * 1024;

export class InflateMeter {
  private readonly limit: number;
  private readonly resetPerMessage: boolean;
  /** Compressed frames of the message so far (copied: reads may share one buffer). */
  private parts: Buffer[] = [];
  /** The last WINDOW_BYTES of output (context takeover), or null. */
  private window: Buffer | null = null;

  constructor(limit: number, resetPerMessage: boolean) {
    this.limit = limit;
    this.resetPerMessage = resetPerMessage;
  }

  /**
   * The next frame of a compressed message (`first` on its first frame, `fin` on its last).
   * Returns INFLATE_PENDING until the last frame, then the inflated message, or
   * INFLATE_TOO_BIG when it inflates past the limit, or INFLATE_CORRUPT.
   */
  push(fragment: Buffer, first: boolean, fin: boolean): Buffer | number {
    if (first) this.parts = [];
    if (!fin) {
      this.parts.push(Buffer.from(fragment));
      return INFLATE_PENDING;
    }
    this.parts.push(fragment, TAIL);
    const input = Buffer.concat(this.parts);
    this.parts = [];
    let out: Buffer;
    try {
      out = zlib.inflateRawSync(input, {
        finishFlush: zlib.constants.Z_SYNC_FLUSH,
        maxOutputLength: this.limit + 1,
        ...(this.window !== null ? { dictionary: this.window } : {}),
      });
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' ? INFLATE_TOO_BIG : INFLATE_CORRUPT;
    }
    if (out.length > this.limit) return INFLATE_TOO_BIG;
    if (!this.resetPerMessage) {
      const keep = this.window === null ? out : Buffer.concat([this.window, out]);
      this.window = Buffer.from(keep.subarray(Math.max(0, keep.length - WINDOW_BYTES)));
    }
    return out;
  }

  /** Free what is held. */
  close(): void {
    this.parts = [];
    this.window = null;
  }
}
