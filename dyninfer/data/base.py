"""Dataset classes and errors shared by the readers."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import normalize

__all__ = ["DatasetError", "DatasetNotFoundError", "TensorImageDataset"]


class DatasetError(RuntimeError):
    """A data set is malformed; the message names the file or folder and what was expected."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """An expected file or folder of a data set is missing; the message says what and where."""


class TensorImageDataset(Dataset):
    """Images held in memory as one tensor (N, C, H, W), uint8 in [0, 255] or float in [0, 1].

    ``__getitem__`` returns (normalised float image (C, H, W), int64 label) after ``augment``
    (applied to the [0, 1] image before normalisation, so padding is black as in the usual
    recipe). Attributes: ``classes`` (names), ``num_classes``, ``labels`` (N,) int64.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], augment: Callable[[Tensor], Tensor] | None = None, name: str = ""):
        if images.dim() != 4:
            raise ValueError(f"{name}: expected images (N, C, H, W), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{name}: expected {images.shape[0]} labels, got shape {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.augment = augment
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.images[i]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.augment is not None:
            x = self.augment(x)
        return normalize(x, self.mean, self.std), self.labels[i]

    def __repr__(self) -> str:
        return (f"TensorImageDataset({self.name}, n={len(self)}, image={tuple(self.images.shape[1:])}, "
                f"classes={self.num_classes}, augment={self.augment is not None})")
