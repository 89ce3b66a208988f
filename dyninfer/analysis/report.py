"""`dyninfer analyze`: every analysis of this package on one gated checkpoint (and a dense one for
the baselines), written as PNGs, analysis.json and report.md.

    run_analysis(AnalyzeConfig(checkpoint=..., dense_checkpoint=..., out_dir=...)) -> dict

Data: the checkpoint's data set without augmentation; the train split is the reference set (k-NN
fit, activation thresholds of the dense baseline, adversarial detectors' training pool), the test
split is held out for every reported number.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .adversarial import CLASSIFIERS, detection_table, fgsm, pgd
from .embedding import embed_tsne, knn_class_accuracy, plot_embeddings
from .occlusion import Region, filter_receptive_fields, occlude, occlusion_effect, plot_occlusion
from .paths import (activation_thresholds, binarize, collect_activations, collect_paths, save_paths,
                    stack_dataset)
from .conditionality import path_conditionality, static_accuracy, static_path_masks
from .states import filter_states, plot_filter_states

__all__ = ["AnalyzeConfig", "run_analysis", "DEFAULT_CHECKPOINT", "DEFAULT_DENSE_CHECKPOINT"]

_ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_CHECKPOINT = str(_ASSETS / "resnet56_digits_dynamic.safetensors")
DEFAULT_DENSE_CHECKPOINT = str(_ASSETS / "resnet56_digits_dense.safetensors")


@dataclass(frozen=True)
class AnalyzeConfig:
    """Settings of one analysis run; validated on construction (errors name the field)."""

    checkpoint: str = DEFAULT_CHECKPOINT
    dense_checkpoint: str | None = DEFAULT_DENSE_CHECKPOINT  # None: no dense baselines
    data_root: str | None = None  # cifar10/cifar100/imagefolder checkpoints
    out_dir: str = "benchmarks/results/analysis"
    source: str = "engine"  # paths from the compiled engine or from "pytorch"
    eps: float = 0.1  # L∞ attack budget in pixel units ([0, 1] images)
    pgd_steps: int = 5  # step size 2.5·eps/steps (Madry et al.'s rule)
    attack_pool_per_class: int = 10  # training images per class attacked: the detectors' training pool
    adv_test_limit: int = 200  # held-out test images attacked (their clean and adversarial paths are scored)
    test_limit: int | None = None  # held-out images (default: the whole test split)
    train_limit: int | None = None  # reference images (default: the whole train split)
    seeds: int = 5
    knn_k: int = 5
    occlusion_images: int = 20
    occlusion_box: int = 8  # occluding boxes of this side, on a grid of the same stride
    threads: int = 2
    seed: int = 0

    def __post_init__(self):
        if self.source not in ("engine", "pytorch"):
            raise ValueError(f"AnalyzeConfig.source must be 'engine' or 'pytorch', got {self.source!r}")
        if not 0 < self.eps <= 1:
            raise ValueError(f"AnalyzeConfig.eps must lie in (0, 1] (pixel units), got {self.eps}")
        for name in ("pgd_steps", "attack_pool_per_class", "adv_test_limit", "seeds", "knn_k", "occlusion_images",
                     "occlusion_box", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"AnalyzeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.attack_pool_per_class < 10:
            raise ValueError(f"AnalyzeConfig.attack_pool_per_class must be >= 10 (detectors train on up to 10 "
                             f"per class), got {self.attack_pool_per_class}")
        for name in ("test_limit", "train_limit"):
            v = getattr(self, name)
            if v is not None and v < 10:
                raise ValueError(f"AnalyzeConfig.{name} must be >= 10 or None, got {v}")


class _Pixels(nn.Module):
    """model(normalise(x)) for x in [0, 1]: attacks work in pixel units."""

    def __init__(self, model: nn.Module, mean: Tensor, std: Tensor):
        super().__init__()
        self.model, self.mean, self.std = model, mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def _per_class_pool(labels: Tensor, n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in sorted(set(labels.tolist())):
        pool = torch.nonzero(labels == c).flatten()
        if len(pool) < n:
            raise ValueError(f"attack pool: class {c} has {len(pool)} training images, {n} requested")
        idx.append(pool[torch.randperm(len(pool), generator=g)[:n]])
    return torch.cat(idx)


def _fmt(v: float) -> str:
    return f"{100 * v:.1f}%"


def run_analysis(cfg: AnalyzeConfig, progress: bool = True) -> dict[str, Any]:
    from ..checkpoint import load_model, read_metadata
    from ..data import load_dataset
    from ..engine import compile as engine_compile

    def log(msg: str) -> None:
        if progress:
            print(f"[analyze {time.perf_counter() - t0:5.0f}s] {msg}", flush=True)

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(cfg.checkpoint)
    gated = load_model(cfg.checkpoint)
    spec = meta["config"]["model"]
    if not spec["gated"]:
        raise ValueError(f"{cfg.checkpoint}: a dense checkpoint has no calculation paths; pass a gated one "
                         f"(and the dense one as the baseline)")
    dataset = meta["config"].get("train", {}).get("dataset", "digits")
    train_ds = load_dataset(dataset, root=cfg.data_root, split="train", augment=False)
    test_ds = load_dataset(dataset, root=cfg.data_root, split="test", augment=False)
    xtr, ytr = stack_dataset(train_ds, cfg.train_limit)
    xte, yte = stack_dataset(test_ds, cfg.test_limit)
    mean, std = train_ds.mean, train_ds.std
    runner = engine_compile(gated) if cfg.source == "engine" else gated
    result: dict[str, Any] = {
        "command": " ".join(["dyninfer analyze"] + sys.argv[2:]) if sys.argv[1:2] == ["analyze"] else None,
        "config": asdict(cfg), "checkpoint_metrics": meta["metrics"], "dataset": dataset,
        "machine": {"cpu_count": os.cpu_count(), "threads": cfg.threads,
                    "python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine()},
        "n_train": len(ytr), "n_test": len(yte), "files": {}}
    if cfg.source == "engine":
        result["machine"]["engine_isa"] = runner.isa

    # 1. calculation paths --------------------------------------------------------------------
    ps_test = collect_paths(runner, xte, yte)
    ps_train = collect_paths(runner, xtr, ytr)
    ps_test.meta = {"checkpoint": Path(cfg.checkpoint).name, "split": "test", "dataset": dataset}
    result["files"]["paths"] = str(save_paths(out / "paths_test.safetensors", ps_test))
    ref = collect_paths(gated, xte, yte) if cfg.source == "engine" else ps_test
    result["paths"] = {
        "source": ps_test.source, "bits": ps_test.num_bits, "gated_layers": len(ps_test.gate_names),
        "test_accuracy": ps_test.accuracy(), "train_accuracy": ps_train.accuracy(),
        "density_test": float(ps_test.paths.float().mean()),
        "distinct_paths_test": int(torch.unique(ps_test.paths, dim=0).shape[0]),
        "engine_vs_pytorch_bits_differing": int((ref.paths != ps_test.paths).sum()),
        "engine_vs_pytorch_predictions_differing": int((ref.predictions != ps_test.predictions).sum())}
    log(f"paths: {len(ps_train)} train + {len(ps_test)} test inputs x {ps_test.num_bits} bits ({ps_test.source})")

    # 2. filter states ------------------------------------------------------------------------
    fs = filter_states(ps_test)
    fs_train = filter_states(ps_train)
    result["filter_states"] = {"test": fs.to_json(), "train_totals": fs_train.totals()}
    result["files"]["filter_states"] = str(plot_filter_states(fs, out / "filter_states.png"))
    t = fs.totals()
    log(f"filter states (test): {t}")
    # conditionality: rates, dynamic share, entropy, Hamming distances, static majority path
    cond = path_conditionality(ps_test)
    masks = static_path_masks(cond.firing_rate, cond.gate_names, cond.gate_sizes)
    cond.static_accuracy = static_accuracy(gated, [(xte[i:i + 256], yte[i:i + 256])
                                                   for i in range(0, len(yte), 256)], masks)
    result["conditionality"] = cond.to_json()
    log(f"conditionality (test): {cond.summary()}")

    # 3. dense baseline features ----------------------------------------------------------------
    dense = None
    feats_train = {"gated model: calculation path": ps_train.paths}
    feats_test = {"gated model: calculation path": ps_test.paths}
    thresholds = None
    if cfg.dense_checkpoint is not None:
        dense = load_model(cfg.dense_checkpoint)
        dmeta = read_metadata(cfg.dense_checkpoint)
        if dmeta["config"]["model"]["gated"]:
            raise ValueError(f"--dense-checkpoint {cfg.dense_checkpoint} is a gated model; the baseline needs a dense one")
        acts_tr, dpred_tr, dnames, _ = collect_activations(dense, xtr)
        acts_te, dpred_te, _, _ = collect_activations(dense, xte)
        if dnames != ps_test.gate_names:
            result["dense_positions_note"] = "dense model's unit positions differ from the gated model's gates"
        thresholds = activation_thresholds(acts_tr, "median")
        zero = activation_thresholds(acts_tr, "zero")
        feats_train["dense model: binarised activations (median)"] = binarize(acts_tr, thresholds)
        feats_test["dense model: binarised activations (median)"] = binarize(acts_te, thresholds)
        feats_train["dense model: binarised activations (> 0)"] = binarize(acts_tr, zero)
        feats_test["dense model: binarised activations (> 0)"] = binarize(acts_te, zero)
        result["dense"] = {"checkpoint_metrics": dmeta["metrics"],
                           "test_accuracy": float((dpred_te == yte).float().mean()),
                           "bits": int(acts_te.shape[1]),
                           "constant_bits_test_median": int(((feats_test["dense model: binarised activations (median)"]
                                                              .float().std(0)) == 0).sum()),
                           "constant_bits_test_zero": int(((feats_test["dense model: binarised activations (> 0)"]
                                                            .float().std(0)) == 0).sum())}
        log(f"dense baseline: {acts_te.shape[1]} channels, test accuracy {result['dense']['test_accuracy']:.4f}")

    # 4. k-NN class accuracy and t-SNE --------------------------------------------------------
    knn = {name: knn_class_accuracy(feats_train[name], ytr, feats_test[name], yte, k=cfg.knn_k)
           for name in feats_train}
    knn["input pixels (euclidean, context)"] = knn_class_accuracy(
        xtr.flatten(1), ytr, xte.flatten(1), yte, k=cfg.knn_k, metric="euclidean")
    counts = torch.bincount(yte)
    knn["chance (majority class)"] = float(counts.max() / counts.sum())
    result["knn_class_accuracy"] = {"k": cfg.knn_k, "metric": "hamming (paths/bits)", "accuracy": knn}
    panels = {}
    for name in [n for n in feats_test if "> 0" not in n]:
        try:
            panels[f"{name}\n{cfg.knn_k}-NN class accuracy {_fmt(knn[name])}"] = (
                embed_tsne(feats_test[name], seed=cfg.seed), yte.numpy())
        except ValueError as exc:
            result.setdefault("tsne_notes", []).append(f"{name}: {exc}")
    if panels:
        result["files"]["tsne"] = str(plot_embeddings(panels, out / "path_tsne.png",
                                                      title=f"t-SNE of {len(yte)} test inputs (PCA to <= 300 dims first)"))
    log(f"k-NN class accuracy: {knn}")

    # 5. occlusion ------------------------------------------------------------------------------
    b = cfg.occlusion_box
    h, w = xte.shape[2:]
    regions = [Region(i, j, min(i + b, h), min(j + b, w)) for i in range(0, h, b) for j in range(0, w, b)]
    black = (-mean / std).tolist()  # a pixel of value 0 in normalised units
    n_img = min(cfg.occlusion_images, len(yte))
    occluded = torch.stack([occlude(xte[i], r, black) for i in range(n_img) for r in regions])
    ps_occ = collect_paths(runner, occluded)
    clean = ps_test.paths[:n_img].repeat_interleave(len(regions), 0)
    off = ((clean == 1) & (ps_occ.paths == 0)).sum(1)
    on = ((clean == 0) & (ps_occ.paths == 1)).sum(1)
    flips = (ps_occ.predictions != ps_test.predictions[:n_img].repeat_interleave(len(regions))).float()
    best = int(torch.argmax(off))
    ex_img, ex_region = best // len(regions), regions[best % len(regions)]
    occ = occlusion_effect(runner, xte[ex_img], ex_region, black)
    fields = filter_receptive_fields(gated, xte[ex_img], occ.switched_off[:8])
    display = (xte[ex_img] * std[:, None, None] + mean[:, None, None]).clamp(0, 1)
    display = display[0] if display.shape[0] == 3 and bool((display[0] == display[1]).all()) else display
    result["files"]["occlusion"] = str(plot_occlusion(
        display, ex_region, occ, fields, out / "occlusion.png",
        title=f"test image {ex_img} (class {int(yte[ex_img])}): the occlusion, of {n_img} images x {len(regions)} "
              f"boxes, that switched off the most filters"))
    result["occlusion"] = {
        "images": n_img, "box": b, "regions_per_image": len(regions), "fill": "black (pixel value 0)",
        "mean_switched_off": float(off.float().mean()), "mean_switched_on": float(on.float().mean()),
        "fraction_with_any_switched_off": float((off > 0).float().mean()),
        "max_switched_off": int(off.max()), "prediction_changed_fraction": float(flips.mean()),
        "example": {"test_index": ex_img, "label": int(yte[ex_img]), **occ.to_json()}}
    log(f"occlusion: {result['occlusion']['mean_switched_off']:.2f} filters off per occlusion on average")

    # 6. adversarial detection --------------------------------------------------------------------
    pool = _per_class_pool(ytr, cfg.attack_pool_per_class, cfg.seed)
    xp, yp = xtr[pool], ytr[pool]
    na = min(cfg.adv_test_limit, len(yte))
    xa, ya = xte[:na], yte[:na]
    step = 2.5 * cfg.eps / cfg.pgd_steps
    pix = lambda x: x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)  # noqa: E731
    norm = lambda x: (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)  # noqa: E731
    attacks = {"FGSM": lambda m, x, y: fgsm(m, x, y, cfg.eps, 0.0, 1.0),
               "PGD": lambda m, x, y: pgd(m, x, y, cfg.eps, cfg.pgd_steps, step, lo=0.0, hi=1.0, seed=cfg.seed)}
    models = {"gated model: calculation path": gated}
    if dense is not None:
        models["dense model: binarised activations (median)"] = dense
    adv_rows, attack_stats = [], {}
    for attack, fn in attacks.items():
        feats = {}
        for name, model in models.items():
            wrapped = _Pixels(model, mean, std).eval()
            a_pool, a_test = norm(fn(wrapped, pix(xp), yp)), norm(fn(wrapped, pix(xa), ya))
            if model is gated:
                f_pool, f_test = collect_paths(runner, a_pool, yp), collect_paths(runner, a_test, ya)
                clean_pred, adv_pred = ps_test.predictions[:na], f_test.predictions
                feats[name] = (ps_train.paths[pool], f_pool.paths, ps_test.paths[:na], f_test.paths)
            else:
                ap, _, _, _ = collect_activations(model, a_pool)
                at, adv_pred, _, _ = collect_activations(model, a_test)
                clean_pred = dpred_te[:na]
                feats[name] = (feats_train[name][pool], binarize(ap, thresholds), feats_test[name][:na],
                               binarize(at, thresholds))
            correct = clean_pred == ya
            attack_stats[f"{attack} / {name.split(':')[0]}"] = {
                "clean_accuracy": float(correct.float().mean()),
                "adversarial_accuracy": float((adv_pred == ya).float().mean()),
                "success_rate_on_correct": float((adv_pred[correct] != ya[correct]).float().mean())}
            log(f"{attack} on {name.split(':')[0]}: accuracy {correct.float().mean():.3f} -> "
                f"{(adv_pred == ya).float().mean():.3f}")
        for row in detection_table(feats, yp, (1, 5, 10), CLASSIFIERS, range(cfg.seeds)):
            adv_rows.append({"attack": attack, **row})
        log(f"{attack}: detectors trained")
    result["adversarial"] = {"eps_pixels": cfg.eps, "pgd_steps": cfg.pgd_steps, "pgd_step_size": step,
                             "pool_per_class": cfg.attack_pool_per_class, "held_out_clean": na,
                             "held_out_adversarial": na, "seeds": cfg.seeds, "attacks": attack_stats,
                             "detection": adv_rows}
    result["seconds"] = time.perf_counter() - t0
    (out / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(result, cfg))
    result["files"]["json"] = str(out / "analysis.json")
    result["files"]["report"] = str(out / "report.md")
    log(f"done: {out / 'report.md'}")
    return result


def _conditionality_line(c: dict[str, Any]) -> str:
    return (f"{_fmt(c['dynamic_share'])} of gated filters are dynamic (firing rate over the test inputs within "
            f"[{c['bounds'][0]}, {c['bounds'][1]}]); path entropy {c['path_entropy_per_filter']:.3f} bits per filter "
            f"({c['path_entropy']:.0f} bits per path if the bits were independent); paths of two inputs of the same "
            f"class differ in {_fmt(c['hamming_same'])} of their bits, of different classes in "
            f"{_fmt(c['hamming_diff'])}. Forcing every input onto the static majority path (each layer's most "
            f"frequent filters at its density) gives {_fmt(c['static_accuracy'])} test accuracy against "
            f"{_fmt(c['accuracy'])} for the per-input paths ({c['static_drop']:+.2f} points for the paths). "
            f"Firing-rate histogram (10 bins over [0, 1]): {c['histogram']}.")


def _markdown(r: dict[str, Any], cfg: AnalyzeConfig) -> str:
    p, fs, t = r["paths"], r["filter_states"]["test"], r["filter_states"]["test"]["totals"]
    m = r["machine"]
    lines = [f"# Calculation-path analysis of {Path(cfg.checkpoint).name}", "",
             f"Command: `{r['command'] or 'dyninfer.analysis.run_analysis(...)'}` — {r['seconds']:.0f} s on "
             f"{m['cpu_count']} CPUs, {m['threads']} torch threads, torch {m['torch']}"
             + (f", engine ISA {m['engine_isa']}" if "engine_isa" in m else "") + ".", "",
             f"Data: {r['dataset']}, {r['n_train']} train (reference) / {r['n_test']} test (held-out) images. "
             f"Paths from the {p['source']}: {p['gated_layers']} gated layers, {p['bits']} bits per input; test "
             f"accuracy {_fmt(p['test_accuracy'])}, mean density {p['density_test']:.3f}, "
             f"{p['distinct_paths_test']} distinct paths among {r['n_test']} test inputs. Engine vs PyTorch on "
             f"the test set: {p['engine_vs_pytorch_bits_differing']} path bits and "
             f"{p['engine_vs_pytorch_predictions_differing']} predictions differ.", "",
             "## Filter states (Fig. 4)", "",
             f"Over the {fs['num_inputs']} test inputs: **{t['energetic']} energetic** (always on), "
             f"**{t['dynamic']} dynamic**, **{t['silent']} silent** (never on) of {t['channels']} gated filters "
             f"({_fmt(t['dynamic'] / t['channels'])} dynamic). Train split: "
             f"{r['filter_states']['train_totals']['dynamic']} dynamic.", "",
             "![filter states](filter_states.png)", "",
             "## Conditionality", "",
             _conditionality_line(r["conditionality"]), "",
             "## Do different classes take different paths? (Fig. 3)", "",
             f"{r['knn_class_accuracy']['k']}-NN accuracy of the class predicted from the features alone "
             f"(fitted on the train split, scored on the test split; Hamming distance for bits):", "",
             "| features | k-NN class accuracy |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in r["knn_class_accuracy"]["accuracy"].items()]
    if "dense" in r:
        d = r["dense"]
        lines += ["", f"Dense baseline: {d['bits']} channels at the same positions, test accuracy "
                  f"{_fmt(d['test_accuracy'])}; bits = pooled channel activation above its median over the train "
                  f"split (or above 0). Constant bits on the test set: {d['constant_bits_test_median']} (median), "
                  f"{d['constant_bits_test_zero']} (> 0)."]
    if "tsne" in r["files"]:
        lines += ["", "![t-SNE](path_tsne.png)"]
    o = r["occlusion"]
    ex = o["example"]
    lines += ["", "## Occlusion (Fig. 6)", "",
              f"{o['images']} test images, each occluded in turn by {o['regions_per_image']} black {o['box']}×{o['box']} "
              f"boxes on a grid: on average {o['mean_switched_off']:.2f} filters switch off and "
              f"{o['mean_switched_on']:.2f} switch on per occlusion; {_fmt(o['fraction_with_any_switched_off'])} of "
              f"occlusions switch off at least one filter (max {o['max_switched_off']}); "
              f"{_fmt(o['prediction_changed_fraction'])} change the prediction.", "",
              f"Figure: the occlusion that switched off the most filters (test image {ex['test_index']}, box rows "
              f"{ex['region'][0]}–{ex['region'][2]}, cols {ex['region'][1]}–{ex['region'][3]}); each filter panel "
              "shows its effective receptive field |∂ GAP(filter output) / ∂ input| on the clean image and, dashed, "
              "the receptive field of its most active output unit.", "", "![occlusion](occlusion.png)", "",
              "## Adversarial-sample detection (Table 4)", ""]
    a = r["adversarial"]
    lines += [f"Attacks on each model itself, L∞ ε = {a['eps_pixels']} (pixel units, images in [0, 1]); PGD "
              f"{a['pgd_steps']} steps of {a['pgd_step_size']:.3g} from a random start. Detectors train on "
              f"n clean training images per class and their adversarial versions (drawn from a pool of "
              f"{a['pool_per_class']} per class), and are scored by ROC AUC on {a['held_out_clean']} held-out clean "
              f"test images and their {a['held_out_adversarial']} adversarial versions; mean ± std over "
              f"{a['seeds']} seeds.", "", "| attack / model | clean acc | adversarial acc | success on correct |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {_fmt(v['clean_accuracy'])} | {_fmt(v['adversarial_accuracy'])} | "
              f"{_fmt(v['success_rate_on_correct'])} |" for k, v in a["attacks"].items()]
    for attack in ("FGSM", "PGD"):
        rows = [x for x in a["detection"] if x["attack"] == attack]
        names = list(dict.fromkeys(x["features"] for x in rows))
        lines += ["", f"**{attack}** — AUC", "", "| classifier | " + " | ".join(
            f"{n.split(':')[0]} n={k}" for n in names for k in (1, 5, 10)) + " |",
            "|---|" + "---|" * (3 * len(names))]
        for clf in CLASSIFIERS:
            cells = []
            for n in names:
                for k in (1, 5, 10):
                    x = next(x for x in rows if x["features"] == n and x["classifier"] == clf and x["n_per_class"] == k)
                    cells.append(f"{x['auc_mean']:.3f} ± {x['auc_std']:.3f}")
            lines.append(f"| {clf.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

