/**
 * Loads the native codec addon (native/, built to build/Release/sluice.node or shipped in
 * prebuilds/) and says what happened.
 *
 * - `SLUICE_NO_NATIVE=1`: no addon; the TypeScript twins run.
 * - `SLUICE_NATIVE_PATH=/path/to/sluice.node`: exactly that file (the ASan run uses it);
 *   if it does not load, importing this module throws.
 * - otherwise node-gyp-build on the package root (build/Release, build/Debug, prebuilds/).
 * - `SLUICE_NATIVE=required`: when nothing loads, throw one SluiceError
 *   (SLUICE_ERR_NATIVE_UNAVAILABLE) listing every attempt; without it, warn once and use
 *   the TypeScript codec.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { SluiceError } from '../errors.js';
import type { CodecImplementation } from './types.js';

const require = createRequire(import.meta.url);

/** dist/codec/native.js and src/codec/native.ts both sit two levels below the package root. */
const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Every export the addon must have to stand in for the twins. */
const REQUIRED_EXPORTS = [
  'FrameParser', 'FrameEncoder', 'mask', 'unmask', 'envelopeEncodeInto', 'envelopeDecode',
  'envelopeDecodeRun', 'acquire', 'release', 'poolStats', 'isUtf8',
] as const;

/** One way of loading the addon that was tried, and why it failed. */
interface LoadAttempt {
  what: string;
  error: string;
}

function loadFile(file: string): CodecImplementation {
  const addon = require(file) as Record<string, unknown>;
  const missing = REQUIRED_EXPORTS.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0) {
    throw new Error(`${file} loaded but lacks ${missing.join(', ')} (built from an older native/?)`);
  }
  return addon as unknown as CodecImplementation;
}

function message(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).trim().replace(/\s*\n\s*/g, ' ');
}

function load(): { codec: CodecImplementation | null; path?: string; reason?: string } {
  const env = process.env;
  if (env.SLUICE_NO_NATIVE === '1') return { codec: null, reason: 'SLUICE_NO_NATIVE=1' };

  const explicit = env.SLUICE_NATIVE_PATH;
  if (explicit !== undefined && explicit !== '') {
    const file = path.resolve(explicit);
    try {
      return { codec: loadFile(file), path: file };
    } catch (err) {
      throw new SluiceError(
        'SLUICE_ERR_NATIVE_UNAVAILABLE',
        `SLUICE_NATIVE_PATH=${explicit}: the native codec did not load: ${message(err)}. ` +
          'Point SLUICE_NATIVE_PATH at a sluice.node built for this Node version, or unset it.',
        undefined,
        { cause: err },
      );
    }
  }

  const attempts: LoadAttempt[] = [];
  let resolved: string | undefined;
  try {
    const nodeGypBuild = require('node-gyp-build') as { resolve(dir: string): string };
    resolved = nodeGypBuild.resolve(packageRoot);
  } catch (err) {
    attempts.push({ what: `node-gyp-build in ${packageRoot} (build/Release, build/Debug, prebuilds/)`, error: message(err) });
  }
  if (resolved !== undefined) {
    try {
      return { codec: loadFile(resolved), path: resolved };
    } catch (err) {
      attempts.push({ what: resolved, error: message(err) });
    }
  }

  const list = attempts.map((a) => `  - ${a.what}: ${a.error}`).join('\n');
  if (env.SLUICE_NATIVE === 'required') {
    throw new SluiceError(
      'SLUICE_ERR_NATIVE_UNAVAILABLE',
      `SLUICE_NATIVE=required but the native codec did not load. Tried:\n${list}\n` +
        'Build it with `npm run build` (needs a C++ compiler and python3), install a package ' +
        'with a prebuild for this platform, or unset SLUICE_NATIVE to use the TypeScript codec.',
    );
  }
  return { codec: null, reason: attempts.map((a) => `${a.what}: ${a.error}`).join('; ') };
}

const loaded = load();

/** The addon's exports, or null when the TypeScript twins are in use. */
export const nativeCodec: CodecImplementation | null = loaded.codec;
/** Absolute path of the loaded addon, when one loaded. */
export const nativePath: string | undefined = loaded.path;
/** Why no addon is in use (every attempt and its error), when none is. */
export const nativeLoadError: string | undefined = loaded.reason;

if (nativeCodec === null && process.env.SLUICE_NO_NATIVE !== '1') {
  process.emitWarning(
    `sluice: native codec not loaded, using the TypeScript codec (slower). ${nativeLoadError ?? ''} ` +
      'Run `npm run build` to build it, or set SLUICE_NO_NATIVE=1 to silence this warning.',
    { code: 'SLUICE_NATIVE_FALLBACK' },
  );
}
