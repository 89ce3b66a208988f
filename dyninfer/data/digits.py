"""The embedded default data set: scikit-learn's handwritten digits (ships inside the sklearn
wheel, no download). 1,797 8×8 images, 10 classes, pixel values 0..16.

Split: stratified, seeded (random_state=0), 1,437 train / 360 test, identical on every call.
Images are scaled to [0, 1], upsampled 8×8 → 32×32 (bilinear, align_corners=False) and repeated
to 3 channels so CIFAR architectures apply unchanged; normalised with the train split's pixel
mean/std. Training augmentation: random crop with 4-pixel padding (one source pixel) and no
horizontal flip (a mirrored digit is a different glyph). Nothing is cached on disk.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from .base import TensorImageDataset
from .transforms import random_crop_flip

__all__ = ["load_digits", "DIGITS_TEST_SIZE"]

DIGITS_TEST_SIZE = 360
_SPLIT_SEED = 0


def _digits_tensors():
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    x = torch.from_numpy(bunch.data).float().div_(16.0).view(-1, 1, 8, 8)  # (1797, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(bunch.target).to(torch.int64)
    idx = torch.arange(len(y)).numpy()
    train_idx, test_idx = train_test_split(idx, test_size=DIGITS_TEST_SIZE, stratify=y.numpy(),
                                           random_state=_SPLIT_SEED, shuffle=True)
    return x, y, torch.from_numpy(train_idx), torch.from_numpy(test_idx)


def load_digits(split: str = "train", augment: bool | None = None) -> TensorImageDataset:
    x, y, train_idx, test_idx = _digits_tensors()
    idx = train_idx if split == "train" else test_idx
    up = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)  # (1797, 1, 32, 32)
    up = up.clamp_(0.0, 1.0)
    train_up = up[train_idx]
    mean, std = train_up.mean().item(), train_up.std().item()
    images = up[idx].expand(-1, 3, -1, -1).contiguous()  # (n, 3, 32, 32)
    if augment is None:
        augment = split == "train"
    aug = partial(random_crop_flip, padding=4, flip=False) if augment else None
    return TensorImageDataset(images, y[idx], [str(i) for i in range(10)], (mean,) * 3, (std,) * 3,
                              augment=aug, name=f"digits/{split}")
