/**
 * The door of the codec: the only module that chooses between the native addon and the
 * TypeScript twins. Everything sluice needs from the codec comes from here.
 *
 * Per-call choices are made by payload size with cut-offs measured by bench/codec.js (see
 * each constant). Stateful objects (parsers, encoders, the pool) cannot switch per call,
 * so they take the implementation that wins where it matters, as measured.
 */
import { SluiceError } from '../errors.js';
import { nativeCodec, nativeLoadError, nativePath } from './native.js';
import { tsCodec } from './twin.js';
import { TsFrameEncoder } from './frame-encoder.js';
import { TsFrameParser } from './frame-parser.js';
import { envelopeDecode as tsEnvelopeDecode } from './envelope.js';
import { WORD_LOOP_MIN_BYTES } from './mask.js';
import {
  CODEC_ERRORS, ENVELOPE_HEADER_BYTES,
  type CodecImplementation, type FrameEncoder, type FrameParser, type FrameParserOptions, type PoolStats,
} from './types.js';

export * from './types.js';
export { tsCodec } from './twin.js';
export { nativeCodec } from './native.js';

/** True when the native addon is loaded and used. */
export const native: boolean = nativeCodec !== null;

/** What the codec runs on: the addon's path, or why the TypeScript codec is in use. */
export const codecInfo: { readonly native: boolean; readonly path?: string; readonly reason?: string } =
  nativeCodec !== null ? { native: true, path: nativePath } : { native: false, reason: nativeLoadError };

// ---- measured cut-offs ---------------------------------------------------------------
// Chosen with bench/codec.js on the project machine (2-core AMD EPYC, Node 20.20, shared and
// noisy: cpu share 0.6-1.0, so figures are best of 2-3 interleaved rounds, each case in its
// own process). Re-run `node bench/codec.js --only=mask,unmask --sizes=...` after changing
// either implementation and move the constants with the figures.

/**
 * mask (source -> output): native from this many bytes, i.e. wherever the twin would leave
 * its inlined byte loop. The call into the addon costs ~75 ns; the addon's work then is
 * near nothing up to a few hundred bytes. Sweep (M ops/s, ts vs native, one run):
 * 64 B 12.6/13.2, 96 B 12.1/13.2, 125 B 11.6/12.2, 192 B 10.8/13.1, 256 B 10.1/12.4,
 * 320 B 9.2/13.0. (Before native/mask.cc broadcast its key as one word, every call paid a
 * store-forwarding stall and the cut-off sat at 320 B.)
 */
export const MASK_NATIVE_MIN_BYTES = 64;

/**
 * unmask (in place): native from this many bytes. The twin's in-place loop is cheaper than
 * its copying one, so it holds out longer: 125 B 22.2/19.3, 192 B 20.1/20.7 (a tie),
 * 256 B 17.8/20.2, 320 B 15.5/19.9.
 */
export const UNMASK_NATIVE_MIN_BYTES = 192;

/**
 * Frame parser: the twin's state machine, handing runs of small frames to the addon's
 * FrameRunner once the rest of a chunk holds at least this many frames of the size just
 * parsed. One frame per call stays in JS (the call into the addon costs ~50-90 ns, the
 * twin parses a frame in ~15); a 64 KiB read of 125 B frames goes native after the first.
 * Sweep (chunks of k equal frames, ns per frame, twin alone vs twin + runner called after
 * the first frame): 16 B, 5 frames left 8.97 vs 9.67; 8 left 8.67 vs 7.02; 4 KiB, 5 left
 * 10.05 vs 10.53; 8 left 9.70 vs 7.69. Break-even is 6-7 frames; 8 keeps a margin.
 */
export const PARSER_RUN_MIN_FRAMES = 8;

/**
 * isUtf8: the twin at every size. Both are simdutf inside; Node's binding is the cheaper
 * call. (Not in bench/codec.js's table; set to a size if a measurement shows otherwise.)
 */
export const UTF8_NATIVE_MIN_BYTES = Number.POSITIVE_INFINITY;
/** envelopeEncodeInto: the twin at every size (header stores + one TypedArray.set, i.e. memcpy). */
export const ENVELOPE_ENCODE_NATIVE_MIN_BYTES = Number.POSITIVE_INFINITY;
/**
 * envelopeDecodeRun: the twin at every size: it reads 8 bytes per envelope whatever the
 * payload, and v2-decode measured the twin 7-12x faster than the addon at every size
 * (16 B 157 vs 14 M/s, 1 MiB 55 vs 9 M/s) because the call costs more than the work.
 */
export const ENVELOPE_RUN_NATIVE_MIN_BYTES = Number.POSITIVE_INFINITY;

const ts = tsCodec;
const nat: CodecImplementation | null = nativeCodec;
const tsMask = ts.mask;
const tsUnmask = ts.unmask;
const natMask = nat !== null ? nat.mask : tsMask;
const natUnmask = nat !== null ? nat.unmask : tsUnmask;
const natIsUtf8 = nat !== null ? nat.isUtf8 : ts.isUtf8;
const natEnvelopeEncodeInto = nat !== null ? nat.envelopeEncodeInto : ts.envelopeEncodeInto;
const natEnvelopeDecodeRun = nat !== null ? nat.envelopeDecodeRun : ts.envelopeDecodeRun;

/**
 * XOR `length` bytes of `source` with the 4-byte `key` into `output` at `offset`
 * (RFC 6455 §5.3; the signature of ws's bufferutil).
 */
