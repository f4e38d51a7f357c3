/**
 * The proxy: the listener that takes upgrades (Node's HTTP parser for the request head),
 * routes with their balancers, the sessions (session.ts: both legs, our own RFC 6455
 * endpoints), the heartbeat sweep, graceful drain and hot reload. `createProxy()` in
 * index.ts is its door.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import dc from 'node:diagnostics_channel';
import { readFileSync } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import dns from 'node:dns';
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type { Registry } from 'prom-client';
import type { Logger } from 'pino';
import { codecInfo, poolStats } from '../codec/index.js';
import { parseConfig } from '../config/index.js';
import type { ProxyConfig, RouteConfig } from '../config/types.js';
import { SluiceError } from '../errors.js';
import { createLogger } from '../log.js';
import { ProxyCounters } from '../metrics/counters.js';
import { createMetricsRegistry, type CounterSnapshot } from '../metrics/index.js';
import { registerTunnelMetrics } from '../metrics/tunnel-metrics.js';
import { registerHealthMetrics } from '../metrics/health-metrics.js';
import { startAdminServer, type AdminServer } from '../admin/index.js';
import { Balancer, Upstream } from './balancer.js';
import { listenOptions, listenSocket, socketPort } from './listen.js';
import { routeKey, type ConnectionLedger } from './ledger.js';
import { startEchoServer, type EchoServer } from './echo.js';
import { dial, UpstreamError, type DialResult } from './handshake.js';
import { HttpForwarder, forwardedHeaders } from './http-forward.js';
import { compileRoutes, mapTarget, matchRoute, requestHost, type RouteMatcher } from './router.js';
import { Session, isValidWireCloseCode, type ResumeState, type SessionHost } from './session.js';
import {
  RESUME_HEADER, REFUSAL_TEXT, ReplayBuffer, ResumeRegistry, newResumeToken, parseResumeHeader, tokenInstance, tokenShard, type ResumeRefusal,
} from './resume.js';
import { NativeSession } from './native-session.js';
import {
  RecentCloses, mergePages, parseSessionId,
  type ClosedSession, type DrainResult, type SessionFilter, type SessionInfo, type SessionPage,
} from './session-control.js';
import { EngineClient, SocketClient, setPeerAddress, type HandshakeClient } from './handshake-client.js';
import { NativeEngine, nativeEngineUnavailable, socketFd, type EngineEvent, type EngineParams } from '../engine/index.js';
import { negotiateEnvelope, type EnvelopeVersion } from '../protocol/index.js';
import { AccessPolicy, ConnectionRateLimiter, MessageRateLimiter, type AccessDecision } from '../policy/index.js';
import { AgentRegistry, type AgentCluster, type AgentInfo } from '../tunnel/gateway.js';
import { TunnelListener, type TunnelStats } from '../tunnel/listener.js';
import { TUNNEL_SUBPROTOCOL } from '../tunnel/wire.js';
import { Cluster, registerClusterMetrics, type ClusterStats, type Refusal } from '../cluster/index.js';
import { AGENT_STREAM_PATH, type Places } from '../cluster/cluster.js';
import { AGENT_STREAM_UPGRADE, openRemoteAgentStream } from '../cluster/agent-relay.js';
import { joinSocket } from '../tunnel/link.js';

const BUILTIN_ECHO = 'builtin:echo';
const EMPTY = Buffer.alloc(0);
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** Upstreams tried for one client before it gets 502 (the pick and up to two more). */
const MAX_DIAL_TRIES = 3;
/** Request headers that belong to one hop, or that the upstream leg writes itself. */
const HOP_HEADERS = new Set([
  'host', 'connection', 'upgrade', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding',
  'proxy-authenticate', 'proxy-authorization', 'content-length', 'sec-websocket-key', 'sec-websocket-version',
  'sec-websocket-extensions', 'sec-websocket-protocol', 'x-real-ip', 'x-forwarded-for', 'x-forwarded-proto',
  'x-forwarded-host',
  // Resume (ours: never forwarded).
  'sluice-resume', 'sluice-relay', 'sluice-relayed-for', 'sluice-cluster',
]);

const chOpen = dc.channel('sluice:session:open');
const chClose = dc.channel('sluice:session:close');
const chHealth = dc.channel('sluice:upstream:health');
const chControl = dc.channel('sluice:envelope:control');

/** What an embedding app can hook into. */
export interface ProxyHooks {
  /**
   * An envelope client sent a control frame (its JSON, parsed). `session` identifies the
   * sender: its id, route path, remote address and envelope version.
   */
  onControl?(session: { id: number; route: string; remoteAddress: string; version: string }, payload: unknown): void;
  /** Internal (shards): connection counts shared with the other shards (ledger.ts). */
  ledger?: ConnectionLedger;
  /** Internal (shards): this shard's number (resume tokens name the shard that holds their session). */
  shard?: number;
  /** Internal (shards): every shard's loopback port for relayed resumes (shard/messages.ts). */
  resumePeers?: Int32Array;
  /** Internal (shards): listen with SO_REUSEPORT, so that every shard can bind the same port. */
  reusePort?: boolean;
  /** Internal (shards): upstreams drained before this shard started ({@link drainKey}s), e.g. a replacement's. */
  drained?: readonly string[];
  /** Internal (shards): the first session id (a replacement shard numbers on past its predecessors). */
  firstSessionId?: number;
  /**
   * Internal (shards): TLS session ticket keys (80 bytes) every shard shares, so that a
   * client's session resumes whichever shard the kernel gives its next connection.
   */
  ticketKeys?: Uint8Array;
}

/** What onUpgrade reads of a request: Node's IncomingMessage, or a head the engine read. */
export interface UpgradeRequest {
  method?: string;
  /** Node's parser accepts versions other than 1.x; the engine's refuses them itself. */
  httpVersion?: string;
  url?: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
}

/** The cluster places an upgrade or a session holds (exactly those are given back, whatever a reload changed). */
type PlaceList = readonly Places[];
const NO_PLACES: PlaceList = [];

function givePlaces(places: PlaceList): void {
  for (const p of places) p.give();
}

/** Upstream host names resolved for the engine's dials, with when to look again. */
const resolved = new Map<string, { address: string; until: number }>();
const RESOLVE_TTL_MS = 30_000;

async function resolveHost(host: string): Promise<string> {
  if (net.isIP(host) !== 0) return host;
  const hit = resolved.get(host);
  if (hit !== undefined && hit.until > Date.now()) return hit.address;
  const { address } = await dns.promises.lookup(host);
  resolved.set(host, { address, until: Date.now() + RESOLVE_TTL_MS });
  return address;
}

/** A route as the running proxy holds it. */
export interface RouteRuntime {
  key: string;
  config: RouteConfig;
  balancer: Balancer;
  healthTimer: NodeJS.Timeout | null;
  /** Credentials check, when the route has `auth`. */
  access: AccessPolicy | null;
  /** Live counts, kept per route key across reloads (a route removed and re-added keeps them). */
  counts: RouteCounts;
}

/** Sessions and upgrades in flight of one route key. */
export interface RouteCounts {
  sessions: number;
  /** Upgrades accepted for this route and not yet a session or refused (for maxConnections). */
  pending: number;
  /** Envelope sessions by version (envelope routes). */
  versions: { v1: number; v2: number };
}

/** JSON-able statistics of a running proxy (`/stats`). */
export interface ProxyStats {
  listening: boolean;
  port: number;
  draining: boolean;
  sessions: number;
  routes: Array<{
    path: string;
    host: string | null;
    mode: string;
    sessions: number;
    envelope: { v1: number; v2: number } | null;
    /** `draining`: an operator drained it (POST /upstreams/{route}/{index}/drain): no new sessions go to it. */
    upstreams: Array<{ url: string; sessions: number; healthy: boolean; lastError: string; draining: boolean }>;
  }>;
  pool: ReturnType<typeof poolStats>;
  native: typeof codecInfo;
  /**
   * Which engines hold the sessions' sockets: 'native' (native/engine/: every session but
   * resumable ones and those through agents, which run on the TypeScript engine) or 'typescript' (every session,
   * with `reason`); `native` counts the sessions the native engine holds now.
   */
  engine: { kind: 'native' | 'typescript'; native: number; reason?: string };
  shards: Array<{ id: number; sessions: number; restarts: number }>;
  /** Agents connected to this gateway (routes with mode: agent), and the L4 tunnels through them. */
  agents: AgentInfo[];
  tunnels: TunnelStats[];
  /** With `cluster`: the instances, this one's places, whether it is degraded (docs/operations.md "Scaling out"). */
  cluster?: ClusterStats;
}

/** Options of `close()`. */
export interface CloseOptions {
  /** How long sessions get to finish their close handshakes before they are cut (default config.drain.timeoutMs). */
  drainMs?: number;
  /** Close code the clients get (default 1001, going away; a shard restart uses 1012). */
  code?: number;
  reason?: string;
}

export class Proxy implements SessionHost {
  config: ProxyConfig;
  /** What this proxy counts (the native engine's counts are folded in when they are read). */
  private readonly count = new ProxyCounters();
  readonly registry: Registry;
  readonly logger: Logger;
  clock = Date.now();
  port = 0;
  private server: http.Server | null = null;
  private listening = false;
  /** Clients between their upgrade request and a session (or a refusal). */
  private readonly handshaking = new Set<HandshakeClient>();
  /** Handshakes the native engine runs (it accepted the connection), by engine id. */
  private readonly engineHandshakes = new Map<number, EngineClient>();
  /** The native engine accepts on the listening socket (else Node's HTTP server does). */
  private engineAccepts = false;
  /** The engine's TLS client contexts (wss:// dials), by verify mode and CA file. */
  private readonly engineTlsContexts = new Map<string, number>();
  private echo: EchoServer | null = null;
  private echoUrl = '';
  private routes: RouteRuntime[] = [];
  private matchers: Array<RouteMatcher<RouteRuntime>> = [];
  /** Per route key, kept across reloads. */
  private readonly routeCounts = new Map<string, RouteCounts>();
  /** Upstreams by URL, kept across reloads so least_conn counts and health survive. */
  private readonly upstreamsByUrl = new Map<string, Upstream>();
  readonly sessions = new Set<Session | NativeSession>();
  /** The last sessions that ended (the dashboard's list). */
  private readonly recentCloses = new RecentCloses();
  /** Drained upstreams by {@link drainKey} (route key and upstream): they outlive reloads, whatever else changes. */
  private readonly drained = new Set<string>();
  /** The 1012 each session of a drained upstream gets within its window; cleared by an undrain or the session's end. */
  private readonly drainTimers = new Map<Session | NativeSession, NodeJS.Timeout>();
  /** The native engine (null: every session on the TypeScript engine) and its sessions by engine id. */
  private engine: NativeEngine | null = null;
  private readonly nativeSessions = new Map<number, NativeSession>();
  /** Agents connected to agent routes (tunnels, issue #14); made when a route or tunnel needs it. */
  private agents: AgentRegistry | null = null;
  private tunnelListeners: TunnelListener[] = [];
  private pendingUpgrades = 0;
  private nextId: number;
  /** Live resume tokens of this proxy's (shard's) resumable sessions. */
  private readonly resumable = new ResumeRegistry<Session>();
  /** Shards: the loopback listener where resumes other shards relay arrive, its secret, and the relays open. */
  private relayServer: http.Server | null = null;
  private relaySecret = '';
  private readonly relays = new Set<net.Socket>();
  /** With `cluster`: this instance's membership (places and rates shared through Redis). */
  private cluster: Cluster | null = null;
  /** Sessions holding a cluster place (given back when they end). */
  private readonly placed = new WeakMap<Session | NativeSession, PlaceList>();
  /** Per route, without a cluster: connections per credentials' subject (routes[].auth.connectionRatePerSubject). */
  private readonly subjectRates = new Map<string, ConnectionRateLimiter>();
  private sweepTimer: NodeJS.Timeout | null = null;
  private admin: AdminServer | null = null;
  draining = false;
  private closing: Promise<void> | null = null;
  private readonly hooks: ProxyHooks;
  private connectionRate: ConnectionRateLimiter | null = null;
  /** Requests that are not upgrades: routed as upgrades are, refused or proxied as HTTP (http-forward.ts). */
  private readonly plainHttp: HttpForwarder = new HttpForwarder({
    proxy: this,
    counters: this.count,
    match: (host, path) => matchRoute(this.matchers, host, path),
    allow: (remote, now) => this.connectionRate === null || this.connectionRate.allow(remote, now),
    stripCredentials: stripCredentialParams,
    healthChanged: (up, healthy, reason) => this.healthChanged(up, healthy, reason),
    openAgentStream: (agent, service, timeoutMs) => this.agentRegistry().open(agent, service, 'tcp', timeoutMs),
  });

