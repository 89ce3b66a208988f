"""dyninfer.runtime: run a saved engine with numpy only — no torch in the process.

    import numpy as np, dyninfer.runtime as rt
    model = rt.load("resnet56.dyninfer")              # or rt.load(artefact_bytes)
    logits = model.run(x)                             # x: float32 (B, C, H, W)
    logits, path = model.run(x, return_path=True)     # path: (B, Σ N_l) gate decisions, 0/1

The artefact is what ``CompiledModel.save(path, format="runtime")`` writes: a safetensors file
holding the typed plan and its weights (layout in csrc/runtime/runtime.h). ``load`` checks the
container, the format and plan versions and (``verify=True``) the sha256 digest, then the C++
plan validator checks every field, before anything runs; ``verify=False`` skips only the digest,
for fuzzers and tests. Errors are ``ArtefactError`` (a ValueError) naming the file and the field.
The same runtime is a C library, libdyninfer_rt (CMakeLists.txt, csrc/runtime/dyninfer_rt.h).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["load", "Model", "ArtefactError", "FORMAT", "FORMAT_VERSION", "isa", "save_artefact"]

FORMAT = "dyninfer-runtime"
FORMAT_VERSION = 2


class ArtefactError(ValueError):
    """A runtime artefact is missing, truncated, corrupt, of another version, or its plan is invalid."""


def _rt():
    try:
        from . import _rt
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ImportError("dyninfer._rt (the torch-free runtime) is not built: reinstall dyninfer "
                          "(pip install --no-build-isolation -e .)") from exc
    return _rt


def isa() -> str:
    """The instruction set the kernels dispatch to on this CPU ("avx512", "avx2" or "portable")."""
    return _rt().isa()


class Model:
    """A loaded artefact. ``run`` is thread-safe; ``threads`` splits a batch (or, at batch 1, the
    larger convs) over that many OpenMP threads."""

    def __init__(self, handle, source: str):
        self._m = handle
        self.source = source
        self.input_shape = tuple(handle.input_shape)
        self.output_shape = tuple(handle.output_shape)
        self.gate_names = list(handle.gate_names)
        self.gate_sizes = list(handle.gate_sizes)
        self.conv_names = list(handle.conv_names)
        self.gates_mode = "open" if handle.open_gates else "learned"
        self.digest = handle.digest

    @property
    def precision(self) -> str:
        """"fp32" or "bf16": what runs (the artefact's precision where this CPU supports it)."""
        return self._m.precision

    @property
    def requested_precision(self) -> str:
        """The precision the artefact asks for ("fp32" for artefacts that predate the field)."""
        return self._m.requested_precision

    def set_precision(self, precision: str, strict: bool = False) -> "Model":
        """Switch to "fp32" or "bf16" (not while another thread runs the model); returns self. Where
        the CPU lacks AVX512_BF16, warns and stays fp32, or raises RuntimeError when strict."""
        from ._precision import choose

        self._m.set_precision(choose(precision, supported=self._m.precision_supported_bf16, isa=isa(),
                                     has_flag=_rt().bf16_supported(), where="dyninfer runtime", runs="the model",
                                     strict=strict))
        return self

    def run(self, x, return_path: bool = False, threads: int = 1):
        """logits (B, *output_shape) of a float32 (B, C, H, W) array; with return_path also the
        (B, Σ N_l) gate decisions. Other dtypes, shapes or NaN/Inf raise TypeError/ValueError."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"dyninfer runtime: expected a numpy float32 array, got {type(x).__name__}")
        logits, path = self._m.run(x, return_path, int(threads))
        logits = logits.reshape(x.shape[0], *self.output_shape)
        return (logits, path) if return_path else logits

    __call__ = run

    def split_path(self, path: np.ndarray) -> dict[str, np.ndarray]:
        """{gate path: (B, N_l) decisions} from the (B, Σ N_l) path array."""
        return dict(zip(self.gate_names, np.split(path, np.cumsum(self.gate_sizes)[:-1], axis=1)))

    def __repr__(self) -> str:
        return (f"dyninfer.runtime.Model({self.source}, input={self.input_shape}, gates={len(self.gate_names)}, "
                f"mode={self.gates_mode}, isa={isa()}, precision={self.precision})")



def load(source: str | os.PathLike | bytes, *, verify: bool = True) -> Model:
    """A Model from an artefact path or its bytes (see the module docstring)."""
    rt = _rt()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "<bytes>"
    else:
        p = Path(source)
        if not p.is_file():
            raise ArtefactError(f"artefact {p} does not exist")
        data, name = p.read_bytes(), str(p)
        if data[:2] == b"PK":
            raise ArtefactError(f"{p} is a TorchScript artefact (format 1, written by earlier dyninfer or by "
                                f"save(format='torchscript')); dyninfer.runtime reads format {FORMAT_VERSION}: load it "
                                f"with dyninfer.load and re-save it with engine.save(path, format='runtime')")
    try:
        handle = rt.load_bytes(data, bool(verify))
    except (rt.ArtefactError, rt.PlanError) as exc:
        raise ArtefactError(f"{name}: {exc}") from None
    model = Model(handle, name)
    if model.precision != model.requested_precision:
        from ._precision import bf16_missing

        warnings.warn(f"dyninfer runtime: {name} was saved in {model.requested_precision}; "
                      f"{bf16_missing(isa(), rt.bf16_supported())}, so it runs fp32", RuntimeWarning, stacklevel=2)
    return model


def save_artefact(path: str | os.PathLike, *, meta: Sequence[int], ops: Sequence[int], weights: Sequence[np.ndarray],
                  conv_names: Sequence[str], gate_names: Sequence[str], gate_sizes: Sequence[int],
                  input_shape: Sequence[int], output_shape: Sequence[int], gates: str, digest: str,
                  precision: str = "fp32", extra: dict[str, str] | None = None) -> Path:
    """Write the runtime artefact atomically (the torch side, CompiledModel.save, calls this with the
    engine's plan and the digest the extension computed). The weights are always float32;
    ``precision`` ("fp32" | "bf16") is the one the engine runs in, re-applied on load."""
    if precision not in ("fp32", "bf16"):
        raise ArtefactError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    from safetensors.numpy import save

    from ._io import atomic_write_bytes

    for kind, names in (("conv", conv_names), ("gate", gate_names)):
        bad = [n for n in names if "\n" in n]
        if bad:
            raise ArtefactError(f"{kind} name {bad[0]!r} contains a newline; the artefact stores names one per line")
    tensors = {"plan.meta": np.asarray(meta, dtype=np.int64), "plan.ops": np.asarray(ops, dtype=np.int64),
               "plan.input_shape": np.asarray(input_shape, dtype=np.int64),
               "plan.output_shape": np.asarray(output_shape, dtype=np.int64),
               "plan.gate_sizes": np.asarray(gate_sizes, dtype=np.int64)}
    for i, w in enumerate(weights):
        w = np.ascontiguousarray(w)
        if w.dtype != np.float32:
            raise ArtefactError(f"weight {i} has dtype {w.dtype}; the runtime holds float32 only")
        tensors[f"weight.{i:05d}"] = w
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "plan_version": str(_rt().PLAN_VERSION),
                "gates": gates, "weight_count": str(len(weights)), "conv_names": "\n".join(conv_names),
                "gate_names": "\n".join(gate_names), "digest": digest, "precision": precision, **(extra or {})}
    out = Path(path)
    atomic_write_bytes(out, save(tensors, metadata=metadata))
    return out
