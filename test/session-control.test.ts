// Session control on the admin server (issue #16), against the real CLI with one shard
// and with two: GET /sessions with its filters and pages, DELETE /sessions/{id} (both
// sides get the code), upstream drain and undrain (over a reload too), named tokens in
// the action logs, and the dashboard feed (GET /events) with the true session count and
// moving totals. Real sockets, real upstreams (ws servers that record their closes).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { WebSocket } from 'ws';
import { nodeHasReusePort } from '../src/proxy/listen.js';
import { freePort, startCli } from './fixtures/cli-process.js';
import { closed, connect as open, startWsBackend, until } from './fixtures/peers.js';

const OPS = 'ops-token-0123456789abcdef';
const ROOT = 'root-token-0123456789abcdef';
const auth = (token: string) => ({ authorization: `Bearer ${token}` });

/** A WebSocket upstream that echoes and records the close each session of it got. */
async function upstream(t: { teardown(fn: () => unknown): void }) {
  const closes: Array<{ code: number; reason: string }> = [];
  const backend = await startWsBackend({
    onConnection: (ws) => {
      ws.on('message', (m, binary) => ws.send(m, { binary }));
      ws.on('close', (code, reason) => closes.push({ code, reason: reason.toString() }));
    },
  });
  t.teardown(() => backend.close());
  return { url: backend.url, closes, opened: () => backend.requests.length };
}

interface Page { total: number; offset: number; limit: number; sessions: Array<Record<string, unknown> & { id: string; upstream: string; messagesIn: number }> }

// Two shards share a port through SO_REUSEPORT: the addon, or Node >= 22.12 (test/shard.test.ts).
const canShare = process.env.SLUICE_NO_NATIVE !== '1' || nodeHasReusePort();

