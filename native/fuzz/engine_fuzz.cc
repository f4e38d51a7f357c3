// libFuzzer target: the whole native engine (native/engine/engine.h) on real sockets, as
// the N-API layer (native/engine/binding.cc) drives it: a session adopted over two
// socketpairs, bytes written into it in pseudo-random chunks from both ends while the
// libuv loop turns, events and the message batch delivered once per loop turn from a
// uv_check handle (events first, then messages, as Deliver does), and a stand-in for the
// JavaScript side answering them (src/proxy/native-session.ts, envelope-route.ts).
//
// Oracle, on what the engine writes (both directions, read back from the peer ends):
//  - towards the client a valid server-role stream, towards the upstream a valid client-role
//    stream (FrameParserCore of frame.h: every frame masked towards the upstream and none
//    towards the client, valid opcodes and sequencing, no RSV bits, control frames FIN and
//    <= 125 bytes); close payloads never 1 byte, their codes valid on the wire (RFC 6455
//    7.4), their reasons UTF-8; nothing after a close frame; whole text messages UTF-8;
//  - when the loop has settled and a connection is still open, its stream is not cut inside a
//    frame (only a large binary frame still streaming from its sender may be unfinished);
//  - the data messages one side receives are, in order, messages its partner sent (the same
//    opcode, length and bytes): a prefix of them under the pause and close policies, a
//    subsequence under drop (transparent mode, and messages mode when JavaScript echoes
//    each message to the other side); and when it receives its partner's own close frame,
//    all the messages the partner sent before it came first (unless something else may
//    have ended the session: JavaScript's calls, the sweep, a reset, rate limits);
//  - a batch holds only messages of the session, text is UTF-8, none is over max_frame_bytes;
//    under envelope v2 only the client's error and control envelopes reach JavaScript;
//  - one end event per session, and no message of a session after its end (Dispose aside);
//  - sessions() returns to 0 after Destroy, after both peers ended, and after Dispose; the
//    engine deletes itself (no libuv handle left in the loop, LeakSanitizer clean); every
//    descriptor an input opened is closed when it returns.
//
// Input layout:
//   8 bytes of configuration:
//     0: bit 0 messages mode, bits 1-2 envelope (0-2, messages mode only), bits 3-4 policy
//        (pause, close, drop), bits 5-6 what JavaScript echoes without an envelope (bit 5 to
//        the other side, bit 6 to the sender), bit 7 small socket buffers (4 KiB)
//     1: max_frame_bytes (low nibble: 16 B..4 MiB, or 0), max_fragments (high nibble)
//     2: high_water (bits 0-2), channel_capacity (3-4), channel_bytes (5-7)
//     3: ping_ms (bits 0-1), timeout_ms (2-3), expires_in_ms (4-5), messages_per_second (6-7)
//     4: bit 0 bytes_per_second, then how the input ends: bit 1 close() (every session cut,
//        the events delivered), bit 2 both peers shut their writing side, bit 3 Destroy,
//        bit 4 Shutdown; bits 5/6 the client/upstream end is not read at first
//     5-6: the seed (chunk sizes, filler, mask keys)
//     7: bits 0-1 chunk sizes (up to 23, 300, 4096 bytes, or all at once), bit 2 large socket
//        buffers on our ends (2 MiB, as root: more than one read waits for the engine)
//   [n][n bytes]: the client's handshake tail (Adopt's client_head);
//   [n][n bytes]: the upstream's handshake tail (upstream_head);
//   then records, each a tag byte (kind = tag & 7, arg = tag >> 3) and its operands:
//     0 [n] bytes to the client end,  1 [n] bytes to the upstream end (n = arg, or 31 + next byte)
//     2 [b0][len]: a whole frame of filler (arg: bit 0 upstream, bit 1 wrong masking,
//       bits 2-4 payload pattern), up to 1 MiB (binary frames past 256 KiB stream)
//     3 [p]: a JavaScript call now, 4 [p]: the same call during the next delivery
//       (arg % 8: shutdown, fail, destroy, send, flow, sweep, close all, a refused adopt)
//     5: peers: arg bits 0/1 toggle reading the client/upstream end; with bit 4, close that
//       end instead; bits 2/3 shut the client/upstream end's writing side (after its input)
//     6: turn the loop arg + 1 times; with arg bit 4, hold the input back (or let it go)
//     7: the sweep, with the loop's clock moved on (heartbeats, expiry, lingers, close replies)
// Seeds: native/fuzz/corpus/engine/.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "../codec_abi.h"
#include "fuzz_check.h"
#include "../engine/engine.h"
#include "../engine/utf8_stream.h"
#include "../envelope.h"
#include "../frame.h"
#include "../utf8.h"

namespace {

using sluice_fuzz::VecCarry;

using sluice::CarryStore;
using sluice::FrameLimits;
using sluice::FrameParserCore;
using sluice::engine::Engine;
using sluice::engine::Event;
using sluice::engine::Params;
namespace desc = sluice::desc;


// engine.cc: binary frames over this size stream (transparent mode); all others are whole.
constexpr uint64_t kStreamMinBytes = 256 * 1024;
// Filler written per input, at most (a few large frames).
constexpr size_t kFillerBudget = 3 << 20;

uv_loop_t* Loop() {
  static uv_loop_t loop;
  static bool ready = false;
  if (!ready) {
    CHECK(uv_loop_init(&loop) == 0);
    ready = true;
  }
  return &loop;
}

using sluice_fuzz::LowestFreeFd;
using sluice_fuzz::OpenFds;
using sluice_fuzz::ValidWireCode;

uint64_t Fnv(uint64_t h, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}


struct Message {
  uint8_t op;
  uint64_t len;
  uint64_t hash;
  bool operator==(const Message& o) const { return op == o.op && len == o.len && hash == o.hash; }
};

// A WebSocket byte stream, parsed as it arrives: frames (FrameParserCore) and whole data
// messages; a header walker says whether the stream stops inside a frame, and which.
class WireStream {
 public:
  explicit WireStream(const FrameLimits& limits) : parser_(limits) {}
  virtual ~WireStream() = default;

