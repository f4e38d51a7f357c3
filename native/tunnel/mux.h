// The tunnel's native link (issue #14): one yamux session over one WebSocket connection,
// on the thread's libuv loop, after JavaScript did the HTTP upgrade. It is the data plane
// of src/tunnel/yamux.ts + link.ts (their TypeScript twin, used without the addon and for
// wss://): WebSocket frames (masked when this side is the WebSocket client), yamux frames
// in binary messages, flow control per stream, pings answered.
//
// Every stream starts with one line of JSON each way (the wire's open request and its
// answer): the line from the peer reaches JavaScript as one event (kEvLine), and what
// follows it is held here until JavaScript says where it goes:
//  - to JavaScript (Deliver): its bytes go to JavaScript (events, batched per loop turn) and
//    come from it (Write); for UDP and routes through agents;
//  - to a socket (Bind, or Dial: the agent's connection to a service, made here): bytes go
//    between the socket and the stream here, both ways, with nothing per chunk crossing
//    into JavaScript; a half-close is a FIN either way.
//
// Receive windows start at the protocol's 256 KiB; each top-up (once half the window was
// taken) doubles it, up to max_window, while the stream's reader keeps up (nothing of the
// stream waits here for its socket or for JavaScript): one stream gets the window its path
// needs, and a reader that falls behind stops the growth. A stream nobody reads holds at
// most its window here.
#ifndef SLUICE_TUNNEL_MUX_H_
#define SLUICE_TUNNEL_MUX_H_

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "yamux_reader.h"
#include "../engine/backlog.h"
#include "../engine/frame_cursor.h"
#include "../frame.h"

namespace sluice {
namespace tunnel {

struct MuxOptions {
  bool yamux_client = false;  // opens odd stream ids (the gateway)
  bool ws_client = false;     // masks what it sends, takes unmasked frames (the agent)
  uint32_t window = kInitialWindow;
  uint32_t max_window = 4u << 20;
  uint32_t max_streams = 65536;
  uint32_t max_frame = 256 * 1024;      // largest data frame sent
  uint64_t max_message = 4u << 20;      // largest WebSocket frame taken
  size_t high_water = 1;                // link output queued here (the socket is full): streams wait
  size_t low_water = 0;                 // ... until it has all gone
};

// What JavaScript is told, in order, once per loop turn.
enum MuxEventType {
  kEvNone = 0,
  kEvText = 1,         // a text message (data)
  kEvStream = 2,       // the peer opened `stream`
  kEvData = 3,         // bytes for a JavaScript stream (data)
  kEvFin = 4,          // the peer half-closed a JavaScript stream
  kEvReset = 5,        // a JavaScript stream was reset (by the peer, or the link ended)
  kEvDrain = 6,        // a JavaScript stream takes writes again
  kEvClosed = 7,       // the link ended: code, data = reason, error = a protocol error or ""
  kEvBoundEnd = 8,     // a bound stream ended: code 0 both ways done, 1 reset; bytes in/out
  kEvGoAway = 9,       // the peer will take no new streams (code)
  kEvLine = 10,        // the stream's first line from the peer (data, without its newline)
  kEvDialFailed = 11,  // Dial could not connect (data: why); the stream is JavaScript's
};

constexpr size_t kMaxLine = 4096;

struct MuxEvent {
  int type = 0;
  uint32_t stream = 0;
  int code = 0;
  std::string data;
  std::string error;
  double bytes_in = 0, bytes_out = 0;
};

class Mux;

struct Stream {
  Mux* mux = nullptr;
  uint32_t id = 0;
  bool bound = false;
  int fd = -1;
  uv_poll_t* poll = nullptr;
  int poll_events = 0;
  uint16_t open_flags = 0;          // SYN or ACK owed on the first frame
  uint32_t window = kInitialWindow;  // our receive window now
  uint64_t recv_remaining = kInitialWindow;
  uint64_t inflight = 0;             // admitted data not yet arrived
  uint64_t send_window = kInitialWindow;
  uint64_t js_held = 0;              // delivered to JavaScript, not yet consumed
  engine::Backlog out;               // bound: for the socket
  engine::Backlog pending;           // JavaScript's bytes waiting for window or link
  bool fin_sent = false;
  bool fin_received = false;
  bool fin_wanted = false;           // JavaScript ended it: FIN once pending is sent
  bool read_eof = false;             // bound: the socket's peer ended its side
  bool shut = false;                 // bound: SHUT_WR done after the peer's FIN
  bool want_drain = false;
  bool line_done = false;            // the peer's first line was read
  bool held = true;                  // after the line: bytes wait in `out` (not bound, not delivered)
  std::string line;
  bool dialing = false;              // Dial's connect in progress (fd, poll set)
  uv_timer_t* dial_timer = nullptr;
  bool waiting_link = false;         // in the mux's list of streams held by the link
  bool gone = false;
  uint64_t bytes_in = 0, bytes_out = 0;
};

class Mux final : public YamuxSink, public FrameVisitor {
 public:
  using Notify = void (*)(void* owner);
  Mux(uv_loop_t* loop, void* owner, Notify notify, const MuxOptions& o);
  // Takes a copy (dup) of `fd`, the upgraded connection; `greeting` is sent first (the
  // gateway's 101), `head` holds bytes already read after the handshake. false with
  // *error when the descriptor cannot be taken.
  bool Start(int fd, const uint8_t* head, size_t n, const uint8_t* greeting, size_t gn, std::string* error);
  // Closes everything now (no close frame); the mux deletes itself once libuv has closed
  // its handles.
  void Dispose();

