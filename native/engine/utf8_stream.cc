#include "utf8_stream.h"

#include "../utf8.h"

namespace sluice {

namespace {

size_t SequenceLength(uint8_t b) {
  if (b < 0x80) return 1;
  if (b >= 0xc2 && b <= 0xdf) return 2;
  if (b >= 0xe0 && b <= 0xef) return 3;
  if (b >= 0xf0 && b <= 0xf4) return 4;
  return 0;
}

// Whether b[0..n) (n below the sequence's length) can still become a valid sequence.
bool ValidPrefix(const uint8_t* b, size_t n) {
  const uint8_t lead = b[0];
  if (SequenceLength(lead) <= n) return false;
  if (n >= 2) {
    const uint8_t lo = lead == 0xe0 ? 0xa0 : lead == 0xf0 ? 0x90 : 0x80;
    const uint8_t hi = lead == 0xed ? 0x9f : lead == 0xf4 ? 0x8f : 0xbf;
    if (b[1] < lo || b[1] > hi) return false;
  }
  if (n >= 3 && (b[2] < 0x80 || b[2] > 0xbf)) return false;
  return true;
}

}  // namespace

bool Utf8Stream::Push(const uint8_t* p, size_t n, bool fin) {
  size_t start = 0;
  if (held_len_ > 0) {
    const size_t need = SequenceLength(held_[0]) - held_len_;
    const size_t take = need < n ? need : n;
    for (size_t i = 0; i < take; i++) held_[held_len_ + i] = p[i];
    const size_t have = held_len_ + take;
    if (take < need) {
      held_len_ = have;
      return !fin && ValidPrefix(held_, have);
    }
    if (!IsUtf8(held_, have)) return false;
    held_len_ = 0;
    start = take;
  }
  size_t end = n;
  if (!fin && n > start) {
    size_t i = n - 1;
    const size_t floor = (n - start > 3) ? n - 3 : start;
    while (i > floor && (p[i] & 0xc0) == 0x80) i--;
    const size_t len = SequenceLength(p[i]);
    if (len > 1 && i + len > n) end = i;
  }
  if (end > start && !IsUtf8(p + start, end - start)) return false;
  if (end < n) {
    if (n - end > 3) return false;  // cannot happen: end is within 3 bytes of n
    held_len_ = n - end;
    for (size_t i = 0; i < held_len_; i++) held_[i] = p[end + i];
    if (!ValidPrefix(held_, held_len_)) return false;
  }
  return true;
}

}  // namespace sluice
