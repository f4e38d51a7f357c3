/**
 * Tunnel metrics (issue #14), read at scrape time from the gateway's agent registry and
 * tunnel listeners: agents connected, streams open and opened, bytes per agent, stream
 * open time (SYN to the agent's answer), and tunnel connections by outcome.
 */
import { Counter, Gauge, type Metric, type Registry } from 'prom-client';
import { ScrapedHistogram } from './registry.js';

/** Upper bounds of the stream open time histogram, in seconds. */
export const STREAM_OPEN_SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5] as const;

export interface TunnelMetricsSource {
  agents(): ReadonlyArray<{ name: string; streamsOpen: number; streamsTotal: number; bytesIn: number; bytesOut: number }>;
  tunnels(): ReadonlyArray<{ listen: string; protocol: string; agent: string; service: string; total: number; refused: number }>;
  openTimes(): { buckets: ArrayLike<number>; sum: number; count: number };
}

export function registerTunnelMetrics(registry: Registry, source: TunnelMetricsSource): void {
  const registers = [registry];
  new Gauge({
    name: 'agent_websocket_agents_connected',
    help: 'Tunnel agents connected to this gateway.',
    registers,
    collect() {
      this.set(source.agents().length);
    },
  });
  new Gauge({
    name: 'sluice_agent_streams_open',
    help: 'Streams open through each connected agent.',
    labelNames: ['agent'],
    registers,
    collect() {
      this.reset();
      for (const a of source.agents()) this.set({ agent: a.name }, a.streamsOpen);
    },
  });
  new Counter({
    name: 'sluice_agent_streams_total',
    help: 'Streams opened through each connected agent (since it connected).',
    labelNames: ['agent'],
    registers,
    collect() {
      this.reset();
      for (const a of source.agents()) this.inc({ agent: a.name }, a.streamsTotal);
    },
  });
  new Counter({
    name: 'sluice_agent_bytes_total',
    help: 'Bytes of yamux frames exchanged with each connected agent (since it connected): in = from the agent.',
    labelNames: ['agent', 'direction'],
    registers,
    collect() {
      this.reset();
      for (const a of source.agents()) {
        this.inc({ agent: a.name, direction: 'in' }, a.bytesIn);
        this.inc({ agent: a.name, direction: 'out' }, a.bytesOut);
      }
    },
  });
  new Counter({
    name: 'sluice_tunnel_connections_total',
    help: 'Connections (TCP) or client addresses (UDP) taken by each tunnel listener, by outcome.',
    labelNames: ['listen', 'protocol', 'agent', 'service', 'result'],
    registers,
    collect() {
      this.reset();
      for (const t of source.tunnels()) {
        const labels = { listen: t.listen, protocol: t.protocol, agent: t.agent, service: t.service };
        this.inc({ ...labels, result: 'refused' }, t.refused);
        this.inc({ ...labels, result: 'opened' }, Math.max(0, t.total - t.refused));
      }
    },
  });
  registry.registerMetric(new ScrapedHistogram(
    'sluice_agent_stream_open_seconds',
    'Time from a stream\'s SYN to the agent\'s answer line, in seconds.',
    STREAM_OPEN_SECONDS_BUCKETS,
    async () => source.openTimes(),
  ) as unknown as Metric);
}
