// libFuzzer target: the tunnel's native link (native/tunnel/mux.h: one yamux session over one
// WebSocket connection, on a libuv loop) and its byte walker (native/tunnel/yamux_reader.h),
// on real sockets, as the N-API layer (native/tunnel/binding.cc) and native-link.ts drive it.
// One input is one Mux on a fresh uv_loop_t: its link is one end of a socketpair (Start dups
// it; the harness closes its copy) and the harness is the peer on the other end. The harness
// writes WebSocket frames into the link (its own, or raw bytes) in pseudo-random chunks while
// the loop turns (UV_RUN_NOWAIT); events are delivered once per loop turn through LoopTurn
// (the check handle binding.cc uses) to a stand-in for JavaScript, which swaps events() out
// and acts after them, as Deliver and native-link.ts do (Deliver on a stream's line is called
// in the middle of the batch, as onLine does); JavaScript's calls are also made between
// turns. Streams are bound to one end of a fresh socketpair (dup'd, or owned by the mux), or
// dialed (Dial) to a listener of the harness on 127.0.0.1 (or to a closed port, a listener
// whose queue is full until the 5 ms timeout, not an address); the harness holds the other
// end (writes into it, reads it, shuts its writing side, closes it).
//
// The harness parses both directions itself (a WebSocket walker and a yamux walker written
// here, not FrameCursor or YamuxReader). What it sent is parsed as it is queued (the model:
// the mux reads a prefix of it, in order); what the mux wrote is parsed as it is read back.
// A stream's data from the harness is its first line (up to the first newline, 4 KiB at
// most, else the mux resets the stream), then the rest.
//
// Oracle, on what the mux writes on the link (after the greeting, byte for byte):
//  - WebSocket frames, FIN set, no RSV bit, minimal lengths, masked iff ws_client, opcodes
//    binary/text/ping/pong/close only, control frames <= 125 bytes; one close frame at most
//    and nothing after it, its payload never 1 byte, a code valid on the wire (RFC 6455 7.4)
//    and a UTF-8 reason; texts are JavaScript's SendText in order, pings are JavaScript's
//    (empty), pongs answer the harness's pings in order with their payload;
//  - the binary payloads are whole yamux frames (version 0, types 0-3, each message ends on a
//    frame boundary); pings are ACKs of the harness's SYN pings, in order, with their value;
//    go-aways are JavaScript's code or 1 (protocol error), on stream 0; SYN only on this
//    side's parity, once, in Open's order, for ids Open returned; ACK once per SYN of the
//    harness; no frame on a stream before its SYN/ACK or after its RST, no data after its FIN;
//    RST only for a stream JavaScript reset, a bound or dialed stream, a line too long, or a
//    refused SYN (the stream limit was reached, as far as the harness can tell, or GoAway or
//    Close was called); FIN only after End, or for a bound stream whose socket the harness
//    shut or closed;
//  - flow control: the data bytes on a stream never pass the window the harness granted
//    (256 KiB per SYN plus the deltas of every window update it sent for that id), and no
//    data frame is larger than max_frame;
//  - the data bytes on a stream are, in order, Open's line, JavaScript's writes, Dial's ok
//    line (only once connected: never when the dial fails), then the bytes written into its
//    socket (exactly all of them once FIN comes after End, or after the socket's end was
//    shut); what the harness sends on a bound stream after its line comes out of the socket
//    in order, after Bind's head, less what JavaScript was given (exactly, with EOF, once
//    kEvBoundEnd code 0 comes, or when a FIN was passed and the loop settled);
// and on events:
//  - kEvLine carries the stream's line, once; kEvData carries exactly what the harness sent
//    after it, in order, and only once JavaScript called Deliver (all of it at kEvFin, and
//    when the loop settled); kEvText, kEvGoAway in the order sent; kEvStream only for the
//    harness's SYNs; kEvDialFailed only for a dial in progress; no event for a stream after
//    its reset or bound end (events already queued when JavaScript reset it aside), none of
//    data/fin for a bound stream; kEvDrain only after Write returned false;
//  - one kEvClosed at most and nothing after it (Dispose clears what is queued); its code,
//    reason and error explain themselves: the harness's close frame, its end of the link cut,
//    Terminate, a WebSocket violation the harness's own walker saw first (1002 or 1009), or a
//    yamux violation that the harness did send (each message of mux.cc's ProtocolError is
//    matched to the frames that can cause it); streams() is 0 then;
//  - Open fails after GoAway, Close, a delivered kEvGoAway or kEvClosed, and says "too many"
//    only when the streams JavaScript opened and did not see end reach max_streams;
//  - after Dispose the loop has no handle left (uv_loop_close returns 0), LeakSanitizer is
//    clean, and every descriptor the input opened is closed.
//
// Input layout:
//   5 bytes of configuration:
//     0: bit 0 ws_client, bit 1 yamux_client, bits 2-3 window, bits 4-5 max_window, bit 6 small
//        link buffers (4 KiB), bit 7 JavaScript does not dispose on kEvClosed
//     1: bits 0-2 max_streams (65536, 1, 2, 3, 4, 8, 1, 2), bits 3-5 max_frame, bits 6-7
//        max_message
//     2: bits 0-1 high_water, bits 2-3 chunk sizes (up to 23, 300, 4096 bytes, or all at
//        once), bits 4-5 how the input ends (settle; Close and the harness answers it;
//        Terminate; the harness shuts its writing side), bit 6 JavaScript consumes what it
//        gets, bit 7 JavaScript delivers each stream on its line
//     3-4: the seed (chunk sizes, filler, mask keys)
//   [n][n bytes]: the greeting (Start's, sent first);  [n][n bytes]: Start's head (read already)
//   then records, a tag byte (kind = tag & 7, arg = tag >> 3) and its operands:
//     0 [n bytes]: raw bytes into the link (n = arg, or 31 + next byte)
//     1: a yamux frame into the harness's yamux buffer, sent as one binary message unless
//        arg bit 3 (hold it for the next ones); arg & 7: 0 data, 1 window update, 2 ping,
//        3 go away, 4 data past the window, 5 a bad version, 6 a bad type [flags][sel][len]
//        (flags: bits 0-3 SYN ACK FIN RST, bit 4 an unknown flag, data: bit 5 a short line
//        first, bit 6 text without a newline); 7 [n][n bytes] arbitrary yamux bytes
//     2: the yamux buffer as one message: arg bits 0-1 fragments - 1, bit 2 wrong masking, bit
//        3 a ping between fragments, bit 4 as a text message
//     3 [len]: arg & 7: 0 ping, 1 pong, 2 close (code and reason from len), 3 text, 4 text in
//        two fragments around a ping, 5 [b0] any first byte, 6 close with 1 byte, 7 an empty
//        binary frame; arg bit 3 wrong masking
//     4 [a][b]: a JavaScript call (arg & 15: Open (b: its line), Write, End, Reset, Consume,
//        Bind (b: head, small buffers, owned), SendText, Ping, GoAway, Close, Terminate,
//        Dispose, Open+Write(+End), Dial (b & 3 where, b >> 2 its ok line), Deliver, a large
//        Write); stream a (of those JavaScript knows; >= 0xf0 an unknown id), b the size or
//        code; arg bit 4: made during the next delivery instead
//     5 [sel]: a bound socket's other end (arg & 7: 0 [len] write, 1 toggle reading, 2 shut
//        its writing side after its pending bytes, 3 close, 4 [idx] write a large amount,
//        5 read now)
//     6: arg < 16: turn the loop arg + 1 times; 16 toggle reading the link, 17 toggle holding
//        the link's input, 18 shut the link's writing side after its input, 19 close our end
//        of the link, 20 settle
//     7: JavaScript's policies, toggled: arg bit 0 consuming, 1 binding streams on their line,
//        2 disposing on kEvClosed, 3 delivering on the line, 4 dialing on the line
//   Stream selectors (sel): < 0x60 a stream the harness knows, 0x60-0x9f a new id of the
//   harness's parity, 0xa0-0xbf the last id Open returned, 0xc0-0xcf the id Open returns
//   next, 0xd0-0xff the id sel - 0xd0.
// Seeds: native/fuzz/corpus/mux/ (python3 native/fuzz/make-mux-seeds.py native/fuzz/corpus/mux).
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "../loop_turn.h"
#include "../tunnel/mux.h"

namespace {

using sluice::LoopTurn;
using sluice::tunnel::Mux;
using sluice::tunnel::MuxEvent;
using sluice::tunnel::MuxOptions;
namespace tn = sluice::tunnel;

constexpr uint64_t kWin = 256 * 1024;   // yamux's initial window
constexpr size_t kBudget = 4u << 20;    // filler bytes per input, at most
constexpr uint16_t kSyn = 1, kAck = 2, kFin = 4, kRst = 8;
const std::string kFailed = "the tunnel's connection failed: ";

// Its first runs found six faults in mux.cc, fixed since; their inputs are seeds
// (corpus/mux/regress-*). SLUICE_FUZZ_TRACE=1: a summary per input on stderr; 2: also every record and event.
int TraceLevel() {
  static const int level = [] {
    const char* e = std::getenv("SLUICE_FUZZ_TRACE");
    return e == nullptr ? 0 : e[0] == '2' ? 2 : 1;
  }();
  return level;
}

using sluice_fuzz::LowestFreeFd;
using sluice_fuzz::OpenFds;
using sluice_fuzz::ValidWireCode;

bool Utf8(const uint8_t* p, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c = p[i];
    size_t k;
    uint32_t cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) {
      k = 1;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      k = 2;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      k = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i - 1 < k) return false;
    for (size_t j = 1; j <= k; j++) {
      if ((p[i + j] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i + j] & 0x3f);
    }
    if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += k + 1;
  }
  return true;
}

uint32_t Be32(const uint8_t* p) {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) | (static_cast<uint32_t>(p[2]) << 8) | p[3];
}

struct Rng {
  uint32_t s;
  uint32_t Next() {
    s = s * 1103515245u + 12345u;
    return s >> 8;
  }
};

// ---------------------------------------------------------------- walkers (written here)

struct WsFrame {
  uint8_t b0 = 0;
  uint8_t l7 = 0;  // the 7-bit length field
  uint8_t op = 0;
  bool fin = false;
  bool masked = false;
  bool minimal = true;  // the shortest length encoding
  uint8_t key[4] = {0, 0, 0, 0};
  uint64_t len = 0;
};

