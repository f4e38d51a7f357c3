/**
 * `sluice agent`: the tunnel agent as a command. Settings come from flags, then environment
 * variables, then the `agent:` section of a YAML or JSON file (flags win). Bad input is
 * one line per problem on stderr and exit 2; no stack trace.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { parseConfigText } from '../config/load.js';
import { createLogger, type Logger } from '../log.js';
import { LOG_LEVELS } from '../config/schema.js';
import { connectAgent, parseTarget, type AgentOptions } from './agent.js';
import { NAME_PATTERN } from './wire.js';
import { createAgentRegistry } from './agent-metrics.js';
import { startAdminServer, type AdminServer } from '../admin/index.js';
import { SluiceError } from '../errors.js';

export const AGENT_USAGE = `Usage: sluice agent [options]

A tunnel agent: it dials out to a sluice gateway over one WebSocket and serves the
streams the gateway opens through it, dialling only the services it exposes.

  sluice agent --server ws://gw.example:8080/agent --token TOKEN --name site-a \\
               --expose db=127.0.0.1:5432 --expose web=127.0.0.1:8080

Options (flags override the environment, which overrides the file):
  -s, --server URL     the gateway's agent route, ws:// or wss://     SLUICE_AGENT_SERVER
  -t, --token TOKEN    a JWT or API key, sent as Authorization: Bearer  SLUICE_AGENT_TOKEN
  -n, --name NAME      the name to register                           SLUICE_AGENT_NAME
  -e, --expose N=H:P   a service: name=host:port (repeat)              SLUICE_AGENT_EXPOSE (comma list)
  -c, --config FILE    YAML or JSON with an agent: section (server, token, name, expose: {name: host:port},
                       pingIntervalSeconds, silenceTimeoutSeconds, tls: {caFile, rejectUnauthorized})
      --admin-port N   serve /metrics /healthz /readyz /stats on 127.0.0.1:N  SLUICE_AGENT_ADMIN_PORT
      --log-level L    fatal|error|warn|info|debug|trace|silent (default info)  SLUICE_LOG_LEVEL
  -h, --help           this text

Exit codes: 0 after SIGTERM/SIGINT, 2 for bad input.
`;

const NAME_EXPECTED = 'expected a name: letters, digits, ".", "_", "-" (at most 63, starting with a letter or digit)';

const fileSchema = z.strictObject({
  agent: z.strictObject({
    server: z.string({ error: 'expected a ws:// or wss:// URL' }).optional(),
    token: z.string({ error: 'expected a string' }).optional(),
    name: z.string({ error: NAME_EXPECTED }).optional(),
    expose: z.record(z.string(), z.string({ error: 'expected host:port' }), { error: 'expected a mapping name: host:port' }).optional(),
    pingIntervalSeconds: z.number({ error: 'expected a positive number' }).positive({ error: 'expected a positive number' }).optional(),
    silenceTimeoutSeconds: z.number({ error: 'expected a positive number' }).positive({ error: 'expected a positive number' }).optional(),
    adminPort: z.number({ error: 'expected a port number 0..65535' }).int({ error: 'expected a port number 0..65535' })
      .min(0, { error: 'expected a port number 0..65535' }).max(65535, { error: 'expected a port number 0..65535' }).optional(),
    tls: z.strictObject({
      caFile: z.string({ error: 'expected a file path' }).optional(),
      rejectUnauthorized: z.boolean({ error: 'expected true or false' }).optional(),
    }, { error: 'expected a mapping of settings' }).optional(),
  }, { error: 'expected a mapping of settings' }),
}, { error: 'expected a mapping with an agent: section' });

type FileAgent = z.output<typeof fileSchema>['agent'];

/** The agent's options from flags, environment and file; `problems` lists what is wrong. */
export function agentOptions(argv: string[], env: NodeJS.ProcessEnv): {
  options?: AgentOptions; level: string; problems: string[]; help?: boolean; adminPort?: number;
} {
  const problems: string[] = [];
  let values: Record<string, string | string[] | boolean | undefined>;
  try {
    values = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        server: { type: 'string', short: 's' },
        token: { type: 'string', short: 't' },
        name: { type: 'string', short: 'n' },
        expose: { type: 'string', short: 'e', multiple: true },
        config: { type: 'string', short: 'c' },
        'log-level': { type: 'string' },
        'admin-port': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (err) {
    return { level: 'info', problems: [`sluice agent: ${(err as Error).message.split(/\.\s|\n/)[0]} (see sluice agent --help)`] };
  }
  if (values.help === true) return { level: 'info', problems: [], help: true };
  let file: FileAgent = {};
  const configFile = values.config as string | undefined;
  if (configFile !== undefined) {
    try {
      const text = readFileSync(configFile, 'utf8');
      const parsed = fileSchema.safeParse(parseConfigText(text, configFile.toLowerCase().endsWith('.json') ? 'json' : 'yaml', configFile));
      if (parsed.success) file = parsed.data.agent;
      else {
        for (const issue of parsed.error.issues) {
          const at = issue.path.join('.');
          if (issue.code === 'unrecognized_keys') for (const k of issue.keys) problems.push(`${configFile}: ${at ? `${at}.` : ''}${k}: unknown key`);
          else problems.push(`${configFile}: ${at || '(top)'}: ${issue.message}`);
        }
      }
    } catch (err) {
      problems.push(`${configFile}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  // A file with problems: those first and alone (what is missing because of them would only repeat them).
  if (problems.length > 0) return { level: 'info', problems };
  const pick = (flag: string, variable: string, fromFile: string | undefined): string | undefined =>
    (values[flag] as string | undefined) ?? (env[variable] !== undefined && env[variable] !== '' ? env[variable] : undefined) ?? fromFile;
  const server = pick('server', 'SLUICE_AGENT_SERVER', file.server);
  const token = pick('token', 'SLUICE_AGENT_TOKEN', file.token);
  const name = pick('name', 'SLUICE_AGENT_NAME', file.name);
  const level = (values['log-level'] as string | undefined) ?? env.SLUICE_LOG_LEVEL ?? 'info';
  if (server === undefined) problems.push('--server: expected the gateway\'s agent URL (ws:// or wss://)');
  else if (!/^wss?:\/\/[^/\s]+/i.test(server)) problems.push(`--server: expected a ws:// or wss:// URL, got ${JSON.stringify(server)}`);
  if (token === undefined || token === '') problems.push('--token: expected a JWT or an API key (or SLUICE_AGENT_TOKEN)');
  if (name === undefined) problems.push('--name: expected the name to register');
  else if (!NAME_PATTERN.test(name)) problems.push(`--name: ${NAME_EXPECTED}, got ${JSON.stringify(name)}`);
  if (!(LOG_LEVELS as readonly string[]).includes(level)) problems.push(`--log-level: expected one of ${LOG_LEVELS.join('|')}, got ${JSON.stringify(level)}`);
  // Services: the flags' (or the variable's) list replaces the file's mapping.
  const exposeList = (values.expose as string[] | undefined)
    ?? (env.SLUICE_AGENT_EXPOSE ? env.SLUICE_AGENT_EXPOSE.split(',').map((s) => s.trim()).filter((s) => s !== '') : undefined);
  const expose: Record<string, string> = {};
  if (exposeList !== undefined) {
    for (const e of exposeList) {
      const eq = e.indexOf('=');
      if (eq <= 0) {
        problems.push(`--expose: expected name=host:port, got ${JSON.stringify(e)}`);
        continue;
      }
      expose[e.slice(0, eq)] = e.slice(eq + 1);
    }
  } else if (file.expose !== undefined) {
    Object.assign(expose, file.expose);
  }
  for (const [n, target] of Object.entries(expose)) {
    if (!NAME_PATTERN.test(n)) problems.push(`--expose ${n}: ${NAME_EXPECTED}`);
    try {
      parseTarget(target);
    } catch (err) {
      problems.push(`--expose ${n}: ${(err as Error).message}`);
    }
  }
  if (Object.keys(expose).length === 0) problems.push('--expose: expected at least one service (name=host:port)');
  const adminText = (values['admin-port'] as string | undefined) ?? (env.SLUICE_AGENT_ADMIN_PORT || undefined);
  let adminPort = file.adminPort;
  if (adminText !== undefined) {
    if (!/^[0-9]+$/.test(adminText) || Number(adminText) > 65535) problems.push(`--admin-port: expected a port number 0..65535, got ${JSON.stringify(adminText)}`);
    else adminPort = Number(adminText);
  }
  if (problems.length > 0) return { level, problems };
  return {
    level,
    problems,
    adminPort,
    options: {
      server: server!, token: token!, name: name!, expose,
      ...(file.pingIntervalSeconds !== undefined ? { pingIntervalMs: file.pingIntervalSeconds * 1000 } : {}),
      ...(file.silenceTimeoutSeconds !== undefined ? { silenceTimeoutMs: file.silenceTimeoutSeconds * 1000 } : {}),
      ...(file.tls !== undefined ? { tls: file.tls } : {}),
    },
  };
}

/** Runs the agent until SIGTERM/SIGINT. */
export async function agentMain(argv: string[]): Promise<void> {
  const { options, level, problems, help, adminPort } = agentOptions(argv, process.env);
  if (help === true) {
    process.stdout.write(AGENT_USAGE);
    return;
  }
  if (problems.length > 0 || options === undefined) {
    process.stderr.write(problems.map((p) => `${p}\n`).join(''));
    process.exit(2);
  }
  const logger: Logger = createLogger(level as Parameters<typeof createLogger>[0]);
  const agent = connectAgent({ ...options, logger });
  let admin: AdminServer | null = null;
  if (adminPort !== undefined) {
    const registry = createAgentRegistry(() => agent.stats());
    try {
      admin = await startAdminServer({
        registry,
        get ready() {
          return agent.connected ? { ok: true, reasons: [] } : { ok: false, reasons: ['not connected to the gateway'] };
        },
        stats: () => agent.stats(),
        reload: () => Promise.reject(new SluiceError('SLUICE_ERR_CLOSED', 'the agent takes no reload: restart it with new flags')),
      }, { host: '127.0.0.1', port: adminPort }, { logger });
    } catch (err) {
      process.stderr.write(`sluice agent: --admin-port ${adminPort}: ${(err as Error).message.split('\n')[0]} (SLUICE_ERR_ADMIN_LISTEN)\n`);
      await agent.close();
      process.exit(1);
    }
  }
  logger.info({
    event: 'agent_start', server: options.server, name: options.name, services: Object.keys(options.expose),
    ...(admin !== null ? { adminPort: admin.port } : {}),
  }, 'agent starting');
  const stop = () => {
    void agent.close().then(() => admin?.close()).then(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
