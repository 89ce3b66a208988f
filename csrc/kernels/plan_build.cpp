// Plan construction: parse the integer descriptors (plan_schema.h), validate every field against
// the input shape, the weights and the op order, assign memory slots, and lay out each conv's
// output vectors for the kernels of this CPU (conv_caps). Execution lives in plan_exec.cpp.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "conv.h"
#include "plan.h"
#include "plan_internal.h"
#include "plan_schema.h"

namespace dyninfer {

using namespace plan_detail;

namespace {
std::string at_op(int i, int kind) { return "op " + std::to_string(i) + " (kind " + std::to_string(kind) + ")"; }

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
                  kShortcut == schema::shortcut::kKind && kSe == schema::se::kKind,
              "OpKind and plan_schema.h disagree");
// Max and average pooling share one parser: max pooling's fields are average pooling's first ones
// (unary + compares the two enums' values as ints).
static_assert(+schema::maxpool::input == +schema::avgpool::input && +schema::maxpool::output == +schema::avgpool::output &&
                  +schema::maxpool::kh == +schema::avgpool::kh && +schema::maxpool::kw == +schema::avgpool::kw &&
                  +schema::maxpool::sh == +schema::avgpool::sh && +schema::maxpool::sw == +schema::avgpool::sw &&
                  +schema::maxpool::ph == +schema::avgpool::ph && +schema::maxpool::pw == +schema::avgpool::pw,
              "max pooling's fields must be a prefix of average pooling's");

// ---------------------------------------------------------------------------------------------
// Construction

Plan::Plan(const std::vector<int64_t>& meta, const std::vector<int64_t>& ops, std::vector<WeightRef> weights,
           std::vector<std::string> names, Isa isa)
    : weights_(std::move(weights)), isa_(isa), asm_(asm_kernels_enabled()), winograd_(winograd_enabled()) {
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
  gate_boost_.assign(gate_sizes_.size(), 0);
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
        c.act = static_cast<int>(fld(schema::conv::act, "act", 0, 4));
        c.gate = fld(schema::conv::gate, "gate", -1, static_cast<int64_t>(gate_sizes_.size()) - 1);
        c.groups = static_cast<int>(fld(schema::conv::groups, "groups", 1, kMaxDim));
        c.follow = fld(schema::conv::follow, "follow", 0, 1) != 0;
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
        if (c.I % c.groups || c.O % c.groups)
          throw PlanError("conv '" + c.name + "': groups " + std::to_string(c.groups) + " do not divide " +
                          std::to_string(c.I) + " -> " + std::to_string(c.O) + " channels");
        if (c.follow && (c.groups != c.I || c.I != c.O || c.gate >= 0 || c.res >= 0))
          throw PlanError("conv '" + c.name + "': follow needs a depthwise conv (groups = in = out channels) "
                          "without gate or residual");
        if (c.act >= 2 && c.res >= 0)
          throw PlanError("conv '" + c.name + "': only ReLU can follow a residual add in a conv's epilogue");
        c.w = weight(f[schema::conv::weight], static_cast<int64_t>(c.O) * (c.I / c.groups) * c.kh * c.kw, opi,
                     "conv weight");
        c.bias = weight(f[schema::conv::bias], c.O, opi, "conv bias");
        if (c.act == 2) {
          const float* b = weight(f[schema::conv::act_bounds], 2, opi, "conv act_bounds");
          c.act_lo = b[0];
          c.act_hi = b[1];
          if (!(c.act_lo <= c.act_hi))
            throw PlanError("conv '" + c.name + "': clamp bounds [" + std::to_string(c.act_lo) + ", " +
                            std::to_string(c.act_hi) + "] are empty or not numbers");
        } else if (f[schema::conv::act_bounds] != -1) {
          throw PlanError(where + ": act_bounds must be -1 unless act is 2 (clamp)");
        }
        // Stride-1 convs read the padded planes in place when the borders cover the padding.
        c.direct = c.sh == 1 && c.sw == 1 && c.dh == 1 && c.dw == 1 && c.ph <= bi.B && c.pw <= bi.B;
        // Stride-2 convs read the padded planes in place too where the kernels can load
        // stride-2 vectors (AVX-512: two loads + one permute), else through a column buffer. Not
        // 1x1 ones: their column buffer is just the subsampled input (one pass over the input
        // channels), after which every output channel runs the stride-1 1x1 kernel, where the
        // direct path repeats the two loads and the permute for every group of 8 output channels
        // (ResNet-50's downsampling 1x1s ran at 43 GFLOP/s, a quarter of the FMA peak).
        c.stride2 = conv_caps(isa_).stride2_direct && c.sh == 2 && c.sw == 2 && c.dh == 1 && c.dw == 1 && c.ph <= bi.B &&
                    c.pw <= bi.B && !(c.kh == 1 && c.kw == 1);
        if (c.stride2) c.direct = true;
        if (!c.direct && static_cast<int64_t>(c.I / c.groups) * c.kh * c.kw * ho * (wo + 16) > kMaxBufferFloats)
          throw PlanError("conv '" + c.name + "': its column buffer would exceed " + std::to_string(kMaxBufferFloats) +
                          " floats");
        build_conv_vectors(c);
        c.max_group = conv_max_group(isa_, c.vw, c.pairs, static_cast<int>(c.out_off.size()));
        if (winograd_ && conv_winograd_lanes(isa_) > 0 && c.direct && !c.stride2 && c.groups == 1 && c.kh == 3 &&
            c.kw == 3 && c.ph == 1 && c.pw == 1 && wino_pays(c.I, c.O, ho, wo) && bi.B >= 1 && bi.H == ho && bi.W == wo) {
          c.wino_u.resize(static_cast<size_t>(16) * c.O * c.I);
          wino_weights(c.w, c.O, c.I, c.wino_u.data());
          col_floats_ = std::max(col_floats_, wino_scratch_floats(ho, wo, c.I, c.O, conv_winograd_lanes(isa_)) + kSlack);
        }
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
        g.boost = fld(schema::gate::boost, "boost", 0, 1) == 1;
        if (gate_sizes_[g.gate] != g.N || g.C != buffers_[g.in].C)
          throw PlanError("gate op " + std::to_string(opi) + ": sizes C " + std::to_string(g.C) + ", N " +
                          std::to_string(g.N) + " do not match its input buffer (" + std::to_string(buffers_[g.in].C) +
                          " channels) and gate " + std::to_string(g.gate) + " (" +
                          std::to_string(gate_sizes_[g.gate]) + ")");
        if (gate_done[g.gate]) throw PlanError("gate op " + std::to_string(opi) + ": gate " + std::to_string(g.gate) + " runs twice");
        gate_done[g.gate] = 1;
        gate_boost_[g.gate] = g.boost;
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
        l.wt = weight(f[schema::linear::weight], static_cast<int64_t>(l.out_features) * l.in_features, opi, "linear weight");
        max_linear_in_ = std::max(max_linear_in_, l.in_features);
        max_linear_out_ = std::max(max_linear_out_, l.out_features);
        l.b = weight(f[schema::linear::bias], l.out_features, opi, "linear bias");
        l.act = static_cast<int>(fld(schema::linear::act, "act", 0, 3));
        if (l.act == 2) throw PlanError("linear op " + std::to_string(opi) + ": act 2 (clamp) is not a linear activation");
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
      case kSe: {
        SeOp e;
        e.in = buf_ok(f[schema::se::input], opi, "input");
        e.out = out_ok(f[schema::se::output], opi);
        const Buffer &bi = buffers_[e.in], &bo = buffers_[e.out];
        e.C = static_cast<int>(fld(schema::se::channels, "channels", 1, kMaxDim));
        e.hidden = static_cast<int>(fld(schema::se::hidden, "hidden", 1, kMaxDim));
        e.act1 = static_cast<int>(fld(schema::se::act1, "act1", 0, 2));
        e.gate_act = static_cast<int>(fld(schema::se::gate_act, "gate_act", 0, 1));
        if (e.C != bi.C || bi.C != bo.C || bi.H != bo.H || bi.W != bo.W || bi.slot == bo.slot)
          throw PlanError("se op " + std::to_string(opi) + ": " + std::to_string(e.C) +
                          " channels; input and output buffers must be distinct and of that shape");
        if (e.hidden > max_hidden_) max_hidden_ = e.hidden;
        e.w1 = weight(f[schema::se::fc1_weight], static_cast<int64_t>(e.C) * e.hidden, opi, "se fc1 weight");
        e.b1 = weight(f[schema::se::fc1_bias], e.hidden, opi, "se fc1 bias");
        e.w2 = weight(f[schema::se::fc2_weight], static_cast<int64_t>(e.hidden) * e.C, opi, "se fc2 weight");
        e.b2 = weight(f[schema::se::fc2_bias], e.C, opi, "se fc2 bias");
        ops_.push_back({kSe, static_cast<int>(ses_.size())});
        ses_.push_back(e);
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
      case kSe: op_names_.push_back("se"); break;
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
  if (!c.direct) col_floats_ = std::max(col_floats_, static_cast<int64_t>(c.I / c.groups) * c.kh * c.kw * ho * wv + kSlack);
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

bool Plan::supports(const std::string& precision) const {
  return precision == "fp32" || (precision == "bf16" && isa_ == Isa::kAvx512 && bf16_kernels_supported());
}

void Plan::set_precision(const std::string& precision) {
  if (precision != "fp32" && precision != "bf16")
    throw PlanError("set_precision: precision must be 'fp32' or 'bf16', got '" + precision + "'");
  if (!supports(precision))
    throw PlanError(std::string("set_precision: bf16 needs the AVX512_BF16 instructions (cpu flag avx512_bf16) and "
                                "the AVX-512 kernels; this plan runs ") + isa_name(isa_) +
                    (bf16_kernels_supported() ? "" : " on a CPU without avx512_bf16"));
  precision_ = precision;
  bf16_floats_ = 0;
  for (ConvOp& c : convs_) {
    c.bf16_w.clear();
    c.wino_u16.clear();
    if (precision != "bf16" || c.groups != 1) continue;
    const int kk = c.kh * c.kw;
    c.bf16_w.resize(static_cast<size_t>(c.O) * ((c.I + 1) / 2) * kk);
    bf16_pack_weights(c.w, c.O, c.I, kk, c.bf16_w.data());
    // per input channel: its padded plane, or (column buffer) its kh*kw tap planes of the output
    const int64_t per_channel =
        c.direct ? buffers_[c.in].plane : static_cast<int64_t>(kk) * buffers_[c.out].H * c.col_rows;
    bf16_floats_ = std::max(bf16_floats_, static_cast<int64_t>((c.I + 1) / 2) * per_channel + 64);
    if (!c.wino_u.empty()) {  // V as pair planes, then M: wino_scratch_floats over the pairs
      c.wino_u16.resize(static_cast<size_t>(16) * c.O * ((c.I + 1) / 2));
      bf16_pack_weights(c.wino_u.data(), 16 * c.O, c.I, 1, c.wino_u16.data());
      const Buffer& bo = buffers_[c.out];
      bf16_floats_ = std::max(bf16_floats_, wino_scratch_floats(bo.H, bo.W, (c.I + 1) / 2, c.O, 16) + 64);
    }
  }
}

int Plan::bf16_convs() const {
  int n = 0;
  for (const ConvOp& c : convs_) n += c.bf16_w.empty() ? 0 : 1;
  return n;
}

}  // namespace dyninfer
