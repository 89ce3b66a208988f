// Internals shared by the plan's two halves: plan_build.cpp (parse, validate, lay out) and
// plan_exec.cpp (workspaces and the interpreter). Not part of the plan's interface.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "plan.h"

namespace dyninfer {
namespace plan_detail {

constexpr int64_t kSlack = 128;  // floats after each slot: tail vectors may read a little past the last plane
// Winograd F(2x2, 3x3) (conv.h) runs a conv call when it pays. Its input transform costs per live
// input, its output transform per computed output, its GEMMs (2.25x fewer multiplies than direct
// convolution) per pair: transforms against GEMM go as 1/n_in + 1/n_out, so the rule bounds
// h = n_in·n_out / (n_in + n_out), by a bound that falls as the plane's 2x2 tiles grow (the GEMM's
// vectors run over tiles: few tiles waste lanes in the last vector and make short GEMM tiles).
// Planes of fewer than two tile vectors (7x7, 8x8: 16 tiles) never paid. Measured on AMD EPYC
// Zen 4, one thread, against the direct kernels (DYNINFER_WINOGRAD=0, runs alternated, medians):
// ResNet-18 at 224 dense, h = 32-128 on 56x56-14x14 planes (784-49 tiles), 1.2-1.6x per conv;
// at half its channels, h = 16 on 56x56 1.0-1.3x, h = 32 on 28x28 1.3x, but h = 64 on 14x14 0.92x;
// its 512 channels on 7x7 0.84-1.17x; ResNet-56's h = 16 on 16x16 (64 tiles) 0.85x, h = 32 on 8x8
// 0.5x.
constexpr int64_t kWinoMinTiles = 32;  // 2x2 tiles of the output plane (two 16-lane vectors)
inline int64_t wino_min_half_harmonic(int64_t tiles) { return tiles >= 512 ? 16 : tiles >= 128 ? 32 : 96; }
inline bool wino_pays(int n_in, int n_out, int h, int w) {
  const int64_t tiles = static_cast<int64_t>((h + 1) / 2) * ((w + 1) / 2);
  return tiles >= kWinoMinTiles && n_in > 0 && n_out > 0 &&
         static_cast<int64_t>(n_in) * n_out >= wino_min_half_harmonic(tiles) * (static_cast<int64_t>(n_in) + n_out);
}
constexpr int64_t kParallelMinMacs = 1 << 20;  // ~10 µs of one core: below it a conv runs on one thread

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using FloatArray = std::unique_ptr<float[], AlignedFree>;

// Buffers of a megabyte or more are 2 MiB aligned and asked for transparent huge pages: a conv
// reads its input channel planes, each on other 4 KiB pages, in the innermost loop, and with a
// few dozen planes of 56x56 those pages outnumber the data TLB's entries.
inline FloatArray alloc_zeroed(int64_t n) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t want = static_cast<size_t>(round_up(std::max<int64_t>(n, 16) * 4, 64));
  const bool huge = want >= (size_t{1} << 20);
  const size_t bytes = huge ? static_cast<size_t>(round_up(static_cast<int64_t>(want), kHuge)) : want;
  void* p = std::aligned_alloc(huge ? kHuge : 64, bytes);
  if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (huge) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KiB
#endif
  std::memset(p, 0, bytes);
  return FloatArray(static_cast<float*>(p));
}

// Bounds of plan fields: every size, index and geometry value is checked against them before it
// is narrowed to int, so no product below overflows and no allocation is absurd.
constexpr int64_t kMaxDim = 1 << 16;         // channels, height, width, hidden units, features
constexpr int64_t kMaxKernel = 64;           // kernel, stride, padding, dilation
constexpr int64_t kMaxBufferFloats = int64_t{1} << 28;  // 1 GiB per activation buffer

}  // namespace plan_detail

struct Workspace {
  std::vector<plan_detail::FloatArray> slots;
  std::vector<float*> buf_data;  // per buffer: its slot's base
  std::vector<std::vector<int32_t>> active;
  std::vector<std::vector<float>> sums;
  std::vector<char> sums_valid;
  std::vector<std::vector<int32_t>> kept;
  std::vector<std::vector<float>> scale;  // per boosted gate: 2 sigmoid(logit) of its kept channels
  plan_detail::FloatArray col_raw;
  plan_detail::FloatArray vsums_raw;
  plan_detail::FloatArray bf16_raw;  // pair planes of a bf16 conv's input (Plan::set_precision)
  int64_t bf16_floats = 0;
  std::vector<int32_t> pair_a, pair_b, pair_r;
  float* vsums = nullptr;
  float* col = nullptr;
  std::vector<int32_t> out_real, group_start, group_size, tmp, tmp2, in_local;
  std::vector<float*> out_plane;
  std::vector<const float*> res_plane;
  std::vector<float> gvec, hidden, glog;
  std::vector<float> lin_x, lin_acc;  // a Linear layer's live input features and its sums
  std::vector<int32_t> lin_k;         // ... and their feature indices
};

}  // namespace dyninfer
