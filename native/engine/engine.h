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
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "backlog.h"
#include "frame_cursor.h"
#include "inflate_meter.h"
#include "tls.h"
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

// The engine's read buffer (one per engine).
constexpr size_t kReadBufferBytes = 256 * 1024;

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
  // 0 transparent: frames go from socket to socket. 1 messages: each whole data message goes
  // to JavaScript (batched per loop turn, Engine::batch()) and JavaScript sends through the
  // engine (Send); control frames, limits, UTF-8, heartbeats and backpressure stay here.
  int mode = 0;
  // Envelope routes (mode 1): 1 v1, 2 v2. A close frame the client gets is preceded by the
  // envelope's own close (the same code and reason), as the TypeScript engine does.
  int envelope = 0;
};
constexpr int kParamCount = 13;

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
struct RequestHead;
struct ResponseHead;

// Where a session is: its handshakes (the engine accepted the client), or its data phase.
enum Stage {
  kStageHead = 0,          // reading the client's request head
  kStageDecide = 1,        // JavaScript decides (route, auth, limits, upstream)
  kStageConnect = 2,       // dialling the upstream
  kStageUpstreamHead = 3,  // our upgrade request sent, reading the upstream's answer
  kStageRefusal = 4,       // an HTTP answer goes to the client, then the connection ends
  kStageData = 5,          // a WebSocket session
  kStagePipe = 6,          // released to Node from a TLS listener: plaintext passed both ways
};

// What the listener applies to the request heads it reads.
struct ListenOptions {
  uint64_t head_timeout_ms = 10000;
  size_t max_head_bytes = 16384;
  int max_fields = 100;
};

// A session's handshakes, while the engine does them (freed when the data phase starts).
struct Handshake {
  std::string client_in;      // bytes read from the client: its head, then any that followed
  size_t head_bytes = 0;
  std::string client_key;     // Sec-WebSocket-Key
  std::string remote;         // the client's address
  uint64_t deadline = 0;      // the request head must be complete by then (408)
  bool dialing = false;       // the upstream socket (server leg's fd) is being dialled
  bool connected = false;     // its TCP connection is up (TLS handshake next, if any)
  SSL_CTX* tls = nullptr;     // wss: the client context to dial with (the engine's)
  std::string servername;     // wss: SNI and the name checked
  bool verify = true;
  bool deflate = false;       // our request offers permessage-deflate (the client's offer)
  std::string request;        // our upgrade request, and how much of it has gone
  size_t request_sent = 0;
  std::string upstream_in;    // the upstream's answer
  char expect_accept[29] = {0};
  std::string offered;        // the subprotocols offered upstream, comma separated
  std::string fallback_protocol;  // answered to the client when the upstream picks none
  int refusal_status = 0;     // a non-101 answer being read (its body follows)
  std::string refusal_text;
  size_t refusal_body_at = 0;
  size_t refusal_body_len = 0;
};

enum LegState { kOpen = 0, kCloseSent = 1, kCloseReceived = 2, kClosed = 3 };

struct Leg {
  Leg(Session* s, bool is_client, const CursorLimits& limits) : session(s), client(is_client), cursor(limits) {}
  Session* session;
  bool client;
  int fd = -1;
  bool watched = false;   // registered with the engine's epoll
  bool readable = false;  // the last edge said readable and no read has run dry since
  bool in_ready = false;  // queued to be read again (engine's ready list)
  bool hup = false;       // the peer's end (or an error) was signalled: read until recv says so
  SSL* tls = nullptr;     // TLS on this socket (tls.h), else plain
  bool tls_ready = false;           // its handshake is done
  bool tls_read_wants_out = false;  // a read waits for writability (retried on EPOLLOUT)
  bool tls_write_wants_in = false;  // a write waits for readability (retried on EPOLLIN)
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
  bool compressed = false;  // RSV1 on its first frame (permessage-deflate agreed)
  std::unique_ptr<InflateMeter> inflate;  // this side's compressed messages, inflated to check them
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
  // Messages mode: the message being assembled, how many of this side's messages wait in
  // the engine's batch for JavaScript, and what this side did after them (a close frame, its
  // end), acted on once they are delivered, so that nothing overtakes them.
  std::vector<uint8_t> msg;
  uint8_t msg_op = 0;
  uint64_t batch_no = 0;  // the last batch holding one of its messages (Engine::Pending)
  uint64_t batched = 0;   // bytes of its messages in that batch
  bool close_pending = false;
  std::vector<uint8_t> close_payload;
  bool eof_pending = false;
  // A violation of this side found while messages waited for JavaScript (Engine::Fail).
  bool fail_pending = false;
  int fail_code = 0;
  std::string fail_reason;
  int fail_partner_code = 0;
  std::string fail_partner_reason;
  bool dirty = false;  // JavaScript sent to it during a delivery: written once it returns
};

