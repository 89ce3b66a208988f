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
  static constexpr int kMaxM = 3;
  static constexpr int kNV = 4;  // output vectors per register tile
  static constexpr int kRegs = 16;  // the AVX2 tile shape, for compilers that vectorise it
  static constexpr bool kInputsFirst = false;
  static constexpr bool kHasDeinterleave = false;
  static constexpr bool kEvenLanes = false;
  static V even_lanes(const float*) { return zero(); }
  static void even_lanes8(const float*, float*) {}
  static V load_s2(const float*) { return zero(); }
  static void pin(V&) {}
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
  static V mul_rounded(V a, V b) {  // this unit is built without FMA, so nothing fuses it with an add
    for (int i = 0; i < W; ++i) a.v[i] *= b.v[i];
    return a;
  }
  static V max(V a, V b) {
    // Same NaN behaviour as _mm256_max_ps: returns the second operand when either is NaN.
    for (int i = 0; i < W; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return a;
  }
  static V min(V a, V b) {  // as _mm256_min_ps: the second operand when either is NaN
    for (int i = 0; i < W; ++i) a.v[i] = a.v[i] < b.v[i] ? a.v[i] : b.v[i];
    return a;
  }
  static V div(V a, V b) {
    for (int i = 0; i < W; ++i) a.v[i] /= b.v[i];
    return a;
  }
  static V pow2n(V n) {  // 2^n for lanes holding integers n in [-126, 127]
    for (int i = 0; i < W; ++i) {
      const int32_t bits = (static_cast<int32_t>(n.v[i]) + 127) << 23;
      std::memcpy(&n.v[i], &bits, sizeof(bits));
    }
    return n;
  }
  static void store(float* p, V v) { std::memcpy(p, v.v, sizeof(v.v)); }
  static void storeu(float* p, V v) { std::memcpy(p, v.v, sizeof(v.v)); }
  static constexpr uint32_t kFull = 0xFFu;
  static V load_m(const float* p, uint32_t m) {
    V r = zero();
    for (int i = 0; i < W; ++i)
      if (m >> i & 1u) r.v[i] = p[i];
    return r;
  }
  static void store_m(float* p, V v, uint32_t m) {
    for (int i = 0; i < W; ++i)
      if (m >> i & 1u) p[i] = v.v[i];
  }
  static V keep_m(V v, uint32_t m) {
    for (int i = 0; i < W; ++i)
      if (!(m >> i & 1u)) v.v[i] = 0.f;
    return v;
  }
  static float hsum(V v) {
    // Same pairing as the AVX2 reduction: (lo + hi) then pairwise.
    float s[4];
    for (int i = 0; i < 4; ++i) s[i] = v.v[i] + v.v[i + 4];
    const float a = s[0] + s[2], b = s[1] + s[3];
    return a + b;
  }
  static void barrier(V&, V&, V&, V&, V&, V&) {}
};

}  // namespace portable

const KernelTable* kernels_portable() {
  using T = portable::S8;
  static const KernelTable table{&portable::run<T>,  &portable::im2col<T>, &portable::plane_copy<T>,
                                 &portable::gemv<T>, &portable::peak<T>,   &portable::pool<T>, &portable::add_planes<T>,
                                 &portable::subsample2<T>, &portable::affine_plane<T>, &portable::linear_acc<T>,
                                 IsaCaps{T::W, T::kHasDeinterleave, false, false, T::kMaxM, 0, 0}};
  return &table;
}

}  // namespace dyninfer
