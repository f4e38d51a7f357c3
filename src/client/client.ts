/**
 * The client SDK: an agent or app connects to an envelope route of sluice, speaks v2 or
 * v1 (whichever the proxy chose), stays connected (heartbeat, reconnect with backoff),
 * and does not lose what it was given to send (outbox, optionally on disk).
 *
 * Delivery. The proxy does not acknowledge data frames, but it handles a client's frames
 * in order and answers an envelope ping when it reaches it. So a pong confirms every data
 * frame sent before its ping: those frames have left the network and are in the proxy,
 * forwarded or queued for the upstream. A message leaves the outbox (and its log) only
 * then. What that gives:
 * - in order: one connection at a time, messages sent in outbox order, and after a
 *   reconnect the unconfirmed ones are sent again first;
 * - at least once towards the proxy, across disconnects and, with `persist`, across a
 *   restart or crash of this process (for messages whose batch reached the disk: see
 *   `flush()`); a message sent but unconfirmed when a connection ends is sent again, so
 *   the upstream can see it twice;
 * - not end to end: a message the proxy confirmed but had not yet written to the upstream
 *   when the proxy itself crashed is lost (a graceful proxy restart forwards what it holds).
 * At most one ping is outstanding: the confirmation ping goes out after a send when none
 * is in flight, and doubles as the heartbeat.
 */
import { EventEmitter } from 'node:events';
import { WebSocket, type RawData } from 'ws';
import { SluiceError } from '../errors.js';
import {
  decodeEnvelope, encodeEnvelope, closePayload, parseClosePayload, parseControlPayload, isWireCloseCode,
  EnvelopeType, EnvelopeFlag, ENVELOPE_PROTOCOLS,
  type EnvelopeVersion, type EnvelopeLimits,
} from '../protocol/index.js';
import { Backoff } from './backoff.js';
import { Outbox } from './outbox.js';

/** Options of `connect()`. Every field is optional. */
export interface ConnectOptions {
  /** Versions offered, in order of preference; default `['v2', 'v1']`. `[]`: offer none (a legacy v1 client). */
  protocols?: EnvelopeVersion[];
  /** Extra handshake headers (Authorization, …). */
  headers?: Record<string, string>;
  /** Give up on a handshake after this long; default 10 000. */
  handshakeTimeoutMs?: number;
  /** Largest message sent or received (payload bytes); default 1 MiB, sluice's default `limits.maxFrameBytes`. */
  maxMessageBytes?: number;
  heartbeat?: {
    /** An envelope ping after this long without one; default 15 000. */
    pingIntervalMs?: number;
    /** No pong this long after a ping: the connection is dropped and redialled; default 30 000. */
    pongTimeoutMs?: number;
  };
  /** `false`: never reconnect (the client closes when the connection ends). */
  reconnect?: false | {
    /** Ceiling of the first delay; default 500. */
    initialDelayMs?: number;
    /** Largest ceiling; default 30 000. */
    maxDelayMs?: number;
    /** A connection up this long resets the backoff; default 10 000. */
    stableAfterMs?: number;
    /** Attempts in a row before giving up; default Infinity. */
    maxAttempts?: number;
    /**
     * Whether a connection that ended with this close code (or, for a refused handshake,
     * HTTP status) is redialled. Default: yes except 1002, 1003, 1007, 1008, 1009, 1010
     * and HTTP 400, 401, 403, 404 (retrying cannot fix those).
     */
    shouldReconnect?: (code: number, reason: string) => boolean;
  };
  /** Outbox bounds; `send()` returns false past either. Defaults 10 000 messages, 64 MiB. */
  queue?: { maxMessages?: number; maxBytes?: number };
  /** Keep the outbox in an append-only log in `dir` (one client per directory). */
  persist?: { dir: string };
  /** Stop writing to the socket while its buffered bytes exceed this; default 1 MiB. */
  highWaterMark?: number;
  /**
   * Resume (routes with `resume`, docs/protocols.md "Resume"): keep the session's token, come back
   * with it after a drop, and get exactly what was missed both ways: nothing delivered
   * twice, nothing lost, while the proxy holds the session (its grace).
   */
  resume?: boolean;
}

