"""Gates (Improved SemHash, ArchitectureControl) and decouple() on small user-written models."""
from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import dyninfer
from dyninfer.nn import (ArchitectureControl, DecoupleError, calculation_path, decouple, gates, improved_semhash,
                         saturating_sigmoid)


# ---- Improved SemHash ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (16, 64)])
def test_semhash_eval_is_exact_threshold(shape):
    torch.manual_seed(0)
    g = torch.randn(shape)
    g[0, 0] = 0.0  # 1(0 > 0) = 0
    z1 = improved_semhash(g, training=False)
    z2 = improved_semhash(g, training=False)
    assert torch.equal(z1, (g > 0).float())
    assert torch.equal(z1, z2)  # no noise
    assert z1[0, 0] == 0


def _reference_noise(g: torch.Tensor, seed: int) -> torch.Tensor:
    # improved_semhash draws its noise first from the generator: replay it
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(g.shape, generator=gen, dtype=g.dtype)


def _is_hard(z: torch.Tensor) -> torch.Tensor:
    return ((z == 0) | (z == 1)).all(dim=1)


@pytest.mark.parametrize("b,n", [(2, 16), (8, 24), (64, 33)])
def test_semhash_training_half_samples_hard(b, n):
    torch.manual_seed(b)
    g = 0.3 * torch.randn(b, n, dtype=torch.float64)  # small logits: soft values are rarely saturated
    seed = 1234 + b
    z = improved_semhash(g, training=True, generator=torch.Generator().manual_seed(seed))
    noisy = g + _reference_noise(g, seed)
    v1 = saturating_sigmoid(noisy)
    v2 = (noisy > 0).to(g.dtype)
    hard = _is_hard(z)
    assert int(hard.sum()) == b // 2  # exactly half of the SAMPLES
    assert torch.equal(z[hard], v2[hard])  # whole rows hard, equal to 1(s~ > 0)
    assert torch.equal(z[~hard], v1[~hard])  # the rest soft, equal to v1
    assert ((z >= 0) & (z <= 1)).all()
    assert not _is_hard(v1[~hard]).any()  # the soft rows really are soft


