// Interface of the hand-allocated AVX2 micro-kernels (conv_avx2_asm.cpp).
#pragma once

#include <cstdint>

namespace dyninfer {
namespace avx2 {

// Arguments of one 3x3 stride-1 register tile: M <= 3 output channels x 4 vectors of 8 pixels.
// Input vector j of compact channel c starts at byte (const char*)in + c*cstride + off[j]; row
// ky of a tap adds ky*rs bytes. Weight row m is w[m] (one output channel, BN folded, [I][3][3]);
// compact channel c reads its 9 taps at w[m] + 9*in_real[c]. acc receives the 4*M sums:
// acc[(4m + j)*8 + lane].
struct AsmArgs {
  const float* in;
  int64_t off[4];
  int64_t rs;
  int64_t cstride;
  const int32_t* in_real;
  const int32_t* in_real_end;  // > in_real: at least one input channel
  const float* w[3];
  float* acc;
};

}  // namespace avx2
}  // namespace dyninfer

extern "C" {
void dyninfer_avx2_c3x3_m1x4(const dyninfer::avx2::AsmArgs*);
void dyninfer_avx2_c3x3_m2x4(const dyninfer::avx2::AsmArgs*);
void dyninfer_avx2_c3x3_m3x4(const dyninfer::avx2::AsmArgs*);
// 3x3 convs through the column buffer (strided): 9 tap planes of rs bytes per channel; cstride
// holds 3*rs (one row group of taps), the channel step is 9*rs.
void dyninfer_avx2_col9_m1x4(const dyninfer::avx2::AsmArgs*);
void dyninfer_avx2_col9_m2x4(const dyninfer::avx2::AsmArgs*);
void dyninfer_avx2_col9_m3x4(const dyninfer::avx2::AsmArgs*);
}
