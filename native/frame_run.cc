// The frame parser's fast path: runs of common whole frames described without the
// general state machine. See frame_run.h.
#include "frame_run.h"

#include <cstring>

#include "codec_abi.h"
#include "mask.h"

namespace sluice {

namespace {

// First header byte of the frames the fast path takes: FIN, no RSV bit, and an opcode that
// starts and ends a message (text, binary) or a control frame (close, ping, pong).
// 1 = data, 2 = control.
constexpr uint8_t FastKind(unsigned b0) {
  return b0 == 0x81 || b0 == 0x82 ? 1 : (b0 >= 0x88 && b0 <= 0x8a ? 2 : 0);
}
struct FastKinds {
  uint8_t kind[256];
  constexpr FastKinds() : kind() {
    for (unsigned i = 0; i < 256; i++) kind[i] = FastKind(i);
  }
};
constexpr FastKinds kFastKinds;

// Payloads up to this size are unmasked by UnmaskShort, above it by XorMask (a C++ loop
// over 64 KiB of masked frames, ns per frame, UnmaskShort vs XorMask: 300 B 8.2 vs 11.7,
// 512 B 11.2 vs 8.7).
constexpr uint32_t kShortUnmaskBytes = 256;

// Unmasks a short payload in place with 8-byte words: below a few hundred bytes this beats
// XorMask, whose key rotation and wide-vector dispatch cost more than the bytes.
inline void UnmaskShort(uint8_t* p, size_t n, const uint8_t* key) {
  uint32_t k4;
  std::memcpy(&k4, key, 4);
  const uint64_t k8 = (static_cast<uint64_t>(k4) << 32) | k4;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    w ^= k8;
    std::memcpy(p + i, &w, 8);
  }
  for (; i < n; i++) p[i] ^= key[i & 3];
}

inline uint32_t LoadBigEndian32(const uint8_t* p) {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) |
         (static_cast<uint32_t>(p[2]) << 8) | static_cast<uint32_t>(p[3]);
}

// Writes one descriptor. On little-endian hosts as two 64-bit stores (words 0+1, 2+3):
// the fast path is bound by stores as much as by its loads, and this halves them.
inline void StoreDescriptor(uint32_t* d, uint32_t info, uint32_t offset, uint32_t length,
                            uint32_t mask_key) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  static_assert(desc::kInfo == 0 && desc::kOffset == 1 && desc::kLength == 2 && desc::kMaskKey == 3,
                "descriptor word order");
  const uint64_t lo = info | (static_cast<uint64_t>(offset) << 32);
  const uint64_t hi = length | (static_cast<uint64_t>(mask_key) << 32);
  std::memcpy(d, &lo, 8);
  std::memcpy(d + 2, &hi, 8);
#else
  d[desc::kInfo] = info;
  d[desc::kOffset] = offset;
  d[desc::kLength] = length;
  d[desc::kMaskKey] = mask_key;
#endif
}

// Writes the descriptor of the frame whose payload is chunk[body..body+n) and, in the server
// role, unmasks that payload in place with the key in the 4 bytes before it.
template <bool kServer>
inline void Describe(uint8_t* chunk, size_t body, uint32_t n, uint32_t info, uint32_t* d) {
  if (!kServer) {
    StoreDescriptor(d, info, static_cast<uint32_t>(body), n, 0);
    return;
  }
  StoreDescriptor(d, info, static_cast<uint32_t>(body), n, LoadBigEndian32(chunk + body - 4));
  // The key is copied first: unmasking must not depend on bytes it is rewriting.
  uint8_t key[4];
  std::memcpy(key, chunk + body - 4, 4);
  if (n <= kShortUnmaskBytes) UnmaskShort(chunk + body, n, key);
  else XorMask(chunk + body, chunk + body, n, key, 0);
}

