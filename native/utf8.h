// Strict UTF-8 validation (RFC 3629 / Unicode Table 3-7).
#ifndef SLUICE_UTF8_H
#define SLUICE_UTF8_H

#include <cstddef>
#include <cstdint>

namespace sluice {

// True when buf[0..n) is well-formed UTF-8: no overlong forms, no surrogates
// (U+D800..U+DFFF), nothing above U+10FFFF, no truncated sequence at the end.
bool IsUtf8(const uint8_t* buf, size_t n);

}  // namespace sluice

#endif  // SLUICE_UTF8_H
