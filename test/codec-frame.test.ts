import t from 'tap';
import { CodecErrno, Desc, Opcode, type CodecImplementation, type FrameParser } from '../src/codec/index.js';
import { parserImplementations, parseChunks } from './codec-impls.js';

const hello = Buffer.from('Hello');

/** RFC 6455 §5.7 examples. */
const rfc = {
  text: Buffer.from([0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]),
  maskedText: Buffer.from([0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]),
  fragment1: Buffer.from([0x01, 0x03, 0x48, 0x65, 0x6c]),
  fragment2: Buffer.from([0x80, 0x02, 0x6c, 0x6f]),
  ping: Buffer.from([0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]),
  pong: Buffer.from([0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]),
  maskedPong: Buffer.from([0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]),
  binary256Header: Buffer.from([0x82, 0x7e, 0x01, 0x00]),
  binary64kHeader: Buffer.from([0x82, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]),
};

function parser(impl: CodecImplementation, role: 0 | 1, o: { maxFrame?: number; maxMessage?: number; maxFragments?: number; rsv1?: boolean; perCall?: number } = {}): FrameParser {
  return new impl.FrameParser(role, o.maxFrame ?? 1 << 20, o.maxMessage ?? 1 << 20, o.maxFragments ?? 1024, o.rsv1 ?? false, o.perCall ?? 1024);
}

function serverEncode(impl: CodecImplementation, frames: Array<[number, Uint8Array, boolean?]>): Buffer {
  const enc = new impl.FrameEncoder(1, 64);
  for (const [op, payload, fin] of frames) enc.frame(op, payload, fin ?? true);
  return enc.take() ?? Buffer.alloc(0);
}

