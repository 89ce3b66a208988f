// AVX-512 instantiation of the conv kernels (16-pixel vectors), used for output rows wider than
// 8 pixels on CPUs whose run-time probe reports avx512f. Same source as every other path.
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#include <immintrin.h>

#define DYNINFER_ISA_NS avx512
#include "conv_impl.h"

namespace dyninfer {
namespace avx512 {

struct T16 {
  using V = __m512;
  static constexpr int W = 16;
  static constexpr int kMaxM = 8;
  static constexpr int kNV = 3;  // output vectors per register tile of 7-8 channels
  // Shorter tiles grow wider (M x NV accumulators + NV inputs + 1 broadcast <= 32): 6 -> 4,
  // 5 -> 5, <= 4 -> 6 vectors. Measured on a gated ResNet-20 layer keeping 9 of 16 channels
  // (groups 5 + 4): 3-vector tiles ran it at 124 GFLOP/s against 150 for 8 channels.
  static constexpr int nv_for(int m) { return m >= 7 ? 3 : m == 6 ? 4 : m == 5 ? 5 : 6; }
  static constexpr int kRegs = 32;  // vector registers (zmm0-31)
  static constexpr bool kHasDeinterleave = true;
  static constexpr bool kEvenLanes = true;
  // p[0], p[2], ..., p[30]: the stride-2 samples of 32 consecutive floats.
  static V even_lanes(const float* p) {
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(_mm512_loadu_ps(p), idx, _mm512_loadu_ps(p + 16));
  }
  static V load_s2(const float* p) { return even_lanes(p); }
  // d[0:8] = p[0], p[2], ..., p[14].
  static void even_lanes8(const float* p, float* d) {
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm256_storeu_ps(d, _mm512_castps512_ps256(_mm512_permutexvar_ps(idx, _mm512_loadu_ps(p))));
  }
  static constexpr bool kInputsFirst = true;
  static void pin(V& v) { asm volatile("" : "+v"(v)); }
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  // even_lanes of the first n floats at p (none read past them; lanes past n/2 are 0)
  static V even_lanes_n(const float* p, int n) {
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __mmask16 m0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n > 0 ? n : 0)) - 1u);
    const __mmask16 m1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1u);
    return _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(m0, p), idx, _mm512_maskz_loadu_ps(m1, p + 16));
  }
  // buf[2l] = a[l], buf[2l + 1] = b[l] (32 floats, 64-byte aligned)
  static void interleave(V a, V b, float* buf) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_store_ps(buf, _mm512_permutex2var_ps(a, lo, b));
    _mm512_store_ps(buf + 16, _mm512_permutex2var_ps(a, hi, b));
  }
  // a * b rounded to float before any later add: the asm keeps the compiler from fusing it into an FMA
  static V mul_rounded(V a, V b) {
    V p = _mm512_mul_ps(a, b);
    asm("" : "+v"(p));
    return p;
  }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  // 2^n for lanes holding integers n in [-126, 127]
  static V pow2n(V n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  static void store(float* p, V v) { _mm512_store_ps(p, v); }
  static void storeu(float* p, V v) { _mm512_storeu_ps(p, v); }
  static constexpr uint32_t kFull = 0xFFFFu;
  static V load_m(const float* p, uint32_t m) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p); }
  static void store_m(float* p, V v, uint32_t m) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>(m), v); }
  static V keep_m(V v, uint32_t m) { return _mm512_maskz_mov_ps(static_cast<__mmask16>(m), v); }
  static float hsum(V v) {
    // (lo + hi) halves down to one lane, fixed order.
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void barrier(V& a, V& b, V& c, V& d, V& e, V& f) {
    asm volatile("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d), "+v"(e), "+v"(f));
  }
};

// Row pairs: 16-lane vectors holding two 8-pixel output rows, read as two 8-float rows of the
// padded input (one insert per vector) so no lane is wasted (flat vectors over 10-wide padded
// rows use 80% of them). Tiles of 6 channels x 4 vectors: 24 accumulators, 4 inputs, 1 broadcast.
struct T16P : T16 {
  static constexpr int kMaxM = 6;
  static constexpr int kNV = 4;
  static constexpr int nv_for(int m) { return m == 6 ? 4 : m == 5 ? 5 : 6; }
  static constexpr bool kPairs = true;
  static V load_pair(const float* p, int64_t rs) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(p)), _mm256_loadu_ps(p + rs), 1);
  }
  // Stride 2: the even samples of input rows p and p + 2 rs (output rows y, y + 1), one permute.
  static V load_pair_s2(const float* p, int64_t rs) {
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(_mm512_loadu_ps(p), idx, _mm512_loadu_ps(p + 2 * rs));
  }
  // load_pair masked by m: lanes 8-15 (the row at p + rs) read nothing where m has no bits
  static V load_pair_m(const float* p, int64_t rs, uint32_t m) {
    const __m256 a = _mm256_maskz_loadu_ps(static_cast<__mmask8>(m & 0xFFu), p);
    const __m256 b = _mm256_maskz_loadu_ps(static_cast<__mmask8>(m >> 8), p + rs);
    return _mm512_insertf32x8(_mm512_castps256_ps512(a), b, 1);
  }
  // lanes 0-7 to p, 8-15 to p + rs, masked by m
  static void store_pair(float* p, int64_t rs, V v, uint32_t m) {
    if (m == kFull) {
      _mm256_storeu_ps(p, _mm512_castps512_ps256(v));
      _mm256_storeu_ps(p + rs, _mm512_extractf32x8_ps(v, 1));
    } else {
      _mm256_mask_storeu_ps(p, static_cast<__mmask8>(m & 0xFFu), _mm512_castps512_ps256(v));
      _mm256_mask_storeu_ps(p + rs, static_cast<__mmask8>(m >> 8), _mm512_extractf32x8_ps(v, 1));
    }
  }
};

