/**
 * The contract shared by the native codec (native/) and its TypeScript twins (src/codec/).
 * Both implementations MUST behave identically for every input: same descriptors, same
 * error numbers, same carry-over behaviour. Differential tests hold them to it.
 *
 * Numbers here are ABI: native/codec_abi.h mirrors them and must be kept in step.
 */

/** WebSocket opcodes (RFC 6455 §5.2). */
export const Opcode = {
  Continuation: 0x0,
  Text: 0x1,
  Binary: 0x2,
  Close: 0x8,
  Ping: 0x9,
  Pong: 0xa,
} as const;

/**
 * Numeric codec error numbers (ABI). A parse/decode call that fails returns `-errno`.
 * `CODEC_ERRORS[errno]` gives the stable string code and the close code.
 */
export const CodecErrno = {
  BadOpcode: 1,            // reserved opcode 0x3-0x7 / 0xB-0xF
  ControlTooLong: 2,       // control frame payload > 125
  ControlFragmented: 3,    // control frame without FIN
  ReservedBits: 4,         // RSV1/2/3 set without an extension that allows it
  MaskExpected: 5,         // server role got an unmasked frame
  MaskUnexpected: 6,       // client role got a masked frame
  LengthTopBit: 7,         // 64-bit length with the most significant bit set
  UnexpectedContinuation: 8, // continuation frame with no message in progress
  ExpectedContinuation: 9,   // new data frame while a fragmented message is in progress
  FrameTooBig: 10,         // frame payload > maxFrameBytes
  MessageTooBig: 11,       // sum of a message's fragments > maxMessageBytes
  TooManyFragments: 12,    // more than maxFragments frames in one message
  InvalidUtf8: 13,         // text payload / close reason not UTF-8 (validated by the caller)
  EnvelopeVersion: 20,     // v2 envelope: version byte != 0x02
  EnvelopeReserved: 21,    // v2 envelope: reserved byte != 0x00
  EnvelopeType: 22,        // v2 envelope: type not in 0x01..0x06
  EnvelopeLength: 23,      // v2 envelope: length field disagrees with the bytes present
  EnvelopeTooBig: 24,      // v2 envelope: length > maxPayload
  EnvelopeFlags: 25,       // v2 envelope: unknown flag bits (anything outside 0x0F)
} as const;
export type CodecErrno = typeof CodecErrno[keyof typeof CodecErrno];

/** Stable string code and WebSocket close code of every codec error number. */
export const CODEC_ERRORS: Readonly<Record<number, { code: string; closeCode: number; message: string }>> = {
  1: { code: 'SLUICE_ERR_WS_BAD_OPCODE', closeCode: 1002, message: 'reserved opcode' },
  2: { code: 'SLUICE_ERR_WS_CONTROL_TOO_LONG', closeCode: 1002, message: 'control frame payload over 125 bytes' },
  3: { code: 'SLUICE_ERR_WS_CONTROL_FRAGMENTED', closeCode: 1002, message: 'fragmented control frame' },
  4: { code: 'SLUICE_ERR_WS_RESERVED_BITS', closeCode: 1002, message: 'RSV bit set without a negotiated extension' },
  5: { code: 'SLUICE_ERR_WS_MASK_EXPECTED', closeCode: 1002, message: 'unmasked frame from a client' },
  6: { code: 'SLUICE_ERR_WS_MASK_UNEXPECTED', closeCode: 1002, message: 'masked frame from a server' },
  7: { code: 'SLUICE_ERR_WS_LENGTH_TOP_BIT', closeCode: 1002, message: '64-bit payload length with the top bit set' },
  8: { code: 'SLUICE_ERR_WS_UNEXPECTED_CONTINUATION', closeCode: 1002, message: 'continuation frame with no message in progress' },
  9: { code: 'SLUICE_ERR_WS_EXPECTED_CONTINUATION', closeCode: 1002, message: 'new message before the fragmented one finished' },
  10: { code: 'SLUICE_ERR_WS_FRAME_TOO_BIG', closeCode: 1009, message: 'frame over the size limit' },
  11: { code: 'SLUICE_ERR_WS_MESSAGE_TOO_BIG', closeCode: 1009, message: 'message over the size limit' },
  12: { code: 'SLUICE_ERR_WS_TOO_MANY_FRAGMENTS', closeCode: 1009, message: 'too many fragments in one message' },
  13: { code: 'SLUICE_ERR_WS_INVALID_UTF8', closeCode: 1007, message: 'invalid UTF-8 in a text message' },
  20: { code: 'SLUICE_ERR_ENVELOPE_VERSION', closeCode: 1002, message: 'envelope version is not 0x02' },
  21: { code: 'SLUICE_ERR_ENVELOPE_RESERVED', closeCode: 1002, message: 'envelope reserved byte is not 0x00' },
  22: { code: 'SLUICE_ERR_ENVELOPE_TYPE', closeCode: 1002, message: 'unknown envelope type' },
  23: { code: 'SLUICE_ERR_ENVELOPE_LENGTH', closeCode: 1002, message: 'envelope length does not match the bytes present' },
  24: { code: 'SLUICE_ERR_ENVELOPE_TOO_BIG', closeCode: 1009, message: 'envelope payload over the size limit' },
  25: { code: 'SLUICE_ERR_ENVELOPE_FLAGS', closeCode: 1002, message: 'unknown envelope flag bits' },
};