// A WebSocket byte stream cut into frames (RFC 6455 5.2), payload unmasked.
class WsWalker {
 public:
  virtual ~WsWalker() = default;
  void Feed(const uint8_t* p, size_t n) {
    while (n > 0) {
      if (!in_payload_) {
        hdr_[hl_++] = *p++;
        n--;
        if (hl_ < 2) continue;
        const uint8_t l7 = hdr_[1] & 0x7f;
        const bool masked = (hdr_[1] & 0x80) != 0;
        const size_t need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + (masked ? 4 : 0);
        if (hl_ < need) continue;
        WsFrame f;
        f.b0 = hdr_[0];
        f.l7 = l7;
        f.op = hdr_[0] & 0x0f;
        f.fin = (hdr_[0] & 0x80) != 0;
        f.masked = masked;
        f.len = l7;
        size_t at = 2;
        if (l7 == 126) {
          f.len = (static_cast<uint64_t>(hdr_[2]) << 8) | hdr_[3];
          f.minimal = f.len >= 126;
          at = 4;
        } else if (l7 == 127) {
          f.len = 0;
          for (int i = 0; i < 8; i++) f.len = (f.len << 8) | hdr_[2 + i];
          f.minimal = f.len > 0xffff;
          at = 10;
        }
        if (masked) std::memcpy(f.key, hdr_ + at, 4);
        hl_ = 0;
        cur_ = f;
        got_ = 0;
        Start(cur_);
        if (cur_.len == 0) End();
        else in_payload_ = true;
        continue;
      }
      const size_t take = static_cast<size_t>(std::min<uint64_t>(cur_.len - got_, n));
      tmp_.assign(p, p + take);
      if (cur_.masked) {
        for (size_t i = 0; i < take; i++) tmp_[i] ^= cur_.key[(got_ + i) & 3];
      }
      got_ += take;
      p += take;
      n -= take;
      const bool last = got_ == cur_.len;
      if (last) in_payload_ = false;
      Payload(tmp_.data(), take);
      if (last) End();
    }
  }
  bool mid_frame() const { return hl_ > 0 || in_payload_; }

 protected:
  virtual void Start(const WsFrame& f) = 0;
  virtual void Payload(const uint8_t* p, size_t n) = 0;
  virtual void End() = 0;
  WsFrame cur_;

 private:
  uint8_t hdr_[14];
  size_t hl_ = 0;
  bool in_payload_ = false;
  uint64_t got_ = 0;
  std::vector<uint8_t> tmp_;
};

struct YFrame {
  uint8_t version = 0;
  uint8_t type = 0;
  uint16_t flags = 0;
  uint32_t stream = 0;
  uint32_t length = 0;
};

// A yamux byte stream cut into frames: 12-byte headers, data frames' payload after theirs.
class YamuxWalker {
 public:
  virtual ~YamuxWalker() = default;
  void Feed(const uint8_t* p, size_t n) {
    while (n > 0) {
      if (left_ > 0) {
        const size_t take = static_cast<size_t>(std::min<uint64_t>(left_, n));
        left_ -= take;
        Data(p, take);
        p += take;
        n -= take;
        if (left_ == 0) DataEnd();
        continue;
      }
      h_[hl_++] = *p++;
      n--;
      if (hl_ < 12) continue;
      hl_ = 0;
      YFrame f;
      f.version = h_[0];
      f.type = h_[1];
      f.flags = static_cast<uint16_t>((h_[2] << 8) | h_[3]);
      f.stream = Be32(h_ + 4);
      f.length = Be32(h_ + 8);
      Header(f);
      if (f.type == 0) {
        left_ = f.length;
        if (left_ == 0) DataEnd();
      }
    }
  }
  bool at_boundary() const { return hl_ == 0 && left_ == 0; }

 protected:
  virtual void Header(const YFrame& f) = 0;
  virtual void Data(const uint8_t* p, size_t n) = 0;
  virtual void DataEnd() = 0;

 private:
  uint8_t h_[12];
  size_t hl_ = 0;
  uint64_t left_ = 0;
};

// ---------------------------------------------------------------- the harness

enum JsState { kJsUnknown, kJsLive, kJsBound, kJsDead };

// Everything about one stream id: what the harness sent on it, what the mux sent, what
// JavaScript knows, and its bound socket.
struct Sid {
  uint32_t id = 0;
  // More than one life possible (the harness opened it twice, or sent on this side's id before
  // Open returned it): no lifecycle or content checks; windows are still summed.
  bool chaotic = false;
  // The harness's side (its frames, as the mux reads them).
  int syns = 0;
  bool started = false;    // its data counts (after the harness's SYN, or Open)
  bool peer_fin = false;
  bool peer_rst = false;
  std::string line;        // its first line (the mux reads it apart: kEvLine)
  int line_state = 0;      // 0 being read, 1 done, 2 too long (the mux resets the stream)
  std::string in;          // the data after the line, until the FIN or RST
  uint64_t peer_sent = 0;  // data bytes sent since it started (the mux's window)
  uint64_t known_window = kWin;  // the mux's grants the harness has read
  uint64_t deltas = 0;     // window updates the harness sent
  bool refusable = false;  // at its SYN, the streams possibly alive had reached max_streams
  // What the mux sent.
  bool mux_syn = false;
  int mux_acks = 0;
  bool mux_fin = false;
  bool mux_rst = false;
  bool refused = false;
  uint64_t mux_data = 0;
  std::string out_expected;  // JavaScript's writes, then what went into the bound socket
  uint64_t out_seen = 0;
  bool out_chaotic = false;  // written to after Bind: the order is the mux's to pick
  // JavaScript.
  int js = kJsUnknown;
  bool js_opened = false;
  uint64_t delivered = 0;
  uint64_t held = 0;
  bool js_fin = false;
  bool js_end = false;
  bool js_reset = false;
  bool want_drain = false;
  bool dead_event = false;  // kEvReset or kEvBoundEnd delivered
  bool ever_bound = false;
  bool line_delivered = false;
  bool delivering = false;  // Deliver called, or the dial failed: its bytes come as kEvData
  bool content_unknown = false;  // the dial failed: what was held is gone (by how much: unknown)
  bool dialing = false;     // Dial returned true, no outcome delivered yet
  bool dialed = false;
  bool dial_failed = false;
  bool dial_hangs = false;  // to a listener that never answers (the timeout ends it)
  uint64_t dial_at = 0;
  size_t dial_ok_at = 0;    // where Dial's ok starts in out_expected
  int listener = -1;        // the service's listening socket (Dial)
  int stale = 0;            // events queued when JavaScript reset it
  // Bound: the socket's other end (ours).
  int sock = -1;
  std::string head;
  uint64_t bind_delivered = 0;
  uint64_t sock_got = 0;
  bool sock_eof = false;
  bool sock_reading = true;
  bool sock_shut = false;
  bool sock_shut_after = false;
  bool sock_closed = false;
  bool sock_in_dead = false;
  std::string sock_in;
  size_t sock_in_at = 0;
  int bound_end_code = -1;
  double bound_end_out = 0;
};

struct Harness;

// What the harness sent, read as the mux reads it (the model).
class PeerYamux final : public YamuxWalker {
 public:
  Harness* h = nullptr;

 protected:
  void Header(const YFrame& f) override;
  void Data(const uint8_t* p, size_t n) override;
  void DataEnd() override;

 private:
  Sid* capture_ = nullptr;
  Sid* data_sid_ = nullptr;
  uint16_t data_flags_ = 0;
};

class PeerWs final : public WsWalker {
 public:
  Harness* h = nullptr;
  PeerYamux y;
  int first_error = 0;  // the first violation: 1 protocol (1002), 2 too big (1009)

 protected:
  void Start(const WsFrame& f) override;
  void Payload(const uint8_t* p, size_t n) override;
  void End() override;

 private:
  bool in_message_ = false;
  uint64_t msg_bytes_ = 0;
  uint8_t msg_op_ = 0;
  std::string ctl_, text_;
};

// What the mux wrote.
class MuxYamux final : public YamuxWalker {
 public:
  Harness* h = nullptr;

 protected:
  void Header(const YFrame& f) override;
  void Data(const uint8_t* p, size_t n) override;
  void DataEnd() override;

 private:
  Sid* data_sid_ = nullptr;
  uint16_t data_flags_ = 0;
};

class MuxWs final : public WsWalker {
 public:
  Harness* h = nullptr;
  MuxYamux y;
  bool close_done = false;
  uint64_t frames = 0;

 protected:
  void Start(const WsFrame& f) override;
  void Payload(const uint8_t* p, size_t n) override;
  void End() override;

 private:
  std::string buf_;
};

struct Call {
  int what;
  uint8_t a, b;
};

struct Harness {
  uv_loop_t loop;
  Mux* mux = nullptr;
  LoopTurn* turn = nullptr;
  bool requested = false;
  MuxOptions opt;
  uint64_t max_frame = 0;  // as mux.cc clamps it
  bool ws_client = false;
  bool yamux_client = false;
  int chunk_style = 0;
  Rng rng{1};
  size_t budget = 0;
  // JavaScript's policies.
  bool auto_consume = false;
  bool auto_deliver = false;
  bool auto_bind = false;
  bool auto_dial = false;
  bool dispose_on_closed = true;
  std::vector<int> blockers;  // Dial's listeners that never answer, and what fills them
  std::vector<Call> at_delivery;
  // The link: our end, what waits to go into it.
  int link = -1;
  bool link_reading = true;
  bool link_eof = false;
  bool link_shut = false;
  bool link_shut_after = false;
  bool link_closed = false;
  bool link_in_dead = false;
  bool hold = false;
  std::string link_in;
  size_t link_in_at = 0;
  std::string greeting;
  size_t greeting_seen = 0;
  std::string ybuf;  // yamux bytes for the next binary message
  PeerWs model;
  MuxWs out;
  // Streams.
  std::map<uint32_t, Sid> sids;
  std::vector<uint32_t> order;   // ids in the order the harness met them
  std::vector<uint32_t> js_ids;  // ids JavaScript knows
  std::vector<uint32_t> socks;   // bound ids (their socket's other end is ours)
  uint32_t next_mux_id = 0;
  uint32_t next_syn_expected = 0;
  uint32_t next_peer_id = 0;
  uint32_t last_opened = 0;
  // What the harness sent that comes back, or may explain an end.
  std::set<std::string> allowed;  // yamux violations the harness sent (mux.cc's messages)
  std::vector<std::string> peer_pings;
  size_t pongs = 0;
  std::vector<uint32_t> peer_ypings;
  size_t yping_acks = 0;
  std::vector<uint32_t> peer_goaways;
  size_t goaways_delivered = 0;
  std::vector<std::string> peer_texts;
  size_t texts_delivered = 0;
  bool peer_close = false;
  int peer_close_code = 0;
  size_t peer_close_len = 0;  // its payload's length (1 is a violation of its own)
  std::string peer_close_reason;
  // JavaScript's calls.
  std::vector<std::string> js_texts;
  size_t texts_seen = 0;
  int js_pings = 0;
  int mux_pings = 0;
  bool js_goaway = false;
  uint32_t js_goaway_code = 0;
  int mux_goaways = 0;
  bool js_close = false;
  bool js_terminate = false;
  bool disposed = false;
  // Events.
  bool closed_delivered = false;
  bool goaway_delivered = false;
  int deliveries = 0;
};