  void Feed(const uint8_t* p, size_t n) {
    Walk(p, n);
    if (err_ != 0 || n == 0) return;
    scratch_.assign(p, p + n);
    size_t offset = 0;
    int32_t state[sluice::kStateWords];
    for (;;) {
      const int32_t rc = parser_.Parse(scratch_.data(), n, offset, desc_, kFrames, state, &store_);
      const uint32_t count = static_cast<uint32_t>(state[sluice::state::kCount]);
      for (uint32_t i = 0; i < count; i++) {
        const uint32_t* d = &desc_[i * sluice::kDescriptorWords];
        const uint8_t* src = (d[desc::kInfo] & desc::kCarry) ? store_.done() : scratch_.data() + d[desc::kOffset];
        Frame(d[desc::kInfo], src, d[desc::kLength]);
      }
      if (rc < 0) {
        err_ = -rc;
        OnError(err_);
        return;
      }
      if (state[sluice::state::kResume] < 0) return;
      offset = static_cast<size_t>(state[sluice::state::kResume]);
    }
  }
  int32_t error() const { return err_; }
  bool mid_frame() const { return hdr_len_ > 0 || left_ > 0; }
  uint64_t frame_length() const { return cur_len_; }
  uint8_t frame_opcode() const { return cur_op_; }
  uint64_t bytes() const { return bytes_; }

 protected:
  virtual void OnFrame(uint32_t info, const uint8_t* p, size_t n) = 0;
  virtual void OnMessage(const Message& m, const std::vector<uint8_t>& text) = 0;
  virtual void OnError(int32_t err) = 0;

 private:
  static constexpr uint32_t kFrames = 64;

  void Frame(uint32_t info, const uint8_t* p, size_t n) {
    OnFrame(info, p, n);
    const uint8_t op = info & desc::kOpcodeMask;
    if (op >= 0x8) return;
    if (op != 0) {
      msg_ = Message{op, 0, 0xcbf29ce484222325ull};
      text_.clear();
    }
    msg_.len += n;
    msg_.hash = Fnv(msg_.hash, p, n);
    if (msg_.op == sluice::opcode::kText) text_.insert(text_.end(), p, p + n);
    if (info & desc::kFin) OnMessage(msg_, text_);
  }

  // Where the stream is: inside a header (hdr_len_), or a payload (left_ bytes to come).
  void Walk(const uint8_t* p, size_t n) {
    bytes_ += n;
    while (n > 0) {
      if (left_ > 0) {
        const uint64_t take = left_ < n ? left_ : n;
        left_ -= take;
        p += take;
        n -= static_cast<size_t>(take);
        continue;
      }
      hdr_[hdr_len_++] = *p++;
      n--;
      if (hdr_len_ < 2) continue;
      const uint8_t len7 = hdr_[1] & 0x7f;
      const size_t need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((hdr_[1] & 0x80) ? 4 : 0);
      if (hdr_len_ < need) continue;
      uint64_t len = len7;
      if (len7 == 126) len = (static_cast<uint64_t>(hdr_[2]) << 8) | hdr_[3];
      if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++) len = (len << 8) | hdr_[2 + i];
      }
      cur_len_ = len;
      cur_op_ = hdr_[0] & 0x0f;
      left_ = len;
      hdr_len_ = 0;
    }
  }

  FrameParserCore parser_;
  VecCarry store_;
  std::vector<uint8_t> scratch_;
  uint32_t desc_[kFrames * sluice::kDescriptorWords];
  int32_t err_ = 0;
  Message msg_{0, 0, 0};
  std::vector<uint8_t> text_;
  uint8_t hdr_[14];
  size_t hdr_len_ = 0;
  uint64_t left_ = 0;
  uint64_t cur_len_ = 0;
  uint8_t cur_op_ = 0;
  uint64_t bytes_ = 0;
};

// What one side sent the engine (the bytes its socket took, after its handshake tail),
// parsed under the engine's own limits: the reference its partner's messages are matched to.
class Source final : public WireStream {
 public:
  explicit Source(const FrameLimits& l) : WireStream(l) {}
  std::deque<Message> messages;
  // Its first close frame (payload), and how many messages it sent before it; `tainted`: a
  // violation the parser does not see (UTF-8) came first, so the engine ended it otherwise.
  bool closed = false;
  std::vector<uint8_t> close_payload;
  uint64_t before_close = 0;
  bool tainted = false;

 protected:
  void OnFrame(uint32_t info, const uint8_t* p, size_t n) override {
    if (closed) return;
    const uint8_t op = info & desc::kOpcodeMask;
    if (op == sluice::opcode::kClose) {
      closed = true;
      close_payload.assign(p, p + n);
      before_close = total_;
      return;
    }
    if (op == sluice::opcode::kText) {
      text_ = true;
      utf8_.Reset();
    } else if (op == sluice::opcode::kBinary) {
      text_ = false;
    }
    if (op <= sluice::opcode::kBinary && text_ && !utf8_.Push(p, n, (info & desc::kFin) != 0)) tainted = true;
  }
  void OnMessage(const Message& m, const std::vector<uint8_t>&) override {
    messages.push_back(m);
    total_++;
  }
  void OnError(int32_t) override {}

 public:
  uint64_t total() const { return total_; }

 private:
  uint64_t total_ = 0;
  bool text_ = false;
  sluice::Utf8Stream utf8_;
};

FrameLimits OutputLimits(bool to_client) {
  FrameLimits l;
  l.server = !to_client;  // the upstream is a server: it expects masked frames
  l.max_frame_bytes = 64u << 20;
  l.max_message_bytes = 64u << 20;
  l.max_fragments = 1u << 30;
  return l;
}

// What the engine wrote towards one side.
class Output final : public WireStream {
 public:
  explicit Output(bool to_client) : WireStream(OutputLimits(to_client)), to_client_(to_client) {}
  // Messages are matched to the partner's (nullptr: not matched); prefix: none may be skipped.
  Source* match = nullptr;
  bool prefix = true;
  // Set when something other than the partner may end the session (JavaScript's calls, the
  // sweep, a reset): the partner's close no longer says that all its messages came first.
  const bool* disrupted = nullptr;
  const bool* partner_shut = nullptr;  // we ended the partner's side (a clean end: FIN)
  uint64_t frames = 0;
  uint64_t matched = 0;
  bool close_seen = false;
  int close_code = 0;

