"""Checkpoints: one safetensors file, no pickle anywhere.

Format (``FORMAT_VERSION`` 1): ``<path>.safetensors`` holding the model's state_dict tensors; its
header metadata (a str -> str map, stored as JSON inside the file) carries
  ``dyninfer_format``   "dyninfer-checkpoint"
  ``format_version``    "1"
  ``config``            JSON object: the caller's config plus a ``model`` entry
                        {name, num_classes, gated, reduction} used by load_model()
  ``metrics``           JSON object (e.g. accuracy, epoch)
  ``sha256``            hex digest of the weights: for every tensor in sorted name order,
                        name, dtype, shape and raw little-endian bytes (see ``weights_sha256``)
Config and weights live in one file so they can never go out of step; the file is written to a
temporary file in the same folder, fsync'ed and moved into place with os.replace (atomic on
POSIX), then the folder is fsync'ed. Inspect the metadata with ``read_metadata(path)``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ._io import atomic_write_bytes, read_safetensors

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "read_metadata", "model_spec", "weights_sha256",
           "CheckpointError", "FORMAT_VERSION", "SUFFIX"]

FORMAT = "dyninfer-checkpoint"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, truncated, of another format version, or does not fit the
    model; the message names the file."""


def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.name.endswith(SUFFIX) else p.with_name(p.name + SUFFIX)


def weights_sha256(state: Mapping[str, Tensor]) -> str:
    """Digest of the tensors independent of file layout: name, dtype, shape, bytes, sorted by name."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _gate_reduction(model: nn.Module) -> int | None:
    from .nn import gates

    g = gates(model)
    return next(iter(g.values())).reduction if g else None


def _gate_boost(model: nn.Module) -> bool:
    from .nn import gates

    flags = {bool(g.boost) for g in gates(model).values()}
    if len(flags) > 1:
        raise CheckpointError("some gates are boosted and some are not: the model spec has one flag for all")
    return flags == {True}


def _num_classes(model: nn.Module) -> int | None:
    last = [m for m in model.modules() if isinstance(m, nn.Linear) and not _is_gate_part(model, m)]
    return last[-1].out_features if last else None


def _is_gate_part(model: nn.Module, lin: nn.Module) -> bool:
    from .nn import gates

    return any(lin is m for g in gates(model).values() for m in g.modules())


def model_spec(model: nn.Module) -> dict[str, Any]:
    """{name, num_classes, gated, reduction} of a model built by dyninfer.models.create_model."""
    name = getattr(model, "dyninfer_name", None)
    if name is None:
        raise CheckpointError(f"{type(model).__name__} was not built by dyninfer.models.create_model "
                              f"(no 'dyninfer_name'); load_model() could not rebuild it")
    reduction = _gate_reduction(model)
    spec = {"name": name, "num_classes": _num_classes(model), "gated": reduction is not None,
            "reduction": reduction if reduction is not None else 4}
    if _gate_boost(model):
        spec["boost"] = True
    return spec


def save_checkpoint(path: str | os.PathLike, model: nn.Module | Mapping[str, Tensor], config: Mapping[str, Any],
                    metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``<path>.safetensors`` atomically; returns the written path.

    ``model`` is an nn.Module (its ``model`` spec is added to ``config`` unless config already has
    one) or a bare state_dict (then ``config['model']`` must be given for load_model()).
    ``config`` and ``metrics`` must be JSON-serialisable.
    """
    from safetensors.torch import save

    out = _resolve(path)
    config = dict(config)
    if isinstance(model, nn.Module):
        config.setdefault("model", model_spec(model))
        state = model.state_dict()
    else:
        state = dict(model)
    # clone: safetensors refuses tensors sharing storage; contiguous CPU copies are what it writes
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    try:
        meta = {"dyninfer_format": FORMAT, "format_version": str(FORMAT_VERSION),
                "config": json.dumps(config, sort_keys=True), "metrics": json.dumps(dict(metrics or {}), sort_keys=True),
                "sha256": weights_sha256(tensors)}
    except TypeError as exc:
        raise CheckpointError(f"{out}: config/metrics must be JSON-serialisable: {exc}") from exc
    atomic_write_bytes(out, save(tensors, metadata=meta))
    return out


def _open(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    return read_safetensors(path, "checkpoint", CheckpointError)


def _check_meta(path: Path, meta: Mapping[str, str]) -> None:
    if meta.get("dyninfer_format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a dyninfer checkpoint "
                              f"(metadata 'dyninfer_format' = {meta.get('dyninfer_format')!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('format_version')!r}, "
                              f"this dyninfer reads version {FORMAT_VERSION}")
    for key in ("config", "metrics", "sha256"):
        if key not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata lacks '{key}'")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """{'format_version', 'config', 'metrics', 'sha256'} of a checkpoint (weights verified)."""
    p = _resolve(path)
    tensors, meta = _open(p)
    _check_meta(p, meta)
    _verify(p, tensors, meta)
    return {"format_version": int(meta["format_version"]), "config": json.loads(meta["config"]),
            "metrics": json.loads(meta["metrics"]), "sha256": meta["sha256"]}


def _verify(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> None:
    digest = weights_sha256(tensors)
    if digest != meta["sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: sha256 of the weights is {digest[:16]}…, "
                              f"the metadata records {meta['sha256'][:16]}…")


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, config) of ``<path>.safetensors`` after checking format, version and sha256.
    The metrics saved with it are ``read_metadata(path)['metrics']``."""
    p = _resolve(path)
    tensors, meta = _open(p)
    _check_meta(p, meta)
    _verify(p, tensors, meta)
    try:
        config = json.loads(meta["config"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: config metadata is not valid JSON: {exc}") from exc
    return tensors, config


def load_model(path: str | os.PathLike) -> nn.Module:
    """Rebuild the registered model described by the checkpoint and load its weights strictly.
    Returns the model in eval mode."""
    from .models import create_model

    p = _resolve(path)
    state, config = load_checkpoint(p)
    spec = config.get("model")
    if not isinstance(spec, dict) or not {"name", "num_classes", "gated"} <= spec.keys():
        raise CheckpointError(f"{p}: config has no model spec {{name, num_classes, gated, reduction}}; "
                              f"got {spec!r}")
    try:
        model = create_model(spec["name"], num_classes=spec["num_classes"], gated=spec["gated"],
                             reduction=spec.get("reduction", 4))
    except ValueError as exc:
        raise CheckpointError(f"{p}: cannot rebuild model {spec}: {exc}") from exc
    boost = spec.get("boost", False)
    if not isinstance(boost, bool) or (boost and not spec["gated"]):
        raise CheckpointError(f"{p}: model spec 'boost' must be true or false, and true only for a gated model; "
                              f"got {spec!r}")
    if boost:
        from .nn import gates

        for g in gates(model).values():
            g.boost = True
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{p}: weights do not match model {spec}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{p}: weights do not match model {spec}: missing {result.missing_keys[:5]}"
                              f"{'…' if len(result.missing_keys) > 5 else ''}, unexpected "
                              f"{result.unexpected_keys[:5]}{'…' if len(result.unexpected_keys) > 5 else ''}")
    return model.eval()
