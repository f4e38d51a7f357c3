#!/usr/bin/env node
/**
 * `sluice`: the standalone proxy.
 *
 * Exit codes: 0 after a clean stop (SIGTERM/SIGINT drain) or --help/--version/--check;
 * 2 for a bad config, flag or environment value (one line per problem on stderr);
 * 1 for any other startup failure (one line with its SLUICE_ERR_* code).
 * No stack trace is printed for either: they are the user's to fix, not ours to debug.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { AdminServer } from './admin/index.js';
import {
  BUILTIN_ECHO_URL, describeConfig, isUpstreamUrl, loadConfig, resolveConfig,
  type CliValue, type ProxyConfig, type ResolvedConfig,
} from './config/index.js';
import { ConfigError, isSluiceError } from './errors.js';
import { createLogger, type Logger } from './log.js';

const USAGE = `Usage: sluice [options]

A WebSocket proxy: clients connect to sluice, sluice connects them to an upstream.

  sluice                          built-in demo: ws://127.0.0.1:8080/echo answers with what you send
  sluice --config sluice.yaml     routes, limits and admin server from a YAML or JSON file
  sluice --port 8080 --upstream ws://127.0.0.1:3000/ws
                                  quick mode: every path (/*) to that upstream
  sluice agent --help             the tunnel agent (dials out to a sluice gateway)

Options:
  -c, --config FILE     config file (YAML or JSON); default: $SLUICE_CONFIG, else built-in defaults
      --check           validate, print the effective config with the source of each value, exit
                        (0 when valid, 2 with one line per problem when not)
  -p, --port N          listen port (0 = any free port)
      --host ADDR       listen address (default 127.0.0.1; 0.0.0.0 for every interface)
  -u, --upstream URL    ws:// or wss:// upstream for one route "/*" (repeat for several upstreams)
      --admin-port N    serve /metrics /healthz /readyz /stats /reload on 127.0.0.1:N
      --workers N       shards: worker threads sharing the port (0 = one per core; default 1,
                        which runs on the main thread)
      --cluster-wide    with cluster: a SIGHUP reloads every instance (each re-reads its own
                        config), not only this one
  -h, --help            this text
  -v, --version         the version

Environment (overrides the file; flags override both):
  PIPEOPS_WS_PROTOCOL             v1 | v2, envelope protocol allowed on envelope routes
  AGENT_WS_CHANNEL_CAPACITY       messages queued per direction (default 100)
  AGENT_MAX_WS_FRAME_BYTES        largest message (default 1048576)
  AGENT_ALLOWED_WS_ORIGINS        comma list of origins; empty or * = all
  AGENT_WS_PING_INTERVAL_SECONDS  heartbeat ping interval (default 30)
  AGENT_WS_PONG_TIMEOUT_SECONDS   close when no pong for this long (default 90)
  SLUICE_CONFIG                   config file when --config is not given
  SLUICE_LOG_LEVEL                fatal|error|warn|info|debug|trace|silent (default info)

Signals: SIGTERM/SIGINT drain and stop; SIGHUP reloads the config (the running one is kept
when the new one has problems). POST /reload?cluster=1 on the admin server reloads every
instance of a cluster.
Exit codes: 0 ok, 1 startup failure (SLUICE_ERR_* code), 2 bad config or flag.
`;

/** The running proxy as the CLI uses it: the in-process `Proxy`, or shards in worker threads. */
type RunningProxy = import('./proxy/index.js').Proxy | import('./shard/index.js').ShardedProxy;

