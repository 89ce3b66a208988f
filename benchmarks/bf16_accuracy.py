"""Test accuracy of the engine in fp32 and in bf16 (dyninfer.compile(..., precision="bf16")) on whole
test splits, with the bf16 paths' agreement with the fp32 paths (share of equal gate decisions, and of
samples whose whole path is equal) and the share of equal predictions. Needs AVX512_BF16.

    python benchmarks/bf16_accuracy.py dyninfer/assets/resnet20_fashion_mnist_dynamic.safetensors \\
        dyninfer/assets/resnet56_digits_dynamic.safetensors --out benchmarks/results/bf16/accuracy.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

import dyninfer
from dyninfer.bench import cpu_model
from dyninfer.checkpoint import load_model, read_metadata
from dyninfer.data import load_dataset


def evaluate(path: str, threads: int, batch: int = 250) -> dict:
    model = load_model(path).eval()
    dataset = read_metadata(path)["config"].get("train", {}).get("dataset", "digits")
    ds = load_dataset(dataset, split="test")
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    ys = torch.tensor([int(ds[i][1]) for i in range(len(ds))])
    a = dyninfer.compile(model, example_input=xs[:1])
    b = dyninfer.compile(model, example_input=xs[:1], precision="bf16", strict_precision=True)
    n = len(ys)
    correct = {"fp32": 0, "bf16": 0}
    same_pred = same_bits = same_paths = bits = 0
    for i in range(0, n, batch):
        x, y = xs[i:i + batch], ys[i:i + batch]
        la, pa = a(x, return_path=True)
        lb, pb = b(x, return_path=True)
        correct["fp32"] += int((la.argmax(1) == y).sum())
        correct["bf16"] += int((lb.argmax(1) == y).sum())
        same_pred += int((la.argmax(1) == lb.argmax(1)).sum())
        same_bits += int((pa == pb).sum())
        bits += pa.numel()
        same_paths += int((pa == pb).all(1).sum())
    acc32, acc16 = correct["fp32"] / n, correct["bf16"] / n
    return {"checkpoint": os.path.basename(path), "dataset": dataset, "images": n,
            "bf16_convs": b.plan.bf16_convs(), "convs": len(b.conv_names),
            "accuracy_fp32": acc32, "accuracy_bf16": acc16, "change_points": 100 * (acc16 - acc32),
            "prediction_agreement": same_pred / n, "gate_decision_agreement": same_bits / bits if bits else None,
            "whole_path_agreement": same_paths / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from dyninfer._C import bf16_supported
    if not bf16_supported():
        print("bf16_accuracy: this CPU has no AVX512_BF16 (cpu flag avx512_bf16); nothing to measure", file=sys.stderr)
        return 2
    rows = []
    for p in args.checkpoints:
        r = evaluate(p, args.threads)
        rows.append(r)
        print(f"{r['checkpoint']}: fp32 {100 * r['accuracy_fp32']:.2f}%  bf16 {100 * r['accuracy_bf16']:.2f}%  "
              f"change {r['change_points']:+.2f} points  ({r['bf16_convs']}/{r['convs']} convs in bf16)  "
              f"same predictions {100 * r['prediction_agreement']:.2f}%" +
              (f"  gate decisions {100 * r['gate_decision_agreement']:.3f}%  whole paths "
               f"{100 * r['whole_path_agreement']:.2f}%" if r["gate_decision_agreement"] is not None else
               "  (no gates)"))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps({"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                                   "rows": rows}, indent=2))
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
