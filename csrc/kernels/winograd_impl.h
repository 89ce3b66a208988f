// Winograd F(2x2, 3x3) for 3x3 stride-1 pad-1 convs over compact (kept) channels, templated on
// the vector traits T of conv_impl.h (included after it, with T::even_lanes_n). See WinoCall in
// conv.h for the data layout; the three phases (input transform, one GEMM per transformed
// position xi, output transform + epilogue) each split over independent ranges.
//
// Vectors run over tiles (2x2 output pixels each): lane l of a vector is tile t = 16*v + l,
// tile t = ty*tw + tx. The GEMM of position xi is a 1x1 conv over "planes" of tiles: output
// channel k of M[xi] = sum over kept inputs c of U[xi][out_real[k]][in_real[c]] * V[xi][c], the
// register tile of conv_impl.h (M channels x NV vectors, broadcast weights).
#pragma once

namespace dyninfer {
namespace DYNINFER_ISA_NS {

// B^T d B of the 4x4 windows of tiles tx0 .. tx0+n-1 of tile row ty of the padded plane p: out[xi],
// lane l = tile tx0 + l.
template <class T>
static inline void wino_input_tiles(const WinoCall& c, const float* p, int ty, int tx0, int n,
                                    typename T::V out[16]) {
  using V = typename T::V;
  const int64_t col = c.in_b - 1 + 2 * tx0;
  V d[4][4];
  for (int i = 0; i < 4; ++i) {
    const int row = c.in_b - 1 + 2 * ty + i;
    if (row >= c.in_hp) {  // below the padded plane (odd heights): rows that only the dropped output row reads
      for (int j = 0; j < 4; ++j) d[i][j] = T::zero();
      continue;
    }
    const float* rp = p + row * c.in_wp + col;
    for (int j = 0; j < 4; ++j) d[i][j] = T::even_lanes_n(rp + j, 2 * n + 2 - j);
  }
  V t[4][4];
  for (int j = 0; j < 4; ++j) {
    t[0][j] = T::sub(d[0][j], d[2][j]);
    t[1][j] = T::add(d[1][j], d[2][j]);
    t[2][j] = T::sub(d[2][j], d[1][j]);
    t[3][j] = T::sub(d[1][j], d[3][j]);
  }
  for (int i = 0; i < 4; ++i) {
    out[4 * i + 0] = T::sub(t[i][0], t[i][2]);
    out[4 * i + 1] = T::add(t[i][1], t[i][2]);
    out[4 * i + 2] = T::sub(t[i][2], t[i][1]);
    out[4 * i + 3] = T::sub(t[i][1], t[i][3]);
  }
}

// Input transform of compact channels [c0, c1): V[xi][c][t] = (B^T d B)[xi] of tile t's 4x4 window.
template <class T>
static void wino_input(const WinoCall& c, int c0, int c1) {
  using V = typename T::V;
  constexpr int L = T::W;
  const int tw = (c.W + 1) / 2, th = (c.H + 1) / 2, nt = tw * th;
  const int64_t NT = wino_tiles(c.H, c.W, L);
  const int64_t vx = static_cast<int64_t>(c.n_in) * NT + kWinoPad;
  for (int ci = c0; ci < c1; ++ci) {
    const float* p = c.in + ci * c.cstride;
    float* vc = c.v + ci * NT;
    for (int ty = 0; ty < th; ++ty) {
      for (int tx0 = 0; tx0 < tw; tx0 += L) {
        const int n = tw - tx0 < L ? tw - tx0 : L;
        V out[16];
        wino_input_tiles<T>(c, p, ty, tx0, n, out);
        const uint32_t mask = n >= 32 ? 0xFFFFFFFFu : (1u << n) - 1u;
        float* dst = vc + ty * tw + tx0;
        for (int xi = 0; xi < 16; ++xi) T::store_m(dst + xi * vx, out[xi], mask);
      }
    }
    for (int xi = 0; xi < 16; ++xi)  // the last vector's lanes past the tiles: zeros, not stale scratch
      for (int64_t q = nt; q < NT; ++q) vc[xi * vx + q] = 0.f;
  }
}

template <class T, int M, int NV>
static void wino_gemm_tile(const WinoCall& c, const float* const* urow, const float* vx, int64_t NT, float* mk,
                           int64_t t0) {
  using V = typename T::V;
  V acc[M][NV];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < NV; ++j) acc[m][j] = T::zero();
  for (int ci = 0; ci < c.n_in; ++ci) {
    const float* vp = vx + ci * NT + t0;
    const int64_t col = c.in_real[ci];
    V a[NV];
    for (int j = 0; j < NV; ++j) a[j] = T::load(vp + j * T::W);
    for (int m = 0; m < M; ++m) {
      V b = T::bcast(urow[m] + col);
      T::pin(b);
      for (int j = 0; j < NV; ++j) acc[m][j] = T::fma(b, a[j], acc[m][j]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < NV; ++j) T::storeu(mk + m * NT + t0 + j * T::W, acc[m][j]);
}

template <class T, int M>
static void wino_gemm_m(const WinoCall& c, int m, const float* const* urow, const float* vx, int64_t NT, float* mk,
                        int64_t t0, int nv) {
  if (m == M) {
    if (nv == 3) wino_gemm_tile<T, M, 3>(c, urow, vx, NT, mk, t0);
    else if (nv == 2) wino_gemm_tile<T, M, 2>(c, urow, vx, NT, mk, t0);
    else wino_gemm_tile<T, M, 1>(c, urow, vx, NT, mk, t0);
  } else if constexpr (M > 1) {
    wino_gemm_m<T, M - 1>(c, m, urow, vx, NT, mk, t0, nv);
  }
}

// The GEMMs of positions [x0, x1): M[xi][k][t] for every computed channel k.
template <class T>
static void wino_gemm(const WinoCall& c, int x0, int x1) {
  constexpr int kM = 8, kNV = 3;  // 24 accumulators + 3 inputs + 1 broadcast (AVX-512's 32 registers)
  static_assert(kM * kNV + kNV + 1 <= T::kRegs, "Winograd GEMM tile exceeds the vector registers");
  const int64_t NT = wino_tiles(c.H, c.W, T::W);
  const int nvec = static_cast<int>(NT / T::W);
  const int64_t vxs = static_cast<int64_t>(c.n_in) * NT + kWinoPad;
  const int64_t mxs = static_cast<int64_t>(c.n_out) * NT + kWinoPad;
  const int ng = (c.n_out + kM - 1) / kM;
  const int gbase = c.n_out / ng, gextra = c.n_out % ng;
  const int nchunk = (nvec + kNV - 1) / kNV;
  const int vbase = nvec / nchunk, vextra = nvec % nchunk;
  for (int xi = x0; xi < x1; ++xi) {
    const float* vx = c.v + xi * vxs;
    float* mx = wino_m(c, T::W) + xi * mxs;
    const float* ux = c.u + static_cast<int64_t>(xi) * c.u_o * c.u_i;
    for (int g = 0, k0 = 0; g < ng; ++g) {
      const int mm = gbase + (g < gextra ? 1 : 0);
      const float* urow[kM];
      for (int q = 0; q < mm; ++q) urow[q] = ux + static_cast<int64_t>(c.out_real[k0 + q]) * c.u_i;
      for (int ch = 0, v0 = 0; ch < nchunk; ++ch) {
        const int nv = vbase + (ch < vextra ? 1 : 0);
        wino_gemm_m<T, kM>(c, mm, urow, vx, NT, mx + k0 * NT, static_cast<int64_t>(v0) * T::W, nv);
        v0 += nv;
      }
      k0 += mm;
    }
  }
}

// Output transform and epilogue of computed channels [k0, k1): Y = A^T M A per tile, then bias,
// (scale), residual, activation, (scale), masked stores of the real pixels, per-channel sums; the
// same operations in the same order as the direct kernels' epilogue.
template <class T>
static void wino_output(const WinoCall& c, int k0, int k1) {
  using V = typename T::V;
  constexpr int L = T::W;
  static_assert(L == 16, "Winograd output transform: 16-lane vectors (two per 32 interleaved pixels)");
  const int tw = (c.W + 1) / 2, th = (c.H + 1) / 2, nt = tw * th;
  const int64_t NT = wino_tiles(c.H, c.W, L);
  const int nvec = static_cast<int>(NT / L);
  const int64_t mxs = static_cast<int64_t>(c.n_out) * NT + kWinoPad;
  alignas(64) float buf[2 * L];
  for (int k = k0; k < k1; ++k) {
    const int o = c.out_real[k];
    float* op = c.out_plane[k] + static_cast<int64_t>(c.out_b) * c.out_wp + c.out_b;
    const float* rp = c.res_plane && c.res_plane[k] ? c.res_plane[k] + static_cast<int64_t>(c.res_b) * c.res_wp + c.res_b
                                                    : nullptr;
    const V bias = T::set1(c.bias ? c.bias[o] : 0.f);
    const V lo = T::set1(c.act == 2 ? c.act_lo : 0.f), hi = T::set1(c.act_hi);
    const bool scaled = c.scale != nullptr;
    const V sc = T::set1(scaled ? c.scale[o] : 1.f);
    V s = T::zero();
    const float* mk = wino_m(c, L) + k * NT;
    for (int v = 0; v < nvec; ++v) {
      V m[16];
      for (int x = 0; x < 16; ++x) m[x] = T::load(mk + x * mxs + v * L);
      V r[2][4];
      for (int j = 0; j < 4; ++j) {
        r[0][j] = T::add(T::add(m[j], m[4 + j]), m[8 + j]);
        r[1][j] = T::sub(T::sub(m[4 + j], m[8 + j]), m[12 + j]);
      }
      for (int a = 0; a < 2; ++a) {
        const V y0 = T::add(T::add(T::add(r[a][0], r[a][1]), r[a][2]), bias);
        const V y1 = T::add(T::sub(T::sub(r[a][1], r[a][2]), r[a][3]), bias);
        T::interleave(y0, y1, buf);  // buf[2l] = y0[l], buf[2l + 1] = y1[l]
        // runs of consecutive tiles within one tile row
        for (int l = 0, t = v * L; l < L && t < nt;) {
          const int ty = t / tw, tx = t % tw;
          int n = L - l;
          if (tw - tx < n) n = tw - tx;
          if (nt - t < n) n = nt - t;
          const int y = 2 * ty + a;
          if (y < c.H) {
            const int x0 = 2 * tx;
            const int npx = 2 * n < c.W - x0 ? 2 * n : c.W - x0;  // odd widths: the last tile's second column drops
            float* dst = op + y * c.out_wp + x0;
            const float* res = rp ? rp + y * c.res_wp + x0 : nullptr;
            for (int q = 0; q < npx; q += L) {
              const int cnt = npx - q < L ? npx - q : L;
              const uint32_t mask = cnt >= 32 ? 0xFFFFFFFFu : (1u << cnt) - 1u;
              V x = T::load_m(buf + 2 * l + q, mask);
              if (scaled && c.scale_first) x = T::mul_rounded(x, sc);
              if (res) x = T::add(x, T::load_m(res + q, mask));
              x = activate<T>(c.act, x, lo, hi);
              if (scaled && !c.scale_first) x = T::mul_rounded(x, sc);
              T::store_m(dst + q, x, mask);
              s = T::add(s, T::keep_m(x, mask));
            }
          }
          l += n;
          t += n;
        }
      }
    }
    if (c.sums) c.sums[o] += T::hsum(s);
  }
}

template <class T>
static bool winograd(const WinoCall& c, int phase, int begin, int end) {
  if (phase == 0) wino_input<T>(c, begin, end);
  else if (phase == 1) wino_gemm<T>(c, begin, end);
  else wino_output<T>(c, begin, end);
  return true;
}

}  // namespace DYNINFER_ISA_NS
}  // namespace dyninfer
