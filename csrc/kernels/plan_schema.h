// The plan's wire layout, declared once. The C++ parser (plan_build.cpp) indexes fields through the enums
// generated here, and the Python planner encodes its typed ops through the same declaration, which
// dyninfer._C.plan_schema() exposes: adding a field is one edit here plus its use on both sides.
//
// meta: [n_buffers, DYNINFER_BUFFER_FIELDS * n_buffers, DYNINFER_PLAN_FIELDS, gate sizes]
// ops:  [kind, n_fields, fields...] per op, fields in the order declared below; an op whose list
//       ends in a variadic field (concat's inputs) has that many more values.
#pragma once

// The version of this layout; artefacts record it and loaders refuse another (csrc/runtime). Bump it
// with any change below that alters the wire layout.
#define DYNINFER_PLAN_VERSION 4  // 2: conv's unused 18th field ("reserved", always 1) removed
                                 // 3: conv's relu became act (0 none, 1 relu, 2 clamp to act_bounds);
                                 //    conv groups, follow and act_bounds added; act 3 = hardswish,
                                 //    4 = SiLU;
                                 //    linear's relu became act (0, 1, 3), its weight is stored
                                 //    transposed; the se op
                                 // 4: gate's boost (kept channels scaled by 2 sigmoid(logit))

// One activation buffer: channels, height, width, zero border, memory slot, values known >= 0.
#define DYNINFER_BUFFER_FIELDS(F) F(C) F(H) F(W) F(border) F(slot) F(nonneg)

// After the buffers: the input and output buffer, then the number of gates (their sizes follow).
#define DYNINFER_PLAN_FIELDS(F) F(input) F(output) F(gate_count)

// Weight fields hold an index into the plan's weight list; buffer fields a buffer index.
// conv: act 0 none, 1 ReLU, 2 clamp to [lo, hi] (act_bounds: a weight of 2 floats, else -1),
// 3 hardswish x * min(max(x + 3, 0), 6) / 6, 4 SiLU x / (1 + e^-x);
// groups as in PyTorch (weight O x I/groups x kh x kw); follow 1 (depthwise, groups = I = O, no gate):
// output channel c is computed only where input channel c is live, as its producer's gate decided.
#define DYNINFER_CONV_FIELDS(F)                                                                          \
  F(input) F(output) F(residual) F(weight) F(bias) F(out_channels) F(in_channels) F(kh) F(kw) F(sh) F(sw) \
  F(ph) F(pw) F(dh) F(dw) F(act) F(gate) F(groups) F(follow) F(act_bounds)
// gate: boost 1: the conv it gates scales each kept channel by 2 sigmoid(logit) (before the residual
// add when the conv has one, else after its activation, where the gate sits in the unit); 0: masks only.
#define DYNINFER_GATE_FIELDS(F)                                                                                      \
  F(input) F(gate) F(fc1_weight) F(fc1_bias) F(fc2_weight) F(fc2_bias) F(in_channels) F(hidden) F(out_channels) \
  F(force_k) F(boost)
#define DYNINFER_MAXPOOL_FIELDS(F) F(input) F(output) F(kh) F(kw) F(sh) F(sw) F(ph) F(pw)
#define DYNINFER_AVGPOOL_FIELDS(F) \
  F(input) F(output) F(kh) F(kw) F(sh) F(sw) F(ph) F(pw) F(count_include_pad) F(divisor)
// linear: weight transposed (in_features x out_features); act 0, 1 ReLU, 3 hardswish
#define DYNINFER_LINEAR_FIELDS(F) F(input) F(output) F(weight) F(bias) F(act)
// Squeeze-and-excitation: out = x * gate(fc2(act1(fc1(GAP(x))))) per channel; fc weights transposed
// (C x hidden, hidden x C) as the gate op's; act1 0 none / 1 ReLU / 2 SiLU; gate_act 0 hardsigmoid,
// 1 sigmoid.
#define DYNINFER_SE_FIELDS(F) \
  F(input) F(output) F(fc1_weight) F(fc1_bias) F(fc2_weight) F(fc2_bias) F(channels) F(hidden) F(act1) F(gate_act)
#define DYNINFER_CONCAT_FIELDS(F) F(output)  // followed by the input buffers (variadic)
#define DYNINFER_ADD_FIELDS(F) F(a) F(b) F(output) F(relu)
#define DYNINFER_AFFINE_FIELDS(F) F(input) F(output) F(scale) F(shift) F(relu)
#define DYNINFER_SHORTCUT_FIELDS(F) F(input) F(output) F(stride) F(pad_channels)

// OP(name, kind id, fields macro, variadic tail name or empty)
#define DYNINFER_PLAN_OPS(OP)                          \
  OP(conv, 1, DYNINFER_CONV_FIELDS, "")                \
  OP(gate, 2, DYNINFER_GATE_FIELDS, "")                \
  OP(maxpool, 3, DYNINFER_MAXPOOL_FIELDS, "")          \
  OP(avgpool, 4, DYNINFER_AVGPOOL_FIELDS, "")          \
  OP(linear, 5, DYNINFER_LINEAR_FIELDS, "")            \
  OP(concat, 6, DYNINFER_CONCAT_FIELDS, "inputs")      \
  OP(add, 7, DYNINFER_ADD_FIELDS, "")                  \
  OP(affine, 8, DYNINFER_AFFINE_FIELDS, "")            \
  OP(shortcut, 9, DYNINFER_SHORTCUT_FIELDS, "")        \
  OP(se, 10, DYNINFER_SE_FIELDS, "")

namespace dyninfer {
namespace schema {

#define DYNINFER_ENUM_ENTRY(name) name,
// field index enums: schema::conv::kh, schema::gate::hidden, ...; kCount = number of fixed fields
#define DYNINFER_OP_ENUM(op, id, FIELDS, tail) \
  namespace op {                               \
  enum : int { FIELDS(DYNINFER_ENUM_ENTRY) kCount };  \
  constexpr int kKind = id;                    \
  constexpr bool kVariadic = sizeof(tail) > 1; \
  }
DYNINFER_PLAN_OPS(DYNINFER_OP_ENUM)
#undef DYNINFER_OP_ENUM
namespace buffer {
enum : int { DYNINFER_BUFFER_FIELDS(DYNINFER_ENUM_ENTRY) kCount };
}
namespace plan {
enum : int { DYNINFER_PLAN_FIELDS(DYNINFER_ENUM_ENTRY) kCount };
}
#undef DYNINFER_ENUM_ENTRY

}  // namespace schema
}  // namespace dyninfer
