// sluice benchmark load generator: a WebSocket client for measuring proxies.
//
// epoll, non-blocking sockets, many connections per thread, frames built and
// masked once per connection (only the 16/32-byte header of each message is
// patched per send). Every echoed message is checked: type, length, per-connection
// sequence number and the per-connection payload pattern. Modes: closed loop
// (throughput), open loop (latency, coordinated-omission corrected), idle
// (memory per held connection) and churn (connect, one message, close).
// `--tls` speaks wss: an OpenSSL client handshake after the TCP connect, then the
// same WebSocket traffic through SSL_read / SSL_write.
//
// Progress events go to stderr as JSON lines (the harness reads the proxy's CPU
// counters on `measure-start` / `measure-end`); the result is one JSON object on
// stdout. See README.md beside this file.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "handshake.h"

namespace loadgen {

enum class Mode { Closed, Open, Idle, Churn };

struct Options {
  Mode mode = Mode::Closed;
  std::string host = "127.0.0.1";
  int port = 0;
  std::string path = "/";
  int connections = 50;
  int inflight = 10;
  size_t size = 64;
  bool text = false;
  double warmup = 1.0;
  double duration = 5.0;
  double rate = 0;           // open loop: messages per second, all connections together
  double hold = 0;           // idle: seconds to hold; 0 = until stdin reaches EOF
  double drain = 5.0;        // seconds to wait for outstanding echoes after the window
  double connect_timeout = 10.0;
  int connect_concurrency = 256;  // handshakes in progress at once (listen backlogs are finite)
  int threads = 1;
  std::string origin;
  std::string protocols;      // comma list for Sec-WebSocket-Protocol
  std::string envelope;       // "", "v1" or "v2": speak sluice's envelope (DESIGN "Protocols")
  std::string authorization;
  std::vector<std::string> headers;  // extra "Name: value" lines
  bool tls = false;           // wss: TLS client handshake after connect, no certificate check
};

/** The TLS client context (--tls), shared by every worker; null for plain ws. */
static SSL_CTX* g_tls_ctx = nullptr;

/** OpenSSL's error queue (or the SSL_get_error code) as one line; clears the queue. */
static std::string tls_error(int code) {
  std::string out;
  char buf[256];
  while (unsigned long e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  if (out.empty()) out = code == SSL_ERROR_SYSCALL ? std::string("syscall: ") + strerror(errno) : "SSL_get_error " + std::to_string(code);
  return out;
}

static int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(int64_t t) {
  timespec ts{time_t(t / 1000000000LL), long(t % 1000000000LL)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

static std::mutex g_stderr_mutex;
static void emit_event(const std::string& json) {
  std::lock_guard<std::mutex> lock(g_stderr_mutex);
  fprintf(stderr, "%s\n", json.c_str());
  fflush(stderr);
}

static std::string json_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') { out += '\\'; out += ch; }
    else if (c < 0x20) { char b[8]; snprintf(b, sizeof b, "\\u%04x", c); out += b; }
    else out += ch;
  }
  return out;
}

static const char kHex[] = "0123456789abcdef";
// Message header: 16 hex digits of the sequence number, then (open loop) 16 hex
// digits of the intended send time. ASCII so text messages stay valid UTF-8.
static constexpr size_t kSeqChars = 16;
static constexpr size_t kTsChars = 16;

static void put_hex(uint8_t* dst, uint64_t v) {
  for (int i = 15; i >= 0; i--) { dst[i] = uint8_t(kHex[v & 15]); v >>= 4; }
}
static bool get_hex(const uint8_t* src, uint64_t* out) {
  uint64_t v = 0;
  for (int i = 0; i < 16; i++) {
    uint8_t c = src[i];
    uint64_t d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return false;
    v = (v << 4) | d;
  }
  *out = v;
  return true;
}

/** Run-wide state the coordinator (main thread) shares with the workers. */
struct Shared {
  std::atomic<int> ready_workers{0};
  std::atomic<bool> go{false};          // connect phase over, traffic may start
  std::atomic<bool> verify{false};      // idle: hold is over, check every connection
  std::atomic<int64_t> t_start{0}, t_measure{0}, t_end{0}, t_deadline{0};
};

enum class State { Unused, Connecting, Handshake, Open, Closing, Closed, Failed };

struct Conn {
  int id = 0;
  int fd = -1;
  SSL* ssl = nullptr;          // --tls: the session (while State::Connecting, its handshake)
  int tls_wlen = 0;            // an SSL_write to repeat with this length (WANT_WRITE/READ), or 0
  State st = State::Unused;
  std::string expected_accept;
  std::string protocol;
  uint8_t mask[4] = {0, 0, 0, 0};
  std::vector<uint8_t> frame;  // masked frame template
  size_t payload_off = 0;      // where the message starts inside `frame`
  std::vector<uint8_t> ref;    // unmasked message the echo must equal (variable area excluded)
  std::vector<uint8_t> pay;    // the payload inside the message (the envelope's data)
  size_t var_off = 0;          // the per-message area (sequence, timestamp) inside the message
  size_t var_len = 0;
  uint64_t send_seq = 0, recv_seq = 0;
  int64_t outstanding = 0;
  std::vector<uint8_t> out;
  size_t opos = 0;
  std::vector<uint8_t> in;
  size_t ibeg = 0, iend = 0;
  std::vector<uint8_t> frag;
  int frag_op = -1;
  int64_t cycle_start = 0;
  bool got_close = false;
};

struct Stats {
  uint64_t sent = 0, received = 0, window_msgs = 0, window_bytes = 0;
  uint64_t mismatches = 0, errors = 0, connect_failures = 0, handshake_failures = 0;
  uint64_t closes_without_frame = 0, cycles = 0, window_cycles = 0, opened = 0;
  std::vector<int64_t> latencies;  // ns; open loop: per message, churn: per cycle
  std::vector<std::string> messages;
  std::string protocol;
  std::string tls;             // --tls: negotiated version and cipher (first connection)
  void note(const std::string& m) {
    if (messages.size() < 8) messages.push_back(m);
  }
};

class Worker {
 public:
  Worker(const Options& o, Shared& sh, int index, int nconns, double rate)
      : o_(o), sh_(sh), index_(index), rate_(rate), rng_(std::random_device{}() ^ (uint64_t(index) << 32)) {
    conns_.resize(nconns);
    for (int i = 0; i < nconns; i++) build_conn(conns_[i], index * 1000003 + i);
  }

  Stats stats;

  void run() {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (o_.mode != Mode::Churn) connect_all();
    sh_.ready_workers.fetch_add(1);
    while (!sh_.go.load()) poll(5000000);
    switch (o_.mode) {
      case Mode::Closed: run_closed(); break;
      case Mode::Open: run_open(); break;
      case Mode::Idle: run_idle(); break;
      case Mode::Churn: run_churn(); break;
    }
    for (auto& c : conns_) close_conn(c);
    close(ep_);
  }

 private:
  const Options& o_;
  Shared& sh_;
  int index_;
  double rate_;
  std::mt19937_64 rng_;
  int ep_ = -1;
  std::vector<Conn> conns_;
  int connecting_ = 0;
  int64_t now_ = 0;
  bool sending_ = false;

  size_t header_chars() const { return o_.mode == Mode::Open ? kSeqChars + kTsChars : kSeqChars; }

  /** Bytes of the payload that carry the per-message header (v1: whole base64 groups). */
  size_t header_bytes() const {
    size_t hn = std::min(header_chars(), o_.size);
    return o_.envelope == "v1" ? std::min(o_.size, (hn + 2) / 3 * 3) : hn;
  }

  void build_conn(Conn& c, int salt) {
    c.id = salt;
    uint32_t m = uint32_t(rng_());
    memcpy(c.mask, &m, 4);
    size_t n = o_.size;
    c.pay.resize(n);
    for (size_t i = 0; i < n; i++) {
      // A pattern that differs per connection and per position, so a message
      // delivered to the wrong connection or shifted by a byte does not match.
      c.pay[i] = o_.text ? uint8_t('A' + (salt + i * 7 + (i >> 6)) % 58)
                         : uint8_t((salt * 131) + i * 251 + (i >> 8));
    }
    for (size_t i = 0; i < header_chars() && i < n; i++) c.pay[i] = '0';
    // The message: the payload itself, or wrapped in sluice's envelope. The echo through
    // an envelope route comes back byte for byte: sluice unwraps the data frame, the
    // backend echoes the payload, sluice wraps it the same way (flags: final).
    if (o_.envelope == "v2") {
      c.ref = {0x02, 0x01, 0x04, 0x00, uint8_t(n >> 24), uint8_t(n >> 16), uint8_t(n >> 8), uint8_t(n)};
      c.ref.insert(c.ref.end(), c.pay.begin(), c.pay.end());
      c.var_off = 8;
      c.var_len = header_bytes();
    } else if (o_.envelope == "v1") {
      const std::string pre = "{\"type\":\"data\",\"data\":\"";
      const std::string post = "\",\"flags\":[\"final\"]}";
      std::string b64 = base64(c.pay.data(), n);
      c.ref.assign(pre.begin(), pre.end());
      c.ref.insert(c.ref.end(), b64.begin(), b64.end());
      c.ref.insert(c.ref.end(), post.begin(), post.end());
      c.var_off = pre.size();
      c.var_len = header_bytes() / 3 * 4;
    } else {
      c.ref = c.pay;
      c.var_off = 0;
      c.var_len = header_bytes();
    }
    n = c.ref.size();
    c.frame.clear();
    c.frame.push_back(uint8_t(0x80 | (message_opcode())));
    if (n < 126) {
      c.frame.push_back(uint8_t(0x80 | n));
    } else if (n < 65536) {
      c.frame.push_back(0x80 | 126);
      c.frame.push_back(uint8_t(n >> 8));
      c.frame.push_back(uint8_t(n));
    } else {
      c.frame.push_back(0x80 | 127);
      for (int i = 7; i >= 0; i--) c.frame.push_back(uint8_t(uint64_t(n) >> (8 * i)));
    }
    for (int i = 0; i < 4; i++) c.frame.push_back(c.mask[i]);
    c.payload_off = c.frame.size();
    for (size_t i = 0; i < n; i++) c.frame.push_back(c.ref[i] ^ c.mask[i & 3]);
    c.in.resize(std::max<size_t>(4096, 2 * (n + 14)));
  }

  void fail(Conn& c, const std::string& why) {
    if (c.st == State::Failed || c.st == State::Closed || c.st == State::Unused) return;
    if (c.st == State::Connecting) { stats.connect_failures++; connecting_--; }
    else if (c.st == State::Handshake) { stats.handshake_failures++; connecting_--; }
    stats.errors++;
    stats.note("connection " + std::to_string(c.id) + ": " + why);
    drop_fd(c);
    c.st = State::Failed;
  }

  void drop_fd(Conn& c) {
    if (c.ssl) { SSL_free(c.ssl); c.ssl = nullptr; }  // no close_notify: the socket closes anyway
    c.tls_wlen = 0;
    if (c.fd >= 0) close(c.fd);
    c.fd = -1;
  }

  /** --tls: drives the client handshake; true once it is done. Fails the connection on error. */
  bool tls_handshake(Conn& c) {
    if (!c.ssl) {
      c.ssl = SSL_new(g_tls_ctx);
      if (!c.ssl || SSL_set_fd(c.ssl, c.fd) != 1) { fail(c, "TLS: " + tls_error(0)); return false; }
      SSL_set_connect_state(c.ssl);
    }
    ERR_clear_error();
    int r = SSL_connect(c.ssl);
    if (r == 1) {
      if (stats.tls.empty()) stats.tls = std::string(SSL_get_version(c.ssl)) + " " + SSL_get_cipher_name(c.ssl);
      return true;
    }
    int e = SSL_get_error(c.ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) fail(c, "TLS handshake: " + tls_error(e));
    return false;
  }

  /** SSL_read with read()'s results: > 0, 0 at EOF, -1 with errno EAGAIN; -2: failed (reported). */
  ssize_t tls_read(Conn& c, uint8_t* p, size_t len) {
    ERR_clear_error();
    int r = SSL_read(c.ssl, p, int(std::min<size_t>(len, INT32_MAX)));
    if (r > 0) return r;
    int e = SSL_get_error(c.ssl, r);
    // WANT_WRITE (a post-handshake message to answer) waits for the next event like WANT_READ.
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) { errno = EAGAIN; return -1; }
    if (e == SSL_ERROR_ZERO_RETURN) return 0;  // close_notify, or EOF (SSL_OP_IGNORE_UNEXPECTED_EOF)
    fail(c, "TLS read: " + tls_error(e));
    return -2;
  }

  /**
   * SSL_write with send()'s results (-2: failed, reported). A write that wanted to be
   * repeated is repeated with the same length: `out` only grows at its end meanwhile, and
   * may move (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER); partial writes are on.
   */
  ssize_t tls_write(Conn& c, const uint8_t* p, size_t len) {
    int n = c.tls_wlen ? c.tls_wlen : int(std::min<size_t>(len, 1u << 20));
    ERR_clear_error();
    int r = SSL_write(c.ssl, p, n);
    if (r > 0) { c.tls_wlen = 0; return r; }
    int e = SSL_get_error(c.ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) { c.tls_wlen = n; errno = EAGAIN; return -1; }
    fail(c, "TLS write: " + tls_error(e));
    return -2;
  }

  void start_connect(Conn& c) {
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c.st = State::Connecting;
    connecting_++;
    if (c.fd < 0) { fail(c, std::string("socket: ") + strerror(errno)); return; }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(uint16_t(o_.port));
    inet_pton(AF_INET, o_.host.c_str(), &sa.sin_addr);
    c.out.clear(); c.opos = 0; c.ibeg = c.iend = 0; c.frag_op = -1; c.tls_wlen = 0;
    c.send_seq = c.recv_seq = 0; c.outstanding = 0; c.got_close = false;
    int r = connect(c.fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    if (r < 0 && errno != EINPROGRESS) { fail(c, std::string("connect: ") + strerror(errno)); return; }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP;
    ev.data.ptr = &c;
    epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev);
  }

  void send_handshake(Conn& c) {
    uint8_t raw[16];
    for (int i = 0; i < 16; i++) raw[i] = uint8_t(rng_());
    std::string key = base64(raw, 16);
    c.expected_accept = accept_for_key(key);
    std::string req = "GET " + o_.path + " HTTP/1.1\r\nHost: " + o_.host + ":" + std::to_string(o_.port) +
                      "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
                      "\r\nSec-WebSocket-Version: 13\r\n";
    if (!o_.origin.empty()) req += "Origin: " + o_.origin + "\r\n";
    if (!o_.protocols.empty()) req += "Sec-WebSocket-Protocol: " + o_.protocols + "\r\n";
    if (!o_.authorization.empty()) req += "Authorization: " + o_.authorization + "\r\n";
    for (auto& h : o_.headers) req += h + "\r\n";
    req += "\r\n";
    c.out.insert(c.out.end(), req.begin(), req.end());
    c.st = State::Handshake;
    flush(c);
  }

  static std::string lower(std::string s) {
    for (auto& ch : s) ch = char(tolower(static_cast<unsigned char>(ch)));
    return s;
  }
  static std::string trim(const std::string& s) {
    size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
  }

  // Returns false when the connection failed.
  bool parse_handshake(Conn& c, size_t header_end) {
    std::string head(reinterpret_cast<char*>(c.in.data() + c.ibeg), header_end - c.ibeg);
    c.ibeg = header_end + 4;
    size_t eol = head.find("\r\n");
    std::string status = head.substr(0, eol);
    if (status.compare(0, 9, "HTTP/1.1 ") != 0 || status.compare(9, 3, "101") != 0) {
      fail(c, "handshake answered '" + status + "'");
      return false;
    }
    std::string accept, upgrade, protocol;
    size_t pos = eol + 2;
    while (pos < head.size()) {
      size_t e = head.find("\r\n", pos);
      if (e == std::string::npos) e = head.size();
      std::string line = head.substr(pos, e - pos);
      pos = e + 2;
      size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string name = lower(trim(line.substr(0, colon)));
      std::string value = trim(line.substr(colon + 1));
      if (name == "sec-websocket-accept") accept = value;
      else if (name == "upgrade") upgrade = lower(value);
      else if (name == "sec-websocket-protocol") protocol = value;
    }
    if (accept != c.expected_accept) { fail(c, "bad Sec-WebSocket-Accept '" + accept + "'"); return false; }
    if (upgrade != "websocket") { fail(c, "bad Upgrade header '" + upgrade + "'"); return false; }
    if (!protocol.empty()) {
      bool offered = false;
      std::string list = o_.protocols + ",";
      size_t p = 0;
      while (p < list.size()) {
        size_t comma = list.find(',', p);
        if (trim(list.substr(p, comma - p)) == protocol) offered = true;
        p = comma + 1;
      }
      if (!offered) { fail(c, "server chose a subprotocol not offered: " + protocol); return false; }
    }
    c.protocol = protocol;
    if (stats.protocol.empty()) stats.protocol = protocol;
    c.st = State::Open;
    connecting_--;
    stats.opened++;
    on_open(c);
    return true;
  }

  void on_open(Conn& c) {
    if (o_.mode == Mode::Churn) send_message(c, now_);
  }

  int message_opcode() const { return o_.envelope == "v2" ? 2 : o_.envelope == "v1" ? 1 : (o_.text ? 1 : 2); }

  /** The per-message area of the message: hex sequence (+ timestamp), base64'd for v1. */
  size_t variable_area(const Conn& c, uint64_t seq, int64_t intended, uint8_t* out) const {
    uint8_t raw[kSeqChars + kTsChars + 3];
    size_t hb = header_bytes();
    size_t hn = std::min(header_chars(), o_.size);
    put_hex(raw, seq);
    if (o_.mode == Mode::Open) put_hex(raw + kSeqChars, uint64_t(intended));
    for (size_t j = hn; j < hb; j++) raw[j] = c.pay[j];
    if (o_.envelope != "v1") {
      memcpy(out, raw, hn);
      return hn;
    }
    std::string b = base64(raw, hb);
    memcpy(out, b.data(), b.size());
    return b.size();
  }

  void send_message(Conn& c, int64_t intended) {
    size_t off = c.out.size();
    c.out.insert(c.out.end(), c.frame.begin(), c.frame.end());
    uint8_t var[64];
    size_t vn = variable_area(c, c.send_seq, intended, var);
    uint8_t* p = c.out.data() + off + c.payload_off + c.var_off;
    for (size_t j = 0; j < vn; j++) p[j] = var[j] ^ c.mask[(c.var_off + j) & 3];
    c.send_seq++;
    c.outstanding++;
    stats.sent++;
  }

  void send_control(Conn& c, uint8_t opcode, const uint8_t* payload, size_t len) {
    uint8_t f[2 + 4 + 125];
    f[0] = uint8_t(0x80 | opcode);
    f[1] = uint8_t(0x80 | len);
    memcpy(f + 2, c.mask, 4);
    for (size_t i = 0; i < len; i++) f[6 + i] = payload[i] ^ c.mask[i & 3];
    c.out.insert(c.out.end(), f, f + 6 + len);
  }

  void on_message(Conn& c, int op, const uint8_t* p, size_t len) {
    int64_t t = o_.mode == Mode::Open ? now_ns() : now_;
    c.outstanding--;
    stats.received++;
    bool ok = true;
    uint64_t seq = 0;
    size_t hn = std::min(header_chars(), o_.size);
    uint8_t hdr[kSeqChars + kTsChars + 3] = {0};
    if (op != message_opcode()) { ok = false; stats.note("message type changed to opcode " + std::to_string(op)); }
    else if (len != c.ref.size()) { ok = false; stats.note("echo of " + std::to_string(len) + " bytes, sent " + std::to_string(c.ref.size())); }
    else {
      // The per-message header, as bytes (base64-decoded for v1, whose padding-free groups
      // also carry a few pattern bytes, checked too).
      if (o_.envelope == "v1") {
        std::vector<uint8_t> raw;
        if (!base64_decode(p + c.var_off, c.var_len, raw) || raw.size() != header_bytes() ||
            memcmp(raw.data() + hn, c.pay.data() + hn, raw.size() - hn) != 0) {
          ok = false;
          stats.note("connection " + std::to_string(c.id) + ": envelope data of message #" + std::to_string(c.recv_seq) + " corrupted");
        } else {
          memcpy(hdr, raw.data(), hn);
        }
      } else {
        memcpy(hdr, p + c.var_off, hn);
      }
      if (ok && hn >= kSeqChars && (!get_hex(hdr, &seq) || seq != c.recv_seq)) {
        ok = false;
        stats.note("connection " + std::to_string(c.id) + ": expected message #" + std::to_string(c.recv_seq) + ", got another");
        // Resynchronise on a readable sequence number, so one lost or duplicated
        // message counts once and not for every message after it.
        if (get_hex(hdr, &seq) && seq < c.send_seq) c.recv_seq = seq;
      }
      size_t vend = c.var_off + c.var_len;
      if (ok && (memcmp(p, c.ref.data(), c.var_off) != 0 || memcmp(p + vend, c.ref.data() + vend, len - vend) != 0)) {
        ok = false;
        stats.note("connection " + std::to_string(c.id) + ": payload of message #" + std::to_string(c.recv_seq) + " corrupted");
      }
    }
    c.recv_seq++;
    if (!ok) stats.mismatches++;
    bool in_window = t >= sh_.t_measure.load(std::memory_order_relaxed) && t < sh_.t_end.load(std::memory_order_relaxed);
    if (in_window) { stats.window_msgs++; stats.window_bytes += len; }
    if (o_.mode == Mode::Open && ok) {
      uint64_t intended = 0;
      get_hex(hdr + kSeqChars, &intended);
      int64_t it = int64_t(intended);
      if (it >= sh_.t_measure.load() && it < sh_.t_end.load()) stats.latencies.push_back(t - it);
    } else if (o_.mode == Mode::Closed) {
      if (sending_) send_message(c, t);
    } else if (o_.mode == Mode::Churn) {
      uint8_t code[2] = {0x03, 0xe8};  // 1000
      send_control(c, 0x8, code, 2);
      c.st = State::Closing;
    }
  }

  void finish_cycle(Conn& c) {
    // Churn: the close handshake finished; count the cycle and start the next one.
    drop_fd(c);
    c.st = State::Closed;
    stats.cycles++;
    if (now_ >= sh_.t_measure.load() && now_ < sh_.t_end.load()) {
      stats.window_cycles++;
      stats.latencies.push_back(now_ - c.cycle_start);
    }
  }

  void on_close_frame(Conn& c, int code) {
    c.got_close = true;
    if (o_.mode == Mode::Churn && c.st == State::Closing) {
      finish_cycle(c);
      return;
    }
    if (c.st != State::Closing) fail(c, "server closed the connection (code " + std::to_string(code) + ")");
  }

  void process_frames(Conn& c) {
    const size_t max_len = std::max<size_t>(c.ref.size(), 125);
    while (c.st == State::Open || c.st == State::Closing) {
      size_t avail = c.iend - c.ibeg;
      if (avail < 2) break;
      const uint8_t* b = c.in.data() + c.ibeg;
      if (b[1] & 0x80) { fail(c, "server sent a masked frame"); return; }
      if (b[0] & 0x70) { fail(c, "server set RSV bits without an extension"); return; }
      uint64_t len = b[1] & 0x7f;
      size_t hl = 2;
      if (len == 126) {
        if (avail < 4) break;
        len = (uint64_t(b[2]) << 8) | b[3];
        hl = 4;
      } else if (len == 127) {
        if (avail < 10) break;
        len = 0;
        for (int i = 0; i < 8; i++) len = (len << 8) | b[2 + i];
        hl = 10;
      }
      if (len > max_len) { fail(c, "frame of " + std::to_string(len) + " bytes, more than sent"); return; }
      if (avail < hl + len) break;
      const uint8_t* p = b + hl;
      int op = b[0] & 0x0f;
      bool fin = b[0] & 0x80;
      c.ibeg += hl + len;
      switch (op) {
        case 0x1:
        case 0x2:
          if (c.frag_op != -1) { fail(c, "data frame inside a fragmented message"); return; }
          if (fin) on_message(c, op, p, len);
          else { c.frag_op = op; c.frag.assign(p, p + len); }
          break;
        case 0x0:
          if (c.frag_op == -1) { fail(c, "continuation without a message"); return; }
          c.frag.insert(c.frag.end(), p, p + len);
          if (c.frag.size() > c.ref.size()) { fail(c, "fragmented message larger than sent"); return; }
          if (fin) { int fop = c.frag_op; c.frag_op = -1; on_message(c, fop, c.frag.data(), c.frag.size()); }
          break;
        case 0x8: on_close_frame(c, len >= 2 ? (p[0] << 8) | p[1] : 1005); break;
        case 0x9: send_control(c, 0xA, p, len); break;  // answer pings: proxies may send heartbeats
        case 0xA: break;
        default: fail(c, "unknown opcode " + std::to_string(op)); return;
      }
    }
    if (c.ibeg == c.iend) c.ibeg = c.iend = 0;
  }

  void do_read(Conn& c) {
    for (;;) {
      if (c.st != State::Handshake && c.st != State::Open && c.st != State::Closing) return;
      if (c.iend == c.in.size()) {
        if (c.ibeg > 0) {
          memmove(c.in.data(), c.in.data() + c.ibeg, c.iend - c.ibeg);
          c.iend -= c.ibeg;
          c.ibeg = 0;
        } else {
          fail(c, "read buffer full");
          return;
        }
      }
      ssize_t n;
      if (c.ssl) {
        n = tls_read(c, c.in.data() + c.iend, c.in.size() - c.iend);
        if (n == -2) return;
      } else {
        n = read(c.fd, c.in.data() + c.iend, c.in.size() - c.iend);
      }
      if (n > 0) {
        c.iend += size_t(n);
        if (c.st == State::Handshake) {
          const uint8_t* s = c.in.data() + c.ibeg;
          size_t len = c.iend - c.ibeg;
          size_t found = SIZE_MAX;
          for (size_t i = 0; i + 3 < len; i++)
            if (s[i] == '\r' && s[i + 1] == '\n' && s[i + 2] == '\r' && s[i + 3] == '\n') { found = c.ibeg + i; break; }
          if (found == SIZE_MAX) continue;
          if (!parse_handshake(c, found)) return;
        }
        process_frames(c);
        continue;
      }
      if (n == 0) {
        if (c.st == State::Closing && o_.mode == Mode::Churn) {
          if (!c.got_close) stats.closes_without_frame++;
          finish_cycle(c);
        } else if (c.st == State::Closing) {
          close_conn(c);
        } else {
          // Say where: before or after the 101, how many echoes had come back, whether a
          // close frame came first (a drop without one is what to look for).
          fail(c, std::string("connection closed by peer (") +
                      (c.st == State::Handshake ? "during the handshake" : "after the upgrade") + ", " +
                      std::to_string(c.recv_seq) + " echoes received, " + std::to_string(c.send_seq) + " sent, " +
                      (c.got_close ? "after a close frame)" : "no close frame)"));
        }
        return;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      fail(c, std::string("read: ") + strerror(errno));
      return;
    }
  }

  void flush(Conn& c) {
    while (c.opos < c.out.size()) {
      ssize_t n;
      if (c.ssl) {
        n = tls_write(c, c.out.data() + c.opos, c.out.size() - c.opos);
        if (n == -2) return;
      } else {
        n = send(c.fd, c.out.data() + c.opos, c.out.size() - c.opos, MSG_NOSIGNAL);
      }
      if (n > 0) { c.opos += size_t(n); continue; }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) {
        if (c.opos > (1u << 20) && c.opos * 2 > c.out.size()) {
          c.out.erase(c.out.begin(), c.out.begin() + long(c.opos));
          c.opos = 0;
        }
        return;
      }
      fail(c, std::string("write: ") + strerror(errno));
      return;
    }
    c.out.clear();
    c.opos = 0;
  }

  void on_event(Conn& c, uint32_t ev) {
    if (c.st == State::Connecting) {
      if (!c.ssl) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { fail(c, std::string("connect: ") + strerror(err)); return; }
        if (!(ev & EPOLLOUT)) return;
      }
      // --tls: the TLS handshake runs in State::Connecting, one step per event.
      if (g_tls_ctx && !tls_handshake(c)) return;
      send_handshake(c);
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) do_read(c);
    if (c.fd >= 0 && (c.st == State::Handshake || c.st == State::Open || c.st == State::Closing)) flush(c);
  }

