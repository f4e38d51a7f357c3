// What the libFuzzer targets of native/fuzz/ share: CHECK (a failed oracle traps, with the
// condition and line on stderr: stdout is buffered when it is a file, and the trap would
// lose the line), VecCarry, a CarryStore on std::vector for FrameParserCore, and what the
// whole-engine and tunnel-link targets both check (descriptors, close codes).
#ifndef SLUICE_FUZZ_CHECK_H_
#define SLUICE_FUZZ_CHECK_H_

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

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

// Open descriptors of the process (/proc/self/fd, less the directory's own).
inline int OpenFds() {
  DIR* d = opendir("/proc/self/fd");
  CHECK(d != nullptr);
  int n = 0;
  while (readdir(d) != nullptr) n++;
  closedir(d);
  return n - 3;  // ".", ".." and the directory itself
}

inline int LowestFreeFd() {
  const int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  CHECK(fd >= 0);
  close(fd);
  return fd;
}

// The oracle's own copy of RFC 6455 7.4 (not the product's).
inline bool ValidWireCode(int code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

}  // namespace sluice_fuzz

#endif  // SLUICE_FUZZ_CHECK_H_
