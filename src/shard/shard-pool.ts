/**
 * The sharded proxy: N worker threads, each running a whole proxy on the same port
 * (SO_REUSEPORT: the kernel spreads connections over the shards), started, supervised and
 * stopped through piscina; the main thread keeps the admin server, broadcasts reloads and
 * sums the shards' metrics at scrape time. Its surface is the in-process `Proxy`'s:
 * `listen()`, `close()`, `reload()`, `stats()`, `ready`, `registry`, `port`.
 *
 * How piscina is used, and why (see shard-worker.ts): one long-running task per shard,
 * `minThreads = maxThreads = N` so each task gets its own thread; `idleTimeout: Infinity`
 * and no abort signals, because piscina ends a thread by `worker.terminate()`, which would
 * cut its sessions without their close handshakes;
 * `close()` only after every task has returned. A crashed shard ends its own thread;
 * piscina replaces the thread (its `minThreads`) and the supervisor here runs the
 * replacement task on it.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MessageChannel, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { Piscina } from 'piscina';
import type { Registry } from 'prom-client';
import { startAdminServer, type AdminServer } from '../admin/index.js';
import { assignSlots, clearLedgerRow, ledgerWords, routeKey, type LedgerInit } from '../proxy/ledger.js';
import { parseConfig, type ProxyConfigInput } from '../config/index.js';
import type { ProxyConfig } from '../config/types.js';
import { ConfigError, SluiceError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { createMetricsRegistry, sumCounters, type CounterSnapshot } from '../metrics/index.js';
import { registerHealthMetrics } from '../metrics/health-metrics.js';
import type { CloseOptions, ProxyStats } from '../proxy/index.js';
import type {
  ControlAsk, ControlMessage, ControlRequest, ErrorData, QueryReply, ShardTask, ShardTaskResult,
} from './messages.js';
import {
  mergePages, mergeRecentCloses, parseSessionId, type ClosedSession, type DrainResult, type SessionFilter, type SessionInfo, type SessionPage,
} from '../proxy/session-control.js';

/** Longest a session-control or dashboard request waits for a shard. */
const CONTROL_TIMEOUT_MS = 2000;
/** Longest a synchronous `stats()` / `ready` waits for all shards together. */
const QUERY_TIMEOUT_MS = 1000;
/** A shard that crashes sooner than this after starting is restarted with a growing delay. */
const QUICK_CRASH_MS = 2000;
const MAX_RESTART_DELAY_MS = 5000;
/** Attempts at binding a free port chosen for `listen.port: 0` (another process may take it first). */
const PORT_ATTEMPTS = 3;

/** The number of shards `workers` asks for: 0 = one per core. */
export function shardCount(workers: number): number {
  return workers === 0 ? availableParallelism() : workers;
}

/**
 * The compiled worker file, and the Node options its threads get. A worker thread runs
 * JavaScript, so when this module runs from src/ (the tests, through a TypeScript loader)
 * the shard is its dist/ twin, and the loader flags the caller runs under (`--import`
 * hooks, which Node would start again in every thread) are not passed on. From dist/,
 * threads inherit the process's flags as Node's default.
 */
function workerSetup(): { filename: string; execArgv: string[] | undefined } {
  const here = fileURLToPath(import.meta.url);
  const fromSource = here.endsWith('.ts');
  const filename = fromSource
    ? join(dirname(here), '..', '..', 'dist', 'shard', 'shard-worker.js')
    : join(dirname(here), 'shard-worker.js');
  if (!existsSync(filename)) {
    throw new SluiceError('SLUICE_ERR_STARTUP', `the shard worker ${filename} is missing: run npm run build:ts`);
  }
  return { filename, execArgv: fromSource ? [] : undefined };
}

