// The native tunnel link (native/tunnel/mux.cc) against a raw peer on a real socket: bytes
// written by hand, so that what the link must refuse can be sent (the process tests and
// the interop tests only ever send it what well-behaved peers send).
import { once } from 'node:events';
import net from 'node:net';
import t from 'tap';
import { linkOverSocket, nativeLinkUnavailable, type NativeLink } from '../src/tunnel/native-link.js';

// Without the addon the TypeScript link runs (test/yamux.test.ts and the process tests
// check it); this file is the native one's.
const skip = nativeLinkUnavailable !== '' ? `the native link is not in use here (${nativeLinkUnavailable})` : false;

/** A WebSocket frame (FIN set), masked as an agent (a WebSocket client) must send it. */
function wsFrame(opcode: number, payload: Buffer, mask = true): Buffer {
  const n = payload.length;
  const head: number[] = [0x80 | opcode];
  const m = mask ? 0x80 : 0;
  if (n < 126) head.push(m | n);
  else if (n < 65536) head.push(m | 126, n >> 8, n & 255);
  else head.push(m | 127, 0, 0, 0, 0, (n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
  if (!mask) return Buffer.concat([Buffer.from(head), payload]);
  const key = Buffer.from([0x12, 0x34, 0x56, 0x78]);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= key[i & 3];
  return Buffer.concat([Buffer.from(head), key, body]);
}

function yamux(type: number, flags: number, id: number, length: number, payload = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(12);
  h[1] = type;
  h.writeUInt16BE(flags, 2);
  h.writeUInt32BE(id, 4);
  h.writeUInt32BE(length, 8);
  return Buffer.concat([h, payload]);
}

/** The frames a gateway's link (a WebSocket server: unmasked) wrote, as they come. */
class Frames {
  private buf = Buffer.alloc(0);
  readonly list: Array<{ opcode: number; payload: Buffer }> = [];
  private waiters: Array<() => void> = [];
  constructor(socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      for (;;) {
        if (this.buf.length < 2) break;
        let len = this.buf[1] & 127;
        let at = 2;
        if (len === 126) { if (this.buf.length < 4) break; len = this.buf.readUInt16BE(2); at = 4; }
        else if (len === 127) { if (this.buf.length < 10) break; len = Number(this.buf.readBigUInt64BE(2)); at = 10; }
        if (this.buf.length < at + len) break;
        this.list.push({ opcode: this.buf[0] & 15, payload: this.buf.subarray(at, at + len) });
        this.buf = this.buf.subarray(at + len);
      }
      for (const w of this.waiters.splice(0)) w();
    });
  }
  async until(pred: (f: { opcode: number; payload: Buffer }) => boolean, ms = 3000): Promise<{ opcode: number; payload: Buffer }> {
    const deadline = Date.now() + ms;
    for (;;) {
      const f = this.list.find(pred);
      if (f !== undefined) return f;
      if (Date.now() > deadline) throw new Error(`no such frame; got ${JSON.stringify(this.list.map((x) => [x.opcode, x.payload.toString('hex').slice(0, 40)]))}`);
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 50); });
    }
  }
}

/** A gateway-side link (yamux client, WebSocket server) over a loopback connection, and its raw peer. */
async function gatewayLink(extra: { onControl?(text: string): void } = {}): Promise<{ link: NativeLink; peer: net.Socket; frames: Frames; ended: Promise<[number, string]>; close(): void }> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const ours = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await once(ours, 'connect');
  const [peer] = await accepted;
  server.close();
  const frames = new Frames(peer);
  let end!: (v: [number, string]) => void;
  const ended = new Promise<[number, string]>((r) => { end = r; });
  const link = linkOverSocket(ours, Buffer.alloc(0), { ...extra, client: true, wsClient: false, onEnd: (code, reason) => end([code, reason]) })!;
  return { link, peer, frames, ended, close: () => { link.terminate(); peer.destroy(); } };
}

t.test('an unmasked frame from the agent (a WebSocket client) ends the link with 1002', { skip }, async (t) => {
  const g = await gatewayLink();
  t.teardown(g.close);
  g.peer.write(wsFrame(2, yamux(2, 1, 0, 7), false));
  const close = await g.frames.until((f) => f.opcode === 8);
  t.equal(close.payload.readUInt16BE(0), 1002, 'the close frame says 1002');
  const [code] = await g.ended;
  t.equal(code, 1002, 'and the link reports it');
});

