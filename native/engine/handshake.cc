// The engine's handshakes: it accepts connections, reads each client's request head
// (http_head.h), asks JavaScript for one decision per connection (route, credentials,
// limits, balancing stay there), dials the upstream it was given, sends our upgrade
// request, checks the answer, writes the client's 101 and starts the data phase. A
// connection that JavaScript wants for itself (plain HTTP, envelope routes, compression,
// TLS upstreams) is released with the bytes read so far, to Node's HTTP server.
//
// One session object from accept to end: its stage says where it is (engine.h Stage).
#include "engine.h"

#ifdef __linux__

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <new>

#include "http_head.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

namespace sluice {
namespace engine {

namespace {

// How long a refused client gets to take its answer and close (then it is cut).
constexpr uint64_t kRefusalLingerMs = 2000;
// The longest upstream answer head, and the longest refusal body passed on to the client
// (as src/proxy/handshake.ts).
constexpr size_t kMaxResponseHead = 16 * 1024;
constexpr size_t kMaxRefusalBody = 16 * 1024;
// Connections accepted per wake-up of the listener (the rest wait for the next turn).
constexpr int kAcceptBatch = 64;

const char* ErrnoName(int err) {
  switch (err) {
    case ECONNREFUSED: return "ECONNREFUSED";
    case ECONNRESET: return "ECONNRESET";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ENETUNREACH: return "ENETUNREACH";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EPIPE: return "EPIPE";
    default: return std::strerror(err);
  }
}

std::string AddressOf(const struct sockaddr* a) {
  char text[INET6_ADDRSTRLEN] = "";
  if (a->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(a)->sin_addr, text, sizeof text);
  } else if (a->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr, text, sizeof text);
  }
  return text;
}

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

std::string Str(Span s) { return std::string(s.p, s.n); }

// Whether `value` is one of the comma-separated entries of `list` (exactly, OWS trimmed).
bool InList(const std::string& list, Span value) {
  size_t i = 0;
  while (i <= list.size()) {
    size_t j = list.find(',', i);
    if (j == std::string::npos) j = list.size();
    size_t a = i, b = j;
    while (a < b && (list[a] == ' ' || list[a] == '\t')) a++;
    while (b > a && (list[b - 1] == ' ' || list[b - 1] == '\t')) b--;
    if (b - a == value.n && std::memcmp(list.data() + a, value.p, value.n) == 0) return true;
    i = j + 1;
  }
  return false;
}

}  // namespace

// ---------------------------------------------------------------- listening

bool Engine::Listen(int fd, const ListenOptions& o, SSL_CTX* tls, std::string* error) {
  if (disposed_ || epfd_ < 0 || read_buf_ == nullptr || request_head_ == nullptr || response_head_ == nullptr) {
    *error = "the engine is closed";
    if (tls != nullptr) tls::FreeContext(tls);
    return false;
  }
  if (listen_open_) {
    *error = "the engine is listening already";
    if (tls != nullptr) tls::FreeContext(tls);
    return false;
  }
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  // Level-triggered (no EPOLLET): a batch that leaves connections waiting is told again.
  struct epoll_event ev;
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    *error = std::string("cannot watch the listening socket: ") + std::strerror(errno);
    if (tls != nullptr) tls::FreeContext(tls);
    return false;
  }
  if (server_tls_ != nullptr) tls::FreeContext(server_tls_);
  server_tls_ = tls;
  listen_fd_ = fd;
  listen_open_ = true;
  listen_paused_ = false;
  listen_options_ = o;
  if (listen_options_.max_fields > kMaxHeadFields) listen_options_.max_fields = kMaxHeadFields;
  UpdateRef();
  return true;
}

