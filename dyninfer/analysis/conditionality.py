"""Conditionality: how much the calculation paths of a gated model depend on its input.

A gated model that keeps the same filters for every input is a static channel pruner with gate
overhead; these figures say whether it is more than that. From the paths of a data split
(``PathSet``, bits (N, D) over the D gated filters):

* ``firing_rate`` (D,): the share of inputs for which each filter is on, and its ``histogram``
  (10 bins over [0, 1]);
* ``dynamic_share``: the share of filters whose firing rate lies within [0.05, 0.95] (bounds
  ``low`` / ``high``); the others are near-always on or near-always off;
* ``path_entropy``: Σ_d H(rate_d) in bits, H the binary entropy: the entropy of a path if its bits
  were independent (an upper bound of the true path entropy); ``path_entropy_per_filter`` is its
  mean, 0 for a static model and 1 when every filter is a fair coin;
* ``hamming_same`` / ``hamming_diff``: the mean Hamming distance, as a share of the D bits, between
  the paths of two different inputs of the same class, and of different classes (all pairs,
  computed exactly from per-class bit counts: Σ_d n1·n0 over a group is the sum of its pairwise
  distances in bit d);
* ``class_density``: the mean density (kept / gated filters) of each class's paths;
* ``static_accuracy``: the accuracy when every input is forced onto ONE static path of the same
  per-layer density: in each gated layer l, the round(density_l · N_l) filters with the highest
  firing rates (ties to the lower index). ``static_drop`` = accuracy − static_accuracy, in points:
  what the per-input paths are worth.

    c = conditionality(model, images, labels)        # paths + static-path accuracy (2 passes)
    c = path_conditionality(path_set)                 # from paths alone (no static accuracy)
    print(c.summary()); c.to_json()
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from .paths import PathSet, collect_paths

__all__ = ["Conditionality", "path_conditionality", "conditionality", "static_path_masks", "static_accuracy",
           "DYNAMIC_LOW", "DYNAMIC_HIGH"]

DYNAMIC_LOW = 0.05
DYNAMIC_HIGH = 0.95


@dataclass
class Conditionality:
    num_inputs: int
    gate_names: list[str]
    gate_sizes: list[int]
    firing_rate: Tensor  # (D,) float64
    histogram: list[int]  # 10 bins over [0, 1]
    dynamic_share: float
    always_on_share: float  # rate > high
    always_off_share: float  # rate < low
    path_entropy: float  # bits per path (independent-bits bound)
    path_entropy_per_filter: float
    hamming_same: float  # share of the D bits
    hamming_diff: float
    density: float
    class_density: dict[int, float]
    layer_density: dict[str, float]
    layer_dynamic_share: dict[str, float]
    accuracy: float
    static_accuracy: float | None = None
    low: float = DYNAMIC_LOW
    high: float = DYNAMIC_HIGH

    @property
    def static_drop(self) -> float | None:
        """accuracy − static_accuracy in points (None without a static accuracy)."""
        if self.static_accuracy is None:
            return None
        return 100.0 * (self.accuracy - self.static_accuracy)

    def headline(self) -> dict[str, float | None]:
        """The figures training logs print every epoch and checkpoints store."""
        return {"dynamic_share": self.dynamic_share, "path_entropy_per_filter": self.path_entropy_per_filter,
                "hamming_same": self.hamming_same, "hamming_diff": self.hamming_diff,
                "static_accuracy": self.static_accuracy, "static_drop": self.static_drop}

    def summary(self) -> str:
        s = (f"dynamic filters {100 * self.dynamic_share:.1f}% (rate in [{self.low}, {self.high}]; always on "
             f"{100 * self.always_on_share:.1f}%, always off {100 * self.always_off_share:.1f}%), path entropy "
             f"{self.path_entropy_per_filter:.3f} bits/filter ({self.path_entropy:.0f} bits/path), Hamming same "
             f"class {100 * self.hamming_same:.1f}% / other class {100 * self.hamming_diff:.1f}% of bits, density "
             f"{self.density:.3f}, accuracy {100 * self.accuracy:.2f}%")
        if self.static_accuracy is not None:
            s += f", static majority path {100 * self.static_accuracy:.2f}% ({self.static_drop:+.2f} points for paths)"
        return s

    def to_json(self) -> dict[str, Any]:
        return {"num_inputs": self.num_inputs, "dynamic_share": self.dynamic_share,
                "always_on_share": self.always_on_share, "always_off_share": self.always_off_share,
                "bounds": [self.low, self.high], "histogram": self.histogram,
                "histogram_edges": [i / 10 for i in range(11)], "path_entropy": self.path_entropy,
                "path_entropy_per_filter": self.path_entropy_per_filter, "hamming_same": self.hamming_same,
                "hamming_diff": self.hamming_diff, "density": self.density,
                "class_density": {str(k): v for k, v in self.class_density.items()},
                "layer_density": self.layer_density, "layer_dynamic_share": self.layer_dynamic_share,
                "accuracy": self.accuracy, "static_accuracy": self.static_accuracy, "static_drop": self.static_drop}


def _binary_entropy(p: Tensor) -> Tensor:
    """H(p) in bits, 0 at p in {0, 1}."""
    q = 1.0 - p
    return -(torch.xlogy(p, p) + torch.xlogy(q, q)) / math.log(2.0)


def _pair_distance_sum(bits: Tensor) -> float:
    """Σ over unordered pairs of rows of their Hamming distance, = Σ_d n1_d · n0_d."""
    n1 = bits.sum(0, dtype=torch.float64)
    return float((n1 * (bits.shape[0] - n1)).sum())


def path_conditionality(ps: PathSet, low: float = DYNAMIC_LOW, high: float = DYNAMIC_HIGH) -> Conditionality:
    """Every figure of the module docstring except the static-path accuracy, from paths alone."""
    if len(ps) == 0:
        raise ValueError("path_conditionality: the path set is empty")
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"path_conditionality: need 0 <= low <= high <= 1, got low={low}, high={high}")
    n, d = ps.paths.shape
    bits = ps.paths.to(torch.float64)  # (N, D)
    rate = bits.mean(0)  # (D,)
    dynamic = (rate >= low) & (rate <= high)
    hist = torch.histc(rate, bins=10, min=0.0, max=1.0).to(torch.int64).tolist()
    entropy = _binary_entropy(rate)
    # pairwise Hamming distances, same class vs other classes (labels < 0 are left out)
    known = ps.labels >= 0
    kb, kl = bits[known], ps.labels[known]
    classes = sorted(set(kl.tolist()))
    total_pairs = kb.shape[0] * (kb.shape[0] - 1) / 2
    total_sum = _pair_distance_sum(kb) if kb.shape[0] > 1 else 0.0
    same_sum = same_pairs = 0.0
    class_density = {}
    for c in classes:
        cb = kb[kl == c]
        class_density[int(c)] = float(cb.mean())
        same_pairs += cb.shape[0] * (cb.shape[0] - 1) / 2
        same_sum += _pair_distance_sum(cb) if cb.shape[0] > 1 else 0.0
    diff_pairs = total_pairs - same_pairs
    nan = float("nan")
    hamming_same = same_sum / (same_pairs * d) if same_pairs else nan
    hamming_diff = (total_sum - same_sum) / (diff_pairs * d) if diff_pairs else nan
    layer_density, layer_dynamic = {}, {}
    offset = 0
    for name, size in zip(ps.gate_names, ps.gate_sizes):
        layer_density[name] = float(rate[offset:offset + size].mean())
        layer_dynamic[name] = float(dynamic[offset:offset + size].to(torch.float64).mean())
        offset += size
    return Conditionality(
        num_inputs=n, gate_names=list(ps.gate_names), gate_sizes=list(ps.gate_sizes), firing_rate=rate,
        histogram=hist, dynamic_share=float(dynamic.to(torch.float64).mean()),
        always_on_share=float((rate > high).to(torch.float64).mean()),
        always_off_share=float((rate < low).to(torch.float64).mean()),
        path_entropy=float(entropy.sum()), path_entropy_per_filter=float(entropy.mean()),
        hamming_same=hamming_same, hamming_diff=hamming_diff, density=float(rate.mean()),
        class_density=class_density, layer_density=layer_density, layer_dynamic_share=layer_dynamic,
        accuracy=ps.accuracy(), low=low, high=high)


def static_path_masks(firing_rate: Tensor, gate_names: list[str], gate_sizes: list[int],
                      densities: dict[str, float] | None = None) -> dict[str, Tensor]:
    """One static path: {gate name: (N_l,) bool} keeping, in each layer, the round(density_l · N_l)
    filters with the highest firing rates (ties: lower index first). ``densities`` defaults to each
    layer's mean firing rate, i.e. the same per-layer density as the per-input paths."""
    rate = torch.as_tensor(firing_rate, dtype=torch.float64).reshape(-1)
    if rate.numel() != sum(gate_sizes):
        raise ValueError(f"static_path_masks: {rate.numel()} firing rates for gates of {sum(gate_sizes)} filters")
    masks = {}
    for name, r in zip(gate_names, torch.split(rate, list(gate_sizes))):
        dens = float(r.mean()) if densities is None else float(densities[name])
        k = int(round(dens * r.numel()))
        keep = torch.zeros(r.numel(), dtype=torch.bool)
        if k > 0:
            keep[torch.sort(r, descending=True, stable=True).indices[:k]] = True
        masks[name] = keep
    return masks


