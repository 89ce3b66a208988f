"""Data readers: embedded digits, CIFAR pickle folders, ImageFolder trees, and their errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from dyninfer.data import DatasetError, DatasetNotFoundError, load_dataset


# --------------------------------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train", augment=False), load_dataset("digits", split="test")


def test_digits_shapes_and_labels(digits):
    train, test = digits
    assert (len(train), len(test)) == (1437, 360)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert train.num_classes == test.num_classes == 10
    assert train.labels.dtype == torch.int64
    # stratified: every class in the test split 35-37 times
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # normalised with the train split's statistics
    xs = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(xs.mean().item()) < 1e-3 and abs(xs.std().item() - 1) < 1e-2
    # the 3 channels are copies of the gray image
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_digits_split_is_deterministic_and_disjoint(digits):
    train, test = digits
    train2, test2 = load_dataset("digits", split="train", augment=False), load_dataset("digits", split="test")
    assert torch.equal(train.images, train2.images) and torch.equal(test.labels, test2.labels)
    # no test image also in train
    flat_train = {tuple(r.tolist()) for r in train.images[:, 0, ::4, ::4].reshape(len(train), -1).round(decimals=4)}
    dup = sum(tuple(r.tolist()) in flat_train
              for r in test.images[:, 0, ::4, ::4].reshape(len(test), -1).round(decimals=4))
    assert dup <= 2  # sklearn digits holds a couple of genuine duplicates; a leak would give 360


def test_digits_train_augmentation_changes_images_test_does_not():
    aug = load_dataset("digits", split="train")
    plain = load_dataset("digits", split="train", augment=False)
    torch.manual_seed(0)
    diffs = [not torch.equal(aug[i][0], plain[i][0]) for i in range(20)]
    assert any(diffs)  # 1/81 chance per image of the identity crop
    test = load_dataset("digits", split="test")
    assert torch.equal(test[3][0], test[3][0])


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="dev")


# ---------------------------------------------------------------------------------------- CIFAR

def _write_batch(path, n, seed, label_key="labels", num_classes=10, protocol=2):
    rng = np.random.default_rng(seed)
    d = {b"batch_label": b"fake", label_key.encode(): rng.integers(0, num_classes, n).tolist(),
         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         b"filenames": [f"img{i}.png".encode() for i in range(n)]}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=protocol)
    return d


@pytest.fixture
def cifar10_dir(tmp_path):
    for i in range(1, 6):
        _write_batch(tmp_path / f"data_batch_{i}", 4, i)
    _write_batch(tmp_path / "test_batch", 3, 9)
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return tmp_path


def test_cifar10_reader(cifar10_dir):
    train = load_dataset("cifar10", cifar10_dir, "train", augment=False)
    test = load_dataset("cifar10", cifar10_dir, "test")
    assert (len(train), len(test)) == (20, 3)
    assert train.classes[3] == "c3"
    ref = _write_batch(cifar10_dir / "unused", 4, 1)  # same seed as data_batch_1
    assert train.labels[:4].tolist() == ref[b"labels"]
    # pixel layout: row = R plane, G plane, B plane of a 32x32 image
    x, y = train[1]
    raw = torch.from_numpy(ref[b"data"][1]).view(3, 32, 32).float() / 255
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    torch.testing.assert_close(x, (raw - mean[:, None, None]) / std[:, None, None])
    assert y.dtype == torch.int64 and y.item() == ref[b"labels"][1]
    # training augmentation keeps the shape
    aug = load_dataset("cifar10", cifar10_dir, "train")
    assert aug[0][0].shape == (3, 32, 32)


def test_cifar100_reader(tmp_path):
    _write_batch(tmp_path / "train", 6, 1, "fine_labels", 100, protocol=pickle.HIGHEST_PROTOCOL)
    _write_batch(tmp_path / "test", 2, 2, "fine_labels", 100, protocol=pickle.HIGHEST_PROTOCOL)
    ds = load_dataset("cifar100", tmp_path, "test")
    assert len(ds) == 2 and ds.num_classes == 100


def test_cifar_missing_file_names_it(cifar10_dir):
    (cifar10_dir / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_1\.\.5 and test_batch in .*missing data_batch_3"):
        load_dataset("cifar10", cifar10_dir, "train")
    load_dataset("cifar10", cifar10_dir, "test")  # the test split is complete


def test_cifar_missing_folder_and_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nope")):
        load_dataset("cifar10", tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="folder"):
        load_dataset("cifar100", None)


def test_cifar_malformed_batches_raise_with_path(cifar10_dir):
    (cifar10_dir / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset("cifar10", cifar10_dir, "test")
    with open(cifar10_dir / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"test_batch.*\(n, 3072\)"):
        load_dataset("cifar10", cifar10_dir, "test")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_restricted_unpickler_refuses_code(cifar10_dir, capsys):
    with open(cifar10_dir / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DatasetError, match="print.* is not allowed"):
        load_dataset("cifar10", cifar10_dir, "test")
    assert "pwned" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------- ImageFolder

@pytest.fixture
def image_tree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagefolder_reader(image_tree):
    train = load_dataset("imagefolder", image_tree, "train", image_size=24)
    val = load_dataset("imagefolder", image_tree, "val", image_size=24)
    assert train.classes == ["cat", "dog"] and len(train) == 6 and len(val) == 4
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    torch.manual_seed(0)
    x, y = train[4]
    assert x.shape == (3, 24, 24) and y.item() == 1 and y.dtype == torch.int64
    v1, v2 = val[0][0], val[0][0]
    assert v1.shape == (3, 24, 24) and torch.equal(v1, v2)  # eval transform is deterministic
    assert torch.equal(load_dataset("imagefolder", image_tree, "test", image_size=24)[0][0], v1)


def test_imagefolder_errors(image_tree, tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "empty" / "train")):
        load_dataset("imagefolder", tmp_path / "empty")
    (image_tree / "val" / "bird").mkdir()
    with pytest.raises(DatasetError, match="bird"):
        load_dataset("imagefolder", image_tree, "val")
    (image_tree / "val" / "bird").rmdir()
    (image_tree / "val" / "dog" / "0.png").write_bytes(b"garbage")
    val = load_dataset("imagefolder", image_tree, "val", image_size=24)
    with pytest.raises(DatasetError, match=r"dog/0\.png"):
        val[2]