void Engine::StopListening() {
  if (!listen_open_) return;
  listen_open_ = false;
  epoll_ctl(epfd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
  close(listen_fd_);
  listen_fd_ = -1;
  UpdateRef();
}

void Engine::ResumeListening() {
  listen_paused_ = false;
  if (!listen_open_) return;
  struct epoll_event ev;
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  epoll_ctl(epfd_, EPOLL_CTL_MOD, listen_fd_, &ev);
}

void Engine::OnAccept() {
  if (!listen_open_ || listen_paused_) return;
  for (int i = 0; i < kAcceptBatch; i++) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    const int fd = accept4(listen_fd_, reinterpret_cast<struct sockaddr*>(&addr), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: the listener rests until the next sweep (level-triggered,
        // it would be reported again and again meanwhile).
        listen_paused_ = true;
        struct epoll_event ev;
        ev.events = 0;
        ev.data.ptr = nullptr;
        epoll_ctl(epfd_, EPOLL_CTL_MOD, listen_fd_, &ev);
      }
      return;
    }
    Accepted(fd, reinterpret_cast<struct sockaddr*>(&addr));
    if (!listen_open_) return;
  }
}

void Engine::Accepted(int fd, const struct sockaddr* addr) {
  SetNoDelay(fd);
  Params p;
  CursorLimits cl, sl;
  LimitsOf(p, &cl, &sl);
  uint32_t id = next_id_++;
  if (id == 0) id = next_id_++;
  Session* s = new (std::nothrow) Session(this, id, p, cl, sl);
  Handshake* h = s == nullptr ? nullptr : new (std::nothrow) Handshake;
  if (h == nullptr) {
    delete s;
    close(fd);
    return;
  }
  s->hs = h;
  s->stage = kStageHead;
  h->deadline = now() + listen_options_.head_timeout_ms;
  h->remote = AddressOf(addr);
  s->server.alive = false;  // no upstream yet
  s->client.fd = fd;
  if (server_tls_ != nullptr) s->client.tls = tls::Accept(server_tls_, fd);
  if ((server_tls_ != nullptr && s->client.tls == nullptr) || !Watch(&s->client)) {
    if (s->client.tls != nullptr) tls::Free(s->client.tls);
    close(fd);
    delete s;
    return;
  }
  Link(s);
  handshakes_++;
  UpdateRef();
  // The request usually came with the connection: read it now rather than after an edge.
  ReadHead(s);
}

// ---------------------------------------------------------------- the client's head

void Engine::ReadHead(Session* s) {
  Leg* c = &s->client;
  Handshake* h = s->hs;
  HeadLimits limits;
  limits.max_bytes = listen_options_.max_head_bytes;
  limits.max_fields = listen_options_.max_fields;
  RequestHead& req = *request_head_;
  if (c->tls != nullptr && !c->tls_ready) {
    std::string error;
    if (!TlsHandshake(c, &error)) {
      if (!error.empty()) EndHandshake(s, false);  // not a TLS client, or no common ground
      return;
    }
  }
  for (;;) {
    bool dry = false;
    const ssize_t n = LegRecv(c, read_buf_, kReadBufferBytes, &dry);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) EndHandshake(s, false);
      return;
    }
    if (n == 0) {
      EndHandshake(s, false);
      return;
    }
    h->client_in.append(reinterpret_cast<const char*>(read_buf_), static_cast<size_t>(n));
    const HeadResult r = ParseRequestHead(h->client_in.data(), h->client_in.size(), limits, &req);
    if (r == kHeadBad) {
      Answer(s, 400, "Bad Request");
      return;
    }
    if (r == kHeadTooLarge) {
      Answer(s, 431, "Request Header Fields Too Large");
      return;
    }
    if (r == kHeadComplete) break;
    // Incomplete: read on to EAGAIN (a client that sent part and closed is seen now).
  }
  h->head_bytes = req.head_bytes;
  const HeadField* key = FindField(req.fields, req.field_count, "sec-websocket-key");
  if (key != nullptr) h->client_key = Str(key->value);
  // Not read until it is a session (or refused): only its going away is heeded.
  s->stage = kStageDecide;
  Event e{};
  e.type = 3;
  e.id = s->id;
  e.text = Str(req.method);
  e.text2 = Str(req.target);
  e.client_reason = h->remote;
  e.list.reserve(static_cast<size_t>(req.field_count) * 2);
  for (int i = 0; i < req.field_count; i++) {
    e.list.push_back(Str(req.fields[i].name));
    e.list.push_back(Str(req.fields[i].value));
  }
  Emit(std::move(e));
}

