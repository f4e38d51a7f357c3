// Writes the seed corpus of the fuzz targets into native/fuzz/corpus/<target>/ (small,
// deterministic: rerunning gives the same files). Run: node native/fuzz/make-corpus.mjs
import { mkdirSync, writeFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'corpus');
const KEY = [0x37, 0xfa, 0x21, 0x3d];

function frame(b0, payload, masked, ext) {
  const n = payload.length;
  const h = [b0];
  const m = masked ? 0x80 : 0;
  if (ext === 64 || n > 0xffff) h.push(m | 127, 0, 0, 0, 0, n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
  else if (ext === 16 || n > 125) h.push(m | 126, n >> 8, n & 255);
  else h.push(m | n);
  const body = Buffer.from(payload);
  if (masked) {
    h.push(...KEY);
    for (let i = 0; i < body.length; i++) body[i] ^= KEY[i & 3];
  }
  return Buffer.concat([Buffer.from(h), body]);
}

const bytes = (n, seed = 1) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 255));

// Config prefix of frame_parser_fuzz.cc: [role|rsv1|frames, limits, fragments, seed x3].
// 0x1d: server, 8 descriptors; 0x36: frame limit 65536 (6), message limit 65536 (6).
function cfg(server, rsv1, frames, frameLimit, messageLimit, fragments, seed) {
  return Buffer.from([(server ? 1 : 0) | (rsv1 ? 2 : 0) | ((frames - 1) << 2), frameLimit | (messageLimit << 3), fragments, seed, seed >> 1, 7]);
}

const frameSeeds = [];
for (const server of [false, true]) {
  const m = server;
  const base = (frames, seed) => cfg(server, true, frames, 6, 6, 4, seed);
  frameSeeds.push(Buffer.concat([base(8, 1), frame(0x81, Buffer.from('hello'), m)]));
  frameSeeds.push(Buffer.concat([base(2, 2), frame(0x82, bytes(125), m), frame(0x89, Buffer.from('ping'), m), frame(0x8a, Buffer.alloc(0), m)]));
  frameSeeds.push(Buffer.concat([base(1, 3), frame(0x82, bytes(126), m), frame(0x82, bytes(300), m, 64)]));
  frameSeeds.push(Buffer.concat([base(4, 4), frame(0x01, Buffer.from('frag'), m), frame(0x89, Buffer.alloc(0), m), frame(0x00, Buffer.from('men'), m), frame(0x80, Buffer.from('ts'), m)]));
  frameSeeds.push(Buffer.concat([base(8, 5), frame(0xc1, bytes(40), m), frame(0x88, Buffer.from([3, 232, 0x62, 0x79, 0x65]), m)]));
  frameSeeds.push(Buffer.concat([base(8, 6), frame(0x82, bytes(2000), m)]));
  frameSeeds.push(Buffer.concat([base(3, 7), frame(0x82, bytes(70), m, 16), frame(0x80, Buffer.alloc(0), m)]));
  // Protocol errors: reserved opcode, long control, fragmented control, stray continuation,
  // wrong mask, top length bit, RSV2, too many fragments.
  frameSeeds.push(Buffer.concat([base(8, 8), frame(0x83, Buffer.alloc(1), m)]));
  frameSeeds.push(Buffer.concat([base(8, 9), frame(0x89, bytes(126), m)]));
  frameSeeds.push(Buffer.concat([base(8, 10), frame(0x09, Buffer.alloc(0), m)]));
  frameSeeds.push(Buffer.concat([base(8, 11), frame(0x80, Buffer.alloc(2), m)]));
  frameSeeds.push(Buffer.concat([base(8, 12), frame(0x82, Buffer.alloc(2), !m)]));
  frameSeeds.push(Buffer.concat([base(8, 13), Buffer.from([0x82, (m ? 0x80 : 0) | 127, 0x80, 0, 0, 0, 0, 0, 0, 1])]));
  frameSeeds.push(Buffer.concat([base(8, 14), frame(0xa2, Buffer.alloc(2), m)]));
  frameSeeds.push(Buffer.concat([cfg(server, false, 8, 4, 4, 2, 15), frame(0x02, bytes(600), m), frame(0x00, bytes(600), m), frame(0x80, bytes(10), m)]));
  frameSeeds.push(Buffer.concat([cfg(server, false, 8, 4, 6, 2, 16), frame(0x02, bytes(6), m), frame(0x00, bytes(6), m), frame(0x80, bytes(6), m)]));
  // Runs of identical frames (frame_run.h's same-header loop), 7- and 16-bit lengths, a run
  // broken by a ping and by a frame one byte longer, and one ending in a partial frame.
  const run = (count, b0, n, ext) => Array.from({ length: count }, () => frame(b0, bytes(n), m, ext));
  frameSeeds.push(Buffer.concat([base(8, 17), ...run(12, 0x82, 9), frame(0x89, Buffer.alloc(0), m), ...run(5, 0x82, 9), frame(0x82, bytes(10), m)]));
  frameSeeds.push(Buffer.concat([base(8, 18), ...run(6, 0x81, 126), ...run(3, 0x8a, 0)]));
  frameSeeds.push(Buffer.concat([cfg(server, false, 8, 2, 2, 1, 19), ...run(9, 0x82, 125), ...run(4, 0x82, 126, 16), frame(0x82, bytes(40), m).subarray(0, 20)]));
}

