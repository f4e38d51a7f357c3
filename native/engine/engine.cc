#include "engine.h"

#ifdef __linux__

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "http_head.h"
#include "../codec_abi.h"
#include "../envelope.h"
#include "../mask.h"
#include "../utf8.h"

// macOS has no MSG_NOSIGNAL; Node ignores SIGPIPE there as here, so 0 is enough.
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

namespace sluice {
namespace engine {

namespace {

// One read buffer per engine (per thread); a frame that fits in a read is checked and
// forwarded in place.
constexpr size_t kReadBytes = kReadBufferBytes;
constexpr size_t kMinReadBytes = 16 * 1024;
// permessage-deflate: inflated output is counted in pieces of this size (per engine).
constexpr size_t kInflateBytes = 64 * 1024;
// Data frames up to this size are kept whole until their last byte arrived, so a side that
// vanishes mid-frame leaves its partner with whole frames only (and a close frame: 1014 or
// 1001). Larger frames stream as they arrive, with a copy of nothing; if their sender
// vanishes mid-frame, the partner's framing cannot be mended and it gets only the TCP end.
constexpr uint64_t kStreamMinBytes = 256 * 1024;
// A leg keeps a hold buffer up to this size between frames; larger ones are given back.
constexpr size_t kHoldKeepBytes = 64 * 1024;
// How long a leg gets to answer our close frame, or to close its TCP connection after the
// handshake (the sweep runs once a second, so the cut comes 0-1 s later).
constexpr uint64_t kCloseReplyMs = 3000;
// After a violation the culprit gets its close frame and this long before the cut.
constexpr uint64_t kViolationLingerMs = 1000;
// A TLS client whose connection Node closed (through a pipe) has this long to close its own.
constexpr uint64_t kPipeLingerMs = 5000;
// A pipe's leg whose end waits for its queue to drain is cut when the queue has not moved
// for this long (a client that stops reading cannot pin the connection).
constexpr uint64_t kPipeStallMs = 30000;
// Messages mode: past this many bytes in the batch, legs in messages mode are read again
// only after the batch has gone to JavaScript (one turn of the loop holds at most this
// much, plus one read, for JavaScript).
constexpr size_t kBatchMaxBytes = 1024 * 1024;
constexpr uint64_t kSizeBounds[9] = {64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304};

int CloseCodeOf(int32_t err) {
  if (err == codec_errno::kInvalidUtf8) return 1007;
  if (err >= codec_errno::kFrameTooBig && err <= codec_errno::kTooManyFragments) return 1009;
  return 1002;
}

// The messages of CODEC_ERRORS in src/codec/types.ts.
const char* MessageOf(int32_t err) {
  switch (err) {
    case 1: return "reserved opcode";
    case 2: return "control frame payload over 125 bytes";
    case 3: return "fragmented control frame";
    case 4: return "RSV bit set without a negotiated extension";
    case 5: return "unmasked frame from a client";
    case 6: return "masked frame from a server";
    case 7: return "64-bit payload length with the top bit set";
    case 8: return "continuation frame with no message in progress";
    case 9: return "new message before the fragmented one finished";
    case 10: return "frame over the size limit";
    case 11: return "message over the size limit";
    case 12: return "too many fragments in one message";
    case 13: return "invalid UTF-8 in a text message";
    default: return "protocol error";
  }
}

// Close payload: code (big endian) and the reason cut to 123 bytes on a character boundary.
size_t ClosePayload(int code, const std::string& reason, uint8_t out[125]) {
  if (code == 0) return 0;
  out[0] = static_cast<uint8_t>(code >> 8);
  out[1] = static_cast<uint8_t>(code & 0xff);
  size_t n = reason.size();
  if (n > 123) {
    n = 123;
    while (n > 0 && (static_cast<uint8_t>(reason[n]) & 0xc0) == 0x80) n--;
  }
  std::memcpy(out + 2, reason.data(), n);
  return n + 2;
}

void OnEpollCb(uv_poll_t* handle, int, int) { static_cast<Engine*>(handle->data)->OnEpoll(); }

void OnKickCb(uv_timer_t* t) { static_cast<Engine*>(t->data)->RunReady(); }

void OnHandleClosedCb(uv_handle_t* h) { static_cast<Engine*>(h->data)->HandleClosed(); }

// Events per epoll_wait; more wait for the next turn of the loop (libuv sees the epoll
// descriptor still readable).
constexpr int kEpollBatch = 256;

void OnSweepCb(uv_timer_t* t) { static_cast<Engine*>(t->data)->Sweep(); }

}  // namespace

// ---------------------------------------------------------------- small parts

void LimitsOf(const Params& p, CursorLimits* client, CursorLimits* server) {
  client->server = true;
  client->max_frame_bytes = p.max_frame_bytes;
  client->max_message_bytes = p.max_frame_bytes;
  client->max_fragments = p.max_fragments;
  *server = *client;
  server->server = false;
}

// Timers and rate limits of a session whose data phase starts now.
void StartClocks(Session* s, uint64_t t) {
  const Params& p = s->params;
  s->last_ping = t;
  s->client.seen = s->server.seen = t;
  if (p.expires_in_ms > 0) s->expires_at = t + static_cast<uint64_t>(p.expires_in_ms);
  if (p.messages_per_second > 0) {
    s->msg_rate.rate_per_ms = p.messages_per_second / 1000;
    s->msg_rate.burst = s->msg_rate.tokens = p.messages_per_second;
    s->msg_rate.last = t;
  }
  if (p.bytes_per_second > 0) {
    s->byte_rate.rate_per_ms = p.bytes_per_second / 1000;
    s->byte_rate.burst = s->byte_rate.tokens = p.bytes_per_second;
    s->byte_rate.last = t;
  }
}

bool CanSend(const Leg* leg) {
  return leg->alive && !leg->broken && (leg->state == kOpen || leg->state == kCloseReceived);
}


bool TokenBucket::Take(double n, uint64_t now) {
  if (!on()) return true;
  if (now > last) {
    tokens += static_cast<double>(now - last) * rate_per_ms;
    if (tokens > burst) tokens = burst;
  }
  last = now;
  if (tokens < n) return false;
  tokens -= n;
  return true;
}

// ---------------------------------------------------------------- the visitor of one read

class LegVisitor final : public FrameVisitor {
 public:
  LegVisitor(Engine* e, Leg* from, Leg* to) : e_(e), a_(from), b_(to) {}
  bool OnHeader(const FrameHeader& h, uint8_t* raw, bool in_read) override;
  bool OnPayload(uint8_t* p, size_t n, uint64_t offset, bool last) override;
  void OnError(int32_t err) override { e_->ProtocolError(a_, err, nullptr); }

