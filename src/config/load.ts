/**
 * Turns a config file, environment variables and command-line values into one checked
 * {@link ProxyConfig}, remembering where each value came from (for `sluice --check`), and
 * every problem into one line that names its key path.
 *
 * Precedence, lowest first: built-in default < file < environment < command line.
 * Mappings merge key by key; a list (routes, origins) is replaced whole by a higher layer.
 */
import { accessSync, constants as fsConstants, readFileSync, statSync } from 'node:fs';
import { dirname, extname, isAbsolute, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from '../errors.js';
import { CONFIG_FILE_VARIABLE, readEnvOverrides } from './env.js';
import { proxyConfigSchema } from './schema.js';
import type { ProxyConfig } from './types.js';

/** Where a value of the effective config came from. */
export type ValueSource = 'default' | 'file' | 'env' | 'cli';

/** The source of one value, with the file, variable or flag that set it. */
export interface SourceOfValue {
  source: ValueSource;
  /** File path, environment variable or command-line flag; absent for defaults. */
  origin?: string;
}

/** A value given on the command line (or by any caller that wants "cli" precedence). */
export interface CliValue {
  /** Key path in the config, e.g. ["listen", "port"]. */
  path: readonly string[];
  value: unknown;
  /** The flag, e.g. "--port"; problems with the value name it. */
  flag: string;
}

/** A checked config and where each of its values came from. */
export interface ResolvedConfig {
  config: ProxyConfig;
  /** Keyed by key path as printed (`routes[0].upstreams[0].url`); values not listed are defaults. */
  sources: Map<string, SourceOfValue>;
  /** The file read, when there was one. */
  file?: string;
}

/** Options of {@link parseConfig} and {@link resolveConfig}. */
export interface ParseOptions {
  /** Environment whose overrides apply (AGENT_*, PIPEOPS_WS_PROTOCOL, SLUICE_LOG_LEVEL). None when absent. */
  env?: NodeJS.ProcessEnv;
  /** Values with command-line precedence. */
  cli?: readonly CliValue[];
  /** Check that TLS files exist and are readable (default true). */
  checkFiles?: boolean;
  /** Where `input` came from, for `--check` (default: "file" with no origin). */
  inputOrigin?: string;
}

/**
 * Checks `input` (a parsed file, or what a library user passes to `createProxy`) and returns
 * the effective config with every default filled in. Throws {@link ConfigError} with one
 * line per problem. A {@link ProxyConfig} passes through unchanged (parsing is idempotent).
 */
export function parseConfig(input: unknown, opts: ParseOptions = {}): ProxyConfig {
  return resolveConfig(input, opts).config;
}

/** Like {@link parseConfig}, and also returns the source of every value. */
export function resolveConfig(input: unknown, opts: ParseOptions = {}): ResolvedConfig {
  const problems: string[] = [];
  const sources = new Map<string, SourceOfValue>();
  let merged: unknown = {};
  try {
    // A copy: env and cli values are laid over it, and the caller's object stays as it was.
    if (input !== undefined && input !== null) merged = structuredClone(input);
  } catch {
    throw new ConfigError(['(top level): expected plain data (mappings, lists, strings, numbers, booleans), got a value that cannot be copied']);
  }
  if (isMapping(merged)) {
    const fromInput: SourceOfValue = opts.inputOrigin ? { source: 'file', origin: opts.inputOrigin } : { source: 'file' };
    for (const [path] of leaves(merged, [])) sources.set(formatPath(path), fromInput);
  }

  if (opts.env) {
    const env = readEnvOverrides(opts.env);
    problems.push(...env.problems);
    for (const v of env.values) overlay(merged, v.path, v.value, { source: 'env', origin: v.variable }, sources);
  }
  for (const v of opts.cli ?? []) overlay(merged, v.path, v.value, { source: 'cli', origin: v.flag }, sources);

  const result = proxyConfigSchema.safeParse(merged, { reportInput: true });
  if (!result.success) problems.push(...result.error.issues.flatMap((i) => formatIssue(i, sources)));
  if (opts.checkFiles !== false) problems.push(...checkFiles(merged));
  if (problems.length > 0 || !result.success) throw new ConfigError(problems);

  return { config: result.data, sources };
}

/** Options of {@link loadConfig}. */
export interface LoadOptions {
  /** Config file; when absent, SLUICE_CONFIG from `env`; when that is absent too, only defaults. */
  file?: string;
  /** Environment (overrides and SLUICE_CONFIG); default `process.env`. */
  env?: NodeJS.ProcessEnv;
  cli?: readonly CliValue[];
  checkFiles?: boolean;
}

/**
 * Reads the config file (YAML or JSON; `.json` is parsed as JSON, anything else as YAML,
 * which also reads JSON), applies environment and command-line values and checks the result.
 * TLS file paths in the file are relative to the file's folder.
 */
export function loadConfig(opts: LoadOptions = {}): ResolvedConfig {
  const env = opts.env ?? process.env;
  const fromEnv = env[CONFIG_FILE_VARIABLE];
  const file = opts.file ?? (fromEnv !== undefined && fromEnv !== '' ? fromEnv : undefined);
  let input: unknown = {};
  if (file !== undefined) {
    input = readConfigFile(file);
    resolveFilePaths(input, dirname(resolve(file)));
  }
  const resolved = resolveConfig(input, { env, cli: opts.cli, checkFiles: opts.checkFiles, inputOrigin: file });
  if (file !== undefined) resolved.file = file;
  return resolved;
}

/** Reads and parses one config file; throws {@link ConfigError} naming the file and the line. */
export function readConfigFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'is a folder' : (e.code ?? e.message);
    throw new ConfigError([`${file}: cannot read the config file (${why})`]);
  }
  const value = parseConfigText(text, extname(file).toLowerCase() === '.json' ? 'json' : 'yaml', file);
  if (!isMapping(value)) {
    throw new ConfigError([`${file}: expected a mapping of settings at the top level, got ${describe(value)}`]);
  }
  return value;
}

