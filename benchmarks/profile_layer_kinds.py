"""Engine time by layer kind for a registered model: dense mode (or, with --force-keep F, every
gate evaluated and keeping that share of its channels), batch 1, one thread, untrained weights
(seed 0), CompiledModel.profile_ops over a few calls, convs grouped by kernel/stride or groups,
with their achieved GFLOP/s (2 x MACs, fvcore conventions; dense MACs, so only at F = 1 or dense).

    python benchmarks/profile_layer_kinds.py resnext50_32x4d [--runs 5] [--force-keep 1.0] [--precision bf16]
"""
from __future__ import annotations

import argparse
import collections
import sys

import torch

import dyninfer
from dyninfer.bench import cpu_model
from dyninfer.flops import count_macs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=dyninfer.list_models())
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--force-keep", type=float, default=None, help="run the gates, each keeping this share of "
                    "its channels (1.0: every channel, so the gates' own cost shows); default: dense mode")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="engine precision (bf16: strict, an error on CPUs without AVX512_BF16)")
    args = ap.parse_args()
    if args.force_keep is not None and not 0.0 <= args.force_keep <= 1.0:
        ap.error(f"--force-keep must lie in [0, 1], got {args.force_keep}")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = dyninfer.create_model(args.model).eval()
    x = torch.randn(1, *dyninfer.models.model_info(args.model).input_size)
    if args.force_keep is None:
        engine = dyninfer.compile(model, gates="open", example_input=x, precision=args.precision,
                                  strict_precision=True)
    else:
        engine = dyninfer.compile(model, force_keep=args.force_keep, example_input=x, precision=args.precision,
                                  strict_precision=True)
    engine(x)
    ops = engine.profile_ops(x, args.runs)
    macs = {layer.name: layer.dense for layer in count_macs(model, x).layers if layer.op == "conv"}
    modules = dict(model.named_modules())
    kinds: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for key, t in ops.items():
        if key.startswith("conv:"):
            conv = modules[key[5:]]
            kind = f"conv g{conv.groups}" if conv.groups > 1 else f"conv k{conv.kernel_size[0]}s{conv.stride[0]}"
            kinds[kind][0] += t
            kinds[kind][1] += macs[key[5:]]
        else:
            kinds[key.split("#")[0].split(":")[0]][0] += t
    total = sum(ops.values())
    mode = "dense mode" if args.force_keep is None else f"gates keeping {args.force_keep:g} of their channels"
    print(f"{args.model}, engine {mode}, {args.precision}, batch 1, 1 thread, {cpu_model()}: {total * 1e3:.2f} ms per call")
    for kind, (t, m) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        rate = f"{2 * m / t / 1e9:6.1f} GFLOP/s" if m else ""
        print(f"  {kind:12s} {t * 1e3:8.2f} ms {100 * t / total:5.1f}%  {rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
