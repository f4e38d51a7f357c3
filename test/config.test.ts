import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  describeConfig, loadConfig, parseConfig, parseConfigText, resolveConfig,
} from '../src/config/index.js';
import { isSluiceError } from '../src/errors.js';

/** The problem lines a bad config produces (fails the test when it parses). */
function problems(input: unknown, opts: Parameters<typeof parseConfig>[1] = {}): string[] {
  try {
    parseConfig(input, opts);
  } catch (err) {
    if (isSluiceError(err, 'SLUICE_ERR_CONFIG')) return (err as unknown as { issues: string[] }).issues;
    throw err;
  }
  throw new Error('expected a ConfigError, the config parsed');
}

const route = (extra: object = {}) => ({ path: '/a', upstreams: [{ url: 'ws://127.0.0.1:9000/x' }], ...extra });

t.test('an empty config is the built-in default: /echo on 127.0.0.1:8080', async (t) => {
  const c = parseConfig({});
  t.same(c.listen, { host: '127.0.0.1', port: 8080 });
  t.same(c.routes, [{
    path: '/echo', mode: 'transparent', balance: 'round_robin', backpressure: 'pause', compression: false, http: false,
    health: { intervalMs: 0, timeoutMs: 2000, coolOffMs: 5000 }, upstreams: [{ url: 'builtin:echo', weight: 1 }],
    maxConnections: 0, duplicate: 'replace',
  }]);
  t.same(c.tunnels, [], 'no tunnels');
  t.same(c.limits, {
    maxFrameBytes: 1048576, maxConnections: 10000, channelCapacity: 100, channelBytes: 4194304,
    upstreamTimeoutMs: 10000, highWaterMark: 1048576,
    connectionRatePerIp: 0, connectionBurstPerIp: 0, messagesPerSecond: 0, bytesPerSecond: 0,
    handshakeTimeoutMs: 10000, maxHeaderBytes: 16384, maxHeaderCount: 100,
  });
  t.same(c.heartbeat, { pingIntervalSeconds: 30, pongTimeoutSeconds: 90 });
  t.same(c.drain, { timeoutMs: 10000 });
  t.same(c.origins, []);
  t.equal(c.protocol, 'v1');
  t.same(c.log, { level: 'info' });
  t.equal(c.admin, undefined, 'no admin server unless configured');
  t.same(parseConfig(undefined), c, 'undefined is an empty config');
  t.same(parseConfig(null), c, 'null (an empty YAML file) is an empty config');
});

t.test('one route is a whole config; defaults fill the rest', async (t) => {
  const c = parseConfig({ routes: [route()] });
  t.equal(c.routes.length, 1);
  t.same(c.routes[0].upstreams, [{ url: 'ws://127.0.0.1:9000/x', weight: 1 }]);
  t.equal(c.routes[0].backpressure, 'pause');
  t.equal(c.listen.port, 8080);
});

t.test('admin gets 127.0.0.1:9090 when configured', async (t) => {
  t.same(parseConfig({ admin: {} }).admin, { host: '127.0.0.1', port: 9090 });
  t.same(parseConfig({ admin: { port: 0, token: 's3cret' } }).admin, { host: '127.0.0.1', port: 0, token: 's3cret' });
});

t.test('parsing is idempotent: a ProxyConfig parses to itself', async (t) => {
  const once = parseConfig({ routes: [route({ balance: 'header:x-user', tls: { rejectUnauthorized: false } })], admin: {} });
  t.same(parseConfig(once), once);
  t.not(parseConfig(once), once, 'a copy: the caller’s object is not kept');
});

t.test('upstream url must be ws:// or wss://', async (t) => {
  t.same(problems({ routes: [{ path: '/a', upstreams: [{ url: 'http:/x' }] }] }),
    ['routes[0].upstreams[0].url: expected a ws:// or wss:// URL, got "http:/x"']);
  t.same(problems({ routes: [route(), { path: '/b', upstreams: [{ url: 'ws://ok' }, { url: 42 }] }] }),
    ['routes[1].upstreams[1].url: expected a ws:// or wss:// URL, got 42']);
  t.same(problems({ routes: [{ path: '/a', upstreams: [{ url: 'builtin:other' }] }] }),
    ['routes[0].upstreams[0].url: expected a ws:// or wss:// URL, got "builtin:other"']);
  t.same(problems({ routes: [{ path: '/a', upstreams: [{ url: 'ws://' }] }] }),
    ['routes[0].upstreams[0].url: expected a ws:// or wss:// URL, got "ws://"']);
  t.doesNotThrow(() => parseConfig({ routes: [{ path: '/a', upstreams: [{ url: 'wss://h.example:443/p?q=1' }] }] }));
});

