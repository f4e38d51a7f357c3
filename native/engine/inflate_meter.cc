#include "inflate_meter.h"

#include <zlib.h>

#include <new>

namespace sluice {
namespace engine {

namespace {
const uint8_t kTail[4] = {0x00, 0x00, 0xff, 0xff};  // RFC 7692 §7.2.2: removed by the sender
}  // namespace

InflateMeter::~InflateMeter() { End(); }

void InflateMeter::End() {
  if (stream_ == nullptr) return;
  z_stream* z = static_cast<z_stream*>(stream_);
  inflateEnd(z);
  delete z;
  stream_ = nullptr;
}

InflateMeter::Result InflateMeter::Feed(const uint8_t* p, size_t n, uint64_t limit, uint8_t* scratch, size_t scratch_len) {
  z_stream* z = static_cast<z_stream*>(stream_);
  z->next_in = const_cast<Bytef*>(p);
  z->avail_in = static_cast<uInt>(n);
  for (;;) {
    z->next_out = scratch;
    z->avail_out = static_cast<uInt>(scratch_len);
    const int r = inflate(z, Z_SYNC_FLUSH);
    const size_t out = scratch_len - z->avail_out;
    produced_ += out;
    if (produced_ > limit) return kTooBig;
    if (utf8_ != nullptr && out > 0 && !utf8_->Push(scratch, out, false)) return kBadUtf8;
    if (r == Z_STREAM_END) {
      // A final block (BFINAL): what follows in this message starts a new stream.
      if (inflateReset(z) != Z_OK) return kCorrupt;
      if (z->avail_in == 0) return kOk;
      continue;
    }
    if (r == Z_BUF_ERROR) {
      if (z->avail_in == 0) return kOk;  // all input taken: more comes with the next bytes
      continue;                          // the output was full: go on
    }
    if (r != Z_OK) return kCorrupt;
    if (z->avail_in == 0 && z->avail_out != 0) return kOk;
  }
}

InflateMeter::Result InflateMeter::Push(const uint8_t* p, size_t n, bool fin, uint64_t limit, uint8_t* scratch,
                                        size_t scratch_len) {
  if (stream_ == nullptr) {
    z_stream* z = new (std::nothrow) z_stream();
    if (z == nullptr) return kCorrupt;
    if (inflateInit2(z, -15) != Z_OK) {
      delete z;
      return kCorrupt;
    }
    stream_ = z;
  }
  Result r = n > 0 ? Feed(p, n, limit, scratch, scratch_len) : kOk;
  if (r == kOk && fin) {
    r = Feed(kTail, sizeof kTail, limit, scratch, scratch_len);
    if (r == kOk && utf8_ != nullptr && !utf8_->Push(nullptr, 0, true)) r = kBadUtf8;
    if (r == kOk && reset_per_message_) End();
  }
  if (r != kOk) End();  // the side is closed for it: nothing more to inflate
  return r;
}

}  // namespace engine
}  // namespace sluice
