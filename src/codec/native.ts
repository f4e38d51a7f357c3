/**
 * Loads the native codec addon (native/, shipped in prebuilds/ or built to
 * build/Release/sluice.node) and says what happened.
 *
 * - `SLUICE_NO_NATIVE=1`: no addon; the TypeScript twins run.
 * - `SLUICE_NATIVE_PATH=/path/to/sluice.node`: exactly that file (the ASan run uses it);
 *   if it does not load, importing this module throws.
 * - otherwise, in order: the prebuild for this platform in prebuilds/ (picked by
 *   node-gyp-build's own tag rules, so the install step and the loader agree on what
 *   fits), then the local build in build/Release (and build/Debug). A local build that is
 *   newer than the prebuild goes first: it was made on purpose after the prebuild
 *   (`npm run build` while developing, `npm rebuild sluice` by a user), so it must not be
 *   shadowed by an older binary.
 * - `SLUICE_PREBUILD=/dir` (node-gyp-build's `<NAME>_PREBUILD`): look in /dir/prebuilds and
 *   /dir/build instead of the package root.
 * - `PREBUILDS_ONLY=1` (node-gyp-build's own switch): only prebuilds/; when no prebuild
 *   loads, importing this module throws, so a run meant to test the shipped binary cannot
 *   pass on a local build or on the twins.
 * - `SLUICE_NATIVE=required`: when nothing loads, throw one SluiceError
 *   (SLUICE_ERR_NATIVE_UNAVAILABLE) listing every attempt and what to do; without it,
 *   warn once (one line) and use the TypeScript codec.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import path from 'node:path';
import { SluiceError } from '../errors.js';
import type { CodecImplementation } from './types.js';

const require = createRequire(import.meta.url);

/** dist/codec/native.js and src/codec/native.ts both sit two levels below the package root. */
const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Every export the addon must have to stand in for the twins. */
const REQUIRED_EXPORTS = [
  'FrameParser', 'FrameEncoder', 'createFrameRunner', 'mask', 'unmask', 'envelopeEncodeInto', 'envelopeDecode',
  'envelopeDecodeRun', 'acquire', 'release', 'poolStats', 'isUtf8',
] as const;

/** One way of loading the addon that was tried, and why it failed. */
export interface LoadAttempt {
  /** What was tried: an absolute path and its kind. */
  what: string;
  error: string;
}

/** The outcome of {@link loadNativeCodec}. */
export interface NativeLoadResult {
  codec: CodecImplementation | null;
  /** Absolute path of the addon that loaded. */
  path?: string;
  /** Every attempt that failed before the one that loaded (or all of them). */
  attempts: LoadAttempt[];
  /** Why no addon is in use, when none is. */
  reason?: string;
}

/** node-gyp-build's exported tag helpers (the rules prebuildify's file names follow). */
interface PrebuildTags {
  file: string;
}
interface NodeGypBuild {
  parseTuple(name: string): { name: string } | undefined;
  matchTuple(platform: string, arch: string): (tuple: unknown) => boolean;
  compareTuples(a: unknown, b: unknown): number;
  parseTags(file: string): PrebuildTags | undefined;
  matchTags(runtime: string, abi: string): (tags: unknown) => boolean;
  compareTags(runtime: string): (a: unknown, b: unknown) => number;
}

function loadFile(file: string): CodecImplementation {
  const addon = require(file) as Record<string, unknown>;
  const missing = REQUIRED_EXPORTS.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0) {
    throw new Error(`loaded but lacks ${missing.join(', ')} (built from an older native/?)`);
  }
  return addon as unknown as CodecImplementation;
}

function message(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).trim().replace(/\s*\n\s*/g, ' ');
}

function readdir(dir: string): string[] {
  try {
    return fs.readdirSync(dir).sort();
  } catch {
    return [];
  }
}

function mtime(file: string): number {
  try {
    return fs.statSync(file).mtimeMs;
  } catch {
    return -1;
  }
}

/** `linux-x64 (glibc), Node 20.20.2, N-API 9`: what a prebuild has to fit. */
export function platformDescription(): string {
  let libc = '';
  if (process.platform === 'linux') {
    const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
    libc = header?.glibcVersionRuntime ? ` (glibc ${header.glibcVersionRuntime})` : ' (musl or another non-glibc libc)';
  }
  return `${process.platform}-${process.arch}${libc}, Node ${process.versions.node}, N-API ${process.versions.napi}`;
}

/**
 * The prebuild in `<root>/prebuilds` that fits this process, or the reason none does.
 * Uses node-gyp-build's tuple and tag rules (platform-arch[+arch] directories; napi, abi,
 * libc, armv tags), so what the `install` step accepts and what loads here are the same.
 */
function findPrebuild(root: string): { file: string } | { error: string } {
  let ngb: NodeGypBuild;
  try {
    ngb = require('node-gyp-build') as NodeGypBuild;
  } catch (err) {
    return { error: `node-gyp-build is not installed: ${message(err)}` };
  }
  const base = path.join(root, 'prebuilds');
  const dirs = readdir(base);
  const tuple = dirs
    .map((name) => ngb.parseTuple(name))
    .filter(ngb.matchTuple(process.platform, process.arch))
    .sort(ngb.compareTuples)[0] as { name: string } | undefined;
  if (tuple === undefined) {
    return { error: dirs.length === 0 ? 'no prebuilds/ directory' : `none for this platform (prebuilds/ has ${dirs.join(', ')})` };
  }
  const files = readdir(path.join(base, tuple.name));
  const winner = files
    .map((file) => ngb.parseTags(file))
    .filter(ngb.matchTags('node', process.versions.modules))
    .sort(ngb.compareTags('node'))[0];
  if (winner === undefined) {
    return { error: `no file in prebuilds/${tuple.name}/ fits (found: ${files.join(', ') || 'nothing'})` };
  }
  return { file: path.join(base, tuple.name, winner.file) };
}

