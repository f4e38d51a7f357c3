#include "backlog.h"

#include <cstdlib>
#include <cstring>

namespace sluice {
namespace engine {

bool Backlog::Append(const uint8_t* p, size_t n) {
  if (n == 0) return true;
  uint8_t* at = Reserve(n);
  if (at == nullptr) return false;
  std::memcpy(at, p, n);
  return true;
}

uint8_t* Backlog::Reserve(size_t n) {
  if (tail_ + n > cap_) {
    const size_t used = tail_ - head_;
    if (used + n <= cap_ && head_ > 0) {
      std::memmove(data_, data_ + head_, used);
    } else {
      size_t cap = cap_ == 0 ? 16 * 1024 : cap_;
      while (cap < used + n) cap *= 2;
      uint8_t* next = static_cast<uint8_t*>(std::malloc(cap));
      if (next == nullptr) return nullptr;
      if (used > 0) std::memcpy(next, data_ + head_, used);
      std::free(data_);
      data_ = next;
      cap_ = cap;
    }
    head_ = 0;
    tail_ = used;
  }
  uint8_t* at = data_ + tail_;
  tail_ += n;
  return at;
}

void Backlog::Consume(size_t n) {
  head_ += n;
  if (head_ >= tail_) head_ = tail_ = 0;
}

void Backlog::Free() {
  std::free(data_);
  data_ = nullptr;
  cap_ = head_ = tail_ = 0;
}

bool ValidWireCode(int code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

}  // namespace engine
}  // namespace sluice
