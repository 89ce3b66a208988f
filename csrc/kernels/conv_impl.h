// Conv driver and micro-kernels, templated on a vector-traits type T. Included once per ISA by
// conv_<isa>.cpp under the matching `#pragma GCC target`, so the same source yields every path.
//
// Tiling: M output channels (broadcast weights) x NV output vectors (T::W pixels each) -> M*NV
// accumulators. With 16 vector registers (AVX2) M <= 3, NV = 4: 12 accumulators + 3 broadcasts +
// 1 input vector; loads per step 7 for 12 FMAs. With 32 registers (AVX-512): zmm M <= 8, NV = 3
// (24 accumulators + 3 inputs + 1 broadcast; 11 loads for 24 FMAs), ymm M <= 6, NV = 4. That keeps
// the (mostly cache-line-split) input loads well under the load ports' limit.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "conv.h"

namespace dyninfer {
namespace DYNINFER_ISA_NS {

// T::asm3x3<M, COLUMNS>(call, weight rows, vector offsets, acc) when the ISA has hand-allocated
// register tiles of T::kNV vectors for 3x3 convs, direct stride-1 or over the 9 tap planes of the
// column buffer (conv_avx2_asm.cpp); it returns false where it does not apply.
template <class T, class = void>
struct HasAsm3x3 : std::false_type {};
template <class T>
struct HasAsm3x3<T, std::void_t<decltype(T::kAsm3x3)>> : std::bool_constant<T::kAsm3x3> {};

// T::kPairs: 16-lane vectors of two 8-pixel rows (T::load_pair / T::store_pair; conv_avx512.cpp).
template <class T, class = void>
struct IsPairs : std::false_type {};
template <class T>
struct IsPairs<T, std::void_t<decltype(T::kPairs)>> : std::bool_constant<T::kPairs> {};

// T::nv_for(M): output vectors per register tile of M channels. An ISA with registers to spare
// lets shorter tiles grow wider, so a group of 4 or 5 channels (a gated layer keeping 9 or 10 of
// 16, split 5 + 4) still runs about two FMAs per broadcast load; T::kNV for every M otherwise.
template <class T, class = void>
struct HasNvFor : std::false_type {};
template <class T>
struct HasNvFor<T, std::void_t<decltype(T::nv_for(1))>> : std::true_type {};
template <class T>
constexpr int nv_for(int m) {
  if constexpr (HasNvFor<T>::value) {
    return T::nv_for(m);
  } else {
    return T::kNV;
  }
}

template <class T, int M, int NV, int KH, int KW, bool S2>
__attribute__((always_inline)) static inline void micro(const ConvCall& c, const float* const* wrow,
                                                      const int64_t* voff, typename T::V (&acc)[M][NV]) {
  using V = typename T::V;
  if constexpr (HasAsm3x3<T>::value && NV == T::kNV && !S2 && ((KH == 3 && KW == 3) || (KH == 9 && KW == 1))) {
    if (c.use_asm && T::template asm3x3<M, KH == 9>(c, wrow, voff, acc)) return;
  }
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
        if constexpr (T::kInputsFirst) {
          // 32 registers: NV inputs stay in registers, one broadcast at a time (pinned so the
          // compiler does not fold it into every FMA as a {1toN} memory operand: that would be
          // M*NV loads per step instead of M + NV).
          V a[NV];
          if constexpr (S2 && IsPairs<T>::value) {
            for (int j = 0; j < NV; ++j) a[j] = T::load_pair_s2(row + vo[j] + kx, rs);
          } else if constexpr (S2) {
            for (int j = 0; j < NV; ++j) a[j] = T::load_s2(row + vo[j] + kx);
          } else if constexpr (IsPairs<T>::value) {
            for (int j = 0; j < NV; ++j) a[j] = T::load_pair(row + vo[j] + kx, rs);
          } else {
            for (int j = 0; j < NV; ++j) a[j] = T::load(row + vo[j] + kx);
          }
          for (int m = 0; m < M; ++m) {
            V b = T::bcast(wp[m] + ky * kw + kx);
            T::pin(b);
            for (int j = 0; j < NV; ++j) acc[m][j] = T::fma(b, a[j], acc[m][j]);
          }
        } else {
          // 16 registers: M broadcasts stay in registers, one input vector at a time.
          V b[M];
          for (int m = 0; m < M; ++m) b[m] = T::bcast(wp[m] + ky * kw + kx);
          for (int j = 0; j < NV; ++j) {
            const V a = T::load(row + vo[j] + kx);
            for (int m = 0; m < M; ++m) acc[m][j] = T::fma(b[m], a, acc[m][j]);
          }
        }
      }
    }
  }
}

