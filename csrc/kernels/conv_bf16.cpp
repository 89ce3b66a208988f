// bf16 direct convolution for CPUs with AVX512_BF16 (vdpbf16ps): the conv kernels of
// conv_impl.h over *channel pairs*. Input channels 2r and 2r+1 share one 32-bit lane per pixel
// (a "pair plane", bf16_pack_pairs), the weights of each output channel are packed the same way
// (bf16_pack_weights), and each multiply-add of the fp32 kernels becomes one vdpbf16ps: two
// products per lane, accumulated in fp32. Everything else — tiles, groups, offsets, the fp32
// epilogue (bias, residual, activation, sums) — is the fp32 kernels' code unchanged, since a pair
// plane has the fp32 plane's geometry.
#include "conv.h"

#include <cstring>

#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma")
#include <immintrin.h>

#define DYNINFER_ISA_NS avx512bf16
#include "conv_impl.h"

namespace dyninfer {
namespace avx512bf16 {

#include "avx512_traits.h"

// acc + a.lo * b.lo + a.hi * b.hi per 32-bit lane (bf16 halves), the weight pair broadcast in b:
// the fp32 traits with their multiply-add replaced.
inline __m512 dpbf16(__m512 c, __m512 a, __m512 b) {
  return _mm512_dpbf16_ps(c, (__m512bh)_mm512_castps_si512(a), (__m512bh)_mm512_castps_si512(b));
}
inline __m256 dpbf16(__m256 c, __m256 a, __m256 b) {
  return _mm256_dpbf16_ps(c, (__m256bh)_mm256_castps_si256(a), (__m256bh)_mm256_castps_si256(b));
}
template <class Fp32>
struct Bf16 : Fp32 {
  using V = typename Fp32::V;
  static V fma(V b, V a, V c) { return dpbf16(c, a, b); }
};
using B16 = Bf16<T16>;
using B16P = Bf16<T16P>;
using B8 = Bf16<T8>;

}  // namespace avx512bf16

bool bf16_kernels_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
}

void conv_run_bf16(const ConvCall& call) {
  if (call.pairs) avx512bf16::run<avx512bf16::B16P>(call);
  else if (call.vw == 16) avx512bf16::run<avx512bf16::B16>(call);
  else avx512bf16::run<avx512bf16::B8>(call);
  avx512bf16::clean_upper_state();  // for the SSE glue code around it (avx512_traits.h)
}

void bf16_pack_pairs(const float* in, int64_t cstride, const int32_t* ca, const int32_t* cb, int n_pairs,
                     int64_t n, int64_t out_stride, float* out) {
  const __m512i idx = _mm512_setr_epi32(0x00100000, 0x00110001, 0x00120002, 0x00130003, 0x00140004, 0x00150005,
                                        0x00160006, 0x00170007, 0x00180008, 0x00190009, 0x001A000A, 0x001B000B,
                                        0x001C000C, 0x001D000D, 0x001E000E, 0x001F000F);
  for (int j = 0; j < n_pairs; ++j) {
    const float* a = ca[j] >= 0 ? in + ca[j] * cstride : nullptr;
    const float* b = cb[j] >= 0 ? in + cb[j] * cstride : nullptr;
    float* d = out + j * out_stride;
    for (int64_t p = 0; p < n; p += 16) {
      const __mmask16 m = n - p >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - p)) - 1u);
      const __m512 xa = a ? _mm512_maskz_loadu_ps(m, a + p) : _mm512_setzero_ps();
      const __m512 xb = b ? _mm512_maskz_loadu_ps(m, b + p) : _mm512_setzero_ps();
      // words 0-15: bf16(xa), 16-31: bf16(xb); interleaved to (xa[i], xb[i]) per 32-bit lane
      const __m512i w = (__m512i)_mm512_cvtne2ps_pbh(xb, xa);
      _mm512_mask_storeu_ps(d + p, m, _mm512_castsi512_ps(_mm512_permutexvar_epi16(idx, w)));
    }
  }
  avx512bf16::clean_upper_state();
}

}  // namespace dyninfer
#else
namespace dyninfer {
bool bf16_kernels_supported() { return false; }
void conv_run_bf16(const ConvCall&) {}
void bf16_pack_pairs(const float*, int64_t, const int32_t*, const int32_t*, int, int64_t, int64_t, float*) {}
}  // namespace dyninfer
#endif

namespace dyninfer {

static uint16_t bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

void bf16_pack_weights(const float* w, int O, int I, int kk, uint32_t* out) {
  const int R = (I + 1) / 2;
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < kk; ++t) {
        const float lo = w[(static_cast<int64_t>(o) * I + 2 * r) * kk + t];
        const float hi = 2 * r + 1 < I ? w[(static_cast<int64_t>(o) * I + 2 * r + 1) * kk + t] : 0.f;
        out[(static_cast<int64_t>(o) * R + r) * kk + t] =
            static_cast<uint32_t>(bf16_round(lo)) | (static_cast<uint32_t>(bf16_round(hi)) << 16);
      }
}

}  // namespace dyninfer
