// One echo round trip through sluice, as a user's first program would do it: import the
// package, demand the native codec from a prebuild, start createProxy with the built-in
// echo upstream on port 0, send a text and a 70 kB binary message with Node's WebSocket
// client, check both come back whole and the close code passes, stop. Bounded: 20 s.
//
//   node --experimental-websocket smoke-echo.mjs [MODULE]     MODULE: 'sluice' (default),
//                                                             or a file URL of src/index.js
// Used by scripts/pack-smoke.sh (the installed tarball) and scripts/cross-arm64.sh (arm64
// under qemu).
import assert from 'node:assert/strict';

const deadline = setTimeout(() => { console.error('smoke: timed out'); process.exit(1); }, 20_000);
const { createProxy, native, codecInfo } = await import(process.argv[2] ?? 'sluice');
assert.equal(native, true, `native codec did not load: ${codecInfo.reason}`);
assert.match(codecInfo.path, new RegExp(`/prebuilds/${process.platform}-${process.arch}/`), 'loaded from a prebuild');
console.log(`native: ${native} (${codecInfo.path.replace(process.cwd() + '/', '')}), ${process.platform}-${process.arch}`);

const proxy = createProxy({
  listen: { host: '127.0.0.1', port: 0 },
  routes: [{ path: '/echo', upstreams: [{ url: 'builtin:echo' }] }],
  log: { level: 'silent' },
});
const { port } = await proxy.listen();
console.log(`engine: ${proxy.stats().engine.kind}`);

const ws = new WebSocket(`ws://127.0.0.1:${port}/echo`);
ws.binaryType = 'arraybuffer';
const replies = [];
await new Promise((resolve, reject) => {
  ws.onerror = (e) => reject(new Error(`client error: ${e.message ?? e.type}`));
  ws.onopen = () => { ws.send('hello through sluice'); ws.send(new Uint8Array(70_000).fill(7)); };
  ws.onmessage = (e) => { replies.push(e.data); if (replies.length === 2) ws.close(1000, 'done'); };
  ws.onclose = (e) => { replies.push(e.code); resolve(); };
});
assert.equal(replies[0], 'hello through sluice');
assert.ok(replies[1] instanceof ArrayBuffer && replies[1].byteLength === 70_000 &&
  new Uint8Array(replies[1]).every((b) => b === 7), 'binary echoed whole');
assert.equal(replies[2], 1000);
console.log(`round trip: text ${JSON.stringify(replies[0])}, binary ${replies[1].byteLength} B, close ${replies[2]}`);
await proxy.close({ drainMs: 1000 });
clearTimeout(deadline);
console.log('smoke ok');
