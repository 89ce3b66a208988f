"""Markdown tables for the README's Scaling section from the JSON that `make bench` writes
(benchmarks/results/bench_resnet56.json from `dyninfer bench`, benchmarks/results/scaling.json
from benchmarks/scaling.py).

    python benchmarks/scaling_tables.py
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def bench_table(b: dict) -> None:
    print("| threads | batch | ORT | dyninfer dense mode | dyninfer gated (MACs/sample) | gated vs ORT "
          "| keep 1.0 | keep 0.75 | keep 0.5 | keep 0.25 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in b["threads"]:
        for n in b["batch_sizes"]:
            rows = {r["peer"]: r for r in b["rows"] if r["threads"] == t and r["batch"] == n}
            ort, dense, gated = rows["onnxruntime"], rows["dyninfer-dense"], rows["dyninfer-gated"]
            sweep = sorted((s for s in b["density_sweep"] if s["threads"] == t and s["batch"] == n),
                           key=lambda s: -s["force_keep"])
            cells = [f"{s['median_ms']:.3f}" + (f" ({s['macs_per_sample'] / 1e6:.1f}M)" if (t, n) == (1, 1) else "")
                     for s in sweep]
            print(f"| {t} | {n} | {ort['median_ms']:.3f} | {dense['median_ms']:.3f} | {gated['median_ms']:.3f} "
                  f"({gated['macs_per_sample'] / 1e6:.2f}M) | {ort['median_ms'] / gated['median_ms']:.2f}× | "
                  + " | ".join(cells) + " |")


def sweep_table(s: dict) -> None:
    print("| model | input | dense MACs | ORT dense | engine dense mode | keep 1.0 | keep 0.75 | keep 0.5 | keep 0.25 "
          "| learned | per-model fit µs/MMAC, µs, R² |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in s["models"]:
        pts = {p["runner"]: p for p in m["points"]}
        def cell(k):
            p = pts.get(k)
            return "–" if p is None else f"{p['median_ms']:.3f} ({p['macs_per_sample'] / 1e6:.1f}M)"
        f = m["fit_ms_per_mmac"]
        h, w = m["input_shape"][-2:]
        print(f"| {m['label']} | {h}×{w} | {m['macs_dense'] / 1e6:.1f}M | {pts['onnxruntime']['median_ms']:.3f} | "
              f"{pts['engine-dense']['median_ms']:.3f} | {cell('engine-keep-1')} | {cell('engine-keep-0.75')} | {cell('engine-keep-0.5')} | "
              f"{cell('engine-keep-0.25')} | {cell('engine-learned')} | {1e3 * f['slope']:.1f}, {1e3 * f['intercept']:.0f}, "
              f"{f['r2']:.4f} |")
    for key in ("fit_all_engine_points", "fit_32x32_engine_points"):
        f = s[key]
        print(f"\n{key}: {f['slope']:.5f} ms/MMAC, {f['intercept']:+.3f} ms, R² {f['r2']:.3f}, n {f['n']}")
    print("\ndense mode ÷ ORT: " + ", ".join(
        f"{m['label']} {({p['runner']: p for p in m['points']}['engine-dense']['median_ms'] / {p['runner']: p for p in m['points']}['onnxruntime']['median_ms']):.2f}"
        for m in s["models"]))


def throughput_table(bs: dict) -> None:
    print("| threads | batch | engine dense mode | engine gated | ORT | gated ÷ ORT |")
    print("|---|---|---|---|---|---|")
    for t in bs["threads"]:
        for n in bs["batches"]:
            rows = {r["runner"]: r for r in bs["rows"] if r["threads"] == t and r["batch"] == n}
            d, g, o = (rows[k]["throughput_per_s"] for k in ("engine-dense", "engine-gated", "onnxruntime"))
            print(f"| {t} | {n} | {d:.0f} | {g:.0f} | {o:.0f} | {g / o:.2f}× |")


def main() -> None:
    bench_table(json.loads((RESULTS / "bench_resnet56.json").read_text()))
    print()
    scaling = json.loads((RESULTS / "scaling.json").read_text())
    sweep_table(scaling["sweep"])
    print()
    throughput_table(scaling["batch_scaling"])


if __name__ == "__main__":
    main()
