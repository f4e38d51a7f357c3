/**
 * Environment overrides. The names are those documented by the system sluice replaces,
 * honoured exactly (DESIGN "Configuration"); a bad value is an error naming the variable,
 * never a silent fallback to the default.
 */
import { isOrigin, LOG_LEVELS, ORIGIN_EXPECTED, PROTOCOLS } from './schema.js';

/** One environment variable and the config key it sets. */
export interface EnvOverride {
  variable: string;
  /** Key path in the config, e.g. ["limits", "channelCapacity"]. */
  path: readonly string[];
  /** Returns the config value, or throws a {@link EnvMismatch} when the text does not fit. */
  parse(text: string): unknown;
}

/** Thrown by a parser: what was expected and, when not the whole text, which part was wrong. */
interface EnvMismatch {
  expected: string;
  got?: string;
}

function positiveInt(text: string): number {
  const t = text.trim();
  if (!/^[0-9]+$/.test(t) || Number(t) < 1 || !Number.isSafeInteger(Number(t))) {
    throw { expected: 'expected a positive integer' } satisfies EnvMismatch;
  }
  return Number(t);
}

function oneOf(values: readonly string[]) {
  return (text: string): string => {
    const t = text.trim();
    if (!values.includes(t)) throw { expected: `expected one of ${values.join('|')}` } satisfies EnvMismatch;
    return t;
  };
}

/** Comma list; empty or "*" means every origin, stored as []. */
function origins(text: string): string[] {
  const list = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (list.length === 0 || list.includes('*')) return [];
  const bad = list.find((o) => !isOrigin(o));
  if (bad !== undefined) {
    throw { expected: `${ORIGIN_EXPECTED} in a comma list`, got: JSON.stringify(bad) } satisfies EnvMismatch;
  }
  return list;
}

/** Every variable that overrides a config value, in the order they are applied. */
export const ENV_OVERRIDES: readonly EnvOverride[] = [
  { variable: 'PIPEOPS_WS_PROTOCOL', path: ['protocol'], parse: oneOf(PROTOCOLS) },
  { variable: 'AGENT_WS_CHANNEL_CAPACITY', path: ['limits', 'channelCapacity'], parse: positiveInt },
  { variable: 'AGENT_MAX_WS_FRAME_BYTES', path: ['limits', 'maxFrameBytes'], parse: positiveInt },
  { variable: 'AGENT_ALLOWED_WS_ORIGINS', path: ['origins'], parse: origins },
  { variable: 'AGENT_WS_PING_INTERVAL_SECONDS', path: ['heartbeat', 'pingIntervalSeconds'], parse: positiveInt },
  { variable: 'AGENT_WS_PONG_TIMEOUT_SECONDS', path: ['heartbeat', 'pongTimeoutSeconds'], parse: positiveInt },
  { variable: 'SLUICE_LOG_LEVEL', path: ['log', 'level'], parse: oneOf(LOG_LEVELS) },
];

/** The variable naming the config file when `--config` is not given. */
export const CONFIG_FILE_VARIABLE = 'SLUICE_CONFIG';

/** One value an environment variable sets. */
export interface EnvValue {
  variable: string;
  path: readonly string[];
  value: unknown;
}

/**
 * Reads the overrides present in `env`. A variable that is set but empty counts as unset,
 * except AGENT_ALLOWED_WS_ORIGINS, where empty means "all origins" as documented.
 * Returns the values and one problem line per bad variable.
 */
export function readEnvOverrides(env: NodeJS.ProcessEnv): { values: EnvValue[]; problems: string[] } {
  const values: EnvValue[] = [];
  const problems: string[] = [];
  for (const o of ENV_OVERRIDES) {
    const text = env[o.variable];
    if (text === undefined) continue;
    if (text.trim() === '' && o.variable !== 'AGENT_ALLOWED_WS_ORIGINS') continue;
    try {
      values.push({ variable: o.variable, path: o.path, value: o.parse(text) });
    } catch (err) {
      const m = err as EnvMismatch;
      problems.push(`${o.variable}: ${m.expected}, got ${m.got ?? JSON.stringify(text)}`);
    }
  }
  return { values, problems };
}
