"""README table and plot of dynamic gated models against their static baselines at equal MACs,
from the summary.json files that benchmarks/train_dynamic.py writes.

    python benchmarks/dynamic_table.py runs/dynamic/*/summary.json [--plot benchmarks/results/dynamic_vs_static.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("summaries", nargs="+", type=Path)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args(argv)
    print("| model, data | R | dense acc | dynamic acc | MACs / dense | dynamic filters | static-path acc "
          "| static baseline acc (fine-tuned) | its MACs / dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    series = []
    for path in args.summaries:
        s = json.loads(path.read_text())
        pts_dyn, pts_static = [], []
        for name, r in sorted(s["runs"].items(), key=lambda kv: kv[1]["target_ratio"]):
            if r["kind"] != "dynamic":
                continue
            st = s["runs"].get(name.replace("gated_", "static_"))
            c = r["conditionality"]
            print(f"| {s['model']}, {s['dataset']} | {r['target_ratio']:g} | {100 * s['dense']['test_acc']:.2f}% "
                  f"| {100 * r['test_acc']:.2f}% | {r['macs_ratio']:.3f} | {100 * c['dynamic_share']:.1f}% "
                  f"| {100 * c['static_accuracy']:.2f}% | "
                  + (f"{100 * st['test_acc']:.2f}% | {st['macs_ratio']:.3f} |" if st else "– | – |"))
            pts_dyn.append((r["macs_ratio"], 100 * r["test_acc"]))
            if st:
                pts_static.append((st["macs_ratio"], 100 * st["test_acc"]))
        series.append((f"{s['model']}, {s['dataset']}", 100 * s["dense"]["test_acc"], pts_dyn, pts_static))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 4), squeeze=False)
        for ax, (title, dense, dyn, static) in zip(axes[0], series):
            if dyn:
                ax.plot(*zip(*sorted(dyn)), "o-", label="dynamic (per-input paths)")
            if static:
                ax.plot(*zip(*sorted(static)), "s--", label="static mask, same MACs, fine-tuned")
            ax.axhline(dense, color="grey", ls=":", label="dense")
            ax.set_title(title, fontsize=10)
            ax.set_xlim(0, 1)
            ax.set_xlabel("effective MACs / dense (per sample, gates included)")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