function version(): string {
  // dist/cli.js and src/cli.ts both sit one folder below package.json.
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** Exit with a bad-input status: every problem on its own line. */
function failConfig(lines: readonly string[]): never {
  process.stderr.write(lines.map((l) => `${l}\n`).join(''));
  process.exit(2);
}

/** Exit after a startup failure: one line with the error's code. */
function failStartup(err: unknown): never {
  if (isSluiceError(err, 'SLUICE_ERR_CONFIG')) failConfig((err as ConfigError).issues ?? [err.message]);
  const code = isSluiceError(err) ? err.code : 'SLUICE_ERR_STARTUP';
  const message = (err instanceof Error ? err.message : String(err)).split('\n')[0];
  process.stderr.write(`sluice: ${message} (${code})\n`);
  process.exit(1);
}

/** Turns flag values into config values, checking each and naming the flag when it is wrong. */
function flagValues(values: {
  port?: string; host?: string; upstream?: string[]; 'admin-port'?: string; workers?: string;
}): { cli: CliValue[]; problems: string[] } {
  const cli: CliValue[] = [];
  const problems: string[] = [];
  const port = (flag: string, text: string): number | undefined => {
    const n = Number(text);
    if (!/^[0-9]+$/.test(text) || n > 65535) {
      problems.push(`${flag}: expected a port number 0..65535, got ${JSON.stringify(text)}`);
      return undefined;
    }
    return n;
  };
  if (values.port !== undefined) {
    const n = port('--port', values.port);
    if (n !== undefined) cli.push({ path: ['listen', 'port'], value: n, flag: '--port' });
  }
  if (values.host !== undefined) {
    if (values.host.trim() === '') problems.push('--host: expected a host name or IP address, got ""');
    else cli.push({ path: ['listen', 'host'], value: values.host, flag: '--host' });
  }
  if (values['admin-port'] !== undefined) {
    const n = port('--admin-port', values['admin-port']);
    if (n !== undefined) cli.push({ path: ['admin', 'port'], value: n, flag: '--admin-port' });
  }
  if (values.workers !== undefined) {
    const n = Number(values.workers);
    if (!/^[0-9]+$/.test(values.workers)) problems.push(`--workers: expected an integer >= 0 (0 = one per core), got ${JSON.stringify(values.workers)}`);
    else cli.push({ path: ['workers'], value: n, flag: '--workers' });
  }
  if (values.upstream !== undefined && values.upstream.length > 0) {
    const bad = values.upstream.filter((u) => !isUpstreamUrl(u) || u === BUILTIN_ECHO_URL);
    for (const u of bad) problems.push(`--upstream: expected a ws:// or wss:// URL, got ${JSON.stringify(u)}`);
    if (bad.length === 0) {
      cli.push({ path: ['routes'], value: [{ path: '/*', upstreams: values.upstream.map((url) => ({ url })) }], flag: '--upstream' });
    }
  }
  return { cli, problems };
}

/** The WebSocket URL a client uses for a route ("/*" routes: the root). */
function routeUrl(config: ProxyConfig, path: string): string {
  const host = config.listen.host === '0.0.0.0' || config.listen.host === '::' ? '127.0.0.1' : config.listen.host;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  const scheme = config.listen.tls ? 'wss' : 'ws';
  return `${scheme}://${shownHost}:${config.listen.port}${path.endsWith('/*') ? path.slice(0, -1) : path}`;
}

/**
 * What the data plane gets. The CLI runs the admin server itself (it alone knows how to
 * re-read the config's sources), so the admin section is not handed on.
 */
function dataPlaneConfig(config: ProxyConfig): ProxyConfig {
  return { ...config, admin: undefined };
}

async function main(argv: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: 'string', short: 'c' },
        check: { type: 'boolean' },
        port: { type: 'string', short: 'p' },
        host: { type: 'string' },
        upstream: { type: 'string', short: 'u', multiple: true },
        'admin-port': { type: 'string' },
        workers: { type: 'string' },
        'cluster-wide': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
      },
    });
  } catch (err) {
    failConfig([`sluice: ${(err as Error).message.split(/\.\s|\n/)[0]} (see sluice --help)`]);
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (values.version) {
    process.stdout.write(`sluice ${version()}\n`);
    return;
  }

  const flags = flagValues(values);
  const load = (): ResolvedConfig => loadConfig({ file: values.config, env: process.env, cli: flags.cli });
  let resolved: ResolvedConfig;
  try {
    if (flags.problems.length > 0) {
      // Report the flags' problems together with the file's, when the file has any.
      let rest: string[] = [];
      try { load(); } catch (err) { if (isSluiceError(err, 'SLUICE_ERR_CONFIG')) rest = (err as ConfigError).issues; }
      throw new ConfigError([...flags.problems, ...rest]);
    }
    resolved = load();
  } catch (err) {
    failStartup(err);
  }

  if (values.check) {
    process.stdout.write(`# sluice ${version()}: config OK (${resolved.file ? `file ${resolved.file}` : 'no file: built-in defaults'})\n`);
    process.stdout.write(describeConfig(resolved).map((l) => `${l}\n`).join(''));
    return;
  }

  await run(resolved, load, flags.cli, values['cluster-wide'] === true);
}

