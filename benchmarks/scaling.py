"""Scaling: engine latency against effective MACs across models and densities, and batch/thread
throughput of the trained ResNet-56.

    python benchmarks/scaling.py [--out-dir benchmarks/results] [--budget 10]
    python benchmarks/scaling.py --models mobilenet_v2_cifar resnext50_32x4d mobilenet_v2 resnet50 \
        --no-batch-scaling --eager-budget 30 --tag families      # the CNN families: scaling_families.json

Part 1, density sweep (1 thread, batch 1, torch.set_num_threads(1), ORT intra/inter-op 1):
  models ResNet-20/56/110, vgg16_cifar, googlenet_cifar (3×32×32, digits test images) and
  resnet18 (3×224×224, seeded normal inputs), random init (seed 0, untrained: their gates are
  open, so the density is controlled with force_keep), plus the trained ResNet-56 checkpoint
  dyninfer/assets/resnet56_digits_dynamic.safetensors (with its learned gates as one more point).
  Per model, timed side by side in rotation (dyninfer.bench's scheme): ONNX Runtime (dense
  reference), the engine in dense mode (gates open) and the engine with force_keep 1.0 / 0.75 /
  0.5 / 0.25, plus PyTorch eager when one call × (runs + warmup) is estimated below 2 s.
  Timed calls per runner: min(300, budget ÷ one round of calls), at least 30.
  Effective MACs: dyninfer.flops.count_macs under the same force_keep on the timed inputs (fvcore
  conventions, gates' own cost included). Fit: engine median latency against effective MACs over
  every engine point of every model (numpy.polyfit, degree 1), and per model.
Part 2, batch scaling (trained ResNet-56, batch 1, 2, 4, 8, 16, 32 on 1 and 2 threads):
  engine dense mode, engine gated (learned gates), ONNX Runtime (intra-op = threads).

Writes scaling.json, scaling_latency_vs_macs.png and scaling_throughput.png to --out-dir.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import dyninfer
from dyninfer._ext import fma_peak_gflops, isa
from dyninfer.bench import bench_inputs, cpu_model, forced_macs, load_models, onnxruntime_runner, side_by_side
from dyninfer.bench_plots import _pyplot, linear_fit
from dyninfer.flops import count_macs

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "dyninfer" / "assets" / "resnet56_digits_dynamic.safetensors"
MODELS = ("resnet20", "resnet56", "resnet110", "vgg16_cifar", "googlenet_cifar", "resnet18", str(ASSET))
FAMILIES = ("mobilenet_v2_cifar", "resnext50_32x4d", "mobilenet_v2", "resnet50", "mobilenet_v3_small", "squeezenet1_1",
            "densenet121", "vgg11_bn", "efficientnet_b0")
SWEEP = (1.0, 0.75, 0.5, 0.25)
BATCHES = (1, 2, 4, 8, 16, 32)
EAGER_BUDGET_S = 2.0


def _one_call(fn, x) -> float:
    fn(x)
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def sweep_model(source: str, budget: float, log, eager_budget: float = EAGER_BUDGET_S) -> dict:
    dense, gated, desc = load_models(source, None)
    name = desc["name"]
    xs = bench_inputs(name, 1)
    x_all = torch.cat(xs)
    trained = Path(source).is_file()
    label = f"{name} (trained checkpoint)" if trained else name
    with torch.no_grad():
        macs = {"onnxruntime": count_macs(dense, xs[0]).dense}
        macs["engine-dense"] = macs["onnxruntime"]
        runners = {"onnxruntime": onnxruntime_runner(dense, xs[0], 1, {})[0],
                   "engine-dense": dyninfer.compile(gated, gates="open")}
        for f in SWEEP:
            runners[f"engine-keep-{f:g}"] = dyninfer.compile(gated, force_keep=f)
            macs[f"engine-keep-{f:g}"] = forced_macs(gated, f, x_all)
        if trained:
            runners["engine-learned"] = dyninfer.compile(gated)
            macs["engine-learned"] = count_macs(gated, x_all).effective.double().mean().item()
        round_s = sum(_one_call(fn, xs[0]) for fn in runners.values())
        runs = max(30, min(300, int(budget / round_s)))
        warmup = 10 if runs >= 100 else 3
        block = 10 if runs >= 100 else 5
        t_eager = _one_call(dense, xs[0])
        eager_cost = t_eager * (runs + warmup + runs / block)
        if eager_cost < eager_budget:
            runners["pytorch"] = dense
            macs["pytorch"] = macs["onnxruntime"]
        peak = fma_peak_gflops(50_000_000)
        t0 = time.perf_counter()
        timing = side_by_side(runners, xs, runs, block, warmup)
        took = time.perf_counter() - t0
    points = []
    for key, (med, p90) in timing.items():
        force_keep = float(key.rsplit("-", 1)[1]) if key.startswith("engine-keep-") else None
        points.append({"runner": key, "force_keep": force_keep, "median_ms": med * 1e3, "p90_ms": p90 * 1e3,
                       "macs_per_sample": macs[key], "gflops": 2 * macs[key] / med / 1e9,
                       "fraction_of_peak": 2 * macs[key] / med / 1e9 / peak,
                       "speedup_vs_onnxruntime": timing["onnxruntime"][0] / med})
    eng = [p for p in points if p["runner"].startswith("engine")]
    fit = linear_fit([p["macs_per_sample"] / 1e6 for p in eng], [p["median_ms"] for p in eng])
    log(f"{label:<34} runs {runs:>3} ({took:5.1f} s)  dense {macs['onnxruntime'] / 1e6:8.1f}M  "
        + "  ".join(f"{p['runner'].replace('engine-', '')} {p['median_ms']:.3f}" for p in points)
        + f"  fit R² {fit['r2']:.4f}" + ("" if "pytorch" in timing else f"  (eager skipped: est. {eager_cost:.1f} s)"))
    return {"model": name, "label": label, "source": source if trained else name, "weights": desc["weights"],
            "input_shape": list(xs[0].shape), "runs": runs, "block": block, "warmup": warmup,
            "peak_gflops_single_core": peak, "macs_dense": macs["onnxruntime"],
            "pytorch_eager": "timed" if "pytorch" in timing else
            f"skipped: one call {t_eager * 1e3:.1f} ms, estimated {eager_cost:.1f} s > {eager_budget} s",
            "points": points, "fit_ms_per_mmac": fit, "seconds": took}


def batch_scaling(log) -> dict:
    dense, gated, desc = load_models(str(ASSET), None)
    inputs = {b: bench_inputs(desc["name"], b) for b in BATCHES}
    cache: dict = {}
    runners = {"engine-dense": dyninfer.compile(gated, gates="open"), "engine-gated": dyninfer.compile(gated)}
    with torch.no_grad():
        macs = {"engine-dense": count_macs(dense, inputs[1][0]).dense}
        macs["onnxruntime"] = macs["engine-dense"]
        macs_gated = {b: count_macs(gated, torch.cat(inputs[b])).effective.double().mean().item() for b in BATCHES}
    rows = []
    old = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            for b in BATCHES:
                with torch.no_grad():
                    rs = dict(runners, onnxruntime=onnxruntime_runner(dense, inputs[b][0], t, cache)[0])
                    runs = 60 if b <= 4 else 30
                    timing = side_by_side(rs, inputs[b], runs, 5, 3)
                for key, (med, p90) in timing.items():
                    m = macs_gated[b] if key == "engine-gated" else macs[key]
                    rows.append({"threads": t, "batch": b, "runner": key, "runs": runs, "median_ms": med * 1e3,
                                 "p90_ms": p90 * 1e3, "throughput_per_s": b / med, "macs_per_sample": m,
                                 "gflops": 2 * m * b / med / 1e9})
                log(f"threads {t} batch {b:>2}: " + "  ".join(
                    f"{k} {b / v[0]:7.0f}/s" for k, v in timing.items()))
    finally:
        torch.set_num_threads(old)
    return {"model": desc["name"], "weights": desc["weights"], "batches": list(BATCHES), "threads": [1, 2],
            "runs": "60 timed calls per runner for batch <= 4, 30 above (blocks of 5, 3 warm-up calls)", "rows": rows}


def plot_sweep(models: list[dict], fit: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    cmap = plt.get_cmap("tab10")
    for ax, log_axes in zip(axes, (False, True)):
        for i, m in enumerate(models):
            eng = sorted((p for p in m["points"] if p["runner"].startswith("engine-keep")),
                         key=lambda p: p["macs_per_sample"])
            c = cmap(i)
            ax.plot([p["macs_per_sample"] / 1e6 for p in eng], [p["median_ms"] for p in eng], "o-", color=c, ms=4,
                    label=m["label"])
            d = next(p for p in m["points"] if p["runner"] == "engine-dense")
            ax.plot(d["macs_per_sample"] / 1e6, d["median_ms"], "s", color=c, mfc="none")
            o = next(p for p in m["points"] if p["runner"] == "onnxruntime")
            ax.plot(o["macs_per_sample"] / 1e6, o["median_ms"], "x", color=c, ms=8)
            for p in m["points"]:
                if p["runner"] == "engine-learned":
                    ax.plot(p["macs_per_sample"] / 1e6, p["median_ms"], "*", color=c, ms=12)
        xs = [p["macs_per_sample"] / 1e6 for m in models for p in m["points"]]
        lo, hi = min(xs) * 0.8, max(xs) * 1.1
        grid = [lo + (hi - lo) * k / 200 for k in range(201)]
        ax.plot(grid, [fit["slope"] * g + fit["intercept"] for g in grid], "k--", lw=0.8,
                label=f"fit: {fit['slope'] * 1e3:.2f} µs/MMAC + {fit['intercept'] * 1e3:.0f} µs, R² {fit['r2']:.4f}")
        if log_axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title("log-log; ○ = engine dense mode, × = ONNX Runtime dense, ★ = learned gates", fontsize=9)
        else:
            ax.set_title("engine, 1 thread, batch 1: force_keep 1 / 0.75 / 0.5 / 0.25", fontsize=9)
        ax.set_xlabel("effective MACs per sample (M)")
        ax.set_ylabel("median latency (ms)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput(bs: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"engine-dense": "tab:gray", "engine-gated": "tab:blue", "onnxruntime": "tab:orange"}
    for t, ls in ((1, "-"), (2, "--")):
        for key, c in colors.items():
            rs = [r for r in bs["rows"] if r["threads"] == t and r["runner"] == key]
            ax.plot([r["batch"] for r in rs], [r["throughput_per_s"] for r in rs], ls, marker="o", ms=4, color=c,
                    label=f"{key}, {t} thread{'s' if t > 1 else ''}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (samples / s)")
    ax.set_title("Trained ResNet-56 (digits, learned gates): throughput by batch and threads", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of timed rounds per model (part 1)")
    ap.add_argument("--models", nargs="+", default=list(MODELS),
                    help=f"registered names or checkpoints (default: {' '.join(MODELS[:-1])} and the shipped "
                         f"ResNet-56; the CNN families: {' '.join(FAMILIES)})")
    ap.add_argument("--eager-budget", type=float, default=EAGER_BUDGET_S,
                    help="time PyTorch eager when its calls are estimated below this many seconds")
    ap.add_argument("--no-batch-scaling", action="store_true", help="skip part 2")
    ap.add_argument("--tag", default="", help="write scaling_<tag>.json and plots instead of scaling.json")
    args = ap.parse_args()
    for src in args.models:
        if not Path(src).is_file() and src not in dyninfer.list_models():
            ap.error(f"--models: {src!r} is neither a checkpoint file nor a registered model "
                     f"({', '.join(dyninfer.list_models())})")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    t_start = time.perf_counter()
    log = lambda s: print(s, flush=True)  # noqa: E731

    models = [sweep_model(src, args.budget, log, args.eager_budget) for src in args.models]
    eng = [p for m in models for p in m["points"] if p["runner"].startswith("engine")]
    fit = linear_fit([p["macs_per_sample"] / 1e6 for p in eng], [p["median_ms"] for p in eng])
    small = [p for m in models if m["input_shape"][-1] == 32 for p in m["points"] if p["runner"].startswith("engine")]
    fit_cifar = linear_fit([p["macs_per_sample"] / 1e6 for p in small],
                           [p["median_ms"] for p in small]) if len(small) >= 2 else None
    log(f"fit over {fit['n']} engine points: latency_ms = {fit['slope']:.5f} · MMACs + {fit['intercept']:.4f}, "
        f"R² {fit['r2']:.5f}" + ("" if fit_cifar is None else
                                 f"; 32×32 models only ({fit_cifar['n']}): {fit_cifar['slope']:.5f} · MMACs + "
                                 f"{fit_cifar['intercept']:.4f}, R² {fit_cifar['r2']:.5f}"))
    bs = None if args.no_batch_scaling else batch_scaling(log)

    result = {
        "command": " ".join(["python"] + [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "machine": {"cpu": cpu_model(), "engine_isa": isa(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
        "macs_convention": "dyninfer.flops.count_macs (fvcore conventions, eval mode; effective MACs from the gate "
                           "decisions on the timed inputs under the same force_keep, gates' own cost included)",
        "sweep": {"threads": 1, "batch": 1, "force_keep": list(SWEEP), "models": models,
                  "fit_all_engine_points": fit, "fit_32x32_engine_points": fit_cifar,
                  "fit_units": "median latency (ms) against effective MACs per sample (millions)"},
        "batch_scaling": bs,
        "seconds_total": time.perf_counter() - t_start,
    }
    stem = f"scaling_{args.tag}" if args.tag else "scaling"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_sweep(models, fit, out / f"{stem}_latency_vs_macs.png")
    if bs is not None:
        plot_throughput(bs, out / f"{stem}_throughput.png")
    log(f"wrote {out / (stem + '.json')} and its plots ({result['seconds_total']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
