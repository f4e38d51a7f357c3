// libFuzzer target: the incremental frame parser.
//
// Input: 6 bytes of configuration (role, limits, descriptor capacity, chunking seed), then
// the wire bytes. The wire is parsed three times: whole, whole with the fast path
// (frame_run.h) off, and cut at pseudo-random boundaries with every chunk in its own
// exact-size heap block (ASan sees any read past a chunk). All runs must describe the
// same frames (payload bytes included, CARRY aside), end with the same errno and hold the
// same pending bytes; the two whole runs must also agree on every descriptor word and
// the error offset; every descriptor must lie inside its chunk or inside the carry memory.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fuzz_check.h"
#include "../codec_abi.h"
#include "../frame.h"

namespace {

using sluice::CarryStore;
using sluice::FrameLimits;
using sluice::FrameParserCore;


// Exact-size heap blocks, freed as early as the contract allows, so ASan reports any use
// of carry memory past its lifetime.
class HeapCarry : public CarryStore {
 public:
  ~HeapCarry() override {
    std::free(cur_);
    std::free(done_);
  }
  uint8_t* Reserve(size_t n) override {
    std::free(cur_);
    cur_ = static_cast<uint8_t*>(std::malloc(n ? n : 1));
    cur_len_ = n;
    return cur_;
  }
  void Complete() override {
    std::free(done_);
    done_ = cur_;
    done_len_ = cur_len_;
    cur_ = nullptr;
    cur_len_ = 0;
  }
  void Recycle() override {
    std::free(done_);
    done_ = nullptr;
    done_len_ = 0;
  }
  void Discard() override {
    std::free(cur_);
    cur_ = nullptr;
    cur_len_ = 0;
  }
  const uint8_t* done() const { return done_; }
  size_t done_len() const { return done_len_; }