  constructor(input: unknown, hooks: ProxyHooks = {}) {
    this.hooks = hooks;
    this.nextId = hooks.firstSessionId ?? 1;
    for (const k of hooks.drained ?? []) this.drained.add(k);
    this.config = parseConfig(input);
    this.logger = createLogger(this.config.log.level);
    this.registry = createMetricsRegistry(this.count);
    registerTunnelMetrics(this.registry, {
      agents: () => this.agents?.list() ?? [],
      tunnels: () => this.tunnelListeners.map((t) => t.stats()),
      openTimes: () => this.agents?.openTimes() ?? { buckets: [], sum: 0, count: 0 },
    });
    registerHealthMetrics(this.registry, this);
    registerClusterMetrics(this.registry, () => this.cluster?.stats() ?? null);
    if (nativeEngineUnavailable === '') {
      const engine = new NativeEngine((events) => this.onEngineEvents(events), (bytes, desc) => this.onEngineMessages(bytes, desc));
      this.engine = engine;
      this.count.attachNative(() => engine.sync());
    }
  }

  /** Messages mode (envelope routes): the engine's batch of whole messages, once per loop turn. */
  private onEngineMessages(bytes: Buffer, desc: Float64Array): void {
    let s: NativeSession | undefined;
    for (let i = 0; i + 4 < desc.length; i += 5) {
      if (s === undefined || s.engineId !== desc[i]) s = this.nativeSessions.get(desc[i]);
      if (s === undefined) continue;
      const at = desc[i + 3];
      s.onMessage(desc[i + 1] === 1, desc[i + 2], bytes.subarray(at, at + desc[i + 4]));
    }
  }

  /** What the native engine reports, once per loop turn. */
  private onEngineEvents(events: EngineEvent[]): void {
    for (const e of events) {
      if (e.type >= 3 && e.type <= 6) {
        if (e.type === 3) {
          this.onEngineRequest(e);
        } else {
          this.engineHandshakes.get(e.id)?.settle(e);
        }
        continue;
      }
      const s = this.nativeSessions.get(e.id);
      if (s === undefined) continue;
      if (e.type === 1) {
        this.nativeSessions.delete(e.id);
        s.finish(e);
        this.sessionEnded(s);
      } else if (e.type === 7) {
        s.backpressure(null);
      } else {
        s.backpressure(e.fill ?? 1);
        // Counted by the engine; logged here.
        this.logger.warn({
          event: 'backpressure', session: s.id, route: s.route.path, fillPercent: Math.round((e.fill ?? 0) * 100),
          queuedMessages: e.queuedMessages, queuedBytes: e.queuedBytes, capacity: this.config.limits.channelCapacity,
          policy: s.route.backpressure,
        }, 'sustained backpressure towards the upstream');
      }
    }
  }

  /** The counters, with what the native engine counted folded in (a read syncs them). */
  get counters(): ProxyCounters {
    this.count.sync();
    return this.count;
  }

  /** Listening, and every route has a healthy upstream. */
  get ready(): { ok: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (!this.listening) reasons.push('not listening');
    if (this.draining) reasons.push('draining');
    const now = Date.now();
    for (const r of this.routes) {
      if (r.config.mode === 'agent') continue; // agents connect to it: nothing to be healthy
      if (!r.balancer.upstreams.some((u) => this.upstreamUp(u, now))) reasons.push(`route ${r.config.path}: no healthy upstream`);
      else if (r.balancer.drained.size === r.balancer.upstreams.length) reasons.push(`route ${r.config.path}: every upstream drained`);
    }
    // Tunnels and upstreams through an agent that is not connected cannot carry anything.
    const missing = new Set(this.neededAgents().filter((a) => !this.agentReachable(a)));
    for (const a of missing) reasons.push(`agent ${a}: not connected`);
    const ok = reasons.length === 0;
    // Redis away: still ready (the instance serves, under local limits), and it says so.
    const degraded = this.cluster?.degradedBecause ?? null;
    if (degraded !== null) reasons.push(degraded);
    return { ok, reasons };
  }

  /** The agents the configuration needs: those of its tunnels and of its upstreams through agents. */
  neededAgents(): string[] {
    const needed = [...this.config.tunnels.map((t) => t.agent), ...this.config.routes.flatMap((r) => r.upstreams.map((u) => u.agent ?? ''))];
    return [...new Set(needed.filter((a) => a !== ''))];
  }

  // ------------------------------------------------------------------ SessionHost

  /** Shards: store this shard's counts in the shared ledger after they change. */
  private publishCounts(key: string, counts: RouteCounts | undefined): void {
    this.hooks.ledger?.publish(this.sessions.size + this.pendingUpgrades, key, counts ? counts.sessions + counts.pending : 0);
  }

  sessionEnded(s: Session | NativeSession): void {
    this.sessions.delete(s);
    const drainTimer = this.drainTimers.get(s);
    if (drainTimer !== undefined) {
      clearTimeout(drainTimer);
      this.drainTimers.delete(s);
    }
    const places = this.placed.get(s);
    if (places !== undefined) {
      this.placed.delete(s);
      givePlaces(places);
    }
    const resume = s instanceof Session ? s.resume : null;
    if (resume !== null) this.resumable.end(resume.token);
    const counts = this.routeCounts.get(s.routeKey);
    if (counts) {
      counts.sessions--;
      if (s.envelope !== null) counts.versions[s.envelope]--;
    }
    this.publishCounts(s.routeKey, counts);
    const seconds = (Date.now() - s.startedAt) / 1000;
    this.count.sessionClosed(s.clientCloseCode, seconds);
    const info = {
      event: 'session_close',
      session: s.id,
      route: s.route.path,
      upstream: s.upstream.href,
      durationMs: Math.round(seconds * 1000),
      messagesIn: s.msgsIn,
      messagesOut: s.msgsOut,
      bytesIn: s.bytesIn,
      bytesOut: s.bytesOut,
      clientCode: s.clientCloseCode,
      clientReason: s.clientCloseReason,
      upstreamCode: s.upstreamCloseCode,
      upstreamReason: s.upstreamCloseReason,
      closedFirst: s.closedFirst,
      envelope: s.envelope,
      ...(resume !== null ? { resumes: resume.resumes } : {}),
    };
    this.logger.info(info, 'session closed');
    if (chClose.hasSubscribers) chClose.publish(info);
    this.recentCloses.add({
      id: `${this.hooks.shard ?? 0}-${s.id}`, route: info.route, upstream: info.upstream, endedAt: new Date().toISOString(),
      durationMs: info.durationMs, clientCode: info.clientCode, clientReason: info.clientReason, upstreamCode: info.upstreamCode,
      upstreamReason: info.upstreamReason, closedFirst: info.closedFirst, messagesIn: info.messagesIn, messagesOut: info.messagesOut,
      bytesIn: info.bytesIn, bytesOut: info.bytesOut,
    });
  }

  backpressureEvent(s: Session, fill: number): void {
    this.count.backpressureEvents++;
    this.logger.warn({
      event: 'backpressure', session: s.id, route: s.route.path, fillPercent: Math.round(fill * 100),
      queuedMessages: s.server.queued, queuedBytes: s.server.socket.writableLength, capacity: this.config.limits.channelCapacity,
      policy: s.route.backpressure,
    }, 'sustained backpressure towards the upstream');
  }

  controlFrame(s: Session | NativeSession, payload: unknown): void {
    const who = { id: s.id, route: s.route.path, remoteAddress: s.remoteAddress, version: s.envelope ?? '' };
    if (chControl.hasSubscribers) chControl.publish({ session: who, payload });
    try {
      this.hooks.onControl?.(who, payload);
    } catch (err) {
      this.logger.error({ event: 'control_hook_failed', session: s.id, err }, 'onControl hook threw');
    }
  }

  resumeEvent(s: Session, event: 'parked' | 'expired', detail: string): void {
    this.logger.info({ event: event === 'parked' ? 'session_parked' : 'session_park_expired', session: s.id, route: s.route.path, detail },
      event === 'parked' ? 'client gone: session parked' : 'client did not come back: upstream closed');
  }

  errorFrame(s: Session | NativeSession, reason: string): void {
    this.count.envelopeErrors++;
    this.logger.warn({ event: 'envelope_error', session: s.id, route: s.route.path, reason: reason.slice(0, 200) }, 'client sent an error frame');
  }

  // ------------------------------------------------------------------ lifecycle

