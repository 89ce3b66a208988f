"""Command line: ``dyninfer <subcommand>`` (also ``python -m dyninfer``).

    dyninfer train [--model resnet20 --dataset digits ... every TrainConfig field as a flag]
    dyninfer demo  [--out-dir runs/demo]    dense then gated ResNet-20 on digits, summary table,
                                            then the compiled engine: dense vs gated latency
    dyninfer compile CHECKPOINT [--check]   compile a checkpoint, verify it against PyTorch
    dyninfer bench (--model NAME | --checkpoint PATH) [--batch-sizes 1 8] [--threads 1 2] [--runs N]
                   [--out FILE] [--force-keep F] [--sweep 1 0.75 0.5 0.25] [--plots DIR] [--no-progress]
                                            peers side by side (dyninfer.bench), figures (dyninfer.bench_plots)
    dyninfer analyze [--checkpoint PATH] [--dense-checkpoint PATH | --no-dense] [--out-dir DIR]
                                            paths, filter states, t-SNE, occlusion, adversarial
                                            detection (dyninfer.analysis): PNGs, JSON, report.md

Subcommands are registered in ``SUBCOMMANDS`` (name -> (help, add_arguments, run)); add
``compile``, ``bench``, ``analyze`` with ``register_subcommand`` next to the existing ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any, Callable

__all__ = ["main", "build_parser", "register_subcommand", "SUBCOMMANDS", "demo", "DEMO_SETTINGS"]

SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def register_subcommand(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                        run: Callable[[argparse.Namespace], int]) -> None:
    """Add ``dyninfer <name>``: ``add_arguments(parser)`` declares its flags, ``run(args)`` returns
    the exit code."""
    if name in SUBCOMMANDS:
        raise ValueError(f"subcommand '{name}' is already registered")
    SUBCOMMANDS[name] = (help, add_arguments, run)


# ---------------------------------------------------------------------------------------------
# train


_TRAIN_HELP = {
    "model": "registered model name (dyninfer.models.list_models())",
    "dataset": "digits (embedded), fashion_mnist (Debian package dataset-fashion-mnist), cifar10, cifar100 or imagefolder",
    "data_root": "folder of cifar10/cifar100 pickles, of Fashion-MNIST IDX files, or of an ImageFolder tree",
    "milestones": "fractions of the epochs where the lr is multiplied by --gamma",
    "gate_weight_decay": "weight decay of gate parameters and W_cla (default 0: none)",
    "gated": "train the decoupled (gated) model (--no-gated: dense)",
    "reduction": "gate bottleneck ratio (gamma in the paper)",
    "preset": "loss preset from dyninfer.losses (preset name or model name); lambda flags override it",
    "target_ratio": "R: target fraction of kept channels per layer (0: learn freely)",
    "lambda_bs": "weight of batch-shaping (rewards gates that are on for some inputs and off for others)",
    "lambda_rt": "weight of the response-target term (gates fit each sample's strongest channels)",
    "kl_reduction": "mean (KL / channels, the reference code's reduction) or sum",
    "budget": "sample (every input keeps R of each layer's filters), batch (R binds the batch mean) or difficulty (per-input ratios from the task loss: hard inputs keep more)",
    "gate_init": "input (W1 Kaiming: input-dependent from the start) or open (W1 = 0: the paper's VGG init)",
    "freeze_gates": "do not train the gate parameters",
    "static_from": "static-mask baseline: freeze every gate to the most frequent filters of this gated checkpoint",
    "static_match_macs": "with --static-from: scale the mask's per-layer densities until it costs the gated checkpoint's mean MACs",
    "bs_decay": "batch-shaping weight decays linearly to 0 over this fraction of the epochs",
    "rt_decay": "response-target weight decays linearly to 0 over this fraction of the epochs",
    "teacher_checkpoint": "dense checkpoint of the same model to distil from (with --distill)",
    "distill": "weight of knowledge distillation from --teacher-checkpoint (T = 4); 0: off",
    "hard_gates_from": "from this fraction of the epochs on, gates train on their eval decisions (no noise)",
    "freeze_gates_from": "from this fraction of the epochs on, gates are frozen and only the task loss trains the weights",
    "core_ratio": "static core: this share of each layer's filters (strongest mean responses) is on for every input; the gates choose among the rest",
    "static_layers": "comma-separated gate path prefixes (e.g. layer1) whose gates are frozen to one static mask of R of their filters (strongest mean responses); the others stay dynamic",
    "detach_gate_input": "gates read their inputs detached: the decoupling losses train the gates only, the backbone trains on the task loss",
    "boost_gates": "boosted gates: each kept channel is scaled per input by 2*sigmoid(gate logit), in (1, 2)",
    "autocast": "bf16: train under CPU bf16 autocast (faster with AMX / AVX512_BF16); off: FP32",
    "static_eval": "each epoch, also the accuracy on the static majority path",
    "resume": "continue from OUT_DIR/resume.pt (saved after every epoch) when it exists",
    "init_checkpoint": "start from this checkpoint (a dense one initialises a gated model)",
    "dense_epochs": "epochs of the dense pre-training done when gated without --init-checkpoint",
    "threads": "torch threads per process (default: cores / processes)",
    "train_subset": "train on a seeded random subset of this many samples",
    "test_subset": "evaluate on the first this many test samples",
    "macs_samples": "test images whose effective MACs are counted each epoch",
}


def _field_type(tp: Any) -> tuple[Any, bool]:
    """(scalar type, is optional) of a TrainConfig annotation."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0], True
    return tp, False


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        tp, optional = _field_type(hints[f.name])
        help_ = _TRAIN_HELP.get(f.name, "") + f" (default: {f.default})"
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        elif typing.get_origin(tp) is tuple:
            p.add_argument(flag, type=float, nargs="+", default=list(f.default), help=help_)
        elif optional and f.default is not None:  # e.g. --hard-gates-from none turns the step off
            p.add_argument(flag, type=_none_or(tp), default=f.default, help=help_ + "; 'none' turns it off")
        else:
            p.add_argument(flag, type=tp, default=f.default, help=help_)


