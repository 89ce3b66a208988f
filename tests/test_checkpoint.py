"""Checkpoints: round trip, and clear errors for missing / corrupt / truncated / mismatched files."""
from __future__ import annotations

import json

import pytest
import torch

from dyninfer.checkpoint import (CheckpointError, load_checkpoint, load_model, read_metadata, save_checkpoint,
                                 weights_sha256)
from dyninfer.models import create_model


def _trained_looking(model):
    """Give every parameter and BN buffer non-default values so a missed tensor would show."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.add_(0.1 * torch.randn(t.shape, generator=g))
            if t.dim() == 1:
                t.abs_()  # running_var must stay positive
    return model.eval()


@pytest.mark.parametrize("gated", [True, False])
def test_round_trip_identical_outputs(tmp_path, gated):
    model = _trained_looking(create_model("resnet20", num_classes=7, gated=gated, reduction=2))
    path = save_checkpoint(tmp_path / "ck", model, {"run": "test"}, {"test_acc": 0.5})
    assert path == tmp_path / "ck.safetensors" and path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # temp file replaced
    x = torch.randn(3, 3, 32, 32)
    loaded = load_model(path)
    assert not loaded.training
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    state, config = load_checkpoint(tmp_path / "ck")  # suffix optional
    assert config["run"] == "test"
    assert config["model"] == {"name": "resnet20", "num_classes": 7, "gated": gated,
                               "reduction": 2 if gated else 4}  # a dense model has no gates: default
    assert state.keys() == model.state_dict().keys()
    meta = read_metadata(path)
    assert meta["metrics"] == {"test_acc": 0.5} and meta["format_version"] == 1
    assert meta["sha256"] == weights_sha256(model.state_dict())


def test_boosted_gates_round_trip_and_bad_flags_are_refused(tmp_path):
    from dyninfer.nn import gates

    model = _trained_looking(create_model("resnet20", num_classes=5, gated=True))
    for g in gates(model).values():
        g.boost = True
    path = save_checkpoint(tmp_path / "ck", model, {})
    assert read_metadata(path)["config"]["model"]["boost"] is True
    loaded = load_model(path)
    assert all(g.boost for g in gates(loaded).values())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    state, config = load_checkpoint(path)
    for bad in ("yes", 1):
        config["model"]["boost"] = bad
        p2 = save_checkpoint(tmp_path / "bad", state, config)
        with pytest.raises(CheckpointError, match="boost"):
            load_model(p2)
    next(iter(gates(model).values())).boost = False  # mixed flags cannot be written as one spec
    with pytest.raises(CheckpointError, match="boosted"):
        save_checkpoint(tmp_path / "mixed", model, {})


def test_overwrite_is_atomic_replace(tmp_path):
    m = create_model("resnet20", gated=False)
    save_checkpoint(tmp_path / "ck", m, {}, {"epoch": 1})
    save_checkpoint(tmp_path / "ck", m, {}, {"epoch": 2})
    assert read_metadata(tmp_path / "ck")["metrics"]["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"]


@pytest.fixture
def saved(tmp_path):
    return save_checkpoint(tmp_path / "ck", create_model("resnet20"), {"a": 1})


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.safetensors does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_corrupt_weights_fail_checksum(saved):
    data = bytearray(saved.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor's data
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: sha256"):
        load_checkpoint(saved)
    with pytest.raises(CheckpointError, match=str(saved)):
        load_model(saved)


@pytest.mark.parametrize("keep", [0, 5, 100, -200])
def test_truncated_file(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(saved)


def test_garbage_header(saved):
    data = bytearray(saved.read_bytes())
    data[8:12] = b"\x00\xff\x00\xff"
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(saved)


def _rewrite_meta(path, **changes):
    from safetensors.torch import load, save

    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n])["__metadata__"]
    meta.update(changes)
    path.write_bytes(save(load(data), metadata={k: v for k, v in meta.items() if v is not None}))


def test_wrong_format_version(saved):
    _rewrite_meta(saved, format_version="99")
    with pytest.raises(CheckpointError, match="format version '99'"):
        load_checkpoint(saved)


def test_plain_safetensors_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match="not a dyninfer checkpoint"):
        load_checkpoint(tmp_path / "x.safetensors")


def test_config_does_not_match_weights(saved):
    spec = {"name": "resnet32", "num_classes": 10, "gated": True, "reduction": 4}
    _rewrite_meta(saved, config=json.dumps({"model": spec}))
    with pytest.raises(CheckpointError, match="do not match model.*resnet32.*missing"):
        load_model(saved)
    spec = {"name": "resnet20", "num_classes": 100, "gated": True, "reduction": 4}
    _rewrite_meta(saved, config=json.dumps({"model": spec}))
    with pytest.raises(CheckpointError, match="(?s)do not match model.*size mismatch"):
        load_model(saved)
    _rewrite_meta(saved, config=json.dumps({"model": {**spec, "name": "alexnet"}}))
    with pytest.raises(CheckpointError, match="unknown model 'alexnet'"):
        load_model(saved)


def test_non_json_config_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "ck", create_model("resnet20"), {"bad": object()})
    assert not list(tmp_path.iterdir())