/**
 * Try each way of loading the addon under `packageDir` (a package root: prebuilds/, build/)
 * as `env` asks. Throws SLUICE_ERR_NATIVE_UNAVAILABLE when `env` demands the addon
 * (SLUICE_NATIVE_PATH, PREBUILDS_ONLY, SLUICE_NATIVE=required) and it does not load;
 * otherwise returns `codec: null` with every attempt. Exported for the tests; sluice
 * calls it once per thread with the package root and `process.env`.
 */
export function loadNativeCodec(packageDir: string, env: NodeJS.ProcessEnv): NativeLoadResult {
  if (env.SLUICE_NO_NATIVE === '1') return { codec: null, attempts: [], reason: 'SLUICE_NO_NATIVE=1' };

  const explicit = env.SLUICE_NATIVE_PATH;
  if (explicit !== undefined && explicit !== '') {
    const file = path.resolve(explicit);
    try {
      return { codec: loadFile(file), path: file, attempts: [] };
    } catch (err) {
      throw new SluiceError(
        'SLUICE_ERR_NATIVE_UNAVAILABLE',
        `SLUICE_NATIVE_PATH=${explicit}: the native codec did not load: ${message(err)}. ` +
          'Point SLUICE_NATIVE_PATH at a sluice.node built for this platform, or unset it.',
        undefined,
        { cause: err },
      );
    }
  }

  const root = path.resolve(env.SLUICE_PREBUILD || packageDir);
  const prebuildsOnly = Boolean(env.PREBUILDS_ONLY); // node-gyp-build's test: any non-empty value
  const attempts: LoadAttempt[] = [];
  // In the order they are tried; `error` set means there is nothing to load.
  const steps: Array<{ what: string; file?: string; error?: string }> = [];

  const prebuild = findPrebuild(root);
  if ('file' in prebuild) steps.push({ what: `${prebuild.file} (prebuild)`, file: prebuild.file });
  else steps.push({ what: `${path.join(root, 'prebuilds')}/ (prebuild, matched by node-gyp-build's rules)`, error: prebuild.error });

  if (!prebuildsOnly) {
    for (const kind of ['Release', 'Debug']) {
      const file = path.join(root, 'build', kind, 'sluice.node');
      const what = `${file} (local build)`;
      if (!fs.existsSync(file)) {
        if (kind === 'Release') steps.push({ what, error: 'not built' });
      } else if (kind === 'Release' && 'file' in prebuild && mtime(file) > mtime(prebuild.file)) {
        steps.unshift({ what: `${file} (local build, newer than the prebuild)`, file });
      } else {
        steps.push({ what, file });
      }
    }
  }

  for (const step of steps) {
    if (step.file === undefined) {
      attempts.push({ what: step.what, error: step.error ?? 'nothing to load' });
      continue;
    }
    try {
      return { codec: loadFile(step.file), path: step.file, attempts };
    } catch (err) {
      attempts.push({ what: step.what, error: message(err) });
    }
  }

  const list = attempts.map((a) => `  - ${a.what}: ${a.error}`).join('\n');
  const shipped = readdir(path.join(root, 'prebuilds')).join(', ') || 'none';
  const fixes =
    'What to do:\n' +
    `  - use a platform with a prebuild (this package has: ${shipped});\n` +
    '  - or build it from source (needs python3, make and a C++17 compiler): ' +
    '`npm rebuild sluice` in a project that depends on sluice, `npm run build` in a clone;\n' +
    '  - or unset SLUICE_NATIVE / PREBUILDS_ONLY to run on the TypeScript codec (slower).';
  if (prebuildsOnly) {
    throw new SluiceError(
      'SLUICE_ERR_NATIVE_UNAVAILABLE',
      `PREBUILDS_ONLY is set but no prebuild loaded for ${platformDescription()}. Tried:\n${list}\n` +
        'Make them with `npm run build:prebuilds` (and `npm run build:prebuilds:arm64`).',
    );
  }
  if (env.SLUICE_NATIVE === 'required') {
    throw new SluiceError(
      'SLUICE_ERR_NATIVE_UNAVAILABLE',
      `SLUICE_NATIVE=required but the native codec did not load for ${platformDescription()}. Tried:\n${list}\n${fixes}`,
    );
  }
  return { codec: null, attempts, reason: attempts.map((a) => `${a.what}: ${a.error}`).join('; ') };
}

const loaded = loadNativeCodec(packageRoot, process.env);

/** The addon's exports, or null when the TypeScript twins are in use. */
export const nativeCodec: CodecImplementation | null = loaded.codec;
/** Absolute path of the loaded addon, when one loaded. */
export const nativePath: string | undefined = loaded.path;

/** The addon's whole export object (engine functions beside the codec), or null. */
export const nativeAddon: Readonly<Record<string, unknown>> | null = loaded.codec as unknown as Record<string, unknown> | null;
/** Why no addon is in use (every attempt and its error), when none is. */
export const nativeLoadError: string | undefined = loaded.reason;

if (nativeCodec === null && process.env.SLUICE_NO_NATIVE !== '1') {
  // One line, once per thread; Node's `--no-warnings` and `process.on('warning')` apply.
  process.emitWarning(
    `sluice: native codec not loaded, using the TypeScript codec (slower). Tried: ${nativeLoadError ?? ''}. ` +
      'Run `npm rebuild sluice` (or `npm run build` in a clone) to build it, or set SLUICE_NO_NATIVE=1 to silence this warning.',
    { code: 'SLUICE_NATIVE_FALLBACK' },
  );
}
