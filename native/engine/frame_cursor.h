// A streaming RFC 6455 frame reader for the engine's per-read path: it walks the bytes
// of each read once, validates every header as soon as its bytes are there (the same
// rules, in the same order, as FrameParserCore in frame.h), and hands payload bytes to a
// visitor where they lie, without copying them. What to keep (a text or control frame
// that spans reads) is the visitor's choice.
#ifndef SLUICE_ENGINE_FRAME_CURSOR_H_
#define SLUICE_ENGINE_FRAME_CURSOR_H_

#include <cstddef>
#include <cstdint>

namespace sluice {

struct CursorLimits {
  bool server = false;  // expects masked frames (reads a client)
  uint64_t max_frame_bytes = 1 << 20;
  uint64_t max_message_bytes = 1 << 20;
  uint64_t max_fragments = 1024;
  bool allow_rsv1 = false;
};

struct FrameHeader {
  uint8_t opcode = 0;
  bool fin = false;
  bool rsv1 = false;
  bool masked = false;
  uint8_t key[4] = {0, 0, 0, 0};
  uint64_t length = 0;
  uint8_t size = 0;  // header bytes on the wire (2..14)
};

// What the cursor tells its reader. Every method returns false to stop the walk (the
// cursor then ignores the rest of the read and every later one).
class FrameVisitor {
 public:
  virtual ~FrameVisitor() = default;
  // A valid header. `raw` holds its `h.size` bytes: inside the read when `in_read`
  // (mutable, e.g. to rewrite the mask key), else a copy (the header spanned reads).
  virtual bool OnHeader(const FrameHeader& h, uint8_t* raw, bool in_read) = 0;
  // Payload bytes [offset, offset + n) of the current frame, still masked as sent,
  // mutable in place. `last` on the frame's last bytes. Zero-length frames get one call
  // with n == 0 and last.
  virtual bool OnPayload(uint8_t* p, size_t n, uint64_t offset, bool last) = 0;
  // A violation (codec_errno of codec_abi.h); the cursor is dead after it.
  virtual void OnError(int32_t err) = 0;
};

class FrameCursor {
 public:
  explicit FrameCursor(const CursorLimits& limits) : limits_(limits) {}

  // Walks data[0..len). Returns false once stopped or dead.
  bool Feed(uint8_t* data, size_t len, FrameVisitor* v);

  bool dead() const { return errno_ != 0 || stopped_; }
  int32_t error() const { return errno_; }
  // Inside a frame's payload (its header was seen, not all of its payload).
  bool in_payload() const { return in_payload_; }
  // Inside a fragmented data message.
  bool in_message() const { return in_message_; }
  const FrameHeader& current() const { return cur_; }
  void Stop() { stopped_ = true; }

 private:
  static size_t HeaderSize(const uint8_t* h);
  int32_t Accept(const uint8_t* h, FrameHeader* out);

  CursorLimits limits_;
  uint8_t hdr_[14];
  size_t hdr_len_ = 0;
  bool in_payload_ = false;
  FrameHeader cur_{};
  uint64_t got_ = 0;
  bool in_message_ = false;
  uint64_t message_bytes_ = 0;
  uint64_t message_frames_ = 0;
  int32_t errno_ = 0;
  bool stopped_ = false;
};

}  // namespace sluice

#endif  // SLUICE_ENGINE_FRAME_CURSOR_H_
