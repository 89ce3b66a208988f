"""DecouplingLoss (paper Eq. 9-12) against hand computations on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dyninfer.losses import (PRESETS, DecouplingLoss, LossConfig, batch_shaping_loss, beta_cdf, gate_on_probability,
                             kl_z_y, list_presets, preset, response_targets, sparsity_loss)
from dyninfer.nn import ArchitectureControl, decouple, gates


class Tiny(nn.Module):
    """conv0 (ungated: first) -> conv1 (gated, N=6) -> conv2 (gated, N=5) -> GAP -> fc."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv1, self.bn1 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 5, 1), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x)))
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


K = 3


@pytest.fixture
def model():
    torch.manual_seed(0)
    return decouple(Tiny(K))


GS = [torch.tensor([[0.3, -1.2, 2.0, 0.1, -0.4, 0.0], [1.1, 0.5, -2.5, 0.9, 0.2, -0.3]]),
      torch.tensor([[-0.6, 0.8, 1.7, -0.2, 0.4], [0.0, -1.5, 0.6, 2.2, -0.9]])]  # gate logits g


def _set(model, zs, ys, gs=GS):
    for g, z, y, lg in zip(gates(model).values(), zs, ys, gs):
        g.z, g.y_mean, g.logits = z, y, lg


# ---- hand references (plain Python floats, no torch ops) -------------------------------------
def hand_ce(scores, label):
    m = max(scores)
    lse = m + math.log(sum(math.exp(s - m) for s in scores))
    return lse - scores[label]


def hand_kl(z, y, eps):
    sz = sum(z)
    p = [v / (sz + eps) for v in z]
    yr = [max(v, 0.0) for v in y]
    sy = sum(yr)
    q = [v / (sy + eps) for v in yr]
    return sum(pc * (math.log(pc + eps) - math.log(qc + eps)) for pc, qc in zip(p, q))


def hand_sparsity(z, r):
    return abs(sum(z) - r * len(z))


def hand_batch_shaping(g, a, b):
    """Σ over the batch's sorted Φ(g) of (i/(B+1) − F_Beta)², mean over samples and channels."""
    from scipy.special import betainc

    bsz, n = g.shape
    total = 0.0
    for c in range(n):
        p = sorted(0.5 * (1 + math.erf(g[i, c].item() / math.sqrt(2))) for i in range(bsz))
        total += sum(((i + 1) / (bsz + 1) - betainc(a, b, p[i])) ** 2 for i in range(bsz))
    return total / (bsz * n)


ZS = [torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0], [0.2, 0.9, 0.0, 1.0, 0.5, 0.3]]),
      torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0, 1.0]])]  # second layer: sample 0 all closed
YS = [torch.tensor([[0.5, 0.1, 2.0, 0.0, 0.3, 0.1], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]),
      torch.tensor([[0.3, -0.2, 0.7, 0.1, 0.0], [-1.0, 0.4, 0.4, 2.0, 0.2]])]  # negative means (pre-add units)
LABELS = torch.tensor([2, 0])
LOGITS = torch.tensor([[0.1, -0.3, 0.7], [1.5, 0.2, -0.4]])


