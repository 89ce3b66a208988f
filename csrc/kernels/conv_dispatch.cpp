// The one CPU-feature dispatch site for the conv kernels.
#include "conv.h"

namespace dyninfer {

// The kernel table of an ISA; falls back to portable where that ISA is not compiled in.
static const KernelTable& table(Isa isa) {
  static const KernelTable* const avx512 = kernels_avx512();
  static const KernelTable* const avx2 = kernels_avx2();
  if (isa == Isa::kAvx512 && avx512) return *avx512;  // zmm for 16-pixel vectors, ymm x32 for 8
  if (isa == Isa::kAvx2 && avx2) return *avx2;
  return *kernels_portable();
}

const IsaCaps& conv_caps(Isa isa) { return table(isa).caps; }

int conv_vector_width(Isa isa, int out_w) { return (conv_caps(isa).widest > 8 && out_w > 8) ? 16 : 8; }

int conv_max_group(Isa isa, int vw, bool pairs, int n_vec) {
  const IsaCaps& c = conv_caps(isa);
  if (pairs) return c.group_pairs;
  if (vw != 16) return c.group_8;
  if (c.whole_group_16 > 0 && n_vec > c.tile_vecs_16 && n_vec <= c.whole_vecs_16)
    return c.whole_group_16 < c.group_16 ? c.whole_group_16 : c.group_16;
  return c.group_16;
}

int conv_make_groups(int n, int max_group, int32_t* start, int32_t* size) {
  if (n <= 0) return 0;
  const int ng = (n + max_group - 1) / max_group;
  const int base = n / ng, extra = n % ng;
  int k = 0;
  for (int g = 0; g < ng; ++g) {
    start[g] = k;
    size[g] = base + (g < extra ? 1 : 0);
    k += size[g];
  }
  return ng;
}

void conv_run(Isa isa, const ConvCall& call) { table(isa).conv(call); }

void conv_im2col(Isa isa, const Im2colCall& a) { table(isa).im2col(a); }

float plane_copy(Isa isa, const float* src, int64_t src_wp, float* dst, int64_t dst_wp, int h, int w, bool relu) {
  return table(isa).plane_copy(src, src_wp, dst, dst_wp, h, w, relu);
}

void gemv(Isa isa, const float* w, const float* x, const int32_t* idx, int nk, const float* b, float* y, int rows,
          bool relu) {
  table(isa).gemv(w, x, idx, nk, b, y, rows, relu);
}

double fma_peak_probe(Isa isa, int64_t iters) { return table(isa).fma_peak(iters); }

void pool(Isa isa, const PoolCall& p) { table(isa).pool(p); }

void add_planes(Isa isa, const float* a, int64_t a_wp, const float* b, int64_t b_wp, float* d, int64_t d_wp, int h,
                int w, bool relu) {
  table(isa).add_planes(a, a_wp, b, b_wp, d, d_wp, h, w, relu);
}

bool subsample2(Isa isa, const float* src, int64_t src_wp, float* dst, int64_t dst_wp, int h, int w) {
  return table(isa).subsample2(src, src_wp, dst, dst_wp, h, w);
}

void affine_plane(Isa isa, const float* s, int64_t s_wp, float scale, float shift, float* d, int64_t d_wp, int h,
                  int w, bool relu) {
  table(isa).affine_plane(s, s_wp, scale, shift, d, d_wp, h, w, relu);
}

void linear_acc(Isa isa, const float* wt, int n_out, const float* xs, const int32_t* ks, int n, float* acc) {
  table(isa).linear_acc(wt, n_out, xs, ks, n, acc);
}

int conv_winograd_lanes(Isa isa) { return table(isa).winograd ? table(isa).winograd_lanes : 0; }

void conv_winograd(Isa isa, const WinoCall& c, int phase, int begin, int end) {
  if (!table(isa).winograd) __builtin_trap();  // callers check conv_winograd_lanes first
  table(isa).winograd(c, phase, begin, end);
}

void wino_weights(const float* w, int O, int I, float* u) {
  // G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
  static const float G[4][3] = {{1.f, 0.f, 0.f}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0.f, 0.f, 1.f}};
  const int64_t plane = static_cast<int64_t>(O) * I;
  for (int o = 0; o < O; ++o)
    for (int i = 0; i < I; ++i) {
      const float* g = w + (static_cast<int64_t>(o) * I + i) * 9;
      float t[4][3];
      for (int r = 0; r < 4; ++r)
        for (int j = 0; j < 3; ++j) t[r][j] = G[r][0] * g[j] + G[r][1] * g[3 + j] + G[r][2] * g[6 + j];
      for (int r = 0; r < 4; ++r)
        for (int j = 0; j < 4; ++j)
          u[(r * 4 + j) * plane + static_cast<int64_t>(o) * I + i] = t[r][0] * G[j][0] + t[r][1] * G[j][1] + t[r][2] * G[j][2];
    }
}

double fma_peak_probe_width(int width, int64_t iters) {
  const Isa isa = detect_isa();
  if (width == 16) return isa == Isa::kAvx512 ? table(Isa::kAvx512).fma_peak(iters) : 0.0;
  if (width == 8) return table(isa == Isa::kPortable ? Isa::kPortable : Isa::kAvx2).fma_peak(iters);
  return 0.0;
}

}  // namespace dyninfer
