#include "mux.h"

#ifdef __linux__

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "../codec_abi.h"
#include "../mask.h"
#include "../utf8.h"

namespace sluice {
namespace tunnel {

namespace {

constexpr size_t kReadBytes = 256 * 1024;
constexpr size_t kRoom = 32;  // ahead of a socket read in buf_: the two headers
constexpr size_t kPendingHigh = 64 * 1024;

// A poll handle and whom it belongs to (its memory outlives the stream: freed on close).
struct PollHandle {
  uv_poll_t h;
  Mux* mux;
  Stream* stream;  // nullptr: the link
};

void OnPoll(uv_poll_t* h, int status, int events) {
  PollHandle* ph = static_cast<PollHandle*>(h->data);
  if (ph->stream == nullptr) ph->mux->OnLinkPoll(status, events);
  else ph->mux->OnStreamPoll(ph->stream, status, events);
}

void OnPollClosed(uv_handle_t* h) {
  PollHandle* ph = static_cast<PollHandle*>(h->data);
  Mux* m = ph->mux;
  delete ph;
  m->HandleClosed();
}

uv_poll_t* NewPoll(uv_loop_t* loop, int fd, Mux* m, Stream* s) {
  PollHandle* ph = new PollHandle;
  ph->mux = m;
  ph->stream = s;
  if (uv_poll_init(loop, &ph->h, fd) != 0) {
    delete ph;
    return nullptr;
  }
  ph->h.data = ph;
  return &ph->h;
}

bool TakeFd(int fd, int* out, std::string* error) {
  const int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) {
    if (error != nullptr) *error = std::string("dup: ") + std::strerror(errno);
    return false;
  }
  const int fl = fcntl(d, F_GETFL);
  if (fl < 0 || fcntl(d, F_SETFL, fl | O_NONBLOCK) < 0) {
    if (error != nullptr) *error = std::string("fcntl: ") + std::strerror(errno);
    close(d);
    return false;
  }
  *out = d;
  return true;
}

size_t WsHeader(uint8_t* h, uint8_t opcode, uint64_t n, const uint8_t* key) {
  size_t i = 0;
  h[i++] = static_cast<uint8_t>(0x80 | opcode);
  const uint8_t mask = key != nullptr ? 0x80 : 0;
  if (n < 126) {
    h[i++] = static_cast<uint8_t>(mask | n);
  } else if (n <= 0xffff) {
    h[i++] = static_cast<uint8_t>(mask | 126);
    h[i++] = static_cast<uint8_t>(n >> 8);
    h[i++] = static_cast<uint8_t>(n);
  } else {
    h[i++] = static_cast<uint8_t>(mask | 127);
    for (int b = 7; b >= 0; b--) h[i++] = static_cast<uint8_t>(n >> (8 * b));
  }
  if (key != nullptr) {
    std::memcpy(h + i, key, 4);
    i += 4;
  }
  return i;
}

}  // namespace

Mux::Mux(uv_loop_t* loop, void* owner, Notify notify, const MuxOptions& o)
    : loop_(loop), owner_(owner), notify_(notify), opt_(o), cursor_(CursorLimits{}), next_id_(o.yamux_client ? 1 : 2) {
  if (opt_.window < kInitialWindow) opt_.window = kInitialWindow;
  if (opt_.max_window < opt_.window) opt_.max_window = opt_.window;
  if (opt_.max_frame < 1024) opt_.max_frame = 1024;
  if (opt_.max_frame > kReadBytes) opt_.max_frame = kReadBytes;
  CursorLimits l;
  l.server = !opt_.ws_client;
  l.max_frame_bytes = opt_.max_message;
  l.max_message_bytes = opt_.max_message;
  l.max_fragments = 1u << 20;
  cursor_ = FrameCursor(l);
}

Mux::~Mux() {
  std::free(buf_);
}

bool Mux::Start(int fd, const uint8_t* head, size_t n, const uint8_t* greeting, size_t gn, std::string* error) {
  if (!TakeFd(fd, &fd_, error)) return false;
  const int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  buf_ = static_cast<uint8_t*>(std::malloc(kRoom + kReadBytes));
  poll_ = buf_ != nullptr ? NewPoll(loop_, fd_, this, nullptr) : nullptr;
  if (poll_ == nullptr) {
    if (error != nullptr) *error = "out of memory";
    close(fd_);
    fd_ = -1;
    return false;
  }
  last_heard_ = uv_now(loop_);
  if (gn > 0) LinkWrite(greeting, gn, nullptr, 0);
  if (n > 0) {
    std::vector<uint8_t> copy(head, head + n);
    cursor_.Feed(copy.data(), copy.size(), this);
  }
  FlushLink();
  WatchLink();
  Reap();
  return true;
}

void Mux::Dispose() {
  if (disposed_) return;
  disposed_ = true;
  if (!ended_) {
    ended_ = true;
    EndAllStreams();
  }
  events_.clear();
  CloseLink();
  Reap();
  if (pending_handles_ == 0) delete this;
}

void Mux::HandleClosed() {
  pending_handles_--;
  if (disposed_ && pending_handles_ == 0) delete this;
}

void Mux::Reap() {
  for (Stream* s : dead_) delete s;
  dead_.clear();
}

// ---------------------------------------------------------------- events

void Mux::Emit(MuxEvent&& e) {
  if (disposed_) return;
  const bool first = events_.empty();
  events_.push_back(std::move(e));
  if (first) notify_(owner_);
}

void Mux::EmitData(Stream* s, const uint8_t* p, size_t n) {
  if (!events_.empty() && events_.back().type == kEvData && events_.back().stream == s->id) {
    events_.back().data.append(reinterpret_cast<const char*>(p), n);
    return;
  }
  MuxEvent e;
  e.type = kEvData;
  e.stream = s->id;
  e.data.assign(reinterpret_cast<const char*>(p), n);
  Emit(std::move(e));
}

// ---------------------------------------------------------------- the link: output

void Mux::LinkWrite(const uint8_t* a, size_t an, const uint8_t* b, size_t bn) {
  if (fd_ < 0 || ended_) return;
  size_t done = 0;
  if (out_.size() == 0) {
    struct iovec iov[2] = {{const_cast<uint8_t*>(a), an}, {const_cast<uint8_t*>(b), bn}};
    struct msghdr msg;
    std::memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = bn > 0 ? 2 : 1;
    const ssize_t r = sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        LinkEnded(1006, "", std::string("the tunnel's connection failed: ") + std::strerror(errno));
        return;
      }
    } else {
      done = static_cast<size_t>(r);
    }
  }
  if (done < an) {
    out_.Append(a + done, an - done);
    done = 0;
  } else {
    done -= an;
  }
  if (done < bn) out_.Append(b + done, bn - done);
  if (out_.size() > 0) WatchLink();
}