  /** Bind the listener (port 0 allowed); resolves with the bound port. */
  async listen(): Promise<{ port: number }> {
    if (this.listening) return { port: this.port };
    await this.applyRoutes(this.config);
    // The cluster first: the first upgrade is already counted cluster-wide. (An unreachable
    // Redis does not stop the start: the instance serves under local limits.)
    if (this.config.cluster !== undefined && this.cluster === null) {
      this.cluster = new Cluster(this.config.cluster, this.logger, () => this.sessions.size);
      this.cluster.onReloadAsked = this.clusterReloadHook;
      await this.cluster.start();
    }
    const { listen, limits } = this.config;
    const options: http.ServerOptions = {
      // Node answers a longer head with 431 itself; the header count is checked per upgrade.
      maxHeaderSize: limits.maxHeaderBytes,
      noDelay: true,
      // A request head must be complete within the handshake limit (Node answers 408).
      headersTimeout: limits.handshakeTimeoutMs,
      requestTimeout: limits.handshakeTimeoutMs,
      connectionsCheckingInterval: Math.min(1000, limits.handshakeTimeoutMs),
    };
    // The engine accepts (and terminates TLS) unless the addon is missing, SLUICE_ACCEPT=node
    // asks for Node's accept, or more headers are allowed than its parser takes.
    const engineAccept = this.engine !== null && process.env.SLUICE_ACCEPT !== 'node' && limits.maxHeaderCount < 255;
    const pem = listen.tls ? { cert: readFileSync(listen.tls.certFile), key: readFileSync(listen.tls.keyFile) } : null;
    // With the engine accepting, Node's server (never listening) gets plaintext only: TLS
    // connections handed over arrive through the engine's socket pair.
    // A TLS handshake must finish within handshakeTimeoutMs too (Node's default is 120 s).
    const server = pem !== null && !engineAccept
      ? https.createServer({
        ...options, cert: pem.cert, key: pem.key, handshakeTimeout: limits.handshakeTimeoutMs,
        // Node takes 48 bytes of keys (its own layout); the shards share them too.
        ...(this.hooks.ticketKeys ? { ticketKeys: Buffer.from(this.hooks.ticketKeys.subarray(0, 48)) } : {}),
      })
      : http.createServer(options);
    // A TLS handshake that failed or timed out: nothing can be written back (no session
    // keys); the connection goes at once.
    server.on('tlsClientError', (_err: Error, socket: net.Socket) => socket.destroy());
    // One more than allowed, so that too many headers are seen (Node drops the rest silently).
    server.maxHeadersCount = limits.maxHeaderCount + 1;
    server.on('upgrade', (req: IncomingMessage, socket: net.Socket, head: Buffer) => this.onUpgrade(req, new SocketClient(socket), head));
    // Not an upgrade: 404, 426, or proxied as HTTP on `http: true` routes (http-forward.ts).
    server.on('request', (req: IncomingMessage, res: http.ServerResponse) => this.plainHttp.handle(req, res));
    server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
      if (err.code?.startsWith('ERR_TLS') || err.code?.startsWith('ERR_SSL')) {
        socket.destroy();
        return;
      }
      // Node's own answers: 431 for an oversized head, 408 for a slow one, 400 otherwise.
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large'
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
      if (socket.writable && !socket.writableEnded) {
        socket.end(`HTTP/1.1 ${status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      }
      socket.destroySoon();
    });
    this.server = server;
    try {
      const engine = this.engine;
      if (engine !== null && engineAccept) {
        // The engine accepts and reads request heads itself; Node's server (never
        // listening) gets the connections the engine hands over (plain HTTP, and routes
        // the engine cannot carry). 8 KiB above maxHeaderBytes leaves room for the request
        // line; the header bytes and count are checked exactly in onUpgrade, as for Node.
        const fd = listenSocket(listen.host, listen.port, this.hooks.reusePort === true);
        this.port = socketPort(fd);
        try {
          engine.listen(fd, limits.handshakeTimeoutMs, limits.maxHeaderBytes + 8192, limits.maxHeaderCount + 1,
            pem !== null ? { cert: pem.cert.toString('latin1'), key: pem.key.toString('latin1'), ticketKeys: this.hooks.ticketKeys } : undefined);
        } catch (err) {
          new net.Socket({ fd }).destroy();
          // A certificate or key OpenSSL does not take: named as the config names it.
          if (/^listen\.tls: /.test((err as Error).message)) {
            throw new SluiceError('SLUICE_ERR_CONFIG', `${(err as Error).message} (listen.tls.certFile ${listen.tls!.certFile}, keyFile ${listen.tls!.keyFile})`);
          }
          throw err;
        }
        this.engineAccepts = true;
      } else {
        const opts = listenOptions(listen.host, listen.port, this.hooks.reusePort === true);
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(opts, () => {
            server.off('error', reject);
            resolve();
          });
        });
        this.port = (server.address() as net.AddressInfo).port;
      }
    } catch (err) {
      this.stopRoutes();
      this.echo?.close();
      this.echo = null;
      this.server = null;
      server.close();
      void this.cluster?.stop();
      this.cluster = null;
      if (err instanceof SluiceError) throw err;
      const e = err as NodeJS.ErrnoException;
      throw new SluiceError('SLUICE_ERR_LISTEN', `cannot listen on ${listen.host}:${listen.port}: ${e.code ?? e.message} (in use, or not an address of this machine)`);
    }
    try {
      await this.startTunnels();
    } catch (err) {
      this.stopAccepting();
      this.server?.close();
      this.server = null;
      this.stopRoutes();
      this.echo?.close();
      this.echo = null;
      void this.cluster?.stop();
      this.cluster = null;
      throw err;
    }
    await this.startRelay();
    this.listening = true;
    this.sweepTimer = setInterval(() => this.sweep(), 1000);
    this.sweepTimer.unref();
    // Library use: the admin server comes with the proxy. (The CLI runs its own, since
    // only it can re-read the config's sources, and hands us no admin section.)
    if (this.config.admin) this.admin = await startAdminServer(this, this.config.admin, { logger: this.logger });
    return { port: this.port };
  }

  /**
   * Drain and stop: new upgrades get 503, sessions get 1001, and after `drainMs` what
   * is left is cut. Resolves when everything this proxy opened is closed.
   */
  close(opts: CloseOptions = {}): Promise<void> {
    if (this.closing) return this.closing;
    const code = opts.code !== undefined && isValidWireCloseCode(opts.code) ? opts.code : 1001;
    this.closing = this.drainAndStop(opts.drainMs ?? this.config.drain.timeoutMs, code, opts.reason ?? 'proxy shutting down');
    return this.closing;
  }

  /** Close the listen socket now: new connections are refused by the kernel (sessions go on). */
  stopAccepting(): void {
    if (this.server !== null && this.listening) {
      this.listening = false;
      if (this.engineAccepts) this.engine?.stopListening();
      else this.server.close();
    }
  }

  private async drainAndStop(drainMs: number, code: number, reason: string): Promise<void> {
    this.draining = true;
    for (const s of this.sessions) s.shutdown(code, reason);
    const deadline = Date.now() + drainMs;
    while ((this.sessions.size > 0 || this.pendingUpgrades > 0 || this.plainHttp.inFlight > 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    for (const s of this.sessions) s.destroy();
    for (const client of this.handshaking) client.destroy();
    // Destroyed sockets report 'close' on a later turn: wait (briefly) so that every
    // session has ended, been counted and logged when close() resolves.
    const cutoff = Date.now() + 1000;
    while (this.sessions.size > 0 && Date.now() < cutoff) await new Promise((r) => setTimeout(r, 5));
    this.stopAccepting();
    for (const r of this.relays) r.destroy();
    if (this.relayServer !== null) {
      if (this.hooks.resumePeers !== undefined && this.hooks.shard !== undefined) Atomics.store(this.hooks.resumePeers, this.hooks.shard, 0);
      this.relayServer.close();
      this.relayServer.closeAllConnections();
      this.relayServer = null;
    }
    // Keep-alive connections that never asked for an upgrade.
    this.server?.closeAllConnections();
    this.server = null;
    this.plainHttp.close();
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
    this.sweepTimer = null;
    this.stopRoutes();
    for (const t of this.tunnelListeners) t.close();
    this.tunnelListeners = [];
    this.agents?.close();
    this.agents = null;
    this.echo?.close();
    this.echo = null;
    await this.admin?.close();
    this.admin = null;
    await this.cluster?.stop();
    this.cluster = null;
    this.engine?.close();
    this.engine = null;
    for (const t of this.drainTimers.values()) clearTimeout(t);
    this.drainTimers.clear();
  }

  /**
   * Apply a new config: validated first (a bad one throws ConfigError and changes
   * nothing). Sessions on routes that still exist stay; sessions on removed routes get
   * 1012 after a jittered delay within the drain timeout.
   */
  async reload(input: unknown): Promise<void> {
    if (this.closing) throw new SluiceError('SLUICE_ERR_CLOSED', 'the proxy is closed (or closing); it takes no reload');
    const next = parseConfig(input);
    const prev = this.config;
    if (JSON.stringify(next.listen) !== JSON.stringify(prev.listen)) {
      this.logger.warn({ event: 'reload' }, 'listen (address, port, TLS) applies after a restart');
    }
    if (JSON.stringify(next.tunnels) !== JSON.stringify(prev.tunnels)) {
      this.logger.warn({ event: 'reload' }, 'tunnels apply after a restart');
      next.tunnels = prev.tunnels;
    }
    const keys = new Set(next.routes.map(routeKey));
    await this.applyRoutes(next);
    this.config = next;
    this.logger.level = next.log.level;
    const jitterMs = Math.min(next.drain.timeoutMs, 10_000);
    let removed = 0;
    for (const s of this.sessions) {
      if (keys.has(s.routeKey)) continue;
      removed++;
      const t = setTimeout(() => s.shutdown(1012, 'route removed by reload'), Math.random() * jitterMs);
      t.unref();
    }
    this.logger.info({ event: 'reload', routes: next.routes.length, removedSessions: removed }, 'configuration reloaded');
  }

  private async applyRoutes(config: ProxyConfig): Promise<void> {
    const needsEcho = config.routes.some((r) => r.upstreams.some((u) => u.url === BUILTIN_ECHO));
    if (needsEcho && this.echo === null) {
      this.echo = await startEchoServer(config.limits.maxFrameBytes);
      this.echoUrl = `ws://127.0.0.1:${this.echo.port}/`;
    }
    const runtimes: RouteRuntime[] = config.routes.map((rc) => {
      const ups = rc.upstreams.map((u) => {
        const href = u.url === BUILTIN_ECHO ? this.echoUrl : u.url;
        const key = `${href}#${u.weight}${u.agent !== undefined ? `@${u.agent}` : ''}`;
        let up = this.upstreamsByUrl.get(key);
        if (!up) {
          up = new Upstream({ ...u, url: href });
          this.upstreamsByUrl.set(key, up);
        }
        return up;
      });
      const key = routeKey(rc);
      let counts = this.routeCounts.get(key);
      if (!counts) {
        counts = { sessions: 0, pending: 0, versions: { v1: 0, v2: 0 } };
        this.routeCounts.set(key, counts);
      }
      return { key, config: rc, balancer: new Balancer(ups, rc.balance), healthTimer: null, access: null, counts };
    });
    // Key files are read here, before anything changes: a bad one fails the reload whole.
    for (const r of runtimes) {
      if (r.config.auth) r.access = await AccessPolicy.create(r.config.auth, r.config.path, r.config.mode === 'agent');
    }
    const l = config.limits;
    this.connectionRate = l.connectionRatePerIp > 0 ? new ConnectionRateLimiter(l.connectionRatePerIp, l.connectionBurstPerIp) : null;
    // Drains outlive a reload: an upstream still on its route (by URL) stays drained.
    for (const r of runtimes) for (const u of r.balancer.upstreams) if (this.drained.has(drainKey(r.key, u.href))) r.balancer.drained.add(u);
    this.stopRoutes();
    this.routes = runtimes;
    this.matchers = compileRoutes(runtimes.map((r) => ({ route: r, config: r.config })));
    for (const r of runtimes) this.startHealthChecks(r);
  }

  private stopRoutes(): void {
    for (const r of this.routes) {
      if (r.healthTimer !== null) clearInterval(r.healthTimer);
      r.healthTimer = null;
    }
  }

  /** Active health checks: a WebSocket handshake to each upstream every interval. */
  private startHealthChecks(r: RouteRuntime): void {
    const { intervalMs, timeoutMs, coolOffMs } = r.config.health;
    if (intervalMs <= 0) return;
    r.healthTimer = setInterval(() => {
      for (const up of r.balancer.upstreams) {
        dial({
          url: up.url, target: up.url.pathname + up.url.search, headers: [], protocols: [], timeoutMs, tls: r.config.tls,
          ...this.throughAgent(up, timeoutMs),
        })
          .then(({ socket }) => {
            socket.destroy();
            if (up.downUntil !== 0) this.healthChanged(up, true, '');
            up.downUntil = 0;
          })
          .catch((err: Error) => {
            const wasHealthy = up.healthy(Date.now());
            up.downUntil = Date.now() + Math.max(coolOffMs, intervalMs);
            up.lastError = err.message;
            if (wasHealthy) this.healthChanged(up, false, err.message);
          });
      }
    }, intervalMs);
    r.healthTimer.unref();
  }

  private healthChanged(up: Upstream, healthy: boolean, reason: string): void {
    this.logger.warn({ event: 'upstream_health', upstream: up.href, healthy, reason }, healthy ? 'upstream healthy' : 'upstream unhealthy');
    if (chHealth.hasSubscribers) chHealth.publish({ upstream: up.href, healthy, reason });
  }

  /** Once a second: advance the coarse clock, heartbeats, close deadlines, sustained-backpressure checks. */
  private sweep(): void {
    const now = Date.now();
    this.clock = now;
    const pingMs = this.config.heartbeat.pingIntervalSeconds * 1000;
    const timeoutMs = this.config.heartbeat.pongTimeoutSeconds * 1000;
    for (const s of this.sessions) s.tick(now, pingMs, timeoutMs);
  }

  // ------------------------------------------------------------------ upgrades

  /**
   * `via`: `client` (a connection to our listener), `relay` (a resume another shard relayed
   * to our loopback listener), `local` (a resume whose relay failed: handled here).
   */
  private onUpgrade(req: UpgradeRequest, client: HandshakeClient, head: Buffer, via: 'client' | 'relay' | 'local' = 'client'): void {
    const relayed = via === 'relay';
    const started = Date.now();
    const rawUrl = req.url ?? '/';
    const q = rawUrl.indexOf('?');
    const path = q < 0 ? rawUrl : rawUrl.slice(0, q);
    const query = q < 0 ? '' : rawUrl.slice(q + 1);
    const hostHeader = req.headers.host ?? '';
    const key = req.headers['sec-websocket-key'] ?? '';
    const version = req.headers['sec-websocket-version'] ?? '';
    const offered = req.headers['sec-websocket-protocol'] ?? '';
    const extensions = req.headers['sec-websocket-extensions'] ?? '';
    const origin = req.headers.origin ?? '';
    const forwardedFor = String(req.headers['x-forwarded-for'] ?? '');
    const connectionTokens = (req.headers.connection ?? '').toLowerCase();
    const headers: Array<[string, string]> = [];
    const headerMap = new Map<string, string>();
    const raw = req.rawHeaders;
    let headerBytes = 0;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i].toLowerCase();
      const value = raw[i + 1];
      headerBytes += name.length + value.length + 4;
      headerMap.set(name, headerMap.has(name) ? `${headerMap.get(name)}, ${value}` : value);
      if (!HOP_HEADERS.has(name)) headers.push([name, value]);
    }
    const headerCount = raw.length / 2;
    let remote = client.remoteAddress;
    if (remote.startsWith('::ffff:')) remote = remote.slice(7);
    if (path === AGENT_STREAM_PATH) {
      this.serveAgentStream(client, head, headerMap);
      return;
    }
    if (relayed) {
      // Only a shard of this pool knows the secret; its word for the client's address is taken.
      if (!this.relaySecretMatches(headerMap.get('sluice-relay') ?? '')) {
        client.answer('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
        return;
      }
      remote = headerMap.get('sluice-relayed-for') ?? remote;
    }
    // A client back for a session this shard (or, relayed, another) holds reuses the place
    // its session has: it is not counted, or rate-limited, again.
    const resumeAsk = parseResumeHeader(headerMap.get(RESUME_HEADER) ?? '');
    // Relayed by another instance of the cluster: its signature makes its word for the client's address good.
    if (resumeAsk !== null && via === 'client' && this.cluster !== null && headerMap.has('sluice-relayed-for') &&
        this.cluster.verify(headerMap.get('sluice-cluster') ?? '', 'resume', [resumeAsk.token, headerMap.get('sluice-relayed-for') ?? ''])) {
      remote = headerMap.get('sluice-relayed-for') ?? remote;
    }
    const relayTo = resumeAsk !== null && via === 'client' ? this.resumeOwnerPort(resumeAsk.token) : 0;
    const instanceTo = resumeAsk !== null && via === 'client' && relayTo === 0 ? this.resumeOwnerInstance(resumeAsk.token) : null;
    // Only a live session of this shard is a return (its place is held); a token naming
    // another shard or instance is relayed there (if the route resumes), where it is judged.
    let returning = resumeAsk !== null && this.resumable.get(resumeAsk.token) !== undefined;
    const relaying = relayTo > 0 || instanceTo !== null;

    this.handshaking.add(client);
    let aborted = false;
    const refuse = (status: string, body: string, extra = '') => {
      this.handshaking.delete(client);
      if (aborted) return;
      aborted = true;
      const text = `${body}\n`;
      client.answer(`HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(text)}\r\n${extra}Connection: close\r\n\r\n${text}`);
    };
    const limits = this.config.limits;
    if (this.draining) return refuse('503 Service Unavailable', 'sluice: draining');
    const ledger = this.hooks.ledger;
    const otherShards = ledger !== undefined ? ledger.othersConnections() : 0;
    const cluster = this.cluster;
    const overLocalBound = () => cluster === null && this.sessions.size + this.pendingUpgrades + otherShards >= limits.maxConnections;
    if (!returning && !relaying && overLocalBound()) {
      return refuse('503 Service Unavailable', 'sluice: at max connections');
    }
    if (headerCount > limits.maxHeaderCount || headerBytes > limits.maxHeaderBytes) {
      return refuse('431 Request Header Fields Too Large', 'sluice: too many or too large request headers');
    }
    const httpVersion = req.httpVersion ?? '1.1';
    if (req.method !== 'GET' || (httpVersion !== '1.1' && httpVersion !== '1.0') ||
      (req.headers.upgrade ?? '').toLowerCase() !== 'websocket' || key.length !== 24 || version !== '13') {
      return refuse('400 Bad Request', 'sluice: bad WebSocket upgrade', version !== '13' ? 'Sec-WebSocket-Version: 13\r\n' : '');
    }
    // RFC 6455 §4.2.1: the Connection header must carry the "upgrade" token.
    const connection = connectionTokens.split(',').map((t) => t.trim());
    if (!connection.includes('upgrade')) {
      return refuse('400 Bad Request', 'sluice: the Connection header lacks "upgrade"');
    }
    const host = requestHost(hostHeader);
    const matched = matchRoute(this.matchers, host, path);
    if (!matched) return refuse('404 Not Found', `sluice: no route for ${path}`);
    const origins = this.config.origins;
    if (origins.length > 0 && !origins.includes('*') && !origins.includes(origin)) {
      return refuse('403 Forbidden', 'sluice: origin not allowed');
    }
    const route = matched.route;
    if (route.config.resume === undefined) {
      // Not a resume route: the header means nothing here, and every limit applies.
      if (relaying && overLocalBound()) return refuse('503 Service Unavailable', 'sluice: at max connections');
      returning = false;
    }
    if (!relayed && !returning && !relaying && cluster === null && this.connectionRate !== null && !this.connectionRate.allow(remote, started)) {
      return refuse('429 Too Many Requests', 'sluice: connection rate limit');
    }
    const routeElsewhere = ledger !== undefined ? ledger.othersRoute(route.key) : 0;
    if (!returning && !relaying && cluster === null && route.config.maxConnections > 0 && route.counts.sessions + route.counts.pending + routeElsewhere >= route.config.maxConnections) {
      return refuse('503 Service Unavailable', 'sluice: route at max connections');
    }
    // Connection-listed headers are hop-by-hop too (RFC 9110 §7.6.1).
    const extraHop = connection.filter((t) => t !== '' && t !== 'upgrade');
    const fwd = extraHop.length > 0 ? headers.filter(([n]) => !extraHop.includes(n)) : headers;
    fwd.push(...forwardedHeaders(forwardedFor, remote, this.config.listen.tls !== undefined, hostHeader));
    const offeredList = offered.split(',').map((p) => p.trim()).filter((p) => p !== '');
    // Envelope routes: the client's sluice.v1/v2 offer is ours to answer; the rest goes on.
    let envelope: EnvelopeVersion | null = null;
    let clientProtocol: string | null = null;
    let protocols = offeredList;
    if (route.config.mode === 'envelope') {
      const n = negotiateEnvelope(offeredList, this.config.protocol);
      envelope = n.version;
      clientProtocol = n.protocol;
      protocols = offeredList.filter((p) => p !== 'sluice.v1' && p !== 'sluice.v2');
    }
    // permessage-deflate passes through: offered to the upstream as the client offered it,
    // answered to the client as the upstream answered; compressed frames pass untouched.
    const deflateOffer = route.config.compression && route.config.mode === 'transparent' && /permessage-deflate/i.test(extensions)
      ? extensions : '';
    const hashHeader = route.balancer.hashHeader;
    const hashValue = hashHeader ? (headerMap.get(hashHeader) ?? '') : '';
    // Credentials carried in the query string are ours: they do not travel upstream.
    const upstreamQuery = stripCredentialParams(query, route.config);
    // Resume (routes with resume): `Sluice-Resume: new` opts a new session in; a token asks
    // for the session it names. Without the header the session is an ordinary one.
    const resumeHeader = route.config.resume !== undefined ? headerMap.get(RESUME_HEADER) : undefined;
    if (resumeHeader !== undefined && relayTo > 0 && client.socket) {
      // Its session is held by another shard (the kernel spreads connections): relayed there.
      this.handshaking.delete(client);
      this.relayResume(req, client, head, { host: '127.0.0.1', port: relayTo, tls: false },
        [`Sluice-Relay: ${this.relaySecret}`, `Sluice-Relayed-For: ${remote}`]);
      return;
    }
    if (resumeHeader !== undefined && instanceTo !== null && client.socket && resumeAsk !== null) {
      // Its session is held by another instance of the cluster: relayed there, signed.
      this.handshaking.delete(client);
      this.relayResume(req, client, head, instanceTo,
        [`Sluice-Cluster: ${this.cluster!.sign('resume', instanceTo.id, [resumeAsk.token, remote])}`, `Sluice-Relayed-For: ${remote}`]);
      return;
    }

    const onAbort = () => {
      aborted = true;
      this.handshaking.delete(client);
      clearTimeout(deadline);
    };
    client.onGone(onAbort);
    this.pendingUpgrades++;
    route.counts.pending++;
    this.publishCounts(route.key, route.counts);
    // Node's parser bounds the request head (headersTimeout); from here on (credentials,
    // dial, upstream handshake) the rest of limits.handshakeTimeoutMs applies.
    const deadline = setTimeout(() => {
      refuse('504 Gateway Timeout', 'sluice: handshake not completed in time'); // whatever finishes later is dropped
    }, Math.max(0, limits.handshakeTimeoutMs - (Date.now() - started)));
    // `publish: false` when a session takes the place over: its own publish carries both
    // changes at once, so another shard never reads the place counted twice (or not at all).
    // With a cluster: whether this upgrade holds places (taken at admission), given back
    // when no session takes them over.
    let placed: PlaceList = NO_PLACES;
    const settle = (publish = true) => {
      this.pendingUpgrades--;
      route.counts.pending--;
      if (publish) this.publishCounts(route.key, route.counts);
      clearTimeout(deadline);
      if (publish && placed.length > 0) {
        givePlaces(placed);
        placed = NO_PLACES;
      }
    };
    const finish = (decision: AccessDecision | null) => {
      if (decision !== null && !decision.ok) {
        settle();
        this.logger.info({ event: 'auth_refused', route: route.config.path, remote, reason: decision.reason }, 'credentials refused');
        refuse('401 Unauthorized', `sluice: ${decision.reason}`, 'WWW-Authenticate: Bearer realm="sluice"\r\n');
        return;
      }
      if (aborted) {
        settle();
        return;
      }
      if (route.config.mode === 'agent') {
        this.acceptAgent(req, client, head, route, decision, offeredList, remote, () => settle());
        return;
      }
      const consumed = decision?.consumedProtocol;
      const subject = decision?.ok ? (decision.principal ?? null) : null;
      let refusal: ResumeRefusal | null = null;
      if (resumeHeader !== undefined && resumeHeader.trim() !== 'new') {
        const found = resumeFound ?? this.findResumable(resumeHeader, route, subject);
        if (typeof found !== 'string' && client.socket) {
          settle();
          this.handshaking.delete(client);
          client.offGone();
          this.resumeInto(found, client.socket, head, {
            key, protocol: clientProtocol ?? consumed ?? '', remote, envelope: envelope!,
            expiresAt: decision?.ok ? (decision.expiresAt ?? 0) : 0, received: parseResumeHeader(resumeHeader)!.received,
          });
          return;
        }
        refusal = typeof found === 'string' ? found : 'unknown';
        this.count.resumeOutcome(refusal);
      }
      const upstreamProtocols = consumed ? protocols.filter((p) => p !== consumed) : protocols;
      const candidates = route.balancer.order(remote, hashValue, Date.now(), MAX_DIAL_TRIES);
      if (candidates.length === 0) {
        settle();
        refuse('503 Service Unavailable', 'sluice: every upstream of this route is draining');
        return;
      }
      const expiresAt = decision?.ok ? (decision.expiresAt ?? 0) : 0;
      const failed = (err: UpstreamError) => {
        settle();
        this.logger.warn({ event: 'upstream_refused', route: route.config.path, code: err.code, status: err.status }, err.message);
        if (aborted) return;
        if (err.body !== undefined) {
          this.handshaking.delete(client);
          aborted = true;
          client.answer(Buffer.concat([
            Buffer.from(`HTTP/1.1 ${`${err.status} ${err.statusText}`.trim()}\r\nContent-Length: ${err.body.length}\r\nConnection: close\r\n\r\n`, 'latin1'),
            err.body,
          ]));
        } else {
          const text = err.status === 504 ? '504 Gateway Timeout' : '502 Bad Gateway';
          refuse(text, `sluice: ${err.message}`);
        }
      };
      if (client instanceof EngineClient) {
        // The engine dials, sends our request, checks the answer and writes the 101 itself.
        void this.dialThroughEngine(client, route, candidates, matched, path, upstreamQuery, fwd, upstreamProtocols,
          envelope !== null ? (clientProtocol ?? '') : (consumed ?? ''), expiresAt, deflateOffer, envelope)
          .then(({ upstream, protocol }) => {
            this.handshaking.delete(client);
            client.offGone();
            // The session takes the pending place over in one publish: the count other
            // shards read neither dips nor doubles (the client has its 101 already and may
            // connect again at once, to another shard).
            settle(false);
            this.nativeOpened(client.id, route, upstream, {
              remote, origin, protocol, handshakeMs: Date.now() - started,
              tokenProtocol: protocol !== '' && protocol === consumed, envelope, placed,
            });
          }, failed);
        return;
      }
      const socket = client.socket!;
      void this.dialFirst(route, candidates, matched, path, upstreamQuery, fwd, upstreamProtocols, deflateOffer).then(
        ({ upstream, result }) => {
          // A reload that removed this route while we dialled: its sessions got 1012 already.
          const removed = !this.routes.some((r) => r.key === route.key);
          if (aborted || this.draining || removed) {
            settle();
            upstream.sessions--;
            result.socket.destroy();
            refuse('503 Service Unavailable', removed ? 'sluice: route removed' : 'sluice: draining');
            return;
          }
          client.offGone();
          this.handshaking.delete(client);
          // The session (or the engine's hand-over) takes the place over in its own publish:
          // the count other shards read neither dips nor doubles in between.
          settle(false);
          this.startSession(socket, head, route, upstream, result, {
            // A token carried as a subprotocol entry is answered back when the upstream picks
            // none: a browser that offered subprotocols fails a handshake that picks none.
            key, protocol: clientProtocol ?? (result.protocol || consumed || ''),
            extensions: result.extensions,
            remote, origin, started, envelope, expiresAt,
            tokenProtocol: clientProtocol === null && result.protocol === '' && consumed !== undefined,
            subject, refusal, resumable: resumeHeader !== undefined, placed,
          });
        },
        failed,
      );
    };
    let resumeFound: Session | ResumeRefusal | null = null;
    // After the credentials: the rates (per IP, per subject) and the places (cluster-wide
    // with a cluster; the local checks above otherwise), then on.
    const admit = (decision: AccessDecision | null) => {
      if ((decision !== null && !decision.ok) || route.config.mode === 'agent') {
        finish(decision);
        return;
      }
      if (returning && resumeHeader !== undefined) {
        // Its session holds its place: no new one is taken. A resume that cannot continue
        // it opens a new session, which must fit the limits like any other.
        resumeFound = this.findResumable(resumeHeader, route, decision?.ok ? (decision.principal ?? null) : null);
        if (typeof resumeFound !== 'string') {
          finish(decision);
          return;
        }
        const routeElsewhere2 = ledger !== undefined ? ledger.othersRoute(route.key) : 0;
        if (cluster === null && (this.sessions.size + this.pendingUpgrades - 1 + otherShards >= limits.maxConnections ||
            (route.config.maxConnections > 0 && route.counts.sessions + route.counts.pending - 1 + routeElsewhere2 >= route.config.maxConnections))) {
          settle();
          refuse('503 Service Unavailable', 'sluice: at max connections');
          return;
        }
      }
      const subject = decision?.principal;
      void this.admission(route, remote, subject, relayed).then((outcome) => {
        if (!('status' in outcome)) {
          placed = outcome;
          if (aborted) {
            settle();
            return;
          }
          finish(decision);
          return;
        }
        settle();
        this.logger.info({ event: 'admission_refused', route: route.config.path, remote, reason: outcome.reason }, 'connection refused');
        refuse(outcome.status, `sluice: ${outcome.reason}`);
      });
    };
    if (route.access === null) {
      admit(null);
      return;
    }
    // Credentials are checked before any upstream is dialled.
    route.access.check({ headers: headerMap, query, protocols: offeredList, remoteAddress: remote }).then(admit, (err: Error) => {
      finish({ ok: false, status: 401, reason: `credentials could not be checked: ${err.message}` });
    });
  }

