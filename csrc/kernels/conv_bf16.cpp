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
#include "winograd_impl.h"

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

// (bf16(a), bf16(b)) per 32-bit lane: round both (nearest even) and interleave their words.
inline __m512 pack_pair(__m512 a, __m512 b) {
  const __m512i idx = _mm512_setr_epi32(0x00100000, 0x00110001, 0x00120002, 0x00130003, 0x00140004, 0x00150005,
                                        0x00160006, 0x00170007, 0x00180008, 0x00190009, 0x001A000A, 0x001B000B,
                                        0x001C000C, 0x001D000D, 0x001E000E, 0x001F000F);
  // words 0-15: bf16(a), 16-31: bf16(b); interleaved to (a[i], b[i]) per 32-bit lane
  return _mm512_castsi512_ps(_mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(b, a)));
}

// winograd_impl.h's wino_input for two channels at once, each position's vectors rounded into one
// pair vector on the way out: V is written once, in bf16, instead of fp32 then packed.
static void wino_input_pairs(const WinoCall& c, const int32_t* ca, const int32_t* cb, int j0, int j1) {
  constexpr int L = 16;
  const int tw = (c.W + 1) / 2, th = (c.H + 1) / 2, nt = tw * th;
  const int64_t NT = wino_tiles(c.H, c.W, L);
  const int64_t vx = static_cast<int64_t>(c.n_in) * NT + kWinoPad;
  for (int j = j0; j < j1; ++j) {
    const float* a = ca[j] >= 0 ? c.in + ca[j] * c.cstride : nullptr;
    const float* b = cb[j] >= 0 ? c.in + cb[j] * c.cstride : nullptr;
    float* vc = c.v + j * NT;
    for (int ty = 0; ty < th; ++ty) {
      for (int tx0 = 0; tx0 < tw; tx0 += L) {
        const int n = tw - tx0 < L ? tw - tx0 : L;
        __m512 va[16], vb[16];
        if (a) wino_input_tiles<T16>(c, a, ty, tx0, n, va);
        else for (int xi = 0; xi < 16; ++xi) va[xi] = _mm512_setzero_ps();
        if (b) wino_input_tiles<T16>(c, b, ty, tx0, n, vb);
        else for (int xi = 0; xi < 16; ++xi) vb[xi] = _mm512_setzero_ps();
        const uint32_t mask = n >= 32 ? 0xFFFFFFFFu : (1u << n) - 1u;
        float* dst = vc + ty * tw + tx0;
        for (int xi = 0; xi < 16; ++xi) T16::store_m(dst + xi * vx, pack_pair(va[xi], vb[xi]), mask);
      }
    }
    for (int xi = 0; xi < 16; ++xi)  // the last vector's lanes past the tiles: zeros (+0 in bf16 too)
      for (int64_t q = nt; q < NT; ++q) vc[xi * vx + q] = 0.f;
  }
}

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

void conv_winograd_input_bf16(const WinoCall& c, const int32_t* ca, const int32_t* cb, int j0, int j1) {
  avx512bf16::wino_input_pairs(c, ca, cb, j0, j1);
  avx512bf16::clean_upper_state();
}

void conv_winograd_gemm_bf16(const WinoCall& c, int x0, int x1) {
  avx512bf16::wino_gemm<avx512bf16::B16>(c, x0, x1);
  avx512bf16::clean_upper_state();
}

void bf16_pack_pairs(const float* in, int64_t cstride, const int32_t* ca, const int32_t* cb, int n_pairs,
                     int64_t n, int64_t out_stride, float* out) {
  for (int j = 0; j < n_pairs; ++j) {
    const float* a = ca[j] >= 0 ? in + ca[j] * cstride : nullptr;
    const float* b = cb[j] >= 0 ? in + cb[j] * cstride : nullptr;
    float* d = out + j * out_stride;
    for (int64_t p = 0; p < n; p += 16) {
      const __mmask16 m = n - p >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - p)) - 1u);
      const __m512 xa = a ? _mm512_maskz_loadu_ps(m, a + p) : _mm512_setzero_ps();
      const __m512 xb = b ? _mm512_maskz_loadu_ps(m, b + p) : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(d + p, m, avx512bf16::pack_pair(xa, xb));
    }
  }
  avx512bf16::clean_upper_state();
}

}  // namespace dyninfer
#else
namespace dyninfer {
bool bf16_kernels_supported() { return false; }
void conv_run_bf16(const ConvCall&) {}
void conv_winograd_gemm_bf16(const WinoCall&, int, int) {}
void conv_winograd_input_bf16(const WinoCall&, const int32_t*, const int32_t*, int, int) {}
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
