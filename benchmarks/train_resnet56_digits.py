"""Train the dense ResNet-56 shipped for digits (dyninfer/assets/resnet56_digits_dense.safetensors,
~3.5 MB): the dense baseline of `dyninfer analyze` and the init of the dynamic gated ResNet-56
(benchmarks/train_dynamic.py --dense-checkpoint).

    python benchmarks/train_resnet56_digits.py [--dense-epochs 30] [--lr 0.1] [--threads 1] [--resume]

The dense stage alone took 864 s on 1 thread.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dyninfer import checkpoint
from dyninfer.train import TrainConfig, train

DENSE_ASSET = Path(__file__).resolve().parents[1] / "dyninfer" / "assets" / "resnet56_digits_dense.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dense-epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=64, help="64: twice the updates per epoch of 128")
    ap.add_argument("--out-dir", default="runs/resnet56_digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    dense = train(TrainConfig(model="resnet56", dataset="digits", gated=False, epochs=args.dense_epochs, lr=args.lr,
                              seed=args.seed, batch_size=args.batch_size, threads=args.threads, resume=args.resume,
                              out_dir=f"{args.out_dir}/dense"))
    state, config = checkpoint.load_checkpoint(dense.last_path)
    metrics = {"test_acc": dense.final["test_acc"], "macs_dense": dense.final["macs_dense"], "epochs": args.dense_epochs}
    checkpoint.save_checkpoint(DENSE_ASSET, state, config, metrics)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {DENSE_ASSET} ({DENSE_ASSET.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
