// The native engine: per thread, on that thread's libuv loop, it owns both sockets of each
// transparent session after the handshake and runs the data phase there: read, check
// (RFC 6455 rules, limits, UTF-8), count and forward, answer pings per hop, pass close
// handshakes through, stop reading a side whose partner is slow. Nothing per message
// crosses into JavaScript; JavaScript gets one event per session end (and per sustained
// backpressure), batched once per loop turn, and reads the counters at scrape time.
//
// It is the same contract as the TypeScript engine (src/proxy/session.ts), which stays
// for routes that need each message in JavaScript, for TLS, and where the addon does not
// load. Session state is explicit (two legs: socket, frame cursor, close state, output
// backlog, counters).
#ifndef SLUICE_ENGINE_ENGINE_H_
#define SLUICE_ENGINE_ENGINE_H_

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "frame_cursor.h"
#include "utf8_stream.h"
#include "../frame.h"

namespace sluice {
namespace engine {

// Counter slots of the engine's Float64Array (src/engine/native.ts mirrors them).
namespace slot {
constexpr int kFramesIn = 0;    // + kind: text, binary, ping, pong, close
constexpr int kFramesOut = 5;   // + kind
constexpr int kBytesIn = 10;
constexpr int kBytesOut = 11;
constexpr int kSizeBuckets = 12;  // 10 buckets (9 bounds + above)
constexpr int kSizeSum = 22;
constexpr int kSizeCount = 23;
constexpr int kDroppedBackpressure = 24;
constexpr int kDroppedTooBig = 25;
constexpr int kBackpressureEvents = 26;
constexpr int kCount = 27;
}  // namespace slot

enum Kind { kText = 0, kBinary = 1, kPing = 2, kPong = 3, kCloseKind = 4 };

// Per-session settings, from JavaScript (a Float64Array, in this order).
struct Params {
  uint64_t max_frame_bytes = 1 << 20;
  uint64_t max_fragments = 1024;
  uint64_t high_water = 1 << 20;
  int policy = 0;  // 0 pause, 1 close, 2 drop
  uint64_t channel_bytes = 4 << 20;
  uint64_t channel_capacity = 100;
  uint64_t ping_ms = 30000;
  uint64_t timeout_ms = 60000;
  double messages_per_second = 0;
  double bytes_per_second = 0;
  double expires_in_ms = 0;  // 0: never
};
constexpr int kParamCount = 11;

// A growable byte queue: what a socket did not take yet. Memory only while bytes wait.
class Backlog {
 public:
  ~Backlog() { Free(); }
  size_t size() const { return tail_ - head_; }
  const uint8_t* data() const { return data_ + head_; }
  bool Append(const uint8_t* p, size_t n);
  void Consume(size_t n);
  void Free();

 private:
  uint8_t* data_ = nullptr;
  size_t cap_ = 0;
  size_t head_ = 0;
  size_t tail_ = 0;
};

struct TokenBucket {
  double rate_per_ms = 0;
  double burst = 0;
  double tokens = 0;
  uint64_t last = 0;
  bool on() const { return rate_per_ms > 0; }
  bool Take(double n, uint64_t now);
};

class Engine;
struct Session;

enum LegState { kOpen = 0, kCloseSent = 1, kCloseReceived = 2, kClosed = 3 };

struct Leg {
  Leg(Session* s, bool is_client, const CursorLimits& limits) : session(s), client(is_client), cursor(limits) {}
  Session* session;
  bool client;
  int fd = -1;
  uv_poll_t poll;
  bool poll_open = false;
  int events = 0;
  FrameCursor cursor;
  int state = kOpen;
  bool alive = true;     // the descriptor is open
  bool deaf = false;     // frames from this side are no longer acted on
  bool paused = false;   // not read: its partner's backlog is past high water
  bool read_eof = false; // the peer ended its side (or the connection failed)
  bool broken = false;   // a frame streamed to it will never end: no more frames to it
  bool shut_after_flush = false;
  uint64_t seen = 0;
  uint64_t kill_at = 0;
  int code = 0;
  std::string reason;
  // The message this side is sending.
  bool text = false;
  bool dropping = false;
  bool forward = false;  // the current frame goes to the partner
  bool held = false;     // the current frame is kept whole before acting on it
  uint8_t key_xor[4] = {0, 0, 0, 0};  // in-key XOR out-key of the current streamed frame
  Utf8Stream utf8;
  FrameHeader header;
  uint8_t header_raw[14];
  uint8_t* raw_in_read = nullptr;  // the header's bytes in the current read, when there
  std::vector<uint8_t> hold;
  // Output towards this side.
  Backlog out;
  uint64_t out_frame_left = 0;  // payload bytes of a streamed frame still to come
  std::vector<uint8_t> deferred;  // control frames waiting for that frame's end
  uint64_t queued = 0;
  uint64_t messages = 0;
  uint64_t bytes = 0;
};

struct Session {
  Session(Engine* e, uint32_t session_id, const Params& p, const CursorLimits& client_limits,
          const CursorLimits& server_limits)
      : engine(e), id(session_id), params(p), client(this, true, client_limits), server(this, false, server_limits) {}
  Engine* engine;
  uint32_t id;
  Params params;
  Leg client;
  Leg server;
  int closed_first = 0;  // 0 none, 1 client, 2 upstream, 3 proxy
  uint64_t last_ping = 0;
  uint64_t expires_at = 0;
  uint64_t bp_since = 0;
  bool bp_reported = false;
  TokenBucket msg_rate;
  TokenBucket byte_rate;
  int handles_open = 0;
  bool ended = false;
  Session* prev = nullptr;
  Session* next = nullptr;
};

// What JavaScript is told, batched per loop turn.
struct Event {
  int type;  // 1 end, 2 backpressure
  uint32_t id;
  int client_code;
  std::string client_reason;
  int upstream_code;
  std::string upstream_reason;
  int closed_first;
  double msgs_in, msgs_out, bytes_in, bytes_out;
  double fill;
};

class Engine {
 public:
  using Notify = void (*)(void* owner);
  Engine(uv_loop_t* loop, void* owner, Notify notify);
  // Closes every session and the timer; the engine deletes itself once libuv has closed
  // all of its handles (their callbacks reach it until then).
  void Dispose();