 private:
  bool ActHeld(uint8_t* q, size_t n, bool in_read);
  Engine* e_;
  Leg* a_;
  Leg* b_;
};

bool LegVisitor::OnHeader(const FrameHeader& h, uint8_t* raw, bool in_read) {
  Leg* a = a_;
  Leg* b = b_;
  Session* s = a->session;
  if (a->deaf) return false;
  a->header = h;
  std::memcpy(a->header_raw, raw, h.size);
  a->raw_in_read = in_read ? raw : nullptr;
  a->hold.clear();
  const uint64_t now = e_->now();
  if (h.opcode >= 0x8) {
    a->held = true;
    a->forward = false;
    if (a->client && h.opcode == opcode::kPing && (!s->msg_rate.Take(1, now) || !s->byte_rate.Take(static_cast<double>(h.length), now))) {
      e_->Fail(a, 1008, "message rate limit", 1001, "client closed: over its message rate");
      return false;
    }
    return true;
  }
  if (h.opcode != opcode::kContinuation) {
    a->text = h.opcode == opcode::kText;
    a->dropping = false;
    // RSV1 only passes the cursor when permessage-deflate was agreed (the leg has a meter).
    a->compressed = h.rsv1 && a->inflate != nullptr;
    if (a->text) a->utf8.Reset();
    if (a->compressed) a->inflate->Begin(a->text ? &a->utf8 : nullptr);
  }
  if (a->client && (!s->msg_rate.Take(1, now) || !s->byte_rate.Take(static_cast<double>(h.length), now))) {
    e_->Fail(a, 1008, "message rate limit", 1001, "client closed: over its message rate");
    return false;
  }
  e_->CountFrame(a->client, a->text ? kText : kBinary, h.length);
  a->bytes += h.length;
  if (h.fin) a->messages++;
  bool forward = CanSend(b) && !a->dropping;
  // Decided once per message, at its first frame: a message that started goes on whole.
  // (Messages mode: decided for envelope data towards the upstream only, ShedToUpstream.)
  if (forward && h.opcode != opcode::kContinuation && s->params.mode != 1 && e_->OverBudget(a, b)) {
    forward = false;
    if (s->params.policy == 2) {
      e_->counters_[slot::kDroppedBackpressure]++;
      a->dropping = true;
    } else {
      e_->SlowPeer(b);
      a->forward = false;
      // Not forwarded; a compressed frame is still inflated (the sender's window moves).
      a->held = a->compressed;
      return !a->deaf;
    }
  }
  a->forward = forward;
  if (s->params.mode == 1) {
    // Messages mode: every data frame is kept whole, checked, then collected for JavaScript.
    a->held = true;
    return true;
  }
  // Text and compressed frames are checked whole before they go (a frame that fails must
  // not be half sent; both are bounded by max_frame_bytes); plain binary frames stream only
  // when large (kStreamMinBytes): their checks are all in the header.
  a->held = a->text || a->compressed || h.length <= kStreamMinBytes;
  if (!a->held && forward) {
    uint8_t* hdr = raw;
    if (!in_read) {
      hdr = e_->ArenaCopy(b, raw, h.size);
    }
    if (a->client) {
      // Towards the upstream under a fresh key: the payload is XORed with both keys at once.
      uint8_t k[4];
      e_->keys_.Next(k);
      for (int i = 0; i < 4; i++) a->key_xor[i] = h.key[i] ^ k[i];
      std::memcpy(hdr + h.size - 4, k, 4);
    }
    e_->GatherAdd(b, hdr, h.size);
    b->out_frame_left = h.length;
  }
  return true;
}

bool LegVisitor::OnPayload(uint8_t* p, size_t n, uint64_t offset, bool last) {
  Leg* a = a_;
  Leg* b = b_;
  if (a->deaf) return false;
  if (a->held) {
    if (offset == 0 && last) return ActHeld(p, n, true);
    if (offset == 0) a->hold.reserve(static_cast<size_t>(a->header.length));
    a->hold.insert(a->hold.end(), p, p + n);
    if (!last) return true;
    const bool go = ActHeld(a->hold.data(), a->hold.size(), false);
    a->hold.clear();
    if (a->hold.capacity() > kHoldKeepBytes) a->hold.shrink_to_fit();
    return go;
  }
  if (!a->forward) return true;
  if (a->client) XorMask(p, p, n, a->key_xor, static_cast<size_t>(offset & 3));
  if (n > 0) e_->GatherAdd(b, p, n);
  b->out_frame_left -= n;
  if (b->out_frame_left == 0 && (!b->deferred.empty() || b->shut_after_flush)) {
    e_->FlushGather();
    if (!b->deferred.empty()) {
      std::vector<uint8_t> d;
      d.swap(b->deferred);
      e_->Write(b, d.data(), d.size());
    }
    // Its end waited for this frame's last byte (EndLeg): it goes once the queue has.
    if (b->alive && b->out.size() == 0) e_->ShutIfDone(b);
  }
  return true;
}

// A whole text or control frame: q holds its payload (in the read when in_read, else the
// leg's hold), still masked as sent.
bool LegVisitor::ActHeld(uint8_t* q, size_t n, bool in_read) {
  Leg* a = a_;
  Leg* b = b_;
  const FrameHeader& h = a->header;
  const bool control = h.opcode >= 0x8;
  const bool messages = a->session->params.mode == 1;
  // Control frames, text, compressed data and what goes to JavaScript are read unmasked;
  // plain binary is re-keyed below in one pass.
  if (h.masked && (control || a->text || a->compressed || messages)) XorMask(q, q, n, h.key, 0);
  switch (h.opcode) {
    case opcode::kPing:
      e_->CountFrame(a->client, kPing, n);
      if (a->state == kOpen) e_->SendControl(a, opcode::kPong, q, n);  // per hop
      return true;
    case opcode::kPong:
      e_->CountFrame(a->client, kPong, n);
      return true;
    case opcode::kClose:
      e_->CountFrame(a->client, kCloseKind, n);
      if (messages && e_->Pending(a)) {
        // Its messages before it are still on their way through JavaScript: the close
        // follows them (EndDelivery).
        a->close_pending = true;
        a->close_payload.assign(q, q + n);
        a->deaf = true;
        return false;
      }
      return e_->OnCloseFrame(a, b, q, n);
    default:
      break;
  }
  if (a->compressed) {
    if (!e_->Meter(a, q, n, h.fin)) return false;
  } else if (a->text && !a->utf8.Push(q, n, h.fin)) {
    e_->ProtocolError(a, codec_errno::kInvalidUtf8, nullptr);
    return false;
  }
  if (!a->forward || !CanSend(b)) return true;
  if (messages) {
    e_->Collect(a, h, q, n);
    return true;
  }
  uint8_t hdr[14];
  std::memcpy(hdr, a->header_raw, h.size);
  if (a->client) {
    // Towards the upstream under a fresh key (binary: both keys in one pass).
    uint8_t k[4];
    e_->keys_.Next(k);
    std::memcpy(hdr + h.size - 4, k, 4);
    if (a->text || a->compressed) {
      XorMask(q, q, n, k, 0);
    } else {
      uint8_t x[4];
      for (int i = 0; i < 4; i++) x[i] = h.key[i] ^ k[i];
      XorMask(q, q, n, x, 0);
    }
  }
  if (in_read && a->raw_in_read != nullptr && a->raw_in_read + h.size == q) {
    // Header and payload lie together in the read: forwarded in place (consecutive frames
    // coalesce into one span of the write).
    std::memcpy(a->raw_in_read, hdr, h.size);
    e_->GatherAdd(b, a->raw_in_read, h.size + n);
  } else if (in_read) {
    e_->GatherAdd(b, e_->ArenaCopy(b, hdr, h.size), h.size);
    if (n > 0) e_->GatherAdd(b, q, n);
  } else {
    // The payload is the leg's hold buffer: header and payload in one write, made now,
    // before the hold is cleared.
    e_->GatherAdd(b, e_->ArenaCopy(b, hdr, h.size), h.size);
    if (n > 0) e_->GatherAdd(b, q, n);
    e_->FlushGather();
  }
  return true;
}

// ---------------------------------------------------------------- engine

Engine::Engine(uv_loop_t* loop, void* owner, Notify notify) : loop_(loop), owner_(owner), notify_(notify) {
  read_buf_ = static_cast<uint8_t*>(std::malloc(kReadBytes));
  request_head_ = new (std::nothrow) RequestHead;
  response_head_ = new (std::nothrow) ResponseHead;
  uv_timer_init(loop_, &sweep_);
  sweep_.data = this;
  uv_timer_start(&sweep_, OnSweepCb, 1000, 1000);
  uv_unref(reinterpret_cast<uv_handle_t*>(&sweep_));
  sweep_open_ = true;
  pending_handles_ = 1;
  uv_timer_init(loop_, &kick_);
  kick_.data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(&kick_));
  kick_open_ = true;
  pending_handles_++;
  // One epoll per engine: every descriptor is registered once, edge-triggered, for
  // reading and writing, and never modified (as nginx does): no epoll_ctl per state change.
  // libuv watches the epoll descriptor itself; it holds the loop open only while the
  // engine has connections or listens (UpdateRef).
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ >= 0 && uv_poll_init(loop_, &ep_poll_, epfd_) == 0) {
    ep_poll_.data = this;
    uv_poll_start(&ep_poll_, UV_READABLE, OnEpollCb);
    uv_unref(reinterpret_cast<uv_handle_t*>(&ep_poll_));
    ep_open_ = true;
    pending_handles_++;
  } else if (epfd_ >= 0) {
    close(epfd_);
    epfd_ = -1;
  }
}

Engine::~Engine() {
  for (Session* s : graveyard_) delete s;
  if (server_tls_ != nullptr) tls::FreeContext(server_tls_);
  for (SSL_CTX* ctx : client_tls_) tls::FreeContext(ctx);
  std::free(read_buf_);
  std::free(inflate_buf_);
  delete request_head_;
  delete response_head_;
}

void Engine::Dispose() {
  if (disposed_) return;
  disposed_ = true;
  StopListening();
  CloseAll();
  for (Leg* leg : ready_) leg->in_ready = false;
  ready_.clear();
  for (Leg* leg : after_delivery_) leg->in_ready = false;
  after_delivery_.clear();
  Reap();
  if (sweep_open_) {
    sweep_open_ = false;
    uv_timer_stop(&sweep_);
    uv_close(reinterpret_cast<uv_handle_t*>(&sweep_), OnHandleClosedCb);
  }
  if (kick_open_) {
    kick_open_ = false;
    uv_timer_stop(&kick_);
    uv_close(reinterpret_cast<uv_handle_t*>(&kick_), OnHandleClosedCb);
  }
  if (ep_open_) {
    ep_open_ = false;
    uv_poll_stop(&ep_poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(&ep_poll_), OnHandleClosedCb);
  }
  if (epfd_ >= 0) close(epfd_);
  epfd_ = -1;
}

// ---------------------------------------------------------------- readiness

bool Engine::Watch(Leg* leg) {
  struct epoll_event ev;
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = leg;
  if (epfd_ < 0 || epoll_ctl(epfd_, EPOLL_CTL_ADD, leg->fd, &ev) != 0) return false;
  leg->watched = true;
  return true;
}