/**
 * Frame descriptor layout in the parser's `descriptors` Uint32Array: DESCRIPTOR_WORDS
 * words per frame, frame i at `i * DESCRIPTOR_WORDS`.
 *
 * - word 0 `info`: bits 0-3 opcode; bit 4 FIN; bit 5 RSV1; bit 6 RSV2; bit 7 RSV3;
 *   bit 8 MASKED (the frame carried a mask; its payload has already been unmasked in
 *   place); bit 9 CARRY (payload lives in `parser.carry`, not in the chunk).
 * - word 1 `offset`: payload start (in the chunk, or in `parser.carry` when CARRY).
 * - word 2 `length`: payload length in bytes.
 * - word 3 `maskKey`: the 4 mask bytes as read from the wire, big endian
 *   (byte0 << 24 | ... | byte3); 0 when not masked.
 */
export const DESCRIPTOR_WORDS = 4;
export const Desc = {
  OPCODE_MASK: 0x0f,
  FIN: 1 << 4,
  RSV1: 1 << 5,
  RSV2: 1 << 6,
  RSV3: 1 << 7,
  MASKED: 1 << 8,
  CARRY: 1 << 9,
} as const;

/**
 * The parser's `state` Int32Array (STATE_WORDS words), written by every parse call:
 * - word 0 `count`: frames described by this call (also the return value when >= 0).
 * - word 1 `resume`: offset in the chunk where parsing stopped because `descriptors`
 *   was full; -1 when the whole chunk was consumed (a partial frame at its end is kept
 *   by the parser). When >= 0 the caller handles the frames, then calls
 *   `parse(chunk, resume)` again.
 * - word 2 `errno`: the CodecErrno of the last failure, 0 if none.
 * - word 3 `errorOffset`: byte offset in the chunk of the frame header that failed.
 */
export const STATE_WORDS = 4;

/**
 * The frame parser's fast path, stateless between calls, used by the TypeScript parser
 * for long runs of small frames. `run(chunk)` reads `args` = [pos, count, maxFrames,
 * flags, maxLength], describes into `descriptors` (from frame `count` on, at most
 * `maxFrames` frames in all) the run of whole frames from `chunk[pos]` on that a parser
 * with these limits accepts without touching its message state, stopping before the
 * first frame that is not such a frame; it writes the new pos and count back into
 * args[0] and args[1] and returns the count.
 *
 * Such a frame has FIN and no RSV bit; is text/binary (not when flags has
 * RunFlag.InMessage) with a 7- or 16-bit length, or close/ping/pong with at most 125
 * bytes; is masked exactly when the role is server (RunFlag.Server; payloads are unmasked
 * in place); carries at most `maxLength` bytes (runMaxLength of the parser's limits; -1
 * takes nothing); and lies wholly inside the chunk. Its descriptor is what the parser's
 * general loop writes. Out-of-range args throw a RangeError (chunk under 2 GiB, pos in
 * 0..chunk.length, 0 <= count <= maxFrames <= the runner's maxFrames, flags 0..3,
 * maxLength -1..65535).
 */
export interface FrameRunner {
  readonly descriptors: Uint32Array;
  readonly args: Int32Array;
  run(chunk: Uint8Array): number;
}

/** Words of a FrameRunner's args: pos, count, maxFrames, flags, maxLength. */
export const RUN_ARGS = 5;

