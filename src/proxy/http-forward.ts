/**
 * Requests that are not WebSocket upgrades. They are matched to a route exactly as
 * upgrades are (router.ts): no route → 404; a route without `http: true` → 426, as
 * before; a route with it → the route's credentials and the per-IP rate apply as to an
 * upgrade, then the request is proxied as HTTP/1.1 with Node's http/https client to the
 * upstream the route's balancer picks (ws:// → http://, wss:// → https://, the path mapped
 * as for upgrades). Bodies stream both ways through pipe(), so a slow reader on either
 * side holds back the other; an abort on either side aborts the other.
 */
import { readFileSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { ProxyConfig, RouteConfig } from '../config/types.js';
import type { ProxyCounters } from '../metrics/counters.js';
import type { AccessDecision } from '../policy/index.js';
import type { Upstream } from './balancer.js';
import type { RouteRuntime } from './proxy.js';
import { mapTarget, requestHost, type RouteMatcher } from './router.js';
import { peerAddress } from './handshake-client.js';

/** Upstreams tried for one request before it gets 502, on connect failures only (as for upgrades). */
const MAX_TRIES = 3;
/**
 * How long an idle upstream connection is kept for the next request; shorter when the
 * upstream's `Keep-Alive: timeout=N` says so (Node's agent then keeps it N-1 s).
 */
const UPSTREAM_IDLE_MS = 4000;
/** The status logged and counted for a request whose client went away before it was answered (nginx's convention). */
export const CLIENT_GONE = 499;

/** Hop-by-hop headers (RFC 9110 §7.6.1 and RFC 2616's list), dropped both ways, with those named in Connection. */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade',
  'proxy-authenticate', 'proxy-authorization',
]);
/**
 * Request headers sluice writes itself: Host (the upstream's, as on upgrades), the
 * X-Forwarded set and X-Real-IP (replaced), Expect (Node's server has answered
 * `100 Continue` already).
 */
const REQUEST_OWN = new Set(['host', 'expect', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-real-ip']);

/**
 * The headers added to what is forwarded, as on upgrades: X-Forwarded-For (the client's
 * address appended to what came in), X-Forwarded-Proto, X-Forwarded-Host, X-Real-IP.
 */
export function forwardedHeaders(priorFor: string, remote: string, tlsListener: boolean, hostHeader: string): Array<[string, string]> {
  return [
    ['X-Forwarded-For', priorFor ? `${priorFor}, ${remote}` : remote],
    ['X-Forwarded-Proto', tlsListener ? 'https' : 'http'],
    ['X-Forwarded-Host', hostHeader],
    ['X-Real-IP', remote],
  ];
}

/** Lower-case header names listed in a Connection header (they are hop-by-hop too). */
function connectionNamed(value: string | undefined): Set<string> {
  const out = new Set<string>();
  if (value === undefined) return out;
  for (const t of value.split(',')) {
    const name = t.trim().toLowerCase();
    if (name !== '') out.add(name);
  }
  return out;
}

/** rawHeaders without the hop-by-hop ones, flat as rawHeaders are ([name, value, name, value, …]). */
function endToEnd(raw: readonly string[], extraDrop?: ReadonlySet<string>): string[] {
  let named: Set<string> | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i].toLowerCase() === 'connection') named = new Set([...(named ?? []), ...connectionNamed(raw[i + 1])]);
  }
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    if (HOP_BY_HOP.has(name) || named?.has(name) || extraDrop?.has(name)) continue;
    out.push(raw[i], raw[i + 1]);
  }
  return out;
}

const caCache = new Map<string, Buffer>();
function readCa(file: string): Buffer {
  let ca = caCache.get(file);
  if (ca === undefined) {
    ca = readFileSync(file);
    caCache.set(file, ca);
  }
  return ca;
}

/** A short text answer from sluice itself; whatever body the request still has is read and dropped. */
function answer(req: IncomingMessage, res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  req.resume();
  if (res.headersSent || res.destroyed) return;
  const body = `${text}\n`;
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': String(Buffer.byteLength(body)),
    'X-Content-Type-Options': 'nosniff',
    ...headers,
  });
  res.end(body);
}

