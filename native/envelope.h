// Envelope v2 (DESIGN "Protocols"): 8-byte header, then the payload.
//
//   +---------+------+-------+----------+-------------------+-----------+
//   | version | type | flags | reserved | length (uint32 BE)| payload   |
//   |  0x02   |  1 B |  1 B  |  0x00    |  4 B              | (length)  |
//   +---------+------+-------+----------+-------------------+-----------+
//
// Order of checks for one envelope (the first failing one is reported), shared with the
// TypeScript twin:
//   1. fewer than 8 bytes left for the header      -> EnvelopeLength
//   2. version != 0x02                             -> EnvelopeVersion
//   3. reserved != 0x00                            -> EnvelopeReserved
//   4. type outside 0x01..0x06                     -> EnvelopeType
//   5. flags outside 0x0F                          -> EnvelopeFlags
//   6. length > maxPayload                         -> EnvelopeTooBig (before the bytes
//      present are looked at, so an oversized claim is always "too big")
//   7. length != bytes present (decode) or the run is cut short (decodeRun)
//                                                  -> EnvelopeLength
// In a run, a frame that starts when `descriptors` is already full is refused with
// EnvelopeLength before its header is looked at. An empty run decodes to 0 frames.
#ifndef SLUICE_ENVELOPE_H
#define SLUICE_ENVELOPE_H

#include <cstddef>
#include <cstdint>

namespace sluice {

// Writes the 8-byte header of an envelope with a payload of payload_len bytes at out.
void EnvelopeHeader(uint8_t* out, uint8_t type, uint8_t flags, uint32_t payload_len);

// Writes header + payload at out (which must have 8 + payload_len bytes); returns bytes
// written. Arguments are validated by the caller.
size_t EnvelopeEncode(uint8_t* out, uint8_t type, uint8_t flags, const uint8_t* payload,
                      uint32_t payload_len);

// Decodes a message that must be exactly one envelope. On success writes
// {type, flags, payloadOffset (8), payloadLength} into out4 and returns 0; else -errno and
// leaves out4 untouched. max_payload: lengths above it are EnvelopeTooBig.
int32_t EnvelopeDecode(const uint8_t* msg, size_t n, uint64_t max_payload, uint32_t out4[4]);

// Decodes concatenated envelopes that fill buf exactly; 4 words per frame into desc
// (capacity frames at most). Returns the frame count, or -errno. On failure the
// descriptors of the frames before the bad one have been written.
int32_t EnvelopeDecodeRun(const uint8_t* buf, size_t n, uint64_t max_payload, uint32_t* desc,
                          size_t capacity);

}  // namespace sluice

#endif  // SLUICE_ENVELOPE_H
