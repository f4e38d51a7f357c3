// RFC 6455 framing: an incremental parser and an encoder, both free of N-API so that the
// fuzz targets (native/fuzz/) link them without Node.
//
// Readings of the contract in src/codec/types.ts that the TypeScript twin must share
// (where types.ts is silent, the choice closest to RFC 6455 was taken):
//
//  1. Validation runs once a frame's whole header is present (2 bytes, + 2 or 8 of
//     extended length, + 4 of mask key). A chunk ending inside a header is carried, never
//     refused, so the errno never depends on where chunks are cut. Checks in wire order,
//     the first failure wins:
//        BadOpcode (opcode 3-7, B-F)
//        ReservedBits (RSV2 or RSV3; RSV1 unless allowRsv1 and the frame is text/binary,
//                      i.e. the first frame of a data message - RFC 7692 §6.1)
//        ControlFragmented (control frame with FIN clear)
//        UnexpectedContinuation / ExpectedContinuation
//        MaskExpected (server role, unmasked) / MaskUnexpected (client role, masked)
//        ControlTooLong (control frame whose 7-bit length is 126 or 127, i.e. > 125)
//        LengthTopBit (64-bit length with the most significant bit set)
//        FrameTooBig (payload > maxFrameBytes; control frames included)
//        MessageTooBig (text/binary/continuation: message bytes so far + payload
//                      > maxMessageBytes; a single unfragmented frame counts too)
//        TooManyFragments (text/binary/continuation: frames of the message, the first
//                      included, > maxFragments)
//     Non-minimal length encodings are accepted (as ws does). Accepted headers update
//     the message state at once (before their payload arrives).
//  2. CARRY: every frame whose bytes began in an earlier chunk is described with CARRY,
//     even when only part of its header was carried and its payload lies wholly in this
//     chunk. Its payload is copied (and unmasked) into `carry`; descriptor offset is 0 and
//     `carry` is a view of exactly `length` bytes. A zero-length carried frame is CARRY
//     with offset 0, length 0.
//  3. resume: when `descriptors` is full and bytes remain after the last described frame,
//     resume = offset of those bytes (whether or not they hold a whole frame; they are
//     neither carried nor checked). When nothing remains, resume = -1.
//  4. Errors: the return value is -errno; state = {count, -1, errno, errorOffset} where
//     count is the number of valid frames described in this call before the bad one
//     (their descriptors are valid, and the caller may deliver them before failing), and
//     errorOffset is the chunk offset of the bad header, or the call's start offset when
//     that header began in an earlier chunk. The parser is then dead: later calls return
//     the same -errno with state = {0, -1, errno, errorOffset of the failure}.
//  5. pendingBytes = bytes of the partial frame received so far (header + payload).
//     reset() also clears `state` to {0, -1, 0, 0}.
//  5b. `carry` outside a call that described a CARRY frame is an empty Buffer; after one,
//     a view of exactly that frame's payload (pooled memory, recycled at the next call).
//  6. A frame the process cannot allocate carry memory for is refused as FrameTooBig.
//  7. Descriptor offsets and lengths are uint32: maxFrameBytes is clamped to 0xFFFFFFFF
//     and chunks over 0xFFFFFFFF bytes are refused by the binding.
//  8. Constructor: role 0|1; limits non-negative integers or Infinity; maxFramesPerCall an
//     integer in 1..2^20 (TypeError for a wrong type, RangeError out of range).
//     Encoder: opcode must be 0,1,2,8,9,10; control frames need fin and no rsv1 and at
//     most 125 bytes; rsv1 is refused on continuation frames. Lengths use the minimal
//     encoding; the client role sets MASK with a fresh key from getrandom(2).
#ifndef SLUICE_FRAME_H
#define SLUICE_FRAME_H

#include <cstddef>
#include <cstdint>

namespace sluice {

/**
 * Memory for frames that span chunks. Two regions at most: the frame being received and
 * the completed frame described (as CARRY) by the current call, which a new partial frame
 * in the same call must not overwrite.
 */
class CarryStore {
 public:
  virtual ~CarryStore() = default;
  // Memory for the frame being received: at least n writable bytes (its whole payload),
  // or nullptr when the memory cannot be had. Replaces any earlier in-progress region.
  virtual uint8_t* Reserve(size_t n) = 0;
  // The frame being received is complete and described: keep its memory readable (it is
  // `carry`) until Recycle.
  virtual void Complete() = 0;
  // A new call begins (or the parser is reset): the completed frame's memory may go.
  virtual void Recycle() = 0;
  // The frame being received is abandoned (error or reset).
  virtual void Discard() = 0;
};

struct FrameLimits {
  bool server = false;  // expects masked frames
  uint64_t max_frame_bytes = 1 << 20;
  uint64_t max_message_bytes = 1 << 20;
  uint64_t max_fragments = 1024;
  bool allow_rsv1 = false;
  // Take runs of common frames through frame_run.h (off only to test the general loop
  // against it: both must describe the same frames).
  bool fast_path = true;
};

class FrameParserCore {
 public:
  explicit FrameParserCore(const FrameLimits& limits);