/** A port the kernel says is free on `host`: port 0 would give every shard a port of its own. */
async function freePort(host: string): Promise<number> {
  const server = net.createServer();
  server.listen(0, host);
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function errorFrom(data: ErrorData): SluiceError {
  if (data.code === 'SLUICE_ERR_CONFIG' && data.issues) return new ConfigError(data.issues);
  return new SluiceError(data.code, data.message);
}

/** One running instance of a shard: its thread's task, ports and pending requests. */
class ShardRun {
  readonly control: MessagePort;
  readonly query: MessagePort;
  /** [0]: set by the shard after each query reply; [1]: set when it answers no more. */
  readonly signal = new Int32Array(new SharedArrayBuffer(8));
  readonly startedAt = Date.now();
  started = false;
  threadId = -1;
  ended = false;
  fatal: ErrorData | null = null;
  final: CounterSnapshot | null = null;
  readonly listening: Promise<number>;
  /** Settles once the task is over, however it ended: 'stopped', 'listen-failed' or 'crashed'. */
  readonly done: Promise<'stopped' | 'listen-failed' | 'crashed'>;
  private seq = 0;
  private querySeq = 0;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private onListening!: (port: number) => void;
  private onListenFailed!: (err: Error) => void;

  constructor(pool: Piscina, readonly id: number, config: ProxyConfig, ledger: LedgerInit, ticketKeys: Uint8Array, resumePeers: Int32Array,
    start: { drained: string[]; firstSessionId: number }) {
    const control = new MessageChannel();
    const query = new MessageChannel();
    this.control = control.port1;
    this.query = query.port1;
    this.listening = new Promise<number>((resolve, reject) => {
      this.onListening = resolve;
      this.onListenFailed = reject;
    });
    this.listening.catch(() => undefined);
    this.control.on('message', (m: ControlMessage) => this.onMessage(m));
    const task: ShardTask = {
      id, config, control: control.port2, query: query.port2, signal: this.signal, ledger, ticketKeys, resumePeers, ...start,
    };
    this.done = pool.run(task, { transferList: [control.port2, query.port2] }).then(
      (r: ShardTaskResult) => r.reason,
      () => 'crashed' as const,
    ).then((outcome) => {
      // Messages the shard posted before its thread ended may still be queued.
      for (let m = receiveMessageOnPort(this.control); m !== undefined; m = receiveMessageOnPort(this.control)) {
        this.onMessage(m.message as ControlMessage);
      }
      this.ended = true;
      this.onListenFailed(new SluiceError('SLUICE_ERR_SHARD', `shard ${id} ended before it listened`));
      for (const p of this.pending.values()) p.reject(new SluiceError('SLUICE_ERR_SHARD', `shard ${id} ended`));
      this.pending.clear();
      this.control.close();
      this.query.close();
      return outcome;
    });
  }

  private onMessage(m: ControlMessage): void {
    switch (m.op) {
      case 'started':
        this.started = true;
        this.threadId = m.threadId;
        return;
      case 'listening':
        this.onListening(m.port);
        return;
      case 'listen-failed':
        this.onListenFailed(errorFrom(m.error));
        return;
      case 'reply': {
        const p = this.pending.get(m.seq);
        this.pending.delete(m.seq);
        if (m.ok) p?.resolve(m.value);
        else p?.reject(errorFrom(m.error));
        return;
      }
      case 'fatal':
        this.fatal = m.error;
        return;
      case 'final':
        this.final = m.counters;
        return;
    }
  }

  send(m: ControlRequest): void {
    if (!this.ended) this.control.postMessage(m);
  }

  /** Asks the shard; `timeoutMs` > 0: a shard that does not answer in time is given up on (the answer, if late, is dropped). */
  request(m: ControlAsk, timeoutMs = 0): Promise<unknown> {
    if (this.ended) return Promise.reject(new SluiceError('SLUICE_ERR_SHARD', `shard ${this.id} ended`));
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        clearTimeout(timer);
        this.pending.delete(seq);
      };
      this.pending.set(seq, { resolve: (v) => { done(); resolve(v); }, reject: (e) => { done(); reject(e); } });
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          done();
          reject(new SluiceError('SLUICE_ERR_SHARD', `shard ${this.id} did not answer ${m.op} within ${timeoutMs} ms`));
        }, timeoutMs);
        timer.unref();
      }
      this.control.postMessage({ ...m, seq } as ControlRequest);
    });
  }

  /** True when a synchronous query can be answered: the shard listens to its query port. */
  get answering(): boolean {
    return this.started && !this.ended && Atomics.load(this.signal, 1) === 0;
  }

  /** Posts a query; collect the answer with {@link collectQuery}. */
  postQuery(): number {
    Atomics.store(this.signal, 0, 0);
    const seq = ++this.querySeq;
    this.query.postMessage({ seq });
    return seq;
  }

  /** Blocks (Atomics.wait) until the reply to `seq` is in, the shard stops answering, or `deadline`. */
  collectQuery(seq: number, deadline: number): QueryReply | undefined {
    for (;;) {
      for (let m = receiveMessageOnPort(this.query); m !== undefined; m = receiveMessageOnPort(this.query)) {
        const reply = m.message as QueryReply;
        if (reply.seq === seq) return reply;
      }
      const left = deadline - Date.now();
      if (left <= 0 || Atomics.load(this.signal, 1) !== 0) return undefined;
      Atomics.wait(this.signal, 0, 0, left);
      Atomics.store(this.signal, 0, 0);
    }
  }
}

