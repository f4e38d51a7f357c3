// A growable byte queue (what a socket did not take yet), and the wire's rule for close
// codes: small pieces the engine and the tunnel link (native/tunnel/mux.h) share.
#ifndef SLUICE_ENGINE_BACKLOG_H_
#define SLUICE_ENGINE_BACKLOG_H_

#include <cstddef>
#include <cstdint>

namespace sluice {
namespace engine {

// A growable byte queue: what a socket did not take yet. Memory only while bytes wait.
class Backlog {
 public:
  ~Backlog() { Free(); }
  size_t size() const { return tail_ - head_; }
  const uint8_t* data() const { return data_ + head_; }
  bool Append(const uint8_t* p, size_t n);
  // Room for n more bytes at the end, counted as queued (nullptr: out of memory).
  uint8_t* Reserve(size_t n);
  void Consume(size_t n);
  void Free();

 private:
  uint8_t* data_ = nullptr;
  size_t cap_ = 0;
  size_t head_ = 0;
  size_t tail_ = 0;
};

// Whether a close code may travel in a close frame (RFC 6455 7.4: not 1004-1006, 1015,
// nor outside 1000-4999; 1012-1014 are registered since).
bool ValidWireCode(int code);

}  // namespace engine
}  // namespace sluice

#endif  // SLUICE_ENGINE_BACKLOG_H_