void Engine::Answer(Session* s, int status, const char* text) {
  char head[160];
  const int n = std::snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status, text);
  StartRefusal(s, reinterpret_cast<const uint8_t*>(head), static_cast<size_t>(n));
}

void Engine::StartRefusal(Session* s, const uint8_t* p, size_t n) {
  CloseDial(s);
  s->stage = kStageRefusal;
  Leg* c = &s->client;
  Write(c, p, n);
  if (s->ended || !c->alive) return;
  EndLeg(c, kRefusalLingerMs);
  // Read (and drop) until the client closes: what it sent already raised no edge we acted on.
  DiscardRefused(s);
}

// A refused client: what it sends is dropped; once it has closed and our answer has gone,
// the connection ends.
void Engine::DiscardRefused(Session* s) {
  Leg* c = &s->client;
  for (;;) {
    bool dry = false;
    const ssize_t n = LegRecv(c, read_buf_, kReadBufferBytes, &dry);
    if (n > 0) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    c->read_eof = true;
    if (c->out.size() == 0 || n < 0) EndHandshake(s, false);
    return;
  }
}

// ---------------------------------------------------------------- JavaScript's answers

bool Engine::Refuse(uint32_t id, const uint8_t* p, size_t n) {
  Session* s = Find(id);
  if (s == nullptr || s->ended || s->stage < kStageDecide || s->stage > kStageUpstreamHead) return false;
  StartRefusal(s, p, n);
  return true;
}

int Engine::Release(uint32_t id, std::string* bytes) {
  Session* s = Find(id);
  if (s == nullptr || s->ended || s->stage != kStageDecide) return -1;
  Leg* c = &s->client;
  if (c->tls != nullptr) return Pipe(s, bytes);
  const int fd = c->fd;
  bytes->swap(s->hs->client_in);
  // Out of our epoll before Node's handle takes it.
  Unwatch(c);
  c->alive = false;
  c->fd = -1;
  EndHandshake(s, false);
  return fd;
}

// Release from a TLS listener: the engine keeps the TLS connection and passes plaintext
// both ways through a socket pair whose other end Node takes (stage kStagePipe). Node's
// HTTP server reads the request again from the bytes given with it.
int Engine::Pipe(Session* s, std::string* bytes) {
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) != 0) {
    EndHandshake(s, false);  // out of descriptors: the connection cannot be carried
    return -1;
  }
  Leg* c = &s->client;
  Leg* u = &s->server;
  u->fd = sp[0];
  if (!Watch(u)) {
    close(sp[0]);
    close(sp[1]);
    u->fd = -1;
    EndHandshake(s, false);
    return -1;
  }
  u->alive = true;
  bytes->swap(s->hs->client_in);
  delete s->hs;
  s->hs = nullptr;
  s->stage = kStagePipe;
  s->params = Params();  // `pause` at the default high water, both ways
  handshakes_--;
  pipes_++;
  UpdateRef();
  // What the client sent after its head may wait in the socket (or in OpenSSL) already.
  c->readable = true;
  Schedule(c);
  return sp[1];
}

int Engine::AddClientContext(SSL_CTX* ctx) {
  client_tls_.push_back(ctx);
  return static_cast<int>(client_tls_.size()) - 1;
}

