// TLS for the engine's sockets, through the OpenSSL that Node itself carries (its symbols
// are the process's; the headers come with Node's). A leg with TLS reads and writes through
// its SSL object, which does the socket I/O on the leg's descriptor (non-blocking, the
// engine's edge-triggered epoll says when to retry). The calls below look like recv and
// send to the engine: bytes, 0 at the end, or -1 with errno (EAGAIN to wait, EPROTO when
// TLS itself failed).
#ifndef SLUICE_ENGINE_TLS_H_
#define SLUICE_ENGINE_TLS_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

namespace sluice {
namespace engine {
namespace tls {

// A server context from PEM text: the certificate (its chain after it) and the key;
// `ciphers`: the TLS 1.2 cipher list (OpenSSL syntax; '' keeps OpenSSL's).
// `ticket_keys`: 80 bytes (name, HMAC and AES keys) shared by every shard so that a
// client's TLS session resumes on any of them, or '' for OpenSSL's own per context.
SSL_CTX* NewServerContext(const std::string& cert_pem, const std::string& key_pem, const std::string& ciphers,
                          const std::string& ticket_keys, std::string* error);
// A client context: trusted roots from PEM text (several certificates), and whether the
// peer's certificate (and name) must verify.
SSL_CTX* NewClientContext(const std::string& ca_pem, bool verify, const std::string& ciphers, std::string* error);
void FreeContext(SSL_CTX* ctx);

// A connection on fd: the server side of an accepted client, or the client side of a dial
// (SNI and the name checked: `servername`, an IP address checked as such).
SSL* Accept(SSL_CTX* ctx, int fd);
SSL* Connect(SSL_CTX* ctx, int fd, const std::string& servername, bool verify);
void Free(SSL* ssl);

// The handshake: 1 done, 0 wait for readiness (*want_write: for writability), -1 failed.
int Handshake(SSL* ssl, bool* want_write, std::string* error);
// Reads until `n` bytes or the socket runs dry (*dry; *want_write when OpenSSL waits to write).
ssize_t Recv(SSL* ssl, uint8_t* buf, size_t n, bool* dry, bool* want_write);
// Writes records (16 KiB each at most) until all went or the socket is full (*want_read:
// OpenSSL waits to read). A retry after EAGAIN must start with the same bytes.
ssize_t Send(SSL* ssl, const uint8_t* p, size_t n, bool* want_read);
// close_notify, best effort (the TCP end follows).
void Shutdown(SSL* ssl);
// The last failure of this thread, as text (the error queue is cleared).
std::string LastError();

}  // namespace tls
}  // namespace engine
}  // namespace sluice

#endif  // SLUICE_ENGINE_TLS_H_
