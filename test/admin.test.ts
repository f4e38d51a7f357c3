import http from 'node:http';
import t from 'tap';
import { startAdminServer, type AdminHooks, type AdminTarget } from '../src/admin/index.js';
import { parseConfig } from '../src/config/index.js';
import type { ProxyConfig } from '../src/config/types.js';
import { createMetricsRegistry, ProxyCounters } from '../src/metrics/index.js';

/**
 * A stand-in for the proxy object: real counters and registry, a ready flag the test sets,
 * and a reload that validates with the real parseConfig, as the proxy does.
 */
function stubProxy() {
  const counters = new ProxyCounters();
  let config: ProxyConfig = parseConfig({});
  const proxy = {
    counters,
    registry: createMetricsRegistry(counters, { defaultMetrics: false }),
    ready: { ok: true, reasons: [] as string[] },
    stats: () => ({ sessions: { '/echo': counters.activeSessions } }),
    async reload(input: unknown) {
      config = parseConfig(input);
    },
    get config() { return config; },
  };
  return proxy satisfies AdminTarget;
}

async function start(t: { teardown(fn: () => unknown): void }, admin: { token?: string } = {}, hooks: AdminHooks = {}) {
  const proxy = stubProxy();
  const server = await startAdminServer(proxy, { host: '127.0.0.1', port: 0, ...admin }, hooks);
  t.teardown(() => server.close());
  const base = `http://127.0.0.1:${server.port}`;
  return { proxy, server, base };
}

t.test('GET endpoints', async (t) => {
  const { proxy, base } = await start(t);
  proxy.counters.sessionOpened();

  const health = await fetch(`${base}/healthz`);
  t.equal(health.status, 200);
  t.equal(await health.text(), 'ok\n');

  const metrics = await fetch(`${base}/metrics`);
  t.equal(metrics.status, 200);
  t.equal(metrics.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
  t.match(await metrics.text(), /^agent_websocket_active_sessions 1$/m, 'values read at scrape time');

  const stats = await fetch(`${base}/stats`);
  t.equal(stats.headers.get('content-type'), 'application/json; charset=utf-8');
  t.same(await stats.json(), { sessions: { '/echo': 1 } });

  const ready = await fetch(`${base}/readyz`);
  t.equal(ready.status, 200);
  t.same(await ready.json(), { ready: true, reasons: [] });
  proxy.ready = { ok: false, reasons: ['route /echo: no healthy upstream'] };
  const notReady = await fetch(`${base}/readyz`);
  t.equal(notReady.status, 503);
  t.same(await notReady.json(), { ready: false, reasons: ['route /echo: no healthy upstream'] });

  const head = await fetch(`${base}/healthz`, { method: 'HEAD' });
  t.equal(head.status, 200, 'HEAD works where GET does');
});

t.test('unknown paths 404, wrong methods 405', async (t) => {
  const { base } = await start(t);
  t.equal((await fetch(`${base}/`)).status, 404);
  t.equal((await fetch(`${base}/metrics/x`)).status, 404);
  const wrong = await fetch(`${base}/reload`);
  t.equal(wrong.status, 405);
  t.equal(wrong.headers.get('allow'), 'POST');
  t.equal((await fetch(`${base}/stats`, { method: 'POST' })).status, 405);
});

t.test('POST /reload with a body: JSON or YAML; bad config is 400 with the problems', async (t) => {
  const { proxy, base } = await start(t);
  const json = await fetch(`${base}/reload`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ routes: [{ path: '/a', upstreams: [{ url: 'ws://127.0.0.1:7001' }] }] }),
  });
  t.equal(json.status, 200);
  t.same(await json.json(), { reloaded: true });
  t.equal(proxy.config.routes[0].path, '/a');

  const yaml = await fetch(`${base}/reload`, {
    method: 'POST', body: 'routes:\n  - path: /b\n    upstreams:\n      - url: ws://127.0.0.1:7002\n',
  });
  t.equal(yaml.status, 200);
  t.equal(proxy.config.routes[0].path, '/b');

  const bad = await fetch(`${base}/reload`, {
    method: 'POST', body: 'routes:\n  - path: /c\n    upstreams:\n      - url: http:/x\n',
  });
  t.equal(bad.status, 400);
  t.same(await bad.json(), {
    error: 'SLUICE_ERR_CONFIG', issues: ['routes[0].upstreams[0].url: expected a ws:// or wss:// URL, got "http:/x"'],
  });
  t.equal(proxy.config.routes[0].path, '/b', 'the old config is kept');

  const broken = await fetch(`${base}/reload`, { method: 'POST', body: 'routes: [' });
  t.equal(broken.status, 400);
  t.match(((await broken.json()) as { issues: string[] }).issues[0], /^request body:\d+:\d+: invalid YAML: /);

  const noSource = await fetch(`${base}/reload`, { method: 'POST' });
  t.equal(noSource.status, 400, 'no body and nothing to re-read');
});