/** `flags` of a FrameRunner: the parser's role and whether a fragmented message is open. */
export const RunFlag = {
  /** Server role: frames must be masked (their payloads are unmasked in place). */
  Server: 1,
  /** Inside a fragmented message: only control frames may be taken. */
  InMessage: 2,
} as const;

/** Options of a frame parser. Defaults are in brackets. */
export interface FrameParserOptions {
  /** 'server' expects masked frames (from clients); 'client' expects unmasked ones. ['client'] */
  role?: 'client' | 'server';
  /** Largest payload of one frame. [1 MiB] */
  maxFrameBytes?: number;
  /** Largest total payload of one (possibly fragmented) data message. [1 MiB] */
  maxMessageBytes?: number;
  /** Most frames in one fragmented message. [1024] */
  maxFragments?: number;
  /** RSV1 allowed on the first frame of a data message (permessage-deflate). [false] */
  allowRsv1?: boolean;
  /** Frames described per call at most (size of `descriptors`). [1024] */
  maxFramesPerCall?: number;
}

/**
 * An incremental RFC 6455 frame parser (one per connection).
 *
 * Contract:
 * - `parse(chunk, offset)` parses every complete frame of `chunk[offset..]`, writes
 *   their descriptors into `descriptors`, and returns how many (>= 0), or `-errno`.
 * - Payloads are views: `chunk.subarray(d.offset, d.offset + d.length)`, valid while the
 *   caller keeps the chunk; masked payloads are unmasked in place inside the chunk.
 * - A frame that is cut by the end of a chunk is carried over: its header bytes and
 *   payload bytes are copied into parser-owned memory; when a later call completes it,
 *   it is described first with the CARRY bit and its payload is in `carry` (valid until
 *   the next parse call). Only the first descriptor of a call can have CARRY.
 * - After an error the parser is dead: every later call returns the same `-errno`.
 * - Limits are checked as soon as the header is known (before the payload arrives), so
 *   an oversized frame is refused without buffering it.
 *
 * Clarifications (added by the TS twin's author where the text above left a choice open;
 * native/frame.h states the same readings; the differential tests hold both to them):
 * - CARRY applies to every frame whose first byte arrived in an earlier call, even when
 *   the completing chunk holds its whole payload (that payload is then copied into
 *   `carry` too). The CARRY descriptor's `offset` is where the payload starts in `carry`
 *   (implementation-defined; tests compare payload bytes, not this offset).
 * - A header is validated once all its bytes (2..14, mask key included) are present, in
 *   this order: opcode (BadOpcode), RSV bits (ReservedBits: RSV2/RSV3 always; RSV1 unless
 *   allowRsv1 and the frame starts a data message), control without FIN
 *   (ControlFragmented), continuation/data sequencing (UnexpectedContinuation,
 *   ExpectedContinuation), mask bit (MaskExpected/MaskUnexpected), control length > 125
 *   (ControlTooLong), top bit of a 64-bit length (LengthTopBit), maxFrameBytes
 *   (FrameTooBig), data message total > maxMessageBytes (MessageTooBig, a single FIN frame
 *   counts as a message of one fragment), data frames in the message > maxFragments
 *   (TooManyFragments). Control frames never count toward a message's bytes/fragments.
 * - On an error, `count` is the number of frames described before it in that call (their
 *   descriptors are valid), the return value is -errno, `resume` is -1, and `errorOffset`
 *   is the header's offset in the chunk, or the call's `offset` argument when the header
 *   began in an earlier chunk. Later calls keep errno/errorOffset and set count 0.
 * - `resume` is checked before each frame: when `descriptors` is full and bytes remain
 *   (even only a partial frame), resume is their offset; when none remain it is -1.
 * - `pendingBytes` counts the held header bytes plus the held payload bytes of the one
 *   partial frame; it is 0 after that frame is described.
 */
export interface FrameParser {
  readonly descriptors: Uint32Array;
  readonly state: Int32Array;
  /** Payload storage of a frame that spanned chunks (see CARRY). */
  readonly carry: Buffer;
  parse(chunk: Uint8Array, offset?: number): number;
  /** Bytes held over from earlier chunks (partial header or payload). */
  readonly pendingBytes: number;
  /** Forget any partial frame and message state and clear an error (for reuse). */
  reset(): void;
}

/**
 * Appends frames to one growing output buffer so that a session can write once per
 * event-loop turn. Client role masks every frame with a fresh random key.
 */