  /**
   * An agent's upgrade on an agent route, its credentials checked: the agent registry
   * answers it (101 with sluice.tunnel.v1) and registers the agent once its hello names a
   * name these credentials may use.
   */
  private acceptAgent(
    req: UpgradeRequest, client: HandshakeClient, head: Buffer, route: RouteRuntime, decision: AccessDecision | null,
    offered: string[], remote: string, settle: () => void,
  ): void {
    settle();
    this.handshaking.delete(client);
    client.offGone();
    const socket = client.socket;
    if (socket === undefined || socket === null || !(req instanceof http.IncomingMessage)) {
      client.answer('HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    if (!offered.includes(TUNNEL_SUBPROTOCOL)) {
      const text = `sluice: an agent route needs subprotocol ${TUNNEL_SUBPROTOCOL}\n`;
      client.answer(`HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`);
      return;
    }
    const ok = decision !== null && decision.ok ? decision : null;
    void this.agentRegistry().accept(req, socket, head, {
      principal: ok?.principal ?? 'anonymous',
      names: ok?.agents === undefined ? null : ok.agents,
      duplicate: route.config.duplicate,
      remote,
    });
  }

  private async dialFirst(
    route: RouteRuntime, candidates: Upstream[], matched: RouteMatcher<RouteRuntime>, path: string, query: string,
    headers: Array<[string, string]>, protocols: string[], extensions: string,
  ): Promise<{ upstream: Upstream; result: Awaited<ReturnType<typeof dial>> }> {
    let last: UpstreamError | undefined;
    for (const upstream of candidates) {
      // Counted from the dial on, so least_conn sees a burst of upgrades in flight; the
      // session takes the count over, every other ending gives it back.
      upstream.sessions++;
      try {
        const timeoutMs = this.config.limits.upstreamTimeoutMs;
        const result = await dial({
          url: upstream.url,
          target: mapTarget(matched, upstream.url, path, query),
          headers,
          protocols,
          extensions,
          timeoutMs,
          tls: route.config.tls,
          ...this.throughAgent(upstream, timeoutMs),
        });
        upstream.failures = 0;
        return { upstream, result };
      } catch (err) {
        upstream.sessions--;
        last = err as UpstreamError;
        if (this.dialFailed(route, upstream, last)) throw last;
      }
    }
    throw last ?? new UpstreamError('SLUICE_ERR_UPSTREAM_UNREACHABLE', 502, 'no upstream');
  }

  /**
   * A dial that failed: the upstream is held out for coolOffMs (unless it answered with its
   * own refusal). Returns whether to stop here rather than try the next upstream.
   */
  private dialFailed(route: RouteRuntime, upstream: Upstream, err: UpstreamError): boolean {
    // A refusal with the upstream's own status is an answer, not a failure to retry.
    if (err.body !== undefined) return true;
    upstream.failures++;
    upstream.lastError = err.message;
    const wasHealthy = upstream.healthy(Date.now());
    upstream.downUntil = Date.now() + route.config.health.coolOffMs;
    if (wasHealthy) this.healthChanged(upstream, false, err.message);
    return err.status === 504; // do not multiply a slow backend's wait
  }

  private startSession(
    socket: net.Socket, head: Buffer, route: RouteRuntime, upstream: Upstream, dialed: DialResult, m: {
      key: string; protocol: string; extensions: string; remote: string; origin: string; started: number;
      envelope: EnvelopeVersion | null; expiresAt: number; tokenProtocol: boolean;
      subject: string | null; refusal: ResumeRefusal | null; resumable: boolean;
      /** The cluster places it holds (given back when its session ends). */
      placed: PlaceList;
    },
  ): void {
    const handshakeMs = Date.now() - m.started;
    const accept = createHash('sha1').update(m.key + WS_GUID).digest('base64');
    let answer = `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n`;
    if (m.protocol !== '') answer += `Sec-WebSocket-Protocol: ${m.protocol}\r\n`;
    if (m.extensions !== '') answer += `Sec-WebSocket-Extensions: ${m.extensions}\r\n`;
    socket.setNoDelay(true);
    const limits = this.config.limits;
    const engine = this.engine;
    const rc = m.resumable ? route.config.resume : undefined;
    if (engine !== null && rc === undefined && m.extensions === '' && socketFd(socket) >= 0 && socketFd(dialed.socket) >= 0) {
      // The engine takes both sockets once the 101 has left (Node's write callback). Until
      // then the place is held as an upgrade in flight, published before the 101 goes: a
      // client that gets its 101 and connects again at once, to another shard, must find it
      // counted there (the shards count against maxConnections together).
      this.pendingUpgrades++;
      route.counts.pending++;
      this.publishCounts(route.key, route.counts);
      socket.write(`${answer}\r\n`, 'latin1', () => {
        this.pendingUpgrades--;
        route.counts.pending--;
        this.startNative(socket, head, route, upstream, dialed, m, handshakeMs);
      });
      return;
    }
    const s = new Session(this.nextId++, this, route.config, route.key, upstream, { socket, head }, dialed, {
      remoteAddress: m.remote, origin: m.origin, protocol: m.protocol, handshakeMs, envelope: m.envelope, expiresAt: m.expiresAt,
      rateLimiter: limits.messagesPerSecond > 0 || limits.bytesPerSecond > 0
        ? new MessageRateLimiter(limits.messagesPerSecond, limits.bytesPerSecond)
        : null,
      deflate: m.extensions,
    }, rc === undefined ? null : this.resumeState(rc, m.subject, m.refusal));
    this.sessions.add(s);
    if (m.placed.length > 0) this.placed.set(s, m.placed);
    if (s.resume !== null) this.resumable.add(s.resume.token, s);
    route.counts.sessions++;
    this.publishCounts(route.key, route.counts);
    this.count.sessionOpened();
    if (m.envelope !== null) route.counts.versions[m.envelope]++;
    const info = {
      event: 'session_open', session: s.id, route: route.config.path, upstream: upstream.href, remote: m.remote,
      // A token answered back as the subprotocol is a credential: never logged.
      origin: m.origin, subprotocol: m.tokenProtocol ? '[credential]' : m.protocol, handshakeMs, envelope: m.envelope,
    };
    this.logger.info(info, 'session opened');
    if (chOpen.hasSubscribers) chOpen.publish(info);
    // Counted and published before the 101 goes (see above).
    socket.write(`${answer}\r\n`, 'latin1');
    s.start();
  }

  private resumeState(rc: NonNullable<RouteConfig['resume']>, subject: string | null, refusal: ResumeRefusal | null): ResumeState {
    return {
      token: newResumeToken(this.hooks.shard ?? 0, this.cluster?.id ?? null), subject, graceMs: rc.graceSeconds * 1000, bufferBytes: rc.bufferBytes,
      replay: new ReplayBuffer(), received: 0, ackSent: 0, parkedAt: 0, dead: false, resumes: 0, held: false,
      refusal: refusal === null ? null : REFUSAL_TEXT[refusal],
    };
  }

  /** The session a `Sluice-Resume` header asks for, or why it cannot continue. */
  private findResumable(header: string, route: RouteRuntime, subject: string | null): Session | ResumeRefusal {
    const ask = parseResumeHeader(header);
    if (ask === null) return 'malformed';
    const s = this.resumable.get(ask.token);
    if (s === undefined) return this.resumable.wasKnown(ask.token) ? 'expired' : 'unknown';
    if (s.routeKey !== route.key) return 'route';
    if (s.resume!.subject !== subject) return 'foreign';
    return s.resumeRefusal(ask.received) ?? s;
  }

  /**
   * Rates and places of one new connection: per subject (routes[].auth.connectionRatePerSubject),
   * and with a cluster per IP and the places (global, then the route's), through Redis.
   * The places it holds when it may go on (none without a cluster), else the refusal.
   */
  private async admission(route: RouteRuntime, remote: string, subject: string | undefined, relayed: boolean): Promise<Refusal | PlaceList> {
    const perSubject = route.config.auth?.connectionRatePerSubject ?? 0;
    const cluster = this.cluster;
    const limits = this.config.limits;
    if (perSubject > 0 && subject !== undefined) {
      const key = `sub:${route.key}:${subject}`;
      let ok: boolean;
      if (cluster !== null) {
        ok = await cluster.rateAllows(key, perSubject, 0);
      } else {
        let local = this.subjectRates.get(route.key);
        if (local === undefined) this.subjectRates.set(route.key, local = new ConnectionRateLimiter(perSubject, 0));
        ok = local.allow(subject, Date.now());
      }
      if (!ok) return { status: '429 Too Many Requests', reason: 'connection rate limit for these credentials' };
    }
    if (cluster === null) return NO_PLACES;
    if (!relayed && limits.connectionRatePerIp > 0 && !(await cluster.rateAllows(`ip:${remote}`, limits.connectionRatePerIp, limits.connectionBurstPerIp))) {
      return { status: '429 Too Many Requests', reason: 'connection rate limit' };
    }
    if (this.draining) return { status: '503 Service Unavailable', reason: 'draining' };
    const global = cluster.scope('global', limits.maxConnections);
    if (!(await global.take())) return { status: '503 Service Unavailable', reason: 'at max connections (cluster)' };
    if (route.config.maxConnections <= 0) return [global];
    const own = cluster.scope(`route:${route.key}`, route.config.maxConnections);
    if (!(await own.take())) {
      global.give();
      return { status: '503 Service Unavailable', reason: 'route at max connections (cluster)' };
    }
    return [global, own];
  }

  /** Cluster: how to reach the other instance a resume token names, or null (this one's, no cluster, unknown). */
  private resumeOwnerInstance(token: string): { id: string; host: string; port: number; tls: boolean } | null {
    const cluster = this.cluster;
    const owner = tokenInstance(token);
    if (cluster === null || owner === null || owner === cluster.id) return null;
    const advertise = cluster.advertiseOf(owner);
    if (advertise === null) return null;
    const url = new URL(advertise);
    return { id: owner, host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || (url.protocol === 'wss:' ? 443 : 80)), tls: url.protocol === 'wss:' };
  }

