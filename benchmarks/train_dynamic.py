"""Train dynamic (input-dependent) gated models and their static-mask baselines at equal MACs.

    python benchmarks/train_dynamic.py --model resnet56 --dataset digits --ratios 0.5 \
        --ship 0.5 dyninfer/assets/resnet56_digits_dynamic.safetensors [--resume]

Stages, each a `dyninfer.train` run in its own folder under --out-dir, each resumable:
  dense/          the dense model (the init of everything below)
  gated_r<R>/     the dynamic recipe (dyninfer.losses.LossConfig defaults) with target ratio R
  static_r<R>/    the static baseline of that model: every gate frozen to ONE mask, the filters that
                  fire most often for gated_r<R> on the training split at its per-layer densities,
                  scaled until the mask costs gated_r<R>'s mean MACs (TrainConfig.static_from,
                  static_match_macs), weights from the same dense model, the same epochs,
                  learning rate and schedule (the same budget), cross-entropy only.
With --resume a stopped run continues where it stopped (finished stages are skipped); without it
every stage starts afresh. summary.json and acc_vs_macs.png (accuracy against effective MACs,
dynamic vs static) are rewritten at the end; --ship R PATH copies gated_r<R>'s final checkpoint
to PATH with its figures in the metadata.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dyninfer import checkpoint
from dyninfer.train import TrainConfig, train


def _row(result, dense_acc: float) -> dict:
    f = result.final
    row = {"test_acc": f["test_acc"], "dense_test_acc": dense_acc, "macs_effective": f["macs_effective"],
           "macs_dense": f["macs_dense"], "macs_ratio": f["macs_effective"] / f["macs_dense"],
           "density_mean": f.get("density_mean"), "epochs": len(result.history),
           "checkpoint": str(result.last_path)}
    if "conditionality" in f:
        c = f["conditionality"]
        row["conditionality"] = {k: c[k] for k in ("dynamic_share", "path_entropy_per_filter", "hamming_same",
                                                    "hamming_diff", "static_accuracy", "static_drop", "histogram")}
    return row


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kind, marker in (("dynamic", "o"), ("static", "s")):
        pts = sorted((r["macs_ratio"], 100 * r["test_acc"]) for r in summary["runs"].values() if r["kind"] == kind)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=f"{kind} paths" if kind == "dynamic" else "static mask, fine-tuned")
    ax.axhline(100 * summary["dense"]["test_acc"], color="grey", ls="--", label="dense")
    ax.set_xlabel("effective MACs / dense MACs (per sample, gates included)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{summary['model']} on {summary['dataset']}: dynamic vs static at equal MACs", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--dense-epochs", type=int, default=30)
    ap.add_argument("--dense-checkpoint", default=None, help="start from this dense checkpoint instead of "
                    "training dense/ (e.g. dyninfer/assets/resnet56_digits_dense.safetensors)")
    ap.add_argument("--epochs", type=int, default=30, help="epochs of each gated and each static run")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5], help="target keep ratios R of the gated runs")
    ap.add_argument("--no-static", dest="static", action="store_false", help="skip the static baselines")
    ap.add_argument("--recipe", default="{}", help="JSON of TrainConfig loss/gate fields overriding the recipe "
                    "defaults, e.g. '{\"lambda_bs\": 0.5}'")
    ap.add_argument("--distill", type=float, default=0.0, help="weight of knowledge distillation from the dense "
                    "model, in every gated AND every static run (TrainConfig.distill); 0: off")
    ap.add_argument("--ship", nargs=2, metavar=("R", "PATH"), default=None,
                    help="copy gated_r<R>'s final checkpoint to PATH")
    ap.add_argument("--out-dir", default=None, help="default runs/dynamic/<model>_<dataset>")
    ap.add_argument("--resume", action="store_true", help="continue a stopped run; finished stages are skipped")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off", help="train under CPU bf16 autocast "
                    "(about 1.5-2x faster where the CPU has AMX or AVX512_BF16; evaluation stays FP32)")
    ap.add_argument("--dense-only", action="store_true", help="run (or resume) the dense stage only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--train-subset", type=int, default=None, help="(smoke tests) a seeded subset of the training split")
    ap.add_argument("--test-subset", type=int, default=None, help="(smoke tests) the first images of the test split")
    args = ap.parse_args(argv)
    recipe = json.loads(args.recipe)
    out = Path(args.out_dir or f"runs/dynamic/{args.model}_{args.dataset}")
    t0 = time.perf_counter()
    common = dict(model=args.model, dataset=args.dataset, data_root=args.data_root, seed=args.seed,
                  batch_size=args.batch_size, threads=args.threads, resume=args.resume, progress=args.progress,
                  train_subset=args.train_subset, test_subset=args.test_subset, autocast=args.autocast)
    if args.dense_checkpoint:
        meta = checkpoint.read_metadata(args.dense_checkpoint)
        dense_path, dense_acc = Path(args.dense_checkpoint), meta["metrics"]["test_acc"]
        dense_info = {"test_acc": dense_acc, "macs_dense": meta["metrics"].get("macs_dense"),
                      "epochs": meta["metrics"].get("epochs"), "checkpoint": str(dense_path)}
    else:
        dense = train(TrainConfig(gated=False, epochs=args.dense_epochs, lr=args.lr, out_dir=str(out / "dense"),
                                  **common))
        dense_path, dense_acc = dense.last_path, dense.final["test_acc"]
        dense_info = {"test_acc": dense_acc, "macs_dense": dense.final["macs_dense"], "epochs": args.dense_epochs,
                      "checkpoint": str(dense_path)}
    if args.dense_only:
        print(f"dense stage done: test_acc {dense_acc:.4f}, {dense_path}")
        return
    kd = dict(distill=args.distill, teacher_checkpoint=str(dense_path)) if args.distill > 0 else {}
    summary = {"model": args.model, "dataset": args.dataset, "recipe": recipe, "distill": args.distill, "dense": dense_info, "runs": {}}
    gated_paths = {}
    for r in args.ratios:
        tag = f"r{r:g}"
        gated = train(TrainConfig(gated=True, epochs=args.epochs, lr=args.lr, target_ratio=r,
                                  init_checkpoint=str(dense_path), out_dir=str(out / f"gated_{tag}"),
                                  **kd, **recipe, **common))
        gated_paths[r] = gated.last_path
        summary["runs"][f"gated_{tag}"] = {"kind": "dynamic", "target_ratio": r, **_row(gated, dense_acc)}
        if args.static:
            static = train(TrainConfig(gated=True, epochs=args.epochs, lr=args.lr, init_checkpoint=str(dense_path),
                                       static_from=str(gated.last_path), freeze_gates=True, lambda_mi=0.0,
                                       lambda_kl=0.0, lambda_s=0.0, lambda_bs=0.0, lambda_rt=0.0,  # CE only
                                       static_eval=False,
                                       out_dir=str(out / f"static_{tag}"), **kd, **common))
            summary["runs"][f"static_{tag}"] = {"kind": "static", "target_ratio": r, **_row(static, dense_acc)}
    summary["seconds_this_invocation"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, out / "acc_vs_macs.png")
    print(json.dumps({k: {kk: v[kk] for kk in ("kind", "test_acc", "macs_ratio")} for k, v in summary["runs"].items()},
                     indent=1))
    print(f"wrote {out / 'summary.json'} and {out / 'acc_vs_macs.png'}")
    if args.ship:
        r, path = float(args.ship[0]), Path(args.ship[1])
        if r not in gated_paths:
            raise SystemExit(f"--ship {args.ship[0]}: no gated run with that ratio (ratios: {args.ratios})")
        state, config = checkpoint.load_checkpoint(gated_paths[r])
        row = summary["runs"][f"gated_r{r:g}"]
        metrics = {k: row[k] for k in ("test_acc", "dense_test_acc", "macs_effective", "macs_dense", "macs_ratio",
                                        "density_mean", "conditionality")}
        static_row = summary["runs"].get(f"static_r{r:g}")
        if static_row:
            metrics["static_baseline"] = {k: static_row[k] for k in ("test_acc", "macs_ratio")}
        checkpoint.save_checkpoint(path, state, config, metrics)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
