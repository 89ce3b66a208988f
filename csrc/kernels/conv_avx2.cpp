// AVX2 + FMA instantiation of the conv kernels. Only this file's functions use AVX2; they are
// called after the run-time probe in conv_run() said the CPU has it.
#if defined(__x86_64__)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#define DYNINFER_ISA_NS avx2
#include "conv_impl.h"

namespace dyninfer {
namespace avx2 {

alignas(32) static const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct T8 {
  using V = __m256;
  static constexpr int W = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static void store(float* p, V v) { _mm256_store_ps(p, v); }
  static void storeu(float* p, V v) { _mm256_storeu_ps(p, v); }
  static __m256i mask(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - n)); }
  static V load_n(const float* p, int n) { return n == W ? load(p) : _mm256_maskload_ps(p, mask(n)); }
  static void store_n(float* p, V v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static V keep_n(V v, int n) { return _mm256_and_ps(v, _mm256_castsi256_ps(mask(n))); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void barrier(V* a) {
    for (int i = 0; i < 12; ++i) asm volatile("" : "+x"(a[i]));
  }
};

}  // namespace avx2

void conv_run_avx2(const ConvCall& call) { avx2::run<avx2::T8>(call); }
double fma_peak_avx2(int64_t iters) { return avx2::peak<avx2::T8>(iters); }

}  // namespace dyninfer
#else
#include "conv.h"
namespace dyninfer {
void conv_run_avx2(const ConvCall& call) { conv_run_portable(call); }
double fma_peak_avx2(int64_t) { return 0.0; }
}  // namespace dyninfer
#endif
