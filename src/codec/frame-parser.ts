/**
 * The TypeScript twin of native/frame.cc: an incremental RFC 6455 frame parser.
 *
 * Shaped like ws's lib/receiver.js: a small state machine over integer phases, every
 * field set in the constructor so the object keeps one shape, and no allocation per
 * frame: descriptors go into one reused Uint32Array, payloads stay in the caller's chunk
 * (unmasked in place). A frame cut by the end of a chunk is completed in `carry`, which is
 * sized to the frame once its header is known, so a big frame that arrives in many chunks
 * costs one copy of its bytes in total.
 */
import { CodecErrno, Desc, DESCRIPTOR_WORDS, RunFlag, STATE_WORDS, type CodecImplementation, type FrameParser, type FrameRunner } from './types.js';
import { wordView, xorInPlace } from './mask.js';
import { runMaxLength } from './frame-run.js';

/** Makes the FrameRunner (types.ts) the parser hands runs of small frames to. */
export type CreateFrameRunner = CodecImplementation['createFrameRunner'];

/** Waiting for (the rest of) a frame header. */
const PHASE_HEADER = 0;
/** Header known, payload being gathered in `carry`. */
const PHASE_PAYLOAD = 1;

/** A carry buffer above this size is dropped once its frame has been handed over, so an idle connection does not pin a large frame's memory. */
const CARRY_KEEP_BYTES = 64 * 1024;
/** Initial carry capacity: enough for every control frame and most small data frames. */
const CARRY_INITIAL_BYTES = 256;

/** Smallest chunk (bytes from the parse offset) for which the parser considers its runner. */
const RUN_MIN_CHUNK_BYTES = 256;

/** Largest length a descriptor word can hold. */
const MAX_UINT32 = 0xffffffff;

const EMPTY_WORDS = new Int32Array(0);

/** See FrameParser in types.ts for the contract. */
export class TsFrameParser implements FrameParser {
  readonly descriptors: Uint32Array;
  readonly state: Int32Array;
  /** Payload of the CARRY frame described by the last call (exposed as `carry`). */
  private _carry: Buffer;
  /**
   * Where the partial frame is gathered. Separate from `_carry` because one call can both
   * complete a carried frame (whose payload must stay valid until the next call) and start
   * gathering the next one; the two swap when a frame completes.
   */
  private _gather: Buffer;
  private readonly _server: boolean;
  private readonly _maxFrameBytes: number;
  private readonly _maxMessageBytes: number;
  private readonly _maxFragments: number;
  private readonly _allowRsv1: boolean;
  private readonly _maxFrames: number;
  private _phase: number;
  /** Header bytes held from earlier chunks (PHASE_HEADER). */
  private readonly _head: Uint8Array;
  private _headHeld: number;
  /** Fields of the frame being gathered (PHASE_PAYLOAD). */
  private _info: number;
  private _length: number;
  private _maskKey: number;
  private _carryFill: number;
  private _headerBytes: number;
  /** Mask key bytes of the frame being unmasked. */
  private readonly _key: Uint8Array;
  /** Fragmented data message in progress: its bytes and frames so far. */
  private _inMessage: boolean;
  private _messageBytes: number;
  private _messageFrames: number;
  private _errno: number;
  private _errorOffset: number;
  /** Word view of the last chunk's ArrayBuffer, kept to unmask many frames of one chunk with one view. */
  private _wordsOf: ArrayBufferLike | null;
  private _words: Int32Array;
  /** Where runs of small frames go (the addon's FrameRunner), or null. */
  private readonly _runner: FrameRunner | null;
  private readonly _runMinFrames: number;
  private readonly _runMaxLength: number;
  private readonly _runFlags: number;

