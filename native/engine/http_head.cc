#include "http_head.h"

namespace sluice {
namespace engine {

namespace {

// Byte classes (RFC 9110 §5.6.2 tchar, §5.5 field-vchar; RFC 5234 VCHAR, WSP).
enum : uint8_t {
  kToken = 1,    // tchar: method, field name
  kVisible = 2,  // VCHAR 0x21..0x7e: request-target, and field values and reasons
  kObsText = 4,  // 0x80..0xff: allowed in field values and reasons, nowhere else
  kOws = 8,      // SP, HTAB
};

struct CharTable {
  uint8_t c[256];
};

// Built at compile time: a constexpr table is constant-initialized (no static init order).
constexpr CharTable MakeCharTable() {
  CharTable t{};
  for (int i = 0x21; i <= 0x7e; i++) t.c[i] = kVisible;
  for (int i = 0x80; i <= 0xff; i++) t.c[i] = kObsText;
  t.c[static_cast<uint8_t>(' ')] = kOws;
  t.c[static_cast<uint8_t>('\t')] = kOws;
  for (int i = '0'; i <= '9'; i++) t.c[i] |= kToken;
  for (int i = 'A'; i <= 'Z'; i++) t.c[i] |= kToken;
  for (int i = 'a'; i <= 'z'; i++) t.c[i] |= kToken;
  const char extra[] = "!#$%&'*+-.^_`|~";
  for (const char* p = extra; *p; p++) t.c[static_cast<uint8_t>(*p)] |= kToken;
  return t;
}

constexpr CharTable kChars = MakeCharTable();

inline bool Is(uint8_t c, uint8_t cls) { return (kChars.c[c] & cls) != 0; }

inline char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c; }

// Why a parse stopped before the blank line.
enum Halt {
  kRunning,
  kMalformed,  // a byte the grammar does not allow there
  kOutOfBytes,  // the bytes we may look at ran out: more are needed, or the head is too long
};

// A cursor over the bytes a parse may look at: min(len, max_bytes) of them. Each byte is
// judged when the cursor reaches it, without looking ahead, and nothing past the window is
// read. So a bad byte is refused on the read that brings it (a client sending garbage is
// not left to the timeout), and since the caller parses its whole buffer again as bytes
// arrive, a verdict other than Incomplete stays the same on every longer input.
class Reader {
 public:
  Reader(const char* data, size_t len, size_t max_bytes)
      : p_(reinterpret_cast<const uint8_t*>(data)), len_(len), end_(len < max_bytes ? len : max_bytes),
        max_bytes_(max_bytes) {}

  size_t pos() const { return i_; }
  const char* at(size_t i) const { return reinterpret_cast<const char*>(p_) + i; }

  // The next byte, or false (out of bytes) at the end of the window.
  bool Peek(uint8_t* c) {
    if (i_ == end_) return Stop(kOutOfBytes);
    *c = p_[i_];
    return true;
  }
  void Skip() { i_++; }

  // Consumes `c`, else stops: out of bytes, or malformed.
  bool Expect(char c) {
    uint8_t b;
    if (!Peek(&b)) return false;
    if (b != static_cast<uint8_t>(c)) return Stop(kMalformed);
    i_++;
    return true;
  }
  bool ExpectLiteral(const char* s) {
    for (; *s; s++) {
      if (!Expect(*s)) return false;
    }
    return true;
  }
  // Consumes bytes of class `cls`; false when the window ends inside the run.
  bool Run(uint8_t cls) {
    while (i_ < end_ && Is(p_[i_], cls)) i_++;
    return i_ < end_ || Stop(kOutOfBytes);
  }

  bool Stop(Halt h) {
    halt_ = h;
    return false;
  }
  bool Malformed() { return Stop(kMalformed); }

  // The verdict for a parse that stopped short of the blank line.
  HeadResult Verdict() const {
    if (halt_ == kMalformed) return kHeadBad;
    // Out of bytes: Incomplete while fewer than max_bytes came, else the head cannot fit.
    return len_ < max_bytes_ ? kHeadIncomplete : kHeadTooLarge;
  }

