// libFuzzer target: the engine's HTTP/1.1 head parser (native/engine/http_head.h).
//
// Input: the wire bytes as they are (no configuration prefix), so that the seeds are
// plain heads. Each input is parsed as a request and as a response under several limits,
// whole and as prefixes: grown byte by byte under the engine's default limits (as the
// engine parses its buffer again when bytes arrive), a few lengths around the limit under
// the others. Each ends where its heap block ends, so that ASan sees a read past `len`. The
// checks:
// - the verdict and every span agree with RefParse, a slow line-by-line reading of the
//   same grammar written the other way round (split lines first, then judge each);
// - invariants: Incomplete only below max_bytes; a Complete head ends at its first CRLF
//   CRLF, within len and max_bytes, holds no bare LF, lone CR, NUL or other control but
//   HTAB, no obs-fold, and every span lies inside it; field_count within the limits;
// - prefix stability: the first prefix whose verdict is not Incomplete has the whole
//   input's verdict and spans (a bad byte is refused on the read that brings it, and a
//   verdict never changes as bytes arrive);
// - HasToken and FindField against plain references; WebSocketAccept and Base64Of16 give
//   well-formed base64 for any input.
// LLVMFuzzerInitialize runs known-answer cases first (heads with expected verdicts and
// fields, the RFC 6455 accept key, SHA-1 padding edges), so every fuzz run checks them.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "../engine/http_head.h"

namespace {

using sluice::engine::Base64Of16;
using sluice::engine::FindField;
using sluice::engine::HasToken;
using sluice::engine::HeadField;
using sluice::engine::HeadLimits;
using sluice::engine::HeadResult;
using sluice::engine::kHeadBad;
using sluice::engine::kHeadComplete;
using sluice::engine::kHeadIncomplete;
using sluice::engine::kHeadTooLarge;
using sluice::engine::kMaxHeadFields;
using sluice::engine::ParseRequestHead;
using sluice::engine::ParseResponseHead;
using sluice::engine::RequestHead;
using sluice::engine::ResponseHead;
using sluice::engine::Span;
using sluice::engine::WebSocketAccept;


// A parse, in offsets from the start of the input: what both parsers must agree on.
struct Parsed {
  int result = kHeadIncomplete;
  size_t head_bytes = 0;
  int minor = 0;
  int status = 0;
  std::vector<size_t> spans;  // (offset, length) pairs: method, target | reason; then fields
  bool operator==(const Parsed& o) const {
    return result == o.result && head_bytes == o.head_bytes && minor == o.minor && status == o.status &&
           spans == o.spans;
  }
};

// A heap block of exactly `size` bytes. Place() copies n <= size bytes to its very end, so
// that a read past them is a read past the block: ASan sees it (n == size: the whole block).
class Block {
 public:
  explicit Block(size_t size) : p_(static_cast<char*>(std::malloc(size ? size : 1))), size_(size) {}
  ~Block() { std::free(p_); }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  const char* Place(const uint8_t* src, size_t n) {
    char* at = p_ + (size_ - n);
    if (n) std::memcpy(at, src, n);
    return at;
  }

 private:
  char* p_;
  size_t size_;
};

size_t EffectiveMaxFields(const HeadLimits& l) {
  if (l.max_fields < 0) return 0;
  return l.max_fields < kMaxHeadFields ? static_cast<size_t>(l.max_fields) : kMaxHeadFields;
}

// ---- The reference: lines first, then each line judged whole. ----

// tchar (RFC 9110 §5.6.2), worded as "a VCHAR that is not a delimiter" (the parser
// lists the allowed bytes instead).
bool RefTchar(uint8_t c) { return c > 0x20 && c < 0x7f && !std::strchr("\"(),/:;<=>?@[\\]{}", c); }
bool RefValueByte(uint8_t c) { return c == '\t' || c == ' ' || (c > 0x20 && c != 0x7f); }

bool RefRequestLine(const std::string& s, size_t base, Parsed* p) {
  const size_t sp1 = s.find(' ');
  if (sp1 == std::string::npos || sp1 == 0) return false;
  for (size_t i = 0; i < sp1; i++) {
    if (!RefTchar(static_cast<uint8_t>(s[i]))) return false;
  }
  const size_t sp2 = s.find(' ', sp1 + 1);
  if (sp2 == std::string::npos || sp2 == sp1 + 1) return false;
  for (size_t i = sp1 + 1; i < sp2; i++) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (c < 0x21 || c > 0x7e) return false;
  }
  const std::string version = s.substr(sp2 + 1);
  if (version != "HTTP/1.0" && version != "HTTP/1.1") return false;
  p->minor = version[7] - '0';
  p->spans = {base, sp1, base + sp1 + 1, sp2 - sp1 - 1};
  return true;
}

