#include "plan.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "conv.h"
#include "plan_schema.h"

namespace dyninfer {

namespace {

constexpr int64_t kSlack = 128;  // floats after each slot: tail vectors may read a little past the last plane
constexpr int64_t kParallelMinMacs = 1 << 20;  // ~10 µs of one core: below it a conv runs on one thread

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using FloatArray = std::unique_ptr<float[], AlignedFree>;

FloatArray alloc_zeroed(int64_t n) {
  const size_t bytes = static_cast<size_t>(round_up(std::max<int64_t>(n, 16) * 4, 64));
  void* p = std::aligned_alloc(64, bytes);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  return FloatArray(static_cast<float*>(p));
}

std::string at_op(int i, int kind) { return "op " + std::to_string(i) + " (kind " + std::to_string(kind) + ")"; }

// Bounds of plan fields: every size, index and geometry value is checked against them before it
// is narrowed to int, so no product below overflows and no allocation is absurd.
constexpr int64_t kMaxDim = 1 << 16;         // channels, height, width, hidden units, features
constexpr int64_t kMaxKernel = 64;           // kernel, stride, padding, dilation
constexpr int64_t kMaxBufferFloats = int64_t{1} << 28;  // 1 GiB per activation buffer

// Field `name` of a plan entry as an int within [lo, hi]; the error names where, the field and its value.
int checked(int64_t v, int64_t lo, int64_t hi, const std::string& where, const char* name) {
  if (v < lo || v > hi)
    throw PlanError(where + ": field '" + name + "' = " + std::to_string(v) + " outside [" + std::to_string(lo) +
                    ", " + std::to_string(hi) + "]");
  return static_cast<int>(v);
}

}  // namespace

int op_field_count(int kind) {
  switch (kind) {
#define DYNINFER_FIELD_COUNT(op, id, FIELDS, tail) \
  case schema::op::kKind: return schema::op::kVariadic ? -1 : schema::op::kCount;
    DYNINFER_PLAN_OPS(DYNINFER_FIELD_COUNT)
#undef DYNINFER_FIELD_COUNT
    default: return -2;
  }
}

static_assert(kConv == schema::conv::kKind && kGate == schema::gate::kKind && kMaxPool == schema::maxpool::kKind &&
                  kAvgPool == schema::avgpool::kKind && kLinear == schema::linear::kKind &&
                  kConcat == schema::concat::kKind && kAdd == schema::add::kKind && kAffine == schema::affine::kKind &&
                  kShortcut == schema::shortcut::kKind,
              "OpKind and plan_schema.h disagree");
// Max and average pooling share one parser: max pooling's fields are average pooling's first ones.
static_assert(schema::maxpool::input == schema::avgpool::input && schema::maxpool::output == schema::avgpool::output &&
                  schema::maxpool::kh == schema::avgpool::kh && schema::maxpool::kw == schema::avgpool::kw &&
                  schema::maxpool::sh == schema::avgpool::sh && schema::maxpool::sw == schema::avgpool::sw &&
                  schema::maxpool::ph == schema::avgpool::ph && schema::maxpool::pw == schema::avgpool::pw,
              "max pooling's fields must be a prefix of average pooling's");

struct Workspace {
  std::vector<FloatArray> slots;
  std::vector<float*> buf_data;  // per buffer: its slot's base
  std::vector<std::vector<int32_t>> active;
  std::vector<std::vector<float>> sums;
  std::vector<char> sums_valid;
  std::vector<std::vector<int32_t>> kept;
  FloatArray col_raw;
  FloatArray vsums_raw;
  float* vsums = nullptr;
  float* col = nullptr;
  std::vector<int32_t> out_real, group_start, group_size, tmp, tmp2;
  std::vector<float*> out_plane;
  std::vector<const float*> res_plane;
  std::vector<float> gvec, hidden, glog;
};

// ---------------------------------------------------------------------------------------------
// Construction

Plan::Plan(const std::vector<int64_t>& meta, const std::vector<int64_t>& ops, std::vector<WeightRef> weights,
           std::vector<std::string> names, Isa isa)
    : weights_(std::move(weights)), isa_(isa), asm_(asm_kernels_enabled()) {
  size_t p = 0;
  auto next = [&](const char* what) -> int64_t {
    if (p >= meta.size()) throw PlanError(std::string("plan meta truncated while reading ") + what);
    return meta[p++];
  };
  const int64_t nb = next("buffer count");
  if (nb <= 0 || nb > 1000000) throw PlanError("plan meta: bad buffer count " + std::to_string(nb));
  int n_slots = 0;
  for (int64_t b = 0; b < nb; ++b) {
    Buffer buf;
    const std::string where = "plan meta: buffer " + std::to_string(b);
    int64_t v[schema::buffer::kCount];
#define DYNINFER_READ(name) v[schema::buffer::name] = next(#name);
    DYNINFER_BUFFER_FIELDS(DYNINFER_READ)
#undef DYNINFER_READ
    buf.C = checked(v[schema::buffer::C], 1, kMaxDim, where, "C");
    buf.H = checked(v[schema::buffer::H], 1, kMaxDim, where, "H");
    buf.W = checked(v[schema::buffer::W], 1, kMaxDim, where, "W");
    buf.B = checked(v[schema::buffer::border], 0, kMaxKernel, where, "border");
    buf.slot = checked(v[schema::buffer::slot], 0, nb - 1, where, "slot");
    buf.nonneg = checked(v[schema::buffer::nonneg], 0, 1, where, "nonneg") != 0;
    buf.Hp = buf.H + 2 * buf.B;
    buf.Wp = buf.W + 2 * buf.B;
    buf.plane = round_up(static_cast<int64_t>(buf.Hp) * buf.Wp, 16);
    if (buf.plane * buf.C > kMaxBufferFloats)
      throw PlanError(where + ": " + std::to_string(buf.C) + " x " + std::to_string(buf.H) + " x " +
                      std::to_string(buf.W) + " (border " + std::to_string(buf.B) + ") exceeds " +
                      std::to_string(kMaxBufferFloats) + " floats");
    n_slots = std::max(n_slots, buf.slot + 1);
    max_channels_ = std::max(max_channels_, buf.C);
    buffers_.push_back(buf);
  }
  slot_floats_.assign(n_slots, 0);
  // Buffers sharing a slot must share (H, W, B) so that borders stay zero.
  std::vector<int> slot_owner(n_slots, -1);
  for (int b = 0; b < nb; ++b) {
    const Buffer& buf = buffers_[b];
    int& own = slot_owner[buf.slot];
    if (own >= 0) {
      const Buffer& o = buffers_[own];
      if (o.H != buf.H || o.W != buf.W || o.B != buf.B)
        throw PlanError("plan meta: buffers " + std::to_string(own) + " and " + std::to_string(b) +
                        " share slot " + std::to_string(buf.slot) + " with different geometry");
    } else {
      own = b;
    }
    slot_floats_[buf.slot] = std::max(slot_floats_[buf.slot], buf.C * buf.plane + kSlack);
  }
  int64_t pf[schema::plan::kCount];
#define DYNINFER_READ(name) pf[schema::plan::name] = next(#name);
  DYNINFER_PLAN_FIELDS(DYNINFER_READ)
#undef DYNINFER_READ
  input_ = checked(pf[schema::plan::input], 0, nb - 1, "plan meta", "input");
  output_ = checked(pf[schema::plan::output], 0, nb - 1, "plan meta", "output");
  const int64_t ng = checked(pf[schema::plan::gate_count], 0, 1000000, "plan meta", "gate_count");
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t n = checked(next("gate size"), 1, kMaxDim, "plan meta: gate " + std::to_string(g), "size");
    gate_sizes_.push_back(static_cast<int>(n));
    max_channels_ = std::max(max_channels_, static_cast<int>(n));  // the workspace's per-channel vectors
    gate_path_off_.push_back(path_len_);
    path_len_ += n;
  }
  if (p != meta.size()) throw PlanError("plan meta has trailing values");

