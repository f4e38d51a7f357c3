/**
 * FrameRunner (types.ts), both implementations: what a run takes and where it stops, the
 * argument checks, and that detaching the runner's ArrayBuffer cannot pull memory from
 * under the native code (it keeps its own).
 */
import t from 'tap';
import { DESCRIPTOR_WORDS, Desc, Opcode, RunFlag, tsCodec } from '../src/codec/index.js';
import { implementations } from './codec-impls.js';

/** Unmasked (server → client) frames: [opcode, payload length, fin]. */
function wire(frames: Array<[number, number, boolean?]>): Buffer {
  const enc = new tsCodec.FrameEncoder(1, 256);
  for (const [op, n, fin] of frames) enc.frame(op, Buffer.alloc(n, 7), fin ?? true);
  return enc.take()!;
}

for (const [name, impl] of implementations) {
  t.test(`${name}: a run takes common frames and stops before the first other one`, async (t) => {
    const r = impl.createFrameRunner(16);
    const chunk = wire([[Opcode.Binary, 5], [Opcode.Binary, 5], [Opcode.Ping, 0], [Opcode.Text, 300], [Opcode.Binary, 70_000], [Opcode.Binary, 1]]);
    r.args.set([0, 0, 16, 0, 0xffff]);
    const n = r.run(chunk);
    t.equal(n, 4, 'two binary, a ping and a 16-bit-length text; the 64-bit length stops it');
    t.equal(r.args[1], 4, 'count written back');
    t.equal(r.args[0], 2 + 5 + 2 + 5 + 2 + 4 + 300, 'pos written back: where the 64 KiB frame starts');
    const d = r.descriptors;
    t.same([...d.subarray(0, 4 * DESCRIPTOR_WORDS)], [
      Opcode.Binary | Desc.FIN, 2, 5, 0,
      Opcode.Binary | Desc.FIN, 9, 5, 0,
      Opcode.Ping | Desc.FIN, 16, 0, 0,
      Opcode.Text | Desc.FIN, 20, 300, 0,
    ]);
    // The limits, the role and the message state end a run too.
    r.args.set([0, 0, 16, 0, 4]);
    t.equal(r.run(chunk), 0, 'maxLength 4: the 5-byte frame is left to the parser');
    r.args.set([0, 0, 16, RunFlag.Server, 0xffff]);
    t.equal(r.run(chunk), 0, 'server role: unmasked frames are left to the parser');
    r.args.set([0, 0, 16, RunFlag.InMessage, 0xffff]);
    t.equal(r.run(wire([[Opcode.Ping, 1], [Opcode.Binary, 1]])), 1, 'inside a message: the ping, not the binary frame');
    r.args.set([0, 0, 16, 0, -1]);
    t.equal(r.run(chunk), 0, 'maxLength -1 takes nothing');
    r.args.set([0, 1, 2, 0, 0xffff]);
    t.equal(r.run(chunk), 2, 'maxFrames 2 with one frame already described: one more');
    r.args.set([0, 0, 16, 0, 0xffff]);
    t.equal(r.run(wire([[Opcode.Binary, 5]]).subarray(0, 6)), 0, 'a frame cut by the chunk end is left to the parser');
    r.args.set([0, 0, 16, 0, 0xffff]);
    t.equal(r.run(wire([[Opcode.Binary, 3, false]])), 0, 'a fragment is left to the parser');
  });

  t.test(`${name}: bad arguments throw, and nothing is written`, async (t) => {
    t.throws(() => impl.createFrameRunner(0), RangeError);
    t.throws(() => impl.createFrameRunner(1.5), /maxFrames/);
    const r = impl.createFrameRunner(4);
    const chunk = wire([[Opcode.Binary, 1]]);
    const bad: Array<[string, number[]]> = [
      ['pos past the chunk', [chunk.length + 1, 0, 4, 0, 125]],
      ['negative pos', [-1, 0, 4, 0, 125]],
      ['count over maxFrames', [0, 5, 4, 0, 125]],
      ['maxFrames over the runner\'s', [0, 0, 5, 0, 125]],
      ['unknown flags', [0, 0, 4, 4, 125]],
      ['maxLength over 65535', [0, 0, 4, 0, 65536]],
    ];
    for (const [what, args] of bad) {
      r.args.set(args);
      r.descriptors.fill(0xdead);
      t.throws(() => r.run(chunk), RangeError, what);
      t.equal(r.descriptors[0], 0xdead, `${what}: no descriptor written`);
    }
    r.args.set([0, 0, 4, 0, 125]);
    t.throws(() => (r.run as (c: unknown) => number)('not bytes'), TypeError);
  });

  if (name !== 'native') continue;
  // The native runner's descriptors view memory it owns and keeps alive itself (an
  // external ArrayBuffer). Transferring that buffer must not leave run() writing to memory
  // someone else frees: V8 refuses to transfer it, or the runner keeps writing its own.
  t.test(`${name}: transferring the descriptor buffer never takes the runner's memory`, async (t) => {
    const r = impl.createFrameRunner(8);
    const chunk = wire([[Opcode.Binary, 3], [Opcode.Binary, 3]]);
    const buffer = r.descriptors.buffer as ArrayBuffer;
    let outcome = 'refused';
    try {
      structuredClone(buffer, { transfer: [buffer] });
      outcome = buffer.byteLength === 0 ? 'detached' : 'copied (the original stays attached)';
    } catch (err) {
      t.type(err, Error, `the transfer is refused: ${(err as Error).message}`);
    }
    t.comment(`transfer: ${outcome}`);
    r.args.set([0, 0, 8, 0, 125]);
    t.equal(r.run(chunk), 2, 'run still describes into its own memory, and the process lives');
    if (outcome !== 'detached') t.equal(r.descriptors[2], 3, 'and JS still reads the descriptors');
    else t.equal(r.descriptors.byteLength, 0, 'JS lost the view, not the runner its memory');
  });
}