bool Engine::Dial(uint32_t id, const std::string& ip, int port, const std::string& request, const std::string& offered,
                  const std::string& fallback_protocol, const Params& p, int tls, const std::string& servername,
                  bool verify, bool deflate, std::string* error) {
  Session* s = Find(id);
  if (s == nullptr || s->ended || s->stage != kStageDecide) {
    *error = "no such handshake";
    return false;
  }
  if (tls >= static_cast<int>(client_tls_.size())) {
    *error = "no such TLS context";
    return false;
  }
  struct sockaddr_storage addr;
  std::memset(&addr, 0, sizeof addr);
  socklen_t addr_len;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    addr_len = sizeof *v4;
  } else if (inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    addr_len = sizeof *v6;
  } else {
    *error = "not an IP address: " + ip;
    return false;
  }
  Handshake* h = s->hs;
  s->params = p;
  CursorLimits cl, sl;
  LimitsOf(p, &cl, &sl);
  s->client.cursor = FrameCursor(cl);
  s->server.cursor = FrameCursor(sl);
  uint8_t raw[16];
  for (int i = 0; i < 16; i += 4) keys_.Next(raw + i);
  char key[25];
  Base64Of16(raw, key);
  WebSocketAccept(key, 24, h->expect_accept);
  h->request = request;
  h->request.append("Sec-WebSocket-Key: ").append(key, 24).append("\r\n\r\n");
  h->request_sent = 0;
  h->offered = offered;
  h->fallback_protocol = fallback_protocol;
  h->upstream_in.clear();
  h->refusal_status = 0;
  h->connected = false;
  h->tls = tls >= 0 ? client_tls_[static_cast<size_t>(tls)] : nullptr;
  h->servername = servername;
  h->verify = verify;
  h->deflate = deflate;
  const int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    DialFailed(s, 1, ErrnoName(errno));
    return true;
  }
  SetNoDelay(fd);
  s->server.fd = fd;
  // Registered before connecting: its completion is an edge.
  if (!Watch(&s->server)) {
    const int err = errno;
    close(fd);
    s->server.fd = -1;
    DialFailed(s, 1, ErrnoName(err));
    return true;
  }
  h->dialing = true;
  s->stage = kStageConnect;
  int rc;
  do {
    rc = connect(fd, reinterpret_cast<struct sockaddr*>(&addr), addr_len);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0 && errno != EINPROGRESS) DialFailed(s, 1, ErrnoName(errno));
  return true;
}

bool Engine::AbortDial(uint32_t id) {
  Session* s = Find(id);
  if (s == nullptr || s->ended || (s->stage != kStageConnect && s->stage != kStageUpstreamHead)) return false;
  CloseDial(s);
  s->stage = kStageDecide;
  return true;
}

// ---------------------------------------------------------------- the upstream's side

void Engine::OnDialEvent(Session* s, uint32_t ev) {
  if (s->ended || s->hs == nullptr || !s->hs->dialing) return;
  Handshake* h = s->hs;
  Leg* u = &s->server;
  // An end signalled with data: the reads below go on to the 0 (LegRecv's short-read rule).
  if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) u->hup = true;
  if (s->stage == kStageConnect) {
    if (!h->connected) {
      if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return;
      int err = 0;
      socklen_t len = sizeof err;
      if (getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err == 0 && (ev & (EPOLLERR | EPOLLHUP))) err = ECONNREFUSED;
      if (err != 0) {
        DialFailed(s, 1, ErrnoName(err));
        return;
      }
      h->connected = true;
      if (h->tls != nullptr) {
        u->tls = tls::Connect(h->tls, u->fd, h->servername, h->verify);
        if (u->tls == nullptr) {
          DialFailed(s, 1, "TLS: " + tls::LastError());
          return;
        }
      }
    }
    if (u->tls != nullptr) {
      // wss://: the TLS handshake (certificate and name checked) before our request.
      std::string error;
      if (!TlsHandshake(u, &error)) {
        if (!error.empty()) DialFailed(s, 1, "TLS: " + error);
        return;
      }
    }
    s->stage = kStageUpstreamHead;
    SendRequest(s);
    if (s->ended || s->stage != kStageUpstreamHead || (ev & (EPOLLIN | EPOLLRDHUP)) == 0) return;
  } else if (s->stage != kStageUpstreamHead) {
    return;
  } else if (ev & EPOLLOUT) {
    SendRequest(s);
    if (s->ended || s->stage != kStageUpstreamHead) return;
  }
  // (A TLS read that waited for writability is retried on EPOLLOUT.)
  if ((ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) || ((ev & EPOLLOUT) && s->server.tls_read_wants_out)) {
    s->server.tls_read_wants_out = false;
    ReadUpstreamHead(s);
  }
}

