"""count_macs: dense counts equal fvcore; effective counts follow gate decisions exactly."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dyninfer
from dyninfer.flops import FVCORE_HANDLES, MacReport, count_macs, fvcore_analysis
from dyninfer.models import model_info
from dyninfer.nn import decouple, gates


def _input(name: str, batch: int = 1) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, *model_info(name).input_size)


# ---- dense: equal to fvcore ------------------------------------------------------------------
@pytest.mark.parametrize("name", dyninfer.list_models())
@pytest.mark.parametrize("gated", [False, True], ids=["dense", "gated"])
def test_dense_equals_fvcore(name, gated):
    """Dense models against plain fvcore (the ops we declare free are ones it counts 0 anyway);
    gated models against fvcore with FVCORE_HANDLES, where nothing may be left unsupported."""
    from fvcore.nn import FlopCountAnalysis

    model = dyninfer.create_model(name, gated=gated).eval()
    x = _input(name)
    if gated:
        fa = fvcore_analysis(model, x)
    else:
        fa = FlopCountAnalysis(model, x)
        fa.unsupported_ops_warnings(False)
    report = count_macs(model, x)
    assert report.dense == fa.total()
    assert set(fa.unsupported_ops()) <= (set(FVCORE_HANDLES) if not gated else set())
    assert report.unsupported == {}
    assert report.effective.tolist() == [report.dense]  # gates open at init
    by_op = report.dense_by_op()
    fv_op = fa.by_operator()
    assert by_op["conv"] == fv_op["conv"]
    assert by_op.get("batch_norm", 0) == fv_op.get("batch_norm", 0)  # SqueezeNet has none
    # fvcore's 'linear' includes the gates' two FCs; ours books them (with the GAP) under 'gate'
    if not gated:
        assert by_op.get("linear", 0) == fv_op.get("linear", 0)
        assert "gate" not in by_op


def test_resnet56_numbers():
    model = dyninfer.create_model("resnet56", gated=False)
    r = count_macs(model, _input("resnet56"))
    assert r.dense_by_op() == {"conv": 125_485_056, "batch_norm": 1_064_960, "adaptive_avg_pool2d": 4096,
                               "linear": 640}
    assert r.dense == 126_554_752
    # conv by hand: first conv + 18 layer1 convs + (16->32 + 17) + (32->64 + 17)
    conv = 3 * 16 * 9 * 32 * 32 + 18 * 16 * 16 * 9 * 32 * 32 + 16 * 32 * 9 * 16 * 16 + 17 * 32 * 32 * 9 * 16 * 16 \
        + 32 * 64 * 9 * 8 * 8 + 17 * 64 * 64 * 9 * 8 * 8
    assert conv == 125_485_056


@pytest.mark.parametrize("name,batch", [("resnet20", 1), ("resnet20", 3), ("vgg16_cifar", 2),
                                        ("googlenet_cifar", 1)])
def test_all_open_effective_equals_dense(name, batch):
    dense_model = dyninfer.create_model(name, gated=False)
    gated = decouple(dense_model)  # shares weights; gates open at init
    x = _input(name, batch)
    r = count_macs(gated, x)
    assert torch.equal(r.effective, torch.full((batch,), r.dense))
    rd = count_macs(dense_model, x)
    gate_cost = r.dense_by_op()["gate"]
    assert r.dense == rd.dense + gate_cost
    # the gated model's conv/BN/pool counts are the dense model's
    for op in ("conv", "batch_norm"):
        assert r.dense_by_op()[op] == rd.dense_by_op()[op]


def test_count_macs_restores_training_mode():
    model = dyninfer.create_model("resnet20")
    model.train()
    count_macs(model, _input("resnet20", 2))
    assert all(m.training for m in model.modules())


# ---- effective: hand computations on tiny models ----------------------------------------------
class Tiny(nn.Module):
    """conv0 1x1 3->4 (ungated), conv1 3x3 4->6 (gated), conv2 1x1 6->5 (gated), GAP, fc 5->K."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.conv1, self.bn1 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 5, 1, bias=False), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, k)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x)))
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _tiny_forced(hw: int):
    """Gate of conv1 reads s_0 = GAP(relu(x_0)) (conv0 copies the input channels): g = a·s_0 + b.
    Sample 0 has x_0 = 0 -> keeps {0, 2, 4}; sample 1 has x_0 = 1 -> keeps {0, 1, 2, 3}.
    Gate of conv2 keeps {0, 1, 3} for every sample."""
    torch.manual_seed(0)
    m = decouple(Tiny()).eval()
    with torch.no_grad():
        m.conv0.weight.zero_()
        for c in range(3):
            m.conv0.weight[c, c] = 1.0
        g1, g2 = gates(m).values()
        g1.fc1.weight.zero_()
        g1.fc1.weight[0, 0] = 1.0
        g1.fc1.bias.zero_()
        g1.fc2.weight.copy_(torch.tensor([[0.0], [2.0], [0.0], [2.0], [-2.0], [0.0]]))
        g1.fc2.bias.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0]))
        g2.fc2.bias.copy_(torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0]))
    x = torch.rand(2, 3, hw, hw) + 0.5
    x[0, 0] = 0.0
    x[1, 0] = 1.0
    return m, x


