/**
 * The proxy: one uWS app terminating clients, routes with their balancers, the sessions,
 * the once-per-turn flush of upstream writes, the heartbeat sweep, graceful drain and
 * hot reload. `createProxy()` in index.ts is its door.
 */
import dc from 'node:diagnostics_channel';
import type { Registry } from 'prom-client';
import type { Logger } from 'pino';
import { codecInfo, poolStats } from '../codec/index.js';
import { parseConfig } from '../config/index.js';
import type { ProxyConfig, RouteConfig } from '../config/types.js';
import { SluiceError } from '../errors.js';
import { createLogger } from '../log.js';
import { ProxyCounters } from '../metrics/counters.js';
import { createMetricsRegistry } from '../metrics/index.js';
import { startAdminServer, type AdminServer } from '../admin/index.js';
import { loadUws, type UWS, type UwsBuild } from '../uws.js';
import { Balancer, Upstream } from './balancer.js';
import { CorkAnchor } from './cork-anchor.js';
import { routeKey, type ConnectionLedger } from './ledger.js';
import { startEchoServer, type EchoServer } from './echo.js';
import { dial, UpstreamError, type DialResult } from './handshake.js';
import { compileRoutes, mapTarget, matchRoute, type RouteMatcher } from './router.js';
import { Session, isValidWireCloseCode, type ClientData, type SessionHost } from './session.js';
import { negotiateEnvelope, type EnvelopeVersion } from '../protocol/index.js';
import { AccessPolicy, ConnectionRateLimiter, MessageRateLimiter, type AccessDecision } from '../policy/index.js';

const BUILTIN_ECHO = 'builtin:echo';
/** Upstreams tried for one client before it gets 502 (the pick and up to two more). */
const MAX_DIAL_TRIES = 3;
/** Request headers that belong to one hop, or that the upstream leg writes itself. */
const HOP_HEADERS = new Set([
  'host', 'connection', 'upgrade', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding',
  'proxy-authenticate', 'proxy-authorization', 'content-length', 'sec-websocket-key', 'sec-websocket-version',
  'sec-websocket-extensions', 'sec-websocket-protocol', 'x-real-ip', 'x-forwarded-for', 'x-forwarded-proto',
  'x-forwarded-host',
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
    upstreams: Array<{ url: string; sessions: number; healthy: boolean; lastError: string }>;
  }>;
  pool: ReturnType<typeof poolStats>;
  native: typeof codecInfo;
  /** The uWS build, and whether upgrades are corked on the anchor (cork-anchor.ts). */
  uws: UwsBuild & { corkAnchor: boolean };
  shards: Array<{ id: number; sessions: number; restarts: number }>;
}

/** Options of `close()`. */
export interface CloseOptions {
  /** How long sessions get to finish their close handshakes before they are cut (default config.drain.timeoutMs). */
  drainMs?: number;
  /** Close code the clients get (default 1001, going away; a shard restart uses 1012). */
  code?: number;
  reason?: string;
}

function textOf(ab: ArrayBuffer): string {
  return Buffer.from(ab).toString('latin1');
}

export class Proxy implements SessionHost {
  config: ProxyConfig;
  readonly counters = new ProxyCounters();
  readonly registry: Registry;
  readonly logger: Logger;
  clock = Date.now();
  port = 0;
  private readonly uws: typeof UWS;
  readonly uwsBuild: UwsBuild;
  private app: UWS.TemplatedApp | null = null;
  private listenSocket: UWS.us_listen_socket | null = null;
  /** Where asynchronous upgrades are corked (see cork-anchor.ts); null: res.cork(). */
  private corkAnchor: CorkAnchor | null = null;
  private echo: EchoServer | null = null;
  private echoUrl = '';
  private routes: RouteRuntime[] = [];
  private matchers: Array<RouteMatcher<RouteRuntime>> = [];
  /** Per route key, kept across reloads. */
  private readonly routeCounts = new Map<string, RouteCounts>();
  /** Upstreams by URL, kept across reloads so least_conn counts and health survive. */
  private readonly upstreamsByUrl = new Map<string, Upstream>();
  readonly sessions = new Set<Session>();
  private pendingUpgrades = 0;
  private nextId = 1;
  private dirty: Session[] = [];
  private spare: Session[] = [];
  private flushScheduled = false;
  private readonly flushAll: () => void;
  private sweepTimer: NodeJS.Timeout | null = null;
  private admin: AdminServer | null = null;
  draining = false;
  private closing: Promise<void> | null = null;
  private readonly hooks: ProxyHooks;
  private connectionRate: ConnectionRateLimiter | null = null;