// e^x per lane (Cephes' expf: Cody-Waite reduction by ln 2, degree-6 polynomial, 2^n from the
// exponent bits; within 2 ulp of expf for x in [-87.3, 88.7], clamped outside).
template <class T>
__attribute__((always_inline)) static inline typename T::V vexp(typename T::V x) {
  using V = typename T::V;
  x = T::min(T::max(x, T::set1(-87.3f)), T::set1(88.7f));
  const V magic = T::set1(12582912.f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const V n = T::add(T::add(T::mul_rounded(x, T::set1(1.44269504088896341f)), magic), T::set1(-12582912.f));
  V f = T::add(x, T::mul_rounded(n, T::set1(-0.693359375f)));
  f = T::add(f, T::mul_rounded(n, T::set1(2.12194440e-4f)));
  V p = T::set1(1.9875691500e-4f);
  p = T::add(T::mul_rounded(p, f), T::set1(1.3981999507e-3f));
  p = T::add(T::mul_rounded(p, f), T::set1(8.3334519073e-3f));
  p = T::add(T::mul_rounded(p, f), T::set1(4.1665795894e-2f));
  p = T::add(T::mul_rounded(p, f), T::set1(1.6666665459e-1f));
  p = T::add(T::mul_rounded(p, f), T::set1(5.0000001201e-1f));
  p = T::add(T::add(T::mul_rounded(T::mul_rounded(p, f), f), f), T::set1(1.f));
  return T::mul_rounded(p, T::pow2n(n));
}

// The conv epilogue's activation (ConvCall::act); lo is 0 for ReLU.
template <class T>
__attribute__((always_inline)) static inline typename T::V activate(int act, typename T::V x, typename T::V lo,
                                                                     typename T::V hi) {
  if (act == 1) return T::max(x, lo);
  if (act == 2) return T::min(T::max(x, lo), hi);
  if (act == 3) {  // hardswish: x * min(max(x + 3, 0), 6) / 6
    const typename T::V r = T::min(T::max(T::add(x, T::set1(3.f)), T::zero()), T::set1(6.f));
    return T::mul_rounded(T::mul_rounded(x, r), T::set1(1.f / 6.f));
  }
  if (act == 4) {  // SiLU: x / (1 + e^-x)
    const typename T::V e = vexp<T>(T::mul_rounded(x, T::set1(-1.f)));
    return T::div(x, T::add(T::set1(1.f), e));
  }
  return x;
}

// The common epilogue, unrolled so the accumulators never leave their registers: every vector of
// the tile full (no row tail; row pairs: both rows), no gate scale, ReLU or no activation. Same operations in the same
// order as the general epilogue below.
template <class T, int M, int NV, bool RELU>
__attribute__((always_inline)) static inline void epilogue_full(const ConvCall& c, int k0, int v0, float* vsums,
                                                                typename T::V (&acc)[M][NV]) {
  using V = typename T::V;
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {
    const int k = k0 + m;
    const int o = c.out_real[k];
    float* op = c.out_plane[k];
    const float* rp = c.res_plane ? c.res_plane[k] : nullptr;
    const V bias = T::set1(c.bias ? c.bias[o] : 0.f);
    V x[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) x[j] = T::add(acc[m][j], bias);
    if (rp) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        if constexpr (IsPairs<T>::value) x[j] = T::add(x[j], T::load_pair(rp + c.res_off[v0 + j], c.res_wp));
        else x[j] = T::add(x[j], T::load(rp + c.res_off[v0 + j]));
      }
    }
    V s = T::zero();
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      if constexpr (RELU) x[j] = T::max(x[j], T::zero());
      if constexpr (IsPairs<T>::value) T::store_pair(op + c.out_off[v0 + j], c.out_wp, x[j], T::kFull);
      else T::storeu(op + c.out_off[v0 + j], x[j]);
      s = T::add(s, x[j]);
    }
    float* vs = vsums + k * T::W;
    T::store(vs, T::add(T::load(vs), s));
  }
}

