/**
 * Where the native codec is loaded from, as a user installing the package sees it:
 * prebuilds/ first, a deliberate local build over an older prebuild, PREBUILDS_ONLY and
 * SLUICE_NATIVE=required failing with every attempt listed. Each case builds a package
 * root in a temp dir with copies of a real addon and runs the loader on it.
 * (`npm run test:pack` covers the installed tarball; scripts/cross-arm64.sh the arm64 build.)
 */
import t, { type Test as TestBase } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadNativeCodec, nativePath } from '../src/codec/native.js';
import { isSluiceError } from '../src/errors.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tuple = `${process.platform}-${process.arch}`;
// prebuildify's --tag-libc name for this machine, as node-gyp-build matches it.
const libc = fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc';

/** A real addon to copy around: this repo's prebuild or its local build. */
function findAddon(): string | undefined {
  const dir = path.join(repo, 'prebuilds', tuple);
  const shipped = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.node')) : [];
  if (shipped.length > 0) return path.join(dir, shipped[0]);
  const local = path.join(repo, 'build', 'Release', 'sluice.node');
  return fs.existsSync(local) ? local : undefined;
}
const addon = findAddon();
const noAddon = addon === undefined && 'no addon built here (npm run build, or npm run build:prebuilds)';

interface Layout {
  prebuild?: 'addon' | 'garbage';
  local?: boolean;
  /** Seconds the local build is newer (+) or older (-) than the prebuild. */
  localAge?: number;
  otherPlatformOnly?: boolean;
}

/** A package root in a temp dir; returns it and the two files' paths. */
function packageRoot(t: TestBase, layout: Layout): { root: string; prebuild: string; local: string } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-prebuild-test-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const prebuild = path.join(root, 'prebuilds', tuple, `sluice.${libc}.node`);
  const local = path.join(root, 'build', 'Release', 'sluice.node');
  const now = Date.now() / 1000;
  if (layout.otherPlatformOnly) {
    fs.mkdirSync(path.join(root, 'prebuilds', 'sunos-sparc'), { recursive: true });
    fs.writeFileSync(path.join(root, 'prebuilds', 'sunos-sparc', 'sluice.node'), 'not for here');
  }
  if (layout.prebuild !== undefined) {
    fs.mkdirSync(path.dirname(prebuild), { recursive: true });
    if (layout.prebuild === 'addon') fs.copyFileSync(addon!, prebuild);
    else fs.writeFileSync(prebuild, 'this is not a shared object');
    fs.utimesSync(prebuild, now - 3600, now - 3600);
  }
  if (layout.local) {
    fs.mkdirSync(path.dirname(local), { recursive: true });
    fs.copyFileSync(addon!, local);
    const at = now - 3600 + (layout.localAge ?? -60);
    fs.utimesSync(local, at, at);
  }
  return { root, prebuild, local };
}

/** The loader's thrown error, or a failure when it does not throw. */
function thrown(t: TestBase, fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (err) {
    return err as Error & { code?: string };
  }
  t.fail('expected the loader to throw');
  return new Error('did not throw');
}

t.test('prebuilds/ is preferred over an older local build', { skip: noAddon }, async (t) => {
  const { root, prebuild } = packageRoot(t, { prebuild: 'addon', local: true, localAge: -60 });
  const r = loadNativeCodec(root, {});
  t.equal(r.path, prebuild);
  t.equal(typeof r.codec?.mask, 'function', 'the codec is usable');
  t.same(r.attempts, [], 'nothing failed before it');
});

t.test('a local build newer than the prebuild goes first (a deliberate rebuild)', { skip: noAddon }, async (t) => {
  const { root, local } = packageRoot(t, { prebuild: 'addon', local: true, localAge: +60 });
  t.equal(loadNativeCodec(root, {}).path, local);
});

t.test('a prebuild that does not load is listed and the local build is used', { skip: noAddon }, async (t) => {
  const { root, prebuild, local } = packageRoot(t, { prebuild: 'garbage', local: true });
  const r = loadNativeCodec(root, {});
  t.equal(r.path, local);
  t.equal(r.attempts.length, 1);
  t.match(r.attempts[0].what, prebuild);
  t.match(r.attempts[0].error, /header|too short|shared object|mach-o|not a valid Win32/i, 'the dlopen error is kept');
});

t.test('PREBUILDS_ONLY=1 loads the prebuild', { skip: noAddon }, async (t) => {
  const { root, prebuild } = packageRoot(t, { prebuild: 'addon', local: true, localAge: +60 });
  t.equal(loadNativeCodec(root, { PREBUILDS_ONLY: '1' }).path, prebuild, 'even with a newer local build');
});

t.test('PREBUILDS_ONLY=1 never falls back to a local build or the twins: it throws', { skip: noAddon }, async (t) => {
  const { root } = packageRoot(t, { local: true, otherPlatformOnly: true });
  const err = thrown(t, () => loadNativeCodec(root, { PREBUILDS_ONLY: '1' }));
  t.ok(isSluiceError(err, 'SLUICE_ERR_NATIVE_UNAVAILABLE'), err.message);
  t.match(err.message, /PREBUILDS_ONLY is set/);
  t.match(err.message, `none for this platform (prebuilds/ has sunos-sparc)`);
  t.notMatch(err.message, /build\/Release/, 'the local build is not even tried');
  t.match(err.message, /npm run build:prebuilds/, 'says how to make them');
});

t.test('SLUICE_NATIVE=required and nothing loads: one error listing every attempt and what to do', async (t) => {
  const { root, prebuild } = packageRoot(t, { prebuild: 'garbage' });
  const err = thrown(t, () => loadNativeCodec(root, { SLUICE_NATIVE: 'required' }));
  t.ok(isSluiceError(err, 'SLUICE_ERR_NATIVE_UNAVAILABLE'), err.message);
  const lines = err.message.split('\n');
  t.match(lines[0], new RegExp(`did not load for ${tuple}.*Node ${process.versions.node}.*Tried:$`));
  t.match(lines[1], `  - ${prebuild} (prebuild): `);
  t.match(lines[2], `  - ${path.join(root, 'build', 'Release', 'sluice.node')} (local build): not built`);
  t.match(err.message, /What to do:/);
  t.match(err.message, `this package has: ${tuple}`, 'names the platforms that have prebuilds');
  t.match(err.message, /npm rebuild sluice/);
  t.match(err.message, /python3, make and a C\+\+17 compiler/);
});

t.test('without SLUICE_NATIVE=required, nothing loading is not an error: the twins run', async (t) => {
  const { root } = packageRoot(t, {});
  const r = loadNativeCodec(root, {});
  t.equal(r.codec, null);
  t.match(r.reason, /prebuild.*no prebuilds\/ directory.*local build\): not built/);
});

t.test('SLUICE_PREBUILD points the loader at another root (node-gyp-build\'s convention)', { skip: noAddon }, async (t) => {
  const { root, prebuild } = packageRoot(t, { prebuild: 'addon' });
  t.equal(loadNativeCodec('/nonexistent', { SLUICE_PREBUILD: root }).path, prebuild);
});

t.test('this run\'s codec: under PREBUILDS_ONLY it is the repo\'s prebuild', {
  skip: (!process.env.PREBUILDS_ONLY || process.env.SLUICE_NO_NATIVE === '1') && 'PREBUILDS_ONLY is not set (npm run test:prebuilds sets it)',
}, async (t) => {
  t.ok(nativePath?.startsWith(path.join(repo, 'prebuilds', tuple) + path.sep), `loaded ${nativePath}`);
});
