// permessage-deflate (RFC 7692) as the engine sees it: the two ends agreed on it, so
// compressed frames pass through untouched, but the size limit and the UTF-8 rule apply to
// what a message inflates to. An InflateMeter inflates one side's compressed messages as
// their bytes arrive (zlib, the one Node carries), counts and checks the output and drops
// it. The native twin of src/codec/inflate-meter.ts (which inflates a message whole at its
// last frame; the readings are the same: too big is 1009, data that does not inflate 1002,
// invalid UTF-8 in a text message 1007).
//
// Memory: zlib's state (about 7 KiB) and its 32 KiB window exist from a side's first
// compressed message on. With context takeover they stay (the next message may refer to
// this one); without, they are given back after every message.
#ifndef SLUICE_ENGINE_INFLATE_METER_H_
#define SLUICE_ENGINE_INFLATE_METER_H_

#include <cstddef>
#include <cstdint>

#include "utf8_stream.h"

namespace sluice {
namespace engine {

class InflateMeter {
 public:
  enum Result { kOk = 0, kTooBig = 1, kCorrupt = 2, kBadUtf8 = 3 };

  explicit InflateMeter(bool reset_per_message) : reset_per_message_(reset_per_message) {}
  ~InflateMeter();
  InflateMeter(const InflateMeter&) = delete;
  InflateMeter& operator=(const InflateMeter&) = delete;

  // A new compressed message starts (`text`: its output is UTF-8-checked into `utf8`).
  void Begin(Utf8Stream* utf8) {
    produced_ = 0;
    utf8_ = utf8;
  }
  // Compressed payload bytes of the message, unmasked; `fin` after its last bytes. Output
  // is written to `scratch` (reused) and counted against `limit`.
  Result Push(const uint8_t* p, size_t n, bool fin, uint64_t limit, uint8_t* scratch, size_t scratch_len);
  bool holding() const { return stream_ != nullptr; }
  uint64_t produced() const { return produced_; }  // inflated bytes of the current message

 private:
  Result Feed(const uint8_t* p, size_t n, uint64_t limit, uint8_t* scratch, size_t scratch_len);
  void End();

  bool reset_per_message_;
  void* stream_ = nullptr;  // z_stream (zlib.h stays out of the engine's header)
  uint64_t produced_ = 0;
  Utf8Stream* utf8_ = nullptr;
};

}  // namespace engine
}  // namespace sluice

#endif  // SLUICE_ENGINE_INFLATE_METER_H_