template <class T, int M, int NV, int KH, int KW, bool S2>
static void tile(const ConvCall& c, int k0, int v0, float* vsums) {
  const float* wrow[M];
  for (int m = 0; m < M; ++m) wrow[m] = c.w + static_cast<int64_t>(c.out_real[k0 + m]) * c.w_ostride;
  if (c.prefetch_next && v0 + NV < c.n_vec) {  // the next tile's epilogue lines (ConvCall::prefetch_next)
    const int vn = v0 + NV;
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < NV && vn + j < c.n_vec; ++j) {
        __builtin_prefetch(c.out_plane[k0 + m] + c.out_off[vn + j], 1, 2);
        if (c.res_plane && c.res_plane[k0 + m] && c.res_plane[k0 + m] != c.out_plane[k0 + m])
          __builtin_prefetch(c.res_plane[k0 + m] + c.res_off[vn + j], 0, 2);
      }
  }
  typename T::V acc[M][NV];
  micro<T, M, NV, KH, KW, S2>(c, wrow, c.in_off + v0, acc);
  {
    bool full = c.act <= 1 && c.scale == nullptr;
    for (int j = 0; j < NV; ++j) full = full && c.lanes[v0 + j] == T::kFull;
    if (full) {
      if (c.act == 1) epilogue_full<T, M, NV, true>(c, k0, v0, vsums, acc);
      else epilogue_full<T, M, NV, false>(c, k0, v0, vsums, acc);
      return;
    }
  }
  // Epilogue straight from the accumulator registers: bias, residual, ReLU, (masked) store, and
  // the per-channel sums (kept as vectors across tiles; reduced once per conv).
  for (int m = 0; m < M; ++m) {
    const int k = k0 + m;
    const int o = c.out_real[k];
    float* op = c.out_plane[k];
    const float* rp = c.res_plane ? c.res_plane[k] : nullptr;
    const typename T::V bias = T::set1(c.bias ? c.bias[o] : 0.f);
    const typename T::V lo = T::set1(c.act == 2 ? c.act_lo : 0.f), hi = T::set1(c.act_hi);
    const bool scaled = c.scale != nullptr;
    const typename T::V sc = T::set1(scaled ? c.scale[o] : 1.f);
    typename T::V s = T::zero();
    for (int j = 0; j < NV; ++j) {
      const int v = v0 + j;
      typename T::V x = T::add(acc[m][j], bias);
      const uint32_t lanes = c.lanes[v];
      if (scaled && c.scale_first) x = T::mul_rounded(x, sc);
      if constexpr (IsPairs<T>::value) {
        // Two output rows per vector, one row stride apart (the second masked off after an odd
        // last row).
        if (rp) x = T::add(x, T::load_pair_m(rp + c.res_off[v], c.res_wp, lanes));
        x = activate<T>(c.act, x, lo, hi);
        if (scaled && !c.scale_first) x = T::mul_rounded(x, sc);
        T::store_pair(op + c.out_off[v], c.out_wp, x, lanes);
        s = T::add(s, lanes == T::kFull ? x : T::keep_m(x, lanes));
        continue;
      }
      const bool full = lanes == T::kFull;
      if (rp) x = T::add(x, full ? T::load(rp + c.res_off[v]) : T::load_m(rp + c.res_off[v], lanes));
      x = activate<T>(c.act, x, lo, hi);
      if (scaled && !c.scale_first) x = T::mul_rounded(x, sc);
      if (full) {
        T::storeu(op + c.out_off[v], x);
        s = T::add(s, x);
      } else {
        T::store_m(op + c.out_off[v], x, lanes);
        s = T::add(s, T::keep_m(x, lanes));
      }
    }
    float* vs = vsums + k * T::W;
    T::store(vs, T::add(T::load(vs), s));
  }
}

template <class T, int M, int KH, int KW, bool S2, int NV = T::kNV>
static void tile_nv(const ConvCall& c, int k0, int v0, int nv, float* vsums) {
  if (nv == NV) {
    tile<T, M, NV, KH, KW, S2>(c, k0, v0, vsums);
  } else if constexpr (NV > 1) {
    tile_nv<T, M, KH, KW, S2, NV - 1>(c, k0, v0, nv, vsums);
  } else {
    __builtin_trap();  // nv outside [1, NV]: run_shape's widths come from nv_for, non-increasing in M
  }
}

// Vector registers the widest tile of any height M <= T::kMaxM holds at once (M x nv_for(M)
// accumulators, plus the NV input vectors and one broadcast (inputs first), or the M broadcast
// weights and one input vector). Checked against the ISA's register file at compile time (run
// below), so no tile shape can outgrow it and spill in the inner loop.
template <class T>
constexpr int tile_registers() {
  int most = 0;
  for (int m = 1; m <= T::kMaxM; ++m) {
    const int nv = nv_for<T>(m);
    const int regs = m * nv + (T::kInputsFirst ? nv + 1 : m + 1);
    most = regs > most ? regs : most;
  }
  return most;
}

template <class T>
constexpr bool tile_widths_valid() {
  // Every group of a conv is at most as tall as the tallest, whose width run_shape uses for all:
  // widths must not grow with the height.
  for (int m = 1; m <= T::kMaxM; ++m)
    if (nv_for<T>(m) < 1 || nv_for<T>(m) > 8 || (m > 1 && nv_for<T>(m) > nv_for<T>(m - 1))) return false;
  return nv_for<T>(T::kMaxM) == T::kNV;
}

template <class T, int KH, int KW, bool S2, int M>
static inline void tile_m(const ConvCall& c, int m, int k0, int v0, int nv, float* vsums) {
  if (m == M) {
    tile_nv<T, M, KH, KW, S2, nv_for<T>(M)>(c, k0, v0, nv, vsums);
  } else if constexpr (M > 1) {
    tile_m<T, KH, KW, S2, M - 1>(c, m, k0, v0, nv, vsums);
  } else {
    // A group taller than T::kMaxM (or empty) has no tile: computing nothing would leave its
    // channels' outputs stale. Groups come from conv_make_groups with conv_max_group, which reads
    // T::kMaxM through the ISA's caps, so this is unreachable; stop loudly if it is not.
    __builtin_trap();
  }
}

