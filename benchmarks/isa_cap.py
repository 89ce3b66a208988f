"""Run a benchmark with every library in the process capped at AVX2 + FMA.

    python benchmarks/isa_cap.py avx2 benchmarks/bench_engine.py --runs 300
    python benchmarks/isa_cap.py avx2 -m dyninfer.cli bench --model resnet56

On an AVX-512 machine this measures dyninfer and its dense peers (PyTorch/oneDNN, ONNX
Runtime/MLAS, OpenVINO) as on an AVX2 machine such as AMD Zen 3: all of them probe the CPU with
CPUID, and benchmarks/isa_cap.c makes CPUID report no AVX-512, AMX or AVX-VNNI (Linux CPUID
faulting), before any of them is imported. The microarchitecture stays this machine's: ymm FMAs
run on two ports, as on Zen 3. The cap is recorded in the environment (DYNINFER_ISA_CAP) for
the benchmark's JSON.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(__file__).with_name("isa_cap.c")


def build() -> Path:
    """Compile isa_cap.c into build/isa_cap-<hash>.so once per source version."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    lib = ROOT / "build" / f"isa_cap-{digest}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE)], check=True)
        os.replace(tmp, lib)
    return lib


def cap_avx2() -> None:
    if "torch" in sys.modules or "onnxruntime" in sys.modules:
        raise RuntimeError("isa_cap: cap the ISA before torch or onnxruntime is imported")
    if ctypes.CDLL(str(build())).dyninfer_cap_avx2() != 0:
        raise RuntimeError("isa_cap: this kernel/CPU has no CPUID faulting (arch_prctl ARCH_SET_CPUID); "
                           "the AVX2 cap cannot be applied here")
    os.environ["DYNINFER_ISA_CAP"] = "avx2 (CPUID faulting: no AVX-512, AMX or AVX-VNNI for any library)"


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] != "avx2":
        print(__doc__, file=sys.stderr)
        return 2
    cap_avx2()
    rest = sys.argv[2:]
    if rest[0] == "-m":
        sys.argv = [rest[1]] + rest[2:]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        sys.path.insert(0, str(Path(rest[0]).resolve().parent))
        runpy.run_path(rest[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