void Mux::SendFrame(uint8_t opcode, const uint8_t* p, size_t n) {
  // Nothing follows a close frame on the wire.
  if (close_written_) return;
  if (opcode == 8) close_written_ = true;
  uint8_t h[14];
  uint8_t key[4];
  const bool mask = opt_.ws_client;
  if (mask) keys_.Next(key);
  const size_t hn = WsHeader(h, opcode, n, mask ? key : nullptr);
  if (!mask || n == 0) {
    LinkWrite(h, hn, p, n);
    return;
  }
  std::vector<uint8_t> body(n);
  XorMask(body.data(), p, n, key, 0);
  LinkWrite(h, hn, body.data(), n);
}

void Mux::SendYamux(uint8_t type, uint16_t flags, uint32_t id, uint32_t length) {
  uint8_t y[kYamuxHeader];
  PutYamuxHeader(y, type, flags, id, length);
  bytes_out_ += kYamuxHeader;
  SendFrame(2, y, kYamuxHeader);
}

// One binary message: a yamux data frame header and `n` bytes at p. p is masked in place
// when this side masks (the caller's bytes are spent after this).
void Mux::SendData(Stream* s, uint16_t extra_flags, uint8_t* p, size_t n) {
  if (close_written_) return;
  uint8_t h[14 + kYamuxHeader];
  uint8_t key[4];
  const bool mask = opt_.ws_client;
  if (mask) keys_.Next(key);
  const size_t wn = WsHeader(h, 2, kYamuxHeader + n, mask ? key : nullptr);
  const uint16_t flags = static_cast<uint16_t>(s->open_flags | extra_flags);
  s->open_flags = 0;
  PutYamuxHeader(h + wn, kData, flags, s->id, static_cast<uint32_t>(n));
  if (mask) {
    XorMask(h + wn, h + wn, kYamuxHeader, key, 0);
    XorMask(p, p, n, key, kYamuxHeader & 3);
  }
  bytes_out_ += kYamuxHeader + n;
  s->bytes_out += n;
  LinkWrite(h, wn + kYamuxHeader, p, n);
}

bool Mux::FlushLink() {
  if (fd_ < 0 || ended_) return false;
  while (out_.size() > 0) {
    const ssize_t r = send(fd_, out_.data(), out_.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      LinkEnded(1006, "", std::string("the tunnel's connection failed: ") + std::strerror(errno));
      return false;
    }
    out_.Consume(static_cast<size_t>(r));
  }
  if (out_.size() == 0) out_.Free();
  if (!waiting_.empty() && out_.size() <= opt_.low_water) ResumeWaiting();
  WatchLink();
  return true;
}

