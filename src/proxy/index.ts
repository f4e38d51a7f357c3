/**
 * The data plane's door: `createProxy(config)`.
 */
import { Proxy, type ProxyHooks } from './proxy.js';
import type { ProxyConfig } from '../config/types.js';
import type { ProxyConfigInput } from '../config/index.js';

export { Proxy } from './proxy.js';
export type { ProxyStats, CloseOptions, RouteRuntime, ProxyHooks } from './proxy.js';
export { UpstreamError } from './handshake.js';

/**
 * Create a proxy from a config object (validated; defaults filled in). Nothing is bound
 * until `listen()`. Throws ConfigError (code SLUICE_ERR_CONFIG) on a bad config.
 * `hooks.onControl` receives envelope clients' control frames.
 */
export function createProxy(config: ProxyConfigInput | ProxyConfig = {}, hooks: ProxyHooks = {}): Proxy {
  return new Proxy(config, hooks);
}
