"""Winograd F(2x2, 3x3) in the engine: where a 3x3 stride-1 conv call has enough live inputs, kept
outputs and tiles (plan_internal.h: wino_pays), it runs through the transforms instead of direct
convolution. Its logits match PyTorch like the direct kernels', differ from them by rounding only,
and calls below the thresholds stay bit-for-bit direct. DYNINFER_WINOGRAD=0 (read when a plan is
built) turns it off."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dyninfer
from dyninfer._ext import isa as engine_isa

from _models import randomize
from test_graph_forms import assert_engine_matches

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.skipif(engine_isa() != "avx512", reason="Winograd kernels exist for AVX-512 only")]


class WinoNet(nn.Module):
    """stem 3->width, a residual block of two width-channel 3x3 convs (the stem and first conv with ReLU or
    ReLU6: the clamp epilogue), GAP, Linear."""

    def __init__(self, act: str = "relu", width: int = 64):
        super().__init__()
        a = nn.ReLU if act == "relu" else nn.ReLU6
        n = width
        self.stem = nn.Sequential(nn.Conv2d(3, n, 3, 1, 1, bias=False), nn.BatchNorm2d(n), a())
        self.c1 = nn.Sequential(nn.Conv2d(n, n, 3, 1, 1, bias=False), nn.BatchNorm2d(n), a())
        self.c2 = nn.Sequential(nn.Conv2d(n, n, 3, 1, 1, bias=False), nn.BatchNorm2d(n))
        self.act = nn.ReLU()  # after the residual add: a ReLU6 there runs only fused elsewhere
        self.head = nn.Linear(n, 10)

    def forward(self, x):
        s = self.stem(x)
        y = self.act(self.c2(self.c1(s)) + s)
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


def _engines(model, x, monkeypatch, **kw):
    monkeypatch.setenv("DYNINFER_WINOGRAD", "0")
    direct = dyninfer.compile(model, example_input=x, **kw)
    monkeypatch.delenv("DYNINFER_WINOGRAD")
    wino = assert_engine_matches(model, x, **kw)  # against PyTorch: logits and gate decisions
    return direct, wino


@pytest.mark.parametrize("hw", [(24, 24), (23, 23), (25, 21)])
@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_winograd_matches_torch_and_differs_from_direct_by_rounding(hw, act, monkeypatch):
    """Even, odd and non-square planes (the last tile row / column half outside the plane)."""
    torch.manual_seed(0)
    model = randomize(dyninfer.decouple(WinoNet(act)), seed=4)
    for g in dyninfer.gates(model).values():
        g.force_keep = 1.0  # every channel live: 64 x 64 on 132-144 tiles, so every 3x3 call after the stem qualifies
    x = torch.randn(3, 3, *hw)
    direct, wino = _engines(model, x, monkeypatch, force_keep=1.0)
    a, b = direct(x), wino(x)
    rel = ((a - b).abs().max() / a.abs().max()).item()
    assert 0 < rel < 1e-5  # Winograd ran (not bit-identical) and only rounding separates the two


def test_calls_below_the_thresholds_stay_direct(monkeypatch):
    """Keeping half of 64 channels makes 32 x 32 live pairs, under wino_pays' bound for 144 tiles
    (64 x 64): those calls run the direct kernels, so the engines agree bit for bit; so do planes of
    fewer than 32 tiles."""
    torch.manual_seed(0)
    model = randomize(dyninfer.decouple(WinoNet()), seed=5)
    for g in dyninfer.gates(model).values():
        g.force_keep = 0.5
    x = torch.randn(2, 3, 24, 24)
    direct, wino = _engines(model, x, monkeypatch, force_keep=0.5)
    assert torch.equal(direct(x), wino(x))
    for g in dyninfer.gates(model).values():
        g.force_keep = 1.0
    small = torch.randn(2, 3, 10, 10)  # 25 tiles
    direct, wino = _engines(model, small, monkeypatch, force_keep=1.0)
    assert torch.equal(direct(small), wino(small))


def test_winograd_with_learned_and_boosted_gates(monkeypatch):
    """Input-dependent kept sets (some calls above the thresholds, some below) and boosted gates,
    whose scale the Winograd epilogue applies before the residual add as the direct one does."""
    torch.manual_seed(0)
    model = randomize(dyninfer.decouple(WinoNet(width=128)), seed=6)  # about half of 128 kept: around the bound
    x = torch.randn(4, 3, 24, 24)
    direct, wino = _engines(model, x, monkeypatch)
    assert 0 < ((direct(x) - wino(x)).abs().max() / direct(x).abs().max()).item() < 1e-5
    for g in dyninfer.gates(model).values():
        g.boost = True
    direct, wino = _engines(model, x, monkeypatch)
    assert 0 < ((direct(x) - wino(x)).abs().max() / direct(x).abs().max()).item() < 1e-5


def test_a_single_sample_splits_the_phases_across_threads(monkeypatch):
    """Batch 1 on two threads: each phase (input transform, GEMMs, output transform) is split across
    them, one after the other; the result is the one-thread result bit for bit."""
    torch.manual_seed(0)
    model = randomize(dyninfer.decouple(WinoNet(width=128)), seed=7)
    for g in dyninfer.gates(model).values():
        g.force_keep = 1.0
    x = torch.randn(1, 3, 24, 24)  # 128 x 128 channels on 24x24: over the bound and the parallel split's size
    engine = assert_engine_matches(model, x, force_keep=1.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = engine(x)
        torch.set_num_threads(2)
        two = engine(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    monkeypatch.setenv("DYNINFER_WINOGRAD", "0")
    direct = dyninfer.compile(model, example_input=x, force_keep=1.0)
    assert 0 < ((direct(x) - one).abs().max() / one.abs().max()).item() < 1e-5
