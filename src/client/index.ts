/**
 * The client SDK (`sluice/client`): `connect(url, options)` to an envelope route, for
 * agents and apps. See client.ts for what "delivered" means.
 */
export { connect, SluiceClient } from './client.js';
export type { ConnectOptions, ClientState, ClientStats, SluiceClientEvents } from './client.js';
export { Backoff } from './backoff.js';
export type { EnvelopeVersion } from '../protocol/index.js';
