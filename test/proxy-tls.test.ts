/**
 * TLS on both legs: wss:// upstreams (SNI, CA file, rejectUnauthorized) and TLS
 * termination on the listener. Real TLS sockets on loopback; certificates made at test time.
 */
import t, { type Test } from 'tap';
import https from 'node:https';
import { once } from 'node:events';
import type net from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { createProxy } from '../src/index.js';
import { closed, connect, nextMessage, startWsBackend } from './fixtures/peers.js';
import { makeTestPki } from './fixtures/tls.js';

const pki = makeTestPki();

async function startWssBackend(t: Test) {
  const server = https.createServer({ cert: pki.cert, key: pki.key });
  const wss = new WebSocketServer({ server });
  let servername = '';
  server.on('secureConnection', (sock: import('node:tls').TLSSocket) => {
    servername = (sock as unknown as { servername?: string }).servername ?? '';
  });
  wss.on('connection', (ws) => ws.on('message', (d, isBinary) => ws.send(d as Buffer, { binary: isBinary })));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => {
    for (const c of wss.clients) c.terminate();
    wss.close();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, servername: () => servername };
}

t.test('wss:// upstream with a CA file and SNI', async (t) => {
  const up = await startWssBackend(t);
  const proxy = createProxy({
    listen: { host: '127.0.0.1', port: 0 },
    log: { level: 'silent' },
    routes: [
      { path: '/trusted', upstreams: [{ url: `wss://localhost:${up.port}/` }], tls: { caFile: pki.caFile } },
      { path: '/untrusted', upstreams: [{ url: `wss://localhost:${up.port}/` }] },
      { path: '/insecure', upstreams: [{ url: `wss://localhost:${up.port}/` }], tls: { rejectUnauthorized: false } },
    ],
  });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 100 }));
  const ws = await connect(`ws://127.0.0.1:${port}/trusted`);
  ws.send('over tls');
  t.equal((await nextMessage(ws)).data.toString(), 'over tls');
  t.equal(up.servername(), 'localhost', 'SNI carries the upstream host name');
  ws.close();
  await closed(ws);
  const status = await connect(`ws://127.0.0.1:${port}/untrusted`).then(
    (w) => (w.terminate(), 101),
    (e: { status?: number }) => e.status,
  );
  t.equal(status, 502, 'an upstream certificate not signed by a trusted CA → 502');
  const ws3 = await connect(`ws://127.0.0.1:${port}/insecure`);
  t.equal(ws3.readyState, WebSocket.OPEN, 'rejectUnauthorized: false accepts it');
  ws3.terminate();
});

t.test('TLS termination on the listener', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const proxy = createProxy({
    listen: { host: '127.0.0.1', port: 0, tls: { certFile: pki.certFile, keyFile: pki.keyFile } },
    log: { level: 'silent' },
    routes: [{ path: '/*', upstreams: [{ url: backend.url }] }],
  });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 100 }));
  const ws = await connect(`wss://localhost:${port}/s`, { ca: pki.ca });
  ws.send('secure hello');
  t.equal((await nextMessage(ws)).data.toString(), 'secure hello');
  t.equal(backend.requests.at(-1)!.headers['x-forwarded-proto'], 'https');
  ws.close();
  await closed(ws);
});
