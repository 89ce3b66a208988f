"""Builds the C++ extensions: dyninfer._C (the torch adapter) and dyninfer._rt (the torch-free runtime,
which needs only numpy at run time; CMakeLists.txt builds the same runtime as libdyninfer_rt for C).

Kernels in csrc/kernels/ are torch-free and choose their instruction set per function with
`#pragma GCC target`, dispatched at run time from a CPU probe; the shipped build never uses
-march=native. Build without isolation so the installed torch is used:
    pip install --no-build-isolation -e .

DYNINFER_RUNTIME_ONLY=1 builds dyninfer._rt alone, without torch (for services that only run saved
artefacts with dyninfer.runtime; numpy is then the one run-time dependency):
    DYNINFER_RUNTIME_ONLY=1 pip install --no-build-isolation --no-deps . && pip install numpy
"""
import glob
import os

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

here = os.path.dirname(os.path.abspath(__file__))
kernels = sorted(glob.glob("csrc/kernels/*.cpp"))
sources = sorted(glob.glob("csrc/*.cpp")) + kernels
rt_sources = kernels + ["csrc/runtime/safetensors.cpp", "csrc/runtime/runtime.cpp", "csrc/runtime/python_module.cpp"]
debug = os.environ.get("DYNINFER_DEBUG", "0") == "1"
# DYNINFER_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer build (make sanitize)
sanitize = os.environ.get("DYNINFER_SANITIZE", "0") == "1"
cxx_flags = ["-O0", "-g"] if debug else ["-O1", "-g", "-fno-omit-frame-pointer"] if sanitize else ["-O3"]
cxx_flags += ["-std=c++17", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
san_flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"] if sanitize else []

runtime = Pybind11Extension(
    "dyninfer._rt",
    rt_sources,
    include_dirs=[os.path.join(here, "csrc")],
    extra_compile_args=cxx_flags + san_flags,
    extra_link_args=["-fopenmp"] + san_flags,
    cxx_std=17,
)

if os.environ.get("DYNINFER_RUNTIME_ONLY", "0") == "1":
    setup(ext_modules=[runtime])
else:
    from torch.utils.cpp_extension import BuildExtension, CppExtension, library_paths

    # dyninfer._C links libc10/libtorch: find them in the torch wheel even when torch is not imported
    # first (`import dyninfer._C` alone; the package top level no longer imports torch)
    rpath = [f"-Wl,-rpath,{p}" for p in library_paths()]

    setup(
        ext_modules=[
            CppExtension(
                "dyninfer._C",
                sources,
                include_dirs=[os.path.join(here, "csrc")],
                extra_compile_args={"cxx": cxx_flags + san_flags},
                extra_link_args=["-fopenmp"] + rpath + san_flags,
            ),
            runtime,
        ],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