// Before the descriptor closes or changes hands: a copy of it elsewhere (a child between
// fork and exec) would otherwise keep the registration, and its events, alive.
void Engine::Unwatch(Leg* leg) {
  if (!leg->watched) return;
  leg->watched = false;
  epoll_ctl(epfd_, EPOLL_CTL_DEL, leg->fd, nullptr);
}

void Engine::OnEpoll() {
  if (epfd_ < 0) return;
  struct epoll_event evs[kEpollBatch];
  const int n = epoll_wait(epfd_, evs, kEpollBatch, 0);
  in_dispatch_ = true;
  for (int i = 0; i < n; i++) {
    Leg* leg = static_cast<Leg*>(evs[i].data.ptr);
    if (leg == nullptr) {
      OnAccept();
      continue;
    }
    // A leg ended earlier in this batch is still in memory (freed by Reap, below).
    if (!leg->watched) continue;
    OnLegEvent(leg, evs[i].events);
  }
  in_dispatch_ = false;
  RunReady();
}

void Engine::OnLegEvent(Leg* leg, uint32_t ev) {
  const int stage = leg->session->stage;
  if (stage != kStageData && stage != kStagePipe) {
    OnHandshakeEvent(leg, ev);
    return;
  }
  if (!leg->alive) return;
  if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) leg->readable = true;
  if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) leg->hup = true;
  if (leg->tls != nullptr) {
    // OpenSSL may wait for the other direction: a read for writability, a write for input.
    if ((ev & EPOLLOUT) && leg->tls_read_wants_out) {
      leg->tls_read_wants_out = false;
      leg->readable = true;
    }
    if ((ev & EPOLLIN) && leg->tls_write_wants_in) {
      leg->tls_write_wants_in = false;
      if (leg->out.size() > 0) DrainBacklog(leg);
      if (!leg->alive) return;
    }
  }
  if ((ev & EPOLLOUT) && leg->out.size() > 0) DrainBacklog(leg);
  if (leg->alive && leg->readable && !leg->paused && !leg->read_eof && !leg->eof_pending) ReadSome(leg);
  if (leg->alive && (ev & EPOLLERR) && !leg->read_eof && !leg->eof_pending) {
    // Failed (reset): what was readable has been read; the rest cannot go.
    leg->out.Free();
    OnEof(leg);
  }
}

// Read `leg` again soon: it stopped with bytes still waiting (fairness cap, or it was
// paused), and no new edge will say so.
void Engine::Schedule(Leg* leg) {
  if (leg->in_ready || !leg->alive) return;
  leg->in_ready = true;
  ready_.push_back(leg);
  if (!in_dispatch_ && kick_open_) uv_timer_start(&kick_, OnKickCb, 0, 0);
}

// A paused leg may be read again.
void Engine::Resume(Leg* leg) {
  leg->paused = false;
  if (leg->readable) Schedule(leg);
}

void Engine::RunReady() {
  // Legs scheduled while these run wait for the next round (a busy pair cannot starve the loop).
  for (int round = 0; round < 4 && !ready_.empty(); round++) {
    ready_batch_.swap(ready_);
    for (Leg* leg : ready_batch_) {
      leg->in_ready = false;
      if (leg->watched && leg->alive && leg->readable && !leg->paused && !leg->read_eof && !leg->eof_pending) ReadSome(leg);
    }
    ready_batch_.clear();  // kept: no allocation per round
  }
  if (!ready_.empty() && kick_open_) uv_timer_start(&kick_, OnKickCb, 0, 0);
  Reap();
}

// Sessions whose end was reached are freed here, outside any dispatch that may still hold
// pointers to their legs.
void Engine::Reap() {
  if (in_dispatch_ || delivering_ || graveyard_.empty()) return;
  std::vector<Session*> dead;
  dead.swap(graveyard_);
  for (Session* s : dead) {
    // Still in the ready list, or in a batch of messages JavaScript has not had yet.
    if (s->client.in_ready || s->server.in_ready || Pending(&s->client) || Pending(&s->server)) {
      // Still in the ready list: freed once that has run.
      graveyard_.push_back(s);
      continue;
    }
    delete s;
  }
  UpdateRef();
}

// The loop stays alive while the engine has connections or listens (as Node's own sockets
// keep it alive), not for an idle engine.
void Engine::UpdateRef() {
  if (!ep_open_) return;
  const bool want = count_ > 0 || handshakes_ > 0 || pipes_ > 0 || listen_open_;
  if (want == ep_ref_) return;
  ep_ref_ = want;
  if (want) uv_ref(reinterpret_cast<uv_handle_t*>(&ep_poll_));
  else uv_unref(reinterpret_cast<uv_handle_t*>(&ep_poll_));
}

void Engine::HandleClosed() {
  if (--pending_handles_ == 0 && disposed_) delete this;
}

