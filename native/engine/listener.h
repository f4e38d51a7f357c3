// A listening TCP socket with SO_REUSEPORT, for shards that share one port (Node 20's
// net cannot set the option; the server then listens on this descriptor).
#ifndef SLUICE_ENGINE_LISTENER_H_
#define SLUICE_ENGINE_LISTENER_H_

#include <string>

namespace sluice {

// Binds `host` (a numeric IPv4/IPv6 address or a name) and `port`, listens with
// `backlog`, and returns the descriptor (non-blocking, close-on-exec). On failure returns
// -1 and puts a message into *error.
int ListenReusePort(const std::string& host, int port, int backlog, std::string* error, bool reuse_port = true);
// The local port of a bound socket, or -1.
int SocketPort(int fd);

}  // namespace sluice

#endif  // SLUICE_ENGINE_LISTENER_H_
