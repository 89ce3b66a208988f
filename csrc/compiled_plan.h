// The TORCH_LIBRARY class dyninfer::Plan (registered in ops.cpp): plan descriptors, owned
// weights and the executable plan. Shared with module.cpp, whose pybind entry point runs a plan
// without TorchScript's method-call machinery.
#pragma once

#include <torch/custom_class.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/plan.h"

namespace dyninfer {

struct CompiledPlan : torch::CustomClassHolder {
  std::vector<int64_t> meta, ops;
  std::vector<at::Tensor> weights;
  std::vector<std::string> names;
  std::unique_ptr<Plan> plan;

  CompiledPlan(std::vector<int64_t> meta_, std::vector<int64_t> ops_, std::vector<at::Tensor> weights_,
               std::vector<std::string> names_);
  // (logits (B, output numel), path (B or 0, path_len)); checks x and refuses NaN/Inf.
  std::tuple<at::Tensor, at::Tensor> run(const at::Tensor& x, bool return_path, bool open_gates) const;
  std::vector<double> op_times() const { return plan->op_times_ns(); }
};

}  // namespace dyninfer
