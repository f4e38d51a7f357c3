// A per-thread pool of JS Buffers in three tiers (4 KiB / 64 KiB / 1 MiB).
//
// Lifetime: pooled memory is always a JS-owned (GC-managed) ArrayBuffer. The pool keeps
// references to free ones; `acquire` hands one out and `release` takes it back. A Buffer
// that JS still holds after releasing it stays valid memory (it may just be handed out
// again - a logic error of the caller, never a use-after-free), and memory is returned
// to the system only by the garbage collector.
#ifndef SLUICE_POOL_H
#define SLUICE_POOL_H

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sluice {

class BufferPool {
 public:
  static constexpr size_t kTiers = 3;
  static constexpr size_t kTierBytes[kTiers] = {4u << 10, 64u << 10, 1u << 20};
  // Free-list caps: enough for bursts, bounded so an idle thread holds <= 9.25 MiB.
  static constexpr size_t kTierCap[kTiers] = {64, 16, 4};

  BufferPool() = default;
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A Buffer of the whole tier that fits `size` (exactly `size` bytes above 1 MiB).
  // Returns an empty value with a JS exception pending when memory runs out.
  Napi::Value Acquire(Napi::Env env, size_t size, uint8_t** data);
  // Takes back a view whose ArrayBuffer is a whole tier (others are only uncounted).
  void Release(Napi::Env env, napi_value view);

  Napi::Object Stats(Napi::Env env) const;

  // A pooled Buffer is gone without a release (its holder was finalized): count it out.
  void Forget() {
    if (in_use_ > 0) in_use_--;
  }
  // The environment ends: drop every reference now. Later releases are only counted.
  void Close();

 private:
  struct Entry {
    Napi::Reference<Napi::Object> ref;
    const uint8_t* data;
  };
  std::vector<Entry> free_[kTiers];
  double hits_ = 0;
  double misses_ = 0;
  double in_use_ = 0;
  double high_water_ = 0;
  double free_bytes_ = 0;
  bool closed_ = false;
};

}  // namespace sluice

#endif  // SLUICE_POOL_H
