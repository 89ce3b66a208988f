"""The C++ engine against PyTorch: kernels over random shapes and channel subsets, every
registered model, decoupled user models, dense mode, threads, bad inputs, concurrency."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import dyninfer
from dyninfer import ArchitectureControl, UnsupportedLayerError

from _models import randomize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def check_against_torch(model: nn.Module, x: torch.Tensor, **kw) -> torch.Tensor:
    engine = dyninfer.compile(model, input_shape=tuple(x.shape[1:]), **kw)
    with torch.no_grad():
        ref = model(x)
    out, path = engine(x, return_path=True)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-4
    if engine.gate_names:
        zref = dyninfer.calculation_path(model)
        logits = torch.cat([g.logits for g in dyninfer.gates(model).values()], 1)
        differ = path != zref
        # decisions may only differ where the gate logit is within rounding of the threshold
        assert (logits[differ].abs() < 1e-5).all()
    return path


# ---- kernels: one gated conv with explicit input/output channel subsets ------------------------

def set_subset(gate: ArchitectureControl, keep: torch.Tensor) -> None:
    """Make ``gate`` keep exactly the channels where keep is True, for every input."""
    nn.init.zeros_(gate.fc1.weight)
    nn.init.ones_(gate.fc1.bias)
    nn.init.zeros_(gate.fc2.weight)
    gate.fc2.bias.data.copy_(torch.where(keep, 1.0, -1.0))


def subset_model(cin, cmid, cout, k, stride, pad, keep_mid, keep_out, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, cin, 3, 1, 1), nn.BatchNorm2d(cin), nn.ReLU(),
        nn.Conv2d(cin, cmid, 3, 1, 1, bias=False), nn.BatchNorm2d(cmid), nn.ReLU(),
        nn.Conv2d(cmid, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, 4, 1), nn.Flatten())
    gated = randomize(dyninfer.decouple(model), seed)
    gates = list(dyninfer.gates(gated).values())
    assert len(gates) == 2  # first and last conv are not gated
    set_subset(gates[0], keep_mid)
    set_subset(gates[1], keep_out)
    return gated


def subset(draw, n):
    kind = draw(st.sampled_from(["empty", "full", "random"]))
    if kind == "empty":
        return torch.zeros(n, dtype=torch.bool)
    if kind == "full":
        return torch.ones(n, dtype=torch.bool)
    return torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))


@st.composite
def conv_case(draw):
    k = draw(st.sampled_from([1, 3, 5]))
    return dict(cin=draw(st.integers(1, 6)), cmid=(cmid := draw(st.integers(1, 19))),
                cout=(cout := draw(st.integers(1, 19))), k=k, stride=draw(st.sampled_from([1, 2])),
                pad=draw(st.integers(0, k // 2 + 1)), h=draw(st.integers(k, 21)), w=draw(st.integers(k, 21)),
                keep_mid=subset(draw, cmid), keep_out=subset(draw, cout), seed=draw(st.integers(0, 1000)))


@settings(max_examples=60, deadline=None)
@given(conv_case())
def test_conv_kernel_matches_torch_on_channel_subsets(case):
    model = subset_model(case["cin"], case["cmid"], case["cout"], case["k"], case["stride"], case["pad"],
                         case["keep_mid"], case["keep_out"], case["seed"])
    x = torch.randn(2, 3, case["h"], case["w"])
    path = check_against_torch(model, x)
    expect = torch.cat([case["keep_mid"], case["keep_out"]]).float()
    assert torch.equal(path, expect.expand(2, -1))


@pytest.mark.parametrize("hw", [5, 6, 7, 9])
@pytest.mark.parametrize("k", [1, 3])
def test_small_planes_match_torch(hw, k):
    """Planes of at most kWeightsOuterMaxVecs output vectors run group by group, and a 7x7 plane's
    4 flat vectors in 6-channel tiles that span it (conv.h): many groups, random channel subsets."""
    g = torch.Generator().manual_seed(hw * 10 + k)
    keep_mid = torch.rand(21, generator=g) < 0.6
    keep_out = torch.rand(29, generator=g) < 0.6
    model = subset_model(5, 21, 29, k, 1, k // 2, keep_mid, keep_out, hw)
    x = torch.randn(3, 3, hw, hw, generator=g)
    path = check_against_torch(model, x)
    assert torch.equal(path, torch.cat([keep_mid, keep_out]).float().expand(3, -1))
    model = subset_model(5, 21, 29, k, 1, k // 2, torch.ones(21, dtype=torch.bool), torch.ones(29, dtype=torch.bool), hw)
    check_against_torch(model, x)


@pytest.mark.parametrize("k", [1, 3])
def test_planes_past_the_prefetch_threshold_match_torch(k):
    """Output planes of 512 KB and more (64 channels of 48 x 48) take the prefetching tiles
    (ConvCall::prefetch_next); random channel subsets and all kept."""
    g = torch.Generator().manual_seed(k)
    keep_mid = torch.rand(16, generator=g) < 0.6
    x = torch.randn(2, 3, 48, 48, generator=g)
    for keep_out in (torch.rand(64, generator=g) < 0.6, torch.ones(64, dtype=torch.bool)):
        model = subset_model(4, 16, 64, k, 1, k // 2, keep_mid, keep_out, k)
        path = check_against_torch(model, x)
        assert torch.equal(path, torch.cat([keep_mid, keep_out]).float().expand(2, -1))


@pytest.mark.parametrize("keep_out", ["none", "all", "one"])
def test_empty_and_full_subsets_give_defined_output(keep_out):
    cout = 7
    keep = {"none": torch.zeros(cout, dtype=torch.bool), "all": torch.ones(cout, dtype=torch.bool),
            "one": torch.arange(cout) == 3}[keep_out]
    model = subset_model(3, 5, cout, 3, 1, 1, torch.zeros(5, dtype=torch.bool), keep, 0)
    x = torch.randn(3, 3, 9, 9)
    check_against_torch(model, x)


@pytest.mark.parametrize("h,w,stride,keep", [(8, 8, 1, "random"), (7, 8, 1, "random"), (9, 8, 1, "full"),
                                              (16, 16, 2, "random"), (15, 16, 2, "full"), (13, 15, 2, "random")])
def test_eight_pixel_rows(h, w, stride, keep):
    # Output rows of 8 pixels: on AVX-512 two rows share one 16-lane vector (row pairs), the
    # second masked off when the row count is odd; stride 2 deinterleaves two input rows.
    g = torch.Generator().manual_seed(h * 31 + w)
    keep_mid = torch.rand(11, generator=g) < 0.6 if keep == "random" else torch.ones(11, dtype=torch.bool)
    keep_out = torch.rand(13, generator=g) < 0.6 if keep == "random" else torch.ones(13, dtype=torch.bool)
    model = subset_model(5, 11, 13, 3, stride, 1, keep_mid, keep_out, seed=h + w)
    check_against_torch(model, torch.randn(3, 3, h, w))


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("k,stride,pad,ceil", [(3, 1, 1, False), (3, 2, 1, False), (2, 2, 0, False),
                                               (3, 2, 0, True), (2, 2, 1, True), (3, 3, 1, False)])
def test_max_pooling(k, stride, pad, ceil, relu):
    # After a ReLU the runtime pools with vector loads over zero-bordered planes (stride 1 or 2);
    # otherwise, and for other strides, with its per-pixel loop. Both must equal PyTorch.
    torch.manual_seed(k * 7 + stride)
    layers = [nn.Conv2d(3, 6, 3, 1, 1), nn.BatchNorm2d(6)] + ([nn.ReLU()] if relu else [])
    layers += [nn.MaxPool2d(k, stride, pad, ceil_mode=ceil), nn.Conv2d(6, 5, 3, 1, 1), nn.BatchNorm2d(5),
               nn.ReLU(), nn.Conv2d(5, 4, 1), nn.Flatten()]
    model = randomize(dyninfer.decouple(nn.Sequential(*layers)), seed=k + stride)
    for h, w in [(19, 21), (16, 16), (9, 7)]:
        check_against_torch(model, torch.randn(2, 3, h, w))


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("k,stride,pad,include,divisor,ceil", [
    (3, 1, 1, True, None, False), (3, 1, 1, False, None, False), (2, 1, 0, True, None, False),
    (3, 1, 1, True, 5, False), (3, 2, 1, False, None, False), (2, 2, 1, True, None, True), (5, 1, 2, False, None, False)])
def test_average_pooling(k, stride, pad, include, divisor, ceil, relu):
    # Stride 1 inside the zero border: vectors of output pixels (each lane sums its window in the
    # scalar loop's order, so the result is the same to the bit); other strides: the scalar loop.
    torch.manual_seed(k * 11 + stride)
    layers = [nn.Conv2d(3, 6, 3, 1, 1), nn.BatchNorm2d(6)] + ([nn.ReLU()] if relu else [])
    layers += [nn.AvgPool2d(k, stride, pad, ceil_mode=ceil, count_include_pad=include, divisor_override=divisor),
               nn.Conv2d(6, 5, 3, 1, 1), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 4, 1), nn.Flatten()]
    model = randomize(dyninfer.decouple(nn.Sequential(*layers)), seed=k + stride)
    for h, w in [(19, 21), (16, 16), (9, 7), (5, 40)]:
        check_against_torch(model, torch.randn(2, 3, h, w))


# ---- whole models ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", dyninfer.list_models())
def test_registered_model_matches_torch(name):
    model = randomize(dyninfer.create_model(name), seed=1)
    c, h, w = dyninfer.models.model_info(name).input_size
    x = torch.randn(2, c, h, w)
    path = check_against_torch(model, x)
    assert 0.05 < path.mean().item() < 0.95  # the randomised gates really select subsets


@pytest.mark.parametrize("name", ["resnet20", "vgg16_cifar", "googlenet_cifar"])
def test_dense_mode_matches_dense_model(name):
    gated = randomize(dyninfer.create_model(name), seed=2)
    dense = dyninfer.create_model(name, gated=False).eval()
    missing, _ = dense.load_state_dict(gated.state_dict(), strict=False)
    assert not missing
    x = torch.randn(2, 3, 32, 32)
    engine = dyninfer.compile(gated, gates="open")
    out, path = engine(x, return_path=True)
    with torch.no_grad():
        ref = dense(x)
    assert rel_err(out, ref) < 1e-4
    assert torch.equal(path, torch.ones_like(path))


@pytest.mark.parametrize("keep", [1.0, 0.75, 0.5, 0.25, 0.0])
def test_forced_density_matches_torch(keep):
    model = randomize(dyninfer.create_model("resnet20"), seed=3)
    for g in dyninfer.gates(model).values():
        g.force_keep = keep
    x = torch.randn(2, 3, 32, 32)
    path = check_against_torch(model, x)
    engine = dyninfer.compile(model, force_keep=keep)
    sizes = engine.gate_sizes
    for z, n in zip(engine.split_path(engine(x, return_path=True)[1]).values(), sizes):
        assert (z.sum(1) == round(keep * n)).all()
    assert path.shape == (2, sum(sizes))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.b3 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.head = nn.Linear(16 * 3 * 3, 5)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(y)) + x)
        x = torch.relu(self.b3(self.c3(x)) + self.down(x))
        return self.head(torch.flatten(self.pool(x), 1))


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(6, 5, 5, padding=2), nn.BatchNorm2d(5), nn.ReLU())
        self.c = nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.Conv2d(6, 3, 1), nn.BatchNorm2d(3), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x), self.c(x)], dim=1)
        x = self.bn(self.mix(x))  # a standalone BN (the conv output feeds a BN, then no ReLU)
        x = self.pool(x).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("w", [7, 19, 33])
def test_standalone_batchnorm_is_exact(relu, w):
    """A BN no conv absorbs runs as the affine kernel: x * scale rounded, then + shift, per pixel, bit
    for bit as float32 arithmetic without FMA (vector rows with masked tails of every length)."""
    from dyninfer.compiler.planner import _bn_affine

    torch.manual_seed(w)
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
    model = nn.Sequential(bn, *([nn.ReLU()] if relu else []), nn.Flatten()).eval()
    x = torch.randn(2, 5, 6, w)
    got = dyninfer.compile(model, input_shape=(5, 6, w))(x).numpy()
    scale, shift = (t.float().numpy()[None, :, None, None] for t in _bn_affine(bn))
    want = x.numpy() * scale + shift  # numpy rounds the product, then the sum
    if relu:
        want = np.maximum(want, np.float32(0))
    assert got.tobytes() == want.reshape(2, -1).astype(np.float32).tobytes()


@pytest.mark.parametrize("out_features,c", [(10, 3), (64, 3), (77, 3), (1000, 64), (9001, 64)])
def test_linear_layer_is_the_scalar_dot_product_bit_for_bit(out_features, c):
    """The Linear head runs vectorised across outputs, each output's sum in input order with every
    product rounded before its add: the same bits as a float32 scalar loop. Layers of 1M weights and
    more stream them row by row (1000 x 1280; 9001 outputs also cross an 8192-output chunk)."""
    torch.manual_seed(out_features)
    fc = nn.Linear(c * 4 * 5, out_features)
    model = nn.Sequential(nn.Flatten(), fc).eval()
    x = torch.randn(2, c, 4, 5)
    got = dyninfer.compile(model, example_input=x)(x).numpy()
    w, b = fc.weight.detach().numpy(), fc.bias.detach().numpy()
    for n in range(2):
        xs = x[n].reshape(-1).numpy()
        a = np.zeros(out_features, dtype=np.float32)
        for k in range(xs.size):
            a = a + w[:, k] * xs[k]  # float32 product, rounded, then a float32 add
        assert got[n].tobytes() == (a + b).astype(np.float32).tobytes()


@pytest.mark.parametrize("cls,hw", [(Residual, 11), (Branches, 10)])
def test_decoupled_user_models_match_torch(cls, hw):
    torch.manual_seed(0)
    model = randomize(dyninfer.decouple(cls()), seed=4)
    check_against_torch(model, torch.randn(3, 3, hw, hw))


# ---- threads, bad input, concurrency ------------------------------------------------------------

@pytest.fixture
def resnet_engine():
    model = randomize(dyninfer.create_model("resnet20"), seed=5)
    return dyninfer.compile(model)


@pytest.mark.parametrize("batch", [1, 4])
def test_one_and_two_threads_identical(resnet_engine, batch):
    x = torch.randn(batch, 3, 32, 32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a, pa = resnet_engine(x, return_path=True)
        torch.set_num_threads(2)
        b, pb = resnet_engine(x, return_path=True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a, b) and torch.equal(pa, pb)


@pytest.mark.parametrize("n", [5, 11])
def test_batch_equals_single_samples(resnet_engine, n):
    x = torch.randn(n, 3, 32, 32)
    full, path = resnet_engine(x, return_path=True)
    each = [resnet_engine(x[i:i + 1], return_path=True) for i in range(n)]
    assert torch.equal(full, torch.cat([o for o, _ in each]))
    assert torch.equal(path, torch.cat([p for _, p in each]))
    assert len({tuple(p.flatten().tolist()) for p in path}) > 1  # samples kept different channels


@pytest.mark.parametrize("bad,err", [
    (torch.randn(3, 32, 32), "got a 3-d tensor"),
    (torch.randn(1, 4, 32, 32), "expected input of shape"),
    (torch.randn(1, 3, 31, 32), "expected input of shape"),
    (torch.randn(1, 3, 32, 32, dtype=torch.float64), "float32"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    (torch.full((1, 3, 32, 32), float("inf")), "NaN or Inf"),
    (torch.empty(1, 3, 32, 32, device="meta"), "CPU tensor"),
])
def test_bad_inputs_raise(resnet_engine, bad, err):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=err):
        resnet_engine(bad)


def test_non_contiguous_and_empty_batch(resnet_engine):
    x = torch.randn(2, 32, 32, 3).permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    assert torch.equal(resnet_engine(x), resnet_engine(x.contiguous()))
    assert resnet_engine(torch.randn(0, 3, 32, 32)).shape == (0, 10)
    with pytest.raises(TypeError):
        resnet_engine([1, 2, 3])


def test_concurrent_calls_agree_with_serial(resnet_engine):
    xs = [torch.randn(2, 3, 32, 32) for _ in range(16)]
    serial = [resnet_engine(x, return_path=True) for x in xs]
    barrier = threading.Barrier(8)

    def call(i):
        if i < 8:
            barrier.wait()
        return resnet_engine(xs[i], return_path=True)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(16)))
    for (a, pa), (b, pb) in zip(serial, results):
        assert torch.equal(a, b) and torch.equal(pa, pb)


def test_unsupported_layer_names_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GELU(), nn.Flatten()).eval()
    with pytest.raises(UnsupportedLayerError, match=r"'2' \(GELU\)"):
        dyninfer.compile(model, input_shape=(3, 8, 8))


def test_training_mode_and_missing_shape_raise():
    model = dyninfer.create_model("resnet20")
    with pytest.raises(ValueError, match="training mode"):
        dyninfer.compile(model)
    user = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval()
    with pytest.raises(ValueError, match="input_shape"):
        dyninfer.compile(user)


def test_portable_path_matches_simd(monkeypatch):
    model = randomize(dyninfer.create_model("resnet20"), seed=6)
    x = torch.randn(2, 3, 32, 32)
    fast = dyninfer.compile(model)
    monkeypatch.setenv("DYNINFER_ISA", "portable")
    slow = dyninfer.compile(model)
    assert slow.isa == "portable"
    a, pa = fast(x, return_path=True)
    b, pb = slow(x, return_path=True)
    assert rel_err(b, a) < 1e-5
    assert torch.equal(pa, pb)


def test_plan_survives_pickle_round_trip(resnet_engine, tmp_path):
    class Wrap(torch.nn.Module):
        def __init__(self, plan):
            super().__init__()
            self.plan = plan

        def forward(self, x):
            return torch.ops.dyninfer.run(self.plan, x, False, False)[0]

    scripted = torch.jit.script(Wrap(resnet_engine.plan))
    path = os.path.join(tmp_path, "plan.pt")
    scripted.save(path)
    loaded = torch.jit.load(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), resnet_engine(x).flatten(1))


@pytest.mark.parametrize("w,k,pad", [(32, 3, 1), (40, 3, 1), (64, 1, 0), (37, 5, 2)])
def test_wide_stride2_convs_match_torch(w, k, pad):
    """Stride-2 convs on planes wide enough for full 16-lane vectors and their tails."""
    torch.manual_seed(w)
    keep = torch.rand(12) < 0.6
    model = subset_model(3, 5, 12, k, 2, pad, torch.ones(5, dtype=torch.bool), keep, w)
    check_against_torch(model, torch.randn(2, 3, 9, w))


def test_malformed_plans_raise_instead_of_crashing(resnet_engine):
    spec = resnet_engine.spec
    Plan = torch.classes.dyninfer.Plan
    good = (list(spec.meta), list(spec.ops), list(spec.weights), list(spec.conv_names))
    Plan(*good)  # the unmodified plan builds
    bad_cases = [
        (spec.meta[:5], spec.ops, spec.weights),                       # truncated meta
        (spec.meta, spec.ops[:-3], spec.weights),                      # truncated ops
        (spec.meta, [99, 0] + list(spec.ops), spec.weights),           # unknown op kind
        (spec.meta, spec.ops, spec.weights[:-1]),                      # missing weight
        (spec.meta, spec.ops, [w[:1] for w in spec.weights]),          # wrong weight sizes
        (spec.meta, spec.ops, [w.double() for w in spec.weights]),     # wrong dtype
        (spec.meta, list(spec.ops[:2]) + [10**6] + list(spec.ops[3:]), spec.weights),  # buffer out of range
        ([spec.meta[0]] + [-1] * (len(spec.meta) - 1), spec.ops, spec.weights),         # negative geometry
    ]
    for meta, ops, weights in bad_cases:
        with pytest.raises((ValueError, RuntimeError), match="dyninfer plan"):
            Plan(list(meta), list(ops), list(weights), list(spec.conv_names))


def test_forced_density_ties_break_like_pytorch():
    """Untrained gates give every channel the same logit: both sides keep the lowest indices."""
    model = dyninfer.create_model("resnet20").eval()
    for g in dyninfer.gates(model).values():
        g.force_keep = 0.5
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    engine = dyninfer.compile(model, force_keep=0.5)
    out, path = engine(x, return_path=True)
    assert torch.equal(path, dyninfer.calculation_path(model))
    assert rel_err(out, ref) < 1e-4


def test_cli_compile_reports_bad_checkpoint(tmp_path, capsys):
    from dyninfer.cli import main
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert main(["compile", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["compile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "missing.safetensors" in err and "broken.safetensors" in err


# ---- hand-allocated assembly tiles -------------------------------------------------------------

def _avx2_engine(model, monkeypatch, asm: bool, **kw):
    monkeypatch.setenv("DYNINFER_ISA", "avx2")
    monkeypatch.setenv("DYNINFER_NO_ASM", "0" if asm else "1")
    engine = dyninfer.compile(model, **kw)
    if engine.isa != "avx2":
        pytest.skip(f"this CPU has no AVX2 + FMA (engine isa: {engine.isa})")
    return engine


@pytest.mark.parametrize("gates", ["learned", "open"])
def test_avx2_assembly_tiles_equal_intrinsics(monkeypatch, gates):
    # Same sums in the same order: the assembly and intrinsics loops must agree bit for bit,
    # over gated layers whose tiles hold 1, 2 and 3 output channels and any input subset.
    model = randomize(dyninfer.create_model("resnet20"), seed=9)
    x = torch.randn(3, 3, 32, 32)
    a, pa = _avx2_engine(model, monkeypatch, True, gates=gates)(x, return_path=True)
    b, pb = _avx2_engine(model, monkeypatch, False, gates=gates)(x, return_path=True)
    assert torch.equal(pa, pb)
    assert torch.equal(a, b)
    if gates == "learned":
        with torch.no_grad():
            assert rel_err(a, model(x)) < 1e-4


@settings(max_examples=30, deadline=None)
@given(conv_case())
def test_avx2_kernels_match_torch_on_channel_subsets(case):
    # The AVX2 path (assembly 3x3 tiles) wherever this CPU has it, whatever the engine would pick.
    # (hypothesis runs many examples per test call, so the variable is set by hand, not by
    # the function-scoped monkeypatch fixture)
    saved = os.environ.get("DYNINFER_ISA")
    os.environ["DYNINFER_ISA"] = "avx2"
    try:
        model = subset_model(case["cin"], case["cmid"], case["cout"], case["k"], case["stride"], case["pad"],
                             case["keep_mid"], case["keep_out"], case["seed"])
        check_against_torch(model, torch.randn(2, 3, case["h"], case["w"]))
    finally:
        if saved is None:
            del os.environ["DYNINFER_ISA"]
        else:
            os.environ["DYNINFER_ISA"] = saved


def test_weights_held_once_and_owned_by_the_engine():
    """The C++ plan shares the spec's weight tensors (no second copy), and those are the engine's own:
    changing the model's parameters after compiling changes nothing the engine computes."""
    model = dyninfer.create_model("resnet20").eval()
    engine = dyninfer.compile(model)
    state = engine.plan.__getstate__()
    if isinstance(state[0], tuple):  # torch's Python binding pairs the pickled state with the class name
        state = state[0]
    plan_weights = state[2]
    assert len(plan_weights) == len(engine.spec.weights)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(plan_weights, engine.spec.weights))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not any(w.untyped_storage().data_ptr() in params for w in engine.spec.weights)
    x = torch.randn(2, 3, 32, 32)
    before = engine(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(engine(x), before)
    with pytest.raises(ValueError, match="gates must be"):
        dyninfer.CompiledModel.from_plan(engine.spec, "sometimes")
