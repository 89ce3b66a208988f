"""Per-conv time of a registered model's engine with Winograd on and off (DYNINFER_WINOGRAD, read
when a plan is built), both engines in one process, calls interleaved, one thread.

    python benchmarks/winograd_ab.py resnet18 --precision bf16 [--hw 224] [--repeats 3]
"""
from __future__ import annotations

import argparse
import collections
import os

import torch

import dyninfer
from dyninfer.flops import count_macs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--hw", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5, help="calls per profile_ops")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = dyninfer.create_model(args.model).eval()
    x = torch.randn(1, 3, args.hw, args.hw)
    engines = {}
    for flag in ("1", "0"):
        os.environ["DYNINFER_WINOGRAD"] = flag
        engines[flag] = dyninfer.compile(model, example_input=x, gates="open", precision=args.precision)
    os.environ.pop("DYNINFER_WINOGRAD")
    macs = {layer.name: layer.dense for layer in count_macs(model, x).layers if layer.op == "conv"}
    tot = {k: collections.defaultdict(float) for k in engines}
    for _ in range(args.repeats):
        for k, e in engines.items():
            for op, v in e.profile_ops(x, runs=args.runs).items():
                tot[k][op] += v / args.repeats
    print(f"{args.model} at {args.hw}, {args.precision}, batch 1, 1 thread; ms per call, Winograd on / off")
    for op, on in tot["1"].items():
        if op.startswith("conv:"):
            off, name = tot["0"][op], op[5:]
            print(f"  {name:26s} {on * 1e3:7.3f} {off * 1e3:7.3f}  x{off / on:.2f}  "
                  f"{2 * macs.get(name, 0) / on / 1e9:6.1f} GFLOP/s of direct-conv MACs")
    print(f"  total {sum(tot['1'].values()) * 1e3:.2f} / {sum(tot['0'].values()) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
