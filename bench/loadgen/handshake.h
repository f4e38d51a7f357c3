// The few pieces of RFC 6455's opening handshake a client needs: SHA-1 and
// base64, to compute and check Sec-WebSocket-Accept. Written here so the load
// generator builds with nothing but a C++17 compiler.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace loadgen {

/** SHA-1 of `data` (FIPS 180-4). Only used on handshake keys, so clarity beats speed. */
inline void sha1(const uint8_t* data, size_t len, uint8_t out[20]) {
  uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
  auto rol = [](uint32_t x, int n) { return (x << n) | (x >> (32 - n)); };
  // Pad to a multiple of 64 bytes: 0x80, zeros, 64-bit big-endian bit length.
  size_t padded = ((len + 8) / 64 + 1) * 64;
  std::string msg(reinterpret_cast<const char*>(data), len);
  msg.resize(padded, '\0');
  msg[len] = static_cast<char>(0x80);
  uint64_t bits = static_cast<uint64_t>(len) * 8;
  for (int i = 0; i < 8; i++) msg[padded - 1 - i] = static_cast<char>((bits >> (8 * i)) & 0xff);
  for (size_t off = 0; off < padded; off += 64) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++) {
      const auto* p = reinterpret_cast<const uint8_t*>(msg.data() + off + 4 * i);
      w[i] = (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
    }
    for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
      uint32_t f, k;
      if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999u; }
      else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1u; }
      else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDCu; }
      else { f = b ^ c ^ d; k = 0xCA62C1D6u; }
      uint32_t t = rol(a, 5) + f + e + k + w[i];
      e = d; d = c; c = rol(b, 30); b = a; a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
  }
  for (int i = 0; i < 5; i++) {
    out[4 * i] = uint8_t(h[i] >> 24);
    out[4 * i + 1] = uint8_t(h[i] >> 16);
    out[4 * i + 2] = uint8_t(h[i] >> 8);
    out[4 * i + 3] = uint8_t(h[i]);
  }
}

/** Decode standard base64 (with padding); false on anything else. */
inline bool base64_decode(const uint8_t* in, size_t len, std::vector<uint8_t>& out) {
  auto val = [](uint8_t ch) -> int {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
  };
  if (len % 4 != 0) return false;
  out.clear();
  for (size_t i = 0; i < len; i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; k++) {
      if (in[i + k] == '=' && i + 4 == len && k >= 2) { v[k] = 0; pad++; continue; }
      if (pad) return false;
      v[k] = val(in[i + k]);
      if (v[k] < 0) return false;
    }
    uint32_t w = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
    out.push_back(uint8_t(w >> 16));
    if (pad < 2) out.push_back(uint8_t(w >> 8));
    if (pad < 1) out.push_back(uint8_t(w));
  }
  return true;
}

/** Standard base64 with padding (RFC 4648 §4). */
inline std::string base64(const uint8_t* data, size_t len) {
  static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((len + 2) / 3 * 4);
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = uint32_t(data[i]) << 16;
    if (i + 1 < len) v |= uint32_t(data[i + 1]) << 8;
    if (i + 2 < len) v |= data[i + 2];
    out += tbl[(v >> 18) & 63];
    out += tbl[(v >> 12) & 63];
    out += i + 1 < len ? tbl[(v >> 6) & 63] : '=';
    out += i + 2 < len ? tbl[v & 63] : '=';
  }
  return out;
}

/** The Sec-WebSocket-Accept value a server must answer to `key` (RFC 6455 §4.2.2). */
inline std::string accept_for_key(const std::string& key) {
  std::string s = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  uint8_t digest[20];
  sha1(reinterpret_cast<const uint8_t*>(s.data()), s.size(), digest);
  return base64(digest, 20);
}

}  // namespace loadgen
