"""The engine precision choice shared by dyninfer.CompiledModel and dyninfer.runtime.Model (torch-free)."""
from __future__ import annotations

import warnings

PRECISIONS = ("fp32", "bf16")


def bf16_missing(isa: str, has_flag: bool) -> str:
    """Why bf16 cannot run here, naming the CPU flag."""
    return (f"bf16 needs AVX-512 with the AVX512_BF16 instructions (cpu flag avx512_bf16); this CPU runs the "
            f"{isa} kernels{'' if has_flag else ' and has no avx512_bf16'}")


def choose(precision: str, *, supported: bool, isa: str, has_flag: bool, where: str, runs: str,
           strict: bool, stacklevel: int = 3) -> str:
    """The precision to set for a request of ``precision``: ValueError for an unknown name; where bf16
    is not ``supported``, RuntimeError when ``strict``, else a RuntimeWarning and "fp32". ``where``
    prefixes the messages, ``runs`` names what then runs fp32 ("the engine", "the model")."""
    if precision not in PRECISIONS:
        raise ValueError(f"{where}: precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" and not supported:
        why = bf16_missing(isa, has_flag)
        if strict:
            raise RuntimeError(f"{where}: {why}")
        warnings.warn(f"{where}: {why}; {runs} runs fp32", RuntimeWarning, stacklevel=stacklevel)
        return "fp32"
    return precision