  // Op order: a buffer is read only after an op (or the input) produced it, and a conv's gate op
  // runs before the conv; the runtime relies on both (a stale or missing channel list otherwise).
  std::vector<char> produced(nb, 0), gate_done(gate_sizes_.size(), 0);
  produced[input_] = 1;
  auto buf_ok = [&](int64_t b, int opi, const char* role) {
    if (b < 0 || b >= nb) throw PlanError("op " + std::to_string(opi) + ": bad " + role + " buffer " + std::to_string(b));
    if (!produced[b])
      throw PlanError("op " + std::to_string(opi) + ": " + role + " buffer " + std::to_string(b) +
                      " is read before any op produces it");
    return static_cast<int>(b);
  };
  auto out_ok = [&](int64_t b, int opi) {
    if (b < 0 || b >= nb) throw PlanError("op " + std::to_string(opi) + ": bad output buffer " + std::to_string(b));
    if (b == input_) throw PlanError("op " + std::to_string(opi) + ": writes the input buffer");
    produced[b] = 1;
    return static_cast<int>(b);
  };
  // Every weight an op names is required: a negative or missing index is an error, not a null pointer.
  auto weight = [&](int64_t t, int64_t numel, int opi, const char* role) -> const float* {
    if (t < 0 || t >= static_cast<int64_t>(weights_.size()))
      throw PlanError("op " + std::to_string(opi) + ": " + role + " refers to weight " + std::to_string(t) + " of " +
                      std::to_string(weights_.size()));
    if (weights_[t].numel != numel || weights_[t].data == nullptr)
      throw PlanError("op " + std::to_string(opi) + ": " + role + " has " + std::to_string(weights_[t].numel) +
                      " values, expected " + std::to_string(numel));
    return weights_[t].data;
  };

