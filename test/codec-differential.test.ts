/**
 * Differential tests: seeded random streams of frames, cut at random chunk boundaries,
 * parse to the same (info, payload) sequence as the whole stream at once, and to the same
 * sequence (CARRY bits and call structure included) in every implementation.
 */
import t from 'tap';
import { Opcode, tsCodec, type CodecImplementation } from '../src/codec/index.js';
import { cut, implementations, parseChunks, prng, summary, type ParseRun } from './codec-impls.js';

interface Stream {
  wire: Buffer;
  expected: Array<[number, number, Buffer]>;
}

/** A valid stream: data messages (some fragmented), control frames interleaved, sizes 0..70000. */
function randomStream(rnd: () => number, masked: boolean, targetBytes: number): Stream {
  const enc = new tsCodec.FrameEncoder(masked ? 0 : 1, 4096);
  const expected: Array<[number, number, Buffer]> = [];
  const sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000];
  let inMessage = false;
  let total = 0;
  while (total < targetBytes || inMessage) {
    const r = rnd();
    let opcode: number;
    let fin = true;
    let size: number;
    if (r < 0.25) {
      opcode = [Opcode.Ping, Opcode.Pong, Opcode.Close][Math.floor(rnd() * 3)];
      size = Math.floor(rnd() * 126);
    } else {
      opcode = inMessage ? Opcode.Continuation : rnd() < 0.5 ? Opcode.Text : Opcode.Binary;
      fin = total >= targetBytes ? true : rnd() < 0.6;
      const s = rnd();
      size = s < 0.7 ? Math.floor(rnd() * 200) : s < 0.9 ? Math.floor(rnd() * 70001) : sizes[Math.floor(rnd() * sizes.length)];
      inMessage = !fin;
    }
    const payload = Buffer.allocUnsafe(size);
    for (let i = 0; i < size; i++) payload[i] = (rnd() * 256) | 0;
    enc.frame(opcode, payload, fin);
    expected.push([opcode | (fin ? 0x10 : 0) | (masked ? 0x100 : 0), size, payload]);
    total += size + 2;
  }
  return { wire: enc.take()!, expected };
}

function newParser(impl: CodecImplementation, server: boolean, perCall: number) {
  return new impl.FrameParser(server ? 1 : 0, 1 << 20, 1 << 24, 1 << 20, false, perCall);
}

const SEEDS = 12;

for (let seed = 1; seed <= SEEDS; seed++) {
  t.test(`seed ${seed}`, async (t) => {
    const rnd = prng(seed * 7919);
    const server = seed % 2 === 0;
    const stream = randomStream(rnd, server, seed % 3 === 0 ? 30_000 : 400_000);
    const perCall = seed % 4 === 1 ? 3 : 1024;
    const expectedSummary = summary(stream.expected.map(([info, , payload]) => ({ info, payload, maskKey: 0 })));
    const cuttings: Array<[string, Uint8Array[]]> = [
      ['whole', [stream.wire]],
      ['random 1..3000', cut(stream.wire, () => 1 + Math.floor(rnd() * 3000))],
      ['random 1..100000', cut(stream.wire, () => 1 + Math.floor(rnd() * 100_000))],
      ['mixed tiny', cut(stream.wire, () => (rnd() < 0.5 ? 1 + Math.floor(rnd() * 15) : 1 + Math.floor(rnd() * 20_000)))],
    ];
    if (stream.wire.length <= 40_000) cuttings.push(['1-byte', cut(stream.wire, () => 1)]);

    for (const [cutName, chunks] of cuttings) {
      const runs: Array<[string, ParseRun]> = implementations.map(([name, impl]) => [name, parseChunks(newParser(impl, server, perCall), chunks)]);
      for (const [name, run] of runs) {
        t.equal(run.result, 0, `${name}, ${cutName}: no error`);
        t.same(summary(run.frames), expectedSummary, `${name}, ${cutName}: frames and payloads as sent`);
      }
      for (let i = 1; i < runs.length; i++) {
        t.same(summary(runs[i][1].frames, true), summary(runs[0][1].frames, true), `${cutName}: ${runs[i][0]} = ${runs[0][0]} (CARRY bits included)`);
        t.same(runs[i][1].frames.map((f) => f.maskKey), runs[0][1].frames.map((f) => f.maskKey), `${cutName}: same mask keys`);
        t.equal(runs[i][1].calls, runs[0][1].calls, `${cutName}: same number of calls (same resume points)`);
      }
    }
  });
}

t.test('implementations agree on garbage: errno, errorOffset, frames before the error', async (t) => {
  const rnd = prng(424242);
  for (let round = 0; round < 400; round++) {
    // Start from a valid stream and corrupt a few bytes, so errors come after valid frames.
    const server = round % 2 === 0;
    const stream = randomStream(rnd, server, 600);
    const wire = Buffer.from(stream.wire);
    const flips = 1 + Math.floor(rnd() * 3);
    for (let i = 0; i < flips; i++) wire[Math.floor(rnd() * wire.length)] = (rnd() * 256) | 0;
    const chunks = cut(wire, () => 1 + Math.floor(rnd() * 64));
    const results = implementations.map(([name, impl]) => {
      const run = parseChunks(new impl.FrameParser(server ? 1 : 0, 300, 2000, 4, rnd() < 0.5, 1 + (round % 5)), chunks);
      return [name, [run.result, run.errno, run.errorOffset, run.errorChunk, run.countAtError, run.calls, summary(run.frames, true)]] as const;
    });
    t.ok(results.every(([, r]) => (r[0] as number) <= 0), `round ${round}: returns, never throws`);
    for (let i = 1; i < results.length; i++) {
      t.same(results[i][1], results[0][1], `round ${round}: ${results[i][0]} = ${results[0][0]}`);
    }
  }
});
