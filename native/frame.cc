#include "frame.h"

#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "codec_abi.h"
#include "frame_run.h"
#include "mask.h"

namespace sluice {

namespace {

inline bool IsControl(uint32_t op) { return op >= 0x8; }
inline bool IsReservedOpcode(uint32_t op) { return (op >= 0x3 && op <= 0x7) || op >= 0xb; }

inline void WriteDescriptor(uint32_t* d, uint32_t info, uint32_t offset, uint32_t length,
                            uint32_t mask_key) {
  d[desc::kInfo] = info;
  d[desc::kOffset] = offset;
  d[desc::kLength] = length;
  d[desc::kMaskKey] = mask_key;
}

inline void WriteState(int32_t* state, uint32_t count, int32_t resume, int32_t err,
                       int32_t error_offset) {
  state[state::kCount] = static_cast<int32_t>(count);
  state[state::kResume] = resume;
  state[state::kErrno] = err;
  state[state::kErrorOffset] = error_offset;
}

}  // namespace

FrameParserCore::FrameParserCore(const FrameLimits& limits) : limits_(limits) {
  // Descriptor lengths are uint32 words.
  if (limits_.max_frame_bytes > 0xffffffffull) limits_.max_frame_bytes = 0xffffffffull;
  run_max_len_ = limits_.fast_path ? RunMaxLength(limits_.max_frame_bytes, limits_.max_message_bytes,
                                                  limits_.max_fragments)
                                   : -1;
}

size_t FrameParserCore::HeaderSize(const uint8_t* h) {
  const uint8_t len7 = h[1] & 0x7f;
  size_t size = 2;
  if (len7 == 126) size += 2;
  else if (len7 == 127) size += 8;
  if (h[1] & 0x80) size += 4;
  return size;
}

int32_t FrameParserCore::Accept(const uint8_t* h, Header* out) {
  using namespace codec_errno;
  const uint8_t b0 = h[0];
  const uint8_t b1 = h[1];
  const uint32_t op = b0 & 0x0f;
  const bool fin = b0 & 0x80;
  const bool rsv1 = b0 & 0x40;
  const bool masked = b1 & 0x80;
  const uint8_t len7 = b1 & 0x7f;
  const bool control = IsControl(op);

  if (IsReservedOpcode(op)) return -kBadOpcode;
  if (b0 & 0x30) return -kReservedBits;
  if (rsv1 && (!limits_.allow_rsv1 || op == opcode::kContinuation || control)) {
    return -kReservedBits;
  }
  if (control && !fin) return -kControlFragmented;
  if (op == opcode::kContinuation && !in_message_) return -kUnexpectedContinuation;
  if ((op == opcode::kText || op == opcode::kBinary) && in_message_) {
    return -kExpectedContinuation;
  }
  if (limits_.server && !masked) return -kMaskExpected;
  if (!limits_.server && masked) return -kMaskUnexpected;
  if (control && len7 > 125) return -kControlTooLong;

  uint64_t plen = len7;
  size_t p = 2;
  if (len7 == 126) {
    plen = (static_cast<uint64_t>(h[2]) << 8) | h[3];
    p = 4;
  } else if (len7 == 127) {
    plen = 0;
    for (size_t i = 0; i < 8; i++) plen = (plen << 8) | h[2 + i];
    if (plen >> 63) return -kLengthTopBit;
    p = 10;
  }
  if (plen > limits_.max_frame_bytes) return -kFrameTooBig;

  uint64_t frames = 0;
  uint64_t bytes = 0;
  if (!control) {
    frames = op == opcode::kContinuation ? message_frames_ + 1 : 1;
    // No overflow: message_bytes_ <= max_message_bytes and plen <= 0xffffffff.
    bytes = op == opcode::kContinuation ? message_bytes_ + plen : plen;
    if (bytes > limits_.max_message_bytes) return -kMessageTooBig;
    if (frames > limits_.max_fragments) return -kTooManyFragments;
  }

  out->info = op | (fin ? desc::kFin : 0) | (rsv1 ? desc::kRsv1 : 0) | (masked ? desc::kMasked : 0);
  out->payload_len = plen;
  out->mask_key = 0;
  std::memset(out->key, 0, 4);
  if (masked) {
    std::memcpy(out->key, h + p, 4);
    out->mask_key = (static_cast<uint32_t>(h[p]) << 24) | (static_cast<uint32_t>(h[p + 1]) << 16) |
                    (static_cast<uint32_t>(h[p + 2]) << 8) | static_cast<uint32_t>(h[p + 3]);
    p += 4;
  }
  out->size = p;

  // The header is accepted: advance the message state now, so limits hold before the
  // payload arrives.
  if (!control) {
    if (fin) {
      in_message_ = false;
      message_frames_ = 0;
      message_bytes_ = 0;
    } else {
      in_message_ = true;
      message_frames_ = frames;
      message_bytes_ = bytes;
    }
  }
  return 0;
}

int32_t FrameParserCore::Fail(int32_t err, size_t error_offset, uint32_t count, int32_t* state,
                              CarryStore* store) {
  if (in_payload_) store->Discard();
  errno_ = -err;
  error_offset_ = static_cast<int32_t>(error_offset);
  hdr_len_ = 0;
  in_payload_ = false;
  carry_ = nullptr;
  got_ = 0;
  WriteState(state, count, -1, errno_, error_offset_);
  return err;
}

int32_t FrameParserCore::Parse(uint8_t* chunk, size_t len, size_t offset, uint32_t* desc,
                               uint32_t max_frames, int32_t* state, CarryStore* store) {
  carry_described_ = false;
  carry_out_len_ = 0;
  store->Recycle();
  if (errno_) {
    WriteState(state, 0, -1, errno_, error_offset_);
    return -errno_;
  }
  size_t pos = offset;
  uint32_t count = 0;

  // 1. Complete the frame carried over from earlier chunks.
  if (hdr_len_ > 0 || in_payload_) {
    if (!in_payload_) {
      // Gather the header: first the 2 bytes that tell its size, then the rest.
      while (hdr_len_ < 2 && pos < len) hdr_[hdr_len_++] = chunk[pos++];
      if (hdr_len_ < 2) {
        WriteState(state, 0, -1, 0, 0);
        return 0;
      }
      const size_t need = HeaderSize(hdr_);
      const size_t take = need - hdr_len_ < len - pos ? need - hdr_len_ : len - pos;
      std::memcpy(hdr_ + hdr_len_, chunk + pos, take);
      hdr_len_ += take;
      pos += take;
      if (hdr_len_ < need) {
        WriteState(state, 0, -1, 0, 0);
        return 0;
      }
      int32_t rc = Accept(hdr_, &cur_);
      if (rc) return Fail(rc, offset, 0, state, store);
      carry_ = nullptr;
      if (cur_.payload_len > 0) {
        carry_ = store->Reserve(static_cast<size_t>(cur_.payload_len));
        if (!carry_) return Fail(-codec_errno::kFrameTooBig, offset, 0, state, store);
      }
      in_payload_ = true;
      got_ = 0;
    }
    const uint64_t want = cur_.payload_len - got_;
    const size_t take = want < len - pos ? static_cast<size_t>(want) : len - pos;
    if (take) {
      uint8_t* dst = carry_ + got_;
      if (cur_.info & desc::kMasked) XorMask(dst, chunk + pos, take, cur_.key, got_);
      else std::memcpy(dst, chunk + pos, take);
      got_ += take;
      pos += take;
    }
    if (got_ < cur_.payload_len) {
      WriteState(state, 0, -1, 0, 0);
      return 0;
    }
    WriteDescriptor(desc, cur_.info | desc::kCarry, 0, static_cast<uint32_t>(cur_.payload_len),
                    cur_.mask_key);
    count = 1;
    store->Complete();
    carry_described_ = true;
    carry_out_len_ = static_cast<size_t>(cur_.payload_len);
    in_payload_ = false;
    hdr_len_ = 0;
    got_ = 0;
  }

  // 2. Whole frames inside the chunk: runs of common frames take the fast path, anything
  // else (and the frame that ends a run) one step of the general loop, then back.
  int32_t resume = -1;
  while (pos < len) {
    if (run_max_len_ >= 0) {
      pos = DescribeRun(chunk, len, pos, desc, max_frames, &count, limits_.server, in_message_,
                        static_cast<uint32_t>(run_max_len_));
      if (pos >= len) break;
    }
    if (count == max_frames) {
      resume = static_cast<int32_t>(pos);
      break;
    }
    const size_t avail = len - pos;
    if (avail < 2 || avail < HeaderSize(chunk + pos)) {
      std::memcpy(hdr_, chunk + pos, avail);
      hdr_len_ = avail;
      pos = len;
      break;
    }
    Header h;
    int32_t rc = Accept(chunk + pos, &h);
    if (rc) return Fail(rc, pos, count, state, store);
    const size_t body = pos + h.size;
    if (h.payload_len > len - body) {
      // Cut by the end of the chunk: carry the payload received so far.
      cur_ = h;
      carry_ = store->Reserve(static_cast<size_t>(h.payload_len));
      if (!carry_) return Fail(-codec_errno::kFrameTooBig, pos, count, state, store);
      const size_t have = len - body;
      if (h.info & desc::kMasked) XorMask(carry_, chunk + body, have, h.key, 0);
      else if (have) std::memcpy(carry_, chunk + body, have);
      got_ = have;
      in_payload_ = true;
      pos = len;
      break;
    }
    const size_t plen = static_cast<size_t>(h.payload_len);
    if (h.info & desc::kMasked) XorMask(chunk + body, chunk + body, plen, h.key, 0);
    WriteDescriptor(desc + count * kDescriptorWords, h.info, static_cast<uint32_t>(body),
                    static_cast<uint32_t>(plen), h.mask_key);
    count++;
    pos = body + plen;
  }
  WriteState(state, count, resume, 0, 0);
  return static_cast<int32_t>(count);
}

size_t FrameParserCore::PendingBytes() const {
  if (in_payload_) return cur_.size + static_cast<size_t>(got_);
  return hdr_len_;
}

void FrameParserCore::Reset(CarryStore* store) {
  store->Recycle();
  if (in_payload_) store->Discard();
  hdr_len_ = 0;
  in_payload_ = false;
  carry_ = nullptr;
  got_ = 0;
  carry_described_ = false;
  carry_out_len_ = 0;
  in_message_ = false;
  message_bytes_ = 0;
  message_frames_ = 0;
  errno_ = 0;
  error_offset_ = 0;
}

bool MaskKeySource::Refill() {
  size_t filled = 0;
  while (filled < sizeof(pool_)) {
    ssize_t r = getrandom(pool_ + filled, sizeof(pool_) - filled, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    filled += static_cast<size_t>(r);
  }
  if (filled < sizeof(pool_)) {
    // Kernels without getrandom(2) (before 3.17): the same source through the device.
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    while (filled < sizeof(pool_)) {
      ssize_t r = read(fd, pool_ + filled, sizeof(pool_) - filled);
      if (r <= 0) {
        if (r < 0 && errno == EINTR) continue;
        close(fd);
        return false;
      }
      filled += static_cast<size_t>(r);
    }
    close(fd);
  }
  pos_ = 0;
  return true;
}

bool MaskKeySource::Next(uint8_t out[4]) {
  if (pos_ + 4 > sizeof(pool_) && !Refill()) return false;
  std::memcpy(out, pool_ + pos_, 4);
  // Each key is used once: wipe it so the pool never hands out the same bytes twice.
  std::memset(pool_ + pos_, 0, 4);
  pos_ += 4;
  return true;
}

size_t WriteFrameHeader(uint8_t* out, uint8_t opcode, uint64_t n, bool fin, bool rsv1,
                        const uint8_t* key) {
  out[0] = static_cast<uint8_t>((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0f));
  const uint8_t mask_bit = key ? 0x80 : 0;
  size_t p;
  if (n < 126) {
    out[1] = static_cast<uint8_t>(mask_bit | n);
    p = 2;
  } else if (n <= 0xffff) {
    out[1] = mask_bit | 126;
    out[2] = static_cast<uint8_t>(n >> 8);
    out[3] = static_cast<uint8_t>(n);
    p = 4;
  } else {
    out[1] = mask_bit | 127;
    for (size_t i = 0; i < 8; i++) out[2 + i] = static_cast<uint8_t>(n >> (56 - 8 * i));
    p = 10;
  }
  if (key) {
    std::memcpy(out + p, key, 4);
    p += 4;
  }
  return p;
}

FrameEncoderCore::~FrameEncoderCore() { std::free(buf_); }

bool FrameEncoderCore::Grow(size_t need) {
  size_t cap = cap_ ? cap_ : (initial_capacity_ ? initial_capacity_ : 256);
  while (cap < need) cap = cap * 2 > cap ? cap * 2 : need;
  void* p = std::realloc(buf_, cap);
  if (!p) return false;
  buf_ = static_cast<uint8_t*>(p);
  cap_ = cap;
  return true;
}

bool FrameEncoderCore::Append(uint8_t opcode, const uint8_t* payload, size_t n, bool fin,
                              bool rsv1, const uint8_t* key) {
  const size_t need = len_ + kMaxFrameHeaderBytes + n;
  if (need < n) return false;  // size_t overflow
  if (need > cap_ && !Grow(need)) return false;
  const uint8_t* k = client_ ? key : nullptr;
  uint8_t* out = buf_ + len_;
  const size_t h = WriteFrameHeader(out, opcode, n, fin, rsv1, k);
  if (n) {
    if (k) XorMask(out + h, payload, n, k, 0);
    else std::memcpy(out + h, payload, n);
  }
  len_ += h + n;
  return true;
}

uint8_t* FrameEncoderCore::Release(size_t* len) {
  uint8_t* p = buf_;
  *len = len_;
  // Do not hand over much more memory than the bytes it holds.
  if (p && cap_ - len_ > 4096 && len_ > 0) {
    void* q = std::realloc(p, len_);
    if (q) p = static_cast<uint8_t*>(q);
  }
  buf_ = nullptr;
  len_ = 0;
  cap_ = 0;
  return p;
}

}  // namespace sluice
