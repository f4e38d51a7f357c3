// N-API bindings of the codec (the CodecImplementation of src/codec/types.ts).
//
// No globals: everything per environment (buffer pool, mask-key randomness, class
// constructors) lives in AddonData, installed with SetInstanceData, so the addon loads in
// several worker threads at once. Built with NAPI_DISABLE_CPP_EXCEPTIONS: every argument
// is checked, a bad one throws a TypeError (wrong type) or RangeError (value out of range).
#include <napi.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "codec_abi.h"
#include "engine/binding.h"
#include "tunnel/binding.h"
#include "engine/listener.h"
#include "envelope.h"
#include "frame.h"
#include "frame_run.h"
#include "mask.h"
#include "pool.h"
#include "utf8.h"

namespace sluice {

namespace {

struct AddonData {
  BufferPool pool;
  MaskKeySource keys;
  Napi::FunctionReference parser_ctor;
  Napi::FunctionReference encoder_ctor;
};

// The instance data holds the AddonData through a shared_ptr, and so does every parser:
// a parser's destructor may run while the environment is torn down, before or after the
// instance data is finalized, and must still find the pool's counters alive.
struct AddonHandle {
  std::shared_ptr<AddonData> data;
};

void FinalizeAddon(Napi::Env, AddonHandle* handle) {
  // Delete every JS reference while the environment still exists; parsers that outlive
  // this point only touch plain counters.
  handle->data->pool.Close();
  handle->data->parser_ctor.Reset();
  handle->data->encoder_ctor.Reset();
  delete handle;
}

const std::shared_ptr<AddonData>& Shared(Napi::Env env) { return env.GetInstanceData<AddonHandle>()->data; }
AddonData* Data(Napi::Env env) { return Shared(env).get(); }

void ThrowType(Napi::Env env, const char* msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
}
void ThrowRange(Napi::Env env, const char* msg) {
  Napi::RangeError::New(env, msg).ThrowAsJavaScriptException();
}

// Bytes of any TypedArray or DataView (Buffer included). Empty (nullptr, 0) when detached.
struct Bytes {
  uint8_t* data = nullptr;
  size_t len = 0;
  napi_typedarray_type type = napi_uint8_array;
};

bool GetBytes(Napi::Env env, napi_value v, Bytes* out) {
  // One call on the common path: napi_get_typedarray_info itself refuses a non-TypedArray
  // (napi_invalid_arg, no exception), so no napi_is_typedarray first.
  size_t length = 0;
  void* data = nullptr;
  if (napi_get_typedarray_info(env, v, &out->type, &length, &data, nullptr, nullptr) == napi_ok) {
    size_t elem = 1;
    switch (out->type) {
      case napi_int16_array:
      case napi_uint16_array:
        elem = 2;
        break;
      case napi_int32_array:
      case napi_uint32_array:
      case napi_float32_array:
        elem = 4;
        break;
      case napi_float64_array:
      case napi_bigint64_array:
      case napi_biguint64_array:
        elem = 8;
        break;
      default:
        elem = 1;
    }
    out->data = static_cast<uint8_t*>(data);
    out->len = data ? length * elem : 0;
    return true;
  }
  bool is = false;
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    if (napi_get_dataview_info(env, v, &length, &data, nullptr, nullptr) != napi_ok) return false;
    out->data = static_cast<uint8_t*>(data);
    out->len = data ? length : 0;
    out->type = napi_uint8_array;
    return true;
  }
  return false;
}

// Argument i, or nullptr when the call has fewer arguments.
napi_value Arg(const Napi::CallbackInfo& info, size_t i) {
  return i < info.Length() ? static_cast<napi_value>(info[i]) : nullptr;
}

bool IsUndefined(napi_env env, napi_value v) {
  napi_valuetype t;
  return v == nullptr || (napi_typeof(env, v, &t) == napi_ok && t == napi_undefined);
}

bool GetBytesArg(const Napi::CallbackInfo& info, size_t i, const char* msg, Bytes* out) {
  napi_value v = Arg(info, i);
  if (v == nullptr || !GetBytes(info.Env(), v, out)) {
    ThrowType(info.Env(), msg);
    return false;
  }
  return true;
}

// A Uint32Array argument (descriptor outputs).
bool GetUint32Array(const Napi::CallbackInfo& info, size_t i, const char* msg, uint32_t** data,
                    size_t* len) {
  Bytes b;
  napi_value v = Arg(info, i);
  if (v == nullptr || !GetBytes(info.Env(), v, &b) || b.type != napi_uint32_array) {
    ThrowType(info.Env(), msg);
    return false;
  }
  *data = reinterpret_cast<uint32_t*>(b.data);
  *len = b.len / 4;
  return true;
}

// A number argument that is an integer in [lo, hi]; `optional` accepts undefined as def.
bool GetInteger(const Napi::CallbackInfo& info, size_t i, double lo, double hi, const char* name,
                double* out, bool optional = false, double def = 0) {
  Napi::Env env = info.Env();
  napi_value v = Arg(info, i);
  double d;
  // One call on the common path: napi_get_value_double refuses a non-number by status.
  if (v == nullptr || napi_get_value_double(env, v, &d) != napi_ok) {
    if (optional && IsUndefined(env, v)) {
      *out = def;
      return true;
    }
    ThrowType(env, name);
    return false;
  }
  if (std::isnan(d) || (std::isfinite(d) && std::floor(d) != d)) {
    ThrowType(env, name);
    return false;
  }
  if (d < lo || d > hi) {
    ThrowRange(env, name);
    return false;
  }
  *out = d;
  return true;
}

// A size limit: a non-negative integer or +Infinity (no limit).
bool GetLimit(const Napi::CallbackInfo& info, size_t i, const char* name, uint64_t* out) {
  double d;
  if (!GetInteger(info, i, 0, INFINITY, name, &d)) return false;
  *out = d >= 9007199254740992.0 ? UINT64_MAX : static_cast<uint64_t>(d);
  return true;
}

bool GetBool(const Napi::CallbackInfo& info, size_t i, const char* name, bool def, bool* out) {
  napi_env env = info.Env();
  napi_value v = Arg(info, i);
  if (v != nullptr && napi_get_value_bool(env, v, out) == napi_ok) return true;
  if (IsUndefined(env, v)) {
    *out = def;
    return true;
  }
  ThrowType(info.Env(), name);
  return false;
}

// ---------------------------------------------------------------------------------------
// FrameParser

// Carry memory of one parser: pooled Buffers, one for the frame being received and one
// for the CARRY frame described by the current call; each goes back to the pool as soon as
// the contract lets it (the described one at the start of the next call).
class PooledCarry : public CarryStore {
 public:
  explicit PooledCarry(napi_env env) : env_(env), addon_(Shared(Napi::Env(env))) {}

