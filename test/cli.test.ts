/**
 * The `sluice` command as a user runs it: a real process from dist/cli.js (built here when
 * missing or older than the sources), real sockets on 127.0.0.1.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { buildCli, cleanEnv, cli, root, startCli } from './fixtures/cli-process.js';

const note = buildCli();
if (note !== null) t.comment(note);
const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;

function sluice(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [cli, ...args], { env: cleanEnv(env), encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const dir = mkdtempSync(join(tmpdir(), 'sluice-cli-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
function file(name: string, text: string): string {
  writeFileSync(join(dir, name), text);
  return join(dir, name);
}

t.test('--help and --version', async (t) => {
  const help = sluice(['--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /^Usage: sluice \[options\]/);
  for (const flag of ['--config FILE', '--check', '--port N', '--upstream URL', '--host ADDR', '--admin-port N', 'AGENT_WS_CHANNEL_CAPACITY']) {
    t.ok(help.stdout.includes(flag), `help mentions ${flag}`);
  }
  t.same(sluice(['--version']), { code: 0, stdout: `sluice ${version}\n`, stderr: '' });
  t.equal(sluice(['-v']).stdout, `sluice ${version}\n`);
});

t.test('--check of a good file prints every value with its source', async (t) => {
  const f = file('good.yaml', 'listen:\n  port: 9001\nlimits:\n  channelCapacity: 7\nroutes:\n  - path: /chat/*\n    upstreams:\n      - url: ws://127.0.0.1:7001\n');
  const r = sluice(['--check', '--config', f, '--host', '0.0.0.0'], { AGENT_WS_CHANNEL_CAPACITY: '50' });
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stderr, '');
  const lines = r.stdout.split('\n');
  t.equal(lines[0], `# sluice ${version}: config OK (file ${f})`);
  t.match(r.stdout, /^listen\.host = "0\.0\.0\.0" +# cli --host$/m);
  t.match(r.stdout, new RegExp(`^listen\\.port = 9001 +# file ${f.replace(/[.]/g, '\\.')}$`, 'm'));
  t.match(r.stdout, /^limits\.channelCapacity = 50 +# env AGENT_WS_CHANNEL_CAPACITY$/m);
  t.match(r.stdout, /^limits\.maxFrameBytes = 1048576 +# default$/m);
  t.match(r.stdout, /^routes\[0\]\.backpressure = "pause" +# default$/m);

  const viaEnv = sluice(['--check'], { SLUICE_CONFIG: f });
  t.equal(viaEnv.code, 0);
  t.match(viaEnv.stdout, /^listen\.port = 9001 /m, 'SLUICE_CONFIG names the file when --config is not given');
  const none = sluice(['--check']);
  t.match(none.stdout, /config OK \(no file: built-in defaults\)/);
  t.match(none.stdout, /^routes\[0\]\.upstreams\[0\]\.url = "builtin:echo" +# default$/m);
});

t.test('--check of a bad file: exit 2, one line per problem, no stack trace', async (t) => {
  const f = file('bad.yaml', [
    'listen:', '  port: 70000', 'routes:', '  - path: chat', '    upstreams:', '      - url: http:/x', '    balanse: ip_hash', '',
  ].join('\n'));
  const r = sluice(['--check', '--config', f]);
  t.equal(r.code, 2);
  t.equal(r.stdout, '');
  t.same(r.stderr.trimEnd().split('\n').sort(), [
    'listen.port: expected a port number 0..65535, got 70000',
    'routes[0].balanse: unknown key',
    'routes[0].path: expected a path starting with "/" ("*" only as a trailing "/*"), got "chat"',
    'routes[0].upstreams[0].url: expected a ws:// or wss:// URL, got "http:/x"',
  ]);
  t.notMatch(r.stderr, /^\s+at /m, 'no stack trace');
});

t.test('bad files, flags and environment values: exit 2, named', async (t) => {
  const missing = sluice(['--check', '--config', join(dir, 'nope.yaml')]);
  t.same(missing, { code: 2, stdout: '', stderr: `${join(dir, 'nope.yaml')}: cannot read the config file (no such file)\n` });

  const yaml = sluice(['--config', file('broken.yaml', 'routes: [\n')]);
  t.equal(yaml.code, 2);
  t.match(yaml.stderr, /broken\.yaml:\d+:\d+: invalid YAML: /);
  t.equal(yaml.stderr.trimEnd().split('\n').length, 1);

  const env = sluice(['--check'], { AGENT_MAX_WS_FRAME_BYTES: 'big', PIPEOPS_WS_PROTOCOL: 'v9' });
  t.equal(env.code, 2);
  t.same(env.stderr.trimEnd().split('\n'), [
    'PIPEOPS_WS_PROTOCOL: expected one of v1|v2, got "v9"',
    'AGENT_MAX_WS_FRAME_BYTES: expected a positive integer, got "big"',
  ]);

  const flags = sluice(['--port', '99999', '--upstream', 'http://x', '--admin-port', 'nine']);
  t.equal(flags.code, 2);
  t.same(flags.stderr.trimEnd().split('\n'), [
    '--port: expected a port number 0..65535, got "99999"',
    '--admin-port: expected a port number 0..65535, got "nine"',
    '--upstream: expected a ws:// or wss:// URL, got "http://x"',
  ]);

  const unknown = sluice(['--bogus']);
  t.equal(unknown.code, 2);
  t.match(unknown.stderr, /^sluice: Unknown option '--bogus' \(see sluice --help\)\n$/);
});

/** A running sluice: its JSON log lines and a way to wait for one. */
function start(args: string[], env: Record<string, string> = {}) {
  return startCli(args, env, 30_000);
}