t.test('route paths start with "/" and use "*" only as a trailing "/*"', async (t) => {
  for (const good of ['/', '/*', '/api/*', '/a/b']) {
    t.doesNotThrow(() => parseConfig({ routes: [route({ path: good })] }), good);
  }
  for (const bad of ['api', '/a*', '/a/*/b', '*', '/a b']) {
    t.same(problems({ routes: [route({ path: bad })] }),
      [`routes[0].path: expected a path starting with "/" ("*" only as a trailing "/*"), got ${JSON.stringify(bad)}`], bad);
  }
  t.same(problems({ routes: [{ upstreams: [{ url: 'ws://h' }] }] }),
    ['routes[0].path: expected a path starting with "/" ("*" only as a trailing "/*"), got nothing']);
  t.same(problems({ routes: [route(), route()] }),
    ['routes[1].path: expected a path not already used by routes[0], got "/a"']);
  t.doesNotThrow(() => parseConfig({ routes: [route(), route({ host: 'other.example' })] }), 'same path, other host');
});

t.test('balance strategies', async (t) => {
  for (const good of ['round_robin', 'least_conn', 'ip_hash', 'header:x-tenant']) {
    t.equal(parseConfig({ routes: [route({ balance: good })] }).routes[0].balance, good);
  }
  for (const bad of ['random', 'header:', 'header:bad name']) {
    t.same(problems({ routes: [route({ balance: bad })] }),
      [`routes[0].balance: expected one of round_robin|least_conn|ip_hash|header:<name>, got ${JSON.stringify(bad)}`]);
  }
});

t.test('numbers: ports 0..65535, positive integers', async (t) => {
  t.same(problems({ listen: { port: 70000 } }), ['listen.port: expected a port number 0..65535, got 70000']);
  t.same(problems({ listen: { port: '8080' } }), ['listen.port: expected a port number 0..65535, got "8080"']);
  t.same(problems({ admin: { port: -1 } }), ['admin.port: expected a port number 0..65535, got -1']);
  t.same(problems({ limits: { maxFrameBytes: 0, channelCapacity: 1.5 } }), [
    'limits.maxFrameBytes: expected a positive integer, got 0',
    'limits.channelCapacity: expected a positive integer, got 1.5',
  ]);
  t.same(problems({ routes: [route({ upstreams: [{ url: 'ws://h', weight: 0 }] })] }),
    ['routes[0].upstreams[0].weight: expected a positive integer, got 0']);
  t.same(problems({ heartbeat: { pingIntervalSeconds: 60, pongTimeoutSeconds: 30 } }),
    ['heartbeat.pongTimeoutSeconds: expected more than heartbeat.pingIntervalSeconds (60), got 30']);
  t.equal(parseConfig({ routes: [route({ health: { intervalMs: 0 } })] }).routes[0].health.intervalMs, 0, '0 disables active checks');
});

t.test('enums and kinds', async (t) => {
  t.same(problems({ protocol: 'v3', log: { level: 'loud' } }), [
    'protocol: expected one of v1|v2, got "v3"',
    'log.level: expected one of fatal|error|warn|info|debug|trace|silent, got "loud"',
  ]);
  t.same(problems({ routes: [route({ mode: 'magic', backpressure: 'wait', compression: 'yes' })] }), [
    'routes[0].mode: expected one of transparent|envelope|agent, got "magic"',
    'routes[0].backpressure: expected one of pause|close|drop, got "wait"',
    'routes[0].compression: expected true or false, got "yes"',
  ]);
  t.same(problems({ routes: [route(), route({ path: '/b', http: 'yes' })] }), ['routes[1].http: expected true or false, got "yes"']);
  t.equal(parseConfig({ routes: [route({ http: true })] }).routes[0].http, true);
  t.equal(parseConfig({ routes: [route()] }).routes[0].http, false, 'http defaults to false');
  t.same(problems({ routes: [{ path: '/e', http: true, upstreams: [{ url: 'builtin:echo' }] }] }),
    ['routes[0].http: expected false on a route with a builtin:echo upstream (the built-in echo has no HTTP side), got true']);
  t.same(problems({ listen: 5 }), ['listen: expected a mapping of settings, got 5']);
  t.same(problems([]), ['(top level): expected a mapping of settings, got []']);
});

