/**
 * The gateway's side of tunnels (issue #14): the agents connected to this proxy, each one
 * yamux session over its WebSocket (the gateway is the yamux client), and the streams
 * opened through them for L4 tunnels (TCP, UDP) and, later, routes.
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { WebSocketServer } from 'ws';
import type { Logger } from '../log.js';
import { joinSocket, linkOverWebSocket, MESSAGE_BYTES, type Link, type LinkOptions, type TunnelStream } from './link.js';
import { closeFd, linkOverSocket, nativeLinkAvailable, NativeLink } from './native-link.js';
import {
  TUNNEL_SUBPROTOCOL, checkHelloAck, gatewayHello, openLine, parseAnswer, parseControl, readLine, type TunnelProtocol,
} from './wire.js';
import { STREAM_OPEN_SECONDS_BUCKETS } from '../metrics/tunnel-metrics.js';

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** A close reason: at most 123 bytes of UTF-8, cut where a character starts. */
function closeReason(text: string): string {
  let out = text;
  while (Buffer.byteLength(out) > 123) out = out.slice(0, -1);
  // A lone high surrogate left at the end would not be UTF-8.
  if (/[\ud800-\udbff]$/.test(out)) out = out.slice(0, -1);
  return out;
}

export interface AgentRegistryOptions {
  logger: Logger;
  /** The agent must answer the hello within this (ms). */
  helloTimeoutMs: number;
  /** WebSocket ping interval and the silence after which an agent is dropped (ms). */
  pingIntervalMs: number;
  pongTimeoutMs: number;
  /** With a cluster: agent names are claimed cluster-wide, and streams to agents held elsewhere are relayed. */
  cluster?: AgentCluster;
}

/** What the registry asks of a cluster (src/cluster/). */
export interface AgentCluster {
  /** May agent `name` register here? null: yes (the name is ours now); else the refusal. */
  claim(name: string, duplicate: 'replace' | 'refuse'): Promise<string | null>;
  /** Agent `name` left this instance. */
  release(name: string): void;
  /** A stream to `service` through agent `name` on the instance that holds it (a TunnelError when none does). */
  openRemote(name: string, service: string, timeoutMs: number): Promise<net.Socket>;
}

/** Who may register which names: null = any name; else exactly these. */
export interface AgentGrant {
  principal: string;
  names: string[] | null;
  duplicate: 'replace' | 'refuse';
  remote: string;
}

export interface AgentInfo {
  name: string;
  services: string[];
  principal: string;
  remote: string;
  connectedAt: number;
  streamsOpen: number;
  streamsTotal: number;
  bytesIn: number;
  bytesOut: number;
}

/** A stream could not be opened: the agent is not connected, or it refused. */
export class TunnelError extends Error {
  constructor(readonly code: 'SLUICE_ERR_AGENT_OFFLINE' | 'SLUICE_ERR_AGENT_REFUSED' | 'SLUICE_ERR_AGENT_TIMEOUT', message: string) {
    super(message);
  }
}

interface Agent {
  name: string;
  services: string[];
  principal: string;
  remote: string;
  connectedAt: number;
  link: Link;
  streamsTotal: number;
}

export class AgentRegistry {
  private readonly options: AgentRegistryOptions;
  private readonly agents = new Map<string, Agent>();
  private readonly pending = new Set<Link>();
  private wss: WebSocketServer | null = null;
  private closed = false;
  private pinger: NodeJS.Timeout | null = null;
  /** Stream open times (SYN to the agent's answer), as histogram buckets in seconds. */
  private readonly openBuckets = new Float64Array(STREAM_OPEN_SECONDS_BUCKETS.length + 1);
  private openSum = 0;
  private openCount = 0;

  constructor(options: AgentRegistryOptions) {
    this.options = options;
  }

  /** Names of the agents connected now. */
  names(): string[] {
    return [...this.agents.keys()];
  }

  has(name: string): boolean {
    return this.agents.has(name);
  }

  list(): AgentInfo[] {
    return [...this.agents.values()].map((a) => ({
      name: a.name, services: a.services, principal: a.principal, remote: a.remote, connectedAt: a.connectedAt,
      streamsOpen: a.link.session.size, streamsTotal: a.streamsTotal, bytesIn: a.link.bytes.in, bytesOut: a.link.bytes.out,
    }));
  }

