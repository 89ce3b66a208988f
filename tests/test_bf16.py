"""bf16 precision in the engine (dyninfer.compile(..., precision="bf16")): the direct convs round their
inputs and weights to bf16 channel pairs and accumulate in fp32 with AVX512_BF16 (vdpbf16ps). Their
outputs match a PyTorch reference that rounds each conv's input and weights to bf16 the same way;
trained gated models keep their paths and predictions; CPUs without the instructions warn and run
fp32, or refuse under strict_precision; artefacts refuse bf16 engines rather than drop the setting."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dyninfer
from dyninfer._ext import load_extension

load_extension()
from dyninfer._C import bf16_supported  # noqa: E402

needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="this CPU has no AVX512_BF16 (cpu flag avx512_bf16)")
ASSETS = os.path.join(os.path.dirname(dyninfer.__file__), "assets")


def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(torch.float64)


class PlainNet(nn.Module):
    """Convs with bias and ReLU, no BN (so the engine's weights are the module's, unfolded)."""

    def __init__(self, widths, kernels, strides):
        super().__init__()
        convs, c = [], 3
        for w, k, s in zip(widths, kernels, strides):
            convs.append(nn.Conv2d(c, w, k, s, k // 2))
            c = w
        self.convs = nn.ModuleList(convs)

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i + 1 < len(self.convs):
                x = F.relu(x)
        return x

    def bf16_reference(self, x):
        x = x.double()
        for i, conv in enumerate(self.convs):
            x = F.conv2d(bf16(x), bf16(conv.weight), conv.bias.double(), conv.stride, conv.padding)
            if i + 1 < len(self.convs):
                x = F.relu(x)
        return x


@needs_bf16
@pytest.mark.parametrize("hw", [7, 8, 13, 16, 20])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("layout", ["direct", "columns"])
def test_bf16_convs_match_a_bf16_rounded_reference(hw, seed, layout):
    g = torch.Generator().manual_seed(seed)
    widths = [int(torch.randint(5, 40, (1,), generator=g)) for _ in range(4)]  # odd counts: a half-empty pair
    if layout == "direct":  # padded planes read in place (3x3 stride 1 and 2, 1x1)
        net = PlainNet(widths + [6], [3, 1, 3, 3, 1], [1, 1, 2 if hw >= 13 else 1, 1, 1]).eval()
    else:  # through the column buffer: a 7x7 stride-2 stem, 1x1 and 5x5 stride 2
        net = PlainNet(widths + [6], [7, 1, 1, 5, 3], [2, 1, 2, 1 if hw < 13 else 2, 1]).eval()
    x = torch.randn(3, 3, hw, hw, generator=g)
    e = dyninfer.compile(net, gates="open", example_input=x, precision="bf16", strict_precision=True)
    assert e.precision == "bf16" and e.plan.bf16_convs() == len(net.convs)
    got = e(x).double().reshape(3, -1)
    with torch.no_grad():
        ref = net.bf16_reference(x).reshape(3, -1)
        fp32 = net(x).double().reshape(3, -1)
    rel = ((got - ref).norm() / ref.norm()).item()
    rel32 = ((fp32 - ref).norm() / ref.norm()).item()
    # fp32 accumulation order only (a bf16 input rounding may flip on a few values); the fp32 result
    # itself is much further away, so the check could tell the two apart
    assert rel < 2e-4, (widths, rel, rel32)
    assert rel32 > 5 * rel, (widths, rel, rel32)


@needs_bf16
@pytest.mark.parametrize("asset,dataset", [("resnet20_fashion_mnist_dynamic.safetensors", "fashion_mnist"),
                                           ("resnet56_digits_dynamic.safetensors", "digits")])
def test_bf16_gated_checkpoint_keeps_paths_and_predictions(asset, dataset):
    from dyninfer.checkpoint import load_model
    from dyninfer.data import load_dataset

    model = load_model(os.path.join(ASSETS, asset)).eval()
    ds = load_dataset(dataset, split="test")
    x = torch.stack([ds[i][0] for i in range(128)])
    a = dyninfer.compile(model, example_input=x[:1])
    b = dyninfer.compile(model, example_input=x[:1], precision="bf16")
    assert b.plan.bf16_convs() == len(b.conv_names)  # every conv of these ResNets is direct
    la, pa = a(x, return_path=True)
    lb, pb = b(x, return_path=True)
    assert (pa == pb).float().mean().item() >= 0.98
    assert (la.argmax(1) == lb.argmax(1)).float().mean().item() >= 0.95
    assert ((la - lb).norm() / la.norm()).item() < 0.1


def test_bf16_without_the_instructions_warns_or_refuses():
    code = ("import warnings, dyninfer, torch\n"
            "m = dyninfer.create_model('resnet20').eval()\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    e = dyninfer.compile(m, precision='bf16')\n"
            "assert e.precision == 'fp32', e.precision\n"
            "assert any('avx512_bf16' in str(x.message) for x in w), [str(x.message) for x in w]\n"
            "try:\n"
            "    dyninfer.compile(m, precision='bf16', strict_precision=True)\n"
            "except RuntimeError as err:\n"
            "    assert 'AVX512_BF16' in str(err), err\n"
            "else:\n"
            "    raise SystemExit('strict bf16 on an AVX2 plan did not raise')\n")
    env = dict(os.environ, DYNINFER_ISA="avx2")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_bad_precision_names_the_choices():
    m = dyninfer.create_model("resnet20").eval()
    with pytest.raises(ValueError, match="'fp32' or 'bf16'"):
        dyninfer.compile(m, precision="fp16")


@needs_bf16
def test_artefacts_refuse_bf16_engines(tmp_path):
    m = dyninfer.create_model("resnet20").eval()
    e = dyninfer.compile(m, precision="bf16")
    for fmt in ("runtime", "torchscript"):
        with pytest.raises(ValueError, match="set_precision"):
            e.save(tmp_path / f"e_{fmt}.dyn", format=fmt)
    assert not list(tmp_path.iterdir())
