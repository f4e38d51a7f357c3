/**
 * Route matching and path mapping. A route's path is exact ("/chat") or a prefix
 * ("/api/*", which also matches "/api" itself). Exact routes win over prefixes, longer
 * prefixes over shorter, routes with a host over routes without; ties go to config order.
 */
import type { RouteConfig } from '../config/types.js';

export interface RouteMatcher<R> {
  route: R;
  config: RouteConfig;
  /** For "/api/*": "/api"; for exact routes the path itself. */
  base: string;
  prefix: boolean;
  host: string;
  /** Position in the config (the last tie-breaker). */
  rank: number;
}

/** Compile routes into the order they are tried in. */
export function compileRoutes<R>(routes: Array<{ route: R; config: RouteConfig }>): Array<RouteMatcher<R>> {
  const out = routes.map(({ route, config }, i) => {
    const prefix = config.path.endsWith('/*');
    const base = prefix ? config.path.slice(0, -2) : config.path;
    return { route, config, base, prefix, host: (config.host ?? '').toLowerCase(), rank: i };
  });
  // Host routes first, then exact paths, then longer prefixes; config order breaks ties.
  out.sort((a, b) =>
    (a.host === '' ? 1 : 0) - (b.host === '' ? 1 : 0) ||
    (a.prefix ? 1 : 0) - (b.prefix ? 1 : 0) ||
    (a.prefix ? b.base.length - a.base.length : 0) ||
    a.rank - b.rank);
  return out;
}

/** The `host` {@link matchRoute} takes: a Host header without its port, lower-cased. */
export function requestHost(hostHeader: string): string {
  return hostHeader.replace(/:\d+$/, '').toLowerCase();
}

/** Find the route for a request (`host` without its port, lower-cased: {@link requestHost}). */
export function matchRoute<R>(matchers: Array<RouteMatcher<R>>, host: string, path: string): RouteMatcher<R> | undefined {
  for (const m of matchers) {
    if (m.host !== '' && m.host !== host) continue;
    if (m.prefix) {
      if (path === m.base || m.base === '' || path.startsWith(m.base + '/')) return m;
    } else if (path === m.base) {
      return m;
    }
  }
  return undefined;
}

/**
 * Map a client's path and query onto an upstream URL:
 * exact route `/chat` + upstream `/ws`: `/chat?x=1` → `/ws?x=1`;
 * prefix route `/api/*` + upstream `/base`: `/api/a/b` → `/base/a/b`.
 */
export function mapTarget(m: RouteMatcher<unknown>, upstream: URL, path: string, query: string): string {
  const basePath = upstream.pathname;
  let target: string;
  if (!m.prefix) {
    target = basePath;
  } else {
    const rest = path.slice(m.base.length); // "" or "/a/b"
    if (rest === '') target = basePath;
    else target = (basePath.endsWith('/') ? basePath.slice(0, -1) : basePath) + rest;
  }
  if (target === '') target = '/';
  // The upstream URL's own query comes first, the client's is appended.
  const upstreamQuery = upstream.search.length > 1 ? upstream.search.slice(1) : '';
  const q = upstreamQuery && query ? `${upstreamQuery}&${query}` : upstreamQuery || query;
  return q ? `${target}?${q}` : target;
}
