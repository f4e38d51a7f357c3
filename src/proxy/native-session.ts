/**
 * A session whose data phase runs in the native engine (src/engine/native.ts). The proxy
 * holds this record for routing counts, drain, stats and the end-of-session log; the
 * engine holds the sockets and tells us, once, how the session ended.
 *
 * On an envelope route the engine runs the session in messages mode: each whole data
 * message comes here in the engine's batch (onMessage), is unwrapped or wrapped
 * (envelope-route.ts, shared with the TypeScript engine), and goes back through the engine.
 */
import type { RouteConfig } from '../config/types.js';
import type { EngineEvent, NativeEngine } from '../engine/index.js';
import type { ProxyCounters } from '../metrics/counters.js';
import type { EnvelopeVersion } from '../protocol/index.js';
import { Opcode } from '../codec/types.js';
import type { Upstream } from './balancer.js';
import * as envelopeRoute from './envelope-route.js';
import type { EnvelopePeer } from './envelope-route.js';
import type { Closer, SessionFlow } from './session.js';

/** What an envelope session asks of the proxy. */
export interface NativeSessionHost {
  readonly counters: ProxyCounters;
  controlFrame(s: NativeSession, payload: unknown): void;
  errorFrame(s: NativeSession, reason: string): void;
}

const CLOSERS: ReadonlyArray<Closer | ''> = ['', 'client', 'upstream', 'proxy'];

export class NativeSession implements EnvelopePeer {
  readonly id: number;
  readonly engineId: number;
  readonly route: RouteConfig;
  readonly routeKey: string;
  readonly upstream: Upstream;
  readonly remoteAddress: string;
  readonly origin: string;
  readonly protocol: string;
  readonly startedAt = Date.now();
  readonly handshakeMs: number;
  /** Envelope routes: the version spoken with the client (the engine runs the session in messages mode). */
  readonly envelope: EnvelopeVersion | null;
  ended = false;
  closedFirst: Closer | '' = '';
  clientCloseCode = 0;
  clientCloseReason = '';
  upstreamCloseCode = 0;
  upstreamCloseReason = '';
  msgsIn = 0;
  msgsOut = 0;
  bytesIn = 0;
  bytesOut = 0;
  private readonly engine: NativeEngine;
  private readonly host: NativeSessionHost | null;
  private readonly maxFrameBytes: number;
  /** The client broke the envelope protocol: its session is closing. */
  private failed = false;

  constructor(id: number, engine: NativeEngine, engineId: number, route: RouteConfig, routeKey: string, upstream: Upstream,
    meta: { remoteAddress: string; origin: string; protocol: string; handshakeMs: number },
    envelope: { version: EnvelopeVersion; host: NativeSessionHost; maxFrameBytes: number } | null = null) {
    this.envelope = envelope?.version ?? null;
    this.host = envelope?.host ?? null;
    this.maxFrameBytes = envelope?.maxFrameBytes ?? 0;
    this.id = id;
    this.engine = engine;
    this.engineId = engineId;
    this.route = route;
    this.routeKey = routeKey;
    this.upstream = upstream;
    this.remoteAddress = meta.remoteAddress;
    this.origin = meta.origin;
    this.protocol = meta.protocol;
    this.handshakeMs = meta.handshakeMs;
  }

  /** Drain, shutdown, reload, an operator: the client gets `code`, the upstream `upstreamCode` (1001), both with `reason`. */
  shutdown(code: number, reason: string, upstreamCode = 1001): void {
    if (this.ended) return;
    if (upstreamCode === 1001) this.engine.shutdown(this.engineId, code, reason);
    else this.engine.shutdown(this.engineId, code, reason, { code: upstreamCode, reason, byClient: false });
  }

  /** Messages and payload bytes so far, each way (the engine's live counts; the final ones once ended). */
  liveCounts(): { msgsIn: number; msgsOut: number; bytesIn: number; bytesOut: number } {
    const f = this.ended ? null : this.engine.flow(this.engineId);
    if (f === null || f.length < 8) return { msgsIn: this.msgsIn, msgsOut: this.msgsOut, bytesIn: this.bytesIn, bytesOut: this.bytesOut };
    return { msgsIn: f[4], msgsOut: f[5], bytesIn: f[6], bytesOut: f[7] };
  }

  /** Cut both connections now. */
  destroy(): void {
    if (!this.ended) this.engine.destroy(this.engineId);
  }

  // ------------------------------------------------------------ messages mode (envelope)

  /** One whole data message from the engine's batch (`data` is valid only during the call). */
  onMessage(fromClient: boolean, opcode: number, data: Buffer): void {
    if (this.ended || this.failed || this.host === null) return;
    if (fromClient) envelopeRoute.fromClient(this, data, opcode === Opcode.Binary, this.maxFrameBytes, this.host.counters);
    else envelopeRoute.fromUpstream(this, data);
  }

  /** Sustained backpressure began (`fill`) or cleared (null): an envelope client is told. */
  backpressure(fill: number | null): void {
    if (!this.ended) envelopeRoute.backpressureSignal(this, fill);
  }

  upstreamData(payload: Buffer): void {
    this.engine.send(this.engineId, false, Opcode.Binary, payload);
  }

  clientMessage(opcode: number, data: Buffer): void {
    this.engine.send(this.engineId, true, opcode, data);
  }

  failClient(code: number, reason: string, partnerCode: number, partnerReason: string): void {
    // Nothing after the violation is acted on (the rest of this batch included).
    this.failed = true;
    this.engine.fail(this.engineId, true, code, reason, partnerCode, partnerReason);
  }

  closeBoth(code: number, reason: string): void {
    this.engine.shutdown(this.engineId, code, reason, { code, reason, byClient: true });
  }

  controlFrame(payload: unknown): void {
    this.host?.controlFrame(this, payload);
  }

  errorFrame(reason: string): void {
    this.host?.errorFrame(this, reason);
  }

  /** Heartbeats and deadlines run in the engine's own sweep. */
  tick(): void {}

  flow(): SessionFlow | null {
    const f = this.ended ? null : this.engine.flow(this.engineId);
    return f === null ? null : { clientPaused: f[0] === 1, upstreamPaused: f[1] === 1, clientPending: f[2], upstreamPending: f[3] };
  }

  /** The engine's end event: fill in how it ended (the proxy then logs and counts it). */
  finish(e: EngineEvent): void {
    this.ended = true;
    this.clientCloseCode = e.clientCode ?? 1006;
    this.clientCloseReason = e.clientReason ?? '';
    this.upstreamCloseCode = e.upstreamCode ?? 1006;
    this.upstreamCloseReason = e.upstreamReason ?? '';
    this.closedFirst = CLOSERS[e.closedFirst ?? 0] ?? '';
    this.msgsIn = e.messagesIn ?? 0;
    this.msgsOut = e.messagesOut ?? 0;
    this.bytesIn = e.bytesIn ?? 0;
    this.bytesOut = e.bytesOut ?? 0;
    this.upstream.sessions--;
  }
}
