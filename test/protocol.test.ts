/**
 * The envelope protocol (src/protocol): v2 bytes and v1 JSON exactly as DESIGN draws them,
 * every kind of malformed frame with its close code, and the negotiation table.
 */
import t, { type Test } from 'tap';
import {
  decodeEnvelope, encodeEnvelope, negotiateEnvelope, closePayload, parseClosePayload, parseControlPayload,
  backpressureSignal, EnvelopeType, EnvelopeFlag, type EnvelopeFrame, type EnvelopeLimits,
} from '../src/protocol/index.js';

const limits: EnvelopeLimits = { maxPayloadBytes: 1024 };
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const text = (s: string) => Buffer.from(s, 'utf8');

function frame(t: Test, r: EnvelopeFrame | number, what: string): EnvelopeFrame {
  if (typeof r === 'number') {
    t.fail(`${what}: decoded to close code ${r}`);
    return { type: 0, flags: 0, payload: Buffer.alloc(0) };
  }
  return r;
}

t.test('v2 bytes on the wire exactly as DESIGN draws them', async (t) => {
  const cases: Array<[number, number, Buffer, string]> = [
    [EnvelopeType.Data, 0, text('hi'), '02 01 00 00 00000002 6869'],
    [EnvelopeType.Data, EnvelopeFlag.Final | EnvelopeFlag.Compressed, Buffer.from([0, 255]), '02 01 05 00 00000002 00ff'],
    [EnvelopeType.Ping, 0, Buffer.alloc(0), '02 02 00 00 00000000'],
    [EnvelopeType.Pong, 0, Buffer.alloc(0), '02 03 00 00 00000000'],
    [EnvelopeType.Close, 0, closePayload(1000, 'bye'), '02 04 00 00 00000005 03e8 627965'],
    [EnvelopeType.Error, 0, text('oops'), '02 05 00 00 00000004 6f6f7073'],
    [EnvelopeType.Control, EnvelopeFlag.Backpressure, text('{"a":1}'), '02 06 08 00 00000007 7b2261223a317d'],
    [EnvelopeType.Data, EnvelopeFlag.Fragmented, Buffer.alloc(300, 7), '02 01 02 00 0000012c' + '07'.repeat(300)],
  ];
  for (const [type, flags, payload, wire] of cases) {
    const m = encodeEnvelope('v2', type, flags, payload);
    t.equal(m.binary, true);
    t.equal((m.data as Buffer).toString('hex'), hex(wire).toString('hex'), `encode type ${type} flags ${flags}`);
    const f = frame(t, decodeEnvelope('v2', hex(wire), true, limits), `decode type ${type}`);
    t.equal(f.type, type);
    t.equal(f.flags, flags);
    t.ok(f.payload.equals(payload), 'payload round trip');
  }
  // The payload is a view into the message, not a copy.
  const msg = hex('02 01 00 00 00000003 616263');
  const f = frame(t, decodeEnvelope('v2', msg, true, limits), 'view');
  msg[8] = 0x7a;
  t.equal(f.payload.toString(), 'zbc', 'payload is a view');
  // A message that is a subarray of a larger buffer decodes at its own offset.
  const big = Buffer.concat([Buffer.from([9, 9, 9]), hex('02 01 00 00 00000001 41'), Buffer.from([9])]);
  const sub = big.subarray(3, 12);
  t.equal(frame(t, decodeEnvelope('v2', sub, true, limits), 'sub').payload.toString(), 'A');
});

