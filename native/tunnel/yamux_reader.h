// The receive side of yamux (hashicorp/yamux, protocol version 0) as a pure byte walker:
// wire bytes cut anyhow go in, whole headers and data pieces come out, where they lie
// (never gathered). The tunnel's native link (mux.h) feeds it the payload of the
// WebSocket's binary messages; the fuzz target feeds it anything.
//
// A frame is a 12-byte header (version, type, flags u16, stream id u32, length u32, all
// big-endian) and, for data frames (type 0), `length` bytes of payload.
#ifndef SLUICE_TUNNEL_YAMUX_READER_H_
#define SLUICE_TUNNEL_YAMUX_READER_H_

#include <cstddef>
#include <cstdint>

namespace sluice {
namespace tunnel {

constexpr size_t kYamuxHeader = 12;
constexpr uint32_t kInitialWindow = 256 * 1024;

enum YamuxType : uint8_t { kData = 0, kWindowUpdate = 1, kPing = 2, kGoAway = 3 };
enum YamuxFlag : uint16_t { kSyn = 1, kAck = 2, kFin = 4, kRst = 8 };
enum GoAwayCode : uint32_t { kGoAwayNormal = 0, kGoAwayProtocol = 1, kGoAwayInternal = 2 };

struct YamuxHeader {
  uint8_t version = 0;
  uint8_t type = 0;
  uint16_t flags = 0;
  uint32_t stream = 0;
  uint32_t length = 0;
};

// Writes a header into out[0..12).
void PutYamuxHeader(uint8_t* out, uint8_t type, uint16_t flags, uint32_t stream, uint32_t length);

class YamuxSink {
 public:
  virtual ~YamuxSink() = default;
  // A header (any version and type: the sink judges). Data frames: their payload follows
  // through OnData, then OnDataEnd (also for length 0). Return false to stop the walk.
  virtual bool OnHeader(const YamuxHeader& h) = 0;
  virtual bool OnData(uint8_t* p, size_t n) = 0;
  virtual bool OnDataEnd() = 0;
};

class YamuxReader {
 public:
  // Walks data[0..n); false once a sink method said stop (the reader is then dead).
  bool Feed(uint8_t* data, size_t n, YamuxSink* sink);
  bool dead() const { return dead_; }
  // Inside a frame (part of a header or of a data payload read).
  bool mid_frame() const { return held_ > 0 || left_ > 0; }

 private:
  uint8_t head_[kYamuxHeader];
  size_t held_ = 0;
  uint64_t left_ = 0;  // payload bytes of the current data frame still to come
  bool dead_ = false;
};

}  // namespace tunnel
}  // namespace sluice

#endif  // SLUICE_TUNNEL_YAMUX_READER_H_
