"""Every spelling of a supported op: decouple, count_macs and compile read it the same way."""
from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import dyninfer
from dyninfer import UnsupportedLayerError
from dyninfer.flops import count_macs
from dyninfer.nn.graph import classify

from _models import randomize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def unit(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    """A residual block written with functional and method forms and nested Sequentials."""

    def __init__(self, c: int, relu_form: str, add_form: str):
        super().__init__()
        self.a = unit(c, c)
        self.b = nn.Sequential(nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False)), nn.BatchNorm2d(c))
        self.relu_form, self.add_form = relu_form, add_form
        self.drop = nn.Dropout2d(0.2)
        self.skip = nn.Identity()

    def act(self, x):
        if self.relu_form == "F.relu":
            return F.relu(x, inplace=True)
        if self.relu_form == "torch.relu":
            return torch.relu(x)
        if self.relu_form == "relu_":
            return x.relu_()
        return nn.functional.relu(x)

    def forward(self, x):
        out = self.act(self.a(x))
        out = self.drop(out)
        out = self.b(out)
        if self.add_form == "+=":
            out += self.skip(x)
        elif self.add_form == "torch.add":
            out = torch.add(out, self.skip(x))
        else:
            out = self.skip(x) + out
        return self.act(out)


class FormsNet(nn.Module):
    def __init__(self, relu_form="F.relu", add_form="+", pool_form="F.max_pool2d", head_form="mean", n=10):
        super().__init__()
        self.stem = unit(3, 8)
        self.pool_form, self.head_form = pool_form, head_form
        self.block = Block(8, relu_form, add_form)
        self.wide = unit(8, 16, stride=2)
        self.side = unit(8, 8, stride=2)
        self.fc = nn.Linear(24, n)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        if self.pool_form == "F.max_pool2d":
            x = F.max_pool2d(x, 3, stride=1, padding=1)
        elif self.pool_form == "F.avg_pool2d":
            x = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        x = self.block(x)
        x = torch.cat([F.relu(self.wide(x)), self.side(x).relu()], dim=1)
        x = F.dropout(x, 0.1, training=self.training)
        if self.head_form == "mean":
            x = x.mean((2, 3))
        elif self.head_form == "torch.mean":
            x = torch.mean(x, dim=[-1, -2], keepdim=True).flatten(1)
        elif self.head_form == "F.adaptive_avg_pool2d+view":
            x = F.adaptive_avg_pool2d(x, 1)
            x = x.view(x.size(0), -1)
        else:  # adaptive pool to 1x1, then reshape on the shape attribute
            x = F.adaptive_avg_pool2d(x, (1, 1))
            x = torch.flatten(x, 1) if head_form_is_flatten(self.head_form) else x.reshape(x.shape[0], -1)
        return self.fc(x)


def head_form_is_flatten(form: str) -> bool:
    return form.endswith("flatten")


FORMS = [
    dict(relu_form="F.relu", add_form="+=", pool_form="F.max_pool2d", head_form="mean"),
    dict(relu_form="torch.relu", add_form="torch.add", pool_form="F.avg_pool2d", head_form="torch.mean"),
    dict(relu_form="relu_", add_form="+", pool_form="none", head_form="F.adaptive_avg_pool2d+view"),
    dict(relu_form="nn.functional", add_form="+=", pool_form="F.max_pool2d", head_form="adaptive+flatten"),
    dict(relu_form="F.relu", add_form="torch.add", pool_form="F.avg_pool2d", head_form="adaptive+reshape"),
]