const env = (type, flags, payload, version = 2, reserved = 0, len = payload.length) =>
  Buffer.concat([Buffer.from([version, type, flags, reserved, len >>> 24, (len >>> 16) & 255, (len >>> 8) & 255, len & 255]), Buffer.from(payload)]);
// Prefix byte: maxPayload index (bits 0-1), descriptor capacity (bits 2-5).
const envSeeds = [
  Buffer.concat([Buffer.from([2 | (4 << 2)]), env(1, 0x04, 'data')]),
  Buffer.concat([Buffer.from([2 | (4 << 2)]), env(2, 0, ''), env(3, 0, ''), env(1, 0x05, bytes(30))]),
  Buffer.concat([Buffer.from([3 | (1 << 2)]), env(4, 0, Buffer.from([3, 232, 0x62, 0x79, 0x65]))]),
  Buffer.concat([Buffer.from([2 | (2 << 2)]), env(6, 0x08, '{"a":1}'), env(5, 0, 'oops')]),
  Buffer.concat([Buffer.from([1 | (4 << 2)]), env(1, 0, bytes(40))]),
  Buffer.concat([Buffer.from([2 | (4 << 2)]), env(1, 0x10, 'x')]),
  Buffer.concat([Buffer.from([2 | (4 << 2)]), env(7, 0, 'x')]),
  Buffer.concat([Buffer.from([2 | (4 << 2)]), env(1, 0, 'x', 1)]),
  Buffer.concat([Buffer.from([2 | (4 << 2)]), env(1, 0, 'x', 2, 1)]),
  Buffer.concat([Buffer.from([2 | (4 << 2)]), env(1, 0, 'xy', 2, 0, 5)]),
  Buffer.from([2 | (4 << 2), 2, 1, 0]),
];

const utf8Seeds = ['', 'plain ascii text that is longer than sixteen bytes', 'héllo wörld', '€uro', '𝄞 clef', '日本語のテキスト', '{"type":"data","data":"aGVsbG8="}']
  .map((s) => Buffer.from(s))
  .concat([[0xc0, 0x80], [0xe0, 0x80, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80, 0x80, 0x80], [0xe2, 0x82], [0xff], [0x61, 0x80]].map((a) => Buffer.from(a)));