/** A shard slot: its id, its restarts, and the instance running now. */
interface Shard {
  id: number;
  restarts: number;
  quickCrashes: number;
  run: ShardRun | null;
  restartTimer: NodeJS.Timeout | null;
}

/**
 * A proxy whose data plane runs in `config.workers` worker threads (0 = one per core).
 * Same surface as the in-process `Proxy`; `/stats` lists the shards.
 */
export class ShardedProxy {
  config: ProxyConfig;
  readonly registry: Registry;
  readonly logger: Logger;
  /** The port every shard listens on (after `listen()`). */
  port = 0;
  draining = false;
  private readonly shards: Shard[] = [];
  private pool: Piscina | null = null;
  /** Last counters of shard instances that ended (crashed ones included), so counters never go back. */
  private readonly retired: CounterSnapshot[] = [];
  private admin: AdminServer | null = null;
  private listening: Promise<{ port: number }> | null = null;
  private closing: Promise<void> | null = null;
  /** Crashes are replaced only once every shard has listened (a failed start fails listen()). */
  private supervising = false;
  /** Connection counts the shards share (proxy/ledger.ts), and the route slots in it. */
  private ledger: Int32Array | null = null;
  /** TLS session ticket keys of every shard, replacements included (a session resumes on any). */
  private readonly ticketKeys = new Uint8Array(randomBytes(80));
  /** Each shard's loopback port for relayed resumes (messages.ts `resumePeers`), one word per possible shard. */
  private readonly resumePeers = new Int32Array(new SharedArrayBuffer(4 * 1024));
  private slots: Record<string, number> = {};
  /** Upstreams drained through the admin server (proxy.ts `drainKey`): every shard has them, replacements too. */
  private readonly drained = new Set<string>();

  constructor(input: ProxyConfigInput | ProxyConfig | unknown = {}) {
    this.config = parseConfig(input);
    this.logger = createLogger(this.config.log.level);
    this.registry = createMetricsRegistry(() => this.counterSnapshots());
    // Shards carry no agents (agent routes and tunnels need workers: 1).
    registerHealthMetrics(this.registry, this);
  }

  /** Number of shards (fixed at construction; a reload does not change it). */
  get shardCount(): number {
    return this.shards.length || shardCount(this.config.workers);
  }

  /** Starts every shard on one port (port 0: a free port chosen once for all); resolves with it. */
  listen(): Promise<{ port: number }> {
    this.listening ??= this.start().catch((err: unknown) => {
      this.listening = null;
      throw err;
    });
    return this.listening;
  }