t.test('unknown keys are rejected with their key path', async (t) => {
  t.same(problems({ lissen: {}, routes: [route({ upstream: 'ws://x' })], limits: { maxFrames: 1 } }).sort(), [
    'lissen: unknown key',
    'limits.maxFrames: unknown key',
    'routes[0].upstream: unknown key',
  ].sort(), 'every unknown key, one line each');
});

t.test('at least one route, at least one upstream', async (t) => {
  t.same(problems({ routes: [] }), ['routes: expected at least one route, got []']);
  t.same(problems({ routes: [{ path: '/a', upstreams: [] }] }), ['routes[0].upstreams: expected at least one upstream, got []']);
});

t.test('origins: exact scheme://host[:port] or "*"', async (t) => {
  t.same(parseConfig({ origins: ['https://app.example', 'http://localhost:3000', '*'] }).origins,
    ['https://app.example', 'http://localhost:3000', '*']);
  for (const bad of ['app.example', 'https://app.example/', 'https://app.example/path', 'http://a.example:80', 'https://APP.example']) {
    t.same(problems({ origins: [bad] }),
      [`origins[0]: expected "*" or an exact origin scheme://host[:port] (no path, no trailing "/"), got ${JSON.stringify(bad)}`], bad);
  }
});

t.test('several problems: one line each', async (t) => {
  const lines = problems({ listen: { port: 'x' }, routes: [{ path: 'a', upstreams: [{ url: 'http:/x' }] }], extra: 1 });
  t.equal(lines.length, 4);
  t.ok(lines.every((l) => !l.includes('\n')));
});

t.test('tls files must exist; relative paths are relative to the config file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'cert.pem'), 'x');
  t.same(problems({ listen: { tls: { certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'nope.pem') } } }),
    [`listen.tls.keyFile: expected a readable file, got ${JSON.stringify(join(dir, 'nope.pem'))} (no such file)`]);
  t.same(problems({ routes: [route({ tls: { caFile: dir } })] }),
    [`routes[0].tls.caFile: expected a readable file, got ${JSON.stringify(dir)} (not a file)`]);
  t.same(problems({ listen: { tls: { certFile: join(dir, 'cert.pem') } } }),
    ['listen.tls.keyFile: expected a file path, got nothing']);
  writeFileSync(join(dir, 'key.pem'), 'x');
  writeFileSync(join(dir, 'sluice.yaml'), 'listen:\n  tls:\n    certFile: cert.pem\n    keyFile: ./key.pem\n');
  const c = loadConfig({ file: join(dir, 'sluice.yaml'), env: {} }).config;
  t.same(c.listen.tls, { certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'key.pem') });
  t.doesNotThrow(() => parseConfig({ listen: { tls: { certFile: '/nope', keyFile: '/nope' } } }, { checkFiles: false }));
});

t.test('environment overrides, names honoured exactly', async (t) => {
  const env = {
    PIPEOPS_WS_PROTOCOL: 'v2',
    AGENT_WS_CHANNEL_CAPACITY: '50',
    AGENT_MAX_WS_FRAME_BYTES: '65536',
    AGENT_ALLOWED_WS_ORIGINS: 'https://a.example, http://localhost:3000',
    AGENT_WS_PING_INTERVAL_SECONDS: '10',
    AGENT_WS_PONG_TIMEOUT_SECONDS: '25',
    SLUICE_LOG_LEVEL: 'debug',
  };
  const c = parseConfig({ limits: { channelCapacity: 7 }, protocol: 'v1' }, { env });
  t.equal(c.protocol, 'v2');
  t.equal(c.limits.channelCapacity, 50, 'env beats the file');
  t.equal(c.limits.maxFrameBytes, 65536);
  t.same(c.origins, ['https://a.example', 'http://localhost:3000']);
  t.same(c.heartbeat, { pingIntervalSeconds: 10, pongTimeoutSeconds: 25 });
  t.equal(c.log.level, 'debug');
  t.equal(parseConfig({ limits: { channelCapacity: 7 } }).limits.channelCapacity, 7, 'no env option: no overrides');

  t.same(parseConfig({ origins: ['https://a.example'] }, { env: { AGENT_ALLOWED_WS_ORIGINS: '' } }).origins, [], 'empty = all');
  t.same(parseConfig({ origins: ['https://a.example'] }, { env: { AGENT_ALLOWED_WS_ORIGINS: '*' } }).origins, [], '* = all');
  t.equal(parseConfig({}, { env: { AGENT_WS_CHANNEL_CAPACITY: '' } }).limits.channelCapacity, 100, 'empty = unset');
});

