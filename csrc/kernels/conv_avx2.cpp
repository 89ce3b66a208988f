// AVX2 + FMA instantiation of the conv kernels. Only this file's functions use AVX2; they are
// called after the run-time probe in conv_run() said the CPU has it.
#if defined(__x86_64__)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "conv_avx2_asm.h"
#define DYNINFER_ISA_NS avx2
#include "conv_impl.h"

namespace dyninfer {
namespace avx2 {

struct T8 {
  using V = __m256;
  static constexpr int W = 8;
  static constexpr int kMaxM = 3;
  static constexpr int kNV = 4;  // output vectors per register tile
  static constexpr int kRegs = 16;  // ymm0-15
  static constexpr bool kInputsFirst = false;
  static constexpr bool kHasDeinterleave = false;  // no direct stride-2 kernel: im2col instead
  static constexpr bool kEvenLanes = true;
  // p[0], p[2], ..., p[14]: the stride-2 samples of 16 floats (the column buffer of stride-2
  // convs), two loads and two shuffles.
  static V even_lanes(const float* p) {
    const __m256 t = _mm256_shuffle_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8), _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static void even_lanes8(const float* p, float* d) { _mm256_storeu_ps(d, even_lanes(p)); }
  static V load_s2(const float*) { return zero(); }
  // Full 3x3 tiles (4 vectors), direct stride-1 or through the column buffer (COLUMNS), run the
  // hand-allocated kernels of conv_avx2_asm.cpp; plans built with DYNINFER_NO_ASM=1 run the
  // intrinsics loop, which computes the same sums.
  static constexpr bool kAsm3x3 = true;
  template <int M, bool COLUMNS>
  static bool asm3x3(const ConvCall& c, const float* const* wrow, const int64_t* voff, V (&acc)[M][4]) {
    static_assert(M >= 1 && M <= 3, "AVX2 tiles have 1..3 output channels");
    // 9 taps read in place (a direct 9x1 conv) are not consecutive tap planes: intrinsics loop.
    if (COLUMNS && c.cstride != 9 * c.rs) return false;
    if (c.n_in <= 0) {
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < 4; ++j) acc[m][j] = zero();
      return true;
    }
    alignas(32) float buf[4 * M * 8];
    AsmArgs a;
    a.in = c.in;
    for (int j = 0; j < 4; ++j) a.off[j] = voff[j] * 4;
    a.rs = c.rs * 4;
    a.cstride = COLUMNS ? 3 * c.rs * 4 : c.cstride * 4;
    a.in_real = c.in_real;
    a.in_real_end = c.in_real + c.n_in;
    for (int m = 0; m < 3; ++m) a.w[m] = wrow[m < M ? m : 0];
    a.acc = buf;
    if constexpr (COLUMNS) {
      if constexpr (M == 1) dyninfer_avx2_col9_m1x4(&a);
      else if constexpr (M == 2) dyninfer_avx2_col9_m2x4(&a);
      else dyninfer_avx2_col9_m3x4(&a);
    } else {
      if constexpr (M == 1) dyninfer_avx2_c3x3_m1x4(&a);
      else if constexpr (M == 2) dyninfer_avx2_c3x3_m2x4(&a);
      else dyninfer_avx2_c3x3_m3x4(&a);
    }
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = _mm256_load_ps(buf + (4 * m + j) * 8);
    return true;
  }
  static void pin(V&) {}
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  // a * b rounded to float before any later add: the asm keeps the compiler from fusing it into an FMA
  static V mul_rounded(V a, V b) {
    V p = _mm256_mul_ps(a, b);
    asm("" : "+x"(p));
    return p;
  }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  // 2^n for lanes holding integers n in [-126, 127]
  static V pow2n(V n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  static void store(float* p, V v) { _mm256_store_ps(p, v); }
  static void storeu(float* p, V v) { _mm256_storeu_ps(p, v); }
  static constexpr uint32_t kFull = 0xFFu;
  static __m256i mask(uint32_t m) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(m)), bit), bit);
  }
  static V load_m(const float* p, uint32_t m) { return _mm256_maskload_ps(p, mask(m)); }
  static void store_m(float* p, V v, uint32_t m) { _mm256_maskstore_ps(p, mask(m), v); }
  static V keep_m(V v, uint32_t m) { return _mm256_and_ps(v, _mm256_castsi256_ps(mask(m))); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void barrier(V& a, V& b, V& c, V& d, V& e, V& f) {
    asm volatile("" : "+x"(a), "+x"(b), "+x"(c), "+x"(d), "+x"(e), "+x"(f));
  }
};

}  // namespace avx2

const KernelTable* kernels_avx2() {
  using T = avx2::T8;
  static const KernelTable table{&avx2::run<T>,  &avx2::im2col<T>,          &avx2::plane_copy<T>, &avx2::gemv<T>,
                                 &avx2::peak<T>, &avx2::pool<T>, &avx2::add_planes<T>, &avx2::subsample2<T>,
                                 &avx2::affine_plane<T>, &avx2::linear_acc<T>,
                                 IsaCaps{T::W, T::kHasDeinterleave, false, false, T::kMaxM, 0, 0}};
  return &table;
}

}  // namespace dyninfer
#else
#include "conv.h"
namespace dyninfer {
const KernelTable* kernels_avx2() { return nullptr; }
}  // namespace dyninfer
#endif
