"""Two builds of dyninfer side by side: are their results bit-identical, and is the new one slower?

    python benchmarks/compare_builds.py --old /tmp/dyninfer_old --new . --out benchmarks/results/compare_builds.json

``--old`` and ``--new`` are source trees with their extensions built in place
(``python setup.py build_ext --inplace``), e.g. a ``git worktree`` of an earlier commit. Each
measurement runs in a fresh subprocess that imports dyninfer from one tree only (two builds of
the same extension cannot share a process); old and new alternate, one torch thread each.

For every registered model (BN statistics and gates randomised with a fixed seed, so both builds
compile the same network, gates learned: each sample keeps about half of its channels) and for the
shipped dynamic checkpoints (the new tree's files, compiled by both builds), the script compares
logits and gate paths bit for bit (where they differ: whether the paths are equal and the largest logit
difference relative to the largest logit), then times the engine: per round and build, the median of ``--runs`` calls at batch 1 and at batch 8; the ratio
new / old per round, and the median ratio over ``--rounds`` rounds (> 1: the new build is slower).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHIPPED = ["resnet56_digits_dynamic", "resnet20_fashion_mnist_dynamic"]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _commit(root: Path) -> str:
    """The tree's git commit (with '+changes' when its working tree differs), not its local path."""
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git tree)"


def worker(args: argparse.Namespace) -> None:
    """Runs inside one build's tree: compile, dump outputs, time; prints one JSON line."""
    import time

    import numpy as np
    import torch

    torch.set_num_threads(1)
    import dyninfer

    where = Path(dyninfer.__file__).resolve()
    if Path(args.root).resolve() not in where.parents:
        raise SystemExit(f"compare_builds: imported dyninfer from {where}, not from {args.root}")
    if args.model in SHIPPED:
        from dyninfer.checkpoint import load_model

        # the new tree's file for both builds: the same weights, and an older tree may predate the asset
        asset = Path(args.assets) / f"{args.model}.safetensors"
        model = load_model(asset).eval()
        shape = (3, 32, 32)
    else:
        from dyninfer.models import model_info

        sys.path.insert(0, str(Path(args.root) / "tests"))
        from _models import randomize  # the tree's own test helper: BN statistics and gates at random

        torch.manual_seed(0)
        model = randomize(dyninfer.create_model(args.model), seed=7)
        shape = model_info(args.model).input_size
    engine = dyninfer.compile(model, input_shape=shape)
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(3))
    logits, path = engine(x, return_path=True)
    np.save(Path(args.dump) / "logits.npy", logits.numpy())
    np.save(Path(args.dump) / "path.npy", path.numpy())
    times = {}
    for batch in args.batches:
        xb = x[:batch].contiguous()
        for _ in range(3):
            engine(xb)
        ts = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            engine(xb)
            ts.append(time.perf_counter() - t0)
        times[str(batch)] = statistics.median(ts)
    print(json.dumps({"isa": engine.isa, "times": times}))


