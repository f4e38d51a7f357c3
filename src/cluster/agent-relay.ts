/**
 * Agents across instances (docs/operations.md "Scaling out"): a stream to an agent that another
 * instance holds is relayed there. This instance asks the owner's advertised address for
 * `GET /_sluice/agent-stream` with `Upgrade: sluice-agent-stream`, the agent and service
 * in headers and the cluster's signature (HMAC with `cluster.secret`); the owner opens the
 * stream through its agent, answers 101, and from then on the connection carries the
 * stream's bytes both ways. What runs over it is whatever would run over a local agent
 * stream: a session's upstream leg (its WebSocket handshake, frames and close codes end to
 * end), a plain HTTP request, a TCP tunnel's bytes.
 */
import net from 'node:net';
import tls from 'node:tls';
import { TunnelError } from '../tunnel/gateway.js';
import { AGENT_STREAM_PATH, type Cluster } from './cluster.js';

/** Upgrade token of the relay (not WebSocket: raw bytes after the 101). */
export const AGENT_STREAM_UPGRADE = 'sluice-agent-stream';

/** A stream to `service` through agent `name` held by another instance, or a TunnelError. */
export async function openRemoteAgentStream(cluster: Cluster, name: string, service: string, timeoutMs: number): Promise<net.Socket> {
  const owner = await cluster.agentOwner(name);
  if (owner === null) throw new TunnelError('SLUICE_ERR_AGENT_OFFLINE', `agent "${name}" is not connected (to any instance)`);
  if (owner.advertise === null) {
    throw new TunnelError('SLUICE_ERR_AGENT_OFFLINE', `agent "${name}" is on instance ${owner.id}, which sets no cluster.advertise`);
  }
  const url = new URL(owner.advertise);
  const port = Number(url.port || (url.protocol === 'wss:' ? 443 : 80));
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const socket: net.Socket = url.protocol === 'wss:'
    ? tls.connect({ host, port, servername: net.isIP(host) === 0 ? host : undefined })
    : net.connect(port, host);
  socket.setNoDelay(true);
  return new Promise<net.Socket>((resolve, reject) => {
    let head = Buffer.alloc(0);
    const fail = (err: TunnelError) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new TunnelError('SLUICE_ERR_AGENT_TIMEOUT',
      `agent "${name}" on instance ${owner.id}: no answer within ${timeoutMs} ms`)), timeoutMs);
    socket.once(url.protocol === 'wss:' ? 'secureConnect' : 'connect', () => {
      socket.write(`GET ${AGENT_STREAM_PATH} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: Upgrade\r\nUpgrade: ${AGENT_STREAM_UPGRADE}\r\n` +
        `Sluice-Agent: ${name}\r\nSluice-Service: ${service}\r\nSluice-Cluster: ${cluster.sign('agent-stream', owner.id, [name, service])}\r\n\r\n`);
    });
    socket.on('error', (err: Error) => fail(new TunnelError('SLUICE_ERR_AGENT_OFFLINE', `agent "${name}" on instance ${owner.id}: ${err.message}`)));
    // 'readable', not 'data': once its listener is gone the socket is neither flowing nor
    // paused, so whoever reads it next (the dial's 'data' listener) gets every byte.
    const onReadable = () => {
      for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) {
          if (head.length > 16384) fail(new TunnelError('SLUICE_ERR_AGENT_REFUSED', `instance ${owner.id}: answer head too large`));
          continue;
        }
        socket.off('readable', onReadable);
        const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head.subarray(0, end).toString('latin1'))?.[1] ?? 0);
        const rest = head.subarray(end + 4);
        if (status !== 101) {
          const why = rest.toString('utf8').trim().slice(0, 200) || `HTTP ${status}`;
          fail(new TunnelError(status === 404 ? 'SLUICE_ERR_AGENT_OFFLINE' : 'SLUICE_ERR_AGENT_REFUSED', `agent "${name}" on instance ${owner.id}: ${why}`));
          return;
        }
        clearTimeout(timer);
        socket.removeAllListeners('error');
        socket.on('error', () => {});
        if (rest.length > 0) socket.unshift(rest);
        resolve(socket);
        return;
      }
    };
    socket.on('readable', onReadable);
  });
}