t.test('bad environment values are errors naming the variable', async (t) => {
  t.same(problems({}, { env: {
    PIPEOPS_WS_PROTOCOL: 'v3', AGENT_WS_CHANNEL_CAPACITY: 'lots', AGENT_MAX_WS_FRAME_BYTES: '-5',
    AGENT_ALLOWED_WS_ORIGINS: 'https://ok.example,bad', AGENT_WS_PING_INTERVAL_SECONDS: '1.5', SLUICE_LOG_LEVEL: 'chatty',
  } }), [
    'PIPEOPS_WS_PROTOCOL: expected one of v1|v2, got "v3"',
    'AGENT_WS_CHANNEL_CAPACITY: expected a positive integer, got "lots"',
    'AGENT_MAX_WS_FRAME_BYTES: expected a positive integer, got "-5"',
    'AGENT_ALLOWED_WS_ORIGINS: expected "*" or an exact origin scheme://host[:port] (no path, no trailing "/") in a comma list, got "bad"',
    'AGENT_WS_PING_INTERVAL_SECONDS: expected a positive integer, got "1.5"',
    'SLUICE_LOG_LEVEL: expected one of fatal|error|warn|info|debug|trace|silent, got "chatty"',
  ]);
  t.same(problems({}, { env: { AGENT_WS_PONG_TIMEOUT_SECONDS: '10' } }),
    ['heartbeat.pongTimeoutSeconds: expected more than heartbeat.pingIntervalSeconds (30), got 10 (set by AGENT_WS_PONG_TIMEOUT_SECONDS)']);
});

t.test('JSON and YAML files give the same config; SLUICE_CONFIG names the file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const yamlFile = join(dir, 'sluice.yaml');
  const jsonFile = join(dir, 'sluice.json');
  writeFileSync(yamlFile, [
    'listen:', '  port: 9001', 'routes:', '  - path: /chat/*', '    balance: least_conn',
    '    upstreams:', '      - url: ws://127.0.0.1:7001', '      - url: ws://127.0.0.1:7002', '        weight: 3', '',
  ].join('\n'));
  writeFileSync(jsonFile, JSON.stringify({
    listen: { port: 9001 },
    routes: [{ path: '/chat/*', balance: 'least_conn', upstreams: [{ url: 'ws://127.0.0.1:7001' }, { url: 'ws://127.0.0.1:7002', weight: 3 }] }],
  }));
  const fromYaml = loadConfig({ file: yamlFile, env: {} });
  const fromJson = loadConfig({ env: { SLUICE_CONFIG: jsonFile } });
  t.same(fromYaml.config, fromJson.config);
  t.equal(fromJson.file, jsonFile);
  t.equal(fromYaml.config.routes[0].upstreams[1].weight, 3);
  t.same(loadConfig({ env: {} }).config, parseConfig({}), 'no file: defaults');
});

t.test('file problems name the file and the line', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const f = (name: string, text: string) => { writeFileSync(join(dir, name), text); return join(dir, name); };
  const lines = (file: string) => { try { loadConfig({ file, env: {} }); } catch (e) { return (e as { issues: string[] }).issues; } return []; };
  t.same(lines(join(dir, 'missing.yaml')), [`${join(dir, 'missing.yaml')}: cannot read the config file (no such file)`]);
  const bad = f('bad.yaml', 'listen:\n  port: 1\n  port: 2\n');
  t.match(lines(bad)[0], new RegExp(`^${bad.replace(/[.]/g, '\\.')}:3:3: invalid YAML: Map keys must be unique`));
  const list = f('list.yaml', '- a\n- b\n');
  t.same(lines(list), [`${list}: expected a mapping of settings at the top level, got ["a","b"]`]);
  const json = f('bad.json', '{"listen": }');
  t.match(lines(json)[0], new RegExp(`^${json.replace(/[.]/g, '\\.')}: invalid JSON: `));
  t.same(lines(f('empty.yaml', '')), [], 'an empty file is the default config');
  t.same(parseConfigText('{"a":1}', 'yaml'), { a: 1 }, 'YAML reads JSON');
});