void Engine::SendRequest(Session* s) {
  Handshake* h = s->hs;
  while (h->request_sent < h->request.size()) {
    const ssize_t w = LegSend(&s->server, reinterpret_cast<const uint8_t*>(h->request.data()) + h->request_sent,
                              h->request.size() - h->request_sent);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      DialFailed(s, 1, ErrnoName(errno));
      return;
    }
    h->request_sent += static_cast<size_t>(w);
  }
}

void Engine::ReadUpstreamHead(Session* s) {
  Handshake* h = s->hs;
  // Read until the socket runs dry or ends (an end behind the head is seen now, not at the
  // dial's timeout), bounded by what an answer may hold.
  bool eof = false;
  int read_errno = 0;
  bool got = false;
  for (;;) {
    bool dry = false;
    const ssize_t n = LegRecv(&s->server, read_buf_, kReadBufferBytes, &dry);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) {
      eof = true;
      read_errno = n < 0 ? errno : 0;
      break;
    }
    got = true;
    h->upstream_in.append(reinterpret_cast<const char*>(read_buf_), static_cast<size_t>(n));
    if (dry || h->upstream_in.size() > kMaxResponseHead + kMaxRefusalBody) break;
  }
  if (!got && !eof) return;
  if (h->refusal_status == 0) {
    ResponseHead& res = *response_head_;
    HeadLimits limits;
    limits.max_bytes = kMaxResponseHead;
    limits.max_fields = kMaxHeadFields;
    const HeadResult r = ParseResponseHead(h->upstream_in.data(), h->upstream_in.size(), limits, &res);
    if (r == kHeadIncomplete) {
      if (eof) DialFailed(s, 2, read_errno == 0 ? "closed during the handshake" : ErrnoName(read_errno));
      return;
    }
    if (r == kHeadBad) {
      DialFailed(s, 2, "answered garbage");
      return;
    }
    if (r == kHeadTooLarge) {
      DialFailed(s, 2, "sent an oversized response head");
      return;
    }
    if (res.status != 101) {
      h->refusal_status = res.status;
      h->refusal_body_at = res.head_bytes;
      h->refusal_body_len = 0;
      const HeadField* cl = FindField(res.fields, res.field_count, "content-length");
      if (cl != nullptr) {
        size_t v = 0;
        bool ok = cl->value.n > 0 && cl->value.n <= 12;
        for (size_t i = 0; ok && i < cl->value.n; i++) {
          const char ch = cl->value.p[i];
          if (ch < '0' || ch > '9') ok = false;
          else v = v * 10 + static_cast<size_t>(ch - '0');
        }
        if (ok) h->refusal_body_len = v < kMaxRefusalBody ? v : kMaxRefusalBody;
      }
      h->refusal_text.assign(res.reason.p, res.reason.n);
    } else {
      const HeadField* upgrade = FindField(res.fields, res.field_count, "upgrade");
      const HeadField* connection = FindField(res.fields, res.field_count, "connection");
      const HeadField* accept = FindField(res.fields, res.field_count, "sec-websocket-accept");
      const HeadField* protocol = FindField(res.fields, res.field_count, "sec-websocket-protocol");
      const HeadField* extensions = FindField(res.fields, res.field_count, "sec-websocket-extensions");
      if (upgrade == nullptr || !upgrade->value.Equals("websocket")) {
        DialFailed(s, 2, "101 without Upgrade: websocket");
        return;
      }
      if (connection == nullptr || !HasToken(connection->value, "upgrade")) {
        DialFailed(s, 2, "101 without Connection: Upgrade");
        return;
      }
      if (accept == nullptr || accept->value.n != 28 || std::memcmp(accept->value.p, h->expect_accept, 28) != 0) {
        DialFailed(s, 2, "wrong Sec-WebSocket-Accept");
        return;
      }
      std::string picked;
      if (protocol != nullptr && protocol->value.n > 0) {
        if (!InList(h->offered, protocol->value)) {
          DialFailed(s, 2, "picked subprotocol \"" + Str(protocol->value) + "\" that was not offered");
          return;
        }
        picked = Str(protocol->value);
      }
      std::string agreed;
      if (extensions != nullptr && extensions->value.n > 0) {
        // Only permessage-deflate, once, and only when offered (as src/proxy/handshake.ts).
        const Span v = extensions->value;
        static const char kName[] = "permessage-deflate";
        const size_t name_len = sizeof kName - 1;
        bool ok = h->deflate && v.n >= name_len && std::memchr(v.p, ',', v.n) == nullptr;
        for (size_t i = 0; ok && i < name_len; i++) ok = (v.p[i] | 0x20) == kName[i];
        if (ok && v.n > name_len) ok = v.p[name_len] == ';' || v.p[name_len] == ' ' || v.p[name_len] == '\t';
        if (!ok) {
          DialFailed(s, 2, "negotiated an extension that was not offered");
          return;
        }
        agreed = Str(v);
      }
      h->upstream_in.erase(0, res.head_bytes);
      // An envelope client gets the envelope's subprotocol (sluice.v2, sluice.v1, or none for
      // a legacy client), whatever the upstream picked: the upstream speaks plain WebSocket.
      const bool envelope_answer = s->params.envelope != 0;
      StartData(s, picked.empty() || envelope_answer ? h->fallback_protocol : picked, agreed);
      return;
    }
  }
  // A refusal: its body (up to kMaxRefusalBody) goes to JavaScript with the status.
  const size_t have = h->upstream_in.size() - h->refusal_body_at;
  if (have >= h->refusal_body_len || eof) {
    const size_t take = have < h->refusal_body_len ? have : h->refusal_body_len;
    const int status = h->refusal_status;
    DialFailed(s, 3, "answered " + std::to_string(status) + " " + h->refusal_text, status, h->refusal_text,
               h->upstream_in.substr(h->refusal_body_at, take));
  }
}

