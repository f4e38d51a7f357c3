#include "frame_cursor.h"

#include <cstring>

#include "../codec_abi.h"

namespace sluice {

namespace {
inline bool IsControl(uint32_t op) { return op >= 0x8; }
inline bool IsReservedOpcode(uint32_t op) { return (op >= 0x3 && op <= 0x7) || op >= 0xb; }
}  // namespace

size_t FrameCursor::HeaderSize(const uint8_t* h) {
  const uint8_t len7 = h[1] & 0x7f;
  size_t size = 2;
  if (len7 == 126) size += 2;
  else if (len7 == 127) size += 8;
  if (h[1] & 0x80) size += 4;
  return size;
}

// The checks and their order are FrameParserCore::Accept's (frame.cc), so that both
// implementations refuse the same frames with the same error.
int32_t FrameCursor::Accept(const uint8_t* h, FrameHeader* out) {
  using namespace codec_errno;
  const uint8_t b0 = h[0];
  const uint8_t b1 = h[1];
  const uint32_t op = b0 & 0x0f;
  const bool fin = b0 & 0x80;
  const bool rsv1 = b0 & 0x40;
  const bool masked = b1 & 0x80;
  const uint8_t len7 = b1 & 0x7f;
  const bool control = IsControl(op);

  if (IsReservedOpcode(op)) return kBadOpcode;
  if (b0 & 0x30) return kReservedBits;
  if (rsv1 && (!limits_.allow_rsv1 || op == opcode::kContinuation || control)) return kReservedBits;
  if (control && !fin) return kControlFragmented;
  if (op == opcode::kContinuation && !in_message_) return kUnexpectedContinuation;
  if ((op == opcode::kText || op == opcode::kBinary) && in_message_) return kExpectedContinuation;
  if (limits_.server && !masked) return kMaskExpected;
  if (!limits_.server && masked) return kMaskUnexpected;
  if (control && len7 > 125) return kControlTooLong;

  uint64_t plen = len7;
  size_t p = 2;
  if (len7 == 126) {
    plen = (static_cast<uint64_t>(h[2]) << 8) | h[3];
    p = 4;
  } else if (len7 == 127) {
    plen = 0;
    for (size_t i = 0; i < 8; i++) plen = (plen << 8) | h[2 + i];
    if (plen >> 63) return kLengthTopBit;
    p = 10;
  }
  if (plen > limits_.max_frame_bytes) return kFrameTooBig;
  if (!control) {
    const uint64_t frames = op == opcode::kContinuation ? message_frames_ + 1 : 1;
    const uint64_t bytes = op == opcode::kContinuation ? message_bytes_ + plen : plen;
    if (bytes > limits_.max_message_bytes) return kMessageTooBig;
    if (frames > limits_.max_fragments) return kTooManyFragments;
    message_frames_ = frames;
    message_bytes_ = bytes;
    in_message_ = !fin;
  }
  out->opcode = static_cast<uint8_t>(op);
  out->fin = fin;
  out->rsv1 = rsv1;
  out->masked = masked;
  out->length = plen;
  std::memset(out->key, 0, 4);
  if (masked) {
    std::memcpy(out->key, h + p, 4);
    p += 4;
  }
  out->size = static_cast<uint8_t>(p);
  return 0;
}

bool FrameCursor::Feed(uint8_t* data, size_t len, FrameVisitor* v) {
  if (dead()) return false;
  size_t pos = 0;
  while (pos < len) {
    if (!in_payload_) {
      // A header: wholly inside this read, or gathered across reads into hdr_.
      uint8_t* h;
      bool in_read;
      size_t need;
      if (hdr_len_ == 0 && len - pos >= 2 && len - pos >= HeaderSize(data + pos)) {
        h = data + pos;
        in_read = true;
        need = HeaderSize(h);
        pos += need;
      } else {
        while (hdr_len_ < 2 && pos < len) hdr_[hdr_len_++] = data[pos++];
        if (hdr_len_ < 2) return true;
        need = HeaderSize(hdr_);
        while (hdr_len_ < need && pos < len) hdr_[hdr_len_++] = data[pos++];
        if (hdr_len_ < need) return true;
        h = hdr_;
        in_read = false;
        hdr_len_ = 0;
      }
      int32_t err = Accept(h, &cur_);
      if (err != 0) {
        errno_ = err;
        v->OnError(err);
        return false;
      }
      got_ = 0;
      in_payload_ = true;
      if (!v->OnHeader(cur_, h, in_read)) {
        stopped_ = true;
        return false;
      }
      if (cur_.length == 0) {
        in_payload_ = false;
        if (!v->OnPayload(data + pos, 0, 0, true)) {
          stopped_ = true;
          return false;
        }
      }
      continue;
    }
    const uint64_t left = cur_.length - got_;
    const size_t take = static_cast<size_t>(left < len - pos ? left : len - pos);
    const uint64_t offset = got_;
    got_ += take;
    const bool last = got_ == cur_.length;
    if (last) in_payload_ = false;
    uint8_t* p = data + pos;
    pos += take;
    if (!v->OnPayload(p, take, offset, last)) {
      stopped_ = true;
      return false;
    }
  }
  return true;
}

}  // namespace sluice
