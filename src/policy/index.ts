/**
 * Policy: who may connect (per-route JWT and API-key auth) and how fast (per-IP connection
 * rate, per-connection message and byte rates). The proxy asks; these modules decide.
 */
export { AccessPolicy } from './auth.js';
export type { AccessDecision, UpgradeInfo } from './auth.js';
export { ConnectionRateLimiter, MessageRateLimiter, TokenBucket } from './rate.js';
export type { RouteAuthConfig } from '../config/types.js';
