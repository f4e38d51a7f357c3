import t from 'tap';
import { CodecErrno, EnvelopeFlag, EnvelopeType, envelopeEncode } from '../src/codec/index.js';
import { implementations } from './codec-impls.js';

for (const [name, impl] of implementations) {
  t.test(`${name}: envelope v2 encode writes the documented bytes`, async (t) => {
    const out = Buffer.alloc(32, 0xee);
    const end = impl.envelopeEncodeInto(out, 3, EnvelopeType.Data, EnvelopeFlag.Final | EnvelopeFlag.Backpressure, Buffer.from('abc'));
    t.equal(end, 3 + 8 + 3, 'returns the end offset');
    t.same([...out.subarray(0, 16)], [0xee, 0xee, 0xee, 0x02, 0x01, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x03, 0x61, 0x62, 0x63, 0xee, 0xee],
      'version, type, flags, reserved, big-endian length, payload; nothing else touched');
    const big = Buffer.alloc(0x010203, 7);
    const out2 = Buffer.alloc(8 + big.length);
    impl.envelopeEncodeInto(out2, 0, EnvelopeType.Control, 0, big);
    t.same([...out2.subarray(0, 8)], [0x02, 0x06, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03], 'length is big endian');
    t.ok(out2.subarray(8).equals(big));
    t.equal(impl.envelopeEncodeInto(Buffer.alloc(8), 0, EnvelopeType.Ping, 0, Buffer.alloc(0)), 8, 'empty payload');
  });

  t.test(`${name}: envelope v2 decode`, async (t) => {
    const out = new Uint32Array(4);
    const msg = envelopeEncode(EnvelopeType.Close, EnvelopeFlag.Final, Buffer.from([0x03, 0xe8, 0x62, 0x79, 0x65]));
    t.equal(impl.envelopeDecode(msg, 1024, out), 0);
    t.same([...out], [EnvelopeType.Close, EnvelopeFlag.Final, 8, 5], 'type, flags, offset, length');
    const bad = (mutate: (b: Buffer) => void, body = 'hello'): Buffer => {
      const b = envelopeEncode(EnvelopeType.Data, 0, Buffer.from(body));
      mutate(b);
      return b;
    };
    const cases: Array<[string, Uint8Array, number, number?]> = [
      ['shorter than a header', Buffer.from([0x02, 0x01, 0x00]), CodecErrno.EnvelopeLength],
      ['empty', Buffer.alloc(0), CodecErrno.EnvelopeLength],
      ['version 1', bad((b) => { b[0] = 0x01; }), CodecErrno.EnvelopeVersion],
      ['reserved byte set', bad((b) => { b[3] = 0x01; }), CodecErrno.EnvelopeReserved],
      ['type 0', bad((b) => { b[1] = 0; }), CodecErrno.EnvelopeType],
      ['type 7', bad((b) => { b[1] = 7; }), CodecErrno.EnvelopeType],
      ['flag 0x10', bad((b) => { b[2] = 0x10; }), CodecErrno.EnvelopeFlags],
      ['length says more than present', bad((b) => { b[7] = 6; }), CodecErrno.EnvelopeLength],
      ['length says less than present', bad((b) => { b[7] = 4; }), CodecErrno.EnvelopeLength],
      ['over maxPayload', bad(() => {}), CodecErrno.EnvelopeTooBig, 4],
    ];
    for (const [what, m, errno, max] of cases) t.equal(impl.envelopeDecode(m, max ?? 1024, out), -errno, what);
    t.equal(impl.envelopeDecode(bad(() => {}), 5, out), 0, 'exactly maxPayload passes');
  });

  t.test(`${name}: envelope v2 decodeRun`, async (t) => {
    const frames = [
      envelopeEncode(EnvelopeType.Data, EnvelopeFlag.Fragmented, Buffer.from('one')),
      envelopeEncode(EnvelopeType.Ping, 0, Buffer.alloc(0)),
      envelopeEncode(EnvelopeType.Data, EnvelopeFlag.Final | EnvelopeFlag.Compressed, Buffer.alloc(300, 1)),
    ];
    const run = Buffer.concat(frames);
    const d = new Uint32Array(16);
    t.equal(impl.envelopeDecodeRun(run, 1024, d), 3);
    t.same([...d.subarray(0, 12)], [1, 2, 8, 3, 2, 0, 19, 0, 1, 5, 27, 300], 'descriptors: type, flags, offset, length');
    t.equal(impl.envelopeDecodeRun(Buffer.alloc(0), 1024, d), 0, 'an empty run has no frames');
    t.equal(impl.envelopeDecodeRun(run, 1024, new Uint32Array(8)), -CodecErrno.EnvelopeLength, 'more frames than descriptors');
    t.equal(impl.envelopeDecodeRun(run.subarray(0, run.length - 1), 1024, d), -CodecErrno.EnvelopeLength, 'last frame cut short');
    t.equal(impl.envelopeDecodeRun(Buffer.concat([run, Buffer.from([0x02, 0x01])]), 1024, d), -CodecErrno.EnvelopeLength, 'trailing partial header');
    t.equal(impl.envelopeDecodeRun(run, 299, d), -CodecErrno.EnvelopeTooBig, 'a frame over maxPayload');
    const corrupt = Buffer.from(run);
    corrupt[11] = 0x03;
    t.equal(impl.envelopeDecodeRun(corrupt, 1024, d), -CodecErrno.EnvelopeVersion, 'second header with a bad version');
    corrupt[11] = 0x02;
    corrupt[11 + 2] = 0x80;
    t.equal(impl.envelopeDecodeRun(corrupt, 1024, d), -CodecErrno.EnvelopeFlags, 'second header with unknown flags');
  });
}
