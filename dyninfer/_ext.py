"""Loads the C++ extension once, with an error that says why when it cannot."""
from __future__ import annotations

import torch

from .errors import ExtensionLoadError

_loaded = False


def load_extension() -> None:
    """Import dyninfer._C (registers torch.ops.dyninfer.* and torch.classes.dyninfer.Plan)."""
    global _loaded
    if _loaded:
        return
    try:
        from . import _C  # noqa: F401
    except ImportError as exc:
        raise ExtensionLoadError(
            f"dyninfer's C++ extension dyninfer._C failed to load ({exc}). Build it with "
            "`pip install --no-build-isolation -e .` (or `make install`) against torch "
            f"{torch.__version__}.") from exc
    _loaded = True


def isa() -> str:
    """Instruction set the engine's kernels use on this CPU ('avx2', 'avx512' or 'portable')."""
    load_extension()
    from . import _C
    return _C.isa()


def fma_peak_gflops(iters: int = 50_000_000) -> float:
    """Measured single-core FP32 FMA peak (12 independent FMA chains of the engine's vector width)."""
    load_extension()
    return float(torch.ops.dyninfer.fma_peak(iters).item())
