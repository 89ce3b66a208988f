"""Decoupling losses (paper Eq. 9-12), summed over the gated layers l of a model:

    L    = L_ce + λm·L_mi + λk·L_kl + λs·L_s                       (Eq. 12)
    L_mi = Σ_l CE(W_cla^l · z^l, label)                           (Eq. 9)   W_cla^l: K × N^l, no bias
    L_kl = Σ_l KL(p(z^l) || q(y^l)),  y^l = GAP of the unit output  (Eq. 10)
    L_s  = Σ_l | ||z^l||_1 − R·N^l |                               (Eq. 11)
    L_bs = Σ_l mean_c mean_i (i/(B+1) − F_Beta(p_(i),c))²          batch-shaping (Bejnordi et al., ICLR 2020)

Every per-sample quantity is averaged over the batch; layers are summed, not averaged.

Two settings of the terms exist (``LossConfig``):

* The **dynamic recipe** (``LossConfig()``'s defaults, what ``dyninfer train --gated`` uses). The
  paper's objective alone admits a static mask: L_s is a per-sample L1 averaged over the batch,
  which one fixed mask with R·N channels satisfies exactly, and L_mi is content with a fixed mask
  plus a few switching filters (measured: 1.9% of the filters dynamic in a digits ResNet-56 trained
  with it). The recipe adds two terms
  that a static mask cannot satisfy:
  - **response targets** L_rt (λrt = 1): per sample, each gate's logits are fit (binary
    cross-entropy) to "this channel is among the round(R·N) strongest responses (GAP of the unit's
    output before gating, detached) of THIS input". The targets change with the input, so the
    gates learn per-input decisions that keep the channels each input actually uses (Elkerdawy et
    al. 2022 give each sample its own target from the dense layer's responses; this is the hard,
    per-sample form of what L_kl asks, so the recipe sets λk = 0);
  - **batch-shaping** L_bs (λbs = 1, annealed to 0 over the first 75% of the epochs by the training
    loop, as Bejnordi et al. anneal it): for each gate c of a layer, the on-probabilities
    p_c = Φ(g_c) of the B samples of a batch (Φ the normal CDF: the chance that the training-time
    noisy gate g + α, α ~ N(0, 1), opens) are sorted, and their empirical CDF is matched to a
    U-shaped Beta(R, 1 − R) prior. A gate that is always on or always off pays ≈ (1 − R)² / 3 or R² / 3
    per channel; one that is decisively on for a share R of the samples pays ≈ 0. Its gradient is
    the Beta pdf (clipped to [1e-3, 100] where it diverges at 0 and 1, as in the reference code).
  The auxiliary classifiers W_cla of L_mi are fit at full weight and λm = 0.05 scales only their
  pull on the gates (``mi_fit_head``). Gates start input-dependent (``TrainConfig.gate_init``).
* The **paper presets** (``PRESETS``: the hyper-parameters published with the reference code,
  no batch-shaping or response targets, KL summed over channels).

KL reduction (``kl_reduction``): "sum" is Σ_c p log(p/q) per sample, a proper KL between the two
normalised vectors; summed over the 54 layers of ResNet-56 it is 50–80 at the start of training and
its gradient swamps L_ce (measured: λk ≥ 0.1 made accuracy collapse on digits). "mean" divides each
layer's KL by N^l, which is what the reference code's ``F.kl_div(..., reduction='mean')`` does
(it averages over batch × channels): the term then stays O(1) summed over layers and λk = 1 is usable.

The module reads the gate decisions ``z`` (B, N) and ``y_mean`` (B, N) that every
ArchitectureControl stores during the model's forward, so the usual step is::

    crit = DecouplingLoss(model, num_classes=10, config=preset("resnet56_cifar"))
    optimizer = SGD([*model.parameters(), *crit.parameters()], ...)   # W_cla^l are trainable
    logits = model(x)
    total, parts = crit(logits, labels)

Normalisation of the KL term (the paper leaves it open; chosen here and why):

* z side: p = z / (Σ_c z_c + eps). z ≥ 0 already (SemHash outputs lie in [0, 1]), so the
  normalised decision vector is "which share of the selected channels is channel c". A sample
  whose gate closed every channel has p = 0 and contributes KL = 0 (0·log 0 = 0): its layer is
  skipped and only L_s sees it, rather than dividing by zero.
* y side: q = relu(y) / (Σ_c relu(y_c) + eps). Units whose gate follows a ReLU have y ≥ 0;
  the second conv of a residual block is gated after BN, before the addition, so its channel
  means can be negative. A negative mean says the channel contributes nothing positive, so it
  gets share 0. relu-normalisation is scale-invariant like the z side (a softmax is not: its
  result depends on the arbitrary scale of BN outputs and is nearly uniform for O(1) means).
* KL(p || q) = Σ_c p_c · (log(p_c + eps) − log(q_c + eps)). The eps inside the logs keeps both
  the value and the gradient finite at p_c = 0 (exact zeros are common: hard SemHash samples
  and the clamp of the saturating sigmoid), where d/dp [p log p] would be −inf, and at q_c = 0.
* Gradients flow into both z (the gate) and y (the unit's conv/BN): the loss asks the gate to
  choose the channels that respond strongly and the channels to respond where they are chosen.

R = 0 ("learn freely"): the same Eq. 11 formula with R = 0. Since z ≥ 0, |‖z‖₁ − 0| = ‖z‖₁,
so L_s becomes plain L1 sparsity pressure Σ_l mean_b ‖z^l‖₁, *not* divided by N^l: the published
λs (1.5e-4 for ResNet-56 etc.) were tuned for that unnormalised sum, and dividing by N^l would
weaken the pressure 16-64× on CIFAR widths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn.decouple import gates as _gates
from .nn.gates import ArchitectureControl

__all__ = ["LossConfig", "DecouplingLoss", "BUDGETS", "difficulty_ratios", "PRESETS", "preset", "list_presets", "kl_z_y", "sparsity_loss", "free_ratio", "response_targets",
           "batch_shaping_loss", "beta_cdf", "gate_on_probability"]


BUDGETS = ("sample", "batch", "difficulty")
DIFFICULTY_SPREAD = 0.5  # budget "difficulty": per-sample ratios span R·(1 ± this)


def difficulty_ratios(logits: Tensor, labels: Tensor, target_ratio: float, spread: float = DIFFICULTY_SPREAD) -> Tensor:
    """(B,) per-sample keep ratios with mean R: samples ranked by their cross-entropy (detached;
    ties by index), the easiest R·(1 − spread), the hardest R·(1 + spread), linear in the rank,
    clamped to [0, 1]."""
    b = logits.shape[0]
    ce = F.cross_entropy(logits.detach().float(), labels, reduction="none")
    rank = torch.empty(b, device=logits.device, dtype=torch.float32)
    rank[torch.sort(ce, stable=True).indices] = torch.arange(b, device=logits.device, dtype=torch.float32)
    pos = 2.0 * rank / max(b - 1, 1) - 1.0 if b > 1 else torch.zeros_like(rank)
    return (target_ratio * (1.0 + spread * pos)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class LossConfig:
    """Weights of Eq. 12, the target keep ratio of Eq. 11 and the batch-shaping term.

    lambda_mi: λm, weight of L_mi.   lambda_kl: λk, weight of L_kl.   lambda_s: λs, weight of L_s.
    lambda_bs: weight of batch-shaping L_bs (0: off, the paper's objective).
    target_ratio: R in [0, 1]; 0 means "learn freely" (plain L1 pressure, see module docstring).
        Batch-shaping's prior is Beta(R, 1 − R) (mean R); with R = 0 it uses Beta(0.5, 0.5).
    kl_reduction: "mean" (KL / N^l per layer, the reference code's reduction) or "sum".
    lambda_rt: weight of the response-target term L_rt: per sample, the gate logits are fit (binary
        cross-entropy) to "this channel is among the round(R·N) strongest of this sample's unit output"
        (GAP of the unit before gating, detached), per-sample targets from the layer's own responses
        as in Elkerdawy et al. 2022; a hard, per-sample form of what L_kl asks.
    mi_fit_head: True: each W_cla^l is fit with weight 1 while λm scales only the gradient that L_mi
        sends into the gates. W_cla is an estimator of how much the path tells about the label;
        scaling its own gradient by λm = 0.01 slows that estimator a hundredfold, and a head near
        chance gives the gates no signal. False: the paper's λm·L_mi on both.
    budget: where the keep ratio R binds. "sample": every sample keeps R·N^l filters per layer (Eq. 11
        per sample, and L_rt's targets are each sample's top round(R·N^l)), the paper's form. "batch":
        R binds the batch mean (L_s on the batch's mean count, L_rt's targets the top round(R·N^l·B)
        responses of the whole batch), so an input with more to compute may keep more filters and
        another fewer, at the same mean cost: the per-input allocation that one static mask cannot make.
        "difficulty": per-sample ratios from the task loss: the batch's samples ranked by their
        cross-entropy (detached), R_i = R·(1 + s·(2·rank_i/(B − 1) − 1)) with s = DIFFICULTY_SPREAD,
        mean R, so the inputs the model finds hard are asked to keep more filters (L_s and L_rt per
        sample at R_i); the gates must learn to tell them from their inputs.
    eps: smoothing of the KL normalisation and logs (see module docstring); must be > 0.

    The defaults are the dynamic recipe (module docstring), R = 0.5. Where the values come from:
    λs = 0.02 with R = 0.5 held the density at R on digits (the earlier shipped model); λbs = 1 is
    the scale of Bejnordi et al.'s γ (0.75) for a loss averaged, not summed, over gates; λrt = 1
    makes L_rt (a mean BCE per layer, ≈ 0.5 each) about as large as L_ce early in fine-tuning;
    λm = 0.05 sits between the reference code's 0.01 (ResNet-56) and 0.04 (VGG). The choice among
    variants is what benchmarks/recipe_ablation.py trains side by side.
    """

    lambda_mi: float = 0.05
    lambda_kl: float = 0.0
    lambda_s: float = 0.02
    lambda_bs: float = 1.0
    target_ratio: float = 0.5
    kl_reduction: str = "mean"
    mi_fit_head: bool = True
    lambda_rt: float = 1.0
    budget: str = "sample"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("lambda_mi", "lambda_kl", "lambda_s", "lambda_bs", "lambda_rt", "target_ratio", "eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"LossConfig.{name}: expected a number, got {v!r} ({type(v).__name__})")
            if not math.isfinite(v):
                raise ValueError(f"LossConfig.{name}: must be finite, got {v}")
        for name in ("lambda_mi", "lambda_kl", "lambda_s", "lambda_bs", "lambda_rt"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name}: loss weights must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.target_ratio <= 1.0:
            raise ValueError(f"LossConfig.target_ratio: R must lie in [0, 1], got {self.target_ratio}")
        if self.eps <= 0:
            raise ValueError(f"LossConfig.eps: must be > 0, got {self.eps}")
        if not isinstance(self.mi_fit_head, bool):
            raise ValueError(f"LossConfig.mi_fit_head: expected a bool, got {self.mi_fit_head!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"LossConfig.budget: one of {BUDGETS}, got {self.budget!r}")
        if self.kl_reduction not in ("mean", "sum"):
            raise ValueError(f"LossConfig.kl_reduction: 'mean' or 'sum', got {self.kl_reduction!r}")

    @property
    def prior(self) -> tuple[float, float]:
        """(a, b) of batch-shaping's Beta prior: Beta(R, 1 − R), or Beta(0.5, 0.5) when R is 0 or 1."""
        r = self.target_ratio if 0.0 < self.target_ratio < 1.0 else 0.5
        return r, 1.0 - r


# Hyper-parameters published with the reference code (its README): the paper's objective, no
# batch-shaping, KL summed over channels. Where λk is not published (every setting except
# ResNet-56) it is 1.0, the ResNet-56 value. The CIFAR settings publish no R: they train with
# R = 0 (learn freely).
_PAPER = dict(lambda_bs=0.0, lambda_rt=0.0, kl_reduction="sum", mi_fit_head=False)
PRESETS: dict[str, LossConfig] = {
    "resnet56_cifar": LossConfig(lambda_mi=0.01, lambda_kl=1.0, lambda_s=1.5e-4, target_ratio=0.0, **_PAPER),
    "vgg_cifar": LossConfig(lambda_mi=0.04, lambda_kl=1.0, lambda_s=2e-4, target_ratio=0.0, **_PAPER),  # λk not published
    "googlenet_cifar": LossConfig(lambda_mi=0.006, lambda_kl=1.0, lambda_s=5e-5, target_ratio=0.0, **_PAPER),
    # λk not published for the two ImageNet settings either
    "resnet18_imagenet": LossConfig(lambda_mi=0.005, lambda_kl=1.0, lambda_s=0.01, target_ratio=0.6, **_PAPER),
    "vgg16_imagenet": LossConfig(lambda_mi=0.01, lambda_kl=1.0, lambda_s=0.01, target_ratio=0.5, **_PAPER),
    # the dynamic recipe (LossConfig's defaults), by name
    "dynamic": LossConfig(),
}

# Registry model names -> the preset published for that architecture (CIFAR ResNets of other
# depths use the ResNet-56 setting).
_MODEL_ALIASES = {
    "resnet20": "resnet56_cifar",
    "resnet32": "resnet56_cifar",
    "resnet56": "resnet56_cifar",
    "resnet110": "resnet56_cifar",
    "vgg16_cifar": "vgg_cifar",
    "resnet18": "resnet18_imagenet",
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def preset(name: str, **overrides: float) -> LossConfig:
    """Published LossConfig by preset name (see PRESETS) or registry model name, e.g.
    ``preset("resnet56")``; keyword overrides replace fields (and are validated)."""
    key = _MODEL_ALIASES.get(name, name)
    if key not in PRESETS:
        raise ValueError(f"unknown loss preset '{name}'; presets: {', '.join(list_presets())}; "
                         f"model names: {', '.join(sorted(_MODEL_ALIASES))}")
    try:
        return replace(PRESETS[key], **overrides)
    except TypeError as exc:  # unknown field name
        raise ValueError(f"preset('{name}'): bad override {sorted(overrides)}: {exc}") from None


def kl_z_y(z: Tensor, y_mean: Tensor, eps: float = 1e-6) -> Tensor:
    """(B,) KL(p || q) per sample with p = z/(Σz+eps), q = relu(y)/(Σrelu(y)+eps)  (Eq. 10)."""
    p = z / (z.sum(dim=1, keepdim=True) + eps)  # (B, N)
    y = F.relu(y_mean)
    q = y / (y.sum(dim=1, keepdim=True) + eps)  # (B, N)
    return (p * (torch.log(p + eps) - torch.log(q + eps))).sum(dim=1)


def gate_on_probability(logits: Tensor) -> Tensor:
    """Φ(g): the probability that a gate with logit g opens under training's noise α ~ N(0, 1)."""
    return torch.special.ndtr(logits)


class _BetaCDF(torch.autograd.Function):
    """F_Beta(x; a, b) with gradient pdf(x), clipped to [1e-3, 100] (scipy evaluates both)."""

    @staticmethod
    def forward(ctx, x: Tensor, a: float, b: float) -> Tensor:
        from scipy import special, stats

        xs = x.detach().to(torch.float64).cpu().numpy()
        cdf = torch.from_numpy(special.betainc(a, b, xs)).to(dtype=x.dtype, device=x.device)
        pdf = torch.from_numpy(stats.beta.pdf(xs, a, b)).clamp_(1e-3, 100.0)
        ctx.save_for_backward(pdf.to(dtype=x.dtype, device=x.device))
        return cdf

    @staticmethod
    def backward(ctx, grad: Tensor):
        (pdf,) = ctx.saved_tensors
        return grad * pdf, None, None


def beta_cdf(x: Tensor, a: float, b: float) -> Tensor:
    """Differentiable CDF of Beta(a, b) at x in [0, 1]."""
    return _BetaCDF.apply(x, float(a), float(b))


def batch_shaping_loss(p: Tensor, a: float, b: float) -> Tensor:
    """Batch-shaping (Bejnordi et al., ICLR 2020) of gate on-probabilities p (B, N), in [0, 1]:
    per channel, the squared distance between the batch's empirical CDF and the Beta(a, b) CDF at
    the sorted values, averaged over the B samples and N channels. Needs B >= 2."""
    if p.dim() != 2 or p.shape[0] < 2:
        raise ValueError(f"batch_shaping_loss: expected (B >= 2, N) probabilities, got {tuple(p.shape)}")
    bsz = p.shape[0]
    sorted_p = torch.sort(p, dim=0).values  # (B, N) ascending per channel
    ecdf = torch.arange(1, bsz + 1, dtype=p.dtype, device=p.device).div_(bsz + 1).unsqueeze(1)  # (B, 1)
    return (ecdf - beta_cdf(sorted_p, a, b)).pow(2).mean()


def response_targets(y_mean: Tensor, keep: float | Tensor, budget: str = "sample") -> Tensor:
    """(B, N) 0/1 targets from the GAP responses y_mean (ties to the lower index). budget "sample":
    per sample, its round(keep·N) strongest channels (at least 1); "batch": the round(keep·N·B)
    strongest (sample, channel) pairs of the whole batch, so samples may keep different counts."""
    y = y_mean.detach()
    if budget == "batch":
        k = max(1, int(round(keep * y.numel())))
        idx = torch.sort(y.reshape(-1), descending=True, stable=True).indices[:k]
        return torch.zeros_like(y_mean).reshape(-1).scatter_(0, idx, 1.0).reshape(y_mean.shape)
    if budget != "sample":
        raise ValueError(f"response_targets: budget must be 'sample' or 'batch', got {budget!r}")
    n = y.shape[1]
    if torch.is_tensor(keep):  # (B,) per-sample ratios: sample i keeps its round(keep_i·N) strongest
        k = torch.round(keep.to(y.dtype) * n).clamp(1, n).unsqueeze(1)  # (B, 1)
        order = torch.sort(y, dim=1, descending=True, stable=True).indices
        ranks = torch.arange(n, device=y.device, dtype=y.dtype).expand_as(y)
        return torch.zeros_like(y_mean).scatter_(1, order, (ranks < k).to(y_mean.dtype))
    k = max(1, int(round(keep * n)))
    idx = torch.sort(y, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(y_mean).scatter_(1, idx, 1.0)


def free_ratio(target_ratio: float, channels: int, core: int) -> float:
    """The firing rate r' that the N − n_core filters outside a static core of n_core need for the
    layer to keep a share R of its N filters on average: (R·N − n_core) / (N − n_core). Outside
    (0, 1) (R = 0, "learn freely", or a core as large as R·N) it is 0.5, as ``LossConfig.prior``."""
    free = channels - core
    r = (target_ratio * channels - core) / free if free > 0 else 0.5
    return r if 0.0 < r < 1.0 else 0.5


def sparsity_loss(z: Tensor, target_ratio: float | Tensor, budget: str = "sample") -> Tensor:
    """| ||z||_1 − R·N |: (B,) per sample (Eq. 11; R may be a (B,) tensor of per-sample ratios), or
    with budget "batch" (1,) on the batch's mean ||z||_1, so that only the mean count is held at R·N;
    R = 0 gives ||z||_1."""
    counts = z.sum(dim=1)
    if budget == "batch":
        counts = counts.mean().reshape(1)
    elif budget != "sample":
        raise ValueError(f"sparsity_loss: budget must be 'sample' or 'batch', got {budget!r}")
    return (counts - target_ratio * z.shape[1]).abs()


def _key(path: str) -> str:
    return path.replace(".", "/")  # nn.ModuleDict keys may not contain '.'


class DecouplingLoss(nn.Module):
    """L = L_ce + λm·L_mi + λk·L_kl + λs·L_s (Eq. 12) over the gates of ``model``.

    ``model`` is a decoupled model (or a mapping {gate path: ArchitectureControl}). The loss holds
    one trainable W_cla^l (nn.Linear(N^l, num_classes, bias=False)) per gate in ``classifiers``,
    keyed by the gate path with '.' replaced by '/'. ``forward(logits, labels)`` returns
    ``(total, parts)`` with parts = {'ce', 'mi', 'kl', 'sparsity', 'bs'}: the *unweighted* terms
    (scalars with autograd graph), so total = ce + λm·mi + λk·kl + λs·sparsity + λbs·bs.
    """

    def __init__(self, model: nn.Module | Mapping[str, ArchitectureControl], num_classes: int,
                 config: LossConfig | None = None):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"DecouplingLoss: num_classes must be a positive int, got {num_classes!r}")
        if config is None:
            config = LossConfig()
        if not isinstance(config, LossConfig):
            raise ValueError(f"DecouplingLoss: config must be a LossConfig, got {type(config).__name__}")
        self.config = config
        # multiplies lambda_bs; the training loop anneals it (TrainConfig.bs_decay)
        self.bs_scale = 1.0
        self.rt_scale = 1.0  # multiplies lambda_rt (TrainConfig.rt_decay)
        # multiplies every term but L_ce; 0 skips them (TrainConfig.freeze_gates_from)
        self.aux_scale = 1.0
        self.num_classes = num_classes
        gate_map = self._collect(model)
        self.classifiers = nn.ModuleDict()
        for path, g in gate_map.items():
            key = _key(path)
            if key in self.classifiers:
                raise ValueError(f"DecouplingLoss: gate paths collide after '.'->'/' mapping: '{path}'")
            lin = nn.Linear(g.out_channels, num_classes, bias=False)
            lin.to(device=g.fc2.weight.device, dtype=g.fc2.weight.dtype)
            self.classifiers[key] = lin
        self._gates: dict[str, ArchitectureControl] = gate_map  # plain dict: not submodules

    @staticmethod
    def _collect(model: nn.Module | Mapping[str, ArchitectureControl]) -> dict[str, ArchitectureControl]:
        if isinstance(model, nn.Module):
            found = _gates(model)
            what = type(model).__name__
        elif isinstance(model, Mapping):
            found = dict(model)
            what = "gate mapping"
        else:
            raise ValueError(f"DecouplingLoss: expected a model or a {{path: gate}} mapping, "
                             f"got {type(model).__name__}")
        if not found:
            raise ValueError(f"DecouplingLoss: {what} has no ArchitectureControl gates; decouple() it first")
        for path, g in found.items():
            if not isinstance(g, ArchitectureControl):
                raise ValueError(f"DecouplingLoss: '{path}' is a {type(g).__name__}, not an ArchitectureControl")
        return found

    @property
    def gate_paths(self) -> list[str]:
        return list(self._gates)

    def bind(self, model: nn.Module | Mapping[str, ArchitectureControl]) -> "DecouplingLoss":
        """Read gates from another model instance (e.g. after rebuilding it); its gate paths and
        widths must match the classifiers exactly."""
        gate_map = self._collect(model)
        mine = {p: c.in_features for p, c in zip(self._gates, self.classifiers.values())}
        theirs = {p: g.out_channels for p, g in gate_map.items()}
        if list(mine) != list(theirs):
            missing = [p for p in mine if p not in theirs]
            extra = [p for p in theirs if p not in mine]
            raise ValueError(f"DecouplingLoss.bind: gated layer lists differ (missing {missing}, unexpected {extra}, "
                             f"or a different order)")
        for p in mine:
            if mine[p] != theirs[p]:
                raise ValueError(f"DecouplingLoss.bind: gate '{p}' has {theirs[p]} channels, "
                                 f"the loss was built for {mine[p]}")
        self._gates = gate_map
        return self

    def _checked(self, path: str, g: ArchitectureControl, batch: int) -> tuple[Tensor, Tensor]:
        if g.z is None or g.y_mean is None:
            missing = "z" if g.z is None else "y_mean"
            raise ValueError(f"DecouplingLoss: gate '{path}' has no {missing}; run the model forward "
                             f"(with the unit output) before the loss")
        n = self.classifiers[_key(path)].in_features
        for name, t in (("z", g.z), ("y_mean", g.y_mean)):
            if t.shape != (batch, n):
                raise ValueError(f"DecouplingLoss: gate '{path}': {name} has shape {tuple(t.shape)}, "
                                 f"expected ({batch}, {n}) (batch of the logits, channels of the gate)")
        return g.z.float(), g.y_mean.float()  # float32 under bf16 autocast too

    def forward(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"DecouplingLoss: logits must be (B, {self.num_classes}), got {tuple(logits.shape)}")
        b = logits.shape[0]
        if labels.shape != (b,):
            raise ValueError(f"DecouplingLoss: labels must be ({b},), got {tuple(labels.shape)}")
        cfg = self.config
        logits = logits.float()
        ce = F.cross_entropy(logits, labels)  # L_ce, batch mean
        mi = logits.new_zeros(())
        kl = logits.new_zeros(())
        sp = logits.new_zeros(())
        bs = logits.new_zeros(())
        rt = logits.new_zeros(())
        if self.aux_scale == 0:
            return ce, {"ce": ce, "mi": mi, "kl": kl, "sparsity": sp, "bs": bs, "rt": rt}
        lambda_bs = cfg.lambda_bs * self.bs_scale
        lambda_rt = cfg.lambda_rt * self.rt_scale
        shaping = lambda_bs > 0 and b >= 2
        head_fit = logits.new_zeros(())  # L_mi with z detached: W_cla's own objective (mi_fit_head)
        budget, ratio = cfg.budget, cfg.target_ratio
        if budget == "difficulty":  # per-sample ratios, then the per-sample forms of L_s and L_rt
            budget, ratio = "sample", difficulty_ratios(logits, labels, cfg.target_ratio)
        for path, g in self._gates.items():
            if g.static:  # a constant mask (freeze_static): no term depends on anything trainable
                continue
            z, y_mean = self._checked(path, g, b)  # (B, N^l) each
            head = self.classifiers[_key(path)]
            if cfg.mi_fit_head:
                head_fit = head_fit + F.cross_entropy(head(z.detach()), labels)
                mi = mi + F.cross_entropy(F.linear(z, head.weight.detach()), labels)  # Eq. 9, gradient into z only
            else:
                mi = mi + F.cross_entropy(head(z), labels)  # Eq. 9
            layer_kl = kl_z_y(z, y_mean, cfg.eps).mean()  # Eq. 10
            kl = kl + (layer_kl / z.shape[1] if cfg.kl_reduction == "mean" else layer_kl)
            sp = sp + sparsity_loss(z, ratio, budget).mean()  # Eq. 11
            if shaping or lambda_rt > 0:
                # a static core (ArchitectureControl.set_core) is on for every input: batch-shaping and
                # the response targets see only the other filters, at the rate that keeps R overall
                g_logits, y_free, r = g.logits.float(), y_mean, cfg.prior[0]
                if g.core is not None:
                    free = ~g.core
                    if not bool(free.any()):
                        continue
                    g_logits, y_free = g_logits[:, free], y_mean[:, free]
                    r = free_ratio(cfg.target_ratio, g.out_channels, int(g.core.sum()))
                if shaping:
                    bs = bs + batch_shaping_loss(gate_on_probability(g_logits), r, 1.0 - r)
                if lambda_rt > 0:
                    keep = r
                    if torch.is_tensor(ratio):  # the free filters' per-sample rate for each R_i
                        n_core = int(g.core.sum()) if g.core is not None else 0
                        keep = ((ratio * g.out_channels - n_core) / max(g.out_channels - n_core, 1)).clamp(0.0, 1.0)
                    rt = rt + F.binary_cross_entropy_with_logits(g_logits, response_targets(y_free, keep, budget))
        total = ce + self.aux_scale * (cfg.lambda_mi * mi + cfg.lambda_kl * kl + cfg.lambda_s * sp + lambda_bs * bs
                                       + lambda_rt * rt)  # Eq. 12 + L_bs + L_rt
        if cfg.mi_fit_head:
            total = total + (head_fit - head_fit.detach())  # adds W_cla's gradient, not its value
        return total, {"ce": ce, "mi": mi, "kl": kl, "sparsity": sp, "bs": bs, "rt": rt}

    def extra_repr(self) -> str:
        c = self.config
        return (f"gates={len(self._gates)}, num_classes={self.num_classes}, lambda_mi={c.lambda_mi}, "
                f"lambda_kl={c.lambda_kl} ({c.kl_reduction}), lambda_s={c.lambda_s}, lambda_bs={c.lambda_bs}, "
                f"R={c.target_ratio}")