void Engine::DialFailed(Session* s, int kind, const std::string& message, int status, const std::string& text,
                        const std::string& body) {
  CloseDial(s);
  s->stage = kStageDecide;
  Handshake* h = s->hs;
  h->upstream_in.clear();
  h->upstream_in.shrink_to_fit();
  h->refusal_status = 0;
  Event e{};
  e.type = 4;
  e.id = s->id;
  e.client_code = kind;
  e.client_reason = message;
  e.upstream_code = status;
  e.upstream_reason = text;
  e.body = body;
  Emit(std::move(e));
}

void Engine::CloseDial(Session* s) {
  Handshake* h = s->hs;
  if (h == nullptr || !h->dialing) return;
  h->dialing = false;
  Unwatch(&s->server);
  if (s->server.tls != nullptr) {
    tls::Free(s->server.tls);
    s->server.tls = nullptr;
    s->server.tls_ready = false;
  }
  close(s->server.fd);
  s->server.fd = -1;
}

// ---------------------------------------------------------------- the session begins

// Whether a permessage-deflate answer carries `param` (case-insensitive, with or without a value).
static bool HasDeflateParam(const std::string& agreed, const char* param) {
  const size_t n = std::strlen(param);
  size_t i = agreed.find(';');
  while (i != std::string::npos) {
    size_t a = i + 1;
    while (a < agreed.size() && (agreed[a] == ' ' || agreed[a] == '\t')) a++;
    size_t b = a;
    while (b < agreed.size() && agreed[b] != ';' && agreed[b] != '=' && agreed[b] != ' ' && agreed[b] != '\t') b++;
    if (b - a == n) {
      bool same = true;
      for (size_t k = 0; same && k < n; k++) same = (agreed[a + k] | 0x20) == param[k];
      if (same) return true;
    }
    i = agreed.find(';', b);
  }
  return false;
}