t.test('v1 JSON exactly as specified', async (t) => {
  const cases: Array<[number, number, Buffer, string]> = [
    [EnvelopeType.Data, 0, text('hello'), '{"type":"data","data":"aGVsbG8="}'],
    [EnvelopeType.Data, 0, Buffer.alloc(0), '{"type":"data","data":""}'],
    [EnvelopeType.Ping, 0, Buffer.alloc(0), '{"type":"ping"}'],
    [EnvelopeType.Pong, 0, Buffer.alloc(0), '{"type":"pong"}'],
    [EnvelopeType.Close, 0, closePayload(1000, 'bye "now"'), '{"type":"close","code":1000,"reason":"bye \\"now\\""}'],
    [EnvelopeType.Close, 0, closePayload(4001, ''), '{"type":"close","code":4001,"reason":""}'],
    [EnvelopeType.Close, 0, Buffer.alloc(0), '{"type":"close"}'],
    [EnvelopeType.Error, 0, text('upstream gone'), '{"type":"error","reason":"upstream gone"}'],
    [EnvelopeType.Control, 0, text('{"op":"resize","n":[1,2]}'), '{"type":"control","payload":{"op":"resize","n":[1,2]}}'],
    [EnvelopeType.Control, EnvelopeFlag.Backpressure, text('{"backpressure":true}'),
      '{"type":"control","payload":{"backpressure":true},"flags":["backpressure"]}'],
    [EnvelopeType.Data, 0x0f, text('x'), '{"type":"data","data":"eA==","flags":["compressed","fragmented","final","backpressure"]}'],
    [EnvelopeType.Ping, 0, text('7'), '{"type":"ping","data":"Nw=="}'],
  ];
  for (const [type, flags, payload, json] of cases) {
    const m = encodeEnvelope('v1', type, flags, payload);
    t.equal(m.binary, false);
    t.equal(m.data, json, `encode ${json}`);
    const f = frame(t, decodeEnvelope('v1', text(json), false, limits), `decode ${json}`);
    t.equal(f.type, type);
    t.equal(f.flags, flags);
    t.ok(f.payload.equals(payload), `payload of ${json}`);
  }
  // Field order, whitespace and unknown keys on input do not matter.
  const f = frame(t, decodeEnvelope('v1', text(' { "flags" : ["final"], "data":"QQ==", "id": 7, "type":"data" } '), false, limits), 'loose');
  t.same([f.type, f.flags, f.payload.toString()], [1, EnvelopeFlag.Final, 'A']);
  // A control payload keeps its JSON; the close reason is UTF-8.
  const c = frame(t, decodeEnvelope('v1', text('{"type":"close","code":4000,"reason":"schön"}'), false, limits), 'utf8 reason');
  t.same(parseClosePayload(c.payload), { code: 4000, reason: 'schön' });
  t.same(parseControlPayload(frame(t, decodeEnvelope('v1', text('{"type":"control","payload":{"k":"v"}}'), false, limits), 'c').payload), { k: 'v' });
});

t.test('v2 malformed frames: each kind and its close code', async (t) => {
  const cases: Array<[string, string, number]> = [
    ['empty message', '', 1002],
    ['short header', '02 01 00 00 0000', 1002],
    ['version 0x01', '01 01 00 00 00000000', 1002],
    ['version 0x03', '03 01 00 00 00000000', 1002],
    ['reserved byte set', '02 01 00 01 00000000', 1002],
    ['type 0', '02 00 00 00 00000000', 1002],
    ['type 7', '02 07 00 00 00000000', 1002],
    ['type 0xff', '02 ff 00 00 00000000', 1002],
    ['unknown flag 0x10', '02 01 10 00 00000000', 1002],
    ['length longer than the bytes', '02 01 00 00 00000005 6869', 1002],
    ['length shorter than the bytes', '02 01 00 00 00000001 6869', 1002],
    ['length over maxPayloadBytes', '02 01 00 00 00000401', 1009],
    ['length 0xffffffff, 8 bytes present', '02 01 00 00 ffffffff', 1009],
    ['close with a 1-byte payload', '02 04 00 00 00000001 03', 1002],
    ['close with code 1005', '02 04 00 00 00000002 03ed', 1002],
    ['close with code 1006', '02 04 00 00 00000002 03ee', 1002],
    ['close with code 999', '02 04 00 00 00000002 03e7', 1002],
    ['close with code 5000', '02 04 00 00 00000002 1388', 1002],
    ['close reason over 123 bytes', '02 04 00 00 0000007e 03e8' + '61'.repeat(124), 1002],
    ['close reason not UTF-8', '02 04 00 00 00000004 03e8 c328', 1007],
    ['error reason not UTF-8', '02 05 00 00 00000002 c328', 1007],
    ['control not JSON', '02 06 00 00 00000003 7b787d', 1007],
    ['control JSON not an object', '02 06 00 00 00000001 31', 1007],
    ['control not UTF-8', '02 06 00 00 00000002 ff7b', 1007],
  ];
  for (const [what, wire, code] of cases) t.equal(decodeEnvelope('v2', hex(wire), true, limits), code, what);
  t.equal(decodeEnvelope('v2', hex('02 01 00 00 00000000'), false, limits), 1003, 'a text message on v2');
  // At the limit exactly is fine; one over is not.
  const at = Buffer.concat([hex('02 01 00 00 00000400'), Buffer.alloc(1024)]);
  t.equal(frame(t, decodeEnvelope('v2', at, true, limits), 'at limit').payload.length, 1024);
  // Valid edge cases: empty close (no code), close 1000 with a 123-byte reason, codes 3000/4999.
  t.type(decodeEnvelope('v2', hex('02 04 00 00 00000000'), true, limits), 'object');
  t.type(decodeEnvelope('v2', hex('02 04 00 00 0000007d 03e8' + '61'.repeat(123)), true, limits), 'object');
  t.type(decodeEnvelope('v2', hex('02 04 00 00 00000002 0bb8'), true, limits), 'object');
  t.type(decodeEnvelope('v2', hex('02 04 00 00 00000002 1387'), true, limits), 'object');
});

