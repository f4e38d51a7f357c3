/**
 * Resume on envelope routes (docs/protocols.md "Resume"): the pieces a session needs to survive its
 * client's network, apart from the engine that carries its frames.
 *
 * - Tokens: 128 random bits, base64url, after a routing prefix `<shard>.` that names the
 *   shard holding the session (a resume that lands on another shard is relayed there),
 *   and with a cluster a suffix `.<instanceId>` (a resume that lands on another instance
 *   is relayed there). Clients treat the whole string as opaque.
 * - `Sluice-Resume: <token>; received=<N>`: the header a resuming client sends.
 * - The replay buffer: upstream messages the client has not acknowledged, in order,
 *   numbered implicitly from 1 (the n-th data frame sent to the client is number n).
 * - The registry of live tokens of one proxy (one shard).
 */
import { randomBytes } from 'node:crypto';

/** The handshake header a resuming client sends. */
export const RESUME_HEADER = 'sluice-resume';

/** A new token for a session held by shard `shard`. */
export function newResumeToken(shard: number, instance: string | null = null): string {
  const token = `${shard}.${randomBytes(16).toString('base64url')}`;
  return instance === null ? token : `${token}.${Buffer.from(instance).toString('base64url')}`;
}

/** The cluster instance a token names, or null (no cluster when it was made). */
export function tokenInstance(token: string): string | null {
  const parts = token.split('.');
  return parts.length === 3 ? Buffer.from(parts[2], 'base64url').toString() : null;
}

/** The shard a token names, or -1 when it names none (malformed). */
export function tokenShard(token: string): number {
  const dot = token.indexOf('.');
  if (dot < 1 || dot > 4) return -1;
  const n = Number(token.slice(0, dot));
  return Number.isInteger(n) && n >= 0 ? n : -1;
}

const HEADER_FORM = /^\s*([0-9]{1,4}\.[A-Za-z0-9_-]{22}(?:\.[A-Za-z0-9_-]{1,172})?)\s*;\s*received\s*=\s*([0-9]{1,15})\s*$/;

/** `<token>; received=<N>` parsed, or null when it is not that. */
export function parseResumeHeader(value: string): { token: string; received: number } | null {
  const m = HEADER_FORM.exec(value);
  if (m === null) return null;
  return { token: m[1], received: Number(m[2]) };
}

/**
 * Upstream messages sent (or to be sent) to the client and not yet acknowledged by it.
 * `sent` is the number of the last one; the buffer holds numbers `acked + 1 .. sent`.
 * Payloads are copies (the engine's read buffers are reused).
 */
export class ReplayBuffer {
  private items: Buffer[] = [];
  /** Index in `items` of message number acked + 1. */
  private head = 0;
  /** Messages numbered so far (the last one's number). */
  sent = 0;
  /** Messages the client said it has (released). */
  acked = 0;
  /** Payload bytes held. */
  bytes = 0;

  /** Keep `payload` as the next message; returns its number. */
  push(payload: Buffer): number {
    this.items.push(payload);
    this.bytes += payload.length;
    return ++this.sent;
  }

  /**
   * The client has every message up to `n`: release them. Returns false when `n` is not
   * a number this buffer can take (beyond what was sent); a number below what was already
   * acknowledged is a no-op (acks may cross).
   */
  ack(n: number): boolean {
    if (!Number.isSafeInteger(n) || n < 0 || n > this.sent) return false;
    while (this.acked < n) {
      const b = this.items[this.head];
      this.items[this.head] = EMPTY;
      this.head++;
      this.bytes -= b.length;
      this.acked++;
    }
    // Compact now and then, so the array does not grow without end.
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return true;
  }

  /** The messages after `n` (n >= acked), in order. */
  *after(n: number): Generator<Buffer> {
    for (let i = this.head + (n - this.acked); i < this.items.length; i++) yield this.items[i];
  }

  clear(): void {
    this.items = [];
    this.head = 0;
    this.bytes = 0;
  }
}

const EMPTY = Buffer.alloc(0);

/** Why a resume could not continue a session (`{"resumed":false,"reason":...}` and the metric's outcome). */
export type ResumeRefusal = 'unknown' | 'expired' | 'foreign' | 'route' | 'behind' | 'ahead' | 'malformed';

/** The words a client gets for each refusal. */
export const REFUSAL_TEXT: Readonly<Record<ResumeRefusal, string>> = {
  unknown: 'unknown token',
  expired: 'the session ended (its grace ran out, or it was closed)',
  foreign: 'the token belongs to other credentials',
  route: 'the token belongs to another route',
  behind: 'received is below what was already acknowledged',
  ahead: 'received is beyond what was sent',
  malformed: 'malformed Sluice-Resume header (expected "<token>; received=<N>")',
};

/**
 * Tokens of one proxy. A token stays known after its session ends, for a while, so that a
 * late client hears "expired" rather than "unknown" (bounded: at most `MAX_DEAD` kept).
 */
export class ResumeRegistry<S> {
  private readonly live = new Map<string, S>();
  private readonly dead = new Set<string>();
  private static readonly MAX_DEAD = 10_000;

  add(token: string, session: S): void {
    this.live.set(token, session);
  }

  get(token: string): S | undefined {
    return this.live.get(token);
  }

  /** The session ended: its token is dead. */
  end(token: string): void {
    if (!this.live.delete(token)) return;
    this.dead.add(token);
    if (this.dead.size > ResumeRegistry.MAX_DEAD) this.dead.delete(this.dead.values().next().value!);
  }

  wasKnown(token: string): boolean {
    return this.dead.has(token);
  }

  get size(): number {
    return this.live.size;
  }
}