Session* Engine::Find(uint32_t id) {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

uint32_t Engine::Adopt(int client_fd, int upstream_fd, const uint8_t* client_head, size_t client_len,
                       const uint8_t* upstream_head, size_t upstream_len, const Params& p, std::string* error) {
  if (disposed_ || read_buf_ == nullptr) {
    *error = "the engine is closed";
    return 0;
  }
  const int c = fcntl(client_fd, F_DUPFD_CLOEXEC, 0);
  if (c < 0) {
    *error = std::string("dup of the client socket: ") + std::strerror(errno);
    return 0;
  }
  const int u = fcntl(upstream_fd, F_DUPFD_CLOEXEC, 0);
  if (u < 0) {
    *error = std::string("dup of the upstream socket: ") + std::strerror(errno);
    close(c);
    return 0;
  }
  for (int fd : {c, u}) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  CursorLimits cl, sl;
  LimitsOf(p, &cl, &sl);
  uint32_t id = next_id_++;
  if (id == 0) id = next_id_++;
  Session* s = new (std::nothrow) Session(this, id, p, cl, sl);
  if (s == nullptr) {
    close(c);
    close(u);
    *error = "out of memory";
    return 0;
  }
  StartClocks(s, now());
  s->client.fd = c;
  s->server.fd = u;
  if (!Watch(&s->client) || !Watch(&s->server)) {
    *error = std::string("cannot watch the sockets: ") + std::strerror(errno);
    Unwatch(&s->client);
    close(c);
    close(u);
    delete s;
    return 0;
  }
  Link(s);
  count_++;
  UpdateRef();
  // Bytes that came with the handshakes: the upstream's first frames, the client's.
  for (Leg* leg : {&s->server, &s->client}) {
    const uint8_t* src = leg->client ? client_head : upstream_head;
    size_t left = leg->client ? client_len : upstream_len;
    while (left > 0 && leg->alive) {
      const size_t n = left < kReadBytes ? left : kReadBytes;
      std::memcpy(read_buf_, src, n);
      Process(leg, read_buf_, n);
      src += n;
      left -= n;
    }
  }
  // Whatever waits in the sockets already: no edge will announce it.
  for (Leg* leg : {&s->server, &s->client}) {
    leg->readable = true;
    Schedule(leg);
  }
  return id;
}

bool Engine::Shutdown(uint32_t id, int code, const std::string& reason, int upstream_code,
                      const std::string& upstream_reason, bool by_client) {
  Session* s = Find(id);
  if (s == nullptr || s->ended || s->stage != kStageData) return false;
  if (s->closed_first == 0) s->closed_first = by_client ? 1 : 3;
  SendClose(&s->client, code, reason);
  SendClose(&s->server, upstream_code, upstream_reason);
  return true;
}

bool Engine::FailSide(uint32_t id, bool client, int code, const std::string& reason, int partner_code,
                      const std::string& partner_reason) {
  Session* s = Find(id);
  if (s == nullptr || s->ended || s->stage != kStageData) return false;
  Fail(client ? &s->client : &s->server, code, reason, partner_code, partner_reason);
  return true;
}

// ---------------------------------------------------------------- messages mode

// A whole data frame of `from` (unmasked, checked): part of the message JavaScript gets.
void Engine::Collect(Leg* from, const FrameHeader& h, const uint8_t* p, size_t n) {
  if (h.opcode != opcode::kContinuation) {
    from->msg_op = h.opcode;
    from->msg.clear();
  }
  if (!h.fin || !from->msg.empty() || h.opcode == opcode::kContinuation) {
    from->msg.insert(from->msg.end(), p, p + n);
    if (!h.fin) return;
    p = from->msg.data();
    n = from->msg.size();
  }
  // v2: unwrapped or wrapped here; anything else goes into the batch for JavaScript.
  const bool handled = from->session->params.envelope == 2 && (from->client ? EnvelopeFromClient(from, p, n) : EnvelopeToClient(from, p, n));
  if (!handled) Batch(from, p, n);
  if (!from->msg.empty()) {
    from->msg.clear();
    if (from->msg.capacity() > kHoldKeepBytes) from->msg.shrink_to_fit();
  }
}

// One whole message of `from` into the batch JavaScript gets this turn.
void Engine::Batch(Leg* from, const uint8_t* p, size_t n) {
  if (batch_desc_.empty() && notify_ != nullptr) notify_(owner_);
  batch_desc_.push_back(from->session->id);
  batch_desc_.push_back(from->client ? 1 : 0);
  batch_desc_.push_back(from->msg_op);
  batch_desc_.push_back(static_cast<double>(batch_.size()));
  batch_desc_.push_back(static_cast<double>(n));
  batch_.insert(batch_.end(), p, p + n);
  if (from->batch_no != batch_no_) {
    from->batch_no = batch_no_;
    from->batched = 0;
    batch_legs_.push_back(from);
  }
  // Bound for the partner (once JavaScript has it): counted as queued there, so that a fast
  // sender is paused as it would be if the bytes were in the partner's queue already.
  from->batched += n;
  const Session* s = from->session;
  if (s->params.policy == 0 && from->state == kOpen && Partner(from)->out.size() + from->batched > s->params.high_water) {
    from->paused = true;
  }
}

// Envelope v2, client side: a data frame's payload goes to the upstream as one binary
// message; ping, pong and close are answered here. The rules and reasons are those of
// src/proxy/envelope-route.ts and src/protocol/envelope.ts (decodeEnvelope). False: the
// message goes to JavaScript (control and error frames: the host's hooks).
bool Engine::EnvelopeFromClient(Leg* from, const uint8_t* p, size_t n) {
  Session* s = from->session;
  Leg* to = &s->server;
  if (from->msg_op != opcode::kBinary) {
    Fail(from, 1003, "malformed envelope", 1001, "client sent a malformed envelope");
    return true;
  }
  uint32_t d[4];
  const int32_t r = EnvelopeDecode(p, n, s->params.max_frame_bytes, d);
  if (r < 0) {
    if (-r == codec_errno::kEnvelopeTooBig) {
      counters_[slot::kDroppedTooBig]++;
      Fail(from, 1009, "envelope payload over " + std::to_string(s->params.max_frame_bytes) + " bytes", 1009,
           "client message over the size limit");
    } else {
      Fail(from, 1002, "malformed envelope", 1001, "client sent a malformed envelope");
    }
    return true;
  }
  const uint8_t* payload = p + d[2];
  const size_t len = d[3];
  switch (d[0]) {
    case 1:  // data
      if (CanSend(to) && !ShedToUpstream(s)) SendData(to, opcode::kBinary, nullptr, 0, payload, len);
      return true;
    case 2: {  // ping: a pong with its payload
      CountFrame(true, kPing, len);
      uint8_t h[8];
      EnvelopeHeader(h, 3, 0, static_cast<uint32_t>(len));
      if (CanSend(from)) SendData(from, opcode::kBinary, h, 8, payload, len);
      return true;
    }
    case 3:  // pong
      CountFrame(true, kPong, len);
      return true;
    case 4: {  // close: both sides get its code and reason
      if (len == 1 || len > 125) {
        Fail(from, 1002, "malformed envelope", 1001, "client sent a malformed envelope");
        return true;
      }
      const int code = len >= 2 ? (payload[0] << 8) | payload[1] : 1005;
      if (len >= 2 && !ValidWireCode(code)) {
        Fail(from, 1002, "malformed envelope", 1001, "client sent a malformed envelope");
        return true;
      }
      if (len >= 2 && !IsUtf8(payload + 2, len - 2)) {
        Fail(from, 1007, "invalid envelope payload", 1001, "client sent a malformed envelope");
        return true;
      }
      if (len == 0) {
        // No code: nothing to pass on (an envelope close says how the session ends).
        Fail(from, 1002, "malformed envelope close", 1001, "client sent a malformed envelope");
        return true;
      }
      CountFrame(true, kCloseKind, len);
      const std::string reason(reinterpret_cast<const char*>(payload + 2), len - 2);
      Shutdown(s->id, code, reason, code, reason, true);
      return true;
    }
    case 5:  // error: its text must be UTF-8; the host counts and logs it
      if (!IsUtf8(payload, len)) {
        Fail(from, 1007, "invalid envelope payload", 1001, "client sent a malformed envelope");
        return true;
      }
      return false;
    default:  // control: JSON, for the host
      return false;
  }
}

// Under `close` and `drop`, whether an envelope's data for the upstream is shed (the
// TypeScript engine's upstreamData): dropped and counted, or the client gets 1013.
bool Engine::ShedToUpstream(Session* s) {
  if (!OverBudget(&s->client, &s->server)) return false;
  if (s->params.policy == 2) counters_[slot::kDroppedBackpressure]++;
  else SlowPeer(&s->server);
  return true;
}

// Envelope v2, upstream side: its message becomes one data frame (final) for the client.
bool Engine::EnvelopeToClient(Leg* from, const uint8_t* p, size_t n) {
  Leg* to = &from->session->client;
  if (!CanSend(to)) return true;
  uint8_t h[8];
  EnvelopeHeader(h, 1, 0x04, static_cast<uint32_t>(n));
  SendData(to, opcode::kBinary, h, 8, p, n);
  return true;
}

void Engine::BeginDelivery(std::vector<uint8_t>* bytes, std::vector<double>* desc) {
  bytes->swap(batch_);
  desc->swap(batch_desc_);
  batch_.clear();
  batch_desc_.clear();
  delivered_legs_.swap(batch_legs_);
  batch_legs_.clear();
  delivering_no_ = batch_no_++;
  delivering_ = true;
  defer_writes_ = true;
}

void Engine::EndDelivery() {
  delivering_ = false;
  defer_writes_ = false;
  delivered_no_ = delivering_no_;
  FlushDirty();  // what JavaScript sent: one write per side
  // What waited behind the messages: a close frame, the end of the connection.
  std::vector<Leg*> legs;
  legs.swap(delivered_legs_);
  for (Leg* leg : legs) {
    if (leg->batch_no == delivered_no_) leg->batched = 0;
    // Paused for what it had in the batch: read again once its partner's queue allows.
    if (leg->paused && leg->alive && Partner(leg)->out.size() + leg->batched <= leg->session->params.high_water / 2) Resume(leg);
  }
  for (Leg* leg : legs) {
    // A violation found behind messages first (it was seen before any end that followed
    // it): now that they went, both sides are told.
    for (Leg* l : {leg, Partner(leg)}) {
      if (!l->fail_pending || Pending(l) || Pending(Partner(l))) continue;
      l->fail_pending = false;
      if (l->alive || Partner(l)->alive) Fail(l, l->fail_code, l->fail_reason, l->fail_partner_code, l->fail_partner_reason);
    }
    // Then what waited behind the messages: a close frame, the end of the connection.
    for (Leg* l : {leg, Partner(leg)}) {
      if (Pending(l)) continue;  // more of its messages in the next batch
      if (l->close_pending) {
        l->close_pending = false;
        std::vector<uint8_t> p;
        p.swap(l->close_payload);
        if (l->alive) OnCloseFrame(l, Partner(l), p.data(), p.size());
      }
      if (l->eof_pending) {
        l->eof_pending = false;
        OnEof(l);
      }
    }
  }
  // Legs that stopped for a full batch are read again (the kick, next turn).
  std::vector<Leg*> waiting;
  waiting.swap(after_delivery_);
  for (Leg* leg : waiting) {
    leg->in_ready = false;
    Schedule(leg);
  }
  if (!in_dispatch_) Reap();
}

bool Engine::Send(uint32_t id, bool to_client, uint8_t op, const uint8_t* p, size_t n) {
  Session* s = Find(id);
  if (s == nullptr || s->ended || s->stage != kStageData || s->params.mode != 1) return false;
  Leg* to = to_client ? &s->client : &s->server;
  if (!CanSend(to) || (!to_client && ShedToUpstream(s))) return false;
  SendData(to, op, nullptr, 0, p, n);
  return true;
}

// One data frame to `to` (masked under a fresh key towards the upstream) of `prefix` and
// then `p`, behind what it has queued; written now, or (during a read or a delivery) once
// that is done, one write per side.
void Engine::SendData(Leg* to, uint8_t op, const uint8_t* prefix, size_t pn, const uint8_t* p, size_t pl) {
  const size_t n = pn + pl;
  uint8_t hdr[14];
  size_t h = 0;
  const uint8_t mask = to->client ? 0 : 0x80;
  hdr[h++] = static_cast<uint8_t>(0x80 | op);
  if (n < 126) {
    hdr[h++] = static_cast<uint8_t>(mask | n);
  } else if (n < 65536) {
    hdr[h++] = static_cast<uint8_t>(mask | 126);
    hdr[h++] = static_cast<uint8_t>(n >> 8);
    hdr[h++] = static_cast<uint8_t>(n);
  } else {
    hdr[h++] = static_cast<uint8_t>(mask | 127);
    for (int i = 7; i >= 0; i--) hdr[h++] = static_cast<uint8_t>(static_cast<uint64_t>(n) >> (8 * i));
  }
  uint8_t k[4];
  if (mask != 0) {
    keys_.Next(k);
    std::memcpy(hdr + h, k, 4);
    h += 4;
  }
  uint8_t* at = to->out.Reserve(h + n);
  if (at == nullptr) {
    WriteFailed(to);  // out of memory
    return;
  }
  std::memcpy(at, hdr, h);
  if (pn > 0) std::memcpy(at + h, prefix, pn);
  if (pl > 0) std::memcpy(at + h + pn, p, pl);
  if (mask != 0) XorMask(at + h, at + h, n, k, 0);
  if (defer_writes_) {
    if (!to->dirty) {
      to->dirty = true;
      dirty_.push_back(to);
    }
    return;
  }
  DrainBacklog(to);
  if (to->alive) AfterWrite(to);
}

// What was sent during a read or a delivery: one write per side.
void Engine::FlushDirty() {
  std::vector<Leg*> dirty;
  dirty.swap(dirty_);
  for (Leg* leg : dirty) {
    leg->dirty = false;
    if (!leg->alive || leg->out.size() == 0) continue;
    DrainBacklog(leg);
    if (leg->alive) AfterWrite(leg);
  }
}

// The envelope's own close before the WebSocket close (TypeScript: encodeEnvelope): v2 an
// 8-byte header and the close payload, v1 JSON with the code and the reason.
void Engine::SendEnvelopeClose(Leg* to, int code, const std::string& reason) {
  uint8_t payload[125];
  const size_t n = ClosePayload(code, reason, payload);
  if (to->session->params.envelope == 2) {
    uint8_t h[8];
    EnvelopeHeader(h, 4, 0, static_cast<uint32_t>(n));
    SendData(to, opcode::kBinary, h, 8, payload, n);
    return;
  }
  std::string j = "{\"type\":\"close\",\"code\":" + std::to_string(code) + ",\"reason\":\"";
  static const char* const kHex = "0123456789abcdef";
  for (size_t i = 2; i < n; i++) {
    const uint8_t c = payload[i];
    switch (c) {
      case '"': j += "\\\""; break;
      case '\\': j += "\\\\"; break;
      case '\b': j += "\\b"; break;
      case '\f': j += "\\f"; break;
      case '\n': j += "\\n"; break;
      case '\r': j += "\\r"; break;
      case '\t': j += "\\t"; break;
      default:
        if (c < 0x20) {
          j += "\\u00";
          j += kHex[c >> 4];
          j += kHex[c & 15];
        } else {
          j += static_cast<char>(c);
        }
    }
  }
  j += "\"}";
  SendData(to, opcode::kText, nullptr, 0, reinterpret_cast<const uint8_t*>(j.data()), j.size());
}

bool Engine::Destroy(uint32_t id) {
  Session* s = Find(id);
  if (s == nullptr || s->ended || s->stage != kStageData) return false;
  for (Leg* leg : {&s->client, &s->server}) {
    if (!leg->alive) continue;
    leg->out.Free();
    OnEof(leg);
  }
  return true;
}

bool Engine::Flow(uint32_t id, double (&out)[kFlowSlots]) {
  Session* s = Find(id);
  if (s == nullptr || s->stage != kStageData) return false;
  out[0] = s->client.paused ? 1 : 0;
  out[1] = s->server.paused ? 1 : 0;
  out[2] = static_cast<double>(s->client.out.size());
  out[3] = static_cast<double>(s->server.out.size());
  out[4] = static_cast<double>(s->client.messages);
  out[5] = static_cast<double>(s->server.messages);
  out[6] = static_cast<double>(s->client.bytes);
  out[7] = static_cast<double>(s->server.bytes);
  return true;
}

void Engine::CloseAll() {
  Session* s = head_;
  while (s != nullptr) {
    Session* next = s->next;
    if (s->stage != kStageData && s->stage != kStagePipe) {
      EndHandshake(s, false);
      s = next;
      continue;
    }
    for (Leg* leg : {&s->client, &s->server}) {
      if (!leg->alive) continue;
      leg->out.Free();
      if (leg->state == kOpen) leg->code = 1006;
      leg->state = kClosed;
      CloseDescriptor(leg);
    }
    MaybeEnd(s);
    s = next;
  }
}

// ---------------------------------------------------------------- reading

// Edge-triggered: read until the socket runs dry (a short read says so: data arriving
// after it raises a new edge; but an end already signalled is seen only by reading on, to
// the 0), the leg pauses or ends, or the fairness cap, after which the leg waits in the
// ready list for its turn.
bool Engine::ReadSome(Leg* leg) {
  for (int i = 0; i < 4; i++) {
    if (batch_.size() >= kBatchMaxBytes && leg->session->params.mode == 1) {
      // Messages mode: this turn's batch is full; read on once JavaScript has had it (not
      // through the ready list: it would only come back to a batch still full).
      if (!leg->in_ready) {
        leg->in_ready = true;
        after_delivery_.push_back(leg);
      }
      return true;
    }
    const size_t budget = ReadBudget(leg);
    bool dry = false;
    const ssize_t n = LegRecv(leg, read_buf_, budget, &dry);
    if (n > 0) {
      leg->seen = now();
      if (dry) leg->readable = false;
      Process(leg, read_buf_, static_cast<size_t>(n));
      if (!leg->alive || leg->paused || leg->read_eof || !leg->readable) return true;
      continue;
    }
    if (n == 0) {
      leg->readable = false;
      OnEof(leg);
      return false;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      leg->readable = false;
      return true;
    }
    leg->readable = false;
    leg->out.Free();
    OnEof(leg);
    return false;
  }
  Schedule(leg);
  return true;
}

// Under `pause`, what one read may add to the partner's queue: the room left below its high
// water (at least kMinReadBytes, so a frame header always fits). What sluice holds for a slow
// reader stays within high water plus one small read, not plus one whole read buffer.
size_t Engine::ReadBudget(const Leg* leg) const {
  const Session* s = leg->session;
  const Leg* to = leg->client ? &s->server : &s->client;
  // Messages mode: what this side has in the batch for JavaScript goes to `to` too.
  const uint64_t queued = to->out.size() + (s->params.mode == 1 && Pending(leg) ? leg->batched : 0);
  if ((s->stage != kStageData && s->stage != kStagePipe) || s->params.policy != 0 || queued == 0) return kReadBytes;
  const uint64_t room = s->params.high_water > queued ? s->params.high_water - queued : 0;
  if (room < kMinReadBytes) return kMinReadBytes;
  return room < kReadBytes ? static_cast<size_t>(room) : kReadBytes;
}

void Engine::Process(Leg* from, uint8_t* data, size_t len) {
  if (from->deaf) return;  // read only to see the end of the connection
  Leg* to = Partner(from);
  if (from->session->stage == kStagePipe) {
    if (!to->broken) Write(to, data, len);  // else dropped: nothing can reach `to` now
    return;
  }
  LegVisitor v(this, from, to);
  if (from->session->params.mode == 1) {
    // Messages mode: what this read sends (envelope v2 in the engine, pongs) goes out in one
    // write per side once the read is done.
    const bool outer = defer_writes_;
    defer_writes_ = true;
    from->cursor.Feed(data, len, &v);
    defer_writes_ = outer;
    if (!outer) FlushDirty();
    return;
  }
  from->cursor.Feed(data, len, &v);
  FlushGather();
}

// The peer closed its side (or the connection failed): the TypeScript engine's
// onSocketClosed. What is still queued for it is written before the descriptor closes.
void Engine::OnEof(Leg* leg) {
  if (!leg->alive) return;
  Session* s = leg->session;
  if (s->stage == kStagePipe) {
    PipeEof(leg);
    return;
  }
  if (s->stage != kStageData) {
    // A client that failed while its refusal was written, or during the handshakes.
    EndHandshake(s, s->stage != kStageRefusal && s->stage != kStageHead);
    return;
  }
  if (s->params.mode == 1 && (Pending(leg) || leg->fail_pending)) {
    // Its last messages (or its partner's, before its own violation is acted on) are still
    // on their way through JavaScript: the end follows them.
    leg->eof_pending = true;
    leg->readable = false;
    leg->deaf = true;
    return;
  }
  leg->read_eof = true;
  leg->deaf = true;
  leg->cursor.Stop();
  if (leg->state == kOpen) {
    if (s->closed_first == 0) s->closed_first = leg->client ? 1 : 2;
    leg->code = 1006;
  }
  leg->state = kClosed;
  Leg* partner = Partner(leg);
  BreakStream(partner);
  if (partner->state == kOpen) {
    if (leg->client) SendClose(partner, 1001, "client connection lost");
    else SendClose(partner, 1014, "upstream went away");
  } else if (partner->state == kCloseReceived) {
    SendClose(partner, partner->code == 1005 ? 0 : partner->code, partner->reason);
  }
  if (partner->broken && partner->alive) EndLeg(partner, kViolationLingerMs);
  if (partner->paused && partner->alive) Resume(partner);
  CloseWhenFlushed(leg, kViolationLingerMs);
  MaybeEnd(s);
}

// ---------------------------------------------------------------- writing

// A header for `to`'s gather. Whatever flush it takes happens here, before the copy: a
// flush empties the arena, so one between the copy and its GatherAdd would let the next
// copy overwrite a header still waiting to be written.
uint8_t* Engine::ArenaCopy(Leg* to, const uint8_t* p, size_t n) {
  if ((gather_leg_ != nullptr && gather_leg_ != to) || arena_used_ + n > sizeof(arena_) || iov_n_ >= kIov - 1) FlushGather();
  uint8_t* d = arena_ + arena_used_;
  std::memcpy(d, p, n);
  arena_used_ += n;
  return d;
}

void Engine::GatherAdd(Leg* to, const uint8_t* p, size_t n) {
  if (gather_leg_ != nullptr && gather_leg_ != to) FlushGather();
  if (iov_n_ > 0 && iov_[iov_n_ - 1].base + iov_[iov_n_ - 1].len == p) {
    iov_[iov_n_ - 1].len += n;
    return;
  }
  if (iov_n_ == kIov) {
    // The arena holds headers the pending entries point at: keep it until the flush.
    FlushGather();
  }
  gather_leg_ = to;
  iov_[iov_n_].base = p;
  iov_[iov_n_].len = n;
  iov_n_++;
}

void Engine::FlushGather() {
  Leg* to = gather_leg_;
  const int n = iov_n_;
  gather_leg_ = nullptr;
  iov_n_ = 0;
  if (to == nullptr || n == 0) {
    arena_used_ = 0;
    return;
  }
  if (!to->alive) {
    arena_used_ = 0;
    return;
  }
  size_t written = 0;
  if (to->out.size() == 0 && to->tls != nullptr) {
    // TLS: the spans in one piece (one span is the usual case: frames forwarded in place
    // coalesce), so that they go in as few records as they fit.
    const uint8_t* p = iov_[0].base;
    size_t total = iov_[0].len;
    if (n > 1) {
      total = 0;
      for (int i = 0; i < n; i++) total += iov_[i].len;
      tls_out_.resize(total);
      size_t at = 0;
      for (int i = 0; i < n; i++) {
        std::memcpy(tls_out_.data() + at, iov_[i].base, iov_[i].len);
        at += iov_[i].len;
      }
      p = tls_out_.data();
    }
    const ssize_t w = LegSend(to, p, total);
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      arena_used_ = 0;
      WriteFailed(to);
      return;
    }
    written = w < 0 ? 0 : static_cast<size_t>(w);
  } else if (to->out.size() == 0) {
    struct iovec v[kIov];
    for (int i = 0; i < n; i++) {
      v[i].iov_base = const_cast<uint8_t*>(iov_[i].base);
      v[i].iov_len = iov_[i].len;
    }
    struct msghdr m;
    std::memset(&m, 0, sizeof m);
    m.msg_iov = v;
    m.msg_iovlen = static_cast<size_t>(n);
    ssize_t w;
    do {
      w = sendmsg(to->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        arena_used_ = 0;
        WriteFailed(to);
        return;
      }
      w = 0;
    }
    written = static_cast<size_t>(w);
  }
  for (int i = 0; i < n; i++) {
    if (written >= iov_[i].len) {
      written -= iov_[i].len;
      continue;
    }
    if (!to->out.Append(iov_[i].base + written, iov_[i].len - written)) {
      arena_used_ = 0;
      WriteFailed(to);  // out of memory: the stream cannot go on whole
      return;
    }
    written = 0;
  }
  arena_used_ = 0;
  AfterWrite(to);
}

