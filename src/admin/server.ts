/**
 * The admin server: a plain node:http server on its own port (loopback by default), kept
 * apart from the WebSocket port so probes and scrapes never compete with client traffic and
 * are never exposed with it.
 *
 *   GET  /metrics  Prometheus text (content type from the registry)
 *   GET  /healthz  200 "ok" while the process serves requests at all
 *   GET  /readyz   200, or 503 with the reasons (listening, every route has a healthy upstream)
 *   GET  /stats    JSON of proxy.stats() (?cluster=1: only the cluster's view)
 *   POST /reload   body: a config (JSON or YAML); no body: re-read the config's source
 *   GET  /         the live dashboard (a page; it asks for a token itself)
 *   GET  /events   the dashboard's feed: server-sent events, a snapshot a second
 *   GET  /sessions live sessions (filters route, upstream, remote, agent; offset, limit)
 *   DELETE /sessions/{id}?code=4000&reason=...        closes one session, both sides told
 *   POST   /upstreams/{route}/{index}/drain[?closeWithinMs=N]   no new sessions to it
 *   DELETE /upstreams/{route}/{index}/drain            takes new sessions again
 *
 * With a token configured (`admin.token`, or named ones in `admin.tokens`), every request
 * but the dashboard page itself needs `Authorization: Bearer <token>`; session actions are
 * logged with the token's name.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { isIP, type AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { parseConfigText } from '../config/load.js';
import type { ProxyConfig } from '../config/types.js';
import { isSluiceError, SluiceError, type ConfigError } from '../errors.js';
import type { Logger } from '../log.js';
import type { CounterSnapshot } from '../metrics/index.js';
import {
  DEFAULT_PAGE, MAX_PAGE, operatorCloseCode, type ClosedSession, type DrainResult, type SessionFilter, type SessionPage,
} from '../proxy/session-control.js';
import { DASHBOARD_CSP, DASHBOARD_HTML } from './dashboard-page.js';
import { DashboardFeed } from './feed.js';

/**
 * What the admin server needs of a proxy (a subset of `Proxy`). The session control and
 * the dashboard are served where the target has them (a proxy; not the tunnel agent).
 */
export interface AdminTarget {
  readonly registry: Registry;
  readonly ready: { ok: boolean; reasons: string[] };
  stats(): unknown;
  /** Applies a new config; throws a ConfigError and keeps the old config on bad input. */
  reload(config: unknown): Promise<void>;
  /** One page of live sessions. */
  sessionPage?(filter: SessionFilter, offset: number, limit: number): SessionPage | Promise<SessionPage>;
  /** Closes session `id` with `code` and `reason` to both sides; false: no such live session. */
  closeSessionById?(id: string, code: number, reason: string, by: string): boolean | Promise<boolean>;
  /** Drains (or opens again) upstream `index` of route `route` (its index or its path); a string: what is missing. */
  drainUpstream?(route: string, index: number, opts: { undrain?: boolean; closeWithinMs?: number; by: string }): DrainResult | string | Promise<DrainResult | string>;
  /** The last sessions that ended, newest first. */
  lastCloses?(): ClosedSession[] | Promise<ClosedSession[]>;
  /** The counters now (every shard's, added up). */
  counterSnapshot?(): CounterSnapshot | Promise<CounterSnapshot>;
}

/** Optional behaviour of the admin server. */
export interface AdminHooks {
  /** Re-reads the config from where it came from (file, environment, flags); used by a POST /reload without body. */
  reloadFromSource?: () => Promise<unknown>;
  /** With a cluster: asks every other instance to re-read its config (POST /reload?cluster=1); how many heard it. */
  broadcastReload?: () => Promise<number>;
  /**
   * Turns a parsed request body into what `proxy.reload()` gets, e.g. applying environment
   * overrides the way the file was loaded. Default: the body as it is.
   */
  configFromBody?: (input: unknown) => unknown;
  logger?: Logger;
  /** Largest accepted request body (default 1 MiB). */
  maxBodyBytes?: number;
  /** How often the dashboard feed sends a snapshot (default 1000 ms). */
  feedIntervalMs?: number;
}

/** A running admin server. */
export interface AdminServer {
  readonly port: number;
  /** Stops listening and ends open connections. */
  close(): Promise<void>;
}

const JSON_TYPE = 'application/json; charset=utf-8';
const TEXT_TYPE = 'text/plain; charset=utf-8';

