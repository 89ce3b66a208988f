// The one CPU-feature dispatch site for the conv kernels.
#include "conv.h"

namespace dyninfer {

double fma_peak_avx2(int64_t iters);
double fma_peak_avx512(int64_t iters);
double fma_peak_portable(int64_t iters);

int conv_vector_width(Isa isa, int out_w) { return (isa == Isa::kAvx512 && out_w > 8) ? 16 : 8; }

int conv_max_group(Isa isa, int vw) {
  if (isa != Isa::kAvx512) return 3;
  return vw == 16 ? 8 : 6;
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

void conv_run(Isa isa, const ConvCall& call) {
  if (isa == Isa::kAvx512) {
    conv_run_avx512(call);  // zmm for 16-pixel vectors, ymm with 32 registers for 8
    return;
  }
  switch (isa) {
    case Isa::kAvx2: conv_run_avx2(call); return;
    default: conv_run_portable(call); return;
  }
}

void conv_im2col(Isa isa, const Im2colCall& a) {
  switch (isa) {
    case Isa::kAvx512: conv_im2col_avx512(a); return;
    case Isa::kAvx2: conv_im2col_avx2(a); return;
    default: conv_im2col_portable(a); return;
  }
}

float plane_copy_portable(const float* src, int64_t sw, float* dst, int64_t dw, int h, int w, bool relu);
float plane_copy_avx2(const float* src, int64_t sw, float* dst, int64_t dw, int h, int w, bool relu);
float plane_copy_avx512(const float* src, int64_t sw, float* dst, int64_t dw, int h, int w, bool relu);
void gemv_portable(const float* w, const float* x, const int32_t* idx, int nk, const float* b, float* y, int rows, bool relu);
void gemv_avx2(const float* w, const float* x, const int32_t* idx, int nk, const float* b, float* y, int rows, bool relu);
void gemv_avx512(const float* w, const float* x, const int32_t* idx, int nk, const float* b, float* y, int rows, bool relu);

float plane_copy(Isa isa, const float* src, int64_t src_wp, float* dst, int64_t dst_wp, int h, int w, bool relu) {
  switch (isa) {
    case Isa::kAvx512: return plane_copy_avx512(src, src_wp, dst, dst_wp, h, w, relu);
    case Isa::kAvx2: return plane_copy_avx2(src, src_wp, dst, dst_wp, h, w, relu);
    default: return plane_copy_portable(src, src_wp, dst, dst_wp, h, w, relu);
  }
}

void gemv(Isa isa, const float* w, const float* x, const int32_t* idx, int nk, const float* b, float* y, int rows,
          bool relu) {
  switch (isa) {
    case Isa::kAvx512: gemv_avx512(w, x, idx, nk, b, y, rows, relu); return;
    case Isa::kAvx2: gemv_avx2(w, x, idx, nk, b, y, rows, relu); return;
    default: gemv_portable(w, x, idx, nk, b, y, rows, relu); return;
  }
}

double fma_peak_probe(Isa isa, int64_t iters) {
  switch (isa) {
    case Isa::kAvx512: return fma_peak_avx512(iters);
    case Isa::kAvx2: return fma_peak_avx2(iters);
    default: return fma_peak_portable(iters);
  }
}

double fma_peak_probe_width(int width, int64_t iters) {
  const Isa isa = detect_isa();
  if (width == 16) return isa == Isa::kAvx512 ? fma_peak_avx512(iters) : 0.0;
  if (width == 8) return isa == Isa::kPortable ? fma_peak_portable(iters) : fma_peak_avx2(iters);
  return 0.0;
}

}  // namespace dyninfer