/**
 * Parses config text (a file's or a POST /reload body's). YAML reads JSON too, so "yaml" is
 * the right choice when the format is unknown. Empty text is an empty config.
 */
export function parseConfigText(text: string, format: 'json' | 'yaml', name = 'config'): unknown {
  if (format === 'json') {
    try {
      return text.trim() === '' ? {} : JSON.parse(text);
    } catch (err) {
      throw new ConfigError([`${name}: invalid JSON: ${(err as Error).message}`]);
    }
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(doc.errors.map((e) => {
      const at = e.linePos?.[0];
      // prettyErrors fills linePos and appends " at line L, column C:" plus a code excerpt.
      const what = e.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '');
      return `${name}${at ? `:${at.line}:${at.col}` : ''}: invalid YAML: ${what}`;
    }));
  }
  return doc.toJS() ?? {};
}

/**
 * The effective config as `key = value  # source` lines, for `sluice --check`.
 * The admin token and JWT secrets are masked.
 */
export function describeConfig(resolved: ResolvedConfig): string[] {
  const rows = [...leaves(resolved.config, [])].map(([path, value]) => {
    const key = formatPath(path);
    const secret = isSecretKey(key);
    // A Redis URL may carry a password: shown without it.
    const shown = secret ? '"***"'
      : key === 'cluster.redis.url' ? JSON.stringify(String(value).replace(/\/\/([^@/]*)@/, '//***@')) : JSON.stringify(value);
    const src = resolved.sources.get(key) ?? { source: 'default' as const };
    return { left: `${key} = ${shown}`, right: `# ${src.source}${src.origin ? ` ${src.origin}` : ''}` };
  });
  const width = Math.min(60, Math.max(...rows.map((r) => r.left.length)));
  return rows.map((r) => `${r.left.padEnd(width)}  ${r.right}`);
}

// ---- internals --------------------------------------------------------------------------

function isMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Key path as printed in messages: `routes[0].upstreams[0].url`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (/^[A-Za-z_$][\w$-]*$/.test(String(seg))) out += out === '' ? String(seg) : `.${String(seg)}`;
    else out += `[${JSON.stringify(String(seg))}]`;
  }
  return out;
}

/**
 * Leaf values by key path. A list of mappings is walked into (routes, upstreams); any other
 * list is one value (origins).
 */
function* leaves(value: unknown, path: (string | number)[]): Generator<[(string | number)[], unknown]> {
  if (isMapping(value)) {
    const keys = Object.keys(value);
    if (keys.length === 0 && path.length > 0) yield [path, value];
    for (const k of keys) if (value[k] !== undefined) yield* leaves(value[k], [...path, k]);
  } else if (Array.isArray(value) && value.length > 0 && value.every(isMapping)) {
    for (let i = 0; i < value.length; i++) yield* leaves(value[i], [...path, i]);
  } else {
    yield [path, value];
  }
}

