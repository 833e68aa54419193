"""Metrics: scikit-learn agreement where definitions coincide, the paper's identities."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from mgc_ray.config import PAPER
from mgc_ray.metrics import METRIC_NAMES, compute_metrics, confusion_matrix, harmonic_f1

GENRES = ["Electronic", "Experimental", "Folk", "Hip-Hop", "Instrumental", "International", "Pop", "Rock"]


def _noisy_predictions(seed: int, n: int = 500, k: int = 8, never_predicted: int | None = None):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    y_pred = np.where(rng.random(n) < 0.55, y_true, rng.integers(0, k, n))  # ~60 % right
    if never_predicted is not None:
        y_pred[y_pred == never_predicted] = (never_predicted + 1) % k
    return y_true, y_pred


@pytest.mark.parametrize("seed,never", [(0, None), (1, 3), (2, 7)])
def test_agrees_with_sklearn(seed, never):
    y_true, y_pred = _noisy_predictions(seed, never_predicted=never)
    m = compute_metrics(y_true, y_pred, GENRES)
    labels = list(range(8))
    kw = dict(labels=labels, zero_division=0)
    assert m["macro_precision"] == pytest.approx(skm.precision_score(y_true, y_pred, average="macro", **kw))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(y_true, y_pred, average="macro", **kw))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", **kw))
    assert m["top1_accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for per, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        ref = fn(y_true, y_pred, average=None, **kw)
        got = [m[f"{per}/{g}"] for g in GENRES]
        np.testing.assert_allclose(got, ref)
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, 8), skm.confusion_matrix(y_true, y_pred, labels=labels)
    )
    if never is not None:
        assert m[f"precision/{GENRES[never]}"] == 0.0


def test_keys_are_exactly_the_mlflow_names():
    m = compute_metrics([0, 1, 2], [0, 2, 2], GENRES[:3])
    expected = set(METRIC_NAMES) | {f"{p}/{g}" for p in ("precision", "recall", "f1") for g in GENRES[:3]}
    assert set(m) == expected
    assert "f1/Hip-Hop" in compute_metrics([3], [3], GENRES)
    # config.PAPER's Table 1 uses these names
    assert set(PAPER["densenet"].table1) <= set(m)
    assert all(isinstance(v, float) for v in m.values())


def test_paper_f1_is_harmonic_mean_of_macro_p_and_r():
    assert round(harmonic_f1(0.578, 0.571), 3) == 0.574  # the paper's DenseNet row
    for preset in PAPER.values():  # every Table 1 row, up to the paper's 3-decimal rounding
        t = preset.table1
        assert harmonic_f1(t["macro_precision"], t["macro_recall"]) == pytest.approx(t["paper_f1"], abs=1e-3)
    y_true, y_pred = _noisy_predictions(5)
    m = compute_metrics(y_true, y_pred, GENRES)
    p, r = m["macro_precision"], m["macro_recall"]
    assert m["paper_f1"] == pytest.approx(2 * p * r / (p + r))
    assert m["paper_f1"] != pytest.approx(m["macro_f1"], abs=1e-6)  # the two F1s differ in general


def test_paper_accuracy_balanced_identity():
    rng = np.random.default_rng(3)
    y_true = np.repeat(np.arange(8), 50)  # 8 balanced classes
    y_pred = np.where(rng.random(y_true.size) < 0.5, y_true, rng.integers(0, 8, y_true.size))
    m = compute_metrics(y_true, y_pred, GENRES)
    assert m["paper_accuracy"] == pytest.approx(1 - (1 - m["top1_accuracy"]) / 4)
    # and the one-vs-rest definition directly
    cm = confusion_matrix(y_true, y_pred, 8)
    n = cm.sum()
    ovr = [(cm[i, i] + n - cm[i].sum() - cm[:, i].sum() + cm[i, i]) / n for i in range(8)]
    assert m["paper_accuracy"] == pytest.approx(np.mean(ovr))


def test_perfect_and_edge_cases():
    m = compute_metrics([0, 1, 2, 1], [0, 1, 2, 1], ["a", "b", "c"])
    assert all(m[k] == 1.0 for k in METRIC_NAMES)
    m = compute_metrics([0, 0, 0], [1, 1, 1], ["a", "b"])  # nothing right; "b" never true
    assert m["top1_accuracy"] == 0 and m["macro_precision"] == 0 and m["paper_f1"] == 0
    assert m["recall/b"] == 0.0 and m["precision/a"] == 0.0
    with pytest.raises(ValueError):
        compute_metrics([0, 1], [0, 5], ["a", "b"])
    with pytest.raises(ValueError):
        compute_metrics([], [], ["a"])


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix([0, 0, 1, 2], [1, 1, 1, 0], 3)
    np.testing.assert_array_equal(cm, [[0, 2, 0], [0, 1, 0], [1, 0, 0]])