@pytest.mark.parametrize("kl_reduction,lambda_bs", [("sum", 0.0), ("mean", 0.4)])
def test_each_part_matches_hand_computation(model, kl_reduction, lambda_bs):
    cfg = LossConfig(lambda_mi=0.3, lambda_kl=0.7, lambda_s=0.05, target_ratio=0.5, kl_reduction=kl_reduction, lambda_rt=0.0,
                     lambda_bs=lambda_bs)
    crit = DecouplingLoss(model, K, cfg)
    assert crit.gate_paths == ["conv1_gate", "conv2_gate"]
    ws = [torch.arange(K * 6, dtype=torch.float32).reshape(K, 6) / 10 - 0.8,
          torch.arange(K * 5, dtype=torch.float32).reshape(K, 5).flip(1) / 7 - 1.0]
    with torch.no_grad():
        for lin, w in zip(crit.classifiers.values(), ws):
            lin.weight.copy_(w)
    _set(model, ZS, YS)
    total, parts = crit(LOGITS, LABELS)

    b = len(LABELS)
    ce = sum(hand_ce(LOGITS[i].tolist(), int(LABELS[i])) for i in range(b)) / b
    mi = kl = sp = bs = 0.0
    for w, z, y, g in zip(ws, ZS, YS, GS):
        n = z.shape[1]
        for i in range(b):
            zi = z[i].tolist()
            scores = [sum(w[k, c].item() * zi[c] for c in range(len(zi))) for k in range(K)]
            mi += hand_ce(scores, int(LABELS[i])) / b
            kl += hand_kl(zi, y[i].tolist(), cfg.eps) / b / (n if kl_reduction == "mean" else 1)
            sp += hand_sparsity(zi, cfg.target_ratio) / b
        bs += hand_batch_shaping(g, 0.5, 0.5)
    assert set(parts) == {"ce", "mi", "kl", "sparsity", "bs", "rt"} and parts["rt"].item() == 0.0
    assert parts["bs"].item() == (pytest.approx(bs, rel=1e-5) if lambda_bs else 0.0)
    expect = ce + 0.3 * mi + 0.7 * kl + 0.05 * sp + lambda_bs * bs
    assert total.item() == pytest.approx(expect, rel=1e-5)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["mi"].item() == pytest.approx(mi, rel=1e-5)
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-4)
    assert parts["sparsity"].item() == pytest.approx(sp, rel=1e-6)
    assert sp == pytest.approx((0.0 + 0.1) / 2 + (2.5 + 1.5) / 2)  # |3-3|,|2.9-3| ; |0-2.5|,|4-2.5|


@pytest.mark.parametrize("n", [1, 4, 16])
def test_kl_zero_when_z_matches_y_and_finite_for_closed_gate(n):
    torch.manual_seed(n)
    y = torch.rand(3, n) + 0.1
    z = y / y.max(dim=1, keepdim=True).values  # same distribution as y after normalisation
    assert torch.allclose(kl_z_y(z, y), torch.zeros(3), atol=1e-5)
    closed = torch.zeros(2, n, requires_grad=True)
    out = kl_z_y(closed, torch.rand(2, n))
    assert torch.equal(out, torch.zeros(2))  # 0·log 0 = 0: an all-closed layer contributes nothing
    out.sum().backward()
    assert torch.isfinite(closed.grad).all()


def test_kl_positive_when_z_selects_low_response_channels():
    y = torch.tensor([[5.0, 5.0, 0.0, 0.0]])
    good = kl_z_y(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), y)
    bad = kl_z_y(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), y)
    assert good.item() == pytest.approx(0.0, abs=1e-5)
    assert bad.item() > 10.0  # log((0.5+eps)/eps) ≈ 13


@pytest.mark.parametrize("r", [0.0, 0.25, 1.0])
def test_sparsity_r(r):
    z = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    assert torch.allclose(sparsity_loss(z, r), torch.tensor([abs(2 - 4 * r), abs(0.5 - 4 * r)]))


def test_r_zero_is_plain_l1_not_normalised(model):
    crit = DecouplingLoss(model, K, LossConfig(target_ratio=0.0))
    _set(model, ZS, YS)
    _, parts = crit(LOGITS, LABELS)
    l1 = sum(z.sum(dim=1).mean().item() for z in ZS)
    assert parts["sparsity"].item() == pytest.approx(l1)


def test_weights_zero_reduce_to_ce(model):
    crit = DecouplingLoss(model, K, LossConfig(lambda_mi=0.0, lambda_kl=0.0, lambda_s=0.0, lambda_bs=0.0, lambda_rt=0.0))
    _set(model, ZS, YS)
    total, parts = crit(LOGITS, LABELS)
    assert torch.equal(total, parts["ce"])
    assert parts["mi"].item() > 0 and parts["sparsity"].item() > 0  # still reported


