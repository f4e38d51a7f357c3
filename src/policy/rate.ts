/**
 * Rate limits: token buckets for new connections per client IP (429) and for messages and
 * bytes per connection (1008). All clocks are passed in (ms), so the proxy can use its
 * coarse clock and tests can use any time they like.
 */

/**
 * A token bucket: holds up to `burst` tokens, refilled at `ratePerSecond`. Starts full.
 * A clock that goes backwards refills nothing (and is not an error).
 */
export class TokenBucket {
  private readonly ratePerMs: number;
  private readonly burst: number;
  private tokens: number;
  private last = Number.NaN;

  constructor(ratePerSecond: number, burst: number) {
    this.ratePerMs = ratePerSecond / 1000;
    this.burst = burst;
    this.tokens = burst;
  }

  /** Takes `cost` tokens when that many are there; false (and nothing taken) otherwise. */
  take(cost: number, nowMs: number): boolean {
    this.refill(nowMs);
    if (this.tokens < cost) return false;
    this.tokens -= cost;
    return true;
  }

  private refill(nowMs: number): void {
    if (Number.isNaN(this.last)) {
      this.last = nowMs;
      return;
    }
    const elapsed = nowMs - this.last;
    if (elapsed <= 0) return;
    this.last = nowMs;
    const t = this.tokens + elapsed * this.ratePerMs;
    this.tokens = t > this.burst ? this.burst : t;
  }
}

/** How many client addresses the connection limiter remembers before it forgets the oldest. */
const DEFAULT_MAX_TRACKED_IPS = 65_536;

/**
 * New connections per client IP: one token bucket per address. Memory is bounded: past
 * `maxTrackedIps` addresses the one seen longest ago is forgotten (it starts again with a
 * full bucket, which only ever errs towards letting a client in). A rate of 0 allows all.
 */
export class ConnectionRateLimiter {
  private readonly rate: number;
  private readonly burst: number;
  private readonly maxTracked: number;
  /** Insertion order is recency order: an address is re-inserted each time it is seen. */
  private readonly buckets = new Map<string, TokenBucket>();

  /** `burst` 0 means one second's worth of `ratePerSecond` (at least 1). */
  constructor(ratePerSecond: number, burst: number, maxTrackedIps = DEFAULT_MAX_TRACKED_IPS) {
    this.rate = ratePerSecond;
    this.burst = burst > 0 ? burst : Math.max(1, Math.ceil(ratePerSecond));
    this.maxTracked = Math.max(1, maxTrackedIps);
  }

  /** True when `ip` may open one more connection now (and counts it). */
  allow(ip: string, nowMs: number): boolean {
    if (this.rate <= 0) return true;
    let bucket = this.buckets.get(ip);
    if (bucket !== undefined) {
      this.buckets.delete(ip);
    } else {
      if (this.buckets.size >= this.maxTracked) {
        const oldest = this.buckets.keys().next().value as string;
        this.buckets.delete(oldest);
      }
      bucket = new TokenBucket(this.rate, this.burst);
    }
    this.buckets.set(ip, bucket);
    return bucket.take(1, nowMs);
  }

  /** Addresses currently remembered (bounded by `maxTrackedIps`). */
  get trackedIps(): number {
    return this.buckets.size;
  }
}

/**
 * Messages and bytes per second on one connection. Each limit is a bucket holding one
 * second's worth. The byte bucket may go into debt: a message is let through whenever the
 * balance is positive and its size is then taken in full, so a message bigger than one
 * second's budget is not refused for ever, yet the average stays at the rate (the debt is
 * paid back before the next message passes). 0 turns a limit off.
 *
 * Called per client message: plain number fields, no allocation.
 */
export class MessageRateLimiter {
  private readonly msgRatePerMs: number;
  private readonly msgBurst: number;
  private readonly byteRatePerMs: number;
  private readonly byteBurst: number;
  private msgTokens: number;
  private byteTokens: number;
  private last = -1;

  constructor(messagesPerSecond: number, bytesPerSecond: number) {
    this.msgRatePerMs = messagesPerSecond / 1000;
    this.msgBurst = messagesPerSecond;
    this.byteRatePerMs = bytesPerSecond / 1000;
    this.byteBurst = bytesPerSecond;
    this.msgTokens = messagesPerSecond;
    this.byteTokens = bytesPerSecond;
  }

  /** True when a message of `bytes` bytes is within both rates (and counts it). */
  allow(bytes: number, nowMs: number): boolean {
    if (this.last < 0) this.last = nowMs;
    const elapsed = nowMs - this.last;
    if (elapsed > 0) {
      this.last = nowMs;
      if (this.msgBurst > 0) {
        const m = this.msgTokens + elapsed * this.msgRatePerMs;
        this.msgTokens = m > this.msgBurst ? this.msgBurst : m;
      }
      if (this.byteBurst > 0) {
        const b = this.byteTokens + elapsed * this.byteRatePerMs;
        this.byteTokens = b > this.byteBurst ? this.byteBurst : b;
      }
    }
    if (this.msgBurst > 0 && this.msgTokens < 1) return false;
    if (this.byteBurst > 0 && this.byteTokens <= 0) return false;
    if (this.msgBurst > 0) this.msgTokens -= 1;
    if (this.byteBurst > 0) this.byteTokens -= bytes;
    return true;
  }
}
