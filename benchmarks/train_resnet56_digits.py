"""Train the gated ResNet-56 the engine benchmark ships with: dense ResNet-56 on the embedded digits
data, then gated ResNet-56 (R = 0.5) initialised from it. Writes the final gated checkpoint to
dyninfer/assets/resnet56_digits_r05.safetensors (~3.5 MB, dyninfer checkpoint format).

    python benchmarks/train_resnet56_digits.py [--dense-epochs 30] [--epochs 24] [--lr 0.1]

Takes about 12 minutes on 2 quiet cores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dyninfer import checkpoint
from dyninfer.train import TrainConfig, train

ASSET = Path(__file__).resolve().parents[1] / "dyninfer" / "assets" / "resnet56_digits_r05.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dense-epochs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=64, help="64: twice the updates per epoch of 128")
    ap.add_argument("--out-dir", default="runs/resnet56_digits")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    common = dict(model="resnet56", dataset="digits", seed=args.seed, batch_size=args.batch_size)
    dense = train(TrainConfig(gated=False, epochs=args.dense_epochs, lr=args.lr, out_dir=f"{args.out_dir}/dense", **common))
    gated = train(TrainConfig(gated=True, epochs=args.epochs, lr=args.lr, lambda_mi=0.01, lambda_kl=0.0, lambda_s=0.02,
                              target_ratio=0.5, init_checkpoint=str(dense.last_path), out_dir=f"{args.out_dir}/gated",
                              **common))
    ASSET.parent.mkdir(parents=True, exist_ok=True)
    state, config = checkpoint.load_checkpoint(gated.last_path)
    metrics = {"dense_test_acc": dense.final["test_acc"], "test_acc": gated.final["test_acc"],
               "density_mean": gated.final["density_mean"], "macs_effective": gated.final["macs_effective"],
               "macs_dense": gated.final["macs_dense"]}
    checkpoint.save_checkpoint(ASSET, state, config, metrics)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {ASSET} ({ASSET.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
