"""bf16 precision in the engine (dyninfer.compile(..., precision="bf16")): the direct convs round their
inputs and weights to bf16 channel pairs and accumulate in fp32 with AVX512_BF16 (vdpbf16ps). Their
outputs match a PyTorch reference that rounds each conv's input and weights to bf16 the same way;
trained gated models keep their paths and predictions; CPUs without the instructions warn and run
fp32, or refuse under strict_precision; artefacts record the precision and every loader re-applies it."""
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
    torch.manual_seed(seed)  # the convs' initial weights
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
@pytest.mark.parametrize("seed", range(8))
def test_bf16_channel_subsets_match_a_bf16_rounded_reference(seed):
    """Gated convs computing only their kept channels (random subsets, empty and full ones included,
    odd counts: half-empty pairs) against the decoupled model in float64 with every conv's input and
    weights rounded to bf16; direct and column-buffer layouts, stride 1 and 2."""
    torch.manual_seed(100 + seed)  # the convs' initial weights
    g = torch.Generator().manual_seed(100 + seed)
    widths = [int(torch.randint(3, 40, (1,), generator=g)) for _ in range(4)]
    kernels, strides = ([3, 3, 1, 3, 1], [1, 1, 2, 1, 1]) if seed % 2 == 0 else ([7, 1, 5, 3, 1], [2, 1, 2, 1, 1])
    net = PlainNet(widths + [6], kernels, strides).eval()
    gated = dyninfer.decouple(net).eval()
    gates = list(dyninfer.gates(gated).values())
    assert len(gates) == 3  # every conv but the first and the last
    keeps = []
    for i, gate in enumerate(gates):
        n = gate.out_channels
        keep = torch.rand(n, generator=g) < (0.2 + 0.6 * torch.rand(1, generator=g))
        if seed == 2 and i == 1:
            keep[:] = False  # a layer with nothing kept
        if seed == 3 and i == 0:
            keep[:] = True
        keeps.append(keep)
        nn.init.zeros_(gate.fc1.weight)
        nn.init.ones_(gate.fc1.bias)
        nn.init.zeros_(gate.fc2.weight)
        gate.fc2.bias.data.copy_(torch.where(keep, 1.0, -1.0))
    hw = int(torch.randint(7, 21, (1,), generator=g))
    x = torch.randn(3, 3, hw, hw, generator=g)
    e = dyninfer.compile(gated, example_input=x, precision="bf16", strict_precision=True)
    got, path = e(x, return_path=True)
    assert torch.equal(path, torch.cat(keeps).float().expand(3, -1))
    import copy

    ref_model = copy.deepcopy(gated).double()
    with torch.no_grad():
        hooks = []
        for name, conv in ref_model.named_modules():
            if isinstance(conv, nn.Conv2d) and name.startswith("convs."):
                conv.weight.copy_(bf16(conv.weight))
                hooks.append(conv.register_forward_pre_hook(lambda m, inp: (bf16(inp[0]),)))
        ref = ref_model(x.double())
        fp32 = gated(x).double()
    got = got.double()
    rel = ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    rel32 = ((fp32 - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    if ref.norm() == 0:  # an empty layer zeroes everything after it up to the last conv's bias
        assert torch.allclose(got, ref, atol=1e-6)
        return
    # a bf16 input rounding may flip where the fp32 and float64 sums straddle a rounding boundary;
    # such flips touch few outputs, while the fp32 result differs from the reference everywhere
    med = (got - ref).abs().median().item()
    med32 = (fp32 - ref).abs().median().item()
    assert rel < 2e-4, (widths, keeps, rel, rel32)
    assert med32 > 20 * med, (widths, med, med32)


_BT = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
_G = torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)


def winograd_bf16_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 pad-1 conv as Winograd F(2x2, 3x3) in float64, with the transformed input
    B^T d B and the transformed weights G g G^T rounded to bf16: what the engine's bf16 Winograd
    computes up to fp32 rounding. x (N, C, H, W), w (O, C, 3, 3)."""
    n, c, h, wd = x.shape
    th, tw = (h + 1) // 2, (wd + 1) // 2
    xp = F.pad(x, (1, 2 * tw + 1 - wd, 1, 2 * th + 1 - h))  # whole 4x4 windows for every 2x2 tile
    d = xp.unfold(2, 4, 2).unfold(3, 4, 2)  # (N, C, th, tw, 4, 4)
    v = bf16(torch.einsum("ij,nctujk,lk->nctuil", _BT, d, _BT))
    u = bf16(torch.einsum("ij,ocjk,lk->ocil", _G, w.double(), _G))
    m = torch.einsum("ocil,nctuil->notuil", u, v)
    y = torch.einsum("ij,notujk,lk->notuil", _AT, m, _AT)  # (N, O, th, tw, 2, 2)
    y = y.permute(0, 1, 2, 4, 3, 5).reshape(n, w.shape[0], 2 * th, 2 * tw)[:, :, :h, :wd]
    return y + b.double().view(1, -1, 1, 1)


@needs_bf16
@pytest.mark.parametrize("hw", [24, 23])
@pytest.mark.parametrize("keep", [1.0, 0.8])
def test_bf16_winograd_matches_a_bf16_winograd_reference(hw, keep, monkeypatch):
    """Wide 3x3 convs on 12x12 tiles run Winograd in bf16 (its input transform rounded into pair
    planes, vdpbf16ps GEMMs on the packed transformed weights, fp32 output transform): they match a
    float64 Winograd that rounds the transformed input and weights to bf16, on kept channel subsets
    too, and are further from the bf16 *direct* conv (DYNINFER_WINOGRAD=0) — so Winograd ran."""
    torch.manual_seed(7)
    net = PlainNet([96, 96, 96, 6], [3, 3, 3, 1], [1, 1, 1, 1]).eval()
    gated = dyninfer.decouple(net).eval()
    g = torch.Generator().manual_seed(8)
    keeps = []
    for gate in dyninfer.gates(gated).values():
        k = torch.ones(gate.out_channels, dtype=torch.bool)
        if keep < 1:
            k[torch.randperm(gate.out_channels, generator=g)[: int((1 - keep) * gate.out_channels)]] = False
        keeps.append(k)
        nn.init.zeros_(gate.fc1.weight)
        nn.init.ones_(gate.fc1.bias)
        nn.init.zeros_(gate.fc2.weight)
        gate.fc2.bias.data.copy_(torch.where(k, 1.0, -1.0))
    x = torch.randn(2, 3, hw, hw, generator=g)
    wino = dyninfer.compile(gated, example_input=x, precision="bf16", strict_precision=True)
    monkeypatch.setenv("DYNINFER_WINOGRAD", "0")
    direct = dyninfer.compile(gated, example_input=x, precision="bf16", strict_precision=True)
    got, path = wino(x, return_path=True)
    assert torch.equal(path, torch.cat(keeps).float().expand(2, -1))
    convs = list(net.convs)
    with torch.no_grad():
        def reference(winograd: bool) -> torch.Tensor:
            h = F.relu(F.conv2d(bf16(x), bf16(convs[0].weight), convs[0].bias.double(), padding=1))
            for conv, k in zip(convs[1:3], keeps):  # the first and last convs have no gate
                if winograd:
                    h = winograd_bf16_reference(h, conv.weight, conv.bias)  # V rounds, not d
                else:
                    h = F.conv2d(bf16(h), bf16(conv.weight), conv.bias.double(), padding=1)
                h = F.relu(h) * k.double().view(1, -1, 1, 1)
            return F.conv2d(bf16(h), bf16(convs[3].weight), convs[3].bias.double())

        ref_w, ref_d = reference(True), reference(False)
    got = got.double()
    rel = ((got - ref_w).norm() / ref_w.norm()).item()
    rel_d = ((got - ref_d).norm() / ref_d.norm()).item()
    assert rel < 2e-4 and rel_d > 5 * rel, (rel, rel_d)
    exact = net.double()(x.double()) if keep == 1.0 else None
    if exact is not None:  # and bf16 Winograd stays a bf16-sized error away from the exact conv
        assert ((got - exact).norm() / exact.norm()).item() < 2e-2
    assert not torch.equal(wino(x), direct(x))


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
def test_artefacts_record_the_precision(tmp_path):
    """Both artefact formats store fp32 weights and precision "bf16"; dyninfer.load and the torch-free
    runtime come back in bf16 with the same logits and paths as the engine that was saved."""
    import numpy as np

    import dyninfer.runtime as rt

    m = dyninfer.checkpoint.load_model(os.path.join(ASSETS, "resnet56_digits_dynamic.safetensors"))
    e = dyninfer.compile(m, precision="bf16")
    x = torch.randn(4, *e.input_shape, generator=torch.Generator().manual_seed(3))
    ref, ref_path = e(x, return_path=True)
    fp32 = dyninfer.compile(m)(x)
    assert not torch.equal(ref, fp32)  # the bf16 engine really differs from fp32
    for fmt in ("runtime", "torchscript"):
        back = dyninfer.load(e.save(tmp_path / f"e_{fmt}.dyn", format=fmt))
        assert back.precision == "bf16" and back.artefact["precision"] == "bf16", fmt
        logits, path = back(x, return_path=True)
        assert torch.equal(logits, ref) and torch.equal(path, ref_path), fmt
    model = rt.load(tmp_path / "e_runtime.dyn")
    assert model.precision == model.requested_precision == "bf16"
    logits, path = model.run(x.numpy(), return_path=True)
    np.testing.assert_array_equal(logits, ref.numpy())
    np.testing.assert_array_equal(path, ref_path.numpy())
    model.set_precision("fp32")
    np.testing.assert_array_equal(model.run(x.numpy()), fp32.numpy())
    with pytest.raises(ValueError, match="'fp32' or 'bf16'"):
        model.set_precision("int4")


def test_bf16_artefact_on_a_cpu_without_it_runs_fp32(tmp_path):
    """An artefact saved in bf16 still loads where the kernels cannot run bf16 (here: capped at AVX2):
    dyninfer.load and dyninfer.runtime warn, naming the file and avx512_bf16, and run fp32."""
    m = dyninfer.create_model("resnet20").eval()
    e = dyninfer.compile(m)
    path = e.save(tmp_path / "e.dyn")
    from dyninfer.runtime import save_artefact  # the same plan, marked bf16 (whatever this CPU has)

    spec = e.spec
    save_artefact(tmp_path / "bf16.dyn", meta=spec.meta, ops=spec.ops,
                  weights=[w.numpy() for w in spec.weights], conv_names=spec.conv_names, gate_names=spec.gate_names,
                  gate_sizes=spec.gate_sizes, input_shape=spec.input_shape, output_shape=spec.output_shape,
                  gates=e.gates_mode, digest=dyninfer.load(path).artefact["sha256"], precision="bf16")
    code = ("import warnings, dyninfer, dyninfer.runtime as rt\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            f"    e = dyninfer.load({str(tmp_path / 'bf16.dyn')!r})\n"
            f"    m = rt.load({str(tmp_path / 'bf16.dyn')!r})\n"
            "assert e.precision == 'fp32' and m.precision == 'fp32' and m.requested_precision == 'bf16'\n"
            "msgs = [str(x.message) for x in w]\n"
            "assert sum('bf16.dyn was saved in bf16' in s and 'avx512_bf16' in s for s in msgs) == 2, msgs\n"
            "assert sum('saved in bf16' in s for s in msgs) == 2, msgs  # one per load, none naming <bytes>\n")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, DYNINFER_ISA="avx2"), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_artefact_with_an_unknown_precision_is_refused(tmp_path):
    import dyninfer.runtime as rt

    m = dyninfer.create_model("resnet20").eval()
    e = dyninfer.compile(m)
    spec = e.spec
    digest = dyninfer.load(e.save(tmp_path / "e.dyn")).artefact["sha256"]
    with pytest.raises(rt.ArtefactError, match="precision"):
        rt.save_artefact(tmp_path / "x.dyn", meta=spec.meta, ops=spec.ops, weights=[w.numpy() for w in spec.weights],
                         conv_names=spec.conv_names, gate_names=spec.gate_names, gate_sizes=spec.gate_sizes,
                         input_shape=spec.input_shape, output_shape=spec.output_shape, gates=e.gates_mode,
                         digest=digest, precision="fp16")
    # a file whose metadata says fp16 (written around save_artefact's check) is refused by both loaders
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(tmp_path / "e.dyn"), "np") as f:
        meta = dict(f.metadata())
    save_file(load_file(str(tmp_path / "e.dyn")), str(tmp_path / "fp16.dyn"), metadata={**meta, "precision": "fp16"})
    from dyninfer.deploy import ArtefactError

    for loader in (rt.load, dyninfer.load):
        with pytest.raises((rt.ArtefactError, ArtefactError), match="'precision' must be fp32 or bf16, got 'fp16'"):
            loader(tmp_path / "fp16.dyn")
