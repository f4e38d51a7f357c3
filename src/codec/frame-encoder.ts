/**
 * The TypeScript twin of the native frame encoder: appends RFC 6455 frames to one output
 * slab so that a session writes once per event-loop turn.
 *
 * `take()` hands over a view of the slab and later frames continue after it in the same
 * slab, so a session that takes every turn allocates only when a slab fills up. The
 * taken view keeps its slab alive for as long as the caller holds it.
 */
import { randomFillSync } from 'node:crypto';
import type { FrameEncoder } from './types.js';
import { mask as maskTs, wordView, xorInPlace } from './mask.js';

/** Signature of `CodecImplementation.mask`, so the dispatcher can lend the encoder a faster one. */
export type MaskFunction = (source: Uint8Array, key: Uint8Array, output: Uint8Array, offset: number, length: number) => void;

/** Random bytes are drawn in blocks: one randomFillSync per 2048 masks instead of one per frame. */
const RANDOM_POOL_BYTES = 8192;
/** Below this payload size the encoder XORs inline (no call, no views). */
const INLINE_MASK_MAX_BYTES = 128;

/** Smallest slab, whatever the caller asked for. */
const MIN_SLAB_BYTES = 1024;

const randomPool = Buffer.allocUnsafeSlow(RANDOM_POOL_BYTES);
let randomAt = RANDOM_POOL_BYTES;

/** Header bytes of a frame with `length` payload bytes (shortest length form; + 4 when masked). */
export function headerBytes(length: number, masked: boolean): number {
  return (length < 126 ? 2 : length < 65536 ? 4 : 10) + (masked ? 4 : 0);
}

/**
 * Write a frame header at `out[at]` (shortest length form) and, when `masked`, a fresh
 * mask key drawn from the pool into both the header and `key`. Returns where the payload
 * starts.
 */
export function writeHeader(out: Buffer, at: number, opcode: number, fin: boolean, rsv1: boolean, length: number,
  masked: boolean, key: Uint8Array): number {
  out[at++] = (fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0f);
  const maskBit = masked ? 0x80 : 0;
  if (length < 126) {
    out[at++] = maskBit | length;
  } else if (length < 65536) {
    out[at++] = maskBit | 126;
    out[at++] = length >>> 8;
    out[at++] = length & 0xff;
  } else {
    out[at++] = maskBit | 127;
    out.writeUInt32BE(Math.floor(length / 0x100000000), at);
    out.writeUInt32BE(length >>> 0, at + 4);
    at += 8;
  }
  if (masked) {
    if (randomAt === RANDOM_POOL_BYTES) {
      randomFillSync(randomPool);
      randomAt = 0;
    }
    key[0] = out[at++] = randomPool[randomAt++];
    key[1] = out[at++] = randomPool[randomAt++];
    key[2] = out[at++] = randomPool[randomAt++];
    key[3] = out[at++] = randomPool[randomAt++];
  }
  return at;
}

/** See FrameEncoder in types.ts for the contract. */
export class TsFrameEncoder implements FrameEncoder {
  private readonly _masking: boolean;
  private readonly _capacity: number;
  private readonly _mask: MaskFunction;
  private _slab: Buffer;
  private _slabWords: Int32Array;
  private readonly _nativeMaskMin: number;
  private _start: number;
  private _end: number;
  private readonly _key: Buffer;

  /**
   * @param role 0 client (masks every frame), 1 server (no mask)
   * @param initialCapacity bytes of the first slab and the least of every later one
   * @param maskInto the mask function to use (the dispatcher passes the size-picked one)
   * @param maskIntoMinBytes payloads from this size go to `maskInto`; smaller ones are
   *   masked inside the encoder (default 0: every payload of 128 bytes or more)
   */
  constructor(role: 0 | 1, initialCapacity: number, maskInto: MaskFunction = maskTs, maskIntoMinBytes = 0) {
    this._masking = role === 0;
    this._capacity = Math.max(MIN_SLAB_BYTES, initialCapacity | 0);
    this._mask = maskInto;
    this._slab = Buffer.allocUnsafeSlow(this._capacity);
    this._slabWords = wordView(this._slab);
    this._nativeMaskMin = maskIntoMinBytes;
    this._start = 0;
    this._end = 0;
    this._key = Buffer.allocUnsafeSlow(4);
  }