/** The client's state. */
export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closing' | 'closed';

/** Events of a SluiceClient, with their arguments. */
export interface SluiceClientEvents {
  /** Connected; `version` is what the proxy chose. */
  open: [info: { protocol: string; version: EnvelopeVersion }];
  /** A data frame from the upstream (the envelope does not say text or binary: bytes). */
  message: [data: Buffer, flags: number];
  /** A control frame other than the backpressure signal. */
  control: [payload: Record<string, unknown>, flags: number];
  /** The proxy raised (true) or cleared (false) the backpressure signal; sends pause while it is up. */
  backpressure: [on: boolean];
  /** The connection ended and will be redialled after `delayMs`. */
  reconnecting: [info: { attempt: number; delayMs: number; code: number; reason: string }];
  /** The client is closed for good (close(), a fatal close code, or reconnect attempts used up). */
  close: [info: { code: number; reason: string }];
  /**
   * With `resume`: after a reconnect, whether the session went on (`resumed: true`) or a new
   * one began (`resumed: false`, with the proxy's reason: continuity was lost; messages
   * sent but unacknowledged are sent again, so the new upstream session may see them).
   */
  resumed: [info: { resumed: true; replayed: number } | { resumed: false; reason: string }];
  /** Something went wrong that the client handles itself; emitted only when someone listens. */
  error: [err: SluiceError];
}

/** Counters of a client. */
export interface ClientStats {
  state: ClientState;
  version: EnvelopeVersion | null;
  /** Messages accepted by `send()`. */
  accepted: number;
  /** Messages refused by `send()` (outbox full). */
  rejected: number;
  /** Data frames written to a socket (resends included). */
  sent: number;
  /** Of those, sent again after a reconnect. */
  resent: number;
  /** Messages confirmed by the proxy and removed from the outbox. */
  confirmed: number;
  /** Data frames received. */
  received: number;
  /** Messages in the outbox: unsent plus unconfirmed. */
  queued: number;
  queuedBytes: number;
  unconfirmed: number;
  /** Messages found in the disk log at start. */
  recovered: number;
  /** Connections opened. */
  connections: number;
  /** Times the backpressure signal went up. */
  backpressureEvents: number;
  /** Error frames received from the proxy. */
  errorFrames: number;
  /** Bytes of WebSocket messages written / read (envelope included, WebSocket framing not). */
  bytesOut: number;
  bytesIn: number;
  /** With `resume`: sessions continued after a drop, upstream messages the proxy replayed, and times continuity was lost. */
  resumes: number;
  replayedFrames: number;
  lostContinuity: number;
}

const FATAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009, 1010]);
const FATAL_HTTP_STATUS = new Set([400, 401, 403, 404]);

function defaultShouldReconnect(code: number): boolean {
  return !FATAL_CLOSE_CODES.has(code) && !FATAL_HTTP_STATUS.has(code);
}

/**
 * Connect to an envelope route. Returns at once; the client dials, and keeps dialling
 * after every disconnect, until `close()`. Messages given to `send()` before the first
 * `open` wait in the outbox.
 *
 * ```ts
 * const client = connect('ws://127.0.0.1:8080/agent', { persist: { dir: '/var/lib/agent/outbox' } });
 * client.on('message', (data) => console.log(data.toString()));
 * client.send(JSON.stringify({ hello: 'world' }));
 * await client.close();
 * ```
 */
export function connect(url: string, options: ConnectOptions = {}): SluiceClient {
  return new SluiceClient(url, options);
}

/** A connection to an envelope route that survives disconnects. See `connect()`. */
export class SluiceClient extends EventEmitter<SluiceClientEvents> {
  readonly url: string;
  private readonly offered: string[];
  private readonly headers: Record<string, string>;
  private readonly handshakeTimeoutMs: number;
  private readonly maxMessageBytes: number;
  private readonly limits: EnvelopeLimits;
  private readonly pingIntervalMs: number;
  private readonly pongTimeoutMs: number;
  private readonly reconnectEnabled: boolean;
  private readonly stableAfterMs: number;
  private readonly maxAttempts: number;
  private readonly shouldReconnect: (code: number, reason: string) => boolean;
  private readonly highWaterMark: number;
  private readonly backoff: Backoff;
  private readonly outbox: Outbox;