@pytest.mark.parametrize("b", [3, 5])
def test_semhash_odd_batch(b):
    g = 0.3 * torch.randn(b, 32, dtype=torch.float64)
    counts = {int(_is_hard(improved_semhash(g, True, torch.Generator().manual_seed(s))).sum()) for s in range(40)}
    assert counts == {b // 2, b // 2 + 1}


@pytest.mark.parametrize("b,n", [(2, 5), (6, 9)])
def test_semhash_straight_through_gradient(b, n):
    """Both halves get dv1/dg; checked against central finite differences of v1."""
    torch.manual_seed(n)
    g = (0.5 * torch.randn(b, n, dtype=torch.float64)).requires_grad_()
    w = torch.randn(b, n, dtype=torch.float64)
    seed = 99
    z = improved_semhash(g, training=True, generator=torch.Generator().manual_seed(seed))
    (z * w).sum().backward()
    noisy = g.detach() + _reference_noise(g, seed)
    h = 1e-6
    fd = (saturating_sigmoid(noisy + h) - saturating_sigmoid(noisy - h)) / (2 * h) * w  # d v1/dg · w
    hard = _is_hard(z.detach())
    assert hard.sum() == b // 2
    torch.testing.assert_close(g.grad[hard], fd[hard], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(g.grad[~hard], fd[~hard], rtol=1e-6, atol=1e-8)
    # the hard rows' VALUES are binary yet their gradient is not zero: straight-through
    assert g.grad[hard].abs().sum() > 0


def test_saturating_sigmoid_reaches_bounds():
    x = torch.tensor([-10.0, 0.0, 10.0])
    assert saturating_sigmoid(x).tolist() == [0.0, pytest.approx(0.5), 1.0]


# ---- ArchitectureControl ---------------------------------------------------------------------
@pytest.mark.parametrize("c,n,hw", [(3, 4, 1), (16, 32, 5), (64, 16, 8)])
def test_gate_open_at_init(c, n, hw):
    gate = ArchitectureControl(c, n).eval()
    x = torch.randn(4, c, hw, hw) * 10
    z = gate(x)
    assert torch.equal(z, torch.ones(4, n))
    assert torch.equal(gate.logits, torch.ones(4, n))
    y = torch.randn(4, n, hw, hw)
    assert torch.equal(gate(x, y), y)
    torch.testing.assert_close(gate.y_mean, y.mean(dim=(2, 3)))


def test_gate_shape_errors():
    gate = ArchitectureControl(4, 6)
    with pytest.raises(ValueError, match=r"expected input \(B, 4, H, W\), got \(2, 5, 3, 3\)"):
        gate(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match=r"expected unit output \(B, 6, H, W\)"):
        gate(torch.randn(2, 4, 3, 3), torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="channels must be positive"):
        ArchitectureControl(0, 3)


def test_gate_masks_unselected_channels_exactly():
    gate = ArchitectureControl(2, 3).eval()
    with torch.no_grad():
        gate.fc2.bias.copy_(torch.tensor([1.0, -1.0, 1.0]))
    y = torch.randn(2, 3, 4, 4)
    out = gate(torch.randn(2, 2, 4, 4), y)
    assert torch.equal(out[:, 1], torch.zeros(2, 4, 4))
    assert torch.equal(out[:, [0, 2]], y[:, [0, 2]])


def test_boosted_gate_scales_kept_channels_by_twice_sigmoid_and_zeroes_the_rest():
    """boost: a kept channel (g > 0) is scaled by 2·σ(g) in (1, 2), a dropped one is exactly 0, the
    decisions z are the unboosted ones, and the logits get a gradient through the scale even where
    the straight-through path would give none (hard gates)."""
    gate = ArchitectureControl(2, 3).eval()
    with torch.no_grad():
        gate.fc2.bias.copy_(torch.tensor([0.5, -1.0, 3.0]))
    y = torch.randn(2, 3, 4, 4)
    x = torch.randn(2, 2, 4, 4)
    plain = gate(x, y)
    z = gate.z.clone()
    gate.boost = True
    out = gate(x, y)
    assert torch.equal(gate.z, z)
    assert torch.equal(out[:, 1], torch.zeros(2, 4, 4))
    for c, g in ((0, 0.5), (2, 3.0)):
        s = 2 * torch.sigmoid(torch.tensor(g))
        assert 1 < s < 2
        torch.testing.assert_close(out[:, c], plain[:, c] * s)
    gate.train()
    gate.hard = True
    gate(x, y).sum().backward()
    assert gate.fc2.bias.grad[[0, 2]].abs().min() > 0
    assert "boost=True" in repr(gate)


def test_detached_gate_input_passes_no_gradient_back():
    """detach_input: the gate's parameters still get the gradient of a loss on its logits, the unit
    input gets none; the decisions are the same either way."""
    torch.manual_seed(0)
    gate = ArchitectureControl(4, 6)
    gate.reset_parameters("input")
    grads = {}
    for detach in (False, True):
        gate.zero_grad(set_to_none=True)
        gate.detach_input = detach
        x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        gate.eval()(x)
        gate.logits.square().sum().backward()
        grads[detach] = (x.grad, gate.fc1.weight.grad.clone(), gate.z.detach().clone())
    assert grads[False][0] is not None and grads[False][0].abs().sum() > 0
    assert grads[True][0] is None
    assert torch.equal(grads[True][1], grads[False][1]) and torch.equal(grads[True][2], grads[False][2])


# ---- decouple() on user models ---------------------------------------------------------------
def _cbr(cin, cout, k=3):
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGGish(nn.Module):
    def __init__(self, widths=(8, 16, 16, 32), k=5):
        super().__init__()
        layers, c = [], 3
        for i, w in enumerate(widths):
            layers += _cbr(c, w)
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, k)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class ResNetish(nn.Module):
    def __init__(self, c=8, k=4):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.block1, self.block2 = Block(c), Block(c)
        self.fc = nn.Linear(c, k)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(x.mean(dim=(2, 3)))


class Branches(nn.Module):
    """Inception-like: three branches concatenated; the head is a 1x1 conv classifier (the
    network's last layer: must stay ungated)."""

    def __init__(self, k=3):
        super().__init__()
        self.stem = nn.Sequential(*_cbr(3, 6))
        self.b1 = nn.Sequential(*_cbr(6, 4, 1))
        self.b2 = nn.Sequential(*_cbr(6, 3, 1), *_cbr(3, 5))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *_cbr(6, 2, 1))
        self.head = nn.Conv2d(11, k, 1)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b2(x), self.b3(x)], dim=1)
        return self.head(x).mean(dim=(2, 3))


def _gate_nodes(gm: fx.GraphModule) -> dict[str, fx.Node]:
    mods = dict(gm.named_modules())
    return {n.target: n for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(mods[n.target], ArchitectureControl)}


CASES = [
    (VGGish, ["features.3_gate", "features.7_gate", "features.10_gate"]),
    (ResNetish, ["block1.conv1_gate", "block1.conv2_gate", "block2.conv1_gate", "block2.conv2_gate"]),
    (Branches, ["b1.0_gate", "b2.0_gate", "b2.3_gate", "b3.1_gate"]),
]


@pytest.mark.parametrize("cls,expected", CASES, ids=[c[0].__name__ for c in CASES])
def test_gate_placement(cls, expected):
    torch.manual_seed(0)
    gm = decouple(cls())
    assert sorted(gates(gm)) == sorted(expected)
    for path, g in gates(gm).items():
        conv = gm.get_submodule(path[: -len("_gate")])
        assert (g.in_channels, g.out_channels) == (conv.in_channels, conv.out_channels)
    # every gate reads the input of its own conv
    nodes = _gate_nodes(gm)
    mods = dict(gm.named_modules())
    for target, node in nodes.items():
        conv_node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == target[: -len("_gate")])
        assert node.args[0] is conv_node.args[0]
        assert isinstance(mods[conv_node.target], nn.Conv2d)


