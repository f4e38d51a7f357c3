/**
 * A session pairs two legs, the client's socket and the upstream's, each a conforming
 * RFC 6455 endpoint with its own frame parser and encoder (the TypeScript engine; the
 * native engine keeps the same state per session). It owns both directions of one proxied
 * connection: forwarding frame by frame, per-hop ping/pong, close handshakes passed through
 * end to end, size and UTF-8 checks, heartbeats and backpressure.
 *
 * Hot-path shape: every field is set in the constructor; per read, one parse call (not per
 * frame), one encode per frame into the partner's encoder, one write per leg at the end of
 * the read; no closures per message.
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { wordView, xorInPlace } from '../codec/mask.js';
import { headerBytes, writeHeader } from '../codec/frame-encoder.js';
import {
  createFrameEncoder,
  createFrameParser,
  acquire,
  release,
  CODEC_ERRORS,
  DESCRIPTOR_WORDS,
  Desc,
  Opcode,
  type FrameEncoder,
  type FrameParser,
} from '../codec/index.js';
import { Utf8Stream } from '../codec/utf8-stream.js';
import { InflateMeter, INFLATE_PENDING, INFLATE_TOO_BIG, parseDeflateAgreement } from '../codec/inflate-meter.js';
import { isUtf8 } from '../codec/utf8.js';
import type { ProxyCounters } from '../metrics/counters.js';
import { closePayload as envelopeClosePayload, encodeEnvelope, type EnvelopeVersion } from '../protocol/index.js';
import { EnvelopeType } from '../codec/types.js';
import * as envelopeRoute from './envelope-route.js';
import { isValidWireCloseCode, type EnvelopePeer } from './envelope-route.js';
import type { MessageRateLimiter } from '../policy/index.js';
import type { RouteConfig, ProxyConfig } from '../config/types.js';
import type { Upstream } from './balancer.js';
import type { ReplayBuffer } from './resume.js';

/** The proxy as a session sees it. */
export interface SessionHost {
  readonly counters: ProxyCounters;
  readonly config: ProxyConfig;
  /** Coarse clock (ms), advanced by the proxy's sweep timer; cheap to read per message. */
  readonly clock: number;
  /** Called once when both sockets are closed. */
  sessionEnded(s: Session): void;
  /** Sustained backpressure started (logged and counted by the host). */
  backpressureEvent(s: Session, fill: number): void;
  /** An envelope control frame from the client (JSON already parsed). */
  controlFrame(s: Session, payload: unknown): void;
  /** An envelope error frame from the client. */
  errorFrame(s: Session, reason: string): void;
  /** A resumable session's client is gone (parked) or back (resumed); logged by the host. */
  resumeEvent?(s: Session, event: 'parked' | 'expired', detail: string): void;
}

/**
 * A resumable session's state (routes with `resume`; docs/protocols.md "Resume"). Data frames are
 * numbered per direction from 1: `received` counts the client's (forwarded to the
 * upstream), the replay buffer numbers the upstream's.
 */
export interface ResumeState {
  readonly token: string;
  /** Who the client was (its credentials' principal; null on a route without auth): a resume must be them. */
  readonly subject: string | null;
  readonly graceMs: number;
  readonly bufferBytes: number;
  readonly replay: ReplayBuffer;
  /** Client data frames forwarded to the upstream. */
  received: number;
  /** The last `received` the client was told (control frame `{"ack":N}`). */
  ackSent: number;
  /** When the client went (ms epoch), 0 while it is connected. */
  parkedAt: number;
  /** The grace ran out (or the session closed for good): the token is dead. */
  dead: boolean;
  /** Times the client came back. */
  resumes: number;
  /** The upstream is not read: the replay buffer is past `bufferBytes`. */
  held: boolean;
  /** Sent first on a session that a refused resume opened: `{"resumed":false,"reason":...}`. */
  refusal: string | null;
}

/** Which side ended the session first. */
export type Closer = 'client' | 'upstream' | 'proxy';

/** Flow state of a session: who is paused, what waits to be written to each side. */
export interface SessionFlow {
  /** The client is not read (the upstream's queue is past highWaterMark). */
  clientPaused: boolean;
  /** The upstream is not read (the client's queue is past highWaterMark). */
  upstreamPaused: boolean;
  /** Bytes queued for the client / the upstream and not yet taken by the kernel. */
  clientPending: number;
  upstreamPending: number;
}
export type Side = 'client' | 'upstream';

const EMPTY = Buffer.alloc(0);
/** How long a leg gets to answer our close frame (or to close its TCP connection after the handshake). */
const CLOSE_REPLY_TIMEOUT_MS = 2000;
/** After a protocol violation the culprit gets its close frame and this long before the cut. */
const VIOLATION_LINGER_MS = 1000;

// Close-handshake states of one leg (RFC 6455 §7): neither side has sent a close frame;
// we sent one and wait for the reply; the peer sent one and waits for ours; both done.
const OPEN = 0;
const CLOSE_SENT = 1;
const CLOSE_RECEIVED = 2;
const CLOSED = 3;

export { isValidWireCloseCode };

/** The mask key of the frame being forwarded in place (writeHeader fills it). */
const maskKey = new Uint8Array(4);