  // Runs from the parser's finalizer, possibly during environment teardown: no JS calls and
  // no new references; the Buffers are left to the GC and only the counters are updated.
  ~PooledCarry() override {
    if (!cur_.ref.IsEmpty()) addon_->pool.Forget();
    if (!done_.ref.IsEmpty()) addon_->pool.Forget();
  }

  uint8_t* Reserve(size_t n) override {
    if (!cur_.ref.IsEmpty() && cur_.cap >= n) return cur_.data;
    Drop(&cur_);
    Napi::Env env(env_);
    uint8_t* data = nullptr;
    Napi::Value v = addon_->pool.Acquire(env, n, &data);
    if (v.IsEmpty()) {
      // Out of memory: the parser refuses the frame instead (FrameTooBig).
      env.GetAndClearPendingException();
      return nullptr;
    }
    cur_.ref = Napi::Persistent(v.As<Napi::Object>());
    cur_.data = data;
    cur_.cap = TierBytes(n);
    return data;
  }

  void Complete() override {
    Drop(&done_);
    done_.ref = std::move(cur_.ref);
    done_.data = cur_.data;
    done_.cap = cur_.cap;
    cur_ = Region();
  }

  void Recycle() override { Drop(&done_); }
  void Discard() override { Drop(&cur_); }

  // A Buffer of exactly n bytes at the start of the completed frame's memory.
  Napi::Value View(size_t n) {
    Napi::Env env(env_);
    if (done_.ref.IsEmpty() || n == 0) return Napi::Buffer<uint8_t>::New(env, 0);
    Napi::Object full = done_.ref.Value();
    if (n == done_.cap) return full;
    Napi::Value sub = full.Get("subarray");
    if (sub.IsEmpty() || !sub.IsFunction()) return Napi::Value();
    return sub.As<Napi::Function>().Call(full, {Napi::Number::New(env, 0), Napi::Number::New(env, static_cast<double>(n))});
  }

