// WebSocket masking (RFC 6455 §5.3): XOR with a repeating 4-byte key.
#ifndef SLUICE_MASK_H
#define SLUICE_MASK_H

#include <cstddef>
#include <cstdint>

namespace sluice {

// dst[i] = src[i] ^ key[(phase + i) & 3] for i < n. dst may equal src (in-place unmask);
// partially overlapping ranges at different addresses are not supported. `phase` lets a
// payload that arrives in pieces be unmasked piece by piece.
void XorMask(uint8_t* dst, const uint8_t* src, size_t n, const uint8_t key[4], size_t phase);

}  // namespace sluice

#endif  // SLUICE_MASK_H
