"""Layers of the common CNN families: grouped and depthwise convs (with FollowGate), ReLU6/Hardtanh,
and the registered bottleneck / ResNeXt / MobileNetV2 models, through decouple -> train -> compile."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dyninfer
from dyninfer.flops import count_macs
from dyninfer.nn.gates import FollowGate

from _models import randomize
from test_graph_forms import assert_engine_matches, train_steps

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Family(nn.Module):
    """stem -> gated 1x1 expansion -> depthwise 3x3 (ReLU6) -> grouped 3x3 -> 1x1 projection (+res)."""

    def __init__(self, stride: int = 1, dilation: int = 1, act: str = "relu6"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16),
                                    nn.ReLU6() if act == "relu6" else nn.Hardtanh(-0.5, 2.0))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, stride, dilation, dilation=dilation, groups=16, bias=False),
                                nn.BatchNorm2d(16), nn.ReLU6())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, (3, 1), 1, (1, 0), groups=4, bias=False), nn.BatchNorm2d(16),
                                     nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 10)
        self.stride = stride

    def forward(self, x):
        s = self.stem(x)
        y = self.project(self.grouped(self.dw(self.expand(s))))
        if self.stride == 1:
            y = y + s
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


@pytest.mark.parametrize("stride,dilation,act", [(1, 1, "relu6"), (2, 1, "relu6"), (1, 2, "hardtanh"),
                                                 (2, 2, "hardtanh")])
def test_grouped_and_depthwise_units_match_torch(stride, dilation, act):
    torch.manual_seed(0)
    model = dyninfer.decouple(Family(stride, dilation, act))
    # grouped and depthwise convs stay ungated; the depthwise unit follows the expansion's gate
    assert list(dyninfer.gates(model)) == ["expand.0_gate", "project.0_gate"]
    follows = [m for m in model.modules() if isinstance(m, FollowGate)]
    assert len(follows) == 1 and follows[0].gate_path == "expand.0_gate"
    randomize(model, seed=7)
    train_steps(model, hw=11)
    x = torch.randn(4, 3, 11, 11)
    assert_engine_matches(model, x)
    for keep in (0.0, 0.3, 1.0):
        for g in dyninfer.gates(model).values():
            g.force_keep = keep
        assert_engine_matches(model, x, force_keep=keep)
    for g in dyninfer.gates(model).values():
        g.force_keep = None


def test_depthwise_channels_follow_their_inputs_and_cost_only_them():
    torch.manual_seed(0)
    model = randomize(dyninfer.decouple(Family()), seed=3)
    x = torch.randn(6, 3, 9, 9)
    with torch.no_grad():
        model(x)
    z = dyninfer.gates(model)["expand.0_gate"].z > 0  # (B, 16)
    assert 0 < z.float().mean() < 1
    acts = {}
    follow = dict(model.named_modules())["dw.0_follow"]
    follow.register_forward_hook(lambda m, i, o: acts.setdefault("dw", o))
    with torch.no_grad():
        model(x)
    dead = acts["dw"].abs().amax((2, 3)) == 0
    assert dead[~z].all()  # a depthwise channel whose input was dropped is zero (not a BN-shift plane)
    assert not dead[z].all()
    rep = count_macs(model, x)
    dw = next(layer for layer in rep.layers if layer.name == "dw.0")
    assert torch.equal(dw.effective, z.sum(1) * 9 * 81)


def test_clamp_after_a_residual_add_stays_outside_the_conv():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return F.relu6(self.b(self.a(x)) + x)

    with pytest.raises(dyninfer.UnsupportedLayerError, match="standalone it is not supported"):
        dyninfer.compile(Net().eval(), example_input=torch.randn(1, 4, 5, 5))


FAMILIES = ["resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v2_cifar", "mobilenet_v3_small",
            "efficientnet_b0"]


class SEBlock(nn.Module):
    """MobileNetV3's block: expansion (Hardswish), depthwise 5x5, squeeze-and-excitation, projection;
    a Linear-Hardswish-Linear head."""

    def __init__(self, gate: str, relu: bool, stride: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 5, stride, 2, groups=24, bias=False), nn.BatchNorm2d(24),
                                nn.Hardswish())
        self.fc1, self.fc2 = nn.Conv2d(24, 8, 1), nn.Conv2d(8, 24, 1)
        self.gate, self.relu, self.stride = gate, relu, stride
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.Linear(8, 16), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x):
        s = self.stem(x)
        y = self.dw(self.expand(s))
        g = self.fc1(y.mean((2, 3), keepdim=True) if self.gate == "sigmoid" else F.adaptive_avg_pool2d(y, 1))
        g = self.fc2(F.relu(g) if self.relu else g)
        g = torch.sigmoid(g) if self.gate == "sigmoid" else F.hardsigmoid(g)
        y = self.project(y * g)
        if self.stride == 1:
            y = y + s
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


@pytest.mark.parametrize("gate,relu,stride", [("hardsigmoid", True, 1), ("sigmoid", False, 2), ("sigmoid", True, 1)])
def test_squeeze_excitation_and_hardswish_match_torch(gate, relu, stride):
    torch.manual_seed(0)
    model = dyninfer.decouple(SEBlock(gate, relu, stride))
    assert list(dyninfer.gates(model)) == ["expand.0_gate", "project.0_gate"]
    randomize(model, seed=5)
    train_steps(model, hw=9)
    x = torch.randn(3, 3, 9, 9)
    engine = assert_engine_matches(model, x)
    assert "se" in engine.plan.op_names()
    for keep in (0.25, 1.0):
        for g in dyninfer.gates(model).values():
            g.force_keep = keep
        assert_engine_matches(model, x, force_keep=keep)


class EfficientBlock(nn.Module):
    """EfficientNet's MBConv: SiLU expansion, depthwise 3x3 (SiLU), an SE whose inner activation is
    SiLU and whose gate is a sigmoid, and a linear projection."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, groups=24, bias=False), nn.BatchNorm2d(24), nn.SiLU())
        self.fc1, self.fc2, self.act = nn.Conv2d(24, 6, 1), nn.Conv2d(6, 24, 1), nn.SiLU()
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        s = self.stem(x)
        y = self.dw(self.expand(s))
        y = y * torch.sigmoid(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return self.head(F.adaptive_avg_pool2d(self.project(y) + s, 1).flatten(1))


def test_silu_units_and_silu_squeeze_excitation_match_torch():
    torch.manual_seed(0)
    model = dyninfer.decouple(EfficientBlock())
    assert list(dyninfer.gates(model)) == ["expand.0_gate", "project.0_gate"]
    randomize(model, seed=6)
    train_steps(model, hw=10)
    x = torch.randn(3, 3, 10, 10) * 4  # wide inputs: SiLU's exp far into both tails
    assert_engine_matches(model, x)
    for keep in (0.3, 1.0):
        for g in dyninfer.gates(model).values():
            g.force_keep = keep
        assert_engine_matches(model, x, force_keep=keep)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
def test_silu_epilogue_is_accurate_on_every_isa(isa, monkeypatch):
    """The conv epilogue's vector exp (Cephes' expf) against torch's SiLU over [-100, 100]."""
    monkeypatch.setenv("DYNINFER_ISA", isa)
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    model = nn.Sequential(conv, nn.SiLU(), nn.Flatten()).eval()
    x = torch.linspace(-100, 100, 4001).reshape(1, 1, 1, 4001)
    engine = dyninfer.compile(model, example_input=x)
    got, want = engine(x), F.silu(x).reshape(1, -1)
    assert ((got - want).abs() <= 2e-6 * want.abs() + 1e-30).all()


def test_standalone_sigmoid_names_what_is_supported():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Flatten()).eval()
    with pytest.raises(dyninfer.UnsupportedLayerError, match="only as the gate of a squeeze-and-excitation"):
        dyninfer.compile(net, example_input=torch.randn(1, 3, 6, 6))


