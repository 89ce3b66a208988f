"""Fashion-MNIST (Zalando, 70,000 28×28 grey images of clothes in 10 classes) from local IDX files;
nothing is downloaded.

Where the files are read from: ``root=None`` means /usr/share/datasets/fashion-mnist, where the
Debian package ``dataset-fashion-mnist`` puts them (``make install`` installs it:
``apt-get install dataset-fashion-mnist``). A folder passed as ``root`` (``--data-root``) may hold
the four original IDX files, each either uncompressed or gzipped (``NAME`` or ``NAME.gz``; an
uncompressed file is preferred when both are there; gzip is recognised from the content):

    train-images-idx3-ubyte   train-labels-idx1-ubyte   (60,000)
    t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte    (10,000)

Checks: each IDX file is parsed with numpy (magic 0x0000 08 NDIM, i.e. unsigned bytes; images
N×28×28, labels N; the data length must match the header exactly); image and label counts must
agree and labels lie in 0..9. Integrity: a file whose decompressed size equals the size of the
published file is checked against the sha256 of the published (decompressed) bytes, hard-coded
below; a mismatch is a DatasetError naming the file, the expected and the computed digest. Files
of any other size (e.g. a small synthetic set) are parsed and checked but not hashed.
``verify=False`` skips the hash check entirely (for a modified copy of the data set). Debian
recompresses the .gz files, so only the decompressed bytes can be compared.

Images: each 28×28 grey image is zero-padded by 2 pixels on every side to 32×32 and repeated to
3 channels (a stride-0 view: memory holds one uint8 plane per image), so the 32×32×3 CIFAR
models apply unchanged. Normalisation: the pixel mean/std of the padded train images in [0, 1]
(the images as the model sees them, padding included), the same values for both splits, so
loading the test split also reads the train images. Training augmentation (``augment=None`` →
train split only): random crop with 4-pixel zero padding and horizontal flip (a mirrored garment
is still the same class).

Decoded arrays are cached in-process per resolved file (path, size and modification time), so
loading a split again is cheap; ``clear_cache()`` drops them.
"""
from __future__ import annotations

import gzip
import hashlib
import zlib
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch

from .base import DatasetError, DatasetNotFoundError, TensorImageDataset
from .transforms import random_crop_flip

__all__ = ["load_fashion_mnist", "fashion_mnist_stats", "clear_cache", "FASHION_MNIST_CLASSES",
           "FASHION_MNIST_DEFAULT_ROOT", "FASHION_MNIST_FILES", "FASHION_MNIST_SHA256"]

FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_COMMAND = "apt-get install dataset-fashion-mnist"

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")

# split -> (images file, labels file), names without .gz
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# sha256 and size of the *decompressed* published IDX files (computed from the Debian package
# dataset-fashion-mnist; its decompressed bytes are the original upstream files).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}

_SIDE, _PAD = 28, 2
_NUM_CLASSES = len(FASHION_MNIST_CLASSES)
_UBYTE = 0x08


# ----------------------------------------------------------------------------------- reading

def _find(root: Path, base: str) -> Path:
    for name in (base, base + ".gz"):
        p = root / name
        if p.is_file():
            return p
    raise DatasetNotFoundError(
        f"Fashion-MNIST: {root / base} (or {base}.gz) not found. Install the Debian package "
        f"({INSTALL_COMMAND}; it puts the files in {FASHION_MNIST_DEFAULT_ROOT}), or pass a folder "
        f"holding the original IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, with or without .gz) as root / --data-root")


def _read_bytes(path: Path, verify: bool) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path}: corrupt or truncated gzip data ({type(exc).__name__}: {exc})") from exc
    base = path.name[:-3] if path.name.endswith(".gz") else path.name
    known = FASHION_MNIST_SHA256.get(base)
    if verify and known is not None and len(raw) == known[1]:
        got = hashlib.sha256(raw).hexdigest()
        if got != known[0]:
            raise DatasetError(f"{path}: sha256 of the decompressed data does not match the published "
                               f"{base}: expected {known[0]}, got {got} (pass verify=False to use a "
                               f"modified copy)")
    return raw


