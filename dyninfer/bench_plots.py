"""Figures for a ``dyninfer bench`` result (matplotlib, Agg backend: no display needed).

    plot_bench("runs/bench/resnet56.json", "runs/bench/plots")   # -> [three PNG paths]
    dyninfer bench --checkpoint ... --plots runs/bench/plots

    <model>_latency_vs_macs.png  one panel per (threads, batch): the engine's density sweep and
                                 learned gates (median ms against effective MACs per sample), the
                                 ideal line through dense mode (latency ∝ MACs), dense peers as
                                 horizontal lines
    <model>_speedup.png          dyninfer gated and dense mode over each dense peer, per setting
    <model>_profile.png          engine time per conv, dense mode next to gated, plus gates / other
                                 (CompiledModel.profile_ops at the JSON's "profile" setting)

``linear_fit`` (least squares, numpy.polyfit) is shared with benchmarks/scaling.py.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["plot_bench", "linear_fit", "plot_latency_vs_macs", "plot_speedup", "plot_profile"]

PEER_STYLE = {"pytorch": ("PyTorch eager", "tab:red"), "torchscript": ("TorchScript", "tab:purple"),
              "onnxruntime": ("ONNX Runtime", "tab:orange"), "openvino": ("OpenVINO", "tab:brown"),
              "dyninfer-dense": ("dyninfer dense mode", "tab:gray"), "dyninfer-gated": ("dyninfer gated", "tab:blue")}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares line y ≈ slope·x + intercept (numpy.polyfit, degree 1) and its R² =
    1 − SS_res / SS_tot (1.0 when y is constant and fitted exactly)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"linear_fit: need two 1-d sequences of equal length >= 2, got shapes {x.shape}, {y.shape}")
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = float(((y - (slope * x + intercept)) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res <= 1e-24 else 0.0)
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2, "n": int(len(x))}


def _load(result: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    return result if isinstance(result, dict) else json.loads(Path(result).read_text())


def _settings(r: dict[str, Any]) -> list[tuple[int, int]]:
    return [(s["threads"], s["batch"]) for s in r["settings"]]


def _ok(r: dict[str, Any], t: int, b: int) -> dict[str, dict[str, Any]]:
    return {x["peer"]: x for x in r["rows"] if x["threads"] == t and x["batch"] == b and x["status"] == "ok"}


def _grid(plt, n: int, w: float = 5.0, h: float = 4.0):
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _title(r: dict[str, Any]) -> str:
    w = "untrained" if "untrained" in r.get("weights", "") else "trained"
    return f"{r['model']} ({w}), {r['machine']['cpu']}"


def plot_latency_vs_macs(r: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    settings = _settings(r)
    fig, axes = _grid(plt, len(settings))
    for ax, (t, b) in zip(axes, settings):
        ok = _ok(r, t, b)
        sw = sorted((s for s in r.get("density_sweep", []) if s["threads"] == t and s["batch"] == b),
                    key=lambda s: s["macs_per_sample"])
        xmax = max([r["macs_dense"]] + [s["macs_per_sample"] for s in sw]) / 1e6 * 1.05
        if sw:
            ax.plot([s["macs_per_sample"] / 1e6 for s in sw], [s["median_ms"] for s in sw], "o-", color="tab:green",
                    label="engine, force_keep sweep")
            for s in sw:
                ax.annotate(f"{s['force_keep']:g}", (s["macs_per_sample"] / 1e6, s["median_ms"]),
                            textcoords="offset points", xytext=(4, -10), fontsize=7)
        if "dyninfer-gated" in ok:
            g = ok["dyninfer-gated"]
            ax.plot(g["macs_per_sample"] / 1e6, g["median_ms"], "*", ms=13, color="tab:blue",
                    label="engine, learned gates" if r.get("force_keep") is None else f"engine, force_keep {r['force_keep']:g}")
        if "dyninfer-dense" in ok:
            d = ok["dyninfer-dense"]
            ax.plot(d["macs_per_sample"] / 1e6, d["median_ms"], "s", color="k", label="engine dense mode")
            ax.plot([0, xmax], [0, d["median_ms"] * xmax * 1e6 / d["macs_per_sample"]], "--", color="k", lw=0.8,
                    label="ideal: latency ∝ MACs")
        for peer in ("pytorch", "torchscript", "onnxruntime", "openvino"):
            if peer in ok:
                name, color = PEER_STYLE[peer]
                ax.axhline(ok[peer]["median_ms"], color=color, lw=1, ls=":", label=f"{name} (dense)")
        ax.set_xlim(0, xmax)
        ax.set_ylim(0, None)
        ax.set_xlabel("effective MACs per sample (M)")
        ax.set_ylabel(f"median latency per call, batch {b} (ms)")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}, batch {b}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Latency vs effective MACs: {_title(r)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_speedup(r: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    settings = _settings(r)
    fig, axes = _grid(plt, len(settings), w=5.0, h=3.6)
    for ax, (t, b) in zip(axes, settings):
        ok = _ok(r, t, b)
        bases = [p for p in ("pytorch", "torchscript", "onnxruntime", "openvino") if p in ok]
        ours = [p for p in ("dyninfer-dense", "dyninfer-gated") if p in ok]
        x = np.arange(len(bases))
        width = 0.8 / max(len(ours), 1)
        for i, p in enumerate(ours):
            vals = [ok[p]["speedup_vs"].get(base, float("nan")) for base in bases]
            bars = ax.bar(x + (i - (len(ours) - 1) / 2) * width, vals, width, color=PEER_STYLE[p][1],
                          label=PEER_STYLE[p][0])
            ax.bar_label(bars, fmt="%.2f×", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x, [f"vs {PEER_STYLE[p][0]}" for p in bases], fontsize=8)
        ax.set_ylabel("speedup (peer median ÷ dyninfer median)")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}, batch {b}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Speedup over dense peers: {_title(r)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _split_ops(ops: dict[str, float]) -> tuple[dict[str, float], float, float]:
    """(per-conv seconds by path, all gates, everything else) from profile_ops output."""
    convs = {k[5:]: v for k, v in ops.items() if k.startswith("conv:")}
    gate = sum(v for k, v in ops.items() if k.startswith("gate:"))
    other = sum(v for k, v in ops.items() if not k.startswith(("conv:", "gate:")))
    return convs, gate, other


def plot_profile(r: dict[str, Any], path: Path) -> Path | None:
    prof = r.get("profile")
    if not prof or not prof.get("ops"):
        return None
    plt = _pyplot()
    modes = [m for m in ("dyninfer-dense", "dyninfer-gated") if m in prof["ops"]]
    split = {m: _split_ops(prof["ops"][m]) for m in modes}
    names = list(split[modes[0]][0])
    labels = names + ["all gates", "other ops"]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * len(labels) * len(modes) + 2), 4.5))
    x = np.arange(len(labels))
    width = 0.8 / len(modes)
    for i, m in enumerate(modes):
        convs, gate, other = split[m]
        vals = [convs.get(n, 0.0) * 1e6 for n in names] + [gate * 1e6, other * 1e6]
        total = sum(prof["ops"][m].values()) * 1e3
        ax.bar(x + (i - (len(modes) - 1) / 2) * width, vals, width, color=PEER_STYLE[m][1],
               label=f"{PEER_STYLE[m][0]} (sum of ops {total:.3f} ms)")
    ax.set_xticks(x, labels, rotation=90, fontsize=6)
    ax.set_ylabel("µs per call (mean of profiled calls)")
    ax.set_title(f"Engine time per op, {prof['threads']} thread(s), batch {prof['batch']}, "
                 f"{prof['runs']} calls: {_title(r)}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bench(result: dict[str, Any] | str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write the bench figures for ``result`` (a run_bench dict or its JSON file) into ``out_dir``;
    returns the PNG paths written (no profile figure when the JSON has no profile)."""
    r = _load(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = r["model"]
    paths = [plot_latency_vs_macs(r, out / f"{stem}_latency_vs_macs.png"),
             plot_speedup(r, out / f"{stem}_speedup.png"),
             plot_profile(r, out / f"{stem}_profile.png")]
    return [p for p in paths if p is not None]
