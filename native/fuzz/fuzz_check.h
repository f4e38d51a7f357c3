// What the libFuzzer targets of native/fuzz/ share: CHECK (a failed oracle traps, with the
// condition and line on stderr: stdout is buffered when it is a file, and the trap would
// lose the line) and VecCarry, a CarryStore on std::vector for FrameParserCore.
#ifndef SLUICE_FUZZ_CHECK_H_
#define SLUICE_FUZZ_CHECK_H_

#include <cstdint>
#include <cstdio>
#include <vector>

#include "../frame.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "check failed: %s (line %d)\n", #cond, __LINE__); \
      __builtin_trap();                                                        \
    }                                                                          \
  } while (0)

namespace sluice_fuzz {

class VecCarry : public sluice::CarryStore {
 public:
  uint8_t* Reserve(size_t n) override {
    cur_.assign(n ? n : 1, 0);
    return cur_.data();
  }
  void Complete() override { done_.swap(cur_); }
  void Recycle() override { done_.clear(); }
  void Discard() override { cur_.clear(); }
  const uint8_t* done() const { return done_.data(); }

 private:
  std::vector<uint8_t> cur_, done_;
};

}  // namespace sluice_fuzz

#endif  // SLUICE_FUZZ_CHECK_H_