bool RefStatusLine(const std::string& s, size_t base, Parsed* p) {
  if (s.size() < 12 || (s.compare(0, 9, "HTTP/1.0 ") != 0 && s.compare(0, 9, "HTTP/1.1 ") != 0)) return false;
  for (size_t i = 9; i < 12; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  p->minor = s[7] - '0';
  p->status = std::atoi(s.substr(9, 3).c_str());
  if (s.size() == 12) {
    p->spans = {base + 12, 0};  // no reason, no SP: the span sits at the CR
    return true;
  }
  if (s[12] != ' ') return false;
  for (size_t i = 13; i < s.size(); i++) {
    if (!RefValueByte(static_cast<uint8_t>(s[i]))) return false;
  }
  p->spans = {base + 13, s.size() - 13};
  return true;
}

bool RefFieldLine(const std::string& s, size_t base, Parsed* p) {
  const size_t colon = s.find(':');
  if (colon == std::string::npos || colon == 0) return false;
  for (size_t i = 0; i < colon; i++) {
    if (!RefTchar(static_cast<uint8_t>(s[i]))) return false;
  }
  size_t a = colon + 1;
  for (size_t i = a; i < s.size(); i++) {
    if (!RefValueByte(static_cast<uint8_t>(s[i]))) return false;
  }
  size_t b = s.size();
  while (a < b && (s[a] == ' ' || s[a] == '\t')) a++;
  while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) b--;
  if (a == b) a = b = s.size();  // an empty value: the span sits at the CR
  p->spans.insert(p->spans.end(), {base, colon, base + a, b - a});
  return true;
}

bool RefStartLine(bool request, const std::string& s, size_t base, Parsed* p) {
  return request ? RefRequestLine(s, base, p) : RefStatusLine(s, base, p);
}

// Whether a start or field line cut short (no CR yet) can still become valid: whether some
// tail of a canonical line completes it (each grammar state needs one of those tails).
bool RefViable(bool start, bool request, const std::string& s) {
  const std::string tail = start ? (request ? "x / HTTP/1.1" : "HTTP/1.1 200") : "x:";
  for (size_t k = 0; k <= tail.size(); k++) {
    Parsed scratch;
    const std::string whole = s + tail.substr(k);
    if (start ? RefStartLine(request, whole, 0, &scratch) : RefFieldLine(whole, 0, &scratch)) return true;
  }
  return false;
}

Parsed RefParse(bool request, const char* d, size_t len, const HeadLimits& limits) {
  Parsed p;
  const auto stop = [](int result) {  // a verdict but Complete: no head to compare
    Parsed none;
    none.result = result;
    return none;
  };
  const size_t end = len < limits.max_bytes ? len : limits.max_bytes;
  const size_t max_fields = EffectiveMaxFields(limits);
  const int out_of_bytes = len < limits.max_bytes ? kHeadIncomplete : kHeadTooLarge;
  size_t pos = 0;
  bool start = true;
  size_t fields = 0;
  for (;;) {
    size_t k = pos;
    while (k + 1 < end && !(d[k] == '\r' && d[k + 1] == '\n')) k++;
    const bool whole = k + 1 < end;
    // A line cut short just after its CR is judged as a whole line still missing its LF.
    const bool cr_last = !whole && end > pos && d[end - 1] == '\r';
    const std::string line(d + pos, whole ? k - pos : end - pos - (cr_last ? 1 : 0));
    const bool complete = whole || cr_last;
    if (start) {
      if (request && pos == 0 && line.empty()) {  // one leading CRLF is skipped
        if (!whole) return stop(out_of_bytes);
        pos = 2;
        continue;
      }
      if (complete ? !RefStartLine(request, line, pos, &p) : !RefViable(true, request, line)) return stop(kHeadBad);
      if (!whole) return stop(out_of_bytes);
      start = false;
    } else {
      if (line.empty()) {
        if (!whole) return stop(out_of_bytes);
        p.head_bytes = k + 2;
        p.result = kHeadComplete;
        return p;
      }
      if (!RefTchar(static_cast<uint8_t>(line[0]))) return stop(kHeadBad);
      if (fields == max_fields) return stop(kHeadTooLarge);
      if (complete ? !RefFieldLine(line, pos, &p) : !RefViable(false, request, line)) return stop(kHeadBad);
      if (!whole) return stop(out_of_bytes);
      fields++;
    }
    pos = k + 2;
  }
}