def _parse_idx(raw: bytes, path: Path, ndim: int) -> np.ndarray:
    """IDX (big-endian header: 0x00 0x00 dtype ndim, then ndim uint32 sizes) of unsigned bytes."""
    kind = "images" if ndim == 3 else "labels"
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw)} bytes, not even the 4-byte magic number)")
    magic = int.from_bytes(raw[:4], "big")
    expected_magic = (_UBYTE << 8) | ndim
    if magic != expected_magic:
        raise DatasetError(f"{path}: bad magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
                           f"(IDX unsigned-byte {kind}, {ndim} dimension{'s' if ndim > 1 else ''})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if ndim == 3 and dims[1:] != (_SIDE, _SIDE):
        raise DatasetError(f"{path}: images are {dims[1]}×{dims[2]}, expected {_SIDE}×{_SIDE}")
    n_bytes = int(np.prod(dims, dtype=np.int64))
    have = len(raw) - header
    if have < n_bytes:
        raise DatasetError(f"{path}: truncated: header says {'×'.join(map(str, dims))} = {n_bytes} data bytes, "
                           f"file has {have}")
    if have > n_bytes:
        raise DatasetError(f"{path}: {have - n_bytes} bytes after the {'×'.join(map(str, dims))} data the "
                           f"header announces")
    return np.frombuffer(raw, dtype=np.uint8, count=n_bytes, offset=header).reshape(dims)


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


@lru_cache(maxsize=8)
def _load_pair(images_key: tuple[str, int, int], labels_key: tuple[str, int, int],
               verify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(padded uint8 images (N, 1, 32, 32), int64 labels (N,)) of one split; cached per file."""
    ipath, lpath = Path(images_key[0]), Path(labels_key[0])
    images = _parse_idx(_read_bytes(ipath, verify), ipath, 3)
    labels = _parse_idx(_read_bytes(lpath, verify), lpath, 1)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{lpath}: wrong count: {labels.shape[0]} labels for the {images.shape[0]} images "
                           f"of {ipath}")
    if labels.size and labels.max() >= _NUM_CLASSES:
        bad = int(np.argmax(labels >= _NUM_CLASSES))
        raise DatasetError(f"{lpath}: label out of range: labels must lie in 0..{_NUM_CLASSES - 1}, "
                           f"label {bad} is {int(labels[bad])}")
    side = _SIDE + 2 * _PAD
    padded = np.zeros((images.shape[0], 1, side, side), dtype=np.uint8)
    padded[:, 0, _PAD:_PAD + _SIDE, _PAD:_PAD + _SIDE] = images
    return torch.from_numpy(padded), torch.from_numpy(labels.astype(np.int64))


@lru_cache(maxsize=8)
def _pixel_stats(images_key: tuple[str, int, int], labels_key: tuple[str, int, int],
                 verify: bool) -> tuple[float, float]:
    padded, _ = _load_pair(images_key, labels_key, verify)
    hist = np.bincount(padded.numpy().ravel(), minlength=256).astype(np.float64)  # exact, one pass
    v = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum()
    mean = float((hist * v).sum() / n)
    std = float(np.sqrt((hist * (v - mean) ** 2).sum() / n))
    return mean, std


def _resolve_root(root: str | Path | None) -> Path:
    root = FASHION_MNIST_DEFAULT_ROOT if root is None else Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"Fashion-MNIST: data folder {root} does not exist. Install the Debian package "
            f"({INSTALL_COMMAND}; it puts the files in {FASHION_MNIST_DEFAULT_ROOT}), or pass a folder "
            f"holding the original IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, with or without .gz) as root / --data-root")
    return root


def _split_keys(root: Path, split: str):
    images_file, labels_file = FASHION_MNIST_FILES[split]
    return _file_key(_find(root, images_file)), _file_key(_find(root, labels_file))


# ----------------------------------------------------------------------------------- public

def fashion_mnist_stats(root: str | Path | None = None, verify: bool = True) -> tuple[float, float]:
    """(mean, std) of the padded 32×32 train images' pixels in [0, 1]: the normalisation of both splits."""
    return _pixel_stats(*_split_keys(_resolve_root(root), "train"), verify)


def clear_cache() -> None:
    """Drop the decoded arrays held in memory."""
    _pixel_stats.cache_clear()
    _load_pair.cache_clear()


def load_fashion_mnist(root: str | Path | None = None, split: str = "train", augment: bool | None = None,
                       verify: bool = True) -> TensorImageDataset:
    """Split 'train' (60,000) or 'test' (10,000; 'val' is an alias) of Fashion-MNIST as (3, 32, 32)
    images; see the module docstring for the files, checks, padding and normalisation."""
    if split == "val":
        split = "test"
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test', got '{split}'")
    root = _resolve_root(root)
    keys = _split_keys(root, split)
    train_keys = keys if split == "train" else _split_keys(root, "train")
    images, labels = _load_pair(*keys, verify)
    mean, std = _pixel_stats(*train_keys, verify)
    if augment is None:
        augment = split == "train"
    aug = partial(random_crop_flip, padding=4, flip=True) if augment else None
    return TensorImageDataset(images.expand(-1, 3, -1, -1), labels, FASHION_MNIST_CLASSES, (mean,) * 3,
                              (std,) * 3, augment=aug, name=f"fashion_mnist/{split}")