bool MuxParity(const Harness* h, uint32_t id) { return (id & 1) == (h->yamux_client ? 1u : 0u); }

Sid& S(Harness* h, uint32_t id) {
  auto r = h->sids.try_emplace(id);
  if (r.second) {
    r.first->second.id = id;
    h->order.push_back(id);
  }
  return r.first->second;
}

// The streams of the harness's parity the mux may still hold (an over-count: only those
// proven gone are left out).
uint32_t InboundAlive(Harness* h) {
  uint32_t n = 0;
  for (auto& kv : h->sids) {
    const Sid& s = kv.second;
    if (MuxParity(h, s.id) || s.syns == 0) continue;
    if (!s.chaotic && (s.peer_rst || s.line_state == 2 || s.js_reset || s.dead_event || s.refused)) continue;
    n++;
  }
  return n;
}

uint32_t OutboundAlive(Harness* h) {
  uint32_t n = 0;
  for (auto& kv : h->sids) {
    const Sid& s = kv.second;
    if (!s.js_opened || s.js_reset || s.dead_event) continue;
    n++;
  }
  return n;
}

std::string Filler(Harness* h, size_t n, bool text) {
  std::string s(n, 'a');
  const uint32_t seed = h->rng.Next();
  for (size_t i = 0; i < n; i++) {
    s[i] = text ? static_cast<char>('a' + (i + seed) % 26) : static_cast<char>((i * 131 + seed + (i >> 8) * 7) & 0xff);
  }
  return s;
}

bool Spend(Harness* h, uint64_t n) {
  if (h->budget + n > kBudget) return false;
  h->budget += static_cast<size_t>(n);
  return true;
}

// ---------------------------------------------------------------- the model (what we sent)

void PeerWs::Start(const WsFrame& f) {
  const bool control = f.op >= 8;
  if (first_error == 0) {
    // FrameCursor's rules, in its order (frame.h), with the mux's limits: the first violation.
    int err = 0;
    if ((f.op >= 3 && f.op <= 7) || f.op >= 11) err = 1;
    else if (f.b0 & 0x70) err = 1;
    else if (control && !f.fin) err = 1;
    else if (f.op == 0 && !in_message_) err = 1;
    else if ((f.op == 1 || f.op == 2) && in_message_) err = 1;
    else if (f.masked == h->ws_client) err = 1;  // the WebSocket server takes masked frames only
    else if (control && f.l7 > 125) err = 1;
    else if (f.l7 == 127 && (f.len >> 63) != 0) err = 1;
    else if (f.len > h->opt.max_message) err = 2;
    else if (!control) {
      const uint64_t bytes = f.op == 0 ? msg_bytes_ + f.len : f.len;
      if (bytes > h->opt.max_message) {
        err = 2;
      } else {
        msg_bytes_ = bytes;
        in_message_ = !f.fin;
      }
    }
    if (err != 0) {
      first_error = err;
      h->allowed.insert(err == 2 ? "message too big" : "websocket protocol error");
    }
  }
  ctl_.clear();
  if (f.op == 1 || f.op == 2) {
    msg_op_ = f.op;
    if (f.op == 1) text_.clear();
  }
}

void PeerWs::Payload(const uint8_t* p, size_t n) {
  if (cur_.op >= 8) {
    if (ctl_.size() < 256) ctl_.append(reinterpret_cast<const char*>(p), std::min<size_t>(n, 256));
    return;
  }
  if (msg_op_ == 2) y.Feed(p, n);
  else if (text_.size() < (8u << 20)) text_.append(reinterpret_cast<const char*>(p), n);
}

void PeerWs::End() {
  if (cur_.op == 9) {
    h->peer_pings.push_back(ctl_);
  } else if (cur_.op == 8) {
    if (!h->peer_close) {
      h->peer_close = true;
      h->peer_close_code = 1005;
      h->peer_close_len = ctl_.size();
      h->peer_close_reason.clear();
      if (ctl_.size() >= 2) {
        h->peer_close_code = (static_cast<uint8_t>(ctl_[0]) << 8) | static_cast<uint8_t>(ctl_[1]);
        h->peer_close_reason = ctl_.substr(2);
      }
    }
  } else if (cur_.op < 8 && msg_op_ != 2 && cur_.fin) {
    h->peer_texts.push_back(text_);
    text_.clear();
  }
}

void PeerYamux::Header(const YFrame& f) {
  capture_ = nullptr;
  data_sid_ = nullptr;
  const std::string id = std::to_string(f.stream);
  if (f.version != 0) h->allowed.insert("unsupported yamux version " + std::to_string(f.version));
  switch (f.type) {
    case 0:
    case 1: {
      if (f.stream == 0) {
        h->allowed.insert("stream frame on stream 0");
        return;
      }
      Sid& s = S(h, f.stream);
      const bool mine = MuxParity(h, f.stream);  // the mux's parity
      // Before Open returned it, the mux may or may not know this id when the frame arrives.
      if (mine && f.stream >= h->next_mux_id) s.chaotic = true;
      if (f.flags & kSyn) {
        if (s.syns > 0 || mine) {
          h->allowed.insert("stream " + id + " opened twice");
          s.chaotic = true;
        }
        if (mine) h->allowed.insert("stream " + id + " has this side's parity");
        s.refusable = InboundAlive(h) >= h->opt.max_streams;
        s.syns++;
        if (!mine) s.started = true;
      }
      if (f.type == 1) {
        s.deltas += f.length;
        if (s.started && !s.peer_rst && s.line_state != 2) {
          if (f.flags & kRst) s.peer_rst = true;
          else if (f.flags & kFin) s.peer_fin = true;
        }
        return;
      }
      if (s.chaotic || (s.started && s.peer_sent + f.length > s.known_window)) {
        h->allowed.insert("stream " + id + " sent " + std::to_string(f.length) + " bytes past its window");
      }
      if (s.started) s.peer_sent += f.length;
      data_sid_ = &s;
      data_flags_ = f.flags;
      if (s.started && !s.peer_fin && !s.peer_rst && s.line_state != 2) capture_ = &s;
      return;
    }
    case 2:
      if (f.stream != 0) h->allowed.insert("ping on a stream");
      else if (f.flags & kSyn) h->peer_ypings.push_back(f.length);
      return;
    case 3:
      if (f.stream != 0) h->allowed.insert("go away on a stream");
      else h->peer_goaways.push_back(f.length);
      return;
    default:
      h->allowed.insert("unknown yamux frame type " + std::to_string(f.type));
      return;
  }
}

void PeerYamux::Data(const uint8_t* p, size_t n) {
  Sid* s = capture_;
  if (s == nullptr) return;
  if (s->line_state == 0) {
    // mux.cc OnData: the bytes before the first newline are the line (kMaxLine at most).
    const uint8_t* nl = static_cast<const uint8_t*>(std::memchr(p, '\n', n));
    const size_t take = nl != nullptr ? static_cast<size_t>(nl - p) : n;
    if (s->line.size() + take > tn::kMaxLine) {
      s->line_state = 2;  // the mux resets the stream: nothing more of it counts
      capture_ = nullptr;
      return;
    }
    s->line.append(reinterpret_cast<const char*>(p), take);
    if (nl == nullptr) return;
    s->line_state = 1;
    p += take + 1;
    n -= take + 1;
  }
  s->in.append(reinterpret_cast<const char*>(p), n);
}

void PeerYamux::DataEnd() {
  Sid* s = data_sid_;
  data_sid_ = nullptr;
  capture_ = nullptr;
  if (s == nullptr || !s->started || s->peer_rst || s->line_state == 2) return;
  if (data_flags_ & kRst) s->peer_rst = true;
  else if (data_flags_ & kFin) s->peer_fin = true;
}

// ---------------------------------------------------------------- what the mux wrote

void MuxWs::Start(const WsFrame& f) {
  if (close_done) std::fprintf(stderr, "mux_fuzz: a frame (opcode %d) after the close frame\n", f.op);
  CHECK(!close_done);  // nothing after a close frame
  frames++;
  CHECK(f.fin);
  CHECK((f.b0 & 0x70) == 0);
  CHECK(f.op == 1 || f.op == 2 || f.op == 8 || f.op == 9 || f.op == 10);
  CHECK(f.masked == h->ws_client);
  CHECK(f.minimal);
  if (f.op >= 8) CHECK(f.len <= 125);
  if (f.op == 2) CHECK(f.len >= 12);
  if (f.op == 1) CHECK(f.len <= (2u << 20));
  buf_.clear();
}

void MuxWs::Payload(const uint8_t* p, size_t n) {
  if (cur_.op == 2) y.Feed(p, n);
  else buf_.append(reinterpret_cast<const char*>(p), n);
}

void MuxWs::End() {
  switch (cur_.op) {
    case 2:
      CHECK(y.at_boundary());  // whole yamux frames per message
      break;
    case 1:
      CHECK(h->texts_seen < h->js_texts.size());
      CHECK(buf_ == h->js_texts[h->texts_seen]);
      h->texts_seen++;
      break;
    case 9:
      CHECK(buf_.empty());
      CHECK(++h->mux_pings <= h->js_pings);
      break;
    case 10:
      CHECK(h->pongs < h->peer_pings.size());
      CHECK(buf_ == h->peer_pings[h->pongs]);
      h->pongs++;
      break;
    default: {
      close_done = true;
      CHECK(buf_.size() != 1);
      if (buf_.size() >= 2) {
        const int code = (static_cast<uint8_t>(buf_[0]) << 8) | static_cast<uint8_t>(buf_[1]);
        if (!ValidWireCode(code)) std::fprintf(stderr, "mux_fuzz: close code %d on the wire\n", code);
        CHECK(ValidWireCode(code));
        const bool utf8 = Utf8(reinterpret_cast<const uint8_t*>(buf_.data()) + 2, buf_.size() - 2);
        if (!utf8) {
          std::fprintf(stderr, "mux_fuzz: a close reason that is not UTF-8 (%d, %zu bytes, ends", code, buf_.size() - 2);
          for (size_t i = buf_.size() > 8 ? buf_.size() - 6 : 2; i < buf_.size(); i++) std::fprintf(stderr, " %02x", static_cast<uint8_t>(buf_[i]));
          std::fprintf(stderr, ")\n");
        }
        CHECK(utf8);
      }
      break;
    }
  }
}

