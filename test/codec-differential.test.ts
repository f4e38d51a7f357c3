/**
 * Differential tests: seeded random streams of frames, cut at random chunk boundaries,
 * parse to the same (info, payload) sequence as the whole stream at once, and to the same
 * sequence (CARRY bits and call structure included) in every implementation.
 */
import t from 'tap';
import { Opcode, tsCodec, type CodecImplementation } from '../src/codec/index.js';
import { cut, parserImplementations, parseChunks, prng, summary, type ParseRun } from './codec-impls.js';

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

// SLUICE_DIFFERENTIAL_SCALE: a fraction of the random rounds (scripts/cross-arm64.sh runs a
// quarter under qemu, ~50x slower; every npm test runs them all on the host).
const SCALE = Math.min(1, Math.max(0.05, Number(process.env.SLUICE_DIFFERENTIAL_SCALE ?? 1) || 1));
const SEEDS = Math.max(2, Math.round(12 * SCALE));

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
      const runs: Array<[string, ParseRun]> = parserImplementations.map(([name, impl]) => [name, parseChunks(newParser(impl, server, perCall), chunks)]);
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

t.test('parsers agree on garbage: errno, errorOffset, frames before the error', async (t) => {
  const rnd = prng(424242);
  for (let round = 0; round < Math.round(400 * SCALE); round++) {
    // Start from a valid stream and corrupt a few bytes, so errors come after valid frames.
    const server = round % 2 === 0;
    const stream = randomStream(rnd, server, 600);
    const wire = Buffer.from(stream.wire);
    const flips = 1 + Math.floor(rnd() * 3);
    for (let i = 0; i < flips; i++) wire[Math.floor(rnd() * wire.length)] = (rnd() * 256) | 0;
    const chunks = cut(wire, () => 1 + Math.floor(rnd() * 64));
    const results = parserImplementations.map(([name, impl]) => {
      const run = parseChunks(new impl.FrameParser(server ? 1 : 0, 300, 2000, 4, rnd() < 0.5, 1 + (round % 5)), chunks);
      return [name, [run.result, run.errno, run.errorOffset, run.errorChunk, run.countAtError, run.calls, summary(run.frames, true)]] as const;
    });
    t.ok(results.every(([, r]) => (r[0] as number) <= 0), `round ${round}: returns, never throws`);
    for (let i = 1; i < results.length; i++) {
      t.same(results[i][1], results[0][1], `round ${round}: ${results[i][0]} = ${results[0][0]}`);
    }
  }
});

/**
 * Runs of identical frames (what the fast path and the addon's runner take, the
 * same-header loop included) broken by frames they must leave to the general loop:
 * fragments, 64-bit lengths, sizes at the limits, wrong masking. Limits sit at the
 * boundaries, so some streams fail part-way: every parser must fail the same way.
 */
t.test('parsers agree on runs of identical frames, at the limits', async (t) => {
  const rnd = prng(31337);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
  const sizes = [0, 1, 2, 7, 8, 9, 100, 124, 125, 126, 127, 200, 1000, 4096, 65535, 65536] as const;
  let errors = 0;
  let clean = 0;
  for (let round = 0; round < Math.round(120 * SCALE); round++) {
    const server = round % 2 === 1;
    const enc = new tsCodec.FrameEncoder(server ? 0 : 1, 4096);
    let inMessage = false;
    for (let r = 0; r < 12; r++) {
      const kind = rnd();
      const size = pick(sizes);
      const payload = Buffer.alloc(size, r + 1);
      // Long runs of small frames; short ones of big frames (the codec tests also run
      // under qemu for the arm64 prebuild, where every megabyte counts).
      const times = 1 + Math.floor(rnd() * (size >= 4096 ? 3 : 40));
      for (let i = 0; i < times; i++) {
        if (kind < 0.2) enc.frame(pick([Opcode.Ping, Opcode.Pong, Opcode.Close]), payload.subarray(0, Math.min(size, 125)));
        else if (kind < 0.3) {
          // A fragment: starts a message or continues the open one.
          enc.frame(inMessage ? Opcode.Continuation : Opcode.Binary, payload, false);
          inMessage = true;
        } else if (inMessage) {
          enc.frame(Opcode.Continuation, payload, true);
          inMessage = false;
        } else enc.frame(pick([Opcode.Text, Opcode.Binary]), payload);
      }
    }
    if (inMessage) enc.frame(Opcode.Continuation, Buffer.alloc(3), true);
    let wire = enc.take()!;
    if (round % 10 === 9) {
      // A frame of the other role's masking in the middle.
      const other = new tsCodec.FrameEncoder(server ? 1 : 0, 64);
      other.frame(Opcode.Binary, Buffer.alloc(5));
      const at = Math.floor(rnd() * wire.length);
      wire = Buffer.concat([wire.subarray(0, at), other.take()!, wire.subarray(at)]);
    }
    // Half the streams under roomy limits (they should pass unless masking is wrong), half
    // at the boundaries of the sizes above.
    const limits = rnd() < 0.5
      ? [1 << 20, 1 << 24, 1024] as const
      : [pick([125, 126, 1000, 65535, 65536, 1 << 20]), pick([100, 125, 70_000, 1 << 24]), pick([0, 1, 3, 1024])] as const;
    const perCall = pick([1, 3, 7, 1024]);
    const cuttings: Uint8Array[][] = [[wire], cut(wire, () => 1 + Math.floor(rnd() * 3000)), cut(wire, () => 1 + Math.floor(rnd() * 40))];
    for (const chunks of cuttings) {
      const results = parserImplementations.map(([name, impl]) => {
        const run = parseChunks(new impl.FrameParser(server ? 1 : 0, limits[0], limits[1], limits[2], false, perCall), chunks);
        return [name, [run.result, run.errno, run.errorOffset, run.errorChunk, run.countAtError, run.calls, summary(run.frames, true),
          run.frames.map((f) => f.maskKey)]] as const;
      });
      if ((results[0][1][0] as number) < 0) errors++;
      else clean++;
      for (let i = 1; i < results.length; i++) {
        if (JSON.stringify(results[i][1]) !== JSON.stringify(results[0][1])) {
          t.same(results[i][1], results[0][1], `round ${round} (${server ? 'server' : 'client'}, limits ${limits.join('/')}, ${perCall}/call): ${results[i][0]} = ${results[0][0]}`);
        }
      }
    }
  }
  // Both outcomes must be exercised, or the limits above are not at the boundaries.
  t.ok(errors > 40 && clean > 40, `streams that fail (${errors}) and streams that pass (${clean})`);
  t.pass(`${parserImplementations.map(([n]) => n).join(', ')} agree on 360 runs-heavy streams`);
});
