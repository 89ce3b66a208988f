"""How much each input's compute differs: per-sample density of a gated checkpoint's paths.

    python benchmarks/per_sample_density.py CHECKPOINT [CHECKPOINT ...] [--images 2000] [--threads 2]

For the first --images test images of the checkpoint's data set: the share of gated filters each
input keeps (dyninfer.calculation_path, eval mode), its mean, standard deviation, minimum and
maximum, and the mean over misclassified and over correctly classified images, so a budget that
lets inputs differ in cost can be checked for spending more on the hard ones.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import dyninfer
from dyninfer import checkpoint
from dyninfer.data import load_dataset


def density_report(path: str, images: int) -> dict:
    meta = checkpoint.read_metadata(path)
    dataset = meta["config"].get("train", {}).get("dataset", "digits")
    model = checkpoint.load_model(path).eval()
    test = load_dataset(dataset, split="test")
    n = min(images, len(test))
    x = torch.stack([test[i][0] for i in range(n)])
    y = torch.tensor([int(test[i][1]) for i in range(n)])
    with torch.no_grad():
        right = model(x).argmax(1) == y
        d = dyninfer.calculation_path(model).float().mean(1)
    return {"checkpoint": path, "dataset": dataset, "images": n, "accuracy": right.float().mean().item(),
            "density_mean": d.mean().item(), "density_std": d.std().item(), "density_min": d.min().item(),
            "density_max": d.max().item(),
            "misclassified_mean": d[~right].mean().item() if (~right).any() else None,
            "correct_mean": d[right].mean().item() if right.any() else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for path in args.checkpoints:
        try:
            print(json.dumps(density_report(path, args.images)))
        except (OSError, ValueError, KeyError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
