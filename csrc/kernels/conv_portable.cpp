// Portable instantiation of the conv kernels: plain C++ on 8-lane arrays with std::fma, so it
// performs the same operations in the same order as the AVX2 path and gives the same results.
#include <cmath>

#define DYNINFER_ISA_NS portable
#include "conv_impl.h"

namespace dyninfer {
namespace portable {

struct S8 {
  struct V {
    float v[8];
  };
  static constexpr int W = 8;
  static V zero() { return set1(0.f); }
  static V set1(float x) {
    V r;
    for (int i = 0; i < W; ++i) r.v[i] = x;
    return r;
  }
  static V load(const float* p) {
    V r;
    std::memcpy(r.v, p, sizeof(r.v));
    return r;
  }
  static V bcast(const float* p) { return set1(*p); }
  static V fma(V a, V b, V c) {
    for (int i = 0; i < W; ++i) c.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
    return c;
  }
  static V add(V a, V b) {
    for (int i = 0; i < W; ++i) a.v[i] += b.v[i];
    return a;
  }
  static V max(V a, V b) {
    // Same NaN behaviour as _mm256_max_ps: returns the second operand when either is NaN.
    for (int i = 0; i < W; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return a;
  }
  static void store(float* p, V v) { std::memcpy(p, v.v, sizeof(v.v)); }
  static void storeu(float* p, V v) { std::memcpy(p, v.v, sizeof(v.v)); }
  static V load_n(const float* p, int n) {
    V r = zero();
    for (int i = 0; i < n; ++i) r.v[i] = p[i];
    return r;
  }
  static void store_n(float* p, V v, int n) {
    for (int i = 0; i < n; ++i) p[i] = v.v[i];
  }
  static V keep_n(V v, int n) {
    for (int i = n; i < W; ++i) v.v[i] = 0.f;
    return v;
  }
  static float hsum(V v) {
    // Same pairing as the AVX2 reduction: (lo + hi) then pairwise.
    float s[4];
    for (int i = 0; i < 4; ++i) s[i] = v.v[i] + v.v[i + 4];
    const float a = s[0] + s[2], b = s[1] + s[3];
    return a + b;
  }
  static void barrier(V*) {}
};

}  // namespace portable

void conv_run_portable(const ConvCall& call) { portable::run<portable::S8>(call); }
double fma_peak_portable(int64_t iters) { return portable::peak<portable::S8>(iters); }

}  // namespace dyninfer