for (const workers of [1, 2]) {
  const skip = workers > 1 && !canShare ? `no SO_REUSEPORT: SLUICE_NO_NATIVE=1 on Node ${process.versions.node}` : false;
  t.test(`session control, ${workers} shard${workers === 1 ? '' : 's'}`, { skip }, async (t) => {
    const a = await upstream(t);
    const b = await upstream(t);
    const dir = mkdtempSync(join(tmpdir(), 'sluice-control-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const [port, adminPort] = [await freePort(), await freePort()];
    const config = join(dir, 'sluice.yaml');
    writeFileSync(config, `
listen: { host: 127.0.0.1, port: ${port} }
admin: { host: 127.0.0.1, port: ${adminPort}, token: ${ROOT}, tokens: [ { name: ops, token: ${OPS} } ] }
workers: ${workers}
log: { level: info }
routes:
  - { path: /echo, balance: round_robin, upstreams: [ { url: "${a.url}" }, { url: "${b.url}" } ] }
  - { path: /other, upstreams: [ { url: "${b.url}" } ] }
`);
    const proxy = startCli(['--config', config]);
    t.teardown(() => proxy.stop());
    const admin = `http://127.0.0.1:${adminPort}`;
    await until(() => fetch(`${admin}/healthz`, { headers: auth(OPS) }).then((r) => r.ok, () => false), 15_000, 'the admin server');
    const get = async (path: string, token = OPS): Promise<Page> => (await fetch(`${admin}${path}`, { headers: auth(token) })).json() as Promise<Page>;

    const clients: WebSocket[] = [];
    t.teardown(() => { for (const c of clients) c.terminate(); });
    for (let i = 0; i < 6; i++) clients.push(await open(`ws://127.0.0.1:${port}/echo`));
    clients.push(await open(`ws://127.0.0.1:${port}/other`));
    await until(async () => (await get('/sessions')).total === 7, 5000, '7 sessions listed');

    t.test('GET /sessions: a token, filters, pages', async (t) => {
      t.equal((await fetch(`${admin}/sessions`)).status, 401, 'no token: 401');
      t.equal((await fetch(`${admin}/sessions`, { headers: auth('wrong') })).status, 401, 'a wrong token: 401');
      const all = await get('/sessions', ROOT);
      t.equal(all.total, 7, 'both tokens are good');
      t.equal(new Set(all.sessions.map((s) => s.id)).size, 7, 'ids are unique');
      if (workers === 2) t.ok(all.sessions.every((s) => /^[01]-\d+$/.test(s.id)), 'ids name their shard');
      t.equal((await get('/sessions?route=/echo')).total, 6, 'filter route');
      const onA = (await get(`/sessions?route=/echo&upstream=${encodeURIComponent(a.url)}`)).total;
      const onB = (await get(`/sessions?route=/echo&upstream=${encodeURIComponent(b.url)}`)).total;
      t.equal(onA + onB, 6, 'filter upstream: the two upstreams hold the route\'s six');
      t.ok(onA > 0 && onB > 0, 'round robin used both');
      t.equal((await get('/sessions?remote=127.0.0.1')).total, 7, 'filter remote address');
      t.equal((await get('/sessions?remote=10.9.9.9')).total, 0, 'another address: none');
      t.equal((await get('/sessions?agent=nobody')).total, 0, 'filter agent');
      const pages = [await get('/sessions?limit=3'), await get('/sessions?limit=3&offset=3'), await get('/sessions?limit=3&offset=6')];
      t.same(pages.map((p) => p.sessions.length), [3, 3, 1], 'pages of 3');
      t.same(pages.flatMap((p) => p.sessions.map((s) => s.id)).sort(), all.sessions.map((s) => s.id).sort(), 'the pages hold each session once');
      t.equal((await fetch(`${admin}/sessions?limit=0`, { headers: auth(OPS) })).status, 400, 'limit 0: 400');
      t.equal((await fetch(`${admin}/sessions?offset=-1`, { headers: auth(OPS) })).status, 400, 'a negative offset: 400');
      // Live counters, whichever engine holds the session.
      for (let i = 0; i < 25; i++) clients[0].send(`m${i}`);
      await until(async () => (await get('/sessions')).sessions.some((s) => s.messagesIn >= 25 && Number(s.messagesOut) >= 25), 5000, '25 messages counted each way');
      const one = (await get('/sessions')).sessions.find((s) => s.messagesIn >= 25)!;
      t.ok(one, 'one session counted the 25 messages in');
      t.equal(one.messagesOut, 25, 'and their 25 echoes out');
      t.ok(Number(one.bytesIn) >= 25 * 2, 'and their bytes');
    });

    t.test('DELETE /sessions/{id}: both sides get the code and reason; the action is logged with the token name', async (t) => {
      const before = (await get('/sessions?route=/other')).sessions[0];
      const victim = clients[6];
      const gone = closed(victim);
      const from = proxy.logs.length;
      const bClosesBefore = b.closes.length;
      const res = await fetch(`${admin}/sessions/${before.id}?code=4001&reason=${encodeURIComponent('closed by ops')}`, { method: 'DELETE', headers: auth(OPS) });
      t.equal(res.status, 200);
      t.match(await res.json(), { closed: true, id: before.id, code: 4001, by: 'ops' });
      t.same(await gone, { code: 4001, reason: 'closed by ops' }, 'the client got 4001 and the reason');
      await until(() => b.closes.length > bClosesBefore, 5000, 'the upstream saw the close');
      t.same(b.closes.at(-1), { code: 4001, reason: 'closed by ops' }, 'the upstream got 4001 and the reason');
      const line = await proxy.waitFor((l) => l.event === 'session_close_requested', from);
      t.match(line, { session: before.id, code: 4001, by: 'ops', route: '/other' }, 'logged with who asked');
      await until(async () => !(await get('/sessions')).sessions.some((s) => s.id === before.id), 5000, 'the session left the list');
      t.equal((await fetch(`${admin}/sessions/${before.id}?code=4001`, { method: 'DELETE', headers: auth(OPS) })).status, 404, 'gone: 404');
      t.equal((await fetch(`${admin}/sessions/0-999999`, { method: 'DELETE', headers: auth(OPS) })).status, 404, 'unknown: 404');
      const some = (await get('/sessions')).sessions[0].id;
      for (const bad of ['1001', '2999', '5000', 'x']) {
        t.equal((await fetch(`${admin}/sessions/${some}?code=${bad}`, { method: 'DELETE', headers: auth(OPS) })).status, 400, `code ${bad}: 400`);
      }
      t.equal((await fetch(`${admin}/sessions/${some}?reason=${'r'.repeat(124)}`, { method: 'DELETE', headers: auth(OPS) })).status, 400, 'a reason over 123 bytes: 400');
      t.equal((await fetch(`${admin}/sessions/${some}`, { method: 'DELETE' })).status, 401, 'no token: 401');
      t.equal((await get('/sessions')).total, 6, 'the others stay');
    });

    t.test('drain: no new sessions to the upstream; closeWithinMs closes its sessions with 1012; undrain', async (t) => {
      const from = proxy.logs.length;
      const r1 = await fetch(`${admin}/upstreams/0/0/drain`, { method: 'POST', headers: auth(ROOT) });
      t.equal(r1.status, 200);
      t.match(await r1.json(), { route: '/echo', upstream: a.url, draining: true, closing: 0, by: 'admin' });
      t.ok(await proxy.waitFor((l) => l.event === 'upstream_drained' && l.by === 'admin', from), 'logged with the token name');
      const stats = await (await fetch(`${admin}/stats`, { headers: auth(OPS) })).json() as { routes: Array<{ upstreams: Array<{ draining: boolean }> }> };
      t.same(stats.routes[0].upstreams.map((u) => u.draining), [true, false], '/stats says which');
      const aBefore = a.opened();
      const bBefore = (await get(`/sessions?upstream=${encodeURIComponent(b.url)}&route=/echo`)).total;
      const aLive = (await get(`/sessions?upstream=${encodeURIComponent(a.url)}`)).total;
      for (let i = 0; i < 4; i++) clients.push(await open(`ws://127.0.0.1:${port}/echo`));
      t.equal(a.opened(), aBefore, 'no new session went to the drained upstream');
      await until(async () => (await get(`/sessions?upstream=${encodeURIComponent(b.url)}&route=/echo`)).total === bBefore + 4, 5000, 'the four listed');
      t.pass('they all went to the other');

      // An undrain calls off the 1012s a drain's window still had to send.
      const cutsBefore = a.closes.length;
      const long = await (await fetch(`${admin}/upstreams/0/0/drain?closeWithinMs=60000`, { method: 'POST', headers: auth(OPS) })).json() as { closing: number };
      t.equal(long.closing, aLive, 'a one-minute window for its sessions (none due before the undrain)');
      const again2 = await (await fetch(`${admin}/upstreams/0/0/drain?closeWithinMs=60000`, { method: 'POST', headers: auth(OPS) })).json() as { closing: number };
      t.equal(again2.closing, 0, 'a second drain does not schedule them twice');
      t.equal((await fetch(`${admin}/upstreams/0/0/drain`, { method: 'DELETE', headers: auth(OPS) })).status, 200, 'undrained at once');
      await new Promise((r) => setTimeout(r, 2000));
      t.equal(a.closes.length, cutsBefore, 'no session of it was closed after the undrain');
      t.equal((await get(`/sessions?upstream=${encodeURIComponent(a.url)}`)).total, aLive, 'its sessions are all still there');
      await fetch(`${admin}/upstreams/0/0/drain`, { method: 'POST', headers: auth(ROOT) });

      // A reload keeps the drain.
      const reload = await fetch(`${admin}/reload`, { method: 'POST', headers: auth(ROOT) });
      await reload.arrayBuffer();
      t.equal(reload.status, 200, 'reload from the file');
      const again = await (await fetch(`${admin}/stats`, { headers: auth(OPS) })).json() as { routes: Array<{ upstreams: Array<{ draining: boolean }> }> };
      t.same(again.routes[0].upstreams.map((u) => u.draining), [true, false], 'still drained after a reload');

      // Close what is left on it, within half a second.
      t.ok(aLive > 0, `${aLive} sessions still on it`);
      const ends = clients.slice(0, 6).map((c) => ({ c, end: closed(c, 30_000).catch(() => null) }));
      const r2 = await fetch(`${admin}/upstreams/%2Fecho/0/drain?closeWithinMs=500`, { method: 'POST', headers: auth(OPS) });
      t.match(await r2.json(), { draining: true, closing: aLive }, 'by path: those to close');
      const started = Date.now();
      await until(async () => (await get(`/sessions?upstream=${encodeURIComponent(a.url)}`)).total === 0, 5000, 'no session left on the drained upstream');
      t.ok(Date.now() - started < 5000, 'within the window (and the time it takes to see it)');
      const got = await Promise.all(ends.map(async ({ c, end }) => (c.readyState === WebSocket.CLOSED || c.readyState === WebSocket.CLOSING ? end : null)));
      t.same(got.filter((g) => g !== null).map((g) => g!.code), Array(aLive).fill(1012), 'its clients got 1012');
      t.equal((await get('/sessions?route=/echo')).total, bBefore + 4, 'the other upstream kept its sessions');

      // Both drained: a new session is refused with 503.
      await fetch(`${admin}/upstreams/0/1/drain`, { method: 'POST', headers: auth(OPS) });
      await t.rejects(open(`ws://127.0.0.1:${port}/echo`), /status 503/, 'every upstream drained: 503');
      t.equal((await fetch(`${admin}/upstreams/0/1/drain`, { method: 'DELETE', headers: auth(OPS) })).status, 200, 'undrain');
      clients.push(await open(`ws://127.0.0.1:${port}/echo`));
      t.pass('a new session opens again');
      t.equal((await fetch(`${admin}/upstreams/0/7/drain`, { method: 'POST', headers: auth(OPS) })).status, 404, 'no such upstream: 404');
      t.equal((await fetch(`${admin}/upstreams/9/0/drain`, { method: 'POST', headers: auth(OPS) })).status, 404, 'no such route: 404');
      t.equal((await fetch(`${admin}/upstreams/0/0/drain?closeWithinMs=soon`, { method: 'POST', headers: auth(OPS) })).status, 400, 'a bad window: 400');
      t.equal((await fetch(`${admin}/upstreams/0/0/drain`, { method: 'GET', headers: auth(OPS) })).status, 405, 'GET: 405');
    });

    t.test('GET /events: snapshots with the true session count and moving totals', async (t) => {
      t.equal((await fetch(`${admin}/events`)).status, 401, 'no token: 401');
      const ac = new AbortController();
      t.teardown(() => ac.abort());
      const res = await fetch(`${admin}/events`, { headers: auth(OPS), signal: ac.signal });
      t.equal(res.status, 200);
      t.match(res.headers.get('content-type'), /^text\/event-stream/);
      const reader = res.body!.getReader();
      const decoder = new TextDecoder();
      let buffered = '';
      const next = async (): Promise<{ stats: { sessions: number }; totals: { messagesIn: number; messagesOut: number; closes: Record<string, number> }; closed: Array<{ clientCode: number }> }> => {
        for (;;) {
          const m = /(?:^|\n)data: (.*)\n\n/.exec(buffered);
          if (m) {
            buffered = buffered.slice(m.index + m[0].length);
            return JSON.parse(m[1]);
          }
          const { value, done } = await reader.read();
          if (done) throw new Error('the feed ended');
          buffered += decoder.decode(value, { stream: true });
        }
      };
      const live = (await get('/sessions')).total;
      const first = await next();
      t.equal(first.stats.sessions, live, 'the true session count');
      t.ok((first.totals.closes['1012'] ?? 0) >= 3 && (first.totals.closes['4001'] ?? 0) >= 1, 'closes by code');
      t.ok(first.closed.some((c) => c.clientCode === 4001), 'the last closed sessions');
      const open1 = clients.filter((c) => c.readyState === WebSocket.OPEN)[0];
      for (let i = 0; i < 40; i++) open1.send('x'.repeat(100));
      let later = await next();
      const moved = () => later.totals.messagesIn >= first.totals.messagesIn + 40 && later.totals.messagesOut >= first.totals.messagesOut + 40;
      for (let i = 0; i < 10 && !moved(); i++) later = await next();
      t.ok(later.totals.messagesIn >= first.totals.messagesIn + 40, 'messages in moved');
      t.ok(later.totals.messagesOut >= first.totals.messagesOut + 40, 'messages out moved');
      ac.abort();
      const head = await fetch(`${admin}/events`, { method: 'HEAD', headers: auth(OPS) });
      t.equal(head.status, 200, 'HEAD /events answers and ends');
      t.match(head.headers.get('content-type'), /^text\/event-stream/);
    });

    t.test('the default close code is 1000', async (t) => {
      const live = clients.filter((c) => c.readyState === WebSocket.OPEN);
      const first = Promise.race(live.map((c) => closed(c)));
      const target = (await get('/sessions')).sessions[0].id;
      const res = await fetch(`${admin}/sessions/${target}`, { method: 'DELETE', headers: auth(OPS) });
      t.match(await res.json(), { closed: true, code: 1000, reason: 'closed by an operator' }, 'the answer: 1000, the default reason');
      t.same(await first, { code: 1000, reason: 'closed by an operator' }, 'its client got them');
    });
  });
}

t.test('a shard that restarts starts with the drains in place, and numbers its sessions past its predecessor', {
  skip: canShare ? false : `no SO_REUSEPORT: SLUICE_NO_NATIVE=1 on Node ${process.versions.node}`,
}, async (t) => {
  const a = await upstream(t);
  const b = await upstream(t);
  const { createShardedProxy } = await import('../src/shard/index.js');
  const proxy = createShardedProxy({
    workers: 2, listen: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, drain: { timeoutMs: 500 },
    routes: [{ path: '/echo', balance: 'round_robin', upstreams: [{ url: a.url }, { url: b.url }] }],
  });
  t.teardown(() => proxy.close());
  const { port } = await proxy.listen();
  const drained = await proxy.drainUpstream('0', 0, { by: 'test' });
  t.match(drained, { draining: true, upstream: a.url });
  const ids = (await proxy.sessionPage({}, 0, 10)).sessions.map((s) => s.id);
  t.same(ids, [], 'no sessions yet');

  const clients: WebSocket[] = [];
  t.teardown(() => { for (const c of clients) c.terminate(); });
  // Shard 0 must hold some (the kernel spreads connections by their ports).
  let before: string[] = [];
  for (let i = 0; i < 40 && before.length < 3; i++) {
    clients.push(await open(`ws://127.0.0.1:${port}/echo`));
    before = (await proxy.sessionPage({}, 0, 100)).sessions.filter((s) => s.id.startsWith('0-')).map((s) => s.id);
  }
  t.ok(before.length > 0, `shard 0 holds ${before.length} sessions before its crash`);

  proxy.crashShard(0);
  await until(() => proxy.stats().shards[0].restarts === 1 && proxy.ready.ok, 10_000, 'shard 0 replaced and ready');
  t.same(proxy.stats().routes[0].upstreams.map((u) => u.draining), [true, false], 'every shard, the new one too, has the drain');
  const aBefore = a.opened();
  for (let i = 0; i < 12; i++) clients.push(await open(`ws://127.0.0.1:${port}/echo`));
  t.equal(a.opened(), aBefore, 'no new session reached the drained upstream, whichever shard took it');
  const after = (await proxy.sessionPage({}, 0, 100)).sessions.filter((s) => s.id.startsWith('0-')).map((s) => s.id);
  t.ok(after.length > 0, 'the replacement took sessions');
  t.same(after.filter((id) => before.includes(id)), [], 'and none has an id its predecessor gave');
  t.equal(await proxy.closeSessionById(before[0], 4000, 'stale', 'test'), false, 'a stale id closes nothing');
});