async function run(resolved: ResolvedConfig, load: () => ResolvedConfig, cli: readonly CliValue[], clusterWide: boolean): Promise<void> {
  let config = resolved.config;
  const logger: Logger = createLogger(config.log.level);
  let proxy: RunningProxy;
  let admin: AdminServer | null = null;
  try {
    // Loaded only now, so --help, --version and --check work without the native parts.
    // One shard runs on the main thread (nothing to spread, no thread hop for /stats); more
    // run in worker threads sharing the port. Loaded only now, like the data plane.
    const shard = await import('./shard/index.js');
    if (shard.shardCount(config.workers) > 1) {
      proxy = shard.createShardedProxy(dataPlaneConfig(config));
    } else {
      const { createProxy } = await import('./proxy/index.js');
      proxy = createProxy(dataPlaneConfig(config));
    }
    await proxy.listen();
  } catch (err) {
    failStartup(err);
  }

  // One reload at a time: a SIGHUP during an admin reload waits for it.
  let reloading: Promise<unknown> = Promise.resolve();
  const reloadFromSource = (trigger: string): Promise<void> => {
    const attempt = reloading.then(async () => {
      const next = load();
      await proxy.reload(dataPlaneConfig(next.config));
      if (next.config.workers !== config.workers) {
        logger.warn({ event: 'reload' }, 'workers applies after a restart');
      }
      if (JSON.stringify(next.config.admin) !== JSON.stringify(config.admin)) {
        logger.warn({ event: 'reload' }, 'admin server settings changed; they apply after a restart');
      }
      if (next.config.log.level !== config.log.level) logger.level = next.config.log.level;
      config = next.config;
      logger.info({ event: 'reload', trigger, file: next.file ?? null }, 'config reloaded');
    });
    reloading = attempt.catch(() => undefined);
    return attempt;
  };
  /** After a reload here: every other instance of the cluster is asked to re-read its config. */
  const broadcast = async (trigger: string): Promise<number> => {
    if (!('broadcastReload' in proxy)) return 0;
    const heard = await proxy.broadcastReload();
    logger.info({ event: 'reload_broadcast', trigger, instances: heard }, `reload asked of ${heard} other instance${heard === 1 ? '' : 's'}`);
    return heard;
  };
  if ('broadcastReload' in proxy) {
    proxy.onClusterReload = (from) => {
      reloadFromSource(`cluster (${from})`).catch((err: unknown) => {
        logger.error({ event: 'reload', trigger: 'cluster', issues: (err as ConfigError).issues, err }, 'reload refused; the running config is kept');
      });
    };
  }

  try {
    if (config.admin) {
      const { startAdminServer } = await import('./admin/index.js');
      admin = await startAdminServer(proxy, config.admin, {
        logger,
        reloadFromSource: () => reloadFromSource('admin'),
        broadcastReload: () => broadcast('admin'),
        // A body is a file's replacement: environment and flags still apply on top of it.
        configFromBody: (input) => dataPlaneConfig(resolveConfig(input, { env: process.env, cli }).config),
      });
    }
  } catch (err) {
    await proxy.close({ drainMs: 0 });
    failStartup(err);
  }

  const port = proxy.port;
  const shown = { ...config, listen: { ...config.listen, port } };
  logger.info({
    event: 'listening', host: config.listen.host, port,
    routes: config.routes.map((r) => ({ path: r.path, url: routeUrl(shown, r.path) })),
    admin: admin ? `http://${config.admin!.host}:${admin.port}` : null,
  }, `sluice listening on ${routeUrl(shown, '/')}`);
  const echo = config.routes.find((r) => r.upstreams.some((u) => u.url === BUILTIN_ECHO_URL));
  if (echo) {
    const url = routeUrl(shown, echo.path);
    logger.info(`try it: npx wscat -c ${url}`);
    logger.info(`or: node --experimental-websocket -e "const w=new WebSocket('${url}');` +
      `w.onopen=()=>w.send('hello');w.onmessage=(e)=>{console.log(e.data);w.close()}"`);
  }

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: stopping without waiting for the drain');
      process.exit(1);
    }
    stopping = true;
    logger.info({ event: 'drain', signal, drainMs: config.drain.timeoutMs }, 'draining, then stopping');
    void (async () => {
      try {
        await proxy.close();
        await admin?.close();
        logger.info({ event: 'stopped' }, 'stopped');
        process.exit(0);
      } catch (err) {
        logger.error({ err }, 'error while stopping');
        process.exit(1);
      }
    })();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    reloadFromSource('SIGHUP').then(() => (clusterWide ? broadcast('SIGHUP') : 0)).catch((err: unknown) => {
      if (isSluiceError(err, 'SLUICE_ERR_CONFIG')) {
        logger.error({ event: 'reload', issues: (err as ConfigError).issues }, 'reload refused; the running config is kept');
      } else {
        logger.error({ event: 'reload', err }, 'reload failed; the running config is kept');
      }
    });
  });
}

const args = process.argv.slice(2);
if (args[0] === 'agent') {
  // The tunnel agent (issue #14): its own flags and usage (sluice agent --help).
  import('./tunnel/agent-cli.js').then(({ agentMain }) => agentMain(args.slice(1))).catch(failStartup);
} else {
  main(args).catch(failStartup);
}
