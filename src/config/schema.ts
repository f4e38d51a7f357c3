/**
 * The zod schema of a sluice config file and the rules a value must meet.
 *
 * Every message a rule produces reads "expected …"; the formatter in load.ts puts the key
 * path in front and ", got <value>" after it, so every problem reads the same way:
 * `routes[0].upstreams[0].url: expected a ws:// or wss:// URL, got "http:/x"`.
 */
import { z } from 'zod';
import type {
  ApiKeyAuthConfig, BackpressurePolicy, BalanceStrategy, JwtAlgorithm, JwtAuthConfig, ProxyConfig, ResumeConfig, RouteConfig, RouteMode,
  UpstreamConfig,
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
    /**
     * Per-IP connection rate: off. Behind a load balancer or a NAT every client shares one
     * address, so any default rate would refuse legitimate clients; a limit is a decision
     * about the deployment, not something a proxy can guess.
     */
    connectionRatePerIp: 0,
    connectionBurstPerIp: 0,
    /** Per-connection message and byte rates: off (the application's traffic shape is unknown; maxFrameBytes and backpressure already bound memory). */
    messagesPerSecond: 0,
    bytesPerSecond: 0,
    handshakeTimeoutMs: 10_000,
    /** 16 KiB and 100 lines: what common servers accept for a request head, and far above what a browser's upgrade needs. */
    maxHeaderBytes: 16_384,
    maxHeaderCount: 100,
  },
  heartbeat: { pingIntervalSeconds: 30, pongTimeoutSeconds: 90 },
  drain: { timeoutMs: 10_000 },
  /**
   * Shards (worker threads). 1: these machines have 2 cores shared with the load generator
   * and the backend, and a library embedding sluice should not get threads it did not ask
   * for; 0 asks for one per core.
   */
  workers: 1,
  route: {
    mode: 'transparent' as RouteMode,
    balance: 'round_robin' as BalanceStrategy,
    // A proxy that silently loses messages is worse than one that says so (DESIGN "Backpressure").
    backpressure: 'pause' as BackpressurePolicy,
    compression: false,
    /** Plain HTTP requests on a route get 426 unless the route asks for them to be proxied. */
    http: false,
    health: { intervalMs: 0, timeoutMs: 2000, coolOffMs: 5000 },
    upstreamWeight: 1,
    /** 0: no per-route limit (limits.maxConnections still applies). */
    maxConnections: 0,
    /** A reconnecting agent is usually the same agent: it takes its name over. */
    duplicate: 'replace' as const,
    /** The issue's example: 30 s covers a Wi-Fi handover or a mobile network change; 1 MiB per parked session. */
    resume: { graceSeconds: 30, bufferBytes: 1_048_576 },
  },
  tunnel: { udpIdleMs: 60_000 },
  cluster: { keyPrefix: 'sluice:', leaseSeconds: 10 },
  auth: {
    jwt: {
      clockToleranceSeconds: 30,
      from: 'header' as const,
      queryParam: 'access_token',
      protocolPrefix: 'bearer.',
      closeOnExpiry: true,
    },
    apiKeys: { from: 'header' as const, header: 'x-api-key', queryParam: 'api_key' },
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
/** More shards than this is a typo, not a machine (each is a thread with its own listener and sessions). */
const MAX_WORKERS = 1024;
const WORKERS = `expected an integer 0..${MAX_WORKERS} (0 = one per core)`;

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
/** An admin token: what a Bearer header can carry (visible ASCII, no spaces). */
function adminToken() {
  const what = 'expected a token of visible ASCII characters (no spaces)';
  return z.string({ error: what }).regex(/^[\x21-\x7e]+$/, { error: what });
}

function section<S extends z.core.$ZodLooseShape>(shape: S) {
  return z.strictObject(shape, { error: 'expected a mapping of settings' });
}

// ---- the schema -----------------------------------------------------------------------------

/** RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits). */
const MIN_HS256_SECRET_BYTES = 32;
const JWT_ALGORITHMS = ['HS256', 'RS256', 'ES256'] as const;
const JWT_KEY_SOURCES = ['secret', 'publicKeyFile', 'jwksFile'] as const;
const SHA256_EXPECTED = 'expected a SHA-256 digest (64 hex digits)';
const HEADER_NAME_EXPECTED = 'expected an HTTP header name';
const PROTOCOL_PREFIX_EXPECTED = 'expected subprotocol token characters (letters, digits, !#$%&\'*+.^_`|~-)';

const jwtSchema = section({
  // Its length is checked below, where the problem can be reported without echoing the secret.
  secret: z.string({ error: `expected a string of at least ${MIN_HS256_SECRET_BYTES} bytes` }).optional(),
  publicKeyFile: nonEmptyString('a file path').optional(),
  jwksFile: nonEmptyString('a file path').optional(),
  algorithms: z.array(oneOf(JWT_ALGORITHMS), { error: `expected a list of ${JWT_ALGORITHMS.join('|')}` })
    .min(1, { error: 'expected at least one algorithm' }).optional(),
  issuer: nonEmptyString().optional(),
  audience: nonEmptyString().optional(),
  clockToleranceSeconds: nonNegativeInt().default(DEFAULTS.auth.jwt.clockToleranceSeconds),
  from: oneOf(['header', 'protocol', 'query']).default(DEFAULTS.auth.jwt.from),
  queryParam: nonEmptyString('a query parameter name').default(DEFAULTS.auth.jwt.queryParam),
  protocolPrefix: z.string({ error: PROTOCOL_PREFIX_EXPECTED }).regex(HEADER_TOKEN, { error: PROTOCOL_PREFIX_EXPECTED })
    .default(DEFAULTS.auth.jwt.protocolPrefix),
  closeOnExpiry: bool().default(DEFAULTS.auth.jwt.closeOnExpiry),
}).superRefine((jwt, ctx) => {
  // Problems here name keys and sizes, never the secret itself (config errors end up in logs).
  const sources = JWT_KEY_SOURCES.filter((k) => jwt[k] !== undefined);
  if (sources.length !== 1) {
    ctx.addIssue({ code: 'custom', path: [], message: `expected exactly one of ${JWT_KEY_SOURCES.join(', ')}`, input: sources });
    return;
  }
  if (jwt.secret !== undefined && Buffer.byteLength(jwt.secret) < MIN_HS256_SECRET_BYTES) {
    ctx.addIssue({
      code: 'custom',
      path: ['secret'],
      message: `expected at least ${MIN_HS256_SECRET_BYTES} bytes (RFC 7518 §3.2; the value is not shown)`,
      input: `${Buffer.byteLength(jwt.secret)} bytes`,
    });
  }
  const hmac = jwt.secret !== undefined;
  const wrong = (jwt.algorithms ?? []).filter((a) => (a === 'HS256') !== hmac);
  if (wrong.length > 0) {
    ctx.addIssue({
      code: 'custom',
      path: ['algorithms'],
      message: hmac ? 'expected only HS256 with a secret' : 'expected only RS256 or ES256 with a public key or JWKS',
      input: jwt.algorithms,
    });
  }
}).transform((jwt) => ({
  ...jwt,
  // Default algorithms follow the key source, so a secret never verifies an RS256 token and
  // a public key is never used as an HMAC secret (the classic algorithm-confusion attack).
  algorithms: jwt.algorithms ?? (jwt.secret !== undefined ? ['HS256'] : ['RS256', 'ES256']) as JwtAlgorithm[],
}));

const digestSchema = z.string({ error: SHA256_EXPECTED }).regex(/^[0-9a-fA-F]{64}$/, { error: SHA256_EXPECTED })
  .transform((v) => v.toLowerCase());
const NAME_EXPECTED = 'expected a name: letters, digits, ".", "_", "-" (at most 63, starting with a letter or digit)';
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
function nameSchema() {
  return z.string({ error: NAME_EXPECTED }).regex(NAME, { error: NAME_EXPECTED });
}

const apiKeysSchema = section({
  // A digest, or `{ sha256, agents }`: a key that may register only those agent names.
  sha256: z.array(
    z.union([digestSchema, section({ sha256: digestSchema, agents: z.array(nameSchema(), { error: 'expected a list of agent names' }) })],
      { error: 'expected a SHA-256 digest (64 hex digits) or { sha256, agents: [names] }' }),
    { error: 'expected a list of SHA-256 digests' },
  ).min(1, { error: 'expected at least one key digest' }),
  from: oneOf(['header', 'query']).default(DEFAULTS.auth.apiKeys.from),
  header: z.string({ error: HEADER_NAME_EXPECTED }).regex(HEADER_TOKEN, { error: HEADER_NAME_EXPECTED })
    .default(DEFAULTS.auth.apiKeys.header).transform((v) => v.toLowerCase()),
  queryParam: nonEmptyString('a query parameter name').default(DEFAULTS.auth.apiKeys.queryParam),
  // The resolved form of the `{ sha256, agents }` entries (a resolved config parses again as itself).
  agents: z.record(z.string(), z.array(nameSchema()), { error: 'expected a mapping of digest: [agent names]' }).optional(),
}).transform((k) => {
  const agents: Record<string, string[]> = { ...(k.agents ?? {}) };
  const sha256 = k.sha256.map((e) => {
    if (typeof e === 'string') return e;
    agents[e.sha256] = e.agents;
    return e.sha256;
  });
  return { ...k, sha256, agents };
});

const authSchema = section({
  jwt: jwtSchema.optional(),
  apiKeys: apiKeysSchema.optional(),
  connectionRatePerSubject: positiveInt().optional(),
}).refine((a) => a.jwt !== undefined || a.apiKeys !== undefined, { error: 'expected jwt, apiKeys or both' });

const AGENT_PATH_EXPECTED = 'expected a path starting with "/"';
const upstreamSchema = section({
  url: z.string({ error: UPSTREAM_URL_EXPECTED }).refine(isUpstreamUrl, { error: UPSTREAM_URL_EXPECTED }).optional(),
  // Through a tunnel agent: { agent, service, path } instead of a URL.
  agent: nameSchema().optional(),
  service: nameSchema().optional(),
  path: z.string({ error: AGENT_PATH_EXPECTED }).regex(/^\/[^\s#]*$/, { error: AGENT_PATH_EXPECTED }).optional(),
  weight: positiveInt().default(DEFAULTS.route.upstreamWeight),
}).superRefine((u, ctx) => {
  if (u.agent === undefined && u.service === undefined) {
    if (u.url === undefined) ctx.addIssue({ code: 'custom', path: ['url'], message: `${UPSTREAM_URL_EXPECTED} (or agent and service)`, input: undefined });
    if (u.path !== undefined) ctx.addIssue({ code: 'custom', path: ['path'], message: 'expected only with agent and service (a URL carries its own path)', input: u.path });
    return;
  }
  if (u.agent === undefined) ctx.addIssue({ code: 'custom', path: ['agent'], message: 'expected the agent that exposes the service', input: undefined });
  if (u.service === undefined) ctx.addIssue({ code: 'custom', path: ['service'], message: 'expected the service the agent exposes', input: undefined });
}).transform((u): UpstreamConfig => {
  if (u.agent === undefined || u.service === undefined) return { url: u.url!, weight: u.weight };
  // The resolved form keeps the path in a URL (a resolved config parses again as itself).
  const path = u.path ?? (u.url !== undefined ? new URL(u.url).pathname + new URL(u.url).search : '/');
  return { url: `ws://${u.service}${path}`, weight: u.weight, agent: u.agent, service: u.service };
});

const healthSchema = section({
  intervalMs: nonNegativeInt().default(DEFAULTS.route.health.intervalMs),
  timeoutMs: positiveInt().default(DEFAULTS.route.health.timeoutMs),
  coolOffMs: nonNegativeInt().default(DEFAULTS.route.health.coolOffMs),
});

const routeSchema = section({
  path: z.string({ error: PATH_EXPECTED }).refine(isRoutePath, { error: PATH_EXPECTED }),
  host: nonEmptyString('a host name').optional(),
  mode: oneOf(['transparent', 'envelope', 'agent']).default(DEFAULTS.route.mode),
  balance: z.string({ error: BALANCE_EXPECTED })
    .refine(isBalance, { error: BALANCE_EXPECTED })
    .default(DEFAULTS.route.balance)
    .transform((v) => v as BalanceStrategy),
  backpressure: oneOf(['pause', 'close', 'drop']).default(DEFAULTS.route.backpressure),
  // At least one, except on agent routes (checked below, where the mode is known).
  upstreams: z.array(upstreamSchema, { error: 'expected a list of upstreams' }).default([]),
  compression: bool().default(DEFAULTS.route.compression),
  http: bool().default(DEFAULTS.route.http),
  health: healthSchema.prefault({}),
  tls: section({
    caFile: nonEmptyString('a file path').optional(),
    rejectUnauthorized: bool().default(true),
    servername: nonEmptyString('a server name').optional(),
  }).optional(),
  auth: authSchema.optional(),
  maxConnections: nonNegativeInt().default(DEFAULTS.route.maxConnections),
  duplicate: oneOf(['replace', 'refuse']).default(DEFAULTS.route.duplicate),
  resume: section({
    graceSeconds: positiveInt().default(DEFAULTS.route.resume.graceSeconds),
    bufferBytes: positiveInt().default(DEFAULTS.route.resume.bufferBytes),
  }).optional(),
});

const LISTEN_EXPECTED = 'expected host:port (an IPv6 host in brackets)';
const tunnelSchema = section({
  listen: z.string({ error: LISTEN_EXPECTED }).regex(/^(?:\[[^\]]+\]|[^:[\]\s]+):\d{1,5}$/, { error: LISTEN_EXPECTED, abort: true })
    .refine((v) => Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535, { error: LISTEN_EXPECTED }),
  agent: nameSchema(),
  service: nameSchema(),
  protocol: oneOf(['tcp', 'udp']).default('tcp'),
  udpIdleMs: positiveInt().default(DEFAULTS.tunnel.udpIdleMs),
});

const REDIS_URL_EXPECTED = 'expected a redis:// or rediss:// URL (a password may be in it)';
const LEASE_EXPECTED = 'expected a whole number of seconds from 2 to 3600';
const ADVERTISE_EXPECTED = 'expected ws://host:port or wss://host:port (how other instances reach this one)';
const SECRET_EXPECTED = 'expected a secret of at least 32 bytes, the same on every instance';

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
    connectionRatePerIp: nonNegativeInt().default(DEFAULTS.limits.connectionRatePerIp),
    connectionBurstPerIp: nonNegativeInt().default(DEFAULTS.limits.connectionBurstPerIp),
    messagesPerSecond: nonNegativeInt().default(DEFAULTS.limits.messagesPerSecond),
    bytesPerSecond: nonNegativeInt().default(DEFAULTS.limits.bytesPerSecond),
    handshakeTimeoutMs: positiveInt().default(DEFAULTS.limits.handshakeTimeoutMs),
    maxHeaderBytes: positiveInt().default(DEFAULTS.limits.maxHeaderBytes),
    maxHeaderCount: positiveInt().default(DEFAULTS.limits.maxHeaderCount),
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
  tunnels: z.array(tunnelSchema, { error: 'expected a list of tunnels' }).default([]),
  protocol: oneOf(PROTOCOLS).default(DEFAULTS.protocol),
  drain: section({
    timeoutMs: nonNegativeInt().default(DEFAULTS.drain.timeoutMs),
  }).prefault({}),
  workers: z.number({ error: WORKERS }).int({ error: WORKERS }).min(0, { error: WORKERS }).max(MAX_WORKERS, { error: WORKERS })
    .default(DEFAULTS.workers),
  admin: section({
    host: nonEmptyString('a host name or IP address').default(DEFAULTS.admin.host),
    port: port().default(DEFAULTS.admin.port),
    token: adminToken().optional(),
    tokens: z.array(section({
      name: z.string({ error: NAME_EXPECTED }).regex(NAME, { error: NAME_EXPECTED }),
      token: adminToken(),
    }), { error: 'expected a list of { name, token }' }).min(1, { error: 'expected at least one { name, token } (leave tokens out for none)' }).optional()
      .refine((list) => list === undefined || new Set(list.map((t) => t.name)).size === list.length, { error: 'expected each token name once' }),
  }).superRefine((a, ctx) => {
    const i = a.token === undefined ? -1 : (a.tokens ?? []).findIndex((t) => t.name === 'admin');
    if (i >= 0) ctx.addIssue({ code: 'custom', path: ['tokens', i, 'name'], message: 'expected another name: "admin" is admin.token\'s', input: 'admin' });
  }).optional(),
  log: section({
    level: oneOf(LOG_LEVELS).default(DEFAULTS.log.level),
  }).prefault({}),
  cluster: section({
    redis: section({
      url: z.string({ error: REDIS_URL_EXPECTED }).regex(/^rediss?:\/\/[^\s]+$/, { error: REDIS_URL_EXPECTED }),
      keyPrefix: nonEmptyString('a key prefix').default(DEFAULTS.cluster.keyPrefix),
    }),
    instanceId: z.string({ error: NAME_EXPECTED }).regex(NAME, { error: NAME_EXPECTED }).optional(),
    leaseSeconds: z.number({ error: LEASE_EXPECTED }).int({ error: LEASE_EXPECTED }).min(2, { error: LEASE_EXPECTED }).max(3600, { error: LEASE_EXPECTED })
      .default(DEFAULTS.cluster.leaseSeconds),
    advertise: z.string({ error: ADVERTISE_EXPECTED }).regex(/^wss?:\/\/[^\s/]+\/?$/, { error: ADVERTISE_EXPECTED }).optional(),
    secret: z.string({ error: SECRET_EXPECTED }).refine((v) => Buffer.byteLength(v) >= 32, { error: SECRET_EXPECTED }),
  }).optional(),
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
    if (route.mode === 'agent') {
      if (route.upstreams.length > 0) {
        ctx.addIssue({ code: 'custom', path: ['routes', i, 'upstreams'], message: 'expected none on an agent route (agents connect to it)', input: route.upstreams.length });
      }
      if (route.auth === undefined) {
        ctx.addIssue({ code: 'custom', path: ['routes', i, 'auth'], message: 'expected jwt or apiKeys on an agent route (agents must authenticate)', input: undefined });
      }
      if (route.http) {
        ctx.addIssue({ code: 'custom', path: ['routes', i, 'http'], message: 'expected false on an agent route', input: route.http });
      }
    } else if (route.upstreams.length === 0) {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'upstreams'], message: 'expected at least one upstream', input: [] });
    }
    if (route.resume !== undefined && route.mode !== 'envelope') {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'resume'], message: 'expected only on a route with mode: envelope (resume numbers envelope data frames)', input: route.resume });
    } else if (route.resume !== undefined && route.backpressure !== 'pause') {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'backpressure'], message: 'expected pause on a route with resume (close and drop lose messages, which resume promises not to)', input: route.backpressure });
    }
    if (route.upstreams.some((u) => u.agent !== undefined) && !cfg.routes.some((r) => r.mode === 'agent')) {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'upstreams'], message: 'expected a route with mode: agent for the agents to connect to', input: route.upstreams.length });
    }
    // The built-in echo is a WebSocket endpoint only: there is nothing to proxy HTTP to.
    if (route.http && route.upstreams.some((u) => u.url === BUILTIN_ECHO_URL)) {
      ctx.addIssue({
        code: 'custom',
        path: ['routes', i, 'http'],
        message: `expected false on a route with a ${BUILTIN_ECHO_URL} upstream (the built-in echo has no HTTP side)`,
        input: route.http,
      });
    }
  });
  // Upstreams through agents need an agent route (above), so this covers them too.
  const agentRoutes = cfg.routes.some((r) => r.mode === 'agent');
  if ((agentRoutes || cfg.tunnels.length > 0) && cfg.workers !== 1) {
    ctx.addIssue({
      code: 'custom', path: ['workers'],
      message: 'expected 1 with agent routes or tunnels (an agent is connected to one shard, and its tunnels must be there)',
      input: cfg.workers,
    });
  }
  if (cfg.cluster !== undefined && cfg.workers !== 1) {
    ctx.addIssue({
      code: 'custom', path: ['workers'],
      message: 'expected 1 with cluster (each instance is one process; run more instances for more cores)',
      input: cfg.workers,
    });
  }
  if (cfg.tunnels.length > 0 && !agentRoutes) {
    ctx.addIssue({ code: 'custom', path: ['tunnels'], message: 'expected a route with mode: agent for the agents to connect to', input: cfg.tunnels.length });
  }
  const listens = new Map<string, number>();
  cfg.tunnels.forEach((tn, i) => {
    const key = `${tn.protocol} ${tn.listen}`;
    const first = listens.get(key);
    if (first !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['tunnels', i, 'listen'], message: `expected an address not already used by tunnels[${first}]`, input: tn.listen });
    } else {
      listens.set(key, i);
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
  tunnels?: Array<{ listen: string; agent: string; service: string; protocol?: 'tcp' | 'udp'; udpIdleMs?: number }>;
  protocol?: ProxyConfig['protocol'];
  drain?: Partial<ProxyConfig['drain']>;
  workers?: number;
  admin?: { host?: string; port?: number; token?: string; tokens?: Array<{ name: string; token: string }> };
  cluster?: { redis: { url: string; keyPrefix?: string }; instanceId?: string; leaseSeconds?: number; advertise?: string; secret: string };
  log?: Partial<ProxyConfig['log']>;
}

