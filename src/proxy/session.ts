/**
 * A session pairs one client WebSocket (uWS) with one upstream socket driven by the
 * native codec. It owns both directions of one proxied connection: forwarding, close
 * handshakes, size limits, heartbeats and flow control.
 *
 * Hot-path shape: every field is set in the constructor; per-message work is integer
 * work plus one codec call per upstream chunk (not per frame) and one append per client
 * message; no closures are created per message; writes to the upstream are flushed once
 * per event-loop turn by the proxy (see `SessionHost.markDirty`).
 */
import type net from 'node:net';
import {
  createFrameEncoder,
  createFrameParser,
  isUtf8,
  acquire,
  release,
  CODEC_ERRORS,
  DESCRIPTOR_WORDS,
  Desc,
  Opcode,
  type FrameEncoder,
  type FrameParser,
} from '../codec/index.js';
import type { ProxyCounters } from '../metrics/counters.js';
import {
  closePayload as envelopeClosePayload,
  decodeEnvelope,
  encodeEnvelope,
  parseClosePayload,
  type EnvelopeVersion,
} from '../protocol/index.js';
import { EnvelopeFlag, EnvelopeType } from '../codec/types.js';
import type { MessageRateLimiter } from '../policy/index.js';
import type { RouteConfig, ProxyConfig } from '../config/types.js';
import type { UWS } from '../uws.js';
import type { Upstream } from './balancer.js';

/** What uWS keeps for us on each client WebSocket. */
export interface ClientData {
  session: Session;
}

/** The proxy as a session sees it. */
export interface SessionHost {
  readonly counters: ProxyCounters;
  readonly config: ProxyConfig;
  /** Coarse clock (ms), advanced by the proxy's sweep timer; cheap to read per message. */
  readonly clock: number;
  /** Queue this session for the once-per-turn flush of its upstream writes. */
  markDirty(s: Session): void;
  /** Called once when both sides are closed. */
  sessionEnded(s: Session): void;
  /** Sustained backpressure started (logged and counted by the host). */
  backpressureEvent(s: Session, fill: number): void;
  /** An envelope control frame from the client (JSON already parsed). */
  controlFrame(s: Session, payload: unknown): void;
  /** An envelope error frame from the client. */
  errorFrame(s: Session, reason: string): void;
}

/** Which side ended the session first. */
export type Closer = 'client' | 'upstream' | 'proxy';

const EMPTY = Buffer.alloc(0);
/** How long we wait for the upstream's close reply before dropping the TCP connection. */
const CLOSE_REPLY_TIMEOUT_MS = 2000;

/** Close codes a peer may legitimately put on the wire (RFC 6455 §7.4, IANA registry). */
export function isValidWireCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

function closePayload(code: number, reason: string): Buffer {
  if (code === 0) return EMPTY;
  return envelopeClosePayload(code, reason); // reason cut to 123 bytes on a character boundary
}

/** `reason` cut to at most 123 UTF-8 bytes without splitting a character (RFC 6455 §5.5). */
export function closeReason(reason: string): string {
  if (Buffer.byteLength(reason) <= 123) return reason;
  return envelopeClosePayload(1000, reason).subarray(2).toString('utf8');
}

export class Session {
  readonly id: number;
  readonly host: SessionHost;
  readonly route: RouteConfig;
  readonly routeKey: string;
  readonly upstream: Upstream;
  readonly socket: net.Socket;
  readonly parser: FrameParser;
  readonly encoder: FrameEncoder;
  readonly remoteAddress: string;
  readonly origin: string;
  readonly protocol: string;
  readonly startedAt: number;
  readonly handshakeMs: number;
  /** Envelope version spoken with the client, or null on a transparent route. */
  readonly envelope: EnvelopeVersion | null;
  /** Per-connection message and byte rate (null when not configured). */
  readonly rateLimiter: MessageRateLimiter | null;
  /** When the client's credentials expire (ms epoch), 0 when they do not. */
  readonly expiresAt: number;
  /** The message limit this session was opened with (a reload does not change it mid-session). */
  readonly maxFrameBytes: number;
  ws: UWS.WebSocket<ClientData> | null = null;

  // Lifecycle.
  clientOpen = false;
  /** We may still send frames to the upstream (no close frame sent yet). */
  upstreamOpen = true;
  socketAlive = true;
  ended = false;
  closedFirst: Closer | '' = '';
  clientCloseCode = 0;
  clientCloseReason = '';
  upstreamCloseCode = 0;
  upstreamCloseReason = '';
  closeTimer: NodeJS.Timeout | null = null;