  size_t q = 0;
  int opi = 0;
  while (q < ops.size()) {
    if (q + 2 > ops.size()) throw PlanError("plan ops truncated");
    const int64_t kind64 = ops[q];
    const int kind = kind64 >= 0 && kind64 < 100 ? static_cast<int>(kind64) : -1;
    const int64_t cnt = ops[q + 1];
    const int expect = op_field_count(kind);
    if (expect == -2) throw PlanError("op " + std::to_string(opi) + ": unknown op kind " + std::to_string(kind64));
    if (cnt < 0 || cnt > static_cast<int64_t>(ops.size() - q - 2) || (expect >= 0 && cnt != expect))
      throw PlanError(at_op(opi, kind) + ": wrong field count " + std::to_string(cnt));
    const int64_t* f = ops.data() + q + 2;
    const std::string where = at_op(opi, kind);
    auto fld = [&](int i, const char* name, int64_t lo, int64_t hi) { return checked(f[i], lo, hi, where, name); };
    switch (kind) {
      case kConv: {
        ConvOp c;
        c.in = buf_ok(f[schema::conv::input], opi, "input");
        c.res = f[schema::conv::residual] < 0 ? -1 : buf_ok(f[schema::conv::residual], opi, "residual");
        c.O = fld(schema::conv::out_channels, "out_channels", 1, kMaxDim);
        c.I = fld(schema::conv::in_channels, "in_channels", 1, kMaxDim);
        c.kh = fld(schema::conv::kh, "kh", 1, kMaxKernel);
        c.kw = fld(schema::conv::kw, "kw", 1, kMaxKernel);
        c.sh = fld(schema::conv::sh, "sh", 1, kMaxKernel);
        c.sw = fld(schema::conv::sw, "sw", 1, kMaxKernel);
        c.ph = fld(schema::conv::ph, "ph", 0, kMaxKernel);
        c.pw = fld(schema::conv::pw, "pw", 0, kMaxKernel);
        c.dh = fld(schema::conv::dh, "dh", 1, kMaxKernel);
        c.dw = fld(schema::conv::dw, "dw", 1, kMaxKernel);
        c.relu = fld(schema::conv::relu, "relu", 0, 1) != 0;
        c.gate = fld(schema::conv::gate, "gate", -1, static_cast<int64_t>(gate_sizes_.size()) - 1);
        fld(schema::conv::reserved, "reserved", 1, 1);
        c.out = out_ok(f[schema::conv::output], opi);
        const Buffer &bi = buffers_[c.in], &bo = buffers_[c.out];
        c.name = convs_.size() < names.size() ? names[convs_.size()] : "conv" + std::to_string(convs_.size());
        if (c.I != bi.C || c.O != bo.C)
          throw PlanError("conv '" + c.name + "': " + std::to_string(c.I) + " -> " + std::to_string(c.O) +
                          " channels, buffers hold " + std::to_string(bi.C) + " -> " + std::to_string(bo.C));
        const int ho = (bi.H + 2 * c.ph - c.dh * (c.kh - 1) - 1) / c.sh + 1;
        const int wo = (bi.W + 2 * c.pw - c.dw * (c.kw - 1) - 1) / c.sw + 1;
        if (bi.H + 2 * c.ph < c.dh * (c.kh - 1) + 1 || bi.W + 2 * c.pw < c.dw * (c.kw - 1) + 1 || ho != bo.H ||
            wo != bo.W)
          throw PlanError("conv '" + c.name + "': output buffer is " + std::to_string(bo.H) + "x" +
                          std::to_string(bo.W) + ", conv gives " + std::to_string(ho) + "x" + std::to_string(wo));
        if (c.res >= 0 && (buffers_[c.res].C != bo.C || buffers_[c.res].H != bo.H || buffers_[c.res].W != bo.W))
          throw PlanError("conv '" + c.name + "': residual buffer shape differs from the output");
        if (c.gate >= 0 && gate_sizes_[c.gate] != c.O)
          throw PlanError("conv '" + c.name + "': gate " + std::to_string(c.gate) + " has " +
                          std::to_string(gate_sizes_[c.gate]) + " channels, the conv " + std::to_string(c.O));
        if (c.gate >= 0 && !gate_done[c.gate])
          throw PlanError("conv '" + c.name + "': its gate " + std::to_string(c.gate) + " does not run before it");
        if (c.in == c.out || c.res == c.out || buffers_[c.in].slot == bo.slot)
          throw PlanError("conv '" + c.name + "': output shares memory with its input");
        // Output in the residual's memory (in place): identical geometry required.
        c.inplace = c.res >= 0 && buffers_[c.res].slot == bo.slot;
        if (c.inplace && (buffers_[c.res].B != bo.B || buffers_[c.res].plane != bo.plane))
          throw PlanError("conv '" + c.name + "': in-place residual with a different plane geometry");
        c.w = weight(f[schema::conv::weight], static_cast<int64_t>(c.O) * c.I * c.kh * c.kw, opi, "conv weight");
        c.bias = weight(f[schema::conv::bias], c.O, opi, "conv bias");
        // Stride-1 convs read the padded planes in place when the borders cover the padding.
        c.direct = c.sh == 1 && c.sw == 1 && c.dh == 1 && c.dw == 1 && c.ph <= bi.B && c.pw <= bi.B;
        // Stride-2 convs read the padded planes in place too where the kernels can load
        // stride-2 vectors (AVX-512: two loads + one permute), else through a column buffer.
        c.stride2 = conv_caps(isa_).stride2_direct && c.sh == 2 && c.sw == 2 && c.dh == 1 && c.dw == 1 && c.ph <= bi.B &&
                    c.pw <= bi.B;
        if (c.stride2) c.direct = true;
        if (!c.direct && static_cast<int64_t>(c.I) * c.kh * c.kw * ho * (wo + 16) > kMaxBufferFloats)
          throw PlanError("conv '" + c.name + "': its column buffer would exceed " + std::to_string(kMaxBufferFloats) +
                          " floats");
        build_conv_vectors(c);
        ops_.push_back({kConv, static_cast<int>(convs_.size())});
        convs_.push_back(std::move(c));
        break;
      }
      case kGate: {
        GateOp g;
        g.in = buf_ok(f[schema::gate::input], opi, "input");
        g.gate = fld(schema::gate::gate, "gate", 0, static_cast<int64_t>(gate_sizes_.size()) - 1);
        g.C = fld(schema::gate::in_channels, "in_channels", 1, kMaxDim);
        g.hidden = fld(schema::gate::hidden, "hidden", 1, kMaxDim);
        g.N = fld(schema::gate::out_channels, "out_channels", 1, kMaxDim);
        g.force_k = fld(schema::gate::force_k, "force_k", -1, g.N);
        if (gate_sizes_[g.gate] != g.N || g.C != buffers_[g.in].C)
          throw PlanError("gate op " + std::to_string(opi) + ": sizes C " + std::to_string(g.C) + ", N " +
                          std::to_string(g.N) + " do not match its input buffer (" + std::to_string(buffers_[g.in].C) +
                          " channels) and gate " + std::to_string(g.gate) + " (" +
                          std::to_string(gate_sizes_[g.gate]) + ")");
        if (gate_done[g.gate]) throw PlanError("gate op " + std::to_string(opi) + ": gate " + std::to_string(g.gate) + " runs twice");
        gate_done[g.gate] = 1;
        g.w1 = weight(f[schema::gate::fc1_weight], static_cast<int64_t>(g.hidden) * g.C, opi, "gate fc1 weight");
        g.b1 = weight(f[schema::gate::fc1_bias], g.hidden, opi, "gate fc1 bias");
        g.w2 = weight(f[schema::gate::fc2_weight], static_cast<int64_t>(g.N) * g.hidden, opi, "gate fc2 weight");
        g.b2 = weight(f[schema::gate::fc2_bias], g.N, opi, "gate fc2 bias");
        max_hidden_ = std::max(max_hidden_, g.hidden);
        ops_.push_back({kGate, static_cast<int>(gates_.size())});
        gates_.push_back(g);
        break;
      }
      case kMaxPool:
      case kAvgPool: {
        PoolOp pl;
        pl.in = buf_ok(f[schema::avgpool::input], opi, "input");
        pl.kh = fld(schema::avgpool::kh, "kh", 1, kMaxKernel);
        pl.kw = fld(schema::avgpool::kw, "kw", 1, kMaxKernel);
        pl.sh = fld(schema::avgpool::sh, "sh", 1, kMaxKernel);
        pl.sw = fld(schema::avgpool::sw, "sw", 1, kMaxKernel);
        // PyTorch's rule: padding at most half the kernel, so every window holds a real pixel.
        pl.ph = fld(schema::avgpool::ph, "ph", 0, pl.kh / 2);
        pl.pw = fld(schema::avgpool::pw, "pw", 0, pl.kw / 2);
        pl.max = kind == kMaxPool;
        pl.count_include_pad = kind == kAvgPool ? fld(schema::avgpool::count_include_pad, "count_include_pad", 0, 1) != 0 : false;
        pl.divisor = kind == kAvgPool ? fld(schema::avgpool::divisor, "divisor", 0, kMaxKernel * kMaxKernel) : 0;
        pl.out = out_ok(f[schema::avgpool::output], opi);
        const Buffer &bi = buffers_[pl.in], &bo = buffers_[pl.out];
        if (bi.C != bo.C || bi.slot == bo.slot)
          throw PlanError("pool op " + std::to_string(opi) + ": output buffer must hold the input's " +
                          std::to_string(bi.C) + " channels in other memory");
        // Output size: floor or ceil mode; in ceil mode the last window starts inside the input or its left padding.
        auto size_ok = [](int in, int k, int st, int pad, int out) {
          const int span = in + 2 * pad - k;
          if (span < 0) return false;
          const int lo = span / st + 1, hi = (span + st - 1) / st + 1;
          return (out == lo || out == hi) && (out - 1) * st < in + pad;
        };
        if (!size_ok(bi.H, pl.kh, pl.sh, pl.ph, bo.H) || !size_ok(bi.W, pl.kw, pl.sw, pl.pw, bo.W))
          throw PlanError("pool op " + std::to_string(opi) + ": output " + std::to_string(bo.H) + "x" +
                          std::to_string(bo.W) + " does not follow from input " + std::to_string(bi.H) + "x" +
                          std::to_string(bi.W) + ", kernel " + std::to_string(pl.kh) + "x" + std::to_string(pl.kw) +
                          ", stride " + std::to_string(pl.sh) + "x" + std::to_string(pl.sw) + ", padding " +
                          std::to_string(pl.ph) + "x" + std::to_string(pl.pw));
        ops_.push_back({kind, static_cast<int>(pools_.size())});
        pools_.push_back(pl);
        break;
      }
      case kLinear: {
        LinearOp l;
        l.in = buf_ok(f[schema::linear::input], opi, "input");
        l.out = out_ok(f[schema::linear::output], opi);
        const Buffer &bi = buffers_[l.in], &bo = buffers_[l.out];
        if (static_cast<int64_t>(bi.C) * bi.H * bi.W > kMaxBufferFloats)
          throw PlanError("linear op " + std::to_string(opi) + ": too many input features");
        l.in_features = bi.C * bi.H * bi.W;
        l.out_features = bo.C;
        if (bo.H != 1 || bo.W != 1 || bi.slot == bo.slot)
          throw PlanError("linear op " + std::to_string(opi) + ": output must be a separate (N, 1, 1) buffer");
        l.w = weight(f[schema::linear::weight], static_cast<int64_t>(l.out_features) * l.in_features, opi, "linear weight");
        l.b = weight(f[schema::linear::bias], l.out_features, opi, "linear bias");
        l.relu = fld(schema::linear::relu, "relu", 0, 1) != 0;
        ops_.push_back({kLinear, static_cast<int>(linears_.size())});
        linears_.push_back(l);
        break;
      }
      case kConcat: {
        ConcatOp c;
        if (cnt < 2) throw PlanError("concat op " + std::to_string(opi) + ": no inputs");
        int64_t off = 0;
        for (int64_t i = schema::concat::kCount; i < cnt; ++i) {
          const int b = buf_ok(f[i], opi, "input");
          c.ins.push_back(b);
          c.offsets.push_back(static_cast<int>(off));
          off += buffers_[b].C;
          if (off > kMaxDim) throw PlanError("concat op " + std::to_string(opi) + ": too many channels");
        }
        c.out = out_ok(f[schema::concat::output], opi);
        for (int b : c.ins) {
          const Buffer& bi = buffers_[b];
          if (bi.H != buffers_[c.out].H || bi.W != buffers_[c.out].W || bi.slot == buffers_[c.out].slot)
            throw PlanError("concat op " + std::to_string(opi) + ": input geometry differs from output");
        }
        if (off != buffers_[c.out].C) throw PlanError("concat op " + std::to_string(opi) + ": channel count mismatch");
        ops_.push_back({kConcat, static_cast<int>(concats_.size())});
        concats_.push_back(std::move(c));
        break;
      }
      case kAdd: {
        AddOp a{buf_ok(f[schema::add::a], opi, "a"), buf_ok(f[schema::add::b], opi, "b"), out_ok(f[schema::add::output], opi), fld(schema::add::relu, "relu", 0, 1) != 0};
        const Buffer &ba = buffers_[a.a], &bb = buffers_[a.b], &bo = buffers_[a.out];
        if (ba.C != bo.C || bb.C != bo.C || ba.H != bo.H || bb.H != bo.H || ba.W != bo.W || bb.W != bo.W ||
            ba.slot == bo.slot || bb.slot == bo.slot)
          throw PlanError("add op " + std::to_string(opi) + ": shapes differ");
        ops_.push_back({kAdd, static_cast<int>(adds_.size())});
        adds_.push_back(a);
        break;
      }
      case kAffine: {
        AffineOp a;
        a.in = buf_ok(f[schema::affine::input], opi, "input");
        a.out = out_ok(f[schema::affine::output], opi);
        const Buffer &bi = buffers_[a.in], &bo = buffers_[a.out];
        if (bi.C != bo.C || bi.H != bo.H || bi.W != bo.W || bi.slot == bo.slot)
          throw PlanError("affine op " + std::to_string(opi) + ": shapes differ");
        a.scale = weight(f[schema::affine::scale], bi.C, opi, "scale");
        a.shift = weight(f[schema::affine::shift], bi.C, opi, "shift");
        a.relu = fld(schema::affine::relu, "relu", 0, 1) != 0;
        ops_.push_back({kAffine, static_cast<int>(affines_.size())});
        affines_.push_back(a);
        break;
      }
      case kShortcut: {
        ShortcutOp s{buf_ok(f[schema::shortcut::input], opi, "input"), out_ok(f[schema::shortcut::output], opi), fld(schema::shortcut::stride, "stride", 1, kMaxKernel),
                     fld(schema::shortcut::pad_channels, "pad_channels", 0, kMaxDim)};
        const Buffer &bi = buffers_[s.in], &bo = buffers_[s.out];
        if (bo.C != bi.C + 2 * s.pad || bo.H != (bi.H + s.stride - 1) / s.stride ||
            bo.W != (bi.W + s.stride - 1) / s.stride || bi.slot == bo.slot)
          throw PlanError("shortcut op " + std::to_string(opi) + ": shapes differ");
        ops_.push_back({kShortcut, static_cast<int>(shortcuts_.size())});
        shortcuts_.push_back(s);
        break;
      }
    }
    q += 2 + cnt;
    ++opi;
  }
  if (!produced[output_]) throw PlanError("plan: no op produces the output buffer " + std::to_string(output_));
  op_ns_.assign(ops_.size(), 0.0);
  for (const Op& op : ops_) {
    switch (op.kind) {
      case kConv: op_names_.push_back("conv:" + convs_[op.index].name); break;
      case kGate: op_names_.push_back("gate:" + std::to_string(gates_[op.index].gate)); break;
      case kMaxPool: op_names_.push_back("maxpool"); break;
      case kAvgPool: op_names_.push_back("avgpool"); break;
      case kLinear: op_names_.push_back("linear"); break;
      case kConcat: op_names_.push_back("concat"); break;
      case kAdd: op_names_.push_back("add"); break;
      case kAffine: op_names_.push_back("affine"); break;
      case kShortcut: op_names_.push_back("shortcut"); break;
    }
  }
}