template <class T, int KH, int KW, bool S2 = false>
static void run_shape(const ConvCall& c) {
  // Vector partial sums of this call's channels: [computed channel][lane], 64-byte aligned.
  float* vsums = c.vsums;
  for (int g = c.g_begin; g < c.g_end; ++g)
    for (int k = c.group_start[g]; k < c.group_start[g] + c.group_size[g]; ++k) T::store(vsums + k * T::W, T::zero());
  // Pixel tiles of near-equal size (5 vectors -> 3 + 2, not 4 + 1: a one-vector tile has too few
  // independent accumulators to hide the FMA latency), as wide as the tallest group's tile allows
  // (groups differ by at most one channel; a shorter group uses the same width, fewer registers).
  int tallest = 1;
  for (int g = c.g_begin; g < c.g_end; ++g) tallest = c.group_size[g] > tallest ? c.group_size[g] : tallest;
  const int width = nv_for<T>(tallest < T::kMaxM ? tallest : T::kMaxM);
  const int n_tiles = (c.n_vec + width - 1) / width;
  const int base = n_tiles > 0 ? c.n_vec / n_tiles : 0, extra = n_tiles > 0 ? c.n_vec % n_tiles : 0;
  if (c.n_vec <= kWeightsOuterMaxVecs) {
    // small plane: group by group, so each group's weights are read once (conv.h)
    for (int g = c.g_begin; g < c.g_end; ++g)
      for (int t = 0, v0 = 0; t < n_tiles; ++t) {
        const int nv = base + (t < extra ? 1 : 0);
        tile_m<T, KH, KW, S2, T::kMaxM>(c, c.group_size[g], c.group_start[g], v0, nv, vsums);
        v0 += nv;
      }
  } else {
    for (int t = 0, v0 = 0; t < n_tiles; ++t) {
      const int nv = base + (t < extra ? 1 : 0);
      for (int g = c.g_begin; g < c.g_end; ++g)
        tile_m<T, KH, KW, S2, T::kMaxM>(c, c.group_size[g], c.group_start[g], v0, nv, vsums);
      v0 += nv;
    }
  }
  if (c.sums)
    for (int g = c.g_begin; g < c.g_end; ++g)
      for (int k = c.group_start[g]; k < c.group_start[g] + c.group_size[g]; ++k)
        c.sums[c.out_real[k]] += T::hsum(T::load(vsums + k * T::W));
}

template <class T>
static void run(const ConvCall& c) {
  static_assert(tile_registers<T>() <= T::kRegs, "conv tile: kMaxM x kNV accumulators and their operands exceed "
                                                 "the ISA's vector registers");
  static_assert(T::kMaxM >= 1 && T::kNV >= 1, "conv tile: empty tile");
  static_assert(tile_widths_valid<T>(), "conv tile: nv_for(M) must be in [1, 8], non-increasing in M, and kNV at kMaxM");
  if constexpr (T::kHasDeinterleave) {
    if (c.stride2) {
      if (c.kh == 3 && c.kw == 3) run_shape<T, 3, 3, true>(c);
      else if (c.kh == 1 && c.kw == 1) run_shape<T, 1, 1, true>(c);
      else run_shape<T, 0, 0, true>(c);
      return;
    }
  }
  if (c.kh == 3 && c.kw == 3) run_shape<T, 3, 3>(c);
  else if (c.kh == 1 && c.kw == 1) run_shape<T, 1, 1>(c);
  else if (c.kh == 9 && c.kw == 1) run_shape<T, 9, 1>(c);  // 3x3 through im2col (strided)
  else run_shape<T, 0, 0>(c);
}

