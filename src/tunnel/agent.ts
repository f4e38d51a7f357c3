/**
 * The tunnel agent (issue #14): it runs inside a network nobody can dial into, dials out to
 * a sluice gateway over one WebSocket, and serves the streams the gateway opens through it
 * by dialling the services it exposes (a name maps to host:port). It dials nothing else,
 * whatever the gateway asks. Heartbeats (a ping every 30 s, a gateway silent for 90 s is
 * given up) and reconnects with full-jitter backoff, as the client SDK does.
 */
import dgram from 'node:dgram';
import dns from 'node:dns';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { Backoff } from '../client/backoff.js';
import { createLogger, type Logger } from '../log.js';
import { dial as dialUpgrade, type UpstreamError } from '../proxy/handshake.js';
import { joinSocket, linkOverWebSocket, LiveEntry, MESSAGE_BYTES, type Link, type LinkOptions, type TunnelStream } from './link.js';
import { linkOverSocket, nativeLinkAvailable, type NativeLink } from './native-link.js';
import {
  DatagramReader, NAME_PATTERN, TUNNEL_SUBPROTOCOL, datagram, errorLine, helloAck, okLine, parseControl, parseHostPort, parseOpen,
  readLine,
} from './wire.js';

export interface ServiceTarget {
  host: string;
  port: number;
}

export interface AgentOptions {
  /** The gateway's agent endpoint, ws:// or wss://. */
  server: string;
  /** Sent as `Authorization: Bearer <token>`: a JWT or an API key the gateway accepts. */
  token: string;
  /** The name this agent registers under. */
  name: string;
  /** Services by name: `{ db: '127.0.0.1:5432' }` or `{ db: { host, port } }`. */
  expose: Record<string, string | ServiceTarget>;
  /** Ping interval (default 30 s). */
  pingIntervalMs?: number;
  /** A gateway silent this long is given up and dialled again (default 90 s). */
  silenceTimeoutMs?: number;
  /** Reconnect backoff (full jitter): first ceiling and largest delay (default 500 ms, 30 s). */
  backoff?: { initialDelayMs?: number; maxDelayMs?: number };
  /** A service must accept within this (default 10 s). */
  dialTimeoutMs?: number;
  /** UDP: a stream with no datagram either way for this long is closed (default 60 s). */
  udpIdleMs?: number;
  /** wss:// gateways: a CA file to trust, and whether to check the certificate (default true). */
  tls?: { caFile?: string; rejectUnauthorized?: boolean };
  logger?: Logger;
}

export interface AgentStats {
  connected: boolean;
  name: string;
  services: string[];
  connects: number;
  streamsOpen: number;
  streamsTotal: number;
  streamsRefused: number;
  bytesIn: number;
  bytesOut: number;
}

/** A service's "host:port" (IPv6 as "[::1]:5432"); throws with the reason. */
export function parseTarget(value: string): ServiceTarget {
  return parseHostPort(value);
}

/**
 * Connects an agent; it keeps itself connected until `close()`. Events: `connected` (the
 * gateway took the hello), `disconnected` (with the reason), `refused` (the gateway
 * answered the upgrade with an HTTP status: `{ status, body }`).
 */
export function connectAgent(options: AgentOptions): Agent {
  return new Agent(options);
}

export class Agent extends EventEmitter {
  readonly name: string;
  private readonly options: AgentOptions;
  private readonly services = new Map<string, ServiceTarget>();
  private readonly logger: Logger;
  private readonly backoff: Backoff;
  private ws: import('ws').WebSocket | null = null;
  private link: Link | null = null;
  private closed = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private pingTimer: NodeJS.Timeout | null = null;
  /** The current connection ended (its link's onEnd, or ws's close). */
  private linkGone: (() => void) | null = null;
  private closing: Promise<void> | null = null;
  private readonly open = new Set<{ close(): void }>();
  private readonly counters = { connects: 0, streamsTotal: 0, streamsRefused: 0, bytesIn: 0, bytesOut: 0 };
  private isConnected = false;

