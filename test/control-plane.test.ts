/**
 * The control plane against a running proxy: exact metric values after a scripted
 * exchange, /stats, /readyz, the admin token, and hot reload (an unchanged route's session
 * stays open while a removed route's session gets 1012). Real sockets throughout.
 */
import t from 'tap';
import { createProxy } from '../src/index.js';
import { closed, connect, nextMessage, startWsBackend, until } from './fixtures/peers.js';
import { WebSocket } from 'ws';

async function get(url: string, token?: string): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: res.status, body: await res.text() };
}

function metric(text: string, line: string): number {
  const m = text.split('\n').find((l) => l.startsWith(line + ' '));
  if (m === undefined) throw new Error(`no metric line ${line}`);
  return Number(m.slice(line.length + 1));
}

t.test('metrics are exact after a scripted exchange; admin token; stats; readyz', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const token = 's3cret';
  const proxy = createProxy({
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0, token },
    log: { level: 'silent' },
    routes: [{ path: '/m', upstreams: [{ url: backend.url }] }],
  });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 100 }));
  const adminPort = (proxy as unknown as { admin: { port: number } }).admin.port;
  const admin = `http://127.0.0.1:${adminPort}`;

  t.equal((await get(`${admin}/metrics`)).status, 401, 'no token → 401');
  t.equal((await get(`${admin}/metrics`, 'wrong')).status, 401, 'wrong token → 401');
  t.equal((await get(`${admin}/healthz`, token)).status, 200);
  t.equal((await get(`${admin}/readyz`, token)).status, 200);

  const N = 25;
  const ws = await connect(`ws://127.0.0.1:${port}/m`);
  for (let i = 0; i < N; i++) {
    ws.send(i % 2 === 0 ? 'abcd' : Buffer.alloc(100)); // 13 text of 4 B, 12 binary of 100 B
    await nextMessage(ws);
  }
  const stats = JSON.parse((await get(`${admin}/stats`, token)).body);
  t.equal(stats.sessions, 1);
  t.equal(stats.routes[0].upstreams[0].sessions, 1);
  t.equal(typeof stats.native.native, 'boolean');
  t.equal(stats.engine.kind, process.env.SLUICE_NO_NATIVE === '1' || process.env.SLUICE_ENGINE === 'typescript' ? 'typescript' : 'native');
  t.same(stats.shards, [{ id: 0, sessions: 1, restarts: 0 }]);

  ws.close(4002, 'done');
  await closed(ws);
  await until(() => proxy.sessions.size === 0);
  const text = (await get(`${admin}/metrics`, token)).body;
  t.equal(metric(text, 'agent_websocket_frames_total{direction="in",type="text"}'), 13);
  t.equal(metric(text, 'agent_websocket_frames_total{direction="in",type="binary"}'), 12);
  t.equal(metric(text, 'agent_websocket_frames_total{direction="out",type="text"}'), 13);
  t.equal(metric(text, 'agent_websocket_frames_total{direction="out",type="binary"}'), 12);
  // Close frames count too: 2 code bytes + "done", the client's and the upstream's reply.
  t.equal(metric(text, 'agent_websocket_frames_total{direction="in",type="close"}'), 1);
  t.equal(metric(text, 'agent_websocket_frames_total{direction="out",type="close"}'), 1);
  t.equal(metric(text, 'agent_websocket_frame_bytes_total{direction="in"}'), 13 * 4 + 12 * 100 + 6);
  t.equal(metric(text, 'agent_websocket_frame_bytes_total{direction="out"}'), 13 * 4 + 12 * 100 + 6);
  t.equal(metric(text, 'agent_websocket_sessions_total'), 1);
  t.equal(metric(text, 'agent_websocket_active_sessions'), 0);
  t.equal(metric(text, 'agent_websocket_session_close_total{code="4002"}'), 1);
  t.equal(metric(text, 'agent_websocket_session_duration_seconds_count'), 1);
  t.match(text, /process_cpu_seconds_total/, 'process metrics too');
});

t.test('hot reload: unchanged route stays open, removed route gets 1012, bad config refused', async (t) => {
  const backend = await startWsBackend();
  t.teardown(backend.close);
  const base = { listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' as const }, drain: { timeoutMs: 300 } };
  const proxy = createProxy({
    ...base,
    routes: [
      { path: '/keep', upstreams: [{ url: backend.url }] },
      { path: '/gone', upstreams: [{ url: backend.url }] },
    ],
  });
  const { port } = await proxy.listen();
  t.teardown(() => proxy.close({ drainMs: 100 }));
  const keep = await connect(`ws://127.0.0.1:${port}/keep`);
  const gone = await connect(`ws://127.0.0.1:${port}/gone`);
  const goneClosed = closed(gone);

  await t.rejects(proxy.reload({ ...base, routes: [{ path: 'nope', upstreams: [{ url: 'http:/x' }] }] }), { code: 'SLUICE_ERR_CONFIG' });
  keep.send('still here');
  t.equal((await nextMessage(keep)).data.toString(), 'still here', 'a refused reload changes nothing');

  await proxy.reload({ ...base, routes: [{ path: '/keep', upstreams: [{ url: backend.url }] }] });
  t.equal((await goneClosed).code, 1012, 'removed route → 1012');
  await new Promise((r) => setTimeout(r, 400));
  t.equal(keep.readyState, WebSocket.OPEN, 'unchanged route stays open');
  keep.send('after reload');
  t.equal((await nextMessage(keep)).data.toString(), 'after reload');
  const status = await connect(`ws://127.0.0.1:${port}/gone`).then((w) => (w.terminate(), 101), (e: { status?: number }) => e.status);
  t.equal(status, 404, 'the removed route is gone for new sessions');
  keep.close();
  await closed(keep);
});