t.test('a yamux ping is answered; a data frame past the stream\'s window is a protocol error: go-away 1, then 1002', { skip }, async (t) => {
  const g = await gatewayLink();
  t.teardown(g.close);
  g.peer.write(wsFrame(2, yamux(2, 1, 0, 4242)));
  const pong = await g.frames.until((f) => f.opcode === 2 && f.payload[1] === 2);
  t.same([pong.payload.readUInt16BE(2), pong.payload.readUInt32BE(8)], [2, 4242], 'ping 4242 answered with ACK 4242');
  const stream = g.link.session.open();
  stream.on('error', () => {});
  const syn = await g.frames.until((f) => f.opcode === 2 && f.payload[1] === 1 && (f.payload.readUInt16BE(2) & 1) === 1);
  const id = syn.payload.readUInt32BE(4);
  t.equal(id, 1, 'the gateway opens odd stream ids');
  g.peer.write(wsFrame(2, yamux(1, 2, id, 0)));
  // 256 KiB + 1 byte in one data frame: more than the window the stream started with.
  g.peer.write(wsFrame(2, yamux(0, 0, id, 256 * 1024 + 1, Buffer.alloc(256 * 1024 + 1))));
  const goAway = await g.frames.until((f) => f.opcode === 2 && f.payload[1] === 3);
  t.equal(goAway.payload.readUInt32BE(8), 1, 'go-away with code 1 (protocol error)');
  const close = await g.frames.until((f) => f.opcode === 8);
  t.equal(close.payload.readUInt16BE(0), 1002, 'then the close frame, 1002');
  t.match(close.payload.subarray(2).toString(), /past its window/, 'naming the fault');
  t.equal(g.frames.list.at(-1)?.opcode, 8, 'nothing after the close frame');
});

t.test('a stream\'s first line longer than 4 KiB is reset; the link lives on', { skip }, async (t) => {
  const g = await gatewayLink();
  t.teardown(g.close);
  const stream = g.link.session.open();
  const reset = once(stream, 'error');
  const id = stream.id;
  g.peer.write(wsFrame(2, yamux(0, 2, id, 5000, Buffer.alloc(5000, 0x61))));
  const rst = await g.frames.until((f) => f.opcode === 2 && f.payload[1] === 1 && f.payload.readUInt32BE(4) === id && (f.payload.readUInt16BE(2) & 8) !== 0);
  t.ok(rst, 'RST on that stream');
  const [err] = await reset as [NodeJS.ErrnoException];
  t.equal(err.code, 'ECONNRESET', 'the stream fails as reset');
  const other = g.link.session.open();
  t.equal(other.id, id + 2, 'and the link still opens streams');
  other.on('error', () => {});
  g.peer.write(wsFrame(2, yamux(0, 2, other.id, 12, Buffer.from('{"ok":true}\nrest'.slice(0, 12)))));
  g.peer.write(wsFrame(2, yamux(0, 0, other.id, 4, Buffer.from('rest'))));
  const got: Buffer[] = [];
  other.on('data', (d: Buffer) => got.push(d));
  const deadline = Date.now() + 3000;
  while (Buffer.concat(got).toString() !== '{"ok":true}\nrest' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.equal(Buffer.concat(got).toString(), '{"ok":true}\nrest', 'a stream\'s line and the bytes after it reach its reader in order');
});

t.test('text messages are control messages, fragmented or not; a close from the agent is answered and ends the link with its code', { skip }, async (t) => {
  const got: string[] = [];
  const g = await gatewayLink({ onControl: (text) => got.push(text) });
  t.teardown(g.close);
  const text = '{"type":"gateway_hello_ack","version":1}';
  g.peer.write(wsFrame(1, Buffer.from(text.slice(0, 10))));
  // The second in two fragments: FIN clear, then a continuation.
  const first = wsFrame(1, Buffer.from(text.slice(10, 20)));
  first[0] &= 0x7f;
  g.peer.write(first);
  g.peer.write(wsFrame(0, Buffer.from(text.slice(20))));
  const until = Date.now() + 3000;
  while (got.length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
  t.same(got, [text.slice(0, 10), text.slice(10)], 'each whole text message, in order');
  g.peer.write(wsFrame(8, Buffer.from([0x0f, 0xa0, 0x62, 0x79, 0x65])));
  const answer = await g.frames.until((f) => f.opcode === 8);
  t.equal(answer.payload.readUInt16BE(0), 4000, 'the close is answered with its code');
  const [code, reason] = await g.ended;
  t.same([code, reason], [4000, 'bye'], 'and the link ends with it');
});
