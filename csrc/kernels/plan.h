// Torch-free execution plan of a compiled gated network.
//
// The plan is a list of buffers (activations) and ops, built once from integer descriptors and
// weight arrays (BN already folded). Each sample keeps, per buffer, the list of *active* real
// channels and their planes in that order (compact), so a conv reads only the channels the
// previous layer produced and writes only the channels its gate kept: cost ∝ kept_out × kept_in.
// Planes carry a zero border of B pixels (the largest padding a stride-1 consumer conv needs), so
// the inner loops have no border code. Buffers share memory slots by liveness, and only buffers of
// identical (H, W, B) share a slot, which keeps every border zero forever.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"

namespace dyninfer {

// Thrown for malformed plans; the ATen adapter turns it into a Python error.
struct PlanError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum OpKind : int {
  kConv = 1,
  kGate = 2,
  kMaxPool = 3,
  kAvgPool = 4,
  kLinear = 5,
  kConcat = 6,
  kAdd = 7,
  kAffine = 8,
  kShortcut = 9,
  kSe = 10,
};

// Number of int64 fields after (kind, count) for each kind; -1: variable.
int op_field_count(int kind);

struct WeightRef {
  const float* data = nullptr;
  int64_t numel = 0;
};

struct Buffer {
  int C = 0, H = 0, W = 0, B = 0;
  int Hp = 0, Wp = 0;
  int64_t plane = 0;  // floats between consecutive channel planes
  int slot = -1;
  bool nonneg = false;  // values known >= 0 (ReLU outputs and what pools/shortcuts make of them)
};

struct ConvOp {
  int in, out, res;
  int O, I, kh, kw, sh, sw, ph, pw, dh, dw;
  int act = 0;                        // 0 none, 1 ReLU, 2 clamp to [act_lo, act_hi], 3 hardswish, 4 SiLU
  float act_lo = 0.f, act_hi = 0.f;
  int gate;
  int groups = 1;                     // I / groups inputs per output channel, as in PyTorch
  bool follow = false;                // depthwise: compute output c only where input c is live
  bool direct;   // stride-1 path reading the padded input in place; else im2col
  bool inplace;  // output written into the residual's memory (the residual dies here)
  bool stride2 = false;  // direct stride-2 path (vectors of every other input pixel)
  const float* w;
  const float* bias;
  // Output vectors: offsets into the input (direct) or column buffer (im2col), output plane,
  // residual plane; bit mask of the real pixels among each vector's lanes.
  std::vector<int64_t> in_off, out_off, res_off;
  std::vector<uint32_t> lanes;
  bool flat = false;     // vectors run over the padded plane across rows (see build_conv_vectors)
  bool pairs = false;    // 16-lane vectors of two 8-pixel rows (see build_conv_vectors)
  int vw = 8;            // pixels per output vector (see conv_vector_width)
  int64_t col_rows = 0;  // im2col: padded output row width (multiple of the vector width)
  int max_group = 1;     // tallest channel group of its tiles (conv_max_group, fixed by the layout)
  // Winograd F(2x2, 3x3) weights U[16][O][I] (wino_weights) where the conv can run that way (3x3,
  // stride 1, padding 1, ungrouped, an ISA with the kernels, wino_pays with every channel live);
  // empty otherwise. Each call takes it when wino_pays for its live inputs and kept outputs.
  std::vector<float> wino_u;
  // bf16 precision (Plan::set_precision): weights packed in channel pairs (bf16_pack_weights),
  // ceil(I / 2) pairs per output channel; empty where the conv runs in fp32.
  std::vector<uint32_t> bf16_w;
  // ... and, for a Winograd conv, its transformed weights U packed likewise ([16][O][ceil(I/2)]):
  // the 16 GEMMs run in bf16 where Winograd pays, the direct bf16 kernels elsewhere.
  std::vector<uint32_t> wino_u16;
  std::string name;
};

struct GateOp {
  int in, gate, C, hidden, N, force_k;
  bool boost;  // the gated conv scales kept channel n by 2 sigmoid(logit n)
  const float *w1, *b1, *w2, *b2;  // w1: fc1 weight transposed (C x hidden); w2: fc2's (hidden x N)
};

struct PoolOp {
  int in, out, kh, kw, sh, sw, ph, pw;
  bool max;
  bool count_include_pad;
  int divisor;
};

struct LinearOp {
  int in, out, in_features, out_features;
  int act;  // 0 none, 1 ReLU, 3 hardswish
  const float *wt, *b;  // wt: the weight transposed, in_features x out_features
};

struct ConcatOp {
  int out;
  std::vector<int> ins;
  std::vector<int> offsets;
};

struct AddOp {
  int a, b, out;
  bool relu;
};

struct AffineOp {
  int in, out;
  bool relu;
  const float *scale, *shift;
};

struct ShortcutOp {
  int in, out, stride, pad;
};

struct SeOp {
  int in, out, C, hidden;
  int act1;      // 0 none, 1 ReLU, 2 SiLU
  int gate_act;  // 0 hardsigmoid, 1 sigmoid
  const float *w1, *b1, *w2, *b2;  // transposed: w1 C x hidden, w2 hidden x C
};

struct Op {
  int kind;
  int index;  // into the vector of its kind
};

using ParallelFor = std::function<void(int64_t begin, int64_t end, int64_t grain,
                                       const std::function<void(int64_t, int64_t)>& fn)>;

struct Workspace;

// False when any of x[0:n] is NaN or ±Inf. Non-finite inputs would propagate silently through the
// sparse kernels, so every entry point (the torch adapter, the C runtime) refuses them with this.
bool all_finite(const float* x, int64_t n);

class Plan {
 public:
  // meta and ops as plan_schema.h lays them out; weights referenced by index into `weights`.
  Plan(const std::vector<int64_t>& meta, const std::vector<int64_t>& ops, std::vector<WeightRef> weights,
       std::vector<std::string> names, Isa isa);
  ~Plan();

