/**
 * Connection counts shared by the shards of one sharded proxy, so that `maxConnections`
 * (the global one and each route's) bounds the whole proxy whichever shard the kernel
 * hands a connection to. Without it each shard got an even share of every limit, and a
 * shard the kernel favoured refused while the proxy as a whole was under its limit.
 *
 * One Int32Array over a SharedArrayBuffer, a row per shard: word 0 is the shard's
 * connections (sessions + upgrades in flight), word 1 + s the count of the route in slot
 * s. Each shard stores only its own row (absolute values, so a missed update heals at the
 * next one) and reads the others' when it decides on an upgrade. The main thread assigns
 * route slots by route key and zeroes the row of a shard that ended, so a crashed shard's
 * connections stop counting. Two shards deciding at the same instant can both accept
 * the last place: the limit can be exceeded by at most (shards - 1).
 */
import type { RouteConfig } from '../config/types.js';

/** Route slots per row; routes beyond them keep an even share of their limit per shard. */
export const LEDGER_ROUTE_SLOTS = 255;
export const LEDGER_ROW_WORDS = 1 + LEDGER_ROUTE_SLOTS;

/** The key that identifies a route across reloads (host and path). */
export function routeKey(r: RouteConfig): string {
  return `${(r.host ?? '').toLowerCase()}|${r.path}`;
}

/** What a shard is given: the shared words, its row, and the route slots. */
export interface LedgerInit {
  words: Int32Array;
  row: number;
  shards: number;
  slots: Record<string, number>;
}

/** A new ledger's words for `shards` shards. */
export function ledgerWords(shards: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(4 * LEDGER_ROW_WORDS * shards));
}

/** Route slots for `routes`, keeping the slots of `previous` (a reload must not move them). */
export function assignSlots(routes: RouteConfig[], previous: Record<string, number> = {}): Record<string, number> {
  const slots = { ...previous };
  let next = Object.values(slots).reduce((m, s) => Math.max(m, s + 1), 0);
  for (const r of routes) {
    const key = routeKey(r);
    if (slots[key] === undefined && next < LEDGER_ROUTE_SLOTS) slots[key] = next++;
  }
  return slots;
}

/** Zero a shard's row (it ended: its connections are gone). */
export function clearLedgerRow(words: Int32Array, row: number): void {
  for (let i = row * LEDGER_ROW_WORDS; i < (row + 1) * LEDGER_ROW_WORDS; i++) Atomics.store(words, i, 0);
}

/** One shard's view of the ledger. */
export class ConnectionLedger {
  private readonly words: Int32Array;
  private readonly base: number;
  private readonly shards: number;
  private readonly row: number;
  private slots: Map<string, number>;

  constructor(init: LedgerInit) {
    this.words = init.words;
    this.row = init.row;
    this.base = init.row * LEDGER_ROW_WORDS;
    this.shards = init.shards;
    this.slots = new Map(Object.entries(init.slots));
  }

  /** The slots after a reload (new routes get new slots; old ones keep theirs). */
  setSlots(slots: Record<string, number>): void {
    this.slots = new Map(Object.entries(slots));
  }

  /** True when the route is counted across shards (it has a slot). */
  shared(key: string): boolean {
    return this.slots.has(key);
  }

  /** Store this shard's connections and the count of the route with `key`. */
  publish(connections: number, key: string, routeCount: number): void {
    Atomics.store(this.words, this.base, connections);
    const slot = this.slots.get(key);
    if (slot !== undefined) Atomics.store(this.words, this.base + 1 + slot, routeCount);
  }

  /** The other shards' connections. */
  othersConnections(): number {
    return this.sumOthers(0);
  }

  /** The other shards' count of the route with `key` (0 when it has no slot). */
  othersRoute(key: string): number {
    const slot = this.slots.get(key);
    return slot === undefined ? 0 : this.sumOthers(1 + slot);
  }

  private sumOthers(word: number): number {
    let n = 0;
    for (let r = 0; r < this.shards; r++) {
      if (r !== this.row) n += Atomics.load(this.words, r * LEDGER_ROW_WORDS + word);
    }
    return n;
  }
}
