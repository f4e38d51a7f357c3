/**
 * The README and docs/ stay true to the code: every config key of the schema is in the
 * reference table of docs/configuration.md (and every key there is in the schema), every
 * error code in src/ and every metric the proxy exposes is in docs/operations.md, every
 * relative link and anchor resolves, every `npm run` script and repository path named
 * exists, and the README keeps its quick start and links every page of docs/.
 */
import t from 'tap';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import type { Registry } from 'prom-client';
import { proxyConfigSchema } from '../src/config/schema.js';
import { createMetricsRegistry } from '../src/metrics/index.js';
import { ProxyCounters } from '../src/metrics/counters.js';
import { registerHealthMetrics } from '../src/metrics/health-metrics.js';
import { registerTunnelMetrics } from '../src/metrics/tunnel-metrics.js';
import { registerClusterMetrics } from '../src/cluster/cluster-metrics.js';

const root = resolve(new URL('..', import.meta.url).pathname);
const read = (p: string) => readFileSync(join(root, p), 'utf8');
const docPages = readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`);
/** Every Markdown file the checks below cover. */
const pages = ['README.md', ...docPages];
const readme = read('README.md');
const configuration = read('docs/configuration.md');
const operations = read('docs/operations.md');

/** Key paths of the zod schema, e.g. `routes[].upstreams[].url`. */
function keyPaths(schema: unknown, path: string, out: string[]): string[] {
  type Def = { type: string; innerType?: unknown; in?: unknown; shape?: Record<string, unknown>; element?: unknown };
  let s = schema as { _zod?: { def: Def } };
  let d = s?._zod?.def;
  while (d && ['optional', 'default', 'prefault', 'nullable', 'pipe'].includes(d.type)) {
    s = (d.innerType ?? d.in) as typeof s;
    d = s?._zod?.def;
  }
  if (!d) return out;
  if (d.type === 'object' && d.shape) for (const [k, v] of Object.entries(d.shape)) keyPaths(v, path ? `${path}.${k}` : k, out);
  else if (d.type === 'array') keyPaths(d.element, `${path}[]`, out);
  else out.push(path);
  return out;
}

/** The text of a Markdown file without its fenced code blocks (their lines become empty). */
function withoutFences(text: string): string[] {
  let fence = false;
  return text.split('\n').map((line) => {
    if (/^\s*(```|~~~)/.test(line)) {
      fence = !fence;
      return '';
    }
    return fence ? '' : line;
  });
}

/** The first column (a backquoted name) of each row of the first table under `heading`. */
function tableKeys(text: string, heading: string): string[] {
  const lines = text.split('\n');
  let i = lines.findIndex((l) => l.replace(/^#+\s*/, '') === heading && l.startsWith('#'));
  if (i < 0) return [];
  while (i < lines.length && !lines[i].startsWith('|')) i++;
  const keys: string[] = [];
  for (; i < lines.length && lines[i].startsWith('|'); i++) {
    const m = /^\| `([^`]+)` \|/.exec(lines[i]);
    if (m) keys.push(m[1]);
  }
  return keys;
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
function slug(heading: string): string {
  return heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1')
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '')
    .replace(/ /g, '-');
}

/** The anchors of a Markdown file's headings (repeats get -1, -2, … as on GitHub). */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const line of withoutFences(text)) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const base = slug(m[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

t.test('every config key is in the reference table of docs/configuration.md, and no other', async (t) => {
  const keys = keyPaths(proxyConfigSchema, '', []);
  t.ok(keys.length > 25, `found ${keys.length} keys in the schema`);
  for (const k of keys) t.ok(configuration.includes(`| \`${k}\` |`), `docs/configuration.md documents ${k}`);
  const known = new Set(keys);
  const table = tableKeys(configuration, 'Reference');
  t.ok(table.length > 25, `the reference table has ${table.length} rows`);
  for (const k of table) t.ok(known.has(k), `${k} (docs/configuration.md) is a key of the schema`);
});

