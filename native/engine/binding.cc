// N-API door of the engine (engine.h): `new Engine(onEvents, counters)`, then per session
// adopt / shutdown / destroy / flow, and close. One crossing per session and per batch of
// events, never per message.
#include "binding.h"

#ifdef __linux__

#include <cmath>
#include <string>

#include "engine.h"
#include "http_head.h"
#include "tls.h"
#include "../loop_turn.h"

namespace sluice {

namespace {

using engine::Engine;
using engine::Event;
using engine::Params;

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine", {
      InstanceMethod<&EngineWrap::Adopt>("adopt"),
      InstanceMethod<&EngineWrap::Shutdown>("shutdown"),
      InstanceMethod<&EngineWrap::Fail>("fail"),
      InstanceMethod<&EngineWrap::Send>("send"),
      InstanceMethod<&EngineWrap::Destroy>("destroy"),
      InstanceMethod<&EngineWrap::Flow>("flow"),
      InstanceMethod<&EngineWrap::Close>("close"),
      InstanceMethod<&EngineWrap::Sync>("sync"),
      InstanceMethod<&EngineWrap::Listen>("listen"),
      InstanceMethod<&EngineWrap::StopListening>("stopListening"),
      InstanceMethod<&EngineWrap::Refuse>("refuse"),
      InstanceMethod<&EngineWrap::Release>("release"),
      InstanceMethod<&EngineWrap::Dial>("dial"),
      InstanceMethod<&EngineWrap::AbortDial>("abortDial"),
      InstanceMethod<&EngineWrap::TlsClient>("tlsClient"),
      InstanceAccessor<&EngineWrap::Sessions>("sessions"),
    });
  }

  // new Engine(onEvents: (events: object[]) => void, counters: Float64Array)
  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsFunction() || !info[1].IsTypedArray() ||
        info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
        info[1].As<Napi::Float64Array>().ElementLength() < static_cast<size_t>(engine::slot::kCount)) {
      Napi::TypeError::New(env, "new Engine(onEvents: function, counters: Float64Array of 27+)").ThrowAsJavaScriptException();
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Napi::Error::New(env, "Engine: no event loop").ThrowAsJavaScriptException();
      return;
    }
    callback_ = Napi::Persistent(info[0].As<Napi::Function>());
    if (info.Length() >= 3 && info[2].IsFunction()) messages_ = Napi::Persistent(info[2].As<Napi::Function>());
    counters_ref_ = Napi::Persistent(info[1].As<Napi::Float64Array>());
    counters_ = info[1].As<Napi::Float64Array>().Data();
    context_ = new Napi::AsyncContext(env, "sluice:engine");
    engine_ = new Engine(loop, this, &EngineWrap::Notify);
    // An active idle handle (LoopTurn) makes the loop's next poll return at once (as
    // setImmediate does): what was noted during a timer reaches JavaScript this turn, not
    // at the next I/O or timer.
    turn_ = new LoopTurn(loop, [](void* w) { static_cast<EngineWrap*>(w)->Deliver(); }, this);
    env_ = env;
  }

  ~EngineWrap() override { Release(); }

 private:
  static void Notify(void* owner) {
    EngineWrap* w = static_cast<EngineWrap*>(owner);
    if (w->turn_ != nullptr) w->turn_->Request();
  }

  // Once per loop turn with events: one call into JavaScript with all of them.
  void Deliver() {
    if (engine_ == nullptr) return;
    SyncCounters();
    Napi::Env env = env_;
    Napi::HandleScope scope(env);
    // Events first: a session that opened this turn is known to JavaScript (its record is
    // made in the microtasks that run when the events call returns) before its first
    // messages come. A session that ended has no messages waiting (the engine holds an end
    // back behind them).
    std::vector<Event> events;
    events.swap(engine_->events());
    if (!events.empty()) DeliverEvents(env, events);
    if (engine_ != nullptr && engine_->has_batch()) DeliverMessages(env);
  }

  void DeliverEvents(Napi::Env env, const std::vector<Event>& events) {
    Napi::Array list = Napi::Array::New(env, events.size());
    for (size_t i = 0; i < events.size(); i++) {
      const Event& e = events[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("type", Napi::Number::New(env, e.type));
      o.Set("id", Napi::Number::New(env, e.id));
      if (e.type == 3) {
        o.Set("method", Latin1(env, e.text));
        o.Set("target", Latin1(env, e.text2));
        o.Set("remote", Napi::String::New(env, e.client_reason));
        Napi::Array headers = Napi::Array::New(env, e.list.size());
        for (size_t j = 0; j < e.list.size(); j++) headers.Set(static_cast<uint32_t>(j), Latin1(env, e.list[j]));
        o.Set("headers", headers);
      } else if (e.type == 4) {
        o.Set("kind", Napi::Number::New(env, e.client_code));
        o.Set("message", Napi::String::New(env, e.client_reason));
        o.Set("status", Napi::Number::New(env, e.upstream_code));
        o.Set("statusText", Latin1(env, e.upstream_reason));
        o.Set("body", Napi::Buffer<char>::Copy(env, e.body.data(), e.body.size()));
      } else if (e.type == 5) {
        o.Set("protocol", Latin1(env, e.client_reason));
        o.Set("extensions", Latin1(env, e.text));
      } else if (e.type == 6 || e.type == 7) {
        // the client went away during the handshake: nothing more to say
      } else if (e.type == 1) {
        o.Set("clientCode", Napi::Number::New(env, e.client_code));
        o.Set("clientReason", Napi::String::New(env, e.client_reason));
        o.Set("upstreamCode", Napi::Number::New(env, e.upstream_code));
        o.Set("upstreamReason", Napi::String::New(env, e.upstream_reason));
        o.Set("closedFirst", Napi::Number::New(env, e.closed_first));
        o.Set("messagesIn", Napi::Number::New(env, e.msgs_in));
        o.Set("messagesOut", Napi::Number::New(env, e.msgs_out));
        o.Set("bytesIn", Napi::Number::New(env, e.bytes_in));
        o.Set("bytesOut", Napi::Number::New(env, e.bytes_out));
      } else {
        o.Set("fill", Napi::Number::New(env, e.fill));
        o.Set("queuedMessages", Napi::Number::New(env, e.upstream_code));
        o.Set("queuedBytes", Napi::Number::New(env, e.bytes_out));
      }
      list.Set(static_cast<uint32_t>(i), o);
    }
    callback_.MakeCallback(Value(), {list}, *context_);
    if (env.IsExceptionPending()) {
      Napi::Error err = env.GetAndClearPendingException();
      napi_fatal_exception(env, err.Value());
    }
  }

  // Messages mode: the batch of this loop turn, in one call: onMessages(bytes: Buffer,
  // descriptors: Float64Array of 5 per message: session id, 1 from the client, opcode,
  // offset, length). What JavaScript sends during the call is written when it returns.
  void DeliverMessages(Napi::Env env) {
    engine_->BeginDelivery(&batch_bytes_, &batch_desc_);
    if (!messages_.IsEmpty()) {
      Napi::Buffer<uint8_t> bytes = Napi::Buffer<uint8_t>::Copy(env, batch_bytes_.data(), batch_bytes_.size());
      Napi::Float64Array desc = Napi::Float64Array::New(env, batch_desc_.size());
      std::memcpy(desc.Data(), batch_desc_.data(), batch_desc_.size() * sizeof(double));
      messages_.MakeCallback(Value(), {bytes, desc}, *context_);
    }
    if (engine_ != nullptr) engine_->EndDelivery();
    // Kept for the next batch (no allocation per turn), unless one was large.
    batch_bytes_.clear();
    batch_desc_.clear();
    if (batch_bytes_.capacity() > (1u << 20)) std::vector<uint8_t>().swap(batch_bytes_);
    if (env.IsExceptionPending()) {
      Napi::Error err = env.GetAndClearPendingException();
      napi_fatal_exception(env, err.Value());
    }
  }

  void SyncCounters() {
    if (engine_ == nullptr) return;
    const double* src = engine_->counters();
    for (int i = 0; i < engine::slot::kCount; i++) counters_[i] = src[i];
  }

  void Release() {
    if (engine_ != nullptr) {
      SyncCounters();
      engine_->Dispose();
      engine_ = nullptr;
    }
    delete turn_;
    turn_ = nullptr;
    delete context_;
    context_ = nullptr;
  }

  // Session params from a Float64Array of kParamCount (engine.h Params, in order).
  static bool ReadParams(Napi::Env env, Napi::Value value, Params* p) {
    Napi::TypedArray pa = value.As<Napi::TypedArray>();
    if (pa.TypedArrayType() != napi_float64_array || pa.ElementLength() < static_cast<size_t>(engine::kParamCount)) {
      Napi::TypeError::New(env, "params must be a Float64Array of 13").ThrowAsJavaScriptException();
      return false;
    }
    const double* v = pa.As<Napi::Float64Array>().Data();
    for (int i = 0; i < engine::kParamCount; i++) {
      if (!(v[i] >= 0) || !std::isfinite(v[i])) {
        Napi::RangeError::New(env, "params must be finite and non-negative").ThrowAsJavaScriptException();
        return false;
      }
    }
    p->max_frame_bytes = static_cast<uint64_t>(v[0]);
    p->max_fragments = static_cast<uint64_t>(v[1]);
    p->high_water = static_cast<uint64_t>(v[2]);
    p->policy = static_cast<int>(v[3]);
    p->channel_bytes = static_cast<uint64_t>(v[4]);
    p->channel_capacity = static_cast<uint64_t>(v[5]);
    p->ping_ms = static_cast<uint64_t>(v[6]);
    p->timeout_ms = static_cast<uint64_t>(v[7]);
    p->messages_per_second = v[8];
    p->bytes_per_second = v[9];
    p->expires_in_ms = v[10];
    p->mode = static_cast<int>(v[11]);
    p->envelope = static_cast<int>(v[12]);
    if (p->policy > 2 || p->mode > 1 || p->envelope > 2 || (p->envelope != 0 && p->mode != 1) || p->max_frame_bytes > 0xffffffffull || p->high_water == 0 || p->channel_bytes == 0 ||
        p->channel_capacity == 0) {
      Napi::RangeError::New(env, "params out of range").ThrowAsJavaScriptException();
      return false;
    }
    return true;
  }

  // adopt(clientFd, upstreamFd, clientHead: Uint8Array, upstreamHead: Uint8Array, params: Float64Array): number
  Napi::Value Adopt(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (engine_ == nullptr) {
      Napi::Error::New(env, "adopt: the engine is closed").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (info.Length() < 5 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsTypedArray() ||
        !info[3].IsTypedArray() || !info[4].IsTypedArray()) {
      Napi::TypeError::New(env, "adopt(clientFd, upstreamFd, clientHead, upstreamHead, params)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    Napi::TypedArray ch = info[2].As<Napi::TypedArray>();
    Napi::TypedArray uh = info[3].As<Napi::TypedArray>();
    Napi::TypedArray pa = info[4].As<Napi::TypedArray>();
    if (ch.TypedArrayType() != napi_uint8_array || uh.TypedArrayType() != napi_uint8_array ||
        pa.TypedArrayType() != napi_float64_array || pa.ElementLength() < static_cast<size_t>(engine::kParamCount)) {
      Napi::TypeError::New(env, "adopt: heads must be Uint8Arrays and params a Float64Array of 13").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    const double cfd = info[0].As<Napi::Number>().DoubleValue();
    const double ufd = info[1].As<Napi::Number>().DoubleValue();
    if (!(cfd >= 0 && cfd < 1 << 30 && std::floor(cfd) == cfd) || !(ufd >= 0 && ufd < 1 << 30 && std::floor(ufd) == ufd)) {
      Napi::RangeError::New(env, "adopt: descriptors must be non-negative integers").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    Params p;
    if (!ReadParams(env, pa, &p)) return Napi::Value();
    Napi::Uint8Array chb = ch.As<Napi::Uint8Array>();
    Napi::Uint8Array uhb = uh.As<Napi::Uint8Array>();
    std::string error;
    const uint32_t id = engine_->Adopt(static_cast<int>(cfd), static_cast<int>(ufd), chb.Data(), chb.ByteLength(),
                                       uhb.Data(), uhb.ByteLength(), p, &error);
    if (id == 0) {
      Napi::Error::New(env, "adopt: " + error).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    return Napi::Number::New(env, id);
  }

  // shutdown(id, code, reason[, upstreamCode, upstreamReason[, byClient]]): the client gets
  // code, the upstream upstreamCode (default 1001) with upstreamReason (default: reason);
  // byClient: an envelope client's own close (it closed first).
  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const bool upstream = info.Length() >= 5;
    if (info.Length() < 3 || !info[0].IsNumber() || !Whole(info[1], 0, 4999) || !info[2].IsString() ||
        (upstream && (!Whole(info[3], 0, 4999) || !info[4].IsString()))) {
      Napi::TypeError::New(env, "shutdown(id, code 0..4999, reason[, upstreamCode, upstreamReason])").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (engine_ == nullptr) return Napi::Boolean::New(env, false);
    const int code = info[1].As<Napi::Number>().Int32Value();
    const std::string reason = info[2].As<Napi::String>().Utf8Value();
    const int ucode = upstream ? info[3].As<Napi::Number>().Int32Value() : 1001;
    const std::string ureason = upstream ? info[4].As<Napi::String>().Utf8Value() : reason;
    const bool by_client = info.Length() >= 6 && info[5].ToBoolean().Value();
    return Napi::Boolean::New(env, engine_->Shutdown(info[0].As<Napi::Number>().Uint32Value(), code, reason, ucode, ureason, by_client));
  }

  // fail(id, client: boolean, code, reason, partnerCode, partnerReason): that side broke a
  // rule JavaScript checks (an envelope); it gets code and its connection ends promptly.
  Napi::Value Fail(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 6 || !info[0].IsNumber() || !info[1].IsBoolean() || !Whole(info[2], 1000, 4999) ||
        !info[3].IsString() || !Whole(info[4], 1000, 4999) || !info[5].IsString()) {
      Napi::TypeError::New(env, "fail(id, client, code, reason, partnerCode, partnerReason)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (engine_ == nullptr) return Napi::Boolean::New(env, false);
    return Napi::Boolean::New(env, engine_->FailSide(info[0].As<Napi::Number>().Uint32Value(), info[1].As<Napi::Boolean>().Value(),
                                                     info[2].As<Napi::Number>().Int32Value(), info[3].As<Napi::String>().Utf8Value(),
                                                     info[4].As<Napi::Number>().Int32Value(), info[5].As<Napi::String>().Utf8Value()));
  }

  // send(id, toClient: boolean, opcode 1|2, data: Uint8Array): one message of a session in
  // messages mode; false when that side cannot take it (gone, closing).
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsBoolean() || !Whole(info[2], 1, 2) || !info[3].IsTypedArray() ||
        info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      Napi::TypeError::New(env, "send(id, toClient, opcode 1|2, data: Uint8Array)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (engine_ == nullptr) return Napi::Boolean::New(env, false);
    Napi::Uint8Array d = info[3].As<Napi::Uint8Array>();
    return Napi::Boolean::New(env, engine_->Send(info[0].As<Napi::Number>().Uint32Value(), info[1].As<Napi::Boolean>().Value(),
                                                 static_cast<uint8_t>(info[2].As<Napi::Number>().Int32Value()), d.Data(), d.ByteLength()));
  }

  // The session id of a one-argument call, or false with a TypeError thrown.
  static bool IdArg(const Napi::CallbackInfo& info, const char* usage, uint32_t* id) {
    if (info.Length() < 1 || !info[0].IsNumber()) {
      Napi::TypeError::New(info.Env(), usage).ThrowAsJavaScriptException();
      return false;
    }
    *id = info[0].As<Napi::Number>().Uint32Value();
    return true;
  }

  Napi::Value Destroy(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    if (!IdArg(info, "destroy(id)", &id)) return Napi::Value();
    if (engine_ == nullptr) return Napi::Boolean::New(env, false);
    return Napi::Boolean::New(env, engine_->Destroy(id));
  }

  // flow(id): [clientPaused, upstreamPaused, clientPendingBytes, upstreamPendingBytes,
  //   messagesIn, messagesOut, bytesIn, bytesOut] or null.
  Napi::Value Flow(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    if (!IdArg(info, "flow(id)", &id)) return Napi::Value();
    double out[engine::Engine::kFlowSlots];
    if (engine_ == nullptr || !engine_->Flow(id, out)) return env.Null();
    Napi::Array a = Napi::Array::New(env, engine::Engine::kFlowSlots);
    for (int i = 0; i < engine::Engine::kFlowSlots; i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, out[i]));
    return a;
  }

  // close(): every session is cut (no close handshakes: drain first), the engine is gone.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (engine_ != nullptr) {
      engine_->CloseAll();
      Deliver();
    }
    Release();
    return info.Env().Undefined();
  }

  // sync(): copy the engine's counters into the Float64Array given at construction.
  Napi::Value Sync(const Napi::CallbackInfo& info) {
    SyncCounters();
    return info.Env().Undefined();
  }

  static Napi::String Latin1(Napi::Env env, const std::string& s) {
    napi_value v;
    napi_create_string_latin1(env, s.data(), s.size(), &v);
    return Napi::String(env, v);
  }

  static bool Whole(const Napi::Value& v, double lo, double hi) {
    if (!v.IsNumber()) return false;
    const double d = v.As<Napi::Number>().DoubleValue();
    return d >= lo && d <= hi && std::floor(d) == d;
  }

  // listen(fd, headTimeoutMs, maxHeadBytes, maxFields[, certPem, keyPem[, ciphers[, ticketKeys]]]):
  // the engine accepts on fd (it owns it now); with the PEM texts, connections are TLS.
  Napi::Value Listen(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4 || !Whole(info[0], 0, 1 << 30) || !Whole(info[1], 1, 1e9) || !Whole(info[2], 64, 1 << 24) ||
        !Whole(info[3], 1, engine::kMaxHeadFields) ||
        (info.Length() >= 6 && !info[4].IsUndefined() && (!info[4].IsString() || !info[5].IsString()))) {
      Napi::TypeError::New(env, "listen(fd, headTimeoutMs, maxHeadBytes 64.., maxFields 1..256[, certPem, keyPem])").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (engine_ == nullptr) {
      Napi::Error::New(env, "listen: the engine is closed").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    engine::ListenOptions o;
    o.head_timeout_ms = static_cast<uint64_t>(info[1].As<Napi::Number>().DoubleValue());
    o.max_head_bytes = static_cast<size_t>(info[2].As<Napi::Number>().DoubleValue());
    o.max_fields = info[3].As<Napi::Number>().Int32Value();
    std::string error;
    SSL_CTX* tls = nullptr;
    if (info.Length() >= 6 && info[4].IsString()) {
      const std::string ciphers = info.Length() >= 7 && info[6].IsString() ? info[6].As<Napi::String>().Utf8Value() : std::string();
      std::string tickets;
      if (info.Length() >= 8 && info[7].IsTypedArray() && info[7].As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array) {
        Napi::Uint8Array k = info[7].As<Napi::Uint8Array>();
        tickets.assign(reinterpret_cast<const char*>(k.Data()), k.ByteLength());
      }
      tls = engine::tls::NewServerContext(info[4].As<Napi::String>().Utf8Value(), info[5].As<Napi::String>().Utf8Value(), ciphers,
                                          tickets, &error);
      if (tls == nullptr) {
        Napi::Error::New(env, "listen.tls: " + error).ThrowAsJavaScriptException();
        return Napi::Value();
      }
    }
    if (!engine_->Listen(info[0].As<Napi::Number>().Int32Value(), o, tls, &error)) {
      Napi::Error::New(env, "listen: " + error).ThrowAsJavaScriptException();
    }
    return env.Undefined();
  }

  Napi::Value StopListening(const Napi::CallbackInfo& info) {
    if (engine_ != nullptr) engine_->StopListening();
    return info.Env().Undefined();
  }

  // refuse(id, answer: Uint8Array): the client gets these bytes, then the connection ends.
  Napi::Value Refuse(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsTypedArray() ||
        info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      Napi::TypeError::New(env, "refuse(id, answer: Uint8Array)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (engine_ == nullptr) return Napi::Boolean::New(env, false);
    Napi::Uint8Array a = info[1].As<Napi::Uint8Array>();
    return Napi::Boolean::New(env, engine_->Refuse(info[0].As<Napi::Number>().Uint32Value(), a.Data(), a.ByteLength()));
  }

  // release(id): [fd, bytes read so far] for Node's HTTP server, or null.
  Napi::Value Release(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    if (!IdArg(info, "release(id)", &id)) return Napi::Value();
    if (engine_ == nullptr) return env.Null();
    std::string bytes;
    const int fd = engine_->Release(id, &bytes);
    if (fd < 0) return env.Null();
    Napi::Array a = Napi::Array::New(env, 2);
    a.Set(0u, Napi::Number::New(env, fd));
    a.Set(1u, Napi::Buffer<char>::Copy(env, bytes.data(), bytes.size()));
    return a;
  }

  // tlsClient(caPem: string, verify: boolean[, ciphers: string]): a client context for wss:// dials; its id.
  Napi::Value TlsClient(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsBoolean()) {
      Napi::TypeError::New(env, "tlsClient(caPem: string, verify: boolean)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (engine_ == nullptr) {
      Napi::Error::New(env, "tlsClient: the engine is closed").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    std::string error;
    const std::string ciphers = info.Length() >= 3 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : std::string();
    SSL_CTX* ctx = engine::tls::NewClientContext(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::Boolean>().Value(), ciphers, &error);
    if (ctx == nullptr) {
      Napi::Error::New(env, "tlsClient: " + error).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    return Napi::Number::New(env, engine_->AddClientContext(ctx));
  }

  // dial(id, ip, port, request: Uint8Array, offered: string, fallbackProtocol: string, params: Float64Array
  //      [, tls: context id or -1, servername: string, verify: boolean[, deflate: boolean]])
  Napi::Value Dial(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 7 || !info[0].IsNumber() || !info[1].IsString() || !Whole(info[2], 1, 65535) ||
        !info[3].IsTypedArray() || !info[4].IsString() || !info[5].IsString() || !info[6].IsTypedArray() ||
        (info.Length() >= 10 && (!Whole(info[7], -1, 1 << 20) || !info[8].IsString() || !info[9].IsBoolean())) ||
        (info.Length() >= 11 && !info[10].IsBoolean())) {
      Napi::TypeError::New(env, "dial(id, ip, port, request, offered, fallbackProtocol, params[, tls, servername, verify[, deflate]])").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    const bool wss = info.Length() >= 10;
    if (engine_ == nullptr) return Napi::Boolean::New(env, false);
    Params p;
    if (!ReadParams(env, info[6], &p)) return Napi::Value();
    Napi::TypedArray rq = info[3].As<Napi::TypedArray>();
    if (rq.TypedArrayType() != napi_uint8_array) {
      Napi::TypeError::New(env, "dial: request must be a Uint8Array").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    Napi::Uint8Array r = rq.As<Napi::Uint8Array>();
    std::string error;
    const bool ok = engine_->Dial(info[0].As<Napi::Number>().Uint32Value(), info[1].As<Napi::String>().Utf8Value(),
                                  info[2].As<Napi::Number>().Int32Value(),
                                  std::string(reinterpret_cast<const char*>(r.Data()), r.ByteLength()),
                                  info[4].As<Napi::String>().Utf8Value(), info[5].As<Napi::String>().Utf8Value(), p,
                                  wss ? info[7].As<Napi::Number>().Int32Value() : -1,
                                  wss ? info[8].As<Napi::String>().Utf8Value() : std::string(),
                                  wss ? info[9].As<Napi::Boolean>().Value() : true,
                                  info.Length() >= 11 && info[10].As<Napi::Boolean>().Value(), &error);
    if (!ok) Napi::Error::New(env, "dial: " + error).ThrowAsJavaScriptException();
    return Napi::Boolean::New(env, ok);
  }

  Napi::Value AbortDial(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    if (!IdArg(info, "abortDial(id)", &id)) return Napi::Value();
    if (engine_ == nullptr) return Napi::Boolean::New(env, false);
    return Napi::Boolean::New(env, engine_->AbortDial(id));
  }

  Napi::Value Sessions(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), engine_ == nullptr ? 0 : static_cast<double>(engine_->sessions()));
  }

  Napi::Env env_ = Napi::Env(nullptr);
  Engine* engine_ = nullptr;
  Napi::FunctionReference callback_;
  Napi::FunctionReference messages_;
  std::vector<uint8_t> batch_bytes_;
  std::vector<double> batch_desc_;
  Napi::Reference<Napi::Float64Array> counters_ref_;
  double* counters_ = nullptr;
  Napi::AsyncContext* context_ = nullptr;
  LoopTurn* turn_ = nullptr;
};

}  // namespace

void InitEngine(Napi::Env env, Napi::Object exports) {
  exports.Set("Engine", EngineWrap::Define(env));
}

}  // namespace sluice

#else

namespace sluice {
void InitEngine(Napi::Env, Napi::Object) {}
}  // namespace sluice

#endif
