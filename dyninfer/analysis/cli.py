"""Flags of `dyninfer analyze` (registered in dyninfer/cli.py); heavy imports happen in run."""
from __future__ import annotations

import argparse
import dataclasses

__all__ = ["add_analyze_arguments", "run_analyze"]


def add_analyze_arguments(p: argparse.ArgumentParser) -> None:
    from .report import DEFAULT_CHECKPOINT, DEFAULT_DENSE_CHECKPOINT, AnalyzeConfig

    d = AnalyzeConfig()
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="gated checkpoint (default: the shipped "
                   "digits ResNet-56)")
    dense = p.add_mutually_exclusive_group()
    dense.add_argument("--dense-checkpoint", default=DEFAULT_DENSE_CHECKPOINT,
                       help="dense checkpoint for the baselines (default: the shipped dense digits ResNet-56)")
    dense.add_argument("--no-dense", action="store_true", help="skip the dense baselines")
    p.add_argument("--data-root", default=None, help="data folder for cifar10/cifar100/imagefolder checkpoints")
    p.add_argument("--out-dir", default=d.out_dir)
    p.add_argument("--source", choices=["engine", "pytorch"], default=d.source,
                   help="take paths from the compiled engine (default) or the PyTorch model")
    p.add_argument("--eps", type=float, default=d.eps, help="L-inf attack budget, pixel units of [0, 1] images")
    p.add_argument("--pgd-steps", type=int, default=d.pgd_steps)
    p.add_argument("--attack-pool-per-class", type=int, default=d.attack_pool_per_class)
    p.add_argument("--adv-test-limit", type=int, default=d.adv_test_limit, help="held-out test images attacked")
    p.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N train images")
    p.add_argument("--seeds", type=int, default=d.seeds)
    p.add_argument("--knn-k", type=int, default=d.knn_k)
    p.add_argument("--occlusion-images", type=int, default=d.occlusion_images)
    p.add_argument("--occlusion-box", type=int, default=d.occlusion_box)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quiet", action="store_true")


def run_analyze(args: argparse.Namespace) -> int:
    from .report import AnalyzeConfig, run_analysis

    names = {f.name for f in dataclasses.fields(AnalyzeConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in names}
    if args.no_dense:
        kwargs["dense_checkpoint"] = None
    result = run_analysis(AnalyzeConfig(**kwargs), progress=not args.quiet)
    print(f"wrote {', '.join(result['files'].values())}")
    return 0