  /** Shards: the loopback port of the other shard a resume token names, or 0 (this shard's, or unknown). */
  private resumeOwnerPort(token: string): number {
    const peers = this.hooks.resumePeers;
    if (peers === undefined) return 0;
    const owner = tokenShard(token);
    if (owner < 0 || owner === this.hooks.shard || owner >= peers.length) return 0;
    return Atomics.load(peers, owner);
  }

  /**
   * Relay a resume to the shard that holds its session: the request head again (with the
   * pool's secret and the client's address), then bytes both ways until either side ends.
   * One copy per chunk in this shard; resumes that land on their own shard pay nothing.
   */
  private relayResume(req: UpgradeRequest, client: HandshakeClient, head: Buffer, to: { host: string; port: number; tls: boolean }, extra: string[]): void {
    const socket = client.socket!;
    const lines = [`${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/1.1`];
    const raw = req.rawHeaders;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i].toLowerCase();
      if (name !== 'sluice-relay' && name !== 'sluice-relayed-for' && name !== 'sluice-cluster') lines.push(`${raw[i]}: ${raw[i + 1]}`);
    }
    lines.push(...extra);
    const remote = extra.find((l) => l.startsWith('Sluice-Relayed-For: '))?.slice(20) ?? '';
    const out = to.tls ? tls.connect({ host: to.host, port: to.port, servername: net.isIP(to.host) === 0 ? to.host : undefined }) : net.connect(to.port, to.host);
    // That shard is gone (a crash before it cleared its port): the resume is answered here
    // (its session went with the shard: a new session that says so).
    let answered = false;
    const unreachable = () => {
      if (answered) return;
      answered = true;
      clearTimeout(timer);
      out.destroy();
      this.onUpgrade(req, client, head, 'local');
    };
    // An address that does not answer (blackholed) is given up within the handshake's time.
    const timer = setTimeout(unreachable, Math.min(5000, this.config.limits.handshakeTimeoutMs));
    out.once('error', unreachable);
    out.once(to.tls ? 'secureConnect' : 'connect', () => {
      if (answered) return;
      answered = true;
      clearTimeout(timer);
      out.off('error', unreachable);
      out.setNoDelay(true);
      socket.setNoDelay(true);
      this.relays.add(socket);
      this.relays.add(out);
      out.write(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
      if (head.length > 0) out.write(head);
      socket.pipe(out);
      out.pipe(socket);
      for (const [a, b] of [[socket, out], [out, socket]] as const) {
        a.on('error', () => {});
        a.on('close', () => {
          this.relays.delete(a);
          b.destroy();
        });
      }
      this.count.resume.relayed++;
    });
    this.logger.debug({ event: 'resume_relayed', remote, to: `${to.host}:${to.port}` }, 'resume relayed to the shard or instance holding the session');
  }

  private relaySecretMatches(given: string): boolean {
    const want = Buffer.from(this.relaySecret);
    const got = Buffer.from(given);
    return want.length > 0 && got.length === want.length && timingSafeEqual(got, want);
  }

  /** Shards: the loopback listener for resumes relayed by other shards; its port goes in the shared table. */
  private async startRelay(): Promise<void> {
    const peers = this.hooks.resumePeers;
    const shard = this.hooks.shard;
    if (peers === undefined || shard === undefined || this.hooks.ticketKeys === undefined) return;
    this.relaySecret = createHash('sha256').update('sluice resume relay').update(this.hooks.ticketKeys).digest('hex');
    const relay = http.createServer();
    relay.on('upgrade', (req: IncomingMessage, socket: net.Socket, head: Buffer) => this.onUpgrade(req, new SocketClient(socket), head, 'relay'));
    relay.on('request', (_req: IncomingMessage, res: http.ServerResponse) => res.writeHead(404, { Connection: 'close' }).end());
    await new Promise<void>((resolve, reject) => {
      relay.once('error', reject);
      relay.listen(0, '127.0.0.1', () => resolve());
    });
    this.relayServer = relay;
    Atomics.store(peers, shard, (relay.address() as net.AddressInfo).port);
  }

  /** A client back for its session: its 101, then the session takes the new connection over. */
  private resumeInto(s: Session, socket: net.Socket, head: Buffer, m: {
    key: string; protocol: string; remote: string; envelope: EnvelopeVersion; expiresAt: number; received: number;
  }): void {
    const accept = createHash('sha1').update(m.key + WS_GUID).digest('base64');
    let answer = `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n`;
    if (m.protocol !== '') answer += `Sec-WebSocket-Protocol: ${m.protocol}\r\n`;
    socket.setNoDelay(true);
    socket.write(`${answer}\r\n`, 'latin1');
    const parkedMs = s.resume!.parkedAt === 0 ? 0 : Date.now() - s.resume!.parkedAt;
    if (s.envelope !== m.envelope) {
      // It came back speaking the other version: the route's counts follow it.
      const counts = this.routeCounts.get(s.routeKey);
      if (counts !== undefined && s.envelope !== null) {
        counts.versions[s.envelope]--;
        counts.versions[m.envelope]++;
      }
    }
    s.attach(socket, head, m.received, { remoteAddress: m.remote, envelope: m.envelope, expiresAt: m.expiresAt });
    this.logger.info({
      event: 'session_resumed', session: s.id, route: s.route.path, remote: m.remote, parkedMs, received: m.received,
      resumes: s.resume!.resumes,
    }, 'client resumed its session');
  }

  /** The native engine's half of startSession: hand both sockets over, then count and log. */
  private startNative(
    socket: net.Socket, head: Buffer, route: RouteRuntime, upstream: Upstream, dialed: DialResult,
    m: { remote: string; origin: string; protocol: string; expiresAt: number; tokenProtocol: boolean; envelope: EnvelopeVersion | null; placed: PlaceList },
    handshakeMs: number,
  ): void {
    const engine = this.engine;
    if (engine === null || socket.destroyed || dialed.socket.destroyed || this.draining) {
      // Gone in the meantime (or the proxy is closing): its place is given back.
      socket.destroy();
      dialed.socket.destroy();
      upstream.sessions--;
      this.publishCounts(route.key, route.counts);
      givePlaces(m.placed);
      return;
    }
    let engineId: number;
    try {
      // socketFd said it is a TCP socket (a tunnel's stream has no descriptor and stays in TypeScript).
      engineId = engine.adopt(socket, head, dialed.socket as net.Socket, dialed.head, this.engineParams(route, m.expiresAt, m.envelope));
    } catch (err) {
      this.logger.error({ event: 'engine_adopt_failed', route: route.config.path, err }, 'the native engine could not take a session');
      socket.destroy();
      dialed.socket.destroy();
      upstream.sessions--;
      this.publishCounts(route.key, route.counts);
      givePlaces(m.placed);
      return;
    }
    this.nativeOpened(engineId, route, upstream, { ...m, handshakeMs });
  }

  /** Settings of a session in the native engine (an envelope session runs in messages mode). */
  private engineParams(route: RouteRuntime, expiresAt: number, envelope: EnvelopeVersion | null): EngineParams {
    const limits = this.config.limits;
    const hb = this.config.heartbeat;
    return {
      maxFrameBytes: limits.maxFrameBytes,
      maxFragments: 1024,
      highWaterMark: limits.highWaterMark,
      policy: route.config.backpressure === 'pause' ? 0 : route.config.backpressure === 'close' ? 1 : 2,
      channelBytes: limits.channelBytes,
      channelCapacity: limits.channelCapacity,
      pingMs: hb.pingIntervalSeconds * 1000,
      timeoutMs: hb.pongTimeoutSeconds * 1000,
      messagesPerSecond: limits.messagesPerSecond,
      bytesPerSecond: limits.bytesPerSecond,
      expiresInMs: expiresAt > 0 ? Math.max(1, expiresAt - Date.now()) : 0,
      mode: envelope === null ? 0 : 1,
      envelope: envelope === null ? 0 : envelope === 'v1' ? 1 : 2,
    };
  }

  /** A session the native engine holds now: count it, log it, and say what reloads and drains ask. */
  private nativeOpened(
    engineId: number, route: RouteRuntime, upstream: Upstream,
    m: { remote: string; origin: string; protocol: string; tokenProtocol: boolean; handshakeMs: number; envelope: EnvelopeVersion | null; placed: PlaceList },
  ): void {
    const engine = this.engine!;
    const s = new NativeSession(this.nextId++, engine, engineId, route.config, route.key, upstream, {
      remoteAddress: m.remote, origin: m.origin, protocol: m.protocol, handshakeMs: m.handshakeMs,
    }, m.envelope === null ? null : { version: m.envelope, host: this, maxFrameBytes: this.config.limits.maxFrameBytes });
    this.nativeSessions.set(engineId, s);
    this.sessions.add(s);
    if (m.placed.length > 0) this.placed.set(s, m.placed);
    route.counts.sessions++;
    if (m.envelope !== null) route.counts.versions[m.envelope]++;
    this.publishCounts(route.key, route.counts);
    this.count.sessionOpened();
    const info = {
      event: 'session_open', session: s.id, route: route.config.path, upstream: upstream.href, remote: m.remote,
      origin: m.origin, subprotocol: m.tokenProtocol ? '[credential]' : m.protocol, handshakeMs: m.handshakeMs, envelope: m.envelope, engine: 'native',
    };
    this.logger.info(info, 'session opened');
    if (chOpen.hasSubscribers) chOpen.publish(info);
    // Opened while the proxy drained, or after a reload removed its route: it goes at once.
    if (this.draining) s.shutdown(1001, 'proxy shutting down');
    else if (!this.routes.some((r) => r.key === route.key)) s.shutdown(1012, 'route removed by reload');
  }

  // ------------------------------------------------------------------ the engine's handshakes

  /**
   * A request head the engine read. Upgrades it can carry through (every WebSocket route
   * but those in `engineCanCarry`'s list: agent routes, upstreams through agents, resumes,
   * relays) are decided here as Node's are; everything else (plain HTTP, those upgrades)
   * is handed to Node's HTTP server with the bytes read so far.
   */
  private onEngineRequest(e: EngineEvent): void {
    const engine = this.engine!;
    const raw = e.headers ?? [];
    const headers: http.IncomingHttpHeaders = {};
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i].toLowerCase();
      const prev = headers[name];
      headers[name] = prev === undefined ? raw[i + 1] : `${prev as string}, ${raw[i + 1]}`;
    }
    const connection = (headers.connection ?? '').toLowerCase().split(',').map((t) => t.trim());
    const isUpgrade = headers.upgrade !== undefined && connection.includes('upgrade');
    if (!isUpgrade || !this.engineCanCarry(headers, e.target ?? '/')) {
      this.handToNode(e.id, e.remote ?? '');
      return;
    }
    const client = new EngineClient(engine, e.id, e.remote ?? '', (id) => this.engineHandshakes.delete(id));
    this.engineHandshakes.set(e.id, client);
    this.onUpgrade({ method: e.method, url: e.target, headers, rawHeaders: raw }, client, EMPTY);
  }

  /** Whether the route this request goes to can run in the engine (else Node takes it). */
  private engineCanCarry(headers: http.IncomingHttpHeaders, target: string): boolean {
    const q = target.indexOf('?');
    const path = q < 0 ? target : target.slice(0, q);
    if (path === AGENT_STREAM_PATH) return false; // another instance's stream to an agent here: Node's socket
    const host = requestHost(headers.host ?? '');
    const matched = matchRoute(this.matchers, host, path);
    if (!matched) return true; // a 404, answered the same either way
    const rc = matched.route.config;
    // Agent routes end here (no upstream): Node's server and the ws library take them. Upstreams
    // through agents are yamux streams, not sockets: those sessions run on the TypeScript engine.
    // Resumable sessions outlive their client's connection: they run on the TypeScript engine
    // (a client that does not ask for resume gets an ordinary session, in the engine).
    return (rc.mode === 'transparent' || rc.mode === 'envelope') && (rc.resume === undefined || headers[RESUME_HEADER] === undefined) &&
      !rc.upstreams.some((u) => u.agent !== undefined);
  }

  private agentRegistry(): AgentRegistry {
    this.agents ??= new AgentRegistry({
      logger: this.logger,
      helloTimeoutMs: this.config.limits.handshakeTimeoutMs,
      pingIntervalMs: this.config.heartbeat.pingIntervalSeconds * 1000,
      pongTimeoutMs: this.config.heartbeat.pongTimeoutSeconds * 1000,
      cluster: this.cluster === null ? undefined : this.agentCluster(this.cluster),
    });
    return this.agents;
  }

  /**
   * With a cluster: ask every other instance to re-read its config (each from its own
   * sources); resolves with how many heard it. Without one: 0.
   */
  broadcastReload(): Promise<number> {
    return this.cluster === null ? Promise.resolve(0) : this.cluster.broadcastReload();
  }

  /** Called when another instance broadcast a reload (the CLI re-reads its config sources). */
  set onClusterReload(fn: ((from: string) => void) | null) {
    this.clusterReloadHook = fn;
    if (this.cluster !== null) this.cluster.onReloadAsked = fn;
  }

  private clusterReloadHook: ((from: string) => void) | null = null;

  /** The registry's view of the cluster: names claimed cluster-wide, streams relayed to the instance holding their agent. */
  private agentCluster(cluster: Cluster): AgentCluster {
    cluster.onAgentReplaced = (name, by) => this.agents?.drop(name, by);
    cluster.localAgents = () => this.agents?.names() ?? [];
    return {
      claim: (name, duplicate) => cluster.claimAgent(name, duplicate),
      release: (name) => cluster.releaseAgent(name),
      openRemote: (name, service, timeoutMs) => openRemoteAgentStream(cluster, name, service, timeoutMs),
    };
  }

  /**
   * Another instance asks for a stream through an agent this one holds (cluster): its
   * signature checked, the stream opened, a 101, then the connection carries the stream.
   */
  private serveAgentStream(client: HandshakeClient, head: Buffer, headers: Map<string, string>): void {
    this.handshaking.delete(client);
    const answer = (status: string, text: string) => client.answer(
      `HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`);
    const socket = client.socket;
    const agent = headers.get('sluice-agent') ?? '';
    const service = headers.get('sluice-service') ?? '';
    const cluster = this.cluster;
    if (cluster === null || !socket || !cluster.verify(headers.get('sluice-cluster') ?? '', 'agent-stream', [agent, service])) {
      answer('403 Forbidden', 'sluice: not a relay of this cluster');
      return;
    }
    const registry = this.agents;
    if (registry === null || !registry.has(agent)) {
      answer('404 Not Found', `agent "${agent}" is not connected to instance ${cluster.id}`);
      return;
    }
    registry.open(agent, service, 'tcp', this.config.limits.upstreamTimeoutMs).then((stream) => {
      if (socket.destroyed) {
        stream.destroy();
        return;
      }
      if (head.length > 0) stream.write(head);
      socket.setNoDelay(true);
      // Joined once the 101 has left: a native stream takes the socket's descriptor over.
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${AGENT_STREAM_UPGRADE}\r\n\r\n`, () => {
        if (socket.destroyed) stream.destroy();
        else joinSocket(stream, socket, () => {});
      });
      this.logger.debug({ event: 'agent_stream_relayed', agent, service }, 'a stream for another instance');
    }, (err: Error) => answer('502 Bad Gateway', err.message));
  }

  /** dial()'s `open` for an upstream through an agent (its stream to the service), else nothing. */
  private throughAgent(up: Upstream, timeoutMs: number): { open?: () => Promise<Duplex> } {
    const via = up.agent;
    return via === null ? {} : { open: () => this.agentRegistry().open(via.name, via.service, 'tcp', timeoutMs) };
  }

  /** Healthy, and for an upstream through an agent, that agent connected. */
  private upstreamUp(u: Upstream, now: number): boolean {
    return u.healthy(now) && (u.agent === null || this.agentReachable(u.agent.name));
  }

  /** Connected here, or (cluster) to another instance at its last lease renewal. */
  private agentReachable(name: string): boolean {
    return (this.agents?.has(name) ?? false) || (this.cluster?.hasAgent(name) ?? false);
  }

  /** The L4 listeners of `tunnels:` (read at start; a reload keeps them). */
  private async startTunnels(): Promise<void> {
    for (const tc of this.config.tunnels) {
      const t = new TunnelListener(tc, this.agentRegistry(), this.logger, this.config.limits.upstreamTimeoutMs);
      try {
        await t.listen();
      } catch (err) {
        for (const l of this.tunnelListeners) l.close();
        this.tunnelListeners = [];
        const e = err as NodeJS.ErrnoException;
        throw new SluiceError('SLUICE_ERR_LISTEN', `tunnel ${tc.protocol} ${tc.listen}: cannot listen: ${e.code ?? e.message}`);
      }
      this.tunnelListeners.push(t);
    }
  }

  /** The listening port of tunnels[i] (0 until listening; useful with port 0). */
  tunnelPort(i: number): number {
    return this.tunnelListeners[i]?.stats().port ?? 0;
  }

  /**
   * The connection goes to Node's HTTP server, which parses the bytes the engine read
   * again. From a TLS listener it is a socket pair's end (the engine keeps the TLS): its
   * peer address is the client's, remembered here.
   */
  private handToNode(id: number, remote: string): void {
    const taken = this.engine?.release(id);
    if (!taken || this.server === null) {
      if (taken) new net.Socket({ fd: taken[0] }).destroy();
      return;
    }
    const [fd, bytes] = taken;
    const socket = new net.Socket({ fd, readable: true, writable: true });
    if (remote !== '') setPeerAddress(socket, remote);
    socket.unshift(bytes);
    this.server.emit('connection', socket);
  }

  /** The engine's client context for a route's wss:// upstreams (made once per CA and mode). */
  private engineTls(route: RouteRuntime): number {
    const t = route.config.tls;
    const verify = t?.rejectUnauthorized ?? true;
    const key = `${verify ? 1 : 0}${t?.caFile ?? ''}`;
    let id = this.engineTlsContexts.get(key);
    if (id === undefined) {
      // As Node's tls.connect: a CA file replaces Node's default trust.
      const ca = t?.caFile ? readFileSync(t.caFile, 'latin1') : defaultCaPem();
      id = this.engine!.tlsClient(ca, verify);
      this.engineTlsContexts.set(key, id);
    }
    return id;
  }

  /** dialFirst through the engine: each candidate in turn until one answers 101. */
  private async dialThroughEngine(
    client: EngineClient, route: RouteRuntime, candidates: Upstream[], matched: RouteMatcher<RouteRuntime>, path: string,
    query: string, headers: Array<[string, string]>, protocols: string[], fallbackProtocol: string, expiresAt: number,
    extensions: string, envelope: EnvelopeVersion | null,
  ): Promise<{ upstream: Upstream; protocol: string }> {
    const engine = this.engine!;
    let last: UpstreamError | undefined;
    for (const upstream of candidates) {
      upstream.sessions++;
      const url = upstream.url;
      const hostName = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
      let request = `GET ${mapTarget(matched, url, path, query)} HTTP/1.1\r\nHost: ${url.host}\r\nUpgrade: websocket\r\n` +
        'Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n';
      if (protocols.length > 0) request += `Sec-WebSocket-Protocol: ${protocols.join(', ')}\r\n`;
      // permessage-deflate (compression routes): the client's offer goes on as it came.
      if (extensions !== '') request += `Sec-WebSocket-Extensions: ${extensions}\r\n`;
      for (const [name, value] of headers) request += `${name}: ${value}\r\n`;
      let err: UpstreamError;
      try {
        const ip = await resolveHost(hostName);
        if (client.ended) throw new UpstreamError('SLUICE_ERR_UPSTREAM_UNREACHABLE', 502, 'client gone');
        const wss = url.protocol === 'wss:';
        // SNI and the name checked, as Node's dial: the configured servername, else the host.
        const tlsDial = wss
          ? { context: this.engineTls(route), servername: route.config.tls?.servername ?? hostName, verify: route.config.tls?.rejectUnauthorized ?? true }
          : undefined;
        engine.dial(client.id, ip, Number(url.port || (wss ? 443 : 80)), request, protocols.join(','), fallbackProtocol,
          this.engineParams(route, expiresAt, envelope), tlsDial, extensions !== '');
        // Its outcome comes as an event on a later turn of the loop.
        const outcome = client.outcome();
        const timer = setTimeout(() => client.abandonDial(), this.config.limits.upstreamTimeoutMs);
        const o = await outcome;
        clearTimeout(timer);
        if (o.ok) {
          upstream.failures = 0;
          return { upstream, protocol: o.protocol };
        }
        err = upstreamErrorOf(url.host, o.event, this.config.limits.upstreamTimeoutMs);
      } catch (e) {
        err = e instanceof UpstreamError ? e
          : new UpstreamError('SLUICE_ERR_UPSTREAM_UNREACHABLE', 502, `upstream ${url.host}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      upstream.sessions--;
      last = err;
      if (client.ended || this.dialFailed(route, upstream, err)) throw err;
    }
    throw last ?? new UpstreamError('SLUICE_ERR_UPSTREAM_UNREACHABLE', 502, 'no upstream');
  }

  stats(): ProxyStats {
    const now = Date.now();
    return {
      listening: this.listening,
      port: this.port,
      draining: this.draining,
      sessions: this.sessions.size,
      routes: this.routes.map((r) => ({
        path: r.config.path,
        host: r.config.host ?? null,
        mode: r.config.mode,
        sessions: r.counts.sessions,
        envelope: r.config.mode === 'envelope' ? { ...r.counts.versions } : null,
        upstreams: r.balancer.upstreams.map((u) => ({
          url: u.href, sessions: u.sessions, healthy: u.healthy(now), lastError: u.lastError, draining: r.balancer.drained.has(u),
        })),
      })),
      pool: poolStats(),
      native: codecInfo,
      engine: this.engine !== null
        ? { kind: 'native', native: this.nativeSessions.size }
        : { kind: 'typescript', native: 0, reason: nativeEngineUnavailable },
      shards: [{ id: 0, sessions: this.sessions.size, restarts: 0 }],
      agents: this.agents?.list() ?? [],
      tunnels: this.tunnelListeners.map((t) => t.stats()),
      ...(this.cluster !== null ? { cluster: this.cluster.stats() } : {}),
    };
  }

  // ------------------------------------------------------------------ session control

  /** What `GET /sessions` shows of one session. */
  private describe(s: Session | NativeSession, now: number): SessionInfo {
    const native = s instanceof NativeSession;
    const c = native ? s.liveCounts() : s;
    return {
      id: `${this.hooks.shard ?? 0}-${s.id}`,
      route: s.route.path,
      upstream: s.upstream.href,
      agent: s.upstream.agent?.name ?? '',
      remoteAddress: s.remoteAddress,
      origin: s.origin,
      protocol: s.protocol,
      envelope: s.envelope ?? '',
      engine: native ? 'native' : 'typescript',
      parked: !native && s.resume !== null && s.resume.parkedAt !== 0,
      startedAt: new Date(s.startedAt).toISOString(),
      durationMs: now - s.startedAt,
      messagesIn: c.msgsIn,
      messagesOut: c.msgsOut,
      bytesIn: c.bytesIn,
      bytesOut: c.bytesOut,
    };
  }

  /**
   * This proxy's (shard's) live sessions that match `filter`: how many, and the first
   * `count` of them in {@link compareSessions} order (a pool cuts its page from every shard's).
   */
  listSessions(filter: SessionFilter, count: number): { total: number; sessions: SessionInfo[] } {
    // Filtered and ordered on what each session holds; counters are read (an engine call
    // each, for native sessions) only for the page's sessions.
    const matched: Array<Session | NativeSession> = [];
    for (const s of this.sessions) {
      if (s.ended) continue;
      if ((filter.route && s.route.path !== filter.route) || (filter.upstream && s.upstream.href !== filter.upstream) ||
          (filter.remote && s.remoteAddress !== filter.remote) || (filter.agent && (s.upstream.agent?.name ?? '') !== filter.agent)) continue;
      matched.push(s);
    }
    matched.sort((x, y) => x.startedAt - y.startedAt || x.id - y.id);
    const now = Date.now();
    return { total: matched.length, sessions: matched.slice(0, count).map((x) => this.describe(x, now)) };
  }

  /**
   * Closes one session as an operator asked: the client gets `code` and `reason`, and so
   * does the upstream (a session closed on purpose is not "going away"). False: no such
   * live session here.
   */
  closeSession(id: number, code: number, reason: string, by: string): boolean {
    for (const s of this.sessions) {
      if (s.id !== id || s.ended) continue;
      this.logger.info({ event: 'session_close_requested', session: `${this.hooks.shard ?? 0}-${id}`, route: s.route.path, code, reason, by },
        `session closed by ${by}`);
      s.shutdown(code, reason, code);
      return true;
    }
    return false;
  }

  /** One page of live sessions (`GET /sessions`). */
  sessionPage(filter: SessionFilter, offset: number, limit: number): SessionPage {
    return mergePages([this.listSessions(filter, offset + limit)], offset, limit);
  }

  /** Closes the session `<shard>-<n>` names (see {@link closeSession}); false: no such live session. */
  closeSessionById(id: string, code: number, reason: string, by: string): boolean {
    const parsed = parseSessionId(id);
    return parsed !== null && parsed.shard === (this.hooks.shard ?? 0) && this.closeSession(parsed.session, code, reason, by);
  }

  /** Counters as of now (the dashboard's rates). */
  counterSnapshot(): CounterSnapshot {
    return this.counters;
  }

  /** The live ends of this proxy's (shard's) last sessions, newest first. */
  lastCloses(): ClosedSession[] {
    return this.recentCloses.list();
  }

  /**
   * Drains (or with `undrain`, opens again) upstream `index` of a route: no new session goes
   * to it. With `closeWithinMs` > 0 its live sessions get 1012 at jittered times within that
   * window (a restart of the upstream, as clients read 1012); an undrain calls off those
   * still to come, and a second drain does not add to them. `route` is the route's index in
   * `routes` or its path (when no other route has it). A string: what is missing.
   */
  drainUpstream(route: string, index: number, opts: { undrain?: boolean; closeWithinMs?: number; by: string }): DrainResult | string {
    let r: RouteRuntime | undefined;
    if (/^\d+$/.test(route)) r = this.routes[Number(route)];
    else {
      const byPath = this.routes.filter((x) => x.config.path === route);
      if (byPath.length > 1) return `${byPath.length} routes have the path ${route}: name the route by its index`;
      r = byPath[0];
    }
    const up = r?.balancer.upstreams[index];
    if (r === undefined || up === undefined) return r === undefined ? `no route ${route}` : `route ${r.config.path} has no upstream ${index}`;
    const key = drainKey(r.key, up.href);
    let closing = 0;
    if (opts.undrain) {
      this.drained.delete(key);
      r.balancer.drained.delete(up);
      for (const [s, t] of this.drainTimers) {
        if (s.routeKey !== r.key || s.upstream !== up) continue;
        clearTimeout(t);
        this.drainTimers.delete(s);
      }
    } else {
      this.drained.add(key);
      r.balancer.drained.add(up);
      const windowMs = opts.closeWithinMs ?? 0;
      for (const s of windowMs > 0 ? this.sessions : []) {
        if (s.ended || s.routeKey !== r.key || s.upstream !== up || this.drainTimers.has(s)) continue;
        closing++;
        const t = setTimeout(() => {
          this.drainTimers.delete(s);
          s.shutdown(1012, 'upstream draining');
        }, Math.random() * windowMs);
        t.unref();
        this.drainTimers.set(s, t);
      }
    }
    this.logger.info({
      event: opts.undrain ? 'upstream_undrained' : 'upstream_drained', route: r.config.path, upstream: up.href, closing, by: opts.by,
    }, `upstream ${up.href} ${opts.undrain ? 'takes new sessions again' : 'drained'} (by ${opts.by})`);
    return { route: r.config.path, upstream: up.href, draining: !opts.undrain, closing, key };
  }
}

