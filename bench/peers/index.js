// The peers of `npm run bench`, in table order. Data, not code: a new variant is
// one more entry (a sluice with shards is a template with a shard count, the
// envelope route another template).
import caddy from './caddy.js';
import haproxy from './haproxy.js';
import nginx from './nginx.js';
import nodeHttpProxy from './node-http-proxy.js';
import { sluicePeer } from './sluice.js';
import { attachDashboardReader } from './dashboard-reader.js';
import { clusterPeer } from './sluice-cluster.js';

/** No proxy: the load generator talks to the echo backend itself (the baseline). */
const direct = {
  name: 'direct',
  describe: 'no proxy (baseline)',
  direct: true,
  check: () => null,
  version: () => null,
  async start({ echoPort }) {
    return { child: null, pid: null, port: echoPort };
  },
};

export const PEERS = [
  direct,
  nginx,
  haproxy,
  caddy,
  nodeHttpProxy,
  sluicePeer({ name: 'sluice', describe: 'sluice, native codec', tls: true }),
  sluicePeer({ name: 'sluice-ts', describe: 'sluice, SLUICE_NO_NATIVE=1', env: { SLUICE_NO_NATIVE: '1' } }),
  // The other handshake design (issue #13): Node's HTTP server accepts and parses, the
  // upstream handshake runs in TypeScript, and both sockets are handed to the native engine.
  sluicePeer({ name: 'sluice-node-accept', describe: 'sluice, SLUICE_ACCEPT=node (Node parses, engine adopts)', env: { SLUICE_ACCEPT: 'node' }, optional: true }),
  sluicePeer({ name: 'sluice-2shards', describe: 'sluice, workers: 2 (two worker-thread shards)', template: 'sluice-2shards.yaml.template' }),
  // Envelope routes: the client speaks v2 (binary) or v1 (JSON + base64), the backend plain
  // WebSocket; the load generator wraps its payload and checks the wrapped echo.
  sluicePeer({ name: 'sluice-env-v2', describe: 'sluice, envelope route, client speaks v2', template: 'sluice-envelope.yaml.template', loadgenArgs: ['--envelope', 'v2'] }),
  sluicePeer({ name: 'sluice-env-v1', describe: 'sluice, envelope route, client speaks v1', template: 'sluice-envelope.yaml.template', loadgenArgs: ['--envelope', 'v1'] }),
  // The envelope route on the TypeScript engine (native codec): what messages mode saves.
  sluicePeer({ name: 'sluice-env-v2-ts-engine', describe: 'sluice, envelope route (v2), SLUICE_ENGINE=typescript', template: 'sluice-envelope.yaml.template',
    loadgenArgs: ['--envelope', 'v2'], env: { SLUICE_ENGINE: 'typescript' }, optional: true }),
  sluicePeer({ name: 'sluice-env-v1-ts-engine', describe: 'sluice, envelope route (v1), SLUICE_ENGINE=typescript', template: 'sluice-envelope.yaml.template',
    loadgenArgs: ['--envelope', 'v1'], env: { SLUICE_ENGINE: 'typescript' }, optional: true }),
  // Scaling out (issue #15): `cluster` on (limits through Redis; Redis's CPU counted), and a
  // session through a tunnel agent on the same instance against one relayed from another.
  clusterPeer({ name: 'sluice-cluster', describe: 'sluice, cluster on (Redis counted)', mode: 'cluster' }),
  clusterPeer({ name: 'sluice-cluster-rate', describe: 'sluice, cluster on with a per-IP connection rate (a Redis call per upgrade)', mode: 'cluster-rate' }),
  clusterPeer({ name: 'sluice-agent', describe: 'sluice, upstream through a tunnel agent on the same instance (agent counted)', mode: 'agent' }),
  clusterPeer({ name: 'sluice-agent-relay', describe: 'sluice, upstream through a tunnel agent on another instance: relayed B to A (both, agent, Redis counted)', mode: 'relay' }),
  // The live dashboard (issue #16): the admin server with no page open, and with one page
  // open and streaming (`npm run bench:dashboard` runs the two on echo-64B).
  sluicePeer({ name: 'sluice-dashboard-closed', describe: 'sluice with its admin server, no dashboard open', template: 'sluice-admin.yaml.template',
    admin: true, optional: true }),
  sluicePeer({ name: 'sluice-dashboard-open', describe: 'sluice with its admin server, a dashboard open and streaming', template: 'sluice-admin.yaml.template',
    admin: true, attach: attachDashboardReader, optional: true }),
];
