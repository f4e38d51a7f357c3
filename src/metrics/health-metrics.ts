/**
 * What a dashboard and its alerts need besides the traffic counters (issue #16): upstream
 * health and sessions per upstream, sessions per route, readiness, and whether each agent
 * the configuration names (tunnels, upstreams through agents) is connected. Read at
 * scrape time from the proxy's own statistics (the same numbers as /stats and /readyz).
 */
import { Gauge, type Registry } from 'prom-client';
import type { ProxyStats } from '../proxy/proxy.js';

export interface HealthMetricsSource {
  stats(): ProxyStats;
  readonly ready: { ok: boolean; reasons: string[] };
  /** The agents the configuration needs (tunnels, upstreams through agents). */
  neededAgents(): string[];
}

export function registerHealthMetrics(registry: Registry, source: HealthMetricsSource): void {
  const registers = [registry];
  // One stats() per scrape: the collect callbacks of one scrape run in one pass.
  let cached: { at: number; stats: ProxyStats } | null = null;
  const stats = (): ProxyStats => {
    const now = Date.now();
    if (cached === null || now - cached.at > 50) cached = { at: now, stats: source.stats() };
    return cached.stats;
  };
  new Gauge({
    name: 'sluice_upstream_up',
    help: 'Whether each upstream of each route takes new sessions (1), or is held out after failed dials (0).',
    labelNames: ['route', 'upstream'],
    registers,
    collect() {
      this.reset();
      for (const r of stats().routes) for (const u of r.upstreams) this.set({ route: r.path, upstream: u.url }, u.healthy ? 1 : 0);
    },
  });
  new Gauge({
    name: 'sluice_upstream_sessions',
    help: 'Sessions open now to each upstream of each route.',
    labelNames: ['route', 'upstream'],
    registers,
    collect() {
      this.reset();
      for (const r of stats().routes) for (const u of r.upstreams) this.set({ route: r.path, upstream: u.url }, u.sessions);
    },
  });
  new Gauge({
    name: 'sluice_route_sessions',
    help: 'Sessions open now on each route.',
    labelNames: ['route'],
    registers,
    collect() {
      this.reset();
      for (const r of stats().routes) this.set({ route: r.path }, r.sessions);
    },
  });
  new Gauge({
    name: 'sluice_ready',
    help: 'Whether /readyz answers ready (1) or not (0).',
    registers,
    collect() {
      this.set(source.ready.ok ? 1 : 0);
    },
  });
  new Gauge({
    name: 'sluice_agent_up',
    help: 'Whether each agent the configuration names (tunnels, upstreams through agents) is connected.',
    labelNames: ['agent'],
    registers,
    collect() {
      this.reset();
      const connected = new Set(stats().agents.map((a) => a.name));
      for (const name of new Set(source.neededAgents())) this.set({ agent: name }, connected.has(name) ? 1 : 0);
    },
  });
}