  constructor(input: unknown, hooks: ProxyHooks = {}) {
    this.hooks = hooks;
    this.config = parseConfig(input);
    this.logger = createLogger(this.config.log.level);
    const { uws, build } = loadUws();
    this.uws = uws;
    this.uwsBuild = build;
    this.registry = createMetricsRegistry(this.counters);
    this.flushAll = () => {
      this.flushScheduled = false;
      // Two arrays swapped turn by turn: no allocation per flush.
      const list = this.dirty;
      this.dirty = this.spare;
      for (let i = 0; i < list.length; i++) list[i].flush();
      list.length = 0;
      this.spare = list;
    };
  }

  /** Listening, and every route has a healthy upstream. */
  get ready(): { ok: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (this.listenSocket === null) reasons.push('not listening');
    if (this.draining) reasons.push('draining');
    const now = Date.now();
    for (const r of this.routes) {
      if (!r.balancer.upstreams.some((u) => u.healthy(now))) reasons.push(`route ${r.config.path}: no healthy upstream`);
    }
    return { ok: reasons.length === 0, reasons };
  }

  // ------------------------------------------------------------------ SessionHost

  markDirty(s: Session): void {
    if (s.dirty) return;
    s.dirty = true;
    this.dirty.push(s);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushAll);
    }
  }

  /** Shards: store this shard's counts in the shared ledger after they change. */
  private publishCounts(key: string, counts: RouteCounts | undefined): void {
    this.hooks.ledger?.publish(this.sessions.size + this.pendingUpgrades, key, counts ? counts.sessions + counts.pending : 0);
  }

  sessionEnded(s: Session): void {
    this.sessions.delete(s);
    const counts = this.routeCounts.get(s.routeKey);
    if (counts) {
      counts.sessions--;
      if (s.envelope !== null) counts.versions[s.envelope]--;
    }
    this.publishCounts(s.routeKey, counts);
    const seconds = (Date.now() - s.startedAt) / 1000;
    this.counters.sessionClosed(s.clientCloseCode, seconds);
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
    };
    this.logger.info(info, 'session closed');
    if (chClose.hasSubscribers) chClose.publish(info);
  }

  backpressureEvent(s: Session, fill: number): void {
    this.counters.backpressureEvents++;
    this.logger.warn({
      event: 'backpressure', session: s.id, route: s.route.path, fillPercent: Math.round(fill * 100),
      queuedMessages: s.queued, queuedBytes: s.socket.writableLength, capacity: this.config.limits.channelCapacity,
    }, 'sustained backpressure towards the upstream');
  }

  controlFrame(s: Session, payload: unknown): void {
    const who = { id: s.id, route: s.route.path, remoteAddress: s.remoteAddress, version: s.envelope ?? '' };
    if (chControl.hasSubscribers) chControl.publish({ session: who, payload });
    try {
      this.hooks.onControl?.(who, payload);
    } catch (err) {
      this.logger.error({ event: 'control_hook_failed', session: s.id, err }, 'onControl hook threw');
    }
  }

  errorFrame(s: Session, reason: string): void {
    this.counters.envelopeErrors++;
    this.logger.warn({ event: 'envelope_error', session: s.id, route: s.route.path, reason: reason.slice(0, 200) }, 'client sent an error frame');
  }

  // ------------------------------------------------------------------ lifecycle

  /** Bind the listener (port 0 allowed); resolves with the bound port. */
  async listen(): Promise<{ port: number }> {
    if (this.listenSocket !== null) return { port: this.port };
    await this.applyRoutes(this.config);
    const { listen } = this.config;
    const behavior = this.behavior();
    const app = listen.tls
      ? this.uws.SSLApp({ cert_file_name: listen.tls.certFile, key_file_name: listen.tls.keyFile })
      : this.uws.App();
    app.ws('/*', behavior);
    app.any('/*', (res) => {
      res.writeStatus('426 Upgrade Required').writeHeader('Upgrade', 'websocket').end('sluice: this endpoint speaks WebSocket\n');
    });
    this.app = app;
    const listenSocket = await new Promise<UWS.us_listen_socket | false>((resolve) => app.listen(listen.host, listen.port, resolve));
    if (!listenSocket) {
      this.stopRoutes();
      this.echo?.close();
      this.echo = null;
      (app as unknown as { close?: () => void }).close?.();
      this.app = null;
      throw new SluiceError('SLUICE_ERR_LISTEN', `cannot listen on ${listen.host}:${listen.port} (in use, or not an address of this machine)`);
    }
    this.listenSocket = listenSocket;
    this.port = this.uws.us_socket_local_port(listenSocket);
    this.corkAnchor = await CorkAnchor.start(this.uws, this.logger);
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
    if (this.listenSocket !== null) {
      this.uws.us_listen_socket_close(this.listenSocket);
      this.listenSocket = null;
    }
  }

  private async drainAndStop(drainMs: number, code: number, reason: string): Promise<void> {
    this.draining = true;
    for (const s of this.sessions) {
      if (s.closedFirst === '') s.closedFirst = 'proxy';
      s.closeClient(code, reason);
      s.sendUpstreamClose(1001, reason);
    }
    const deadline = Date.now() + drainMs;
    while ((this.sessions.size > 0 || this.pendingUpgrades > 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    for (const s of this.sessions) {
      s.socket.destroy();
      if (s.ws !== null) s.ws.close();
    }
    // Destroyed sockets report 'close' on a later turn: wait (briefly) so that every
    // session has ended, been counted and logged when close() resolves.
    const cutoff = Date.now() + 1000;
    while (this.sessions.size > 0 && Date.now() < cutoff) await new Promise((r) => setTimeout(r, 5));
    this.stopAccepting();
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
    this.sweepTimer = null;
    this.stopRoutes();
    this.echo?.close();
    this.echo = null;
    await this.admin?.close();
    this.admin = null;
    this.corkAnchor?.close();
    this.corkAnchor = null;
    // Cut what uWS still holds (a client that never answered our close frame): a worker
    // thread that ends with uWS handles open aborts the whole process (DESIGN).
    (this.app as unknown as { close?: () => void } | null)?.close?.();
    this.app = null;
    // Let uWS finish the sockets it is closing before the caller ends the thread.
    await new Promise((r) => setImmediate(r));
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
    if (JSON.stringify(next.listen) !== JSON.stringify(prev.listen) || next.limits.maxFrameBytes !== prev.limits.maxFrameBytes ||
        next.routes.some((r) => r.compression) !== prev.routes.some((r) => r.compression)) {
      // uWS takes these when the listener opens.
      this.logger.warn({ event: 'reload' }, 'listen, limits.maxFrameBytes and enabling compression apply after a restart');
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
      const t = setTimeout(() => {
        if (s.closedFirst === '') s.closedFirst = 'proxy';
        s.closeClient(1012, 'route removed by reload');
        s.sendUpstreamClose(1001, 'route removed by reload');
      }, Math.random() * jitterMs);
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
        const key = `${href}#${u.weight}`;
        let up = this.upstreamsByUrl.get(key);
        if (!up) {
          up = new Upstream({ url: href, weight: u.weight });
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
    for (const r of runtimes) if (r.config.auth) r.access = await AccessPolicy.create(r.config.auth, r.config.path);
    const l = config.limits;
    this.connectionRate = l.connectionRatePerIp > 0 ? new ConnectionRateLimiter(l.connectionRatePerIp, l.connectionBurstPerIp) : null;
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
        dial({ url: up.url, target: up.url.pathname + up.url.search, headers: [], protocols: [], timeoutMs, tls: r.config.tls })
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

  /** Once a second: advance the coarse clock, heartbeats, sustained-backpressure checks. */
  private sweep(): void {
    const now = Date.now();
    this.clock = now;
    const pingMs = this.config.heartbeat.pingIntervalSeconds * 1000;
    const timeoutMs = this.config.heartbeat.pongTimeoutSeconds * 1000;
    for (const s of this.sessions) {
      if (!s.clientOpen) continue;
      if (s.expiresAt !== 0 && now >= s.expiresAt) {
        if (s.closedFirst === '') s.closedFirst = 'proxy';
        s.closeClient(1008, 'credentials expired');
        s.sendUpstreamClose(1001, 'client credentials expired');
        continue;
      }
      // `seen` times come from the coarse clock (up to one sweep old): one sweep of slack, so
      // a side is never judged early; it may be judged up to a sweep late.
      if (now - s.clientSeen > timeoutMs + 1000) {
        s.abortClient('client heartbeat timeout');
        continue;
      }
      // While the upstream is paused for a slow client nothing is read from it, so its
      // silence says nothing: it is not judged then.
      if (s.pausedForClient) s.upstreamSeen = now;
      if (now - s.upstreamSeen > timeoutMs + 1000 && s.upstreamOpen) {
        if (s.closedFirst === '') s.closedFirst = 'proxy';
        s.upstreamCloseCode = 1006;
        s.upstreamCloseReason = 'upstream heartbeat timeout';
        s.socket.destroy();
        s.upstreamOpen = false;
        s.closeClient(1014, 'upstream heartbeat timeout');
        continue;
      }
      if (now - s.lastPing >= pingMs) {
        s.lastPing = now;
        s.ws!.ping();
        s.sendUpstreamPing();
      }
      if (s.bpSince !== 0) {
        const l = this.config.limits;
        s.checkBackpressure(s.socket.writableNeedDrain ? Math.max(s.queued / l.channelCapacity, s.socket.writableLength / l.channelBytes) : 0);
      }
    }
  }

  // ------------------------------------------------------------------ uWS behaviour

  private behavior(): UWS.WebSocketBehavior<ClientData> {
    const limits = this.config.limits;
    const compress = this.config.routes.some((r) => r.compression);
    return {
      // uWS drops a message over maxPayloadLength with no close frame (1006). We set its
      // ceiling at twice ours so that a message over our limit reaches the message
      // handler and gets a 1009; past the ceiling, uWS's drop is what remains.
      maxPayloadLength: limits.maxFrameBytes * 2,
      // Above what pausing the upstream lets accumulate, so uWS never drops a send.
      maxBackpressure: limits.highWaterMark + limits.maxFrameBytes * 2 + 1024 * 1024,
      idleTimeout: 0,
      sendPingsAutomatically: false,
      compression: compress ? this.uws.SHARED_COMPRESSOR : this.uws.DISABLED,
      upgrade: (res, req, context) => this.onUpgrade(res, req, context),
      open: (ws) => {
        const data = ws.getUserData();
        data.session.attach(ws, pendingHead.get(data.session) ?? Buffer.alloc(0));
        pendingHead.delete(data.session);
      },
      message: (ws, message, isBinary) => ws.getUserData().session.fromClient(message, isBinary),
      drain: (ws) => ws.getUserData().session.onClientDrain(),
      ping: (ws, message) => ws.getUserData().session.onClientPing(message.byteLength),
      pong: (ws, message) => ws.getUserData().session.onClientPong(message.byteLength),
      close: (ws, code, message) => ws.getUserData().session.onClientClosed(code, message),
    };
  }

  private onUpgrade(res: UWS.HttpResponse, req: UWS.HttpRequest, context: UWS.us_socket_context_t): void {
    const started = Date.now();
    // req is valid only during this call: read everything now.
    const path = req.getUrl();
    const query = req.getQuery() ?? '';
    const hostHeader = req.getHeader('host');
    const key = req.getHeader('sec-websocket-key');
    const version = req.getHeader('sec-websocket-version');
    const offered = req.getHeader('sec-websocket-protocol');
    const extensions = req.getHeader('sec-websocket-extensions');
    const origin = req.getHeader('origin');
    const forwardedFor = req.getHeader('x-forwarded-for');
    const headers: Array<[string, string]> = [];
    const headerMap = new Map<string, string>();
    let connectionTokens = '';
    let headerCount = 0;
    let headerBytes = 0;
    req.forEach((name, value) => {
      headerCount++;
      headerBytes += name.length + value.length + 4;
      headerMap.set(name, value);
      if (name === 'connection') connectionTokens = value.toLowerCase();
      if (!HOP_HEADERS.has(name)) headers.push([name, value]);
    });
    let remote = textOf(res.getRemoteAddressAsText());
    if (remote.startsWith('0000:0000:0000:0000:0000:ffff:')) remote = remote.slice(30);
    else if (remote.startsWith('::ffff:')) remote = remote.slice(7);

    const refuse = (status: string, body: string) => {
      res.cork(() => {
        res.writeStatus(status).writeHeader('Content-Type', 'text/plain').writeHeader('Connection', 'close').end(`${body}\n`, true);
      });
    };
    if (this.draining) return refuse('503 Service Unavailable', 'sluice: draining');
    const ledger = this.hooks.ledger;
    const otherShards = ledger !== undefined ? ledger.othersConnections() : 0;
    if (this.sessions.size + this.pendingUpgrades + otherShards >= this.config.limits.maxConnections) {
      return refuse('503 Service Unavailable', 'sluice: at max connections');
    }
    const limits = this.config.limits;
    if (headerCount > limits.maxHeaderCount || headerBytes > limits.maxHeaderBytes) {
      return refuse('431 Request Header Fields Too Large', 'sluice: too many or too large request headers');
    }
    if (key.length !== 24 || version !== '13') return refuse('400 Bad Request', 'sluice: bad WebSocket upgrade');
    // RFC 6455 §4.2.1: the Connection header must carry the "upgrade" token. Also a guard:
    // uWS 20.30 answers an upgrade request with "Connection: close" with 101 and then
    // closes the socket (its HTTP close gate runs on the 101), whether upgraded corked or not.
    const connection = connectionTokens.split(',').map((t) => t.trim());
    if (!connection.includes('upgrade')) {
      return refuse('400 Bad Request', 'sluice: the Connection header lacks "upgrade"');
    }
    const host = hostHeader.replace(/:\d+$/, '').toLowerCase();
    const matched = matchRoute(this.matchers, host, path);
    if (!matched) return refuse('404 Not Found', `sluice: no route for ${path}`);
    const origins = this.config.origins;
    if (origins.length > 0 && !origins.includes('*') && !origins.includes(origin)) {
      return refuse('403 Forbidden', 'sluice: origin not allowed');
    }
    const route = matched.route;
    if (this.connectionRate !== null && !this.connectionRate.allow(remote, started)) {
      return refuse('429 Too Many Requests', 'sluice: connection rate limit');
    }
    const routeElsewhere = ledger !== undefined ? ledger.othersRoute(route.key) : 0;
    if (route.config.maxConnections > 0 && route.counts.sessions + route.counts.pending + routeElsewhere >= route.config.maxConnections) {
      return refuse('503 Service Unavailable', 'sluice: route at max connections');
    }
    // Connection-listed headers are hop-by-hop too (RFC 9110 §7.6.1).
    const extraHop = connection.filter((t) => t !== '' && t !== 'upgrade');
    const fwd = extraHop.length > 0 ? headers.filter(([n]) => !extraHop.includes(n)) : headers;
    fwd.push(
      ['X-Forwarded-For', forwardedFor ? `${forwardedFor}, ${remote}` : remote],
      ['X-Forwarded-Proto', this.config.listen.tls ? 'https' : 'http'],
      ['X-Forwarded-Host', hostHeader],
      ['X-Real-IP', remote],
    );
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
    const hashHeader = route.balancer.hashHeader;
    const hashValue = hashHeader ? (headerMap.get(hashHeader) ?? '') : '';
    // Credentials carried in the query string are ours: they do not travel upstream.
    const upstreamQuery = stripCredentialParams(query, route.config);

    let aborted = false;
    res.onAborted(() => {
      aborted = true;
      clearTimeout(deadline);
    });
    this.pendingUpgrades++;
    route.counts.pending++;
    this.publishCounts(route.key, route.counts);
    // uWS itself drops a request whose head is not complete within ~10 s; from here on
    // (credentials, dial, upstream handshake) the rest of limits.handshakeTimeoutMs applies.
    const deadline = setTimeout(() => {
      if (aborted) return;
      aborted = true; // whatever finishes later is dropped
      refuse('504 Gateway Timeout', 'sluice: handshake not completed in time');
    }, Math.max(0, limits.handshakeTimeoutMs - (Date.now() - started)));
    const finish = (decision: AccessDecision | null) => {
      if (decision !== null && !decision.ok) {
        clearTimeout(deadline);
        this.pendingUpgrades--;
        route.counts.pending--;
        this.publishCounts(route.key, route.counts);
        this.logger.info({ event: 'auth_refused', route: route.config.path, remote, reason: decision.reason }, 'credentials refused');
        if (!aborted) {
          res.cork(() => {
            res.writeStatus('401 Unauthorized').writeHeader('WWW-Authenticate', 'Bearer realm="sluice"')
              .writeHeader('Content-Type', 'text/plain').writeHeader('Connection', 'close').end(`sluice: ${decision.reason}\n`, true);
          });
        }
        return;
      }
      if (aborted) {
        this.pendingUpgrades--;
        route.counts.pending--;
        this.publishCounts(route.key, route.counts);
        clearTimeout(deadline);
        return;
      }
      const consumed = decision?.consumedProtocol;
      const upstreamProtocols = consumed ? protocols.filter((p) => p !== consumed) : protocols;
      const candidates = route.balancer.order(remote, hashValue, Date.now(), MAX_DIAL_TRIES);
      void this.dialFirst(route, candidates, matched, path, upstreamQuery, fwd, upstreamProtocols).then(
        ({ upstream, result }) => {
          this.pendingUpgrades--;
          route.counts.pending--;
          this.publishCounts(route.key, route.counts);
          clearTimeout(deadline);
          // A reload that removed this route while we dialled: its sessions got 1012 already.
          const removed = !this.routes.some((r) => r.key === route.key);
          if (aborted || this.draining || removed) {
            upstream.sessions--;
            result.socket.destroy();
            if (!aborted) refuse('503 Service Unavailable', removed ? 'sluice: route removed' : 'sluice: draining');
            return;
          }
          this.startSession(res, context, route, upstream, result, {
            // A token carried as a subprotocol entry is answered back when the upstream picks
            // none: a browser that offered subprotocols fails a handshake that picks none.
            key, protocol: clientProtocol ?? (result.protocol || consumed || ''),
            extensions: route.config.compression ? extensions : '',
            remote, origin, started, envelope, expiresAt: decision?.ok ? (decision.expiresAt ?? 0) : 0,
            tokenProtocol: clientProtocol === null && result.protocol === '' && consumed !== undefined,
          });
        },
        (err: UpstreamError) => {
          this.pendingUpgrades--;
          route.counts.pending--;
          this.publishCounts(route.key, route.counts);
          clearTimeout(deadline);
          this.logger.warn({ event: 'upstream_refused', route: route.config.path, code: err.code, status: err.status }, err.message);
          if (aborted) return;
          if (err.body !== undefined) {
            res.cork(() => {
              res.writeStatus(`${err.status} ${err.statusText}`.trim()).writeHeader('Connection', 'close').end(err.body, true);
            });
          } else {
            const text = err.status === 504 ? '504 Gateway Timeout' : '502 Bad Gateway';
            refuse(text, `sluice: ${err.message}`);
          }
        },
      );
    };
    if (route.access === null) {
      finish(null);
      return;
    }
    // Credentials are checked before any upstream is dialled.
    route.access.check({ headers: headerMap, query, protocols: offeredList, remoteAddress: remote }).then(finish, (err: Error) => {
      finish({ ok: false, status: 401, reason: `credentials could not be checked: ${err.message}` });
    });
  }

  private async dialFirst(
    route: RouteRuntime, candidates: Upstream[], matched: RouteMatcher<RouteRuntime>, path: string, query: string,
    headers: Array<[string, string]>, protocols: string[],
  ): Promise<{ upstream: Upstream; result: Awaited<ReturnType<typeof dial>> }> {
    let last: UpstreamError | undefined;
    for (const upstream of candidates) {
      // Counted from the dial on, so least_conn sees a burst of upgrades in flight; the
      // session takes the count over, every other ending gives it back.
      upstream.sessions++;
      try {
        const result = await dial({
          url: upstream.url,
          target: mapTarget(matched, upstream.url, path, query),
          headers,
          protocols,
          timeoutMs: this.config.limits.upstreamTimeoutMs,
          tls: route.config.tls,
        });
        upstream.failures = 0;
        return { upstream, result };
      } catch (err) {
        upstream.sessions--;
        last = err as UpstreamError;
        // A refusal with the upstream's own status is an answer, not a failure to retry.
        if (last.body !== undefined) throw last;
        upstream.failures++;
        upstream.lastError = last.message;
        const wasHealthy = upstream.healthy(Date.now());
        upstream.downUntil = Date.now() + route.config.health.coolOffMs;
        if (wasHealthy) this.healthChanged(upstream, false, last.message);
        if (last.status === 504) throw last; // do not multiply a slow backend's wait
      }
    }
    throw last ?? new UpstreamError('SLUICE_ERR_UPSTREAM_UNREACHABLE', 502, 'no upstream');
  }

  private startSession(
    res: UWS.HttpResponse, context: UWS.us_socket_context_t, route: RouteRuntime, upstream: Upstream, dialed: DialResult, m: {
      key: string; protocol: string; extensions: string; remote: string; origin: string; started: number;
      envelope: EnvelopeVersion | null; expiresAt: number; tokenProtocol: boolean;
    },
  ): void {
    const handshakeMs = Date.now() - m.started;
    const s = new Session(this.nextId++, this, route.config, route.key, upstream, dialed.socket, dialed.setDataHandler, {
      remoteAddress: m.remote, origin: m.origin, protocol: m.protocol, handshakeMs, envelope: m.envelope, expiresAt: m.expiresAt,
      rateLimiter: this.config.limits.messagesPerSecond > 0 || this.config.limits.bytesPerSecond > 0
        ? new MessageRateLimiter(this.config.limits.messagesPerSecond, this.config.limits.bytesPerSecond)
        : null,
    });
    this.sessions.add(s);
    route.counts.sessions++;
    this.publishCounts(route.key, route.counts);
    this.counters.sessionOpened();
    if (m.envelope !== null) route.counts.versions[m.envelope]++;
    pendingHead.set(s, dialed.head);
    const userData: ClientData = { session: s };
    // Inside the anchor's cork, so that uWS 20.30's res.cork() never runs its epilogue on
    // the upgraded socket (it can close it: cork-anchor.ts); res.cork() when no anchor.
    const upgrade = () => res.upgrade(userData, m.key, m.protocol, m.extensions, context);
    if (this.corkAnchor === null || !this.corkAnchor.run(() => res.cork(upgrade))) res.cork(upgrade);
    const info = {
      event: 'session_open', session: s.id, route: route.config.path, upstream: upstream.href, remote: m.remote,
      // A token answered back as the subprotocol is a credential: never logged.
      origin: m.origin, subprotocol: m.tokenProtocol ? '[credential]' : m.protocol, handshakeMs, envelope: m.envelope,
    };
    this.logger.info(info, 'session opened');
    if (chOpen.hasSubscribers) chOpen.publish(info);
  }

  stats(): ProxyStats {
    const now = Date.now();
    return {
      listening: this.listenSocket !== null,
      port: this.port,
      draining: this.draining,
      sessions: this.sessions.size,
      routes: this.routes.map((r) => ({
        path: r.config.path,
        host: r.config.host ?? null,
        mode: r.config.mode,
        sessions: r.counts.sessions,
        envelope: r.config.mode === 'envelope' ? { ...r.counts.versions } : null,
        upstreams: r.balancer.upstreams.map((u) => ({ url: u.href, sessions: u.sessions, healthy: u.healthy(now), lastError: u.lastError })),
      })),
      pool: poolStats(),
      native: codecInfo,
      uws: { ...this.uwsBuild, corkAnchor: this.corkAnchor?.ready ?? false },
      shards: [{ id: 0, sessions: this.sessions.size, restarts: 0 }],
    };
  }
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

/** Bytes that arrived with the upstream's 101, kept until uWS opens the client socket. */
const pendingHead = new WeakMap<Session, Buffer>();