 private:
  struct Region {
    Napi::ObjectReference ref;
    uint8_t* data = nullptr;
    size_t cap = 0;
  };
  static size_t TierBytes(size_t n) {
    for (size_t t : BufferPool::kTierBytes) {
      if (n <= t) return t;
    }
    return n;
  }
  void Drop(Region* r) {
    if (r->ref.IsEmpty()) return;
    Napi::Env env(env_);
    addon_->pool.Release(env, r->ref.Value());
    *r = Region();
  }
  napi_env env_;
  std::shared_ptr<AddonData> addon_;
  Region cur_;
  Region done_;
};

class FrameParserWrap : public Napi::ObjectWrap<FrameParserWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FrameParser",
                       {
                           InstanceMethod<&FrameParserWrap::Parse>("parse"),
                           InstanceMethod<&FrameParserWrap::Reset>("reset"),
                           InstanceAccessor<&FrameParserWrap::Carry>("carry"),
                           InstanceAccessor<&FrameParserWrap::PendingBytes>("pendingBytes"),
                       });
  }

  explicit FrameParserWrap(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<FrameParserWrap>(info), core_(FrameLimits{}), carry_(info.Env()) {
    Napi::Env env = info.Env();
    double role, frames_per_call;
    FrameLimits limits;
    double fragments;
    if (!GetInteger(info, 0, 0, 1, "FrameParser: role must be 0 (client) or 1 (server)", &role)) return;
    if (!GetLimit(info, 1, "FrameParser: maxFrameBytes must be a non-negative integer", &limits.max_frame_bytes)) return;
    if (!GetLimit(info, 2, "FrameParser: maxMessageBytes must be a non-negative integer", &limits.max_message_bytes)) return;
    if (!GetInteger(info, 3, 0, INFINITY, "FrameParser: maxFragments must be a non-negative integer", &fragments)) return;
    if (!GetBool(info, 4, "FrameParser: allowRsv1 must be a boolean", false, &limits.allow_rsv1)) return;
    if (!GetInteger(info, 5, 1, 1 << 20, "FrameParser: maxFramesPerCall must be an integer in 1..1048576", &frames_per_call)) return;
    limits.server = role == kRoleServer;
    limits.max_fragments = fragments >= 9007199254740992.0 ? UINT64_MAX : static_cast<uint64_t>(fragments);
    core_ = FrameParserCore(limits);
    max_frames_ = static_cast<uint32_t>(frames_per_call);

    // Both arrays live as long as the parser; JS reads them after every parse call. Own
    // read-only properties (not accessors) so that reading them costs no native call.
    // They share one ArrayBuffer (descriptors first, state in the last 4 words), so a
    // parse call looks up one data pointer.
    const size_t desc_words = static_cast<size_t>(max_frames_) * kDescriptorWords;
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, (desc_words + kStateWords) * 4);
    if (ab.IsEmpty()) return;
    std::memset(ab.Data(), 0, ab.ByteLength());
    Napi::Uint32Array descriptors = Napi::Uint32Array::New(env, desc_words, ab, 0);
    Napi::Int32Array state = Napi::Int32Array::New(env, kStateWords, ab, desc_words * 4);
    state[state::kResume] = -1;
    words_ = Napi::Persistent(ab);
    words_bytes_ = ab.ByteLength();
    Value().DefineProperties({
        Napi::PropertyDescriptor::Value("descriptors", descriptors, napi_enumerable),
        Napi::PropertyDescriptor::Value("state", state, napi_enumerable),
    });
  }

 private:
  // Current data pointer of descriptors + state: looked up on every call, because an
  // ArrayBuffer can be detached (transferred) under us, and a kept pointer would then
  // point into memory someone else may free.
  uint32_t* Words(Napi::Env env) {
    napi_value ab;
    void* data = nullptr;
    size_t len = 0;
    if (napi_get_reference_value(env, words_, &ab) != napi_ok ||
        napi_get_arraybuffer_info(env, ab, &data, &len) != napi_ok || data == nullptr ||
        len != words_bytes_) {
      Napi::Error::New(env, "FrameParser: descriptors/state were detached").ThrowAsJavaScriptException();
      return nullptr;
    }
    return static_cast<uint32_t*>(data);
  }

  Napi::Value Parse(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Bytes chunk;
    if (!GetBytesArg(info, 0, "FrameParser.parse: chunk must be a Uint8Array", &chunk)) return Napi::Value();
    if (chunk.len > 0xffffffffu) {
      ThrowRange(env, "FrameParser.parse: chunk over 4 GiB");
      return Napi::Value();
    }
    double offset;
    if (!GetInteger(info, 1, 0, static_cast<double>(chunk.len), "FrameParser.parse: offset must be an integer in 0..chunk.length", &offset, true, 0)) {
      return Napi::Value();
    }
    uint32_t* words = Words(env);
    if (!words) return Napi::Value();
    int32_t* state = reinterpret_cast<int32_t*>(words + static_cast<size_t>(max_frames_) * kDescriptorWords);
    int32_t rc = core_.Parse(chunk.data, chunk.len, static_cast<size_t>(offset), words, max_frames_, state, &carry_);
    return Napi::Number::New(env, rc);
  }

  Napi::Value Reset(const Napi::CallbackInfo& info) {
    core_.Reset(&carry_);
    uint32_t* words = Words(info.Env());
    if (!words) return Napi::Value();
    int32_t* state = reinterpret_cast<int32_t*>(words + static_cast<size_t>(max_frames_) * kDescriptorWords);
    state[state::kCount] = 0;
    state[state::kResume] = -1;
    state[state::kErrno] = 0;
    state[state::kErrorOffset] = 0;
    return info.Env().Undefined();
  }

  Napi::Value Carry(const Napi::CallbackInfo& info) {
    if (!core_.has_carry_frame()) return Napi::Buffer<uint8_t>::New(info.Env(), 0);
    return carry_.View(core_.carry_length());
  }

  Napi::Value PendingBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(core_.PendingBytes()));
  }

  FrameParserCore core_;
  PooledCarry carry_;
  uint32_t max_frames_ = 1;
  Napi::Reference<Napi::ArrayBuffer> words_;
  size_t words_bytes_ = 0;
};