  // JavaScript's side.
  uint32_t Open(const uint8_t* line, size_t n, std::string* error);  // 0: refused (*error)
  // After the peer's line: its bytes go to JavaScript from now on (what was held first).
  void Deliver(uint32_t id);
  // Connect to ip:port for stream `id`; once connected, `ok` goes on the stream and the
  // stream is bound to the connection; else kEvDialFailed (after timeout_ms at most).
  bool Dial(uint32_t id, const std::string& ip, int port, uint64_t timeout_ms, const uint8_t* ok, size_t n);
  bool Write(uint32_t id, const uint8_t* p, size_t n);       // false: wait for kEvDrain
  void End(uint32_t id);
  void Reset(uint32_t id);
  void Consume(uint32_t id, size_t n);
  // Bind stream `id` to socket `fd` (dup'd, or owned from now on when !dup: closed here
  // whatever happens); `head` goes to the socket first, then what arrived for JavaScript
  // and was not delivered yet. false: the stream is gone.
  bool Bind(uint32_t id, int fd, const uint8_t* head, size_t n, bool dup = true);
  void SendText(const uint8_t* p, size_t n);
  void Ping();
  void GoAway(uint32_t code);
  void Close(int code, const std::string& reason);  // a close frame; kEvClosed once answered
  void Terminate();                                 // cut now; kEvClosed(1006)
  uint64_t IdleMs() const { return uv_now(loop_) - last_heard_; }
  size_t streams() const { return streams_.size(); }
  double bytes_in() const { return bytes_in_; }
  double bytes_out() const { return bytes_out_; }
  size_t buffered() const { return out_.size(); }
  bool closed() const { return ended_; }
  std::vector<MuxEvent>& events() { return events_; }

  // FrameVisitor (the link's WebSocket frames).
  bool OnHeader(const FrameHeader& h, uint8_t* raw, bool in_read) override;
  bool OnPayload(uint8_t* p, size_t n, uint64_t offset, bool last) override;
  void OnError(int32_t err) override;
  // YamuxSink.
  bool OnHeader(const YamuxHeader& h) override;
  bool OnData(uint8_t* p, size_t n) override;
  bool OnDataEnd() override;

  // Internal (callbacks).
  void OnLinkPoll(int status, int events);
  void OnStreamPoll(Stream* s, int status, int events);
  void OnDialTimeout(Stream* s);
  void HandleClosed();

