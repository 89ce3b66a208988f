"""Adversarial-sample detection from calculation paths (paper Sec. 4.4, Table 4).

Attacks (untargeted, L∞, on the model whose paths are then read; white box):
  FGSM  x' = clip(x + ε·sign(∇x CE(f(x), y)))
  PGD   random start in the ε-ball, ``steps`` steps of size ``step_size`` along sign(∇x),
        projected back to the ε-ball and the valid pixel range after every step (Madry et al.).
``lo``/``hi`` give the valid input range (per channel, in the model's normalised units).
A gated model in eval mode is differentiable almost everywhere: z = 1(g > 0) is piecewise constant,
so the gradient flows through the kept filters' outputs (y · z), as for a dense network.

Detection: a binary classifier (clean = 0, adversarial = 1) on paths. For each of ``seeds`` seeds
it is trained on ``n`` randomly drawn clean training images per class and their adversarial
versions, and scored by ROC AUC on held-out clean and adversarial images; results are mean ± std.
When every training input has the same features (a static path) the score is constant: AUC 0.5.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["fgsm", "pgd", "CLASSIFIERS", "make_classifier", "detection_auc", "detection_table"]


def _check(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> None:
    if model.training:
        raise ValueError("attack: the model is in training mode; call model.eval() first")
    if x.dim() != 4 or y.shape != (x.shape[0],):
        raise ValueError(f"attack: expected images (N, C, H, W) and labels (N,), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if not eps >= 0:
        raise ValueError(f"attack: eps must be >= 0, got {eps}")


def _grad_sign(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (g,) = torch.autograd.grad(loss, x)  # parameters get no .grad
    return g.sign()


def _clip(x: Tensor, lo, hi) -> Tensor:
    return torch.max(torch.min(x, torch.as_tensor(hi, dtype=x.dtype)), torch.as_tensor(lo, dtype=x.dtype))


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, lo=-float("inf"), hi=float("inf"),
         batch_size: int = 128) -> Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015)."""
    _check(model, x, y, eps)
    out = [_clip(xb + eps * _grad_sign(model, xb, yb), lo, hi)
           for xb, yb in zip(x.split(batch_size), y.split(batch_size))]
    return torch.cat(out).detach()


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10, step_size: float | None = None,
        lo=-float("inf"), hi=float("inf"), seed: int = 0, batch_size: int = 128) -> Tensor:
    """Projected gradient descent with a uniform random start (Madry et al. 2018)."""
    _check(model, x, y, eps)
    if steps < 1:
        raise ValueError(f"pgd: steps must be >= 1, got {steps}")
    step = eps / 4 if step_size is None else step_size
    gen = torch.Generator().manual_seed(seed)
    out = []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        adv = _clip(xb + (torch.rand(xb.shape, generator=gen) * 2 - 1) * eps, lo, hi)
        for _ in range(steps):
            adv = adv + step * _grad_sign(model, adv, yb)
            adv = _clip(torch.max(torch.min(adv, xb + eps), xb - eps), lo, hi)
        out.append(adv.detach())
    return torch.cat(out)


CLASSIFIERS = ("random_forest", "adaboost", "gradient_boosting")


def make_classifier(name: str, seed: int):
    from sklearn.ensemble import AdaBoostClassifier, GradientBoostingClassifier, RandomForestClassifier

    if name == "random_forest":
        return RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    if name == "adaboost":
        return AdaBoostClassifier(n_estimators=50, random_state=seed)
    if name == "gradient_boosting":
        return GradientBoostingClassifier(n_estimators=100, random_state=seed)
    raise ValueError(f"unknown classifier {name!r}; available: {', '.join(CLASSIFIERS)}")


def _sample_per_class(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if len(pool) < n:
            raise ValueError(f"detection: class {c} has {len(pool)} training samples, {n} per class requested")
        idx.append(rng.choice(pool, size=n, replace=False))
    return np.concatenate(idx)


def detection_auc(clean_train, adv_train, train_labels, clean_test, adv_test, n_per_class: int,
                  classifier: str | Callable[[int], object] = "random_forest", seeds: Sequence[int] = range(5)
                  ) -> list[float]:
    """ROC AUC of a clean-vs-adversarial classifier for each seed.

    clean_train / adv_train (M, D): features of M training images and of their adversarial
    versions (row i of both is the same image), train_labels (M,) their classes; per seed
    ``n_per_class`` images per class are drawn and both versions used for training.
    clean_test (P, D) / adv_test (Q, D): held-out features scored for the AUC.
    """
    from sklearn.metrics import roc_auc_score

    ct, at, lt = np.asarray(clean_train), np.asarray(adv_train), np.asarray(train_labels)
    ce, ae = np.asarray(clean_test), np.asarray(adv_test)
    if ct.shape != at.shape or ct.ndim != 2 or lt.shape != (ct.shape[0],):
        raise ValueError(f"detection_auc: clean {ct.shape} and adversarial {at.shape} training features must be the "
                         f"same (M, D) with M labels, got {lt.shape} labels")
    if ce.ndim != 2 or ae.ndim != 2 or ce.shape[1] != ct.shape[1] or ae.shape[1] != ct.shape[1]:
        raise ValueError(f"detection_auc: test features {ce.shape}, {ae.shape} must have {ct.shape[1]} columns")
    if len(ce) == 0 or len(ae) == 0:
        raise ValueError("detection_auc: need at least one clean and one adversarial test sample")
    if n_per_class < 1:
        raise ValueError(f"detection_auc: n_per_class must be >= 1, got {n_per_class}")
    xte = np.concatenate([ce, ae]).astype(np.float32)
    yte = np.r_[np.zeros(len(ce)), np.ones(len(ae))]
    aucs = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        idx = _sample_per_class(lt, n_per_class, rng)
        xtr = np.concatenate([ct[idx], at[idx]]).astype(np.float32)
        ytr = np.r_[np.zeros(len(idx)), np.ones(len(idx))]
        if not (xtr != xtr[:1]).any():
            # clean and adversarial training inputs have identical features (static paths): any
            # classifier can only output a constant score, whose AUC is 0.5 (AdaBoost refuses to fit).
            aucs.append(0.5)
            continue
        clf = make_classifier(classifier, seed) if isinstance(classifier, str) else classifier(seed)
        clf.fit(xtr, ytr)
        aucs.append(float(roc_auc_score(yte, clf.predict_proba(xte)[:, 1])))
    return aucs


def detection_table(features: Mapping[str, tuple], train_labels, n_per_class: Sequence[int] = (1, 5, 10),
                    classifiers: Sequence[str] = CLASSIFIERS, seeds: Sequence[int] = range(5)) -> list[dict]:
    """Rows {features, classifier, n_per_class, auc_mean, auc_std, aucs} for every
    {name: (clean_train, adv_train, clean_test, adv_test)} in ``features``."""
    rows = []
    for name, (ct, at, ce, ae) in features.items():
        for clf in classifiers:
            for n in n_per_class:
                aucs = detection_auc(ct, at, train_labels, ce, ae, n, clf, seeds)
                rows.append({"features": name, "classifier": clf, "n_per_class": n,
                             "auc_mean": float(np.mean(aucs)), "auc_std": float(np.std(aucs)), "aucs": aucs})
    return rows
