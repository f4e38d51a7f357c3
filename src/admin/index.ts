/** The admin HTTP server: metrics, health, readiness, stats and reload. */
export { startAdminServer } from './server.js';
export type { AdminHooks, AdminServer, AdminTarget } from './server.js';
