/**
 * Interop with the `ws` package: frames from ws's Sender parse with every implementation,
 * and frames from our encoder are accepted by ws's Receiver with the same messages.
 */
import t from 'tap';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Desc, Opcode } from '../src/codec/index.js';
import { cut, implementations, parseChunks, parserImplementations, prng } from './codec-impls.js';

const require = createRequire(import.meta.url);
interface FrameOptions { fin: boolean; opcode: number; mask: boolean; readOnly: boolean; rsv1: boolean }
// ws's package exports hide lib/, so lib/sender.js and lib/receiver.js are reached by path.
const wsLib = path.join(path.dirname(require.resolve('ws')), 'lib');
const Sender = require(path.join(wsLib, 'sender.js')) as { frame(data: Buffer, options: FrameOptions): Buffer[] };
const Receiver = require(path.join(wsLib, 'receiver.js')) as new (options: { isServer: boolean; maxPayload?: number }) => import('node:stream').Writable;

/** A message sequence with fragments, interleaved control frames and a close at the end. */
function script(rnd: () => number): Array<{ opcode: number; payload: Buffer; fin: boolean }> {
  const frames: Array<{ opcode: number; payload: Buffer; fin: boolean }> = [];
  const bytes = (n: number, text: boolean) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = text ? 0x61 + ((rnd() * 26) | 0) : (rnd() * 256) | 0;
    return b;
  };
  for (let m = 0; m < 40; m++) {
    const text = rnd() < 0.5;
    const parts = 1 + Math.floor(rnd() * 3);
    for (let p = 0; p < parts; p++) {
      const size = [0, 5, 125, 126, 1000, 65535, 65536, 70000][Math.floor(rnd() * 8)];
      frames.push({ opcode: p === 0 ? (text ? Opcode.Text : Opcode.Binary) : Opcode.Continuation, payload: bytes(size, text), fin: p === parts - 1 });
      if (rnd() < 0.3) frames.push({ opcode: rnd() < 0.5 ? Opcode.Ping : Opcode.Pong, payload: bytes(Math.floor(rnd() * 126), false), fin: true });
    }
  }
  frames.push({ opcode: Opcode.Close, payload: Buffer.concat([Buffer.from([0x0f, 0xa0]), Buffer.from('bye')]), fin: true });
  return frames;
}

for (const masked of [false, true]) {
  t.test(`ws Sender (${masked ? 'masked, client' : 'unmasked, server'} frames) → our parsers`, async (t) => {
    const rnd = prng(masked ? 11 : 12);
    const frames = script(rnd);
    const wire = Buffer.concat(frames.flatMap((f) =>
      Sender.frame(Buffer.from(f.payload), { fin: f.fin, opcode: f.opcode, mask: masked, readOnly: true, rsv1: false })));
    const expected = frames.map((f) => [f.opcode | (f.fin ? Desc.FIN : 0) | (masked ? Desc.MASKED : 0), f.payload.toString('hex')]);
    for (const [name, impl] of parserImplementations) {
      for (const [how, chunks] of [['whole', [wire]], ['chunked', cut(wire, () => 1 + Math.floor(rnd() * 5000))]] as const) {
        const run = parseChunks(new impl.FrameParser(masked ? 1 : 0, 1 << 20, 1 << 20, 1024, false, 1024), chunks as Uint8Array[]);
        t.equal(run.result, 0, `${name} ${how}: no error`);
        t.same(run.frames.map((f) => [f.info & ~Desc.CARRY, f.payload.toString('hex')]), expected, `${name} ${how}: same frames as ws sent`);
      }
    }
  });
}

for (const [name, impl] of implementations) {
  for (const role of ['client', 'server'] as const) {
    t.test(`${name} ${role}-role encoder → ws Receiver (isServer: ${role === 'client'})`, async (t) => {
      const rnd = prng(role === 'client' ? 21 : 22);
      const frames = script(rnd);
      const enc = new impl.FrameEncoder(role === 'client' ? 0 : 1, 1024);
      for (const f of frames) enc.frame(f.opcode, f.payload, f.fin);
      const wire = enc.take()!;

      // Expected messages: fragments joined, control frames in wire order.
      const expected: string[] = [];
      let parts: Buffer[] = [];
      let type = 0;
      for (const f of frames) {
        if (f.opcode >= 0x8) {
          expected.push(f.opcode === Opcode.Close ? `close:4000:bye` : `${f.opcode === Opcode.Ping ? 'ping' : 'pong'}:${f.payload.toString('hex')}`);
          continue;
        }
        if (f.opcode !== Opcode.Continuation) type = f.opcode;
        parts.push(f.payload);
        if (f.fin) {
          expected.push(`${type === Opcode.Text ? 'text' : 'binary'}:${Buffer.concat(parts).toString('hex')}`);
          parts = [];
        }
      }

      const receiver = new Receiver({ isServer: role === 'client', maxPayload: 0 });
      const got: string[] = [];
      const errors: Error[] = [];
      receiver.on('message', (data: Buffer, isBinary: boolean) => got.push(`${isBinary ? 'binary' : 'text'}:${data.toString('hex')}`));
      receiver.on('ping', (data: Buffer) => got.push(`ping:${data.toString('hex')}`));
      receiver.on('pong', (data: Buffer) => got.push(`pong:${data.toString('hex')}`));
      receiver.on('conclude', (code: number, reason: Buffer) => got.push(`close:${code}:${reason.toString()}`));
      receiver.on('error', (err: Error) => errors.push(err));
      for (const chunk of cut(wire, () => 1 + Math.floor(rnd() * 8000))) {
        await new Promise<void>((resolve, reject) => receiver.write(Buffer.from(chunk), (err) => (err ? reject(err) : resolve())));
      }
      await new Promise((resolve) => setImmediate(resolve));
      t.same(errors.map((e) => e.message), [], 'ws accepts every frame');
      t.same(got, expected, 'ws sees the same messages, pings, pongs and close');
    });
  }
}