  private async start(): Promise<{ port: number }> {
    const n = shardCount(this.config.workers);
    if (n > 1 && process.platform !== 'linux') {
      // SO_REUSEPORT spreads connections only on Linux.
      this.logger.warn({ event: 'shards_unbalanced', platform: process.platform },
        `on ${process.platform} the kernel does not spread connections over shards: one shard may get them all; use workers: 1`);
    }
    const { filename, execArgv } = workerSetup();
    this.pool = new Piscina({
      filename,
      execArgv,
      // ws (the built-in echo) would load bufferutil/utf-8-validate where installed: addons
      // whose Init asserts when a thread ends while they load (seen: an abort of the whole
      // process on Node 24 when a shard whose listen failed ended). ws's JS paths serve.
      env: { ...process.env, WS_NO_BUFFER_UTIL: '1', WS_NO_UTF_8_VALIDATE: '1' },
      minThreads: n,
      maxThreads: n,
      idleTimeout: Infinity,
      // Each shard is one long task; nothing else runs on these threads.
      concurrentTasksPerWorker: 1,
      atomics: 'disabled',
      recordTiming: false,
      // Only used if close() is called with tasks running, which this class never does.
      closeTimeout: 60_000,
    });
    this.pool.on('error', (err: unknown) => this.logger.error({ event: 'shard_pool_error', err }, 'shard pool error'));
    for (let id = 0; id < n; id++) this.shards.push({ id, restarts: 0, quickCrashes: 0, run: null, restartTimer: null });
    this.ledger = ledgerWords(n);
    this.slots = assignSlots(this.config.routes);

    const { host, port } = this.config.listen;
    try {
      for (let attempt = 1; ; attempt++) {
        this.port = port === 0 ? await freePort(host) : port;
        // Shard 0 first: a port in use is one clear error, not N.
        try {
          await this.startShard(this.shards[0]).listening;
          break;
        } catch (err) {
          await this.shards[0].run?.done;
          if (port !== 0 || attempt >= PORT_ATTEMPTS || (err as SluiceError).code !== 'SLUICE_ERR_LISTEN') throw err;
        }
      }
      await Promise.all(this.shards.slice(1).map((s) => this.startShard(s).listening));
    } catch (err) {
      await this.stopShards(0);
      this.shards.length = 0;
      throw err;
    }
    this.supervising = true;
    this.logger.info({ event: 'shards_listening', shards: n, port: this.port, threads: this.shards.map((s) => s.run?.threadId) },
      `${n} shard${n === 1 ? '' : 's'} listening on port ${this.port}`);
    if (this.config.admin) this.admin = await startAdminServer(this, this.config.admin, { logger: this.logger });
    return { port: this.port };
  }

  /**
   * The config a shard runs: no admin server (the main thread has it) and the shared port.
   * Connection limits stay whole: the shards count against them together through the
   * ledger. Only a route without a ledger slot (past LEDGER_ROUTE_SLOTS routes) gets an
   * even share of its limit per shard.
   */
  private shardConfig(config: ProxyConfig): ProxyConfig {
    const n = this.shards.length;
    const share = (limit: number) => (limit > 0 ? Math.max(1, Math.ceil(limit / n)) : limit);
    const listen = config.listen.port === 0 ? { ...config.listen, port: this.port } : config.listen;
    return {
      ...config,
      listen,
      routes: config.routes.map((r) => (this.slots[routeKey(r)] !== undefined ? r : { ...r, maxConnections: share(r.maxConnections) })),
      admin: undefined,
    };
  }

  private startShard(shard: Shard): ShardRun {
    const run = new ShardRun(this.pool!, shard.id, this.shardConfig(this.config), {
      words: this.ledger!, row: shard.id, shards: this.shards.length, slots: this.slots,
    }, this.ticketKeys, this.resumePeers, {
      drained: [...this.drained],
      // Past every id an earlier instance of this slot gave: an id names one session, ever.
      firstSessionId: shard.restarts * 2 ** 32 + 1,
    });
    shard.run = run;
    void run.done.then((outcome) => this.onShardEnded(shard, run, outcome));
    return run;
  }

