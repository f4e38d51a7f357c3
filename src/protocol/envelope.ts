/**
 * The envelope spoken on envelope routes (DESIGN "Protocols"): v2 binary frames, v1 JSON
 * text frames. Decoding checks everything before it allocates: v2 through the codec's
 * header check (version, reserved byte, type, flags, length against the limit, then
 * against the bytes present); v1 by message size before JSON.parse, then depth, field
 * types and strict base64 with its decoded size before the payload is decoded.
 *
 * Close codes returned by `decodeEnvelope` (never an exception):
 * - 1002: malformed (bad header, bad JSON, unknown type or flag name, wrong field types,
 *   a close frame with a code that may not go on the wire or a reason over 123 bytes);
 * - 1003: the wrong kind of WebSocket message (text on v2, binary on v1): RFC 6455's code
 *   for "a type of data it cannot accept", which is what it is;
 * - 1007: bytes that are not what the type promises: bad base64, invalid UTF-8 in a v1
 *   message or in a v2 close reason / error reason / control payload, a control payload
 *   that is not a JSON object;
 * - 1009: over the limit: a payload over `maxPayloadBytes` (v2 length field, v1 decoded
 *   base64 size), a v1 message over `maxJsonBytes`, JSON nested deeper than `maxJsonDepth`.
 */
import { isUtf8 } from 'node:buffer';
import {
  CODEC_ERRORS, ENVELOPE_HEADER_BYTES, EnvelopeFlag, EnvelopeType, envelopeDecode, envelopeEncode,
} from '../codec/index.js';

export { EnvelopeType, EnvelopeFlag, ENVELOPE_HEADER_BYTES };

/** Envelope protocol version: `v2` binary frames, `v1` JSON text frames. */
export type EnvelopeVersion = 'v1' | 'v2';

/** One decoded envelope frame. */
export interface EnvelopeFrame {
  /** EnvelopeType 1..6. */
  type: number;
  /** EnvelopeFlag bits (0x01 compressed, 0x02 fragmented, 0x04 final, 0x08 backpressure). */
  flags: number;
  /**
   * A view (v2: into the message, no copy): data bytes; for close a uint16 code + UTF-8
   * reason (empty: no code given); for error a UTF-8 reason; for control UTF-8 JSON (an
   * object); for ping/pong whatever the sender put there (v1: the optional `data`).
   */
  payload: Buffer;
}

/** Limits applied by `decodeEnvelope`. */
export interface EnvelopeLimits {
  /** Largest payload (data bytes after base64 decoding on v1); over it → 1009. */
  maxPayloadBytes: number;
  /** Deepest JSON nesting accepted in a v1 message (the envelope object is depth 1); default 32. */
  maxJsonDepth?: number;
  /** Largest v1 message in bytes; default ceil(maxPayloadBytes * 4 / 3) + 4096 (base64 plus fields). */
  maxJsonBytes?: number;
}

/** The WebSocket close codes `decodeEnvelope` returns. */
export const EnvelopeCloseCode = { Malformed: 1002, WrongMessageKind: 1003, BadData: 1007, TooBig: 1009 } as const;

/** A close reason fits a WebSocket close frame: 125 bytes minus the 2-byte code. */
export const MAX_CLOSE_REASON_BYTES = 123;

const DEFAULT_MAX_JSON_DEPTH = 32;
const TYPE_NAMES = ['', 'data', 'ping', 'pong', 'close', 'error', 'control'] as const;
const TYPE_BY_NAME: Readonly<Record<string, number>> = {
  data: EnvelopeType.Data, ping: EnvelopeType.Ping, pong: EnvelopeType.Pong,
  close: EnvelopeType.Close, error: EnvelopeType.Error, control: EnvelopeType.Control,
};
/** v1 flag names, in bit order; the v1 encoder writes them in this order. */
const FLAG_NAMES = ['compressed', 'fragmented', 'final', 'backpressure'] as const;
const FLAG_BY_NAME: Readonly<Record<string, number>> = {
  compressed: EnvelopeFlag.Compressed, fragmented: EnvelopeFlag.Fragmented,
  final: EnvelopeFlag.Final, backpressure: EnvelopeFlag.Backpressure,
};
const KNOWN_FLAGS = 0x0f;
const EMPTY = Buffer.alloc(0);
/** Reused by every v2 decode: envelopeDecode writes type, flags, offset, length here. */
const descriptor = new Uint32Array(4);
/** Standard alphabet, no whitespace, padding only at the end (checked apart: canonical bits). */
const BASE64_BODY = /^[A-Za-z0-9+/]*$/;