def static_accuracy(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], masks: dict[str, Tensor]) -> float:
    """Accuracy over ``batches`` of (images, labels) of a copy of ``model`` whose gates are frozen to
    ``masks``: every input takes the same path."""
    from ..nn import freeze_static, gates

    frozen = copy.deepcopy(model).eval()
    freeze_static(gates(frozen), masks)
    correct = seen = 0
    with torch.no_grad():
        for xb, yb in batches:
            correct += int((frozen(xb).argmax(1) == yb).sum())
            seen += yb.shape[0]
    return correct / max(seen, 1)


def conditionality(model: nn.Module, x: Tensor, labels: Tensor, batch_size: int = 256, static: bool = True,
                   low: float = DYNAMIC_LOW, high: float = DYNAMIC_HIGH) -> Conditionality:
    """Conditionality of a gated PyTorch model on images ``x`` (N, C, H, W) with ``labels`` (N,):
    its paths (one eval pass) and, when ``static``, the accuracy on the static majority path of the
    same per-layer density (a second pass)."""
    was_training = model.training
    model.eval()
    try:
        ps = collect_paths(model, x, labels, batch_size=batch_size)
        c = path_conditionality(ps, low=low, high=high)
        if static:
            masks = static_path_masks(c.firing_rate, c.gate_names, c.gate_sizes)
            batches = ((x[i:i + batch_size], ps.labels[i:i + batch_size]) for i in range(0, x.shape[0], batch_size))
            c.static_accuracy = static_accuracy(model, batches, masks)
    finally:
        model.train(was_training)
    return c
