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
 *
 * With a token configured, every request needs `Authorization: Bearer <token>`.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { parseConfigText } from '../config/load.js';
import type { ProxyConfig } from '../config/types.js';
import { isSluiceError, SluiceError, type ConfigError } from '../errors.js';
import type { Logger } from '../log.js';

/** What the admin server needs of a proxy (a subset of `Proxy`). */
export interface AdminTarget {
  readonly registry: Registry;
  readonly ready: { ok: boolean; reasons: string[] };
  stats(): unknown;
  /** Applies a new config; throws a ConfigError and keeps the old config on bad input. */
  reload(config: unknown): Promise<void>;
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
  const tokenDigest = admin.token === undefined ? undefined : digest(admin.token);
  const maxBody = hooks.maxBodyBytes ?? 1_048_576;

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      hooks.logger?.error({ err, url: req.url }, 'admin request failed');
      if (!res.headersSent) send(res, 500, TEXT_TYPE, 'internal error\n');
      else res.destroy();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (tokenDigest !== undefined && !authorized(req.headers.authorization, tokenDigest)) {
      res.setHeader('WWW-Authenticate', 'Bearer realm="sluice"');
      send(res, 401, TEXT_TYPE, 'unauthorized: send Authorization: Bearer <admin.token>\n');
      req.resume();
      return;
    }
    const path = (req.url ?? '/').split('?')[0];
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    const route = ROUTES[path];
    if (route === undefined) {
      send(res, 404, TEXT_TYPE, 'not found: GET /metrics /healthz /readyz /stats, POST /reload\n');
      req.resume();
      return;
    }
    if (method !== route) {
      res.setHeader('Allow', route === 'GET' ? 'GET, HEAD' : route);
      send(res, 405, TEXT_TYPE, `method not allowed: use ${route} ${path}\n`);
      req.resume();
      return;
    }
    switch (path) {
      case '/healthz':
        send(res, 200, TEXT_TYPE, 'ok\n');
        return;
      case '/readyz': {
        const { ok, reasons } = proxy.ready;
        send(res, ok ? 200 : 503, JSON_TYPE, JSON.stringify({ ready: ok, reasons }));
        return;
      }
      case '/metrics':
        send(res, 200, proxy.registry.contentType, await proxy.registry.metrics());
        return;
      case '/stats': {
        // ?cluster=1: only the cluster's view (instances, places, degraded), null without a cluster.
        const stats = proxy.stats();
        const clusterOnly = /(?:^|&)cluster=1(?:&|$)/.test((req.url ?? '').split('?')[1] ?? '');
        send(res, 200, JSON_TYPE, JSON.stringify(clusterOnly ? (stats as { cluster?: unknown }).cluster ?? null : stats));
        return;
      }
      case '/reload':
        await reload(req, res);
        return;
    }
  }

  async function reload(req: IncomingMessage, res: ServerResponse): Promise<void> {
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
    if (/(?:^|&)cluster=1(?:&|$)/.test((req.url ?? '').split('?')[1] ?? '') && hooks.broadcastReload) {
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
  hooks.logger?.info({ host: admin.host, port, auth: tokenDigest !== undefined }, 'admin server listening');

  return {
    port,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

/** The method each path answers. */
const ROUTES: Record<string, 'GET' | 'POST'> = {
  '/metrics': 'GET', '/healthz': 'GET', '/readyz': 'GET', '/stats': 'GET', '/reload': 'POST',
};

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(body);
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/**
 * Compares the bearer token in constant time. Both sides are hashed first so the comparison
 * takes the same time whatever the length of what was sent.
 */
function authorized(header: string | undefined, tokenDigest: Buffer): boolean {
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(header ?? '');
  const sent = digest(m ? m[1] : '');
  return timingSafeEqual(sent, tokenDigest) && m !== null;
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
