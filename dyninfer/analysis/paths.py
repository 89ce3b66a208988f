"""Calculation paths: collect them (PyTorch model or compiled engine), save and load them.

A *calculation path* of one input is the concatenation of the eval-mode gate decisions z^l of every
gated layer l (paper Sec. 4.2), (Σ_l N_l,) bits. ``collect_paths`` takes them from the same forward
pass that produces the prediction: ``calculation_path(model)`` after ``model(x)`` for a PyTorch
model, ``engine(x, return_path=True)`` for a CompiledModel.

The dense baseline has no gates; ``collect_activations`` reads, at the same positions (the output
of every conv unit a gate would control), the global-average-pooled channel activations of a dense
model, and ``binarize`` turns them into bits with per-channel thresholds fitted on reference data.

File format (``FORMAT_VERSION`` 1): one safetensors file holding
  ``paths``        uint8 (N, ceil(D/8)), the bits packed big-endian per row (numpy.packbits)
  ``labels``       int64 (N,), ``predictions`` int64 (N,)
and header metadata ``dyninfer_format`` = "dyninfer-paths", ``format_version``, ``num_bits`` (D),
``gate_names`` / ``gate_sizes`` (JSON lists), ``source``, ``meta`` (JSON) and ``sha256`` of the
tensors (dyninfer.checkpoint.weights_sha256). Written to a temporary file in the same folder,
fsync'ed and moved into place (atomic on POSIX); on load every field and the digest are verified.
A path set of 360 digits test images × 2,016 gated channels takes 91 KB.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from .._io import atomic_write_bytes, read_safetensors

__all__ = ["PathSet", "PathFileError", "collect_paths", "collect_activations", "activation_thresholds", "binarize",
           "save_paths", "load_paths", "stack_dataset", "FORMAT_VERSION"]

FORMAT = "dyninfer-paths"
FORMAT_VERSION = 1


class PathFileError(RuntimeError):
    """A path file is missing, corrupt, truncated or of another format; the message names the file."""


@dataclass
class PathSet:
    """Per-sample calculation paths with their labels and predictions.

    paths (N, D) uint8 in {0, 1}; labels / predictions (N,) int64 (label -1 = unknown);
    gate_names / gate_sizes name the consecutive blocks of D (Σ gate_sizes == D).
    """

    paths: Tensor
    labels: Tensor
    predictions: Tensor
    gate_names: list[str]
    gate_sizes: list[int]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.paths = torch.as_tensor(self.paths)
        if self.paths.dim() != 2:
            raise ValueError(f"PathSet: paths must be (N, D), got shape {tuple(self.paths.shape)}")
        if self.paths.numel() and not ((self.paths == 0) | (self.paths == 1)).all():
            raise ValueError("PathSet: paths must hold only 0 and 1")
        self.paths = self.paths.to(torch.uint8)
        n, d = self.paths.shape
        self.labels = torch.as_tensor(self.labels).to(torch.int64).reshape(-1)
        self.predictions = torch.as_tensor(self.predictions).to(torch.int64).reshape(-1)
        for name, t in (("labels", self.labels), ("predictions", self.predictions)):
            if t.shape != (n,):
                raise ValueError(f"PathSet: {name} must have {n} entries (one per path), got {tuple(t.shape)}")
        self.gate_names = [str(s) for s in self.gate_names]
        self.gate_sizes = [int(s) for s in self.gate_sizes]
        if len(self.gate_names) != len(self.gate_sizes):
            raise ValueError(f"PathSet: {len(self.gate_names)} gate names but {len(self.gate_sizes)} gate sizes")
        if sum(self.gate_sizes) != d or any(s < 1 for s in self.gate_sizes):
            raise ValueError(f"PathSet: gate sizes {self.gate_sizes} (sum {sum(self.gate_sizes)}) do not split "
                             f"paths of {d} bits")

    def __len__(self) -> int:
        return self.paths.shape[0]

    @property
    def num_bits(self) -> int:
        return self.paths.shape[1]

    def split(self) -> dict[str, Tensor]:
        """{gate name: (N, N_l) bits}."""
        return dict(zip(self.gate_names, torch.split(self.paths, self.gate_sizes, dim=1)))

    def accuracy(self) -> float:
        known = self.labels >= 0
        return float((self.predictions[known] == self.labels[known]).float().mean()) if known.any() else float("nan")


def stack_dataset(data, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """(images (N, C, H, W), labels (N,)) from a Dataset yielding (image, label) or a pair of tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
        y = torch.as_tensor(y)
    else:
        n = len(data) if limit is None else min(limit, len(data))
        items = [data[i] for i in range(n)]
        x = torch.stack([it[0] for it in items])
        y = torch.tensor([int(it[1]) for it in items], dtype=torch.int64)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"expected {x.shape[0]} labels, got shape {tuple(y.shape)}")
    return x, y.to(torch.int64)


