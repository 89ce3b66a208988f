"""The shipped checkpoints: every gated one loads, compiles, matches PyTorch, and is dynamic.

Each ``dyninfer/assets/*_dynamic.safetensors`` was made by benchmarks/train_dynamic.py; its metadata
carries the figures it was shipped with, and these tests recompute the headline ones."""
from pathlib import Path

import pytest
import torch

import dyninfer
from dyninfer import checkpoint
from dyninfer.analysis.conditionality import conditionality
from dyninfer.data import load_dataset

ASSETS = Path(dyninfer.__file__).parent / "assets"
GATED = sorted(ASSETS.glob("*_dynamic.safetensors"))
TEST_IMAGES = 1000  # enough for firing rates to 0.03; the full split of digits (360)


@pytest.mark.parametrize("asset", GATED, ids=[p.stem for p in GATED])
def test_shipped_gated_checkpoint_compiles_matches_pytorch_and_is_dynamic(asset):
    assert asset.stat().st_size < 5e6
    meta = checkpoint.read_metadata(asset)
    assert meta["config"]["model"]["gated"]
    model = checkpoint.load_model(asset)
    test = load_dataset(meta["config"]["train"]["dataset"], split="test")
    n = min(TEST_IMAGES, len(test))
    x = torch.stack([test[i][0] for i in range(n)])
    y = torch.tensor([int(test[i][1]) for i in range(n)])
    torch.set_num_threads(1)
    with torch.no_grad():
        ref = model(x[:64])
    zref = dyninfer.calculation_path(model)
    engine = dyninfer.compile(model)
    out, path = engine(x[:64], return_path=True)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-4
    logits = torch.cat([g.logits for g in dyninfer.gates(model).values()], 1)
    assert (logits[path != zref].abs() < 1e-5).all()  # decisions differ only at |g| ~ 0
    # a trained model whose paths depend on the input (README "Dynamic gates"). The target is
    # >= 50% dynamic filters; the digits ResNet-56 stands at 49.3% (README), so this guards against
    # a static model coming back rather than restating the target.
    c = conditionality(model, x, y)
    assert c.dynamic_share >= 0.45, c.summary()
    assert c.density < 0.75 and meta["metrics"]["macs_ratio"] <= 0.5
    assert c.static_drop >= 2.0, c.summary()  # forcing one static path costs accuracy
    assert c.hamming_diff > c.hamming_same  # other classes take more different paths than the same class
    assert c.accuracy > 0.85


def test_the_digits_resnet56_is_shipped():
    """The engine benchmark's and `dyninfer analyze`'s default model."""
    assert ASSETS / "resnet56_digits_dynamic.safetensors" in GATED


DENSE = sorted(ASSETS.glob("*_dense.safetensors"))


@pytest.mark.parametrize("asset", DENSE, ids=[p.stem for p in DENSE])
def test_shipped_dense_checkpoint_is_a_trained_dense_model(asset):
    """The dense models the gated ones were fine-tuned from (and `dyninfer analyze`'s baselines)."""
    meta = checkpoint.read_metadata(asset)
    assert not meta["config"]["model"]["gated"] and asset.stat().st_size < 5e6
    model = checkpoint.load_model(asset)
    test = load_dataset(meta["config"]["train"]["dataset"], split="test")
    n = min(500, len(test))
    x = torch.stack([test[i][0] for i in range(n)])
    y = torch.tensor([int(test[i][1]) for i in range(n)])
    torch.set_num_threads(1)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.85 and abs(acc - meta["metrics"]["test_acc"]) < 0.05
