"""Path embedding (paper Sec. 4.2, Fig. 3): PCA to at most 300 dimensions, then t-SNE, coloured by
class; and a number for "different classes take different paths": the accuracy of a k-nearest-
neighbour classifier that predicts an input's class from its path alone (Hamming distance), fitted
on one set of paths and scored on another.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from torch import Tensor

__all__ = ["embed_tsne", "knn_class_accuracy", "plot_embeddings"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def embed_tsne(features, seed: int = 0, pca_dims: int = 300, perplexity: float = 30.0) -> np.ndarray:
    """(N, 2) t-SNE of ``features`` (N, D) after dropping constant columns and a PCA to
    min(pca_dims, N, varying columns) dimensions."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    f = _np(features).astype(np.float32)
    if f.ndim != 2 or f.shape[0] < 3:
        raise ValueError(f"embed_tsne: expected features (N, D) with N >= 3, got shape {f.shape}")
    f = f[:, f.std(0) > 0]
    if f.shape[1] == 0:
        raise ValueError("embed_tsne: every input has the same features (all filters static); nothing to embed")
    k = min(pca_dims, f.shape[0], f.shape[1])
    if k < f.shape[1]:
        f = PCA(n_components=k, random_state=seed).fit_transform(f)
    perp = min(perplexity, (f.shape[0] - 1) / 3)
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(f)


def knn_class_accuracy(train_features, train_labels, test_features, test_labels, k: int = 5,
                       metric: str = "hamming") -> float:
    """Accuracy of a k-NN classifier (``metric``, distance-weighted ties broken by sklearn) that
    predicts the class from the features; fitted on train, scored on test."""
    from sklearn.neighbors import KNeighborsClassifier

    xtr, ytr, xte, yte = _np(train_features), _np(train_labels), _np(test_features), _np(test_labels)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"knn_class_accuracy: train features {xtr.shape} and test features {xte.shape} must be "
                         f"(N, D) with the same D")
    if len(ytr) != len(xtr) or len(yte) != len(xte):
        raise ValueError(f"knn_class_accuracy: {len(xtr)}/{len(xte)} train/test rows but {len(ytr)}/{len(yte)} labels")
    if not 1 <= k <= len(xtr):
        raise ValueError(f"knn_class_accuracy: k must lie in [1, {len(xtr)}], got {k}")
    clf = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute")
    clf.fit(xtr.astype(np.float32), ytr)
    return float((clf.predict(xte.astype(np.float32)) == yte).mean())


def plot_embeddings(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], out: str | Path, title: str = "") -> Path:
    """One scatter panel per entry {title: (embedding (N, 2), labels (N,))}, coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5), squeeze=False)
    for ax, (name, (emb, labels)) in zip(axes[0], panels.items()):
        labels = _np(labels)
        for c in sorted(set(labels.tolist())):
            m = labels == c
            ax.scatter(emb[m, 0], emb[m, 1], s=7, color=plt.cm.tab10(int(c) % 10), label=str(c))
            cx, cy = np.median(emb[m, 0]), np.median(emb[m, 1])
            ax.text(cx, cy, str(c), fontsize=11, weight="bold", ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.7, lw=0))
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), title="class")
    if title:
        fig.suptitle(title, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out