@pytest.mark.parametrize("name", FAMILIES)
def test_family_decouples_with_expected_structure(name):
    model = dyninfer.create_model(name)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    gated = set(dyninfer.gates(model))
    grouped = {n for n, m in convs.items() if m.groups > 1}
    assert grouped or name == "resnet50"
    assert not {n + "_gate" for n in grouped} & gated  # grouped convs are never gated
    follows = [m for m in model.modules() if isinstance(m, FollowGate)]
    if name.startswith(("mobilenet", "efficientnet")):
        # every depthwise conv after an expansion follows that expansion's gate
        assert len(follows) == sum(1 for n, m in convs.items() if m.groups > 1) - 1
    else:
        assert not follows


@pytest.mark.parametrize("name", dyninfer.list_models())
def test_every_registered_model_trains_then_compiles_to_the_same_logits(name):
    """decouple -> a training step -> compile: logits within 1e-4 relative of PyTorch and the same
    gate decisions, with the learned gates and at a forced density."""
    torch.manual_seed(0)
    model = dyninfer.create_model(name)
    c, h, w = dyninfer.models.model_info(name).input_size
    train_steps(model, steps=1, hw=h, batch=2 if h > 32 else 8, lr=1e-3)
    randomize(model, seed=2, bn=False)  # gates that select input-dependent subsets
    x = torch.randn(2, c, h, w)
    assert_engine_matches(model, x)
    for g in dyninfer.gates(model).values():
        g.force_keep = 0.5
    assert_engine_matches(model, x, force_keep=0.5)


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2_cifar", "mobilenet_v3_small"])
def test_boosted_gates_compile_to_the_same_logits(name):
    """Boosted gates (kept channels scaled by 2·σ(logit)): the engine scales where the gate sits,
    before a residual add (ResNet's second convs, MobileNetV2's projections) or after the unit's
    activation (ResNet's first convs: ReLU; MobileNetV3: hardswish), learned and at a forced density."""
    torch.manual_seed(0)
    model = dyninfer.create_model(name)
    c, h, w = dyninfer.models.model_info(name).input_size
    randomize(model, seed=2)
    for g in dyninfer.gates(model).values():
        g.boost = True
    x = torch.randn(2, c, h, w)
    assert_engine_matches(model, x)
    for g in dyninfer.gates(model).values():
        g.force_keep = 0.5
    assert_engine_matches(model, x, force_keep=0.5)
    for g in dyninfer.gates(model).values():  # and the scale is really applied: unboosted logits differ
        g.force_keep = None
        g.boost = False
    engine = dyninfer.compile(model.eval(), example_input=x)
    for g in dyninfer.gates(model).values():
        g.boost = True
    assert not torch.allclose(engine(x), model(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind,field,value,match", [
    ("se", "channels", 23, "se op .*: 23 channels"),
    ("se", "gate_act", 2, "field 'gate_act' = 2 outside"),
    ("se", "fc2_weight", 10 ** 6, "se fc2 weight"),
    ("linear", "act", 2, "act 2 \\(clamp\\) is not a linear activation"),
])
def test_se_and_linear_fields_are_checked(kind, field, value, match):
    from dyninfer.compiler.planner import build_plan, op_kind, plan_schema
    torch.manual_seed(0)
    spec = build_plan(dyninfer.decouple(SEBlock("sigmoid", True, 1)).eval(), (3, 9, 9))
    ops, q = list(spec.ops), 0
    while ops[q] != op_kind(kind):
        q += 2 + ops[q + 1]
    ops[q + 2 + plan_schema()["ops"][kind]["fields"].index(field)] = value
    with pytest.raises(ValueError, match=match):
        torch.classes.dyninfer.Plan(spec.meta, ops, spec.weights, spec.conv_names)
