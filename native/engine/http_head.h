// HTTP/1.1 message heads for the engine's own handshakes: the client's upgrade request
// (the engine accepts connections itself) and the upstream's answer to ours. Small, with
// hard limits, no allocation: fields are views into the caller's buffer. Fuzzed by
// native/fuzz/http_head_fuzz.cc.
//
// RFC 9112 grammar, strictly: request-line = method SP request-target SP HTTP-version CRLF;
// status-line = HTTP-version SP 3DIGIT SP [reason] CRLF; field-line = token ":" OWS value
// OWS CRLF. Bare LF, obs-fold (a line starting with SP/HTAB), whitespace before the
// colon, a NUL or other control byte (but HTAB) in a value, a non-token byte in a name
// or method, a target that is not printable ASCII: each is an error (400), as in
// llhttp's strict mode.
#ifndef SLUICE_ENGINE_HTTP_HEAD_H_
#define SLUICE_ENGINE_HTTP_HEAD_H_

#include <cstddef>
#include <cstdint>

namespace sluice {
namespace engine {

struct Span {
  const char* p = nullptr;
  size_t n = 0;
  bool Equals(const char* lower_literal) const;  // ASCII case-insensitive
};

struct HeadField {
  Span name;
  Span value;  // without leading/trailing OWS
};

constexpr int kMaxHeadFields = 256;

enum HeadResult {
  kHeadIncomplete = 0,  // need more bytes (and fewer than max_bytes were seen)
  kHeadComplete = 1,
  kHeadBad = 2,         // malformed: 400
  kHeadTooLarge = 3,    // past max_bytes or max_fields: 431
};

struct HeadLimits {
  size_t max_bytes = 16384;  // the whole head, CRLFCRLF included
  int max_fields = 100;      // <= kMaxHeadFields
};

struct RequestHead {
  Span method;
  Span target;
  int minor_version = 1;  // HTTP/1.<minor>; only 0 and 1 are accepted
  HeadField fields[kMaxHeadFields];
  int field_count = 0;
  size_t head_bytes = 0;  // through the blank line
};

struct ResponseHead {
  int minor_version = 1;
  int status = 0;
  Span reason;
  HeadField fields[kMaxHeadFields];
  int field_count = 0;
  size_t head_bytes = 0;
};

// Parse `len` bytes from the start of a request. Complete: *out filled, head_bytes set.
// Incomplete when no blank line yet and len < max_bytes; TooLarge when the head would be
// longer than max_bytes, or has more than max_fields fields.
HeadResult ParseRequestHead(const char* data, size_t len, const HeadLimits& limits, RequestHead* out);
HeadResult ParseResponseHead(const char* data, size_t len, const HeadLimits& limits, ResponseHead* out);

// The first field named `lower_name` (case-insensitive), or nullptr.
const HeadField* FindField(const HeadField* fields, int count, const char* lower_name);
// Whether a comma-separated field value holds `lower_token` (case-insensitive, OWS trimmed).
bool HasToken(Span value, const char* lower_token);

// Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)), 28 chars + NUL.
void WebSocketAccept(const char* key, size_t key_len, char out[29]);
// A fresh Sec-WebSocket-Key from 16 random bytes: 24 base64 chars + NUL.
void Base64Of16(const uint8_t in[16], char out[25]);

}  // namespace engine
}  // namespace sluice

#endif  // SLUICE_ENGINE_HTTP_HEAD_H_