void Mux::WatchLink() {
  if (poll_ == nullptr) return;
  int ev = 0;
  if (!read_eof_ && !ended_) ev |= UV_READABLE;
  if (out_.size() > 0 && !ended_) ev |= UV_WRITABLE;
  if (ev == poll_events_) return;
  poll_events_ = ev;
  if (ev == 0) uv_poll_stop(poll_);
  else uv_poll_start(poll_, ev, OnPoll);
}

// ---------------------------------------------------------------- the link: input

void Mux::OnLinkPoll(int status, int events) {
  if (ended_) return;
  if (status < 0) {
    LinkEnded(1006, "", std::string("the tunnel's connection failed: ") + uv_strerror(status));
  } else {
    if (events & UV_WRITABLE) FlushLink();
    if (!ended_ && (events & UV_READABLE)) ReadLink();
    if (!ended_) FlushLink();
  }
  Reap();
}

void Mux::ReadLink() {
  for (int round = 0; round < 4 && !ended_; round++) {
    const ssize_t r = recv(fd_, buf_, kReadBytes, 0);
    if (r > 0) {
      last_heard_ = uv_now(loop_);
      cursor_.Feed(buf_, static_cast<size_t>(r), this);
      if (static_cast<size_t>(r) < kReadBytes) return;
      continue;
    }
    if (r == 0) {
      read_eof_ = true;
      LinkEnded(1006, "", "");
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    LinkEnded(1006, "", std::string("the tunnel's connection failed: ") + std::strerror(errno));
    return;
  }
}

bool Mux::OnHeader(const FrameHeader& h, uint8_t*, bool) {
  frame_op_ = h.opcode;
  frame_fin_ = h.fin;
  frame_masked_ = h.masked;
  std::memcpy(frame_key_, h.key, 4);
  if (h.opcode >= 8) {
    ctl_.clear();
  } else if (h.opcode != 0) {
    msg_op_ = h.opcode;
    if (h.opcode == 1) kept_.clear();
  }
  return !ended_;
}

bool Mux::OnPayload(uint8_t* p, size_t n, uint64_t offset, bool last) {
  if (ended_) return false;
  if (frame_masked_ && n > 0) XorMask(p, p, n, frame_key_, static_cast<size_t>(offset & 3));
  if (frame_op_ >= 8) {
    ctl_.append(reinterpret_cast<const char*>(p), n);
    if (!last) return true;
    if (frame_op_ == 9) {
      if (!close_sent_) SendFrame(10, reinterpret_cast<const uint8_t*>(ctl_.data()), ctl_.size());
    } else if (frame_op_ == 8) {
      int code = 1005;
      std::string reason;
      if (ctl_.size() >= 2) {
        code = (static_cast<uint8_t>(ctl_[0]) << 8) | static_cast<uint8_t>(ctl_[1]);
        reason = ctl_.substr(2);
      }
      // A close the peer may not send (a one-byte payload, a code not for the wire, a
      // reason that is not UTF-8) is answered as a protocol error, never echoed.
      int answer = code;
      if (ctl_.size() == 1 || (ctl_.size() >= 2 && !engine::ValidWireCode(code))) answer = 1002;
      else if (!IsUtf8(reinterpret_cast<const uint8_t*>(reason.data()), reason.size())) answer = 1007;
      if (!close_sent_) {
        close_sent_ = true;
        uint8_t reply[2] = {static_cast<uint8_t>(answer >> 8), static_cast<uint8_t>(answer & 0xff)};
        SendFrame(8, reply, answer == 1005 ? 0 : 2);
      }
      if (answer != code) LinkEnded(answer, answer == 1002 ? "invalid close frame" : "close reason is not UTF-8", "the peer sent an invalid close frame");
      else LinkEnded(code, reason, "");
      return false;
    }
    return true;
  }
  if (msg_op_ == 2) {
    bytes_in_ += static_cast<double>(n);
    if (n > 0 && !reader_.Feed(p, n, this)) return false;
    return !ended_;
  }
  kept_.append(reinterpret_cast<const char*>(p), n);
  if (last && frame_fin_) {
    MuxEvent e;
    e.type = kEvText;
    e.data.swap(kept_);
    Emit(std::move(e));
  }
  return true;
}

void Mux::OnError(int32_t err) {
  const int code = err == codec_errno::kFrameTooBig || err == codec_errno::kMessageTooBig ? 1009 : 1002;
  const std::string reason = code == 1009 ? "message too big" : "websocket protocol error";
  if (!close_sent_) {
    close_sent_ = true;
    std::string payload;
    payload.push_back(static_cast<char>(code >> 8));
    payload.push_back(static_cast<char>(code & 0xff));
    payload += reason;
    SendFrame(8, reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  }
  LinkEnded(code, reason, reason);
}

void Mux::LinkEnded(int code, const std::string& reason, const std::string& error) {
  if (ended_ || ending_) return;
  ending_ = true;  // the flush below may fail: it must not end the link again
  FlushLink();     // what is queued (a close frame) goes if it can
  ended_ = true;
  EndAllStreams();
  MuxEvent e;
  e.type = kEvClosed;
  e.code = code;
  e.data = reason;
  e.error = error;
  Emit(std::move(e));
  CloseLink();
}

void Mux::CloseLink() {
  if (poll_ != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), OnPollClosed);
    pending_handles_++;
    poll_ = nullptr;
  }
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  out_.Free();
}