  // x: (batch, C, H, W) contiguous; logits: (batch, out C*H*W); path: (batch, path_len) or null.
  // open_gates: every gate keeps every channel (dense mode).
  void run(const float* x, int64_t batch, float* logits, float* path, bool open_gates,
           const ParallelFor& pfor) const;

  int64_t input_numel() const;
  int64_t output_numel() const;
  int64_t path_len() const { return path_len_; }
  const Buffer& input_buffer() const { return buffers_[input_]; }
  const Buffer& output_buffer() const { return buffers_[output_]; }
  Isa isa() const { return isa_; }
  int n_convs() const { return static_cast<int>(convs_.size()); }
  // "fp32" or "bf16": with bf16, every ungrouped conv runs the bf16 kernels (conv.h: its input, or
  // for strided convs its column buffer, rounded to bf16 channel pairs, its weights packed once
  // here, fp32 sums and epilogue; a Winograd conv's transformed weights packed likewise); gates,
  // grouped and depthwise convs, pooling and linear layers stay fp32. Throws PlanError on a CPU
  // where supports() is false or for an unknown name. Call before the first run.
  void set_precision(const std::string& precision);
  // Whether this plan can run at `precision` on this CPU: "fp32" always; "bf16" with the AVX-512
  // kernels on a CPU with AVX512_BF16. The one place that condition is written.
  bool supports(const std::string& precision) const;
  const std::string& precision() const { return precision_; }
  // Convs that run in bf16 under the current precision.
  int bf16_convs() const;
  int conv_vw(int i) const { return convs_[i].vw; }
  const std::string& conv_name(int i) const { return convs_[i].name; }
  // Wall time per op (nanoseconds, summed over calls) while profiling is on; op_names() labels
  // them "conv:<module path>", "gate:<index>", "maxpool", ... in execution order.
  void set_profiling(bool on) const;
  std::vector<double> op_times_ns() const;
  const std::vector<std::string>& op_names() const { return op_names_; }

 private:
  friend struct Executor;
  std::vector<Buffer> buffers_;
  std::vector<int64_t> slot_floats_;
  int input_ = -1, output_ = -1;
  std::vector<int> gate_sizes_;
  std::vector<char> gate_boost_;  // per gate: its conv scales kept channels by 2 sigmoid(logit)
  std::vector<int64_t> gate_path_off_;
  int64_t path_len_ = 0;
  std::vector<Op> ops_;
  std::vector<ConvOp> convs_;
  std::vector<GateOp> gates_;
  std::vector<PoolOp> pools_;
  std::vector<LinearOp> linears_;
  std::vector<ConcatOp> concats_;
  std::vector<AddOp> adds_;
  std::vector<AffineOp> affines_;
  std::vector<ShortcutOp> shortcuts_;
  std::vector<SeOp> ses_;
  std::vector<WeightRef> weights_;
  int64_t col_floats_ = 0;
  int64_t bf16_floats_ = 0;  // pair planes of the widest bf16 conv input
  std::string precision_ = "fp32";
  int max_channels_ = 0;
  int max_linear_in_ = 0, max_linear_out_ = 0;  // largest Linear (the workspace's feature vectors)
  int max_hidden_ = 0;  // largest gate hidden size (the workspace's hidden vector)
  Isa isa_;
  bool asm_ = true;  // asm_kernels_enabled() when the plan was built
  bool winograd_ = true;  // winograd_enabled() when the plan was built

  mutable std::mutex pool_mu_;
  mutable std::vector<std::unique_ptr<Workspace>> pool_;
  mutable bool profiling_ = false;
  mutable std::vector<double> op_ns_;
  std::vector<std::string> op_names_;

  std::unique_ptr<Workspace> acquire() const;
  void release(std::unique_ptr<Workspace> ws) const;
  void build_conv_vectors(ConvOp& c);
};

}  // namespace dyninfer