void Engine::Write(Leg* to, const uint8_t* p, size_t n) {
  if (gather_leg_ == to) FlushGather();
  if (!to->alive || n == 0) return;
  size_t w = 0;
  if (to->out.size() == 0) {
    ssize_t r = LegSend(to, p, n);
    if (r < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        WriteFailed(to);
        return;
      }
      r = 0;
    }
    w = static_cast<size_t>(r);
  }
  if (w < n && !to->out.Append(p + w, n - w)) {
    WriteFailed(to);  // out of memory: the stream cannot go on whole
    return;
  }
  AfterWrite(to);
}

// Past high water under `pause`: stop reading the partner until this side drains.
void Engine::AfterWrite(Leg* to) {
  Session* s = to->session;
  if (s->params.policy == 0 && to->out.size() > s->params.high_water) {
    Leg* partner = Partner(to);
    // Not read from now on (the registration stays: the next read waits for Resume).
    if (!partner->paused && partner->alive && partner->state == kOpen) partner->paused = true;
  }
}

void Engine::DrainBacklog(Leg* leg) {
  while (leg->out.size() > 0) {
    ssize_t w = LegSend(leg, leg->out.data(), leg->out.size());
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      WriteFailed(leg);
      return;
    }
    leg->out.Consume(static_cast<size_t>(w));
    // A pipe's queue that moves keeps its end from being cut for a stall.
    if (leg->shut_after_flush && leg->session->stage == kStagePipe) leg->kill_at = now() + kPipeStallMs;
  }
  Session* s = leg->session;
  if (leg->out.size() == 0) {
    leg->out.Free();
    leg->queued = 0;
    if (ShutIfDone(leg)) return;
    if (!leg->client && s->stage == kStageData) CheckBackpressure(s, 0);
  }
  Leg* partner = Partner(leg);
  if (partner->paused && leg->out.size() <= s->params.high_water / 2) Resume(partner);
}