def test_residual_gate_applies_before_add():
    gm = decouple(ResNetish())
    mods = dict(gm.named_modules())
    nodes = _gate_nodes(gm)
    for blk in ("block1", "block2"):
        g2 = nodes[f"{blk}.conv2_gate"]
        assert g2.args[1].op == "call_module" and isinstance(mods[g2.args[1].target], nn.BatchNorm2d)
        (user,) = g2.users
        assert user.op == "call_function" and user.target in (operator.add, torch.add)
        g1 = nodes[f"{blk}.conv1_gate"]
        assert g1.args[1].target in (F.relu, torch.relu)  # after the ReLU when one follows BN


@pytest.mark.parametrize("cls", [VGGish, ResNetish, Branches])
@pytest.mark.parametrize("batch,hw", [(1, 8), (3, 12)])
def test_open_gates_keep_outputs_identical(cls, batch, hw):
    torch.manual_seed(batch * hw)
    model = cls().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    x = torch.randn(batch, 3, hw, hw)
    ref = model(x)
    gm = decouple(model).eval()
    out = gm(x)
    assert torch.equal(out, ref)
    for path, g in gates(gm).items():  # z exposed after forward
        assert torch.equal(g.z, torch.ones(batch, g.out_channels)), path
        assert g.logits.shape == g.y_mean.shape == (batch, g.out_channels)
    zs = calculation_path(gm)
    assert zs.shape == (batch, sum(g.out_channels for g in gates(gm).values()))


def test_closed_gate_changes_output_and_zeroes_channels():
    torch.manual_seed(0)
    gm = decouple(VGGish()).eval()
    x = torch.randn(2, 3, 8, 8)
    ref = gm(x)
    with torch.no_grad():
        gates(gm)["features.7_gate"].fc2.bias.fill_(-1.0)
    out = gm(x)
    assert not torch.allclose(out, ref)
    assert torch.equal(gates(gm)["features.7_gate"].z, torch.zeros(2, 16))


class NoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.middle = nn.Conv2d(4, 4, 3)  # bias, no BN: gated after its ReLU
        self.last, self.bn2 = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.middle(x))
        x = F.relu(self.bn2(self.last(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_conv_without_bn_is_gated_after_its_activation_and_skip_only_choose_units():
    gm = decouple(NoBN())
    assert list(gates(gm)) == ["middle_gate", "last_gate"]
    relu = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "middle_gate").args[1]
    assert relu.target is F.relu and relu.args[0].target == "middle"  # the gate reads the unit after its ReLU
    assert list(gates(decouple(NoBN(), skip=["middle"]))) == ["last_gate"]
    assert list(gates(decouple(NoBN(), only=["middle"]))) == ["middle_gate"]
    with pytest.raises(DecoupleError, match=r"skip=.*\['midle'\] name no conv of NoBN; its convs are \['stem', 'middle', 'last'\]"):
        decouple(NoBN(), skip=["midle"])
    with pytest.raises(DecoupleError, match=r"only=.*\['fc'\]"):
        decouple(NoBN(), only=["fc"])


def test_decouple_twice_raises():
    with pytest.raises(DecoupleError, match="already"):
        decouple(decouple(VGGish()))


def test_no_conv_raises():
    with pytest.raises(DecoupleError, match="no nn.Conv2d"):
        decouple(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize("cls", [VGGish, ResNetish, Branches])
def test_dense_checkpoint_loads_into_user_model(cls):
    torch.manual_seed(0)
    dense = cls()
    gm = decouple(cls())
    result = gm.load_state_dict(dense.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.split(".")[-3].endswith("_gate") for k in result.missing_keys)
    assert {k.rsplit(".", 2)[0] for k in result.missing_keys} == set(gates(gm))
    for k, v in dense.state_dict().items():
        assert torch.equal(gm.state_dict()[k], v), k


@pytest.mark.parametrize("name", dyninfer.list_models())
def test_dense_checkpoint_loads_into_registry_model(name):
    torch.manual_seed(0)
    dense = dyninfer.create_model(name, gated=False)
    gated = dyninfer.create_model(name, gated=True)
    result = gated.load_state_dict(dense.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert {k.rsplit(".", 2)[0] for k in result.missing_keys} == set(gates(gated))
    assert all(k.rsplit(".", 2)[0].endswith("_gate") for k in result.missing_keys)
    # first conv never gated, all gates named after a conv of the model
    first_conv = next(p for p, m in dense.named_modules() if isinstance(m, nn.Conv2d))
    assert first_conv + "_gate" not in gates(gated)
    convs = {p for p, m in dense.named_modules() if isinstance(m, nn.Conv2d)}
    assert {p[: -len("_gate")] for p in gates(gated)} <= convs


def test_gates_follow_execution_order_in_sequential_models():
    gm = decouple(VGGish())
    order = [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target.endswith("_gate")]
    assert list(gates(gm)) == order