/** What names a drained upstream across reloads and shards: its route's key and its URL. */
export function drainKey(routeKey: string, href: string): string {
  return `${routeKey} ${href}`;
}

let defaultCa: string | null = null;

/**
 * What Node's tls.connect trusts by default, as PEM: its bundled roots, NODE_EXTRA_CA_CERTS,
 * and (Node >= 22.15, tls.getCACertificates) the system store when Node is told to use it.
 */
function defaultCaPem(): string {
  if (defaultCa !== null) return defaultCa;
  const get = (tls as { getCACertificates?: (kind: string) => string[] }).getCACertificates;
  const list = typeof get === 'function' ? get('default') : [];
  if (list.length > 0) {
    defaultCa = list.join('\n');
  } else {
    // Node 20, or a list Node could not give (--use-openssl-ca): the bundled roots and
    // NODE_EXTRA_CA_CERTS.
    const extra = process.env.NODE_EXTRA_CA_CERTS;
    let extraPem = '';
    try {
      if (extra) extraPem = readFileSync(extra, 'latin1');
    } catch {
      // Node itself warns about an unreadable NODE_EXTRA_CA_CERTS and goes on without it.
    }
    defaultCa = [...tls.rootCertificates, extraPem].join('\n');
  }
  return defaultCa;
}

