/**
 * Reconnect delays: exponential backoff with full jitter (the delay is uniform in
 * [0, min(maxDelayMs, initialDelayMs * 2^attempt)]), so that many agents cut off by one
 * proxy restart do not come back in lockstep. The attempt count is reset once a
 * connection has stayed up for the stable period.
 */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly initialDelayMs: number,
    private readonly maxDelayMs: number,
    private readonly random: () => number = Math.random,
  ) {}

  /** Attempts since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The delay before the next attempt, in ms; counts the attempt. */
  next(): number {
    // 2^attempt is capped before it can overflow to Infinity.
    const ceiling = Math.min(this.maxDelayMs, this.initialDelayMs * 2 ** Math.min(this.attempt, 52));
    this.attempt++;
    return Math.floor(this.random() * ceiling);
  }

  reset(): void {
    this.attempt = 0;
  }
}
