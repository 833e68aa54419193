"""The paper's metrics and the standard ones, under distinct names; the confusion matrix.

`compute_metrics` returns exactly these keys (they are MLflow metric keys and
the keys of `config.PAPER[...].table1`):

    macro_precision   mean over the k classes of TP / (TP + FP) (the paper's precision)
    macro_recall      mean over the k classes of TP / (TP + FN) (the paper's recall)
    paper_f1          2 P R / (P + R) of macro_precision and macro_recall (the paper's F1;
                      0.578 and 0.571 give 0.574), not the mean of per-class F1
    paper_accuracy    mean over classes of one-vs-rest accuracy (TP + TN) / N (the paper's
                      accuracy); with k balanced classes it is 1 - 2 (1 - top1) / k
    macro_f1          mean of per-class F1 (scikit-learn's f1_score(average="macro"))
    top1_accuracy     fraction of examples whose predicted class is the true one
    precision/<label>, recall/<label>, f1/<label>   per class, label name as given
                      (e.g. f1/Hip-Hop)

A class never predicted has precision 0, a class never present has recall 0,
and 0/0 F1 is 0 (scikit-learn's zero_division=0). Plain numpy: scikit-learn is
only a test dependency.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METRIC_NAMES = ("macro_precision", "macro_recall", "paper_f1", "paper_accuracy", "macro_f1", "top1_accuracy")
PER_CLASS_PREFIXES = ("precision", "recall", "f1")
# The order every table shows them in: Table 1's four (F1, accuracy, precision, recall), then ours.
TABLE_COLUMNS = ("paper_f1", "paper_accuracy", "macro_precision", "macro_recall", "macro_f1", "top1_accuracy")


def prefixed(prefix: str, metrics: dict) -> dict:
    """Metric keys under a prefix: `val/` per epoch, `best/` the best epoch so far, `test/` crop
    level on the test split, `test_track/` track level (the names MLflow and the tables share)."""
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def interval_metrics(prefix: str, ci: dict) -> dict:
    """The 95 % intervals of `intervals` as metric keys: `<prefix>_ci95/<name>/low` and `/high`."""
    out = {}
    for name, (low, high) in ci.items():
        out[f"{prefix}_ci95/{name}/low"], out[f"{prefix}_ci95/{name}/high"] = low, high
    return out


def read_interval(metrics: dict, prefix: str, name: str) -> tuple[float, float] | None:
    """(low, high) of `name` logged by `interval_metrics(prefix, ...)`, None when not logged."""
    low, high = metrics.get(f"{prefix}_ci95/{name}/low"), metrics.get(f"{prefix}_ci95/{name}/high")
    return None if low is None or high is None else (float(low), float(high))


def definitions(n_classes: int) -> str:
    """The paper's metric definitions, written for a dataset of `n_classes` genres."""
    k = int(n_classes)
    return f"""Metric definitions (the paper's):
- precision, recall: macro averages over the {k} genres;
- paper_f1: harmonic mean of macro precision and macro recall (not the mean of per-class F1);
- paper_accuracy: mean over genres of one-vs-rest accuracy (TP+TN)/N; with {k} balanced genres
  it equals 1 - 2(1 - top1)/{k}, so it reads high;
- macro_f1: mean of per-class F1 (scikit-learn's); top1_accuracy: share of tracks right.
Ours are test-split figures at crop level (one centred crop per track, the paper's way)."""


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> np.ndarray:
    """Counts of (true, predicted) pairs.

    Args:
        y_true: true class indices in [0, n_classes).
        y_pred: predicted class indices in [0, n_classes), same length.
        n_classes: number of classes k.

    Returns:
        (k, k) int64 array; rows are true classes, columns predicted classes.
    """
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"class indices must lie in [0, {n_classes})")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def harmonic_f1(precision: float, recall: float) -> float:
    """The paper's F1: 2 P R / (P + R) (0 when both are 0); 0.578 and 0.571 give 0.574."""
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (zero_division=0)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def compute_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, label_names: Sequence[str]
) -> dict[str, float]:
    """The paper's and the standard classification metrics.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices (argmax of the logits).
        label_names: one name per class, in index order (k = len(label_names)).

    Returns:
        dict of floats under the names in the module docstring.
    """
    k = len(label_names)
    cm = confusion_matrix(y_true, y_pred, k).astype(np.float64)
    n = cm.sum()
    if n == 0:
        raise ValueError("compute_metrics needs at least one example")
    tp = np.diag(cm)  # (k,)
    fp = cm.sum(axis=0) - tp  # predicted as the class, but not it
    fn = cm.sum(axis=1) - tp  # the class, predicted as another
    tn = n - tp - fp - fn
    precision = _safe_div(tp, tp + fp)  # (k,)
    recall = _safe_div(tp, tp + fn)  # (k,)
    f1 = _safe_div(2 * precision * recall, precision + recall)  # (k,)
    p, r = float(precision.mean()), float(recall.mean())
    out = {
        "macro_precision": p,
        "macro_recall": r,
        "paper_f1": harmonic_f1(p, r),
        "paper_accuracy": float(((tp + tn) / n).mean()),
        "macro_f1": float(f1.mean()),
        "top1_accuracy": float(tp.sum() / n),
    }
    for i, name in enumerate(label_names):
        out[f"precision/{name}"] = float(precision[i])
        out[f"recall/{name}"] = float(recall[i])
        out[f"f1/{name}"] = float(f1[i])
    return out


