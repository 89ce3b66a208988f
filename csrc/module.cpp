// Python module dyninfer._C: importing it registers the dyninfer ops (TORCH_LIBRARY in ops.cpp).
#include <torch/extension.h>
#include <torch/script.h>

#include "compiled_plan.h"
#include "kernels/conv.h"
#include "kernels/cpu_features.h"
#include "kernels/digest.h"
#include "kernels/plan_schema.h"

namespace {

// engine(x) from Python: the plan's run, reached straight from pybind. A TorchScript method call
// (plan.run(...)) goes through torch::jit::runAndInsertCall and the dispatcher op boxes its
// arguments; this entry point costs a cast and a refcount (benchmarks/call_overhead.py compares
// the three). The GIL is released while the kernels run, so Python threads sharing one engine
// compute in parallel.
std::tuple<at::Tensor, at::Tensor> run(const py::object& plan, const at::Tensor& x, bool return_path,
                                       bool open_gates) {
  c10::intrusive_ptr<dyninfer::CompiledPlan> p;
  try {
    p = c10::IValue(py::cast<torch::jit::Object>(plan)._ivalue()).toCustomClass<dyninfer::CompiledPlan>();
  } catch (const std::exception&) {
    throw py::type_error("dyninfer._C.run: expected a torch.classes.dyninfer.Plan, got " +
                         std::string(py::str(py::type::of(plan))));
  }
  py::gil_scoped_release nogil;
  return p->run(x, return_path, open_gates);
}

// plan_schema.h as Python data: {"buffer": [...], "plan": [...], "ops": {name: {"kind", "fields", "variadic"}},
// "version": DYNINFER_PLAN_VERSION}.
py::dict plan_schema() {
  py::dict out, ops;
#define DYNINFER_NAME(name) names.append(#name);
  {
    py::list names;
    DYNINFER_BUFFER_FIELDS(DYNINFER_NAME)
    out["buffer"] = names;
  }
  {
    py::list names;
    DYNINFER_PLAN_FIELDS(DYNINFER_NAME)
    out["plan"] = names;
  }
#define DYNINFER_OP(op, id, FIELDS, tail)        \
  {                                              \
    py::list names;                              \
    FIELDS(DYNINFER_NAME)                        \
    py::dict d;                                  \
    d["kind"] = id;                              \
    d["fields"] = names;                         \
    d["variadic"] = std::string(tail);           \
    ops[#op] = d;                                \
  }
  DYNINFER_PLAN_OPS(DYNINFER_OP)
#undef DYNINFER_OP
#undef DYNINFER_NAME
  out["ops"] = ops;
  out["version"] = DYNINFER_PLAN_VERSION;
  return out;
}

std::string plan_digest(const std::vector<int64_t>& meta, const std::vector<int64_t>& ops,
                        const std::vector<at::Tensor>& weights, const std::vector<std::string>& conv_names,
                        bool open_gates, const std::vector<int64_t>& input_shape,
                        const std::vector<int64_t>& output_shape, const std::vector<std::string>& gate_names,
                        const std::vector<int64_t>& gate_sizes) {
  dyninfer::DigestInput in{meta, ops, {}, conv_names, open_gates, input_shape, output_shape, gate_names, gate_sizes};
  std::vector<at::Tensor> held;
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    if (!w.device().is_cpu() || w.scalar_type() != at::kFloat)
      throw py::value_error("plan_digest: weight " + std::to_string(i) + " is not a float32 CPU tensor");
    held.push_back(w.detach().contiguous());
    in.weights.push_back({held.back().data_ptr<float>(), held.back().sizes().vec()});
  }
  py::gil_scoped_release nogil;
  return dyninfer::plan_digest(in);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dyninfer C++ runtime";
  m.def("isa", []() { return std::string(dyninfer::isa_name(dyninfer::detect_isa())); },
        "Instruction set the kernels dispatch to on this CPU");
  m.def("bf16_supported", []() { return dyninfer::bf16_kernels_supported(); },
        "Whether this CPU runs the bf16 conv kernels (AVX-512 with AVX512_BF16)");
  m.def("plan_schema", &plan_schema, "The plan's wire layout (csrc/kernels/plan_schema.h): field names per op");
  m.def("plan_digest", &plan_digest, py::arg("meta"), py::arg("ops"), py::arg("weights"), py::arg("conv_names"),
        py::arg("open_gates"), py::arg("input_shape"), py::arg("output_shape"), py::arg("gate_names"),
        py::arg("gate_sizes"), "sha256 of a plan and its artefact fields (csrc/kernels/digest.h)");
  m.def("run", &run, py::arg("plan"), py::arg("x"), py::arg("return_path") = false, py::arg("open_gates") = false,
        "(logits, path) of a torch.classes.dyninfer.Plan on x, without TorchScript's method-call overhead");
}
