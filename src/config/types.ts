/**
 * The resolved configuration: every default filled in, every value checked.
 * src/config/schema.ts produces it (zod) from a file, environment variables and defaults.
 */

export type BalanceStrategy = 'round_robin' | 'least_conn' | 'ip_hash' | `header:${string}`;
export type BackpressurePolicy = 'pause' | 'drop' | 'close';
export type RouteMode = 'transparent' | 'envelope' | 'agent';

export interface UpstreamConfig {
  /**
   * ws:// or wss:// URL; its path is the base the client's path maps onto. Through an
   * agent: `ws://<service><path>` (the Host header is the service name).
   */
  url: string;
  weight: number;
  /** Through a tunnel agent (issue #14): the agent's name and the service it exposes. */
  agent?: string;
  service?: string;
}

export interface HealthCheckConfig {
  /** Active check interval in ms; 0 disables active checks (passive only). */
  intervalMs: number;
  timeoutMs: number;
  /** How long a failed upstream is held out before it is tried again (passive health). */
  coolOffMs: number;
}

/** JWT algorithms sluice verifies: HMAC with a shared secret, RSA and P-256 ECDSA with public keys. */
export type JwtAlgorithm = 'HS256' | 'RS256' | 'ES256';

/** JWT checks of a route (`routes[].auth.jwt`). Exactly one of secret, publicKeyFile, jwksFile. */
export interface JwtAuthConfig {
  /** Shared HMAC secret (HS256). */
  secret?: string;
  /** PEM public key or certificate (SPKI/X.509), RSA (RS256) or P-256 (ES256). */
  publicKeyFile?: string;
  /** A JSON Web Key Set file; the token's `kid` picks the key. */
  jwksFile?: string;
  /** Accepted `alg` values; default HS256 with a secret, RS256 and ES256 with keys. */
  algorithms: JwtAlgorithm[];
  /** Required `iss`. */
  issuer?: string;
  /** Required `aud` (one of the token's audiences). */
  audience?: string;
  /** Skew allowed on exp and nbf, in seconds. */
  clockToleranceSeconds: number;
  /** Where the token is: `Authorization: Bearer`, a subprotocol entry, or a query parameter. */
  from: 'header' | 'protocol' | 'query';
  queryParam: string;
  /** A subprotocol entry `<prefix><token>` carries the token; it is not forwarded upstream. */
  protocolPrefix: string;
  /** Close the session with 1008 when the token expires. */
  closeOnExpiry: boolean;
}

/** API keys of a route (`routes[].auth.apiKeys`): only their SHA-256 digests are stored. */
export interface ApiKeyAuthConfig {
  /** Lower-case hex SHA-256 digests of the accepted keys. */
  sha256: string[];
  /**
   * Agent routes: the agent names a key may register, by digest (a key written as
   * `{ sha256, agents: [...] }`); a key written as a plain digest may register any name.
   */
  agents: Record<string, string[]>;
  from: 'header' | 'query';
  /** Header name (lower case). */
  header: string;
  queryParam: string;
}

/** Per-route access control: a client passes with a valid JWT or a valid API key (either, when both are configured). */
export interface RouteAuthConfig {
  jwt?: JwtAuthConfig;
  apiKeys?: ApiKeyAuthConfig;
  /** New connections per second per credentials' subject (the JWT's sub, the API key); 429 past it. Cluster-wide with `cluster`. */
  connectionRatePerSubject?: number;
}

export interface RouteConfig {
  /** Exact path, or a prefix ending in "/*". */
  path: string;
  /** Optional Host header match (exact, case-insensitive, port ignored). */
  host?: string;
  mode: RouteMode;
  balance: BalanceStrategy;
  backpressure: BackpressurePolicy;
  upstreams: UpstreamConfig[];
  /** permessage-deflate: the client's offer is passed to the upstream and compressed frames pass through. */
  compression: boolean;
  /**
   * Plain HTTP requests (not upgrades) matching this route are proxied as HTTP/1.1 to the
   * upstream the balancer picks (ws:// → http://, wss:// → https://); false: they get 426.
   */
  http: boolean;
  health: HealthCheckConfig;
  /** Upstream TLS for wss:// upstreams. */
  tls?: { caFile?: string; rejectUnauthorized: boolean; servername?: string };
  /** Credentials a client needs (401 before any upstream is dialled). */
  auth?: RouteAuthConfig;
  /** Sessions at most on this route (503 past it); 0 = no per-route limit. */
  maxConnections: number;
  /** Agent routes: a second agent with a connected agent's name replaces it, or is refused. */
  duplicate: 'replace' | 'refuse';
  /**
   * Envelope routes: sessions survive the client's network (docs/protocols.md "Resume"): when the
   * client's connection is lost the upstream is kept for `graceSeconds`, its messages held
   * up to `bufferBytes` (past it the upstream is held back), and a client that comes back
   * with its token gets what it missed. Absent: a lost client ends the session.
   */
  resume?: ResumeConfig;
}