// ---- The parser under test, and its invariants. ----

bool InHead(const char* d, size_t head_bytes, Span s) {
  return s.p >= d && s.p < d + head_bytes && s.n <= static_cast<size_t>(d + head_bytes - s.p);
}

void CheckCompleteHead(const char* d, size_t len, const HeadLimits& limits, size_t head_bytes,
                       const HeadField* fields, int count) {
  CHECK(head_bytes >= 4 && head_bytes <= len && head_bytes <= limits.max_bytes);
  CHECK(std::memcmp(d + head_bytes - 4, "\r\n\r\n", 4) == 0);
  for (size_t i = 0; i + 4 < head_bytes; i++) CHECK(std::memcmp(d + i, "\r\n\r\n", 4) != 0);
  for (size_t i = 0; i < head_bytes; i++) {
    const uint8_t c = static_cast<uint8_t>(d[i]);
    CHECK(c >= 0x20 || c == '\t' || c == '\r' || c == '\n');
    CHECK(c != 0x7f);
    if (c == '\r') CHECK(i + 1 < head_bytes && d[i + 1] == '\n');
    if (c == '\n') CHECK(i > 0 && d[i - 1] == '\r');
    if (c == '\n' && i + 1 < head_bytes) CHECK(d[i + 1] != ' ' && d[i + 1] != '\t');  // no obs-fold
  }
  CHECK(count >= 0 && static_cast<size_t>(count) <= EffectiveMaxFields(limits));
  for (int i = 0; i < count; i++) {
    const HeadField& f = fields[i];
    CHECK(InHead(d, head_bytes, f.name) && InHead(d, head_bytes, f.value));
    CHECK(f.name.n > 0 && f.name.p[f.name.n] == ':');  // no whitespace before the colon
    CHECK(f.name.p == d || f.name.p[-1] == '\n');
    for (size_t k = 0; k < f.name.n; k++) CHECK(RefTchar(static_cast<uint8_t>(f.name.p[k])));
    if (f.value.n > 0) {
      CHECK(f.value.p[0] != ' ' && f.value.p[0] != '\t');
      CHECK(f.value.p[f.value.n - 1] != ' ' && f.value.p[f.value.n - 1] != '\t');
    }
    for (size_t k = 0; k < f.value.n; k++) CHECK(f.value.p[k] != '\r' && f.value.p[k] != '\n');
  }
}

void AddSpan(const char* d, Span s, Parsed* p) {
  p->spans.push_back(static_cast<size_t>(s.p - d));
  p->spans.push_back(s.n);
}

RequestHead g_request;  // large (kMaxHeadFields fields): not on the stack
ResponseHead g_response;

Parsed ParseChecked(bool request, const char* d, size_t len, const HeadLimits& limits) {
  Parsed p;
  const HeadResult r =
      request ? ParseRequestHead(d, len, limits, &g_request) : ParseResponseHead(d, len, limits, &g_response);
  CHECK(r == kHeadIncomplete || r == kHeadComplete || r == kHeadBad || r == kHeadTooLarge);
  p.result = r;
  if (r == kHeadIncomplete) CHECK(len < limits.max_bytes);
  if (r != kHeadComplete) return p;
  if (request) {
    const RequestHead& h = g_request;
    CheckCompleteHead(d, len, limits, h.head_bytes, h.fields, h.field_count);
    CHECK(InHead(d, h.head_bytes, h.method) && InHead(d, h.head_bytes, h.target));
    CHECK(h.method.n > 0 && h.target.n > 0);
    CHECK(h.minor_version == 0 || h.minor_version == 1);
    p.head_bytes = h.head_bytes;
    p.minor = h.minor_version;
    AddSpan(d, h.method, &p);
    AddSpan(d, h.target, &p);
    for (int i = 0; i < h.field_count; i++) {
      AddSpan(d, h.fields[i].name, &p);
      AddSpan(d, h.fields[i].value, &p);
    }
  } else {
    const ResponseHead& h = g_response;
    CheckCompleteHead(d, len, limits, h.head_bytes, h.fields, h.field_count);
    CHECK(InHead(d, h.head_bytes, h.reason));
    CHECK(h.minor_version == 0 || h.minor_version == 1);
    CHECK(h.status >= 0 && h.status <= 999);
    p.head_bytes = h.head_bytes;
    p.minor = h.minor_version;
    p.status = h.status;
    AddSpan(d, h.reason, &p);
    for (int i = 0; i < h.field_count; i++) {
      AddSpan(d, h.fields[i].name, &p);
      AddSpan(d, h.fields[i].value, &p);
    }
  }
  return p;
}

