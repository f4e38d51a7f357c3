/**
 * Metrics: hot-path counters ({@link ProxyCounters}) and the prom-client registry that
 * reads them at scrape time.
 */
export { FRAME_BYTES_BUCKETS, ProxyCounters, SESSION_SECONDS_BUCKETS } from './counters.js';
export type { Direction, FrameKind } from './counters.js';
export { createMetricsRegistry, ScrapedHistogram, sumCounters } from './registry.js';
export type { CounterSnapshot, CounterSource, MetricsRegistryOptions } from './registry.js';