void Mux::ProtocolError(const std::string& message) {
  if (ended_) return;
  SendYamux(kGoAway, 0, 0, kGoAwayProtocol);
  close_sent_ = true;
  std::string payload = "\x03\xea";  // 1002
  payload += message.substr(0, 120);
  SendFrame(8, reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  LinkEnded(1002, message.substr(0, 120), message);
}

// ---------------------------------------------------------------- yamux frames

bool Mux::OnHeader(const YamuxHeader& h) {
  if (h.version != 0) {
    ProtocolError("unsupported yamux version " + std::to_string(h.version));
    return false;
  }
  switch (h.type) {
    case kData:
    case kWindowUpdate: {
      if (h.stream == 0) {
        ProtocolError("stream frame on stream 0");
        return false;
      }
      Stream* s = Find(h.stream);
      if (h.flags & kSyn) {
        if (s != nullptr) {
          ProtocolError("stream " + std::to_string(h.stream) + " opened twice");
          return false;
        }
        if ((h.stream & 1) == (opt_.yamux_client ? 1u : 0u)) {
          ProtocolError("stream " + std::to_string(h.stream) + " has this side's parity");
          return false;
        }
        if (inbound_ >= opt_.max_streams || local_go_away_ || close_sent_) {
          SendYamux(kWindowUpdate, kRst, h.stream, 0);
        } else {
          s = NewStream(h.stream, kAck);
          inbound_++;
          SendYamux(kWindowUpdate, s->open_flags, s->id, s->window - kInitialWindow);
          s->open_flags = 0;
          MuxEvent e;
          e.type = kEvStream;
          e.stream = s->id;
          Emit(std::move(e));
        }
      }
      if (h.type == kWindowUpdate) {
        if (s != nullptr && h.length > 0) {
          s->send_window += h.length;
          Pump(s);
        }
        s = Find(h.stream);
        if (s != nullptr) {
          if (h.flags & kRst) PeerReset(s);
          else if (h.flags & kFin) PeerFin(s);
        }
        return !ended_;
      }
      if (s != nullptr) {
        if (h.length > s->recv_remaining) {
          ProtocolError("stream " + std::to_string(h.stream) + " sent " + std::to_string(h.length) + " bytes past its window");
          return false;
        }
        s->recv_remaining -= h.length;
        s->inflight += h.length;
      }
      data_id_ = h.stream;
      data_flags_ = h.flags;
      return true;
    }
    case kPing:
      if (h.stream != 0) {
        ProtocolError("ping on a stream");
        return false;
      }
      if (h.flags & kSyn) SendYamux(kPing, kAck, 0, h.length);
      return true;
    case kGoAway: {
      if (h.stream != 0) {
        ProtocolError("go away on a stream");
        return false;
      }
      remote_go_away_ = true;
      MuxEvent e;
      e.type = kEvGoAway;
      e.code = static_cast<int>(h.length);
      Emit(std::move(e));
      return true;
    }
    default:
      ProtocolError("unknown yamux frame type " + std::to_string(h.type));
      return false;
  }
}

bool Mux::OnData(uint8_t* p, size_t n) {
  Stream* s = Find(data_id_);
  if (s == nullptr) return !ended_;  // an unknown or closed stream: read and dropped
  s->inflight -= std::min<uint64_t>(s->inflight, n);
  s->bytes_in += n;
  if (s->fin_received) return true;
  if (!s->line_done) {
    const uint8_t* nl = static_cast<const uint8_t*>(std::memchr(p, '\n', n));
    const size_t take = nl != nullptr ? static_cast<size_t>(nl - p) : n;
    if (s->line.size() + take > kMaxLine) {
      // Not the wire's first line: the stream is reset (its peer broke the protocol).
      SendYamux(kWindowUpdate, kRst, s->id, 0);
      PeerReset(s);
      return !ended_;
    }
    s->line.append(reinterpret_cast<const char*>(p), take);
    if (nl == nullptr) {
      Grant(s, false);
      return !ended_;
    }
    s->line_done = true;
    MuxEvent e;
    e.type = kEvLine;
    e.stream = s->id;
    e.data.swap(s->line);
    Emit(std::move(e));
    p += take + 1;
    n -= take + 1;
  }
  if (n > 0) Take(s, p, n);
  s = Find(data_id_);
  if (s != nullptr) Grant(s, false);
  return !ended_;
}

void Mux::Take(Stream* s, const uint8_t* p, size_t n) {
  if (s->bound && !s->dialing) {
    WriteSocket(s, p, n);
  } else if (s->held || s->dialing) {
    s->out.Append(p, n);
  } else {
    s->js_held += n;
    EmitData(s, p, n);
  }
}

bool Mux::OnDataEnd() {
  Stream* s = Find(data_id_);
  data_id_ = 0;
  if (s != nullptr) {
    if (data_flags_ & kRst) PeerReset(s);
    else if (data_flags_ & kFin) PeerFin(s);
  }
  return !ended_;
}

// ---------------------------------------------------------------- streams

Stream* Mux::Find(uint32_t id) {
  if (id == 0) return nullptr;
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : it->second;
}

Stream* Mux::NewStream(uint32_t id, uint16_t flags) {
  Stream* s = new Stream;
  s->mux = this;
  s->id = id;
  s->open_flags = flags;
  s->window = opt_.window;
  s->recv_remaining = opt_.window;
  streams_[id] = s;
  return s;
}

uint32_t Mux::Open(const uint8_t* line, size_t n, std::string* error) {
  if (ended_ || close_sent_) {
    *error = "the tunnel is closed";
    return 0;
  }
  if (remote_go_away_ || local_go_away_) {
    *error = "the yamux session is going away";
    return 0;
  }
  if (outbound_ >= opt_.max_streams) {
    *error = "too many open yamux streams (" + std::to_string(opt_.max_streams) + ")";
    return 0;
  }
  if (next_id_ > 0xfffffffdu) {
    *error = "yamux stream ids exhausted";
    return 0;
  }
  Stream* s = NewStream(next_id_, kSyn);
  next_id_ += 2;
  outbound_++;
  SendYamux(kWindowUpdate, s->open_flags, s->id, s->window - kInitialWindow);
  s->open_flags = 0;
  const uint32_t id = s->id;  // the link may fail during the first write (s freed by Reap)
  if (n > 0) {
    s->pending.Append(line, n);
    Pump(s);
  }
  Reap();
  return id;
}

void Mux::Deliver(uint32_t id) {
  Stream* s = Find(id);
  if (s == nullptr || s->bound || s->dialing || !s->held) return;
  s->held = false;
  if (s->out.size() > 0) {
    s->js_held += s->out.size();
    EmitData(s, s->out.data(), s->out.size());
    s->out.Free();
  }
  if (s->fin_received) {
    MuxEvent e;
    e.type = kEvFin;
    e.stream = s->id;
    Emit(std::move(e));
    MaybeDone(s);
  }
  Reap();
}

bool Mux::Dial(uint32_t id, const std::string& ip, int port, uint64_t timeout_ms, const uint8_t* ok, size_t n) {
  Stream* s = Find(id);
  if (s == nullptr || s->bound || s->dialing || !s->held || ended_ || s->fin_wanted || s->fin_sent || s->pending.size() > 0) {
    return false;
  }
  struct sockaddr_storage addr;
  std::memset(&addr, 0, sizeof(addr));
  int family = AF_INET;
  if (uv_ip4_addr(ip.c_str(), port, reinterpret_cast<struct sockaddr_in*>(&addr)) != 0) {
    if (uv_ip6_addr(ip.c_str(), port, reinterpret_cast<struct sockaddr_in6*>(&addr)) != 0) return false;
    family = AF_INET6;
  }
  const int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    DialFailed(s, uv_err_name(-errno));
    Reap();
    return true;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  s->fd = fd;
  s->dialing = true;
  s->pending.Append(ok, n);  // sent once connected, before anything the service says
  const socklen_t len = family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
  const int r = connect(fd, reinterpret_cast<struct sockaddr*>(&addr), len);
  if (r != 0 && errno != EINPROGRESS) {
    DialFailed(s, uv_err_name(-errno));
    Reap();
    return true;
  }
  s->poll = NewPoll(loop_, fd, this, s);
  if (s->poll == nullptr) {
    DialFailed(s, "out of memory");
    Reap();
    return true;
  }
  s->poll_events = UV_WRITABLE;
  uv_poll_start(s->poll, UV_WRITABLE, OnPoll);
  if (timeout_ms > 0) {
    s->dial_timer = new uv_timer_t;
    uv_timer_init(loop_, s->dial_timer);
    s->dial_timer->data = s;
    uv_timer_start(s->dial_timer, [](uv_timer_t* t) {
      Stream* st = static_cast<Stream*>(t->data);
      st->mux->OnDialTimeout(st);
    }, timeout_ms, 0);
  }
  return true;
}

void Mux::OnDialTimeout(Stream* s) {
  if (s->gone || !s->dialing) return;
  DialFailed(s, "no connection within the dial timeout");
  Reap();
}

void Mux::StopDialTimer(Stream* s) {
  if (s->dial_timer == nullptr) return;
  uv_timer_stop(s->dial_timer);
  uv_close(reinterpret_cast<uv_handle_t*>(s->dial_timer), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  s->dial_timer = nullptr;
}

void Mux::DialFailed(Stream* s, const std::string& why) {
  StopDialTimer(s);
  CloseStreamFd(s);
  s->dialing = false;
  s->poll_events = 0;
  s->pending.Free();
  // The stream is JavaScript's now: it answers with an error line.
  s->held = false;
  s->out.Free();
  MuxEvent e;
  e.type = kEvDialFailed;
  e.stream = s->id;
  e.data = why;
  Emit(std::move(e));
}

void Mux::Connected(Stream* s) {
  StopDialTimer(s);
  s->dialing = false;
  s->bound = true;
  s->held = false;
  DrainSocket(s);  // what the peer sent after its line
  if (!s->gone) Pump(s);  // the ok line, then the service's bytes
  if (!s->gone) Grant(s, false);
}

// The peer's window, topped up once half of it has been taken by the reader (at once when
// `force`). While the reader keeps up, each top-up doubles the window (up to max_window):
// the window then grows to what the path needs, and a reader that falls behind stops it.
void Mux::Grant(Stream* s, bool force) {
  if (s->fin_received || s->gone || ended_) return;
  const uint64_t buffered = Buffered(s);
  int64_t delta = static_cast<int64_t>(s->window) - static_cast<int64_t>(buffered + s->recv_remaining + s->inflight);
  if (delta <= 0 || (!force && delta < static_cast<int64_t>(s->window / 2))) return;
  if (buffered == 0 && s->window < opt_.max_window) {
    const uint32_t grow = std::min(s->window, opt_.max_window - s->window);
    s->window += grow;
    delta += grow;
  }
  s->recv_remaining += static_cast<uint64_t>(delta);
  SendYamux(kWindowUpdate, s->open_flags, s->id, static_cast<uint32_t>(delta));
  s->open_flags = 0;
}

void Mux::Pump(Stream* s) {
  // A dialling stream waits: its first bytes (the ok line) go once it is connected.
  if (s->gone || ended_ || s->dialing) return;
  // JavaScript's bytes first (a bound stream may have some from before it was bound).
  while (s->pending.size() > 0 && s->send_window > 0) {
    if (LinkFull()) {
      if (!s->waiting_link) {
        s->waiting_link = true;
        waiting_.push_back(s);
      }
      return;
    }
    const size_t n = static_cast<size_t>(std::min<uint64_t>({s->pending.size(), s->send_window, opt_.max_frame}));
    SendData(s, 0, const_cast<uint8_t*>(s->pending.data()), n);
    s->pending.Consume(n);
    s->send_window -= n;
    if (ended_) return;
  }
  if (s->pending.size() == 0) {
    s->pending.Free();
    if (s->fin_wanted) SendFin(s);
    if (s->gone) return;
    if (s->want_drain) {
      s->want_drain = false;
      MuxEvent e;
      e.type = kEvDrain;
      e.stream = s->id;
      Emit(std::move(e));
    }
  }
  if (s->bound) WatchStream(s);
}

void Mux::PumpSocket(Stream* s) {
  for (int round = 0; round < 4; round++) {
    if (s->gone || ended_ || s->read_eof || s->fin_sent || s->pending.size() > 0) return;
    if (s->send_window == 0 || LinkFull()) break;
    const size_t want = static_cast<size_t>(std::min<uint64_t>(s->send_window, opt_.max_frame));
    uint8_t* at = buf_ + kRoom;
    const ssize_t r = recv(s->fd, at, want, 0);
    if (r > 0) {
      s->send_window -= static_cast<size_t>(r);
      SendData(s, 0, at, static_cast<size_t>(r));
      if (static_cast<size_t>(r) < want) break;
      continue;
    }
    if (r == 0) {
      s->read_eof = true;
      SendFin(s);
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    ResetBound(s, true);
    return;
  }
  if (!s->gone && LinkFull() && !s->waiting_link) {
    s->waiting_link = true;
    waiting_.push_back(s);
  }
}

void Mux::WriteSocket(Stream* s, const uint8_t* p, size_t n) {
  size_t done = 0;
  if (s->out.size() == 0) {
    const ssize_t r = send(s->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        ResetBound(s, true);
        return;
      }
    } else {
      done = static_cast<size_t>(r);
    }
  }
  if (done < n) {
    s->out.Append(p + done, n - done);
    WatchStream(s);
  }
}

void Mux::DrainSocket(Stream* s) {
  while (s->out.size() > 0) {
    const ssize_t r = send(s->fd, s->out.data(), s->out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      ResetBound(s, true);
      return;
    }
    s->out.Consume(static_cast<size_t>(r));
  }
  if (s->out.size() == 0) {
    s->out.Free();
    if (s->fin_received && !s->shut) {
      shutdown(s->fd, SHUT_WR);
      s->shut = true;
    }
  }
  Grant(s, false);
  MaybeDone(s);
}

void Mux::SendFin(Stream* s) {
  if (s->fin_sent || s->gone) return;
  s->fin_sent = true;
  SendYamux(kWindowUpdate, static_cast<uint16_t>(s->open_flags | kFin), s->id, 0);
  s->open_flags = 0;
  MaybeDone(s);
}

void Mux::PeerFin(Stream* s) {
  if (s->fin_received) return;
  s->fin_received = true;
  if (s->held || s->dialing) {
    // Passed on once the stream is bound (a shutdown after its bytes) or delivered.
  } else if (s->bound) {
    if (s->out.size() == 0 && !s->shut) {
      shutdown(s->fd, SHUT_WR);
      s->shut = true;
    }
  } else {
    MuxEvent e;
    e.type = kEvFin;
    e.stream = s->id;
    Emit(std::move(e));
  }
  MaybeDone(s);
}

void Mux::PeerReset(Stream* s) {
  if (s->bound) {
    Forget(s, 1);
    return;
  }
  MuxEvent e;
  e.type = kEvReset;
  e.stream = s->id;
  Emit(std::move(e));
  Forget(s, 1);
}

void Mux::ResetBound(Stream* s, bool tell_peer) {
  if (s->gone) return;
  if (tell_peer && !(s->fin_sent && s->fin_received)) SendYamux(kWindowUpdate, kRst, s->id, 0);
  Forget(s, 1);
}

void Mux::MaybeDone(Stream* s) {
  if (s->gone || !s->fin_sent || !s->fin_received) return;
  if (s->bound && (s->out.size() > 0 || !s->shut)) return;
  Forget(s, 0);
}

void Mux::Forget(Stream* s, int code) {
  if (s->gone) return;
  s->gone = true;
  streams_.erase(s->id);
  if ((s->id & 1) == (opt_.yamux_client ? 1u : 0u)) outbound_--;
  else inbound_--;
  if (s->bound) {
    MuxEvent e;
    e.type = kEvBoundEnd;
    e.stream = s->id;
    e.code = code;
    e.bytes_in = static_cast<double>(s->bytes_in);
    e.bytes_out = static_cast<double>(s->bytes_out);
    Emit(std::move(e));
  }
  if (s->waiting_link) {
    // Freed at the next Reap: the list must not keep it (a round of ResumeWaiting that is
    // running holds its own copy, where `gone` tells).
    waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), s), waiting_.end());
    s->waiting_link = false;
  }
  StopDialTimer(s);
  CloseStreamFd(s);
  s->out.Free();
  s->pending.Free();
  dead_.push_back(s);
}