/** A leg's growing span goes to its out list (the span's frames are complete). */
function closeSpan(leg: Leg): void {
  if (leg.spanChunk === null) return;
  leg.out.push(leg.spanChunk.subarray(leg.spanStart, leg.spanEnd));
  leg.spanChunk = null;
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

/** Whether data may still be sent on `leg`: its socket is up and we have sent it no close frame. */
function canSend(leg: Leg): boolean {
  return leg.alive && (leg.state === OPEN || leg.state === CLOSE_RECEIVED);
}

/** One side of a session: a socket, the frames it sends us, the frames we send it. */
export class Leg {
  readonly side: Side;
  /** The client's TCP socket, or the upstream's socket or tunnel stream: only Duplex members are used. */
  readonly socket: Duplex;
  /** Parses what this side sends (masked frames from a client, unmasked from a server). */
  readonly parser: FrameParser;
  /** Encodes what we send this side (unmasked to a client, masked under fresh keys to a server). */
  readonly encoder: FrameEncoder;
  /** Close-handshake state (OPEN, CLOSE_SENT, CLOSE_RECEIVED, CLOSED). */
  state = OPEN;
  /** The socket has not reported 'close'. */
  alive = true;
  /** Frames from this side are no longer acted on (after its close frame or a violation). */
  deaf = false;
  /** Reading paused because the partner holds more than highWaterMark unsent bytes. */
  paused = false;
  /** Coarse-clock time of the last bytes read (heartbeats). */
  seen: number;
  /** The close code and reason that ended this leg (first close frame either way; 1006: none). */
  code = 0;
  reason = '';
  /** Coarse-clock deadline after which the socket is destroyed (0: none). */
  killAt = 0;
  // The message this side is sending us.
  text = false;
  compressed = false;
  dropping = false;
  readonly utf8 = new Utf8Stream();
  /** Inflates this side's compressed messages to check them (permessage-deflate only). */
  inflate: InflateMeter | null = null;
  /** Reassembly of this side's fragmented messages (envelope routes only). */
  assembly: Buffer | null = null;
  assemblyLength = 0;
  /** Messages written to this side while its socket's buffer was full (channel fill). */
  queued = 0;
  /**
   * What goes to this side at the next flush, in order, before the encoder's own bytes:
   * frames forwarded in place (spans of the partner's read chunks) and encoder output that
   * came before them.
   */
  readonly out: Buffer[] = [];
  /** The span of a partner's chunk still growing (consecutive frames forwarded in place). */
  spanChunk: Buffer | null = null;
  spanStart = 0;
  spanEnd = 0;
  /** Bytes this side sent us / we sent it in data frames, messages completed. */
  messages = 0;
  bytes = 0;

  constructor(side: Side, socket: Duplex, parser: FrameParser, encoder: FrameEncoder, now: number) {
    this.side = side;
    this.socket = socket;
    this.parser = parser;
    this.encoder = encoder;
    this.seen = now;
  }
}

export interface SessionMeta {
  remoteAddress: string;
  origin: string;
  protocol: string;
  handshakeMs: number;
  envelope: EnvelopeVersion | null;
  rateLimiter: MessageRateLimiter | null;
  expiresAt: number;
  /** The permessage-deflate agreement (the upstream's answer), or '': RSV1 frames pass through untouched. */
  deflate: string;
}

export class Session implements EnvelopePeer {
  readonly id: number;
  readonly host: SessionHost;
  readonly route: RouteConfig;
  readonly routeKey: string;
  readonly upstream: Upstream;
  /** The client's leg: replaced when a resumable session's client comes back. */
  client: Leg;
  readonly server: Leg;
  remoteAddress: string;
  readonly origin: string;
  readonly protocol: string;
  readonly startedAt: number;
  readonly handshakeMs: number;
  /** Envelope version spoken with the client, or null on a transparent route (a resumed client may speak another). */
  envelope: EnvelopeVersion | null;
  /** Per-connection message and byte rate (null when not configured). */
  readonly rateLimiter: MessageRateLimiter | null;
  /** When the client's credentials expire (ms epoch), 0 when they do not (a resume brings new ones). */
  expiresAt: number;
  /** The message limit this session was opened with (a reload does not change it mid-session). */
  readonly maxFrameBytes: number;
  readonly deflate: string;
  /** The host's counters, taken once (per message they are plain field increments). */
  private readonly counters: ProxyCounters;
  ended = false;
  closedFirst: Closer | '' = '';
  lastPing: number;
  // Flow controller (client → upstream channel).
  bpSince = 0;
  bpReported = false;
  private readonly clientHead: Buffer;
  private readonly serverHead: Buffer;
  /** The upstream's chunks are views of a shared read buffer: never forwarded in place. */
  private readonly upstreamReadsBorrowed: boolean;
  /** Routes with `resume`: the session's resume state (null elsewhere). */
  readonly resume: ResumeState | null;
  private readonly parserOptions: Parameters<typeof createFrameParser>[0];
  /** The chunk onData is walking (transparent routes; null otherwise), and its word view once made. */
  private reading: Buffer | null = null;
  private readingWords: Int32Array | null = null;

  constructor(
    id: number,
    host: SessionHost,
    route: RouteConfig,
    routeKey: string,
    upstream: Upstream,
    client: { socket: net.Socket; head: Buffer },
    server: { socket: Duplex; head: Buffer; setDataHandler(fn: (chunk: Buffer) => void): void; readsBorrowed: boolean },
    meta: SessionMeta,
    resume: ResumeState | null = null,
  ) {
    this.id = id;
    this.host = host;
    this.counters = host.counters;
    this.route = route;
    this.routeKey = routeKey;
    this.upstream = upstream;
    const limits = host.config.limits;
    this.maxFrameBytes = limits.maxFrameBytes;
    this.deflate = meta.deflate;
    this.startedAt = Date.now();
    // Exact time here: the coarse clock may be up to a second old, which would make the
    // first heartbeat timeout fire early.
    this.lastPing = this.startedAt;
    // Small per-session footprints: an idle session holds these four (the parse loop
    // resumes when its descriptors are full; encoders grow to the traffic and keep it).
    const parserOptions = {
      maxFrameBytes: limits.maxFrameBytes,
      maxMessageBytes: limits.maxFrameBytes,
      maxFragments: 1024,
      allowRsv1: meta.deflate !== '',
      maxFramesPerCall: 64,
    };
    this.parserOptions = { ...parserOptions, role: 'server' };
    this.resume = resume;
    this.client = new Leg('client', client.socket, createFrameParser({ ...parserOptions, role: 'server' }),
      createFrameEncoder('server', 1024), this.startedAt);
    this.server = new Leg('upstream', server.socket, createFrameParser({ ...parserOptions, role: 'client' }),
      createFrameEncoder('client', 1024), this.startedAt);
    if (meta.deflate !== '') {
      const agreed = parseDeflateAgreement(meta.deflate);
      this.client.inflate = new InflateMeter(limits.maxFrameBytes, agreed.clientNoContextTakeover);
      this.server.inflate = new InflateMeter(limits.maxFrameBytes, agreed.serverNoContextTakeover);
    }
    this.clientHead = client.head;
    this.serverHead = server.head;
    this.upstreamReadsBorrowed = server.readsBorrowed;
    this.remoteAddress = meta.remoteAddress;
    this.origin = meta.origin;
    this.protocol = meta.protocol;
    this.handshakeMs = meta.handshakeMs;
    this.envelope = meta.envelope;
    this.rateLimiter = meta.rateLimiter;
    this.expiresAt = meta.expiresAt;
    // upstream.sessions was counted when the dial started (least_conn sees dials in flight).

    const u = this.server;
    u.socket.pause();
    server.setDataHandler((chunk: Buffer) => this.onData(u, this.client, chunk));
    u.socket.on('drain', () => this.onDrain(u, this.client));
    u.socket.on('error', () => {}); // 'close' follows and does the work
    u.socket.on('end', () => u.socket.end());
    u.socket.on('close', () => this.onSocketClosed(u, this.client));
    this.wireClient(this.client);
  }

  /**
   * The client leg's socket events. A leg replaced by a resume is stale: what its socket
   * still reports is ignored (its socket is already destroyed).
   */
  private wireClient(c: Leg): void {
    c.socket.pause();
    c.socket.on('data', (chunk: Buffer) => { if (c === this.client) this.onData(c, this.server, chunk); });
    c.socket.on('drain', () => { if (c === this.client) this.onDrain(c, this.server); });
    c.socket.on('error', () => {}); // 'close' follows and does the work
    // A peer's FIN: half-open sockets (the HTTP server's) are ended by us, so 'close' follows.
    c.socket.on('end', () => c.socket.end());
    c.socket.on('close', () => {
      if (c === this.client) this.onSocketClosed(c, this.server);
      else c.alive = false;
    });
  }

  /** Start reading both sides; bytes that arrived with either handshake go first. */
  start(): void {
    const r = this.resume;
    if (r !== null) {
      // A refused resume says so first, then the new session's token.
      if (r.refusal !== null) this.sendControl({ resumed: false, reason: r.refusal });
      this.sendControl({ resume: { token: r.token, graceSeconds: r.graceMs / 1000, bufferBytes: r.bufferBytes } });
      this.flush(this.client);
    }
    if (this.serverHead.length > 0) this.onData(this.server, this.client, this.serverHead);
    if (this.clientHead.length > 0) this.onData(this.client, this.server, this.clientHead);
    if (this.server.alive && !this.server.paused) this.server.socket.resume();
    if (this.client.alive && !this.client.paused) this.client.socket.resume();
  }

  // ---------------------------------------------------------------- statistics

  get clientCloseCode(): number { return this.client.code; }
  get clientCloseReason(): string { return this.client.reason; }
  get upstreamCloseCode(): number { return this.server.code; }
  get upstreamCloseReason(): string { return this.server.reason; }
  get msgsIn(): number { return this.client.messages; }
  get msgsOut(): number { return this.server.messages; }
  get bytesIn(): number { return this.client.bytes; }
  get bytesOut(): number { return this.server.bytes; }
  flow(): SessionFlow | null {
    if (this.ended) return null;
    return {
      clientPaused: this.client.paused, upstreamPaused: this.server.paused,
      clientPending: this.client.socket.writableLength, upstreamPending: this.server.socket.writableLength,
    };
  }

  /** The client may still get frames from us. */
  get clientOpen(): boolean { return this.client.state === OPEN && this.client.alive; }

  // ---------------------------------------------------------------- reading

  /** Every complete frame of `chunk` from `from`, then one write per leg. */
  private onData(from: Leg, to: Leg, chunk: Buffer): void {
    from.seen = this.host.clock;
    if (from.deaf) return;
    // Transparent routes forward the frames that lie whole in the chunk in place, when the
    // chunk is ours to keep until it is written (not the shared read buffer of ws:// upstreams).
    this.reading = this.envelope === null && (from === this.client || !this.upstreamReadsBorrowed) ? chunk : null;
    this.readingWords = null;
    const parser = from.parser;
    const d = parser.descriptors;
    let offset = 0;
    for (;;) {
      let n = parser.parse(chunk, offset);
      // On an error the frames before the bad one are still valid (state[0]): act on them.
      const errno = n < 0 ? -n : 0;
      if (errno !== 0) n = parser.state[0];
      for (let i = 0; i < n && !from.deaf; i++) {
        const base = i * DESCRIPTOR_WORDS;
        const info = d[base];
        const src = (info & Desc.CARRY) !== 0 ? parser.carry : chunk;
        const start = d[base + 1];
        this.onFrame(from, to, info, src.subarray(start, start + d[base + 2]));
      }
      if (errno !== 0) {
        if (!from.deaf) this.protocolError(from, errno);
        break;
      }
      const resume = parser.state[1];
      if (resume < 0 || from.deaf) break;
      offset = resume;
    }
    this.reading = null;
    this.readingWords = null;
    this.flush(to);
    this.flush(from);
  }

  private onFrame(from: Leg, to: Leg, info: number, payload: Buffer): void {
    const op = info & Desc.OPCODE_MASK;
    const kind = from === this.client ? 'in' : 'out';
    switch (op) {
      case Opcode.Text:
      case Opcode.Binary:
      case Opcode.Continuation:
        this.onDataFrame(from, to, op, info, payload);
        return;
      case Opcode.Ping:
        this.counters.message(kind, 'ping', payload.length);
        // Every client frame counts against its rate, pings too: a ping flood costs us pongs.
        if (from === this.client && this.rateLimiter !== null && !this.rateLimiter.allow(payload.length, Date.now())) {
          this.fail(from, 1008, 'message rate limit', 1001, 'client closed: over its message rate');
          return;
        }
        // Per hop: answered here, not forwarded.
        if (from.state === OPEN) from.encoder.frame(Opcode.Pong, payload, true, false);
        return;
      case Opcode.Pong:
        this.counters.message(kind, 'pong', payload.length);
        return;
      case Opcode.Close:
        this.counters.message(kind, 'close', payload.length);
        this.onCloseFrame(from, to, payload);
        return;
    }
  }

  private onDataFrame(from: Leg, to: Leg, op: number, info: number, payload: Buffer): void {
    const fin = (info & Desc.FIN) !== 0;
    if (op !== Opcode.Continuation) {
      from.text = op === Opcode.Text;
      from.compressed = (info & Desc.RSV1) !== 0;
      from.dropping = false;
      if (from.text) from.utf8.reset();
    }
    if (from.compressed && from.inflate !== null) {
      // Passed on compressed; the limit and UTF-8 apply to what it inflates to.
      const out = from.inflate.push(payload, op !== Opcode.Continuation, fin);
      if (typeof out === 'number' && out !== INFLATE_PENDING) {
        this.protocolError(from, out === INFLATE_TOO_BIG ? 11 : 0, 'invalid compressed data');
        return;
      }
      if (typeof out !== 'number' && from.text && !from.utf8.push(out, true)) {
        this.protocolError(from, 13);
        return;
      }
    } else if (from.text && !from.utf8.push(payload, fin)) {
      this.protocolError(from, 13);
      return;
    }
    const fromClient = from === this.client;
    if (fromClient && this.rateLimiter !== null && !this.rateLimiter.allow(payload.length, Date.now())) {
      this.fail(from, 1008, 'message rate limit', 1001, 'client closed: over its message rate');
      return;
    }
    from.bytes += payload.length;
    if (fin) from.messages++;
    if (fromClient) this.counters.dataIn(!from.text, payload.length);
    else this.counters.dataOut(!from.text, payload.length);
    if (this.envelope !== null) {
      this.onEnvelopeData(from, op, fin, payload);
      return;
    }
    // Until we have sent `to` a close frame it may still get data (RFC 6455 §1.4: the side that
    // sent its close keeps receiving until the reply): what the upstream sends before it
    // answers a client's close still reaches that client.
    if (!canSend(to) || from.dropping) return;
    // Decided once per message, at its first frame: a message that started goes on whole
    // (the queue is then bounded by the budget plus one message).
    if (op !== Opcode.Continuation && this.overBudget(from, to, payload.length)) {
      if (this.route.backpressure === 'drop') {
        this.counters.dropped.backpressure++;
        from.dropping = !fin; // the rest of this message goes too: never half a message
      } else {
        this.slowPeer(to);
      }
      return;
    }
    const rsv1 = op !== Opcode.Continuation && from.compressed;
    if ((info & Desc.CARRY) === 0 && this.forwardInPlace(from, to, op, fin, rsv1, payload)) return;
    to.encoder.frame(op, payload, fin, rsv1);
  }

  /**
   * Forward a frame that lies whole in the chunk just read without copying it: our header
   * is written over the bytes of the sender's header (ours is never longer: the shortest
   * length form, and a mask key only towards the upstream, where the sender's frame had
   * one too), a client's payload is re-masked in place under a fresh key, and the frame
   * joins the span of the chunk that goes to `to` in one write (consecutive frames
   * coalesce). False when the header does not fit (it was cut by the previous read).
   */
  private forwardInPlace(from: Leg, to: Leg, op: number, fin: boolean, rsv1: boolean, payload: Buffer): boolean {
    const chunk = this.reading;
    if (chunk === null || payload.buffer !== chunk.buffer) return false;
    const length = payload.length;
    const masking = from === this.client;
    const at = payload.byteOffset - chunk.byteOffset;
    const h = at - headerBytes(length, masking);
    if (h < 0) return false;
    writeHeader(chunk, h, op, fin, rsv1, length, masking, maskKey);
    if (masking && length > 0) xorInPlace(chunk, this.readingWords ??= wordView(chunk), at, at + length, maskKey, 0);
    const end = at + length;
    if (to.spanChunk === chunk && to.spanEnd === h && to.encoder.length === 0) {
      to.spanEnd = end;
      return true;
    }
    closeSpan(to);
    // What was encoded for `to` before this frame goes before it.
    const before = to.encoder.take();
    if (before !== null) to.out.push(before);
    to.spanChunk = chunk;
    to.spanStart = h;
    to.spanEnd = end;
    return true;
  }

  /**
   * Under the `close` and `drop` policies: whether `to`'s queue (its socket's unsent bytes
   * and messages written since it filled) is past the channel's budget. `pause` never sheds:
   * reading stops instead (flush), so the queue stays bounded by highWaterMark + one read.
   */
  private overBudget(from: Leg, to: Leg, length: number): boolean {
    if (this.route.backpressure === 'pause' || !to.socket.writableNeedDrain) return false;
    const limits = this.host.config.limits;
    const bytes = to.socket.writableLength + to.encoder.length + length;
    if (to.queued >= limits.channelCapacity || bytes > limits.channelBytes) return true;
    to.queued++;
    if (from === this.client) this.checkBackpressure(Math.max(to.queued / limits.channelCapacity, bytes / limits.channelBytes));
    return false;
  }

  /** `close` policy: the client gets 1013 (its messages cannot be delivered now), the upstream 1001. */
  private slowPeer(to: Leg): void {
    if (to === this.server) this.fail(this.client, 1013, 'upstream is not keeping up', 1001, 'client closed: upstream not keeping up');
    else this.fail(this.client, 1013, 'client is not keeping up', 1001, 'client closed: not keeping up');
  }

  // ---------------------------------------------------------------- envelope routes

  private onEnvelopeData(from: Leg, op: number, fin: boolean, payload: Buffer): void {
    let whole = payload;
    if (!fin || op === Opcode.Continuation) {
      // Envelope frames are whole messages: reassemble (bounded by the message limit).
      const need = from.assemblyLength + payload.length;
      if (from.assembly === null || need > from.assembly.length) {
        const next = acquire(Math.max(need, from.assembly === null ? 4096 : from.assembly.length * 2));
        if (from.assembly !== null) {
          from.assembly.copy(next, 0, 0, from.assemblyLength);
          release(from.assembly);
        }
        from.assembly = next;
      }
      payload.copy(from.assembly, from.assemblyLength);
      from.assemblyLength = need;
      if (!fin) return;
      whole = from.assembly.subarray(0, need);
    }
    if (from === this.client) envelopeRoute.fromClient(this, whole, !from.text, this.maxFrameBytes, this.counters);
    else if (this.resume !== null) this.keepAndSend(this.resume, whole);
    else envelopeRoute.fromUpstream(this, whole);
    if (whole !== payload) {
      release(from.assembly!);
      from.assembly = null;
      from.assemblyLength = 0;
    }
  }

  // EnvelopePeer (envelope-route.ts): what an envelope message asks of this engine.

  upstreamData(payload: Buffer): void {
    if (!canSend(this.server)) return;
    if (this.resume !== null) this.resume.received++;
    if (this.overBudget(this.client, this.server, payload.length)) {
      if (this.route.backpressure === 'drop') this.counters.dropped.backpressure++;
      else this.slowPeer(this.server);
      return;
    }
    this.server.encoder.frame(Opcode.Binary, payload, true, false);
  }

  clientMessage(opcode: number, data: Buffer): void {
    if (canSend(this.client)) this.client.encoder.frame(opcode, data, true, false);
  }

  failClient(code: number, reason: string, partnerCode: number, partnerReason: string): void {
    this.fail(this.client, code, reason, partnerCode, partnerReason);
  }

  closeBoth(code: number, reason: string): void {
    if (this.closedFirst === '') this.closedFirst = 'client';
    this.sendClose(this.server, code, reason);
    this.sendClose(this.client, code, reason);
  }

  controlFrame(payload: unknown): void {
    const r = this.resume;
    if (r !== null && payload !== null && typeof payload === 'object' && typeof (payload as { ack?: unknown }).ack === 'number' &&
      Object.keys(payload).length === 1) {
      // The client has the upstream's messages up to N: they leave the replay buffer.
      if (!this.release(r, (payload as { ack: number }).ack)) {
        this.fail(this.client, 1002, 'ack beyond the messages sent', 1001, 'client sent a malformed envelope');
        return;
      }
      this.checkHold(r);
      return;
    }
    this.host.controlFrame(this, payload);
  }

  /** A ping answered or a pong received on an envelope route: a resumable session acknowledges with it. */
  heartbeatFrame(): void {
    if (this.resume !== null) this.sendAck(this.resume, true);
  }

  errorFrame(reason: string): void {
    this.host.errorFrame(this, reason);
  }

  // ---------------------------------------------------------------- resume (docs/protocols.md "Resume")

  /** One control frame for the client (its JSON). */
  private sendControl(json: unknown): void {
    envelopeRoute.sendEnvelope(this, EnvelopeType.Control, 0, Buffer.from(JSON.stringify(json), 'utf8'));
  }

  /** An upstream message on a resumable route: numbered and kept until acknowledged, sent when the client is here. */
  private keepAndSend(r: ResumeState, message: Buffer): void {
    if (r.dead) return; // the grace ran out: the upstream is being closed
    const copy = Buffer.from(message); // the engine's read buffers are reused
    r.replay.push(copy);
    this.counters.resume.buffered += copy.length;
    if (r.parkedAt === 0) envelopeRoute.fromUpstream(this, copy);
    this.checkHold(r);
  }

  /** The client has the upstream's messages up to `n`: out of the replay buffer (false: `n` was never sent). */
  private release(r: ResumeState, n: number): boolean {
    const before = r.replay.bytes;
    const ok = r.replay.ack(n);
    this.counters.resume.buffered -= before - r.replay.bytes;
    return ok;
  }

  /** Past `bufferBytes` unacknowledged, the upstream is not read (never dropped); below it again, it is. */
  private checkHold(r: ResumeState): void {
    const u = this.server;
    if (!r.held && r.replay.bytes > r.bufferBytes) {
      r.held = true;
      if (u.alive) u.socket.pause();
      // A connected client that has not acknowledged is asked to: its pong brings an ack.
      if (r.parkedAt === 0 && canSend(this.client)) {
        envelopeRoute.sendEnvelope(this, EnvelopeType.Ping, 0, EMPTY);
        this.flush(this.client);
      }
    } else if (r.held && r.replay.bytes <= r.bufferBytes) {
      r.held = false;
      if (u.alive && !u.paused) u.socket.resume();
    }
  }

  /** Tell the client how many of its data frames reached the upstream (`force`: even when unchanged). */
  private sendAck(r: ResumeState, force: boolean): void {
    if (r.parkedAt !== 0 || !canSend(this.client) || (!force && r.received === r.ackSent)) return;
    r.ackSent = r.received;
    this.sendControl({ ack: r.received });
  }

  /**
   * The client's connection is gone but the session is not: keep the upstream, hold its
   * messages, wait `graceMs` for the client. `cut`: destroy the old socket (it may still
   * look alive: a heartbeat timeout, a takeover by a new connection).
   */
  private park(r: ResumeState, why: string, cut = true): void {
    const c = this.client;
    r.parkedAt = Date.now();
    this.counters.resume.parked++;
    c.deaf = true;
    if (c.state === OPEN) c.code = 1006;
    c.state = CLOSED;
    if (cut && c.alive) c.socket.destroy();
    if (c.assembly !== null) {
      release(c.assembly);
      c.assembly = null;
      c.assemblyLength = 0;
    }
    // Paused for the old socket's full buffer: from now on the replay buffer decides.
    const u = this.server;
    // The upstream's close went to a client that is gone: the upstream gets its reply now;
    // the client gets that close after the replay, if it comes back.
    if (u.state === CLOSE_RECEIVED) this.sendClose(u, u.code === 1005 ? 0 : u.code, u.reason);
    if (u.paused) {
      u.paused = false;
      if (u.alive && !r.held) u.socket.resume();
    }
    this.host.resumeEvent?.(this, 'parked', why);
  }

  /** The token dies: no resume from now on (a park in progress ends). */
  private bury(r: ResumeState): void {
    if (r.dead) return;
    r.dead = true;
    if (r.parkedAt !== 0) this.counters.parkEnded((Date.now() - r.parkedAt) / 1000);
    r.parkedAt = 0;
    this.counters.resume.buffered -= r.replay.bytes;
    r.replay.clear();
    this.unhold(r);
  }

  /** The upstream is read again (a close reply must be read whatever the replay buffer holds). */
  private unhold(r: ResumeState): void {
    if (!r.held) return;
    r.held = false;
    const u = this.server;
    if (u.alive && !u.paused) u.socket.resume();
  }

  /** The grace ran out: the token dies, the upstream gets 1001 "client gone". */
  private expire(r: ResumeState): void {
    this.bury(r);
    this.host.resumeEvent?.(this, 'expired', `no resume within ${r.graceMs / 1000} s`);
    if (this.closedFirst === '') this.closedFirst = 'client';
    this.client.reason = 'client gone';
    const u = this.server;
    if (u.state === OPEN) this.sendClose(u, 1001, 'client gone');
    else if (u.state === CLOSE_RECEIVED) this.sendClose(u, u.code === 1005 ? 0 : u.code, u.reason);
    this.maybeEnd();
  }

  /**
   * Whether a client that says it has `received` of the upstream's messages can continue
   * this session: null when it can, else why not.
   */
  resumeRefusal(received: number): 'expired' | 'behind' | 'ahead' | null {
    const r = this.resume;
    if (r === null || r.dead || this.ended) return 'expired';
    // Closing (a close frame either way): resume is for the network, not for goodbyes.
    if (r.parkedAt === 0 && this.client.state !== OPEN) return 'expired';
    if (received < r.replay.acked) return 'behind';
    if (received > r.replay.sent) return 'ahead';
    return null;
  }

  /**
   * The client is back on `socket` (its 101 written) having `received` of the upstream's
   * messages: `{"resumed":true,"received":M}` (M: its data frames forwarded), the upstream's
   * messages after `received` in order, then the session goes on. A connection the session
   * still holds (the network has not told us it died) is cut first.
   */
  attach(socket: net.Socket, head: Buffer, received: number, meta: { remoteAddress: string; envelope: EnvelopeVersion; expiresAt: number }): void {
    const r = this.resume!;
    if (r.parkedAt === 0) this.park(r, 'the client came back on a new connection');
    this.counters.parkEnded((Date.now() - r.parkedAt) / 1000);
    this.counters.resumeOutcome('resumed');
    r.parkedAt = 0;
    r.resumes++;
    const old = this.client;
    if (old.alive) old.socket.destroy(); // a 1001 park left it closing
    this.bpSince = 0;
    this.bpReported = false;
    const c = new Leg('client', socket, createFrameParser(this.parserOptions), createFrameEncoder('server', 1024), this.host.clock);
    c.messages = old.messages;
    c.bytes = old.bytes;
    this.client = c;
    this.remoteAddress = meta.remoteAddress;
    this.envelope = meta.envelope;
    this.expiresAt = meta.expiresAt;
    this.wireClient(c);
    this.release(r, received);
    const replayed = r.replay.sent - received;
    this.sendControl({ resumed: true, received: r.received, replayed });
    r.ackSent = r.received;
    let bytes = 0;
    for (const m of r.replay.after(received)) {
      envelopeRoute.fromUpstream(this, m);
      bytes += m.length;
    }
    this.counters.resume.replayedFrames += replayed;
    this.counters.resume.replayedBytes += bytes;
    // The upstream closed while the client was away: its close follows what it sent.
    const u = this.server;
    if (u.state === CLOSED || !u.alive) {
      if (u.code === 1006 || u.code === 0) this.sendClose(c, 1014, 'upstream went away');
      else this.sendClose(c, u.code === 1005 ? 0 : u.code, u.reason);
    }
    this.flush(c);
    this.checkHold(r);
    if (head.length > 0) this.onData(c, u, head);
    if (c.alive && !c.paused) c.socket.resume();
  }

  /** The token is dead for good (a close either way, a drain): the session ends as any other. */
  get resumable(): boolean {
    return this.resume !== null && !this.resume.dead && !this.ended;
  }

  // ---------------------------------------------------------------- writing, backpressure

  /** Write what was encoded for `leg`; past highWaterMark, stop reading its partner. */
  private flush(leg: Leg): void {
    closeSpan(leg);
    const out = leg.encoder.take();
    const list = leg.out;
    if (list.length > 0) {
      if (out !== null) list.push(out);
      if (leg.alive) {
        if (list.length === 1) {
          leg.socket.write(list[0]);
        } else {
          // One writev for the spans and the encoder's bytes between them.
          leg.socket.cork();
          for (const b of list) leg.socket.write(b);
          leg.socket.uncork();
        }
      }
      list.length = 0;
      if (!leg.alive) return;
    } else {
      if (out === null || !leg.alive) return;
      leg.socket.write(out);
    }
    // The kernel took every byte synchronously: the encoder may reuse its memory, so a
    // steady flow allocates nothing per flush (external allocations drive V8's major GCs).
    const pending = leg.socket.writableLength;
    if (pending === 0) {
      leg.encoder.rewind?.();
      return;
    }
    if (pending > this.host.config.limits.highWaterMark && this.route.backpressure === 'pause') {
      const partner = leg === this.client ? this.server : this.client;
      if (!partner.paused && partner.alive && partner.state === OPEN) {
        partner.paused = true;
        partner.socket.pause();
      }
    }
  }

  private onDrain(leg: Leg, partner: Leg): void {
    leg.queued = 0;
    if (leg === this.server) this.checkBackpressure(0);
    if (partner.paused) {
      partner.paused = false;
      if (partner.alive && !(partner === this.server && this.resume?.held === true)) partner.socket.resume();
    }
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
        envelopeRoute.backpressureSignal(this, fill);
        this.flush(this.client);
      }
    } else if (this.bpSince !== 0) {
      if (this.bpReported) {
        envelopeRoute.backpressureSignal(this, null);
        this.flush(this.client);
      }
      this.bpSince = 0;
      this.bpReported = false;
    }
  }

  /** The fill of the client → upstream channel: queued bytes and messages against the budget. */
  channelFill(): number {
    const u = this.server;
    if (!u.alive) return 0;
    const limits = this.host.config.limits;
    if (this.route.backpressure === 'pause') {
      return this.client.paused ? 1 : u.socket.writableLength / limits.highWaterMark;
    }
    if (!u.socket.writableNeedDrain) return 0;
    return Math.max(u.queued / limits.channelCapacity, u.socket.writableLength / limits.channelBytes);
  }

  // ---------------------------------------------------------------- closing

  private onCloseFrame(from: Leg, to: Leg, payload: Buffer): void {
    let code = 0;
    let reason = '';
    if (payload.length === 1) {
      this.protocolError(from, 0, 'close frame with a 1-byte payload');
      return;
    }
    if (payload.length >= 2) {
      code = payload.readUInt16BE(0);
      if (!isValidWireCloseCode(code)) {
        this.protocolError(from, 0, `invalid close code ${code}`);
        return;
      }
      const r = payload.subarray(2);
      if (!isUtf8(r)) {
        this.protocolError(from, 13);
        return;
      }
      reason = r.toString('utf8');
    }
    from.deaf = true; // nothing may follow a close frame
    const r = this.resume;
    if (r !== null && from === this.client && code === 1001 && from.state === OPEN && !r.dead && this.server.state === OPEN) {
      // "Going away" from the client's side of the network (a middlebox, a page unloading):
      // the connection ends, the session is parked (an envelope close ends it for good).
      from.state = CLOSED;
      from.encoder.frame(Opcode.Close, closePayload(1001, ''), true, false);
      this.flush(from);
      this.endLeg(from);
      this.park(r, 'client went away (1001)', false);
      return;
    }
    if (from.state === OPEN) {
      // This side starts the close: pass it on, and answer it with the partner's reply.
      from.state = CLOSE_RECEIVED;
      from.code = code === 0 ? 1005 : code;
      from.reason = reason;
      if (this.closedFirst === '') this.closedFirst = from.side;
      if (to.state === OPEN && to.alive) this.sendClose(to, code, reason);
      else this.sendClose(from, code, reason); // no partner to ask: echo it
    } else if (from.state === CLOSE_SENT) {
      // The reply to our close: this leg is done; a partner waiting for it gets it.
      from.state = CLOSED;
      this.endLeg(from);
      if (to.state === CLOSE_RECEIVED) this.sendClose(to, code, reason);
    }
  }

  /** Send a close frame on `leg` (0 = no code) unless it has sent one. */
  sendClose(leg: Leg, code: number, reason: string): void {
    if (leg.state === OPEN) {
      leg.state = CLOSE_SENT;
      leg.code = code === 0 ? 1005 : code;
      leg.reason = reason;
      // The envelope's own close frame first, so an envelope client sees code and reason
      // in its protocol too; then the WebSocket close with the same code.
      if (leg === this.client && this.envelope !== null && code !== 0 && leg.alive) {
        const m = encodeEnvelope(this.envelope, EnvelopeType.Close, 0, envelopeClosePayload(code, reason));
        leg.encoder.frame(m.binary ? Opcode.Binary : Opcode.Text, typeof m.data === 'string' ? Buffer.from(m.data) : m.data, true, false);
      }
    } else if (leg.state === CLOSE_RECEIVED) {
      leg.state = CLOSED;
    } else {
      return;
    }
    if (!leg.alive) return;
    leg.encoder.frame(Opcode.Close, closePayload(code, reason), true, false);
    this.flush(leg);
    if (leg.state === CLOSED) this.endLeg(leg);
    else {
      leg.killAt = this.host.clock + CLOSE_REPLY_TIMEOUT_MS + 1000;
      // Its reply must be read, whatever the partner's pace (data after it is discarded).
      if (leg.paused) {
        leg.paused = false;
        leg.socket.resume();
      }
      if (leg === this.server && this.resume !== null) this.unhold(this.resume);
    }
  }

  /** The close handshake of `leg` is done: end its TCP connection (cut if it lingers). */
  private endLeg(leg: Leg): void {
    if (!leg.alive) return;
    leg.socket.end();
    leg.killAt = this.host.clock + CLOSE_REPLY_TIMEOUT_MS + 1000;
  }

  private protocolError(culprit: Leg, errno: number, detail?: string): void {
    const e = errno > 0 ? CODEC_ERRORS[errno] : undefined;
    const code = e ? e.closeCode : 1002;
    const why = e ? e.message : (detail ?? 'protocol error');
    if (code === 1009) {
      if (culprit === this.client) this.counters.dropped.too_big++;
      this.fail(culprit, 1009, why, 1009, culprit === this.client ? 'client message over the size limit' : 'upstream message over the size limit');
    } else if (culprit === this.client) {
      this.fail(culprit, code, why, 1001, code === 1007 ? 'client sent invalid UTF-8' : 'client protocol error');
    } else {
      this.fail(culprit, code, why, 1014, code === 1007 ? 'upstream sent invalid UTF-8' : 'upstream protocol error');
    }
  }

  /**
   * End both sides because `culprit` misbehaved: it gets `code` and its TCP connection is
   * closed promptly; its partner gets `partnerCode` with a reason that says why.
   */
  fail(culprit: Leg, code: number, reason: string, partnerCode: number, partnerReason: string): void {
    if (this.closedFirst === '') this.closedFirst = 'proxy';
    culprit.deaf = true;
    const partner = culprit === this.client ? this.server : this.client;
    if (partner.state === CLOSE_RECEIVED) this.sendClose(partner, partner.code === 1005 ? 0 : partner.code, partner.reason);
    else this.sendClose(partner, partnerCode, partnerReason);
    if (culprit.state === OPEN || culprit.state === CLOSE_RECEIVED) {
      if (culprit.state === OPEN) {
        culprit.code = code;
        culprit.reason = reason;
      }
      culprit.state = CLOSED;
      if (culprit.alive) {
        culprit.encoder.frame(Opcode.Close, closePayload(code, reason), true, false);
        this.flush(culprit);
      }
    }
    if (culprit.alive) {
      culprit.socket.end();
      culprit.killAt = this.host.clock + VIOLATION_LINGER_MS;
    }
  }

  /** Drain, shutdown, reload, an operator: the client gets `code`, the upstream `upstreamCode` (1001), both with `reason`. */
  shutdown(code: number, reason: string, upstreamCode = 1001): void {
    if (this.resume !== null) this.bury(this.resume);
    if (this.closedFirst === '') this.closedFirst = 'proxy';
    this.sendClose(this.client, code, reason);
    this.sendClose(this.server, upstreamCode, reason);
    this.maybeEnd(); // a parked session whose upstream had gone has nothing left to close
  }

  /** Cut both connections now (end of a drain). */
  destroy(): void {
    if (this.resume !== null) this.bury(this.resume);
    this.client.socket.destroy();
    this.server.socket.destroy();
    this.maybeEnd();
  }

  /**
   * Once a second (the proxy's sweep): close deadlines, credentials expiry, heartbeats,
   * sustained-backpressure checks. `now` is the coarse clock.
   */
  tick(now: number, pingMs: number, timeoutMs: number): void {
    const c = this.client;
    const u = this.server;
    if (c.killAt !== 0 && now >= c.killAt && c.alive) c.socket.destroy();
    if (u.killAt !== 0 && now >= u.killAt && u.alive) u.socket.destroy();
    const r = this.resume;
    if (r !== null && r.parkedAt !== 0) {
      this.parkedTick(r, now, pingMs, timeoutMs);
      return;
    }
    if (c.state !== OPEN || !c.alive) return;
    if (this.expiresAt !== 0 && now >= this.expiresAt) {
      this.fail(c, 1008, 'credentials expired', 1001, 'client credentials expired');
      return;
    }
    // While a side is paused for a slow partner nothing is read from it, so its silence
    // says nothing: it is not judged then. `seen` times come from the coarse clock (up to
    // one sweep old): one sweep of slack, so a side is never judged early.
    if (c.paused) c.seen = now;
    if (u.paused) u.seen = now;
    if (r !== null && r.held) u.seen = now;
    if (now - c.seen > timeoutMs + 1000) {
      if (r !== null && !r.dead) {
        this.park(r, 'client heartbeat timeout');
        return;
      }
      if (this.closedFirst === '') this.closedFirst = 'proxy';
      c.code = 1006;
      c.reason = 'client heartbeat timeout';
      c.state = CLOSED;
      this.sendClose(u, 1001, 'client heartbeat timeout');
      c.socket.destroy();
      return;
    }
    if (u.state === OPEN && u.alive && now - u.seen > timeoutMs + 1000) {
      if (this.closedFirst === '') this.closedFirst = 'proxy';
      u.code = 1006;
      u.reason = 'upstream heartbeat timeout';
      u.state = CLOSED;
      u.socket.destroy();
      this.sendClose(c, 1014, 'upstream heartbeat timeout');
      return;
    }
    if (now - this.lastPing >= pingMs) {
      this.lastPing = now;
      c.encoder.frame(Opcode.Ping, EMPTY, true, false);
      this.flush(c);
      if (u.state === OPEN && u.alive) {
        u.encoder.frame(Opcode.Ping, EMPTY, true, false);
        this.flush(u);
      }
    }
    if (this.bpSince !== 0 || this.client.paused || u.socket.writableNeedDrain) this.checkBackpressure(this.channelFill());
    // At least once a second while the client has unacknowledged data frames.
    if (r !== null && r.received !== r.ackSent) {
      this.sendAck(r, false);
      this.flush(c);
    }
  }

  /** Once a second while parked: the grace, and the upstream's heartbeat (it is still ours). */
  private parkedTick(r: ResumeState, now: number, pingMs: number, timeoutMs: number): void {
    if (r.dead) return;
    if (now - r.parkedAt >= r.graceMs) {
      this.expire(r);
      return;
    }
    const u = this.server;
    if (u.state !== OPEN || !u.alive) return;
    if (u.paused || r.held) u.seen = now;
    if (now - u.seen > timeoutMs + 1000) {
      if (this.closedFirst === '') this.closedFirst = 'proxy';
      u.code = 1006;
      u.reason = 'upstream heartbeat timeout';
      u.state = CLOSED;
      u.socket.destroy();
      return;
    }
    if (now - this.lastPing >= pingMs) {
      this.lastPing = now;
      u.encoder.frame(Opcode.Ping, EMPTY, true, false);
      this.flush(u);
    }
  }

  private onSocketClosed(leg: Leg, partner: Leg): void {
    leg.alive = false;
    leg.deaf = true;
    const r = this.resume;
    if (r !== null && leg === this.client && !r.dead) {
      if (r.parkedAt !== 0) {
        this.maybeEnd();
        return;
      }
      if (leg.state === OPEN || leg.state === CLOSE_SENT) {
        // Gone without a close frame: the network's doing, not a goodbye. (CLOSE_SENT: the
        // upstream's close was on its way; it is delivered again after the replay.)
        this.park(r, 'client connection lost');
        return;
      }
    }
    if (leg.state === OPEN) {
      // Gone without a close frame.
      if (this.closedFirst === '') this.closedFirst = leg.side;
      leg.code = 1006;
    }
    leg.state = CLOSED;
    if (partner.state === OPEN) {
      if (leg === this.client) this.sendClose(partner, 1001, 'client connection lost');
      else this.sendClose(partner, 1014, 'upstream went away');
    } else if (partner.state === CLOSE_RECEIVED) {
      // The partner waits for the reply this side will never give: echo its own close.
      this.sendClose(partner, partner.code === 1005 ? 0 : partner.code, partner.reason);
    }
    if (partner.paused && partner.alive) {
      partner.paused = false;
      partner.socket.resume();
    }
    this.maybeEnd();
  }

  private maybeEnd(): void {
    if (this.ended || this.client.alive || this.server.alive) return;
    // Parked with the upstream gone: the client may still come back for what it missed.
    const r = this.resume;
    if (r !== null && r.parkedAt !== 0 && !r.dead) return;
    this.ended = true;
    if (r !== null) this.bury(r); // the token dies, the replay buffer goes
    this.upstream.sessions--;
    for (const leg of [this.client, this.server]) {
      leg.inflate?.close();
      if (leg.assembly !== null) {
        release(leg.assembly);
        leg.assembly = null;
      }
    }
    this.host.sessionEnded(this);
  }
}