t.test('POST /reload without a body re-reads the source; configFromBody shapes a body', async (t) => {
  let rereads = 0;
  const seen: unknown[] = [];
  const { base } = await start(t, {}, {
    reloadFromSource: async () => { rereads++; },
    configFromBody: (input) => { seen.push(input); return input; },
    maxBodyBytes: 64,
  });
  const res = await fetch(`${base}/reload`, { method: 'POST' });
  t.equal(res.status, 200);
  t.equal(rereads, 1);
  await fetch(`${base}/reload`, { method: 'POST', body: '{}' });
  t.same(seen, [{}]);
  const big = await fetch(`${base}/reload`, { method: 'POST', body: `# ${'x'.repeat(100)}\n` });
  t.equal(big.status, 413);
});

t.test('a token is required on every request when configured', async (t) => {
  const { base } = await start(t, { token: 's3cret-token' });
  for (const path of ['/healthz', '/metrics', '/readyz', '/stats', '/nope']) {
    const res = await fetch(`${base}${path}`);
    t.equal(res.status, 401, `${path} without a token`);
    t.equal(res.headers.get('www-authenticate'), 'Bearer realm="sluice"');
  }
  t.equal((await fetch(`${base}/reload`, { method: 'POST', body: '{}' })).status, 401, 'reload without a token');
  const wrong = ['Bearer s3cret-tokeN', 'Bearer s3cret', 'Bearer s3cret-token-and-more', 'Basic s3cret-token', 's3cret-token', 'Bearer '];
  for (const authorization of wrong) {
    t.equal((await fetch(`${base}/healthz`, { headers: { authorization } })).status, 401, authorization);
  }
  const ok = await fetch(`${base}/healthz`, { headers: { authorization: 'Bearer s3cret-token' } });
  t.equal(ok.status, 200);
  t.equal((await fetch(`${base}/stats`, { headers: { authorization: 'bearer s3cret-token' } })).status, 200, 'scheme is case-insensitive');
});

t.test('a port in use is a SLUICE_ERR_ADMIN_LISTEN error', async (t) => {
  const { server } = await start(t);
  await t.rejects(startAdminServer(stubProxy(), { host: '127.0.0.1', port: server.port }), {
    code: 'SLUICE_ERR_ADMIN_LISTEN', message: /address in use/,
  });
});

t.test('close() ends keep-alive connections', async (t) => {
  const proxy = stubProxy();
  const server = await startAdminServer(proxy, { host: '127.0.0.1', port: 0 });
  await (await fetch(`http://127.0.0.1:${server.port}/healthz`)).text();
  const started = Date.now();
  await server.close();
  t.ok(Date.now() - started < 1000, 'closed promptly despite the idle keep-alive socket');
  await t.rejects(fetch(`http://127.0.0.1:${server.port}/healthz`), 'nothing listens any more');
});

t.test('a request from another site is refused (CSRF); without a token, so is a name that is not this server\'s (DNS rebinding)', async (t) => {
  const { base, server } = await start(t, { token: 's3cret-token' });
  const authorization = 'Bearer s3cret-token';
  const post = (headers: Record<string, string>) => fetch(`${base}/reload`, { method: 'POST', body: '{}', headers: { authorization, ...headers } });
  t.equal((await post({ origin: 'https://evil.example' })).status, 403, 'POST with another Origin: 403');
  t.equal((await post({ 'sec-fetch-site': 'cross-site' })).status, 403, 'POST marked cross-site by the browser: 403');
  t.equal((await post({ origin: `http://127.0.0.1:${server.port}` })).status, 200, 'POST from the same origin: 200');
  t.equal((await post({ origin: 'http://gw.example:8080', 'x-forwarded-host': 'gw.example:8080' })).status, 200,
    'POST from the origin a proxy in front forwarded (X-Forwarded-Host): 200');
  t.equal((await post({})).status, 200, 'POST without Origin (curl): 200');
  t.equal((await fetch(`${base}/stats`, { headers: { authorization, origin: 'https://evil.example' } })).status, 200, 'a GET is not refused for its Origin');

  // Tokenless: only an IP address, localhost or admin.host as Host.
  const open = await start(t, {});
  const get = (host: string) => new Promise<number>((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: new URL(open.base).port, path: '/healthz', headers: { host } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
  });
  t.equal(await get('rebound.evil.example'), 403, 'a rebound name: 403');
  t.equal(await get(`127.0.0.1:${new URL(open.base).port}`), 200, 'an IP address: 200');
  t.equal(await get('localhost'), 200, 'localhost: 200');
  t.equal(await get('[::1]:9090'), 200, 'an IPv6 address: 200');
});