/**
 * Decode one client WebSocket message. Returns the frame, or a number: the WebSocket close
 * code (1002 malformed, 1003 wrong message kind, 1007 bad base64/UTF-8/JSON payload, 1009
 * over the limit; see the module comment). Never throws.
 *
 * v2 expects binary messages and v1 text messages; the other kind is 1003.
 */
export function decodeEnvelope(
  version: EnvelopeVersion, message: Uint8Array, isBinary: boolean, limits: EnvelopeLimits,
): EnvelopeFrame | number {
  if (version === 'v2') {
    if (!isBinary) return EnvelopeCloseCode.WrongMessageKind;
    return decodeV2(message, limits.maxPayloadBytes);
  }
  if (isBinary) return EnvelopeCloseCode.WrongMessageKind;
  return decodeV1(message, limits);
}

function decodeV2(message: Uint8Array, maxPayload: number): EnvelopeFrame | number {
  const r = envelopeDecode(message, maxPayload, descriptor);
  if (r < 0) return CODEC_ERRORS[-r]?.closeCode ?? EnvelopeCloseCode.Malformed;
  const type = descriptor[0];
  const payload = Buffer.from(message.buffer, message.byteOffset + descriptor[2], descriptor[3]);
  const bad = checkPayload(type, payload);
  if (bad !== 0) return bad;
  return { type, flags: descriptor[1], payload };
}

/** Type-specific payload rules shared by both versions; 0 or a close code. */
function checkPayload(type: number, payload: Buffer): number {
  switch (type) {
    case EnvelopeType.Close:
      if (payload.length === 0) return 0;
      if (payload.length === 1 || payload.length > 2 + MAX_CLOSE_REASON_BYTES) return EnvelopeCloseCode.Malformed;
      if (!isWireCloseCode(payload.readUInt16BE(0))) return EnvelopeCloseCode.Malformed;
      return isUtf8(payload.subarray(2)) ? 0 : EnvelopeCloseCode.BadData;
    case EnvelopeType.Error:
      return isUtf8(payload) ? 0 : EnvelopeCloseCode.BadData;
    case EnvelopeType.Control:
      return parseControlPayload(payload) === null ? EnvelopeCloseCode.BadData : 0;
    default:
      return 0;
  }
}

/**
 * True for a close code that may be sent in a close frame (RFC 6455 §7.4): 1000-1003,
 * 1007-1014 and 3000-4999. 1004-1006 and 1015 are reserved and never on the wire.
 */
export function isWireCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

/**
 * The JSON object of a control payload (UTF-8 JSON), or null when it is not valid UTF-8,
 * not JSON, not an object, or nested deeper than `maxDepth`.
 */
export function parseControlPayload(payload: Uint8Array, maxDepth = DEFAULT_MAX_JSON_DEPTH): Record<string, unknown> | null {
  if (!isUtf8(payload)) return null;
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.length).toString('utf8'));
  } catch {
    return null;
  }
  if (!isPlainObject(value) || jsonDepth(value, maxDepth) > maxDepth) return null;
  return value;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Nesting depth of a parsed JSON value (a scalar is 0, `{}` is 1), counting no further than
 * `limit + 1`. Iterative, so a deep document cannot overflow the stack.
 */
function jsonDepth(root: unknown, limit: number): number {
  let max = 0;
  const stack: Array<[unknown, number]> = [[root, 1]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (d > max) {
      max = d;
      if (max > limit) return max;
    }
    const children = Array.isArray(v) ? v : Object.values(v);
    for (const c of children) if (typeof c === 'object' && c !== null) stack.push([c, d + 1]);
  }
  return max;
}