 protected:
  void OnFrame(uint32_t info, const uint8_t* p, size_t n) override {
    frames++;
    // Nothing follows a close frame (RFC 6455 5.5.1).
    CHECK(!close_seen);
    CHECK((info & (desc::kRsv1 | desc::kRsv2 | desc::kRsv3)) == 0);
    CHECK(((info & desc::kMasked) != 0) == !to_client_);
    const uint8_t op = info & desc::kOpcodeMask;
    if (op >= 0x8) {
      CHECK(info & desc::kFin);
      CHECK(n <= 125);
    }
    if (op == sluice::opcode::kClose) {
      close_seen = true;
      close_code = n >= 2 ? (p[0] << 8) | p[1] : 1005;
      CHECK(n != 1);
      if (n >= 2) {
        CHECK(ValidWireCode((p[0] << 8) | p[1]));
        CHECK(sluice::IsUtf8(p + 2, n - 2));
      }
      // The partner's own close, passed on, or the close that says its connection ended
      // (engine.cc OnEof): every message it sent before that came first.
      if (match != nullptr && prefix && !*disrupted && !match->tainted && match->error() == 0) {
        const std::vector<uint8_t> payload(p, p + n);
        if (match->closed && match->close_payload == payload) CHECK(matched == match->before_close);
        static const std::string kEnded[2] = {std::string("\x03\xe9" "client connection lost"),
                                              std::string("\x03\xf6" "upstream went away")};
        const std::string& ended = kEnded[to_client_ ? 1 : 0];
        if (!match->closed && *partner_shut && payload == std::vector<uint8_t>(ended.begin(), ended.end())) {
          CHECK(matched == match->total());
        }
      }
    }
  }
  void OnMessage(const Message& m, const std::vector<uint8_t>& text) override {
    if (m.op == sluice::opcode::kText) CHECK(sluice::IsUtf8(text.data(), text.size()));
    if (match == nullptr) return;
    std::deque<Message>& q = match->messages;
    while (!q.empty() && !(q.front() == m)) {
      CHECK(!prefix);  // a message of the partner went missing in between
      q.pop_front();
    }
    CHECK(!q.empty());  // a message the partner never sent
    q.pop_front();
    matched++;
  }
  void OnError(int32_t err) override {
    std::fprintf(stderr, "the engine's stream towards the %s broke the protocol: codec errno %d\n",
                 to_client_ ? "client" : "upstream", static_cast<int>(err));
    CHECK(err == 0);
  }

 private:
  bool to_client_;
};

struct Rng {
  uint32_t s;
  uint32_t Next() {
    s = s * 1103515245u + 12345u;
    return s >> 8;
  }
};