// A FIN or RST from the mux on s (at the end of the frame that carries it).
void MuxFlags(Harness* h, Sid& s, uint16_t flags) {
  const bool mine = MuxParity(h, s.id);
  if (flags & kRst) {
    if (!s.chaotic) {
      CHECK(!s.mux_rst);
      const bool refusal = !mine && s.mux_acks == 0 && s.syns > 0 && (s.refusable || h->js_goaway || h->js_close);
      const bool why = s.js_reset || s.ever_bound || s.dialed || refusal || s.line_state == 2;
      if (!why) std::fprintf(stderr, "mux_fuzz: RST on stream %u from nowhere\n", s.id);
      CHECK(why);
    }
    if (!mine && s.mux_acks == 0) s.refused = true;
    s.mux_rst = true;
    return;
  }
  if (flags & kFin) {
    if (!s.chaotic) {
      CHECK(!s.mux_fin);
      const bool joined = s.ever_bound || (s.dialed && !s.dial_failed);
      CHECK(s.js_end || (joined && (s.sock_shut || s.sock_closed)));
      // Everything written before the FIN went: JavaScript's writes (after End), or those and
      // the socket's bytes (the socket's end came).
      const bool exact = !s.out_chaotic && ((!joined && s.js_end) || (joined && !s.js_end));
      if (exact && s.out_seen != s.out_expected.size()) {
        std::fprintf(stderr, "mux_fuzz: stream %u FIN after %llu of %zu bytes\n", s.id,
                     static_cast<unsigned long long>(s.out_seen), s.out_expected.size());
      }
      if (exact) CHECK(s.out_seen == s.out_expected.size());
    }
    s.mux_fin = true;
  }
}

void MuxYamux::Header(const YFrame& f) {
  data_sid_ = nullptr;
  CHECK(f.version == 0);
  CHECK(f.type <= 3);
  CHECK((f.flags & ~0xfu) == 0);
  if (f.type == 2) {
    CHECK(f.stream == 0);
    CHECK(f.flags == kAck);
    CHECK(h->yping_acks < h->peer_ypings.size());
    CHECK(f.length == h->peer_ypings[h->yping_acks]);
    h->yping_acks++;
    return;
  }
  if (f.type == 3) {
    CHECK(f.stream == 0);
    CHECK(f.flags == 0);
    CHECK(++h->mux_goaways <= 2);
    CHECK(f.length == tn::kGoAwayProtocol || (h->js_goaway && f.length == h->js_goaway_code));
    return;
  }
  CHECK(f.stream != 0);
  Sid& s = S(h, f.stream);
  const bool mine = MuxParity(h, f.stream);
  if (f.flags & kSyn) {
    CHECK(mine);
    CHECK(f.type == 1);
    CHECK(!(f.flags & kAck));
    CHECK(!s.mux_syn);
    CHECK(f.stream == h->next_syn_expected);  // in Open's order
    CHECK(f.stream < h->next_mux_id);         // an id Open returned
    h->next_syn_expected += 2;
    s.mux_syn = true;
  }
  if (f.flags & kAck) {
    CHECK(!mine);
    CHECK(s.mux_acks < s.syns);
    s.mux_acks++;
  }
  if (f.flags & kRst) {
    CHECK(f.type == 1 && f.length == 0);
  } else if (!s.chaotic) {
    CHECK(s.mux_syn || s.mux_acks > 0);  // opened
    CHECK(!s.mux_rst);
  }
  if (f.type == 1) {
    s.known_window += f.length;
    MuxFlags(h, s, f.flags);
    return;
  }
  // Data.
  CHECK(f.length > 0 && f.length <= h->max_frame);
  if (!s.chaotic && s.mux_fin) std::fprintf(stderr, "mux_fuzz: stream %u: data after its FIN\n", s.id);
  if (!s.chaotic) CHECK(!s.mux_fin);
  s.mux_data += f.length;
  const uint64_t granted = kWin * (1 + static_cast<uint64_t>(s.syns)) + s.deltas;
  if (s.mux_data > granted) {
    std::fprintf(stderr, "mux_fuzz: stream %u: %llu data bytes sent, %llu granted\n", s.id,
                 static_cast<unsigned long long>(s.mux_data), static_cast<unsigned long long>(granted));
  }
  CHECK(s.mux_data <= granted);  // flow control
  data_sid_ = &s;
  data_flags_ = f.flags;
}

void MuxYamux::Data(const uint8_t* p, size_t n) {
  Sid& s = *data_sid_;
  if (!s.chaotic && !s.out_chaotic) {
    CHECK(s.out_seen + n <= s.out_expected.size());  // bytes nobody wrote
    CHECK(s.out_expected.compare(s.out_seen, n, reinterpret_cast<const char*>(p), n) == 0);
  }
  s.out_seen += n;
}

void MuxYamux::DataEnd() {
  Sid* s = data_sid_;
  data_sid_ = nullptr;
  if (s != nullptr && (data_flags_ & (kFin | kRst))) MuxFlags(h, *s, data_flags_);
}

// ---------------------------------------------------------------- sockets

size_t ChunkLength(Harness* h, size_t left) {
  const uint32_t r = h->rng.Next();
  size_t len;
  switch (h->chunk_style) {
    case 0: len = 1 + r % 23; break;
    case 1: len = 1 + r % 300; break;
    case 2: len = 1 + r % 4096; break;
    default: return left;
  }
  if (left > 16384 && (r & 0x10000)) len = 1 + r % 65536;
  return len < left ? len : left;
}

// Bytes of the bound socket's other end, against Bind's head and the stream's data after
// what JavaScript had been given.
void CheckSockBytes(Sid& s, const uint8_t* p, size_t n) {
  if (!s.chaotic && !s.content_unknown) {
    const uint64_t total = s.head.size() + (s.in.size() - s.bind_delivered);
    CHECK(s.bind_delivered <= s.in.size());
    CHECK(s.sock_got + n <= total);
    for (size_t i = 0; i < n; i++) {
      const uint64_t o = s.sock_got + i;
      const char want = o < s.head.size() ? s.head[o] : s.in[s.bind_delivered + (o - s.head.size())];
      CHECK(static_cast<char>(p[i]) == want);
    }
  }
  s.sock_got += n;
}

