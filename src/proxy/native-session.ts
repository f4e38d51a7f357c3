/**
 * A session whose data phase runs in the native engine (src/engine/native.ts). The proxy
 * holds this record for routing counts, drain, stats and the end-of-session log; the
 * engine holds the sockets and tells us, once, how the session ended.
 */
import type { RouteConfig } from '../config/types.js';
import type { EngineEvent, NativeEngine } from '../engine/index.js';
import type { Upstream } from './balancer.js';
import type { Closer, SessionFlow } from './session.js';

const CLOSERS: ReadonlyArray<Closer | ''> = ['', 'client', 'upstream', 'proxy'];

export class NativeSession {
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
  /** Native sessions are transparent: no envelope. */
  readonly envelope = null;
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

  constructor(id: number, engine: NativeEngine, engineId: number, route: RouteConfig, routeKey: string, upstream: Upstream,
    meta: { remoteAddress: string; origin: string; protocol: string; handshakeMs: number }) {
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

  /** Drain, shutdown, reload: the client gets `code`, the upstream 1001, both with `reason`. */
  shutdown(code: number, reason: string): void {
    if (!this.ended) this.engine.shutdown(this.engineId, code, reason);
  }

  /** Cut both connections now. */
  destroy(): void {
    if (!this.ended) this.engine.destroy(this.engineId);
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
