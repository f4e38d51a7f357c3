/**
 * Shared by the codec tests: the implementations to run every case against, and a way to
 * drive a FrameParser over a list of chunks the way the upstream leg does.
 */
import { createHash } from 'node:crypto';
import { nativeCodec, tsCodec, Desc, DESCRIPTOR_WORDS, type CodecImplementation, type FrameParser } from '../src/codec/index.js';
import { TsFrameParser } from '../src/codec/frame-parser.js';

/** Every loadable implementation: the TypeScript twins always, the addon when it loads. */
export const implementations: Array<[name: string, impl: CodecImplementation]> = [['ts', tsCodec]];
if (nativeCodec !== null) implementations.push(['native', nativeCodec]);

/**
 * The TypeScript parser with a FrameRunner (the dispatcher's parser when `create` is the
 * addon's) that runs after every frame (runMinFrames 1), so runs start and stop at every
 * kind of frame boundary the tests produce.
 */
function withRunner(base: CodecImplementation, create: CodecImplementation['createFrameRunner']): CodecImplementation {
  class RunnerParser extends TsFrameParser {
    constructor(role: 0 | 1, maxFrameBytes: number, maxMessageBytes: number, maxFragments: number, allowRsv1: boolean, maxFramesPerCall: number) {
      super(role, maxFrameBytes, maxMessageBytes, maxFragments, allowRsv1, maxFramesPerCall, create, 1);
    }
  }
  return { ...base, FrameParser: RunnerParser };
}

/**
 * Every parser there is: the implementations above, the TypeScript parser with the
 * twin's runner, and (when the addon loads) with the addon's runner: the dispatcher's.
 */
export const parserImplementations: Array<[name: string, impl: CodecImplementation]> = [
  ...implementations,
  ['ts+ts-runner', withRunner(tsCodec, tsCodec.createFrameRunner)],
];
if (nativeCodec !== null) parserImplementations.push(['ts+native-runner', withRunner(tsCodec, nativeCodec.createFrameRunner)]);

export interface ParsedFrame {
  info: number;
  payload: Buffer;
  maskKey: number;
}

export interface ParseRun {
  frames: ParsedFrame[];
  /** The first negative result, 0 when none. */
  result: number;
  errno: number;
  errorOffset: number;
  /** Index of the chunk that failed, -1 when none. */
  errorChunk: number;
  /** Frames described by the failing call before its error. */
  countAtError: number;
  calls: number;
}

/**
 * Feed `chunks` (copied first: parsing unmasks in place) to `parser`, following `resume`,
 * and collect every frame with a copy of its payload.
 */
export function parseChunks(parser: FrameParser, chunks: Uint8Array[]): ParseRun {
  const run: ParseRun = { frames: [], result: 0, errno: 0, errorOffset: 0, errorChunk: -1, countAtError: 0, calls: 0 };
  for (let c = 0; c < chunks.length; c++) {
    const chunk = Buffer.from(chunks[c]);
    let offset = 0;
    for (;;) {
      const r = parser.parse(chunk, offset);
      run.calls++;
      const count = parser.state[0];
      const d = parser.descriptors;
      for (let i = 0; i < count; i++) {
        const w = i * DESCRIPTOR_WORDS;
        const info = d[w];
        const source = (info & Desc.CARRY) !== 0 ? parser.carry : chunk;
        run.frames.push({ info, payload: Buffer.from(source.subarray(d[w + 1], d[w + 1] + d[w + 2])), maskKey: d[w + 3] });
      }
      if (r < 0) {
        run.result = r;
        run.errno = parser.state[2];
        run.errorOffset = parser.state[3];
        run.errorChunk = c;
        run.countAtError = count;
        return run;
      }
      if (r !== count) throw new Error(`parse returned ${r} but state.count is ${count}`);
      if (parser.state[1] < 0) break;
      if (parser.state[1] <= offset && count === 0) throw new Error('resume did not advance');
      offset = parser.state[1];
    }
  }
  return run;
}

/** A compact, comparable summary of frames: info (optionally without CARRY), length, payload digest. */
export function summary(frames: ParsedFrame[], keepCarry = false): Array<[number, number, string]> {
  return frames.map((f) => [
    keepCarry ? f.info : f.info & ~Desc.CARRY,
    f.payload.length,
    createHash('sha1').update(f.payload).digest('hex').slice(0, 12),
  ]);
}

/** Deterministic PRNG (mulberry32) so a failing seed can be replayed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Cut `stream` into chunks at the given sizes (the last one takes the rest). */
export function cut(stream: Uint8Array, nextSize: () => number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < stream.length;) {
    const n = Math.max(1, Math.min(stream.length - at, nextSize()));
    chunks.push(stream.subarray(at, at + n));
    at += n;
  }
  return chunks;
}
