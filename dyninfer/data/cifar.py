"""CIFAR-10 / CIFAR-100 from a local folder in the original python-pickle format
(https://www.cs.toronto.edu/~kriz/cifar.html, the ``cifar-10-batches-py`` / ``cifar-100-python``
folders; nothing is downloaded).

Expected files:
  CIFAR-10:  data_batch_1 .. data_batch_5, test_batch  (batches.meta optional: class names)
  CIFAR-100: train, test                               (meta optional: fine class names)

Security: pickle can run arbitrary code, so the files are read with a *restricted* unpickler
that only resolves the few numpy names an ndarray needs (``_reconstruct``, ``ndarray``,
``dtype``, ``scalar``, ``_frombuffer``) plus ``_codecs.encode`` (bytes in protocol-2 files written by Python 3)
and refuses every other global. A malicious file then fails with a
DatasetError instead of executing code. Still, read only folders you obtained from a source
you trust.
"""
from __future__ import annotations

import io
import pickle
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .base import DatasetError, DatasetNotFoundError, TensorImageDataset
from .transforms import random_crop_flip

__all__ = ["load_cifar", "restricted_pickle_load", "CIFAR_MEAN", "CIFAR_STD"]

# Per-channel statistics of the CIFAR-10 training set (the values used by most reference code).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("_codecs", "encode"),  # how Python 3 writes bytes in pickle protocol <= 2 (re-pickled batches)
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy >= 2 moved it: skip the deprecated alias
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def restricted_pickle_load(path: Path) -> object:
    """pickle.load(encoding='bytes') of ``path`` allowing only numpy array reconstruction."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DatasetError(f"{path}: not a readable CIFAR python-pickle batch ({type(exc).__name__}: {exc})") from exc


def _get(d: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DatasetError(f"{path}: CIFAR batch has no '{key}' entry (keys: {sorted(map(str, d))})")


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = restricted_pickle_load(path)
    if not isinstance(d, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    data = np.asarray(_get(d, "data", path))
    labels = np.asarray(_get(d, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: expected 'data' uint8 of shape (n, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {data.shape[0]} images but {labels.shape[0]} '{label_key}'")
    return data, labels


def _class_names(path: Path, key: str, n: int) -> list[str]:
    if not path.is_file():
        return [str(i) for i in range(n)]
    meta = restricted_pickle_load(path)
    names = meta.get(key.encode(), meta.get(key)) if isinstance(meta, dict) else None
    if not names or len(names) != n:
        return [str(i) for i in range(n)]
    return [x.decode() if isinstance(x, bytes) else str(x) for x in names]


def load_cifar(root: str | Path, split: str = "train", num_classes: int = 10,
               augment: bool | None = None) -> TensorImageDataset:
    """CIFAR-10 (``num_classes=10``) or CIFAR-100 (``100``, fine labels) split from ``root``."""
    if root is None:
        raise DatasetNotFoundError(
            f"CIFAR-{num_classes} cannot be downloaded here: pass the folder holding the python-pickle "
            f"batches (data root)")
    root = Path(root).expanduser()
    name = f"CIFAR-{num_classes}"
    if num_classes == 10:
        expected = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        label_key, meta_file, meta_key = "labels", "batches.meta", "label_names"
        mean, std = CIFAR_MEAN, CIFAR_STD
    elif num_classes == 100:
        expected = {"train": ["train"], "test": ["test"]}
        label_key, meta_file, meta_key = "fine_labels", "meta", "fine_label_names"
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    else:
        raise ValueError(f"CIFAR: num_classes must be 10 or 100, got {num_classes}")
    all_files = expected["train"] + expected["test"]
    if not root.is_dir():
        raise DatasetNotFoundError(f"{name}: data folder {root} does not exist; expected it to hold "
                                   f"{_describe(all_files)}")
    files = expected[split]
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DatasetNotFoundError(f"{name}: expected {_describe(all_files)} in {root}, missing "
                                   f"{', '.join(missing)}")
    parts = [_read_batch(root / f, label_key) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DatasetError(f"{name}: labels in {root} must lie in [0, {num_classes}), found "
                           f"[{labels.min()}, {labels.max()}]")
    images = torch.from_numpy(data).view(-1, 3, 32, 32)  # rows are R(1024) G(1024) B(1024)
    if augment is None:
        augment = split == "train"
    aug = partial(random_crop_flip, padding=4, flip=True) if augment else None
    classes = _class_names(root / meta_file, meta_key, num_classes)
    return TensorImageDataset(images, torch.from_numpy(labels), classes, mean, std, augment=aug,
                              name=f"cifar{num_classes}/{split}")


def _describe(files: list[str]) -> str:
    if files[:5] == [f"data_batch_{i}" for i in range(1, 6)]:
        return "data_batch_1..5 and " + " ".join(files[5:])
    return " and ".join(files)