  get length(): number {
    return this._end - this._start;
  }

  /**
   * Append one frame. Throws a RangeError (and appends nothing) for what RFC 6455 forbids
   * a sender: an unknown opcode, a control frame that is fragmented, compressed or over
   * 125 bytes, RSV1 on a continuation frame (the same refusals as native/frame.cc).
   */
  frame(opcode: number, payload: Uint8Array, fin = true, rsv1 = false): void {
    const length = payload.length;
    if (opcode !== (opcode & 0x0f) || (opcode > 0x2 && opcode < 0x8) || opcode > 0xa) {
      throw new RangeError(`frame: opcode ${opcode} is not a WebSocket opcode`);
    }
    if (opcode >= 0x8 && (!fin || rsv1 || length > 125)) {
      throw new RangeError('frame: a control frame must be final, uncompressed and at most 125 bytes');
    }
    if (opcode === 0 && rsv1) throw new RangeError('frame: RSV1 is only allowed on the first frame of a message');
    const masking = this._masking;
    const need = headerBytes(length, masking);
    if (this._slab.length - this._end < need + length) this._grow(need + length);
    const out = this._slab;
    const key = this._key;
    const at = writeHeader(out, this._end, opcode, fin, rsv1, length, masking, key);
    if (masking) {
      const k0 = key[0];
      const k1 = key[1];
      const k2 = key[2];
      const k3 = key[3];
      if (length < INLINE_MASK_MAX_BYTES) {
        // Small payloads: XOR inline, four bytes a step with the key in locals; a call to
        // the mask function costs more than the work (perf on the proxy's 64 B echo).
        let i = 0;
        for (const n4 = length & ~3; i < n4; i += 4) {
          out[at + i] = payload[i] ^ k0;
          out[at + i + 1] = payload[i + 1] ^ k1;
          out[at + i + 2] = payload[i + 2] ^ k2;
          out[at + i + 3] = payload[i + 3] ^ k3;
        }
        for (; i < length; i++) out[at + i] = payload[i] ^ key[i & 3];
      } else if (length < this._nativeMaskMin) {
        // Mid sizes: copy, then XOR in place a word at a time through the slab's own
        // Int32 view (made once per slab, not per frame as mask() would).
        out.set(payload, at);
        xorInPlace(out, this._slabWords, at, at + length, key, 0);
      } else {
        this._mask(payload, key, out, at, length);
      }
    } else if (length !== 0) {
      if (length < 64) {
        for (let i = 0; i < length; i++) out[at + i] = payload[i];
      } else {
        out.set(payload, at);
      }
    }
    this._end = at + length;
  }

  take(): Buffer | null {
    if (this._end === this._start) return null;
    const taken = this._slab.subarray(this._start, this._end);
    this._start = this._end;
    return taken;
  }

  rewind(): void {
    if (this._end === this._start) {
      this._start = 0;
      this._end = 0;
    }
  }

  /** Move the pending bytes to a slab with room for `need` more (doubling, so appends stay O(n)). */
  private _grow(need: number): void {
    const pending = this._end - this._start;
    // Doubling only matters while frames pile up untaken; after a take() (pending 0) a big
    // frame gets a slab of its own size, not twice it.
    const size = Math.max(this._capacity, pending + need, 2 * pending);
    const slab = Buffer.allocUnsafeSlow(size);
    if (pending !== 0) this._slab.copy(slab, 0, this._start, this._end);
    this._slab = slab;
    this._slabWords = wordView(slab);
    this._start = 0;
    this._end = pending;
  }
}
