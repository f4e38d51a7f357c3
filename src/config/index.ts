/**
 * Configuration: the schema, loading a file with environment and command-line overrides,
 * and the resolved {@link ProxyConfig} type.
 */
export type {
  BalanceStrategy, BackpressurePolicy, HealthCheckConfig, ProxyConfig, RouteConfig, RouteMode, UpstreamConfig,
} from './types.js';
export {
  BUILTIN_ECHO_URL, DEFAULTS, isBalance, isOrigin, isRoutePath, isUpstreamUrl, proxyConfigSchema,
} from './schema.js';
export type { ProxyConfigInput, RouteConfigInput } from './schema.js';
export {
  describeConfig, formatPath, loadConfig, parseConfig, parseConfigText, readConfigFile, resolveConfig,
} from './load.js';
export type { CliValue, LoadOptions, ParseOptions, ResolvedConfig, SourceOfValue, ValueSource } from './load.js';
export { CONFIG_FILE_VARIABLE, ENV_OVERRIDES, readEnvOverrides } from './env.js';
export type { EnvOverride, EnvValue } from './env.js';