def test_response_targets_are_each_samples_strongest_channels(model):
    """L_rt: BCE of the gate logits against 'among the round(R·N) largest y_mean of this sample'."""
    y = torch.tensor([[0.5, 0.1, 2.0, 0.0, 0.3, 0.1], [1.0, 3.0, 1.0, -1.0, 1.0, 0.2]])
    assert response_targets(y, 0.5).tolist() == [[1, 0, 1, 0, 1, 0], [1, 1, 1, 0, 0, 0]]  # ties: lower index
    assert response_targets(y, 0.01).sum(1).tolist() == [1, 1]  # at least one channel
    crit = DecouplingLoss(model, K, LossConfig(lambda_mi=0, lambda_kl=0, lambda_s=0, lambda_bs=0, lambda_rt=2.0,
                                               target_ratio=0.5))
    _set(model, ZS, YS)
    total, parts = crit(LOGITS, LABELS)
    hand = 0.0
    for g, yy in zip(GS, YS):
        t = response_targets(yy, 0.5)
        for i in range(g.shape[0]):
            for c in range(g.shape[1]):
                p = 1 / (1 + math.exp(-g[i, c].item()))
                hand -= (t[i, c].item() * math.log(p) + (1 - t[i, c].item()) * math.log(1 - p)) / g.numel()
    assert parts["rt"].item() == pytest.approx(hand, rel=1e-5)
    assert total.item() == pytest.approx(parts["ce"].item() + 2.0 * hand, rel=1e-5)


def test_beta_cdf_gradient_is_the_pdf():
    from scipy.stats import beta

    x = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.97], dtype=torch.float64, requires_grad=True)
    beta_cdf(x, 0.4, 0.6).sum().backward()
    assert torch.allclose(x.grad, torch.from_numpy(beta.pdf(x.detach().numpy(), 0.4, 0.6)))
    torch.autograd.gradcheck(lambda t: beta_cdf(t, 0.4, 0.6), (x.detach().clone().requires_grad_(),))


def test_batch_shaping_punishes_static_gates_and_pushes_them_apart():
    """A gate with the same on-probability for every sample pays more than one that is decisively on
    for half the batch and off for the rest; gradient steps on the static gate's logits spread them."""
    torch.manual_seed(0)
    static = torch.full((64, 8), 1.0) + 0.01 * torch.randn(64, 8)
    split = torch.cat([torch.full((32, 8), -2.5), torch.full((32, 8), 2.5)]) + 0.3 * torch.randn(64, 8)
    l_static = batch_shaping_loss(gate_on_probability(static), 0.5, 0.5)
    l_split = batch_shaping_loss(gate_on_probability(split), 0.5, 0.5)
    assert l_static > 2 * l_split
    g = static.clone().requires_grad_()
    for _ in range(200):
        loss = batch_shaping_loss(gate_on_probability(g), 0.5, 0.5)
        (grad,) = torch.autograd.grad(loss, g)
        g = (g - 50.0 * grad).detach().requires_grad_()
    assert g.std(0).min() > 10 * static.std(0).max()  # every channel now differs between samples
    assert batch_shaping_loss(gate_on_probability(g), 0.5, 0.5) < 0.5 * l_static
    with pytest.raises(ValueError, match="B >= 2"):
        batch_shaping_loss(torch.rand(1, 4), 0.5, 0.5)


@pytest.mark.parametrize("name,expected", [
    ("resnet56_cifar", (0.01, 1.0, 1.5e-4, 0.0)),
    ("vgg_cifar", (0.04, 1.0, 2e-4, 0.0)),
    ("googlenet_cifar", (0.006, 1.0, 5e-5, 0.0)),
    ("resnet18_imagenet", (0.005, 1.0, 0.01, 0.6)),
    ("vgg16_imagenet", (0.01, 1.0, 0.01, 0.5)),
    ("resnet56", (0.01, 1.0, 1.5e-4, 0.0)),
    ("resnet18", (0.005, 1.0, 0.01, 0.6)),
])
def test_presets(name, expected):
    c = preset(name)
    assert (c.lambda_mi, c.lambda_kl, c.lambda_s, c.target_ratio) == expected
    # the paper's objective: none of the recipe's additions
    assert (c.lambda_bs, c.lambda_rt, c.kl_reduction, c.mi_fit_head) == (0.0, 0.0, "sum", False)
    assert sorted(PRESETS) == list_presets()