@pytest.mark.parametrize("hw", [4, 7])
def test_tiny_effective_by_hand(hw):
    m, x = _tiny_forced(hw)
    r = count_macs(m, x)
    g1, g2 = gates(m).values()
    assert g1.z.tolist() == [[1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0]]
    assert g2.z.tolist() == [[1, 1, 0, 1, 0], [1, 1, 0, 1, 0]]
    p = hw * hw
    kept1, kept2, k = [3, 4], 3, 3
    expected = {
        "conv0": [4 * 3 * p] * 2,
        "bn0": [2 * 4 * p] * 2,
        "conv1_gate": [4 * p + 4 * 1 + 1 * 6] * 2,             # GAP + fc1 (4->1) + fc2 (1->6)
        "conv1": [kept1[b] * 4 * 9 * p for b in range(2)],
        "bn1": [2 * kept1[b] * p for b in range(2)],
        "conv2_gate": [kept1[b] * p + kept1[b] * 1 + 1 * 5 for b in range(2)],  # dead inputs skipped
        "conv2": [kept2 * kept1[b] * p for b in range(2)],
        "bn2": [2 * kept2 * p] * 2,
        "adaptive_avg_pool2d": [kept2 * p] * 2,
        "fc": [kept2 * k] * 2,
    }
    got = {layer.name: layer.effective.tolist() for layer in r.layers}
    assert got == expected
    assert r.effective.tolist() == [sum(v[b] for v in expected.values()) for b in range(2)]
    dense = {layer.name: layer.dense for layer in r.layers}
    assert dense["conv1"] == 6 * 4 * 9 * p and dense["conv2"] == 5 * 6 * p
    assert r.effective[0] < r.effective[1] < r.dense  # different paths, different costs


@pytest.mark.parametrize("keep", [0.0, 0.5, 1.0])
def test_force_keep(keep):
    m, x = _tiny_forced(4)
    for g in gates(m).values():
        g.force_keep = keep
    r = count_macs(m, x)
    k1, k2 = round(keep * 6), round(keep * 5)
    conv = {layer.name: layer.effective.tolist() for layer in r.layers if layer.op == "conv"}
    assert conv == {"conv0": [4 * 3 * 16] * 2, "conv1": [k1 * 4 * 9 * 16] * 2, "conv2": [k2 * k1 * 16] * 2}


def test_shortcut_pad_and_add_union():
    """ResNet-20: close layer2.0.conv2 completely. Its block output = relu(0 + ShortcutA(x)) has
    only the 16 shortcut channels live (8 zero pad channels each side), so layer2.1.conv1 sees 16
    of 32 input channels; its gate's GAP/fc1 too."""
    m = dyninfer.create_model("resnet20").eval()
    with torch.no_grad():
        gates(m)["layer2.0.conv2_gate"].fc2.bias.fill_(-1.0)
    x = _input("resnet20", 2)
    r = count_macs(m, x)
    layers = {layer.name: layer for layer in r.layers}
    assert layers["layer2.0.conv2"].effective.tolist() == [0, 0]
    assert layers["layer2.0.bn2"].effective.tolist() == [0, 0]
    assert layers["layer2.1.conv1"].effective.tolist() == [32 * 16 * 9 * 16 * 16] * 2
    gate = gates(m)["layer2.1.conv1_gate"]
    hidden = gate.fc1.out_features
    assert layers["layer2.1.conv1_gate"].effective.tolist() == [16 * 256 + 16 * hidden + hidden * 32] * 2
    # layer2.1's residual add restores the shortcut channels -> later blocks see all 32 again
    assert layers["layer2.2.conv1"].effective.tolist() == [32 * 32 * 9 * 256] * 2