void Engine::SendControl(Leg* to, uint8_t op, const uint8_t* payload, size_t n) {
  if (!to->alive || to->broken || n > 125) return;
  uint8_t frame[2 + 4 + 125];
  size_t len = 0;
  frame[len++] = static_cast<uint8_t>(0x80 | op);
  if (to->client) {
    frame[len++] = static_cast<uint8_t>(n);
    if (n > 0) std::memcpy(frame + len, payload, n);
  } else {
    frame[len++] = static_cast<uint8_t>(0x80 | n);
    uint8_t k[4];
    keys_.Next(k);
    std::memcpy(frame + len, k, 4);
    len += 4;
    if (n > 0) XorMask(frame + len, payload, n, k, 0);
  }
  len += n;
  if (to->out_frame_left > 0) {
    // Not inside a frame that is still streaming to this side: after it.
    to->deferred.insert(to->deferred.end(), frame, frame + len);
    return;
  }
  Write(to, frame, len);
}

void Engine::SendClose(Leg* leg, int code, const std::string& reason) {
  bool envelope_close = false;
  if (leg->state == kOpen) {
    leg->state = kCloseSent;
    leg->code = code == 0 ? 1005 : code;
    leg->reason = reason;
    envelope_close = leg->client && leg->session->params.envelope != 0 && code != 0;
  } else if (leg->state == kCloseReceived) {
    leg->state = kClosed;
  } else {
    return;
  }
  if (!leg->alive) return;
  if (leg->broken) {
    EndLeg(leg, kViolationLingerMs);
    return;
  }
  // An envelope client sees code and reason in its own protocol too.
  if (envelope_close) SendEnvelopeClose(leg, code, reason);
  if (!leg->alive) return;
  uint8_t payload[125];
  const size_t n = ClosePayload(code, reason, payload);
  SendControl(leg, opcode::kClose, payload, n);
  if (leg->state == kClosed) {
    EndLeg(leg, kCloseReplyMs);
  } else {
    leg->kill_at = now() + kCloseReplyMs;
    // Its reply must be read, whatever the partner's pace (data after it is discarded).
    if (leg->paused) Resume(leg);
  }
}

// `leg` (its peer's side ended) closes now, or once its queue has gone (ShutIfDone); it is
// cut if that takes longer than `linger_ms`.
void Engine::CloseWhenFlushed(Leg* leg, uint64_t linger_ms) {
  if (leg->out.size() == 0) {
    CloseDescriptor(leg);
    return;
  }
  leg->shut_after_flush = true;
  leg->kill_at = now() + linger_ms;
}

// A frame streaming to `to` will never end (its sender is gone or failed): its framing is
// broken, so it gets no more frames (a close frame included), only the end of its connection.
void Engine::BreakStream(Leg* to) {
  if (to->out_frame_left == 0) return;
  to->broken = true;
  to->out_frame_left = 0;
  to->deferred.clear();
}

// An end that waited (shut_after_flush) goes once the queue is empty and no frame is still
// streaming to the leg: FIN, or the close when its peer ended already. True when the leg
// closed.
bool Engine::ShutIfDone(Leg* leg) {
  if (!leg->shut_after_flush || leg->out.size() > 0 || leg->out_frame_left > 0) return false;
  leg->shut_after_flush = false;
  if (leg->read_eof) {
    CloseDescriptor(leg);
    MaybeEnd(leg->session);
    return true;
  }
  LegShutWrite(leg);
  // A pipe's client, its answer all written, gets a while to close its side; Node's side
  // times itself (a stall timer armed while its queue waited is done with).
  if (leg->session->stage == kStagePipe) leg->kill_at = leg->client ? now() + kPipeLingerMs : 0;
  return false;
}