t.test('v1 malformed frames: each kind and its close code', async (t) => {
  const cases: Array<[string, string | Buffer, number]> = [
    ['not JSON', '{"type":"data"', 1002],
    ['empty', '', 1002],
    ['JSON array', '[1,2]', 1002],
    ['JSON string', '"data"', 1002],
    ['JSON null', 'null', 1002],
    ['no type', '{"data":"QQ=="}', 1002],
    ['unknown type', '{"type":"hello"}', 1002],
    ['type from the prototype', '{"type":"constructor"}', 1002],
    ['type not a string', '{"type":1}', 1002],
    ['data missing', '{"type":"data"}', 1002],
    ['data not a string', '{"type":"data","data":[65]}', 1002],
    ['flags not an array', '{"type":"ping","flags":"final"}', 1002],
    ['unknown flag', '{"type":"ping","flags":["urgent"]}', 1002],
    ['flag not a string', '{"type":"ping","flags":[4]}', 1002],
    ['close code not a number', '{"type":"close","code":"1000"}', 1002],
    ['close code not an integer', '{"type":"close","code":1000.5}', 1002],
    ['close code 1006', '{"type":"close","code":1006}', 1002],
    ['close code 5000', '{"type":"close","code":5000}', 1002],
    ['close reason without code', '{"type":"close","reason":"x"}', 1002],
    ['close reason not a string', '{"type":"close","code":1000,"reason":5}', 1002],
    ['close reason over 123 bytes', `{"type":"close","code":1000,"reason":"${'é'.repeat(62)}"}`, 1002],
    ['error reason not a string', '{"type":"error","reason":{}}', 1002],
    ['control payload not an object', '{"type":"control","payload":[1]}', 1002],
    ['control payload missing', '{"type":"control"}', 1002],
    ['base64: character outside the alphabet', '{"type":"data","data":"QQ*="}', 1007],
    ['base64: whitespace', '{"type":"data","data":"QU Fh"}', 1007],
    ['base64: url alphabet', '{"type":"data","data":"-_-_"}', 1007],
    ['base64: length not a multiple of 4', '{"type":"data","data":"QUE"}', 1007],
    ['base64: padding missing', '{"type":"data","data":"QQ"}', 1007],
    ['base64: padding in the middle', '{"type":"data","data":"QQ==QUFB"}', 1007],
    ['base64: three padding characters', '{"type":"data","data":"Q==="}', 1007],
    ['base64: non-canonical (unused bits set)', '{"type":"data","data":"QR=="}', 1007],
    ['base64: non-canonical, one pad', '{"type":"data","data":"QUF="}', 1007],
    ['ping data bad base64', '{"type":"ping","data":"!"}', 1007],
    ['invalid UTF-8', Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x7d]), 1007],
    ['decoded data over maxPayloadBytes', `{"type":"data","data":"${Buffer.alloc(1025).toString('base64')}"}`, 1009],
    ['message over maxJsonBytes', `{"type":"ping","x":"${'a'.repeat(2000)}"}`, 1009],
    ['nested deeper than maxJsonDepth', `{"type":"control","payload":${'{"a":'.repeat(40)}1${'}'.repeat(40)}}`, 1009],
  ];
  for (const [what, msg, code] of cases) {
    t.equal(decodeEnvelope('v1', typeof msg === 'string' ? text(msg) : msg, false, { maxPayloadBytes: 1024, maxJsonBytes: 1600 }), code, what);
  }
  t.equal(decodeEnvelope('v1', text('{"type":"ping"}'), true, limits), 1003, 'a binary message on v1');
  // The default maxJsonBytes fits a full-size data frame (base64 + fields) and no more than that.
  const full = text(`{"type":"data","data":"${Buffer.alloc(1024, 1).toString('base64')}"}`);
  t.equal(frame(t, decodeEnvelope('v1', full, false, limits), 'full').payload.length, 1024);
  t.equal(decodeEnvelope('v1', Buffer.alloc(Math.ceil(1024 * 4 / 3) + 4097, 0x20), false, limits), 1009, 'default maxJsonBytes');
  // Depth: 32 levels pass by default, 33 do not; maxJsonDepth moves it.
  const nest = (n: number) => text(`{"type":"control","payload":${'{"a":'.repeat(n - 1)}1${'}'.repeat(n - 1)}}`); // depth n
  t.type(decodeEnvelope('v1', nest(32), false, { maxPayloadBytes: 1 << 20 }), 'object', 'depth 32');
  t.equal(decodeEnvelope('v1', nest(33), false, { maxPayloadBytes: 1 << 20 }), 1009, 'depth 33');
  t.equal(decodeEnvelope('v1', nest(5), false, { maxPayloadBytes: 1 << 20, maxJsonDepth: 4 }), 1009, 'maxJsonDepth 4');
  // Very deep input is refused by size or depth without blowing the stack.
  const deep = text(`{"type":"control","payload":${'['.repeat(100_000)}${']'.repeat(100_000)}}`);
  t.equal(decodeEnvelope('v1', deep, false, { maxPayloadBytes: 1 << 20 }), 1009, 'deep array');
});