# Uncertainty: the test split is a sample of tracks, so each figure has a sampling error. A 95 %
# percentile-bootstrap interval over the split's tracks (resampled with replacement, seeded, so the
# same predictions give the same interval); 2,000 replicates put the interval's ends within about
# 0.005 of where more replicates would (Efron & Tibshirani: 1,000-2,000 for percentile intervals).
BOOT_REPS = 2000
BOOT_SEED = 0
LEVEL = 0.95


def _headline(cm: np.ndarray) -> dict[str, np.ndarray]:
    """METRIC_NAMES of a stack of confusion matrices (R, k, k) -> {name: (R,)}."""
    cm = cm.astype(np.float64)
    n = cm.sum(axis=(1, 2))  # (R,)
    tp = np.diagonal(cm, axis1=1, axis2=2)  # (R, k)
    fp = cm.sum(axis=1) - tp
    fn = cm.sum(axis=2) - tp
    tn = n[:, None] - tp - fp - fn
    precision, recall = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)  # (R, k)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    p, r = precision.mean(1), recall.mean(1)  # (R,)
    return {
        "macro_precision": p,
        "macro_recall": r,
        "paper_f1": _safe_div(2 * p * r, p + r),
        "paper_accuracy": ((tp + tn) / n[:, None]).mean(1),
        "macro_f1": f1.mean(1),
        "top1_accuracy": tp.sum(1) / n,
    }


def _resampled(y_true: np.ndarray, preds: Sequence[np.ndarray], k: int, reps: int, seed: int) -> list[dict]:
    """For each prediction vector, METRIC_NAMES over `reps` resamplings of the same tracks."""
    y = np.asarray(y_true, dtype=np.int64)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(reps, len(y)))  # (R, N): the same for every pred
    rows = np.arange(reps)[:, None]
    out = []
    for pred in preds:
        cell = y[idx] * k + np.asarray(pred, dtype=np.int64)[idx]  # (R, N)
        cm = np.zeros((reps, k * k), dtype=np.int64)
        np.add.at(cm, (np.broadcast_to(rows, cell.shape), cell), 1)
        out.append(_headline(cm.reshape(reps, k, k)))
    return out


def intervals(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    n_classes: int,
    reps: int = BOOT_REPS,
    seed: int = BOOT_SEED,
) -> dict[str, tuple[float, float]]:
    """95 % bootstrap interval (over the tracks) of each of METRIC_NAMES: {name: (low, high)}."""
    (boot,) = _resampled(np.asarray(y_true), [np.asarray(y_pred)], int(n_classes), reps, seed)
    q = [(1 - LEVEL) / 2, (1 + LEVEL) / 2]
    return {name: tuple(float(v) for v in np.quantile(vals, q)) for name, vals in boot.items()}


def paired_difference(
    y_true: Sequence[int] | np.ndarray,
    pred_a: Sequence[int] | np.ndarray,
    pred_b: Sequence[int] | np.ndarray,
    n_classes: int,
    reps: int = BOOT_REPS,
    seed: int = BOOT_SEED,
) -> dict[str, tuple[float, float, float]]:
    """a minus b on the same tracks, for each of METRIC_NAMES: {name: (difference, low, high)}, the
    95 % interval from resampling the tracks once for both (paired: their shared difficulty cancels)."""
    y = np.asarray(y_true)
    k = int(n_classes)
    a, b = _resampled(y, [np.asarray(pred_a), np.asarray(pred_b)], k, reps, seed)
    full_a, full_b = (_headline(confusion_matrix(y, p, k)[None]) for p in (pred_a, pred_b))
    q = [(1 - LEVEL) / 2, (1 + LEVEL) / 2]
    out = {}
    for name in METRIC_NAMES:
        lo, hi = np.quantile(a[name] - b[name], q)
        out[name] = (float(full_a[name][0] - full_b[name][0]), float(lo), float(hi))
    return out


def verdict(low: float, high: float, than: str) -> str:
    """Words for a difference whose 95 % interval is (low, high): higher, lower or within the noise."""
    if low > 0:
        return f"higher than {than} (95 % interval above 0)"
    if high < 0:
        return f"lower than {than} (95 % interval below 0)"
    return f"no clear difference from {than} (95 % interval spans 0)"
