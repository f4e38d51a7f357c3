// The frame parser's fast path, stateless so that both parsers can use it: the native
// FrameParserCore between its general steps, and the TypeScript parser (through the
// binding's frameRun) for the long runs of small frames where a native call pays off.
//
// A run is the frames, from pos on, that the parser would accept without touching its
// message state and describe exactly as the general loop does (same descriptor words,
// payload unmasked in place), stopping before the first frame that is not one:
//   - FIN, no RSV bit, opcode text/binary (only when not inside a fragmented message) or
//     close/ping/pong (control frames: 7-bit length, at most 125);
//   - masked when the role is server, unmasked when client;
//   - a 7- or 16-bit length of at most max_len (RunMaxLength: every limit holds for a
//     one-frame message of that size, so none is checked per frame);
//   - header and payload wholly inside chunk[0..len);
//   - while count < max_frames.
// Everything else (partial frames, fragments, 64-bit lengths, RSV1, errors) is left to
// the caller's general loop, which sees the stream from the returned position on.
#ifndef SLUICE_FRAME_RUN_H
#define SLUICE_FRAME_RUN_H

#include <cstddef>
#include <cstdint>

namespace sluice {

// The longest payload a run may take under these limits (<= 65535), or -1 when no run is
// possible (max_fragments 0 refuses every data frame).
int32_t RunMaxLength(uint64_t max_frame_bytes, uint64_t max_message_bytes, uint64_t max_fragments);

// Describes the run at chunk[pos..len) into desc (kDescriptorWords words per frame, from
// index *count_io on), advances *count_io, and returns where the run ends.
size_t DescribeRun(uint8_t* chunk, size_t len, size_t pos, uint32_t* desc, uint32_t max_frames,
                   uint32_t* count_io, bool server, bool in_message, uint32_t max_len);

}  // namespace sluice

#endif  // SLUICE_FRAME_RUN_H