  private onShardEnded(shard: Shard, run: ShardRun, outcome: string): void {
    // Its connections are gone (a crashed shard could not say so itself).
    if (this.ledger !== null) clearLedgerRow(this.ledger, shard.id);
    if (run.final) this.retired.push({ ...run.final, activeSessions: 0 });
    else if (outcome === 'crashed') this.logger.warn({ event: 'shard_counters_lost', shard: shard.id }, 'a shard ended without its final counters');
    if (this.closing !== null || !this.supervising || outcome === 'stopped') return;
    if (shard.run !== run) return;
    // Crashed (or failed to listen again): replace it. piscina has already started a fresh thread.
    shard.restarts++;
    const quick = Date.now() - run.startedAt < QUICK_CRASH_MS;
    shard.quickCrashes = quick ? shard.quickCrashes + 1 : 0;
    const delayMs = quick ? Math.min(MAX_RESTART_DELAY_MS, 50 * 2 ** shard.quickCrashes) : 0;
    this.logger.error({
      event: 'shard_restart', shard: shard.id, restarts: shard.restarts, outcome, delayMs,
      error: run.fatal?.message, stack: run.fatal?.stack,
    }, `shard ${shard.id} ${outcome === 'crashed' ? 'crashed' : 'could not listen'}; replacing it`);
    shard.restartTimer = setTimeout(() => {
      shard.restartTimer = null;
      if (this.closing !== null) return;
      const next = this.startShard(shard);
      next.listening.then(
        () => this.logger.info({ event: 'shard_replaced', shard: shard.id, thread: next.threadId }, `shard ${shard.id} replaced`),
        () => undefined, // onShardEnded retries
      );
    }, delayMs);
  }

  /**
   * Drain and stop every shard (sessions get 1001; what is left after `drainMs` is cut),
   * then end the threads. Resolves when no shard thread is left.
   */
  close(opts: CloseOptions = {}): Promise<void> {
    this.closing ??= (async () => {
      this.draining = true;
      await this.stopShards(opts.drainMs ?? this.config.drain.timeoutMs);
      await this.admin?.close();
      this.admin = null;
    })();
    return this.closing;
  }

  private async stopShards(drainMs: number): Promise<void> {
    for (const s of this.shards) {
      if (s.restartTimer !== null) clearTimeout(s.restartTimer);
      s.restartTimer = null;
    }
    // A shard being replaced is stopped too (a stop queued on its port waits for it).
    const runs = this.shards.map((s) => s.run).filter((r): r is ShardRun => r !== null);
    for (const r of runs) r.send({ op: 'stop', drainMs });
    await Promise.all(runs.map((r) => r.done));
    // Every task has returned and every shard has closed its sessions: ending the threads is safe.
    await this.pool?.close();
    this.pool = null;
  }

