"""Filter states (paper Sec. 4.2, Fig. 4): over a set of inputs each gated filter is
  energetic  on for every input,
  silent     never on,
  dynamic    on for some inputs and off for others.
Silent filters could be pruned statically; only dynamic ones make the network input-dependent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .paths import PathSet

__all__ = ["LayerStates", "FilterStates", "filter_states", "plot_filter_states"]


@dataclass
class LayerStates:
    name: str
    channels: int
    energetic: int
    silent: int
    dynamic: int
    on_rate: Tensor  # (N_l,) fraction of inputs for which each filter is on
    class_on_rate: Tensor  # (K, N_l) the same per class (rows of classes absent from the set are NaN)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "channels": self.channels, "energetic": self.energetic, "silent": self.silent,
                "dynamic": self.dynamic, "dynamic_channels": torch.nonzero(
                    (self.on_rate > 0) & (self.on_rate < 1)).flatten().tolist()}


@dataclass
class FilterStates:
    layers: list[LayerStates]
    num_inputs: int
    classes: list[int]

    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(l, k) for l in self.layers) for k in ("channels", "energetic", "silent", "dynamic")}

    def __getitem__(self, name: str) -> LayerStates:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(f"no gated layer '{name}'; layers: {[l.name for l in self.layers][:5]}…")

    def to_json(self) -> dict[str, Any]:
        return {"num_inputs": self.num_inputs, "totals": self.totals(), "layers": [l.to_json() for l in self.layers]}


def filter_states(ps: PathSet) -> FilterStates:
    """Energetic / silent / dynamic filters of every gated layer over the inputs of ``ps``."""
    if len(ps) == 0:
        raise ValueError("filter_states: the path set is empty")
    known = ps.labels[ps.labels >= 0]
    classes = sorted(set(known.tolist()))
    layers = []
    for name, bits in ps.split().items():
        b = bits.float()  # (N, N_l)
        rate = b.mean(0)
        per_class = torch.full((len(classes), b.shape[1]), float("nan"))
        for i, c in enumerate(classes):
            per_class[i] = b[ps.labels == c].mean(0)
        on_all, off_all = int((rate == 1).sum()), int((rate == 0).sum())
        layers.append(LayerStates(name, b.shape[1], on_all, off_all, b.shape[1] - on_all - off_all, rate, per_class))
    return FilterStates(layers, len(ps), classes)


def plot_filter_states(fs: FilterStates, out: str | Path, heatmap_layers: int = 4, title: str = "") -> Path:
    """Fig. 4-like figure: top, the share of energetic / dynamic / silent filters of every gated
    layer; bottom, for the ``heatmap_layers`` layers with the most dynamic filters, each filter's
    on-rate per class (filters sorted by overall on-rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    n = len(fs.layers)
    picks = sorted(range(n), key=lambda i: (-fs.layers[i].dynamic, i))[:max(0, heatmap_layers)]
    picks = sorted(i for i in picks if fs.layers[i].dynamic > 0) or picks[:1]
    fig = plt.figure(figsize=(max(10, 0.22 * n + 2), 8.5))
    gs = fig.add_gridspec(2, max(1, len(picks)), height_ratios=[1.1, 1], hspace=0.75)
    ax = fig.add_subplot(gs[0, :])
    x = range(n)
    share = {k: [getattr(l, k) / l.channels for l in fs.layers] for k in ("energetic", "dynamic", "silent")}
    ax.bar(x, share["energetic"], color="#d62728", label="energetic (always on)")
    ax.bar(x, share["dynamic"], bottom=share["energetic"], color="#2ca02c", label="dynamic")
    ax.bar(x, share["silent"], bottom=[a + b for a, b in zip(share["energetic"], share["dynamic"])], color="#bbbbbb",
           label="silent (never on)")
    ax.set_xticks(list(x))
    ax.set_xticklabels([l.name.replace("_gate", "") for l in fs.layers], rotation=90, fontsize=6)
    ax.set_ylabel("fraction of filters")
    ax.set_xlim(-0.6, n - 0.4)
    t = fs.totals()
    ax.set_title(title or f"filter states over {fs.num_inputs} inputs: {t['energetic']} energetic, "
                 f"{t['dynamic']} dynamic, {t['silent']} silent of {t['channels']}", fontsize=10)
    ax.legend(loc="upper right", fontsize=7, ncol=3)
    for j, i in enumerate(picks):
        l = fs.layers[i]
        order = torch.argsort(l.on_rate, descending=True, stable=True)
        axh = fig.add_subplot(gs[1, j])
        im = axh.imshow(l.class_on_rate[:, order].numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                        interpolation="nearest")
        axh.set_title(f"{l.name.replace('_gate', '')}\n{l.dynamic} dynamic of {l.channels}", fontsize=8)
        axh.set_xlabel("filter (sorted by on-rate)", fontsize=7)
        axh.set_yticks(range(len(fs.classes)))
        axh.set_yticklabels([str(c) for c in fs.classes], fontsize=6)
        if j == 0:
            axh.set_ylabel("class", fontsize=7)
    fig.colorbar(im, ax=fig.axes[1:], fraction=0.02, label="on-rate within class")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
