/**
 * The Prometheus registry of a proxy: the `agent_websocket_*` metrics named by the system
 * sluice replaces, plus prom-client's default process metrics.
 *
 * Sessions count in plain numbers ({@link ProxyCounters}); nothing here runs per message.
 * At scrape time each metric reads one snapshot of those numbers (summed over shards) and
 * exposes it as an absolute value:
 *
 * - counters and gauges are prom-client's own classes with a `collect()` that sets the
 *   absolute value (`reset()` then `inc(labels, value)` for a counter, `set()` for a gauge),
 *   the way prom-client documents collect callbacks;
 * - histograms are a {@link ScrapedHistogram}: prom-client's Histogram can only `observe()`
 *   values one by one and keeps its buckets private, so re-observing would be wrong (sums
 *   and counts per bucket cannot be rebuilt from them) and setting them would reach into
 *   its internals. A registry only needs `name`, `help`, `type`, `aggregator` and `get()`
 *   from a metric, so the histogram is a small object giving exactly that from the
 *   bucket arrays, formatted by the registry like any other.
 */
import { collectDefaultMetrics, Counter, Gauge, Registry, type Metric } from 'prom-client';
import {
  FRAME_BYTES_BUCKETS, SESSION_SECONDS_BUCKETS, PARKED_SECONDS_BUCKETS, newResumeCounters,
  type Direction, type FrameKind, type ProxyCounters,
} from './counters.js';

/**
 * The numbers of one {@link ProxyCounters} without its methods: what a shard posts to the
 * main thread (structured clone keeps the typed arrays).
 */
export type CounterSnapshot = Pick<ProxyCounters,
  | 'frames' | 'frameBytes' | 'frameBytesBuckets' | 'frameBytesSum' | 'frameBytesCount' | 'dropped'
  | 'backpressureEvents' | 'envelopeErrors' | 'sessionSecondsBuckets' | 'sessionSecondsSum' | 'sessionSecondsCount'
  | 'activeSessions' | 'sessionsTotal' | 'closes' | 'shardRestarts' | 'httpRequests' | 'resume'>;

/** One proxy's counters, or a function returning every shard's (sync or async). */
export type CounterSource = CounterSnapshot | (() => readonly CounterSnapshot[] | Promise<readonly CounterSnapshot[]>);

/** Options of {@link createMetricsRegistry}. */
export interface MetricsRegistryOptions {
  /** prom-client's default process metrics (CPU, memory, event loop lag, GC); default true. */
  defaultMetrics?: boolean;
}

const DIRECTIONS: readonly Direction[] = ['in', 'out'];
const FRAME_KINDS: readonly FrameKind[] = ['text', 'binary', 'ping', 'pong', 'close'];

/** Adds up shards' counters into one snapshot. */
export function sumCounters(list: readonly CounterSnapshot[]): CounterSnapshot {
  const total: CounterSnapshot = {
    frames: { in: { text: 0, binary: 0, ping: 0, pong: 0, close: 0 }, out: { text: 0, binary: 0, ping: 0, pong: 0, close: 0 } },
    frameBytes: { in: 0, out: 0 },
    frameBytesBuckets: new Float64Array(FRAME_BYTES_BUCKETS.length + 1),
    frameBytesSum: 0,
    frameBytesCount: 0,
    dropped: { backpressure: 0, too_big: 0 },
    backpressureEvents: 0,
    envelopeErrors: 0,
    sessionSecondsBuckets: new Float64Array(SESSION_SECONDS_BUCKETS.length + 1),
    sessionSecondsSum: 0,
    sessionSecondsCount: 0,
    activeSessions: 0,
    sessionsTotal: 0,
    closes: {},
    shardRestarts: 0,
    httpRequests: {},
    resume: newResumeCounters(),
  };
  for (const c of list) {
    for (const d of DIRECTIONS) {
      for (const k of FRAME_KINDS) total.frames[d][k] += c.frames[d][k];
      total.frameBytes[d] += c.frameBytes[d];
    }
    addInto(total.frameBytesBuckets, c.frameBytesBuckets);
    total.frameBytesSum += c.frameBytesSum;
    total.frameBytesCount += c.frameBytesCount;
    for (const [reason, n] of Object.entries(c.dropped)) total.dropped[reason] = (total.dropped[reason] ?? 0) + n;
    total.backpressureEvents += c.backpressureEvents;
    total.envelopeErrors += c.envelopeErrors ?? 0;
    addInto(total.sessionSecondsBuckets, c.sessionSecondsBuckets);
    total.sessionSecondsSum += c.sessionSecondsSum;
    total.sessionSecondsCount += c.sessionSecondsCount;
    total.activeSessions += c.activeSessions;
    total.sessionsTotal += c.sessionsTotal;
    for (const [code, n] of Object.entries(c.closes)) total.closes[code] = (total.closes[code] ?? 0) + n;
    total.shardRestarts += c.shardRestarts;
    for (const [route, byStatus] of Object.entries(c.httpRequests ?? {})) {
      const into = total.httpRequests[route] ?? (total.httpRequests[route] = {});
      for (const [status, n] of Object.entries(byStatus)) into[status] = (into[status] ?? 0) + n;
    }
    const r = c.resume;
    if (r !== undefined) {
      const t = total.resume;
      t.parked += r.parked;
      for (const [outcome, n] of Object.entries(r.outcomes)) t.outcomes[outcome] = (t.outcomes[outcome] ?? 0) + n;
      t.replayedFrames += r.replayedFrames;
      t.replayedBytes += r.replayedBytes;
      t.relayed += r.relayed ?? 0;
      t.buffered += r.buffered ?? 0;
      addInto(t.parkedBuckets, r.parkedBuckets);
      t.parkedSum += r.parkedSum;
      t.parkedCount += r.parkedCount;
    }
  }
  return total;
}

