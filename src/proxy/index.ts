/**
 * The data plane's door: `createProxy(config)`.
 */
import { Proxy } from './proxy.js';
import type { ProxyConfig } from '../config/types.js';
import type { ProxyConfigInput } from '../config/index.js';

export { Proxy } from './proxy.js';
export type { ProxyStats, CloseOptions, RouteRuntime } from './proxy.js';
export { UpstreamError } from './handshake.js';

/**
 * Create a proxy from a config object (validated; defaults filled in). Nothing is bound
 * until `listen()`. Throws ConfigError (code SLUICE_ERR_CONFIG) on a bad config.
 */
export function createProxy(config: ProxyConfigInput | ProxyConfig = {}): Proxy {
  return new Proxy(config);
}
