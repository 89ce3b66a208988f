"""Where a gated model's per-input paths matter: its test accuracy when the gates of one layer (or of
one stage: the gates under a top-level module such as ``layer1``) are forced onto the static majority
path of the same per-layer density (each layer's most frequent filters over the images), every other
gate left to choose per input.

    python benchmarks/static_path_by_layer.py dyninfer/assets/resnet20_fashion_mnist_dynamic.safetensors
"""
from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

from dyninfer.analysis.conditionality import path_conditionality, static_path_masks
from dyninfer.analysis.paths import collect_paths
from dyninfer.checkpoint import load_checkpoint, load_model
from dyninfer.data import load_dataset
from dyninfer.nn import gates


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    with torch.no_grad():
        correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    return correct / len(y)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--dataset", default=None, help="default: the one the checkpoint was trained on")
    ap.add_argument("--images", type=int, default=10000, help="first images of the test split")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint).eval()
    if not gates(model):
        ap.error(f"{args.checkpoint}: no gates (a dense checkpoint)")
    dataset = args.dataset or load_checkpoint(args.checkpoint)[1].get("train", {}).get("dataset")
    if dataset is None:
        ap.error(f"{args.checkpoint} names no dataset; pass --dataset")
    ds = load_dataset(dataset, split="test")
    n = min(args.images, len(ds))
    x = torch.stack([ds[i][0] for i in range(n)])
    y = torch.tensor([int(ds[i][1]) for i in range(n)])
    c = path_conditionality(collect_paths(model, x, y))
    masks = static_path_masks(c.firing_rate, c.gate_names, c.gate_sizes)
    result = {"checkpoint": args.checkpoint, "dataset": dataset, "images": n, "per_input_paths": accuracy(model, x, y),
              "static": {}}
    stages = list(dict.fromkeys(name.split(".")[0] for name in masks))
    for prefix in stages + list(masks):
        frozen = copy.deepcopy(model).eval()
        for name, g in gates(frozen).items():
            if name == prefix or name.startswith(prefix + "."):
                g.freeze_static(masks[name])
        result["static"][prefix] = accuracy(frozen, x, y)
        print(f"static {prefix:32s} {100 * result['static'][prefix]:6.2f}%  (per-input paths "
              f"{100 * result['per_input_paths']:.2f}%)", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