/** `cluster`: what instances share through Redis. */
export interface ClusterConfig {
  redis: { url: string; keyPrefix: string };
  /** This instance's name in the cluster; default: host name and pid. */
  instanceId?: string;
  /** An instance that stops renewing its lease is gone after this long (its places are freed). */
  leaseSeconds: number;
  /** How the other instances reach this one (relays), e.g. ws://10.0.0.5:8080. */
  advertise?: string;
  /** Shared by every instance (at least 32 bytes): authenticates relays between them. */
  secret: string;
}

/** `routes[].resume`. */
export interface ResumeConfig {
  graceSeconds: number;
  /** Upstream messages the client has not acknowledged, kept for replay (payload bytes). */
  bufferBytes: number;
}

/** An L4 listener whose connections (TCP) or client addresses (UDP) go through an agent. */
export interface TunnelListenConfig {
  /** "host:port" on this machine. */
  listen: string;
  agent: string;
  service: string;
  protocol: 'tcp' | 'udp';
  /** UDP: a client address with no datagram either way for this long loses its stream. */
  udpIdleMs: number;
}

export interface ProxyConfig {
  listen: { host: string; port: number; tls?: { certFile: string; keyFile: string } };
  limits: {
    maxFrameBytes: number;
    maxConnections: number;
    /** Messages queued per direction (AGENT_WS_CHANNEL_CAPACITY). */
    channelCapacity: number;
    /** Byte budget of one direction's queue. */
    channelBytes: number;
    /** Upstream connect + handshake must finish within this (else 504). */
    upstreamTimeoutMs: number;
    /** Unsent bytes on one side's socket above which the proxy stops reading the other side. */
    highWaterMark: number;
    /** New connections per second per client IP (token bucket; 429 past it); 0 = off. */
    connectionRatePerIp: number;
    /** Bucket size of the per-IP connection rate; 0 = one second's worth. */
    connectionBurstPerIp: number;
    /** Client messages per second per connection (1008 past it); 0 = off. */
    messagesPerSecond: number;
    /** Client bytes per second per connection (1008 past it); 0 = off. */
    bytesPerSecond: number;
    /** A client's upgrade request must be complete and answered within this (else the socket is closed). */
    handshakeTimeoutMs: number;
    /** Largest upgrade request head (request line + headers), in bytes. */
    maxHeaderBytes: number;
    /** Most header lines in an upgrade request. */
    maxHeaderCount: number;
  };
  heartbeat: { pingIntervalSeconds: number; pongTimeoutSeconds: number };
  /** Empty or ["*"]: all origins; else exact "scheme://host[:port]". */
  origins: string[];
  routes: RouteConfig[];
  /** L4 listeners through agents (issue #14). */
  tunnels: TunnelListenConfig[];
  /** Envelope protocol version allowed on envelope routes (PIPEOPS_WS_PROTOCOL). */
  protocol: 'v1' | 'v2';
  drain: { timeoutMs: number };
  /**
   * Shards: worker threads each running the proxy on the same port (SO_REUSEPORT); 0 = one
   * per core. `createProxy()` ignores it (in-process); `createShardedProxy()` and the CLI use it.
   */
  workers: number;
  /**
   * The admin server. `token` is the token named "admin"; `tokens` adds named ones. With
   * any token set, every request but the dashboard page itself needs one of them, and
   * each session action is logged with the name of the token that asked for it.
   */
  admin?: { host: string; port: number; token?: string; tokens?: Array<{ name: string; token: string }> };
  /** Several instances as one proxy, through Redis (docs/operations.md "Scaling out"); absent: one instance. */
  cluster?: ClusterConfig;
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent' };
}