  // Takes copies (dup) of both descriptors; processes the bytes that came with the two
  // handshakes; returns the session id, or 0 with *error set.
  uint32_t Adopt(int client_fd, int upstream_fd, const uint8_t* client_head, size_t client_len,
                 const uint8_t* upstream_head, size_t upstream_len, const Params& p, std::string* error);
  // Drain: the client gets `code`, the upstream 1001, both `reason`.
  bool Shutdown(uint32_t id, int code, const std::string& reason);
  // Cut both connections now.
  bool Destroy(uint32_t id);
  bool Flow(uint32_t id, double out[4]);
  void CloseAll();
  size_t sessions() const { return count_; }
  double* counters() { return counters_; }
  std::vector<Event>& events() { return events_; }

  // Internal (callbacks).
  void OnPoll(Leg* leg, int status, int events);
  void OnPollClosed(Leg* leg);
  void Sweep();
  void HandleClosed();

 private:
  ~Engine();
  friend class LegVisitor;
  Session* Find(uint32_t id);
  void Process(Leg* from, uint8_t* data, size_t len);
  bool ReadSome(Leg* leg);
  void OnEof(Leg* leg);
  void UpdatePoll(Leg* leg);
  // Output.
  uint8_t* ArenaCopy(Leg* to, const uint8_t* p, size_t n);
  void GatherAdd(Leg* to, const uint8_t* p, size_t n);
  void FlushGather();
  void Write(Leg* to, const uint8_t* p, size_t n);
  void AfterWrite(Leg* to);
  void DrainBacklog(Leg* to);
  void SendControl(Leg* to, uint8_t op, const uint8_t* payload, size_t n);
  void SendClose(Leg* leg, int code, const std::string& reason);
  void EndLeg(Leg* leg, uint64_t linger_ms);
  void CloseDescriptor(Leg* leg);
  // Frames.
  bool OnCloseFrame(Leg* from, Leg* to, const uint8_t* p, size_t n);
  void ProtocolError(Leg* culprit, int32_t err, const char* detail);
  void Fail(Leg* culprit, int code, const std::string& reason, int partner_code, const std::string& partner_reason);
  bool OverBudget(Leg* from, Leg* to);
  void SlowPeer(Leg* to);
  void CheckBackpressure(Session* s, double fill);
  void MaybeEnd(Session* s);
  void Free(Session* s);
  void CountFrame(bool in, int kind, uint64_t bytes);
  void Emit(Event&& e);
  uint64_t now() const { return uv_now(loop_); }
  static Leg* Partner(Leg* leg) { return leg->client ? &leg->session->server : &leg->session->client; }

  uv_loop_t* loop_;
  void* owner_;
  Notify notify_;
  uv_timer_t sweep_;
  bool sweep_open_ = false;
  Session* head_ = nullptr;
  std::unordered_map<uint32_t, Session*> by_id_;
  size_t count_ = 0;
  int pending_handles_ = 0;
  bool disposed_ = false;
  uint32_t next_id_ = 1;
  MaskKeySource keys_;
  double counters_[slot::kCount] = {};
  std::vector<Event> events_;
  uint8_t* read_buf_ = nullptr;
  // The writes gathered while one read is processed, for the leg they go to.
  static constexpr int kIov = 64;
  Leg* gather_leg_ = nullptr;
  struct iovec_like {
    const uint8_t* base;
    size_t len;
  } iov_[kIov];
  int iov_n_ = 0;
  uint8_t arena_[kIov * 14];
  size_t arena_used_ = 0;
};

}  // namespace engine
}  // namespace sluice

#endif  // SLUICE_ENGINE_ENGINE_H_
