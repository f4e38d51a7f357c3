// libFuzzer target: the engine's permessage-deflate meter (native/engine/inflate_meter.h).
//
// Input: byte 0 says text or binary and the chunk size, byte 1 the limit; the rest is one
// message's compressed payload (raw deflate, RFC 7692 tail removed), fed to the meter in
// chunks as reads would bring it, through a small output buffer (so output spans many
// inflate calls). Checked against a reference that inflates the whole payload (plus the
// tail) in one go with zlib into one buffer:
// - kOk: the meter counted exactly the reference's output, which is within the limit and
//   (text) valid UTF-8;
// - kTooBig: the reference's output passes the limit;
// - kBadUtf8: the message is text and the reference's output (up to where it stopped) is
//   not valid UTF-8;
// - kCorrupt: the reference fails too, or stops early.
// Then a second message on the same meter (context takeover) must not crash, and the meter
// must hold nothing after a failure.
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../engine/inflate_meter.h"
#include "../utf8.h"

namespace {

using sluice::engine::InflateMeter;

const uint8_t kTail[4] = {0x00, 0x00, 0xff, 0xff};

// Inflates `in` (plus the tail) whole, resetting after a final block as the meter does.
// Returns false when zlib fails; *out holds what came out (up to cap + 1 bytes).
bool Reference(const uint8_t* in, size_t n, size_t cap, std::vector<uint8_t>* out) {
  std::vector<uint8_t> input(in, in + n);
  input.insert(input.end(), kTail, kTail + 4);
  z_stream z{};
  if (inflateInit2(&z, -15) != Z_OK) abort();
  out->assign(cap + 1 + 65536, 0);
  z.next_in = input.data();
  z.avail_in = static_cast<uInt>(input.size());
  size_t got = 0;
  bool ok = true;
  for (;;) {
    z.next_out = out->data() + got;
    z.avail_out = static_cast<uInt>(out->size() - got);
    const int r = inflate(&z, Z_SYNC_FLUSH);
    got = out->size() - z.avail_out;
    if (got > cap) break;
    if (r == Z_STREAM_END) {
      if (inflateReset(&z) != Z_OK) abort();
      if (z.avail_in == 0) break;
      continue;
    }
    if (r == Z_BUF_ERROR && z.avail_in == 0) break;
    if (r != Z_OK && r != Z_BUF_ERROR) {
      ok = false;
      break;
    }
    if (z.avail_in == 0 && z.avail_out != 0) break;
  }
  inflateEnd(&z);
  out->resize(got);
  return ok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const bool text = data[0] & 1;
  const bool reset = data[0] & 2;
  const size_t chunk = 1 + (data[0] >> 2);                 // 1..64 bytes per read
  const uint64_t limit = 16 + static_cast<uint64_t>(data[1]) * 257;  // 16..65551 bytes
  const uint8_t* msg = data + 2;
  const size_t n = size - 2;

  uint8_t scratch[97];  // small and odd: output spans many inflate calls
  sluice::Utf8Stream utf8;
  InflateMeter meter(reset);
  meter.Begin(text ? &utf8 : nullptr);
  InflateMeter::Result r = InflateMeter::kOk;
  size_t at = 0;
  do {
    const size_t take = n - at < chunk ? n - at : chunk;
    // Each read's bytes in their own heap block: ASan sees a read past them.
    std::vector<uint8_t> read(msg + at, msg + at + take);
    at += take;
    r = meter.Push(read.data(), read.size(), at == n, limit, scratch, sizeof scratch);
  } while (r == InflateMeter::kOk && at < n);
  const uint64_t counted = meter.produced();

  std::vector<uint8_t> ref;
  const bool ref_ok = Reference(msg, n, static_cast<size_t>(limit), &ref);
  const bool ref_utf8 = sluice::IsUtf8(ref.data(), ref.size());
  switch (r) {
    case InflateMeter::kOk:
      if (!ref_ok || counted != ref.size() || ref.size() > limit || (text && !ref_utf8)) {
        std::fprintf(stderr, "kOk: counted %llu, reference %zu ok %d utf8 %d\n", static_cast<unsigned long long>(counted),
                     ref.size(), ref_ok, ref_utf8);
        abort();
      }
      break;
    case InflateMeter::kTooBig:
      if (ref.size() <= limit) abort();
      break;
    case InflateMeter::kBadUtf8:
      if (!text) abort();
      // The meter judges as bytes come: a prefix that cannot start valid UTF-8, or an
      // incomplete sequence at the end. The reference's whole output is then not UTF-8
      // either (unless it failed or passed the limit first, where it stopped early).
      if (ref_ok && ref.size() <= limit && ref_utf8) abort();
      break;
    case InflateMeter::kCorrupt:
      if (ref_ok && ref.size() <= limit && (!text || ref_utf8)) {
        std::fprintf(stderr, "kCorrupt but the reference inflates %zu bytes\n", ref.size());
        abort();
      }
      break;
  }
  if (r != InflateMeter::kOk && meter.holding()) abort();
  // A next message on the same meter (context takeover when it holds a window).
  meter.Begin(nullptr);
  meter.Push(msg, n, true, limit, scratch, sizeof scratch);
  return 0;
}
