// AVX-512 instantiation of the conv kernels (16-pixel vectors), used for output rows wider than
// 8 pixels on CPUs whose run-time probe reports avx512f. Same source as every other path.
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#include <immintrin.h>

#define DYNINFER_ISA_NS avx512
#include "conv_impl.h"

namespace dyninfer {
namespace avx512 {

#include "avx512_traits.h"

}  // namespace avx512
}  // namespace dyninfer

#include "winograd_impl.h"

namespace dyninfer {

using avx512::clean_upper_state;

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
