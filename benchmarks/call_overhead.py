"""Fixed cost of one engine call from Python, by entry point, on a plan with almost no work
(one 3->4 channel 3x3 conv on 8x8 and a 10-way linear layer), one thread, batch 1.

    python benchmarks/call_overhead.py [--calls 5000]

engine(x) goes through dyninfer._C.run (pybind); plan.run is the TorchScript method of the
same plan and torch.ops.dyninfer.run the dispatcher op, both also usable from TorchScript."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import dyninfer


def median_us(fn, calls: int) -> float:
    for _ in range(200):
        fn()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()
    engine = dyninfer.compile(model, input_shape=(3, 8, 8))
    x = torch.randn(1, 3, 8, 8)
    rows = {
        "engine(x)  [dyninfer._C.run]": lambda: engine(x),
        "plan.run  [TorchScript method]": lambda: engine.plan.run(x, False, False),
        "torch.ops.dyninfer.run": lambda: torch.ops.dyninfer.run(engine.plan, x, False, False),
    }
    print(f"one thread, batch 1, median of {args.calls} calls; isa {engine.isa}")
    for name, fn in rows.items():
        print(f"  {name:<32} {median_us(fn, args.calls):7.2f} us")


if __name__ == "__main__":
    main()
