// libFuzzer target: envelope v2 decode and decodeRun.
// Input: 1 byte choosing maxPayload and the descriptor capacity, then the bytes.
// Invariants: descriptors lie inside the buffer and tile it exactly; a decoded envelope
// re-encodes to the same bytes; decode and a one-frame decodeRun agree.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fuzz_check.h"
#include "../codec_abi.h"
#include "../envelope.h"


extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint64_t kMax[4] = {0, 16, 1000, UINT64_MAX};
  const uint64_t max_payload = kMax[data[0] & 3];
  const size_t capacity = (data[0] >> 2) & 15;
  const size_t n = size - 1;
  uint8_t* buf = static_cast<uint8_t*>(std::malloc(n ? n : 1));
  if (n) std::memcpy(buf, data + 1, n);

  uint32_t one[4] = {0, 0, 0, 0};
  const int32_t rc = sluice::EnvelopeDecode(buf, n, max_payload, one);
  CHECK(rc == 0 || (-rc >= sluice::codec_errno::kEnvelopeVersion && -rc <= sluice::codec_errno::kEnvelopeFlags));
  if (rc == 0) {
    CHECK(one[2] == 8 && one[3] == n - 8 && one[3] <= max_payload);
    std::vector<uint8_t> again(n);
    CHECK(sluice::EnvelopeEncode(again.data(), static_cast<uint8_t>(one[0]), static_cast<uint8_t>(one[1]), buf + 8, one[3]) == n);
    CHECK(std::memcmp(again.data(), buf, n) == 0);
  }

  std::vector<uint32_t> desc(capacity * sluice::kEnvelopeDescriptorWords + 1);
  const int32_t count = sluice::EnvelopeDecodeRun(buf, n, max_payload, desc.data(), capacity);
  if (count >= 0) {
    CHECK(static_cast<size_t>(count) <= capacity);
    size_t pos = 0;
    for (int32_t i = 0; i < count; i++) {
      const uint32_t* d = &desc[i * 4];
      CHECK(d[0] >= 1 && d[0] <= 6 && d[1] <= 15);
      CHECK(d[2] == pos + 8 && d[3] <= n - d[2] && d[3] <= max_payload);
      pos = d[2] + d[3];
    }
    CHECK(pos == n);
    if (count == 1) CHECK(rc == 0 && std::memcmp(one, desc.data(), sizeof(one)) == 0);
  }
  if (rc == 0 && capacity >= 1) CHECK(count == 1);
  std::free(buf);
  return 0;
}