  private ws: WebSocket | null = null;
  private _state: ClientState = 'connecting';
  private _version: EnvelopeVersion | null = null;
  private _protocol = '';
  private _backpressure = false;
  /** Sequence number the outstanding ping confirms, and when it went out. */
  private ping: { seq: number; sentAt: number } | null = null;
  private pingTimer: NodeJS.Timeout | null = null;
  private pongTimer: NodeJS.Timeout | null = null;
  private stableTimer: NodeJS.Timeout | null = null;
  private redialTimer: NodeJS.Timeout | null = null;
  private pumpScheduled = false;
  private waitingForDrain = false;
  /** Close code and reason from the proxy's envelope close frame, if one came. */
  private peerClose: { code: number; reason: string } | null = null;
  private closePromise: Promise<void> | null = null;
  private closeWaiter: (() => void) | null = null;
  private readonly counters = {
    accepted: 0, rejected: 0, sent: 0, resent: 0, confirmed: 0, received: 0, connections: 0,
    backpressureEvents: 0, errorFrames: 0, bytesOut: 0, bytesIn: 0, resumes: 0, replayedFrames: 0, lostContinuity: 0,
  };
  private readonly resumeEnabled: boolean;
  /**
   * The session, with `resume`: its token (null before the proxy gave one), the outbox
   * sequence number before its first data frame (its frame n is outbox seq base + n), the
   * upstream's data frames received in it and the last count acknowledged.
   */
  private session: { token: string; base: number; received: number; acked: number; unackedBytes: number; ackBytes: number } | null = null;
  /** A resume was asked on this connection: data waits for the proxy's answer. */
  private awaitingResume = false;
  /** Resumes in a row the proxy did not answer. */
  private silentResumes = 0;
  private ackTimer: NodeJS.Timeout | null = null;
  private resumeTimer: NodeJS.Timeout | null = null;

  constructor(url: string, options: ConnectOptions = {}) {
    super();
    this.url = url;
    const versions = options.protocols ?? ['v2', 'v1'];
    this.offered = versions.map((v) => ENVELOPE_PROTOCOLS[v]);
    this.headers = options.headers ?? {};
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000;
    this.maxMessageBytes = options.maxMessageBytes ?? 1024 * 1024;
    this.limits = { maxPayloadBytes: this.maxMessageBytes };
    this.pingIntervalMs = options.heartbeat?.pingIntervalMs ?? 15_000;
    this.pongTimeoutMs = options.heartbeat?.pongTimeoutMs ?? 30_000;
    const rc = options.reconnect === false ? null : options.reconnect ?? {};
    this.reconnectEnabled = rc !== null;
    this.backoff = new Backoff(rc?.initialDelayMs ?? 500, rc?.maxDelayMs ?? 30_000);
    this.stableAfterMs = rc?.stableAfterMs ?? 10_000;
    this.maxAttempts = rc?.maxAttempts ?? Number.POSITIVE_INFINITY;
    this.shouldReconnect = rc?.shouldReconnect ?? defaultShouldReconnect;
    this.highWaterMark = options.highWaterMark ?? 1024 * 1024;
    this.resumeEnabled = options.resume === true;
    this.outbox = new Outbox(
      { maxMessages: options.queue?.maxMessages ?? 10_000, maxBytes: options.queue?.maxBytes ?? 64 * 1024 * 1024 },
      options.persist?.dir,
    );
    // Dial on the next turn so that listeners added right after connect() see every event.
    process.nextTick(() => this.dial());
  }

  /** Where the client is: connecting, open, reconnecting (waiting or dialling again), closing, closed. */
  get state(): ClientState {
    return this._state;
  }

  /** The version spoken on the current connection (null before the first open). */
  get version(): EnvelopeVersion | null {
    return this._version;
  }

  /** The subprotocol the proxy answered (`sluice.v2`, `sluice.v1`, or '' for a legacy connection). */
  get protocol(): string {
    return this._protocol;
  }

  /** True while the proxy's backpressure signal is up (sends wait in the outbox). */
  get backpressure(): boolean {
    return this._backpressure;
  }