function decodeV1(message: Uint8Array, limits: EnvelopeLimits): EnvelopeFrame | number {
  const maxPayload = limits.maxPayloadBytes;
  const maxJsonBytes = limits.maxJsonBytes ?? Math.ceil((maxPayload * 4) / 3) + 4096;
  const maxDepth = limits.maxJsonDepth ?? DEFAULT_MAX_JSON_DEPTH;
  // Size first: JSON.parse allocates in proportion to its input.
  if (message.length > maxJsonBytes) return EnvelopeCloseCode.TooBig;
  if (!isUtf8(message)) return EnvelopeCloseCode.BadData;
  let obj: unknown;
  try {
    obj = JSON.parse(Buffer.from(message.buffer, message.byteOffset, message.length).toString('utf8'));
  } catch {
    return EnvelopeCloseCode.Malformed;
  }
  if (!isPlainObject(obj)) return EnvelopeCloseCode.Malformed;
  if (jsonDepth(obj, maxDepth) > maxDepth) return EnvelopeCloseCode.TooBig;
  const type = typeof obj.type === 'string' ? TYPE_BY_NAME[obj.type] : undefined;
  if (type === undefined || !Object.hasOwn(TYPE_BY_NAME, obj.type as string)) return EnvelopeCloseCode.Malformed;

  let flags = 0;
  if (obj.flags !== undefined) {
    if (!Array.isArray(obj.flags)) return EnvelopeCloseCode.Malformed;
    for (const name of obj.flags) {
      if (typeof name !== 'string' || !Object.hasOwn(FLAG_BY_NAME, name)) return EnvelopeCloseCode.Malformed;
      flags |= FLAG_BY_NAME[name];
    }
  }

  let payload: Buffer;
  switch (type) {
    case EnvelopeType.Data:
    case EnvelopeType.Ping:
    case EnvelopeType.Pong: {
      // data requires `data`; ping/pong may carry one (sluice's pong echoes a ping's).
      if (obj.data === undefined && type !== EnvelopeType.Data) {
        payload = EMPTY;
        break;
      }
      if (typeof obj.data !== 'string') return EnvelopeCloseCode.Malformed;
      const decoded = decodeBase64Strict(obj.data, maxPayload);
      if (typeof decoded === 'number') return decoded;
      payload = decoded;
      break;
    }
    case EnvelopeType.Close: {
      const { code, reason } = obj;
      if (code === undefined) {
        if (reason !== undefined && reason !== '') return EnvelopeCloseCode.Malformed; // a reason needs a code
        payload = EMPTY;
        break;
      }
      if (typeof code !== 'number' || !Number.isInteger(code) || !isWireCloseCode(code)) return EnvelopeCloseCode.Malformed;
      if (reason !== undefined && typeof reason !== 'string') return EnvelopeCloseCode.Malformed;
      const r = reason ?? '';
      if (Buffer.byteLength(r) > MAX_CLOSE_REASON_BYTES) return EnvelopeCloseCode.Malformed;
      payload = closePayload(code, r);
      break;
    }
    case EnvelopeType.Error: {
      const { reason } = obj;
      if (reason !== undefined && typeof reason !== 'string') return EnvelopeCloseCode.Malformed;
      payload = reason === undefined ? EMPTY : Buffer.from(reason, 'utf8');
      break;
    }
    default: { // control
      if (!isPlainObject(obj.payload)) return EnvelopeCloseCode.Malformed;
      payload = Buffer.from(JSON.stringify(obj.payload), 'utf8');
      break;
    }
  }
  return { type, flags, payload };
}

/**
 * Strict RFC 4648 base64 (standard alphabet, padded, canonical: unused bits zero), decoded
 * only after its size is known to fit `maxPayload`. Node's own decoder skips bad
 * characters silently, hence the checks.
 */
function decodeBase64Strict(s: string, maxPayload: number): Buffer | number {
  const n = s.length;
  if (n % 4 !== 0) return EnvelopeCloseCode.BadData;
  let pad = 0;
  if (n > 0 && s.charCodeAt(n - 1) === 0x3d) pad = s.charCodeAt(n - 2) === 0x3d ? 2 : 1;
  const size = (n / 4) * 3 - pad;
  if (size > maxPayload) return EnvelopeCloseCode.TooBig;
  const body = pad === 0 ? s : s.slice(0, n - pad);
  if (!BASE64_BODY.test(body)) return EnvelopeCloseCode.BadData;
  if (pad > 0) {
    // The last data character carries 4 (pad 1: 2) unused bits that must be zero.
    const last = BASE64_VALUE[body.charCodeAt(body.length - 1)];
    if ((last & (pad === 1 ? 0x03 : 0x0f)) !== 0) return EnvelopeCloseCode.BadData;
  }
  return Buffer.from(s, 'base64');
}

const BASE64_VALUE = (() => {
  const t = new Uint8Array(128);
  const a = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  for (let i = 0; i < a.length; i++) t[a.charCodeAt(i)] = i;
  return t;
})();

/**
 * Encode one frame as the WebSocket message to send: v2 → `{ data: Buffer, binary: true }`
 * (a new Buffer: header + payload); v1 → `{ data: string, binary: false }` (JSON, fields in
 * DESIGN's order, `"flags"` last and only when set). Throws RangeError for a type outside
 * 1..6 or flag bits outside 0x0F, TypeError for a v1 control payload that is not a JSON
 * object: those are the caller's bugs, not the peer's.
 */
export function encodeEnvelope(version: EnvelopeVersion, type: number, flags: number, payload: Uint8Array): { data: Buffer | string; binary: boolean } {
  if (!Number.isInteger(type) || type < 1 || type > 6) throw new RangeError(`envelope type ${type} is not 1..6`);
  if (!Number.isInteger(flags) || (flags & ~KNOWN_FLAGS) !== 0) throw new RangeError(`envelope flags 0x${flags.toString(16)} outside 0x0f`);
  if (version === 'v2') return { data: envelopeEncode(type, flags, payload), binary: true };
  return { data: encodeV1(type, flags, payload), binary: false };
}