  constructor(
    role: 0 | 1,
    maxFrameBytes: number,
    maxMessageBytes: number,
    maxFragments: number,
    allowRsv1: boolean,
    maxFramesPerCall: number,
    /**
     * Hand the rest of a chunk to a FrameRunner (normally the addon's) after a frame when
     * at least `runMinFrames` more frames of that frame's size would fit in it: one call
     * then describes a long run of small frames faster than this loop. Anything the run
     * does not take, this loop parses as before, so the results are the same. The
     * runner's descriptors become this parser's.
     */
    createRunner: CreateFrameRunner | null = null,
    runMinFrames = 8,
  ) {
    this._server = role === 1;
    this._maxFrameBytes = Math.min(maxFrameBytes, MAX_UINT32);
    this._maxMessageBytes = maxMessageBytes;
    this._maxFragments = maxFragments;
    this._allowRsv1 = allowRsv1;
    this._maxFrames = Math.max(1, maxFramesPerCall | 0);
    this._runMaxLength = runMaxLength(this._maxFrameBytes, maxMessageBytes, maxFragments);
    this._runner = createRunner !== null && this._runMaxLength >= 0 ? tryRunner(createRunner, this._maxFrames) : null;
    this.descriptors = this._runner !== null ? this._runner.descriptors : new Uint32Array(this._maxFrames * DESCRIPTOR_WORDS);
    this.state = new Int32Array(STATE_WORDS);
    this._carry = Buffer.allocUnsafeSlow(CARRY_INITIAL_BYTES);
    this._gather = Buffer.allocUnsafeSlow(CARRY_INITIAL_BYTES);
    this._phase = PHASE_HEADER;
    this._head = new Uint8Array(14);
    this._headHeld = 0;
    this._info = 0;
    this._length = 0;
    this._maskKey = 0;
    this._carryFill = 0;
    this._headerBytes = 0;
    this._key = new Uint8Array(4);
    this._inMessage = false;
    this._messageBytes = 0;
    this._messageFrames = 0;
    this._errno = 0;
    this._errorOffset = 0;
    this._wordsOf = null;
    this._words = EMPTY_WORDS;
    this._runMinFrames = runMinFrames;
    this._runFlags = this._server ? RunFlag.Server : 0;
    if (this._runner !== null) {
      this._runner.args[2] = this._maxFrames;
      this._runner.args[4] = this._runMaxLength;
    }
    this.state[1] = -1;
  }

  get carry(): Buffer {
    return this._carry;
  }

  get pendingBytes(): number {
    return this._phase === PHASE_PAYLOAD ? this._headerBytes + this._carryFill : this._headHeld;
  }

  reset(): void {
    this._phase = PHASE_HEADER;
    this._headHeld = 0;
    this._carryFill = 0;
    this._inMessage = false;
    this._messageBytes = 0;
    this._messageFrames = 0;
    this._errno = 0;
    this._errorOffset = 0;
    this.state[0] = 0;
    this.state[1] = -1;
    this.state[2] = 0;
    this.state[3] = 0;
    if (this._carry.length > CARRY_KEEP_BYTES) this._carry = Buffer.allocUnsafeSlow(CARRY_INITIAL_BYTES);
    if (this._gather.length > CARRY_KEEP_BYTES) this._gather = Buffer.allocUnsafeSlow(CARRY_INITIAL_BYTES);
  }