  // Parses chunk[offset..len) (see the readings above). desc holds max_frames * 4 words;
  // state holds 4 words. Masked payloads in chunk are unmasked in place.
  int32_t Parse(uint8_t* chunk, size_t len, size_t offset, uint32_t* desc, uint32_t max_frames,
                int32_t* state, CarryStore* store);

  // Length of the CARRY frame described by the last Parse; has_carry_frame() says whether
  // there was one. Its payload is in the store's completed region.
  size_t carry_length() const { return carry_out_len_; }
  bool has_carry_frame() const { return carry_described_; }

  size_t PendingBytes() const;
  void Reset(CarryStore* store);

 private:
  struct Header {
    uint32_t info;      // descriptor word 0 (without CARRY)
    uint32_t mask_key;  // big endian
    uint8_t key[4];
    uint64_t payload_len;
    size_t size;  // header bytes
  };
  // Bytes the header starting at h needs, given avail >= 2 of them.
  static size_t HeaderSize(const uint8_t* h);
  // Validates a complete header and, when it is accepted, updates the message state.
  int32_t Accept(const uint8_t* h, Header* out);
  int32_t Fail(int32_t err, size_t error_offset, uint32_t count, int32_t* state,
               CarryStore* store);

  FrameLimits limits_;
  // Longest payload of a fast run (frame_run.h), or -1 when runs are off.
  int32_t run_max_len_ = -1;
  // Partial header.
  uint8_t hdr_[14];
  size_t hdr_len_ = 0;
  // Partial payload (header already accepted).
  bool in_payload_ = false;
  Header cur_{};
  uint8_t* carry_ = nullptr;
  uint64_t got_ = 0;
  // Output of the last call.
  bool carry_described_ = false;
  size_t carry_out_len_ = 0;
  // Message sequencing.
  bool in_message_ = false;
  uint64_t message_bytes_ = 0;
  uint64_t message_frames_ = 0;
  // Dead after an error.
  int32_t errno_ = 0;
  int32_t error_offset_ = 0;
};

/** Random bytes for mask keys, drawn from getrandom(2) a block at a time. */
class MaskKeySource {
 public:
  // Writes 4 fresh random bytes; false when the kernel gives none.
  bool Next(uint8_t out[4]);

 private:
  bool Refill();
  uint8_t pool_[4096];
  size_t pos_ = sizeof(pool_);
};

/** A growing output buffer of encoded frames. */
class FrameEncoderCore {
 public:
  FrameEncoderCore(bool client, size_t initial_capacity)
      : client_(client), initial_capacity_(initial_capacity) {}
  ~FrameEncoderCore();
  FrameEncoderCore(const FrameEncoderCore&) = delete;
  FrameEncoderCore& operator=(const FrameEncoderCore&) = delete;

  // Appends one frame (arguments validated by the caller). key: 4 mask bytes in client
  // role, ignored in server role. False when memory runs out (nothing is appended).
  bool Append(uint8_t opcode, const uint8_t* payload, size_t n, bool fin, bool rsv1,
              const uint8_t* key);

  size_t length() const { return len_; }
  const uint8_t* data() const { return buf_; }
  bool client() const { return client_; }
  // Gives up the buffer (caller frees it with std::free) and starts afresh.
  uint8_t* Release(size_t* len);
  // Forgets the bytes but keeps the memory for the next frames.
  void Clear() { len_ = 0; }

 private:
  bool Grow(size_t need);
  bool client_;
  size_t initial_capacity_;
  uint8_t* buf_ = nullptr;
  size_t len_ = 0;
  size_t cap_ = 0;
};

// Largest header: 2 + 8 (64-bit length) + 4 (mask key).
constexpr size_t kMaxFrameHeaderBytes = 14;

// Writes a frame header at out (kMaxFrameHeaderBytes available); returns its size.
size_t WriteFrameHeader(uint8_t* out, uint8_t opcode, uint64_t n, bool fin, bool rsv1,
                        const uint8_t* key);

}  // namespace sluice

#endif  // SLUICE_FRAME_H
