/**
 * Hot-path counters: plain numbers bumped by sessions, read by prom-client's collect
 * callbacks at scrape time (DESIGN "Metrics"). No prom-client call sits on the
 * per-message path. One instance per proxy (per shard); shards' snapshots are summed.
 */

/** Message types counted in agent_websocket_frames_total{type}. */
export type FrameKind = 'text' | 'binary' | 'ping' | 'pong' | 'close';
/** `in` = client → upstream, `out` = upstream → client. */
export type Direction = 'in' | 'out';

/** Histogram bucket upper bounds (bytes) of agent_websocket_frame_bytes_histogram. */
export const FRAME_BYTES_BUCKETS: readonly number[] = [64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304];
/** Histogram bucket upper bounds (seconds) of agent_websocket_session_duration_seconds. */
export const SESSION_SECONDS_BUCKETS: readonly number[] = [0.1, 1, 10, 60, 300, 1800, 3600, 21600, 86400];

/** Histogram bucket upper bounds (seconds) of sluice_parked_seconds: how long a session waited for its client. */
export const PARKED_SECONDS_BUCKETS: readonly number[] = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 300];

/** Resume on envelope routes (docs/protocols.md "Resume"): parked sessions, resumes by outcome, replays. */
export interface ResumeCounters {
  /** Sessions parked now (their client gone, the upstream kept). */
  parked: number;
  /** Resume attempts by outcome: resumed, or why continuity was lost (unknown, expired, foreign, ...). */
  outcomes: Record<string, number>;
  /** Upstream messages sent again to a client that came back, and their payload bytes. */
  replayedFrames: number;
  replayedBytes: number;
  /** Resumes this shard relayed to the shard holding their session. */
  relayed: number;
  /** Payload bytes in replay buffers now (upstream messages kept until the client acknowledges them). */
  buffered: number;
  /** How long parks lasted (ended by a resume or by the grace running out). */
  parkedBuckets: Float64Array;
  parkedSum: number;
  parkedCount: number;
}

export function newResumeCounters(): ResumeCounters {
  return { parked: 0, outcomes: {}, replayedFrames: 0, replayedBytes: 0, relayed: 0, buffered: 0, parkedBuckets: new Float64Array(PARKED_SECONDS_BUCKETS.length + 1), parkedSum: 0, parkedCount: 0 };
}

/** One observation into cumulative-free histogram buckets (index i: values <= bounds[i]; last: +Inf). */
function countInBucket(buckets: Float64Array, bounds: readonly number[], value: number): void {
  let i = 0;
  while (i < bounds.length && value > bounds[i]) i++;
  buckets[i]++;
}

/** Counter slots of the native engine (native/engine/engine.h `slot`). */
export const NATIVE_SLOTS = 27;
const NATIVE_KINDS: readonly FrameKind[] = ['text', 'binary', 'ping', 'pong', 'close'];

export class ProxyCounters {
  /** frames[direction][kind] */
  readonly frames: Record<Direction, Record<FrameKind, number>> = {
    in: { text: 0, binary: 0, ping: 0, pong: 0, close: 0 },
    out: { text: 0, binary: 0, ping: 0, pong: 0, close: 0 },
  };
  readonly frameBytes: Record<Direction, number> = { in: 0, out: 0 };
  /** Cumulative-free bucket counts (index i counts sizes <= FRAME_BYTES_BUCKETS[i]; last = +Inf). */
  readonly frameBytesBuckets: Float64Array = new Float64Array(FRAME_BYTES_BUCKETS.length + 1);
  frameBytesSum = 0;
  frameBytesCount = 0;
  /** dropped[reason] */
  readonly dropped: Record<string, number> = { backpressure: 0, too_big: 0 };
  backpressureEvents = 0;
  /** Error frames received from envelope clients. */
  envelopeErrors = 0;
  readonly sessionSecondsBuckets: Float64Array = new Float64Array(SESSION_SECONDS_BUCKETS.length + 1);
  sessionSecondsSum = 0;
  sessionSecondsCount = 0;
  activeSessions = 0;
  sessionsTotal = 0;
  /** closes[code] — the close code the client side ended with. */
  readonly closes: Record<string, number> = {};
  shardRestarts = 0;
  readonly resume: ResumeCounters = newResumeCounters();
  /**
   * Plain HTTP requests answered (not upgrades): httpRequests[route path][status], route ""
   * when no route matched (sluice_http_requests_total).
   */
  readonly httpRequests: Record<string, Record<string, number>> = {};