  parse(chunk: Uint8Array, offset = 0): number {
    const state = this.state;
    if (this._errno !== 0) {
      state[0] = 0;
      state[1] = -1;
      return -this._errno;
    }
    // A big frame handed over by the previous call is no longer valid: let its memory go.
    if (this._carry.length > CARRY_KEEP_BYTES) this._carry = Buffer.allocUnsafeSlow(CARRY_INITIAL_BYTES);
    if (this._phase === PHASE_HEADER && this._gather.length > CARRY_KEEP_BYTES) {
      this._gather = Buffer.allocUnsafeSlow(CARRY_INITIAL_BYTES);
    }
    const end = chunk.length;
    let pos = offset;
    let count = 0;

    if (this._headHeld !== 0 || this._phase === PHASE_PAYLOAD) {
      pos = this._continuePartial(chunk, pos, end);
      if (pos < 0) return this._fail(0, offset);
      if (this._phase === PHASE_PAYLOAD || this._headHeld !== 0) {
        // Still incomplete: the whole chunk went into the partial frame.
        state[0] = 0;
        state[1] = -1;
        return 0;
      }
      count = 1;
    }

    const d = this.descriptors;
    const maxFrames = this._maxFrames;
    // A runner only for chunks that can hold a run worth a call (below RUN_MIN_CHUNK_BYTES
    // a run saves at most a few tens of ns; one compare here spares one-frame chunks the
    // check after their frame), and whose positions fit in int32.
    let runner = end - pos >= RUN_MIN_CHUNK_BYTES && end <= 0x7fffffff ? this._runner : null;
    while (pos < end) {
      if (count === maxFrames) {
        state[0] = count;
        state[1] = pos;
        return count;
      }
      const avail = end - pos;
      if (avail < 2) {
        this._hold(chunk, pos, end);
        break;
      }
      const b0 = chunk[pos];
      const b1 = chunk[pos + 1];
      const len7 = b1 & 0x7f;
      const masked = (b1 & 0x80) !== 0;
      const headerBytes = (len7 < 126 ? 2 : len7 === 126 ? 4 : 10) + (masked ? 4 : 0);
      if (avail < headerBytes) {
        this._hold(chunk, pos, end);
        break;
      }
      let length = len7;
      let lengthHigh = 0;
      let at = pos + 2;
      if (len7 === 126) {
        length = (chunk[at] << 8) | chunk[at + 1];
        at += 2;
      } else if (len7 === 127) {
        lengthHigh = ((chunk[at] << 24) | (chunk[at + 1] << 16) | (chunk[at + 2] << 8) | chunk[at + 3]) >>> 0;
        length = ((chunk[at + 4] << 24) | (chunk[at + 5] << 16) | (chunk[at + 6] << 8) | chunk[at + 7]) >>> 0;
        at += 8;
      }
      const errno = this._checkHeader(b0, b1, lengthHigh, length);
      if (errno !== 0) {
        this._errno = errno;
        return this._fail(count, pos);
      }
      let maskKey = 0;
      if (masked) {
        this._key[0] = chunk[at];
        this._key[1] = chunk[at + 1];
        this._key[2] = chunk[at + 2];
        this._key[3] = chunk[at + 3];
        maskKey = ((chunk[at] << 24) | (chunk[at + 1] << 16) | (chunk[at + 2] << 8) | chunk[at + 3]) >>> 0;
        at += 4;
      }
      const info = infoOf(b0) | (masked ? Desc.MASKED : 0);
      if (end - at < length) {
        // Payload cut by the end of the chunk: gather it in carry.
        this._startPayload(info, length, maskKey, headerBytes);
        const n = end - at;
        if (n > 0) this._gather.set(chunk.subarray(at, end), 0);
        this._carryFill = n;
        pos = end;
        break;
      }
      if (masked && length !== 0) {
        if (length >= 64 && this._wordsOf !== chunk.buffer) {
          this._wordsOf = chunk.buffer;
          this._words = wordView(chunk);
        }
        xorInPlace(chunk, length >= 64 ? this._words : null, at, at + length, this._key, 0);
      }
      const w = count * DESCRIPTOR_WORDS;
      d[w] = info;
      d[w + 1] = at;
      d[w + 2] = length;
      d[w + 3] = maskKey;
      count++;
      if (runner !== null) {
        // Judged once per call (and again only after a long run): the rest of the chunk
        // must hold runMinFrames frames of this one's size, or the call into the addon
        // costs more than it saves. A short run says the frames are not uniform enough.
        const next = at + length;
        if (end - next >= this._runMinFrames * (next - pos) && count < maxFrames) {
          const args = runner.args;
          args[0] = next;
          args[1] = count;
          args[3] = this._inMessage ? this._runFlags | RunFlag.InMessage : this._runFlags;
          const n = runner.run(chunk);
          if (n - count < this._runMinFrames) runner = null;
          pos = args[0];
          count = n;
          continue;
        }
        runner = null;
      }
      pos = at + length;
    }
    state[0] = count;
    state[1] = -1;
    return count;
  }

  /** Record an error found at `headerOffset`; `count` frames of this call stay valid. */
  private _fail(count: number, headerOffset: number): number {
    this._errorOffset = headerOffset;
    this._phase = PHASE_HEADER;
    this._headHeld = 0;
    const state = this.state;
    state[0] = count;
    state[1] = -1;
    state[2] = this._errno;
    state[3] = headerOffset;
    return -this._errno;
  }

  /** Keep the partial header chunk[pos..end) for the next call. */
  private _hold(chunk: Uint8Array, pos: number, end: number): void {
    const head = this._head;
    let h = 0;
    for (let i = pos; i < end; i++) head[h++] = chunk[i];
    this._headHeld = h;
  }

  private _startPayload(info: number, length: number, maskKey: number, headerBytes: number): void {
    this._phase = PHASE_PAYLOAD;
    this._info = info | Desc.CARRY;
    this._length = length;
    this._maskKey = maskKey;
    this._headerBytes = headerBytes;
    this._carryFill = 0;
    if (this._gather.length < length) this._gather = Buffer.allocUnsafeSlow(Math.max(length, CARRY_INITIAL_BYTES));
  }