def test_preset_errors_and_overrides():
    with pytest.raises(ValueError, match="unknown loss preset 'nope'.*resnet56_cifar"):
        preset("nope")
    assert preset("vgg_cifar", lambda_kl=0.5).lambda_kl == 0.5
    with pytest.raises(ValueError, match="target_ratio"):
        preset("vgg_cifar", target_ratio=2.0)
    with pytest.raises(ValueError, match="bad override"):
        preset("vgg_cifar", lambda_q=1.0)


@pytest.mark.parametrize("kwargs,field", [
    ({"target_ratio": -0.1}, "target_ratio"), ({"target_ratio": 1.01}, "target_ratio"),
    ({"lambda_mi": -1e-3}, "lambda_mi"), ({"lambda_kl": -1.0}, "lambda_kl"), ({"lambda_s": -1.0}, "lambda_s"),
    ({"lambda_s": float("nan")}, "lambda_s"), ({"eps": 0.0}, "eps"), ({"lambda_mi": "0.1"}, "lambda_mi"),
])
def test_invalid_config(kwargs, field):
    with pytest.raises(ValueError, match=f"LossConfig.{field}"):
        LossConfig(**kwargs)


def test_config_frozen():
    with pytest.raises(AttributeError):
        LossConfig().lambda_s = 1.0  # type: ignore[misc]


def test_model_without_gates_raises():
    with pytest.raises(ValueError, match="Tiny has no ArchitectureControl gates"):
        DecouplingLoss(Tiny(K), K)
    with pytest.raises(ValueError, match="num_classes"):
        DecouplingLoss(decouple(Tiny(K)), 0)


def test_missing_z_raises(model):
    crit = DecouplingLoss(model, K)
    with pytest.raises(ValueError, match="gate 'conv1_gate' has no z"):
        crit(LOGITS, LABELS)


