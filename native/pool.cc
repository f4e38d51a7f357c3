#include "pool.h"

namespace sluice {

constexpr size_t BufferPool::kTierBytes[];
constexpr size_t BufferPool::kTierCap[];

Napi::Value BufferPool::Acquire(Napi::Env env, size_t size, uint8_t** data) {
  size_t tier = 0;
  while (tier < kTiers && size > kTierBytes[tier]) tier++;
  Napi::Value out;
  if (tier < kTiers && !free_[tier].empty()) {
    Entry& e = free_[tier].back();
    out = e.ref.Value();
    *data = const_cast<uint8_t*>(e.data);
    free_[tier].pop_back();
    free_bytes_ -= static_cast<double>(kTierBytes[tier]);
    hits_++;
  } else {
    // Over 1 MiB: a plain allocation of the exact size, counted as a miss.
    const size_t bytes = tier < kTiers ? kTierBytes[tier] : size;
    napi_value buf;
    void* p = nullptr;
    if (napi_create_buffer(env, bytes, &p, &buf) != napi_ok) {
      bool pending = false;
      napi_is_exception_pending(env, &pending);
      if (!pending) Napi::Error::New(env, "sluice: buffer allocation failed").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    out = Napi::Value(env, buf);
    *data = static_cast<uint8_t*>(p);
    misses_++;
  }
  in_use_++;
  if (in_use_ > high_water_) high_water_ = in_use_;
  return out;
}

void BufferPool::Release(Napi::Env env, napi_value view) {
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  napi_value ab;
  size_t byte_offset = 0;
  if (napi_get_typedarray_info(env, view, &type, &length, &data, &ab, &byte_offset) != napi_ok) return;
  // A second release of memory already on a free list would hand it out twice: ignore it
  // (and do not count it twice).
  for (const std::vector<Entry>& list : free_) {
    for (const Entry& e : list) {
      if (data != nullptr && e.data == data) return;
    }
  }
  if (in_use_ > 0) in_use_--;
  if (type != napi_uint8_array || byte_offset != 0 || data == nullptr) return;
  size_t tier = 0;
  while (tier < kTiers && length != kTierBytes[tier]) tier++;
  if (tier == kTiers) return;
  void* ab_data = nullptr;
  size_t ab_len = 0;
  if (napi_get_arraybuffer_info(env, ab, &ab_data, &ab_len) != napi_ok || ab_len != length) return;
  std::vector<Entry>& list = free_[tier];
  if (closed_ || list.size() >= kTierCap[tier]) return;  // the GC frees it
  list.push_back(Entry{Napi::Persistent(Napi::Object(env, view)), static_cast<const uint8_t*>(data)});
  free_bytes_ += static_cast<double>(length);
}

void BufferPool::Close() {
  closed_ = true;
  for (std::vector<Entry>& list : free_) list.clear();
  free_bytes_ = 0;
}

Napi::Object BufferPool::Stats(Napi::Env env) const {
  Napi::Object o = Napi::Object::New(env);
  o.Set("hits", hits_);
  o.Set("misses", misses_);
  o.Set("inUse", in_use_);
  o.Set("highWater", high_water_);
  o.Set("freeBytes", free_bytes_);
  return o;
}

}  // namespace sluice