  // Upstream → client.
  private chunk: Buffer = EMPTY;
  private readonly deliverCorked: () => void;
  pausedForClient = false;
  private fragOpcode = 0;
  private assembly: Buffer | null = null;
  private assemblyLen = 0;

  // Client → upstream channel.
  dirty = false;
  /** Messages encoded while the upstream socket's buffer was full (reset on drain). */
  queued = 0;
  bpSince = 0;
  bpReported = false;

  // Heartbeats (coarse clock).
  clientSeen: number;
  upstreamSeen: number;
  lastPing: number;

  // Per-session statistics for the end-of-session log.
  msgsIn = 0;
  msgsOut = 0;
  bytesIn = 0;
  bytesOut = 0;

  constructor(
    id: number,
    host: SessionHost,
    route: RouteConfig,
    routeKey: string,
    upstream: Upstream,
    socket: net.Socket,
    setDataHandler: (fn: (chunk: Buffer) => void) => void,
    meta: {
      remoteAddress: string; origin: string; protocol: string; handshakeMs: number;
      envelope: EnvelopeVersion | null; rateLimiter: MessageRateLimiter | null; expiresAt: number;
    },
  ) {
    this.id = id;
    this.host = host;
    this.route = route;
    this.routeKey = routeKey;
    this.upstream = upstream;
    this.socket = socket;
    const limits = host.config.limits;
    this.parser = createFrameParser({
      role: 'client',
      maxFrameBytes: limits.maxFrameBytes,
      maxMessageBytes: limits.maxFrameBytes,
      maxFragments: 1024,
      allowRsv1: false,
    });
    this.encoder = createFrameEncoder('client', 16 * 1024);
    this.remoteAddress = meta.remoteAddress;
    this.origin = meta.origin;
    this.protocol = meta.protocol;
    this.handshakeMs = meta.handshakeMs;
    this.envelope = meta.envelope;
    this.rateLimiter = meta.rateLimiter;
    this.expiresAt = meta.expiresAt;
    this.maxFrameBytes = limits.maxFrameBytes;
    this.startedAt = Date.now();
    // Exact time here: the coarse clock may be up to a second old, which would make the
    // first heartbeat timeout fire early.
    this.clientSeen = this.startedAt;
    this.upstreamSeen = this.startedAt;
    this.lastPing = this.startedAt;
    this.deliverCorked = () => this.deliver();
    // upstream.sessions was counted when the dial started (least_conn sees dials in flight).

    // Nothing is read until the client's socket is open (attach); the 'data' listener
    // below must not switch the stream to flowing before that.
    socket.pause();
    setDataHandler((chunk: Buffer) => this.onUpstreamData(chunk));
    socket.on('drain', () => this.onUpstreamDrain());
    socket.on('error', () => {}); // 'close' follows and does the work
    socket.on('close', () => this.onSocketClosed());
  }

  /** The client's WebSocket is open (uWS `open`). `head` holds frames that came with the 101. */
  attach(ws: UWS.WebSocket<ClientData>, head: Buffer): void {
    this.ws = ws;
    this.clientOpen = true;
    if (head.length > 0) this.onUpstreamData(head);
    if (this.socketAlive && !this.pausedForClient) this.socket.resume();
  }

  // ---------------------------------------------------------------- upstream → client

  private onUpstreamData(chunk: Buffer): void {
    this.upstreamSeen = this.host.clock;
    if (!this.clientOpen) {
      // Client already gone: we only wait for the upstream's close reply.
      this.chunk = chunk;
      this.deliver();
      return;
    }
    this.chunk = chunk;
    this.ws!.cork(this.deliverCorked);
    if (this.clientOpen && this.ws!.getBufferedAmount() > this.host.config.limits.highWaterMark && !this.pausedForClient) {
      this.pausedForClient = true;
      this.socket.pause();
    }
  }