function addInto(into: Float64Array, from: ArrayLike<number>): void {
  for (let i = 0; i < into.length && i < from.length; i++) into[i] += from[i];
}

/**
 * A histogram whose buckets are read at scrape time from non-cumulative bucket counts
 * (index i counts values <= bounds[i]; the last entry counts values above every bound).
 * It implements what {@link Registry} reads from a metric; it cannot be observed into.
 */
export class ScrapedHistogram {
  readonly type = 'histogram' as const;
  /** Summed over cluster workers, like prom-client's histograms. */
  readonly aggregator = 'sum' as const;
  readonly labelNames: string[] = [];

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly bounds: readonly number[],
    private readonly read: () => Promise<{ buckets: ArrayLike<number>; sum: number; count: number }>,
  ) {}

  /** The metric object a registry formats: cumulative `_bucket` lines, `_sum`, `_count`. */
  async get() {
    const { buckets, sum, count } = await this.read();
    const values: Array<{ metricName: string; labels: Record<string, string | number>; value: number }> = [];
    let cumulative = 0;
    this.bounds.forEach((le, i) => {
      cumulative += buckets[i] ?? 0;
      values.push({ metricName: `${this.name}_bucket`, labels: { le }, value: cumulative });
    });
    values.push({ metricName: `${this.name}_bucket`, labels: { le: '+Inf' }, value: count });
    values.push({ metricName: `${this.name}_sum`, labels: {}, value: sum });
    values.push({ metricName: `${this.name}_count`, labels: {}, value: count });
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** Nothing to reset: the values live in the counters. */
  reset(): void {}
}

/**
 * Creates the registry of a proxy over its counters. With a function (shards), it is called
 * once per scrape and the snapshots are summed; every metric of one scrape sees the same
 * numbers.
 */