/** What the forwarder needs of the proxy. */
export interface HttpForwardHost {
  /** The proxy: its config is read per request, so a reload applies at once. */
  proxy: { readonly config: ProxyConfig; readonly logger: Logger; readonly draining: boolean };
  counters: ProxyCounters;
  /** The route of a request, matched as upgrades are (`host` from {@link requestHost}). */
  match(host: string, path: string): RouteMatcher<RouteRuntime> | undefined;
  /** limits.connectionRatePerIp: false when this client is over its rate. */
  allow(remote: string, now: number): boolean;
  /** The client's query string without the parameters that carry the route's credentials. */
  stripCredentials(query: string, route: RouteConfig): string;
  /** An upstream's health changed (logged and published as for upgrades). */
  healthChanged(upstream: Upstream, healthy: boolean, reason: string): void;
  /** A stream to a service through a tunnel agent (upstreams with `agent`). */
  openAgentStream(agent: string, service: string, timeoutMs: number): Promise<Duplex>;
}

export class HttpForwarder {
  /** Upstream connections, kept alive between requests (per host, port and TLS options). */
  private readonly httpAgent = new http.Agent({ keepAlive: true, timeout: UPSTREAM_IDLE_MS });
  private readonly httpsAgent = new https.Agent({ keepAlive: true, timeout: UPSTREAM_IDLE_MS });
  /** Requests on `http: true` routes not yet answered in full (a drain waits for them). */
  inFlight = 0;

  constructor(private readonly host: HttpForwardHost) {}

