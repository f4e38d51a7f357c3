// N-API door of the tunnel's native link (mux.h): `new Mux(onEvents, options)`, then
// start(fd, head), and per stream open / write / end / reset / consume / bind. Events
// reach JavaScript once per loop turn, in one call; bytes of bound streams never do.
#include "binding.h"

#ifdef __linux__

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <string>

#include "mux.h"
#include "../loop_turn.h"

namespace sluice {

namespace {

using tunnel::Mux;
using tunnel::MuxEvent;
using tunnel::MuxOptions;

bool WholeArg(const Napi::Value& v, double lo, double hi) {
  if (!v.IsNumber()) return false;
  const double d = v.As<Napi::Number>().DoubleValue();
  return d >= lo && d <= hi && std::floor(d) == d;
}

class MuxWrap : public Napi::ObjectWrap<MuxWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Mux", {
      InstanceMethod<&MuxWrap::Start>("start"),
      InstanceMethod<&MuxWrap::Open>("open"),
      InstanceMethod<&MuxWrap::Deliver>("deliver"),
      InstanceMethod<&MuxWrap::Dial>("dial"),
      InstanceMethod<&MuxWrap::Write>("write"),
      InstanceMethod<&MuxWrap::End>("end"),
      InstanceMethod<&MuxWrap::Reset>("reset"),
      InstanceMethod<&MuxWrap::Consume>("consume"),
      InstanceMethod<&MuxWrap::Bind>("bind"),
      InstanceMethod<&MuxWrap::SendText>("sendText"),
      InstanceMethod<&MuxWrap::Ping>("ping"),
      InstanceMethod<&MuxWrap::GoAway>("goAway"),
      InstanceMethod<&MuxWrap::Close>("close"),
      InstanceMethod<&MuxWrap::Terminate>("terminate"),
      InstanceMethod<&MuxWrap::Dispose>("dispose"),
      InstanceMethod<&MuxWrap::Stats>("stats"),
    });
  }

  // new Mux(onEvents: (events: object[]) => void, options: { yamuxClient, wsClient, window,
  // maxWindow, maxStreams, maxMessage })
  explicit MuxWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MuxWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsFunction() || !info[1].IsObject()) {
      Napi::TypeError::New(env, "new Mux(onEvents: function, options: object)").ThrowAsJavaScriptException();
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Napi::Error::New(env, "Mux: no event loop").ThrowAsJavaScriptException();
      return;
    }
    Napi::Object o = info[1].As<Napi::Object>();
    MuxOptions mo;
    mo.yamux_client = o.Get("yamuxClient").ToBoolean();
    mo.ws_client = o.Get("wsClient").ToBoolean();
    const struct {
      const char* name;
      double lo, hi;
      uint64_t* out64;
      uint32_t* out32;
    } nums[] = {
        {"window", 256.0 * 1024, 1u << 30, nullptr, &mo.window},
        {"maxWindow", 256.0 * 1024, 1u << 30, nullptr, &mo.max_window},
        {"maxStreams", 1, 1u << 20, nullptr, &mo.max_streams},
        {"maxMessage", 1024, 1u << 30, &mo.max_message, nullptr},
    };
    for (const auto& n : nums) {
      Napi::Value v = o.Get(n.name);
      if (v.IsUndefined()) continue;
      if (!WholeArg(v, n.lo, n.hi)) {
        Napi::RangeError::New(env, std::string("Mux: options.") + n.name + " out of range").ThrowAsJavaScriptException();
        return;
      }
      const double d = v.As<Napi::Number>().DoubleValue();
      if (n.out64 != nullptr) *n.out64 = static_cast<uint64_t>(d);
      else *n.out32 = static_cast<uint32_t>(d);
    }
    callback_ = Napi::Persistent(info[0].As<Napi::Function>());
    context_ = new Napi::AsyncContext(env, "sluice:tunnel");
    mux_ = new Mux(loop, this, &MuxWrap::Notify, mo);
    turn_ = new LoopTurn(loop, [](void* w) { static_cast<MuxWrap*>(w)->Deliver(); }, this);
    env_ = env;
  }

  ~MuxWrap() override { Release(); }

 private:
  static void Notify(void* owner) {
    MuxWrap* w = static_cast<MuxWrap*>(owner);
    if (w->turn_ != nullptr) w->turn_->Request();
  }

  void Deliver() {
    if (mux_ == nullptr) return;
    std::vector<MuxEvent> events;
    events.swap(mux_->events());
    size_t live = 0;
    for (const MuxEvent& e : events) live += e.type != tunnel::kEvNone;
    if (live == 0) return;
    Napi::Env env = env_;
    Napi::HandleScope scope(env);
    Napi::Array list = Napi::Array::New(env, live);
    uint32_t i = 0;
    for (MuxEvent& e : events) {
      if (e.type == tunnel::kEvNone) continue;
      Napi::Object o = Napi::Object::New(env);
      o.Set("type", Napi::Number::New(env, e.type));
      o.Set("stream", Napi::Number::New(env, e.stream));
      switch (e.type) {
        case tunnel::kEvText:
        case tunnel::kEvLine:
        case tunnel::kEvDialFailed:
          o.Set("text", Napi::String::New(env, e.data));
          break;
        case tunnel::kEvData:
          o.Set("data", Napi::Buffer<char>::Copy(env, e.data.data(), e.data.size()));
          break;
        case tunnel::kEvClosed:
          o.Set("code", Napi::Number::New(env, e.code));
          o.Set("reason", Napi::String::New(env, e.data));
          o.Set("error", Napi::String::New(env, e.error));
          break;
        case tunnel::kEvBoundEnd:
          o.Set("code", Napi::Number::New(env, e.code));
          o.Set("bytesIn", Napi::Number::New(env, e.bytes_in));
          o.Set("bytesOut", Napi::Number::New(env, e.bytes_out));
          break;
        case tunnel::kEvGoAway:
          o.Set("code", Napi::Number::New(env, e.code));
          break;
        default:
          break;
      }
      list.Set(i++, o);
    }
    callback_.MakeCallback(Value(), {list}, *context_);
    if (env.IsExceptionPending()) {
      Napi::Error err = env.GetAndClearPendingException();
      napi_fatal_exception(env, err.Value());
    }
  }

  void Release() {
    if (mux_ != nullptr) {
      mux_->Dispose();
      mux_ = nullptr;
    }
    // The callback holds the JavaScript link, which holds this wrap: without the reset the
    // pair could never be collected. (A running callback stays alive while it runs.)
    if (!callback_.IsEmpty()) callback_.Reset();
    delete turn_;
    turn_ = nullptr;
    delete context_;
    context_ = nullptr;
  }

  bool Live(Napi::Env env, const char* what) {
    if (mux_ != nullptr) return true;
    Napi::Error::New(env, std::string(what) + ": the tunnel link is disposed").ThrowAsJavaScriptException();
    return false;
  }

  static bool Bytes(const Napi::Value& v, const uint8_t** p, size_t* n) {
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) return false;
    Napi::Uint8Array a = v.As<Napi::Uint8Array>();
    *p = a.Data();
    *n = a.ByteLength();
    return true;
  }

  static bool StreamArg(const Napi::CallbackInfo& info, const char* usage, uint32_t* id) {
    if (info.Length() < 1 || !WholeArg(info[0], 1, 4294967295.0)) {
      Napi::TypeError::New(info.Env(), usage).ThrowAsJavaScriptException();
      return false;
    }
    *id = static_cast<uint32_t>(info[0].As<Napi::Number>().DoubleValue());
    return true;
  }

  // start(fd: number, head: Uint8Array, greeting: Uint8Array): throws when the
  // descriptor cannot be taken. `greeting` goes out first; `head` was read already.
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint8_t* p = nullptr;
    size_t n = 0;
    const uint8_t* g = nullptr;
    size_t gn = 0;
    if (info.Length() < 3 || !WholeArg(info[0], 0, 1 << 30) || !Bytes(info[1], &p, &n) || !Bytes(info[2], &g, &gn)) {
      Napi::TypeError::New(env, "start(fd, head: Uint8Array, greeting: Uint8Array)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (!Live(env, "start")) return Napi::Value();
    std::string error;
    if (!mux_->Start(info[0].As<Napi::Number>().Int32Value(), p, n, g, gn, &error)) {
      Napi::Error::New(env, "start: " + error).ThrowAsJavaScriptException();
    }
    return Napi::Value();
  }

  // open(line: Uint8Array): the new stream's id, `line` its first bytes; throws with the
  // reason when none can be opened.
  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint8_t* p = nullptr;
    size_t n = 0;
    if (info.Length() >= 1 && !Bytes(info[0], &p, &n)) {
      Napi::TypeError::New(env, "open(line: Uint8Array)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (!Live(env, "open")) return Napi::Value();
    std::string error;
    const uint32_t id = mux_->Open(p, n, &error);
    if (id == 0) {
      Napi::Error::New(env, error).ThrowAsJavaScriptException();
      return Napi::Value();
    }
    return Napi::Number::New(env, id);
  }

  // deliver(id): after the peer's first line, the stream's bytes come to JavaScript.
  Napi::Value Deliver(const Napi::CallbackInfo& info) {
    uint32_t id;
    if (StreamArg(info, "deliver(id)", &id) && mux_ != nullptr) mux_->Deliver(id);
    return Napi::Value();
  }

  // dial(id, ip, port, timeoutMs, ok: Uint8Array): false when the stream cannot dial (gone,
  // bound, not an IP address); else the stream is bound once connected (`ok` first), or a
  // dial-failed event follows.
  Napi::Value Dial(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    const uint8_t* p = nullptr;
    size_t n = 0;
    if (!StreamArg(info, "dial(id, ip, port, timeoutMs, ok)", &id)) return Napi::Value();
    if (info.Length() < 5 || !info[1].IsString() || !WholeArg(info[2], 1, 65535) || !WholeArg(info[3], 0, 86400000) ||
        !Bytes(info[4], &p, &n)) {
      Napi::TypeError::New(env, "dial(id, ip: string, port 1..65535, timeoutMs, ok: Uint8Array)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (mux_ == nullptr) return Napi::Boolean::New(env, false);
    return Napi::Boolean::New(env, mux_->Dial(id, info[1].As<Napi::String>().Utf8Value(), info[2].As<Napi::Number>().Int32Value(),
                                              static_cast<uint64_t>(info[3].As<Napi::Number>().DoubleValue()), p, n));
  }

  // write(id, bytes: Uint8Array): false once the stream holds enough (wait for its drain).
  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    const uint8_t* p = nullptr;
    size_t n = 0;
    if (!StreamArg(info, "write(id, bytes: Uint8Array)", &id)) return Napi::Value();
    if (info.Length() < 2 || !Bytes(info[1], &p, &n)) {
      Napi::TypeError::New(env, "write(id, bytes: Uint8Array)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (mux_ == nullptr) return Napi::Boolean::New(env, true);
    return Napi::Boolean::New(env, mux_->Write(id, p, n));
  }

  Napi::Value End(const Napi::CallbackInfo& info) {
    uint32_t id;
    if (StreamArg(info, "end(id)", &id) && mux_ != nullptr) mux_->End(id);
    return Napi::Value();
  }

  Napi::Value Reset(const Napi::CallbackInfo& info) {
    uint32_t id;
    if (StreamArg(info, "reset(id)", &id) && mux_ != nullptr) mux_->Reset(id);
    return Napi::Value();
  }

  // consume(id, n): JavaScript's reader took n bytes of the stream (the peer may send more).
  Napi::Value Consume(const Napi::CallbackInfo& info) {
    uint32_t id;
    if (!StreamArg(info, "consume(id, n)", &id)) return Napi::Value();
    if (info.Length() < 2 || !WholeArg(info[1], 0, 9007199254740991.0)) {
      Napi::TypeError::New(info.Env(), "consume(id, n)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (mux_ != nullptr) mux_->Consume(id, static_cast<size_t>(info[1].As<Napi::Number>().DoubleValue()));
    return Napi::Value();
  }

  // bind(id, fd, head: Uint8Array[, owned]): the stream and the socket are joined here from
  // now on (the descriptor is duplicated and the caller closes its own; `owned`: it is the
  // link's from now on, closed here even when the stream is gone). false: the stream is gone.
  Napi::Value Bind(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    const uint8_t* p = nullptr;
    size_t n = 0;
    if (!StreamArg(info, "bind(id, fd, head: Uint8Array)", &id)) return Napi::Value();
    if (info.Length() < 3 || !WholeArg(info[1], 0, 1 << 30) || !Bytes(info[2], &p, &n)) {
      Napi::TypeError::New(env, "bind(id, fd, head: Uint8Array)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    const bool owned = info.Length() >= 4 && info[3].ToBoolean();
    const int fd = info[1].As<Napi::Number>().Int32Value();
    if (mux_ == nullptr) {
      if (owned) close(fd);
      return Napi::Boolean::New(env, false);
    }
    return Napi::Boolean::New(env, mux_->Bind(id, fd, p, n, !owned));
  }

  Napi::Value SendText(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsString()) {
      Napi::TypeError::New(info.Env(), "sendText(text: string)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    const std::string text = info[0].As<Napi::String>().Utf8Value();
    if (mux_ != nullptr) mux_->SendText(reinterpret_cast<const uint8_t*>(text.data()), text.size());
    return Napi::Value();
  }

  Napi::Value Ping(const Napi::CallbackInfo&) {
    if (mux_ != nullptr) mux_->Ping();
    return Napi::Value();
  }

  Napi::Value GoAway(const Napi::CallbackInfo& info) {
    const uint32_t code = info.Length() >= 1 && WholeArg(info[0], 0, 4294967295.0)
                              ? static_cast<uint32_t>(info[0].As<Napi::Number>().DoubleValue())
                              : 0;
    if (mux_ != nullptr) mux_->GoAway(code);
    return Napi::Value();
  }

  // close(code, reason): a close frame; the closed event follows the peer's answer.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (info.Length() < 2 || !WholeArg(info[0], 1000, 4999) || !info[1].IsString()) {
      Napi::TypeError::New(info.Env(), "close(code 1000..4999, reason)").ThrowAsJavaScriptException();
      return Napi::Value();
    }
    if (mux_ != nullptr) mux_->Close(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::String>().Utf8Value());
    return Napi::Value();
  }

  Napi::Value Terminate(const Napi::CallbackInfo&) {
    if (mux_ != nullptr) mux_->Terminate();
    return Napi::Value();
  }

  // dispose(): everything closed now, no more events (the wrap is then inert).
  Napi::Value Dispose(const Napi::CallbackInfo&) {
    Release();
    return Napi::Value();
  }

  // stats(): [streams open, bytes in, bytes out, bytes queued on the link, ms since the
  // peer was last heard]
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Float64Array a = Napi::Float64Array::New(env, 5);
    if (mux_ != nullptr) {
      a[0] = static_cast<double>(mux_->streams());
      a[1] = mux_->bytes_in();
      a[2] = mux_->bytes_out();
      a[3] = static_cast<double>(mux_->buffered());
      a[4] = static_cast<double>(mux_->IdleMs());
    }
    return a;
  }

  Napi::Env env_ = Napi::Env(nullptr);
  Mux* mux_ = nullptr;
  Napi::FunctionReference callback_;
  Napi::AsyncContext* context_ = nullptr;
  LoopTurn* turn_ = nullptr;
};

// new Acceptor(fd, onConnections: (fds: number[]) => void): accepts on a listening socket
// (owned from now on) and hands the new connections' descriptors to JavaScript, once per
// loop turn, without a Node socket for each (the tunnel listeners bind them to streams).
// close() stops and closes it. Out of descriptors, it pauses for 100 ms.
class AcceptorWrap : public Napi::ObjectWrap<AcceptorWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Acceptor", {InstanceMethod<&AcceptorWrap::Close>("close")});
  }

  explicit AcceptorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AcceptorWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !WholeArg(info[0], 0, 1 << 30) || !info[1].IsFunction()) {
      Napi::TypeError::New(env, "new Acceptor(fd, onConnections: function)").ThrowAsJavaScriptException();
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Napi::Error::New(env, "Acceptor: no event loop").ThrowAsJavaScriptException();
      return;
    }
    fd_ = info[0].As<Napi::Number>().Int32Value();
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    context_ = new Napi::AsyncContext(env, "sluice:tunnel-accept");
    env_ = env;
    turn_ = new LoopTurn(loop, [](void* w) { static_cast<AcceptorWrap*>(w)->Deliver(); }, this);
    poll_ = new uv_poll_t;
    uv_poll_init(loop, poll_, fd_);
    poll_->data = this;
    uv_poll_start(poll_, UV_READABLE, OnReadable);
    pause_ = new uv_timer_t;
    uv_timer_init(loop, pause_);
    pause_->data = this;
  }

  ~AcceptorWrap() override { Stop(); }

 private:
  static void OnReadable(uv_poll_t* h, int status, int) {
    AcceptorWrap* w = static_cast<AcceptorWrap*>(h->data);
    if (w == nullptr || status < 0) return;
    for (int i = 0; i < 64; i++) {
      const int c = accept4(w->fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c >= 0) {
        w->accepted_.push_back(c);
        continue;
      }
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        uv_poll_stop(w->poll_);
        uv_timer_start(w->pause_, [](uv_timer_t* t) {
          AcceptorWrap* a = static_cast<AcceptorWrap*>(t->data);
          if (a != nullptr && a->poll_ != nullptr) uv_poll_start(a->poll_, UV_READABLE, OnReadable);
        }, 100, 0);
      }
      break;
    }
    if (!w->accepted_.empty()) w->turn_->Request();
  }

  void Deliver() {
    if (accepted_.empty()) return;
    Napi::Env env = env_;
    Napi::HandleScope scope(env);
    Napi::Array list = Napi::Array::New(env, accepted_.size());
    for (size_t i = 0; i < accepted_.size(); i++) list.Set(static_cast<uint32_t>(i), Napi::Number::New(env, accepted_[i]));
    accepted_.clear();
    callback_.MakeCallback(Value(), {list}, *context_);
    if (env.IsExceptionPending()) {
      Napi::Error err = env.GetAndClearPendingException();
      napi_fatal_exception(env, err.Value());
    }
  }

  void Stop() {
    if (poll_ != nullptr) {
      poll_->data = nullptr;
      uv_poll_stop(poll_);
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
    if (pause_ != nullptr) {
      pause_->data = nullptr;
      uv_timer_stop(pause_);
      uv_close(reinterpret_cast<uv_handle_t*>(pause_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
      pause_ = nullptr;
    }
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    for (int c : accepted_) close(c);
    accepted_.clear();
    if (!callback_.IsEmpty()) callback_.Reset();
    delete turn_;
    turn_ = nullptr;
    delete context_;
    context_ = nullptr;
  }

  Napi::Value Close(const Napi::CallbackInfo&) {
    Stop();
    return Napi::Value();
  }

  Napi::Env env_ = Napi::Env(nullptr);
  int fd_ = -1;
  uv_poll_t* poll_ = nullptr;
  uv_timer_t* pause_ = nullptr;
  LoopTurn* turn_ = nullptr;
  std::vector<int> accepted_;
  Napi::FunctionReference callback_;
  Napi::AsyncContext* context_ = nullptr;
};

// closeFd(fd): closes a descriptor an Acceptor handed over that nothing took.
Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !WholeArg(info[0], 0, 1 << 30)) {
    Napi::TypeError::New(info.Env(), "closeFd(fd)").ThrowAsJavaScriptException();
    return Napi::Value();
  }
  close(info[0].As<Napi::Number>().Int32Value());
  return Napi::Value();
}

}  // namespace

void InitTunnel(Napi::Env env, Napi::Object exports) {
  exports.Set("Mux", MuxWrap::Define(env));
  exports.Set("Acceptor", AcceptorWrap::Define(env));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
}

}  // namespace sluice

#else

namespace sluice {
void InitTunnel(Napi::Env, Napi::Object) {}
}  // namespace sluice

#endif
