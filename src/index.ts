/**
 * sluice — a WebSocket proxy core for Node.js.
 *
 * ```ts
 * import { createProxy } from 'sluice';
 * const proxy = createProxy({ routes: [{ path: '/chat', upstreams: [{ url: 'ws://127.0.0.1:3000/ws' }] }] });
 * const { port } = await proxy.listen();
 * ```
 */
export { createProxy, Proxy, UpstreamError } from './proxy/index.js';
export type { ProxyStats, CloseOptions, ProxyHooks } from './proxy/index.js';
export { createShardedProxy, ShardedProxy, shardCount } from './shard/index.js';
export { parseConfig, loadConfig } from './config/index.js';
export type { ProxyConfig, ProxyConfigInput, RouteConfig, RouteConfigInput, UpstreamConfig } from './config/index.js';
export { SluiceError, ConfigError, isSluiceError } from './errors.js';
export { ProxyCounters } from './metrics/counters.js';
export { native, codecInfo } from './codec/index.js';
export { connectAgent, Agent } from './tunnel/agent.js';
export type { AgentOptions, AgentStats } from './tunnel/agent.js';
export { YamuxSession, YamuxStream } from './tunnel/yamux.js';