def _batches(x: Tensor, batch_size: int) -> Iterable[Tensor]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i in range(0, x.shape[0], batch_size):
        yield x[i:i + batch_size].contiguous()


def collect_paths(runner, x: Tensor, labels: Tensor | None = None, batch_size: int = 256) -> PathSet:
    """Calculation paths, labels and predictions of images ``x`` (N, C, H, W).

    ``runner`` is a gated nn.Module in eval mode (paths from ``calculation_path`` after each batch's
    forward) or a dyninfer CompiledModel (``engine(x, return_path=True)``: the path of the very run
    that made the prediction). ``labels`` (N,) may be None (stored as -1).
    """
    from ..engine import CompiledModel
    from ..nn import calculation_path, gates

    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"collect_paths: expected images (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    n = x.shape[0]
    labels = torch.full((n,), -1, dtype=torch.int64) if labels is None else torch.as_tensor(labels)
    if labels.shape != (n,):
        raise ValueError(f"collect_paths: {n} images but labels of shape {tuple(labels.shape)}")
    paths, preds = [], []
    if isinstance(runner, CompiledModel):
        if tuple(x.shape[1:]) != tuple(runner.input_shape):
            raise ValueError(f"collect_paths: engine compiled for inputs {tuple(runner.input_shape)}, "
                             f"got images {tuple(x.shape[1:])}")
        names, sizes, source = runner.gate_names, runner.gate_sizes, f"engine ({runner.isa})"
        for xb in _batches(x, batch_size):
            logits, p = runner(xb, return_path=True)
            paths.append(p.to(torch.uint8))
            preds.append(logits.reshape(xb.shape[0], -1).argmax(1))
    elif isinstance(runner, nn.Module):
        g = gates(runner)
        if not g:
            raise ValueError(f"collect_paths: {type(runner).__name__} has no gates; for a dense model use "
                             f"collect_activations + binarize")
        if runner.training:
            raise ValueError("collect_paths: the model is in training mode (stochastic SemHash gates); "
                             "call model.eval() first")
        names, sizes, source = list(g), [m.out_channels for m in g.values()], "pytorch"
        with torch.no_grad():
            for xb in _batches(x, batch_size):
                logits = runner(xb)
                paths.append(calculation_path(runner).to(torch.uint8))
                preds.append(logits.reshape(xb.shape[0], -1).argmax(1))
    else:
        raise TypeError(f"collect_paths: runner must be a gated nn.Module or a CompiledModel, got {type(runner).__name__}")
    return PathSet(torch.cat(paths), labels, torch.cat(preds), names, sizes, source=source)


def _open_dense(model: nn.Module) -> nn.Module:
    """A decoupled copy of a dense ``model`` with every gate open (z = 1, outputs unchanged): its
    gates record ``y_mean`` = GAP of each unit's output at exactly the gated model's gate positions."""
    from ..nn import decouple, gates

    if gates(model):
        raise ValueError(f"collect_activations: {type(model).__name__} already has gates; pass the dense model")
    gm = decouple(copy.deepcopy(model), reduction=1)
    for g in gates(gm).values():
        g.reset_open()  # g = 1 > 0 for every input: z = 1
    return gm.eval()


def collect_activations(model: nn.Module, x: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor, list[str], list[int]]:
    """Dense model's global-average-pooled channel activations at every position decouple() would
    gate (unit output after its ReLU, or after BN when no ReLU follows): (activations (N, D) float,
    predictions (N,), gate names, sizes)."""
    from ..nn import gates

    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"collect_activations: expected images (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    gm = _open_dense(model)
    g = gates(gm)
    acts, preds = [], []
    with torch.no_grad():
        for xb in _batches(x, batch_size):
            logits = gm(xb)
            acts.append(torch.cat([m.y_mean for m in g.values()], 1))  # (B, D)
            preds.append(logits.argmax(1))
    return torch.cat(acts), torch.cat(preds), list(g), [m.out_channels for m in g.values()]