def _none_or(tp):
    def parse(v: str):
        return None if v.lower() == "none" else tp(v)
    parse.__name__ = tp.__name__  # argparse names the type in its error messages
    return parse


def _config_from_args(args: argparse.Namespace):
    from .train import TrainConfig

    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    kwargs["milestones"] = tuple(kwargs["milestones"])
    return TrainConfig(**kwargs)


def _run_train(args: argparse.Namespace) -> int:
    from .train import train

    try:
        cfg = _config_from_args(args)
    except ValueError as exc:
        print(f"dyninfer train: {exc}", file=sys.stderr)
        return 2
    result = train(cfg)
    if result.last_path is not None:  # rank 0
        f = result.final
        msg = f"done in {result.seconds:.0f}s: test_acc {f['test_acc']:.4f}"
        if "density_mean" in f:
            msg += f", density {f['density_mean']:.3f}"
        msg += f", MACs {f['macs_effective'] / 1e6:.2f}M of {f['macs_dense'] / 1e6:.2f}M; checkpoints {result.last_path}, {result.best_path}"
        print(msg)
    return 0


# ---------------------------------------------------------------------------------------------
# demo

# Settings of `dyninfer demo` (ResNet-20 on digits), chosen so the whole demo takes a few minutes
# on 2 cores. The gated run uses the dynamic recipe (dyninfer.losses.LossConfig's defaults, the
# default of `dyninfer train --gated`); README "Dynamic gates" records what it gave and how the
# recipe was chosen.
DEMO_SETTINGS: dict[str, Any] = {
    "model": "resnet20",
    "dataset": "digits",
    "dense": {"epochs": 15, "lr": 0.1},
    "gated": {"epochs": 30, "lr": 0.1},
}