 private:
  const uint8_t* p_;
  size_t len_;
  size_t end_;
  size_t max_bytes_;
  size_t i_ = 0;
  Halt halt_ = kRunning;
};

// "HTTP/1." DIGIT, where the digit must be 0 or 1: HTTP/2 and later never come as text.
bool ReadVersion(Reader* r, int* minor) {
  if (!r->ExpectLiteral("HTTP/1.")) return false;
  uint8_t c;
  if (!r->Peek(&c)) return false;
  if (c != '0' && c != '1') return r->Malformed();
  r->Skip();
  *minor = c - '0';
  return true;
}

// The field lines and the blank line after the start line.
HeadResult ReadFields(Reader* r, const HeadLimits& limits, HeadField* fields, int* count, size_t* head_bytes) {
  int max_fields = limits.max_fields < kMaxHeadFields ? limits.max_fields : kMaxHeadFields;
  if (max_fields < 0) max_fields = 0;
  for (;;) {
    uint8_t c;
    if (!r->Peek(&c)) return r->Verdict();
    if (c == '\r') {
      r->Skip();
      if (!r->Expect('\n')) return r->Verdict();
      *head_bytes = r->pos();
      return kHeadComplete;
    }
    // Not a name. SP/HTAB here is obs-fold (or whitespace before the first field): RFC 9112
    // §5.2 lets a server refuse it (400) and a proxy refuse a response holding it (502),
    // rather than unfold it, which peers that do not unfold the same way could disagree on.
    if (!Is(c, kToken)) return kHeadBad;
    // Refused at the first byte of one field too many, not after reading all of them.
    if (*count == max_fields) return kHeadTooLarge;
    const size_t name = r->pos();
    if (!r->Run(kToken)) return r->Verdict();
    const size_t name_end = r->pos();
    // Whitespace between name and colon is an error (RFC 9112 §5.1): another smuggling vector.
    if (!r->Expect(':')) return r->Verdict();
    if (!r->Run(kOws)) return r->Verdict();
    const size_t value = r->pos();
    size_t value_end = value;  // past the last non-OWS byte: trailing OWS is not the value's
    for (;;) {
      if (!r->Peek(&c)) return r->Verdict();
      if (Is(c, kVisible | kObsText)) {
        r->Skip();
        value_end = r->pos();
      } else if (Is(c, kOws)) {
        r->Skip();
      } else {
        break;
      }
    }
    // Only CRLF ends the value; NUL, a lone CR, bare LF, DEL or another control is refused.
    if (!r->Expect('\r') || !r->Expect('\n')) return r->Verdict();
    HeadField& f = fields[(*count)++];
    f.name.p = r->at(name);
    f.name.n = name_end - name;
    f.value.p = r->at(value);
    f.value.n = value_end - value;
  }
}

// SHA-1 (FIPS 180-4), only for Sec-WebSocket-Accept: RFC 6455 uses it as a checksum that
// proves the server read the key, not for security, so its weakness does not matter here.
class Sha1 {
 public:
  void Update(const uint8_t* p, size_t n) {
    total_ += n;
    while (n > 0) {
      const size_t take = 64 - fill_ < n ? 64 - fill_ : n;
      for (size_t i = 0; i < take; i++) buf_[fill_ + i] = p[i];
      fill_ += take;
      p += take;
      n -= take;
      if (fill_ == 64) {
        Block(buf_);
        fill_ = 0;
      }
    }
  }