void Mux::CloseStreamFd(Stream* s) {
  if (s->poll != nullptr) {
    static_cast<PollHandle*>(s->poll->data)->stream = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(s->poll), OnPollClosed);
    pending_handles_++;
    s->poll = nullptr;
  }
  if (s->fd >= 0) close(s->fd);
  s->fd = -1;
}

void Mux::WatchStream(Stream* s) {
  if (s->poll == nullptr || s->gone || s->dialing) return;
  int ev = 0;
  if (!s->read_eof && !s->fin_sent && s->send_window > 0 && s->pending.size() == 0 && !ended_) {
    if (LinkFull()) {
      if (!s->waiting_link) {
        s->waiting_link = true;
        waiting_.push_back(s);
      }
    } else {
      ev |= UV_READABLE;
    }
  }
  if (s->out.size() > 0) ev |= UV_WRITABLE;
  if (ev == s->poll_events) return;
  s->poll_events = ev;
  if (ev == 0) uv_poll_stop(s->poll);
  else uv_poll_start(s->poll, ev, OnPoll);
}

void Mux::OnStreamPoll(Stream* s, int status, int events) {
  if (s == nullptr || s->gone || ended_) return;
  if (s->dialing) {
    // The socket's own error first: libuv reports any POLLERR as UV_EBADF.
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err == 0 && status < 0) err = -status;
    if (err != 0) DialFailed(s, uv_err_name(-err));
    else Connected(s);
    if (!s->gone) WatchStream(s);
    Reap();
    return;
  }
  if (status < 0) {
    ResetBound(s, true);
  } else {
    if (events & UV_WRITABLE) DrainSocket(s);
    if (!s->gone && (events & UV_READABLE)) PumpSocket(s);
    if (!s->gone) WatchStream(s);
  }
  Reap();
}