// The close handshake of `leg` is done: end its TCP connection (cut if it lingers).
void Engine::EndLeg(Leg* leg, uint64_t linger_ms) {
  if (!leg->alive) return;
  if (leg->out.size() > 0 || leg->out_frame_left > 0) leg->shut_after_flush = true;
  else LegShutWrite(leg);
  leg->kill_at = now() + linger_ms;
}

void Engine::CloseDescriptor(Leg* leg) {
  if (!leg->alive) return;
  leg->alive = false;
  leg->deaf = true;
  leg->out.Free();
  leg->hold.clear();
  leg->hold.shrink_to_fit();
  leg->inflate.reset();
  Unwatch(leg);
  if (leg->tls != nullptr) {
    tls::Free(leg->tls);
    leg->tls = nullptr;
  }
  close(leg->fd);
  leg->fd = -1;
}

// The next bytes of `from`'s compressed message, inflated to count them against the size
// limit and (text) to check their UTF-8; the output is dropped. False: `from` failed.
bool Engine::Meter(Leg* from, const uint8_t* p, size_t n, bool fin) {
  if (inflate_buf_ == nullptr) inflate_buf_ = static_cast<uint8_t*>(std::malloc(kInflateBytes));
  const InflateMeter::Result r = inflate_buf_ == nullptr
    ? InflateMeter::kCorrupt
    : from->inflate->Push(p, n, fin, from->session->params.max_frame_bytes, inflate_buf_, kInflateBytes);
  if (r == InflateMeter::kOk) return true;
  FlushGather();  // what went before it in this read goes first (a streamed frame's partner breaks)
  if (r == InflateMeter::kTooBig) ProtocolError(from, codec_errno::kMessageTooBig, nullptr);
  else if (r == InflateMeter::kBadUtf8) ProtocolError(from, codec_errno::kInvalidUtf8, nullptr);
  else ProtocolError(from, 0, "invalid compressed data");
  return false;
}

// ---------------------------------------------------------------- socket I/O of a leg

ssize_t Engine::LegRecv(Leg* leg, uint8_t* buf, size_t n, bool* dry) {
  if (leg->tls == nullptr) {
    ssize_t r;
    do {
      r = recv(leg->fd, buf, n, 0);
    } while (r < 0 && errno == EINTR);
    // A short read says the socket ran dry, unless its end was signalled: then read on to
    // the 0 (edge-triggered: no new edge comes for a FIN already queued behind the data).
    *dry = r > 0 && static_cast<size_t>(r) < n && !leg->hup;
    return r;
  }
  bool want_write = false;
  const ssize_t r = tls::Recv(leg->tls, buf, n, dry, &want_write);
  if (want_write) leg->tls_read_wants_out = true;
  return r;
}