// HasToken's reference: find the token anywhere (lower-cased copy), then look at what
// surrounds it: only OWS up to a comma or the end on both sides.
bool RefHasToken(Span v, const char* token) {
  const std::string t(token);
  if (t.empty()) return false;
  std::string s(v.p ? v.p : "", v.n);
  for (char& c : s) c = (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
  for (size_t at = s.find(t); at != std::string::npos; at = s.find(t, at + 1)) {
    size_t a = at;
    while (a > 0 && (s[a - 1] == ' ' || s[a - 1] == '\t')) a--;
    size_t b = at + t.size();
    while (b < s.size() && (s[b] == ' ' || s[b] == '\t')) b++;
    if ((a == 0 || s[a - 1] == ',') && (b == s.size() || s[b] == ',')) return true;
  }
  return false;
}

bool RefEquals(Span s, const char* lower) {
  if (std::strlen(lower) != s.n) return false;
  for (size_t i = 0; i < s.n; i++) {
    const char c = (s.p[i] >= 'A' && s.p[i] <= 'Z') ? static_cast<char>(s.p[i] + 32) : s.p[i];
    if (c != lower[i]) return false;
  }
  return true;
}

void CheckLookups(const HeadField* fields, int count) {
  std::string own;  // a name from the input, lower-cased: FindField and HasToken hit it
  if (count > 0 && fields[count - 1].name.n < 64) {
    own.assign(fields[count - 1].name.p, fields[count - 1].name.n);
    for (char& c : own) c = (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
  }
  const char* names[] = {"host", "upgrade", "connection", "sec-websocket-key", own.c_str()};
  for (const char* name : names) {
    const HeadField* want = nullptr;
    for (int i = 0; i < count && !want; i++) {
      if (RefEquals(fields[i].name, name)) want = &fields[i];
    }
    CHECK(FindField(fields, count, name) == want);
    for (int i = 0; i < count; i++) CHECK(HasToken(fields[i].value, name) == RefHasToken(fields[i].value, name));
  }
}

bool IsBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

int Base64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  return c == '+' ? 62 : 63;
}

void CheckBase64(const uint8_t* data, size_t size) {
  char accept[29];
  std::memset(accept, 'x', sizeof accept);
  WebSocketAccept(reinterpret_cast<const char*>(data), size, accept);
  for (int i = 0; i < 27; i++) CHECK(IsBase64Char(accept[i]));
  CHECK(accept[27] == '=' && accept[28] == '\0');
  if (size < 16) return;
  char key[25];
  std::memset(key, 'x', sizeof key);
  Base64Of16(data, key);
  CHECK(key[22] == '=' && key[23] == '=' && key[24] == '\0');
  uint8_t back[18];
  for (int g = 0; g < 6; g++) {
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
      const char c = key[4 * g + k];
      CHECK(IsBase64Char(c) || (g == 5 && k >= 2 && c == '='));
      v = (v << 6) | static_cast<uint32_t>(c == '=' ? 0 : Base64Value(c));
    }
    back[3 * g] = static_cast<uint8_t>(v >> 16);
    back[3 * g + 1] = static_cast<uint8_t>(v >> 8);
    back[3 * g + 2] = static_cast<uint8_t>(v);
  }
  CHECK(std::memcmp(back, data, 16) == 0);
}

// Grown byte by byte up to 300, then in larger steps (keeps a 4 KiB input fast).
size_t NextLength(size_t l, size_t n) {
  if (l < 300) return l + 1;
  const size_t step = n / 32 > 1 ? n / 32 : 1;
  return l + step < n ? l + step : n;
}