template <class T>
static double peak(int64_t iters) {
  // 12 independent FMA chains held in named registers (an array would be spilled to the stack).
  using V = typename T::V;
  const V x = T::set1(0.9999999f), y = T::set1(1e-8f);
  V a0 = T::set1(1.f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0,
    a10 = a0, a11 = a0;
  for (int64_t it = 0; it < iters; ++it) {
    a0 = T::fma(a0, x, y); a1 = T::fma(a1, x, y); a2 = T::fma(a2, x, y); a3 = T::fma(a3, x, y);
    a4 = T::fma(a4, x, y); a5 = T::fma(a5, x, y); a6 = T::fma(a6, x, y); a7 = T::fma(a7, x, y);
    a8 = T::fma(a8, x, y); a9 = T::fma(a9, x, y); a10 = T::fma(a10, x, y); a11 = T::fma(a11, x, y);
    T::barrier(a0, a1, a2, a3, a4, a5);
    T::barrier(a6, a7, a8, a9, a10, a11);
  }
  V s = T::add(T::add(T::add(a0, a1), T::add(a2, a3)), T::add(T::add(a4, a5), T::add(a6, a7)));
  s = T::add(s, T::add(T::add(a8, a9), T::add(a10, a11)));
  volatile float keep = T::hsum(s);
  (void)keep;
  return 2.0 * 12.0 * T::W * static_cast<double>(iters);
}

// Column buffer (see Im2colCall); compiled per ISA so the copies are VEX/EVEX-encoded and
// vectorised like the kernels around them.
template <class T>
static void im2col(const Im2colCall& a) {
  const int64_t wv = a.col_rows;
  const bool inside = a.ph <= a.border && a.pw <= a.border;
  for (int ci = 0; ci < a.n_in; ++ci) {
    const float* src = a.in + ci * a.plane + static_cast<int64_t>(a.border) * a.wp + a.border;
    for (int ky = 0; ky < a.kh; ++ky)
      for (int kx = 0; kx < a.kw; ++kx) {
        float* dst = a.col + ((static_cast<int64_t>(ci) * a.kh + ky) * a.kw + kx) * a.ho * wv;
        const int x0 = kx * a.dw - a.pw;
        for (int y = 0; y < a.ho; ++y) {
          const int iy = y * a.sh - a.ph + ky * a.dh;
          float* __restrict d = dst + y * wv;
          if (inside) {
            const float* __restrict s = src + iy * a.wp + x0;
            if (a.sw == 2) {
              int x = 0;
              if constexpr (T::kEvenLanes) {
                for (; x + T::W <= a.wo; x += T::W) T::storeu(d + x, T::even_lanes(s + 2 * x));
                for (; x + 8 <= a.wo; x += 8) T::even_lanes8(s + 2 * x, d + x);
              }
              for (; x < a.wo; ++x) d[x] = s[2 * x];
            } else {
              for (int x = 0; x < a.wo; ++x) d[x] = s[x * a.sw];
            }
          } else if (iy < 0 || iy >= a.hi) {
            for (int x = 0; x < a.wo; ++x) d[x] = 0.f;
          } else {
            const float* s = src + iy * a.wp;
            for (int x = 0; x < a.wo; ++x) {
              const int ix = x * a.sw + x0;
              d[x] = (ix >= 0 && ix < a.wi) ? s[ix] : 0.f;
            }
          }
          for (int64_t x = a.wo; x < wv; ++x) d[x] = 0.f;
        }
      }
  }
}

// Max pooling over zero-bordered planes of values >= 0 (see PoolCall): T::W output pixels per
// vector, the window's taps as (stride-2: deinterleaved) loads, a masked store for row tails.
template <class T>
static bool pool_max_nonneg(const PoolCall& p) {
  if (p.sw != 1 && !(p.sw == 2 && T::kEvenLanes)) return false;
  for (int c = 0; c < p.n; ++c) {
    const float* src = p.in + c * p.in_cstride;
    float* dst = p.out + c * p.out_cstride;
    for (int y = 0; y < p.ho; ++y) {
      const float* r0 = src + static_cast<int64_t>(y * p.sh - p.ph) * p.in_wp - p.pw;
      float* d = dst + y * p.out_wp;
      for (int x = 0; x < p.wo; x += T::W) {
        const float* q = r0 + static_cast<int64_t>(x) * p.sw;
        typename T::V m = T::zero();  // every value is >= 0
        for (int ky = 0; ky < p.kh; ++ky)
          for (int kx = 0; kx < p.kw; ++kx) {
            const float* t = q + ky * p.in_wp + kx;
            m = T::max(m, p.sw == 1 ? T::load(t) : T::even_lanes(t));
          }
        const int n = p.wo - x < T::W ? p.wo - x : T::W;
        if (n == T::W) T::storeu(d + x, m);
        else T::store_m(d + x, m, static_cast<uint32_t>((1ull << n) - 1ull));
      }
    }
  }
  return true;
}

// Divisor of the average-pooling window starting at (y0, x0) (padding included) that covers rows
// real rows and cols real columns: PyTorch's divisor_override, else the window clipped to the padded
// plane (count_include_pad) or to the real one.
inline int pool_divisor(const PoolCall& p, int y0, int rows, int x0, int cols) {
  if (p.divisor > 0) return p.divisor;
  if (!p.count_include_pad) return rows * cols;
  return ((y0 + p.kh < p.hi + p.ph ? y0 + p.kh : p.hi + p.ph) - y0) *
         ((x0 + p.kw < p.wi + p.pw ? x0 + p.kw : p.wi + p.pw) - x0);
}

// Average pooling at stride 1 over zero-bordered planes whose border holds every window: T::W
// output pixels per vector. Rows are clipped exactly as in pool_scalar; columns outside the plane
// read the border's zeros, which add nothing, so each lane's sum takes the same values in the same
// order as the scalar loop (identical results). Divisors per pixel, then a scalar division.
template <class T>
static void pool_avg_s1(const PoolCall& p) {
  alignas(64) float sums[T::W];
  for (int c = 0; c < p.n; ++c) {
    const float* src = p.in + c * p.in_cstride;
    float* dst = p.out + c * p.out_cstride;
    for (int y = 0; y < p.ho; ++y) {
      const int y0 = y * p.sh - p.ph;
      const int ya = y0 > 0 ? y0 : 0, yb = y0 + p.kh < p.hi ? y0 + p.kh : p.hi;
      float* d = dst + y * p.out_wp;
      for (int x = 0; x < p.wo; x += T::W) {
        typename T::V acc = T::zero();
        for (int yy = ya; yy < yb; ++yy) {
          const float* row = src + static_cast<int64_t>(yy) * p.in_wp + x - p.pw;
          for (int kx = 0; kx < p.kw; ++kx) acc = T::add(acc, T::load(row + kx));
        }
        T::storeu(sums, acc);
        const int n = p.wo - x < T::W ? p.wo - x : T::W;
        for (int i = 0; i < n; ++i) {
          const int x0 = x + i - p.pw;
          const int xa = x0 > 0 ? x0 : 0, xb = x0 + p.kw < p.wi ? x0 + p.kw : p.wi;
          const int div = pool_divisor(p, y0, yb - ya, x0, xb - xa);
          d[x + i] = sums[i] / static_cast<float>(div);
        }
      }
    }
  }
}

// Any geometry, one output pixel at a time (max: NaN wins, as in PyTorch).
template <class T>
static void pool_scalar(const PoolCall& p) {
  for (int c = 0; c < p.n; ++c) {
    const float* src = p.in + c * p.in_cstride;
    float* dst = p.out + c * p.out_cstride;
    for (int y = 0; y < p.ho; ++y)
      for (int x = 0; x < p.wo; ++x) {
        const int y0 = y * p.sh - p.ph, x0 = x * p.sw - p.pw;
        const int ya = y0 > 0 ? y0 : 0, yb = y0 + p.kh < p.hi ? y0 + p.kh : p.hi;
        const int xa = x0 > 0 ? x0 : 0, xb = x0 + p.kw < p.wi ? x0 + p.kw : p.wi;
        float r;
        if (p.max) {
          r = -__builtin_inff();
          for (int yy = ya; yy < yb; ++yy)
            for (int xx = xa; xx < xb; ++xx) {
              const float v = src[yy * p.in_wp + xx];
              r = (v > r || v != v) ? v : r;
            }
        } else {
          float s = 0.f;
          for (int yy = ya; yy < yb; ++yy)
            for (int xx = xa; xx < xb; ++xx) s += src[yy * p.in_wp + xx];
          const int div = pool_divisor(p, y0, yb - ya, x0, xb - xa);
          r = s / static_cast<float>(div);
        }
        dst[y * p.out_wp + x] = r;
      }
  }
}

template <class T>
static void pool(const PoolCall& p) {
  const bool inside = p.ph <= p.border && p.pw <= p.border && (p.ho - 1) * p.sh - p.ph + p.kh <= p.hi + p.border &&
                      (p.wo - 1) * p.sw - p.pw + p.kw <= p.wi + p.border;
  if (inside && p.max && p.nonneg && pool_max_nonneg<T>(p)) return;
  if (inside && !p.max && p.sw == 1) return pool_avg_s1<T>(p);
  pool_scalar<T>(p);
}

// d = relu?(a + b) (see add_planes in conv.h): T::W pixels per vector, masked row tails; a null
// side reads as 0 (a + 0, as the scalar form). ReLU as max(v, 0): 0 for NaN and for -0, like v > 0 ? v : 0.
template <class T>
static void add_planes(const float* a, int64_t a_wp, const float* b, int64_t b_wp, float* d, int64_t d_wp, int h,
                       int w, bool relu) {
  using V = typename T::V;
  const V z = T::zero();
  for (int y = 0; y < h; ++y) {
    const float* ra = a ? a + y * a_wp : nullptr;
    const float* rb = b ? b + y * b_wp : nullptr;
    float* rd = d + y * d_wp;
    for (int x = 0; x < w; x += T::W) {
      const int n = w - x < T::W ? w - x : T::W;
      const uint32_t m = n == T::W ? T::kFull : static_cast<uint32_t>((1ull << n) - 1ull);
      V v = T::add(ra ? T::load_m(ra + x, m) : z, rb ? T::load_m(rb + x, m) : z);
      if (relu) v = T::max(v, z);
      if (n == T::W) T::storeu(rd + x, v);
      else T::store_m(rd + x, v, m);
    }
  }
}

// d = relu?(s * scale + shift) (see affine_plane in conv.h): the product rounded before the add, as
// the scalar form computes it; a null s gives the constant relu?(shift). ReLU as in add_planes.
template <class T>
static void affine_plane(const float* s, int64_t s_wp, float scale, float shift, float* d, int64_t d_wp, int h,
                         int w, bool relu) {
  using V = typename T::V;
  const V z = T::zero(), vs = T::set1(scale), vb = T::set1(shift);
  V c = vb;
  if (relu) c = T::max(c, z);
  for (int y = 0; y < h; ++y) {
    const float* rs = s ? s + y * s_wp : nullptr;
    float* rd = d + y * d_wp;
    for (int x = 0; x < w; x += T::W) {
      const int n = w - x < T::W ? w - x : T::W;
      const uint32_t m = n == T::W ? T::kFull : static_cast<uint32_t>((1ull << n) - 1ull);
      V v = c;
      if (rs) {
        v = T::add(T::mul_rounded(T::load_m(rs + x, m), vs), vb);
        if (relu) v = T::max(v, z);
      }
      if (n == T::W) T::storeu(rd + x, v);
      else T::store_m(rd + x, v, m);
    }
  }
}

// dst (h x w) = src[2y][2x] (see subsample2 in conv.h): deinterleaving loads, scalar row tails.
template <class T>
static bool subsample2(const float* src, int64_t src_wp, float* dst, int64_t dst_wp, int h, int w) {
  if constexpr (!T::kEvenLanes) {
    return false;
  } else {
    for (int y = 0; y < h; ++y) {
      const float* s = src + 2 * y * src_wp;
      float* d = dst + y * dst_wp;
      int x = 0;
      for (; x + T::W <= w; x += T::W) T::storeu(d + x, T::even_lanes(s + 2 * x));
      for (; x < w; ++x) d[x] = s[2 * x];
    }
    return true;
  }
}

// dst (h x w, row stride dst_wp) = relu?(src (row stride src_wp)); returns the sum of what was
// stored (the per-channel sum the next gate's GAP needs).
template <class T>
static float plane_copy(const float* src, int64_t src_wp, float* dst, int64_t dst_wp, int h, int w, bool relu) {
  typename T::V s = T::zero();
  const int full = w / T::W * T::W;
  const uint32_t tail = static_cast<uint32_t>((1ull << (w - full)) - 1ull);
  for (int y = 0; y < h; ++y) {
    const float* a = src + y * src_wp;
    float* d = dst + y * dst_wp;
    for (int x = 0; x < full; x += T::W) {
      typename T::V v = T::load(a + x);
      if (relu) v = T::max(v, T::zero());
      T::storeu(d + x, v);
      s = T::add(s, v);
    }
    if (tail) {
      typename T::V v = T::load_m(a + full, tail);
      if (relu) v = T::max(v, T::zero());
      T::store_m(d + full, v, tail);
      s = T::add(s, v);
    }
  }
  return T::hsum(s);
}

// acc[0:n_out] += wt[ks[j]][0:n_out] · xs[j] for j = 0, 1, ..., n - 1 in that order, each product
// rounded before its add: per output the scalar dot product's order and rounding, so a Linear
// layer gives the same bits as `a += w * x` one output at a time, vectorised across outputs (its
// weight transposed, in_features x n_out) with four independent accumulator vectors.
// Large layers (a VGG classifier's 25088 x 4096 weights, 411 MB) stream their weights: inputs
// outer, each weight row read front to back, the sums of up to kLinearChunk outputs (32 KB) kept
// in cache, instead of 4 vectors of outputs at a time down every row (a 16 KB stride: a cold line
// and a new page per row). Whole rows in one pass read the weights as one sequential stream: on
// VGG-11's 25088 x 4096 layer, 26-33 ms against 54 ms (chunks of 2048 outputs: 51-64 ms), AMD EPYC
// Zen 4, one thread. Same order of operations per output, so the same bits.
constexpr int kLinearChunk = 8192;
constexpr int64_t kLinearStreamWeights = int64_t{1} << 20;  // floats (4 MB): stream from here up

// Mask of the first r lanes (r <= T::W), and four vectors stored at p, p + W, p + 2W, p + 3W.
template <class T>
static inline uint32_t first_lanes(int r) {
  return r >= T::W ? T::kFull : static_cast<uint32_t>((1ull << r) - 1ull);
}
template <class T>
static inline void store4(float* p, typename T::V a0, typename T::V a1, typename T::V a2, typename T::V a3) {
  T::storeu(p, a0);
  T::storeu(p + T::W, a1);
  T::storeu(p + 2 * T::W, a2);
  T::storeu(p + 3 * T::W, a3);
}

template <class T>
static void linear_acc_stream(const float* wt, int n_out, const float* xs, const int32_t* ks, int n, float* acc) {
  using V = typename T::V;
  for (int o0 = 0; o0 < n_out; o0 += kLinearChunk) {
    const int o1 = n_out - o0 < kLinearChunk ? n_out : o0 + kLinearChunk;
    for (int j = 0; j < n; ++j) {
      const float* w = wt + static_cast<int64_t>(ks[j]) * n_out;
      const V x = T::set1(xs[j]);
      int o = o0;
      for (; o + 4 * T::W <= o1; o += 4 * T::W) {
        const V a0 = T::add(T::load(acc + o), T::mul_rounded(T::load(w + o), x));
        const V a1 = T::add(T::load(acc + o + T::W), T::mul_rounded(T::load(w + o + T::W), x));
        const V a2 = T::add(T::load(acc + o + 2 * T::W), T::mul_rounded(T::load(w + o + 2 * T::W), x));
        const V a3 = T::add(T::load(acc + o + 3 * T::W), T::mul_rounded(T::load(w + o + 3 * T::W), x));
        store4<T>(acc + o, a0, a1, a2, a3);
      }
      for (; o < o1; o += T::W) {
        const uint32_t m = first_lanes<T>(o1 - o);
        T::store_m(acc + o, T::add(T::load_m(acc + o, m), T::mul_rounded(T::load_m(w + o, m), x)), m);
      }
    }
  }
}

template <class T>
static void linear_acc(const float* wt, int n_out, const float* xs, const int32_t* ks, int n, float* acc) {
  using V = typename T::V;
  if (static_cast<int64_t>(n) * n_out >= kLinearStreamWeights) return linear_acc_stream<T>(wt, n_out, xs, ks, n, acc);
  int o = 0;
  for (; o + 4 * T::W <= n_out; o += 4 * T::W) {
    V a0 = T::load(acc + o), a1 = T::load(acc + o + T::W), a2 = T::load(acc + o + 2 * T::W),
      a3 = T::load(acc + o + 3 * T::W);
    for (int j = 0; j < n; ++j) {
      const float* w = wt + static_cast<int64_t>(ks[j]) * n_out + o;
      const V x = T::set1(xs[j]);
      a0 = T::add(a0, T::mul_rounded(T::load(w), x));
      a1 = T::add(a1, T::mul_rounded(T::load(w + T::W), x));
      a2 = T::add(a2, T::mul_rounded(T::load(w + 2 * T::W), x));
      a3 = T::add(a3, T::mul_rounded(T::load(w + 3 * T::W), x));
    }
    store4<T>(acc + o, a0, a1, a2, a3);
  }
  for (; o < n_out; o += T::W) {
    const uint32_t m = first_lanes<T>(n_out - o);
    V a = T::load_m(acc + o, m);
    for (int j = 0; j < n; ++j)
      a = T::add(a, T::mul_rounded(T::load_m(wt + static_cast<int64_t>(ks[j]) * n_out + o, m), T::set1(xs[j])));
    T::store_m(acc + o, a, m);
  }
}

// y[0:rows] = relu?(b + Σ_k x[k] · wt[k][0:rows]) over k in idx[0:nk] (all k < nk when idx is
// null): the gates' two small FC layers with their weights stored transposed, so each input is
// one vector axpy and channels a previous layer dropped are skipped.
template <class T>
static void gemv(const float* wt, const float* x, const int32_t* idx, int nk, const float* b, float* y, int rows,
                 bool relu) {
  // Blocks of kBlock vectors of rows: per input k one broadcast and kBlock contiguous weight loads
  // into independent accumulators (one accumulator per 16 rows made every FMA wait for the last
  // and read one cache line per k, a stride of `rows` floats apart: ResNeXt-50's gates ran at
  // about 1.5 GFLOP/s). Each row still sums its inputs in order, so the result is unchanged.
  constexpr int kBlock = 8;
  int r0 = 0;
  for (; r0 + kBlock * T::W <= rows; r0 += kBlock * T::W) {
    typename T::V acc[kBlock];
    for (int j = 0; j < kBlock; ++j) acc[j] = b ? T::load(b + r0 + j * T::W) : T::zero();
    for (int i = 0; i < nk; ++i) {
      const int k = idx ? idx[i] : i;
      const typename T::V xv = T::set1(x[k]);
      const float* w = wt + static_cast<int64_t>(k) * rows + r0;
      for (int j = 0; j < kBlock; ++j) acc[j] = T::fma(xv, T::load(w + j * T::W), acc[j]);
    }
    for (int j = 0; j < kBlock; ++j) {
      if (relu) acc[j] = T::max(acc[j], T::zero());
      T::storeu(y + r0 + j * T::W, acc[j]);
    }
  }
  for (; r0 < rows; r0 += T::W) {
    const int n = rows - r0 < T::W ? rows - r0 : T::W;
    const uint32_t m = n == T::W ? T::kFull : static_cast<uint32_t>((1ull << n) - 1ull);
    typename T::V acc = b ? T::load_m(b + r0, m) : T::zero();
    for (int i = 0; i < nk; ++i) {
      const int k = idx ? idx[i] : i;
      acc = T::fma(T::set1(x[k]), T::load_m(wt + static_cast<int64_t>(k) * rows + r0, m), acc);
    }
    if (relu) acc = T::max(acc, T::zero());
    T::store_m(y + r0, acc, m);
  }
}

}  // namespace DYNINFER_ISA_NS
}  // namespace dyninfer