  /** Count one forwarded message of any kind (control frames; keyed access, not for data). */
  message(direction: Direction, kind: FrameKind, bytes: number): void {
    this.frames[direction][kind]++;
    this.frameBytes[direction] += bytes;
    this.bytes(bytes);
  }

  /**
   * Count one data message client → upstream. The data paths use these four methods with
   * fixed property names: `frames[direction][kind]` with variable keys made V8's keyed
   * loads megamorphic (perf on the 64 B echo: KeyedLoad/StoreIC_Megamorphic ~1.6 %).
   */
  dataIn(binary: boolean, bytes: number): void {
    const f = this.frames.in;
    if (binary) f.binary++;
    else f.text++;
    this.frameBytes.in += bytes;
    this.bytes(bytes);
  }

  /** Count one data message upstream → client. */
  dataOut(binary: boolean, bytes: number): void {
    const f = this.frames.out;
    if (binary) f.binary++;
    else f.text++;
    this.frameBytes.out += bytes;
    this.bytes(bytes);
  }

  private bytes(bytes: number): void {
    this.frameBytesSum += bytes;
    this.frameBytesCount++;
    let i = 0;
    const b = FRAME_BYTES_BUCKETS;
    while (i < b.length && bytes > b[i]) i++;
    this.frameBytesBuckets[i]++;
  }

  /** Native counter arrays (the engine's) and what was folded in last; a # field, so that posting the counters to another thread leaves it behind. */
  readonly #nativeSources: Array<{ read: () => Float64Array; last: Float64Array }> = [];

  /**
   * Counts kept in native memory: `read()` returns the engine's counter slots (layout of
   * native/engine/engine.h `slot`), folded into these fields by {@link sync}.
   */
  attachNative(read: () => Float64Array): void {
    this.#nativeSources.push({ read, last: new Float64Array(NATIVE_SLOTS) });
  }

  /** Fold what native engines counted since the last call into these fields (at scrape time). */
  sync(): void {
    for (const src of this.#nativeSources) {
      const now = src.read();
      const last = src.last;
      for (let i = 0; i < NATIVE_SLOTS; i++) {
        const d = now[i] - last[i];
        if (d !== 0) this.addNative(i, d);
      }
      last.set(now.subarray(0, NATIVE_SLOTS));
    }
  }

  private addNative(slot: number, d: number): void {
    if (slot < 10) {
      const dir: Direction = slot < 5 ? 'in' : 'out';
      this.frames[dir][NATIVE_KINDS[slot % 5]] += d;
    } else if (slot === 10) this.frameBytes.in += d;
    else if (slot === 11) this.frameBytes.out += d;
    else if (slot < 22) this.frameBytesBuckets[slot - 12] += d;
    else if (slot === 22) this.frameBytesSum += d;
    else if (slot === 23) this.frameBytesCount += d;
    else if (slot === 24) this.dropped.backpressure += d;
    else if (slot === 25) this.dropped.too_big += d;
    else if (slot === 26) this.backpressureEvents += d;
  }

  /** Count one plain HTTP request by the route it matched ("" for none) and the status its client got. */
  httpRequest(route: string, status: number): void {
    const byStatus = this.httpRequests[route] ?? (this.httpRequests[route] = {});
    const key = String(status);
    byStatus[key] = (byStatus[key] ?? 0) + 1;
  }

  /** A park ended after `seconds` (the client came back, or the grace ran out). */
  parkEnded(seconds: number): void {
    const r = this.resume;
    r.parked--;
    r.parkedSum += seconds;
    r.parkedCount++;
    countInBucket(r.parkedBuckets, PARKED_SECONDS_BUCKETS, seconds);
  }

  resumeOutcome(outcome: string): void {
    this.resume.outcomes[outcome] = (this.resume.outcomes[outcome] ?? 0) + 1;
  }

  sessionOpened(): void {
    this.activeSessions++;
    this.sessionsTotal++;
  }

  sessionClosed(code: number, seconds: number): void {
    this.activeSessions--;
    const key = String(code);
    this.closes[key] = (this.closes[key] ?? 0) + 1;
    this.sessionSecondsSum += seconds;
    this.sessionSecondsCount++;
    countInBucket(this.sessionSecondsBuckets, SESSION_SECONDS_BUCKETS, seconds);
  }
}
