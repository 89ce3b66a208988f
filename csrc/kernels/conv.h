// Torch-free sparse direct convolution: computes only the listed output channels from the
// listed (compact) input channels. Raw pointers and plain sizes only.
#pragma once

#include <cstdint>

#include "cpu_features.h"

namespace dyninfer {

// One call computes output channels of groups [g_begin, g_end) for every output vector.
//
// Input: n_in compact channel planes, plane c at `in + c * cstride`; tap (ky, kx) of an output
// vector whose first input element is at offset in_off[v] reads `in + c*cstride + in_off[v] +
// ky*rs + kx` (direct stride-1 path: rs = padded row width; im2col path: kh = taps, kw = 1,
// rs = tap plane size). in_real[c] is the weight column of compact channel c.
// Weights: w[o][I][kh*kw] (BN folded), row of output channel o at w + o * w_ostride.
// Output vector v (vw consecutive pixels of one row, or in "flat" mode vw consecutive pixels of
// the padded plane spanning rows; bit i of lanes[v] set when lane i is a real pixel) goes to
// out_plane[k] + out_off[v] for the k-th computed channel, plus res_plane[k] + res_off[v] when a
// residual plane is given, then bias, optional ReLU or clamp. sums[out_real[k]] += Σ stored values when
// sums != nullptr (the per-channel sums the next gate's GAP needs).
struct ConvCall {
  const float* in = nullptr;
  int64_t cstride = 0;
  int n_in = 0;
  const int32_t* in_real = nullptr;
  const float* w = nullptr;
  int64_t w_ostride = 0;
  int kh = 1, kw = 1;
  int64_t rs = 0;
  int n_vec = 0;
  const int64_t* in_off = nullptr;
  const int64_t* out_off = nullptr;
  const int64_t* res_off = nullptr;
  const uint32_t* lanes = nullptr;
  const int32_t* out_real = nullptr;  // real output channel of each computed channel
  float* const* out_plane = nullptr;
  const float* const* res_plane = nullptr;  // entries may be null (no residual for that channel)
  const float* bias = nullptr;              // indexed by real output channel
  int act = 0;  // epilogue activation: 0 none, 1 ReLU (max with 0), 2 clamp to [act_lo, act_hi], 3 hardswish, 4 SiLU
  float act_lo = 0.f, act_hi = 0.f;
  // Boosted gate: output channel o is scaled by scale[o] (indexed by real output channel) where the
  // gate sits in the unit: before the residual add when scale_first (the op has a residual; its
  // activation follows the add), else after the activation. nullptr: no scaling.
  const float* scale = nullptr;
  bool scale_first = false;
  float* sums = nullptr;  // indexed by real output channel; nullptr: not needed
  float* vsums = nullptr;  // scratch, 64-byte aligned, >= (computed channels) x 16 floats
  // Channel groups: group g covers computed channels [group_start[g], group_start[g]+group_size[g]).
  const int32_t* group_start = nullptr;
  const int32_t* group_size = nullptr;
  int g_begin = 0, g_end = 0;
  int vw = 8;  // pixels per output vector the offsets were built for (8: AVX2/portable, 16: AVX-512)
  bool stride2 = false;  // input vectors are every other pixel from the tap position (T::load_s2)
  bool use_asm = true;   // hand-allocated tiles where the ISA has them (T::asm3x3)
  // Row pairs (AVX-512, 8-pixel output rows): vector v reads input rows at in_off[v] and
  // in_off[v] + rs (stride 2: + 2 rs); its lanes 0-7 go to out_off[v] / res_off[v], lanes 8-15
  // (the next output row, masked off after an odd last row) one row stride further.
  bool pairs = false;
  int64_t out_wp = 0, res_wp = 0;  // row strides of the output and residual planes
  // Prefetch (into L2) the output and residual lines of the group's next pixel tile while this one
  // computes: set where the computed output planes outgrow the cache (kPrefetchOutputMinBytes), so
  // that each group's next tile, reached only after every other group's, would start with cold
  // lines in dozens of planes at once, more streams than the hardware prefetchers follow.
  bool prefetch_next = false;
};
// Measured on Zen 4 (interleaved A/B, one thread): ResNet-50 convs 0.92x the time, MobileNetV2
// 0.92x, ResNet-18 0.94x; the CIFAR ResNets stay below the threshold (no change).
constexpr int64_t kPrefetchOutputMinBytes = int64_t{512} << 10;

// What one ISA's conv kernels can do. Kernel selection (conv_caps, conv_vector_width,
// conv_max_group, and the plan's choice of layout per conv) reads nothing else, and each ISA's
// table fills it from its vector traits, so a tile height is declared once, beside the kernel.
struct IsaCaps {
  int widest = 8;               // pixels of the widest output vector (16: zmm)
  bool stride2_direct = false;  // direct stride-2 convs (deinterleaving loads); else im2col
  bool row_pairs = false;       // 16-lane vectors of two 8-pixel output rows (direct convs)
  bool flat = false;            // 16-lane vectors across the rows of the padded plane (stride 1)
  // register-tile heights (output channels per tile) of 8-pixel, 16-pixel and row-pair vectors
  int group_8 = 3, group_16 = 0, group_pairs = 0;
  // Small planes (16-pixel vectors): a plane of more than tile_vecs_16 vectors (the width of a
  // group_16-high tile) but at most whole_vecs_16 runs in groups of whole_group_16 channels, whose
  // tile spans it whole, so each weight is read once per conv rather than once per pixel tile
  // (ResNet-50's 7x7 layers stream megabytes of weights). 0: no such tile.
  int tile_vecs_16 = 0, whole_group_16 = 0, whole_vecs_16 = 0;
};
// Planes of at most this many output vectors run channel group by channel group, all pixel tiles
// of a group in turn (its weights read once), instead of pixel tile by pixel tile over every group;
// their inputs (a few vectors per input channel) stay in cache across the groups either way.
constexpr int kWeightsOuterMaxVecs = 8;
// The capabilities of the kernels that run for `isa` (the portable ones where that ISA's are not
// compiled in).
const IsaCaps& conv_caps(Isa isa);
// Pixels per output vector for a conv whose output rows are `out_w` wide: the widest vector
// when rows are wider than 8 pixels, else 8.
int conv_vector_width(Isa isa, int out_w);
// Largest output-channel group a kernel tile takes for vectors of vw pixels (or row pairs), for a
// plane of n_vec output vectors (0: any plane; see IsaCaps::whole_group_16).
int conv_max_group(Isa isa, int vw, bool pairs = false, int n_vec = 0);
// Split n computed channels into ceil(n / max_group) groups of near-equal size (so no lone
// channel runs at a fraction of the FMA throughput); returns the number of groups.
int conv_make_groups(int n, int max_group, int32_t* start, int32_t* size);

void conv_run(Isa isa, const ConvCall& call);

// Column buffer for strided / dilated convs: col[c][ky][kx][y][x'] with rows of col_rows floats
// (x' >= wo zero), read from n_in compact padded planes (border pixels of zeros around h x w).
struct Im2colCall {
  const float* in = nullptr;
  int64_t plane = 0;
  int border = 0, hi = 0, wi = 0;
  int64_t wp = 0;
  int n_in = 0, kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, ho = 0, wo = 0;
  int64_t col_rows = 0;
  float* col = nullptr;
};
void conv_im2col(Isa isa, const Im2colCall& a);

// Max or average pooling of n compact channel planes (PyTorch's semantics: max ignores padding,
// average divides by `divisor` when > 0, else by the window's size with or without the padding).
// in / out: interior of channel 0; planes cstride apart, rows wp apart; the input planes carry a
// zero border of `border` pixels. Where windows stay inside that border the kernels run vectors
// of output pixels: max pooling of values known >= 0 (a padded 0 never exceeds the window's max),
// stride 1 or 2; average pooling at stride 1 (padded zeros add nothing, each lane sums its window
// in the same order as the scalar loop, so results are identical); elsewhere a scalar loop.
struct PoolCall {
  const float* in = nullptr;
  int64_t in_cstride = 0, in_wp = 0;
  float* out = nullptr;
  int64_t out_cstride = 0, out_wp = 0;
  int n = 0, kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, ho = 0, wo = 0;
  int hi = 0, wi = 0, border = 0;  // input plane size and zero border
  bool max = true;
  bool nonneg = false;  // every input value is >= 0 (ReLU outputs)
  bool count_include_pad = true;
  int divisor = 0;
};
void pool(Isa isa, const PoolCall& p);

// Vectorised helpers of the runtime, dispatched like the kernels.
// dst = relu?(src) over an h x w plane (row strides src_wp / dst_wp); returns the sum stored.
float plane_copy(Isa isa, const float* src, int64_t src_wp, float* dst, int64_t dst_wp, int h, int w, bool relu);
// dst (h x w, row stride dst_wp) = every other pixel of every other row of src (row stride
// src_wp): the option-A shortcut's subsampling. Returns false where the ISA cannot deinterleave.
bool subsample2(Isa isa, const float* src, int64_t src_wp, float* dst, int64_t dst_wp, int h, int w);
// d = relu?(a + b) over an h x w plane (row strides a_wp, b_wp, d_wp); a or b may be null (0).
void add_planes(Isa isa, const float* a, int64_t a_wp, const float* b, int64_t b_wp, float* d, int64_t d_wp, int h,
                int w, bool relu);
// d = relu?(s * scale + shift) over an h x w plane (row strides s_wp, d_wp), the product rounded
// before the add (no FMA); s may be null: d = relu?(shift). A BN or ReLU that no conv absorbed.
void affine_plane(Isa isa, const float* s, int64_t s_wp, float scale, float shift, float* d, int64_t d_wp, int h,
                  int w, bool relu);
// y[0:rows] = relu?(b + Σ_k x[k] · wt[k][0:rows]) for k in idx[0:nk] (k < nk if idx is null);
// wt is the FC weight transposed (cols x rows); b may be null.
void gemv(Isa isa, const float* wt, const float* x, const int32_t* idx, int nk, const float* b, float* y, int rows,
          bool relu);

// acc[0:n_out] += Σ_j wt[ks[j]][0:n_out] · xs[j], j in order, each product rounded before its add
// (a Linear layer with its weight transposed, bit-identical to the scalar loop; see conv_impl.h).
void linear_acc(Isa isa, const float* wt, int n_out, const float* xs, const int32_t* ks, int n, float* acc);

// Winograd F(2x2, 3x3) for 3x3 stride-1 pad-1 dilation-1 ungrouped convs: per 2x2 output tile,
// 16 multiplies per (input, output) channel pair instead of 36. Three phases, each over independent
// ranges (so a caller may split them across threads, one phase after the other):
//   0: input transform of compact input channels [begin, end): V[xi][c][t] = (B^T d B)[xi] of the
//      4x4 input window of tile t (t = ty * ceil(W/2) + tx; lanes past the last tile are zero);
//   1: GEMMs of positions xi in [begin, end): M[xi][k][t] = sum_c U[xi][out_real[k]][in_real[c]] V[xi][c][t];
//   2: output transform of computed channels [begin, end): Y = A^T M A, then bias, residual,
//      activation and boost scale as in ConvCall's epilogue, the real pixels stored, sums added.
// Results differ from direct convolution by rounding only (the transforms add a few ulp; measured
// in tests/test_winograd.py).
constexpr int kWinoPad = 16;  // floats between the xi blocks of V and M (no 4 KiB aliasing among the 16)
struct WinoCall {
  const float* in = nullptr;  // padded plane (border in_b >= 1) of compact input channel 0
  int64_t cstride = 0, in_wp = 0;
  int in_hp = 0, in_b = 0;
  int H = 0, W = 0;  // output plane = input plane (stride 1, padding 1)
  int n_in = 0;
  const int32_t* in_real = nullptr;
  const float* u = nullptr;  // transformed weights U[16][u_o][u_i] (wino_weights)
  int u_o = 0, u_i = 0;
  int n_out = 0;
  const int32_t* out_real = nullptr;
  float* const* out_plane = nullptr;  // padded planes (border out_b) of the computed channels
  int64_t out_wp = 0;
  int out_b = 0;
  const float* const* res_plane = nullptr;  // entries may be null; border res_b
  int64_t res_wp = 0;
  int res_b = 0;
  const float* bias = nullptr;  // indexed by real output channel
  int act = 0;
  float act_lo = 0.f, act_hi = 0.f;
  const float* scale = nullptr;
  bool scale_first = false;
  float* sums = nullptr;  // indexed by real output channel; nullptr: not needed
  float* v = nullptr;     // scratch, 64-byte aligned: V, then M (wino_m); wino_scratch_floats(...) in all
};
// Tiles of an H x W output, rounded up to whole vectors of `lanes`.
inline int64_t wino_tiles(int H, int W, int lanes) {
  const int64_t nt = static_cast<int64_t>((H + 1) / 2) * ((W + 1) / 2);
  return (nt + lanes - 1) / lanes * lanes;
}
// M's place in the scratch: right after V.
inline float* wino_m(const WinoCall& c, int lanes) {
  return c.v + 16 * (static_cast<int64_t>(c.n_in) * wino_tiles(c.H, c.W, lanes) + kWinoPad);
}
// Floats of V followed by M for n_in inputs and n_out outputs.
inline int64_t wino_scratch_floats(int H, int W, int n_in, int n_out, int lanes) {
  const int64_t nt = wino_tiles(H, W, lanes);
  return 16 * (static_cast<int64_t>(n_in) * nt + kWinoPad) + 16 * (static_cast<int64_t>(n_out) * nt + kWinoPad);
}
// U[16][O][I] = G g G^T of every 3x3 kernel g = w[o][i] (w: [O][I][3][3]).
void wino_weights(const float* w, int O, int I, float* u);
// Lanes of the ISA's Winograd kernels (0: none for this ISA; direct convolution runs instead).
int conv_winograd_lanes(Isa isa);
void conv_winograd(Isa isa, const WinoCall& c, int phase, int begin, int end);

// bf16 direct convolution (conv_bf16.cpp; AVX512_BF16): the fp32 kernels' tiles and epilogue over
// channel *pairs*. call.in holds pair planes (bf16_pack_pairs: 32-bit lane = bf16 of channel 2r in
// the low half, 2r+1 in the high half; same geometry as the fp32 planes), call.in_real lists the
// pairs r, call.w the packed weights (bf16_pack_weights, w_ostride in 32-bit units); products
// accumulate in fp32. Only where bf16_kernels_supported().
bool bf16_kernels_supported();
void conv_run_bf16(const ConvCall& call);
// out + j * out_stride, n lanes = (bf16(channel ca[j]), bf16(channel cb[j])) of the fp32 planes at
// in + c * cstride; ca or cb < 0: that half 0. Rounded to nearest even.
void bf16_pack_pairs(const float* in, int64_t cstride, const int32_t* ca, const int32_t* cb, int n_pairs, int64_t n,
                     int64_t out_stride, float* out);
// out[o][r][t] = bf16(w[o][2r][t]) | bf16(w[o][2r+1][t]) << 16, r < ceil(I / 2) (w: [O][I][kk]).
void bf16_pack_weights(const float* w, int O, int I, int kk, uint32_t* out);
// The GEMM phase of Winograd F(2x2, 3x3) in bf16 (phase 1 of conv_winograd, positions [x0, x1)):
// c.v holds V as pair planes (bf16_pack_pairs of the fp32 input transform, c.n_in pairs, in_real
// their pair indices r), c.u the transformed weights packed in pairs (bf16_pack_weights of U with
// kk = 1; c.u_i = ceil(I / 2)); M is fp32, where wino_m(c) puts it, for conv_winograd's phase 2.
void conv_winograd_gemm_bf16(const WinoCall& c, int x0, int x1);
// The input transform in bf16, for live pairs [j0, j1): V[xi][j] = the pair plane (bf16 of
// B^T d B of compact channel ca[j], of cb[j]; -1: zeros) written to c.v with c.n_in pairs; c.in,
// c.cstride the fp32 compact input planes as for conv_winograd's phase 0.
void conv_winograd_input_bf16(const WinoCall& c, const int32_t* ca, const int32_t* cb, int j0, int j1);

// The entry points one ISA's translation unit provides (conv_<isa>.cpp, all from conv_impl.h).
struct KernelTable {
  void (*conv)(const ConvCall&);
  void (*im2col)(const Im2colCall&);
  float (*plane_copy)(const float*, int64_t, float*, int64_t, int, int, bool);
  void (*gemv)(const float*, const float*, const int32_t*, int, const float*, float*, int, bool);
  double (*fma_peak)(int64_t);  // FLOPs executed by the peak probe
  void (*pool)(const PoolCall&);
  void (*add_planes)(const float*, int64_t, const float*, int64_t, float*, int64_t, int, int, bool);
  bool (*subsample2)(const float*, int64_t, float*, int64_t, int, int);
  void (*affine_plane)(const float*, int64_t, float, float, float*, int64_t, int, int, bool);
  void (*linear_acc)(const float*, int, const float*, const int32_t*, int, float*);
  IsaCaps caps;
  bool (*winograd)(const WinoCall&, int, int, int) = nullptr;  // nullptr: no Winograd kernels for the ISA
  int winograd_lanes = 0;
};
// nullptr where the ISA's kernels are not compiled in (non-x86 builds).
const KernelTable* kernels_portable();
const KernelTable* kernels_avx2();
const KernelTable* kernels_avx512();

// Single-core FMA peak probe: runs `iters` iterations of `chains` independent FMA chains of the
// ISA's vector width; returns FLOPs executed (2 per lane per FMA).
double fma_peak_probe(Isa isa, int64_t iters);
// Peak probe at a given vector width (8: ymm, 16: zmm) on this CPU; 0 if unsupported.
double fma_peak_probe_width(int width, int64_t iters);

}  // namespace dyninfer