class CatNet(nn.Module):
    """Two gated branches concatenated, then a conv that reads the concatenation."""

    def __init__(self):
        super().__init__()
        self.stem, self.bns = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.a, self.bna = nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3)
        self.b, self.bnb = nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.head, self.bnh = nn.Conv2d(8, 2, 1), nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        x = F.relu(self.bns(self.stem(x)))
        y = torch.cat([F.relu(self.bna(self.a(x))), F.relu(self.bnb(self.b(F.max_pool2d(x, 3, 1, 1))))], 1)
        y = F.relu(self.bnh(self.head(y)))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_cat_concatenates_liveness():
    torch.manual_seed(0)
    m = decouple(CatNet()).eval()
    g = gates(m)
    assert list(g) == ["a_gate", "b_gate", "head_gate"]
    with torch.no_grad():
        g["a_gate"].fc2.bias.copy_(torch.tensor([1.0, -1.0, 1.0]))           # 2 of 3
        g["b_gate"].fc2.bias.copy_(torch.tensor([-1.0, -1.0, -1.0, 1.0, -1.0]))  # 1 of 5
        g["head_gate"].fc2.bias.copy_(torch.tensor([1.0, -1.0]))             # 1 of 2
    r = count_macs(m, torch.randn(1, 3, 6, 6))
    eff = {layer.name: layer.effective.item() for layer in r.layers}
    p = 36
    assert eff["a"] == 2 * 4 * p
    assert eff["b"] == 1 * 4 * 9 * p
    assert eff["head"] == 1 * (2 + 1) * p  # kept_in = live channels of the concatenation
    assert eff["head_gate"] == 3 * p + 3 * 2 + 2 * 2
    assert eff["fc"] == 1 * 2
    assert r.zero_cost["max_pool2d"] == 1 and r.zero_cost["cat"] == 1


@pytest.mark.parametrize("name", ["resnet20", "googlenet_cifar"])
def test_per_sample_paths_differ(name):
    torch.manual_seed(1)
    m = dyninfer.create_model(name).eval()
    for g in gates(m).values():
        nn.init.normal_(g.fc1.weight, std=1.0)
        nn.init.normal_(g.fc2.weight, std=1.0)
        nn.init.normal_(g.fc2.bias, std=0.5)
    x = _input(name, 2)
    x[1] = -x[1] * 3
    r = count_macs(m, x)
    assert r.effective[0] != r.effective[1]
    assert (r.effective < r.dense).all()
    # the per-sample totals are the sum of the per-layer entries, per sample
    assert torch.equal(sum(layer.effective for layer in r.layers), r.effective)
    # per-layer effective never exceeds dense
    for layer in r.layers:
        assert (layer.effective <= layer.dense).all(), layer.name
    # effective conv MACs equal a direct count from the gate decisions of that forward
    # (resnet20: every conv input is the previous unit's output or a block output)
    if name == "resnet20":
        zs = {p[: -len("_gate")]: g.z for p, g in gates(m).items()}
        conv = {layer.name: layer.effective for layer in r.layers if layer.op == "conv"}
        for path in ["layer1.0.conv2", "layer2.1.conv2", "layer3.2.conv2"]:
            prev = path.replace("conv2", "conv1")
            kin = zs[prev].sum(1).long()
            kout = zs[path].sum(1).long()
            mod = m.get_submodule(path)
            hw = {"layer1": 32, "layer2": 16, "layer3": 8}[path.split(".")[0]]
            assert mod.in_channels == zs[prev].shape[1]
            assert torch.equal(conv[path], kout * kin * 9 * hw * hw), path


def test_summary_and_report_api():
    m, x = _tiny_forced(4)
    r = count_macs(m, x)
    assert isinstance(r, MacReport) and r.batch == 2
    s = r.summary()
    for token in ("dense", "effective", "conv1_gate", "zero-cost ops", "relu"):
        assert token in s
    assert torch.allclose(r.ratio, r.effective.double() / r.dense)


class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.tanh(self.conv(x))


def test_unknown_ops_are_reported_not_skipped():
    r = count_macs(Odd(), torch.randn(1, 3, 5, 5))
    assert r.unsupported == {"tanh": 1}
    assert "UNSUPPORTED" in r.summary()
    with pytest.raises(ValueError, match="tanh"):
        count_macs(Odd(), torch.randn(1, 3, 5, 5), strict=True)