  /** Parse every complete frame of `this.chunk` and act on it (inside one cork). */
  private deliver(): void {
    const chunk = this.chunk;
    const parser = this.parser;
    const d = parser.descriptors;
    let offset = 0;
    for (;;) {
      let n = parser.parse(chunk, offset);
      // On an error the frames before the bad one are still valid (state[0]): deliver them.
      const errno = n < 0 ? -n : 0;
      if (errno !== 0) n = parser.state[0];
      for (let i = 0; i < n && this.socketAlive; i++) {
        const base = i * DESCRIPTOR_WORDS;
        const info = d[base];
        const src = (info & Desc.CARRY) !== 0 ? parser.carry : chunk;
        const start = d[base + 1];
        this.onUpstreamFrame(info, src.subarray(start, start + d[base + 2]));
      }
      if (errno !== 0) {
        if (this.socketAlive) this.upstreamProtocolError(errno);
        break;
      }
      const resume = parser.state[1];
      if (resume < 0 || !this.socketAlive) break;
      offset = resume;
    }
    this.chunk = EMPTY;
  }

  private onUpstreamFrame(info: number, payload: Buffer): void {
    const op = info & Desc.OPCODE_MASK;
    const fin = (info & Desc.FIN) !== 0;
    switch (op) {
      case Opcode.Text:
      case Opcode.Binary:
        if (fin) {
          this.toClient(op, payload);
        } else {
          this.fragOpcode = op;
          this.appendFragment(payload);
        }
        return;
      case Opcode.Continuation:
        this.appendFragment(payload);
        if (fin) {
          const whole = this.assembly!.subarray(0, this.assemblyLen);
          this.toClient(this.fragOpcode, whole);
          release(this.assembly!);
          this.assembly = null;
          this.assemblyLen = 0;
        }
        return;
      case Opcode.Ping:
        this.host.counters.message('out', 'ping', payload.length);
        if (this.upstreamOpen) {
          this.encoder.frame(Opcode.Pong, payload, true, false);
          this.host.markDirty(this);
        }
        return;
      case Opcode.Pong:
        this.host.counters.message('out', 'pong', payload.length);
        return;
      case Opcode.Close:
        this.host.counters.message('out', 'close', payload.length);
        this.onUpstreamCloseFrame(payload);
        return;
    }
  }

  /** Fragmented upstream messages reach the client whole (bounded by the message limit). */
  private appendFragment(payload: Buffer): void {
    const need = this.assemblyLen + payload.length;
    if (this.assembly === null || need > this.assembly.length) {
      const next = acquire(Math.max(need, this.assembly === null ? 4096 : this.assembly.length * 2));
      if (this.assembly !== null) {
        this.assembly.copy(next, 0, 0, this.assemblyLen);
        release(this.assembly);
      }
      this.assembly = next;
    }
    payload.copy(this.assembly, this.assemblyLen);
    this.assemblyLen = need;
  }

  private toClient(op: number, payload: Buffer): void {
    if (!this.clientOpen) return;
    const text = op === Opcode.Text;
    if (text && !isUtf8(payload)) {
      this.fail('upstream', 1007, 'upstream sent invalid UTF-8', 1007, 'invalid UTF-8 in a text message');
      return;
    }
    this.msgsOut++;
    this.bytesOut += payload.length;
    this.host.counters.dataOut(!text, payload.length);
    if (this.envelope !== null) {
      // Envelope routes: the upstream's message becomes one data frame for the client.
      this.sendEnvelope(EnvelopeType.Data, EnvelopeFlag.Final, payload);
      return;
    }
    if (this.ws!.send(payload, !text, this.route.compression) === 2) {
      // uWS dropped it: its maxBackpressure is set above what pausing allows, so this
      // means a bug or a misconfiguration; count it rather than lose it silently.
      this.host.counters.dropped.backpressure++;
    }
  }

  private onUpstreamCloseFrame(payload: Buffer): void {
    let code = 0;
    let reason = '';
    if (payload.length === 1) {
      this.upstreamProtocolError(0, 'close frame with a 1-byte payload');
      return;
    }
    if (payload.length >= 2) {
      code = payload.readUInt16BE(0);
      const r = payload.subarray(2);
      if (!isValidWireCloseCode(code)) {
        this.upstreamProtocolError(0, `invalid close code ${code}`);
        return;
      }
      if (!isUtf8(r)) {
        this.fail('upstream', 1007, 'upstream close reason is not UTF-8', 1007, 'invalid UTF-8 in close reason');
        return;
      }
      reason = r.toString('utf8');
    }
    this.upstreamCloseCode = code === 0 ? 1005 : code;
    this.upstreamCloseReason = reason;
    if (this.upstreamOpen) {
      // The upstream starts the close: echo it, then tell the client the same.
      if (this.closedFirst === '') this.closedFirst = 'upstream';
      this.sendUpstreamClose(code, reason);
      this.closeClient(code, reason);
    } else {
      // The reply to our close: the handshake is done.
      this.socket.end();
    }
  }