  /**
   * Feed chunk[pos..end) to the partial frame held from earlier calls. Returns the new
   * position, or -1 on a header error (this._errno set). When the frame completes, its
   * CARRY descriptor is written at index 0 and the phase goes back to PHASE_HEADER.
   */
  private _continuePartial(chunk: Uint8Array, pos: number, end: number): number {
    if (this._phase === PHASE_HEADER) {
      const head = this._head;
      let held = this._headHeld;
      while (held < 2 && pos < end) head[held++] = chunk[pos++];
      if (held < 2) {
        this._headHeld = held;
        return pos;
      }
      const b0 = head[0];
      const b1 = head[1];
      const len7 = b1 & 0x7f;
      const masked = (b1 & 0x80) !== 0;
      const headerBytes = (len7 < 126 ? 2 : len7 === 126 ? 4 : 10) + (masked ? 4 : 0);
      while (held < headerBytes && pos < end) head[held++] = chunk[pos++];
      this._headHeld = held;
      if (held < headerBytes) return pos;
      let length = len7;
      let lengthHigh = 0;
      let at = 2;
      if (len7 === 126) {
        length = (head[2] << 8) | head[3];
        at = 4;
      } else if (len7 === 127) {
        lengthHigh = ((head[2] << 24) | (head[3] << 16) | (head[4] << 8) | head[5]) >>> 0;
        length = ((head[6] << 24) | (head[7] << 16) | (head[8] << 8) | head[9]) >>> 0;
        at = 10;
      }
      const errno = this._checkHeader(b0, b1, lengthHigh, length);
      if (errno !== 0) {
        this._errno = errno;
        return -1;
      }
      let maskKey = 0;
      if (masked) {
        maskKey = ((head[at] << 24) | (head[at + 1] << 16) | (head[at + 2] << 8) | head[at + 3]) >>> 0;
      }
      this._headHeld = 0;
      this._startPayload(infoOf(b0) | (masked ? Desc.MASKED : 0), length, maskKey, headerBytes);
    }
    // PHASE_PAYLOAD
    const need = this._length - this._carryFill;
    const n = Math.min(need, end - pos);
    if (n > 0) {
      this._gather.set(n === chunk.length ? chunk : chunk.subarray(pos, pos + n), this._carryFill);
      this._carryFill += n;
      pos += n;
    }
    if (this._carryFill < this._length) return pos;
    const length = this._length;
    const maskKey = this._maskKey;
    if ((this._info & Desc.MASKED) !== 0) {
      const key = this._key;
      key[0] = maskKey >>> 24;
      key[1] = (maskKey >>> 16) & 0xff;
      key[2] = (maskKey >>> 8) & 0xff;
      key[3] = maskKey & 0xff;
      xorInPlace(this._gather, null, 0, length, key, 0);
    }
    const done = this._gather;
    this._gather = this._carry;
    this._carry = done;
    const d = this.descriptors;
    d[0] = this._info;
    d[1] = 0;
    d[2] = length;
    d[3] = maskKey;
    this._phase = PHASE_HEADER;
    this._carryFill = 0;
    return pos;
  }

  /**
   * Validate a complete header in the documented order and, when it passes, account the
   * frame to the message in progress. Returns 0 or a CodecErrno.
   */
  private _checkHeader(b0: number, b1: number, lengthHigh: number, length: number): number {
    const opcode = b0 & 0x0f;
    if ((opcode > 0x2 && opcode < 0x8) || opcode > 0xa) return CodecErrno.BadOpcode;
    const control = opcode >= 0x8;
    if ((b0 & 0x30) !== 0) return CodecErrno.ReservedBits;
    if ((b0 & 0x40) !== 0 && (!this._allowRsv1 || control || opcode === 0)) return CodecErrno.ReservedBits;
    const fin = (b0 & 0x80) !== 0;
    if (control && !fin) return CodecErrno.ControlFragmented;
    if (opcode === 0 && !this._inMessage) return CodecErrno.UnexpectedContinuation;
    if ((opcode === 1 || opcode === 2) && this._inMessage) return CodecErrno.ExpectedContinuation;
    const masked = (b1 & 0x80) !== 0;
    if (this._server && !masked) return CodecErrno.MaskExpected;
    if (!this._server && masked) return CodecErrno.MaskUnexpected;
    if (control && (b1 & 0x7f) > 125) return CodecErrno.ControlTooLong;
    if (lengthHigh >= 0x80000000) return CodecErrno.LengthTopBit;
    if (lengthHigh !== 0 || length > this._maxFrameBytes) return CodecErrno.FrameTooBig;
    if (control) return 0;
    const bytes = (opcode === 0 ? this._messageBytes : 0) + length;
    if (bytes > this._maxMessageBytes) return CodecErrno.MessageTooBig;
    const frames = (opcode === 0 ? this._messageFrames : 0) + 1;
    if (frames > this._maxFragments) return CodecErrno.TooManyFragments;
    if (fin) {
      this._inMessage = false;
      this._messageBytes = 0;
      this._messageFrames = 0;
    } else {
      this._inMessage = true;
      this._messageBytes = bytes;
      this._messageFrames = frames;
    }
    return 0;
  }
}

/** A runner, or null when the runtime cannot make one (the parser works without). */
function tryRunner(create: CreateFrameRunner, maxFrames: number): FrameRunner | null {
  try {
    return create(maxFrames);
  } catch {
    return null;
  }
}

/** Descriptor info bits (opcode, FIN, RSV1-3) from the first header byte. */
function infoOf(b0: number): number {
  return (b0 & 0x0f) | ((b0 & 0x80) >>> 3) | ((b0 & 0x40) >>> 1) | ((b0 & 0x20) << 1) | ((b0 & 0x10) << 3);
}
