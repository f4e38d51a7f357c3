/**
 * Upstreams of one route and how a new session picks one: smooth weighted round robin
 * (nginx's algorithm), least connections (live sessions / weight), ip hash and header
 * hash (sticky). Passive health: an upstream whose dial fails is held out for a cool-off.
 */
import type { BalanceStrategy, UpstreamConfig } from '../config/types.js';

/** One upstream endpoint and its live state. */
export class Upstream {
  readonly url: URL;
  readonly href: string;
  readonly weight: number;
  /** Live sessions on this upstream (least_conn reads it; survives reloads). */
  sessions = 0;
  /** Held out until this time (ms since epoch) after a failure; 0 = healthy. */
  downUntil = 0;
  /** Last failure reason, for /stats and /readyz. */
  lastError = '';
  /** Smooth weighted round robin state. */
  current = 0;
  failures = 0;
  /** Through a tunnel agent: its name and the service; null for a URL upstream. */
  readonly agent: { name: string; service: string } | null;

  constructor(cfg: UpstreamConfig) {
    this.url = new URL(cfg.url);
    this.agent = cfg.agent !== undefined && cfg.service !== undefined ? { name: cfg.agent, service: cfg.service } : null;
    // Shown in /stats and logs: an agent upstream by its agent, service and path.
    this.href = this.agent !== null ? `agent:${this.agent.name}/${this.agent.service}${this.url.pathname}${this.url.search}` : cfg.url;
    this.weight = cfg.weight;
  }

  healthy(now: number): boolean {
    return this.downUntil <= now;
  }
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Picks upstreams for one route. */
export class Balancer {
  readonly upstreams: Upstream[];
  readonly strategy: BalanceStrategy;
  /** Lower-cased header name for `header:<name>`. */
  readonly hashHeader: string;
  /** Upstreams an operator drains: no new sessions go to them (kept across reloads by the proxy). */
  readonly drained = new Set<Upstream>();

  constructor(upstreams: Upstream[], strategy: BalanceStrategy) {
    this.upstreams = upstreams;
    this.strategy = strategy;
    this.hashHeader = strategy.startsWith('header:') ? strategy.slice(7).toLowerCase() : '';
  }

  /**
   * The order in which to try upstreams for a new session: the strategy's pick first,
   * then the other healthy ones (for the bounded retry on connect failure), then, when
   * every upstream is held out, all of them (a cool-off must not turn into an outage).
   * Drained upstreams are never picked: with every upstream drained the list is empty.
   */
  order(clientIp: string, headerValue: string, now: number, maxTries: number): Upstream[] {
    const open = this.drained.size === 0 ? this.upstreams : this.upstreams.filter((u) => !this.drained.has(u));
    if (open.length === 0) return [];
    const healthy = open.filter((u) => u.healthy(now));
    const pool = healthy.length > 0 ? healthy : open;
    const first = this.pick(pool, clientIp, headerValue);
    const out = [first];
    if (maxTries > 1) {
      // The rest in a rotation after `first`, so retries spread too.
      const start = pool.indexOf(first);
      for (let i = 1; i < pool.length && out.length < maxTries; i++) out.push(pool[(start + i) % pool.length]);
    }
    return out;
  }

  private pick(pool: Upstream[], clientIp: string, headerValue: string): Upstream {
    if (pool.length === 1) return pool[0];
    switch (this.strategy) {
      case 'least_conn': {
        let best = pool[0];
        for (const u of pool) if (u.sessions / u.weight < best.sessions / best.weight) best = u;
        return best;
      }
      case 'ip_hash':
        return this.byHash(pool, clientIp);
      case 'round_robin':
        return this.roundRobin(pool);
      default:
        // header:<name>; a request without the header is balanced round robin.
        return headerValue === '' ? this.roundRobin(pool) : this.byHash(pool, headerValue);
    }
  }

  private byHash(pool: Upstream[], key: string): Upstream {
    // Weighted: hash onto the cumulative weight line.
    let total = 0;
    for (const u of pool) total += u.weight;
    let point = fnv1a(key) % total;
    for (const u of pool) {
      if (point < u.weight) return u;
      point -= u.weight;
    }
    return pool[pool.length - 1];
  }

  private roundRobin(pool: Upstream[]): Upstream {
    let total = 0;
    let best = pool[0];
    for (const u of pool) {
      u.current += u.weight;
      total += u.weight;
      if (u.current > best.current) best = u;
    }
    best.current -= total;
    return best;
  }
}