  /** Closes every upstream connection (the proxy is stopping). */
  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  /** Node's 'request' event: a request without `Upgrade` (or with one but no `Connection: upgrade`). */
  handle(req: IncomingMessage, res: ServerResponse): void {
    const { proxy, counters } = this.host;
    let routePath = '';
    res.once('close', () => counters.httpRequest(routePath, res.headersSent ? res.statusCode : CLIENT_GONE));
    if (req.headers.upgrade !== undefined) {
      // An upgrade whose Connection header lacks the "upgrade" token (RFC 6455 §4.2.1).
      answer(req, res, 400, 'sluice: the Connection header lacks "upgrade"', { Connection: 'close' });
      return;
    }
    const started = Date.now();
    const rawUrl = req.url ?? '/';
    const q = rawUrl.indexOf('?');
    const path = q < 0 ? rawUrl : rawUrl.slice(0, q);
    const query = q < 0 ? '' : rawUrl.slice(q + 1);
    const matched = this.host.match(requestHost(req.headers.host ?? ''), path);
    if (matched === undefined) {
      answer(req, res, 404, `sluice: no route for ${path}`);
      return;
    }
    const route = matched.route;
    routePath = route.config.path;
    if (!route.config.http) {
      answer(req, res, 426, 'sluice: this endpoint speaks WebSocket', { Upgrade: 'websocket', Connection: 'close' });
      return;
    }
    if (proxy.draining) {
      answer(req, res, 503, 'sluice: draining', { Connection: 'close' });
      return;
    }
    this.inFlight++;
    res.once('close', () => this.inFlight--);
    const limits = proxy.config.limits;
    const raw = req.rawHeaders;
    // The same bounds as an upgrade's head (Node's parser keeps one header more than the
    // limit, so that too many are seen).
    const headerMap = new Map<string, string>();
    let headerBytes = 0;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i].toLowerCase();
      headerBytes += name.length + raw[i + 1].length + 4;
      headerMap.set(name, headerMap.has(name) ? `${headerMap.get(name)}, ${raw[i + 1]}` : raw[i + 1]);
    }
    if (raw.length / 2 > limits.maxHeaderCount || headerBytes > limits.maxHeaderBytes) {
      answer(req, res, 431, 'sluice: too many or too large request headers', { Connection: 'close' });
      return;
    }
    let remote = peerAddress(req.socket);
    if (remote.startsWith('::ffff:')) remote = remote.slice(7);
    if (!this.host.allow(remote, started)) {
      answer(req, res, 429, 'sluice: connection rate limit');
      return;
    }
    const go = (decision: AccessDecision | null) => {
      if (res.destroyed) return; // the client left while its credentials were checked
      if (decision !== null && !decision.ok) {
        proxy.logger.info({ event: 'auth_refused', route: route.config.path, remote, reason: decision.reason, http: true }, 'credentials refused');
        answer(req, res, 401, `sluice: ${decision.reason}`, { 'WWW-Authenticate': 'Bearer realm="sluice"' });
        return;
      }
      this.forward(req, res, route, matched, path, query, headerMap, remote, started);
    };
    if (route.access === null) {
      go(null);
      return;
    }
    // Credentials are checked before any upstream is dialled. A plain request has no
    // subprotocol list, so a token carried as one (`from: protocol`) never passes here.
    route.access.check({ headers: headerMap, query, protocols: [], remoteAddress: remote }).then(go, (err: Error) => {
      go({ ok: false, status: 401, reason: `credentials could not be checked: ${err.message}` });
    });
  }

  private forward(
    req: IncomingMessage, res: ServerResponse, route: RouteRuntime, matched: RouteMatcher<RouteRuntime>,
    path: string, query: string, headerMap: Map<string, string>, remote: string, started: number,
  ): void {
    const { proxy } = this.host;
    const config = proxy.config;
    const timeoutMs = config.limits.upstreamTimeoutMs;
    const hashHeader = route.balancer.hashHeader;
    const candidates = route.balancer.order(remote, hashHeader ? (headerMap.get(hashHeader) ?? '') : '', started, MAX_TRIES);
    if (candidates.length === 0) {
      req.resume();
      answer(req, res, 503, 'sluice: every upstream of this route is draining', { Connection: 'close' });
      return;
    }
    const upstreamQuery = this.host.stripCredentials(query, route.config);
    const chunked = req.headers['transfer-encoding'] !== undefined;
    const bodyless = !chunked && (req.headers['content-length'] === undefined || Number(req.headers['content-length']) === 0);
    if (bodyless) req.resume();
    const headers = endToEnd(req.rawHeaders, REQUEST_OWN);
    for (const [name, value] of forwardedHeaders(headerMap.get('x-forwarded-for') ?? '', remote, config.listen.tls !== undefined, req.headers.host ?? '')) {
      headers.push(name, value);
    }
    // The body keeps its length or is sent chunked, as it came.
    if (chunked) headers.push('Transfer-Encoding', 'chunked');

    let upstream = candidates[0];
    let upstreamReq: http.ClientRequest | null = null;
    let timer: NodeJS.Timeout | undefined;
    /** The response has begun, or sluice answered itself: nothing more to decide. */
    let settled = false;
    /** A bodyless request may be sent again once when a kept-alive connection turns out to be closed. */
    let staleRetry = bodyless;
    let failure = '';
    let abortedBy: 'client' | 'upstream' | '' = '';

    const fail = (status: 502 | 504, reason: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      failure = reason;
      upstreamReq?.destroy();
      answer(req, res, status, `sluice: ${reason}`, { Connection: 'close' });
    };
    const connectFailed = (reason: string) => {
      // Passive health, as for upgrades: a failed connect holds the upstream out.
      upstream.failures++;
      upstream.lastError = reason;
      const wasHealthy = upstream.healthy(Date.now());
      upstream.downUntil = Date.now() + route.config.health.coolOffMs;
      if (wasHealthy) this.host.healthChanged(upstream, false, reason);
    };

    res.once('close', () => {
      clearTimeout(timer);
      if (!res.writableFinished) {
        // The client went away (or the upstream's response broke off): nothing more goes upstream.
        if (abortedBy === '') abortedBy = 'client';
        settled = true;
        upstreamReq?.destroy();
      }
      const status = res.headersSent ? res.statusCode : CLIENT_GONE;
      const info = {
        event: 'http_request', route: route.config.path, upstream: upstream.href, method: req.method, status, remote,
        durationMs: Date.now() - started, ...(abortedBy !== '' ? { aborted: abortedBy } : {}), ...(failure !== '' ? { error: failure } : {}),
      };
      if (failure !== '' || abortedBy === 'upstream') proxy.logger.warn(info, 'http request failed');
      else proxy.logger.info(info, 'http request proxied');
    });

    const attempt = (i: number) => {
      upstream = candidates[i];
      const url = upstream.url;
      const secure = url.protocol === 'wss:';
      const hostname = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
      const options: https.RequestOptions = {
        host: hostname,
        port: Number(url.port || (secure ? 443 : 80)),
        method: req.method,
        path: mapTarget(matched, url, path, upstreamQuery),
        headers: ['Host', url.host, ...headers] as unknown as http.OutgoingHttpHeaders,
        agent: secure ? this.httpsAgent : this.httpAgent,
      };
      const via = upstream.agent;
      if (via !== null) {
        // Through an agent: one yamux stream per request (the agent dials the service for it).
        options.agent = undefined;
        options.createConnection = ((_o: unknown, done: (err: Error | null, stream?: Duplex) => void) => {
          this.host.openAgentStream(via.name, via.service, timeoutMs).then((stream) => done(null, stream), (err: Error) => done(err));
          return undefined;
        }) as unknown as https.RequestOptions['createConnection'];
      }
      if (secure) {
        const tls = route.config.tls;
        options.rejectUnauthorized = tls?.rejectUnauthorized ?? true;
        if (tls?.caFile) options.ca = readCa(tls.caFile);
        options.servername = tls?.servername ?? (net.isIP(hostname) ? '' : hostname);
      }
      let connected = false;
      let responded = false;
      const r = (secure ? https : http).request(options);
      upstreamReq = r;
      timer = setTimeout(() => {
        const reason = `upstream ${url.host} did not connect within ${timeoutMs} ms`;
        connectFailed(reason);
        fail(504, reason);
      }, timeoutMs);

      const onConnected = () => {
        if (settled || r.destroyed) return;
        connected = true;
        upstream.failures = 0;
        clearTimeout(timer);
        if (bodyless) r.end();
        else req.pipe(r);
        // The answer must begin within upstreamTimeoutMs of the request's last byte.
        r.once('finish', () => {
          if (settled || responded) return;
          timer = setTimeout(() => fail(504, `upstream ${url.host} did not answer within ${timeoutMs} ms`), timeoutMs);
        });
      };
      r.once('socket', (socket: net.Socket) => {
        if (socket.connecting === true) socket.once(secure ? 'secureConnect' : 'connect', onConnected);
        else onConnected();
      });
      r.on('error', (err: NodeJS.ErrnoException) => {
        if (settled || responded || upstreamReq !== r) return;
        clearTimeout(timer);
        const reason = `upstream ${url.host}: ${err.code ?? err.message}`;
        if (!connected) {
          connectFailed(reason);
          // Nothing of the request went out yet: the next upstream may take it.
          if (i + 1 < candidates.length && !res.destroyed) {
            attempt(i + 1);
            return;
          }
        } else if (staleRetry && r.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
          // A kept-alive connection the upstream had closed meanwhile: once more, on another.
          staleRetry = false;
          attempt(i);
          return;
        }
        fail(502, reason);
      });
      r.once('response', (up: IncomingMessage) => {
        responded = true;
        clearTimeout(timer);
        up.on('error', () => {});
        if (settled) {
          up.destroy();
          return;
        }
        settled = true;
        const out = endToEnd(up.rawHeaders);
        if (proxy.draining) out.push('Connection', 'close');
        try {
          const status = up.statusCode ?? 502;
          res.writeHead(status, up.statusMessage || http.STATUS_CODES[status] || 'Unknown', out);
        } catch (err) {
          // A head Node's parser took but its writer refuses (e.g. a bad character).
          settled = false;
          up.destroy();
          fail(502, `upstream ${url.host} sent a response head that cannot be forwarded: ${(err as Error).message}`);
          return;
        }
        up.once('close', () => {
          // Broken off before its end: the client's connection is ended too (a truncated
          // body must not look complete).
          if (!up.complete && !res.writableFinished) {
            abortedBy = 'upstream';
            res.destroy();
          }
        });
        up.pipe(res);
      });
    };
    attempt(0);
  }
}
