/**
 * Several instances as one proxy (docs/operations.md "Scaling out"): what they share goes through
 * Redis, in one script call each, and nothing on the per-message path touches it.
 *
 * - Membership: each instance holds a lease (a sorted set of instance ids scored by when
 *   their lease ends, in Redis's clock), renewed every `leaseSeconds / 3`, with a line of
 *   what it carries (sessions, advertise address) beside it. An instance that stops
 *   renewing (SIGKILL, power) is gone when its lease ends.
 * - Places (`limits.maxConnections`, `routes[].maxConnections`): each instance reserves
 *   places in batches and hands them out locally, so an upgrade waits on Redis only when
 *   its instance's batch is used up. A reservation is set absolutely (idempotent: a retry
 *   or a reconciliation after an outage cannot drift), bounded by what the live
 *   instances hold; a dead instance's reservation stops counting with its lease. The sum
 *   of reservations never exceeds the bound; the slack is what instances hold unused:
 *   batches shrink to 1 place near the bound and surplus is given back at each session's
 *   end there, and at each lease renewal everywhere.
 * - Rates (`limits.connectionRatePerIp`, `routes[].auth.connectionRatePerSubject`): GCRA
 *   in one script call per upgrade, in Redis's clock.
 * - Redis away: every instance keeps serving under local limits (its share of the cluster
 *   bound by the last known instance count), says so once in the log, in `/readyz` and in
 *   `sluice_cluster_degraded`, and reconciles when Redis is back. No session is dropped.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { hostname } from 'node:os';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { ClusterConfig } from '../config/types.js';
import { ConnectionRateLimiter } from '../policy/index.js';

/** Renew the lease (score: its end, in Redis's clock), forget instances whose lease ended; the live ones with their lines. */
const LEASE_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(dead))
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i = 1, #live do
  out[#out + 1] = live[i]
  out[#out + 1] = redis.call('HGET', KEYS[2], live[i]) or ''
end
return out
`;

/**
 * Set this instance's reservation of one scope's places to ARGV[2] (absolute), but not
 * above what the live others leave of the bound ARGV[3], nor below ARGV[4] (places in use:
 * sessions are never dropped). Reservations of instances without a live lease are removed.
 * Returns { granted, what the others hold, live instances }.
 */
const RESERVE_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[2])
local others = 0
for i = 1, #all, 2 do
  local who = all[i]
  if who ~= ARGV[1] then
    local ends = redis.call('ZSCORE', KEYS[1], who)
    if ends and tonumber(ends) > now then
      others = others + tonumber(all[i + 1])
    else
      redis.call('HDEL', KEYS[2], who)
    end
  end
end
local grant = tonumber(ARGV[2])
local room = tonumber(ARGV[3]) - others
if grant > room then grant = room end
if grant < tonumber(ARGV[4]) then grant = tonumber(ARGV[4]) end
redis.call('HSET', KEYS[2], ARGV[1], grant)
return { grant, others, redis.call('ZCOUNT', KEYS[1], now, '+inf') }
`;

/**
 * GCRA on KEYS[1]: events ARGV[1] ms apart, ARGV[2] of them at once at most. Takes up to
 * ARGV[3] events now (as many as the rate allows); returns how many (0: none).
 */
const RATE_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local n = math.floor((tolerance - (tat - now)) / interval) + 1
if n > tonumber(ARGV[3]) then n = tonumber(ARGV[3]) end
if n <= 0 then return 0 end
local nextTat = tat + n * interval
redis.call('SET', KEYS[1], tostring(nextTat), 'PX', math.ceil(nextTat - now) + 1000)
return n
`;

/** Tokens taken from Redis beyond the one needed now are used for at most this long. */
const RATE_TOKENS_MS = 20;

/**
 * Claim agent name ARGV[1] for instance ARGV[2]: free, ours already, or held by an instance
 * whose lease ended → ours ({1}); held by a live instance → refused ({0, holder}) under
 * `refuse`, or taken over ({2, holder}) under `replace`.
 */
const CLAIM_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur and cur ~= ARGV[2] then
  local ends = redis.call('ZSCORE', KEYS[1], cur)
  if ends and tonumber(ends) > now then
    if ARGV[3] == 'refuse' then return { 0, cur } end
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
    return { 2, cur }
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return { 1, '' }
`;

/** Agent names whose holder's lease is live; the others are forgotten. */
const AGENTS_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[2])
local out = {}
for i = 1, #all, 2 do
  local ends = redis.call('ZSCORE', KEYS[1], all[i + 1])
  if ends and tonumber(ends) > now then out[#out + 1] = all[i] else redis.call('HDEL', KEYS[2], all[i]) end
end
return out
`;

/** Let go of agent name ARGV[1] if instance ARGV[2] holds it. */
const RELEASE_LUA = `
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
`;

/** The instance holding agent ARGV[1], if its lease is live: { id, its lease line }. */
const OWNER_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local who = redis.call('HGET', KEYS[2], ARGV[1])
if not who then return {} end
local ends = redis.call('ZSCORE', KEYS[1], who)
if not ends or tonumber(ends) <= now then return {} end
return { who, redis.call('HGET', KEYS[3], who) or '' }
`;

/** The path other instances ask for an agent stream on (answered only with the cluster's signature). */
export const AGENT_STREAM_PATH = '/_sluice/agent-stream';
/** How old a relay's signature may be. */
const SIGNATURE_MS = 30_000;

type ClusterRedis = Redis & {
  sluiceClaim(instances: string, agents: string, name: string, id: string, mode: string): Promise<[number, string]>;
  sluiceRelease(agents: string, name: string, id: string): Promise<number>;
  sluiceAgents(instances: string, agents: string): Promise<string[]>;
  sluiceOwner(instances: string, agents: string, lines: string, name: string): Promise<string[]>;
  sluiceLease(instances: string, lines: string, id: string, leaseMs: number, line: string): Promise<string[]>;
  sluiceReserve(instances: string, places: string, id: string, want: number, max: number, floor: number): Promise<[number, number, number]>;
  sluiceRate(key: string, intervalMs: number, burst: number, want: number): Promise<number>;
};

/** One instance as the cluster sees it. */
export interface ClusterInstance {
  id: string;
  self: boolean;
  advertise: string | null;
  sessions: number;
  startedAt: number;
}

/** What `/stats?cluster=1` shows. */
export interface ClusterStats {
  instanceId: string;
  degraded: boolean;
  /** Why, while degraded. */
  reason: string | null;
  instances: ClusterInstance[];
  /** Places per scope: this instance's reservation, how many it uses, the others' reservations, the bound. */
  places: Record<string, { reserved: number; used: number; others: number; max: number }>;
}

/** A refusal at admission: the status and the words the client gets. */
export interface Refusal {
  status: string;
  reason: string;
}

/** Places of one scope (the whole proxy, or one route) on this instance. */
export class Places {
  reserved = 0;
  used = 0;
  /** What the other live instances held at the last answer. */
  others = 0;
  private asking: Promise<void> | null = null;
  /** Takers waiting for Redis's answer (each needs a place). */
  private waiting = 0;
  /** The last answer gave less than asked: the cluster is at its bound. */
  private full = false;
  private trimTimer: NodeJS.Timeout | null = null;

  constructor(readonly scope: string, public max: number, private readonly cluster: Cluster) {}

  /** Places to ask for beyond what is used: 1 near the bound, up to 32 far from it. */
  batch(): number {
    const free = this.max - this.others - this.used;
    const live = Math.max(1, this.cluster.liveCount);
    return Math.max(1, Math.min(32, Math.floor(free / (4 * live))));
  }

  /** Take a place: from the reservation, or after asking Redis for a batch; false when the cluster is full. */
  async take(): Promise<boolean> {
    const c = this.cluster;
    if (c.degraded) {
      if (this.used >= c.localShare(this.max)) return false;
      this.used++;
      return true;
    }
    if (this.used < this.reserved) {
      this.used++;
      return true;
    }
    this.waiting++;
    try {
      // One request at a time per scope, for every taker waiting then (and a batch more);
      // a taker that came after it was sent asks again.
      for (let attempt = 0; attempt < 3; attempt++) {
        this.asking ??= this.reserve(this.used + this.waiting + this.batch() - 1).finally(() => { this.asking = null; });
        await this.asking;
        if (c.degraded) return this.take();
        if (this.used < this.reserved) {
          this.used++;
          return true;
        }
        if (this.full) return false;
      }
      return false;
    } finally {
      this.waiting--;
    }
  }

  /** A place is free again (a session ended, an upgrade failed). */
  give(): void {
    if (this.used > 0) this.used--;
    // Near the bound another instance may be waiting for exactly this place: hand it back soon.
    if (!this.cluster.degraded && this.reserved - this.used > this.batch() && this.trimTimer === null) {
      this.trimTimer = setTimeout(() => {
        this.trimTimer = null;
        void this.trim();
      }, 20);
      this.trimTimer.unref();
    }
  }

  /** Give back what is reserved beyond use and one batch (each lease renewal, and after releases). */
  async trim(): Promise<void> {
    if (this.cluster.degraded || this.asking !== null) return;
    const want = this.used + (this.batch() > 1 ? this.batch() : 0);
    if (this.reserved > want) await this.reserve(want).catch(() => {});
  }

  /** Set the reservation (absolute) to `want`, at least what is used. */
  async reserve(want: number, rethrow = false): Promise<void> {
    try {
      const [granted, others, live] = await this.cluster.redisReserve(this.scope, want, this.max, this.used);
      this.full = granted < want;
      this.reserved = granted;
      this.others = others;
      this.cluster.liveCount = live;
      // Places taken while the call was out (a trim's answer can be below them): Redis must count them.
      if (this.used > this.reserved) await this.reserve(this.used, rethrow);
    } catch (err) {
      if (rethrow) throw err;
      this.cluster.lost(err);
    }
  }

  stop(): void {
    if (this.trimTimer !== null) clearTimeout(this.trimTimer);
    this.trimTimer = null;
  }
}

/** This instance's membership of a cluster. */
export class Cluster {
  readonly id: string;
  readonly config: ClusterConfig;
  private readonly redis: ClusterRedis;
  private readonly logger: Logger;
  private readonly prefix: string;
  private readonly startedAt = Date.now();
  private renewTimer: NodeJS.Timeout | null = null;
  private readonly places = new Map<string, Places>();
  private instances: ClusterInstance[] = [];
  /** Live instances at the last answer (this one included); the local share while degraded divides by it. */
  liveCount = 1;
  degraded = false;
  private degradedReason: string | null = null;
  private stopped = false;
  /** Rate tokens taken from Redis and not used yet, by key (RATE_TOKENS_MS fresh). */
  private readonly rateTokens = new Map<string, { tokens: number; until: number }>();
  private readonly rateAsking = new Map<string, Promise<number>>();
  /** Local rate limiters while degraded, by rate and burst. */
  private readonly localRates = new Map<string, ConnectionRateLimiter>();
  /** What this instance carries, for its lease line. */
  private readonly sessions: () => number;

  constructor(config: ClusterConfig, logger: Logger, sessions: () => number) {
    this.config = config;
    this.id = config.instanceId ?? `${hostname()}-${process.pid}`;
    this.logger = logger;
    this.sessions = sessions;
    this.prefix = config.redis.keyPrefix;
    this.redis = new Redis(config.redis.url, {
      // A command while Redis is away fails at once (the instance goes on under local
      // limits) rather than waiting in a queue; the connection is retried forever.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: 2000,
      commandTimeout: 2000,
      retryStrategy: (n) => Math.min(100 * 2 ** Math.min(n, 5), 2000),
      lazyConnect: true,
    }) as ClusterRedis;
    this.redis.defineCommand('sluiceLease', { numberOfKeys: 2, lua: LEASE_LUA });
    this.redis.defineCommand('sluiceReserve', { numberOfKeys: 2, lua: RESERVE_LUA });
    this.redis.defineCommand('sluiceRate', { numberOfKeys: 1, lua: RATE_LUA });
    this.redis.defineCommand('sluiceClaim', { numberOfKeys: 2, lua: CLAIM_LUA });
    this.redis.defineCommand('sluiceRelease', { numberOfKeys: 1, lua: RELEASE_LUA });
    this.redis.defineCommand('sluiceAgents', { numberOfKeys: 2, lua: AGENTS_LUA });
    this.redis.defineCommand('sluiceOwner', { numberOfKeys: 3, lua: OWNER_LUA });
    this.redis.on('error', (err: Error) => this.lost(err));
    this.redis.on('ready', () => void this.reconcile());
  }

  /** Connect and take the first lease; an unreachable Redis starts the instance degraded (it serves). */
  async start(): Promise<void> {
    try {
      await this.redis.connect();
      await this.renew();
    } catch (err) {
      this.lost(err);
    }
    await this.subscribe();
    const every = (this.config.leaseSeconds * 1000) / 3;
    // While degraded the timer tries to reconcile (a failed call leaves the connection up:
    // no 'ready' event would come).
    this.renewTimer = setInterval(() => {
      if (this.degraded) void this.reconcile();
      else void this.renew().catch((err: unknown) => this.lost(err));
    }, every);
    this.renewTimer.unref();
  }

  /** Give the lease back (other instances see the places free at once) and disconnect. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.renewTimer !== null) clearInterval(this.renewTimer);
    this.renewTimer = null;
    for (const p of this.places.values()) p.stop();
    if (!this.degraded) {
      try {
        const multi = this.redis.multi().zrem(this.key('instances'), this.id).hdel(this.key('lines'), this.id);
        for (const scope of this.places.keys()) multi.hdel(this.key(`places:${scope}`), this.id);
        await multi.exec();
      } catch { /* gone with the lease */ }
    }
    this.sub?.disconnect();
    this.redis.disconnect();
  }

  // ---- agents (tunnels): which instance holds which agent, streams relayed to it

  /** Agent names some instance held at the last renewal (readiness of tunnels and agent upstreams). */
  private agentNames = new Set<string>();

  hasAgent(name: string): boolean {
    return !this.degraded && this.agentNames.has(name);
  }

  /** Called when another instance took over an agent this one holds (`replace`). */
  onAgentReplaced: ((name: string, by: string) => void) | null = null;
  private sub: Redis | null = null;

  /** Replacements are told on a channel (a second connection: a subscribed one does nothing else). */
  private async subscribe(): Promise<void> {
    // Its own connection (a subscribed one does nothing else), subscribing at each 'ready':
    // a subscription refused while Redis was away is not renewed by ioredis by itself.
    const sub = this.redis.duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: null });
    this.sub = sub;
    sub.on('error', () => {}); // the main connection reports Redis being away
    sub.on('ready', () => { sub.subscribe(this.key('agents:replaced'), this.key('reload')).catch(() => {}); });
    sub.on('message', (channel: string, text: string) => {
      let m: { name?: string; by?: string; on?: string; from?: string };
      try { m = JSON.parse(text) as typeof m; } catch { return; }
      if (channel === this.key('reload')) {
        if (typeof m.from === 'string' && m.from !== this.id) this.onReloadAsked?.(m.from);
        return;
      }
      if (m.on === this.id && typeof m.name === 'string' && typeof m.by === 'string') this.onAgentReplaced?.(m.name, m.by);
    });
    await sub.connect().catch(() => {});
  }

  /** Another instance asks every instance to re-read its config (a cluster-wide reload). */
  onReloadAsked: ((from: string) => void) | null = null;

  /** Ask every other instance to re-read its config; resolves with how many heard it (Redis away: an error). */
  async broadcastReload(): Promise<number> {
    if (this.degraded) throw new Error('Redis is unreachable: the other instances were not told');
    // The subscriber count includes this instance's own subscription.
    return Math.max(0, Number(await this.redis.publish(this.key('reload'), JSON.stringify({ from: this.id, at: Date.now() }))) - 1);
  }

  /**
   * An agent named `name` registers here: null when it may (the name is now this
   * instance's), else why not (another live instance holds it and the route says refuse).
   * While Redis is away the name is claimed locally only.
   */
  async claimAgent(name: string, duplicate: 'replace' | 'refuse', rethrow = false): Promise<string | null> {
    if (this.degraded && !rethrow) return null;
    try {
      const [result, holder] = await this.redis.sluiceClaim(this.key('instances'), this.key('agents'), name, this.id, duplicate);
      if (Number(result) === 0) return `agent "${name}" is already connected (to instance ${holder})`;
      if (Number(result) === 2) {
        this.logger.info({ event: 'agent_taken_over', agent: name, from: holder }, 'agent taken over from another instance');
        await this.redis.publish(this.key('agents:replaced'), JSON.stringify({ name, by: this.id, on: holder }));
      }
    } catch (err) {
      if (rethrow) throw err;
      this.lost(err);
    }
    return null;
  }

  /** The agent names this instance holds (set by the proxy: its registry). */
  localAgents: () => string[] = () => [];

  /** The agent left this instance: the name is free (unless another instance took it meanwhile). */
  releaseAgent(name: string): void {
    if (this.degraded || this.stopped) return;
    this.redis.sluiceRelease(this.key('agents'), name, this.id).catch((err: unknown) => this.lost(err));
  }

  /** The instance that holds agent `name` and how to reach it, or null. */
  async agentOwner(name: string): Promise<{ id: string; advertise: string | null } | null> {
    if (this.degraded) return null;
    try {
      const r = await this.redis.sluiceOwner(this.key('instances'), this.key('agents'), this.key('lines'), name);
      if (r.length < 2 || r[0] === this.id) return null;
      let advertise: string | null = null;
      try { advertise = (JSON.parse(r[1]) as { advertise?: string | null }).advertise ?? null; } catch { /* no line */ }
      return { id: r[0], advertise };
    } catch (err) {
      this.lost(err);
      return null;
    }
  }

  /** How to reach instance `id` (its advertise address at the last renewal), or null. */
  advertiseOf(id: string): string | null {
    return this.instances.find((i) => i.id === id)?.advertise ?? null;
  }

  /**
   * The `Sluice-Cluster` header of a relay from this instance to instance `target`: what it
   * is for (`purpose`, `fields`), when, and a nonce, under an HMAC with `cluster.secret`.
   */
  sign(purpose: 'agent-stream' | 'resume', target: string, fields: string[]): string {
    const ts = Date.now();
    const nonce = randomBytes(12).toString('base64url');
    return `${this.id} ${ts} ${nonce} ${this.mac(purpose, target, this.id, ts, nonce, fields)}`;
  }

  /**
   * Whether `header` was made by an instance of this cluster for this instance, for
   * `purpose` and `fields`, within SIGNATURE_MS (the instances' clocks must agree that
   * closely), and not seen before (a captured header cannot be used again).
   */
  verify(header: string, purpose: 'agent-stream' | 'resume', fields: string[]): boolean {
    const [from, tsText, nonce, mac] = header.split(' ');
    const ts = Number(tsText);
    const now = Date.now();
    if (from === undefined || nonce === undefined || mac === undefined || !Number.isFinite(ts) || Math.abs(now - ts) > SIGNATURE_MS) return false;
    const want = Buffer.from(this.mac(purpose, this.id, from, ts, nonce, fields));
    const got = Buffer.from(mac);
    if (got.length !== want.length || !timingSafeEqual(got, want)) return false;
    for (const [n, until] of this.nonces) {
      if (until > now) break;
      this.nonces.delete(n);
    }
    if (this.nonces.has(nonce)) return false;
    this.nonces.set(nonce, now + 2 * SIGNATURE_MS);
    return true;
  }

  /** Nonces of relays accepted in the last 2 × SIGNATURE_MS, oldest first. */
  private readonly nonces = new Map<string, number>();

  private mac(purpose: string, target: string, from: string, ts: number, nonce: string, fields: string[]): string {
    return createHmac('sha256', this.config.secret).update([purpose, target, from, String(ts), nonce, ...fields].join('\n')).digest('hex');
  }

  private key(name: string): string {
    return `${this.prefix}${name}`;
  }

  /** The places of a scope (`global`, or `route:<key>`), with its bound (a reload may change it). */
  scope(name: string, max: number): Places {
    let p = this.places.get(name);
    if (p === undefined) {
      p = new Places(name, max, this);
      this.places.set(name, p);
    }
    p.max = max;
    return p;
  }

  /** This instance's share of a bound while Redis is away. */
  localShare(max: number): number {
    return Math.max(1, Math.ceil(max / Math.max(1, this.liveCount)));
  }

  redisReserve(scope: string, want: number, max: number, floor: number): Promise<[number, number, number]> {
    return this.redis.sluiceReserve(this.key('instances'), this.key(`places:${scope}`), this.id, want, max, floor)
      .then((r) => [Number(r[0]), Number(r[1]), Number(r[2])]);
  }

  /**
   * One more connection for `key` at `ratePerSecond` (`burst` at once): GCRA in Redis, or
   * while it is away this instance's share of the rate, locally.
   */
  async rateAllows(key: string, ratePerSecond: number, burst: number): Promise<boolean> {
    const b = burst > 0 ? burst : Math.max(1, Math.ceil(ratePerSecond));
    if (!this.degraded) {
      // Tokens left from the last call for this key, if still fresh: no Redis call. A call
      // in flight for the key is waited for (its tokens may serve this one too).
      const now = Date.now();
      for (let i = 0; i < 2; i++) {
        const held = this.rateTokens.get(key);
        if (held !== undefined && held.until > now && held.tokens > 0) {
          held.tokens--;
          return true;
        }
        const asking = this.rateAsking.get(key);
        if (asking === undefined) break;
        await asking.catch(() => 0);
      }
      // At high rates, up to RATE_TOKENS_MS worth of the rate at once (at most the burst).
      const want = Math.max(1, Math.min(b, 64, Math.floor((ratePerSecond * RATE_TOKENS_MS) / 1000)));
      try {
        // The tokens beyond this one are stored before anyone waiting on the call resumes.
        const call = this.redis.sluiceRate(this.key(`rate:${key}`), 1000 / ratePerSecond, b, want).then((n) => {
          const got = Number(n);
          if (this.rateAsking.get(key) === call) this.rateAsking.delete(key);
          if (got > 1) {
            if (this.rateTokens.size >= 65_536) this.rateTokens.clear();
            this.rateTokens.set(key, { tokens: got - 1, until: Date.now() + RATE_TOKENS_MS });
          }
          return got;
        }, (err: unknown) => {
          if (this.rateAsking.get(key) === call) this.rateAsking.delete(key);
          throw err;
        });
        this.rateAsking.set(key, call);
        return (await call) > 0;
      } catch (err) {
        this.lost(err);
      }
    }
    const share = Math.max(1, this.liveCount);
    const name = `${ratePerSecond}/${b}/${share}`;
    let local = this.localRates.get(name);
    if (local === undefined) {
      local = new ConnectionRateLimiter(ratePerSecond / share, Math.max(1, Math.ceil(b / share)));
      this.localRates.set(name, local);
    }
    return local.allow(key, Date.now());
  }

  /** Renew the lease and read who is alive; then give back surplus places. */
  private async renew(): Promise<void> {
    if (this.stopped) return;
    const line = JSON.stringify({ advertise: this.config.advertise ?? null, sessions: this.sessions(), startedAt: this.startedAt });
    const flat = await this.redis.sluiceLease(this.key('instances'), this.key('lines'), this.id, this.config.leaseSeconds * 1000, line);
    const list: ClusterInstance[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      let info: { advertise?: string | null; sessions?: number; startedAt?: number } = {};
      try { info = JSON.parse(flat[i + 1]) as typeof info; } catch { /* a line being written */ }
      list.push({ id: flat[i], self: flat[i] === this.id, advertise: info.advertise ?? null, sessions: info.sessions ?? 0, startedAt: info.startedAt ?? 0 });
    }
    this.instances = list;
    this.liveCount = Math.max(1, list.length);
    this.agentNames = new Set(await this.redis.sluiceAgents(this.key('instances'), this.key('agents')));
    for (const p of this.places.values()) await p.trim();
  }

  /** Redis answered again: lease, then every scope's reservation set to what is in use. */
  private async reconcile(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.renew();
      for (const p of this.places.values()) await p.reserve(p.used, true);
      // Agents that registered here while Redis was away: their names are claimed now.
      for (const name of this.localAgents()) {
        const refusal = await this.claimAgent(name, 'refuse', true);
        if (refusal !== null) this.logger.warn({ event: 'agent_duplicate', agent: name }, `${refusal}: two agents with one name until one leaves`);
      }
    } catch (err) {
      this.lost(err);
      return;
    }
    if (this.degraded) {
      this.degraded = false;
      this.degradedReason = null;
      this.localRates.clear();
      this.logger.warn({ event: 'cluster_reconciled', instance: this.id, instances: this.liveCount }, 'Redis is back: cluster-wide limits again');
    }
  }

  /** Redis failed a call or the connection: local limits from now on (said once). */
  lost(err: unknown): void {
    if (this.stopped || this.degraded) return;
    this.degraded = true;
    this.degradedReason = `redis unreachable (${(err as Error)?.message ?? String(err)})`;
    this.logger.warn({ event: 'cluster_degraded', instance: this.id, instances: this.liveCount, err: (err as Error)?.message },
      `Redis unreachable: serving under local limits (a 1/${this.liveCount} share of each cluster bound) until it is back`);
  }

  /** `/readyz`: ready, with this reason, while degraded. */
  get degradedBecause(): string | null {
    return this.degraded ? `cluster degraded: ${this.degradedReason ?? 'redis unreachable'}, local limits` : null;
  }

  stats(): ClusterStats {
    const places: ClusterStats['places'] = {};
    for (const [scope, p] of this.places) places[scope] = { reserved: p.reserved, used: p.used, others: p.others, max: p.max };
    const instances = this.instances.length > 0 ? this.instances
      : [{ id: this.id, self: true, advertise: this.config.advertise ?? null, sessions: this.sessions(), startedAt: this.startedAt }];
    return { instanceId: this.id, degraded: this.degraded, reason: this.degradedReason, instances, places };
  }
}