export function mask(source: Uint8Array, key: Uint8Array, output: Uint8Array, offset: number, length: number): void {
  // The twin's byte loop, inlined: at 16 B a second call measured 0.73 x the twin.
  if (length < WORD_LOOP_MIN_BYTES) {
    for (let i = 0; i < length; i++) output[offset + i] = source[i] ^ key[i & 3];
  } else if (length >= MASK_NATIVE_MIN_BYTES) {
    natMask(source, key, output, offset, length);
  } else {
    tsMask(source, key, output, offset, length);
  }
}

/** XOR `buffer` in place with the 4-byte `key`. */
export function unmask(buffer: Uint8Array, key: Uint8Array): void {
  const n = buffer.length;
  if (n < WORD_LOOP_MIN_BYTES) {
    for (let i = 0; i < n; i++) buffer[i] ^= key[i & 3];
  } else if (n >= UNMASK_NATIVE_MIN_BYTES) {
    natUnmask(buffer, key);
  } else {
    tsUnmask(buffer, key);
  }
}

/** True when `buf` is valid UTF-8 (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). */
export function isUtf8(buf: Uint8Array): boolean {
  return buf.length >= UTF8_NATIVE_MIN_BYTES ? natIsUtf8(buf) : ts.isUtf8(buf);
}

/**
 * A frame parser for one connection (see FrameParser in types.ts): the twin, with the
 * addon's FrameRunner for runs of small frames when the addon is loaded (PARSER_RUN_MIN_FRAMES).
 */
export function createFrameParser(opts: FrameParserOptions = {}): FrameParser {
  return new TsFrameParser(
    opts.role === 'server' ? 1 : 0,
    opts.maxFrameBytes ?? 1024 * 1024,
    opts.maxMessageBytes ?? 1024 * 1024,
    opts.maxFragments ?? 1024,
    opts.allowRsv1 ?? false,
    opts.maxFramesPerCall ?? 1024,
    nat !== null ? nat.createFrameRunner : null,
    PARSER_RUN_MIN_FRAMES,
  );
}

/**
 * A frame encoder for one connection: 'client' masks every frame (the upstream leg),
 * 'server' does not. The TypeScript encoder with the size-dispatched `mask`, so headers are
 * written in JS and only big payloads cross into the addon: bench/codec.js encode (masked,
 * frame + take per call, M ops/s, ts / native / this): 16 B 7.7/0.65/5.9,
 * 125 B 7.2/1.3/6.5, 4 KiB 0.15/0.37/0.36, 64 KiB 0.036/0.022/0.066.
 */
export function createFrameEncoder(role: 'client' | 'server', initialCapacity = 16 * 1024): FrameEncoder {
  // Below the native cut-off the encoder masks in place itself (no per-call views).
  return nat !== null
    ? new TsFrameEncoder(role === 'client' ? 0 : 1, initialCapacity, natMask, MASK_NATIVE_MIN_BYTES)
    : new TsFrameEncoder(role === 'client' ? 0 : 1, initialCapacity, tsMask, Number.POSITIVE_INFINITY);
}

/** Write one v2 envelope into `out` at `offset`; returns the end offset. */
export function envelopeEncodeInto(out: Uint8Array, offset: number, type: number, flags: number, payload: Uint8Array): number {
  return payload.length >= ENVELOPE_ENCODE_NATIVE_MIN_BYTES
    ? natEnvelopeEncodeInto(out, offset, type, flags, payload)
    : ts.envelopeEncodeInto(out, offset, type, flags, payload);
}

/** One v2 envelope in a new Buffer (allocates; the hot path uses `envelopeEncodeInto`). */
export function envelopeEncode(type: number, flags: number, payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(ENVELOPE_HEADER_BYTES + payload.length);
  envelopeEncodeInto(out, 0, type, flags, payload);
  return out;
}

/**
 * Decode a message that must be exactly one v2 envelope into `out[0..3]` (type, flags,
 * payload offset, payload length); 0 or -errno. Always the twin itself (not a wrapper):
 * it reads 8 bytes whatever the size, so the addon could only add the cost of the call.
 */
export const envelopeDecode: (message: Uint8Array, maxPayload: number, out: Uint32Array) => number = tsEnvelopeDecode;

/** Decode concatenated v2 envelopes filling `buf`; the frame count or -errno. */
export function envelopeDecodeRun(buf: Uint8Array, maxPayload: number, descriptors: Uint32Array): number {
  return buf.length >= ENVELOPE_RUN_NATIVE_MIN_BYTES
    ? natEnvelopeDecodeRun(buf, maxPayload, descriptors)
    : ts.envelopeDecodeRun(buf, maxPayload, descriptors);
}

/**
 * A Buffer of at least `size` bytes from this thread's tiered pool (4 KiB / 64 KiB /
 * 1 MiB). Always the twin's pool: a pool call moves no bytes, so a native one could only
 * add the cost of the call, and acquire/release must reach the same pool.
 */
export function acquire(size: number): Buffer {
  return ts.acquire(size);
}

/** Return a Buffer obtained from `acquire`. */
export function release(buf: Buffer): void {
  ts.release(buf);
}

/** This thread's pool statistics. */
export function poolStats(): PoolStats {
  return ts.poolStats();
}

/** The SluiceError for a codec error number (a parse/decode result's `-errno` works too). */
export function codecError(errno: number): SluiceError {
  const n = Math.abs(errno);
  const known = CODEC_ERRORS[n];
  if (known === undefined) {
    return new SluiceError('SLUICE_ERR_CODEC_UNKNOWN', `unknown codec error number ${errno}`, 1011);
  }
  return new SluiceError(known.code, known.message, known.closeCode);
}
