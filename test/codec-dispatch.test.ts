/**
 * The dispatcher (src/codec/index.ts) and the addon loader (src/codec/native.ts), as a
 * user sees them: what loads under which environment, the errors and the warning, and
 * that the dispatched functions give the twins' results.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as codec from '../src/codec/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const indexUrl = pathToFileURL(path.join(root, 'src/codec/index.js')).href;
const builtAddon = path.join(root, 'build/Release/sluice.node');

/** Import the codec in a fresh process with `env` and print codecInfo as JSON. */
function loadWith(env: Record<string, string>): { status: number | null; stdout: string; stderr: string } {
  const clean: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('SLUICE_') && k !== 'PREBUILDS_ONLY') clean[k] = v;
  const r = spawnSync(process.execPath, [...process.execArgv, '--input-type=module', '-e',
    `const c = await import(${JSON.stringify(indexUrl)}); console.log(JSON.stringify(c.codecInfo));`],
  { env: { ...clean, ...env }, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

t.test('SLUICE_NO_NATIVE=1: TypeScript codec, no warning', async (t) => {
  const r = loadWith({ SLUICE_NO_NATIVE: '1' });
  t.equal(r.status, 0, r.stderr);
  t.same(JSON.parse(r.stdout), { native: false, reason: 'SLUICE_NO_NATIVE=1' });
  t.notMatch(r.stderr, /SLUICE_NATIVE_FALLBACK/);
});

t.test('SLUICE_NATIVE_PATH to a missing file fails loudly', async (t) => {
  const r = loadWith({ SLUICE_NATIVE_PATH: '/nonexistent/sluice.node' });
  t.not(r.status, 0);
  t.match(r.stderr, /SLUICE_ERR_NATIVE_UNAVAILABLE/);
  t.match(r.stderr, /nonexistent\/sluice\.node/);
});

t.test('no addon found: one warning, or one error when required', async (t) => {
  // node-gyp-build looks in $SLUICE_PREBUILD instead of the package root when it is set.
  const empty = mkdtempSync(path.join(tmpdir(), 'sluice-no-addon-'));
  t.teardown(() => rmSync(empty, { recursive: true, force: true }));
  const soft = loadWith({ SLUICE_PREBUILD: empty });
  t.equal(soft.status, 0, soft.stderr);
  t.equal(JSON.parse(soft.stdout).native, false);
  t.equal(soft.stderr.match(/SLUICE_NATIVE_FALLBACK/g)?.length, 1, 'exactly one warning');
  const hard = loadWith({ SLUICE_PREBUILD: empty, SLUICE_NATIVE: 'required' });
  t.not(hard.status, 0);
  t.match(hard.stderr, /SLUICE_ERR_NATIVE_UNAVAILABLE/);
  t.match(hard.stderr, /node-gyp-build/, 'lists the attempt');
  t.match(hard.stderr, /npm run build/, 'says what to do');
});

t.test('SLUICE_NATIVE_PATH to the built addon loads it', { skip: !existsSync(builtAddon) && 'addon not built' }, async (t) => {
  const r = loadWith({ SLUICE_NATIVE_PATH: builtAddon });
  t.equal(r.status, 0, r.stderr);
  t.same(JSON.parse(r.stdout), { native: true, path: builtAddon });
});

t.test('dispatcher state matches what loaded', async (t) => {
  t.equal(codec.native, codec.nativeCodec !== null);
  t.equal(codec.codecInfo.native, codec.native);
});

t.test('dispatched functions give the twins\' results at every size', async (t) => {
  const key = Buffer.from([1, 2, 3, 4]);
  for (const n of [0, 15, 16, 47, 48, 63, 64, 255, 256, 257, 4096, 70000]) {
    const src = Buffer.alloc(n);
    for (let i = 0; i < n; i++) src[i] = (i * 13) & 0xff;
    const a = Buffer.alloc(n);
    const b = Buffer.alloc(n);
    codec.mask(src, key, a, 0, n);
    codec.tsCodec.mask(src, key, b, 0, n);
    t.ok(a.equals(b), `mask ${n}`);
    codec.unmask(a, key);
    t.ok(a.equals(src), `unmask ${n}`);
    t.equal(codec.isUtf8(src), codec.tsCodec.isUtf8(src), `isUtf8 ${n}`);
    const env = codec.envelopeEncode(codec.EnvelopeType.Data, codec.EnvelopeFlag.Final, src);
    const out = new Uint32Array(4);
    t.equal(codec.envelopeDecode(env, 1 << 20, out), 0);
    t.same([...out], [1, 4, 8, n]);
    const run = Buffer.concat([env, env]);
    const d = new Uint32Array(8);
    t.equal(codec.envelopeDecodeRun(run, 1 << 20, d), 2, `decodeRun ${n}`);
  }
});

t.test('createFrameParser / createFrameEncoder defaults', async (t) => {
  const enc = codec.createFrameEncoder('server');
  enc.frame(codec.Opcode.Binary, Buffer.alloc(1024 * 1024 + 1));
  const p = codec.createFrameParser();
  t.equal(p.parse(enc.take()!), -codec.CodecErrno.FrameTooBig, 'client role, 1 MiB frame limit by default');
  const clientEnc = codec.createFrameEncoder('client');
  clientEnc.frame(codec.Opcode.Text, Buffer.from('hi'));
  const server = codec.createFrameParser({ role: 'server' });
  const wire = clientEnc.take()!;
  t.equal(server.parse(wire), 1);
  t.equal(server.descriptors[0], codec.Opcode.Text | codec.Desc.FIN | codec.Desc.MASKED);
  t.equal(wire.subarray(server.descriptors[1], server.descriptors[1] + 2).toString(), 'hi');
});

t.test('codecError maps numbers to SluiceErrors', async (t) => {
  const e = codec.codecError(-codec.CodecErrno.FrameTooBig);
  t.equal(e.code, 'SLUICE_ERR_WS_FRAME_TOO_BIG');
  t.equal(e.closeCode, 1009);
  t.equal(e.name, 'SluiceError');
  t.equal(codec.codecError(codec.CodecErrno.InvalidUtf8).closeCode, 1007);
  t.equal(codec.codecError(codec.CodecErrno.EnvelopeFlags).code, 'SLUICE_ERR_ENVELOPE_FLAGS');
  t.equal(codec.codecError(99).code, 'SLUICE_ERR_CODEC_UNKNOWN');
});

t.test('pool through the dispatcher', async (t) => {
  const before = codec.poolStats();
  const b = codec.acquire(10);
  t.equal(codec.poolStats().inUse, before.inUse + 1);
  codec.release(b);
  t.equal(codec.poolStats().inUse, before.inUse);
});
