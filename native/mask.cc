#include "mask.h"

#include <cstring>

namespace sluice {

namespace {

// 32-byte GCC/Clang vector: SSE2 code (two xmm ops) by default, one ymm op in the AVX2
// clone below, NEON on arm64. No intrinsics, so one source serves every target.
typedef uint32_t Vec32 __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__ELF__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(SLUICE_NO_TARGET_CLONES)
#define SLUICE_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SLUICE_TARGET_CLONES
#endif

SLUICE_TARGET_CLONES
void XorMaskBulk(uint8_t* dst, const uint8_t* src, size_t n, const uint8_t k[4]) {
  // k is already rotated so that k[0] applies to src[0]; n is a multiple of 32.
  // Broadcast the key as one 32-bit lane value. (Filling the vector byte by byte made
  // every call pay a store-forwarding stall: ~15 ns, more than 300 bytes of work.)
  uint32_t k4;
  std::memcpy(&k4, k, 4);
  const Vec32 kv = Vec32{} + k4;
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    Vec32 a, b, c, d;
    std::memcpy(&a, src + i, 32);
    std::memcpy(&b, src + i + 32, 32);
    std::memcpy(&c, src + i + 64, 32);
    std::memcpy(&d, src + i + 96, 32);
    a ^= kv;
    b ^= kv;
    c ^= kv;
    d ^= kv;
    std::memcpy(dst + i, &a, 32);
    std::memcpy(dst + i + 32, &b, 32);
    std::memcpy(dst + i + 64, &c, 32);
    std::memcpy(dst + i + 96, &d, 32);
  }
  for (; i < n; i += 32) {
    Vec32 a;
    std::memcpy(&a, src + i, 32);
    a ^= kv;
    std::memcpy(dst + i, &a, 32);
  }
}

}  // namespace

void XorMask(uint8_t* dst, const uint8_t* src, size_t n, const uint8_t key[4], size_t phase) {
  uint8_t k[4] = {key[phase & 3], key[(phase + 1) & 3], key[(phase + 2) & 3],
                  key[(phase + 3) & 3]};
  if (n >= 1024) {
    // Long payloads: bring dst to a 32-byte boundary so the wide stores are aligned; the
    // key rotates with the head. Short ones skip this: unaligned loads/stores cost
    // little, a byte loop of up to 31 steps costs more.
    size_t head = (32 - (reinterpret_cast<uintptr_t>(dst) & 31)) & 31;
    for (size_t i = 0; i < head; i++) dst[i] = src[i] ^ k[i & 3];
    if (head & 3) {
      uint8_t r[4] = {k[head & 3], k[(head + 1) & 3], k[(head + 2) & 3], k[(head + 3) & 3]};
      std::memcpy(k, r, 4);
    }
    dst += head;
    src += head;
    n -= head;
  }
  // From here k[0] applies to src[0]; every step below is a multiple of 4 bytes, so the key
  // phase stays put until the final bytes.
  size_t i = n & ~static_cast<size_t>(31);
  if (i) XorMaskBulk(dst, src, i, k);
  uint64_t kw;
  const uint8_t k8[8] = {k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]};
  std::memcpy(&kw, k8, 8);
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, src + i, 8);
    w ^= kw;
    std::memcpy(dst + i, &w, 8);
  }
  for (; i < n; i++) dst[i] = src[i] ^ k[i & 3];
}

}  // namespace sluice