void Mux::ResumeWaiting() {
  std::vector<Stream*> list;
  list.swap(waiting_);
  for (size_t i = 0; i < list.size(); i++) {
    Stream* s = list[i];
    s->waiting_link = false;
    if (s->gone) continue;
    if (LinkFull()) {
      s->waiting_link = true;
      waiting_.push_back(s);
      continue;
    }
    Pump(s);
  }
}

void Mux::EndAllStreams() {
  std::vector<Stream*> all;
  all.reserve(streams_.size());
  for (auto& kv : streams_) all.push_back(kv.second);
  for (Stream* s : all) {
    if (!s->bound) {
      MuxEvent e;
      e.type = kEvReset;
      e.stream = s->id;
      Emit(std::move(e));
    }
    Forget(s, 1);
  }
  waiting_.clear();
}

// ---------------------------------------------------------------- JavaScript's calls

bool Mux::Write(uint32_t id, const uint8_t* p, size_t n) {
  Stream* s = Find(id);
  if (s == nullptr || s->fin_wanted || s->fin_sent) return true;  // its reset event is on the way
  if (!s->pending.Append(p, n)) {
    ResetBound(s, true);
    return true;
  }
  Pump(s);
  // Decided before Reap: the stream may have ended in Pump (the link failed) and be freed.
  const bool full = !s->gone && s->pending.size() >= kPendingHigh;
  if (full) s->want_drain = true;
  Reap();
  return !full;
}