  void Final(uint8_t out[20]) {
    const uint64_t bits = total_ * 8;
    const uint8_t one = 0x80;
    Update(&one, 1);
    const uint8_t zero = 0;
    while (fill_ != 56) Update(&zero, 1);
    uint8_t length[8];
    for (int i = 0; i < 8; i++) length[i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
    Update(length, 8);
    for (int i = 0; i < 5; i++) {
      out[4 * i] = static_cast<uint8_t>(h_[i] >> 24);
      out[4 * i + 1] = static_cast<uint8_t>(h_[i] >> 16);
      out[4 * i + 2] = static_cast<uint8_t>(h_[i] >> 8);
      out[4 * i + 3] = static_cast<uint8_t>(h_[i]);
    }
  }

 private:
  static uint32_t Rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

  void Block(const uint8_t* b) {
    uint32_t w[80];
    for (int t = 0; t < 16; t++) {
      w[t] = (static_cast<uint32_t>(b[4 * t]) << 24) | (static_cast<uint32_t>(b[4 * t + 1]) << 16) |
             (static_cast<uint32_t>(b[4 * t + 2]) << 8) | b[4 * t + 3];
    }
    for (int t = 16; t < 80; t++) w[t] = Rotl(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
    uint32_t a = h_[0], bb = h_[1], c = h_[2], d = h_[3], e = h_[4];
    for (int t = 0; t < 80; t++) {
      uint32_t f, k;
      if (t < 20) {
        f = (bb & c) | (~bb & d);
        k = 0x5a827999;
      } else if (t < 40) {
        f = bb ^ c ^ d;
        k = 0x6ed9eba1;
      } else if (t < 60) {
        f = (bb & c) | (bb & d) | (c & d);
        k = 0x8f1bbcdc;
      } else {
        f = bb ^ c ^ d;
        k = 0xca62c1d6;
      }
      const uint32_t tmp = Rotl(a, 5) + f + e + k + w[t];
      e = d;
      d = c;
      c = Rotl(bb, 30);
      bb = a;
      a = tmp;
    }
    h_[0] += a;
    h_[1] += bb;
    h_[2] += c;
    h_[3] += d;
    h_[4] += e;
  }

  uint32_t h_[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0};
  uint8_t buf_[64] = {};
  size_t fill_ = 0;
  uint64_t total_ = 0;
};

// Standard base64 (RFC 4648 §4) with padding: 4 * ceil(n / 3) chars, then a NUL.
void Base64(const uint8_t* in, size_t n, char* out) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i = 0;
  size_t o = 0;
  for (; n - i >= 3; i += 3) {
    const uint32_t v = (static_cast<uint32_t>(in[i]) << 16) | (static_cast<uint32_t>(in[i + 1]) << 8) | in[i + 2];
    out[o++] = kAlphabet[(v >> 18) & 63];
    out[o++] = kAlphabet[(v >> 12) & 63];
    out[o++] = kAlphabet[(v >> 6) & 63];
    out[o++] = kAlphabet[v & 63];
  }
  if (n - i == 1) {
    const uint32_t v = static_cast<uint32_t>(in[i]) << 16;
    out[o++] = kAlphabet[(v >> 18) & 63];
    out[o++] = kAlphabet[(v >> 12) & 63];
    out[o++] = '=';
    out[o++] = '=';
  } else if (n - i == 2) {
    const uint32_t v = (static_cast<uint32_t>(in[i]) << 16) | (static_cast<uint32_t>(in[i + 1]) << 8);
    out[o++] = kAlphabet[(v >> 18) & 63];
    out[o++] = kAlphabet[(v >> 12) & 63];
    out[o++] = kAlphabet[(v >> 6) & 63];
    out[o++] = '=';
  }
  out[o] = '\0';
}

}  // namespace

bool Span::Equals(const char* lower_literal) const {
  for (size_t i = 0; i < n; i++) {
    // The literal's NUL ends it: no span byte matches there, not even a NUL.
    if (lower_literal[i] == '\0' || Lower(p[i]) != lower_literal[i]) return false;
  }
  return lower_literal[n] == '\0';
}

HeadResult ParseRequestHead(const char* data, size_t len, const HeadLimits& limits, RequestHead* out) {
  out->field_count = 0;
  out->head_bytes = 0;
  Reader r(data, len, limits.max_bytes);
  uint8_t c;
  if (!r.Peek(&c)) return r.Verdict();
  // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line
  // (what a client may leave behind a body). Exactly one is skipped, and counts toward
  // head_bytes and max_bytes; a second one is an error, like any other stray bytes.
  if (c == '\r') {
    r.Skip();
    if (!r.Expect('\n')) return r.Verdict();
  }
  const size_t method = r.pos();
  if (!r.Run(kToken)) return r.Verdict();
  if (r.pos() == method) return kHeadBad;  // empty method, or a byte no method holds
  const size_t method_end = r.pos();
  if (!r.Expect(' ')) return r.Verdict();
  const size_t target = r.pos();
  if (!r.Run(kVisible)) return r.Verdict();
  if (r.pos() == target) return kHeadBad;
  const size_t target_end = r.pos();
  if (!r.Expect(' ')) return r.Verdict();
  int minor = 1;
  if (!ReadVersion(&r, &minor)) return r.Verdict();
  if (!r.Expect('\r') || !r.Expect('\n')) return r.Verdict();
  out->method.p = r.at(method);
  out->method.n = method_end - method;
  out->target.p = r.at(target);
  out->target.n = target_end - target;
  out->minor_version = minor;
  return ReadFields(&r, limits, out->fields, &out->field_count, &out->head_bytes);
}

HeadResult ParseResponseHead(const char* data, size_t len, const HeadLimits& limits, ResponseHead* out) {
  out->field_count = 0;
  out->head_bytes = 0;
  // No blank lines are skipped: §2.2's leniency is for servers reading requests.
  Reader r(data, len, limits.max_bytes);
  int minor = 1;
  if (!ReadVersion(&r, &minor)) return r.Verdict();
  if (!r.Expect(' ')) return r.Verdict();
  int status = 0;
  for (int i = 0; i < 3; i++) {
    uint8_t c;
    if (!r.Peek(&c)) return r.Verdict();
    if (c < '0' || c > '9') return kHeadBad;
    r.Skip();
    status = status * 10 + (c - '0');
  }
  // The SP before the reason is required by RFC 9112 §4, but "HTTP/1.1 101\r\n" is in the
  // wild (and harmless: the status is whole), so it is accepted too.
  uint8_t c;
  if (!r.Peek(&c)) return r.Verdict();
  if (c == ' ') r.Skip();
  else if (c != '\r') return kHeadBad;
  const size_t reason = r.pos();
  for (;;) {
    if (!r.Peek(&c)) return r.Verdict();
    if (!Is(c, kVisible | kObsText | kOws)) break;
    r.Skip();
  }
  const size_t reason_end = r.pos();
  if (!r.Expect('\r') || !r.Expect('\n')) return r.Verdict();
  out->minor_version = minor;
  out->status = status;
  out->reason.p = r.at(reason);
  out->reason.n = reason_end - reason;
  return ReadFields(&r, limits, out->fields, &out->field_count, &out->head_bytes);
}

const HeadField* FindField(const HeadField* fields, int count, const char* lower_name) {
  for (int i = 0; i < count; i++) {
    if (fields[i].name.Equals(lower_name)) return &fields[i];
  }
  return nullptr;
}

bool HasToken(Span value, const char* lower_token) {
  // An empty token is in no list (empty elements, as in "a, , b", are not tokens).
  if (lower_token[0] == '\0' || value.n == 0) return false;
  size_t i = 0;
  for (;;) {
    size_t start = i;
    while (i < value.n && value.p[i] != ',') i++;
    size_t end = i;
    while (start < end && (value.p[start] == ' ' || value.p[start] == '\t')) start++;
    while (end > start && (value.p[end - 1] == ' ' || value.p[end - 1] == '\t')) end--;
    const Span element{value.p + start, end - start};
    if (element.Equals(lower_token)) return true;
    if (i == value.n) return false;
    i++;  // past the comma
  }
}

void WebSocketAccept(const char* key, size_t key_len, char out[29]) {
  static constexpr char kGuid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  Sha1 sha;
  sha.Update(reinterpret_cast<const uint8_t*>(key), key_len);
  sha.Update(reinterpret_cast<const uint8_t*>(kGuid), sizeof kGuid - 1);
  uint8_t digest[20];
  sha.Final(digest);
  Base64(digest, sizeof digest, out);
}

void Base64Of16(const uint8_t in[16], char out[25]) { Base64(in, 16, out); }

}  // namespace engine
}  // namespace sluice