  private upstreamProtocolError(errno: number, detail?: string): void {
    const e = errno > 0 ? CODEC_ERRORS[errno] : undefined;
    const upstreamCode = e ? e.closeCode : 1002;
    if (e && e.closeCode === 1009) {
      this.fail('upstream', 1009, 'message over the size limit', 1009, 'upstream message over the size limit');
    } else {
      this.fail('upstream', upstreamCode, e ? e.message : (detail ?? 'protocol error'), 1014, 'upstream protocol error');
    }
  }

  /**
   * End both sides because `culprit` misbehaved: it gets `culpritCode`, its partner
   * `partnerCode` with a reason that says why.
   */
  fail(culprit: 'client' | 'upstream', culpritCode: number, culpritReason: string, partnerCode: number, partnerReason: string): void {
    if (this.closedFirst === '') this.closedFirst = 'proxy';
    if (culprit === 'upstream') {
      this.upstreamCloseCode = culpritCode;
      this.upstreamCloseReason = culpritReason;
      this.sendUpstreamClose(culpritCode, culpritReason);
      this.closeClient(partnerCode, partnerReason);
    } else {
      this.closeClient(culpritCode, culpritReason);
      this.sendUpstreamClose(partnerCode, partnerReason);
    }
  }

  // ---------------------------------------------------------------- client → upstream

  /** A message from the client (uWS `message`); `data` is valid only during this call. */
  fromClient(data: ArrayBuffer, isBinary: boolean): void {
    this.clientSeen = this.host.clock;
    // Every client message counts against the rate, whatever it carries (data, or an
    // envelope ping, error or control frame).
    if (this.rateLimiter !== null && !this.rateLimiter.allow(data.byteLength, Date.now())) {
      this.fail('client', 1008, 'message rate limit', 1001, 'client closed: over its message rate');
      return;
    }
    if (this.envelope !== null) {
      this.fromEnvelopeClient(data, isBinary);
      return;
    }
    const len = data.byteLength;
    if (len > this.maxFrameBytes) {
      this.host.counters.dropped.too_big++;
      this.fail('client', 1009, `message over ${this.maxFrameBytes} bytes`, 1009, 'client message over the size limit');
      return;
    }
    this.toUpstream(new Uint8Array(data), isBinary);
  }

  /** One envelope frame from the client (validated before anything is allocated for it). */
  private fromEnvelopeClient(data: ArrayBuffer, isBinary: boolean): void {
    const f = decodeEnvelope(this.envelope!, new Uint8Array(data), isBinary, { maxPayloadBytes: this.maxFrameBytes });
    if (typeof f === 'number') {
      if (f === 1009) {
        this.host.counters.dropped.too_big++;
        this.fail('client', 1009, `envelope payload over ${this.maxFrameBytes} bytes`, 1009, 'client message over the size limit');
      } else {
        this.fail('client', f, f === 1007 ? 'invalid envelope payload' : 'malformed envelope', 1001, 'client sent a malformed envelope');
      }
      return;
    }
    switch (f.type) {
      case EnvelopeType.Data:
        this.toUpstream(f.payload, true);
        return;
      case EnvelopeType.Ping:
        this.host.counters.message('in', 'ping', f.payload.length);
        this.sendEnvelope(EnvelopeType.Pong, 0, f.payload);
        return;
      case EnvelopeType.Pong:
        this.host.counters.message('in', 'pong', f.payload.length);
        return;
      case EnvelopeType.Close: {
        const c = parseClosePayload(f.payload);
        if (c === null || !isValidWireCloseCode(c.code)) {
          this.fail('client', 1002, 'malformed envelope close', 1001, 'client sent a malformed envelope');
          return;
        }
        this.host.counters.message('in', 'close', f.payload.length);
        if (this.closedFirst === '') this.closedFirst = 'client';
        this.sendUpstreamClose(c.code, c.reason);
        this.closeClient(c.code, c.reason);
        return;
      }
      case EnvelopeType.Error:
        this.host.errorFrame(this, f.payload.toString('utf8'));
        return;
      case EnvelopeType.Control: {
        let json: unknown;
        try {
          json = JSON.parse(f.payload.toString('utf8'));
        } catch {
          this.fail('client', 1007, 'control frame is not JSON', 1001, 'client sent a malformed envelope');
          return;
        }
        this.host.controlFrame(this, json);
        return;
      }
    }
  }

