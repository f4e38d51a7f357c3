#include "tls.h"

#ifdef __linux__

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <cstring>

namespace sluice {
namespace engine {
namespace tls {

namespace {

// Renegotiation is refused (a TLS 1.2 client could make us do work per message otherwise);
// a TCP end without close_notify is an end, not an error (as most peers close); buffers are
// given back while a connection is idle (memory per idle connection). The TLS 1.2 cipher
// list is Node's (tls.DEFAULT_CIPHERS, from JavaScript); TLS 1.3's suites are OpenSSL's
// defaults, as in Node.
bool Common(SSL_CTX* ctx, const std::string& ciphers, std::string* error) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  if (ciphers.empty()) return true;
  // As Node splits it: TLS_* names are TLS 1.3 suites, the rest the TLS 1.2 list.
  std::string v12, v13;
  size_t i = 0;
  while (i <= ciphers.size()) {
    size_t j = ciphers.find(':', i);
    if (j == std::string::npos) j = ciphers.size();
    const std::string name = ciphers.substr(i, j - i);
    if (!name.empty()) {
      std::string& to = name.compare(0, 4, "TLS_") == 0 ? v13 : v12;
      if (!to.empty()) to += ':';
      to += name;
    }
    i = j + 1;
  }
  if ((!v12.empty() && SSL_CTX_set_cipher_list(ctx, v12.c_str()) != 1) ||
      (!v13.empty() && SSL_CTX_set_ciphersuites(ctx, v13.c_str()) != 1)) {
    *error = "no usable cipher in \"" + ciphers + "\"";
    ERR_clear_error();
    return false;
  }
  return true;
}

// ALPN: HTTP/1.1 when the client offers it (a WebSocket handshake is HTTP/1.1); a client
// that offers only other protocols goes on without ALPN rather than failing here.
int SelectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen, void*) {
  static const unsigned char kHttp11[] = {'h', 't', 't', 'p', '/', '1', '.', '1'};
  unsigned int i = 0;
  while (i < inlen) {
    const unsigned int n = in[i];
    if (i + 1 + n > inlen) break;
    if (n == sizeof kHttp11 && std::memcmp(in + i + 1, kHttp11, n) == 0) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(n);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + n;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

// A read or write that failed (SSL_get_error's `e`): -1 with errno, the socket's own error
// when there is one, else EPROTO; the thread's error queue left clean.
ssize_t Failed(int e) {
  const int err = e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno != 0 ? errno : EPROTO;
  ERR_clear_error();
  errno = err;
  return -1;
}

bool IsIp(const std::string& name) {
  unsigned char buf[16];
  return inet_pton(AF_INET, name.c_str(), buf) == 1 || inet_pton(AF_INET6, name.c_str(), buf) == 1;
}

}  // namespace

std::string LastError() {
  const unsigned long e = ERR_get_error();  // NOLINT(runtime/int): OpenSSL's type
  ERR_clear_error();
  if (e == 0) return "TLS failure";
  char text[256];
  ERR_error_string_n(e, text, sizeof text);
  return text;
}

SSL_CTX* NewServerContext(const std::string& cert_pem, const std::string& key_pem, const std::string& ciphers,
                          const std::string& ticket_keys, std::string* error) {
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) {
    *error = LastError();
    return nullptr;
  }
  if (!Common(ctx, ciphers, error)) {
    SSL_CTX_free(ctx);
    return nullptr;
  }
  static const unsigned char kSid[] = {'s', 'l', 'u', 'i', 'c', 'e'};
  SSL_CTX_set_session_id_context(ctx, kSid, sizeof kSid);
  SSL_CTX_set_alpn_select_cb(ctx, SelectAlpn, nullptr);
  if (ticket_keys.size() == 80 &&
      SSL_CTX_set_tlsext_ticket_keys(ctx, const_cast<char*>(ticket_keys.data()), static_cast<long>(ticket_keys.size())) != 1) {  // NOLINT(runtime/int)
    *error = "the session ticket keys: " + LastError();
    SSL_CTX_free(ctx);
    return nullptr;
  }
  bool ok = false;
  BIO* bio = BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  X509* cert = bio == nullptr ? nullptr : PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  if (cert == nullptr) {
    *error = "the certificate is not PEM (" + LastError() + ")";
  } else if (SSL_CTX_use_certificate(ctx, cert) != 1) {
    *error = "the certificate: " + LastError();
  } else {
    ok = true;
    // The chain: the certificates after the first.
    for (X509* x; ok && (x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) != nullptr;) {
      if (SSL_CTX_add0_chain_cert(ctx, x) != 1) {
        X509_free(x);
        *error = "the certificate chain: " + LastError();
        ok = false;
      }
    }
    ERR_clear_error();  // the end of the PEM text
  }
  X509_free(cert);
  BIO_free(bio);
  if (ok) {
    bio = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
    EVP_PKEY* key = bio == nullptr ? nullptr : PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    if (key == nullptr) {
      *error = "the key is not PEM, or is encrypted (" + LastError() + ")";
      ok = false;
    } else if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
      *error = "the key does not fit the certificate (" + LastError() + ")";
      ok = false;
    }
    EVP_PKEY_free(key);
    BIO_free(bio);
  }
  if (!ok) {
    SSL_CTX_free(ctx);
    return nullptr;
  }
  return ctx;
}

SSL_CTX* NewClientContext(const std::string& ca_pem, bool verify, const std::string& ciphers, std::string* error) {
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) {
    *error = LastError();
    return nullptr;
  }
  if (!Common(ctx, ciphers, error)) {
    SSL_CTX_free(ctx);
    return nullptr;
  }
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  BIO* bio = BIO_new_mem_buf(ca_pem.data(), static_cast<int>(ca_pem.size()));
  int added = 0;
  for (X509* x; bio != nullptr && (x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) != nullptr;) {
    if (X509_STORE_add_cert(store, x) == 1) added++;
    X509_free(x);
  }
  ERR_clear_error();
  BIO_free(bio);
  if (verify && added == 0) {
    *error = "no trusted certificate in the CA text";
    SSL_CTX_free(ctx);
    return nullptr;
  }
  SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
  static const unsigned char kAlpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};  // as Node's dial offers
  SSL_CTX_set_alpn_protos(ctx, kAlpn, sizeof kAlpn);
  return ctx;
}

