"""Markdown tables for the README from benchmarks/bench_engine.py JSON files: the full table of
the last file and one line of bars per file.

    python benchmarks/engine_table.py benchmarks/results/engine_run*.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

NAMES = {"pytorch eager": "PyTorch eager", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO (f32 precision hint)",
         "openvino default prec.": "OpenVINO, default precision", "dyninfer dense": "dyninfer dense mode",
         "dyninfer gated": "**dyninfer gated**", "dyninfer keep 100%": "dyninfer, every layer keeps 100%",
         "dyninfer keep 75%": "… keeps 75%", "dyninfer keep 50%": "… keeps 50%", "dyninfer keep 25%": "… keeps 25%"}


def per_size(d: dict) -> dict[int, list[float]]:
    by: dict[int, list[float]] = {}
    for layer in d["layers"]:
        o, i, kh, kw, ho, wo = layer["shape_OIkhkwHoWo"]
        if kh == 3 and i == o:
            by.setdefault(ho, []).append(layer["fraction_of_peak"])
    return by


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args()
    runs = [json.loads(f.read_text()) for f in args.files]
    for d in runs:  # files written before batch sizes were added: batch 1 only
        if "batch_sizes" not in d:
            d["batch_sizes"] = [1]
            d["bars"] = {"batch1": d["bars"]}
            for r in d["rows"]:
                r.setdefault("batch", 1)
                r.setdefault("fastest_dense_peer", d["fastest_dense_peer"])
    last = runs[-1]
    print(f"Command: `{last['command']}`; machine {last['machine']}; FMA peak {last['peak_gflops']:.1f} GFLOP/s "
          f"({last['peak_gflops_8wide']:.1f} with 8-wide vectors).")
    for bsz in last["batch_sizes"]:
        rows = [r for r in last["rows"] if r["batch"] == bsz]
        peer = rows[0]["fastest_dense_peer"]
        print(f"\nBatch {bsz}:\n")
        print(f"| runner | median ms | p90 ms | MACs / sample | GFLOP/s | % of FP32 peak | speedup vs {peer} "
              "| speedup ÷ MAC reduction |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {NAMES.get(r['runner'], r['runner'])} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
                  f"{r['macs_per_sample'] / 1e6:.2f}M | {r['gflops']:.1f} | {100 * r['fraction_of_peak']:.1f}% | "
                  f"{r['speedup_vs_fastest_dense_peer']:.2f}× | {r['speedup_over_mac_reduction']:.2f} |")
    by = per_size(last)
    print("\nPer conv layer, 3×3 stride 1 (median over layers, min in brackets): " + ", ".join(
        f"{h}×{h} {100 * statistics.median(v):.1f}% ({100 * min(v):.1f}%)" for h, v in sorted(by.items(), reverse=True)))
    print("\n| run | batch | dense mode ÷ ONNX Runtime | gated speedup ÷ MAC reduction (≥ 0.9) "
          "| 3×3 32×32 % of peak: median (min) | 16×16: median (min) | 8×8: median (min) |")
    print("|---|---|---|---|---|---|---|")
    for n, d in enumerate(runs, 1):
        by = per_size(d)
        cells = [f"{100 * statistics.median(by[h]):.1f}% ({100 * min(by[h]):.1f}%)" if h in by else "–"
                 for h in (32, 16, 8)]
        for bsz in d["batch_sizes"]:
            b = d["bars"][f"batch{bsz}"]
            ratio = b["dense_vs_onnxruntime_ratio"]
            print(f"| {n} | {bsz} | {'–' if ratio is None else f'{ratio:.3f}'} | "
                  f"{b['gated_speedup_vs_fastest_dense_peer']:.2f} / {b['gated_mac_reduction']:.2f} = "
                  f"{b['gated_speedup_vs_fastest_dense_peer'] / b['gated_mac_reduction']:.3f} | "
                  + (" | ".join(cells) if bsz == 1 else " | ".join("" for _ in cells)) + " |")


if __name__ == "__main__":
    main()
