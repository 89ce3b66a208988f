#include "digest.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace dyninfer {

namespace {

static_assert(sizeof(float) == 4, "float32 weights");

// SHA-256 (FIPS 180-4).
class Sha256 {
 public:
  void update(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    total_ += n;
    while (n > 0) {
      const size_t take = std::min(n, 64 - fill_);
      std::memcpy(block_ + fill_, p, take);
      fill_ += take, p += take, n -= take;
      if (fill_ == 64) compress(), fill_ = 0;
    }
  }
  std::string hex() {
    const uint64_t bits = total_ * 8;
    const uint8_t pad = 0x80, zero = 0;
    update(&pad, 1);
    while (fill_ != 56) update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
    update(len, 8);
    std::ostringstream out;
    for (uint32_t v : h_)
      for (int s = 24; s >= 0; s -= 8) out << "0123456789abcdef"[(v >> (s + 4)) & 15] << "0123456789abcdef"[(v >> s) & 15];
    return out.str();
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void compress() {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(block_[4 * i]) << 24 | uint32_t(block_[4 * i + 1]) << 16 | uint32_t(block_[4 * i + 2]) << 8 |
             block_[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    const uint32_t add[8] = {a, b, c, d, e, f, g, h};
    for (int i = 0; i < 8; ++i) h_[i] += add[i];
  }
  std::array<uint32_t, 8> h_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t block_[64];
  size_t fill_ = 0;
  uint64_t total_ = 0;
};

// The byte layout of plan_digest (little-endian host assumed, as on x86-64).
struct Digest {
  Sha256 sha;
  void tag(const std::string& name) { sha.update(name.c_str(), name.size() + 1); }
  void i64(int64_t v) { sha.update(&v, 8); }
  void ints(const std::string& name, const std::vector<int64_t>& v) {
    tag(name);
    i64(static_cast<int64_t>(v.size()));
    for (int64_t x : v) i64(x);
  }
  void strings(const std::string& name, const std::vector<std::string>& v) {
    tag(name);
    i64(static_cast<int64_t>(v.size()));
    for (const auto& s : v) i64(static_cast<int64_t>(s.size())), sha.update(s.data(), s.size());
  }
};

}  // namespace

std::string plan_digest(const DigestInput& in) {
  Digest d;
  d.ints("meta", in.meta);
  d.ints("ops", in.ops);
  d.tag("weights");
  d.i64(static_cast<int64_t>(in.weights.size()));
  for (const DigestWeight& w : in.weights) {
    int64_t numel = 1;
    for (int64_t s : w.shape) {
      if (s < 0) throw std::invalid_argument("plan_digest: negative weight dimension");
      numel *= s;
    }
    if (numel > 0 && w.data == nullptr) throw std::invalid_argument("plan_digest: weight without data");
    d.ints("shape", w.shape);
    d.sha.update(w.data, static_cast<size_t>(numel) * sizeof(float));
  }
  d.strings("conv_names", in.conv_names);
  d.ints("open_gates", {in.open_gates ? 1 : 0});
  d.ints("input_shape", in.input_shape);
  d.ints("output_shape", in.output_shape);
  d.strings("gate_names", in.gate_names);
  d.ints("gate_sizes", in.gate_sizes);
  return d.sha.hex();
}

}  // namespace dyninfer