  /**
   * An agent's upgrade, its credentials already checked: the 101 (subprotocol
   * sluice.tunnel.v1), the hello, and once the answer names an allowed agent, the agent is
   * registered. Refusals after the 101 are close frames with 1008 and the reason.
   *
   * A plain TCP connection with a well-formed upgrade runs on the native link (the 101 is
   * its first write); anything else (TLS, no addon, a request to answer with an error)
   * goes through `ws`.
   */
  async accept(req: IncomingMessage, socket: Duplex, head: Buffer, grant: AgentGrant): Promise<void> {
    if (this.closed) {
      socket.destroy();
      return;
    }
    this.startPinger();
    const key = req.headers['sec-websocket-key'];
    const offered = String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
    if (nativeLinkAvailable() && socket instanceof net.Socket && typeof key === 'string' && /^[A-Za-z0-9+/]{22}==$/.test(key) &&
        req.headers['sec-websocket-version'] === '13' && offered.includes(TUNNEL_SUBPROTOCOL)) {
      const answer = createHash('sha1').update(key + WS_GUID).digest('base64');
      const greeting = Buffer.from(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Accept: ${answer}\r\nSec-WebSocket-Protocol: ${TUNNEL_SUBPROTOCOL}\r\n\r\n`);
      let made = false;
      try {
        this.onConnection((o) => {
          const link = linkOverSocket(socket, head, { ...o, wsClient: false }, greeting);
          made = link !== null;
          return link;
        }, grant);
      } catch (err) {
        // The addon could not take the connection (out of descriptors or memory): it is gone.
        this.options.logger.warn({ event: 'agent_link_failed', err: (err as Error).message }, 'agent connection failed');
        socket.destroy();
        return;
      }
      if (made) return;
    }
    const wss = await this.server();
    wss.handleUpgrade(req, socket, head, (ws) => {
      this.onConnection((o) => linkOverWebSocket(ws, o), grant);
      // The proxy pauses a socket until it knows what it is for; ws only adds listeners.
      socket.resume();
    });
  }

  private async server(): Promise<WebSocketServer> {
    if (this.wss !== null) return this.wss;
    const { WebSocketServer } = await import('ws');
    this.wss ??= new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: 4 * MESSAGE_BYTES,
      clientTracking: false,
      handleProtocols: (protocols) => (protocols.has(TUNNEL_SUBPROTOCOL) ? TUNNEL_SUBPROTOCOL : false),
    });
    return this.wss;
  }

  private startPinger(): void {
    this.pinger ??= setInterval(() => this.heartbeat(), Math.max(100, Math.min(this.options.pingIntervalMs, this.options.pongTimeoutMs / 3)));
    this.pinger.unref();
  }

  private heartbeat(): void {
    for (const a of this.agents.values()) {
      const idle = a.link.idleMs();
      if (idle > this.options.pongTimeoutMs) {
        this.options.logger.warn({ event: 'agent_silent', agent: a.name }, 'agent silent: dropped');
        a.link.terminate();
      } else if (idle >= this.options.pingIntervalMs / 2) {
        a.link.ping();
      }
    }
  }

  /** `makeLink` builds the link with these callbacks (null: it could not, nothing done). */
  private onConnection(makeLink: (o: LinkOptions) => Link | null, grant: AgentGrant): void {
    const log = this.options.logger;
    let agent: Agent | null = null;
    let helloTimer: NodeJS.Timeout | null = null;
    /** The name is being claimed cluster-wide (the hello's answer came); the link has closed. */
    let claiming = false;
    let linkClosed = false;
    const made = makeLink({
      client: true,
      // The agent is the yamux server: a stream it opens is refused.
      onStream: (s) => s.destroy(),
      onControl: (text) => {
        if (agent !== null) return; // control messages after the hello: none defined yet, ignored
        const msg = parseControl(text);
        if (msg === null || msg.type !== 'gateway_hello_ack') return;
        if (helloTimer !== null) clearTimeout(helloTimer);
        const ack = checkHelloAck(msg);
        if (typeof ack === 'string') {
          link.close(1008, closeReason(ack));
          return;
        }
        if (grant.names !== null && !grant.names.includes(ack.name)) {
          log.warn({ event: 'agent_refused', agent: ack.name, principal: grant.principal }, 'agent name not allowed for these credentials');
          link.close(1008, `agent name "${ack.name}" is not allowed for these credentials`);
          return;
        }
        const existing = this.agents.get(ack.name);
        if (existing !== undefined && grant.duplicate === 'refuse') {
          log.warn({ event: 'agent_refused', agent: ack.name }, 'an agent with this name is connected');
          link.close(1008, `agent "${ack.name}" is already connected`);
          return;
        }
        const cluster = this.options.cluster;
        if (cluster === undefined || existing !== undefined) {
          this.register(link, ack, grant, (a) => { agent = a; });
          return;
        }
        // Cluster-wide: the same replace-or-refuse rule against every instance.
        claiming = true;
        void cluster.claim(ack.name, grant.duplicate).then((refusal) => {
          claiming = false;
          if (linkClosed) {
            cluster.release(ack.name);
            return;
          }
          if (refusal !== null) {
            log.warn({ event: 'agent_refused', agent: ack.name }, refusal);
            link.close(1008, closeReason(refusal));
            return;
          }
          this.register(link, ack, grant, (a) => { agent = a; });
        });
      },
      onClose: () => {
        linkClosed = true;
        if (helloTimer !== null) clearTimeout(helloTimer);
        if (made !== null) this.pending.delete(made);
        if (agent !== null && this.agents.get(agent.name) === agent) {
          this.agents.delete(agent.name);
          this.options.cluster?.release(agent.name);
          log.info({ event: 'agent_disconnected', agent: agent.name }, 'agent disconnected');
        }
      },
    });
    if (made === null) return;
    const link: Link = made;
    if (this.closed) {
      link.close(1001, 'gateway shutting down');
      return;
    }
    this.pending.add(link);
    helloTimer = setTimeout(() => { if (!claiming) link.close(1008, 'no gateway_hello_ack in time'); }, this.options.helloTimeoutMs);
    link.sendControl(gatewayHello());
  }

  /** The agent's hello was accepted: it replaces one with its name here, and is registered. */
  private register(link: Link, ack: { name: string; services: string[] }, grant: AgentGrant, set: (a: Agent) => void): void {
    const log = this.options.logger;
    const existing = this.agents.get(ack.name);
    if (existing !== undefined) {
      log.info({ event: 'agent_replaced', agent: ack.name }, 'agent replaced by a new connection');
      this.agents.delete(ack.name);
      existing.link.close(1008, 'replaced by a new connection of the same agent');
    }
    this.pending.delete(link);
    const agent: Agent = {
      name: ack.name, services: ack.services, principal: grant.principal, remote: grant.remote, connectedAt: Date.now(),
      link, streamsTotal: 0,
    };
    this.agents.set(ack.name, agent);
    set(agent);
    log.info({ event: 'agent_connected', agent: ack.name, services: ack.services, remote: grant.remote, native: link.native }, 'agent connected');
  }

  /** Another instance took agent `name` over (cluster, `replace`): the one here goes. */
  drop(name: string, by: string): void {
    const a = this.agents.get(name);
    if (a === undefined) return;
    this.options.logger.info({ event: 'agent_replaced', agent: name, by }, 'agent replaced by a connection to another instance');
    this.agents.delete(name);
    a.link.close(1008, closeReason(`replaced by a new connection of the same agent (to instance ${by})`));
  }

  /**
   * A stream to `service` through agent `name`, once the agent answered ok: raw bytes both
   * ways from then on. Rejects with a TunnelError when the agent is not connected, refuses,
   * or does not answer within `timeoutMs`.
   */
  async open(name: string, service: string, protocol: TunnelProtocol, timeoutMs: number): Promise<TunnelStream> {
    const agent = this.agents.get(name);
    if (agent === undefined && protocol === 'tcp' && this.options.cluster !== undefined) {
      // Held by another instance: the stream is relayed there.
      const started = performance.now();
      const socket = await this.options.cluster.openRemote(name, service, timeoutMs);
      this.recordOpen(started);
      return Object.assign(socket, { id: -1, openedAt: started, bytesIn: 0, bytesOut: 0 });
    }
    if (agent === undefined) throw new TunnelError('SLUICE_ERR_AGENT_OFFLINE', `agent "${name}" is not connected`);
    let stream: TunnelStream;
    try {
      stream = agent.link.session.open();
    } catch (err) {
      throw new TunnelError('SLUICE_ERR_AGENT_OFFLINE', `agent "${name}": ${(err as Error).message}`);
    }
    agent.streamsTotal++;
    stream.on('error', () => {});
    stream.write(openLine({ service, protocol }));
    let line: string;
    try {
      line = await readLine(stream, timeoutMs);
    } catch (err) {
      stream.destroy();
      const timedOut = /within/.test((err as Error).message);
      throw new TunnelError(timedOut ? 'SLUICE_ERR_AGENT_TIMEOUT' : 'SLUICE_ERR_AGENT_REFUSED',
        `agent "${name}", service "${service}": ${(err as Error).message}`);
    }
    const answer = parseAnswer(line);
    if (!answer.ok) {
      stream.destroy();
      throw new TunnelError('SLUICE_ERR_AGENT_REFUSED', `agent "${name}" refused service "${service}": ${answer.error}`);
    }
    this.recordOpen(stream.openedAt);
    return stream;
  }

  /**
   * A TCP connection (descriptor `fd`, owned from now on) joined to a stream to `service`
   * through agent `name`, once the agent answered ok: on the native link in the addon,
   * else through a Node socket made for it. Resolves with a function that cuts the pair;
   * rejects as open() does (the descriptor closed). `onEnd` runs once the pair is over.
   */
  openSocket(name: string, service: string, fd: number, timeoutMs: number, onEnd: () => void): Promise<() => void> {
    const agent = this.agents.get(name);
    if (agent === undefined && this.options.cluster === undefined) {
      closeFd(fd);
      return Promise.reject(new TunnelError('SLUICE_ERR_AGENT_OFFLINE', `agent "${name}" is not connected`));
    }
    const link = agent?.link;
    if (link === undefined || !(link instanceof NativeLink)) {
      // A TypeScript link, or an agent on another instance (open() relays): a Node socket for the descriptor.
      const socket = new net.Socket({ fd, allowHalfOpen: true, readable: true, writable: true });
      socket.on('error', () => {});
      return this.open(name, service, 'tcp', timeoutMs).then((stream) => {
        if (socket.destroyed) {
          // The client went before the agent answered: its 'close' has run already.
          stream.destroy();
          onEnd();
          return () => {};
        }
        return joinSocket(stream, socket, onEnd);
      }, (err: Error) => {
        socket.destroy();
        throw err;
      });
    }
    return new Promise((resolve, reject) => {
      const started = performance.now();
      let timer: NodeJS.Timeout | null = null;
      let cut: () => void = () => {};
      try {
        cut = link.openForSocket(fd, openLine({ service, protocol: 'tcp' }), (line) => {
          if (timer !== null) clearTimeout(timer);
          const answer = line === null ? { ok: false as const, error: 'the stream was reset' } : parseAnswer(line);
          if (!answer.ok) {
            reject(new TunnelError('SLUICE_ERR_AGENT_REFUSED', `agent "${name}" refused service "${service}": ${answer.error}`));
            return false;
          }
          this.recordOpen(started);
          resolve(cut);
          return true;
        }, onEnd);
      } catch (err) {
        closeFd(fd);
        reject(new TunnelError('SLUICE_ERR_AGENT_OFFLINE', `agent "${name}": ${(err as Error).message}`));
        return;
      }
      agent!.streamsTotal++; // a native link is a local agent's
      timer = setTimeout(() => {
        timer = null;
        reject(new TunnelError('SLUICE_ERR_AGENT_TIMEOUT', `agent "${name}", service "${service}": no answer within ${timeoutMs} ms`));
        cut();
      }, timeoutMs);
    });
  }

  private recordOpen(openedAt: number): void {
    const seconds = (performance.now() - openedAt) / 1000;
    let i = 0;
    while (i < STREAM_OPEN_SECONDS_BUCKETS.length && seconds > STREAM_OPEN_SECONDS_BUCKETS[i]) i++;
    this.openBuckets[i]++;
    this.openSum += seconds;
    this.openCount++;
  }

  /** Stream open times, for the histogram (buckets per bound, not cumulative). */
  openTimes(): { buckets: Float64Array; sum: number; count: number } {
    return { buckets: this.openBuckets, sum: this.openSum, count: this.openCount };
  }

  /** Every agent gets 1001; no new agent is taken. */
  close(): void {
    this.closed = true;
    if (this.pinger !== null) clearInterval(this.pinger);
    this.pinger = null;
    for (const a of this.agents.values()) a.link.close(1001, 'gateway shutting down');
    for (const l of this.pending) l.close(1001, 'gateway shutting down');
    this.agents.clear();
    this.pending.clear();
    this.wss?.close();
    this.wss = null;
  }
}
