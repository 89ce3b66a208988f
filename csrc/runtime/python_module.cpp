// dyninfer._rt: the torch-free runtime for Python (numpy arrays in and out). dyninfer.runtime wraps
// it; this module needs only pybind11 at build time and numpy at run time.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../kernels/conv.h"
#include "runtime.h"

namespace py = pybind11;
using dyninfer::RtModel;

namespace {

std::shared_ptr<RtModel> load_bytes(const py::bytes& data, bool verify) {
  std::string_view v = data;  // no copy
  py::gil_scoped_release nogil;
  return dyninfer::load_artefact(reinterpret_cast<const uint8_t*>(v.data()), v.size(), verify);
}

py::tuple run(const RtModel& m, const py::array& x_any, bool return_path, int threads) {
  if (!py::isinstance<py::array_t<float>>(x_any) || x_any.dtype().kind() != 'f' || x_any.itemsize() != 4)
    throw py::type_error("dyninfer runtime: expected a float32 array, got dtype " +
                         std::string(py::str(x_any.dtype())));
  const auto& s = m.input_shape;
  if (x_any.ndim() != 4 || x_any.shape(1) != s[0] || x_any.shape(2) != s[1] || x_any.shape(3) != s[2]) {
    std::string got = "(";
    for (py::ssize_t i = 0; i < x_any.ndim(); ++i) got += (i ? ", " : "") + std::to_string(x_any.shape(i));
    throw py::value_error("dyninfer runtime: expected input of shape (B, " + std::to_string(s[0]) + ", " +
                          std::to_string(s[1]) + ", " + std::to_string(s[2]) + "), got " + got + ")");
  }
  auto x = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(x_any);
  const int64_t batch = x.shape(0);
  py::array_t<float> logits({batch, m.output_numel()});
  py::array_t<float> path({return_path ? batch : int64_t(0), m.path_len()});
  const float* xp = x.data();
  float* lp = logits.mutable_data();
  float* pp = return_path ? path.mutable_data() : nullptr;
  {
    py::gil_scoped_release nogil;
    dyninfer::run_model(m, xp, batch, lp, pp, threads);
  }
  return py::make_tuple(logits, path);
}

}  // namespace

PYBIND11_MODULE(_rt, mod) {
  mod.doc() = "dyninfer torch-free runtime (csrc/runtime)";
  py::register_exception<dyninfer::ArtefactError>(mod, "ArtefactError", PyExc_ValueError);
  py::register_exception<dyninfer::PlanError>(mod, "PlanError", PyExc_ValueError);
  mod.attr("FORMAT") = dyninfer::kRuntimeFormat;
  mod.attr("FORMAT_VERSION") = dyninfer::kRuntimeFormatVersion;
  mod.attr("PLAN_VERSION") = dyninfer::kPlanVersion;
  mod.def("isa", []() { return std::string(dyninfer::isa_name(dyninfer::detect_isa())); });
  mod.def("bf16_supported", &dyninfer::bf16_kernels_supported, "whether this CPU has AVX512_BF16 (and AVX-512)");
  py::class_<RtModel, std::shared_ptr<RtModel>>(mod, "Model")
      .def_readonly("input_shape", &RtModel::input_shape)
      .def_readonly("output_shape", &RtModel::output_shape)
      .def_readonly("gate_sizes", &RtModel::gate_sizes)
      .def_readonly("gate_names", &RtModel::gate_names)
      .def_readonly("conv_names", &RtModel::conv_names)
      .def_readonly("open_gates", &RtModel::open_gates)
      .def_readonly("digest", &RtModel::digest)
      .def_property_readonly("path_len", &RtModel::path_len)
      .def_readonly("requested_precision", &RtModel::requested_precision)
      .def_property_readonly("precision", [](const RtModel& m) { return m.plan->precision(); })
      .def("set_precision", [](RtModel& m, const std::string& p) { m.plan->set_precision(p); }, py::arg("precision"),
           "fp32 or bf16 (PlanError naming the missing CPU feature); not while a run is in flight")
      .def_property_readonly("precision_supported_bf16",
                             [](const RtModel& m) { return dyninfer::precision_supported(*m.plan, "bf16"); })
      .def("run", &run, py::arg("x"), py::arg("return_path") = false, py::arg("threads") = 1,
           "(logits (B, numel), path (B or 0, path_len)) of a float32 (B, C, H, W) array");
  mod.def("load_bytes", &load_bytes, py::arg("data"), py::arg("verify") = true);
}