function echo(url: string, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('no echo within 5 s')); }, 5000);
    ws.on('open', () => ws.send(text));
    ws.on('message', (m) => { clearTimeout(timer); ws.close(); resolve(String(m)); });
    ws.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

t.test('runs the built-in echo, reloads on SIGHUP, drains on SIGTERM', async (t) => {
  const f = file('run.yaml', 'listen:\n  port: 0\nadmin:\n  port: 0\n');
  const p = start(['--config', f]);
  t.teardown(() => { p.child.kill('SIGKILL'); });
  const listening = await p.waitFor((l) => l.event === 'listening');
  const routes = listening.routes as Array<{ path: string; url: string }>;
  t.equal(routes[0].path, '/echo');
  t.equal(await echo(routes[0].url, 'hello'), 'hello', 'the default route echoes');
  t.ok(p.logs.some((l) => String(l.msg).startsWith(`try it: npx wscat -c ${routes[0].url}`)), 'says how to try it');
  const admin = String(listening.admin);
  t.equal(await (await fetch(`${admin}/healthz`)).text(), 'ok\n');

  // A bad file on SIGHUP: refused, logged, the running config kept.
  writeFileSync(f, 'listen:\n  port: 0\nadmin:\n  port: 0\nroutes:\n  - path: /echo\n    upstreams:\n      - url: http:/x\n');
  let mark = p.logs.length;
  p.child.kill('SIGHUP');
  const refused = await p.waitFor((l) => l.event === 'reload', mark);
  t.equal(refused.level, 'error');
  t.same(refused.issues, ['routes[0].upstreams[0].url: expected a ws:// or wss:// URL, got "http:/x"']);
  t.equal(await echo(routes[0].url, 'still here'), 'still here', 'the old config still serves');

  // A good file on SIGHUP: applied.
  writeFileSync(f, 'listen:\n  port: 0\nadmin:\n  port: 0\nroutes:\n  - path: /echo2\n    upstreams:\n      - url: builtin:echo\n');
  mark = p.logs.length;
  p.child.kill('SIGHUP');
  const reloaded = await p.waitFor((l) => l.event === 'reload' && l.trigger === 'SIGHUP', mark);
  t.equal(reloaded.level, 'info');
  t.equal(await echo(routes[0].url.replace(/\/echo$/, '/echo2'), 'new route'), 'new route');

  // POST /reload without a body re-reads the file too.
  const res = await fetch(`${admin}/reload`, { method: 'POST' });
  t.equal(res.status, 200);

  p.child.kill('SIGTERM');
  t.equal(await p.exited, 0, 'graceful drain, then exit 0');
  t.ok(p.logs.some((l) => l.event === 'drain' && l.signal === 'SIGTERM'));
  t.equal(p.stderr(), '');
});

t.test('quick mode: --port and --upstream', async (t) => {
  // The upstream is another sluice serving the built-in echo.
  const backend = start(['--port', '0']);
  t.teardown(() => { backend.child.kill('SIGKILL'); });
  const b = await backend.waitFor((l) => l.event === 'listening');
  const backendUrl = (b.routes as Array<{ url: string }>)[0].url;

  const front = start(['--port', '0', '--upstream', backendUrl.replace(/\/echo$/, '')]);
  t.teardown(() => { front.child.kill('SIGKILL'); });
  const f = await front.waitFor((l) => l.event === 'listening');
  const routes = f.routes as Array<{ path: string; url: string }>;
  t.equal(routes[0].path, '/*');
  t.equal(await echo(`${routes[0].url}echo`, 'through two proxies'), 'through two proxies');
  front.child.kill('SIGINT');
  backend.child.kill('SIGTERM');
  t.equal(await front.exited, 0);
  t.equal(await backend.exited, 0);
});

t.test('a port in use: exit 1, one line with the error code', async (t) => {
  const holder: Server = createServer();
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
  t.teardown(() => holder.close());
  const port = String((holder.address() as { port: number }).port);

  const r = sluice(['--port', port]);
  t.equal(r.code, 1);
  t.match(r.stderr, /^sluice: .+ \(SLUICE_ERR_LISTEN\)\n$/);

  const a = sluice(['--port', '0', '--admin-port', port]);
  t.equal(a.code, 1);
  t.match(a.stderr, /^sluice: admin server cannot listen on 127\.0\.0\.1:\d+: address in use .*\(SLUICE_ERR_ADMIN_LISTEN\)\n$/);
});