size_t DrainSock(Harness* h, Sid& s, bool force) {
  if (s.sock < 0 || s.sock_closed || s.sock_eof || (!s.sock_reading && !force)) return 0;
  static uint8_t buf[64 * 1024];
  size_t got = 0;
  for (;;) {
    const ssize_t r = recv(s.sock, buf, sizeof buf, MSG_DONTWAIT);
    if (r > 0) {
      CheckSockBytes(s, buf, static_cast<size_t>(r));
      got += static_cast<size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    s.sock_eof = true;  // the end, or a reset
    break;
  }
  (void)h;
  return got;
}

size_t WriteSock(Harness* h, Sid& s) {
  if (s.sock < 0 || s.sock_closed || s.sock_shut || s.sock_in_dead || s.sock_in_at >= s.sock_in.size()) return 0;
  const size_t len = ChunkLength(h, s.sock_in.size() - s.sock_in_at);
  const char* p = s.sock_in.data() + s.sock_in_at;
  const ssize_t w = send(s.sock, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  size_t done = 0;
  if (w > 0) {
    s.out_expected.append(p, static_cast<size_t>(w));  // the stream's bytes, in this order
    s.sock_in_at += static_cast<size_t>(w);
    done = static_cast<size_t>(w);
  } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    s.sock_in_dead = true;  // the mux closed its end
  }
  if (s.sock_in_at == s.sock_in.size()) {
    s.sock_in.clear();
    s.sock_in_at = 0;
    if (s.sock_shut_after && !s.sock_shut) {
      shutdown(s.sock, SHUT_WR);
      s.sock_shut = true;
    }
  }
  return done;
}

size_t DrainLink(Harness* h) {
  if (h->link < 0 || h->link_closed || !h->link_reading || h->link_eof) return 0;
  static uint8_t buf[64 * 1024];
  size_t got = 0;
  for (;;) {
    const ssize_t r = recv(h->link, buf, sizeof buf, MSG_DONTWAIT);
    if (r > 0) {
      size_t at = 0;
      while (at < static_cast<size_t>(r) && h->greeting_seen < h->greeting.size()) {
        CHECK(static_cast<char>(buf[at]) == h->greeting[h->greeting_seen]);
        at++;
        h->greeting_seen++;
      }
      h->out.Feed(buf + at, static_cast<size_t>(r) - at);
      got += static_cast<size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    h->link_eof = true;
    break;
  }
  return got;
}

size_t WriteLink(Harness* h) {
  if (h->hold || h->link < 0 || h->link_closed || h->link_shut || h->link_in_dead) return 0;
  size_t done = 0;
  if (h->link_in_at < h->link_in.size()) {
    const size_t len = ChunkLength(h, h->link_in.size() - h->link_in_at);
    const ssize_t w = send(h->link, h->link_in.data() + h->link_in_at, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w > 0) {
      h->link_in_at += static_cast<size_t>(w);
      done = static_cast<size_t>(w);
    } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      h->link_in_dead = true;
    }
  }
  if (h->link_in_at == h->link_in.size()) {
    h->link_in.clear();
    h->link_in_at = 0;
    if (h->link_shut_after && !h->link_shut) {
      shutdown(h->link, SHUT_WR);
      h->link_shut = true;
    }
  }
  return done;
}

size_t WriteSome(Harness* h) {
  size_t n = WriteLink(h);
  for (uint32_t id : h->socks) n += WriteSock(h, h->sids[id]);
  return n;
}

size_t Turn(Harness* h) {
  uv_run(&h->loop, UV_RUN_NOWAIT);
  size_t n = DrainLink(h);
  for (uint32_t id : h->socks) {
    Sid& s = h->sids[id];
    if (s.listener >= 0 && s.sock < 0) {
      // The service (Dial's listener): its one connection is the mux's.
      const int c = accept4(s.listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c >= 0) {
        s.sock = c;
        close(s.listener);
        s.listener = -1;
      }
    }
    n += DrainSock(h, s, false);
  }
  return n;
}

// A dial to a listener that never answers, not failed yet (its timeout is 5 ms).
bool Hanging(Harness* h) {
  if (h->mux == nullptr) return false;
  for (uint32_t id : h->socks) {
    const Sid& s = h->sids[id];
    if (s.dialing && s.dial_hangs && uv_hrtime() - s.dial_at < 100 * 1000 * 1000ull) return true;
  }
  return false;
}

// Up to `chunks` chunks of what waits, the loop turning after most of them.
size_t WriteChunks(Harness* h, int chunks) {
  size_t total = 0;
  for (int i = 0; i < chunks; i++) {
    const size_t n = WriteSome(h);
    if (n == 0) break;
    total += n;
    if (h->rng.Next() & 6) Turn(h);
  }
  return total;
}

// Turns the loop, writing what waits and reading what comes, until nothing moves.
bool Settle(Harness* h, int max_rounds) {
  int quiet = 0;
  for (int i = 0; i < max_rounds; i++) {
    const bool hanging = Hanging(h);
    if (hanging) usleep(500);
    const size_t moved = WriteSome(h) + Turn(h);
    if (moved > 0 || h->requested || hanging) quiet = 0;
    else if (++quiet >= 3) return true;
  }
  return false;
}

// What goes into the link: its bytes are walked by the model as they are queued.
void AppendLink(Harness* h, const std::string& bytes) {
  h->link_in += bytes;
  h->model.Feed(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

std::string MakeFrame(Harness* h, uint8_t b0, const std::string& payload, bool masked) {
  std::string f;
  f.push_back(static_cast<char>(b0));
  const uint8_t m = masked ? 0x80 : 0;
  const uint64_t n = payload.size();
  if (n < 126) {
    f.push_back(static_cast<char>(m | n));
  } else if (n <= 0xffff) {
    f.push_back(static_cast<char>(m | 126));
    f.push_back(static_cast<char>(n >> 8));
    f.push_back(static_cast<char>(n));
  } else {
    f.push_back(static_cast<char>(m | 127));
    for (int b = 7; b >= 0; b--) f.push_back(static_cast<char>(n >> (8 * b)));
  }
  if (!masked) return f + payload;
  const uint32_t r = h->rng.Next() ^ (h->rng.Next() << 8);
  uint8_t key[4];
  for (int i = 0; i < 4; i++) key[i] = static_cast<uint8_t>(r >> (8 * i));
  f.append(reinterpret_cast<const char*>(key), 4);
  std::string body = payload;
  for (size_t i = 0; i < body.size(); i++) body[i] = static_cast<char>(body[i] ^ key[i & 3]);
  return f + body;
}

// The mux, as the WebSocket server, takes masked frames.
bool Masked(const Harness* h, bool wrong) { return (!h->ws_client) != wrong; }

void Flush(Harness* h, int fragments, bool wrong, bool ping_between, bool as_text) {
  if (h->ybuf.empty()) return;
  std::string all;
  all.swap(h->ybuf);
  size_t at = 0;
  for (int i = 0; i < fragments; i++) {
    const bool last = i == fragments - 1 || at == all.size();
    size_t n = all.size() - at;
    if (!last) n = std::min<size_t>(n, h->rng.Next() % (n + 1));
    const uint8_t op = i == 0 ? (as_text ? 1 : 2) : 0;
    AppendLink(h, MakeFrame(h, static_cast<uint8_t>((last ? 0x80 : 0) | op), all.substr(at, n), Masked(h, wrong)));
    at += n;
    if (last) break;
    if (ping_between) AppendLink(h, MakeFrame(h, 0x89, "between", Masked(h, false)));
  }
}

void PutY(std::string* out, uint8_t version, uint8_t type, uint16_t flags, uint32_t stream, uint32_t length) {
  const uint8_t b[12] = {version,
                         type,
                         static_cast<uint8_t>(flags >> 8),
                         static_cast<uint8_t>(flags),
                         static_cast<uint8_t>(stream >> 24),
                         static_cast<uint8_t>(stream >> 16),
                         static_cast<uint8_t>(stream >> 8),
                         static_cast<uint8_t>(stream),
                         static_cast<uint8_t>(length >> 24),
                         static_cast<uint8_t>(length >> 16),
                         static_cast<uint8_t>(length >> 8),
                         static_cast<uint8_t>(length)};
  out->append(reinterpret_cast<const char*>(b), 12);
}

uint32_t PickStream(Harness* h, uint8_t sel) {
  if (sel < 0x60) {
    if (!h->order.empty()) return h->order[sel % h->order.size()];
    sel = 0x60;
  }
  if (sel < 0xa0) {
    const uint32_t id = h->next_peer_id;
    h->next_peer_id += 2;
    return id;
  }
  if (sel < 0xc0) return h->last_opened != 0 ? h->last_opened : h->next_mux_id;
  if (sel < 0xd0) return h->next_mux_id;
  return sel - 0xd0u;
}

// Data bytes the harness may still send on a stream (as far as it knows the mux's grants).
uint64_t Remaining(Harness* h, uint32_t id) {
  auto it = h->sids.find(id);
  if (it == h->sids.end()) return kWin;
  const Sid& s = it->second;
  return s.known_window > s.peer_sent ? s.known_window - s.peer_sent : 0;
}

const uint64_t kBig[16] = {200, 1000, 4096, 65535, 65536, 70000, 100000, 200000, 262144, 262145, 300000, 524288, 1 << 20, 16384, 12, 0};
const uint32_t kDeltas[16] = {0, 1, 255, 65535, 262144, 1 << 20, 0x7fffffff, 0xffffffffu, 16u << 20, 12345, 3, 4096, 0, 262143, 100, 2};

uint64_t DataLength(Harness* h, uint32_t id, uint8_t lc) {
  if (lc < 200) return lc;
  const uint64_t rem = Remaining(h, id);
  switch ((lc - 200) & 15) {
    case 0: return rem;
    case 1: return rem > 0 ? rem - 1 : 0;
    case 2: return rem + 1;
    case 3: return 1000;
    case 4: return 4096;
    case 5: return 65535;
    case 6: return 65536;
    case 7: return 100000;
    case 8: return 200000;
    case 9: return 262144;
    case 10: return 262145;
    case 11: return 300000;
    case 12: return 0;
    case 13: return 1;
    case 14: return 12;
    default: return 16384;
  }
}

// A record of kind 1: a yamux frame into the buffer.
void GenYamux(Harness* h, int kind, uint8_t fl, uint8_t sel, uint8_t lc) {
  const uint16_t flags = static_cast<uint16_t>((fl & 0x0f) | ((fl & 0x10) ? 0x8000 : 0));
  const uint32_t id = PickStream(h, sel);
  switch (kind) {
    case 0:
    case 4: {
      uint64_t n = kind == 0 ? DataLength(h, id, lc) : Remaining(h, id) + 1 + (lc & 15);
      if (n > 0xffffffffu || !Spend(h, n)) return;
      PutY(&h->ybuf, 0, 0, flags, id, static_cast<uint32_t>(n));
      if (fl & 0x40) {
        h->ybuf += Filler(h, static_cast<size_t>(n), true);  // text: no newline (a line too long)
      } else if ((fl & 0x20) && n > 0) {
        const size_t k = std::min<size_t>(static_cast<size_t>(n) - 1, 24);  // a short line first
        h->ybuf += Filler(h, k, true) + "\n" + Filler(h, static_cast<size_t>(n) - k - 1, false);
      } else {
        h->ybuf += Filler(h, static_cast<size_t>(n), false);
      }
      break;
    }
    case 1: {
      const uint32_t delta = lc < 128 ? lc * 1024u : kDeltas[(lc - 128) & 15];
      PutY(&h->ybuf, 0, 1, flags, id, delta);
      break;
    }
    case 2:
      PutY(&h->ybuf, 0, 2, flags, (sel & 0x80) ? id : 0, lc * 0x01010101u);
      break;
    case 3:
      PutY(&h->ybuf, 0, 3, 0, (sel & 0x80) ? id : 0, lc & 3);
      break;
    case 5:
      PutY(&h->ybuf, static_cast<uint8_t>(1 + (lc % 255)), static_cast<uint8_t>(lc & 1), flags, id, 0);
      break;
    default:
      PutY(&h->ybuf, 0, static_cast<uint8_t>(4 + (lc % 252)), flags, id, 0);
      break;
  }
}

const int kCloseCodes[16] = {1000, 1001, 1002, 1003, 1007, 1008, 1011, 3000, 4000, 4999, 1005, 999, 1006, 5000, 0, 2999};
const int kJsCloseCodes[8] = {1000, 1001, 1002, 1008, 1011, 3000, 4000, 4999};

std::string CloseReason(int i) {
  switch (i & 3) {
    case 0: return "";
    case 1: return "bye";
    case 2: return "going away: \xf0\x9f\x9a\xaa bye";
    default: return std::string(121, 'x') + "\xe2\x82\xac" + "yy";  // 126 bytes: cut at 123, inside the euro sign
  }
}

// A record of kind 3: a WebSocket frame of the harness.
void GenWs(Harness* h, int kind, bool wrong, uint8_t lc, uint8_t b0) {
  const bool m = Masked(h, wrong);
  switch (kind) {
    case 0: AppendLink(h, MakeFrame(h, 0x89, Filler(h, lc % 126, false), m)); break;
    case 1: AppendLink(h, MakeFrame(h, 0x8a, Filler(h, lc % 126, false), m)); break;
    case 2: {
      std::string p;
      if ((lc & 15) != 14) {
        const int code = kCloseCodes[lc & 15];
        p.push_back(static_cast<char>((code >> 8) & 0xff));
        p.push_back(static_cast<char>(code & 0xff));
        p += CloseReason(lc >> 4).substr(0, 123);
      }
      AppendLink(h, MakeFrame(h, 0x88, p, m));
      break;
    }
    case 3: {
      const uint64_t n = lc < 200 ? lc : kBig[(lc - 200) & 15];
      if (!Spend(h, n)) return;
      AppendLink(h, MakeFrame(h, 0x81, Filler(h, static_cast<size_t>(n), true), m));
      break;
    }
    case 4: {
      const std::string t = Filler(h, lc, true);
      AppendLink(h, MakeFrame(h, 0x01, t.substr(0, lc / 2), m));
      AppendLink(h, MakeFrame(h, 0x89, "p", m));
      AppendLink(h, MakeFrame(h, 0x80, t.substr(lc / 2), m));
      break;
    }
    case 5: AppendLink(h, MakeFrame(h, b0, Filler(h, lc, false), m)); break;
    case 6: AppendLink(h, MakeFrame(h, 0x88, "\x03", m)); break;
    default: AppendLink(h, MakeFrame(h, 0x82, "", m)); break;
  }
}

// ---------------------------------------------------------------- JavaScript

void Notify(void* owner) {
  Harness* h = static_cast<Harness*>(owner);
  h->requested = true;
  if (h->turn != nullptr) h->turn->Request();
}

void DoDispose(Harness* h) {
  if (h->mux == nullptr) return;
  h->mux->Dispose();
  h->mux = nullptr;
  h->disposed = true;
  delete h->turn;  // (from inside its own callback too: it touches nothing after it)
  h->turn = nullptr;
}

uint32_t PickJs(Harness* h, uint8_t a) {
  if (a < 0xf0 && !h->js_ids.empty()) return h->js_ids[a % h->js_ids.size()];
  // An id JavaScript never heard of (of the harness's parity, far above what it opens).
  const uint32_t id = 0x7ffffff0u | (h->yamux_client ? 0u : 1u);
  Sid& s = S(h, id);
  s.chaotic = true;
  s.out_chaotic = true;
  return id;
}

int PendingEvents(Harness* h, uint32_t id) {
  int n = 0;
  for (const MuxEvent& e : h->mux->events()) n += e.stream == id && e.type != tn::kEvNone;
  return n;
}

uint32_t DoOpen(Harness* h, uint8_t b) {
  const size_t n = b < 200 ? b : 4096;
  if (!Spend(h, n)) return 0;
  const std::string line = Filler(h, n, true) + (n > 0 ? "\n" : "");
  std::string err;
  const uint32_t id = h->mux->Open(reinterpret_cast<const uint8_t*>(line.data()), line.size(), &err);
  if (id == 0) {
    CHECK(!err.empty());
    if (err.compare(0, 27, "too many open yamux streams") == 0) CHECK(OutboundAlive(h) >= h->opt.max_streams);
    return 0;
  }
  CHECK(!(h->js_goaway || h->js_close || h->goaway_delivered || h->closed_delivered));
  CHECK(id == h->next_mux_id);
  h->next_mux_id += 2;
  h->last_opened = id;
  Sid& s = S(h, id);
  s.js = kJsLive;
  s.js_opened = true;
  s.started = true;
  s.out_expected = line;  // its first bytes
  h->js_ids.push_back(id);
  return id;
}

void DoWrite(Harness* h, uint32_t id, uint64_t n) {
  if (!Spend(h, n)) return;
  const std::string bytes = Filler(h, static_cast<size_t>(n), false);
  Sid& s = S(h, id);
  if (s.js == kJsLive && !s.js_end) s.out_expected += bytes;
  else if (s.js == kJsBound) s.out_chaotic = true;  // between the socket's bytes, or dropped by a failed dial
  const bool ok = h->mux->Write(id, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  if (!ok) {
    CHECK(s.js == kJsLive || s.js == kJsBound || s.chaotic);
    s.want_drain = true;
  }
  if (s.js == kJsDead && !s.chaotic) CHECK(ok);
}

// The other end becomes a bound stream's socket (ours): what the stream's bytes are checked against.
void Joined(Harness* h, Sid& s, int sock, const std::string& head) {
  s.sock = sock;
  s.head = head;
  s.bind_delivered = s.delivered;
  s.sock_got = 0;
  s.sock_eof = s.sock_shut = s.sock_shut_after = s.sock_closed = s.sock_in_dead = false;
  s.sock_reading = true;
  s.sock_in.clear();
  s.sock_in_at = 0;
  if (std::find(h->socks.begin(), h->socks.end(), s.id) == h->socks.end()) h->socks.push_back(s.id);
}

void DoBind(Harness* h, uint32_t id, uint8_t b) {
  static const size_t kHeads[8] = {0, 1, 3, 100, 4096, 0, 7, 65536};
  const size_t hn = kHeads[b & 7];
  if (!Spend(h, hn)) return;
  Sid& s = S(h, id);
  if (s.sock >= 0 || s.listener >= 0) return;  // one socket per stream here
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  if (b & 8) {
    const int size_bytes = 4096;
    for (int fd : sv) {
      setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size_bytes, sizeof size_bytes);
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size_bytes, sizeof size_bytes);
    }
  }
  const std::string head = Filler(h, hn, false);
  const bool owned = (b & 16) != 0;  // the mux's from now on (closed there even when refused)
  const bool ok = h->mux->Bind(id, sv[0], reinterpret_cast<const uint8_t*>(head.data()), head.size(), !owned);
  if (!owned) close(sv[0]);  // else Bind took it
  if (!ok) {
    close(sv[1]);
    return;
  }
  if (!s.chaotic) CHECK(s.js == kJsLive);  // known, not bound or dialing yet, not gone
  s.js = kJsBound;
  s.ever_bound = true;
  Joined(h, s, sv[1], head);
}

int Listener(int* port, int backlog) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a;
  std::memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(fd, reinterpret_cast<struct sockaddr*>(&a), sizeof a) == 0);
  CHECK(listen(fd, backlog) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(fd, reinterpret_cast<struct sockaddr*>(&a), &len) == 0);
  *port = ntohs(a.sin_port);
  return fd;
}

