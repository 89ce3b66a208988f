// The AVX-512 vector traits of the conv kernels (conv_impl.h): 16-pixel zmm vectors (T16), row
// pairs (T16P) and 8-pixel ymm vectors with 32 registers (T8); and clean_upper_state, which every
// entry point calls before returning. Included inside an ISA namespace by
// each translation unit compiled for AVX-512 (conv_avx512.cpp, and conv_bf16.cpp, whose traits
// derive from these and change only the multiply-add).
#pragma once

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
