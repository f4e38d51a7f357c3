/**
 * The TypeScript twin of native/pool.cc: a per-thread tiered buffer pool.
 *
 * Tiers of 4 KiB, 64 KiB and 1 MiB, each with a capped free list (a released buffer past
 * the cap is left to the GC), so the pool never holds more than FREE_LIST_CAP_BYTES per
 * tier. Sizes above the top tier are allocated exactly and never pooled. Buffers come
 * back with stale contents: callers overwrite before they read.
 * Module state is per thread by construction (each worker loads its own copy).
 */
import type { PoolStats } from './types.js';

/** Tier sizes, smallest first. */
export const POOL_TIERS: readonly number[] = [4 * 1024, 64 * 1024, 1024 * 1024];
/** Free-list caps per tier: 1 MiB, 2 MiB, 4 MiB held at most. */
const FREE_LIST_CAPS: readonly number[] = [256, 32, 4];

const freeLists: Buffer[][] = [[], [], []];
const stats: PoolStats = { hits: 0, misses: 0, inUse: 0, highWater: 0, freeBytes: 0 };

function tierOf(size: number): number {
  return size <= POOL_TIERS[0] ? 0 : size <= POOL_TIERS[1] ? 1 : size <= POOL_TIERS[2] ? 2 : -1;
}

/** A Buffer of at least `size` bytes (its tier's full size) from the pool. */
export function acquire(size: number): Buffer {
  const tier = tierOf(size);
  let buf: Buffer | undefined;
  if (tier >= 0) {
    buf = freeLists[tier].pop();
    if (buf !== undefined) {
      stats.hits++;
      stats.freeBytes -= buf.length;
    } else {
      stats.misses++;
      buf = Buffer.allocUnsafeSlow(POOL_TIERS[tier]);
    }
  } else {
    stats.misses++;
    buf = Buffer.allocUnsafeSlow(size);
  }
  if (++stats.inUse > stats.highWater) stats.highWater = stats.inUse;
  return buf;
}

/**
 * Return a Buffer obtained from `acquire` (the whole buffer, not a slice). Releasing the
 * same buffer twice is a caller bug the pool does not detect: it would hand the memory to
 * two owners.
 */
export function release(buf: Buffer): void {
  if (stats.inUse > 0) stats.inUse--;
  const size = buf.length;
  const tier = size === POOL_TIERS[0] ? 0 : size === POOL_TIERS[1] ? 1 : size === POOL_TIERS[2] ? 2 : -1;
  if (tier < 0 || buf.byteOffset !== 0) return;
  const list = freeLists[tier];
  if (list.length >= FREE_LIST_CAPS[tier]) return;
  list.push(buf);
  stats.freeBytes += size;
}

/** A snapshot of this thread's pool statistics. */
export function poolStats(): PoolStats {
  return { hits: stats.hits, misses: stats.misses, inUse: stats.inUse, highWater: stats.highWater, freeBytes: stats.freeBytes };
}