// 8-pixel vectors with AVX-512VL encodings: 32 ymm registers allow the 6-channel tiles.
struct T8 {
  using V = __m256;
  static constexpr int W = 8;
  static constexpr int kMaxM = 6;
  static constexpr int kNV = 4;  // output vectors per register tile of 6 channels
  static constexpr int nv_for(int m) { return m == 6 ? 4 : m == 5 ? 5 : 6; }
  static constexpr int kRegs = 32;  // ymm0-31 (AVX-512VL)
  static constexpr bool kHasDeinterleave = true;
  static constexpr bool kEvenLanes = true;
  static V load_s2(const float* p) {
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    return _mm256_permutex2var_ps(_mm256_loadu_ps(p), idx, _mm256_loadu_ps(p + 8));
  }
  static V even_lanes(const float* p) { return load_s2(p); }
  static void even_lanes8(const float* p, float* d) { _mm256_storeu_ps(d, load_s2(p)); }
  static constexpr bool kInputsFirst = true;
  static void pin(V& v) { asm volatile("" : "+v"(v)); }
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V mul_rounded(V a, V b) {
    V p = _mm256_mul_ps(a, b);
    asm("" : "+v"(p));
    return p;
  }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V pow2n(V n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  static void store(float* p, V v) { _mm256_store_ps(p, v); }
  static void storeu(float* p, V v) { _mm256_storeu_ps(p, v); }
  static constexpr uint32_t kFull = 0xFFu;
  static V load_m(const float* p, uint32_t m) { return _mm256_maskz_loadu_ps(static_cast<__mmask8>(m), p); }
  static void store_m(float* p, V v, uint32_t m) { _mm256_mask_storeu_ps(p, static_cast<__mmask8>(m), v); }
  static V keep_m(V v, uint32_t m) { return _mm256_maskz_mov_ps(static_cast<__mmask8>(m), v); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void barrier(V& a, V& b, V& c, V& d, V& e, V& f) {
    asm volatile("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d), "+v"(e), "+v"(f));
  }
};

}  // namespace avx512
}  // namespace dyninfer

#include "winograd_impl.h"

namespace dyninfer {

// The kernels use zmm/ymm16-31, which vzeroupper does not clean. Left dirty, they make every
// legacy-SSE instruction that runs afterwards (the portable glue code of the runtime) pay a
// merge penalty — measured 3-4x slower im2col. Zero them before returning.
static inline void clean_upper_state() {
  asm volatile(
      "vpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t"
      "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\t"
      "vpxord %%zmm20, %%zmm20, %%zmm20\n\tvpxord %%zmm21, %%zmm21, %%zmm21\n\t"
      "vpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"
      "vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t"
      "vpxord %%zmm26, %%zmm26, %%zmm26\n\tvpxord %%zmm27, %%zmm27, %%zmm27\n\t"
      "vpxord %%zmm28, %%zmm28, %%zmm28\n\tvpxord %%zmm29, %%zmm29, %%zmm29\n\t"
      "vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31\n\t"
      "vzeroupper" ::
          : "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26",
            "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "memory");
}

// Every entry point leaves the upper register state clean for the SSE glue code around it.
static void conv_avx512(const ConvCall& call) {
  if (call.pairs) avx512::run<avx512::T16P>(call);
  else if (call.vw == 16) avx512::run<avx512::T16>(call);
  else avx512::run<avx512::T8>(call);
  clean_upper_state();
}
static void im2col_avx512(const Im2colCall& a) {
  avx512::im2col<avx512::T16>(a);
  clean_upper_state();
}
static float plane_copy_avx512(const float* src, int64_t sw, float* dst, int64_t dw, int h, int w, bool relu) {
  const float r = avx512::plane_copy<avx512::T16>(src, sw, dst, dw, h, w, relu);
  clean_upper_state();
  return r;
}
static void gemv_avx512(const float* w, const float* x, const int32_t* idx, int nk, const float* b, float* y,
                        int rows, bool relu) {
  avx512::gemv<avx512::T16>(w, x, idx, nk, b, y, rows, relu);
  clean_upper_state();
}
static bool subsample2_avx512(const float* src, int64_t sw, float* dst, int64_t dw, int h, int w) {
  const bool done = avx512::subsample2<avx512::T16>(src, sw, dst, dw, h, w);
  clean_upper_state();
  return done;
}
static void add_avx512(const float* a, int64_t aw, const float* b, int64_t bw, float* d, int64_t dw, int h, int w,
                       bool relu) {
  avx512::add_planes<avx512::T16>(a, aw, b, bw, d, dw, h, w, relu);
  clean_upper_state();
}
static void affine_avx512(const float* s, int64_t sw, float scale, float shift, float* d, int64_t dw, int h, int w,
                          bool relu) {
  avx512::affine_plane<avx512::T16>(s, sw, scale, shift, d, dw, h, w, relu);
  clean_upper_state();
}
static void linear_acc_avx512(const float* wt, int n_out, const float* xs, const int32_t* ks, int n, float* acc) {
  avx512::linear_acc<avx512::T16>(wt, n_out, xs, ks, n, acc);
  clean_upper_state();
}
static void pool_avx512(const PoolCall& p) {
  avx512::pool<avx512::T16>(p);
  clean_upper_state();
}
static bool winograd_avx512(const WinoCall& c, int phase, int begin, int end) {
  const bool done = avx512::winograd<avx512::T16>(c, phase, begin, end);
  clean_upper_state();
  return done;
}
static double peak_avx512(int64_t iters) {
  const double f = avx512::peak<avx512::T16>(iters);
  clean_upper_state();
  return f;
}

const KernelTable* kernels_avx512() {
  using avx512::T16, avx512::T16P, avx512::T8;
  // Small planes: 6-channel tiles are 4 vectors wide, so a 7x7 plane (4 flat vectors) is one tile
  // (with 8-channel, 3-vector tiles it is two, and every weight is read twice). Measured on
  // ResNet-50's 7x7 stage (AMD EPYC Zen 4, one thread): 0.84x the time of 8-channel tiles.
  constexpr int kWholeM = 6;
  static_assert(T16::nv_for(kWholeM) > T16::nv_for(T16::kMaxM), "small-plane tile must be wider than the tallest");
  static const KernelTable table{&conv_avx512, &im2col_avx512, &plane_copy_avx512,
                                 &gemv_avx512, &peak_avx512,   &pool_avx512,    &add_avx512,
                                 &subsample2_avx512, &affine_avx512, &linear_acc_avx512,
                                 IsaCaps{T16::W, T16::kHasDeinterleave && T8::kHasDeinterleave, T16P::kPairs, true,
                                         T8::kMaxM, T16::kMaxM, T16P::kMaxM, T16::nv_for(T16::kMaxM), kWholeM,
                                         T16::nv_for(kWholeM)},
                                 &winograd_avx512, T16::W};
  return &table;
}

}  // namespace dyninfer
#else
#include "conv.h"
namespace dyninfer {
const KernelTable* kernels_avx512() { return nullptr; }
}  // namespace dyninfer
#endif