def _demo_engine_step(dense_model, gated_model, runs: int = 200) -> dict[str, Any]:
    """Compile the trained gated model with the C++ engine, check it against PyTorch on the whole
    digits test split, and time dense vs gated inference side by side (1 thread, batch 1, median
    of ``runs`` rounds over 32 test images)."""
    import statistics

    import torch

    from .data import load_dataset
    from .engine import compile as engine_compile

    test = load_dataset("digits", split="test")
    X = torch.stack([test[i][0] for i in range(len(test))])
    dense_model.eval()
    gated_model.eval()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        eng_dense = engine_compile(gated_model, gates="open")
        eng_gated = engine_compile(gated_model)
        with torch.no_grad():
            ref = gated_model(X)
        out = eng_gated(X)
        rel = ((out - ref).abs().max() / ref.abs().max()).item()
        agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
        xs = [X[i:i + 1].contiguous() for i in range(32)]
        runners = {"pytorch eager (dense)": lambda t: dense_model(t),
                   "dyninfer dense mode": eng_dense, "dyninfer gated": eng_gated}
        times: dict[str, list[float]] = {k: [] for k in runners}
        with torch.no_grad():
            for fn in runners.values():
                for x in xs[:10]:
                    fn(x)
            for r in range(runs):
                x = xs[r % len(xs)]
                for name, fn in runners.items():
                    t0 = time.perf_counter()
                    fn(x)
                    times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old_threads)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    base = med["pytorch eager (dense)"]
    print(f"\n[engine] compiled gated model vs PyTorch on {len(X)} test images: max |diff| / max |logit| = "
          f"{rel:.2e}, same prediction for {100 * agree:.1f}%")
    print(f"[engine] latency, batch 1, 1 thread, median of {runs} side-by-side rounds (isa {eng_gated.isa}):")
    for name, m in med.items():
        print(f"  {name:<24} {m:8.3f} ms   {base / m:5.2f}x vs PyTorch eager")
    print(f"  gated vs dense mode: {med['dyninfer dense mode'] / med['dyninfer gated']:.2f}x faster")
    return {"status": "ok", "isa": eng_gated.isa, "max_rel_diff": rel, "prediction_agreement": agree,
            "median_ms": med, "runs": runs, "threads": 1, "batch": 1}


def _format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'model':<28} {'test acc':>9} {'mean density':>13} {'effective MACs':>15} {'vs dense':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<28} {100 * r['test_acc']:>8.2f}% {r['density_mean']:>13.3f} "
                     f"{r['macs_effective'] / 1e6:>14.2f}M {r['macs_ratio']:>8.3f}x")
    return "\n".join(lines)