struct Session {
  Session(Engine* e, uint32_t session_id, const Params& p, const CursorLimits& client_limits,
          const CursorLimits& server_limits)
      : engine(e), id(session_id), params(p), client(this, true, client_limits), server(this, false, server_limits) {}
  ~Session() { delete hs; }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
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
  bool ended = false;
  int stage = kStageData;
  Handshake* hs = nullptr;
  Session* prev = nullptr;
  Session* next = nullptr;
};

// What JavaScript is told, batched per loop turn.
struct Event {
  // 1 end, 2 backpressure, 7 backpressure cleared (messages mode); handshakes: 3 a request head (text: method, text2: target,
  // list: header names and values, client_reason: remote address), 4 the dial failed
  // (client_code: 1 unreachable, 2 bad handshake, 3 refused with upstream_code as status,
  // client_reason: message, upstream_reason: status text, body), 5 opened (client_reason:
  // the subprotocol; text: the extensions agreed), 6 the client went away during the handshake.
  int type;
  uint32_t id;
  int client_code;
  std::string client_reason;
  int upstream_code;
  std::string upstream_reason;
  int closed_first;
  double msgs_in, msgs_out, bytes_in, bytes_out;
  double fill;
  std::string text, text2, body;
  std::vector<std::string> list;
};

// The cursor limits of each leg, from a session's params.
void LimitsOf(const Params& p, CursorLimits* client, CursorLimits* server);
// Heartbeat clocks, expiry and rate limits of a session whose data phase starts at t.
void StartClocks(Session* s, uint64_t t);

class Engine {
 public:
  using Notify = void (*)(void* owner);
  Engine(uv_loop_t* loop, void* owner, Notify notify);
  // Closes the listener, every session, the timers and the epoll handle; the engine deletes
  // itself once libuv has closed its handles (their callbacks reach it until then).
  void Dispose();

  // Takes copies (dup) of both descriptors; processes the bytes that came with the two
  // handshakes; returns the session id, or 0 with *error set.
  uint32_t Adopt(int client_fd, int upstream_fd, const uint8_t* client_head, size_t client_len,
                 const uint8_t* upstream_head, size_t upstream_len, const Params& p, std::string* error);
  // Drain: the client gets `code`, the upstream 1001, both `reason`.
  // Close frames to both sides: the client gets `code`, the upstream `upstream_code` (drain,
  // shutdown, reload: 1001; an envelope client's own close: its code), both `reason`.
  // `by_client`: an envelope client's own close (the client closed first).
  bool Shutdown(uint32_t id, int code, const std::string& reason, int upstream_code, const std::string& upstream_reason,
                bool by_client = false);
  // One side broke a rule JavaScript checks (an envelope): it gets `code`, its partner
  // `partner_code` (as a protocol error the engine finds).
  bool FailSide(uint32_t id, bool client, int code, const std::string& reason, int partner_code,
                const std::string& partner_reason);
  // Messages mode: one data message (opcode text or binary) to a side, framed (and masked
  // towards the upstream) here. Queued during a delivery and written once it returns.
  bool Send(uint32_t id, bool to_client, uint8_t op, const uint8_t* p, size_t n);
  // The messages collected for JavaScript: bytes, and 5 numbers per message (session id,
  // 1 from the client / 0 from the upstream, opcode, offset of its bytes, length).
  // BeginDelivery takes them (the engine starts a new batch), EndDelivery writes what
  // JavaScript sent and acts on what waited behind the messages.
  bool has_batch() const { return !batch_desc_.empty(); }
  void BeginDelivery(std::vector<uint8_t>* bytes, std::vector<double>* desc);
  void EndDelivery();
  // Cut both connections now.
  bool Destroy(uint32_t id);
  // A session's flow and live counters: paused (client, upstream), bytes waiting to be
  // written (client, upstream), messages and payload bytes so far (from the client, from the upstream).
  static constexpr int kFlowSlots = 8;
  bool Flow(uint32_t id, double (&out)[kFlowSlots]);  // by reference: a smaller array does not compile
  void CloseAll();

