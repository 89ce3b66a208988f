"""Where a gated checkpoint's engine time goes: per op kind, on its own test images, one thread.

    python benchmarks/profile_checkpoint.py dyninfer/assets/resnet56_digits_dynamic.safetensors [--batch 8]
        [--runs 100] [--repeats 5] [--out FILE]

The engine runs the first ``--batch`` test images of the checkpoint's data set (so the samples keep
different channels), ``CompiledModel.profile_ops`` times every op over ``--runs`` calls, and the
median over ``--repeats`` such profiles is taken per op. Convs are grouped by what is gated around
them: "stem" (the first conv), "stride-2", "out gated" (input = a block's full input, outputs
gated), "both gated" (inputs are a gated conv's kept outputs too); each group with its share of the
time and its effective GFLOP/s (2 x the MACs of the kept channels, fvcore conventions, from the
same images' gate decisions). Non-conv ops (gates, pooling, shortcuts, the classifier) are grouped by
kind. Timing by op adds a clock read per op, so the total is a little above an untimed call.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import dyninfer
from dyninfer import checkpoint
from dyninfer.bench import cpu_model
from dyninfer.flops import count_macs
from dyninfer.nn import gates


def conv_group(name: str, stride: int, in_gated: bool) -> str:
    if stride > 1:
        return "stride-2 convs"
    return "both gated" if in_gated else "out gated"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args()
    if not args.checkpoint.is_file():
        print(f"error: checkpoint {args.checkpoint} does not exist", file=sys.stderr)
        return 2
    if args.batch < 1 or args.runs < 1 or args.repeats < 1:
        print("error: --batch, --runs and --repeats must be at least 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    meta = checkpoint.read_metadata(args.checkpoint)
    dataset = meta["config"].get("train", {}).get("dataset", "digits")
    model = checkpoint.load_model(args.checkpoint)
    if not gates(model):
        print(f"error: {args.checkpoint} has no gates: profile a gated checkpoint", file=sys.stderr)
        return 2
    from dyninfer.data import load_dataset

    test = load_dataset(dataset, split="test")
    if len(test) < args.batch:
        print(f"error: --batch {args.batch} is more than the {len(test)} test images of {dataset}", file=sys.stderr)
        return 2
    x = torch.stack([test[i][0] for i in range(args.batch)]).contiguous()
    engine = dyninfer.compile(model)
    for _ in range(20):
        engine(x)
    profiles = [engine.profile_ops(x, runs=args.runs) for _ in range(args.repeats)]
    t = {k: statistics.median(p[k] for p in profiles) for k in profiles[0]}

    # which convs read a gated conv's kept outputs: the convs right after a gated conv in a block
    # (conv2 of a basic block, conv2/conv3 of a bottleneck) — their module's previous conv is gated
    rep = count_macs(model, x)
    layer = {l.name: l for l in rep.layers}
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    gated_out = {n for n, _ in convs if f"{n}_gate" in layer}
    first = convs[0][0]
    groups: dict[str, list[float]] = {}
    for k, sec in t.items():
        if k.startswith("conv:"):
            name = k[5:]
            mod = dict(convs)[name]
            parent, _, leaf = name.rpartition(".")
            prev = None
            for n, _ in convs:  # the conv before this one in the same block
                if n.rpartition(".")[0] == parent and n < name:
                    prev = n
            kind = "stem" if name == first else conv_group(name, mod.stride[0], prev in gated_out)
            macs = float(layer[name].effective.double().sum())
        else:
            kind, macs = k.split(":")[0].split("#")[0], 0.0
        g = groups.setdefault(kind, [0.0, 0.0])
        g[0] += sec
        g[1] += macs
    total = sum(t.values())
    print(f"{args.checkpoint.name} ({dataset}), batch {args.batch}, one thread, {cpu_model()}, isa {engine.isa}; "
          f"sum of op times {total * 1e3:.3f} ms")
    rows = []
    for kind, (sec, macs) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        gf = 2 * macs / sec / 1e9 if macs else None
        rows.append({"kind": kind, "ms": sec * 1e3, "share": sec / total, "gflops": gf})
        print(f"  {kind:16s} {sec * 1e3:8.3f} ms {100 * sec / total:5.1f}%" + (f"  {gf:6.1f} GFLOP/s" if gf else ""))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "dataset": dataset, "batch": args.batch,
                                        "cpu": cpu_model(), "isa": engine.isa, "total_ms": total * 1e3,
                                        "rows": rows, "command": " ".join(sys.argv)}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