def activation_thresholds(reference: Tensor, rule: str = "median") -> Tensor:
    """Per-channel thresholds (D,) from reference activations (N, D): "median" (each channel is on
    for half of the reference inputs: the most informative single cut) or "zero" (on when the
    pooled activation is > 0, the rule eval-mode gates use for their logits)."""
    if reference.dim() != 2 or reference.shape[0] < 1:
        raise ValueError(f"activation_thresholds: expected reference activations (N, D) with N >= 1, "
                         f"got {tuple(reference.shape)}")
    if rule == "median":
        return reference.median(dim=0).values
    if rule == "zero":
        return torch.zeros(reference.shape[1], dtype=reference.dtype)
    raise ValueError(f"activation_thresholds: rule must be 'median' or 'zero', got {rule!r}")


def binarize(acts: Tensor, thresholds: Tensor) -> Tensor:
    """(N, D) uint8: 1 where activation > threshold of its channel."""
    if acts.dim() != 2 or thresholds.shape != (acts.shape[1],):
        raise ValueError(f"binarize: activations (N, D) and thresholds (D,) expected, got "
                         f"{tuple(acts.shape)} and {tuple(thresholds.shape)}")
    return (acts > thresholds).to(torch.uint8)


# ------------------------------------------------------------------------------------------------
# file format


def save_paths(path: str | os.PathLike, ps: PathSet) -> Path:
    """Write ``ps`` to ``path`` (bits packed 8 per byte) atomically; returns the path."""
    from safetensors.torch import save

    from ..checkpoint import weights_sha256

    out = Path(path)
    packed = torch.from_numpy(np.packbits(ps.paths.numpy(), axis=1))  # (N, ceil(D/8)) uint8
    tensors = {"paths": packed, "labels": ps.labels.contiguous(), "predictions": ps.predictions.contiguous()}
    try:
        meta = {"dyninfer_format": FORMAT, "format_version": str(FORMAT_VERSION), "num_bits": str(ps.num_bits),
                "gate_names": json.dumps(ps.gate_names), "gate_sizes": json.dumps(ps.gate_sizes),
                "source": ps.source, "meta": json.dumps(ps.meta, sort_keys=True), "sha256": weights_sha256(tensors)}
    except TypeError as exc:
        raise PathFileError(f"{out}: PathSet.meta must be JSON-serialisable: {exc}") from exc
    atomic_write_bytes(out, save(tensors, metadata=meta))
    return out


def load_paths(path: str | os.PathLike) -> PathSet:
    """Read a file written by save_paths, verifying format, version, digest and shapes."""
    from ..checkpoint import weights_sha256

    p = Path(path)
    tensors, meta = read_safetensors(p, "path file", PathFileError)
    if meta.get("dyninfer_format") != FORMAT:
        raise PathFileError(f"{p} is not a dyninfer path file (metadata 'dyninfer_format' = "
                            f"{meta.get('dyninfer_format')!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise PathFileError(f"{p}: path file format version {meta.get('format_version')!r}, this dyninfer reads "
                            f"version {FORMAT_VERSION}")
    missing = [k for k in ("num_bits", "gate_names", "gate_sizes", "meta", "sha256") if k not in meta]
    missing += [k for k in ("paths", "labels", "predictions") if k not in tensors]
    if missing:
        raise PathFileError(f"{p}: path file lacks {missing}")
    digest = weights_sha256(tensors)
    if digest != meta["sha256"]:
        raise PathFileError(f"path file {p} is corrupt: sha256 of its tensors is {digest[:16]}…, the metadata "
                            f"records {meta['sha256'][:16]}…")
    d = int(meta["num_bits"])
    packed = tensors["paths"]
    if packed.dim() != 2 or packed.shape[1] != (d + 7) // 8:
        raise PathFileError(f"{p}: packed paths of shape {tuple(packed.shape)} do not hold {d} bits per row")
    bits = torch.from_numpy(np.unpackbits(packed.numpy(), axis=1, count=d).copy())
    try:
        return PathSet(bits, tensors["labels"], tensors["predictions"], json.loads(meta["gate_names"]),
                       json.loads(meta["gate_sizes"]), source=meta.get("source", ""), meta=json.loads(meta["meta"]))
    except (ValueError, json.JSONDecodeError) as exc:
        raise PathFileError(f"{p}: inconsistent path file: {exc}") from exc