def demo(out_dir: str | Path = "runs/demo", seed: int = 0, progress: bool = True,
         settings: dict[str, Any] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Train dense ResNet-20 on digits, then gated ResNet-20 (R = 0.5) initialised from it; print
    the accuracy / density / MACs table, write ``out_dir/summary.json`` and return the summary."""
    from .train import TrainConfig, train

    s = settings or DEMO_SETTINGS
    out = Path(out_dir)
    t0 = time.perf_counter()
    common = dict(model=s["model"], dataset=s["dataset"], seed=seed, progress=progress, threads=threads)
    dense = train(TrainConfig(gated=False, out_dir=str(out / "dense"), **common, **s["dense"]))
    gated = train(TrainConfig(gated=True, init_checkpoint=str(dense.last_path), out_dir=str(out / "gated"),
                              **common, **s["gated"]))
    train_seconds = time.perf_counter() - t0
    # final (last-epoch) models are reported, not the best-on-test epoch
    dense_macs = dense.final["macs_dense"]
    rows = [
        {"model": f"dense {s['model']}", "test_acc": dense.final["test_acc"], "density_mean": 1.0,
         "macs_effective": dense.final["macs_effective"], "macs_ratio": dense.final["macs_effective"] / dense_macs,
         "checkpoint": str(dense.last_path)},
        {"model": f"gated {s['model']} R={gated.loss_config.target_ratio}", "test_acc": gated.final["test_acc"],
         "density_mean": gated.final["density_mean"], "macs_effective": gated.final["macs_effective"],
         "macs_ratio": gated.final["macs_effective"] / dense_macs, "checkpoint": str(gated.last_path),
         "density_per_layer": gated.final["density"]},
    ]
    table = _format_table(rows)
    print("\n" + table)
    cond = gated.final["conditionality"]
    print(f"conditionality of the gated model on the {cond['num_inputs']} test images: "
          f"{100 * cond['dynamic_share']:.1f}% of gated filters dynamic (firing rate in [0.05, 0.95]), path entropy "
          f"{cond['path_entropy_per_filter']:.3f} bits/filter, paths of the same class differ in "
          f"{100 * cond['hamming_same']:.1f}% of bits and of other classes in {100 * cond['hamming_diff']:.1f}%; "
          f"forcing every input onto the static majority path (same density) gives "
          f"{100 * cond['static_accuracy']:.2f}% (the per-input paths are worth {cond['static_drop']:+.2f} points)")
    print("MACs: per sample, counted by dyninfer.flops.count_macs from the eval-mode gate decisions on "
          f"{gated.config.macs_samples} test images (gated row includes the gates' own cost); "
          f"vs dense = effective / dense-model MACs.")
    print(f"training took {train_seconds:.0f}s")
    engine = _demo_engine_step(dense.model, gated.model)
    summary = {"rows": rows, "table": table, "settings": s, "seed": seed, "train_seconds": train_seconds,
               "conditionality": cond,
               "threads": dense.extra.get("threads"),
               "total_seconds": time.perf_counter() - t0, "engine": engine,
               "accuracy_drop_points": 100 * (dense.final["test_acc"] - gated.final["test_acc"])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary written to {out / 'summary.json'}")
    return summary


def _add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="runs/demo", help="where checkpoints, logs and summary.json go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm bars")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: all available cores). On a machine shared with other busy "
                        "processes 1 thread can be several times faster than an oversubscribed 2")


def _run_demo(args: argparse.Namespace) -> int:
    demo(args.out_dir, seed=args.seed, progress=args.progress, threads=args.threads)
    return 0


def _add_compile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a dyninfer checkpoint (.safetensors) of a registered gated model")
    p.add_argument("--gates", choices=["learned", "open"], default="learned", help="open: dense mode")
    p.add_argument("--runs", type=int, default=200, help="timed calls (batch 1, 1 thread)")


def _run_compile(args: argparse.Namespace) -> int:
    import statistics

    import torch

    from .checkpoint import load_model
    from .engine import compile as engine_compile
    from .models import model_info

    model = load_model(args.checkpoint)
    engine = engine_compile(model, gates=args.gates)
    print(engine)
    c, h, w = model_info(model.dyninfer_name).input_size
    x = torch.randn(8, c, h, w)
    with torch.no_grad():
        ref = model(x) if args.gates == "learned" else None
    out = engine(x)
    if ref is not None:
        print(f"max |engine - pytorch| / max |pytorch| on random inputs: "
              f"{((out - ref).abs().max() / ref.abs().max()).item():.2e}")
    torch.set_num_threads(1)
    x1 = x[:1].contiguous()
    for _ in range(20):
        engine(x1)
    ts = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        engine(x1)
        ts.append(time.perf_counter() - t0)
    print(f"median latency (batch 1, 1 thread, {args.runs} runs): {statistics.median(ts) * 1e3:.3f} ms")
    return 0


def _add_bench_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="registered model name, random init (untrained: gates open unless "
                     "--force-keep)")
    src.add_argument("--checkpoint", help="a dyninfer checkpoint (.safetensors)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=None, help="torch/peer threads per setting "
                   "(default: 1 and all cores)")
    p.add_argument("--runs", type=int, default=200, help="timed calls per runner and setting (>= 200 at batch 1)")
    p.add_argument("--peers", nargs="+", default=None, help="subset of pytorch torchscript onnxruntime openvino "
                   "torch-compile dyninfer-dense dyninfer-gated openvino-default dyninfer-bf16-dense dyninfer-bf16 "
                   "(default: all)")
    p.add_argument("--out", default=None, help="JSON file (default: runs/bench/<model>.json)")
    p.add_argument("--force-keep", type=float, default=None, help="every gated layer keeps this fraction of "
                   "its channels (highest gate logits)")
    p.add_argument("--sweep", type=float, nargs="*", default=None, help="force_keep values of the engine's "
                   "density sweep (default: 1 0.75 0.5 0.25; give none to skip it)")
    p.add_argument("--plots", default=None, metavar="DIR", help="also write the PNG figures here "
                   "(dyninfer.bench_plots)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import DEFAULT_SWEEP, PEERS, run_bench

    source = args.model or args.checkpoint
    out = args.out or str(Path("runs") / "bench" / f"{Path(source).stem}.json")
    # the exact command, rebuilt from the parsed flags (defaults spelled out)
    cmd = ["dyninfer bench", f"--model {args.model}" if args.model else f"--checkpoint {args.checkpoint}",
           "--batch-sizes " + " ".join(map(str, args.batch_sizes))]
    if args.threads:
        cmd.append("--threads " + " ".join(map(str, args.threads)))
    cmd += [f"--runs {args.runs}", f"--out {out}"]
    if args.peers:
        cmd.append("--peers " + " ".join(args.peers))
    if args.force_keep is not None:
        cmd.append(f"--force-keep {args.force_keep}")
    sweep = DEFAULT_SWEEP if args.sweep is None else tuple(args.sweep)
    if args.sweep is not None:
        cmd.append("--sweep " + " ".join(map(str, args.sweep)) if args.sweep else "--sweep")
    if args.plots:
        cmd.append(f"--plots {args.plots}")
    if not args.progress:
        cmd.append("--no-progress")
    run_bench(source, batch_sizes=args.batch_sizes, threads=args.threads, runs=args.runs,
              peers=args.peers or PEERS, out=out, progress=args.progress, force_keep=args.force_keep,
              command=" ".join(cmd), sweep=sweep)
    print(f"wrote {out}")
    if args.plots:
        from .bench_plots import plot_bench
        for path in plot_bench(out, args.plots):
            print(f"wrote {path}")
    return 0


register_subcommand("train", "train a dense or gated model (torchrun-aware)", _add_train_arguments, _run_train)
register_subcommand("compile", "compile a checkpoint with the C++ engine, check and time it", _add_compile_arguments,
                    _run_compile)
register_subcommand("demo", "dense vs gated ResNet-20 on the embedded digits data", _add_demo_arguments, _run_demo)
register_subcommand("bench", "time dyninfer against dense CPU runtimes side by side, write JSON", _add_bench_arguments,
                    _run_bench)

from .analysis.cli import add_analyze_arguments, run_analyze  # noqa: E402  (light: argparse only)

register_subcommand("analyze", "calculation paths: filter states, t-SNE, occlusion, adversarial detection",
                    add_analyze_arguments, run_analyze)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dyninfer", description="Interpretable neural network decoupling: "
                                     "training and dynamic inference")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (help_, add_arguments, _) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. Errors about the user's input (a missing or corrupt checkpoint or data
    set, an unsupported layer, a bad value) end with a one-line message and exit status 2 instead
    of a traceback; anything else is a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import DatasetError
    from .errors import ExtensionLoadError, UnsupportedLayerError
    try:
        return SUBCOMMANDS[args.command][2](args)
    except (CheckpointError, DatasetError, UnsupportedLayerError, ExtensionLoadError, FileNotFoundError,
            ValueError) as exc:
        print(f"dyninfer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
