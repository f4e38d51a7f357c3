/**
 * The zod schema of a sluice config file and the rules a value must meet.
 *
 * Every message a rule produces reads "expected …"; the formatter in load.ts puts the key
 * path in front and ", got <value>" after it, so every problem reads the same way:
 * `routes[0].upstreams[0].url: expected a ws:// or wss:// URL, got "http:/x"`.
 */
import { z } from 'zod';
import type {
  BackpressurePolicy, BalanceStrategy, ProxyConfig, RouteConfig, RouteMode,
} from './types.js';

/** The upstream URL that stands for the echo backend the data plane starts itself. */
export const BUILTIN_ECHO_URL = 'builtin:echo';

/** Defaults of every value a config may leave out (DESIGN "Configuration"). */
export const DEFAULTS = {
  listen: { host: '127.0.0.1', port: 8080 },
  limits: {
    maxFrameBytes: 1_048_576,
    maxConnections: 10_000,
    channelCapacity: 100,
    channelBytes: 4 * 1_048_576,
    upstreamTimeoutMs: 10_000,
    highWaterMark: 1_048_576,
  },
  heartbeat: { pingIntervalSeconds: 30, pongTimeoutSeconds: 90 },
  drain: { timeoutMs: 10_000 },
  route: {
    mode: 'transparent' as RouteMode,
    balance: 'round_robin' as BalanceStrategy,
    // A proxy that silently loses messages is worse than one that says so (DESIGN "Backpressure").
    backpressure: 'close' as BackpressurePolicy,
    compression: false,
    health: { intervalMs: 0, timeoutMs: 2000, coolOffMs: 5000 },
    upstreamWeight: 1,
  },
  admin: { host: '127.0.0.1', port: 9090 },
  log: { level: 'info' as const },
  protocol: 'v1' as const,
  /** The route an empty config gets: `/echo` answered by the built-in echo backend. */
  routes: [{ path: '/echo', upstreams: [{ url: BUILTIN_ECHO_URL }] }],
} as const;

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export const PROTOCOLS = ['v1', 'v2'] as const;

/** Message of a value that is not a ws:// or wss:// URL. */
export const UPSTREAM_URL_EXPECTED = 'expected a ws:// or wss:// URL';
export const ORIGIN_EXPECTED = 'expected "*" or an exact origin scheme://host[:port] (no path, no trailing "/")';
export const PATH_EXPECTED = 'expected a path starting with "/" ("*" only as a trailing "/*")';
export const BALANCE_EXPECTED = 'expected one of round_robin|least_conn|ip_hash|header:<name>';