  void poll(int64_t timeout_ns) {
    epoll_event evs[256];
    timespec ts{time_t(timeout_ns / 1000000000LL), long(timeout_ns % 1000000000LL)};
    int n = epoll_pwait2(ep_, evs, 256, &ts, nullptr);
    now_ = now_ns();
    for (int i = 0; i < n; i++) on_event(*static_cast<Conn*>(evs[i].data.ptr), evs[i].events);
  }

  void connect_all() {
    size_t next = 0;
    int64_t deadline = now_ns() + int64_t(o_.connect_timeout * 1e9);
    for (;;) {
      while (next < conns_.size() && connecting_ < o_.connect_concurrency) start_connect(conns_[next++]);
      if (next == conns_.size() && connecting_ == 0) break;
      if (now_ns() > deadline) {
        for (auto& c : conns_)
          if (c.st == State::Connecting || c.st == State::Handshake) fail(c, "connect/handshake timed out");
        for (; next < conns_.size(); next++) { conns_[next].st = State::Failed; stats.connect_failures++; stats.errors++; }
        break;
      }
      poll(2000000);
    }
  }

  int64_t outstanding() const {
    int64_t n = 0;
    for (auto& c : conns_)
      if (c.st == State::Open) n += c.outstanding;
    return n;
  }