t.test('every SLUICE_ERR_* code in src/ is in docs/operations.md, and no other', async (t) => {
  const codes = new Set<string>();
  const walk = (dir: string) => {
    for (const f of readdirSync(dir)) {
      const p = join(dir, f);
      if (statSync(p).isDirectory()) walk(p);
      else if (p.endsWith('.ts')) for (const m of readFileSync(p, 'utf8').matchAll(/SLUICE_ERR_[A-Z0-9_]*[A-Z0-9]/g)) codes.add(m[0]);
    }
  };
  walk(join(root, 'src'));
  t.ok(codes.size > 20);
  for (const c of codes) t.ok(operations.includes(`| \`${c}\` |`), `docs/operations.md lists ${c}`);
  const table = tableKeys(operations, 'Error codes');
  t.ok(table.length > 20, `the error code table has ${table.length} rows`);
  for (const c of table) t.ok(codes.has(c), `${c} (docs/operations.md) occurs in src/`);
});

t.test('every metric of the proxy is in docs/operations.md', async (t) => {
  const registry: Registry = createMetricsRegistry(new ProxyCounters());
  // Registered only: no scrape, so the sources are never asked.
  registerHealthMetrics(registry, null as never);
  registerTunnelMetrics(registry, null as never);
  registerClusterMetrics(registry, () => null);
  const names = registry.getMetricsAsArray().map((m) => (m as unknown as { name: string }).name)
    .filter((n) => !n.startsWith('process_') && !n.startsWith('nodejs_'));
  t.ok(names.length >= 30, `found ${names.length} metrics`);
  for (const n of names) t.ok(operations.includes(`| \`${n}\` |`), `docs/operations.md lists ${n}`);
});

t.test('every relative link in README.md and docs/ points to a file that exists, and every anchor to a heading', async (t) => {
  let links = 0;
  for (const page of pages) {
    const lines = withoutFences(read(page));
    for (const [n, raw] of lines.entries()) {
      const line = raw.replace(/`[^`]*`/g, '');
      for (const m of line.matchAll(/!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
        const target = m[1];
        if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:
        links++;
        const at = `${page}:${n + 1}: ${target}`;
        const hash = target.indexOf('#');
        const path = hash < 0 ? target : target.slice(0, hash);
        const anchor = hash < 0 ? '' : target.slice(hash + 1);
        const file = path === '' ? join(root, page) : resolve(dirname(join(root, page)), decodeURIComponent(path));
        if (!file.startsWith(root) || !existsSync(file)) {
          t.fail(`${at}: no such file (${relative(root, file)})`);
          continue;
        }
        if (anchor === '') continue;
        if (!file.endsWith('.md')) {
          t.fail(`${at}: an anchor into a file that is not Markdown`);
          continue;
        }
        t.ok(anchors(readFileSync(file, 'utf8')).has(anchor), `${at}: heading #${anchor} in ${relative(root, file)}`);
      }
    }
  }
  t.ok(links > 30, `${links} relative links checked`);
});

t.test('every npm script and repository path named in README.md and docs/ exists', async (t) => {
  const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts;
  for (const page of pages) {
    const text = read(page);
    for (const m of text.matchAll(/npm run ([\w:-]+)/g)) t.ok(m[1] in scripts, `${page}: npm run ${m[1]} is a script of package.json`);
    // Backquoted paths under the repository's own folders (not those with a placeholder).
    for (const m of text.matchAll(/`((?:src|native|test|scripts|bench|ops|docs|\.ci|\.github)\/[^`\s<>*]*)`/g)) {
      t.ok(existsSync(join(root, m[1])), `${page}: ${m[1]} exists`);
    }
  }
});

t.test('the README is the door: its quick start, and a link to every page of docs/', async (t) => {
  t.ok(readme.includes('npm install && npm start'), 'the quick start installs and starts');
  t.ok(readme.includes('\nnpm test '), 'the quick start runs the tests');
  const linked = new Set([...readme.matchAll(/\]\((docs\/[^)#\s]+)/g)].map((m) => m[1]));
  for (const page of docPages) t.ok(linked.has(page), `README.md links ${page}`);
});