  constructor(options: AgentOptions) {
    super();
    if (!NAME_PATTERN.test(options.name)) throw new TypeError(`agent name "${options.name}": expected [A-Za-z0-9][A-Za-z0-9._-]{0,62}`);
    if (!/^wss?:\/\//i.test(options.server)) throw new TypeError(`agent server "${options.server}": expected a ws:// or wss:// URL`);
    for (const [name, target] of Object.entries(options.expose)) {
      if (!NAME_PATTERN.test(name)) throw new TypeError(`service name "${name}": expected [A-Za-z0-9][A-Za-z0-9._-]{0,62}`);
      this.services.set(name, typeof target === 'string' ? parseTarget(target) : target);
    }
    for (const [name, t] of this.services) {
      if (!Number.isInteger(t.port) || t.port < 1 || t.port > 65535) throw new TypeError(`service "${name}": port ${t.port}: expected 1..65535`);
    }
    const whole = (v: number | undefined, what: string, max: number) => {
      if (v !== undefined && (!Number.isInteger(v) || v < 1 || v > max)) throw new TypeError(`${what}: expected a whole number of ms, 1..${max}, got ${v}`);
    };
    whole(options.dialTimeoutMs, 'dialTimeoutMs', 86_400_000);
    whole(options.udpIdleMs, 'udpIdleMs', 86_400_000);
    this.name = options.name;
    this.options = options;
    this.logger = options.logger ?? createLogger('silent');
    this.backoff = new Backoff(options.backoff?.initialDelayMs ?? 500, options.backoff?.maxDelayMs ?? 30_000);
    this.on('error', () => {}); // failures are logged and retried, never thrown at the caller
    void this.dial();
  }

  get connected(): boolean {
    return this.isConnected;
  }

  stats(): AgentStats {
    return {
      connected: this.isConnected, name: this.name, services: [...this.services.keys()],
      connects: this.counters.connects, streamsOpen: this.open.size, streamsTotal: this.counters.streamsTotal,
      streamsRefused: this.counters.streamsRefused,
      bytesIn: this.counters.bytesIn + (this.link?.bytes.in ?? 0),
      bytesOut: this.counters.bytesOut + (this.link?.bytes.out ?? 0),
    };
  }

  /** Stop: no more reconnects; the WebSocket closes with 1001 and every stream ends. */
  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  private async shutDown(): Promise<void> {
    this.closed = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const link = this.link;
    const ws = this.ws;
    if (link !== null && !link.session.isClosed) {
      const gone = new Promise<void>((resolve) => { this.linkGone = resolve; });
      link.close(1001, 'agent shutting down');
      const timer = setTimeout(() => link.terminate(), 2000);
      await gone;
      clearTimeout(timer);
    } else if (ws !== null && ws.readyState !== ws.CLOSED) {
      ws.terminate();
    }
    this.teardown();
  }

  // ---------------------------------------------------------------- the connection

  private async dial(): Promise<void> {
    if (this.closed) return;
    const o = this.options;
    let helloSeen = false;
    const linkOptions: LinkOptions = {
      client: false,
      onStream: (s) => this.onStream(s),
      onControl: (text) => {
        const msg = parseControl(text);
        if (msg?.type !== 'gateway_hello' || helloSeen || this.link === null) return; // unknown control messages are ignored
        helloSeen = true;
        if (msg.version !== 1 || msg.use_yamux !== true) {
          this.link.close(1002, 'unsupported gateway hello');
          return;
        }
        this.link.sendControl(helloAck(this.name, [...this.services.keys()]));
        this.isConnected = true;
        this.counters.connects++;
        this.logger.info({ event: 'agent_connected', server: o.server, name: this.name, native: this.link.native }, 'agent connected');
        this.emit('connected');
      },
    };
    const ended = (code: number, reason: string) => {
      const was = this.isConnected;
      this.teardown();
      if (was) {
        this.logger.warn({ event: 'agent_disconnected', code, reason }, 'agent disconnected');
        this.emit('disconnected', { code, reason });
        // It had been up: the next failure starts from the first delay again.
        if (helloSeen) this.backoff.reset();
      }
      const gone = this.linkGone;
      this.linkGone = null;
      gone?.();
      this.scheduleRetry();
    };
    const url = new URL(o.server);
    if (url.protocol === 'ws:' && nativeLinkAvailable()) {
      // The upgrade here, then the connection to the addon (the native link).
      let up: Awaited<ReturnType<typeof dialUpgrade>>;
      try {
        up = await dialUpgrade({
          url, target: `${url.pathname}${url.search}`, headers: [['Authorization', `Bearer ${o.token}`]],
          protocols: [TUNNEL_SUBPROTOCOL], timeoutMs: o.dialTimeoutMs ?? 10_000,
        });
      } catch (err) {
        const e = err as UpstreamError;
        if (e.code === 'SLUICE_ERR_UPSTREAM_REFUSED') {
          // The gateway's own status and body (what `ws` reports on the other path).
          const status = e.answer?.status ?? e.status;
          const body = (e.answer?.body ?? e.body)?.toString('utf8').trim() ?? '';
          this.logger.warn({ event: 'agent_refused', status, body }, 'the gateway refused the agent');
          this.emit('refused', { status, body });
        } else {
          this.logger.debug({ event: 'agent_socket_error', err: e.message }, 'agent connection error');
        }
        this.scheduleRetry();
        return;
      }
      if (this.closed || up.protocol !== TUNNEL_SUBPROTOCOL) {
        if (!this.closed) this.logger.warn({ event: 'agent_socket_error', err: `expected subprotocol ${TUNNEL_SUBPROTOCOL}` }, 'agent connection error');
        up.socket.destroy();
        this.scheduleRetry();
        return;
      }
      let link: NativeLink | null = null;
      try {
        link = linkOverSocket(up.socket as net.Socket, up.head, {
          ...linkOptions, wsClient: true, onEnd: ended,
          onStreamLine: (id, line) => this.onNativeStream(link!, id, line),
        });
      } catch (err) {
        this.logger.warn({ event: 'agent_socket_error', err: (err as Error).message }, 'agent connection error');
      }
      if (link === null) {
        up.socket.destroy();
        this.scheduleRetry();
        return;
      }
      this.link = link;
      this.startHeartbeat(link);
      return;
    }
    const { WebSocket } = await import('ws');
    if (this.closed) return;
    const ca = o.tls?.caFile !== undefined ? readFileSync(o.tls.caFile) : undefined;
    const ws = new WebSocket(o.server, [TUNNEL_SUBPROTOCOL], {
      headers: { authorization: `Bearer ${o.token}` },
      handshakeTimeout: o.dialTimeoutMs ?? 10_000,
      perMessageDeflate: false,
      maxPayload: 4 * MESSAGE_BYTES,
      ...(ca !== undefined ? { ca } : {}),
      rejectUnauthorized: o.tls?.rejectUnauthorized ?? true,
    });
    this.ws = ws;
    ws.on('unexpected-response', (_req, res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => {
        const body = Buffer.concat(parts).toString('utf8').trim();
        this.logger.warn({ event: 'agent_refused', status: res.statusCode, body }, 'the gateway refused the agent');
        this.emit('refused', { status: res.statusCode ?? 0, body });
      });
      res.on('error', () => {});
      ws.terminate();
    });
    ws.on('error', (err: Error) => {
      this.logger.debug({ event: 'agent_socket_error', err: err.message }, 'agent connection error');
    });
    ws.on('open', () => {
      if (ws.protocol !== TUNNEL_SUBPROTOCOL) {
        ws.close(1002, `expected subprotocol ${TUNNEL_SUBPROTOCOL}`);
        return;
      }
      this.link = linkOverWebSocket(ws, linkOptions);
      this.startHeartbeat(this.link);
    });
    ws.on('close', (code: number, reason: Buffer) => ended(code, reason.toString('utf8')));
  }