  // The engine accepts on `fd` (a listening socket it now owns) and reads request heads;
  // each complete one is an event (type 3) that JavaScript answers with one of:
  // With `tls` (a server context the engine owns from now on), connections are TLS; what
  // is released from them to Node goes through a socket pair (stage kStagePipe).
  bool Listen(int fd, const ListenOptions& o, SSL_CTX* tls, std::string* error);
  void StopListening();
  // an HTTP answer (the connection ends after it);
  bool Refuse(uint32_t id, const uint8_t* p, size_t n);
  // the connection itself, for Node's HTTP server (returns the descriptor and the bytes
  // read so far, or -1; from a TLS listener, one end of a socket pair carrying plaintext);
  int Release(uint32_t id, std::string* bytes);
  // or an upstream to dial: an IPv4/IPv6 address, our upgrade request without its
  // Sec-WebSocket-Key line and final CRLF (the engine adds them), the subprotocols offered.
  // Ends in event 5 (the session runs; the client got its 101) or 4.
  // `tls`: a client context id (AddClientContext), or -1 for ws://.
  // `deflate`: the request offers permessage-deflate; an upstream that agrees gets it
  // passed through (compressed frames forwarded as they are, inflated only to be checked).
  bool Dial(uint32_t id, const std::string& ip, int port, const std::string& request, const std::string& offered,
            const std::string& fallback_protocol, const Params& p, int tls, const std::string& servername,
            bool verify, bool deflate, std::string* error);
  // A client context for wss:// dials (owned by the engine from now on); returns its id.
  int AddClientContext(SSL_CTX* ctx);
  // Give up the dial in progress (the upstream timed out): the session waits for Refuse.
  bool AbortDial(uint32_t id);
  size_t sessions() const { return count_; }
  double* counters() { return counters_; }
  std::vector<Event>& events() { return events_; }

  // Internal (callbacks).
  void OnEpoll();
  void RunReady();
  void Sweep();
  void HandleClosed();

