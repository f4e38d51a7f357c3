#include "utf8.h"

#include <cstring>

namespace sluice {

namespace {
constexpr uint64_t kHighBits = 0x8080808080808080ull;
inline bool IsCont(uint8_t b) { return (b & 0xc0) == 0x80; }
}  // namespace

bool IsUtf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    // ASCII fast path: text payloads are mostly ASCII (JSON), 16 bytes per step.
    while (i + 16 <= n) {
      uint64_t a, b;
      std::memcpy(&a, s + i, 8);
      std::memcpy(&b, s + i + 8, 8);
      if ((a | b) & kHighBits) break;
      i += 16;
    }
    if (i + 8 <= n) {
      uint64_t a;
      std::memcpy(&a, s + i, 8);
      if (!(a & kHighBits)) {
        i += 8;
        continue;
      }
    }
    // Skip the ASCII bytes before the first non-ASCII one.
    while (i < n && s[i] < 0x80) i++;
    if (i >= n) break;

    // One multi-byte sequence, by the ranges of Unicode Table 3-7 (well-formed byte
    // sequences); the second byte's range is what excludes overlongs, surrogates and
    // code points past U+10FFFF.
    const uint8_t c = s[i];
    const size_t left = n - i;
    if (c >= 0xc2 && c <= 0xdf) {
      if (left < 2 || !IsCont(s[i + 1])) return false;
      i += 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      if (left < 3) return false;
      const uint8_t c1 = s[i + 1];
      const uint8_t lo = c == 0xe0 ? 0xa0 : 0x80;
      const uint8_t hi = c == 0xed ? 0x9f : 0xbf;
      if (c1 < lo || c1 > hi || !IsCont(s[i + 2])) return false;
      i += 3;
    } else if (c >= 0xf0 && c <= 0xf4) {
      if (left < 4) return false;
      const uint8_t c1 = s[i + 1];
      const uint8_t lo = c == 0xf0 ? 0x90 : 0x80;
      const uint8_t hi = c == 0xf4 ? 0x8f : 0xbf;
      if (c1 < lo || c1 > hi || !IsCont(s[i + 2]) || !IsCont(s[i + 3])) return false;
      i += 4;
    } else {
      // 0x80..0xc1 (stray continuation, overlong 2-byte lead) or 0xf5..0xff.
      return false;
    }
  }
  return true;
}

}  // namespace sluice
