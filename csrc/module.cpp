// Python module dyninfer._C: importing it registers the dyninfer ops (TORCH_LIBRARY in ops.cpp).
#include <torch/extension.h>

#include "kernels/cpu_features.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dyninfer C++ runtime";
  m.def("isa", []() { return std::string(dyninfer::isa_name(dyninfer::detect_isa())); },
        "Instruction set the kernels dispatch to on this CPU");
}