  /**
   * Applies a new config to every shard: validated here first (a bad one throws ConfigError
   * and changes nothing). `workers` applies after a restart (the CLI warns when it changes).
   * Replacement shards start with the new config.
   */
  async reload(input: unknown): Promise<void> {
    const next = parseConfig(input);
    this.config = next;
    this.logger.level = next.log.level;
    const runs = this.shards.map((s) => s.run).filter((r): r is ShardRun => r !== null && !r.ended);
    this.slots = assignSlots(next.routes, this.slots);
    const results = await Promise.allSettled(runs.map((r) => r.request({ op: 'reload', config: this.shardConfig(next), slots: this.slots })));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /**
   * Drill: makes shard `id` throw an uncaught exception, as a bug would. It closes its
   * sessions with 1012 and ends; a replacement starts. For tests and failure drills.
   */
  crashShard(id: number): void {
    const run = this.shards[id]?.run;
    if (!run) throw new SluiceError('SLUICE_ERR_SHARD', `no shard ${id}`);
    run.send({ op: 'crash' });
  }

  /** The shards running now. */
  private liveRuns(): ShardRun[] {
    return this.shards.map((s) => s.run).filter((r): r is ShardRun => r !== null && r.started && !r.ended);
  }

  /** One page of live sessions over every shard (`GET /sessions`); shards that do not answer are named. */
  async sessionPage(filter: SessionFilter, offset: number, limit: number): Promise<SessionPage> {
    const runs = this.liveRuns();
    const parts = await Promise.all(runs.map((r) =>
      r.request({ op: 'sessions', filter, count: offset + limit }, CONTROL_TIMEOUT_MS).then((v) => v as { total: number; sessions: SessionInfo[] }, () => null)));
    const page = mergePages(parts.filter((p) => p !== null), offset, limit);
    const missing = this.shards.filter((s) => !runs.some((r, i) => r === s.run && parts[i] !== null)).map((s) => s.id);
    return missing.length > 0 ? { ...page, missingShards: missing } : page;
  }

  /** Closes the session `<shard>-<n>` names, on its shard; false: no such live session. */
  async closeSessionById(id: string, code: number, reason: string, by: string): Promise<boolean> {
    const parsed = parseSessionId(id);
    const run = parsed === null ? null : this.shards[parsed.shard]?.run;
    if (parsed === null || run == null || !run.started || run.ended) return false;
    return (await run.request({ op: 'close-session', session: parsed.session, code, reason, by }, CONTROL_TIMEOUT_MS).catch(() => false)) === true;
  }

  /**
   * Drains (or opens again) an upstream in every shard; each closes its own sessions on it
   * within the window. The drain is kept here too, so a shard that starts later (a
   * replacement) starts with it.
   */
  async drainUpstream(route: string, index: number, opts: { undrain?: boolean; closeWithinMs?: number; by: string }): Promise<DrainResult | string> {
    const settled = await Promise.allSettled(this.liveRuns().map((r) => r.request({
      op: 'drain', route, index, undrain: opts.undrain === true, closeWithinMs: opts.closeWithinMs ?? 0, by: opts.by,
    }, CONTROL_TIMEOUT_MS) as Promise<DrainResult | string>));
    const results = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const missing = results.find((r): r is string => typeof r === 'string');
    if (missing !== undefined || results.length === 0) return missing ?? 'no shard is running';
    const done = results as DrainResult[];
    if (opts.undrain) this.drained.delete(done[0].key);
    else this.drained.add(done[0].key);
    return { ...done[0], closing: done.reduce((n, r) => n + r.closing, 0) };
  }

  /** The last sessions that ended, over every shard, newest first. */
  async lastCloses(): Promise<ClosedSession[]> {
    const parts = await Promise.all(this.liveRuns().map((r) => r.request({ op: 'closes' }, CONTROL_TIMEOUT_MS).then((v) => v as ClosedSession[], () => [])));
    return mergeRecentCloses(parts);
  }

  /** Counters of every shard (ended ones too), added up: the dashboard's rates. */
  async counterSnapshot(): Promise<CounterSnapshot> {
    return sumCounters(await this.counterSnapshots(CONTROL_TIMEOUT_MS));
  }

  /** `stats()` and `ready` from one round of queries (the dashboard's feed asks for both each second). */
  statsAndReady(): { stats: ProxyStats; ready: { ok: boolean; reasons: string[] } } {
    const replies = this.queryShards();
    return { stats: this.statsFrom(replies), ready: this.readyFrom(replies) };
  }

  /** Every counter source of one scrape: ended instances, the restarts, each live shard. */
  private async counterSnapshots(timeoutMs = 0): Promise<CounterSnapshot[]> {
    const runs = this.shards.map((s) => s.run).filter((r): r is ShardRun => r !== null && r.started && !r.ended);
    const live = await Promise.all(runs.map((r) => r.request({ op: 'counters' }, timeoutMs).catch(() => null)));
    const restarts: CounterSnapshot = { ...sumCounters([]), shardRestarts: this.shards.reduce((n, s) => n + s.restarts, 0) };
    // A shard whose final counters arrived meanwhile is counted once, in `retired`.
    const current = live.filter((c, i): c is CounterSnapshot => c !== null && runs[i].final === null);
    return [...this.retired, restarts, ...current];
  }

  /** Synchronous answers of every shard that can answer (see messages.ts). */
  private queryShards(): Map<number, QueryReply> {
    const asked: Array<{ shard: Shard; run: ShardRun; seq: number }> = [];
    for (const shard of this.shards) {
      const run = shard.run;
      if (run !== null && run.answering) asked.push({ shard, run, seq: run.postQuery() });
    }
    const deadline = Date.now() + QUERY_TIMEOUT_MS;
    const replies = new Map<number, QueryReply>();
    for (const { shard, run, seq } of asked) {
      const reply = run.collectQuery(seq, deadline);
      if (reply !== undefined) replies.set(shard.id, reply);
    }
    return replies;
  }

  /** Listening with every shard, not draining, and every shard ready (each shard's reasons, prefixed). */
  get ready(): { ok: boolean; reasons: string[] } {
    return this.readyFrom(this.shards.length > 0 ? this.queryShards() : new Map());
  }

  private readyFrom(replies: Map<number, QueryReply>): { ok: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (this.listening === null) reasons.push('not listening');
    if (this.draining) reasons.push('draining');
    if (this.shards.length > 0) {
      for (const shard of this.shards) {
        const reply = replies.get(shard.id);
        if (reply === undefined) reasons.push(`shard ${shard.id}: not running`);
        else for (const r of reply.ready.reasons) reasons.push(`shard ${shard.id}: ${r}`);
      }
    }
    return { ok: reasons.length === 0, reasons: [...new Set(reasons)] };
  }

  /** Agents the configuration needs: none (agent routes and tunnels need workers: 1). */
  neededAgents(): string[] {
    return [];
  }

  /** The shards' statistics added up, and each shard's sessions and restarts. */
  stats(): ProxyStats {
    return this.statsFrom(this.queryShards());
  }

  private statsFrom(replies: Map<number, QueryReply>): ProxyStats {
    return mergeShardStats(
      this.shards.map((s) => ({ id: s.id, restarts: s.restarts, stats: replies.get(s.id)?.stats })),
      { port: this.port, draining: this.draining, listening: this.listening !== null && this.closing === null },
    );
  }
}

/**
 * Adds up shards' statistics: sessions by route and upstream are summed; an upstream is
 * healthy when every shard that reports it finds it healthy (health is seen per shard);
 * `native` and `engine` are the first answering shard's (every shard loads the same builds).
 */
export function mergeShardStats(
  parts: ReadonlyArray<{ id: number; restarts: number; stats: ProxyStats | undefined }>,
  proxy: { port: number; draining: boolean; listening: boolean },
): ProxyStats {
  const answered = parts.filter((p): p is { id: number; restarts: number; stats: ProxyStats } => p.stats !== undefined);
  const first = answered[0]?.stats;
  const routes: ProxyStats['routes'] = [];
  const routeByKey = new Map<string, ProxyStats['routes'][number]>();
  const pool = { hits: 0, misses: 0, inUse: 0, highWater: 0, freeBytes: 0 };
  for (const { stats } of answered) {
    for (const r of stats.routes) {
      const key = `${r.host ?? ''}|${r.path}`;
      let into = routeByKey.get(key);
      if (into === undefined) {
        into = { ...r, sessions: 0, upstreams: r.upstreams.map((u) => ({ ...u, sessions: 0 })) };
        routeByKey.set(key, into);
        routes.push(into);
      }
      into.sessions += r.sessions;
      for (const u of r.upstreams) {
        let up = into.upstreams.find((x) => x.url === u.url);
        if (up === undefined) {
          up = { ...u, sessions: 0 };
          into.upstreams.push(up);
        }
        up.sessions += u.sessions;
        up.healthy &&= u.healthy;
        up.draining &&= u.draining; // drained only where every shard has it drained
        if (up.lastError === '') up.lastError = u.lastError;
      }
    }
    for (const k of Object.keys(pool) as Array<keyof typeof pool>) pool[k] += stats.pool[k];
  }
  return {
    listening: proxy.listening && answered.length === parts.length && answered.every((p) => p.stats.listening),
    port: proxy.port,
    draining: proxy.draining || answered.some((p) => p.stats.draining),
    sessions: answered.reduce((n, p) => n + p.stats.sessions, 0),
    routes,
    pool,
    native: first?.native ?? { native: false, reason: 'no shard answered' },
    engine: first !== undefined
      ? { ...first.engine, native: answered.reduce((n, p) => n + (p.stats.engine?.native ?? 0), 0) }
      : { kind: 'typescript', native: 0, reason: 'no shard answered' },
    shards: parts.map((p) => ({ id: p.id, sessions: p.stats?.sessions ?? 0, restarts: p.restarts })),
    agents: answered.flatMap((p) => p.stats.agents ?? []),
    tunnels: answered.flatMap((p) => p.stats.tunnels ?? []),
  };
}