  void drain() {
    int64_t deadline = sh_.t_end.load() + int64_t(o_.drain * 1e9);
    while (outstanding() > 0 && now_ns() < deadline) poll(2000000);
  }

  void run_closed() {
    now_ = now_ns();
    sending_ = true;
    for (auto& c : conns_) {
      if (c.st != State::Open) continue;
      for (int k = 0; k < o_.inflight; k++) send_message(c, now_);
      flush(c);
    }
    while (now_ < sh_.t_end.load()) poll(5000000);
    sending_ = false;
    drain();
  }

  void run_open() {
    std::vector<Conn*> open;
    for (auto& c : conns_)
      if (c.st == State::Open) open.push_back(&c);
    if (open.empty()) return;
    const int64_t t0 = sh_.t_start.load(), t_end = sh_.t_end.load();
    const double interval = 1e9 / rate_;
    // Wake at most every 100 us and send what fell due meanwhile: at 100k msgs/s a
    // wake-up per message would make the load generator the bottleneck. Each
    // message still carries its own intended send time, so this batching shows up
    // as (at most 0.1 ms of) latency, the same for every peer.
    const int64_t tick = 100000;
    std::vector<Conn*> touched;
    std::vector<char> is_touched(conns_.size(), 0);
    uint64_t n = 0;
    stats.latencies.reserve(size_t(rate_ * (o_.duration + 1)));
    for (;;) {
      int64_t now = now_ns();
      if (now >= t_end) break;
      int64_t due = t0 + int64_t(double(n) * interval);
      // Send everything that is due, stamped with the time it was *meant* to go:
      // a stall in the proxy then shows as latency instead of a pause in sending.
      while (due <= now && due < t_end) {
        Conn* c = open[n % open.size()];
        if (c->st == State::Open) {
          send_message(*c, due);
          size_t idx = size_t(c - conns_.data());
          if (!is_touched[idx]) { is_touched[idx] = 1; touched.push_back(c); }
        }
        n++;
        due = t0 + int64_t(double(n) * interval);
      }
      for (Conn* c : touched) {
        is_touched[size_t(c - conns_.data())] = 0;
        if (c->st == State::Open) flush(*c);
      }
      touched.clear();
      int64_t wait = std::min(due, t_end) - now_ns();
      poll(std::max<int64_t>(wait, tick));
    }
    drain();
  }