def test_mismatched_shapes_raise(model):
    crit = DecouplingLoss(model, K)
    _set(model, [ZS[0], ZS[1][:, :4]], YS)
    with pytest.raises(ValueError, match=r"gate 'conv2_gate': z has shape \(2, 4\), expected \(2, 5\)"):
        crit(LOGITS, LABELS)
    _set(model, ZS, YS)
    with pytest.raises(ValueError, match=r"gate 'conv1_gate': z has shape \(2, 6\), expected \(3, 6\)"):
        crit(torch.zeros(3, K), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits must be \(B, 3\)"):
        crit(torch.zeros(2, K + 1), LABELS)
    with pytest.raises(ValueError, match=r"labels must be \(2,\)"):
        crit(LOGITS, LABELS[:1])


def test_bind_checks_layer_lists(model):
    crit = DecouplingLoss(model, K)
    other = decouple(Tiny(K))
    assert crit.bind(other).gate_paths == ["conv1_gate", "conv2_gate"]
    with pytest.raises(ValueError, match="gated layer lists differ"):
        crit.bind(decouple(Tiny(K), skip=["conv1"]))
    g = gates(other)
    with pytest.raises(ValueError, match="gate 'conv1_gate' has 7 channels"):
        crit.bind({"conv1_gate": ArchitectureControl(4, 7), "conv2_gate": g["conv2_gate"]})


def test_loss_parameters_are_classifiers_only(model):
    crit = DecouplingLoss(model, K)
    names = dict(crit.named_parameters())
    assert set(names) == {"classifiers.conv1_gate.weight", "classifiers.conv2_gate.weight"}
    assert names["classifiers.conv1_gate.weight"].shape == (K, 6)


@pytest.mark.parametrize("batch", [2, 5])
def test_gradient_reaches_gates_through_z(model, batch):
    torch.manual_seed(batch)
    model.train()
    crit = DecouplingLoss(model, K, preset("resnet56_cifar"))
    x = torch.randn(batch, 3, 8, 8)
    labels = torch.randint(0, K, (batch,))
    total, parts = crit(model(x), labels)
    for g in gates(model).values():
        assert g.z.requires_grad
    for path, g in gates(model).items():
        # mi and sparsity depend on the model only through z: a nonzero grad proves the path
        for part in ("mi", "sparsity", "kl"):
            (grad,) = torch.autograd.grad(parts[part], g.fc2.bias, retain_graph=True)
            assert torch.isfinite(grad).all(), (path, part)
            assert grad.abs().sum() > 0, (path, part)
        # R = 0: more open channels can only cost more
        (gs,) = torch.autograd.grad(parts["sparsity"], g.fc2.bias, retain_graph=True)
        assert (gs >= 0).all()
    total.backward()
    for lin in crit.classifiers.values():
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_free_ratio():
    from dyninfer.losses import free_ratio
    assert free_ratio(0.5, 10, 3) == pytest.approx(2 / 7)  # (0.5*10 - 3) / (10 - 3)
    assert free_ratio(0.5, 10, 0) == pytest.approx(0.5)
    assert free_ratio(0.5, 10, 5) == 0.5  # a core as large as R*N: no rate left, the neutral prior
    assert free_ratio(0.0, 10, 2) == 0.5  # R = 0 (learn freely)
    assert free_ratio(0.5, 4, 4) == 0.5  # every filter in the core


def test_static_core_is_left_out_of_batch_shaping_and_response_targets(model):
    """With a static core the two terms see only the other filters, at the rate free_ratio gives; the
    core filters' logit is the margin for every input and gets no gradient from the loss."""
    from dyninfer.losses import free_ratio
    torch.manual_seed(0)
    cfg = LossConfig(lambda_mi=0.0, lambda_kl=0.0, lambda_s=0.0, target_ratio=0.5)
    crit = DecouplingLoss(model, K, cfg)
    g1, g2 = gates(model).values()
    core = torch.tensor([True, False, True, False, False, False])
    g1.set_core(core)
    x, labels = torch.randn(8, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    logits = model.train()(x)
    assert torch.equal(g1.logits[:, core], torch.full((8, 2), 10.0))
    assert torch.equal(g1.z[:, core], torch.ones(8, 2))  # training noise never closes the core
    _, parts = crit(logits, labels)
    r1 = free_ratio(0.5, 6, 2)
    free = ~core
    bs = (batch_shaping_loss(gate_on_probability(g1.logits[:, free]), r1, 1 - r1)
          + batch_shaping_loss(gate_on_probability(g2.logits), 0.5, 0.5))
    rt = (F.binary_cross_entropy_with_logits(g1.logits[:, free], response_targets(g1.y_mean[:, free], r1))
          + F.binary_cross_entropy_with_logits(g2.logits, response_targets(g2.y_mean, 0.5)))
    assert parts["bs"].item() == pytest.approx(bs.item(), rel=1e-5)
    assert parts["rt"].item() == pytest.approx(rt.item(), rel=1e-5)
    total, _ = crit(model(x), labels)
    total.backward()
    assert torch.count_nonzero(g1.fc2.weight.grad[core]) == 0 and torch.count_nonzero(g1.fc2.bias.grad[core]) == 0
    assert torch.count_nonzero(g1.fc2.weight.grad[free]) > 0
    with torch.no_grad():  # an optimiser step with weight decay would move the core rows: apply_core restores them
        g1.fc2.weight.add_(0.5)
        g1.fc2.bias.sub_(1.0)
    g1.apply_core()
    assert torch.equal(g1.fc2.weight[core], torch.zeros(2, g1.fc2.in_features))
    assert torch.equal(g1.fc2.bias[core], torch.full((2,), 10.0))
    with pytest.raises(ValueError, match="mask of 6 channels"):
        g1.set_core(torch.ones(5, dtype=torch.bool))


def test_batch_budget_binds_the_mean_count_only():
    """budget="batch": L_s holds the batch's MEAN count at R·N (samples may keep 3 and 1 of 4 at
    R = 0.5), and L_rt's targets are the strongest (sample, channel) pairs of the whole batch."""
    z = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert sparsity_loss(z, 0.5).tolist() == [1.0, 1.0]  # per sample: 3 vs 2 and 1 vs 2
    assert sparsity_loss(z, 0.5, "batch").tolist() == [0.0]  # mean count 2 = R·N
    assert sparsity_loss(z, 0.25, "batch").tolist() == [1.0]
    y = torch.tensor([[5.0, 4.0, 3.0, 0.0], [2.0, 0.1, 0.2, 0.3]])
    assert response_targets(y, 0.5).tolist() == [[1, 1, 0, 0], [1, 0, 0, 1]]
    assert response_targets(y, 0.5, "batch").tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert response_targets(torch.zeros(2, 4), 0.5, "batch").sum().item() == 4  # ties: lower index, count kept
    with pytest.raises(ValueError, match="budget"):
        sparsity_loss(z, 0.5, "layer")
    with pytest.raises(ValueError, match="budget"):
        LossConfig(budget="layer")


def test_batch_budget_reaches_the_criterion(model):
    """DecouplingLoss with budget="batch" reports the batch form of L_s: |mean count − R·N| per gate."""
    crit = DecouplingLoss(model, K, LossConfig(lambda_bs=0.0, lambda_rt=0.0, target_ratio=0.5, budget="batch"))
    _set(model, ZS, YS)
    _, parts = crit(LOGITS, LABELS)
    hand = sum(abs(z.sum(dim=1).mean().item() - 0.5 * z.shape[1]) for z in ZS)
    assert parts["sparsity"].item() == pytest.approx(hand)
    per_sample = sum((z.sum(dim=1) - 0.5 * z.shape[1]).abs().mean().item() for z in ZS)
    assert hand != pytest.approx(per_sample)  # the hand-made gates make the two forms differ


def test_difficulty_budget_asks_hard_samples_to_keep_more():
    """budget="difficulty": ratios ranked by per-sample cross-entropy, mean R, the hardest sample
    R·(1 + 0.5); per-sample response targets keep round(R_i·N) channels."""
    from dyninfer.losses import difficulty_ratios
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [1.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])  # CE: tiny, large, middling, ln 2
    r = difficulty_ratios(logits, labels, 0.5)
    assert r.tolist() == pytest.approx([0.25, 0.75, 0.5 * (1 + 0.5 * (2 * 1 / 3 - 1)), 0.5 * (1 + 0.5 * (2 * 2 / 3 - 1))])
    assert r.mean().item() == pytest.approx(0.5)
    y = torch.tensor([[4.0, 3.0, 2.0, 1.0]]).expand(4, 4)
    assert response_targets(y, torch.tensor([0.25, 0.75, 0.5, 1.0])).sum(1).tolist() == [1, 3, 2, 4]
    assert sparsity_loss(torch.ones(2, 4), torch.tensor([0.25, 1.0])).tolist() == [3.0, 0.0]


def test_difficulty_budget_runs_in_the_criterion(model):
    crit = DecouplingLoss(model, K, LossConfig(target_ratio=0.5, budget="difficulty"))
    _set(model, ZS, YS)
    total, parts = crit(LOGITS, LABELS)
    assert torch.isfinite(total) and parts["rt"].item() > 0
    crit_sample = DecouplingLoss(model, K, LossConfig(target_ratio=0.5))
    _, parts_sample = crit_sample(LOGITS, LABELS)
    assert parts["sparsity"].item() != pytest.approx(parts_sample["sparsity"].item())