// ---------------------------------------------------------------------------------------
// FrameEncoder

// take() copies outputs up to this size into a fresh JS Buffer and keeps its own memory;
// larger ones are handed over without a copy (an external Buffer freed by its finalizer).
constexpr size_t kTakeCopyMax = 16 << 10;

class FrameEncoderWrap : public Napi::ObjectWrap<FrameEncoderWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FrameEncoder",
                       {
                           InstanceMethod<&FrameEncoderWrap::Frame>("frame"),
                           InstanceMethod<&FrameEncoderWrap::Take>("take"),
                           InstanceAccessor<&FrameEncoderWrap::Length>("length"),
                       });
  }

  explicit FrameEncoderWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FrameEncoderWrap>(info) {
    double role, capacity;
    if (!GetInteger(info, 0, 0, 1, "FrameEncoder: role must be 0 (client) or 1 (server)", &role)) return;
    if (!GetInteger(info, 1, 0, 1 << 30, "FrameEncoder: initialCapacity must be an integer in 0..2^30", &capacity, true, 0)) return;
    core_ = new (std::nothrow) FrameEncoderCore(role == kRoleClient, static_cast<size_t>(capacity));
    if (!core_) Napi::Error::New(info.Env(), "FrameEncoder: out of memory").ThrowAsJavaScriptException();
  }
  ~FrameEncoderWrap() override { delete core_; }

 private:
  Napi::Value Frame(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    double op;
    Bytes payload;
    bool fin, rsv1;
    if (!GetInteger(info, 0, 0, 15, "FrameEncoder.frame: opcode must be an integer", &op)) return Napi::Value();
    if (!GetBytesArg(info, 1, "FrameEncoder.frame: payload must be a Uint8Array", &payload)) return Napi::Value();
    if (!GetBool(info, 2, "FrameEncoder.frame: fin must be a boolean", true, &fin)) return Napi::Value();
    if (!GetBool(info, 3, "FrameEncoder.frame: rsv1 must be a boolean", false, &rsv1)) return Napi::Value();
    const uint8_t opcode = static_cast<uint8_t>(op);
    const bool control = opcode >= 0x8;
    if ((opcode > 0x2 && opcode < 0x8) || opcode > 0xa) {
      ThrowRange(env, "FrameEncoder.frame: reserved opcode");
      return Napi::Value();
    }
    if (control && (!fin || rsv1 || payload.len > 125)) {
      ThrowRange(env, "FrameEncoder.frame: control frames need fin, no rsv1 and at most 125 bytes");
      return Napi::Value();
    }
    if (rsv1 && opcode == opcode::kContinuation) {
      ThrowRange(env, "FrameEncoder.frame: rsv1 belongs on the first frame of a message only");
      return Napi::Value();
    }
    uint8_t key[4] = {0, 0, 0, 0};
    if (core_->client() && !Data(env)->keys.Next(key)) {
      Napi::Error::New(env, "FrameEncoder.frame: no randomness for the mask key").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (!core_->Append(opcode, payload.data, payload.len, fin, rsv1, key)) {
      Napi::Error::New(env, "FrameEncoder.frame: out of memory").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    return env.Undefined();
  }

  Napi::Value Take(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const size_t len = core_->length();
    if (len == 0) return env.Null();
    if (len <= kTakeCopyMax) {
      Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::Copy(env, core_->data(), len);
      if (out.IsEmpty()) return Napi::Value();
      core_->Clear();
      return out;
    }
    size_t n = 0;
    uint8_t* p = core_->Release(&n);
    // Ownership passes to the Buffer: the finalizer frees the memory, and nothing else
    // keeps a pointer to it. Where external buffers are not allowed, NewOrCopy copies and
    // runs the finalizer at once.
    return Napi::Buffer<uint8_t>::NewOrCopy(env, p, n, [](Napi::Env, uint8_t* data) { std::free(data); });
  }

  Napi::Value Length(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(core_->length()));
  }

  FrameEncoderCore* core_ = nullptr;
};

