"""Figures a user would rather look at than read (matplotlib, Agg backend, PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt


def confusion_png(cm: np.ndarray, label_names: Sequence[str], path: str | Path, title: str) -> Path:
    """Confusion matrix (rows true, columns predicted), counts and row shares (the paper's Fig. 8)."""
    plt = _plt()
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    k = len(label_names)
    ax.set_xticks(range(k), label_names, rotation=45, ha="right")
    ax.set_yticks(range(k), label_names)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="share of true class")
    return _save(fig, path)


def per_class_f1_png(history: Sequence[dict], label_names: Sequence[str], path: str | Path, title: str) -> Path:
    """Validation F1 of each genre over epochs (the paper's Fig. 7)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    epochs = [row["epoch"] + 1 for row in history]
    for name in label_names:
        ax.plot(epochs, [row.get(f"val/f1/{name}", np.nan) for row in history], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation F1")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.stem + ".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    _plt().close(fig)
    tmp.replace(p)
    return p