  void run_idle() {
    while (!sh_.verify.load()) poll(20000000);
    now_ = now_ns();
    for (auto& c : conns_) {
      if (c.st != State::Open) continue;
      send_message(c, now_);
      flush(c);
    }
    int64_t deadline = sh_.t_deadline.load();
    while (outstanding() > 0 && now_ns() < deadline) poll(2000000);
  }

  void run_churn() {
    int64_t t_end = sh_.t_end.load();
    now_ = now_ns();
    for (auto& c : conns_) { c.cycle_start = now_; start_connect(c); }
    int64_t deadline = t_end + int64_t(o_.drain * 1e9);
    for (;;) {
      poll(2000000);
      bool more = now_ < t_end;
      int busy = 0;
      for (auto& c : conns_) {
        if (c.st == State::Closed || c.st == State::Failed) {
          if (more) { c.cycle_start = now_; start_connect(c); busy++; }
        } else if (c.st != State::Unused) {
          busy++;
        }
      }
      if (!more && (busy == 0 || now_ > deadline)) break;
    }
    for (auto& c : conns_)
      if (c.st == State::Connecting || c.st == State::Handshake || c.st == State::Open || c.st == State::Closing)
        fail(c, "cycle unfinished at the end of the drain");
  }

  void close_conn(Conn& c) {
    if (c.fd < 0) return;
    if (c.st == State::Open) {
      uint8_t code[2] = {0x03, 0xe8};
      send_control(c, 0x8, code, 2);
      flush(c);
    }
    drop_fd(c);
    c.st = State::Closed;
  }
};

