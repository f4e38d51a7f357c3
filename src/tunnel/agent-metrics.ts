/**
 * The agent's own metrics (issue #14: "exposes metrics like the proxy"), read at scrape
 * time from its counters, plus prom-client's process metrics; served by the same admin
 * server as the proxy's (`sluice agent --admin-port N`: /metrics, /healthz, /readyz, /stats).
 */
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import type { AgentStats } from './agent.js';

export function createAgentRegistry(stats: () => AgentStats): Registry {
  const registry = new Registry();
  const registers = [registry];
  new Gauge({
    name: 'sluice_agent_connected',
    help: '1 while the agent is connected to its gateway (the hello answered), else 0.',
    registers,
    collect() { this.set(stats().connected ? 1 : 0); },
  });
  new Counter({
    name: 'sluice_agent_connects_total',
    help: 'Connections to the gateway that got as far as the hello.',
    registers,
    collect() { this.reset(); this.inc(stats().connects); },
  });
  new Gauge({
    name: 'sluice_agent_streams_open',
    help: 'Streams the gateway opened that are being served now.',
    registers,
    collect() { this.set(stats().streamsOpen); },
  });
  new Counter({
    name: 'sluice_agent_streams_total',
    help: 'Streams the gateway opened.',
    registers,
    collect() { this.reset(); this.inc(stats().streamsTotal); },
  });
  new Counter({
    name: 'sluice_agent_streams_refused_total',
    help: 'Streams refused: a service not exposed, a bad open line, or a dial that failed.',
    registers,
    collect() { this.reset(); this.inc(stats().streamsRefused); },
  });
  new Counter({
    name: 'sluice_agent_bytes_total',
    help: 'Bytes of yamux frames exchanged with the gateway: in = from the gateway.',
    labelNames: ['direction'],
    registers,
    collect() {
      const s = stats();
      this.reset();
      this.inc({ direction: 'in' }, s.bytesIn);
      this.inc({ direction: 'out' }, s.bytesOut);
    },
  });
  collectDefaultMetrics({ register: registry });
  return registry;
}