// Parses the whole input, then prefixes of it: every length (`grow`; as the engine parses
// its buffer again each time bytes come), or a few around the limit. A prefix with a
// verdict (not Incomplete) must have the whole input's verdict and head.
void CheckInput(bool request, const uint8_t* data, size_t size, const HeadLimits& limits, bool grow) {
  Block block(size);
  const char* d = block.Place(data, size);
  const Parsed whole = ParseChecked(request, d, size, limits);
  CHECK(whole == RefParse(request, d, size, limits));
  if (whole.result == kHeadComplete) {
    if (request) CheckLookups(g_request.fields, g_request.field_count);
    else CheckLookups(g_response.fields, g_response.field_count);
  }
  if (grow) {
    for (size_t l = 0; l < size; l = NextLength(l, size)) {
      const char* prefix = block.Place(data, l);
      const Parsed p = ParseChecked(request, prefix, l, limits);
      if (l == 0 || l == size / 2 || p.result != kHeadIncomplete) CHECK(p == RefParse(request, prefix, l, limits));
      if (p.result != kHeadIncomplete) {
        CHECK(p == whole);
        return;  // the longer prefixes can only say the same
      }
    }
    return;
  }
  const size_t m = limits.max_bytes;
  const size_t lengths[] = {m ? m - 1 : 0, m, m + 1, 0, 1, size / 4, size / 2, size - size / 4, size ? size - 1 : 0};
  for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
    const size_t l = lengths[i];
    if (l >= size) continue;
    const char* prefix = block.Place(data, l);
    const Parsed p = ParseChecked(request, prefix, l, limits);
    if (i < 3) CHECK(p == RefParse(request, prefix, l, limits));  // the reference is slow: at the limit only
    if (p.result != kHeadIncomplete) CHECK(p == whole);
  }
}

struct LimitCase {
  size_t max_bytes;
  int max_fields;
};

}  // namespace

// ---- Known answers: run once per fuzz process, before any input. ----