def train_steps(model: nn.Module, steps: int = 3, hw: int = 12, batch: int = 8, lr: float = 0.05) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(batch, 3, hw, hw, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def assert_engine_matches(model: nn.Module, x: torch.Tensor, **kw) -> dyninfer.CompiledModel:
    engine = dyninfer.compile(model, example_input=x, **kw)
    with torch.no_grad():
        ref = model(x)
    out, path = engine(x, return_path=True)
    assert out.shape == ref.shape
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-4
    if engine.gate_names:
        zref = dyninfer.calculation_path(model)
        logits = torch.cat([g.logits for g in dyninfer.gates(model).values()], 1)
        differ = path != zref
        assert (logits[differ].abs() < 1e-5).all(), "gate decisions differ away from the threshold"
    return engine


@pytest.mark.parametrize("forms", FORMS, ids=[f["relu_form"] + "|" + f["head_form"] for f in FORMS])
def test_forms_decouple_train_compile_match(forms):
    torch.manual_seed(0)
    model = dyninfer.decouple(FormsNet(**forms))
    gated = list(dyninfer.gates(model))
    # every unit but the stem is gated, whatever spelling its ReLU used
    assert gated == ["block.a.0_gate", "block.b.0.0_gate", "wide.0_gate", "side.0_gate"]
    randomize(model, seed=3)
    train_steps(model)
    x = torch.randn(5, 3, 12, 12)
    engine = assert_engine_matches(model, x)
    assert engine.gate_names == gated
    for keep in (0.25, 0.75):
        for g in dyninfer.gates(model).values():
            g.force_keep = keep
        assert_engine_matches(model, x, force_keep=keep)
        for g in dyninfer.gates(model).values():
            g.force_keep = None


@pytest.mark.parametrize("forms", FORMS[:3], ids=[f["head_form"] for f in FORMS[:3]])
def test_forms_count_the_same_macs_as_modules(forms):
    """count_macs reads functional forms like the module forms: same dense and effective MACs."""
    torch.manual_seed(0)
    model = randomize(dyninfer.decouple(FormsNet(**forms)), seed=5)
    x = torch.randn(4, 3, 12, 12)
    rep = count_macs(model, x, strict=True)
    assert not rep.unsupported
    # the same net by hand: convs and BNs, the head's global pool (one per input element)
    convs = 8 * 3 * 9 * 144 + 2 * (8 * 8 * 9 * 144) + 16 * 8 * 9 * 36 + 8 * 8 * 9 * 36
    bns = 2 * (8 * 144 * 3 + 16 * 36 + 8 * 36)
    gates = sum(c * 144 + c * h + h * n for c, h, n in [(8, 2, 8), (8, 2, 8), (8, 2, 16), (8, 2, 8)])
    assert rep.dense == convs + bns + 24 * 36 + 24 * 10 + gates
    with torch.no_grad():
        for g in dyninfer.gates(model).values():
            g.force_keep = 1.0
        assert torch.equal(count_macs(model, x).effective, torch.full((4,), rep.dense))


def test_classify_spellings():
    class Spell(nn.Module):
        def forward(self, x):
            a = F.relu(x)
            b = torch.relu_(a)
            c = b.relu()
            d = F.max_pool2d(c, 2)
            e = F.avg_pool2d(d, 2, 1, 1)
            f = F.adaptive_avg_pool2d(e, 1)
            g = e.mean((-2, -1), keepdim=True)
            h = torch.cat((f, g), 1)
            i = h.view(h.size(0), -1)
            j = torch.flatten(h, 1)
            k = F.dropout(i, 0.3, training=False)
            return torch.add(k, j) - j * j

    gm = fx.symbolic_trace(Spell())
    ShapeProp = torch.fx.passes.shape_prop.ShapeProp
    ShapeProp(gm).propagate(torch.randn(2, 3, 8, 8))
    mods = dict(gm.named_modules())
    kinds = [classify(n, mods).kind for n in gm.graph.nodes]
    assert kinds == ["placeholder", "relu", "relu", "relu", "max_pool", "avg_pool", "adaptive_avg_pool", "mean", "cat",
                     "shape", "reshape", "flatten", "identity", "add", "mul", "sub", "output"]
    by_name = {n.name: classify(n, mods) for n in gm.graph.nodes}
    assert by_name["mean"].params == {"dims": (2, 3), "keepdim": True}
    assert by_name["avg_pool2d"].params["padding"] == 1 and by_name["avg_pool2d"].params["stride"] == 1
    assert by_name["max_pool2d"].params["stride"] is None
    assert by_name["dropout"].params == {"training": False}
    assert classify(next(iter(gm.graph.nodes)), mods).x is None
    assert operator.add in {operator.add}  # the table keys operators, not their names


def test_example_input_sets_shape_and_other_sizes_are_refused():
    model = FormsNet().eval()
    engine = dyninfer.compile(model, example_input=torch.randn(1, 3, 10, 14))
    assert engine(torch.randn(3, 3, 10, 14)).shape == (3, 10)
    with pytest.raises(ValueError, match=r"\(B, 3, 10, 14\).*\[2, 3, 12, 12\]"):
        engine(torch.randn(2, 3, 12, 12))
    with pytest.raises(ValueError, match="disagrees"):
        dyninfer.compile(model, example_input=torch.randn(1, 3, 10, 14), input_shape=(3, 12, 12))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) tensor, got \(3, 10, 14\)"):
        dyninfer.compile(model, example_input=torch.randn(3, 10, 14))


@pytest.mark.parametrize("forward,match", [
    (lambda x: F.dropout(x, 0.5), "training=True"),
    (lambda x: x.mean(1), r"mean over dims \(1,\)"),
    (lambda x: x.view(x.size(0), 3, -1), "only flattening"),
    (lambda x: torch.cat([x, x], 2), "dim 2"),
    (lambda x: x * 2, "not supported"),
])
def test_unsupported_forms_name_the_node(forward, match):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return forward(self.conv(x))

    with pytest.raises(UnsupportedLayerError, match=match) as err:
        dyninfer.compile(Net().eval(), example_input=torch.randn(1, 3, 6, 6))
    assert "node '" in str(err.value)


def test_functional_dropout_follows_the_decoupled_models_mode():
    torch.manual_seed(0)
    model = dyninfer.decouple(FormsNet())  # traced in training mode: fx saw training=True
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == pytest.approx(0.1)
    x = torch.randn(2, 3, 12, 12)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    assert model.dropout.training
