// libFuzzer target: the engine's per-read path (native/engine/frame_cursor.h) and its
// streaming UTF-8 check (native/engine/utf8_stream.h).
//
// Input: 6 bytes of configuration (role, limits, chunking seed), then the wire bytes. The
// wire is fed to a FrameCursor in pseudo-random reads, each in its own exact-size heap
// block (ASan sees any read past a read), and parsed whole by FrameParserCore (frame.h):
// both must see the same complete frames (header fields and unmasked payload bytes) and
// end with the same error. Every frame's payload pieces must add up to its length, in
// order, with offsets that follow on. The same bytes, cut into fragments at the same
// points, must pass Utf8Stream exactly when IsUtf8 accepts them whole.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../codec_abi.h"
#include "fuzz_check.h"
#include "../engine/frame_cursor.h"
#include "../engine/utf8_stream.h"
#include "../frame.h"
#include "../utf8.h"

namespace {

using sluice_fuzz::VecCarry;

using sluice::CarryStore;
using sluice::CursorLimits;
using sluice::FrameCursor;
using sluice::FrameHeader;
using sluice::FrameLimits;
using sluice::FrameParserCore;
using sluice::FrameVisitor;


struct Frame {
  uint32_t info;  // opcode | FIN | RSV1 | MASKED, as frame.h describes it
  std::vector<uint8_t> payload;
  bool operator==(const Frame& o) const { return info == o.info && payload == o.payload; }
};


// The reference: every complete frame FrameParserCore describes, and its error.
void ParseWhole(const FrameLimits& limits, const uint8_t* wire, size_t n, std::vector<Frame>* frames, int32_t* err) {
  FrameParserCore p(limits);
  VecCarry store;
  std::vector<uint8_t> copy(wire, wire + n);
  std::vector<uint32_t> desc(64 * sluice::kDescriptorWords);
  int32_t state[sluice::kStateWords];
  size_t offset = 0;
  *err = 0;
  for (;;) {
    int32_t rc = p.Parse(copy.data(), n, offset, desc.data(), 64, state, &store);
    const uint32_t count = static_cast<uint32_t>(state[sluice::state::kCount]);
    for (uint32_t i = 0; i < count; i++) {
      const uint32_t* d = &desc[i * sluice::kDescriptorWords];
      Frame f;
      f.info = d[0] & (0x0f | sluice::desc::kFin | sluice::desc::kRsv1 | sluice::desc::kMasked);
      const uint8_t* src = (d[0] & sluice::desc::kCarry) ? store.done() : copy.data();
      f.payload.assign(src + d[1], src + d[1] + d[2]);
      frames->push_back(std::move(f));
    }
    if (rc < 0) {
      *err = -rc;
      return;
    }
    if (state[sluice::state::kResume] < 0) return;
    offset = static_cast<size_t>(state[sluice::state::kResume]);
  }
}

class Recorder final : public FrameVisitor {
 public:
  bool OnHeader(const FrameHeader& h, uint8_t* raw, bool) override {
    CHECK(!open_);
    CHECK(h.size >= 2 && h.size <= 14);
    CHECK((raw[0] & 0x0f) == h.opcode);
    cur_ = h;
    open_ = true;
    got_ = 0;
    frame_.info = h.opcode | (h.fin ? sluice::desc::kFin : 0) | (h.rsv1 ? sluice::desc::kRsv1 : 0) |
                  (h.masked ? sluice::desc::kMasked : 0);
    frame_.payload.clear();
    return true;
  }
  bool OnPayload(uint8_t* p, size_t n, uint64_t offset, bool last) override {
    CHECK(open_);
    CHECK(offset == got_);
    got_ += n;
    CHECK(got_ <= cur_.length);
    CHECK(last == (got_ == cur_.length));
    for (size_t i = 0; i < n; i++) {
      frame_.payload.push_back(cur_.masked ? static_cast<uint8_t>(p[i] ^ cur_.key[(offset + i) & 3]) : p[i]);
    }
    if (last) {
      frames.push_back(frame_);
      open_ = false;
    }
    return true;
  }
  void OnError(int32_t e) override {
    CHECK(!open_);
    CHECK(err == 0 && e != 0);
    err = e;
  }
  std::vector<Frame> frames;
  int32_t err = 0;

 private:
  FrameHeader cur_;
  Frame frame_;
  bool open_ = false;
  uint64_t got_ = 0;
};

const uint64_t kLimits[8] = {0, 1, 125, 126, 1000, 65535, 65536, 300000};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 6) return 0;
  FrameLimits fl;
  fl.server = data[0] & 1;
  fl.max_frame_bytes = kLimits[data[1] & 7];
  fl.max_message_bytes = kLimits[(data[1] >> 3) & 7];
  fl.max_fragments = data[2] & 7;
  CursorLimits cl;
  cl.server = fl.server;
  cl.max_frame_bytes = fl.max_frame_bytes;
  cl.max_message_bytes = fl.max_message_bytes;
  cl.max_fragments = fl.max_fragments;
  uint32_t seed = static_cast<uint32_t>(data[3]) | (static_cast<uint32_t>(data[4]) << 8) |
                  (static_cast<uint32_t>(data[5]) << 16);
  const uint8_t* wire = data + 6;
  const size_t n = size - 6;

  std::vector<Frame> reference;
  int32_t reference_err = 0;
  ParseWhole(fl, wire, n, &reference, &reference_err);

  Recorder rec;
  FrameCursor cursor(cl);
  sluice::Utf8Stream utf8;
  bool utf8_ok = true;
  size_t pos = 0;
  while (pos < n) {
    seed = seed * 1103515245u + 12345u;
    size_t len = 1 + ((seed >> 8) % 23);
    if ((seed >> 20) & 1) len = 1 + ((seed >> 8) % 300);
    if (len > n - pos) len = n - pos;
    uint8_t* chunk = static_cast<uint8_t*>(std::malloc(len));
    std::memcpy(chunk, wire + pos, len);
    if (utf8_ok) utf8_ok = utf8.Push(chunk, len, pos + len == n);
    if (!cursor.dead()) cursor.Feed(chunk, len, &rec);
    std::free(chunk);
    pos += len;
  }
  if (n == 0) utf8_ok = utf8.Push(wire, 0, true);

  CHECK(rec.err == reference_err);
  CHECK(rec.frames.size() == reference.size());
  for (size_t i = 0; i < reference.size(); i++) CHECK(rec.frames[i] == reference[i]);
  CHECK(utf8_ok == sluice::IsUtf8(wire, n));
  return 0;
}