std::string Base64(const uint8_t* p, size_t n) {
  static const char* const a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < n; i += 3) {
    const uint32_t v = (p[i] << 16) | (p[i + 1] << 8) | p[i + 2];
    out += a[v >> 18];
    out += a[(v >> 12) & 63];
    out += a[(v >> 6) & 63];
    out += a[v & 63];
  }
  if (n - i == 1) {
    const uint32_t v = p[i] << 16;
    out += a[v >> 18];
    out += a[(v >> 12) & 63];
    out += "==";
  } else if (n - i == 2) {
    const uint32_t v = (p[i] << 16) | (p[i + 1] << 8);
    out += a[v >> 18];
    out += a[(v >> 12) & 63];
    out += a[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// envelope.ts decodeBase64Strict: 0 ok, else the close code (1007 bad, 1009 too big).
int Unbase64(const std::string& s, uint64_t max, std::string* out) {
  const size_t n = s.size();
  if (n % 4 != 0) return 1007;
  size_t pad = 0;
  if (n > 0 && s[n - 1] == '=') pad = s[n - 2] == '=' ? 2 : 1;
  if ((n / 4) * 3 - pad > max) return 1009;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n - pad; i++) {
    const char c = s[i];
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else return 1007;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return 1007;  // unused bits must be zero
  return 0;
}

const int kShutdownCodes[8] = {0, 1000, 1001, 1008, 1011, 1012, 3000, 4999};
const int kFailCodes[8] = {1002, 1003, 1007, 1008, 1009, 1011, 1013, 4000};
std::string Reason(int i) {
  switch (i & 3) {
    case 0: return "";
    case 1: return "say \"bye\"\\ \b\f\n\r\t\x01\x7f";  // escaped in an envelope v1 close
    case 2: return "going away: \xf0\x9f\x9a\xaa bye";
    default: return std::string(121, 'x') + "\xe2\x82\xac" + "yy";  // 126 bytes: cut at 121, not inside the euro sign
  }
}

struct Harness;
void Deliver(Harness* h);
void CallJs(Harness* h, int what, uint8_t p);

struct Harness {
  Engine* engine = nullptr;
  uint32_t id = 0;
  Params params;
  int echo = 0;  // messages mode without an envelope: 1 to the other side, 2 to the sender
  uv_check_t check;
  uv_idle_t idle;
  bool check_active = false;
  int peer[2] = {-1, -1};  // our ends: 0 the client's, 1 the upstream's
  bool reading[2] = {true, true};
  bool eof[2] = {false, false};   // the engine's writing side towards it ended (or was reset)
  bool shut[2] = {false, false};  // we shut its writing side
  bool shut_after[2] = {false, false};  // ... once its pending input is written
  std::string input[2];
  size_t input_at[2] = {0, 0};
  bool input_dead[2] = {false, false};
  Source* src[2];
  Output* out[2];
  // JavaScript's view of the session.
  bool ended = false;
  bool js_failed = false;
  bool closed_all = false;
  bool disrupted = false;  // see Output::disrupted
  uint64_t created = 0;    // uv_hrtime() when the engine was made
  int delivery_action = -1;
  uint8_t delivery_param = 0;
  int chunk_style = 0;
  uint64_t clock_offset = 0;  // how far the sweep's clock is ahead of the loop's
  bool hold = false;          // input is kept back (to go in at once, later)
  Rng rng{1};
  size_t filler = 0;
  std::vector<uint8_t> batch_bytes;
  std::vector<double> batch_desc;
};

// binding.cc Notify: the check handle delivers once this loop turn; the idle handle keeps
// the next poll from waiting.
void Notify(void* owner) {
  Harness* h = static_cast<Harness*>(owner);
  if (!h->check_active) {
    h->check_active = true;
    uv_check_start(&h->check, [](uv_check_t* c) { Deliver(static_cast<Harness*>(c->data)); });
    uv_idle_start(&h->idle, [](uv_idle_t*) {});
  }
}

void SendTo(Harness* h, bool to_client, uint8_t op, const std::string& s) {
  h->engine->Send(h->id, to_client, op, reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

void FailClient(Harness* h, int code, const char* reason) {
  h->js_failed = true;
  h->disrupted = true;
  h->engine->FailSide(h->id, true, code, reason, code == 1009 ? 1009 : 1001,
                      code == 1009 ? "client message over the size limit" : "client sent a malformed envelope");
}

// envelope-route.ts sendEnvelope for the client, v1 (JSON text) or v2 (binary).
void SendEnvelope(Harness* h, int type, int flags, const std::string& payload, const std::string& v1) {
  if (h->params.envelope == 2) {
    std::string m(8, '\0');
    sluice::EnvelopeHeader(reinterpret_cast<uint8_t*>(&m[0]), static_cast<uint8_t>(type), static_cast<uint8_t>(flags),
                           static_cast<uint32_t>(payload.size()));
    SendTo(h, true, sluice::opcode::kBinary, m + payload);
  } else {
    SendTo(h, true, sluice::opcode::kText, v1);
  }
}

bool StartsWith(const std::string& m, const char* head) { return m.compare(0, std::strlen(head), head) == 0; }

bool Between(const std::string& m, const char* head, const char* tail, std::string* mid) {
  const size_t a = std::strlen(head), b = std::strlen(tail);
  if (m.size() < a + b || m.compare(0, a, head) != 0 || m.compare(m.size() - b, b, tail) != 0) return false;
  *mid = m.substr(a, m.size() - a - b);
  return true;
}

// envelope-route.ts fromClient for v1, on the shapes encodeV1 writes (a stand-in for
// decodeEnvelope's JSON parse: anything else is malformed).
void V1FromClient(Harness* h, uint8_t op, const std::string& m) {
  if (op != sluice::opcode::kText) return FailClient(h, 1003, "malformed envelope");
  std::string mid, data;
  if (Between(m, "{\"type\":\"data\",\"data\":\"", "\"}", &mid)) {
    const int bad = Unbase64(mid, h->params.max_frame_bytes, &data);
    if (bad != 0) return FailClient(h, bad, bad == 1009 ? "envelope payload over the limit" : "invalid envelope payload");
    SendTo(h, false, sluice::opcode::kBinary, data);
  } else if (m == "{\"type\":\"ping\"}") {
    SendEnvelope(h, 3, 0, "", "{\"type\":\"pong\"}");
  } else if (Between(m, "{\"type\":\"ping\",\"data\":\"", "\"}", &mid)) {
    const int bad = Unbase64(mid, h->params.max_frame_bytes, &data);
    if (bad != 0) return FailClient(h, bad, "invalid envelope payload");
    SendEnvelope(h, 3, 0, data, "{\"type\":\"pong\",\"data\":\"" + mid + "\"}");
  } else if (Between(m, "{\"type\":\"close\",\"code\":", "}", &mid)) {
    size_t i = 0;
    int code = 0;
    while (i < mid.size() && i < 5 && mid[i] >= '0' && mid[i] <= '9') code = code * 10 + (mid[i++] - '0');
    std::string reason;
    if (i == 0 || !ValidWireCode(code)) return FailClient(h, 1002, "malformed envelope close");
    if (i < mid.size() && !Between(mid.substr(i), ",\"reason\":\"", "\"", &reason)) {
      return FailClient(h, 1002, "malformed envelope");
    }
    if (reason.find_first_of("\"\\") != std::string::npos || reason.size() > 123 ||
        !sluice::IsUtf8(reinterpret_cast<const uint8_t*>(reason.data()), reason.size())) {
      return FailClient(h, 1002, "malformed envelope");
    }
    h->engine->Shutdown(h->id, code, reason, code, reason, true);
  } else if (m == "{\"type\":\"close\"}") {
    FailClient(h, 1002, "malformed envelope close");
  } else if (StartsWith(m, "{\"type\":\"pong\"") || StartsWith(m, "{\"type\":\"error\"") ||
             StartsWith(m, "{\"type\":\"control\"")) {
    // the host's: counted, logged
  } else {
    FailClient(h, 1002, "malformed envelope");
  }
}

// One message of the batch, as NativeSession.onMessage takes it.
void OnMessage(Harness* h, bool from_client, uint8_t op, const uint8_t* p, size_t n) {
  if (h->ended || h->js_failed) return;
  const std::string m(reinterpret_cast<const char*>(p), n);
  if (h->params.envelope == 0) {
    if (h->echo & 1) SendTo(h, !from_client, op, m);
    if (h->echo & 2) SendTo(h, from_client, op, m);
    return;
  }
  if (!from_client) {
    // fromUpstream: one data envelope (final) for the client.
    SendEnvelope(h, 1, 0x04, m, "{\"type\":\"data\",\"data\":\"" + Base64(p, n) + "\",\"flags\":[\"final\"]}");
    return;
  }
  if (h->params.envelope == 1) return V1FromClient(h, op, m);
  // v2: the engine acts on data, ping, pong and close itself; JavaScript gets the rest.
  uint32_t d[4];
  CHECK(op == sluice::opcode::kBinary);
  CHECK(sluice::EnvelopeDecode(p, n, h->params.max_frame_bytes, d) == 0);
  CHECK(d[0] == 5 || d[0] == 6);
  if (d[0] == 6 && (d[3] < 2 || p[d[2]] != '{' || p[d[2] + d[3] - 1] != '}')) FailClient(h, 1007, "control frame is not JSON");
}

void OnEvent(Harness* h, const Event& e) {
  CHECK(e.id == h->id);
  CHECK(e.type == 1 || e.type == 2 || e.type == 7);
  if (e.type == 1) {
    CHECK(!h->ended);
    CHECK(e.closed_first >= 0 && e.closed_first <= 3);
    h->ended = true;
    return;
  }
  if (h->ended || h->params.envelope == 0) return;
  // envelope-route.ts backpressureSignal
  if (e.type == 2) {
    SendEnvelope(h, 6, 0x08, "{\"backpressure\":true,\"fill\":0.9}",
                 "{\"type\":\"control\",\"payload\":{\"backpressure\":true,\"fill\":0.9},\"flags\":[\"backpressure\"]}");
  } else {
    SendEnvelope(h, 6, 0, "{\"backpressure\":false}", "{\"type\":\"control\",\"payload\":{\"backpressure\":false}}");
  }
}

// binding.cc Deliver: events first, then the batch of messages.
void Deliver(Harness* h) {
  h->check_active = false;
  uv_check_stop(&h->check);
  uv_idle_stop(&h->idle);
  if (h->engine == nullptr) return;
  std::vector<Event> events;
  events.swap(h->engine->events());
  for (const Event& e : events) OnEvent(h, e);
  if (h->engine == nullptr || !h->engine->has_batch()) return;
  h->engine->BeginDelivery(&h->batch_bytes, &h->batch_desc);
  const std::vector<double>& d = h->batch_desc;
  CHECK(d.size() % 5 == 0 && !d.empty());
  size_t at = 0;
  for (size_t i = 0; i < d.size(); i += 5) {
    CHECK(d[i] == h->id);
    // A session that ended has no messages waiting (only close-all ends a session before its
    // messages went).
    CHECK(!h->ended || h->closed_all);
    CHECK(d[i + 1] == 0 || d[i + 1] == 1);
    CHECK(d[i + 2] == 1 || d[i + 2] == 2);
    CHECK(d[i + 3] == at);
    const size_t n = static_cast<size_t>(d[i + 4]);
    CHECK(at + n <= h->batch_bytes.size());
    CHECK(n <= h->params.max_frame_bytes);
    const uint8_t* p = h->batch_bytes.data() + at;
    if (d[i + 2] == 1) CHECK(sluice::IsUtf8(p, n));
    // v2: what the upstream sends is wrapped in the engine.
    CHECK(!(h->params.envelope == 2 && d[i + 1] == 0));
    OnMessage(h, d[i + 1] == 1, static_cast<uint8_t>(d[i + 2]), p, n);
    at += n;
  }
  CHECK(at == h->batch_bytes.size());
  if (h->delivery_action >= 0) {
    const int what = h->delivery_action;
    h->delivery_action = -1;
    CallJs(h, what, h->delivery_param);
  }
  h->engine->EndDelivery();
  h->batch_bytes.clear();
  h->batch_desc.clear();
}

std::string Filler(Harness* h, size_t n, bool text) {
  std::string s(n, 'a');
  const uint32_t seed = h->rng.Next();
  for (size_t i = 0; i < n; i++) s[i] = text ? static_cast<char>('a' + (i + seed) % 26) : static_cast<char>(i * 31 + seed);
  return s;
}

// A call from JavaScript.
void CallJs(Harness* h, int what, uint8_t p) {
  if (h->engine == nullptr) return;
  if (what != 3 && what != 4 && what != 7) h->disrupted = true;
  switch (what) {
    case 0:
      h->engine->Shutdown(h->id, kShutdownCodes[p & 7], Reason(p >> 3), kShutdownCodes[(p >> 5) & 7], Reason(p >> 5),
                          (p & 0x80) != 0);
      break;
    case 1:
      h->engine->FailSide(h->id, (p & 1) != 0, kFailCodes[(p >> 1) & 7], Reason(p >> 4), kFailCodes[(p >> 4) & 7],
                          Reason(p >> 6));
      break;
    case 2:
      h->engine->Destroy(h->id);
      break;
    case 3: {
      static const size_t kLens[8] = {0, 1, 125, 126, 1000, 65535, 65536, 200000};
      const bool to_client = (p & 1) != 0;
      const uint8_t op = (p & 2) ? sluice::opcode::kBinary : sluice::opcode::kText;
      const std::string s = Filler(h, kLens[(p >> 2) & 7], op == sluice::opcode::kText);
      // Not a message of the partner: that side's messages are no longer matched.
      if (h->engine->Send(h->id, to_client, op, reinterpret_cast<const uint8_t*>(s.data()), s.size())) {
        h->out[to_client ? 0 : 1]->match = nullptr;
      }
      break;
    }
    case 4: {
      double f[sluice::engine::Engine::kFlowSlots];
      if (h->engine->Flow(h->id, f)) {
        CHECK(f[0] == 0 || f[0] == 1);
        CHECK(f[1] == 0 || f[1] == 1);
        CHECK(f[2] >= 0 && f[3] >= 0);
      }
      break;
    }
    case 5:
      h->engine->Sweep();
      break;
    case 6:
      // binding.cc close(): every session cut, then the events delivered.
      h->closed_all = true;
      h->engine->CloseAll();
      CHECK(h->engine->sessions() == 0);
      break;
    default: {
      // Adopt refused: a descriptor that is not open, or one epoll cannot watch; nothing
      // changes and nothing leaks.
      const int bad = (p & 1) ? open("/dev/null", O_RDONLY | O_CLOEXEC) : 1 << 20;
      const int good = h->peer[0] >= 0 ? h->peer[0] : bad;
      const size_t before = h->engine->sessions();
      std::string error;
      const uint32_t id = (p & 2) ? h->engine->Adopt(good, bad, nullptr, 0, nullptr, 0, h->params, &error)
                                  : h->engine->Adopt(bad, good, nullptr, 0, nullptr, 0, h->params, &error);
      CHECK(id == 0 && !error.empty());
      CHECK(h->engine->sessions() == before);
      if (p & 1) close(bad);
      break;
    }
  }
}

// Reads what the engine wrote towards one side, until the socket is dry.
size_t Drain(Harness* h, int side) {
  if (h->peer[side] < 0 || !h->reading[side] || h->eof[side]) return 0;
  static uint8_t buf[64 * 1024];
  size_t got = 0;
  for (;;) {
    const ssize_t r = recv(h->peer[side], buf, sizeof buf, MSG_DONTWAIT);
    if (r > 0) {
      h->out[side]->Feed(buf, static_cast<size_t>(r));
      got += static_cast<size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    h->eof[side] = true;  // the end, or a reset
    break;
  }
  return got;
}

size_t Turn(Harness* h) {
  // The engine's own sweep runs every second: past that, it may have ended the session.
  if (uv_hrtime() - h->created > 900 * 1000 * 1000ull) h->disrupted = true;
  uv_run(Loop(), UV_RUN_NOWAIT);
  return Drain(h, 0) + Drain(h, 1);
}

size_t ChunkLength(Harness* h, size_t left) {
  const uint32_t r = h->rng.Next();
  size_t len;
  switch (h->chunk_style) {
    case 0: len = 1 + r % 23; break;
    case 1: len = 1 + r % 300; break;
    case 2: len = 1 + r % 4096; break;
    default: return left;  // as much as the socket takes
  }
  if (left > 16384 && (r & 0x10000)) len = 1 + r % 65536;
  return len < left ? len : left;
}

void ShutPeer(Harness* h, int side) {
  if (h->peer[side] < 0 || h->shut[side]) return;
  shutdown(h->peer[side], SHUT_WR);
  h->shut[side] = true;
}

// Its writing side shut now, or (input still pending) right after the input.
void ShutPeerAfterInput(Harness* h, int side) {
  if (h->input[side].empty()) ShutPeer(h, side);
  else h->shut_after[side] = true;
}

// One chunk of a side's pending input into its socket (the bytes the socket takes are that
// side's stream). Returns the bytes written.
size_t WriteChunk(Harness* h, int side) {
  std::string& in = h->input[side];
  if (h->hold || h->input_at[side] >= in.size() || h->peer[side] < 0 || h->shut[side] || h->input_dead[side]) return 0;
  const size_t len = ChunkLength(h, in.size() - h->input_at[side]);
  const uint8_t* p = reinterpret_cast<const uint8_t*>(in.data()) + h->input_at[side];
  const ssize_t w = send(h->peer[side], p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  size_t done = 0;
  if (w > 0) {
    h->src[side]->Feed(p, static_cast<size_t>(w));
    h->input_at[side] += static_cast<size_t>(w);
    done = static_cast<size_t>(w);
  } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    h->input_dead[side] = true;  // the engine closed that socket
  }
  if (h->input_at[side] == in.size()) {
    in.clear();
    h->input_at[side] = 0;
    if (h->shut_after[side]) ShutPeer(h, side);  // the FIN right behind the bytes
  }
  return done;
}

// Up to `chunks` chunks, from either side in a pseudo-random order, the loop turning after
// most of them (sometimes both sides' bytes wait for one turn). Returns the bytes written.
size_t WriteSome(Harness* h, int chunks) {
  size_t total = 0;
  for (int i = 0; i < chunks && !(h->input[0].empty() && h->input[1].empty()); i++) {
    const uint32_t r = h->rng.Next();
    int side = r & 1;
    if (h->input[side].empty()) side ^= 1;
    const size_t n = WriteChunk(h, side);
    total += n;
    if (n > 0 && (r & 6) != 0) Turn(h);
  }
  return total;
}

// Turns the loop, reading both ends and writing what is left, until nothing moves.
bool Settle(Harness* h, int max_rounds) {
  int quiet = 0;
  for (int i = 0; i < max_rounds; i++) {
    size_t moved = WriteSome(h, 4);
    moved += Turn(h);
    double f[sluice::engine::Engine::kFlowSlots] = {0, 0, 0, 0};
    const bool live = h->engine != nullptr && h->engine->Flow(h->id, f);
    const bool busy = moved > 0 || h->check_active || (live && (f[2] > 0 || f[3] > 0));
    quiet = busy ? 0 : quiet + 1;
    if (quiet >= 3) return true;
  }
  return false;
}


void ClosePeer(Harness* h, int side) {
  if (h->peer[side] < 0) return;
  close(h->peer[side]);
  h->peer[side] = -1;
}

std::string MakeFrame(Harness* h, uint8_t b0, uint64_t n, bool masked, int pattern) {
  std::string payload;
  switch (pattern) {
    case 0: payload = Filler(h, n, true); break;
    case 1: payload.assign(n, '\0'); break;
    case 2: payload = Filler(h, n, false); break;
    case 3: {
      static const char kUtf8[] = "\xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9e";  // é € 𝄞
      for (uint64_t i = 0; i < n; i++) payload += kUtf8[i % 9];
      break;
    }
    case 4: {  // an envelope v2 data frame
      payload = Filler(h, n, false);
      if (n >= 8) sluice::EnvelopeHeader(reinterpret_cast<uint8_t*>(&payload[0]), 1, 0, static_cast<uint32_t>(n - 8));
      break;
    }
    case 5: {  // an envelope v1 data message
      const size_t k = n > 25 ? ((n - 25) / 4) * 4 : 0;
      payload = "{\"type\":\"data\",\"data\":\"" + std::string(k, 'Q') + "\"}";
      n = payload.size();
      break;
    }
    case 6: {  // an envelope v2 control or error frame
      const std::string json = "{\"a\":" + std::string(n > 6 ? n - 6 : 0, '1') + "}";
      payload.assign(8, '\0');
      sluice::EnvelopeHeader(reinterpret_cast<uint8_t*>(&payload[0]), (n & 1) ? 5 : 6, 0, static_cast<uint32_t>(json.size()));
      payload += json;
      n = payload.size();
      break;
    }
    default:
      payload = n < 16 ? "{\"type\":\"ping\"}" : "{\"type\":\"close\",\"code\":1000,\"reason\":\"bye\"}";
      n = payload.size();
      break;
  }
  uint8_t key[4] = {0, 0, 0, 0};
  if (masked) {
    const uint32_t r = h->rng.Next();
    for (int i = 0; i < 4; i++) key[i] = static_cast<uint8_t>((r >> (i * 6)) ^ (0x5a + i));
  }
  uint8_t hdr[sluice::kMaxFrameHeaderBytes];
  // WriteFrameHeader takes fin/rsv1 apart: b0 gives opcode, FIN, RSV1 (RSV2/3 by hand).
  size_t hn = sluice::WriteFrameHeader(hdr, b0 & 0x0f, n, (b0 & 0x80) != 0, (b0 & 0x40) != 0, masked ? key : nullptr);
  hdr[0] |= b0 & 0x30;
  if (masked) {
    for (uint64_t i = 0; i < n; i++) payload[i] = static_cast<char>(payload[i] ^ key[i & 3]);
  }
  return std::string(reinterpret_cast<char*>(hdr), hn) + payload;
}

const uint64_t kMaxFrame[16] = {16,    60,    125,    126,    200,     1000,    4096,    16384,
                                65535, 65536, 70000, 262144, 300000, 1 << 20, 4 << 20, 0};
const uint64_t kFragments[16] = {1024, 1, 2, 3, 4, 5, 8, 16, 100, 1024, 0, 1, 2, 1 << 20, 7, 1024};
const uint64_t kHighWater[8] = {1, 16, 125, 1000, 4096, 16384, 65536, 1 << 20};
const uint64_t kCapacity[4] = {100, 1, 2, 5};
const uint64_t kChannelBytes[8] = {4 << 20, 1, 64, 1000, 4096, 16384, 65536, 1 << 20};
const uint64_t kPingMs[4] = {30000, 0, 1000, 5000};
const uint64_t kTimeoutMs[4] = {60000, 0, 1000, 30000};
const double kExpiresMs[4] = {0, 0.5, 1000, 5000};
const double kRate[4] = {0, 1, 10, 1000};
const uint64_t kJumps[16] = {0, 1, 999, 1000, 1001, 1999, 2000, 2001, 3000, 3001, 5000, 30000, 30001, 61001, 61002, 100000};
const uint64_t kBigLengths[16] = {125,   126,   127,    200,    1000,   4095,    4096, 65535,
                                  65536, 70000, 262144, 262145, 300000, 1 << 20, 16,   0};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 10) return 0;
  uv_loop_t* loop = Loop();
  const uint64_t started = uv_hrtime();
  // Descriptors are compared within the input: libFuzzer's own come and go between inputs
  // (the symbolizer it starts to print a new function keeps two pipes open).
  const int base_fd = LowestFreeFd();
  const int base_fds = OpenFds();

  Harness h;
  Params& p = h.params;
  const uint8_t c0 = data[0], c1 = data[1], c2 = data[2], c3 = data[3], c4 = data[4];
  p.mode = c0 & 1;
  p.envelope = p.mode == 1 ? ((c0 >> 1) & 3) % 3 : 0;
  p.policy = ((c0 >> 3) & 3) % 3;
  h.echo = (c0 >> 5) & 3;
  const bool small_buffers = (c0 & 0x80) != 0;
  const bool large_buffers = (data[7] & 4) != 0;
  p.max_frame_bytes = kMaxFrame[c1 & 15];
  p.max_fragments = kFragments[c1 >> 4];
  p.high_water = kHighWater[c2 & 7];
  p.channel_capacity = kCapacity[(c2 >> 3) & 3];
  p.channel_bytes = kChannelBytes[c2 >> 5];
  p.ping_ms = kPingMs[c3 & 3];
  p.timeout_ms = kTimeoutMs[(c3 >> 2) & 3];
  p.expires_in_ms = kExpiresMs[(c3 >> 4) & 3];
  p.messages_per_second = kRate[c3 >> 6];
  p.bytes_per_second = (c4 & 1) ? 1000 : 0;
  const bool end_close_all = (c4 & 2) != 0;
  const bool end_shut_peers = (c4 & 4) != 0;
  const bool end_destroy = (c4 & 8) != 0;
  const bool end_shutdown = (c4 & 16) != 0;
  h.reading[0] = (c4 & 32) == 0;
  h.reading[1] = (c4 & 64) == 0;
  h.rng.s = data[5] | (data[6] << 8) | 1u << 24;
  h.chunk_style = data[7] & 3;
  size_t at = 8;

  // The handshakes' tails.
  std::string head[2];
  for (int side = 0; side < 2 && at < size; side++) {
    size_t n = data[at++];
    if (n > size - at) n = size - at;
    head[side].assign(reinterpret_cast<const char*>(data + at), n);
    at += n;
  }

  FrameLimits client_limits;  // the engine's cursor limits (LimitsOf)
  client_limits.server = true;
  client_limits.max_frame_bytes = p.max_frame_bytes;
  client_limits.max_message_bytes = p.max_frame_bytes;
  client_limits.max_fragments = p.max_fragments;
  FrameLimits upstream_limits = client_limits;
  upstream_limits.server = false;
  Source src_client(client_limits), src_upstream(upstream_limits);
  Output out_client(true), out_upstream(false);
  h.src[0] = &src_client;
  h.src[1] = &src_upstream;
  h.out[0] = &out_client;
  h.out[1] = &out_upstream;
  // Whose messages each side gets: its partner's, when nothing else is sent to it.
  const bool relays = p.mode == 0 || (p.envelope == 0 && h.echo == 1);
  if (relays) {
    out_client.match = &src_upstream;
    out_upstream.match = &src_client;
  }
  out_client.prefix = out_upstream.prefix = p.policy != 2;
  out_client.disrupted = out_upstream.disrupted = &h.disrupted;
  out_client.partner_shut = &h.shut[1];
  out_upstream.partner_shut = &h.shut[0];
  // Rate limits end a session from the engine's clock.
  if (p.messages_per_second > 0 || p.bytes_per_second > 0) h.disrupted = true;

  // The engine, as `new Engine(...)` makes it.
  h.engine = new Engine(loop, &h, &Notify);
  h.created = uv_hrtime();
  uv_check_init(loop, &h.check);
  h.check.data = &h;
  uv_idle_init(loop, &h.idle);
  uv_unref(reinterpret_cast<uv_handle_t*>(&h.idle));

  int client_pair[2], upstream_pair[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, client_pair) == 0);
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, upstream_pair) == 0);
  if (small_buffers) {
    const int size_bytes = 4096;
    for (int fd : {client_pair[0], client_pair[1], upstream_pair[0], upstream_pair[1]}) {
      setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size_bytes, sizeof size_bytes);
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size_bytes, sizeof size_bytes);
    }
  }
  if (large_buffers) {
    // More than the engine reads at once can wait in its sockets (its fairness cap, a full
    // batch). Past net.core.wmem_max only as root; else the default stays.
    const int size_bytes = 2 << 20;
    for (int fd : {client_pair[1], upstream_pair[1]}) {
      if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size_bytes, sizeof size_bytes) != 0) {
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size_bytes, sizeof size_bytes);
      }
    }
  }
  h.peer[0] = client_pair[1];
  h.peer[1] = upstream_pair[1];
  src_client.Feed(reinterpret_cast<const uint8_t*>(head[0].data()), head[0].size());
  src_upstream.Feed(reinterpret_cast<const uint8_t*>(head[1].data()), head[1].size());
  std::string error;
  h.id = h.engine->Adopt(client_pair[0], upstream_pair[0], reinterpret_cast<const uint8_t*>(head[0].data()), head[0].size(),
                         reinterpret_cast<const uint8_t*>(head[1].data()), head[1].size(), p, &error);
  CHECK(h.id != 0);
  // Adopt took copies.
  close(client_pair[0]);
  close(upstream_pair[0]);
  CHECK(h.engine->sessions() == 1);

  // The records.
  while (at < size) {
    const uint8_t tag = data[at++];
    const int kind = tag & 7;
    const int arg = tag >> 3;
    switch (kind) {
      case 0:
      case 1: {
        size_t n = static_cast<size_t>(arg);
        if (arg == 31 && at < size) n += data[at++];
        if (n > size - at) n = size - at;
        h.input[kind].append(reinterpret_cast<const char*>(data + at), n);
        at += n;
        break;
      }
      case 2: {
        if (size - at < 2) {
          at = size;
          break;
        }
        const uint8_t b0 = data[at];
        const uint8_t lc = data[at + 1];
        at += 2;
        const int side = arg & 1;
        const bool masked = (side == 0) != ((arg & 2) != 0);
        const uint64_t n = lc < 200 ? lc : kBigLengths[(lc - 200) & 15];
        if (h.filler + n > kFillerBudget) break;
        h.filler += n;
        h.input[side] += MakeFrame(&h, b0, n, masked, arg >> 2);
        break;
      }
      case 3:
      case 4: {
        const uint8_t param = at < size ? data[at++] : 0;
        if (kind == 3) CallJs(&h, arg & 7, param);
        else {
          h.delivery_action = arg & 7;
          h.delivery_param = param;
        }
        break;
      }
      case 5:
        for (int side = 0; side < 2; side++) {
          if (!(arg & (1 << side))) continue;
          if (arg & 16) {
            ClosePeer(&h, side);
            h.disrupted = true;  // a reset: what the engine had not read yet is lost
          }
          else h.reading[side] = !h.reading[side];
        }
        if (arg & 4) ShutPeerAfterInput(&h, 0);
        if (arg & 8) ShutPeerAfterInput(&h, 1);
        break;
      case 6:
        if (arg & 16) h.hold = !h.hold;
        else for (int i = 0; i <= arg; i++) Turn(&h);
        break;
      default: {
        // The sweep at a later time: the loop's clock (what uv_now reads) moved on for the
        // call, by all the jumps so far (it never goes back). The kick it may arm is due at
        // that time: the ready list runs now instead, as the kick would next turn.
        if (h.engine == nullptr) break;
        h.disrupted = true;
        h.clock_offset += kJumps[arg & 15];
        const uint64_t saved = loop->time;
        loop->time += h.clock_offset;
        h.engine->Sweep();
        loop->time = saved;
        Turn(&h);
        if (h.engine != nullptr) h.engine->RunReady();
        break;
      }
    }
    WriteSome(&h, 8);
    Turn(&h);
  }

  // The end: everything read from now on; what is left of the input goes in.
  h.reading[0] = h.reading[1] = true;
  h.hold = false;
  if (h.chunk_style < 2) h.chunk_style = 2;  // the rest in larger chunks: it settles sooner
  bool settled = Settle(&h, 400);
  if (settled) {
    // An open connection is never left inside a frame, except a large binary one that still
    // streams from its sender (transparent mode).
    for (int side = 0; side < 2; side++) {
      if (h.peer[side] < 0 || h.eof[side] || !h.out[side]->mid_frame()) continue;
      CHECK(p.mode == 0);
      CHECK(h.out[side]->frame_length() > kStreamMinBytes);
      CHECK(h.out[side]->frame_opcode() == sluice::opcode::kBinary ||
            h.out[side]->frame_opcode() == sluice::opcode::kContinuation);
    }
  }
  if (end_shutdown) {
    CallJs(&h, 0, 0x42);
    settled = Settle(&h, 100);
  }
  if (end_shut_peers || end_destroy) {
    if (end_shut_peers) {
      ShutPeer(&h, 0);
      ShutPeer(&h, 1);
    }
    if (end_destroy) CallJs(&h, 2, 0);
    settled = Settle(&h, 400);
    // Both peers ended, or Destroy: the session ends without waiting for a timer, and
    // JavaScript heard of it.
    if (settled) {
      CHECK(h.engine->sessions() == 0);
      CHECK(h.ended);
    }
  }
  if (end_close_all) {
    CallJs(&h, 6, 0);
    Deliver(&h);
  }
  h.engine->Dispose();
  CHECK(h.engine->sessions() == 0);
  h.engine = nullptr;  // it deletes itself once its handles closed
  uv_check_stop(&h.check);
  uv_idle_stop(&h.idle);
  uv_close(reinterpret_cast<uv_handle_t*>(&h.check), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&h.idle), nullptr);
  for (int i = 0; i < 100 && uv_loop_alive(loop); i++) uv_run(loop, UV_RUN_NOWAIT);
  int handles = 0;
  uv_walk(loop, [](uv_handle_t*, void* arg) { ++*static_cast<int*>(arg); }, &handles);
  CHECK(handles == 0);
  CHECK(!uv_loop_alive(loop));

  // What the engine wrote before its descriptors closed (a cut may leave a frame unfinished).
  h.reading[0] = h.reading[1] = true;
  Drain(&h, 0);
  Drain(&h, 1);
  ClosePeer(&h, 0);
  ClosePeer(&h, 1);
  static const bool trace = std::getenv("SLUICE_FUZZ_TRACE") != nullptr;
  if (trace) {
    std::fprintf(stderr,
                 "engine_fuzz: mode %d envelope %d policy %d echo %d | in client %llu upstream %llu | out client %llu B "
                 "%llu frames (%llu matched, close %d) upstream %llu B %llu frames (%llu matched, close %d) | "
                 "ended %d settled %d | %.2f ms\n",
                 p.mode, p.envelope, p.policy, h.echo, (unsigned long long)src_client.bytes(),
                 (unsigned long long)src_upstream.bytes(), (unsigned long long)out_client.bytes(),
                 (unsigned long long)out_client.frames, (unsigned long long)out_client.matched, out_client.close_code,
                 (unsigned long long)out_upstream.bytes(), (unsigned long long)out_upstream.frames,
                 (unsigned long long)out_upstream.matched, out_upstream.close_code, h.ended, settled,
                 static_cast<double>(uv_hrtime() - started) / 1e6);
  }
  CHECK(LowestFreeFd() == base_fd);
  CHECK(OpenFds() == base_fds);
  return 0;
}