[[noreturn]] static void usage(const char* msg) {
  fprintf(stderr, "loadgen: %s\nsee bench/loadgen/README.md for the flags\n", msg);
  exit(2);
}

static Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--mode") {
      std::string m = val();
      if (m == "closed") o.mode = Mode::Closed;
      else if (m == "open") o.mode = Mode::Open;
      else if (m == "idle") o.mode = Mode::Idle;
      else if (m == "churn") o.mode = Mode::Churn;
      else usage("--mode is closed, open, idle or churn");
    } else if (a == "--host") o.host = val();
    else if (a == "--port") o.port = atoi(val().c_str());
    else if (a == "--path") o.path = val();
    else if (a == "--connections" || a == "-c") o.connections = atoi(val().c_str());
    else if (a == "--inflight" || a == "-k") o.inflight = atoi(val().c_str());
    else if (a == "--size" || a == "-s") o.size = size_t(atoll(val().c_str()));
    else if (a == "--text") o.text = true;
    else if (a == "--binary") o.text = false;
    else if (a == "--warmup") o.warmup = atof(val().c_str());
    else if (a == "--duration" || a == "-d") o.duration = atof(val().c_str());
    else if (a == "--rate") o.rate = atof(val().c_str());
    else if (a == "--hold") o.hold = atof(val().c_str());
    else if (a == "--drain") o.drain = atof(val().c_str());
    else if (a == "--connect-timeout") o.connect_timeout = atof(val().c_str());
    else if (a == "--connect-concurrency") o.connect_concurrency = atoi(val().c_str());
    else if (a == "--threads") o.threads = atoi(val().c_str());
    else if (a == "--origin") o.origin = val();
    else if (a == "--protocol") o.protocols = val();
    else if (a == "--authorization") o.authorization = val();
    else if (a == "--header") o.headers.push_back(val());
    else if (a == "--envelope") {
      o.envelope = val();
      if (o.envelope != "v1" && o.envelope != "v2") usage("--envelope is v1 or v2");
    }
    else if (a == "--tls") o.tls = true;
    else if (a == "--help" || a == "-h") usage("usage");
    else usage(("unknown flag " + a).c_str());
  }
  if (o.port <= 0 || o.port > 65535) usage("--port is required");
  if (o.connections < 1 || o.threads < 1 || o.inflight < 1) usage("--connections, --threads and --inflight must be >= 1");
  if (o.threads > o.connections) o.threads = o.connections;
  size_t min_size = o.mode == Mode::Open ? kSeqChars + kTsChars : kSeqChars;
  if (o.size < min_size) usage(("--size must be at least " + std::to_string(min_size) + " (the sequence header)").c_str());
  if (o.mode == Mode::Open && o.rate <= 0) usage("--rate is required in open mode");
  if (!o.envelope.empty()) {
    // v1 is JSON text, v2 binary; offer the matching subprotocol unless told otherwise.
    o.text = o.envelope == "v1";
    if (o.protocols.empty()) o.protocols = "sluice." + o.envelope;
    if (o.envelope == "v1" && o.size < (min_size + 2) / 3 * 3) usage("--envelope v1 needs --size of at least a whole base64 group past the header");
  }
  if (o.path.empty() || o.path[0] != '/') usage("--path must start with /");
  if (o.tls && o.mode == Mode::Churn) usage("--tls is not supported in churn mode");
  return o;
}