Plan::~Plan() = default;

void Plan::build_conv_vectors(ConvOp& c) {
  const Buffer &bi = buffers_[c.in], &bo = buffers_[c.out];
  const int ho = bo.H, wo = bo.W;
  const Buffer* br = c.res >= 0 ? &buffers_[c.res] : nullptr;
  // Row pairs (AVX-512, direct convs with 8-pixel output rows): a 16-lane vector is two whole
  // output rows, its input two 8-float row segments joined by one insert (stride 2: the even
  // samples of two 16-float rows, one permute); every lane is a real pixel (flat mode over the
  // 10-wide padded rows of such planes uses 80% of them, 8-lane vectors half the FMA width).
  const IsaCaps& caps = conv_caps(isa_);
  if (caps.row_pairs && c.direct && wo == 8) {
    c.pairs = true;
    c.vw = 16;
    c.col_rows = 0;
    for (int y = 0; y < ho; y += 2) {
      c.in_off.push_back(static_cast<int64_t>((c.stride2 ? 2 * y : y) + bi.B - c.ph) * bi.Wp + (bi.B - c.pw));
      c.out_off.push_back(static_cast<int64_t>(y + bo.B) * bo.Wp + bo.B);
      if (br) c.res_off.push_back(static_cast<int64_t>(y + br->B) * br->Wp + br->B);
      c.lanes.push_back(y + 1 < ho ? 0xFFFFu : 0xFFu);  // odd row count: lanes 8-15 masked off
    }
    return;
  }
  int vw = conv_vector_width(isa_, wo);
  // Lane utilisation relative to the widest vector: row mode wastes the tail of each row;
  // "flat" mode (AVX-512, stride-1 direct convs whose input, output and residual planes share the
  // padded width) runs 16-lane vectors over the padded plane across rows and wastes only the
  // 2·border columns — 80% instead of 50% for 8-pixel rows.
  const int widest = caps.widest;
  const int nvx_row = (wo + vw - 1) / vw;
  const double row_util = static_cast<double>(wo) / (nvx_row * vw) * vw / widest;
  const bool can_flat = caps.flat && c.direct && !c.stride2 && bo.Wp == bi.Wp && (!br || br->Wp == bi.Wp);
  const int64_t flat_len = static_cast<int64_t>(ho - 1) * bi.Wp + wo;
  const int64_t n_flat = (flat_len + 15) / 16;
  const double flat_util = static_cast<double>(ho) * wo / (n_flat * 16.0);
  c.flat = can_flat && flat_util > row_util + 1e-9;
  if (c.flat) {
    vw = 16;
    c.vw = vw;
    c.col_rows = 0;
    const int64_t in0 = static_cast<int64_t>(bi.B - c.ph) * bi.Wp + (bi.B - c.pw);
    const int64_t out0 = static_cast<int64_t>(bo.B) * bo.Wp + bo.B;
    const int64_t res0 = br ? static_cast<int64_t>(br->B) * br->Wp + br->B : 0;
    for (int64_t v = 0; v < n_flat; ++v) {
      const int64_t q0 = v * 16;
      c.in_off.push_back(in0 + q0);
      c.out_off.push_back(out0 + q0);
      if (br) c.res_off.push_back(res0 + q0);
      uint32_t m = 0;
      for (int i = 0; i < 16; ++i) {
        const int64_t q = q0 + i;
        if (q < flat_len && q % bi.Wp < wo) m |= 1u << i;
      }
      c.lanes.push_back(m);
    }
    return;
  }
  c.vw = vw;
  const int nvx = nvx_row;
  const int64_t wv = static_cast<int64_t>(nvx) * vw;
  c.col_rows = wv;
  if (!c.direct) col_floats_ = std::max(col_floats_, static_cast<int64_t>(c.I) * c.kh * c.kw * ho * wv + kSlack);
  for (int y = 0; y < ho; ++y) {
    for (int xb = 0; xb < nvx; ++xb) {
      const int x = xb * vw;
      if (c.stride2)
        c.in_off.push_back(static_cast<int64_t>(2 * y + bi.B - c.ph) * bi.Wp + (bi.B - c.pw) + 2 * x);
      else if (c.direct)
        c.in_off.push_back(static_cast<int64_t>(y + bi.B - c.ph) * bi.Wp + (bi.B - c.pw) + x);
      else
        c.in_off.push_back(y * wv + x);
      c.out_off.push_back(static_cast<int64_t>(y + bo.B) * bo.Wp + bo.B + x);
      if (br) c.res_off.push_back(static_cast<int64_t>(y + br->B) * br->Wp + br->B + x);
      const int n = std::min(vw, wo - x);
      c.lanes.push_back(n >= 32 ? 0xFFFFFFFFu : (1u << n) - 1u);
    }
  }
}