/** One route as written in a config: see {@link RouteConfig} for the meaning of each key. */
export interface RouteConfigInput {
  path: string;
  host?: string;
  mode?: RouteMode;
  balance?: BalanceStrategy;
  backpressure?: BackpressurePolicy;
  /** Required, except on agent routes (which have none). */
  upstreams?: Array<{ url: string; weight?: number } | { agent: string; service: string; path?: string; weight?: number }>;
  compression?: boolean;
  http?: boolean;
  health?: Partial<RouteConfig['health']>;
  tls?: { caFile?: string; rejectUnauthorized?: boolean; servername?: string };
  auth?: RouteAuthInput;
  maxConnections?: number;
  duplicate?: 'replace' | 'refuse';
  resume?: Partial<ResumeConfig>;
}

/** `routes[].auth` as written in a config: see `RouteAuthConfig` in types.ts. */
export interface RouteAuthInput {
  connectionRatePerSubject?: number;
  jwt?: Partial<JwtAuthConfig>;
  apiKeys?: Partial<Omit<ApiKeyAuthConfig, 'sha256' | 'agents'>> & { sha256: Array<string | { sha256: string; agents: string[] }> };
}

// Compile-time proof that the schema produces exactly ProxyConfig and accepts ProxyConfigInput.
type SchemaOutput = z.output<typeof proxyConfigSchema>;
type SchemaInput = z.input<typeof proxyConfigSchema>;
const outputIsProxyConfig = (c: SchemaOutput): ProxyConfig => c;
const proxyConfigIsOutput = (c: ProxyConfig): SchemaOutput => c;
const inputIsAccepted = (c: ProxyConfigInput): SchemaInput => c;
void outputIsProxyConfig; void proxyConfigIsOutput; void inputIsAccepted;
