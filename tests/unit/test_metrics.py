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


# --- 95 % intervals over the test tracks ---------------------------------------


def _classifier(rng, n: int, k: int, right: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions of a classifier right with probability `right`, else a wrong class at random."""
    y = rng.integers(0, k, n)
    wrong = (y + rng.integers(1, k, n)) % k
    return y, np.where(rng.random(n) < right, y, wrong)


def test_intervals_hold_the_estimate_are_seeded_and_narrow_with_more_tracks():
    from mgc_ray.metrics import intervals

    rng = np.random.default_rng(0)
    y, p = _classifier(rng, 800, 8, 0.55)
    names = [str(i) for i in range(8)]
    point = compute_metrics(y, p, names)
    ci = intervals(y, p, 8)
    assert set(ci) == set(METRIC_NAMES)
    for k, (lo, hi) in ci.items():
        assert lo <= point[k] <= hi, k
    assert intervals(y, p, 8) == ci, "seeded: the same predictions give the same interval"
    small = intervals(y[:200], p[:200], 8)
    width = {k: hi - lo for k, (lo, hi) in ci.items()}
    # the standard error goes as 1/sqrt(n): a quarter of the tracks, about twice the width
    assert 1.5 < (small["top1_accuracy"][1] - small["top1_accuracy"][0]) / width["top1_accuracy"] < 2.6
    assert 0.05 < width["top1_accuracy"] < 0.09  # 800 tracks at 0.55: 2 x 1.96 x sqrt(.55 x .45 / 800) = 0.069


def test_intervals_cover_the_true_accuracy_about_95_times_in_100():
    from mgc_ray.metrics import intervals

    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(100):
        y, p = _classifier(rng, 300, 8, 0.6)  # true top-1 accuracy 0.6
        lo, hi = intervals(y, p, 8, reps=400)["top1_accuracy"]
        hits += lo <= 0.6 <= hi
    assert 88 <= hits <= 99, hits  # 95 expected; binomial sd 2.2


def test_a_paired_difference_is_called_only_when_its_interval_excludes_zero():
    from mgc_ray.metrics import paired_difference, verdict

    rng = np.random.default_rng(2)
    y, p = _classifier(rng, 800, 8, 0.5)
    same = paired_difference(y, p, p, 8)
    assert all(v == (0.0, 0.0, 0.0) for v in same.values())
    better = np.where(rng.random(800) < 0.3, y, p)  # p, with 30 % of the tracks set right
    d, lo, hi = paired_difference(y, better, p, 8)["top1_accuracy"]
    assert d > 0.1 and 0 < lo < d < hi
    assert verdict(lo, hi, "b").startswith("higher than b")
    wrong = (y + rng.integers(1, 8, 800)) % 8
    other = np.where(rng.random(800) < 0.5, y, wrong)  # as good as p (0.5), right on other tracks
    _, lo, hi = paired_difference(y, other, p, 8)["paper_f1"]
    assert lo < 0 < hi, "two models as good as each other: no difference called"
    assert verdict(-0.02, 0.01, "b") == "no clear difference from b (95 % interval spans 0)"
    assert verdict(-0.05, -0.01, "b").startswith("lower than b")


def test_the_summary_words_each_difference_by_its_interval():
    """summary.md: ours with 95 % intervals; 'lower than the paper's' only when the interval is below
    it; the best trial against the paper-settings trial, paired on the same tracks, in words."""
    from types import SimpleNamespace

    from mgc_ray.metrics import intervals
    from mgc_ray.results.report import summary_rows, summary_table
    from mgc_ray.trial.scoring import Scores

    rng = np.random.default_rng(4)
    names = [f"g{i}" for i in range(8)]
    y, paper_pred = _classifier(rng, 800, 8, 0.45)
    best_pred = np.where(rng.random(800) < 0.4, y, paper_pred)  # the paper trial's, 40 % of tracks set right

    def scored(pred):
        m = compute_metrics(y, pred, names)
        cm = confusion_matrix(y, pred, 8)
        ci = intervals(y, pred, 8)
        return Scores(m, m, cm, cm, tuple(range(800)), ci, ci, y, pred, pred)

    payload = SimpleNamespace(label_names=names)
    rows = {"paper": {"scores": scored(paper_pred), "payload": payload}}
    rows["best"] = {"scores": scored(best_pred), "payload": payload}
    text = summary_table("densenet", summary_rows("densenet", rows), "fma_small")
    assert "95 % intervals (bootstrap over the test tracks, seeded):" in text
    low, high = rows["paper"]["scores"].crop_ci["paper_f1"]
    assert f"| ours, paper settings | {low:.3f}–{high:.3f} |" in text
    assert high < 0.574 and "- ours, paper settings: paper_f1 lower than the paper's 0.574" in text
    assert "- ours, best searched minus ours at paper settings, paired on the same test tracks: paper_f1 +" in text
    assert "higher than the paper-settings trial (95 % interval above 0)" in text