int64_t Plan::input_numel() const {
  const Buffer& b = buffers_[input_];
  return static_cast<int64_t>(b.C) * b.H * b.W;
}

int64_t Plan::output_numel() const {
  const Buffer& b = buffers_[output_];
  return static_cast<int64_t>(b.C) * b.H * b.W;
}

void Plan::set_profiling(bool on) const {
  std::lock_guard<std::mutex> lk(pool_mu_);
  profiling_ = on;
  std::fill(op_ns_.begin(), op_ns_.end(), 0.0);
}

std::vector<double> Plan::op_times_ns() const {
  std::lock_guard<std::mutex> lk(pool_mu_);
  return op_ns_;
}

std::unique_ptr<Workspace> Plan::acquire() const {
  {
    std::lock_guard<std::mutex> lk(pool_mu_);
    if (!pool_.empty()) {
      auto ws = std::move(pool_.back());
      pool_.pop_back();
      return ws;
    }
  }
  auto ws = std::make_unique<Workspace>();
  // Slots (and the column buffer) start at staggered offsets modulo 4 KiB: large allocations are
  // page aligned, and a conv reading one slot while writing another at the same page offset pays
  // 4K-aliasing stalls on its loads (measured ~2x on im2col).
  std::vector<float*> slot_ptr;
  for (size_t k = 0; k < slot_floats_.size(); ++k) {
    const int64_t shift = static_cast<int64_t>((k * 5 + 1) % 16) * 64;  // floats: 256-byte steps
    ws->slots.push_back(alloc_zeroed(slot_floats_[k] + shift));
    slot_ptr.push_back(ws->slots.back().get() + shift);
  }
  for (const Buffer& b : buffers_) {
    ws->buf_data.push_back(slot_ptr[b.slot]);
    ws->active.emplace_back();
    ws->active.back().reserve(b.C);
    ws->sums.emplace_back(b.C, 0.f);
  }
  ws->sums_valid.assign(buffers_.size(), 0);
  for (int n : gate_sizes_) {
    ws->kept.emplace_back();
    ws->kept.back().reserve(n);
  }
  ws->col_raw = alloc_zeroed((col_floats_ > 0 ? col_floats_ : 16) + 512);
  ws->col = ws->col_raw.get() + 8 * 64 + 32;
  const int mc = max_channels_ + 8;
  ws->vsums_raw = alloc_zeroed(static_cast<int64_t>(mc) * 16);
  ws->vsums = ws->vsums_raw.get();
  ws->out_real.resize(mc);
  ws->group_start.resize(mc);
  ws->group_size.resize(mc);
  ws->tmp.resize(mc);
  ws->tmp2.resize(mc);
  ws->out_plane.resize(mc);
  ws->res_plane.resize(mc);
  ws->gvec.resize(mc);
  ws->hidden.resize(std::max(mc, max_hidden_ + 8));
  ws->glog.resize(mc);
  return ws;
}

void Plan::release(std::unique_ptr<Workspace> ws) const {
  std::lock_guard<std::mutex> lk(pool_mu_);
  pool_.push_back(std::move(ws));
}

// ---------------------------------------------------------------------------------------------
// Execution

struct Executor {
  const Plan& P;
  Workspace& ws;
  const ParallelFor* pfor;  // non-null: split conv channel groups across threads (batch 1)
  bool open;

  float* plane(int b, int pos) const { return ws.buf_data[b] + pos * P.buffers_[b].plane; }
  float* interior(int b, int pos) const {
    const Buffer& B = P.buffers_[b];
    return plane(b, pos) + static_cast<int64_t>(B.B) * B.Wp + B.B;
  }

  void channel_sums(int b) {
    if (ws.sums_valid[b]) return;
    const Buffer& B = P.buffers_[b];
    auto& s = ws.sums[b];
    std::fill(s.begin(), s.end(), 0.f);
    const auto& act = ws.active[b];
    for (size_t i = 0; i < act.size(); ++i) {
      const float* p = interior(b, static_cast<int>(i));
      double acc = 0;
      for (int y = 0; y < B.H; ++y)
        for (int x = 0; x < B.W; ++x) acc += p[y * B.Wp + x];
      s[act[i]] = static_cast<float>(acc);
    }
    ws.sums_valid[b] = 1;
  }

  void set_input(const float* x) {
    const int b = P.input_;
    const Buffer& B = P.buffers_[b];
    auto& act = ws.active[b];
    act.resize(B.C);
    for (int c = 0; c < B.C; ++c) {
      act[c] = c;
      float* dst = interior(b, c);
      const float* src = x + static_cast<int64_t>(c) * B.H * B.W;
      for (int y = 0; y < B.H; ++y) std::memcpy(dst + y * B.Wp, src + y * B.W, sizeof(float) * B.W);
    }
  }

