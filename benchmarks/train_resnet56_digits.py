"""Train the ResNet-56 checkpoints shipped for digits: dense ResNet-56 on the embedded digits data
(dyninfer/assets/resnet56_digits_dense.safetensors, the dense baseline of `dyninfer analyze`), then
gated ResNet-56 (R = 0.5) initialised from it (dyninfer/assets/resnet56_digits_r05.safetensors, the
engine benchmark's model). Both ~3.5 MB, dyninfer checkpoint format.

    python benchmarks/train_resnet56_digits.py [--dense-epochs 30] [--epochs 24] [--lr 0.1] [--dense-only]

Takes about 12 minutes on 2 quiet cores; the dense stage alone took 864 s on 1 thread.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dyninfer import checkpoint
from dyninfer.train import TrainConfig, train

ASSETS = Path(__file__).resolve().parents[1] / "dyninfer" / "assets"
ASSET = ASSETS / "resnet56_digits_r05.safetensors"
DENSE_ASSET = ASSETS / "resnet56_digits_dense.safetensors"


def ship(run, path: Path, metrics: dict) -> None:
    state, config = checkpoint.load_checkpoint(run.last_path)
    checkpoint.save_checkpoint(path, state, config, metrics)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dense-epochs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=64, help="64: twice the updates per epoch of 128")
    ap.add_argument("--out-dir", default="runs/resnet56_digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--dense-only", action="store_true", help="train and ship only the dense checkpoint")
    args = ap.parse_args()
    t0 = time.perf_counter()
    common = dict(model="resnet56", dataset="digits", seed=args.seed, batch_size=args.batch_size,
                  threads=args.threads)
    dense = train(TrainConfig(gated=False, epochs=args.dense_epochs, lr=args.lr, out_dir=f"{args.out_dir}/dense", **common))
    ship(dense, DENSE_ASSET, {"test_acc": dense.final["test_acc"], "macs_dense": dense.final["macs_dense"],
                              "epochs": args.dense_epochs})
    if args.dense_only:
        print(f"done in {time.perf_counter() - t0:.0f}s")
        return
    gated = train(TrainConfig(gated=True, epochs=args.epochs, lr=args.lr, lambda_mi=0.01, lambda_kl=0.0, lambda_s=0.02,
                              target_ratio=0.5, init_checkpoint=str(dense.last_path), out_dir=f"{args.out_dir}/gated",
                              **common))
    ship(gated, ASSET, {"dense_test_acc": dense.final["test_acc"], "test_acc": gated.final["test_acc"],
                        "density_mean": gated.final["density_mean"], "macs_effective": gated.final["macs_effective"],
                        "macs_dense": gated.final["macs_dense"]})
    print(f"done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