// ---------------------------------------------------------------------------------------
// Functions

// mask(source, mask, output, offset, length): ws's bufferutil signature, bounds-checked.
Napi::Value Mask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes src, key, out;
  double offset, length;
  if (!GetBytesArg(info, 0, "mask: source must be a Uint8Array", &src) ||
      !GetBytesArg(info, 1, "mask: mask must be a Uint8Array", &key) ||
      !GetBytesArg(info, 2, "mask: output must be a Uint8Array", &out) ||
      !GetInteger(info, 3, 0, 9007199254740991.0, "mask: offset must be a non-negative integer", &offset) ||
      !GetInteger(info, 4, 0, 9007199254740991.0, "mask: length must be a non-negative integer", &length)) {
    return Napi::Value();
  }
  if (key.len < 4) {
    ThrowRange(env, "mask: mask must hold 4 bytes");
    return Napi::Value();
  }
  if (length > static_cast<double>(src.len) || offset + length > static_cast<double>(out.len)) {
    ThrowRange(env, "mask: offset/length out of bounds");
    return Napi::Value();
  }
  uint8_t k[4];
  std::memcpy(k, key.data, 4);  // the key may alias the output
  if (length > 0) XorMask(out.data + static_cast<size_t>(offset), src.data, static_cast<size_t>(length), k, 0);
  return env.Undefined();
}

Napi::Value Unmask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes buf, key;
  if (!GetBytesArg(info, 0, "unmask: buffer must be a Uint8Array", &buf) ||
      !GetBytesArg(info, 1, "unmask: mask must be a Uint8Array", &key)) {
    return Napi::Value();
  }
  if (key.len < 4) {
    ThrowRange(env, "unmask: mask must hold 4 bytes");
    return Napi::Value();
  }
  uint8_t k[4];
  std::memcpy(k, key.data, 4);
  if (buf.len > 0) XorMask(buf.data, buf.data, buf.len, k, 0);
  return env.Undefined();
}

// createFrameRunner(maxFrames) -> { run(chunk), descriptors, args }: frame_run.h for the
// TypeScript parser. args is an Int32Array [pos, count, maxFrames, flags, maxLength];
// run(chunk) describes the run at chunk[pos..] into descriptors, writes pos and count back
// and returns the count. flags: 1 server role, 2 inside a fragmented message.
//
// Built for the cost of the call, which decides when the run pays off: run takes one
// argument and finds its memory through the function's own data pointer (no unwrap, no
// reference lookups; each typed-array argument costs ~20 ns, and a plain 7-argument
// function measured ~100 ns against ~35 ns for this). descriptors and args view native
// memory (an external ArrayBuffer) that run keeps alive itself, so detaching or
// transferring the ArrayBuffer only hides it from JS, never frees it under run.
struct RunnerBlock {
  std::atomic<int> refs{2};  // the ArrayBuffer and the run function
  uint32_t* words = nullptr;  // max_frames * kDescriptorWords descriptor words, then args
  uint32_t max_frames = 0;
};
constexpr size_t kRunArgs = 5;