for (const [name, impl] of parserImplementations) {
  t.test(`${name}: RFC 6455 §5.7 examples`, async (t) => {
    t.same(serverEncode(impl, [[Opcode.Text, hello]]), rfc.text, 'unmasked text encodes byte for byte');
    t.same(serverEncode(impl, [[Opcode.Text, Buffer.from('Hel'), false], [Opcode.Continuation, Buffer.from('lo')]]),
      Buffer.concat([rfc.fragment1, rfc.fragment2]), 'fragmented text');
    t.same(serverEncode(impl, [[Opcode.Ping, hello]]), rfc.ping, 'ping');
    t.same(serverEncode(impl, [[Opcode.Pong, hello]]), rfc.pong, 'pong');
    const b256 = Buffer.alloc(256, 0xab);
    t.same(serverEncode(impl, [[Opcode.Binary, b256]]), Buffer.concat([rfc.binary256Header, b256]), '256-byte binary');
    const b64k = Buffer.alloc(65536, 0xcd);
    t.same(serverEncode(impl, [[Opcode.Binary, b64k]]), Buffer.concat([rfc.binary64kHeader, b64k]), '64 KiB binary');

    let run = parseChunks(parser(impl, 0), [rfc.text]);
    t.same(run.frames.map((f) => [f.info, f.payload.toString()]), [[Opcode.Text | Desc.FIN, 'Hello']], 'parse unmasked text');
    run = parseChunks(parser(impl, 1), [rfc.maskedText]);
    t.same(run.frames.map((f) => [f.info, f.payload.toString(), f.maskKey]),
      [[Opcode.Text | Desc.FIN | Desc.MASKED, 'Hello', 0x37fa213d]], 'parse masked text: unmasked in place, key big endian');
    run = parseChunks(parser(impl, 1), [rfc.maskedPong]);
    t.same(run.frames.map((f) => [f.info, f.payload.toString()]), [[Opcode.Pong | Desc.FIN | Desc.MASKED, 'Hello']], 'masked pong');
    run = parseChunks(parser(impl, 0), [Buffer.concat([rfc.fragment1, rfc.ping, rfc.fragment2, rfc.pong])]);
    t.same(run.frames.map((f) => [f.info, f.payload.toString()]), [
      [Opcode.Text, 'Hel'], [Opcode.Ping | Desc.FIN, 'Hello'], [Opcode.Continuation | Desc.FIN, 'lo'], [Opcode.Pong | Desc.FIN, 'Hello'],
    ], 'fragments with a control frame between them');
    run = parseChunks(parser(impl, 0), [Buffer.concat([rfc.binary256Header, b256, rfc.binary64kHeader, b64k])]);
    t.same(run.frames.map((f) => [f.info, f.payload.length, f.payload.equals(f.info === 0x12 && f.payload.length === 256 ? b256 : b64k)]),
      [[0x12, 256, true], [0x12, 65536, true]], '256-byte and 64 KiB binary');
    // Descriptor offsets point into the chunk.
    const p = parser(impl, 0);
    const chunk = Buffer.concat([rfc.text, rfc.binary256Header, b256]);
    t.equal(p.parse(chunk, 0), 2);
    t.same(Array.from(p.descriptors.subarray(0, 8)), [0x11, 2, 5, 0, 0x12, 11, 256, 0], 'descriptors: info, offset, length, key');
    t.same([p.state[0], p.state[1], p.state[2]], [2, -1, 0], 'state: count, resume -1, no errno');
  });

  t.test(`${name}: length boundaries both ways`, async (t) => {
    for (const role of [0, 1] as const) {
      for (const n of [0, 1, 125, 126, 127, 65535, 65536, 70000]) {
        const payload = Buffer.alloc(n);
        for (let i = 0; i < n; i++) payload[i] = (i * 7 + 3) & 0xff;
        const enc = new impl.FrameEncoder(role, 16);
        enc.frame(Opcode.Binary, payload);
        const wire = enc.take()!;
        const header = (n < 126 ? 2 : n < 65536 ? 4 : 10) + (role === 0 ? 4 : 0);
        t.equal(wire.length, header + n, `${n} bytes, role ${role}: minimal header`);
        t.equal(wire[1] & 0x7f, n < 126 ? n : n < 65536 ? 126 : 127, `${n} bytes: 7-bit length field`);
        // A client-role encoder's frames go to a server-role parser.
        const run = parseChunks(parser(impl, role === 0 ? 1 : 0), [wire]);
        t.equal(run.frames.length, 1);
        t.ok(run.frames[0].payload.equals(payload), `${n} bytes, role ${role}: round trip`);
      }
    }
  });

  t.test(`${name}: every violation yields its errno and offset, then the parser is dead`, async (t) => {
    const key = [0x01, 0x02, 0x03, 0x04];
    const cases: Array<{ what: string; role: 0 | 1; bytes: number[]; errno: number; offset: number; before?: number; opts?: Parameters<typeof parser>[2] }> = [
      { what: 'reserved opcode 0x3', role: 0, bytes: [0x83, 0x00], errno: CodecErrno.BadOpcode, offset: 0 },
      { what: 'reserved opcode 0xB after a frame', role: 0, bytes: [0x81, 0x00, 0x8b, 0x00], errno: CodecErrno.BadOpcode, offset: 2, before: 1 },
      { what: 'ping of 126 bytes', role: 0, bytes: [0x89, 0x7e, 0x00, 0x7e], errno: CodecErrno.ControlTooLong, offset: 0 },
      { what: 'ping without FIN', role: 0, bytes: [0x09, 0x00], errno: CodecErrno.ControlFragmented, offset: 0 },
      { what: 'RSV1 without extension', role: 0, bytes: [0xc1, 0x00], errno: CodecErrno.ReservedBits, offset: 0 },
      { what: 'RSV2', role: 0, bytes: [0xa1, 0x00], errno: CodecErrno.ReservedBits, offset: 0, opts: { rsv1: true } },
      { what: 'RSV3', role: 0, bytes: [0x91, 0x00], errno: CodecErrno.ReservedBits, offset: 0, opts: { rsv1: true } },
      { what: 'RSV1 on a continuation', role: 0, bytes: [0x41, 0x00, 0xc0, 0x00], errno: CodecErrno.ReservedBits, offset: 2, before: 1, opts: { rsv1: true } },
      { what: 'RSV1 on a ping', role: 0, bytes: [0xc9, 0x00], errno: CodecErrno.ReservedBits, offset: 0, opts: { rsv1: true } },
      { what: 'unmasked frame to a server', role: 1, bytes: [0x81, 0x00], errno: CodecErrno.MaskExpected, offset: 0 },
      { what: 'masked frame to a client', role: 0, bytes: [0x81, 0x80, ...key], errno: CodecErrno.MaskUnexpected, offset: 0 },
      { what: '64-bit length with top bit', role: 0, bytes: [0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0], errno: CodecErrno.LengthTopBit, offset: 0 },
      { what: 'continuation with no message', role: 0, bytes: [0x80, 0x00], errno: CodecErrno.UnexpectedContinuation, offset: 0 },
      { what: 'new message inside a fragmented one', role: 0, bytes: [0x01, 0x00, 0x89, 0x00, 0x82, 0x00], errno: CodecErrno.ExpectedContinuation, offset: 4, before: 2 },
      { what: 'frame over maxFrameBytes, refused before its payload', role: 0, bytes: [0x82, 0x7e, 0x00, 0x65], errno: CodecErrno.FrameTooBig, offset: 0, opts: { maxFrame: 100 } },
      { what: 'frame over 2^32 (no top bit)', role: 0, bytes: [0x82, 0x7f, 0, 0, 0, 1, 0, 0, 0, 0], errno: CodecErrno.FrameTooBig, offset: 0 },
      { what: 'message over maxMessageBytes', role: 0, bytes: [0x02, 0x06, 1, 2, 3, 4, 5, 6, 0x80, 0x05], errno: CodecErrno.MessageTooBig, offset: 8, before: 1, opts: { maxMessage: 10 } },
      { what: 'single frame over maxMessageBytes', role: 0, bytes: [0x82, 0x0b], errno: CodecErrno.MessageTooBig, offset: 0, opts: { maxMessage: 10 } },
      { what: 'too many fragments', role: 0, bytes: [0x02, 0x00, 0x00, 0x00, 0x80, 0x00], errno: CodecErrno.TooManyFragments, offset: 4, before: 2, opts: { maxFragments: 2 } },
    ];
    for (const c of cases) {
      const p = parser(impl, c.role, c.opts);
      const chunk = Buffer.from(c.bytes);
      const r = p.parse(chunk, 0);
      t.equal(r, -c.errno, `${c.what}: returns -errno`);
      t.same([p.state[0], p.state[1], p.state[2], p.state[3]], [c.before ?? 0, -1, c.errno, c.offset], `${c.what}: state {count, resume, errno, errorOffset}`);
      const again = p.parse(Buffer.from(rfc.text), 0);
      t.equal(again, -c.errno, `${c.what}: dead after the error`);
      t.same([p.state[0], p.state[2], p.state[3]], [0, c.errno, c.offset], `${c.what}: dead call describes nothing`);
      p.reset();
      if (c.role === 0) t.equal(p.parse(Buffer.from(rfc.text), 0), 1, `${c.what}: reset() revives the parser`);
    }
    // The limits allow exactly the limit.
    const p = parser(impl, 0, { maxFrame: 100, maxMessage: 100, maxFragments: 2 });
    t.equal(p.parse(Buffer.concat([Buffer.from([0x02, 50]), Buffer.alloc(50), Buffer.from([0x80, 50]), Buffer.alloc(50)]), 0), 2, 'exactly at the limits passes');
  });

  t.test(`${name}: a header cut by a chunk boundary is validated when complete`, async (t) => {
    const p = parser(impl, 0, { maxFrame: 100 });
    t.equal(p.parse(Buffer.from([0x81, 0x00, 0x82]), 0), 1, 'one frame, then a partial header');
    t.equal(p.pendingBytes, 1, 'the partial header is held');
    t.equal(p.parse(Buffer.from([0xff, 0xff, 0x7e, 0x00, 0x65]), 2), -CodecErrno.FrameTooBig, 'refused once the length is known');
    t.same([p.state[0], p.state[2], p.state[3]], [0, CodecErrno.FrameTooBig, 2], 'errorOffset is the call offset for a carried header');
  });

  t.test(`${name}: CARRY — frames cut by chunk boundaries`, async (t) => {
    const payload = Buffer.alloc(300_000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31) & 0xff;
    const enc = new impl.FrameEncoder(0, 16);
    enc.frame(Opcode.Binary, payload);
    enc.frame(Opcode.Text, hello);
    const wire = enc.take()!;
    const p = parser(impl, 1);
    // 1000-byte chunks: the big frame completes in the 301st call, then "Hello" follows in the same chunk.
    let described = 0;
    let sawCarry = false;
    for (let at = 0; at < wire.length; at += 1000) {
      const chunk = Buffer.from(wire.subarray(at, Math.min(wire.length, at + 1000)));
      const n = p.parse(chunk, 0);
      t.ok(n >= 0);
      if (n === 0) {
        if (described === 0) t.equal(p.pendingBytes, Math.min(wire.length, at + 1000), 'pendingBytes counts header + payload held');
        continue;
      }
      const d = p.descriptors;
      t.equal(d[0] & Desc.CARRY, Desc.CARRY, 'first descriptor of the completing call has CARRY');
      t.equal(d[2], payload.length);
      t.ok(p.carry.subarray(d[1], d[1] + d[2]).equals(payload), 'carried payload is whole and unmasked');
      t.equal(n, 2, 'the frame after it is described in the same call');
      t.equal(d[4] & Desc.CARRY, 0, 'only the first descriptor has CARRY');
      t.equal(chunk.subarray(d[5], d[5] + d[6]).toString(), 'Hello');
      t.equal(p.pendingBytes, 0);
      described += n;
      sawCarry = true;
    }
    t.ok(sawCarry);
    // A header cut after one byte, payload wholly in the next chunk: still CARRY.
    const q = parser(impl, 0);
    t.equal(q.parse(Buffer.from([0x81]), 0), 0);
    t.equal(q.parse(Buffer.from([0x05, ...hello, 0x89, 0x00]), 0), 2);
    t.equal(q.descriptors[0], Opcode.Text | Desc.FIN | Desc.CARRY, 'CARRY even when the payload came whole');
    t.equal(q.carry.subarray(q.descriptors[1], q.descriptors[1] + q.descriptors[2]).toString(), 'Hello');
    t.equal(q.descriptors[4], Opcode.Ping | Desc.FIN);
    // Zero-length frame whose header was cut.
    t.equal(q.parse(Buffer.from([0x8a]), 0), 0);
    t.equal(q.parse(Buffer.from([0x00]), 0), 1);
    t.same([q.descriptors[0], q.descriptors[2]], [Opcode.Pong | Desc.FIN | Desc.CARRY, 0], 'zero-length carried frame');
  });

  t.test(`${name}: resume when descriptors are full`, async (t) => {
    const p = parser(impl, 0, { perCall: 2 });
    const chunk = Buffer.from([0x81, 0x01, 0x61, 0x81, 0x01, 0x62, 0x81, 0x01, 0x63, 0x81]);
    t.equal(p.parse(chunk, 0), 2);
    t.equal(p.state[1], 6, 'resume points after the second frame');
    t.equal(p.parse(chunk, 6), 1);
    t.equal(p.state[1], -1, 'the rest is consumed (a partial header is held)');
    t.equal(p.pendingBytes, 1);
    const q = parser(impl, 0, { perCall: 2 });
    t.equal(q.parse(chunk.subarray(0, 6), 0), 2);
    t.equal(q.state[1], -1, 'full exactly at the end of the chunk: nothing to resume');
  });

  t.test(`${name}: garbage never throws or hangs`, async (t) => {
    let seed = 12345;
    const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    for (let round = 0; round < 300; round++) {
      const bytes = Buffer.alloc(1 + Math.floor(rnd() * 200));
      for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(rnd() * 256);
      const p = parser(impl, round & 1 ? 1 : 0, { maxFrame: 64, perCall: 3 });
      const run = parseChunks(p, [bytes.subarray(0, bytes.length >> 1), bytes.subarray(bytes.length >> 1)]);
      t.ok(run.result <= 0 && run.calls < 1000);
    }
  });

  t.test(`${name}: client-role encoder masks every frame with a fresh key`, async (t) => {
    const enc = new impl.FrameEncoder(0, 16);
    const payload = Buffer.alloc(200, 0x5a);
    const keys = new Set<string>();
    for (let i = 0; i < 50; i++) {
      enc.frame(Opcode.Binary, payload);
      const wire = enc.take()!;
      t.equal(wire[1] & 0x80, 0x80, 'MASK bit set');
      const key = wire.subarray(4, 8);
      keys.add(key.toString('hex'));
      const body = Buffer.from(wire.subarray(8));
      t.not(body.equals(payload), true, 'payload is masked on the wire');
      for (let j = 0; j < body.length; j++) body[j] ^= key[j & 3];
      t.ok(body.equals(payload), 'unmasking with the header key gives the payload back');
    }
    t.equal(keys.size, 50, 'keys differ between frames');
    t.equal(enc.take(), null, 'nothing pending');
    t.equal(enc.length, 0);
    enc.frame(Opcode.Text, hello);
    enc.frame(Opcode.Ping, Buffer.alloc(0));
    t.equal(enc.length, 2 + 4 + 5 + 2 + 4, 'length counts appended bytes');
    const first = enc.take()!;
    const copy = Buffer.from(first);
    enc.frame(Opcode.Binary, Buffer.alloc(5000, 1));
    t.ok(first.equals(copy), 'a taken buffer is not overwritten by later frames');
    t.throws(() => enc.frame(Opcode.Ping, Buffer.alloc(126)), 'control frame over 125 bytes refused');
    t.throws(() => enc.frame(0x3, hello), 'reserved opcode refused');
    t.throws(() => enc.frame(Opcode.Close, hello, false), 'fragmented control frame refused');
  });
}
