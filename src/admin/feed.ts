/**
 * The dashboard's feed (`GET /events`): server-sent events, one snapshot a second to every
 * open page. One timer and one snapshot serve every subscriber, and nothing runs while
 * no page is open, so the data plane pays nothing for a closed dashboard and the same for
 * one page or twenty. A page that does not read its stream misses snapshots (each is
 * whole) rather than piling them up here.
 */
import type { ServerResponse } from 'node:http';
import type { Logger } from '../log.js';
import type { CounterSnapshot } from '../metrics/index.js';
import type { ClosedSession } from '../proxy/session-control.js';

/** What the feed reads of the proxy (a subset of the admin server's target). */
export interface FeedSource {
  stats(): unknown;
  readonly ready: { ok: boolean; reasons: string[] };
  lastCloses(): ClosedSession[] | Promise<ClosedSession[]>;
  counterSnapshot(): CounterSnapshot | Promise<CounterSnapshot>;
  /** Both at once, where that is one round trip instead of two (the sharded proxy). */
  statsAndReady?(): { stats: unknown; ready: { ok: boolean; reasons: string[] } };
}

/** The running totals a page turns into rates (deltas between two snapshots). */
export interface FeedTotals {
  messagesIn: number;
  messagesOut: number;
  bytesIn: number;
  bytesOut: number;
  sessionsTotal: number;
  /** Sessions ended, by the close code the client side ended with. */
  closes: Record<string, number>;
  /** Messages dropped, by reason (backpressure, too_big). */
  dropped: Record<string, number>;
  backpressureEvents: number;
  shardRestarts: number;
}

/** One snapshot, as each `data:` line carries it. */
export interface FeedSnapshot {
  t: number;
  ready: { ok: boolean; reasons: string[] };
  stats: unknown;
  totals: FeedTotals;
  closed: ClosedSession[];
}

/** At most this many open streams (a page each): more get 503. */
const MAX_SUBSCRIBERS = 64;
/** A stream with this much still unsent skips snapshots until it drains. */
const SKIP_ABOVE_BYTES = 256 * 1024;
/** Closed sessions each snapshot carries. */
const CLOSED_SHOWN = 20;

export function feedTotals(c: CounterSnapshot): FeedTotals {
  return {
    messagesIn: c.frames.in.text + c.frames.in.binary,
    messagesOut: c.frames.out.text + c.frames.out.binary,
    bytesIn: c.frameBytes.in,
    bytesOut: c.frameBytes.out,
    sessionsTotal: c.sessionsTotal,
    closes: { ...c.closes },
    dropped: { ...c.dropped },
    backpressureEvents: c.backpressureEvents,
    shardRestarts: c.shardRestarts,
  };
}

export class DashboardFeed {
  private readonly subscribers = new Set<ServerResponse>();
  private timer: NodeJS.Timeout | null = null;
  private busy = false;

  constructor(private readonly source: FeedSource, private readonly intervalMs: number, private readonly logger?: Logger) {}

  /** Takes a `GET /events` request: false when there are too many streams already. */
  subscribe(res: ServerResponse): boolean {
    if (this.subscribers.size >= MAX_SUBSCRIBERS) return false;
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      // Proxies in between (sluice's own http routes stream anyway) should not buffer it.
      'X-Accel-Buffering': 'no',
    });
    res.write(`retry: ${Math.max(1000, this.intervalMs)}\n\n`);
    this.subscribers.add(res);
    const gone = () => {
      this.subscribers.delete(res);
      if (this.subscribers.size === 0 && this.timer !== null) {
        clearInterval(this.timer);
        this.timer = null;
      }
    };
    // The response's 'close' is the connection's end (a request's 'close' comes as soon as its empty body is read).
    res.on('close', gone);
    res.on('error', gone);
    if (this.timer === null) {
      this.timer = setInterval(() => void this.tick(), this.intervalMs);
      this.timer.unref();
    }
    void this.tick(res);
    return true;
  }

  /** Builds one snapshot and writes it to every subscriber (or only to `only`, a new one). */
  private async tick(only?: ServerResponse): Promise<void> {
    if (only === undefined) {
      if (this.busy) return; // the last one is still being gathered (slow shards): skip this beat
      this.busy = true;
    }
    try {
      const [counters, closed] = await Promise.all([this.source.counterSnapshot(), this.source.lastCloses()]);
      const now = this.source.statsAndReady?.() ?? { stats: this.source.stats(), ready: this.source.ready };
      const snapshot: FeedSnapshot = {
        t: Date.now(), ready: now.ready, stats: now.stats, totals: feedTotals(counters), closed: closed.slice(0, CLOSED_SHOWN),
      };
      const line = `data: ${JSON.stringify(snapshot)}\n\n`;
      for (const res of only !== undefined ? [only] : this.subscribers) {
        if (res.destroyed || !this.subscribers.has(res) || res.writableLength > SKIP_ABOVE_BYTES) continue;
        res.write(line);
      }
    } catch (err) {
      this.logger?.warn({ event: 'dashboard_feed_error', err }, 'the dashboard feed could not gather a snapshot');
    } finally {
      if (only === undefined) this.busy = false;
    }
  }

  /** Ends every stream and the timer (the admin server closes). */
  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    for (const res of this.subscribers) res.end();
    this.subscribers.clear();
  }
}