void ReleaseRunnerBlock(RunnerBlock* b) {
  if (b->refs.fetch_sub(1) == 1) {
    std::free(b->words);
    delete b;
  }
}

napi_value RunnerRun(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value argv[1];
  void* data = nullptr;
  if (napi_get_cb_info(env, cbinfo, &argc, argv, nullptr, &data) != napi_ok) return nullptr;
  Bytes chunk;
  if (argc < 1 || !GetBytes(env, argv[0], &chunk)) {
    napi_throw_type_error(env, nullptr, "run: chunk must be a Uint8Array");
    return nullptr;
  }
  RunnerBlock* b = static_cast<RunnerBlock*>(data);
  int32_t* args = reinterpret_cast<int32_t*>(b->words + static_cast<size_t>(b->max_frames) * kDescriptorWords);
  const int32_t pos = args[0], count = args[1], max_frames = args[2], flags = args[3], max_len = args[4];
  if (chunk.len > 0x7fffffffu || pos < 0 || static_cast<size_t>(pos) > chunk.len || count < 0 ||
      max_frames < count || static_cast<uint32_t>(max_frames) > b->max_frames || flags < 0 || flags > 3 ||
      max_len < -1 || max_len > 0xffff) {
    napi_throw_range_error(env, nullptr,
                           "run: args out of range (chunk under 2 GiB, pos in 0..chunk.length, 0 <= count <= "
                           "maxFrames <= the runner's maxFrames, flags 0..3, maxLength -1..65535)");
    return nullptr;
  }
  uint32_t n = static_cast<uint32_t>(count);
  size_t end = static_cast<size_t>(pos);
  if (max_len >= 0) {
    end = DescribeRun(chunk.data, chunk.len, end, b->words, static_cast<uint32_t>(max_frames), &n, (flags & 1) != 0,
                      (flags & 2) != 0, static_cast<uint32_t>(max_len));
  }
  args[0] = static_cast<int32_t>(end);
  args[1] = static_cast<int32_t>(n);
  napi_value result;
  if (napi_create_uint32(env, n, &result) != napi_ok) return nullptr;
  return result;
}

Napi::Value CreateFrameRunner(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double frames;
  if (!GetInteger(info, 0, 1, 1 << 20, "createFrameRunner: maxFrames must be an integer in 1..1048576", &frames)) {
    return Napi::Value();
  }
  const size_t max_frames = static_cast<size_t>(frames);
  const size_t desc_words = max_frames * kDescriptorWords;
  const size_t bytes = (desc_words + kRunArgs) * sizeof(uint32_t);
  RunnerBlock* b = new (std::nothrow) RunnerBlock();
  uint32_t* words = static_cast<uint32_t*>(std::calloc(desc_words + kRunArgs, sizeof(uint32_t)));
  if (!b || !words) {
    delete b;
    std::free(words);
    Napi::Error::New(env, "createFrameRunner: out of memory").ThrowAsJavaScriptException();
    return Napi::Value();
  }
  b->words = words;
  b->max_frames = static_cast<uint32_t>(max_frames);
  int32_t* args = reinterpret_cast<int32_t*>(words + desc_words);
  args[2] = static_cast<int32_t>(max_frames);
  args[4] = -1;

  napi_value ab, fn;
  if (napi_create_external_arraybuffer(
          env, words, bytes, [](napi_env, void*, void* hint) { ReleaseRunnerBlock(static_cast<RunnerBlock*>(hint)); }, b,
          &ab) != napi_ok) {
    // Runtimes without external ArrayBuffers: nothing was handed over.
    std::free(words);
    delete b;
    if (!env.IsExceptionPending()) Napi::Error::New(env, "createFrameRunner: external ArrayBuffers unavailable").ThrowAsJavaScriptException();
    return Napi::Value();
  }
  if (napi_create_function(env, "run", NAPI_AUTO_LENGTH, RunnerRun, b, &fn) != napi_ok ||
      napi_add_finalizer(env, fn, b, [](napi_env, void* data, void*) { ReleaseRunnerBlock(static_cast<RunnerBlock*>(data)); },
                         nullptr, nullptr) != napi_ok) {
    // The ArrayBuffer's finalizer will release its share; release the function's here.
    ReleaseRunnerBlock(b);
    if (!env.IsExceptionPending()) Napi::Error::New(env, "createFrameRunner: cannot create run()").ThrowAsJavaScriptException();
    return Napi::Value();
  }
  Napi::ArrayBuffer buffer(env, ab);
  Napi::Object out = Napi::Object::New(env);
  out.Set("run", Napi::Value(env, fn));
  out.Set("descriptors", Napi::Uint32Array::New(env, desc_words, buffer, 0));
  out.Set("args", Napi::Int32Array::New(env, kRunArgs, buffer, desc_words * sizeof(uint32_t)));
  return out;
}

