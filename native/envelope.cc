#include "envelope.h"

#include <cstring>

#include "codec_abi.h"

namespace sluice {

namespace {

// Checks the header at p (n bytes available from p); on success sets *len.
int32_t CheckHeader(const uint8_t* p, size_t n, uint64_t max_payload, uint32_t* len) {
  if (n < kEnvelopeHeaderBytes) return -codec_errno::kEnvelopeLength;
  if (p[0] != kEnvelopeVersion) return -codec_errno::kEnvelopeVersion;
  if (p[3] != 0) return -codec_errno::kEnvelopeReserved;
  if (p[1] < kEnvelopeTypeMin || p[1] > kEnvelopeTypeMax) return -codec_errno::kEnvelopeType;
  if (p[2] & ~kEnvelopeFlagsKnown) return -codec_errno::kEnvelopeFlags;
  const uint32_t l = (static_cast<uint32_t>(p[4]) << 24) | (static_cast<uint32_t>(p[5]) << 16) |
                     (static_cast<uint32_t>(p[6]) << 8) | static_cast<uint32_t>(p[7]);
  if (l > max_payload) return -codec_errno::kEnvelopeTooBig;
  *len = l;
  return 0;
}

}  // namespace

void EnvelopeHeader(uint8_t* out, uint8_t type, uint8_t flags, uint32_t payload_len) {
  out[0] = kEnvelopeVersion;
  out[1] = type;
  out[2] = flags;
  out[3] = 0;
  out[4] = static_cast<uint8_t>(payload_len >> 24);
  out[5] = static_cast<uint8_t>(payload_len >> 16);
  out[6] = static_cast<uint8_t>(payload_len >> 8);
  out[7] = static_cast<uint8_t>(payload_len);
}

size_t EnvelopeEncode(uint8_t* out, uint8_t type, uint8_t flags, const uint8_t* payload,
                      uint32_t payload_len) {
  EnvelopeHeader(out, type, flags, payload_len);
  // memmove: the caller may encode a payload that already sits in `out`.
  if (payload_len) std::memmove(out + kEnvelopeHeaderBytes, payload, payload_len);
  return kEnvelopeHeaderBytes + payload_len;
}

int32_t EnvelopeDecode(const uint8_t* msg, size_t n, uint64_t max_payload, uint32_t out4[4]) {
  uint32_t len = 0;
  int32_t rc = CheckHeader(msg, n, max_payload, &len);
  if (rc) return rc;
  if (static_cast<uint64_t>(len) != n - kEnvelopeHeaderBytes) return -codec_errno::kEnvelopeLength;
  out4[0] = msg[1];
  out4[1] = msg[2];
  out4[2] = kEnvelopeHeaderBytes;
  out4[3] = len;
  return 0;
}

int32_t EnvelopeDecodeRun(const uint8_t* buf, size_t n, uint64_t max_payload, uint32_t* desc,
                          size_t capacity) {
  size_t pos = 0;
  size_t count = 0;
  while (pos < n) {
    if (count == capacity) return -codec_errno::kEnvelopeLength;
    uint32_t len = 0;
    int32_t rc = CheckHeader(buf + pos, n - pos, max_payload, &len);
    if (rc) return rc;
    if (static_cast<uint64_t>(len) > n - pos - kEnvelopeHeaderBytes) {
      return -codec_errno::kEnvelopeLength;
    }
    uint32_t* d = desc + count * kEnvelopeDescriptorWords;
    d[0] = buf[pos + 1];
    d[1] = buf[pos + 2];
    d[2] = static_cast<uint32_t>(pos + kEnvelopeHeaderBytes);
    d[3] = len;
    count++;
    pos += kEnvelopeHeaderBytes + len;
  }
  return static_cast<int32_t>(count);
}

}  // namespace sluice
