/**
 * The resolved configuration: every default filled in, every value checked.
 * src/config/schema.ts produces it (zod) from a file, environment variables and defaults.
 */

export type BalanceStrategy = 'round_robin' | 'least_conn' | 'ip_hash' | `header:${string}`;
export type BackpressurePolicy = 'drop' | 'close';
export type RouteMode = 'transparent' | 'envelope';

export interface UpstreamConfig {
  /** ws:// or wss:// URL; its path is the base the client's path maps onto. */
  url: string;
  weight: number;
}

export interface HealthCheckConfig {
  /** Active check interval in ms; 0 disables active checks (passive only). */
  intervalMs: number;
  timeoutMs: number;
  /** How long a failed upstream is held out before it is tried again (passive health). */
  coolOffMs: number;
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
  /** permessage-deflate towards clients (uWS does the work). */
  compression: boolean;
  health: HealthCheckConfig;
  /** Upstream TLS for wss:// upstreams. */
  tls?: { caFile?: string; rejectUnauthorized: boolean; servername?: string };
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
    /** uWS buffered amount above which the upstream socket is paused. */
    highWaterMark: number;
  };
  heartbeat: { pingIntervalSeconds: number; pongTimeoutSeconds: number };
  /** Empty or ["*"]: all origins; else exact "scheme://host[:port]". */
  origins: string[];
  routes: RouteConfig[];
  /** Envelope protocol version allowed on envelope routes (PIPEOPS_WS_PROTOCOL). */
  protocol: 'v1' | 'v2';
  drain: { timeoutMs: number };
  admin?: { host: string; port: number; token?: string };
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent' };
}
