"""Data sets: the embedded digits default, Fashion-MNIST (Debian package or IDX folder), CIFAR-10/100
pickle folders and ImageFolder trees.

    load_dataset(name, root=None, split="train", augment=None, image_size=224) -> Dataset

Every returned Dataset yields (float image (C, H, W) normalised, int64 label) and has
``classes``, ``num_classes`` and ``labels`` attributes. ``augment=None`` means "the standard
training augmentation for split 'train', none for 'test'". Missing or malformed data raise
DatasetNotFoundError / DatasetError naming the file or folder that was expected.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .base import DatasetError, DatasetNotFoundError, TensorImageDataset
from .cifar import load_cifar
from .digits import load_digits
from .fashion_mnist import load_fashion_mnist
from .imagefolder import ImageFolderDataset

__all__ = ["load_dataset", "list_datasets", "dataset_input_size", "DatasetError", "DatasetNotFoundError",
           "TensorImageDataset", "ImageFolderDataset", "load_cifar", "load_digits", "load_fashion_mnist"]

_NAMES = ("digits", "fashion_mnist", "cifar10", "cifar100", "imagefolder")
_SPLITS = ("train", "test", "val")


def list_datasets() -> list[str]:
    return list(_NAMES)


def dataset_input_size(name: str, image_size: int = 224) -> tuple[int, int, int]:
    """(C, H, W) of the images ``load_dataset(name)`` yields."""
    _check_name(name)
    return (3, image_size, image_size) if name == "imagefolder" else (3, 32, 32)


def _check_name(name: str) -> None:
    if name not in _NAMES:
        raise ValueError(f"unknown dataset '{name}'; available: {', '.join(_NAMES)}")


def load_dataset(name: str, root: str | Path | None = None, split: str = "train", augment: bool | None = None,
                 image_size: int = 224) -> Dataset:
    """Load split 'train' or 'test' ('val' is an alias of 'test') of data set ``name``.

    digits: embedded, ``root`` ignored. fashion_mnist: IDX files (raw or .gz) in ``root``, default
    /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist); 28×28 grey zero-padded
    to 32×32 and repeated to 3 channels. cifar10/cifar100: ``root`` holds the python-pickle batches
    (must be a trusted folder; read with a restricted unpickler). imagefolder: ``root`` holds
    train/<class>/ and val/<class>/.
    """
    _check_name(name)
    if split not in _SPLITS:
        raise ValueError(f"load_dataset('{name}'): split must be one of {_SPLITS}, got '{split}'")
    split = "test" if split == "val" else split
    if name == "digits":
        return load_digits(split, augment=augment)
    if name == "fashion_mnist":
        return load_fashion_mnist(root, split, augment=augment)
    if name in ("cifar10", "cifar100"):
        return load_cifar(root, split, num_classes=int(name[5:]), augment=augment)
    return ImageFolderDataset(root, split, image_size=image_size, augment=augment)