/** Starts the admin server; resolves once it listens (port 0 picks a free port). */
export async function startAdminServer(
  proxy: AdminTarget, admin: NonNullable<ProxyConfig['admin']>, hooks: AdminHooks = {},
): Promise<AdminServer> {
  const tokens = [
    ...(admin.token !== undefined ? [{ name: 'admin', token: admin.token }] : []),
    ...(admin.tokens ?? []),
  ].map((t) => ({ name: t.name, digest: digest(t.token) }));
  const maxBody = hooks.maxBodyBytes ?? 1_048_576;
  const control = proxy.sessionPage !== undefined && proxy.closeSessionById !== undefined && proxy.drainUpstream !== undefined &&
    proxy.lastCloses !== undefined && proxy.counterSnapshot !== undefined ? proxy as Required<AdminTarget> : null;
  const feed = control === null ? null : new DashboardFeed(control, hooks.feedIntervalMs ?? 1000, hooks.logger);

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      hooks.logger?.error({ err, url: req.url }, 'admin request failed');
      if (!res.headersSent) send(res, 500, TEXT_TYPE, 'internal error\n');
      else res.destroy();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const [path, queryString = ''] = (req.url ?? '/').split('?', 2);
    const query = new URLSearchParams(queryString);
    const method = req.method === 'HEAD' ? 'GET' : req.method ?? 'GET';
    const route = routeOf(path, control !== null);
    // The page itself holds no data: it asks for a token and sends it with each request.
    if (route?.name === 'page' && method === 'GET') {
      res.writeHead(200, {
        'Content-Type': 'text/html; charset=utf-8', 'Content-Length': Buffer.byteLength(DASHBOARD_HTML), 'Cache-Control': 'no-store',
        'Content-Security-Policy': DASHBOARD_CSP, 'X-Content-Type-Options': 'nosniff', 'Referrer-Policy': 'no-referrer',
      });
      res.end(req.method === 'HEAD' ? undefined : DASHBOARD_HTML);
      req.resume();
      return;
    }
    // A browser's request made by another site's page (CSRF), or through a name that is not
    // this server's (DNS rebinding against a server without a token), is refused.
    const foreign = foreignRequest(req, method, tokens.length === 0 ? admin.host : null);
    if (foreign !== null) {
      send(res, 403, TEXT_TYPE, `forbidden: ${foreign}\n`);
      req.resume();
      return;
    }
    // Everything else needs a token first (an unknown path too: nothing is told without one).
    const who = tokens.length === 0 ? 'anonymous' : tokenName(req.headers.authorization, tokens);
    if (who === null) {
      res.setHeader('WWW-Authenticate', 'Bearer realm="sluice"');
      send(res, 401, TEXT_TYPE, 'unauthorized: send Authorization: Bearer <admin token>\n');
      req.resume();
      return;
    }
    if (route === null) {
      send(res, 404, TEXT_TYPE, `not found: ${ROUTE_LIST}\n`);
      req.resume();
      return;
    }
    const allowed = route.methods;
    if (!allowed.includes(method)) {
      res.setHeader('Allow', allowed.map((m) => (m === 'GET' ? 'GET, HEAD' : m)).join(', '));
      send(res, 405, TEXT_TYPE, `method not allowed: use ${allowed.join(' or ')} ${path}\n`);
      req.resume();
      return;
    }
    if (method !== 'POST') req.resume();
    switch (route.name) {
      case 'healthz':
        send(res, 200, TEXT_TYPE, 'ok\n');
        return;
      case 'readyz': {
        const { ok, reasons } = proxy.ready;
        send(res, ok ? 200 : 503, JSON_TYPE, JSON.stringify({ ready: ok, reasons }));
        return;
      }
      case 'metrics':
        send(res, 200, proxy.registry.contentType, await proxy.registry.metrics());
        return;
      case 'stats': {
        // ?cluster=1: only the cluster's view (instances, places, degraded), null without a cluster.
        const stats = proxy.stats();
        const clusterOnly = query.get('cluster') === '1';
        send(res, 200, JSON_TYPE, JSON.stringify(clusterOnly ? (stats as { cluster?: unknown }).cluster ?? null : stats));
        return;
      }
      case 'reload':
        await reload(req, res, query);
        return;
      case 'events':
        if (req.method === 'HEAD') {
          res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store' });
          res.end();
        } else if (!feed!.subscribe(res)) send(res, 503, TEXT_TYPE, 'too many dashboard streams\n');
        return;
      case 'sessions': {
        const offset = wholeParam(query, 'offset', 0, Number.MAX_SAFE_INTEGER);
        const limit = wholeParam(query, 'limit', DEFAULT_PAGE, MAX_PAGE, 1);
        if (offset === null || limit === null) {
          send(res, 400, JSON_TYPE, JSON.stringify({ error: `offset: expected a whole number >= 0; limit: 1..${MAX_PAGE}` }));
          return;
        }
        const filter: SessionFilter = {
          route: query.get('route') ?? undefined, upstream: query.get('upstream') ?? undefined,
          remote: query.get('remote') ?? undefined, agent: query.get('agent') ?? undefined,
        };
        send(res, 200, JSON_TYPE, JSON.stringify(await control!.sessionPage(filter, offset, limit)));
        return;
      }
      case 'session': {
        const id = decoded(route.params[0]);
        if (id === null) {
          send(res, 400, JSON_TYPE, JSON.stringify({ error: 'session id: bad percent-encoding' }));
          return;
        }
        const code = wholeParam(query, 'code', 1000, 4999);
        const reason = query.get('reason') ?? 'closed by an operator';
        if (code === null || !operatorCloseCode(code) || Buffer.byteLength(reason) > 123) {
          send(res, 400, JSON_TYPE, JSON.stringify({ error: 'code: expected 1000 or 3000..4999; reason: at most 123 bytes of UTF-8' }));
          return;
        }
        const closed = await control!.closeSessionById(id, code, reason, who);
        send(res, closed ? 200 : 404, JSON_TYPE, JSON.stringify(closed ? { closed: true, id, code, reason, by: who } : { error: `no live session ${id}` }));
        return;
      }
      case 'drain': {
        const index = Number(route.params[1]);
        const closeWithinMs = wholeParam(query, 'closeWithinMs', 0, 3_600_000);
        if (closeWithinMs === null) {
          send(res, 400, JSON_TYPE, JSON.stringify({ error: 'closeWithinMs: expected a whole number of milliseconds, 0..3600000' }));
          return;
        }
        const routeRef = decoded(route.params[0]);
        if (routeRef === null) {
          send(res, 400, JSON_TYPE, JSON.stringify({ error: 'route: bad percent-encoding' }));
          return;
        }
        const result = await control!.drainUpstream(routeRef, index, { undrain: method === 'DELETE', closeWithinMs, by: who });
        if (typeof result === 'string') send(res, 404, JSON_TYPE, JSON.stringify({ error: result }));
        else send(res, 200, JSON_TYPE, JSON.stringify({ ...result, by: who }));
        return;
      }
    }
  }

  async function reload(req: IncomingMessage, res: ServerResponse, query: URLSearchParams): Promise<void> {
    const body = await readBody(req, maxBody);
    if (body === undefined) {
      send(res, 413, JSON_TYPE, JSON.stringify({ error: 'SLUICE_ERR_CONFIG', issues: [`request body: expected at most ${maxBody} bytes`] }));
      return;
    }
    try {
      if (body.trim() !== '') {
        const json = /^application\/json\b/i.test(req.headers['content-type'] ?? '');
        const input = parseConfigText(body, json ? 'json' : 'yaml', 'request body');
        await proxy.reload(hooks.configFromBody ? hooks.configFromBody(input) : input);
      } else if (hooks.reloadFromSource) {
        await hooks.reloadFromSource();
      } else {
        send(res, 400, JSON_TYPE, JSON.stringify({
          error: 'SLUICE_ERR_CONFIG', issues: ['request body: expected a config (this proxy has no config file to re-read)'],
        }));
        return;
      }
    } catch (err) {
      if (isSluiceError(err, 'SLUICE_ERR_CONFIG')) {
        const issues = (err as ConfigError).issues ?? [err.message];
        hooks.logger?.warn({ issues }, 'reload refused; the running config is kept');
        send(res, 400, JSON_TYPE, JSON.stringify({ error: err.code, issues }));
        return;
      }
      throw err;
    }
    hooks.logger?.info({ from: body.trim() !== '' ? 'admin request body' : 'config source' }, 'config reloaded');
    // ?cluster=1: then every other instance (each re-reads its own config).
    if (query.get('cluster') === '1' && hooks.broadcastReload) {
      try {
        const instances = await hooks.broadcastReload();
        send(res, 200, JSON_TYPE, JSON.stringify({ reloaded: true, broadcast: { instances } }));
      } catch (err) {
        send(res, 200, JSON_TYPE, JSON.stringify({ reloaded: true, broadcast: { error: (err as Error).message } }));
      }
      return;
    }
    send(res, 200, JSON_TYPE, JSON.stringify({ reloaded: true }));
  }

  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      reject(new SluiceError('SLUICE_ERR_ADMIN_LISTEN',
        `admin server cannot listen on ${admin.host}:${admin.port}: ${err.code === 'EADDRINUSE' ? 'address in use' : err.message}` +
        ' (change admin.port or --admin-port)', undefined, { cause: err }));
    };
    server.once('error', onError);
    server.listen(admin.port, admin.host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  hooks.logger?.info({ host: admin.host, port, auth: tokens.length > 0, tokens: tokens.map((t) => t.name) }, 'admin server listening');

  return {
    port,
    close: () => new Promise<void>((resolve) => {
      feed?.close();
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

type RouteName = 'page' | 'metrics' | 'healthz' | 'readyz' | 'stats' | 'reload' | 'events' | 'sessions' | 'session' | 'drain';

/** The paths and the methods each answers. */
const FIXED: Record<string, { name: RouteName; methods: string[] }> = {
  '/': { name: 'page', methods: ['GET'] },
  '/metrics': { name: 'metrics', methods: ['GET'] },
  '/healthz': { name: 'healthz', methods: ['GET'] },
  '/readyz': { name: 'readyz', methods: ['GET'] },
  '/stats': { name: 'stats', methods: ['GET'] },
  '/reload': { name: 'reload', methods: ['POST'] },
  '/events': { name: 'events', methods: ['GET'] },
  '/sessions': { name: 'sessions', methods: ['GET'] },
};
/** Served only by a target with sessions. */
const CONTROL = new Set<RouteName>(['page', 'events', 'sessions', 'session', 'drain']);
const ROUTE_LIST = 'GET / /metrics /healthz /readyz /stats /events /sessions, POST /reload, DELETE /sessions/{id}, POST|DELETE /upstreams/{route}/{index}/drain';

/** The route a path names; `control`: the target has sessions (a proxy), else only the basic routes. */
function routeOf(path: string, control: boolean): { name: RouteName; methods: string[]; params: string[] } | null {
  const fixed = FIXED[path];
  if (fixed !== undefined && (control || !CONTROL.has(fixed.name))) return { ...fixed, params: [] };
  if (!control) return null;
  let m = /^\/sessions\/([^/]+)$/.exec(path);
  if (m !== null) return { name: 'session', methods: ['DELETE'], params: [m[1]] };
  m = /^\/upstreams\/([^/]+)\/(\d{1,4})\/drain$/.exec(path);
  if (m !== null) return { name: 'drain', methods: ['POST', 'DELETE'], params: [m[1], m[2]] };
  return null;
}

/** A path parameter, percent-decoded; null when its encoding is malformed. */
function decoded(raw: string): string | null {
  try {
    return decodeURIComponent(raw);
  } catch {
    return null;
  }
}

/**
 * Why a request is refused as coming from elsewhere, or null. A browser names the page's
 * site: `Sec-Fetch-Site: cross-site`, or an `Origin` whose host is neither `Host` nor
 * `X-Forwarded-Host` (sluice's own http routes set it), on anything but GET. Without a
 * token (`tokenless`: the configured admin host), `Host` must be an IP address,
 * `localhost` or that host: a name rebound to 127.0.0.1 by another site is not.
 */
function foreignRequest(req: IncomingMessage, method: string, tokenless: string | null): string | null {
  const h = req.headers;
  if (method !== 'GET') {
    if (h['sec-fetch-site'] === 'cross-site') return 'a request from another site';
    const origin = h.origin;
    if (origin !== undefined && origin !== 'null') {
      let from = '';
      try { from = new URL(origin).host; } catch { /* malformed: refused below */ }
      const forwarded = String(h['x-forwarded-host'] ?? '').split(',').map((x) => x.trim());
      const hosts = [h.host ?? '', ...forwarded].filter((x) => x !== '');
      if (!hosts.includes(from)) return `a request from another origin (${origin.slice(0, 100)})`;
    }
  }
  if (tokenless !== null && h.host !== undefined) {
    const name = h.host.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1').toLowerCase();
    if (!isIP(name) && name !== 'localhost' && name !== tokenless.toLowerCase()) return `Host ${h.host.slice(0, 100)} is not this server's (set admin.token to serve other names)`;
  }
  return null;
}

/** A whole-number query parameter within [min, max]; `fallback` when absent; null when malformed. */
function wholeParam(query: URLSearchParams, name: string, fallback: number, max: number, min = 0): number | null {
  const raw = query.get(name);
  if (raw === null || raw === '') return fallback;
  if (!/^\d{1,16}$/.test(raw)) return null;
  const n = Number(raw);
  return n >= min && n <= max ? n : null;
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(body);
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/**
 * The name of the token the request carries, or null. Every configured token is compared,
 * in constant time, over hashes (the same time whatever the length of what was sent).
 */
function tokenName(header: string | undefined, tokens: ReadonlyArray<{ name: string; digest: Buffer }>): string | null {
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(header ?? '');
  const sent = digest(m ? m[1] : '');
  let found: string | null = null;
  for (const t of tokens) if (timingSafeEqual(sent, t.digest) && m !== null && found === null) found = t.name;
  return found;
}

/**
 * The body as text, or undefined when it is larger than `max` bytes. An oversized body is
 * still read to its end (and dropped) so the 413 answer reaches the client.
 */
async function readBody(req: IncomingMessage, max: number): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size <= max) chunks.push(chunk);
  }
  return size > max ? undefined : Buffer.concat(chunks).toString('utf8');
}