// A run of frames whose headers (before the mask key) are byte for byte the same as the
// one at pos, which the caller has checked: same opcode, flags and length, so the same
// verdict. Frame k starts at pos + k * stride without reading frame k-1's length, so the
// loads of consecutive frames do not wait for one another (the general loop's next
// position depends on a load, which bounds it at one load latency per frame).
template <bool kServer, typename HeaderWord>
inline size_t SameHeaderRun(uint8_t* chunk, size_t len, size_t pos, size_t stride, uint32_t info,
                            uint32_t n, uint32_t* desc, uint32_t max_frames, uint32_t* count_io) {
  constexpr size_t kHdr = sizeof(HeaderWord);
  constexpr size_t kKeyBytes = kServer ? 4 : 0;
  HeaderWord first;
  std::memcpy(&first, chunk + pos, kHdr);
  uint32_t count = *count_io;
  while (count < max_frames && stride <= len - pos) {
    HeaderWord h;
    std::memcpy(&h, chunk + pos, kHdr);
    if (h != first) break;
    const size_t body = pos + kHdr + kKeyBytes;
    Describe<kServer>(chunk, body, n, info, desc + static_cast<size_t>(count) * kDescriptorWords);
    count++;
    pos += stride;
  }
  *count_io = count;
  return pos;
}

template <bool kServer>
size_t Run(uint8_t* chunk, size_t len, size_t pos, uint32_t* desc, uint32_t max_frames,
           uint32_t* count_io, bool in_message, uint32_t max_len) {
  // Inside a fragmented message only control frames qualify (kind 2).
  const uint8_t min_kind = in_message ? 2 : 1;
  constexpr uint32_t kMaskBit = kServer ? 0x80u : 0u;
  constexpr size_t kKeyBytes = kServer ? 4 : 0;
  constexpr uint32_t kInfoBits = desc::kFin | (kServer ? desc::kMasked : 0u);
  uint32_t count = *count_io;
  while (count < max_frames && len - pos >= 2) {
    const uint8_t kind = kFastKinds.kind[chunk[pos]];
    // The mask bit of the wrong role makes it > 127, so it leaves the run.
    const uint32_t b1 = kServer ? chunk[pos + 1] ^ kMaskBit : chunk[pos + 1];
    if (kind < min_kind) break;  // kind 0: not a fast frame
    uint32_t n;
    size_t body;
    if (b1 < 126) {
      n = b1;
      body = pos + 2 + kKeyBytes;
    } else if (b1 == 126 && kind == 1) {
      if (len - pos < 4) break;
      n = (static_cast<uint32_t>(chunk[pos + 2]) << 8) | chunk[pos + 3];
      body = pos + 4 + kKeyBytes;
    } else {
      break;
    }
    if (n > max_len || body > len || n > len - body) break;
    const uint32_t info = (chunk[pos] & 0x0fu) | kInfoBits;
    // The next frame has the same header: describe the run without the load chain.
    const size_t stride = body + n - pos;
    const size_t hdr = body - pos - kKeyBytes;
    if (len - pos >= stride + hdr && std::memcmp(chunk + pos, chunk + pos + stride, hdr) == 0) {
      pos = hdr == 2 ? SameHeaderRun<kServer, uint16_t>(chunk, len, pos, stride, info, n, desc, max_frames, &count)
                     : SameHeaderRun<kServer, uint32_t>(chunk, len, pos, stride, info, n, desc, max_frames, &count);
      continue;
    }
    Describe<kServer>(chunk, body, n, info, desc + static_cast<size_t>(count) * kDescriptorWords);
    count++;
    pos = body + n;
  }
  *count_io = count;
  return pos;
}

}  // namespace

int32_t RunMaxLength(uint64_t max_frame_bytes, uint64_t max_message_bytes, uint64_t max_fragments) {
  if (max_fragments < 1) return -1;
  uint64_t m = 0xffff;
  if (max_frame_bytes < m) m = max_frame_bytes;
  if (max_message_bytes < m) m = max_message_bytes;
  return static_cast<int32_t>(m);
}

size_t DescribeRun(uint8_t* chunk, size_t len, size_t pos, uint32_t* desc, uint32_t max_frames,
                   uint32_t* count_io, bool server, bool in_message, uint32_t max_len) {
  if (pos >= len) return pos;
  return server ? Run<true>(chunk, len, pos, desc, max_frames, count_io, in_message, max_len)
                : Run<false>(chunk, len, pos, desc, max_frames, count_io, in_message, max_len);
}

}  // namespace sluice