function asBuffer(p: Uint8Array): Buffer {
  return Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.length);
}

function encodeV1(type: number, flags: number, payload: Uint8Array): string {
  const p = asBuffer(payload);
  let body: string;
  switch (type) {
    case EnvelopeType.Data:
      body = `{"type":"data","data":"${p.toString('base64')}"`;
      break;
    case EnvelopeType.Ping:
    case EnvelopeType.Pong:
      body = `{"type":"${TYPE_NAMES[type]}"` + (p.length > 0 ? `,"data":"${p.toString('base64')}"` : '');
      break;
    case EnvelopeType.Close: {
      const c = parseClosePayload(p);
      body = c === null || p.length === 0 ? '{"type":"close"' : `{"type":"close","code":${c.code},"reason":${JSON.stringify(c.reason)}`;
      break;
    }
    case EnvelopeType.Error:
      body = `{"type":"error","reason":${JSON.stringify(p.toString('utf8'))}`;
      break;
    default: {
      const obj = parseControlPayload(p, Number.POSITIVE_INFINITY);
      if (obj === null) throw new TypeError('control payload must be UTF-8 JSON holding an object');
      body = `{"type":"control","payload":${JSON.stringify(obj)}`;
      break;
    }
  }
  if (flags !== 0) {
    const names: string[] = [];
    for (let bit = 0; bit < FLAG_NAMES.length; bit++) if ((flags & (1 << bit)) !== 0) names.push(`"${FLAG_NAMES[bit]}"`);
    body += `,"flags":[${names.join(',')}]`;
  }
  return body + '}';
}

/**
 * A close payload: uint16 code (big endian) + UTF-8 reason, the reason cut at a character
 * boundary to MAX_CLOSE_REASON_BYTES so that it fits the WebSocket close frame it becomes.
 */
export function closePayload(code: number, reason: string): Buffer {
  if (!Number.isInteger(code) || code < 0 || code > 0xffff) throw new RangeError(`close code ${code} is not a uint16`);
  let r = Buffer.from(reason, 'utf8');
  if (r.length > MAX_CLOSE_REASON_BYTES) {
    let end = MAX_CLOSE_REASON_BYTES;
    while (end > 0 && (r[end] & 0xc0) === 0x80) end--; // do not split a UTF-8 sequence
    r = r.subarray(0, end);
  }
  const out = Buffer.allocUnsafe(2 + r.length);
  out.writeUInt16BE(code, 0);
  r.copy(out, 2);
  return out;
}

/**
 * Code and reason of a close payload. An empty payload (a close without a code) gives
 * `{ code: 1005, reason: '' }`: 1005 means "no code" and must not be put on the wire
 * (close the socket without a code instead). null for a 1-byte payload or a reason that
 * is not UTF-8.
 */
export function parseClosePayload(p: Uint8Array): { code: number; reason: string } | null {
  if (p.length === 0) return { code: 1005, reason: '' };
  if (p.length < 2) return null;
  const b = asBuffer(p);
  const reason = b.subarray(2);
  if (!isUtf8(reason)) return null;
  return { code: b.readUInt16BE(0), reason: reason.toString('utf8') };
}

/** The v1 name of a type (`data`, `ping`, …), or undefined. */
export function envelopeTypeName(type: number): string | undefined {
  return type >= 1 && type <= 6 ? TYPE_NAMES[type] : undefined;
}

/** Control payload of the backpressure signal raised (sent with EnvelopeFlag.Backpressure). */
export const BACKPRESSURE_ON_PAYLOAD: Buffer = Buffer.from('{"backpressure":true}', 'utf8');
/** Control payload of the backpressure signal cleared (sent without the flag). */
export const BACKPRESSURE_OFF_PAYLOAD: Buffer = Buffer.from('{"backpressure":false}', 'utf8');

/**
 * The backpressure signal as a message to send (DESIGN "Backpressure"): a control frame
 * with flag 0x08 and `{"backpressure":true}` when sustained backpressure starts, a control
 * frame without the flag and `{"backpressure":false}` when the channel drains. The payload
 * names the signal so that a control frame from a hook, which carries no flag, is not
 * mistaken for "drained".
 */
export function backpressureSignal(version: EnvelopeVersion, on: boolean): { data: Buffer | string; binary: boolean } {
  return on
    ? encodeEnvelope(version, EnvelopeType.Control, EnvelopeFlag.Backpressure, BACKPRESSURE_ON_PAYLOAD)
    : encodeEnvelope(version, EnvelopeType.Control, 0, BACKPRESSURE_OFF_PAYLOAD);
}
