// AVX2 + FMA instantiation of the conv kernels. Only this file's functions use AVX2; they are
// called after the run-time probe in conv_run() said the CPU has it.
#if defined(__x86_64__)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#define DYNINFER_ISA_NS avx2
#include "conv_impl.h"

namespace dyninfer {
namespace avx2 {

struct T8 {
  using V = __m256;
  static constexpr int W = 8;
  static constexpr int kMaxM = 3;
  static constexpr int kNV = 4;  // output vectors per register tile
  static constexpr bool kInputsFirst = false;
  static constexpr bool kHasDeinterleave = false;
  static V even_lanes(const float*) { return zero(); }
  static void even_lanes8(const float*, float*) {}
  static V load_s2(const float*) { return zero(); }
  static void pin(V&) {}
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
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
  static const KernelTable table{&avx2::run<T>, &avx2::im2col<T>, &avx2::plane_copy<T>, &avx2::gemv<T>,
                                 &avx2::peak<T>};
  return &table;
}

}  // namespace dyninfer
#else
#include "conv.h"
namespace dyninfer {
const KernelTable* kernels_avx2() { return nullptr; }
}  // namespace dyninfer
#endif
