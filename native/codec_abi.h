// Numbers shared with src/codec/types.ts. They are ABI: JS reads descriptors, state words
// and error numbers written here, so every value below must match types.ts exactly.
#ifndef SLUICE_CODEC_ABI_H
#define SLUICE_CODEC_ABI_H

#include <cstdint>

namespace sluice {

// RFC 6455 §5.2 opcodes.
namespace opcode {
constexpr uint8_t kContinuation = 0x0;
constexpr uint8_t kText = 0x1;
constexpr uint8_t kBinary = 0x2;
constexpr uint8_t kClose = 0x8;
constexpr uint8_t kPing = 0x9;
constexpr uint8_t kPong = 0xa;
}  // namespace opcode

// CodecErrno: a failing call returns -errno.
namespace codec_errno {
constexpr int32_t kBadOpcode = 1;
constexpr int32_t kControlTooLong = 2;
constexpr int32_t kControlFragmented = 3;
constexpr int32_t kReservedBits = 4;
constexpr int32_t kMaskExpected = 5;
constexpr int32_t kMaskUnexpected = 6;
constexpr int32_t kLengthTopBit = 7;
constexpr int32_t kUnexpectedContinuation = 8;
constexpr int32_t kExpectedContinuation = 9;
constexpr int32_t kFrameTooBig = 10;
constexpr int32_t kMessageTooBig = 11;
constexpr int32_t kTooManyFragments = 12;
constexpr int32_t kInvalidUtf8 = 13;
constexpr int32_t kEnvelopeVersion = 20;
constexpr int32_t kEnvelopeReserved = 21;
constexpr int32_t kEnvelopeType = 22;
constexpr int32_t kEnvelopeLength = 23;
constexpr int32_t kEnvelopeTooBig = 24;
constexpr int32_t kEnvelopeFlags = 25;
}  // namespace codec_errno

// Frame descriptor: kDescriptorWords uint32 words per frame.
constexpr uint32_t kDescriptorWords = 4;
namespace desc {
constexpr uint32_t kInfo = 0;     // word index: opcode + flag bits below
constexpr uint32_t kOffset = 1;   // word index: payload start (chunk, or carry when kCarry)
constexpr uint32_t kLength = 2;   // word index: payload length
constexpr uint32_t kMaskKey = 3;  // word index: mask bytes big endian, 0 when unmasked
constexpr uint32_t kOpcodeMask = 0x0f;
constexpr uint32_t kFin = 1u << 4;
constexpr uint32_t kRsv1 = 1u << 5;
constexpr uint32_t kRsv2 = 1u << 6;
constexpr uint32_t kRsv3 = 1u << 7;
constexpr uint32_t kMasked = 1u << 8;
constexpr uint32_t kCarry = 1u << 9;
}  // namespace desc

// Parser state words (Int32Array).
constexpr uint32_t kStateWords = 4;
namespace state {
constexpr uint32_t kCount = 0;
constexpr uint32_t kResume = 1;
constexpr uint32_t kErrno = 2;
constexpr uint32_t kErrorOffset = 3;
}  // namespace state

// Envelope v2.
constexpr uint8_t kEnvelopeVersion = 0x02;
constexpr uint32_t kEnvelopeHeaderBytes = 8;
constexpr uint32_t kEnvelopeDescriptorWords = 4;
constexpr uint8_t kEnvelopeTypeMin = 1;  // data
constexpr uint8_t kEnvelopeTypeMax = 6;  // control
constexpr uint8_t kEnvelopeFlagsKnown = 0x0f;  // compressed | fragmented | final | backpressure

// Role numbers of the FrameParser / FrameEncoder constructors.
constexpr int kRoleClient = 0;
constexpr int kRoleServer = 1;

}  // namespace sluice

#endif  // SLUICE_CODEC_ABI_H