 private:
  ~Mux();
  void Emit(MuxEvent&& e);
  void EmitData(Stream* s, const uint8_t* p, size_t n);
  // Output on the link.
  void SendFrame(uint8_t opcode, const uint8_t* p, size_t n);  // one WebSocket frame, queued
  void SendYamux(uint8_t type, uint16_t flags, uint32_t id, uint32_t length);
  void SendData(Stream* s, uint16_t extra_flags, uint8_t* p, size_t n);
  void LinkWrite(const uint8_t* a, size_t an, const uint8_t* b, size_t bn);
  bool FlushLink();  // false: the link failed
  void WatchLink();
  bool LinkFull() const { return out_.size() >= opt_.high_water; }
  void ReadLink();
  void LinkEnded(int code, const std::string& reason, const std::string& error);
  void CloseLink();  // the poll handle and the descriptor
  void ProtocolError(const std::string& message);
  // Streams.
  Stream* Find(uint32_t id);
  Stream* NewStream(uint32_t id, uint16_t flags);
  void Grant(Stream* s, bool force);
  void Pump(Stream* s);      // send what waits (JavaScript's) or read the socket (bound)
  void PumpSocket(Stream* s);
  void WriteSocket(Stream* s, const uint8_t* p, size_t n);
  void Take(Stream* s, const uint8_t* p, size_t n);  // bytes after the line: socket, JavaScript or held
  void Connected(Stream* s);
  void DialFailed(Stream* s, const std::string& why);
  void StopDialTimer(Stream* s);
  void DrainSocket(Stream* s);
  void SendFin(Stream* s);
  void PeerFin(Stream* s);
  void PeerReset(Stream* s);
  void ResetBound(Stream* s, bool tell_peer);
  void MaybeDone(Stream* s);
  void Forget(Stream* s, int code);
  void WatchStream(Stream* s);
  void CloseStreamFd(Stream* s);
  void ResumeWaiting();
  void EndAllStreams();
  void Reap();  // frees the streams that ended (after the call that ended them)
  uint64_t Buffered(const Stream* s) const { return s->bound || s->held ? s->out.size() : s->js_held; }

  uv_loop_t* loop_;
  void* owner_;
  Notify notify_;
  MuxOptions opt_;
  int fd_ = -1;
  uv_poll_t* poll_ = nullptr;
  int poll_events_ = 0;
  int pending_handles_ = 0;
  bool disposed_ = false;
  bool ended_ = false;         // kEvClosed emitted (or disposed)
  bool ending_ = false;        // LinkEnded runs
  bool close_sent_ = false;     // a close frame is decided (no new streams, no pongs)
  bool close_written_ = false;  // it is on the wire: nothing more goes
  bool read_eof_ = false;
  uint64_t last_heard_ = 0;
  double bytes_in_ = 0, bytes_out_ = 0;
  engine::Backlog out_;
  uint8_t* buf_ = nullptr;     // reads (link and sockets)
  FrameCursor cursor_;
  YamuxReader reader_;
  MaskKeySource keys_;
  // The WebSocket message being read: its opcode, the current frame's key, what is kept.
  uint8_t msg_op_ = 0;
  uint8_t frame_op_ = 0;
  bool frame_fin_ = false;
  bool frame_masked_ = false;
  uint8_t frame_key_[4] = {0, 0, 0, 0};
  std::string kept_;           // the text message being read
  std::string ctl_;            // the control frame being read
  // The data frame being read.
  uint32_t data_id_ = 0;
  uint16_t data_flags_ = 0;
  std::unordered_map<uint32_t, Stream*> streams_;
  std::vector<Stream*> waiting_;  // held back by a full link
  std::vector<Stream*> dead_;
  uint32_t next_id_;
  uint32_t inbound_ = 0, outbound_ = 0;
  bool remote_go_away_ = false;
  bool local_go_away_ = false;
  std::vector<MuxEvent> events_;
};

}  // namespace tunnel
}  // namespace sluice

#endif  // SLUICE_TUNNEL_MUX_H_
