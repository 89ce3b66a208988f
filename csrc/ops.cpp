// ATen adapter: validates arguments, owns weight tensors and registers the dyninfer ops and the
// plan class with TORCH_LIBRARY (one schema per op, declared here only).
#include <ATen/Parallel.h>
#include <torch/custom_class.h>
#include <torch/library.h>
#include <torch/script.h>

#include <chrono>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/conv.h"
#include "kernels/cpu_features.h"
#include "compiled_plan.h"
#include "kernels/plan.h"

namespace dyninfer {

namespace {

ParallelFor aten_parallel_for() {
  return [](int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    at::parallel_for(begin, end, grain, fn);
  };
}

}  // namespace

CompiledPlan::CompiledPlan(std::vector<int64_t> meta_, std::vector<int64_t> ops_, std::vector<at::Tensor> weights_,
                           std::vector<std::string> names_)
    : meta(std::move(meta_)), ops(std::move(ops_)), names(std::move(names_)) {
  std::vector<WeightRef> refs;
  for (size_t i = 0; i < weights_.size(); ++i) {
    const at::Tensor& w = weights_[i];
    TORCH_CHECK_VALUE(w.device().is_cpu() && w.scalar_type() == at::kFloat,
                      "dyninfer plan: weight ", i, " must be a float32 CPU tensor, got ", w.scalar_type(), " on ",
                      w.device());
    // shared, not cloned: the planner's tensors are already the engine's own copies, so a compiled
    // model holds its weights once (the plan and CompiledModel.spec see the same memory)
    weights.push_back(w.detach().contiguous());
    refs.push_back({weights.back().data_ptr<float>(), weights.back().numel()});
  }
  try {
    plan = std::make_unique<Plan>(meta, ops, std::move(refs), names, detect_isa());
  } catch (const PlanError& e) {
    TORCH_CHECK_VALUE(false, "dyninfer plan is invalid: ", e.what());
  }
}

std::tuple<at::Tensor, at::Tensor> CompiledPlan::run(const at::Tensor& x, bool return_path, bool open_gates) const {
  const Buffer& in = plan->input_buffer();
  TORCH_CHECK_VALUE(x.dim() == 4, "dyninfer engine: expected input of shape (B, ", in.C, ", ", in.H, ", ", in.W,
                    "), got a ", x.dim(), "-d tensor of shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) == in.C && x.size(2) == in.H && x.size(3) == in.W,
                    "dyninfer engine: expected input of shape (B, ", in.C, ", ", in.H, ", ", in.W, "), got ",
                    x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "dyninfer engine: expected float32 input, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.device().is_cpu(), "dyninfer engine: expected a CPU tensor, got one on ", x.device());
  const at::Tensor xc = x.detach().contiguous();
  TORCH_CHECK_VALUE(all_finite(xc.data_ptr<float>(), xc.numel()), "dyninfer engine: input contains NaN or Inf values");
  const int64_t batch = xc.size(0);
  at::Tensor out = at::empty({batch, plan->output_numel()}, xc.options());
  at::Tensor path = at::empty({return_path ? batch : 0, plan->path_len()}, xc.options());
  if (batch == 0) return {out, path};
  try {
    plan->run(xc.data_ptr<float>(), batch, out.data_ptr<float>(), return_path ? path.data_ptr<float>() : nullptr,
              open_gates, aten_parallel_for());
  } catch (const PlanError& e) {
    TORCH_CHECK(false, "dyninfer engine: ", e.what());
  } catch (const std::bad_alloc&) {
    TORCH_CHECK(false, "dyninfer engine: out of memory for the workspace");
  }
  return {out, path};
}

at::Tensor fma_peak(int64_t iters, int64_t width) {
  TORCH_CHECK_VALUE(iters > 0, "fma_peak: iters must be positive, got ", iters);
  TORCH_CHECK_VALUE(width == 0 || width == 8 || width == 16, "fma_peak: width must be 0 (best), 8 or 16, got ", width);
  const auto t0 = std::chrono::steady_clock::now();
  const double flops = width == 0 ? fma_peak_probe(detect_isa(), iters) : fma_peak_probe_width(static_cast<int>(width), iters);
  const auto t1 = std::chrono::steady_clock::now();
  const double s = std::chrono::duration<double>(t1 - t0).count();
  return at::tensor({flops / s / 1e9}, at::kDouble);
}

std::tuple<at::Tensor, at::Tensor> run_plan(const c10::intrusive_ptr<CompiledPlan>& plan, const at::Tensor& x,
                                             bool return_path, bool open_gates) {
  return plan->run(x, return_path, open_gates);
}

}  // namespace dyninfer

TORCH_LIBRARY(dyninfer, m) {
  m.class_<dyninfer::CompiledPlan>("Plan")
      .def(torch::init<std::vector<int64_t>, std::vector<int64_t>, std::vector<at::Tensor>,
                       std::vector<std::string>>())
      .def("run", &dyninfer::CompiledPlan::run)
      .def("isa", [](const c10::intrusive_ptr<dyninfer::CompiledPlan>& self) {
        return std::string(dyninfer::isa_name(self->plan->isa()));
      })
      .def("set_precision", [](const c10::intrusive_ptr<dyninfer::CompiledPlan>& self,
                               const std::string& precision) {
        try {
          self->plan->set_precision(precision);
        } catch (const dyninfer::PlanError& e) {
          TORCH_CHECK_VALUE(false, "dyninfer: ", e.what());
        }
      })
      .def("precision", [](const c10::intrusive_ptr<dyninfer::CompiledPlan>& self) { return self->plan->precision(); })
      .def("bf16_convs", [](const c10::intrusive_ptr<dyninfer::CompiledPlan>& self) {
        return static_cast<int64_t>(self->plan->bf16_convs());
      })
      .def("path_len", [](const c10::intrusive_ptr<dyninfer::CompiledPlan>& self) { return self->plan->path_len(); })
      .def("conv_names", [](const c10::intrusive_ptr<dyninfer::CompiledPlan>& self) { return self->names; })
      .def("set_profiling",
           [](const c10::intrusive_ptr<dyninfer::CompiledPlan>& self, bool on) { self->plan->set_profiling(on); })
      .def("op_times_ns", &dyninfer::CompiledPlan::op_times)
      .def("op_names", [](const c10::intrusive_ptr<dyninfer::CompiledPlan>& self) { return self->plan->op_names(); })
      .def("conv_vector_widths",
           [](const c10::intrusive_ptr<dyninfer::CompiledPlan>& self) {
             std::vector<int64_t> v;
             for (int i = 0; i < self->plan->n_convs(); ++i) v.push_back(self->plan->conv_vw(i));
             return v;
           })
      .def_pickle(
          [](const c10::intrusive_ptr<dyninfer::CompiledPlan>& self)
              -> std::tuple<std::vector<int64_t>, std::vector<int64_t>, std::vector<at::Tensor>,
                            std::vector<std::string>> {
            return {self->meta, self->ops, self->weights, self->names};
          },
          [](std::tuple<std::vector<int64_t>, std::vector<int64_t>, std::vector<at::Tensor>, std::vector<std::string>>
                 s) {
            return c10::make_intrusive<dyninfer::CompiledPlan>(std::get<0>(s), std::get<1>(s), std::get<2>(s),
                                                                std::get<3>(s));
          });
  m.def("run(__torch__.torch.classes.dyninfer.Plan plan, Tensor x, bool return_path=False, bool open_gates=False) -> (Tensor, Tensor)",
        &dyninfer::run_plan);
  m.def("fma_peak(int iters, int width=0) -> Tensor", &dyninfer::fma_peak);
}
