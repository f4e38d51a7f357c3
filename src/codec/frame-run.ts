/**
 * The TypeScript twin of native/frame_run.cc: the frame parser's fast path (FrameRunner
 * in types.ts). It describes the run of common whole frames from `pos` on and stops
 * before the first frame that is not one, leaving everything else to the parser's
 * general loop.
 *
 * The dispatcher's parser does not use this twin (its own loop is as fast in JS; the
 * addon's runner is what pays off); it exists so the contract has a twin, for the
 * differential tests, and for SLUICE_NO_NATIVE runs of code that uses a runner directly.
 */
import { DESCRIPTOR_WORDS, Desc, RUN_ARGS, RunFlag, type FrameRunner } from './types.js';

/** A FrameRunner over JS memory. */
export function createFrameRunner(maxFrames: number): FrameRunner {
  if (!Number.isInteger(maxFrames) || maxFrames < 1 || maxFrames > 1 << 20) {
    throw new RangeError('createFrameRunner: maxFrames must be an integer in 1..1048576');
  }
  const buffer = new ArrayBuffer((maxFrames * DESCRIPTOR_WORDS + RUN_ARGS) * 4);
  const descriptors = new Uint32Array(buffer, 0, maxFrames * DESCRIPTOR_WORDS);
  const args = new Int32Array(buffer, maxFrames * DESCRIPTOR_WORDS * 4, RUN_ARGS);
  args[2] = maxFrames;
  args[4] = -1;
  return { descriptors, args, run: (chunk: Uint8Array) => frameRun(chunk, descriptors, args) };
}

/**
 * The longest payload a run may take under these limits (at most 65535), or -1 when no
 * run is possible (maxFragments 0 refuses every data frame).
 */
export function runMaxLength(maxFrameBytes: number, maxMessageBytes: number, maxFragments: number): number {
  if (!(maxFragments >= 1)) return -1;
  return Math.min(0xffff, maxFrameBytes, maxMessageBytes);
}

/** FrameRunner.run over the given descriptors and args. */
export function frameRun(chunk: Uint8Array, descriptors: Uint32Array, args: Int32Array): number {
  if (!ArrayBuffer.isView(chunk)) throw new TypeError('run: chunk must be a Uint8Array');
  let pos = args[0];
  let count = args[1];
  const maxFrames = args[2];
  const flags = args[3];
  const maxLength = args[4];
  if (chunk.length > 0x7fffffff || pos < 0 || pos > chunk.length || count < 0 || maxFrames < count ||
    maxFrames * DESCRIPTOR_WORDS > descriptors.length || flags < 0 || flags > 3 || maxLength < -1 || maxLength > 0xffff) {
    throw new RangeError('run: args out of range (chunk under 2 GiB, pos in 0..chunk.length, 0 <= count <= maxFrames <= ' +
      "the runner's maxFrames, flags 0..3, maxLength -1..65535)");
  }
  if (maxLength < 0) return count;
  const server = (flags & RunFlag.Server) !== 0;
  // Inside a fragmented message only control frames may be taken.
  const dataOk = (flags & RunFlag.InMessage) === 0;
  const keyBytes = server ? 4 : 0;
  const maskBit = server ? 0x80 : 0;
  const end = chunk.length;
  const d = descriptors;
  while (count < maxFrames && end - pos >= 2) {
    const b0 = chunk[pos];
    const b1 = chunk[pos + 1] ^ maskBit; // > 127 when the masking is wrong for the role
    const data = b0 === 0x81 || b0 === 0x82;
    if (!(data ? dataOk : b0 >= 0x88 && b0 <= 0x8a)) break;
    let n: number;
    let body: number;
    if (b1 < 126) {
      n = b1;
      body = pos + 2 + keyBytes;
    } else if (b1 === 126 && data) {
      if (end - pos < 4) break;
      n = (chunk[pos + 2] << 8) | chunk[pos + 3];
      body = pos + 4 + keyBytes;
    } else {
      break;
    }
    if (n > maxLength || body > end || n > end - body) break;
    const w = count * DESCRIPTOR_WORDS;
    d[w] = (b0 & 0x0f) | Desc.FIN | (server ? Desc.MASKED : 0);
    d[w + 1] = body;
    d[w + 2] = n;
    if (server) {
      const k0 = chunk[body - 4];
      const k1 = chunk[body - 3];
      const k2 = chunk[body - 2];
      const k3 = chunk[body - 1];
      d[w + 3] = ((k0 << 24) | (k1 << 16) | (k2 << 8) | k3) >>> 0;
      for (let i = 0; i < n; i += 4) {
        chunk[body + i] ^= k0;
        if (i + 1 < n) chunk[body + i + 1] ^= k1;
        if (i + 2 < n) chunk[body + i + 2] ^= k2;
        if (i + 3 < n) chunk[body + i + 3] ^= k3;
      }
    } else {
      d[w + 3] = 0;
    }
    count++;
    pos = body + n;
  }
  args[0] = pos;
  args[1] = count;
  return count;
}