  /** Send one envelope frame to the client (envelope routes only). */
  sendEnvelope(type: number, flags: number, payload: Uint8Array): void {
    if (!this.clientOpen || this.envelope === null) return;
    const m = encodeEnvelope(this.envelope, type, flags, payload);
    if (this.ws!.send(m.data, m.binary, this.route.compression) === 2) this.host.counters.dropped.backpressure++;
  }

  /** Forward one client message's payload to the upstream (size already checked). */
  private toUpstream(payload: Uint8Array, isBinary: boolean): void {
    const len = payload.length;
    const limits = this.host.config.limits;
    if (!this.upstreamOpen) return;
    if (this.socket.writableNeedDrain) {
      // The channel towards the upstream is filling: apply the route's policy past capacity.
      const bytes = this.socket.writableLength + this.encoder.length + len;
      if (this.queued >= limits.channelCapacity || bytes > limits.channelBytes) {
        if (this.route.backpressure === 'drop') {
          this.host.counters.dropped.backpressure++;
          return;
        }
        this.fail('client', 1013, 'upstream is not keeping up', 1001, 'client closed: upstream not keeping up');
        return;
      }
      this.queued++;
      this.checkBackpressure(Math.max(this.queued / limits.channelCapacity, bytes / limits.channelBytes));
    }
    this.msgsIn++;
    this.bytesIn += len;
    this.host.counters.dataIn(isBinary, len);
    this.encoder.frame(isBinary ? Opcode.Binary : Opcode.Text, payload, true, false);
    if (!this.dirty) this.host.markDirty(this);
  }

  /** Write everything encoded this turn in one write (called by the host's flush). */
  flush(): void {
    this.dirty = false;
    if (!this.socketAlive) return;
    const out = this.encoder.take();
    if (out === null) return;
    this.socket.write(out);
    // The kernel took every byte synchronously: the encoder may reuse its memory, so a
    // steady flow allocates nothing per flush (external allocations drive V8's major GCs;
    // measured with perf at 4 KiB: ~25 % of CPU was major GC before this).
    if (this.socket.writableLength === 0) this.encoder.rewind?.();
  }

  private onUpstreamDrain(): void {
    this.queued = 0;
    this.checkBackpressure(0);
  }

  /** Flow controller: fill >= 80 % for >= 2 s is one sustained-backpressure event. */
  checkBackpressure(fill: number): void {
    if (fill >= 0.8) {
      const now = this.host.clock;
      if (this.bpSince === 0) this.bpSince = now;
      else if (!this.bpReported && now - this.bpSince >= 2000) {
        this.bpReported = true;
        this.host.backpressureEvent(this, fill);
        // Envelope clients get the explicit signal: a control frame with the flag up.
        this.sendEnvelope(EnvelopeType.Control, EnvelopeFlag.Backpressure,
          Buffer.from(`{"backpressure":true,"fill":${Math.round(fill * 100) / 100}}`));
      }
    } else if (this.bpSince !== 0) {
      if (this.bpReported) this.sendEnvelope(EnvelopeType.Control, 0, Buffer.from('{"backpressure":false}'));
      this.bpSince = 0;
      this.bpReported = false;
    }
  }

  /** uWS `drain`: the client caught up; resume reading the upstream. */
  onClientDrain(): void {
    if (this.pausedForClient && this.ws !== null && this.ws.getBufferedAmount() < this.host.config.limits.highWaterMark / 2) {
      this.pausedForClient = false;
      if (this.socketAlive) this.socket.resume();
    }
  }

  onClientPing(bytes: number): void {
    this.clientSeen = this.host.clock;
    this.host.counters.message('in', 'ping', bytes);
    // uWS answers pings itself; they still count against the message and byte rate, or a
    // ping flood would cost us (and the client's pongs) for free.
    if (this.rateLimiter !== null && !this.rateLimiter.allow(bytes, Date.now())) {
      this.fail('client', 1008, 'message rate limit', 1001, 'client closed: over its message rate');
    }
  }