ssize_t Engine::LegSend(Leg* leg, const uint8_t* p, size_t n) {
  if (leg->tls == nullptr) {
    ssize_t r;
    do {
      r = send(leg->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    return r;
  }
  bool want_read = false;
  const ssize_t r = tls::Send(leg->tls, p, n, &want_read);
  if (want_read) leg->tls_write_wants_in = true;
  return r;
}

void Engine::LegShutWrite(Leg* leg) {
  if (leg->tls != nullptr) tls::Shutdown(leg->tls);
  shutdown(leg->fd, SHUT_WR);
}

bool Engine::TlsHandshake(Leg* leg, std::string* error) {
  if (leg->tls_ready) return true;
  bool want_write = false;
  const int r = tls::Handshake(leg->tls, &want_write, error);
  if (r == 1) leg->tls_ready = true;
  return r == 1;
}

// A write to `leg` failed (its peer reset, or closed its reading side): nothing more goes
// to it. In a pipe, when Node closed its end while the client was still sending (an early
// answer to an upload), what Node wrote before closing is still read and passed on, and
// what the client sends from now on is read and dropped, until both ends close.
void Engine::WriteFailed(Leg* leg) {
  leg->out.Free();
  if (leg->session->stage == kStagePipe) {
    // Nothing more is written to it (no hole in its stream: what would follow is dropped).
    leg->broken = true;
    leg->shut_after_flush = false;
    leg->kill_at = 0;
    if (!leg->client && !leg->read_eof) {
      Leg* p = Partner(leg);
      if (p->paused) Resume(p);
      return;
    }
  }
  if (leg->read_eof) {
    CloseDescriptor(leg);
    MaybeEnd(leg->session);
  } else {
    OnEof(leg);
  }
}

// A pipe's leg ended its side: the end goes on to the partner once the partner's queue has
// gone; when both sides ended, each descriptor closes after its queue. A client whose
// partner (Node) closed first gets kPipeLingerMs to close its side, then it is cut.
void Engine::PipeEof(Leg* leg) {
  Session* s = leg->session;
  leg->read_eof = true;
  leg->deaf = true;
  leg->readable = false;
  Leg* p = Partner(leg);
  if (p->alive && !p->read_eof) {
    if (p->out.size() > 0) {
      p->shut_after_flush = true;  // ShutIfDone: then the linger starts
      p->kill_at = now() + kPipeStallMs;
    } else {
      LegShutWrite(p);
      if (!leg->client) p->kill_at = now() + kPipeLingerMs;
    }
  }
  if (!p->alive || p->read_eof) {
    for (Leg* l : {leg, p}) {
      if (l->alive) CloseWhenFlushed(l, kPipeStallMs);
    }
  }
  MaybeEnd(s);
}

// ---------------------------------------------------------------- frames and closes

bool Engine::OnCloseFrame(Leg* from, Leg* to, const uint8_t* p, size_t n) {
  int code = 0;
  std::string reason;
  if (n == 1) {
    ProtocolError(from, 0, "close frame with a 1-byte payload");
    return false;
  }
  if (n >= 2) {
    code = (p[0] << 8) | p[1];
    if (!ValidWireCode(code)) {
      ProtocolError(from, 0, "invalid close code");
      return false;
    }
    if (!IsUtf8(p + 2, n - 2)) {
      ProtocolError(from, codec_errno::kInvalidUtf8, nullptr);
      return false;
    }
    reason.assign(reinterpret_cast<const char*>(p + 2), n - 2);
  }
  from->deaf = true;  // nothing may follow a close frame
  Session* s = from->session;
  if (from->state == kOpen) {
    // This side starts the close: pass it on, and answer it with the partner's reply.
    from->state = kCloseReceived;
    from->code = code == 0 ? 1005 : code;
    from->reason = reason;
    if (s->closed_first == 0) s->closed_first = from->client ? 1 : 2;
    if (to->state == kOpen && to->alive && !to->broken) SendClose(to, code, reason);
    else SendClose(from, code, reason);  // no partner to ask: echo it
  } else if (from->state == kCloseSent) {
    // The reply to our close: this leg is done; a partner waiting for it gets it.
    from->state = kClosed;
    EndLeg(from, kCloseReplyMs);
    if (to->state == kCloseReceived) SendClose(to, code, reason);
  }
  return false;
}

void Engine::ProtocolError(Leg* culprit, int32_t err, const char* detail) {
  const int code = err != 0 ? CloseCodeOf(err) : 1002;
  const std::string why = err != 0 ? MessageOf(err) : (detail != nullptr ? detail : "protocol error");
  if (code == 1009) {
    if (culprit->client) counters_[slot::kDroppedTooBig]++;
    Fail(culprit, 1009, why, 1009, culprit->client ? "client message over the size limit" : "upstream message over the size limit");
  } else if (culprit->client) {
    Fail(culprit, code, why, 1001, code == 1007 ? "client sent invalid UTF-8" : "client protocol error");
  } else {
    Fail(culprit, code, why, 1014, code == 1007 ? "upstream sent invalid UTF-8" : "upstream protocol error");
  }
}

// End both sides because `culprit` misbehaved: it gets `code` and its TCP connection is
// ended promptly; its partner gets `partner_code` with a reason that says why.
void Engine::Fail(Leg* culprit, int code, const std::string& reason, int partner_code, const std::string& partner_reason) {
  Session* s = culprit->session;
  if (s->params.mode == 1 && !delivering_ && (Pending(culprit) || Pending(Partner(culprit)))) {
    // Messages read before the violation are still on their way through JavaScript: the
    // culprit is not heard from now on, and the closes follow those messages (EndDelivery).
    if (!culprit->fail_pending) {
      culprit->fail_pending = true;
      culprit->fail_code = code;
      culprit->fail_reason = reason;
      culprit->fail_partner_code = partner_code;
      culprit->fail_partner_reason = partner_reason;
      if (s->closed_first == 0) s->closed_first = 3;
    }
    culprit->deaf = true;
    culprit->cursor.Stop();
    return;
  }
  if (s->closed_first == 0) s->closed_first = 3;
  culprit->deaf = true;
  culprit->cursor.Stop();
  Leg* partner = Partner(culprit);
  BreakStream(partner);  // a frame the culprit was streaming to it will not end
  if (partner->state == kCloseReceived) SendClose(partner, partner->code == 1005 ? 0 : partner->code, partner->reason);
  else SendClose(partner, partner_code, partner_reason);
  if (culprit->state == kOpen || culprit->state == kCloseReceived) {
    if (culprit->state == kOpen) {
      culprit->code = code;
      culprit->reason = reason;
    }
    culprit->state = kClosed;
    if (culprit->alive) {
      uint8_t payload[125];
      const size_t n = ClosePayload(code, reason, payload);
      SendControl(culprit, opcode::kClose, payload, n);
    }
  }
  if (culprit->alive) EndLeg(culprit, kViolationLingerMs);
}

// Under `close` and `drop`: whether `to`'s backlog is past the channel's budget. `pause`
// never sheds: reading stops instead (AfterWrite).
bool Engine::OverBudget(Leg* from, Leg* to) {
  Session* s = from->session;
  const Params& p = s->params;
  if (p.policy == 0 || to->out.size() == 0) return false;
  const uint64_t bytes = to->out.size();
  if (to->queued >= p.channel_capacity || bytes > p.channel_bytes) return true;
  to->queued++;
  if (from->client) {
    const double a = static_cast<double>(to->queued) / static_cast<double>(p.channel_capacity);
    const double b = static_cast<double>(bytes) / static_cast<double>(p.channel_bytes);
    CheckBackpressure(s, a > b ? a : b);
  }
  return false;
}

void Engine::SlowPeer(Leg* to) {
  Session* s = to->session;
  if (!to->client) Fail(&s->client, 1013, "upstream is not keeping up", 1001, "client closed: upstream not keeping up");
  else Fail(&s->client, 1013, "client is not keeping up", 1001, "client closed: not keeping up");
}

// Flow controller: fill >= 80 % for >= 2 s is one sustained-backpressure event.
void Engine::CheckBackpressure(Session* s, double fill) {
  if (fill >= 0.8) {
    const uint64_t t = now();
    if (s->bp_since == 0) {
      s->bp_since = t;
    } else if (!s->bp_reported && t - s->bp_since >= 2000) {
      s->bp_reported = true;
      counters_[slot::kBackpressureEvents]++;
      Event e{};
      e.type = 2;
      e.id = s->id;
      e.fill = fill;
      e.upstream_code = static_cast<int>(s->server.queued);
      e.bytes_out = static_cast<double>(s->server.out.size());
      Emit(std::move(e));
    }
  } else if (s->bp_since != 0) {
    if (s->bp_reported && s->params.mode == 1) {
      // Messages mode: JavaScript tells an envelope client it cleared.
      Event e{};
      e.type = 7;
      e.id = s->id;
      Emit(std::move(e));
    }
    s->bp_since = 0;
    s->bp_reported = false;
  }
}

void Engine::CountFrame(bool in, int kind, uint64_t bytes) {
  counters_[(in ? slot::kFramesIn : slot::kFramesOut) + kind]++;
  counters_[in ? slot::kBytesIn : slot::kBytesOut] += static_cast<double>(bytes);
  int i = 0;
  while (i < 9 && bytes > kSizeBounds[i]) i++;
  counters_[slot::kSizeBuckets + i]++;
  counters_[slot::kSizeSum] += static_cast<double>(bytes);
  counters_[slot::kSizeCount]++;
}

void Engine::MaybeEnd(Session* s) {
  if (s->stage == kStagePipe) {
    if (s->ended || s->client.alive || s->server.alive) return;
    s->ended = true;
    Unlink(s);
    pipes_--;
    UpdateRef();
    Free(s);
    return;
  }
  if (s->stage != kStageData) {
    if (!s->client.alive) EndHandshake(s, false);
    return;
  }
  if (s->ended || s->client.alive || s->server.alive) return;
  s->ended = true;
  Event e{};
  e.type = 1;
  e.id = s->id;
  e.client_code = s->client.code;
  e.client_reason = s->client.reason;
  e.upstream_code = s->server.code;
  e.upstream_reason = s->server.reason;
  e.closed_first = s->closed_first;
  e.msgs_in = static_cast<double>(s->client.messages);
  e.msgs_out = static_cast<double>(s->server.messages);
  e.bytes_in = static_cast<double>(s->client.bytes);
  e.bytes_out = static_cast<double>(s->server.bytes);
  // Unlinked now; freed by Reap once no dispatch can still hold its legs.
  Unlink(s);
  count_--;
  UpdateRef();
  Emit(std::move(e));
  Free(s);
}

void Engine::Free(Session* s) { graveyard_.push_back(s); }

void Engine::Emit(Event&& e) {
  events_.push_back(std::move(e));
  if (notify_ != nullptr) notify_(owner_);
}

void Engine::Sweep() {
  const uint64_t t = now();
  if (listen_paused_) ResumeListening();
  Session* s = head_;
  while (s != nullptr) {
    Session* next = s->next;
    if (s->stage == kStagePipe) {
      // A pipe whose client lingers past its time: both sides are cut.
      if ((s->client.alive && s->client.kill_at != 0 && t >= s->client.kill_at) ||
          (s->server.alive && s->server.kill_at != 0 && t >= s->server.kill_at)) {
        CloseDescriptor(&s->client);
        CloseDescriptor(&s->server);
        MaybeEnd(s);
      }
      s = next;
      continue;
    }
    if (s->stage != kStageData) {
      // Handshakes: the request head's deadline (408; a TLS handshake not done by then is
      // cut), a refused client's linger. The decision, the dial and the upstream's answer
      // are timed in JavaScript.
      if (s->stage == kStageHead && t >= s->hs->deadline && s->client.tls != nullptr && !s->client.tls_ready) {
        EndHandshake(s, false);
      } else if (s->stage == kStageHead && t >= s->hs->deadline) {
        Answer(s, 408, "Request Timeout");
      } else if (s->stage == kStageRefusal && s->client.kill_at != 0 && t >= s->client.kill_at) {
        EndHandshake(s, false);
      }
      s = next;
      continue;
    }
    Leg* c = &s->client;
    Leg* u = &s->server;
    const Params& p = s->params;
    for (Leg* leg : {c, u}) {
      if (leg->alive && leg->kill_at != 0 && t >= leg->kill_at) {
        leg->out.Free();
        leg->shut_after_flush = false;
        if (leg->read_eof) {
          CloseDescriptor(leg);
          MaybeEnd(s);
        } else {
          OnEof(leg);
        }
      }
    }
    if (s->ended || c->state != kOpen || !c->alive) {
      s = next;
      continue;
    }
    if (s->expires_at != 0 && t >= s->expires_at) {
      Fail(c, 1008, "credentials expired", 1001, "client credentials expired");
      s = next;
      continue;
    }
    // A side paused for a slow partner is not read, so its silence says nothing.
    if (c->paused) c->seen = t;
    if (u->paused) u->seen = t;
    if (t - c->seen > p.timeout_ms + 1000) {
      if (s->closed_first == 0) s->closed_first = 3;
      c->code = 1006;
      c->reason = "client heartbeat timeout";
      c->state = kClosed;
      BreakStream(u);
      SendClose(u, 1001, "client heartbeat timeout");
      CloseDescriptor(c);
      MaybeEnd(s);
      s = next;
      continue;
    }
    if (u->state == kOpen && u->alive && t - u->seen > p.timeout_ms + 1000) {
      if (s->closed_first == 0) s->closed_first = 3;
      u->code = 1006;
      u->reason = "upstream heartbeat timeout";
      u->state = kClosed;
      BreakStream(c);
      CloseDescriptor(u);
      SendClose(c, 1014, "upstream heartbeat timeout");
      MaybeEnd(s);
      s = next;
      continue;
    }
    if (t - s->last_ping >= p.ping_ms) {
      s->last_ping = t;
      SendControl(c, opcode::kPing, nullptr, 0);
      if (u->state == kOpen && u->alive) SendControl(u, opcode::kPing, nullptr, 0);
    }
    if (s->bp_since != 0 || c->paused || u->out.size() > 0) {
      double fill;
      if (p.policy == 0) {
        fill = c->paused ? 1.0 : static_cast<double>(u->out.size()) / static_cast<double>(p.high_water);
      } else if (u->out.size() == 0) {
        fill = 0;
      } else {
        const double a = static_cast<double>(u->queued) / static_cast<double>(p.channel_capacity);
        const double b = static_cast<double>(u->out.size()) / static_cast<double>(p.channel_bytes);
        fill = a > b ? a : b;
      }
      CheckBackpressure(s, fill);
    }
    s = next;
  }
  Reap();
}

}  // namespace engine
}  // namespace sluice

#endif  // __linux__