void Mux::End(uint32_t id) {
  Stream* s = Find(id);
  if (s == nullptr) return;
  s->fin_wanted = true;
  if (s->pending.size() == 0) SendFin(s);
  Reap();
}

void Mux::Reset(uint32_t id) {
  Stream* s = Find(id);
  if (s == nullptr) return;
  if (!(s->fin_sent && s->fin_received)) SendYamux(kWindowUpdate, static_cast<uint16_t>(s->open_flags | kRst), s->id, 0);
  Forget(s, 1);
  Reap();
}

void Mux::Consume(uint32_t id, size_t n) {
  Stream* s = Find(id);
  if (s == nullptr || s->bound) return;
  s->js_held -= std::min<uint64_t>(s->js_held, n);
  Grant(s, false);
  Reap();
}

bool Mux::Bind(uint32_t id, int fd, const uint8_t* head, size_t n, bool dup) {
  Stream* s = Find(id);
  if (s == nullptr || s->bound || s->dialing || ended_) {
    if (!dup) close(fd);
    return false;
  }
  if (dup) {
    if (!TakeFd(fd, &s->fd, nullptr)) return false;
  } else {
    const int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    s->fd = fd;
  }
  s->poll = NewPoll(loop_, s->fd, this, s);
  if (s->poll == nullptr) {
    close(s->fd);
    s->fd = -1;
    return false;
  }
  s->bound = true;
  s->js_held = 0;
  if (s->held) {
    // Held after the line: they follow `head`.
    s->held = false;
    engine::Backlog rest;
    rest.Append(s->out.data(), s->out.size());
    s->out.Free();
    s->out.Append(head, n);
    s->out.Append(rest.data(), rest.size());
  } else {
    s->out.Append(head, n);
  }
  // What arrived for JavaScript and was not delivered yet goes to the socket instead.
  for (MuxEvent& e : events_) {
    if (e.stream != id) continue;
    if (e.type == kEvData) {
      s->out.Append(reinterpret_cast<const uint8_t*>(e.data.data()), e.data.size());
      e.type = kEvNone;
      std::string().swap(e.data);
    } else if (e.type == kEvFin) {
      e.type = kEvNone;
    }
  }
  DrainSocket(s);
  if (!s->gone) Pump(s);
  if (!s->gone) Grant(s, false);
  Reap();
  return true;
}

void Mux::SendText(const uint8_t* p, size_t n) {
  if (ended_ || close_sent_) return;
  SendFrame(1, p, n);
}

void Mux::Ping() {
  if (ended_ || close_sent_) return;
  SendFrame(9, nullptr, 0);
}

void Mux::GoAway(uint32_t code) {
  if (ended_ || close_sent_ || local_go_away_) return;
  local_go_away_ = true;
  SendYamux(kGoAway, 0, 0, code);
}

void Mux::Close(int code, const std::string& reason) {
  if (ended_ || close_sent_) return;
  close_sent_ = true;
  std::string payload;
  payload.push_back(static_cast<char>((code >> 8) & 0xff));
  payload.push_back(static_cast<char>(code & 0xff));
  // At most 123 bytes of reason, cut where a character starts (the reason is UTF-8).
  size_t cut = std::min<size_t>(reason.size(), 123);
  while (cut > 0 && cut < reason.size() && (static_cast<uint8_t>(reason[cut]) & 0xc0) == 0x80) cut--;
  payload.append(reason, 0, cut);
  SendFrame(8, reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
}

void Mux::Terminate() {
  LinkEnded(1006, "", "");
  Reap();
}

}  // namespace tunnel
}  // namespace sluice

#endif  // __linux__