export interface FrameEncoder {
  /** Append one frame. `rsv1` marks a compressed first frame. */
  frame(opcode: number, payload: Uint8Array, fin?: boolean, rsv1?: boolean): void;
  /** Bytes appended since the last `take()`. */
  readonly length: number;
  /**
   * Hand over the bytes appended so far (a Buffer the caller now owns: it may pass it to
   * `socket.write` and must not expect it to be reused) and start a fresh output buffer.
   * Returns null when nothing is pending.
   */
  take(): Buffer | null;
  /**
   * Optional: the caller asserts that no Buffer returned by `take()` is still in use (a
   * socket took the bytes synchronously), so later frames may reuse the same memory.
   * Saves an allocation per flush (the TypeScript encoder implements it; the native one
   * copies small outputs and does not need it).
   */
  rewind?(): void;
}

/** Envelope v2 types and flags (DESIGN "Protocols"). */
export const EnvelopeType = { Data: 1, Ping: 2, Pong: 3, Close: 4, Error: 5, Control: 6 } as const;
export const EnvelopeFlag = { Compressed: 0x01, Fragmented: 0x02, Final: 0x04, Backpressure: 0x08 } as const;
export const ENVELOPE_HEADER_BYTES = 8;

/**
 * Envelope descriptors (in a Uint32Array, ENVELOPE_DESCRIPTOR_WORDS per frame):
 * word 0 type, word 1 flags, word 2 payload offset, word 3 payload length.
 */
export const ENVELOPE_DESCRIPTOR_WORDS = 4;

/** Buffer pool statistics (per thread). */
export interface PoolStats {
  hits: number;
  misses: number;
  inUse: number;
  highWater: number;
  /** Bytes held by the pool's free lists. */
  freeBytes: number;
}

/**
 * The addon's exports (native/addon.cc), and equally the TypeScript twins' (src/codec/*.ts).
 * `src/codec/index.ts` is the only module that chooses between them.
 */
export interface CodecImplementation {
  /** role: 0 client (expects unmasked frames), 1 server (expects masked frames). */
  FrameParser: new (
    role: 0 | 1,
    maxFrameBytes: number,
    maxMessageBytes: number,
    maxFragments: number,
    allowRsv1: boolean,
    maxFramesPerCall: number,
  ) => FrameParser;
  /**
   * The parser's fast path (see FrameRunner), with room for `maxFrames` descriptors.
   * Throws when the runtime cannot make one (the parser then runs without).
   */
  createFrameRunner(maxFrames: number): FrameRunner;
  /** role: 0 client (masks every frame), 1 server (no mask). */
  FrameEncoder: new (role: 0 | 1, initialCapacity: number) => FrameEncoder;
  /**
   * XOR `length` bytes of `source` with the 4-byte `mask` into `output` at `offset`
   * (the signature of ws's bufferutil, so either can stand in for the other).
   */
  mask(source: Uint8Array, mask: Uint8Array, output: Uint8Array, offset: number, length: number): void;
  /** XOR `buffer` in place with the 4-byte `mask`. */
  unmask(buffer: Uint8Array, mask: Uint8Array): void;
  /** Write header + payload of one v2 envelope into `out` at `offset`; returns the end offset. */
  envelopeEncodeInto(out: Uint8Array, offset: number, type: number, flags: number, payload: Uint8Array): number;
  /**
   * Decode one message that must be exactly one v2 envelope. Writes type, flags, payload
   * offset, payload length into `out[0..3]`; returns 0, or -errno.
   */
  envelopeDecode(message: Uint8Array, maxPayload: number, out: Uint32Array): number;
  /**
   * Decode a run of concatenated v2 envelopes that must fill `buf` exactly. Writes
   * ENVELOPE_DESCRIPTOR_WORDS words per frame into `descriptors`; returns the frame count,
   * or -errno (-EnvelopeLength also when more frames than `descriptors` can hold).
   */
  envelopeDecodeRun(buf: Uint8Array, maxPayload: number, descriptors: Uint32Array): number;
  /** A Buffer of at least `size` bytes from the thread's tiered pool (4 KiB / 64 KiB / 1 MiB). */
  acquire(size: number): Buffer;
  /** Return a Buffer obtained from `acquire` (its full-tier backing store). */
  release(buf: Buffer): void;
  poolStats(): PoolStats;
  /** True when `buf` is valid UTF-8 (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). */
  isUtf8(buf: Uint8Array): boolean;
}