  onClientPong(bytes: number): void {
    this.clientSeen = this.host.clock;
    this.host.counters.message('in', 'pong', bytes);
  }

  /** uWS `close`: the client side is gone (code 1005: no code; 1006: no close frame). */
  onClientClosed(code: number, reason: ArrayBuffer): void {
    const wasOpen = this.clientOpen;
    this.clientOpen = false;
    this.ws = null;
    if (wasOpen) {
      // The client started it (or its connection dropped).
      if (this.closedFirst === '') this.closedFirst = 'client';
      this.host.counters.message('in', 'close', reason.byteLength + (code === 1005 || code === 1006 ? 0 : 2));
      this.clientCloseCode = code;
      this.clientCloseReason = Buffer.from(reason).toString('utf8');
      if (code === 1006) this.sendUpstreamClose(1001, 'client connection lost');
      else if (code === 1005) this.sendUpstreamClose(0, '');
      else this.sendUpstreamClose(code, this.clientCloseReason);
    }
    if (this.pausedForClient && this.socketAlive) {
      this.pausedForClient = false;
      this.socket.resume(); // to read the upstream's close reply
    }
    this.maybeEnd();
  }

  // ---------------------------------------------------------------- closing

  /** Close the client side with `code` (0 = no code) unless it is already closed. */
  closeClient(code: number, reason: string): void {
    if (!this.clientOpen) return;
    this.clientOpen = false;
    this.clientCloseCode = code === 0 ? 1005 : code;
    this.clientCloseReason = reason;
    const ws = this.ws!;
    this.ws = null;
    // Not counted in frames_total: a close the upstream sent was counted when it arrived,
    // and one sluice makes is not a forwarded message.
    if (this.envelope !== null && code !== 0) {
      // The envelope's own close frame first, so an envelope client sees code and reason
      // in its protocol too; then the WebSocket close with the same code.
      const m = encodeEnvelope(this.envelope, EnvelopeType.Close, 0, envelopeClosePayload(code, reason));
      ws.send(m.data, m.binary);
    }
    if (code === 0) ws.end();
    else ws.end(code, closeReason(reason));
    this.maybeEnd();
  }

  /** Send a close frame to the upstream (0 = no code) and wait for its reply. */
  sendUpstreamClose(code: number, reason: string): void {
    if (!this.upstreamOpen) return;
    this.upstreamOpen = false;
    if (!this.socketAlive) return;
    this.encoder.frame(Opcode.Close, closePayload(code, reason), true, false);
    this.flush();
    this.socket.resume();
    this.closeTimer = setTimeout(() => this.socket.destroy(), CLOSE_REPLY_TIMEOUT_MS);
    this.closeTimer.unref();
  }

  /** Heartbeat towards the upstream. */
  sendUpstreamPing(): void {
    if (!this.upstreamOpen || !this.socketAlive) return;
    this.encoder.frame(Opcode.Ping, EMPTY, true, false);
    this.host.markDirty(this);
  }

  /** Drop the client without a close handshake (heartbeat timeout: it does not answer). */
  abortClient(why: string): void {
    if (!this.clientOpen) return;
    if (this.closedFirst === '') this.closedFirst = 'proxy';
    this.sendUpstreamClose(1001, why);
    const ws = this.ws!;
    // Recorded here and closed before uWS's close callback runs, so that callback does not
    // count a close frame the client never sent.
    this.clientOpen = false;
    this.ws = null;
    this.clientCloseCode = 1006;
    this.clientCloseReason = why;
    ws.close(); // uWS calls onClientClosed synchronously; it finds the client already closed
  }

  private onSocketClosed(): void {
    this.socketAlive = false;
    if (this.closeTimer !== null) {
      clearTimeout(this.closeTimer);
      this.closeTimer = null;
    }
    if (this.upstreamOpen) {
      // Vanished without a close frame.
      this.upstreamOpen = false;
      if (this.closedFirst === '') this.closedFirst = 'upstream';
      this.upstreamCloseCode = 1006;
      this.closeClient(1014, 'upstream went away');
    }
    this.maybeEnd();
  }

  private maybeEnd(): void {
    if (this.ended || this.clientOpen || this.socketAlive) return;
    this.ended = true;
    this.upstream.sessions--;
    if (this.assembly !== null) {
      release(this.assembly);
      this.assembly = null;
    }
    this.host.sessionEnded(this);
  }
}