 private:
  ~Engine();
  friend class LegVisitor;
  Session* Find(uint32_t id);
  // Readiness (edge-triggered epoll: one registration per descriptor, never modified).
  bool Watch(Leg* leg);
  void Unwatch(Leg* leg);
  void OnLegEvent(Leg* leg, uint32_t ev);
  void Schedule(Leg* leg);
  void Resume(Leg* leg);
  void Reap();
  void UpdateRef();
  // Handshakes.
  void OnAccept();
  void OnHandshakeEvent(Leg* leg, uint32_t ev);
  void OnDialEvent(Session* s, uint32_t ev);
  void ReadHead(Session* s);
  void Answer(Session* s, int status, const char* text);
  void StartRefusal(Session* s, const uint8_t* p, size_t n);
  void DiscardRefused(Session* s);
  void ReadUpstreamHead(Session* s);
  void SendRequest(Session* s);
  void DialFailed(Session* s, int kind, const std::string& message, int status = 0, const std::string& text = "",
                  const std::string& body = "");
  void CloseDial(Session* s);
  void StartData(Session* s, std::string protocol, std::string extensions);  // by value: they may live in s->hs
  void EndHandshake(Session* s, bool tell);
  int Pipe(Session* s, std::string* bytes);
  void Accepted(int fd, const struct sockaddr* addr);
  void ResumeListening();
  void Link(Session* s);
  void Unlink(Session* s);
  void Process(Leg* from, uint8_t* data, size_t len);
  bool ReadSome(Leg* leg);
  size_t ReadBudget(const Leg* leg) const;
  void OnEof(Leg* leg);
  void PipeEof(Leg* leg);
  void WriteFailed(Leg* leg);
  bool Meter(Leg* from, const uint8_t* p, size_t n, bool fin);  // false: the side failed
  // Socket I/O of a leg, plain or TLS (recv/send semantics; *dry: the socket ran dry).
  ssize_t LegRecv(Leg* leg, uint8_t* buf, size_t n, bool* dry);
  ssize_t LegSend(Leg* leg, const uint8_t* p, size_t n);
  void LegShutWrite(Leg* leg);
  bool TlsHandshake(Leg* leg, std::string* error);  // true once done (false: wait, or *error)
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
  void BreakStream(Leg* to);
  void CloseWhenFlushed(Leg* leg, uint64_t linger_ms);
  bool ShutIfDone(Leg* leg);
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
  void Collect(Leg* from, const FrameHeader& h, const uint8_t* p, size_t n);
  void Batch(Leg* from, const uint8_t* p, size_t n);
  void SendData(Leg* to, uint8_t op, const uint8_t* prefix, size_t pn, const uint8_t* p, size_t pl);
  void FlushDirty();
  bool ShedToUpstream(Session* s);
  bool EnvelopeFromClient(Leg* from, const uint8_t* p, size_t n);
  bool EnvelopeToClient(Leg* from, const uint8_t* p, size_t n);
  void SendEnvelopeClose(Leg* to, int code, const std::string& reason);
  // Whether messages of `leg` wait in a batch JavaScript has not finished with.
  bool Pending(const Leg* leg) const { return leg->batch_no > delivered_no_; }
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
  // Readiness: the engine's own epoll (edge-triggered), watched by libuv as one descriptor.
  int epfd_ = -1;
  uv_poll_t ep_poll_;
  bool ep_open_ = false;
  bool ep_ref_ = false;
  uv_timer_t kick_;  // runs the ready list soon when it fills outside a dispatch
  bool kick_open_ = false;
  bool in_dispatch_ = false;
  std::vector<Leg*> ready_;
  std::vector<Leg*> ready_batch_;  // the round RunReady is reading
  std::vector<Session*> graveyard_;  // freed after the dispatch that ended them
  // Messages mode: the batch being collected, the legs it holds messages of, the legs
  // JavaScript sent to while a delivery ran.
  std::vector<uint8_t> batch_;
  std::vector<double> batch_desc_;
  std::vector<Leg*> batch_legs_;
  std::vector<Leg*> delivered_legs_;
  std::vector<Leg*> dirty_;
  std::vector<Leg*> after_delivery_;  // stopped for a full batch (in_ready set: not reaped)
  bool delivering_ = false;
  bool defer_writes_ = false;  // SendData queues (a read or a delivery runs); FlushDirty writes
  uint64_t batch_no_ = 1;       // the batch being collected
  uint64_t delivering_no_ = 0;  // the batch JavaScript has
  uint64_t delivered_no_ = 0;   // the last batch JavaScript finished with
  // The listener (engine accept).
  int listen_fd_ = -1;
  bool listen_open_ = false;
  bool listen_paused_ = false;  // out of descriptors: retried at the next sweep
  ListenOptions listen_options_;
  size_t handshakes_ = 0;
  size_t pipes_ = 0;
  SSL_CTX* server_tls_ = nullptr;
  std::vector<SSL_CTX*> client_tls_;
  uint8_t* inflate_buf_ = nullptr;  // inflated bytes land here to be counted (then dropped)
  std::vector<uint8_t> tls_out_;  // a gather's spans in one piece, for TLS records (kept: per engine)
  // Scratch space of the head parsers (large: kept off the stack).
  RequestHead* request_head_ = nullptr;
  ResponseHead* response_head_ = nullptr;
};

}  // namespace engine
}  // namespace sluice

#endif  // SLUICE_ENGINE_ENGINE_H_
