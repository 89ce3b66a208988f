"""The gated ResNet-56 shipped for the engine benchmark loads, verifies and compiles."""
from pathlib import Path

import pytest
import torch

import dyninfer
from dyninfer import checkpoint
from dyninfer.data import load_dataset

ASSET = Path(dyninfer.__file__).parent / "assets" / "resnet56_digits_r05.safetensors"


@pytest.mark.skipif(not ASSET.exists(), reason="benchmarks/train_resnet56_digits.py has not been run")
def test_shipped_resnet56_checkpoint_compiles_and_matches_pytorch():
    assert ASSET.stat().st_size < 5e6
    meta = checkpoint.read_metadata(ASSET)
    assert meta["config"]["model"]["name"] == "resnet56" and meta["config"]["model"]["gated"]
    model = checkpoint.load_model(ASSET)
    test = load_dataset("digits", split="test")
    x = torch.stack([test[i][0] for i in range(64)])
    y = torch.tensor([test[i][1] for i in range(64)])
    with torch.no_grad():
        ref = model(x)
    zref = dyninfer.calculation_path(model)
    engine = dyninfer.compile(model)
    out, path = engine(x, return_path=True)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-4
    logits = torch.cat([g.logits for g in dyninfer.gates(model).values()], 1)
    assert (logits[path != zref].abs() < 1e-5).all()
    # the checkpoint is a trained, sparse model, not a placeholder
    assert (out.argmax(1) == y).float().mean().item() > 0.9
    assert 0.2 < path.mean().item() < 0.8