t.test('encode refuses what no decoder would accept', async (t) => {
  t.throws(() => encodeEnvelope('v2', 0, 0, Buffer.alloc(0)), RangeError);
  t.throws(() => encodeEnvelope('v1', 7, 0, Buffer.alloc(0)), RangeError);
  t.throws(() => encodeEnvelope('v2', 1, 0x10, Buffer.alloc(0)), RangeError);
  t.throws(() => encodeEnvelope('v1', EnvelopeType.Control, 0, text('[1]')), TypeError);
  t.throws(() => encodeEnvelope('v1', EnvelopeType.Control, 0, text('{x')), TypeError);
});

t.test('close payloads', async (t) => {
  t.equal(closePayload(1000, 'ok').toString('hex'), '03e86f6b');
  t.same(parseClosePayload(closePayload(4999, 'é')), { code: 4999, reason: 'é' });
  t.same(parseClosePayload(Buffer.alloc(0)), { code: 1005, reason: '' });
  t.equal(parseClosePayload(Buffer.from([3])), null);
  t.equal(parseClosePayload(Buffer.from([3, 0xe8, 0xc3, 0x28])), null);
  // A long reason is cut at a character boundary to fit a WebSocket close frame.
  const long = closePayload(1000, 'é'.repeat(100));
  t.equal(long.length, 2 + 122, 'cut to 122 bytes: 61 two-byte characters');
  t.equal(parseClosePayload(long)!.reason, 'é'.repeat(61));
  t.type(decodeEnvelope('v2', encodeEnvelope('v2', EnvelopeType.Close, 0, long).data as Buffer, true, limits), 'object');
});

t.test('backpressure signal', async (t) => {
  t.equal(backpressureSignal('v1', true).data, '{"type":"control","payload":{"backpressure":true},"flags":["backpressure"]}');
  t.equal(backpressureSignal('v1', false).data, '{"type":"control","payload":{"backpressure":false}}');
  const on = frame(t, decodeEnvelope('v2', backpressureSignal('v2', true).data as Buffer, true, limits), 'on');
  t.same([on.type, on.flags, parseControlPayload(on.payload)], [EnvelopeType.Control, 0x08, { backpressure: true }]);
  const off = frame(t, decodeEnvelope('v2', backpressureSignal('v2', false).data as Buffer, true, limits), 'off');
  t.same([off.type, off.flags, parseControlPayload(off.payload)], [EnvelopeType.Control, 0, { backpressure: false }]);
});

t.test('negotiation: offered x allowed', async (t) => {
  const table: Array<[string[], 'v1' | 'v2', string, 'v1' | 'v2']> = [
    [['sluice.v2'], 'v2', 'sluice.v2', 'v2'],
    [['sluice.v2'], 'v1', '', 'v1'],
    [['sluice.v1'], 'v2', 'sluice.v1', 'v1'],
    [['sluice.v1'], 'v1', 'sluice.v1', 'v1'],
    [['sluice.v2', 'sluice.v1'], 'v2', 'sluice.v2', 'v2'],
    [['sluice.v1', 'sluice.v2'], 'v2', 'sluice.v2', 'v2'],
    [['sluice.v2', 'sluice.v1'], 'v1', 'sluice.v1', 'v1'],
    [[], 'v2', '', 'v1'],
    [[], 'v1', '', 'v1'],
    [['chat', 'mqtt'], 'v2', '', 'v1'],
    [['sluice.v2, sluice.v1'], 'v1', 'sluice.v1', 'v1'],
    [[' sluice.v2 '], 'v2', 'sluice.v2', 'v2'],
    [['SLUICE.V2'], 'v2', '', 'v1'],
    [['sluice.v3'], 'v2', '', 'v1'],
  ];
  for (const [offered, allowed, protocol, version] of table) {
    t.same(negotiateEnvelope(offered, allowed), { protocol, version }, `${JSON.stringify(offered)} allowed ${allowed}`);
  }
});
