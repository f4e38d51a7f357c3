/**
 * The README stays true to the code: every config key of the schema, every error code in
 * src/ and every metric the registry exposes is documented.
 */
import t from 'tap';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { proxyConfigSchema } from '../src/config/schema.js';
import { createMetricsRegistry } from '../src/metrics/index.js';
import { ProxyCounters } from '../src/metrics/counters.js';

const root = new URL('..', import.meta.url).pathname;
const readme = readFileSync(join(root, 'README.md'), 'utf8');

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

t.test('every config key is in the reference table', async (t) => {
  const keys = keyPaths(proxyConfigSchema, '', []);
  t.ok(keys.length > 25, `found ${keys.length} keys in the schema`);
  for (const k of keys) t.ok(readme.includes(`| \`${k}\` |`), `README documents ${k}`);
});

t.test('every SLUICE_ERR_* code in src/ is in the README', async (t) => {
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
  for (const c of codes) t.ok(readme.includes(`\`${c}\``), `README lists ${c}`);
});

t.test('every agent_websocket_* metric is in the README', async (t) => {
  const registry = createMetricsRegistry(new ProxyCounters());
  const names = (await registry.getMetricsAsJSON()).map((m) => m.name).filter((n) => n.startsWith('agent_websocket_'));
  t.ok(names.length >= 10);
  for (const n of names) t.ok(readme.includes(`\`${n}\``), `README lists ${n}`);
});