void Engine::StartData(Session* s, std::string protocol, std::string extensions) {
  Handshake* h = s->hs;
  Leg* c = &s->client;
  Leg* u = &s->server;
  if (!extensions.empty()) {
    c->inflate.reset(new (std::nothrow) InflateMeter(HasDeflateParam(extensions, "client_no_context_takeover")));
    u->inflate.reset(new (std::nothrow) InflateMeter(HasDeflateParam(extensions, "server_no_context_takeover")));
    if (c->inflate == nullptr || u->inflate == nullptr) {
      c->inflate.reset();
      u->inflate.reset();
      DialFailed(s, 1, "out of memory");
      return;
    }
  }
  // The upstream's descriptor is the leg's from now on (registered already).
  h->dialing = false;
  u->alive = true;
  std::string answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";
  char accept[29];
  WebSocketAccept(h->client_key.data(), h->client_key.size(), accept);
  answer.append(accept, 28).append("\r\n");
  if (!protocol.empty()) answer.append("Sec-WebSocket-Protocol: ").append(protocol).append("\r\n");
  if (!extensions.empty()) {
    // permessage-deflate agreed: the client gets the upstream's answer; RSV1 passes both
    // ways and each side's compressed messages are inflated to be checked.
    answer.append("Sec-WebSocket-Extensions: ").append(extensions).append("\r\n");
    CursorLimits cl, sl;
    LimitsOf(s->params, &cl, &sl);
    cl.allow_rsv1 = sl.allow_rsv1 = true;
    c->cursor = FrameCursor(cl);
    u->cursor = FrameCursor(sl);
  }
  answer.append("\r\n");
  std::string client_extra = h->client_in.substr(h->head_bytes);
  std::string upstream_extra;
  upstream_extra.swap(h->upstream_in);
  delete h;
  s->hs = nullptr;
  s->stage = kStageData;
  handshakes_--;
  count_++;
  UpdateRef();
  StartClocks(s, now());
  Event e{};
  e.type = 5;
  e.id = s->id;
  e.client_reason = protocol;
  e.text = extensions;
  Emit(std::move(e));
  Write(c, reinterpret_cast<const uint8_t*>(answer.data()), answer.size());
  // Bytes that came with the handshakes: the upstream's first frames, the client's.
  for (Leg* leg : {u, c}) {
    const std::string& extra = leg->client ? client_extra : upstream_extra;
    size_t at = 0;
    while (at < extra.size() && leg->alive && !s->ended) {
      const size_t n = extra.size() - at < kReadBufferBytes ? extra.size() - at : kReadBufferBytes;
      std::memcpy(read_buf_, extra.data() + at, n);
      Process(leg, read_buf_, n);
      at += n;
    }
  }
  // Bytes may wait in either socket with no edge to come.
  for (Leg* leg : {u, c}) {
    leg->readable = true;
    Schedule(leg);
  }
}

// ---------------------------------------------------------------- the end of a handshake

void Engine::OnHandshakeEvent(Leg* leg, uint32_t ev) {
  Session* s = leg->session;
  if (s->ended) return;
  if (!leg->client) {
    OnDialEvent(s, ev);
    return;
  }
  switch (s->stage) {
    case kStageHead:
      ReadHead(s);
      return;
    case kStageDecide:
    case kStageConnect:
    case kStageUpstreamHead:
      // Not read now (its bytes wait for the session); only its going away counts.
      leg->readable = true;
      if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) EndHandshake(s, true);
      return;
    case kStageRefusal:
      if ((ev & EPOLLOUT) && leg->out.size() > 0) {
        DrainBacklog(leg);
        if (s->ended || !leg->alive) return;
      }
      if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) DiscardRefused(s);
      return;
    default:
      return;
  }
}

void Engine::EndHandshake(Session* s, bool tell) {
  if (s->ended) return;
  s->ended = true;
  CloseDial(s);
  CloseDescriptor(&s->client);
  Unlink(s);
  handshakes_--;
  UpdateRef();
  if (tell) {
    Event e{};
    e.type = 6;
    e.id = s->id;
    Emit(std::move(e));
  }
  Free(s);
}

void Engine::Link(Session* s) {
  s->next = head_;
  if (head_ != nullptr) head_->prev = s;
  head_ = s;
  by_id_[s->id] = s;
}

void Engine::Unlink(Session* s) {
  if (s->prev != nullptr) s->prev->next = s->next;
  else if (head_ == s) head_ = s->next;
  if (s->next != nullptr) s->next->prev = s->prev;
  s->prev = s->next = nullptr;
  by_id_.erase(s->id);
}

}  // namespace engine
}  // namespace sluice

#endif  // __linux__