/** The error of a dial the engine ran (its type 4 event; null: the upstream was too slow). */
function upstreamErrorOf(host: string, e: EngineEvent | null, timeoutMs: number): UpstreamError {
  if (e === null) {
    return new UpstreamError('SLUICE_ERR_UPSTREAM_TIMEOUT', 504, `upstream ${host} did not complete the handshake within ${timeoutMs} ms`);
  }
  const message = e.message ?? '';
  if (e.kind === 1) return new UpstreamError('SLUICE_ERR_UPSTREAM_UNREACHABLE', 502, `upstream ${host}: ${message}`);
  if (e.kind === 3) {
    const status = e.status ?? 502;
    const passThrough = status >= 400 && status < 500;
    return new UpstreamError('SLUICE_ERR_UPSTREAM_REFUSED', passThrough ? status : 502, `upstream ${host} ${message}`,
      passThrough ? (e.statusText ?? '') : '', passThrough ? e.body : undefined);
  }
  // The checks of a 101 read "upstream host: why"; the rest "upstream host closed ...".
  const sep = /^(101|wrong|picked|negotiated)/.test(message) ? ': ' : ' ';
  return new UpstreamError('SLUICE_ERR_UPSTREAM_BAD_HANDSHAKE', 502, `upstream ${host}${sep}${message}`);
}

/** The query string without the parameters that carry this route's credentials. */
function stripCredentialParams(query: string, route: RouteConfig): string {
  if (query === '' || !route.auth) return query;
  const names: string[] = [];
  if (route.auth.jwt?.from === 'query') names.push(route.auth.jwt.queryParam);
  if (route.auth.apiKeys?.from === 'query') names.push(route.auth.apiKeys.queryParam);
  if (names.length === 0) return query;
  // Only the matching name=value pieces go; the rest stays byte for byte.
  return query.split('&').filter((part) => {
    const eq = part.indexOf('=');
    const raw = (eq < 0 ? part : part.slice(0, eq)).replace(/\+/g, ' ');
    let name = raw;
    try {
      name = decodeURIComponent(raw);
    } catch {
      // malformed %-escape: not one of our names; keep it as it is
    }
    return !names.includes(name);
  }).join('&');
}

