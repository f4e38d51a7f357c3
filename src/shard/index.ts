/**
 * Shards: the proxy on every core. `createShardedProxy(config)` runs `config.workers`
 * worker threads (0 = one per core), each a whole proxy on the same port; piscina owns
 * the threads; the main thread keeps the admin server and sums the metrics.
 */
import type { ProxyConfig } from '../config/types.js';
import type { ProxyConfigInput } from '../config/index.js';
import { ShardedProxy } from './shard-pool.js';

export { ShardedProxy, mergeShardStats, shardCount } from './shard-pool.js';

/**
 * Create a sharded proxy from a config object (validated; defaults filled in). Nothing
 * starts until `listen()`. Throws ConfigError (code SLUICE_ERR_CONFIG) on a bad config.
 */
export function createShardedProxy(config: ProxyConfigInput | ProxyConfig = {}): ShardedProxy {
  return new ShardedProxy(config);
}