  void gate(const GateOp& g, float* path) {
    auto& kept = ws.kept[g.gate];
    kept.clear();
    if (open) {
      for (int n = 0; n < g.N; ++n) kept.push_back(n);
    } else {
      channel_sums(g.in);
      const Buffer& B = P.buffers_[g.in];
      const float inv = 1.0f / static_cast<float>(B.H * B.W);
      const auto& act = ws.active[g.in];
      const auto& s = ws.sums[g.in];
      // s = GAP of the gate input; channels the producer dropped are zero and skipped.
      float* sv = ws.gvec.data();
      for (int c : act) sv[c] = s[c] * inv;
      float* h = ws.hidden.data();
      gemv(P.isa_, g.w1, sv, act.data(), static_cast<int>(act.size()), g.b1, h, g.hidden, true);
      float* lg = ws.glog.data();
      gemv(P.isa_, g.w2, h, nullptr, g.hidden, g.b2, lg, g.N, false);
      if (g.force_k >= 0) {
        auto& idx = ws.tmp;
        for (int n = 0; n < g.N; ++n) idx[n] = n;
        std::partial_sort(idx.begin(), idx.begin() + g.force_k, idx.begin() + g.N, [&](int a, int b) {
          return lg[a] > lg[b] || (lg[a] == lg[b] && a < b);
        });
        kept.assign(idx.begin(), idx.begin() + g.force_k);
        std::sort(kept.begin(), kept.end());
      } else {
        for (int n = 0; n < g.N; ++n)
          if (lg[n] > 0.f) kept.push_back(n);
      }
    }
    if (path) {
      float* z = path + P.gate_path_off_[g.gate];
      std::fill(z, z + g.N, 0.f);
      for (int n : kept) z[n] = 1.f;
    }
  }

  void conv(int ci) {
    const ConvOp& c = P.convs_[ci];
    const Buffer &bi = P.buffers_[c.in], &bo = P.buffers_[c.out];
    const auto& in_act = ws.active[c.in];
    const int n_in = static_cast<int>(in_act.size());
    // Kept output channels (sorted) and the output's active list (∪ residual's).
    const std::vector<int32_t>* keptp = nullptr;
    std::vector<int32_t>& all = ws.tmp;
    if (c.gate >= 0 && !open) {
      keptp = &ws.kept[c.gate];
    } else {
      all.resize(c.O);
      std::iota(all.begin(), all.end(), 0);
      keptp = &all;
    }
    const auto& kept = *keptp;
    auto& out_act = ws.active[c.out];
    out_act.clear();
    auto& sums = ws.sums[c.out];
    std::fill(sums.begin(), sums.end(), 0.f);
    int nk = 0;
    const std::vector<int32_t>* res_act = c.res >= 0 ? &ws.active[c.res] : nullptr;
    const size_t nr = res_act ? res_act->size() : 0;
    if (c.inplace) {
      // The output lives in the residual's memory. Residual planes move (back to front) to their
      // positions in the merged list; kept channels not in the residual get the freed positions.
      auto& pos = ws.tmp2;
      pos.resize(nr);
      size_t i = 0, j = 0;
      while (i < kept.size() || j < nr) {
        const int a = i < kept.size() ? kept[i] : INT32_MAX;
        const int r = j < nr ? (*res_act)[j] : INT32_MAX;
        if (r <= a) pos[j++] = static_cast<int32_t>(out_act.size());
        if (a <= r) ++i;
        out_act.push_back(std::min(a, r));
      }
      const int64_t plane_floats = bo.plane;
      for (size_t q = nr; q-- > 0;)
        if (pos[q] != static_cast<int32_t>(q))
          std::memcpy(plane(c.out, pos[q]), plane(c.out, static_cast<int>(q)), sizeof(float) * plane_floats);
      const auto& rsums = ws.sums[c.res];
      const bool rsums_ok = ws.sums_valid[c.res];
      const bool rnonneg = P.buffers_[c.res].nonneg;
      i = 0;
      j = 0;
      while (i < kept.size() || j < nr) {
        const int a = i < kept.size() ? kept[i] : INT32_MAX;
        const int r = j < nr ? (*res_act)[j] : INT32_MAX;
        if (a <= r) {
          ws.out_real[nk] = a;
          ++nk;
          ++i;
          if (a == r) ++j;
        } else {
          float* d = interior(c.out, pos[j]);
          if (c.relu && !rnonneg) {
            sums[r] = plane_copy(P.isa_, d, bo.Wp, d, bo.Wp, bo.H, bo.W, true);
          } else if (rsums_ok) {
            sums[r] = rsums[r];
          } else {
            sums[r] = plane_copy(P.isa_, d, bo.Wp, d, bo.Wp, bo.H, bo.W, false);
          }
          ++j;
        }
      }
      // Planes of the computed channels: walk the merged list once more.
      {
        size_t k = 0, jj = 0;
        for (size_t p = 0; p < out_act.size(); ++p) {
          const int ch = out_act[p];
          const bool in_res = jj < nr && (*res_act)[jj] == ch;
          const bool computed = k < static_cast<size_t>(nk) && ws.out_real[k] == ch;
          if (computed) {
            ws.out_plane[k] = plane(c.out, static_cast<int>(p));
            ws.res_plane[k] = in_res ? plane(c.out, static_cast<int>(p)) : nullptr;
            ++k;
          }
          if (in_res) ++jj;
        }
      }
    } else {
      size_t i = 0, j = 0;
      while (i < kept.size() || j < nr) {
        const int a = i < kept.size() ? kept[i] : INT32_MAX;
        const int r = j < nr ? (*res_act)[j] : INT32_MAX;
        const int pos = static_cast<int>(out_act.size());
        if (a <= r) {
          out_act.push_back(a);
          ws.out_real[nk] = a;
          ws.out_plane[nk] = plane(c.out, pos);
          ws.res_plane[nk] = (a == r) ? plane(c.res, static_cast<int>(j)) : nullptr;
          ++nk;
          ++i;
          if (a == r) ++j;
        } else {
          // Channel only in the residual: out = relu?(res).
          out_act.push_back(r);
          const Buffer& br = P.buffers_[c.res];
          sums[r] = plane_copy(P.isa_, interior(c.res, static_cast<int>(j)), br.Wp, interior(c.out, pos), bo.Wp,
                               bo.H, bo.W, c.relu);
          ++j;
        }
      }
    }
    ws.sums_valid[c.out] = 1;
    if (nk == 0) return;
    // Channel groups of near-equal size up to the kernel's register-tile height.
    const int ng =
        conv_make_groups(nk, conv_max_group(P.isa_, c.vw, c.pairs), ws.group_start.data(), ws.group_size.data());
    ConvCall call;
    call.n_in = n_in;
    call.in_real = in_act.data();
    call.w = c.w;
    call.w_ostride = static_cast<int64_t>(c.I) * c.kh * c.kw;
    call.n_vec = static_cast<int>(c.out_off.size());
    call.in_off = c.in_off.data();
    call.out_off = c.out_off.data();
    call.res_off = c.res >= 0 ? c.res_off.data() : nullptr;
    call.lanes = c.lanes.data();
    call.out_real = ws.out_real.data();
    call.out_plane = ws.out_plane.data();
    call.res_plane = c.res >= 0 ? ws.res_plane.data() : nullptr;
    call.bias = c.bias;
    call.relu = c.relu;
    call.sums = sums.data();
    call.vsums = ws.vsums;
    call.group_start = ws.group_start.data();
    call.group_size = ws.group_size.data();
    call.vw = c.vw;
    call.stride2 = c.stride2;
    call.use_asm = P.asm_;
    call.pairs = c.pairs;
    call.out_wp = bo.Wp;
    call.res_wp = c.res >= 0 ? P.buffers_[c.res].Wp : 0;
    if (c.direct) {
      call.in = ws.buf_data[c.in];
      call.cstride = bi.plane;
      call.kh = c.kh;
      call.kw = c.kw;
      call.rs = bi.Wp;
    } else {
      im2col(c, n_in);
      const int64_t tap = static_cast<int64_t>(bo.H) * c.col_rows;
      call.in = ws.col;
      call.cstride = tap * c.kh * c.kw;
      call.kh = c.kh * c.kw;
      call.kw = 1;
      call.rs = tap;
    }
    // Split channel groups across threads only when the conv is big enough to repay the fork/join
    // (about 1 µs): splitting every conv made the gated ResNet-56 at batch 1 slower on 2 threads
    // than on 1.
    const int64_t work = static_cast<int64_t>(nk) * n_in * c.kh * c.kw * bo.H * bo.W;
    if (pfor && ng > 1 && work >= kParallelMinMacs) {
      (*pfor)(0, ng, 1, [&](int64_t g0, int64_t g1) {
        ConvCall part = call;
        part.g_begin = static_cast<int>(g0);
        part.g_end = static_cast<int>(g1);
        conv_run(P.isa_, part);
      });
    } else {
      call.g_begin = 0;
      call.g_end = ng;
      conv_run(P.isa_, call);
    }
  }