  private startHeartbeat(link: Link): void {
    const every = this.options.pingIntervalMs ?? 30_000;
    const silence = this.options.silenceTimeoutMs ?? 90_000;
    this.pingTimer = setInterval(() => {
      const idle = link.idleMs();
      if (idle > silence) {
        this.logger.warn({ event: 'agent_gateway_silent', ms: idle }, 'gateway silent: reconnecting');
        link.terminate();
        return;
      }
      link.ping();
    }, Math.min(every, Math.max(100, silence / 3)));
    this.pingTimer.unref();
  }

  private teardown(): void {
    this.isConnected = false;
    if (this.pingTimer !== null) clearInterval(this.pingTimer);
    this.pingTimer = null;
    if (this.link !== null) {
      this.counters.bytesIn += this.link.bytes.in;
      this.counters.bytesOut += this.link.bytes.out;
      this.link.session.destroy(new Error('the tunnel closed'));
      this.link = null;
    }
    for (const o of [...this.open]) o.close();
    this.open.clear();
    this.ws = null;
  }

  private scheduleRetry(): void {
    if (this.closed || this.retryTimer !== null) return;
    const delay = this.backoff.next();
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.dial();
    }, delay);
  }

  // ---------------------------------------------------------------- streams

  private onStream(stream: TunnelStream): void {
    this.counters.streamsTotal++;
    stream.on('error', () => {});
    readLine(stream, this.options.dialTimeoutMs ?? 10_000).then((line) => {
      const req = parseOpen(line);
      if (typeof req === 'string') return this.refuse(stream, req);
      const target = this.services.get(req.service);
      // Only what this agent exposes, whatever the gateway asks.
      if (target === undefined) return this.refuse(stream, `service "${req.service}" is not exposed by agent ${this.name}`);
      if (req.protocol === 'udp') this.serveUdp(stream, req.service, target);
      else this.serveTcp(stream, req.service, target);
    }, (err: Error) => this.refuse(stream, err.message));
  }

  /**
   * A stream the gateway opened on the native link, its open line read: a TCP service is
   * dialled in the addon and joined to the stream there; UDP is served here.
   */
  private onNativeStream(link: NativeLink, id: number, line: string): void {
    this.counters.streamsTotal++;
    const refuse = (error: string) => {
      this.counters.streamsRefused++;
      this.logger.info({ event: 'agent_stream_refused', error }, 'stream refused');
      link.refuseStream(id, errorLine(error));
    };
    const req = parseOpen(line);
    if (typeof req === 'string') return refuse(req);
    const target = this.services.get(req.service);
    // Only what this agent exposes, whatever the gateway asks.
    if (target === undefined) return refuse(`service "${req.service}" is not exposed by agent ${this.name}`);
    if (req.protocol === 'udp') {
      const stream = link.adoptStream(id);
      stream.on('error', () => {}); // a reset ends it (its 'close' cleans up)
      return this.serveUdp(stream, req.service, target);
    }
    const service = req.service;
    const dialTo = (ip: string) => {
      const entry = new LiveEntry(this.open, () => link.resetStream(id));
      const started = link.dialStream(id, ip, target.port, this.options.dialTimeoutMs ?? 10_000, okLine(),
        (why) => refuse(`${service}: ${why}`), entry.done);
      if (!started) {
        entry.done();
        refuse(`${service}: cannot dial ${ip}`);
      }
    };
    if (net.isIP(target.host) !== 0) dialTo(target.host);
    else dns.lookup(target.host, (err, address) => (err !== null ? refuse(`${service}: ${err.code ?? err.message}`) : dialTo(address)));
  }

  private refuse(stream: TunnelStream, error: string): void {
    this.counters.streamsRefused++;
    this.logger.info({ event: 'agent_stream_refused', error }, 'stream refused');
    if (!stream.destroyed && stream.writable) stream.end(errorLine(error));
    // Whatever else the gateway sends on it is read and dropped until it ends.
    stream.resume();
  }

  private serveTcp(stream: TunnelStream, service: string, target: ServiceTarget): void {
    const socket = net.connect({ host: target.host, port: target.port, noDelay: true, allowHalfOpen: true });
    const entry = new LiveEntry(this.open, () => { socket.destroy(); stream.destroy(); });
    let connected = false;
    const timer = setTimeout(() => socket.destroy(new Error(`${service}: no connection within the dial timeout`)),
      this.options.dialTimeoutMs ?? 10_000);
    const failed = (err: Error) => {
      clearTimeout(timer);
      entry.done();
      this.refuse(stream, `${service}: ${(err as NodeJS.ErrnoException).code ?? err.message}`);
    };
    socket.once('error', failed);
    stream.once('close', () => { if (!connected) socket.destroy(); });
    socket.once('connect', () => {
      clearTimeout(timer);
      connected = true;
      socket.off('error', failed);
      socket.on('error', () => {});
      stream.write(okLine());
      // Raw bytes both ways; an end on either side is a half-close of the other.
      entry.close = joinSocket(stream, socket, entry.done);
    });
  }

  private serveUdp(stream: TunnelStream, service: string, target: ServiceTarget): void {
    const socket = dgram.createSocket(net.isIPv6(target.host) ? 'udp6' : 'udp4');
    const idleMs = this.options.udpIdleMs ?? 60_000;
    let idle: NodeJS.Timeout | null = null;
    const entry = { close: () => { finish(); } };
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      if (idle !== null) clearTimeout(idle);
      this.open.delete(entry);
      try { socket.close(); } catch { /* already closed */ }
      if (!stream.destroyed) stream.end();
    };
    const touch = () => {
      if (idle !== null) clearTimeout(idle);
      idle = setTimeout(finish, idleMs);
      idle.unref();
    };
    this.open.add(entry);
    socket.on('error', (err) => {
      if (!done) this.logger.debug({ event: 'agent_udp_error', service, err: err.message }, 'udp error');
      finish();
    });
    socket.connect(target.port, target.host, () => {
      stream.write(okLine());
      touch();
      const reader = new DatagramReader();
      stream.on('data', (chunk: Buffer) => {
        touch();
        for (const d of reader.push(chunk)) socket.send(d);
      });
      socket.on('message', (msg: Buffer) => {
        touch();
        if (!stream.destroyed) stream.write(datagram(msg));
      });
      stream.on('end', finish);
      stream.on('close', finish);
    });
  }
}