export function createMetricsRegistry(counters: CounterSource, opts: MetricsRegistryOptions = {}): Registry {
  const registry = new Registry();
  const snapshot = scrapeSnapshot(counters);
  const registers = [registry];

  new Counter({
    name: 'agent_websocket_frames_total',
    help: 'WebSocket messages forwarded, by direction (in = client to upstream) and type.',
    labelNames: ['direction', 'type'],
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      for (const d of DIRECTIONS) for (const k of FRAME_KINDS) this.inc({ direction: d, type: k }, c.frames[d][k]);
    },
  });
  new Counter({
    name: 'agent_websocket_frame_bytes_total',
    help: 'Payload bytes of WebSocket messages forwarded, by direction.',
    labelNames: ['direction'],
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      for (const d of DIRECTIONS) this.inc({ direction: d }, c.frameBytes[d]);
    },
  });
  new Counter({
    name: 'agent_websocket_dropped_frames_total',
    help: 'Messages dropped, by reason (backpressure under the drop policy, too_big).',
    labelNames: ['reason'],
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      for (const [reason, n] of Object.entries(c.dropped)) this.inc({ reason }, n);
    },
  });
  new Counter({
    name: 'agent_websocket_backpressure_events_total',
    help: 'Sustained backpressure events (a channel above its threshold for the whole window).',
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      this.inc(c.backpressureEvents);
    },
  });
  new Counter({
    name: 'agent_websocket_envelope_errors_total',
    help: 'Error frames received from envelope clients.',
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      this.inc(c.envelopeErrors);
    },
  });
  new Gauge({
    name: 'agent_websocket_active_sessions',
    help: 'WebSocket sessions open now.',
    registers,
    async collect() {
      this.set((await snapshot()).activeSessions);
    },
  });
  new Counter({
    name: 'agent_websocket_sessions_total',
    help: 'WebSocket sessions opened.',
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      this.inc(c.sessionsTotal);
    },
  });
  new Counter({
    name: 'agent_websocket_session_close_total',
    help: 'WebSocket sessions closed, by the close code the client side ended with.',
    labelNames: ['code'],
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      for (const [code, n] of Object.entries(c.closes)) this.inc({ code }, n);
    },
  });
  new Counter({
    name: 'agent_websocket_shard_restarts_total',
    help: 'Shards (worker threads) restarted after a crash.',
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      this.inc(c.shardRestarts);
    },
  });
  new Counter({
    name: 'sluice_http_requests_total',
    help: 'Plain HTTP requests (not upgrades) answered, by route path ("" when none matched) and the status the client got.',
    labelNames: ['route', 'status'],
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      for (const [route, byStatus] of Object.entries(c.httpRequests)) {
        for (const [status, n] of Object.entries(byStatus)) this.inc({ route, status }, n);
      }
    },
  });

  // The registry reads name, help, type, aggregator and get() (and reset() on resetMetrics()),
  // which ScrapedHistogram has; prom-client's typings only list its own classes.
  registry.registerMetric(new ScrapedHistogram(
    'agent_websocket_frame_bytes_histogram',
    'Sizes of WebSocket messages forwarded, in bytes.',
    FRAME_BYTES_BUCKETS,
    async () => {
      const c = await snapshot();
      return { buckets: c.frameBytesBuckets, sum: c.frameBytesSum, count: c.frameBytesCount };
    },
  ) as unknown as Metric);
  registry.registerMetric(new ScrapedHistogram(
    'agent_websocket_session_duration_seconds',
    'How long WebSocket sessions lasted, in seconds.',
    SESSION_SECONDS_BUCKETS,
    async () => {
      const c = await snapshot();
      return { buckets: c.sessionSecondsBuckets, sum: c.sessionSecondsSum, count: c.sessionSecondsCount };
    },
  ) as unknown as Metric);

  new Gauge({
    name: 'sluice_sessions_parked',
    help: 'Resumable sessions whose client is gone: the upstream is kept, its messages held, until the client resumes or the grace runs out.',
    registers,
    async collect() {
      this.set((await snapshot()).resume.parked);
    },
  });
  new Counter({
    name: 'sluice_resumes_total',
    help: 'Resume attempts (a handshake with Sluice-Resume), by outcome: resumed, or why continuity was lost (unknown, expired, foreign, route, behind, ahead).',
    labelNames: ['outcome'],
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      for (const [outcome, n] of Object.entries(c.resume.outcomes)) this.inc({ outcome }, n);
    },
  });
  new Counter({
    name: 'sluice_replayed_frames_total',
    help: 'Upstream messages sent again to a client that resumed (it had not received them).',
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      this.inc(c.resume.replayedFrames);
    },
  });
  new Counter({
    name: 'sluice_replayed_bytes_total',
    help: 'Payload bytes of the upstream messages replayed to clients that resumed.',
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      this.inc(c.resume.replayedBytes);
    },
  });
  new Gauge({
    name: 'sluice_resume_buffered_bytes',
    help: 'Payload bytes held in replay buffers now: upstream messages kept until their client acknowledges them (at most routes[].resume.bufferBytes per session, plus one read).',
    registers,
    async collect() {
      this.set((await snapshot()).resume.buffered);
    },
  });
  new Counter({
    name: 'sluice_resume_relays_total',
    help: 'Resumes that reached a shard other than the one holding their session, relayed there.',
    registers,
    async collect() {
      const c = await snapshot();
      this.reset();
      this.inc(c.resume.relayed);
    },
  });
  registry.registerMetric(new ScrapedHistogram(
    'sluice_parked_seconds',
    'How long sessions stayed parked (their client gone), until it resumed or the grace ran out.',
    PARKED_SECONDS_BUCKETS,
    async () => {
      const r = (await snapshot()).resume;
      return { buckets: r.parkedBuckets, sum: r.parkedSum, count: r.parkedCount };
    },
  ) as unknown as Metric);

  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  return registry;
}

/**
 * Reads the counters once per scrape. A registry calls every metric's get() (and so its
 * collect) in one synchronous pass, so the snapshot is shared until the next microtask: one
 * call to the shards per scrape, one consistent set of numbers across the metrics of a
 * scrape, and a fresh read for the next scrape.
 */
function scrapeSnapshot(source: CounterSource): () => Promise<CounterSnapshot> {
  if (typeof source !== 'function') {
    // Counters kept natively (the engine's) are folded in at scrape time.
    return () => {
      (source as Partial<ProxyCounters>).sync?.();
      return Promise.resolve(source);
    };
  }
  let current: Promise<CounterSnapshot> | undefined;
  return () => {
    if (current === undefined) {
      current = Promise.resolve().then(source).then(sumCounters);
      queueMicrotask(() => { current = undefined; });
    }
    return current;
  };
}