// http_head_fuzz.cc reads its input as wire bytes (no prefix); each seed is parsed both as a
// request and as a response. A browser's upgrade request (and one after a leading CRLF, with
// a frame behind it), upstream answers (101, 101 without a reason, 400 with a body), then
// one of each refusal: bare LF, obs-fold, space before the colon, a NUL in a value, HTTP/2.0,
// a non-token method, and a head cut short.
const browser = [
  'GET /chat?room=1 HTTP/1.1',
  'Host: example.com:8080',
  'Connection: Upgrade',
  'Pragma: no-cache',
  'Cache-Control: no-cache',
  'User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36',
  'Upgrade: websocket',
  'Origin: https://example.com',
  'Sec-WebSocket-Version: 13',
  'Accept-Encoding: gzip, deflate, br',
  'Accept-Language: en-US,en;q=0.9',
  'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
  'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits',
  'Sec-WebSocket-Protocol: chat, superchat',
].join('\r\n') + '\r\n\r\n';
const headSeeds = [
  browser,
  Buffer.concat([Buffer.from('\r\n' + browser), frame(0x81, Buffer.from('hello'), true)]),
  'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n',
  'HTTP/1.1 101\r\nupgrade:WebSocket\r\nconnection: keep-alive, upgrade\r\nX-Empty:\r\nX-Obs: caf\xe9\t \r\n\r\n',
  'HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nbad request',
  'GET / HTTP/1.1\nHost: a\r\n\r\n',
  'GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n',
  'GET / HTTP/1.1\r\nHost : a\r\n\r\n',
  'GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n',
  'GET / HTTP/2.0\r\n\r\n',
  'G(T /x HTTP/1.1\r\n\r\n',
  'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConn',
].map((s) => (typeof s === 'string' ? Buffer.from(s, 'latin1') : s));

// inflate_meter_fuzz.cc: [text | reset << 1 | (chunk - 1) << 2, limit / 257, ...raw deflate
// without the RFC 7692 tail]. Text and binary, stored and fixed/dynamic Huffman blocks, a
// final block, a message past the limit, invalid UTF-8, and bytes that are not deflate.
const deflated = (data, opts = {}) => {
  const out = zlib.deflateRawSync(data, { finishFlush: zlib.constants.Z_SYNC_FLUSH, ...opts });
  return out.subarray(0, out.length - 4); // the 00 00 ff ff tail goes
};
const inflateSeeds = [
  Buffer.concat([Buffer.from([1 | (7 << 2), 40]), deflated(Buffer.from('hello, hello, hello '.repeat(20)))]),
  Buffer.concat([Buffer.from([0 | (63 << 2), 255]), deflated(bytes(5000, 3))]),
  Buffer.concat([Buffer.from([2 | (15 << 2), 10]), deflated(bytes(3000, 9), { level: 0 })]),
  Buffer.concat([Buffer.from([1 | (3 << 2), 255]), deflated(Buffer.from('caf\u00e9 \u{1f600} '.repeat(50)))]),
  Buffer.concat([Buffer.from([0 | (31 << 2), 0]), deflated(Buffer.alloc(20000, 0x79))]),
  Buffer.concat([Buffer.from([1 | (1 << 2), 4]), deflated(Buffer.from([0x61, 0xc3, 0x28, 0x62]))]),
  Buffer.concat([Buffer.from([0 | (0 << 2), 4]), zlib.deflateRawSync(Buffer.from('final block'))]),
  Buffer.from([0, 4, 0xff, 0xff, 0xff, 0xff, 0x00]),
];

for (const [target, seeds] of [['frame_parser', frameSeeds], ['envelope', envSeeds], ['utf8', utf8Seeds], ['http_head', headSeeds], ['inflate_meter', inflateSeeds]]) {
  const d = path.join(dir, target);
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d, { recursive: true });
  seeds.forEach((s, i) => writeFileSync(path.join(d, `seed-${String(i).padStart(2, '0')}`), s));
}
console.log(`corpus: ${frameSeeds.length} frame_parser, ${envSeeds.length} envelope, ${utf8Seeds.length} utf8, ${headSeeds.length} http_head, ${inflateSeeds.length} inflate_meter seeds in ${dir}`);