/** Sets `value` at `path` in `target`, creating mappings on the way, and records its source. */
function overlay(
  target: unknown, path: readonly string[], value: unknown, src: SourceOfValue, sources: Map<string, SourceOfValue>,
): void {
  if (!isMapping(target)) return; // the top level is wrong: the schema says so
  let node: Record<string, unknown> = target;
  for (const seg of path.slice(0, -1)) {
    if (node[seg] === undefined) node[seg] = {};
    const next = node[seg];
    // A file value of the wrong kind stays, so its problem is reported rather than hidden.
    if (!isMapping(next)) return;
    node = next;
  }
  node[path[path.length - 1]] = structuredClone(value);
  const prefix = formatPath(path);
  for (const key of [...sources.keys()]) {
    if (key === prefix || key.startsWith(`${prefix}.`) || key.startsWith(`${prefix}[`)) sources.delete(key);
  }
  for (const [leaf] of leaves(value, [...path])) sources.set(formatPath(leaf), src);
}

/** Keys whose values are secrets: masked by `--check` and in error messages. */
function isSecretKey(key: string): boolean {
  return key === 'admin.token' || /^admin\.tokens\[\d+\]\.token$/.test(key) || key === 'cluster.secret' || /^routes\[\d+\]\.auth\.jwt\.secret$/.test(key);
}

/** Describes a value after "got": strings quoted, lists and mappings as short JSON. */
function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'number' || typeof value === 'boolean' || value === null) return String(value);
  const json = JSON.stringify(value) ?? String(value);
  return json.length > 60 ? `${json.slice(0, 57)}...` : json;
}

function formatIssue(issue: z.core.$ZodIssue, sources: Map<string, SourceOfValue>): string[] {
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((k) => `${formatPath([...issue.path, k])}: unknown key`);
  }
  const at = formatPath(issue.path) || '(top level)';
  const src = sources.get(at);
  const from = src && (src.source === 'env' || src.source === 'cli') && src.origin ? ` (set by ${src.origin})` : '';
  const message = issue.message.startsWith('expected') ? issue.message : `expected a valid value (${issue.message})`;
  // A malformed admin token is still a secret: its length is said, not its value (the
  // schema's other secrets describe themselves in their issues).
  const got = /^admin\.(?:token|tokens\[\d+\]\.token)$/.test(at) && typeof issue.input === 'string'
    ? `a string of ${issue.input.length} characters` : describe(issue.input);
  return [`${at}: ${message}, got ${got}${from}`];
}

/** Where file paths sit in a config. */
function fileKeys(input: Record<string, unknown>): Array<[parent: Record<string, unknown>, key: string, path: (string | number)[]]> {
  const out: Array<[Record<string, unknown>, string, (string | number)[]]> = [];
  const listen = input.listen;
  if (isMapping(listen) && isMapping(listen.tls)) {
    out.push([listen.tls, 'certFile', ['listen', 'tls', 'certFile']], [listen.tls, 'keyFile', ['listen', 'tls', 'keyFile']]);
  }
  if (Array.isArray(input.routes)) {
    input.routes.forEach((r, i) => {
      if (isMapping(r) && isMapping(r.tls)) out.push([r.tls, 'caFile', ['routes', i, 'tls', 'caFile']]);
      if (isMapping(r) && isMapping(r.auth) && isMapping(r.auth.jwt)) {
        const jwt = r.auth.jwt;
        out.push([jwt, 'publicKeyFile', ['routes', i, 'auth', 'jwt', 'publicKeyFile']], [jwt, 'jwksFile', ['routes', i, 'auth', 'jwt', 'jwksFile']]);
      }
    });
  }
  return out;
}

function resolveFilePaths(input: unknown, base: string): void {
  if (!isMapping(input)) return;
  for (const [parent, key] of fileKeys(input)) {
    const v = parent[key];
    if (typeof v === 'string' && v !== '' && !isAbsolute(v)) parent[key] = resolve(base, v);
  }
}

function checkFiles(input: unknown): string[] {
  if (!isMapping(input)) return [];
  const problems: string[] = [];
  for (const [parent, key, path] of fileKeys(input)) {
    const v = parent[key];
    if (typeof v !== 'string' || v === '') continue; // the schema reports it
    try {
      if (!statSync(v).isFile()) throw Object.assign(new Error('not a file'), { code: 'not a file' });
      accessSync(v, fsConstants.R_OK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'unreadable';
      problems.push(`${formatPath(path)}: expected a readable file, got ${JSON.stringify(v)} (${code === 'ENOENT' ? 'no such file' : code})`);
    }
  }
  return problems;
}