def _run_worker(root: Path, model: str, batches: list[int], runs: int, dump: Path, assets: Path) -> dict:
    dump.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--root", str(root), "--model", model,
           "--runs", str(runs), "--dump", str(dump), "--assets", str(assets), "--batches", *map(str, batches)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(root), timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"compare_builds: {model} in {root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, help="source tree of the previous build (extensions built in place)")
    ap.add_argument("--new", type=Path, default=Path("."), help="source tree of the new build (default: .)")
    ap.add_argument("--models", nargs="+", default=None, help="registered models and/or shipped checkpoints "
                    f"(default: every registered model and {', '.join(SHIPPED)})")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--runs", type=int, default=30, help="timed calls per build, round and batch")
    ap.add_argument("--rounds", type=int, default=3, help="old/new alternations per model")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--assets", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.old is None:
        ap.error("--old is required: the source tree of the build to compare against")
    for name, root in (("--old", args.old), ("--new", args.new)):
        if not (root / "dyninfer" / "__init__.py").is_file():
            ap.error(f"{name} {root}: not a dyninfer source tree (no dyninfer/__init__.py)")
        if not list((root / "dyninfer").glob("_C*.so")):
            ap.error(f"{name} {root}: its extension is not built in place; run `python setup.py build_ext --inplace` there")
    if args.runs < 1 or args.rounds < 1 or any(b < 1 for b in args.batches):
        ap.error("--runs, --rounds and --batches must be >= 1")
    sys.path.insert(0, str(args.new.resolve()))
    import numpy as np

    if args.models is None:
        from dyninfer.models import list_models
        args.models = list_models() + SHIPPED
    from tqdm import tqdm

    report = {"cpu": _cpu_name(), "threads": 1, "old": _commit(args.old), "new": _commit(args.new),
              "runs": args.runs, "rounds": args.rounds, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in tqdm(args.models, desc="models", disable=not sys.stderr.isatty()):
            ratios = {str(b): [] for b in args.batches}
            times = {"old": {str(b): [] for b in args.batches}, "new": {str(b): [] for b in args.batches}}
            identical, paths_equal, max_logit_diff = None, None, None
            for r in range(args.rounds):
                got = {}
                for side, root in (("old", args.old), ("new", args.new)) if r % 2 == 0 else (("new", args.new),
                                                                                              ("old", args.old)):
                    got[side] = _run_worker(root.resolve(), model, args.batches, args.runs, Path(tmp) / side / model,
                                            args.new.resolve() / "dyninfer" / "assets")
                for b in map(str, args.batches):
                    times["old"][b].append(got["old"]["times"][b])
                    times["new"][b].append(got["new"]["times"][b])
                    ratios[b].append(got["new"]["times"][b] / got["old"]["times"][b])
                if identical is None:
                    old_l, new_l = (np.load(Path(tmp) / side / model / "logits.npy") for side in ("old", "new"))
                    paths_equal = bool(np.array_equal(np.load(Path(tmp) / "old" / model / "path.npy"),
                                                      np.load(Path(tmp) / "new" / model / "path.npy")))
                    identical = paths_equal and bool(np.array_equal(old_l, new_l))
                    # where not identical: do the gates still choose the same channels, and how far
                    # apart are the logits (relative to their largest magnitude)?
                    max_logit_diff = float(np.abs(old_l - new_l).max() / max(np.abs(old_l).max(), 1e-30))
            entry = {"bit_identical": identical, "paths_equal": paths_equal, "max_rel_logit_diff": max_logit_diff,
                     "isa": got["new"]["isa"],
                     "median_ratio": {b: statistics.median(v) for b, v in ratios.items()},
                     "ratios": ratios, "seconds": times}
            report["models"][model] = entry
            print(f"{model:32s} bit-identical {identical!s:5s} paths equal {paths_equal!s:5s} "
                  f"max rel. logit diff {max_logit_diff:.1e}  " + "  ".join(
                f"b{b}: old {statistics.median(times['old'][b]) * 1e3:7.3f} ms new "
                f"{statistics.median(times['new'][b]) * 1e3:7.3f} ms ratio {entry['median_ratio'][b]:.3f}"
                for b in map(str, args.batches)), flush=True)
    all_ratios = [statistics.median(v) for e in report["models"].values() for v in e["ratios"].values()]
    report["median_ratio_all"] = statistics.median(all_ratios)
    report["all_bit_identical"] = all(e["bit_identical"] for e in report["models"].values())
    print(f"{report['cpu']}, 1 thread: every model bit-identical: {report['all_bit_identical']}; "
          f"median new/old time ratio over models and batches: {report['median_ratio_all']:.3f}")
    if args.out is not None:
        from dyninfer._io import atomic_write_bytes

        atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
        print(f"wrote {args.out}")
    return 0 if report["all_bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