  /**
   * Queue a message for the upstream (a string is sent as its UTF-8 bytes). Returns false
   * when the outbox is full: the message was not accepted. Throws SLUICE_ERR_CLIENT_CLOSED
   * after close() and SLUICE_ERR_CLIENT_MESSAGE_TOO_BIG over `maxMessageBytes`.
   */
  send(data: string | Uint8Array): boolean {
    if (this._state === 'closing' || this._state === 'closed') {
      throw new SluiceError('SLUICE_ERR_CLIENT_CLOSED', 'send() after close(): create a new client');
    }
    // Copied: the caller may reuse its buffer, and the outbox may hold this one for a while.
    const payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data);
    if (payload.length > this.maxMessageBytes) {
      throw new SluiceError('SLUICE_ERR_CLIENT_MESSAGE_TOO_BIG',
        `message of ${payload.length} bytes over maxMessageBytes ${this.maxMessageBytes} (the proxy would close with 1009)`, 1009);
    }
    if (!this.outbox.push(payload)) {
      this.counters.rejected++;
      return false;
    }
    this.counters.accepted++;
    this.schedulePump();
    return true;
  }

  /**
   * Send a control frame now (not queued; false when not connected). The payload must be
   * a JSON object; the proxy hands it to its hooks.
   */
  sendControl(payload: Record<string, unknown>, flags = 0): boolean {
    if (this._state !== 'open' || this.ws === null) return false;
    this.write(EnvelopeType.Control, flags, Buffer.from(JSON.stringify(payload), 'utf8'));
    return true;
  }

  /** Resolves when every message accepted so far is on disk (at once without `persist`). */
  flush(): Promise<void> {
    return this.outbox.flush();
  }

  /** Resolves when the proxy has confirmed every message accepted so far (the outbox is empty). */
  drain(): Promise<void> {
    return this.outbox.whenEmpty();
  }

  /**
   * Close for good: stop redialling; with `drainMs`, first wait that long at most for the
   * outbox to empty; send an envelope close frame and close the WebSocket with `code` and
   * `reason`; flush and close the disk log (unconfirmed messages stay there for the next
   * start). Resolves when all of that is done; calling it again returns the same promise.
   */
  close(code = 1000, reason = '', options: { drainMs?: number } = {}): Promise<void> {
    if (this.closePromise !== null) return this.closePromise;
    this.closePromise = this.doClose(code, reason, options.drainMs ?? 0);
    return this.closePromise;
  }

  private async doClose(code: number, reason: string, drainMs: number): Promise<void> {
    if (drainMs > 0 && this._state === 'open' && this.outbox.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.outbox.whenEmpty(), new Promise<void>((r) => { timer = setTimeout(r, drainMs); })]);
      clearTimeout(timer);
    }
    this._state = 'closing';
    this.clearTimers();
    if (this.redialTimer !== null) {
      clearTimeout(this.redialTimer);
      this.redialTimer = null;
    }
    const ws = this.ws;
    if (ws !== null && ws.readyState !== WebSocket.CLOSED) {
      await new Promise<void>((resolve) => {
        this.closeWaiter = resolve;
        const wireCode = isWireCloseCode(code) ? code : 1000;
        if (ws.readyState === WebSocket.OPEN) {
          this.write(EnvelopeType.Close, 0, closePayload(wireCode, reason));
          // The same code and reason on the WebSocket, the reason cut to fit its 123 bytes.
          ws.close(wireCode, closePayload(wireCode, reason).subarray(2).toString('utf8'));
        } else {
          ws.terminate();
        }
        // A peer that never answers the close handshake does not hold close() up.
        setTimeout(() => ws.terminate(), 2000).unref();
      });
    }
    await this.outbox.close();
    this._state = 'closed';
    this.emit('close', { code, reason });
  }

  /** Counters, the outbox and the connection. */
  stats(): ClientStats {
    const o = this.outbox.stats();
    return {
      state: this._state, version: this._version, ...this.counters,
      queued: o.queued, queuedBytes: o.queuedBytes, unconfirmed: o.unconfirmed, recovered: o.recovered,
    };
  }

  // ---- connection lifecycle ------------------------------------------------------------

  private dial(): void {
    if (this._state === 'closing' || this._state === 'closed') return;
    this.redialTimer = null;
    this.peerClose = null;
    // `new` opts a new session in; a token asks for the session it names.
    const headers = !this.resumeEnabled ? this.headers : {
      ...this.headers,
      'Sluice-Resume': this.session !== null ? `${this.session.token}; received=${this.session.received}` : 'new',
    };
    this.awaitingResume = this.session !== null;
    const ws = new WebSocket(this.url, this.offered, {
      headers,
      handshakeTimeout: this.handshakeTimeoutMs,
      perMessageDeflate: false,
      // Room for the envelope around a full-size payload: 8 bytes on v2, base64 + fields on v1.
      maxPayload: Math.ceil((this.maxMessageBytes * 4) / 3) + 4096,
    });
    ws.binaryType = 'nodebuffer';
    this.ws = ws;
    ws.on('open', () => this.onOpen(ws));
    ws.on('message', (data: RawData, isBinary: boolean) => this.onMessage(ws, data as Buffer, isBinary));
    ws.on('close', (code: number, reason: Buffer) => this.onClose(ws, code, reason.toString('utf8')));
    ws.on('error', (err: Error) => {
      const status = /Unexpected server response: (\d+)/.exec(err.message);
      if (status !== null) (ws as unknown as { sluiceStatus: number }).sluiceStatus = Number(status[1]);
      this.report(new SluiceError('SLUICE_ERR_CLIENT_CONNECTION', `${this.url}: ${err.message}`, undefined, { cause: err }));
    });
  }

  private onOpen(ws: WebSocket): void {
    if (ws !== this.ws) return;
    this._protocol = ws.protocol;
    this._version = ws.protocol === ENVELOPE_PROTOCOLS.v2 ? 'v2' : 'v1';
    this._state = 'open';
    this.counters.connections++;
    this.stableTimer = setTimeout(() => this.backoff.reset(), this.stableAfterMs);
    this.pingTimer = setInterval(() => this.heartbeat(), this.pingIntervalMs);
    if (this.resumeEnabled) {
      // At least once a second while the upstream's frames are unacknowledged.
      this.ackTimer = setInterval(() => this.sendAck(false), 1000);
      if (this.awaitingResume) {
        // No answer: the connection is dropped and the resume asked again (nothing was sent on
        // it, so nothing can arrive twice); after two silent tries the route is taken to have
        // lost `resume` (a reload) and the session is given up.
        this.resumeTimer = setTimeout(() => {
          this.resumeTimer = null;
          if (++this.silentResumes >= 2) this.onResumeAnswer({ resumed: false, reason: 'the proxy did not answer the resume' });
          else this.ws?.terminate();
        }, this.handshakeTimeoutMs);
      } else {
        this.session = null;
        this.sessionBase = this.outbox.nextSeq - 1;
      }
    }
    this.emit('open', { protocol: this._protocol, version: this._version });
    this.pump();
  }

  /** The proxy's `{"resumed":...}`: the session goes on, or a new one began. */
  private onResumeAnswer(p: Record<string, unknown>): void {
    if (!this.awaitingResume) return;
    this.awaitingResume = false;
    if (p.resumed !== undefined) this.silentResumes = 0;
    if (this.resumeTimer !== null) {
      clearTimeout(this.resumeTimer);
      this.resumeTimer = null;
    }
    const s = this.session;
    if (p.resumed === true && s !== null && typeof p.received === 'number') {
      // The proxy has our frames up to `received`: the rest go again, from there.
      this.counters.confirmed += this.outbox.acknowledge(s.base + p.received);
      const replayed = typeof p.replayed === 'number' ? p.replayed : 0;
      this.counters.resumes++;
      this.counters.replayedFrames += replayed;
      this.emit('resumed', { resumed: true, replayed });
    } else {
      // A new session: its frames are numbered from the next message on.
      this.session = null;
      this.sessionBase = this.outbox.nextSeq - 1;
      this.counters.lostContinuity++;
      this.emit('resumed', { resumed: false, reason: typeof p.reason === 'string' ? p.reason : 'continuity lost' });
    }
    this.pump();
  }

  /** Tell the proxy how many of the upstream's frames we have (`force`: even when unchanged). */
  private sendAck(force: boolean): void {
    const s = this.session;
    if (s === null || this.awaitingResume || this.ws === null || this.ws.readyState !== WebSocket.OPEN) return;
    if (!force && s.received === s.acked) return;
    s.acked = s.received;
    s.unackedBytes = 0;
    this.write(EnvelopeType.Control, 0, Buffer.from(`{"ack":${s.received}}`));
  }

  private onClose(ws: WebSocket, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.ws = null;
    this.clearTimers();
    this.ping = null;
    this.waitingForDrain = false;
    const resend = this.outbox.rewind();
    if (resend > 0) this.counters.resent += resend;
    // A close frame either way ends the session for good; only a lost connection (1006) may resume.
    if (this.peerClose !== null || code !== 1006) this.session = null;
    if (this._backpressure) {
      // A new connection starts with a new channel: the signal does not carry over.
      this._backpressure = false;
      this.emit('backpressure', false);
    }
    if (this.closeWaiter !== null) {
      const w = this.closeWaiter;
      this.closeWaiter = null;
      w();
      return;
    }
    if (this._state === 'closing' || this._state === 'closed') return;
    // The envelope close frame carries the upstream's code; a refused handshake, its status.
    const status = (ws as unknown as { sluiceStatus?: number }).sluiceStatus;
    const why = this.peerClose ?? { code: status ?? code, reason: status !== undefined ? `HTTP ${status}` : reason };
    const attempt = this.backoff.attempts + 1;
    if (!this.reconnectEnabled || !this.shouldReconnect(why.code, why.reason) || attempt > this.maxAttempts) {
      void this.close(why.code, why.reason);
      return;
    }
    const delayMs = this.backoff.next();
    this._state = 'reconnecting';
    this.emit('reconnecting', { attempt, delayMs, code: why.code, reason: why.reason });
    this.redialTimer = setTimeout(() => this.dial(), delayMs);
  }

  private clearTimers(): void {
    for (const t of [this.pingTimer, this.pongTimer, this.stableTimer, this.ackTimer, this.resumeTimer]) if (t !== null) clearTimeout(t);
    this.pingTimer = this.pongTimer = this.stableTimer = this.ackTimer = this.resumeTimer = null;
  }

  // ---- frames in -----------------------------------------------------------------------

  private onMessage(ws: WebSocket, data: Buffer, isBinary: boolean): void {
    if (ws !== this.ws || this._version === null) return;
    this.counters.bytesIn += data.length;
    const frame = decodeEnvelope(this._version, data, isBinary, this.limits);
    if (typeof frame === 'number') {
      this.report(new SluiceError('SLUICE_ERR_CLIENT_PROTOCOL', `malformed envelope from the proxy (closing with ${frame})`, frame));
      ws.close(frame);
      return;
    }
    switch (frame.type) {
      case EnvelopeType.Data:
        this.counters.received++;
        if (this.session !== null) {
          // Acknowledged in batches: every 64 frames or half the proxy's replay buffer, and once a second.
          const s = this.session;
          s.unackedBytes += frame.payload.length;
          if (++s.received - s.acked >= 64 || s.unackedBytes >= s.ackBytes) this.sendAck(false);
        }
        this.emit('message', frame.payload, frame.flags);
        break;
      case EnvelopeType.Ping:
        this.write(EnvelopeType.Pong, 0, frame.payload);
        this.sendAck(true);
        break;
      case EnvelopeType.Pong:
        this.onPong();
        break;
      case EnvelopeType.Close: {
        const c = parseClosePayload(frame.payload);
        if (c !== null) this.peerClose = c;
        break;
      }
      case EnvelopeType.Error:
        this.counters.errorFrames++;
        this.report(new SluiceError('SLUICE_ERR_CLIENT_PEER_ERROR', `error frame from the proxy: ${frame.payload.toString('utf8')}`));
        break;
      default: {
        const payload = parseControlPayload(frame.payload) ?? {};
        if ((frame.flags & EnvelopeFlag.Backpressure) !== 0) this.setBackpressure(true);
        else if (payload.backpressure === false) this.setBackpressure(false);
        else if (this.resumeEnabled && this.onResumeControl(payload)) return;
        else this.emit('control', payload, frame.flags);
      }
    }
  }

  /** The resume protocol's control frames (token, resumed, ack); false for any other. */
  private onResumeControl(p: Record<string, unknown>): boolean {
    if (typeof p.ack === 'number' && Object.keys(p).length === 1) {
      if (this.session !== null) this.counters.confirmed += this.outbox.acknowledge(this.session.base + p.ack);
      return true;
    }
    if (typeof p.resumed === 'boolean') {
      this.onResumeAnswer(p);
      return true;
    }
    const r = p.resume as { token?: unknown; bufferBytes?: unknown } | undefined;
    if (r !== undefined && typeof r === 'object' && r !== null && typeof r.token === 'string') {
      // A new session (a first connection, or after continuity was lost): frames count from here.
      const ackBytes = typeof r.bufferBytes === 'number' && r.bufferBytes > 0 ? r.bufferBytes / 2 : 256 * 1024;
      this.session = { token: r.token, base: this.sessionBase, received: 0, acked: 0, unackedBytes: 0, ackBytes };
      return true;
    }
    return false;
  }

  /** On a new session's connection: the outbox seq before its first data frame. */
  private sessionBase = 0;

  private setBackpressure(on: boolean): void {
    if (on === this._backpressure) return;
    this._backpressure = on;
    if (on) this.counters.backpressureEvents++;
    this.emit('backpressure', on);
    if (!on) this.pump();
  }

  // ---- frames out ----------------------------------------------------------------------

  private write(type: number, flags: number, payload: Uint8Array, cb?: (err?: Error) => void): void {
    const m = encodeEnvelope(this._version ?? 'v1', type, flags, payload);
    this.counters.bytesOut += typeof m.data === 'string' ? Buffer.byteLength(m.data) : m.data.length;
    this.ws!.send(m.data, { binary: m.binary }, cb);
  }

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    // Everything sent in one turn goes out before one confirmation ping.
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Write unsent messages until the outbox is empty, the socket is full, or backpressure is up. */
  private pump(): void {
    const ws = this.ws;
    if (this._state !== 'open' || ws === null || ws.readyState !== WebSocket.OPEN) return;
    if (this._backpressure || this.waitingForDrain || this.awaitingResume) return;
    let wrote = false;
    while (this.outbox.hasUnsent()) {
      const e = this.outbox.takeUnsent()!;
      this.counters.sent++;
      wrote = true;
      if (ws.bufferedAmount + e.payload.length >= this.highWaterMark) {
        // Resume when this write has reached the kernel.
        this.waitingForDrain = true;
        this.write(EnvelopeType.Data, 0, e.payload, () => {
          this.waitingForDrain = false;
          this.schedulePump();
        });
        break;
      }
      this.write(EnvelopeType.Data, 0, e.payload);
    }
    if (wrote && this.ping === null) this.sendPing();
  }

  private heartbeat(): void {
    if (this.ping === null) this.sendPing();
  }

  private sendPing(): void {
    if (this.ws === null || this.ws.readyState !== WebSocket.OPEN) return;
    this.ping = { seq: this.outbox.sentSeq, sentAt: Date.now() };
    this.write(EnvelopeType.Ping, 0, Buffer.alloc(0));
    this.pongTimer = setTimeout(() => {
      this.report(new SluiceError('SLUICE_ERR_CLIENT_PONG_TIMEOUT', `no pong within ${this.pongTimeoutMs} ms: reconnecting`));
      this.ws?.terminate();
    }, this.pongTimeoutMs);
  }

  private onPong(): void {
    const ping = this.ping;
    if (ping === null) return; // unsolicited
    this.ping = null;
    if (this.pongTimer !== null) {
      clearTimeout(this.pongTimer);
      this.pongTimer = null;
    }
    if (ping.seq > 0) this.counters.confirmed += this.outbox.confirmThrough(ping.seq);
    this.sendAck(true);
    // Messages sent while that ping was out need a ping of their own.
    if (this.outbox.sentSeq > ping.seq) this.sendPing();
  }

  private report(err: SluiceError): void {
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }
}