  void im2col(const ConvOp& c, int n_in) {
    // col[c][ky][kx][y][x'] (rows padded to col_rows) from the padded input planes.
    const Buffer &bi = P.buffers_[c.in], &bo = P.buffers_[c.out];
    Im2colCall a;
    a.in = ws.buf_data[c.in];
    a.plane = bi.plane;
    a.border = bi.B;
    a.hi = bi.H;
    a.wi = bi.W;
    a.wp = bi.Wp;
    a.n_in = n_in;
    a.kh = c.kh;
    a.kw = c.kw;
    a.sh = c.sh;
    a.sw = c.sw;
    a.ph = c.ph;
    a.pw = c.pw;
    a.dh = c.dh;
    a.dw = c.dw;
    a.ho = bo.H;
    a.wo = bo.W;
    a.col_rows = c.col_rows;
    a.col = ws.col;
    conv_im2col(P.isa_, a);
  }

  void pool(const PoolOp& p) {
    const Buffer &bi = P.buffers_[p.in], &bo = P.buffers_[p.out];
    ws.active[p.out] = ws.active[p.in];
    ws.sums_valid[p.out] = 0;
    const int n = static_cast<int>(ws.active[p.in].size());
    // Max pooling of values >= 0 (ReLU outputs) whose windows stay inside the zero border:
    // vector kernels, exact (a padded 0 never exceeds the window's max).
    if (p.max && bi.nonneg && p.ph <= bi.B && p.pw <= bi.B && (bo.H - 1) * p.sh - p.ph + p.kh <= bi.H + bi.B &&
        (bo.W - 1) * p.sw - p.pw + p.kw <= bi.W + bi.B) {
      PoolCall pc;
      pc.in = interior(p.in, 0);
      pc.in_cstride = bi.plane;
      pc.in_wp = bi.Wp;
      pc.out = interior(p.out, 0);
      pc.out_cstride = bo.plane;
      pc.out_wp = bo.Wp;
      pc.n = n;
      pc.kh = p.kh;
      pc.kw = p.kw;
      pc.sh = p.sh;
      pc.sw = p.sw;
      pc.ph = p.ph;
      pc.pw = p.pw;
      pc.ho = bo.H;
      pc.wo = bo.W;
      if (pool_max_nonneg(P.isa_, pc)) return;
    }
    for (int ci = 0; ci < n; ++ci) {
      const float* src = interior(p.in, ci);
      float* dst = interior(p.out, ci);
      for (int y = 0; y < bo.H; ++y)
        for (int x = 0; x < bo.W; ++x) {
          const int y0 = y * p.sh - p.ph, x0 = x * p.sw - p.pw;
          const int ya = std::max(y0, 0), yb = std::min(y0 + p.kh, bi.H);
          const int xa = std::max(x0, 0), xb = std::min(x0 + p.kw, bi.W);
          float r;
          if (p.max) {
            r = -INFINITY;
            for (int yy = ya; yy < yb; ++yy)
              for (int xx = xa; xx < xb; ++xx) {
                const float v = src[yy * bi.Wp + xx];
                r = (v > r || std::isnan(v)) ? v : r;
              }
          } else {
            float s = 0.f;
            for (int yy = ya; yy < yb; ++yy)
              for (int xx = xa; xx < xb; ++xx) s += src[yy * bi.Wp + xx];
            int div;
            if (p.divisor > 0) div = p.divisor;
            else if (p.count_include_pad)
              div = (std::min(y0 + p.kh, bi.H + p.ph) - y0) * (std::min(x0 + p.kw, bi.W + p.pw) - x0);
            else div = (yb - ya) * (xb - xa);
            r = s / static_cast<float>(div);
          }
          dst[y * bo.Wp + x] = r;
        }
    }
  }

  void linear(const LinearOp& l) {
    const Buffer &bi = P.buffers_[l.in], &bo = P.buffers_[l.out];
    const auto& act = ws.active[l.in];
    const int hw = bi.H * bi.W;
    auto& out_act = ws.active[l.out];
    out_act.resize(bo.C);
    ws.sums_valid[l.out] = 0;
    for (int o = 0; o < l.out_features; ++o) {
      float a = 0.f;
      const float* w = l.w + static_cast<int64_t>(o) * l.in_features;
      for (size_t i = 0; i < act.size(); ++i) {
        const float* src = interior(l.in, static_cast<int>(i));
        const float* wc = w + static_cast<int64_t>(act[i]) * hw;
        for (int y = 0; y < bi.H; ++y)
          for (int x = 0; x < bi.W; ++x) a += wc[y * bi.W + x] * src[y * bi.Wp + x];
      }
      if (l.b) a += l.b[o];
      if (l.relu) a = a > 0.f ? a : 0.f;
      out_act[o] = o;
      *interior(l.out, o) = a;
    }
  }