namespace {

HeadLimits Limits(size_t max_bytes, int max_fields) {
  HeadLimits l;
  l.max_bytes = max_bytes;
  l.max_fields = max_fields;
  return l;
}

bool SpanIs(Span s, const char* want) { return s.n == std::strlen(want) && std::memcmp(s.p, want, s.n) == 0; }

void Fail(const char* what, const std::string& input, int got, int want) {
  std::fprintf(stderr, "known answer failed: %s: ", what);
  for (char c : input) {
    if (c >= 0x20 && c < 0x7f) std::fprintf(stderr, "%c", c);
    else std::fprintf(stderr, "\\x%02x", static_cast<unsigned char>(c));
  }
  std::fprintf(stderr, " (got %d, want %d)\n", got, want);
  __builtin_trap();
}

std::string g_input;  // what g_request / g_response point into after Request / Response

// Runs every fuzz check on `input`, then parses it into g_request; returns the verdict.
int Request(const std::string& input, const HeadLimits& limits = HeadLimits()) {
  CheckInput(true, reinterpret_cast<const uint8_t*>(input.data()), input.size(), limits, true);
  g_input = input;
  return ParseRequestHead(g_input.data(), g_input.size(), limits, &g_request);
}

int Response(const std::string& input, const HeadLimits& limits = HeadLimits()) {
  CheckInput(false, reinterpret_cast<const uint8_t*>(input.data()), input.size(), limits, true);
  g_input = input;
  return ParseResponseHead(g_input.data(), g_input.size(), limits, &g_response);
}

struct Case {
  const char* input;
  size_t len;  // 0: strlen (for inputs with a NUL, the length)
  int want;
};

const char kBrowserRequest[] =
    "GET /chat?room=1 HTTP/1.1\r\n"
    "Host: example.com:8080\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    "Pragma: no-cache\r\n"
    "Cache-Control: no-cache\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36\r\n"
    "Upgrade: websocket\r\n"
    "Origin: https://example.com\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    "\r\n";

const Case kRequestCases[] = {
    {"GET / HTTP/1.1\r\n\r\n", 0, kHeadComplete},
    {"GET / HTTP/1.0\r\nHost: a\r\n\r\n", 0, kHeadComplete},
    {"\r\nGET / HTTP/1.1\r\n\r\n", 0, kHeadComplete},  // one leading CRLF is ignored
    {"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 0, kHeadBad},   // not two
    {"\rGET / HTTP/1.1\r\n\r\n", 0, kHeadBad},
    {"OPTIONS * HTTP/1.1\r\n\r\n", 0, kHeadComplete},
    {"M-SEARCH! http://a/b?c=d#e HTTP/1.1\r\n\r\n", 0, kHeadComplete},
    {"GET / HTTP/1.1\r\nX:\r\nY: \t \r\nZ:\t\xff\xfe obs\r\n\r\n", 0, kHeadComplete},
    {"", 0, kHeadIncomplete},
    {"\r", 0, kHeadIncomplete},
    {"\r\n", 0, kHeadIncomplete},
    {"GET", 0, kHeadIncomplete},
    {"GET / HTTP/1.", 0, kHeadIncomplete},
    {"GET / HTTP/1.1\r\nHost: a\r\n", 0, kHeadIncomplete},
    {"GET / HTTP/1.1\r\nHost: a\r\n\r", 0, kHeadIncomplete},
    {"GET /\0", 6, kHeadBad},  // refused before the line ends
    {"GET\t/ HTTP/1.1\r\n\r\n", 0, kHeadBad},
    {"GET  / HTTP/1.1\r\n\r\n", 0, kHeadBad},
    {" GET / HTTP/1.1\r\n\r\n", 0, kHeadBad},
    {"G@T / HTTP/1.1\r\n\r\n", 0, kHeadBad},
    {"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", 0, kHeadBad},
    {"GET / HTTP/1.2\r\n\r\n", 0, kHeadBad},
    {"GET / HTTP/2.0\r\n\r\n", 0, kHeadBad},
    {"GET / http/1.1\r\n\r\n", 0, kHeadBad},
    {"GET / HTTP/1.1 \r\n\r\n", 0, kHeadBad},
    {"GET / HTTP/1.10\r\n\r\n", 0, kHeadBad},
    {"GET /\r\n\r\n", 0, kHeadBad},
    {"GET / HTTP/1.1\n\r\n", 0, kHeadBad},                  // bare LF
    {"GET / HTTP/1.1\r\nHost: a\n\r\n", 0, kHeadBad},       // bare LF
    {"GET / HTTP/1.1\r\nHost: a\r\n\n", 0, kHeadBad},       // bare LF
    {"GET / HTTP/1.1\r\nHost: a\r\n fold\r\n\r\n", 0, kHeadBad},  // obs-fold
    {"GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", 0, kHeadBad},
    {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 0, kHeadBad},  // space before the colon
    {"GET / HTTP/1.1\r\n: a\r\n\r\n", 0, kHeadBad},       // empty name
    {"GET / HTTP/1.1\r\nHost a\r\n\r\n", 0, kHeadBad},    // no colon
    {"GET / HTTP/1.1\r\nX(y): a\r\n\r\n", 0, kHeadBad},
    {"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 26, kHeadBad},
    {"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 0, kHeadBad},
    {"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", 0, kHeadBad},
    {"GET / HTTP/1.1\r\nX: a\x01\r\n\r\n", 0, kHeadBad},
    {"GET / HTTP/1.1\r\nX: a\r\r\n\r\n", 0, kHeadBad},
    {"GET / HTTP/1.1\r\nX: a\r\n\rx", 0, kHeadBad},
};

const Case kResponseCases[] = {
    {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", 0, kHeadComplete},
    {"HTTP/1.1 101\r\n\r\n", 0, kHeadComplete},
    {"HTTP/1.1 101 \r\n\r\n", 0, kHeadComplete},
    {"HTTP/1.0 200 \xe2\x9c\x93 ok\tfine\r\n\r\n", 0, kHeadComplete},
    {"HTTP/1.1 000 x\r\n\r\n", 0, kHeadComplete},  // 3DIGIT: what a status means is the caller's
    {"", 0, kHeadIncomplete},
    {"HTTP/1.1", 0, kHeadIncomplete},
    {"HTTP/1.1 10", 0, kHeadIncomplete},
    {"HTTP/1.1 101", 0, kHeadIncomplete},
    {"HTTP/1.1 101 Switching", 0, kHeadIncomplete},
    {"\r\nHTTP/1.1 101\r\n\r\n", 0, kHeadBad},  // no blank lines skipped in a response
    {"HTTP/1.1 10\r\n\r\n", 0, kHeadBad},
    {"HTTP/1.1 1011 x\r\n\r\n", 0, kHeadBad},
    {"HTTP/1.1  101 x\r\n\r\n", 0, kHeadBad},
    {"HTTP/1.1 abc x\r\n\r\n", 0, kHeadBad},
    {"HTTP/1.1 101\tx\r\n\r\n", 0, kHeadBad},
    {"HTTP/1.1 101 x\0", 15, kHeadBad},
    {"HTTP/1.1 101 x\x7f\r\n\r\n", 0, kHeadBad},
    {"HTTP/2 101\r\n\r\n", 0, kHeadBad},
    {"HTTP/1.2 101\r\n\r\n", 0, kHeadBad},
    {"http/1.1 101\r\n\r\n", 0, kHeadBad},
    {"HTTP/1.1 101 x\n\r\n", 0, kHeadBad},
    {"HTTP/1.1 101 x\r\nUpgrade : websocket\r\n\r\n", 0, kHeadBad},
};

std::string Str(const Case& c) { return std::string(c.input, c.len ? c.len : std::strlen(c.input)); }

void KnownAnswers() {
  for (const Case& c : kRequestCases) {
    const int got = Request(Str(c));
    if (got != c.want) Fail("request", Str(c), got, c.want);
  }
  for (const Case& c : kResponseCases) {
    const int got = Response(Str(c));
    if (got != c.want) Fail("response", Str(c), got, c.want);
  }

  // A browser's upgrade request, with a frame after it.
  const std::string browser(kBrowserRequest);
  CHECK(Request(browser + "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58") == kHeadComplete);
  const RequestHead& rq = g_request;
  CHECK(rq.head_bytes == browser.size());
  CHECK(SpanIs(rq.method, "GET") && SpanIs(rq.target, "/chat?room=1") && rq.minor_version == 1);
  CHECK(rq.field_count == 12);
  const HeadField* key = FindField(rq.fields, rq.field_count, "sec-websocket-key");
  CHECK(key && SpanIs(key->value, "dGhlIHNhbXBsZSBub25jZQ=="));
  const HeadField* conn = FindField(rq.fields, rq.field_count, "connection");
  CHECK(conn && HasToken(conn->value, "upgrade") && HasToken(conn->value, "keep-alive"));
  CHECK(!HasToken(conn->value, "close"));
  const HeadField* up = FindField(rq.fields, rq.field_count, "upgrade");
  CHECK(up && HasToken(up->value, "websocket"));
  CHECK(FindField(rq.fields, rq.field_count, "sec-websocket-protocol") == nullptr);
  CHECK(FindField(rq.fields, rq.field_count, "sec-websocket-") == nullptr);
  CHECK(Request("GET / HTTP/1.1\r\nA:  x y \t\r\nB:\r\n\r\n") == kHeadComplete);
  CHECK(g_request.field_count == 2 && SpanIs(g_request.fields[0].value, "x y"));
  CHECK(g_request.fields[1].value.n == 0);
  CHECK(Request("\r\nPUT /x HTTP/1.0\r\n\r\n") == kHeadComplete);
  CHECK(SpanIs(g_request.method, "PUT") && g_request.minor_version == 0 && g_request.head_bytes == 21);

  CHECK(Response("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n") ==
        kHeadComplete);
  CHECK(g_response.status == 101 && SpanIs(g_response.reason, "Switching Protocols") && g_response.field_count == 1);
  const std::string bad_request =
      "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n";
  CHECK(Response(bad_request + "bad request") == kHeadComplete);
  CHECK(g_response.head_bytes == bad_request.size() && g_response.status == 400 && g_response.minor_version == 0);
  CHECK(Response("HTTP/1.1 101\r\n\r\n") == kHeadComplete && g_response.reason.n == 0);

  // Limits: max_bytes counts the whole head; only Incomplete below it.
  const std::string small = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";  // 27 bytes
  CHECK(Request(small, Limits(27, 10)) == kHeadComplete);
  CHECK(Request(small, Limits(26, 10)) == kHeadTooLarge);
  CHECK(Request(small.substr(0, 25), Limits(26, 10)) == kHeadIncomplete);
  CHECK(Request(small.substr(0, 26), Limits(26, 10)) == kHeadTooLarge);
  CHECK(Request(small, Limits(0, 10)) == kHeadTooLarge);
  CHECK(Request(std::string("GET /\0", 6), Limits(100, 10)) == kHeadBad);
  CHECK(Request(std::string("GET /\0", 6), Limits(5, 10)) == kHeadTooLarge);  // the NUL is past the limit
  CHECK(Request(std::string("GET /\0", 6), Limits(6, 10)) == kHeadBad);
  CHECK(Response("HTTP/1.1 101\r\n\r\n", Limits(16, 0)) == kHeadComplete);
  CHECK(Response("HTTP/1.1 101\r\n\r\n", Limits(15, 0)) == kHeadTooLarge);
  // max_fields: refused at the first byte of a field too many.
  const std::string two = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n";
  CHECK(Request(two + "\r\n", Limits(1000, 2)) == kHeadComplete);
  CHECK(Request(two + "C", Limits(1000, 2)) == kHeadTooLarge);
  CHECK(Request(two + " ", Limits(1000, 2)) == kHeadBad);
  CHECK(Request(two + "\r\n", Limits(1000, 1)) == kHeadTooLarge);
  CHECK(Request(two + "\r\n", Limits(1000, 0)) == kHeadTooLarge);
  CHECK(Request(two + "\r\n", Limits(1000, -1)) == kHeadTooLarge);
  CHECK(Request("GET / HTTP/1.1\r\n\r\n", Limits(1000, -1)) == kHeadComplete);
  std::string many = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < kMaxHeadFields; i++) many += "F: v\r\n";
  CHECK(Request(many + "\r\n", Limits(1 << 20, 100000)) == kHeadComplete);
  CHECK(g_request.field_count == kMaxHeadFields);
  CHECK(Request(many + "F: v\r\n\r\n", Limits(1 << 20, 100000)) == kHeadTooLarge);

  // Span::Equals and HasToken.
  const auto span = [](const char* s) { return Span{s, std::strlen(s)}; };
  CHECK(span("Sec-WebSocket-Key").Equals("sec-websocket-key"));
  CHECK(!span("Host").Equals("hos") && !span("Hos").Equals("host") && !span("Host").Equals("hosts"));
  CHECK(span("").Equals("") && !span("").Equals("a") && !span("a").Equals(""));
  CHECK(!span("Host-").Equals("host_"));
  CHECK(HasToken(span("keep-alive, Upgrade"), "upgrade"));
  CHECK(!HasToken(span("upgrades"), "upgrade") && !HasToken(span("xupgrade"), "upgrade"));
  CHECK(HasToken(span(" \tUPGRADE \t"), "upgrade") && HasToken(span("a,,upgrade,"), "upgrade"));
  CHECK(HasToken(span("Upgrade,keep-alive"), "keep-alive") && !HasToken(span("up grade"), "upgrade"));
  CHECK(!HasToken(span(""), "upgrade") && !HasToken(span("a, , b"), "") && !HasToken(span("upgrade"), ""));

  // Sec-WebSocket-Accept: RFC 6455 §1.3's example, then SHA-1 messages (key + 36-byte GUID)
  // of 36, 37, 55, 56, 63, 64, 119, 120, 128 and 236 bytes: the padding's edges (answers
  // from Node's crypto).
  char accept[29];
  WebSocketAccept("dGhlIHNhbXBsZSBub25jZQ==", 24, accept);
  CHECK(std::strcmp(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);
  struct {
    size_t key_len;
    const char* accept;
  } const kAccepts[] = {
      {0, "Kfh9QIsMVZcl6xEPYxPHzW8SZ8w="},   {1, "ifbkLlYnnZ6VH2fexKeR04WxMg0="},
      {19, "zVcqb9tMYc5Zc2uxBrAT/MVLynQ="},  {20, "3d08mPeHMipd/eEivLnIc3AJ3Zw="},
      {27, "ILvNju3IIwsq8o4QkWth3MxkxWI="},  {28, "/XcGnuJ5rJIzd5Esv+vExqWq6t0="},
      {83, "f/k7rwEXHuNqiyFqmCku1I1L9yo="},  {84, "VWz19L6hWAerB/rWQYiSRwThTKo="},
      {92, "4vwgdUH8mqztcfvSi8RYXGNEksM="},  {200, "nwA8UALhXEwibxg90YEALRQrOkM="},
  };
  for (const auto& a : kAccepts) {
    std::string k;
    for (size_t i = 0; i < a.key_len; i++) k += static_cast<char>(33 + (i * 7) % 90);
    WebSocketAccept(k.data(), k.size(), accept);
    if (std::strcmp(accept, a.accept) != 0) Fail("accept", k, static_cast<int>(a.key_len), 0);
  }
  char nonce[25];
  Base64Of16(reinterpret_cast<const uint8_t*>("the sample nonce"), nonce);
  CHECK(std::strcmp(nonce, "dGhlIHNhbXBsZSBub25jZQ==") == 0);
  uint8_t bytes[16];
  for (int i = 0; i < 16; i++) bytes[i] = static_cast<uint8_t>(i * 17);
  Base64Of16(bytes, nonce);
  CHECK(std::strcmp(nonce, "ABEiM0RVZneImaq7zN3u/w==") == 0);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  KnownAnswers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const LimitCase cases[] = {
      {16384, 100},       // the engine's defaults: grown byte by byte
      {64, 3},            // small: TooLarge on both counts
      {size / 2 + 1, 2},  // the limit inside the input
      {1 << 20, 100000},  // max_fields above kMaxHeadFields
      {12, 0},
  };
  bool grow = true;
  for (const LimitCase& c : cases) {
    const HeadLimits limits = Limits(c.max_bytes, c.max_fields);
    CheckInput(true, data, size, limits, grow);
    CheckInput(false, data, size, limits, grow);
    grow = false;
  }
  CheckBase64(data, size);
  return 0;
}
