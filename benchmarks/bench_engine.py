"""Engine benchmark: dyninfer against dense CPU runtimes on a shipped gated checkpoint, one thread.

    python benchmarks/bench_engine.py [--checkpoint PATH] [--batch-sizes 1 8] [--runs 300] [--out FILE]

Everything is measured in one process, side by side: runners take turns in short blocks of calls
(one untimed call, then 10 timed ones) so machine noise hits all of them alike, and medians are
taken over all timed calls. At batch 1 and at batch 8 (eight different test images per call, so
the samples of a batch keep different channels);
torch.set_num_threads(1), ONNX Runtime with 1 intra-op / 1 inter-op thread and all graph
optimisations, OpenVINO (when installed) with 1 inference thread and the latency hint.

Rows (per batch size):
  the dense model (the checkpoint's weights, gates removed): PyTorch eager, ONNX Runtime, OpenVINO
  (f32 precision hint; also a row with OpenVINO's default precision, bf16 on CPUs with AMX, for
  information), torch.compile (inductor, freezing), dyninfer dense mode;
  the gated model (default: the shipped dynamic digits ResNet-56) on real test images of its data set;
  at batch 1, a density sweep with every gated layer forced to keep 100/75/50/25% of its channels,
  a single-core FMA peak probe and each conv layer's achieved GFLOP/s against it.
MACs per sample come from dyninfer.flops.count_macs (fvcore conventions; effective MACs from the
actual gate decisions, gates' own cost included).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

import dyninfer
from dyninfer import checkpoint
from dyninfer._ext import fma_peak_gflops, isa
from dyninfer.bench import cpu_model, onnxruntime_runner, openvino_runner, side_by_side, torch_compile_runner
from dyninfer.flops import count_macs
from dyninfer.nn import gates

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "dyninfer" / "assets" / "resnet56_digits_dynamic.safetensors"


def optional_peer(make, *args, **kwargs):
    """(run, note) from a dyninfer.bench runner factory, or (None, why) when the runtime is absent
    or cannot build this model (torch.compile without a C++ compiler, say): the run goes on."""
    try:
        return make(*args, **kwargs)
    except ImportError as exc:
        return None, f"not installed ({exc})"
    except Exception as exc:
        return None, f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"


def conv_layer_macs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[int, tuple[int, ...]]]:
    """{conv path: (dense MACs, (O, I, kh, kw, Ho, Wo))} from one forward."""
    out: dict[str, tuple[int, tuple[int, ...]]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            def hook(mod, inp, o, name=name):
                kh, kw = mod.kernel_size
                shape = (mod.out_channels, mod.in_channels // mod.groups, kh, kw, o.shape[2], o.shape[3])
                out[name] = (shape[0] * shape[1] * kh * kw * shape[4] * shape[5], shape)
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=300, help="timed rounds (>= 200 recommended)")
    ap.add_argument("--checkpoint", default=str(ASSET))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine.json"))
    ap.add_argument("--images", type=int, default=64, help="test images cycled through")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if not Path(args.checkpoint).exists():
        print(f"checkpoint {args.checkpoint} not found: run benchmarks/train_dynamic.py first", file=sys.stderr)
        return 2
    meta = checkpoint.read_metadata(args.checkpoint)
    spec, dataset = meta["config"]["model"], meta["config"].get("train", {}).get("dataset", "digits")
    gated_model = checkpoint.load_model(args.checkpoint)
    dense_model = dyninfer.create_model(spec["name"], num_classes=spec["num_classes"], gated=False).eval()
    dense_model.load_state_dict({k: v for k, v in gated_model.state_dict().items() if "_gate" not in k})

    from dyninfer.data import load_dataset
    test = load_dataset(dataset, split="test")
    xs = [test[i][0].unsqueeze(0).contiguous() for i in range(min(args.images, len(test)))]
    x0 = xs[0]

    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus; 1 thread; engine isa: {isa()}; torch {torch.__version__}")
    if os.environ.get("DYNINFER_ISA_CAP"):
        print(f"every library capped at {os.environ['DYNINFER_ISA_CAP']}")
    peak = fma_peak_gflops(100_000_000)
    peak_ymm = float(torch.ops.dyninfer.fma_peak(200_000_000, 8).item())
    print(f"single-core FMA peak: {peak:.1f} GFLOP/s at the engine's widest vector ({isa()}); "
          f"{peak_ymm:.1f} GFLOP/s with 8-wide (AVX2) vectors")

    engine_dense = dyninfer.compile(gated_model, gates="open")
    engine_gated = dyninfer.compile(gated_model)
    sweep = {keep: dyninfer.compile(gated_model, force_keep=keep) for keep in (1.0, 0.75, 0.5, 0.25)}

    # MACs per sample (fvcore conventions), over the images every batch size cycles through
    batch = torch.cat(xs)
    rep = count_macs(gated_model, batch)
    dense_macs = count_macs(dense_model, x0).dense
    eff_gated = rep.effective.double().mean().item()
    sweep_macs = {}
    for keep in sweep:
        for g in gates(gated_model).values():
            g.force_keep = keep
        sweep_macs[keep] = count_macs(gated_model, batch).effective.double().mean().item()
    for g in gates(gated_model).values():
        g.force_keep = None
    macs = {"pytorch eager": dense_macs, "onnxruntime": dense_macs, "openvino": dense_macs,
            "openvino default prec.": dense_macs, "torch.compile": dense_macs,
            "dyninfer dense": dense_macs, "dyninfer gated": eff_gated}
    for keep, m in sweep_macs.items():
        macs[f"dyninfer keep {int(keep * 100)}%"] = m

    rows, bars = [], {}
    compile_cache: dict = {}  # one torch.compile module, recompiled per batch size
    notes = {"pytorch eager": f"torch {torch.__version__}"}
    for bsz in args.batch_sizes:
        inputs = [torch.cat(xs[i:i + bsz]) for i in range(0, len(xs) - bsz + 1, bsz)]
        runners = {"pytorch eager": lambda t: dense_model(t)}
        makers = [("onnxruntime", lambda m, x: optional_peer(onnxruntime_runner, m, x, 1)),
                  ("openvino", lambda m, x: optional_peer(openvino_runner, m, x, 1)),
                  ("openvino default prec.", lambda m, x: optional_peer(openvino_runner, m, x, 1, "default")),
                  ("torch.compile", lambda m, x: optional_peer(torch_compile_runner, m, x, 1, compile_cache))]
        for name, make in makers:
            fn, note = make(dense_model, inputs[0])
            notes[name] = note
            if fn is not None:
                runners[name] = fn
            else:
                print(f"{name}: skipped — {note}")
        runners["dyninfer dense"] = engine_dense
        runners["dyninfer gated"] = engine_gated
        if bsz == 1:
            for keep, eng in sweep.items():
                runners[f"dyninfer keep {int(keep * 100)}%"] = eng
        with torch.no_grad():
            timing = side_by_side(runners, inputs, args.runs, block=10, warmup=30)

        # FP32 peers only: OpenVINO's default precision (bf16 where the CPU has it) is reported for
        # information but is not an equal-precision baseline.
        dense_peers = [n for n in ("pytorch eager", "onnxruntime", "openvino", "torch.compile") if n in timing]
        fastest_peer = min(dense_peers, key=lambda n: timing[n][0])
        print(f"\nbatch {bsz}: {'runner':<22} {'median ms':>10} {'p90 ms':>8} {'MACs/sample':>12} {'GFLOP/s':>8} "
              f"{'% peak':>7} {'vs ' + fastest_peer:>16} {'speedup/MAC-red':>16}")
        for name, (med, p90) in timing.items():
            m = macs[name]
            gflops = 2 * m * bsz / med / 1e9
            speedup = timing[fastest_peer][0] / med
            mac_red = dense_macs / m
            row = {"runner": name, "batch": bsz, "median_ms": med * 1e3, "p90_ms": p90 * 1e3, "macs_per_sample": m,
                   "gflops": gflops, "fraction_of_peak": gflops / peak, "speedup_vs_fastest_dense_peer": speedup,
                   "fastest_dense_peer": fastest_peer, "mac_reduction": mac_red,
                   "speedup_over_mac_reduction": speedup / mac_red, "note": notes.get(name, "")}
            rows.append(row)
            print(f"{name:<31} {med * 1e3:>10.3f} {p90 * 1e3:>8.3f} {m / 1e6:>11.2f}M {gflops:>8.1f} "
                  f"{100 * gflops / peak:>6.1f}% {speedup:>15.2f}x {speedup / mac_red:>16.2f}")
        g = next(r for r in rows if r["runner"] == "dyninfer gated" and r["batch"] == bsz)
        ratio_dense = timing["dyninfer dense"][0] / timing["onnxruntime"][0] if "onnxruntime" in timing else None
        bars[f"batch{bsz}"] = {
            "dense_vs_onnxruntime_ratio": ratio_dense,
            "gated_speedup_vs_fastest_dense_peer": g["speedup_vs_fastest_dense_peer"],
            "gated_mac_reduction": g["mac_reduction"],
            "gated_speedup_over_mac_reduction": g["speedup_over_mac_reduction"],
            "gated_bar_met": g["speedup_vs_fastest_dense_peer"] >= 0.9 * g["mac_reduction"]}

    # Per-layer profile of the engine (dense mode): achieved GFLOP/s per conv against the peak.
    layer_macs = conv_layer_macs(dense_model, x0)
    # Chunks of 20 profiled calls, each preceded by a short peak probe: a layer's fraction of
    # peak is taken per chunk against the peak measured next to it, then the median over chunks.
    chunks, peaks = [], []
    for _ in range(max(10, args.runs // 20)):
        peaks.append(fma_peak_gflops(10_000_000))
        chunks.append(engine_dense.profile(x0, runs=20))
    prof = {name: statistics.median(c[name] for c in chunks) for name in chunks[0]}
    frac = {name: statistics.median(2 * layer_macs[name][0] / c[name] / 1e9 / p for c, p in zip(chunks, peaks))
            for name in chunks[0]}
    widths = dict(zip(engine_dense.conv_names, engine_dense.plan.conv_vector_widths()))
    layers = []
    for name, t in prof.items():
        m, shape = layer_macs[name]
        g = 2 * m / t / 1e9
        layers.append({"conv": name, "shape_OIkhkwHoWo": shape, "us": t * 1e6, "gflops": g,
                       "fraction_of_peak": frac[name], "vector_width": widths.get(name)})
    print(f"\nper-conv (dyninfer dense mode; peak probed next to each chunk: median {statistics.median(peaks):.1f} "
          f"GFLOP/s), grouped by output size, 3x3 stride-1 convs:")
    by_size: dict[int, list[float]] = {}
    for l in layers:
        o, i, kh, kw, ho, wo = l["shape_OIkhkwHoWo"]
        if kh == 3 and layer_macs[l["conv"]][1] and i == o:
            by_size.setdefault(ho, []).append(l["fraction_of_peak"])
    for ho, fr in sorted(by_size.items(), reverse=True):
        print(f"  {ho}x{ho}: {len(fr)} layers, median {100 * statistics.median(fr):.1f}% of peak, "
              f"min {100 * min(fr):.1f}%, max {100 * max(fr):.1f}%")

    bars.update({
        "conv3x3_32x32_median_fraction_of_peak": statistics.median(by_size[32]) if 32 in by_size else None,
        "conv3x3_16x16_median_fraction_of_peak": statistics.median(by_size[16]) if 16 in by_size else None,
    })
    bars["conv3x3_32x32_min_fraction_of_peak"] = min(by_size[32]) if 32 in by_size else None
    bars["conv3x3_16x16_min_fraction_of_peak"] = min(by_size[16]) if 16 in by_size else None
    bars["conv_bar_met"] = all(bars[k] is not None and bars[k] >= 0.65 for k in
                               ("conv3x3_32x32_median_fraction_of_peak", "conv3x3_16x16_median_fraction_of_peak"))
    bars["conv_bar_met_every_layer"] = all(bars[k] is not None and bars[k] >= 0.65 for k in
                                           ("conv3x3_32x32_min_fraction_of_peak", "conv3x3_16x16_min_fraction_of_peak"))
    print("\nbars:", json.dumps(bars, indent=2))
    result = {
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": 1, "engine_isa": isa(),
                    "isa_cap": os.environ.get("DYNINFER_ISA_CAP"),
                    "python": platform.python_version(), "torch": torch.__version__},
        "peak_gflops": peak, "peak_gflops_8wide": peak_ymm, "peak_gflops_next_to_layers": statistics.median(peaks),
        "runs": args.runs, "batch_sizes": args.batch_sizes, "rows": rows, "layers": layers, "bars": bars,
        "model": spec["name"], "dataset": dataset,
        "macs_convention": "fvcore (MACs per sample; BN 2/element in eval mode; gates included in effective)",
        "checkpoint": str(Path(args.checkpoint).name),
        "gated_test_accuracy": meta.get("metrics", {}).get("test_acc"),
        "gated_density": meta.get("metrics", {}).get("density_mean"),
        "gated_dynamic_share": meta.get("metrics", {}).get("conditionality", {}).get("dynamic_share"),
        "command": "python benchmarks/bench_engine.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
