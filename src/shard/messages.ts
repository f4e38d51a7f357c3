/**
 * What the main thread and a shard say to each other. Two MessagePorts per shard:
 *
 * - `control` (asynchronous): reload, counters, stop, the crash drill; the shard's
 *   listening / reply / fatal / final messages.
 * - `query` (synchronous for the main thread): `stats()` and `ready` are synchronous in
 *   the admin server's contract, so the main thread posts a query, blocks on
 *   `Atomics.wait` over a shared flag the shard sets after replying, and reads the reply
 *   with `receiveMessageOnPort`. A shard answers between two of its event-loop turns.
 */
import type { MessagePort } from 'node:worker_threads';
import type { ProxyConfig } from '../config/types.js';
import type { CounterSnapshot } from '../metrics/index.js';
import type { ProxyStats } from '../proxy/index.js';
import type { LedgerInit } from '../proxy/ledger.js';
import type { SessionFilter } from '../proxy/session-control.js';

/** The piscina task that runs one shard (posted once per shard instance). */
export interface ShardTask {
  /** Slot number, 0..N-1; a replacement keeps its predecessor's id. */
  id: number;
  /** The data-plane config: no admin section; `listen.port` is the port every shard shares. */
  config: ProxyConfig;
  control: MessagePort;
  query: MessagePort;
  /** Int32Array over a SharedArrayBuffer: [0] is set to 1 after each query reply, [1] once the shard answers no more. */
  signal: Int32Array;
  /** Connection counts shared by the shards (proxy/ledger.ts). */
  ledger: LedgerInit;
  /** TLS session ticket keys every shard uses (80 random bytes, made once per pool). */
  ticketKeys: Uint8Array;
  /**
   * Int32Array over a SharedArrayBuffer, one word per shard: the loopback port where each
   * shard takes resumes relayed by the others (a resume token names its session's shard).
   */
  resumePeers: Int32Array;
  /** Upstreams drained now (proxy.ts `drainKey`): a replacement shard starts with them drained. */
  drained: string[];
  /** The shard's first session id: past every id its predecessors in this slot gave. */
  firstSessionId: number;
}

/** How a shard's task ended (a crash ends the thread instead: piscina sees its exit). */
export interface ShardTaskResult {
  reason: 'stopped' | 'listen-failed';
}

/** A SluiceError (or any error) as it crosses the thread boundary. */
export interface ErrorData {
  code: string;
  message: string;
  issues?: string[];
  stack?: string;
}

/** main → shard, on `control`. */
export type ControlRequest =
  | { op: 'reload'; seq: number; config: ProxyConfig; slots: Record<string, number> }
  | { op: 'counters'; seq: number }
  /** Session control (admin server): this shard's matching sessions, its part of a drain, its last closes. */
  | { op: 'sessions'; seq: number; filter: SessionFilter; count: number }
  | { op: 'close-session'; seq: number; session: number; code: number; reason: string; by: string }
  | { op: 'drain'; seq: number; route: string; index: number; undrain: boolean; closeWithinMs: number; by: string }
  | { op: 'closes'; seq: number }
  /** Drain (sessions get 1001) for at most drainMs, close everything, end the task. */
  | { op: 'stop'; drainMs: number }
  /** Drill: throw an uncaught exception inside the shard (tests, chaos drills). */
  | { op: 'crash' };

/** A control request as the main thread makes it (the run numbers it). */
export type ControlAsk = ControlRequest extends infer R ? (R extends { seq: number } ? Omit<R, 'seq'> : never) : never;

/** shard → main, on `control`. */
export type ControlMessage =
  /** The shard has its ports' listeners and answers queries (sent before listening). */
  | { op: 'started'; threadId: number }
  | { op: 'listening'; port: number }
  | { op: 'listen-failed'; error: ErrorData }
  | { op: 'reply'; seq: number; ok: true; value?: unknown }
  | { op: 'reply'; seq: number; ok: false; error: ErrorData }
  /** An uncaught exception: the shard is closing itself (sessions get 1012) and will end. */
  | { op: 'fatal'; error: ErrorData }
  /** The shard's last counters, after its sessions are gone; sent once, just before it ends. */
  | { op: 'final'; counters: CounterSnapshot };

/** main → shard, on `query`. */
export interface QueryRequest {
  seq: number;
}

/** shard → main, on `query`. */
export interface QueryReply {
  seq: number;
  stats: ProxyStats;
  ready: { ok: boolean; reasons: string[] };
}

/** Turns any thrown value into {@link ErrorData}. */
export function errorData(err: unknown): ErrorData {
  const e = err as { code?: unknown; message?: unknown; issues?: unknown; stack?: unknown } | null;
  return {
    code: typeof e?.code === 'string' ? e.code : 'SLUICE_ERR_STARTUP',
    message: typeof e?.message === 'string' ? e.message : String(err),
    issues: Array.isArray(e?.issues) ? e.issues.map(String) : undefined,
    stack: typeof e?.stack === 'string' ? e.stack : undefined,
  };
}
