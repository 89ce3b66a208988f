"""Image transforms written with torch and PIL only (torchvision does not import beside the CPU
torch build this project targets).

Random decisions draw from torch's global generator, so ``torch.manual_seed`` makes a run
repeatable (the training loop uses num_workers=0 by default).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_crop_flip", "normalize", "pil_to_tensor", "random_resized_crop", "resize_center_crop",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_crop_flip(x: Tensor, padding: int = 4, flip: bool = True) -> Tensor:
    """CIFAR augmentation of one image (C, H, W): zero-pad by ``padding``, crop a random H×W
    window, and mirror horizontally with probability 1/2 when ``flip``."""
    c, h, w = x.shape
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding))  # (C, H+2p, W+2p)
        i, j = torch.randint(0, 2 * padding + 1, (2,)).tolist()
        x = x[:, i:i + h, j:j + w]
    if flip and torch.rand(()).item() < 0.5:
        x = x.flip(-1)
    return x


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(C, H, W) float image; ``mean``/``std`` of shape (C,)."""
    return (x - mean[:, None, None]) / std[:, None, None]


def pil_to_tensor(img) -> Tensor:
    """PIL RGB image -> float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def random_resized_crop(img, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop (the standard ImageNet training crop) of a PIL image, resized to
    size×size. Falls back to a centre crop after 10 failed draws, like the reference recipe."""
    from PIL import Image

    width, height = img.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(()).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(()).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, ()).item()
            j = torch.randint(0, width - w + 1, ()).item()
            return img.resize((size, size), Image.BILINEAR, box=(j, i, j + w, i + h))
    # centre crop with the ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    i, j = (height - h) // 2, (width - w) // 2
    return img.resize((size, size), Image.BILINEAR, box=(j, i, j + w, i + h))


def resize_center_crop(img, size: int, resize: int | None = None):
    """Evaluation transform: resize the shorter side to ``resize`` (default size/0.875, i.e.
    256 for 224) and take the central size×size crop."""
    from PIL import Image

    resize = resize or int(round(size / 0.875))
    width, height = img.size
    if width <= height:
        new_w, new_h = resize, max(1, int(round(height * resize / width)))
    else:
        new_w, new_h = max(1, int(round(width * resize / height))), resize
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))
