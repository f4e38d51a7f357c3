/**
 * L4 tunnel listeners on the gateway (config `tunnels:`): each TCP connection, or each UDP
 * client address, becomes one yamux stream to a service of an agent. With the agent not
 * connected, a TCP connection is closed at once and a datagram is dropped.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import type { Logger } from '../log.js';
import type { AgentRegistry } from './gateway.js';
import { DatagramReader, datagram, parseHostPort } from './wire.js';
import { joinSocket, LiveEntry, type TunnelStream } from './link.js';
import { nativeAcceptor, nativeLinkAvailable } from './native-link.js';
import { listenSocket, socketPort } from '../proxy/listen.js';

export interface TunnelConfig {
  /** "host:port" to listen on. */
  listen: string;
  agent: string;
  service: string;
  protocol: 'tcp' | 'udp';
  /** UDP: a client address silent this long loses its stream (ms). */
  udpIdleMs: number;
}

export interface TunnelStats {
  listen: string;
  agent: string;
  service: string;
  protocol: 'tcp' | 'udp';
  port: number;
  open: number;
  total: number;
  refused: number;
}

export class TunnelListener {
  readonly config: TunnelConfig;
  private readonly registry: AgentRegistry;
  private readonly logger: Logger;
  private readonly openTimeoutMs: number;
  private tcp: net.Server | null = null;
  private acceptor: { close(): void } | null = null;
  private udp: dgram.Socket | null = null;
  private readonly live = new Set<{ close(): void }>();
  private port = 0;
  private total = 0;
  private refused = 0;

  constructor(config: TunnelConfig, registry: AgentRegistry, logger: Logger, openTimeoutMs: number) {
    this.config = config;
    this.registry = registry;
    this.logger = logger;
    this.openTimeoutMs = openTimeoutMs;
  }

  stats(): TunnelStats {
    const c = this.config;
    return { listen: c.listen, agent: c.agent, service: c.service, protocol: c.protocol, port: this.port, open: this.live.size, total: this.total, refused: this.refused };
  }

  async listen(): Promise<number> {
    const { host, port } = parseHostPort(this.config.listen, true);
    if (this.config.protocol === 'udp') {
      const sock = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
      this.udp = sock;
      await new Promise<void>((resolve, reject) => {
        sock.once('error', reject);
        sock.bind(port, host, () => {
          sock.off('error', reject);
          resolve();
        });
      });
      sock.on('error', (err) => this.logger.warn({ event: 'tunnel_udp_error', err: err.message }, 'udp tunnel error'));
      this.serveUdp(sock);
      this.port = sock.address().port;
    } else if (nativeLinkAvailable()) {
      // The addon accepts: a connection is a descriptor joined to its stream there, with no
      // Node socket made for it (the agent's link is native; else openSocket makes one).
      const fd = listenSocket(host, port, false);
      this.acceptor = nativeAcceptor(fd, (fds) => {
        for (const f of fds) this.onDescriptor(f);
      });
      this.port = socketPort(fd);
    } else {
      // Half-open: a client's FIN is passed on as a yamux FIN, and the answer still flows back.
      const server = net.createServer({ noDelay: true, pauseOnConnect: true, allowHalfOpen: true }, (socket) => this.onTcp(socket));
      this.tcp = server;
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host, port }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      this.port = (server.address() as net.AddressInfo).port;
    }
    return this.port;
  }

  close(): void {
    this.tcp?.close();
    this.tcp = null;
    this.acceptor?.close();
    this.acceptor = null;
    try { this.udp?.close(); } catch { /* closed */ }
    this.udp = null;
    for (const l of [...this.live]) l.close();
    this.live.clear();
  }

  private onDescriptor(fd: number): void {
    this.total++;
    const c = this.config;
    // Until it is joined, closing the agent's link (or the gateway) ends it.
    const entry = new LiveEntry(this.live, () => {});
    this.registry.openSocket(c.agent, c.service, fd, this.openTimeoutMs, entry.done).then((cut) => {
      entry.close = cut;
    }, (err: Error) => {
      entry.done();
      this.refused++;
      this.logger.info({ event: 'tunnel_refused', agent: c.agent, service: c.service, err: err.message }, 'tunnel connection refused');
    });
  }

  private onTcp(socket: net.Socket): void {
    this.total++;
    socket.on('error', () => {});
    const c = this.config;
    const entry = new LiveEntry(this.live, () => socket.destroy());
    socket.once('close', entry.done);
    this.registry.open(c.agent, c.service, 'tcp', this.openTimeoutMs).then((stream) => {
      if (socket.destroyed) {
        stream.destroy();
        return;
      }
      socket.removeListener('close', entry.done);
      entry.close = joinSocket(stream, socket, entry.done);
    }, (err: Error) => {
      this.refused++;
      this.logger.info({ event: 'tunnel_refused', agent: c.agent, service: c.service, err: err.message }, 'tunnel connection refused');
      socket.destroy();
    });
  }

  private serveUdp(sock: dgram.Socket): void {
    const c = this.config;
    const flows = new Map<string, { stream: TunnelStream | null; queue: Buffer[]; idle: NodeJS.Timeout | null; close(): void }>();
    sock.on('message', (msg, rinfo) => {
      const key = `${rinfo.address}|${rinfo.port}`;
      let flow = flows.get(key);
      if (flow === undefined) {
        if (!this.registry.has(c.agent)) {
          this.refused++;
          return;
        }
        this.total++;
        const f = {
          stream: null as TunnelStream | null, queue: [] as Buffer[], idle: null as NodeJS.Timeout | null,
          close: () => {
            if (f.idle !== null) clearTimeout(f.idle);
            flows.delete(key);
            this.live.delete(f);
            f.stream?.destroy();
          },
        };
        flow = f;
        flows.set(key, f);
        this.live.add(f);
        this.registry.open(c.agent, c.service, 'udp', this.openTimeoutMs).then((stream) => {
          if (flows.get(key) !== f) {
            stream.destroy();
            return;
          }
          f.stream = stream;
          const reader = new DatagramReader();
          stream.on('data', (chunk: Buffer) => {
            touch(f);
            for (const d of reader.push(chunk)) sock.send(d, rinfo.port, rinfo.address);
          });
          stream.on('end', () => f.close());
          stream.on('close', () => f.close());
          stream.resume();
          for (const d of f.queue) stream.write(datagram(d));
          f.queue = [];
        }, () => {
          this.refused++;
          f.close();
        });
      }
      touch(flow);
      if (flow.stream !== null) flow.stream.write(datagram(msg));
      else if (flow.queue.length < 64) flow.queue.push(Buffer.from(msg));
    });
    const touch = (f: { idle: NodeJS.Timeout | null; close(): void }) => {
      if (f.idle !== null) clearTimeout(f.idle);
      f.idle = setTimeout(() => f.close(), c.udpIdleMs);
      f.idle.unref();
    };
  }
}
