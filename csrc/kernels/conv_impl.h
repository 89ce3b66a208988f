// Conv driver and micro-kernels, templated on a vector-traits type T. Included once per ISA by
// conv_<isa>.cpp under the matching `#pragma GCC target`, so the same source yields every path.
//
// Tiling: M output channels (broadcast weights) x NV output vectors (T::W pixels each) -> M*NV
// accumulators; M=3, NV=4 gives 12 ymm accumulators + 3 broadcasts + 1 input vector = 16 ymm.
// Loads per step: M broadcasts + NV input loads for M*NV FMAs (7 per 12).
#pragma once

#include <cstdint>
#include <cstring>

#include "conv.h"

namespace dyninfer {
namespace DYNINFER_ISA_NS {

template <class T, int M, int NV, int KH, int KW>
static inline void micro(const ConvCall& c, const float* const* wrow, const int64_t* voff, float* acc_out) {
  using V = typename T::V;
  V acc[M][NV];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < NV; ++j) acc[m][j] = T::zero();
  const int kh = KH > 0 ? KH : c.kh;
  const int kw = KW > 0 ? KW : c.kw;
  const int kk = kh * kw;
  const int64_t rs = c.rs;
  int64_t vo[NV];
  for (int j = 0; j < NV; ++j) vo[j] = voff[j];
  const float* in = c.in;
  for (int ci = 0; ci < c.n_in; ++ci) {
    const float* ic = in + ci * c.cstride;
    const int64_t wo = static_cast<int64_t>(c.in_real[ci]) * kk;
    const float* wp[M];
    for (int m = 0; m < M; ++m) wp[m] = wrow[m] + wo;
    for (int ky = 0; ky < kh; ++ky) {
      const float* row = ic + ky * rs;
      for (int kx = 0; kx < kw; ++kx) {
        V b[M];
        for (int m = 0; m < M; ++m) b[m] = T::bcast(wp[m] + ky * kw + kx);
        for (int j = 0; j < NV; ++j) {
          const V a = T::load(row + vo[j] + kx);
          for (int m = 0; m < M; ++m) acc[m][j] = T::fma(b[m], a, acc[m][j]);
        }
      }
    }
  }
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < NV; ++j) T::store(acc_out + (m * NV + j) * T::W, acc[m][j]);
}

template <class T, int M, int NV, int KH, int KW>
static void tile(const ConvCall& c, int k0, int v0, float* acc) {
  const float* wrow[M];
  for (int m = 0; m < M; ++m) wrow[m] = c.w + static_cast<int64_t>(c.out_real[k0 + m]) * c.w_ostride;
  micro<T, M, NV, KH, KW>(c, wrow, c.in_off + v0, acc);
  // Epilogue: bias, residual, ReLU, (masked) store, per-channel sums.
  for (int m = 0; m < M; ++m) {
    const int k = k0 + m;
    const int o = c.out_real[k];
    float* op = c.out_plane[k];
    const float* rp = c.res_plane ? c.res_plane[k] : nullptr;
    const typename T::V bias = T::set1(c.bias ? c.bias[o] : 0.f);
    typename T::V s = T::zero();
    for (int j = 0; j < NV; ++j) {
      const int v = v0 + j;
      typename T::V x = T::add(T::load(acc + (m * NV + j) * T::W), bias);
      const int valid = c.valid[v];
      if (rp) x = T::add(x, T::load_n(rp + c.res_off[v], valid));
      if (c.relu) x = T::max(x, T::zero());
      if (valid == T::W) {
        T::storeu(op + c.out_off[v], x);
        s = T::add(s, x);
      } else {
        T::store_n(op + c.out_off[v], x, valid);
        s = T::add(s, T::keep_n(x, valid));
      }
    }
    if (c.sums) c.sums[o] += T::hsum(s);
  }
}

template <class T, int M, int KH, int KW>
static void tile_nv(const ConvCall& c, int k0, int v0, int nv, float* acc) {
  switch (nv) {
    case 4: tile<T, M, 4, KH, KW>(c, k0, v0, acc); break;
    case 3: tile<T, M, 3, KH, KW>(c, k0, v0, acc); break;
    case 2: tile<T, M, 2, KH, KW>(c, k0, v0, acc); break;
    default: tile<T, M, 1, KH, KW>(c, k0, v0, acc); break;
  }
}

template <class T, int KH, int KW>
static void run_shape(const ConvCall& c) {
  alignas(64) float acc[kMaxGroup * kTileVectors * T::W];
  for (int v0 = 0; v0 < c.n_vec; v0 += kTileVectors) {
    const int nv = c.n_vec - v0 < kTileVectors ? c.n_vec - v0 : kTileVectors;
    for (int g = c.g_begin; g < c.g_end; ++g) {
      const int k0 = c.group_start[g];
      switch (c.group_size[g]) {
        case 3: tile_nv<T, 3, KH, KW>(c, k0, v0, nv, acc); break;
        case 2: tile_nv<T, 2, KH, KW>(c, k0, v0, nv, acc); break;
        default: tile_nv<T, 1, KH, KW>(c, k0, v0, nv, acc); break;
      }
    }
  }
}

template <class T>
static void run(const ConvCall& c) {
  if (c.kh == 3 && c.kw == 3) run_shape<T, 3, 3>(c);
  else if (c.kh == 1 && c.kw == 1) run_shape<T, 1, 1>(c);
  else run_shape<T, 0, 0>(c);
}

template <class T>
static double peak(int64_t iters) {
  using V = typename T::V;
  V a[12];
  for (int i = 0; i < 12; ++i) a[i] = T::set1(1.0f + 1e-7f * i);
  const V x = T::set1(0.9999999f), y = T::set1(1e-8f);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 12; ++i) a[i] = T::fma(a[i], x, y);
    T::barrier(a);
  }
  float sink = 0;
  for (int i = 0; i < 12; ++i) sink += T::hsum(a[i]);
  volatile float keep = sink;
  (void)keep;
  return 2.0 * 12.0 * T::W * static_cast<double>(iters);
}

}  // namespace DYNINFER_ISA_NS
}  // namespace dyninfer
