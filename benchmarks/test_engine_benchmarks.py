"""pytest-benchmark suite: the engine against PyTorch eager and ONNX Runtime, one thread.

    python -m pytest benchmarks/test_engine_benchmarks.py --benchmark-only \
        [--benchmark-json benchmarks/results/pytest_benchmark.json]

Not part of the test suite (tests/): these time, they do not assert speed. Each benchmark's
extra_info carries the MACs per sample (dyninfer.flops, fvcore conventions) so GFLOP/s can be
derived from the saved JSON. The gated ResNet-56 is the shipped digits checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dyninfer
from dyninfer import checkpoint
from dyninfer.bench import onnxruntime_runner
from dyninfer.data import load_dataset
from dyninfer.flops import count_macs

ASSET = Path(dyninfer.__file__).parent / "assets" / "resnet56_digits_dynamic.safetensors"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def resnet56():
    if not ASSET.exists():
        pytest.skip("shipped checkpoint missing: run benchmarks/train_dynamic.py")
    gated = checkpoint.load_model(ASSET)
    dense = dyninfer.create_model("resnet56", num_classes=gated.fc.out_features, gated=False).eval()
    dense.load_state_dict({k: v for k, v in gated.state_dict().items() if "_gate" not in k})
    x = load_dataset("digits", split="test")[0][0].unsqueeze(0).contiguous()
    return gated, dense, x


def _info(benchmark, macs: float) -> None:
    benchmark.extra_info["macs_per_sample"] = float(macs)
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.extra_info["engine_isa"] = dyninfer._ext.isa()


@pytest.mark.parametrize("mode", ["open", "learned"])
def test_dyninfer_resnet56(benchmark, resnet56, mode):
    gated, _, x = resnet56
    engine = dyninfer.compile(gated, gates=mode)
    macs = count_macs(gated, x)
    _info(benchmark, macs.dense if mode == "open" else macs.effective.double().mean().item())
    benchmark(engine, x)


def test_pytorch_eager_resnet56(benchmark, resnet56):
    _, dense, x = resnet56
    _info(benchmark, count_macs(dense, x).dense)
    with torch.no_grad():
        benchmark(dense, x)


def test_onnxruntime_resnet56(benchmark, resnet56):
    pytest.importorskip("onnxruntime")
    _, dense, x = resnet56
    run, _ = onnxruntime_runner(dense, x, 1)
    _info(benchmark, count_macs(dense, x).dense)
    benchmark(run, x)


@pytest.mark.parametrize("keep", [1.0, 0.5, 0.25])
def test_dyninfer_density_sweep_resnet56(benchmark, resnet56, keep):
    gated, _, x = resnet56
    engine = dyninfer.compile(gated, force_keep=keep)
    for g in dyninfer.gates(gated).values():
        g.force_keep = keep
    try:
        _info(benchmark, count_macs(gated, x).effective.double().mean().item())
    finally:
        for g in dyninfer.gates(gated).values():
            g.force_keep = None
    benchmark(engine, x)