void FreeContext(SSL_CTX* ctx) { SSL_CTX_free(ctx); }

SSL* Accept(SSL_CTX* ctx, int fd) {
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return nullptr;
  if (SSL_set_fd(ssl, fd) != 1) {
    SSL_free(ssl);
    return nullptr;
  }
  SSL_set_accept_state(ssl);
  return ssl;
}

SSL* Connect(SSL_CTX* ctx, int fd, const std::string& servername, bool verify) {
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return nullptr;
  if (SSL_set_fd(ssl, fd) != 1) {
    SSL_free(ssl);
    return nullptr;
  }
  SSL_set_connect_state(ssl);
  const bool ip = IsIp(servername);
  if (!servername.empty() && !ip) SSL_set_tlsext_host_name(ssl, servername.c_str());
  if (verify && !servername.empty()) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    const int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, servername.c_str())
                      : X509_VERIFY_PARAM_set1_host(param, servername.c_str(), servername.size());
    if (ok != 1) {
      SSL_free(ssl);
      return nullptr;
    }
  }
  return ssl;
}

void Free(SSL* ssl) { SSL_free(ssl); }

int Handshake(SSL* ssl, bool* want_write, std::string* error) {
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl);
  if (r == 1) return 1;
  const int e = SSL_get_error(ssl, r);
  *want_write = e == SSL_ERROR_WANT_WRITE;
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
  // A certificate that did not verify, when it was checked; else what OpenSSL says.
  const long v = SSL_get_verify_result(ssl);  // NOLINT(runtime/int)
  if ((SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) != 0 && v != X509_V_OK) {
    ERR_clear_error();
    *error = std::string("certificate: ") + X509_verify_cert_error_string(v);
  } else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
    *error = errno != 0 ? std::strerror(errno) : "closed during the TLS handshake";
  } else {
    *error = LastError();
  }
  return -1;
}

ssize_t Recv(SSL* ssl, uint8_t* buf, size_t n, bool* dry, bool* want_write) {
  size_t got = 0;
  *dry = false;
  *want_write = false;
  while (got < n) {
    ERR_clear_error();
    size_t r = 0;
    if (SSL_read_ex(ssl, buf + got, n - got, &r) == 1) {
      got += r;
      continue;
    }
    const int e = SSL_get_error(ssl, 0);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      *dry = true;
      *want_write = e == SSL_ERROR_WANT_WRITE;
      break;
    }
    // The end, or a failure: what was read first is given now; the next call says so again
    // (the thread's error queue is left clean: Node's own TLS reads it too).
    if (got > 0) {
      ERR_clear_error();
      break;
    }
    if (e == SSL_ERROR_ZERO_RETURN) return 0;
    return Failed(e);
  }
  if (got == 0) {
    errno = EAGAIN;
    return -1;
  }
  return static_cast<ssize_t>(got);
}

ssize_t Send(SSL* ssl, const uint8_t* p, size_t n, bool* want_read) {
  size_t sent = 0;
  *want_read = false;
  while (sent < n) {
    ERR_clear_error();
    size_t w = 0;
    if (SSL_write_ex(ssl, p + sent, n - sent, &w) == 1) {
      sent += w;
      continue;
    }
    const int e = SSL_get_error(ssl, 0);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
      *want_read = e == SSL_ERROR_WANT_READ;
      break;
    }
    if (sent > 0) {
      ERR_clear_error();
      break;
    }
    return Failed(e);
  }
  if (sent == 0 && n > 0) {
    errno = EAGAIN;
    return -1;
  }
  return static_cast<ssize_t>(sent);
}

void Shutdown(SSL* ssl) {
  if (!SSL_is_init_finished(ssl)) return;
  ERR_clear_error();
  SSL_shutdown(ssl);
  ERR_clear_error();
}

}  // namespace tls
}  // namespace engine
}  // namespace sluice

#endif  // __linux__
