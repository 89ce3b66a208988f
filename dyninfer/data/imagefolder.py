"""ImageFolder trees read with PIL (no torchvision):

    root/train/<class>/*.jpg|jpeg|png|bmp|webp
    root/val/<class>/*.jpg ...        (split 'test' and 'val' both read root/val)

Class indices follow the sorted sub-folder names of root/train; val must not hold other classes.
Training: random-resized crop (scale 0.08–1, ratio 3/4–4/3) to image_size + horizontal flip;
evaluation: resize the shorter side to image_size/0.875 (256 for 224) + centre crop. Normalised
with the ImageNet mean/std. Files are decoded on every access (nothing cached).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import DatasetError, DatasetNotFoundError
from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, pil_to_tensor, random_resized_crop, resize_center_crop

__all__ = ["ImageFolderDataset", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class ImageFolderDataset(Dataset):
    def __init__(self, root: str | Path, split: str = "train", image_size: int = 224, augment: bool | None = None):
        if root is None:
            raise DatasetNotFoundError("ImageFolder: pass the data root holding train/<class>/ and val/<class>/")
        self.root = Path(root).expanduser()
        folder = "train" if split == "train" else "val"
        train_dir, self.dir = self.root / "train", self.root / folder
        for d in {train_dir, self.dir}:
            if not d.is_dir():
                raise DatasetNotFoundError(f"ImageFolder: expected folder {d} (layout root/train/<class>/*.jpg, "
                                           f"root/val/<class>/*.jpg)")
        self.classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        if not self.classes:
            raise DatasetError(f"ImageFolder: {train_dir} has no class sub-folders (expected {train_dir}/<class>/*.jpg)")
        self.num_classes = len(self.classes)
        index = {c: i for i, c in enumerate(self.classes)}
        extra = sorted(p.name for p in self.dir.iterdir() if p.is_dir() and p.name not in index)
        if extra:
            raise DatasetError(f"ImageFolder: {self.dir} has class folders not in {train_dir}: {', '.join(extra)}")
        self.samples: list[tuple[Path, int]] = []
        for c in self.classes:
            d = self.dir / c
            if d.is_dir():
                self.samples += [(p, index[c]) for p in sorted(d.iterdir())
                                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not self.samples:
            raise DatasetError(f"ImageFolder: no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.dir}/<class>/")
        self.labels = torch.tensor([s[1] for s in self.samples], dtype=torch.int64)
        self.image_size = image_size
        self.augment = (split == "train") if augment is None else augment
        self.mean = torch.tensor(IMAGENET_MEAN)
        self.std = torch.tensor(IMAGENET_STD)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"ImageFolder: cannot decode image {path}: {exc}") from exc
        if self.augment:
            img = random_resized_crop(img, self.image_size)
            x = pil_to_tensor(img)  # (3, S, S)
            if torch.rand(()).item() < 0.5:
                x = x.flip(-1)
        else:
            x = pil_to_tensor(resize_center_crop(img, self.image_size))
        return normalize(x, self.mean, self.std), self.labels[i]

    def __repr__(self) -> str:
        return f"ImageFolderDataset({self.dir}, n={len(self)}, classes={self.num_classes}, augment={self.augment})"
