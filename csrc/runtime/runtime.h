// The torch-free dyninfer runtime: loads a deployment artefact (safetensors container holding the
// plan and its weights; layout below) and runs float32 batches on the kernels in csrc/kernels/.
// Shared by the C API (c_api.h, libdyninfer_rt) and the Python module dyninfer._rt.
//
// Artefact, format "dyninfer-runtime" version 2 (what CompiledModel.save writes):
//   tensors   plan.meta, plan.ops (I64)       the plan as csrc/kernels/plan_schema.h lays it out
//             plan.input_shape (I64 [3])      C, H, W of one sample
//             plan.output_shape (I64 [k])     logits of one sample
//             plan.gate_sizes (I64 [g])       channels of each gate, in path order
//             weight.00000 ... (F32)          the plan's weights, by index
//   metadata  format, format_version, plan_version, gates ("learned" | "open"), weight_count,
//             conv_names, gate_names (newline-separated module paths), digest (sha256 of all of
//             the above, csrc/kernels/digest.h), precision ("fp32" | "bf16"; optional, fp32 when
//             absent; not in the digest: the weights are always the fp32 ones, and a bf16 engine
//             packs its bf16 weights from them at load, on CPUs with AVX512_BF16, else runs fp32),
//             and informational dyninfer_version, isa_at_save.
// Loading checks the container, then the format and versions, then (verify) the digest, and only
// then builds the plan, whose constructor validates every field; nothing runs before all pass.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "../kernels/plan.h"
#include "../kernels/plan_schema.h"
#include "safetensors.h"

namespace dyninfer {

constexpr const char* kRuntimeFormat = "dyninfer-runtime";
constexpr int kRuntimeFormatVersion = 2;
constexpr int kPlanVersion = DYNINFER_PLAN_VERSION;  // the layout of plan_schema.h

struct RtModel {
  std::vector<int64_t> meta, ops, input_shape, output_shape, gate_sizes;
  std::vector<std::vector<int64_t>> weight_shapes;
  std::vector<std::string> conv_names, gate_names;
  bool open_gates = false;
  std::string digest;
  std::string requested_precision = "fp32";  // the artefact's; plan->precision() is what runs
  struct FreeDeleter {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float[], FreeDeleter> arena;  // every weight, 64-byte aligned (aligned_alloc), held once
  std::unique_ptr<Plan> plan;

  int64_t input_numel() const { return plan->input_numel(); }
  int64_t output_numel() const { return plan->output_numel(); }
  int64_t path_len() const { return plan->path_len(); }
};

// Whether ``plan`` can run ``precision`` ("fp32" always; "bf16" with the AVX-512 kernels on a CPU
// with avx512_bf16).
bool precision_supported(const Plan& plan, const std::string& precision);

// Throws ArtefactError (container, format, digest) or PlanError (plan fields) naming what is wrong.
std::unique_ptr<RtModel> load_artefact(const uint8_t* bytes, size_t n, bool verify);
std::unique_ptr<RtModel> load_artefact_file(const std::string& path, bool verify);

// x: (batch, C, H, W) float32 contiguous; logits (batch, output numel); path (batch, path_len) or
// null. threads <= 0: all the machine's cores (OpenMP's default). Refuses NaN/Inf input.
void run_model(const RtModel& m, const float* x, int64_t batch, float* logits, float* path, int threads);

}  // namespace dyninfer
