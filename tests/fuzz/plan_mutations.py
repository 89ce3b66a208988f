"""Seeded mutations of a compiled plan, each built with torch.classes.dyninfer.Plan and run once.

    python tests/fuzz/plan_mutations.py [--count 1000] [--seed 0] [--model resnet20]
    (--model families: the tiny net of fuzz/make_corpus.py with grouped / depthwise convs and SE)

Mutations: 1-3 int fields of the meta or ops list set to an edge value (0, -1, 1, a neighbour of
the old value, 2**31 - 1, -2**31, 2**62, a valid buffer/weight index of another op), truncation of
either list, a weight tensor of another size. A rejected plan raises a Python exception; that is
fine. A crash (SIGSEGV, abort) kills this process: tests/test_plan_fuzz.py runs it in a subprocess
and reports the seed of the last mutation started (printed before each run).
"""
from __future__ import annotations

import argparse
import random
import sys

import torch


def mutate(rng: random.Random, meta: list[int], ops: list[int], weights: list[torch.Tensor]):
    meta, ops, weights = list(meta), list(ops), list(weights)
    what = rng.random()
    if what < 0.08:
        target = meta if rng.random() < 0.5 else ops
        del target[rng.randrange(len(target)):]
        return meta, ops, weights, "truncate"
    if what < 0.13 and weights:
        i = rng.randrange(len(weights))
        n = max(0, weights[i].numel() + rng.choice([-1, 1, -weights[i].numel()]))
        weights[i] = torch.zeros(n)
        return meta, ops, weights, f"weight {i} -> {n} values"
    desc = []
    for _ in range(rng.randint(1, 3)):
        target, name = (meta, "meta") if rng.random() < 0.3 else (ops, "ops")
        j = rng.randrange(len(target))
        old = target[j]
        new = rng.choice([0, -1, 1, old - 1, old + 1, 2 ** 31 - 1, -2 ** 31, 2 ** 62, -2 ** 62, old * 2,
                          rng.randrange(-4, 64), rng.randrange(len(weights) + 2)])
        target[j] = new
        desc.append(f"{name}[{j}] {old} -> {new}")
    return meta, ops, weights, "; ".join(desc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--start", type=int, default=0, help="first mutation (to go on after a crash)")
    args = ap.parse_args(argv)
    from dyninfer._ext import load_extension

    load_extension()
    from dyninfer.compiler.planner import build_plan
    from dyninfer.models import create_model

    torch.manual_seed(0)
    if args.model == "families":
        from pathlib import Path
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))
        from make_corpus import families_model
        model = families_model(gated=True)
    else:
        model = create_model(args.model, gated=True).eval()
    spec = build_plan(model, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    counts = {"rejected": 0, "ran": 0}
    for k in range(args.start, args.count):
        seed = args.seed * 1_000_003 + k
        meta, ops, weights, desc = mutate(random.Random(seed), spec.meta, spec.ops, spec.weights)
        print(f"seed {seed}: {desc}", flush=True)
        try:
            plan = torch.classes.dyninfer.Plan(meta, ops, weights, spec.conv_names)
            plan.run(x, True, False)
            counts["ran"] += 1
        except Exception:  # rejected with an error: what a bad plan must do
            counts["rejected"] += 1
    print(f"done: {args.count - args.start} mutations, {counts['rejected']} rejected, {counts['ran']} ran", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