// Dial: b & 3: 0 a service that answers (the harness's listener), 1 a port nobody listens
// on, 2 a listener whose queue is full (the 5 ms timeout ends it), 3 not an address (or
// ::1); b >> 2 the length of the ok line.
void DoDial(Harness* h, uint32_t id, uint8_t b) {
  const int variant = b & 3;
  const size_t okn = (b >> 2) * 3u;
  if (!Spend(h, okn)) return;
  const std::string ok = Filler(h, okn, true) + "\n";
  Sid& s = S(h, id);
  if (s.sock >= 0 || s.listener >= 0) return;  // one socket per stream here
  std::string ip = "127.0.0.1";
  int port = 9;
  uint64_t timeout = 0;
  int listener = -1, blocker = -1;
  switch (variant) {
    case 0:
      listener = Listener(&port, 8);
      timeout = (b & 4) ? 60000 : 0;
      break;
    case 1:
      close(Listener(&port, 8));
      break;
    case 2: {
      listener = Listener(&port, 0);
      blocker = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      CHECK(blocker >= 0);
      struct sockaddr_in a;
      std::memset(&a, 0, sizeof a);
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(port));
      CHECK(connect(blocker, reinterpret_cast<struct sockaddr*>(&a), sizeof a) == 0);  // fills the queue
      timeout = 5;
      break;
    }
    default:
      ip = (b & 4) ? "::1" : "not an address";
      break;
  }
  const size_t ok_at = s.out_expected.size();
  const bool r = h->mux->Dial(id, ip, port, timeout, reinterpret_cast<const uint8_t*>(ok.data()), ok.size());
  if (blocker >= 0) h->blockers.push_back(blocker);
  if (!r) {
    if (listener >= 0) close(listener);
    return;
  }
  CHECK(!(variant == 3 && !(b & 4)));  // not an address: refused at once
  if (!s.chaotic) CHECK(s.js == kJsLive && !s.delivering);  // a held stream
  // What JavaScript wrote before may be dropped with the ok line if the dial fails.
  if (ok_at > 0) s.out_chaotic = true;
  s.js = kJsBound;
  s.dialing = true;
  s.dialed = true;
  s.dial_hangs = variant == 2;
  s.dial_at = uv_hrtime();
  s.dial_ok_at = ok_at;
  s.out_expected += ok;  // after JavaScript's writes, before the service's bytes
  Joined(h, s, -1, "");
  if (variant == 2) h->blockers.push_back(listener);  // never accepts
  else s.listener = listener;
}

void DoDeliver(Harness* h, uint32_t id) {
  Sid& s = S(h, id);
  h->mux->Deliver(id);
  if (s.js == kJsLive && !s.dialing) s.delivering = true;
}

void CallJs(Harness* h, int what, uint8_t a, uint8_t b) {
  if (TraceLevel() >= 2) std::fprintf(stderr, "  JavaScript call %d (%u, %u)%s\n", what, a, b, h->mux == nullptr ? " (disposed)" : "");
  if (h->mux == nullptr) return;
  const uint64_t len = b < 200 ? b : kBig[(b - 200) & 15];
  switch (what) {
    case 0:
      DoOpen(h, b);
      break;
    case 1:
      DoWrite(h, PickJs(h, a), len);
      break;
    case 2: {
      const uint32_t id = PickJs(h, a);
      Sid& s = S(h, id);
      if (s.js == kJsLive || s.js == kJsBound) s.js_end = true;
      h->mux->End(id);
      break;
    }
    case 3: {
      const uint32_t id = PickJs(h, a);
      Sid& s = S(h, id);
      const int pending = PendingEvents(h, id);
      h->mux->Reset(id);
      // A bound stream's end is told (kEvBoundEnd); a JavaScript stream's (or a dialing
      // one's) is not.
      if (s.js == kJsLive || (s.js == kJsBound && s.dialing)) {
        s.js = kJsDead;
        s.stale = pending;
        s.dialing = false;
      }
      s.js_reset = true;
      break;
    }
    case 4: {
      const uint32_t id = PickJs(h, a);
      Sid& s = S(h, id);
      const uint64_t n = b == 0 ? s.held : b == 255 ? (1ull << 40) : b * 997ull;
      h->mux->Consume(id, static_cast<size_t>(n));
      s.held -= std::min(s.held, n);
      break;
    }
    case 5:
      DoBind(h, PickJs(h, a), b);
      break;
    case 6: {
      if (!Spend(h, len)) break;
      const std::string t = Filler(h, static_cast<size_t>(len), true);
      h->js_texts.push_back(t);
      h->mux->SendText(reinterpret_cast<const uint8_t*>(t.data()), t.size());
      break;
    }
    case 7:
      h->js_pings++;
      h->mux->Ping();
      break;
    case 8:
      if (!h->js_goaway) {
        h->js_goaway = true;
        h->js_goaway_code = b;
      }
      h->mux->GoAway(b);
      break;
    case 9:
      h->js_close = true;
      h->mux->Close(kJsCloseCodes[a & 7], CloseReason(b));
      break;
    case 10:
      h->js_terminate = true;
      h->mux->Terminate();
      break;
    case 11:
      DoDispose(h);
      break;
    case 12: {
      const uint32_t id = DoOpen(h, static_cast<uint8_t>(a >> 1));
      if (id == 0) break;
      DoWrite(h, id, len);
      if ((a & 1) && h->mux != nullptr) {
        S(h, id).js_end = true;
        h->mux->End(id);
      }
      break;
    }
    case 13:
      DoDial(h, PickJs(h, a), b);
      break;
    case 14:
      DoDeliver(h, PickJs(h, a));
      break;
    default:
      DoWrite(h, PickJs(h, a), kBig[b & 15] + (b >> 4));
      break;
  }
}

void CheckClosed(Harness* h, const MuxEvent& e) {
  CHECK(e.stream == 0);
  if (h->mux != nullptr) {
    CHECK(h->mux->closed());
    CHECK(h->mux->streams() == 0);
  }
  if (e.error.empty()) {
    // The harness's close frame (the first one: the mux reads a prefix), or the link cut.
    const bool from_peer = h->peer_close && e.code == h->peer_close_code && e.data == h->peer_close_reason;
    const bool cut = e.code == 1006 && e.data.empty() && (h->js_terminate || h->link_shut || h->link_closed);
    if (!(from_peer || cut)) std::fprintf(stderr, "mux_fuzz: kEvClosed %d \"%s\" unexplained\n", e.code, e.data.c_str());
    CHECK(from_peer || cut);
  } else if (e.error.compare(0, kFailed.size(), kFailed) == 0) {
    CHECK(e.code == 1006);
    CHECK(h->link_closed);
  } else if (e.error == "the peer sent an invalid close frame") {
    // The harness's close frame broke a rule: a one-byte payload or a code not for the
    // wire (1002), or a reason that is not UTF-8 (1007); answered so, never echoed.
    CHECK(h->peer_close);
    const bool bad_code = h->peer_close_len == 1 || (h->peer_close_len >= 2 && !ValidWireCode(h->peer_close_code));
    if (bad_code) {
      CHECK(e.code == 1002 && e.data == "invalid close frame");
    } else {
      CHECK(e.code == 1007 && e.data == "close reason is not UTF-8");
      CHECK(!Utf8(reinterpret_cast<const uint8_t*>(h->peer_close_reason.data()), h->peer_close_reason.size()));
    }
  } else if (e.error == "websocket protocol error") {
    CHECK(e.code == 1002 && e.data == e.error);
    CHECK(h->model.first_error == 1);
  } else if (e.error == "message too big") {
    CHECK(e.code == 1009 && e.data == e.error);
    CHECK(h->model.first_error == 2);
  } else {
    if (h->allowed.count(e.error) == 0) std::fprintf(stderr, "mux_fuzz: protocol error \"%s\" the harness never caused\n", e.error.c_str());
    CHECK(e.code == 1002);
    CHECK(h->allowed.count(e.error) == 1);
    CHECK(e.data == e.error.substr(0, 120));
  }
}

