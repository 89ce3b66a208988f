"""Which terms make the gates dynamic: the recipe against the paper's objective and its own parts.

    python benchmarks/recipe_ablation.py [--model resnet20] [--dataset digits] [--epochs 30] [--resume]

Every variant starts from the same dense model (trained first into OUT/dense, or --dense-checkpoint)
and trains for the same epochs, learning rate and schedule; only the gate initialisation and the
loss terms differ (VARIANTS). Prints and writes OUT/ablation.json and OUT/ablation.md: test
accuracy, density, effective MACs, share of dynamic filters, path entropy, same/other-class
Hamming distance, and the accuracy when every input is forced onto the static majority path.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dyninfer import checkpoint
from dyninfer.train import TrainConfig, train

# name -> (what it tests, TrainConfig overrides); all at target ratio R = 0.5
VARIANTS: dict[str, tuple[str, dict]] = {
    "paper": ("the paper's objective as dyninfer shipped it before: open gates (W1 = 0), λm = 0.01, λk = 0, "
              "λs = 0.02, no batch-shaping or response targets, SemHash to the end",
              dict(preset="resnet56_cifar", gate_init="open", lambda_kl=0.0, lambda_s=0.02, hard_gates_from=None,
                   rt_decay=None)),
    "bs": ("input-dependent init, channel-mean KL (λk = 1), batch-shaping λbs = 1 constant, no response targets",
           dict(lambda_mi=0.01, lambda_kl=1.0, lambda_bs=1.0, lambda_rt=0.0, bs_decay=None)),
    "rt": ("input-dependent init, response targets λrt = 1 constant, no batch-shaping",
           dict(lambda_mi=0.05, lambda_kl=0.0, lambda_bs=0.0, lambda_rt=1.0, rt_decay=None)),
    "recipe_v1": ("the earlier recipe: response targets constant, batch-shaping annealed, hard gates from 75%",
                  dict(rt_decay=None, hard_gates_from=0.75)),
    "hard_half": ("as recipe_v1 with hard gates from 50%", dict(rt_decay=None)),
    "recipe": ("the recipe (defaults): response targets annealed over 50%, batch-shaping over 75%, hard gates "
               "from 50%", dict()),
    "distill": ("the recipe + distillation from the dense model (weight 1, T = 4)", dict(distill=1.0)),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--dense-epochs", type=int, default=15)
    ap.add_argument("--dense-checkpoint", default=None)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out-dir", default=None, help="default runs/ablation/<model>_<dataset>")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    out = Path(args.out_dir or f"runs/ablation/{args.model}_{args.dataset}")
    common = dict(model=args.model, dataset=args.dataset, data_root=args.data_root, batch_size=args.batch_size,
                  threads=args.threads, resume=args.resume, progress=args.progress)
    if args.dense_checkpoint:
        dense_path = Path(args.dense_checkpoint)
        dense_acc = checkpoint.read_metadata(dense_path)["metrics"]["test_acc"]
    else:
        dense = train(TrainConfig(gated=False, epochs=args.dense_epochs, lr=args.lr, out_dir=str(out / "dense"),
                                  **common))
        dense_path, dense_acc = dense.last_path, dense.final["test_acc"]
    rows = {}
    for name in args.variants:
        what, overrides = VARIANTS[name]
        if overrides.get("distill"):
            overrides = {**overrides, "teacher_checkpoint": str(dense_path)}
        r = train(TrainConfig(gated=True, epochs=args.epochs, lr=args.lr, target_ratio=0.5,
                              init_checkpoint=str(dense_path), out_dir=str(out / name), **overrides, **common))
        f, c = r.final, r.final["conditionality"]
        rows[name] = {"what": what, "overrides": overrides, "test_acc": f["test_acc"],
                      "density": f["density_mean"], "macs_ratio": f["macs_effective"] / f["macs_dense"],
                      **{k: c[k] for k in ("dynamic_share", "path_entropy_per_filter", "hamming_same",
                                           "hamming_diff", "static_accuracy", "static_drop")}}
    result = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs, "dense_test_acc": dense_acc,
              "rows": rows}
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"dense {args.model} on {args.dataset}: {100 * dense_acc:.2f}%", "",
             "| variant | test acc | MACs / dense | dynamic filters | entropy (bits/filter) | Hamming same / other class "
             "| static majority path | paths worth |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['test_acc']:.2f}% | {r['macs_ratio']:.3f} | {100 * r['dynamic_share']:.1f}% "
                     f"| {r['path_entropy_per_filter']:.3f} | {100 * r['hamming_same']:.1f}% / "
                     f"{100 * r['hamming_diff']:.1f}% | {100 * r['static_accuracy']:.2f}% | {r['static_drop']:+.2f} pts |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
