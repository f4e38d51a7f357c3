export { Cluster } from './cluster.js';
export type { ClusterStats, ClusterInstance, Refusal } from './cluster.js';
export { registerClusterMetrics } from './cluster-metrics.js';