struct Batch {
  std::vector<std::pair<uint32_t, size_t>> data;
  std::vector<uint32_t> lines;
  bool closed = false;
};

void OnEvent(Harness* h, const MuxEvent& e, Batch* b) {
  if (TraceLevel() >= 2) {
    std::fprintf(stderr, "  event %d stream %u code %d data %zu B%s%s\n", e.type, e.stream, e.code, e.data.size(),
                 e.error.empty() ? "" : " error ", e.error.c_str());
  }
  if (e.type == tn::kEvNone) return;
  CHECK(!h->closed_delivered);  // nothing after kEvClosed
  switch (e.type) {
    case tn::kEvText:
      CHECK(h->texts_delivered < h->peer_texts.size());
      CHECK(e.data == h->peer_texts[h->texts_delivered]);
      h->texts_delivered++;
      return;
    case tn::kEvGoAway:
      CHECK(h->goaways_delivered < h->peer_goaways.size());
      CHECK(e.code == static_cast<int>(h->peer_goaways[h->goaways_delivered]));
      h->goaways_delivered++;
      h->goaway_delivered = true;
      return;
    case tn::kEvClosed:
      CheckClosed(h, e);
      h->closed_delivered = true;
      b->closed = true;
      return;
    default:
      break;
  }
  CHECK(e.stream != 0);
  Sid& s = S(h, e.stream);
  const bool stale = s.js == kJsDead && s.stale > 0;
  if (stale) s.stale--;
  const bool live = s.js == kJsLive || stale;
  switch (e.type) {
    case tn::kEvStream:
      CHECK(!MuxParity(h, e.stream));
      CHECK(s.syns >= 1);
      if (!s.chaotic) CHECK(s.js == kJsUnknown);
      s.js = kJsLive;
      s.delivered = s.held = 0;
      s.js_fin = s.js_end = s.want_drain = s.line_delivered = s.delivering = false;
      s.stale = 0;
      if (std::find(h->js_ids.begin(), h->js_ids.end(), e.stream) == h->js_ids.end()) h->js_ids.push_back(e.stream);
      return;
    case tn::kEvLine:
      if (!s.chaotic) {
        CHECK(live || s.js == kJsBound);
        CHECK(!s.line_delivered);
        CHECK(s.line_state == 1);
        CHECK(e.data == s.line);
      }
      s.line_delivered = true;
      b->lines.push_back(e.stream);
      if (h->auto_deliver && !h->auto_bind && !h->auto_dial && s.js == kJsLive && h->mux != nullptr) {
        DoDeliver(h, e.stream);  // as native-link.ts onLine does, in the middle of the batch
      }
      return;
    case tn::kEvData:
      CHECK(!e.data.empty());
      if (!s.chaotic) {
        CHECK(live);
        CHECK(s.delivering);  // nothing comes before Deliver (or a failed dial)
        CHECK(!s.js_fin);
        CHECK(s.delivered + e.data.size() <= s.in.size());
        if (!s.content_unknown) CHECK(s.in.compare(s.delivered, e.data.size(), e.data) == 0);
      }
      s.delivered += e.data.size();
      s.held += e.data.size();
      b->data.emplace_back(e.stream, e.data.size());
      return;
    case tn::kEvFin:
      if (!s.chaotic) {
        CHECK(live);
        CHECK(s.delivering);
        CHECK(!s.js_fin);
        CHECK(s.peer_fin);
        if (!s.content_unknown) CHECK(s.delivered == s.in.size());  // all of it before the FIN
      }
      s.js_fin = true;
      return;
    case tn::kEvReset:
      if (!s.chaotic) CHECK(live || (s.js == kJsBound && s.dialing));
      s.js = kJsDead;
      s.dead_event = true;
      s.dialing = false;
      return;
    case tn::kEvDrain:
      if (!s.chaotic) CHECK(s.want_drain);
      s.want_drain = false;
      return;
    case tn::kEvDialFailed:
      if (!s.chaotic) {
        CHECK(s.js == kJsBound && s.dialing);
        CHECK(!e.data.empty());
        // The ok line never went (nor what JavaScript wrote after it): the stream is
        // JavaScript's again, what the service was to get is dropped.
        if (s.out_seen > s.dial_ok_at) std::fprintf(stderr, "mux_fuzz: stream %u: the ok line went, the dial failed\n", s.id);
        CHECK(s.out_seen <= s.dial_ok_at);
        if (!s.out_chaotic) s.out_expected.resize(s.dial_ok_at);
      }
      s.js = kJsLive;
      s.dialing = false;
      s.dial_failed = true;
      s.delivering = true;
      s.content_unknown = true;
      return;
    case tn::kEvBoundEnd:
      if (!s.chaotic) {
        CHECK(s.js == kJsBound);
        CHECK(e.code == 0 || e.code == 1);
        if (e.code == 0) {
          // Both ways done: the harness's FIN came, and everything reached the socket.
          CHECK(s.peer_fin);
          CHECK(!s.js_reset);
          CHECK(e.bytes_in >= static_cast<double>(s.in.size()));
          if (s.sock >= 0 && !s.sock_closed) {
            DrainSock(h, s, true);
            CHECK(s.sock_eof);
            if (!s.content_unknown) CHECK(s.sock_got == s.head.size() + (s.in.size() - s.bind_delivered));
          }
        }
      }
      s.js = kJsDead;
      s.dead_event = true;
      s.dialing = false;
      s.bound_end_code = e.code;
      s.bound_end_out = e.bytes_out;
      return;
    default:
      CHECK(false);  // an unknown event type
  }
}

// binding.cc Deliver: the events swapped out, handed over at once, then JavaScript acts.
void Deliver(void* owner) {
  Harness* h = static_cast<Harness*>(owner);
  h->requested = false;
  if (h->mux == nullptr) return;
  std::vector<MuxEvent> events;
  events.swap(h->mux->events());
  size_t live = 0;
  for (const MuxEvent& e : events) live += e.type != tn::kEvNone;
  if (live == 0) return;
  h->deliveries++;
  Batch b;
  for (const MuxEvent& e : events) OnEvent(h, e, &b);
  if (h->auto_consume) {
    for (auto& d : b.data) {
      if (h->mux == nullptr) break;
      Sid& s = S(h, d.first);
      if (s.js != kJsLive) continue;
      h->mux->Consume(d.first, d.second);
      s.held -= std::min<uint64_t>(s.held, d.second);
    }
  }
  for (uint32_t id : b.lines) {
    if (h->mux == nullptr) break;
    const Sid& s = S(h, id);
    if (s.js != kJsLive || s.chaotic) continue;
    if (h->auto_bind) DoBind(h, id, static_cast<uint8_t>(h->rng.Next() & 0x1f));
    else if (h->auto_dial && !s.delivering) DoDial(h, id, static_cast<uint8_t>((h->rng.Next() & 0xf4)));
  }
  std::vector<Call> calls;
  calls.swap(h->at_delivery);
  for (const Call& c : calls) CallJs(h, c.what, c.a, c.b);
  if (b.closed && h->dispose_on_closed) DoDispose(h);
}

// Once the loop settled with the link alive and all of the harness's input read by the mux:
// every stream got what the harness sent on it.
void CheckSettled(Harness* h) {
  if (h->mux == nullptr || h->closed_delivered || h->mux->closed()) return;
  if (h->hold || h->link_in_at < h->link_in.size() || h->link_in_dead || h->link_closed) return;
  if (h->model.first_error != 0) return;
  for (auto& kv : h->sids) {
    Sid& s = kv.second;
    if (s.chaotic || !s.started || s.js == kJsUnknown || s.js_reset) continue;
    // The line came (before any reset of the stream).
    if (s.line_state == 1) CHECK(s.line_delivered);
    // A stream ended both ways while held is forgotten without a word (JavaScript refused it).
    if (s.js_end && s.peer_fin) continue;
    if (s.js == kJsLive) {
      CHECK(!s.peer_rst && s.line_state != 2);  // its kEvReset came
      if (s.delivering && !s.content_unknown) {
        CHECK(s.delivered == s.in.size());
        if (s.peer_fin) CHECK(s.js_fin);
      }
    }
    if (s.js == kJsBound && s.peer_fin && !s.peer_rst && s.sock >= 0 && !s.sock_closed &&
        s.sock_reading) {
      DrainSock(h, s, true);
      if (!s.content_unknown) CHECK(s.sock_got == s.head.size() + (s.in.size() - s.bind_delivered));
      CHECK(s.sock_eof);  // the FIN was passed on
    }
  }
}