t.test('sources: default, file, env, cli', async (t) => {
  const r = resolveConfig(
    { listen: { port: 9001 }, limits: { channelCapacity: 7 }, admin: { token: 'hunter2' } },
    {
      inputOrigin: 'sluice.yaml',
      env: { AGENT_WS_CHANNEL_CAPACITY: '50' },
      cli: [{ path: ['listen', 'port'], value: 9100, flag: '--port' },
        { path: ['routes'], value: [{ path: '/*', upstreams: [{ url: 'ws://127.0.0.1:7001' }] }], flag: '--upstream' }],
    },
  );
  t.same(r.sources.get('listen.port'), { source: 'cli', origin: '--port' });
  t.same(r.sources.get('limits.channelCapacity'), { source: 'env', origin: 'AGENT_WS_CHANNEL_CAPACITY' });
  t.same(r.sources.get('admin.token'), { source: 'file', origin: 'sluice.yaml' });
  t.same(r.sources.get('routes[0].upstreams[0].url'), { source: 'cli', origin: '--upstream' });
  t.equal(r.sources.get('limits.maxFrameBytes'), undefined, 'defaults are not listed');
  const text = describeConfig(r).join('\n');
  t.match(text, /^listen\.port = 9100 +# cli --port$/m);
  t.match(text, /^limits\.channelCapacity = 50 +# env AGENT_WS_CHANNEL_CAPACITY$/m);
  t.match(text, /^limits\.maxFrameBytes = 1048576 +# default$/m);
  t.match(text, /^routes\[0\]\.upstreams\[0\]\.url = "ws:\/\/127\.0\.0\.1:7001" +# cli --upstream$/m);
  t.match(text, /^routes\[0\]\.mode = "transparent" +# default$/m);
  t.match(text, /^admin\.token = "\*\*\*" +# file sluice\.yaml$/m, 'the token is masked');
  t.notMatch(text, /hunter2/);
});

t.test('a library caller’s object that is not plain data is a ConfigError, not a crash', async (t) => {
  t.same(problems({ routes: [{ path: '/a', upstreams: [{ url: 'ws://h', pick: () => 1 }] }] }),
    ['(top level): expected plain data (mappings, lists, strings, numbers, booleans), got a value that cannot be copied']);
  const input = { limits: { channelCapacity: 5 } };
  parseConfig(input, { env: { AGENT_WS_CHANNEL_CAPACITY: '9' } });
  t.same(input, { limits: { channelCapacity: 5 } }, 'the caller’s object is not changed by overrides');
});

t.test('routes[].auth: jwt needs exactly one key source; defaults follow it', async (t) => {
  const secret = 's'.repeat(32);
  t.same(parseConfig({ routes: [route({ auth: { jwt: { secret } } })] }).routes[0].auth, {
    jwt: {
      secret, algorithms: ['HS256'], clockToleranceSeconds: 30, from: 'header', queryParam: 'access_token',
      protocolPrefix: 'bearer.', closeOnExpiry: true,
    },
  }, 'the simplest form: HS256 in Authorization: Bearer');
  t.same(parseConfig({ routes: [route({ auth: { jwt: { jwksFile: 'keys.json' } } })] }, { checkFiles: false }).routes[0].auth!.jwt!.algorithms,
    ['RS256', 'ES256'], 'keys: RS256 and ES256, never HS256');
  t.same(problems({ routes: [route({ auth: { jwt: { secret, publicKeyFile: 'k.pem' } } })] }, { checkFiles: false }),
    ['routes[0].auth.jwt: expected exactly one of secret, publicKeyFile, jwksFile, got ["secret","publicKeyFile"]']);
  t.same(problems({ routes: [route({ auth: { jwt: { issuer: 'x' } } })] }),
    ['routes[0].auth.jwt: expected exactly one of secret, publicKeyFile, jwksFile, got []']);
  t.same(problems({ routes: [route({ auth: { jwt: { secret: 'short-secret' } } })] }),
    ['routes[0].auth.jwt.secret: expected at least 32 bytes (RFC 7518 §3.2; the value is not shown), got "12 bytes"'],
    'a short secret is refused without being echoed');
  t.same(problems({ routes: [route({ auth: { jwt: { secret, algorithms: ['RS256'] } } })] }),
    ['routes[0].auth.jwt.algorithms: expected only HS256 with a secret, got ["RS256"]']);
  t.same(problems({ routes: [route({ auth: { jwt: { publicKeyFile: 'k.pem', algorithms: ['HS256', 'PS256'] } } })] }, { checkFiles: false }),
    ['routes[0].auth.jwt.algorithms[1]: expected one of HS256|RS256|ES256, got "PS256"']);
  t.same(problems({ routes: [route({ auth: { jwt: { secret, from: 'cookie', clockToleranceSeconds: -1, protocolPrefix: 'has space' } } })] }), [
    'routes[0].auth.jwt.clockToleranceSeconds: expected an integer >= 0, got -1',
    'routes[0].auth.jwt.from: expected one of header|protocol|query, got "cookie"',
    'routes[0].auth.jwt.protocolPrefix: expected subprotocol token characters (letters, digits, !#$%&\'*+.^_`|~-), got "has space"',
  ]);
  t.same(problems({ routes: [route({ auth: {} })] }), ['routes[0].auth: expected jwt, apiKeys or both, got {}']);
  t.same(problems({ routes: [route({ auth: { jwt: { secret }, basic: true } })] }), ['routes[0].auth.basic: unknown key']);
});

t.test('routes[].auth.apiKeys: SHA-256 digests, header or query', async (t) => {
  const digest = 'AB'.repeat(32);
  t.same(parseConfig({ routes: [route({ auth: { apiKeys: { sha256: [digest], header: 'X-Tenant-Key' } } })] }).routes[0].auth, {
    apiKeys: { sha256: ['ab'.repeat(32)], from: 'header', header: 'x-tenant-key', queryParam: 'api_key', agents: {} },
  }, 'digests and header names are lower-cased');
  t.same(problems({ routes: [route({ auth: { apiKeys: { sha256: ['plaintext-key'] } } })] }),
    ['routes[0].auth.apiKeys.sha256[0]: expected a SHA-256 digest (64 hex digits) or { sha256, agents: [names] }, got "plaintext-key"']);
  t.same(problems({ routes: [route({ auth: { apiKeys: { sha256: [] } } })] }),
    ['routes[0].auth.apiKeys.sha256: expected at least one key digest, got []']);
  t.same(problems({ routes: [route({ auth: { apiKeys: { sha256: [digest], from: 'body', header: 'bad header' } } })] }), [
    'routes[0].auth.apiKeys.from: expected one of header|query, got "body"',
    'routes[0].auth.apiKeys.header: expected an HTTP header name, got "bad header"',
  ]);
});

t.test('connection and message limits', async (t) => {
  const c = parseConfig({
    limits: { connectionRatePerIp: 20, connectionBurstPerIp: 40, messagesPerSecond: 1000, bytesPerSecond: 1 << 20, handshakeTimeoutMs: 2000, maxHeaderBytes: 8192, maxHeaderCount: 50 },
    routes: [route({ maxConnections: 5 })],
  });
  t.equal(c.routes[0].maxConnections, 5);
  t.match(c.limits, { connectionRatePerIp: 20, connectionBurstPerIp: 40, messagesPerSecond: 1000, bytesPerSecond: 1048576, handshakeTimeoutMs: 2000, maxHeaderBytes: 8192, maxHeaderCount: 50 });
  t.same(problems({ limits: { connectionRatePerIp: -1, messagesPerSecond: 0.5, handshakeTimeoutMs: 0, maxHeaderBytes: 0, maxHeaderCount: 'many' }, routes: [route({ maxConnections: -2 })] }), [
    'limits.connectionRatePerIp: expected an integer >= 0, got -1',
    'limits.messagesPerSecond: expected an integer >= 0, got 0.5',
    'limits.handshakeTimeoutMs: expected a positive integer, got 0',
    'limits.maxHeaderBytes: expected a positive integer, got 0',
    'limits.maxHeaderCount: expected a positive integer, got "many"',
    'routes[0].maxConnections: expected an integer >= 0, got -2',
  ]);
});

t.test('agent routes and tunnels (issue #14)', async (t) => {
  const digest = 'cd'.repeat(32);
  const agentRoute = { path: '/agent', mode: 'agent' as const, auth: { apiKeys: { sha256: ['ab'.repeat(32), { sha256: digest.toUpperCase(), agents: ['site-b'] }] } } };
  const c = parseConfig({ routes: [agentRoute], tunnels: [{ listen: '127.0.0.1:15432', agent: 'site-a', service: 'db' }] });
  t.same(c.routes[0].upstreams, [], 'an agent route has no upstreams');
  t.equal(c.routes[0].duplicate, 'replace', 'a reconnecting agent takes its name over by default');
  t.same(c.routes[0].auth?.apiKeys?.sha256, ['ab'.repeat(32), digest], 'digests of both forms, lower-cased');
  t.same(c.routes[0].auth?.apiKeys?.agents, { [digest]: ['site-b'] }, 'the names a key may register, by digest');
  t.same(c.tunnels, [{ listen: '127.0.0.1:15432', agent: 'site-a', service: 'db', protocol: 'tcp', udpIdleMs: 60000 }]);
  t.same(parseConfig(c), c, 'a resolved config parses again as itself');
  t.same(problems({ routes: [{ path: '/agent', mode: 'agent', upstreams: [{ url: 'ws://127.0.0.1:1/' }] }] }), [
    'routes[0].upstreams: expected none on an agent route (agents connect to it), got 1',
    'routes[0].auth: expected jwt or apiKeys on an agent route (agents must authenticate), got nothing',
  ]);
  t.same(problems({ routes: [{ path: '/x' }] }), ['routes[0].upstreams: expected at least one upstream, got []']);
  t.same(problems({ workers: 2, routes: [agentRoute] }),
    ['workers: expected 1 with agent routes or tunnels (an agent is connected to one shard, and its tunnels must be there), got 2']);
  t.same(problems({
    routes: [agentRoute],
    tunnels: [
      { listen: '127.0.0.1', agent: 'a', service: 'b' },
      { listen: '127.0.0.1:99999', agent: 'bad name', service: 'b', protocol: 'sctp' },
    ],
  }), [
    'tunnels[0].listen: expected host:port (an IPv6 host in brackets), got "127.0.0.1"',
    'tunnels[1].listen: expected host:port (an IPv6 host in brackets), got "127.0.0.1:99999"',
    'tunnels[1].agent: expected a name: letters, digits, ".", "_", "-" (at most 63, starting with a letter or digit), got "bad name"',
    'tunnels[1].protocol: expected one of tcp|udp, got "sctp"',
  ]);
  t.same(problems({
    routes: [agentRoute],
    tunnels: [{ listen: '[::1]:5000', agent: 'a', service: 'b' }, { listen: '[::1]:5000', agent: 'a', service: 'c' }],
  }), ['tunnels[1].listen: expected an address not already used by tunnels[0], got "[::1]:5000"']);
  t.same(problems({ routes: [route()], tunnels: [{ listen: '127.0.0.1:1', agent: 'a', service: 'b' }] }),
    ['tunnels: expected a route with mode: agent for the agents to connect to, got 1']);
});

t.test('routes[].resume: envelope routes only, with the pause policy; defaults', async (t) => {
  const c = parseConfig({ routes: [route({ mode: 'envelope', resume: {} })] });
  t.same(c.routes[0].resume, { graceSeconds: 30, bufferBytes: 1048576 }, 'resume: {} takes the defaults');
  t.equal(parseConfig({ routes: [route({ mode: 'envelope' })] }).routes[0].resume, undefined, 'absent: off');
  t.same(problems({ routes: [route({ resume: {} })] }),
    ['routes[0].resume: expected only on a route with mode: envelope (resume numbers envelope data frames), got {"graceSeconds":30,"bufferBytes":1048576}']);
  t.same(problems({ routes: [route({ mode: 'envelope', backpressure: 'drop', resume: {} })] }),
    ['routes[0].backpressure: expected pause on a route with resume (close and drop lose messages, which resume promises not to), got "drop"']);
  t.same(problems({ routes: [route({ mode: 'envelope', resume: { graceSeconds: 0, bufferBytes: 'x' } })] }).length, 2, 'grace and buffer must be positive integers');
});

t.test('cluster: a Redis URL, a shared secret of 32 bytes, one worker', async (t) => {
  const secret = 's'.repeat(32);
  const c = parseConfig({ cluster: { redis: { url: 'redis://127.0.0.1:6379' }, secret } });
  t.same(c.cluster, { redis: { url: 'redis://127.0.0.1:6379', keyPrefix: 'sluice:' }, leaseSeconds: 10, secret }, 'defaults');
  t.equal(parseConfig({}).cluster, undefined, 'absent: one instance, no Redis');
  t.same(problems({ cluster: { redis: { url: 'http://x' }, secret } }),
    ['cluster.redis.url: expected a redis:// or rediss:// URL (a password may be in it), got "http://x"']);
  t.same(problems({ cluster: { redis: { url: 'rediss://:pw@h:6380' }, secret: 'short' } }),
    ['cluster.secret: expected a secret of at least 32 bytes, the same on every instance, got "short"']);
  t.same(problems({ workers: 2, cluster: { redis: { url: 'redis://h' }, secret } }),
    ['workers: expected 1 with cluster (each instance is one process; run more instances for more cores), got 2']);
  t.same(problems({ cluster: { redis: { url: 'redis://h' }, secret, leaseSeconds: 1, advertise: 'http://x' } }).length, 2, 'leaseSeconds >= 2, advertise ws(s)://host:port');
  t.equal(parseConfig({ routes: [route({ auth: { apiKeys: { sha256: ['ab'.repeat(32)] }, connectionRatePerSubject: 5 } })] }).routes[0].auth?.connectionRatePerSubject, 5,
    'routes[].auth.connectionRatePerSubject');
});

t.test('admin.tokens: named tokens; bad ones are named by key path without their value; --check masks them', async (t) => {
  const ok = parseConfig({ admin: { token: 'root-token', tokens: [{ name: 'oncall', token: 'oncall-token' }, { name: 'ci.bot', token: 'x!y~z' }] } });
  t.same(ok.admin?.tokens?.map((x) => x.name), ['oncall', 'ci.bot']);
  t.same(problems({ admin: { token: 'has space' } }), ['admin.token: expected a token of visible ASCII characters (no spaces), got a string of 9 characters']);
  t.same(problems({ admin: { tokens: [{ name: 'ops', token: 'tøken' }] } }),
    ['admin.tokens[0].token: expected a token of visible ASCII characters (no spaces), got a string of 5 characters']);
  t.same(problems({ admin: { tokens: [] } }), ['admin.tokens: expected at least one { name, token } (leave tokens out for none), got []']);
  t.same(problems({ admin: { tokens: [{ name: 'a', token: 'x' }, { name: 'a', token: 'y' }] } }).length, 1, 'a name twice');
  t.match(problems({ admin: { tokens: [{ name: 'a', token: 'x' }, { name: 'a', token: 'y' }] } })[0], /^admin\.tokens: expected each token name once/);
  t.same(problems({ admin: { token: 'x', tokens: [{ name: 'admin', token: 'y' }] } }),
    ['admin.tokens[0].name: expected another name: "admin" is admin.token\'s, got "admin"']);
  t.same(parseConfig({ admin: { tokens: [{ name: 'admin', token: 'y' }] } }).admin?.tokens?.[0].name, 'admin', 'the name admin is free without admin.token');
  t.same(problems({ admin: { tokens: [{ name: '-bad', token: 'y' }] } }).length, 1, 'a bad name');
  const text = describeConfig(resolveConfig({ admin: { tokens: [{ name: 'oncall', token: 'hunter3' }] } }, { env: {} })).join('\n');
  t.match(text, /^admin\.tokens\[0\]\.token = "\*\*\*"/m, 'masked by --check');
  t.match(text, /^admin\.tokens\[0\]\.name = "oncall"/m, 'the name is shown');
  t.notMatch(text, /hunter3/);
});
