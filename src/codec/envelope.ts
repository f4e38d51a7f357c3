/**
 * The TypeScript twin of native/envelope.cc: the v2 envelope (DESIGN "Protocols").
 *
 * Header checks run in one order in both implementations: too short for a header
 * (EnvelopeLength), version, reserved byte, type, flags, length over maxPayload
 * (EnvelopeTooBig), then length against the bytes present (EnvelopeLength).
 */
import { CodecErrno, ENVELOPE_DESCRIPTOR_WORDS, ENVELOPE_HEADER_BYTES } from './types.js';

const VERSION = 0x02;
const KNOWN_FLAGS = 0x0f;

/** Write header + payload of one v2 envelope into `out` at `offset`; returns the end offset. */
export function envelopeEncodeInto(out: Uint8Array, offset: number, type: number, flags: number, payload: Uint8Array): number {
  const length = payload.length;
  const end = offset + ENVELOPE_HEADER_BYTES + length;
  if (offset < 0 || end > out.length) {
    throw new RangeError(`envelope needs ${ENVELOPE_HEADER_BYTES + length} bytes at offset ${offset}, output has ${out.length}`);
  }
  out[offset] = VERSION;
  out[offset + 1] = type;
  out[offset + 2] = flags;
  out[offset + 3] = 0;
  out[offset + 4] = length >>> 24;
  out[offset + 5] = (length >>> 16) & 0xff;
  out[offset + 6] = (length >>> 8) & 0xff;
  out[offset + 7] = length & 0xff;
  if (length < 64) {
    const at = offset + ENVELOPE_HEADER_BYTES;
    for (let i = 0; i < length; i++) out[at + i] = payload[i];
  } else {
    out.set(payload, offset + ENVELOPE_HEADER_BYTES);
  }
  return end;
}

/** Check the header at `at`; returns 0 or a CodecErrno. `remaining` = bytes from `at` to the end. */
function checkHeader(buf: Uint8Array, at: number, remaining: number, maxPayload: number): number {
  if (remaining < ENVELOPE_HEADER_BYTES) return CodecErrno.EnvelopeLength;
  if (buf[at] !== VERSION) return CodecErrno.EnvelopeVersion;
  if (buf[at + 3] !== 0) return CodecErrno.EnvelopeReserved;
  const type = buf[at + 1];
  if (type < 1 || type > 6) return CodecErrno.EnvelopeType;
  if ((buf[at + 2] & ~KNOWN_FLAGS) !== 0) return CodecErrno.EnvelopeFlags;
  const length = readLength(buf, at);
  if (length > maxPayload) return CodecErrno.EnvelopeTooBig;
  return 0;
}

function readLength(buf: Uint8Array, at: number): number {
  return ((buf[at + 4] << 24) | (buf[at + 5] << 16) | (buf[at + 6] << 8) | buf[at + 7]) >>> 0;
}

/**
 * Decode one message that must be exactly one v2 envelope into `out[0..3]` (type, flags,
 * payload offset, payload length); returns 0 or -errno.
 */
export function envelopeDecode(message: Uint8Array, maxPayload: number, out: Uint32Array): number {
  const errno = checkHeader(message, 0, message.length, maxPayload);
  if (errno !== 0) return -errno;
  const length = readLength(message, 0);
  if (length !== message.length - ENVELOPE_HEADER_BYTES) return -CodecErrno.EnvelopeLength;
  out[0] = message[1];
  out[1] = message[2];
  out[2] = ENVELOPE_HEADER_BYTES;
  out[3] = length;
  return 0;
}

/**
 * Decode concatenated v2 envelopes that must fill `buf` exactly; returns the frame count or
 * -errno (-EnvelopeLength also when `descriptors` cannot hold them all).
 */
export function envelopeDecodeRun(buf: Uint8Array, maxPayload: number, descriptors: Uint32Array): number {
  const end = buf.length;
  const capacity = Math.floor(descriptors.length / ENVELOPE_DESCRIPTOR_WORDS);
  let at = 0;
  let count = 0;
  while (at < end) {
    // A full descriptor array is checked first, as in native/envelope.cc.
    if (count === capacity) return -CodecErrno.EnvelopeLength;
    const errno = checkHeader(buf, at, end - at, maxPayload);
    if (errno !== 0) return -errno;
    const length = readLength(buf, at);
    if (length > end - at - ENVELOPE_HEADER_BYTES) return -CodecErrno.EnvelopeLength;
    const w = count * ENVELOPE_DESCRIPTOR_WORDS;
    descriptors[w] = buf[at + 1];
    descriptors[w + 1] = buf[at + 2];
    descriptors[w + 2] = at + ENVELOPE_HEADER_BYTES;
    descriptors[w + 3] = length;
    count++;
    at += ENVELOPE_HEADER_BYTES + length;
  }
  return count;
}