/** True for a ws:// or wss:// URL with a host, or the built-in echo backend. */
export function isUpstreamUrl(value: string): boolean {
  if (value === BUILTIN_ECHO_URL) return true;
  if (!/^wss?:\/\//i.test(value)) return false;
  try {
    const url = new URL(value);
    return (url.protocol === 'ws:' || url.protocol === 'wss:') && url.hostname !== '' && url.hash === '';
  } catch {
    return false;
  }
}

/**
 * True for "*" or an exact origin as a browser sends it in the Origin header. For http(s)
 * the string must equal its URL's own origin, so "http://a.example:80" (a browser sends
 * "http://a.example") or an upper-case host, which would never match, are refused.
 */
export function isOrigin(value: string): boolean {
  if (value === '*') return true;
  const m = /^([a-z][a-z0-9+.-]*):\/\/([^/?#\s@]+)$/.exec(value);
  if (!m) return false;
  if (m[1] !== 'http' && m[1] !== 'https') return true; // e.g. chrome-extension://<id>
  try {
    return new URL(value).origin === value;
  } catch {
    return false;
  }
}

/** True for an exact path or a prefix ending in "/*". */
export function isRoutePath(value: string): boolean {
  if (!value.startsWith('/')) return false;
  const star = value.indexOf('*');
  if (star === -1) return !/[\s?#]/.test(value);
  return star === value.length - 1 && value.endsWith('/*') && !/[\s?#]/.test(value);
}

const HEADER_TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** True for a balance strategy name, `header:<name>` with a valid HTTP header name. */
export function isBalance(value: string): value is BalanceStrategy {
  if (value === 'round_robin' || value === 'least_conn' || value === 'ip_hash') return true;
  return value.startsWith('header:') && HEADER_TOKEN.test(value.slice('header:'.length));
}

// ---- building blocks; each carries its own "expected …" message --------------------------

const POSITIVE_INT = 'expected a positive integer';
const NON_NEGATIVE_INT = 'expected an integer >= 0';
const PORT = 'expected a port number 0..65535';

function positiveInt() {
  return z.number({ error: POSITIVE_INT }).int({ error: POSITIVE_INT }).min(1, { error: POSITIVE_INT })
    .max(Number.MAX_SAFE_INTEGER, { error: POSITIVE_INT });
}
function nonNegativeInt() {
  return z.number({ error: NON_NEGATIVE_INT }).int({ error: NON_NEGATIVE_INT }).min(0, { error: NON_NEGATIVE_INT })
    .max(Number.MAX_SAFE_INTEGER, { error: NON_NEGATIVE_INT });
}
function port() {
  return z.number({ error: PORT }).int({ error: PORT }).min(0, { error: PORT }).max(65535, { error: PORT });
}
function nonEmptyString(what = 'a non-empty string') {
  const expected = `expected ${what}`;
  return z.string({ error: expected }).min(1, { error: expected });
}
function bool() {
  return z.boolean({ error: 'expected true or false' });
}
function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, { error: `expected one of ${values.join('|')}` });
}
/** A section object: unknown keys refused, and when left out, parsed from `{}` so its defaults apply. */
function section<S extends z.core.$ZodLooseShape>(shape: S) {
  return z.strictObject(shape, { error: 'expected a mapping of settings' });
}

// ---- the schema -----------------------------------------------------------------------------

const upstreamSchema = section({
  url: z.string({ error: UPSTREAM_URL_EXPECTED }).refine(isUpstreamUrl, { error: UPSTREAM_URL_EXPECTED }),
  weight: positiveInt().default(DEFAULTS.route.upstreamWeight),
});

const healthSchema = section({
  intervalMs: nonNegativeInt().default(DEFAULTS.route.health.intervalMs),
  timeoutMs: positiveInt().default(DEFAULTS.route.health.timeoutMs),
  coolOffMs: nonNegativeInt().default(DEFAULTS.route.health.coolOffMs),
});

const routeSchema = section({
  path: z.string({ error: PATH_EXPECTED }).refine(isRoutePath, { error: PATH_EXPECTED }),
  host: nonEmptyString('a host name').optional(),
  mode: oneOf(['transparent', 'envelope']).default(DEFAULTS.route.mode),
  balance: z.string({ error: BALANCE_EXPECTED })
    .refine(isBalance, { error: BALANCE_EXPECTED })
    .default(DEFAULTS.route.balance)
    .transform((v) => v as BalanceStrategy),
  backpressure: oneOf(['close', 'drop']).default(DEFAULTS.route.backpressure),
  upstreams: z.array(upstreamSchema, { error: 'expected a list of upstreams' })
    .min(1, { error: 'expected at least one upstream' }),
  compression: bool().default(DEFAULTS.route.compression),
  health: healthSchema.prefault({}),
  tls: section({
    caFile: nonEmptyString('a file path').optional(),
    rejectUnauthorized: bool().default(true),
    servername: nonEmptyString('a server name').optional(),
  }).optional(),
});

/** The schema of a whole config; its output is exactly {@link ProxyConfig}. */
export const proxyConfigSchema = section({
  listen: section({
    host: nonEmptyString('a host name or IP address').default(DEFAULTS.listen.host),
    port: port().default(DEFAULTS.listen.port),
    tls: section({
      certFile: nonEmptyString('a file path'),
      keyFile: nonEmptyString('a file path'),
    }).optional(),
  }).prefault({}),
  limits: section({
    maxFrameBytes: positiveInt().default(DEFAULTS.limits.maxFrameBytes),
    maxConnections: positiveInt().default(DEFAULTS.limits.maxConnections),
    channelCapacity: positiveInt().default(DEFAULTS.limits.channelCapacity),
    channelBytes: positiveInt().default(DEFAULTS.limits.channelBytes),
    upstreamTimeoutMs: positiveInt().default(DEFAULTS.limits.upstreamTimeoutMs),
    highWaterMark: positiveInt().default(DEFAULTS.limits.highWaterMark),
  }).prefault({}),
  heartbeat: section({
    pingIntervalSeconds: positiveInt().default(DEFAULTS.heartbeat.pingIntervalSeconds),
    pongTimeoutSeconds: positiveInt().default(DEFAULTS.heartbeat.pongTimeoutSeconds),
  }).prefault({}),
  origins: z.array(
    z.string({ error: ORIGIN_EXPECTED }).refine(isOrigin, { error: ORIGIN_EXPECTED }),
    { error: 'expected a list of origins' },
  ).default([]),
  routes: z.array(routeSchema, { error: 'expected a list of routes' })
    .min(1, { error: 'expected at least one route' })
    .prefault(() => structuredClone(DEFAULTS.routes) as unknown as RouteConfig[]),
  protocol: oneOf(PROTOCOLS).default(DEFAULTS.protocol),
  drain: section({
    timeoutMs: nonNegativeInt().default(DEFAULTS.drain.timeoutMs),
  }).prefault({}),
  admin: section({
    host: nonEmptyString('a host name or IP address').default(DEFAULTS.admin.host),
    port: port().default(DEFAULTS.admin.port),
    token: nonEmptyString('a non-empty token').optional(),
  }).optional(),
  log: section({
    level: oneOf(LOG_LEVELS).default(DEFAULTS.log.level),
  }).prefault({}),
}).superRefine((cfg, ctx) => {
  // Rules between values: each names the key that has to change.
  if (cfg.heartbeat.pongTimeoutSeconds <= cfg.heartbeat.pingIntervalSeconds) {
    ctx.addIssue({
      code: 'custom',
      path: ['heartbeat', 'pongTimeoutSeconds'],
      message: `expected more than heartbeat.pingIntervalSeconds (${cfg.heartbeat.pingIntervalSeconds})`,
      input: cfg.heartbeat.pongTimeoutSeconds,
    });
  }
  const seen = new Map<string, number>();
  cfg.routes.forEach((route, i) => {
    const key = `${(route.host ?? '').toLowerCase()} ${route.path}`;
    const first = seen.get(key);
    if (first !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['routes', i, 'path'],
        message: `expected a path not already used by routes[${first}]${route.host ? ` for host ${route.host}` : ''}`,
        input: route.path,
      });
    } else {
      seen.set(key, i);
    }
  });
});

/**
 * What a config file or `createProxy()` accepts: every key optional except a route's
 * `path` and `upstreams`, and an upstream's `url`.
 */
export interface ProxyConfigInput {
  listen?: { host?: string; port?: number; tls?: { certFile: string; keyFile: string } };
  limits?: Partial<ProxyConfig['limits']>;
  heartbeat?: Partial<ProxyConfig['heartbeat']>;
  origins?: string[];
  routes?: RouteConfigInput[];
  protocol?: ProxyConfig['protocol'];
  drain?: Partial<ProxyConfig['drain']>;
  admin?: { host?: string; port?: number; token?: string };
  log?: Partial<ProxyConfig['log']>;
}

/** One route as written in a config: see {@link RouteConfig} for the meaning of each key. */
export interface RouteConfigInput {
  path: string;
  host?: string;
  mode?: RouteMode;
  balance?: BalanceStrategy;
  backpressure?: BackpressurePolicy;
  upstreams: Array<{ url: string; weight?: number }>;
  compression?: boolean;
  health?: Partial<RouteConfig['health']>;
  tls?: { caFile?: string; rejectUnauthorized?: boolean; servername?: string };
}

// Compile-time proof that the schema produces exactly ProxyConfig and accepts ProxyConfigInput.
type SchemaOutput = z.output<typeof proxyConfigSchema>;
type SchemaInput = z.input<typeof proxyConfigSchema>;
const outputIsProxyConfig = (c: SchemaOutput): ProxyConfig => c;
const proxyConfigIsOutput = (c: ProxyConfig): SchemaOutput => c;
const inputIsAccepted = (c: ProxyConfigInput): SchemaInput => c;
void outputIsProxyConfig; void proxyConfigIsOutput; void inputIsAccepted;
