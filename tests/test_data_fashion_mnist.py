"""Fashion-MNIST reader: small synthetic IDX files (raw and .gz), corrupt inputs, the real files."""
from __future__ import annotations

import gzip
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dyninfer.data import DatasetError, DatasetNotFoundError, dataset_input_size, load_dataset
from dyninfer.data import fashion_mnist as fm
from dyninfer.train import TrainConfig

REAL_ROOT = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.tobytes()


def _write(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _make_set(root: Path, n_train=20, n_test=7, gz=False, seed=0):
    """Writes all four files; returns {split: (images (n, 28, 28) uint8, labels (n,))}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)  # no zero pixel: padding is recognisable
        labels = np.arange(n, dtype=np.uint8) % 10
        rng.shuffle(labels)
        img_name, lab_name = fm.FASHION_MNIST_FILES[split]
        _write(root / img_name, _idx_bytes(images), gz)
        _write(root / lab_name, _idx_bytes(labels), gz)
        out[split] = (images, labels)
    return out


# ------------------------------------------------------------------------ synthetic, both encodings

@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_synthetic_idx_roundtrip(tmp_path, gz):
    ref = _make_set(tmp_path, gz=gz)
    train = load_dataset("fashion_mnist", tmp_path, "train", augment=False)
    test = load_dataset("fashion_mnist", tmp_path, "test")
    assert (len(train), len(test)) == (20, 7)
    assert train.classes == list(fm.FASHION_MNIST_CLASSES) and train.num_classes == 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert train.labels.tolist() == ref["train"][1].tolist()
    assert test.labels.tolist() == ref["test"][1].tolist()
    assert train.labels.dtype == torch.int64

    # in memory: uint8, one plane per image, the 3 channels a stride-0 view
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 3, 32, 32)
    assert train.images.stride(1) == 0
    raw = test.images[4]  # uint8 (3, 32, 32) as held in memory
    assert torch.equal(raw[0, 2:30, 2:30], torch.from_numpy(ref["test"][0][4]))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (raw[:, border] == 0).all()  # zero before normalisation, and the only zeros
    assert (raw[:, ~border] > 0).all()

    # normalised with the padded train images' statistics, the same for both splits
    padded = np.zeros((20, 32, 32))
    padded[:, 2:30, 2:30] = ref["train"][0] / 255.0
    mean, std = padded.mean(), padded.std()
    assert fm.fashion_mnist_stats(tmp_path) == pytest.approx((mean, std), rel=1e-9)
    torch.testing.assert_close(test.mean, torch.full((3,), mean, dtype=torch.float32))
    torch.testing.assert_close(train.std, test.std)
    x, y = test[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.item() == ref["test"][1][4]
    expected = (raw.float() / 255 - mean) / std
    torch.testing.assert_close(x, expected)
    xs = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(xs.mean().item()) < 1e-4 and abs(xs.std(unbiased=False).item() - 1) < 1e-4


def test_augment_default_train_only(tmp_path):
    _make_set(tmp_path)
    assert load_dataset("fashion_mnist", tmp_path, "train").augment is not None
    assert load_dataset("fashion_mnist", tmp_path, "test").augment is None
    assert load_dataset("fashion_mnist", tmp_path, "val").augment is None
    aug = load_dataset("fashion_mnist", tmp_path, "train")
    plain = load_dataset("fashion_mnist", tmp_path, "train", augment=False)
    assert aug.augment.keywords == {"padding": 4, "flip": True}
    torch.manual_seed(0)
    diffs = [not torch.equal(aug[i][0], plain[i][0]) for i in range(20)]
    assert sum(diffs) >= 15  # identity needs the centre crop (1/81) and no flip (1/2)
    # the augmented image keeps shape and its labels
    x, y = aug[3]
    assert x.shape == (3, 32, 32) and y == plain[3][1]


def test_raw_preferred_over_gz_and_gzip_detected_by_content(tmp_path):
    ref = _make_set(tmp_path, gz=True, seed=1)
    (tmp_path / "other").mkdir()
    other = _make_set(tmp_path / "other", seed=2)
    # a raw copy of the test images beside the .gz: the raw one is read
    name = fm.FASHION_MNIST_FILES["test"][0]
    (tmp_path / name).write_bytes(_idx_bytes(other["test"][0]))
    test = load_dataset("fashion_mnist", tmp_path, "test")
    assert torch.equal(test.images[2, 0, 2:30, 2:30], torch.from_numpy(other["test"][0][2]))
    assert not torch.equal(test.images[2, 0, 2:30, 2:30], torch.from_numpy(ref["test"][0][2]))
    # gzip data under the raw name still decodes
    (tmp_path / name).write_bytes(gzip.compress(_idx_bytes(ref["test"][0])))
    test = load_dataset("fashion_mnist", tmp_path, "test")
    assert torch.equal(test.images[2, 0, 2:30, 2:30], torch.from_numpy(ref["test"][0][2]))


def test_cache_reuses_decoded_arrays_and_sees_changed_files(tmp_path):
    ref = _make_set(tmp_path)
    a = load_dataset("fashion_mnist", tmp_path, "train", augment=False)
    b = load_dataset("fashion_mnist", str(tmp_path) + "/.", "train", augment=False)  # same resolved root
    assert a.images.untyped_storage().data_ptr() == b.images.untyped_storage().data_ptr()
    # a rewritten file of the same size is noticed (modification time is part of the key): no stale data
    lab = tmp_path / fm.FASHION_MNIST_FILES["train"][1]
    lab.write_bytes(_idx_bytes(np.zeros(20, np.uint8)))
    os.utime(lab, ns=(1, 1))
    c = load_dataset("fashion_mnist", tmp_path, "train", augment=False)
    assert c.labels.tolist() == [0] * 20 != ref["train"][1].tolist()


# --------------------------------------------------------------------------------- corrupt inputs

def _train_images(root):
    return root / fm.FASHION_MNIST_FILES["train"][0]


def test_bad_magic(tmp_path):
    _make_set(tmp_path)
    p = _train_images(tmp_path)
    data = bytearray(p.read_bytes())
    data[2] = 0x0D  # float32 dtype code
    p.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"{p}: bad magic number 0x00000d03, expected 0x00000803"):
        load_dataset("fashion_mnist", tmp_path, "train")
    # labels file passed where images are expected (magic ...0801)
    p.write_bytes((tmp_path / fm.FASHION_MNIST_FILES["train"][1]).read_bytes())
    with pytest.raises(DatasetError, match="bad magic number 0x00000801"):
        load_dataset("fashion_mnist", tmp_path, "train")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_truncated(tmp_path, gz):
    _make_set(tmp_path, gz=gz)
    name = fm.FASHION_MNIST_FILES["train"][0] + (".gz" if gz else "")
    p = tmp_path / name
    data = p.read_bytes()
    p.write_bytes(data[:-100] if not gz else data[: len(data) // 2])
    msg = "truncated: header says 20×28×28 = 15680 data bytes, file has 15580" if not gz else "corrupt or truncated gzip"
    with pytest.raises(DatasetError, match=rf"{p}: {msg}"):
        load_dataset("fashion_mnist", tmp_path, "train")
    p.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match=rf"{p}: truncated IDX file"):
        load_dataset("fashion_mnist", tmp_path, "train")


def test_trailing_bytes_and_wrong_image_size(tmp_path):
    _make_set(tmp_path)
    p = _train_images(tmp_path)
    p.write_bytes(p.read_bytes() + b"\x01\x02")
    with pytest.raises(DatasetError, match=rf"{p}: 2 bytes after"):
        load_dataset("fashion_mnist", tmp_path, "train")
    p.write_bytes(_idx_bytes(np.ones((3, 32, 32), np.uint8)))
    with pytest.raises(DatasetError, match=rf"{p}: images are 32×32, expected 28×28"):
        load_dataset("fashion_mnist", tmp_path, "train")


def test_label_count_mismatch_and_range(tmp_path):
    _make_set(tmp_path)
    lab = tmp_path / fm.FASHION_MNIST_FILES["test"][1]
    lab.write_bytes(_idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(DatasetError, match=rf"{lab}: wrong count: 6 labels for the 7 images"):
        load_dataset("fashion_mnist", tmp_path, "test")
    labels = np.zeros(7, np.uint8)
    labels[5] = 10
    lab.write_bytes(_idx_bytes(labels))
    with pytest.raises(DatasetError, match=rf"{lab}: label out of range: .*0\.\.9, label 5 is 10"):
        load_dataset("fashion_mnist", tmp_path, "test")


def test_missing_file_and_folder(tmp_path):
    _make_set(tmp_path)
    lab = tmp_path / fm.FASHION_MNIST_FILES["train"][1]
    lab.unlink()
    with pytest.raises(DatasetNotFoundError, match=rf"{lab} \(or train-labels-idx1-ubyte.gz\) not found") as e:
        load_dataset("fashion_mnist", tmp_path, "train")
    assert "apt-get install dataset-fashion-mnist" in str(e.value) and "--data-root" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    # the test split needs the train images for its normalisation: it names the train file too
    with pytest.raises(DatasetNotFoundError, match="train-labels-idx1-ubyte"):
        load_dataset("fashion_mnist", tmp_path, "test")
    with pytest.raises(DatasetNotFoundError, match=rf"{tmp_path / 'nope'} does not exist.*apt-get install "
                                                   r"dataset-fashion-mnist"):
        load_dataset("fashion_mnist", tmp_path / "nope", "test")


def test_checksum_applies_to_full_size_files(tmp_path, monkeypatch):
    _make_set(tmp_path)
    p = _train_images(tmp_path)
    size = p.stat().st_size
    # pretend the synthetic file is the published one: sizes match, digest does not
    table = dict(fm.FASHION_MNIST_SHA256)
    table[p.name] = ("0" * 64, size)
    monkeypatch.setattr(fm, "FASHION_MNIST_SHA256", table)
    got = hashlib.sha256(p.read_bytes()).hexdigest()
    with pytest.raises(DatasetError, match=rf"{p}: sha256 .* expected 0{{64}}, got {got}"):
        load_dataset("fashion_mnist", tmp_path, "train")
    assert len(fm.load_fashion_mnist(tmp_path, "train", verify=False)) == 20
    table[p.name] = (got, size)
    fm.clear_cache()
    assert len(fm.load_fashion_mnist(tmp_path, "train")) == 20


def test_registry_and_trainconfig():
    assert dataset_input_size("fashion_mnist") == (3, 32, 32)
    assert TrainConfig(dataset="fashion_mnist").data_root is None  # default root: the Debian folder
    with pytest.raises(ValueError, match="data_root"):
        TrainConfig(dataset="cifar10")
    with pytest.raises(ValueError, match="split"):
        fm.load_fashion_mnist(split="dev")


# ------------------------------------------------------------------------------------ real files

@pytest.mark.skipif(not REAL_ROOT.is_dir(), reason=f"{REAL_ROOT} missing: apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist():
    fm.clear_cache()
    t0 = time.perf_counter()
    train = load_dataset("fashion_mnist", split="train")  # checksums verified on the way
    test = load_dataset("fashion_mnist", split="test")
    elapsed = time.perf_counter() - t0
    assert (len(train), len(test)) == (60000, 10000)
    assert train.num_classes == 10 and train.classes == list(fm.FASHION_MNIST_CLASSES)
    assert torch.bincount(train.labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert train.images.shape == (60000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.images.stride(1) == 0  # not 60000×3×32×32 bytes
    assert (train.images[:, 0, :2].max() == 0) and (train.images[:, 0, :, 30:].max() == 0)
    assert train.images[:, 0, 2:30, 2:30].max() == 255
    mean, std = fm.fashion_mnist_stats()
    # the published 28×28 mean 0.2860 / std 0.3530, here over the padded 32×32 images
    assert mean == pytest.approx(0.2860 * 784 / 1024, abs=2e-4) and std == pytest.approx(0.3318, abs=2e-4)
    assert test.mean[0].item() == pytest.approx(mean)
    assert elapsed < 10, f"decoding both splits took {elapsed:.1f} s"
    # each file present matches the hard-coded digest of the published decompressed bytes
    for base, (digest, size) in fm.FASHION_MNIST_SHA256.items():
        path = fm._find(REAL_ROOT, base)
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        assert len(raw) == size and hashlib.sha256(raw).hexdigest() == digest, path
    x, y = test[0]
    assert x.shape == (3, 32, 32) and 0 <= y.item() < 10


@pytest.mark.skipif(not REAL_ROOT.is_dir(), reason=f"{REAL_ROOT} missing: apt-get install dataset-fashion-mnist")
def test_real_files_are_verified(tmp_path):
    """A published-size file with one changed byte fails the checksum (verify=False accepts it)."""
    for base in (*fm.FASHION_MNIST_FILES["train"], *fm.FASHION_MNIST_FILES["test"]):
        src = fm._find(REAL_ROOT, base)
        (tmp_path / src.name).symlink_to(src)
    name = fm.FASHION_MNIST_FILES["test"][1]
    src = fm._find(REAL_ROOT, name)
    raw = bytearray(gzip.decompress(src.read_bytes()) if src.name.endswith(".gz") else src.read_bytes())
    raw[8] = (raw[8] + 1) % 10  # first label, still in range
    (tmp_path / src.name).unlink()
    (tmp_path / name).write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=rf"{tmp_path / name}: sha256 .*expected {fm.FASHION_MNIST_SHA256[name][0]}"):
        load_dataset("fashion_mnist", tmp_path, "test")
    ds = fm.load_fashion_mnist(tmp_path, "test", verify=False)
    assert ds.labels[0].item() == raw[8]
