// UTF-8 validation of a text message that arrives in fragments: the native twin of
// src/codec/utf8-stream.ts (same readings: fail at the fragment that proves the message
// bad; a code point cut by a fragment boundary is carried, and its prefix checked).
#ifndef SLUICE_ENGINE_UTF8_STREAM_H_
#define SLUICE_ENGINE_UTF8_STREAM_H_

#include <cstddef>
#include <cstdint>

namespace sluice {

class Utf8Stream {
 public:
  void Reset() { held_len_ = 0; }
  // The next fragment of the message; `fin` on the last. False as soon as the message
  // cannot be valid UTF-8.
  bool Push(const uint8_t* p, size_t n, bool fin);

 private:
  uint8_t held_[4] = {0, 0, 0, 0};
  size_t held_len_ = 0;
};

}  // namespace sluice

#endif  // SLUICE_ENGINE_UTF8_STREAM_H_
