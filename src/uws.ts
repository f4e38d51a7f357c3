/**
 * The one place sluice loads uWebSockets.js.
 *
 * The official build is published only on GitHub; registry mirrors exist. We try, in
 * order: the official package (`uWebSockets.js`, installed by a user from GitHub), then
 * `@trufflesuite/uws-js-unofficial` (20.30; Node 16/18/20, glibc >= 2.17), then
 * `@btc-vision/uwebsockets.js` (20.5x; Node 20-25, glibc >= 2.38). For the trufflesuite
 * mirror we load its native binary directly: its `main` silently falls back to a slow
 * pure-JS imitation when the binary does not fit, and a proxy that claims uWS speed must
 * not run on that without saying so. The fallback is refused unless
 * `SLUICE_ALLOW_UWS_FALLBACK=1`.
 */
import { createRequire } from 'node:module';
import { SluiceError } from './errors.js';
import type * as UWS from '@trufflesuite/uws-js-unofficial';

export type { UWS };
export type UwsModule = typeof UWS;

const require = createRequire(import.meta.url);

/** Which uWS build is in use, for /stats and the startup log. */
export interface UwsBuild {
  package: string;
  version: string;
  /** True for the pure-JS imitation (slow). */
  fallback: boolean;
}

interface Candidate {
  pkg: string;
  load(): unknown;
}

function binaryName(): string {
  return `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;
}

const candidates: Candidate[] = [
  { pkg: 'uWebSockets.js', load: () => require('uWebSockets.js') },
  {
    pkg: '@trufflesuite/uws-js-unofficial',
    load: () => require(`@trufflesuite/uws-js-unofficial/binaries/${binaryName()}`),
  },
  { pkg: '@btc-vision/uwebsockets.js', load: () => require('@btc-vision/uwebsockets.js') },
];

function versionOf(pkg: string): string {
  try {
    return (require(`${pkg}/package.json`) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

let loaded: { uws: UwsModule; build: UwsBuild } | undefined;

/**
 * Load uWS once per thread. Throws SLUICE_ERR_UWS_UNAVAILABLE listing every attempt when
 * no native build loads (and the JS fallback is not explicitly allowed).
 */
export function loadUws(): { uws: UwsModule; build: UwsBuild } {
  if (loaded) return loaded;
  const attempts: string[] = [];
  for (const c of candidates) {
    try {
      const mod = c.load() as UwsModule;
      if (typeof mod?.App !== 'function') throw new Error('module has no App()');
      loaded = { uws: mod, build: { package: c.pkg, version: versionOf(c.pkg), fallback: false } };
      return loaded;
    } catch (err) {
      const msg = (err as Error).message.split('\n')[0];
      attempts.push(`  - ${c.pkg}: ${msg}`);
    }
  }
  if (process.env.SLUICE_ALLOW_UWS_FALLBACK === '1') {
    const mod = require('@trufflesuite/uws-js-unofficial/dist/index.js') as UwsModule;
    loaded = {
      uws: mod,
      build: { package: '@trufflesuite/uws-js-unofficial (JS fallback)', version: versionOf('@trufflesuite/uws-js-unofficial'), fallback: true },
    };
    return loaded;
  }
  throw new SluiceError(
    'SLUICE_ERR_UWS_UNAVAILABLE',
    `no native uWebSockets.js build loads on ${process.platform}-${process.arch} with Node ${process.version} ` +
      `(ABI ${process.versions.modules}). Tried:\n${attempts.join('\n')}\n` +
      'Install the official build (npm install uNetworking/uWebSockets.js#v20.30.0) or run on Node 20 on glibc Linux; ' +
      'SLUICE_ALLOW_UWS_FALLBACK=1 accepts the slow pure-JS imitation.',
  );
}