Napi::Value EnvelopeEncodeInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes out, payload;
  double offset, type, flags;
  if (!GetBytesArg(info, 0, "envelopeEncodeInto: out must be a Uint8Array", &out) ||
      !GetInteger(info, 1, 0, 9007199254740991.0, "envelopeEncodeInto: offset must be a non-negative integer", &offset) ||
      !GetInteger(info, 2, kEnvelopeTypeMin, kEnvelopeTypeMax, "envelopeEncodeInto: type must be an integer in 1..6", &type) ||
      !GetInteger(info, 3, 0, kEnvelopeFlagsKnown, "envelopeEncodeInto: flags must be an integer in 0..15", &flags) ||
      !GetBytesArg(info, 4, "envelopeEncodeInto: payload must be a Uint8Array", &payload)) {
    return Napi::Value();
  }
  if (payload.len > 0xffffffffu) {
    ThrowRange(env, "envelopeEncodeInto: payload over 4 GiB");
    return Napi::Value();
  }
  if (offset + kEnvelopeHeaderBytes + static_cast<double>(payload.len) > static_cast<double>(out.len)) {
    ThrowRange(env, "envelopeEncodeInto: out is too small");
    return Napi::Value();
  }
  size_t end = static_cast<size_t>(offset) +
               EnvelopeEncode(out.data + static_cast<size_t>(offset), static_cast<uint8_t>(type),
                              static_cast<uint8_t>(flags), payload.data, static_cast<uint32_t>(payload.len));
  return Napi::Number::New(env, static_cast<double>(end));
}

Napi::Value EnvelopeDecodeFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes msg;
  uint64_t max_payload;
  uint32_t* out;
  size_t out_len;
  if (!GetBytesArg(info, 0, "envelopeDecode: message must be a Uint8Array", &msg) ||
      !GetLimit(info, 1, "envelopeDecode: maxPayload must be a non-negative integer", &max_payload) ||
      !GetUint32Array(info, 2, "envelopeDecode: out must be a Uint32Array", &out, &out_len)) {
    return Napi::Value();
  }
  if (out_len < 4) {
    ThrowRange(env, "envelopeDecode: out must hold 4 words");
    return Napi::Value();
  }
  return Napi::Number::New(env, EnvelopeDecode(msg.data, msg.len, max_payload, out));
}

Napi::Value EnvelopeDecodeRunFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes buf;
  uint64_t max_payload;
  uint32_t* desc;
  size_t desc_len;
  if (!GetBytesArg(info, 0, "envelopeDecodeRun: buf must be a Uint8Array", &buf) ||
      !GetLimit(info, 1, "envelopeDecodeRun: maxPayload must be a non-negative integer", &max_payload) ||
      !GetUint32Array(info, 2, "envelopeDecodeRun: descriptors must be a Uint32Array", &desc, &desc_len)) {
    return Napi::Value();
  }
  return Napi::Number::New(
      env, EnvelopeDecodeRun(buf.data, buf.len, max_payload, desc, desc_len / kEnvelopeDescriptorWords));
}

Napi::Value Acquire(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double size;
  // 2^32: Node 20's Buffer limit on 64-bit platforms.
  if (!GetInteger(info, 0, 0, 4294967296.0, "acquire: size must be an integer in 0..2^32", &size)) return Napi::Value();
  uint8_t* data;
  return Data(env)->pool.Acquire(env, static_cast<size_t>(size), &data);
}

Napi::Value Release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes b;
  if (!GetBytesArg(info, 0, "release: buf must be a Buffer from acquire()", &b) || b.type != napi_uint8_array) {
    if (!env.IsExceptionPending()) ThrowType(env, "release: buf must be a Buffer from acquire()");
    return Napi::Value();
  }
  Data(env)->pool.Release(env, info[0]);
  return env.Undefined();
}

