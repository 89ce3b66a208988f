"""Train the DENSE ResNet-56 on the embedded digits data that `dyninfer analyze` uses as its baseline
(binarised channel activations of a dense model vs calculation paths of the gated one). Same recipe
as the dense stage of benchmarks/train_resnet56_digits.py (30 epochs, batch 64, lr 0.1, seed 0).
Writes dyninfer/assets/resnet56_digits_dense.safetensors (~3.5 MB, dyninfer checkpoint format).

    python benchmarks/train_resnet56_digits_dense.py [--epochs 30] [--threads 1]

Takes about 10 minutes on 1 quiet core.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dyninfer import checkpoint
from dyninfer.train import TrainConfig, train

ASSET = Path(__file__).resolve().parents[1] / "dyninfer" / "assets" / "resnet56_digits_dense.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", default="runs/resnet56_digits_dense")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args()
    t0 = time.perf_counter()
    dense = train(TrainConfig(model="resnet56", dataset="digits", gated=False, epochs=args.epochs, lr=args.lr,
                              batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                              out_dir=args.out_dir, progress=args.progress))
    state, config = checkpoint.load_checkpoint(dense.last_path)
    metrics = {"test_acc": dense.final["test_acc"], "macs_dense": dense.final["macs_dense"],
               "epochs": args.epochs}
    checkpoint.save_checkpoint(ASSET, state, config, metrics)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {ASSET} ({ASSET.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
