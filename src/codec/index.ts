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
// Measured with `node bench/codec.js` (see bench/codec.js for the figures that chose them).

/** mask/unmask: native from this many bytes. */
export const MASK_NATIVE_MIN_BYTES = 256;
/** isUtf8: native from this many bytes. */
export const UTF8_NATIVE_MIN_BYTES = Number.POSITIVE_INFINITY;
/** envelopeEncodeInto: native from this payload size. */
export const ENVELOPE_ENCODE_NATIVE_MIN_BYTES = Number.POSITIVE_INFINITY;
/** envelopeDecodeRun: native from this many bytes in the run. */
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
  if (length >= MASK_NATIVE_MIN_BYTES) natMask(source, key, output, offset, length);
  else tsMask(source, key, output, offset, length);
}

/** XOR `buffer` in place with the 4-byte `key`. */
export function unmask(buffer: Uint8Array, key: Uint8Array): void {
  if (buffer.length >= MASK_NATIVE_MIN_BYTES) natUnmask(buffer, key);
  else tsUnmask(buffer, key);
}

/** True when `buf` is valid UTF-8 (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). */
export function isUtf8(buf: Uint8Array): boolean {
  return buf.length >= UTF8_NATIVE_MIN_BYTES ? natIsUtf8(buf) : ts.isUtf8(buf);
}

/**
 * A frame parser for one connection (see FrameParser in types.ts), native when loaded:
 * parsing is where batching per chunk pays (bench/codec.js, parse-batch).
 */
export function createFrameParser(opts: FrameParserOptions = {}): FrameParser {
  const impl = nat ?? ts;
  return new impl.FrameParser(
    opts.role === 'server' ? 1 : 0,
    opts.maxFrameBytes ?? 1024 * 1024,
    opts.maxMessageBytes ?? 1024 * 1024,
    opts.maxFragments ?? 1024,
    opts.allowRsv1 ?? false,
    opts.maxFramesPerCall ?? 1024,
  );
}

/**
 * A frame encoder for one connection: 'client' masks every frame (the upstream leg),
 * 'server' does not. The TypeScript encoder with the size-dispatched `mask`: per-frame
 * calls into the addon cost more than writing a header in JS (bench/codec.js, encode).
 */
export function createFrameEncoder(role: 'client' | 'server', initialCapacity = 16 * 1024): FrameEncoder {
  return new TsFrameEncoder(role === 'client' ? 0 : 1, initialCapacity, mask);
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
 * payload offset, payload length); 0 or -errno. Always the twin: it reads 8 bytes
 * whatever the size, so the addon could only add the cost of the call.
 */
export function envelopeDecode(message: Uint8Array, maxPayload: number, out: Uint32Array): number {
  return ts.envelopeDecode(message, maxPayload, out);
}

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
