/**
 * The cluster's view as metrics (docs/operations.md "Scaling out"): live instances, sessions per
 * instance (from their lease lines), whether this instance is degraded (Redis away), and
 * this instance's places per scope. Read at scrape time.
 */
import { Gauge, type Registry } from 'prom-client';
import type { ClusterStats } from './cluster.js';

export function registerClusterMetrics(registry: Registry, stats: () => ClusterStats | null): void {
  const registers = [registry];
  new Gauge({
    name: 'sluice_cluster_instances',
    help: 'Instances with a live lease, as this instance last read them (0 without cluster).',
    registers,
    collect() {
      this.set(stats()?.instances.length ?? 0);
    },
  });
  new Gauge({
    name: 'sluice_cluster_degraded',
    help: '1 while Redis is unreachable and this instance serves under local limits.',
    registers,
    collect() {
      this.set(stats()?.degraded === true ? 1 : 0);
    },
  });
  new Gauge({
    name: 'sluice_cluster_instance_sessions',
    help: 'Sessions per instance, from each instance\'s lease (renewed every leaseSeconds / 3).',
    labelNames: ['instance'],
    registers,
    collect() {
      this.reset();
      for (const i of stats()?.instances ?? []) this.set({ instance: i.id }, i.sessions);
    },
  });
  new Gauge({
    name: 'sluice_cluster_places',
    help: 'Places (connections) per scope: what this instance reserved, uses, and what the other instances hold.',
    labelNames: ['scope', 'kind'],
    registers,
    collect() {
      this.reset();
      for (const [scope, p] of Object.entries(stats()?.places ?? {})) {
        this.set({ scope, kind: 'reserved' }, p.reserved);
        this.set({ scope, kind: 'used' }, p.used);
        this.set({ scope, kind: 'others' }, p.others);
      }
    },
  });
}
