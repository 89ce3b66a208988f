"""Occlusion (paper Sec. 4.2, Fig. 6): occlude a region of an image and see which filters the
gates switch off; show where on the image those filters look.

``occlude`` fills the region; ``occlusion_effect`` compares the calculation paths of the clean and
the occluded image; ``filter_receptive_fields`` gives, for each filter, its effective receptive
field on the clean image, |∂ GAP(Y_c) / ∂x| summed over input channels (Y_c = the filter's output
map before its gate), and the bounding box of the input pixels that reach its most active output
unit (the theoretical receptive field of that unit).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Region", "occlude", "OcclusionResult", "occlusion_effect", "filter_receptive_fields", "plot_occlusion"]


@dataclass(frozen=True)
class Region:
    """Half-open pixel box rows [top, bottom), columns [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    def check(self, height: int, width: int) -> None:
        if not (0 <= self.top < self.bottom <= height and 0 <= self.left < self.right <= width):
            raise ValueError(f"occlusion region rows [{self.top}, {self.bottom}) x cols [{self.left}, {self.right}) "
                             f"is empty or outside the {height}x{width} image")


def _region(region: Region | Sequence[int]) -> Region:
    if isinstance(region, Region):
        return region
    r = tuple(int(v) for v in region)
    if len(r) != 4:
        raise ValueError(f"occlusion region must be (top, left, bottom, right), got {tuple(region)}")
    return Region(*r)


def occlude(image: Tensor, region: Region | Sequence[int], fill: float | Sequence[float] = 0.0) -> Tensor:
    """Copy of ``image`` (C, H, W) with ``region`` set to ``fill`` (a value or one per channel, in
    the image's own — usually normalised — units)."""
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise ValueError(f"occlude: expected one image (C, H, W), got "
                         f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    r = _region(region)
    r.check(image.shape[1], image.shape[2])
    out = image.clone()
    fill_t = torch.as_tensor(fill, dtype=image.dtype).reshape(-1, 1, 1)
    if fill_t.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"occlude: fill has {fill_t.shape[0]} values for an image of {image.shape[0]} channels")
    out[:, r.top:r.bottom, r.left:r.right] = fill_t
    return out


@dataclass
class OcclusionResult:
    region: Region
    path_clean: Tensor  # (D,) uint8
    path_occluded: Tensor  # (D,)
    pred_clean: int
    pred_occluded: int
    switched_off: list[tuple[str, int]]  # (gate name, channel) on for the clean image, off when occluded
    switched_on: list[tuple[str, int]]

    def to_json(self) -> dict:
        return {"region": [self.region.top, self.region.left, self.region.bottom, self.region.right],
                "pred_clean": self.pred_clean, "pred_occluded": self.pred_occluded,
                "switched_off": [list(f) for f in self.switched_off], "switched_on": [list(f) for f in self.switched_on]}


def _named_bits(path: Tensor, names: Sequence[str], sizes: Sequence[int]) -> list[tuple[str, int]]:
    out, start = [], 0
    for name, n in zip(names, sizes):
        out += [(name, int(c)) for c in torch.nonzero(path[start:start + n]).flatten()]
        start += n
    return out


def occlusion_effect(runner, image: Tensor, region: Region | Sequence[int], fill: float | Sequence[float] = 0.0
                     ) -> OcclusionResult:
    """Which filters switch off (and on) when ``region`` of ``image`` (C, H, W) is occluded.
    ``runner``: gated model in eval mode or CompiledModel (see collect_paths)."""
    from .paths import collect_paths

    r = _region(region)
    occ = occlude(image, r, fill)
    ps = collect_paths(runner, torch.stack([image, occ]))
    clean, blind = ps.paths[0], ps.paths[1]
    return OcclusionResult(r, clean, blind, int(ps.predictions[0]), int(ps.predictions[1]),
                           _named_bits((clean == 1) & (blind == 0), ps.gate_names, ps.gate_sizes),
                           _named_bits((clean == 0) & (blind == 1), ps.gate_names, ps.gate_sizes))


def filter_receptive_fields(model: nn.Module, image: Tensor, filters: Sequence[tuple[str, int]]
                            ) -> list[tuple[Tensor, Region]]:
    """For each (gate name, channel) of a gated ``model`` (eval mode): (effective receptive field
    (H, W) on ``image``, normalised to max 1; bounding box of the pixels that reach the filter's
    most active output unit)."""
    from ..nn import gates

    g = gates(model)
    missing = [f for f in filters if f[0] not in g or not 0 <= f[1] < g[f[0]].out_channels]
    if missing:
        raise ValueError(f"filter_receptive_fields: unknown filters {missing[:3]} (gates: {list(g)[:3]}…)")
    if image.dim() != 3:
        raise ValueError(f"filter_receptive_fields: expected one image (C, H, W), got {tuple(image.shape)}")
    maps: dict[str, Tensor] = {}

    def hook(name):
        def f(_mod, args):
            maps[name] = args[1]  # (1, N, H', W') unit output before the gate
        return f

    wanted = sorted({name for name, _ in filters})
    handles = [g[name].register_forward_pre_hook(hook(name)) for name in wanted]
    try:
        x = image[None].clone().requires_grad_(True)
        with torch.enable_grad():
            model(x)
            out = []
            for name, c in filters:
                y = maps[name][0, c]  # (H', W')
                (erf,) = torch.autograd.grad(y.mean(), x, retain_graph=True)
                erf = erf[0].abs().sum(0)  # (H, W)
                i = int(torch.argmax(y))
                (unit,) = torch.autograd.grad(y.flatten()[i], x, retain_graph=True)
                rows, cols = torch.nonzero(unit[0].abs().sum(0) > 0, as_tuple=True)
                box = (Region(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
                       if rows.numel() else Region(0, 0, image.shape[1], image.shape[2]))
                out.append((erf / erf.max() if erf.max() > 0 else erf, box))
    finally:
        for h in handles:
            h.remove()
    return out


def plot_occlusion(display: Tensor, region: Region, result: OcclusionResult,
                   fields: Sequence[tuple[Tensor, Region]], out: str | Path, max_filters: int = 8,
                   title: str = "") -> Path:
    """Clean image with the occluded box, then for up to ``max_filters`` switched-off filters their
    effective receptive field over the image and the receptive-field box of their most active unit.
    ``display``: (H, W) or (3, H, W) image in [0, 1] for showing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out = Path(out)
    img = display if display.dim() == 2 else display.permute(1, 2, 0)
    kw = {"cmap": "gray"} if display.dim() == 2 else {}
    shown = list(zip(result.switched_off, fields))[:max_filters]
    cols = 1 + max(1, len(shown))
    fig, axes = plt.subplots(1, cols, figsize=(2.1 * cols, 2.6), squeeze=False)
    ax = axes[0][0]
    ax.imshow(img.numpy(), vmin=0, vmax=1, **kw)
    ax.add_patch(Rectangle((region.left - 0.5, region.top - 0.5), region.right - region.left,
                           region.bottom - region.top, fill=False, ec="red", lw=2))
    ax.set_title(f"occluded box\npred {result.pred_clean}->{result.pred_occluded}, "
                 f"{len(result.switched_off)} off / {len(result.switched_on)} on", fontsize=7)
    for ax, ((name, c), (erf, box)) in zip(axes[0][1:], shown):
        ax.imshow(img.numpy(), vmin=0, vmax=1, **kw)
        ax.imshow(erf.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.add_patch(Rectangle((box.left - 0.5, box.top - 0.5), box.right - box.left, box.bottom - box.top,
                               fill=False, ec="white", lw=1, ls="--"))
        ax.set_title(f"{name.replace('_gate', '')}\nfilter {c}", fontsize=7)
    if not shown:
        axes[0][1].text(0.5, 0.5, "no filter switched off", ha="center", va="center", fontsize=8)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=8, y=1.04)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