const uint32_t kWindows[4] = {262144, 262144 + 1000, 524288, 1 << 20};
const uint32_t kMaxWindows[4] = {16u << 20, 262144, 524288, 4u << 20};
const uint32_t kMaxStreams[8] = {65536, 1, 2, 3, 4, 8, 1, 2};
const uint32_t kMaxFrames[8] = {262144, 1024, 4096, 16384, 65536, 1000, 300000, 2000};
const uint64_t kMaxMessages[4] = {4u << 20, 1024, 70000, 300000};
const size_t kHighWaters[4] = {1u << 20, 64, 4096, 65536};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 7) return 0;
  // libuv's first loop opens descriptors it keeps for the process (its signal lock).
  static const bool warm = [] {
    uv_loop_t l;
    CHECK(uv_loop_init(&l) == 0);
    CHECK(uv_loop_close(&l) == 0);
    return true;
  }();
  (void)warm;
  // Descriptors are compared within the input: libFuzzer's own come and go between inputs.
  const int base_fd = LowestFreeFd();
  const int base_fds = OpenFds();

  Harness* hp = new Harness;
  Harness& h = *hp;
  h.model.h = &h;
  h.model.y.h = &h;
  h.out.h = &h;
  h.out.y.h = &h;
  const uint8_t c0 = data[0], c1 = data[1], c2 = data[2];
  h.ws_client = (c0 & 1) != 0;
  h.yamux_client = (c0 & 2) != 0;
  MuxOptions& o = h.opt;
  o.ws_client = h.ws_client;
  o.yamux_client = h.yamux_client;
  o.window = kWindows[(c0 >> 2) & 3];
  o.max_window = kMaxWindows[(c0 >> 4) & 3];
  o.max_streams = kMaxStreams[c1 & 7];
  o.max_frame = kMaxFrames[(c1 >> 3) & 7];
  o.max_message = kMaxMessages[c1 >> 6];
  o.high_water = kHighWaters[c2 & 3];
  o.low_water = o.high_water / 4;
  h.max_frame = std::min<uint64_t>(std::max<uint64_t>(o.max_frame, 1024), 256 * 1024);
  const bool small_link = (c0 & 0x40) != 0;
  h.dispose_on_closed = (c0 & 0x80) == 0;
  h.chunk_style = (c2 >> 2) & 3;
  const int end_action = (c2 >> 4) & 3;
  h.auto_consume = (c2 & 0x40) != 0;
  h.auto_deliver = (c2 & 0x80) != 0;
  h.rng.s = data[3] | (data[4] << 8) | (1u << 24);
  h.next_mux_id = h.next_syn_expected = h.yamux_client ? 1 : 2;
  h.next_peer_id = h.yamux_client ? 2 : 1;
  size_t at = 5;
  std::string head;
  for (int i = 0; i < 2 && at < size; i++) {
    size_t n = data[at++];
    if (n > size - at) n = size - at;
    (i == 0 ? h.greeting : head).assign(reinterpret_cast<const char*>(data + at), n);
    at += n;
  }

  CHECK(uv_loop_init(&h.loop) == 0);
  int pair[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
  if (small_link) {
    const int size_bytes = 4096;
    for (int fd : pair) {
      setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size_bytes, sizeof size_bytes);
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size_bytes, sizeof size_bytes);
    }
  }
  h.link = pair[1];
  h.mux = new Mux(&h.loop, &h, &Notify, o);
  h.turn = new LoopTurn(&h.loop, &Deliver, &h);
  h.model.Feed(reinterpret_cast<const uint8_t*>(head.data()), head.size());
  std::string error;
  const bool started = h.mux->Start(pair[0], reinterpret_cast<const uint8_t*>(head.data()), head.size(),
                                    reinterpret_cast<const uint8_t*>(h.greeting.data()), h.greeting.size(), &error);
  CHECK(started);
  close(pair[0]);  // Start took a copy

  // The records.
  while (at < size) {
    const uint8_t tag = data[at++];
    const int kind = tag & 7;
    const int arg = tag >> 3;
    if (TraceLevel() >= 2) std::fprintf(stderr, "record at %zu: kind %d arg %d\n", at - 1, kind, arg);
    auto next = [&]() -> uint8_t { return at < size ? data[at++] : 0; };
    switch (kind) {
      case 0: {
        size_t n = static_cast<size_t>(arg);
        if (arg == 31) n += next();
        if (n > size - at) n = size - at;
        AppendLink(&h, std::string(reinterpret_cast<const char*>(data + at), n));
        at += n;
        break;
      }
      case 1: {
        if ((arg & 7) == 7) {
          size_t n = next();
          if (n > size - at) n = size - at;
          h.ybuf.append(reinterpret_cast<const char*>(data + at), n);
          at += n;
        } else {
          const uint8_t fl = next(), sel = next(), lc = next();
          GenYamux(&h, arg & 7, fl, sel, lc);
        }
        if (!(arg & 8)) Flush(&h, 1, false, false, false);
        break;
      }
      case 2:
        Flush(&h, 1 + (arg & 3), (arg & 4) != 0, (arg & 8) != 0, (arg & 16) != 0);
        break;
      case 3: {
        const uint8_t b0 = (arg & 7) == 5 ? next() : 0;
        GenWs(&h, arg & 7, (arg & 8) != 0, next(), b0);
        break;
      }
      case 4: {
        const uint8_t a = next(), b = next();
        if (arg & 16) h.at_delivery.push_back(Call{arg & 15, a, b});
        else CallJs(&h, arg & 15, a, b);
        break;
      }
      case 5: {
        const uint8_t sel = next();
        const int action = arg & 7;
        const uint8_t len = (action == 0 || action == 4) ? next() : 0;
        std::vector<uint32_t> open;
        for (uint32_t id : h.socks) {
          if (h.sids[id].sock >= 0 && !h.sids[id].sock_closed) open.push_back(id);
        }
        if (open.empty()) break;
        Sid& s = h.sids[open[sel % open.size()]];
        switch (action) {
          case 0:
          case 4: {
            const uint64_t n = action == 0 ? len : kBig[len & 15] + (len >> 4);
            if (!Spend(&h, n) || s.sock_shut || s.sock_shut_after) break;
            s.sock_in += Filler(&h, static_cast<size_t>(n), false);
            break;
          }
          case 1: s.sock_reading = !s.sock_reading; break;
          case 2:
            if (s.sock_in_at >= s.sock_in.size()) {
              shutdown(s.sock, SHUT_WR);
              s.sock_shut = true;
            } else {
              s.sock_shut_after = true;
            }
            break;
          case 3:
            close(s.sock);
            s.sock_closed = true;
            break;
          default: DrainSock(&h, s, true); break;
        }
        break;
      }
      case 6:
        if (arg < 16) {
          for (int i = 0; i <= arg; i++) {
            WriteSome(&h);
            Turn(&h);
          }
        } else if (arg == 16) {
          h.link_reading = !h.link_reading;
        } else if (arg == 17) {
          h.hold = !h.hold;
        } else if (arg == 18) {
          if (h.link_in_at >= h.link_in.size() && !h.link_shut && !h.link_closed) {
            shutdown(h.link, SHUT_WR);
            h.link_shut = true;
          } else {
            h.link_shut_after = true;
          }
        } else if (arg == 19) {
          if (!h.link_closed) {
            close(h.link);
            h.link = -1;  // (its number may be reused)
            h.link_closed = true;
          }
        } else {
          Settle(&h, 100);
        }
        break;
      default:
        if (arg & 1) h.auto_consume = !h.auto_consume;
        if (arg & 2) h.auto_bind = !h.auto_bind;
        if (arg & 4) h.dispose_on_closed = !h.dispose_on_closed;
        if (arg & 8) h.auto_deliver = !h.auto_deliver;
        if (arg & 16) h.auto_dial = !h.auto_dial;
        break;
    }
    WriteChunks(&h, 8);
    Turn(&h);
  }

  // The end: everything read from now on; what is left of the input goes in.
  h.hold = false;
  h.link_reading = true;
  for (uint32_t id : h.socks) h.sids[id].sock_reading = true;
  if (h.chunk_style < 2) h.chunk_style = 2;
  bool settled = Settle(&h, 400);
  if (settled) CheckSettled(&h);
  if (h.mux != nullptr && !h.closed_delivered) {
    const bool clean = !h.model.mid_frame() && h.model.first_error == 0 && !h.link_closed && !h.link_shut;
    switch (end_action) {
      case 1: {
        // JavaScript closes; the harness answers the close frame (the closed event follows).
        CallJs(&h, 9, 0, 1);
        settled = Settle(&h, 200);
        if (h.out.close_done && clean && !h.link_in_dead) {
          std::string p = "\x03\xe8" "bye";
          AppendLink(&h, MakeFrame(&h, 0x88, p, Masked(&h, false)));
          settled = Settle(&h, 200);
          if (settled && h.mux != nullptr) CHECK(h.closed_delivered);
        }
        break;
      }
      case 2:
        CallJs(&h, 10, 0, 0);
        Turn(&h);
        CHECK(h.closed_delivered || h.mux == nullptr);
        break;
      case 3:
        if (!h.link_closed && !h.link_shut) {
          h.link_shut_after = true;
          settled = Settle(&h, 200);
          if (settled && h.link_shut) CHECK(h.closed_delivered || h.mux == nullptr);
        }
        break;
      default:
        break;
    }
  }
  DoDispose(&h);
  for (int i = 0; i < 100 && uv_loop_alive(&h.loop); i++) uv_run(&h.loop, UV_RUN_NOWAIT);
  int handles = 0;
  uv_walk(&h.loop, [](uv_handle_t*, void* arg) { ++*static_cast<int*>(arg); }, &handles);
  CHECK(handles == 0);
  CHECK(uv_loop_close(&h.loop) == 0);

  // What the mux wrote before its descriptors closed (a cut may leave a frame unfinished).
  h.link_reading = true;
  DrainLink(&h);
  CHECK(!(h.out.close_done && h.out.mid_frame()));  // nothing after the close frame
  for (uint32_t id : h.socks) {
    Sid& s = h.sids[id];
    DrainSock(&h, s, true);
    // A clean end: the harness saw every data frame before the FIN.
    if (!s.chaotic && s.bound_end_code >= 0 && s.mux_fin) CHECK(static_cast<double>(s.out_seen) == s.bound_end_out);
    if (s.sock >= 0 && !s.sock_closed) close(s.sock);
    if (s.listener >= 0) close(s.listener);
  }
  for (int fd : h.blockers) close(fd);
  if (h.link >= 0) close(h.link);
  if (TraceLevel() >= 1) {
    size_t in = 0, out = 0;
    for (auto& kv : h.sids) {
      in += kv.second.in.size();
      out += kv.second.out_seen;
    }
    std::fprintf(stderr,
                 "mux_fuzz: ws_client %d yamux_client %d | streams %zu (js %zu, bound %zu) | data in %zu out %zu | "
                 "frames out %llu | deliveries %d closed %d disposed %d settled %d | allowed %zu first ws error %d\n",
                 h.ws_client, h.yamux_client, h.sids.size(), h.js_ids.size(), h.socks.size(), in, out,
                 static_cast<unsigned long long>(h.out.frames), h.deliveries, h.closed_delivered, h.disposed, settled,
                 h.allowed.size(), h.model.first_error);
    for (auto& kv : h.sids) {
      const Sid& s = kv.second;
      std::fprintf(stderr,
                   "  stream %u: js %d%s%s%s | line %d (%zu B, delivered %d) in %zu delivered %llu | out %llu of %zu "
                   "expected%s | mux syn %d acks %d fin %d rst %d | socket got %llu%s\n",
                   s.id, s.js, s.chaotic ? " chaotic" : "", s.dialed ? (s.dial_failed ? " dial-failed" : " dialed") : "",
                   s.ever_bound ? " bound" : "", s.line_state, s.line.size(), s.line_delivered, s.in.size(),
                   static_cast<unsigned long long>(s.delivered), static_cast<unsigned long long>(s.out_seen),
                   s.out_expected.size(), s.out_chaotic ? " (unordered)" : "", s.mux_syn, s.mux_acks, s.mux_fin, s.mux_rst,
                   static_cast<unsigned long long>(s.sock_got), s.sock_eof ? " eof" : "");
    }
  }
  delete hp;
  CHECK(LowestFreeFd() == base_fd);
  CHECK(OpenFds() == base_fds);
  return 0;
}