  void concat(const ConcatOp& c) {
    const Buffer& bo = P.buffers_[c.out];
    auto& out_act = ws.active[c.out];
    out_act.clear();
    bool sums_ok = true;
    for (size_t k = 0; k < c.ins.size(); ++k) {
      const int b = c.ins[k];
      const Buffer& bi = P.buffers_[b];
      const auto& act = ws.active[b];
      sums_ok = sums_ok && ws.sums_valid[b];
      for (size_t i = 0; i < act.size(); ++i) {
        const int pos = static_cast<int>(out_act.size());
        out_act.push_back(act[i] + c.offsets[k]);
        const float* s = interior(b, static_cast<int>(i));
        float* d = interior(c.out, pos);
        for (int y = 0; y < bo.H; ++y) std::memcpy(d + y * bo.Wp, s + y * bi.Wp, sizeof(float) * bo.W);
      }
    }
    if (sums_ok) {
      auto& s = ws.sums[c.out];
      for (size_t k = 0; k < c.ins.size(); ++k) {
        const auto& si = ws.sums[c.ins[k]];
        std::copy(si.begin(), si.end(), s.begin() + c.offsets[k]);
      }
    }
    ws.sums_valid[c.out] = sums_ok;
  }

  void add(const AddOp& a) {
    const Buffer& bo = P.buffers_[a.out];
    const auto &aa = ws.active[a.a], &ab = ws.active[a.b];
    auto& out_act = ws.active[a.out];
    out_act.clear();
    size_t i = 0, j = 0;
    while (i < aa.size() || j < ab.size()) {
      const int x = i < aa.size() ? aa[i] : INT32_MAX;
      const int y = j < ab.size() ? ab[j] : INT32_MAX;
      const int pos = static_cast<int>(out_act.size());
      const float* pa = x <= y ? interior(a.a, static_cast<int>(i)) : nullptr;
      const float* pb = y <= x ? interior(a.b, static_cast<int>(j)) : nullptr;
      const int wa = P.buffers_[a.a].Wp, wb = P.buffers_[a.b].Wp;
      float* d = interior(a.out, pos);
      for (int yy = 0; yy < bo.H; ++yy)
        for (int xx = 0; xx < bo.W; ++xx) {
          float v = (pa ? pa[yy * wa + xx] : 0.f) + (pb ? pb[yy * wb + xx] : 0.f);
          if (a.relu) v = v > 0.f ? v : 0.f;
          d[yy * bo.Wp + xx] = v;
        }
      out_act.push_back(std::min(x, y));
      if (x <= y) ++i;
      if (y <= x) ++j;
    }
    ws.sums_valid[a.out] = 0;
  }

  void affine(const AffineOp& a) {
    const Buffer &bi = P.buffers_[a.in], &bo = P.buffers_[a.out];
    const auto& act = ws.active[a.in];
    auto& out_act = ws.active[a.out];
    out_act.clear();
    size_t i = 0;
    for (int c = 0; c < bo.C; ++c) {
      const bool live = i < act.size() && act[i] == c;
      float* d = interior(a.out, static_cast<int>(out_act.size()));
      if (!live) {
        float v = a.shift[c];
        if (a.relu) v = v > 0.f ? v : 0.f;
        if (v == 0.f) continue;  // stays inactive (exactly zero)
        for (int y = 0; y < bo.H; ++y)
          for (int x = 0; x < bo.W; ++x) d[y * bo.Wp + x] = v;
      } else {
        const float* s = interior(a.in, static_cast<int>(i));
        for (int y = 0; y < bo.H; ++y)
          for (int x = 0; x < bo.W; ++x) {
            float v = s[y * bi.Wp + x] * a.scale[c] + a.shift[c];
            if (a.relu) v = v > 0.f ? v : 0.f;
            d[y * bo.Wp + x] = v;
          }
        ++i;
      }
      out_act.push_back(c);
    }
    ws.sums_valid[a.out] = 0;
  }

  void shortcut(const ShortcutOp& s) {
    const Buffer &bi = P.buffers_[s.in], &bo = P.buffers_[s.out];
    const auto& act = ws.active[s.in];
    auto& out_act = ws.active[s.out];
    out_act.resize(act.size());
    for (size_t i = 0; i < act.size(); ++i) {
      out_act[i] = act[i] + s.pad;
      const float* src = interior(s.in, static_cast<int>(i));
      float* d = interior(s.out, static_cast<int>(i));
      if (s.stride == 2 && subsample2(P.isa_, src, bi.Wp, d, bo.Wp, bo.H, bo.W)) continue;
      for (int y = 0; y < bo.H; ++y)
        for (int x = 0; x < bo.W; ++x) d[y * bo.Wp + x] = src[(y * s.stride) * bi.Wp + x * s.stride];
    }
    ws.sums_valid[s.out] = 0;
  }

  void output(float* out) {
    const int b = P.output_;
    const Buffer& B = P.buffers_[b];
    const int64_t hw = static_cast<int64_t>(B.H) * B.W;
    std::fill(out, out + B.C * hw, 0.f);
    const auto& act = ws.active[b];
    for (size_t i = 0; i < act.size(); ++i) {
      const float* s = interior(b, static_cast<int>(i));
      float* d = out + act[i] * hw;
      for (int y = 0; y < B.H; ++y) std::memcpy(d + y * B.W, s + y * B.Wp, sizeof(float) * B.W);
    }
  }

  void dispatch(const Op& op, float* path) {
    switch (op.kind) {
      case kConv: conv(op.index); break;
      case kGate: gate(P.gates_[op.index], path); break;
      case kMaxPool:
      case kAvgPool: pool(P.pools_[op.index]); break;
      case kLinear: linear(P.linears_[op.index]); break;
      case kConcat: concat(P.concats_[op.index]); break;
      case kAdd: add(P.adds_[op.index]); break;
      case kAffine: affine(P.affines_[op.index]); break;
      case kShortcut: shortcut(P.shortcuts_[op.index]); break;
    }
  }

  void run_sample(const float* x, float* out, float* path) {
    std::fill(ws.sums_valid.begin(), ws.sums_valid.end(), 0);
    const bool prof = P.profiling_;
    auto t_prev = prof ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    set_input(x);
    for (size_t i = 0; i < P.ops_.size(); ++i) {
      dispatch(P.ops_[i], path);
      if (prof) {
        const auto t = std::chrono::steady_clock::now();
        std::lock_guard<std::mutex> lk(P.pool_mu_);
        P.op_ns_[i] += std::chrono::duration<double, std::nano>(t - t_prev).count();
        t_prev = t;
      }
    }
    output(out);
  }
};

void Plan::run(const float* x, int64_t batch, float* logits, float* path, bool open_gates,
               const ParallelFor& pfor) const {
  const int64_t in_n = input_numel(), out_n = output_numel();
  auto one = [&](Workspace& ws, int64_t b, const ParallelFor* inner) {
    Executor ex{*this, ws, inner, open_gates};
    ex.run_sample(x + b * in_n, logits + b * out_n, path ? path + b * path_len_ : nullptr);
  };
  if (batch == 1 || !pfor) {
    auto ws = acquire();
    try {
      for (int64_t b = 0; b < batch; ++b) one(*ws, b, pfor ? &pfor : nullptr);
    } catch (...) {
      release(std::move(ws));
      throw;
    }
    release(std::move(ws));
    return;
  }
  pfor(0, batch, 1, [&](int64_t b0, int64_t b1) {
    auto ws = acquire();
    for (int64_t b = b0; b < b1; ++b) one(*ws, b, nullptr);
    release(std::move(ws));
  });
}

}  // namespace dyninfer