Napi::Value PoolStats(const Napi::CallbackInfo& info) { return Data(info.Env())->pool.Stats(info.Env()); }

Napi::Value IsUtf8Fn(const Napi::CallbackInfo& info) {
  Bytes b;
  if (!GetBytesArg(info, 0, "isUtf8: buf must be a Uint8Array", &b)) return Napi::Value();
  return Napi::Boolean::New(info.Env(), IsUtf8(b.data, b.len));
}

// listenReusePort(host: string, port: number, backlog: number, reusePort = true): number (a
// descriptor, bound and listening; without reusePort a port in use fails as it should).
Napi::Value ListenReusePortFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber()) {
    ThrowType(env, "listenReusePort(host: string, port: number, backlog: number)");
    return Napi::Value();
  }
  double port = info[1].As<Napi::Number>().DoubleValue();
  double backlog = info[2].As<Napi::Number>().DoubleValue();
  if (!(port >= 0 && port <= 65535) || std::floor(port) != port || !(backlog >= 1 && backlog <= 65535)) {
    ThrowRange(env, "listenReusePort: port must be an integer 0..65535 and backlog 1..65535");
    return Napi::Value();
  }
  std::string error;
  const bool reuse = info.Length() < 4 || !info[3].IsBoolean() || info[3].As<Napi::Boolean>().Value();
  int fd = ListenReusePort(info[0].As<Napi::String>().Utf8Value(), static_cast<int>(port), static_cast<int>(backlog), &error,
                           reuse);
  if (fd < 0) {
    Napi::Error::New(env, error).ThrowAsJavaScriptException();
    return Napi::Value();
  }
  return Napi::Number::New(env, fd);
}

// socketPort(fd): the local port of a bound socket, or -1.
Napi::Value SocketPortFn(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) {
    ThrowType(info.Env(), "socketPort(fd: number)");
    return Napi::Value();
  }
  return Napi::Number::New(info.Env(), SocketPort(info[0].As<Napi::Number>().Int32Value()));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  AddonHandle* handle = new (std::nothrow) AddonHandle();
  if (handle) handle->data = std::make_shared<AddonData>();
  if (!handle || !handle->data) {
    Napi::Error::New(env, "sluice: out of memory").ThrowAsJavaScriptException();
    return exports;
  }
  AddonData* data = handle->data.get();
  // Finalized by N-API when this environment (main thread or worker) ends.
  env.SetInstanceData<AddonHandle, FinalizeAddon>(handle);
  Napi::Function parser = FrameParserWrap::Define(env);
  Napi::Function encoder = FrameEncoderWrap::Define(env);
  data->parser_ctor = Napi::Persistent(parser);
  data->encoder_ctor = Napi::Persistent(encoder);
  exports.Set("FrameParser", parser);
  exports.Set("FrameEncoder", encoder);
  exports.Set("createFrameRunner", Napi::Function::New<CreateFrameRunner>(env, "createFrameRunner"));
  exports.Set("mask", Napi::Function::New<Mask>(env, "mask"));
  exports.Set("unmask", Napi::Function::New<Unmask>(env, "unmask"));
  exports.Set("envelopeEncodeInto", Napi::Function::New<EnvelopeEncodeInto>(env, "envelopeEncodeInto"));
  exports.Set("envelopeDecode", Napi::Function::New<EnvelopeDecodeFn>(env, "envelopeDecode"));
  exports.Set("envelopeDecodeRun", Napi::Function::New<EnvelopeDecodeRunFn>(env, "envelopeDecodeRun"));
  exports.Set("acquire", Napi::Function::New<Acquire>(env, "acquire"));
  exports.Set("release", Napi::Function::New<Release>(env, "release"));
  exports.Set("poolStats", Napi::Function::New<PoolStats>(env, "poolStats"));
  exports.Set("isUtf8", Napi::Function::New<IsUtf8Fn>(env, "isUtf8"));
  exports.Set("listenReusePort", Napi::Function::New<ListenReusePortFn>(env, "listenReusePort"));
  exports.Set("socketPort", Napi::Function::New<SocketPortFn>(env, "socketPort"));
  InitEngine(env, exports);
  InitTunnel(env, exports);
  return exports;
}

}  // namespace

}  // namespace sluice

namespace {
Napi::Object InitSluice(Napi::Env env, Napi::Object exports) { return sluice::Init(env, exports); }
}  // namespace

NODE_API_MODULE(sluice, InitSluice)
