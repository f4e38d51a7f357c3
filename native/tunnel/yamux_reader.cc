#include "yamux_reader.h"

#include <cstring>

namespace sluice {
namespace tunnel {

void PutYamuxHeader(uint8_t* out, uint8_t type, uint16_t flags, uint32_t stream, uint32_t length) {
  out[0] = 0;
  out[1] = type;
  out[2] = static_cast<uint8_t>(flags >> 8);
  out[3] = static_cast<uint8_t>(flags);
  out[4] = static_cast<uint8_t>(stream >> 24);
  out[5] = static_cast<uint8_t>(stream >> 16);
  out[6] = static_cast<uint8_t>(stream >> 8);
  out[7] = static_cast<uint8_t>(stream);
  out[8] = static_cast<uint8_t>(length >> 24);
  out[9] = static_cast<uint8_t>(length >> 16);
  out[10] = static_cast<uint8_t>(length >> 8);
  out[11] = static_cast<uint8_t>(length);
}

namespace {
uint32_t Be32(const uint8_t* p) {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) | (static_cast<uint32_t>(p[2]) << 8) | p[3];
}
}  // namespace

bool YamuxReader::Feed(uint8_t* data, size_t n, YamuxSink* sink) {
  size_t pos = 0;
  while (pos < n && !dead_) {
    if (left_ > 0) {
      const size_t take = left_ < n - pos ? static_cast<size_t>(left_) : n - pos;
      left_ -= take;
      if (!sink->OnData(data + pos, take) || (left_ == 0 && !sink->OnDataEnd())) {
        dead_ = true;
        return false;
      }
      pos += take;
      continue;
    }
    const uint8_t* h;
    if (held_ == 0 && n - pos >= kYamuxHeader) {
      h = data + pos;
      pos += kYamuxHeader;
    } else {
      const size_t take = kYamuxHeader - held_ < n - pos ? kYamuxHeader - held_ : n - pos;
      std::memcpy(head_ + held_, data + pos, take);
      held_ += take;
      pos += take;
      if (held_ < kYamuxHeader) break;
      held_ = 0;
      h = head_;
    }
    YamuxHeader hd;
    hd.version = h[0];
    hd.type = h[1];
    hd.flags = static_cast<uint16_t>((h[2] << 8) | h[3]);
    hd.stream = Be32(h + 4);
    hd.length = Be32(h + 8);
    if (!sink->OnHeader(hd)) {
      dead_ = true;
      return false;
    }
    if (hd.type == kData) {
      left_ = hd.length;
      if (left_ == 0 && !sink->OnDataEnd()) {
        dead_ = true;
        return false;
      }
    }
  }
  return !dead_;
}

}  // namespace tunnel
}  // namespace sluice
