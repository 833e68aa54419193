"""Figures a user would rather look at than read (matplotlib, Agg backend, PNG).

Every function takes plain data (lists, dicts, an optuna Study), not Ray objects, writes
one PNG atomically (a temporary name, then rename) and returns its path.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mgc_ray.config import VAL_LOSS
from mgc_ray.files import atomic_write


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
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=8,
            )
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


def learning_curves_png(history: Sequence[Mapping], path: str | Path, title: str) -> Path:
    """One trial's training and validation loss, and validation macro F1, per epoch.

    Args:
        history: one row per epoch with `epoch` (from 0), `train/loss`, `val/loss`, `val/macro_f1`
            (and `val/paper_f1` when there).
        path: the PNG to write.
        title: the figure's title.
    Returns:
        `path`. The kept epoch (lowest validation loss, the paper's rule) is marked by a dashed line.
    """
    plt = _plt()
    epochs = [int(row["epoch"]) + 1 for row in history]
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (("train/loss", "train loss"), (VAL_LOSS, "validation loss")):
        ax_loss.plot(epochs, [_num(row.get(key)) for row in history], marker="o", label=label)
    for key, label in (("val/macro_f1", "validation macro F1"), ("val/paper_f1", "validation F1 (paper's)")):
        if any(key in row for row in history):
            ax_f1.plot(epochs, [_num(row.get(key)) for row in history], marker="o", label=label)
    losses = [_num(row.get(VAL_LOSS)) for row in history]
    if any(math.isfinite(v) for v in losses):
        kept = epochs[int(np.nanargmin(losses))]
        for ax in (ax_loss, ax_f1):
            ax.axvline(kept, color="grey", linestyle="--", linewidth=1, label=f"kept epoch ({kept})")
    ax_loss.set_ylabel("cross-entropy")
    ax_f1.set_ylabel("F1")
    ax_f1.set_ylim(0, 1)
    for ax in (ax_loss, ax_f1):
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs if len(epochs) <= 25 else ax.get_xticks())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def trial_curves_png(
    trials: Sequence[Mapping], max_epochs: int, path: str | Path, title: str, metric_label: str = "validation macro F1"
) -> Path:
    """Every trial's validation metric over epochs, as ASHA saw them.

    Args:
        trials: one dict per trial: `name`, `epochs` (1-based), `values`, `stopped` (ended
            before `max_epochs` without error: ASHA stopped it), `failed`, `best` (the chosen trial).
        max_epochs: the epochs a trial may run (ASHA's max_t).
        path, title: the PNG and its title.
    Returns:
        `path`. Stopped trials end in an x, failed ones in a red square, the best trial is thick.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 5))
    stopped_shown = failed_shown = False
    for t in trials:
        if not len(t["epochs"]):
            continue
        (line,) = ax.plot(
            t["epochs"],
            t["values"],
            marker=".",
            linewidth=3 if t.get("best") else 1.2,
            alpha=1.0 if t.get("best") else 0.75,
            label=f"{t['name']}{' (best)' if t.get('best') else ''}",
        )
        if t.get("failed"):
            ax.plot(
                t["epochs"][-1],
                t["values"][-1],
                "s",
                color="red",
                markersize=8,
                label=None if failed_shown else "failed",
            )
            failed_shown = True
        elif t.get("stopped"):
            ax.plot(t["epochs"][-1], t["values"][-1], "x", color=line.get_color(), markersize=11, mew=2.5)
            stopped_shown = True
    if stopped_shown:
        ax.plot([], [], "x", color="black", markersize=9, mew=2, label=f"stopped by ASHA before {max_epochs}")
    ax.set_xlim(0.8, max_epochs + 0.2)
    ax.set_xticks(range(1, max_epochs + 1) if max_epochs <= 25 else ax.get_xticks())
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(trials) > 8 else 1, loc="best")
    return _save(fig, path)


def optuna_parallel_png(study, path: str | Path, title: str, target_name: str) -> Path:
    """Optuna's parallel-coordinate plot of a study (one line per trial, coloured by value)."""
    plt = _plt()
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    with warnings.catch_warnings(), plt.rc_context():  # optuna may change global styles
        warnings.simplefilter("ignore")  # ExperimentalWarning, and set_ylim on a flat axis
        ax = plot_parallel_coordinate(study, target_name=target_name)
        fig = ax.figure
        fig.set_size_inches(10, 5)
        ax.set_title(title, y=1.03)
        return _save(fig, path)


def optuna_importance_png(study, path: str | Path, title: str, target_name: str) -> Path:
    """Optuna's hyperparameter importances (its default evaluator, PED-ANOVA in optuna 5)."""
    plt = _plt()
    from optuna.visualization.matplotlib import plot_param_importances

    with warnings.catch_warnings(), plt.rc_context():  # it calls plt.style.use("ggplot"): keep that local
        warnings.simplefilter("ignore")
        ax = plot_param_importances(study, target_name=target_name)
        fig = ax.figure
        fig.set_size_inches(8, 4.5)
        ax.set_title(title, loc="left")  # replaces optuna's left-aligned title
        return _save(fig, path)


def comparison_png(
    tables: Mapping[str, Sequence[Mapping]], metrics: Sequence[tuple[str, str]], path: str | Path, title: str
) -> Path:
    """Grouped bars: per dataset (a row of panels), per metric (a panel), per arch (a group),
    one bar per kind of row (the paper's, ours at paper settings, ours best searched).

    Args:
        tables: dataset -> rows with `arch`, `kind` and the metric keys (None where missing).
        metrics: (key, label) of each panel.
    """
    plt = _plt()
    kinds = list(dict.fromkeys(r["kind"] for rows in tables.values() for r in rows))
    n_rows, n_cols = max(len(tables), 1), len(metrics)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.8 * n_rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (dataset, rows) in enumerate(tables.items()):
        archs = list(dict.fromkeys(r["arch"] for r in rows))
        width = 0.8 / max(len(kinds), 1)
        for j, (key, label) in enumerate(metrics):
            ax = axes[i][j]
            for k, kind in enumerate(kinds):
                vals = []
                for arch in archs:
                    hit = [r for r in rows if r["arch"] == arch and r["kind"] == kind]
                    vals.append(_num(hit[0].get(key)) if hit else float("nan"))
                xs = np.arange(len(archs)) + (k - (len(kinds) - 1) / 2) * width
                bars = ax.bar(
                    xs,
                    np.nan_to_num(vals, nan=0.0),
                    width,
                    color=colours[k % len(colours)],
                    label=kind if (i, j) == (0, 0) else None,
                )
                for x, v, b in zip(xs, vals, bars):
                    if math.isfinite(v):
                        ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=6, rotation=90)
            ax.set_xticks(range(len(archs)), archs, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 1.12)
            ax.set_title(f"{dataset}: {label}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="upper center", ncol=max(len(kinds), 1), fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(title, y=1.04)
    return _save(fig, path)


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _save(fig, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    try:
        return atomic_write(p, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        _plt().close(fig)