static double percentile_ms(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return -1;
  size_t idx = size_t(std::ceil(q * double(sorted.size())));
  if (idx > 0) idx--;
  if (idx >= sorted.size()) idx = sorted.size() - 1;
  return double(sorted[idx]) / 1e6;
}

static double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void raise_nofile(size_t need) {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rlimit want = rl;
  if (want.rlim_max != RLIM_INFINITY && want.rlim_max < need) {
    want.rlim_max = need;  // only works with privileges; fall back to the hard limit
    want.rlim_cur = need;
    if (setrlimit(RLIMIT_NOFILE, &want) == 0) return;
    want = rl;
  }
  want.rlim_cur = want.rlim_max;
  setrlimit(RLIMIT_NOFILE, &want);
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < need)
    emit_event("{\"event\":\"warning\",\"message\":\"RLIMIT_NOFILE is " + std::to_string(rl.rlim_cur) +
               ", below the " + std::to_string(need) + " descriptors asked for\"}");
}

static const char* mode_name(Mode m) {
  switch (m) {
    case Mode::Closed: return "closed";
    case Mode::Open: return "open";
    case Mode::Idle: return "idle";
    case Mode::Churn: return "churn";
  }
  return "?";
}

}  // namespace loadgen

int main(int argc, char** argv) {
  using namespace loadgen;
  signal(SIGPIPE, SIG_IGN);
  Options o = parse(argc, argv);
  if (o.tls) {
    // A benchmark client: TLS 1.3, no certificate check (self-signed bench certificate),
    // no session resumption, writes that may be partial and retried from a moved buffer.
    g_tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!g_tls_ctx) usage(("TLS: " + tls_error(0)).c_str());
    SSL_CTX_set_min_proto_version(g_tls_ctx, TLS1_3_VERSION);
    // One cipher suite, so every peer runs the same one whatever its preference: the one
    // browsers list first (Go's TLS, in Caddy, prefers it over AES-256 anyway).
    SSL_CTX_set_ciphersuites(g_tls_ctx, "TLS_AES_128_GCM_SHA256");
    SSL_CTX_set_verify(g_tls_ctx, SSL_VERIFY_NONE, nullptr);
    SSL_CTX_set_session_cache_mode(g_tls_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(g_tls_ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(g_tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  }
  raise_nofile(size_t(o.connections) + 64);
  // A benchmark must stop by itself even if the harness that started it is gone.
  double budget = o.connect_timeout + o.warmup + o.duration + o.drain + 60 + (o.mode == Mode::Idle ? (o.hold > 0 ? o.hold : 600) : 0);
  alarm(unsigned(budget));

  Shared sh;
  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < o.threads; t++) {
    int n = o.connections / o.threads + (t < o.connections % o.threads ? 1 : 0);
    workers.emplace_back(new Worker(o, sh, t, n, o.rate / o.threads));
  }
  // Times are set before the threads start traffic; nothing is sent before `go`.
  sh.t_start = INT64_MAX;
  sh.t_measure = INT64_MAX;
  sh.t_end = INT64_MAX;
  int64_t t_connect = now_ns();
  std::vector<std::thread> threads;
  for (auto& w : workers) threads.emplace_back([&w] { w->run(); });
  while (sh.ready_workers.load() < o.threads) sleep_until(now_ns() + 2000000);
  double connect_sec = double(now_ns() - t_connect) / 1e9;

  uint64_t opened = 0;
  for (auto& w : workers) opened += w->stats.opened;  // stable: workers only wait for `go` now
  emit_event("{\"event\":\"ready\",\"connections\":" + std::to_string(opened) + "}");

  double cpu0 = 0, cpu1 = 0;
  if (o.mode == Mode::Idle) {
    if (o.hold > 0) {
      sleep_until(now_ns() + int64_t(o.hold * 1e9));
    } else {
      char buf[256];
      while (read(0, buf, sizeof buf) > 0) {
      }
    }
    int64_t now = now_ns();
    sh.t_start = now;
    sh.t_measure = now;
    sh.t_end = now;
    sh.t_deadline = now + int64_t(o.drain * 1e9);
    sh.verify = true;
    sh.go = true;
  } else {
    int64_t t0 = now_ns() + 1000000;
    sh.t_measure = t0 + int64_t(o.warmup * 1e9);
    sh.t_end = sh.t_measure.load() + int64_t(o.duration * 1e9);
    sh.t_start = t0;
    sh.go = true;
    sleep_until(sh.t_measure.load());
    cpu0 = cpu_seconds();
    emit_event("{\"event\":\"measure-start\"}");
    sleep_until(sh.t_end.load());
    cpu1 = cpu_seconds();
    emit_event("{\"event\":\"measure-end\"}");
  }
  for (auto& t : threads) t.join();

  Stats total;
  for (auto& w : workers) {
    Stats& s = w->stats;
    total.sent += s.sent; total.received += s.received;
    total.window_msgs += s.window_msgs; total.window_bytes += s.window_bytes;
    total.mismatches += s.mismatches; total.errors += s.errors;
    total.connect_failures += s.connect_failures; total.handshake_failures += s.handshake_failures;
    total.closes_without_frame += s.closes_without_frame;
    total.cycles += s.cycles; total.window_cycles += s.window_cycles; total.opened += s.opened;
    total.latencies.insert(total.latencies.end(), s.latencies.begin(), s.latencies.end());
    for (auto& m : s.messages) total.note(m);
    if (total.protocol.empty()) total.protocol = s.protocol;
    if (total.tls.empty()) total.tls = s.tls;
  }
  uint64_t lost = total.sent > total.received ? total.sent - total.received : 0;
  if (lost > 0) total.note(std::to_string(lost) + " messages were not echoed back");
  bool valid = total.errors == 0 && total.mismatches == 0 && lost == 0 && total.opened > 0 &&
               (o.mode == Mode::Churn ? total.window_cycles > 0 : total.received > 0);
  std::sort(total.latencies.begin(), total.latencies.end());
  double window = o.mode == Mode::Idle ? 0 : o.duration;
  double per_sec = o.mode == Mode::Churn ? double(total.window_cycles) : double(total.window_msgs);

  std::string j = "{";
  auto add = [&](const std::string& k, const std::string& v) {
    if (j.size() > 1) j += ",";
    j += "\"" + k + "\":" + v;
  };
  auto num = [](double v) {
    if (!std::isfinite(v)) return std::string("null");
    char b[64];
    snprintf(b, sizeof b, "%.6g", v);
    return std::string(b);
  };
  add("mode", std::string("\"") + mode_name(o.mode) + "\"");
  add("valid", valid ? "true" : "false");
  add("connections", std::to_string(o.connections));
  add("connected", std::to_string(total.opened));
  add("connectSec", num(connect_sec));
  add("inflight", std::to_string(o.inflight));
  add("size", std::to_string(o.size));
  add("text", o.text ? "true" : "false");
  add("threads", std::to_string(o.threads));
  add("warmupSec", num(o.warmup));
  add("durationSec", num(window));
  add("sent", std::to_string(total.sent));
  add("received", std::to_string(total.received));
  add("lost", std::to_string(lost));
  add("mismatches", std::to_string(total.mismatches));
  add("errors", std::to_string(total.errors));
  add("connectFailures", std::to_string(total.connect_failures));
  add("handshakeFailures", std::to_string(total.handshake_failures));
  add("messages", std::to_string(total.window_msgs));
  add("bytes", std::to_string(total.window_bytes));
  add("msgsPerSec", window > 0 ? num(per_sec / window) : "null");
  add("mbPerSec", window > 0 && o.mode != Mode::Churn ? num(double(total.window_bytes) / window / 1e6) : "null");
  add("loadgenCpuSec", o.mode == Mode::Idle ? "null" : num(cpu1 - cpu0));
  add("protocol", total.protocol.empty() ? "null" : "\"" + json_escape(total.protocol) + "\"");
  if (o.tls) add("tls", total.tls.empty() ? "null" : "\"" + json_escape(total.tls) + "\"");
  if (o.mode == Mode::Churn) {
    add("cycles", std::to_string(total.window_cycles));
    add("closesWithoutFrame", std::to_string(total.closes_without_frame));
  }
  if (o.mode == Mode::Open) add("rate", num(o.rate));
  if (o.mode == Mode::Open || o.mode == Mode::Churn) {
    const auto& l = total.latencies;
    std::string lat = "{\"count\":" + std::to_string(l.size());
    if (!l.empty()) {
      lat += ",\"p50Ms\":" + num(percentile_ms(l, 0.5)) + ",\"p90Ms\":" + num(percentile_ms(l, 0.9)) +
             ",\"p99Ms\":" + num(percentile_ms(l, 0.99)) + ",\"p999Ms\":" + num(percentile_ms(l, 0.999)) +
             ",\"maxMs\":" + num(double(l.back()) / 1e6);
    }
    add("latency", lat + "}");
  }
  std::string errs = "[";
  for (size_t i = 0; i < total.messages.size(); i++) errs += (i ? ",\"" : "\"") + json_escape(total.messages[i]) + "\"";
  add("errorMessages", errs + "]");
  j += "}";
  printf("%s\n", j.c_str());
  fflush(stdout);
  return 0;
}