 private:
  uint8_t* cur_ = nullptr;
  size_t cur_len_ = 0;
  uint8_t* done_ = nullptr;
  size_t done_len_ = 0;
};

struct Frame {
  uint32_t info;
  uint32_t mask_key;
  std::vector<uint8_t> payload;
  bool operator==(const Frame& o) const {
    return info == o.info && mask_key == o.mask_key && payload == o.payload;
  }
};

struct Run {
  std::vector<Frame> frames;
  std::vector<uint32_t> words;  // every descriptor word, in order
  int32_t err = 0;
  int32_t error_offset = -1;
  size_t pending = 0;
};

const uint64_t kLimits[8] = {0, 1, 125, 126, 1000, 65535, 65536, 300000};

// Parses one chunk (resuming while descriptors fill up); false once the parser failed.
bool Feed(FrameParserCore& p, HeapCarry& store, uint8_t* chunk, size_t len, uint32_t max_frames,
          Run* run) {
  std::vector<uint32_t> desc(max_frames * sluice::kDescriptorWords);
  int32_t state[sluice::kStateWords];
  size_t offset = 0;
  for (;;) {
    int32_t rc = p.Parse(chunk, len, offset, desc.data(), max_frames, state, &store);
    const uint32_t count = static_cast<uint32_t>(state[sluice::state::kCount]);
    CHECK(count <= max_frames);
    if (rc >= 0) {
      CHECK(static_cast<uint32_t>(rc) == count);
      CHECK(state[sluice::state::kErrno] == 0);
    } else {
      CHECK(state[sluice::state::kErrno] == -rc);
      CHECK(state[sluice::state::kResume] == -1);
      CHECK(state[sluice::state::kErrorOffset] >= static_cast<int32_t>(offset));
      CHECK(static_cast<size_t>(state[sluice::state::kErrorOffset]) <= len);
    }
    for (uint32_t i = 0; i < count; i++) {
      const uint32_t* d = &desc[i * sluice::kDescriptorWords];
      Frame f;
      f.info = d[0] & ~sluice::desc::kCarry;
      f.mask_key = d[3];
      CHECK((d[0] & 0x0f) <= 2 || ((d[0] & 0x0f) >= 8 && (d[0] & 0x0f) <= 10));
      CHECK(!(d[0] & (sluice::desc::kRsv2 | sluice::desc::kRsv3)));
      if (d[0] & sluice::desc::kCarry) {
        CHECK(i == 0);
        CHECK(d[1] == 0);
        CHECK(d[2] == p.carry_length());
        CHECK(p.has_carry_frame());
        CHECK(d[2] == 0 || (store.done() && d[2] <= store.done_len()));
        if (d[2]) f.payload.assign(store.done(), store.done() + d[2]);
      } else {
        CHECK(d[1] >= offset && d[1] <= len && d[2] <= len - d[1]);
        f.payload.assign(chunk + d[1], chunk + d[1] + d[2]);
      }
      if (!(d[0] & sluice::desc::kMasked)) CHECK(d[3] == 0);
      run->frames.push_back(std::move(f));
      run->words.insert(run->words.end(), d, d + sluice::kDescriptorWords);
    }
    if (rc < 0) {
      run->err = -rc;
      run->error_offset = state[sluice::state::kErrorOffset];
      // Dead: the next call repeats the error.
      int32_t again = p.Parse(chunk, len, 0, desc.data(), max_frames, state, &store);
      CHECK(again == rc && state[sluice::state::kCount] == 0);
      return false;
    }
    const int32_t resume = state[sluice::state::kResume];
    if (resume < 0) return true;
    CHECK(count == max_frames);
    CHECK(static_cast<size_t>(resume) > offset && static_cast<size_t>(resume) < len);
    offset = static_cast<size_t>(resume);
  }
}

// The wire as one chunk (a copy: parsing unmasks in place).
Run ParseWhole(const FrameLimits& limits, const uint8_t* wire, size_t n, uint32_t max_frames) {
  Run run;
  FrameParserCore p(limits);
  HeapCarry store;
  uint8_t* copy = static_cast<uint8_t*>(std::malloc(n ? n : 1));
  if (n) std::memcpy(copy, wire, n);
  Feed(p, store, copy, n, max_frames, &run);
  run.pending = p.PendingBytes();
  std::free(copy);
  return run;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 6) return 0;
  FrameLimits limits;
  limits.server = data[0] & 1;
  limits.allow_rsv1 = data[0] & 2;
  const uint32_t max_frames = 1 + ((data[0] >> 2) & 7);
  limits.max_frame_bytes = kLimits[data[1] & 7];
  limits.max_message_bytes = kLimits[(data[1] >> 3) & 7];
  limits.max_fragments = data[2] & 7;
  uint32_t seed = static_cast<uint32_t>(data[3]) | (static_cast<uint32_t>(data[4]) << 8) |
                  (static_cast<uint32_t>(data[5]) << 16);
  const uint8_t* wire = data + 6;
  const size_t n = size - 6;

  Run whole = ParseWhole(limits, wire, n, max_frames);
  FrameLimits off = limits;
  off.fast_path = false;
  Run slow = ParseWhole(off, wire, n, max_frames);
  CHECK(whole.err == slow.err);
  CHECK(whole.error_offset == slow.error_offset);
  CHECK(whole.pending == slow.pending);
  CHECK(whole.words == slow.words);
  CHECK(whole.frames.size() == slow.frames.size());
  for (size_t i = 0; i < whole.frames.size(); i++) CHECK(whole.frames[i] == slow.frames[i]);

  Run split;
  {
    FrameParserCore p(limits);
    HeapCarry store;
    size_t pos = 0;
    while (pos < n) {
      seed = seed * 1103515245u + 12345u;
      size_t len = 1 + ((seed >> 8) % 23);
      if ((seed >> 20) & 1) len = 1 + ((seed >> 8) % 300);
      if (len > n - pos) len = n - pos;
      uint8_t* chunk = static_cast<uint8_t*>(std::malloc(len));
      std::memcpy(chunk, wire + pos, len);
      bool alive = Feed(p, store, chunk, len, max_frames, &split);
      std::free(chunk);
      pos += len;
      if (!alive) break;
    }
    split.pending = p.PendingBytes();
    // A reset parser is as good as new.
    p.Reset(&store);
    CHECK(p.PendingBytes() == 0);
  }

  CHECK(whole.err == split.err);
  CHECK(whole.pending == split.pending);
  CHECK(whole.frames.size() == split.frames.size());
  for (size_t i = 0; i < whole.frames.size(); i++) CHECK(whole.frames[i] == split.frames[i]);
  return 0;
}
